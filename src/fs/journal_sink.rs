//! The mount's link to its slot's JBD2 journal (ocfs2-format.md §13.8, §13.9): committed
//! metadata goes to the log, is checkpointed in place later, and the journal inode's dirty flag
//! says "replay me" while the volume is mounted.

use super::cache::MetaSink;
use super::error::{FsError, Result};
use super::volume::Volume;
use crate::format::inode::{Inode, JOURNAL_DIRTY_FL};
use crate::journal::{Journal, JournalMap};

impl From<crate::journal::JournalError> for FsError {
    fn from(e: crate::journal::JournalError) -> Self {
        FsError::Journal(e.to_string())
    }
}

/// Opens the journal of the journal inode at `blkno`.
pub fn open_journal(vol: &Volume, inode: &Inode) -> Result<Journal> {
    let leaves = vol.leaf_extents(inode)?;
    let map = JournalMap::from_extent_recs(&leaves, vol.geo.bpc());
    Ok(Journal::open(vol.dev.clone(), map, vol.block_size())?)
}

/// Writes the journal inode's dirty flag in place, durably (outside any transaction: it is what
/// tells a later mount or fsck whether the log must be replayed).
pub fn set_dirty_flag(vol: &Volume, blkno: u64, dirty: bool) -> Result<()> {
    let mut inode = vol.read_inode(blkno)?;
    let flags =
        if dirty { inode.journal_flags() | JOURNAL_DIRTY_FL } else { inode.journal_flags() & !JOURNAL_DIRTY_FL };
    inode.set_journal(flags, inode.journal_recovery_generation());
    let mut b = vec![0u8; vol.block_size()];
    inode.encode(&mut b);
    vol.write_block(blkno, &b)?;
    vol.dev.flush()?;
    Ok(())
}

/// Recovers a slot's journal when its inode says it is dirty: replay, bump the recovery
/// generation, clear the flag. A clean journal with stale log contents is discarded so its old
/// transaction IDs can never be mistaken for new ones. Returns true when something was replayed.
pub fn recover_slot(vol: &Volume, blkno: u64) -> Result<bool> {
    let inode = vol.read_inode(blkno)?;
    let mut journal = open_journal(vol, &inode)?;
    if inode.journal_flags() & JOURNAL_DIRTY_FL == 0 {
        if journal.needs_recovery() {
            journal.discard()?;
        }
        return Ok(false);
    }
    let info = journal.recover()?;
    tracing::info!(
        "journal inode {blkno}: replayed {} transactions ({} blocks)",
        info.transactions,
        info.blocks_replayed
    );
    let mut inode = vol.read_inode(blkno)?;
    inode.set_journal(inode.journal_flags() & !JOURNAL_DIRTY_FL, inode.journal_recovery_generation().wrapping_add(1));
    let mut b = vec![0u8; vol.block_size()];
    inode.encode(&mut b);
    vol.write_block(blkno, &b)?;
    vol.dev.flush()?;
    Ok(true)
}

/// Commits go to the log; checkpoints write them in place. A commit makes the file data written
/// before it durable too, before its commit block (data=ordered, whatever the mount option).
pub struct JournalSink {
    journal: Journal,
}

impl JournalSink {
    pub fn new(journal: Journal) -> Self {
        JournalSink { journal }
    }
}

impl MetaSink for JournalSink {
    fn commit(&mut self, blocks: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.journal.commit(blocks, Vec::new())?;
        Ok(())
    }
    fn checkpoint(&mut self) -> Result<()> {
        Ok(self.journal.checkpoint()?)
    }
    fn pending(&self, blkno: u64) -> Option<&[u8]> {
        self.journal.pending(blkno)
    }
    fn pending_blocks(&self) -> usize {
        self.journal.pending_blocks()
    }
    fn max_blocks(&self) -> usize {
        // The journal refuses transactions over a quarter of the log; stay well inside it
        // (descriptor blocks take room too).
        (self.journal.log_capacity() as usize / 8).max(16)
    }
}
