//! JBD2 journal structures inside `journal:NNNN` (ocfs2-format.md §13). Every field is
//! big-endian. Block numbers in errors are whatever the caller passes (journal-relative or
//! absolute); decoders never panic.

use super::bytes::*;
use super::error::{At, Result};

/// `h_magic` of every journal metadata block (§13.3).
pub const JBD2_MAGIC: u32 = 0xC03B_3998;

/// Block types (§13.3).
pub const BLOCKTYPE_DESCRIPTOR: u32 = 1;
pub const BLOCKTYPE_COMMIT: u32 = 2;
pub const BLOCKTYPE_SUPERBLOCK_V1: u32 = 3;
pub const BLOCKTYPE_SUPERBLOCK_V2: u32 = 4;
pub const BLOCKTYPE_REVOKE: u32 = 5;

/// `s_feature_compat` (§13.2): v1 commit checksums, never on OCFS2.
pub const FEATURE_COMPAT_CHECKSUM: u32 = 0x1;
/// `s_feature_incompat` bits (§13.2).
pub const FEATURE_INCOMPAT_REVOKE: u32 = 0x1;
pub const FEATURE_INCOMPAT_64BIT: u32 = 0x2;
pub const FEATURE_INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
pub const FEATURE_INCOMPAT_CSUM_V2: u32 = 0x8;
pub const FEATURE_INCOMPAT_CSUM_V3: u32 = 0x10;
pub const FEATURE_INCOMPAT_FAST_COMMIT: u32 = 0x20;
/// The only incompat bits OCFS2 journals may carry (§13.2).
pub const FEATURE_INCOMPAT_SUPPORTED: u32 = FEATURE_INCOMPAT_REVOKE | FEATURE_INCOMPAT_64BIT;

/// Tag flags (§13.4).
pub const TAG_FLAG_ESCAPE: u16 = 0x1;
pub const TAG_FLAG_SAME_UUID: u16 = 0x2;
pub const TAG_FLAG_DELETED: u16 = 0x4;
pub const TAG_FLAG_LAST_TAG: u16 = 0x8;

/// Common header: magic, blocktype, sequence (§13.3).
pub const HEADER_SIZE: usize = 12;
/// The journal superblock occupies 1024 bytes (§13.2).
pub const SUPERBLOCK_SIZE: usize = 1024;
pub const UUID_SIZE: usize = 16;
/// Tag sizes without checksum features (§13.4).
pub const TAG_SIZE_32: usize = 8;
pub const TAG_SIZE_64: usize = 12;
/// Revoke header: common header + `r_count` (§13.6).
pub const REVOKE_HEADER_SIZE: usize = 16;
/// Commit block bytes up to and including `h_commit_nsec` (§13.5).
pub const COMMIT_BLOCK_LEN: usize = 0x3C;
/// Size of `s_users` (48 UUIDs).
pub const USERS_SIZE: usize = 768;

/// Tag size for the journal's 64BIT setting (§13.4).
pub fn tag_size(is_64bit: bool) -> usize {
    if is_64bit {
        TAG_SIZE_64
    } else {
        TAG_SIZE_32
    }
}

/// Tags that fit in one descriptor block, counting the 16-byte UUID after the first (§13.4).
pub fn tags_per_block(block_size: usize, is_64bit: bool) -> usize {
    block_size.saturating_sub(HEADER_SIZE + UUID_SIZE) / tag_size(is_64bit)
}

/// Size of one revoke record (§13.6).
pub fn revoke_record_size(is_64bit: bool) -> usize {
    if is_64bit {
        8
    } else {
        4
    }
}

/// Revoke records that fit in one revoke block (§13.6).
pub fn revoke_records_per_block(block_size: usize, is_64bit: bool) -> usize {
    block_size.saturating_sub(REVOKE_HEADER_SIZE) / revoke_record_size(is_64bit)
}

/// True when `block` begins with the JBD2 magic and so must be escaped when logged (§13.4).
pub fn needs_escape(block: &[u8]) -> bool {
    block.len() >= 4 && be32(block, 0) == JBD2_MAGIC
}

/// Escapes a block copy before it is logged: when it begins with the magic, zeroes those four
/// bytes and returns true (the caller then sets `TAG_FLAG_ESCAPE` on its tag) (§13.4).
pub fn escape(block: &mut [u8]) -> bool {
    if needs_escape(block) {
        put_be32(block, 0, 0);
        true
    } else {
        false
    }
}

