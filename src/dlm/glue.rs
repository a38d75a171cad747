//! Lock caching above the DLM (what OCFS2 calls dlmglue): one DLM lock per resource per node,
//! kept at its granted mode after local holders let go, and downconverted only when a blocking
//! callback says another node wants it — after the owner's downconvert callback has run (where
//! the filesystem flushes or invalidates). Re-taking a cached lock sends no message.
//!
//! A minimum hold time, as GFS2's glocks have: a lock granted up is kept for that long even when
//! a peer is blocked on it, and local users keep coming in meanwhile, so that two nodes taking
//! turns at one lock each get a batch of work done per turn instead of paying a transfer (the
//! yielding node writes its changes back) per request. The hold is given up at once when it
//! serves nobody here (the next local user needs more than is held, or this node's own
//! upconversion waits for the peer). Times are the service's clock in milliseconds.
//!
//! A bound on idle locks ([`Lru`]): a node that touches many inodes (a mail server creating
//! millions of files) would otherwise keep a lock, and its owner whatever it caches under it, for
//! every one of them. When more locks subject to the bound are cached than it allows, the least
//! recently used ones that nobody here uses, waits for or converts are given up: the owner's
//! downconvert callback runs as for a peer's request to NL, then the DLM lock is unlocked, so the
//! node's records go and the master forgets the resource once nobody holds or waits on it (as
//! OCFS2 drops an inode's locks when the inode leaves the inode cache, and o2dlm purges unused
//! resources). A user arriving meanwhile waits and asks for a new lock once the unlock is done.
//!
//! Value blocks: no user of this cache writes one (there is no call for it), so a lock going
//! down or given up writes back only a non-empty block it was granted. An empty block stays
//! unwritten, the resource's version stays 0, and its master can forget it (a master keeps every
//! resource whose block has a version). A non-empty block is written back when the lock is given
//! up from EX or PW, so the master keeps it for the next holder.
//!
//! This module is the per-resource bookkeeping only (sans-IO): it says what to ask of the DLM;
//! `service` performs it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{LockId, Lvb, Mode, ResName};

/// Local use of a cached lock: like a reader/writer lock between this node's users.
#[derive(Debug, Default)]
pub struct Cached {
    /// The DLM lock, once requested.
    pub id: Option<LockId>,
    /// What the DLM granted this node.
    pub granted: Option<Mode>,
    /// A request or conversion in flight to this mode.
    pub busy: Option<Mode>,
    /// Another node wants this mode (BAST): downconvert when local holders allow.
    pub blocked: Option<Mode>,
    pub readers: u32,
    pub writer: bool,
    pub lvb: Lvb,
    pub waiters: VecDeque<Waiter>,
    /// A grant just came: the users queued for it run even if a peer is already blocked on us
    /// (else both nodes could upconvert and yield forever without either doing its work).
    pub admit: bool,
    /// A cancel of the request in flight was sent.
    pub cancelling: bool,
    /// Kept against blocked peers until then (see the module documentation); 0: no hold.
    pub hold_until: u64,
    /// A `Recheck` at `hold_until` is on its way.
    pub recheck_armed: bool,
    /// Subject to the bound on idle locks ([`Lru`]).
    pub capped: bool,
    /// Its place in the [`Lru`] (0: not listed).
    pub lru: u64,
    /// Being given up ([`Action::Drop`]): unlocked once the owner's callback ran.
    pub dropping: bool,
}

#[derive(Debug)]
pub struct Waiter {
    pub ticket: u64,
    pub mode: Mode,
}

/// What the service must do next for a resource.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// New DLM lock at this mode.
    Request { mode: Mode },
    /// Convert the DLM lock up.
    Convert { id: LockId, mode: Mode },
    /// Withdraw the request or conversion in flight: nobody waits for it any more.
    Cancel { id: LockId },
    /// Run the owner's downconvert callback, then convert down to `mode` (blocked by a peer).
    Downconvert { id: LockId, mode: Mode, lvb: Option<Lvb> },
    /// A local user's ticket is granted: it now holds its mode.
    Wake { ticket: u64 },
    /// Step again at this time: a hold ends (then [`Cached::rechecked`]).
    Recheck { at: u64 },
    /// Give the idle lock up (the bound on idle locks): run the owner's downconvert callback to
    /// NL if `from` is above NL, then unlock, writing `lvb` (then [`Cached::unlocked`]).
    Drop { id: LockId, from: Mode, lvb: Option<Lvb> },
}

