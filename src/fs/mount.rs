//! Mounting a volume on this node: refuse what cannot be served safely (unsupported features, a
//! full slot map), replay dirty journals, claim a slot in the slot map, finish orphans, and the
//! reverse at unmount (ocfs2-format.md §1.2, §12.1, §13.8). The caller has made sure no other
//! node is alive on the volume (disk heartbeat, or the cluster's membership).

use super::alloc::local_alloc;
use super::cache::{MetaCache, MetaSink};
use super::core::Core;
use super::error::{FsError, Result};
use super::journal_sink::{open_journal, recover_slot, set_dirty_flag, JournalSink};
use super::lock::{ClusterLocks, LocalLocks};
use super::lockset::{run_locked, LockSet};
use super::rights::Rights;
use super::sysfiles::SysFiles;
use super::volume::Volume;
use crate::dev::BlockDevice;
use crate::format::features::{Features, Word, INCOMPAT_EXTENDED_SLOT_MAP};
use crate::format::slot_map::SlotMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct MountConfig {
    pub read_only: bool,
    /// Bytes of metadata cache.
    pub cache_bytes: usize,
    /// Node number written into the slot map (0 for a single-node mount).
    pub node: u32,
    /// Cluster locks (LocalLocks for a single-node mount); the mount's own changes are made
    /// under them (the caller holds the super lock exclusive).
    pub locks: Arc<dyn ClusterLocks>,
    /// Local-alloc window size in bytes (0: allocate from the global bitmap directly; None:
    /// sized by the volume, `local_alloc::default_window`).
    pub local_alloc_bytes: Option<u64>,
    /// Cluster mount: the nodes alive in the cluster (this one included). Slots they occupy are
    /// theirs; only other occupied slots are crashes to recover; every metadata block is used
    /// under its cluster lock (`rights`). None: a single-node mount, where every dirty journal
    /// and occupied slot is a crash.
    pub live_nodes: Option<Vec<u32>>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            read_only: false,
            cache_bytes: 64 << 20,
            node: 0,
            locks: Arc::new(LocalLocks),
            local_alloc_bytes: None,
            live_nodes: None,
        }
    }
}

/// Refuses incompat features o2fs does not implement; unknown ro_compat ones need `ro`.
pub fn check_features(f: &Features, read_only: bool) -> Result<()> {
    let bad = f.unsupported_incompat();
    if bad != 0 {
        return Err(FsError::Refused(format!(
            "the volume uses features o2fs does not support: {}",
            Features::describe(Word::Incompat, bad).join(", ")
        )));
    }
    let ro = f.unsupported_ro_compat();
    if ro != 0 && !read_only {
        return Err(FsError::Refused(format!(
            "the volume uses features o2fs can only read: {} (mount with -o ro)",
            Features::describe(Word::RoCompat, ro).join(", ")
        )));
    }
    Ok(())
}

/// A mounted volume: the core plus what unmount must undo.
pub struct Mounted {
    pub core: Core,
    vol: Volume,
    pub read_only: bool,
    /// None on a read-only mount (it claims no slot).
    slot_map: Option<SlotMapLoc>,
}

