//! One node's cluster runtime: the authenticated TCP mesh, the membership machine, the disk
//! heartbeat, and delivery of views and of the upper layer's messages (the DLM's).
//!
//! Tasks (tokio, owned by the daemon's runtime):
//! - a listener accepting peers (only lower-numbered nodes are dialled: the higher node of a
//!   pair dials the lower, every `reconnect_ms`, so a pair has one connection);
//! - per connection: a reader feeding the core, a writer draining that peer's queue (so a peer
//!   that stops reading stalls only its own queue until the write timeout closes it);
//! - the core: owns [`Membership`], ticks its clock, samples the disk heartbeat, and delivers
//!   [`ClusterEvent`]s in order.
//!
//! Upper-layer messages carry the sender's view epoch and are delivered only in that same epoch
//! on the receiver (held back if the receiver has not installed it yet, dropped if older): so
//! the layer above sees each view's messages after the view, never across views. A message to
//! a peer with no live connection is dropped; the view change that follows makes the upper
//! layer resend its state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::config::ClusterConfig;
use super::disk_heartbeat::{Heartbeat, Region, SECTOR};
use super::membership::{MemberEvent, MemberMsg, Membership, NodeId, Timing, View};
use crate::format::heartbeat::HeartbeatBlock;
use crate::net::{self, ConnReceiver, ConnSender, Identity, NetConfig};

/// How this node runs.
#[derive(Clone)]
pub struct NodeSettings {
    pub net: NetConfig,
    pub timing: Timing,
    /// Cluster secret; `None` runs unauthenticated (`--insecure`).
    pub secret: Option<Vec<u8>>,
    /// Disk heartbeat region of the volume, if the node heartbeats on one.
    pub disk: Option<DiskHeartbeat>,
}

/// Where a node beats on disk, and whether the beats may judge liveness.
#[derive(Clone)]
pub struct DiskHeartbeat {
    pub region: Region,
    /// Every node sees the same blocks (a shared image): a sector that stops changing means a
    /// dead node, one that goes on changing means a cut link. On the mirror each node reads its
    /// own replica, where a peer's beats stop with the link: they are written (for `o2fs
    /// mounted`) but judge nothing, and quorum falls back to the configured nodes.
    pub shared: bool,
}

/// What the runtime tells the layer above, in order.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    View(View),
    Message {
        from: NodeId,
        payload: Vec<u8>,
    },
    /// The node fenced itself: stop all I/O now, for good.
    Fenced(String),
}

/// A snapshot for `status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub number: NodeId,
    pub view: Option<View>,
    pub reachable: BTreeSet<NodeId>,
    pub fenced: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {0:?} is not in the cluster configuration")]
    UnknownNode(String),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    /// The node's address is taken: on this machine, by the node itself (o2cb's rule: one
    /// daemon per node name).
    #[error("node {node:?} is already running here (its address {addr} is in use)")]
    AlreadyRunning { node: String, addr: SocketAddr },
    #[error("disk heartbeat: {0}")]
    Disk(#[from] crate::dev::DevError),
}

#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    /// First message on a connection: who the sender is in this run.
    Hello {
        number: NodeId,
        incarnation: u64,
    },
    Member(MemberMsg),
    Upper {
        epoch: u64,
        payload: Vec<u8>,
    },
}

enum CoreIn {
    Up {
        peer: NodeId,
        incarnation: u64,
        conn: u64,
        tx: mpsc::UnboundedSender<Wire>,
        writer: JoinHandle<()>,
    },
    Down {
        peer: NodeId,
        conn: u64,
    },
    Recv {
        peer: NodeId,
        conn: u64,
        wire: Wire,
    },
    Send {
        to: NodeId,
        payload: Vec<u8>,
    },
    Disk(Vec<Option<Vec<u8>>>),
    /// Leave cleanly; answered once the peers' links have taken the news and closed.
    Leave(oneshot::Sender<()>),
}

/// The upper layer's handle: send messages, read status.
#[derive(Clone)]
pub struct ClusterHandle {
    tx: mpsc::UnboundedSender<CoreIn>,
    status: Arc<Mutex<ClusterStatus>>,
}

impl ClusterHandle {
    /// Sends `payload` to `to` in the current view (dropped if `to` is unreachable).
    pub fn send(&self, to: NodeId, payload: Vec<u8>) {
        let _ = self.tx.send(CoreIn::Send { to, payload });
    }

