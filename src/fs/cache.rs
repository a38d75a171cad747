//! The metadata buffer cache and the running transaction.
//!
//! Every metadata block the core reads or changes goes through here. A change lands in the
//! running transaction's dirty set and stays pinned there until `commit`, which hands the blocks
//! to the journal. Until they are checkpointed the journal holds their latest copies, and a read
//! that misses the cache asks it before the device, so it never sees an older copy.
//! Clean blocks live in an LRU bounded by the `cache=` mount option.

use super::error::{FsError, Result};
use crate::dev::BlockDevice;
use crate::format::extent::ExtentBlock;
use crate::format::group::GroupDesc;
use crate::format::inode::Inode;
use lru::LruCache;
use std::collections::BTreeMap;
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
    /// Whether this node may change metadata now: always on a single-node mount; on a cluster
    /// mount only while it holds the metadata lock exclusive.
    exclusive: bool,
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
            exclusive: true,
            sink,
            undo: BTreeMap::new(),
        }
    }

    pub fn set_read_only(&mut self, ro: bool) {
        self.read_only = ro;
    }

    /// See `exclusive`: a write while not exclusive fails with [`FsError::NeedExclusive`].
    pub fn set_exclusive(&mut self, ex: bool) {
        self.exclusive = ex;
    }

    /// Forgets every clean block: another node may change them once this node gives up its
    /// cluster lock. Dirty and logged blocks must have been checkpointed first.
    pub fn drop_clean(&mut self) {
        self.clean.clear();
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn dev(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// A copy of block `blkno`, newest version first.
    pub fn read(&mut self, blkno: u64) -> Result<Vec<u8>> {
        if let Some(b) = self.dirty.get(&blkno) {
            return Ok(b.clone());
        }
        if let Some(b) = self.clean.get(&blkno) {
            return Ok(b.clone());
        }
        if let Some(b) = self.sink.as_ref().and_then(|s| s.pending(blkno)) {
            let b = b.to_vec();
            self.clean.put(blkno, b.clone());
            return Ok(b);
        }
        if blkno >= self.total_blocks {
            return Err(FsError::Corrupt {
                blkno,
                what: format!("block past the end of the volume ({} blocks)", self.total_blocks),
            });
        }
        let mut buf = vec![0u8; self.block_size];
        self.dev.read_block(blkno, &mut buf)?;
        self.clean.put(blkno, buf.clone());
        Ok(buf)
    }

    /// Replaces block `blkno` in the running transaction.
    pub fn write(&mut self, blkno: u64, data: Vec<u8>) -> Result<()> {
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        if !self.exclusive {
            return Err(FsError::NeedExclusive);
        }
        if blkno >= self.total_blocks || data.len() != self.block_size {
            return Err(FsError::Corrupt { blkno, what: "write of a block outside the volume".into() });
        }
        self.clean.pop(&blkno);
        let before = self.dirty.insert(blkno, data);
        self.undo.entry(blkno).or_insert(before);
        Ok(())
    }

    /// Forgets a block that is no longer metadata (freed), so a stale copy is never written.
    pub fn forget(&mut self, blkno: u64) {
        self.clean.pop(&blkno);
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
    /// Returns whether the operation had changed anything.
    pub fn abort_op(&mut self) -> bool {
        let undo = std::mem::take(&mut self.undo);
        let changed = !undo.is_empty();
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
        changed
    }

    pub fn read_inode(&mut self, blkno: u64) -> Result<Inode> {
        let buf = self.read(blkno)?;
        let inode = Inode::decode(&buf, blkno)?;
        inode.check_identity(blkno, self.fs_generation)?;
        Ok(inode)
    }

    pub fn write_inode(&mut self, inode: &Inode) -> Result<()> {
        let mut b = vec![0u8; self.block_size];
        inode.encode(&mut b);
        self.write(inode.blkno, b)
    }

    pub fn read_group(&mut self, blkno: u64) -> Result<GroupDesc> {
        let gd = GroupDesc::decode(&self.read(blkno)?, blkno)?;
        gd.check_identity(blkno, self.fs_generation)?;
        Ok(gd)
    }

    pub fn write_group(&mut self, gd: &GroupDesc) -> Result<()> {
        let mut b = vec![0u8; self.block_size];
        gd.encode(&mut b);
        self.write(gd.blkno, b)
    }

    pub fn read_extent_block(&mut self, blkno: u64) -> Result<ExtentBlock> {
        let eb = ExtentBlock::decode(&self.read(blkno)?, blkno)?;
        eb.check_identity(blkno, self.fs_generation)?;
        Ok(eb)
    }

    pub fn write_extent_block(&mut self, eb: &ExtentBlock) -> Result<()> {
        let mut b = vec![0u8; self.block_size];
        eb.encode(&mut b);
        self.write(eb.blkno, b)
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
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
            self.clean.put(blkno, data);
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
        Ok(())
    }
}
