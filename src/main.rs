//! o2fs: the daemon and administration program. `o2fs mount` serves a volume through FUSE;
//! invoked by mount(8) as `mount.fuse.o2fs` (or by mount.fuse3 as `o2fs SOURCE DIR -o OPTS`)
//! it mounts too, so an /etc/fstab line works. Command lines only: the work is in the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use o2fs::cluster::disk_heartbeat::{Heartbeat, Region, DEFAULT_DEAD_BEATS, DEFAULT_INTERVAL};
use o2fs::dev::FileDevice;
use o2fs::fs::mount::{mount, MountConfig};
use o2fs::fuse::{MountOptions, O2Fuse};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod mirror_cmd;

#[derive(Parser, Debug)]
#[command(name = "o2fs", version, about = "o2fs cluster filesystem daemon and tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount a volume (single node).
    Mount(MountArgs),
    /// List the nodes heartbeating on a volume (as mounted.ocfs2 -f does).
    Mounted(MountedArgs),
    /// The replicated device (DRBD-style mirror).
    Mirror(mirror_cmd::MirrorArgs),
    /// Show a running node's mirror state (as drbdadm status does).
    Status(mirror_cmd::StatusArgs),
    /// Compare the replicas online (sha1 per block); differing blocks are resynced.
    Verify(mirror_cmd::AdminArgs),
    /// Connect to the peer again (after a refusal or disconnect).
    Connect(mirror_cmd::AdminArgs),
    /// Drop the peer connection and stay disconnected.
    Disconnect(mirror_cmd::AdminArgs),
    /// Declare the local replica invalid: it is fully resynced from the peer.
    Invalidate(mirror_cmd::AdminArgs),
    /// After a split brain: throw this node's changes away and resync from the peer.
    DiscardMyData(mirror_cmd::AdminArgs),
}

#[derive(clap::Args, Debug)]
struct MountedArgs {
    /// o2cb cluster.conf, to print node names instead of numbers.
    #[arg(short = 'c')]
    cluster_conf: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Image file or block device.
    image: PathBuf,
}

#[derive(clap::Args, Debug)]
struct MountArgs {
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Mount options (comma-separated; may be repeated).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Image file or block device.
    image: PathBuf,
    /// Mount point.
    dir: PathBuf,
}

/// First arguments that are subcommands, even when a file of that name exists in the working
/// directory (anything else that exists is a mount helper's SOURCE).
const SUBCOMMANDS: &[&str] =
    &["mount", "mounted", "mirror", "status", "verify", "connect", "disconnect", "invalidate", "discard-my-data"];

fn main() {
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    // Two arenas keep the daemon's memory close to its caches (many per-thread arenas hold on to
    // freed 4 KiB metadata blocks).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // mount(8) runs helpers as `mount.fuse.o2fs SOURCE DIR [-o OPTS]`; mount.fuse3 runs `o2fs
    // SOURCE DIR -o OPTS`. Both mean `o2fs mount`.
    let is_mount_helper = invoked_as.starts_with("mount.")
        || argv.get(1).is_some_and(|a| Path::new(a).exists() && !SUBCOMMANDS.contains(&a.as_str()));
    let cli = if is_mount_helper {
        let mut args = vec!["o2fs".to_string(), "mount".to_string()];
        args.extend(argv.into_iter().skip(1).filter(|a| a != "-n" && a != "-s" && a != "-v"));
        Cli::parse_from(args)
    } else {
        Cli::parse()
    };
    let result = match cli.cmd {
        Cmd::Mount(a) => cmd_mount(a),
        Cmd::Mounted(a) => cmd_mounted(a),
        Cmd::Mirror(a) => mirror_cmd::cmd_mirror(a),
        Cmd::Status(a) => mirror_cmd::cmd_status(a),
        Cmd::Verify(a) => mirror_cmd::cmd_simple("verify", a),
        Cmd::Connect(a) => mirror_cmd::cmd_simple("connect", a),
        Cmd::Disconnect(a) => mirror_cmd::cmd_simple("disconnect", a),
        Cmd::Invalidate(a) => mirror_cmd::cmd_simple("invalidate", a),
        Cmd::DiscardMyData(a) => mirror_cmd::cmd_simple("discard-my-data", a),
    };
    if let Err(e) = result {
        eprintln!("o2fs: {e:#}");
        std::process::exit(1);
    }
}

