//! Pass 0 (ocfs2-format.md §15 0a–0c, §6.3): find the system files, then walk the chains of
//! `global_bitmap` and every suballocator: group descriptors must be where they are expected,
//! carry the right signature, blkno, generation, parent and chain, and every counter must agree
//! with the level below it. Invalid groups are cut out of their chain; missing global groups
//! are recreated; counters are rebuilt at the end of the run (`alloc::Alloc::rebuild`).

use super::alloc::{Alloc, Group, Kind};
use super::{dirs, Checker, Result};
use crate::format::chain::chain_recs_per_inode;
use crate::format::features::COMPAT_BACKUP_SB;
use crate::format::group::{group_bitmap_bytes, GroupDesc};
use crate::format::inode::{Inode, BITMAP_FL, CHAIN_FL, S_IFMT, VALID_FL};
use crate::format::superblock::backup_superblock_blknos;
use crate::fs::sysfile::SystemFile;
use std::collections::HashSet;

pub fn pass0(c: &mut Checker) -> Result<()> {
    find_system_files(c)?;
    if c.abort {
        return Ok(());
    }
    let slots = c.vol.sb().max_slots;
    let mut list = vec![(SystemFile::GlobalBitmap, Kind::Global), (SystemFile::GlobalInodeAlloc, Kind::Inode)];
    list.extend((0..slots).map(|s| (SystemFile::ExtentAlloc(s), Kind::Extent)));
    list.extend((0..slots).map(|s| (SystemFile::InodeAlloc(s), Kind::Inode)));
    let mut seen = HashSet::new();
    for (file, kind) in list {
        let Some(blkno) = c.sysfile(&file.name()) else { continue };
        let slot = file.slot().unwrap_or(u16::MAX);
        match load(c, file.name(), blkno, kind, slot, &mut seen)? {
            Some(a) => c.allocs.push(a),
            None if kind == Kind::Global => c.abort = true,
            None => {}
        }
    }
    if !c.abort {
        base_claims(c);
    }
    Ok(())
}

/// Reads the system directory leniently and records every system file; the globals and the
/// per-slot files of §11 must all be there.
fn find_system_files(c: &mut Checker) -> Result<()> {
    let sysdir = c.vol.sb().system_dir_blkno;
    let inode = match c.read(sysdir)?.map(|b| Inode::decode(&b, sysdir)) {
        Some(Ok(i)) if i.is_valid() && i.is_dir() && i.check_identity(sysdir, c.gen).is_ok() => i,
        _ => {
            c.report.unfixable(
                "SYSTEM_DIR_INVALID",
                sysdir,
                format!("system directory inode {sysdir} is not a valid directory"),
            );
            c.abort = true;
            return Ok(());
        }
    };
    for (name, ino) in dirs::lenient_entries(c, &inode)? {
        if let Ok(name) = String::from_utf8(name) {
            c.sysfiles.entry(name).or_insert(ino);
        }
    }
    for (idx, f) in SystemFile::all(c.vol.sb().max_slots).into_iter().enumerate() {
        if c.sysfile(&f.name()).is_some() {
            continue;
        }
        // mkfs allocates the system files in §11 order right after the system directory
        // (§2.4 step 3): a live inode of the right kind there is relinked under its name.
        let cand = sysdir + 1 + idx as u64;
        let fits = |i: &Inode| {
            i.is_valid()
                && i.is_system()
                && i.check_identity(cand, c.gen).is_ok()
                && i.flags & f.extra_flags() == f.extra_flags()
                && i.file_type() == f.mode() & S_IFMT
        };
        let found = c.read(cand)?.and_then(|b| Inode::decode(&b, cand).ok()).filter(|i| fits(i));
        let taken = c.sysfiles.values().any(|&v| v == cand);
        if found.is_none() || taken {
            c.report.unfixable(
                "SYSTEM_FILE_MISSING",
                sysdir,
                format!("system file {} is missing from the system directory", f.name()),
            );
            if matches!(f, SystemFile::GlobalBitmap | SystemFile::GlobalInodeAlloc) {
                c.abort = true;
            }
            continue;
        }
        let msg = format!("system file {} is missing from the system directory; inode {cand} relinked", f.name());
        if c.report.found("SYSTEM_FILE_MISSING", sysdir, false, msg) {
            let ft = crate::format::dirent::file_type_of_mode(f.mode());
            if !dirs::add_on_disk(c, &inode, f.name().as_bytes(), cand, ft)? {
                if let Some(p) = c.report.problems.last_mut() {
                    p.fixed = false;
                }
            }
        }
        c.sysfiles.insert(f.name(), cand);
    }
    Ok(())
}

