//! Allocator bitmaps against use (ocfs2-format.md §6.5, §4.8, §15 CLUSTER_ALLOC_BIT and
//! INODE_ALLOC_REPAIR): the global bitmap must be exactly the clusters the passes found in
//! use; an inode group's bits exactly its live inodes; an extent group's bits exactly the
//! extent blocks of live trees. Then, when the run may commit, link counts and every allocator
//! are rewritten from the model.

use super::alloc::Kind;
use super::{Checker, Result};
use crate::format::bytes::put_le16;
use crate::fs::bitmap;

pub fn check_and_rebuild(c: &mut Checker) -> Result<()> {
    let used = global_use(c);
    let live: Vec<u64> = c.inodes.keys().copied().collect();
    let ebs: Vec<u64> = c.inodes.values().flat_map(|i| i.ebs.iter().copied()).collect();
    let first_group = c.vol.geo.first_cluster_group;
    let bpc = c.bpc;
    for a in c.allocs.iter_mut() {
        let kind = a.kind;
        for g in a.groups_mut() {
            let bits = g.bits();
            let mut want = vec![0u8; g.desc.bitmap.len()];
            match kind {
                Kind::Global => {
                    let start = if g.blkno == first_group { 0 } else { g.blkno / bpc };
                    for n in 0..bits {
                        if bitmap::test(&used, start as usize + n) {
                            bitmap::set(&mut want, n);
                        }
                    }
                }
                Kind::Inode | Kind::Extent => bitmap::set(&mut want, 0),
            }
            g.want = want;
        }
        let objs = if a.kind == Kind::Inode { &live } else { &ebs };
        if a.kind != Kind::Global {
            for &o in objs {
                if let Some((g, bit)) = a.locate_mut(o) {
                    bitmap::set(&mut g.want, bit);
                }
            }
        }
    }
    report_differences(c);
    if !c.report.may_commit() {
        return Ok(());
    }
    for &(ino, n) in &c.link_fixes {
        if let Some(mut b) = c.read(ino)? {
            put_le16(&mut b, 0x2A, n);
            c.write(ino, &b)?;
        }
    }
    for a in &c.allocs {
        a.rebuild(c)?;
    }
    c.report.commit_deferred();
    Ok(())
}

/// Clusters in use: the base claims plus every live inode's extents.
fn global_use(c: &Checker) -> Vec<u8> {
    let mut used = c.base.clone();
    for i in c.inodes.values() {
        for &(start, len) in &i.claims {
            bitmap::set_range(&mut used, start as usize, len as usize);
        }
    }
    used
}

/// One problem per run of differing bits, per group.
fn report_differences(c: &mut Checker) {
    let mut found = Vec::new();
    let first_group = c.vol.geo.first_cluster_group;
    for a in &c.allocs {
        for g in a.groups() {
            let mut n = 0;
            while n < g.bits() {
                let disk = bitmap::test(&g.desc.bitmap, n);
                if disk == bitmap::test(&g.want, n) {
                    n += 1;
                    continue;
                }
                let start = n;
                while n < g.bits() && bitmap::test(&g.desc.bitmap, n) == disk && bitmap::test(&g.want, n) != disk {
                    n += 1;
                }
                let state = if disk { "set but not in use" } else { "clear but in use" };
                let msg = match a.kind {
                    Kind::Global => {
                        let base = if g.blkno == first_group { 0 } else { g.blkno / c.bpc } as usize;
                        (
                            "CLUSTER_ALLOC_BIT",
                            format!("global bitmap: clusters {}..{} are {state}", base + start, base + n - 1),
                        )
                    }
                    Kind::Inode => (
                        "INODE_ALLOC_REPAIR",
                        format!(
                            "{}: inode blocks {}..{} have their bit {state}",
                            a.name,
                            g.blkno + start as u64,
                            g.blkno + n as u64 - 1
                        ),
                    ),
                    Kind::Extent => (
                        "EXTENT_ALLOC_BIT",
                        format!(
                            "{}: extent blocks {}..{} have their bit {state}",
                            a.name,
                            g.blkno + start as u64,
                            g.blkno + n as u64 - 1
                        ),
                    ),
                };
                found.push((msg.0, g.blkno, msg.1));
            }
        }
    }
    for (code, blk, msg) in found {
        c.report.deferred(code, blk, msg);
    }
}
