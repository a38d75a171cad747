//! The JBD2 journal inside one slot's `journal:NNNN` (ocfs2-format.md §13): writing
//! transactions ([`commit`]), writing them in place ([`checkpoint`]), and replaying a log left by a
//! crash ([`recovery`]). This layer knows only the block device and the on-disk format; the
//! filesystem core decides when to use it, and holds it behind its own lock (plain sync code).
//!
//! Whether a slot's log is replayed at all is the caller's decision: `JOURNAL_DIRTY_FL` in the
//! journal inode is the authoritative "needs recovery" flag (§13.8). With the flag set, call
//! [`Journal::recover`]; with it clear but `s_start` ≠ 0 (what mkfs leaves), call
//! [`Journal::discard`]. Until one of them has run, a journal whose superblock names a log
//! refuses to commit.

mod checkpoint;
mod commit;
mod io;
pub mod map;
mod recovery;
pub mod revoke;
#[cfg(test)]
mod testdev;

use crate::dev::{BlockDevice, DevError};
use crate::format::jbd2::*;
use crate::format::FormatError;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use map::{JournalMap, MapRun};
pub use recovery::RecoveryInfo;

/// JBD2 refuses journals shorter than this (kernel `JBD2_MIN_JOURNAL_BLOCKS`).
pub const MIN_JOURNAL_BLOCKS: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{what}: {source}")]
    Io { what: String, source: DevError },
    #[error("journal block {jblk} (fs block {fs_blkno}): {source}")]
    Format { jblk: u64, fs_blkno: u64, source: FormatError },
    #[error("journal superblock: {0}")]
    BadSuperblock(String),
    #[error("journal has features o2fs does not support: {0}")]
    UnsupportedFeatures(String),
    #[error("journal block {jblk} is not mapped by the journal file's extents ({mapped} blocks mapped from 0)")]
    Unmapped { jblk: u64, mapped: u64 },
    #[error("transaction {tid} (tag in journal block {jblk}): fs block {fs_blkno} {why}")]
    BadTarget { tid: u32, jblk: u64, fs_blkno: u64, why: String },
    #[error("fs block {fs_blkno}: {why}")]
    BadBlock { fs_blkno: u64, why: String },
    #[error("transaction needs {blocks} log blocks; the limit is {limit} (a quarter of the log)")]
    TooLarge { blocks: u64, limit: u64 },
    #[error("empty transaction: no blocks and no revokes")]
    Empty,
    #[error(
        "the journal names a log at block {start} (transaction {sequence}) that was neither recovered nor discarded"
    )]
    NotRecovered { start: u32, sequence: u32 },
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("the journal was aborted by an earlier write error; reopen it")]
    Aborted,
}

pub type Result<T> = std::result::Result<T, JournalError>;

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub transactions: u64,
    /// Metadata block copies logged (not counting descriptor, revoke and commit blocks).
    pub blocks_logged: u64,
    /// Every journal block written by commits, including descriptor, revoke and commit blocks.
    pub log_blocks_written: u64,
    pub revokes_logged: u64,
    pub checkpoints: u64,
    pub blocks_checkpointed: u64,
    /// Checkpoints forced by a commit that would have wrapped onto live transactions.
    pub forced_checkpoints: u64,
}

/// One slot's journal, opened on the device holding the volume.
pub struct Journal {
    dev: Arc<dyn BlockDevice>,
    map: JournalMap,
    bs: usize,
    sb: JournalSuperblock,
    /// The log named by the superblock at open time has been replayed or discarded (or there
    /// was none); only then may new transactions be written.
    loaded: bool,
    /// Next log block a transaction will be written at.
    head: u32,
    next_tid: u32,
    /// Log blocks held by transactions not yet checkpointed (from `sb.start` to `head`).
    used: u32,
    /// Latest committed contents of every block not yet written in place.
    dirty: BTreeMap<u64, Vec<u8>>,
    aborted: bool,
    stats: JournalStats,
}

