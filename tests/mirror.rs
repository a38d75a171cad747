//! The mirror over real sockets: two `o2fs mirror up` processes on 127.0.0.1 and 127.0.0.2 (or
//! 127.0.34.1 and .2 for the later tests), each with its own resource file, replica and
//! meta-disk in a temporary folder and ports of its own.
//! Writes and reads go through the admin socket's `write`/`read` (the MirrorDevice path).
//! Daemons are killed by PID when a test ends, even when it fails.

mod common;

use common::daemon::Daemon;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use o2fs::net::admin;
use o2fs::testutil::Rng;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

const BLOCK: u64 = 4096;
/// Replica size: 8 MiB (external meta-disk, so the image is pure data).
const SIZE: u64 = 8 << 20;

/// A running `o2fs mirror up` (tests/common/daemon.rs: stopped by PID when dropped).
struct Node {
    daemon: Daemon,
}

impl Node {
    /// Starts node `node` (in network namespace `netns`, if given), with 200 ms keepalives and a
    /// 1.5 s idle timeout so that a dead link is noticed quickly.
    fn start(dir: &Path, node: &str, res: &Path, netns: Option<&str>) -> Node {
        let res = res.to_str().unwrap();
        let args = ["mirror", "up", "--keepalive-ms", "200", "--idle-timeout-ms", "1500", "--node", node, "-r", res];
        let daemon = match netns {
            Some(ns) => Daemon::start_via(dir, node, &["ip", "netns", "exec", ns], &args),
            None => Daemon::start(dir, node, &args),
        };
        Node { daemon }
    }

    fn log(&self) -> String {
        self.daemon.log()
    }

    fn socket(&self) -> &Path {
        &self.daemon.socket
    }

    fn try_call(&self, request: Value) -> Result<Value, String> {
        admin::request(self.socket(), &request, Duration::from_secs(20)).map_err(|e| e.to_string())
    }

    fn call(&self, request: Value) -> Value {
        self.try_call(request.clone())
            .unwrap_or_else(|e| panic!("{}: {request}: {e}\nlog:\n{}", self.daemon.name, self.log()))
    }

    fn status(&self) -> Value {
        self.call(json!({"cmd": "status"}))["mirror"].clone()
    }

