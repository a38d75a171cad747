//! Allocation from chain allocators through the metadata cache (ocfs2-format.md §6.4): the global
//! bitmap (one bit a cluster) and the per-slot inode and extent-block suballocators (one bit a
//! block), which grow by claiming clusters from the global bitmap.

use super::chain::{clear_bit, new_group, set_bit};
use super::local_alloc;
use crate::format::chain::ChainList;
use crate::format::group::GroupDesc;
use crate::format::inode::{Id2, Inode};
use crate::fs::bitmap;
use crate::fs::cache::MetaCache;
use crate::fs::error::{FsError, Result};
use crate::fs::geometry::Geometry;
use std::ops::Range;

/// Upper bound on groups walked in one chain, so a corrupt loop cannot hang a request.
const MAX_CHAIN_LEN: usize = 1 << 20;

fn chain_of(inode: &Inode) -> Result<&ChainList> {
    inode.chain().ok_or(FsError::Corrupt { blkno: inode.blkno, what: "allocator inode has no chain list".into() })
}

/// Descriptor blocks of every group of an allocator, chain by chain.
pub fn groups_of(cache: &mut MetaCache, alloc: &Inode) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for rec in &chain_of(alloc)?.recs {
        let mut blkno = rec.blkno;
        let mut n = 0;
        while blkno != 0 {
            n += 1;
            if n > MAX_CHAIN_LEN {
                return Err(FsError::Corrupt { blkno: alloc.blkno, what: "chain loops".into() });
            }
            out.push(blkno);
            blkno = cache.read_group(blkno, alloc.blkno)?.next_group;
        }
    }
    Ok(out)
}

/// Sets up to `want` (at least `min`) consecutive free bits in one group, trying `preferred`
/// groups first. Returns (group blkno, first bit, count) and updates group, chain and inode
/// counters in the running transaction.
pub fn alloc_bits(
    cache: &mut MetaCache,
    alloc_blkno: u64,
    want: u32,
    min: u32,
    preferred: &[u64],
) -> Result<Option<(u64, u32, u32)>> {
    let alloc = cache.read_inode(alloc_blkno)?;
    let mut groups = preferred.to_vec();
    groups.extend(groups_of(cache, &alloc)?);
    alloc_bits_in(cache, alloc, want, min, groups, |_, _, nbits| vec![0..nbits])
}

/// [`alloc_bits`] in `groups` only, in that order, and in each group only among the bits that
/// `within(cache, group, bits)` returns.
fn alloc_bits_in(
    cache: &mut MetaCache,
    mut alloc: Inode,
    want: u32,
    min: u32,
    groups: Vec<u64>,
    within: impl Fn(&MetaCache, u64, usize) -> Vec<Range<usize>>,
) -> Result<Option<(u64, u32, u32)>> {
    let alloc_blkno = alloc.blkno;
    for gblk in groups {
        let mut gd = cache.read_group(gblk, alloc_blkno)?;
        if gd.parent_dinode != alloc_blkno || (gd.free_bits_count as u32) < min {
            continue;
        }
        let nbits = (gd.bits as usize).min(gd.bitmap.len() * 8);
        for range in within(cache, gblk, nbits) {
            let end = range.end.min(nbits);
            let mut from = range.start;
            while let Some(start) = bitmap::find_clear_run(&gd.bitmap, end, from, 1) {
                let mut len = 0;
                while (len as u32) < want && start + len < end && !bitmap::test(&gd.bitmap, start + len) {
                    len += 1;
                }
                if len as u32 >= min {
                    claim(cache, &mut alloc, &mut gd, start, len)?;
                    return Ok(Some((gblk, start as u32, len as u32)));
                }
                from = start + len;
            }
        }
    }
    Ok(None)
}

/// The bits of inode group `gblk` (bit b is block `gblk + b`) whose inodes would have their
/// locks mastered here: the group's blocks cut at mastery chunk boundaries
/// (`Geometry::lock_chunk_blocks`), each piece kept if this node masters its chunk. A group
/// made before placement existed (by mkfs, or by an older build) may straddle chunks of
/// different masters.
fn local_bits(cache: &MetaCache, geo: &Geometry, gblk: u64, nbits: usize) -> Vec<Range<usize>> {
    let chunk = geo.lock_chunk_blocks().max(1);
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut b = 0;
    while b < nbits {
        let blkno = gblk + b as u64;
        let end = (((blkno / chunk + 1) * chunk - gblk) as usize).min(nbits);
        if cache.is_local(blkno) {
            match out.last_mut() {
                Some(last) if last.end == b => last.end = end,
                _ => out.push(b..end),
            }
        }
        b = end;
    }
    out
}

