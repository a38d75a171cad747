//! The cluster-lock seam served by the DLM (a cluster mount): [`ClusterLocks`] over this node's
//! [`LockService`]. Resource names follow OCFS2's lock names: a type letter, then the block
//! number and generation in hex. An inode's locks carry a mastery key, the chunk of the volume
//! its block lies in (one suballocator group's worth of blocks, [`Geometry::lock_chunk_blocks`]):
//! every inode of a chunk has its locks mastered by one node, so a node that places its inode
//! groups in chunks it masters (`is_local`) creates inodes whose locks cost no message, as
//! OCFS2 masters a new inode's lock locally. Open locks are direct DLM locks outside the lock
//! cache ([`OpenLocks`]); every other lock goes through the cache.

use super::error::{FsError, Result};
use super::geometry::Geometry;
use super::lock::{ClusterLocks, DownconvertFn, LockMode, LockResource, RecoveryFn};
use super::open_locks::{refused, OpenLocks};
use crate::dlm::service::{DownconvertHook, LockGuard, LockService, RecoveryHook, ServiceError};
use crate::dlm::{Mode, ResName};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

#[derive(Default)]
struct Names {
    names: HashMap<LockResource, ResName>,
    resources: HashMap<ResName, LockResource>,
}

impl Names {
    fn of(&mut self, res: LockResource, chunk_blocks: u64) -> ResName {
        if let Some(n) = self.names.get(&res) {
            return n.clone();
        }
        let n = DlmLocks::name(res, chunk_blocks);
        self.names.insert(res, n.clone());
        self.resources.insert(n.clone(), res);
        n
    }
}

/// How long this node keeps a lock it was granted up before yielding it to a blocked peer (the
/// lock cache's minimum hold time): two nodes working in one directory then take turns of a
/// batch of requests each, instead of paying a transfer — a write-back of the yielding node's
/// journal — per request. A peer waits that much longer at most (and for the requests then
/// running here).
const MIN_HOLD: std::time::Duration = std::time::Duration::from_millis(20);

/// Created before the lock service (whose hooks call into it), then bound to it.
pub struct DlmLocks {
    /// Blocks per mastery chunk: the same on every node (it follows the volume's geometry).
    chunk_blocks: u64,
    svc: OnceLock<Arc<LockService>>,
    /// Guards of the locks held, per resource and mode (released one per `release`).
    held: Mutex<HashMap<(LockResource, LockMode), Vec<LockGuard>>>,
    /// The DLM name of each resource used so far, and back (for downconvert callbacks):
    /// every request looks its name up instead of formatting it anew.
    names: Mutex<Names>,
    downconvert: OnceLock<DownconvertFn>,
    recovery: OnceLock<RecoveryFn>,
    /// Open locks, outside the lock cache.
    open: OpenLocks,
}

impl DlmLocks {
    /// The locks of a volume of geometry `geo`.
    pub fn new(geo: &Geometry) -> Arc<DlmLocks> {
        Arc::new(DlmLocks {
            chunk_blocks: geo.lock_chunk_blocks(),
            svc: OnceLock::new(),
            held: Mutex::default(),
            names: Mutex::default(),
            downconvert: OnceLock::new(),
            recovery: OnceLock::new(),
            open: OpenLocks::default(),
        })
    }

    pub fn bind(&self, svc: Arc<LockService>) {
        svc.set_min_hold(MIN_HOLD);
        let _ = self.svc.set(svc);
    }

    /// The hook the lock service runs before downconverting a cached lock.
    pub fn downconvert_hook(self: &Arc<Self>) -> DownconvertHook {
        let this = self.clone();
        Arc::new(move |name: &ResName, mode: Mode| {
            let res = this.names.lock().resources.get(name).copied();
            if let (Some(res), Some(f)) = (res, this.downconvert.get()) {
                f(res, if mode == Mode::Nl { LockMode::Nl } else { LockMode::Pr });
            }
            if let (Some(LockResource::InodeMeta { blkno }), Mode::Nl) = (res, mode) {
                this.open.drop_idle(blkno);
            }
        })
    }

    /// The hook the lock service runs when this node must recover a dead one.
    pub fn recovery_hook(self: &Arc<Self>) -> RecoveryHook {
        let this = self.clone();
        Arc::new(move |dead| match this.recovery.get() {
            Some(f) => f(dead as u32),
            None => tracing::warn!(dead, "node died before the filesystem could recover it; the next mount will"),
        })
    }

