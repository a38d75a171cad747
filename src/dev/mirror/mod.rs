//! The replicated block device (DRBD-style mirror).

pub mod config;
