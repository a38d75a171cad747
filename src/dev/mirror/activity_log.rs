//! The activity log: the set of replica extents ("hot" extents) that may hold writes not yet
//! known to be on both replicas.
//!
//! As DRBD's activity log: before a write touches an extent that is not hot, the new set is
//! written to the meta-disk (an AL transaction); an extent leaves the set only when no write to
//! it is in flight, least recently used first, and the set never holds more than `al-extents`
//! extents. After a crash of a primary, every block of the recorded extents is marked out of sync,
//! so a resync bounded by `al-extents × extent size` repairs whatever the crash left half-done.

use std::collections::HashMap;

/// Default extent size: 4 MiB, as DRBD.
pub const DEFAULT_EXTENT_SHIFT: u32 = 22;
/// Largest `al-extents` a transaction sector can hold (4-byte extent numbers in 4 KiB).
pub const MAX_EXTENTS: usize = 1000;

/// Why a write cannot enter the log now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Clone)]
pub struct ActivityLog {
    capacity: usize,
    shift: u32,
    /// Hot extents, least recently used first.
    lru: Vec<u32>,
    /// Writes in flight per extent.
    busy: HashMap<u32, u32>,
}

impl ActivityLog {
    /// An empty log of `capacity` extents of `1 << shift` bytes, holding `hot` (as read back from
    /// the meta-disk; truncated to the capacity).
    pub fn new(capacity: usize, shift: u32, hot: &[u32]) -> ActivityLog {
        let capacity = capacity.clamp(1, MAX_EXTENTS);
        let mut lru: Vec<u32> = Vec::new();
        for &e in hot.iter().take(capacity) {
            if !lru.contains(&e) {
                lru.push(e);
            }
        }
        ActivityLog { capacity, shift, lru, busy: HashMap::new() }
    }

    pub fn extent_shift(&self) -> u32 {
        self.shift
    }

    /// The extents `[first, last]` a byte range touches.
    pub fn extents_of(&self, offset: u64, len: u64) -> (u32, u32) {
        let last = (offset + len.max(1) - 1) >> self.shift;
        ((offset >> self.shift) as u32, last as u32)
    }

    /// Hot extents, least recently used first.
    pub fn hot(&self) -> &[u32] {
        &self.lru
    }

    /// Marks a write to extents `[first, last]` as in flight, making them hot (evicting idle
    /// extents if needed). Returns whether the hot set changed, in which case the caller writes
    /// an AL transaction before the data; `Full` (and nothing changed) when every hot extent is
    /// busy.
    pub fn begin(&mut self, (first, last): (u32, u32)) -> Result<bool, Full> {
        let new: Vec<u32> = (first..=last).filter(|e| !self.lru.contains(e)).collect();
        let idle = self.lru.iter().filter(|e| !self.busy.contains_key(e) && !(first..=last).contains(*e)).count();
        if new.len() > self.capacity - self.lru.len() + idle {
            return Err(Full);
        }
        for e in first..=last {
            if let Some(i) = self.lru.iter().position(|&x| x == e) {
                self.lru.remove(i);
            } else if self.lru.len() == self.capacity {
                // The count above guarantees an idle extent outside the range.
                let victim = self.lru.iter().position(|x| !self.busy.contains_key(x) && !(first..=last).contains(x));
                let victim = victim.ok_or(Full)?;
                self.lru.remove(victim);
            }
            self.lru.push(e);
            *self.busy.entry(e).or_default() += 1;
        }
        Ok(!new.is_empty())
    }

    /// The write to extents `[first, last]` is known to be on both replicas (or marked out of
    /// sync).
    pub fn complete(&mut self, (first, last): (u32, u32)) {
        for e in first..=last {
            if let Some(n) = self.busy.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(&e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_idle_extents_lru_and_refuses_when_all_busy() {
        let mut al = ActivityLog::new(2, 12, &[]);
        assert_eq!(al.extents_of(4095, 2), (0, 1));
        assert_eq!(al.begin((0, 0)), Ok(true));
        assert_eq!(al.begin((0, 0)), Ok(false));
        assert_eq!(al.begin((1, 1)), Ok(true));
        assert_eq!(al.begin((2, 2)), Err(Full));
        al.complete((0, 0));
        assert_eq!(al.begin((2, 2)), Err(Full), "extent 0 has a second write in flight");
        al.complete((0, 0));
        assert_eq!(al.begin((2, 2)), Ok(true));
        assert_eq!(al.hot(), &[1, 2]);
        assert_eq!(al.begin((5, 7)), Err(Full), "more extents than the log holds");
        assert_eq!(al.hot(), &[1, 2]);
    }
}
