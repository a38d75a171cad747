//! Resync (source and target side) and online verify message handling.

use super::*;
use crate::dev::mirror::generation::JUST_CREATED;
use crate::dev::mirror::resync::{block_runs, MAX_RUN};

impl Engine {
    /// Blocks `[block, block + count)` make a resync run inside the replica.
    fn run_in_range(&self, block: u64, count: u64) -> bool {
        (1..=MAX_RUN).contains(&count) && block.checked_add(count).is_some_and(|end| end <= self.bitmap.len())
    }

    /// Sync source: answers a run with its data, blocks of zeros as a count of them.
    pub(super) fn on_resync_request(&mut self, block: u64, count: u64) {
        if self.repl != Repl::SyncSource || !self.run_in_range(block, count) {
            return self.protocol_error(format!("resync request for blocks {block}+{count} in {:?}", self.repl));
        }
        let runs = match block_runs(&*self.data, block, count) {
            Ok(runs) => runs,
            Err(e) => return self.protocol_error(format!("reading blocks {block}+{count} for the peer: {e}")),
        };
        for run in runs {
            match run.data {
                Some(data) => self.send(Msg::ResyncData { block: run.block, data }),
                None => {
                    if let Some(p) = &mut self.progress {
                        p.zero_blocks += run.count;
                    }
                    self.send(Msg::ResyncZeros { block: run.block, count: run.count });
                }
            }
        }
    }

    /// Sync target: takes the answer to blocks `[block, block + count)` it asked for, or says
    /// why it is not one.
    fn take_answer(&mut self, what: &str, block: u64, count: u64) -> Result<&mut SyncTarget, String> {
        if !self.run_in_range(block, count) {
            return Err(format!("{what} for blocks {block}+{count}"));
        }
        let repl = self.repl;
        let t = self.sync_target.as_mut().ok_or_else(|| format!("{what} for blocks {block}+{count} while {repl:?}"))?;
        if !t.answered(block, count) {
            return Err(format!("{what} for blocks {block}+{count} that were not requested"));
        }
        Ok(t)
    }

    pub(super) fn on_resync_data(&mut self, block: u64, data: Vec<u8>) {
        let count = data.len() as u64 / BM_BLOCK;
        if !(data.len() as u64).is_multiple_of(BM_BLOCK) {
            return self.protocol_error(format!("resync data for block {block}, {} bytes", data.len()));
        }
        if let Err(e) = self.take_answer("resync data", block, count) {
            return self.protocol_error(e);
        }
        if let Err(e) = self.local_write(block * BM_BLOCK, &data) {
            return self.protocol_error(format!("writing resync data: {e}"));
        }
        self.resynced(block, count, 0);
    }

    /// Blocks all zeros on the source: ours are made to read as zeros where they do not already
    /// (a hole punched in the replica file), so a fresh sparse replica stays sparse; its holes
    /// are not read.
    pub(super) fn on_resync_zeros(&mut self, block: u64, count: u64) {
        match self.take_answer("resync zeros", block, count) {
            Ok(t) => t.zeros_answered(count),
            Err(e) => return self.protocol_error(e),
        }
        let zeroed = block_runs(&*self.data, block, count).and_then(|ours| {
            for run in ours.into_iter().filter(|r| r.data.is_some()) {
                self.data.zero_range(run.block * BM_BLOCK, run.count * BM_BLOCK)?;
            }
            Ok(())
        });
        if let Err(e) = zeroed {
            return self.protocol_error(format!("zeroing resynced blocks {block}+{count}: {e}"));
        }
        self.resynced(block, count, count);
    }

    /// Sync target: blocks `[block, block + count)` hold the source's data (`zeros` of them
    /// came as zeros).
    fn resynced(&mut self, block: u64, count: u64, zeros: u64) {
        let cleared = (block..block + count).filter(|&b| self.bitmap.clear(b)).count() as u64;
        if let Some(p) = &mut self.progress {
            p.done_blocks += cleared;
            p.zero_blocks += zeros;
        }
        self.send(Msg::ResyncAck { block, count });
        self.start_waiting();
        self.plan_resync();
    }

    /// Sync source: the target holds the blocks now.
    pub(super) fn on_resync_ack(&mut self, block: u64, count: u64) {
        if !self.run_in_range(block, count) {
            return self.protocol_error(format!("resync ack for blocks {block}+{count}"));
        }
        let cleared = (block..block + count).filter(|&b| self.bitmap.clear(b)).count() as u64;
        if let Some(p) = &mut self.progress {
            p.done_blocks += cleared;
        }
    }

    /// Sync target: request what the rate allows; finish when the bitmap is empty.
    pub(super) fn plan_resync(&mut self) {
        let Some(t) = self.sync_target.as_mut() else { return };
        let runs = t.plan(self.now, &self.bitmap);
        let finished = self.bitmap.is_empty() && t.idle();
        let source_current = t.source_current;
        for (block, count) in runs {
            self.send(Msg::ResyncRequest { block, count });
        }
        if !finished {
            return;
        }
        self.sync_target = None;
        self.sup.gens.adopt(source_current);
        self.sup.flags = (self.sup.flags | flags::CONSISTENT) & !flags::CRASHED_PRIMARY;
        self.mark_fresh_in_sync();
        let saved = self.save_bitmap().and_then(|()| self.save_super());
        if let Err(e) = saved {
            return self.protocol_error(format!("finishing the resync: {e}"));
        }
        self.finish_resync("target");
        self.send(Msg::ResyncDone);
        self.start_waiting();
    }

