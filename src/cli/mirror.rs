//! `o2fs mirror up` and the mirror's administration commands answered over a node's unix socket
//! (`o2fs verify|connect|disconnect|invalidate|discard-my-data|primary|secondary|resume-io`;
//! `o2fs status` shows the mirror section of any node's status). Command lines only: the mirror
//! is `o2fs::dev::mirror::driver`.

use anyhow::{bail, Context, Result};
use o2fs::dev::mirror::config::ResourceConfig;
use o2fs::dev::mirror::driver::{Mirror, MirrorOptions};
use o2fs::dev::mirror::engine::Fencing;
use o2fs::net::admin::{self, AdminListener};
use o2fs::net::NetConfig;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::cluster::{NodeRef, TimingArgs};
use super::daemon::{self, Ready};

#[derive(clap::Args, Debug)]
pub struct MirrorArgs {
    #[command(subcommand)]
    cmd: MirrorCmd,
}

#[derive(clap::Subcommand, Debug)]
enum MirrorCmd {
    /// Run this node's mirror of a resource without a filesystem (testing, or resyncing a node
    /// that is not mounted).
    Up(UpArgs),
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    node: NodeRef,
    /// DRBD-format resource file.
    #[arg(short = 'r')]
    resource: PathBuf,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Send a keepalive after this long without traffic (o2cb default 2000 ms).
    #[arg(long, default_value_t = NetConfig::default().keepalive_ms)]
    keepalive_ms: u64,
    /// Declare the peer gone after this long without traffic (o2cb default 30000 ms).
    #[arg(long, default_value_t = NetConfig::default().idle_timeout_ms)]
    idle_timeout_ms: u64,
}

pub fn run(a: MirrorArgs) -> Result<()> {
    let MirrorCmd::Up(a) = a.cmd;
    let resources = o2fs::dev::mirror::config::load(&a.resource)?;
    let Some(res) = resources.into_iter().find(|r| r.host(&a.node.node).is_some()) else {
        bail!("{}: no resource has a host named {}", a.resource.display(), a.node.node);
    };
    daemon::run(a.foreground, |ready| up(&a, res, ready))
}

/// Runs the mirror and its admin socket until SIGTERM or SIGINT, then shuts down cleanly.
fn up(a: &UpArgs, res: ResourceConfig, mut ready: Ready) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    // Blocked before any thread starts, so that every thread inherits the mask and only the
    // wait below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;
    // The resource file's fencing: dont-care (the default) goes on degraded after a split;
    // resource-and-stonith freezes until `o2fs resume-io` or the link returns (no cluster
    // decides here).
    let fencing = res.fencing();
    if fencing == Fencing::Freeze {
        tracing::info!("fencing resource-and-stonith: a lost peer freezes I/O until `o2fs resume-io` or its return");
    }
    let mirror = start_with(&res, &a.node.node, a.keepalive_ms, a.idle_timeout_ms, fencing)?;
    let path = a.node.socket();
    let listener = mirror.runtime().block_on(AdminListener::bind(&path))?;
    let m = mirror.clone();
    mirror.runtime().spawn(listener.serve(move |mut conn| {
        let m = m.clone();
        async move {
            while let Ok(Some(request)) = conn.recv().await {
                let reply = answer(&m, request).await;
                if conn.send(&reply).await.is_err() {
                    break;
                }
            }
        }
    }));
    // As DRBD's init script: the command returns once the peer is there, or wfc-timeout passed.
    if !a.foreground {
        if let Err(why) = mirror.wait_for_peer(&res) {
            tracing::error!("the peer was refused: {why}");
        }
    }
    ready.done();
    let signal = signals.wait().context("waiting for a signal")?;
    tracing::info!(?signal, "mirror down");
    drop(mirror);
    Ok(())
}

/// Starts `node`'s mirror of `res` with the cluster's link timing (a cluster mount on the
/// mirror; the mount checked the resource with `ResourceConfig::check_cluster_mount`). Both
/// nodes are primary, and a lost peer freezes I/O until the cluster's quorum decides (DRBD's
/// `fencing resource-and-stonith`): no write is acknowledged by a node that may yet be fenced.
///
/// The mirror's link waits twice as long as the cluster's before it gives up: a stall the
/// cluster's link rides out (a reconnect within its grace keeps the peer a member) should not
/// freeze the mirror, which then gets no verdict and waits for its own link to return (its
/// frozen writes are sent again then).
pub fn start(res: &ResourceConfig, node: &str, timing: &TimingArgs) -> Result<Arc<Mirror>> {
    start_with(res, node, timing.keepalive_ms, 2 * timing.idle_timeout_ms, Fencing::Freeze)
}

fn start_with(
    res: &ResourceConfig,
    node: &str,
    keepalive_ms: u64,
    idle_timeout_ms: u64,
    fencing: Fencing,
) -> Result<Arc<Mirror>> {
    let net = NetConfig { keepalive_ms, idle_timeout_ms, ..NetConfig::default() };
    let opts = MirrorOptions { node: node.to_string(), net, fencing };
    Ok(Arc::new(Mirror::start(res, opts).with_context(|| format!("starting resource {}", res.name))?))
}

/// Answers one admin request to the mirror. Its calls wait for the engine thread, so they run
/// on tokio's blocking pool, not on a worker.
pub async fn answer(mirror: &Arc<Mirror>, request: Value) -> Value {
    let m = mirror.clone();
    tokio::task::spawn_blocking(move || m.admin(&request))
        .await
        .unwrap_or_else(|e| admin::err(format!("admin request failed: {e}")))
}

/// `verify`, `connect`, `disconnect`, `invalidate`, `discard-my-data`, `primary`, `secondary`,
/// `resume-io`.
pub fn command(cmd: &str, node: NodeRef) -> Result<()> {
    admin::request(&node.socket(), &json!({ "cmd": cmd }), Duration::from_secs(30))
        .with_context(|| format!("node {}", node.node))?;
    Ok(())
}
