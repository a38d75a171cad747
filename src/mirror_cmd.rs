//! `o2fs mirror up` and the administration commands answered over a node's unix socket
//! (`o2fs status|verify|connect|disconnect|invalidate|discard-my-data`). Command lines only: the
//! mirror is `o2fs::dev::mirror::driver`.

use anyhow::{bail, Context, Result};
use o2fs::dev::mirror::driver::{Mirror, MirrorOptions};
use o2fs::dev::mirror::engine::Fencing;
use o2fs::net::admin::{self, AdminListener};
use o2fs::net::NetConfig;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// This node's name (an `on NAME` section of the resource).
    #[arg(long)]
    node: String,
    /// DRBD-format resource file.
    #[arg(short = 'r')]
    resource: PathBuf,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Admin socket (default /run/o2fs/NODE.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Send a keepalive after this long without traffic (o2cb default 2000 ms).
    #[arg(long, default_value_t = NetConfig::default().keepalive_ms)]
    keepalive_ms: u64,
    /// Declare the peer gone after this long without traffic (o2cb default 30000 ms).
    #[arg(long, default_value_t = NetConfig::default().idle_timeout_ms)]
    idle_timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The node whose daemon to ask.
    #[arg(long)]
    node: String,
    /// Admin socket (default /run/o2fs/NODE.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn socket(node: &str, path: &Option<PathBuf>) -> PathBuf {
    path.clone().unwrap_or_else(|| admin::default_socket(node))
}

pub fn cmd_mirror(a: MirrorArgs) -> Result<()> {
    let MirrorCmd::Up(a) = a.cmd;
    let resources = o2fs::dev::mirror::config::load(&a.resource)?;
    let Some(res) = resources.into_iter().find(|r| r.host(&a.node).is_some()) else {
        bail!("{}: no resource has a host named {}", a.resource.display(), a.node);
    };
    if a.foreground {
        return run(&a, res, None);
    }
    crate::daemonize("mirror", |ready| run(&a, res, ready))
}

/// Runs the mirror and its admin socket until SIGTERM or SIGINT, then shuts down cleanly.
fn run(a: &UpArgs, res: o2fs::dev::mirror::config::ResourceConfig, ready: Option<std::fs::File>) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    // Blocked before any thread starts, so that every thread inherits the mask and only the
    // wait below takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;
    let net = NetConfig { keepalive_ms: a.keepalive_ms, idle_timeout_ms: a.idle_timeout_ms, ..NetConfig::default() };
    let opts = MirrorOptions { node: a.node.clone(), net, fencing: Fencing::DontCare };
    let mirror = Arc::new(Mirror::start(&res, opts).with_context(|| format!("starting resource {}", res.name))?);
    let path = socket(&a.node, &a.socket);
    let listener = mirror.runtime().block_on(AdminListener::bind(&path))?;
    let m = mirror.clone();
    mirror.runtime().spawn(listener.serve(move |mut conn| {
        let m = m.clone();
        async move {
            while let Ok(Some(request)) = conn.recv().await {
                let m = m.clone();
                // The mirror's admin calls wait for the engine thread: not on a tokio worker.
                let reply = tokio::task::spawn_blocking(move || m.admin(&request))
                    .await
                    .unwrap_or_else(|e| admin::err(format!("admin request failed: {e}")));
                if conn.send(&reply).await.is_err() {
                    break;
                }
            }
        }
    }));
    if let Some(mut w) = ready {
        use std::io::Write;
        let _ = w.write_all(b"ok");
    }
    let signal = signals.wait().context("waiting for a signal")?;
    tracing::info!(?signal, "mirror down");
    drop(mirror);
    Ok(())
}

fn call(a: &AdminArgs, request: serde_json::Value) -> Result<serde_json::Value> {
    let path = socket(&a.node, &a.socket);
    admin::request(&path, &request, Duration::from_secs(30)).with_context(|| format!("node {}", a.node))
}

pub fn cmd_status(a: StatusArgs) -> Result<()> {
    let reply = call(&a.admin, json!({ "cmd": "status" }))?;
    if a.json {
        println!("{reply}");
    } else {
        print!("{}", o2fs::dev::mirror::admin::format_status(&reply));
    }
    Ok(())
}

/// `verify`, `connect`, `disconnect`, `invalidate`, `discard-my-data`.
pub fn cmd_simple(cmd: &str, a: AdminArgs) -> Result<()> {
    call(&a, json!({ "cmd": cmd }))?;
    Ok(())
}
