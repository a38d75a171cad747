//! Local requests (writes, reads, flushes) and the peer's application writes, with the
//! dual-primary conflict rule.

use super::*;

impl Engine {
    /// Submits a write; its completion comes as `Output::WriteDone { id }`.
    pub fn write(&mut self, now: u64, id: u64, offset: u64, data: Vec<u8>) {
        self.now = now;
        let refused = match self.check_range(offset, data.len() as u64) {
            Err(e) => Some(e),
            Ok(()) if self.io == IoState::Fenced => Some(IoFailure::Fenced),
            Ok(()) => None,
        };
        if let Some(e) = refused {
            self.out.push_back(Output::WriteDone { id, result: Err(e) });
            return;
        }
        self.waiting.push_back(PendingWrite { id, offset, data });
        self.start_waiting();
    }

    /// Starts waiting writes in order while nothing holds the first back.
    pub(super) fn start_waiting(&mut self) {
        while self.io == IoState::Running {
            let Some(w) = self.waiting.front() else { break };
            let (first, end) = Bitmap::blocks_of(w.offset, w.data.len() as u64);
            if self.sync_target.as_ref().is_some_and(|t| t.any_requested(first, end))
                || self.overlaps_local(w.offset, w.data.len() as u64)
            {
                break;
            }
            let extents = self.al.extents_of(w.offset, w.data.len() as u64);
            let Ok(al_changed) = self.al.begin(extents) else { break };
            let Some(w) = self.waiting.pop_front() else { break };
            let len = w.data.len() as u64;
            match self.start_write(w.id, w.offset, w.data, al_changed) {
                Ok(Started::Sent { seq, local: Ok(()) }) => {
                    // A sync target has no up-to-date copy of its own: it acknowledges only what
                    // the peer wrote, whatever the protocol; so does a node whose handshake is
                    // still open (it may be about to become one).
                    let completed = self.cfg.protocol == Protocol::A
                        && self.consistent()
                        && self.conn == ConnState::Connected
                        && self.repl != Repl::SyncTarget
                        && !self.verify_target_pending;
                    if completed {
                        self.out.push_back(Output::WriteDone { id: w.id, result: Ok(Written::Replicated) });
                    }
                    self.in_flight.insert(seq, Request { id: w.id, offset: w.offset, len, extents, completed });
                }
                Ok(Started::Sent { seq, local: Err(e) }) => {
                    // Answered now, tracked until the peer's ack all the same.
                    self.out.push_back(Output::WriteDone { id: w.id, result: Err(e) });
                    self.in_flight.insert(seq, Request { id: w.id, offset: w.offset, len, extents, completed: true });
                }
                Ok(Started::Degraded) => {
                    self.al.complete(extents);
                    self.out.push_back(Output::WriteDone { id: w.id, result: Ok(Written::Degraded) });
                }
                Err(e) => {
                    self.al.complete(extents);
                    self.out.push_back(Output::WriteDone { id: w.id, result: Err(e) });
                }
            }
        }
    }

