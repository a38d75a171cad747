//! Membership: which nodes form the cluster now, decided the same way on every survivor.
//!
//! Sans-IO: the node's runtime feeds link events (an authenticated connection to a peer came up
//! or went down), peers' messages, disk-heartbeat samples and the clock; the machine answers with
//! messages to send, new views and, when it has lost quorum, a fence order.
//!
//! Rules (modelled on o2quo, with o2cb's tie-break):
//! - Every node reports to its peers which nodes it reaches (incarnations included, so a
//!   restarted node is a new node). The lowest node of the connected component is the leader; it
//!   picks the largest set of mutually reaching nodes (current members first, then joiners, in
//!   node order) and, if that set is quorate, proposes it as the next view. Views are applied in
//!   epoch order, so every survivor sees the same sequence of views (node up/down events in the
//!   same order).
//! - Reports can be stale, so two nodes may each believe for a moment that they lead. An epoch
//!   therefore names its proposer (`round << 8 | leader`): no two different views ever share an
//!   epoch. A leader that hears of an epoch above its own proposes above it, so the views meet
//!   again; and a member applies a view that leaves out members of its current view only once
//!   it too knows them dead (else it keeps the view pending), so a view from a leader that did
//!   not know of a joiner cannot drop that live joiner behind its back.
//! - Quorum: over the counted nodes — the configured nodes, less those the disk heartbeat shows
//!   dead — a set is quorate when it holds more than half, or exactly half including the lowest
//!   counted node (so in a two-node split the lower node number survives).
//! - Freeze, then decide: a lost link is not acted on until the peer's fate is known. Without a
//!   disk heartbeat that is after `link_grace_ms`; with one, when the peer's sector stops changing
//!   (dead: crashed, or fenced — a fenced node stops beating) or is seen changing after the loss
//!   (alive: a network split, settled by quorum). A view that drops a member is proposed only
//!   once that member is dead on disk (or, without a disk, after the grace), so a survivor never
//!   recovers a node that might still write.
//! - A member whose reachable members are not quorate, or that sees a view without itself,
//!   fences: it stops all I/O until restarted. A member that stays linked to the leader but
//!   has not reached every other member for `link_grace_ms` is told to fence (evicted).
//! - A link that broke and came back within the grace may have lost messages: the leader then
//!   proposes a new view with the same members, which makes the layers above resend their state.
//! - A node that stops cleanly says so (`Leave`) before it closes its links: the others count it
//!   dead at once and no longer count it for quorum (as o2quo counts only heartbeating nodes), so
//!   the higher node of a two-node cluster goes on when the lower one unmounts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub type NodeId = u8;

/// Timing of the membership decisions (ms).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A lost link is given this long to come back before the peer counts as unreachable
    /// (o2net's idle timeout, 30000 ms). Used when there is no disk heartbeat.
    pub link_grace_ms: u64,
    /// Disk heartbeat interval (2000 ms) and dead threshold (31 beats).
    pub disk_interval_ms: u64,
    pub disk_dead_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { link_grace_ms: 30000, disk_interval_ms: 2000, disk_dead_ms: 31 * 2000 }
    }
}

/// A view: the members and their incarnations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    pub members: BTreeMap<NodeId, u64>,
}

impl View {
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        self.members.keys().copied().collect()
    }
}

/// Messages between membership machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberMsg {
    /// The sender (`incarnation`) reaches these peers (with their incarnations); `reconnects`
    /// counts links to peers that broke and came back.
    Reach { incarnation: u64, reach: BTreeMap<NodeId, u64>, reconnects: u64, epoch: u64 },
    /// The leader's new view.
    Propose(View),
    /// The leader leaves the receiver out of the next view (it does not reach every member):
    /// the receiver fences.
    Evict { epoch: u64 },
    /// The sender (`incarnation`) stops cleanly: it holds nothing and writes nothing more.
    Leave { incarnation: u64 },
}

