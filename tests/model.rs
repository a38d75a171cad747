//! Model-based random test (issue 3, DESIGN.md "Testing"): seeded random sequences of namespace and
//! data operations are applied both to an o2fs mount and to a reference directory on the host's
//! own filesystem, and the two must agree after every step: the same result (Ok or the same errno),
//! the same data read back, the same metadata of every path the operation touched. Every
//! `CHECK_EVERY` operations, around a remount every `REMOUNT_EVERY` operations, and at the end, the
//! whole trees are compared: names, file types (lstat and readdir's d_type), sizes, contents (read
//! with O_DIRECT on the mount, so the daemon answers rather than the page cache), permission bits,
//! link counts, symlink targets and which names are hard links of one inode; across each remount
//! o2fs's mtimes and ctimes (with nanoseconds) must come back unchanged. Each seed ends with a
//! remount and comparison of what came back from disk, a clean unmount, then fsck.ocfs2 -fnF and
//! fsck.o2fs -fn.
//!
//! Operations: create (O_EXCL / O_TRUNC), pwrite (tiny and inline, medium, up to 1 MiB, past EOF
//! leaving holes), O_APPEND, pread (half with O_DIRECT on o2fs), truncate up and down, mkdir,
//! rmdir, unlink, rename (plain, RENAME_NOREPLACE, RENAME_EXCHANGE; files and directories, across
//! directories, over existing names, into itself), link, symlink (up to ~4000-byte targets) and
//! readlink, chmod, fsync, open-unlink-read (an unlinked open file stays usable), utimensat with
//! nanoseconds (and UTIME_OMIT), readdir (name and d_type sets), lstat, descriptors held across
//! operations (pwrite, pread, ftruncate, fstat, close on files renamed or unlinked meanwhile),
//! bulk create of long names (directories past inline, several blocks) and bulk unlink, strided
//! writes (extent trees past the inode's own list), fallocate (mode 0, KEEP_SIZE within the last
//! cluster, PUNCH_HOLE), writes terabytes out read back and truncated away.
//!
//! Two geometries (4K blocks and 1K blocks, 4K clusters), two seeds each, `DEFAULT_OPS` operations
//! per seed: 10 000 operations per run. `O2FS_SEED=N` (decimal or 0x…, or `random`) replays one
//! seed instead; `O2FS_OPS=N` changes the count; `O2FS_KEEP=1` keeps the tempdir (image and
//! reference tree) of each run. A failure prints the seed, the operation's index, the
//! operation, both results, the operations before it and the daemon's log.
//!
//! Not compared: directory sizes (o2fs reports its inline area or blocks, the host its own),
//! o2fs's timestamps against the host's (only utimensat's mtime, and o2fs's own across remounts),
//! st_blocks, owners (everything runs as root).

mod common;

use common::rng::{parse_seed, Rng};
use common::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const DEFAULT_OPS: usize = 2500;
const CHECK_EVERY: usize = 50;
const REMOUNT_EVERY: usize = 1000;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// Above this much file data in the reference tree, writes stop growing files.
const DATA_BUDGET: u64 = 40 * MIB;
/// Deepest path (components) an operation creates: depth ≤ 3.
const MAX_DEPTH: usize = 3;
/// Every operation's names come from these pools (short names collide often; the long ones push
/// directories out of their inline area and over several blocks).
const SHORT_NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const LONG_NAMES: usize = 48;
/// No entry of this name ever exists, so symlinks made by the test dangle the same way on both sides.
const NOWHERE: &str = "nowhere_zz";

#[test]
fn model_4k_blocks() {
    run_geometry("4K", "4K", &[0x4b5e_ed01, 0x4b5e_ed02]);
}

