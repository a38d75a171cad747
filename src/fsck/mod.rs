//! fsck engine.