/// Undoes [`escape`] on a logged copy whose tag has `TAG_FLAG_ESCAPE`: writes the magic back.
pub fn unescape(block: &mut [u8]) {
    put_be32(block, 0, JBD2_MAGIC);
}

/// Common block header (§13.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub blocktype: u32,
    pub sequence: u32,
}

impl BlockHeader {
    /// Checks the length and magic; the block type is returned as found.
    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self> {
        header(buf, At::new(blkno, "journal block header"))
    }

    pub fn encode(&self, buf: &mut [u8]) {
        put_be32(buf, 0, JBD2_MAGIC);
        put_be32(buf, 4, self.blocktype);
        put_be32(buf, 8, self.sequence);
    }
}

fn header(buf: &[u8], at: At) -> Result<BlockHeader> {
    at.need_len(buf, HEADER_SIZE)?;
    let magic = be32(buf, 0);
    if magic != JBD2_MAGIC {
        return Err(at.invalid(format!("h_magic {magic:#010x} is not {JBD2_MAGIC:#010x}")));
    }
    Ok(BlockHeader { blocktype: be32(buf, 4), sequence: be32(buf, 8) })
}

/// Header of a block that must have type `expected`.
fn typed_header(buf: &[u8], at: At, expected: u32) -> Result<BlockHeader> {
    let h = header(buf, at)?;
    if h.blocktype != expected {
        return Err(at.out_of_range("h_blocktype", h.blocktype as u64, format!("{expected}")));
    }
    Ok(h)
}

/// The journal superblock, first 1024 bytes of journal block 0 (§13.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSuperblock {
    /// 4 (v2); 3 (v1) is accepted on decode.
    pub blocktype: u32,
    /// `h_sequence` of the header (0).
    pub header_sequence: u32,
    pub block_size: u32,
    pub maxlen: u32,
    pub first: u32,
    /// `s_sequence`: transaction ID expected at `start`.
    pub sequence: u32,
    /// `s_start`: 0 = journal empty.
    pub start: u32,
    /// `s_errno` (a negative errno after an abort).
    pub errno: i32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub nr_users: u32,
    pub dynsuper: u32,
    pub max_transaction: u32,
    pub max_trans_data: u32,
    pub checksum_type: u8,
    pub num_fc_blks: u32,
    pub head: u32,
    pub checksum: u32,
    pub users: [u8; USERS_SIZE],
}

impl Default for JournalSuperblock {
    /// All fields zero except `blocktype` = 4.
    fn default() -> Self {
        JournalSuperblock {
            blocktype: BLOCKTYPE_SUPERBLOCK_V2,
            header_sequence: 0,
            block_size: 0,
            maxlen: 0,
            first: 0,
            sequence: 0,
            start: 0,
            errno: 0,
            feature_compat: 0,
            feature_incompat: 0,
            feature_ro_compat: 0,
            uuid: [0; 16],
            nr_users: 0,
            dynsuper: 0,
            max_transaction: 0,
            max_trans_data: 0,
            checksum_type: 0,
            num_fc_blks: 0,
            head: 0,
            checksum: 0,
            users: [0; USERS_SIZE],
        }
    }
}

