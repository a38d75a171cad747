//! The peer connection: up and down, freeze and fence, administrator commands, and the
//! handshake that compares generations and starts a resync.
//!
//! Writes frozen by a lost link (`fencing resource-and-stonith`) do not keep the node from
//! reconnecting: the cluster may keep the peer as a member (its own link came back within its
//! grace, or only the mirror's connection broke) and never decide. Their blocks are marked out
//! of sync, and the marks only they made are sent apart in the Hello (`frozen`), so that both
//! sides decide alike: if neither side started a generation meanwhile, those marks are cleared
//! and the writes are sent again; otherwise the marks join the resync, the sync source sends
//! its frozen writes again and the sync target's fail ([`IoFailure::Superseded`]).

use super::*;
use crate::dev::mirror::bitmap::runs_of;
use crate::dev::mirror::generation::JUST_CREATED;
use crate::dev::mirror::proto::HEAD_BYTES;

impl Engine {
    /// The transport is up: send our Hello.
    pub fn connected(&mut self, now: u64) {
        self.now = now;
        if self.conn != ConnState::Unconnected {
            return;
        }
        self.conn = ConnState::Handshake;
        self.link = Link::default();
        let hello = Hello {
            size: self.sup.data_size,
            gens: self.sup.gens,
            consistent: self.consistent(),
            crashed_primary: self.sup.flags & flags::CRASHED_PRIMARY != 0,
            discard_my_data: self.discard_my_data,
            fresh_in_sync: self.sup.flags & flags::FRESH_IN_SYNC != 0,
            primary: self.is_primary(),
            oos: self.runs_without_frozen(),
            frozen: runs_of(self.frozen_bits.iter().copied()),
            head: self.head_digest(),
        };
        self.link.head_sent = hello.head;
        self.send(Msg::Hello(hello));
    }

    /// The out-of-sync runs, without the blocks only frozen writes marked.
    fn runs_without_frozen(&mut self) -> Vec<(u64, u64)> {
        self.mark_frozen_bits(false);
        let runs = self.bitmap.runs();
        self.mark_frozen_bits(true);
        runs
    }

    /// Sets or clears the blocks only frozen writes marked. Cleared, they stay covered: the
    /// frozen writes keep their activity-log extents in use until they are decided, so a crash
    /// marks them again.
    fn mark_frozen_bits(&mut self, on: bool) {
        for &b in &self.frozen_bits {
            match on {
                true => self.bitmap.set_range(b, b + 1),
                false => self.bitmap.clear(b) as u64,
            };
        }
    }

    fn head_digest(&self) -> Option<[u8; 20]> {
        use sha1::{Digest, Sha1};
        let head = self.local_read(0, HEAD_BYTES.min(self.sup.data_size)).ok()?;
        Some(Sha1::digest(head).into())
    }

    /// The transport is down (or was dropped). Idempotent.
    pub fn disconnected(&mut self, now: u64, reason: &str) {
        self.now = now;
        self.lose_peer(reason, ConnState::Unconnected);
    }

