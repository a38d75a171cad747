//! Hand-written scenarios on a few engines connected by an instant, ordered network.

use std::collections::BTreeSet;

use super::{Dlm, Event, LockError, LockFlags, LockId, Lvb, Mode, Msg, NodeId, ResName};

struct Net {
    nodes: Vec<Dlm>,
    /// Non-send events per node, in order.
    seen: Vec<Vec<Event>>,
}

impl Net {
    fn new(n: u8) -> Net {
        let mut net = Net { nodes: (0..n).map(Dlm::new).collect(), seen: vec![Vec::new(); n as usize] };
        let members: BTreeSet<NodeId> = (0..n).collect();
        for d in &mut net.nodes {
            d.set_view(1, &members);
        }
        net.run();
        net
    }

    /// Delivers every message until none is left.
    fn run(&mut self) {
        loop {
            let mut sent: Vec<(NodeId, NodeId, Msg)> = Vec::new();
            for (i, d) in self.nodes.iter_mut().enumerate() {
                while let Some(e) = d.poll_event() {
                    match e {
                        Event::Send { to, msg } => sent.push((i as NodeId, to, msg)),
                        other => self.seen[i].push(other),
                    }
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, to, msg) in sent {
                self.nodes[to as usize].receive(from, msg);
            }
        }
    }

    fn take(&mut self, node: usize) -> Vec<Event> {
        std::mem::take(&mut self.seen[node])
    }

    fn lock(&mut self, node: usize, res: &ResName, mode: Mode, noqueue: bool) -> LockId {
        let id = self.nodes[node].lock(res, mode, LockFlags { noqueue });
        self.run();
        id
    }
}

fn res() -> ResName {
    ResName::new("M000000test").unwrap()
}

fn granted(id: LockId, mode: Mode, lvb: &[u8]) -> Event {
    Event::Granted { id, mode, lvb: Lvb(lvb.to_vec()) }
}

#[test]
fn grant_then_bast_on_conflict_then_down_conversion_wakes_the_waiter() {
    let mut net = Net::new(3);
    let a = net.lock(0, &res(), Mode::Ex, false);
    assert_eq!(net.take(0), vec![granted(a, Mode::Ex, b"")]);
    let b = net.lock(1, &res(), Mode::Pr, false);
    assert_eq!(net.take(0), vec![Event::Blocking { id: a, wanted: Mode::Pr }]);
    assert!(net.take(1).is_empty(), "waits");
    let c = net.lock(2, &res(), Mode::Pr, false);
    assert!(net.take(0).is_empty(), "one BAST per blocking episode");
    net.nodes[0].convert(a, Mode::Pr, LockFlags::default(), Some(Lvb(b"v1".to_vec()))).unwrap();
    net.run();
    assert_eq!(net.take(0), vec![granted(a, Mode::Pr, b"v1")]);
    assert_eq!(net.take(1), vec![granted(b, Mode::Pr, b"v1")], "the lvb travels EX -> PR");
    assert_eq!(net.take(2), vec![granted(c, Mode::Pr, b"v1")]);
}

#[test]
fn noqueue_fails_and_cancel_ends_a_wait() {
    let mut net = Net::new(2);
    let a = net.lock(0, &res(), Mode::Pw, false);
    net.take(0);
    let b = net.lock(1, &res(), Mode::Pr, true);
    assert_eq!(net.take(1), vec![Event::Failed { id: b, error: LockError::NotQueued }]);
    assert!(net.take(0).is_empty(), "no BAST for a try-lock");
    let c = net.lock(1, &res(), Mode::Ex, false);
    net.nodes[1].cancel(c).unwrap();
    net.run();
    assert_eq!(net.take(1), vec![Event::Failed { id: c, error: LockError::Cancelled }]);
    assert!(net.nodes[1].unlock(c, None).is_err(), "a cancelled new lock is gone");
    net.nodes[0].unlock(a, Some(Lvb(b"last".to_vec()))).unwrap();
    net.run();
    assert_eq!(net.take(0), vec![Event::Blocking { id: a, wanted: Mode::Ex }, Event::Unlocked { id: a }]);
    let d = net.lock(1, &res(), Mode::Pr, true);
    assert_eq!(net.take(1), vec![granted(d, Mode::Pr, b"last")]);
}

#[test]
fn conversions_go_before_new_requests() {
    let mut net = Net::new(2);
    let a = net.lock(0, &res(), Mode::Pr, false);
    let b = net.lock(1, &res(), Mode::Pr, false);
    net.take(0);
    net.take(1);
    let c = net.lock(1, &res(), Mode::Pr, false); // waits behind nothing: granted
    assert_eq!(net.take(1), vec![granted(c, Mode::Pr, b"")]);
    net.nodes[0].convert(a, Mode::Ex, LockFlags::default(), None).unwrap();
    net.run();
    let d = net.lock(1, &res(), Mode::Pr, false); // behind the conversion
    assert!(net.take(1).iter().all(|e| matches!(e, Event::Blocking { .. })));
    net.nodes[1].unlock(b, None).unwrap();
    net.nodes[1].unlock(c, None).unwrap();
    net.run();
    assert_eq!(net.take(0), vec![granted(a, Mode::Ex, b""), Event::Blocking { id: a, wanted: Mode::Pr }]);
    assert!(!net.take(1).contains(&granted(d, Mode::Pr, b"")));
}

#[test]
fn bad_calls_are_errors_and_bad_messages_are_dropped() {
    let mut net = Net::new(2);
    let a = net.lock(0, &res(), Mode::Ex, false);
    assert!(net.nodes[0].convert(LockId(99), Mode::Nl, LockFlags::default(), None).is_err());
    assert!(net.nodes[0].unlock(a, Some(Lvb(vec![0; 65]))).is_err());
    assert!(net.nodes[0].cancel(a).is_err(), "nothing waiting");
    assert!(net.nodes[0].recovery_done(1).is_err());
    let junk = [
        Msg::Grant { epoch: 1, res: res(), id: LockId(7), mode: Mode::Ex, lvb: Default::default() },
        Msg::Down { epoch: 1, res: res(), id: LockId(7), mode: Mode::Ex, lvb: None },
        Msg::Unlock { epoch: 0, res: res(), id: a, lvb: None },
        Msg::Rebuild {
            epoch: 1,
            res: res(),
            id: a,
            granted: None,
            wanted: None,
            noqueue: false,
            unlocking: false,
            lvb: super::msg::VersionedLvb { version: 9, lvb: Lvb(vec![1; 100]) },
        },
        Msg::RebuildDone { epoch: 1, deaths: vec![] },
    ];
    for msg in junk {
        for d in &mut net.nodes {
            d.receive(1, msg.clone());
            d.receive(200, msg.clone());
        }
    }
    net.run();
    let dumps: Vec<_> = net.nodes.iter().flat_map(|d| d.dump()).filter(|r| r.mastered_here).collect();
    assert_eq!(dumps.len(), 1);
    assert_eq!(dumps[0].granted.len(), 1);
}

#[test]
fn a_dead_nodes_ex_blocks_until_recovered_except_for_the_recovery_node() {
    let mut net = Net::new(3);
    // Find a resource node 2 does not master, and let node 2 hold it at EX.
    let members: BTreeSet<NodeId> = (0..3).collect();
    let name = (0..).map(|i| ResName::ocfs2('M', i, 0)).find(|n| super::master_of(n, &members) == Some(1));
    let name = name.unwrap();
    net.lock(2, &name, Mode::Ex, false);
    let survivors: BTreeSet<NodeId> = [0, 1].into();
    net.nodes[0].set_view(2, &survivors);
    net.nodes[1].set_view(2, &survivors);
    net.nodes[2] = Dlm::new(2);
    net.run();
    assert_eq!(net.take(0), vec![Event::RecoverNode { dead: 2 }]);
    let blocked = net.lock(1, &name, Mode::Pr, false);
    assert!(net.take(1).is_empty(), "the dead node's EX still holds");
    let rec = net.lock(0, &name, Mode::Ex, false);
    let blocking = Event::Blocking { id: rec, wanted: Mode::Pr };
    assert_eq!(net.take(0), vec![granted(rec, Mode::Ex, b""), blocking], "invalidated lvb, recovery node exempt");
    net.nodes[0].recovery_done(2).unwrap();
    net.nodes[0].unlock(rec, None).unwrap();
    net.run();
    assert_eq!(net.take(1), vec![granted(blocked, Mode::Pr, b"")]);
    assert!(net.nodes.iter().all(|d| d.unrecovered().is_empty()));
}
