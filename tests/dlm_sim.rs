//! Deterministic simulation of the DLM: 2 to 5 engines on an in-process network of FIFO links
//! (one per ordered pair, interleaved at random), with crashes, joins and random clients. Views
//! come either from an oracle that delivers each view to every member in the same order, or from
//! the real membership machines ([`Membership`]) exchanging their messages over the same links,
//! with a clock, a disk heartbeat, and partitions that are real link cuts (the side that loses
//! quorum fences itself, which the DLM sees as a crash). Invariants are checked after every
//! step; each seed ends with the network healed and every request settled.
//! `O2FS_SEED=N` replays one seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use o2fs::cluster::membership::{MemberEvent, MemberMsg, Membership, Timing};
use o2fs::dlm::{master_of, Dlm, Event, LockError, LockFlags, LockId, Lvb, Mode, Msg, NodeId, ResName};
use o2fs::testutil::{seed_count_from_env, seed_from_env, Rng};

const SEEDS: u64 = 10_000;
/// Seeds of the run whose views come from the real membership.
const MEMBERSHIP_SEEDS: u64 = 10_000;
const RESOURCES: usize = 3;
const MAX_NODES: usize = 5;
const MAX_LOCKS_PER_NODE: usize = 4;
/// Node numbers the simulated cluster.conf lists (joins take fresh numbers below it).
const CONFIGURED: NodeId = 12;
/// The clock moves this much per step.
const TICK_MS: u64 = 10;
/// Membership timing: a disk beat every 5 steps, dead after 25 steps of silence; eviction of a
/// partly linked member after 100 steps (a message may wait tens of steps here, where in a real
/// cluster it takes far less than a beat).
const TIMING: Timing = Timing { link_grace_ms: 1000, disk_interval_ms: 50, disk_dead_ms: 250 };

/// Where the views come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Views {
    Oracle,
    Membership,
}

/// What travels on a simulated link.
#[derive(Debug)]
enum Packet {
    Dlm(Msg),
    Member(MemberMsg),
}

#[derive(Debug)]
struct ClientLock {
    res: usize,
    /// The mode the client may use: set by a grant, lowered at once by a down-conversion,
    /// dropped when it calls unlock.
    held: Option<Mode>,
    pending: bool,
    unlocking: bool,
}

struct Node {
    dlm: Dlm,
    /// The node's membership machine (views from the real membership only).
    member: Option<Membership>,
    locks: BTreeMap<LockId, ClientLock>,
    views: VecDeque<(u64, BTreeSet<NodeId>)>,
    to_recover: BTreeSet<NodeId>,
    /// Every node of every view this node was given.
    seen: BTreeSet<NodeId>,
}

/// The value block a reader must see: the last one written, or (after a crash or a view change
/// that cut a rebuild short) an invalidated, empty one — never an older value.
#[derive(Default)]
struct LvbState {
    last: Lvb,
    may_be_lost: bool,
}

/// What the seeds exercised, summed and checked so that a harness bug cannot silently test nothing.
#[derive(Debug, Default)]
struct Stats {
    steps: u64,
    grants: u64,
    lvb_checks: u64,
    lvbs_seen: u64,
    basts: u64,
    not_queued: u64,
    cancelled: u64,
    crashes: u64,
    joins: u64,
    recoveries: u64,
    cuts: u64,
    fences: u64,
    unknown_deaths_holding_locks: u64,
    /// Requests the engine said it would grant at once, without a message.
    at_once: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.grants += o.grants;
        self.lvb_checks += o.lvb_checks;
        self.lvbs_seen += o.lvbs_seen;
        self.basts += o.basts;
        self.not_queued += o.not_queued;
        self.cancelled += o.cancelled;
        self.crashes += o.crashes;
        self.joins += o.joins;
        self.recoveries += o.recoveries;
        self.cuts += o.cuts;
        self.fences += o.fences;
        self.unknown_deaths_holding_locks += o.unknown_deaths_holding_locks;
        self.at_once += o.at_once;
    }
}

