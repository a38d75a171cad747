//! `o2fs cluster up`, `o2fs lock`, `o2fs locks`, `o2fs status`: the cluster daemon and the
//! commands that talk to it over its admin socket.

use anyhow::{bail, Context, Result};
use o2fs::cluster::config::{self, ClusterConfig};
use o2fs::cluster::disk_heartbeat::Region;
use o2fs::cluster::membership::Timing;
use o2fs::cluster::node::{self, ClusterHandle, DiskHeartbeat, NodeSettings};
use o2fs::dev::mirror::driver::Mirror;
use o2fs::dev::FileDevice;
use o2fs::dlm::service::{DownconvertHook, LockService, RecoveryHook, ServiceError, TRY_FOR};
use o2fs::dlm::{Mode, ResName, ResourceDump};
use o2fs::fuse::kcache::KernelCache;
use o2fs::net::admin::{self, AdminClient, AdminConn, AdminListener};
use o2fs::net::NetConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::daemon;

/// Where to find a node's daemon.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeRef {
    /// Node name (as in cluster.conf).
    #[arg(long)]
    pub node: String,
    /// Admin socket (default /run/o2fs/NODE.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

impl NodeRef {
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| admin::default_socket(&self.node))
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// Run one node's cluster daemon (membership, heartbeats, DLM) without a filesystem.
    Up(UpArgs),
}

/// Timing overrides (o2cb defaults); tests use small values.
#[derive(clap::Args, Debug, Clone)]
pub struct TimingArgs {
    /// Keepalive ping after this much silence on a link.
    #[arg(long, default_value_t = 2000)]
    pub keepalive_ms: u64,
    /// A link silent this long is dead; a lost link is given this long to come back.
    #[arg(long, default_value_t = 30000)]
    pub idle_timeout_ms: u64,
    /// Delay between connection attempts.
    #[arg(long, default_value_t = 2000)]
    pub reconnect_ms: u64,
    /// Disk heartbeat interval.
    #[arg(long, default_value_t = 2000)]
    pub hb_interval_ms: u64,
    /// Missed disk beats after which a node is dead.
    #[arg(long, default_value_t = 31)]
    pub hb_dead_beats: u64,
}

/// How this node joins the cluster (shared by `cluster up` and a cluster `mount`).
#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    /// File holding the cluster secret (else the cluster stanza's `secret_file`).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Run without authentication when no secret is configured.
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub timing: TimingArgs,
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub node: NodeRef,
    /// o2cb cluster.conf.
    #[arg(short = 'c')]
    pub conf: PathBuf,
    /// Volume to heartbeat on (its `heartbeat` system file).
    pub image: Option<PathBuf>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    pub foreground: bool,
    #[command(flatten)]
    pub join: JoinArgs,
}

#[derive(clap::Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    pub node: NodeRef,
    /// Lock mode.
    #[arg(long, default_value = "ex")]
    pub mode: String,
    /// Fail (exit 1) if the lock is in use elsewhere (not granted within 300 ms).
    #[arg(long = "try")]
    pub try_lock: bool,
    /// Lock name (1 to 64 printable characters).
    pub name: String,
    /// Command to run while the lock is held.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub node: NodeRef,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Up(a) => up(a),
    }
}

/// The secret: `--secret-file`, else the config's `secret_file`, else none with `--insecure`.
fn secret(a: &JoinArgs, cfg: &ClusterConfig) -> Result<Option<Vec<u8>>> {
    match a.secret_file.as_ref().or(cfg.secret_file.as_ref()) {
        Some(p) => {
            let s = std::fs::read(p).with_context(|| format!("reading the cluster secret {}", p.display()))?;
            let s = s.trim_ascii().to_vec();
            if s.is_empty() {
                bail!("the cluster secret file {} is empty", p.display());
            }
            Ok(Some(s))
        }
        None if a.insecure => {
            tracing::warn!("no cluster secret: running unauthenticated (--insecure)");
            Ok(None)
        }
        None => bail!("no cluster secret: give --secret-file, a secret_file line in the cluster stanza, or --insecure"),
    }
}

/// The heartbeat area of the volume on `dev`; `shared` says whether all nodes see the same
/// blocks (see [`DiskHeartbeat`]).
pub fn disk_heartbeat(dev: Arc<dyn o2fs::dev::BlockDevice>, shared: bool) -> Result<DiskHeartbeat> {
    let vol = o2fs::fs::Volume::open(dev.clone()).context("reading the volume")?;
    let (start, len) = vol.heartbeat_area().context("locating the heartbeat area")?;
    Ok(DiskHeartbeat { region: Region::new(dev, start, len), shared })
}