    pub(super) fn lose_peer(&mut self, reason: &str, next: ConnState) {
        if !matches!(self.conn, ConnState::Handshake | ConnState::Connected) {
            if next == ConnState::StandAlone {
                self.conn = next;
            }
            return;
        }
        tracing::warn!(reason, in_flight = self.in_flight.len(), "connection to the peer lost");
        self.conn = next;
        self.repl = Repl::Off;
        self.rotated = false;
        self.sync_target = None;
        self.progress = None;
        self.verify_target_pending = false;
        if let Some(v) = self.verify.take() {
            tracing::warn!(status = ?v.status(), "online verify aborted");
        }
        let link = std::mem::take(&mut self.link);
        for (_, (id, offset, len)) in link.reads {
            let result = if self.local_good(offset, len) {
                self.local_read(offset, len)
            } else {
                Err(IoFailure::NoUpToDateData)
            };
            self.out.push_back(Output::ReadDone { id, result });
        }
        // The peer's part of pending flushes is moot: what it lacks is marked out of sync.
        for f in &mut self.flushes {
            f.peer = None;
        }
        self.complete_flushes();
        let reqs: Vec<Request> = std::mem::take(&mut self.in_flight).into_values().collect();
        let mut marked = Ok(());
        // Messages of the lost connection held behind local writes go with it.
        self.held.clear();
        let freeze = self.cfg.fencing == Fencing::Freeze && self.io == IoState::Running && !self.peer_excluded;
        let (done, pending): (Vec<Request>, Vec<Request>) = reqs.into_iter().partition(|r| r.completed);
        // Writes that froze come last: the blocks only they mark are told apart (`frozen_bits`).
        // They keep their activity-log extents until they are decided (`take_frozen`).
        for (r, frozen) in done.iter().map(|r| (r, false)).chain(pending.iter().map(|r| (r, freeze))) {
            let (first, end) = Bitmap::blocks_of(r.offset, r.len);
            if frozen {
                self.frozen_bits.extend((first..end).filter(|&b| !self.bitmap.test(b)));
            } else {
                self.extents_done(r.id, r.extents);
            }
            self.bitmap.set_range(first, end);
        }
        if !done.is_empty() || !pending.is_empty() {
            marked = self.save_bitmap();
        }
        if !done.is_empty() && self.consistent() {
            // Protocol A acknowledged writes the peer may not have.
            marked = marked.and_then(|()| self.new_generation());
        }
        if freeze {
            tracing::warn!(
                pending = pending.len(),
                "peer lost: I/O frozen until the cluster decides or the link returns"
            );
            self.io = IoState::Frozen;
            self.frozen.extend(pending);
        } else {
            self.complete_degraded(pending, marked);
        }
        self.start_waiting();
    }

    /// Takes the frozen writes, letting their activity-log extents go; their blocks stay
    /// marked out of sync.
    fn take_frozen(&mut self) -> Vec<Request> {
        self.frozen_bits.clear();
        let frozen = std::mem::take(&mut self.frozen);
        for r in &frozen {
            self.al.complete(r.extents);
        }
        frozen
    }

    /// Completes writes the peer may lack: successful (after a new generation) if the local
    /// replica is consistent.
    pub(super) fn complete_degraded(&mut self, reqs: Vec<Request>, marked: Result<(), IoFailure>) {
        if reqs.is_empty() {
            return;
        }
        let result = marked.and_then(|()| {
            if !self.consistent() {
                return Err(IoFailure::NoUpToDateData);
            }
            self.new_generation()
        });
        for r in reqs {
            let result = result.clone().map(|()| Written::Degraded);
            self.out.push_back(Output::WriteDone { id: r.id, result });
        }
    }

    /// The cluster decided this node survives: frozen writes complete, I/O goes on degraded.
    /// Refused for a node that has not met its peer since it started: the peer may have gone on
    /// alone meanwhile (DRBD lets only an UpToDate node resume alone).
    pub fn resume_io(&mut self, now: u64) -> Result<(), String> {
        self.now = now;
        if self.io != IoState::Frozen {
            return Ok(());
        }
        if !self.peer_seen {
            return Err("this node has not reached its peer since it started; its data may be outdated".into());
        }
        if self.conn == ConnState::Handshake {
            // Our Hello showed the generation before the degraded writes below.
            self.out.push_back(Output::Drop { reason: "I/O resumed without the peer".into() });
            self.lose_peer("I/O resumed without the peer", ConnState::Unconnected);
        }
        tracing::info!(pending = self.frozen.len(), "I/O resumed after the peer was lost");
        self.io = IoState::Running;
        let frozen = self.take_frozen();
        self.complete_degraded(frozen, Ok(()));
        self.start_waiting();
        Ok(())
    }

    /// The cluster's verdict on the peer: still a member, or out (dead or fenced). Out, a frozen
    /// node resumes alone and a later loss of the link no longer freezes; the verdict holds
    /// until the cluster readmits the peer. It may come before the mirror itself notices the
    /// lost link, so it cannot be a one-shot resume.
    pub fn peer_in_cluster(&mut self, now: u64, member: bool) -> Result<(), String> {
        self.now = now;
        self.peer_excluded = !member;
        if member {
            return Ok(());
        }
        self.resume_io(now)
    }

