//! Network layer (src/net/) over loopback: handshake outcomes, typed round trips, keepalive and
//! idle timeout, write timeout, and hostile bytes. Only 127.0.0.0/8 addresses; small timeouts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use o2fs::net::{self, any_peer, AcceptFn, Connection, FrameError, Identity, NetConfig, NetError, Refusal};
use o2fs::testutil::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"Ohg8Eec0ahth";
const NODE2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Write { sector: u64, data: Vec<u8> },
    Ack { sector: u64, ok: bool },
    Text(String),
}

fn init_log() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_max_level(tracing::Level::DEBUG).try_init();
}

fn cfg() -> NetConfig {
    NetConfig {
        keepalive_ms: 100,
        idle_timeout_ms: 600,
        reconnect_ms: 100,
        handshake_timeout_ms: 1000,
        write_timeout_ms: 500,
        max_frame: 16 << 20,
        data_integrity: false,
    }
}

/// One end of a handshake.
struct End {
    id: Identity,
    secret: Option<Vec<u8>>,
    accept: Box<AcceptFn>,
    cfg: NetConfig,
}

fn end(node: &str, service: &str) -> End {
    End { id: Identity::new(node, service), secret: Some(SECRET.to_vec()), accept: Box::new(any_peer), cfg: cfg() }
}

/// Listen on 127.0.0.1, connect from 127.0.0.2: (server's result, client's result).
async fn pair(server: End, client: End) -> (Result<Connection, NetError>, Result<Connection, NetError>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let s = tokio::spawn(async move {
        let (stream, _) = l.accept().await.unwrap();
        net::accept(stream, &server.id, server.secret.as_deref(), &*server.accept, &server.cfg).await
    });
    let c = net::connect(addr, Some(NODE2), &client.id, client.secret.as_deref(), &*client.accept, &client.cfg).await;
    (s.await.unwrap(), c)
}