/// What the machine asks of its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Send {
        to: NodeId,
        msg: MemberMsg,
    },
    /// Install this view (same order on every member).
    View(View),
    /// Stop all I/O now and for good.
    Fence {
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Link {
    incarnation: u64,
    up: bool,
    /// When the link last went down.
    down_since: u64,
}

#[derive(Debug, Clone, Default)]
struct Report {
    reach: BTreeMap<NodeId, u64>,
    reconnects: u64,
    /// The sender's view epoch (0: none yet).
    epoch: u64,
}

/// Disk-heartbeat knowledge of one node.
#[derive(Debug, Clone)]
struct Disk {
    sector: Option<Vec<u8>>,
    changed_at: u64,
}

/// Fate of a peer whose link is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Unknown,
    Alive,
    Dead,
}

pub struct Membership {
    me: NodeId,
    incarnation: u64,
    configured: BTreeSet<NodeId>,
    timing: Timing,
    now: u64,
    /// Disk heartbeat in use, and since when it is watched.
    disk_since: Option<u64>,
    disk: BTreeMap<NodeId, Disk>,
    links: BTreeMap<NodeId, Link>,
    reports: BTreeMap<NodeId, Report>,
    reconnects: u64,
    view: Option<View>,
    /// Reconnect counts of the members when the current view was proposed (leader only).
    basis: BTreeMap<NodeId, u64>,
    /// Live members the leader told to fence, and when.
    evicted: BTreeMap<NodeId, u64>,
    /// Live, linked members the leader would leave out (they do not reach every other member),
    /// and since when: evicted only after `link_grace_ms`, as reports may be stale until then.
    unlinked: BTreeMap<NodeId, u64>,
    /// A proposed view that leaves out members this node does not know dead yet.
    pending: Option<View>,
    /// Peers (and the incarnation) that left cleanly: that incarnation is dead, and the node is
    /// not counted for quorum until a view has it again.
    left: BTreeMap<NodeId, u64>,
    /// When this machine started (a node forming a cluster first looks for running ones).
    born: u64,
    /// This node left: it decides nothing more.
    leaving: bool,
    fenced: Option<String>,
    out: VecDeque<MemberEvent>,
}

