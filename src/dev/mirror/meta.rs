//! The meta-disk: what a node must remember about its replica across restarts.
//!
//! Our own format (DRBD's is not reused), every field little-endian, in 4 KiB sectors from the
//! start of the meta area:
//!
//! ```text
//! sector 0          superblock
//!   0  magic "o2fsMETA"          8  version u32 (1)        12 crc32 u32 (of the sector, this field 0)
//!  16  data size u64 (bytes of replica the mirror exposes, a multiple of 4096)
//!  24  bitmap block u32 (4096)  28  AL extent shift u32     32 flags u32 (CONSISTENT 1, PRIMARY 2,
//!                                                   CRASHED_PRIMARY 4, FRESH_IN_SYNC 8)   36 reserved
//!  40  current id u64           48  bitmap id u64          56 history[0..8] u64 × 8
//! 120  bitmap bits u64           rest zero
//! sectors 1..=8     activity-log ring: transaction `seq` lives in sector 1 + seq % 8
//!   0  magic "ALTX"   4 crc32 (of the sector, this field 0)   8 seq u64   16 count u32 (<= 1000)
//!  20  reserved u32   24 extent numbers u32 × count
//! sectors 9..       out-of-sync bitmap pages
//!   0  crc32 of bytes 4..4096   4 page number u32   8 4088 bytes of bits (bit b of byte i is block
//!      (page × 4088 + i) × 8 + b)
//! ```
//!
//! Placement (DRBD's two kinds): `meta-disk internal` puts the area right after the data at the
//! end of the replica, so the usable size shrinks by it (a deterministic function of the replica
//! size, [`internal_layout`]); `meta-disk PATH[INDEX]` puts it at `INDEX × 128 MiB` of PATH, DRBD's
//! fixed external slot size (enough for about 3.9 TiB of replica at 4 KiB per bit).
//!
//! A superblock that fails its checks is an error naming the check and the offset. A torn AL
//! sector is skipped (the ring keeps the previous transaction). A bitmap page that fails its
//! checksum is read as all ones, with a warning: resyncing too much is safe, too little is not.

use crate::format::bytes::{le32, le64, put_le32, put_le64};
use std::sync::Arc;

use super::bitmap::{Bitmap, PAGE_BITS, PAGE_BYTES};
use super::generation::GenIds;
use crate::dev::{BlockDevice, DevError};

pub const SECTOR: u64 = 4096;
pub const MAGIC: &[u8; 8] = b"o2fsMETA";
pub const VERSION: u32 = 1;
const AL_MAGIC: u32 = u32::from_le_bytes(*b"ALTX");
/// Sectors of the activity-log ring.
pub const AL_SLOTS: u64 = 8;
/// Size of one external meta-disk slot (DRBD's 128 MiB per index).
pub const EXTERNAL_SLOT: u64 = 128 << 20;

/// Superblock flags.
pub mod flags {
    /// The replica holds a whole generation (cleared while it is a sync target).
    pub const CONSISTENT: u32 = 1;
    /// The node is primary; still set at startup means it crashed while primary.
    pub const PRIMARY: u32 = 2;
    /// The node crashed while primary; its activity log was merged into the bitmap. Cleared when
    /// a handshake or resync settles the replicas.
    pub const CRASHED_PRIMARY: u32 = 4;
    /// The node met its peer while both replicas were "just created" (and so equal): a later
    /// resync from this node toward a still-fresh peer can use the bitmap.
    pub const FRESH_IN_SYNC: u32 = 8;
    pub const KNOWN: u32 = CONSISTENT | PRIMARY | CRASHED_PRIMARY | FRESH_IN_SYNC;
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("meta-disk: {0}")]
    Dev(#[from] DevError),
    #[error("meta-disk superblock at offset {offset}: {what}")]
    Super { offset: u64, what: String },
    #[error("replica of {size} bytes is too small for its internal meta-disk ({meta} bytes) and one block")]
    TooSmall { size: u64, meta: u64 },
    #[error("replica of {size} bytes needs {meta} bytes of meta-disk, more than an external slot ({EXTERNAL_SLOT})")]
    SlotTooSmall { size: u64, meta: u64 },
}

type Result<T> = std::result::Result<T, MetaError>;

/// The superblock's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Super {
    pub data_size: u64,
    pub al_extent_shift: u32,
    pub flags: u32,
    pub gens: GenIds,
}

