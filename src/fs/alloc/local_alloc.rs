//! The per-slot local-alloc window (ocfs2-format.md §7.1): a run of clusters reserved in the
//! global bitmap at once, from which this node hands out data clusters without touching the
//! global bitmap (in a cluster: without taking its lock). Closing the window gives its unused
//! clusters back. Clusters are always freed straight to the global bitmap; a freed cluster keeps
//! its local bit set, so the window never hands it out again.

use super::allocator::{alloc_bits, free_clusters};
use crate::format::inode::{Id2, Inode};
use crate::format::local_alloc::{la_bitmap_bytes, LocalAlloc};
use crate::fs::bitmap;
use crate::fs::cache::MetaCache;
use crate::fs::error::{FsError, Result};
use crate::fs::geometry::Geometry;

fn window(inode: &mut Inode) -> Result<&mut LocalAlloc> {
    let blkno = inode.blkno;
    match &mut inode.id2 {
        Id2::LocalAlloc(la) => Ok(la),
        _ => Err(FsError::Corrupt { blkno, what: "local alloc inode without a local-alloc bitmap".into() }),
    }
}

/// The window size a mount gets without `localalloc=`, in clusters, chosen as the OCFS2 kernel
/// driver chooses it: as much as one global-bitmap group covers, at most 256 MiB, at most an
/// even share of the volume per slot, and at most what the window's bitmap holds (§7.1).
/// Block sizes whose groups are small keep the old 8 MiB.
/// A small window makes a busy writer refill often, and on a cluster mount every refill takes
/// the global bitmap's lock from the other nodes.
pub fn default_window(geo: &Geometry, slots: u32) -> u32 {
    const MIB: u64 = 1 << 20;
    let (bs, cs) = (geo.block_size as u64, geo.cluster_size as u64);
    if (bs == 512 && cs <= 8192) || (bs == 1024 && cs == 4096) {
        return (8 * MIB / cs) as u32;
    }
    let la_bits = la_bitmap_bytes(geo.block_size) as u64 * 8;
    let per_slot = geo.total_clusters as u64 / slots.max(1) as u64;
    [geo.global_cpg() as u64, 256 * MIB / cs, per_slot, la_bits].into_iter().min().unwrap_or(0).max(1) as u32
}

/// Up to `want` clusters from the window of `la_blkno`, near `goal`, opening or refilling a
/// window of `size` clusters when it has none left. None when `size` is 0 (no window).
pub fn alloc(
    cache: &mut MetaCache,
    geo: &Geometry,
    la_blkno: u64,
    bitmap_blkno: u64,
    want: u32,
    goal: Option<u64>,
    size: u32,
) -> Result<Option<(u64, u32)>> {
    if size == 0 {
        return Ok(None);
    }
    if let Some(got) = take(cache, la_blkno, want, goal)? {
        return Ok(Some(got));
    }
    close(cache, geo, la_blkno, bitmap_blkno)?;
    open(cache, geo, la_blkno, bitmap_blkno, size)?;
    take(cache, la_blkno, want, goal)
}

/// Opens a window of up to `size` clusters from the global bitmap (the window must be closed).
fn open(cache: &mut MetaCache, geo: &Geometry, la_blkno: u64, bitmap_blkno: u64, size: u32) -> Result<()> {
    let mut inode = cache.read_inode(la_blkno)?;
    let cap = (window(&mut inode)?.size as u32) * 8;
    let size = size.min(cap).min(u16::MAX as u32);
    let Some((gblk, bit, len)) = alloc_bits(cache, bitmap_blkno, size, 1, &[])? else { return Err(FsError::NoSpace) };
    let first = if gblk == geo.first_cluster_group { 0 } else { geo.blkno_to_cluster(gblk) } + bit as u64;
    let mut inode = cache.read_inode(la_blkno)?;
    let la = window(&mut inode)?;
    la.bm_off = first as u32;
    la.bitmap.fill(0);
    inode.set_bitmap(0, len);
    cache.write_inode(&inode)
}

