//! The replication state machine of one node of a two-node resource, without network or clock.
//!
//! Inputs are method calls: local writes, reads and flushes; the transport coming up or going
//! down; a message from the peer; the passing of time (`tick`); administrator commands. Outputs are
//! queued [`Output`]s the caller takes with [`Engine::poll`]: messages to send, completions of
//! local requests, and "drop the connection". Disk I/O is synchronous through `BlockDevice`
//! (DESIGN: the core is synchronous code); the tokio driver runs the engine on its own thread. The
//! simulation in `tests/mirror_sim.rs` drives it over an in-process network.
//!
//! Rules it implements, each from DRBD 8:
//! - Protocols: a local write completes when sent (A), when the peer received it (B), or when the
//!   peer wrote it (C). Every write stays tracked until the peer's write ack, and a connection
//!   loss marks the still-tracked ones out of sync (DRBD's transfer log).
//! - Conflicts (dual primary): a peer write overlapping a local write the peer had not seen is
//!   concurrent; the lower node id's data wins on both replicas (DRBD resolves by the
//!   discard/resolve-conflicts flag, i.e. node priority).
//! - Roles: only a primary writes. A node is primary from the start or after `primary` when the
//!   resource file says `become-primary-on`, else from its first write ([`Promotion`]).
//! - Degraded writes mark the bitmap and, first, start a new generation (DRBD's new current UUID).
//! - Fencing `resource-and-stonith`: on connection loss I/O freezes until the cluster decides
//!   ([`Engine::resume_io`] for the survivor, [`Engine::fence`] for the loser) or the link
//!   comes back, when the frozen writes are sent again (DRBD resends its transfer log).
//! - The sync target drives the resync; an application write waits for an outstanding resync
//!   request of the same block (DRBD's conflict between application and resync requests).
//!
//! Files: this one holds the state, its accessors and persistence; `requests` the local
//! requests and the peer's writes (conflicts); `connection` link up/down, freeze/fence, admin
//! commands and the handshake; `messages` the dispatch of peer messages; `sync` resync and verify.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

mod connection;
mod local;
mod messages;
mod requests;
mod sync;

use super::activity_log::ActivityLog;
use super::bitmap::{Bitmap, BM_BLOCK};
use super::config::Protocol;
use super::generation::{decide, Decision, GenIds, Side};
use super::meta::{flags, MetaArea, MetaError, Super};
use super::proto::{Hello, Msg, MAX_PEER_READ};
use super::resync::{Progress, SyncTarget};
use super::verify::{self, Verify, VerifyStatus};
use crate::dev::BlockDevice;

pub use super::config::Fencing;
pub use messages::QUICK_WRITE_MAX;

/// How a node comes to be primary (DRBD's roles; only a primary writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// On its first write (no `become-primary-on` in the resource file; DRBD 9's auto-promote).
    OnWrite,
    /// Set by the resource file and the administrator: primary from the start when
    /// `become-primary-on` names this node (or `both`), else secondary, refusing writes until
    /// promoted (`o2fs primary`).
    Explicit { at_start: bool },
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's id and the peer's (their index in the resource file); the lower wins conflicts.
    pub node_id: u32,
    pub peer_id: u32,
    pub protocol: Protocol,
    /// `allow-two-primaries`: both nodes may write at once. Off, a node writes only while its
    /// peer is secondary, as DRBD.
    pub two_primaries: bool,
    pub promotion: Promotion,
    pub rate_bytes_per_sec: u64,
    pub fencing: Fencing,
    /// Capacity of the activity log, in extents.
    pub al_extents: usize,
    /// Blocks a sync target has asked for and not yet received.
    pub resync_depth: usize,
    /// Blocks per online-verify batch.
    pub verify_batch: u64,
}

/// Why a local request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoFailure {
    #[error("{len} bytes at {offset} are outside the mirror's {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("this node is fenced: no I/O until it is restarted")]
    Fenced,
    /// A write frozen by a lost link, on a node that became the sync target when the link came
    /// back: the peer's newer data replaces it.
    #[error("the peer went on with newer data while this write was frozen; it was not applied on the peer")]
    Superseded,
    #[error("no up-to-date copy of the data is reachable (local replica inconsistent, peer not connected)")]
    NoUpToDateData,
    #[error("local replica: {0}")]
    Device(String),
    #[error("the peer is primary and allow-two-primaries is off: demote it first (`o2fs secondary`)")]
    PeerIsPrimary,
    #[error("this node is secondary: its replica is read-only until it is promoted (`o2fs primary`)")]
    Secondary,
    #[error("a read of {len} bytes from the peer is larger than {MAX_PEER_READ}; read less at a time during a resync")]
    PeerReadTooLarge { len: u64 },
}

/// How a successful write completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// As the protocol asks, with the peer connected.
    Replicated,
    /// Locally only; the blocks are marked out of sync.
    Degraded,
}

