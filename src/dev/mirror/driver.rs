//! The running mirror of one node: the engine on its own thread, the peer link on a tokio
//! runtime, and [`MirrorDevice`], the `BlockDevice` the filesystem writes through.
//!
//! DESIGN's threading rule: the engine (synchronous, it does the disk I/O) runs on plain threads
//! — the engine thread for peer messages, admin commands and ticks, and the device's callers for
//! their own requests, taking turns under one lock (the engine thread fdatasyncs the replica
//! for the peer's Flush without it: `Output::FlushReplica`); tokio tasks own the sockets; they meet
//! through channels. Tokio tasks never wait for the disk: they send on unbounded channels, and
//! hand a message to the engine themselves only when its lock is free at once and handling it
//! flushes nothing ([`Engine::receive_quick`]: an acknowledgement, or the peer's small write,
//! which goes to the page cache and is acknowledged at once, without waking the engine thread).
//! A peer message that arrives while a thread holds the engine's lock waits in an inbox, and
//! that thread hands it to the engine before it lets go ([`Turns`]). The engine side never
//! awaits: its messages go onto the socket when it takes them at once, else to a sending task.
//!
//! Each of these spares a thread wake-up, which on a busy machine costs more than the work: a
//! caller runs its request itself rather than handing it to the engine thread, then blocks on a
//! reply channel until the request completes — at once for a local read or a degraded write, on
//! the peer's ack otherwise; an ack that arrives while the caller still holds the engine (its
//! local write, the flush that follows) is taken by the caller itself. A large write's local
//! part runs in its caller's thread after it let go of the engine (`Engine::write_out`), so
//! large writes of different callers reach the replica at once.
//!
//! Connections: both nodes listen on their `address`; the node listed first in the resource file
//! connects (one connection at a time, no crossing attempts). Every connection is authenticated
//! by `net` (HMAC-SHA1 over the shared secret, peer name and address checked, refusals logged on
//! both sides).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use serde_json::{json, Value};
use tokio::sync::{mpsc as tmpsc, watch};

use super::config::{MetaDisk, ResourceConfig};
use super::engine::{Engine, EngineConfig, Fencing, IoFailure, Output, Promotion, Written};
use super::meta::{self, MetaArea, MetaError, Super};
use super::proto::Msg;
use super::replica::Replica;
use crate::dev::{check_range, BlockDevice, DevError, FileDevice};
use crate::net::conn::Traffic;
use crate::net::{self, Identity, NetConfig};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("node {node} is not a host of resource {resource}")]
    UnknownNode { node: String, resource: String },
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Meta { path: PathBuf, source: MetaError },
    #[error("starting the network runtime: {0}")]
    Runtime(std::io::Error),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("invalid network settings: {0}")]
    Net(#[from] net::NetError),
}

/// How a node runs its mirror.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub node: String,
    pub net: NetConfig,
    pub fencing: Fencing,
}

enum Event {
    Up {
        conn: u64,
        peer: String,
        wire: Wire,
    },
    Down {
        conn: u64,
        reason: String,
    },
    Peer {
        conn: u64,
        msg: Msg,
    },
    Admin {
        request: Value,
        reply: mpsc::Sender<Value>,
    },
    Cluster(Verdict),
    /// Flush the replica for the peer ([`Output::FlushReplica`]), before taking the engine.
    FlushReplica {
        token: u64,
    },
    Shutdown,
}

/// What the cluster decided, for a mirror run under `Fencing::Freeze`.
enum Verdict {
    PeerMember(bool),
    Fence,
}

enum Waiter {
    Write(mpsc::Sender<Result<Written, IoFailure>>),
    Read(mpsc::Sender<Result<Vec<u8>, IoFailure>>),
    Flush(mpsc::Sender<Result<(), IoFailure>>),
}

/// The engine and the routing of its outputs, shared by the engine thread and the callers.
struct Core {
    engine: Engine,
    waiters: HashMap<u64, Waiter>,
    next_id: u64,
    /// The id of the connection the engine uses.
    conn: Option<u64>,
    outbox: Outbox,
    /// To the engine thread: flushes of the replica for the peer.
    events: mpsc::Sender<Event>,
    wants: watch::Sender<bool>,
    start: Instant,
    /// The engine was shut down: requests fail.
    stopped: bool,
}

/// The engine's lock and the peer's messages on their way to the engine. A message that
/// arrives while a thread holds the lock waits in `inbox`, and that thread hands it to the
/// engine before it lets go ([`Turns::release`]): no thread is woken for it.
struct Turns {
    core: Mutex<Core>,
    inbox: Mutex<VecDeque<(u64, Msg)>>,
    /// Peer messages handed to the engine thread and not yet taken by the engine; while there
    /// are any, later ones go the same way (the engine takes the peer's messages in order).
    peer_queued: AtomicUsize,
    events: mpsc::Sender<Event>,
}

/// Who lets go of the engine's lock: a plain thread, which may do the disk I/O a peer message
/// needs, or the network task, which takes only quick ones and passes the rest to the engine
/// thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Thread,
    Task,
}

