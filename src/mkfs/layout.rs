//! Lays a new volume out in memory, in the order mkfs.ocfs2 allocates (ocfs2-format.md §2.4),
//! producing every metadata block and the ranges to zero. Nothing touches the device here, so a
//! volume that does not fit is refused before a byte is written.

use super::plan::Plan;
use crate::format::chain::{chain_recs_per_inode, ChainList};
use crate::format::dirent::{build_area, rec_len_for, FT_DIR, FT_REG_FILE};
use crate::format::extent::{recs_per_inode, ExtentList, ExtentRec};
use crate::format::features::{
    INCOMPAT_CLUSTERINFO, INCOMPAT_EXTENDED_SLOT_MAP, INCOMPAT_INLINE_DATA, INCOMPAT_USERSPACE_STACK,
};
use crate::format::group::{group_bitmap_bytes, GroupDesc};
use crate::format::inline::{inline_capacity, InlineData};
use crate::format::inode::*;
use crate::format::jbd2::{JournalSuperblock, FEATURE_INCOMPAT_64BIT};
use crate::format::local_alloc::LocalAlloc;
use crate::format::slot_map::{entry_size, SlotMap};
use crate::format::superblock::*;
use crate::format::truncate_log::{tl_recs_per_inode, TruncateLog};
use crate::fs::alloc::chain::{chain_list, link_round_robin, new_group, set_bit};
use crate::fs::bitmap;
use crate::fs::sysfile::SystemFile;
use std::collections::BTreeMap;

/// What to write: whole metadata blocks and byte ranges that must read as zeros.
pub struct Image {
    pub blocks: BTreeMap<u64, Vec<u8>>,
    pub zero: Vec<(u64, u64)>,
    pub summary: Summary,
}

/// Facts about the made volume, for the program to print.
#[derive(Debug, Clone)]
pub struct Summary {
    pub uuid: [u8; 16],
    pub root_blkno: u64,
    pub system_dir_blkno: u64,
    pub used_clusters: u64,
    pub total_clusters: u32,
    pub global_groups: u32,
    pub backup_superblocks: Vec<u64>,
}

/// Identity of the new volume (random in real use, fixed in tests).
pub struct Identity {
    pub uuid: [u8; 16],
    pub generation: u32,
    pub now: u64,
}

/// First-fit cluster allocation over the in-memory global bitmap.
struct ClusterMap {
    bits: Vec<u8>,
    total: u32,
}

impl ClusterMap {
    fn alloc(&mut self, n: u64, what: &str) -> Result<u64, String> {
        let start = bitmap::find_clear_run(&self.bits, self.total as usize, 0, n as usize)
            .ok_or_else(|| format!("volume too small: no room for {what} ({n} contiguous clusters)"))?;
        bitmap::set_range(&mut self.bits, start, n as usize);
        Ok(start as u64)
    }

    /// Allocates `n` clusters as few first-fit runs as it takes (a run cannot cross a global
    /// group's descriptor cluster, so large files on small-block volumes need several).
    fn alloc_runs(&mut self, mut n: u64, max_runs: usize, what: &str) -> Result<Vec<(u64, u64)>, String> {
        let mut runs = Vec::new();
        let mut from = 0usize;
        while n > 0 {
            let start = bitmap::find_clear_run(&self.bits, self.total as usize, from, 1)
                .ok_or_else(|| format!("volume too small: no room for {what}"))?;
            let mut len = 0u64;
            while len < n
                && !bitmap::test(&self.bits, start + len as usize)
                && start + (len as usize) < self.total as usize
            {
                len += 1;
            }
            bitmap::set_range(&mut self.bits, start, len as usize);
            runs.push((start as u64, len));
            if runs.len() > max_runs {
                return Err(format!("volume too fragmented: {what} needs more than {max_runs} extents"));
            }
            n -= len;
            from = start + len as usize;
        }
        Ok(runs)
    }
}

/// Blocks the system directory needs by mkfs.ocfs2's estimate: 52-byte entries (the record of a
/// 40-character name) for 7 global + 8 per-slot files, quota files included.
fn sysdir_estimate_entries(slots: u16) -> usize {
    7 + 8 * slots as usize
}
const SYSDIR_ESTIMATE_REC: usize = 52;

