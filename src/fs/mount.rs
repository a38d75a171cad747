//! Mounting a volume on this node: refuse what cannot be served safely (unsupported features,
//! a live node in the heartbeat area, a dirty journal we cannot replay), claim a slot in the slot
//! map, finish orphans, and the reverse at unmount (ocfs2-format.md §1.2, §12, §13.8).

use super::cache::{InPlace, MetaCache};
use super::core::Core;
use super::error::{FsError, Result};
use super::sysfiles::SysFiles;
use super::volume::Volume;
use crate::dev::BlockDevice;
use crate::format::features::{Features, Word, INCOMPAT_EXTENDED_SLOT_MAP, INCOMPAT_LOCAL_MOUNT};
use crate::format::heartbeat::HeartbeatBlock;
use crate::format::inode::JOURNAL_DIRTY_FL;
use crate::format::slot_map::SlotMap;
use std::sync::Arc;
use std::time::Duration;

/// Heartbeat sector size used for image files (§12.2: one device sector per node).
const HB_SECTOR: usize = 512;

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub read_only: bool,
    /// Bytes of metadata cache.
    pub cache_bytes: usize,
    /// Node number written into the slot map (0 for a single-node mount).
    pub node: u32,
    /// How long to watch the heartbeat area for a live node before mounting.
    pub heartbeat_wait: Duration,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig { read_only: false, cache_bytes: 64 << 20, node: 0, heartbeat_wait: Duration::from_millis(2000) }
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

/// Nodes whose heartbeat sector changes within `wait` (§12.2). Empty sectors are skipped, so a
/// never-used area costs no wait.
pub fn live_heartbeat_nodes(vol: &Volume, hb_blkno: u64, wait: Duration) -> Result<Vec<u8>> {
    let hb = vol.read_inode(hb_blkno)?;
    let leaves = vol.leaf_extents(&hb)?;
    let Some(first) = leaves.first() else { return Ok(vec![]) };
    let start = first.blkno * vol.block_size() as u64;
    let len = (hb.size as usize).min(255 * HB_SECTOR).min(first.len as usize * vol.geo.cluster_size);
    let read = |vol: &Volume| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        vol.dev.read_at(&mut buf, start)?;
        Ok(buf)
    };
    let before = read(vol)?;
    if before.iter().all(|&b| b == 0) {
        return Ok(vec![]);
    }
    std::thread::sleep(wait);
    let after = read(vol)?;
    let mut live = Vec::new();
    for (i, (a, b)) in before.chunks(HB_SECTOR).zip(after.chunks(HB_SECTOR)).enumerate() {
        if a != b && !HeartbeatBlock::is_empty(b) {
            live.push(i as u8);
        }
    }
    Ok(live)
}

/// A mounted volume: the core plus what unmount must undo.
pub struct Mounted {
    pub core: Core,
    pub read_only: bool,
    slot_map_extended: bool,
}

pub fn mount(dev: Arc<dyn BlockDevice>, cfg: &MountConfig) -> Result<Mounted> {
    let vol = Volume::open(dev.clone())?;
    let sb = vol.sb().clone();
    check_features(&sb.features, cfg.read_only)?;
    let local = sb.features.has_incompat(INCOMPAT_LOCAL_MOUNT);
    let extended = sb.features.has_incompat(INCOMPAT_EXTENDED_SLOT_MAP);
    let sys0 = SysFiles::load(&vol, 0)?;

    if !local {
        let live = live_heartbeat_nodes(&vol, sys0.heartbeat, cfg.heartbeat_wait)?;
        if !live.is_empty() {
            return Err(FsError::Refused(format!(
                "node(s) {live:?} are heartbeating on this volume: it is mounted elsewhere (join the cluster to share it)"
            )));
        }
    }
    // Journals: this mount writes metadata in place, so any dirty journal must be replayed
    // first (fsck.o2fs or fsck.ocfs2 -y do that today).
    for (slot, &j) in sys0.journal.iter().enumerate() {
        let inode = vol.read_inode(j)?;
        if inode.journal_flags() & JOURNAL_DIRTY_FL != 0 {
            return Err(FsError::Refused(format!(
                "journal:{slot:04} needs recovery; run fsck.o2fs -y (journal replay at mount is not implemented yet)"
            )));
        }
    }

    let cache = MetaCache::new(dev.clone(), vol.block_size(), vol.geo.total_blocks(), vol.fs_generation(), cfg.cache_bytes, Box::new(InPlace(dev.clone(), vol.block_size())));
    let mut core = Core::new(cache, vol.geo, sys0, vol.fs_generation(), sb.root_blkno, sb.system_dir_blkno, sb.features);
    if cfg.read_only {
        core.cache.set_read_only(true);
        return Ok(Mounted { core, read_only: true, slot_map_extended: extended });
    }

    // Slots left occupied by nodes that are not alive are crashes: finish their orphans and free them.
    let mut map = read_slot_map(&mut core, sb.max_slots as usize, extended)?;
    for (slot, node) in map.occupied().collect::<Vec<_>>() {
        tracing::warn!("slot {slot} was left in use by node {node}, which is not alive: recovering it");
        for ino in core.orphans_of(slot as u16)? {
            core.reap_orphan(ino)?;
        }
        map.slots[slot] = None;
    }
    let slot = map.slots.iter().position(Option::is_none).ok_or(FsError::Refused("every slot of the volume is in use".into()))?;
    map.slots[slot] = Some(cfg.node);
    write_slot_map(&mut core, &map, extended)?;
    core.sys.slot = slot as u16;
    for ino in core.orphans_of(slot as u16)? {
        core.reap_orphan(ino)?;
    }
    core.cache.commit()?;
    core.cache.flush()?;
    tracing::info!("mounted in slot {slot}");
    Ok(Mounted { core, read_only: false, slot_map_extended: extended })
}

fn slot_map_block(core: &mut Core) -> Result<u64> {
    let inode = core.read_inode(core.sys.slot_map)?;
    let tree = core.load_tree(&inode)?;
    tree.recs.first().map(|r| r.blkno).ok_or(FsError::Corrupt { blkno: inode.blkno, what: "slot map has no data".into() })
}

fn read_slot_map(core: &mut Core, slots: usize, extended: bool) -> Result<SlotMap> {
    let blk = slot_map_block(core)?;
    let data = core.cache.read(blk)?;
    Ok(SlotMap::decode(&data, slots, extended))
}

fn write_slot_map(core: &mut Core, map: &SlotMap, extended: bool) -> Result<()> {
    let blk = slot_map_block(core)?;
    let mut data = core.cache.read(blk)?;
    map.encode(&mut data, extended);
    core.cache.write(blk, data)
}

impl Mounted {
    /// Makes everything durable (fsync, sync, commit interval).
    pub fn sync(&mut self) -> Result<()> {
        self.core.cache.checkpoint()?;
        self.core.cache.flush()
    }

    /// Clean unmount: checkpoint and release the slot.
    pub fn unmount(mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let slots = self.core.sys.journal.len();
        let mut map = read_slot_map(&mut self.core, slots, self.slot_map_extended)?;
        if let Some(s) = map.slots.get_mut(self.core.sys.slot as usize) {
            *s = None;
        }
        write_slot_map(&mut self.core, &map, self.slot_map_extended)?;
        self.sync()?;
        tracing::info!("unmounted cleanly");
        Ok(())
    }
}