impl Membership {
    /// `disk`: whether disk-heartbeat samples will be fed (`disk_sample`).
    pub fn new(
        me: NodeId,
        incarnation: u64,
        configured: BTreeSet<NodeId>,
        timing: Timing,
        now: u64,
        disk: bool,
    ) -> Membership {
        let mut m = Membership {
            me,
            incarnation,
            configured,
            timing,
            now,
            disk_since: disk.then_some(now),
            disk: BTreeMap::new(),
            links: BTreeMap::new(),
            reports: BTreeMap::new(),
            reconnects: 0,
            view: None,
            basis: BTreeMap::new(),
            evicted: BTreeMap::new(),
            unlinked: BTreeMap::new(),
            pending: None,
            left: BTreeMap::new(),
            born: now,
            leaving: false,
            fenced: None,
            out: VecDeque::new(),
        };
        m.decide();
        m
    }

    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    pub fn fenced(&self) -> Option<&str> {
        self.fenced.as_deref()
    }

    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.out.pop_front()
    }

    /// Nodes this node reaches now (links up), for status output.
    pub fn reachable(&self) -> BTreeSet<NodeId> {
        self.links.iter().filter(|(_, l)| l.up).map(|(&n, _)| n).collect()
    }

    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        self.decide();
    }

    pub fn link_up(&mut self, peer: NodeId, incarnation: u64) {
        if self.fenced.is_some() || self.leaving {
            return;
        }
        let known = self.links.get(&peer).map(|l| l.incarnation);
        if known == Some(incarnation) && self.view.as_ref().is_some_and(|v| v.members.contains_key(&peer)) {
            // The same peer came back: messages may have been lost on the broken link.
            self.reconnects += 1;
        }
        if known != Some(incarnation) {
            self.reports.remove(&peer);
            self.evicted.remove(&peer);
        }
        self.links.insert(peer, Link { incarnation, up: true, down_since: 0 });
        self.broadcast_reach();
        self.decide();
    }

    pub fn link_down(&mut self, peer: NodeId) {
        if let Some(l) = self.links.get_mut(&peer) {
            if l.up {
                l.up = false;
                l.down_since = self.now;
                info!(peer, "link down; deciding the peer's fate");
            }
        }
        // What it told us of its links is stale from now on.
        self.reports.remove(&peer);
        self.broadcast_reach();
        self.decide();
    }

    /// A read of `node`'s heartbeat sector (`None`: empty, i.e. never started or cleanly
    /// stopped).
    pub fn disk_sample(&mut self, node: NodeId, sector: Option<Vec<u8>>) {
        let now = self.now;
        let d = self.disk.entry(node).or_insert(Disk { sector: None, changed_at: 0 });
        if d.sector != sector {
            if sector.is_some() {
                d.changed_at = now;
            }
            d.sector = sector;
        }
    }

    /// This node stops cleanly: tells every peer it reaches, then decides nothing more.
    pub fn leave(&mut self) {
        if self.fenced.is_some() || self.leaving {
            return;
        }
        info!("leaving the cluster");
        let msg = MemberMsg::Leave { incarnation: self.incarnation };
        for (&to, _) in self.links.iter().filter(|(_, l)| l.up) {
            self.out.push_back(MemberEvent::Send { to, msg: msg.clone() });
        }
        self.leaving = true;
    }

    pub fn receive(&mut self, from: NodeId, msg: MemberMsg) {
        if self.fenced.is_some() || self.leaving {
            return;
        }
        match msg {
            MemberMsg::Reach { incarnation, reach, reconnects, epoch } => {
                if self.links.get(&from).is_none_or(|l| l.incarnation != incarnation) {
                    return; // from an older incarnation, or before the link event
                }
                self.reports.insert(from, Report { reach, reconnects, epoch });
            }
            MemberMsg::Propose(view) => self.apply(view),
            MemberMsg::Evict { epoch } => {
                if self.view.is_some() {
                    self.fence(format!("evicted by the leader, node {from}, at epoch {epoch}"));
                }
            }
            MemberMsg::Leave { incarnation } => {
                if self.links.get(&from).is_some_and(|l| l.incarnation == incarnation) {
                    info!(node = from, "node left the cluster cleanly");
                    self.left.insert(from, incarnation);
                    self.reports.remove(&from);
                }
            }
        }
        self.decide();
    }

    fn apply(&mut self, view: View) {
        let mine = self.view.as_ref().map_or(0, |v| v.epoch);
        if view.epoch <= mine {
            return;
        }
        if view.members.get(&self.me) != Some(&self.incarnation) {
            if self.view.is_some() {
                self.fence(format!("evicted by view {} (members {:?})", view.epoch, view.nodes()));
            }
            return;
        }
        let current = self.view.as_ref().map(View::nodes).unwrap_or_default();
        if current.iter().any(|&n| !view.members.contains_key(&n) && self.fate(n) != Fate::Dead) {
            if self.pending.as_ref().is_none_or(|p| p.epoch < view.epoch) {
                self.pending = Some(view);
            }
            return;
        }
        if self.pending.as_ref().is_some_and(|p| p.epoch <= view.epoch) {
            self.pending = None;
        }
        info!(epoch = view.epoch, members = ?view.nodes(), "new cluster view");
        self.left.retain(|n, _| !view.members.contains_key(n));
        self.view = Some(view.clone());
        self.out.push_back(MemberEvent::View(view));
        // Peers judge who leads by who is in a cluster: tell them we are now.
        self.broadcast_reach();
    }

    fn fence(&mut self, reason: String) {
        if self.fenced.is_none() {
            warn!("fencing: {reason}");
            self.fenced = Some(reason.clone());
            self.out.push_back(MemberEvent::Fence { reason });
        }
    }

    fn broadcast_reach(&mut self) {
        if self.fenced.is_some() {
            return;
        }
        let reach: BTreeMap<NodeId, u64> =
            self.links.iter().filter(|(_, l)| l.up).map(|(&n, l)| (n, l.incarnation)).collect();
        let msg = MemberMsg::Reach {
            incarnation: self.incarnation,
            reach: reach.clone(),
            reconnects: self.reconnects,
            epoch: self.view.as_ref().map_or(0, |v| v.epoch),
        };
        for to in reach.keys() {
            self.out.push_back(MemberEvent::Send { to: *to, msg: msg.clone() });
        }
    }

    fn fate(&self, peer: NodeId) -> Fate {
        let incarnation = self.links.get(&peer).map(|l| l.incarnation);
        if self.left.get(&peer).is_some_and(|&inc| incarnation.is_none_or(|i| i == inc)) {
            return Fate::Dead;
        }
        // Told to fence, or lost: dead once the disk shows it stopped, or after the grace.
        let gone_since = match (self.evicted.get(&peer), self.links.get(&peer)) {
            (Some(&at), _) => at,
            (None, Some(link)) if link.up => return Fate::Alive,
            (None, Some(link)) => link.down_since,
            (None, None) => return self.disk_fate(peer, 0),
        };
        match self.disk_since {
            None if self.now >= gone_since + self.timing.link_grace_ms => Fate::Dead,
            None => Fate::Unknown,
            Some(_) => self.disk_fate(peer, gone_since),
        }
    }

    /// What the disk says of `node` since `since`: dead when its sector is empty or has not
    /// changed for the dead threshold (watched at least that long); else alive when it changed
    /// more than two beats after `since` (a beat racing the link loss proves nothing).
    fn disk_fate(&self, node: NodeId, since: u64) -> Fate {
        let Some(start) = self.disk_since else { return Fate::Unknown };
        let watched_long_enough = self.now >= start + self.timing.disk_dead_ms;
        match self.disk.get(&node) {
            Some(Disk { sector: None, .. }) => Fate::Dead,
            Some(d) if watched_long_enough && self.now >= d.changed_at + self.timing.disk_dead_ms => Fate::Dead,
            Some(d) if d.changed_at > since + 2 * self.timing.disk_interval_ms => Fate::Alive,
            None if watched_long_enough => Fate::Dead,
            _ => Fate::Unknown,
        }
    }

    /// Nodes that count for quorum. Without a disk heartbeat: every configured node (a plain
    /// majority). With one: those it does not show dead — and, once in a view, only its members:
    /// a node that starts beating has no vote until it joined (its first beats must not make a
    /// running member fence), which is safe because a node forming a cluster waits for every
    /// node the disk shows alive (see `lead`).
    fn counted(&self) -> BTreeSet<NodeId> {
        let base: BTreeSet<NodeId> = match &self.view {
            Some(v) if self.disk_since.is_some() => v.nodes(),
            _ => self.configured.clone(),
        };
        base.into_iter()
            .filter(|&n| n == self.me || self.disk_since.is_none() || self.disk_fate(n, 0) != Fate::Dead)
            .filter(|n| !self.left.contains_key(n))
            .collect()
    }

    fn quorate(&self, set: &BTreeSet<NodeId>) -> bool {
        let counted = self.counted();
        let have = set.intersection(&counted).count();
        let n = counted.len();
        2 * have > n || (2 * have == n && counted.first().is_some_and(|low| set.contains(low)))
    }

    /// Does `a` reach `b`, as far as this node knows (its own links, peers' reports)?
    fn reaches(&self, a: NodeId, b: NodeId) -> bool {
        let inc =
            |n: NodeId| if n == self.me { Some(self.incarnation) } else { self.links.get(&n).map(|l| l.incarnation) };
        let Some(b_inc) = inc(b) else { return false };
        if a == self.me {
            return self.links.get(&b).is_some_and(|l| l.up);
        }
        self.reports.get(&a).is_some_and(|r| r.reach.get(&b) == Some(&b_inc))
    }

    fn linked(&self, a: NodeId, b: NodeId) -> bool {
        self.reaches(a, b) && self.reaches(b, a)
    }

    fn decide(&mut self) {
        if self.fenced.is_some() || self.leaving {
            return;
        }
        if let Some(view) = self.pending.take() {
            self.apply(view);
        }
        self.check_own_quorum();
        if self.fenced.is_none() {
            self.lead();
        }
    }

    /// A member fences when the members it still reaches (or cannot yet rule out) are not
    /// quorate. Peers whose fate is unknown keep it waiting (frozen), not fenced.
    fn check_own_quorum(&mut self) {
        let Some(view) = &self.view else { return };
        let mut with_me = BTreeSet::from([self.me]);
        for &n in view.members.keys().filter(|&&n| n != self.me) {
            match self.fate(n) {
                Fate::Alive if self.links.get(&n).is_some_and(|l| l.up) => {
                    with_me.insert(n);
                }
                Fate::Unknown => return, // freeze until its fate is known
                _ => {}
            }
        }
        if !self.quorate(&with_me) {
            let counted = self.counted();
            self.fence(format!("lost quorum: reach {with_me:?} of counted nodes {counted:?}"));
        }
    }

    /// The leader proposes a new view when the largest mutually-linked set differs from the
    /// current one. It is the lowest node of the connected component among those already in a
    /// view (a restarted low-numbered node joins a running cluster; it does not lead it).
    fn lead(&mut self) {
        // Decide on complete knowledge: every reachable peer has told what it reaches.
        if self.links.iter().any(|(n, l)| l.up && !self.reports.contains_key(n)) {
            return;
        }
        let my_epoch = self.view.as_ref().map_or(0, |v| v.epoch);
        let epoch_of = |n: NodeId| if n == self.me { my_epoch } else { self.reports.get(&n).map_or(0, |r| r.epoch) };
        let mut component = BTreeSet::from([self.me]);
        let mut frontier = vec![self.me];
        let peers: Vec<NodeId> = self.links.keys().copied().collect();
        while let Some(a) = frontier.pop() {
            for &b in &peers {
                if !component.contains(&b) && (self.reaches(a, b) || self.reaches(b, a)) {
                    component.insert(b);
                    frontier.push(b);
                }
            }
        }
        let newest = component.iter().map(|&n| epoch_of(n)).max().unwrap_or(0);
        let in_view = |n: NodeId| (newest == 0) || epoch_of(n) > 0;
        if component.iter().find(|&&n| in_view(n)) != Some(&self.me) {
            return;
        }
        let current: BTreeSet<NodeId> = self.view.as_ref().map(View::nodes).unwrap_or_default();
        let mut chosen = vec![self.me];
        let order = current.iter().chain(component.iter().filter(|n| !current.contains(n)));
        for &n in order {
            if n != self.me && component.contains(&n) && chosen.iter().all(|&c| self.linked(c, n)) {
                chosen.push(n);
            }
        }
        let chosen: BTreeSet<NodeId> = chosen.into_iter().collect();
        // Forming a cluster: a node that is not known dead may already run a cluster of its own
        // (it saw us dead, or saw us leave, before we started); leaving it out would make two.
        // With a disk heartbeat, wait until it is reachable or its sector shows it dead; without
        // one, give it the link grace to be reached.
        let searching = self.disk_since.is_some() || self.now < self.born + self.timing.link_grace_ms;
        if self.view.is_none() && searching && self.counted().iter().any(|n| !chosen.contains(n)) {
            return;
        }
        if !self.quorate(&chosen) {
            return;
        }
        // A member is left behind only once it is known dead (freeze, then decide); one that is
        // alive but has not reached every other member for the grace is told to fence first.
        let left: Vec<NodeId> = current.iter().copied().filter(|n| !chosen.contains(n)).collect();
        let now = self.now;
        self.unlinked.retain(|n, _| left.contains(n));
        for &n in &left {
            let since = *self.unlinked.entry(n).or_insert(now);
            let settled = now >= since + self.timing.link_grace_ms;
            if settled && self.links.get(&n).is_some_and(|l| l.up) && !self.evicted.contains_key(&n) {
                warn!(node = n, members = ?chosen, "evicting a node that does not reach every other member");
                self.evicted.insert(n, self.now);
                self.out.push_back(MemberEvent::Send {
                    to: n,
                    msg: MemberMsg::Evict { epoch: next_epoch(newest, self.me) },
                });
            }
        }
        if left.iter().any(|&n| self.fate(n) != Fate::Dead) {
            return;
        }
        let incarnation =
            |n: NodeId| if n == self.me { Some(self.incarnation) } else { self.links.get(&n).map(|l| l.incarnation) };
        let members: BTreeMap<NodeId, u64> = chosen.iter().filter_map(|&n| Some((n, incarnation(n)?))).collect();
        let reconnects =
            |n: NodeId| if n == self.me { self.reconnects } else { self.reports.get(&n).map_or(0, |r| r.reconnects) };
        let basis: BTreeMap<NodeId, u64> = chosen.iter().map(|&n| (n, reconnects(n))).collect();
        if self.view.as_ref().is_some_and(|v| v.members == members) && basis == self.basis && newest <= my_epoch {
            return;
        }
        let view = View { epoch: next_epoch(newest, self.me), members };
        self.basis = basis;
        for &to in chosen.iter().filter(|&&n| n != self.me) {
            self.out.push_back(MemberEvent::Send { to, msg: MemberMsg::Propose(view.clone()) });
        }
        self.apply(view);
    }
}

