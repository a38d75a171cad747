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
//! This module is the per-resource bookkeeping only (sans-IO): it says what to ask of the DLM;
//! `service` performs it.

use std::collections::VecDeque;

use super::{LockId, Lvb, Mode};

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
                let lvb = matches!(self.granted, Some(Mode::Ex) | Some(Mode::Pw)).then(|| self.lvb.clone());
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
        assert_eq!(c.step(0), vec![Action::Downconvert { id: LockId(1), mode: Mode::Pr, lvb: Some(Lvb::default()) }]);
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
        assert_eq!(c.step(0), vec![Action::Downconvert { id: LockId(1), mode: Mode::Nl, lvb: Some(Lvb::default()) }]);
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
        let down = Action::Downconvert { id: LockId(3), mode: Mode::Nl, lvb: Some(Lvb::default()) };
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
}
