//! What the kernel may cache of our replies (attributes, names) and how long, and the
//! invalidations that take it back when a cluster lock goes (shared/docs/DESIGN.md "Kernel caches
//! through FUSE").
//!
//! A single-node mount lets the kernel keep everything for [`TTL`]. A cluster mount lets it keep
//! as much, but only what a cluster lock of this node covers, and takes it back when this node
//! loses read rights on that lock (`lost`, from the downconvert callback, before the lock goes):
//! - attributes of an inode: `FUSE_NOTIFY_INVAL_INODE` with offset -1 (attributes only: it takes
//!   no page or inode lock, so it cannot wait for a request that waits for the lock). A reply
//!   the kernel asked for before that invalidation is dropped by the kernel (its `attr_version`
//!   check), so a reply sent after the lock went cannot leave stale attributes behind — except
//!   where the kernel skips that check: a reply that makes a new kernel inode (the inode was
//!   not in the kernel when the invalidation came, it finds nothing to invalidate), and the
//!   replies of CREATE, MKNOD, MKDIR, SYMLINK, LINK and SETATTR. Those carry attribute TTL 0
//!   (which costs every create a GETATTR, the permission check of the open that follows; a
//!   short TTL on CREATE with a wait in `lost` was tried in session 6 and taken out: the wait
//!   slowed every lock given up soon after a create, the lock-cache trimming's most of all).
//! - names: `FUSE_NOTIFY_INC_EPOCH` (Linux 6.16), which makes every name the kernel looked up
//!   before it stale. Per-name `FUSE_NOTIFY_INVAL_ENTRY` is not used: it takes the directory's
//!   i_rwsem, which a LOOKUP or CREATE of this node holds while it waits for the very lock being
//!   given up (a deadlock). The kernel samples the epoch before it sends a request, so a name
//!   replied after the bump is stale too. Without the epoch notification (older kernels, or no
//!   descriptor of our own for /dev/fuse), names get TTL 0.
//! - file data (the page cache): the kernel drops a file's pages itself when it sees the
//!   file's mtime or size changed, and before every read(2) it checks its attributes
//!   (`FUSE_AUTO_INVAL_DATA`, asked for on cluster mounts): fetched again after the
//!   invalidation above, the attributes show another node's write. That check runs in the
//!   reader's context, holding no page lock and waiting for no cluster lock. An invalidation of
//!   pages sent from here (`FUSE_NOTIFY_INVAL_INODE` with an offset) would instead wait for
//!   locked pages, and the kernel keeps a page locked while its READ or WRITE request waits in
//!   this daemon, possibly for the very lock being given up. READ replies are sent while the
//!   request still holds the inode's lock (see `O2Fuse::read`): a page filled from data read
//!   under the lock is in the kernel before another node can change that data.
//!   A SETATTR reply brings a new mtime into the kernel without that comparison
//!   (fuse_do_setattr drops pages only on a size change), so `lost` marks the file's pages
//!   unverified, and the next SETATTR reply for it carries an mtime 1 ns off (`O2Fuse::setattr`;
//!   with TTL 0, no stat shows it): the kernel's next read compares the true mtime with it and
//!   drops the pages. Dropping them from the handler instead would wait for page locks that
//!   READs not yet read from /dev/fuse hold, which can take every FUSE worker thread.
//!   Not covered: a change that leaves mtime and size as this node's kernel last saw them
//!   (another node setting mtime back with utimensat), and pages mapped with mmap(2) (a page
//!   fault takes no attribute check; the next read(2) or stat drops them).

use fuser::{INodeNo, Notifier};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long the kernel may keep attributes and names (while the covering lock stays, on a
/// cluster mount).
pub const TTL: Duration = Duration::from_secs(1);

/// The kernel's notification code for "names from before are stale" (fuse_notify_code).
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;

/// The requests a mount counts, for `o2fs status --json` (`fuse_requests`): how much of the
/// kernel's traffic the caches spare, and what one operation costs in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Readdir,
    Statfs,
    Xattr,
    Access,
    Create,
    /// Every other kind (setlk, fallocate, lseek…).
    Other,
}

/// The names `o2fs status --json` shows, in `Req`'s order.
const REQ_NAMES: [&str; 24] = [
    "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename",
    "link", "open", "read", "write", "flush", "release", "fsync", "readdir", "statfs", "xattr", "access", "create",
    "other",
];

/// Requests served per kind (every kind is shown, zero or not).
#[derive(Default)]
pub struct RequestCounts {
    served: [AtomicU64; REQ_NAMES.len()],
}