    pub fn status(&self) -> ClusterStatus {
        self.status.lock().clone()
    }

    /// Leaves the cluster cleanly (the others count this node dead at once, and no longer for
    /// quorum); returns once the peers were told, or after `limit`.
    pub async fn leave(&self, limit: Duration) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(CoreIn::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

/// Starts the node `me` of `cfg` on the current tokio runtime.
pub async fn start(
    cfg: &ClusterConfig,
    me: &str,
    settings: NodeSettings,
) -> Result<(ClusterHandle, mpsc::UnboundedReceiver<ClusterEvent>), NodeError> {
    let mine = cfg.node_by_name(me).ok_or_else(|| NodeError::UnknownNode(me.to_owned()))?.clone();
    let addr = SocketAddr::new(IpAddr::V4(mine.address), mine.port);
    let listener = TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => NodeError::AlreadyRunning { node: me.to_owned(), addr },
        _ => NodeError::Listen { addr, source },
    })?;
    let mut inc = [0u8; 8];
    let _ = getrandom::getrandom(&mut inc);
    let incarnation = u64::from_le_bytes(inc) | 1;
    let configured = cfg.nodes.iter().map(|n| n.number).collect();
    let started = Instant::now();
    let membership = Membership::new(
        mine.number,
        incarnation,
        configured,
        settings.timing,
        0,
        settings.disk.as_ref().is_some_and(|d| d.shared),
    );
    let (core_tx, core_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(ClusterStatus { node: me.to_owned(), number: mine.number, ..Default::default() }));
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        identity: Identity::new(me, format!("cluster:{}", cfg.name)),
        number: mine.number,
        incarnation,
        settings: settings.clone(),
        core: core_tx.clone(),
        next_conn: Mutex::new(0),
    });
    let heartbeat = match &settings.disk {
        Some(DiskHeartbeat { region, shared }) => {
            let hb = Heartbeat::start(
                region.clone(),
                mine.number,
                Duration::from_millis(settings.timing.disk_interval_ms),
                (settings.timing.disk_dead_ms / settings.timing.disk_interval_ms.max(1)) as u32,
            )?;
            if *shared {
                spawn_disk_sampler(region.clone(), settings.timing.disk_interval_ms, core_tx.clone());
            }
            Some(hb)
        }
        None => None,
    };
    tokio::spawn(accept_loop(listener, ctx.clone()));
    for peer in cfg.nodes.iter().filter(|n| n.number < mine.number) {
        tokio::spawn(dial_loop(ctx.clone(), peer.number, SocketAddr::new(IpAddr::V4(peer.address), peer.port)));
    }
    let core = Core {
        membership,
        started,
        peers: HashMap::new(),
        held: BTreeMap::new(),
        events: ev_tx,
        status: status.clone(),
        heartbeat,
        tick: Duration::from_millis((settings.timing.disk_interval_ms / 4).clamp(10, 250)),
    };
    tokio::spawn(core.run(core_rx));
    info!(node = me, number = mine.number, %addr, "cluster node started");
    Ok((ClusterHandle { tx: core_tx, status }, ev_rx))
}

struct Ctx {
    cfg: ClusterConfig,
    identity: Identity,
    number: NodeId,
    incarnation: u64,
    settings: NodeSettings,
    core: mpsc::UnboundedSender<CoreIn>,
    next_conn: Mutex<u64>,
}

