//! Replay (§13.7): scan the log from `s_start` for consecutive committed transactions, collect
//! their revokes, write the latest unrevoked copy of every logged block in place, then mark the
//! journal empty. A block that does not continue the log (bad magic, unexpected sequence,
//! undecodable) ends the scan; nothing of an incomplete transaction is used.

use super::revoke::RevokeTable;
use super::{Journal, JournalError, Result};
use crate::format::jbd2::*;
use std::collections::BTreeMap;

/// What a recovery (or discard) found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryInfo {
    /// Committed transactions found in the log.
    pub transactions: u32,
    /// `s_sequence` when the scan began: the first transaction looked for.
    pub first_tid: u32,
    /// First transaction ID not found complete in the log.
    pub end_tid: u32,
    /// Log blocks belonging to the committed transactions.
    pub log_blocks: u32,
    /// Filesystem blocks written in place (each once, with its latest copy).
    pub blocks_replayed: u64,
    /// Filesystem blocks whose latest logged copy was revoked and so not written.
    pub blocks_revoked: u64,
    pub revoke_records: u64,
    /// Why the scan stopped (empty when there was no log).
    pub stop: String,
}

/// One logged block copy inside a committed transaction.
#[derive(Debug, Clone, Copy)]
struct LoggedCopy {
    target: u64,
    jpos: u32,
    escaped: bool,
    /// The descriptor that named it, for error messages.
    descriptor: u32,
}

#[derive(Debug, Default)]
struct ScannedTxn {
    tid: u32,
    copies: Vec<LoggedCopy>,
    revokes: Vec<u64>,
}

struct Scan {
    txns: Vec<ScannedTxn>,
    end_tid: u32,
    log_blocks: u32,
    stop: String,
}

impl Journal {
    /// Replays the log named by the superblock and marks the journal empty (`s_start` = 0,
    /// `s_sequence` = first missing ID + 1, as fsck.ocfs2 and the kernel do), durably. Validates
    /// every target before writing anything: a tag naming a block outside the device or inside
    /// the journal is an error and nothing is written. A journal that is already empty returns
    /// a zero report without I/O. The caller decides, from `JOURNAL_DIRTY_FL`, whether to call
    /// this or [`Journal::discard`] (§13.8).
    pub fn recover(&mut self) -> Result<RecoveryInfo> {
        self.check_usable()?;
        if self.loaded {
            return Ok(RecoveryInfo { first_tid: self.next_tid, end_tid: self.next_tid, ..Default::default() });
        }
        let scan = self.scan()?;
        let mut revokes = RevokeTable::new();
        let mut revoke_records = 0u64;
        for t in &scan.txns {
            for &b in &t.revokes {
                revokes.insert(b, t.tid);
                revoke_records += 1;
            }
        }
        // Latest copy of each block; revoked copies form a prefix in transaction order, so the
        // latest one decides (§13.6).
        let mut latest: BTreeMap<u64, (u32, LoggedCopy)> = BTreeMap::new();
        for t in &scan.txns {
            for c in &t.copies {
                if let Some(why) = self.target_problem(c.target) {
                    return Err(JournalError::BadTarget {
                        tid: t.tid,
                        jblk: c.descriptor as u64,
                        fs_blkno: c.target,
                        why,
                    });
                }
                latest.insert(c.target, (t.tid, *c));
            }
        }
        let mut info = RecoveryInfo {
            transactions: scan.txns.len() as u32,
            first_tid: self.sb.sequence,
            end_tid: scan.end_tid,
            log_blocks: scan.log_blocks,
            revoke_records,
            stop: scan.stop,
            ..Default::default()
        };
        let mut buf = vec![0u8; self.bs];
        for (&target, &(tid, c)) in &latest {
            if revokes.is_revoked(target, tid) {
                info.blocks_revoked += 1;
                continue;
            }
            self.read_jblock(c.jpos as u64, &mut buf)?;
            if c.escaped {
                unescape(&mut buf);
            }
            self.write_in_place(target, &buf)?;
            info.blocks_replayed += 1;
        }
        self.flush("replaying the journal")?;
        self.mark_empty(scan.end_tid)?;
        tracing::info!(
            "journal replayed: transactions {}..{} ({} blocks written, {} revoked); scan stopped: {}",
            info.first_tid,
            info.end_tid,
            info.blocks_replayed,
            info.blocks_revoked,
            info.stop
        );
        Ok(info)
    }