/// `o2fs mounted`: nodes whose heartbeat sector changes within one interval are alive.
fn cmd_mounted(a: MountedArgs) -> Result<()> {
    let conf = a
        .cluster_conf
        .as_deref()
        .map(o2fs::cluster::config::load)
        .transpose()
        .context("reading the cluster configuration")?;
    let dev: Arc<dyn o2fs::dev::BlockDevice> =
        Arc::new(FileDevice::open(&a.image, false).with_context(|| format!("opening {}", a.image.display()))?);
    let vol = o2fs::fs::Volume::open(dev.clone()).with_context(|| format!("reading {}", a.image.display()))?;
    let sb = vol.sb();
    if sb.features.has_incompat(o2fs::format::features::INCOMPAT_LOCAL_MOUNT) {
        println!("{}: a local volume (no heartbeat; one node mounts it at a time)", a.image.display());
        return Ok(());
    }
    let (start, len) = vol.heartbeat_area().context("locating the heartbeat area")?;
    let live = Region::new(dev, start, len).live_nodes(DEFAULT_INTERVAL).context("reading the heartbeat area")?;
    let name = |n: u8| {
        conf.as_ref()
            .and_then(|c| c.nodes.iter().find(|x| x.number == n))
            .map(|x| x.name.clone())
            .unwrap_or_else(|| n.to_string())
    };
    let nodes: Vec<String> = live.iter().map(|&n| name(n)).collect();
    if a.json {
        let quoted: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
        println!(
            "{{\"device\":{:?},\"uuid\":\"{}\",\"label\":{:?},\"nodes\":[{}]}}",
            a.image.display().to_string(),
            sb.uuid_hex(),
            sb.label_str(),
            quoted.join(",")
        );
    } else {
        println!("{:<24} {:<6} {:<16} Nodes", "Device", "Stack", "Cluster");
        let stack = if sb.cluster_stack_str().is_empty() { "o2cb".to_string() } else { sb.cluster_stack_str() };
        let nodes = if nodes.is_empty() { "Not mounted".to_string() } else { nodes.join(", ") };
        println!("{:<24} {:<6} {:<16} {}", a.image.display(), stack, sb.cluster_name_str(), nodes);
    }
    Ok(())
}

fn cmd_mount(a: MountArgs) -> Result<()> {
    let mut opts = MountOptions::default();
    for o in &a.options {
        opts.parse_into(o).map_err(anyhow::Error::msg)?;
    }
    if !a.dir.is_dir() {
        bail!("mount point {} is not a directory", a.dir.display());
    }
    if a.foreground {
        return serve(&a, &opts, None);
    }
    daemonize("mount", |ready| serve(&a, &opts, ready))
}

