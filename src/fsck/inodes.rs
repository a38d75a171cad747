//! Pass 1 (ocfs2-format.md §4, §7, §9, §10, §15 pass 1): every block of every inode group.
//! A block is a live inode iff it has the `INODE01` signature, the volume generation and
//! VALID_FL (§4.8). Each live inode gets its header, its id2 (local alloc, truncate log, inline
//! data, fast symlink, extent tree) and its size and cluster counts checked; its clusters are
//! claimed (§6.5). Allocator bits are compared with the live set at the end (`usage`).

use super::alloc::Kind;
use super::extents::{self, Tree};
use super::{Checker, InodeInfo, Result};
use crate::format::bytes::{le32, le64, put_le32, put_le64};
use crate::format::features::INCOMPAT_INLINE_DATA;
use crate::format::inline::inline_capacity;
use crate::format::inode::*;
use crate::format::local_alloc::la_bitmap_bytes;
use crate::format::truncate_log::tl_recs_per_inode;
use crate::fs::bitmap;

pub fn pass1(c: &mut Checker) -> Result<()> {
    let groups: Vec<(u16, u64, u64)> = c
        .allocs
        .iter()
        .filter(|a| a.kind == Kind::Inode)
        .flat_map(|a| a.groups().map(move |g| (a.slot, g.blkno, g.desc.bits as u64)))
        .collect();
    for (slot, gblk, bits) in groups {
        let first = gblk + 1;
        let end = (gblk + bits).min(c.blocks);
        if first >= end {
            continue;
        }
        let mut buf = vec![0u8; (end - first) as usize * c.bs];
        c.vol.dev.read_at(&mut buf, first * c.bs as u64)?;
        for (i, b) in buf.chunks(c.bs).enumerate() {
            let blkno = first + i as u64;
            if b.get(..8) != Some(&INODE_SIGNATURE[..]) || le32(b, 0x2C) & VALID_FL == 0 {
                continue;
            }
            if le32(b, 0x60) == c.gen {
                check_inode(c, blkno, b, slot, (blkno - gblk) as u16)?;
            } else if is_named_system_inode(c, blkno) {
                // A system file the system directory names keeps its identity (§4.1).
                let msg = format!("system inode {blkno} has i_fs_generation {:#x}, not {:#x}", le32(b, 0x60), c.gen);
                let mut fixed = b.to_vec();
                put_le32(&mut fixed, 0x60, c.gen);
                if c.report.found("INODE_GEN", blkno, false, msg) {
                    c.write(blkno, &fixed)?;
                }
                check_inode(c, blkno, &fixed, slot, (blkno - gblk) as u16)?;
            }
        }
    }
    let sb = c.vol.sb().clone();
    for (what, blk) in [("root", sb.root_blkno), ("system", sb.system_dir_blkno)] {
        if c.inodes.get(&blk).is_none_or(|i| i.mode & S_IFMT != S_IFDIR) {
            c.report.unfixable("ROOT_NOTDIR", blk, format!("the {what} directory inode {blk} is not a live directory"));
            c.abort = true;
        }
    }
    Ok(())
}

fn is_named_system_inode(c: &Checker, blkno: u64) -> bool {
    let sb = c.vol.sb();
    blkno == sb.root_blkno || blkno == sb.system_dir_blkno || c.sysfiles.values().any(|&v| v == blkno)
}

/// Marks a broken inode free (VALID_FL cleared, i_dtime set); system inodes cannot be.
fn clear(c: &mut Checker, blkno: u64, b: &[u8], why: String) -> Result<()> {
    if le32(b, 0x2C) & SYSTEM_FL != 0 {
        c.report.unfixable("INODE_INVALID", blkno, format!("system inode {blkno}: {why}"));
        return Ok(());
    }
    if c.report.found("INODE_INVALID", blkno, false, format!("inode {blkno}: {why}; inode cleared")) {
        let mut out = b.to_vec();
        put_le32(&mut out, 0x2C, le32(b, 0x2C) & !VALID_FL);
        put_le64(&mut out, 0x48, c.now.max(1));
        c.write(blkno, &out)?;
    }
    Ok(())
}

