//! The cluster-lock seam served by the DLM (a cluster mount): [`ClusterLocks`] over this node's
//! [`LockService`]. Resource names follow OCFS2's lock names: a type letter, then the block
//! number and generation in hex. Open locks are direct DLM locks outside the lock cache
//! ([`OpenLocks`]); every other lock goes through the cache.

use super::error::{FsError, Result};
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
    fn of(&mut self, res: LockResource) -> ResName {
        if let Some(n) = self.names.get(&res) {
            return n.clone();
        }
        let n = DlmLocks::name(res);
        self.names.insert(res, n.clone());
        self.resources.insert(n.clone(), res);
        n
    }
}

/// Created before the lock service (whose hooks call into it), then bound to it.
#[derive(Default)]
pub struct DlmLocks {
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
    pub fn new() -> Arc<DlmLocks> {
        Arc::new(DlmLocks::default())
    }

    pub fn bind(&self, svc: Arc<LockService>) {
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

    fn name(res: LockResource) -> ResName {
        let (kind, blkno, extra) = match res {
            LockResource::Super => ('S', 0, 0),
            LockResource::InodeMeta { blkno } => ('M', blkno, 0),
            LockResource::InodeRw { blkno } => ('W', blkno, 0),
            LockResource::InodeOpen { blkno } => ('O', blkno, 0),
            LockResource::Rename => ('R', 0, 0),
            LockResource::System { blkno } => ('M', blkno, 1),
            LockResource::Journal { slot } => ('J', slot as u64, 0),
            LockResource::Flock { blkno } => ('F', blkno, 0),
        };
        ResName::ocfs2(kind, blkno, extra)
    }

    fn service(&self) -> Result<&Arc<LockService>> {
        self.svc.get().ok_or(FsError::Refused("the cluster lock service is not running".into()))
    }

    /// Blocks until held, or with `try_only` until held or found in use elsewhere (false: see
    /// `ClusterLocks::try_acquire`); not from the lock service's own runtime threads.
    fn take(&self, res: LockResource, mode: LockMode, try_only: bool) -> Result<bool> {
        let svc = self.service()?;
        let Some(dlm_mode) = dlm_mode(mode) else { return Ok(true) };
        let name = self.names.lock().of(res);
        if let LockResource::InodeOpen { blkno } = res {
            return self.open.take(svc, &name, blkno, dlm_mode, try_only);
        }
        let taken = if try_only { svc.try_lock_blocking(&name, dlm_mode) } else { svc.lock_blocking(&name, dlm_mode) };
        match taken {
            Ok(g) => {
                self.held.lock().entry((res, mode)).or_default().push(g);
                Ok(true)
            }
            Err(ServiceError::HeldElsewhere) => Ok(false),
            Err(e) => Err(refused(e, &name)),
        }
    }
}

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
