//! The metadata buffer cache and the running transaction.
//!
//! Every metadata block the core reads or changes goes through here. A change lands in the
//! running transaction's dirty set and stays pinned there until `commit`, which hands the blocks
//! to the journal. Until they are checkpointed the journal holds their latest copies, and a read
//! that misses the cache asks it before the device, so it never sees an older copy.
//! Clean blocks live in an LRU bounded by the `cache=` mount option.
//!
//! Every block is read and written for an owner (the inode or allocator it belongs to): on a
//! cluster mount the owner's covering lock must be held (`rights`), and a downconvert drops
//! exactly the blocks of the inode whose lock goes (`drop_owner`).

use super::error::{FsError, Result};
use super::lock::LockMode;
use super::rights::Rights;
use crate::dev::BlockDevice;
use crate::format::extent::ExtentBlock;
use crate::format::group::GroupDesc;
use crate::format::inode::Inode;
use lru::LruCache;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

/// Where committed metadata goes: the journal, or the device in place.
pub trait MetaSink: Send {
    /// Makes one transaction's blocks durable (in the log or in place).
    fn commit(&mut self, blocks: Vec<(u64, Vec<u8>)>) -> Result<()>;
    /// Writes committed blocks in place and frees their log space.
    fn checkpoint(&mut self) -> Result<()>;
    /// The latest committed copy of a block not yet written in place.
    fn pending(&self, blkno: u64) -> Option<&[u8]>;
    /// How many committed blocks wait for a checkpoint.
    fn pending_blocks(&self) -> usize;
    /// Largest transaction the sink takes, in blocks.
    fn max_blocks(&self) -> usize {
        usize::MAX
    }
}

pub struct MetaCache {
    dev: Arc<dyn BlockDevice>,
    block_size: usize,
    total_blocks: u64,
    fs_generation: u32,
    clean: LruCache<u64, Vec<u8>>,
    /// Changed in the running transaction.
    dirty: BTreeMap<u64, Vec<u8>>,
    /// None on a read-only mount.
    sink: Option<Box<dyn MetaSink>>,
    read_only: bool,
    /// The owner each cached block was read or written for. A clean block asked for by another
    /// owner is read again: its cluster was freed and reused since, maybe by another node.
    owners: HashMap<u64, u64>,
    /// The blocks of each owner in `owners`: giving up one owner's lock looks at its blocks
    /// only (a node gives up idle locks all the time when it touches many inodes).
    blocks_of: HashMap<u64, HashSet<u64>>,
    /// Which lock covers each owner's blocks, and which the running request holds.
    rights: Rights,
    /// Owners with blocks changed since the last checkpoint (running or logged, not in place).
    unwritten: HashSet<u64>,
    /// Undo log of the current operation: each block's dirty copy before the operation first
    /// changed it (None: it was not dirty). `abort_op` puts these back.
    undo: BTreeMap<u64, Option<Vec<u8>>>,
}

impl MetaCache {
    pub fn new(
        dev: Arc<dyn BlockDevice>,
        block_size: usize,
        total_blocks: u64,
        fs_generation: u32,
        cache_bytes: usize,
        sink: Option<Box<dyn MetaSink>>,
    ) -> Self {
        let cap = NonZeroUsize::new((cache_bytes / block_size).max(64)).unwrap_or(NonZeroUsize::MIN);
        MetaCache {
            dev,
            block_size,
            total_blocks,
            fs_generation,
            clean: LruCache::new(cap),
            dirty: BTreeMap::new(),
            read_only: sink.is_none(),
            owners: HashMap::new(),
            blocks_of: HashMap::new(),
            rights: Rights::default(),
            unwritten: HashSet::new(),
            sink,
            undo: BTreeMap::new(),
        }
    }

    pub fn set_read_only(&mut self, ro: bool) {
        self.read_only = ro;
    }

    pub fn set_rights(&mut self, rights: Rights) {
        self.rights = rights;
    }
    pub fn rights(&mut self) -> &mut Rights {
        &mut self.rights
    }

    /// Ok when the running request may use `owner`'s blocks at `mode` (see `rights`).
    pub fn check(&mut self, owner: u64, mode: LockMode) -> Result<()> {
        self.rights.check(owner, mode)
    }

    /// Whether an inode at `blkno` would have its cluster lock mastered here (see `rights`).
    pub fn is_local(&self, blkno: u64) -> bool {
        self.rights.is_local(blkno)
    }

