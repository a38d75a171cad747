//! Filesystem core: geometry, allocator bitmaps, system files and volume access; later the
//! mounted filesystem (buffer cache, journal users, inode cache, namespace operations).

pub mod alloc;
pub mod bitmap;
pub mod error;
pub mod geometry;
pub mod sysfile;
pub mod volume;

pub use error::{FsError, Result};
pub use volume::Volume;