/// Loads and checks one chain allocator. None when its inode is unusable.
fn load(
    c: &mut Checker,
    name: String,
    blkno: u64,
    kind: Kind,
    slot: u16,
    seen: &mut HashSet<u64>,
) -> Result<Option<Alloc>> {
    let Some(raw) = c.read(blkno)? else {
        c.report.unfixable("CHAIN_INODE_INVALID", blkno, format!("{name}: inode {blkno} is outside the volume"));
        return Ok(None);
    };
    let inode = match Inode::decode(&raw, blkno) {
        Ok(i)
            if i.check_identity(blkno, c.gen).is_ok()
                && i.flags & (VALID_FL | CHAIN_FL | BITMAP_FL) == (VALID_FL | CHAIN_FL | BITMAP_FL) =>
        {
            i
        }
        Ok(_) => {
            c.report.unfixable(
                "CHAIN_INODE_INVALID",
                blkno,
                format!("{name}: inode {blkno} is not a valid chain allocator"),
            );
            return Ok(None);
        }
        Err(e) => {
            c.report.unfixable("CHAIN_INODE_INVALID", blkno, format!("{name}: {e}"));
            return Ok(None);
        }
    };
    let Some(cl) = inode.chain().cloned() else { return Ok(None) };
    let want_bpc = if kind == Kind::Global { 1 } else { c.bpc as u16 };
    if cl.bpc != want_bpc || cl.cpg == 0 {
        c.report.unfixable(
            "CHAIN_CPG",
            blkno,
            format!("{name}: cl_bpc {} / cl_cpg {} (bits per cluster must be {want_bpc})", cl.bpc, cl.cpg),
        );
        return Ok(None);
    }
    if kind == Kind::Global && cl.cpg as u32 != c.vol.geo.global_cpg() {
        c.report.deferred(
            "CHAIN_CPG",
            blkno,
            format!("{name}: cl_cpg is {} but must be {}", cl.cpg, c.vol.geo.global_cpg()),
        );
    }
    if cl.count != chain_recs_per_inode(c.bs) {
        c.report.deferred(
            "CHAIN_COUNT",
            blkno,
            format!("{name}: cl_count is {} but must be {}", cl.count, chain_recs_per_inode(c.bs)),
        );
    }
    let mut a = Alloc {
        name: name.clone(),
        blkno,
        kind,
        slot,
        inode: inode.clone(),
        cpg: cl.cpg,
        bpc: cl.bpc,
        chains: Vec::new(),
    };
    let max_bits = (cl.cpg as u64 * cl.bpc as u64).min(group_bitmap_bytes(c.bs) as u64 * 8);
    for (k, rec) in cl.recs.iter().enumerate() {
        let mut chain = Vec::new();
        let mut blk = rec.blkno;
        if blk == 0 {
            c.report.deferred("CHAIN_EMPTY", blkno, format!("{name}: chain {k} is empty but below cl_next_free_rec"));
        }
        while blk != 0 {
            if !seen.insert(blk) {
                c.report.found(
                    "GROUP_CHAIN_LOOP",
                    blk,
                    false,
                    format!("{name}: chain {k} reaches group {blk} a second time"),
                );
                break;
            }
            let Some(g) = read_group(c, &a, k, blk, max_bits)? else { break };
            blk = g.desc.next_group;
            chain.push(g);
        }
        let total: u64 = chain.iter().map(|g| g.desc.bits as u64).sum();
        let free: u64 = chain.iter().map(|g| g.desc.free_bits_count as u64).sum();
        if rec.total as u64 != total || rec.free as u64 != free {
            c.report.deferred(
                "CHAIN_BITS",
                blkno,
                format!(
                    "chain {k} in allocator inode {blkno} claims {} total / {} free bits but its groups have {total} / {free}",
                    rec.total, rec.free
                ),
            );
        }
        a.chains.push(chain);
    }
    if kind == Kind::Global {
        add_missing_global_groups(c, &mut a)?;
    }
    check_inode_counters(c, &a, &cl.recs);
    Ok(Some(a))
}