    /// Forgets the log named by the superblock without replaying it (a journal inode without
    /// `JOURNAL_DIRTY_FL`, §13.8). The log is still scanned so that the next transaction ID
    /// comes after every ID it holds: a stale block must never pass for a new transaction.
    pub fn discard(&mut self) -> Result<RecoveryInfo> {
        self.check_usable()?;
        if self.loaded {
            return Ok(RecoveryInfo { first_tid: self.next_tid, end_tid: self.next_tid, ..Default::default() });
        }
        let scan = self.scan()?;
        let info = RecoveryInfo {
            transactions: scan.txns.len() as u32,
            first_tid: self.sb.sequence,
            end_tid: scan.end_tid,
            log_blocks: scan.log_blocks,
            revoke_records: scan.txns.iter().map(|t| t.revokes.len() as u64).sum(),
            stop: scan.stop,
            ..Default::default()
        };
        self.mark_empty(scan.end_tid)?;
        Ok(info)
    }

    fn mark_empty(&mut self, end_tid: u32) -> Result<()> {
        self.sb.start = 0;
        self.sb.sequence = end_tid.wrapping_add(1);
        self.write_superblock()?;
        self.loaded = true;
        self.next_tid = self.sb.sequence;
        self.head = self.sb.first;
        self.used = 0;
        Ok(())
    }

