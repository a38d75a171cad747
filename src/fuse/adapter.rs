//! The `fuser::Filesystem` implementation. One mutex serialises the core (single-node mounts);
//! requests add their metadata to the running journal transaction, which a commit thread makes
//! durable and checkpoints every `commit=` seconds (fsync commits at once).
//! FUSE inode 1 is the root directory; every other FUSE inode
//! number is the OCFS2 inode's block number.

use super::attr::{attr, kind_of_dirent};
use super::flock::Flocks;
use super::kcache::{KernelCache, Req};
use super::options::{ErrorsBehavior, MountOptions};
use super::orphans::{reap_if_unused, reap_orphans};
use crate::format::inode::{Inode, S_IFMT, S_IFREG};
use crate::fs::core::Time;
use crate::fs::error::FsError;
use crate::fs::file::Seek;
use crate::fs::lock::{ClusterLocks, LockMode, LockResource};
use crate::fs::lockset::{run_locked, LockSet};
use crate::fs::mount::Mounted;
use crate::fs::namei::{Caller, RenameFlags as CoreRename, SetAttr};
use fuser::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FALLOC_FL_KEEP_SIZE: i32 = 1;
const FALLOC_FL_PUNCH_HOLE: i32 = 2;
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;
const O_DIRECT: i32 = 0o40000;
const O_APPEND: i32 = 0o2000;

pub(super) struct State {
    mounted: Option<Mounted>,
    /// Open handles per inode (on a single-node mount an unlinked inode is orphaned only while
    /// this is non-zero; a cluster mount orphans it always: another node may have it open).
    open: HashMap<u64, u32>,
}

pub struct O2Fuse {
    state: Arc<Mutex<State>>,
    /// Set on a cluster mount: the locks every request takes first.
    cluster: Option<Arc<dyn ClusterLocks>>,
    /// Cluster-wide flock(2), on a cluster mount (a single-node mount leaves flock to the kernel).
    flocks: Option<Arc<Flocks>>,
    /// The lock of this node's inode allocator, which creates take (and removals, which
    /// mostly free inodes this node made).
    inode_alloc: LockResource,
    /// The lock of this node's local-alloc window, which every change may allocate from.
    local_alloc: LockResource,
    /// What the kernel may cache of the replies, and its invalidation when a lock goes.
    kcache: Arc<KernelCache>,
    root: u64,
    cluster_size: u64,
    read_only: AtomicBool,
    errors: ErrorsBehavior,
    stop: Arc<AtomicBool>,
    /// Set when the unmount at the session's end failed (the error is logged).
    unmount_failed: Arc<AtomicBool>,
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn to_time(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time { sec: d.as_secs(), nsec: d.subsec_nanos() },
        // Before 1970. fuser 0.18 turns the kernel's timespec {sec < 0, nsec} into
        // EPOCH - (|sec| s + nsec ns) (its time.rs notes the TODO), so the distance before the
        // epoch carries the kernel's |sec| and nsec unchanged: take them back as they were.
        Err(e) => {
            let d = e.duration();
            Time { sec: (-(d.as_secs() as i64)) as u64, nsec: d.subsec_nanos() }
        }
    }
}

fn time_or_now(t: Option<TimeOrNow>, now: Time) -> Option<Time> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(s) => to_time(s),
        TimeOrNow::Now => now,
    })
}

impl O2Fuse {
    pub fn new(mounted: Mounted, opts: &MountOptions) -> Self {
        Self::build(mounted, opts, None)
    }

    /// A cluster mount: every request runs under the cluster locks of the inodes and system
    /// files it touches, taken through `locks` (PR to read, EX to change; see `with`). Before a
    /// lock is given up this node's changes are checkpointed in place and, when it loses read
    /// rights, what it cached under the lock is dropped; a dead node's slot is recovered here
    /// when the cluster picks this node to do it.
    pub fn new_clustered(mounted: Mounted, opts: &MountOptions, locks: Arc<dyn ClusterLocks>) -> Self {
        Self::build(mounted, opts, Some(locks))
    }

