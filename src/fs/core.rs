//! The filesystem core's state: the metadata cache, geometry, this node's system files, and the
//! in-memory directory indexes. Its operations live in `dir`, `file`, `namei` and `inode_ops`,
//! each an `impl Core` block. The caller (the mount) serialises calls and runs each with the
//! cluster locks of a `LockSet`, taken before; a block whose lock the set lacks fails the call
//! with `FsError::NeedLock` (see `rights` and `lockset`).

use super::alloc::allocator::{alloc_block, alloc_clusters, free_block, free_clusters, Placement};
use super::alloc::local_alloc;
use super::cache::MetaCache;
use super::dir::DirIndex;
use super::error::{FsError, Result};
use super::extent_tree::{self, Tree};
use super::geometry::Geometry;
use super::lock::{LockMode, LockResource};
use super::lockset::LockSet;
use super::read_gate::ReadGate;
use super::sysfiles::SysFiles;
use crate::format::extent::ExtentList;
use crate::format::features::{Features, INCOMPAT_INLINE_DATA, INCOMPAT_SPARSE_ALLOC, RO_COMPAT_UNWRITTEN};
use crate::format::inline::InlineData;
use crate::format::inode::*;
use std::collections::HashMap;
use std::sync::Arc;

/// A moment with nanoseconds, as inodes store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// Seconds since the epoch as the inode stores them: a signed count in two's complement
    /// (times before 1970 are negative, as kernel OCFS2 stores them).
    pub sec: u64,
    pub nsec: u32,
}

impl Time {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Time { sec: d.as_secs(), nsec: d.subsec_nanos() }
    }
}

