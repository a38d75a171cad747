//! Leaf extent records of one file as a sorted list, and the edits the file operations need
//! (ocfs2-format.md §5.2, §5.4). Pure functions: the tree that stores the list is `extent_tree`.

use crate::format::extent::{ExtentRec, EXT_UNWRITTEN};
use crate::fs::error::FsError;

/// Longest leaf record: `e_leaf_clusters` is 16 bits.
pub const MAX_LEAF_CLUSTERS: u32 = u16::MAX as u32;

/// Physical cluster of a record's logical cluster `cpos`.
fn phys(r: &ExtentRec, cpos: u64, bpc: u64) -> u64 {
    r.blkno + (cpos - r.cpos as u64) * bpc
}

/// The record covering logical cluster `cpos`.
pub fn lookup(recs: &[ExtentRec], cpos: u64) -> Option<&ExtentRec> {
    let i = recs.partition_point(|r| r.end() <= cpos);
    recs.get(i).filter(|r| r.cpos as u64 <= cpos)
}

/// Maps `[cpos, cpos+len)` (a hole) to clusters starting at block `blkno`, merging with the
/// neighbours when logically and physically contiguous with the same flags.
pub fn insert(recs: &mut Vec<ExtentRec>, cpos: u32, len: u32, blkno: u64, flags: u8, bpc: u64) {
    let i = recs.partition_point(|r| (r.cpos as u64) < cpos as u64);
    if i > 0 {
        let prev = &mut recs[i - 1];
        if prev.end() == cpos as u64
            && prev.flags == flags
            && prev.blkno + prev.len as u64 * bpc == blkno
            && prev.len + len <= MAX_LEAF_CLUSTERS
        {
            prev.len += len;
            merge_next(recs, i - 1, bpc);
            return;
        }
    }
    recs.insert(i, ExtentRec { cpos, len, flags, blkno });
    merge_next(recs, i, bpc);
}

fn merge_next(recs: &mut Vec<ExtentRec>, i: usize, bpc: u64) {
    if i + 1 < recs.len() {
        let (a, b) = (recs[i], recs[i + 1]);
        if a.end() == b.cpos as u64
            && a.flags == b.flags
            && a.blkno + a.len as u64 * bpc == b.blkno
            && a.len + b.len <= MAX_LEAF_CLUSTERS
        {
            recs[i].len += b.len;
            recs.remove(i + 1);
        }
    }
}

/// Unmaps `[cpos, cpos+len)`. Returns the freed physical runs as (first block, clusters).
pub fn remove(recs: &mut Vec<ExtentRec>, cpos: u64, len: u64, bpc: u64) -> Vec<(u64, u64)> {
    let end = cpos + len;
    let mut freed = Vec::new();
    let mut out = Vec::with_capacity(recs.len() + 1);
    for r in recs.drain(..) {
        let (rs, re) = (r.cpos as u64, r.end());
        if re <= cpos || rs >= end {
            out.push(r);
            continue;
        }
        let (cs, ce) = (rs.max(cpos), re.min(end));
        freed.push((phys(&r, cs, bpc), ce - cs));
        if rs < cs {
            out.push(ExtentRec { len: (cs - rs) as u32, ..r });
        }
        if ce < re {
            out.push(ExtentRec { cpos: ce as u32, len: (re - ce) as u32, blkno: phys(&r, ce, bpc), flags: r.flags });
        }
    }
    *recs = out;
    freed
}

