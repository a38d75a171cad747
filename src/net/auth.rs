//! Network layer, handshake: who is on the other end, and do they know the secret.
//!
//! Symmetric; both sides run the same steps, each bounded by the handshake timeout:
//! 1. send Hello: protocol version (be16, checked before the rest is decoded), service
//!    ("mirror:mail_data", "cluster:mailclu") and the version of its messages, node name, 20
//!    random nonce bytes, whether a secret is configured, whether data-integrity digests are on.
//! 2. read the peer's Hello and check, in order: version, service, the service's version (two
//!    builds whose messages differ refuse each other, naming both versions), both secured or not,
//!    same data-integrity, a name other than ours and a nonce other than ours, then the caller's
//!    `accept(name, addr)`.
//! 3. with a secret, send Proof = HMAC-SHA1(secret, their_nonce || my_nonce || service ||
//!    my_name) (strings length-prefixed) and verify the peer's, which covers our nonce, so
//!    replaying an old proof fails and a proof cannot be reflected back to its sender.
//! 4. send Accept and wait for the peer's.
//!
//! A side that refuses sends Refusal { reason }, logs it, shuts its write side and drains until
//! the peer closes (so the refusal is not lost to a reset); the peer logs the reason it reads.

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::frame::{self, Kind};
use super::stream::{write_all_timed, FrameReader, OwnedFrame};
use super::{NetConfig, NetError};

/// Version of this handshake and of the frames after it (2: the Hello carries the service's
/// version).
pub const PROTOCOL_VERSION: u16 = 2;
/// Handshake frames are small; anything larger is garbage.
const HANDSHAKE_MAX_FRAME: u32 = 4096;
/// Longest node or service name.
const NAME_MAX: usize = 255;
/// Longest refusal reason kept from a peer.
const REASON_MAX: usize = 512;
/// How long a refusing side waits for the peer to read its refusal and close.
const LINGER: Duration = Duration::from_millis(500);

/// Who this side is: its node name, the service it offers or wants, and the version of that
/// service's messages (both sides must run the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node: String,
    pub service: String,
    pub version: u16,
}

impl Identity {
    /// Version 0 of the service's messages (see [`Identity::with_version`]).
    pub fn new(node: impl Into<String>, service: impl Into<String>) -> Identity {
        Identity { node: node.into(), service: service.into(), version: 0 }
    }

    /// The same, speaking version `version` of the service's messages.
    pub fn with_version(self, version: u16) -> Identity {
        Identity { version, ..self }
    }
}

/// Decides whether a peer claiming `name`, connected from or at `addr`, may talk to us.
pub type AcceptFn = dyn Fn(&str, SocketAddr) -> bool + Send + Sync;

/// An `accept` that lets every authenticated peer in.
pub fn any_peer(_name: &str, _addr: SocketAddr) -> bool {
    true
}

