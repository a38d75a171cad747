//! o2fs: the daemon and administration program. `o2fs mount` serves a volume through FUSE;
//! invoked by mount(8) as `mount.fuse.o2fs` (or by mount.fuse3 as `o2fs SOURCE DIR -o OPTS`)
//! it mounts too, so an /etc/fstab line works. Command lines only: the work is in the library.

mod cli;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use o2fs::cluster::disk_heartbeat::{Heartbeat, Region, DEFAULT_DEAD_BEATS, DEFAULT_INTERVAL};
use o2fs::dev::FileDevice;
use o2fs::fs::mount::{mount, MountConfig};
use o2fs::fuse::{MountOptions, O2Fuse};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "o2fs", version, about = "o2fs cluster filesystem daemon and tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount a volume: alone, as a node of a cluster on a shared image, or on the mirror (-r).
    Mount(MountArgs),
    /// List the nodes heartbeating on a volume (as mounted.ocfs2 -f does).
    Mounted(MountedArgs),
    /// Cluster daemon (membership, heartbeats, DLM).
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCmd),
    /// Run a command while holding a cluster-wide lock (flock(1) for a whole cluster).
    Lock(cli::cluster::LockArgs),
    /// Dump the cluster's lock resources: master, holders, waiters.
    Locks(cli::cluster::ShowArgs),
    /// A running node's state (cluster and mirror sections; the mirror's as drbdadm status).
    Status(cli::cluster::ShowArgs),
    /// The replicated device (DRBD-style mirror).
    Mirror(cli::mirror::MirrorArgs),
    /// Compare the mirror's replicas online (sha1 per block); differing blocks are resynced.
    Verify(cli::cluster::NodeRef),
    /// Connect the mirror to its peer again (after a refusal or disconnect).
    Connect(cli::cluster::NodeRef),
    /// Drop the mirror's peer connection and stay disconnected.
    Disconnect(cli::cluster::NodeRef),
    /// Declare the local replica invalid: it is fully resynced from the peer.
    Invalidate(cli::cluster::NodeRef),
    /// After a split brain: throw this node's changes away and resync from the peer.
    DiscardMyData(cli::cluster::NodeRef),
    /// Demote this node of the mirror (with allow-two-primaries off, the peer may then write;
    /// with become-primary-on in the resource file, this node then refuses writes until `primary`).
    Secondary(cli::cluster::NodeRef),
    /// Promote this node of the mirror, so that it may write (refused while the peer is primary
    /// and allow-two-primaries is off).
    Primary(cli::cluster::NodeRef),
    /// Let a mirror frozen by `fencing resource-and-stonith` go on without its peer (the peer is
    /// known to be down); refused for a node that has not met its peer since it started.
    ResumeIo(cli::cluster::NodeRef),
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
    /// o2cb cluster.conf: mount as a node of this cluster (with --node), sharing the volume.
    #[arg(short = 'c')]
    cluster_conf: Option<PathBuf>,
    /// This node's name in the cluster.
    #[arg(long, requires = "cluster_conf")]
    node: Option<String>,
    /// Admin socket of a cluster mount (default /run/o2fs/NODE.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[command(flatten)]
    join: cli::cluster::JoinArgs,
    /// DRBD-format resource file: mount on this node's replica of the mirror (its `disk`),
    /// replicated to the peer; no IMAGE then.
    #[arg(short = 'r', requires_all = ["cluster_conf", "node"])]
    resource: Option<PathBuf>,
    /// Mount options (comma-separated; may be repeated).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// The image file or block device (omitted with -r), then the mount point.
    #[arg(value_name = "[IMAGE] DIR", num_args = 1..=2, required = true)]
    paths: Vec<PathBuf>,
}

/// What a mount serves: an image (file or block device), or this node's replica of a mirror.
enum Source {
    Image(PathBuf),
    /// `peer` is the cluster node number of the resource's other host.
    Mirror {
        file: PathBuf,
        res: o2fs::dev::mirror::config::ResourceConfig,
        peer: u8,
    },
}

