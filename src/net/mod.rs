//! Network layer: framed, authenticated TCP connections on tokio. Knows no other layer.
//!
//! Modules, bottom up (the shape of tokio's mini-redis):
//! - [`frame`]: the wire unit (`be32 len`, kind, bincode body, optional SHA-1 digest);
//!   check-then-parse, "incomplete" is `Ok(None)`; pure functions.
//! - `stream` (private): a read buffer that yields frames from a socket, and timed writes.
//! - [`auth`]: the handshake: Hello (version, service, node, nonce), mutual HMAC-SHA1 proofs,
//!   Accept or Refusal with a reason both sides log.
//! - [`conn`]: [`Connection`] — typed `send`/`recv`, keepalive pings, idle timeout, write timeout.
//!
//! Users: the mirror's peer link (service `mirror:<resource>`) and the cluster mesh
//! (`cluster:<name>`). Nothing here panics on bytes from a socket; every error names the peer.

pub mod admin;
pub mod auth;
pub mod conn;
pub mod frame;
mod stream;

use std::io;
use std::net::SocketAddr;

use thiserror::Error;

pub use auth::{any_peer, AcceptFn, Identity, Refusal, PROTOCOL_VERSION};
pub use conn::{accept, connect, ConnReceiver, ConnSender, Connection};
pub use frame::FrameError;

/// Smallest and largest `max_frame` allowed.
pub const MIN_MAX_FRAME: u32 = 4096;
pub const MAX_MAX_FRAME: u32 = 256 << 20;

/// Timing and size settings of connections, with the o2cb defaults. Tests use small values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// Send a ping after this long without receiving anything (o2cb keepalive delay, 2000 ms).
    pub keepalive_ms: u64,
    /// Nothing received for this long: the peer is unreachable (o2cb idle timeout, 30000 ms).
    pub idle_timeout_ms: u64,
    /// Delay between connection attempts, for callers' reconnect loops (o2cb, 2000 ms).
    pub reconnect_ms: u64,
    /// TCP connect plus the whole handshake must finish within this.
    pub handshake_timeout_ms: u64,
    /// A write that makes no progress for this long fails (a peer that stopped reading).
    pub write_timeout_ms: u64,
    /// Largest frame accepted or sent, in bytes after the length header.
    pub max_frame: u32,
    /// Append and verify a SHA-1 of every frame after the handshake (DRBD data-integrity-alg);
    /// both sides must agree.
    pub data_integrity: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            keepalive_ms: 2000,
            idle_timeout_ms: 30000,
            reconnect_ms: 2000,
            handshake_timeout_ms: 10000,
            write_timeout_ms: 30000,
            max_frame: 64 << 20,
            data_integrity: false,
        }
    }
}

impl NetConfig {
    /// Refuse inconsistent values.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |why: String| Err(NetError::Config(why));
        for (name, v) in [
            ("keepalive_ms", self.keepalive_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("reconnect_ms", self.reconnect_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
            if v > 24 * 3600 * 1000 {
                return bad(format!("{name} = {v} is more than a day"));
            }
        }
        if self.idle_timeout_ms <= self.keepalive_ms {
            return bad(format!(
                "idle_timeout_ms ({}) must exceed keepalive_ms ({}), or a live peer is declared idle",
                self.idle_timeout_ms, self.keepalive_ms
            ));
        }
        if !(MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&self.max_frame) {
            return bad(format!("max_frame {} is outside {MIN_MAX_FRAME}..={MAX_MAX_FRAME}", self.max_frame));
        }
        Ok(())
    }
}

/// Everything that can go wrong on a connection; each names the peer and what happened.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("{peer}: connect failed: {source}")]
    Connect { peer: SocketAddr, source: io::Error },
    #[error("{peer}: i/o error while {during}: {source}")]
    Io { peer: SocketAddr, during: &'static str, source: io::Error },
    #[error("{peer}: connection closed by the peer while {during}")]
    Eof { peer: SocketAddr, during: &'static str },
    #[error("{peer}: bad frame: {source}")]
    Frame { peer: SocketAddr, source: FrameError },
    #[error("{peer}: protocol error: {detail}")]
    Protocol { peer: SocketAddr, detail: String },
    #[error("{peer}: handshake did not finish within {ms} ms")]
    HandshakeTimeout { peer: SocketAddr, ms: u64 },
    #[error("{peer}: write made no progress for {ms} ms (the peer stopped reading)")]
    WriteTimeout { peer: SocketAddr, ms: u64 },
    #[error("{peer}: peer idle for {ms} ms (idle timeout {timeout_ms} ms)")]
    Idle { peer: SocketAddr, ms: u64, timeout_ms: u64 },
    #[error("{peer}: refused the peer: {reason}")]
    Refused { peer: SocketAddr, reason: Refusal },
    #[error("{peer}: the peer refused us: {reason}")]
    RefusedByPeer { peer: SocketAddr, reason: String },
    #[error("{peer}: connection is closed: {reason}")]
    Closed { peer: SocketAddr, reason: String },
}

impl NetError {
    /// The peer address the error is about (none for a configuration error).
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            NetError::Config(_) => None,
            NetError::Connect { peer, .. }
            | NetError::Io { peer, .. }
            | NetError::Eof { peer, .. }
            | NetError::Frame { peer, .. }
            | NetError::Protocol { peer, .. }
            | NetError::HandshakeTimeout { peer, .. }
            | NetError::WriteTimeout { peer, .. }
            | NetError::Idle { peer, .. }
            | NetError::Refused { peer, .. }
            | NetError::RefusedByPeer { peer, .. }
            | NetError::Closed { peer, .. } => Some(*peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_o2cb_and_valid() {
        let c = NetConfig::default();
        assert_eq!((c.keepalive_ms, c.idle_timeout_ms, c.reconnect_ms), (2000, 30000, 2000));
        c.validate().unwrap();
    }

    #[test]
    fn inconsistent_values_refused() {
        let d = NetConfig::default();
        for bad in [
            NetConfig { keepalive_ms: 30000, ..d },
            NetConfig { idle_timeout_ms: 1000, ..d },
            NetConfig { keepalive_ms: 0, ..d },
            NetConfig { write_timeout_ms: 0, ..d },
            NetConfig { handshake_timeout_ms: 0, ..d },
            NetConfig { reconnect_ms: 0, ..d },
            NetConfig { max_frame: 10, ..d },
            NetConfig { max_frame: u32::MAX, ..d },
        ] {
            assert!(matches!(bad.validate(), Err(NetError::Config(_))), "{bad:?}");
        }
    }
}
