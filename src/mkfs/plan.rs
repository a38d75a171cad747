//! Turns options and a device size into concrete sizes, the way mkfs.ocfs2 chooses its defaults
//! (ocfs2-format.md §2.1), and refuses impossible combinations before anything is written.

use super::options::{resolve_features, FsType, MkfsOptions};
use crate::format::features::{Features, INCOMPAT_LOCAL_MOUNT};
use crate::format::superblock::MAX_SLOTS;
use crate::fs::geometry::Geometry;

/// The smallest journal mkfs.ocfs2 writes, and the JBD2 minimum of 1024 blocks.
const MIN_JOURNAL_BYTES: u64 = 4 << 20;
const MIN_JBD2_BLOCKS: u64 = 1024;

#[derive(Debug, Clone)]
pub struct Plan {
    pub geo: Geometry,
    pub slots: u16,
    pub features: Features,
    pub journal_clusters: u32,
    pub journal64: bool,
    /// Clusters per group of the inode and extent suballocators.
    pub suballoc_cpg: u16,
    /// Groups pre-made in each slot's extent_alloc.
    pub extent_alloc_groups: u32,
    pub label: String,
    pub cluster_stack: Option<String>,
    pub cluster_name: Option<String>,
}

fn default_block_size(volume_bytes: u64) -> u32 {
    if volume_bytes <= 3 << 20 {
        return 512;
    }
    // 4 KiB from 1 GiB up, halved per halving of the volume, down to 1 KiB.
    let mut bs = 4096u32;
    let mut limit = 1u64 << 30;
    while bs > 1024 && volume_bytes < limit {
        bs /= 2;
        limit /= 2;
    }
    bs
}

fn default_cluster_size(opts: &MkfsOptions, volume_bytes: u64) -> Result<u32, String> {
    if matches!(opts.fs_type, FsType::Datafiles | FsType::Vmstore) {
        let gib = volume_bytes >> 30;
        if gib < 2 {
            return Err("filesystem types datafiles and vmstore need a volume of at least 2 GiB".into());
        }
        return Ok(match gib {
            0..=63 => 128 << 10,
            64..=95 => 256 << 10,
            96..=127 => 512 << 10,
            _ => 1 << 20,
        });
    }
    let mut cs = 4096u32;
    while cs < (1 << 20) && volume_bytes / cs as u64 > u32::MAX as u64 - 1 {
        cs *= 2;
    }
    Ok(cs)
}

fn default_slots(local: bool, volume_bytes: u64) -> u16 {
    match volume_bytes {
        _ if local => 1,
        v if v < 2 << 30 => 2,
        v if v < 10 << 30 => 4,
        v if v < 1 << 40 => 8,
        _ => 16,
    }
}

/// Journal blocks by workload type (mkfs.ocfs2's tables).
fn default_journal_blocks(fs_type: FsType, bs: u32, volume_blocks: u64) -> u64 {
    match fs_type {
        FsType::Datafiles => 8192,
        FsType::Mail => match volume_blocks {
            0..=262143 => 16384,
            262144..=524287 => 32768,
            _ => 65536,
        },
        FsType::Vmstore => match volume_blocks {
            0..=262143 => 8192,
            262144..=524287 => 16384,
            _ => 32768,
        },
        FsType::Default => match volume_blocks {
            0..=32767 => MIN_JOURNAL_BYTES / bs as u64,
            32768..=262143 => 4096,
            _ => (volume_blocks / 160).clamp(16384, 65536),
        },
    }
}

fn check_power_of_two(what: &str, v: u32, lo: u32, hi: u32) -> Result<(), String> {
    if !v.is_power_of_two() || v < lo || v > hi {
        return Err(format!("{what} {v} is invalid: a power of two from {lo} to {hi}"));
    }
    Ok(())
}

