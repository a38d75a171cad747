//! Open locks over the DLM (`LockResource::InodeOpen`, OCFS2's 'O' locks): a node holds an
//! inode's open lock at PR while it has the inode open, and a node that wants to free an
//! unlinked inode takes it at EX with a try-lock, which succeeds only when no node has it open.
//!
//! These are direct DLM locks, outside the lock cache: nobody is ever asked to give one up. A
//! node keeps one at PR after its last close of the inode (reopening costs no message) only
//! while it holds the inode's metadata lock: when that goes down to NL (another node is about to
//! change the inode — an unlinking node takes it exclusive), the idle open lock is unlocked
//! before the metadata lock goes, and the master has let it go before the other node is
//! granted. So an unlinking node's try-lock fails exactly when some node has the inode open.

use super::error::{FsError, Result};
use crate::dlm::service::{DirectLock, LockService, ServiceError};
use crate::dlm::{Mode, ResName};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::Arc;

/// This node's open lock on one inode.
struct Entry {
    /// None while it is being taken or given up (others wait for `changed`).
    lock: Option<DirectLock>,
    mode: Mode,
    /// Local users (open handles at PR, a freeing request at EX).
    users: u32,
}

#[derive(Default)]
pub struct OpenLocks {
    table: Mutex<HashMap<u64, Entry>>,
    changed: Condvar,
}

/// A lock the service could not give (this node is fenced): the request fails with EIO.
pub(super) fn refused(e: ServiceError, name: &ResName) -> FsError {
    tracing::warn!("cluster lock {}: {e}", name.as_str());
    FsError::Dev(crate::dev::DevError::Fenced)
}

impl OpenLocks {
    /// Takes the open lock of `blkno` (DLM name `name`) at `mode` for one more local user; with
    /// `noqueue` only if nobody, here or elsewhere, is in the way (false otherwise).
    pub fn take(&self, svc: &Arc<LockService>, name: &ResName, blkno: u64, mode: Mode, noqueue: bool) -> Result<bool> {
        let mut table = self.table.lock();
        let idle = loop {
            match table.get_mut(&blkno) {
                None => break None,
                Some(e) if e.lock.is_some() && e.mode == Mode::Pr && mode == Mode::Pr => {
                    e.users += 1;
                    return Ok(true);
                }
                // Cached after the last close: given up before asking for EX (to the same
                // master, which hears the unlock first).
                Some(e) if e.lock.is_some() && e.users == 0 => break e.lock.take(),
                // In use here: a try fails at once.
                Some(e) if noqueue && e.lock.is_some() => return Ok(false),
                // In use here, or being taken or given up: wait for the outcome.
                Some(_) => self.changed.wait(&mut table),
            }
        };
        table.insert(blkno, Entry { lock: None, mode, users: 1 });
        drop(table);
        drop(idle);
        let got = svc.lock_direct(name, mode, noqueue);
        let mut table = self.table.lock();
        let granted = match got {
            Ok(Some(lock)) => {
                if let Some(e) = table.get_mut(&blkno) {
                    e.lock = Some(lock);
                }
                Ok(true)
            }
            Ok(None) => {
                table.remove(&blkno);
                Ok(false)
            }
            Err(e) => {
                table.remove(&blkno);
                Err(refused(e, name))
            }
        };
        self.changed.notify_all();
        granted
    }

    /// [`take`](Self::take) only if that needs no wait and no message: held here at PR already
    /// (and `mode` is PR), or mastered here with nobody in the way (a new inode's); false
    /// otherwise. Never waits, so a request may call it holding the core.
    pub fn take_now(&self, svc: &Arc<LockService>, name: &ResName, blkno: u64, mode: Mode) -> bool {
        let mut table = self.table.lock();
        match table.get_mut(&blkno) {
            Some(e) if e.lock.is_some() && e.mode == Mode::Pr && mode == Mode::Pr => {
                e.users += 1;
                true
            }
            // In use, or being taken or given up.
            Some(_) => false,
            None => match svc.lock_direct_now(name, mode) {
                Some(lock) => {
                    table.insert(blkno, Entry { lock: Some(lock), mode, users: 1 });
                    true
                }
                None => false,
            },
        }
    }

    /// One local user of `blkno`'s open lock at `mode` is done. PR stays cached (see the module
    /// comment); EX is unlocked at once (others' opens wait for it).
    pub fn release(&self, blkno: u64, mode: Mode) {
        let mut table = self.table.lock();
        let Some(e) = table.get_mut(&blkno) else { return };
        e.users = e.users.saturating_sub(1);
        if mode == Mode::Pr {
            return;
        }
        let lock = table.remove(&blkno).and_then(|e| e.lock);
        self.changed.notify_all();
        drop(table);
        drop(lock);
    }

    /// The metadata lock of `blkno` goes down to NL: an open lock kept after the last close goes
    /// first, and the master has let it go when this returns.
    pub fn drop_idle(&self, blkno: u64) {
        let mut table = self.table.lock();
        let lock = match table.get_mut(&blkno) {
            Some(e) if e.users == 0 => e.lock.take(),
            _ => None,
        };
        let Some(lock) = lock else { return };
        drop(table);
        lock.unlock();
        self.table.lock().remove(&blkno);
        self.changed.notify_all();
    }
}
