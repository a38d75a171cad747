//! The inode, `ocfs2_dinode` (ocfs2-format.md §4): one block, a 0xC0-byte header, then the id2
//! union chosen by flags and mode (§4.6). The superblock shares the header (§3.1).

use super::bytes::*;
use super::chain::{chain_recs_per_inode, ChainList};
use super::error::{At, Result};
use super::extent::{recs_per_inode, ExtentList};
use super::inline::{inline_capacity, InlineData};
use super::local_alloc::{la_bitmap_bytes, LocalAlloc};
use super::superblock::{SuperBlock, SUPERBLOCK_SIGNATURE};
use super::truncate_log::{tl_recs_per_inode, TruncateLog};

pub const INODE_SIGNATURE: &[u8; 8] = b"INODE01\0";
pub const ID1_OFFSET: usize = 0xB8;
pub const ID2_OFFSET: usize = 0xC0;

// i_flags (§4.2)
pub const VALID_FL: u32 = 0x0001;
pub const ORPHANED_FL: u32 = 0x0004;
pub const SYSTEM_FL: u32 = 0x0010;
pub const SUPER_BLOCK_FL: u32 = 0x0020;
pub const LOCAL_ALLOC_FL: u32 = 0x0040;
pub const BITMAP_FL: u32 = 0x0080;
pub const JOURNAL_FL: u32 = 0x0100;
pub const HEARTBEAT_FL: u32 = 0x0200;
pub const CHAIN_FL: u32 = 0x0400;
pub const DEALLOC_FL: u32 = 0x0800;
pub const QUOTA_FL: u32 = 0x1000;
pub const DIO_ORPHANED_FL: u32 = 0x2000;

// i_dyn_features (§4.3)
pub const INLINE_DATA_FL: u16 = 0x0001;
pub const HAS_XATTR_FL: u16 = 0x0002;
pub const INLINE_XATTR_FL: u16 = 0x0004;
pub const INDEXED_DIR_FL: u16 = 0x0008;
pub const HAS_REFCOUNT_FL: u16 = 0x0010;

/// id1 journal flag: the journal needs recovery (§13.8).
pub const JOURNAL_DIRTY_FL: u32 = 0x1;

// POSIX file types in i_mode.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFSOCK: u16 = 0o140000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFIFO: u16 = 0o010000;

/// Fast-symlink bytes available in id2, including the NUL: bs − 0xC0.
pub fn fast_symlink_capacity(block_size: usize) -> usize {
    block_size - ID2_OFFSET
}

/// The id2 union (§4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id2 {
    Super(SuperBlock),
    LocalAlloc(LocalAlloc),
    Chain(ChainList),
    TruncateLog(TruncateLog),
    Inline(InlineData),
    /// The raw id2 bytes of a fast symlink: target, NUL, and whatever followed.
    FastSymlink(Vec<u8>),
    Extents(ExtentList),
}

/// A decoded inode block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub generation: u32,
    pub suballoc_slot: u16,
    pub suballoc_bit: u16,
    pub links_count_hi: u16,
    pub xattr_inline_size: u16,
    pub clusters: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mode: u16,
    pub links_count: u16,
    pub flags: u32,
    pub atime: u64,
    pub ctime: u64,
    pub mtime: u64,
    pub dtime: u64,
    pub blkno: u64,
    pub last_eb_blk: u64,
    pub fs_generation: u32,
    pub atime_nsec: u32,
    pub ctime_nsec: u32,
    pub mtime_nsec: u32,
    pub attr: u32,
    pub orphaned_slot: u16,
    pub dyn_features: u16,
    pub xattr_loc: u64,
    pub check: [u8; 8],
    pub dx_root: u64,
    pub refcount_loc: u64,
    pub suballoc_loc: u64,
    pub dio_orphaned_slot: u16,
    /// id1 as a raw little-endian u64; see the accessors for its variants (§4.5).
    pub id1: u64,
    pub id2: Id2,
}

impl Inode {
    /// A zeroed inode with the given id2 (callers set the fields they need).
    pub fn new(blkno: u64, fs_generation: u32, id2: Id2) -> Self {
        Inode {
            generation: fs_generation,
            suballoc_slot: 0,
            suballoc_bit: 0,
            links_count_hi: 0,
            xattr_inline_size: 0,
            clusters: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mode: 0,
            links_count: 0,
            flags: 0,
            atime: 0,
            ctime: 0,
            mtime: 0,
            dtime: 0,
            blkno,
            last_eb_blk: 0,
            fs_generation,
            atime_nsec: 0,
            ctime_nsec: 0,
            mtime_nsec: 0,
            attr: 0,
            orphaned_slot: 0,
            dyn_features: 0,
            xattr_loc: 0,
            check: [0; 8],
            dx_root: 0,
            refcount_loc: 0,
            suballoc_loc: 0,
            dio_orphaned_slot: 0,
            id1: 0,
            id2,
        }
    }

