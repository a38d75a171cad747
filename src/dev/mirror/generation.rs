//! Generation identifiers (DRBD 8's "UUIDs") and the handshake decision they drive.
//!
//! Each replica carries a *current* id naming the data generation it holds, a *bitmap* id naming
//! the generation its out-of-sync bitmap is relative to (0 when the bitmap tracks nothing), and
//! [`HISTORY`] *history* ids of older generations (DRBD keeps two; we keep eight, so that a run of
//! interrupted resyncs and new generations does not push the common ancestor out). A node that changes its data while it cannot reach
//! its peer starts a new generation: the old current id becomes the bitmap id (or goes to the
//! history if a bitmap id is already set) and a fresh random id becomes current. Comparing the
//! two nodes' ids on connect tells who holds newer data, whether the bitmap suffices or a full
//! sync is needed, and whether both changed apart (split brain), as `drbd_uuid_compare` does.

use serde::{Deserialize, Serialize};

/// History ids kept.
pub const HISTORY: usize = 8;

/// The current id of a replica that never held data (DRBD's `UUID_JUST_CREATED`).
pub const JUST_CREATED: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenIds {
    pub current: u64,
    pub bitmap: u64,
    pub history: [u64; HISTORY],
}

impl GenIds {
    pub fn just_created() -> GenIds {
        GenIds { current: JUST_CREATED, bitmap: 0, history: [0; HISTORY] }
    }

    fn push_history(&mut self, id: u64) {
        if id != 0 && !self.history.contains(&id) {
            self.history.rotate_right(1);
            self.history[0] = id;
        }
    }

    /// Starts a new generation `fresh`: called before the first write this node completes while
    /// its peer may not have it (DRBD's new current UUID on a disconnected primary).
    pub fn new_current(&mut self, fresh: u64) {
        if self.bitmap == 0 {
            self.bitmap = self.current;
        } else {
            self.push_history(self.current);
        }
        self.current = fresh;
    }

    /// Both replicas now hold this generation: the bitmap id goes to the history.
    pub fn in_sync(&mut self) {
        self.push_history(self.bitmap);
        self.bitmap = 0;
    }

    /// A finished resync made this replica a copy of generation `source_current`.
    pub fn adopt(&mut self, source_current: u64) {
        if self.current != source_current && self.current != JUST_CREATED {
            self.push_history(self.current);
        }
        self.current = source_current;
        self.bitmap = 0;
    }

    /// This replica becomes the target of a resync from a peer with ids `source`. Its ids step
    /// back to what it will still share with the source if the resync is cut short: the
    /// source's bitmap generation after a split brain, "just created" for a full sync (DRBD
    /// likewise rewrites a sync target's UUIDs when the resync starts). An interrupted resync
    /// then resumes from the same source.
    pub fn start_sync_target(&mut self, source: &GenIds, full: bool) {
        let base = if full {
            JUST_CREATED
        } else if source.current == self.current || source.bitmap == 0 {
            self.current
        } else {
            source.bitmap
        };
        if self.current != base {
            if self.current != JUST_CREATED {
                self.push_history(self.current);
            }
            self.current = base;
        }
        self.bitmap = 0;
    }

    fn ancestors(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.bitmap).chain(self.history).filter(|&id| id != 0)
    }
}

/// One side's view at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub gens: GenIds,
    /// The replica holds a whole generation (not a half-done sync target).
    pub consistent: bool,
    /// The node crashed while primary and marked its activity-log extents out of sync.
    pub crashed_primary: bool,
    /// The administrator asked this side to throw away its changes (`discard-my-data`).
    pub discard_my_data: bool,
    /// The out-of-sync bitmap has bits set.
    pub has_bits: bool,
    /// Met the peer while both were just created (meta flag FRESH_IN_SYNC).
    pub fresh_in_sync: bool,
}

/// What the handshake concludes, from this node's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Same generation and nothing out of sync.
    InSync,
    /// Resync the union of both bitmaps (every block when `full`).
    Resync {
        source: bool,
        full: bool,
    },
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "split brain: both nodes changed their data while apart; run `o2fs discard-my-data` on the node \
         whose changes are to be thrown away"
    )]
    SplitBrain,
    #[error("split brain, and both nodes asked to discard their data; clear it on one (`o2fs connect`)")]
    BothDiscard,
    #[error("the replicas hold unrelated data (no common generation); invalidate one (`o2fs invalidate`)")]
    Unrelated,
    #[error("the node that holds the newer data has an inconsistent replica (a resync into it did not finish)")]
    SourceInconsistent,
}

