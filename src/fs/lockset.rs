//! A request's cluster locks. The core never waits for a cluster lock while it holds its mutex:
//! a request runs with a set of locks taken beforehand, and when it meets a block whose lock is
//! missing (`FsError::NeedLock`) the caller undoes it, takes the lock and runs it again. Locks
//! are only ever taken in one global order (`LockResource`'s), so no two requests — on one node
//! or on two — wait for each other in a cycle: a missing lock that sorts after every lock held
//! is taken on top of them; any other means giving every lock back and taking the grown set
//! from the start. A set only grows, so the reruns end. A lock a request could take without
//! waiting (`rights`) it took on its way, out of order (no wait, no cycle); it joins the set
//! (`adopt`) and is released with it.

use super::error::{FsError, Result};
use super::lock::{ClusterLocks, LockMode, LockResource};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests run again for a missing lock, in this process (`o2fs status`: each costs a run of
/// the request, and the indexes of the directories it had changed).
static RERUNS: AtomicU64 = AtomicU64::new(0);

/// How many times requests of this process ran again for a missing lock.
pub fn reruns() -> u64 {
    RERUNS.load(Ordering::Relaxed)
}

#[derive(Debug, Default, Clone)]
pub struct LockSet {
    locks: BTreeMap<LockResource, LockMode>,
}

impl LockSet {
    /// Adds `res` at `mode` (or raises it to `mode`); false when already held that strongly.
    pub fn want(&mut self, res: LockResource, mode: LockMode) -> bool {
        let m = self.locks.entry(res).or_insert(LockMode::Nl);
        let grew = *m < mode;
        *m = (*m).max(mode);
        grew
    }

    /// Adds locks already taken (a request took them on its way without waiting).
    pub fn adopt(&mut self, taken: Vec<(LockResource, LockMode)>) {
        for (res, mode) in taken {
            let m = self.locks.entry(res).or_insert(mode);
            *m = (*m).max(mode);
        }
    }

    pub fn locks(&self) -> &BTreeMap<LockResource, LockMode> {
        &self.locks
    }

    fn acquire(&self, locks: &dyn ClusterLocks) -> Result<()> {
        for (i, (&res, &mode)) in self.locks.iter().enumerate() {
            if let Err(e) = locks.acquire(res, mode) {
                self.locks.iter().take(i).for_each(|(&r, &m)| locks.release(r, m));
                return Err(e);
            }
        }
        Ok(())
    }

    fn release(&self, locks: &dyn ClusterLocks) {
        self.locks.iter().for_each(|(&r, &m)| locks.release(r, m));
    }
}

/// Runs `attempt` under `set`, growing the set and running it again while it asks for a lock the
/// set lacks. `attempt` must leave nothing behind when it fails (the core's `abort_op`), and
/// must `adopt` into the set the locks it took on its way.
pub fn run_locked<T>(
    locks: &dyn ClusterLocks,
    set: &mut LockSet,
    mut attempt: impl FnMut(&mut LockSet) -> Result<T>,
) -> Result<T> {
    set.acquire(locks)?;
    loop {
        let (res, mode) = match attempt(set) {
            Err(FsError::NeedLock(res, mode)) => (res, mode),
            r => {
                set.release(locks);
                return r;
            }
        };
        tracing::trace!(?res, ?mode, "request reruns with one more cluster lock");
        RERUNS.fetch_add(1, Ordering::Relaxed);
        if set.locks.last_key_value().is_none_or(|(&last, _)| last < res) {
            // Taken on top of the others, in order: they are not given up meanwhile (a peer
            // waiting for one of them would get it between the two runs).
            if let Err(e) = locks.acquire(res, mode) {
                set.release(locks);
                return Err(e);
            }
            set.locks.insert(res, mode);
            continue;
        }
        set.release(locks);
        if !set.want(res, mode) {
            return Err(FsError::Corrupt {
                blkno: 0,
                what: format!("internal error: {res:?} asked for at {mode:?} while held"),
            });
        }
        set.acquire(locks)?;
    }
}