    /// Decodes an inode block (`INODE01`). Checks the signature and that id2's counts fit the
    /// block; identity checks (own blkno, volume generation) are the caller's (`check_identity`).
    pub fn decode(b: &[u8], blkno: u64) -> Result<Self> {
        let at = At::new(blkno, "inode");
        at.need_len(b, 512)?;
        at.signature(b, INODE_SIGNATURE)?;
        Self::decode_with(b, at)
    }

    /// Decodes a superblock block (`OCFSV2`), whose id2 is the superblock proper.
    pub fn decode_superblock(b: &[u8], blkno: u64) -> Result<Self> {
        let at = At::new(blkno, "superblock");
        at.need_len(b, 512)?;
        at.signature(b, SUPERBLOCK_SIGNATURE)?;
        let inode = Self::decode_with(b, at)?;
        if !matches!(inode.id2, Id2::Super(_)) {
            return Err(at.invalid("SUPER_BLOCK_FL is not set"));
        }
        Ok(inode)
    }

    fn decode_with(b: &[u8], at: At) -> Result<Self> {
        let bs = b.len();
        let flags = le32(b, 0x2C);
        let mode = le16(b, 0x28);
        let dyn_features = le16(b, 0x76);
        let clusters = le32(b, 0x14);
        let id2b = &b[ID2_OFFSET..];
        let id2 = if flags & SUPER_BLOCK_FL != 0 {
            Id2::Super(SuperBlock::decode(id2b, at)?)
        } else if flags & LOCAL_ALLOC_FL != 0 {
            Id2::LocalAlloc(LocalAlloc::decode(id2b, la_bitmap_bytes(bs), at)?)
        } else if flags & CHAIN_FL != 0 {
            Id2::Chain(ChainList::decode(id2b, chain_recs_per_inode(bs), at)?)
        } else if flags & DEALLOC_FL != 0 {
            Id2::TruncateLog(TruncateLog::decode(id2b, tl_recs_per_inode(bs), at)?)
        } else if dyn_features & INLINE_DATA_FL != 0 {
            Id2::Inline(InlineData::decode(id2b, inline_capacity(bs), at)?)
        } else if mode & S_IFMT == S_IFLNK && clusters == 0 {
            Id2::FastSymlink(id2b.to_vec())
        } else {
            Id2::Extents(ExtentList::decode(id2b, recs_per_inode(bs), at)?)
        };
        Ok(Inode {
            generation: le32(b, 0x08),
            suballoc_slot: le16(b, 0x0C),
            suballoc_bit: le16(b, 0x0E),
            links_count_hi: le16(b, 0x10),
            xattr_inline_size: le16(b, 0x12),
            clusters,
            uid: le32(b, 0x18),
            gid: le32(b, 0x1C),
            size: le64(b, 0x20),
            mode,
            links_count: le16(b, 0x2A),
            flags,
            atime: le64(b, 0x30),
            ctime: le64(b, 0x38),
            mtime: le64(b, 0x40),
            dtime: le64(b, 0x48),
            blkno: le64(b, 0x50),
            last_eb_blk: le64(b, 0x58),
            fs_generation: le32(b, 0x60),
            atime_nsec: le32(b, 0x64),
            ctime_nsec: le32(b, 0x68),
            mtime_nsec: le32(b, 0x6C),
            attr: le32(b, 0x70),
            orphaned_slot: le16(b, 0x74),
            dyn_features,
            xattr_loc: le64(b, 0x78),
            check: array(b, 0x80),
            dx_root: le64(b, 0x88),
            refcount_loc: le64(b, 0x90),
            suballoc_loc: le64(b, 0x98),
            dio_orphaned_slot: le16(b, 0xA0),
            id1: le64(b, ID1_OFFSET),
            id2,
        })
    }