/// Runs `run` in a daemon child, returning in the parent once the child reports ready: `run`
/// gets the pipe to write "ok" on once it serves (and keeps it open), or fails, and its error
/// is reported by the parent.
fn daemonize(what: &str, run: impl FnOnce(Option<std::fs::File>) -> Result<()>) -> Result<()> {
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: fork is required to daemonise; no other thread exists yet at this point, so the
    // child starts from a consistent single-threaded state.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(wr);
            // The child writes "ok" once ready (and keeps the pipe open), or an error and exits.
            let mut msg = Vec::new();
            let mut rd = std::fs::File::from(rd);
            let mut buf = [0u8; 512];
            use std::io::Read;
            while msg != b"ok" {
                match rd.read(&mut buf).context("waiting for the daemon")? {
                    0 => break,
                    n => msg.extend_from_slice(&buf[..n]),
                }
            }
            let msg = String::from_utf8_lossy(&msg).into_owned();
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.is_empty() => bail!("the {what} daemon died before it was ready"),
                None => bail!("{}", msg.trim_start_matches("err:").trim()),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(rd);
            let _ = nix::unistd::setsid();
            let wr = std::fs::File::from(wr);
            // The parent reports a failure to start; the daemon's own error output is gone.
            if let Err(e) = run(Some(wr.try_clone().context("pipe")?)) {
                use std::io::Write;
                let _ = write!(&wr, "err: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Mounts and serves until unmounted. `ready` hears "ok" once the mount is up.
fn serve(a: &MountArgs, opts: &MountOptions, ready: Option<std::fs::File>) -> Result<()> {
    // Before any thread starts, so that every thread inherits the blocked signals.
    spawn_signal_unmounter(a.dir.clone());
    let dev = FileDevice::open(&a.image, !opts.read_only).with_context(|| format!("opening {}", a.image.display()))?;
    // A single-node mount owns the image: a second o2fs on this machine must not mount it too.
    let _image_lock = lock_image(&dev, &a.image)?;
    let dev: Arc<dyn o2fs::dev::BlockDevice> = Arc::new(dev);
    let vol = o2fs::fs::Volume::open(dev.clone()).with_context(|| format!("reading {}", a.image.display()))?;
    // A clustered volume: nobody may be heartbeating on it, and while mounted we heartbeat as
    // node 0 so other tools (fsck, mkfs, mounted.ocfs2, another mount) see it in use.
    let heartbeat = if vol.sb().features.has_incompat(o2fs::format::features::INCOMPAT_LOCAL_MOUNT) || opts.read_only {
        None
    } else {
        let (start, len) = vol.heartbeat_area().context("locating the heartbeat area")?;
        let region = Region::new(dev.clone(), start, len);
        let live = region.live_nodes(DEFAULT_INTERVAL).context("reading the heartbeat area")?;
        if !live.is_empty() {
            bail!("node(s) {live:?} are heartbeating on {}: it is mounted elsewhere (a cluster mount is needed to share it)", a.image.display());
        }
        Some(Heartbeat::start(region, 0, DEFAULT_INTERVAL, DEFAULT_DEAD_BEATS).context("starting the disk heartbeat")?)
    };
    drop(vol);
    let cfg = MountConfig {
        read_only: opts.read_only,
        cache_bytes: opts.cache_bytes,
        data_ordered: opts.data_ordered,
        local_alloc_bytes: (opts.localalloc_mb as u64) << 20,
        ..Default::default()
    };
    let mounted = mount(dev, &cfg).with_context(|| format!("mounting {}", a.image.display()))?;
    let fs = O2Fuse::new(mounted, opts);
    let mut config = fuser::Config::default();
    config.mount_options =
        vec![fuser::MountOption::FSName(a.image.display().to_string()), fuser::MountOption::Subtype("o2fs".into())];
    if opts.default_permissions {
        config.mount_options.push(fuser::MountOption::DefaultPermissions);
    }
    if opts.read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    config.mount_options.extend(opts.kernel.iter().filter_map(|k| kernel_option(k)));
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(4);
    config.clone_fd = true;
    let session =
        fuser::Session::new(fs, &a.dir, &config).with_context(|| format!("mounting on {}", a.dir.display()))?;
    if let Some(mut w) = ready {
        use std::io::Write;
        let _ = w.write_all(b"ok");
        drop(w);
        redirect_stdio();
    }
    let served = session.run().context("serving FUSE requests");
    // After the clean unmount (the session's end ran it): stop beating, clear our sector.
    drop(heartbeat);
    served
}

/// Takes an exclusive advisory lock on the image, held while the returned guard lives.
fn lock_image(dev: &FileDevice, path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = dev.file().try_clone().with_context(|| format!("locking {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(guard) => Ok(guard),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            bail!("{} is already mounted by another o2fs process", path.display())
        }
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// The generic mount flags mount(8) and fstab pass along (relatime and friends are the
/// kernel's default and need nothing).
fn kernel_option(name: &str) -> Option<fuser::MountOption> {
    use fuser::MountOption::*;
    Some(match name {
        "dev" => Dev,
        "nodev" => NoDev,
        "suid" => Suid,
        "nosuid" => NoSuid,
        "exec" => Exec,
        "noexec" => NoExec,
        "atime" => Atime,
        "noatime" => NoAtime,
        "sync" => Sync,
        "async" => Async,
        "dirsync" => DirSync,
        _ => return None,
    })
}

/// A daemon keeps no terminal.
fn redirect_stdio() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in [0, 1] {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// SIGTERM/SIGINT unmount cleanly (the session then ends and the volume is released).
fn spawn_signal_unmounter(dir: PathBuf) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            tracing::info!("signal received: unmounting {}", dir.display());
            let _ = std::process::Command::new("fusermount3").arg("-u").arg(&dir).status();
        }
    });
}