impl RequestCounts {
    pub fn count(&self, req: Req) {
        self.served[req as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> serde_json::Value {
        let counts = REQ_NAMES.iter().zip(&self.served);
        let map = counts.map(|(name, n)| (name.to_string(), n.load(Ordering::Relaxed).into())).collect();
        serde_json::Value::Object(map)
    }
}

/// The channel to the kernel for notifications, once the session is mounted.
struct Channel {
    notifier: Notifier,
    /// Our own descriptor of the session's /dev/fuse, for the notification fuser lacks.
    epoch: Option<File>,
}

pub struct KernelCache {
    clustered: bool,
    /// The root directory's block (FUSE inode 1).
    root: u64,
    channel: Mutex<Option<Channel>>,
    /// Names may be cached (the kernel takes epoch notifications).
    names: AtomicBool,
    /// Lookup counts the kernel holds, per FUSE inode (entry replies minus FORGETs): an inode
    /// not in here is not in the kernel.
    known: Mutex<HashMap<u64, u64>>,
    /// Directories (FUSE inodes) whose names were handed out since the last epoch bump.
    parents: Mutex<HashSet<u64>>,
    /// FUSE inodes whose pages the kernel may hold from before this node lost their lock.
    unverified: Mutex<HashSet<u64>>,
    pub counts: RequestCounts,
}

impl KernelCache {
    pub fn new(clustered: bool, root: u64) -> KernelCache {
        KernelCache {
            clustered,
            root,
            channel: Mutex::new(None),
            names: AtomicBool::new(!clustered),
            known: Mutex::default(),
            parents: Mutex::default(),
            unverified: Mutex::default(),
            counts: RequestCounts::default(),
        }
    }

    /// The mounted session's channel: invalidations go through it from now on. With `epoch`
    /// (a descriptor of the session's /dev/fuse) whose epoch notification the kernel takes,
    /// names are cached too.
    pub fn bind(&self, notifier: Notifier, epoch: Option<File>) {
        let epoch = epoch.filter(|f| match inc_epoch(f) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("the kernel takes no FUSE epoch notification ({e}): names are not cached");
                false
            }
        });
        self.names.store(!self.clustered || epoch.is_some(), Ordering::SeqCst);
        *self.channel.lock() = Some(Channel { notifier, epoch });
    }

    /// The session ends: no more notifications (and our descriptor of /dev/fuse is closed).
    pub fn unbind(&self) {
        *self.channel.lock() = None;
    }

    /// The name TTL of an entry replied under directory `parent` (a FUSE inode). Called before
    /// the request takes its locks: a loss of `parent`'s lock from then on bumps the epoch.
    pub fn name_ttl(&self, parent: u64) -> Duration {
        if !self.names.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        if self.clustered {
            self.parents.lock().insert(parent);
        }
        TTL
    }

    /// The attribute TTL of a LOOKUP reply for `ino`, which the kernel holds once more.
    pub fn looked_up(&self, ino: u64) -> Duration {
        if !self.clustered {
            return TTL;
        }
        let mut known = self.known.lock();
        let n = known.entry(ino).or_insert(0);
        *n += 1;
        if *n > 1 || ino == 1 {
            TTL
        } else {
            Duration::ZERO
        }
    }

    /// The attribute TTL of a reply that makes or links an entry for `ino` (CREATE, MKDIR…),
    /// which the kernel holds once more.
    pub fn handed_out(&self, ino: u64) -> Duration {
        if !self.clustered {
            return TTL;
        }
        *self.known.lock().entry(ino).or_insert(0) += 1;
        Duration::ZERO
    }

    /// The attribute TTL of a GETATTR reply.
    pub fn attr_ttl(&self) -> Duration {
        TTL
    }

    /// The attribute TTL of a SETATTR reply.
    pub fn changed_ttl(&self) -> Duration {
        if self.clustered {
            Duration::ZERO
        } else {
            TTL
        }
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if !self.clustered {
            return;
        }
        let mut known = self.known.lock();
        if let Some(c) = known.get_mut(&ino) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                known.remove(&ino);
                self.unverified.lock().remove(&ino);
            }
        }
    }

    /// This node is losing read rights on the metadata lock of inode block `blkno`: what the
    /// kernel caches under it goes. Called from the downconvert callback, before the lock goes,
    /// never from a FUSE request; takes no lock a request holds.
    pub fn lost(&self, blkno: u64) {
        let ino = if blkno == self.root { 1 } else { blkno };
        let attrs = ino == 1 || self.known.lock().contains_key(&ino);
        let names = {
            let mut parents = self.parents.lock();
            let had = parents.contains(&ino);
            if had {
                parents.clear();
            }
            had
        };
        if !attrs && !names {
            return;
        }
        if attrs {
            self.unverified.lock().insert(ino);
        }
        let channel = self.channel.lock();
        let Some(ch) = channel.as_ref() else { return };
        if attrs {
            if let Err(e) = ch.notifier.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!(ino, "invalidating the kernel's attributes: {e}");
            }
        }
        if let (true, Some(f)) = (names, &ch.epoch) {
            if let Err(e) = inc_epoch(f) {
                tracing::warn!("invalidating the kernel's names: {e}");
            }
        }
    }

    /// Whether the kernel may hold pages of `ino` from before this node last lost the file's
    /// lock (a read may have checked them since; then telling it costs a re-read); answered
    /// true once per loss (see the module's comment).
    pub fn take_unverified(&self, ino: u64) -> bool {
        self.unverified.lock().remove(&ino)
    }
}

/// Sends FUSE_NOTIFY_INC_EPOCH: a bare fuse_out_header (len, notification code as error,
/// unique 0).
fn inc_epoch(mut dev: &File) -> std::io::Result<()> {
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
    dev.write_all(&msg)
}