/// Compares this node's ids with the peer's; `lower` says whether this node has the lower node id
/// (the tie-breaker, as DRBD's discard/resolve-conflicts flag). The rules are symmetric: the peer
/// computing `decide(peer, me, !lower)` reaches the mirror-image decision.
pub fn decide(me: &Side, peer: &Side, lower: bool) -> Decision {
    let (m, p) = (me.gens, peer.gens);
    let resync = |source: bool, full: bool| {
        let src = if source { me } else { peer };
        if src.consistent {
            Decision::Resync { source, full }
        } else {
            Decision::Refuse(Refusal::SourceInconsistent)
        }
    };
    // A freshly made replica meets one with data (mkfs ran on one node): full sync from it. Two
    // fresh replicas stay "just created" (and are in sync) until one writes while apart: a
    // generation adopted at the handshake could reach one side only, and fake a split brain.
    // The node with data may use its bitmap instead when it knows the fresh peer's replica
    // equalled its own when both were just created and its bitmap counts from then.
    let full_from = |s: &Side| !(s.fresh_in_sync && s.gens.bitmap == JUST_CREATED);
    match (m.current == JUST_CREATED, p.current == JUST_CREATED) {
        (true, false) => return resync(false, full_from(peer)),
        (false, true) => return resync(true, full_from(me)),
        _ => {}
    }
    if m.current == p.current {
        if !me.has_bits && !peer.has_bits && me.consistent && peer.consistent {
            return Decision::InSync;
        }
        // Same generation but blocks to repair (a crashed primary's activity log, verify
        // findings, an interrupted resync): the consistent side, then the crashed primary (DRBD
        // resyncs from it), then the lower node id is the source.
        let source = if me.consistent != peer.consistent {
            me.consistent
        } else if me.crashed_primary != peer.crashed_primary {
            me.crashed_primary
        } else {
            lower
        };
        return resync(source, false);
    }
    if m.bitmap != 0 && m.bitmap == p.current {
        return resync(true, false);
    }
    if p.bitmap != 0 && p.bitmap == m.current {
        return resync(false, false);
    }
    if m.history.contains(&p.current) {
        return resync(true, true);
    }
    if p.history.contains(&m.current) {
        return resync(false, true);
    }
    if m.ancestors().any(|a| p.ancestors().any(|b| a == b)) {
        // Both moved on from a common generation: split brain. Only an administrator's
        // discard-my-data on one side resolves it; the bitmaps suffice when both start from the
        // same bitmap generation, else everything moves.
        let full = m.bitmap == 0 || m.bitmap != p.bitmap;
        return match (me.discard_my_data, peer.discard_my_data) {
            (true, false) => resync(false, full),
            (false, true) => resync(true, full),
            (true, true) => Decision::Refuse(Refusal::BothDiscard),
            (false, false) => Decision::Refuse(Refusal::SplitBrain),
        };
    }
    Decision::Refuse(Refusal::Unrelated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(gens: GenIds) -> Side {
        Side {
            gens,
            consistent: true,
            crashed_primary: false,
            discard_my_data: false,
            has_bits: false,
            fresh_in_sync: false,
        }
    }

    fn both(a: &Side, b: &Side) -> (Decision, Decision) {
        (decide(a, b, true), decide(b, a, false))
    }

    #[test]
    fn decisions_are_mirror_images() {
        let fresh = side(GenIds::just_created());
        assert_eq!(both(&fresh, &fresh), (Decision::InSync, Decision::InSync));
        let mut written = GenIds::just_created();
        written.new_current(77);
        let full = (Decision::Resync { source: true, full: true }, Decision::Resync { source: false, full: true });
        assert_eq!(both(&side(written), &fresh), full);
        let met = Side { fresh_in_sync: true, ..side(written) };
        let by_bitmap =
            (Decision::Resync { source: true, full: false }, Decision::Resync { source: false, full: false });
        assert_eq!(both(&met, &fresh), by_bitmap);

        let base = GenIds { current: 10, bitmap: 0, history: [0; HISTORY] };
        assert_eq!(both(&side(base), &side(base)), (Decision::InSync, Decision::InSync));
        let mut ahead = base;
        ahead.new_current(11);
        let bm = (Decision::Resync { source: true, full: false }, Decision::Resync { source: false, full: false });
        assert_eq!(both(&side(ahead), &side(base)), bm);
        let mut further = ahead;
        further.new_current(12);
        assert_eq!(further.bitmap, 10, "the bitmap still counts from the generation the peer has");
        assert_eq!(both(&side(further), &side(base)), bm);

        let mut other = base;
        other.new_current(20);
        let sb = Decision::Refuse(Refusal::SplitBrain);
        assert_eq!(both(&side(ahead), &side(other)), (sb, sb));
        let victim = Side { discard_my_data: true, ..side(other) };
        assert_eq!(both(&side(ahead), &victim), bm);

        let crashed = Side { crashed_primary: true, has_bits: true, ..side(base) };
        assert_eq!(both(&side(base), &crashed), (bm.1, bm.0));
        let target = Side { consistent: false, ..side(base) };
        assert_eq!(both(&target, &crashed), (bm.1, bm.0));

        let unrelated = side(GenIds { current: 99, bitmap: 98, history: [97, 0, 0, 0, 0, 0, 0, 0] });
        assert_eq!(decide(&side(ahead), &unrelated, true), Decision::Refuse(Refusal::Unrelated));
        let mut synced = base;
        synced.adopt(11);
        ahead.in_sync();
        assert_eq!((synced.current, ahead.bitmap, ahead.history[0]), (11, 0, 10));
    }
}
