//! The cluster-lock seam served by the DLM (a cluster mount): [`ClusterLocks`] over this node's
//! [`LockService`]. Resource names follow OCFS2's lock names: a type letter, then the block
//! number and generation in hex. An inode's locks carry a mastery key, the chunk of the volume
//! its block lies in (one suballocator group's worth of blocks, [`Geometry::lock_chunk_blocks`]):
//! every inode of a chunk has its locks mastered by one node, so a node that places its inode
//! groups in chunks it masters (`is_local`) creates inodes whose locks cost no message, as
//! OCFS2 masters a new inode's lock locally. Open locks are direct DLM locks outside the lock
//! cache ([`OpenLocks`]); every other lock goes through the cache.
//!
//! Inode metadata locks are subject to the lock service's bound on idle locks
//! ([`LockService::set_idle_cap`]): the least recently used ones nobody here uses are given up
//! through the downconvert callback (to NL: the core checkpoints and forgets the inode, the
//! kernel's attributes go) and unlocked, and the inode's idle open lock goes with them. System
//! files' locks (allocators, local alloc, truncate log, orphan dirs), the super, journal and flock
//! locks are not: a node keeps few of them, and a flock lock is given up only by its holder.

use super::error::{FsError, Result};
use super::geometry::Geometry;
use super::lock::{ClusterLocks, DownconvertFn, LockMode, LockResource, RecoveryFn};
use super::open_locks::{refused, OpenLocks};
use crate::dlm::service::{DownconvertHook, LockGuard, LockService, RecoveryHook, ServiceError};
use crate::dlm::{Mode, ResName};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The DLM names of the resources used lately (every request looks its names up instead of
/// formatting them anew), at most `max` of them: a memo, emptied when full.
struct Names {
    names: HashMap<LockResource, ResName>,
    max: usize,
}

impl Names {
    fn of(&mut self, res: LockResource, chunk_blocks: u64) -> ResName {
        if let Some(n) = self.names.get(&res) {
            return n.clone();
        }
        if self.names.len() >= self.max {
            self.names.clear();
        }
        let n = DlmLocks::name(res, chunk_blocks);
        self.names.insert(res, n.clone());
        n
    }
}

/// How long this node keeps a lock it was granted up before yielding it to a blocked peer (the
/// lock cache's minimum hold time): two nodes working in one directory then take turns of a
/// batch of requests each, instead of paying a transfer — a write-back of the yielding node's
/// journal — per request. A peer waits that much longer at most (and for the requests then
/// running here).
const MIN_HOLD: std::time::Duration = std::time::Duration::from_millis(20);

/// The default bound on idle inode locks for a metadata cache of `cache_bytes` on a volume of
/// `block_size`-byte blocks: one lock per block the cache holds. A lock kept idle is worth what
/// it lets this node cache (an inode needs at least its inode block cached to gain from it); with
/// more idle locks than the cache has blocks, most of those inodes have nothing cached any more,
/// and each lock costs memory of its own (its records here and at its master, its open lock).
/// 64 MiB of 4 KiB blocks: 16 384 locks. At least 1024.
pub fn default_lock_cache(cache_bytes: usize, block_size: usize) -> usize {
    (cache_bytes / block_size.max(1)).max(1024)
}

/// Created before the lock service (whose hooks call into it), then bound to it.
pub struct DlmLocks {
    /// Blocks per mastery chunk: the same on every node (it follows the volume's geometry).
    chunk_blocks: u64,
    svc: OnceLock<Arc<LockService>>,
    /// Guards of the locks held, per resource and mode (released one per `release`).
    held: Mutex<HashMap<(LockResource, LockMode), Vec<LockGuard>>>,
    /// The DLM names of the resources used lately.
    names: Mutex<Names>,
    /// The bound on idle inode metadata locks (see the module documentation).
    lock_cache: usize,
    downconvert: OnceLock<DownconvertFn>,
    recovery: OnceLock<RecoveryFn>,
    /// Open locks, outside the lock cache.
    open: OpenLocks,
}

impl DlmLocks {
    /// The locks of a volume of geometry `geo`, keeping at most `lock_cache` idle inode
    /// metadata locks cached.
    pub fn new(geo: &Geometry, lock_cache: usize) -> Arc<DlmLocks> {
        Arc::new(DlmLocks {
            chunk_blocks: geo.lock_chunk_blocks(),
            svc: OnceLock::new(),
            held: Mutex::default(),
            names: Mutex::new(Names { names: HashMap::new(), max: lock_cache.saturating_mul(2).max(4096) }),
            lock_cache,
            downconvert: OnceLock::new(),
            recovery: OnceLock::new(),
            open: OpenLocks::default(),
        })
    }

    pub fn bind(&self, svc: Arc<LockService>) {
        svc.set_min_hold(MIN_HOLD);
        let capped = |name: &ResName| matches!(DlmLocks::resource(name), Some(LockResource::InodeMeta { .. }));
        svc.set_idle_cap(self.lock_cache, Box::new(capped));
        let _ = self.svc.set(svc);
    }

    /// The hook the lock service runs before downconverting a cached lock.
    pub fn downconvert_hook(self: &Arc<Self>) -> DownconvertHook {
        let this = self.clone();
        Arc::new(move |name: &ResName, mode: Mode| {
            let res = DlmLocks::resource(name);
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

    /// The resource a DLM name of [`name`](Self::name) stands for (None for any other name).
    fn resource(name: &ResName) -> Option<LockResource> {
        let s = name.as_str();
        let (base, keyed) = match s.split_once('@') {
            Some((base, _)) => (base, true),
            None => (s, false),
        };
        let (kind, rest) = (base.chars().next()?, base.get(1..)?);
        if rest.len() != 30 || !rest.starts_with("000000") {
            return None;
        }
        let blkno = u64::from_str_radix(rest.get(6..22)?, 16).ok()?;
        let extra = u32::from_str_radix(rest.get(22..)?, 16).ok()?;
        let res = match (kind, extra) {
            ('S', 0) => LockResource::Super,
            ('M', 0) => LockResource::InodeMeta { blkno },
            ('W', 0) => LockResource::InodeRw { blkno },
            ('O', 0) => LockResource::InodeOpen { blkno },
            ('R', 0) => LockResource::Rename,
            ('M', 1) => LockResource::System { blkno },
            ('J', 0) => LockResource::Journal { slot: u16::try_from(blkno).ok()? },
            ('F', 0) => LockResource::Flock { blkno },
            _ => return None,
        };
        // Inode locks carry a mastery key; the others do not.
        let inode = matches!(
            res,
            LockResource::InodeMeta { .. }
                | LockResource::InodeRw { .. }
                | LockResource::InodeOpen { .. }
                | LockResource::Flock { .. }
        );
        (inode == keyed).then_some(res)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lock_name_is_read_back_as_its_resource() {
        let all = [
            LockResource::Super,
            LockResource::System { blkno: 0x1234 },
            LockResource::InodeMeta { blkno: 0x1234 },
            LockResource::InodeMeta { blkno: u64::MAX },
            LockResource::InodeRw { blkno: 7 },
            LockResource::InodeOpen { blkno: 9_000_000 },
            LockResource::Rename,
            LockResource::Journal { slot: 3 },
            LockResource::Flock { blkno: 42 },
        ];
        for res in all {
            let name = DlmLocks::name(res, 1024);
            assert_eq!(DlmLocks::resource(&name), Some(res), "{name}");
        }
        for other in [
            "x",
            "M000000000000000000123400000000",
            "Q0000000000000000000123400000000",
            "M0000000000000000001234zz000000",
        ] {
            assert_eq!(DlmLocks::resource(&ResName::new(other).unwrap()), None, "{other}");
        }
        let system_keyed = DlmLocks::name(LockResource::System { blkno: 5 }, 1).keyed(1);
        assert_eq!(DlmLocks::resource(&system_keyed), None);
    }

    #[test]
    fn the_name_memo_is_bounded() {
        let mut names = Names { names: HashMap::new(), max: 4 };
        for blkno in 0..10 {
            names.of(LockResource::InodeMeta { blkno }, 8);
            assert!(names.names.len() <= 4);
        }
        assert_eq!(names.of(LockResource::Super, 8), DlmLocks::name(LockResource::Super, 8));
    }
}