/// The cluster stack of this process: a tokio runtime running the node (mesh, membership,
/// heartbeats) and its lock service. Must be started after any fork.
pub struct Stack {
    pub rt: tokio::runtime::Runtime,
    pub svc: Arc<LockService>,
    pub handle: ClusterHandle,
    pub number: u8,
}

impl Stack {
    pub fn start(
        conf: &Path,
        node: &str,
        join: &JoinArgs,
        disk: Option<DiskHeartbeat>,
        recovery: RecoveryHook,
        downconvert: Option<DownconvertHook>,
    ) -> Result<Stack> {
        let cfg = config::load(conf)?;
        let number =
            cfg.node_by_name(node).with_context(|| format!("node {node:?} is not in {}", conf.display()))?.number;
        let t = &join.timing;
        let net = NetConfig {
            keepalive_ms: t.keepalive_ms,
            idle_timeout_ms: t.idle_timeout_ms,
            reconnect_ms: t.reconnect_ms,
            // A handshake, or a write, stalled longer than a silent link may last is just as
            // dead (so a stuck or half-sent handshake is dropped within the idle timeout).
            handshake_timeout_ms: t.idle_timeout_ms.min(NetConfig::default().handshake_timeout_ms),
            write_timeout_ms: t.idle_timeout_ms,
            ..NetConfig::default()
        };
        net.validate()?;
        let timing = Timing {
            link_grace_ms: t.idle_timeout_ms,
            disk_interval_ms: t.hb_interval_ms,
            disk_dead_ms: t.hb_interval_ms * t.hb_dead_beats,
        };
        let settings = NodeSettings { net, timing, secret: secret(join, &cfg)?, disk };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let (handle, events) = rt.block_on(node::start(&cfg, node, settings))?;
        let svc = {
            let _guard = rt.enter();
            LockService::start(number, handle.clone(), events, recovery, downconvert)
        };
        Ok(Stack { rt, svc, handle, number })
    }

    /// Answers admin requests on `socket` from now on: the cluster's, and the mirror's when
    /// this node runs on one (its status section joins the cluster's; its commands pass
    /// through), and, on a mount, the requests its FUSE adapter served (`mount`). On the mirror
    /// the socket is served by the mirror's runtime, which outlives the
    /// cluster's: an unmounted node whose replica lingers for its peer still answers.
    pub fn serve_admin(
        &self,
        socket: &Path,
        mirror: Option<Arc<Mirror>>,
        mount: Option<Arc<KernelCache>>,
    ) -> Result<()> {
        let rt = mirror.as_ref().map_or_else(|| self.rt.handle().clone(), |m| m.runtime().clone());
        let listener = rt.block_on(AdminListener::bind(socket))?;
        let (svc, handle) = (self.svc.clone(), self.handle.clone());
        rt.spawn(
            listener.serve(move |conn| serve_admin(svc.clone(), handle.clone(), mirror.clone(), mount.clone(), conn)),
        );
        Ok(())
    }