    /// Waits (20 s at most) until the status satisfies `ok`.
    fn wait_for(&self, ok: impl Fn(&Value) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = self.try_call(json!({"cmd": "status"})) {
                if ok(&reply["mirror"]) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{}: waited 20 s for {what}\nlog:\n{}", self.daemon.name, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_established(&self) {
        self.wait_for(
            |s| s["connection"] == "Connected" && s["replication"] == "Established" && s["quiet"] == true,
            "an established, quiet connection",
        );
    }

    fn write_block(&self, block: u64, fill: u8) {
        let hex: String = std::iter::repeat_n(format!("{fill:02x}"), BLOCK as usize).collect();
        self.call(json!({"cmd": "write", "offset": block * BLOCK, "hex": hex}));
    }

    /// A crash: SIGKILL.
    fn kill(&mut self) {
        self.daemon.kill9();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes `dir/NODE.res` for node `i` (0: alpha at `ips[0]`, 1: beta at `ips[1]`).
fn resource(dir: &Path, port: u16, secret: &str, rate: &str, i: usize, ips: [&str; 2]) -> PathBuf {
    let host = |name: &str, ip: &str| {
        format!(
            "\ton {name} {{\n\t\tdevice /dev/o2fs0;\n\t\tdisk {d}/{name}.img;\n\t\taddress {ip}:{port};\n\
             \t\tmeta-disk {d}/{name}.meta[0];\n\t}}\n",
            d = dir.display()
        )
    };
    let text = format!(
        "resource r0 {{\n\tprotocol C;\n\tsyncer {{ verify-alg sha1; rate {rate}; }}\n\
         \tnet {{ cram-hmac-alg sha1; shared-secret \"{secret}\"; allow-two-primaries; }}\n{}{}}}\n",
        host("alpha", ips[0]),
        host("beta", ips[1])
    );
    let path = dir.join(format!("{}.res", ["alpha", "beta"][i]));
    std::fs::write(&path, text).unwrap();
    path
}

struct Pair {
    // Fields drop in order: the daemons before their namespaces and folder.
    nodes: [Node; 2],
    netns: Option<Netns>,
    dir: tempfile::TempDir,
    port: u16,
    res: [PathBuf; 2],
}

impl Pair {
    /// Two nodes on 127.0.0.1 and 127.0.0.2.
    fn new(secrets: [&str; 2], rate: &str) -> Pair {
        Pair::start(secrets, rate, None)
    }

    fn start(secrets: [&str; 2], rate: &str, netns: Option<Netns>) -> Pair {
        let ips = netns.as_ref().map_or(["127.0.0.1", "127.0.0.2"], |_| [NETNS_IPS[0], NETNS_IPS[1]]);
        Pair::start_edited(secrets, rate, netns, ips, SIZE, |text| text)
    }

    /// Two nodes on `ips` with replicas of `size` bytes, their resource files passed through
    /// `edit` first.
    fn start_edited(
        secrets: [&str; 2],
        rate: &str,
        netns: Option<Netns>,
        ips: [&str; 2],
        size: u64,
        edit: impl Fn(String) -> String,
    ) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let port = if netns.is_some() { 7788 } else { free_port() };
        for name in ["alpha", "beta"] {
            common::sparse_image(dir.path(), &format!("{name}.img"), size);
        }
        let res = [0, 1].map(|i| {
            let path = resource(dir.path(), port, secrets[i], rate, i, ips);
            std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
            path
        });
        let ns = |i: usize| netns.as_ref().map(|n| n.names[i].as_str());
        let nodes = [0, 1].map(|i| Node::start(dir.path(), ["alpha", "beta"][i], &res[i], ns(i)));
        Pair { nodes, netns, dir, port, res }
    }

    fn image(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.img", ["alpha", "beta"][i]))
    }

    fn sha1(&self, i: usize) -> String {
        let mut f = std::fs::File::open(self.image(i)).unwrap();
        let mut h = Sha1::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        let ns = self.netns.as_ref().map(|n| n.names[i].as_str());
        self.nodes[i] = Node::start(self.dir.path(), ["alpha", "beta"][i], &self.res[i], ns);
    }

    fn assert_images_equal(&self) {
        for n in &self.nodes {
            n.wait_established();
        }
        assert_eq!(self.sha1(0), self.sha1(1), "replicas differ");
    }
}

fn init_log() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

#[test]
fn random_writes_from_both_sides_end_in_equal_images() {
    init_log();
    let pair = Pair::new(["Ohg8Eec0ahth"; 2], "100M");
    for n in &pair.nodes {
        n.wait_established();
    }
    let seed = o2fs::testutil::seed_from_env(7);
    std::thread::scope(|s| {
        for (i, node) in pair.nodes.iter().enumerate() {
            s.spawn(move || {
                let mut rng = Rng::new(seed + i as u64);
                // A small block range, so that both sides often write the same block at once.
                for _ in 0..150 {
                    node.write_block(rng.below(64), rng.below(256) as u8);
                }
            });
        }
    });
    pair.assert_images_equal();
    let read = pair.nodes[1].call(json!({"cmd": "read", "offset": 0, "len": 16}));
    assert_eq!(read["hex"].as_str().unwrap().len(), 32, "seed {seed}");
}

#[test]
fn wrong_secret_is_refused_and_logged_on_both_sides() {
    init_log();
    let pair = Pair::new(["right-secret", "wrong-secret"], "10M");
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = |d: &Node| d.log().contains("wrong shared secret");
    while !(refused(&pair.nodes[0]) && refused(&pair.nodes[1])) {
        assert!(
            Instant::now() < deadline,
            "refusal not logged on both sides:\nalpha:\n{}\nbeta:\n{}",
            pair.nodes[0].log(),
            pair.nodes[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in &pair.nodes {
        assert_ne!(n.status()["connection"], "Connected");
    }
    // Writes still work, degraded.
    pair.nodes[0].write_block(3, 0xAA);
}

#[test]
fn resync_after_a_peer_kill_moves_only_the_changed_blocks_at_the_rate() {
    init_log();
    // 512 KiB/s: 128 blocks take about a second.
    let mut pair = Pair::new(["Ohg8Eec0ahth"; 2], "512K");
    for n in &pair.nodes {
        n.wait_established();
    }
    for b in 0..8 {
        pair.nodes[0].write_block(b, 1);
    }
    pair.nodes[1].kill();
    let changed: Vec<u64> = (0..128).map(|k| 100 + k * 7).collect();
    for &b in &changed {
        pair.nodes[0].write_block(b, 2);
    }
    assert_eq!(pair.nodes[0].status()["out_of_sync_bytes"], changed.len() as u64 * BLOCK);
    pair.restart(1);
    pair.assert_images_equal();
    let last = pair.nodes[0].status()["last_resync"].clone();
    assert_eq!(last["blocks"], changed.len() as u64, "{last}");
    let ms = last["ms"].as_u64().unwrap().max(1);
    let speed = changed.len() as u64 * BLOCK * 1000 / ms;
    let rate = 512 * 1024;
    assert!(speed * 4 >= rate * 3 && speed * 4 <= rate * 5, "resync at {speed} B/s, rate {rate} B/s");
}

#[test]
fn verify_finds_a_flipped_byte_and_resync_repairs_it() {
    init_log();
    let pair = Pair::new(["Ohg8Eec0ahth"; 2], "20M");
    for n in &pair.nodes {
        n.wait_established();
    }
    for b in 0..16 {
        pair.nodes[0].write_block(b, 0x11);
    }
    pair.nodes[1].wait_established();
    // Behind the mirror's back.
    let mut f = std::fs::OpenOptions::new().write(true).open(pair.image(1)).unwrap();
    f.seek(SeekFrom::Start(5 * BLOCK + 123)).unwrap();
    f.write_all(&[0xEE]).unwrap();
    drop(f);
    assert_ne!(pair.sha1(0), pair.sha1(1));
    let out = common::run(
        Command::new(common::bin("o2fs")).args(["verify", "--node", "alpha", "--socket"]).arg(pair.nodes[0].socket()),
    );
    assert!(out.status.success(), "{}", common::text(&out));
    pair.nodes[0].wait_for(|s| s["verify"]["finished"] == true, "the verify to finish");
    assert_eq!(pair.nodes[0].status()["verify"]["out_of_sync_blocks"], 1);
    pair.assert_images_equal();
}

#[test]
fn split_brain_is_refused_until_discard_my_data() {
    init_log();
    let pair = Pair::new(["Ohg8Eec0ahth"; 2], "20M");
    for n in &pair.nodes {
        n.wait_established();
    }
    pair.nodes[0].write_block(1, 0x10);
    for n in &pair.nodes {
        n.call(json!({"cmd": "disconnect"}));
    }
    pair.nodes[0].write_block(2, 0xA0);
    pair.nodes[1].write_block(3, 0xB0);
    for n in &pair.nodes {
        n.call(json!({"cmd": "connect"}));
    }
    for n in &pair.nodes {
        n.wait_for(
            |s| s["last_refusal"].as_str().is_some_and(|r| r.contains("split brain")),
            "the split brain refusal",
        );
        assert!(n.log().contains("split brain"), "{}", n.log());
    }
    let out = common::run(
        Command::new(common::bin("o2fs"))
            .args(["discard-my-data", "--node", "beta", "--socket"])
            .arg(pair.nodes[1].socket()),
    );
    assert!(out.status.success(), "{}", common::text(&out));
    pair.nodes[0].call(json!({"cmd": "connect"}));
    pair.assert_images_equal();
    let read = |block: u64| {
        let r = pair.nodes[1].call(json!({"cmd": "read", "offset": block * BLOCK, "len": 1}));
        r["hex"].as_str().unwrap().to_string()
    };
    assert_eq!((read(1), read(2), read(3)), ("10".into(), "a0".into(), "00".into()), "the survivor's data won");
    let status = common::run(
        Command::new(common::bin("o2fs")).args(["status", "--node", "beta", "--socket"]).arg(pair.nodes[1].socket()),
    );
    assert!(common::text(&status).contains("replication:Established"), "{}", common::text(&status));
}

/// Protocol C: once `write` returned, the data is on the peer's image, even when the writer is
/// killed with SIGKILL at once.
#[test]
fn acknowledged_write_survives_sigkill_of_the_writer() {
    init_log();
    let mut pair = Pair::new(["Ohg8Eec0ahth"; 2], "20M");
    for n in &pair.nodes {
        n.wait_established();
    }
    let mut rng = Rng::new(o2fs::testutil::seed_from_env(11));
    let blocks: Vec<(u64, u8)> = (0..20).map(|_| (rng.below(SIZE / BLOCK), 1 + rng.below(255) as u8)).collect();
    for &(b, fill) in &blocks {
        pair.nodes[0].write_block(b, fill);
    }
    pair.nodes[0].kill();
    let mut img = std::fs::File::open(pair.image(1)).unwrap();
    let mut expect = std::collections::HashMap::new();
    for &(b, fill) in &blocks {
        expect.insert(b, fill);
    }
    for (b, fill) in expect {
        let mut buf = vec![0u8; BLOCK as usize];
        img.seek(SeekFrom::Start(b * BLOCK)).unwrap();
        img.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == fill), "block {b} lacks the acknowledged write on the peer");
    }
}

/// Garbage, a truncated handshake and an oversized frame on a node's port are refused and
/// logged; the daemon stays up and its real peer still connects.
#[test]
fn hostile_bytes_on_the_port_are_refused_without_harm() {
    init_log();
    let mut pair = Pair::new(["Ohg8Eec0ahth"; 2], "20M");
    pair.nodes[1].kill();
    let addr = format!("127.0.0.1:{}", pair.port);
    let send = |bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.read_to_end(&mut sink);
    };
    send(b"GET / HTTP/1.0\r\n\r\n");
    send(&[0, 0, 0]);
    send(&0xFFFF_FFF0u32.to_be_bytes());
    let mut rng = Rng::new(o2fs::testutil::seed_from_env(3));
    send(&rng.bytes(5000));
    pair.nodes[0].write_block(9, 0x99);
    assert_eq!(pair.nodes[0].status()["connection"], "Unconnected");
    let log = pair.nodes[0].log();
    assert!(log.contains("peer connection refused"), "{log}");
    pair.restart(1);
    pair.assert_images_equal();
}

const NETNS_IPS: [&str; 2] = ["10.231.7.1", "10.231.7.2"];

/// Two network namespaces joined by a veth pair (10.231.7.1 and .2), deleted when dropped.
struct Netns {
    names: [String; 2],
    veth: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id();
        let n = Netns { names: [format!("o2fs-{id}-a"), format!("o2fs-{id}-b")], veth: format!("o2v{id}") };
        let ip = |args: &[&str]| {
            let out = common::run(Command::new("ip").args(args));
            assert!(out.status.success(), "ip {args:?}: {}", common::text(&out));
        };
        let peer = format!("{}p", n.veth);
        for ns in &n.names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["link", "add", &n.veth, "type", "veth", "peer", "name", &peer]);
        for (i, dev) in [&n.veth, &peer].into_iter().enumerate() {
            ip(&["link", "set", dev, "netns", &n.names[i]]);
            ip(&["-n", &n.names[i], "addr", "add", &format!("{}/24", NETNS_IPS[i]), "dev", dev]);
            ip(&["-n", &n.names[i], "link", "set", dev, "up"]);
        }
        n
    }

