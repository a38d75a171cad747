//! The per-slot truncate log, `ocfs2_truncate_log` in id2 (ocfs2-format.md §7.2).

use super::bytes::*;
use super::error::{At, Result};

pub const TL_HEADER: usize = 0x08;
pub const TL_REC_SIZE: usize = 8;

/// Records that fit in the inode: (bs − 0xC8) / 8.
pub fn tl_recs_per_inode(block_size: usize) -> u16 {
    ((block_size - 0xC8) / TL_REC_SIZE) as u16
}

/// Clusters freed by a truncate whose global-bitmap bits are still set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TruncateRec {
    pub start: u32,
    pub clusters: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateLog {
    pub count: u16,
    /// The `tl_used` records in use.
    pub recs: Vec<TruncateRec>,
}

impl TruncateLog {
    pub fn decode(b: &[u8], max_count: u16, at: At) -> Result<Self> {
        at.need_len(b, TL_HEADER)?;
        let count = le16(b, 0);
        let used = le16(b, 2);
        at.at_most("tl_count", count as u64, max_count as u64)?;
        at.at_most("tl_used", used as u64, count as u64)?;
        at.need_len(b, TL_HEADER + count as usize * TL_REC_SIZE)?;
        let recs = (0..used as usize)
            .map(|i| {
                let r = TL_HEADER + i * TL_REC_SIZE;
                TruncateRec { start: le32(b, r), clusters: le32(b, r + 4) }
            })
            .collect();
        Ok(TruncateLog { count, recs })
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_le16(b, 0, self.count);
        put_le16(b, 2, self.recs.len() as u16);
        put_le32(b, 4, 0);
        for i in 0..self.count as usize {
            let r = TL_HEADER + i * TL_REC_SIZE;
            let rec = self.recs.get(i).copied().unwrap_or_default();
            put_le32(b, r, rec.start);
            put_le32(b, r + 4, rec.clusters);
        }
    }
}
