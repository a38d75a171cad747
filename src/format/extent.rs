//! Extent lists, extent records and extent blocks (ocfs2-format.md §5).

use super::bytes::*;
use super::error::{At, Result};

pub const EXTENT_BLOCK_SIGNATURE: &[u8; 8] = b"EXBLK01\0";
/// Extent record flag: allocated but reads as zeros (§5.2; needs ro_compat UNWRITTEN).
pub const EXT_UNWRITTEN: u8 = 0x01;
pub const EXT_REFCOUNTED: u8 = 0x02;
/// OCFS2_MAX_PATH_DEPTH.
pub const MAX_TREE_DEPTH: u16 = 5;
pub const LIST_HEADER: usize = 0x10;
pub const REC_SIZE: usize = 16;
/// Where the list starts inside an extent block.
pub const EB_LIST_OFFSET: usize = 0x30;

/// Records that fit in an inode's id2 (offset 0xC0, header 0x10).
pub fn recs_per_inode(block_size: usize) -> u16 {
    ((block_size - 0xD0) / REC_SIZE) as u16
}
/// Records that fit in an extent block.
pub fn recs_per_block(block_size: usize) -> u16 {
    ((block_size - 0x40) / REC_SIZE) as u16
}

/// One extent record. In a leaf (`depth == 0`) it maps `len` clusters from `cpos` to `blkno`
/// with `flags`; in an interior list `len` is the clusters covered by the child extent block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtentRec {
    pub cpos: u32,
    /// e_leaf_clusters (le16) in a leaf, e_int_clusters (le32) in an interior record.
    pub len: u32,
    pub flags: u8,
    pub blkno: u64,
}

impl ExtentRec {
    pub fn end(&self) -> u64 {
        self.cpos as u64 + self.len as u64
    }
    pub fn is_unwritten(&self) -> bool {
        self.flags & EXT_UNWRITTEN != 0
    }
}

/// An extent list: the header and the records in use (`l_next_free_rec` of them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtentList {
    pub tree_depth: u16,
    pub count: u16,
    pub recs: Vec<ExtentRec>,
}

impl ExtentList {
    pub fn empty(count: u16) -> Self {
        ExtentList { tree_depth: 0, count, recs: Vec::new() }
    }

    /// Decodes a list at the start of `b`; `max_count` is the capacity of the space it lives in.
    pub fn decode(b: &[u8], max_count: u16, at: At) -> Result<Self> {
        at.need_len(b, LIST_HEADER)?;
        let tree_depth = le16(b, 0);
        let count = le16(b, 2);
        let next_free = le16(b, 4);
        at.at_most("l_tree_depth", tree_depth as u64, MAX_TREE_DEPTH as u64)?;
        at.at_most("l_count", count as u64, max_count as u64)?;
        at.at_most("l_next_free_rec", next_free as u64, count as u64)?;
        at.need_len(b, LIST_HEADER + count as usize * REC_SIZE)?;
        let recs = (0..next_free as usize)
            .map(|i| {
                let r = LIST_HEADER + i * REC_SIZE;
                if tree_depth == 0 {
                    ExtentRec {
                        cpos: le32(b, r),
                        len: le16(b, r + 4) as u32,
                        flags: u8_at(b, r + 7),
                        blkno: le64(b, r + 8),
                    }
                } else {
                    ExtentRec { cpos: le32(b, r), len: le32(b, r + 4), flags: 0, blkno: le64(b, r + 8) }
                }
            })
            .collect();
        Ok(ExtentList { tree_depth, count, recs })
    }

    /// Writes the list at the start of `b`; record slots past the used ones are zeroed.
    pub fn encode(&self, b: &mut [u8]) {
        put_le16(b, 0, self.tree_depth);
        put_le16(b, 2, self.count);
        put_le16(b, 4, self.recs.len() as u16);
        put_le16(b, 6, 0);
        put_le64(b, 8, 0);
        for i in 0..self.count as usize {
            let r = LIST_HEADER + i * REC_SIZE;
            put_bytes(b, r, &[0u8; REC_SIZE]);
            if let Some(rec) = self.recs.get(i) {
                put_le32(b, r, rec.cpos);
                if self.tree_depth == 0 {
                    put_le16(b, r + 4, rec.len as u16);
                    put_u8(b, r + 7, rec.flags);
                } else {
                    put_le32(b, r + 4, rec.len);
                }
                put_le64(b, r + 8, rec.blkno);
            }
        }
    }

