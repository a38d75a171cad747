//! View changes. On every new view each member sends the masters of the new view the state of
//! every lock it holds or wants (`Rebuild`), each old master hands what only it knew — the value
//! block and the dead nodes' locks — to the resource's new master (`Handoff`), and then every
//! member tells every other that it is done (`RebuildDone`). A master grants only when it has the
//! marker of every member: o2dlm likewise freezes a domain while it remasters a dead node's
//! resources. Requests in flight at the view change are lost with the old epoch and come back
//! through the rebuild, deduplicated by (node, lock id).

use std::collections::{BTreeMap, BTreeSet};

use super::engine::View;
use super::msg::{Death, Msg};
use super::recovery::Judge;
use super::resource::Resource;
use super::{master_of, Dlm, DlmError, Event, LockError, NodeId};

impl Dlm {
    pub(super) fn change_view(&mut self, epoch: u64, members: &BTreeSet<NodeId>) {
        if let Some(current) = self.view.as_ref().filter(|v| epoch <= v.epoch) {
            return tracing::debug!(epoch, current = current.epoch, "dlm: ignoring an old view");
        }
        let was_ready = std::mem::replace(&mut self.ready, false);
        self.markers.clear();
        let old = self.view.replace(View { epoch, members: members.clone() });
        let removed = old.map(|v| v.members.difference(members).copied().collect()).unwrap_or_default();
        self.deaths.on_view(epoch, &removed, members);
        let mastered = std::mem::take(&mut self.mastered);
        if !members.contains(&self.me) {
            return tracing::info!(epoch, "dlm: this node is not in the view; requests wait for one that has it");
        }
        self.hand_off(mastered, &removed, was_ready);
        self.rebuild_locks();
        let deaths = self.deaths.list();
        for &node in members {
            self.send(node, Msg::RebuildDone { epoch, deaths: deaths.clone() });
        }
        self.announce_recoveries();
    }

    /// Sends each mastered resource's value block and dead nodes' locks to its new master. A
    /// block a removed PW/EX holder may have rewritten is invalidated first (OCFS2 does the same).
    fn hand_off(&mut self, mastered: BTreeMap<super::ResName, Resource>, removed: &BTreeSet<NodeId>, complete: bool) {
        let Some(view) = self.view.as_ref() else { return };
        let (epoch, members) = (view.epoch, view.members.clone());
        let judge = Judge { members: &members, deaths: &self.deaths };
        let mut out = Vec::new();
        for (res, mut r) in mastered {
            if r.written_by_any(removed) {
                r.invalidate_lvb();
            }
            let dead = r.dead_locks(&judge);
            if let Some(to) = master_of(&res, &members) {
                out.push((to, Msg::Handoff { epoch, res, complete, trusted: r.trusted, lvb: r.lvb, dead }));
            }
        }
        for (to, msg) in out {
            self.send(to, msg);
        }
    }

    /// Re-sends every local lock to its master under the new view. A cancel in flight is lost
    /// with the old epoch: the lock is reported without its request, and the cancel completes here.
    fn rebuild_locks(&mut self) {
        let cancelled: Vec<_> = self.locks.iter().filter(|(_, l)| l.cancelling).map(|(&id, _)| id).collect();
        for id in cancelled {
            self.end_wait(id, Err(LockError::Cancelled));
        }
        let epoch = self.epoch_now();
        let reports: Vec<_> = (self.locks.iter())
            .map(|(&id, l)| Msg::Rebuild {
                epoch,
                res: l.res.clone(),
                id,
                granted: l.granted,
                wanted: l.wanted,
                noqueue: l.noqueue,
                unlocking: l.unlocking,
                lvb: l.lvb.clone(),
            })
            .collect();
        for msg in reports {
            if let Msg::Rebuild { res, .. } = &msg {
                if let Some(master) = self.master(res) {
                    self.send(master, msg);
                }
            }
        }
    }

    /// Replays the held messages of the current view; drops older ones.
    pub(super) fn replay_held(&mut self) {
        let Some(epoch) = self.epoch() else { return };
        let held = std::mem::take(&mut self.held);
        for (from, msg) in held {
            match msg.epoch() {
                e if e < epoch => tracing::debug!(from, ?msg, "dlm: dropping a stale held message"),
                e if e == epoch => self.dispatch(from, msg),
                _ => self.held.push_back((from, msg)),
            }
        }
    }

    fn announce_recoveries(&mut self) {
        if self.is_member() {
            for dead in self.deaths.take_new_assignments(self.me) {
                tracing::info!(dead, "dlm: this node recovers the dead node");
                self.emit(Event::RecoverNode { dead });
            }
        }
    }

    pub(super) fn on_rebuild_done(&mut self, from: NodeId, deaths: Vec<Death>) {
        let Some(view) = self.view.as_ref() else { return };
        self.deaths.merge(&deaths, &view.members);
        self.markers.insert(from);
        let complete = view.members.is_subset(&self.markers);
        self.announce_recoveries();
        if complete && !self.ready {
            self.finish_rebuild();
        }
    }

    /// All markers are in: judge what the rebuild could not establish, then start granting. A
    /// resource the old master did not hand off complete has lost its value block (invalidated)
    /// and, while any dead node is unrecovered, that node's locks on it (see `phantom_ex_blocks`).
    fn finish_rebuild(&mut self) {
        self.ready = true;
        let Some(view) = self.view.as_ref() else { return };
        let judge = Judge { members: &view.members, deaths: &self.deaths };
        let all_recovered = !self.deaths.any_unrecovered();
        for r in self.mastered.values_mut() {
            r.drop_released(&judge);
            let handoff = r.handoff.take().filter(|h| h.complete);
            if handoff.is_none() {
                r.invalidate_lvb();
            }
            r.trusted = handoff.is_some_and(|h| h.trusted) || all_recovered;
        }
        self.settle_all();
    }

    fn settle_all(&mut self) {
        let names: Vec<_> = self.mastered.keys().cloned().collect();
        for name in names {
            self.settle(&name);
        }
    }

    /// A death is recovered: its locks stop counting; with none left unrecovered every mastered
    /// resource is fully known again.
    pub(super) fn apply_recovered(&mut self, node: NodeId, death_epoch: u64, recoverer: NodeId) {
        if !self.deaths.mark_recovered(node, death_epoch, recoverer) || !self.ready {
            return;
        }
        let Some(view) = self.view.as_ref() else { return };
        let judge = Judge { members: &view.members, deaths: &self.deaths };
        let all_recovered = !self.deaths.any_unrecovered();
        for r in self.mastered.values_mut() {
            r.drop_released(&judge);
            r.trusted |= all_recovered;
        }
        self.settle_all();
    }

    pub(super) fn finish_recovery(&mut self, dead: NodeId) -> Result<(), DlmError> {
        let epochs = self.deaths.assigned(dead);
        if epochs.is_empty() {
            return Err(DlmError::NotRecovering(dead));
        }
        let me = self.me;
        let others: Vec<NodeId> =
            (self.view.iter()).flat_map(|v| v.members.iter().copied()).filter(|&n| n != me).collect();
        let epoch = self.epoch_now();
        for death_epoch in epochs {
            self.apply_recovered(dead, death_epoch, self.me);
            for &to in &others {
                self.send(to, Msg::Recovered { epoch, node: dead, death_epoch });
            }
        }
        Ok(())
    }
}
