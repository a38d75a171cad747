//! Writing one transaction to the log (§13.9): revoke blocks, descriptor blocks each followed by
//! the (escaped) copies it describes, then the commit block. The commit point, in two flushes:
//! the blocks before the commit block are made durable (with every data write before them, which
//! gives data=ordered), then the commit block — and the superblock, when it must start naming
//! the log — is written and made durable. A crash before the second flush leaves no commit block
//! to replay, or one whose blocks are all there (JBD2 orders its commit block the same way).

use super::{Journal, JournalError, Result};
use crate::format::jbd2::*;
use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

impl Journal {
    /// Commits one transaction: `blocks` (filesystem block, new contents of one block each) are
    /// logged, `revokes` forbid replaying earlier logged copies of those blocks (a block freed
    /// from metadata use; its pending contents are dropped, not checkpointed). The transaction
    /// is durable when this returns its ID, and so is every device write made before the call.
    /// Checkpoints first when the log would otherwise wrap onto transactions not yet
    /// checkpointed. After a device error the journal is aborted.
    pub fn commit(&mut self, blocks: Vec<(u64, Vec<u8>)>, revokes: Vec<u64>) -> Result<u32> {
        self.check_usable()?;
        if !self.loaded {
            return Err(JournalError::NotRecovered { start: self.sb.start, sequence: self.sb.sequence });
        }
        if blocks.is_empty() && revokes.is_empty() {
            return Err(JournalError::Empty);
        }
        let revokes = self.validate_transaction(&blocks, revokes)?;
        let is_64bit = self.sb.is_64bit();
        let per_desc = tags_per_block(self.bs, is_64bit);
        let per_revoke = revoke_records_per_block(self.bs, is_64bit);
        let needed = revokes.len().div_ceil(per_revoke) + blocks.len().div_ceil(per_desc) + blocks.len() + 1;
        let limit = (self.log_capacity() / 4) as usize;
        if needed > limit {
            return Err(JournalError::TooLarge { blocks: needed as u64, limit: limit as u64 });
        }
        if self.used as usize + needed > self.log_capacity() as usize {
            self.checkpoint()?;
            self.stats.forced_checkpoints += 1;
        }

        let tid = self.next_tid;
        let log = self.build_log(tid, &blocks, &revokes, needed)?;
        let start = self.head;
        if let Err(e) = self.write_commit(start, &log, tid, !revokes.is_empty()) {
            self.aborted = true;
            return Err(e);
        }

        self.head = self.advance(start, needed as u32);
        self.used += needed as u32;
        self.next_tid = tid.wrapping_add(1);
        self.stats.transactions += 1;
        self.stats.blocks_logged += blocks.len() as u64;
        self.stats.log_blocks_written += needed as u64;
        self.stats.revokes_logged += revokes.len() as u64;
        for r in &revokes {
            self.dirty.remove(r);
        }
        for (b, data) in blocks {
            self.dirty.insert(b, data);
        }
        Ok(tid)
    }

    /// Sets the REVOKE feature in this journal's superblock, durably (a no-op when set). A
    /// commit with revokes sets it by itself; fsck.ocfs2 in write mode wants every slot's
    /// journal to carry the same features (§13.2, JOURNAL_MISSING_FEATURE), so a caller that
    /// revokes should enable it on all slots' journals at mount.
    pub fn enable_revoke(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.sb.feature_incompat & FEATURE_INCOMPAT_REVOKE != 0 {
            return Ok(());
        }
        self.sb.feature_incompat |= FEATURE_INCOMPAT_REVOKE;
        if let Err(e) = self.write_superblock() {
            self.aborted = true;
            return Err(e);
        }
        Ok(())
    }