impl JournalSuperblock {
    /// Decodes journal block 0. `buf` holds at least 1024 bytes: either exactly 1024 bytes or
    /// the whole block(s) holding the superblock, in which case its length must be
    /// `max(s_blocksize, 1024)`.
    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self> {
        let at = At::new(blkno, "journal superblock");
        at.need_len(buf, SUPERBLOCK_SIZE)?;
        let h = header(buf, at)?;
        if h.blocktype != BLOCKTYPE_SUPERBLOCK_V2 && h.blocktype != BLOCKTYPE_SUPERBLOCK_V1 {
            return Err(at.out_of_range("h_blocktype", h.blocktype as u64, "3 or 4".into()));
        }
        let sb = JournalSuperblock {
            blocktype: h.blocktype,
            header_sequence: h.sequence,
            block_size: be32(buf, 0x0C),
            maxlen: be32(buf, 0x10),
            first: be32(buf, 0x14),
            sequence: be32(buf, 0x18),
            start: be32(buf, 0x1C),
            errno: be32(buf, 0x20) as i32,
            feature_compat: be32(buf, 0x24),
            feature_incompat: be32(buf, 0x28),
            feature_ro_compat: be32(buf, 0x2C),
            uuid: array(buf, 0x30),
            nr_users: be32(buf, 0x40),
            dynsuper: be32(buf, 0x44),
            max_transaction: be32(buf, 0x48),
            max_trans_data: be32(buf, 0x4C),
            checksum_type: u8_at(buf, 0x50),
            num_fc_blks: be32(buf, 0x54),
            head: be32(buf, 0x58),
            checksum: be32(buf, 0xFC),
            users: array(buf, 0x100),
        };
        let bs = sb.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(at.out_of_range("s_blocksize", bs as u64, "a power of two in 512..=65536".into()));
        }
        let whole = (bs as usize).max(SUPERBLOCK_SIZE);
        if buf.len() != SUPERBLOCK_SIZE && buf.len() != whole {
            return Err(at.invalid(format!("s_blocksize {bs} does not match a {}-byte buffer", buf.len())));
        }
        if sb.first == 0 || sb.first >= sb.maxlen {
            return Err(at.out_of_range("s_first", sb.first as u64, format!("1..{} (s_maxlen)", sb.maxlen)));
        }
        if sb.start >= sb.maxlen {
            return Err(at.out_of_range("s_start", sb.start as u64, format!("below s_maxlen {}", sb.maxlen)));
        }
        Ok(sb)
    }

    /// Zeroes `buf` (1024 bytes or the whole block) and writes the superblock.
    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        BlockHeader { blocktype: self.blocktype, sequence: self.header_sequence }.encode(buf);
        put_be32(buf, 0x0C, self.block_size);
        put_be32(buf, 0x10, self.maxlen);
        put_be32(buf, 0x14, self.first);
        put_be32(buf, 0x18, self.sequence);
        put_be32(buf, 0x1C, self.start);
        put_be32(buf, 0x20, self.errno as u32);
        put_be32(buf, 0x24, self.feature_compat);
        put_be32(buf, 0x28, self.feature_incompat);
        put_be32(buf, 0x2C, self.feature_ro_compat);
        put_bytes(buf, 0x30, &self.uuid);
        put_be32(buf, 0x40, self.nr_users);
        put_be32(buf, 0x44, self.dynsuper);
        put_be32(buf, 0x48, self.max_transaction);
        put_be32(buf, 0x4C, self.max_trans_data);
        put_u8(buf, 0x50, self.checksum_type);
        put_be32(buf, 0x54, self.num_fc_blks);
        put_be32(buf, 0x58, self.head);
        put_be32(buf, 0xFC, self.checksum);
        put_bytes(buf, 0x100, &self.users);
    }

    pub fn is_64bit(&self) -> bool {
        self.feature_incompat & FEATURE_INCOMPAT_64BIT != 0
    }

    /// `s_start` = 0: nothing to replay (§13.2).
    pub fn is_empty(&self) -> bool {
        self.start == 0
    }

    /// Feature bits OCFS2 journals must not carry (§13.2): (compat, incompat, ro_compat).
    pub fn unsupported_features(&self) -> Option<(u32, u32, u32)> {
        let bad = (self.feature_compat, self.feature_incompat & !FEATURE_INCOMPAT_SUPPORTED, self.feature_ro_compat);
        (bad != (0, 0, 0)).then_some(bad)
    }
}

/// One descriptor tag (§13.4). `flags` as stored; on encode only ESCAPE/DELETED are taken from
/// the caller, SAME_UUID and LAST_TAG are set by the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tag {
    /// Absolute filesystem block the logged copy belongs to.
    pub blocknr: u64,
    pub flags: u16,
}

impl Tag {
    pub fn is_escaped(&self) -> bool {
        self.flags & TAG_FLAG_ESCAPE != 0
    }
}

/// Descriptor block (type 1, §13.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorBlock {
    pub sequence: u32,
    pub tags: Vec<Tag>,
}

