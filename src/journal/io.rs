//! Block I/O of the journal: log blocks through the journal map, the superblock, and blocks
//! written in place. Device errors come back naming the block.

use super::{Journal, JournalError, Result};
use crate::format::jbd2::SUPERBLOCK_SIZE;

impl Journal {
    fn fs_of(&self, jblk: u64) -> Result<u64> {
        self.map.fs_block(jblk).ok_or(JournalError::Unmapped { jblk, mapped: self.map.contiguous_len() })
    }

    /// Reads journal block `jblk`.
    pub(super) fn read_jblock(&self, jblk: u64, buf: &mut [u8]) -> Result<u64> {
        let fs = self.fs_of(jblk)?;
        self.dev.read_block(fs, buf).map_err(|source| JournalError::Io {
            what: format!("reading journal block {jblk} (fs block {fs})"),
            source,
        })?;
        Ok(fs)
    }

    /// Writes consecutive journal blocks starting at `first` (no wrap inside `data`), one device
    /// write per run of consecutive filesystem blocks.
    pub(super) fn write_jblocks(&self, first: u64, data: &[u8]) -> Result<()> {
        let bs = self.bs as u64;
        let total = data.len() as u64 / bs;
        let mut done = 0u64;
        while done < total {
            let jblk = first + done;
            let fs = self.fs_of(jblk)?;
            let n = self.map.contiguous_from(jblk, total - done).max(1);
            let bytes = &data[(done * bs) as usize..((done + n) * bs) as usize];
            self.dev.write_at(bytes, fs * bs).map_err(|source| JournalError::Io {
                what: format!("writing journal blocks {jblk}..{} (fs block {fs})", jblk + n),
                source,
            })?;
            done += n;
        }
        Ok(())
    }

    /// The superblock's bytes: journal block 0, and block 1 too with 512-byte blocks (§13.1).
    pub(super) fn read_superblock_bytes(&self) -> Result<Vec<u8>> {
        let n = SUPERBLOCK_SIZE.div_ceil(self.bs);
        let mut buf = vec![0u8; n * self.bs];
        for (j, chunk) in buf.chunks_mut(self.bs).enumerate() {
            self.read_jblock(j as u64, chunk)?;
        }
        Ok(buf)
    }

    /// Writes `self.sb` and flushes: the superblock update is durable on return.
    pub(super) fn write_superblock(&mut self) -> Result<()> {
        self.store_superblock()?;
        self.flush("the journal superblock")
    }

    /// Writes `self.sb`, for the caller's next flush to make durable.
    pub(super) fn store_superblock(&mut self) -> Result<()> {
        let n = SUPERBLOCK_SIZE.div_ceil(self.bs);
        let mut buf = vec![0u8; n * self.bs];
        self.sb.encode(&mut buf);
        self.write_jblocks(0, &buf)
    }

    /// Writes consecutive blocks in place from `fs_blkno` (checkpoint or replay).
    pub(super) fn write_in_place(&self, fs_blkno: u64, data: &[u8]) -> Result<()> {
        self.dev.write_at(data, fs_blkno * self.bs as u64).map_err(|source| JournalError::Io {
            what: format!("writing fs blocks {fs_blkno}..{} in place", fs_blkno + (data.len() / self.bs) as u64),
            source,
        })
    }

    pub(super) fn flush(&self, after: &str) -> Result<()> {
        self.dev.flush().map_err(|source| JournalError::Io { what: format!("flushing after {after}"), source })
    }

    /// Checks that `fs_blkno` can be written in place: inside the device, outside the journal.
    pub(super) fn target_problem(&self, fs_blkno: u64) -> Option<String> {
        let dev_blocks = self.dev.size() / self.bs as u64;
        if fs_blkno >= dev_blocks {
            return Some(format!("is past the end of the device ({dev_blocks} blocks)"));
        }
        if self.map.contains_fs_block(fs_blkno) {
            return Some("belongs to the journal itself".into());
        }
        None
    }
}