impl Turns {
    /// Hands the inbox to the engine, then lets go of the lock; looks again once it is free (a
    /// message may have arrived just before) and takes the lock back for it if nobody has.
    fn release<'t>(&'t self, mut core: MutexGuard<'t, Core>, holder: Holder) {
        loop {
            self.take_inbox(&mut core, holder);
            drop(core);
            if self.inbox.lock().is_empty() {
                return;
            }
            match self.core.try_lock() {
                Some(again) => core = again,
                None => return,
            }
        }
    }

    /// Hands the inbox to the engine in order. The engine thread takes a message of a
    /// connection the engine has not taken up yet (its `Up` is on the way there), one that is
    /// not quick when the network task holds the lock, and every message after one of those.
    fn take_inbox(&self, core: &mut Core, holder: Holder) {
        let msgs: Vec<(u64, Msg)> = self.inbox.lock().drain(..).collect();
        if msgs.is_empty() {
            return;
        }
        let now = core.now();
        for (conn, msg) in msgs {
            if core.stopped {
                // The engine is down: nothing more reaches the replica.
                continue;
            }
            let msg = if core.conn != Some(conn) || self.peer_queued.load(Ordering::Acquire) > 0 {
                msg
            } else if holder == Holder::Thread {
                core.engine.receive(now, msg);
                continue;
            } else {
                match core.engine.receive_quick(now, msg) {
                    Ok(()) => continue,
                    Err(msg) => msg,
                }
            };
            self.to_engine_thread(conn, msg);
        }
        core.route();
    }

    fn to_engine_thread(&self, conn: u64, msg: Msg) {
        self.peer_queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.events.send(Event::Peer { conn, msg });
    }
}

/// The connection the engine uses (its messages go there as it makes them), and what the
/// connections before it moved.
#[derive(Default)]
struct OutboxState {
    wire: Option<Wire>,
    past: Traffic,
}

type Outbox = Arc<Mutex<OutboxState>>;

impl OutboxState {
    /// Switches to `wire` (None: no connection).
    fn set(&mut self, wire: Option<Wire>) {
        if let Some(old) = std::mem::replace(&mut self.wire, wire) {
            self.past = self.past + old.sender.traffic();
        }
    }

    /// Bytes moved with the peer since this node started.
    fn traffic(&self) -> Traffic {
        self.wire.as_ref().map_or(self.past, |w| self.past + w.sender.traffic())
    }
}

/// The sending side of a connection: a message goes out from the engine's side at once when
/// the socket takes it without waiting (no thread to wake), else through the connection's
/// sending task — and so do the messages after it while any waits there (`queued`), to keep
/// their order.
struct Wire {
    sender: net::ConnSender,
    task: tmpsc::UnboundedSender<Msg>,
    queued: Arc<AtomicUsize>,
}

/// Called only under the [`Core`] lock, which orders the messages.
fn send_to(outbox: &Outbox, msg: Msg) {
    let outbox = outbox.lock();
    let Some(wire) = outbox.wire.as_ref() else { return };
    // A failed try is left to the task, which reports the connection down.
    if wire.queued.load(Ordering::Acquire) == 0 && matches!(wire.sender.try_send(&msg), Ok(true)) {
        return;
    }
    wire.queued.fetch_add(1, Ordering::AcqRel);
    let _ = wire.task.send(msg);
}

/// One node's running mirror. Dropping it shuts the engine down cleanly.
pub struct Mirror {
    events: mpsc::Sender<Event>,
    turns: Arc<Turns>,
    /// [`Core::outbox`], read without the engine's lock.
    outbox: Outbox,
    replica: Arc<dyn BlockDevice>,
    size: u64,
    resource: String,
    node: String,
    engine: Option<std::thread::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    /// A handle on `runtime`, which lives until drop.
    handle: tokio::runtime::Handle,
}

/// Opens `host`'s replica and meta-disk, creating fresh metadata in an all-zero meta area (a new
/// replica); any other content that is not valid metadata is an error.
fn open_replica(
    host: &super::config::HostConfig,
    al_shift: u32,
) -> Result<(Arc<dyn BlockDevice>, meta::Loaded), MirrorError> {
    fn open_err(path: &Path) -> impl FnOnce(std::io::Error) -> MirrorError + '_ {
        move |source| MirrorError::Open { path: path.to_owned(), source }
    }
    fn meta_err(path: &Path) -> impl FnOnce(MetaError) -> MirrorError + '_ {
        move |source| MirrorError::Meta { path: path.to_owned(), source }
    }
    let file = FileDevice::open(&host.disk, true).map_err(open_err(&host.disk))?;
    let replica: Arc<dyn BlockDevice> = Arc::new(Replica::new(file));
    let (meta_dev, meta_path, data_size, base): (Arc<dyn BlockDevice>, &Path, u64, u64) = match &host.meta_disk {
        MetaDisk::Internal => {
            let (data, base) = meta::internal_layout(replica.size()).map_err(meta_err(&host.disk))?;
            (replica.clone(), &host.disk, data, base)
        }
        MetaDisk::External { path, index } => {
            let (data, base) = meta::external_layout(replica.size(), *index).map_err(meta_err(path))?;
            let dev = FileDevice::create(path, Some(base + meta::meta_size(data))).map_err(open_err(path))?;
            (Arc::new(dev), path, data, base)
        }
    };
    let mut magic = [0u8; 8];
    meta_dev.read_at(&mut magic, base).map_err(|e| meta_err(meta_path)(e.into()))?;
    if magic == [0; 8] {
        tracing::info!(meta = %meta_path.display(), offset = base, data_size, "new replica: creating its metadata");
        MetaArea::create(meta_dev.clone(), base, &Super::fresh(data_size, al_shift)).map_err(meta_err(meta_path))?;
    }
    let loaded = MetaArea::open(meta_dev, base, data_size).map_err(meta_err(meta_path))?;
    Ok((replica, loaded))
}

