//! The cluster stack as real processes: `o2fs cluster up` daemons on 127.0.0.1/2/3 forming a
//! cluster, `o2fs lock` read-increment-write cycles on one counter from every node, try-locks,
//! kill -9 of a holder and of a master, and a network split (nftables on loopback) in which
//! the higher node fences and the lower one carries on with the fenced node's locks recovered.

mod common;

use common::cluster::Cluster;
use common::nft::Split;
use common::{bin, run};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn three_nodes_serialise_a_counter() {
    let c = Cluster::new(3, false);
    c.wait_view(&[0, 1, 2], &[0, 1, 2], Duration::from_secs(20));
    const PER_CLIENT: usize = 10;
    let v = c.count_under_lock(&[0, 1, 2], 2, PER_CLIENT);
    assert_eq!(v, 3 * 2 * PER_CLIENT, "lost updates: the lock did not serialise\n{}", c.logs());
    // `o2fs locks` shows the resource and its master, cluster-wide, from any node.
    let out = run(Command::new(bin("o2fs")).args(["locks", "--node", "n1", "--socket"]).arg(&c.node(1).socket));
    assert!(out.status.success() && common::text(&out).contains("counter"), "{}", common::text(&out));
}

#[test]
fn try_lock_and_exit_status() {
    let c = Cluster::new(2, false);
    c.wait_view(&[0, 1], &[0, 1], Duration::from_secs(20));
    let mut holder = c.lock_cmd(0, &["res"], &["sleep", "3"]).spawn().unwrap();
    // Wait until n0 holds it (the try from n1 then fails).
    let start = Instant::now();
    loop {
        let out = run(&mut c.lock_cmd(1, &["--try", "res"], &["true"]));
        if out.status.code() == Some(1) {
            assert!(common::text(&out).contains("locked elsewhere"), "{}", common::text(&out));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "n0 never took the lock\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(holder.wait().unwrap().success());
    let out = run(&mut c.lock_cmd(1, &["--try", "res"], &["sh", "-c", "exit 7"]));
    assert_eq!(out.status.code(), Some(7), "the command's status comes back: {}", common::text(&out));
    // Shared holders coexist across nodes.
    let mut a = c.lock_cmd(0, &["--mode", "pr", "shared"], &["sleep", "2"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&mut c.lock_cmd(1, &["--mode", "pr", "--try", "shared"], &["true"]));
    assert!(out.status.success(), "pr + pr must be compatible: {}", common::text(&out));
    assert!(a.wait().unwrap().success());
}

#[test]
fn killed_holder_and_master_do_not_stop_the_others() {
    let mut c = Cluster::new(3, false);
    c.wait_view(&[0, 1, 2], &[0, 1, 2], Duration::from_secs(20));
    // n2 holds the lock; n0 waits for it; n2's daemon dies.
    let mut holder = c.lock_cmd(2, &["job"], &["sleep", "60"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut waiter = c.lock_cmd(0, &["job"], &["true"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.try_wait().unwrap().is_none(), "n0 must wait while n2 holds the lock");
    c.nodes[2].as_mut().unwrap().kill9();
    let st = common::wait_bounded(&mut holder, Duration::from_secs(10)).expect("the holder's command is killed");
    assert!(!st.success(), "a lock whose daemon died is lost: the command is stopped");
    let st = common::wait_bounded(&mut waiter, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("n0 never got the lock after n2 died\n{}", c.logs()));
    assert!(st.success(), "n0's waiter failed ({st})\n{}", c.logs());
    c.wait_view(&[0, 1], &[0, 1], Duration::from_secs(10));
    // Restart n2 (a new incarnation joins), so that the next death still leaves a majority;
    // then kill n0 — the leader, and master of some of these resources — after it used them.
    c.start(2);
    c.wait_view(&[0, 1, 2], &[0, 1, 2], Duration::from_secs(20));
    for r in ["a", "b", "c", "d"] {
        assert!(run(&mut c.lock_cmd(0, &[r], &["true"])).status.success());
    }
    c.nodes[0].as_mut().unwrap().kill9();
    c.wait_view(&[1, 2], &[1, 2], Duration::from_secs(20));
    for r in ["a", "b", "c", "d"] {
        let out = run(&mut c.lock_cmd(1, &[r], &["true"]));
        assert!(out.status.success(), "lock {r} after the master died: {}\n{}", common::text(&out), c.logs());
    }
}

#[test]
fn network_split_fences_the_higher_node() {
    let c = Cluster::on("127.0.9", 2, true);
    c.wait_view(&[0, 1], &[0, 1], Duration::from_secs(20));
    let split = c.split_fences_the_higher_node(|| Split::new("127.0.9.1", "127.0.9.2"));
    // A fenced node refuses new locks even after the link returns.
    drop(split);
    std::thread::sleep(Duration::from_millis(500));
    let out = run(&mut c.lock_cmd(1, &["svc2"], &["true"]));
    assert!(!out.status.success() && common::text(&out).contains("fenced"), "{}", common::text(&out));
}