impl Journal {
    /// Reads and validates the journal superblock at journal block 0. Refuses, by name, every
    /// feature other than REVOKE and 64BIT (§13.2), v1 superblocks, a block size other than
    /// `block_size`, a log shorter than 1024 blocks, and a map that does not cover `s_maxlen`
    /// blocks inside the device.
    pub fn open(dev: Arc<dyn BlockDevice>, map: JournalMap, block_size: usize) -> Result<Journal> {
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(JournalError::BadSuperblock(format!(
                "block size {block_size} is not a power of two in 512..=65536"
            )));
        }
        let sb_blocks = SUPERBLOCK_SIZE.div_ceil(block_size) as u64;
        let mapped = map.contiguous_len();
        if mapped < sb_blocks {
            return Err(JournalError::Unmapped { jblk: mapped, mapped });
        }
        let mut j = Journal {
            dev,
            map,
            bs: block_size,
            sb: JournalSuperblock::default(),
            loaded: false,
            head: 0,
            next_tid: 0,
            used: 0,
            dirty: BTreeMap::new(),
            aborted: false,
            stats: JournalStats::default(),
        };
        let buf = j.read_superblock_bytes()?;
        let sb = JournalSuperblock::decode(&buf, 0).map_err(|e| JournalError::BadSuperblock(e.to_string()))?;
        j.validate(&sb)?;
        j.head = sb.first;
        j.next_tid = sb.sequence;
        j.loaded = sb.start == 0;
        j.sb = sb;
        Ok(j)
    }

    fn validate(&self, sb: &JournalSuperblock) -> Result<()> {
        let bad = |s: String| Err(JournalError::BadSuperblock(s));
        if sb.blocktype != BLOCKTYPE_SUPERBLOCK_V2 {
            return bad(format!("h_blocktype {} is not 4 (v2, the only version OCFS2 uses)", sb.blocktype));
        }
        if sb.block_size as usize != self.bs {
            return bad(format!("s_blocksize {} differs from the volume's block size {}", sb.block_size, self.bs));
        }
        if let Some((compat, incompat, ro)) = sb.unsupported_features() {
            return Err(JournalError::UnsupportedFeatures(feature_names(compat, incompat, ro)));
        }
        if sb.maxlen < MIN_JOURNAL_BLOCKS {
            return bad(format!("s_maxlen {} is below JBD2's minimum of {MIN_JOURNAL_BLOCKS} blocks", sb.maxlen));
        }
        if (sb.first as usize) * self.bs < SUPERBLOCK_SIZE {
            return bad(format!("s_first {} overlaps the 1024-byte superblock", sb.first));
        }
        if sb.start != 0 && sb.start < sb.first {
            return bad(format!("s_start {} is below s_first {}", sb.start, sb.first));
        }
        let mapped = self.map.contiguous_len();
        if mapped < sb.maxlen as u64 {
            return Err(JournalError::Unmapped { jblk: mapped, mapped });
        }
        let dev_blocks = self.dev.size() / self.bs as u64;
        for r in self.map.runs() {
            if r.fs_blkno.checked_add(r.len).is_none_or(|end| end > dev_blocks) {
                return bad(format!(
                    "journal blocks {}..{} map to fs blocks {}.. past the end of the device ({dev_blocks} blocks)",
                    r.first_jblk,
                    r.first_jblk.saturating_add(r.len),
                    r.fs_blkno
                ));
            }
        }
        Ok(())
    }

    /// `s_start` ≠ 0: the superblock names a log that has not been replayed or discarded.
    pub fn needs_recovery(&self) -> bool {
        !self.loaded
    }

    /// Nothing is waiting to be checkpointed and the superblock says the log is empty.
    pub fn is_empty(&self) -> bool {
        self.sb.start == 0 && self.dirty.is_empty()
    }

    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    pub fn superblock(&self) -> &JournalSuperblock {
        &self.sb
    }

    pub fn block_size(&self) -> usize {
        self.bs
    }

    /// ID the next committed transaction will get.
    pub fn next_tid(&self) -> u32 {
        self.next_tid
    }

    /// Log blocks in `[s_first, s_maxlen)`.
    pub fn log_capacity(&self) -> u32 {
        self.sb.maxlen - self.sb.first
    }

    /// Log blocks held by transactions not yet checkpointed.
    pub fn log_used(&self) -> u32 {
        self.used
    }

    /// The latest committed contents of `fs_blkno` if it has not been checkpointed yet (a
    /// buffer cache above must prefer this to the device's copy).
    pub fn pending(&self, fs_blkno: u64) -> Option<&[u8]> {
        self.dirty.get(&fs_blkno).map(Vec::as_slice)
    }

    /// Filesystem blocks with committed contents not yet written in place.
    pub fn pending_blocks(&self) -> usize {
        self.dirty.len()
    }

    fn check_usable(&self) -> Result<()> {
        if self.aborted {
            return Err(JournalError::Aborted);
        }
        Ok(())
    }

    /// Log position after `pos`, wrapping from `s_maxlen − 1` to `s_first` (§13.1).
    fn next_pos(&self, pos: u32) -> u32 {
        if pos + 1 >= self.sb.maxlen {
            self.sb.first
        } else {
            pos + 1
        }
    }
}

