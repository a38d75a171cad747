//! The master's side: requests from holders, applied to the resource's queues, and the grants,
//! failures and blocking ASTs that follow. Grants wait until the view's rebuild is complete.

use super::msg::{DeadLock, Msg, VersionedLvb};
use super::recovery::Judge;
use super::resource::{HandoffInfo, Reply, Resource};
use super::{Dlm, LockError, LockId, Mode, NodeId, ResName};

impl Dlm {
    /// The resource `res` if this node masters it in the current view (created on first use).
    fn mastered_mut(&mut self, from: NodeId, res: &ResName) -> Option<&mut Resource> {
        if self.master(res) != Some(self.me) {
            tracing::debug!(from, %res, "dlm: request for a resource this node does not master; dropped");
            return None;
        }
        let trusted = !self.deaths.any_unrecovered();
        Some(self.mastered.entry(res.clone()).or_insert_with(|| Resource::new(trusted)))
    }

    pub(super) fn on_request(&mut self, from: NodeId, res: ResName, id: LockId, mode: Mode, noqueue: bool) {
        let now = self.now_ms;
        let Some(r) = self.mastered_mut(from, &res) else { return };
        if !r.enqueue(from, id, mode, noqueue, now) {
            tracing::debug!(from, %res, id = id.0, %mode, "dlm: conversion that is not up; dropped");
        }
        self.settle(&res);
    }

    pub(super) fn on_down(&mut self, from: NodeId, res: ResName, id: LockId, mode: Mode, lvb: Option<VersionedLvb>) {
        let Some(r) = self.mastered_mut(from, &res) else { return };
        if !r.convert_down(from, id, mode, lvb) {
            tracing::debug!(from, %res, id = id.0, %mode, "dlm: down-conversion of an unknown lock; dropped");
        }
        self.settle(&res);
    }

    pub(super) fn on_unlock(&mut self, from: NodeId, res: ResName, id: LockId, lvb: Option<VersionedLvb>) {
        let Some(r) = self.mastered_mut(from, &res) else { return };
        r.unlock(from, id, lvb);
        let epoch = self.epoch_now();
        self.send(from, Msg::UnlockDone { epoch, res: res.clone(), id });
        self.settle(&res);
    }

    pub(super) fn on_cancel(&mut self, from: NodeId, res: ResName, id: LockId) {
        let Some(r) = self.mastered_mut(from, &res) else { return };
        // Too late when the grant already went out: the holder then gets that grant.
        if r.cancel(from, id) {
            let epoch = self.epoch_now();
            self.send(from, Msg::Fail { epoch, res: res.clone(), id, error: LockError::Cancelled });
        }
        self.settle(&res);
    }

    /// A member's lock, re-sent after a view change: deduplicated by (node, id).
    pub(super) fn on_rebuild(
        &mut self,
        from: NodeId,
        res: ResName,
        id: LockId,
        (granted, wanted, noqueue, unlocking): (Option<Mode>, Option<Mode>, bool, bool),
        lvb: VersionedLvb,
    ) {
        let now = self.now_ms;
        let Some(r) = self.mastered_mut(from, &res) else { return };
        r.merge_lvb(lvb);
        if unlocking {
            let epoch = self.epoch_now();
            return self.send(from, Msg::UnlockDone { epoch, res, id });
        }
        if let Some(mode) = granted {
            r.add_holder(from, id, mode);
        }
        if let Some(mode) = wanted.filter(|&mode| !r.enqueue(from, id, mode, noqueue, now)) {
            tracing::debug!(from, %res, id = id.0, %mode, "dlm: rebuilt conversion that is not up; dropped");
        }
        self.settle(&res);
    }

    pub(super) fn on_handoff(
        &mut self,
        from: NodeId,
        res: ResName,
        complete: bool,
        trusted: bool,
        lvb: VersionedLvb,
        dead: Vec<DeadLock>,
    ) {
        let alive = |node| self.view.as_ref().is_some_and(|v| v.members.contains(&node));
        let dead: Vec<DeadLock> = dead.into_iter().filter(|d| !alive(d.node)).collect();
        let Some(r) = self.mastered_mut(from, &res) else { return };
        r.merge_lvb(lvb);
        for d in dead {
            r.add_holder(d.node, d.id, d.mode);
        }
        r.handoff = Some(HandoffInfo { complete, trusted });
        self.settle(&res);
    }

    /// Runs the grant pass of `res` once the rebuild is complete, sends the answers, and forgets
    /// the resource when no lock and no value block is left of it.
    pub(super) fn settle(&mut self, res: &ResName) {
        if !self.ready {
            return;
        }
        let mut replies = Vec::new();
        let Some(view) = self.view.as_ref() else { return };
        let judge = Judge { members: &view.members, deaths: &self.deaths };
        let Some(r) = self.mastered.get_mut(res) else { return };
        r.grant_pass(&judge, &mut replies);
        let lvb = r.lvb.clone();
        // A versioned block, even an invalidated one, stays: its version is the floor that keeps
        // an older block reported in a later rebuild (say by an unlock whose answer was lost)
        // from coming back.
        if r.is_idle() && lvb.version == 0 {
            self.mastered.remove(res);
        }
        let epoch = self.epoch_now();
        for reply in replies {
            let res = res.clone();
            let (to, msg) = match reply {
                Reply::Grant { node, id, mode } => (node, Msg::Grant { epoch, res, id, mode, lvb: lvb.clone() }),
                Reply::Fail { node, id, error } => (node, Msg::Fail { epoch, res, id, error }),
                Reply::Bast { node, id, wanted } => (node, Msg::Bast { epoch, res, id, wanted }),
            };
            self.send(to, msg);
        }
    }
}