/// Sets the free bits `start..start + len` of group `gd` of allocator `alloc`, with the counters.
fn claim(cache: &mut MetaCache, alloc: &mut Inode, gd: &mut GroupDesc, start: usize, len: usize) -> Result<()> {
    for bit in start..start + len {
        set_bit(gd, bit as u16);
    }
    adjust_counts(alloc, gd.chain, -(len as i64))?;
    cache.write_group(gd)?;
    cache.write_inode(alloc)
}

/// Clears `count` bits from `bit` in group `gblk` of allocator `alloc_blkno`.
pub fn free_bits(cache: &mut MetaCache, alloc_blkno: u64, gblk: u64, bit: u32, count: u32) -> Result<()> {
    let mut alloc = cache.read_inode(alloc_blkno)?;
    let mut gd = cache.read_group(gblk, alloc_blkno)?;
    if gd.parent_dinode != alloc_blkno {
        return Err(FsError::Corrupt {
            blkno: gblk,
            what: format!("group does not belong to allocator {alloc_blkno}"),
        });
    }
    let mut freed = 0;
    for b in bit..bit + count {
        if clear_bit(&mut gd, b as u16) {
            freed += 1;
        } else {
            tracing::warn!("freeing bit {b} of group {gblk}, which was already free");
        }
    }
    adjust_counts(&mut alloc, gd.chain, freed)?;
    cache.write_group(&gd)?;
    cache.write_inode(&alloc)
}

/// Applies a change of free bits to the chain record and the inode's used count.
fn adjust_counts(alloc: &mut Inode, chain: u16, free_delta: i64) -> Result<()> {
    let blkno = alloc.blkno;
    let Id2::Chain(cl) = &mut alloc.id2 else {
        return Err(FsError::Corrupt { blkno, what: "allocator inode has no chain list".into() });
    };
    let rec = cl
        .recs
        .get_mut(chain as usize)
        .ok_or(FsError::Corrupt { blkno, what: format!("group names chain {chain}, which does not exist") })?;
    rec.free = (rec.free as i64 + free_delta).clamp(0, rec.total as i64) as u32;
    let used = (alloc.bitmap_used() as i64 - free_delta).max(0) as u32;
    alloc.set_bitmap(used, alloc.bitmap_total());
    Ok(())
}

/// Global bitmap: allocates up to `want` (at least `min`) contiguous clusters, near `goal`.
pub fn alloc_clusters(
    cache: &mut MetaCache,
    geo: &Geometry,
    bitmap_blkno: u64,
    want: u32,
    min: u32,
    goal: Option<u64>,
) -> Result<(u64, u32)> {
    let preferred: Vec<u64> =
        goal.map(|c| vec![geo.global_group_blkno((c / geo.global_cpg() as u64) as u32)]).unwrap_or_default();
    let (gblk, bit, len) = alloc_bits(cache, bitmap_blkno, want, min, &preferred)?.ok_or(FsError::NoSpace)?;
    Ok((group_first_cluster(geo, gblk) + bit as u64, len))
}

/// Global bitmap: frees clusters, which may span groups.
pub fn free_clusters(cache: &mut MetaCache, geo: &Geometry, bitmap_blkno: u64, start: u64, len: u64) -> Result<()> {
    let cpg = geo.global_cpg() as u64;
    let mut c = start;
    while c < start + len {
        let g = c / cpg;
        let end = ((g + 1) * cpg).min(start + len);
        free_bits(cache, bitmap_blkno, geo.global_group_blkno(g as u32), (c - g * cpg) as u32, (end - c) as u32)?;
        c = end;
    }
    Ok(())
}

/// First cluster covered by the global group whose descriptor is at `gblk` (group 0 covers
/// clusters from 0 though its descriptor is at `s_first_cluster_group`, §6.2).
fn group_first_cluster(geo: &Geometry, gblk: u64) -> u64 {
    if gblk == geo.first_cluster_group {
        0
    } else {
        geo.blkno_to_cluster(gblk)
    }
}

