//! Distributed lock manager: a sans-IO state machine in the manner of OCFS2's o2dlm and the VMS
//! DLM it copies. It consumes local requests, received messages, membership views and time, and
//! produces messages to send and callbacks ([`Event`]); the daemon owns sockets and timers.
//!
//! - [`mode`]: the six lock modes and the compatibility matrix.
//! - [`name`]: resource names and lock value blocks.
//! - [`master`]: which member masters a resource (rendezvous hashing over the view).
//! - [`msg`]: the messages between lock managers.
//! - `resource` (private): a mastered resource's queues and grant order.
//! - `recovery` (private): dead nodes, who recovers them, and what their locks still block.
//! - `engine`, `holder`, `mastering`, `rebuild` (private): [`Dlm`] — the API, the holder's side,
//!   the master's side, and the rebuild after every view change.
//! - [`glue`]: the lock cache above the engine (OCFS2's dlmglue): keep granted modes, downconvert
//!   on a blocking callback.
//! - [`service`]: the runtime of one node: drives the engine from the cluster runtime's events
//!   and serves local users through the cache.

mod engine;
pub mod glue;
mod holder;
pub mod master;
mod mastering;
pub mod mode;
pub mod msg;
pub mod name;
mod rebuild;
mod recovery;
mod resource;
pub mod service;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use engine::{Dlm, LocalDump, ResourceDump};
pub use master::master_of;
pub use mode::Mode;
pub use msg::Msg;
pub use name::{Lvb, ResName, LVB_LEN, MAX_NAME_LEN};
pub use resource::{HolderDump, WaiterDump};

/// A node number from cluster.conf.
pub type NodeId = u8;

/// The handle of one local lock, allocated by the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockId(pub u64);

#[derive(Clone, Copy, Debug, Default)]
pub struct LockFlags {
    /// Try-lock (VMS LKF_NOQUEUE): fail with [`LockError::NotQueued`] instead of waiting.
    pub noqueue: bool,
}

/// An output of the engine, taken with [`Dlm::poll_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Send {
        to: NodeId,
        msg: Msg,
    },
    /// Completion AST: the request or conversion is granted; `lvb` is the current value block.
    Granted {
        id: LockId,
        mode: Mode,
        lvb: Lvb,
    },
    /// The request or conversion ended without a grant; a failed new lock is gone.
    Failed {
        id: LockId,
        error: LockError,
    },
    /// Blocking AST: this granted lock blocks someone wanting `wanted`.
    Blocking {
        id: LockId,
        wanted: Mode,
    },
    /// The unlock completed; the id is gone.
    Unlocked {
        id: LockId,
    },
    /// This node recovers `dead`: run the filesystem's recovery, then call [`Dlm::recovery_done`].
    RecoverNode {
        dead: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum LockError {
    #[error("not queued: the lock is not grantable at once")]
    NotQueued,
    #[error("cancelled")]
    Cancelled,
}

#[derive(Debug, Error)]
pub enum DlmError {
    #[error("bad resource name {0:?}: 1 to {MAX_NAME_LEN} printable ASCII characters without spaces")]
    BadName(String),
    #[error("bad lock mode {0:?}: one of nl, cr, cw, pr, pw, ex")]
    BadMode(String),
    #[error("unknown lock id {}", .0 .0)]
    UnknownLock(LockId),
    #[error("lock {} has a request, conversion or unlock in progress", .0 .0)]
    Busy(LockId),
    #[error("lock {} has no request or conversion waiting", .0 .0)]
    NotWaiting(LockId),
    #[error("conversion from {from} to {to} is neither up nor down; convert through cr or pw")]
    Sideways { from: Mode, to: Mode },
    #[error("lock value block of {0} bytes: at most {LVB_LEN}")]
    LvbTooLong(usize),
    #[error("node {0} is not being recovered by this node")]
    NotRecovering(NodeId),
}
