//! The per-slot local-alloc window, `ocfs2_local_alloc` in id2 (ocfs2-format.md §7.1).

use super::bytes::*;
use super::error::{At, Result};

pub const LA_BITMAP_OFFSET: usize = 0x10;

/// Bitmap bytes of a local alloc: bs − 0xD0.
pub fn la_bitmap_bytes(block_size: usize) -> u16 {
    (block_size - 0xD0) as u16
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAlloc {
    /// First global cluster of the window.
    pub bm_off: u32,
    /// Bitmap bytes (`la_size`).
    pub size: u16,
    /// `size` bytes; bit i ↔ cluster bm_off + i, set = handed out.
    pub bitmap: Vec<u8>,
}

impl LocalAlloc {
    pub fn empty(block_size: usize) -> Self {
        let size = la_bitmap_bytes(block_size);
        LocalAlloc { bm_off: 0, size, bitmap: vec![0; size as usize] }
    }

    pub fn decode(b: &[u8], max_size: u16, at: At) -> Result<Self> {
        at.need_len(b, LA_BITMAP_OFFSET)?;
        let size = le16(b, 4);
        at.at_most("la_size", size as u64, max_size as u64)?;
        at.need_len(b, LA_BITMAP_OFFSET + size as usize)?;
        Ok(LocalAlloc { bm_off: le32(b, 0), size, bitmap: slice(b, LA_BITMAP_OFFSET, size as usize).to_vec() })
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_le32(b, 0, self.bm_off);
        put_le16(b, 4, self.size);
        put_le16(b, 6, 0);
        put_le64(b, 8, 0);
        put_bytes(b, LA_BITMAP_OFFSET, &self.bitmap);
    }
}