    /// Sends to the peer and writes locally (or leaves that to the caller, `local`) or,
    /// disconnected, marks the blocks out of sync and writes locally.
    fn start_write(&mut self, id: u64, offset: u64, data: Vec<u8>, al_changed: bool) -> Result<Started, IoFailure> {
        if al_changed {
            // The activity log is on disk before any write to a newly hot extent.
            let hot = self.al.hot().to_vec();
            self.meta.write_al(&hot).map_err(|e| IoFailure::Device(e.to_string()))?;
        }
        let linked = self.linked();
        if self.closed_as_secondary() {
            return Err(IoFailure::Secondary);
        }
        if linked && !self.cfg.two_primaries && self.link.peer_primary {
            return Err(IoFailure::PeerIsPrimary);
        }
        // Promotion on first write; the peer hears of it before the data.
        self.promote()?;
        if linked {
            // Sent first, so that the peer writes while we do (as DRBD submits the local bio and
            // sends the data at once). Should the local write fail, the peer holds data we lack:
            // the blocks are marked out of sync and the write fails.
            self.link.next_seq += 1;
            let seq = self.link.next_seq;
            let data = Arc::new(data);
            self.send(Msg::Write { seq, seen: self.link.seen, offset, data: data.clone() });
            if self.hands_out(id) {
                self.handed_out(id, offset, data);
                return Ok(Started::Sent { seq, local: Ok(()) });
            }
            let local = match self.local_write(offset, &data) {
                Ok(()) => Ok(()),
                Err(e) => self.mark_out_of_sync(offset, data.len() as u64).and(Err(e)),
            };
            return Ok(Started::Sent { seq, local });
        }
        if !self.consistent() {
            return Err(IoFailure::NoUpToDateData);
        }
        self.new_generation()?;
        self.mark_out_of_sync(offset, data.len() as u64)?;
        self.local_write(offset, &data)?;
        Ok(Started::Degraded)
    }

    /// Submits a read; it completes as `Output::ReadDone { id }`. Blocks the local replica lacks
    /// (sync target) are read from the peer. A secondary with explicit roles refuses it.
    pub fn read(&mut self, now: u64, id: u64, offset: u64, len: u64) {
        self.now = now;
        let result = self.check_range(offset, len).and_then(|()| {
            if self.io == IoState::Fenced {
                Err(IoFailure::Fenced)
            } else if self.closed_as_secondary() {
                Err(IoFailure::SecondaryRead)
            } else if self.local_good(offset, len) {
                self.local_read(offset, len).map(Some)
            } else if len > MAX_PEER_READ {
                Err(IoFailure::PeerReadTooLarge { len })
            } else if self.established() && self.repl == Repl::SyncTarget {
                self.link.next_id += 1;
                let rid = self.link.next_id;
                self.link.reads.insert(rid, (id, offset, len));
                self.send(Msg::ReadRequest { id: rid, offset, len });
                Ok(None)
            } else {
                Err(IoFailure::NoUpToDateData)
            }
        });
        match result {
            Ok(None) => {}
            Ok(Some(data)) => self.out.push_back(Output::ReadDone { id, result: Ok(data) }),
            Err(e) => self.out.push_back(Output::ReadDone { id, result: Err(e) }),
        }
    }

    /// Makes completed writes durable on both replicas (the peer's when connected). The peer is
    /// asked first; the local flush follows at the next [`Engine::tick`].
    pub fn flush(&mut self, now: u64, id: u64) {
        self.now = now;
        let peer = self.established().then(|| {
            self.link.next_id += 1;
            self.send(Msg::Flush { id: self.link.next_id });
            self.link.next_id
        });
        self.flushes.push(PendingFlush { id, peer, local: None });
    }

    /// The local replica was flushed for the peer's Flush behind `token` ([`Output::FlushReplica`]):
    /// acknowledged, unless the connection it came on is gone.
    pub fn replica_flushed(&mut self, now: u64, token: u64, result: Result<(), IoFailure>) {
        self.now = now;
        let Some(id) = self.link.peer_flushes.remove(&token) else { return };
        match result {
            Ok(()) => self.send(Msg::FlushAck { id }),
            Err(e) => self.protocol_error(format!("local flush for the peer failed: {e}")),
        }
    }

    /// Flushes the local replica (and meta-disk) once for every flush waiting for it.
    pub(super) fn flush_local(&mut self) {
        if self.flushes.iter().all(|f| f.local.is_some()) {
            return;
        }
        let local = self
            .save_bitmap()
            .and_then(|()| self.meta.flush().map_err(|e| IoFailure::Device(e.to_string())))
            .and_then(|()| self.data.flush().map_err(|e| IoFailure::Device(e.to_string())));
        for f in self.flushes.iter_mut().filter(|f| f.local.is_none()) {
            f.local = Some(local.clone());
        }
        self.complete_flushes();
    }