pub fn build(plan: &Plan, id: &Identity) -> Result<Image, String> {
    let geo = plan.geo;
    let bs = geo.block_size;
    let cs = geo.cluster_size as u64;
    let bpc = geo.bpc();
    let gen = id.generation;
    let inline = plan.features.has_incompat(INCOMPAT_INLINE_DATA);
    let extended_slots = plan.features.has_incompat(INCOMPAT_EXTENDED_SLOT_MAP);
    let mut out = Image { blocks: BTreeMap::new(), zero: Vec::new(), summary: empty_summary(id, plan) };

    // Fixed reservations: the superblock area and every global group's descriptor cluster, then
    // the backup superblock clusters (reserved first so nothing else is placed on them).
    let mut map = ClusterMap { bits: vec![0; (geo.total_clusters as usize).div_ceil(8)], total: geo.total_clusters };
    let first_desc_cluster = geo.blkno_to_cluster(geo.first_cluster_group);
    bitmap::set_range(&mut map.bits, 0, first_desc_cluster as usize + 1);
    for g in 1..geo.global_group_count() {
        bitmap::set(&mut map.bits, (g * geo.global_cpg()) as usize);
    }
    let backups = backup_superblock_blknos(bs, geo.total_blocks());
    for &b in &backups {
        bitmap::set(&mut map.bits, geo.blkno_to_cluster(b) as usize);
        out.zero.push((geo.blkno_to_cluster(b) * cs, cs));
    }

    // 1. The system inode group of global_inode_alloc.
    let sys_blocks = 6 + 7 + 8 * (plan.slots.max(32) as u64);
    let sys_clusters = geo.clusters_for_bytes(sys_blocks * bs as u64);
    let sys_bits = sys_clusters * bpc;
    if sys_bits > group_bitmap_bytes(bs) as u64 * 8 {
        return Err(format!("block size {bs} with cluster size {cs} is not supported: the system inode group would need {sys_bits} bits"));
    }
    let sys_cluster = map.alloc(sys_clusters, "the system inode group")?;
    let sys_group_blk = geo.cluster_to_blkno(sys_cluster);
    out.zero.push((sys_cluster * cs, sys_clusters * cs));
    let mut sys_group = new_group(bs, sys_group_blk, sys_bits as u16, 0, gen, 0);
    let mut next_bit = 1u16;
    let mut take_inode = |group: &mut GroupDesc| {
        let bit = next_bit;
        next_bit += 1;
        set_bit(group, bit);
        (group.blkno + bit as u64, bit)
    };
    let (root_blk, root_bit) = take_inode(&mut sys_group);
    let (sysdir_blk, sysdir_bit) = take_inode(&mut sys_group);
    let files = SystemFile::all(plan.slots);
    let sys_inodes: BTreeMap<SystemFile, (u64, u16)> = files.iter().map(|f| (*f, take_inode(&mut sys_group))).collect();
    let blk = |f: SystemFile| sys_inodes[&f].0;
    sys_group.parent_dinode = blk(SystemFile::GlobalInodeAlloc);

    // 2-3. Directory data of root and the system directory.
    let root_data = (!inline).then(|| map.alloc(1, "the root directory")).transpose()?;
    let sysdir_inline =
        inline && SYSDIR_ESTIMATE_REC * sysdir_estimate_entries(plan.slots) <= inline_capacity(bs) as usize;
    let sysdir_data = if sysdir_inline {
        None
    } else {
        let per_block = bs / SYSDIR_ESTIMATE_REC;
        let blocks = sysdir_estimate_entries(plan.slots).div_ceil(per_block) as u64;
        let clusters = geo.clusters_for_bytes(blocks * bs as u64);
        Some((map.alloc(clusters, "the system directory")?, clusters))
    };

    // 5. Heartbeat region: 256 blocks.
    let hb_bytes = 256 * bs as u64;
    let hb_clusters = geo.clusters_for_bytes(hb_bytes);
    let hb_cluster = map.alloc(hb_clusters, "the heartbeat area")?;
    out.zero.push((hb_cluster * cs, hb_clusters * cs));

    // 6. Orphan directories.
    let mut orphan_data = Vec::new();
    for slot in 0..plan.slots {
        orphan_data.push((!inline).then(|| map.alloc(1, &format!("orphan_dir:{slot:04}"))).transpose()?);
    }

    // 8. Journals, zero-filled; one extent when the space allows.
    let mut journals = Vec::new();
    for slot in 0..plan.slots {
        let what = format!("journal:{slot:04}");
        let runs = match map.alloc(plan.journal_clusters as u64, &what) {
            Ok(c) => vec![(c, plan.journal_clusters as u64)],
            Err(_) => map.alloc_runs(plan.journal_clusters as u64, recs_per_inode(bs) as usize, &what)?,
        };
        out.zero.extend(runs.iter().map(|&(c, n)| (c * cs, n * cs)));
        journals.push(runs);
    }

    // 9. Extent allocator groups of every slot.
    let cpg = plan.suballoc_cpg as u64;
    let sub_bits = (cpg * bpc) as u16;
    let mut extent_groups: Vec<Vec<GroupDesc>> = Vec::new();
    for slot in 0..plan.slots {
        let parent = blk(SystemFile::ExtentAlloc(slot));
        let mut groups = Vec::new();
        for _ in 0..plan.extent_alloc_groups {
            let c = map.alloc(cpg, &format!("extent_alloc:{slot:04}"))?;
            out.zero.push((c * cs, cpg * cs));
            groups.push(new_group(bs, geo.cluster_to_blkno(c), sub_bits, 0, gen, parent));
        }
        extent_groups.push(groups);
    }

    // 10. Slot map: one cluster.
    let slot_map_cluster = map.alloc(1, "the slot map")?;

    // 12. lost+found: the first group of inode_alloc:0000, and its directory data.
    let ia0 = blk(SystemFile::InodeAlloc(0));
    let ia_cluster = map.alloc(cpg, "inode_alloc:0000")?;
    out.zero.push((ia_cluster * cs, cpg * cs));
    let mut ia_group = new_group(bs, geo.cluster_to_blkno(ia_cluster), sub_bits, 0, gen, ia0);
    set_bit(&mut ia_group, 1);
    let lf_blk = ia_group.blkno + 1;
    let lf_data = (!inline).then(|| map.alloc(1, "lost+found")).transpose()?;

    // Every cluster is placed: now write the inodes and blocks.
    let sys_base = |blkno: u64, bit: u16, mode: u16, flags: u32, id2: Id2| {
        let mut inode = Inode::new(blkno, gen, id2);
        inode.suballoc_slot = 0xFFFF;
        inode.suballoc_bit = bit;
        inode.mode = mode;
        inode.links_count = 1;
        inode.flags = VALID_FL | SYSTEM_FL | flags;
        inode.ctime = id.now;
        inode.mtime = id.now;
        inode.atime = id.now;
        inode
    };
    let extents = |recs: Vec<ExtentRec>| Id2::Extents(ExtentList { tree_depth: 0, count: recs_per_inode(bs), recs });
    let one_extent = |cluster: u64, clusters: u64| {
        extents(vec![ExtentRec { cpos: 0, len: clusters as u32, flags: 0, blkno: geo.cluster_to_blkno(cluster) }])
    };
    let put = |out: &mut Image, inode: &Inode| {
        let mut b = vec![0u8; bs];
        inode.encode(&mut b);
        out.blocks.insert(inode.blkno, b);
    };

    // Directories: entries laid out inline or in the allocated blocks.
    let dir = |out: &mut Image,
               mut inode: Inode,
               entries: Vec<(u64, u8, Vec<u8>)>,
               data: Option<(u64, u64)>|
     -> Result<Inode, String> {
        let refs: Vec<(u64, u8, &[u8])> = entries.iter().map(|(i, t, n)| (*i, *t, n.as_slice())).collect();
        match data {
            None => {
                let cap = inline_capacity(bs) as usize;
                let area = build_area(cap, &refs).ok_or("directory entries do not fit inline")?;
                inode.dyn_features |= INLINE_DATA_FL;
                inode.size = cap as u64;
                inode.id2 = Id2::Inline(InlineData { data: area });
            }
            Some((cluster, clusters)) => {
                let blocks = pack_dir_blocks(bs, &refs);
                if blocks.len() as u64 > clusters * bpc {
                    return Err("directory entries do not fit in the allocated clusters".into());
                }
                let first = geo.cluster_to_blkno(cluster);
                inode.size = (blocks.len() * bs) as u64;
                inode.clusters = clusters as u32;
                inode.id2 = one_extent(cluster, clusters);
                for (i, b) in blocks.into_iter().enumerate() {
                    out.blocks.insert(first + i as u64, b);
                }
                out.zero.push((cluster * cs, clusters * cs));
            }
        }
        Ok(inode)
    };
    let dot = |me: u64, parent: u64| vec![(me, FT_DIR, b".".to_vec()), (parent, FT_DIR, b"..".to_vec())];
    let dir_mode = S_IFDIR | 0o755;

    // Root and lost+found.
    let mut root_entries = dot(root_blk, root_blk);
    root_entries.push((lf_blk, FT_DIR, b"lost+found".to_vec()));
    let mut root = sys_base(root_blk, root_bit, dir_mode, 0, Id2::Inline(InlineData::empty(bs)));
    root.links_count = 3;
    root.suballoc_bit = root_bit;
    let root = dir(&mut out, root, root_entries, root_data.map(|c| (c, 1)))?;
    put(&mut out, &root);

    let mut lf = Inode::new(lf_blk, gen, Id2::Inline(InlineData::empty(bs)));
    lf.suballoc_slot = 0;
    lf.suballoc_bit = 1;
    lf.suballoc_loc = ia_group.blkno;
    lf.mode = dir_mode;
    lf.links_count = 2;
    lf.flags = VALID_FL;
    (lf.atime, lf.ctime, lf.mtime) = (id.now, id.now, id.now);
    let lf = dir(&mut out, lf, dot(lf_blk, root_blk), lf_data.map(|c| (c, 1)))?;
    put(&mut out, &lf);

    // The system directory.
    let mut sys_entries = dot(sysdir_blk, sysdir_blk);
    for f in &files {
        let ft = if f.mode() & S_IFMT == S_IFDIR { FT_DIR } else { FT_REG_FILE };
        sys_entries.push((blk(*f), ft, f.name().into_bytes()));
    }
    let mut sysdir = sys_base(sysdir_blk, sysdir_bit, dir_mode, 0, Id2::Inline(InlineData::empty(bs)));
    sysdir.links_count = 2 + plan.slots;
    let sysdir = dir(&mut out, sysdir, sys_entries, sysdir_data)?;
    put(&mut out, &sysdir);

    // Per-file system inodes.
    let total_clusters = geo.total_clusters as u64;
    for f in &files {
        let (blkno, bit) = sys_inodes[f];
        let mut inode = sys_base(blkno, bit, f.mode(), f.extra_flags(), extents(vec![]));
        match *f {
            SystemFile::BadBlocks => {}
            SystemFile::GlobalInodeAlloc => {
                let cl = chain_list(
                    sys_clusters as u16,
                    bpc as u16,
                    chain_recs_per_inode(bs),
                    &[sys_group.clone()],
                    &[sys_group_blk],
                );
                set_chain_inode(&mut inode, cl, sys_clusters, cs);
                put_group(&mut out, &sys_group, bs);
            }
            SystemFile::SlotMap => {
                inode.id2 = one_extent(slot_map_cluster, 1);
                inode.clusters = 1;
                inode.size = cs;
                let mut data = vec![SlotMap::format_byte(extended_slots); cs as usize];
                SlotMap::empty(plan.slots as usize).encode(&mut data, extended_slots);
                debug_assert!(plan.slots as usize * entry_size(extended_slots) <= data.len());
                for (i, chunk) in data.chunks(bs).enumerate() {
                    out.blocks.insert(geo.cluster_to_blkno(slot_map_cluster) + i as u64, chunk.to_vec());
                }
            }
            SystemFile::Heartbeat => {
                inode.id2 = one_extent(hb_cluster, hb_clusters);
                inode.clusters = hb_clusters as u32;
                inode.size = hb_bytes;
            }
            SystemFile::GlobalBitmap => {
                let mut groups: Vec<GroupDesc> = (0..geo.global_group_count())
                    .map(|g| {
                        let start = (g * geo.global_cpg()) as usize;
                        let bits = geo.global_group_bits(g);
                        let mut gd = new_group(bs, geo.global_group_blkno(g), bits as u16, 0, gen, blkno);
                        for bit in 1..bits as usize {
                            if bitmap::test(&map.bits, start + bit) {
                                set_bit(&mut gd, bit as u16);
                            }
                        }
                        gd
                    })
                    .collect();
                let count = chain_recs_per_inode(bs);
                let heads = link_round_robin(&mut groups, count);
                let cl = chain_list(geo.global_cpg() as u16, 1, count, &groups, &heads);
                out.summary.used_clusters = cl.total_bits() - cl.free_bits();
                set_chain_inode(&mut inode, cl, total_clusters, cs);
                for gd in &groups {
                    put_group(&mut out, gd, bs);
                }
            }
            SystemFile::OrphanDir(slot) => {
                inode.links_count = 2;
                inode.id2 = Id2::Inline(InlineData::empty(bs));
                inode = dir(&mut out, inode, dot(blkno, sysdir_blk), orphan_data[slot as usize].map(|c| (c, 1)))?;
            }
            SystemFile::ExtentAlloc(slot) => {
                let groups = &mut extent_groups[slot as usize];
                let heads = link_round_robin(groups, chain_recs_per_inode(bs));
                let cl = chain_list(cpg as u16, bpc as u16, chain_recs_per_inode(bs), groups, &heads);
                set_chain_inode(&mut inode, cl, groups.len() as u64 * cpg, cs);
                for gd in groups.iter() {
                    put_group(&mut out, gd, bs);
                }
            }
            SystemFile::InodeAlloc(slot) => {
                let groups: Vec<GroupDesc> = if slot == 0 { vec![ia_group.clone()] } else { vec![] };
                let heads: Vec<u64> = groups.iter().map(|g| g.blkno).collect();
                let cl = chain_list(cpg as u16, bpc as u16, chain_recs_per_inode(bs), &groups, &heads);
                set_chain_inode(&mut inode, cl, groups.len() as u64 * cpg, cs);
                for gd in &groups {
                    put_group(&mut out, gd, bs);
                }
            }
            SystemFile::Journal(slot) => {
                let runs = &journals[slot as usize];
                let jclusters = plan.journal_clusters as u64;
                let mut cpos = 0;
                inode.id2 = extents(
                    runs.iter()
                        .map(|&(c, n)| {
                            let rec = ExtentRec { cpos, len: n as u32, flags: 0, blkno: geo.cluster_to_blkno(c) };
                            cpos += n as u32;
                            rec
                        })
                        .collect(),
                );
                let c = runs[0].0;
                inode.clusters = jclusters as u32;
                inode.size = jclusters * cs;
                let jsb = JournalSuperblock {
                    block_size: bs as u32,
                    maxlen: (jclusters * bpc) as u32,
                    first: if bs == 512 { 2 } else { 1 },
                    sequence: 1,
                    start: if bs == 512 { 2 } else { 1 },
                    feature_incompat: if plan.journal64 { FEATURE_INCOMPAT_64BIT } else { 0 },
                    uuid: id.uuid,
                    nr_users: 1,
                    ..Default::default()
                };
                let mut b = vec![0u8; bs.max(1024)];
                jsb.encode(&mut b);
                for (i, chunk) in b.chunks(bs).enumerate() {
                    out.blocks.insert(geo.cluster_to_blkno(c) + i as u64, chunk.to_vec());
                }
            }
            SystemFile::LocalAlloc(_) => inode.id2 = Id2::LocalAlloc(LocalAlloc::empty(bs)),
            SystemFile::TruncateLog(_) => {
                inode.id2 = Id2::TruncateLog(TruncateLog { count: tl_recs_per_inode(bs), recs: vec![] })
            }
        }
        put(&mut out, &inode);
    }

    // Superblock and its backups.
    let mut sb_inode = Inode::new(SUPERBLOCK_BLKNO, gen, Id2::Super(superblock(plan, id, root_blk, sysdir_blk)));
    sb_inode.suballoc_slot = 0xFFFF;
    sb_inode.suballoc_bit = 0xFFFF;
    sb_inode.clusters = geo.total_clusters;
    sb_inode.flags = VALID_FL | SYSTEM_FL | SUPER_BLOCK_FL;
    sb_inode.ctime = id.now;
    sb_inode.mtime = id.now;
    for blkno in std::iter::once(SUPERBLOCK_BLKNO).chain(backups.iter().copied()) {
        sb_inode.blkno = blkno;
        put(&mut out, &sb_inode);
    }
    let lead = leading_space(bs);
    out.blocks.insert(0, lead[..bs].to_vec());
    out.blocks.insert(1, lead[bs..].to_vec());

    out.summary.root_blkno = root_blk;
    out.summary.system_dir_blkno = sysdir_blk;
    out.summary.backup_superblocks = backups;
    Ok(out)
}