struct Sim {
    seed: u64,
    step: u64,
    rng: Rng,
    names: Vec<ResName>,
    nodes: BTreeMap<NodeId, Node>,
    links: BTreeMap<(NodeId, NodeId), VecDeque<Packet>>,
    views_from: Views,
    /// The highest view epoch issued (oracle) or queued anywhere (membership; a node that
    /// installed it may have fenced since).
    epoch: u64,
    now: u64,
    /// Every started node's disk heartbeat counter (frozen when it dies or fences).
    beats: BTreeMap<NodeId, u64>,
    /// Links cut by a partition (lower node first).
    cut: BTreeSet<(NodeId, NodeId)>,
    members: BTreeSet<NodeId>,
    next_node: NodeId,
    /// What each dead node held when it died, counted until its recovery is done.
    dead_holdings: BTreeMap<NodeId, Vec<(usize, Mode)>>,
    /// (recovery node, dead node) pairs announced by RecoverNode.
    recoverers: BTreeSet<(NodeId, NodeId)>,
    crashed: BTreeSet<NodeId>,
    lvbs: Vec<LvbState>,
    counter: u64,
    stats: Stats,
    /// `O2FS_SIM_TRACE=1`: print every step (to replay a failing seed).
    trace: bool,
}

impl Sim {
    fn new(seed: u64, views_from: Views) -> Sim {
        let mut rng = Rng::new(seed);
        let n = 2 + rng.below(4) as NodeId;
        // Two resources share a mastery key (as the inodes of one chunk of a volume do).
        let name = |i: u64| ResName::ocfs2('M', i, 7);
        let names = (0..RESOURCES as u64).map(|i| if i < 2 { name(i).keyed(1) } else { name(i) }).collect();
        let mut sim = Sim {
            seed,
            step: 0,
            rng,
            names,
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
            views_from,
            epoch: 0,
            now: 0,
            beats: BTreeMap::new(),
            cut: BTreeSet::new(),
            members: BTreeSet::new(),
            next_node: n,
            dead_holdings: BTreeMap::new(),
            recoverers: BTreeSet::new(),
            crashed: BTreeSet::new(),
            lvbs: (0..RESOURCES).map(|_| LvbState::default()).collect(),
            counter: 0,
            stats: Stats::default(),
            trace: std::env::var_os("O2FS_SIM_TRACE").is_some(),
        };
        for id in 0..n {
            sim.add_node(id);
        }
        sim.issue_view();
        sim
    }

    fn membership(&self) -> bool {
        self.views_from == Views::Membership
    }

    fn fail(&self, what: &str) -> ! {
        panic!("seed {} (O2FS_SEED={}), step {}: {what}", self.seed, self.seed, self.step)
    }

    /// A new node; with the real membership it links to every live node.
    fn add_node(&mut self, id: NodeId) {
        let member = self.membership().then(|| {
            let configured = (0..CONFIGURED).collect();
            Membership::new(id, incarnation(id), configured, TIMING, self.now, true)
        });
        let node = Node {
            dlm: Dlm::new(id),
            member,
            locks: BTreeMap::new(),
            views: VecDeque::new(),
            to_recover: BTreeSet::new(),
            seen: BTreeSet::new(),
        };
        self.nodes.insert(id, node);
        self.members.insert(id);
        if self.membership() {
            self.beats.insert(id, 1);
            self.sample_disk();
            let peers: Vec<NodeId> = self.nodes.keys().copied().filter(|&p| p != id).collect();
            for peer in peers {
                self.connect(id, peer);
            }
        }
    }

    fn member(&mut self, id: NodeId) -> Option<&mut Membership> {
        self.nodes.get_mut(&id).and_then(|n| n.member.as_mut())
    }

