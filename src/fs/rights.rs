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

use super::error::{FsError, Result};
use super::lock::{LockMode, LockResource};
use super::sysfiles::SysFiles;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub struct Rights {
    /// None on a single-node mount.
    system: Option<HashMap<u64, LockResource>>,
    /// What the running request holds.
    held: BTreeMap<LockResource, LockMode>,
}

impl Rights {
    /// The rights of a cluster mount.
    pub fn cluster(sys: &SysFiles) -> Rights {
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
        Rights { system: Some(system), held: BTreeMap::new() }
    }

    /// The lock covering the blocks of `owner`; None on a single-node mount.
    pub fn covering(&self, owner: u64) -> Option<LockResource> {
        let system = self.system.as_ref()?;
        Some(system.get(&owner).copied().unwrap_or(LockResource::InodeMeta { blkno: owner }))
    }

    /// Ok when the running request may use the blocks of `owner` at `mode`; otherwise the lock
    /// it must take first.
    pub fn check(&self, owner: u64, mode: LockMode) -> Result<()> {
        match self.covering(owner) {
            Some(res) if self.held.get(&res).is_none_or(|&m| m < mode) => Err(FsError::NeedLock(res, mode)),
            _ => Ok(()),
        }
    }

    /// The locks the running request holds (none between requests).
    pub fn hold(&mut self, held: &BTreeMap<LockResource, LockMode>) {
        self.held.clone_from(held);
    }
}
