//! Round trip of populated volumes (extends tests/format.rs from mkfs images to files of every
//! kind, ocfs2-format.md §18): a fresh 4K/4K and a 512/4K volume get, through a real mount, an
//! inline file, a file grown past inline, a 300000-byte file, a sparse file (one cluster at
//! cpos 10), a fallocated unwritten range with a partial write, a fast and a 3000-byte symlink,
//! a directory of 150 entries (converted from inline to blocks), two interleaved files of 260+
//! extents each (trees with extent blocks), hard links, a fifo and a device node. After the
//! unmount every inode reachable from the root and the system directory, every extent block
//! and group descriptor decodes and re-encodes to identical bytes, every directory block parses
//! and its entries tile it, every file reads back (through `Volume::read_data`) as written,
//! debugfs.ocfs2 shows the unwritten extent, and fsck.ocfs2 finds nothing.

mod common;

use common::*;
use o2fs::dev::FileDevice;
use o2fs::format::dirent::{parse_entries, write_entry, DIRENT_HEADER};
use o2fs::format::extent::{ExtentBlock, EXT_UNWRITTEN};
use o2fs::format::group::GroupDesc;
use o2fs::format::inode::{Id2, Inode, S_IFCHR, S_IFIFO, S_IFLNK, S_IFMT};
use o2fs::fs::Volume;
use o2fs::testutil::Rng;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const CS: usize = 4096;
/// Extents each of the two interleaved files gets (past one extent block's worth on 4K inodes:
/// 243 records fit in the inode, so 260 need a depth-1 tree; on 512-byte blocks, 19).
const INTERLEAVED: usize = 265;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// Creates the files through the mount; returns path → expected bytes (regular files, and the
/// targets of symlinks).
fn populate(mnt: &Path) -> BTreeMap<String, Vec<u8>> {
    let p = |rel: &str| mnt.join(rel);
    let mut want = BTreeMap::new();
    let mut put = |name: &str, data: Vec<u8>| {
        fs::write(p(name), &data).unwrap();
        want.insert(name.to_string(), data);
    };
    put("inline", pattern(1, 100));
    put("big", pattern(3, 300_000));

    // Grown past inline: a small write, then an append that no longer fits in the inode.
    let mut grown = pattern(2, 200);
    fs::write(p("grown"), &grown).unwrap();
    let tail = pattern(22, 5000);
    OpenOptions::new().append(true).open(p("grown")).unwrap().write_all(&tail).unwrap();
    grown.extend(&tail);
    want.insert("grown".into(), grown);

    // Sparse: one cluster at cpos 10, i_size 1 MiB.
    let cluster = pattern(4, CS);
    let f = File::create(p("sparse")).unwrap();
    f.write_all_at(&cluster, 10 * CS as u64).unwrap();
    f.set_len(1 << 20).unwrap();
    let mut sparse = vec![0u8; 1 << 20];
    sparse[10 * CS..11 * CS].copy_from_slice(&cluster);
    want.insert("sparse".into(), sparse);

    // fallocate (default mode) 256 KiB, then a partial write into it: the rest stays unwritten.
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(p("prealloc")).unwrap();
    nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, 256 * 1024).unwrap();
    let mid = pattern(5, 5000);
    f.write_all_at(&mid, 70_000).unwrap();
    let mut pre = vec![0u8; 256 * 1024];
    pre[70_000..75_000].copy_from_slice(&mid);
    want.insert("prealloc".into(), pre);

    // Symlinks: fast, and 3000 bytes (fast on 4K blocks, extent-backed on 512).
    std::os::unix::fs::symlink("inline", p("fastlink")).unwrap();
    want.insert("fastlink".into(), b"inline".to_vec());
    let long: Vec<u8> = (0..3000).map(|i| b'a' + (i % 26) as u8).collect();
    std::os::unix::fs::symlink(std::str::from_utf8(&long).unwrap(), p("longlink")).unwrap();
    want.insert("longlink".into(), long);

    // 150 entries with long names: past the inline area of a 4K inode (3896 bytes).
    fs::create_dir(p("dir150")).unwrap();
    for i in 0..150 {
        let name = format!("dir150/entry-number-{i:04}-with-some-padding");
        fs::write(p(&name), format!("{i}")).unwrap();
        want.insert(name, format!("{i}").into_bytes());
    }

    // Two files written one cluster at a time in turn: every cluster is its own extent.
    let (mut x, mut y) = (File::create(p("x")).unwrap(), File::create(p("y")).unwrap());
    let (mut xd, mut yd) = (Vec::new(), Vec::new());
    for i in 0..INTERLEAVED as u64 {
        let (a, b) = (pattern(1000 + i, CS), pattern(5000 + i, CS));
        x.write_all(&a).unwrap();
        y.write_all(&b).unwrap();
        xd.extend(a);
        yd.extend(b);
    }
    drop((x, y));
    want.insert("x".into(), xd);
    want.insert("y".into(), yd);

    // Hard links, a fifo, a device node.
    fs::create_dir(p("links")).unwrap();
    fs::hard_link(p("inline"), p("links/h1")).unwrap();
    fs::hard_link(p("big"), p("links/h2")).unwrap();
    want.insert("links/h1".into(), want["inline"].clone());
    want.insert("links/h2".into(), want["big"].clone());
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    nix::unistd::mkfifo(&p("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    mknod(&p("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    assert_eq!(fs::metadata(p("inline")).unwrap().nlink(), 2);
    want
}

/// Inode at `path` (relative to the root), by lookups through the volume.
fn resolve(vol: &Volume, path: &str) -> Inode {
    let mut inode = vol.read_inode(vol.sb().root_blkno).unwrap();
    for part in path.split('/') {
        let blkno = vol.lookup(&inode, part.as_bytes()).unwrap().unwrap_or_else(|| panic!("{path}: no {part}"));
        inode = vol.read_inode(blkno).unwrap();
    }
    inode
}

/// Entries of a directory area parse, tile it exactly, and their headers and names re-encode
/// to the bytes they came from. Returns the used entries.
fn check_dir_area(area: &[u8], blkno: u64, what: &str) -> usize {
    let entries = parse_entries(area, blkno).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut off = 0;
    let mut again = vec![0u8; area.len()];
    for e in &entries {
        assert_eq!(e.offset, off, "{what}: entries do not tile the block");
        off += e.rec_len as usize;
        write_entry(&mut again, e.offset, e.inode, e.rec_len, e.file_type, &e.name);
        // An unused record's name_len, type and name are stale bytes: compare inode and rec_len.
        let n = if e.is_used() { DIRENT_HEADER + e.name.len() } else { 10 };
        assert!(
            area[e.offset..e.offset + n] == again[e.offset..e.offset + n],
            "{what}: entry at {} re-encodes differently",
            e.offset
        );
    }
    assert_eq!(off, area.len(), "{what}: entries do not reach the end");
    entries.iter().filter(|e| e.is_used()).count()
}

fn round_trip(bs: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("vol.img");
    let out = run(Command::new(bin("mkfs.o2fs"))
        .args(["-q", "-b", bs, "-C", "4K", "-N", "1", "-M", "local", "--size", "64M"])
        .arg(&img));
    assert!(out.status.success(), "mkfs.o2fs -b {bs}: {}", text(&out));
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut m = Mount::new(&img, &mnt, "");
    let want = populate(&mnt);
    m.unmount().unwrap_or_else(|e| panic!("-b {bs}: unmount: {e}"));

    let vol = Volume::open(Arc::new(FileDevice::open(&img, false).unwrap())).unwrap();
    let bsz = vol.block_size();
    let meta = walk_metadata(&vol);

    // Every inode, the superblock, every extent block and group descriptor: byte for byte.
    let mut again = vec![0u8; bsz];
    let raw = vol.read_block(2).unwrap();
    Inode::decode_superblock(&raw, 2).unwrap().encode(&mut again);
    assert!(raw == again, "-b {bs}: the superblock does not re-encode to the same bytes");
    for (blkno, path) in &meta.inodes {
        let raw = vol.read_block(*blkno).unwrap();
        let inode = Inode::decode(&raw, *blkno).unwrap_or_else(|e| panic!("-b {bs}: {path}: {e}"));
        inode.encode(&mut again);
        assert!(raw == again, "-b {bs}: inode {blkno} ({path}) does not re-encode to the same bytes");
        if let Id2::Inline(d) = &inode.id2 {
            if inode.is_dir() {
                check_dir_area(&d.data, *blkno, &format!("-b {bs}: inline directory {path}"));
            }
        }
    }
    for &(blkno, _) in &meta.extent_blocks {
        let raw = vol.read_block(blkno).unwrap();
        ExtentBlock::decode(&raw, blkno).unwrap().encode(&mut again);
        assert!(raw == again, "-b {bs}: extent block {blkno} does not re-encode to the same bytes");
    }
    for &(blkno, _) in &meta.groups {
        let raw = vol.read_block(blkno).unwrap();
        GroupDesc::decode(&raw, blkno).unwrap().encode(&mut again);
        assert!(raw == again, "-b {bs}: group descriptor {blkno} does not re-encode to the same bytes");
    }
    // No encoder lays out a whole directory block as found (slack, stale names of removed
    // entries), so directory blocks are checked by parsing and tiling.
    let mut used = 0;
    for &(blkno, _) in &meta.dir_blocks {
        used += check_dir_area(&vol.read_block(blkno).unwrap(), blkno, &format!("-b {bs}: directory block {blkno}"));
    }
    assert!(used >= 152, "-b {bs}: {used} entries in directory blocks, dir150 alone has 152");
    assert!(meta.extent_blocks.len() >= 2, "-b {bs}: the interleaved files need extent blocks");

    // The shapes the workload was meant to produce.
    assert!(resolve(&vol, "inline").is_inline(), "-b {bs}: inline");
    assert!(!resolve(&vol, "grown").is_inline(), "-b {bs}: grown stayed inline");
    assert!(!resolve(&vol, "dir150").is_inline(), "-b {bs}: dir150 stayed inline");
    let sparse = vol.leaf_extents(&resolve(&vol, "sparse")).unwrap();
    assert_eq!((sparse.len(), sparse[0].cpos, sparse[0].len), (1, 10, 1), "-b {bs}: sparse {sparse:?}");
    let prealloc = resolve(&vol, "prealloc");
    let pre_leaves = vol.leaf_extents(&prealloc).unwrap();
    assert!(pre_leaves.iter().any(|r| r.flags & EXT_UNWRITTEN != 0), "-b {bs}: no unwritten extent {pre_leaves:?}");
    assert!(pre_leaves.iter().any(|r| r.flags & EXT_UNWRITTEN == 0), "-b {bs}: no written extent {pre_leaves:?}");
    for name in ["x", "y"] {
        let inode = resolve(&vol, name);
        let leaves = vol.leaf_extents(&inode).unwrap();
        assert!(leaves.len() >= 260, "-b {bs}: {name} has {} extents", leaves.len());
        assert!(inode.extents().unwrap().tree_depth >= 1, "-b {bs}: {name} has no extent blocks");
    }
    let fast = resolve(&vol, "fastlink");
    assert!(matches!(fast.id2, Id2::FastSymlink(_)) && fast.mode & S_IFMT == S_IFLNK, "-b {bs}: fastlink");
    let long = resolve(&vol, "longlink");
    assert_eq!(matches!(long.id2, Id2::FastSymlink(_)), bsz == 4096, "-b {bs}: a 3000-byte link is fast only on 4K");
    assert_eq!(resolve(&vol, "fifo").mode & S_IFMT, S_IFIFO);
    let null = resolve(&vol, "null");
    assert_eq!((null.mode & S_IFMT, o2fs::format::inode::decode_dev(null.rdev())), (S_IFCHR, (1, 3)));
    assert_eq!(resolve(&vol, "links/h1").blkno, resolve(&vol, "inline").blkno);
    assert_eq!(resolve(&vol, "inline").links_count, 2);

    // Contents, through the format layer's reader.
    for (path, bytes) in &want {
        let inode = resolve(&vol, path);
        let got = match &inode.id2 {
            Id2::FastSymlink(raw) => raw[..inode.size as usize].to_vec(),
            _ => vol.read_data(&inode, inode.size).unwrap(),
        };
        assert!(got == *bytes, "-b {bs}: {path} reads back differently ({} bytes, want {})", got.len(), bytes.len());
    }

    // debugfs.ocfs2 sees the unwritten flag on an extent of the preallocated file.
    if have_ocfs2_tools() {
        let st = debugfs(&img, &format!("stat <{}>", prealloc.blkno));
        let unwritten = st.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 5 && f[0].parse::<u32>().is_ok() && f[4] == "0x1"
        });
        assert!(unwritten, "-b {bs}: debugfs.ocfs2 shows no unwritten extent:\n{st}");
        assert_fsck_ocfs2_clean(&img);
    }
}

#[test]
fn populated_4k_volume_round_trips() {
    round_trip("4K");
}

#[test]
fn populated_512_volume_round_trips() {
    round_trip("512");
}
