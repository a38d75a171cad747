//! Network layer, connections: typed messages over an authenticated TCP stream.
//!
//! Design: after the handshake the stream is split.
//! - The write half sits behind an async mutex shared by every [`ConnSender`] (cloneable) and
//!   the connection task. `send` encodes a frame and writes it; a write that makes no progress
//!   for `write_timeout_ms` fails, and the connection is then closed for good (a partial frame
//!   may be on the wire).
//! - One background task owns the read half. It parses frames, hands data frames to the
//!   [`ConnReceiver`] through a channel, answers pings with pongs, sends a ping after
//!   `keepalive_ms` without receiving anything, and fails the connection with "peer idle for
//!   N ms" after `idle_timeout_ms` of silence. Because it runs whether or not anyone calls
//!   `recv`, an idle-but-alive connection stays open indefinitely.
//! - Received data waiting for `recv` is bounded by a byte budget: when it is spent the task
//!   stops reading and TCP pushes back on the peer (whose writes then time out if we never read).
//!
//! The task never waits for the write lock (so it keeps reading while a send is stuck): a ping
//! or pong is flagged as wanted and written by whoever holds the writer — the task itself if the
//! lock is free, else the `send` in progress right after its frame. So a one-way stream of
//! sends still carries this side's pings, and the silent side's pongs keep it alive.
//!
//! Dropping the receiving half (or the whole connection) ends the task, which closes the
//! socket; the peer then reads a clean end of stream.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::auth::{self, AcceptFn, Identity};
use super::frame::{self, Kind};
use super::stream::{write_all_timed, FrameReader, OwnedFrame};
use super::{NetConfig, NetError};

/// Bytes of received, not yet `recv`ed data a connection may hold (at least one frame).
const INBOX_BYTES: usize = 16 << 20;
/// Budget charged per message on top of its size (bookkeeping).
const MSG_OVERHEAD: usize = 64;

/// A connection: both halves together. Use [`Connection::into_split`] to send and receive
/// from different tasks.
pub struct Connection {
    tx: ConnSender,
    rx: ConnReceiver,
}

/// The sending half; clones share one socket.
#[derive(Clone)]
pub struct ConnSender {
    shared: Arc<Shared>,
}

/// The receiving half. Dropping it stops the connection task and so closes the connection.
pub struct ConnReceiver {
    shared: Arc<Shared>,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    failed: Option<String>,
}

/// Bytes a connection moved since its handshake, framing included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

impl std::ops::Add for Traffic {
    type Output = Traffic;
    fn add(self, o: Traffic) -> Traffic {
        Traffic { sent_bytes: self.sent_bytes + o.sent_bytes, received_bytes: self.received_bytes + o.received_bytes }
    }
}

struct Shared {
    peer: SocketAddr,
    peer_name: String,
    cfg: NetConfig,
    writer: Arc<Mutex<WriterState>>,
    /// Runs what [`ConnSender::try_send`] could not write at once.
    runtime: tokio::runtime::Handle,
    /// Wakes the task when a send failed and closed the writer.
    closed: Notify,
    /// Bytes of received data waiting for `recv`; closed when the receiver is dropped.
    budget: Arc<Semaphore>,
    want_ping: AtomicBool,
    want_pong: AtomicBool,
    ping: Vec<u8>,
    pong: Vec<u8>,
    sent: AtomicU64,
    received: AtomicU64,
}

struct WriterState {
    half: Option<OwnedWriteHalf>,
    why_closed: String,
}

enum Inbound {
    Msg(OwnedFrame, OwnedSemaphorePermit),
    Failed(NetError),
}

impl Drop for ConnReceiver {
    fn drop(&mut self) {
        // Wakes the task if it waits for budget; it then sees the channel closed and exits.
        self.shared.budget.close();
    }
}

