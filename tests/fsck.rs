//! fsck.o2fs against images made by mkfs.ocfs2: a fresh image is clean; each injected class of
//! corruption (one fsck.ocfs2 also sees) is reported by `-fn` (exit 4), repaired by `-fy`
//! (exit 1) so that fsck.ocfs2 then passes; and random byte flips in metadata never make the
//! checker panic, hang or exit with anything but 0/1/4/8.

mod common;

use o2fs::dev::{BlockDevice, DevError, FileDevice};
use o2fs::format::bytes::*;
use o2fs::format::dirent::{parse_entries, rec_len_for, write_entry, FT_REG_FILE};
use o2fs::format::inode::{Inode, JOURNAL_DIRTY_FL};
use o2fs::format::jbd2::{JournalSuperblock, FEATURE_INCOMPAT_CSUM_V3};
use o2fs::fs::sysfile::SystemFile;
use o2fs::fs::Volume;
use o2fs::fsck::{self, Mode, Options};
use o2fs::journal::Journal;
use o2fs::testutil::{seed_from_env, Rng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BS: u64 = 4096;

/// Runs fsck.o2fs with `args` on `img`; returns (exit code, output).
fn fsck_o2fs(img: &Path, args: &[&str]) -> (i32, String) {
    let out = common::run(Command::new(common::bin("fsck.o2fs")).args(args).arg(img));
    (out.status.code().unwrap_or(-1), common::text(&out))
}

/// A fresh 64 MiB clustered image, 4K blocks and clusters, 2 slots.
fn fresh(dir: &Path, name: &str, size: u64, cs: &str) -> PathBuf {
    let img = common::sparse_image(dir, name, size);
    common::mkfs_ocfs2(&img, "4K", cs, 2, false);
    img
}

fn open(img: &Path) -> Volume {
    Volume::open(Arc::new(FileDevice::open(img, false).unwrap())).unwrap()
}

fn read(img: &Path, blk: u64) -> Vec<u8> {
    let dev = FileDevice::open(img, false).unwrap();
    let mut b = vec![0u8; BS as usize];
    dev.read_block(blk, &mut b).unwrap();
    b
}

fn write(img: &Path, blk: u64, b: &[u8]) {
    let dev = FileDevice::open(img, true).unwrap();
    dev.write_block(blk, b).unwrap();
    dev.flush().unwrap();
}

fn edit(img: &Path, blk: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = read(img, blk);
    f(&mut b);
    write(img, blk, &b);
}

fn sysfile(img: &Path, f: SystemFile) -> u64 {
    open(img).system_file_blkno(f).unwrap()
}

fn root(img: &Path) -> u64 {
    open(img).sb().root_blkno
}

fn lost_found(img: &Path) -> u64 {
    let v = open(img);
    let r = v.read_inode(v.sb().root_blkno).unwrap();
    v.lookup(&r, b"lost+found").unwrap().unwrap()
}

/// Inline directory area of inode block `b` (offset 0xC8, `id_count` bytes).
const AREA: usize = 0xC8;

/// Adds an entry to the inline directory in block `dir` by splitting its last record.
fn add_entry(img: &Path, dir: u64, name: &[u8], ino: u64, ft: u8) {
    edit(img, dir, |b| {
        let count = le16(b, 0xC0) as usize;
        let entries = parse_entries(&b[AREA..AREA + count], dir).unwrap();
        let last = entries.last().unwrap();
        let own = rec_len_for(last.name.len());
        let off = AREA + last.offset;
        put_le16(b, off + 8, own as u16);
        write_entry(&mut b[off + own..], 0, ino, last.rec_len - own as u16, ft, name);
    });
}

/// Takes inode block `blk` (a free slot in lost+found's group of inode_alloc:0000) in the
/// allocator: bit set, group / chain / inode counters adjusted as the kernel would.
fn allocate_inode(img: &Path, blk: u64) {
    let alloc = sysfile(img, SystemFile::InodeAlloc(0));
    let ai = read(img, alloc);
    let group = le64(&ai, 0xD0 + 8);
    edit(img, group, |g| {
        let bit = (blk - group) as usize;
        g[0x40 + bit / 8] |= 1 << (bit % 8);
        {
            let v = le16(g, 0x0C) - 1;
            put_le16(g, 0x0C, v)
        };
    });
    edit(img, alloc, |a| {
        {
            let v = le32(a, 0xD0) - 1;
            put_le32(a, 0xD0, v)
        };
        {
            let v = le32(a, 0xB8) + 1;
            put_le32(a, 0xB8, v)
        };
    });
}

/// Writes a new inode at `blk` as a copy of lost+found, with a new mode, flags and links.
fn new_inode(img: &Path, blk: u64, mode: u16, links: u16, flags: u32, area: &[(u64, u8, &[u8])]) {
    let lf = lost_found(img);
    let mut b = read(img, lf);
    let group = blk - (blk - lf) - le16(&b, 0x0E) as u64;
    put_le64(&mut b, 0x50, blk);
    put_le16(&mut b, 0x0E, (blk - group) as u16);
    put_le16(&mut b, 0x28, mode);
    put_le16(&mut b, 0x2A, links);
    put_le32(&mut b, 0x2C, flags);
    let count = le16(&b, 0xC0) as usize;
    if area.is_empty() {
        b[AREA..AREA + count].fill(0);
        put_le64(&mut b, 0x20, 0);
    } else {
        let a = o2fs::format::dirent::build_area(count, area).unwrap();
        b[AREA..AREA + count].copy_from_slice(&a);
    }
    write(img, blk, &b);
    allocate_inode(img, blk);
}

/// One corruption class: its name and how to inflict it.
struct Class {
    name: &'static str,
    size: u64,
    cs: &'static str,
    corrupt: fn(&Path),
    /// fsck.ocfs2 -fnF reports it (orphans are only processed in its write mode, so that
    /// class is checked against our own -fn and against fsck.ocfs2 after the repair).
    ocfs2_sees: bool,
}

fn global_group(img: &Path) -> u64 {
    open(img).sb().first_cluster_group
}

fn classes() -> Vec<Class> {
    let small = |name, corrupt| Class { name, size: 64 << 20, cs: "4K", corrupt, ocfs2_sees: true };
    vec![
        small("chain record free count", |img| {
            let gb = sysfile(img, SystemFile::GlobalBitmap);
            edit(img, gb, |b| {
                let v = le32(b, 0xD0) - 1;
                put_le32(b, 0xD0, v)
            });
        }),
        small("group descriptor free count", |img| {
            edit(img, global_group(img), |b| {
                let v = le16(b, 0x0C) - 1;
                put_le16(b, 0x0C, v)
            });
        }),
        small("global bitmap bit cleared for a used cluster", |img| {
            let v = open(img);
            let j = v.system_inode(SystemFile::Journal(0)).unwrap();
            let c = v.leaf_extents(&j).unwrap()[0].blkno + 1; // bpc = 1
            edit(img, global_group(img), |b| b[0x40 + c as usize / 8] &= !(1 << (c % 8)));
        }),
        small("global bitmap bit set for an unused cluster", |img| {
            let c = (64u64 << 20) / BS - 1;
            edit(img, global_group(img), |b| {
                assert_eq!(b[0x40 + c as usize / 8] & (1 << (c % 8)), 0);
                b[0x40 + c as usize / 8] |= 1 << (c % 8);
            });
        }),
        small("inode i_clusters wrong", |img| {
            let hb = sysfile(img, SystemFile::Heartbeat);
            edit(img, hb, |b| {
                let v = le32(b, 0x14) + 1;
                put_le32(b, 0x14, v)
            });
        }),
        small("inode link count wrong", |img| {
            edit(img, lost_found(img), |b| put_le16(b, 0x2A, 5));
        }),
        small("dirent rec_len broken", |img| {
            edit(img, root(img), |b| put_le16(b, AREA + 8, 14));
        }),
        small("dirent file type wrong", |img| {
            let r = root(img);
            edit(img, r, |b| {
                let count = le16(b, 0xC0) as usize;
                let e = parse_entries(&b[AREA..AREA + count], r).unwrap();
                let lf = e.iter().find(|e| e.name == b"lost+found").unwrap();
                b[AREA + lf.offset + 11] = FT_REG_FILE;
            });
        }),
        small("dirent pointing at a free inode", |img| {
            let free = lost_found(img) + 7;
            add_entry(img, root(img), b"ghost", free, FT_REG_FILE);
        }),
        small("directory not connected", |img| {
            let (lf, r) = (lost_found(img), root(img));
            let d = lf + 1;
            new_inode(img, d, 0o040755, 2, 0x1, &[(d, 2, b"."), (r, 2, b"..")]);
        }),
        Class {
            ocfs2_sees: false,
            ..small("orphan entry left in orphan_dir", |img| {
                let f = lost_found(img) + 2;
                new_inode(img, f, 0o100644, 0, 0x1 | 0x4, &[]);
                let od = sysfile(img, SystemFile::OrphanDir(0));
                add_entry(img, od, format!("{f:016x}").as_bytes(), f, FT_REG_FILE);
            })
        },
        small("suballocator bit cleared for a live inode", |img| {
            let lf = lost_found(img);
            let group = lf - le16(&read(img, lf), 0x0E) as u64;
            edit(img, group, |g| {
                let bit = (lf - group) as usize;
                g[0x40 + bit / 8] &= !(1 << (bit % 8));
            });
        }),
        small("local alloc counters wrong", |img| {
            let la = sysfile(img, SystemFile::LocalAlloc(0));
            edit(img, la, |b| put_le32(b, 0xB8, 3));
        }),
        small("extent record past the volume end", |img| {
            let bb = sysfile(img, SystemFile::BadBlocks);
            let blocks = (64u64 << 20) / BS;
            edit(img, bb, |b| {
                put_le16(b, 0xC4, 1);
                put_le32(b, 0xD0, 0);
                put_le16(b, 0xD4, 1);
                put_le64(b, 0xD8, blocks + 8);
                put_le32(b, 0x14, 1);
                put_le64(b, 0x20, BS);
            });
        }),
        Class {
            name: "primary superblock corrupted",
            size: 5 << 30,
            cs: "64K",
            corrupt: |img| edit(img, 2, |b| b[..8].fill(0)),
            ocfs2_sees: true,
        },
        small("directory '..' pointing at the wrong parent", |img| {
            let sysdir = open(img).sb().system_dir_blkno;
            edit(img, lost_found(img), |b| put_le64(b, AREA + 16, sysdir));
        }),
        small("live inode with a deletion time", |img| {
            edit(img, lost_found(img), |b| put_le64(b, 0x48, 1_700_000_000));
        }),
    ]
}

fn run_class(idx: usize) {
    if !common::have_ocfs2_tools() {
        return;
    }
    let class = classes().swap_remove(idx);
    let dir = tempfile::tempdir().unwrap();
    let img = fresh(dir.path(), "c.img", class.size, class.cs);
    (class.corrupt)(&img);
    let name = class.name;
    if class.ocfs2_sees {
        assert!(common::fsck_ocfs2(&img).is_err(), "{name}: fsck.ocfs2 -fnF does not see this corruption");
    }
    let (code, out) = fsck_o2fs(&img, &["-fn"]);
    assert_eq!(code, 4, "{name}: fsck.o2fs -fn:\n{out}");
    assert!(out.lines().any(|l| l.starts_with('[')), "{name}: no problem line:\n{out}");
    let (code, out) = fsck_o2fs(&img, &["-fy"]);
    assert_eq!(code, 1, "{name}: fsck.o2fs -fy:\n{out}");
    if let Err(log) = common::fsck_ocfs2(&img) {
        panic!("{name}: after fsck.o2fs -fy:\n{out}\nfsck.ocfs2 -fnF still finds problems:\n{log}");
    }
    let (code, out2) = fsck_o2fs(&img, &["-fn"]);
    assert_eq!(code, 0, "{name}: second fsck.o2fs -fn after repair ({out}):\n{out2}");
}

macro_rules! class_tests {
    ($($test:ident = $idx:expr;)*) => { $( #[test] fn $test() { run_class($idx); } )* };
}

class_tests! {
    corrupt_chain_free = 0;
    corrupt_group_free = 1;
    corrupt_bitmap_cleared = 2;
    corrupt_bitmap_set = 3;
    corrupt_i_clusters = 4;
    corrupt_link_count = 5;
    corrupt_rec_len = 6;
    corrupt_file_type = 7;
    corrupt_dirent_free_inode = 8;
    corrupt_disconnected_dir = 9;
    corrupt_orphan = 10;
    corrupt_suballoc_bit = 11;
    corrupt_local_alloc = 12;
    corrupt_extent_past_end = 13;
    corrupt_primary_superblock = 14;
    corrupt_dotdot = 15;
    corrupt_dtime = 16;
}

/// `-p` makes the safe repairs (counters) and leaves the rest (exit 4).
#[test]
fn preen_repairs_only_safe_problems() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let all = classes();
    let img = fresh(dir.path(), "p.img", 64 << 20, "4K");
    (all[0].corrupt)(&img);
    let (code, out) = fsck_o2fs(&img, &["-fp"]);
    assert_eq!(code, 1, "{out}");
    common::assert_fsck_ocfs2_clean(&img);
    let img = fresh(dir.path(), "q.img", 64 << 20, "4K");
    (all[7].corrupt)(&img);
    let (code, out) = fsck_o2fs(&img, &["-fp"]);
    assert_eq!(code, 4, "{out}");
    let (code, out) = fsck_o2fs(&img, &["-fy"]);
    assert_eq!(code, 1, "{out}");
    common::assert_fsck_ocfs2_clean(&img);
}

#[test]
fn fresh_image_is_clean() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, cs) in [("a.img", "4K"), ("b.img", "64K")] {
        let img = fresh(dir.path(), name, 256 << 20, cs);
        let (code, out) = fsck_o2fs(&img, &["-fn"]);
        assert_eq!(code, 0, "{out}");
        assert!(!out.lines().any(|l| l.starts_with('[')), "{out}");
        let (code, out) = fsck_o2fs(&img, &["-n"]);
        assert_eq!(code, 0, "{out}");
        let (code, out) = fsck_o2fs(&img, &["-fy"]);
        assert_eq!(code, 0, "{out}");
        common::assert_fsck_ocfs2_clean(&img);
    }
}