    /// Waits until this node is a member of a view; returns the members.
    pub fn wait_member(&self, limit: Duration) -> Result<Vec<u32>> {
        let start = std::time::Instant::now();
        loop {
            let st = self.handle.status();
            if let Some(why) = st.fenced {
                bail!("fenced while joining the cluster: {why}");
            }
            if let Some(v) = st.view.filter(|v| v.members.contains_key(&self.number)) {
                return Ok(v.members.keys().map(|&n| n as u32).collect());
            }
            if start.elapsed() > limit {
                bail!("no cluster view with this node after {} s (are enough nodes up for quorum?)", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The members of the current view.
    pub fn members(&self) -> Vec<u32> {
        self.handle.status().view.map(|v| v.members.keys().map(|&n| n as u32).collect()).unwrap_or_default()
    }

    /// Leaves the cluster cleanly and stops this node (a clean stop also clears its heartbeat
    /// sector): the others go on at once, without counting it for quorum.
    pub fn leave(self) {
        self.rt.block_on(self.handle.leave(Duration::from_secs(2)));
        self.rt.shutdown_timeout(Duration::from_secs(2));
    }

    /// Runs `f` with the members of every view this node gets, from now on.
    pub fn on_membership(&self, f: impl Fn(&std::collections::BTreeSet<u8>) + Send + 'static) {
        let mut members = self.svc.members();
        self.rt.spawn(async move {
            loop {
                let now = members.borrow_and_update().clone();
                // Empty until the first view: "no view yet" says nothing about anyone.
                if !now.is_empty() {
                    f(&now);
                }
                if members.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Runs `f` once if this node fences.
    pub fn on_fence(&self, f: impl FnOnce() + Send + 'static) {
        let mut fenced = self.svc.fenced();
        self.rt.spawn(async move {
            if fenced.wait_for(Option::is_some).await.is_ok() {
                f();
            }
        });
    }
}

fn up(a: UpArgs) -> Result<()> {
    // Refuse a bad configuration before forking, so the error reaches the terminal.
    let cfg = config::load(&a.conf)?;
    cfg.node_by_name(&a.node.node).with_context(|| format!("node {:?} is not in {}", a.node.node, a.conf.display()))?;
    secret(&a.join, &cfg)?;
    let socket = a.node.socket();
    daemon::run(a.foreground, |mut ready| {
        let disk = match &a.image {
            Some(img) => Some(disk_heartbeat(
                Arc::new(FileDevice::open(img, true).with_context(|| format!("opening {}", img.display()))?),
                true,
            )?),
            None => None,
        };
        let recovery = Arc::new(|dead: u8| tracing::info!(dead, "node {dead} is recovered (no filesystem here)"));
        let stack = Stack::start(&a.conf, &a.node.node, &a.join, disk, recovery, None)?;
        stack.serve_admin(&socket, None, None)?;
        ready.done();
        stack.rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: leaving the cluster"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: leaving the cluster"),
            }
            Ok::<(), anyhow::Error>(())
        })?;
        stack.leave();
        Ok(())
    })
}

/// Answers one admin client: `status`, `locks`, and `lock` (held until the client closes the
/// connection or sends `unlock`; if this node fences meanwhile the client is told at once).
async fn serve_admin(
    svc: Arc<LockService>,
    cluster: ClusterHandle,
    mirror: Option<Arc<Mirror>>,
    mount: Option<Arc<KernelCache>>,
    mut conn: AdminConn,
) {
    while let Ok(Some(req)) = conn.recv().await {
        let reply = match (req["cmd"].as_str(), &mirror) {
            (Some("status"), _) => {
                let mut reply = admin::ok(json!({
                    "cluster": cluster.status(),
                    "cached_locks": svc.cached().len(),
                    "lock_messages_sent": svc.messages_sent(),
                }));
                if let Some(m) = &mirror {
                    let section = super::mirror::answer(m, req.clone()).await["mirror"].take();
                    reply["mirror"] = section;
                }
                if let Some(k) = &mount {
                    reply["fuse_requests"] = k.counts.to_json();
                    reply["request_reruns"] = o2fs::fs::lockset::reruns().into();
                }
                reply
            }
            (Some("locks"), _) => {
                let dumps = svc.dump_cluster(Duration::from_secs(5)).await;
                admin::ok(
                    json!({ "nodes": dumps.iter().map(|(n, d)| json!({"node": n, "resources": d})).collect::<Vec<_>>() }),
                )
            }
            (Some("lock"), _) => {
                hold_lock(&svc, &mut conn, &req).await;
                return;
            }
            (_, Some(m)) => super::mirror::answer(m, req).await,
            (other, None) => admin::err(format!("unknown command {other:?}")),
        };
        if conn.send(&reply).await.is_err() {
            return;
        }
    }
}

async fn hold_lock(svc: &Arc<LockService>, conn: &mut AdminConn, req: &Value) {
    let parsed = (|| -> Result<(ResName, Mode, bool)> {
        let name = ResName::new(req["name"].as_str().unwrap_or(""))?;
        let mode: Mode = req["mode"].as_str().unwrap_or("ex").parse()?;
        if !matches!(mode, Mode::Pr | Mode::Ex) {
            bail!("mode {mode}: o2fs lock takes pr or ex");
        }
        Ok((name, mode, req["try"].as_bool().unwrap_or(false)))
    })();
    let (name, mode, try_lock) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let _ = conn.send(&admin::err(format!("{e:#}"))).await;
            return;
        }
    };
    let mut fenced = svc.fenced();
    // The client may give up while waiting: closing its connection abandons the request.
    let guard = tokio::select! {
        g = svc.lock(&name, mode, try_lock.then_some(TRY_FOR)) => g,
        _ = conn.recv() => return,
    };
    let guard = match guard {
        Ok(g) => g,
        Err(e) => {
            let msg = match e {
                ServiceError::HeldElsewhere => format!("{} is locked elsewhere", name.as_str()),
                e => e.to_string(),
            };
            let _ = conn.send(&admin::err(msg)).await;
            return;
        }
    };
    if conn.send(&admin::ok(json!({ "granted": mode.to_string() }))).await.is_err() {
        return;
    }
    tokio::select! {
        _ = conn.recv() => {}
        why = async { fenced.wait_for(Option::is_some).await.map(|w| w.clone().unwrap_or_default()) } => {
            let why = why.unwrap_or_default();
            let _ = conn.send(&admin::err(format!("lock lost: this node fenced ({why})"))).await;
        }
    }
    drop(guard);
}

/// `o2fs lock`: runs the command while holding the lock; exits with its status.
pub fn lock(a: LockArgs) -> Result<i32> {
    let socket = a.node.socket();
    let mut client = AdminClient::connect(&socket)?;
    match client.call(&json!({"cmd": "lock", "name": a.name, "mode": a.mode, "try": a.try_lock}), None) {
        Ok(_) => {}
        Err(admin::AdminError::Remote(msg)) if a.try_lock && msg.ends_with("is locked elsewhere") => {
            eprintln!("o2fs lock: {msg}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    }
    let child = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .spawn()
        .with_context(|| format!("running {}", a.command[0]))?;
    let child = Arc::new(parking_lot::Mutex::new(child));
    let closer = client.closer()?;
    // If the lock is lost (the node fenced, or its daemon died), the command must not go on
    // believing it holds it: kill it. The child is reaped only under the mutex, so the pid
    // killed is always still ours.
    let watcher = {
        let child = child.clone();
        std::thread::spawn(move || {
            let why = match client.next_message() {
                Ok(None) | Err(_) => "the daemon went away".to_string(),
                Ok(Some(v)) => v["error"].as_str().unwrap_or("lock lost").to_string(),
            };
            let mut c = child.lock();
            if matches!(c.try_wait(), Ok(None)) {
                eprintln!("o2fs lock: {why}: killing the command");
                let _ = c.kill();
            }
        })
    };
    let status = loop {
        if let Some(st) = child.lock().try_wait().context("waiting for the command")? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = closer.shutdown(std::net::Shutdown::Both);
    let _ = watcher.join();
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// `o2fs locks`: every lock resource of the cluster, from its master's point of view.
pub fn locks(a: ShowArgs) -> Result<()> {
    let reply = admin::request(&a.node.socket(), &json!({"cmd": "locks"}), Duration::from_secs(10))?;
    if a.json {
        println!("{}", reply["nodes"]);
        return Ok(());
    }
    let nodes: Vec<(u8, Vec<ResourceDump>)> = reply["nodes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|n| Some((n["node"].as_u64()? as u8, serde_json::from_value(n["resources"].clone()).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    println!("{:<32} {:<6} {:<24} Waiting", "Resource", "Master", "Granted");
    for (_, dumps) in &nodes {
        for d in dumps.iter().filter(|d| d.mastered_here) {
            let granted: Vec<String> = d.granted.iter().map(|h| format!("{}:{}", h.node, h.mode)).collect();
            let waiting: Vec<String> = d
                .converting
                .iter()
                .chain(&d.waiting)
                .map(|w| format!("{}:{} {}ms", w.node, w.wanted, w.waited_ms))
                .collect();
            let master = d.master.map_or("-".to_string(), |m| m.to_string());
            println!("{:<32} {:<6} {:<24} {}", d.name, master, granted.join(","), waiting.join(", "));
        }
    }
    Ok(())
}

/// `o2fs status`: what the node's daemon reports (cluster view, links, fencing).
pub fn status(a: ShowArgs) -> Result<()> {
    let reply = admin::request(&a.node.socket(), &json!({"cmd": "status"}), Duration::from_secs(10))?;
    if a.json {
        println!("{reply}");
        return Ok(());
    }
    if let Some(c) = reply.get("cluster") {
        let members: Vec<String> =
            c["view"]["members"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        println!("node {} (number {})", c["node"].as_str().unwrap_or("?"), c["number"]);
        match c["fenced"].as_str() {
            Some(why) => println!("  FENCED: {why}"),
            None => println!(
                "  view epoch {} members [{}] reachable {}",
                c["view"]["epoch"],
                members.join(","),
                c["reachable"]
            ),
        }
    }
    if let Some(m) = reply.get("mirror") {
        print!("{}", o2fs::dev::mirror::admin::format_status(m));
    }
    Ok(())
}
