//! A request's cluster locks. The core never waits for a cluster lock while it holds its mutex:
//! a request runs with a set of locks taken beforehand, and when it meets a block whose lock is
//! missing (`FsError::NeedLock`) the caller undoes it, gives every lock back, takes the grown
//! set and runs it again. Sets are taken whole, in one global order (`LockResource`'s), while
//! holding nothing else, so no two requests — on one node or on two — wait for each other in a
//! cycle; a set only grows, so the reruns end.

use super::error::{FsError, Result};
use super::lock::{ClusterLocks, LockMode, LockResource};
use std::collections::BTreeMap;

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
/// set lacks. `attempt` must leave nothing behind when it fails (the core's `abort_op`).
pub fn run_locked<T>(
    locks: &dyn ClusterLocks,
    set: &mut LockSet,
    mut attempt: impl FnMut(&LockSet) -> Result<T>,
) -> Result<T> {
    loop {
        set.acquire(locks)?;
        let r = attempt(set);
        set.release(locks);
        match r {
            Err(FsError::NeedLock(res, mode)) if set.want(res, mode) => {
                tracing::trace!(?res, ?mode, "request reruns with one more cluster lock");
            }
            Err(FsError::NeedLock(res, mode)) => {
                return Err(FsError::Corrupt {
                    blkno: 0,
                    what: format!("internal error: {res:?} asked for at {mode:?} while held"),
                })
            }
            r => return r,
        }
    }
}