fn check_inode(c: &mut Checker, blkno: u64, b: &[u8], slot: u16, bit: u16) -> Result<()> {
    let mut write = false;
    let mut b = b.to_vec();
    if le64(&b, 0x50) != blkno {
        let msg = format!("inode {blkno} has i_blkno {}", le64(&b, 0x50));
        if c.report.found("INODE_BLKNO", blkno, false, msg) {
            put_le64(&mut b, 0x50, blkno);
            write = true;
        }
    }
    let mut inode = match Inode::decode(&b, blkno) {
        Ok(i) => i,
        Err(e) => return clear(c, blkno, &b, e.to_string()),
    };
    if matches!(inode.id2, Id2::Super(_)) {
        return clear(c, blkno, &b, "has SUPER_BLOCK_FL".into());
    }
    let ft = inode.file_type();
    if ![S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK].contains(&ft) {
        return clear(c, blkno, &b, format!("mode {:o} has no valid file type", inode.mode));
    }
    if inode.is_inline()
        && (!c.vol.sb().features.has_incompat(INCOMPAT_INLINE_DATA) || (ft != S_IFREG && ft != S_IFDIR))
    {
        return clear(c, blkno, &b, "INLINE_DATA_FL on an inode or volume that cannot have it".into());
    }
    if inode.suballoc_slot != slot || inode.suballoc_bit != bit {
        let msg = format!(
            "inode {blkno} says allocator slot {} bit {}, but lives at slot {slot} bit {bit}",
            inode.suballoc_slot as i16, inode.suballoc_bit
        );
        if c.report.found("INODE_SUBALLOC", blkno, false, msg) {
            inode.suballoc_slot = slot;
            inode.suballoc_bit = bit;
            write = true;
        }
    }
    if inode.dtime != 0
        && c.report.found("INODE_NZ_DTIME", blkno, false, format!("live inode {blkno} has i_dtime {}", inode.dtime))
    {
        inode.dtime = 0;
        write = true;
    }
    let mut info = InodeInfo { mode: inode.mode, links: inode.links_count, flags: inode.flags, ..Default::default() };
    match inode.id2.clone() {
        Id2::Chain(_) | Id2::Super(_) => {}
        Id2::LocalAlloc(_) => write |= local_alloc(c, &mut inode)?,
        Id2::TruncateLog(_) => write |= truncate_log(c, &mut inode),
        Id2::Inline(_) => write |= inline(c, &mut inode),
        Id2::FastSymlink(_) => write |= fast_symlink(c, &mut inode),
        Id2::Extents(mut list) => {
            let mut t = Tree::default();
            if extents::walk(c, blkno, &mut list, &mut t)? {
                inode.id2 = Id2::Extents(list.clone());
                write = true;
            }
            write |= sizes(c, &mut inode, &list, &t);
            info.claims = t.claims;
            info.ebs = t.ebs;
            if ft == S_IFDIR {
                info.leaves = t.leaves;
            }
        }
    }
    if write {
        inode.encode(&mut b);
        c.write(blkno, &b)?;
    }
    c.inodes.insert(blkno, info);
    Ok(())
}

/// i_clusters, i_size and i_last_eb_blk of an extent-mapped inode against its tree (§5.4,
/// §15 INODE_CLUSTERS / INODE_SPARSE_SIZE, §8.3 directory size).
fn sizes(c: &mut Checker, inode: &mut Inode, list: &crate::format::extent::ExtentList, t: &Tree) -> bool {
    let blkno = inode.blkno;
    let mut write = false;
    let clusters: u64 = t.leaves.iter().map(|r| r.len as u64).sum();
    if inode.clusters as u64 != clusters {
        let msg = format!("inode {blkno} has i_clusters {} but its extents hold {clusters}", inode.clusters);
        if t.declined {
            c.report.unfixable("INODE_CLUSTERS", blkno, msg);
        } else if c.report.found("INODE_CLUSTERS", blkno, true, msg) {
            inode.clusters = clusters as u32;
            write = true;
        }
    }
    let want_last = if list.tree_depth > 0 { t.last_leaf } else { 0 };
    if inode.last_eb_blk != want_last && !t.declined {
        let msg =
            format!("inode {blkno} has i_last_eb_blk {} but its rightmost leaf is {want_last}", inode.last_eb_blk);
        if c.report.found("EXTENT_LAST_EB", blkno, false, msg) {
            inode.last_eb_blk = want_last;
            write = true;
        }
    }
    let cs = c.vol.geo.cluster_size as u64;
    let end = t.leaves.iter().map(|r| r.end()).max().unwrap_or(0);
    let want = match inode.file_type() {
        // A regular file's size reaches into its last allocated cluster (§15 INODE_SPARSE_SIZE).
        S_IFREG if end > 0 && inode.size <= (end - 1) * cs => Some(end * cs),
        // A directory is whole blocks, all allocated (§8.3).
        S_IFDIR if inode.size > end * cs || !inode.size.is_multiple_of(c.bs as u64) => {
            Some((inode.size.min(end * cs)) / c.bs as u64 * c.bs as u64)
        }
        _ => None,
    };
    if let Some(size) = want {
        let msg = format!("inode {blkno} has i_size {} but its extents end at cluster {end}", inode.size);
        if t.declined {
            c.report.unfixable("INODE_SIZE", blkno, msg);
        } else if c.report.found("INODE_SIZE", blkno, false, msg) {
            inode.size = size;
            write = true;
        }
    }
    write
}