impl Mirror {
    /// Opens this node's replica and starts the engine and the peer link.
    pub fn start(res: &ResourceConfig, opts: MirrorOptions) -> Result<Mirror, MirrorError> {
        let unknown = || MirrorError::UnknownNode { node: opts.node.clone(), resource: res.name.clone() };
        let host = res.host(&opts.node).ok_or_else(unknown)?;
        let peer = res.peer_of(&opts.node).ok_or_else(unknown)?.clone();
        let node_id = res.hosts.iter().position(|h| h.name == opts.node).unwrap_or(0) as u32;
        let net_cfg = NetConfig { data_integrity: res.data_integrity_alg.is_some(), ..opts.net };
        net_cfg.validate()?;
        let (replica, loaded) = open_replica(host, super::activity_log::DEFAULT_EXTENT_SHIFT)?;
        let size = loaded.sup.data_size;
        let cfg = EngineConfig {
            node_id,
            peer_id: 1 - node_id,
            protocol: res.protocol,
            two_primaries: res.allow_two_primaries,
            promotion: res
                .primary_at_start(&opts.node)
                .map_or(Promotion::OnWrite, |at_start| Promotion::Explicit { at_start }),
            rate_bytes_per_sec: res.rate_bytes_per_sec,
            fencing: opts.fencing,
            al_extents: 257,
            resync_depth: 1024,
            verify_batch: 64,
        };
        let new_gen = Box::new(|| {
            let mut b = [0u8; 8];
            // A failing getrandom leaves a time-derived id, still unique enough for one node.
            if getrandom::getrandom(&mut b).is_err() {
                b = (std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos() as u64).to_le_bytes();
            }
            u64::from_le_bytes(b) | 1 << 63
        });
        let disk = host.disk.clone();
        let mut engine = Engine::open(cfg, replica.clone(), loaded, new_gen, 0)
            .map_err(|source| MirrorError::Meta { path: disk.clone(), source })?;
        let outbox = Outbox::default();
        let sink = outbox.clone();
        let traffic = outbox.clone();
        engine.send_through(Box::new(move |msg| send_to(&sink, msg)));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("o2fs-mirror-net")
            .enable_all()
            .build()
            .map_err(MirrorError::Runtime)?;
        let (events, rx) = mpsc::channel();
        let (wants_tx, wants_rx) = watch::channel(false);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::V4(host.address)))
            .map_err(|source| MirrorError::Listen { addr: SocketAddr::V4(host.address), source })?;
        let core = Mutex::new(Core {
            engine,
            waiters: HashMap::new(),
            next_id: 0,
            conn: None,
            outbox,
            events: events.clone(),
            wants: wants_tx,
            start: Instant::now(),
            stopped: false,
        });
        let turns =
            Arc::new(Turns { core, inbox: Mutex::default(), peer_queued: AtomicUsize::new(0), events: events.clone() });
        let link = Link {
            me: Identity::new(opts.node.clone(), format!("mirror:{}", res.name))
                .with_version(super::proto::PROTOCOL_VERSION),
            peer_name: peer.name.clone(),
            peer_addr: SocketAddr::V4(peer.address),
            my_ip: *host.address.ip(),
            secret: res.shared_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            cfg: net_cfg,
            events: events.clone(),
            next_conn: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            turns: turns.clone(),
        };
        let link = Arc::new(link);
        runtime.spawn(link.clone().listen(listener));
        if node_id == 0 {
            runtime.spawn(link.connect_loop(wants_rx));
        }
        let (shared, flushed) = (turns.clone(), replica.clone());
        let engine = std::thread::Builder::new()
            .name("o2fs-mirror".into())
            .spawn(move || engine_loop(&shared, &flushed, rx))
            .map_err(MirrorError::Runtime)?;
        tracing::info!(resource = %res.name, node = %opts.node, size, "mirror up");
        Ok(Mirror {
            events,
            turns,
            outbox: traffic,
            replica,
            size,
            resource: res.name.clone(),
            node: opts.node,
            engine: Some(engine),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The device the filesystem (or a test) writes through.
    pub fn device(&self) -> MirrorDevice {
        MirrorDevice { turns: self.turns.clone(), replica: self.replica.clone(), size: self.size }
    }

    /// Answers one admin request (`status`, `verify`, `connect`, `disconnect`, `invalidate`,
    /// `discard-my-data`, and `write`/`read` of hex data for tests and scripts).
    pub fn admin(&self, request: &Value) -> Value {
        match request["cmd"].as_str() {
            Some("write") => return self.admin_write(request),
            Some("read") => return self.admin_read(request),
            _ => {}
        }
        let (reply, rx) = mpsc::channel();
        if self.events.send(Event::Admin { request: request.clone(), reply }).is_err() {
            return crate::net::admin::err("the mirror engine has stopped");
        }
        let mut v = rx.recv().unwrap_or_else(|_| crate::net::admin::err("the mirror engine has stopped"));
        if let Some(o) = v.get_mut("mirror").and_then(Value::as_object_mut) {
            o.insert("resource".into(), json!(self.resource));
            o.insert("node".into(), json!(self.node));
            o.insert("wire".into(), json!(self.outbox.lock().traffic()));
        }
        v
    }

    fn admin_write(&self, request: &Value) -> Value {
        let (Some(offset), Some(data)) = (request["offset"].as_u64(), request["hex"].as_str().and_then(from_hex))
        else {
            return crate::net::admin::err("write needs \"offset\" (a number) and \"hex\" (hex digits)");
        };
        match self.device().write_at(&data, offset) {
            Ok(()) => crate::net::admin::ok(json!({})),
            Err(e) => crate::net::admin::err(e),
        }
    }

    fn admin_read(&self, request: &Value) -> Value {
        let (Some(offset), Some(len)) = (request["offset"].as_u64(), request["len"].as_u64()) else {
            return crate::net::admin::err("read needs \"offset\" and \"len\" (numbers)");
        };
        if len > 16 << 20 {
            return crate::net::admin::err("read of more than 16 MiB refused");
        }
        let mut buf = vec![0u8; len as usize];
        match self.device().read_at(&mut buf, offset) {
            Ok(()) => crate::net::admin::ok(json!({ "hex": to_hex(&buf) })),
            Err(e) => crate::net::admin::err(e),
        }
    }

    /// Waits for the first handshake with the peer, as DRBD's `wfc-timeout` (or
    /// `degr-wfc-timeout` when this node was running degraded before) asks: up to that many
    /// seconds, forever for 0. Returns whether the peer was reached; a handshake refused by
    /// either side (split brain, unrelated data) ends the wait with the reason.
    pub fn wait_for_peer(&self, res: &ResourceConfig) -> Result<bool, String> {
        let status = |m: &Mirror| m.admin(&json!({"cmd": "status"}))["mirror"].clone();
        let degraded = status(self)["generations"]["bitmap"].as_u64().is_some_and(|b| b != 0);
        let secs = if degraded { res.degr_wfc_timeout } else { res.wfc_timeout };
        tracing::info!(seconds = secs, degraded, "waiting for the peer (0: forever)");
        let deadline = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs as u64));
        loop {
            let s = status(self);
            if s["connection"] == "Connected" {
                return Ok(true);
            }
            if let Some(why) = s["last_refusal"].as_str() {
                return Err(why.to_string());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(seconds = secs, "the peer did not connect in time; going on alone");
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cluster's membership verdict on the peer (see `Engine::peer_in_cluster`).
    pub fn peer_in_cluster(&self, member: bool) {
        let _ = self.events.send(Event::Cluster(Verdict::PeerMember(member)));
    }

    /// This node fenced: fail every waiting write and do no more I/O.
    pub fn fence(&self) {
        let _ = self.events.send(Event::Cluster(Verdict::Fence));
    }

    /// Demotes this node and keeps its replica connected for as long as the peer is primary
    /// and connected, or a resync runs: the peer's later writes still reach this replica (as a
    /// DRBD resource outlives the unmount). Returns when this node can stop without leaving
    /// its replica behind.
    pub fn linger_while_peer_primary(&self) {
        let status = |m: &Mirror| m.admin(&json!({"cmd": "status"}))["mirror"].clone();
        // Writes still completing (a flush racing the unmount) make the demotion wait a little.
        for _ in 0..100 {
            let reply = self.admin(&json!({"cmd": "secondary"}));
            if reply["ok"] == true || status(self)["io"] == "Fenced" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut told = false;
        loop {
            let s = status(self);
            let connected = s["connection"] == "Connected";
            if !connected || s["io"] == "Fenced" || (s["peer_role"] != "Primary" && s["quiet"] == true) {
                return;
            }
            if !told {
                tracing::info!("unmounted; the replica stays connected until the peer stops writing");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tokio runtime the mirror's network runs on (the admin socket may share it).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Shutdown);
        if let Some(t) = self.engine.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// The network side: listener, connector, and one reader and one writer task per connection.
struct Link {
    me: Identity,
    peer_name: String,
    peer_addr: SocketAddr,
    my_ip: std::net::Ipv4Addr,
    secret: Option<Vec<u8>>,
    cfg: NetConfig,
    events: mpsc::Sender<Event>,
    next_conn: Arc<std::sync::atomic::AtomicU64>,
    turns: Arc<Turns>,
}

impl Link {
    /// Only the configured peer, from its configured address, is accepted.
    fn accept_fn(&self) -> impl Fn(&str, SocketAddr) -> bool + Send + Sync + 'static {
        let (name, ip) = (self.peer_name.clone(), self.peer_addr.ip());
        move |n: &str, addr: SocketAddr| n == name && addr.ip() == ip
    }

    async fn listen(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let link = self.clone();
            tokio::spawn(async move {
                let accept = link.accept_fn();
                match net::accept(stream, &link.me, link.secret.as_deref(), &accept, &link.cfg).await {
                    Ok(conn) => link.run(conn),
                    Err(e) => tracing::warn!(%from, error = %e, "peer connection refused"),
                }
            });
        }
    }

    async fn connect_loop(self: Arc<Self>, mut wants: watch::Receiver<bool>) {
        loop {
            if wants.wait_for(|w| *w).await.is_err() {
                return;
            }
            let accept = self.accept_fn();
            let ip = Some(std::net::IpAddr::V4(self.my_ip));
            match net::connect(self.peer_addr, ip, &self.me, self.secret.as_deref(), &accept, &self.cfg).await {
                Ok(conn) => self.run(conn),
                Err(e) => tracing::debug!(error = %e, "connecting to the peer"),
            }
            tokio::time::sleep(Duration::from_millis(self.cfg.reconnect_ms)).await;
        }
    }

    /// Hands an authenticated connection to the engine and pumps its messages.
    fn run(&self, conn: net::Connection) {
        let id = self.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let peer = conn.peer_name().to_string();
        let (sender, mut receiver) = conn.into_split();
        let (task, mut rx) = tmpsc::unbounded_channel::<Msg>();
        let queued = Arc::new(AtomicUsize::new(0));
        let wire = Wire { sender: sender.clone(), task, queued: queued.clone() };
        if self.events.send(Event::Up { conn: id, peer, wire }).is_err() {
            return;
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let sent = sender.send(&msg).await;
                queued.fetch_sub(1, Ordering::AcqRel);
                if let Err(e) = sent {
                    let _ = events.send(Event::Down { conn: id, reason: e.to_string() });
                    break;
                }
            }
            sender.shutdown().await;
        });
        let events = self.events.clone();
        let turns = self.turns.clone();
        tokio::spawn(async move {
            let reason = loop {
                match receiver.recv::<Msg>().await {
                    Ok(Some(msg)) => take_msg(&turns, id, msg),
                    Ok(None) => break "closed by the peer".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = events.send(Event::Down { conn: id, reason });
        });
    }
}

/// A peer message, from the network task (no waiting for the disk): handed to the engine here
/// when it is quick and the engine is free at once; left in the inbox when a thread
/// holds the engine (it takes the message before it lets go); else, or while earlier messages
/// wait for the engine thread, passed to the engine thread.
fn take_msg(turns: &Turns, conn: u64, msg: Msg) {
    if turns.peer_queued.load(Ordering::Acquire) > 0 {
        return turns.to_engine_thread(conn, msg);
    }
    turns.inbox.lock().push_back((conn, msg));
    // Taken here when the lock is free; else by its holder, who looks again once it let go.
    if let Some(core) = turns.core.try_lock() {
        turns.release(core, Holder::Task);
    }
}

/// The engine thread: applies events in order and ticks every 10 ms. It flushes `replica` for
/// the peer before it takes the engine's lock: the fdatasync holds up neither this node's callers
/// nor the peer's writes that the network task applies meanwhile.
fn engine_loop(turns: &Turns, replica: &Arc<dyn BlockDevice>, rx: mpsc::Receiver<Event>) {
    loop {
        let event = rx.recv_timeout(Duration::from_millis(10));
        let flushed = match &event {
            Ok(Event::FlushReplica { .. }) => replica.flush().map_err(|e| IoFailure::Device(e.to_string())),
            _ => Ok(()),
        };
        let mut core = turns.core.lock();
        let now = core.now();
        let Core { engine, conn, outbox, .. } = &mut *core;
        match event {
            Ok(Event::Up { conn: id, peer, wire }) => {
                if conn.is_none() && engine.wants_connection() {
                    tracing::info!(peer, conn = id, "connected to the peer");
                    *conn = Some(id);
                    outbox.lock().set(Some(wire));
                    engine.connected(now);
                } else {
                    tracing::info!(peer, conn = id, state = ?engine.conn_state(), "extra or unwanted connection closed");
                }
            }
            Ok(Event::Down { conn: id, reason }) => {
                if *conn == Some(id) {
                    *conn = None;
                    outbox.lock().set(None);
                    engine.disconnected(now, &reason);
                }
            }
            Ok(Event::Peer { conn: id, msg }) => {
                if *conn == Some(id) {
                    engine.receive(now, msg);
                }
                turns.peer_queued.fetch_sub(1, Ordering::AcqRel);
            }
            Ok(Event::Admin { request, reply }) => {
                let _ = reply.send(super::admin::handle(engine, now, &request));
            }
            Ok(Event::Cluster(Verdict::PeerMember(member))) => {
                if let Err(e) = engine.peer_in_cluster(now, member) {
                    tracing::error!(error = %e, "the peer left the cluster but this node cannot go on alone");
                }
            }
            Ok(Event::Cluster(Verdict::Fence)) => engine.fence(now),
            Ok(Event::FlushReplica { token }) => engine.replica_flushed(now, token, flushed),
            Ok(Event::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = engine.down() {
                    tracing::error!(error = %e, "clean shutdown of the mirror");
                }
                core.stopped = true;
                // Their callers learn that the engine stopped.
                core.waiters.clear();
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        core.settle(now);
        turns.release(core, Holder::Thread);
    }
}

impl Core {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// After an input: hands out its outputs, then ticks (a local flush then runs while the
    /// peer's is under way) and hands out the tick's.
    fn settle(&mut self, now: u64) {
        self.route();
        self.engine.tick(now);
        self.route();
        // Only a change wakes the connecting task.
        let wants = self.engine.wants_connection();
        self.wants.send_if_modified(|w| std::mem::replace(w, wants) != wants);
    }

    /// Hands the engine's outputs to the connection and to the waiting callers.
    fn route(&mut self) {
        while let Some(out) = self.engine.poll() {
            match out {
                Output::Send(msg) => send_to(&self.outbox, msg),
                Output::Drop { reason } => {
                    tracing::info!(%reason, "closing the peer connection");
                    self.conn = None;
                    self.outbox.lock().set(None);
                }
                Output::WriteDone { id, result } => {
                    if let Some(Waiter::Write(w)) = self.waiters.remove(&id) {
                        let _ = w.send(result);
                    }
                }
                Output::ReadDone { id, result } => {
                    if let Some(Waiter::Read(w)) = self.waiters.remove(&id) {
                        let _ = w.send(result);
                    }
                }
                Output::FlushDone { id, result } => {
                    if let Some(Waiter::Flush(w)) = self.waiters.remove(&id) {
                        let _ = w.send(result);
                    }
                }
                Output::FlushReplica { token } => {
                    let _ = self.events.send(Event::FlushReplica { token });
                }
            }
        }
    }
}

/// The mirror as a `BlockDevice`: each call runs its request on the engine and waits for its
/// completion (protocol C: both replicas have the data when `write_at` returns).
#[derive(Clone)]
pub struct MirrorDevice {
    turns: Arc<Turns>,
    replica: Arc<dyn BlockDevice>,
    size: u64,
}

/// A write of this size or more goes to the local replica from its caller's thread outside the
/// engine's lock ([`Engine::write_out`]), so that large writes of different callers overlap.
const WRITE_OUT_MIN: usize = 64 << 10;

impl MirrorDevice {
    /// Runs `submit` on the engine, then `unlocked` without the engine's lock — the local write
    /// `submit` left to this thread, if any, whose outcome goes back to the engine — then hands
    /// out the engine's outputs and ticks; waits for the request's completion (and fails it if
    /// its local write failed).
    fn call<T, L>(
        &self,
        (op, offset, len): (&'static str, u64, u64),
        waiter: impl FnOnce(mpsc::Sender<Result<T, IoFailure>>) -> Waiter,
        submit: impl FnOnce(&mut Engine, u64, u64) -> L,
        unlocked: impl FnOnce(L) -> Option<Result<(), IoFailure>>,
    ) -> crate::dev::Result<T> {
        check_range(op, offset, len, self.size)?;
        let fail = |e: IoFailure| {
            // A secondary is closed: its replica is read-only (EROFS), and not even that to a
            // reader (EMEDIUMTYPE, as DRBD 8's open of a Secondary).
            let errno = match e {
                IoFailure::Secondary => libc::EROFS,
                IoFailure::SecondaryRead => libc::EMEDIUMTYPE,
                _ => return DevError::Io { op, offset, len, source: std::io::Error::other(e.to_string()) },
            };
            DevError::Refused { op, offset, len, errno, reason: e.to_string() }
        };
        let stopped =
            || DevError::Io { op, offset, len, source: std::io::Error::other("the mirror engine has stopped") };
        let (reply, rx) = mpsc::channel();
        let mut core = self.turns.core.lock();
        if core.stopped {
            return Err(stopped());
        }
        core.next_id += 1;
        let id = core.next_id;
        core.waiters.insert(id, waiter(reply));
        let now = core.now();
        let left = submit(&mut core.engine, now, id);
        self.turns.release(core, Holder::Thread);
        let local = unlocked(left);
        let mut core = self.turns.core.lock();
        // Stopped meanwhile: the waiter is gone, and `recv` says so.
        if !core.stopped {
            let now = core.now();
            if let Some(result) = &local {
                core.engine.local_written(now, id, result.clone());
            }
            core.settle(now);
        }
        self.turns.release(core, Holder::Thread);
        match (rx.recv(), local) {
            (Ok(Ok(_)), Some(Err(e))) => Err(fail(e)),
            (Ok(r), _) => r.map_err(fail),
            (Err(_), _) => Err(stopped()),
        }
    }
}

impl BlockDevice for MirrorDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::dev::Result<()> {
        let len = buf.len() as u64;
        let read = |e: &mut Engine, now, id| e.read(now, id, offset, len);
        let data = self.call(("read", offset, len), Waiter::Read, read, |()| None)?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> crate::dev::Result<()> {
        let data = buf.to_vec();
        let out = buf.len() >= WRITE_OUT_MIN;
        let write = |e: &mut Engine, now, id| match out {
            true => e.write_out(now, id, offset, data),
            false => {
                e.write(now, id, offset, data);
                None
            }
        };
        let local = |left: Option<Arc<Vec<u8>>>| {
            left.map(|data| self.replica.write_at(&data, offset).map_err(|e| IoFailure::Device(e.to_string())))
        };
        self.call(("write", offset, buf.len() as u64), Waiter::Write, write, local).map(|_| ())
    }

    /// The engine asks the peer to flush; meanwhile the local replica's fdatasync runs here,
    /// outside the engine's lock, so that the peer's answer is taken at once; the engine's own
    /// flush of the replica then finds it clean (an error of this one comes again from that one).
    fn flush(&self) -> crate::dev::Result<()> {
        let replica = |()| {
            drop(self.replica.flush());
            None
        };
        self.call(("flush", 0, 0), Waiter::Flush, |e, now, id| e.flush(now, id), replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resource `r` of nodes a and b at `ips` (a port of a's), with `net` options and the
    /// `startup` section `startup` (none if empty), and their disks of `size` bytes in `dir`.
    fn resource(dir: &Path, ips: [&str; 2], net: &str, startup: &str, size: u64) -> ResourceConfig {
        let port = std::net::TcpListener::bind((ips[0], 0)).unwrap().local_addr().unwrap().port();
        let d = dir.display();
        let [ip_a, ip_b] = ips;
        let text = format!(
            "resource r {{ protocol C; {startup} net {{ cram-hmac-alg sha1; shared-secret \"s\"; {net} }}\n\
             on a {{ device /dev/o2fs0; disk {d}/a.img; address {ip_a}:{port}; meta-disk {d}/a.meta[0]; }}\n\
             on b {{ device /dev/o2fs0; disk {d}/b.img; address {ip_b}:{port}; meta-disk {d}/b.meta[0]; }} }}\n"
        );
        for f in ["a.img", "b.img"] {
            std::fs::File::create(dir.join(f)).unwrap().set_len(size).unwrap();
        }
        super::super::config::parse(&text, &dir.join("r.res")).unwrap().remove(0)
    }

    fn start(res: &ResourceConfig, node: &str) -> Mirror {
        let opts = MirrorOptions { node: node.into(), net: NetConfig::default(), fencing: Fencing::DontCare };
        Mirror::start(res, opts).unwrap()
    }

    /// A node alone: its writes complete degraded, in the caller's thread; once the mirror is
    /// dropped, a device it handed out fails its requests instead of waiting forever.
    #[test]
    fn a_device_outliving_its_mirror_fails_its_requests() {
        let dir = tempfile::tempdir().unwrap();
        let res = resource(dir.path(), ["127.0.40.1", "127.0.40.2"], "", "", 1 << 20);
        let mirror = start(&res, "a");
        let dev = mirror.device();
        dev.write_at(&[7; 4096], 8192).unwrap();
        dev.flush().unwrap();
        let mut back = [0; 4096];
        dev.read_at(&mut back, 8192).unwrap();
        assert_eq!(back, [7; 4096]);
        drop(mirror);
        assert!(dev.write_at(&[1; 4096], 0).unwrap_err().to_string().contains("stopped"));
    }

    fn established_and_quiet(m: &Mirror) -> bool {
        let s = &m.admin(&json!({"cmd": "status"}))["mirror"];
        s["replication"] == "Established" && s["quiet"] == true
    }

    /// Both nodes of a connected pair write 1 MiB blocks at once from several threads each (their
    /// local writes run outside the engine's lock), to ranges that overlap across the nodes and
    /// across each node's own threads: once quiet, the two replicas are equal.
    #[test]
    fn large_writes_from_both_nodes_at_once_leave_equal_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let res = resource(dir.path(), ["127.0.0.46", "127.0.0.47"], "allow-two-primaries;", "", 16 << 20);
        let (a, b) = (start(&res, "a"), start(&res, "b"));
        while !(established_and_quiet(&a) && established_and_quiet(&b)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::scope(|s| {
            for (n, m) in [&a, &b].into_iter().enumerate() {
                for t in 0..3u64 {
                    let dev = m.device();
                    s.spawn(move || {
                        for i in 0..20u64 {
                            // 1 MiB at a 256 KiB step within 4 MiB: overlaps everywhere.
                            let offset = ((i * 3 + t) % 13) << 18;
                            let fill = (n as u64 * 100 + t * 20 + i) as u8;
                            dev.write_at(&vec![fill; 1 << 20], offset).unwrap();
                        }
                    });
                }
            }
        });
        while !(established_and_quiet(&a) && established_and_quiet(&b)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let read = |m: &Mirror| {
            let mut buf = vec![0; 4 << 20];
            m.replica.read_at(&mut buf, 0).unwrap();
            buf
        };
        assert!(read(&a) == read(&b), "the replicas differ after concurrent large writes");
    }

    fn wait(m: &Mirror, what: &str, ok: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = m.admin(&json!({"cmd": "status"}))["mirror"].clone();
            if ok(&s) {
                return;
            }
            assert!(Instant::now() < deadline, "waited 20 s for {what}: {s}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn admin_ok(m: &Mirror, cmd: &str) {
        let reply = m.admin(&json!({ "cmd": cmd }));
        assert_eq!(reply["ok"], true, "{cmd}: {reply}");
    }

    fn refused_errno(r: crate::dev::Result<()>) -> Option<i32> {
        match r {
            Err(DevError::Refused { errno, .. }) => Some(errno),
            _ => None,
        }
    }

    /// With `become-primary-on` roles a secondary serves no reads (EMEDIUMTYPE, as DRBD 8
    /// refuses to open a Secondary) and no writes (EROFS), yet its replica still serves what the
    /// mirror reads itself: an online verify it runs, a resync of which it is the source and
    /// the peer's reads during that resync; and a node lingering after its unmount (demoted,
    /// connected while the peer is primary) still receives the peer's writes.
    #[test]
    fn a_secondary_refuses_reads_but_serves_verify_resync_and_lingers() {
        let dir = tempfile::tempdir().unwrap();
        // 512 KiB/s: the verify and the resync of the 1 MiB each take two seconds.
        let startup = "syncer { rate 512K; } startup { become-primary-on both; }";
        let res = resource(dir.path(), ["127.0.16.3", "127.0.16.4"], "allow-two-primaries;", startup, 1 << 20);
        let (a, b) = (start(&res, "a"), start(&res, "b"));
        while !(established_and_quiet(&a) && established_and_quiet(&b)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (da, db) = (a.device(), b.device());
        da.write_at(&vec![0x11; 1 << 20], 0).unwrap();
        let mut buf = [0u8; 4096];
        db.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [0x11; 4096], "a primary reads");
        admin_ok(&b, "secondary");
        assert_eq!(refused_errno(db.read_at(&mut buf, 0)), Some(libc::EMEDIUMTYPE));
        assert_eq!(refused_errno(db.write_at(&buf, 0)), Some(libc::EROFS));
        let e = db.read_at(&mut buf, 0).unwrap_err().to_string();
        assert!(e.contains("cannot be read until it is promoted"), "{e}");
        // The secondary verifies (its replica is read for the digests)...
        admin_ok(&b, "verify");
        wait(&b, "the verify", |s| s["verify"]["finished"] == true);
        assert_eq!(b.admin(&json!({"cmd": "status"}))["mirror"]["verify"]["out_of_sync_blocks"], 0);
        // ... and is the source of a full resync, during which a's reads go to it.
        admin_ok(&a, "invalidate");
        wait(&a, "the resync into a", |s| s["replication"] == "SyncTarget");
        // The last block is resynced last.
        da.read_at(&mut buf, 255 * 4096).unwrap();
        assert_eq!(buf, [0x11; 4096]);
        let s = a.admin(&json!({"cmd": "status"}))["mirror"].clone();
        assert_eq!(s["replication"], "SyncTarget", "the resync ended before the read: {s}");
        wait(&a, "the end of the resync", |s| s["last_resync"]["blocks"] == 256 && s["quiet"] == true);
        // Lingering after an unmount: a's later writes still reach b until a stops being primary.
        std::thread::scope(|s| {
            let linger = s.spawn(|| b.linger_while_peer_primary());
            da.write_at(&[0x22; 4096], 8192).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert!(!linger.is_finished(), "b stopped lingering while a is primary");
            admin_ok(&a, "secondary");
            linger.join().unwrap();
        });
        b.replica.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [0x22; 4096], "a's write while b lingered");
        assert_eq!(refused_errno(da.read_at(&mut buf, 0)), Some(libc::EMEDIUMTYPE));
        admin_ok(&a, "primary");
        da.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [0x22; 4096]);
    }

    #[test]
    fn hex_round_trip_and_refusals() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xAB, 0xFF])), Some(vec![0, 1, 0xAB, 0xFF]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
    }
}
