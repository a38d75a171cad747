//! Extent trees (ocfs2-format.md §5.4): depth, extent block identity, loops, leaf records
//! sorted and non-overlapping, inside the volume, cluster-aligned, known flags, and each
//! cluster claimed by one owner only (§6.5; pass 1b). A bad record is removed from its list;
//! a list that becomes empty is removed from its parent.

use super::{Checker, Result};
use crate::format::extent::{ExtentBlock, ExtentList, ExtentRec, EXT_UNWRITTEN};
use crate::format::features::RO_COMPAT_UNWRITTEN;
use std::collections::HashSet;

/// What a walk found in one inode's tree.
#[derive(Debug, Default)]
pub struct Tree {
    pub leaves: Vec<ExtentRec>,
    pub claims: Vec<(u64, u64)>,
    pub ebs: Vec<u64>,
    /// Rightmost leaf extent block (`i_last_eb_blk`, 0 at depth 0).
    pub last_leaf: u64,
    /// Some repair was declined (the mode did not allow it): counters derived from the model
    /// must not be written either.
    pub declined: bool,
    next_cpos: u64,
    visited: HashSet<u64>,
}

/// Walks the tree rooted in an inode's list; returns whether the root list changed.
pub fn walk(c: &mut Checker, owner: u64, root: &mut ExtentList, t: &mut Tree) -> Result<bool> {
    walk_list(c, owner, root, t)
}

fn walk_list(c: &mut Checker, owner: u64, list: &mut ExtentList, t: &mut Tree) -> Result<bool> {
    let mut changed = false;
    let mut i = 0;
    while i < list.recs.len() {
        let rec = list.recs[i];
        let verdict = if list.tree_depth == 0 {
            leaf(c, owner, rec, t)
        } else {
            interior(c, owner, list.tree_depth, &mut list.recs[i], t)?
        };
        match verdict {
            Verdict::Keep => i += 1,
            Verdict::Changed => {
                changed = true;
                i += 1;
            }
            Verdict::Remove(code, msg) => {
                if c.report.found(code, owner, false, format!("{msg}; record removed")) {
                    list.recs.remove(i);
                    changed = true;
                } else {
                    t.declined = true;
                    i += 1;
                }
            }
            Verdict::Drop => {
                // The subtree lost all its records: the record goes with it.
                list.recs.remove(i);
                changed = true;
            }
        }
    }
    Ok(changed)
}

enum Verdict {
    Keep,
    Changed,
    Remove(&'static str, String),
    Drop,
}

/// A leaf record (§5.2, §5.4).
fn leaf(c: &mut Checker, owner: u64, r: ExtentRec, t: &mut Tree) -> Verdict {
    let what = format!("inode {owner}: extent (cpos {}, {} clusters at block {})", r.cpos, r.len, r.blkno);
    let unwritten_ok = c.vol.sb().features.has_ro_compat(RO_COMPAT_UNWRITTEN);
    if r.flags & !EXT_UNWRITTEN != 0 || (r.flags & EXT_UNWRITTEN != 0 && !unwritten_ok) {
        return Verdict::Remove("EXTENT_FLAGS", format!("{what} has unsupported flags {:#x}", r.flags));
    }
    if r.len == 0 {
        return Verdict::Keep;
    }
    if !r.blkno.is_multiple_of(c.bpc) {
        return Verdict::Remove("EXTENT_BLKNO_UNALIGNED", format!("{what} does not start on a cluster"));
    }
    let start = r.blkno / c.bpc;
    if r.blkno < 2 || start + r.len as u64 > c.clusters {
        return Verdict::Remove("EXTENT_BLKNO_RANGE", format!("{what} is not inside the volume"));
    }
    if (r.cpos as u64) < t.next_cpos {
        return Verdict::Remove("EXTENT_OVERLAP", format!("{what} overlaps the extent before it"));
    }
    if !c.claim(start, r.len as u64) {
        return Verdict::Remove("DUP_CLUSTERS", format!("{what} uses clusters that something else already uses"));
    }
    t.next_cpos = r.end();
    t.leaves.push(r);
    t.claims.push((start, r.len as u64));
    Verdict::Keep
}

/// An interior record: its extent block must be valid and one level down (§5.3, §5.4).
fn interior(c: &mut Checker, owner: u64, depth: u16, r: &mut ExtentRec, t: &mut Tree) -> Result<Verdict> {
    let blk = r.blkno;
    let what = format!("inode {owner}: extent block {blk}");
    if blk < 3 || blk >= c.blocks {
        return Ok(Verdict::Remove("EXTENT_EB_INVALID", format!("{what} is outside the volume")));
    }
    if !t.visited.insert(blk) {
        return Ok(Verdict::Remove("EXTENT_EB_INVALID", format!("{what} appears twice in the tree")));
    }
    let Some(raw) = c.read(blk)? else { return Ok(Verdict::Remove("EXTENT_EB_INVALID", format!("{what} unreadable"))) };
    let mut eb = match ExtentBlock::decode(&raw, blk) {
        Ok(eb) => eb,
        Err(e) => return Ok(Verdict::Remove("EXTENT_EB_INVALID", format!("{what}: {e}"))),
    };
    if let Err(e) = eb.check_identity(blk, c.gen) {
        return Ok(Verdict::Remove("EXTENT_EB_INVALID", format!("{what}: {e}")));
    }
    if eb.list.tree_depth + 1 != depth {
        return Ok(Verdict::Remove(
            "EXTENT_EB_INVALID",
            format!("{what} has depth {} under a depth-{depth} list", eb.list.tree_depth),
        ));
    }
    let child_changed = walk_list(c, owner, &mut eb.list, t)?;
    t.ebs.push(blk);
    if eb.list.tree_depth == 0 {
        t.last_leaf = blk;
    }
    if !child_changed {
        return Ok(Verdict::Keep);
    }
    if eb.list.recs.is_empty() {
        t.ebs.pop();
        return Ok(Verdict::Drop);
    }
    let end = eb.list.recs.last().map_or(0, |l| l.end());
    r.len = end.saturating_sub(r.cpos as u64) as u32;
    let mut buf = vec![0u8; c.bs];
    eb.encode(&mut buf);
    c.write(blk, &buf)?;
    Ok(Verdict::Changed)
}