/// Only Pr (shared) and Ex (exclusive) are taken by local users.
fn covers(held: Option<Mode>, want: Mode) -> bool {
    match (held, want) {
        (Some(Mode::Ex), _) => true,
        (Some(Mode::Pr) | Some(Mode::Pw), Mode::Pr) => true,
        (_, Mode::Nl) => true,
        _ => false,
    }
}

/// The highest mode compatible with what a peer wants (what to downconvert to).
fn yield_to(wanted: Mode) -> Mode {
    if Mode::Pr.compatible(wanted) {
        Mode::Pr
    } else {
        Mode::Nl
    }
}

impl Cached {
    fn local_free(&self, mode: Mode) -> bool {
        match mode {
            Mode::Ex => !self.writer && self.readers == 0,
            _ => !self.writer,
        }
    }

    fn hold(&mut self, mode: Mode) {
        if mode == Mode::Ex {
            self.writer = true;
        } else {
            self.readers += 1;
        }
    }

    /// Whether a local user asking for `mode` now would go first: no one queued, no peer
    /// waiting for this lock, no request in flight, and no local holder in the way.
    pub fn free_for(&self, mode: Mode) -> bool {
        self.waiters.is_empty() && self.blocked.is_none() && self.busy.is_none() && self.local_free(mode)
    }

    fn holding(&self, now: u64) -> bool {
        now < self.hold_until
    }

    /// Whether the mode this node was granted covers `mode`.
    pub fn covers(&self, mode: Mode) -> bool {
        covers(self.granted, mode)
    }

    /// Granted, and nobody here holds it, waits for it or changes it, and no peer waits for it.
    pub fn idle(&self) -> bool {
        self.granted.is_some()
            && self.id.is_some()
            && self.readers == 0
            && !self.writer
            && self.waiters.is_empty()
            && self.busy.is_none()
            && self.blocked.is_none()
            && !self.cancelling
            && !self.dropping
    }

    /// No DLM lock, and nobody here holds or waits for one: the entry can go.
    pub fn forgettable(&self) -> bool {
        self.id.is_none() && self.busy.is_none() && self.waiters.is_empty() && self.readers == 0 && !self.writer
    }

    /// The value block to write back when giving up `from`: one that was granted non-empty (see
    /// the module documentation).
    fn write_back(&self, from: Option<Mode>) -> Option<Lvb> {
        (from.is_some_and(Mode::writes_lvb) && !self.lvb.is_empty()).then(|| self.lvb.clone())
    }

    /// Starts giving the lock up if it is idle: from now on local users queue (nothing is
    /// granted), and they ask for a new lock once [`unlocked`](Self::unlocked).
    pub fn give_up(&mut self) -> Option<Action> {
        let id = self.id.filter(|_| self.idle())?;
        let from = self.granted.take()?;
        self.dropping = true;
        self.busy = Some(Mode::Nl);
        self.hold_until = 0;
        Some(Action::Drop { id, from, lvb: self.write_back(Some(from)) })
    }

    /// The DLM refused the unlock of a lock being given up at `from`: it is kept.
    pub fn kept(&mut self, from: Mode) {
        self.granted = Some(from);
        self.dropping = false;
        self.busy = None;
        self.admit = true;
    }

    /// The unlock of a lock given up is done: this node has no DLM lock on the resource. Users
    /// who queued meanwhile ask for a new one at the next `step`.
    pub fn unlocked(&mut self) {
        self.id = None;
        self.granted = None;
        self.busy = None;
        self.blocked = None;
        self.dropping = false;
        self.cancelling = false;
    }

    /// A local user asks for `mode` at time `now`. Returns whether it was granted from the
    /// cache at once (no message); otherwise it waits under `ticket` and `step` says what to ask
    /// the DLM.
    pub fn acquire(&mut self, ticket: u64, mode: Mode, now: u64) -> bool {
        // A peer is waiting: after the hold, new local users queue behind the downconvert (no
        // starvation).
        let peer_waits = self.blocked.is_some_and(|w| !mode.compatible(w)) && !self.holding(now);
        if self.waiters.is_empty() && !peer_waits && covers(self.granted, mode) && self.local_free(mode) {
            self.hold(mode);
            return true;
        }
        self.waiters.push_back(Waiter { ticket, mode });
        false
    }

