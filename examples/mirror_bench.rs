//! Mirror benchmark (issue 4's "Speed"): two nodes of a protocol-C mirror in this process, on
//! 127.0.0.1 and 127.0.0.2, against the unmirrored image file on the same machine, in one run.
//!
//! `cargo run --release --example mirror_bench [MiB]` prints:
//! - sequential 1 MiB writes (then one flush), best of 3: mirrored / unmirrored throughput, and
//!   mirrored / two unmirrored images written at once — both replicas share this machine's disk
//!   and cores, so that is the most a mirror in one machine can reach; and how each best run's
//!   time splits between the writes and the flush;
//! - 4 KiB write latency, alone and with a flush, median: mirrored minus unmirrored, in loopback
//!   round trips; the three are measured in turn, request by request, so that the load of the
//!   machine weighs on them alike; and, as a figure the machine's load hardly moves, how many
//!   times a thread of this process went to sleep waiting (voluntary context switches), per
//!   request and per loopback round trip;
//! - 4 KiB write+flush from both nodes at once, each to its own blocks, median: a node's flush
//!   has its peer fdatasync for it while the peer serves its own writes;
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

/// Seconds spent writing, then flushing.
#[derive(Clone, Copy)]
struct Timed {
    writes: f64,
    flush: f64,
}

impl Timed {
    const NONE: Timed = Timed { writes: f64::MAX, flush: 0.0 };

    fn secs(self) -> f64 {
        self.writes + self.flush
    }

    /// The faster of the two.
    fn best(self, other: Timed) -> Timed {
        if other.secs() < self.secs() {
            other
        } else {
            self
        }
    }

    fn ms(self) -> String {
        format!("writes {:.0} ms + flush {:.0} ms", self.writes * 1e3, self.flush * 1e3)
    }
}

/// Writes `total` bytes to each of `devs` at once in 1 MiB writes, in order, from `streams`
/// threads per device taking every `streams`-th MiB (as a filesystem's writeback does), then
/// flushes each device once.
fn seq_write(devs: &[&dyn BlockDevice], total: u64, streams: u64) -> Timed {
    let buf = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    std::thread::scope(|s| {
        for &dev in devs {
            for k in 0..streams {
                let buf = &buf;
                s.spawn(move || {
                    for i in (k..total >> 20).step_by(streams as usize) {
                        dev.write_at(buf, i << 20).unwrap();
                    }
                });
            }
        }
    });
    let writes = t.elapsed().as_secs_f64();
    std::thread::scope(|s| {
        for &dev in devs {
            s.spawn(move || dev.flush().unwrap());
        }
    });
    Timed { writes, flush: t.elapsed().as_secs_f64() - writes }
}

/// One 4 KiB write to block `i` of the first 1024, with or without a flush after it.
fn write_4k(dev: &dyn BlockDevice, i: u64, flush: bool) -> Duration {
    write_4k_at(dev, i % 1024, flush)
}

fn write_4k_at(dev: &dyn BlockDevice, block: u64, flush: bool) -> Duration {
    let buf = [0xA5u8; 4096];
    let t = Instant::now();
    dev.write_at(&buf, block * 4096).unwrap();
    if flush {
        dev.flush().unwrap();
    }
    t.elapsed()
}

/// A loopback TCP connection to an echo thread, timing the round trip of a 64-byte message.
struct Echo {
    conn: std::net::TcpStream,
    thread: std::thread::JoinHandle<()>,
}

impl Echo {
    fn new() -> Echo {
        use std::io::{Read, Write};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 64];
            while s.read_exact(&mut b).is_ok() {
                s.write_all(&b).unwrap();
            }
        });
        let conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        Echo { conn, thread }
    }

    fn round_trip(&mut self) -> Duration {
        use std::io::{Read, Write};
        let mut b = [0u8; 64];
        let t = Instant::now();
        self.conn.write_all(&b).unwrap();
        self.conn.read_exact(&mut b).unwrap();
        t.elapsed()
    }

    fn close(self) {
        drop(self.conn);
        self.thread.join().unwrap();
    }
}

/// Voluntary context switches of all of this process's threads so far.
fn sleeps() -> i64 {
    // SAFETY: getrusage only fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_nvcsw
}