    /// Walks the log from `s_start`. Device errors are errors; anything wrong with the log's
    /// contents just ends it.
    fn scan(&self) -> Result<Scan> {
        let is_64bit = self.sb.is_64bit();
        let capacity = self.log_capacity();
        let mut txns = Vec::new();
        let mut tid = self.sb.sequence;
        let mut pos = self.sb.start;
        let mut seen = 0u32;
        let mut committed_blocks = 0u32;
        let mut cur = ScannedTxn { tid, ..Default::default() };
        let mut buf = vec![0u8; self.bs];
        let stop = loop {
            if seen >= capacity {
                break format!("the log wrapped back to block {pos} without ending");
            }
            self.read_jblock(pos as u64, &mut buf)?;
            let h = match BlockHeader::decode(&buf, pos as u64) {
                Ok(h) => h,
                Err(_) => break format!("block {pos} has no JBD2 magic"),
            };
            if h.sequence != tid {
                break format!("block {pos} belongs to transaction {}, not {tid}", h.sequence);
            }
            match h.blocktype {
                BLOCKTYPE_DESCRIPTOR => {
                    let d = match DescriptorBlock::decode(&buf, pos as u64, is_64bit) {
                        Ok(d) => d,
                        Err(e) => break format!("bad descriptor: {e}"),
                    };
                    let n = d.tags.len() as u32;
                    if seen.saturating_add(1 + n) > capacity {
                        break format!("descriptor in block {pos} describes {n} blocks, more than the log holds");
                    }
                    let mut p = self.next_pos(pos);
                    for t in &d.tags {
                        cur.copies.push(LoggedCopy {
                            target: t.blocknr,
                            jpos: p,
                            escaped: t.is_escaped(),
                            descriptor: pos,
                        });
                        p = self.next_pos(p);
                    }
                    seen += 1 + n;
                    pos = p;
                }
                BLOCKTYPE_REVOKE => {
                    match RevokeBlock::decode(&buf, pos as u64, is_64bit) {
                        Ok(r) => cur.revokes.extend(r.blocks),
                        Err(e) => break format!("bad revoke block: {e}"),
                    }
                    seen += 1;
                    pos = self.next_pos(pos);
                }
                BLOCKTYPE_COMMIT => {
                    if let Err(e) = CommitBlock::decode(&buf, pos as u64) {
                        break format!("bad commit block: {e}");
                    }
                    seen += 1;
                    committed_blocks = seen;
                    tid = tid.wrapping_add(1);
                    txns.push(std::mem::replace(&mut cur, ScannedTxn { tid, ..Default::default() }));
                    pos = self.next_pos(pos);
                }
                other => break format!("block {pos} has block type {other}"),
            }
        };
        Ok(Scan { txns, end_tid: tid, log_blocks: committed_blocks, stop })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdev::{Layout, MemDevice};
    use super::*;
    use crate::format::bytes::put_be32;
    use crate::testutil::Rng;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn recover_copy(lay: &Layout, dev: &MemDevice) -> (Arc<MemDevice>, RecoveryInfo) {
        let crashed = dev.crash(None);
        let info = lay.open(&crashed).unwrap().recover().unwrap();
        (crashed, info)
    }

    #[test]
    fn revokes_are_honoured_across_transactions() {
        for is_64bit in [false, true] {
            let lay = Layout::new(1024, is_64bit);
            let dev = lay.device(0, 1);
            for b in [1, 2, 3, 4] {
                dev.set_block(b, &lay.pattern(b, 0));
            }
            let mut j = lay.open(&dev).unwrap();
            j.commit(vec![(1, lay.pattern(1, 1)), (2, lay.pattern(2, 1)), (4, lay.pattern(4, 1))], vec![]).unwrap();
            j.commit(vec![(3, lay.pattern(3, 2))], vec![1, 4]).unwrap();
            j.commit(vec![(4, lay.pattern(4, 3))], vec![]).unwrap();
            let (crashed, info) = recover_copy(&lay, &dev);
            assert_eq!((info.transactions, info.revoke_records, info.blocks_revoked), (3, 2, 1));
            assert_eq!(crashed.block(1, 1024), lay.pattern(1, 0), "revoked copy replayed");
            assert_eq!(crashed.block(2, 1024), lay.pattern(2, 1));
            assert_eq!(crashed.block(3, 1024), lay.pattern(3, 2));
            assert_eq!(crashed.block(4, 1024), lay.pattern(4, 3), "copy logged after the revoke lost");
        }
    }

    #[test]
    fn a_torn_commit_is_not_replayed() {
        let lay = Layout::new(4096, false);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        j.commit(vec![(1, lay.pattern(1, 1))], vec![]).unwrap();
        j.commit(vec![(1, lay.pattern(1, 2)), (2, lay.pattern(2, 2))], vec![]).unwrap();
        // Transaction 2's commit block is the last block written.
        let commit_pos = lay.first() as u64 + 3 + 3;
        let fs = lay.map().fs_block(commit_pos).unwrap();
        assert!(CommitBlock::decode(&dev.block(fs, 4096), 0).is_ok());
        dev.set_block(fs, &vec![0u8; 4096]);
        let (crashed, info) = recover_copy(&lay, &dev);
        assert_eq!((info.transactions, info.end_tid), (1, 2));
        assert!(info.stop.contains("no JBD2 magic"), "{}", info.stop);
        assert_eq!(crashed.block(1, 4096), lay.pattern(1, 1));
        assert_eq!(crashed.block(2, 4096), vec![0u8; 4096]);
        // Like fsck.ocfs2: the next ID skips the torn one.
        assert_eq!(lay.open(&crashed).unwrap().next_tid(), 3);
    }

    #[test]
    fn a_commit_with_the_wrong_sequence_ends_the_log() {
        let lay = Layout::new(1024, true);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        j.commit(vec![(1, lay.pattern(1, 1))], vec![]).unwrap();
        j.commit(vec![(2, lay.pattern(2, 1))], vec![]).unwrap();
        let fs = lay.map().fs_block(lay.first() as u64 + 5).unwrap();
        let mut blk = dev.block(fs, 1024);
        put_be32(&mut blk, 8, 9);
        dev.set_block(fs, &blk);
        let (crashed, info) = recover_copy(&lay, &dev);
        assert_eq!(info.transactions, 1);
        assert_eq!(crashed.block(2, 1024), vec![0u8; 1024]);
    }

    #[test]
    fn a_target_outside_the_device_is_an_error_and_nothing_is_written() {
        let lay = Layout::new(512, true);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        j.commit(vec![(1, lay.pattern(1, 1)), (2, lay.pattern(2, 1))], vec![]).unwrap();
        let first = lay.first() as u64;
        let fs = lay.map().fs_block(first).unwrap();
        let mut d = DescriptorBlock::decode(&dev.block(fs, 512), first, true).unwrap();
        for (i, bad) in [(1usize, lay.device_blocks() + 5), (0, lay.map().fs_block(700).unwrap())] {
            d.tags[i].blocknr = bad;
            let mut blk = vec![0u8; 512];
            assert_eq!(d.encode(&mut blk, b"o2fs-journal-tst", true), 2);
            dev.set_block(fs, &blk);
            let crashed = dev.crash(None);
            crashed.take_written_blocks(512);
            let mut j2 = lay.open(&crashed).unwrap();
            let e = j2.recover().unwrap_err();
            assert!(matches!(e, JournalError::BadTarget { fs_blkno, .. } if fs_blkno == bad), "{e}");
            assert!(crashed.take_written_blocks(512).is_empty());
            assert!(j2.needs_recovery());
            d.tags[i].blocknr = i as u64 + 1;
        }
    }

    #[test]
    fn discard_forgets_the_log_but_not_its_ids() {
        // What mkfs leaves: s_start = 1 over a zeroed log.
        let lay = Layout::new(4096, false);
        let dev = lay.device(1, 1);
        let mut j = lay.open(&dev).unwrap();
        assert!(j.needs_recovery());
        assert!(matches!(j.commit(vec![(1, lay.pattern(1, 1))], vec![]), Err(JournalError::NotRecovered { .. })));
        let info = j.discard().unwrap();
        assert_eq!((info.transactions, info.end_tid), (0, 1));
        assert_eq!((j.superblock().start, j.superblock().sequence), (0, 2));
        // A log with transactions: discarding skips past them, writes nothing in place.
        j.commit(vec![(1, lay.pattern(1, 1))], vec![]).unwrap();
        j.commit(vec![(2, lay.pattern(2, 1))], vec![]).unwrap();
        let crashed = dev.crash(None);
        crashed.take_written_blocks(4096);
        let mut j2 = lay.open(&crashed).unwrap();
        let info = j2.discard().unwrap();
        assert_eq!((info.transactions, info.end_tid, j2.next_tid()), (2, 4, 5));
        let written = crashed.take_written_blocks(4096);
        assert_eq!(written, HashSet::from([lay.map().fs_block(0).unwrap()]));
        assert_eq!(crashed.block(1, 4096), vec![0u8; 4096]);
        // Recovering an empty journal is a no-op.
        assert_eq!(j2.recover().unwrap().transactions, 0);
    }

    /// Every block number any log block names when read as a descriptor (either tag size).
    fn named_anywhere(lay: &Layout, dev: &MemDevice) -> HashSet<u64> {
        let map = lay.map();
        let mut out = HashSet::new();
        for j in 0..lay.maxlen as u64 {
            let blk = dev.block(map.fs_block(j).unwrap_or(0), lay.bs);
            for w in [false, true] {
                if let Ok(d) = DescriptorBlock::decode(&blk, j, w) {
                    out.extend(d.tags.iter().map(|t| t.blocknr));
                }
            }
        }
        out
    }

    /// A randomly corrupted log never panics, never writes a block no log block names, and
    /// still replays every transaction that lies wholly before the first corruption.
    #[test]
    fn corrupted_logs_never_panic_or_write_garbage() {
        for seed in 1..=500u64 {
            let mut rng = Rng::new(seed);
            let lay = Layout::new(512, seed % 2 == 0);
            let first_tid = rng.next() as u32;
            let dev = lay.device(0, first_tid);
            for b in 0..lay.fs_blocks {
                dev.set_block(b, &[0xEE; 512]);
            }
            let mut j = lay.open(&dev).unwrap();
            // Transactions on disjoint targets; (log range end, targets) for each.
            type Blocks = Vec<(u64, Vec<u8>)>;
            let mut txns: Vec<(u32, Blocks)> = Vec::new();
            let mut next_target = 0u64;
            for t in 0..(3 + rng.below(4)) {
                let n = 1 + rng.below(70);
                let blocks: Vec<(u64, Vec<u8>)> = (0..n)
                    .map(|i| {
                        let b = next_target + i;
                        let mut data = lay.pattern(b, t as u32);
                        if rng.below(5) == 0 {
                            put_be32(&mut data, 0, JBD2_MAGIC);
                        }
                        (b, data)
                    })
                    .collect();
                next_target += n;
                // The last 5 blocks are kept for revoking: a revoked block is never logged.
                if next_target > lay.fs_blocks - 5 {
                    break;
                }
                let revokes = if rng.below(3) == 0 { vec![lay.fs_blocks - 1 - rng.below(5)] } else { vec![] };
                j.commit(blocks.clone(), revokes).unwrap();
                txns.push((j.log_used(), blocks));
            }
            drop(j);
            let crashed = dev.crash(None);
            let map = lay.map();
            let first = lay.first();
            let used = txns.last().map_or(0, |t| t.0);
            // Corrupt: position offsets (from s_first) of damaged log blocks.
            let mut damaged = Vec::new();
            for _ in 0..(1 + rng.below(3)) {
                let off = rng.below(used as u64 + 3) as u32;
                let fs = map.fs_block((first + off) as u64).unwrap_or(0);
                let mut blk = crashed.block(fs, 512);
                match rng.below(5) {
                    0 => blk.fill(0),
                    1 => {
                        for _ in 0..(1 + rng.below(4)) {
                            let i = rng.below(512) as usize;
                            blk[i] ^= 1 << rng.below(8);
                        }
                    }
                    2 => rng.fill(&mut blk),
                    3 => {
                        // The header or the first tags.
                        for _ in 0..(1 + rng.below(6)) {
                            let i = rng.below(48) as usize;
                            blk[i] = rng.next() as u8;
                        }
                    }
                    _ => {
                        // Everything from here on is lost.
                        for o in off..used + 3 {
                            crashed.set_block(map.fs_block((first + o) as u64).unwrap_or(0), &[0; 512]);
                        }
                        blk.fill(0);
                    }
                }
                crashed.set_block(fs, &blk);
                damaged.push(off);
            }
            let mut sb_damaged = false;
            if rng.below(10) == 0 {
                let fs = map.fs_block(0).unwrap_or(0);
                let mut blk = crashed.block(fs, 512);
                let i = 0x10 + rng.below(16) as usize;
                blk[i] = rng.next() as u8;
                crashed.set_block(fs, &blk);
                sb_damaged = true;
            }
            let allowed = named_anywhere(&lay, &crashed);
            let sb_blocks: HashSet<u64> = [0u64, 1].iter().filter_map(|&j| map.fs_block(j)).collect();
            crashed.take_written_blocks(512);
            let dev2 = crashed.clone();
            let outcome = std::panic::catch_unwind(move || {
                let mut j = lay.open(&dev2)?;
                j.recover()
            });
            let Ok(result) = outcome else { panic!("seed {seed}: recovery panicked") };
            for b in crashed.take_written_blocks(512) {
                assert!(
                    sb_blocks.contains(&b) || allowed.contains(&b),
                    "seed {seed}: wrote block {b}, which no log block names"
                );
                assert!(!map.contains_fs_block(b) || sb_blocks.contains(&b), "seed {seed}: wrote into the log");
            }
            if let (Ok(info), false) = (&result, sb_damaged) {
                let first_damage = damaged.iter().copied().min().unwrap_or(u32::MAX);
                let intact = txns.iter().take_while(|(end, _)| *end <= first_damage).count();
                assert!(info.transactions as usize >= intact, "seed {seed}: {info:?}, {intact} intact");
                for (_, blocks) in &txns[..intact] {
                    for (b, data) in blocks {
                        assert_eq!(&crashed.block(*b, 512), data, "seed {seed}: block {b} of an intact transaction");
                    }
                }
            }
        }
    }
}
