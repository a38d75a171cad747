//! The format layer against real images: every structure of an image made by mkfs.ocfs2 with the
//! subset features decodes and re-encodes to identical bytes; and no decoder panics on random or
//! mutated blocks (seeded; the seed is printed on failure).

mod common;

use common::*;
use o2fs::dev::FileDevice;
use o2fs::format::dirent::parse_entries;
use o2fs::format::extent::ExtentBlock;
use o2fs::format::group::GroupDesc;
use o2fs::format::heartbeat::HeartbeatBlock;
use o2fs::format::inode::{Id2, Inode};
use o2fs::format::jbd2::{BlockHeader, CommitBlock, DescriptorBlock, JournalSuperblock, RevokeBlock};
use o2fs::format::slot_map::SlotMap;
use o2fs::format::superblock::leading_space;
use o2fs::fs::sysfile::SystemFile;
use o2fs::fs::Volume;
use o2fs::testutil::{seed_from_env, Rng};
use std::sync::Arc;

fn assert_round_trip(vol: &Volume, blkno: u64, what: &str) {
    let raw = vol.read_block(blkno).unwrap();
    let mut again = vec![0u8; raw.len()];
    if blkno == 2 {
        Inode::decode_superblock(&raw, blkno).unwrap().encode(&mut again);
    } else {
        Inode::decode(&raw, blkno).unwrap_or_else(|e| panic!("{what}: {e}")).encode(&mut again);
    }
    assert!(raw == again, "{what} (block {blkno}) does not re-encode to the same bytes");
}

fn group_round_trip(vol: &Volume, alloc: &Inode) -> usize {
    let mut n = 0;
    for rec in &alloc.chain().unwrap().recs {
        let mut blkno = rec.blkno;
        while blkno != 0 {
            let raw = vol.read_block(blkno).unwrap();
            let gd = GroupDesc::decode(&raw, blkno).unwrap();
            let mut again = vec![0u8; raw.len()];
            gd.encode(&mut again);
            assert!(raw == again, "group {blkno} does not re-encode to the same bytes");
            blkno = gd.next_group;
            n += 1;
        }
    }
    n
}

