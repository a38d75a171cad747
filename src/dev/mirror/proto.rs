//! Messages between the two nodes of a resource (serde; the net layer frames and authenticates
//! them). One connection carries them in order, and the engine relies on that order (as DRBD
//! relies on its data socket's): a reply sent after a write is read after it.

use serde::{Deserialize, Serialize};

use super::generation::GenIds;

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
        data: Vec<u8>,
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
        data: Option<Vec<u8>>,
    },
    /// Sync target asks for one block (DRBD P_RS_DATA_REQUEST).
    ResyncRequest {
        block: u64,
    },
    /// Sync source's copy of a block (DRBD P_RS_DATA_REPLY).
    ResyncData {
        block: u64,
        data: Vec<u8>,
    },
    /// The target wrote the block; both clear its bit.
    ResyncAck {
        block: u64,
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
    /// Verify finished with `found` out-of-sync blocks: the receiver becomes the sync target of
    /// them, the sender the source.
    VerifyDone {
        found: u64,
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
    /// The out-of-sync bitmap as runs `(first block, count)`.
    pub oos: Vec<(u64, u64)>,
}
