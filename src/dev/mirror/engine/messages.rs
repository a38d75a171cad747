//! Dispatch of the peer's messages.

use super::*;

/// Largest peer write [`Engine::receive_quick`] takes: a page-cache write of this size costs
/// microseconds, less than waking another thread for it; a larger one goes to a thread that may
/// wait, and the network task reads the next message meanwhile.
pub const QUICK_WRITE_MAX: usize = 64 << 10;

impl Engine {
    /// A message from the peer.
    pub fn receive(&mut self, now: u64, msg: Msg) {
        self.now = now;
        match (self.conn, msg) {
            (ConnState::Handshake, Msg::Hello(h)) => self.on_hello(h),
            (ConnState::Handshake, msg) => {
                self.protocol_error(format!("unexpected {} during {:?}", msg_name(&msg), self.conn))
            }
            (ConnState::Connected, msg) => {
                if let Some(msg) = self.hold(msg) {
                    self.on_message(msg)
                }
            }
            // A message of a connection already given up.
            (ConnState::StandAlone | ConnState::Unconnected, _) => {}
        }
    }

    /// Takes `msg` if handling it flushes nothing and waits for nothing, so that a network task
    /// may hand it over itself: an acknowledgement that touches no disk, or the peer's next write
    /// of at most [`QUICK_WRITE_MAX`] bytes (a page-cache write, then its ack; DRBD's receiver
    /// writes on its own thread too). Gives it back otherwise.
    pub fn receive_quick(&mut self, now: u64, msg: Msg) -> Result<(), Msg> {
        let quick = match &msg {
            Msg::RecvAck { .. } | Msg::FlushAck { .. } => true,
            // Neither a waiting write to start, a verify resync to begin, nor a protocol error.
            Msg::WriteAck { seq } => {
                self.waiting.is_empty() && !self.verify_target_pending && self.in_flight.contains_key(seq)
            }
            // In order and in range: a protocol error (which writes the meta-disk) is not quick.
            Msg::Write { seq, seen, offset, data } => {
                data.len() <= QUICK_WRITE_MAX
                    && *seq == self.link.seen + 1
                    && *seen <= self.link.next_seq
                    && self.check_range(*offset, data.len() as u64).is_ok()
            }
            _ => false,
        };
        if !quick || self.conn != ConnState::Connected {
            return Err(msg);
        }
        self.receive(now, msg);
        Ok(())
    }

    pub(super) fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Hello(_) => self.protocol_error("a second Hello".into()),
            Msg::Write { seq, seen, offset, data } => self.on_peer_write(seq, seen, offset, data),
            Msg::RecvAck { seq } => {
                if self.cfg.protocol == Protocol::B && self.consistent() {
                    self.complete_request(seq);
                }
            }
            Msg::WriteAck { seq } => match self.in_flight.remove(&seq) {
                Some(r) => {
                    self.extents_done(r.id, r.extents);
                    if !r.completed {
                        self.out.push_back(Output::WriteDone { id: r.id, result: Ok(Written::Replicated) });
                    }
                    self.become_verify_target();
                    self.start_waiting();
                }
                None => self.protocol_error(format!("write ack for unknown request {seq}")),
            },
            Msg::Flush { id } => {
                self.flush_token += 1;
                self.link.peer_flushes.insert(self.flush_token, id);
                self.out.push_back(Output::FlushReplica { token: self.flush_token });
            }
            Msg::FlushAck { id } => {
                for f in self.flushes.iter_mut().filter(|f| f.peer == Some(id)) {
                    f.peer = None;
                }
                self.complete_flushes();
            }
            Msg::ReadRequest { id, offset, len } => {
                if len > MAX_PEER_READ {
                    return self.protocol_error(format!("read request of {len} bytes"));
                }
                let data = match self.check_range(offset, len) {
                    Ok(()) if self.local_good(offset, len) => self.local_read(offset, len).ok(),
                    Ok(()) => None,
                    Err(e) => return self.protocol_error(format!("read request: {e}")),
                };
                self.send(Msg::ReadReply { id, data });
            }
            Msg::ReadReply { id, data } => {
                let Some((caller, _, len)) = self.link.reads.remove(&id) else {
                    return self.protocol_error(format!("read reply for unknown request {id}"));
                };
                let result = match data {
                    Some(d) if d.len() as u64 == len => Ok(d),
                    Some(d) => return self.protocol_error(format!("read reply of {} bytes for {len}", d.len())),
                    None => Err(IoFailure::NoUpToDateData),
                };
                self.out.push_back(Output::ReadDone { id: caller, result });
            }
            Msg::ResyncRequest { block, count } => self.on_resync_request(block, count),
            Msg::ResyncData { block, data } => self.on_resync_data(block, data),
            Msg::ResyncZeros { block, count } => self.on_resync_zeros(block, count),
            Msg::ResyncAck { block, count } => self.on_resync_ack(block, count),
            Msg::ResyncDone => self.on_resync_done(),
            Msg::Role { primary } => {
                self.link.peer_primary = primary;
                if primary && self.is_primary() && !self.cfg.two_primaries {
                    let reason = "both nodes became primary and allow-two-primaries is off: demote one \
                                  (`o2fs secondary`), then connect";
                    self.refuse(reason.into());
                }
            }
            Msg::VerifyBatch { start, digests } => self.on_verify_batch(start, digests),
            Msg::VerifyReply { mismatched, .. } => self.on_verify_reply(mismatched),
            Msg::VerifyDone { oos } => self.on_verify_done(oos),
        }
    }
}

fn msg_name(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello(_) => "Hello",
        Msg::Write { .. } => "Write",
        Msg::RecvAck { .. } => "RecvAck",
        Msg::WriteAck { .. } => "WriteAck",
        Msg::Flush { .. } => "Flush",
        Msg::FlushAck { .. } => "FlushAck",
        Msg::ReadRequest { .. } => "ReadRequest",
        Msg::ReadReply { .. } => "ReadReply",
        Msg::ResyncRequest { .. } => "ResyncRequest",
        Msg::ResyncData { .. } => "ResyncData",
        Msg::ResyncZeros { .. } => "ResyncZeros",
        Msg::ResyncAck { .. } => "ResyncAck",
        Msg::ResyncDone => "ResyncDone",
        Msg::Role { .. } => "Role",
        Msg::VerifyBatch { .. } => "VerifyBatch",
        Msg::VerifyReply { .. } => "VerifyReply",
        Msg::VerifyDone { .. } => "VerifyDone",
    }
}