    /// Completes the flushes that no longer wait for anything.
    pub(super) fn complete_flushes(&mut self) {
        let (done, waiting) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition::<Vec<_>, _>(|f| f.peer.is_none() && f.local.is_some());
        self.flushes = waiting;
        for f in done {
            let result = f.local.unwrap_or(Ok(()));
            self.out.push_back(Output::FlushDone { id: f.id, result });
        }
    }

    pub(super) fn complete_request(&mut self, seq: u64) {
        if let Some(r) = self.in_flight.get_mut(&seq) {
            if !r.completed {
                r.completed = true;
                self.out.push_back(Output::WriteDone { id: r.id, result: Ok(Written::Replicated) });
            }
        }
    }

    pub(super) fn on_peer_write(&mut self, seq: u64, seen: u64, offset: u64, data: Arc<Vec<u8>>) {
        if let Err(e) = self.check_range(offset, data.len() as u64) {
            return self.protocol_error(format!("peer write {seq}: {e}"));
        }
        if seq != self.link.seen + 1 || seen > self.link.next_seq {
            return self.protocol_error(format!("peer write {seq} (seen {seen}) out of order"));
        }
        self.link.seen = seq;
        tracing::debug!(seq, seen, offset, len = data.len(), "peer write");
        if self.cfg.protocol == Protocol::B {
            self.send(Msg::RecvAck { seq });
        }
        let len = data.len() as u64;
        // Our writes the peer had not seen when it issued this one, and that overlap it.
        let concurrent: Vec<(u64, u64)> = self
            .in_flight
            .range(seen + 1..)
            .filter(|(_, r)| overlaps(r.offset, r.len, offset, len))
            .map(|(_, r)| (r.offset, r.len))
            .collect();
        let parts = if concurrent.is_empty() {
            vec![(offset, len)]
        } else if self.cfg.node_id < self.cfg.peer_id {
            tracing::info!(offset, len, ours = ?concurrent, "concurrent writes: ours win (lower node id)");
            subtract(offset, len, &concurrent)
        } else {
            tracing::info!(offset, len, ours = ?concurrent, "concurrent writes: the peer's win (lower node id)");
            vec![(offset, len)]
        };
        for (at, n) in parts {
            let from = (at - offset) as usize;
            if let Err(e) = self.local_write(at, &data[from..from + n as usize]) {
                return self.protocol_error(format!("writing the peer's data: {e}"));
            }
        }
        self.send(Msg::WriteAck { seq });
    }
}

/// How [`Engine::start_write`] started a write.
enum Started {
    /// Sent to the peer as `seq`; `local` is the local write's outcome.
    Sent { seq: u64, local: Result<(), IoFailure> },
    /// Disconnected: written locally, the blocks marked out of sync.
    Degraded,
}

/// Byte ranges of `[offset, offset+len)` not covered by any of `holes`.
fn subtract(offset: u64, len: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut parts = vec![(offset, offset + len)];
    for &(h0, hlen) in holes {
        let h1 = h0 + hlen;
        parts = parts
            .into_iter()
            .flat_map(|(a, b)| {
                if h1 <= a || h0 >= b {
                    vec![(a, b)]
                } else {
                    [(a, h0.max(a)), (h1.min(b), b)].into_iter().filter(|(x, y)| x < y).collect()
                }
            })
            .collect();
    }
    parts.into_iter().map(|(a, b)| (a, b - a)).collect()
}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b + blen && b < a + alen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_holes() {
        assert_eq!(subtract(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(subtract(0, 100, &[(10, 10), (50, 100)]), vec![(0, 10), (20, 30)]);
        assert_eq!(subtract(10, 10, &[(0, 100)]), vec![]);
        assert!(overlaps(0, 10, 9, 1) && !overlaps(0, 10, 10, 5));
    }
}