impl Ctx {
    /// A peer may talk to us only as a configured node from its configured address.
    fn accept_fn(&self) -> impl Fn(&str, SocketAddr) -> bool + Send + Sync + 'static {
        let nodes = self.cfg.nodes.clone();
        move |name, addr| nodes.iter().any(|n| n.name == name && IpAddr::V4(n.address) == addr.ip())
    }

    fn conn_id(&self) -> u64 {
        let mut n = self.next_conn.lock();
        *n += 1;
        *n
    }

    /// Exchanges Hello and hands the connection to the core.
    async fn adopt(self: &Arc<Self>, conn: net::Connection) {
        let name = conn.peer_name().to_owned();
        let Some(expected) = self.cfg.node_by_name(&name).map(|n| n.number) else { return };
        let (tx, mut rx) = conn.into_split();
        if let Err(e) = tx.send(&Wire::Hello { number: self.number, incarnation: self.incarnation }).await {
            warn!(peer = %name, "sending hello: {e}");
            return;
        }
        let (number, incarnation) = match rx.recv::<Wire>().await {
            Ok(Some(Wire::Hello { number, incarnation })) if number == expected => (number, incarnation),
            Ok(Some(_)) => {
                warn!(peer = %name, "peer did not start with a matching hello; closing");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                warn!(peer = %name, "waiting for hello: {e}");
                return;
            }
        };
        let conn_id = self.conn_id();
        let (q_tx, q_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(tx, q_rx));
        let _ = self.core.send(CoreIn::Up { peer: number, incarnation, conn: conn_id, tx: q_tx, writer });
        read_loop(rx, number, conn_id, self.core.clone()).await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("accepting a cluster connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let accept = ctx.accept_fn();
            let s = &ctx.settings;
            match net::accept(stream, &ctx.identity, s.secret.as_deref(), &accept, &s.net).await {
                Ok(conn) => ctx.adopt(conn).await,
                Err(e) => debug!("incoming cluster connection failed: {e}"),
            }
        });
    }
}

