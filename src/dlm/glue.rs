//! Lock caching above the DLM (what OCFS2 calls dlmglue): one DLM lock per resource per node,
//! kept at its granted mode after local holders let go, and downconverted only when a blocking
//! callback says another node wants it — after the owner's downconvert callback has run (where
//! the filesystem flushes or invalidates). Re-taking a cached lock sends no message.
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

    /// A local user asks for `mode`. Returns whether it was granted from the cache at once
    /// (no message); otherwise it waits under `ticket` and `step` says what to ask the DLM.
    pub fn acquire(&mut self, ticket: u64, mode: Mode) -> bool {
        // A peer is waiting: new local users queue behind the downconvert (no starvation).
        let peer_waits = self.blocked.is_some_and(|w| !mode.compatible(w));
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
        match (self.busy, self.id) {
            (Some(m), Some(id)) if self.waiters.is_empty() && !covers(self.granted, m) => vec![Action::Cancel { id }],
            _ => Vec::new(),
        }
    }

    pub fn release(&mut self, mode: Mode) {
        if mode == Mode::Ex {
            self.writer = false;
        } else {
            self.readers = self.readers.saturating_sub(1);
        }
    }

    /// The DLM granted `mode`.
    pub fn granted(&mut self, mode: Mode, lvb: Lvb) {
        self.granted = Some(mode);
        self.busy = None;
        self.lvb = lvb;
        // A grant ends the blocking episode: if a peer still waits, the master sends a new
        // BAST after this grant (the link is FIFO), and our waiters are served first.
        self.blocked = None;
    }

    /// The request or conversion in flight ended without a grant (it was cancelled); waiters
    /// that remain ask again at the next `step`.
    pub fn failed(&mut self) {
        self.busy = None;
        if self.granted.is_none() {
            self.id = None;
        }
    }

    pub fn blocking(&mut self, wanted: Mode) {
        self.blocked = Some(wanted);
    }

    /// What to do now: serve waiters from the cache, downconvert for a blocked peer, or ask for
    /// more.
    pub fn step(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.busy.is_some() {
            return out;
        }
        if let (Some(wanted), Some(id)) = (self.blocked, self.id) {
            let target = yield_to(wanted);
            let over = |m: Mode| !covers(Some(target), m);
            let holding_over = (self.writer && over(Mode::Ex)) || (self.readers > 0 && over(Mode::Pr));
            if !holding_over && self.granted.is_some_and(|g| g != target && !covers(Some(target), g)) {
                self.busy = Some(target);
                let lvb = matches!(self.granted, Some(Mode::Ex) | Some(Mode::Pw)).then(|| self.lvb.clone());
                out.push(Action::Downconvert { id, mode: target, lvb });
                return out;
            }
            if holding_over {
                return out;
            }
        }
        while let Some(w) = self.waiters.front() {
            if covers(self.granted, w.mode) && self.local_free(w.mode) {
                let (ticket, mode) = (w.ticket, w.mode);
                self.waiters.pop_front();
                self.hold(mode);
                out.push(Action::Wake { ticket });
            } else {
                break;
            }
        }
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
        assert!(!c.acquire(1, Mode::Ex));
        assert_eq!(c.step(), vec![Action::Request { mode: Mode::Ex }]);
        c.id = Some(LockId(7));
        c.granted(Mode::Ex, Lvb::default());
        assert_eq!(c.step(), vec![Action::Wake { ticket: 1 }]);
        c.release(Mode::Ex);
        assert!(c.step().is_empty(), "kept at Ex, nothing sent");
        assert!(c.acquire(2, Mode::Pr), "Ex covers Pr: from the cache");
        assert!(!c.acquire(3, Mode::Ex), "a local writer waits for the local reader");
        c.release(Mode::Pr);
        assert_eq!(c.step(), vec![Action::Wake { ticket: 3 }]);
    }

    #[test]
    fn bast_downconverts_after_holders_leave_and_blocks_newcomers() {
        let mut c = Cached { id: Some(LockId(1)), granted: Some(Mode::Ex), ..Default::default() };
        assert!(c.acquire(1, Mode::Ex));
        c.blocking(Mode::Pr);
        assert!(c.step().is_empty(), "holder still inside");
        assert!(!c.acquire(2, Mode::Ex), "newcomers queue behind the peer");
        c.release(Mode::Ex);
        assert_eq!(c.step(), vec![Action::Downconvert { id: LockId(1), mode: Mode::Pr, lvb: Some(Lvb::default()) }]);
        c.granted(Mode::Pr, Lvb::default());
        assert_eq!(c.blocked, None);
        // The queued newcomer now needs Ex again: it asks, behind the peer.
        assert_eq!(c.step(), vec![Action::Convert { id: LockId(1), mode: Mode::Ex }]);
    }

    #[test]
    fn abandoned_request_is_withdrawn_unless_someone_else_waits() {
        let mut c = Cached::default();
        assert!(!c.acquire(1, Mode::Ex));
        assert!(!c.acquire(2, Mode::Ex));
        assert_eq!(c.step(), vec![Action::Request { mode: Mode::Ex }]);
        c.id = Some(LockId(4));
        assert!(c.abandon(1).is_empty(), "ticket 2 still waits for the request");
        assert_eq!(c.abandon(2), vec![Action::Cancel { id: LockId(4) }]);
        c.failed();
        assert_eq!((c.id, c.busy), (None, None));
        assert!(c.step().is_empty());
    }
}
