//! Local writes the caller does itself, outside the engine (so that large writes of different
//! callers reach the replica at once), and what must wait for them.
//!
//! [`Engine::write_out`] starts a write like [`Engine::write`] but, when it goes to the peer at
//! once on an established link, leaves its local write to the caller, who reports the outcome
//! with [`Engine::local_written`]. Until then:
//! - a later local write overlapping it waits (`start_waiting`);
//! - a peer message that reads or writes overlapping blocks is held, and every message after it
//!   (their order matters: a write ack overtaking the peer's write would hide a concurrent
//!   write); holding a message is the same as the network delivering it later, so the protocol
//!   is unchanged;
//! - its activity-log extents stay in use, and the node does not reconnect (a handshake could
//!   start a resync of blocks still being written).

use super::*;

/// A local write left to the caller.
#[derive(Debug)]
pub(super) struct LocalOut {
    offset: u64,
    len: u64,
    /// Its activity-log extents, once the peer no longer needs them: freed when written.
    extents: Option<(u32, u32)>,
}

impl Engine {
    /// Submits a write like [`Engine::write`]; when it is sent to the peer at once on an
    /// established link (no resync or verify running), returns the data for the caller to
    /// write to the local replica at `offset`, outside the engine, and to report with
    /// [`Engine::local_written`]. `Output::WriteDone` then says how the peer's part went.
    pub fn write_out(&mut self, now: u64, id: u64, offset: u64, data: Vec<u8>) -> Option<Arc<Vec<u8>>> {
        self.now = now;
        self.hand_out = Some(id);
        self.write(now, id, offset, data);
        self.hand_out = None;
        self.handed.take()
    }

    /// The caller's local write of request `id` (from [`Engine::write_out`]) ended; a failure
    /// marks its blocks out of sync (the peer has what this replica lacks).
    pub fn local_written(&mut self, now: u64, id: u64, result: Result<(), IoFailure>) {
        self.now = now;
        let Some(l) = self.local_out.remove(&id) else { return };
        if let Some(extents) = l.extents {
            self.al.complete(extents);
        }
        if result.is_err() {
            if let Err(e) = self.mark_out_of_sync(l.offset, l.len) {
                tracing::error!(error = %e, "marking a failed local write out of sync");
            }
        }
        while let Some(msg) = self.held.front() {
            if self.blocked_by_local(msg) {
                break;
            }
            let Some(msg) = self.held.pop_front() else { break };
            self.on_message(msg);
        }
        self.start_waiting();
    }

    /// Whether the engine leaves this write's local part to the caller (see `write_out`).
    pub(super) fn hands_out(&self, id: u64) -> bool {
        self.hand_out == Some(id)
            && self.conn == ConnState::Connected
            && self.repl == Repl::Established
            && self.verify.is_none()
            && !self.verify_target_pending
    }

    pub(super) fn handed_out(&mut self, id: u64, offset: u64, data: Arc<Vec<u8>>) {
        self.local_out.insert(id, LocalOut { offset, len: data.len() as u64, extents: None });
        self.handed = Some(data);
    }

    /// Frees a request's activity-log extents, or leaves that to its local write.
    pub(super) fn extents_done(&mut self, id: u64, extents: (u32, u32)) {
        match self.local_out.get_mut(&id) {
            Some(l) => l.extents = Some(extents),
            None => self.al.complete(extents),
        }
    }

    /// A local write left to a caller overlaps `[offset, offset + len)` (a range from the peer,
    /// unchecked: it may reach past the end).
    pub(super) fn overlaps_local(&self, offset: u64, len: u64) -> bool {
        self.local_out.values().any(|l| l.offset < offset.saturating_add(len) && offset < l.offset + l.len)
    }

    /// Holds `msg` behind the local writes under way (see the module comment); gives it back
    /// when it may be handled now.
    pub(super) fn hold(&mut self, msg: Msg) -> Option<Msg> {
        if self.held.is_empty() && !self.blocked_by_local(&msg) {
            return Some(msg);
        }
        self.held.push_back(msg);
        None
    }

    fn blocked_by_local(&self, msg: &Msg) -> bool {
        let range = match msg {
            Msg::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            Msg::ReadRequest { offset, len, .. } => Some((*offset, *len)),
            Msg::ResyncRequest { block, count } | Msg::ResyncZeros { block, count } => {
                Some((block.saturating_mul(BM_BLOCK), count.saturating_mul(BM_BLOCK)))
            }
            Msg::ResyncData { block, data } => Some((block.saturating_mul(BM_BLOCK), data.len() as u64)),
            Msg::VerifyBatch { start, digests } => {
                Some((start.saturating_mul(BM_BLOCK), (digests.len() as u64).saturating_mul(BM_BLOCK)))
            }
            _ => None,
        };
        range.is_some_and(|(offset, len)| self.overlaps_local(offset, len))
    }
}
