//! Bad input at the cluster level, against real `o2fs cluster up` daemons: a wrong secret, an
//! unknown node name, connections from strangers, garbage, truncated and oversized frames on the
//! cluster port, and malformed cluster.conf lines. Each is refused (or timed out) with a log
//! line or an error naming what is wrong, and the daemons keep serving.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::Cluster;
use common::{bin, run, text};
use o2fs::net::{self, Identity, NetConfig, NetError};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn wrong_secret_never_joins_and_both_sides_log_it() {
    let mut c = Cluster::configured("127.0.0", 2, false);
    let other = c.dir.path().join("other-secret");
    std::fs::write(&other, "not-the-cluster-secret\n").unwrap();
    c.start(0);
    c.start_with(1, &["--secret-file", &other.to_string_lossy()]);
    let refused = "wrong shared secret";
    c.wait_until(LIMIT, "both sides to log the refusal", || {
        c.node(0).log().contains(refused) && c.node(1).log().contains(refused)
    });
    // n0 is half the cluster with the lowest node: it runs alone. n1 never joins anything.
    c.wait_view(&[0], &[0], LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.members(1).is_empty() && c.members(0).len() == 1, "a node with the wrong secret joined\n{}", c.logs());
}

/// Runs `o2fs cluster up` that must fail at once; its error output.
fn up_must_fail(dir: &Path, conf: &Path, node: &str) -> String {
    let log = dir.join(format!("up-{node}.err"));
    let mut cmd = Command::new(bin("o2fs"));
    cmd.args(["cluster", "up", "--node", node, "-c"]).arg(conf).arg("--socket").arg(dir.join(format!("{node}.sock")));
    common::must_fail(cmd.arg("-f"), &log)
}

#[test]
fn unknown_node_and_malformed_conf_are_refused_with_file_and_line() {
    let c = Cluster::configured("127.0.0", 2, false);
    let err = up_must_fail(c.dir.path(), &c.conf, "nobody");
    let conf = c.conf.display().to_string();
    assert!(err.contains("\"nobody\"") && err.contains(&conf), "the error names the node and the file: {err}");

    let good = std::fs::read_to_string(&c.conf).unwrap();
    let port_line = good.lines().position(|l| l.contains("ip_port")).unwrap() + 1;
    let cases: Vec<(String, usize, &str)> = vec![
        (good.replacen(&format!("ip_port = {}", c.port), "ip_port = seven", 1), port_line, "ip_port"),
        (format!("\tname = early\n{good}"), 1, "stanza header"),
        (good.replacen("node:", "nodes:", 1), 6, "unknown stanza"),
        (good.replacen("\tnumber = 0", "\tnumbre = 0", 1), port_line + 2, "unknown key"),
        (
            good.replacen("\tnumber = 1", "\tnumber 1", 1),
            good.lines().position(|l| l.contains("number = 1")).unwrap() + 1,
            "key = value",
        ),
        (
            good.replacen("\tnumber = 1", "\tnumber = 0", 1),
            good.lines().position(|l| l.contains("number = 1")).unwrap() + 1,
            "already used",
        ),
    ];
    for (i, (text, line, what)) in cases.into_iter().enumerate() {
        let bad = c.dir.path().join(format!("bad{i}.conf"));
        std::fs::write(&bad, text).unwrap();
        let err = up_must_fail(c.dir.path(), &bad, "n0");
        let at = format!("{}:{line}:", bad.display());
        assert!(err.contains(&at) && err.contains(what), "case {i}: expected {at:?} and {what:?} in: {err}");
    }
}

/// Writes `bytes` to node 0's cluster port, optionally closes the write side, and returns once
/// the daemon closed the connection (it must, within the handshake timeout).
fn send_raw(c: &Cluster, bytes: &[u8], close: bool) {
    let mut s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    s.write_all(bytes).unwrap();
    if close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // the daemon's own hello
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the daemon kept a bad connection open: {e}\n{}", c.logs()),
        }
    }
}

#[test]
fn strangers_and_garbage_on_the_cluster_port_are_refused_and_the_daemon_goes_on() {
    let c = Cluster::new(2, false);
    c.wait_view(&[0, 1], &[0, 1], LIMIT);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let node0 = SocketAddr::from(([127, 0, 0, 1], c.port));
    let service = format!("cluster:{}", c.name);
    // With the right secret, but a name not in cluster.conf, or a listed name from another address.
    for (name, from) in [("intruder", "127.0.0.7"), ("n1", "127.0.0.8")] {
        let me = Identity::new(name, service.as_str());
        let cfg = NetConfig::default();
        let r = rt.block_on(net::connect(
            node0,
            Some(from.parse().unwrap()),
            &me,
            Some(b"test-secret"),
            &net::any_peer,
            &cfg,
        ));
        match r {
            Err(e @ NetError::RefusedByPeer { .. }) => assert!(e.to_string().contains("unknown node"), "{e}"),
            Err(e) => panic!("{name} from {from}: expected a refusal, got {e}"),
            Ok(_) => panic!("{name} from {from} was let in\n{}", c.logs()),
        }
        let logged = format!("unknown node \"{name}\" at {from}:");
        c.wait_until(LIMIT, &logged, || c.node(0).log().contains(&logged));
    }
    // Raw bytes: an unknown frame kind, a frame announcing 1 GiB, a hello cut short by a close,
    // and a hello cut short by a peer that then says nothing.
    let mut hello_start = vec![0, 0, 0, 100, 1];
    hello_start.extend_from_slice(&net::PROTOCOL_VERSION.to_be_bytes());
    hello_start.extend_from_slice(b"cluster:");
    let cases: [(&[u8], bool, &str); 4] = [
        (&[0, 0, 0, 9, 99, 1, 2, 3, 4, 5, 6, 7, 8], false, "unknown frame kind 99"),
        (&[0x40, 0, 0, 0, 1, 0, 1, 2, 3], false, "frame of 1073741824 bytes exceeds the limit"),
        (&hello_start, true, "connection closed by the peer while reading the peer's hello"),
        (&hello_start, false, "handshake did not finish within 1000 ms"),
    ];
    for (bytes, close, logged) in cases {
        send_raw(&c, bytes, close);
        c.wait_until(LIMIT, logged, || c.node(0).log().contains(logged));
        assert!(c.members(0).contains(&1), "the daemon still answers and keeps its peer\n{}", c.logs());
    }
    for i in [0, 1] {
        let out = run(&mut c.lock_cmd(i, &["after-garbage"], &["true"]));
        assert!(out.status.success(), "o2fs lock on n{i} after bad input: {}\n{}", text(&out), c.logs());
    }
    assert!(!c.logs().contains("panicked"), "{}", c.logs());
}