    fn build(mounted: Mounted, opts: &MountOptions, cluster: Option<Arc<dyn ClusterLocks>>) -> Self {
        let root = mounted.core.root;
        let slot = mounted.core.sys.slot as usize;
        let inode_alloc = LockResource::System { blkno: mounted.core.sys.inode_alloc[slot] };
        let local_alloc = LockResource::System { blkno: mounted.core.sys.local_alloc[slot] };
        let cluster_size = mounted.core.cs();
        let read_only = mounted.read_only;
        let state = Arc::new(Mutex::new(State { mounted: Some(mounted), open: HashMap::new() }));
        let kcache = Arc::new(KernelCache::new(cluster.is_some(), root));
        if let Some(locks) = &cluster {
            register_cluster_callbacks(locks, &state, &kcache);
        }
        let stop = Arc::new(AtomicBool::new(false));
        spawn_commit_thread(state.clone(), stop.clone(), opts.commit);
        O2Fuse {
            state,
            flocks: cluster.clone().map(Flocks::new),
            cluster,
            inode_alloc,
            local_alloc,
            kcache,
            root,
            cluster_size,
            read_only: AtomicBool::new(read_only),
            errors: opts.errors.clone(),
            stop,
            unmount_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Becomes true if the unmount at the end of the session fails: the daemon then exits with
    /// an error instead of reporting a clean unmount.
    pub fn unmount_failed(&self) -> Arc<AtomicBool> {
        self.unmount_failed.clone()
    }

    /// The kernel caches of this mount: bound to the session once mounted, their counts shown
    /// by `o2fs status`.
    pub fn kernel_cache(&self) -> Arc<KernelCache> {
        self.kcache.clone()
    }

    fn blk(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            self.root
        } else {
            ino.0
        }
    }
    fn ino(&self, blkno: u64) -> u64 {
        if blkno == self.root {
            1
        } else {
            blkno
        }
    }

    /// Runs `f` on the mounted core; commits its metadata; maps errors (a corruption may turn
    /// the mount read-only, as errors=remount-ro says). On a cluster mount `f` runs under a set
    /// of cluster locks taken outside the core's mutex: first the locks of `seeds` (EX for a
    /// request that changes them, with this node's local-alloc window, else PR), then, each time `f` meets a block whose lock the
    /// set lacks, `f` is undone and run again with the grown set (`lockset::run_locked`).
    fn with<T>(
        &self,
        mutating: bool,
        seeds: &[LockResource],
        f: impl FnMut(&mut Mounted, &mut HashMap<u64, u32>) -> crate::fs::Result<T>,
    ) -> Result<T, Errno> {
        self.with_then(mutating, seeds, f, Ok)
    }

    /// [`with`](Self::with), then `then` on what `f` returned, with the core released but the
    /// cluster locks still held (a file's data is read there).
    fn with_then<T, U>(
        &self,
        mutating: bool,
        seeds: &[LockResource],
        f: impl FnMut(&mut Mounted, &mut HashMap<u64, u32>) -> crate::fs::Result<T>,
        then: impl FnMut(T) -> crate::fs::Result<U>,
    ) -> Result<U, Errno> {
        if mutating && self.read_only.load(Ordering::Relaxed) {
            return Err(Errno::from_i32(crate::fs::error::libc_errno::EROFS));
        }
        let mode = if mutating { LockMode::Ex } else { LockMode::Pr };
        let mut set = LockSet::default();
        for &res in seeds {
            set.want(res, mode);
        }
        if mutating {
            set.want(self.local_alloc, LockMode::Ex);
        }
        request_then(self.cluster.as_deref(), &self.state, set, f, then).map_err(|e| self.failed(e))
    }

    /// Frees `ino`, which a request here orphaned or closed last, if no node has it open.
    fn reap(&self, ino: u64) {
        if let Err(e) = reap_if_unused(self.cluster.as_deref(), &self.state, ino) {
            tracing::warn!(ino, "freeing an orphan: {}", e);
            self.failed(e);
        }
    }

    /// Frees the orphans of every slot that no node has open: a cluster mount calls this once
    /// mounted (the mount left the orphans of the slots it finished).
    pub fn reap_orphans(&self) {
        if let Err(e) = reap_orphans(self.cluster.as_deref(), &self.state) {
            tracing::warn!("freeing orphans: {e}");
        }
    }

    /// One more open handle of `blk` (of `generation`, if given): the inode's open lock first
    /// (PR, holding no other lock: a node freeing the inode holds it at EX meanwhile), then
    /// the inode must still be there.
    fn open_inode(&self, blk: u64, generation: Option<u32>) -> Result<Inode, Errno> {
        let open_lock = LockResource::InodeOpen { blkno: blk };
        if let Some(l) = &self.cluster {
            l.acquire(open_lock, LockMode::Pr).map_err(|e| self.failed(e))?;
        }
        let opened = self.with(false, &[meta(blk)], |m, open| {
            let inode = m.core.read_inode(blk)?;
            if generation.is_some_and(|g| g != inode.generation) {
                return Err(FsError::NotFound);
            }
            *open.entry(blk).or_insert(0) += 1;
            Ok(inode)
        });
        if let (Err(_), Some(l)) = (&opened, &self.cluster) {
            l.release(open_lock, LockMode::Pr);
        }
        opened
    }

    /// Gives back a handle `create` counted (and its open lock) when its reply is an error.
    fn close_inode(&self, blk: u64) {
        if let Some(l) = &self.cluster {
            l.release(LockResource::InodeOpen { blkno: blk }, LockMode::Pr);
        }
        close_handle(&mut self.state.lock().open, blk);
    }

    /// Maps a failed request's error; a corruption may turn the mount read-only
    /// (errors=remount-ro) or stop the daemon (errors=panic).
    fn failed(&self, e: FsError) -> Errno {
        if e.is_corruption() {
            tracing::error!("{e}");
            match self.errors {
                ErrorsBehavior::RemountRo => {
                    if !self.read_only.swap(true, Ordering::Relaxed) {
                        tracing::error!("errors=remount-ro: the mount is now read-only");
                        if let Some(m) = self.state.lock().mounted.as_mut() {
                            m.core.cache.set_read_only(true);
                        }
                    }
                }
                ErrorsBehavior::Panic => {
                    tracing::error!("errors=panic: stopping the daemon");
                    std::process::abort();
                }
                ErrorsBehavior::Continue => {}
            }
        }
        errno(&e)
    }

    /// O_DIRECT opens bypass the page cache. Other opens use it, on a cluster mount too (the
    /// kernel drops a file's pages when its mtime or size changed: see `fuse::kcache`).
    fn open_flags(&self, flags: i32) -> FopenFlags {
        if flags & O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    fn entry_attr(&self, inode: &Inode) -> FileAttr {
        attr(self.ino(inode.blkno), inode, self.cluster_size)
    }

    /// Replies the entry of `inode`, whose name the kernel may keep for `name_ttl`
    /// (`KernelCache::name_ttl`); `looked_up`: a LOOKUP, else a reply that made or linked it.
    fn reply_entry(&self, reply: ReplyEntry, name_ttl: Duration, inode: &Inode, looked_up: bool) {
        let ino = self.ino(inode.blkno);
        let attr_ttl = if looked_up { self.kcache.looked_up(ino) } else { self.kcache.handed_out(ino) };
        reply.entry_with_ttls(&attr_ttl, &name_ttl, &self.entry_attr(inode), Generation(inode.generation as u64));
    }
}

/// Runs `f` as one request on the core: on a cluster mount under the cluster locks of `set`,
/// grown and run again while `f` asks for more (`lockset::run_locked`); commits its metadata.
pub(super) fn request<T>(
    locks: Option<&dyn ClusterLocks>,
    state: &Mutex<State>,
    set: LockSet,
    f: impl FnMut(&mut Mounted, &mut HashMap<u64, u32>) -> crate::fs::Result<T>,
) -> crate::fs::Result<T> {
    request_then(locks, state, set, f, Ok)
}

/// [`request`], then `then` on its result once the core is released, the cluster locks still
/// held.
fn request_then<T, U>(
    locks: Option<&dyn ClusterLocks>,
    state: &Mutex<State>,
    mut set: LockSet,
    mut f: impl FnMut(&mut Mounted, &mut HashMap<u64, u32>) -> crate::fs::Result<T>,
    mut then: impl FnMut(T) -> crate::fs::Result<U>,
) -> crate::fs::Result<U> {
    match locks {
        None => attempt(state, &mut LockSet::default(), &mut f).and_then(then),
        Some(locks) => run_locked(locks, &mut set, |held| attempt(state, held, &mut f).and_then(&mut then)),
    }
}

/// One run of a request on the core under the cluster locks `held`, undone if it fails; the
/// locks it took on its way join `held`.
fn attempt<T>(
    state: &Mutex<State>,
    held: &mut LockSet,
    f: &mut impl FnMut(&mut Mounted, &mut HashMap<u64, u32>) -> crate::fs::Result<T>,
) -> crate::fs::Result<T> {
    let mut st = state.lock();
    let State { mounted, open } = &mut *st;
    let Some(m) = mounted.as_mut() else { return Err(FsError::Dev(crate::dev::DevError::Fenced)) };
    // Operations join the running transaction; it commits every `commit=` seconds, at
    // fsync, when it grows large, or at once with a checkpoint when freed clusters held
    // journaled metadata (see Core::checkpoint_wanted).
    m.core.begin_op(held);
    // A bug must not take the daemon down: a panicking operation fails with EIO, its
    // changes are undone, and the mount turns read-only since in-memory state is suspect.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *m, &mut *open))).unwrap_or_else(|p| {
        let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Err(FsError::Corrupt { blkno: 0, what: format!("internal error: {}", what.unwrap_or_default()) })
    });
    // A failed operation leaves nothing behind: its metadata changes are undone (the
    // clusters it allocated are back in the bitmap with them).
    if r.is_err() {
        m.core.abort_op();
    }
    let r = r.and_then(|v| {
        if m.core.checkpoint_wanted || m.core.cache.checkpoint_due() {
            m.core.checkpoint_wanted = false;
            m.checkpoint()?;
        } else if m.core.cache.transaction_full() {
            m.core.cache.commit()?;
        }
        Ok(v)
    });
    held.adopt(m.core.end_op());
    r
}