    /// Forgets every clean block (another node may change any of them now). Dirty and logged
    /// blocks must have been checkpointed first.
    pub fn drop_clean(&mut self) {
        self.clean.clear();
        let dirty = &self.dirty;
        self.owners.retain(|b, _| dirty.contains_key(b));
        self.blocks_of.clear();
        for (&b, &o) in &self.owners {
            self.blocks_of.entry(o).or_default().insert(b);
        }
    }

    /// Forgets the clean blocks of `owner`, whose lock this node gives up (checkpointed first).
    pub fn drop_owner(&mut self, owner: u64) {
        let Some(blocks) = self.blocks_of.get(&owner) else { return };
        let gone: Vec<u64> = blocks.iter().copied().filter(|b| !self.dirty.contains_key(b)).collect();
        for b in gone {
            self.clean.pop(&b);
            self.clear_owner(b);
        }
    }

    /// Records that `blkno` is `owner`'s.
    fn set_owner(&mut self, blkno: u64, owner: u64) {
        if let Some(old) = self.owners.insert(blkno, owner).filter(|&old| old != owner) {
            self.unlist(old, blkno);
        }
        self.blocks_of.entry(owner).or_default().insert(blkno);
    }

    /// Forgets whose `blkno` is.
    fn clear_owner(&mut self, blkno: u64) {
        if let Some(owner) = self.owners.remove(&blkno) {
            self.unlist(owner, blkno);
        }
    }

