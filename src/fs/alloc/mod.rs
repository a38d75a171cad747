//! Allocators: chain-allocator groups and chain lists shared by mkfs, fsck and the mounted
//! filesystem (ocfs2-format.md §6).

pub mod allocator;
pub mod chain;
pub mod local_alloc;
