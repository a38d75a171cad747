//! Chain lists of allocator inodes (ocfs2-format.md §6.1).

use super::bytes::*;
use super::error::{At, Result};

pub const CHAIN_HEADER: usize = 0x10;
pub const CHAIN_REC_SIZE: usize = 16;

/// Chain records that fit in an inode's id2: (bs − 0xD0) / 16.
pub fn chain_recs_per_inode(block_size: usize) -> u16 {
    ((block_size - 0xD0) / CHAIN_REC_SIZE) as u16
}

/// One chain: the head group descriptor and the bit totals of all its groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainRec {
    pub free: u32,
    pub total: u32,
    pub blkno: u64,
}

/// `ocfs2_chain_list`: `recs` holds the `cl_next_free_rec` chains in use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainList {
    /// Clusters per group.
    pub cpg: u16,
    /// Bits per cluster (1 for the global bitmap, blocks per cluster for suballocators).
    pub bpc: u16,
    pub count: u16,
    pub recs: Vec<ChainRec>,
}

impl ChainList {
    pub fn decode(b: &[u8], max_count: u16, at: At) -> Result<Self> {
        at.need_len(b, CHAIN_HEADER)?;
        let count = le16(b, 4);
        let next_free = le16(b, 6);
        at.at_most("cl_count", count as u64, max_count as u64)?;
        at.at_most("cl_next_free_rec", next_free as u64, count as u64)?;
        at.need_len(b, CHAIN_HEADER + count as usize * CHAIN_REC_SIZE)?;
        let recs = (0..next_free as usize)
            .map(|i| {
                let r = CHAIN_HEADER + i * CHAIN_REC_SIZE;
                ChainRec { free: le32(b, r), total: le32(b, r + 4), blkno: le64(b, r + 8) }
            })
            .collect();
        Ok(ChainList { cpg: le16(b, 0), bpc: le16(b, 2), count, recs })
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_le16(b, 0, self.cpg);
        put_le16(b, 2, self.bpc);
        put_le16(b, 4, self.count);
        put_le16(b, 6, self.recs.len() as u16);
        put_le64(b, 8, 0);
        for i in 0..self.count as usize {
            let r = CHAIN_HEADER + i * CHAIN_REC_SIZE;
            let rec = self.recs.get(i).copied().unwrap_or_default();
            put_le32(b, r, rec.free);
            put_le32(b, r + 4, rec.total);
            put_le64(b, r + 8, rec.blkno);
        }
    }

    pub fn total_bits(&self) -> u64 {
        self.recs.iter().map(|r| r.total as u64).sum()
    }
    pub fn free_bits(&self) -> u64 {
        self.recs.iter().map(|r| r.free as u64).sum()
    }
}