/// Connect to `addr` (from `bind`, if given, e.g. 127.0.0.2 in tests) and run the handshake.
/// `accept` judges the name the peer claims.
pub async fn connect(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    me: &Identity,
    secret: Option<&[u8]>,
    accept: &AcceptFn,
    cfg: &NetConfig,
) -> Result<Connection, NetError> {
    cfg.validate()?;
    let err = |source| NetError::Connect { peer: addr, source };
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0)).map_err(err)?;
    }
    let stream = match tokio::time::timeout(Duration::from_millis(cfg.handshake_timeout_ms), sock.connect(addr)).await {
        Ok(r) => r.map_err(err)?,
        Err(_) => return Err(NetError::HandshakeTimeout { peer: addr, ms: cfg.handshake_timeout_ms }),
    };
    establish(stream, addr, me, secret, accept, cfg).await
}

/// Run the handshake on a stream a listener accepted.
pub async fn accept(
    stream: TcpStream,
    me: &Identity,
    secret: Option<&[u8]>,
    accept: &AcceptFn,
    cfg: &NetConfig,
) -> Result<Connection, NetError> {
    cfg.validate()?;
    let peer =
        stream.peer_addr().map_err(|source| NetError::Io { peer: unspecified(), during: "accepting", source })?;
    establish(stream, peer, me, secret, accept, cfg).await
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

async fn establish(
    mut stream: TcpStream,
    peer: SocketAddr,
    me: &Identity,
    secret: Option<&[u8]>,
    accept: &AcceptFn,
    cfg: &NetConfig,
) -> Result<Connection, NetError> {
    let _ = stream.set_nodelay(true);
    let mut reader = FrameReader::default();
    let done = match auth::handshake(&mut stream, &mut reader, peer, me, secret, accept, cfg).await {
        Ok(d) => d,
        Err(e) => {
            // Refusals were logged where they were decided or read.
            if !matches!(e, NetError::Refused { .. } | NetError::RefusedByPeer { .. }) {
                warn!(%peer, error = %e, "network handshake failed");
            }
            return Err(e);
        }
    };
    let control = |kind| {
        frame::encode(kind, &[], cfg.data_integrity, cfg.max_frame).map_err(|source| NetError::Frame { peer, source })
    };
    let (ping, pong) = (control(Kind::Ping)?, control(Kind::Pong)?);
    let (rd, wr) = stream.into_split();
    let shared = Arc::new(Shared {
        peer,
        peer_name: done.peer_name,
        cfg: *cfg,
        writer: Arc::new(Mutex::new(WriterState { half: Some(wr), why_closed: String::new() })),
        runtime: tokio::runtime::Handle::current(),
        closed: Notify::new(),
        budget: Arc::new(Semaphore::new(INBOX_BYTES)),
        want_ping: AtomicBool::new(false),
        want_pong: AtomicBool::new(false),
        ping,
        pong,
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let (tx, inbox) = mpsc::unbounded_channel();
    tokio::spawn(run_task(rd, reader, shared.clone(), tx));
    Ok(Connection { tx: ConnSender { shared: shared.clone() }, rx: ConnReceiver { shared, inbox, failed: None } })
}

impl Connection {
    /// Send one message (see [`ConnSender::send`]).
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), NetError> {
        self.tx.send(msg).await
    }

    /// Receive one message (see [`ConnReceiver::recv`]).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NetError> {
        self.rx.recv().await
    }

    /// Close the sending direction cleanly; the peer's `recv` then returns `None`.
    pub async fn shutdown(&self) {
        self.tx.shutdown().await
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.tx.shared.peer
    }

    /// The node name the peer proved (or, on an insecure link, claimed).
    pub fn peer_name(&self) -> &str {
        &self.tx.shared.peer_name
    }

    pub fn into_split(self) -> (ConnSender, ConnReceiver) {
        (self.tx, self.rx)
    }
}

impl ConnSender {
    /// Encode `msg` as one frame and write it. Fails if the frame exceeds `max_frame`, if the
    /// write makes no progress for `write_timeout_ms`, or if the connection is closed.
    pub async fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), NetError> {
        let s = &self.shared;
        let f = frame::encode_msg(Kind::Data, msg, s.cfg.data_integrity, s.cfg.max_frame)
            .map_err(|source| NetError::Frame { peer: s.peer, source })?;
        let mut w = s.writer.lock().await;
        s.write(&mut w, &f).await
    }

    /// Send `msg` from a thread that cannot await, without waiting: `Ok(true)` once the frame
    /// is on its way — written whole, or its tail left to a task that keeps the writer until it
    /// is out, with `send`'s failure rules — `Ok(false)` with nothing written while another send
    /// holds the writer. Saves a thread wake-up over handing the message to a sending task.
    pub fn try_send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<bool, NetError> {
        let s = &self.shared;
        let Ok(mut w) = s.writer.clone().try_lock_owned() else { return Ok(false) };
        let f = frame::encode_msg(Kind::Data, msg, s.cfg.data_integrity, s.cfg.max_frame)
            .map_err(|source| NetError::Frame { peer: s.peer, source })?;
        let mut at = 0;
        // An error is left to the task too: `write` closes the connection the usual way.
        while let Some(Ok(n @ 1..)) = w.half.as_ref().map(|h| h.try_write(&f[at..])) {
            at += n;
            s.sent.fetch_add(n as u64, Ordering::Relaxed);
            if at == f.len() {
                break;
            }
        }
        let wants_control = s.want_pong.load(Ordering::Acquire) || s.want_ping.load(Ordering::Acquire);
        if at < f.len() || wants_control {
            let shared = s.clone();
            s.runtime.spawn(async move {
                let _ = shared.write(&mut w, &f[at..]).await;
            });
        }
        Ok(true)
    }

    /// Close the sending direction cleanly.
    pub async fn shutdown(&self) {
        let mut w = self.shared.writer.lock().await;
        if let Some(mut half) = w.half.take() {
            let _ = half.shutdown().await;
            w.why_closed = "shut down by this side".into();
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// What the connection moved so far, both ways.
    pub fn traffic(&self) -> Traffic {
        let s = &self.shared;
        Traffic { sent_bytes: s.sent.load(Ordering::Relaxed), received_bytes: s.received.load(Ordering::Relaxed) }
    }
}

impl ConnReceiver {
    /// The next message; `None` once the peer closed cleanly. Errors: idle peer, bad frame,
    /// broken socket (the connection is then dead), or a message that is not a `T` (the
    /// connection stays usable). Cancel-safe.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NetError> {
        let peer = self.shared.peer;
        if let Some(reason) = &self.failed {
            return Err(NetError::Closed { peer, reason: reason.clone() });
        }
        match self.inbox.recv().await {
            None => Ok(None),
            Some(Inbound::Msg(f, _permit)) => {
                frame::decode_msg(f.body()).map(Some).map_err(|source| NetError::Frame { peer, source })
            }
            Some(Inbound::Failed(e)) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }
}

impl Shared {
    /// Write a frame and then any wanted pong and ping, under the held lock.
    async fn write(&self, w: &mut WriterState, f: &[u8]) -> Result<(), NetError> {
        self.write_raw(w, f).await?;
        self.write_controls(w).await
    }

    async fn write_controls(&self, w: &mut WriterState) -> Result<(), NetError> {
        if self.want_pong.swap(false, Ordering::AcqRel) {
            self.write_raw(w, &self.pong).await?;
        }
        if self.want_ping.swap(false, Ordering::AcqRel) {
            self.write_raw(w, &self.ping).await?;
        }
        Ok(())
    }

    /// Write one whole frame; any failure closes the writer for good.
    async fn write_raw(&self, w: &mut WriterState, f: &[u8]) -> Result<(), NetError> {
        let Some(half) = w.half.as_mut() else {
            return Err(NetError::Closed { peer: self.peer, reason: w.why_closed.clone() });
        };
        let r = write_all_timed(half, f, self.cfg.write_timeout_ms, self.peer).await;
        if r.is_ok() {
            self.sent.fetch_add(f.len() as u64, Ordering::Relaxed);
        }
        if let Err(e) = &r {
            warn!(peer = %self.peer, error = %e, "network send failed; closing the connection");
            w.half = None;
            w.why_closed = e.to_string();
            self.closed.notify_one();
        }
        r
    }

    /// Want a ping or pong sent: now if the writer is free, else by the send holding it.
    async fn control(&self, kind: Kind) -> Result<(), NetError> {
        let flag = if kind == Kind::Ping { &self.want_ping } else { &self.want_pong };
        flag.store(true, Ordering::Release);
        let Ok(mut w) = self.writer.try_lock() else { return Ok(()) };
        if w.half.is_none() {
            return Ok(()); // shut down by this side: keep reading until the peer closes
        }
        self.write_controls(&mut w).await
    }

    async fn close(&self, why: &str) {
        let mut w = self.writer.lock().await;
        if w.half.take().is_some() {
            w.why_closed = why.to_string();
        }
    }
}

const GONE: &str = "the receiving half was dropped";

/// The connection task: read, deliver, keep alive; on exit close the writer and report.
async fn run_task(mut rd: OwnedReadHalf, reader: FrameReader, shared: Arc<Shared>, tx: mpsc::UnboundedSender<Inbound>) {
    match read_loop(&mut rd, reader, &shared, &tx).await {
        Ok(why) => {
            debug!(peer = %shared.peer, why, "network connection ended");
            shared.close(why).await;
        }
        Err(e) => {
            warn!(peer = %shared.peer, error = %e, "network connection failed");
            shared.close(&e.to_string()).await;
            let _ = tx.send(Inbound::Failed(e));
        }
    }
}

async fn read_loop(
    rd: &mut OwnedReadHalf,
    mut reader: FrameReader,
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Inbound>,
) -> Result<&'static str, NetError> {
    let (peer, cfg) = (shared.peer, shared.cfg);
    let keepalive = Duration::from_millis(cfg.keepalive_ms);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut last_rx = Instant::now();
    let mut last_ping = last_rx;
    loop {
        // Deliver what is buffered (check-then-parse), then wait for more.
        while let Some(f) =
            reader.take(cfg.max_frame, cfg.data_integrity).map_err(|source| NetError::Frame { peer, source })?
        {
            match f.kind {
                Kind::Data => {
                    let cost = (f.body().len() + MSG_OVERHEAD).min(INBOX_BYTES) as u32;
                    let Ok(permit) = shared.budget.clone().acquire_many_owned(cost).await else { return Ok(GONE) };
                    if tx.send(Inbound::Msg(f, permit)).is_err() {
                        return Ok(GONE);
                    }
                }
                Kind::Ping => shared.control(Kind::Pong).await?,
                Kind::Pong => {}
                k => {
                    return Err(NetError::Protocol {
                        peer,
                        detail: format!("unexpected {k:?} frame after the handshake"),
                    })
                }
            }
        }
        let ping_at = last_rx.max(last_ping) + keepalive;
        let idle_at = last_rx + idle;
        tokio::select! {
            n = reader.fill(rd) => match n {
                Ok(0) if reader.has_partial() => return Err(NetError::Eof { peer, during: "reading a frame" }),
                Ok(0) => return Ok("the peer closed the connection"),
                Ok(n) => {
                    shared.received.fetch_add(n as u64, Ordering::Relaxed);
                    last_rx = Instant::now();
                }
                Err(source) => return Err(NetError::Io { peer, during: "reading", source }),
            },
            _ = tokio::time::sleep_until(ping_at.min(idle_at)) => {
                let now = Instant::now();
                if now >= idle_at {
                    let ms = now.duration_since(last_rx).as_millis() as u64;
                    return Err(NetError::Idle { peer, ms, timeout_ms: cfg.idle_timeout_ms });
                }
                shared.control(Kind::Ping).await?;
                last_ping = now;
            }
            _ = tx.closed() => return Ok(GONE),
            _ = shared.closed.notified() => {
                let reason = shared.writer.lock().await.why_closed.clone();
                return Err(NetError::Closed { peer, reason });
            }
        }
    }
}