    /// A (re)connected link: each side learns of the other's incarnation.
    fn connect(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a.min(b), a.max(b)));
        for (x, y) in [(a, b), (b, a)] {
            if let Some(m) = self.member(x) {
                m.link_up(y, incarnation(y));
            }
        }
        self.pump_members();
    }

    /// A broken link: what was in flight on it is lost, and each side sees it go down.
    fn disconnect(&mut self, a: NodeId, b: NodeId) {
        self.links.remove(&(a, b));
        self.links.remove(&(b, a));
        for (x, y) in [(a, b), (b, a)] {
            if let Some(m) = self.member(x) {
                m.link_down(y);
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, packet: Packet) {
        if self.nodes.contains_key(&to) && !self.cut.contains(&(from.min(to), from.max(to))) {
            self.links.entry((from, to)).or_default().push_back(packet);
        }
    }

    /// Every live node reads every configured node's heartbeat sector.
    fn sample_disk(&mut self) {
        let sectors: Vec<(NodeId, Option<Vec<u8>>)> =
            (0..CONFIGURED).map(|n| (n, self.beats.get(&n).map(|b| b.to_le_bytes().to_vec()))).collect();
        for node in self.nodes.values_mut() {
            if let Some(m) = node.member.as_mut() {
                for (n, sector) in &sectors {
                    m.disk_sample(*n, sector.clone());
                }
            }
        }
    }

    /// Routes the membership machines' output until there is none: messages onto the links,
    /// views to the nodes' DLMs (applied later, at random), and fences, which end the node.
    fn pump_members(&mut self) {
        loop {
            let mut fenced = Vec::new();
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                while let Some(ev) = self.member(id).and_then(Membership::poll_event) {
                    match ev {
                        MemberEvent::Send { to, msg } => self.send(id, to, Packet::Member(msg)),
                        MemberEvent::View(v) => self.queue_view(&[id], v.epoch, &v.nodes()),
                        MemberEvent::Fence { reason } => {
                            if self.trace {
                                eprintln!("{} node {id} fences: {reason}", self.step);
                            }
                            fenced.push(id);
                        }
                    }
                }
            }
            if fenced.is_empty() {
                return;
            }
            self.stats.fences += fenced.len() as u64;
            self.remove_nodes(&fenced);
        }
    }

    /// The clock moves on: memberships tick, live nodes beat on disk and read it.
    fn advance(&mut self) {
        self.now += TICK_MS;
        let now = self.now;
        self.nodes.values_mut().for_each(|n| n.dlm.set_time(now));
        if !self.membership() {
            return;
        }
        if now.is_multiple_of(TIMING.disk_interval_ms) {
            for (id, beat) in self.beats.iter_mut() {
                if self.nodes.contains_key(id) {
                    *beat += 1;
                }
            }
            self.sample_disk();
        }
        for n in self.nodes.values_mut() {
            if let Some(m) = n.member.as_mut() {
                m.tick(now);
            }
        }
        self.pump_members();
    }

    /// Some member has a view to apply or a rebuild to finish.
    /// With the real membership, also while a dead node or a cut link is not yet settled by a
    /// view (the oracle issues that view at once).
    fn unsettled(&self) -> bool {
        self.nodes.values().any(|n| !n.views.is_empty() || !n.dlm.is_ready())
            || (self.membership() && !self.members_settled())
    }

    fn issue_view(&mut self) {
        if !self.membership() {
            let (ids, members): (Vec<NodeId>, _) = (self.nodes.keys().copied().collect(), self.members.clone());
            self.queue_view(&ids, self.epoch + 1, &members);
        }
    }

    /// Queues a view for `ids`. A view change that cuts a rebuild short may lose (invalidate)
    /// value blocks written before it or during the unfinished rebuild.
    fn queue_view(&mut self, ids: &[NodeId], epoch: u64, members: &BTreeSet<NodeId>) {
        if epoch > self.epoch {
            if self.unsettled() {
                self.lvbs.iter_mut().for_each(|l| l.may_be_lost = true);
            }
            self.epoch = epoch;
        }
        for id in ids {
            let node = self.nodes.get_mut(id).unwrap();
            node.views.push_back((epoch, members.clone()));
            node.seen.extend(members);
        }
    }

    /// Whether, after `victims` die, some survivor still knows of every unrecovered death. A
    /// death only dead nodes knew of is lost to the DLM (a joiner never saw that node): the
    /// filesystem recovers such slots at mount from its slot map, as OCFS2 does, so the
    /// simulation does not produce it.
    fn deaths_stay_known(&self, victims: &[NodeId]) -> bool {
        let mut dead = self.dead_holdings.keys().chain(victims);
        dead.all(|&d| self.deaths_stay_known_of(d, victims))
    }

    /// Whether a node other than `victims` knows of `dead` (saw it in a view, or has its death
    /// unrecovered).
    fn deaths_stay_known_of(&self, dead: NodeId, victims: &[NodeId]) -> bool {
        let mut survivors = self.nodes.iter().filter(|(id, _)| !victims.contains(id));
        survivors.any(|(_, n)| n.seen.contains(&dead) || n.dlm.unrecovered().contains(&dead))
    }

    fn crash(&mut self, victims: &[NodeId]) {
        if self.trace {
            eprintln!("{} crash {victims:?}", self.step);
        }
        self.stats.crashes += victims.len() as u64;
        self.remove_nodes(victims);
        self.issue_view();
        self.pump_members();
    }

    /// Nodes that crashed or fenced: gone with their links; their locks count until recovered.
    fn remove_nodes(&mut self, victims: &[NodeId]) {
        for &id in victims {
            let Some(node) = self.nodes.remove(&id) else { continue };
            let held = node.locks.values().filter(|l| !l.unlocking).filter_map(|l| Some((l.res, l.held?)));
            self.dead_holdings.insert(id, held.collect());
            let peers: Vec<NodeId> = self.nodes.keys().copied().collect();
            for peer in peers {
                self.disconnect(id, peer);
            }
            self.cut.retain(|&(a, b)| a != id && b != id);
            self.members.remove(&id);
            self.crashed.insert(id);
        }
        self.lvbs.iter_mut().for_each(|l| l.may_be_lost = true);
        self.forget_unknown_deaths();
    }

    /// With the real membership a node can die (say, fence for want of quorum) while the only
    /// nodes that knew of an unrecovered death are dead too: that death is lost to the DLM, as
    /// the oracle runs avoid (see `deaths_stay_known`), and is the filesystem's to recover from
    /// its slot map at mount. It no longer counts here.
    fn forget_unknown_deaths(&mut self) {
        let unknown: Vec<NodeId> =
            self.dead_holdings.keys().copied().filter(|&d| !self.deaths_stay_known_of(d, &[])).collect();
        for d in unknown {
            // Mostly a joiner that died before any view admitted it, holding nothing.
            let held = self.dead_holdings.remove(&d).unwrap_or_default();
            self.stats.unknown_deaths_holding_locks += !held.is_empty() as u64;
        }
    }

    /// Cuts the links between `side` and the other live nodes (a partition), or one link.
    fn cut_links(&mut self, pairs: &[(NodeId, NodeId)]) {
        if self.trace {
            eprintln!("{} cut {pairs:?}", self.step);
        }
        self.stats.cuts += 1;
        for &(a, b) in pairs {
            self.cut.insert((a.min(b), a.max(b)));
            self.disconnect(a, b);
        }
        self.pump_members();
    }

    /// A partition or a single cut link, when the survivors stay known (see `deaths_stay_known`;
    /// every node of the cut may be the one that fences).
    fn random_cut(&mut self, live: &[NodeId]) {
        let mut side: Vec<NodeId> = live.iter().copied().filter(|_| self.rng.below(2) == 0).collect();
        if side.is_empty() || side.len() == live.len() {
            side = vec![live[self.rng.below(live.len() as u64) as usize]];
        }
        let pairs: Vec<(NodeId, NodeId)> = if live.len() >= 3 && self.rng.below(3) == 0 {
            let b = live.iter().copied().find(|n| !side.contains(n)).unwrap();
            vec![(side[0], b)]
        } else {
            side.iter().flat_map(|&a| live.iter().filter(|n| !side.contains(n)).map(move |&b| (a, b))).collect()
        };
        let involved: Vec<NodeId> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        if self.deaths_stay_known(&involved) {
            self.cut_links(&pairs);
        }
    }

    fn heal_one(&mut self) {
        let cuts: Vec<(NodeId, NodeId)> = self.cut.iter().copied().collect();
        if let Some(&(a, b)) = cuts.get(self.rng.below(cuts.len().max(1) as u64) as usize) {
            if self.trace {
                eprintln!("{} heal {a}-{b}", self.step);
            }
            self.connect(a, b);
        }
    }

    /// The real membership agrees: every live node installed one view of exactly the live
    /// nodes, and no link is cut.
    fn members_settled(&self) -> bool {
        let live: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        let mut views = self.nodes.values().map(|n| n.member.as_ref().and_then(|m| m.view()));
        let first = views.next().flatten();
        self.cut.is_empty() && first.is_some_and(|v| v.nodes() == live) && views.all(|v| v == first)
    }

    /// Some live node's membership still has a dead node in its view. (No partition then: on
    /// top of unsettled deaths it may leave no side with quorum, a total outage.)
    fn death_pending(&self) -> bool {
        let members = self.nodes.values().filter_map(|n| n.member.as_ref()?.view());
        members.flat_map(|v| v.nodes()).any(|n| !self.nodes.contains_key(&n))
    }

    /// The epoch every live node must end in: the oracle's last, or the membership's agreed view.
    fn final_epoch(&self) -> u64 {
        let agreed = self.nodes.values().find_map(|n| n.member.as_ref()?.view().map(|v| v.epoch));
        agreed.unwrap_or(self.epoch)
    }

    fn join(&mut self) {
        let id = self.next_node;
        if self.trace {
            eprintln!("{} join {id}", self.step);
        }
        self.next_node += 1;
        self.add_node(id);
        self.stats.joins += 1;
        self.issue_view();
    }

    /// Routes and reacts to every node's events until none is left.
    fn drain(&mut self, react: bool) {
        loop {
            let mut any = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                while let Some(event) = self.nodes.get_mut(&id).and_then(|n| n.dlm.poll_event()) {
                    any = true;
                    self.on_event(id, event, react);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn on_event(&mut self, id: NodeId, event: Event, react: bool) {
        if self.trace && !matches!(event, Event::Send { .. }) {
            eprintln!("{} node {id}: {event:?}", self.step);
        }
        match event {
            Event::Send { to, msg } => self.send(id, to, Packet::Dlm(msg)),
            Event::Granted { id: lock, mode, lvb } => {
                self.stats.grants += 1;
                if mode >= Mode::Pr && mode != Mode::Cw {
                    self.check_lvb(id, lock, &lvb);
                    self.stats.lvb_checks += 1;
                    self.stats.lvbs_seen += !lvb.is_empty() as u64;
                }
                let Some(l) = self.client(id, lock) else { return };
                l.held = Some(mode);
                l.pending = false;
            }
            Event::Failed { id: lock, error } => {
                match error {
                    LockError::NotQueued => self.stats.not_queued += 1,
                    LockError::Cancelled => self.stats.cancelled += 1,
                }
                let Some(l) = self.client(id, lock) else { return };
                l.pending = false;
                if l.held.is_none() {
                    self.nodes.get_mut(&id).map(|n| n.locks.remove(&lock));
                }
            }
            Event::Unlocked { id: lock } => {
                if self.nodes.get_mut(&id).and_then(|n| n.locks.remove(&lock)).is_none() {
                    self.fail(&format!("node {id}: Unlocked for unknown lock {lock:?}"));
                }
            }
            Event::Blocking { id: lock, wanted } => {
                self.stats.basts += 1;
                if react && self.rng.below(3) != 0 {
                    self.release(id, lock, wanted);
                }
            }
            Event::RecoverNode { dead } => {
                self.recoverers.insert((id, dead));
                self.nodes.get_mut(&id).map(|n| n.to_recover.insert(dead));
            }
        }
    }

    fn client(&mut self, node: NodeId, lock: LockId) -> Option<&mut ClientLock> {
        if !self.nodes.get(&node).is_some_and(|n| n.locks.contains_key(&lock)) {
            self.fail(&format!("node {node}: event for unknown lock {lock:?}"));
        }
        self.nodes.get_mut(&node).and_then(|n| n.locks.get_mut(&lock))
    }

    fn check_lvb(&self, node: NodeId, lock: LockId, lvb: &Lvb) {
        let Some(l) = self.nodes.get(&node).and_then(|n| n.locks.get(&lock)) else { return };
        let state = &self.lvbs[l.res];
        if *lvb != state.last && !(state.may_be_lost && lvb.is_empty()) {
            self.fail(&format!("node {node} lock {lock:?}: lvb {lvb:?}, last written {:?}", state.last));
        }
    }

    fn next_lvb(&mut self, res: usize) -> Lvb {
        self.counter += 1;
        let lvb = Lvb(self.counter.to_le_bytes().to_vec());
        self.lvbs[res] = LvbState { last: lvb.clone(), may_be_lost: self.unsettled() };
        lvb
    }

    /// A client's answer to a blocking AST: cancel its own wait, or give up the lock or enough of it.
    fn release(&mut self, node: NodeId, lock: LockId, wanted: Mode) {
        let Some(l) = self.nodes.get(&node).and_then(|n| n.locks.get(&lock)) else { return };
        if l.unlocking {
            return;
        }
        if l.pending {
            let _ = self.nodes.get_mut(&node).map(|n| n.dlm.cancel(lock));
            return;
        }
        let down = [Mode::Pr, Mode::Cr, Mode::Nl].into_iter().find(|m| m.compatible(wanted)).unwrap_or(Mode::Nl);
        if self.rng.below(2) == 0 {
            self.unlock(node, lock);
        } else {
            self.convert(node, lock, down);
        }
    }

    fn unlock(&mut self, node: NodeId, lock: LockId) {
        let Some(l) = self.nodes.get(&node).and_then(|n| n.locks.get(&lock)) else { return };
        let (res, writes) = (l.res, l.held.is_some_and(Mode::writes_lvb));
        let lvb = (writes && self.rng.below(4) != 0).then(|| self.next_lvb(res));
        let n = self.nodes.get_mut(&node).unwrap();
        if self.trace {
            eprintln!("{} node {node}: unlock {lock:?} {lvb:?}", self.step);
        }
        if n.dlm.unlock(lock, lvb).is_ok() {
            let l = n.locks.get_mut(&lock).unwrap();
            (l.held, l.unlocking) = (None, true);
        }
    }

    fn convert(&mut self, node: NodeId, lock: LockId, mode: Mode) {
        let Some(l) = self.nodes.get(&node).and_then(|n| n.locks.get(&lock)) else { return };
        let (res, from) = (l.res, l.held.unwrap_or(Mode::Nl));
        let down = from.is_down_to(mode);
        let lvb = (down && from.writes_lvb() && self.rng.below(4) != 0).then(|| self.next_lvb(res));
        let noqueue = self.rng.below(5) == 0;
        let n = self.nodes.get_mut(&node).unwrap();
        if self.trace {
            eprintln!("{} node {node}: convert {lock:?} {mode} noqueue {noqueue} {lvb:?}", self.step);
        }
        if n.dlm.convert(lock, mode, LockFlags { noqueue }, lvb).is_ok() {
            let l = n.locks.get_mut(&lock).unwrap();
            match down {
                true => l.held = Some(mode),
                false => l.pending = true,
            }
        }
    }

    fn random_mode(&mut self) -> Mode {
        Mode::ALL[self.rng.below(6) as usize]
    }

    fn client_op(&mut self, node: NodeId) {
        let Some(n) = self.nodes.get(&node) else { return };
        let idle: Vec<LockId> =
            n.locks.iter().filter(|(_, l)| l.held.is_some() && !l.pending && !l.unlocking).map(|(&i, _)| i).collect();
        let pending: Vec<LockId> = n.locks.iter().filter(|(_, l)| l.pending).map(|(&i, _)| i).collect();
        let count = n.locks.len();
        match self.rng.below(4) {
            0 if count < MAX_LOCKS_PER_NODE => {
                let res = self.rng.below(RESOURCES as u64) as usize;
                let (mode, noqueue) = (self.random_mode(), self.rng.below(4) == 0);
                let n = self.nodes.get_mut(&node).unwrap();
                let at_once = n.dlm.grants_at_once(&self.names[res], None, mode);
                let lock = n.dlm.lock(&self.names[res], mode, LockFlags { noqueue });
                if self.trace {
                    eprintln!(
                        "{} node {node}: lock {lock:?} res {res} {mode} noqueue {noqueue} at once {at_once}",
                        self.step
                    );
                }
                n.locks.insert(lock, ClientLock { res, held: None, pending: true, unlocking: false });
                if at_once {
                    // Promised without a message: granted before anything is delivered.
                    self.stats.at_once += 1;
                    self.drain(true);
                    if self.nodes[&node].locks.get(&lock).and_then(|l| l.held) != Some(mode) {
                        self.fail(&format!("node {node}: lock {lock:?} on {res} at {mode} was not granted at once"));
                    }
                }
            }
            1 if !idle.is_empty() => {
                let lock = idle[self.rng.below(idle.len() as u64) as usize];
                let mode = self.random_mode();
                self.convert(node, lock, mode);
            }
            2 if !idle.is_empty() => {
                let lock = idle[self.rng.below(idle.len() as u64) as usize];
                self.unlock(node, lock);
            }
            3 if !pending.is_empty() => {
                let lock = pending[self.rng.below(pending.len() as u64) as usize];
                let _ = self.nodes.get_mut(&node).unwrap().dlm.cancel(lock);
            }
            _ => {}
        }
    }

    /// One network, view or recovery step, if any is possible; false when all is quiet.
    fn deliver_one(&mut self) -> bool {
        let links: Vec<(NodeId, NodeId)> = self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(&k, _)| k).collect();
        let viewers: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| !n.views.is_empty()).map(|(&i, _)| i).collect();
        let recoverers: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| !n.to_recover.is_empty()).map(|(&i, _)| i).collect();
        let total = links.len() + viewers.len() + recoverers.len();
        if total == 0 {
            return false;
        }
        let pick = self.rng.below(total as u64) as usize;
        if pick < links.len() {
            let (from, to) = links[pick];
            let packet = self.links.get_mut(&(from, to)).and_then(|q| q.pop_front()).unwrap();
            if self.trace {
                eprintln!("{} {from} -> {to}: {packet:?}", self.step);
            }
            match packet {
                Packet::Dlm(msg) => self.nodes.get_mut(&to).unwrap().dlm.receive(from, msg),
                Packet::Member(msg) => {
                    self.member(to).unwrap().receive(from, msg);
                    self.pump_members();
                }
            }
        } else if pick < links.len() + viewers.len() {
            let n = self.nodes.get_mut(&viewers[pick - links.len()]).unwrap();
            let (epoch, members) = n.views.pop_front().unwrap();
            if self.trace {
                eprintln!("{} view {epoch} {members:?} at node {}", self.step, viewers[pick - links.len()]);
            }
            n.dlm.set_view(epoch, &members);
        } else {
            let id = recoverers[pick - links.len() - viewers.len()];
            let n = self.nodes.get_mut(&id).unwrap();
            let dead = n.to_recover.pop_first().unwrap();
            if n.dlm.recovery_done(dead).is_ok() {
                self.dead_holdings.remove(&dead);
                self.stats.recoveries += 1;
            }
        }
        true
    }

    fn random_step(&mut self) {
        self.step += 1;
        self.stats.steps += 1;
        self.advance();
        let live: Vec<NodeId> = self.nodes.keys().copied().collect();
        if live.is_empty() {
            self.fail("every node fenced or crashed");
        }
        match self.rng.below(100) {
            // (With the real membership, no crash during a partition: a crash of the side that
            // wins the split would leave only fenced nodes, a total outage.)
            0 if live.len() > 1 && self.crashed.len() < 3 && self.cut.is_empty() => {
                // A crash, or (rarely) a split whose smaller side is fenced.
                let victims = if live.len() >= 4 && self.rng.below(3) == 0 {
                    &live[live.len() - 2..]
                } else {
                    &live[self.rng.below(live.len() as u64) as usize..][..1]
                };
                if self.deaths_stay_known(victims) {
                    self.crash(victims);
                }
            }
            1 if live.len() < MAX_NODES && self.next_node < CONFIGURED => self.join(),
            40..=41 if self.membership() && live.len() > 1 && self.cut.is_empty() && !self.death_pending() => {
                self.random_cut(&live)
            }
            42..=43 if self.membership() => self.heal_one(),
            2..=39 => {
                let node = live[self.rng.below(live.len() as u64) as usize];
                self.client_op(node);
            }
            _ => {
                self.deliver_one();
            }
        }
        self.drain(true);
        self.check_compatible();
    }

    /// Invariant 1: no two incompatible modes held on a resource, counting a dead node's holdings
    /// until its recovery is done (except against the node that recovers it).
    fn check_compatible(&self) {
        let mut held: Vec<(NodeId, bool, usize, Mode)> = Vec::new();
        for (&id, n) in &self.nodes {
            held.extend(n.locks.values().filter_map(|l| Some((id, true, l.res, l.held?))));
        }
        for (&id, locks) in &self.dead_holdings {
            held.extend(locks.iter().map(|&(res, mode)| (id, false, res, mode)));
        }
        for (i, a) in held.iter().enumerate() {
            for b in &held[i + 1..] {
                if a.2 != b.2 || a.3.compatible(b.3) || (!a.1 && !b.1) {
                    continue;
                }
                let exempt = |(live, dead): (NodeId, NodeId)| self.recoverers.contains(&(live, dead));
                if (!a.1 && exempt((b.0, a.0))) || (!b.1 && exempt((a.0, b.0))) {
                    continue;
                }
                self.fail(&format!("resource {}: {a:?} and {b:?} held together", a.2));
            }
        }
    }

    /// Runs until nothing is left to deliver (and, with the real membership, the views agree).
    fn quiesce(&mut self) {
        for _ in 0..100_000 {
            if !self.deliver_one() {
                if !self.membership() || self.members_settled() {
                    return;
                }
                self.advance();
            }
            self.drain(false);
            self.check_compatible();
        }
        let state: Vec<String> = (self.nodes.iter())
            .map(|(id, n)| {
                let m = n.member.as_ref();
                format!(
                    "node {id}: view {:?} reach {:?} dlm {:?}",
                    m.and_then(|m| m.view()),
                    m.map(|m| m.reachable()),
                    n.dlm.epoch()
                )
            })
            .collect();
        self.fail(&format!("the network never quiesced: {state:?}"));
    }

    /// Invariant 3: after the network heals, every rebuild and recovery finished, the masters'
    /// queues agree with the clients, and no waiter is grantable.
    fn check_settled(&mut self) {
        for (a, b) in std::mem::take(&mut self.cut) {
            self.connect(a, b);
        }
        self.quiesce();
        if !self.dead_holdings.is_empty() {
            self.fail(&format!("unrecovered: {:?}", self.dead_holdings.keys()));
        }
        for (&id, n) in &self.nodes {
            if !n.dlm.is_ready() || n.dlm.epoch() != Some(self.final_epoch()) || !n.dlm.unrecovered().is_empty() {
                self.fail(&format!("node {id} not settled: epoch {:?}", n.dlm.epoch()));
            }
        }
        // Each resource is mastered where the mastery function says, so resources keyed alike
        // are mastered together.
        let live: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        for (&id, n) in &self.nodes {
            for r in n.dlm.dump().into_iter().filter(|r| r.mastered_here) {
                let name = self.names.iter().find(|m| m.as_str() == r.name);
                if name.and_then(|m| master_of(m, &live)) != Some(id) {
                    self.fail(&format!("node {id} masters {} in the view {live:?}", r.name));
                }
            }
        }
        for (&id, n) in &self.nodes {
            for r in n.dlm.dump().into_iter().filter(|r| r.mastered_here) {
                let head = r.converting.first().or(r.waiting.first());
                if let Some(w) = head {
                    let blocked =
                        r.granted.iter().any(|g| (g.node, g.id) != (w.node, w.id) && !g.mode.compatible(w.wanted));
                    if !blocked {
                        self.fail(&format!("node {id}: {} has a grantable waiter {w:?}", r.name));
                    }
                }
                for g in &r.granted {
                    let client = self.nodes.get(&g.node).and_then(|n| n.locks.get(&g.id));
                    if client.and_then(|l| l.held) != Some(g.mode) {
                        self.fail(&format!("{}: master has {g:?}, client {client:?}", r.name));
                    }
                }
            }
        }
    }

    /// Cancels and unlocks everything, then checks that nothing is left anywhere.
    fn drain_all(&mut self) {
        for _ in 0..20 {
            let all: Vec<(NodeId, LockId, bool)> = (self.nodes.iter())
                .flat_map(|(&id, n)| {
                    n.locks.iter().filter(|(_, l)| !l.unlocking).map(move |(&lock, l)| (id, lock, l.pending))
                })
                .collect();
            if all.is_empty() && self.links.values().all(VecDeque::is_empty) {
                break;
            }
            for (node, lock, pending) in all {
                match pending {
                    true => drop(self.nodes.get_mut(&node).unwrap().dlm.cancel(lock)),
                    false => self.unlock(node, lock),
                }
            }
            self.drain(false);
            self.quiesce();
        }
        for (&id, n) in &self.nodes {
            let left: Vec<_> =
                n.dlm.dump().into_iter().filter(|r| !r.granted.is_empty() || !r.local.is_empty()).collect();
            if !n.locks.is_empty() || !left.is_empty() {
                self.fail(&format!("node {id}: locks left after draining: {left:?}"));
            }
        }
    }
}