/// The cluster mount's side of its locks: before a lock on an inode or system file goes down,
/// this node's changes go in place (others read them there next) and, when read rights go
/// too, what it cached of that inode goes; a dead node's slot is recovered here when the cluster
/// picks this node to do it.
fn register_cluster_callbacks(locks: &Arc<dyn ClusterLocks>, state: &Arc<Mutex<State>>, kcache: &Arc<KernelCache>) {
    let (st, kcache) = (state.clone(), kcache.clone());
    locks.on_downconvert(Box::new(move |res, mode| {
        // The super lock covers only the slot map, which is never cached.
        let (LockResource::InodeMeta { blkno } | LockResource::System { blkno }) = res else { return };
        tracing::trace!(?res, ?mode, "cluster lock wanted elsewhere");
        if let Some(m) = st.lock().mounted.as_mut() {
            if let Err(e) = m.yield_lock(blkno, mode != LockMode::Nl) {
                tracing::error!("checkpoint before giving up {res:?}: {e}");
            }
        }
        // The kernel's copies go after ours (a request refilling them meanwhile would read
        // ours), outside the core's mutex, while local requests wait for the lock.
        if let (LockResource::InodeMeta { blkno }, LockMode::Nl) = (res, mode) {
            kcache.lost(blkno);
        }
    }));
    let (st, weak) = (state.clone(), Arc::downgrade(locks));
    locks.on_recovery(Box::new(move |node| {
        let Some(locks) = weak.upgrade() else { return };
        // The DLM keeps the dead node's locks from everyone until this returns: replay its
        // journal now, under the super lock...
        if let Err(e) = locks.acquire(LockResource::Super, LockMode::Ex) {
            tracing::error!("recovering node {node}: {e}");
            return;
        }
        let replayed = st.lock().mounted.as_mut().map(|m| m.replay_node(node));
        locks.release(LockResource::Super, LockMode::Ex);
        let slot = match replayed {
            Some(Ok(Some(slot))) => slot,
            Some(Err(e)) => return tracing::error!("recovering node {node}: {e}"),
            _ => return,
        };
        // ...and finish its slot as an ordinary request once the cluster runs again: it needs
        // the locks of the inodes and allocators it touches, which may wait for others.
        // Then the orphans nobody has open any more: the dead node's open locks are gone.
        let st = st.clone();
        std::thread::spawn(move || {
            let finished = request(Some(&*locks), &st, LockSet::default(), |m, _| m.finish_recovery(slot))
                .and_then(|()| reap_orphans(Some(&*locks), &st));
            match finished {
                Ok(()) => tracing::info!("slot {slot} recovered"),
                Err(e) => tracing::error!("recovering node {node}: {e}"),
            }
        });
    }));
}