    /// The cluster decided this node loses: every waiting write fails, and no I/O is done until
    /// restart. The blocks of frozen writes stay marked out of sync.
    pub fn fence(&mut self, now: u64) {
        self.now = now;
        tracing::error!(pending = self.frozen.len() + self.waiting.len(), "fenced: failing all I/O");
        self.io = IoState::Fenced;
        let frozen = self.take_frozen();
        let ids: Vec<u64> = frozen.into_iter().map(|r| r.id).chain(self.waiting.drain(..).map(|w| w.id)).collect();
        for id in ids {
            self.out.push_back(Output::WriteDone { id, result: Err(IoFailure::Fenced) });
        }
        if self.conn != ConnState::StandAlone {
            self.drop_link("fenced");
        }
    }

    pub(super) fn drop_link(&mut self, reason: &str) {
        self.out.push_back(Output::Drop { reason: reason.to_string() });
        self.lose_peer(reason, ConnState::StandAlone);
    }

    /// A peer that broke the protocol: log, drop, and try again later.
    pub(super) fn protocol_error(&mut self, detail: String) {
        tracing::error!(%detail, "peer protocol error");
        self.out.push_back(Output::Drop { reason: detail.clone() });
        self.lose_peer(&detail, ConnState::Unconnected);
    }

    /// Administrator: stop connecting (`drbdadm disconnect`).
    pub fn disconnect(&mut self, now: u64) {
        self.now = now;
        self.drop_link("disconnected by the administrator");
    }

    /// Administrator: connect again after a refusal or `disconnect`.
    pub fn connect(&mut self, now: u64) {
        self.now = now;
        if self.conn == ConnState::StandAlone {
            self.conn = ConnState::Unconnected;
        }
    }

    /// Administrator: on the next handshake, throw this node's changes away if the nodes split
    /// (`drbdadm connect --discard-my-data`).
    pub fn discard_my_data(&mut self, now: u64) {
        tracing::warn!("discard-my-data: this node's changes since the split will be overwritten");
        self.discard_my_data = true;
        self.connect(now);
    }

    /// Administrator: declare the local replica invalid; it becomes the sync target of every
    /// block on the next handshake (`drbdadm invalidate`).
    pub fn invalidate(&mut self, now: u64) -> Result<(), IoFailure> {
        self.now = now;
        tracing::warn!("invalidate: the whole local replica will be resynced from the peer");
        self.bitmap.set_all();
        // No mark is a frozen write's alone any more.
        self.frozen_bits.clear();
        self.save_bitmap()?;
        self.set_flag(flags::CONSISTENT, false)?;
        if self.established() {
            self.out.push_back(Output::Drop { reason: "invalidate".into() });
            self.lose_peer("invalidate", ConnState::Unconnected);
        }
        Ok(())
    }

    /// Clean shutdown: the bitmap and "not primary" reach the meta-disk.
    pub fn down(&mut self) -> Result<(), IoFailure> {
        self.save_bitmap()?;
        self.set_flag(flags::PRIMARY, false)?;
        self.meta.flush().map_err(|e| IoFailure::Device(e.to_string()))
    }

    /// Administrator: demote this node (`drbdadm secondary`); refused while its writes are in
    /// flight. With explicit roles (`become-primary-on`) it then refuses writes until
    /// [`Engine::primary`]; without, its next write promotes it again.
    pub fn secondary(&mut self, now: u64) -> Result<(), String> {
        self.now = now;
        if !self.in_flight.is_empty()
            || !self.waiting.is_empty()
            || !self.frozen.is_empty()
            || !self.local_out.is_empty()
        {
            return Err("writes are in flight; retry when they completed".into());
        }
        if self.is_primary() {
            self.set_flag(flags::PRIMARY, false).map_err(|e| e.to_string())?;
            if self.linked() {
                self.send(Msg::Role { primary: false });
            }
            tracing::info!("demoted to secondary");
        }
        Ok(())
    }

    /// Administrator: promote this node (`drbdadm primary`). Refused while the peer is primary
    /// and allow-two-primaries is off, and without up-to-date data at hand (an inconsistent
    /// replica and no peer).
    pub fn primary(&mut self, now: u64) -> Result<(), String> {
        self.now = now;
        let refused = if self.io == IoState::Fenced {
            Some(IoFailure::Fenced)
        } else if self.linked() && !self.cfg.two_primaries && self.link.peer_primary {
            Some(IoFailure::PeerIsPrimary)
        } else if !self.consistent() && !self.established() {
            Some(IoFailure::NoUpToDateData)
        } else {
            None
        };
        match refused {
            Some(e) => Err(e.to_string()),
            None => self.promote().map_err(|e| e.to_string()),
        }
    }