/// Reads and validates one group descriptor of chain `k`; None (after reporting) when the
/// chain must be cut before it.
fn read_group(c: &mut Checker, a: &Alloc, k: usize, blk: u64, max_bits: u64) -> Result<Option<Group>> {
    let name = &a.name;
    let raw = match c.read(blk)? {
        Some(r) => r,
        None => {
            c.report.found(
                "CHAIN_LINK_RANGE",
                a.blkno,
                false,
                format!("{name}: chain {k} links to block {blk}, outside the volume"),
            );
            return Ok(None);
        }
    };
    let desc = match GroupDesc::decode(&raw, blk) {
        Ok(d) => d,
        Err(e) => {
            c.report.found("CHAIN_LINK_MAGIC", blk, false, format!("{name}: chain {k}: {e}"));
            return Ok(None);
        }
    };
    let bad = if desc.blkno != blk {
        Some(format!("bg_blkno is {}", desc.blkno))
    } else if desc.generation != c.gen {
        Some(format!("bg_generation {:#x} is not the volume's {:#x}", desc.generation, c.gen))
    } else if desc.parent_dinode != a.blkno {
        Some(format!("bg_parent_dinode is {}", desc.parent_dinode))
    } else if desc.bits as u64 > max_bits || desc.bits == 0 {
        Some(format!("bg_bits {} exceeds {max_bits}", desc.bits))
    } else if a.kind == Kind::Global && !global_position_ok(c, blk, desc.bits) {
        Some("is not at a position where a global bitmap group belongs, or has the wrong size".to_string())
    } else if a.kind != Kind::Global && (!blk.is_multiple_of(c.bpc) || blk + desc.bits as u64 > c.blocks) {
        Some("is not cluster-aligned or runs past the end of the volume".to_string())
    } else {
        None
    };
    if let Some(why) = bad {
        c.report.found(
            "GROUP_INVALID",
            blk,
            false,
            format!("{name}: chain {k}: group descriptor {blk} {why}; cut from the chain"),
        );
        return Ok(None);
    }
    if desc.chain as usize != k {
        c.report.deferred(
            "GROUP_CHAIN",
            blk,
            format!("{name}: group {blk} says chain {} but is linked in chain {k}", desc.chain),
        );
    }
    let used = crate::fs::bitmap::count_set(&desc.bitmap, desc.bits as usize);
    let free = desc.bits as usize - used.min(desc.bits as usize);
    if desc.free_bits_count as usize != free {
        c.report.deferred(
            "GROUP_FREE_BITS",
            blk,
            format!("{name}: group {blk} claims {} free bits but its bitmap has {free}", desc.free_bits_count),
        );
    }
    let want = desc.bitmap.clone();
    Ok(Some(Group { blkno: blk, desc, raw, want }))
}

/// Global group g's descriptor is at `global_group_blkno(g)` and covers `global_group_bits(g)`
/// clusters (§6.2).
fn global_position_ok(c: &Checker, blk: u64, bits: u16) -> bool {
    let geo = &c.vol.geo;
    (0..geo.global_group_count()).any(|g| geo.global_group_blkno(g) == blk && geo.global_group_bits(g) == bits as u32)
}

