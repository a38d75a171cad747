//! The cluster stack as real processes: `o2fs cluster up` daemons on 127.0.0.1/2/3 forming a
//! cluster, `o2fs lock` read-increment-write cycles on one counter from every node, try-locks,
//! kill -9 of a holder and of a master, and a network split (nftables on loopback) in which
//! the higher node fences and the lower one carries on with the fenced node's locks recovered.

mod common;

use common::daemon::Daemon;
use common::{bin, run};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Small timings: 100 ms keepalive and disk beats, 1 s link grace, dead after 10 missed beats.
const TIMING: &[&str] = &[
    "--keepalive-ms",
    "100",
    "--idle-timeout-ms",
    "1000",
    "--reconnect-ms",
    "100",
    "--hb-interval-ms",
    "100",
    "--hb-dead-beats",
    "10",
];

struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    nodes: Vec<Option<Daemon>>,
    image: Option<PathBuf>,
}

impl Cluster {
    /// Writes cluster.conf (nodes n0.. on 127.0.0.1.. with a port of this test's own) and a
    /// secret, then starts every node.
    fn new(n: usize, image: bool) -> Cluster {
        Cluster::on("127.0.0", n, image)
    }

    /// The same on `NET.1`, `NET.2`…: a test that cuts links uses addresses no other test uses.
    fn on(net: &str, n: usize, image: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = 20000 + (std::process::id() % 20000) as u16 + (rand_u16() % 5000);
        let mut conf = format!(
            "cluster:\n\tnode_count = {n}\n\tname = t{port}\n\tsecret_file = {}/secret\n\n",
            dir.path().display()
        );
        for i in 0..n {
            conf += &format!(
                "node:\n\tip_port = {port}\n\tip_address = {net}.{}\n\tnumber = {i}\n\tname = n{i}\n\tcluster = t{port}\n\n",
                i + 1
            );
        }
        std::fs::write(dir.path().join("cluster.conf"), conf).unwrap();
        std::fs::write(dir.path().join("secret"), "test-secret\n").unwrap();
        let image = image.then(|| {
            let img = dir.path().join("vol.img");
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(256 << 20).unwrap();
            let out = run(Command::new(bin("mkfs.o2fs")).args(["-q", "-N", "4", "-F"]).arg(&img));
            assert!(out.status.success(), "mkfs.o2fs: {}", common::text(&out));
            img
        });
        let mut c = Cluster { conf: dir.path().join("cluster.conf"), dir, nodes: Vec::new(), image };
        for i in 0..n {
            c.nodes.push(None);
            c.start(i);
        }
        c
    }

    fn start(&mut self, i: usize) {
        let name = format!("n{i}");
        let conf = self.conf.to_string_lossy().into_owned();
        let mut args = vec!["cluster", "up", "--node", &name, "-c", &conf];
        let img = self.image.as_ref().map(|p| p.to_string_lossy().into_owned());
        if let Some(img) = &img {
            args.push(img);
        }
        args.extend_from_slice(TIMING);
        self.nodes[i] = Some(Daemon::start(self.dir.path(), &name, &args));
    }

    fn node(&self, i: usize) -> &Daemon {
        self.nodes[i].as_ref().expect("node running")
    }