#[derive(Debug)]
pub enum Output {
    Send(Msg),
    /// Close the connection; the engine already treats it as down.
    Drop {
        reason: String,
    },
    WriteDone {
        id: u64,
        result: Result<Written, IoFailure>,
    },
    ReadDone {
        id: u64,
        result: Result<Vec<u8>, IoFailure>,
    },
    FlushDone {
        id: u64,
        result: Result<(), IoFailure>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnState {
    /// Will not connect until `connect` or `discard_my_data` (after a refusal or `disconnect`).
    StandAlone,
    /// Wants a connection.
    Unconnected,
    /// Connected, our Hello sent, the peer's not yet received.
    Handshake,
    Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Repl {
    Off,
    Established,
    SyncSource,
    SyncTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IoState {
    Running,
    /// Peer lost under fencing: writes wait for the decision.
    Frozen,
    Fenced,
}

/// What `o2fs status` shows (`drbdadm status`).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node_id: u32,
    pub role: &'static str,
    pub peer_role: &'static str,
    pub connection: ConnState,
    pub replication: Repl,
    pub disk: &'static str,
    pub peer_disk: &'static str,
    pub io: IoState,
    pub out_of_sync_bytes: u64,
    pub resync: Option<Progress>,
    pub resync_speed_bytes_per_sec: Option<u64>,
    /// The last finished resync: blocks moved (zeros among them) and how long it took.
    pub last_resync: Option<ResyncSummary>,
    pub verify: Option<VerifyStatus>,
    pub generations: GenIds,
    pub last_refusal: Option<String>,
    /// No write, resync or verify in flight.
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResyncSummary {
    pub blocks: u64,
    /// Of `blocks`, those that moved as "all zeros" instead of their data.
    pub zero_blocks: u64,
    pub ms: u64,
}

/// A local write sent to the peer and not yet write-acked.
#[derive(Debug)]
struct Request {
    id: u64,
    offset: u64,
    len: u64,
    extents: (u32, u32),
    completed: bool,
}

#[derive(Debug)]
struct PendingWrite {
    id: u64,
    offset: u64,
    data: Vec<u8>,
}

/// A flush waiting for the local replica's flush (done at the next tick, so that it overlaps
/// the peer's) and, when it was sent, the peer's FlushAck.
#[derive(Debug)]
struct PendingFlush {
    id: u64,
    /// The id of the Flush sent to the peer, until its FlushAck (or the link's loss).
    peer: Option<u64>,
    local: Option<Result<(), IoFailure>>,
}

/// State that lives as long as one connection.
#[derive(Debug, Default)]
struct Link {
    next_seq: u64,
    /// Highest peer write seq applied.
    seen: u64,
    peer: Option<Hello>,
    /// The peer said it is primary (Hello or Role).
    peer_primary: bool,
    next_id: u64,
    reads: HashMap<u64, (u64, u64, u64)>,
    /// [`Hello::head`] as this node sent it: later local writes do not count.
    head_sent: Option<[u8; 20]>,
}

pub struct Engine {
    cfg: EngineConfig,
    data: Arc<dyn BlockDevice>,
    meta: MetaArea,
    sup: Super,
    bitmap: Bitmap,
    al: ActivityLog,
    new_gen: Box<dyn FnMut() -> u64 + Send>,
    now: u64,
    out: VecDeque<Output>,
    /// Where messages go when not queued as `Output::Send` (see [`Engine::send_through`]).
    sink: Option<Box<dyn FnMut(Msg) + Send>>,
    conn: ConnState,
    repl: Repl,
    io: IoState,
    link: Link,
    in_flight: BTreeMap<u64, Request>,
    waiting: VecDeque<PendingWrite>,
    /// Local writes left to their callers, by request id (`local`).
    local_out: HashMap<u64, local::LocalOut>,
    /// Peer messages held behind those writes, in order.
    held: VecDeque<Msg>,
    /// The request [`Engine::write_out`] is submitting, and its data once handed out.
    hand_out: Option<u64>,
    handed: Option<Arc<Vec<u8>>>,
    frozen: Vec<Request>,
    /// Blocks marked out of sync only because of the frozen writes ([`Hello::frozen`]).
    frozen_bits: BTreeSet<u64>,
    flushes: Vec<PendingFlush>,
    /// A new generation was started since the connection was lost.
    rotated: bool,
    discard_my_data: bool,
    /// A handshake succeeded since the node started.
    peer_seen: bool,
    /// The cluster has taken the peer out of its membership (it died or fenced): losing the
    /// link to it is then no reason to freeze.
    peer_excluded: bool,
    /// Verify found blocks to repair, and this node becomes their sync target once no
    /// protocol-A-acknowledged write of its own is in flight (a sync target loses those if the
    /// link fails).
    verify_target_pending: bool,
    sync_target: Option<SyncTarget>,
    progress: Option<Progress>,
    last_resync: Option<ResyncSummary>,
    verify: Option<Verify>,
    last_verify: Option<VerifyStatus>,
    last_refusal: Option<String>,
    bitmap_saved_ms: u64,
}

impl Engine {
    /// Opens a node from its meta-disk and replica. A node that crashed while primary merges its
    /// activity log into the bitmap first (DRBD's "AL apply" at attach). `new_gen` supplies fresh
    /// generation ids (random in the daemon, seeded in the simulation).
    pub fn open(
        cfg: EngineConfig,
        data: Arc<dyn BlockDevice>,
        loaded: super::meta::Loaded,
        new_gen: Box<dyn FnMut() -> u64 + Send>,
        now: u64,
    ) -> Result<Engine, MetaError> {
        let super::meta::Loaded { area, mut sup, mut bitmap, al } = loaded;
        if sup.flags & flags::PRIMARY != 0 {
            let shift = sup.al_extent_shift;
            for &e in &al {
                let first = (e as u64) << shift;
                bitmap.set_range(first / BM_BLOCK, (first + (1u64 << shift)) / BM_BLOCK);
            }
            tracing::warn!(
                extents = al.len(),
                out_of_sync = bitmap.count(),
                "crashed while primary: activity-log extents marked out of sync"
            );
            sup.flags = (sup.flags & !flags::PRIMARY) | flags::CRASHED_PRIMARY;
            area.write_bitmap(&mut bitmap)?;
            area.write_super(&sup)?;
            area.flush()?;
        }
        if cfg.promotion == (Promotion::Explicit { at_start: true }) {
            sup.flags |= flags::PRIMARY;
            area.write_super(&sup)?;
            tracing::info!("primary from the start (become-primary-on)");
        }
        let al = ActivityLog::new(cfg.al_extents, sup.al_extent_shift, &al);
        Ok(Engine {
            data,
            meta: area,
            sup,
            bitmap,
            al,
            new_gen,
            now,
            out: VecDeque::new(),
            sink: None,
            conn: ConnState::Unconnected,
            repl: Repl::Off,
            // Under fencing a node starts frozen: until it has seen its peer (or the cluster lets it
            // go on alone) the peer may hold newer data. DRBD's equivalent is a restarted node
            // that the fence-peer handler marked outdated.
            io: if cfg.fencing == Fencing::Freeze { IoState::Frozen } else { IoState::Running },
            link: Link::default(),
            in_flight: BTreeMap::new(),
            waiting: VecDeque::new(),
            local_out: HashMap::new(),
            held: VecDeque::new(),
            hand_out: None,
            handed: None,
            frozen: Vec::new(),
            frozen_bits: BTreeSet::new(),
            flushes: Vec::new(),
            rotated: false,
            discard_my_data: false,
            peer_seen: false,
            peer_excluded: false,
            verify_target_pending: false,
            sync_target: None,
            progress: None,
            last_resync: None,
            verify: None,
            last_verify: None,
            last_refusal: None,
            bitmap_saved_ms: now,
            cfg,
        })
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Bytes the mirror exposes.
    pub fn size(&self) -> u64 {
        self.sup.data_size
    }

    fn is_primary(&self) -> bool {
        self.sup.flags & flags::PRIMARY != 0
    }

    fn consistent(&self) -> bool {
        self.sup.flags & flags::CONSISTENT != 0
    }

    fn established(&self) -> bool {
        self.conn == ConnState::Connected
    }

    /// A connection is up, its handshake done or not.
    fn linked(&self) -> bool {
        matches!(self.conn, ConnState::Handshake | ConnState::Connected)
    }

    /// The transport should be (re)connected.
    pub fn wants_connection(&self) -> bool {
        // Frozen writes are decided at the handshake (`connection`: sent again, or failed).
        self.conn == ConnState::Unconnected && self.io != IoState::Fenced && self.local_out.is_empty()
    }

    /// Writes sent to the peer and not yet acknowledged by it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn out_of_sync_blocks(&self) -> u64 {
        self.bitmap.count()
    }

    pub fn generations(&self) -> GenIds {
        self.sup.gens
    }

    pub fn conn_state(&self) -> ConnState {
        self.conn
    }

    pub fn repl_state(&self) -> Repl {
        self.repl
    }

    pub fn io_state(&self) -> IoState {
        self.io
    }

    /// The reason of the last refused handshake.
    pub fn last_refusal(&self) -> Option<&str> {
        self.last_refusal.as_deref()
    }

    /// Nothing in flight or waiting: writes, flushes, resync, verify.
    pub fn quiet(&self) -> bool {
        self.in_flight.is_empty()
            && self.waiting.is_empty()
            && self.local_out.is_empty()
            && self.flushes.is_empty()
            && self.frozen.is_empty()
            && self.repl != Repl::SyncSource
            && self.repl != Repl::SyncTarget
            && self.verify.is_none()
    }

    pub fn status(&self) -> Status {
        let peer_disk = match (self.conn, self.repl) {
            (ConnState::Connected, Repl::SyncSource) => "Inconsistent",
            (ConnState::Connected, _) => "UpToDate",
            _ => "DUnknown",
        };
        Status {
            node_id: self.cfg.node_id,
            role: if self.is_primary() { "Primary" } else { "Secondary" },
            peer_role: match (self.conn, self.link.peer_primary) {
                (ConnState::Connected, true) => "Primary",
                (ConnState::Connected, false) => "Secondary",
                _ => "Unknown",
            },
            connection: self.conn,
            replication: self.repl,
            disk: if self.consistent() { "UpToDate" } else { "Inconsistent" },
            peer_disk,
            io: self.io,
            out_of_sync_bytes: self.bitmap.count() * BM_BLOCK,
            resync: self.progress,
            resync_speed_bytes_per_sec: self.progress.map(|p| p.speed(self.now)),
            last_resync: self.last_resync,
            verify: self.verify.as_ref().map(Verify::status).or(self.last_verify),
            generations: self.sup.gens,
            last_refusal: self.last_refusal.clone(),
            quiet: self.quiet(),
        }
    }

    // ---- persistence -------------------------------------------------------------------------

    fn save_super(&mut self) -> Result<(), IoFailure> {
        self.meta.write_super(&self.sup).map_err(|e| IoFailure::Device(e.to_string()))
    }

    fn save_bitmap(&mut self) -> Result<(), IoFailure> {
        self.bitmap_saved_ms = self.now;
        self.meta.write_bitmap(&mut self.bitmap).map_err(|e| IoFailure::Device(e.to_string()))
    }

    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), IoFailure> {
        let flags = if on { self.sup.flags | flag } else { self.sup.flags & !flag };
        if flags != self.sup.flags {
            self.sup.flags = flags;
            self.save_super()?;
        }
        Ok(())
    }

    /// Marks a byte range out of sync, durably.
    fn mark_out_of_sync(&mut self, offset: u64, len: u64) -> Result<(), IoFailure> {
        let (first, end) = Bitmap::blocks_of(offset, len);
        if self.bitmap.set_range(first, end) > 0 {
            self.save_bitmap()?;
        }
        Ok(())
    }

    /// Before completing a write the peer may lack: start a new generation, once per
    /// disconnected period.
    fn new_generation(&mut self) -> Result<(), IoFailure> {
        if !self.rotated {
            let fresh = (self.new_gen)();
            self.sup.gens.new_current(fresh);
            self.rotated = true;
            tracing::info!(current = format_args!("{fresh:016x}"), "peer unreachable: new data generation");
            self.save_super()?;
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), IoFailure> {
        match offset.checked_add(len) {
            Some(end) if end <= self.sup.data_size => Ok(()),
            _ => Err(IoFailure::OutOfRange { offset, len, size: self.sup.data_size }),
        }
    }

    fn local_write(&self, offset: u64, data: &[u8]) -> Result<(), IoFailure> {
        self.data.write_at(data, offset).map_err(|e| IoFailure::Device(e.to_string()))
    }

    fn local_read(&self, offset: u64, len: u64) -> Result<Vec<u8>, IoFailure> {
        let mut buf = vec![0u8; len as usize];
        self.data.read_at(&mut buf, offset).map_err(|e| IoFailure::Device(e.to_string()))?;
        Ok(buf)
    }

    /// The local replica holds current data for the range.
    fn local_good(&self, offset: u64, len: u64) -> bool {
        let (first, end) = Bitmap::blocks_of(offset, len);
        self.consistent() || !self.bitmap.any_in(first, end)
    }

    fn send(&mut self, msg: Msg) {
        match &mut self.sink {
            Some(sink) => sink(msg),
            None => self.out.push_back(Output::Send(msg)),
        }
    }

    /// From now on messages go to `sink` the moment they are made instead of as
    /// [`Output::Send`]: the driver has a write on its way to the peer while the engine still
    /// writes it to the local replica.
    pub fn send_through(&mut self, sink: Box<dyn FnMut(Msg) + Send>) {
        self.sink = Some(sink);
    }

    /// The passage of time: local flushes, resync and verify pacing, lazy bitmap writes. The
    /// driver calls it after sending what the last input produced, so that a local flush runs
    /// while the peer's is under way.
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        self.flush_local();
        self.plan_resync();
        self.plan_verify();
        if now.saturating_sub(self.bitmap_saved_ms) >= 1000 {
            if let Err(e) = self.save_bitmap() {
                tracing::error!(error = %e, "writing the out-of-sync bitmap");
            }
        }
    }
}