/// Why this side refused a peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("wrong shared secret (the peer's HMAC-SHA1 proof does not match; set the same secret on both nodes)")]
    WrongSecret,
    #[error("unknown node {name:?} at {addr} (not in this node's configuration)")]
    UnknownNode { name: String, addr: SocketAddr },
    #[error("service mismatch: this side is {ours:?}, the peer is {theirs:?}")]
    ServiceMismatch { ours: String, theirs: String },
    #[error(
        "{service:?} message version mismatch: ours {ours}, the peer's {theirs} (run the same o2fs release on both nodes)"
    )]
    ServiceVersionMismatch { service: String, ours: u16, theirs: u16 },
    #[error("protocol version mismatch: ours {ours}, the peer's {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("authentication mismatch: {0} (configure a secret on both sides, or on neither)")]
    AuthMismatch(&'static str),
    #[error("data-integrity mismatch: ours {ours}, the peer's {theirs} (set data-integrity-alg alike)")]
    IntegrityMismatch { ours: bool, theirs: bool },
    #[error("the peer claims our own node name {0:?} or echoes our nonce")]
    Reflected(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct HelloBody {
    service: String,
    service_version: u16,
    node: String,
    nonce: [u8; 20],
    secured: bool,
    data_integrity: bool,
}

/// The peer's name, once the handshake succeeded.
pub(crate) struct Handshaken {
    pub peer_name: String,
}

/// Everything a handshake step needs.
struct Side<'a> {
    stream: &'a mut TcpStream,
    reader: &'a mut FrameReader,
    peer: SocketAddr,
    cfg: &'a NetConfig,
}

impl Side<'_> {
    async fn send(&mut self, kind: Kind, body: &[u8]) -> Result<(), NetError> {
        let f = frame::encode(kind, body, false, HANDSHAKE_MAX_FRAME)
            .map_err(|source| NetError::Frame { peer: self.peer, source })?;
        write_all_timed(self.stream, &f, self.cfg.write_timeout_ms, self.peer).await
    }

    /// The next handshake frame; a Refusal becomes `RefusedByPeer`.
    async fn read(&mut self, during: &'static str) -> Result<OwnedFrame, NetError> {
        let peer = self.peer;
        let f = self
            .reader
            .read_frame(self.stream, HANDSHAKE_MAX_FRAME, false, peer, during)
            .await?
            .ok_or(NetError::Eof { peer, during })?;
        if f.kind == Kind::Refusal {
            let mut reason = frame::decode_msg::<String>(f.body()).unwrap_or_else(|_| "<undecodable reason>".into());
            reason.truncate(reason.char_indices().nth(REASON_MAX).map_or(reason.len(), |(i, _)| i));
            warn!(%peer, %reason, "network peer refused us");
            return Err(NetError::RefusedByPeer { peer, reason });
        }
        Ok(f)
    }

    fn require(&self, f: &OwnedFrame, kind: Kind) -> Result<(), NetError> {
        if f.kind == kind {
            return Ok(());
        }
        Err(NetError::Protocol { peer: self.peer, detail: format!("expected a {kind:?} frame, got {:?}", f.kind) })
    }

    /// Tell the peer why, log it, and let the peer read it before the socket closes.
    async fn refuse(&mut self, reason: Refusal) -> NetError {
        let peer = self.peer;
        warn!(%peer, %reason, "refusing network peer");
        if let Ok(f) = frame::encode_msg(Kind::Refusal, &reason.to_string(), false, HANDSHAKE_MAX_FRAME) {
            if write_all_timed(self.stream, &f, self.cfg.write_timeout_ms, peer).await.is_ok() {
                let _ = self.stream.shutdown().await;
                let _ = tokio::time::timeout(LINGER, async {
                    while let Ok(Some(_)) =
                        self.reader.read_frame(self.stream, HANDSHAKE_MAX_FRAME, false, peer, "").await
                    {
                    }
                })
                .await;
            }
        }
        NetError::Refused { peer, reason }
    }
}

/// HMAC-SHA1 over the two nonces, the service and the prover's name.
fn proof_mac(secret: &[u8], first: &[u8; 20], second: &[u8; 20], service: &str, prover: &str) -> Hmac<Sha1> {
    // HMAC takes keys of any length; the error arm is unreachable but handled.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).unwrap_or_else(|_| Hmac::<Sha1>::new(&Default::default()));
    mac.update(first);
    mac.update(second);
    for s in [service, prover] {
        mac.update(&(s.len() as u32).to_be_bytes());
        mac.update(s.as_bytes());
    }
    mac
}

/// Run the handshake on a fresh stream, bounded by the handshake timeout.
pub(crate) async fn handshake(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    peer: SocketAddr,
    me: &Identity,
    secret: Option<&[u8]>,
    accept: &AcceptFn,
    cfg: &NetConfig,
) -> Result<Handshaken, NetError> {
    if me.node.is_empty() || me.node.len() > NAME_MAX || me.service.len() > NAME_MAX {
        return Err(NetError::Config(format!("node and service names must be 1..={NAME_MAX} bytes")));
    }
    if secret.is_some_and(|s| s.is_empty()) {
        return Err(NetError::Config("empty shared secret (give none for an insecure link)".into()));
    }
    let ms = cfg.handshake_timeout_ms;
    let mut side = Side { stream, reader, peer, cfg };
    match tokio::time::timeout(Duration::from_millis(ms), run(&mut side, me, secret, accept)).await {
        Ok(r) => r,
        Err(_) => Err(NetError::HandshakeTimeout { peer, ms }),
    }
}

