//! The running mirror of one node: the engine on its own thread, the peer link on a tokio
//! runtime, and [`MirrorDevice`], the `BlockDevice` the filesystem writes through.
//!
//! DESIGN's threading rule: the engine (synchronous, it does the disk I/O) runs on a plain thread
//! that owns it; tokio tasks own the sockets; they meet through channels. Tokio tasks only send
//! on unbounded channels (never block); the engine thread never awaits. Device callers block on
//! a reply channel until the engine completes their request.
//!
//! Connections: both nodes listen on their `address`; the node listed first in the resource file
//! connects (one connection at a time, no crossing attempts). Every connection is authenticated
//! by `net` (HMAC-SHA1 over the shared secret, peer name and address checked, refusals logged on
//! both sides).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc as tmpsc, watch};

use super::config::{MetaDisk, ResourceConfig};
use super::engine::{Engine, EngineConfig, Fencing, IoFailure, Output, Written};
use super::meta::{self, MetaArea, MetaError, Super};
use super::proto::Msg;
use crate::dev::{check_range, BlockDevice, DevError, FileDevice};
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
    Write { offset: u64, data: Vec<u8>, reply: mpsc::Sender<Result<Written, IoFailure>> },
    Read { offset: u64, len: u64, reply: mpsc::Sender<Result<Vec<u8>, IoFailure>> },
    Flush { reply: mpsc::Sender<Result<(), IoFailure>> },
    Up { conn: u64, peer: String, tx: tmpsc::UnboundedSender<Msg> },
    Down { conn: u64, reason: String },
    Peer { conn: u64, msg: Msg },
    Admin { request: Value, reply: mpsc::Sender<Value> },
    Shutdown,
}

enum Waiter {
    Write(mpsc::Sender<Result<Written, IoFailure>>),
    Read(mpsc::Sender<Result<Vec<u8>, IoFailure>>),
    Flush(mpsc::Sender<Result<(), IoFailure>>),
}

