//! Checkpoint (§13.9 step 4): write the latest committed copy of every logged block in place,
//! make it durable, and only then release the log (`s_start` = 0).

use super::{Journal, JournalError, Result};

impl Journal {
    /// Writes every committed block in place, flushes, then marks the log empty durably. A
    /// no-op when nothing is pending. After a device error the journal is aborted.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.check_usable()?;
        if !self.loaded {
            return Err(JournalError::NotRecovered { start: self.sb.start, sequence: self.sb.sequence });
        }
        if self.used == 0 && self.dirty.is_empty() && self.sb.start == 0 {
            return Ok(());
        }
        if let Err(e) = self.write_pending() {
            self.aborted = true;
            return Err(e);
        }
        self.sb.start = 0;
        self.sb.sequence = self.next_tid;
        if let Err(e) = self.write_superblock() {
            self.aborted = true;
            return Err(e);
        }
        self.stats.checkpoints += 1;
        self.stats.blocks_checkpointed += self.dirty.len() as u64;
        self.dirty.clear();
        self.used = 0;
        Ok(())
    }

    /// Writes every pending block in place, runs of consecutive blocks (up to 1 MiB) in one
    /// device write each: new inodes and directory blocks come in runs, and on the mirror every
    /// write costs network round trips.
    fn write_pending(&self) -> Result<()> {
        const MAX_RUN: usize = 1 << 20;
        let mut run: Vec<u8> = Vec::new();
        let (mut first, mut next) = (0u64, 0u64);
        for (&b, data) in &self.dirty {
            if !run.is_empty() && (b != next || run.len() + data.len() > MAX_RUN) {
                self.write_in_place(first, &run)?;
                run.clear();
            }
            if run.is_empty() {
                first = b;
            }
            run.extend_from_slice(data);
            next = b + 1;
        }
        if !run.is_empty() {
            self.write_in_place(first, &run)?;
        }
        self.flush("checkpointing")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdev::Layout;
    use std::collections::HashMap;

    #[test]
    fn checkpoint_writes_in_place_and_empties_the_log() {
        let lay = Layout::new(4096, false);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        j.checkpoint().unwrap();
        assert_eq!(j.stats().checkpoints, 0, "nothing to do");
        j.commit(vec![(3, lay.pattern(3, 1))], vec![]).unwrap();
        j.commit(vec![(3, lay.pattern(3, 2)), (4, lay.pattern(4, 2))], vec![]).unwrap();
        assert!(!j.is_empty());
        j.checkpoint().unwrap();
        assert!(j.is_empty() && j.pending(3).is_none() && j.log_used() == 0);
        assert_eq!(dev.block(3, 4096), lay.pattern(3, 2));
        assert_eq!(dev.block(4, 4096), lay.pattern(4, 2));
        let s = j.stats();
        assert_eq!((s.checkpoints, s.blocks_checkpointed, s.transactions, s.blocks_logged), (1, 2, 2, 3));
        let again = lay.open(&dev.crash(None)).unwrap();
        assert!(!again.needs_recovery());
        assert_eq!(again.superblock().sequence, 3);
        // The next transaction continues after the last one and is named by the superblock.
        j.commit(vec![(5, lay.pattern(5, 3))], vec![]).unwrap();
        assert_eq!(j.superblock().start, lay.first() + 7);
        assert_eq!(j.superblock().sequence, 3);
    }

    #[test]
    fn consecutive_blocks_are_checkpointed_in_one_write() {
        let lay = Layout::new(4096, false);
        let dev = lay.device(0, 1);
        let mut j = lay.open(&dev).unwrap();
        let blocks = [3u64, 4, 5, 6, 9];
        j.commit(blocks.iter().map(|&b| (b, lay.pattern(b, 1))).collect(), vec![]).unwrap();
        // Two runs, 3..=6 and 9, then the journal superblock: a fourth device write fails.
        dev.fail_writes_after(3);
        j.checkpoint().unwrap();
        for b in blocks {
            assert_eq!(dev.block(b, 4096), lay.pattern(b, 1), "block {b}");
        }
    }

    /// Many transactions over a log that wraps several times, with explicit and forced
    /// checkpoints, and a crash + recovery after every few transactions that must reproduce the
    /// model exactly; transaction IDs also wrap past 2^32.
    #[test]
    fn log_wraps_over_many_transactions() {
        for (bs, is_64bit, first_tid) in [(4096, false, 1u32), (512, true, 0xFFFF_FFF0)] {
            let lay = Layout::new(bs, is_64bit);
            let dev = lay.device(0, first_tid);
            let mut j = lay.open(&dev).unwrap();
            let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
            let mut x = 0x1234_5678_9ABC_DEF1u64 ^ bs as u64;
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            for t in 0..300u32 {
                let n = 1 + rnd(60);
                let mut blocks = Vec::new();
                for _ in 0..n {
                    let b = rnd(lay.fs_blocks);
                    if blocks.iter().all(|(o, _)| *o != b) {
                        blocks.push((b, lay.pattern(b, t)));
                    }
                }
                let revoke: Vec<u64> =
                    (0..rnd(3)).map(|_| rnd(lay.fs_blocks)).filter(|r| blocks.iter().all(|(b, _)| b != r)).collect();
                for (b, d) in &blocks {
                    model.insert(*b, d.clone());
                }
                j.commit(blocks, revoke.clone()).unwrap();
                // A revoked block keeps whatever is in place: what was checkpointed before.
                for r in revoke {
                    model.insert(r, dev.block(r, bs));
                }
                if rnd(40) == 0 {
                    j.checkpoint().unwrap();
                }
                if t % 7 == 0 {
                    let crashed = dev.crash(None);
                    let mut j2 = lay.open(&crashed).unwrap();
                    j2.recover().unwrap();
                    for (b, want) in &model {
                        assert_eq!(&crashed.block(*b, bs), want, "bs {bs} after transaction {t}: block {b}");
                    }
                }
            }
            let s = j.stats();
            assert!(s.log_blocks_written > 3 * j.log_capacity() as u64, "{s:?}");
            assert!(s.forced_checkpoints > 0, "{s:?}");
            assert!(super::super::revoke::tid_after(j.next_tid(), first_tid));
        }
    }
}