impl Source {
    /// How the mount is named (its FUSE fsname, and in messages).
    fn name(&self) -> String {
        match self {
            Source::Image(p) => p.display().to_string(),
            Source::Mirror { file, res, .. } => format!("{}:{}", file.display(), res.name),
        }
    }
}

impl MountArgs {
    /// The source and the mount point: IMAGE DIR, or DIR alone with -r.
    fn target(&self) -> Result<(Source, PathBuf)> {
        match (&self.resource, self.paths.as_slice()) {
            (None, [image, dir]) => Ok((Source::Image(image.clone()), dir.clone())),
            (None, _) => bail!("o2fs mount needs IMAGE DIR (or -r RESOURCE_FILE DIR for a node of a mirror)"),
            (Some(file), [dir]) => {
                let node = self.node.as_deref().context("-r needs --node NAME")?;
                let conf = self.cluster_conf.as_deref().context("-r needs -c CLUSTER_CONF")?;
                let (res, peer) = mirror_resource(file, node, conf)?;
                Ok((Source::Mirror { file: file.clone(), res, peer }, dir.clone()))
            }
            (Some(file), _) => {
                bail!("with -r {} the volume is the mirror's: give only the mount point DIR", file.display())
            }
        }
    }
}

/// The resource of `file` that has a host named `node`, and the cluster node number of its
/// other host; every host of it must be a node of the cluster (the same names in both files),
/// and the resource must allow a cluster mount (both nodes primary, fencing that freezes).
fn mirror_resource(file: &Path, node: &str, conf: &Path) -> Result<(o2fs::dev::mirror::config::ResourceConfig, u8)> {
    let cluster = o2fs::cluster::config::load(conf).context("reading the cluster configuration")?;
    let resources = o2fs::dev::mirror::config::load(file)?;
    let hosts = |r: &o2fs::dev::mirror::config::ResourceConfig| {
        r.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
    };
    let Some(res) = resources.iter().find(|r| r.host(node).is_some()) else {
        let named: Vec<String> = resources.iter().map(|r| format!("{} ({})", r.name, hosts(r))).collect();
        bail!(
            "{}: no resource has a host named {node} (its hosts: {}); the resource's `on` names must be the \
             node names of {}",
            file.display(),
            named.join("; "),
            conf.display()
        );
    };
    if let Some(h) = res.hosts.iter().find(|h| cluster.node_by_name(&h.name).is_none()) {
        bail!(
            "{}: host {} of resource {} is not a node of {}; the resource's `on` names must be the node names \
             of the cluster",
            file.display(),
            h.name,
            res.name,
            conf.display()
        );
    }
    res.check_cluster_mount(file)?;
    let peer = res.peer_of(node).and_then(|h| cluster.node_by_name(&h.name)).map(|n| n.number);
    let peer = peer.with_context(|| format!("{}: resource {} has no second host", file.display(), res.name))?;
    Ok((res.clone(), peer))
}

/// Names that are subcommands even if a file of that name exists (mount-helper detection).
const SUBCOMMANDS: &[&str] = &[
    "mount",
    "mounted",
    "cluster",
    "lock",
    "locks",
    "status",
    "mirror",
    "verify",
    "connect",
    "disconnect",
    "invalidate",
    "discard-my-data",
    "secondary",
    "primary",
    "resume-io",
    "help",
];