/// Local alloc window (§7.1). A bad window is reset to empty; a good one claims its clusters
/// whose local bit is clear.
fn local_alloc(c: &mut Checker, inode: &mut Inode) -> Result<bool> {
    let Id2::LocalAlloc(la) = &inode.id2 else { return Ok(false) };
    let (used, total) = (inode.bitmap_used() as u64, inode.bitmap_total() as u64);
    let off = la.bm_off as u64;
    let max = la_bitmap_bytes(c.bs);
    let bad = if la.size != max {
        Some(format!("la_size {} is not {max}", la.size))
    } else if total == 0 && (used != 0 || off != 0) {
        Some(format!("an empty window has i_used {used} and la_bm_off {off}"))
    } else if total > 8 * la.size as u64 || off + total > c.clusters {
        Some(format!("window of {total} clusters at {off} does not fit"))
    } else if used != bitmap::count_set(&la.bitmap, total as usize) as u64 {
        Some(format!("i_used {used} but {} bits are set", bitmap::count_set(&la.bitmap, total as usize)))
    } else {
        None
    };
    if let Some(why) = bad {
        let msg = format!("local alloc inode {}: {why}; window emptied", inode.blkno);
        if c.report.found("LALLOC_INVALID", inode.blkno, false, msg) {
            inode.id2 = Id2::LocalAlloc(crate::format::local_alloc::LocalAlloc::empty(c.bs));
            inode.set_bitmap(0, 0);
            return Ok(true);
        }
        return Ok(false);
    }
    let bm = la.bitmap.clone();
    for i in 0..total {
        if !bitmap::test(&bm, i as usize) {
            c.claim_base(off + i, 1);
        }
    }
    Ok(false)
}

/// Truncate log (§7.2): records inside the volume; their clusters stay claimed until flushed.
fn truncate_log(c: &mut Checker, inode: &mut Inode) -> bool {
    let Id2::TruncateLog(tl) = &mut inode.id2 else { return false };
    let mut write = false;
    let max = tl_recs_per_inode(c.bs);
    if tl.count != max
        && c.report.found(
            "DEALLOC_COUNT",
            inode.blkno,
            false,
            format!("truncate log inode {}: tl_count {} is not {max}", inode.blkno, tl.count),
        )
    {
        tl.count = max;
        write = true;
    }
    let mut keep = Vec::new();
    for r in tl.recs.clone() {
        let end = r.start as u64 + r.clusters as u64;
        if r.start != 0 && end > c.clusters {
            let msg = format!(
                "truncate log inode {}: record ({}, {}) runs past the volume",
                inode.blkno, r.start, r.clusters
            );
            if c.report.found("TRUNCATE_REC_RANGE", inode.blkno, false, msg) {
                write = true;
                continue;
            }
        } else if r.start != 0 {
            c.claim_base(r.start as u64, r.clusters as u64);
        }
        keep.push(r);
    }
    tl.recs = keep;
    write
}

/// Inline data (§9): `id_count` = bs − 0xC8, no clusters, size within the area (= the area
/// for directories).
fn inline(c: &mut Checker, inode: &mut Inode) -> bool {
    let blkno = inode.blkno;
    let cap = inline_capacity(c.bs) as usize;
    let is_dir = inode.is_dir();
    let mut write = false;
    if let Id2::Inline(d) = &mut inode.id2 {
        if d.data.len() != cap
            && c.report.found(
                "INLINE_DATA_COUNT_INVALID",
                blkno,
                false,
                format!("inode {blkno}: id_count {} is not {cap}", d.data.len()),
            )
        {
            d.data.resize(cap, 0);
            write = true;
        }
    }
    if inode.clusters != 0
        && c.report.found(
            "INODE_INLINE_CLUSTERS",
            blkno,
            true,
            format!("inline inode {blkno} has i_clusters {}", inode.clusters),
        )
    {
        inode.clusters = 0;
        write = true;
    }
    let bad_size = if is_dir { inode.size != cap as u64 } else { inode.size > cap as u64 };
    if bad_size
        && c.report.found(
            "INODE_INLINE_SIZE",
            blkno,
            false,
            format!("inline inode {blkno} has i_size {} (area {cap})", inode.size),
        )
    {
        inode.size = cap as u64;
        write = true;
    }
    write
}

/// Fast symlink (§10): NUL-terminated inside id2, `i_size` = length of the target.
fn fast_symlink(c: &mut Checker, inode: &mut Inode) -> bool {
    let blkno = inode.blkno;
    let Id2::FastSymlink(raw) = &mut inode.id2 else { return false };
    let mut write = false;
    let len = match raw.iter().position(|&b| b == 0) {
        Some(n) => n,
        None => {
            let n = (inode.size as usize).min(raw.len().saturating_sub(1));
            if !c.report.found("LINK_NULLTERM", blkno, false, format!("fast symlink {blkno} has no NUL")) {
                return false;
            }
            if let Some(x) = raw.get_mut(n) {
                *x = 0;
            }
            write = true;
            n
        }
    };
    if inode.size != len as u64
        && c.report.found(
            "LINK_SIZE",
            blkno,
            false,
            format!("fast symlink {blkno} has i_size {} but target length {len}", inode.size),
        )
    {
        inode.size = len as u64;
        write = true;
    }
    write
}
