//! Online verify (DRBD `verify-alg sha1`): the initiator sends SHA-1 digests of its blocks in
//! batches, rate-limited; the peer compares them with its own, and both mark differing blocks
//! out of sync. When the walk ends the initiator becomes the sync source of what was found.

use serde::Serialize;
use sha1::{Digest as _, Sha1};

use super::bitmap::BM_BLOCK;
use super::proto::Digest;
use super::resync::RateLimiter;
use crate::dev::{BlockDevice, DevError};

/// SHA-1 of each block of `[start, start + count)`.
pub fn digests(dev: &dyn BlockDevice, start: u64, count: u64) -> Result<Vec<Digest>, DevError> {
    let mut buf = vec![0u8; BM_BLOCK as usize];
    (start..start + count)
        .map(|b| {
            dev.read_at(&mut buf, b * BM_BLOCK)?;
            Ok(Sha1::digest(&buf).into())
        })
        .collect()
}

/// Where a verify run stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct VerifyStatus {
    pub done_blocks: u64,
    pub total_blocks: u64,
    pub out_of_sync_blocks: u64,
    pub finished: bool,
}

/// The initiator's walk.
#[derive(Debug)]
pub struct Verify {
    next: u64,
    total: u64,
    batch: u64,
    outstanding: bool,
    found: u64,
    limiter: RateLimiter,
}

impl Verify {
    pub fn new(total_blocks: u64, batch: u64, rate: u64, now_ms: u64) -> Verify {
        Verify {
            next: 0,
            total: total_blocks,
            batch: batch.max(1),
            outstanding: false,
            found: 0,
            limiter: RateLimiter::new(rate, now_ms),
        }
    }

    /// The next batch `(start, count)` to send, if none is outstanding and the rate allows.
    pub fn next_batch(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        if self.outstanding || self.next >= self.total {
            return None;
        }
        let count = self.batch.min(self.total - self.next);
        if !self.limiter.take(now_ms, count * BM_BLOCK) {
            return None;
        }
        self.outstanding = true;
        let start = self.next;
        self.next += count;
        Some((start, count))
    }

    /// The peer answered the outstanding batch with `mismatched` blocks.
    pub fn answered(&mut self, mismatched: u64) {
        self.outstanding = false;
        self.found += mismatched;
    }

    pub fn status(&self) -> VerifyStatus {
        let finished = !self.outstanding && self.next >= self.total;
        VerifyStatus { done_blocks: self.next, total_blocks: self.total, out_of_sync_blocks: self.found, finished }
    }
}
