//! Network layer, socket side of framing: a read buffer that yields whole frames, and writes
//! that fail when they stop making progress. Used by the handshake and by the connection task.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, FrameError, Kind};
use super::NetError;

/// Read at least this much at a time, at most `MAX_READ` (a large frame arrives in steps).
const MIN_READ: usize = 8 << 10;
const MAX_READ: usize = 1 << 20;
/// An idle buffer holding more capacity than this is given back.
const KEEP_CAPACITY: usize = 4 << 20;

/// Frames from this size on leave the reader with the buffer they arrived in, rather than as a
/// copy (a 1 MiB write saves a copy; the reader goes on with what followed the frame).
const MOVE_OUT: usize = 64 << 10;

/// A frame taken out of the read buffer: its body is `buf[body]`.
#[derive(Debug)]
pub(crate) struct OwnedFrame {
    pub kind: Kind,
    buf: Vec<u8>,
    body: std::ops::Range<usize>,
}

impl OwnedFrame {
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }
}

/// Bytes read from the socket and not yet parsed (`buf[pos..]`).
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameReader {
    /// The next whole frame already buffered, if any (check-then-parse).
    pub fn take(&mut self, max: u32, digest: bool) -> Result<Option<OwnedFrame>, FrameError> {
        let Some((f, used)) = frame::parse(&self.buf[self.pos..], max, digest)? else { return Ok(None) };
        let (kind, len) = (f.kind, f.body.len());
        if len < MOVE_OUT {
            let out = OwnedFrame { kind, buf: f.body.to_vec(), body: 0..len };
            self.pos += used;
            return Ok(Some(out));
        }
        let start = self.pos + frame::HEADER_LEN + 1;
        let rest = self.buf.split_off(self.pos + used);
        self.pos = 0;
        Ok(Some(OwnedFrame { kind, buf: std::mem::replace(&mut self.buf, rest), body: start..start + len }))
    }

    /// Whether part of a frame is buffered (an EOF now is a truncated frame).
    pub fn has_partial(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Read more bytes; `Ok(0)` is end of stream. Cancel-safe: bytes are only appended once
    /// the read returned them. Call only after `take` returned `None`, so the announced length
    /// has been checked against the limit and sizes the read.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        let want = frame::needed(&self.buf).saturating_sub(self.buf.len()).clamp(MIN_READ, MAX_READ);
        self.buf.reserve(want);
        r.read_buf(&mut self.buf).await
    }

    /// The next frame, reading as needed; `None` on a clean end of stream between frames.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: u32,
        digest: bool,
        peer: SocketAddr,
        during: &'static str,
    ) -> Result<Option<OwnedFrame>, NetError> {
        loop {
            if let Some(f) = self.take(max, digest).map_err(|source| NetError::Frame { peer, source })? {
                return Ok(Some(f));
            }
            match self.fill(r).await {
                Ok(0) if self.has_partial() => return Err(NetError::Eof { peer, during }),
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(source) => return Err(NetError::Io { peer, during, source }),
            }
        }
    }
}

/// Write all of `bytes`; fail if any single write makes no progress for `timeout_ms` (a slow
/// but moving peer is fine, a peer that stopped reading is not).
pub(crate) async fn write_all_timed<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    timeout_ms: u64,
    peer: SocketAddr,
) -> Result<(), NetError> {
    let mut at = 0;
    while at < bytes.len() {
        match tokio::time::timeout(Duration::from_millis(timeout_ms), w.write(&bytes[at..])).await {
            Ok(Ok(0)) => return Err(NetError::Eof { peer, during: "writing" }),
            Ok(Ok(n)) => at += n,
            Ok(Err(source)) => return Err(NetError::Io { peer, during: "writing", source }),
            Err(_) => return Err(NetError::WriteTimeout { peer, ms: timeout_ms }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large frame leaves with the buffer, a small one as a copy; what follows either is
    /// still parsed, and a partial frame stays buffered.
    #[test]
    fn take_moves_large_frames_out_and_keeps_what_follows() {
        for digest in [false, true] {
            let big: Vec<u8> = (0..MOVE_OUT + 5).map(|i| i as u8).collect();
            let small = frame::encode(Kind::Data, b"after", digest, 1 << 20).unwrap();
            let mut bytes = vec![0xEE; 3]; // the tail of a frame already taken
            bytes.extend(frame::encode(Kind::Data, &big, digest, 1 << 20).unwrap());
            bytes.extend(&small);
            bytes.extend(&small[..small.len() - 1]);
            let mut r = FrameReader { buf: bytes, pos: 3 };
            let f = r.take(1 << 20, digest).unwrap().unwrap();
            assert_eq!((f.kind, f.body()), (Kind::Data, &big[..]));
            assert_eq!(r.take(1 << 20, digest).unwrap().unwrap().body(), b"after");
            assert!(r.take(1 << 20, digest).unwrap().is_none());
            assert!(r.has_partial());
        }
    }
}
