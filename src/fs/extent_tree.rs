//! An inode's extent tree (ocfs2-format.md §5.4), stored from its list of leaf records.
//!
//! The tree is derived state: `store` lays the sorted leaf records out as full leaves (the last
//! one partial) under as many interior levels as needed, reusing the file's existing extent
//! blocks level by level and writing only blocks whose bytes change. Appending therefore
//! rewrites only the rightmost path; the layout always satisfies fsck's rules by construction.

use super::alloc::allocator::{alloc_block, free_block};
use super::cache::MetaCache;
use super::error::{FsError, Result};
use super::geometry::Geometry;
use super::sysfiles::SysFiles;
use crate::format::extent::*;
use crate::format::inode::{Id2, Inode};

/// One extent block of a tree, with what is needed to free it.
#[derive(Debug, Clone, Copy)]
struct Eb {
    blkno: u64,
    slot: u16,
    bit: u16,
    loc: u64,
}

/// A loaded tree: the leaf records and the extent blocks per depth (index 0 = leaves).
pub struct Tree {
    pub recs: Vec<ExtentRec>,
    ebs: Vec<Vec<Eb>>,
}

/// Where a tree is read from: the mounted filesystem's cache (under the owner's cluster lock)
/// or the volume itself (mount set-up, fsck, tools).
pub trait ExtentBlocks {
    /// Extent block `blkno` of inode `owner`'s tree, its signature and identity checked.
    fn extent_block(&mut self, blkno: u64, owner: u64) -> Result<ExtentBlock>;
    /// Blocks on the volume: every leaf must lie below.
    fn volume_blocks(&self) -> u64;
}

impl ExtentBlocks for MetaCache {
    fn extent_block(&mut self, blkno: u64, owner: u64) -> Result<ExtentBlock> {
        self.read_extent_block(blkno, owner)
    }
    // The device bounds the volume (checked at mount), which is all the cache lets us see here.
    fn volume_blocks(&self) -> u64 {
        self.dev().size() / self.block_size() as u64
    }
}

impl ExtentBlocks for &super::volume::Volume {
    fn extent_block(&mut self, blkno: u64, _owner: u64) -> Result<ExtentBlock> {
        self.read_extent_block(blkno)
    }
    fn volume_blocks(&self) -> u64 {
        self.geo.total_blocks()
    }
}

/// Reads an inode's whole tree. Checks depth, identity, loops (no block twice) and the leaves.
pub fn load(src: &mut impl ExtentBlocks, inode: &Inode) -> Result<Tree> {
    let root =
        inode.extents().ok_or(FsError::Corrupt { blkno: inode.blkno, what: "inode has no extent list".into() })?;
    let mut ebs: Vec<Vec<Eb>> = vec![Vec::new(); root.tree_depth as usize];
    let mut recs = Vec::new();
    let mut visits = std::collections::HashSet::new();
    walk(src, root, inode.blkno, inode.blkno, &mut recs, &mut ebs, &mut visits)?;
    // Out of order or off the volume, the records would mislead lookups and overflow the
    // offset arithmetic of their users (journal map, slot map).
    super::extent_map::check_leaves(&recs, inode.blkno, src.volume_blocks())?;
    Ok(Tree { recs, ebs })
}

/// `parent`: the block holding `list` (for errors); `owner`: the inode whose tree it is.
#[allow(clippy::too_many_arguments)]
fn walk(
    src: &mut impl ExtentBlocks,
    list: &ExtentList,
    parent: u64,
    owner: u64,
    recs: &mut Vec<ExtentRec>,
    ebs: &mut Vec<Vec<Eb>>,
    visits: &mut std::collections::HashSet<u64>,
) -> Result<()> {
    if list.tree_depth == 0 {
        recs.extend(list.recs.iter().filter(|r| r.len > 0));
        return Ok(());
    }
    for rec in &list.recs {
        // Each extent block once: a count bound let records that name one block again and
        // again make a single load read millions of blocks before it failed.
        if !visits.insert(rec.blkno) {
            return Err(FsError::Corrupt {
                blkno: parent,
                what: format!("extent block {} appears twice in the tree", rec.blkno),
            });
        }
        let eb = src.extent_block(rec.blkno, owner)?;
        if eb.list.tree_depth + 1 != list.tree_depth {
            return Err(FsError::Corrupt {
                blkno: rec.blkno,
                what: format!("extent block at depth {} under depth {}", eb.list.tree_depth, list.tree_depth),
            });
        }
        if let Some(level) = ebs.get_mut(eb.list.tree_depth as usize) {
            level.push(Eb { blkno: eb.blkno, slot: eb.suballoc_slot, bit: eb.suballoc_bit, loc: eb.suballoc_loc });
        }
        walk(src, &eb.list, rec.blkno, owner, recs, ebs, visits)?;
    }
    Ok(())
}

/// A node being laid out: its records and the logical range it covers.
struct Node {
    recs: Vec<ExtentRec>,
    start: u64,
    end: u64,
}

