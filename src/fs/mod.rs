//! Filesystem core: geometry, allocator bitmaps, system files and volume access; later the
//! mounted filesystem (buffer cache, journal users, inode cache, namespace operations).

pub mod alloc;
pub mod bitmap;
pub mod cache;
pub mod core;
pub mod dir;
pub mod dlm_locks;
pub mod error;
pub mod extent_map;
pub mod extent_tree;
pub mod file;
pub mod geometry;
pub mod journal_sink;
pub mod lock;
pub mod lockset;
pub mod mount;
pub mod namei;
pub mod open_locks;
pub mod read_buf;
pub mod read_gate;
pub mod rights;
pub mod sysfile;
pub mod sysfiles;
pub mod volume;

pub use error::{FsError, Result};
pub use volume::Volume;
