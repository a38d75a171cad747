//! Network layer, frames: the unit on the wire. Pure functions over byte slices, no I/O.
//!
//! A frame is `be32 len` then `len` bytes of payload: one kind byte, the body, and (when the
//! connection negotiated data-integrity) the 20-byte SHA-1 of kind+body. Bodies of typed
//! messages are bincode 2 (serde, standard config).
//!
//! Parsing is check-then-parse (mini-redis): [`parse`] looks at a read buffer and returns
//! `Ok(None)` when the frame is incomplete — an expected condition, not an error — and checks
//! the announced length against the limit as soon as the 4 header bytes are there, so an
//! oversized frame is refused before anything is allocated for it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha1::{Digest, Sha1};
use thiserror::Error;

/// Bytes of the length header.
pub const HEADER_LEN: usize = 4;
/// Bytes of the data-integrity digest (SHA-1).
pub const DIGEST_LEN: usize = 20;

/// What a frame carries. Handshake kinds appear only before [`Kind::Data`] may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Proof = 2,
    Accept = 3,
    Refusal = 4,
    Data = 16,
    Ping = 17,
    Pong = 18,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Proof,
            3 => Kind::Accept,
            4 => Kind::Refusal,
            16 => Kind::Data,
            17 => Kind::Ping,
            18 => Kind::Pong,
            _ => return None,
        })
    }
}

/// What is wrong with a frame (the connection adds the peer's address).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("frame of {len} bytes is shorter than the minimum of {min}")]
    TooShort { len: u32, min: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("data-integrity digest mismatch (sha1): the frame was altered in transit")]
    DigestMismatch,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
}

/// One parsed frame, borrowing the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub body: &'a [u8],
}

fn min_len(digest: bool) -> u32 {
    1 + if digest { DIGEST_LEN as u32 } else { 0 }
}

/// Total bytes (header included) the next frame in `buf` needs, once its header is there.
pub fn needed(buf: &[u8]) -> usize {
    match buf.get(..HEADER_LEN) {
        Some(h) => HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize,
        None => HEADER_LEN,
    }
}

/// Check-then-parse one frame at the start of `buf`: `Ok(None)` if incomplete, else the frame
/// and how many bytes it used.
pub fn parse(buf: &[u8], max: u32, digest: bool) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if len > max {
        return Err(FrameError::TooLarge { len: len as u64, max });
    }
    if len < min_len(digest) {
        return Err(FrameError::TooShort { len, min: min_len(digest) });
    }
    let total = HEADER_LEN + len as usize;
    let Some(payload) = buf.get(HEADER_LEN..total) else { return Ok(None) };
    let body_end = payload.len() - if digest { DIGEST_LEN } else { 0 };
    let (signed, sum) = payload.split_at(body_end);
    if digest && Sha1::digest(signed).as_slice() != sum {
        return Err(FrameError::DigestMismatch);
    }
    let Some((&k, body)) = signed.split_first() else { return Err(FrameError::TooShort { len, min: 1 }) };
    let kind = Kind::from_u8(k).ok_or(FrameError::UnknownKind(k))?;
    Ok(Some((Frame { kind, body }, total)))
}

/// Close a frame whose header placeholder, kind and body are in `out`: append the digest and
/// fill in the length.
fn seal(mut out: Vec<u8>, digest: bool, max: u32) -> Result<Vec<u8>, FrameError> {
    if digest {
        let sum = Sha1::digest(&out[HEADER_LEN..]);
        out.extend_from_slice(&sum);
    }
    let len = (out.len() - HEADER_LEN) as u64;
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Encode a frame of `kind` around raw `body` bytes.
pub fn encode(kind: Kind, body: &[u8], digest: bool, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 1 + body.len() + DIGEST_LEN);
    out.extend_from_slice(&[0, 0, 0, 0, kind as u8]);
    out.extend_from_slice(body);
    seal(out, digest, max)
}

/// Encode a frame of `kind` whose body is `msg` in bincode, into a buffer of the final size
/// (measured first: growing it would copy a large body again).
pub fn encode_msg<T: Serialize + ?Sized>(kind: Kind, msg: &T, digest: bool, max: u32) -> Result<Vec<u8>, FrameError> {
    let encode_err = |e: bincode::error::EncodeError| FrameError::Encode(e.to_string());
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut size, bincode::config::standard()).map_err(encode_err)?;
    let len = 1 + size.bytes_written as u64 + if digest { DIGEST_LEN as u64 } else { 0 };
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len as usize);
    out.extend_from_slice(&[0, 0, 0, 0, kind as u8]);
    bincode::serde::encode_into_std_write(msg, &mut out, bincode::config::standard()).map_err(encode_err)?;
    seal(out, digest, max)
}

/// Decode with bincode's allocation limit `L` (bytes it may claim while decoding).
fn decode_limited<T: DeserializeOwned, const L: usize>(body: &[u8]) -> Result<(T, usize), FrameError> {
    bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<L>())
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// 4 GiB where usize allows it.
const TOP_LIMIT: usize = if usize::BITS >= 64 { (u32::MAX as usize).saturating_add(1) } else { usize::MAX };