pub struct Core {
    pub cache: MetaCache,
    pub geo: Geometry,
    pub sys: SysFiles,
    pub fs_generation: u32,
    pub root: u64,
    pub sysdir: u64,
    pub features: Features,
    pub(super) dirs: HashMap<u64, DirIndex>,
    next_generation: u32,
    /// Set when clusters that held journaled metadata (directory blocks) were freed: they may be
    /// reused for file data at once, so the log must be checkpointed before a replay could write
    /// the old copies over that data.
    pub checkpoint_wanted: bool,
    /// Directories whose entries the running operation changed: their indexes go if it fails.
    dirs_changed: Vec<u64>,
    /// Size of the local-alloc window in clusters (0: allocate from the global bitmap).
    pub window_clusters: u32,
    /// Where new inodes go on a cluster mount.
    placement: Placement,
    /// File data reads in flight outside the core (freeing clusters waits for them).
    pub reads: Arc<ReadGate>,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: MetaCache,
        geo: Geometry,
        sys: SysFiles,
        fs_generation: u32,
        root: u64,
        sysdir: u64,
        features: Features,
    ) -> Self {
        let seed = Time::now();
        Core {
            cache,
            geo,
            sys,
            fs_generation,
            root,
            sysdir,
            features,
            dirs: HashMap::new(),
            next_generation: seed.nsec ^ seed.sec as u32,
            checkpoint_wanted: false,
            dirs_changed: Vec::new(),
            window_clusters: 0,
            placement: Placement::default(),
            reads: Arc::default(),
        }
    }

    pub fn inline_enabled(&self) -> bool {
        self.features.has_incompat(INCOMPAT_INLINE_DATA)
    }
    pub fn sparse_enabled(&self) -> bool {
        self.features.has_incompat(INCOMPAT_SPARSE_ALLOC)
    }
    pub fn unwritten_enabled(&self) -> bool {
        self.features.has_ro_compat(RO_COMPAT_UNWRITTEN)
    }
    pub fn bs(&self) -> usize {
        self.geo.block_size
    }
    pub fn cs(&self) -> u64 {
        self.geo.cluster_size as u64
    }

    /// Forgets all cached metadata (a cluster mount that gave up its lock: other nodes may now
    /// change any of it). Everything changed here must have been checkpointed.
    pub fn drop_caches(&mut self) {
        self.cache.drop_clean();
        self.dirs.clear();
    }

    /// Forgets what is cached of `owner` (an inode or system file whose lock this node gives
    /// up); its changes must have been checkpointed.
    pub fn drop_owner(&mut self, owner: u64) {
        self.cache.drop_owner(owner);
        self.dirs.remove(&owner);
    }

    /// Starts an operation under the cluster locks `held` (its metadata changes can be undone
    /// until it ends).
    pub fn begin_op(&mut self, held: &LockSet) {
        self.cache.begin_op();
        self.cache.rights().hold(held.locks());
        self.dirs_changed.clear();
    }

    /// Undoes a failed operation's metadata changes, and forgets the indexes of the directories
    /// it changed (the others stay: rebuilding a big directory's index scans all its blocks).
    pub fn abort_op(&mut self) {
        self.cache.abort_op();
        for d in std::mem::take(&mut self.dirs_changed) {
            self.dirs.remove(&d);
        }
    }

    /// Ends an operation, done or failed: its locks are no longer held here. Returns the locks
    /// it took on its way (see `rights`), which the caller's lock set must release.
    pub fn end_op(&mut self) -> Vec<(LockResource, LockMode)> {
        self.cache.rights().end()
    }

    /// Before the entries of directory `dir` change: the operation must hold its lock
    /// exclusive, and the directory's index goes if the operation fails.
    pub(super) fn changing_dir(&mut self, dir: u64) -> Result<()> {
        self.cache.check(dir, LockMode::Ex)?;
        self.dirs_changed.push(dir);
        Ok(())
    }

    pub fn read_inode(&mut self, blkno: u64) -> Result<Inode> {
        let inode = self.cache.read_inode(blkno)?;
        if !inode.is_valid() {
            return Err(FsError::NotFound);
        }
        Ok(inode)
    }

    pub fn write_inode(&mut self, inode: &Inode) -> Result<()> {
        self.cache.write_inode(inode)
    }

    /// Data clusters: up to `want`, at least 1, near `goal`; from this slot's local-alloc window
    /// when there is one (the global bitmap is only taken to refill it), else from the global
    /// bitmap.
    pub fn alloc_clusters(&mut self, want: u64, goal: Option<u64>) -> Result<(u64, u64)> {
        let want = want.clamp(1, u16::MAX as u64) as u32;
        let la = self.sys.local_alloc[self.sys.slot as usize];
        if let Some((c, n)) = local_alloc::alloc(
            &mut self.cache,
            &self.geo,
            la,
            self.sys.global_bitmap,
            want,
            goal,
            self.window_clusters,
        )? {
            return Ok((c, n as u64));
        }
        let (c, n) = alloc_clusters(&mut self.cache, &self.geo, self.sys.global_bitmap, want, 1, goal)?;
        Ok((c, n as u64))
    }

    /// Frees the clusters a slot's truncate log still holds (§7.2; o2fs itself frees clusters
    /// directly, but a volume last used by another OCFS2 driver may have some) and empties it.
    pub fn flush_truncate_log(&mut self, slot: u16) -> Result<()> {
        let blkno = self.sys.truncate_log[slot as usize];
        let mut inode = self.cache.read_inode(blkno)?;
        let Id2::TruncateLog(tl) = &mut inode.id2 else {
            return Err(FsError::Corrupt { blkno, what: "truncate log inode without a truncate log".into() });
        };
        let recs = std::mem::take(&mut tl.recs);
        if recs.is_empty() {
            return Ok(());
        }
        self.cache.write_inode(&inode)?;
        for r in recs.into_iter().filter(|r| r.start != 0 && r.clusters != 0) {
            self.free_clusters(self.geo.cluster_to_blkno(r.start as u64), r.clusters as u64)?;
        }
        Ok(())
    }

    /// Returns the unused clusters of a slot's local-alloc window to the global bitmap.
    pub fn close_local_alloc(&mut self, slot: u16) -> Result<()> {
        let la = self.sys.local_alloc[slot as usize];
        local_alloc::close(&mut self.cache, &self.geo, la, self.sys.global_bitmap)
    }

    /// Gives clusters back to the global bitmap, once no read in flight can still be reading
    /// them (they may go to another file at once).
    pub fn free_clusters(&mut self, start_blkno: u64, clusters: u64) -> Result<()> {
        self.reads.drain();
        let c = self.geo.blkno_to_cluster(start_blkno);
        free_clusters(&mut self.cache, &self.geo, self.sys.global_bitmap, c, clusters)
    }

    /// Zeroes whole clusters on the device (new allocations must not show stale data).
    pub fn zero_clusters(&mut self, start_blkno: u64, clusters: u64) -> Result<()> {
        let bs = self.bs() as u64;
        self.cache.dev().zero_range(start_blkno * bs, clusters * self.cs())?;
        Ok(())
    }

    pub fn load_tree(&mut self, inode: &Inode) -> Result<Tree> {
        extent_tree::load(&mut self.cache, inode)
    }

    pub fn store_tree(&mut self, inode: &mut Inode, tree: &mut Tree) -> Result<()> {
        extent_tree::store(&mut self.cache, &self.geo, &self.sys, inode, tree)
    }

    /// A new inode from this slot's inode allocator, initialised per §4.7 (the caller links it
    /// and writes it). On a cluster mount it is placed where this node masters its lock, if it
    /// can be: the request then takes that lock without a message (see `rights`).
    pub fn new_inode(&mut self, mode: u16, uid: u32, gid: u32, now: Time) -> Result<Inode> {
        self.placement.window = self.window_clusters;
        let place = self.cache.rights().clustered().then_some(&mut self.placement);
        let (blkno, bit, gblk) = alloc_block(
            &mut self.cache,
            &self.geo,
            self.sys.inode_alloc[self.sys.slot as usize],
            self.sys.global_bitmap,
            self.sys.local_alloc[self.sys.slot as usize],
            place,
        )?;
        self.next_generation = self.next_generation.wrapping_add(1);
        let bs = self.bs();
        let mut inode = Inode::new(
            blkno,
            self.fs_generation,
            Id2::Extents(ExtentList::empty(crate::format::extent::recs_per_inode(bs))),
        );
        inode.generation = self.next_generation;
        inode.suballoc_slot = self.sys.slot;
        inode.suballoc_bit = bit;
        inode.suballoc_loc = gblk;
        inode.mode = mode;
        inode.uid = uid;
        inode.gid = gid;
        inode.flags = VALID_FL;
        inode.links_count = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        (inode.atime, inode.ctime, inode.mtime) = (now.sec, now.sec, now.sec);
        (inode.atime_nsec, inode.ctime_nsec, inode.mtime_nsec) = (now.nsec, now.nsec, now.nsec);
        if self.inline_enabled() && matches!(mode & S_IFMT, S_IFREG | S_IFDIR) {
            inode.dyn_features |= INLINE_DATA_FL;
            inode.id2 = Id2::Inline(InlineData::empty(bs));
        }
        Ok(inode)
    }

    /// Frees an inode with no links and no users: its clusters, extent blocks and allocator bit
    /// (§4.8). The block keeps its signature with VALID clear and `i_dtime` set.
    pub fn delete_inode(&mut self, mut inode: Inode) -> Result<()> {
        if inode.extents().is_some() {
            self.checkpoint_wanted |= inode.is_dir() && inode.clusters > 0;
            let mut tree = self.load_tree(&inode)?;
            for r in std::mem::take(&mut tree.recs) {
                self.free_clusters(r.blkno, r.len as u64)?;
            }
            extent_tree::free_all(&mut self.cache, &self.sys, &mut tree)?;
        }
        self.dirs.remove(&inode.blkno);
        inode.flags &= !(VALID_FL | ORPHANED_FL);
        inode.dtime = Time::now().sec;
        inode.links_count = 0;
        inode.clusters = 0;
        inode.size = 0;
        inode.last_eb_blk = 0;
        inode.id2 = Id2::Extents(ExtentList::empty(crate::format::extent::recs_per_inode(self.bs())));
        self.cache.write_inode(&inode)?;
        let alloc = self.sys.inode_alloc_of(inode.suballoc_slot).ok_or(FsError::Corrupt {
            blkno: inode.blkno,
            what: format!("i_suballoc_slot {} names no inode allocator", inode.suballoc_slot),
        })?;
        free_block(&mut self.cache, alloc, inode.blkno, inode.suballoc_bit, inode.suballoc_loc)
    }
}

/// statfs figures in clusters and inodes.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub free: u64,
    pub files: u64,
    pub free_files: u64,
}

impl Core {
    /// Real free counts: clusters from the global bitmap; inodes from the inode allocators plus
    /// what free clusters could hold.
    pub fn statfs(&mut self) -> Result<StatFs> {
        let gb = self.cache.read_inode(self.sys.global_bitmap)?;
        let free = (gb.bitmap_total() - gb.bitmap_used().min(gb.bitmap_total())) as u64;
        let (mut files, mut free_files) = (0u64, 0u64);
        for blk in self.sys.inode_alloc.clone() {
            let a = self.cache.read_inode(blk)?;
            files += a.bitmap_total() as u64;
            free_files += (a.bitmap_total() - a.bitmap_used().min(a.bitmap_total())) as u64;
        }
        let free = free + local_alloc::unused(&mut self.cache, self.sys.local_alloc[self.sys.slot as usize])?;
        let potential = free * self.geo.bpc();
        Ok(StatFs {
            blocks: gb.bitmap_total() as u64,
            free,
            files: files + potential,
            free_files: free_files + potential,
        })
    }
}
