//! A resource as its master sees it: the granted queue, the convert queue and the wait queue of
//! the VMS DLM, and the value block. Grant order follows VMS: the convert queue is served first,
//! each queue FIFO, and a blocked head blocks those behind it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::msg::{DeadLock, VersionedLvb};
use super::recovery::Judge;
use super::{LockError, LockId, Mode, NodeId};

#[derive(Debug)]
struct Holder {
    node: NodeId,
    id: LockId,
    mode: Mode,
    /// A blocking AST went out since the mode last changed (one per holder per blocking episode).
    basted: bool,
}

#[derive(Debug)]
struct Waiter {
    node: NodeId,
    id: LockId,
    wanted: Mode,
    noqueue: bool,
    since_ms: u64,
}

/// What the old master's `Handoff` said about the resource.
#[derive(Clone, Copy, Debug)]
pub(super) struct HandoffInfo {
    pub complete: bool,
    pub trusted: bool,
}

/// An answer the master owes a holder.
#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    Grant { node: NodeId, id: LockId, mode: Mode },
    Fail { node: NodeId, id: LockId, error: LockError },
    Bast { node: NodeId, id: LockId, wanted: Mode },
}

#[derive(Debug)]
pub(super) struct Resource {
    pub lvb: VersionedLvb,
    /// The master knows every dead node's locks here; when false, unrecovered dead nodes are
    /// assumed to hold EX (see [`Judge::phantom_ex_blocks`]).
    pub trusted: bool,
    /// Set by the old master's `Handoff` during a rebuild.
    pub handoff: Option<HandoffInfo>,
    granted: Vec<Holder>,
    converting: VecDeque<Waiter>,
    waiting: VecDeque<Waiter>,
}

/// One lock on a mastered resource, for `dump()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderDump {
    pub node: NodeId,
    pub id: LockId,
    pub mode: Mode,
}

/// One waiting request (or conversion) on a mastered resource, for `dump()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterDump {
    pub node: NodeId,
    pub id: LockId,
    pub wanted: Mode,
    pub waited_ms: u64,
}