fn main() {
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    // Two arenas keep the daemon's memory close to its caches (many per-thread arenas hold on to
    // freed 4 KiB metadata blocks).
    // A fixed mmap threshold: buffers of 128 KiB and more (FUSE reads and writes, journal
    // transactions) are mapped and unmapped on their own; glibc's sliding threshold would
    // otherwise move them into the heap after the first large free, where they fragment it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
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
    // Commands that print a report end quietly when their reader goes (`o2fs status | head`), as
    // coreutils do: Rust ignores SIGPIPE, and println! would then panic on EPIPE. Not daemons:
    // their sockets must see EPIPE as an error.
    if matches!(cli.cmd, Cmd::Mounted(_) | Cmd::Locks(_) | Cmd::Status(_)) {
        // SAFETY: restores one signal's default disposition; no other thread exists yet.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.cmd {
        Cmd::Mount(a) => cmd_mount(a),
        Cmd::Mounted(a) => cmd_mounted(a),
        Cmd::Cluster(c) => cli::cluster::run(c),
        Cmd::Lock(a) => match cli::cluster::lock(a) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Cmd::Locks(a) => cli::cluster::locks(a),
        Cmd::Status(a) => cli::cluster::status(a),
        Cmd::Mirror(a) => cli::mirror::run(a),
        Cmd::Verify(n) => cli::mirror::command("verify", n),
        Cmd::Connect(n) => cli::mirror::command("connect", n),
        Cmd::Disconnect(n) => cli::mirror::command("disconnect", n),
        Cmd::Invalidate(n) => cli::mirror::command("invalidate", n),
        Cmd::DiscardMyData(n) => cli::mirror::command("discard-my-data", n),
        Cmd::Secondary(n) => cli::mirror::command("secondary", n),
        Cmd::Primary(n) => cli::mirror::command("primary", n),
        Cmd::ResumeIo(n) => cli::mirror::command("resume-io", n),
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
    // Refuse bad arguments and configuration before forking, so the error reaches the terminal.
    let (source, dir) = a.target()?;
    if !dir.is_dir() {
        bail!("mount point {} is not a directory", dir.display());
    }
    cli::daemon::run(a.foreground, |ready| serve(&a, source, &dir, &opts, ready))
}

/// Mounts and serves until unmounted; `ready` is told once the mount is up.
fn serve(a: &MountArgs, source: Source, dir: &Path, opts: &MountOptions, mut ready: cli::daemon::Ready) -> Result<()> {
    // Before any thread starts, so that every thread inherits the blocked signals.
    spawn_signal_unmounter(dir.to_path_buf());
    let image = match (&a.cluster_conf, &source) {
        (Some(conf), _) => return serve_cluster(a, conf, source, dir, opts, ready),
        (None, Source::Image(image)) => image,
        (None, Source::Mirror { .. }) => bail!("a mount on the mirror is a cluster mount: it needs -c CLUSTER_CONF"),
    };
    let dev = FileDevice::open(image, !opts.read_only).with_context(|| format!("opening {}", image.display()))?;
    // A single-node mount owns the image: a second o2fs on this machine must not mount it too.
    let _image_lock = lock_image(&dev, image)?;
    let dev: Arc<dyn o2fs::dev::BlockDevice> = Arc::new(dev);
    let vol = o2fs::fs::Volume::open(dev.clone()).with_context(|| format!("reading {}", image.display()))?;
    // A clustered volume: nobody may be heartbeating on it, and while mounted we heartbeat as
    // node 0 so other tools (fsck, mkfs, mounted.ocfs2, another mount) see it in use.
    let heartbeat = if vol.sb().features.has_incompat(o2fs::format::features::INCOMPAT_LOCAL_MOUNT) || opts.read_only {
        None
    } else {
        let (start, len) = vol.heartbeat_area().context("locating the heartbeat area")?;
        let region = Region::new(dev.clone(), start, len);
        let live = region.live_nodes(DEFAULT_INTERVAL).context("reading the heartbeat area")?;
        if !live.is_empty() {
            bail!("node(s) {live:?} are heartbeating on {}: it is mounted elsewhere (a cluster mount is needed to share it)", image.display());
        }
        Some(Heartbeat::start(region, 0, DEFAULT_INTERVAL, DEFAULT_DEAD_BEATS).context("starting the disk heartbeat")?)
    };
    drop(vol);
    let cfg = MountConfig {
        read_only: opts.read_only,
        cache_bytes: opts.cache_bytes,
        local_alloc_bytes: opts.localalloc_mb.map(|mb| (mb as u64) << 20),
        ..Default::default()
    };
    let mounted = mount(dev, &cfg).with_context(|| format!("mounting {}", image.display()))?;
    let fs = O2Fuse::new(mounted, opts);
    let unmount_failed = fs.unmount_failed();
    let (session, _) = o2fs::fuse::kernel_mount::session(fs, dir, &fuse_config(&source.name(), opts))
        .with_context(|| format!("mounting on {}", dir.display()))?;
    ready.done();
    let served = session_result(session.run(), &unmount_failed);
    // After the clean unmount (the session's end ran it): stop beating, clear our sector.
    drop(heartbeat);
    served
}

/// A cluster mount: join the cluster (disk heartbeat on the volume, network mesh, DLM), then
/// mount under the volume's metadata lock taken exclusive, recovering the slots of nodes that
/// are not alive; serve until unmounted or fenced (then every request fails with EIO and
/// nothing more is written).
///
/// On the mirror (`-r`), this node's mirror starts first and the mount waits for the peer as
/// `o2fs mirror up` does (wfc-timeout); everything, the disk heartbeat included, then goes
/// through it, and the admin socket answers the mirror's requests too. The mirror stops after
/// the FUSE session ended (the clean unmount has flushed by then).
fn serve_cluster(
    a: &MountArgs,
    conf: &Path,
    source: Source,
    dir: &Path,
    opts: &MountOptions,
    mut ready: cli::daemon::Ready,
) -> Result<()> {
    use o2fs::fs::lock::{ClusterLocks, LockMode, LockResource};
    let node = a.node.as_deref().context("a cluster mount needs --node NAME")?;
    if opts.read_only {
        bail!("read-only cluster mounts are not supported yet");
    }
    let name = source.name();
    let (raw, mirror): (Arc<dyn o2fs::dev::BlockDevice>, _) = match &source {
        Source::Image(image) => {
            let file = FileDevice::open(image, true).with_context(|| format!("opening {}", image.display()))?;
            (Arc::new(file), None)
        }
        Source::Mirror { res, peer, .. } => {
            let mirror = cli::mirror::start(res, node, &a.join.timing)?;
            let reached = mirror.wait_for_peer(res).map_err(|why| {
                anyhow::anyhow!("resource {}: the handshake with the peer was refused: {why}", res.name)
            })?;
            if !reached {
                // Under fencing a node that never met its peer may hold outdated data: it does
                // not go on alone (DRBD would have outdated it through the fence-peer handler).
                bail!(
                    "resource {}: the peer did not connect within the wfc-timeout; this node has not seen it since \
                     it started, so its replica may be outdated: start the peer first",
                    res.name
                );
            }
            (Arc::new(mirror.device()), Some((mirror, *peer)))
        }
    };
    let fence = Arc::new(o2fs::dev::FenceableDevice::new(raw.clone()));
    let dev: Arc<dyn o2fs::dev::BlockDevice> = fence.clone();
    let vol = o2fs::fs::Volume::open(dev.clone()).with_context(|| format!("reading {name}"))?;
    if vol.sb().features.has_incompat(o2fs::format::features::INCOMPAT_LOCAL_MOUNT) {
        bail!("{} is a local volume (mkfs -M local): it cannot be mounted by a cluster", name);
    }
    check_cluster_names(vol.sb(), &name, conf)?;
    let locks = o2fs::fs::dlm_locks::DlmLocks::new(&vol.geo);
    drop(vol);
    // The heartbeat writes beside the fence: fencing halts it separately, without a last write.
    let heartbeat = cli::cluster::disk_heartbeat(raw, mirror.is_none())?;
    let stack = cli::cluster::Stack::start(
        conf,
        node,
        &a.join,
        Some(heartbeat),
        locks.recovery_hook(),
        Some(locks.downconvert_hook()),
    )?;
    locks.bind(stack.svc.clone());
    let mirror_to_fence = mirror.as_ref().map(|(m, _)| m.clone());
    stack.on_fence(move || {
        fence.fence();
        if let Some(m) = mirror_to_fence {
            m.fence();
        }
    });
    if let Some((m, peer)) = &mirror {
        // A mirror that lost its peer freezes until the cluster says the peer is out (or its
        // link returns first: the frozen writes are sent again).
        let (m, peer) = (m.clone(), *peer);
        stack.on_membership(move |members| m.peer_in_cluster(members.contains(&peer)));
    }
    stack.wait_member(std::time::Duration::from_secs(120))?;
    locks.acquire(LockResource::Super, LockMode::Ex)?;
    let cfg = MountConfig {
        cache_bytes: opts.cache_bytes,
        local_alloc_bytes: opts.localalloc_mb.map(|mb| (mb as u64) << 20),
        node: stack.number as u32,
        live_nodes: Some(stack.members()),
        locks: locks.clone(),
        ..Default::default()
    };
    let mounted = mount(dev, &cfg);
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => {
            locks.release(LockResource::Super, LockMode::Ex);
            return Err(e).with_context(|| format!("mounting {name}"));
        }
    };
    let fs = O2Fuse::new_clustered(mounted, opts, locks.clone());
    let unmount_failed = fs.unmount_failed();
    let kcache = fs.kernel_cache();
    locks.release(LockResource::Super, LockMode::Ex);
    fs.reap_orphans();
    let admin_mirror = mirror.as_ref().map(|(m, _)| m.clone());
    let socket = a.socket.clone().unwrap_or_else(|| o2fs::net::admin::default_socket(node));
    stack.serve_admin(&socket, admin_mirror, Some(kcache.clone()))?;
    let (session, notify) = o2fs::fuse::kernel_mount::session(fs, dir, &fuse_config(&name, opts))
        .with_context(|| format!("mounting on {}", dir.display()))?;
    kcache.bind(session.notifier(), notify);
    ready.done();
    let served = session_result(session.run(), &unmount_failed);
    // After the clean unmount: leave the cluster.
    stack.leave();
    // Then the mirror, once the peer no longer writes through it (a peer still mounted goes on
    // replicating here); its clean stop saves the bitmap.
    if let Some((m, _)) = mirror {
        m.linger_while_peer_primary();
    }
    served
}

