//! Dirty journals (ocfs2-format.md §13.7, §13.8): every slot whose journal inode has
//! JOURNAL_DIRTY_FL is replayed through the journal layer ([`crate::journal`]) before any check
//! (write modes); with `-n` it is only reported. A journal the layer refuses to open is
//! reported with the reason and left alone. The flag itself is cleared at the end of the run.

use super::{Checker, FsckError, Report, Result};
use crate::format::inode::{Inode, JOURNAL_DIRTY_FL};
use crate::fs::sysfile::SystemFile;
use crate::fs::Volume;
use crate::journal::{Journal, JournalError, JournalMap, RecoveryInfo};

/// A journal whose inode says it needs recovery.
pub struct Dirty {
    pub slot: u16,
    pub inode: Inode,
}

/// Journals whose inode has the dirty flag. Unreadable journal inodes are skipped here (pass 1
/// reports broken inodes).
pub fn dirty_slots(vol: &Volume) -> Result<Vec<Dirty>> {
    let mut out = Vec::new();
    for slot in 0..vol.sb().max_slots {
        let Ok(inode) = vol.system_inode(SystemFile::Journal(slot)) else { continue };
        if inode.journal_flags() & JOURNAL_DIRTY_FL != 0 {
            out.push(Dirty { slot, inode });
        }
    }
    Ok(out)
}

/// Opens a slot's journal; the Err is the problem code and the reason it cannot be used.
fn open(vol: &Volume, inode: &Inode) -> std::result::Result<Journal, (&'static str, String)> {
    let leaves = vol.leaf_extents(inode).map_err(|e| ("JOURNAL_FILE_INVALID", e.to_string()))?;
    let map = JournalMap::from_extent_recs(&leaves, vol.geo.bpc());
    Journal::open(vol.dev.clone(), map, vol.block_size()).map_err(|e| match e {
        JournalError::UnsupportedFeatures(_) => ("JOURNAL_UNKNOWN_FEATURE", e.to_string()),
        _ => ("JOURNAL_FILE_INVALID", e.to_string()),
    })
}

/// Replays (write modes) or reports (`-n`) every dirty journal. A device error while replaying
/// ends the run (exit 8); a log the layer refuses to replay leaves the problem unrepaired.
pub fn replay_dirty(vol: &Volume, dirty: &[Dirty], report: &mut Report) -> Result<()> {
    for d in dirty {
        let name = format!("journal:{:04} (inode {})", d.slot, d.inode.blkno);
        let mut journal = match open(vol, &d.inode) {
            Ok(j) => j,
            Err((code, why)) => {
                report.unfixable(code, d.inode.blkno, format!("{name} is dirty but cannot be replayed: {why}"));
                continue;
            }
        };
        let had_log = journal.needs_recovery();
        let state = if had_log { "needs replay" } else { "has an empty log" };
        if !report.found("JOURNAL_DIRTY", d.inode.blkno, true, format!("{name} is dirty and {state}")) {
            continue;
        }
        let (fixed, outcome) = match journal.recover() {
            Ok(info) => (true, describe(&info, had_log)),
            Err(JournalError::Io { what, source }) => {
                tracing::error!("{name}: {what}: {source}");
                return Err(FsckError::Dev(source));
            }
            Err(e) => (false, format!("replay failed: {e}")),
        };
        report.note(format!("{name}: {outcome}"));
        if let Some(p) = report.problems.last_mut() {
            p.fixed = fixed;
            p.message.push_str("; ");
            p.message.push_str(&outcome);
        }
    }
    Ok(())
}

/// What a replay did, for the problem line; `had_log`: the superblock named a log (`s_start` ≠ 0).
fn describe(info: &RecoveryInfo, had_log: bool) -> String {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    match info.transactions {
        0 if had_log => "no committed transaction in the log; log marked empty".into(),
        0 => "nothing to replay".into(),
        n => {
            let ids = if n == 1 {
                format!("ID {}", info.first_tid)
            } else {
                format!("IDs {}..={}", info.first_tid, info.end_tid.wrapping_sub(1))
            };
            format!(
                "replayed {n} transaction{} ({ids}): {} block{} written in place, {} revoked",
                plural(n as u64),
                info.blocks_replayed,
                plural(info.blocks_replayed),
                info.blocks_revoked
            )
        }
    }
}

/// After a run that left nothing unrepaired, clears JOURNAL_DIRTY_FL on replayed journals
/// (§13.7: the flag stays set until all passes succeed).
pub fn clear_dirty_flags(c: &mut Checker) -> Result<()> {
    if !c.report.may_commit() || !c.report.problems.iter().any(|p| p.code == "JOURNAL_DIRTY" && p.fixed) {
        return Ok(());
    }
    for slot in 0..c.vol.sb().max_slots {
        let Some(blkno) = c.sysfile(&SystemFile::Journal(slot).name()) else { continue };
        let Some(buf) = c.read(blkno)? else { continue };
        let Ok(mut inode) = Inode::decode(&buf, blkno) else { continue };
        if inode.journal_flags() & JOURNAL_DIRTY_FL != 0 {
            inode.set_journal(inode.journal_flags() & !JOURNAL_DIRTY_FL, inode.journal_recovery_generation());
            let mut out = buf.clone();
            crate::format::bytes::put_le64(&mut out, crate::format::inode::ID1_OFFSET, inode.id1);
            c.write(blkno, &out)?;
        }
    }
    Ok(())
}
