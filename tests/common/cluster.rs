//! A cluster of the test's own: cluster.conf, secret and (optionally) a heartbeat volume in a
//! temporary folder, one `o2fs cluster up -f` daemon per node (see [`super::daemon`]), and the
//! admin commands the tests run against them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::Daemon;
use super::{bin, run, text};

/// Small timings: 100 ms keepalive and disk beats, 1 s link grace, dead after 10 missed beats.
pub const TIMING: &[&str] = &[
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

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub name: String,
    pub port: u16,
    pub nodes: Vec<Option<Daemon>>,
    pub image: Option<PathBuf>,
    /// Per node, the network namespace its daemon runs in (`ip netns exec`), if any.
    netns: Vec<Option<String>>,
}

impl Cluster {
    /// Nodes n0.. on 127.0.0.1.., with a port of this test's own, all started.
    pub fn new(n: usize, image: bool) -> Cluster {
        Cluster::on("127.0.0", n, image)
    }

    /// The same on `NET.1`, `NET.2`…: a test that cuts links uses addresses no other test uses.
    pub fn on(net: &str, n: usize, image: bool) -> Cluster {
        let mut c = Cluster::configured(net, n, image);
        for i in 0..n {
            c.start(i);
        }
        c
    }

    /// Node i runs in namespace `netns[i]` at `NET.(i+1)` (addresses the caller configured there).
    pub fn in_namespaces(net: &str, netns: &[String], image: bool) -> Cluster {
        let mut c = Cluster::configured(net, netns.len(), image);
        c.netns = netns.iter().cloned().map(Some).collect();
        for i in 0..netns.len() {
            c.start(i);
        }
        c
    }

    /// Writes cluster.conf and the secret (and makes the volume); starts nothing.
    pub fn configured(net: &str, n: usize, image: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = 20000 + (std::process::id() % 20000) as u16 + (rand_u16() % 5000);
        let name = format!("t{port}");
        let mut conf = format!(
            "cluster:\n\tnode_count = {n}\n\tname = {name}\n\tsecret_file = {}/secret\n\n",
            dir.path().display()
        );
        for i in 0..n {
            conf += &format!(
                "node:\n\tip_port = {port}\n\tip_address = {net}.{}\n\tnumber = {i}\n\tname = n{i}\n\tcluster = {name}\n\n",
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
            assert!(out.status.success(), "mkfs.o2fs: {}", text(&out));
            img
        });
        Cluster {
            conf: dir.path().join("cluster.conf"),
            dir,
            name,
            port,
            nodes: (0..n).map(|_| None).collect(),
            image,
            netns: vec![None; n],
        }
    }

    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    /// Starts node i with `extra` arguments after the usual ones.
    pub fn start_with(&mut self, i: usize, extra: &[&str]) {
        let name = format!("n{i}");
        let conf = self.conf.display().to_string();
        let img = self.image.as_ref().map(|p| p.display().to_string());
        let mut args = vec!["cluster", "up", "--node", &name, "-c", &conf];
        args.extend(img.as_deref());
        args.extend(TIMING);
        args.extend(extra);
        let wrapper: Vec<&str> = match &self.netns[i] {
            Some(ns) => vec!["ip", "netns", "exec", ns],
            None => vec![],
        };
        self.nodes[i] = Some(Daemon::start_via(self.dir.path(), &name, &wrapper, &args));
    }

    pub fn node(&self, i: usize) -> &Daemon {
        self.nodes[i].as_ref().expect("node running")
    }

    pub fn status(&self, i: usize) -> serde_json::Value {
        self.node(i).request(r#"{"cmd":"status"}"#).unwrap()["cluster"].clone()
    }

    pub fn members(&self, i: usize) -> BTreeSet<u64> {
        let st = self.status(i);
        st["view"]["members"].as_object().map(|m| m.keys().filter_map(|k| k.parse().ok()).collect()).unwrap_or_default()
    }

    /// Waits until every listed node's view has exactly `want`.
    pub fn wait_view(&self, on: &[usize], want: &[u64], limit: Duration) {
        let want: BTreeSet<u64> = want.iter().copied().collect();
        self.wait_until(limit, &format!("views to become {want:?}"), || on.iter().all(|&i| self.members(i) == want));
    }

    /// Polls `cond` every 50 ms; fails with every node's log after `limit`.
    pub fn wait_until(&self, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < limit, "waited {limit:?} for {what}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node i reports itself fenced.
    pub fn wait_fenced(&self, i: usize, limit: Duration) {
        self.wait_until(limit, &format!("n{i} to fence"), || !self.status(i)["fenced"].is_null());
    }

    /// `o2fs lock --node nI ARGS… -- CMD…` as a child process.
    pub fn lock_cmd(&self, i: usize, args: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(bin("o2fs"));
        c.arg("lock").arg("--node").arg(format!("n{i}")).arg("--socket").arg(&self.node(i).socket);
        c.args(args).arg("--").args(cmd).stdin(Stdio::null());
        c
    }

    /// `clients` concurrent loops per listed node, each running `per_client` locked increments
    /// of one counter file; returns the counter's final value.
    pub fn count_under_lock(&self, on: &[usize], clients: usize, per_client: usize) -> usize {
        let counter = self.dir.path().join("counter");
        std::fs::write(&counter, "0\n").unwrap();
        let script = increment(&counter);
        let script: Vec<&str> = script.iter().map(String::as_str).collect();
        std::thread::scope(|s| {
            for &i in on {
                for _ in 0..clients {
                    let script = &script;
                    s.spawn(move || {
                        for _ in 0..per_client {
                            let out = run(&mut self.lock_cmd(i, &["counter"], script));
                            assert!(out.status.success(), "o2fs lock on n{i}: {}\n{}", text(&out), self.logs());
                        }
                    });
                }
            }
        });
        std::fs::read_to_string(&counter).unwrap().trim().parse().unwrap()
    }

    /// Two nodes, n1 holding `svc` under a long command, are split by `cut` (whose result, say
    /// a guard that heals the split, is returned): n1 fences and its command is killed; n0
    /// survives, drops n1 from its view, and takes `svc`.
    pub fn split_fences_the_higher_node<G>(&self, cut: impl FnOnce() -> G) -> G {
        let limit = Duration::from_secs(20);
        let mut holder = self.lock_cmd(1, &["svc"], &["sleep", "60"]).spawn().unwrap();
        self.wait_until(limit, "n1 to hold svc", || {
            run(&mut self.lock_cmd(0, &["--try", "svc"], &["true"])).status.code() == Some(1)
        });
        let guard = cut();
        self.wait_fenced(1, limit);
        let st =
            super::wait_bounded(&mut holder, Duration::from_secs(10)).expect("the fenced node's command is killed");
        assert!(!st.success(), "the command under a lost lock must not end well");
        assert!(self.status(0)["fenced"].is_null(), "the lower node survives\n{}", self.logs());
        self.wait_view(&[0], &[0], limit);
        let out = run(&mut self.lock_cmd(0, &["--try", "svc"], &["true"]));
        assert!(out.status.success(), "n0 takes the fenced node's lock: {}\n{}", text(&out), self.logs());
        guard
    }

    pub fn logs(&self) -> String {
        self.nodes.iter().flatten().map(|d| format!("--- {}\n{}", d.name, d.log())).collect()
    }
}

pub fn rand_u16() -> u16 {
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
