//! The cluster-lock seam (shared/docs/DESIGN.md "Cluster locks"): the core asks for locks on
//! named resources through this trait and never knows whether a DLM or nothing stands behind it.
//! A single-node mount uses `LocalLocks`; the cluster mount plugs the DLM-backed implementation in.

use super::error::Result;

/// Lock modes (at least NL, PR, EX, as OCFS2 uses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    Nl,
    Pr,
    Ex,
}

/// Lock resources, named by type and block number as OCFS2 names them. Their order is the
/// global order in which a request takes a set of them (`lockset`): the super lock first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockResource {
    /// The superblock: mount, unmount, the slot map and a dead node's recovery.
    Super,
    /// A system file such as the global bitmap. Before the inode locks: a request mostly
    /// discovers inodes (a child, a new inode) after its system files.
    System { blkno: u64 },
    /// Metadata and cached data of one inode.
    InodeMeta { blkno: u64 },
    /// Serialises truncate and direct I/O of one inode.
    InodeRw { blkno: u64 },
    /// Held at PR by every node that has the inode open (see `ClusterLocks::try_acquire`
    /// for how long it stays after the last close); an unlinked inode is freed by the node that
    /// gets it at EX with `try_acquire`. Outside lock sets: taken at PR while holding no
    /// other lock or with `take_now` (no wait), at EX only without queueing, so it never waits
    /// in a cycle.
    InodeOpen { blkno: u64 },
    /// Cross-directory renames.
    Rename,
    /// A slot's journal: held at EX by the node mounted in that slot.
    Journal { slot: u16 },
    /// flock(2) on one inode across the cluster (never part of a request's lock set).
    Flock { blkno: u64 },
}

/// Called before a cached lock is given up: flush (losing EX) or invalidate (losing PR).
pub type DownconvertFn = Box<dyn Fn(LockResource, LockMode) + Send + Sync>;
/// Called on one surviving node when a node died: recover its slot (replay its journal…)
/// before anything it held is granted to others. Gets the dead node's number.
pub type RecoveryFn = Box<dyn Fn(u32) + Send + Sync>;

pub trait ClusterLocks: Send + Sync {
    /// Blocks until `res` is held at `mode` or stronger by this node.
    fn acquire(&self, res: LockResource, mode: LockMode) -> Result<()>;
    /// Takes `res` at `mode` unless it is in use elsewhere (false). A cached lock gives a node
    /// that merely caches it the time to let it go. An open lock (`InodeOpen`) is taken only if
    /// that needs nobody to give anything up (VMS NOQUEUE): a node keeps an open lock after its
    /// last close only while it holds the inode's metadata lock, which a node unlinking the
    /// inode takes exclusive first, so a try at EX after an unlink fails exactly when some node
    /// still has the inode open.
    fn try_acquire(&self, res: LockResource, mode: LockMode) -> Result<bool>;
    /// Takes `res` at `mode` only if that needs no wait and no message (cached, or mastered here
    /// with nothing in the way); false otherwise. Safe to call in the middle of a request: it
    /// never runs a downconvert callback on the calling thread.
    fn take_now(&self, res: LockResource, mode: LockMode) -> bool;
    /// Whether this node holds `res` cached at EX (taking it at EX then needs no message).
    fn cached_exclusive(&self, res: LockResource) -> bool;
    /// Whether taking `res` would be decided on this node (it masters the lock): where a new
    /// inode is best placed.
    fn is_local(&self, res: LockResource) -> bool;
    /// Ends this node's use; the lock may stay cached at its mode until another node wants it.
    fn release(&self, res: LockResource, mode: LockMode);
    /// Registers the callback run before a cached lock is downconverted.
    fn on_downconvert(&self, f: DownconvertFn);
    /// Registers the callback that recovers a dead node.
    fn on_recovery(&self, f: RecoveryFn);
}

/// Locks for a single-node mount: nobody else can ask, so every request is granted at once and
/// nothing is ever downconverted. In-node exclusion is the core's own business.
#[derive(Default)]
pub struct LocalLocks;

impl ClusterLocks for LocalLocks {
    fn acquire(&self, _res: LockResource, _mode: LockMode) -> Result<()> {
        Ok(())
    }
    fn try_acquire(&self, _res: LockResource, _mode: LockMode) -> Result<bool> {
        Ok(true)
    }
    fn take_now(&self, _res: LockResource, _mode: LockMode) -> bool {
        true
    }
    fn cached_exclusive(&self, _res: LockResource) -> bool {
        true
    }
    fn is_local(&self, _res: LockResource) -> bool {
        true
    }
    fn release(&self, _res: LockResource, _mode: LockMode) {}
    fn on_downconvert(&self, _f: DownconvertFn) {}
    fn on_recovery(&self, _f: RecoveryFn) {}
}