#[test]
fn mkfs_ocfs2_images_round_trip_byte_for_byte() {
    if !have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, (bs, cs, slots, local, size)) in [
        ("512", "4K", 4, false, 256u64 << 20),
        ("4K", "4K", 1, true, 512 << 20),
        ("2K", "1M", 8, false, 2 << 30),
        ("4K", "64K", 2, false, 5 << 30),
        ("1K", "8K", 3, false, 300 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let img = sparse_image(dir.path(), &format!("r{i}.img"), size);
        mkfs_ocfs2(&img, bs, cs, slots, local);
        let vol = Volume::open(Arc::new(FileDevice::open(&img, false).unwrap())).unwrap();
        let bsz = vol.block_size();
        let sb = vol.sb().clone();
        let mut blocks = vec![0u8; 2 * bsz];
        vol.dev.read_at(&mut blocks, 0).unwrap();
        assert!(blocks == leading_space(bsz), "case {i}: leading space differs from mkfs.ocfs2's");

        assert_round_trip(&vol, 2, "superblock");
        assert_round_trip(&vol, sb.root_blkno, "root");
        assert_round_trip(&vol, sb.system_dir_blkno, "system dir");
        let root = vol.read_inode(sb.root_blkno).unwrap();
        let lf = vol.lookup(&root, b"lost+found").unwrap().expect("lost+found");
        assert_round_trip(&vol, lf, "lost+found");
        let mut groups = 0;
        for f in SystemFile::all(sb.max_slots) {
            let blkno = vol.system_file_blkno(f).unwrap();
            assert_round_trip(&vol, blkno, &f.name());
            let inode = vol.read_inode(blkno).unwrap();
            if inode.chain().is_some() {
                groups += group_round_trip(&vol, &inode);
            }
            match f {
                SystemFile::Journal(_) => {
                    let leaves = vol.leaf_extents(&inode).unwrap();
                    let first = leaves[0].blkno;
                    let mut raw = vec![0u8; bsz.max(1024)];
                    vol.dev.read_at(&mut raw, first * bsz as u64).unwrap();
                    let jsb = JournalSuperblock::decode(&raw, first).unwrap();
                    let mut again = vec![0u8; raw.len()];
                    jsb.encode(&mut again);
                    assert!(raw == again, "case {i}: {} superblock does not re-encode", f.name());
                }
                SystemFile::SlotMap => {
                    let data = vol.read_data(&inode, inode.size).unwrap();
                    let extended = sb.features.incompat & 0x100 != 0;
                    let map = SlotMap::decode(&data, sb.max_slots as usize, extended);
                    assert_eq!(map.occupied().count(), 0);
                    let mut again = data.clone();
                    map.encode(&mut again, extended);
                    assert!(data == again, "case {i}: slot map does not re-encode");
                }
                SystemFile::OrphanDir(_) => {
                    assert_eq!(vol.dir_entries(&inode).unwrap().iter().filter(|(_, e)| e.is_used()).count(), 2);
                }
                _ => {}
            }
        }
        assert!(groups >= 2, "case {i}: expected to walk the global bitmap and suballocator groups");
        // Directory blocks of extent-based directories (the system dir of larger slot counts).
        let sysdir = vol.read_inode(sb.system_dir_blkno).unwrap();
        if let Id2::Extents(_) = sysdir.id2 {
            for (pblk, _) in vol.dir_entries(&sysdir).unwrap() {
                parse_entries(&vol.read_block(pblk).unwrap(), pblk).unwrap();
            }
        }
    }
}

/// Every decoder, fed one block.
fn decode_all(b: &[u8], blkno: u64) {
    let _ = Inode::decode(b, blkno);
    let _ = Inode::decode_superblock(b, blkno);
    let _ = ExtentBlock::decode(b, blkno);
    let _ = GroupDesc::decode(b, blkno);
    let _ = parse_entries(b, blkno);
    let _ = HeartbeatBlock::decode(b, blkno);
    let _ = BlockHeader::decode(b, blkno);
    let _ = JournalSuperblock::decode(b, blkno);
    let _ = DescriptorBlock::decode(b, blkno, false);
    let _ = DescriptorBlock::decode(b, blkno, true);
    let _ = CommitBlock::decode(b, blkno);
    let _ = RevokeBlock::decode(b, blkno, true);
    let _ = SlotMap::decode(b, 255, true);
}

#[test]
fn decoders_never_panic_on_random_or_mutated_blocks() {
    let seed = seed_from_env(0x5EED_0F_0CF5);
    // Real metadata blocks, from an image made in memory by our mkfs engine.
    let opts = o2fs::mkfs::MkfsOptions { block_size: Some(1024), slots: Some(3), ..Default::default() };
    let plan = o2fs::mkfs::plan::plan(&opts, 64 << 20).unwrap();
    let id = o2fs::mkfs::Identity { uuid: [7; 16], generation: 0x1234, now: 1 };
    let image = o2fs::mkfs::layout::build(&plan, &id).unwrap();
    let real: Vec<(&u64, &Vec<u8>)> = image.blocks.iter().collect();
    let mut rng = Rng::new(seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for round in 0..20_000u32 {
            let (blkno, base) = real[rng.below(real.len() as u64) as usize];
            let mut b = base.clone();
            if round % 4 == 0 {
                rng.fill(&mut b);
            } else {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
            }
            let len = if round % 7 == 0 { rng.below(b.len() as u64) as usize } else { b.len() };
            decode_all(&b[..len], *blkno);
        }
    }));
    assert!(result.is_ok(), "a decoder panicked; reproduce with O2FS_SEED={seed}");
}