    /// A waiting user gave up. If nobody else waits for the request in flight, withdraw it.
    pub fn abandon(&mut self, ticket: u64) -> Vec<Action> {
        self.waiters.retain(|w| w.ticket != ticket);
        if self.waiters.is_empty() {
            self.cancel_upconversion().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Withdraws the request or upconversion in flight (once).
    fn cancel_upconversion(&mut self) -> Option<Action> {
        match (self.busy, self.id) {
            (Some(m), Some(id)) if !self.cancelling && !covers(self.granted, m) => {
                self.cancelling = true;
                self.hold_until = 0;
                Some(Action::Cancel { id })
            }
            _ => None,
        }
    }

    pub fn release(&mut self, mode: Mode) {
        if mode == Mode::Ex {
            self.writer = false;
        } else {
            self.readers = self.readers.saturating_sub(1);
        }
    }

    /// The DLM granted `mode`; if that is more than this node had, it holds it until
    /// `hold_until`.
    pub fn granted(&mut self, mode: Mode, lvb: Lvb, hold_until: u64) {
        if !covers(self.granted, mode) {
            self.hold_until = hold_until;
        }
        self.granted = Some(mode);
        self.busy = None;
        self.cancelling = false;
        self.lvb = lvb;
        // Yielding ends the blocking episode. An upconversion does not: the peer's BAST may
        // have come before this grant and is not sent again, so the lock goes down after the
        // users who waited for this grant had their turn.
        if self.blocked.is_some_and(|w| mode.compatible(w)) {
            self.blocked = None;
        }
        self.admit = true;
    }

    /// The request or conversion in flight ended without a grant (it was cancelled); waiters
    /// that remain ask again at the next `step`.
    pub fn failed(&mut self) {
        self.busy = None;
        self.cancelling = false;
        if self.granted.is_none() {
            self.id = None;
        }
    }

    pub fn blocking(&mut self, wanted: Mode) {
        self.blocked = Some(wanted);
    }

    /// Do local users hold more than a blocked peer lets this node keep?
    fn holding_over(&self) -> bool {
        let Some(target) = self.blocked.map(yield_to) else { return false };
        let over = |m: Mode| !covers(Some(target), m);
        (self.writer && over(Mode::Ex)) || (self.readers > 0 && over(Mode::Pr))
    }

    /// Lets in the queued users the granted mode covers, in order.
    fn serve_waiters(&mut self, out: &mut Vec<Action>) {
        while let Some(w) = self.waiters.front() {
            if !(covers(self.granted, w.mode) && self.local_free(w.mode)) {
                break;
            }
            let (ticket, mode) = (w.ticket, w.mode);
            self.waiters.pop_front();
            self.hold(mode);
            out.push(Action::Wake { ticket });
        }
    }

    /// A scheduled `Recheck` came.
    pub fn rechecked(&mut self) {
        self.recheck_armed = false;
    }

    /// What to do at time `now`: serve waiters from the cache, downconvert for a blocked peer
    /// (once a hold is over), or ask for more.
    pub fn step(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.busy.is_some() {
            // Conversion deadlock: a peer is blocked by the mode we hold while our upconversion
            // waits behind that peer (both nodes at PR converting to EX). Withdraw ours and
            // yield first, as OCFS2's dlmglue cancels the convert; we ask again afterwards.
            let blocks_peer = matches!((self.granted, self.blocked), (Some(g), Some(w)) if !g.compatible(w));
            if blocks_peer && !self.holding_over() {
                out.extend(self.cancel_upconversion());
            }
            return out;
        }
        if std::mem::take(&mut self.admit) {
            self.serve_waiters(&mut out);
        }
        if let (Some(wanted), Some(id)) = (self.blocked, self.id) {
            // A hold serves only the local users the granted mode covers.
            if self.waiters.front().is_some_and(|w| !covers(self.granted, w.mode)) {
                self.hold_until = 0;
            }
            if self.holding(now) {
                self.serve_waiters(&mut out);
                if !std::mem::replace(&mut self.recheck_armed, true) {
                    out.push(Action::Recheck { at: self.hold_until });
                }
                return out;
            }
            let target = yield_to(wanted);
            let holding_over = self.holding_over();
            if !holding_over && self.granted.is_some_and(|g| g != target && !covers(Some(target), g)) {
                self.busy = Some(target);
                let lvb = self.write_back(self.granted);
                out.push(Action::Downconvert { id, mode: target, lvb });
                return out;
            }
            if holding_over {
                return out;
            }
            // Already at or below what the peer can live with: a stale BAST.
            self.blocked = None;
        }
        self.serve_waiters(&mut out);
        if let Some(w) = self.waiters.front() {
            if !covers(self.granted, w.mode) {
                let mode = w.mode;
                self.busy = Some(mode);
                out.push(match self.id {
                    None => Action::Request { mode },
                    Some(id) => Action::Convert { id, mode },
                });
            }
        }
        out
    }
}

/// The bound on idle cached locks (see the module documentation): the locks subject to it, by
/// last use, oldest first.
pub struct Lru {
    /// How many such locks may stay cached.
    max: usize,
    /// Which resources are subject to the bound (the owner says).
    capped: Box<dyn Fn(&ResName) -> bool + Send>,
    /// Listed entries by their `Cached::lru` tick: every entry subject to the bound, once,
    /// except those being given up.
    order: BTreeMap<u64, ResName>,
    next: u64,
}

impl Lru {
    pub fn new(max: usize, capped: Box<dyn Fn(&ResName) -> bool + Send>) -> Lru {
        Lru { max, capped, order: BTreeMap::new(), next: 0 }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A new cache entry `c` for `name`: listed if it is subject to the bound.
    pub fn created(&mut self, name: &ResName, c: &mut Cached) {
        c.capped = (self.capped)(name);
        self.touch(name, c);
    }

    /// `c` was just used: it goes to the back of the list.
    pub fn touch(&mut self, name: &ResName, c: &mut Cached) {
        if !c.capped || c.dropping {
            return;
        }
        // The listed name is moved to its new place (no allocation per use).
        let name = self.order.remove(&c.lru).unwrap_or_else(|| name.clone());
        self.next += 1;
        c.lru = self.next;
        self.order.insert(self.next, name);
    }

    /// How many listed locks are over the bound.
    pub fn excess(&self) -> usize {
        self.order.len().saturating_sub(self.max)
    }

    /// Gives up to `n` of the least recently used idle locks; entries with no lock and no user
    /// are forgotten on the way (they count as given up). Locks in use are passed over: they go
    /// to the back when released. Returns what to do for each lock given up.
    pub fn choose(&mut self, cache: &mut HashMap<ResName, Cached>, n: usize) -> Vec<(ResName, Action)> {
        let (mut out, mut unlisted, mut forgotten) = (Vec::new(), Vec::new(), 0);
        for (&tick, name) in &self.order {
            if out.len() + forgotten >= n {
                break;
            }
            let Some(c) = cache.get_mut(name) else {
                unlisted.push(tick);
                continue;
            };
            if c.forgettable() {
                cache.remove(name);
                unlisted.push(tick);
                forgotten += 1;
            } else if let Some(action) = c.give_up() {
                c.lru = 0;
                unlisted.push(tick);
                out.push((name.clone(), action));
            }
        }
        for tick in unlisted {
            self.order.remove(&tick);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_lock_is_retaken_without_asking() {
        let mut c = Cached::default();
        assert!(!c.acquire(1, Mode::Ex, 0));
        assert_eq!(c.step(0), vec![Action::Request { mode: Mode::Ex }]);
        c.id = Some(LockId(7));
        c.granted(Mode::Ex, Lvb::default(), 0);
        assert_eq!(c.step(0), vec![Action::Wake { ticket: 1 }]);
        c.release(Mode::Ex);
        assert!(c.step(0).is_empty(), "kept at Ex, nothing sent");
        assert!(c.acquire(2, Mode::Pr, 0), "Ex covers Pr: from the cache");
        assert!(!c.acquire(3, Mode::Ex, 0), "a local writer waits for the local reader");
        c.release(Mode::Pr);
        assert_eq!(c.step(0), vec![Action::Wake { ticket: 3 }]);
    }

    #[test]
    fn bast_downconverts_after_holders_leave_and_blocks_newcomers() {
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Ex), ..Default::default() };
        assert!(c.acquire(1, Mode::Ex, 0));
        c.blocking(Mode::Pr);
        assert!(c.step(0).is_empty(), "holder still inside");
        assert!(!c.acquire(2, Mode::Ex, 0), "newcomers queue behind the peer");
        c.release(Mode::Ex);
        assert_eq!(c.step(0), vec![Action::Downconvert { id: LockId(1), mode: Mode::Pr, lvb: None }]);
        c.granted(Mode::Pr, Lvb::default(), 0);
        assert_eq!(c.blocked, None);
        // The queued newcomer now needs Ex again: it asks, behind the peer.
        assert_eq!(c.step(0), vec![Action::Convert { id: LockId(1), mode: Mode::Ex }]);
    }

    #[test]
    fn bast_before_the_upconversion_grant_is_not_lost() {
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Pr), ..Default::default() };
        assert!(!c.acquire(1, Mode::Ex, 0));
        assert_eq!(c.step(0), vec![Action::Convert { id: LockId(1), mode: Mode::Ex }]);
        c.blocking(Mode::Ex); // the peer queued behind our conversion
        c.granted(Mode::Ex, Lvb::default(), 0);
        assert_eq!(c.step(0), vec![Action::Wake { ticket: 1 }], "the user who waited runs first");
        assert!(!c.acquire(2, Mode::Ex, 0), "a newcomer waits behind the peer");
        c.release(Mode::Ex);
        assert_eq!(c.step(0), vec![Action::Downconvert { id: LockId(1), mode: Mode::Nl, lvb: None }]);
    }

    #[test]
    fn conversion_deadlock_is_broken_by_cancelling_and_yielding() {
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Pr), ..Default::default() };
        assert!(!c.acquire(1, Mode::Ex, 0));
        assert_eq!(c.step(0), vec![Action::Convert { id: LockId(1), mode: Mode::Ex }]);
        c.blocking(Mode::Ex); // the peer holds PR too and converts to EX
        assert_eq!(c.step(0), vec![Action::Cancel { id: LockId(1) }]);
        assert!(c.step(0).is_empty(), "one cancel");
        c.failed();
        assert_eq!(c.step(0), vec![Action::Downconvert { id: LockId(1), mode: Mode::Nl, lvb: None }]);
        c.granted(Mode::Nl, Lvb::default(), 0);
        assert_eq!(c.step(0), vec![Action::Convert { id: LockId(1), mode: Mode::Ex }], "asks again, behind the peer");
    }

    #[test]
    fn abandoned_request_is_withdrawn_unless_someone_else_waits() {
        let mut c = Cached::default();
        assert!(!c.acquire(1, Mode::Ex, 0));
        assert!(!c.acquire(2, Mode::Ex, 0));
        assert_eq!(c.step(0), vec![Action::Request { mode: Mode::Ex }]);
        c.id = Some(LockId(4));
        assert!(c.abandon(1).is_empty(), "ticket 2 still waits for the request");
        assert_eq!(c.abandon(2), vec![Action::Cancel { id: LockId(4) }]);
        c.failed();
        assert_eq!((c.id, c.busy), (None, None));
        assert!(c.step(0).is_empty());
    }

    #[test]
    fn a_fresh_grant_is_held_for_local_users_then_yielded() {
        let mut c = Cached::default();
        assert!(!c.acquire(1, Mode::Ex, 0));
        assert_eq!(c.step(0), vec![Action::Request { mode: Mode::Ex }]);
        c.id = Some(LockId(3));
        c.granted(Mode::Ex, Lvb::default(), 10);
        assert_eq!(c.step(0), vec![Action::Wake { ticket: 1 }]);
        c.blocking(Mode::Ex);
        c.release(Mode::Ex);
        assert_eq!(c.step(1), vec![Action::Recheck { at: 10 }], "held: nothing goes down yet");
        assert!(c.acquire(2, Mode::Pr, 5), "local users still come in");
        c.release(Mode::Pr);
        assert!(c.step(6).is_empty(), "one recheck is enough");
        assert!(!c.acquire(3, Mode::Ex, 10), "the hold is over: behind the peer");
        c.rechecked();
        let down = Action::Downconvert { id: LockId(3), mode: Mode::Nl, lvb: None };
        assert_eq!(c.step(10), vec![down]);
        c.granted(Mode::Nl, Lvb::default(), 99);
        assert_eq!(c.hold_until, 10, "going down starts no hold");
    }

    #[test]
    fn a_hold_that_serves_nobody_here_is_given_up() {
        // The local user wants more than the held Pr: holding it would only delay both nodes.
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Pr), hold_until: 10, ..Default::default() };
        c.blocking(Mode::Ex);
        assert!(!c.acquire(1, Mode::Ex, 1));
        assert_eq!(c.step(1), vec![Action::Downconvert { id: LockId(1), mode: Mode::Nl, lvb: None }]);
        // Our own upconversion waits for a peer that waits for us: cancelled, and not held.
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Pr), ..Default::default() };
        assert!(!c.acquire(1, Mode::Ex, 0));
        assert_eq!(c.step(0), vec![Action::Convert { id: LockId(1), mode: Mode::Ex }]);
        c.hold_until = 10;
        c.blocking(Mode::Ex);
        assert_eq!(c.step(1), vec![Action::Cancel { id: LockId(1) }]);
        c.failed();
        assert_eq!(c.step(1), vec![Action::Downconvert { id: LockId(1), mode: Mode::Nl, lvb: None }]);
    }

    #[test]
    fn an_empty_value_block_is_not_written_back_and_a_granted_one_is() {
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Ex), ..Default::default() };
        c.blocking(Mode::Ex);
        assert_eq!(c.step(0), vec![Action::Downconvert { id: LockId(1), mode: Mode::Nl, lvb: None }]);
        let lvb = Lvb(vec![7]);
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Ex), lvb: lvb.clone(), ..Default::default() };
        assert_eq!(c.give_up(), Some(Action::Drop { id: LockId(1), from: Mode::Ex, lvb: Some(lvb.clone()) }));
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Pr), lvb, ..Default::default() };
        assert_eq!(c.give_up(), Some(Action::Drop { id: LockId(1), from: Mode::Pr, lvb: None }), "PR writes none");
    }

    /// A cache of `n` idle locks "r0", "r1"… granted at `mode`, used in that order, under a bound
    /// of `max` that applies to every name but "sys".
    fn cache_of(n: usize, max: usize) -> (Lru, HashMap<ResName, Cached>) {
        let mut lru = Lru::new(max, Box::new(|name: &ResName| name.as_str() != "sys"));
        let mut cache = HashMap::new();
        for (i, name) in (0..n).map(|i| format!("r{i}")).chain(["sys".to_string()]).enumerate() {
            let name = ResName::new(&name).unwrap();
            let mut c = Cached { id: Some(LockId(i as u64 + 1)), granted: Some(Mode::Ex), ..Default::default() };
            lru.created(&name, &mut c);
            cache.insert(name, c);
        }
        (lru, cache)
    }

    fn name(s: &str) -> ResName {
        ResName::new(s).unwrap()
    }

    #[test]
    fn the_bound_gives_up_the_least_recently_used_idle_locks() {
        let (mut lru, mut cache) = cache_of(6, 4);
        assert_eq!(lru.excess(), 2, "six listed, four allowed; \"sys\" is not subject to the bound");
        // r0 is used again (it goes to the back); r1 is in use right now.
        let r0 = cache.get_mut(&name("r0")).unwrap();
        assert!(r0.acquire(100, Mode::Pr, 0));
        r0.release(Mode::Pr);
        lru.touch(&name("r0"), cache.get_mut(&name("r0")).unwrap());
        assert!(cache.get_mut(&name("r1")).unwrap().acquire(101, Mode::Ex, 0));
        let chosen = lru.choose(&mut cache, lru.excess());
        let names: Vec<&str> = chosen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["r2", "r3"], "oldest idle first, never one in use");
        assert_eq!(chosen[0].1, Action::Drop { id: LockId(3), from: Mode::Ex, lvb: None });
        assert_eq!(lru.excess(), 0);
        // Being given up: a local user queues (nothing granted), and the lock is not chosen again.
        let r2 = cache.get_mut(&name("r2")).unwrap();
        assert!(!r2.acquire(102, Mode::Pr, 0));
        assert!(r2.step(0).is_empty(), "no request while the unlock is on its way");
        r2.unlocked();
        assert_eq!(r2.step(0), vec![Action::Request { mode: Mode::Pr }], "asks anew once unlocked");
        let r3 = cache.get_mut(&name("r3")).unwrap();
        r3.unlocked();
        assert!(r3.forgettable(), "nobody waited: the entry can go");
    }

    #[test]
    fn locks_a_peer_waits_for_or_being_converted_are_not_given_up() {
        let (mut lru, mut cache) = cache_of(3, 0);
        cache.get_mut(&name("r0")).unwrap().blocking(Mode::Ex);
        cache.get_mut(&name("r1")).unwrap().busy = Some(Mode::Nl);
        let chosen = lru.choose(&mut cache, 3);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].0.as_str(), "r2");
        assert_eq!(lru.excess(), 2, "the two passed over stay listed");
        assert!(cache[&name("sys")].idle(), "not subject to the bound: kept");
    }

    #[test]
    fn entries_without_a_lock_or_user_are_forgotten() {
        let (mut lru, mut cache) = cache_of(2, 1);
        let r0 = cache.get_mut(&name("r0")).unwrap();
        (r0.id, r0.granted) = (None, None);
        assert!(lru.choose(&mut cache, 1).is_empty());
        assert!(!cache.contains_key(&name("r0")));
        assert_eq!(lru.excess(), 0);
    }
}
