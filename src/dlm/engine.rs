//! [`Dlm`]: the public API, message dispatch and the output queue.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::holder::LocalLock;
use super::msg::Msg;
use super::recovery::Deaths;
use super::resource::{HolderDump, Resource, WaiterDump};
use super::{master_of, DlmError, Event, LockId, Lvb, Mode, NodeId, ResName};

/// At most this many messages of views not reached yet are held; more are dropped (a sender
/// cannot get that far ahead of a member that follows the same view sequence).
const MAX_HELD: usize = 1 << 16;

pub(super) struct View {
    pub epoch: u64,
    pub members: BTreeSet<NodeId>,
}

/// The lock manager of one node. See the module documentation of [`super`].
pub struct Dlm {
    pub(super) me: NodeId,
    pub(super) now_ms: u64,
    pub(super) view: Option<View>,
    /// Every member's rebuild marker for the current view arrived: the masters may grant.
    pub(super) ready: bool,
    pub(super) markers: BTreeSet<NodeId>,
    pub(super) deaths: Deaths,
    next_id: u64,
    pub(super) locks: BTreeMap<LockId, LocalLock>,
    pub(super) mastered: BTreeMap<ResName, Resource>,
    /// Messages of later views, replayed when this node reaches them.
    pub(super) held: VecDeque<(NodeId, Msg)>,
    loopback: VecDeque<Msg>,
    events: VecDeque<Event>,
}

/// A resource as `dump()` shows it: its queues if this node masters it, and this node's locks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDump {
    pub name: String,
    pub master: Option<NodeId>,
    pub mastered_here: bool,
    pub lvb_len: usize,
    pub lvb_version: u64,
    pub granted: Vec<HolderDump>,
    pub converting: Vec<WaiterDump>,
    pub waiting: Vec<WaiterDump>,
    pub local: Vec<LocalDump>,
}

/// One of this node's locks, for `dump()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalDump {
    pub id: LockId,
    pub granted: Option<Mode>,
    pub wanted: Option<Mode>,
    pub unlocking: bool,
}