    /// Clusters covered by the records of this list.
    pub fn clusters(&self) -> u64 {
        self.recs.iter().map(|r| r.len as u64).sum()
    }
}

/// An extent block (`EXBLK01`), one filesystem block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentBlock {
    pub suballoc_slot: u16,
    pub suballoc_bit: u16,
    pub fs_generation: u32,
    pub blkno: u64,
    pub suballoc_loc: u64,
    pub next_leaf_blk: u64,
    pub list: ExtentList,
}

impl ExtentBlock {
    pub fn decode(b: &[u8], blkno: u64) -> Result<Self> {
        let at = At::new(blkno, "extent block");
        at.need_len(b, 512)?;
        at.signature(b, EXTENT_BLOCK_SIGNATURE)?;
        let list = ExtentList::decode(&b[EB_LIST_OFFSET..], recs_per_block(b.len()), at)?;
        Ok(ExtentBlock {
            suballoc_slot: le16(b, 0x10),
            suballoc_bit: le16(b, 0x12),
            fs_generation: le32(b, 0x14),
            blkno: le64(b, 0x18),
            suballoc_loc: le64(b, 0x20),
            next_leaf_blk: le64(b, 0x28),
            list,
        })
    }

    /// Fails unless the block names itself and carries the volume generation (§5.4).
    pub fn check_identity(&self, blkno: u64, fs_generation: u32) -> Result<()> {
        if self.blkno != blkno || self.fs_generation != fs_generation {
            return Err(At::new(blkno, "extent block").invalid(format!(
                "names block {} generation {:#x}, expected {blkno} {fs_generation:#x}",
                self.blkno, self.fs_generation
            )));
        }
        Ok(())
    }

    /// Encodes into a whole block buffer (zeroed first).
    pub fn encode(&self, b: &mut [u8]) {
        b.fill(0);
        put_bytes(b, 0, EXTENT_BLOCK_SIGNATURE);
        put_le16(b, 0x10, self.suballoc_slot);
        put_le16(b, 0x12, self.suballoc_bit);
        put_le32(b, 0x14, self.fs_generation);
        put_le64(b, 0x18, self.blkno);
        put_le64(b, 0x20, self.suballoc_loc);
        put_le64(b, 0x28, self.next_leaf_blk);
        if let Some(list) = b.get_mut(EB_LIST_OFFSET..) {
            self.list.encode(list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_match_the_reference_table() {
        assert_eq!([512, 1024, 2048, 4096].map(recs_per_inode), [19, 51, 115, 243]);
        assert_eq!([512, 1024, 2048, 4096].map(recs_per_block), [28, 60, 124, 252]);
    }

    #[test]
    fn extent_block_round_trips() {
        let eb = ExtentBlock {
            suballoc_slot: 1,
            suballoc_bit: 7,
            fs_generation: 0xABCD,
            blkno: 33334,
            suballoc_loc: 33328,
            next_leaf_blk: 33331,
            list: ExtentList {
                tree_depth: 0,
                count: 252,
                recs: vec![ExtentRec { cpos: 0, len: 3, flags: EXT_UNWRITTEN, blkno: 4096 }],
            },
        };
        let mut b = vec![0u8; 4096];
        eb.encode(&mut b);
        assert_eq!(ExtentBlock::decode(&b, 33334).unwrap(), eb);
    }

    #[test]
    fn next_free_beyond_count_is_refused() {
        let mut b = vec![0u8; 4096];
        put_le16(&mut b, 2, 10);
        put_le16(&mut b, 4, 11);
        assert!(ExtentList::decode(&b, 243, At::new(5, "inode")).is_err());
    }
}