impl DescriptorBlock {
    /// Parses tags from 0x0C until one has LAST_TAG or the next one does not fit. A tag without
    /// SAME_UUID is followed by 16 UUID bytes, which are skipped.
    pub fn decode(buf: &[u8], blkno: u64, is_64bit: bool) -> Result<Self> {
        let at = At::new(blkno, "journal descriptor block");
        let ts = tag_size(is_64bit);
        at.need_len(buf, HEADER_SIZE + ts)?;
        let h = typed_header(buf, at, BLOCKTYPE_DESCRIPTOR)?;
        let mut tags = Vec::new();
        let mut off = HEADER_SIZE;
        while off.saturating_add(ts) <= buf.len() {
            let low = be32(buf, off) as u64;
            let high = if is_64bit { be32(buf, off + 8) as u64 } else { 0 };
            let flags = be16(buf, off + 6);
            tags.push(Tag { blocknr: (high << 32) | low, flags });
            off += ts;
            if flags & TAG_FLAG_SAME_UUID == 0 {
                off += UUID_SIZE;
            }
            if flags & TAG_FLAG_LAST_TAG != 0 {
                break;
            }
        }
        Ok(DescriptorBlock { sequence: h.sequence, tags })
    }

    /// Zeroes `buf` (one journal block) and writes the header and as many leading tags as fit
    /// and are representable (blocknr < 2^32 without 64BIT); returns how many were written.
    /// The first gets the UUID, later ones SAME_UUID, the last written one LAST_TAG.
    #[must_use]
    pub fn encode(&self, buf: &mut [u8], uuid: &[u8; 16], is_64bit: bool) -> usize {
        buf.fill(0);
        BlockHeader { blocktype: BLOCKTYPE_DESCRIPTOR, sequence: self.sequence }.encode(buf);
        let ts = tag_size(is_64bit);
        let n = self
            .tags
            .iter()
            .take(tags_per_block(buf.len(), is_64bit))
            .take_while(|t| is_64bit || t.blocknr <= u32::MAX as u64)
            .count();
        let mut off = HEADER_SIZE;
        for (i, t) in self.tags.iter().take(n).enumerate() {
            let mut flags = t.flags & !(TAG_FLAG_SAME_UUID | TAG_FLAG_LAST_TAG);
            if i > 0 {
                flags |= TAG_FLAG_SAME_UUID;
            }
            if i + 1 == n {
                flags |= TAG_FLAG_LAST_TAG;
            }
            put_be32(buf, off, t.blocknr as u32);
            put_be16(buf, off + 4, 0);
            put_be16(buf, off + 6, flags);
            if is_64bit {
                put_be32(buf, off + 8, (t.blocknr >> 32) as u32);
            }
            off += ts;
            if i == 0 {
                put_bytes(buf, off, uuid);
                off += UUID_SIZE;
            }
        }
        n
    }
}

/// Commit block (type 2, §13.5). Checksum fields are always zero on OCFS2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitBlock {
    pub sequence: u32,
    pub commit_sec: u64,
    pub commit_nsec: u32,
}

impl CommitBlock {
    pub fn decode(buf: &[u8], blkno: u64) -> Result<Self> {
        let at = At::new(blkno, "journal commit block");
        at.need_len(buf, COMMIT_BLOCK_LEN)?;
        let h = typed_header(buf, at, BLOCKTYPE_COMMIT)?;
        Ok(CommitBlock { sequence: h.sequence, commit_sec: be64(buf, 0x30), commit_nsec: be32(buf, 0x38) })
    }

    /// Zeroes `buf` (one journal block) and writes the commit block.
    pub fn encode(&self, buf: &mut [u8]) {
        buf.fill(0);
        BlockHeader { blocktype: BLOCKTYPE_COMMIT, sequence: self.sequence }.encode(buf);
        put_be64(buf, 0x30, self.commit_sec);
        put_be32(buf, 0x38, self.commit_nsec);
    }
}

/// Revoke block (type 5, §13.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeBlock {
    pub sequence: u32,
    /// Absolute filesystem block numbers revoked by this transaction.
    pub blocks: Vec<u64>,
}

impl RevokeBlock {
    /// Reads the records covered by `r_count`, which may not exceed the buffer. As in kernel
    /// replay, a trailing partial record is ignored and `r_count` < 16 means no records.
    pub fn decode(buf: &[u8], blkno: u64, is_64bit: bool) -> Result<Self> {
        let at = At::new(blkno, "journal revoke block");
        at.need_len(buf, REVOKE_HEADER_SIZE)?;
        let h = typed_header(buf, at, BLOCKTYPE_REVOKE)?;
        let count = be32(buf, 0x0C);
        at.at_most("r_count", count as u64, buf.len() as u64)?;
        let rs = revoke_record_size(is_64bit);
        let n = (count as usize).saturating_sub(REVOKE_HEADER_SIZE) / rs;
        let blocks = (0..n)
            .map(|i| {
                let off = REVOKE_HEADER_SIZE + i * rs;
                if is_64bit {
                    be64(buf, off)
                } else {
                    be32(buf, off) as u64
                }
            })
            .collect();
        Ok(RevokeBlock { sequence: h.sequence, blocks })
    }

