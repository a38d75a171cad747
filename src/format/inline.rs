//! Inline data, `ocfs2_inline_data` in id2 (ocfs2-format.md §9): small files and directories
//! live inside their inode block.

use super::bytes::*;
use super::error::{At, Result};

pub const INLINE_DATA_OFFSET: usize = 0x08;

/// Usable inline bytes: bs − 0xC8 (`id_count` must be exactly this).
pub fn inline_capacity(block_size: usize) -> u16 {
    (block_size - 0xC8) as u16
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineData {
    /// `id_count` bytes (data up to i_size, then whatever follows: zeros, or stale directory bytes).
    pub data: Vec<u8>,
}

impl InlineData {
    pub fn empty(block_size: usize) -> Self {
        InlineData { data: vec![0; inline_capacity(block_size) as usize] }
    }

    pub fn decode(b: &[u8], max_count: u16, at: At) -> Result<Self> {
        at.need_len(b, INLINE_DATA_OFFSET)?;
        let count = le16(b, 0);
        at.at_most("id_count", count as u64, max_count as u64)?;
        Ok(InlineData { data: slice(b, INLINE_DATA_OFFSET, count as usize).to_vec() })
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_le16(b, 0, self.data.len() as u16);
        put_le16(b, 2, 0);
        put_le32(b, 4, 0);
        put_bytes(b, INLINE_DATA_OFFSET, &self.data);
    }
}