    /// Encodes into a whole block buffer (zeroed first).
    pub fn encode(&self, b: &mut [u8]) {
        b.fill(0);
        let sig = if matches!(self.id2, Id2::Super(_)) { SUPERBLOCK_SIGNATURE } else { INODE_SIGNATURE };
        put_bytes(b, 0, sig);
        put_le32(b, 0x08, self.generation);
        put_le16(b, 0x0C, self.suballoc_slot);
        put_le16(b, 0x0E, self.suballoc_bit);
        put_le16(b, 0x10, self.links_count_hi);
        put_le16(b, 0x12, self.xattr_inline_size);
        put_le32(b, 0x14, self.clusters);
        put_le32(b, 0x18, self.uid);
        put_le32(b, 0x1C, self.gid);
        put_le64(b, 0x20, self.size);
        put_le16(b, 0x28, self.mode);
        put_le16(b, 0x2A, self.links_count);
        put_le32(b, 0x2C, self.flags);
        put_le64(b, 0x30, self.atime);
        put_le64(b, 0x38, self.ctime);
        put_le64(b, 0x40, self.mtime);
        put_le64(b, 0x48, self.dtime);
        put_le64(b, 0x50, self.blkno);
        put_le64(b, 0x58, self.last_eb_blk);
        put_le32(b, 0x60, self.fs_generation);
        put_le32(b, 0x64, self.atime_nsec);
        put_le32(b, 0x68, self.ctime_nsec);
        put_le32(b, 0x6C, self.mtime_nsec);
        put_le32(b, 0x70, self.attr);
        put_le16(b, 0x74, self.orphaned_slot);
        put_le16(b, 0x76, self.dyn_features);
        put_le64(b, 0x78, self.xattr_loc);
        put_bytes(b, 0x80, &self.check);
        put_le64(b, 0x88, self.dx_root);
        put_le64(b, 0x90, self.refcount_loc);
        put_le64(b, 0x98, self.suballoc_loc);
        put_le16(b, 0xA0, self.dio_orphaned_slot);
        put_le64(b, ID1_OFFSET, self.id1);
        let Some(id2) = b.get_mut(ID2_OFFSET..) else { return };
        match &self.id2 {
            Id2::Super(sb) => sb.encode(id2),
            Id2::LocalAlloc(la) => la.encode(id2),
            Id2::Chain(cl) => cl.encode(id2),
            Id2::TruncateLog(tl) => tl.encode(id2),
            Id2::Inline(data) => data.encode(id2),
            Id2::FastSymlink(raw) => put_bytes(id2, 0, raw),
            Id2::Extents(el) => el.encode(id2),
        }
    }

    /// Fails unless the inode names its own block and carries the volume generation.
    pub fn check_identity(&self, blkno: u64, fs_generation: u32) -> Result<()> {
        let at = At::new(blkno, "inode");
        if self.blkno != blkno {
            return Err(at.out_of_range("i_blkno", self.blkno, format!("{blkno}")));
        }
        if self.fs_generation != fs_generation {
            return Err(at.out_of_range("i_fs_generation", self.fs_generation as u64, format!("{fs_generation:#x}")));
        }
        Ok(())
    }

    pub fn is_valid(&self) -> bool {
        self.flags & VALID_FL != 0
    }
    pub fn is_system(&self) -> bool {
        self.flags & SYSTEM_FL != 0
    }
    pub fn file_type(&self) -> u16 {
        self.mode & S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }
    pub fn is_inline(&self) -> bool {
        self.dyn_features & INLINE_DATA_FL != 0
    }

    // id1 variants (§4.5).
    pub fn bitmap_used(&self) -> u32 {
        self.id1 as u32
    }
    pub fn bitmap_total(&self) -> u32 {
        (self.id1 >> 32) as u32
    }
    pub fn set_bitmap(&mut self, used: u32, total: u32) {
        self.id1 = used as u64 | (total as u64) << 32;
    }
    pub fn journal_flags(&self) -> u32 {
        self.id1 as u32
    }
    pub fn journal_recovery_generation(&self) -> u32 {
        (self.id1 >> 32) as u32
    }
    pub fn set_journal(&mut self, flags: u32, recovery_generation: u32) {
        self.id1 = flags as u64 | (recovery_generation as u64) << 32;
    }
    /// Device number in Linux "huge" encoding.
    pub fn rdev(&self) -> u64 {
        self.id1
    }

    pub fn extents(&self) -> Option<&ExtentList> {
        match &self.id2 {
            Id2::Extents(el) => Some(el),
            _ => None,
        }
    }
    pub fn chain(&self) -> Option<&ChainList> {
        match &self.id2 {
            Id2::Chain(cl) => Some(cl),
            _ => None,
        }
    }
    pub fn superblock(&self) -> Option<&SuperBlock> {
        match &self.id2 {
            Id2::Super(sb) => Some(sb),
            _ => None,
        }
    }
}

/// Linux "huge" device encoding of a major/minor pair (§4.5).
pub fn encode_dev(major: u32, minor: u32) -> u64 {
    (minor as u64 & 0xff) | (major as u64) << 8 | (minor as u64 & !0xff) << 12
}
/// Inverse of [`encode_dev`].
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32;
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::extent::ExtentRec;

    #[test]
    fn extent_inode_round_trips() {
        let mut inode = Inode::new(
            35393,
            0x6854166B,
            Id2::Extents(ExtentList {
                tree_depth: 0,
                count: 243,
                recs: vec![ExtentRec { cpos: 10, len: 1, flags: 0, blkno: 65536 }],
            }),
        );
        inode.mode = S_IFREG | 0o644;
        inode.flags = VALID_FL;
        inode.size = 1 << 20;
        inode.clusters = 1;
        inode.mtime_nsec = 999_999_999;
        let mut b = vec![0u8; 4096];
        inode.encode(&mut b);
        let back = Inode::decode(&b, 35393).unwrap();
        assert_eq!(back, inode);
        back.check_identity(35393, 0x6854166B).unwrap();
        assert!(back.check_identity(35394, 0x6854166B).is_err());
    }

    #[test]
    fn device_numbers_round_trip() {
        for (ma, mi) in [(8, 1), (259, 70000), (0, 0), (4095, 0xFFFFF)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
    }
}