/// Every expected global group must be in a chain (GROUP_EXPECTED_DESC); a missing one is
/// recreated empty (its bitmap is computed from use at the end) in chain g % cl_count.
fn add_missing_global_groups(c: &mut Checker, a: &mut Alloc) -> Result<()> {
    let geo = c.vol.geo;
    let present: HashSet<u64> = a.groups().map(|g| g.blkno).collect();
    let count = chain_recs_per_inode(c.bs) as usize;
    for g in 0..geo.global_group_count() {
        let blk = geo.global_group_blkno(g);
        if present.contains(&blk) {
            continue;
        }
        let msg = format!("global bitmap group {g} (descriptor at block {blk}) is missing from the chains");
        if !c.report.found("GROUP_EXPECTED_DESC", blk, false, msg) {
            continue;
        }
        let size = group_bitmap_bytes(c.bs);
        let desc = GroupDesc {
            size,
            bits: geo.global_group_bits(g) as u16,
            free_bits_count: 0,
            chain: 0,
            generation: c.gen,
            contig_free_bits: 0,
            next_group: 0,
            parent_dinode: a.blkno,
            blkno: blk,
            bitmap: vec![0; size as usize],
        };
        let k = g as usize % count;
        while a.chains.len() <= k {
            a.chains.push(Vec::new());
        }
        a.chains[k].push(Group { blkno: blk, want: desc.bitmap.clone(), desc, raw: Vec::new() });
    }
    Ok(())
}

/// i_total / i_used against the chain records, i_clusters and i_size against i_total (§6.3).
fn check_inode_counters(c: &mut Checker, a: &Alloc, recs: &[crate::format::chain::ChainRec]) {
    let total: u64 = recs.iter().map(|r| r.total as u64).sum();
    let free: u64 = recs.iter().map(|r| r.free as u64).sum();
    let used = total.saturating_sub(free);
    let i = &a.inode;
    if i.bitmap_total() as u64 != total || i.bitmap_used() as u64 != used {
        c.report.deferred(
            "CHAIN_GROUP_BITS",
            a.blkno,
            format!(
                "allocator inode {} says {} total / {} used bits but its chains say {total} / {used}",
                a.blkno,
                i.bitmap_total(),
                i.bitmap_used()
            ),
        );
    }
    let clusters = i.bitmap_total() as u64 / a.bpc.max(1) as u64;
    if i.clusters as u64 != clusters {
        c.report.deferred(
            "CHAIN_I_CLUSTERS",
            a.blkno,
            format!("allocator inode {} has i_clusters {} but {clusters} by its bits", a.blkno, i.clusters),
        );
    }
    if i.size != i.clusters as u64 * c.vol.geo.cluster_size as u64 {
        c.report.deferred(
            "CHAIN_I_SIZE",
            a.blkno,
            format!("allocator inode {} has i_size {} for {} clusters", a.blkno, i.size, i.clusters),
        );
    }
}

/// Clusters in use that no inode owns (§6.5): the first group's reserved area, every global
/// descriptor's cluster, every suballocator group, and the backup superblocks.
fn base_claims(c: &mut Checker) {
    let geo = c.vol.geo;
    let first = geo.blkno_to_cluster(geo.first_cluster_group);
    c.claim_base(0, first + 1);
    for g in 0..geo.global_group_count() {
        c.claim_base(geo.blkno_to_cluster(geo.global_group_blkno(g)), 1);
    }
    let bpc = c.bpc;
    let groups: Vec<(u64, u64)> = c
        .allocs
        .iter()
        .filter(|a| a.kind != Kind::Global)
        .flat_map(|a| a.groups().map(move |g| (g.blkno / bpc, a.cpg as u64)))
        .collect();
    for (start, len) in groups {
        c.claim_base(start, len);
    }
    if c.vol.sb().features.compat & COMPAT_BACKUP_SB != 0 {
        for b in backup_superblock_blknos(c.bs, c.blocks) {
            c.claim_base(geo.blkno_to_cluster(b), 1);
        }
    }
}
