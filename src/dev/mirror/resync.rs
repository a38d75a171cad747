//! Resync bookkeeping: the rate limiter (DRBD's `rate`), the sync target's request planner, and
//! progress figures for status.
//!
//! As DRBD, the sync target drives the resync: it walks its bitmap (which holds the union of both
//! nodes' bits) and asks the source for one block at a time, at most `depth` requests in flight and
//! no faster than the rate allows. The engine is given the clock, so the limiter counts the bytes
//! allowed since the last call.

use std::collections::BTreeSet;

use serde::Serialize;

use super::bitmap::{Bitmap, BM_BLOCK};

/// A token bucket in bytes per second, refilled from the engine's clock (milliseconds).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: u64,
    budget: u64,
    last_ms: u64,
}

impl RateLimiter {
    pub fn new(rate: u64, now_ms: u64) -> RateLimiter {
        RateLimiter { rate: rate.max(BM_BLOCK), budget: BM_BLOCK, last_ms: now_ms }
    }

    /// Takes `bytes` if the budget allows. The bucket holds at most a tenth of a second's worth
    /// (and at least one block), so a pause is not followed by a burst.
    pub fn take(&mut self, now_ms: u64, bytes: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if elapsed > 0 {
            let cap = (self.rate / 10).max(bytes);
            self.budget = (self.budget + self.rate.saturating_mul(elapsed) / 1000).min(cap);
            self.last_ms = now_ms;
        }
        if self.budget >= bytes {
            self.budget -= bytes;
            true
        } else {
            false
        }
    }
}

/// Blocks moved so far, for status and logs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Progress {
    pub total_blocks: u64,
    pub done_blocks: u64,
    pub started_ms: u64,
}

impl Progress {
    pub fn new(total_blocks: u64, now_ms: u64) -> Progress {
        Progress { total_blocks, done_blocks: 0, started_ms: now_ms }
    }

    /// Bytes per second since the start.
    pub fn speed(&self, now_ms: u64) -> u64 {
        let ms = now_ms.saturating_sub(self.started_ms).max(1);
        self.done_blocks * BM_BLOCK * 1000 / ms
    }
}

/// The sync target's side of a resync.
#[derive(Debug)]
pub struct SyncTarget {
    /// The generation the target holds once its bitmap is empty.
    pub source_current: u64,
    requested: BTreeSet<u64>,
    cursor: u64,
    limiter: RateLimiter,
    depth: usize,
}

impl SyncTarget {
    pub fn new(source_current: u64, rate: u64, depth: usize, now_ms: u64) -> SyncTarget {
        SyncTarget {
            source_current,
            requested: BTreeSet::new(),
            cursor: 0,
            limiter: RateLimiter::new(rate, now_ms),
            depth: depth.max(1),
        }
    }

    /// Blocks to request now: set in `bitmap`, not yet requested, within depth and rate.
    pub fn plan(&mut self, now_ms: u64, bitmap: &Bitmap) -> Vec<u64> {
        let mut out = Vec::new();
        let mut wrapped = false;
        while self.requested.len() < self.depth {
            let next = match bitmap.next_set(self.cursor) {
                Some(b) => b,
                None if !wrapped && self.cursor > 0 => {
                    wrapped = true;
                    self.cursor = 0;
                    continue;
                }
                None => break,
            };
            if wrapped && self.requested.contains(&next) {
                break;
            }
            self.cursor = next + 1;
            if self.requested.contains(&next) {
                continue;
            }
            if !self.limiter.take(now_ms, BM_BLOCK) {
                self.cursor = next;
                break;
            }
            self.requested.insert(next);
            out.push(next);
        }
        out
    }

    /// Whether `block` was requested and not yet answered.
    pub fn is_requested(&self, block: u64) -> bool {
        self.requested.contains(&block)
    }

    /// Whether any block of `[first, end)` has a request in flight.
    pub fn any_requested(&self, first: u64, end: u64) -> bool {
        self.requested.range(first..end).next().is_some()
    }

    /// The answer to `block` arrived; false if it was not asked for (stale).
    pub fn answered(&mut self, block: u64) -> bool {
        self.requested.remove(&block)
    }

    pub fn idle(&self) -> bool {
        self.requested.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_follows_the_rate_without_bursts() {
        let mut l = RateLimiter::new(40 * BM_BLOCK, 0);
        let mut taken = 0;
        for ms in 0..10_000 {
            while l.take(ms, BM_BLOCK) {
                taken += 1;
            }
        }
        assert!((390..=410).contains(&taken), "{taken} blocks in 10 s at 40 blocks/s");
        let mut l = RateLimiter::new(40 * BM_BLOCK, 0);
        assert!(l.take(0, BM_BLOCK));
        let after_pause = (0..100).filter(|_| l.take(60_000, BM_BLOCK)).count();
        assert!(after_pause <= 4, "{after_pause}");
    }

    #[test]
    fn planner_respects_depth_and_skips_requested_blocks() {
        let mut bm = Bitmap::new(100);
        bm.set_range(10, 20);
        let mut t = SyncTarget::new(7, 1 << 30, 4, 0);
        assert_eq!(t.plan(1, &bm), vec![10, 11, 12, 13]);
        assert!(t.plan(2, &bm).is_empty());
        assert!(t.answered(11) && !t.answered(11));
        bm.clear(11);
        assert_eq!(t.plan(3, &bm), vec![14]);
        assert!(t.any_requested(12, 13) && !t.any_requested(15, 100));
        for b in [10, 12, 13, 14] {
            t.answered(b);
            bm.clear(b);
        }
        bm.set_range(2, 3);
        assert_eq!(t.plan(4, &bm), vec![15, 16, 17, 18]);
        for b in 15..19 {
            t.answered(b);
            bm.clear(b);
        }
        assert_eq!(t.plan(5, &bm), vec![19, 2], "wraps to bits behind the cursor");
    }
}
