//! Messages between lock managers. Every message carries the epoch of the membership view it was
//! sent in; a receiver drops older epochs and holds newer ones until it reaches that view.

use serde::{Deserialize, Serialize};

use super::{LockError, LockId, Lvb, Mode, NodeId, ResName};

/// A lock value block with the version the master gave it; rebuild keeps the highest version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedLvb {
    pub version: u64,
    pub lvb: Lvb,
}

/// A granted lock of a dead node, kept in force until its recovery and handed from master to
/// master across views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLock {
    pub node: NodeId,
    pub id: LockId,
    pub mode: Mode,
}

/// A node removed from the view in `epoch`, the survivor that recovers it, and whether it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    pub node: NodeId,
    pub epoch: u64,
    pub recoverer: NodeId,
    pub recovered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Holder to master: a new lock (unknown id) or an up-conversion of a granted one.
    Request {
        epoch: u64,
        res: ResName,
        id: LockId,
        mode: Mode,
        noqueue: bool,
    },
    /// Holder to master: a down-conversion the holder already applied; no reply.
    Down {
        epoch: u64,
        res: ResName,
        id: LockId,
        mode: Mode,
        lvb: Option<VersionedLvb>,
    },
    /// Holder to master: release; answered by `UnlockDone`.
    Unlock {
        epoch: u64,
        res: ResName,
        id: LockId,
        lvb: Option<VersionedLvb>,
    },
    /// Holder to master: withdraw the waiting request or conversion of `id`.
    Cancel {
        epoch: u64,
        res: ResName,
        id: LockId,
    },
    /// Master to holder: completion AST.
    Grant {
        epoch: u64,
        res: ResName,
        id: LockId,
        mode: Mode,
        lvb: VersionedLvb,
    },
    /// Master to holder: the request or conversion ended without a grant.
    Fail {
        epoch: u64,
        res: ResName,
        id: LockId,
        error: LockError,
    },
    /// Master to holder: blocking AST.
    Bast {
        epoch: u64,
        res: ResName,
        id: LockId,
        wanted: Mode,
    },
    UnlockDone {
        epoch: u64,
        res: ResName,
        id: LockId,
    },
    /// Holder to the master of the new view: one lock's state, sent on every view change.
    Rebuild {
        epoch: u64,
        res: ResName,
        id: LockId,
        granted: Option<Mode>,
        wanted: Option<Mode>,
        noqueue: bool,
        unlocking: bool,
        lvb: VersionedLvb,
    },
    /// Old master to the master of the new view: what only the master knew about a resource.
    /// `complete`: the sender had finished rebuilding the previous view; `trusted`: it knew every
    /// dead node's locks on the resource.
    Handoff {
        epoch: u64,
        res: ResName,
        complete: bool,
        trusted: bool,
        lvb: VersionedLvb,
        dead: Vec<DeadLock>,
    },
    /// To every member, after all `Rebuild` and `Handoff` messages of the sender for `epoch`.
    RebuildDone {
        epoch: u64,
        deaths: Vec<Death>,
    },
    /// From the recovery node to every member: the filesystem recovered `node` (dead since `death_epoch`).
    Recovered {
        epoch: u64,
        node: NodeId,
        death_epoch: u64,
    },
}

impl Msg {
    pub fn epoch(&self) -> u64 {
        match self {
            Msg::Request { epoch, .. }
            | Msg::Down { epoch, .. }
            | Msg::Unlock { epoch, .. }
            | Msg::Cancel { epoch, .. }
            | Msg::Grant { epoch, .. }
            | Msg::Fail { epoch, .. }
            | Msg::Bast { epoch, .. }
            | Msg::UnlockDone { epoch, .. }
            | Msg::Rebuild { epoch, .. }
            | Msg::Handoff { epoch, .. }
            | Msg::RebuildDone { epoch, .. }
            | Msg::Recovered { epoch, .. } => *epoch,
        }
    }

    /// Whether every value block in the message fits [`super::LVB_LEN`] (names are checked when decoded).
    pub fn is_valid(&self) -> bool {
        let lvb = match self {
            Msg::Down { lvb, .. } | Msg::Unlock { lvb, .. } => lvb.as_ref(),
            Msg::Grant { lvb, .. } | Msg::Rebuild { lvb, .. } | Msg::Handoff { lvb, .. } => Some(lvb),
            _ => None,
        };
        lvb.is_none_or(|v| v.lvb.is_valid())
    }
}