/// Suballocator: allocates one block (an inode or extent block), growing the allocator by a
/// new group of `cl_cpg` clusters from the global bitmap when it is full. Returns
/// (block number, bit, group blkno). With `place` (an inode allocator on a cluster mount) the
/// block is taken where this node masters the new inode's cluster lock if it can be: first
/// from the blocks of its groups that lie in chunks it masters, then from a new group placed
/// on chunks this node masters (`Geometry::lock_chunk_blocks`) — taken from the slot's
/// local-alloc window `la_blkno` if it has such a run (no global bitmap lock then), else from
/// the global bitmap — and only then anywhere. When the global bitmap has no room for a new
/// group, the window (which may hold every free cluster of a small volume) goes back to it
/// first: OCFS2 grows suballocators from the window for the same reason.
pub fn alloc_block(
    cache: &mut MetaCache,
    geo: &Geometry,
    sub_blkno: u64,
    bitmap_blkno: u64,
    la_blkno: u64,
    place: Option<&mut Placement>,
) -> Result<(u64, u16, u64)> {
    let mut place = place;
    if let Some(place) = place.as_deref_mut() {
        let sub = cache.read_inode(sub_blkno)?;
        let groups = groups_of(cache, &sub)?;
        let mut found = alloc_bits_in(cache, sub, 1, 1, groups, |cache, g, nbits| local_bits(cache, geo, g, nbits))?;
        if found.is_none() {
            // From the window first: no global bitmap lock.
            let len = chain_of(&cache.read_inode(sub_blkno)?)?.cpg as u32;
            let chunk = geo.lock_chunk_clusters();
            let window = (la_blkno, bitmap_blkno, place.window);
            let fits = |cache: &MetaCache, c: u64| chunks_local(cache, geo, c, len as u64);
            if let Some(cluster) = local_alloc::take_aligned(cache, geo, window, len, chunk, fits)? {
                let gblk = grow_at(cache, geo, sub_blkno, cluster)?;
                found = alloc_bits(cache, sub_blkno, 1, 1, &[gblk])?;
            }
        }
        if found.is_none() && place.seek_chunks {
            match alloc_local_clusters(cache, geo, sub_blkno, bitmap_blkno)? {
                Some(cluster) => {
                    let gblk = grow_at(cache, geo, sub_blkno, cluster)?;
                    found = alloc_bits(cache, sub_blkno, 1, 1, &[gblk])?;
                }
                // Scanning the global bitmap takes its lock: not again before the next growth.
                None => place.seek_chunks = false,
            }
        }
        if let Some((gblk, bit, _)) = found {
            return Ok((gblk + bit as u64, bit as u16, gblk));
        }
    }
    if let Some((gblk, bit, _)) = alloc_bits(cache, sub_blkno, 1, 1, &[])? {
        return Ok((gblk + bit as u64, bit as u16, gblk));
    }
    let cpg = chain_of(&cache.read_inode(sub_blkno)?)?.cpg as u32;
    let (cluster, _) = match alloc_clusters(cache, geo, bitmap_blkno, cpg, cpg, None) {
        Err(FsError::NoSpace) => {
            local_alloc::close(cache, geo, la_blkno, bitmap_blkno)?;
            alloc_clusters(cache, geo, bitmap_blkno, cpg, cpg, None)?
        }
        r => r?,
    };
    if let Some(place) = place {
        place.seek_chunks = true;
    }
    let gblk = grow_at(cache, geo, sub_blkno, cluster)?;
    let (gblk, bit, _) = alloc_bits(cache, sub_blkno, 1, 1, &[gblk])?.ok_or(FsError::NoSpace)?;
    Ok((gblk + bit as u64, bit as u16, gblk))
}

/// Where an inode allocator places new inodes on a cluster mount (see [`alloc_block`]).
#[derive(Debug, Clone)]
pub struct Placement {
    /// Whether to look for free chunks this node masters when its own groups are full. Cleared
    /// when none is found (each look scans the global bitmap under its cluster lock), set again
    /// when the allocator grows anyway.
    pub seek_chunks: bool,
    /// The size of the local-alloc window to open for a new group when none is open, in
    /// clusters (0: groups never come from the window).
    pub window: u32,
}

impl Default for Placement {
    fn default() -> Self {
        Placement { seek_chunks: true, window: 0 }
    }
}

