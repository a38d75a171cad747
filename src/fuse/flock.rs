//! flock(2) across the cluster, as OCFS2 gives it (an 'F' lock per inode in the DLM): a shared
//! flock is the inode's flock lock at PR, an exclusive one at EX, each open file description
//! (the kernel's lock owner) holding its own. A cluster mount asks the kernel for flock
//! requests (FUSE_FLOCK_LOCKS) and leaves fcntl byte-range locks node-local, as o2cb does.
//!
//! A blocking flock waits on a thread of its own: a FUSE worker blocked on it could be the one
//! the holder's unlock needs.

use crate::fs::lock::{ClusterLocks, LockMode, LockResource};
use fuser::{Errno, ReplyEmpty};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The lock types of a SETLK request (Linux's values).
const F_RDLCK: i32 = 0;
const F_WRLCK: i32 = 1;
const F_UNLCK: i32 = 2;

pub struct Flocks {
    locks: Arc<dyn ClusterLocks>,
    /// The mode each (inode, lock owner) holds.
    held: Mutex<HashMap<(u64, u64), LockMode>>,
}

impl Flocks {
    pub fn new(locks: Arc<dyn ClusterLocks>) -> Arc<Flocks> {
        Arc::new(Flocks { locks, held: Mutex::new(HashMap::new()) })
    }

    /// flock(2) by `owner` on inode `blkno`: `typ` is F_RDLCK, F_WRLCK or F_UNLCK; `sleep` unless
    /// LOCK_NB. Replies EWOULDBLOCK when a non-blocking lock is held elsewhere.
    pub fn set(self: &Arc<Self>, blkno: u64, owner: u64, typ: i32, sleep: bool, reply: ReplyEmpty) {
        let mode = match typ {
            F_UNLCK => {
                self.unlock(blkno, owner);
                return reply.ok();
            }
            F_RDLCK => LockMode::Pr,
            F_WRLCK => LockMode::Ex,
            _ => return reply.error(Errno::EINVAL),
        };
        // Converting releases first, as Linux's flock does (a conversion is not atomic).
        match self.held.lock().get(&(blkno, owner)) {
            Some(&m) if m == mode => return reply.ok(),
            Some(_) => self.unlock(blkno, owner),
            None => {}
        }
        let res = LockResource::Flock { blkno };
        if !sleep {
            return match self.locks.try_acquire(res, mode) {
                Ok(true) => {
                    self.held.lock().insert((blkno, owner), mode);
                    reply.ok()
                }
                Ok(false) => reply.error(Errno::EWOULDBLOCK),
                Err(e) => reply.error(Errno::from_i32(e.errno())),
            };
        }
        let this = self.clone();
        std::thread::spawn(move || match this.locks.acquire(res, mode) {
            Ok(()) => {
                this.held.lock().insert((blkno, owner), mode);
                reply.ok()
            }
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        });
    }

    /// Drops `owner`'s flock on `blkno`, if any (LOCK_UN, or the last close of its file).
    pub fn unlock(&self, blkno: u64, owner: u64) {
        let mode = self.held.lock().remove(&(blkno, owner));
        if let Some(mode) = mode {
            self.locks.release(LockResource::Flock { blkno }, mode);
        }
    }

    /// Drops every flock (the unmount).
    pub fn unlock_all(&self) {
        let all: Vec<_> = self.held.lock().drain().collect();
        for ((blkno, _), mode) in all {
            self.locks.release(LockResource::Flock { blkno }, mode);
        }
    }
}
