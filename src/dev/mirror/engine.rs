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
//! - Degraded writes mark the bitmap and, first, start a new generation (DRBD's new current UUID).
//! - Fencing `resource-and-stonith`: on connection loss I/O freezes until the cluster decides
//!   ([`Engine::resume_io`] for the survivor, [`Engine::fence`] for the loser).
//! - The sync target drives the resync; an application write waits for an outstanding resync
//!   request of the same block (DRBD's conflict between application and resync requests).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::activity_log::ActivityLog;
use super::bitmap::{Bitmap, BM_BLOCK};
use super::config::Protocol;
use super::generation::{decide, Decision, GenIds, Side};
use super::meta::{flags, MetaArea, MetaError, Super};
use super::proto::{Hello, Msg, MAX_PEER_READ};
use super::resync::{Progress, SyncTarget};
use super::verify::{self, Verify, VerifyStatus};
use crate::dev::BlockDevice;

/// What to do when the peer is lost with writes pending (DRBD's `fencing` policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// Complete pending writes locally and go on degraded (DRBD `dont-care`).
    DontCare,
    /// Freeze I/O until told to resume or to fence (DRBD `resource-and-stonith`).
    Freeze,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's id and the peer's (their index in the resource file); the lower wins conflicts.
    pub node_id: u32,
    pub peer_id: u32,
    pub protocol: Protocol,
    pub rate_bytes_per_sec: u64,
    pub fencing: Fencing,
    /// Capacity of the activity log, in extents.
    pub al_extents: usize,
    /// Resync requests in flight.
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
    #[error("no up-to-date copy of the data is reachable (local replica inconsistent, peer not connected)")]
    NoUpToDateData,
    #[error("local replica: {0}")]
    Device(String),
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
    pub connection: ConnState,
    pub replication: Repl,
    pub disk: &'static str,
    pub peer_disk: &'static str,
    pub io: IoState,
    pub out_of_sync_bytes: u64,
    pub resync: Option<Progress>,
    pub resync_speed_bytes_per_sec: Option<u64>,
    /// The last finished resync: blocks moved and how long it took.
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

/// State that lives as long as one connection.
#[derive(Debug, Default)]
struct Link {
    next_seq: u64,
    /// Highest peer write seq applied.
    seen: u64,
    peer: Option<Hello>,
    next_id: u64,
    reads: HashMap<u64, (u64, u64, u64)>,
    flushes: HashMap<u64, u64>,
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
    conn: ConnState,
    repl: Repl,
    io: IoState,
    link: Link,
    in_flight: BTreeMap<u64, Request>,
    waiting: VecDeque<PendingWrite>,
    frozen: Vec<Request>,
    /// A new generation was started since the connection was lost.
    rotated: bool,
    discard_my_data: bool,
    /// A handshake succeeded since the node started.
    peer_seen: bool,
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

/// Byte ranges of `[offset, offset+len)` not covered by any of `holes`.
fn subtract(offset: u64, len: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut parts = vec![(offset, offset + len)];
    for &(h0, hlen) in holes {
        let h1 = h0 + hlen;
        parts = parts
            .into_iter()
            .flat_map(|(a, b)| {
                if h1 <= a || h0 >= b {
                    vec![(a, b)]
                } else {
                    [(a, h0.max(a)), (h1.min(b), b)].into_iter().filter(|(x, y)| x < y).collect()
                }
            })
            .collect();
    }
    parts.into_iter().map(|(a, b)| (a, b - a)).collect()
}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b + blen && b < a + alen
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
            conn: ConnState::Unconnected,
            repl: Repl::Off,
            // Under fencing a node starts frozen: until it has seen its peer (or the cluster lets it
            // go on alone) the peer may hold newer data. DRBD's equivalent is a restarted node
            // that the fence-peer handler marked outdated.
            io: if cfg.fencing == Fencing::Freeze { IoState::Frozen } else { IoState::Running },
            link: Link::default(),
            in_flight: BTreeMap::new(),
            waiting: VecDeque::new(),
            frozen: Vec::new(),
            rotated: false,
            discard_my_data: false,
            peer_seen: false,
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

    fn consistent(&self) -> bool {
        self.sup.flags & flags::CONSISTENT != 0
    }

    fn established(&self) -> bool {
        self.conn == ConnState::Connected
    }