    /// Becomes primary, telling the peer (before any data it writes as primary).
    pub(super) fn promote(&mut self) -> Result<(), IoFailure> {
        if self.is_primary() {
            return Ok(());
        }
        self.set_flag(flags::PRIMARY, true)?;
        if self.linked() {
            self.send(Msg::Role { primary: true });
        }
        tracing::info!("promoted to primary");
        Ok(())
    }

    /// Administrator: start an online verify (the peer must be connected, no resync running).
    pub fn start_verify(&mut self, now: u64) -> Result<(), String> {
        self.now = now;
        if !self.established() || self.repl != Repl::Established {
            return Err(format!("verify needs an established connection (now {:?}/{:?})", self.conn, self.repl));
        }
        if self.verify.is_some() {
            return Err("a verify is already running".into());
        }
        tracing::info!(blocks = self.bitmap.len(), "online verify started");
        self.verify = Some(Verify::new(self.bitmap.len(), self.cfg.verify_batch, self.cfg.rate_bytes_per_sec, now));
        self.plan_verify();
        Ok(())
    }

    pub(super) fn on_hello(&mut self, h: Hello) {
        if h.size != self.sup.data_size {
            let reason = format!("the peer's replica exposes {} bytes, ours {}", h.size, self.sup.data_size);
            return self.refuse(reason);
        }
        let me = Side {
            gens: self.sup.gens,
            consistent: self.consistent(),
            crashed_primary: self.sup.flags & flags::CRASHED_PRIMARY != 0,
            discard_my_data: self.discard_my_data,
            has_bits: self.bitmap.count() > self.frozen_bits.len() as u64,
            fresh_in_sync: self.sup.flags & flags::FRESH_IN_SYNC != 0,
        };
        let peer = Side {
            gens: h.gens,
            consistent: h.consistent,
            crashed_primary: h.crashed_primary,
            discard_my_data: h.discard_my_data,
            has_bits: !h.oos.is_empty(),
            fresh_in_sync: h.fresh_in_sync,
        };
        if h.primary && self.is_primary() && !self.cfg.two_primaries {
            return self.refuse(
                "both nodes are primary and allow-two-primaries is off: demote one (`o2fs secondary`), then connect"
                    .into(),
            );
        }
        self.link.peer_primary = h.primary;
        let lower = self.cfg.node_id < self.cfg.peer_id;
        let decision = decide(&me, &peer, lower);
        tracing::info!(?decision, ours = ?me.gens, peers = ?peer.gens, "handshake");
        // Neither side started a generation since they last met: frozen writes are sent again.
        let same_gen = h.gens.current == self.sup.gens.current;
        let frozen_any = !self.frozen_bits.is_empty() || !h.frozen.is_empty();
        let result = match decision {
            Decision::Refuse(r) => return self.refuse(r.to_string()),
            // Both replicas "just created" are in sync only if they hold the same data: mkfs run
            // on each node's disk makes two volumes, and nothing would ever resync them. (Frozen
            // writes may be what differs: both nodes met before they froze.)
            Decision::InSync
                if self.sup.gens.current == JUST_CREATED
                    && !frozen_any
                    && h.head.zip(self.link.head_sent).is_some_and(|(theirs, ours)| ours != theirs) =>
            {
                return self.refuse(
                    "both replicas are new but hold different data at their start (two different volumes?): \
                     invalidate the one to be overwritten (`o2fs invalidate`)"
                        .into(),
                );
            }
            Decision::InSync => {
                self.mark_frozen_bits(false);
                self.mark_fresh_in_sync();
                self.sup.gens.in_sync();
                self.sup.flags &= !flags::CRASHED_PRIMARY;
                self.repl = Repl::Established;
                self.save_super()
            }
            Decision::Resync { source, full } => self.start_resync(source, full, &h),
        };
        self.discard_my_data = false;
        self.peer_seen = true;
        self.last_refusal = None;
        self.conn = ConnState::Connected;
        self.link.peer = Some(h);
        if let Err(e) = result {
            tracing::error!(error = %e, "meta-disk write at handshake");
            // Still frozen, still marked.
            self.mark_frozen_bits(true);
            return self.protocol_error(format!("local meta-disk failed: {e}"));
        }
        let resent = self.settle_frozen(same_gen || self.repl == Repl::SyncSource);
        if self.io == IoState::Frozen && self.frozen.is_empty() {
            tracing::info!("peer connected: frozen I/O resumes");
            self.io = IoState::Running;
            self.start_waiting();
        }
        self.after_resend(resent);
        self.plan_resync();
    }