/// Computes the plan for a device of `device_bytes`.
pub fn plan(opts: &MkfsOptions, device_bytes: u64) -> Result<Plan, String> {
    let features = resolve_features(opts)?;
    let local = features.has_incompat(INCOMPAT_LOCAL_MOUNT);
    let bs = opts.block_size.unwrap_or_else(|| default_block_size(device_bytes));
    check_power_of_two("block size", bs, 512, 4096)?;
    let cs = match opts.cluster_size {
        Some(cs) => cs,
        None => default_cluster_size(opts, device_bytes)?,
    };
    check_power_of_two("cluster size", cs, 4096, 1 << 20)?;
    if cs < bs {
        return Err(format!("cluster size {cs} is smaller than the block size {bs}"));
    }
    let clusters = device_bytes / cs as u64;
    if clusters > u32::MAX as u64 - 1 {
        return Err(format!("{clusters} clusters is too many: use a cluster size of at least {}", cs * 2));
    }
    let geo = Geometry::new(bs.trailing_zeros(), cs.trailing_zeros(), clusters as u32);
    let slots = opts.slots.unwrap_or_else(|| default_slots(local, device_bytes));
    if slots == 0 || slots > MAX_SLOTS {
        return Err(format!("{slots} node slots is invalid: 1 to {MAX_SLOTS}"));
    }
    if local && slots != 1 && opts.slots.is_some() {
        tracing::info!("local volume with {slots} slots: only slot 0 will be used");
    }

    let volume_blocks = geo.total_blocks();
    // One cluster more than 8 clusters: the largest single operation must fit a quarter of half
    // the journal (mkfs.ocfs2's minimum).
    let min_journal = (9 * cs as u64).max(MIN_JOURNAL_BYTES).max(MIN_JBD2_BLOCKS * bs as u64);
    let journal_bytes = match opts.journal_size {
        Some(size) => {
            if size < min_journal {
                return Err(format!("journal size {size} is too small: at least {min_journal} bytes"));
            }
            size
        }
        None => (default_journal_blocks(opts.fs_type, bs, volume_blocks) * bs as u64).max(min_journal),
    };
    let journal_clusters = geo.clusters_for_bytes(journal_bytes);
    if journal_clusters * slots as u64 * geo.bpc() + 1024 > volume_blocks {
        return Err(format!(
            "volume of {device_bytes} bytes is too small for {slots} slots with {} MiB journals",
            journal_clusters * cs as u64 >> 20
        ));
    }
    let suballoc_cpg = geo.suballoc_cpg() as u16;
    let extent_alloc_groups = extent_alloc_groups(opts.fs_type, suballoc_cpg, cs, slots, geo.volume_bytes());
    let journal64 = opts.journal64 || volume_blocks > u32::MAX as u64;
    if opts.label.len() >= 64 {
        return Err(format!("label '{}' is longer than 63 bytes", opts.label));
    }
    if let Some(name) = &opts.cluster_name {
        if name.is_empty() || name.len() > 16 {
            return Err(format!("cluster name '{name}' must be 1 to 16 characters"));
        }
    }
    Ok(Plan {
        geo,
        slots,
        features,
        journal_clusters: journal_clusters as u32,
        journal64,
        suballoc_cpg,
        extent_alloc_groups,
        label: opts.label.clone(),
        cluster_stack: opts.cluster_stack.clone(),
        cluster_name: opts.cluster_name.clone(),
    })
}

/// Smallest group count per slot reaching 0.1 % of the volume (0.3 % for datafiles/vmstore),
/// one fewer if that overshoots 5 %.
fn extent_alloc_groups(fs_type: FsType, cpg: u16, cs: u32, slots: u16, volume_bytes: u64) -> u32 {
    let target_permille = if matches!(fs_type, FsType::Datafiles | FsType::Vmstore) { 3 } else { 1 };
    let unit = cpg as u64 * cs as u64 * slots as u64;
    let mut n = 1u32;
    while (n as u64 * unit) * 1000 < target_permille * volume_bytes {
        n += 1;
    }
    if (n as u64 * unit) * 100 > 5 * volume_bytes {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_mkfs_ocfs2() {
        let opts = MkfsOptions::default();
        let p = plan(&opts, 1 << 30).unwrap();
        assert_eq!((p.geo.block_size, p.geo.cluster_size, p.slots), (4096, 4096, 2));
        assert_eq!(p.journal_clusters, 16384);
        let small = plan(&opts, 256 << 20).unwrap();
        assert_eq!(small.geo.block_size, 1024);
        let ref_like = plan(
            &MkfsOptions { block_size: Some(4096), cluster_size: Some(65536), slots: Some(2), ..Default::default() },
            1 << 30,
        )
        .unwrap();
        assert_eq!(ref_like.journal_clusters, 1024);
        assert_eq!(ref_like.suballoc_cpg, 64);
        assert_eq!(ref_like.extent_alloc_groups, 1);
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let opts = MkfsOptions { slots: Some(8), ..Default::default() };
        assert!(plan(&opts, 16 << 20).unwrap_err().contains("too small"));
        let bad = MkfsOptions { block_size: Some(3000), ..Default::default() };
        assert!(plan(&bad, 1 << 30).is_err());
        let cs_lt_bs = MkfsOptions { block_size: Some(4096), cluster_size: Some(2048), ..Default::default() };
        assert!(plan(&cs_lt_bs, 1 << 30).is_err());
    }
}