fn empty_summary(id: &Identity, plan: &Plan) -> Summary {
    Summary {
        uuid: id.uuid,
        root_blkno: 0,
        system_dir_blkno: 0,
        used_clusters: 0,
        total_clusters: plan.geo.total_clusters,
        global_groups: plan.geo.global_group_count(),
        backup_superblocks: vec![],
    }
}

/// Fills a chain allocator inode's id1/id2 and size fields (§6.3).
fn set_chain_inode(inode: &mut Inode, cl: ChainList, clusters: u64, cs: u64) {
    let (total, free) = (cl.total_bits(), cl.free_bits());
    inode.set_bitmap((total - free) as u32, total as u32);
    inode.clusters = clusters as u32;
    inode.size = clusters * cs;
    inode.id2 = Id2::Chain(cl);
}

fn put_group(out: &mut Image, gd: &GroupDesc, bs: usize) {
    let mut b = vec![0u8; bs];
    gd.encode(&mut b);
    out.blocks.insert(gd.blkno, b);
}

/// Packs entries into directory blocks in order: each block takes what fits, the last entry
/// of each block stretches to its end (§8.3).
fn pack_dir_blocks(bs: usize, entries: &[(u64, u8, &[u8])]) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let mut used = 0;
        let mut end = start;
        while end < entries.len() && used + rec_len_for(entries[end].2.len()) <= bs {
            used += rec_len_for(entries[end].2.len());
            end += 1;
        }
        if let Some(b) = build_area(bs, &entries[start..end]) {
            blocks.push(b);
        }
        start = end.max(start + 1);
    }
    blocks
}