    /// The transport should be (re)connected.
    pub fn wants_connection(&self) -> bool {
        // Frozen writes must be decided (completed after a new generation, or failed) before a
        // handshake compares generations.
        self.conn == ConnState::Unconnected && self.io != IoState::Fenced && self.frozen.is_empty()
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

    /// Nothing in flight or waiting: writes, resync, verify.
    pub fn quiet(&self) -> bool {
        self.in_flight.is_empty()
            && self.waiting.is_empty()
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
            role: if self.sup.flags & flags::PRIMARY != 0 { "Primary" } else { "Secondary" },
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
        self.out.push_back(Output::Send(msg));
    }

    // ---- local requests ----------------------------------------------------------------------

    /// Submits a write; its completion comes as `Output::WriteDone { id }`.
    pub fn write(&mut self, now: u64, id: u64, offset: u64, data: Vec<u8>) {
        self.now = now;
        let refused = match self.check_range(offset, data.len() as u64) {
            Err(e) => Some(e),
            Ok(()) if self.io == IoState::Fenced => Some(IoFailure::Fenced),
            Ok(()) => None,
        };
        if let Some(e) = refused {
            self.out.push_back(Output::WriteDone { id, result: Err(e) });
            return;
        }
        self.waiting.push_back(PendingWrite { id, offset, data });
        self.start_waiting();
    }

    /// Starts waiting writes in order while nothing holds the first back.
    fn start_waiting(&mut self) {
        while self.io == IoState::Running {
            let Some(w) = self.waiting.front() else { break };
            let (first, end) = Bitmap::blocks_of(w.offset, w.data.len() as u64);
            if self.sync_target.as_ref().is_some_and(|t| t.any_requested(first, end)) {
                break;
            }
            let extents = self.al.extents_of(w.offset, w.data.len() as u64);
            let Ok(al_changed) = self.al.begin(extents) else { break };
            let Some(w) = self.waiting.pop_front() else { break };
            let len = w.data.len() as u64;
            match self.start_write(w.offset, w.data, al_changed) {
                Ok(Some(seq)) => {
                    // A sync target has no up-to-date copy of its own: it acknowledges only what
                    // the peer wrote, whatever the protocol; so does a node whose handshake is
                    // still open (it may be about to become one).
                    let completed = self.cfg.protocol == Protocol::A
                        && self.consistent()
                        && self.conn == ConnState::Connected
                        && self.repl != Repl::SyncTarget
                        && !self.verify_target_pending;
                    if completed {
                        self.out.push_back(Output::WriteDone { id: w.id, result: Ok(Written::Replicated) });
                    }
                    self.in_flight.insert(seq, Request { id: w.id, offset: w.offset, len, extents, completed });
                }
                Ok(None) => {
                    self.al.complete(extents);
                    self.out.push_back(Output::WriteDone { id: w.id, result: Ok(Written::Degraded) });
                }
                Err(e) => {
                    self.al.complete(extents);
                    self.out.push_back(Output::WriteDone { id: w.id, result: Err(e) });
                }
            }
        }
    }

    /// Writes locally and sends to the peer (`Some(seq)`) or, disconnected, marks the blocks out
    /// of sync (`None`).
    fn start_write(&mut self, offset: u64, data: Vec<u8>, al_changed: bool) -> Result<Option<u64>, IoFailure> {
        if al_changed {
            // The activity log is on disk before any write to a newly hot extent.
            let hot = self.al.hot().to_vec();
            self.meta.write_al(&hot).map_err(|e| IoFailure::Device(e.to_string()))?;
        }
        self.set_flag(flags::PRIMARY, true)?;
        if self.established() || self.conn == ConnState::Handshake {
            self.local_write(offset, &data)?;
            self.link.next_seq += 1;
            let seq = self.link.next_seq;
            self.send(Msg::Write { seq, seen: self.link.seen, offset, data });
            return Ok(Some(seq));
        }
        if !self.consistent() {
            return Err(IoFailure::NoUpToDateData);
        }
        self.new_generation()?;
        self.mark_out_of_sync(offset, data.len() as u64)?;
        self.local_write(offset, &data)?;
        Ok(None)
    }

    /// Submits a read; it completes as `Output::ReadDone { id }`. Blocks the local replica lacks
    /// (sync target) are read from the peer.
    pub fn read(&mut self, now: u64, id: u64, offset: u64, len: u64) {
        self.now = now;
        let result = self.check_range(offset, len).and_then(|()| {
            if self.io == IoState::Fenced {
                Err(IoFailure::Fenced)
            } else if self.local_good(offset, len) {
                self.local_read(offset, len).map(Some)
            } else if len > MAX_PEER_READ {
                Err(IoFailure::PeerReadTooLarge { len })
            } else if self.established() && self.repl == Repl::SyncTarget {
                self.link.next_id += 1;
                let rid = self.link.next_id;
                self.link.reads.insert(rid, (id, offset, len));
                self.send(Msg::ReadRequest { id: rid, offset, len });
                Ok(None)
            } else {
                Err(IoFailure::NoUpToDateData)
            }
        });
        match result {
            Ok(None) => {}
            Ok(Some(data)) => self.out.push_back(Output::ReadDone { id, result: Ok(data) }),
            Err(e) => self.out.push_back(Output::ReadDone { id, result: Err(e) }),
        }
    }

    /// Makes completed writes durable on both replicas (the peer's when connected).
    pub fn flush(&mut self, now: u64, id: u64) {
        self.now = now;
        let local = self
            .save_bitmap()
            .and_then(|()| self.meta.flush().map_err(|e| IoFailure::Device(e.to_string())))
            .and_then(|()| self.data.flush().map_err(|e| IoFailure::Device(e.to_string())));
        if local.is_ok() && self.established() {
            self.link.next_id += 1;
            let fid = self.link.next_id;
            self.link.flushes.insert(fid, id);
            self.send(Msg::Flush { id: fid });
        } else {
            self.out.push_back(Output::FlushDone { id, result: local });
        }
    }

    // ---- connection --------------------------------------------------------------------------

    /// The transport is up: send our Hello.
    pub fn connected(&mut self, now: u64) {
        self.now = now;
        if self.conn != ConnState::Unconnected {
            return;
        }
        self.conn = ConnState::Handshake;
        self.link = Link::default();
        let hello = Hello {
            size: self.sup.data_size,
            gens: self.sup.gens,
            consistent: self.consistent(),
            crashed_primary: self.sup.flags & flags::CRASHED_PRIMARY != 0,
            discard_my_data: self.discard_my_data,
            fresh_in_sync: self.sup.flags & flags::FRESH_IN_SYNC != 0,
            oos: self.bitmap.runs(),
        };
        self.send(Msg::Hello(hello));
    }

    /// The transport is down (or was dropped). Idempotent.
    pub fn disconnected(&mut self, now: u64, reason: &str) {
        self.now = now;
        self.lose_peer(reason, ConnState::Unconnected);
    }

    fn lose_peer(&mut self, reason: &str, next: ConnState) {
        if !matches!(self.conn, ConnState::Handshake | ConnState::Connected) {
            if next == ConnState::StandAlone {
                self.conn = next;
            }
            return;
        }
        tracing::warn!(reason, in_flight = self.in_flight.len(), "connection to the peer lost");
        self.conn = next;
        self.repl = Repl::Off;
        self.rotated = false;
        self.sync_target = None;
        self.progress = None;
        self.verify_target_pending = false;
        if let Some(v) = self.verify.take() {
            tracing::warn!(status = ?v.status(), "online verify aborted");
        }
        let link = std::mem::take(&mut self.link);
        for (_, (id, offset, len)) in link.reads {
            let result = if self.local_good(offset, len) {
                self.local_read(offset, len)
            } else {
                Err(IoFailure::NoUpToDateData)
            };
            self.out.push_back(Output::ReadDone { id, result });
        }
        for (_, id) in link.flushes {
            self.out.push_back(Output::FlushDone { id, result: Ok(()) });
        }
        let reqs: Vec<Request> = std::mem::take(&mut self.in_flight).into_values().collect();
        let mut marked = Ok(());
        for r in &reqs {
            self.al.complete(r.extents);
            let (first, end) = Bitmap::blocks_of(r.offset, r.len);
            self.bitmap.set_range(first, end);
        }
        if !reqs.is_empty() {
            marked = self.save_bitmap();
        }
        let (done, pending): (Vec<Request>, Vec<Request>) = reqs.into_iter().partition(|r| r.completed);
        if !done.is_empty() && self.consistent() {
            // Protocol A acknowledged writes the peer may not have.
            marked = marked.and_then(|()| self.new_generation());
        }
        if self.cfg.fencing == Fencing::Freeze && self.io == IoState::Running {
            tracing::warn!(pending = pending.len(), "peer lost: I/O frozen until the cluster decides");
            self.io = IoState::Frozen;
            self.frozen.extend(pending);
        } else {
            self.complete_degraded(pending, marked);
        }
        self.start_waiting();
    }

    /// Completes writes the peer may lack: successful (after a new generation) if the local
    /// replica is consistent.
    fn complete_degraded(&mut self, reqs: Vec<Request>, marked: Result<(), IoFailure>) {
        if reqs.is_empty() {
            return;
        }
        let result = marked.and_then(|()| {
            if !self.consistent() {
                return Err(IoFailure::NoUpToDateData);
            }
            self.new_generation()
        });
        for r in reqs {
            let result = result.clone().map(|()| Written::Degraded);
            self.out.push_back(Output::WriteDone { id: r.id, result });
        }
    }

    /// The cluster decided this node survives: frozen writes complete, I/O goes on degraded.
    /// Refused for a node that has not met its peer since it started: the peer may have gone on
    /// alone meanwhile (DRBD lets only an UpToDate node resume alone).
    pub fn resume_io(&mut self, now: u64) -> Result<(), String> {
        self.now = now;
        if self.io != IoState::Frozen {
            return Ok(());
        }
        if !self.peer_seen {
            return Err("this node has not reached its peer since it started; its data may be outdated".into());
        }
        tracing::info!(pending = self.frozen.len(), "I/O resumed after the peer was lost");
        self.io = IoState::Running;
        let frozen = std::mem::take(&mut self.frozen);
        self.complete_degraded(frozen, Ok(()));
        self.start_waiting();
        Ok(())
    }

    /// The cluster decided this node loses: every waiting write fails, and no I/O is done until
    /// restart. The blocks of frozen writes stay marked out of sync.
    pub fn fence(&mut self, now: u64) {
        self.now = now;
        tracing::error!(pending = self.frozen.len() + self.waiting.len(), "fenced: failing all I/O");
        self.io = IoState::Fenced;
        let ids: Vec<u64> = self.frozen.drain(..).map(|r| r.id).chain(self.waiting.drain(..).map(|w| w.id)).collect();
        for id in ids {
            self.out.push_back(Output::WriteDone { id, result: Err(IoFailure::Fenced) });
        }
        if self.conn != ConnState::StandAlone {
            self.drop_link("fenced");
        }
    }

    fn drop_link(&mut self, reason: &str) {
        self.out.push_back(Output::Drop { reason: reason.to_string() });
        self.lose_peer(reason, ConnState::StandAlone);
    }

    /// A peer that broke the protocol: log, drop, and try again later.
    fn protocol_error(&mut self, detail: String) {
        tracing::error!(%detail, "peer protocol error");
        self.out.push_back(Output::Drop { reason: detail.clone() });
        self.lose_peer(&detail, ConnState::Unconnected);
    }

    /// Administrator: stop connecting (`drbdadm disconnect`).
    pub fn disconnect(&mut self, now: u64) {
        self.now = now;
        self.drop_link("disconnected by the administrator");
    }

    /// Administrator: connect again after a refusal or `disconnect`.
    pub fn connect(&mut self, now: u64) {
        self.now = now;
        if self.conn == ConnState::StandAlone {
            self.conn = ConnState::Unconnected;
        }
    }

    /// Administrator: on the next handshake, throw this node's changes away if the nodes split
    /// (`drbdadm connect --discard-my-data`).
    pub fn discard_my_data(&mut self, now: u64) {
        tracing::warn!("discard-my-data: this node's changes since the split will be overwritten");
        self.discard_my_data = true;
        self.connect(now);
    }

    /// Administrator: declare the local replica invalid; it becomes the sync target of every
    /// block on the next handshake (`drbdadm invalidate`).
    pub fn invalidate(&mut self, now: u64) -> Result<(), IoFailure> {
        self.now = now;
        tracing::warn!("invalidate: the whole local replica will be resynced from the peer");
        self.bitmap.set_all();
        self.save_bitmap()?;
        self.set_flag(flags::CONSISTENT, false)?;
        if self.established() {
            self.out.push_back(Output::Drop { reason: "invalidate".into() });
            self.lose_peer("invalidate", ConnState::Unconnected);
        }
        Ok(())
    }

    /// Clean shutdown: the bitmap and "not primary" reach the meta-disk.
    pub fn down(&mut self) -> Result<(), IoFailure> {
        self.save_bitmap()?;
        self.set_flag(flags::PRIMARY, false)?;
        self.meta.flush().map_err(|e| IoFailure::Device(e.to_string()))
    }

    /// Administrator: start an online verify (the peer must be connected, no resync running).
    pub fn start_verify(&mut self, now: u64) -> Result<(), String> {
        self.now = now;
        if !self.established() || self.repl != Repl::Established {
            return Err(format!("verify needs an established connection (now {:?}/{:?})", self.conn, self.repl));
        }
        if self.verify.is_some() {
            return Err("a verify is already running".into());
        }
        tracing::info!(blocks = self.bitmap.len(), "online verify started");
        self.verify = Some(Verify::new(self.bitmap.len(), self.cfg.verify_batch, self.cfg.rate_bytes_per_sec, now));
        self.plan_verify();
        Ok(())
    }

    /// The passage of time: resync and verify pacing, lazy bitmap writes.
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        self.plan_resync();
        self.plan_verify();
        if now.saturating_sub(self.bitmap_saved_ms) >= 1000 {
            if let Err(e) = self.save_bitmap() {
                tracing::error!(error = %e, "writing the out-of-sync bitmap");
            }
        }
    }