impl Resource {
    pub fn new(trusted: bool) -> Resource {
        Resource {
            lvb: VersionedLvb::default(),
            trusted,
            handoff: None,
            granted: Vec::new(),
            converting: VecDeque::new(),
            waiting: VecDeque::new(),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.waiting.is_empty()
    }

    fn holder(&mut self, node: NodeId, id: LockId) -> Option<&mut Holder> {
        self.granted.iter_mut().find(|h| (h.node, h.id) == (node, id))
    }

    fn is_waiting(&self, node: NodeId, id: LockId) -> bool {
        self.converting.iter().chain(&self.waiting).any(|w| (w.node, w.id) == (node, id))
    }

    /// Adds a granted lock unless (node, id) is already known (rebuild deduplicates).
    pub fn add_holder(&mut self, node: NodeId, id: LockId, mode: Mode) {
        if self.holder(node, id).is_none() {
            self.granted.push(Holder { node, id, mode, basted: false });
        }
    }

    /// Queues a request: an up-conversion when (node, id) holds a grant, else a new lock. A
    /// duplicate of a waiting request is ignored; false for a conversion that is not up.
    pub fn enqueue(&mut self, node: NodeId, id: LockId, wanted: Mode, noqueue: bool, now_ms: u64) -> bool {
        if self.is_waiting(node, id) {
            return true;
        }
        let w = Waiter { node, id, wanted, noqueue, since_ms: now_ms };
        match self.holder(node, id).map(|h| h.mode.is_up_to(wanted)) {
            Some(false) => return false,
            Some(true) => self.converting.push_back(w),
            None => self.waiting.push_back(w),
        }
        true
    }

    /// Applies a down-conversion; false if (node, id) holds nothing it can convert down from.
    pub fn convert_down(&mut self, node: NodeId, id: LockId, mode: Mode, lvb: Option<VersionedLvb>) -> bool {
        let Some(h) = self.holder(node, id).filter(|h| h.mode.is_down_to(mode)) else { return false };
        let wrote = h.mode.writes_lvb();
        h.mode = mode;
        h.basted = false;
        if let Some(v) = lvb.filter(|_| wrote) {
            self.store_lvb(v);
        }
        true
    }

    /// Removes (node, id) from every queue, storing its value block if it held PW or EX.
    pub fn unlock(&mut self, node: NodeId, id: LockId, lvb: Option<VersionedLvb>) {
        let wrote = self.holder(node, id).is_some_and(|h| h.mode.writes_lvb());
        self.granted.retain(|h| (h.node, h.id) != (node, id));
        self.converting.retain(|w| (w.node, w.id) != (node, id));
        self.waiting.retain(|w| (w.node, w.id) != (node, id));
        if let Some(v) = lvb.filter(|_| wrote) {
            self.store_lvb(v);
        }
    }

    /// Withdraws a waiting request or conversion; true if there was one.
    pub fn cancel(&mut self, node: NodeId, id: LockId) -> bool {
        let before = self.converting.len() + self.waiting.len();
        self.converting.retain(|w| (w.node, w.id) != (node, id));
        self.waiting.retain(|w| (w.node, w.id) != (node, id));
        before != self.converting.len() + self.waiting.len()
    }

    /// A PW/EX holder's write: it supersedes whatever the master had.
    fn store_lvb(&mut self, v: VersionedLvb) {
        self.lvb = VersionedLvb { version: v.version.max(self.lvb.version + 1), lvb: v.lvb };
    }

    /// Rebuild: keep the highest version reported; on a tie a value beats an invalidated block.
    pub fn merge_lvb(&mut self, v: VersionedLvb) {
        if v.version > self.lvb.version || (v.version == self.lvb.version && self.lvb.lvb.is_empty()) {
            self.lvb = v;
        }
    }

    /// OCFS2 invalidates the value block when a node that may have written it died.
    pub fn invalidate_lvb(&mut self) {
        self.lvb = VersionedLvb { version: self.lvb.version + 1, lvb: Default::default() };
    }

    /// Whether a live member holds PW or EX: its rebuild report carries the value block as it
    /// wrote it (nobody else can have written since its grant), so nothing was lost.
    pub fn live_writer(&self, judge: &Judge) -> bool {
        self.granted.iter().any(|h| judge.alive(h.node) && h.mode.writes_lvb())
    }

    /// Whether one of `removed`'s locks could have written a value block the master never got.
    pub fn written_by_any(&self, removed: &std::collections::BTreeSet<NodeId>) -> bool {
        self.granted.iter().any(|h| removed.contains(&h.node) && h.mode.writes_lvb())
    }

    /// The granted locks of nodes not alive under `judge` (kept until their recovery).
    pub fn dead_locks(&self, judge: &Judge) -> Vec<DeadLock> {
        let dead = self.granted.iter().filter(|h| !judge.alive(h.node));
        dead.map(|h| DeadLock { node: h.node, id: h.id, mode: h.mode }).collect()
    }

    /// Drops the locks of dead nodes whose recovery is finished, and requests of dead nodes.
    pub fn drop_released(&mut self, judge: &Judge) {
        self.granted.retain(|h| !judge.is_released(h.node));
        self.converting.retain(|w| judge.alive(w.node));
        self.waiting.retain(|w| judge.alive(w.node));
    }

    /// Whether a request of `node` for `mode` (a conversion of its lock `id`, if it has one here)
    /// would be granted at once: nobody waits ahead of it and nothing granted is in its way.
    pub fn grants_at_once(&self, node: NodeId, id: Option<LockId>, mode: Mode, judge: &Judge) -> bool {
        let w = Waiter { node, id: id.unwrap_or(LockId(u64::MAX)), wanted: mode, noqueue: false, since_ms: 0 };
        self.converting.is_empty() && self.waiting.is_empty() && self.can_grant(&w, judge)
    }

    fn can_grant(&self, w: &Waiter, judge: &Judge) -> bool {
        let others = self.granted.iter().filter(|h| (h.node, h.id) != (w.node, w.id));
        let blocked = others.filter(|h| !judge.ignores(w.node, h.node)).any(|h| !h.mode.compatible(w.wanted));
        !blocked && (self.trusted || w.wanted == Mode::Nl || !judge.phantom_ex_blocks(w.node))
    }

    /// Grants what can be granted, in VMS order; fails the NOQUEUE requests that would have to
    /// wait (which may unblock those behind them); sends blocking ASTs to the live holders in the
    /// way of the head waiter.
    pub fn grant_pass(&mut self, judge: &Judge, out: &mut Vec<Reply>) {
        loop {
            self.grant_heads(judge, out);
            let before = out.len();
            for queue in [&mut self.converting, &mut self.waiting] {
                for w in queue.iter().filter(|w| w.noqueue) {
                    out.push(Reply::Fail { node: w.node, id: w.id, error: LockError::NotQueued });
                }
                queue.retain(|w| !w.noqueue);
            }
            if out.len() == before {
                return self.blocking_asts(out);
            }
        }
    }

    fn head(&self) -> Option<&Waiter> {
        self.converting.front().or(self.waiting.front())
    }

    /// The next waiter to grant: the head of the convert queue, else of the wait queue; failing
    /// that, a request of a recovery node, which must not wait behind requests that only the
    /// dead node's locks block (it needs its locks to finish the recovery that releases them).
    fn next_grantable(&self, judge: &Judge) -> Option<(bool, usize)> {
        let head = self.head().filter(|w| self.can_grant(w, judge));
        let queues = [(true, &self.converting), (false, &self.waiting)];
        let mut all = queues.into_iter().flat_map(|(conv, q)| q.iter().enumerate().map(move |(i, w)| (conv, i, w)));
        let head = head.map(|_| (!self.converting.is_empty(), 0));
        head.or_else(|| {
            all.find(|(_, _, w)| judge.is_recovering(w.node) && self.can_grant(w, judge)).map(|(c, i, _)| (c, i))
        })
    }

    fn grant_heads(&mut self, judge: &Judge, out: &mut Vec<Reply>) {
        while let Some((conversion, index)) = self.next_grantable(judge) {
            let queue = if conversion { &mut self.converting } else { &mut self.waiting };
            let Some(w) = queue.remove(index) else { return };
            match self.holder(w.node, w.id) {
                Some(h) => {
                    h.mode = w.wanted;
                    h.basted = false;
                }
                None => self.granted.push(Holder { node: w.node, id: w.id, mode: w.wanted, basted: false }),
            }
            out.push(Reply::Grant { node: w.node, id: w.id, mode: w.wanted });
        }
    }

    fn blocking_asts(&mut self, out: &mut Vec<Reply>) {
        let Some(&Waiter { node, id, wanted, .. }) = self.head() else { return };
        for h in self.granted.iter_mut() {
            let blocks = (h.node, h.id) != (node, id) && !h.mode.compatible(wanted);
            if blocks && !h.basted {
                h.basted = true;
                out.push(Reply::Bast { node: h.node, id: h.id, wanted });
            }
        }
    }

    pub fn dump(&self, now_ms: u64) -> (Vec<HolderDump>, Vec<WaiterDump>, Vec<WaiterDump>) {
        let holders = self.granted.iter().map(|h| HolderDump { node: h.node, id: h.id, mode: h.mode }).collect();
        let waiters = |q: &VecDeque<Waiter>| {
            let dump = |w: &Waiter| WaiterDump {
                node: w.node,
                id: w.id,
                wanted: w.wanted,
                waited_ms: now_ms.saturating_sub(w.since_ms),
            };
            q.iter().map(dump).collect()
        };
        (holders, waiters(&self.converting), waiters(&self.waiting))
    }
}