fn superblock(plan: &Plan, id: &Identity, root: u64, sysdir: u64) -> SuperBlock {
    let mut label = [0u8; LABEL_LEN];
    label[..plan.label.len()].copy_from_slice(plan.label.as_bytes());
    let mut stack = [0u8; 4];
    let mut cname = [0u8; CLUSTER_NAME_LEN];
    if plan.features.has_incompat(INCOMPAT_CLUSTERINFO | INCOMPAT_USERSPACE_STACK) {
        if let Some(s) = &plan.cluster_stack {
            stack.copy_from_slice(&s.as_bytes()[..4]);
        }
        if let Some(n) = &plan.cluster_name {
            cname[..n.len()].copy_from_slice(n.as_bytes());
        }
    }
    SuperBlock {
        major_rev: MAJOR_REV,
        minor_rev: MINOR_REV,
        mnt_count: 0,
        max_mnt_count: 20,
        state: 0,
        errors: 0,
        checkinterval: 0,
        lastcheck: id.now,
        creator_os: 0,
        features: plan.features,
        root_blkno: root,
        system_dir_blkno: sysdir,
        blocksize_bits: plan.geo.blocksize_bits,
        clustersize_bits: plan.geo.clustersize_bits,
        max_slots: plan.slots,
        tunefs_flag: 0,
        uuid_hash: 0,
        first_cluster_group: plan.geo.first_cluster_group,
        label,
        uuid: id.uuid,
        cluster_stack: stack,
        cluster_flags: 0,
        cluster_name: cname,
        xattr_inline_size: 0,
        dx_seed: [0; 3],
    }
}
