//! The replicated block device (DRBD-style mirror): every write reaches both nodes' replicas.
//!
//! Modules, bottom up:
//! - [`config`]: the DRBD-format resource file.
//! - [`bitmap`], [`activity_log`], [`generation`]: the out-of-sync bitmap (4 KiB per bit), the
//!   activity log of hot extents, the generation identifiers and the handshake decision.
//! - [`meta`]: the meta-disk holding them (internal or external), checksummed.
//! - [`proto`]: the messages between the nodes.
//! - [`resync`], [`verify`]: rate-limited resync planning and online verify.
//! - [`engine`]: the sans-network replication state machine of one node; the simulation
//!   (tests/mirror_sim.rs) and the tokio driver both drive it.
//! - [`replica`]: the local replica, whose flush is free when nothing was written since the last.
//! - [`driver`]: the running node — engine thread, peer link on tokio, [`driver::MirrorDevice`].
//! - [`admin`]: the admin commands and the text form of `o2fs status`.

pub mod activity_log;
pub mod admin;
pub mod bitmap;
pub mod config;
pub mod driver;
pub mod engine;
pub mod generation;
pub mod meta;
pub mod proto;
pub mod replica;
pub mod resync;
pub mod verify;