    /// Takes the link down (true) or up again, in the first namespace.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        let out = common::run(Command::new("ip").args(["-n", &self.names[0], "link", "set", &self.veth, state]));
        assert!(out.status.success(), "{}", common::text(&out));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The same over a veth pair between two network namespaces: random writes from both sides,
/// then the link goes down while one side writes; once it is back, only the blocks changed
/// meanwhile move.
#[test]
fn network_namespaces_link_down_resyncs_only_what_changed() {
    init_log();
    let pair = Pair::start(["Ohg8Eec0ahth"; 2], "20M", Some(Netns::new()));
    for n in &pair.nodes {
        n.wait_established();
    }
    let seed = o2fs::testutil::seed_from_env(5);
    std::thread::scope(|s| {
        for (i, node) in pair.nodes.iter().enumerate() {
            s.spawn(move || {
                let mut rng = Rng::new(seed + i as u64);
                for _ in 0..60 {
                    node.write_block(rng.below(64), rng.below(256) as u8);
                }
            });
        }
    });
    pair.assert_images_equal();
    let netns = pair.netns.as_ref().unwrap();
    netns.link(false);
    let changed: Vec<u64> = (0..40).map(|k| 300 + 3 * k).collect();
    for &b in &changed {
        pair.nodes[1].write_block(b, 0x77);
    }
    pair.nodes[1].wait_for(|s| s["connection"] != "Connected", "the dead link to be noticed");
    assert_eq!(pair.nodes[1].status()["out_of_sync_bytes"], changed.len() as u64 * BLOCK);
    netns.link(true);
    pair.assert_images_equal();
    assert_eq!(pair.nodes[1].status()["last_resync"]["blocks"], changed.len() as u64, "seed {seed}");
}

/// During a resync the target stays usable: a block it has not received yet is read from the
/// peer.
#[test]
fn sync_target_reads_unsynced_blocks_from_the_peer() {
    init_log();
    // 256 KiB/s: 256 blocks take four seconds; the last block is synced last.
    let mut pair = Pair::new(["Ohg8Eec0ahth"; 2], "256K");
    for n in &pair.nodes {
        n.wait_established();
    }
    pair.nodes[1].kill();
    for b in 0..256 {
        pair.nodes[0].write_block(1000 + b, 0x3C);
    }
    pair.restart(1);
    let beta = &pair.nodes[1];
    beta.wait_for(|s| s["replication"] == "SyncTarget", "the resync to start");
    let read = beta.call(json!({"cmd": "read", "offset": 1255 * BLOCK, "len": BLOCK}));
    let status = beta.status();
    assert_eq!(status["replication"], "SyncTarget", "the resync ended before the read: {status}");
    assert!(read["hex"].as_str().unwrap().chars().collect::<Vec<_>>().chunks(2).all(|c| c == ['3', 'c']));
    // A write on the target during the resync reaches both replicas too.
    beta.write_block(1254, 0x4D);
    pair.assert_images_equal();
    let alpha = pair.nodes[0].call(json!({"cmd": "read", "offset": 1254 * BLOCK, "len": 1}));
    assert_eq!(alpha["hex"], "4d");
}

/// Addresses of the tests of roles, fencing and zero resync (the tests above use 127.0.0.1/.2).
const IPS_34: [&str; 2] = ["127.0.34.1", "127.0.34.2"];

fn o2fs_admin(cmd: &str, node: &Node) -> std::process::Output {
    let name = &node.daemon.name;
    common::run(Command::new(common::bin("o2fs")).args([cmd, "--node", name, "--socket"]).arg(node.socket()))
}

/// `become-primary-on alpha` without allow-two-primaries: alpha is primary from the start,
/// beta secondary and read-only until the administrator moves the role (DRBD's roles).
#[test]
fn become_primary_on_one_node_leaves_the_other_secondary_until_promoted() {
    init_log();
    let edit = |text: String| {
        text.replace(" allow-two-primaries;", "").replace("\tnet {", "\tstartup { become-primary-on alpha; }\n\tnet {")
    };
    let pair = Pair::start_edited(["Ohg8Eec0ahth"; 2], "20M", None, IPS_34, SIZE, edit);
    let [alpha, beta] = &pair.nodes;
    for n in &pair.nodes {
        n.wait_established();
    }
    assert_eq!((alpha.status()["role"].as_str(), beta.status()["role"].as_str()), (Some("Primary"), Some("Secondary")));
    alpha.write_block(1, 0xA1);
    let hex = "bb".repeat(BLOCK as usize);
    let refused = beta.try_call(json!({"cmd": "write", "offset": 2 * BLOCK, "hex": hex})).unwrap_err();
    assert!(refused.contains("this node is secondary"), "{refused}");
    let out = o2fs_admin("primary", beta);
    assert!(!out.status.success() && common::text(&out).contains("the peer is primary"), "{}", common::text(&out));
    assert!(o2fs_admin("secondary", alpha).status.success());
    beta.wait_for(|s| s["peer_role"] == "Secondary", "alpha's demotion");
    let out = o2fs_admin("primary", beta);
    assert!(out.status.success(), "{}", common::text(&out));
    beta.write_block(2, 0xB2);
    let refused = alpha.try_call(json!({"cmd": "write", "offset": 3 * BLOCK, "hex": hex})).unwrap_err();
    assert!(refused.contains("this node is secondary"), "{refused}");
    pair.assert_images_equal();
    let read = alpha.call(json!({"cmd": "read", "offset": 2 * BLOCK, "len": 1}));
    assert_eq!(read["hex"], "b2");
}

/// `disk { fencing resource-and-stonith; }` read by `o2fs mirror up`: a lost peer freezes
/// writes (nobody acknowledges one the peer lacks) until the administrator says the peer is
/// down (`o2fs resume-io`); the write then completes degraded and resyncs later.
#[test]
fn fencing_from_the_resource_file_freezes_until_resume_io() {
    init_log();
    let edit = |text: String| text.replace("\tnet {", "\tdisk { fencing resource-and-stonith; }\n\tnet {");
    let mut pair = Pair::start_edited(["Ohg8Eec0ahth"; 2], "20M", None, IPS_34, SIZE, edit);
    for n in &pair.nodes {
        n.wait_established();
    }
    pair.nodes[0].write_block(1, 0x11);
    pair.nodes[1].kill();
    let alpha = &pair.nodes[0];
    alpha.wait_for(|s| s["io"] == "Frozen", "the freeze");
    std::thread::scope(|sc| {
        let write = sc.spawn(|| alpha.write_block(2, 0x22));
        std::thread::sleep(Duration::from_millis(500));
        assert!(!write.is_finished(), "a write completed while frozen");
        let out = o2fs_admin("resume-io", alpha);
        assert!(out.status.success(), "{}", common::text(&out));
        write.join().unwrap();
    });
    assert_eq!(
        (alpha.status()["io"].as_str(), alpha.status()["out_of_sync_bytes"].as_u64()),
        (Some("Running"), Some(BLOCK))
    );
    pair.restart(1);
    pair.assert_images_equal();
}

/// Under `fencing resource-and-stonith` (nodes on 127.0.42.1/2), an nftables rule of the
/// test's own cuts only the mirror's link (no cluster here: nobody tells the nodes to resume or
/// fence) for about three seconds while both nodes write, some blocks on both: both freeze with
/// writes in flight, reconnect once the rule is gone and send the frozen writes again; every
/// write completes, both go on Running with nothing out of sync, and the replicas are equal.
#[test]
fn frozen_writes_complete_after_an_nftables_cut_of_the_mirror_link() {
    init_log();
    let edit = |text: String| text.replace("\tnet {", "\tdisk { fencing resource-and-stonith; }\n\tnet {");
    let pair = Pair::start_edited(["Ohg8Eec0ahth"; 2], "20M", None, IPS_42, SIZE, edit);
    for n in &pair.nodes {
        n.wait_established();
    }
    for b in 0..8 {
        pair.nodes[b as usize % 2].write_block(b, 0x10 + b as u8);
    }
    let cut = common::nft::Split::new(IPS_42[0], IPS_42[1]);
    let started = Instant::now();
    std::thread::scope(|sc| {
        // Three writers per node; blocks 4..8 are written by both.
        let writers: Vec<_> = (0..6u64)
            .map(|k| {
                let node = &pair.nodes[k as usize % 2];
                sc.spawn(move || {
                    for round in 0..3u64 {
                        let block = if round == 1 { 4 + k % 4 } else { 16 + k * 3 + round };
                        node.write_block(block, (0x40 + k * 16 + round) as u8);
                    }
                })
            })
            .collect();
        for n in &pair.nodes {
            n.wait_for(|s| s["io"] == "Frozen", "the freeze");
        }
        assert!(writers.iter().all(|w| !w.is_finished()), "a write completed while frozen");
        std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
        drop(cut);
        for w in writers {
            w.join().unwrap();
        }
    });
    eprintln!("writes in flight during the cut completed {:?} after it began", started.elapsed());
    for n in &pair.nodes {
        n.wait_established();
        let s = n.status();
        assert_eq!((s["io"].as_str(), s["out_of_sync_bytes"].as_u64()), (Some("Running"), Some(0)), "{s}");
    }
    let resent = |n: &Node| n.log().contains("sent again");
    assert!(resent(&pair.nodes[0]) || resent(&pair.nodes[1]), "no frozen write was sent again");
    pair.assert_images_equal();
}

const IPS_42: [&str; 2] = ["127.0.42.1", "127.0.42.2"];

/// A first full sync of a mostly empty 1 GiB volume: blocks that are zeros on the source move
/// as a count of them, not as data, and the target only clears what is not zero already — far
/// fewer bytes on the wire than the volume, the target's replica stays sparse, and both end
/// equal. Zeros do not count against `rate`: at 8 MiB/s the whole volume would take two
/// minutes, and the wait below gives up after 20 s.
#[test]
fn a_full_sync_of_a_mostly_empty_volume_moves_far_less_than_the_volume() {
    use std::os::unix::fs::MetadataExt;
    init_log();
    const BIG: u64 = 1 << 30;
    let pair = Pair::start_edited(["Ohg8Eec0ahth"; 2], "8M", None, IPS_34, BIG, |text| text);
    let [alpha, beta] = &pair.nodes;
    for n in &pair.nodes {
        n.wait_established();
    }
    let data: Vec<u64> = (0..64).map(|k| k * (BIG / BLOCK / 64) + 3).collect();
    for &b in &data {
        alpha.write_block(b, 0x5A);
    }
    // Behind the mirror's back, where alpha holds zeros: the sync must clear it.
    let mut f = std::fs::OpenOptions::new().write(true).open(pair.image(1)).unwrap();
    f.seek(SeekFrom::Start(100 * BLOCK + 5)).unwrap();
    f.write_all(&[0xEE; 100]).unwrap();
    drop(f);
    let received = || beta.status()["wire"]["received_bytes"].as_u64().unwrap();
    let before = received();
    beta.call(json!({"cmd": "invalidate"}));
    beta.wait_for(|s| s["last_resync"]["blocks"] == BIG / BLOCK, "the full sync");
    pair.assert_images_equal();
    let moved = received() - before;
    let last = beta.status()["last_resync"].clone();
    eprintln!("full sync of {BIG} bytes: {moved} bytes received, {last}");
    assert_eq!(last["zero_blocks"], BIG / BLOCK - data.len() as u64, "{last}");
    assert!(moved < BIG / 64, "the full sync received {moved} bytes for a {BIG}-byte volume");
    let allocated = std::fs::metadata(pair.image(1)).unwrap().blocks() * 512;
    assert!(allocated < 16 << 20, "beta's replica has {allocated} bytes allocated");
}