/// Voluntary context switches per call of `f`, over `n` calls.
fn sleeps_per(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let before = sleeps();
    for i in 0..n {
        f(i);
    }
    (sleeps() - before) as f64 / n as f64
}

fn median(mut v: Vec<Duration>) -> Duration {
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
    for f in ["a.img", "b.img", "plain.img", "plain2.img"] {
        std::fs::File::create(dir.path().join(f)).unwrap().set_len(total + (8 << 20)).unwrap();
    }
    let open = |f: &str| -> Arc<dyn BlockDevice> { Arc::new(FileDevice::open(&dir.path().join(f), true).unwrap()) };
    let (plain, plain2) = (open("plain.img"), open("plain2.img"));
    let a = start(&res, "a");
    let b = start(&res, "b");
    wait_established(&a);
    let dev = a.device();

    let mib_s = |secs: f64| mib as f64 / secs;
    for streams in [1, 4] {
        let (mut plain_t, mut two_t, mut mirror_t) = (Timed::NONE, Timed::NONE, Timed::NONE);
        for _ in 0..3 {
            plain_t = plain_t.best(seq_write(&[&*plain], total, streams));
            two_t = two_t.best(seq_write(&[&*plain, &*plain2], total, streams));
            mirror_t = mirror_t.best(seq_write(&[&dev], total, streams));
        }
        let (plain_s, two_s, mirror_s) = (plain_t.secs(), two_t.secs(), mirror_t.secs());
        println!(
            "sequential 1 MiB writes, {mib} MiB, {streams} stream(s): unmirrored {:.0} MiB/s, mirrored {:.0} MiB/s, \
             ratio {:.2} (goal >= 0.70); two unmirrored images at once {:.0} MiB/s each, mirrored / that {:.2}; \
             unmirrored {}, two at once {}, mirrored {}",
            mib_s(plain_s),
            mib_s(mirror_s),
            plain_s / mirror_s,
            mib_s(two_s),
            two_s / mirror_s,
            plain_t.ms(),
            two_t.ms(),
            mirror_t.ms()
        );
    }

    let mut echo = Echo::new();
    let mut alone = Duration::ZERO;
    for flush in [false, true] {
        let (mut plain_v, mut mirror_v, mut rtt_v) = (vec![], vec![], vec![]);
        for i in 0..1000 {
            plain_v.push(write_4k(&*plain, i, flush));
            mirror_v.push(write_4k(&dev, i, flush));
            rtt_v.push(echo.round_trip());
        }
        let (plain_lat, mirror_lat, rtt) = (median(plain_v), median(mirror_v), median(rtt_v));
        let extra = mirror_lat.saturating_sub(plain_lat);
        alone = mirror_lat;
        let mirror_sleeps = sleeps_per(300, |i| {
            write_4k(&dev, i, flush);
        });
        let rtt_sleeps = sleeps_per(300, |_| {
            echo.round_trip();
        });
        println!(
            "4 KiB write{} median: unmirrored {plain_lat:?}, mirrored {mirror_lat:?}; extra {extra:?} = {:.1} \
             loopback round trips of {rtt:?}{}; threads sleeping per mirrored request {mirror_sleeps:.1}, per round \
             trip {rtt_sleeps:.1}",
            if flush { "+flush" } else { "" },
            extra.as_secs_f64() / rtt.as_secs_f64().max(1e-9),
            if flush { " (goal <= 2)" } else { "" }
        );
    }
    echo.close();
    // Both nodes write+flush at once, each to blocks of its own (two mounted nodes): each
    // flush has the other node fdatasync for it while that node serves its own writes.
    let dev_b = b.device();
    let both = std::thread::scope(|s| {
        let on_b = s.spawn(|| (0..1000).map(|i| write_4k_at(&dev_b, 1024 + i % 1024, true)).collect::<Vec<_>>());
        let mut v: Vec<Duration> = (0..1000).map(|i| write_4k(&dev, i, true)).collect();
        v.extend(on_b.join().unwrap());
        v
    });
    println!("4 KiB write+flush from both nodes at once, median: {:?} (one node alone: {alone:?})", median(both));

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
