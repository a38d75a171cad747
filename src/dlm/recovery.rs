//! Dead nodes and their recovery. A node removed from a view is dead (fenced or crashed); its
//! granted locks stay in force until the recovery node — the lowest-numbered member of the view
//! that removed it, or of a later view if that one dies too — has run the filesystem's recovery
//! (OCFS2: replay its journal while holding its journal lock) and announced it. The records merge
//! like a grow-only set (deaths are facts, `recovered` only turns true), so members that missed a
//! `Recovered` message, and nodes that join later, converge through the rebuild markers.

use std::collections::{BTreeMap, BTreeSet};

use super::msg::Death;
use super::NodeId;

#[derive(Debug, Default)]
pub(super) struct Deaths {
    records: BTreeMap<(NodeId, u64), Death>,
    /// Records this node was told to recover (an `Event::RecoverNode` went out for them).
    announced: BTreeSet<(NodeId, u64)>,
}

impl Deaths {
    /// Records the nodes `removed` by the view `epoch` and hands unfinished recoveries whose
    /// recovery node left to the lowest member.
    pub fn on_view(&mut self, epoch: u64, removed: &BTreeSet<NodeId>, members: &BTreeSet<NodeId>) {
        let Some(&lowest) = members.first() else { return };
        for &node in removed {
            self.records.insert((node, epoch), Death { node, epoch, recoverer: lowest, recovered: false });
        }
        self.reassign(members);
    }

    fn reassign(&mut self, members: &BTreeSet<NodeId>) {
        let Some(&lowest) = members.first() else { return };
        for d in self.records.values_mut().filter(|d| !d.recovered && !members.contains(&d.recoverer)) {
            d.recoverer = lowest;
        }
    }

    /// Merges another member's records (from its rebuild marker).
    pub fn merge(&mut self, others: &[Death], members: &BTreeSet<NodeId>) {
        for d in others {
            let mine = self.records.entry((d.node, d.epoch)).or_insert_with(|| d.clone());
            mine.recovered |= d.recovered;
        }
        self.reassign(members);
    }

    /// Dead nodes newly given to `me` to recover, each once.
    pub fn take_new_assignments(&mut self, me: NodeId) -> BTreeSet<NodeId> {
        let new: Vec<(NodeId, u64)> = (self.records.values())
            .filter(|d| !d.recovered && d.recoverer == me)
            .map(|d| (d.node, d.epoch))
            .filter(|key| !self.announced.contains(key))
            .collect();
        self.announced.extend(new.iter().copied());
        new.into_iter().map(|(node, _)| node).collect()
    }

    /// The unrecovered deaths of `node` announced to this node: what `recovery_done(node)` finishes.
    pub fn assigned(&self, node: NodeId) -> Vec<u64> {
        (self.records.values())
            .filter(|d| d.node == node && !d.recovered && self.announced.contains(&(d.node, d.epoch)))
            .map(|d| d.epoch)
            .collect()
    }

    /// Marks a death recovered (recording it if it was unknown); true when that changed something.
    pub fn mark_recovered(&mut self, node: NodeId, epoch: u64, recoverer: NodeId) -> bool {
        let d = self.records.entry((node, epoch)).or_insert(Death { node, epoch, recoverer, recovered: false });
        !std::mem::replace(&mut d.recovered, true)
    }

    pub fn list(&self) -> Vec<Death> {
        self.records.values().cloned().collect()
    }

    pub fn any_unrecovered(&self) -> bool {
        self.records.values().any(|d| !d.recovered)
    }

    pub fn unrecovered_nodes(&self) -> BTreeSet<NodeId> {
        self.records.values().filter(|d| !d.recovered).map(|d| d.node).collect()
    }

    fn is_unrecovered(&self, node: NodeId) -> bool {
        self.records.values().any(|d| d.node == node && !d.recovered)
    }
}

/// The rules a master applies to a request while dead nodes are unrecovered.
pub(super) struct Judge<'a> {
    pub members: &'a BTreeSet<NodeId>,
    pub deaths: &'a Deaths,
}

impl Judge<'_> {
    pub fn alive(&self, node: NodeId) -> bool {
        self.members.contains(&node)
    }

    /// A dead node's lock that no longer counts at all: its recovery is finished.
    pub fn is_released(&self, holder: NodeId) -> bool {
        !self.alive(holder) && !self.deaths.is_unrecovered(holder)
    }

    /// Whether `requester`'s request ignores `holder`'s lock: the recovery node is judged as if
    /// the dead node it recovers held nothing (it needs that node's locks to replay its journal).
    pub fn ignores(&self, requester: NodeId, holder: NodeId) -> bool {
        !self.alive(holder)
            && (self.deaths.records.values()).all(|d| d.node != holder || d.recovered || d.recoverer == requester)
    }

    /// Whether `node` is recovering a dead node.
    pub fn is_recovering(&self, node: NodeId) -> bool {
        self.deaths.records.values().any(|d| !d.recovered && d.recoverer == node)
    }

    /// On a resource whose dead nodes' locks may be unknown (its old master died, or a rebuild
    /// was cut short), every unrecovered dead node may have held EX: only NL is grantable, except
    /// to the node that recovers them all.
    pub fn phantom_ex_blocks(&self, requester: NodeId) -> bool {
        self.deaths.records.values().any(|d| !d.recovered && d.recoverer != requester)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nodes: &[NodeId]) -> BTreeSet<NodeId> {
        nodes.iter().copied().collect()
    }

    #[test]
    fn recovery_passes_to_the_next_lowest_and_merges() {
        let (mut d, mut d1) = (Deaths::default(), Deaths::default());
        d1.on_view(2, &set(&[0]), &set(&[1, 2]));
        assert_eq!(d1.take_new_assignments(1), set(&[0]));
        assert!(d1.take_new_assignments(1).is_empty(), "announced once");
        d.on_view(2, &set(&[0]), &set(&[1, 2]));
        assert!(d.take_new_assignments(2).is_empty());
        d.on_view(3, &set(&[1]), &set(&[2, 3]));
        assert_eq!(d.take_new_assignments(2), set(&[0, 1]));
        let mut joiner = Deaths::default();
        joiner.merge(&d.list(), &set(&[2, 3]));
        assert!(joiner.take_new_assignments(3).is_empty());
        assert!(d.mark_recovered(0, 2, 2) && !d.mark_recovered(0, 2, 2));
        joiner.merge(&d.list(), &set(&[2, 3]));
        assert_eq!(joiner.unrecovered_nodes(), set(&[1]));
        assert_eq!(d.assigned(1), vec![3]);
    }
}
