//! The replicated block device (DRBD-style mirror).
