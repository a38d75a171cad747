//! Bad images (issue 3): a truncated image, an image of zeros, a non-OCFS2 image and randomly
//! corrupted copies of a small populated volume. Mounting each gives a clear error, or a mount on
//! which every operation ends with success or an errno (EIO on what is damaged) — never a panic
//! of the daemon, a daemon killed by a signal, or a hang (DESIGN.md "Bad input and failure").
//!
//! The corrupted images are seeded: seed i of a run is `base + i`, base `O2FS_SEED` or a fixed
//! default; every failure names its seed, the blocks and offsets flipped and what went wrong.

mod common;

use common::*;
use o2fs::dev::FileDevice;
use o2fs::fs::Volume;
use o2fs::testutil::{seed_from_env, Rng};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const SIZE: u64 = 32 << 20;
const BS: usize = 1024;
/// Corrupted images per run: 200 mounts, two at a time, take about 8 s on a 2-core test machine
/// (dev profile; the test prints its time). `O2FS_BADIMAGE_COUNT` changes the count.
const IMAGES: u64 = 200;
/// How long the walk of one mounted image may take before it counts as a hang.
const WALK_LIMIT: Duration = Duration::from_secs(20);
/// Bytes read of one file at most: a corrupt i_size may claim petabytes of holes.
const READ_CAP: u64 = 8 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    rng.bytes(len)
}

/// mkfs.o2fs -b 1K -C 4K --size 32M, populated through a mount: directories, inline files, a
/// 200 KB file, a sparse file, symlinks (fast and extent-backed), a directory in blocks, and
/// two interleaved files whose trees need extent blocks. fsck.ocfs2 must find it clean.
fn make_base(dir: &Path) -> PathBuf {
    let img = dir.join("base.img");
    let out = run(Command::new(bin("mkfs.o2fs"))
        .args(["-q", "-b", "1K", "-C", "4K", "-N", "1", "-M", "local", "--size"])
        .arg(SIZE.to_string())
        .arg(&img));
    assert!(out.status.success(), "mkfs.o2fs: {}", text(&out));
    let mnt = dir.join("base-mnt");
    fs::create_dir(&mnt).unwrap();
    let mut m = Mount::new(&img, &mnt, "");
    let p = |rel: &str| mnt.join(rel);
    fs::create_dir_all(p("a/b/c")).unwrap();
    fs::create_dir(p("d")).unwrap();
    for i in 0..6 {
        fs::write(p(&format!("a/small{i}")), pattern(i, 20 + 90 * i as usize)).unwrap();
    }
    fs::write(p("a/b/big"), pattern(100, 200_000)).unwrap();
    let sparse = File::create(p("d/sparse")).unwrap();
    sparse.write_all_at(b"island", 1 << 20).unwrap();
    sparse.set_len(3 << 20).unwrap();
    drop(sparse);
    std::os::unix::fs::symlink("a/b/big", p("fast")).unwrap();
    let long: String = (0..3000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    std::os::unix::fs::symlink(&long, p("d/long")).unwrap();
    // A directory past its inline area (1K blocks: several directory blocks).
    for i in 0..60 {
        fs::write(p(&format!("a/b/c/entry-with-a-long-name-{i:03}")), [i as u8; 3]).unwrap();
    }
    // Two files written a cluster at a time in turn: 60 extents each, more than the 51 an inode
    // of a 1K block holds, so both trees have extent blocks.
    let (mut x, mut y) = (File::create(p("d/x")).unwrap(), File::create(p("d/y")).unwrap());
    for i in 0..60u64 {
        x.write_all(&pattern(1000 + i, 4096)).unwrap();
        y.write_all(&pattern(2000 + i, 4096)).unwrap();
    }
    drop((x, y));
    fs::hard_link(p("a/small1"), p("d/hard")).unwrap();
    m.unmount().unwrap_or_else(|e| panic!("unmount of the base image: {e}"));
    if have_ocfs2_tools() {
        assert_fsck_ocfs2_clean(&img);
    }
    img
}

/// The base image's metadata blocks, each with what it is.
fn metadata_blocks(img: &Path) -> Vec<(u64, String)> {
    let vol = Volume::open(Arc::new(FileDevice::open(img, false).unwrap())).unwrap();
    let meta = walk_metadata(&vol);
    assert!(!meta.extent_blocks.is_empty(), "the base image should have extent blocks");
    assert!(!meta.dir_blocks.is_empty(), "the base image should have directory blocks");
    let mut out = vec![(2, "superblock".to_string())];
    out.extend(meta.inodes.iter().map(|(b, p)| (*b, format!("inode {p}"))));
    out.extend(
        meta.groups.iter().chain(&meta.extent_blocks).chain(&meta.dir_blocks).chain(&meta.journal_supers).cloned(),
    );
    // In name order, so that a seed picks the same structures in every run (block numbers
    // vary a little between runs: the kernel's request order is not fixed).
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// An image in memory: its length and its non-zero 4 KiB pieces (written into a sparse file).
struct Sparse {
    len: u64,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl Sparse {
    fn read(img: &Path) -> Sparse {
        let bytes = fs::read(img).unwrap();
        let pieces = bytes
            .chunks(4096)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, c)| (i as u64 * 4096, c.to_vec()))
            .collect();
        Sparse { len: bytes.len() as u64, pieces }
    }

    fn write(&self, path: &Path) {
        let f = File::create(path).unwrap();
        f.set_len(self.len).unwrap();
        for (off, data) in &self.pieces {
            f.write_all_at(data, *off).unwrap();
        }
    }
}

/// Flips 1–8 bytes (XOR with a non-zero value) in each of 1–3 metadata blocks; half the flips
/// land in the first 256 bytes, where the headers are. Returns a description of what changed.
fn corrupt(path: &Path, meta: &[(u64, String)], rng: &mut Rng) -> String {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let (blkno, kind) = &meta[rng.below(meta.len() as u64) as usize];
        let mut block = vec![0u8; BS];
        f.read_exact_at(&mut block, blkno * BS as u64).unwrap();
        let mut flips = Vec::new();
        for _ in 0..1 + rng.below(8) {
            let off = if rng.below(2) == 0 { rng.below(256) } else { rng.below(BS as u64) } as usize;
            let x = 1 + rng.below(255) as u8;
            block[off] ^= x;
            flips.push(format!("{off:#x}^{x:#04x}"));
        }
        f.write_all_at(&block, blkno * BS as u64).unwrap();
        what.push(format!("block {blkno} ({kind}): {}", flips.join(" ")));
    }
    what.join("; ")
}