    // ---- peer messages -----------------------------------------------------------------------

    /// A message from the peer.
    pub fn receive(&mut self, now: u64, msg: Msg) {
        self.now = now;
        match (self.conn, msg) {
            (ConnState::Handshake, Msg::Hello(h)) => self.on_hello(h),
            (ConnState::Handshake, msg) => {
                self.protocol_error(format!("unexpected {} during {:?}", msg_name(&msg), self.conn))
            }
            (ConnState::Connected, msg) => self.on_message(msg),
            // A message of a connection already given up.
            (ConnState::StandAlone | ConnState::Unconnected, _) => {}
        }
    }

    fn on_hello(&mut self, h: Hello) {
        if h.size != self.sup.data_size {
            let reason = format!("the peer's replica exposes {} bytes, ours {}", h.size, self.sup.data_size);
            return self.refuse(reason);
        }
        let me = Side {
            gens: self.sup.gens,
            consistent: self.consistent(),
            crashed_primary: self.sup.flags & flags::CRASHED_PRIMARY != 0,
            discard_my_data: self.discard_my_data,
            has_bits: !self.bitmap.is_empty(),
            fresh_in_sync: self.sup.flags & flags::FRESH_IN_SYNC != 0,
        };
        let peer = Side {
            gens: h.gens,
            consistent: h.consistent,
            crashed_primary: h.crashed_primary,
            discard_my_data: h.discard_my_data,
            has_bits: !h.oos.is_empty(),
            fresh_in_sync: h.fresh_in_sync,
        };
        let lower = self.cfg.node_id < self.cfg.peer_id;
        let decision = decide(&me, &peer, lower);
        tracing::info!(?decision, ours = ?me.gens, peers = ?peer.gens, "handshake");
        let result = match decision {
            Decision::Refuse(r) => return self.refuse(r.to_string()),
            Decision::InSync => {
                if self.sup.gens.current == super::generation::JUST_CREATED {
                    self.sup.flags |= flags::FRESH_IN_SYNC;
                }
                self.sup.gens.in_sync();
                self.sup.flags &= !flags::CRASHED_PRIMARY;
                self.repl = Repl::Established;
                self.save_super()
            }
            Decision::Resync { source, full } => self.start_resync(source, full, &h),
        };
        self.discard_my_data = false;
        self.peer_seen = true;
        self.last_refusal = None;
        self.conn = ConnState::Connected;
        self.link.peer = Some(h);
        if let Err(e) = result {
            tracing::error!(error = %e, "meta-disk write at handshake");
            return self.protocol_error(format!("local meta-disk failed: {e}"));
        }
        if self.io == IoState::Frozen && self.frozen.is_empty() {
            tracing::info!("peer connected: frozen I/O resumes");
            self.io = IoState::Running;
            self.start_waiting();
        }
        self.plan_resync();
    }

