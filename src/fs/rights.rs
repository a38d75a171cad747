//! Which cluster lock covers each metadata block, and whether the running request holds it
//! (shared/docs/DESIGN.md "Cluster locks"): on a cluster mount a block may be read only under
//! its covering lock at PR or EX, and changed only under EX. A block belongs to an owner — the
//! inode whose block, extent block or directory block it is, or the allocator whose group it is.
//! As in OCFS2, an inode's lock covers its own blocks (`InodeMeta`), the global bitmap and the
//! suballocators have the lock of their system inode (`System`; other nodes free into a slot's
//! suballocators), and this node's own local-alloc window, truncate log, orphan directory and
//! journal are covered by its journal lock, held for the whole mount.
//! A single-node mount checks nothing.

use super::error::{FsError, Result};
use super::lock::{LockMode, LockResource};
use super::sysfiles::SysFiles;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub struct Rights {
    /// None on a single-node mount.
    system: Option<HashMap<u64, Option<LockResource>>>,
    /// What the running request holds.
    held: BTreeMap<LockResource, LockMode>,
}

impl Rights {
    /// The rights of a cluster mount in `sys.slot`.
    pub fn cluster(sys: &SysFiles) -> Rights {
        let mut system = HashMap::new();
        let shared = [&sys.inode_alloc, &sys.extent_alloc, &sys.local_alloc, &sys.truncate_log, &sys.orphan_dir];
        for blkno in shared.into_iter().flatten().copied().chain([sys.global_bitmap]) {
            system.insert(blkno, Some(LockResource::System { blkno }));
        }
        let slot = sys.slot as usize;
        for own in [&sys.local_alloc, &sys.truncate_log, &sys.orphan_dir, &sys.journal] {
            if let Some(&blkno) = own.get(slot) {
                system.insert(blkno, None);
            }
        }
        for blkno in [sys.slot_map, sys.heartbeat] {
            system.insert(blkno, Some(LockResource::Super));
        }
        Rights { system: Some(system), held: BTreeMap::new() }
    }

    /// The lock covering the blocks of `owner`; None when none is needed.
    pub fn covering(&self, owner: u64) -> Option<LockResource> {
        let system = self.system.as_ref()?;
        match system.get(&owner) {
            Some(res) => *res,
            None => Some(LockResource::InodeMeta { blkno: owner }),
        }
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
