//! The mkfs engine: plan a volume from options (`plan`), lay it out in memory (`layout`), write
//! it (`write_volume`). The mkfs.o2fs program only parses its command line and prints.

pub mod layout;
pub mod options;
pub mod plan;

use crate::dev::BlockDevice;
pub use layout::{Identity, Image, Summary};
pub use options::{FeatureLevel, FsType, MkfsOptions};
pub use plan::Plan;

/// Writes a laid-out image: zero ranges first (hole punches on image files), then every
/// metadata block, merged into runs of adjacent blocks, then a flush.
pub fn write_image(dev: &dyn BlockDevice, image: &Image, block_size: usize) -> crate::dev::Result<()> {
    let size = dev.size();
    dev.zero_range(0, (1u64 << 20).min(size))?;
    let tail = (1u64 << 20).min(size);
    dev.zero_range(size - tail, tail)?;
    for &(off, len) in &image.zero {
        dev.zero_range(off, len)?;
    }
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u64;
    for (&blkno, data) in &image.blocks {
        if !run.is_empty() && blkno != run_start + (run.len() / block_size) as u64 {
            dev.write_at(&run, run_start * block_size as u64)?;
            run.clear();
        }
        if run.is_empty() {
            run_start = blkno;
        }
        run.extend_from_slice(data);
    }
    if !run.is_empty() {
        dev.write_at(&run, run_start * block_size as u64)?;
    }
    dev.flush()
}

/// A random identity for a new volume.
pub fn new_identity() -> std::io::Result<Identity> {
    let mut uuid = [0u8; 16];
    let mut gen = [0u8; 4];
    for buf in [&mut uuid[..], &mut gen[..]] {
        getrandom::getrandom(buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Identity { uuid, generation: u32::from_le_bytes(gen), now })
}
