//! Superblock: open the primary or a backup (§2.3), feature masks (§1), the cluster-in-use
//! check (§12.1), field sanity (§3.4) and the end-of-run update (§15: s_lastcheck, s_state).

use super::{Checker, FsckError, Options, Report, Result};
use crate::dev::BlockDevice;
use crate::format::bytes::{put_le16, put_le64};
use crate::format::features::{Features, Word, COMPAT_BACKUP_SB, INCOMPAT_EXTENDED_SLOT_MAP};
use crate::format::inode::ID2_OFFSET;
use crate::format::slot_map::{entry_size, SlotMap};
use crate::format::superblock::{backup_superblock_blknos, STATE_ERROR_FS, SUPERBLOCK_BLKNO};
use crate::fs::geometry::Geometry;
use crate::fs::sysfile::SystemFile;
use crate::fs::{FsError, Volume};
use std::sync::Arc;

/// Byte offset of backup `n` (1-based): 1 GiB << 2(n−1) (§2.3).
fn backup_offset(n: u32) -> Option<u64> {
    (1..=6).contains(&n).then(|| (1u64 << 30) << (2 * (n - 1)))
}

/// Opens backup `n`, trying every block size.
fn open_backup(dev: &Arc<dyn BlockDevice>, n: u32) -> Option<Volume> {
    let off = backup_offset(n)?;
    (9..=12u32).find_map(|bits| {
        let bs = 1usize << bits;
        let blkno = off / bs as u64;
        if (blkno + 1) * bs as u64 > dev.size() {
            return None;
        }
        let vol = Volume::open_at(dev.clone(), blkno, bs).ok()?;
        (vol.sb().blocksize_bits == bits).then_some(vol)
    })
}

/// Opens the volume: the backup asked for with `-r`, else the primary, else the first good
/// backup. Using a backup whose content the primary lacks is a problem; the repair writes the
/// backup over the primary.
pub fn open(dev: Arc<dyn BlockDevice>, opts: &Options, report: &mut Report) -> Result<Volume> {
    let primary = Volume::open(dev.clone());
    let (vol, n) = match (opts.backup, primary) {
        (None, Ok(vol)) => return Ok(vol),
        (None, Err(FsError::Dev(e))) => return Err(e.into()),
        (Some(n), _) => match open_backup(&dev, n) {
            Some(v) => (v, n),
            None => return Err(FsckError::NoSuperblock(format!("backup superblock {n} is not valid"))),
        },
        (None, Err(e)) => {
            let found = (1..=6).find_map(|n| open_backup(&dev, n).map(|v| (v, n)));
            match found {
                Some(x) => {
                    report.note(format!("primary superblock unusable ({e}); using backup"));
                    x
                }
                None => return Err(FsckError::NoSuperblock(format!("primary: {e}; no valid backup superblock"))),
            }
        }
    };
    let bs = vol.block_size();
    let mut backup = vol.read_block(vol.super_inode.blkno)?;
    put_le64(&mut backup, 0x50, SUPERBLOCK_BLKNO);
    let mut current = vec![0u8; bs];
    dev.read_block(SUPERBLOCK_BLKNO, &mut current)?;
    if current != backup {
        let msg = format!(
            "primary superblock at block {SUPERBLOCK_BLKNO} is damaged or differs from backup {n} at block {}",
            vol.super_inode.blkno
        );
        if report.found("SUPERBLOCK_INVALID", SUPERBLOCK_BLKNO, false, msg) {
            dev.write_block(SUPERBLOCK_BLKNO, &backup)?;
        }
    }
    Ok(vol)
}

/// Refuses features outside the supported subset (§1.1).
pub fn check_features(vol: &Volume) -> Result<()> {
    let f = vol.sb().features;
    let (inc, ro) = (f.unsupported_incompat(), f.unsupported_ro_compat());
    if inc != 0 || ro != 0 {
        let mut names = Features::describe(Word::Incompat, inc);
        names.extend(Features::describe(Word::RoCompat, ro));
        return Err(FsckError::Unsupported(names.join(", ")));
    }
    Ok(())
}