#[test]
fn model_1k_blocks() {
    run_geometry("1K", "4K", &[0x1b5e_ed01, 0x1b5e_ed02]);
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// Deterministic content of a write: a pseudo-random byte stream, or zeros.
fn gen_data(seed: u64, len: usize) -> Vec<u8> {
    if seed.is_multiple_of(10) {
        return vec![0; len];
    }
    Rng::new(seed).bytes(len)
}

fn long_name(i: usize) -> String {
    // 100..=255 bytes, distinct by their two-digit prefix.
    let len = 100 + (i * 37) % 156;
    format!("{i:02}{}", "l".repeat(len - 2))
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Clone, Debug)]
enum Op {
    Create {
        path: String,
        mode: u32,
        excl: bool,
        trunc: bool,
    },
    Write {
        path: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    Append {
        path: String,
        len: usize,
        seed: u64,
    },
    Read {
        path: String,
        off: u64,
        len: usize,
        direct: bool,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    /// flags: 0, or RENAME_NOREPLACE / RENAME_EXCHANGE.
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Fsync {
        path: String,
    },
    /// Open, unlink, (maybe write), fstat and read everything through the still-open descriptor.
    OpenUnlinkRead {
        path: String,
        write: Option<(u64, usize, u64)>,
        direct: bool,
    },
    Utimens {
        path: String,
        atime: (i64, i64),
        mtime: (i64, i64),
    },
    Readdir {
        path: String,
    },
    Stat {
        path: String,
    },
    /// Opens (read-write) a descriptor kept across operations in `slot`, closing what it held.
    Hold {
        slot: usize,
        path: String,
        direct: bool,
    },
    HeldWrite {
        slot: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    HeldRead {
        slot: usize,
        off: u64,
        len: usize,
    },
    HeldTruncate {
        slot: usize,
        size: u64,
    },
    HeldStat {
        slot: usize,
    },
    HeldClose {
        slot: usize,
    },
    /// Creates many files (long names from the pool) in one directory: pushes it out of its
    /// inline area and over several blocks.
    BulkCreate {
        dir: String,
        names: Vec<usize>,
    },
    /// Unlinks every non-directory entry of a directory (as each side lists it).
    BulkUnlink {
        dir: String,
    },
    /// `count` writes of `len` bytes `stride` apart: one extent each, so the extent tree grows
    /// past the inode's own list.
    Stride {
        path: String,
        start: u64,
        stride: u64,
        count: u64,
        len: usize,
        seed: u64,
    },
    /// A write far past the end (gigabytes to terabytes), read back (O_DIRECT on o2fs) with the
    /// bytes around it, then ftruncate back to the old size, all through one descriptor.
    FarWrite {
        path: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    /// fallocate mode 0, KEEP_SIZE, or PUNCH_HOLE|KEEP_SIZE.
    Fallocate {
        path: String,
        mode: u32,
        off: u64,
        len: u64,
    },
}

/// A path for messages: long names shortened to their prefix and length.
fn show(p: &str) -> String {
    if p.is_empty() {
        return "/".into();
    }
    p.split('/')
        .map(|c| if c.len() > 24 { format!("{}…[{}B]", &c[..4], c.len()) } else { c.to_string() })
        .collect::<Vec<_>>()
        .join("/")
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::Create { path, mode, excl, trunc } => {
                format!(
                    "create {} mode {mode:o}{}{}",
                    show(path),
                    if *excl { " O_EXCL" } else { "" },
                    if *trunc { " O_TRUNC" } else { "" }
                )
            }
            Op::Write { path, off, len, seed } => {
                format!("write {} off {off} len {len} (data seed {seed})", show(path))
            }
            Op::Append { path, len, seed } => format!("append {} len {len} (data seed {seed})", show(path)),
            Op::Read { path, off, len, direct } => {
                format!("read {} off {off} len {len}{}", show(path), if *direct { " (O_DIRECT on o2fs)" } else { "" })
            }
            Op::Truncate { path, size } => format!("truncate {} to {size}", show(path)),
            Op::Mkdir { path, mode } => format!("mkdir {} mode {mode:o}", show(path)),
            Op::Rmdir { path } => format!("rmdir {}", show(path)),
            Op::Unlink { path } => format!("unlink {}", show(path)),
            Op::Rename { from, to, flags } => format!(
                "rename {} -> {}{}",
                show(from),
                show(to),
                match *flags {
                    0 => "",
                    1 => " RENAME_NOREPLACE",
                    _ => " RENAME_EXCHANGE",
                }
            ),
            Op::Link { from, to } => format!("link {} -> {}", show(from), show(to)),
            Op::Symlink { target, path } => {
                format!("symlink {} -> {}[{}B]", show(path), &target[..target.len().min(24)], target.len())
            }
            Op::Readlink { path } => format!("readlink {}", show(path)),
            Op::Chmod { path, mode } => format!("chmod {} {mode:o}", show(path)),
            Op::Fsync { path } => format!("fsync {}", show(path)),
            Op::OpenUnlinkRead { path, write, direct } => format!(
                "open-unlink-read {}{}{}",
                show(path),
                write.map(|(o, l, s)| format!(" write off {o} len {l} (data seed {s})")).unwrap_or_default(),
                if *direct { " (O_DIRECT on o2fs)" } else { "" }
            ),
            Op::Utimens { path, atime, mtime } => {
                format!("utimensat {} atime {}.{:09} mtime {}.{:09}", show(path), atime.0, atime.1, mtime.0, mtime.1)
            }
            Op::Readdir { path } => format!("readdir {}", show(path)),
            Op::Stat { path } => format!("lstat {}", show(path)),
            Op::Hold { slot, path, direct } => {
                format!("hold #{slot} = open {} O_RDWR{}", show(path), if *direct { " (O_DIRECT on o2fs)" } else { "" })
            }
            Op::HeldWrite { slot, off, len, seed } => {
                format!("held #{slot}: pwrite off {off} len {len} (data seed {seed})")
            }
            Op::HeldRead { slot, off, len } => format!("held #{slot}: pread off {off} len {len}"),
            Op::HeldTruncate { slot, size } => format!("held #{slot}: ftruncate {size}"),
            Op::HeldStat { slot } => format!("held #{slot}: fstat"),
            Op::HeldClose { slot } => format!("held #{slot}: close"),
            Op::BulkCreate { dir, names } => format!("bulk-create in {} of long names {names:?}", show(dir)),
            Op::BulkUnlink { dir } => format!("bulk-unlink of the non-directories in {}", show(dir)),
            Op::Stride { path, start, stride, count, len, seed } => {
                format!(
                    "stride-write {} start {start} stride {stride} count {count} len {len} (data seed {seed}+k)",
                    show(path)
                )
            }
            Op::FarWrite { path, off, len, seed } => {
                format!("far-write {} off {off} len {len} (data seed {seed}), read back, ftruncate back", show(path))
            }
            Op::Fallocate { path, mode, off, len } => format!(
                "fallocate {} {} off {off} len {len}",
                show(path),
                match mode {
                    0 => "mode 0",
                    1 => "KEEP_SIZE",
                    _ => "PUNCH_HOLE|KEEP_SIZE",
                }
            ),
        }
    }

    /// Paths whose lstat (and whose parents' lstat) is compared after the operation.
    fn touched(&self) -> Vec<&str> {
        match self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::Symlink { path, .. } => vec![path],
            Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Truncate { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Unlink { path }
            | Op::Chmod { path, .. }
            | Op::OpenUnlinkRead { path, .. }
            | Op::Stride { path, .. }
            | Op::Fallocate { path, .. }
            | Op::FarWrite { path, .. }
            | Op::BulkCreate { dir: path, .. }
            | Op::BulkUnlink { dir: path } => vec![path],
            _ => vec![],
        }
    }
}

fn parent_of(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn depth(p: &str) -> usize {
    if p.is_empty() {
        0
    } else {
        p.split('/').count()
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// The reference tree as seen for choosing operations

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn kind_of(ft: fs::FileType) -> Kind {
    if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    }
}

/// What exists in the reference tree (entries below the root; `dirs` includes the root "").
struct Scan {
    entries: Vec<(String, Kind, u64)>,
    dirs: Vec<String>,
    total: u64,
}

impl Scan {
    fn of(root: &Path) -> Scan {
        let mut s = Scan { entries: Vec::new(), dirs: vec![String::new()], total: 0 };
        let mut todo = vec![String::new()];
        while let Some(d) = todo.pop() {
            let Ok(rd) = fs::read_dir(root.join(&d)) else { continue };
            for e in rd.flatten() {
                let rel = join(&d, &e.file_name().to_string_lossy());
                // mkfs's lost+found stays put (fsck.ocfs2 insists on it); only the tree compares see it.
                if rel == "lost+found" {
                    continue;
                }
                let Ok(md) = e.metadata() else { continue };
                let k = kind_of(md.file_type());
                if k == Kind::Dir {
                    s.dirs.push(rel.clone());
                    todo.push(rel.clone());
                }
                if k == Kind::File {
                    s.total += md.len();
                }
                s.entries.push((rel, k, md.len()));
            }
        }
        s.entries.sort();
        s.dirs.sort();
        s
    }

    fn kind(&self, p: &str) -> Option<Kind> {
        if p.is_empty() {
            return Some(Kind::Dir);
        }
        self.entries.iter().find(|e| e.0 == p).map(|e| e.1)
    }

    fn size(&self, p: &str) -> u64 {
        self.entries.iter().find(|e| e.0 == p).map(|e| e.2).unwrap_or(0)
    }

    /// Levels below directory `p` (0 for an empty directory).
    fn height(&self, p: &str) -> usize {
        let pre = format!("{p}/");
        self.entries.iter().filter(|e| e.0.starts_with(&pre)).map(|e| depth(&e.0) - depth(p)).max().unwrap_or(0)
    }

    fn name(rng: &mut Rng) -> String {
        if rng.chance(78) {
            rng.pick(&SHORT_NAMES).to_string()
        } else {
            long_name(rng.below(LONG_NAMES as u64) as usize)
        }
    }

    /// A directory to create in: mostly an existing one of depth < MAX_DEPTH, sometimes a random
    /// chain of pool names (which may not exist, or not be a directory).
    fn parent(&self, rng: &mut Rng) -> String {
        if rng.chance(92) {
            let ok: Vec<&String> = self.dirs.iter().filter(|d| depth(d) < MAX_DEPTH).collect();
            return ok[rng.below(ok.len() as u64) as usize].clone();
        }
        let n = rng.range(1, MAX_DEPTH as u64 - 1);
        (0..n).map(|_| Self::name(rng)).collect::<Vec<_>>().join("/")
    }

    fn new_path(&self, rng: &mut Rng) -> String {
        let p = self.parent(rng);
        join(&p, &Self::name(rng))
    }

    /// An existing entry accepted by `want` most of the time, else any path.
    fn existing(&self, rng: &mut Rng, want: impl Fn(Kind) -> bool) -> String {
        if rng.chance(88) {
            let ok: Vec<&String> = self.entries.iter().filter(|e| want(e.1)).map(|e| &e.0).collect();
            if !ok.is_empty() {
                return ok[rng.below(ok.len() as u64) as usize].clone();
            }
        }
        if rng.chance(50) && !self.entries.is_empty() {
            return rng.pick(&self.entries).0.clone();
        }
        self.new_path(rng)
    }
}

fn mode_for(rng: &mut Rng, dir: bool) -> u32 {
    match rng.below(10) {
        0 => 0o700,
        1 => 0o777,
        2 => 0o000,
        3 => 0o1777,
        4 => 0o2775,
        5 => rng.below(0o10000) as u32,
        _ if dir => 0o755,
        _ => 0o644,
    }
}

/// An offset and length for a write into a file of `size` bytes.
fn write_extent(rng: &mut Rng, size: u64, big_ok: bool) -> (u64, usize) {
    let class = rng.below(100);
    let (mut off, mut len) = if class < 30 || (!big_ok && class >= 70) {
        // Tiny: stays inline while the file is small.
        (rng.below(300), rng.range(1, 64))
    } else if class < 70 {
        (rng.below(size.max(4 * KIB) + 8 * KIB), rng.range(1, 40 * KIB))
    } else if class < 82 {
        (rng.below(2 * MIB), rng.range(64 * KIB, MIB))
    } else {
        // Past EOF: a hole before the new data.
        (size + rng.range(1, 4 * MIB), rng.range(1, 12 * KIB))
    };
    if rng.chance(25) {
        off &= !(4 * KIB - 1);
    }
    if rng.chance(20) && len >= 4 * KIB {
        len &= !(4 * KIB - 1);
    }
    (off, len as usize)
}

/// Times before 1970 are generated too (o2fs stores them as signed seconds, like kernel OCFS2).
const NEGATIVE_TIMES: bool = true;

fn time_value(rng: &mut Rng) -> (i64, i64) {
    let sec = match rng.below(5) {
        0 => rng.below(100) as i64,
        // Within ext4's range (it clamps before 1901), so the host answers exactly.
        4 if NEGATIVE_TIMES => -(rng.range(1, (1 << 31) - 1) as i64),
        1 => 1_700_000_000 + rng.below(100_000_000) as i64,
        _ => rng.below(1 << 33) as i64,
    };
    let nsec = match rng.below(4) {
        0 => 0,
        1 => 999_999_999,
        _ => rng.below(1_000_000_000) as i64,
    };
    (sec, nsec)
}

fn symlink_target(rng: &mut Rng) -> String {
    let len = match rng.below(10) {
        0..=4 => rng.range(1, 60),
        5 => rng.range(100, 1000),
        6..=8 => rng.range(1900, 2100),
        _ => rng.range(3000, 4000),
    } as usize;
    // NOWHERE/… never resolves, so following such a link fails alike on both sides.
    let mut t = format!("{NOWHERE}/");
    let mut comp = 0;
    while t.len() < len {
        let c = if comp >= 200 {
            comp = 0;
            b'/'
        } else {
            comp += 1;
            b"abcdefghijklmnopqrstuvwxyz0123456789._-"[rng.below(39) as usize]
        };
        t.push(c as char);
    }
    t.truncate(len.max(NOWHERE.len() + 1));
    if t.ends_with('/') {
        t.push('x');
    }
    t
}

/// The number of descriptors held across operations.
const HELD: usize = 2;

fn gen_op(rng: &mut Rng, s: &Scan, held: [bool; HELD]) -> Op {
    let is_file = |k: Kind| k == Kind::File;
    let is_dir = |k: Kind| k == Kind::Dir;
    loop {
        let roll = rng.below(1160);
        let slot = rng.below(HELD as u64) as usize;
        if (1020..1090).contains(&roll) && !held[slot] {
            continue;
        }
        let op = match roll {
            0..=89 => Op::Create {
                path: s.new_path(rng),
                mode: mode_for(rng, false),
                excl: rng.chance(60),
                trunc: rng.chance(30),
            },
            90..=229 => {
                let path = s.existing(rng, is_file);
                let (off, len) = write_extent(rng, s.size(&path), s.total < DATA_BUDGET);
                Op::Write { path, off, len, seed: rng.next() }
            }
            230..=279 => {
                let path = s.existing(rng, is_file);
                let len = if rng.chance(70) { rng.range(1, 200) } else { rng.range(1, 64 * KIB) } as usize;
                Op::Append { path, len, seed: rng.next() }
            }
            280..=369 => {
                let path = s.existing(rng, is_file);
                let size = s.size(&path);
                let off = if rng.chance(85) { rng.below(size + 1) } else { size + rng.below(8 * KIB) };
                let len = if rng.chance(50) { rng.range(1, 4 * KIB) } else { rng.range(1, 600 * KIB) } as usize;
                Op::Read { path, off, len, direct: rng.chance(50) }
            }
            370..=429 => {
                let path = s.existing(rng, is_file);
                let size = s.size(&path);
                let size = match rng.below(10) {
                    0..=2 => rng.below(201),
                    3..=5 => rng.below(size + 1),
                    6 if s.total < DATA_BUDGET => size + rng.range(1, 3 * MIB),
                    7 => rng.below(64) * 4 * KIB,
                    8 => size,
                    _ => rng.below(size + 64 * KIB),
                };
                Op::Truncate { path, size }
            }
            430..=489 => Op::Mkdir { path: s.new_path(rng), mode: mode_for(rng, true) },
            490..=539 => Op::Rmdir { path: s.existing(rng, is_dir) },
            540..=609 => Op::Unlink { path: s.existing(rng, |k| k != Kind::Dir) },
            610..=709 => {
                let from = s.existing(rng, |_| true);
                let flags = match rng.below(10) {
                    0 => 1,
                    1 => 2,
                    _ => 0,
                };
                let to = match rng.below(100) {
                    // Into itself (EINVAL when `from` is a directory).
                    0..=11 if s.kind(&from) == Some(Kind::Dir) => {
                        let below: Vec<&String> =
                            s.dirs.iter().filter(|d| d.starts_with(&format!("{from}/"))).collect();
                        let base =
                            if below.is_empty() || rng.chance(40) { from.clone() } else { (*rng.pick(&below)).clone() };
                        join(&base, &Scan::name(rng))
                    }
                    0..=49 => s.existing(rng, |_| true),
                    _ => s.new_path(rng),
                };
                // Keep the tree within MAX_DEPTH (a move into itself fails anyway).
                let into_itself = to.starts_with(&format!("{from}/")) || from.starts_with(&format!("{to}/"));
                let too_deep = |a: &str, b: &str| s.kind(a) == Some(Kind::Dir) && depth(b) + s.height(a) > MAX_DEPTH;
                if !into_itself && (too_deep(&from, &to) || (flags == 2 && too_deep(&to, &from))) {
                    continue;
                }
                if !into_itself && depth(&to) > MAX_DEPTH {
                    continue;
                }
                Op::Rename { from, to, flags }
            }
            710..=749 => Op::Link { from: s.existing(rng, |k| k != Kind::Dir), to: s.new_path(rng) },
            750..=789 => Op::Symlink { target: symlink_target(rng), path: s.new_path(rng) },
            790..=809 => Op::Readlink { path: s.existing(rng, |k| k == Kind::Symlink) },
            810..=839 => Op::Chmod { path: s.existing(rng, |k| k != Kind::Symlink), mode: rng.below(0o10000) as u32 },
            840..=859 => Op::Fsync { path: s.existing(rng, |k| k != Kind::Symlink) },
            860..=884 => {
                let path = s.existing(rng, is_file);
                let write = rng.chance(50).then(|| {
                    let (o, l) = write_extent(rng, s.size(&path), false);
                    (o, l, rng.next())
                });
                Op::OpenUnlinkRead { path, write, direct: rng.chance(50) }
            }
            885..=924 => {
                Op::Utimens {
                    path: s.existing(rng, |_| true),
                    // (-1, -1): UTIME_OMIT.
                    atime: if rng.chance(20) { (-1, -1) } else { time_value(rng) },
                    mtime: time_value(rng),
                }
            }
            925..=964 => {
                Op::Readdir { path: if rng.chance(90) { rng.pick(&s.dirs).clone() } else { s.existing(rng, |_| true) } }
            }
            965..=999 => Op::Stat { path: s.existing(rng, |_| true) },
            1000..=1019 => Op::Hold { slot, path: s.existing(rng, |k| k == Kind::File), direct: rng.chance(40) },
            1020..=1039 => {
                let (off, len) = write_extent(rng, 0, false);
                Op::HeldWrite { slot, off, len, seed: rng.next() }
            }
            1040..=1054 => Op::HeldRead { slot, off: rng.below(256 * KIB), len: rng.range(1, 128 * KIB) as usize },
            1055..=1064 => Op::HeldTruncate { slot, size: rng.below(300 * KIB) },
            1065..=1074 => Op::HeldStat { slot },
            1075..=1089 => Op::HeldClose { slot },
            1090..=1104 => {
                let dir = if rng.chance(90) { s.parent(rng) } else { s.new_path(rng) };
                let mut names: Vec<usize> = (0..LONG_NAMES).collect();
                for i in (1..names.len()).rev() {
                    names.swap(i, rng.below(i as u64 + 1) as usize);
                }
                names.truncate(rng.range(10, 40) as usize);
                Op::BulkCreate { dir, names }
            }
            1105..=1114 => {
                Op::BulkUnlink { dir: if rng.chance(90) { rng.pick(&s.dirs).clone() } else { s.new_path(rng) } }
            }
            1115..=1129 => {
                let path = s.existing(rng, is_file);
                let start = rng.below(s.size(&path) + MIB);
                let stride = rng.range(2, 3) * 4 * KIB + rng.below(2) * rng.below(4 * KIB);
                let count = if s.total < DATA_BUDGET { rng.range(20, 300) } else { rng.range(5, 40) };
                Op::Stride { path, start, stride, count, len: rng.range(1, 4 * KIB) as usize, seed: rng.next() }
            }
            1150..=1159 => Op::FarWrite {
                path: s.existing(rng, is_file),
                off: rng.range(4 << 30, 2 << 40),
                len: rng.range(1, 9000) as usize,
                seed: rng.next(),
            },
            _ => {
                let path = s.existing(rng, is_file);
                let size = s.size(&path);
                let mut mode = rng.below(3) as u32;
                // o2fs refuses (EOPNOTSUPP, file.rs file_fallocate) KEEP_SIZE past the cluster
                // holding i_size: fsck.ocfs2 forbids clusters wholly beyond i_size on sparse
                // volumes. Both geometries here have 4K clusters.
                let keep_limit = size.div_ceil(4 * KIB) * 4 * KIB;
                if mode == 1 && keep_limit == 0 {
                    mode = 2;
                }
                let (off, len) = if mode == 1 {
                    let off = rng.below(keep_limit);
                    (off, rng.range(1, keep_limit - off))
                } else {
                    let off = if rng.chance(70) { rng.below(size + 1) } else { size + rng.below(MIB) };
                    (off, rng.range(1, if mode == 2 || s.total < DATA_BUDGET { 2 * MIB } else { 64 * KIB }))
                };
                Op::Fallocate { path, mode, off, len }
            }
        };
        return op;
    }
}

// ---------------------------------------------------------------------------------------------
// Applying an operation to one side

#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta {
    kind: Kind,
    perm: u32,
    nlink: u64,
    /// None for directories (their sizes legitimately differ).
    size: Option<u64>,
}

fn meta_of(md: &fs::Metadata) -> Meta {
    let kind = kind_of(md.file_type());
    Meta { kind, perm: md.mode() & 0o7777, nlink: md.nlink(), size: (kind != Kind::Dir).then_some(md.len()) }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Done,
    Data(Vec<u8>),
    Names(BTreeSet<(String, Kind)>),
    Meta(Meta),
    Mtime(i64, i64),
    Orphan {
        nlink: u64,
        data: Vec<u8>,
    },
    /// A size and bytes read.
    Sized(u64, Vec<u8>),
    /// One errno (0: success) per step of a bulk operation.
    Errnos(Vec<i32>),
}

type Res = Result<Out, i32>;

/// One side's answer: the operation's result and the lstat of the paths it touched (and their
/// parents).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    res: Res,
    after: Vec<(String, Result<Meta, i32>)>,
}

fn en(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn nix_en(e: nix::errno::Errno) -> i32 {
    e as i32
}

fn read_all(f: &File) -> Result<Vec<u8>, i32> {
    let len = f.metadata().map_err(en)?.len() as usize;
    let mut buf = vec![0u8; len + 4096];
    let mut got = 0;
    loop {
        if got == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(en(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Sets O_DIRECT on an open descriptor (reads and writes then reach the daemon, not the page cache).
fn set_direct(f: &File) -> Result<(), i32> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let fl = OFlag::from_bits_truncate(fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).map_err(nix_en)?);
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_DIRECT)).map_err(nix_en)?;
    Ok(())
}

fn read_range(f: &File, off: u64, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(en(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn apply(root: &Path, op: &Op, on_o2fs: bool, held: &mut [Option<File>; HELD]) -> Answer {
    let p = |rel: &str| root.join(rel);
    // O_DIRECT goes on only once the descriptor is open on a regular file: open(O_DIRECT) of a
    // directory fails with EINVAL on FUSE where the host fails the read with EISDIR.
    let direct_io = |f: File, direct: bool| -> Result<File, i32> {
        if direct && on_o2fs && f.metadata().map_err(en)?.is_file() {
            set_direct(&f)?;
        }
        Ok(f)
    };
    let res: Res = (|| match op {
        Op::Create { path, mode, excl, trunc } => {
            let mut o = OpenOptions::new();
            o.write(true).mode(*mode).truncate(*trunc);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true);
            }
            o.open(p(path)).map_err(en)?;
            Ok(Out::Done)
        }
        Op::Write { path, off, len, seed } => {
            let f = OpenOptions::new().write(true).open(p(path)).map_err(en)?;
            f.write_all_at(&gen_data(*seed, *len), *off).map_err(en)?;
            Ok(Out::Done)
        }
        Op::Append { path, len, seed } => {
            let mut f = OpenOptions::new().append(true).open(p(path)).map_err(en)?;
            f.write_all(&gen_data(*seed, *len)).map_err(en)?;
            Ok(Out::Done)
        }
        Op::Read { path, off, len, direct } => {
            let f = direct_io(File::open(p(path)).map_err(en)?, *direct)?;
            Ok(Out::Data(read_range(&f, *off, *len)?))
        }
        Op::Truncate { path, size } => {
            nix::unistd::truncate(&p(path), *size as i64).map_err(nix_en)?;
            Ok(Out::Done)
        }
        Op::Mkdir { path, mode } => {
            fs::DirBuilder::new().mode(*mode).create(p(path)).map_err(en)?;
            Ok(Out::Done)
        }
        Op::Rmdir { path } => fs::remove_dir(p(path)).map(|_| Out::Done).map_err(en),
        Op::Unlink { path } => fs::remove_file(p(path)).map(|_| Out::Done).map_err(en),
        Op::Rename { from, to, flags } => {
            if *flags == 0 {
                fs::rename(p(from), p(to)).map_err(en)?;
            } else {
                let f = if *flags == 1 {
                    nix::fcntl::RenameFlags::RENAME_NOREPLACE
                } else {
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE
                };
                nix::fcntl::renameat2(None, &p(from), None, &p(to), f).map_err(nix_en)?;
            }
            Ok(Out::Done)
        }
        Op::Link { from, to } => fs::hard_link(p(from), p(to)).map(|_| Out::Done).map_err(en),
        Op::Symlink { target, path } => {
            std::os::unix::fs::symlink(target, p(path)).map_err(en)?;
            // Read it straight back.
            let t = fs::read_link(p(path)).map_err(en)?;
            Ok(Out::Data(t.into_os_string().into_encoded_bytes()))
        }
        Op::Readlink { path } => {
            fs::read_link(p(path)).map(|t| Out::Data(t.into_os_string().into_encoded_bytes())).map_err(en)
        }
        Op::Chmod { path, mode } => {
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)).map(|_| Out::Done).map_err(en)
        }
        Op::Fsync { path } => {
            let f = File::open(p(path)).map_err(en)?;
            f.sync_all().map_err(en)?;
            Ok(Out::Done)
        }
        Op::OpenUnlinkRead { path, write, direct } => {
            let f = direct_io(OpenOptions::new().read(true).write(true).open(p(path)).map_err(en)?, *direct)?;
            fs::remove_file(p(path)).map_err(en)?;
            if let Some((off, len, seed)) = write {
                f.write_all_at(&gen_data(*seed, *len), *off).map_err(en)?;
            }
            let nlink = f.metadata().map_err(en)?.nlink();
            let data = read_all(&f)?;
            Ok(Out::Orphan { nlink, data })
        }
        Op::Utimens { path, atime, mtime } => {
            use nix::sys::time::TimeSpec;
            let a = if atime.1 < 0 { TimeSpec::UTIME_OMIT } else { TimeSpec::new(atime.0, atime.1) };
            let m = TimeSpec::new(mtime.0, mtime.1);
            nix::sys::stat::utimensat(None, &p(path), &a, &m, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
                .map_err(nix_en)?;
            let md = fs::symlink_metadata(p(path)).map_err(en)?;
            Ok(Out::Mtime(md.mtime(), md.mtime_nsec()))
        }
        Op::Readdir { path } => {
            let mut names = BTreeSet::new();
            for e in fs::read_dir(p(path)).map_err(en)? {
                let e = e.map_err(en)?;
                names.insert((e.file_name().to_string_lossy().into_owned(), kind_of(e.file_type().map_err(en)?)));
            }
            Ok(Out::Names(names))
        }
        Op::Stat { path } => fs::symlink_metadata(p(path)).map(|m| Out::Meta(meta_of(&m))).map_err(en),
        Op::Hold { slot, path, direct } => {
            held[*slot] = None;
            let f = direct_io(OpenOptions::new().read(true).write(true).open(p(path)).map_err(en)?, *direct)?;
            held[*slot] = Some(f);
            Ok(Out::Done)
        }
        // Generated only for occupied slots; both sides hold alike or a step has failed already.
        Op::HeldWrite { slot, off, len, seed } => {
            let f = held[*slot].as_ref().ok_or(-2)?;
            f.write_all_at(&gen_data(*seed, *len), *off).map_err(en)?;
            Ok(Out::Done)
        }
        Op::HeldRead { slot, off, len } => Ok(Out::Data(read_range(held[*slot].as_ref().ok_or(-2)?, *off, *len)?)),
        Op::HeldTruncate { slot, size } => {
            held[*slot].as_ref().ok_or(-2)?.set_len(*size).map_err(en)?;
            Ok(Out::Done)
        }
        Op::HeldStat { slot } => held[*slot].as_ref().ok_or(-2)?.metadata().map(|m| Out::Meta(meta_of(&m))).map_err(en),
        Op::HeldClose { slot } => {
            held[*slot].take().ok_or(-2)?;
            Ok(Out::Done)
        }
        Op::BulkCreate { dir, names } => {
            let mut errs = Vec::new();
            for &i in names {
                let r = OpenOptions::new().write(true).create_new(true).mode(0o644).open(p(&join(dir, &long_name(i))));
                errs.push(r.err().map(en).unwrap_or(0));
            }
            Ok(Out::Errnos(errs))
        }
        Op::BulkUnlink { dir } => {
            let mut gone = BTreeSet::new();
            for e in fs::read_dir(p(dir)).map_err(en)? {
                let e = e.map_err(en)?;
                let k = kind_of(e.file_type().map_err(en)?);
                if k != Kind::Dir {
                    let name = e.file_name().to_string_lossy().into_owned();
                    fs::remove_file(p(&join(dir, &name))).map_err(en)?;
                    gone.insert((name, k));
                }
            }
            Ok(Out::Names(gone))
        }
        Op::Stride { path, start, stride, count, len, seed } => {
            let f = OpenOptions::new().write(true).open(p(path)).map_err(en)?;
            for k in 0..*count {
                f.write_all_at(&gen_data(seed.wrapping_add(k), *len), start + k * stride).map_err(en)?;
            }
            Ok(Out::Done)
        }
        Op::FarWrite { path, off, len, seed } => {
            let f = direct_io(OpenOptions::new().read(true).write(true).open(p(path)).map_err(en)?, true)?;
            let size = f.metadata().map_err(en)?.len();
            f.write_all_at(&gen_data(*seed, *len), *off).map_err(en)?;
            let grown = f.metadata().map_err(en)?.len();
            let back = read_range(&f, off - 7, len + 14)?;
            f.set_len(size).map_err(en)?;
            Ok(Out::Sized(grown, back))
        }
        Op::Fallocate { path, mode, off, len } => {
            use nix::fcntl::FallocateFlags as F;
            use std::os::fd::AsRawFd;
            let f = OpenOptions::new().write(true).open(p(path)).map_err(en)?;
            let flags = match mode {
                0 => F::empty(),
                1 => F::FALLOC_FL_KEEP_SIZE,
                _ => F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
            };
            nix::fcntl::fallocate(f.as_raw_fd(), flags, *off as i64, *len as i64).map_err(nix_en)?;
            Ok(Out::Done)
        }
    })();
    let mut after = Vec::new();
    let mut seen = BTreeSet::new();
    for t in op.touched() {
        for q in [t, parent_of(t)] {
            if seen.insert(q) {
                after.push((q.to_string(), fs::symlink_metadata(p(q)).map(|m| meta_of(&m)).map_err(en)));
            }
        }
    }
    Answer { res, after }
}

// ---------------------------------------------------------------------------------------------
// Whole-tree snapshots

#[derive(Debug, PartialEq, Eq)]
struct Node {
    meta: Meta,
    /// readdir's d_type.
    dtype: Kind,
    data: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
}

struct Snapshot {
    nodes: BTreeMap<String, Node>,
    /// Names sharing one inode (only groups of two or more), sorted.
    links: BTreeSet<Vec<String>>,
    /// mtime and ctime (seconds, nanoseconds) of every entry: o2fs's must survive a remount.
    times: BTreeMap<String, [i64; 4]>,
}

fn snapshot(root: &Path, on_o2fs: bool) -> Result<Snapshot, String> {
    let mut nodes = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut times = BTreeMap::new();
    let mut todo = vec![String::new()];
    // The root's own attributes.
    let md = fs::symlink_metadata(root).map_err(|e| format!("lstat root: {e}"))?;
    nodes.insert(String::new(), Node { meta: meta_of(&md), dtype: Kind::Dir, data: None, target: None });
    while let Some(d) = todo.pop() {
        let rd = fs::read_dir(root.join(&d)).map_err(|e| format!("readdir {}: {e}", show(&d)))?;
        for e in rd {
            let e = e.map_err(|e| format!("readdir {}: {e}", show(&d)))?;
            let rel = join(&d, &e.file_name().to_string_lossy());
            let full = root.join(&rel);
            let dtype = kind_of(e.file_type().map_err(|e| format!("d_type {}: {e}", show(&rel)))?);
            let md = fs::symlink_metadata(&full).map_err(|e| format!("lstat {}: {e}", show(&rel)))?;
            let meta = meta_of(&md);
            let (mut data, mut target) = (None, None);
            match meta.kind {
                Kind::Dir => todo.push(rel.clone()),
                Kind::File => {
                    let f = File::open(&full).map_err(|e| format!("open {}: {e}", show(&rel)))?;
                    if on_o2fs {
                        set_direct(&f).map_err(|e| format!("O_DIRECT on {}: errno {e}", show(&rel)))?;
                    }
                    data = Some(read_all(&f).map_err(|e| format!("read {}: errno {e}", show(&rel)))?);
                }
                Kind::Symlink => {
                    target = Some(
                        fs::read_link(&full)
                            .map_err(|e| format!("readlink {}: {e}", show(&rel)))?
                            .into_os_string()
                            .into_encoded_bytes(),
                    );
                }
                Kind::Other => {}
            }
            if meta.kind != Kind::Dir {
                by_ino.entry(md.ino()).or_default().push(rel.clone());
            }
            times.insert(rel.clone(), [md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec()]);
            nodes.insert(rel, Node { meta, dtype, data, target });
        }
    }
    let links = by_ino
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Ok(Snapshot { nodes, links, times })
}

/// Where two byte strings first differ, for messages.
fn data_diff(a: &[u8], b: &[u8]) -> String {
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    match first {
        Some(i) => {
            let end = |v: &[u8]| (i + 16).min(v.len());
            format!(
                "lengths o2fs {} host {}; first difference at byte {i}: o2fs {:02x?} host {:02x?}",
                a.len(),
                b.len(),
                &a[i..end(a)],
                &b[i..end(b)]
            )
        }
        None => format!("lengths o2fs {} host {} (equal up to the shorter)", a.len(), b.len()),
    }
}

/// The first differences between the o2fs tree and the reference tree ("" when equal).
fn tree_diff(o: &Snapshot, h: &Snapshot) -> String {
    let mut out = String::new();
    let keys: BTreeSet<&String> = o.nodes.keys().chain(h.nodes.keys()).collect();
    for k in keys {
        match (o.nodes.get(k), h.nodes.get(k)) {
            (None, Some(n)) => writeln!(out, "  {}: missing on o2fs (host: {:?})", show(k), n.meta).unwrap(),
            (Some(n), None) => writeln!(out, "  {}: only on o2fs ({:?})", show(k), n.meta).unwrap(),
            (Some(a), Some(b)) if a != b => {
                if a.meta != b.meta {
                    writeln!(out, "  {}: o2fs {:?}, host {:?}", show(k), a.meta, b.meta).unwrap();
                }
                if a.dtype != b.dtype || a.dtype != a.meta.kind {
                    writeln!(
                        out,
                        "  {}: d_type o2fs {:?} host {:?} (lstat on o2fs: {:?})",
                        show(k),
                        a.dtype,
                        b.dtype,
                        a.meta.kind
                    )
                    .unwrap();
                }
                if a.data != b.data {
                    let (x, y) = (a.data.as_deref().unwrap_or(&[]), b.data.as_deref().unwrap_or(&[]));
                    writeln!(out, "  {}: contents differ: {}", show(k), data_diff(x, y)).unwrap();
                }
                if a.target != b.target {
                    let s = |t: &Option<Vec<u8>>| {
                        t.as_ref().map(|t| String::from_utf8_lossy(&t[..t.len().min(40)]).into_owned())
                    };
                    let l = |t: &Option<Vec<u8>>| t.as_ref().map(|t| t.len());
                    writeln!(
                        out,
                        "  {}: symlink target o2fs {:?} ({:?}B), host {:?} ({:?}B)",
                        show(k),
                        s(&a.target),
                        l(&a.target),
                        s(&b.target),
                        l(&b.target)
                    )
                    .unwrap();
                }
            }
            _ => {}
        }
        if out.lines().count() > 20 {
            out.push_str("  …\n");
            return out;
        }
    }
    if o.links != h.links {
        let f = |s: &BTreeSet<Vec<String>>| {
            s.iter().map(|g| g.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = ")).collect::<Vec<_>>()
        };
        writeln!(out, "  hard-link groups differ:\n    o2fs {:?}\n    host {:?}", f(&o.links), f(&h.links)).unwrap();
    }
    out
}

fn describe_res(r: &Res) -> String {
    match r {
        Err(e) => format!("Err({})", nix::errno::Errno::from_raw(*e)),
        Ok(Out::Data(d)) => format!("Ok({} bytes)", d.len()),
        Ok(Out::Sized(size, d)) => format!("Ok(size {size}, {} bytes)", d.len()),
        Ok(Out::Orphan { nlink, data }) => format!("Ok(nlink {nlink}, {} bytes)", data.len()),
        Ok(Out::Names(n)) => {
            format!("Ok({:?})", n.iter().map(|(a, k)| format!("{}:{k:?}", show(a))).collect::<Vec<_>>())
        }
        Ok(o) => format!("Ok({o:?})"),
    }
}

fn answer_diff(o: &Answer, h: &Answer) -> String {
    let mut out = String::new();
    if o.res != h.res {
        writeln!(out, "  result: o2fs {}, host {}", describe_res(&o.res), describe_res(&h.res)).unwrap();
        match (&o.res, &h.res) {
            (Ok(Out::Data(a)), Ok(Out::Data(b)))
            | (Ok(Out::Orphan { data: a, .. }), Ok(Out::Orphan { data: b, .. }))
            | (Ok(Out::Sized(_, a)), Ok(Out::Sized(_, b))) => {
                writeln!(out, "  data: {}", data_diff(a, b)).unwrap();
            }
            (Ok(Out::Names(a)), Ok(Out::Names(b))) => {
                let only = |x: &BTreeSet<(String, Kind)>, y: &BTreeSet<(String, Kind)>| {
                    x.difference(y).map(|(n, k)| format!("{}:{k:?}", show(n))).collect::<Vec<_>>()
                };
                writeln!(out, "  only on o2fs {:?}; only on host {:?}", only(a, b), only(b, a)).unwrap();
            }
            _ => {}
        }
    }
    for ((p, a), (_, b)) in o.after.iter().zip(&h.after) {
        if a != b {
            let f = |m: &Result<Meta, i32>| match m {
                Ok(m) => format!("{m:?}"),
                Err(e) => format!("Err({})", nix::errno::Errno::from_raw(*e)),
            };
            writeln!(out, "  afterwards lstat {}: o2fs {}, host {}", show(p), f(a), f(b)).unwrap();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// One seed's run

struct Run {
    label: String,
    seed: u64,
    img: PathBuf,
    mnt: PathBuf,
    refd: PathBuf,
    mount: Option<Mount>,
    /// Descriptors kept across operations: on o2fs, on the host.
    held_o: [Option<File>; HELD],
    held_h: [Option<File>; HELD],
    history: VecDeque<String>,
    tmp: Option<tempfile::TempDir>,
}

impl Drop for Run {
    fn drop(&mut self) {
        // Close, unmount (and reap the daemon) before the tempdir goes.
        self.close_held();
        drop(self.mount.take());
        if std::env::var_os("O2FS_KEEP").is_some() {
            if let Some(t) = self.tmp.take() {
                eprintln!("O2FS_KEEP: kept {}", t.keep().display());
            }
        }
    }
}

impl Run {
    fn fail(&self, what: &str, detail: &str) -> ! {
        let log = self.mount.as_ref().map(|m| m.stderr()).unwrap_or_default();
        let log: Vec<&str> = log.lines().collect();
        let tail = log[log.len().saturating_sub(15)..].join("\n");
        let test = if self.label.starts_with("1K") { "model_1k_blocks" } else { "model_4k_blocks" };
        panic!(
            "MODEL MISMATCH ({}), seed {:#x}: {what}\n{detail}\nreproduce: O2FS_SEED={:#x} cargo test --test model {test}\n\
             last operations (o2fs result):\n{}\no2fs daemon log (tail):\n{tail}",
            self.label,
            self.seed,
            self.seed,
            self.history.iter().cloned().collect::<Vec<_>>().join("\n")
        );
    }

    fn close_held(&mut self) {
        self.held_o = Default::default();
        self.held_h = Default::default();
    }

    fn mount(&mut self) {
        self.mount = Some(Mount::new(&self.img, &self.mnt, ""));
    }

    fn unmount(&mut self, when: &str) {
        self.close_held();
        if let Some(mut m) = self.mount.take() {
            if let Err(e) = m.unmount() {
                self.mount = Some(m);
                self.fail(&format!("unmount {when}"), &e);
            }
        }
    }

    /// Compares the whole trees; returns o2fs's timestamps.
    fn compare_trees(&self, when: &str) -> BTreeMap<String, [i64; 4]> {
        let o = snapshot(&self.mnt, true).unwrap_or_else(|e| self.fail(&format!("tree walk on o2fs {when}"), &e));
        let h = snapshot(&self.refd, false).unwrap_or_else(|e| self.fail(&format!("tree walk on host {when}"), &e));
        let d = tree_diff(&o, &h);
        if !d.is_empty() {
            self.fail(&format!("trees differ {when}"), &d);
        }
        o.times
    }

    /// Unmounts, mounts again, compares the trees, and checks that o2fs's mtimes and ctimes
    /// came back from disk as they were.
    fn remount_and_compare(&mut self, when: &str) {
        let before = self.compare_trees(&format!("before the remount {when}"));
        self.unmount(when);
        self.mount();
        let after = self.compare_trees(&format!("after the remount {when}"));
        if before != after {
            let mut d = String::new();
            for (k, b) in &before {
                if after.get(k) != Some(b) {
                    writeln!(d, "  {}: before [mtime s, ns, ctime s, ns] {b:?}, after {:?}", show(k), after.get(k))
                        .unwrap();
                }
            }
            self.fail(&format!("timestamps changed across the remount {when}"), &d);
        }
    }

    /// Applies `op` to both sides; true when it succeeded.
    fn step(&mut self, i: usize, op: &Op) -> bool {
        let o = apply(&self.mnt, op, true, &mut self.held_o);
        let h = apply(&self.refd, op, false, &mut self.held_h);
        self.history.push_back(format!("  #{i}: {} => {}", op.describe(), describe_res(&o.res)));
        if self.history.len() > 25 {
            self.history.pop_front();
        }
        if o != h {
            self.fail(&format!("op #{i}: {}", op.describe()), &answer_diff(&o, &h));
        }
        o.res.is_ok()
    }
}

fn run_geometry(bs: &str, cs: &str, seeds: &[u64]) {
    let seeds: Vec<u64> = match std::env::var("O2FS_SEED") {
        Ok(s) => vec![parse_seed(&s)],
        Err(_) => seeds.to_vec(),
    };
    let ops = std::env::var("O2FS_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_OPS);
    let fsck_ocfs2 = have_ocfs2_tools();
    for seed in seeds {
        let label = format!("{bs} blocks, {cs} clusters");
        eprintln!("model ({label}): seed {seed:#x}, {ops} operations (O2FS_SEED={seed:#x} to replay)");
        let started = Instant::now();
        let tmp = tempfile::Builder::new().prefix("o2fs-model-").tempdir().expect("tempdir");
        let img = tmp.path().join("vol.img");
        let out = run(Command::new(bin("mkfs.o2fs"))
            .args(["-q", "-M", "local", "-b", bs, "-C", cs, "--size", "512M"])
            .arg(&img));
        assert!(out.status.success(), "mkfs.o2fs -b {bs} -C {cs}: {}", text(&out));
        let (mnt, refd) = (tmp.path().join("mnt"), tmp.path().join("ref"));
        fs::create_dir(&mnt).unwrap();
        fs::create_dir(&refd).unwrap();
        let mut r = Run {
            label,
            seed,
            img: img.clone(),
            mnt,
            refd,
            mount: None,
            held_o: Default::default(),
            held_h: Default::default(),
            history: VecDeque::new(),
            tmp: Some(tmp),
        };
        r.mount();
        // The reference root must look like the mount's before the first step: mkfs makes
        // lost+found, an ordinary directory as far as this test is concerned.
        let root_mode = fs::metadata(&r.mnt).unwrap().mode() & 0o7777;
        fs::set_permissions(&r.refd, fs::Permissions::from_mode(root_mode)).unwrap();
        for e in fs::read_dir(&r.mnt).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            assert!(md.is_dir(), "a fresh volume holds only directories: {:?}", e.file_name());
            let d = r.refd.join(e.file_name());
            fs::create_dir(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
        }
        r.compare_trees("before the first operation");
        let mut rng = Rng::new(seed);
        // Per kind of operation: how many succeeded, how many failed (alike on both sides).
        let mut counts: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for i in 0..ops {
            let scan = Scan::of(&r.refd);
            let op = gen_op(&mut rng, &scan, [r.held_h[0].is_some(), r.held_h[1].is_some()]);
            let ok = r.step(i, &op);
            let c = counts.entry(op_kind(&op)).or_default();
            if ok {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
            if (i + 1) % CHECK_EVERY == 0 {
                r.compare_trees(&format!("after op #{i}"));
            }
            if (i + 1) % REMOUNT_EVERY == 0 && i + 1 < ops {
                r.remount_and_compare(&format!("after op #{i}"));
            }
        }
        let scan = Scan::of(&r.refd);
        r.remount_and_compare("at the end");
        r.unmount("after the final remount");
        if fsck_ocfs2 {
            assert_fsck_ocfs2_clean(&img);
        }
        let out = run(Command::new(bin("fsck.o2fs")).arg("-fn").arg(&img));
        assert!(out.status.success(), "fsck.o2fs -fn after seed {seed:#x} ({bs}): {}", text(&out));
        eprintln!(
            "model ({bs}/{cs}) seed {seed:#x}: {ops} operations in {:.1?}; final tree {} entries, {} dirs, {} KiB; (ok, failed) per kind: {counts:?}",
            started.elapsed(),
            scan.entries.len(),
            scan.dirs.len(),
            scan.total / KIB
        );
    }
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Create { .. } => "create",
        Op::Write { .. } => "write",
        Op::Append { .. } => "append",
        Op::Read { .. } => "read",
        Op::Truncate { .. } => "truncate",
        Op::Mkdir { .. } => "mkdir",
        Op::Rmdir { .. } => "rmdir",
        Op::Unlink { .. } => "unlink",
        Op::Rename { .. } => "rename",
        Op::Link { .. } => "link",
        Op::Symlink { .. } => "symlink",
        Op::Readlink { .. } => "readlink",
        Op::Chmod { .. } => "chmod",
        Op::Fsync { .. } => "fsync",
        Op::OpenUnlinkRead { .. } => "open-unlink-read",
        Op::Utimens { .. } => "utimensat",
        Op::Readdir { .. } => "readdir",
        Op::Stat { .. } => "lstat",
        Op::Hold { .. } => "hold",
        Op::HeldWrite { .. } => "held-write",
        Op::HeldRead { .. } => "held-read",
        Op::HeldTruncate { .. } => "held-ftruncate",
        Op::HeldStat { .. } => "held-fstat",
        Op::HeldClose { .. } => "held-close",
        Op::BulkCreate { .. } => "bulk-create",
        Op::BulkUnlink { .. } => "bulk-unlink",
        Op::Stride { .. } => "stride-write",
        Op::Fallocate { .. } => "fallocate",
        Op::FarWrite { .. } => "far-write",
    }
}