    /// Decides the frozen writes once the handshake is done. Sent again (as new writes, with
    /// the local replica's data of their range, in their order and before the writes that
    /// waited behind them) when the peer cannot hold newer data for them: same generation on
    /// both sides (a write the peer already applied is applied again with the same bytes, or
    /// lost to a concurrent one of the lower node as any concurrent write), or this node is
    /// the sync source. On a sync target they fail: the resync overwrites their blocks with
    /// the peer's newer data, and completing them afterwards would acknowledge data that is
    /// gone (their marks stay and joined the resync on both sides).
    /// Returns the writes sent again, for [`Engine::after_resend`] once they started.
    fn settle_frozen(&mut self, resend: bool) -> Vec<Request> {
        self.frozen_bits.clear();
        if self.frozen.is_empty() || !resend {
            let frozen = self.take_frozen();
            if !frozen.is_empty() {
                tracing::error!(
                    writes = frozen.len(),
                    "the peer holds newer data: writes frozen by the lost link fail"
                );
            }
            for r in frozen {
                self.out.push_back(Output::WriteDone { id: r.id, result: Err(IoFailure::Superseded) });
            }
            return Vec::new();
        }
        let frozen = std::mem::take(&mut self.frozen);
        tracing::info!(writes = frozen.len(), "peer back: writes frozen by the lost link are sent again");
        let mut again = VecDeque::with_capacity(frozen.len() + self.waiting.len());
        for r in &frozen {
            match self.local_read(r.offset, r.len) {
                Ok(data) => again.push_back(PendingWrite { id: r.id, offset: r.offset, data }),
                Err(e) => self.out.push_back(Output::WriteDone { id: r.id, result: Err(e) }),
            }
        }
        again.append(&mut self.waiting);
        self.waiting = again;
        frozen
    }

    /// After the writes sent again started: the ones not under way to the peer now (their
    /// local read or start failed) are marked out of sync again, as their local replica holds
    /// them; then the extents they kept while frozen go (the writes hold their own by now).
    fn after_resend(&mut self, frozen: Vec<Request>) {
        for r in frozen {
            if !self.in_flight.values().any(|q| q.id == r.id) {
                if let Err(e) = self.mark_out_of_sync(r.offset, r.len) {
                    tracing::error!(error = %e, "marking a write sent again out of sync");
                }
            }
            self.al.complete(r.extents);
        }
    }

    pub(super) fn refuse(&mut self, reason: String) {
        tracing::error!(%reason, "connection refused");
        self.last_refusal = Some(reason.clone());
        self.drop_link(&reason);
    }

    pub(super) fn start_resync(&mut self, source: bool, full: bool, h: &Hello) -> Result<(), IoFailure> {
        if h.gens.current == self.sup.gens.current {
            // Both hold this generation (a repair resync): the bitmap id has served. Frozen
            // writes are sent again instead of resynced.
            self.sup.gens.in_sync();
            self.mark_frozen_bits(false);
        } else {
            // The peer's frozen writes lost to newer data, or go to us by the resync.
            self.bitmap.merge_runs(&h.frozen);
        }
        if full {
            self.bitmap.set_all();
        } else {
            self.bitmap.merge_runs(&h.oos);
        }
        self.save_bitmap()?;
        let total = self.bitmap.count();
        tracing::info!(source, full, blocks = total, "resync starts");
        self.progress = Some(Progress::new(total, self.now));
        if source {
            self.repl = Repl::SyncSource;
            Ok(())
        } else {
            self.repl = Repl::SyncTarget;
            self.sup.gens.start_sync_target(&h.gens, full);
            self.save_super()?;
            let t = SyncTarget::new(h.gens.current, self.cfg.rate_bytes_per_sec, self.cfg.resync_depth, self.now);
            self.sync_target = Some(t);
            self.set_flag(flags::CONSISTENT, false)
        }
    }
}