    fn name(res: LockResource, chunk_blocks: u64) -> ResName {
        let (kind, blkno, extra, inode) = match res {
            LockResource::Super => ('S', 0, 0, false),
            LockResource::InodeMeta { blkno } => ('M', blkno, 0, true),
            LockResource::InodeRw { blkno } => ('W', blkno, 0, true),
            LockResource::InodeOpen { blkno } => ('O', blkno, 0, true),
            LockResource::Rename => ('R', 0, 0, false),
            LockResource::System { blkno } => ('M', blkno, 1, false),
            LockResource::Journal { slot } => ('J', slot as u64, 0, false),
            LockResource::Flock { blkno } => ('F', blkno, 0, true),
        };
        let name = ResName::ocfs2(kind, blkno, extra);
        match inode {
            true => name.keyed(blkno / chunk_blocks.max(1)),
            false => name,
        }
    }

    fn service(&self) -> Result<&Arc<LockService>> {
        self.svc.get().ok_or(FsError::Refused("the cluster lock service is not running".into()))
    }

    fn hold(&self, res: LockResource, mode: LockMode, guard: LockGuard) {
        self.held.lock().entry((res, mode)).or_default().push(guard);
    }

    /// Blocks until held, or with `try_only` until held or found in use elsewhere (false: see
    /// `ClusterLocks::try_acquire`); not from the lock service's own runtime threads.
    fn take(&self, res: LockResource, mode: LockMode, try_only: bool) -> Result<bool> {
        let svc = self.service()?;
        let Some(dlm_mode) = dlm_mode(mode) else { return Ok(true) };
        let name = self.names.lock().of(res, self.chunk_blocks);
        if let LockResource::InodeOpen { blkno } = res {
            return self.open.take(svc, &name, blkno, dlm_mode, try_only);
        }
        let taken = if try_only { svc.try_lock_blocking(&name, dlm_mode) } else { svc.lock_blocking(&name, dlm_mode) };
        match taken {
            Ok(g) => {
                self.hold(res, mode, g);
                Ok(true)
            }
            Err(ServiceError::HeldElsewhere) => Ok(false),
            Err(e) => Err(refused(e, &name)),
        }
    }
}

/// The DLM mode of a lock mode (None for NL, which needs no lock).
fn dlm_mode(mode: LockMode) -> Option<Mode> {
    match mode {
        LockMode::Nl => None,
        LockMode::Pr => Some(Mode::Pr),
        LockMode::Ex => Some(Mode::Ex),
    }
}

impl ClusterLocks for DlmLocks {
    fn acquire(&self, res: LockResource, mode: LockMode) -> Result<()> {
        self.take(res, mode, false).map(drop)
    }

    fn try_acquire(&self, res: LockResource, mode: LockMode) -> Result<bool> {
        self.take(res, mode, true)
    }

    fn take_now(&self, res: LockResource, mode: LockMode) -> bool {
        let (Ok(svc), Some(dlm_mode)) = (self.service(), dlm_mode(mode)) else { return mode == LockMode::Nl };
        let name = self.names.lock().of(res, self.chunk_blocks);
        if let LockResource::InodeOpen { blkno } = res {
            return self.open.take_now(svc, &name, blkno, dlm_mode);
        }
        let Some(g) = svc.try_lock_now(&name, dlm_mode) else { return false };
        self.hold(res, mode, g);
        true
    }

    fn cached_exclusive(&self, res: LockResource) -> bool {
        let name = self.names.lock().of(res, self.chunk_blocks);
        self.service().is_ok_and(|svc| svc.cached_exclusive(&name))
    }

    fn is_local(&self, res: LockResource) -> bool {
        // Not remembered: placing an inode group asks about many candidate chunks.
        self.service().is_ok_and(|svc| svc.masters(&DlmLocks::name(res, self.chunk_blocks)))
    }

    fn release(&self, res: LockResource, mode: LockMode) {
        if let (LockResource::InodeOpen { blkno }, Some(dlm_mode)) = (res, dlm_mode(mode)) {
            return self.open.release(blkno, dlm_mode);
        }
        let guard = {
            let mut held = self.held.lock();
            let Some(guards) = held.get_mut(&(res, mode)) else { return };
            let guard = guards.pop();
            // One entry per lock held now, not per inode ever locked.
            if guards.is_empty() {
                held.remove(&(res, mode));
            }
            guard
        };
        // Dropped outside `held`: releasing may run a downconvert callback.
        drop(guard);
    }

    fn on_downconvert(&self, f: DownconvertFn) {
        let _ = self.downconvert.set(f);
    }

    fn on_recovery(&self, f: RecoveryFn) {
        let _ = self.recovery.set(f);
    }
}