impl Super {
    /// The superblock of a freshly made replica: consistent (it reads as zeros on both nodes),
    /// generation "just created", so the first connection finds the replicas in sync, or fully
    /// syncs from the node that wrote while apart.
    pub fn fresh(data_size: u64, al_extent_shift: u32) -> Super {
        Super { data_size, al_extent_shift, flags: flags::CONSISTENT, gens: GenIds::just_created() }
    }
}

/// Bytes of meta-disk for a replica exposing `data_size` bytes.
pub fn meta_size(data_size: u64) -> u64 {
    let pages = Bitmap::bits_for(data_size).div_ceil(PAGE_BITS);
    SECTOR * (1 + AL_SLOTS + pages)
}

/// `(data_size, meta_base)` of an internal meta-disk on a replica of `replica_size` bytes.
pub fn internal_layout(replica_size: u64) -> Result<(u64, u64)> {
    let upper = meta_size(replica_size);
    let data = replica_size.saturating_sub(upper) / SECTOR * SECTOR;
    if data == 0 {
        return Err(MetaError::TooSmall { size: replica_size, meta: upper });
    }
    Ok((data, data))
}

/// `(data_size, meta_base)` of slot `index` of an external meta-disk for a replica of
/// `replica_size` bytes.
pub fn external_layout(replica_size: u64, index: u32) -> Result<(u64, u64)> {
    let data = replica_size / SECTOR * SECTOR;
    let meta = meta_size(data);
    if meta > EXTERNAL_SLOT {
        return Err(MetaError::SlotTooSmall { size: replica_size, meta });
    }
    Ok((data, index as u64 * EXTERNAL_SLOT))
}

/// Everything read back from a meta area.
pub struct Loaded {
    pub area: MetaArea,
    pub sup: Super,
    pub bitmap: Bitmap,
    /// Hot extents of the newest valid AL transaction.
    pub al: Vec<u32>,
}

/// A meta area at `base` on `dev`; writes go straight to the device.
pub struct MetaArea {
    dev: Arc<dyn BlockDevice>,
    base: u64,
    al_seq: u64,
    /// Written since the last flush.
    unflushed: std::cell::Cell<bool>,
}

/// CRC-32 of a sector whose checksum field at `crc_at` counts as zero.
fn sector_crc(b: &[u8], crc_at: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..crc_at]);
    h.update(&[0; 4]);
    h.update(&b[crc_at + 4..]);
    h.finalize()
}

pub fn encode_super(s: &Super) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    b[..8].copy_from_slice(MAGIC);
    put_le32(&mut b, 8, VERSION);
    put_le64(&mut b, 16, s.data_size);
    put_le32(&mut b, 24, super::bitmap::BM_BLOCK as u32);
    put_le32(&mut b, 28, s.al_extent_shift);
    put_le32(&mut b, 32, s.flags);
    put_le64(&mut b, 40, s.gens.current);
    put_le64(&mut b, 48, s.gens.bitmap);
    for (i, h) in s.gens.history.iter().enumerate() {
        put_le64(&mut b, 56 + 8 * i, *h);
    }
    put_le64(&mut b, 120, Bitmap::bits_for(s.data_size));
    let crc = sector_crc(&b, 12);
    put_le32(&mut b, 12, crc);
    b
}

/// Decodes a superblock read at `offset`; every failed check names itself.
pub fn decode_super(b: &[u8], offset: u64) -> Result<Super> {
    let bad = |what: String| Err(MetaError::Super { offset, what });
    if b.len() != SECTOR as usize {
        return bad(format!("{} bytes, expected {SECTOR}", b.len()));
    }
    if &b[..8] != MAGIC {
        return bad(format!(
            "magic {:02x?}, expected {:?} (not an o2fs meta-disk; create it with -f?)",
            &b[..8],
            "o2fsMETA"
        ));
    }
    let version = le32(b, 8);
    if version != VERSION {
        return bad(format!("version {version}, expected {VERSION}"));
    }
    let (stored, computed) = (le32(b, 12), sector_crc(b, 12));
    if stored != computed {
        return bad(format!("checksum {stored:#010x}, computed {computed:#010x}"));
    }
    let s = Super {
        data_size: le64(b, 16),
        al_extent_shift: le32(b, 28),
        flags: le32(b, 32),
        gens: GenIds {
            current: le64(b, 40),
            bitmap: le64(b, 48),
            history: std::array::from_fn(|i| le64(b, 56 + 8 * i)),
        },
    };
    let bm_block = le32(b, 24);
    if bm_block as u64 != super::bitmap::BM_BLOCK {
        return bad(format!("bitmap block size {bm_block}, expected {}", super::bitmap::BM_BLOCK));
    }
    if s.data_size == 0 || !s.data_size.is_multiple_of(SECTOR) {
        return bad(format!("data size {} is not a positive multiple of {SECTOR}", s.data_size));
    }
    if !(12..=40).contains(&s.al_extent_shift) {
        return bad(format!("activity-log extent shift {} outside 12..=40", s.al_extent_shift));
    }
    if s.flags & !flags::KNOWN != 0 {
        return bad(format!("unknown flags {:#x}", s.flags & !flags::KNOWN));
    }
    let bits = le64(b, 120);
    if bits != Bitmap::bits_for(s.data_size) {
        return bad(format!("bitmap of {bits} bits for {} bytes of data", s.data_size));
    }
    Ok(s)
}

