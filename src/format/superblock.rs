//! The superblock: an inode-shaped block signed `OCFSV2` whose id2 holds `ocfs2_super_block`
//! (ocfs2-format.md §3), its backups (§2.3) and the probe that finds it (§2.2).

use super::bytes::*;
use super::error::{At, Result};
use super::features::Features;

pub const SUPERBLOCK_SIGNATURE: &[u8; 8] = b"OCFSV2\0\0";
/// The primary superblock is block 2 whatever the block size.
pub const SUPERBLOCK_BLKNO: u64 = 2;
pub const MAJOR_REV: u16 = 0;
pub const MINOR_REV: u16 = 90;
pub const MAX_SLOTS: u16 = 255;
pub const LABEL_LEN: usize = 64;
pub const CLUSTER_NAME_LEN: usize = 16;
/// `ci_stackflags` bit: o2cb global heartbeat.
pub const CLUSTER_O2CB_GLOBAL_HEARTBEAT: u8 = 0x01;
/// State bit: errors were seen, fsck is needed.
pub const STATE_ERROR_FS: u16 = 0x1;

/// `ocfs2_super_block` (at inode offset 0xC0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperBlock {
    pub major_rev: u16,
    pub minor_rev: u16,
    pub mnt_count: u16,
    pub max_mnt_count: u16,
    pub state: u16,
    pub errors: u16,
    pub checkinterval: u32,
    pub lastcheck: u64,
    pub creator_os: u32,
    pub features: Features,
    pub root_blkno: u64,
    pub system_dir_blkno: u64,
    pub blocksize_bits: u32,
    pub clustersize_bits: u32,
    pub max_slots: u16,
    pub tunefs_flag: u16,
    pub uuid_hash: u32,
    pub first_cluster_group: u64,
    pub label: [u8; LABEL_LEN],
    pub uuid: [u8; 16],
    /// Stack label, exactly 4 bytes (`o2cb`, `pcmk`, `cman`), not NUL-terminated.
    pub cluster_stack: [u8; 4],
    pub cluster_flags: u8,
    pub cluster_name: [u8; CLUSTER_NAME_LEN],
    pub xattr_inline_size: u16,
    pub dx_seed: [u32; 3],
}

impl SuperBlock {
    /// Decodes id2 of a superblock block and checks the fields the kernel checks (§3.4).
    pub fn decode(b: &[u8], at: At) -> Result<Self> {
        at.need_len(b, 0x140)?;
        let sb = SuperBlock {
            major_rev: le16(b, 0x00),
            minor_rev: le16(b, 0x02),
            mnt_count: le16(b, 0x04),
            max_mnt_count: le16(b, 0x06),
            state: le16(b, 0x08),
            errors: le16(b, 0x0A),
            checkinterval: le32(b, 0x0C),
            lastcheck: le64(b, 0x10),
            creator_os: le32(b, 0x18),
            features: Features { compat: le32(b, 0x1C), incompat: le32(b, 0x20), ro_compat: le32(b, 0x24) },
            root_blkno: le64(b, 0x28),
            system_dir_blkno: le64(b, 0x30),
            blocksize_bits: le32(b, 0x38),
            clustersize_bits: le32(b, 0x3C),
            max_slots: le16(b, 0x40),
            tunefs_flag: le16(b, 0x42),
            uuid_hash: le32(b, 0x44),
            first_cluster_group: le64(b, 0x48),
            label: array(b, 0x50),
            uuid: array(b, 0x90),
            cluster_stack: array(b, 0xA0),
            cluster_flags: u8_at(b, 0xA4),
            cluster_name: array(b, 0xA8),
            xattr_inline_size: le16(b, 0xB8),
            dx_seed: [le32(b, 0xBC), le32(b, 0xC0), le32(b, 0xC4)],
        };
        if sb.major_rev != MAJOR_REV || sb.minor_rev != MINOR_REV {
            return Err(at.invalid(format!("revision {}.{}, expected 0.90", sb.major_rev, sb.minor_rev)));
        }
        if !(9..=12).contains(&sb.blocksize_bits) {
            return Err(at.out_of_range("s_blocksize_bits", sb.blocksize_bits as u64, "9..=12".into()));
        }
        if !(12..=20).contains(&sb.clustersize_bits) {
            return Err(at.out_of_range("s_clustersize_bits", sb.clustersize_bits as u64, "12..=20".into()));
        }
        if sb.max_slots == 0 || sb.max_slots > MAX_SLOTS {
            return Err(at.out_of_range("s_max_slots", sb.max_slots as u64, "1..=255".into()));
        }
        if sb.root_blkno == 0 || sb.system_dir_blkno == 0 {
            return Err(at.invalid("root or system directory block number is zero"));
        }
        Ok(sb)
    }