/// What the walk of a mounted image saw.
#[derive(Default, Debug)]
struct Walk {
    ok: usize,
    /// errno → count (-1: an error without an errno).
    errors: std::collections::BTreeMap<i32, usize>,
    entries: usize,
}

impl Walk {
    fn note<T>(&mut self, r: std::io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.ok += 1;
                Some(v)
            }
            Err(e) => {
                *self.errors.entry(e.raw_os_error().unwrap_or(-1)).or_default() += 1;
                None
            }
        }
    }
}

/// readdir recursively, stat, read every file (up to READ_CAP), readlink; then create a file
/// and write 10 KB into it. Every call may fail; none may hang.
fn walk(mnt: &Path) -> Walk {
    let mut w = Walk::default();
    walk_dir(mnt, 0, &mut w);
    if let Some(mut f) = w.note(File::create(mnt.join("new-after-corruption"))) {
        w.note(f.write_all(&pattern(7, 10_000)));
        w.note(f.sync_all());
    }
    w
}

fn walk_dir(dir: &Path, depth: usize, w: &mut Walk) {
    // A corrupt entry may name an ancestor: bound the depth and the number of entries.
    if depth > 16 || w.entries > 5000 {
        return;
    }
    let Some(rd) = w.note(fs::read_dir(dir)) else { return };
    for entry in rd {
        let Some(entry) = w.note(entry) else { continue };
        w.entries += 1;
        let path = entry.path();
        let Some(meta) = w.note(fs::symlink_metadata(&path)) else { continue };
        let ft = meta.file_type();
        if ft.is_dir() {
            walk_dir(&path, depth + 1, w);
        } else if ft.is_symlink() {
            w.note(fs::read_link(&path));
        } else if ft.is_file() {
            if let Some(f) = w.note(File::open(&path)) {
                let mut buf = Vec::new();
                w.note(f.take(READ_CAP).read_to_end(&mut buf));
            }
        }
    }
}

fn daemon_failed(log: &str) -> Option<&'static str> {
    if log.contains("panicked") {
        Some("the daemon panicked")
    } else {
        None
    }
}

/// Mounts one image and judges it. Err(symptom) on a hang, a panic, a crash or an unclean end.
fn judge(img: &Path, mnt: &Path) -> Result<String, String> {
    let mut m = match Mount::try_new(img, mnt, "") {
        Err(msg) => {
            // Refused: a message, an ordinary exit, no panic, no hang.
            if msg.contains("no mount after 10 s") {
                return Err(format!("mount hung:\n{msg}"));
            }
            if msg.lines().next().is_some_and(|l| l.contains("exited (signal")) {
                return Err(format!("the daemon was killed by a signal:\n{msg}"));
            }
            if let Some(s) = daemon_failed(&msg) {
                return Err(format!("{s}:\n{msg}"));
            }
            let reason = msg.lines().filter(|l| l.starts_with("o2fs:")).last().unwrap_or("").to_string();
            if reason.is_empty() {
                return Err(format!("refused without an `o2fs:` message:\n{msg}"));
            }
            return Ok(format!("refused: {reason}"));
        }
        Ok(m) => m,
    };
    let (tx, rx) = mpsc::channel();
    let dir = mnt.to_path_buf();
    let walker = std::thread::spawn(move || {
        let _ = tx.send(walk(&dir));
    });
    let w = match rx.recv_timeout(WALK_LIMIT) {
        Ok(w) => w,
        Err(_) => {
            let log = m.stderr();
            // Killing the daemon aborts the FUSE connection: the walker's calls then fail.
            m.kill();
            let _ = walker.join();
            return Err(format!("the walk did not finish within {WALK_LIMIT:?} (daemon killed):\n{log}"));
        }
    };
    let _ = walker.join();
    // The daemon must still answer: statfs always reaches it; an errno is an answer.
    let alive = |r: std::io::Result<()>| {
        r.map_or_else(|e| e.raw_os_error() != Some(nix::errno::Errno::ENOTCONN as i32), |_| true)
    };
    let statfs_ok = alive(nix::sys::statvfs::statvfs(mnt).map(|_| ()).map_err(std::io::Error::from));
    let stat_ok = alive(fs::metadata(mnt).map(|_| ()));
    if !statfs_ok || !stat_ok {
        let log = m.stderr();
        return Err(format!("the mount stopped answering after the walk ({w:?}):\n{log}"));
    }
    let unmounted = m.unmount();
    let log = m.stderr();
    if let Some(s) = daemon_failed(&log) {
        return Err(format!("{s} (walk {w:?}):\n{log}"));
    }
    unmounted.map_err(|e| format!("unclean end of the daemon (walk {w:?}): {e}"))?;
    let kind = if w.errors.is_empty() { "mounted, no error" } else { "mounted, some errors" };
    Ok(format!("{kind}: {} ok, errors {:?}, {} entries", w.ok, w.errors, w.entries))
}