async fn dial_loop(ctx: Arc<Ctx>, peer: NodeId, addr: SocketAddr) {
    let bind = ctx.cfg.node_by_name(&ctx.identity.node).map(|n| IpAddr::V4(n.address));
    let accept = ctx.accept_fn();
    loop {
        let s = &ctx.settings;
        match net::connect(addr, bind, &ctx.identity, s.secret.as_deref(), &accept, &s.net).await {
            Ok(conn) => ctx.adopt(conn).await,
            Err(e) => debug!(peer, "connecting: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(ctx.settings.net.reconnect_ms)).await;
    }
}

/// Drains one peer's queue onto its connection. The core drops the queue when it is done with
/// the link (replaced, lost, or this node fenced): the connection is then closed, so the peer
/// sees the link go down.
async fn write_loop(tx: ConnSender, mut q: mpsc::UnboundedReceiver<Wire>) {
    while let Some(w) = q.recv().await {
        if let Err(e) = tx.send(&w).await {
            warn!("cluster link: {e}");
            break;
        }
    }
    tx.shutdown().await;
}

async fn read_loop(mut rx: ConnReceiver, peer: NodeId, conn: u64, core: mpsc::UnboundedSender<CoreIn>) {
    loop {
        match rx.recv::<Wire>().await {
            Ok(Some(wire)) => {
                if core.send(CoreIn::Recv { peer, conn, wire }).is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                warn!(peer, "cluster link lost: {e}");
                break;
            }
        }
    }
    let _ = core.send(CoreIn::Down { peer, conn });
}

/// Reads every node's heartbeat sector each interval (blocking I/O: its own thread).
fn spawn_disk_sampler(region: Region, interval_ms: u64, core: mpsc::UnboundedSender<CoreIn>) {
    std::thread::spawn(move || loop {
        match region.read_all() {
            Ok(sectors) => {
                let sample = sectors
                    .into_iter()
                    .map(|s| (!HeartbeatBlock::is_empty(&s) && s.len() == SECTOR).then_some(s))
                    .collect();
                if core.send(CoreIn::Disk(sample)).is_err() {
                    return;
                }
            }
            Err(e) => warn!("reading the heartbeat area: {e}"),
        }
        std::thread::sleep(Duration::from_millis(interval_ms.max(10)));
    });
}

struct Peer {
    conn: u64,
    tx: mpsc::UnboundedSender<Wire>,
    /// Ends once `tx` is dropped and what it queued is sent.
    writer: JoinHandle<()>,
}

struct Core {
    membership: Membership,
    started: Instant,
    peers: HashMap<NodeId, Peer>,
    /// Upper messages of an epoch not installed yet, per epoch.
    held: BTreeMap<u64, Vec<(NodeId, Vec<u8>)>>,
    events: mpsc::UnboundedSender<ClusterEvent>,
    status: Arc<Mutex<ClusterStatus>>,
    heartbeat: Option<Heartbeat>,
    tick: Duration,
}

impl Core {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<CoreIn>) {
        let mut tick = tokio::time::interval(self.tick);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = self.now();
                    self.membership.tick(now);
                }
                msg = rx.recv() => match msg {
                    Some(m) => self.input(m),
                    None => return,
                },
            }
            self.drain();
        }
    }

    /// Tells every peer this node leaves and closes the links once that is sent; `done` is
    /// answered then.
    fn leave(&mut self, done: oneshot::Sender<()>) {
        self.membership.leave();
        self.drain();
        let writers: Vec<JoinHandle<()>> = self.peers.drain().map(|(_, p)| p.writer).collect();
        tokio::spawn(async move {
            for w in writers {
                let _ = w.await;
            }
            let _ = done.send(());
        });
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn epoch(&self) -> u64 {
        self.membership.view().map_or(0, |v| v.epoch)
    }

    fn input(&mut self, m: CoreIn) {
        let now = self.now();
        self.membership.tick(now);
        match m {
            CoreIn::Up { peer, incarnation, conn, tx, writer } => {
                info!(peer, "cluster link up");
                // Messages held from an earlier connection (perhaps an earlier run of the peer,
                // whose epochs a restarted node may reuse) are dropped: a reconnect always
                // brings a new view, in which the layer above resends its state.
                for msgs in self.held.values_mut() {
                    msgs.retain(|(from, _)| *from != peer);
                }
                self.peers.insert(peer, Peer { conn, tx, writer });
                self.membership.link_up(peer, incarnation);
            }
            CoreIn::Down { peer, conn } => {
                if self.peers.get(&peer).is_some_and(|p| p.conn == conn) {
                    self.peers.remove(&peer);
                    self.membership.link_down(peer);
                }
            }
            CoreIn::Recv { peer, conn, wire } => {
                if self.peers.get(&peer).is_none_or(|p| p.conn != conn) {
                    return;
                }
                match wire {
                    Wire::Member(msg) => self.membership.receive(peer, msg),
                    Wire::Upper { epoch, payload } => self.upper(peer, epoch, payload),
                    Wire::Hello { .. } => debug!(peer, "repeated hello ignored"),
                }
            }
            CoreIn::Send { to, payload } => {
                if self.membership.fenced().is_none() {
                    if let Some(p) = self.peers.get(&to) {
                        let _ = p.tx.send(Wire::Upper { epoch: self.epoch(), payload });
                    }
                }
            }
            CoreIn::Leave(done) => self.leave(done),
            CoreIn::Disk(sample) => {
                for (node, sector) in sample.into_iter().enumerate() {
                    if let Ok(node) = NodeId::try_from(node) {
                        self.membership.disk_sample(node, sector);
                    }
                }
            }
        }
    }

    fn upper(&mut self, from: NodeId, epoch: u64, payload: Vec<u8>) {
        let mine = self.epoch();
        if epoch == mine && mine > 0 {
            let _ = self.events.send(ClusterEvent::Message { from, payload });
        } else if epoch > mine {
            self.held.entry(epoch).or_default().push((from, payload));
        }
    }

    fn drain(&mut self) {
        while let Some(ev) = self.membership.poll_event() {
            match ev {
                MemberEvent::Send { to, msg } => {
                    if let Some(p) = self.peers.get(&to) {
                        let _ = p.tx.send(Wire::Member(msg));
                    }
                }
                MemberEvent::View(view) => {
                    let epoch = view.epoch;
                    let _ = self.events.send(ClusterEvent::View(view));
                    self.held = self.held.split_off(&epoch);
                    for (from, payload) in self.held.remove(&epoch).unwrap_or_default() {
                        let _ = self.events.send(ClusterEvent::Message { from, payload });
                    }
                }
                MemberEvent::Fence { reason } => {
                    // The layers above hear it first: they stop their I/O, which also releases a
                    // beat stuck in a device frozen by the lost link (the mirror fails it).
                    self.peers.clear();
                    let _ = self.events.send(ClusterEvent::Fenced(reason));
                    // Then stop beating on disk (not a clean stop: the sector is left as is, so
                    // the survivors see it go silent).
                    if let Some(hb) = self.heartbeat.as_mut() {
                        // Joins the beating thread (it sleeps at most 50 ms between checks).
                        tokio::task::block_in_place(|| hb.halt());
                    }
                }
            }
        }
        let mut st = self.status.lock();
        st.view = self.membership.view().cloned();
        st.reachable = self.membership.reachable();
        st.fenced = self.membership.fenced().map(str::to_owned);
    }
}