/// Marks `[cpos, cpos+len)` written (clears UNWRITTEN), splitting records at the edges.
pub fn mark_written(recs: &mut Vec<ExtentRec>, cpos: u64, len: u64, bpc: u64) {
    let end = cpos + len;
    let mut out = Vec::with_capacity(recs.len() + 2);
    for r in recs.drain(..) {
        let (rs, re) = (r.cpos as u64, r.end());
        if r.flags & EXT_UNWRITTEN == 0 || re <= cpos || rs >= end {
            out.push(r);
            continue;
        }
        let (cs, ce) = (rs.max(cpos), re.min(end));
        if rs < cs {
            out.push(ExtentRec { len: (cs - rs) as u32, ..r });
        }
        out.push(ExtentRec {
            cpos: cs as u32,
            len: (ce - cs) as u32,
            blkno: phys(&r, cs, bpc),
            flags: r.flags & !EXT_UNWRITTEN,
        });
        if ce < re {
            out.push(ExtentRec { cpos: ce as u32, len: (re - ce) as u32, blkno: phys(&r, ce, bpc), flags: r.flags });
        }
    }
    // Re-merge neighbours that became alike.
    let mut merged: Vec<ExtentRec> = Vec::with_capacity(out.len());
    for r in out {
        match merged.last_mut() {
            Some(p)
                if p.end() == r.cpos as u64
                    && p.flags == r.flags
                    && p.blkno + p.len as u64 * bpc == r.blkno
                    && p.len + r.len <= MAX_LEAF_CLUSTERS =>
            {
                p.len += r.len
            }
            _ => merged.push(r),
        }
    }
    *recs = merged;
}

/// Checks leaf records read from disk before anything computes with them: in logical order
/// without overlaps (lookups binary-search them and the file loops step from one record's end
/// to the next, so a record out of order made them index out of bounds or spin), and starting
/// on the device (`blkno × block size` must not overflow). `limit` is the first block past it.
pub fn check_leaves(recs: &[ExtentRec], owner: u64, limit: u64) -> Result<(), FsError> {
    let mut prev_end = 0u64;
    for r in recs {
        if (r.cpos as u64) < prev_end || r.blkno >= limit {
            return Err(FsError::Corrupt {
                blkno: owner,
                what: format!("extent record (cpos {}, {} clusters, block {}) overlaps its predecessor or lies past the end of the volume", r.cpos, r.len, r.blkno),
            });
        }
        prev_end = r.end();
    }
    Ok(())
}

/// Clusters mapped.
pub fn clusters(recs: &[ExtentRec]) -> u64 {
    recs.iter().map(|r| r.len as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpos: u32, len: u32, blkno: u64, flags: u8) -> ExtentRec {
        ExtentRec { cpos, len, flags, blkno }
    }

    #[test]
    fn insert_merges_contiguous_runs() {
        let mut v = vec![];
        insert(&mut v, 0, 2, 100, 0, 1);
        insert(&mut v, 2, 3, 102, 0, 1);
        assert_eq!(v, vec![r(0, 5, 100, 0)]);
        insert(&mut v, 10, 1, 200, 0, 1);
        insert(&mut v, 5, 5, 105, 0, 1);
        assert_eq!(v, vec![r(0, 10, 100, 0), r(10, 1, 200, 0)]);
        insert(&mut v, 11, 1, 201, EXT_UNWRITTEN, 1);
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn remove_splits_and_reports_freed_blocks() {
        let mut v = vec![r(0, 10, 160, 0)];
        let freed = remove(&mut v, 3, 4, 16);
        assert_eq!(freed, vec![(160 + 3 * 16, 4)]);
        assert_eq!(v, vec![r(0, 3, 160, 0), r(7, 3, 160 + 7 * 16, 0)]);
        assert_eq!(lookup(&v, 8).map(|x| x.cpos), Some(7));
        assert!(lookup(&v, 4).is_none());
    }

    #[test]
    fn mark_written_splits_unwritten_extents() {
        let mut v = vec![r(0, 10, 100, EXT_UNWRITTEN)];
        mark_written(&mut v, 4, 2, 1);
        assert_eq!(v, vec![r(0, 4, 100, EXT_UNWRITTEN), r(4, 2, 104, 0), r(6, 4, 106, EXT_UNWRITTEN)]);
        mark_written(&mut v, 0, 10, 1);
        assert_eq!(v, vec![r(0, 10, 100, 0)]);
    }
}