fn encode_al(seq: u64, extents: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    put_le32(&mut b, 0, AL_MAGIC);
    put_le64(&mut b, 8, seq);
    let n = extents.len().min(super::activity_log::MAX_EXTENTS);
    put_le32(&mut b, 16, n as u32);
    for (i, e) in extents.iter().take(n).enumerate() {
        put_le32(&mut b, 24 + 4 * i, *e);
    }
    let crc = sector_crc(&b, 4);
    put_le32(&mut b, 4, crc);
    b
}

/// `(seq, extents)` of a valid AL sector, `None` for a torn or never-written one.
fn decode_al(b: &[u8]) -> Option<(u64, Vec<u32>)> {
    if le32(b, 0) != AL_MAGIC || le32(b, 4) != sector_crc(b, 4) {
        return None;
    }
    let n = le32(b, 16) as usize;
    if n > super::activity_log::MAX_EXTENTS {
        return None;
    }
    Some((le64(b, 8), (0..n).map(|i| le32(b, 24 + 4 * i)).collect()))
}

impl MetaArea {
    fn read(&self, sector: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; SECTOR as usize];
        self.dev.read_at(&mut b, self.base + sector * SECTOR)?;
        Ok(b)
    }

    fn write(&self, sector: u64, b: &[u8]) -> Result<()> {
        self.unflushed.set(true);
        Ok(self.dev.write_at(b, self.base + sector * SECTOR)?)
    }

    /// Writes a fresh meta area (empty bitmap and activity log) at `base` on `dev`.
    pub fn create(dev: Arc<dyn BlockDevice>, base: u64, sup: &Super) -> Result<MetaArea> {
        let mut area = MetaArea { dev, base, al_seq: 0, unflushed: std::cell::Cell::new(false) };
        for slot in 0..AL_SLOTS {
            area.write(1 + slot, &[0; SECTOR as usize])?;
        }
        area.write_al(&[])?;
        let empty = Bitmap::new(Bitmap::bits_for(sup.data_size));
        for p in 0..empty.pages() {
            area.write_page(&empty, p)?;
        }
        area.write_super(sup)?;
        area.dev.flush()?;
        Ok(area)
    }

    /// Reads the meta area at `base` on `dev`; `data_size` is what the placement expects.
    pub fn open(dev: Arc<dyn BlockDevice>, base: u64, data_size: u64) -> Result<Loaded> {
        let mut area = MetaArea { dev, base, al_seq: 0, unflushed: std::cell::Cell::new(false) };
        let sup = decode_super(&area.read(0)?, base)?;
        if sup.data_size != data_size {
            return Err(MetaError::Super {
                offset: base,
                what: format!("data size {} but the replica provides {data_size} bytes", sup.data_size),
            });
        }
        let mut al = (0, Vec::new());
        for slot in 0..AL_SLOTS {
            if let Some((seq, ext)) = decode_al(&area.read(1 + slot)?) {
                if seq >= al.0 {
                    al = (seq, ext);
                }
            }
        }
        area.al_seq = al.0;
        let mut bitmap = Bitmap::new(Bitmap::bits_for(sup.data_size));
        for p in 0..bitmap.pages() {
            let sector = 1 + AL_SLOTS + p as u64;
            let b = area.read(sector)?;
            if le32(&b, 0) == sector_crc(&b, 0) && le32(&b, 4) == p as u32 {
                bitmap.load_page(p, &b[8..]);
            } else {
                tracing::warn!(
                    offset = base + sector * SECTOR,
                    page = p,
                    "meta-disk bitmap page fails its checksum; marking all its blocks out of sync"
                );
                let first = p as u64 * PAGE_BITS;
                bitmap.set_range(first, first + PAGE_BITS);
            }
        }
        bitmap.take_dirty();
        Ok(Loaded { area, sup, bitmap, al: al.1 })
    }

    pub fn write_super(&self, sup: &Super) -> Result<()> {
        self.write(0, &encode_super(sup))
    }

    /// Writes the next activity-log transaction holding `extents`.
    pub fn write_al(&mut self, extents: &[u32]) -> Result<()> {
        self.al_seq += 1;
        self.write(1 + self.al_seq % AL_SLOTS, &encode_al(self.al_seq, extents))
    }

    fn write_page(&self, bitmap: &Bitmap, page: usize) -> Result<()> {
        let mut b = vec![0u8; SECTOR as usize];
        put_le32(&mut b, 4, page as u32);
        b[8..8 + PAGE_BYTES].copy_from_slice(&bitmap.page_bytes(page));
        let crc = sector_crc(&b, 0);
        put_le32(&mut b, 0, crc);
        self.write(1 + AL_SLOTS + page as u64, &b)
    }

    /// Writes the bitmap pages changed since the last call.
    pub fn write_bitmap(&self, bitmap: &mut Bitmap) -> Result<()> {
        for p in bitmap.take_dirty() {
            self.write_page(bitmap, p)?;
        }
        Ok(())
    }

    /// Makes the meta area's writes durable; nothing to do when none happened since the last
    /// flush.
    pub fn flush(&self) -> Result<()> {
        if self.unflushed.replace(false) {
            if let Err(e) = self.dev.flush() {
                self.unflushed.set(true);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::mem::MemDevice;
    use crate::testutil::Rng;

    fn sup() -> Super {
        Super {
            data_size: 64 << 20,
            al_extent_shift: 22,
            flags: flags::CONSISTENT,
            gens: GenIds { current: 9, bitmap: 8, history: [7, 6, 5, 0, 0, 0, 0, 0] },
        }
    }

    #[test]
    fn round_trip_and_layouts() {
        let s = sup();
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(70 << 20));
        let (data, base) = internal_layout(70 << 20).unwrap();
        assert!(data + meta_size(data) <= 70 << 20 && data % SECTOR == 0);
        assert_eq!(external_layout(70 << 20, 2).unwrap(), (70 << 20, 256 << 20));
        assert!(internal_layout(8192).is_err());
        let mut area = MetaArea::create(dev.clone(), base, &s).unwrap();
        let mut bm = Bitmap::new(Bitmap::bits_for(s.data_size));
        bm.set_range(5, 9);
        bm.set_range(PAGE_BITS * 2 + 1, PAGE_BITS * 2 + 2);
        area.write_bitmap(&mut bm).unwrap();
        for i in 0..11u32 {
            area.write_al(&[i, i + 1]).unwrap();
        }
        let got = MetaArea::open(dev.clone(), base, s.data_size).unwrap();
        assert_eq!(got.sup, s);
        assert_eq!(got.bitmap.runs(), bm.runs());
        assert_eq!(got.al, vec![10, 11]);
        assert!(MetaArea::open(dev, base, s.data_size - SECTOR).is_err());
    }

    #[test]
    fn corrupt_superblocks_are_named_errors_and_torn_pages_mark_everything() {
        let s = sup();
        let good = encode_super(&s);
        let mut rng = Rng::new(crate::testutil::seed_from_env(5));
        for _ in 0..2000 {
            let mut b = good.clone();
            let at = rng.below(128) as usize;
            b[at] ^= 1 + rng.below(255) as u8;
            match decode_super(&b, 4096) {
                Err(MetaError::Super { offset: 4096, .. }) => {}
                other => panic!("flip at {at}: {other:?}"),
            }
        }
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
        let area = MetaArea::create(dev.clone(), 0, &Super { data_size: 1 << 20, ..s }).unwrap();
        drop(area);
        dev.write_at(&[0xEE; 16], (1 + AL_SLOTS) * SECTOR + 100).unwrap();
        dev.write_at(&[0xEE; 16], SECTOR + 30).unwrap();
        let got = MetaArea::open(dev, 0, 1 << 20).unwrap();
        assert_eq!(got.bitmap.count(), 256, "the whole (only) page is out of sync");
        assert!(got.al.is_empty());
    }
}