/// The epoch `leader` proposes after `newest`: the next round, named by its proposer.
fn next_epoch(newest: u64, leader: NodeId) -> u64 {
    ((newest >> 8) + 1) << 8 | leader as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing { link_grace_ms: 1000, disk_interval_ms: 100, disk_dead_ms: 1000 };

    /// A few machines, a link matrix and instant delivery; disk sectors are a beat counter.
    struct Net {
        nodes: Vec<Option<Membership>>,
        up: BTreeSet<(NodeId, NodeId)>,
        views: Vec<Vec<View>>,
        fenced: BTreeSet<NodeId>,
        beats: Vec<u64>,
        disk: bool,
        now: u64,
    }

    impl Net {
        fn new(n: usize, disk: bool) -> Net {
            Net::started(n, disk, &(0..n as NodeId).collect::<Vec<_>>())
        }

        fn started(n: usize, disk: bool, which: &[NodeId]) -> Net {
            let mut net = Net {
                nodes: vec![],
                up: BTreeSet::new(),
                views: vec![vec![]; n],
                fenced: BTreeSet::new(),
                beats: vec![0; n],
                disk,
                now: 0,
            };
            net.nodes.resize_with(n, || None);
            for &i in which {
                net.start(i);
            }
            net
        }

        fn start(&mut self, i: NodeId) {
            self.start_isolated(i);
            for j in 0..self.nodes.len() as NodeId {
                if j != i && self.nodes[j as usize].is_some() {
                    self.connect(i, j);
                }
            }
        }

        /// Starts node i with no links yet.
        fn start_isolated(&mut self, i: NodeId) {
            let configured = (0..self.views.len() as NodeId).collect();
            let inc = 1000 + self.now + i as u64;
            self.nodes[i as usize] = Some(Membership::new(i, inc, configured, T, self.now, self.disk));
            self.fenced.remove(&i);
            self.beats[i as usize] = 1;
        }

        fn incarnation(&self, i: NodeId) -> u64 {
            self.nodes[i as usize].as_ref().unwrap().incarnation
        }

        fn connect(&mut self, a: NodeId, b: NodeId) {
            self.up.insert((a.min(b), a.max(b)));
            let (ia, ib) = (self.incarnation(a), self.incarnation(b));
            self.nodes[a as usize].as_mut().unwrap().link_up(b, ib);
            self.nodes[b as usize].as_mut().unwrap().link_up(a, ia);
            self.pump();
        }

        fn cut(&mut self, a: NodeId, b: NodeId) {
            self.up.remove(&(a.min(b), a.max(b)));
            for (x, y) in [(a, b), (b, a)] {
                if let Some(m) = self.nodes[x as usize].as_mut() {
                    m.link_down(y);
                }
            }
            self.pump();
        }

        fn crash(&mut self, i: NodeId) {
            for j in 0..self.nodes.len() as NodeId {
                if j != i {
                    self.cut(i, j);
                }
            }
            self.nodes[i as usize] = None;
        }

        /// Node i stops cleanly: says so, then its links close.
        fn leave(&mut self, i: NodeId) {
            if let Some(m) = self.nodes[i as usize].as_mut() {
                m.leave();
            }
            self.pump();
            self.crash(i);
        }

        fn pump(&mut self) {
            loop {
                let mut moved = false;
                for i in 0..self.nodes.len() {
                    while let Some(ev) = self.nodes[i].as_mut().and_then(Membership::poll_event) {
                        moved = true;
                        match ev {
                            MemberEvent::Send { to, msg } => {
                                let (a, b) = (i as NodeId, to);
                                if self.up.contains(&(a.min(b), a.max(b))) {
                                    if let Some(m) = self.nodes[to as usize].as_mut() {
                                        m.receive(a, msg);
                                    }
                                }
                            }
                            MemberEvent::View(v) => self.views[i].push(v),
                            MemberEvent::Fence { .. } => {
                                self.fenced.insert(i as NodeId);
                            }
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        /// Advances the clock in 50 ms steps; live, unfenced nodes beat every interval.
        fn run(&mut self, ms: u64) {
            for _ in 0..ms / 50 {
                self.now += 50;
                if self.now % T.disk_interval_ms == 0 {
                    for i in 0..self.nodes.len() {
                        if self.nodes[i].is_some() && !self.fenced.contains(&(i as NodeId)) {
                            self.beats[i] += 1;
                        }
                    }
                }
                for i in 0..self.nodes.len() {
                    let Some(m) = self.nodes[i].as_mut() else { continue };
                    m.tick(self.now);
                    if self.disk {
                        for (j, &b) in self.beats.iter().enumerate() {
                            m.disk_sample(j as NodeId, (b > 0).then(|| b.to_le_bytes().to_vec()));
                        }
                    }
                }
                self.pump();
            }
        }

        fn last_view(&self, i: NodeId) -> Option<(u64, BTreeSet<NodeId>)> {
            self.views[i as usize].last().map(|v| (v.epoch, v.nodes()))
        }
    }

    fn set(n: &[NodeId]) -> BTreeSet<NodeId> {
        n.iter().copied().collect()
    }

    #[test]
    fn nodes_join_into_one_view() {
        for disk in [false, true] {
            let mut net = Net::new(3, disk);
            net.run(200);
            let v = net.last_view(0).unwrap();
            assert_eq!(v.1, set(&[0, 1, 2]), "disk {disk}");
            assert_eq!(net.last_view(1), Some(v.clone()));
            assert_eq!(net.last_view(2), Some(v));
            // Every node saw the same sequence of views it was part of.
            assert!(net.views[1].iter().all(|v| net.views[0].contains(v)));
        }
    }

    #[test]
    fn two_node_split_lower_number_survives() {
        for disk in [false, true] {
            let mut net = Net::new(2, disk);
            net.run(200);
            assert_eq!(net.last_view(1).unwrap().1, set(&[0, 1]));
            net.cut(0, 1);
            net.run(300);
            assert!(net.fenced.is_empty(), "frozen, not decided, within the grace (disk {disk})");
            net.run(3000);
            assert_eq!(net.fenced, set(&[1]), "disk {disk}");
            assert_eq!(net.last_view(0).unwrap().1, set(&[0]), "disk {disk}");
        }
    }

    #[test]
    fn crash_of_the_lower_node_with_disk_heartbeat_keeps_the_higher() {
        let mut net = Net::new(2, true);
        net.run(200);
        net.crash(0);
        net.run(3000);
        assert!(net.fenced.is_empty(), "a dead peer is not a split");
        assert_eq!(net.last_view(1).unwrap().1, set(&[1]));
    }

    #[test]
    fn leader_death_in_three_nodes_and_restart_rejoins() {
        let mut net = Net::new(3, false);
        net.run(200);
        let (e0, _) = net.last_view(1).unwrap();
        net.crash(0);
        net.run(500);
        assert_eq!(net.last_view(1).unwrap().0, e0, "no view change before the grace");
        net.run(1500);
        let (e1, m1) = net.last_view(1).unwrap();
        assert_eq!(m1, set(&[1, 2]));
        assert_eq!(net.last_view(2), Some((e1, m1)));
        net.start(0);
        net.run(300);
        let (e2, m2) = net.last_view(0).unwrap();
        assert_eq!(m2, set(&[0, 1, 2]));
        assert!(e2 > e1, "the restarted node joins the running cluster's epochs");
        assert_eq!(net.last_view(1), Some((e2, m2)));
        assert!(net.fenced.is_empty());
    }

    #[test]
    fn restarted_node_then_leader_death() {
        let mut net = Net::new(3, false);
        net.run(200);
        net.crash(2);
        net.run(2000);
        net.start(2);
        net.run(300);
        assert_eq!(net.last_view(2).unwrap().1, set(&[0, 1, 2]));
        net.crash(0);
        net.run(2000);
        assert!(net.fenced.is_empty(), "{:?}", net.fenced);
        assert_eq!(net.last_view(1).unwrap().1, set(&[1, 2]));
        assert_eq!(net.last_view(2).unwrap().1, set(&[1, 2]));
    }

    #[test]
    fn a_view_that_drops_a_live_member_waits_until_it_is_dead() {
        let mut net = Net::new(3, true);
        net.run(200);
        let (e, _) = net.last_view(1).unwrap();
        // Node 2 believes (on stale reports) that it leads, and leaves out node 0, which node 1
        // still reaches. Its epoch names it, so it cannot collide with node 0's next view.
        assert_ne!(next_epoch(e, 2), next_epoch(e, 0));
        let members = BTreeMap::from([(1, net.incarnation(1)), (2, net.incarnation(2))]);
        let view = View { epoch: next_epoch(e, 2), members };
        net.nodes[1].as_mut().unwrap().receive(2, MemberMsg::Propose(view.clone()));
        net.pump();
        assert_eq!(net.last_view(1).unwrap().0, e, "node 0 is alive and linked: not dropped");
        net.crash(0);
        net.run(3000);
        let (last, nodes) = net.last_view(1).unwrap();
        assert!(last >= view.epoch && nodes == set(&[1, 2]), "applied once node 0 is dead");
        assert!(net.fenced.is_empty());
    }

    #[test]
    fn a_starting_node_joins_the_cluster_a_live_disk_shows() {
        // n1 started alone (n0's sector empty: dead), then n0 starts and sees n1 beating: it
        // must not form a cluster of its own before it reaches n1.
        let mut net = Net::started(2, true, &[1]);
        net.run(300);
        assert_eq!(net.last_view(1).unwrap().1, set(&[1]));
        net.start_isolated(0);
        net.run(500);
        assert_eq!(net.last_view(0), None, "n0 waits for the live n1");
        net.connect(0, 1);
        net.run(500);
        assert_eq!(net.last_view(0).map(|v| v.1), Some(set(&[0, 1])), "views {:?} fenced {:?}", net.views, net.fenced);
        assert!(net.fenced.is_empty());
    }

    #[test]
    fn partial_link_loss_evicts_one_node() {
        let mut net = Net::new(3, false);
        net.run(200);
        net.cut(1, 2);
        net.run(2000);
        assert_eq!(net.last_view(0).unwrap().1, set(&[0, 1]));
        assert_eq!(net.fenced, set(&[2]));
    }

    #[test]
    fn quick_reconnect_renews_the_view() {
        let mut net = Net::new(2, false);
        net.run(200);
        let (e0, m0) = net.last_view(0).unwrap();
        net.cut(0, 1);
        net.run(200);
        net.connect(0, 1);
        net.run(200);
        let (e1, m1) = net.last_view(1).unwrap();
        assert_eq!(m1, m0);
        assert!(e1 > e0, "messages may have been lost: a new epoch makes upper layers resend");
        assert!(net.fenced.is_empty());
    }

    #[test]
    fn lone_higher_node_waits_without_a_disk() {
        let mut net = Net::started(2, false, &[1]);
        net.run(2000);
        assert_eq!(net.last_view(1), None, "half without the lowest node is not quorate");
        assert!(net.fenced.is_empty(), "nothing to fence without a view");
        // With a disk heartbeat, the silent node 0 is not counted once watched long enough.
        let mut net = Net::started(2, true, &[1]);
        net.run(2000);
        assert_eq!(net.last_view(1).unwrap().1, set(&[1]));
    }

    #[test]
    fn without_a_disk_the_higher_node_cannot_tell_death_from_split() {
        let mut net = Net::new(2, false);
        net.run(200);
        net.crash(0);
        net.run(2000);
        assert_eq!(net.fenced, set(&[1]), "documented: two nodes need the disk heartbeat to survive node 0");
    }

    #[test]
    fn a_clean_leave_of_the_lower_node_keeps_the_higher_without_a_disk() {
        let mut net = Net::new(2, false);
        net.run(200);
        net.leave(0);
        net.run(200);
        assert!(net.fenced.is_empty(), "a node that left is not counted: {:?}", net.fenced);
        assert_eq!(net.last_view(1).unwrap().1, set(&[1]), "the leave is acted on at once, not after the grace");
        // It comes back as a new incarnation and joins the running cluster.
        net.start(0);
        net.connect(0, 1);
        net.run(500);
        assert_eq!(net.last_view(1).unwrap().1, set(&[0, 1]));
        assert_eq!(net.last_view(0).unwrap().1, set(&[0, 1]));
        assert!(net.fenced.is_empty());
    }
}