/// Makes metadata durable every `interval` (the `commit=` option), and hands the memory freed
/// meanwhile back to the system every second.
fn spawn_commit_thread(state: Arc<Mutex<State>>, stop: Arc<AtomicBool>, interval: Duration) {
    const TRIM_EVERY: Duration = Duration::from_secs(1);
    std::thread::spawn(move || {
        let step = Duration::from_millis(100);
        let (mut waited, mut untrimmed) = (Duration::ZERO, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            waited += step;
            untrimmed += step;
            if waited >= interval {
                waited = Duration::ZERO;
                if let Some(m) = state.lock().mounted.as_mut().filter(|m| !m.read_only) {
                    if let Err(e) = m.checkpoint() {
                        tracing::error!("periodic commit failed: {e}");
                    }
                }
            }
            // Transactions, checkpoints and the cache's turnover free thousands of small
            // buffers; without a trim the daemon keeps the allocator's high-water mark (tens of
            // MiB above the cache within one commit interval of a busy workload).
            if untrimmed >= TRIM_EVERY {
                untrimmed = Duration::ZERO;
                // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no
                // memory in use and is safe to call from any thread.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        }
    });
}

/// One open handle of `blk` less in `open`; true if it was the last.
fn close_handle(open: &mut HashMap<u64, u32>, blk: u64) -> bool {
    match open.get_mut(&blk) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        _ => open.remove(&blk).is_some(),
    }
}

/// The lock of inode `blkno`'s metadata.
pub(super) fn meta(blkno: u64) -> LockResource {
    LockResource::InodeMeta { blkno }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

impl Filesystem for O2Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.cluster.is_some() {
            // flock requests come to us; fcntl locks stay with the kernel (node-local).
            let _ = config.add_capabilities(InitFlags::FUSE_FLOCK_LOCKS);
            // The kernel checks a file's attributes before each read and drops its pages when
            // another node changed it (fuse::kcache).
            config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA).map_err(|_| {
                std::io::Error::other("the kernel cannot check cached file data (FUSE_AUTO_INVAL_DATA)")
            })?;
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unmounted: the kernel caches nothing of ours any more.
        self.kcache.unbind();
        if let Some(f) = &self.flocks {
            f.unlock_all();
        }
        // The local-alloc window goes back as an ordinary request (a cluster mount takes the
        // window's and the global bitmap's locks); the rest changes the slot map, under the
        // super lock on a cluster mount.
        if let Err(e) = self.with(false, &[], |m, _| m.close_window()) {
            tracing::error!("unmount: closing the local-alloc window: {e:?}");
        }
        let locked = self.cluster.as_ref().map(|l| (l.acquire(LockResource::Super, LockMode::Ex), l));
        if let Some((Err(e), _)) = &locked {
            tracing::error!("unmount: {e}");
            self.unmount_failed.store(true, Ordering::SeqCst);
        }
        if let Some(m) = self.state.lock().mounted.take() {
            if let Err(e) = m.unmount() {
                tracing::error!("unmount: {e}");
                self.unmount_failed.store(true, Ordering::SeqCst);
            }
        }
        if let Some((Ok(()), l)) = locked {
            l.release(LockResource::Super, LockMode::Ex);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.kcache.counts.count(Req::Lookup);
        let name_ttl = self.kcache.name_ttl(parent.0);
        let parent = self.blk(parent);
        match self.with(false, &[meta(parent)], |m, _| m.core.lookup(parent, name.as_bytes())) {
            Ok(inode) => self.reply_entry(reply, name_ttl, &inode, true),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.kcache.counts.count(Req::Forget);
        self.kcache.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.kcache.counts.count(Req::Getattr);
        let blk = self.blk(ino);
        match self.with(false, &[meta(blk)], |m, _| m.core.read_inode(blk)) {
            Ok(inode) => reply.attr(&self.kcache.attr_ttl(), &self.entry_attr(&inode)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.kcache.counts.count(Req::Setattr);
        let blk = self.blk(ino);
        let now = Time::now();
        let change = SetAttr {
            mode: mode.map(|m| m as u16),
            uid,
            gid,
            size,
            atime: time_or_now(atime, now),
            mtime: time_or_now(mtime, now),
            ctime: ctime.map(to_time),
        };
        match self.with(true, &[meta(blk)], |m, _| m.core.setattr(blk, change, now)) {
            Ok(inode) => {
                let mut attr = self.entry_attr(&inode);
                if inode.mode & S_IFMT == S_IFREG && self.kcache.take_unverified(ino.0) {
                    // The kernel takes a SETATTR reply's mtime without comparing it with its
                    // pages' (fuse::kcache): one it has not seen makes its next read compare
                    // the true mtime with it and drop the pages. The reply's TTL is 0, so no
                    // stat shows it.
                    let ns = Duration::from_nanos(1);
                    attr.mtime =
                        attr.mtime.checked_sub(ns).or_else(|| attr.mtime.checked_add(ns)).unwrap_or(attr.mtime);
                }
                reply.attr(&self.kcache.changed_ttl(), &attr)
            }
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.kcache.counts.count(Req::Readlink);
        let blk = self.blk(ino);
        match self.with(false, &[meta(blk)], |m, _| m.core.readlink(blk)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        self.kcache.counts.count(Req::Mknod);
        let name_ttl = self.kcache.name_ttl(parent.0);
        let parent = self.blk(parent);
        let who = caller(req);
        let mode = (mode & !umask & 0o7777) as u16 | (mode as u16 & S_IFMT);
        match self.with(true, &[meta(parent), self.inode_alloc], |m, _| {
            m.core.create(parent, name.as_bytes(), mode, rdev as u64, who, Time::now())
        }) {
            Ok(inode) => self.reply_entry(reply, name_ttl, &inode, false),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.kcache.counts.count(Req::Mkdir);
        let name_ttl = self.kcache.name_ttl(parent.0);
        let parent = self.blk(parent);
        let who = caller(req);
        let mode = crate::format::inode::S_IFDIR | (mode & !umask & 0o7777) as u16;
        match self.with(true, &[meta(parent), self.inode_alloc], |m, _| {
            m.core.create(parent, name.as_bytes(), mode, 0, who, Time::now())
        }) {
            Ok(inode) => self.reply_entry(reply, name_ttl, &inode, false),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.kcache.counts.count(Req::Unlink);
        let parent = self.blk(parent);
        // On a cluster mount the inode may be open on another node: it is orphaned, then freed
        // (before the reply, so that the space is back when unlink returns) if the try-lock on
        // its open lock says nobody has it open.
        let clustered = self.cluster.is_some();
        match self.with(true, &[meta(parent), self.inode_alloc], |m, open| {
            m.core.unlink(parent, name.as_bytes(), |i| clustered || open.contains_key(&i), Time::now())
        }) {
            Ok(orphaned) => {
                orphaned.into_iter().for_each(|ino| self.reap(ino));
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.kcache.counts.count(Req::Rmdir);
        let parent = self.blk(parent);
        match self
            .with(true, &[meta(parent), self.inode_alloc], |m, _| m.core.rmdir(parent, name.as_bytes(), Time::now()))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.kcache.counts.count(Req::Symlink);
        let name_ttl = self.kcache.name_ttl(parent.0);
        let parent = self.blk(parent);
        let who = caller(req);
        match self.with(true, &[meta(parent), self.inode_alloc], |m, _| {
            m.core.symlink(parent, link_name.as_bytes(), target.as_os_str().as_bytes(), who, Time::now())
        }) {
            Ok(inode) => self.reply_entry(reply, name_ttl, &inode, false),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.kcache.counts.count(Req::Rename);
        let (p, np) = (self.blk(parent), self.blk(newparent));
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::from_i32(crate::fs::error::libc_errno::EINVAL));
        }
        let f = CoreRename {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        let clustered = self.cluster.is_some();
        match self.with(true, &[meta(p), meta(np), self.inode_alloc], |m, open| {
            let is_open = |i| clustered || open.contains_key(&i);
            m.core.rename(p, name.as_bytes(), np, newname.as_bytes(), f, is_open, Time::now())
        }) {
            Ok(orphaned) => {
                orphaned.into_iter().for_each(|ino| self.reap(ino));
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.kcache.counts.count(Req::Link);
        let name_ttl = self.kcache.name_ttl(newparent.0);
        let (blk, np) = (self.blk(ino), self.blk(newparent));
        match self.with(true, &[meta(blk), meta(np)], |m, _| m.core.link(blk, np, newname.as_bytes(), Time::now())) {
            Ok(inode) => self.reply_entry(reply, name_ttl, &inode, false),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.kcache.counts.count(Req::Open);
        match self.open_inode(self.blk(ino), None) {
            Ok(_) => reply.opened(FileHandle(0), self.open_flags(flags.0)),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.kcache.counts.count(Req::Read);
        let blk = self.blk(ino);
        // The data is copied outside the core's mutex (crate::fs::read_gate) and replied
        // before the cluster lock is let go: the kernel's pages must hold it before another
        // node can change it (fuse::kcache).
        let planned = |m: &mut Mounted, _: &mut HashMap<u64, u32>| {
            let inode = m.core.read_inode(blk)?;
            m.core.read_plan(&inode, offset, size as u64)
        };
        let mut reply = Some(reply);
        let served = self.with_then(false, &[meta(blk)], planned, |plan| {
            let data = plan.run()?;
            if let Some(r) = reply.take() {
                r.data(&data);
            }
            Ok(())
        });
        if let (Err(e), Some(r)) = (served, reply) {
            r.error(e);
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.kcache.counts.count(Req::Write);
        let blk = self.blk(ino);
        // O_APPEND: the end of the file as the volume has it now, under the lock, rather than
        // the size the kernel knew (on a cluster mount another node may have appended since).
        let append = flags.0 & O_APPEND != 0;
        match self.with(true, &[meta(blk)], |m, _| {
            let mut inode = m.core.read_inode(blk)?;
            if inode.mode & S_IFMT != S_IFREG {
                return Err(FsError::Invalid("write to a non-regular file"));
            }
            let offset = if append { inode.size } else { offset };
            let written = m.core.file_write(&mut inode, offset, data, Time::now())?;
            m.core.write_inode(&inode)?;
            Ok(written)
        }) {
            Ok(written) => reply.written(written as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lo: LockOwner, reply: ReplyEmpty) {
        self.kcache.counts.count(Req::Flush);
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.kcache.counts.count(Req::Release);
        let blk = self.blk(ino);
        // The last close of a file description that flocked the file (FUSE_RELEASE_FLOCK_UNLOCK).
        if let (Some(f), Some(owner)) = (&self.flocks, lock_owner) {
            f.unlock(blk, owner.0);
        }
        // The open lock goes before the inode is looked at: an unlink from now on finds it
        // given up (see fs::open_locks), one before has orphaned it.
        if let Some(l) = &self.cluster {
            l.release(LockResource::InodeOpen { blkno: blk }, LockMode::Pr);
        }
        let orphan = self.with(false, &[meta(blk)], |m, open| Ok(close_handle(open, blk) && m.core.is_orphan(blk)?));
        match orphan {
            Ok(orphan) => {
                if orphan {
                    self.reap(blk);
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    /// Only flock(2) comes here (FUSE_FLOCK_LOCKS without FUSE_POSIX_LOCKS), on cluster mounts.
    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.kcache.counts.count(Req::Other);
        match &self.flocks {
            Some(f) => f.set(self.blk(ino), lock_owner.0, typ, sleep, reply),
            None => reply.error(Errno::ENOSYS),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.kcache.counts.count(Req::Fsync);
        match self.with(false, &[], |m, _| if m.read_only { Ok(()) } else { m.sync() }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.kcache.counts.count(Req::Readdir);
        let blk = self.blk(ino);
        match self.with(false, &[meta(blk)], |m, _| {
            let dir = m.core.read_inode(blk)?;
            m.core.dir_list(&dir, offset)
        }) {
            Ok(list) => {
                for e in list {
                    if reply.add(
                        INodeNo(self.ino(e.ino)),
                        e.cookie,
                        kind_of_dirent(e.file_type),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.kcache.counts.count(Req::Fsync);
        match self.with(false, &[], |m, _| if m.read_only { Ok(()) } else { m.sync() }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.kcache.counts.count(Req::Statfs);
        match self.with(false, &[], |m, _| m.core.statfs()) {
            Ok(s) => reply.statfs(
                s.blocks,
                s.free,
                s.free,
                s.files,
                s.free_files,
                self.cluster_size as u32,
                255,
                self.cluster_size as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    // Extended attributes are not supported (no xattr feature). ENOSYS, not EOPNOTSUPP: the
    // kernel then remembers it, answers EOPNOTSUPP itself and stops asking; otherwise every
    // write costs a round trip for `security.capability` (the kernel's check before clearing
    // setuid bits).
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.kcache.counts.count(Req::Xattr);
        reply.error(Errno::ENOSYS);
    }
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        self.kcache.counts.count(Req::Xattr);
        reply.error(Errno::ENOSYS);
    }
    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        self.kcache.counts.count(Req::Xattr);
        reply.error(Errno::ENOSYS);
    }
    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.kcache.counts.count(Req::Xattr);
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.kcache.counts.count(Req::Access);
        let blk = self.blk(ino);
        let (uid, gid) = (req.uid(), req.gid());
        match self.with(false, &[meta(blk)], |m, _| m.core.read_inode(blk)) {
            Ok(inode) => {
                let want = mask.bits() as u16 & 0o7;
                let bits = if uid == 0 {
                    // Root may do anything but execute a file nobody may execute.
                    if inode.mode & 0o111 != 0 || inode.is_dir() {
                        0o7
                    } else {
                        0o6
                    }
                } else if uid == inode.uid {
                    (inode.mode >> 6) & 7
                } else if gid == inode.gid {
                    (inode.mode >> 3) & 7
                } else {
                    inode.mode & 7
                };
                if want & !bits == 0 {
                    reply.ok()
                } else {
                    reply.error(Errno::from_i32(crate::fs::error::libc_errno::EACCES))
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.kcache.counts.count(Req::Create);
        let parent = self.blk(parent);
        let who = caller(req);
        let mode = S_IFREG | (mode & !umask & 0o7777) as u16;
        // Opened within the request that creates it when its open lock can be taken at once
        // (a lock mastered here, as placement makes a new inode's): nobody can have unlinked it
        // yet. Otherwise opened as any other file once created: another node may unlink and
        // free it before this one holds its open lock (then the generation differs or the inode
        // is gone).
        let mut opened = None;
        let created = self.with(true, &[meta(parent), self.inode_alloc], |m, open| {
            let inode = m.core.create(parent, name.as_bytes(), mode, 0, who, Time::now())?;
            let open_lock = LockResource::InodeOpen { blkno: inode.blkno };
            if self.cluster.as_ref().is_none_or(|l| l.take_now(open_lock, LockMode::Pr)) {
                *open.entry(inode.blkno).or_insert(0) += 1;
                opened = Some((inode.blkno, self.kcache.handed_out(self.ino(inode.blkno))));
            }
            Ok(inode)
        });
        let opened = match (created, opened) {
            (Ok(inode), Some((_, ttl))) => Ok((inode, ttl)),
            (Ok(inode), None) => self.open_inode(inode.blkno, Some(inode.generation)).map(|inode| {
                let ttl = self.kcache.handed_out(self.ino(inode.blkno));
                (inode, ttl)
            }),
            // The request failed after it opened the file (its commit did): no handle to close,
            // no entry handed out.
            (Err(e), Some((blk, _))) => {
                self.close_inode(blk);
                self.kcache.forget(self.ino(blk), 1);
                Err(e)
            }
            (Err(e), None) => Err(e),
        };
        match opened {
            Ok((inode, ttl)) => reply.created(
                &ttl,
                &self.entry_attr(&inode),
                Generation(inode.generation as u64),
                FileHandle(0),
                self.open_flags(flags),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.kcache.counts.count(Req::Other);
        let blk = self.blk(ino);
        if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0
            || (mode & FALLOC_FL_PUNCH_HOLE != 0 && mode & FALLOC_FL_KEEP_SIZE == 0)
        {
            return reply.error(Errno::from_i32(crate::fs::error::libc_errno::EOPNOTSUPP));
        }
        match self.with(true, &[meta(blk)], |m, _| {
            let mut inode = m.core.read_inode(blk)?;
            m.core.file_fallocate(
                &mut inode,
                offset,
                length,
                mode & FALLOC_FL_KEEP_SIZE != 0,
                mode & FALLOC_FL_PUNCH_HOLE != 0,
                Time::now(),
            )?;
            m.core.write_inode(&inode)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        self.kcache.counts.count(Req::Other);
        let blk = self.blk(ino);
        let what = match whence {
            SEEK_DATA => Seek::Data,
            SEEK_HOLE => Seek::Hole,
            _ => return reply.error(Errno::from_i32(crate::fs::error::libc_errno::EINVAL)),
        };
        match self.with(false, &[meta(blk)], |m, _| {
            let inode = m.core.read_inode(blk)?;
            m.core.file_seek(&inode, offset.max(0) as u64, what)
        }) {
            Ok(off) => reply.offset(off as i64),
            Err(e) => reply.error(e),
        }
    }
}
