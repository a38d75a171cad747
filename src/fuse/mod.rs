//! FUSE adapter: serves the filesystem core to the kernel through `fuser`, translating requests
//! to core calls and errors to errnos.

pub mod adapter;
pub mod attr;
pub mod flock;
pub mod kcache;
pub mod kernel_mount;
pub mod options;
mod orphans;

pub use adapter::O2Fuse;
pub use options::MountOptions;
