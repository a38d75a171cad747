//! The o2hb disk heartbeat block, one per node sector of the heartbeat region
//! (ocfs2-format.md §12.2). Little-endian.

use super::bytes::*;
use super::error::{At, Result};

/// Bytes of the sector that carry fields; the rest of the sector is zero.
pub const HB_BLOCK_LEN: usize = 0x1C;
/// Offset of `hb_cksum`.
pub const HB_CKSUM_OFFSET: usize = 0x0C;
/// Heartbeat slots in the region (O2NM_MAX_NODES, §12.2).
pub const HB_MAX_NODES: usize = 255;
/// Kernel write interval (O2HB_REGION_TIMEOUT_MS, §12.2).
pub const HB_REGION_TIMEOUT_MS: u32 = 2000;
/// Default `hb_dead_ms`: 31 intervals × 2000 ms (§12.2).
pub const HB_DEFAULT_DEAD_MS: u32 = 31 * HB_REGION_TIMEOUT_MS;

/// One node's heartbeat sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartbeatBlock {
    /// Writer's wall-clock seconds; never 0 for a live writer.
    pub seq: u64,
    /// Node number (= slot index).
    pub node: u8,
    /// Stored checksum (decode); ignored and recomputed by `encode`.
    pub cksum: u32,
    pub generation: u64,
    pub dead_ms: u32,
}

impl HeartbeatBlock {
    /// Decodes a heartbeat sector; `blkno` only names the sector in errors. An all-zero sector
    /// (unused slot) decodes to all-zero fields; any other sector must carry a valid checksum.
    pub fn decode(sector: &[u8], blkno: u64) -> Result<Self> {
        let at = At::new(blkno, "heartbeat block");
        at.need_len(sector, HB_BLOCK_LEN)?;
        let hb = HeartbeatBlock {
            seq: le64(sector, 0x00),
            node: u8_at(sector, 0x08),
            cksum: le32(sector, HB_CKSUM_OFFSET),
            generation: le64(sector, 0x10),
            dead_ms: le32(sector, 0x18),
        };
        if !is_empty(sector) {
            let computed = checksum(sector);
            if computed != hb.cksum {
                return Err(
                    at.invalid(format!("hb_cksum {:#010x} does not match computed {:#010x}", hb.cksum, computed))
                );
            }
        }
        Ok(hb)
    }

    /// Zeroes `sector`, writes the fields and the checksum over the whole sector (§12.2).
    pub fn encode(&self, sector: &mut [u8]) {
        sector.fill(0);
        put_le64(sector, 0x00, self.seq);
        put_u8(sector, 0x08, self.node);
        put_le64(sector, 0x10, self.generation);
        put_le32(sector, 0x18, self.dead_ms);
        let c = checksum(sector);
        put_le32(sector, HB_CKSUM_OFFSET, c);
    }

    /// Same as the module-level [`checksum`].
    pub fn checksum(sector: &[u8]) -> u32 {
        checksum(sector)
    }

    /// Same as the module-level [`is_empty`].
    pub fn is_empty(sector: &[u8]) -> bool {
        is_empty(sector)
    }
}

/// o2hb checksum of a whole sector with `hb_cksum` taken as zero: CRC-32 (reflected
/// 0xEDB88320), initial value 0, no final XOR (§12.2). crc32fast follows zlib (pre- and
/// post-inversion), so seeding it with !0 and inverting its result gives exactly that.
pub fn checksum(sector: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
    let split = HB_CKSUM_OFFSET.min(sector.len());
    h.update(&sector[..split]);
    let field_end = (HB_CKSUM_OFFSET + 4).min(sector.len());
    h.update(&[0u8; 4][..field_end - split]);
    h.update(&sector[field_end..]);
    !h.finalize()
}

/// True when the sector is entirely zero (a slot no node has written, §12.2).
pub fn is_empty(sector: &[u8]) -> bool {
    sector.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector() -> HeartbeatBlock {
        HeartbeatBlock { seq: 0x6500_0000, node: 1, cksum: 0, generation: 0x1122_3344_5566_7788, dead_ms: 62000 }
    }

    #[test]
    fn spec_test_vector() {
        let mut s = vec![0u8; 512];
        vector().encode(&mut s);
        assert_eq!(le32(&s, HB_CKSUM_OFFSET), 0x79C4_B295);
        assert_eq!(checksum(&s), 0x79C4_B295);
        assert_eq!(HeartbeatBlock::checksum(&s), 0x79C4_B295);
        assert_eq!(HB_DEFAULT_DEAD_MS, 62000);
    }

    #[test]
    fn round_trip_512_and_4096() {
        for len in [512usize, 4096] {
            let mut s = vec![0xAAu8; len];
            vector().encode(&mut s);
            assert!(s[HB_BLOCK_LEN..].iter().all(|&b| b == 0));
            let d = HeartbeatBlock::decode(&s, 7).unwrap();
            assert_eq!(d, HeartbeatBlock { cksum: le32(&s, HB_CKSUM_OFFSET), ..vector() });
        }
    }

    #[test]
    fn empty_sector_decodes_and_has_zero_checksum() {
        let s = vec![0u8; 512];
        assert!(is_empty(&s));
        assert_eq!(checksum(&s), 0);
        assert_eq!(HeartbeatBlock::decode(&s, 3).unwrap(), HeartbeatBlock::default());
    }

    #[test]
    fn corruption_is_detected_and_names_the_block() {
        let mut s = vec![0u8; 512];
        vector().encode(&mut s);
        for off in [0usize, 0x08, 0x0C, 0x13, 0x1B, 0x1C, 300, 511] {
            let mut bad = s.clone();
            bad[off] ^= 0x10;
            let e = HeartbeatBlock::decode(&bad, 4242).unwrap_err();
            assert!(e.to_string().contains("block 4242"), "{e}");
            assert!(e.to_string().contains("hb_cksum"), "{e}");
        }
    }

    #[test]
    fn short_sector_is_refused() {
        assert!(HeartbeatBlock::decode(&[1u8; HB_BLOCK_LEN - 1], 1).is_err());
        // Shorter than the checksum field: no panic.
        assert_eq!(checksum(&[0u8; 3]), 0);
        let _ = checksum(&[1u8; 14]);
    }
}