    fn status(&self, i: usize) -> serde_json::Value {
        self.node(i).request(r#"{"cmd":"status"}"#).unwrap()["cluster"].clone()
    }

    fn members(&self, i: usize) -> BTreeSet<u64> {
        let st = self.status(i);
        st["view"]["members"].as_object().map(|m| m.keys().filter_map(|k| k.parse().ok()).collect()).unwrap_or_default()
    }

    /// Waits until every listed node's view has exactly `want`.
    fn wait_view(&self, on: &[usize], want: &[u64], limit: Duration) {
        let want: BTreeSet<u64> = want.iter().copied().collect();
        let start = Instant::now();
        loop {
            if on.iter().all(|&i| self.members(i) == want) {
                return;
            }
            if start.elapsed() > limit {
                let logs: Vec<String> =
                    on.iter().map(|&i| format!("--- n{i}: {:?}\n{}", self.members(i), self.node(i).log())).collect();
                panic!("views never became {want:?}:\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `o2fs lock --node nI ARGS… -- CMD…` as a child process.
    fn lock_cmd(&self, i: usize, args: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(bin("o2fs"));
        c.arg("lock").arg("--node").arg(format!("n{i}")).arg("--socket").arg(&self.node(i).socket);
        c.args(args).arg("--").args(cmd).stdin(Stdio::null());
        c
    }

    fn logs(&self) -> String {
        self.nodes.iter().flatten().map(|d| format!("--- {}\n{}", d.name, d.log())).collect()
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::getrandom(&mut b).unwrap();
    u16::from_le_bytes(b)
}

/// A read-increment-write of the counter file that is wrong unless the cycles are serialised.
fn increment(counter: &Path) -> Vec<String> {
    let script = format!(
        "v=$(cat {0}); sleep 0.00$((RANDOM % 5)); echo $((v+1)) > {0}.tmp.$$ && mv {0}.tmp.$$ {0}",
        counter.display()
    );
    vec!["bash".into(), "-c".into(), script]
}

#[test]
fn three_nodes_serialise_a_counter() {
    let c = Cluster::new(3, false);
    c.wait_view(&[0, 1, 2], &[0, 1, 2], Duration::from_secs(20));
    let counter = c.dir.path().join("counter");
    std::fs::write(&counter, "0\n").unwrap();
    let script = increment(&counter);
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    const PER_CLIENT: usize = 10;
    std::thread::scope(|s| {
        for i in 0..3 {
            for _ in 0..2 {
                let (c, script) = (&c, &script);
                s.spawn(move || {
                    for _ in 0..PER_CLIENT {
                        let out = run(&mut c.lock_cmd(i, &["counter"], script));
                        assert!(out.status.success(), "o2fs lock on n{i}: {}\n{}", common::text(&out), c.logs());
                    }
                });
            }
        }
    });
    let v: usize = std::fs::read_to_string(&counter).unwrap().trim().parse().unwrap();
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

/// An nftables table of the test's own dropping traffic between two loopback addresses;
/// deleted on drop.
struct Split(String);

impl Split {
    fn new(a: &str, b: &str) -> Split {
        let name = format!("o2fs_split_{}_{}", std::process::id(), rand_u16());
        let rules = format!(
            "table ip {name} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
             ip saddr {a} ip daddr {b} drop\n    ip saddr {b} ip daddr {a} drop\n  }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{name}.nft"));
        std::fs::write(&file, rules).unwrap();
        let out = run(Command::new("nft").arg("-f").arg(&file));
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "nft: {}", common::text(&out));
        Split(name)
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        let _ = run(Command::new("nft").args(["delete", "table", "ip", &self.0]));
    }
}

#[test]
fn network_split_fences_the_higher_node() {
    let c = Cluster::on("127.0.9", 2, true);
    c.wait_view(&[0, 1], &[0, 1], Duration::from_secs(20));
    let mut holder = c.lock_cmd(1, &["svc"], &["sleep", "60"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let split = Split::new("127.0.9.1", "127.0.9.2");
    let start = Instant::now();
    while c.status(1)["fenced"].is_null() {
        assert!(start.elapsed() < Duration::from_secs(20), "n1 never fenced\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = common::wait_bounded(&mut holder, Duration::from_secs(10)).expect("the fenced node's command is killed");
    assert!(!st.success());
    assert!(c.status(0)["fenced"].is_null(), "the lower node survives\n{}", c.logs());
    c.wait_view(&[0], &[0], Duration::from_secs(20));
    // The service moves: n0 takes the lock the fenced node held.
    let out = run(&mut c.lock_cmd(0, &["--try", "svc"], &["true"]));
    assert!(out.status.success(), "{}\n{}", common::text(&out), c.logs());
    // A fenced node refuses new locks even after the link returns.
    drop(split);
    std::thread::sleep(Duration::from_millis(500));
    let out = run(&mut c.lock_cmd(1, &["svc2"], &["true"]));
    assert!(!out.status.success() && common::text(&out).contains("fenced"), "{}", common::text(&out));
}