async fn connected(server: End, client: End) -> (Connection, Connection) {
    let (s, c) = pair(server, client).await;
    (s.unwrap(), c.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_both_ways() {
    init_log();
    let (mut a, mut b) = connected(end("alpha", "mirror:mail_data"), end("beta", "mirror:mail_data")).await;
    assert_eq!(a.peer_name(), "beta");
    assert_eq!(b.peer_name(), "alpha");
    assert_eq!(a.peer_addr().ip(), NODE2);
    let w = Msg::Write { sector: 4096, data: vec![7; 4096] };
    b.send(&w).await.unwrap();
    assert_eq!(a.recv::<Msg>().await.unwrap(), Some(w));
    a.send(&Msg::Ack { sector: 4096, ok: true }).await.unwrap();
    assert_eq!(b.recv::<Msg>().await.unwrap(), Some(Msg::Ack { sector: 4096, ok: true }));
    // A clean close is `None`, not an error.
    b.shutdown().await;
    assert_eq!(a.recv::<Msg>().await.unwrap(), None);
    // Dropping a connection closes it: the peer reads a clean end too.
    drop(a);
    assert_eq!(b.recv::<Msg>().await.unwrap(), None);
    assert!(matches!(b.send(&Msg::Text("late".into())).await, Err(NetError::Closed { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_and_a_large_one_with_integrity() {
    init_log();
    let mut s = end("alpha", "mirror:mail_data");
    let mut c = end("beta", "mirror:mail_data");
    s.cfg.data_integrity = true;
    c.cfg.data_integrity = true;
    let (a, b) = connected(s, c).await;
    let (a_tx, mut a_rx) = a.into_split();
    let (b_tx, mut b_rx) = b.into_split();
    const N: u64 = 5000;
    let big = Rng::new(9).bytes(8 << 20);
    let big2 = big.clone();
    let send_b = tokio::spawn(async move {
        for i in 0..N {
            b_tx.send(&Msg::Write { sector: i, data: vec![i as u8; (i % 300) as usize] }).await.unwrap();
        }
        b_tx.send(&Msg::Write { sector: u64::MAX, data: big2 }).await.unwrap();
    });
    let send_a = tokio::spawn(async move {
        for i in 0..N {
            a_tx.send(&Msg::Ack { sector: i, ok: i % 2 == 0 }).await.unwrap();
        }
    });
    for i in 0..N {
        let m = a_rx.recv::<Msg>().await.unwrap().unwrap();
        assert_eq!(m, Msg::Write { sector: i, data: vec![i as u8; (i % 300) as usize] });
    }
    assert_eq!(a_rx.recv::<Msg>().await.unwrap(), Some(Msg::Write { sector: u64::MAX, data: big }));
    for i in 0..N {
        assert_eq!(b_rx.recv::<Msg>().await.unwrap(), Some(Msg::Ack { sector: i, ok: i % 2 == 0 }));
    }
    send_a.await.unwrap();
    send_b.await.unwrap();
}

/// `try_send` from a thread outside the runtime: frames larger than the socket takes at once
/// finish through a task, a busy writer answers `false` with nothing written, and every message
/// arrives whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_from_a_plain_thread_keeps_order() {
    init_log();
    let (a, b) = connected(end("alpha", "mirror:mail_data"), end("beta", "mirror:mail_data")).await;
    let (a_tx, _a_rx) = a.into_split();
    let (_b_tx, mut b_rx) = b.into_split();
    let msg = |i: u64| Msg::Write { sector: i, data: vec![i as u8; if i.is_multiple_of(16) { 4 << 20 } else { 300 }] };
    let sender = std::thread::spawn(move || {
        let mut busy = 0;
        for i in 0..100 {
            while !a_tx.try_send(&msg(i)).unwrap() {
                busy += 1;
                std::thread::yield_now();
            }
        }
        busy
    });
    for i in 0..100 {
        assert_eq!(b_rx.recv::<Msg>().await.unwrap(), Some(msg(i)));
    }
    eprintln!("try_send found the writer busy {} times", sender.join().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_refused_on_both_sides() {
    init_log();
    let mut c = end("beta", "mirror:mail_data");
    c.secret = Some(b"not-the-secret".to_vec());
    let (s, c) = pair(end("alpha", "mirror:mail_data"), c).await;
    for r in [s, c] {
        match r {
            Err(NetError::Refused { reason: Refusal::WrongSecret, .. }) => {}
            Err(e) => panic!("expected a wrong-secret refusal, got {e}"),
            Ok(_) => panic!("a wrong secret was accepted"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mismatch_refused() {
    init_log();
    let (s, c) = pair(end("alpha", "mirror:mail_data"), end("beta", "cluster:mailclu")).await;
    for r in [s, c] {
        let e = r.err().expect("a service mismatch was accepted");
        assert!(matches!(e, NetError::Refused { reason: Refusal::ServiceMismatch { .. }, .. }), "{e}");
        assert!(e.to_string().contains("cluster:mailclu"), "{e}");
    }
}

/// Two builds whose messages of a service differ refuse each other, and both name both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_version_mismatch_refused_naming_both_versions() {
    init_log();
    let mut s = end("alpha", "mirror:mail_data");
    s.id = s.id.with_version(3);
    let mut c = end("beta", "mirror:mail_data");
    c.id = c.id.with_version(2);
    let (s, c) = pair(s, c).await;
    let se = s.err().expect("a different message version was accepted");
    assert!(
        matches!(&se, NetError::Refused { reason: Refusal::ServiceVersionMismatch { ours: 3, theirs: 2, .. }, .. }),
        "{se}"
    );
    let ce = c.err().expect("a different message version was accepted");
    assert!(
        matches!(&ce, NetError::Refused { reason: Refusal::ServiceVersionMismatch { ours: 2, theirs: 3, .. }, .. }),
        "{ce}"
    );
    assert!(ce.to_string().contains("ours 2, the peer's 3"), "{ce}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_node_refused_by_the_accept_predicate() {
    init_log();
    let mut s = end("alpha", "cluster:mailclu");
    s.accept = Box::new(|name: &str, addr: SocketAddr| name == "beta" && addr.ip() == NODE2);
    let (s, c) = pair(s, end("gamma", "cluster:mailclu")).await;
    let se = s.err().expect("server accepted an unknown node");
    assert!(
        matches!(&se, NetError::Refused { reason: Refusal::UnknownNode { name, .. }, .. } if name == "gamma"),
        "{se}"
    );
    match c {
        Err(NetError::RefusedByPeer { reason, .. }) => assert!(reason.contains("unknown node \"gamma\""), "{reason}"),
        Err(e) => panic!("client: expected the server's refusal, got {e}"),
        Ok(_) => panic!("client: connected"),
    }
    // The same name from another address is refused too.
    let mut s = end("alpha", "cluster:mailclu");
    s.accept =
        Box::new(|name: &str, addr: SocketAddr| name == "beta" && addr.ip() == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let (s, _) = pair(s, end("beta", "cluster:mailclu")).await;
    assert!(matches!(s, Err(NetError::Refused { reason: Refusal::UnknownNode { .. }, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_only_when_both_sides_are() {
    init_log();
    let mut c = end("beta", "mirror:r0");
    c.secret = None;
    let (s, c) = pair(end("alpha", "mirror:r0"), c).await;
    assert!(matches!(s, Err(NetError::Refused { reason: Refusal::AuthMismatch(_), .. })));
    assert!(matches!(c, Err(NetError::Refused { reason: Refusal::AuthMismatch(_), .. })));

    let (mut s, mut c) = (end("alpha", "mirror:r0"), end("beta", "mirror:r0"));
    s.secret = None;
    c.secret = None;
    let (mut a, mut b) = connected(s, c).await;
    b.send(&Msg::Text("hello".into())).await.unwrap();
    assert_eq!(a.recv::<Msg>().await.unwrap(), Some(Msg::Text("hello".into())));

    // Data-integrity must match as well.
    let mut c = end("beta", "mirror:r0");
    c.cfg.data_integrity = true;
    let (s, c) = pair(end("alpha", "mirror:r0"), c).await;
    assert!(matches!(s, Err(NetError::Refused { reason: Refusal::IntegrityMismatch { .. }, .. })));
    assert!(c.is_err());
}

/// Serve one accept on 127.0.0.1 and return its listener address and result.
async fn serve_one() -> (SocketAddr, tokio::task::JoinHandle<(Result<Connection, NetError>, Duration)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let (stream, _) = l.accept().await.unwrap();
        let t = Instant::now();
        let e = end("alpha", "mirror:mail_data");
        let r = net::accept(stream, &e.id, e.secret.as_deref(), &any_peer, &e.cfg).await;
        (r, t.elapsed())
    });
    (addr, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_is_refused_cleanly() {
    init_log();
    for seed in 0..16u64 {
        let (addr, h) = serve_one().await;
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let mut junk = Rng::new(seed).bytes(2048);
        if seed % 2 == 1 {
            // A plausible Hello header (length, kind, version) so the body decoder is reached.
            junk[..5].copy_from_slice(&[0, 0, 0, 200, 1]);
            junk[5..7].copy_from_slice(&net::PROTOCOL_VERSION.to_be_bytes());
        }
        let _ = raw.write_all(&junk).await;
        let (r, took) = h.await.unwrap();
        let e = r.err().expect("garbage was accepted");
        assert!(!matches!(e, NetError::Refused { .. }), "seed {seed}: {e}");
        assert!(took < Duration::from_millis(1500), "seed {seed}: took {took:?}");
    }
}

/// The bytes of a real Hello frame, taken from a client talking to a fake server.
async fn real_hello() -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let e = end("beta", "mirror:mail_data");
        net::connect(addr, Some(NODE2), &e.id, e.secret.as_deref(), &any_peer, &e.cfg).await
    });
    let (mut s, _) = l.accept().await.unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).await.unwrap();
    let mut f = hdr.to_vec();
    f.resize(4 + u32::from_be_bytes(hdr) as usize, 0);
    s.read_exact(&mut f[4..]).await.unwrap();
    drop(s);
    assert!(client.await.unwrap().is_err());
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_handshake_errors_without_hanging() {
    init_log();
    let hello = real_hello().await;
    // Half a hello, then close: end of stream mid-frame.
    let (addr, h) = serve_one().await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&hello[..hello.len() / 2]).await.unwrap();
    drop(raw);
    let (r, took) = h.await.unwrap();
    // End of stream mid-frame, or a reset since the server's own hello was left unread.
    assert!(matches!(r, Err(NetError::Eof { .. } | NetError::Io { .. })), "{:?}", r.err());
    assert!(took < Duration::from_millis(900), "{took:?}");
    // Half a hello, kept open: the handshake timeout ends it.
    let (addr, h) = serve_one().await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let (r, took) = h.await.unwrap();
    assert!(matches!(r, Err(NetError::HandshakeTimeout { ms: 1000, .. })), "{:?}", r.err());
    assert!(took < Duration::from_millis(2000), "{took:?}");
    drop(raw);
    // A whole hello but nothing after it: also the timeout.
    let (addr, h) = serve_one().await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&hello).await.unwrap();
    let (r, _) = h.await.unwrap();
    assert!(matches!(r, Err(NetError::HandshakeTimeout { .. })), "{:?}", r.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_refused_before_allocation() {
    init_log();
    // During the handshake: a 4 GiB header alone is refused at once.
    let (addr, h) = serve_one().await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).await.unwrap();
    let (r, took) = h.await.unwrap();
    match r {
        Err(NetError::Frame { source: FrameError::TooLarge { len: 0xFFFF_FFFF, .. }, .. }) => {}
        other => panic!("expected TooLarge, got {:?}", other.err()),
    }
    assert!(took < Duration::from_millis(500), "{took:?}");
    // After it: a receiver with a smaller limit refuses the frame from its header.
    let mut s = end("alpha", "mirror:mail_data");
    s.cfg.max_frame = 64 << 10;
    let (mut a, mut b) = connected(s, end("beta", "mirror:mail_data")).await;
    b.send(&Msg::Write { sector: 1, data: vec![0; 200 << 10] }).await.unwrap();
    match a.recv::<Msg>().await {
        Err(NetError::Frame { source: FrameError::TooLarge { max, .. }, .. }) => assert_eq!(max, 64 << 10),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // And the sender refuses to send what exceeds its own limit.
    let e = a.send(&Msg::Write { sector: 2, data: vec![0; 100 << 10] }).await.unwrap_err();
    assert!(matches!(e, NetError::Frame { source: FrameError::TooLarge { .. }, .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_stops_reading_fails_the_send_within_the_write_timeout() {
    init_log();
    let (mut s, mut c) = (end("alpha", "mirror:mail_data"), end("beta", "mirror:mail_data"));
    for e in [&mut s, &mut c] {
        e.cfg.idle_timeout_ms = 10_000;
    }
    let (_deaf, mut b) = connected(s, c).await; // `_deaf` never calls recv
    let chunk = Msg::Write { sector: 0, data: vec![1; 1 << 20] };
    let mut sent = 0;
    let err = loop {
        let t = Instant::now();
        match b.send(&chunk).await {
            Ok(()) => sent += 1,
            Err(e) => break (e, t.elapsed()),
        }
        assert!(sent < 400, "400 MiB went into a peer that does not read");
    };
    assert!(matches!(err.0, NetError::WriteTimeout { ms: 500, .. }), "{}", err.0);
    assert!(err.1 < Duration::from_millis(1500), "{:?}", err.1);
    // The connection is dead from then on.
    assert!(matches!(b.send(&Msg::Text("x".into())).await, Err(NetError::Closed { .. })));
}

/// A frame-aware loopback proxy: can black-hole all traffic (a network split) or flip a byte
/// in the first large client→server frame.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

async fn proxy(target: SocketAddr, corrupt: bool) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        let s = TcpStream::connect(target).await.unwrap();
        let (cr, cw) = c.into_split();
        let (sr, sw) = s.into_split();
        tokio::spawn(pump(cr, sw, cut2.clone(), corrupt));
        tokio::spawn(pump(sr, cw, cut2, false));
    });
    Proxy { addr, cut }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    mut corrupt: bool,
) {
    loop {
        let mut hdr = [0u8; 4];
        let mut body = Vec::new();
        let ok = r.read_exact(&mut hdr).await.is_ok() && {
            body.resize(u32::from_be_bytes(hdr) as usize, 0);
            r.read_exact(&mut body).await.is_ok()
        };
        if cut.load(Ordering::SeqCst) {
            // Split: bytes vanish and so does a close; `w` stays open.
            while r.read(&mut [0u8; 4096]).await.is_ok_and(|n| n > 0) {}
            std::future::pending::<()>().await;
        }
        if !ok {
            return;
        }
        if corrupt && body.len() > 1000 {
            let mid = body.len() / 2;
            body[mid] ^= 0xFF;
            corrupt = false;
        }
        if w.write_all(&hdr).await.is_err() || w.write_all(&body).await.is_err() {
            return;
        }
    }
}

/// Server on 127.0.0.1, client through a proxy.
async fn via_proxy(s: End, c: End, corrupt: bool) -> (Connection, Connection, Proxy) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let p = proxy(target, corrupt).await;
    let srv = tokio::spawn(async move {
        let (stream, _) = l.accept().await.unwrap();
        net::accept(stream, &s.id, s.secret.as_deref(), &*s.accept, &s.cfg).await
    });
    let b = net::connect(p.addr, Some(NODE2), &c.id, c.secret.as_deref(), &*c.accept, &c.cfg).await.unwrap();
    (srv.await.unwrap().unwrap(), b, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_holds_an_idle_link_and_a_silent_peer_times_out() {
    init_log();
    // Idle but alive: three idle timeouts pass with no messages, the link still works.
    let (mut a, mut b) = connected(end("alpha", "cluster:c"), end("beta", "cluster:c")).await;
    let quiet = tokio::time::timeout(Duration::from_millis(1800), a.recv::<Msg>()).await;
    assert!(quiet.is_err(), "recv returned during a quiet period: {quiet:?}");
    b.send(&Msg::Text("still here".into())).await.unwrap();
    assert_eq!(a.recv::<Msg>().await.unwrap(), Some(Msg::Text("still here".into())));
    a.send(&Msg::Text("me too".into())).await.unwrap();
    assert_eq!(b.recv::<Msg>().await.unwrap(), Some(Msg::Text("me too".into())));

    // A split: the proxy drops everything; both ends see "peer idle".
    let (mut a, mut b, p) = via_proxy(end("alpha", "cluster:c"), end("beta", "cluster:c"), false).await;
    b.send(&Msg::Text("before".into())).await.unwrap();
    assert_eq!(a.recv::<Msg>().await.unwrap(), Some(Msg::Text("before".into())));
    p.cut.store(true, Ordering::SeqCst);
    let t = Instant::now();
    for (name, r) in [("server", a.recv::<Msg>().await), ("client", b.recv::<Msg>().await)] {
        match r {
            Err(e @ NetError::Idle { .. }) => assert!(e.to_string().contains("peer idle for"), "{e}"),
            other => panic!("{name}: expected idle timeout, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    // Sends fail once the connection is dead.
    assert!(a.send(&Msg::Text("x".into())).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_stream_keeps_both_sides_alive() {
    init_log();
    // The sender hears only pongs to the pings it piggybacks on its own sends.
    let (a, b) = connected(end("alpha", "mirror:r0"), end("beta", "mirror:r0")).await;
    let (a_tx, mut a_rx) = a.into_split();
    let (b_tx, mut b_rx) = b.into_split();
    let sender = tokio::spawn(async move {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_millis(1800) {
            a_tx.send(&Msg::Write { sector: n, data: vec![3; 64 << 10] }).await.unwrap();
            n += 1;
        }
        a_tx.send(&Msg::Text("done".into())).await.unwrap();
        n
    });
    let mut got = 0u64;
    loop {
        match b_rx.recv::<Msg>().await.unwrap() {
            Some(Msg::Write { sector, .. }) => {
                assert_eq!(sector, got);
                got += 1;
            }
            Some(Msg::Text(t)) if t == "done" => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sender.await.unwrap(), got);
    b_tx.send(&Msg::Text("ack".into())).await.unwrap();
    assert_eq!(a_rx.recv::<Msg>().await.unwrap(), Some(Msg::Text("ack".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_integrity_detects_a_corrupted_byte() {
    init_log();
    let msg = Msg::Write { sector: 8, data: vec![0; 4000] };
    let (mut s, mut c) = (end("alpha", "mirror:mail_data"), end("beta", "mirror:mail_data"));
    s.cfg.data_integrity = true;
    c.cfg.data_integrity = true;
    let (mut a, mut b, _p) = via_proxy(s, c, true).await;
    b.send(&msg).await.unwrap();
    match a.recv::<Msg>().await {
        Err(NetError::Frame { source: FrameError::DigestMismatch, .. }) => {}
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    // Without the digest the same corruption goes through unnoticed.
    let (mut a, mut b, _p) = via_proxy(end("alpha", "mirror:mail_data"), end("beta", "mirror:mail_data"), true).await;
    b.send(&msg).await.unwrap();
    let got = a.recv::<Msg>().await.unwrap().unwrap();
    assert_ne!(got, msg);
}