/// Names the feature bits in `(compat, incompat, ro_compat)`.
fn feature_names(compat: u32, incompat: u32, ro: u32) -> String {
    let mut names = Vec::new();
    let mut named = |word: &str, bits: u32, table: &[(u32, &str)]| {
        for bit in (0..32).map(|i| 1u32 << i).filter(|b| bits & b != 0) {
            match table.iter().find(|(b, _)| *b == bit) {
                Some((_, n)) => names.push(n.to_string()),
                None => names.push(format!("{word} {bit:#x}")),
            }
        }
    };
    named("compat", compat, &[(FEATURE_COMPAT_CHECKSUM, "CHECKSUM")]);
    named(
        "incompat",
        incompat,
        &[
            (FEATURE_INCOMPAT_REVOKE, "REVOKE"),
            (FEATURE_INCOMPAT_64BIT, "64BIT"),
            (FEATURE_INCOMPAT_ASYNC_COMMIT, "ASYNC_COMMIT"),
            (FEATURE_INCOMPAT_CSUM_V2, "CSUM_V2"),
            (FEATURE_INCOMPAT_CSUM_V3, "CSUM_V3"),
            (FEATURE_INCOMPAT_FAST_COMMIT, "FAST_COMMIT"),
        ],
    );
    named("ro_compat", ro, &[]);
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::testdev::Layout;
    use super::*;
    use crate::format::bytes::put_be32;

    fn edit_sb(lay: &Layout, f: impl Fn(&mut JournalSuperblock)) -> Result<Journal> {
        let dev = lay.device(0, 1);
        let fs = lay.map().fs_block(0).unwrap_or(0);
        let blk = dev.block(fs, lay.bs);
        let mut sb = JournalSuperblock::decode(&blk, 0).unwrap();
        f(&mut sb);
        let mut out = vec![0u8; lay.bs];
        sb.encode(&mut out);
        dev.set_block(fs, &out);
        lay.open(&dev)
    }

    #[test]
    fn open_refuses_what_ocfs2_never_uses() {
        let lay = Layout::new(4096, false);
        assert!(edit_sb(&lay, |_| {}).is_ok());
        let e = edit_sb(&lay, |s| s.feature_incompat |= FEATURE_INCOMPAT_CSUM_V3 | FEATURE_INCOMPAT_ASYNC_COMMIT);
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("CSUM_V3") && msg.contains("ASYNC_COMMIT") && !msg.contains("REVOKE"), "{msg}");
        let msg = edit_sb(&lay, |s| s.feature_compat = FEATURE_COMPAT_CHECKSUM).err().unwrap().to_string();
        assert!(msg.contains("CHECKSUM"), "{msg}");
        let msg = edit_sb(&lay, |s| s.feature_ro_compat = 0x4).err().unwrap().to_string();
        assert!(msg.contains("ro_compat 0x4"), "{msg}");
        assert!(edit_sb(&lay, |s| s.feature_incompat = FEATURE_INCOMPAT_REVOKE | FEATURE_INCOMPAT_64BIT).is_ok());
        for (what, f) in [
            (
                "h_blocktype 3",
                Box::new(|s: &mut JournalSuperblock| s.blocktype = BLOCKTYPE_SUPERBLOCK_V1) as Box<dyn Fn(&mut _)>,
            ),
            ("s_blocksize", Box::new(|s: &mut JournalSuperblock| s.block_size = 1024)),
            ("minimum", Box::new(|s: &mut JournalSuperblock| s.maxlen = 1000)),
            ("not mapped", Box::new(|s: &mut JournalSuperblock| s.maxlen = 1025)),
        ] {
            let msg = edit_sb(&lay, f).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(what), "{what}: {msg}");
        }
        // Garbage where the superblock should be.
        let dev = lay.device(0, 1);
        let fs = lay.map().fs_block(0).unwrap_or(0);
        let mut blk = dev.block(fs, 4096);
        put_be32(&mut blk, 0, 0);
        dev.set_block(fs, &blk);
        assert!(matches!(lay.open(&dev), Err(JournalError::BadSuperblock(_))));
        // A map that leaves the device.
        let dev = lay.device(0, 1);
        let map = JournalMap::new(vec![(0, lay.fs_blocks, 1), (1, lay.device_blocks() - 10, 1023)]);
        assert!(Journal::open(dev, map, 4096).err().unwrap().to_string().contains("past the end"));
    }

    #[test]
    fn feature_names_cover_unknown_bits() {
        assert_eq!(feature_names(0x1, 0x8 | 0x40, 0), "CHECKSUM, CSUM_V2, incompat 0x40");
    }
}
