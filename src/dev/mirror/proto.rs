//! Messages between the two nodes of a resource (serde; the net layer frames and authenticates
//! them). One connection carries them in order, and the engine relies on that order (as DRBD
//! relies on its data socket's): a reply sent after a write is read after it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::generation::GenIds;

/// Version of these messages, checked in the network handshake (`net::Identity::version`): a
/// change to [`Msg`] or [`Hello`] must raise it, so that two builds refuse each other with both
/// versions named instead of misreading each other's bytes. 2: resync runs and zeros, the
/// replicas' head digest in the Hello (session 4). 3: the Hello's `frozen` blocks (writes frozen
/// by a lost link are sent again after a reconnect).
pub const PROTOCOL_VERSION: u16 = 3;

/// Largest read one node asks of the other (a sync target's read of blocks it lacks); it must
/// fit a frame with room to spare.
pub const MAX_PEER_READ: u64 = 16 << 20;

/// SHA-1 digest of one block (verify-alg sha1).
pub type Digest = [u8; 20];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// First message on every connection, both ways: who we are and what we hold.
    Hello(Hello),
    /// An application write (DRBD P_DATA). `seq` numbers this side's writes on this connection;
    /// `seen` is the highest `seq` of the receiver's writes the sender had applied when it issued
    /// this one, so the receiver can tell a concurrent write from a later one.
    Write {
        seq: u64,
        seen: u64,
        offset: u64,
        /// Shared with the local write that runs while this message is sent.
        #[serde(with = "bytes::shared")]
        data: Arc<Vec<u8>>,
    },
    /// Protocol B: the write arrived (DRBD P_RECV_ACK).
    RecvAck {
        seq: u64,
    },
    /// The write is on the receiver's replica (DRBD P_WRITE_ACK); every protocol sends it, it ends
    /// the writer's tracking of the request.
    WriteAck {
        seq: u64,
    },
    /// Make every write received so far durable (DRBD P_BARRIER / flush), answered by `FlushAck`.
    Flush {
        id: u64,
    },
    FlushAck {
        id: u64,
    },
    /// A read of blocks the sender's replica lacks (it is a sync target).
    ReadRequest {
        id: u64,
        offset: u64,
        len: u64,
    },
    /// `None` when the receiver cannot serve it either.
    ReadReply {
        id: u64,
        #[serde(with = "bytes::option")]
        data: Option<Vec<u8>>,
    },
    /// Sync target asks for blocks `block..block + count` (DRBD P_RS_DATA_REQUEST, for a run of
    /// at most [`MAX_RUN`](super::resync::MAX_RUN)). The source answers every block of it, in
    /// order, with `ResyncData` and `ResyncZeros`.
    ResyncRequest {
        block: u64,
        count: u64,
    },
    /// Sync source's copy of consecutive blocks from `block` (DRBD P_RS_DATA_REPLY).
    ResyncData {
        block: u64,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// Blocks `block..block + count` are all zeros on the source: the target makes its own read
    /// as zeros, where they do not already (DRBD 9 sends such blocks as a discard).
    ResyncZeros {
        block: u64,
        count: u64,
    },
    /// The target wrote blocks `block..block + count`; both clear their bits.
    ResyncAck {
        block: u64,
        count: u64,
    },
    /// The sender became primary (true) or secondary; with `allow-two-primaries` off a node
    /// writes only while its peer is secondary.
    Role {
        primary: bool,
    },
    /// The target's bitmap is empty: it now holds the source's generation.
    ResyncDone,
    /// Online verify: digests of blocks `start..start + digests.len()` (DRBD P_OV_REQUEST, batched).
    VerifyBatch {
        start: u64,
        digests: Vec<Digest>,
    },
    /// The blocks of the batch whose digests differ; both sides mark them out of sync.
    VerifyReply {
        start: u64,
        mismatched: Vec<u64>,
    },
    /// Verify finished; `oos` is the sender's out-of-sync bitmap as runs. When not empty the
    /// receiver merges it and becomes the sync target of those blocks, the sender the source.
    VerifyDone {
        oos: Vec<(u64, u64)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Bytes of replica exposed; both must agree.
    pub size: u64,
    pub gens: GenIds,
    pub consistent: bool,
    pub crashed_primary: bool,
    pub discard_my_data: bool,
    pub fresh_in_sync: bool,
    /// The sender is primary (it wrote since it started, and was not demoted).
    pub primary: bool,
    /// The out-of-sync bitmap as runs `(first block, count)`, without `frozen`.
    pub oos: Vec<(u64, u64)>,
    /// Blocks marked out of sync only because writes froze on them when the link was lost
    /// (`fencing resource-and-stonith`), as runs. If the generations did not move apart, the
    /// writes are sent again and these blocks are not resynced; else they join the resync.
    pub frozen: Vec<(u64, u64)>,
    /// sha1 of the replica's first [`HEAD_BYTES`] (where a volume keeps its superblock), if it
    /// could be read: two replicas that are both "just created" must agree on it.
    pub head: Option<[u8; 20]>,
}

/// How much of the start of a replica [`Hello::head`] covers.
pub const HEAD_BYTES: u64 = 64 << 10;

/// Block data as one byte string: bincode then writes the length and copies the bytes, instead
/// of encoding a sequence one element at a time (what serde does for a `Vec<u8>`).
mod bytes {
    use serde::de::{self, Deserializer, SeqAccess};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::new();
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }

    /// The same for a shared byte string.
    pub mod shared {
        use serde::{Deserializer, Serializer};
        use std::sync::Arc;

        pub fn serialize<S: Serializer>(v: &Arc<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(v, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<u8>>, D::Error> {
            super::deserialize(d).map(Arc::new)
        }
    }

    /// The same for an optional byte string.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        struct Wrap(#[serde(with = "super")] Vec<u8>);

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            v.as_ref().map(|b| Wrap(b.clone())).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_bincode() {
        let cfg = bincode::config::standard();
        for msg in [
            Msg::Write { seq: 1, seen: 0, offset: 4096, data: Arc::new(vec![7; 5000]) },
            Msg::ReadReply { id: 3, data: Some(vec![1, 2, 3]) },
            Msg::ReadReply { id: 4, data: None },
            Msg::ResyncData { block: 9, data: vec![] },
        ] {
            let bytes = bincode::serde::encode_to_vec(&msg, cfg).unwrap();
            let (back, n): (Msg, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!((back, n), (msg, bytes.len()));
        }
    }
}
