//! Filesystem core.