    pub fn encode(&self, b: &mut [u8]) {
        put_le16(b, 0x00, self.major_rev);
        put_le16(b, 0x02, self.minor_rev);
        put_le16(b, 0x04, self.mnt_count);
        put_le16(b, 0x06, self.max_mnt_count);
        put_le16(b, 0x08, self.state);
        put_le16(b, 0x0A, self.errors);
        put_le32(b, 0x0C, self.checkinterval);
        put_le64(b, 0x10, self.lastcheck);
        put_le32(b, 0x18, self.creator_os);
        put_le32(b, 0x1C, self.features.compat);
        put_le32(b, 0x20, self.features.incompat);
        put_le32(b, 0x24, self.features.ro_compat);
        put_le64(b, 0x28, self.root_blkno);
        put_le64(b, 0x30, self.system_dir_blkno);
        put_le32(b, 0x38, self.blocksize_bits);
        put_le32(b, 0x3C, self.clustersize_bits);
        put_le16(b, 0x40, self.max_slots);
        put_le16(b, 0x42, self.tunefs_flag);
        put_le32(b, 0x44, self.uuid_hash);
        put_le64(b, 0x48, self.first_cluster_group);
        put_bytes(b, 0x50, &self.label);
        put_bytes(b, 0x90, &self.uuid);
        put_bytes(b, 0xA0, &self.cluster_stack);
        put_u8(b, 0xA4, self.cluster_flags);
        put_bytes(b, 0xA8, &self.cluster_name);
        put_le16(b, 0xB8, self.xattr_inline_size);
        put_le32(b, 0xBC, self.dx_seed[0]);
        put_le32(b, 0xC0, self.dx_seed[1]);
        put_le32(b, 0xC4, self.dx_seed[2]);
    }

    pub fn block_size(&self) -> usize {
        1usize << self.blocksize_bits
    }
    pub fn cluster_size(&self) -> usize {
        1usize << self.clustersize_bits
    }
    pub fn label_str(&self) -> String {
        nul_trimmed(&self.label)
    }
    pub fn cluster_name_str(&self) -> String {
        nul_trimmed(&self.cluster_name)
    }
    pub fn cluster_stack_str(&self) -> String {
        nul_trimmed(&self.cluster_stack)
    }
    /// UUID as the tools print it: 32 upper-case hex digits.
    pub fn uuid_hex(&self) -> String {
        self.uuid.iter().map(|b| format!("{b:02X}")).collect()
    }
}

fn nul_trimmed(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `s_uuid_hash` (§3.3), only written with xattr or indexed-dirs.
pub fn uuid_hash(uuid: &[u8; 16]) -> u32 {
    uuid.iter().fold(0u32, |h, &b| (h << 5) ^ (h >> 27) ^ b as u32)
}

/// Byte offsets of the backup superblocks that exist on a volume of `total_blocks` blocks (§2.3).
pub fn backup_superblock_blknos(block_size: usize, total_blocks: u64) -> Vec<u64> {
    (0..6u32).map(|i| (1u64 << 30 << (2 * i)) / block_size as u64).filter(|&blkno| blkno < total_blocks).collect()
}

/// The leading space mkfs writes in blocks 0-1 (§2.2): 0x02 filler with OCFS1 decoy strings so
/// OCFS1 tools refuse the device. Always 1024 bytes of pattern, repeated over 2 blocks.
pub fn leading_space(block_size: usize) -> Vec<u8> {
    let mut b = vec![0x02u8; 2 * block_size];
    let text = b"this is an ocfs2 volume\0";
    for off in [0x08, 0x88, 0x230, 0x284] {
        put_bytes(&mut b, off, text);
    }
    b
}

/// True when the first bytes of a device belong to a real OCFS1 volume (§2.2).
pub fn is_ocfs1(first_sector: &[u8]) -> bool {
    le32(first_sector, 4) == 2 || slice(first_sector, 8, 9) == b"OracleCFS"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_exist_only_inside_the_volume() {
        assert!(backup_superblock_blknos(4096, 262144).is_empty());
        assert_eq!(backup_superblock_blknos(4096, 5 * 262144), vec![262144, 1048576]);
    }

    #[test]
    fn uuid_hash_mixes_every_byte() {
        assert_eq!(uuid_hash(&[0; 16]), 0);
        assert_ne!(uuid_hash(&[1; 16]), uuid_hash(&[2; 16]));
    }
}