/// Interior records over `children` (§5.4: they tile the logical space; each length reaches the
/// next record's start, the last reaches the end of the rightmost leaf beneath it).
fn interior(children: &[(u64, &Node)]) -> Vec<ExtentRec> {
    children
        .iter()
        .enumerate()
        .map(|(i, (blkno, n))| {
            let end = children.get(i + 1).map_or(n.end, |(_, next)| next.start);
            ExtentRec { cpos: n.start as u32, len: (end - n.start) as u32, flags: 0, blkno: *blkno }
        })
        .collect()
}

/// Writes `tree.recs` as the inode's tree, updating `inode.id2`, `i_last_eb_blk` and
/// `i_clusters` (the caller writes the inode).
pub fn store(cache: &mut MetaCache, geo: &Geometry, sys: &SysFiles, inode: &mut Inode, tree: &mut Tree) -> Result<()> {
    let bs = geo.block_size;
    let (root_cap, eb_cap) = (recs_per_inode(bs) as usize, recs_per_block(bs) as usize);
    let mut old = std::mem::take(&mut tree.ebs);
    let mut new_ebs: Vec<Vec<Eb>> = Vec::new();
    let mut level: Vec<Node> = if tree.recs.len() <= root_cap {
        vec![]
    } else {
        // The leftmost subtree starts at cpos 0 even when the file starts with a hole, as the
        // kernel lays it out (§5.4); with a later first cpos, debugfs.ocfs2 `cat` read zeros
        // for much of such a file's data (tests/mount.rs random_file_ops_match_a_model).
        tree.recs
            .chunks(eb_cap)
            .enumerate()
            .map(|(i, c)| Node {
                recs: c.to_vec(),
                start: if i == 0 { 0 } else { c[0].cpos as u64 },
                end: c[c.len() - 1].end(),
            })
            .collect()
    };
    let mut root_recs = tree.recs.clone();
    let mut depth = 0u16;
    while !level.is_empty() {
        // Place this level's nodes in extent blocks (reusing the old ones of the same depth).
        let mut olds = old.get_mut(depth as usize).map(std::mem::take).unwrap_or_default().into_iter();
        let mut placed = Vec::new();
        for _ in &level {
            let eb = match olds.next() {
                Some(eb) => eb,
                None => {
                    let (blkno, bit, loc) = alloc_block(
                        cache,
                        geo,
                        sys.extent_alloc[sys.slot as usize],
                        sys.global_bitmap,
                        sys.local_alloc[sys.slot as usize],
                        None,
                    )?;
                    Eb { blkno, slot: sys.slot, bit, loc }
                }
            };
            placed.push(eb);
        }
        for eb in olds {
            release(cache, sys, eb)?;
        }
        for (i, (node, eb)) in level.iter().zip(&placed).enumerate() {
            let next_leaf = if depth == 0 { placed.get(i + 1).map_or(0, |e| e.blkno) } else { 0 };
            let block = ExtentBlock {
                suballoc_slot: eb.slot,
                suballoc_bit: eb.bit,
                fs_generation: inode.fs_generation,
                blkno: eb.blkno,
                suballoc_loc: eb.loc,
                next_leaf_blk: next_leaf,
                list: ExtentList { tree_depth: depth, count: eb_cap as u16, recs: node.recs.clone() },
            };
            let mut bytes = vec![0u8; bs];
            block.encode(&mut bytes);
            if cache.read(eb.blkno, inode.blkno).ok().as_deref() != Some(&bytes[..]) {
                cache.write(eb.blkno, inode.blkno, bytes)?;
            }
        }
        let children: Vec<(u64, &Node)> = placed.iter().map(|e| e.blkno).zip(level.iter()).collect();
        let parents: Vec<Node> = if children.len() <= root_cap {
            root_recs = interior(&children);
            vec![]
        } else {
            children
                .chunks(eb_cap)
                .map(|c| Node { recs: interior(c), start: c[0].1.start, end: c[c.len() - 1].1.end })
                .collect()
        };
        if depth == 0 {
            inode.last_eb_blk = placed.last().map_or(0, |e| e.blkno);
        }
        new_ebs.push(placed);
        depth += 1;
        level = parents;
        if depth > MAX_TREE_DEPTH {
            return Err(FsError::TooBig);
        }
    }
    // Levels the new tree no longer has.
    for eb in old.into_iter().skip(depth as usize).flatten() {
        release(cache, sys, eb)?;
    }
    if depth == 0 {
        inode.last_eb_blk = 0;
    }
    inode.clusters = tree.recs.iter().map(|r| r.len).sum();
    inode.id2 = Id2::Extents(ExtentList { tree_depth: depth, count: root_cap as u16, recs: root_recs });
    tree.ebs = new_ebs;
    Ok(())
}

fn release(cache: &mut MetaCache, sys: &SysFiles, eb: Eb) -> Result<()> {
    cache.forget(eb.blkno);
    free_block(cache, sys.extent_alloc_of(eb.slot), eb.blkno, eb.bit, eb.loc)
}

/// Frees every extent block of a tree (the data clusters are the caller's).
pub fn free_all(cache: &mut MetaCache, sys: &SysFiles, tree: &mut Tree) -> Result<()> {
    for eb in std::mem::take(&mut tree.ebs).into_iter().flatten() {
        release(cache, sys, eb)?;
    }
    Ok(())
}
