//! Which cluster lock covers each metadata block, and whether the running request holds it
//! (shared/docs/DESIGN.md "Cluster locks"): on a cluster mount a block may be read only under
//! its covering lock at PR or EX, and changed only under EX. A block belongs to an owner — the
//! inode whose block, extent block or directory block it is, or the allocator whose group it is.
//! An inode's lock covers its own blocks (`InodeMeta`); every system file the cache holds — the
//! global bitmap, and every slot's suballocators, local-alloc window, truncate log and orphan
//! directory, this node's own included — has the lock of its system inode (`System`). OCFS2
//! covers a node's own slot files by its journal lock instead; here a slot changes hands at
//! recovery (the recovering node finishes the dead node's window and orphans, then a node that
//! mounts in the slot reads them), and the `System` lock is what makes that hand-over checkpoint
//! the recoverer's changes first. Uncontended, it stays cached at EX and costs no message.
//! A single-node mount checks nothing.
//!
//! A lock the request lacks is first tried at once (`ClusterLocks::take_now`: cached, or
//! mastered here with nobody in the way — a new inode's lock, say); the request goes on holding
//! it, and `end_op` hands it to the request's lock set. Only a lock that would mean a wait or a
//! message makes the request rerun (`FsError::NeedLock`).

use super::error::{FsError, Result};
use super::lock::{ClusterLocks, LockMode, LockResource};
use super::sysfiles::SysFiles;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Default)]
pub struct Rights {
    /// None on a single-node mount.
    system: Option<HashMap<u64, LockResource>>,
    /// Where missing locks are tried (a cluster mount).
    locks: Option<Arc<dyn ClusterLocks>>,
    /// What the running request holds.
    held: BTreeMap<LockResource, LockMode>,
    /// The locks the running request took on its way (part of `held`).
    taken: Vec<(LockResource, LockMode)>,
    /// The running request changes something (it holds a lock exclusive).
    mutating: bool,
}

impl Rights {
    /// The rights of a cluster mount taking its locks from `locks`.
    pub fn cluster(sys: &SysFiles, locks: Arc<dyn ClusterLocks>) -> Rights {
        let mut system = HashMap::new();
        let files = [&sys.inode_alloc, &sys.extent_alloc, &sys.local_alloc, &sys.truncate_log, &sys.orphan_dir];
        for blkno in files.into_iter().flatten().copied().chain([sys.global_bitmap]) {
            system.insert(blkno, LockResource::System { blkno });
        }
        // Journals are never read through the cache; the slot map and heartbeat are written in
        // place under the super lock.
        for blkno in [sys.slot_map, sys.heartbeat] {
            system.insert(blkno, LockResource::Super);
        }
        Rights { system: Some(system), locks: Some(locks), held: BTreeMap::new(), taken: Vec::new(), mutating: false }
    }

    /// The lock covering the blocks of `owner`; None on a single-node mount.
    pub fn covering(&self, owner: u64) -> Option<LockResource> {
        let system = self.system.as_ref()?;
        Some(system.get(&owner).copied().unwrap_or(LockResource::InodeMeta { blkno: owner }))
    }

    /// Ok when the running request may use the blocks of `owner` at `mode`, taking the covering
    /// lock if that needs no wait; otherwise the lock it must take first.
    pub fn check(&mut self, owner: u64, mode: LockMode) -> Result<()> {
        let Some(res) = self.covering(owner) else { return Ok(()) };
        if self.held.get(&res).is_some_and(|&m| m >= mode) {
            return Ok(());
        }
        // Held weaker: converting it up may have to wait for this very request's hold.
        if self.held.contains_key(&res) {
            return Err(FsError::NeedLock(res, mode));
        }
        // A changing request mostly reads a block to change it next (an allocator, a window, a
        // log, an orphan directory, the inode it renames): with the lock cached here exclusive,
        // it is taken exclusive at once, and the write does not find it held weaker and rerun
        // the request (which also costs the index of a directory it changed). Only a lock
        // cached at EX: claiming EX anew would take from other nodes what they only read.
        let locks = self.locks.as_ref();
        let strongest = if mode == LockMode::Pr && self.mutating && locks.is_some_and(|l| l.cached_exclusive(res)) {
            LockMode::Ex
        } else {
            mode
        };
        let tries: &[LockMode] = if strongest == mode { &[mode] } else { &[strongest, mode] };
        match tries.iter().copied().find(|&m| locks.is_some_and(|l| l.take_now(res, m))) {
            Some(m) => {
                self.held.insert(res, m);
                self.taken.push((res, m));
                Ok(())
            }
            None => Err(FsError::NeedLock(res, strongest)),
        }
    }

    /// Whether this is a cluster mount's (blocks are used under cluster locks).
    pub fn clustered(&self) -> bool {
        self.locks.is_some()
    }

    /// Whether a new inode placed at block `blkno` would have its lock mastered here.
    pub fn is_local(&self, blkno: u64) -> bool {
        self.locks.as_ref().is_none_or(|l| l.is_local(LockResource::InodeMeta { blkno }))
    }

    /// A request starts holding `held`.
    pub fn hold(&mut self, held: &BTreeMap<LockResource, LockMode>) {
        self.held.clone_from(held);
        self.taken.clear();
        self.mutating = held.values().any(|&m| m == LockMode::Ex);
    }

    /// The request ends: it holds nothing more here; returns the locks it took on its way, which
    /// its lock set must release.
    pub fn end(&mut self) -> Vec<(LockResource, LockMode)> {
        self.held.clear();
        std::mem::take(&mut self.taken)
    }
}