    fn refuse(&mut self, reason: String) {
        tracing::error!(%reason, "connection refused");
        self.last_refusal = Some(reason.clone());
        self.drop_link(&reason);
    }

    fn start_resync(&mut self, source: bool, full: bool, h: &Hello) -> Result<(), IoFailure> {
        if h.gens.current == self.sup.gens.current {
            // Both hold this generation (a repair resync): the bitmap id has served.
            self.sup.gens.in_sync();
        }
        if full {
            self.bitmap.set_all();
        } else {
            self.bitmap.merge_runs(&h.oos);
        }
        self.save_bitmap()?;
        let total = self.bitmap.count();
        tracing::info!(source, full, blocks = total, "resync starts");
        self.progress = Some(Progress::new(total, self.now));
        if source {
            self.repl = Repl::SyncSource;
            Ok(())
        } else {
            self.repl = Repl::SyncTarget;
            self.sup.gens.start_sync_target(&h.gens, full);
            self.save_super()?;
            let t = SyncTarget::new(h.gens.current, self.cfg.rate_bytes_per_sec, self.cfg.resync_depth, self.now);
            self.sync_target = Some(t);
            self.set_flag(flags::CONSISTENT, false)
        }
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Hello(_) => self.protocol_error("a second Hello".into()),
            Msg::Write { seq, seen, offset, data } => self.on_peer_write(seq, seen, offset, data),
            Msg::RecvAck { seq } => {
                if self.cfg.protocol == Protocol::B && self.consistent() {
                    self.complete_request(seq);
                }
            }
            Msg::WriteAck { seq } => match self.in_flight.remove(&seq) {
                Some(r) => {
                    self.al.complete(r.extents);
                    if !r.completed {
                        self.out.push_back(Output::WriteDone { id: r.id, result: Ok(Written::Replicated) });
                    }
                    self.become_verify_target();
                    self.start_waiting();
                }
                None => self.protocol_error(format!("write ack for unknown request {seq}")),
            },
            Msg::Flush { id } => {
                let ok = self.data.flush();
                match ok {
                    Ok(()) => self.send(Msg::FlushAck { id }),
                    Err(e) => self.protocol_error(format!("local flush for the peer failed: {e}")),
                }
            }
            Msg::FlushAck { id } => {
                if let Some(caller) = self.link.flushes.remove(&id) {
                    self.out.push_back(Output::FlushDone { id: caller, result: Ok(()) });
                }
            }
            Msg::ReadRequest { id, offset, len } => {
                if len > MAX_PEER_READ {
                    return self.protocol_error(format!("read request of {len} bytes"));
                }
                let data = match self.check_range(offset, len) {
                    Ok(()) if self.local_good(offset, len) => self.local_read(offset, len).ok(),
                    Ok(()) => None,
                    Err(e) => return self.protocol_error(format!("read request: {e}")),
                };
                self.send(Msg::ReadReply { id, data });
            }
            Msg::ReadReply { id, data } => {
                let Some((caller, _, len)) = self.link.reads.remove(&id) else {
                    return self.protocol_error(format!("read reply for unknown request {id}"));
                };
                let result = match data {
                    Some(d) if d.len() as u64 == len => Ok(d),
                    Some(d) => return self.protocol_error(format!("read reply of {} bytes for {len}", d.len())),
                    None => Err(IoFailure::NoUpToDateData),
                };
                self.out.push_back(Output::ReadDone { id: caller, result });
            }
            Msg::ResyncRequest { block } => self.on_resync_request(block),
            Msg::ResyncData { block, data } => self.on_resync_data(block, data),
            Msg::ResyncAck { block } => {
                if self.bitmap.clear(block) {
                    if let Some(p) = &mut self.progress {
                        p.done_blocks += 1;
                    }
                }
            }
            Msg::ResyncDone => self.on_resync_done(),
            Msg::VerifyBatch { start, digests } => self.on_verify_batch(start, digests),
            Msg::VerifyReply { start, mismatched } => self.on_verify_reply(start, mismatched),
            Msg::VerifyDone { found } => self.on_verify_done(found),
        }
    }

    fn complete_request(&mut self, seq: u64) {
        if let Some(r) = self.in_flight.get_mut(&seq) {
            if !r.completed {
                r.completed = true;
                self.out.push_back(Output::WriteDone { id: r.id, result: Ok(Written::Replicated) });
            }
        }
    }

    fn on_peer_write(&mut self, seq: u64, seen: u64, offset: u64, data: Vec<u8>) {
        if let Err(e) = self.check_range(offset, data.len() as u64) {
            return self.protocol_error(format!("peer write {seq}: {e}"));
        }
        if seq != self.link.seen + 1 || seen > self.link.next_seq {
            return self.protocol_error(format!("peer write {seq} (seen {seen}) out of order"));
        }
        self.link.seen = seq;
        tracing::debug!(seq, seen, offset, len = data.len(), "peer write");
        if self.cfg.protocol == Protocol::B {
            self.send(Msg::RecvAck { seq });
        }
        let len = data.len() as u64;
        // Our writes the peer had not seen when it issued this one, and that overlap it.
        let concurrent: Vec<(u64, u64)> = self
            .in_flight
            .range(seen + 1..)
            .filter(|(_, r)| overlaps(r.offset, r.len, offset, len))
            .map(|(_, r)| (r.offset, r.len))
            .collect();
        let parts = if concurrent.is_empty() {
            vec![(offset, len)]
        } else if self.cfg.node_id < self.cfg.peer_id {
            tracing::info!(offset, len, ours = ?concurrent, "concurrent writes: ours win (lower node id)");
            subtract(offset, len, &concurrent)
        } else {
            tracing::info!(offset, len, ours = ?concurrent, "concurrent writes: the peer's win (lower node id)");
            vec![(offset, len)]
        };
        for (at, n) in parts {
            let from = (at - offset) as usize;
            if let Err(e) = self.local_write(at, &data[from..from + n as usize]) {
                return self.protocol_error(format!("writing the peer's data: {e}"));
            }
        }
        self.send(Msg::WriteAck { seq });
    }

    fn block_in_range(&self, block: u64) -> bool {
        block < self.bitmap.len()
    }

    fn on_resync_request(&mut self, block: u64) {
        if self.repl != Repl::SyncSource || !self.block_in_range(block) {
            return self.protocol_error(format!("resync request for block {block} in {:?}", self.repl));
        }
        match self.local_read(block * BM_BLOCK, BM_BLOCK) {
            Ok(data) => self.send(Msg::ResyncData { block, data }),
            Err(e) => self.protocol_error(format!("reading block {block} for the peer: {e}")),
        }
    }

    fn on_resync_data(&mut self, block: u64, data: Vec<u8>) {
        if data.len() as u64 != BM_BLOCK || !self.block_in_range(block) {
            return self.protocol_error(format!("resync data for block {block}, {} bytes", data.len()));
        }
        let Some(t) = self.sync_target.as_mut() else {
            return self.protocol_error(format!("resync data for block {block} while {:?}", self.repl));
        };
        if !t.answered(block) {
            return self.protocol_error(format!("resync data for block {block} that was not requested"));
        }
        if let Err(e) = self.local_write(block * BM_BLOCK, &data) {
            return self.protocol_error(format!("writing resync data: {e}"));
        }
        if self.bitmap.clear(block) {
            if let Some(p) = &mut self.progress {
                p.done_blocks += 1;
            }
        }
        self.send(Msg::ResyncAck { block });
        self.start_waiting();
        self.plan_resync();
    }

    /// Sync target: request what the rate allows; finish when the bitmap is empty.
    fn plan_resync(&mut self) {
        let Some(t) = self.sync_target.as_mut() else { return };
        let blocks = t.plan(self.now, &self.bitmap);
        let finished = self.bitmap.is_empty() && t.idle();
        let source_current = t.source_current;
        for block in blocks {
            self.send(Msg::ResyncRequest { block });
        }
        if !finished {
            return;
        }
        self.sync_target = None;
        self.sup.gens.adopt(source_current);
        self.sup.flags = (self.sup.flags | flags::CONSISTENT) & !flags::CRASHED_PRIMARY;
        let saved = self.save_bitmap().and_then(|()| self.save_super());
        if let Err(e) = saved {
            return self.protocol_error(format!("finishing the resync: {e}"));
        }
        self.finish_resync("target");
        self.send(Msg::ResyncDone);
        self.start_waiting();
    }

    fn finish_resync(&mut self, side: &str) {
        if let Some(p) = self.progress.take() {
            let ms = self.now.saturating_sub(p.started_ms);
            tracing::info!(side, blocks = p.done_blocks, ms, bytes_per_sec = p.speed(self.now), "resync finished");
            self.last_resync = Some(ResyncSummary { blocks: p.done_blocks, ms });
        }
        self.repl = Repl::Established;
    }

    fn on_resync_done(&mut self) {
        if self.repl != Repl::SyncSource {
            return self.protocol_error(format!("resync done while {:?}", self.repl));
        }
        self.sup.gens.in_sync();
        self.sup.flags &= !flags::CRASHED_PRIMARY;
        if let Err(e) = self.save_bitmap().and_then(|()| self.save_super()) {
            return self.protocol_error(format!("finishing the resync: {e}"));
        }
        self.finish_resync("source");
    }

    fn plan_verify(&mut self) {
        let Some(v) = self.verify.as_mut() else { return };
        let Some((start, count)) = v.next_batch(self.now) else { return };
        match verify::digests(&*self.data, start, count) {
            Ok(digests) => self.send(Msg::VerifyBatch { start, digests }),
            Err(e) => {
                tracing::error!(error = %e, "online verify aborted: local read failed");
                self.verify = None;
            }
        }
    }

    fn on_verify_batch(&mut self, start: u64, digests: Vec<super::proto::Digest>) {
        let count = digests.len() as u64;
        if start.checked_add(count).is_none_or(|end| end > self.bitmap.len()) {
            return self.protocol_error(format!("verify batch of {count} blocks at {start}"));
        }
        let ours = match verify::digests(&*self.data, start, count) {
            Ok(d) => d,
            Err(e) => return self.protocol_error(format!("verify: local read failed: {e}")),
        };
        let mismatched: Vec<u64> = (start..start + count)
            .zip(ours.iter().zip(&digests))
            .filter(|(_, (a, b))| a != b)
            .map(|(b, _)| b)
            .collect();
        if let Err(e) = self.mark_blocks(&mismatched) {
            return self.protocol_error(format!("verify: {e}"));
        }
        self.send(Msg::VerifyReply { start, mismatched });
    }

    fn mark_blocks(&mut self, blocks: &[u64]) -> Result<(), IoFailure> {
        for &b in blocks {
            if b >= self.bitmap.len() {
                return Err(IoFailure::OutOfRange { offset: b * BM_BLOCK, len: BM_BLOCK, size: self.sup.data_size });
            }
            tracing::warn!(block = b, "online verify: block differs between the replicas");
            self.bitmap.set_range(b, b + 1);
        }
        self.save_bitmap()
    }

    fn on_verify_reply(&mut self, start: u64, mismatched: Vec<u64>) {
        if self.verify.is_none() {
            return self.protocol_error(format!("verify reply for {start} without a verify running"));
        }
        if let Err(e) = self.mark_blocks(&mismatched) {
            return self.protocol_error(format!("verify reply: {e}"));
        }
        let v = self.verify.as_mut().expect("checked above");
        v.answered(mismatched.len() as u64);
        let status = v.status();
        if !status.finished {
            return self.plan_verify();
        }
        self.verify = None;
        self.last_verify = Some(status);
        tracing::info!(out_of_sync = status.out_of_sync_blocks, "online verify finished");
        self.send(Msg::VerifyDone { found: status.out_of_sync_blocks });
        if status.out_of_sync_blocks > 0 && self.repl == Repl::Established {
            // The verifying node's data is taken as right (DRBD resyncs verify findings from
            // the node that ran it on the next connect; we do it at once).
            self.progress = Some(Progress::new(self.bitmap.count(), self.now));
            self.repl = Repl::SyncSource;
        }
    }

    fn on_verify_done(&mut self, found: u64) {
        if found == 0 || self.repl != Repl::Established {
            return;
        }
        self.verify_target_pending = true;
        self.become_verify_target();
    }

    fn become_verify_target(&mut self) {
        if !self.verify_target_pending || self.in_flight.values().any(|r| r.completed) {
            return;
        }
        self.verify_target_pending = false;
        let current = self.sup.gens.current;
        self.progress = Some(Progress::new(self.bitmap.count(), self.now));
        self.repl = Repl::SyncTarget;
        self.sync_target = Some(SyncTarget::new(current, self.cfg.rate_bytes_per_sec, self.cfg.resync_depth, self.now));
        if let Err(e) = self.set_flag(flags::CONSISTENT, false) {
            return self.protocol_error(format!("starting the verify resync: {e}"));
        }
        self.plan_resync();
    }
}

fn msg_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello(_) => "Hello",
        Msg::Write { .. } => "Write",
        Msg::RecvAck { .. } => "RecvAck",
        Msg::WriteAck { .. } => "WriteAck",
        Msg::Flush { .. } => "Flush",
        Msg::FlushAck { .. } => "FlushAck",
        Msg::ReadRequest { .. } => "ReadRequest",
        Msg::ReadReply { .. } => "ReadReply",
        Msg::ResyncRequest { .. } => "ResyncRequest",
        Msg::ResyncData { .. } => "ResyncData",
        Msg::ResyncAck { .. } => "ResyncAck",
        Msg::ResyncDone => "ResyncDone",
        Msg::VerifyBatch { .. } => "VerifyBatch",
        Msg::VerifyReply { .. } => "VerifyReply",
        Msg::VerifyDone { .. } => "VerifyDone",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_holes() {
        assert_eq!(subtract(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(subtract(0, 100, &[(10, 10), (50, 100)]), vec![(0, 10), (20, 30)]);
        assert_eq!(subtract(10, 10, &[(0, 100)]), vec![]);
        assert!(overlaps(0, 10, 9, 1) && !overlaps(0, 10, 10, 5));
    }
}