    /// Zeroes `buf` (one journal block) and writes as many leading records as fit and are
    /// representable (< 2^32 without 64BIT); returns how many were written. `r_count` counts
    /// the 16-byte header plus the written records.
    #[must_use]
    pub fn encode(&self, buf: &mut [u8], is_64bit: bool) -> usize {
        buf.fill(0);
        BlockHeader { blocktype: BLOCKTYPE_REVOKE, sequence: self.sequence }.encode(buf);
        let rs = revoke_record_size(is_64bit);
        let n = self
            .blocks
            .iter()
            .take(revoke_records_per_block(buf.len(), is_64bit))
            .take_while(|&&b| is_64bit || b <= u32::MAX as u64)
            .count();
        for (i, &b) in self.blocks.iter().take(n).enumerate() {
            let off = REVOKE_HEADER_SIZE + i * rs;
            if is_64bit {
                put_be64(buf, off, b);
            } else {
                put_be32(buf, off, b as u32);
            }
        }
        put_be32(buf, 0x0C, (REVOKE_HEADER_SIZE + n * rs) as u32);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = *b"0123456789abcdef";

    fn sb(bs: u32) -> JournalSuperblock {
        JournalSuperblock {
            block_size: bs,
            maxlen: 4096,
            first: if bs == 512 { 2 } else { 1 },
            sequence: 1,
            start: 1,
            feature_incompat: FEATURE_INCOMPAT_64BIT,
            uuid: UUID,
            nr_users: 1,
            ..Default::default()
        }
    }

    #[test]
    fn superblock_round_trips() {
        for bs in [512u32, 1024, 4096] {
            let mut s = sb(bs);
            s.errno = -5;
            s.users[0] = 9;
            let mut b = vec![0xFFu8; (bs as usize).max(SUPERBLOCK_SIZE)];
            s.encode(&mut b);
            assert_eq!(&b[..4], &[0xC0, 0x3B, 0x39, 0x98]);
            assert_eq!(JournalSuperblock::decode(&b, 0).unwrap(), s);
            assert_eq!(JournalSuperblock::decode(&b[..SUPERBLOCK_SIZE], 0).unwrap(), s);
            assert!(s.is_64bit() && !s.is_empty() && s.unsupported_features().is_none());
        }
    }

    #[test]
    fn superblock_validation() {
        let mut b = vec![0u8; 4096];
        let good = sb(4096);
        let bad = |f: &dyn Fn(&mut JournalSuperblock), b: &mut Vec<u8>| {
            let mut s = good.clone();
            f(&mut s);
            s.encode(b);
            JournalSuperblock::decode(b, 77).unwrap_err()
        };
        assert!(bad(&|s| s.blocktype = 1, &mut b).to_string().contains("block 77"));
        bad(&|s| s.block_size = 2048, &mut b);
        bad(&|s| s.block_size = 3000, &mut b);
        bad(&|s| s.first = 4096, &mut b);
        bad(&|s| s.first = 0, &mut b);
        bad(&|s| s.start = 4096, &mut b);
        let mut s = good.clone();
        s.blocktype = BLOCKTYPE_SUPERBLOCK_V1;
        s.encode(&mut b);
        assert!(JournalSuperblock::decode(&b, 0).is_ok());
        b[0] = 0;
        assert!(JournalSuperblock::decode(&b, 0).is_err());
        assert!(JournalSuperblock::decode(&b[..1023], 0).is_err());
        s.feature_incompat |= FEATURE_INCOMPAT_CSUM_V3;
        assert_eq!(s.unsupported_features(), Some((0, FEATURE_INCOMPAT_CSUM_V3, 0)));
    }

    #[test]
    fn header_decodes_any_type() {
        let mut b = vec![0u8; 64];
        BlockHeader { blocktype: 9, sequence: 0xDEAD }.encode(&mut b);
        assert_eq!(BlockHeader::decode(&b, 1).unwrap(), BlockHeader { blocktype: 9, sequence: 0xDEAD });
        assert!(BlockHeader::decode(&b[..11], 1).is_err());
    }

    #[test]
    fn capacities() {
        assert_eq!(tags_per_block(4096, false), 508);
        assert_eq!(tags_per_block(4096, true), 339);
        assert_eq!(tags_per_block(512, false), 60);
        assert_eq!(tags_per_block(10, true), 0);
        assert_eq!(revoke_records_per_block(4096, false), 1020);
        assert_eq!(revoke_records_per_block(4096, true), 510);
    }

    #[test]
    fn descriptor_round_trips_and_sets_flags() {
        for is_64bit in [false, true] {
            let d = DescriptorBlock {
                sequence: 42,
                tags: vec![
                    Tag { blocknr: 100, flags: TAG_FLAG_LAST_TAG | TAG_FLAG_SAME_UUID },
                    Tag { blocknr: if is_64bit { 0x1_0000_0005 } else { 5 }, flags: TAG_FLAG_ESCAPE },
                    Tag { blocknr: 7, flags: 0 },
                ],
            };
            let mut b = vec![0u8; 1024];
            assert_eq!(d.encode(&mut b, &UUID, is_64bit), 3);
            let ts = tag_size(is_64bit);
            assert_eq!(&b[HEADER_SIZE + ts..HEADER_SIZE + ts + 16], &UUID);
            let got = DescriptorBlock::decode(&b, 9, is_64bit).unwrap();
            assert_eq!(got.sequence, 42);
            let flags: Vec<u16> = got.tags.iter().map(|t| t.flags).collect();
            assert_eq!(flags, [0, TAG_FLAG_SAME_UUID | TAG_FLAG_ESCAPE, TAG_FLAG_SAME_UUID | TAG_FLAG_LAST_TAG]);
            let nrs: Vec<u64> = got.tags.iter().map(|t| t.blocknr).collect();
            let want: Vec<u64> = d.tags.iter().map(|t| t.blocknr).collect();
            assert_eq!(nrs, want);
            assert!(got.tags[1].is_escaped());
        }
    }

    #[test]
    fn descriptor_filling_a_block_exactly() {
        // 12 + 16 + 339 × 12 = 4096.
        let n = tags_per_block(4096, true);
        assert_eq!(HEADER_SIZE + UUID_SIZE + n * TAG_SIZE_64, 4096);
        let d = DescriptorBlock {
            sequence: 3,
            tags: (0..n as u64 + 5).map(|i| Tag { blocknr: 1000 + i, flags: 0 }).collect(),
        };
        let mut b = vec![0u8; 4096];
        assert_eq!(d.encode(&mut b, &UUID, true), n);
        let got = DescriptorBlock::decode(&b, 1, true).unwrap();
        assert_eq!(got.tags.len(), n);
        assert_eq!(
            got.tags[n - 1],
            Tag { blocknr: 1000 + n as u64 - 1, flags: TAG_FLAG_SAME_UUID | TAG_FLAG_LAST_TAG }
        );

        // Without LAST_TAG the decoder stops when the next tag does not fit (4 spare bytes).
        let n32 = tags_per_block(4096, false);
        let d = DescriptorBlock { sequence: 3, tags: (0..n32 as u64).map(|i| Tag { blocknr: i, flags: 0 }).collect() };
        assert_eq!(d.encode(&mut b, &UUID, false), n32);
        let last = HEADER_SIZE + UUID_SIZE + (n32 - 1) * TAG_SIZE_32;
        put_be16(&mut b, last + 6, TAG_FLAG_SAME_UUID);
        assert_eq!(DescriptorBlock::decode(&b, 1, false).unwrap().tags.len(), n32);
    }

    #[test]
    fn descriptor_encode_stops_at_unrepresentable_block() {
        let d = DescriptorBlock {
            sequence: 1,
            tags: vec![Tag { blocknr: 1, flags: 0 }, Tag { blocknr: 1 << 32, flags: 0 }],
        };
        let mut b = vec![0u8; 512];
        assert_eq!(d.encode(&mut b, &UUID, false), 1);
        assert_eq!(DescriptorBlock::decode(&b, 0, false).unwrap().tags, [Tag { blocknr: 1, flags: TAG_FLAG_LAST_TAG }]);
    }

    #[test]
    fn wrong_type_is_refused() {
        let mut b = vec![0u8; 512];
        CommitBlock { sequence: 1, commit_sec: 2, commit_nsec: 3 }.encode(&mut b);
        let e = DescriptorBlock::decode(&b, 55, false).unwrap_err();
        assert!(e.to_string().contains("block 55") && e.to_string().contains("h_blocktype"), "{e}");
        assert!(RevokeBlock::decode(&b, 55, false).is_err());
    }

    #[test]
    fn commit_round_trips() {
        let c = CommitBlock { sequence: 0xFFFF_FFFE, commit_sec: 1_700_000_000, commit_nsec: 999_999_999 };
        let mut b = vec![0xEEu8; 4096];
        c.encode(&mut b);
        assert_eq!(CommitBlock::decode(&b, 0).unwrap(), c);
        assert!(b[COMMIT_BLOCK_LEN..].iter().all(|&x| x == 0));
        assert!(CommitBlock::decode(&b[..COMMIT_BLOCK_LEN - 1], 0).is_err());
    }

    #[test]
    fn revoke_round_trips() {
        for is_64bit in [false, true] {
            let r = RevokeBlock { sequence: 8, blocks: vec![1, 2, if is_64bit { 1 << 40 } else { 0xFFFF_FFFF }] };
            let mut b = vec![0u8; 1024];
            assert_eq!(r.encode(&mut b, is_64bit), 3);
            assert_eq!(be32(&b, 0x0C) as usize, 16 + 3 * revoke_record_size(is_64bit));
            assert_eq!(RevokeBlock::decode(&b, 0, is_64bit).unwrap(), r);
        }
        // Full block.
        let cap = revoke_records_per_block(512, false);
        let r = RevokeBlock { sequence: 1, blocks: (0..cap as u64 + 3).collect() };
        let mut b = vec![0u8; 512];
        assert_eq!(r.encode(&mut b, false), cap);
        assert_eq!(be32(&b, 0x0C), 512);
        assert_eq!(RevokeBlock::decode(&b, 0, false).unwrap().blocks.len(), cap);
        // r_count beyond the block.
        put_be32(&mut b, 0x0C, 516);
        assert!(RevokeBlock::decode(&b, 0, false).is_err());
    }

    #[test]
    fn escaping() {
        let mut blk = vec![0u8; 512];
        put_be32(&mut blk, 0, JBD2_MAGIC);
        blk[4] = 7;
        assert!(escape(&mut blk));
        assert_eq!(&blk[..5], &[0, 0, 0, 0, 7]);
        assert!(!escape(&mut blk));
        unescape(&mut blk);
        assert_eq!(be32(&blk, 0), JBD2_MAGIC);
        assert!(!escape(&mut [0xC0, 0x3B]));
    }

    #[test]
    fn fuzz_decoders_never_panic() {
        let seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..2000 {
            let len = match next() % 4 {
                0 => (next() % 64) as usize,
                1 => 512,
                2 => 1024,
                _ => (next() % 5000) as usize,
            };
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Make most buffers get past the magic/type checks.
            if next() % 4 != 0 {
                put_be32(&mut b, 0, JBD2_MAGIC);
                put_be32(&mut b, 4, (next() % 6) as u32);
                match next() % 3 {
                    // Plausible s_blocksize.
                    0 => put_be32(&mut b, 0x0C, [512u32, 1024, 4096][(next() % 3) as usize]),
                    // Plausible r_count.
                    1 => put_be32(&mut b, 0x0C, (next() % (len as u64 + 1)) as u32),
                    _ => {}
                }
            }
            let r = std::panic::catch_unwind(|| {
                let _ = BlockHeader::decode(&b, i);
                let _ = JournalSuperblock::decode(&b, i);
                for w in [false, true] {
                    let _ = DescriptorBlock::decode(&b, i, w);
                    let _ = RevokeBlock::decode(&b, i, w);
                }
                let _ = CommitBlock::decode(&b, i);
                let _ = crate::format::heartbeat::HeartbeatBlock::decode(&b, i);
                let mut c = b.clone();
                if escape(&mut c) {
                    unescape(&mut c);
                }
            });
            assert!(r.is_ok(), "decoder panicked: seed {seed:#x}, iteration {i}, len {len}");
        }
    }
}