/// A FUSE session's outcome: an error if serving failed or the unmount at its end did.
fn session_result(run: std::io::Result<()>, unmount_failed: &std::sync::atomic::AtomicBool) -> Result<()> {
    run.context("serving FUSE requests")?;
    if unmount_failed.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("the unmount failed (its error is logged above): the volume was not left clean");
    }
    Ok(())
}

/// A volume made for a named cluster (mkfs `--cluster-stack=o2cb --cluster-name=NAME`, stored in
/// the superblock's cluster info) is mounted only by that cluster, as o2cb refuses a volume whose
/// cluster name is not the running cluster's.
fn check_cluster_names(sb: &o2fs::format::superblock::SuperBlock, volume: &str, conf: &Path) -> Result<()> {
    let (stack, cluster) = (sb.cluster_stack_str(), sb.cluster_name_str());
    if !stack.is_empty() && stack != "o2cb" {
        bail!("{volume} was made for the {stack:?} cluster stack; o2fs speaks o2cb");
    }
    let cfg = o2fs::cluster::config::load(conf).context("reading the cluster configuration")?;
    if !cluster.is_empty() && cluster != cfg.name {
        bail!(
            "{volume} belongs to cluster {cluster:?} (its superblock says so), but {} describes cluster {:?}",
            conf.display(),
            cfg.name
        );
    }
    Ok(())
}

/// The FUSE session's options for a mount.
fn fuse_config(fsname: &str, opts: &MountOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options =
        vec![fuser::MountOption::FSName(fsname.to_string()), fuser::MountOption::Subtype("o2fs".into())];
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
    config
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
