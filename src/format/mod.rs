//! On-disk format layer: pure encode/decode of OCFS2 (little-endian) and JBD2 (big-endian)
//! structures over byte slices. Nothing here does I/O; nothing here panics on any input.

pub mod bytes;
pub mod chain;
pub mod dirent;
pub mod error;
pub mod extent;
pub mod features;
pub mod group;
pub mod heartbeat;
pub mod inline;
pub mod inode;
pub mod jbd2;
pub mod local_alloc;
pub mod slot_map;
pub mod superblock;
pub mod truncate_log;

pub use error::{FormatError, Result};