/// `len` clusters from the window of `la_blkno` that start on a multiple of `align` (in
/// global cluster numbers) and pass `fits`, for a new suballocator group (OCFS2 grows
/// suballocators from the window too): on a cluster mount this takes no global bitmap lock.
/// A closed window is opened first (of `size` clusters: that takes the global bitmap once); a
/// window without such a run is left as it is. Returns the first cluster.
pub fn take_aligned(
    cache: &mut MetaCache,
    geo: &Geometry,
    (la_blkno, bitmap_blkno, size): (u64, u64, u32),
    len: u32,
    align: u64,
    fits: impl Fn(&MetaCache, u64) -> bool,
) -> Result<Option<u64>> {
    if size == 0 {
        return Ok(None);
    }
    if cache.read_inode(la_blkno)?.bitmap_total() == 0 {
        open(cache, geo, la_blkno, bitmap_blkno, size)?;
    }
    let mut inode = cache.read_inode(la_blkno)?;
    let (total, used) = (inode.bitmap_total() as u64, inode.bitmap_used());
    let la = window(&mut inode)?;
    let (off, total, align) = (la.bm_off as u64, total.min(la.bitmap.len() as u64 * 8), align.max(1));
    let mut c = off.div_ceil(align) * align;
    let found = loop {
        if c + len as u64 > off + total {
            return Ok(None);
        }
        let start = (c - off) as usize;
        if (start..start + len as usize).all(|b| !bitmap::test(&la.bitmap, b)) && fits(cache, c) {
            bitmap::set_range(&mut la.bitmap, start, len as usize);
            break c;
        }
        c += align;
    };
    inode.set_bitmap(used + len, total as u32);
    cache.write_inode(&inode)?;
    Ok(Some(found))
}

/// Hands out clusters from the open window, if it has any free.
fn take(cache: &mut MetaCache, la_blkno: u64, want: u32, goal: Option<u64>) -> Result<Option<(u64, u32)>> {
    let mut inode = cache.read_inode(la_blkno)?;
    let (total, used) = (inode.bitmap_total() as usize, inode.bitmap_used());
    if total == 0 || used as usize >= total {
        return Ok(None);
    }
    let la = window(&mut inode)?;
    let off = la.bm_off as u64;
    let from = goal.filter(|&g| g >= off && g < off + total as u64).map_or(0, |g| (g - off) as usize);
    let start = match bitmap::find_clear_run(&la.bitmap, total, from, 1)
        .or_else(|| bitmap::find_clear_run(&la.bitmap, total, 0, 1))
    {
        Some(s) => s,
        None => return Ok(None),
    };
    let mut len = 0usize;
    while len < want as usize && start + len < total && !bitmap::test(&la.bitmap, start + len) {
        len += 1;
    }
    bitmap::set_range(&mut la.bitmap, start, len);
    inode.set_bitmap(used + len as u32, total as u32);
    cache.write_inode(&inode)?;
    Ok(Some((off + start as u64, len as u32)))
}

/// Closes the window: its unused clusters go back to the global bitmap.
pub fn close(cache: &mut MetaCache, geo: &Geometry, la_blkno: u64, bitmap_blkno: u64) -> Result<()> {
    let mut inode = cache.read_inode(la_blkno)?;
    let total = inode.bitmap_total() as usize;
    if total == 0 {
        return Ok(());
    }
    let la = window(&mut inode)?;
    let off = la.bm_off as u64;
    let mut i = 0;
    while let Some(start) = bitmap::find_clear_run(&la.bitmap, total, i, 1) {
        let mut end = start;
        while end < total && !bitmap::test(&la.bitmap, end) {
            end += 1;
        }
        free_clusters(cache, geo, bitmap_blkno, off + start as u64, (end - start) as u64)?;
        i = end;
    }
    let la = window(&mut inode)?;
    la.bm_off = 0;
    la.bitmap.fill(0);
    inode.set_bitmap(0, 0);
    cache.write_inode(&inode)
}

/// Free clusters still waiting in the window (they count as free space).
pub fn unused(cache: &mut MetaCache, la_blkno: u64) -> Result<u64> {
    let inode = cache.read_inode(la_blkno)?;
    Ok(inode.bitmap_total().saturating_sub(inode.bitmap_used()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_window_follows_the_volume() {
        // 4 KiB blocks and clusters, 2 GiB, one slot: the window's bitmap is the limit.
        assert_eq!(default_window(&Geometry::new(12, 12, 1 << 19), 1), (4096 - 0xD0) * 8);
        // 64 MiB over 4 slots: an even share each.
        assert_eq!(default_window(&Geometry::new(12, 12, 1 << 14), 4), 1 << 12);
        // 1 MiB clusters on 1 TiB: 256 MiB.
        assert_eq!(default_window(&Geometry::new(12, 20, 1 << 20), 2), 256);
        // 512-byte blocks with 4 KiB clusters keep the old 8 MiB.
        assert_eq!(default_window(&Geometry::new(9, 12, 1 << 19), 1), 2048);
    }
}
