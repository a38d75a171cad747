//! Freeing orphans — inodes unlinked while they may be open — once no node has them open
//! (OCFS2's open locks, `LockResource::InodeOpen`): after the unlink or rename that orphaned
//! one, after a node's last close of one, and over every slot's orphan directory after a mount
//! and after the recovery of a dead node (whose open locks the DLM has dropped by then). A
//! try-lock at EX on the inode's open lock says that nobody has it open; it is held while the
//! inode is freed, so that an open racing with it waits and then finds the inode gone. A try
//! that fails leaves the orphan to the node that still has it open. On a single-node mount
//! (no cluster locks) only this node's open handles count.

use super::adapter::{meta, request, State};
use crate::fs::lock::{ClusterLocks, LockMode, LockResource};
use crate::fs::lockset::LockSet;
use crate::fs::Result;
use parking_lot::Mutex;

/// Frees `ino` if it is an orphan that no node has open.
pub(super) fn reap_if_unused(locks: Option<&dyn ClusterLocks>, state: &Mutex<State>, ino: u64) -> Result<()> {
    let mut seeds = LockSet::default();
    seeds.want(meta(ino), LockMode::Pr);
    let orphan =
        request(locks, state, seeds.clone(), |m, open| Ok(!open.contains_key(&ino) && m.core.is_orphan(ino)?))?;
    let open_lock = LockResource::InodeOpen { blkno: ino };
    if !orphan {
        return Ok(());
    }
    if !locks.map_or(Ok(true), |l| l.try_acquire(open_lock, LockMode::Ex))? {
        tracing::debug!(ino, "orphan still open on another node: its last close frees it");
        return Ok(());
    }
    seeds.want(meta(ino), LockMode::Ex);
    let freed = request(locks, state, seeds, |m, open| {
        // Opened here meanwhile (through a handle that knew it): its last close frees it.
        if open.contains_key(&ino) || m.read_only {
            return Ok(());
        }
        m.core.reap_orphan(ino)
    });
    if let Some(l) = locks {
        l.release(open_lock, LockMode::Ex);
    }
    freed
}

/// Frees every orphan of every slot that no node has open.
pub(super) fn reap_orphans(locks: Option<&dyn ClusterLocks>, state: &Mutex<State>) -> Result<()> {
    let all = request(locks, state, LockSet::default(), |m, _| m.core.all_orphans())?;
    for ino in all {
        if let Err(e) = reap_if_unused(locks, state, ino) {
            tracing::warn!(ino, "freeing an orphan: {e}");
        }
    }
    Ok(())
}
