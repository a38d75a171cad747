//! Dirty journals (ocfs2-format.md §13.7, §13.8): a journal whose inode has JOURNAL_DIRTY_FL
//! and whose JBD2 superblock has `s_start` ≠ 0 is replayed before any check (write modes); with
//! `-n` it is only reported.

use super::{Checker, Report, Result};
use crate::format::extent::ExtentRec;
use crate::format::inode::{Inode, JOURNAL_DIRTY_FL};
use crate::format::jbd2::*;
use crate::fs::sysfile::SystemFile;
use crate::fs::Volume;
use std::collections::HashMap;

/// A journal that needs recovery.
pub struct Dirty {
    pub slot: u16,
    pub inode: Inode,
}

/// Journals whose dirty flag is set over a non-empty log. Unreadable journals are skipped
/// here (pass 1 reports broken inodes).
pub fn dirty_slots(vol: &Volume) -> Result<Vec<Dirty>> {
    let mut out = Vec::new();
    for slot in 0..vol.sb().max_slots {
        let Ok(inode) = vol.system_inode(SystemFile::Journal(slot)) else { continue };
        if inode.journal_flags() & JOURNAL_DIRTY_FL == 0 {
            continue;
        }
        let Ok(leaves) = vol.leaf_extents(&inode) else { continue };
        let Some(jsb) = read_jsb(vol, &leaves) else { continue };
        if jsb.start != 0 {
            out.push(Dirty { slot, inode });
        }
    }
    Ok(out)
}

fn read_jsb(vol: &Volume, leaves: &[ExtentRec]) -> Option<JournalSuperblock> {
    let (blk, _) = vol.map_block(leaves, 0)?;
    let buf = vol.read_block(blk).ok()?;
    JournalSuperblock::decode(&buf, blk).ok()
}

/// Replays (write modes) or reports (`-n`) every dirty journal.
pub fn replay_dirty(vol: &Volume, dirty: &[Dirty], report: &mut Report) -> Result<()> {
    for d in dirty {
        let msg = format!("journal:{:04} (inode {}) is dirty and needs replay", d.slot, d.inode.blkno);
        if !report.found("JOURNAL_DIRTY", d.inode.blkno, true, msg) {
            continue;
        }
        match replay(vol, &d.inode)? {
            Ok(n) => report.note(format!("journal:{:04}: replayed {n} transactions", d.slot)),
            Err(why) => {
                if let Some(p) = report.problems.last_mut() {
                    p.fixed = false;
                    p.message.push_str(&format!("; replay failed: {why}"));
                }
            }
        }
    }
    Ok(())
}

/// One committed transaction: its ID and the (log position, tag) of each logged block.
struct Transaction {
    seq: u32,
    blocks: Vec<(u64, Tag)>,
}

/// Scans the log from `s_start` (bounded by `s_maxlen` blocks), then writes every committed,
/// unrevoked block home and marks the log empty. The inner Err is a journal that cannot be
/// replayed.
fn replay(vol: &Volume, inode: &Inode) -> Result<std::result::Result<usize, String>> {
    let leaves = match vol.leaf_extents(inode) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some((jsb_blk, _)) = vol.map_block(&leaves, 0) else { return Ok(Err("no journal superblock".into())) };
    let mut jbuf = vol.read_block(jsb_blk)?;
    let mut jsb = match JournalSuperblock::decode(&jbuf, jsb_blk) {
        Ok(j) => j,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if jsb.block_size as usize != vol.block_size() {
        return Ok(Err("journal block size differs from the volume's".into()));
    }
    let is64 = jsb.is_64bit();
    let (first, maxlen) = (jsb.first as u64, jsb.maxlen as u64);
    let next = |p: u64| if p + 1 >= maxlen { first } else { p + 1 };
    let read_log = |p: u64| -> Option<(u64, Vec<u8>)> {
        let (blk, _) = vol.map_block(&leaves, p)?;
        vol.read_block(blk).ok().map(|b| (blk, b))
    };
    // Scan (§13.7 step 1 and 2).
    let mut pos = jsb.start as u64;
    let mut seq = jsb.sequence;
    let mut txs = Vec::new();
    let mut current = Vec::new();
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    let mut steps = 0u64;
    while steps < maxlen {
        let Some((blk, buf)) = read_log(pos) else { break };
        let Ok(h) = BlockHeader::decode(&buf, blk) else { break };
        if h.sequence != seq {
            break;
        }
        steps += 1;
        match h.blocktype {
            BLOCKTYPE_DESCRIPTOR => {
                let Ok(d) = DescriptorBlock::decode(&buf, blk, is64) else { break };
                pos = next(pos);
                for t in d.tags {
                    current.push((pos, t));
                    pos = next(pos);
                    steps += 1;
                }
            }
            BLOCKTYPE_COMMIT => {
                txs.push(Transaction { seq, blocks: std::mem::take(&mut current) });
                seq = seq.wrapping_add(1);
                pos = next(pos);
            }
            BLOCKTYPE_REVOKE => {
                let Ok(r) = RevokeBlock::decode(&buf, blk, is64) else { break };
                for b in r.blocks {
                    let e = revoked.entry(b).or_insert(seq);
                    if (seq.wrapping_sub(*e) as i32) > 0 {
                        *e = seq;
                    }
                }
                pos = next(pos);
            }
            _ => break,
        }
    }
    // Replay (§13.7 step 3).
    let total = vol.geo.total_blocks();
    for tx in &txs {
        for (p, tag) in &tx.blocks {
            if let Some(&r) = revoked.get(&tag.blocknr) {
                if (r.wrapping_sub(tx.seq) as i32) >= 0 {
                    continue;
                }
            }
            if tag.blocknr >= total {
                continue;
            }
            let Some((_, mut data)) = read_log(*p) else { continue };
            if tag.is_escaped() {
                unescape(&mut data);
            }
            vol.write_block(tag.blocknr, &data)?;
        }
    }
    jsb.start = 0;
    jsb.sequence = seq.wrapping_add(1);
    jsb.encode(&mut jbuf);
    vol.write_block(jsb_blk, &jbuf)?;
    Ok(Ok(txs.len()))
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
