//! Mirror benchmark (issue 4's "Speed"): two nodes of a protocol-C mirror in this process, on
//! 127.0.0.1 and 127.0.0.2, against the unmirrored image file on the same machine, in one run.
//!
//! `cargo run --release --example mirror_bench [MiB]` prints:
//! - sequential 1 MiB writes (then one flush): mirrored / unmirrored throughput;
//! - 4 KiB write latency, alone and with a flush, median: mirrored minus unmirrored, in loopback
//!   round trips;
//! - resync of the blocks written while the peer was down: achieved / configured rate.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use o2fs::dev::mirror::config;
use o2fs::dev::mirror::driver::{Mirror, MirrorOptions};
use o2fs::dev::mirror::engine::Fencing;
use o2fs::dev::{BlockDevice, FileDevice};
use o2fs::net::NetConfig;
use serde_json::json;

const RATE_MIB: u64 = 16;

fn start(res: &config::ResourceConfig, node: &str) -> Mirror {
    let opts = MirrorOptions { node: node.into(), net: NetConfig::default(), fencing: Fencing::DontCare };
    Mirror::start(res, opts).expect("starting a mirror node")
}

fn wait_established(m: &Mirror) {
    loop {
        let s = &m.admin(&json!({"cmd": "status"}))["mirror"];
        if s["replication"] == "Established" && s["quiet"] == true {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes per second of 1 MiB writes covering `total` bytes in order, from `streams` threads
/// taking every `streams`-th MiB (as a filesystem's writeback does), then one flush.
fn seq_write(dev: &dyn BlockDevice, total: u64, streams: u64) -> f64 {
    let buf = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..streams {
            let buf = &buf;
            s.spawn(move || {
                for i in (k..total >> 20).step_by(streams as usize) {
                    dev.write_at(buf, i << 20).unwrap();
                }
            });
        }
    });
    dev.flush().unwrap();
    total as f64 / t.elapsed().as_secs_f64()
}

/// Median of a 4 KiB write, with or without a flush after it.
fn latency(dev: &dyn BlockDevice, n: u64, flush: bool) -> Duration {
    let buf = vec![0xA5u8; 4096];
    let mut v: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            dev.write_at(&buf, (i % 1024) * 4096).unwrap();
            if flush {
                dev.flush().unwrap();
            }
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// Median round trip of a 64-byte message over a loopback TCP connection.
fn loopback_rtt() -> Duration {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 64];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b).unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut b = [0u8; 64];
    let mut v: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            c.write_all(&b).unwrap();
            c.read_exact(&mut b).unwrap();
            t.elapsed()
        })
        .collect();
    drop(c);
    echo.join().unwrap();
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(128);
    let total = mib << 20;
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.path().display();
    let text = format!(
        "resource bench {{ protocol C; syncer {{ rate {RATE_MIB}M; }} net {{ cram-hmac-alg sha1; shared-secret \"s\"; \
         allow-two-primaries; }}\n on a {{ device /dev/o2fs0; disk {d}/a.img; address 127.0.0.1:{port}; meta-disk {d}/a.meta[0]; }}\n\
         on b {{ device /dev/o2fs0; disk {d}/b.img; address 127.0.0.2:{port}; meta-disk {d}/b.meta[0]; }} }}\n"
    );
    let res = config::parse(&text, &dir.path().join("bench.res")).unwrap().remove(0);
    for f in ["a.img", "b.img", "plain.img"] {
        std::fs::File::create(dir.path().join(f)).unwrap().set_len(total + (8 << 20)).unwrap();
    }
    let plain: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&dir.path().join("plain.img"), true).unwrap());
    let a = start(&res, "a");
    let b = start(&res, "b");
    wait_established(&a);
    let dev = a.device();

    for streams in [1, 4] {
        let plain_bw = seq_write(&*plain, total, streams);
        let mirror_bw = seq_write(&dev, total, streams);
        println!(
            "sequential 1 MiB writes, {mib} MiB, {streams} stream(s): unmirrored {:.0} MiB/s, mirrored {:.0} MiB/s, \
             ratio {:.2} (goal >= 0.70)",
            plain_bw / 1048576.0,
            mirror_bw / 1048576.0,
            mirror_bw / plain_bw
        );
    }

    let rtt = loopback_rtt();
    for flush in [false, true] {
        let plain_lat = latency(&*plain, 300, flush);
        let mirror_lat = latency(&dev, 300, flush);
        let extra = mirror_lat.saturating_sub(plain_lat);
        println!(
            "4 KiB write{} median: unmirrored {plain_lat:?}, mirrored {mirror_lat:?}; extra {extra:?} = {:.1} \
             loopback round trips of {rtt:?}{}",
            if flush { "+flush" } else { "" },
            extra.as_secs_f64() / rtt.as_secs_f64().max(1e-9),
            if flush { " (goal <= 2)" } else { "" }
        );
    }

    drop(b);
    let blocks = (total / 2) >> 12;
    let buf = vec![0x11u8; 4096];
    for i in 0..blocks {
        dev.write_at(&buf, i * 8192).unwrap();
    }
    let b = start(&res, "b");
    wait_established(&b);
    wait_established(&a);
    let last = &a.admin(&json!({"cmd": "status"}))["mirror"]["last_resync"];
    let (moved, ms) = (last["blocks"].as_u64().unwrap_or(0), last["ms"].as_u64().unwrap_or(1).max(1));
    let speed = moved * 4096 * 1000 / ms;
    println!(
        "resync of {moved} blocks in {ms} ms: {:.1} MiB/s at rate {RATE_MIB}M, ratio {:.2} (goal 0.75..1.25)",
        speed as f64 / 1048576.0,
        speed as f64 / (RATE_MIB << 20) as f64
    );
}