/// Global bitmap: claims `cl_cpg` clusters for a new group of suballocator `sub_blkno`, starting
/// on a chunk boundary, in chunks whose inodes' locks this node masters; None if there are no
/// such free clusters.
fn alloc_local_clusters(
    cache: &mut MetaCache,
    geo: &Geometry,
    sub_blkno: u64,
    bitmap_blkno: u64,
) -> Result<Option<u64>> {
    let len = chain_of(&cache.read_inode(sub_blkno)?)?.cpg as u64;
    let chunk = geo.lock_chunk_clusters();
    let mut bitmap = cache.read_inode(bitmap_blkno)?;
    for gblk in groups_of(cache, &bitmap)? {
        let mut gd = cache.read_group(gblk, bitmap_blkno)?;
        if (gd.free_bits_count as u64) < len {
            continue;
        }
        let first = group_first_cluster(geo, gblk);
        let end = first + gd.bits as u64;
        let mut c = first.div_ceil(chunk) * chunk;
        while c + len <= end {
            let bit = (c - first) as usize;
            let free = (bit..bit + len as usize).all(|b| !bitmap::test(&gd.bitmap, b));
            if free && chunks_local(cache, geo, c, len) {
                claim(cache, &mut bitmap, &mut gd, bit, len as usize)?;
                return Ok(Some(c));
            }
            c += chunk;
        }
    }
    Ok(None)
}

/// Whether this node masters the locks of every chunk (`Geometry::lock_chunk_blocks`) that the
/// `len` clusters from cluster `first` (a chunk boundary) cover.
fn chunks_local(cache: &MetaCache, geo: &Geometry, first: u64, len: u64) -> bool {
    let chunk = geo.lock_chunk_clusters();
    (first..first + len).step_by(chunk as usize).all(|k| cache.is_local(geo.cluster_to_blkno(k)))
}

/// Adds a group at `cluster` (claimed in the global bitmap or the local-alloc window) to a
/// suballocator (§6.4 "Grow a suballocator"): zeroes its `cl_cpg` clusters (so stale blocks
/// never look like live inodes), writes the descriptor, and pushes it at the head of the chain
/// with the fewest bits.
fn grow_at(cache: &mut MetaCache, geo: &Geometry, sub_blkno: u64, cluster: u64) -> Result<u64> {
    let mut sub = cache.read_inode(sub_blkno)?;
    let cl = chain_of(&sub)?.clone();
    let cpg = cl.cpg as u32;
    let gblk = geo.cluster_to_blkno(cluster);
    cache.dev().zero_range(cluster * geo.cluster_size as u64, cpg as u64 * geo.cluster_size as u64)?;
    let bits = (cpg as u64 * cl.bpc as u64) as u16;
    // Chain with the fewest total bits; an unused record counts as empty.
    let chain = if (cl.recs.len() as u16) < cl.count {
        cl.recs.len()
    } else {
        cl.recs.iter().enumerate().min_by_key(|(_, r)| r.total).map(|(i, _)| i).unwrap_or(0)
    };
    let mut gd = new_group(geo.block_size, gblk, bits, chain as u16, sub.fs_generation, sub_blkno);
    let Id2::Chain(list) = &mut sub.id2 else {
        return Err(FsError::Corrupt { blkno: sub_blkno, what: "allocator inode has no chain list".into() });
    };
    if chain == list.recs.len() {
        list.recs.push(Default::default());
    }
    let Some(rec) = list.recs.get_mut(chain) else {
        return Err(FsError::Corrupt { blkno: sub_blkno, what: format!("chain {chain} missing") });
    };
    gd.next_group = rec.blkno;
    rec.blkno = gblk;
    rec.total += bits as u32;
    rec.free += gd.free_bits_count as u32;
    let total = list.total_bits() as u32;
    sub.set_bitmap(sub.bitmap_used() + 1, total);
    sub.clusters += cpg;
    sub.size = sub.clusters as u64 * geo.cluster_size as u64;
    cache.write_group(&gd)?;
    cache.write_inode(&sub)?;
    Ok(gblk)
}

/// Suballocator: frees the block at `blkno` recorded as (`bit`, group `loc`, or blkno − bit).
pub fn free_block(cache: &mut MetaCache, sub_blkno: u64, blkno: u64, bit: u16, loc: u64) -> Result<()> {
    let gblk = if loc != 0 { loc } else { blkno - bit as u64 };
    free_bits(cache, sub_blkno, gblk, bit as u32, 1)
}
