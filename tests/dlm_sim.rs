//! Deterministic simulation of the DLM: 2 to 5 engines on an in-process network of FIFO links
//! (one per ordered pair, interleaved at random), with crashes, joins, a membership oracle that
//! delivers each view to every member in the same order, and random clients. Invariants are
//! checked after every step; each seed ends with the network healed and every request settled.
//! `O2FS_SEED=N` replays one seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use o2fs::dlm::{Dlm, Event, LockError, LockFlags, LockId, Lvb, Mode, Msg, NodeId, ResName};
use o2fs::testutil::{seed_from_env, Rng};

const SEEDS: u64 = 10_000;
const RESOURCES: usize = 3;
const MAX_NODES: usize = 5;
const MAX_LOCKS_PER_NODE: usize = 4;

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
    }
}

struct Sim {
    seed: u64,
    step: u64,
    rng: Rng,
    names: Vec<ResName>,
    nodes: BTreeMap<NodeId, Node>,
    links: BTreeMap<(NodeId, NodeId), VecDeque<Msg>>,
    epoch: u64,
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
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let n = 2 + rng.below(4) as NodeId;
        let names = (0..RESOURCES as u64).map(|i| ResName::ocfs2('M', i, 7)).collect();
        let mut sim = Sim {
            seed,
            step: 0,
            rng,
            names,
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
            epoch: 0,
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

    fn fail(&self, what: &str) -> ! {
        panic!("seed {} (O2FS_SEED={}), step {}: {what}", self.seed, self.seed, self.step)
    }

    fn add_node(&mut self, id: NodeId) {
        let node = Node {
            dlm: Dlm::new(id),
            locks: BTreeMap::new(),
            views: VecDeque::new(),
            to_recover: BTreeSet::new(),
            seen: BTreeSet::new(),
        };
        self.nodes.insert(id, node);
        self.members.insert(id);
    }

    /// The membership oracle: the next view, queued for every member in the same order.
    /// Some member has a view to apply or a rebuild to finish.
    fn unsettled(&self) -> bool {
        self.nodes.values().any(|n| !n.views.is_empty() || !n.dlm.is_ready())
    }

    /// A view change that cuts a rebuild short may lose (invalidate) value blocks written
    /// before it or during the unfinished rebuild.
    fn issue_view(&mut self) {
        if self.unsettled() {
            self.lvbs.iter_mut().for_each(|l| l.may_be_lost = true);
        }
        self.epoch += 1;
        for node in self.nodes.values_mut() {
            node.views.push_back((self.epoch, self.members.clone()));
            node.seen.extend(&self.members);
        }
    }

    /// Whether, after `victims` die, some survivor still knows of every unrecovered death. A
    /// death only dead nodes knew of is lost to the DLM (a joiner never saw that node): the
    /// filesystem recovers such slots at mount from its slot map, as OCFS2 does, so the
    /// simulation does not produce it.
    fn deaths_stay_known(&self, victims: &[NodeId]) -> bool {
        let survivors: Vec<&Node> = self.nodes.iter().filter(|(id, _)| !victims.contains(id)).map(|(_, n)| n).collect();
        let dead = self.dead_holdings.keys().chain(victims);
        dead.into_iter().all(|d| survivors.iter().any(|n| n.seen.contains(d) || n.dlm.unrecovered().contains(d)))
    }

    fn crash(&mut self, victims: &[NodeId]) {
        if self.trace {
            eprintln!("{} crash {victims:?}", self.step);
        }
        for &id in victims {
            let Some(node) = self.nodes.remove(&id) else { continue };
            let held = node.locks.values().filter(|l| !l.unlocking).filter_map(|l| Some((l.res, l.held?)));
            self.dead_holdings.insert(id, held.collect());
            self.links.retain(|&(from, to), _| from != id && to != id);
            self.members.remove(&id);
            self.crashed.insert(id);
            self.stats.crashes += 1;
        }
        self.lvbs.iter_mut().for_each(|l| l.may_be_lost = true);
        self.issue_view();
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
            Event::Send { to, msg } => {
                if self.nodes.contains_key(&to) {
                    self.links.entry((id, to)).or_default().push_back(msg);
                }
            }
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
                let lock = n.dlm.lock(&self.names[res], mode, LockFlags { noqueue });
                if self.trace {
                    eprintln!("{} node {node}: lock {lock:?} res {res} {mode} noqueue {noqueue}", self.step);
                }
                n.locks.insert(lock, ClientLock { res, held: None, pending: true, unlocking: false });
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
            let msg = self.links.get_mut(&(from, to)).and_then(|q| q.pop_front()).unwrap();
            if self.trace {
                eprintln!("{} {from} -> {to}: {msg:?}", self.step);
            }
            self.nodes.get_mut(&to).unwrap().dlm.receive(from, msg);
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
        let now = self.step;
        self.nodes.values_mut().for_each(|n| n.dlm.set_time(now));
        let live: Vec<NodeId> = self.nodes.keys().copied().collect();
        match self.rng.below(100) {
            0 if live.len() > 1 && self.crashed.len() < 3 => {
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
            1 if live.len() < MAX_NODES && self.next_node < 12 => self.join(),
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

    fn quiesce(&mut self) {
        for _ in 0..100_000 {
            if !self.deliver_one() {
                return;
            }
            self.drain(false);
            self.check_compatible();
        }
        self.fail("the network never quiesced");
    }

    /// Invariant 3: after the network heals, every rebuild and recovery finished, the masters'
    /// queues agree with the clients, and no waiter is grantable.
    fn check_settled(&mut self) {
        self.quiesce();
        if !self.dead_holdings.is_empty() {
            self.fail(&format!("unrecovered: {:?}", self.dead_holdings.keys()));
        }
        for (&id, n) in &self.nodes {
            if !n.dlm.is_ready() || n.dlm.epoch() != Some(self.epoch) || !n.dlm.unrecovered().is_empty() {
                self.fail(&format!("node {id} not settled: epoch {:?}", n.dlm.epoch()));
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
            if all.is_empty() && self.links.values().all(|q| q.is_empty()) {
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

fn run_seed(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    let steps = 30 + sim.rng.below(200);
    for _ in 0..steps {
        sim.random_step();
    }
    sim.check_settled();
    sim.drain_all();
    sim.stats
}

#[test]
fn random_clusters_keep_locks_safe_and_live() {
    if std::env::var_os("O2FS_SEED").is_some() {
        run_seed(seed_from_env(0));
        return;
    }
    let mut total = Stats::default();
    for seed in 0..SEEDS {
        total.add(&run_seed(seed));
    }
    eprintln!("dlm_sim: {SEEDS} seeds: {total:?}");
    let s = &total;
    let exercised = [s.grants, s.lvbs_seen, s.basts, s.not_queued, s.cancelled, s.joins, s.recoveries];
    assert!(exercised.iter().all(|&n| n > SEEDS / 10), "too little exercised: {total:?}");
    assert!(s.crashes > SEEDS / 2 && s.recoveries >= s.crashes / 2, "{total:?}");
}