/// Decode a message body. bincode allocates a string's or byte vector's claimed length before
/// reading it, so decoding runs under a limit: a body of n bytes legitimately claims at most
/// 16 n (a primitive claims its in-memory size), and the limit is the next step above that.
pub fn decode_msg<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let n = body.len().saturating_mul(16).saturating_add(1024);
    let (msg, used) = if n <= 1 << 16 {
        decode_limited::<T, { 1 << 16 }>(body)?
    } else if n <= 1 << 20 {
        decode_limited::<T, { 1 << 20 }>(body)?
    } else if n <= 1 << 24 {
        decode_limited::<T, { 1 << 24 }>(body)?
    } else if n <= 1 << 28 {
        decode_limited::<T, { 1 << 28 }>(body)?
    } else {
        decode_limited::<T, TOP_LIMIT>(body)?
    };
    if used != body.len() {
        return Err(FrameError::Decode(format!("{} trailing bytes after the message", body.len() - used)));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Write { sector: u64, data: Vec<u8>, tag: String },
        Ack(u64),
    }

    fn sample() -> Msg {
        Msg::Write { sector: 77, data: vec![1, 2, 3, 250], tag: "mail_data".into() }
    }

    #[test]
    fn round_trip_with_and_without_digest() {
        for digest in [false, true] {
            let f = encode_msg(Kind::Data, &sample(), digest, 1 << 20).unwrap();
            let (frame, used) = parse(&f, 1 << 20, digest).unwrap().unwrap();
            assert_eq!(used, f.len());
            assert_eq!(frame.kind, Kind::Data);
            assert_eq!(decode_msg::<Msg>(frame.body).unwrap(), sample());
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let mut f = encode_msg(Kind::Data, &sample(), true, 1 << 20).unwrap();
        for cut in 0..f.len() {
            assert_eq!(parse(&f[..cut], 1 << 20, true).unwrap(), None, "prefix {cut}");
        }
        // Two frames back to back: the first parses and reports its own length.
        let len = f.len();
        f.extend(encode(Kind::Ping, &[], true, 1 << 20).unwrap());
        let (_, used) = parse(&f, 1 << 20, true).unwrap().unwrap();
        assert_eq!(used, len);
        let (ping, _) = parse(&f[used..], 1 << 20, true).unwrap().unwrap();
        assert_eq!(ping.kind, Kind::Ping);
    }

    #[test]
    fn oversized_header_refused_before_body() {
        let hdr = 0xFFFF_FFF0u32.to_be_bytes();
        assert_eq!(parse(&hdr, 1 << 20, false), Err(FrameError::TooLarge { len: 0xFFFF_FFF0, max: 1 << 20 }));
        assert!(matches!(encode(Kind::Data, &[0; 2000], false, 1000), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn short_unknown_and_corrupt_frames() {
        assert!(matches!(parse(&[0, 0, 0, 0], 100, false), Err(FrameError::TooShort { .. })));
        assert!(matches!(parse(&[0, 0, 0, 5, 1, 2, 3, 4, 5], 100, true), Err(FrameError::TooShort { .. })));
        assert_eq!(parse(&[0, 0, 0, 1, 99], 100, false), Err(FrameError::UnknownKind(99)));
        let mut f = encode_msg(Kind::Data, &sample(), true, 1 << 20).unwrap();
        f[7] ^= 0x40;
        assert_eq!(parse(&f, 1 << 20, true), Err(FrameError::DigestMismatch));
    }

    #[test]
    fn decode_refuses_trailing_bytes_and_huge_claims() {
        let mut body = bincode::serde::encode_to_vec(Msg::Ack(5), bincode::config::standard()).unwrap();
        body.push(0);
        assert!(decode_msg::<Msg>(&body).is_err());
        // A string claiming u64::MAX bytes: refused by the limit, not allocated.
        let mut evil = vec![0u8, 77, 4]; // variant 0, sector 77, data of 4 bytes
        evil.extend_from_slice(&[1, 2, 3, 4, 253]);
        evil.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_msg::<Msg>(&evil).is_err());
    }

    #[test]
    fn fuzz_random_buffers_never_panic() {
        let mut rng = Rng::new(0x6f32_6673_6e65_7431);
        for i in 0..2000 {
            let len = rng.below(300) as usize;
            let mut buf = rng.bytes(len);
            if i % 2 == 0 && buf.len() >= 4 {
                // Half the cases get a plausible length so the body checks are reached.
                let l = (buf.len() - 4).saturating_sub(rng.below(3) as usize) as u32;
                buf[..4].copy_from_slice(&l.to_be_bytes());
            }
            for digest in [false, true] {
                let mut at = 0;
                while let Ok(Some((f, used))) = parse(&buf[at..], 256, digest) {
                    let _ = decode_msg::<Msg>(f.body);
                    let _ = decode_msg::<(String, Vec<u64>)>(f.body);
                    at += used;
                }
            }
            let _ = decode_msg::<Msg>(&buf);
        }
    }
}