    fn unlist(&mut self, owner: u64, blkno: u64) {
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.blocks_of.entry(owner) {
            e.get_mut().remove(&blkno);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Keeps a clean copy of `blkno` for `owner`, forgetting the owner of the block it evicts.
    fn keep_clean(&mut self, blkno: u64, owner: u64, data: Vec<u8>) {
        self.set_owner(blkno, owner);
        if let Some((old, _)) = self.clean.push(blkno, data) {
            if old != blkno && !self.dirty.contains_key(&old) {
                self.clear_owner(old);
            }
        }
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn dev(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// A copy of block `blkno` of `owner`, newest version first.
    pub fn read(&mut self, blkno: u64, owner: u64) -> Result<Vec<u8>> {
        self.rights.check(owner, LockMode::Pr)?;
        if let Some(b) = self.dirty.get(&blkno) {
            return Ok(b.clone());
        }
        if self.owners.get(&blkno) == Some(&owner) {
            if let Some(b) = self.clean.get(&blkno) {
                return Ok(b.clone());
            }
        }
        let buf = match self.sink.as_ref().and_then(|s| s.pending(blkno)) {
            Some(b) => b.to_vec(),
            None => {
                if blkno >= self.total_blocks {
                    return Err(FsError::Corrupt {
                        blkno,
                        what: format!("block past the end of the volume ({} blocks)", self.total_blocks),
                    });
                }
                let mut buf = vec![0u8; self.block_size];
                self.dev.read_block(blkno, &mut buf)?;
                buf
            }
        };
        self.keep_clean(blkno, owner, buf.clone());
        Ok(buf)
    }

    /// Replaces block `blkno` of `owner` in the running transaction.
    pub fn write(&mut self, blkno: u64, owner: u64, data: Vec<u8>) -> Result<()> {
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        self.rights.check(owner, LockMode::Ex)?;
        if blkno >= self.total_blocks || data.len() != self.block_size {
            return Err(FsError::Corrupt { blkno, what: "write of a block outside the volume".into() });
        }
        self.clean.pop(&blkno);
        self.set_owner(blkno, owner);
        self.unwritten.insert(owner);
        let before = self.dirty.insert(blkno, data);
        self.undo.entry(blkno).or_insert(before);
        Ok(())
    }

    /// Forgets a block that is no longer metadata (freed), so a stale copy is never written.
    pub fn forget(&mut self, blkno: u64) {
        self.clean.pop(&blkno);
        self.clear_owner(blkno);
        if let Some(before) = self.dirty.remove(&blkno) {
            self.undo.entry(blkno).or_insert(Some(before));
        }
    }

    /// An operation begins: its changes can be undone until the next `begin_op`.
    pub fn begin_op(&mut self) {
        self.undo.clear();
    }

    /// Undoes every change of the current operation (it failed part-way), so a half-done
    /// operation never reaches the journal.
    pub fn abort_op(&mut self) {
        let undo = std::mem::take(&mut self.undo);
        for (blkno, before) in undo {
            self.clean.pop(&blkno);
            match before {
                Some(b) => {
                    self.dirty.insert(blkno, b);
                }
                None => {
                    self.dirty.remove(&blkno);
                }
            }
        }
    }

    pub fn read_inode(&mut self, blkno: u64) -> Result<Inode> {
        let buf = self.read(blkno, blkno)?;
        let inode = Inode::decode(&buf, blkno)?;
        inode.check_identity(blkno, self.fs_generation)?;
        Ok(inode)
    }

    pub fn write_inode(&mut self, inode: &Inode) -> Result<()> {
        let mut b = vec![0u8; self.block_size];
        inode.encode(&mut b);
        self.write(inode.blkno, inode.blkno, b)
    }

    /// A group descriptor of allocator `alloc`.
    pub fn read_group(&mut self, blkno: u64, alloc: u64) -> Result<GroupDesc> {
        let gd = GroupDesc::decode(&self.read(blkno, alloc)?, blkno)?;
        gd.check_identity(blkno, self.fs_generation)?;
        Ok(gd)
    }

    pub fn write_group(&mut self, gd: &GroupDesc) -> Result<()> {
        let mut b = vec![0u8; self.block_size];
        gd.encode(&mut b);
        self.write(gd.blkno, gd.parent_dinode, b)
    }

    /// An extent block of inode `owner`'s tree.
    pub fn read_extent_block(&mut self, blkno: u64, owner: u64) -> Result<ExtentBlock> {
        let eb = ExtentBlock::decode(&self.read(blkno, owner)?, blkno)?;
        eb.check_identity(blkno, self.fs_generation)?;
        Ok(eb)
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Puts `owner`'s changes in place on the device, durably (its lock is about to go: the next
    /// holder reads them there), with as little as that takes: nothing when none changed since
    /// the last checkpoint; a commit only when the running transaction has some of its blocks
    /// (the other owners' stay in it); then a checkpoint, which empties the log — a replay after
    /// a crash must never write an old copy over what the next holder changes.
    pub fn write_back(&mut self, owner: u64) -> Result<()> {
        if !self.unwritten.contains(&owner) {
            return Ok(());
        }
        // A dirty block without an owner (restored by an undo) may be anyone's.
        if self.dirty.keys().any(|b| self.owners.get(b).is_none_or(|&o| o == owner)) {
            self.commit()?;
        }
        if let Some(sink) = self.sink.as_mut() {
            sink.checkpoint()?;
        }
        self.unwritten = self.dirty.keys().filter_map(|b| self.owners.get(b).copied()).collect();
        Ok(())
    }

    /// True when the running transaction should be committed before it grows further.
    pub fn transaction_full(&self) -> bool {
        self.sink.as_ref().is_some_and(|s| self.dirty.len() >= s.max_blocks())
    }

    /// Commits the running transaction. The sink orders it after the data already written
    /// (ordered mode: data before the metadata that points at it).
    pub fn commit(&mut self) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let sink = self.sink.as_mut().ok_or(FsError::ReadOnly)?;
        self.undo.clear();
        let blocks: Vec<(u64, Vec<u8>)> = std::mem::take(&mut self.dirty).into_iter().collect();
        sink.commit(blocks.clone())?;
        for (blkno, data) in blocks {
            // A block forgotten and then restored by an undo has no owner: not kept.
            if let Some(&owner) = self.owners.get(&blkno) {
                self.keep_clean(blkno, owner, data);
            }
        }
        Ok(())
    }

    /// True when so many committed blocks wait in the journal's memory that a checkpoint is due
    /// (it bounds the daemon's memory, whatever the commit interval).
    pub fn checkpoint_due(&self) -> bool {
        self.sink.as_ref().is_some_and(|s| s.pending_blocks() * self.block_size >= 8 << 20)
    }

    /// Makes every write so far durable on the device.
    pub fn flush(&mut self) -> Result<()> {
        self.dev.flush()?;
        Ok(())
    }

    /// Commits, then writes everything committed in place.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.commit()?;
        if let Some(sink) = self.sink.as_mut() {
            sink.checkpoint()?;
        }
        self.unwritten.clear();
        Ok(())
    }
}