#[test]
fn usage_errors_and_missing_devices() {
    let (code, _) = fsck_o2fs(Path::new("/nonexistent/img"), &["-fn"]);
    assert_eq!(code, 8);
    let out = common::run(Command::new(common::bin("fsck.o2fs")).args(["-n", "-y", "x"]));
    assert_eq!(out.status.code(), Some(16));
}

#[test]
fn refuses_a_volume_in_use_without_big_f() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = fresh(dir.path(), "m.img", 64 << 20, "4K");
    let v = open(&img);
    let sm = v.system_inode(SystemFile::SlotMap).unwrap();
    let blk = v.leaf_extents(&sm).unwrap()[0].blkno;
    edit(&img, blk, |b| {
        b[8] = 1; // slot 1 valid (extended map: 8-byte entries)
        put_le32(b, 12, 3);
    });
    let (code, out) = fsck_o2fs(&img, &["-fn"]);
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("slot 1"), "{out}");
    let (code, out) = fsck_o2fs(&img, &["-fnF"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn refuses_a_volume_with_a_live_heartbeat_without_big_f() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = fresh(dir.path(), "hb.img", 64 << 20, "4K");
    let v = open(&img);
    let hb = v.system_inode(SystemFile::Heartbeat).unwrap();
    let start = v.leaf_extents(&hb).unwrap()[0].blkno * BS;
    // Node 3 heartbeats in its 512-byte sector (§12.2) until the checks are done.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beater = {
        let (img, stop) = (img.clone(), stop.clone());
        std::thread::spawn(move || {
            let dev = FileDevice::open(&img, true).unwrap();
            let mut seq = 1_700_000_000u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut sector = vec![0u8; 512];
                o2fs::format::heartbeat::HeartbeatBlock { seq, node: 3, cksum: 0, generation: 7, dead_ms: 62000 }
                    .encode(&mut sector);
                dev.write_at(&sector, start + 3 * 512).unwrap();
                seq += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (code, out) = fsck_o2fs(&img, &["-fn"]);
    let (code_f, out_f) = fsck_o2fs(&img, &["-fnF"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    beater.join().unwrap();
    assert_eq!(code, 8, "{out}");
    assert!(out.contains("heartbeating"), "{out}");
    assert_eq!(code_f, 0, "{out_f}");
}

fn mtime(img: &Path, blk: u64) -> u64 {
    Inode::decode(&read(img, blk), blk).unwrap().mtime
}

fn journal_dirty(img: &Path, slot: u16) -> bool {
    open(img).system_inode(SystemFile::Journal(slot)).unwrap().journal_flags() & JOURNAL_DIRTY_FL != 0
}

/// A fresh 256 MiB clustered image (4K blocks and clusters, 2 slots) with journal:0000 emptied
/// (mkfs leaves `s_start` = 1 over a zeroed log, §13.8) and opened.
fn with_journal(dir: &Path, name: &str) -> (PathBuf, Volume, Journal) {
    let img = common::sparse_image(dir, name, 256 << 20);
    common::mkfs_ocfs2(&img, "4096", "4096", 2, false);
    let vol = Volume::open(Arc::new(FileDevice::open(&img, true).unwrap())).unwrap();
    let (_, mut j) = common::open_journal(&vol, 0);
    assert_eq!(j.discard().unwrap().transactions, 0);
    assert_eq!(j.superblock().start, 0);
    (img, vol, j)
}

/// A node that crashed after committing: a transaction changing the root inode's mtime sits in
/// journal:0000, not checkpointed, and the slot is marked dirty. `-n` reports it and writes
/// nothing; `-y` replays it through the journal layer and clears the flag.
#[test]
fn dirty_journal_is_replayed() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, vol, mut j) = with_journal(dir.path(), "j.img");
    let root = vol.sb().root_blkno;
    let mut raw = vol.read_block(root).unwrap();
    let mut inode = Inode::decode(&raw, root).unwrap();
    let old_mtime = inode.mtime;
    inode.mtime += 1000;
    inode.encode(&mut raw);
    j.commit(vec![(root, raw)], vec![]).unwrap();
    drop(j);
    common::set_journal_dirty(&vol, 0, true);
    drop(vol);
    assert_eq!(mtime(&img, root), old_mtime);

    let (code, out) = fsck_o2fs(&img, &["-fn"]);
    assert_eq!(code, 4, "{out}");
    assert!(out.lines().any(|l| l.starts_with("[JOURNAL_DIRTY]") && l.contains("journal:0000")), "{out}");
    assert_eq!(mtime(&img, root), old_mtime, "-n replayed the journal");
    assert!(journal_dirty(&img, 0), "-n cleared the dirty flag");

    let (code, out) = fsck_o2fs(&img, &["-fy"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("replayed 1 transaction"), "{out}");
    assert_eq!(mtime(&img, root), old_mtime + 1000);
    assert!(!journal_dirty(&img, 0), "-y left the dirty flag set");
    let vol = open(&img);
    assert!(!common::open_journal(&vol, 0).1.needs_recovery());
    drop(vol);

    let (code, out) = fsck_o2fs(&img, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    common::assert_fsck_ocfs2_clean(&img);
}

/// The dirty flag over an empty log (`s_start` = 0, what a node leaves while mounted): nothing
/// to replay, the flag is cleared.
#[test]
fn dirty_flag_over_an_empty_log_is_cleared() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, vol, j) = with_journal(dir.path(), "e.img");
    drop(j);
    common::set_journal_dirty(&vol, 0, true);
    drop(vol);
    let (code, out) = fsck_o2fs(&img, &["-fn"]);
    assert_eq!(code, 4, "{out}");
    assert!(journal_dirty(&img, 0));
    let (code, out) = fsck_o2fs(&img, &["-fy"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("journal:0000") && out.contains("empty log"), "{out}");
    assert!(!journal_dirty(&img, 0), "-y left the dirty flag set");
    let (code, out) = fsck_o2fs(&img, &["-fn"]);
    assert_eq!(code, 0, "{out}");
    common::assert_fsck_ocfs2_clean(&img);
}

/// A dirty journal the journal layer refuses to open (a JBD2 feature OCFS2 never uses) is
/// reported with the reason and left alone, flag and all.
#[test]
fn dirty_journal_with_unsupported_features_is_left_alone() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, vol, j) = with_journal(dir.path(), "u.img");
    drop(j);
    common::set_journal_dirty(&vol, 0, true);
    let jsb_blk = {
        let ino = vol.system_inode(SystemFile::Journal(0)).unwrap();
        vol.leaf_extents(&ino).unwrap()[0].blkno
    };
    drop(vol);
    edit(&img, jsb_blk, |b| {
        let mut sb = JournalSuperblock::decode(b, 0).unwrap();
        sb.feature_incompat |= FEATURE_INCOMPAT_CSUM_V3;
        sb.encode(b);
    });
    let before = read(&img, jsb_blk);
    for args in [&["-fn"][..], &["-fy"][..]] {
        let (code, out) = fsck_o2fs(&img, args);
        assert_eq!(code, 4, "{args:?}: {out}");
        assert!(out.lines().any(|l| l.starts_with("[JOURNAL_UNKNOWN_FEATURE]") && l.contains("CSUM_V3")), "{out}");
        assert!(journal_dirty(&img, 0), "{args:?} cleared the dirty flag");
        assert_eq!(read(&img, jsb_blk), before, "{args:?} wrote the journal superblock");
    }
}

/// Copy-on-write view of an image held in memory: flips and repairs never touch the base.
struct Overlay {
    base: Arc<Vec<u8>>,
    pages: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Overlay {
    fn page(&self, p: u64) -> Vec<u8> {
        if let Some(v) = self.pages.lock().unwrap().get(&p) {
            return v.clone();
        }
        let s = (p * BS) as usize;
        self.base[s..s + BS as usize].to_vec()
    }
}

impl BlockDevice for Overlay {
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DevError> {
        o2fs::dev::check_range("read", offset, buf.len() as u64, self.size())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (p, o) = (pos / BS, (pos % BS) as usize);
            let n = (BS as usize - o).min(buf.len() - done);
            let pages = self.pages.lock().unwrap();
            match pages.get(&p) {
                Some(v) => buf[done..done + n].copy_from_slice(&v[o..o + n]),
                None => buf[done..done + n].copy_from_slice(&self.base[pos as usize..pos as usize + n]),
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DevError> {
        o2fs::dev::check_range("write", offset, buf.len() as u64, self.size())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (p, o) = (pos / BS, (pos % BS) as usize);
            let n = (BS as usize - o).min(buf.len() - done);
            let mut page = self.page(p);
            page[o..o + n].copy_from_slice(&buf[done..done + n]);
            self.pages.lock().unwrap().insert(p, page);
            done += n;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DevError> {
        Ok(())
    }
}

/// Blocks that carry OCFS2 or JBD2 metadata, found by signature.
fn metadata_blocks(img: &[u8]) -> Vec<u64> {
    img.chunks(BS as usize)
        .enumerate()
        .filter(|(_, b)| {
            [&b"OCFSV2"[..], b"INODE01", b"GROUP01", b"EXBLK01", &[0xC0, 0x3B, 0x39, 0x98]]
                .iter()
                .any(|s| b.starts_with(s))
        })
        .map(|(i, _)| i as u64)
        .collect()
}

/// Flips 1..8 random bytes of one random metadata block.
fn flip(rng: &mut Rng, dev: &dyn BlockDevice, meta: &[u64]) -> String {
    let blk = meta[rng.below(meta.len() as u64) as usize];
    let mut b = vec![0u8; BS as usize];
    dev.read_block(blk, &mut b).unwrap();
    let n = 1 + rng.below(8);
    let mut what = format!("block {blk}:");
    for _ in 0..n {
        // Favour the headers, where most fields live.
        let off = if rng.below(2) == 0 { rng.below(0x100) } else { rng.below(BS) } as usize;
        let x = 1 + rng.below(255) as u8;
        b[off] ^= x;
        what.push_str(&format!(" [{off:#x}]^={x:#x}"));
    }
    dev.write_block(blk, &b).unwrap();
    what
}

/// Runs the engine in a thread with a time limit; returns its exit code (8 for an error).
fn engine(dev: Arc<dyn BlockDevice>, mode: Mode) -> Result<i32, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let opts = Options { mode, force: true, skip_cluster_check: true, backup: None };
        let code = match fsck::check(dev, &opts) {
            Ok(o) => o.exit_code(),
            Err(_) => 8,
        };
        let _ = tx.send(code);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(code) => {
            let _ = h.join();
            Ok(code)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err("did not finish within 20 s".into()),
        Err(_) => Err(match h.join() {
            Err(e) => format!(
                "panicked: {:?}",
                e.downcast_ref::<String>().cloned().or(e.downcast_ref::<&str>().map(|s| s.to_string()))
            ),
            Ok(()) => "thread ended without a result".into(),
        }),
    }
}

#[test]
fn random_byte_flips_never_panic_or_hang() {
    if !common::have_ocfs2_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = fresh(dir.path(), "r.img", 64 << 20, "4K");
    let base = Arc::new(std::fs::read(&img).unwrap());
    let meta = metadata_blocks(&base);
    assert!(meta.len() > 20, "found only {} metadata blocks", meta.len());
    let seed = seed_from_env(0x0F5C_2026);
    let mut rng = Rng::new(seed);
    let runs = std::env::var("O2FS_FLIPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let start = Instant::now();
    let mut codes: HashMap<i32, usize> = HashMap::new();
    let mut not_clean_after_repair = 0;
    for i in 0..runs {
        let dev = Arc::new(Overlay { base: base.clone(), pages: Mutex::new(HashMap::new()) });
        let what = flip(&mut rng, dev.as_ref(), &meta);
        let mut last = Vec::new();
        for mode in [Mode::Check, Mode::Repair, Mode::Check] {
            let r = engine(dev.clone(), mode);
            match r {
                Ok(code) if [0, 1, 4, 8].contains(&code) => {
                    *codes.entry(code).or_default() += 1;
                    last.push(code);
                }
                other => panic!("O2FS_SEED={seed} flip #{i} ({what}), mode {mode:?}: {other:?}"),
            }
        }
        if last.get(1) == Some(&1) && last.get(2) != Some(&0) {
            not_clean_after_repair += 1;
            if std::env::var_os("O2FS_VERBOSE").is_some() {
                eprintln!("flip #{i} ({what}): repaired, but the next check exits {:?}", last.get(2));
            }
        }
    }
    eprintln!(
        "{runs} flips in {:?}; exit codes {codes:?}; repaired but not clean afterwards: {not_clean_after_repair}",
        start.elapsed()
    );
    // A few through the real program, with the kill-after-20-s rule.
    for i in 0..10 {
        let copy = dir.path().join("flip.img");
        std::fs::write(&copy, base.as_slice()).unwrap();
        let what = flip(&mut rng, &FileDevice::open(&copy, true).unwrap(), &meta);
        for args in [&["-fn"][..], &["-fy"][..]] {
            let mut child = Command::new(common::bin("fsck.o2fs"))
                .args(args)
                .arg(&copy)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let t = Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if t.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    panic!("O2FS_SEED={seed} binary flip #{i} ({what}) {args:?}: hung");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            assert!(
                matches!(status.code(), Some(0 | 1 | 4 | 8)),
                "O2FS_SEED={seed} binary flip #{i} ({what}) {args:?}: {status:?}"
            );
        }
    }
}