async fn run(
    side: &mut Side<'_>,
    me: &Identity,
    secret: Option<&[u8]>,
    accept: &AcceptFn,
) -> Result<Handshaken, NetError> {
    let peer = side.peer;
    let mut nonce = [0u8; 20];
    getrandom::getrandom(&mut nonce).map_err(|e| NetError::Io {
        peer,
        during: "drawing a nonce",
        source: std::io::Error::other(e.to_string()),
    })?;

    // 1. Hello.
    let hello = HelloBody {
        service: me.service.clone(),
        service_version: me.version,
        node: me.node.clone(),
        nonce,
        secured: secret.is_some(),
        data_integrity: side.cfg.data_integrity,
    };
    let mut body = PROTOCOL_VERSION.to_be_bytes().to_vec();
    bincode::serde::encode_into_std_write(&hello, &mut body, bincode::config::standard())
        .map_err(|e| NetError::Frame { peer, source: frame::FrameError::Encode(e.to_string()) })?;
    side.send(Kind::Hello, &body).await?;

    // 2. The peer's Hello.
    let f = side.read("reading the peer's hello").await?;
    side.require(&f, Kind::Hello)?;
    let Some((v, rest)) = f.body().split_first_chunk::<2>() else {
        return Err(NetError::Protocol { peer, detail: "hello without a version".into() });
    };
    let theirs = u16::from_be_bytes(*v);
    if theirs != PROTOCOL_VERSION {
        return Err(side.refuse(Refusal::VersionMismatch { ours: PROTOCOL_VERSION, theirs }).await);
    }
    let h: HelloBody = frame::decode_msg(rest).map_err(|source| NetError::Frame { peer, source })?;
    if h.service != me.service {
        return Err(side.refuse(Refusal::ServiceMismatch { ours: me.service.clone(), theirs: h.service }).await);
    }
    if h.service_version != me.version {
        let (service, ours, theirs) = (me.service.clone(), me.version, h.service_version);
        return Err(side.refuse(Refusal::ServiceVersionMismatch { service, ours, theirs }).await);
    }
    match (secret.is_some(), h.secured) {
        (true, false) => return Err(side.refuse(Refusal::AuthMismatch("the peer has no shared secret")).await),
        (false, true) => return Err(side.refuse(Refusal::AuthMismatch("this side has no shared secret")).await),
        _ => {}
    }
    if h.data_integrity != side.cfg.data_integrity {
        let r = Refusal::IntegrityMismatch { ours: side.cfg.data_integrity, theirs: h.data_integrity };
        return Err(side.refuse(r).await);
    }
    if h.node == me.node || h.nonce == nonce {
        return Err(side.refuse(Refusal::Reflected(h.node)).await);
    }
    if !accept(&h.node, peer) {
        return Err(side.refuse(Refusal::UnknownNode { name: h.node, addr: peer }).await);
    }

    // 3. Proofs.
    match secret {
        Some(secret) => {
            let mine = proof_mac(secret, &h.nonce, &nonce, &me.service, &me.node).finalize().into_bytes();
            side.send(Kind::Proof, &mine).await?;
            let f = side.read("reading the peer's proof").await?;
            side.require(&f, Kind::Proof)?;
            let expected = proof_mac(secret, &nonce, &h.nonce, &me.service, &h.node);
            if expected.verify_slice(f.body()).is_err() {
                return Err(side.refuse(Refusal::WrongSecret).await);
            }
        }
        None => {
            warn!(%peer, node = %h.node, service = %me.service, "network link is NOT authenticated (no shared secret on either side)")
        }
    }

    // 4. Accept.
    side.send(Kind::Accept, &[]).await?;
    let f = side.read("waiting for the peer's accept").await?;
    side.require(&f, Kind::Accept)?;
    debug!(%peer, node = %h.node, service = %me.service, "network handshake done");
    Ok(Handshaken { peer_name: h.node })
}