pub fn mount(dev: Arc<dyn BlockDevice>, cfg: &MountConfig) -> Result<Mounted> {
    let vol = Volume::open(dev.clone())?;
    let sb = vol.sb().clone();
    check_features(&sb.features, cfg.read_only)?;
    let extended = sb.features.has_incompat(INCOMPAT_EXTENDED_SLOT_MAP);
    let sys0 = SysFiles::load(&vol, 0)?;

    if cfg.read_only {
        for (slot, &j) in sys0.journal.iter().enumerate() {
            if vol.read_inode(j)?.journal_flags() & crate::format::inode::JOURNAL_DIRTY_FL != 0 {
                return Err(FsError::Refused(format!(
                    "journal:{slot:04} needs recovery, which a read-only mount cannot do"
                )));
            }
        }
        let core = new_core(&vol, sys0, cfg, None);
        return Ok(Mounted { core, vol, read_only: true, slot_map: None });
    }
    let slot_map = SlotMapLoc::find(&vol, sys0.slot_map, sb.max_slots as usize, extended)?;
    let map = SlotMap::decode(&vol.dev_read(slot_map.blkno, slot_map.blocks)?, slot_map.slots, extended);
    let alive = |node: u32| node != cfg.node && cfg.live_nodes.as_ref().is_some_and(|l| l.contains(&node));
    // Every dirty journal of a slot no live node holds is a crash to recover, ours included
    // (§13.8). Replay happens in place before anything else reads the volume.
    for (slot, &j) in sys0.journal.iter().enumerate() {
        if !map.slots.get(slot).copied().flatten().is_some_and(alive) {
            recover_slot(&vol, j)?;
        }
    }
    let slot = match map.slots.iter().position(|s| *s == Some(cfg.node)) {
        Some(s) => s,
        None => map
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(FsError::Refused("every slot of the volume is in use".into()))?,
    };
    let journal_blkno = sys0.journal[slot];
    let journal = open_journal(&vol, &vol.read_inode(journal_blkno)?)?;
    set_dirty_flag(&vol, journal_blkno, true)?;
    let sink = JournalSink::new(journal);
    let mut core = new_core(&vol, sys0, cfg, Some(Box::new(sink)));
    core.sys.slot = slot as u16;
    core.window_clusters = match cfg.local_alloc_bytes {
        Some(bytes) => (bytes / vol.geo.cluster_size as u64) as u32,
        None => local_alloc::default_window(&vol.geo, sb.max_slots as u32),
    };
    if cfg.live_nodes.is_some() {
        core.cache.set_rights(Rights::cluster(&core.sys, cfg.locks.clone()));
    }

    // Slots left occupied by nodes that are not alive are crashes: finish their orphans, give
    // their local-alloc windows and truncate logs back and free them. Our own slot's window is
    // closed too (it may be left from a crash); a fresh one opens at the first allocation.
    // A cluster mount leaves the orphans: other nodes may have them open (the mounted
    // filesystem frees those nobody has open, `O2Fuse::reap_orphans`).
    // All of it is undone and run again when it needs one more cluster lock; the slot map is
    // written in place once it is committed.
    let map = run_locked(&*cfg.locks, &mut LockSet::default(), |held| {
        core.begin_op(held);
        let mut map = map.clone();
        let orphans = cfg.live_nodes.is_none();
        let r = settle_slots(&mut core, &mut map, slot, cfg.node, alive, orphans).and_then(|()| core.cache.commit());
        if r.is_err() {
            core.abort_op();
        }
        held.adopt(core.end_op());
        r.map(|()| map)
    })?;
    slot_map.write(&mut core, &map)?;
    core.cache.flush()?;
    tracing::info!("mounted in slot {slot}");
    Ok(Mounted { core, vol, read_only: false, slot_map: Some(slot_map) })
}

/// The mount's changes before it claims `slot` in `map`: crashed slots released, our own
/// slot's window, truncate log and (with `orphans`) orphans finished.
fn settle_slots(
    core: &mut Core,
    map: &mut SlotMap,
    slot: usize,
    node: u32,
    alive: impl Fn(u32) -> bool,
    orphans: bool,
) -> Result<()> {
    for (dead, owner) in map.occupied().collect::<Vec<_>>() {
        if owner != node && !alive(owner) {
            tracing::warn!("slot {dead} was left in use by node {owner}, which is not alive: recovering it");
            finish_slot(core, dead, orphans)?;
            map.slots[dead] = None;
        }
    }
    finish_slot(core, slot, orphans)?;
    map.slots[slot] = Some(node);
    Ok(())
}

/// Finishes what a slot's last user left (its journal replayed): its local-alloc window and
/// truncate log go back, and its orphans are freed if `orphans` says nobody else can have
/// them open (a single-node mount).
fn finish_slot(core: &mut Core, slot: usize, orphans: bool) -> Result<()> {
    if orphans {
        for ino in core.orphans_of(slot as u16)? {
            core.reap_orphan(ino)?;
        }
    }
    core.close_local_alloc(slot as u16)?;
    core.flush_truncate_log(slot as u16)
}

/// The core over a volume; `sink` None makes it read-only.
fn new_core(vol: &Volume, sys: SysFiles, cfg: &MountConfig, sink: Option<Box<dyn MetaSink>>) -> Core {
    let cache = MetaCache::new(
        vol.dev.clone(),
        vol.block_size(),
        vol.geo.total_blocks(),
        vol.fs_generation(),
        cfg.cache_bytes,
        sink,
    );
    let sb = vol.sb();
    Core::new(cache, vol.geo, sys, vol.fs_generation(), sb.root_blkno, sb.system_dir_blkno, sb.features)
}

/// Where the slot map's entries live: the first blocks of its first extent (§12.1).
struct SlotMapLoc {
    blkno: u64,
    blocks: u64,
    slots: usize,
    extended: bool,
}

impl SlotMapLoc {
    fn find(vol: &Volume, inode_blkno: u64, slots: usize, extended: bool) -> Result<Self> {
        let inode = vol.read_inode(inode_blkno)?;
        let first = vol.leaf_extents(&inode)?.into_iter().next();
        let bytes = (slots * crate::format::slot_map::entry_size(extended)) as u64;
        let blocks = bytes.div_ceil(vol.block_size() as u64);
        match first {
            Some(r) if r.len as u64 * vol.geo.bpc() >= blocks && inode.size >= bytes => {
                Ok(SlotMapLoc { blkno: r.blkno, blocks, slots, extended })
            }
            _ => Err(FsError::Corrupt { blkno: inode_blkno, what: format!("slot map too small for {slots} slots") }),
        }
    }