impl Dlm {
    pub fn new(me: NodeId) -> Dlm {
        Dlm {
            me,
            now_ms: 0,
            view: None,
            ready: false,
            markers: BTreeSet::new(),
            deaths: Deaths::default(),
            next_id: 1,
            locks: BTreeMap::new(),
            mastered: BTreeMap::new(),
            held: VecDeque::new(),
            loopback: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn set_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    pub fn set_view(&mut self, epoch: u64, members: &BTreeSet<NodeId>) {
        self.change_view(epoch, members);
        self.flush();
        self.replay_held();
        self.flush();
    }

    pub fn lock(&mut self, res: &ResName, mode: Mode, flags: super::LockFlags) -> LockId {
        let id = LockId(self.next_id);
        self.next_id += 1;
        self.request(id, LocalLock::new(res.clone(), mode, flags.noqueue));
        self.flush();
        id
    }

    pub fn convert(
        &mut self,
        id: LockId,
        mode: Mode,
        flags: super::LockFlags,
        lvb: Option<Lvb>,
    ) -> Result<(), DlmError> {
        check_lvb(lvb.as_ref())?;
        self.local_convert(id, mode, flags.noqueue, lvb)?;
        self.flush();
        Ok(())
    }

    pub fn unlock(&mut self, id: LockId, lvb: Option<Lvb>) -> Result<(), DlmError> {
        check_lvb(lvb.as_ref())?;
        self.local_unlock(id, lvb)?;
        self.flush();
        Ok(())
    }

    pub fn cancel(&mut self, id: LockId) -> Result<(), DlmError> {
        self.local_cancel(id)?;
        self.flush();
        Ok(())
    }

    /// Takes a message from `from`. Invalid, stale or misdirected messages are dropped.
    pub fn receive(&mut self, from: NodeId, msg: Msg) {
        if !msg.is_valid() {
            tracing::debug!(from, ?msg, "dlm: dropping a message with an oversized value block");
            return;
        }
        match self.view.as_ref().map(|v| v.epoch) {
            Some(epoch) if msg.epoch() < epoch => tracing::debug!(from, ?msg, epoch, "dlm: dropping a stale message"),
            Some(epoch) if msg.epoch() == epoch => self.dispatch(from, msg),
            _ if self.held.len() < MAX_HELD => self.held.push_back((from, msg)),
            _ => tracing::debug!(from, ?msg, "dlm: too many messages ahead of this node's view; dropping"),
        }
        self.flush();
    }

    pub fn recovery_done(&mut self, dead: NodeId) -> Result<(), DlmError> {
        self.finish_recovery(dead)?;
        self.flush();
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The resources this node masters, and those it holds or requests locks on.
    pub fn dump(&self) -> Vec<ResourceDump> {
        let mut names: BTreeSet<&ResName> = self.mastered.keys().collect();
        names.extend(self.locks.values().map(|l| &l.res));
        names.into_iter().map(|name| self.dump_one(name)).collect()
    }

    fn dump_one(&self, name: &ResName) -> ResourceDump {
        let res = self.mastered.get(name);
        let (granted, converting, waiting) = res.map(|r| r.dump(self.now_ms)).unwrap_or_default();
        let local = (self.locks.iter().filter(|(_, l)| &l.res == name))
            .map(|(&id, l)| LocalDump { id, granted: l.granted, wanted: l.wanted, unlocking: l.unlocking })
            .collect();
        ResourceDump {
            name: name.to_string(),
            master: self.view.as_ref().and_then(|v| master_of(name, &v.members)),
            mastered_here: res.is_some(),
            lvb_len: res.map_or(0, |r| r.lvb.lvb.0.len()),
            lvb_version: res.map_or(0, |r| r.lvb.version),
            granted,
            converting,
            waiting,
            local,
        }
    }

    /// How many resources this node masters, and how many locks it has (status output).
    pub fn sizes(&self) -> (usize, usize) {
        (self.mastered.len(), self.locks.len())
    }

    /// The epoch of the current view, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.view.as_ref().map(|v| v.epoch)
    }

    /// Whether the rebuild of the current view is complete (masters grant only then).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Dead nodes whose recovery is not finished, as far as this node knows.
    pub fn unrecovered(&self) -> BTreeSet<NodeId> {
        self.deaths.unrecovered_nodes()
    }

    /// Whether this node masters `res` in the current view (its locks cost no message).
    pub fn masters(&self, res: &ResName) -> bool {
        self.master(res) == Some(self.me)
    }

    /// Whether a request of this node for `res` at `mode` (a conversion of its lock `id`, if it
    /// has one) would be granted here and now, without a message or a wait: this node masters
    /// `res`, the view's rebuild is complete, and nothing queued or granted is in the way.
    pub fn grants_at_once(&self, res: &ResName, id: Option<LockId>, mode: Mode) -> bool {
        let Some(view) = self.view.as_ref().filter(|_| self.ready && self.masters(res)) else { return false };
        let judge = super::recovery::Judge { members: &view.members, deaths: &self.deaths };
        let trusted = !self.deaths.any_unrecovered();
        (self.mastered.get(res)).map_or(trusted, |r| r.grants_at_once(self.me, id, mode, &judge))
    }

    pub(super) fn is_member(&self) -> bool {
        self.view.as_ref().is_some_and(|v| v.members.contains(&self.me))
    }

    pub(super) fn master(&self, res: &ResName) -> Option<NodeId> {
        self.view.as_ref().filter(|v| v.members.contains(&self.me)).and_then(|v| master_of(res, &v.members))
    }

    /// Sends to a live member; to this node through the loopback queue (no network message when
    /// this node masters the resource).
    pub(super) fn send(&mut self, to: NodeId, msg: Msg) {
        let Some(view) = self.view.as_ref().filter(|v| v.members.contains(&to)) else {
            return tracing::debug!(to, ?msg, "dlm: not sending to a non-member");
        };
        debug_assert_eq!(msg.epoch(), view.epoch);
        if to == self.me {
            self.loopback.push_back(msg);
        } else {
            self.events.push_back(Event::Send { to, msg });
        }
    }

    pub(super) fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    fn flush(&mut self) {
        while let Some(msg) = self.loopback.pop_front() {
            self.dispatch(self.me, msg);
        }
    }

    /// Handles a message of the current epoch.
    pub(super) fn dispatch(&mut self, from: NodeId, msg: Msg) {
        if !self.view.as_ref().is_some_and(|v| v.members.contains(&from) && v.members.contains(&self.me)) {
            return tracing::debug!(from, ?msg, "dlm: dropping a message from or to a non-member");
        }
        match msg {
            Msg::Request { res, id, mode, noqueue, .. } => self.on_request(from, res, id, mode, noqueue),
            Msg::Down { res, id, mode, lvb, .. } => self.on_down(from, res, id, mode, lvb),
            Msg::Unlock { res, id, lvb, .. } => self.on_unlock(from, res, id, lvb),
            Msg::Cancel { res, id, .. } => self.on_cancel(from, res, id),
            Msg::Rebuild { res, id, granted, wanted, noqueue, unlocking, lvb, .. } => {
                self.on_rebuild(from, res, id, (granted, wanted, noqueue, unlocking), lvb)
            }
            Msg::Handoff { res, complete, trusted, lvb, dead, .. } => {
                self.on_handoff(from, res, complete, trusted, lvb, dead)
            }
            Msg::RebuildDone { deaths, .. } => self.on_rebuild_done(from, deaths),
            Msg::Recovered { node, death_epoch, .. } => self.apply_recovered(node, death_epoch, from),
            Msg::Grant { res, id, mode, lvb, .. } => self.on_grant(from, res, id, mode, lvb),
            Msg::Fail { res, id, error, .. } => self.on_fail(from, res, id, error),
            Msg::Bast { res, id, wanted, .. } => self.on_bast(from, res, id, wanted),
            Msg::UnlockDone { res, id, .. } => self.on_unlock_done(from, res, id),
        }
    }
}

fn check_lvb(lvb: Option<&Lvb>) -> Result<(), DlmError> {
    match lvb {
        Some(l) if !l.is_valid() => Err(DlmError::LvbTooLong(l.0.len())),
        _ => Ok(()),
    }
}