    /// Checks the caller's blocks and revokes; returns the revokes without duplicates.
    fn validate_transaction(&self, blocks: &[(u64, Vec<u8>)], revokes: Vec<u64>) -> Result<Vec<u64>> {
        let is_64bit = self.sb.is_64bit();
        let bad = |fs_blkno: u64, why: String| Err(JournalError::BadBlock { fs_blkno, why });
        let mut logged = HashSet::new();
        for (b, data) in blocks {
            if data.len() != self.bs {
                return bad(*b, format!("has {} bytes, not one {}-byte block", data.len(), self.bs));
            }
            if let Some(why) = self.target_problem(*b) {
                return bad(*b, why);
            }
            if !is_64bit && *b > u32::MAX as u64 {
                return bad(*b, "needs a 64BIT journal".into());
            }
            if !logged.insert(*b) {
                return bad(*b, "appears twice in one transaction".into());
            }
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(revokes.len());
        for r in revokes {
            if logged.contains(&r) {
                return bad(r, "is both logged and revoked in one transaction".into());
            }
            if let Some(why) = self.target_problem(r) {
                return bad(r, format!("cannot be revoked: it {why}"));
            }
            if !is_64bit && r > u32::MAX as u64 {
                return bad(r, "needs a 64BIT journal to be revoked".into());
            }
            if seen.insert(r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The transaction's journal blocks, in log order, as one buffer of `needed` blocks.
    fn build_log(&self, tid: u32, blocks: &[(u64, Vec<u8>)], revokes: &[u64], needed: usize) -> Result<Vec<u8>> {
        let bs = self.bs;
        let is_64bit = self.sb.is_64bit();
        let mut log = vec![0u8; needed * bs];
        let mut slots = log.chunks_mut(bs);
        let mut next = || slots.next().ok_or_else(|| internal("log buffer too small"));
        for chunk in revokes.chunks(revoke_records_per_block(bs, is_64bit)) {
            let rb = RevokeBlock { sequence: tid, blocks: chunk.to_vec() };
            if rb.encode(next()?, is_64bit) != chunk.len() {
                return Err(internal("revoke block did not take all its records"));
            }
        }
        for chunk in blocks.chunks(tags_per_block(bs, is_64bit)) {
            let tags = chunk
                .iter()
                .map(|(b, data)| Tag { blocknr: *b, flags: if needs_escape(data) { TAG_FLAG_ESCAPE } else { 0 } })
                .collect();
            let d = DescriptorBlock { sequence: tid, tags };
            if d.encode(next()?, &self.sb.uuid, is_64bit) != chunk.len() {
                return Err(internal("descriptor block did not take all its tags"));
            }
            for (_, data) in chunk {
                let slot = next()?;
                slot.copy_from_slice(data);
                escape(slot);
            }
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        CommitBlock { sequence: tid, commit_sec: now.as_secs(), commit_nsec: now.subsec_nanos() }.encode(next()?);
        Ok(log)
    }

    /// Writes transaction `tid`'s `log` (its commit block last) from log position `start` and
    /// makes it durable, as the module says: the blocks before the commit block first, then the
    /// commit block with the superblock when it changes — to name the log if it was empty
    /// (§13.9 step 3), or to set the revoke feature.
    fn write_commit(&mut self, start: u32, log: &[u8], tid: u32, revokes: bool) -> Result<()> {
        let (body, commit) = log.split_at(log.len() - self.bs);
        self.write_log(start, body)?;
        self.flush("writing a transaction")?;
        let at = self.advance(start, (body.len() / self.bs) as u32);
        self.write_jblocks(at as u64, commit)?;
        let name_log = self.sb.start == 0;
        let add_revoke = revokes && self.sb.feature_incompat & FEATURE_INCOMPAT_REVOKE == 0;
        if name_log {
            self.sb.start = start;
            self.sb.sequence = tid;
        }
        if add_revoke {
            self.sb.feature_incompat |= FEATURE_INCOMPAT_REVOKE;
        }
        if name_log || add_revoke {
            self.store_superblock()?;
        }
        self.flush("committing a transaction")
    }

    /// Writes `log` from log position `start`, wrapping at `s_maxlen` to `s_first`.
    fn write_log(&self, start: u32, log: &[u8]) -> Result<()> {
        let total = (log.len() / self.bs) as u32;
        let first_part = total.min(self.sb.maxlen - start);
        let split = first_part as usize * self.bs;
        self.write_jblocks(start as u64, &log[..split])?;
        if split < log.len() {
            self.write_jblocks(self.sb.first as u64, &log[split..])?;
        }
        Ok(())
    }

    /// Log position `n` blocks after `pos`.
    pub(super) fn advance(&self, pos: u32, n: u32) -> u32 {
        let cap = self.log_capacity();
        let off = (pos - self.sb.first + n % cap) % cap;
        self.sb.first + off
    }
}

fn internal(what: &'static str) -> JournalError {
    JournalError::Internal(what)
}

#[cfg(test)]
mod tests {
    use super::super::testdev::{Layout, MemDevice};
    use super::*;
    use crate::format::bytes::{be32, put_be32};

    const GEOMETRIES: [(usize, bool); 4] = [(512, false), (512, true), (4096, false), (4096, true)];

    fn recovered(lay: &Layout, dev: &MemDevice) -> (std::sync::Arc<MemDevice>, super::super::RecoveryInfo) {
        let crashed = dev.crash(None);
        let mut j = lay.open(&crashed).unwrap();
        assert!(j.needs_recovery());
        let info = j.recover().unwrap();
        (crashed, info)
    }

    #[test]
    fn crash_after_commit_then_recover_puts_blocks_in_place() {
        for (bs, is_64bit) in GEOMETRIES {
            let lay = Layout::new(bs, is_64bit);
            let dev = lay.device(0, 1);
            let mut j = lay.open(&dev).unwrap();
            assert!(!j.needs_recovery() && j.is_empty());
            assert_eq!(j.commit(vec![(10, lay.pattern(10, 1)), (11, lay.pattern(11, 1))], vec![]).unwrap(), 1);
            assert_eq!(j.commit(vec![(10, lay.pattern(10, 2)), (12, lay.pattern(12, 2))], vec![]).unwrap(), 2);
            assert_eq!(j.pending(10), Some(&lay.pattern(10, 2)[..]));
            assert_eq!(j.superblock().start, lay.first());
            drop(j);
            // Nothing was written in place.
            assert_eq!(dev.block(10, bs), vec![0u8; bs]);
            let (crashed, info) = recovered(&lay, &dev);
            assert_eq!((info.transactions, info.first_tid, info.end_tid, info.blocks_replayed), (2, 1, 3, 3));
            assert_eq!(crashed.block(10, bs), lay.pattern(10, 2), "bs {bs} 64bit {is_64bit}");
            assert_eq!(crashed.block(11, bs), lay.pattern(11, 1));
            assert_eq!(crashed.block(12, bs), lay.pattern(12, 2));
            let j = lay.open(&crashed).unwrap();
            assert!(!j.needs_recovery());
            assert_eq!((j.superblock().start, j.superblock().sequence, j.next_tid()), (0, 4, 4));
        }
    }

    #[test]
    fn blocks_starting_with_the_magic_are_escaped() {
        for (bs, is_64bit) in GEOMETRIES {
            let lay = Layout::new(bs, is_64bit);
            let dev = lay.device(0, 7);
            let mut j = lay.open(&dev).unwrap();
            let mut magic = lay.pattern(20, 1);
            put_be32(&mut magic, 0, JBD2_MAGIC);
            j.commit(vec![(21, lay.pattern(21, 1)), (20, magic.clone())], vec![]).unwrap();
            // The log: descriptor at s_first, copies after it.
            let map = lay.map();
            let first = lay.first() as u64;
            let desc = dev.block(map.fs_block(first).unwrap(), bs);
            let d = DescriptorBlock::decode(&desc, first, is_64bit).unwrap();
            assert_eq!(
                d.tags.iter().map(|t| (t.blocknr, t.is_escaped())).collect::<Vec<_>>(),
                [(21, false), (20, true)]
            );
            let copy = dev.block(map.fs_block(first + 2).unwrap(), bs);
            assert_eq!(be32(&copy, 0), 0);
            assert_eq!(copy[4..], magic[4..]);
            let (crashed, _) = recovered(&lay, &dev);
            assert_eq!(crashed.block(20, bs), magic);
            // The checkpoint writes the unescaped block too.
            j.checkpoint().unwrap();
            assert_eq!(dev.block(20, bs), magic);
        }
    }

    #[test]
    fn a_transaction_splits_over_several_descriptors() {
        for (bs, is_64bit) in [(512, false), (512, true)] {
            let lay = Layout::new(bs, is_64bit);
            let per = tags_per_block(bs, is_64bit) as u64;
            let n = 2 * per + 10;
            let dev = lay.device(0, 1);
            let mut j = lay.open(&dev).unwrap();
            let blocks: Vec<_> = (0..n).map(|b| (b + 3, lay.pattern(b + 3, 9))).collect();
            j.commit(blocks, vec![]).unwrap();
            assert_eq!(j.stats().log_blocks_written, n + 3 + 1);
            assert_eq!(j.log_used() as u64, n + 4);
            // Second descriptor right after the first one's copies.
            let first = lay.first() as u64;
            let second = dev.block(lay.map().fs_block(first + 1 + per).unwrap(), bs);
            let d = DescriptorBlock::decode(&second, 0, is_64bit).unwrap();
            assert_eq!(d.tags.len() as u64, per);
            assert_eq!(d.tags[0].blocknr, per + 3);
            let (crashed, info) = recovered(&lay, &dev);
            assert_eq!(info.blocks_replayed, n);
            for b in 0..n {
                assert_eq!(crashed.block(b + 3, bs), lay.pattern(b + 3, 9), "block {}", b + 3);
            }
        }
    }

    #[test]
    fn revokes_come_first_and_set_the_feature() {
        let lay = Layout::new(1024, false);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        j.commit(vec![(5, lay.pattern(5, 1))], vec![]).unwrap();
        assert_eq!(j.superblock().feature_incompat & FEATURE_INCOMPAT_REVOKE, 0);
        j.commit(vec![(6, lay.pattern(6, 1))], vec![5, 5, 7]).unwrap();
        assert_ne!(j.superblock().feature_incompat & FEATURE_INCOMPAT_REVOKE, 0);
        assert_eq!(j.pending(5), None);
        // Transaction 1 took 3 blocks; transaction 2 starts with its revoke block.
        let pos = lay.first() as u64 + 3;
        let r = RevokeBlock::decode(&dev.block(lay.map().fs_block(pos).unwrap(), 1024), pos, false).unwrap();
        assert_eq!((r.sequence, r.blocks), (2, vec![5, 7]));
        let reopened = lay.open(&dev.crash(None)).unwrap();
        assert_ne!(reopened.superblock().feature_incompat & FEATURE_INCOMPAT_REVOKE, 0);
        // Enabling it again changes nothing; on a fresh journal it is durable at once.
        j.enable_revoke().unwrap();
        let dev2 = lay.device(0, 1);
        lay.open(&dev2).unwrap().enable_revoke().unwrap();
        assert_ne!(lay.open(&dev2.crash(None)).unwrap().superblock().feature_incompat & FEATURE_INCOMPAT_REVOKE, 0);
        // A checkpoint does not write the revoked block.
        j.checkpoint().unwrap();
        assert_eq!(dev.block(5, 1024), vec![0u8; 1024]);
        assert_eq!(dev.block(6, 1024), lay.pattern(6, 1));
    }

    #[test]
    fn bad_transactions_are_refused() {
        let lay = Layout::new(4096, false);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        let journal_blk = lay.map().fs_block(5).unwrap();
        let past_end = lay.device_blocks();
        type Case = (Vec<(u64, Vec<u8>)>, Vec<u64>, &'static str);
        let cases: Vec<Case> = vec![
            (vec![(1, vec![0; 100])], vec![], "100 bytes"),
            (vec![(past_end, lay.pattern(1, 1))], vec![], "past the end"),
            (vec![(journal_blk, lay.pattern(1, 1))], vec![], "journal itself"),
            (vec![(1, lay.pattern(1, 1)), (1, lay.pattern(1, 2))], vec![], "twice"),
            (vec![(1, lay.pattern(1, 1))], vec![1], "both logged and revoked"),
            (vec![], vec![past_end], "past the end"),
        ];
        for (blocks, revokes, want) in cases {
            let e = j.commit(blocks, revokes).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        assert!(matches!(j.commit(vec![], vec![]), Err(JournalError::Empty)));
        let big: Vec<_> = (0..j.log_capacity() as u64 / 4).map(|b| (b, lay.pattern(b, 0))).collect();
        assert!(matches!(j.commit(big, vec![]), Err(JournalError::TooLarge { .. })));
        // Nothing reached the device and the journal still works.
        assert_eq!(j.stats().transactions, 0);
        assert!(j.superblock().start == 0 && j.commit(vec![(1, lay.pattern(1, 1))], vec![]).is_ok());
    }

    #[test]
    fn a_write_error_aborts_the_journal() {
        let lay = Layout::new(1024, true);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        j.commit(vec![(1, lay.pattern(1, 1))], vec![]).unwrap();
        dev.fail_writes_after(0);
        assert!(matches!(j.commit(vec![(2, lay.pattern(2, 1))], vec![]), Err(JournalError::Io { .. })));
        assert!(matches!(j.commit(vec![(3, lay.pattern(3, 1))], vec![]), Err(JournalError::Aborted)));
        assert!(matches!(j.checkpoint(), Err(JournalError::Aborted)));
    }

    /// Two flushes make a transaction durable (its blocks, then its commit block with the
    /// superblock naming the log), and two a checkpoint (the blocks in place, then the emptied log).
    #[test]
    fn a_commit_and_a_checkpoint_take_two_flushes_each() {
        let lay = Layout::new(4096, false);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        for round in 0..3 {
            let before = dev.flushes();
            j.commit(vec![(1, lay.pattern(1, round)), (2, lay.pattern(2, round))], vec![3]).unwrap();
            assert_eq!(dev.flushes() - before, 2, "round {round}: commit");
            j.checkpoint().unwrap();
            assert_eq!(dev.flushes() - before, 4, "round {round}: checkpoint");
        }
    }

    /// A crash at any write of a commit leaves the transaction all there or not at all, and a
    /// commit that returned is always there.
    #[test]
    fn transactions_are_atomic_under_crashes() {
        for seed in 0..200u64 {
            let lay = Layout::new(512, seed % 2 == 0);
            let dev = lay.device(0, 1);
            let mut j = lay.open(&dev).unwrap();
            let empty_first = seed % 3 == 0;
            if !empty_first {
                j.commit(vec![(1, lay.pattern(1, 1)), (2, lay.pattern(2, 1))], vec![]).unwrap();
            }
            // A write fails, or (every other seed) a flush: then every write of the commit
            // was made, and a crash keeps any part of them.
            match seed % 2 {
                0 => dev.fail_writes_after((seed / 3 % 4) as usize),
                _ => dev.fail_flushes_after((seed / 3 % 3) as usize),
            }
            let r = j.commit((1..80).map(|b| (b, lay.pattern(b, 2))).collect(), vec![]);
            let crashed = dev.crash(Some(seed));
            let mut j2 = lay.open(&crashed).unwrap();
            j2.recover().unwrap();
            let got: Vec<bool> = (1..80).map(|b| crashed.block(b, 512) == lay.pattern(b, 2)).collect();
            let all_new = got.iter().all(|&g| g);
            assert!(all_new || got.iter().all(|&g| !g), "seed {seed}: torn transaction replayed");
            if r.is_ok() {
                assert!(all_new, "seed {seed}: committed transaction lost");
            }
            if !empty_first && !all_new {
                assert_eq!(crashed.block(1, 512), lay.pattern(1, 1), "seed {seed}: first transaction lost");
            }
        }
    }
}