/// One node's running mirror. Dropping it shuts the engine down cleanly.
pub struct Mirror {
    events: mpsc::Sender<Event>,
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
    let replica: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&host.disk, true).map_err(open_err(&host.disk))?);
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
            rate_bytes_per_sec: res.rate_bytes_per_sec,
            fencing: opts.fencing,
            al_extents: 257,
            resync_depth: 64,
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
        let engine = Engine::open(cfg, replica, loaded, new_gen, 0)
            .map_err(|source| MirrorError::Meta { path: disk.clone(), source })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("o2fs-mirror-net")
            .enable_all()
            .build()
            .map_err(MirrorError::Runtime)?;
        let (events, rx) = mpsc::channel();
        let (wants_tx, wants_rx) = watch::channel(false);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::V4(host.address)))
            .map_err(|source| MirrorError::Listen { addr: SocketAddr::V4(host.address), source })?;
        let link = Link {
            me: Identity::new(opts.node.clone(), format!("mirror:{}", res.name)),
            peer_name: peer.name.clone(),
            peer_addr: SocketAddr::V4(peer.address),
            my_ip: *host.address.ip(),
            secret: res.shared_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            cfg: net_cfg,
            events: events.clone(),
            next_conn: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        };
        let link = Arc::new(link);
        runtime.spawn(link.clone().listen(listener));
        if node_id == 0 {
            runtime.spawn(link.connect_loop(wants_rx));
        }
        let engine = std::thread::Builder::new()
            .name("o2fs-mirror".into())
            .spawn(move || engine_loop(engine, rx, wants_tx))
            .map_err(MirrorError::Runtime)?;
        tracing::info!(resource = %res.name, node = %opts.node, size, "mirror up");
        Ok(Mirror {
            events,
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
        MirrorDevice { events: self.events.clone(), size: self.size }
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
    /// seconds, forever for 0. Returns whether the peer was reached.
    pub fn wait_for_peer(&self, res: &ResourceConfig) -> bool {
        let status = |m: &Mirror| m.admin(&json!({"cmd": "status"}))["mirror"].clone();
        let degraded = status(self)["generations"]["bitmap"].as_u64().is_some_and(|b| b != 0);
        let secs = if degraded { res.degr_wfc_timeout } else { res.wfc_timeout };
        tracing::info!(seconds = secs, degraded, "waiting for the peer (0: forever)");
        let deadline = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs as u64));
        loop {
            if status(self)["connection"] == "Connected" {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(seconds = secs, "the peer did not connect in time; going on alone");
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// While the peer resyncs from this replica it has no up-to-date copy of its own, so a node
    /// stopping its mirror then (unmounting) would leave its peer unable to read or write
    /// anything. Waits up to `limit` for such a resync to end; returns whether it did (or none
    /// was running).
    pub fn wait_peer_resynced(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut said = false;
        loop {
            let m = self.admin(&json!({"cmd": "status"}))["mirror"].clone();
            if m["replication"] != "SyncSource" {
                return true;
            }
            if !said {
                tracing::info!(
                    limit_secs = limit.as_secs(),
                    "the peer resyncs from this replica: waiting for it to end"
                );
                said = true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "the peer's resync did not end in time: stopping anyway, the peer has no up-to-date copy"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
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
        let (tx, mut rx) = tmpsc::unbounded_channel::<Msg>();
        if self.events.send(Event::Up { conn: id, peer, tx }).is_err() {
            return;
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = sender.send(&msg).await {
                    let _ = events.send(Event::Down { conn: id, reason: e.to_string() });
                    break;
                }
            }
            sender.shutdown().await;
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let reason = loop {
                match receiver.recv::<Msg>().await {
                    Ok(Some(msg)) => {
                        if events.send(Event::Peer { conn: id, msg }).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break "closed by the peer".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = events.send(Event::Down { conn: id, reason });
        });
    }
}

/// The engine thread: applies events in order, ticks every 10 ms, and routes the outputs.
fn engine_loop(mut engine: Engine, rx: mpsc::Receiver<Event>, wants: watch::Sender<bool>) {
    let start = Instant::now();
    let mut waiters: HashMap<u64, Waiter> = HashMap::new();
    let mut next_id = 0u64;
    let mut conn: Option<(u64, tmpsc::UnboundedSender<Msg>)> = None;
    loop {
        let event = rx.recv_timeout(Duration::from_millis(10));
        let now = start.elapsed().as_millis() as u64;
        next_id += 1;
        match event {
            Ok(Event::Write { offset, data, reply }) => {
                waiters.insert(next_id, Waiter::Write(reply));
                engine.write(now, next_id, offset, data);
            }
            Ok(Event::Read { offset, len, reply }) => {
                waiters.insert(next_id, Waiter::Read(reply));
                engine.read(now, next_id, offset, len);
            }
            Ok(Event::Flush { reply }) => {
                waiters.insert(next_id, Waiter::Flush(reply));
                engine.flush(now, next_id);
            }
            Ok(Event::Up { conn: id, peer, tx }) => {
                if conn.is_none() && engine.wants_connection() {
                    tracing::info!(peer, conn = id, "connected to the peer");
                    conn = Some((id, tx));
                    engine.connected(now);
                } else {
                    tracing::info!(peer, conn = id, state = ?engine.conn_state(), "extra or unwanted connection closed");
                }
            }
            Ok(Event::Down { conn: id, reason }) => {
                if conn.as_ref().is_some_and(|(c, _)| *c == id) {
                    conn = None;
                    engine.disconnected(now, &reason);
                }
            }
            Ok(Event::Peer { conn: id, msg }) => {
                if conn.as_ref().is_some_and(|(c, _)| *c == id) {
                    engine.receive(now, msg);
                }
            }
            Ok(Event::Admin { request, reply }) => {
                let _ = reply.send(super::admin::handle(&mut engine, now, &request));
            }
            Ok(Event::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = engine.down() {
                    tracing::error!(error = %e, "clean shutdown of the mirror");
                }
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // What the event produced goes out before the tick, which may flush the local replica
        // meanwhile.
        route(&mut engine, &mut conn, &mut waiters);
        engine.tick(now);
        route(&mut engine, &mut conn, &mut waiters);
        wants.send_replace(engine.wants_connection());
    }
}

/// Hands the engine's outputs to the connection and to the waiting callers.
fn route(
    engine: &mut Engine,
    conn: &mut Option<(u64, tmpsc::UnboundedSender<Msg>)>,
    waiters: &mut HashMap<u64, Waiter>,
) {
    while let Some(out) = engine.poll() {
        match out {
            Output::Send(msg) => {
                if let Some((_, tx)) = conn.as_ref() {
                    let _ = tx.send(msg);
                }
            }
            Output::Drop { reason } => {
                tracing::info!(%reason, "closing the peer connection");
                *conn = None;
            }
            Output::WriteDone { id, result } => {
                if let Some(Waiter::Write(w)) = waiters.remove(&id) {
                    let _ = w.send(result);
                }
            }
            Output::ReadDone { id, result } => {
                if let Some(Waiter::Read(w)) = waiters.remove(&id) {
                    let _ = w.send(result);
                }
            }
            Output::FlushDone { id, result } => {
                if let Some(Waiter::Flush(w)) = waiters.remove(&id) {
                    let _ = w.send(result);
                }
            }
        }
    }
}

/// The mirror as a `BlockDevice`: each call is handed to the engine thread and waits for its
/// completion (protocol C: both replicas have the data when `write_at` returns).
#[derive(Clone)]
pub struct MirrorDevice {
    events: mpsc::Sender<Event>,
    size: u64,
}

impl MirrorDevice {
    fn call<T>(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        make: impl FnOnce(mpsc::Sender<Result<T, IoFailure>>) -> Event,
    ) -> crate::dev::Result<T> {
        check_range(op, offset, len, self.size)?;
        let fail = |msg: String| DevError::Io { op, offset, len, source: std::io::Error::other(msg) };
        let (reply, rx) = mpsc::channel();
        self.events.send(make(reply)).map_err(|_| fail("the mirror engine has stopped".into()))?;
        match rx.recv() {
            Ok(r) => r.map_err(|e| fail(e.to_string())),
            Err(_) => Err(fail("the mirror engine has stopped".into())),
        }
    }
}

impl BlockDevice for MirrorDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::dev::Result<()> {
        let len = buf.len() as u64;
        let data = self.call("read", offset, len, |reply| Event::Read { offset, len, reply })?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> crate::dev::Result<()> {
        let data = buf.to_vec();
        self.call("write", offset, buf.len() as u64, |reply| Event::Write { offset, data, reply }).map(|_| ())
    }

    fn flush(&self) -> crate::dev::Result<()> {
        self.call("flush", 0, 0, |reply| Event::Flush { reply })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_refusals() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xAB, 0xFF])), Some(vec![0, 1, 0xAB, 0xFF]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
    }
}
