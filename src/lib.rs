//! o2fs: a cluster filesystem in the style of OCFS2, on the real OCFS2 on-disk format.
//!
//! Layers, lowest first (each knows only those below it; see shared/docs/DESIGN.md):
//! - [`format`]: byte-exact encode/decode of every OCFS2 and JBD2 structure.
//! - [`dev`]: the `BlockDevice` trait and the image-file backend; `dev::mirror` the replicated one.
//! - [`cluster`]: cluster.conf, membership, heartbeat.
//! - [`dlm`]: the distributed lock manager (sans-IO engine: lock modes, mastery, queues, recovery).
//! - [`fs`]: the filesystem core (allocators, extent trees, directories, volume access).
//! - [`mkfs`], [`fsck`]: the offline tools' engines (the programs only parse and print).

pub mod cluster;
pub mod dev;
pub mod dlm;
pub mod format;
pub mod fs;
pub mod fsck;
pub mod fuse;
pub mod journal;
pub mod mkfs;
pub mod net;
#[doc(hidden)]
pub mod testutil;
