//! Group descriptors of chain allocators (ocfs2-format.md §6.2).

use super::bytes::*;
use super::error::{At, Result};

pub const GROUP_SIGNATURE: &[u8; 8] = b"GROUP01\0";
/// The bitmap starts here in the descriptor block.
pub const GROUP_BITMAP_OFFSET: usize = 0x40;

/// Bitmap bytes in a descriptor: bs − 64 (also the global bitmap's bits per group / 8).
pub fn group_bitmap_bytes(block_size: usize) -> u16 {
    (block_size - GROUP_BITMAP_OFFSET) as u16
}

/// `ocfs2_group_desc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDesc {
    pub size: u16,
    pub bits: u16,
    pub free_bits_count: u16,
    pub chain: u16,
    pub generation: u32,
    /// Longest free run hint; 0 means "unknown" (newer kernels maintain it, mkfs writes 0).
    pub contig_free_bits: u16,
    pub next_group: u64,
    pub parent_dinode: u64,
    pub blkno: u64,
    /// `size` bytes; bit n = byte n/8, bit n%8.
    pub bitmap: Vec<u8>,
}

impl GroupDesc {
    pub fn decode(b: &[u8], blkno: u64) -> Result<Self> {
        let at = At::new(blkno, "group descriptor");
        at.need_len(b, 512)?;
        at.signature(b, GROUP_SIGNATURE)?;
        let size = le16(b, 0x08);
        let max = group_bitmap_bytes(b.len());
        at.at_most("bg_size", size as u64, max as u64)?;
        let bits = le16(b, 0x0A);
        at.at_most("bg_bits", bits as u64, size as u64 * 8)?;
        let free = le16(b, 0x0C);
        at.at_most("bg_free_bits_count", free as u64, bits as u64)?;
        Ok(GroupDesc {
            size,
            bits,
            free_bits_count: free,
            chain: le16(b, 0x0E),
            generation: le32(b, 0x10),
            contig_free_bits: le16(b, 0x14),
            next_group: le64(b, 0x18),
            parent_dinode: le64(b, 0x20),
            blkno: le64(b, 0x28),
            bitmap: slice(b, GROUP_BITMAP_OFFSET, size as usize).to_vec(),
        })
    }

    /// Fails unless the descriptor names itself and carries the volume generation (§6.3).
    pub fn check_identity(&self, blkno: u64, fs_generation: u32) -> Result<()> {
        if self.blkno != blkno || self.generation != fs_generation {
            return Err(At::new(blkno, "group descriptor").invalid(format!(
                "names block {} generation {:#x}, expected {blkno} {fs_generation:#x}",
                self.blkno, self.generation
            )));
        }
        Ok(())
    }

    pub fn encode(&self, b: &mut [u8]) {
        b.fill(0);
        put_bytes(b, 0, GROUP_SIGNATURE);
        put_le16(b, 0x08, self.size);
        put_le16(b, 0x0A, self.bits);
        put_le16(b, 0x0C, self.free_bits_count);
        put_le16(b, 0x0E, self.chain);
        put_le32(b, 0x10, self.generation);
        put_le16(b, 0x14, self.contig_free_bits);
        put_le64(b, 0x18, self.next_group);
        put_le64(b, 0x20, self.parent_dinode);
        put_le64(b, 0x28, self.blkno);
        put_bytes(b, GROUP_BITMAP_OFFSET, &self.bitmap);
    }
}