#[test]
fn truncated_zero_and_foreign_images_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = make_base(tmp.path());
    let bytes = fs::read(&base).unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("first 4 KiB", bytes[..4096].to_vec()),
        ("first 1 MiB", bytes[..1 << 20].to_vec()),
        ("half", bytes[..bytes.len() / 2].to_vec()),
        ("all but the last block", bytes[..bytes.len() - BS].to_vec()),
        ("zeros", vec![0; SIZE as usize]),
        ("random", Rng::new(3).bytes(SIZE as usize)),
    ];
    // A foreign filesystem, when mke2fs is installed.
    let ext = tmp.path().join("ext.img");
    sparse_image(tmp.path(), "ext.img", 8 << 20);
    if Command::new("mke2fs").args(["-q", "-F", "-t", "ext4"]).arg(&ext).output().is_ok_and(|o| o.status.success()) {
        cases.push(("ext4", fs::read(&ext).unwrap()));
    }
    let img = tmp.path().join("bad.img");
    let mut failures = Vec::new();
    for (name, data) in &cases {
        fs::write(&img, data).unwrap();
        match Mount::try_new(&img, &mnt, "") {
            Ok(mut m) => {
                let _ = m.unmount();
                failures.push(format!("{name}: mounted"));
            }
            Err(msg) => {
                let reason = msg.lines().filter(|l| l.starts_with("o2fs:")).last().unwrap_or("");
                eprintln!("{name}: {reason}");
                if reason.is_empty()
                    || msg.contains("panicked")
                    || msg.contains("exited (signal")
                    || msg.contains("no mount after")
                {
                    failures.push(format!("{name}: not a clean refusal:\n{msg}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corrupted_images_fail_cleanly() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let base = make_base(tmp.path());
    let meta = metadata_blocks(&base);
    let image = Sparse::read(&base);
    let seed0 = seed_from_env(0xBAD_1A6E);
    // O2FS_BADIMAGE_COUNT runs more (or fewer) images, to hunt with many seeds.
    let images = std::env::var("O2FS_BADIMAGE_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(IMAGES);
    eprintln!("{} metadata blocks; seeds {seed0}..{} (O2FS_SEED sets the first)", meta.len(), seed0 + images);
    let next = Arc::new(Mutex::new(0u64));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let outcomes = Arc::new(Mutex::new(std::collections::BTreeMap::<String, usize>::new()));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (next, failures, outcomes) = (next.clone(), failures.clone(), outcomes.clone());
            let images = images;
            let (meta, image) = (meta.clone(), Sparse { len: image.len, pieces: image.pieces.clone() });
            let dir = tmp.path().join(format!("w{w}"));
            fs::create_dir(&dir).unwrap();
            std::thread::spawn(move || {
                let (img, mnt) = (dir.join("bad.img"), dir.join("mnt"));
                fs::create_dir(&mnt).unwrap();
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    if i >= images {
                        break;
                    }
                    let seed = seed0 + i;
                    image.write(&img);
                    let what = corrupt(&img, &meta, &mut Rng::new(seed));
                    match judge(&img, &mnt) {
                        Ok(outcome) => {
                            let kind = outcome.split(':').next().unwrap_or("").to_string();
                            *outcomes.lock().unwrap().entry(kind).or_default() += 1;
                            if std::env::var_os("O2FS_BADIMAGE_VERBOSE").is_some() {
                                eprintln!("seed {seed}: {what}\n  {outcome}");
                            }
                        }
                        Err(symptom) => {
                            eprintln!("seed {seed} FAILED: {what}\n{symptom}");
                            failures.lock().unwrap().push(format!("O2FS_SEED={seed}: {what}\n{symptom}"));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    eprintln!("{images} corrupted images in {:?}: {:?}", started.elapsed(), outcomes.lock().unwrap());
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} of {images} corrupted images failed:\n{}", failures.len(), failures.join("\n\n"));
}
