//! The revoke table used during replay, and transaction-ID arithmetic.

use std::collections::HashMap;

/// `a` is after `b` in wrap-around transaction-ID order (signed 32-bit difference, §13.7).
pub fn tid_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `a` is `b` or after it.
pub fn tid_at_or_after(a: u32, b: u32) -> bool {
    a == b || tid_after(a, b)
}

/// Revoked filesystem blocks, each with the newest transaction that revoked it (§13.6).
#[derive(Debug, Default, Clone)]
pub struct RevokeTable {
    newest: HashMap<u64, u32>,
}

impl RevokeTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that transaction `tid` revoked `blkno`; a later revocation supersedes.
    pub fn insert(&mut self, blkno: u64, tid: u32) {
        match self.newest.get_mut(&blkno) {
            Some(t) if tid_after(*t, tid) => {}
            Some(t) => *t = tid,
            None => {
                self.newest.insert(blkno, tid);
            }
        }
    }

    /// A logged copy of `blkno` from transaction `tid` must not be replayed: some transaction
    /// at or after `tid` revoked it.
    pub fn is_revoked(&self, blkno: u64, tid: u32) -> bool {
        self.newest.get(&blkno).is_some_and(|&r| tid_at_or_after(r, tid))
    }

    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_around_order() {
        assert!(tid_after(2, 1));
        assert!(!tid_after(1, 1));
        assert!(tid_after(0, u32::MAX));
        assert!(tid_after(5, 0xFFFF_FFF0));
        assert!(!tid_after(0xFFFF_FFF0, 5));
        assert!(tid_at_or_after(7, 7));
    }

    #[test]
    fn revocation_covers_older_and_same_transactions() {
        let mut t = RevokeTable::new();
        t.insert(100, 5);
        t.insert(100, 3);
        assert!(t.is_revoked(100, 5));
        assert!(t.is_revoked(100, 4));
        assert!(!t.is_revoked(100, 6));
        assert!(!t.is_revoked(101, 1));
        t.insert(100, 9);
        assert!(t.is_revoked(100, 8));
        // Across the wrap: revoked at 2 (after 0xFFFF_FFFE).
        t.insert(7, 2);
        assert!(t.is_revoked(7, 0xFFFF_FFFE));
        assert!(!t.is_revoked(7, 3));
        assert_eq!(t.len(), 2);
    }
}