    /// The slot map as the device has it (it is never journaled: see `write`).
    fn read(&self, core: &mut Core) -> Result<SlotMap> {
        let mut data = vec![0u8; self.blocks as usize * core.bs()];
        core.cache.dev().read_at(&mut data, self.blkno * core.bs() as u64)?;
        Ok(SlotMap::decode(&data, self.slots, self.extended))
    }

    /// Writes the slot map in place at once, outside the journal, as OCFS2 does: a node
    /// recovering a dead one must find the dead node's slot in it before replaying any journal.
    fn write(&self, core: &mut Core, map: &SlotMap) -> Result<()> {
        let bs = core.bs();
        let mut data = vec![0u8; self.blocks as usize * bs];
        core.cache.dev().read_at(&mut data, self.blkno * bs as u64)?;
        map.encode(&mut data, self.extended);
        core.cache.dev().write_at(&data, self.blkno * bs as u64)?;
        core.cache.dev().flush()?;
        for b in 0..self.blocks {
            core.cache.forget(self.blkno + b);
        }
        Ok(())
    }
}

impl Mounted {
    /// Makes everything so far durable: commits the running transaction to the log (fsync).
    pub fn sync(&mut self) -> Result<()> {
        self.core.cache.commit()?;
        self.core.cache.flush()
    }

    /// Commits and writes every logged block in place, emptying the log.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.core.cache.checkpoint()?;
        self.core.cache.flush()
    }

    /// Before this node's cluster lock on `owner`'s blocks goes down: our changes to them reach
    /// their place on the device, where the next holder reads them (`MetaCache::write_back`);
    /// losing read rights too, what we cached of `owner` goes.
    pub fn yield_lock(&mut self, owner: u64, keep_read: bool) -> Result<()> {
        self.core.cache.write_back(owner)?;
        if !keep_read {
            self.core.drop_owner(owner);
        }
        Ok(())
    }

    /// First half of recovering `node`, which died while the cluster ran, while the DLM still
    /// keeps its locks from everyone (the caller holds the super lock exclusive): replays the
    /// journal of its slot in place and marks the slot free. Every block in that journal is
    /// covered by a lock the dead node held exclusive, so nobody has them cached; our caches go
    /// anyway. Returns the slot, if it held one.
    pub fn replay_node(&mut self, node: u32) -> Result<Option<usize>> {
        let Some(loc) = &self.slot_map else { return Ok(None) };
        let mut map = loc.read(&mut self.core)?;
        let Some(slot) = map.slots.iter().position(|s| *s == Some(node)) else { return Ok(None) };
        tracing::warn!("node {node} died: replaying the journal of its slot {slot}");
        recover_slot(&self.vol, self.core.sys.journal[slot])?;
        map.slots[slot] = None;
        loc.write(&mut self.core, &map)?;
        self.core.drop_caches();
        Ok(Some(slot))
    }

    /// Second half, as an ordinary operation under cluster locks once the cluster runs again
    /// (as OCFS2's ocfs2_complete_recovery): the dead node's local-alloc window and truncate log
    /// go back. Its orphans stay: other nodes may have them open (the caller frees those nobody
    /// has open). Needs no super lock: a node may have mounted in the slot meanwhile (and
    /// finished it at its mount), but a window and a truncate log live wholly in their system
    /// inodes, read under their own locks, so closing a window or flushing a log its new owner
    /// uses only makes that node open a new window or find an empty log. Holding the super lock
    /// here, while waiting for the allocators' locks, would stop the recovery of a node that dies
    /// holding one of them (its recovery takes the super lock).
    pub fn finish_recovery(&mut self, slot: usize) -> Result<()> {
        finish_slot(&mut self.core, slot, false)
    }

    /// First step of a clean unmount, an ordinary operation (on a cluster mount under the locks
    /// of the window and the global bitmap): this node's local-alloc window goes back.
    pub fn close_window(&mut self) -> Result<()> {
        if self.slot_map.is_none() {
            return Ok(());
        }
        self.core.close_local_alloc(self.core.sys.slot)
    }

    /// Clean unmount once the window is closed (`close_window`): checkpoint, release the slot,
    /// mark the journal clean (§13.9 step 5).
    pub fn unmount(mut self) -> Result<()> {
        let Some(loc) = self.slot_map.take() else { return Ok(()) };
        self.checkpoint()?;
        let mut map = loc.read(&mut self.core)?;
        if let Some(s) = map.slots.get_mut(self.core.sys.slot as usize) {
            *s = None;
        }
        loc.write(&mut self.core, &map)?;
        set_dirty_flag(&self.vol, self.core.sys.journal[self.core.sys.slot as usize], false)?;
        tracing::info!("unmounted cleanly");
        Ok(())
    }
}