    pub(super) fn finish_resync(&mut self, side: &str) {
        if let Some(p) = self.progress.take() {
            let ms = self.now.saturating_sub(p.started_ms);
            let (blocks, zero_blocks) = (p.done_blocks, p.zero_blocks);
            tracing::info!(side, blocks, zero_blocks, ms, bytes_per_sec = p.speed(self.now), "resync finished");
            self.last_resync = Some(ResyncSummary { blocks, zero_blocks, ms });
        }
        self.repl = Repl::Established;
    }

    pub(super) fn on_resync_done(&mut self) {
        if self.repl != Repl::SyncSource {
            return self.protocol_error(format!("resync done while {:?}", self.repl));
        }
        self.sup.gens.in_sync();
        self.sup.flags &= !flags::CRASHED_PRIMARY;
        self.mark_fresh_in_sync();
        if let Err(e) = self.save_bitmap().and_then(|()| self.save_super()) {
            return self.protocol_error(format!("finishing the resync: {e}"));
        }
        self.finish_resync("source");
    }

    /// Two replicas that met in sync while "just created", or that a finished resync of such a
    /// generation made equal (the first full sync after mkfs on one node): each may later count
    /// its bitmap from here (`generation::decide`), so a node that was apart for a while is
    /// resynced from the bitmap, not in full.
    pub(super) fn mark_fresh_in_sync(&mut self) {
        if self.sup.gens.current == JUST_CREATED {
            self.sup.flags |= flags::FRESH_IN_SYNC;
        }
    }

    pub(super) fn plan_verify(&mut self) {
        let Some(v) = self.verify.as_mut() else { return };
        let Some((start, count)) = v.next_batch(self.now) else { return };
        match verify::digests(&*self.data, start, count) {
            Ok(digests) => self.send(Msg::VerifyBatch { start, digests }),
            Err(e) => {
                tracing::error!(error = %e, "online verify aborted: local read failed");
                self.verify = None;
            }
        }
    }

    pub(super) fn on_verify_batch(&mut self, start: u64, digests: Vec<crate::dev::mirror::proto::Digest>) {
        let count = digests.len() as u64;
        if start.checked_add(count).is_none_or(|end| end > self.bitmap.len()) {
            return self.protocol_error(format!("verify batch of {count} blocks at {start}"));
        }
        if self.verify.is_some() && self.cfg.node_id > self.cfg.peer_id {
            // Both nodes started a verify: the lower node's runs, ours yields (two would each
            // end as sync source of the other).
            tracing::warn!("the peer runs an online verify too; ours stops in favour of the lower node's");
            self.verify = None;
        }
        let ours = match verify::digests(&*self.data, start, count) {
            Ok(d) => d,
            Err(e) => return self.protocol_error(format!("verify: local read failed: {e}")),
        };
        let mismatched: Vec<u64> = (start..start + count)
            .zip(ours.iter().zip(&digests))
            .filter(|(_, (a, b))| a != b)
            .map(|(b, _)| b)
            .collect();
        if let Err(e) = self.mark_blocks(&mismatched) {
            return self.protocol_error(format!("verify: {e}"));
        }
        self.send(Msg::VerifyReply { start, mismatched });
    }

    pub(super) fn mark_blocks(&mut self, blocks: &[u64]) -> Result<(), IoFailure> {
        for &b in blocks {
            if b >= self.bitmap.len() {
                let offset = b.saturating_mul(BM_BLOCK);
                return Err(IoFailure::OutOfRange { offset, len: BM_BLOCK, size: self.sup.data_size });
            }
            tracing::warn!(block = b, "online verify: block differs between the replicas");
            self.bitmap.set_range(b, b + 1);
        }
        self.save_bitmap()
    }

    pub(super) fn on_verify_reply(&mut self, mismatched: Vec<u64>) {
        if let Err(e) = self.mark_blocks(&mismatched) {
            return self.protocol_error(format!("verify reply: {e}"));
        }
        // A reply to a verify that yielded to the peer's: its findings are marked, nothing more.
        let Some(v) = self.verify.as_mut() else { return };
        v.answered(mismatched.len() as u64);
        let status = v.status();
        if !status.finished {
            return self.plan_verify();
        }
        self.verify = None;
        self.last_verify = Some(status);
        tracing::info!(out_of_sync = status.out_of_sync_blocks, "online verify finished");
        // Everything marked, this walk's findings and those of a peer's walk that yielded to it.
        let oos = self.bitmap.runs();
        let repair = !oos.is_empty() && self.repl == Repl::Established;
        self.send(Msg::VerifyDone { oos });
        if repair {
            // The verifying node's data is taken as right (DRBD resyncs verify findings from
            // the node that ran it on the next connect; we do it at once).
            self.progress = Some(Progress::new(self.bitmap.count(), self.now));
            self.repl = Repl::SyncSource;
        }
    }

    pub(super) fn on_verify_done(&mut self, oos: Vec<(u64, u64)>) {
        if oos.is_empty() || self.repl != Repl::Established {
            return;
        }
        self.bitmap.merge_runs(&oos);
        if let Err(e) = self.save_bitmap() {
            return self.protocol_error(format!("verify done: {e}"));
        }
        self.verify_target_pending = true;
        self.become_verify_target();
    }

    pub(super) fn become_verify_target(&mut self) {
        if !self.verify_target_pending || self.in_flight.values().any(|r| r.completed) {
            return;
        }
        self.verify_target_pending = false;
        let current = self.sup.gens.current;
        self.progress = Some(Progress::new(self.bitmap.count(), self.now));
        self.repl = Repl::SyncTarget;
        self.sync_target = Some(SyncTarget::new(current, self.cfg.rate_bytes_per_sec, self.cfg.resync_depth, self.now));
        if let Err(e) = self.set_flag(flags::CONSISTENT, false) {
            return self.protocol_error(format!("starting the verify resync: {e}"));
        }
        self.plan_resync();
    }
}