/// Node `id`'s incarnation (node numbers are never reused in the simulation).
fn incarnation(id: NodeId) -> u64 {
    1000 + id as u64
}

fn run_seed(seed: u64, views_from: Views) -> Stats {
    let mut sim = Sim::new(seed, views_from);
    let steps = 30 + sim.rng.below(200);
    for _ in 0..steps {
        sim.random_step();
    }
    sim.check_settled();
    sim.drain_all();
    sim.stats
}

/// Found with `O2FS_SEEDS=200000`: a rebuild cut short invalidated the value block under a live
/// PW holder, whose next write then tied with its previous one and lost to it.
#[test]
fn seed_162620_no_stale_value_block_after_a_cut_short_rebuild() {
    run_seed(162620, Views::Oracle);
}

/// Runs `default` seeds (or `O2FS_SEEDS`, or the one `O2FS_SEED`) and checks they exercised
/// every feature.
fn sweep(views_from: Views, default: u64) -> Stats {
    if std::env::var_os("O2FS_SEED").is_some() {
        return run_seed(seed_from_env(0), views_from);
    }
    let seeds = seed_count_from_env(default);
    let mut total = Stats::default();
    for seed in 0..seeds {
        total.add(&run_seed(seed, views_from));
    }
    eprintln!("dlm_sim ({views_from:?} views): {seeds} seeds: {total:?}");
    let s = &total;
    let exercised = [s.grants, s.lvbs_seen, s.basts, s.not_queued, s.cancelled, s.joins, s.recoveries, s.at_once];
    assert!(exercised.iter().all(|&n| n > seeds / 10), "too little exercised: {total:?}");
    assert!(s.crashes > seeds / 2 && s.recoveries >= s.crashes / 2, "{total:?}");
    total
}

#[test]
fn random_clusters_keep_locks_safe_and_live() {
    sweep(Views::Oracle, SEEDS);
}

#[test]
fn random_clusters_with_the_real_membership_keep_locks_safe_and_live() {
    let s = sweep(Views::Membership, MEMBERSHIP_SEEDS);
    if std::env::var_os("O2FS_SEED").is_none() {
        assert!(s.cuts > MEMBERSHIP_SEEDS / 10 && s.fences > MEMBERSHIP_SEEDS / 400, "{s:?}");
    }
}