/// Refuses a volume whose slot map shows a slot in use (§12.1). An unreadable slot map is left
/// to the passes to report.
pub fn refuse_if_in_use(vol: &Volume) -> Result<()> {
    let Ok(inode) = vol.system_inode(SystemFile::SlotMap) else { return Ok(()) };
    let slots = vol.sb().max_slots as usize;
    let extended = vol.sb().features.has_incompat(INCOMPAT_EXTENDED_SLOT_MAP);
    let want = (slots * entry_size(extended)) as u64;
    let Ok(data) = vol.read_data(&inode, want.min(inode.size)) else { return Ok(()) };
    let map = SlotMap::decode(&data, slots, extended);
    let used: Vec<String> = map.occupied().map(|(s, n)| format!("slot {s} (node {n})")).collect();
    if !used.is_empty() {
        return Err(FsckError::InUse(format!(
            "the slot map shows the volume mounted: {}; unmount it on every node, or use -F if you are \
             sure no node uses it",
            used.join(", ")
        )));
    }
    // A node heartbeating on the volume is using it even if the slot map says nothing (§12.2).
    if !vol.sb().features.has_incompat(crate::format::features::INCOMPAT_LOCAL_MOUNT) {
        if let Ok((start, len)) = vol.heartbeat_area() {
            let region = crate::cluster::disk_heartbeat::Region::new(vol.dev.clone(), start, len);
            let live = region.live_nodes(crate::cluster::disk_heartbeat::DEFAULT_INTERVAL).map_err(FsError::from)?;
            if !live.is_empty() {
                return Err(FsckError::InUse(format!(
                    "node(s) {live:?} are heartbeating on the volume; stop them, or use -F if you are sure no node uses it"
                )));
            }
        }
    }
    Ok(())
}

pub fn has_error_state(vol: &Volume) -> bool {
    vol.sb().state & STATE_ERROR_FS != 0
}

/// Field sanity beyond what decoding enforces (§3.4, §2.2).
pub fn check_fields(c: &mut Checker) -> Result<()> {
    let sb = c.vol.sb().clone();
    for (what, blkno) in [("root directory", sb.root_blkno), ("system directory", sb.system_dir_blkno)] {
        if blkno < 3 || blkno >= c.blocks {
            c.report.unfixable(
                "SUPERBLOCK_INVALID",
                SUPERBLOCK_BLKNO,
                format!("{what} block {blkno} is outside the volume"),
            );
            c.abort = true;
        }
    }
    let expect = Geometry::new(sb.blocksize_bits, sb.clustersize_bits, 1).first_cluster_group;
    if sb.first_cluster_group != expect {
        c.report.unfixable(
            "SUPERBLOCK_INVALID",
            SUPERBLOCK_BLKNO,
            format!(
                "s_first_cluster_group is {} but this geometry puts group 0 at block {expect}",
                sb.first_cluster_group
            ),
        );
        c.abort = true;
    }
    Ok(())
}

/// End of a run that repaired something: record the check in the superblock and refresh the
/// backups (§15 "End of a write-mode run", §2.3).
pub fn finish(c: &mut Checker) -> Result<()> {
    if !c.report.problems.iter().any(|p| p.fixed) {
        return Ok(());
    }
    let mut b = c.vol.read_block(SUPERBLOCK_BLKNO)?;
    if crate::format::inode::Inode::decode_superblock(&b, SUPERBLOCK_BLKNO).is_err() {
        return Ok(());
    }
    let sb = ID2_OFFSET;
    put_le16(&mut b, sb + 0x04, 0); // s_mnt_count
    let state = crate::format::bytes::le16(&b, sb + 0x08) & !STATE_ERROR_FS;
    put_le16(&mut b, sb + 0x08, state);
    put_le64(&mut b, sb + 0x10, c.now); // s_lastcheck
    c.write(SUPERBLOCK_BLKNO, &b)?;
    if c.vol.sb().features.compat & COMPAT_BACKUP_SB != 0 {
        for blkno in backup_superblock_blknos(c.bs, c.blocks) {
            put_le64(&mut b, 0x50, blkno);
            c.write(blkno, &b)?;
        }
    }
    Ok(())
}
