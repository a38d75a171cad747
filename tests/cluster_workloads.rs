//! The workloads of issue 6 run by two nodes at once, on one shared image (SAN-style: two daemons
//! on this machine open the same file) and on the mirror (each node on its own replica):
//!
//! - creates: both nodes create files in one directory at once; every name of both is seen on
//!   both nodes, with its contents;
//! - a rename storm: both nodes rename files between two directories and over each other's names
//!   (RENAME_NOREPLACE moves and RENAME_EXCHANGE swaps) at once; afterwards every file is in
//!   exactly one place, with its contents, as seen from both nodes;
//! - a seeded random sequence: each step one node creates, writes at an offset, truncates,
//!   renames, unlinks, makes a directory or changes a mode, and the other node at once checks the
//!   content hashes, sizes, modes and directory listings of what changed;
//! - kill -9 of one node's daemon in the middle of the creates and of the seeded sequence (n1's,
//!   shared image and mirror) and of the rename storm (n0's on the shared image, n1's on the
//!   mirror): the survivor finishes its part, recovers the dead node's slot (the slot map holds
//!   the survivor alone; the dead node's fsynced files are there), and the dead node mounts
//!   again (on the mirror after resyncing its replica) and sees everything the survivor does;
//! - on the mirror, a killed node that mounts again and resyncs from its peer while the peer
//!   unmounts first (the smallest case of a bug the kill during a storm on the mirror found).
//!
//! After every workload both nodes unmount cleanly, `fsck.ocfs2 -fnF` (judged as in tests/common)
//! and `fsck.o2fs -fn` find every image or replica clean, and the mirror's replicas are
//! byte-identical.
//!
//! Environment: `O2FS_CREATES=N` files per node in the creates workloads (default
//! [`DEFAULT_CREATES`], see there for what the 10 000 took); `O2FS_SEED=N` (decimal, 0x…
//! or `random`) replays the random sequence, `O2FS_OPS=N` changes its length.

mod common;

use common::nodes::{read, OnMirror, Shared};
use common::rng::{parse_seed, Rng};
use common::{bin, run, text, Mount};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A node's mount and the directory it is mounted on.
type Node = (Mount, PathBuf);

/// One volume that two nodes mount at once.
enum Volume {
    Shared(Shared),
    Mirror(OnMirror),
}

impl Volume {
    /// Node `i` alone (on the mirror, its peer must be running).
    fn mount(&self, i: usize) -> Node {
        match self {
            Volume::Shared(s) => s.mount(i),
            Volume::Mirror(m) => m.mount(i),
        }
    }

    fn mount_both(&self) -> [Node; 2] {
        match self {
            Volume::Shared(s) => [s.mount(0), s.mount(1)],
            Volume::Mirror(m) => m.mount_both(),
        }
    }

    /// The image node `i` writes to: the shared image, or its own replica.
    fn image_of(&self, i: usize) -> PathBuf {
        match self {
            Volume::Shared(s) => s.image.clone(),
            Volume::Mirror(m) => m.replica(i),
        }
    }

    /// The node numbers in the volume's slot map as node `i` sees it (debugfs.ocfs2 `slotmap`).
    fn nodes_in_slots(&self, i: usize) -> BTreeSet<usize> {
        let out = common::debugfs(&self.image_of(i), "slotmap");
        let rows = out.lines().filter_map(|l| l.split_whitespace().nth(1)?.parse().ok());
        rows.collect()
    }

    /// Unmounts both nodes cleanly (n1 first, both at once: on the mirror a node's replica stays
    /// connected while its peer writes), then judges every image; on the mirror the two replicas
    /// must then be byte-identical.
    fn finish(&self, nodes: [Node; 2]) {
        let [(mut m0, _), (mut m1, _)] = nodes;
        Mount::unmount_all(&mut [&mut m1, &mut m0]).unwrap_or_else(|e| panic!("unmounting: {e}"));
        match self {
            Volume::Shared(s) => judge(&s.image),
            Volume::Mirror(m) => {
                judge(&m.replica(0));
                judge(&m.replica(1));
                assert_eq!(m.sha1(0), m.sha1(1), "the two replicas differ");
            }
        }
    }
}

/// fsck.ocfs2 -fnF and fsck.o2fs -fn both find `img` clean.
fn judge(img: &Path) {
    common::assert_fsck_ocfs2_clean(img);
    let out = run(Command::new(bin("fsck.o2fs")).arg("-fn").arg(img));
    assert!(out.status.success(), "fsck.o2fs -fn {}: {}", img.display(), text(&out));
}

fn names(dir: &Path) -> BTreeSet<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).map(|s| s.parse().unwrap_or_else(|_| panic!("{name}={s}: not a number"))).unwrap_or(default)
}

/// After the victim's daemon was killed: the survivor recovers the victim's slot (waits up to
/// 30 s for the slot map to hold the survivor alone), and the victim mounts again.
fn recovered_and_remounted(vol: &Volume, victim: usize) -> Node {
    let survivor = 1 - victim;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while vol.nodes_in_slots(survivor) != BTreeSet::from([survivor]) {
        let slots = vol.nodes_in_slots(survivor);
        assert!(std::time::Instant::now() < deadline, "n{victim}'s slot was never recovered: {slots:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    vol.mount(victim)
}

/// Runs `work` while this thread waits until `progress` reaches `at` (or `work` returns), then kills
/// `victim`'s daemon (SIGKILL to its PID); returns what `work` returned.
fn kill_during<T: Send>(victim: &mut Mount, progress: &AtomicUsize, at: usize, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        let worker = sc.spawn(work);
        while progress.load(Ordering::SeqCst) < at && !worker.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        victim.kill();
        worker.join().unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// Creates

/// Files each node creates in the creates workloads when `O2FS_CREATES` is not set (a quick
/// run while developing). The issue asks for 10 000 per node, and scripts/test.sh (the CI
/// command) sets that: with per-inode locks, the shared-image and mirror variants of 2 × 10 000
/// creates in one directory took 162 s together on this 2-core machine (2026-11-28, both at once:
/// `O2FS_CREATES=10000 cargo test --test cluster_workloads creates_in_one_directory`).
const DEFAULT_CREATES: usize = 2000;

fn creates() -> usize {
    env_number("O2FS_CREATES", DEFAULT_CREATES)
}

fn file_name(node: usize, i: usize) -> String {
    format!("n{node}-{i:05}")
}

fn file_body(node: usize, i: usize) -> String {
    format!("file {i} of node n{node}\n")
}

/// Node `node` creates its files 0..n in `dir`, fsyncing each when `fsync`; `done` counts the
/// files finished (fsynced when `fsync`). Stops at the first error.
fn create_files(dir: &Path, node: usize, n: usize, fsync: bool, done: &AtomicUsize) -> std::io::Result<()> {
    for i in 0..n {
        let mut f = std::fs::File::create_new(dir.join(file_name(node, i)))?;
        f.write_all(file_body(node, i).as_bytes())?;
        if fsync {
            f.sync_all()?;
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Files 0..n of node `node` are in `dir` with their contents.
fn assert_files(dir: &Path, node: usize, n: usize) {
    for i in 0..n {
        let p = dir.join(file_name(node, i));
        assert_eq!(String::from_utf8(read(&p)).unwrap(), file_body(node, i), "{}", p.display());
    }
}

/// Both nodes create `creates()` files in one directory at once; both see all of them.
fn creates_in_one_directory(vol: &Volume) {
    let n = creates();
    let nodes = vol.mount_both();
    std::fs::create_dir(nodes[0].1.join("d")).unwrap();
    let started = std::time::Instant::now();
    std::thread::scope(|sc| {
        for (node, (_, dir)) in nodes.iter().enumerate() {
            sc.spawn(move || create_files(&dir.join("d"), node, n, false, &AtomicUsize::new(0)).unwrap());
        }
    });
    eprintln!("creates: 2 × {n} files in one directory took {:?}", started.elapsed());
    let want: BTreeSet<String> = (0..2).flat_map(|node| (0..n).map(move |i| file_name(node, i))).collect();
    for (_, dir) in &nodes {
        assert!(names(&dir.join("d")) == want, "{}: the names are not the {} created", dir.display(), 2 * n);
        for node in 0..2 {
            assert_files(&dir.join("d"), node, n);
        }
    }
    vol.finish(nodes);
}

/// Both nodes create files in one directory, the victim fsyncing each; the victim's daemon is
/// killed a quarter of the way through. The survivor finishes, the victim's fsynced files are
/// there, the victim mounts again and sees them all.
fn kill_9_during_creates(vol: &Volume, victim: usize) {
    let (n, survivor) = (creates() / 2, 1 - victim);
    let mut nodes = vol.mount_both();
    assert_eq!(vol.nodes_in_slots(survivor), BTreeSet::from([0, 1]), "both nodes hold a slot");
    let dirs: Vec<PathBuf> = nodes.iter().map(|(_, d)| d.join("d")).collect();
    std::fs::create_dir(&dirs[0]).unwrap();
    let fsynced = AtomicUsize::new(0);
    let (mine, theirs) = kill_during(&mut nodes[victim].0, &fsynced, n / 4, || {
        std::thread::scope(|sc| {
            let mine = sc.spawn(|| create_files(&dirs[survivor], survivor, n, false, &AtomicUsize::new(0)));
            let theirs = sc.spawn(|| create_files(&dirs[victim], victim, n, true, &fsynced));
            (mine.join().unwrap(), theirs.join().unwrap())
        })
    });
    mine.expect("the survivor finishes its creates");
    assert!(theirs.is_err(), "n{victim} was killed before it finished");
    let fsynced = fsynced.load(Ordering::SeqCst);
    assert!(fsynced >= n / 4, "n{victim} fsynced {fsynced} files before it was killed");
    assert_files(&dirs[survivor], survivor, n);
    assert_files(&dirs[survivor], victim, fsynced);
    nodes[victim] = recovered_and_remounted(vol, victim);
    assert_files(&dirs[victim], survivor, n);
    assert_files(&dirs[victim], victim, fsynced);
    vol.finish(nodes);
}

fn kill_9_of_n1_during_creates(vol: &Volume) {
    kill_9_during_creates(vol, 1);
}

// ---------------------------------------------------------------------------------------------
// Rename storm

/// Files of the storm, the names they take (so moves find free names and swaps find taken
/// ones), and the renames each node attempts.
const STORM_FILES: usize = 150;
const STORM_NAMES: usize = 225;
const STORM_OPS: usize = 1500;
const STORM_DIRS: [&str; 2] = ["a", "b"];

fn storm_body(k: usize) -> String {
    format!("storm file {k}\n")
}

/// The storm's two directories, its files all in the first.
fn storm_setup(root: &Path) {
    for d in STORM_DIRS {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    for k in 0..STORM_FILES {
        std::fs::write(root.join("a").join(format!("s{k}")), storm_body(k)).unwrap();
    }
}

/// `ops` renames in `root`'s storm directories, each from a random directory and name to a
/// random directory and name: half move without replacing (RENAME_NOREPLACE), half swap two
/// names (RENAME_EXCHANGE), so that no file is ever lost. ENOENT and EEXIST are what a name
/// the other node just moved or took gives; any other error stops the storm. `done` counts the
/// renames made; returns them, or the error.
fn storm(root: &Path, seed: u64, ops: usize, done: &AtomicUsize) -> Result<usize, String> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags};
    let mut rng = Rng::new(seed);
    for _ in 0..ops {
        let mut pick = || root.join(rng.pick(&STORM_DIRS)).join(format!("s{}", rng.below(STORM_NAMES as u64)));
        let (from, to) = (pick(), pick());
        if from == to {
            continue;
        }
        let flags = if rng.chance(50) { RenameFlags::RENAME_NOREPLACE } else { RenameFlags::RENAME_EXCHANGE };
        match renameat2(None, &from, None, &to, flags) {
            Ok(()) => {
                done.fetch_add(1, Ordering::SeqCst);
            }
            Err(Errno::ENOENT | Errno::EEXIST) => {}
            Err(e) => return Err(format!("rename {} → {} ({flags:?}): {e}", from.display(), to.display())),
        }
    }
    Ok(done.load(Ordering::SeqCst))
}

/// Every storm file is in exactly one place in `root`'s storm directories, with its contents.
fn assert_storm_intact(root: &Path) {
    let mut found = BTreeMap::new();
    for d in STORM_DIRS {
        for name in names(&root.join(d)) {
            let path = root.join(d).join(&name);
            let body = String::from_utf8(read(&path)).unwrap();
            let k = (0..STORM_FILES).find(|&k| storm_body(k) == body);
            let k = k.unwrap_or_else(|| panic!("{}: not a storm file: {body:?}", path.display()));
            if let Some(first) = found.insert(k, path.clone()) {
                panic!("storm file {k} is both {} and {}", first.display(), path.display());
            }
        }
    }
    assert_eq!(found.len(), STORM_FILES, "storm files lost under {}", root.display());
}

/// Both nodes storm at once; each makes some renames, and both see every file exactly once.
fn rename_storm(vol: &Volume) {
    let nodes = vol.mount_both();
    storm_setup(&nodes[0].1);
    let made: Vec<usize> = std::thread::scope(|sc| {
        let storms: Vec<_> = (0..2)
            .map(|i| {
                let root = &nodes[i].1;
                sc.spawn(move || storm(root, 0x5707 + i as u64, STORM_OPS, &AtomicUsize::new(0)))
            })
            .collect();
        storms.into_iter().map(|s| s.join().unwrap().unwrap_or_else(|e| panic!("{e}"))).collect()
    });
    eprintln!("rename storm: renames made by n0, n1: {made:?}");
    assert!(made.iter().all(|&m| m > 0), "each node renamed something: {made:?}");
    for (_, dir) in &nodes {
        assert_storm_intact(dir);
    }
    vol.finish(nodes);
}

/// Both nodes storm; the victim's daemon is killed after a sixth of its attempts. The survivor
/// finishes its storm, every file is still in exactly one place, the victim mounts again and
/// sees the same.
fn kill_9_during_a_rename_storm(vol: &Volume, victim: usize) {
    let survivor = 1 - victim;
    let mut nodes = vol.mount_both();
    assert_eq!(vol.nodes_in_slots(survivor), BTreeSet::from([0, 1]), "both nodes hold a slot");
    let roots: Vec<PathBuf> = nodes.iter().map(|(_, d)| d.clone()).collect();
    storm_setup(&roots[0]);
    let theirs = AtomicUsize::new(0);
    let (mine, _) = kill_during(&mut nodes[victim].0, &theirs, STORM_OPS / 6, || {
        std::thread::scope(|sc| {
            let mine = sc.spawn(|| storm(&roots[survivor], 0x5707, STORM_OPS, &AtomicUsize::new(0)));
            let theirs = sc.spawn(|| storm(&roots[victim], 0x5708, STORM_OPS, &theirs));
            (mine.join().unwrap(), theirs.join().unwrap())
        })
    });
    mine.unwrap_or_else(|e| panic!("the survivor's storm: {e}"));
    assert_storm_intact(&roots[survivor]);
    nodes[victim] = recovered_and_remounted(vol, victim);
    assert_storm_intact(&roots[victim]);
    vol.finish(nodes);
}

// ---------------------------------------------------------------------------------------------
// Seeded write-on-one, read-on-other sequence

const SEQ_SEED: u64 = 0x0c1a_5eed;
const SEQ_DEFAULT_OPS: usize = 400;
/// Names of files and directories (few, so that operations meet the same names often).
const SEQ_NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
/// Directories are made at most this deep below the sequence's root.
const SEQ_DEPTH: usize = 3;
const FILE_MODES: [u32; 5] = [0o600, 0o640, 0o644, 0o755, 0o444];
const DIR_MODES: [u32; 3] = [0o700, 0o750, 0o755];

/// What the model expects at a path below the sequence's root.
#[derive(Clone, Debug)]
enum Entry {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
}

/// One step, on paths relative to the sequence's root ("" is the root itself).
#[derive(Debug)]
enum Op {
    Create { path: String, len: usize },
    Write { path: String, off: u64, len: usize },
    Truncate { path: String, size: u64 },
    Rename { from: String, to: String },
    Unlink { path: String },
    Rmdir { path: String },
    Mkdir { path: String },
    Chmod { path: String, mode: u32 },
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn hash(data: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The model of the tree below the root, and the seeded generator of steps valid against it.
struct Model {
    rng: Rng,
    tree: BTreeMap<String, Entry>,
}

impl Model {
    fn children(&self, dir: &str) -> BTreeSet<String> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let below = self.tree.range(prefix.clone()..).take_while(|(p, _)| p.starts_with(&prefix));
        below
            .filter_map(|(p, _)| p[prefix.len()..].split_once('/').is_none().then(|| p[prefix.len()..].to_string()))
            .collect()
    }

    fn paths(&self, files: bool) -> Vec<String> {
        self.tree.iter().filter(|(_, e)| matches!(e, Entry::File { .. }) == files).map(|(p, _)| p.clone()).collect()
    }

    /// Directories (the root too) a new name may go in.
    fn dirs(&self) -> Vec<String> {
        let mut v = self.paths(false);
        v.push(String::new());
        v.retain(|d| d.split('/').filter(|c| !c.is_empty()).count() < SEQ_DEPTH);
        v
    }

    /// A random name in one of `dirs`.
    fn path_in(&mut self, dirs: &[String]) -> String {
        let dir = self.rng.pick(dirs).clone();
        join(&dir, *self.rng.pick(&SEQ_NAMES))
    }

    /// A name not yet taken in a random directory, if the pick finds one.
    fn free_path(&mut self) -> Option<String> {
        let path = self.path_in(&self.dirs());
        (!self.tree.contains_key(&path)).then_some(path)
    }

    fn file_len(&self, path: &str) -> u64 {
        match &self.tree[path] {
            Entry::File { data, .. } => data.len() as u64,
            Entry::Dir { .. } => unreachable!("{path} is a directory"),
        }
    }

    /// A step that must succeed: creates, writes and truncates most often.
    fn next_op(&mut self) -> Op {
        loop {
            let files = self.paths(true);
            let all: Vec<String> = self.tree.keys().cloned().collect();
            let op = match self.rng.below(100) {
                0..=19 => self.free_path().map(|path| Op::Create { path, len: self.rng.below(20_000) as usize }),
                20..=39 if !files.is_empty() => {
                    let path = self.rng.pick(&files).clone();
                    let off = self.rng.below(self.file_len(&path) + 8192);
                    let len = if self.rng.chance(10) { 300_000 } else { 1 + self.rng.below(65_536) as usize };
                    Some(Op::Write { path, off, len })
                }
                40..=49 if !files.is_empty() => {
                    let path = self.rng.pick(&files).clone();
                    let size = self.rng.below(2 * self.file_len(&path) + 10_000);
                    Some(Op::Truncate { path, size })
                }
                50..=64 if !all.is_empty() => self.rename_op(&all),
                65..=74 if !all.is_empty() => {
                    let path = self.rng.pick(&all).clone();
                    match self.tree[&path] {
                        Entry::File { .. } => Some(Op::Unlink { path }),
                        Entry::Dir { .. } => self.children(&path).is_empty().then_some(Op::Rmdir { path }),
                    }
                }
                75..=84 => self.free_path().map(|path| Op::Mkdir { path }),
                85..=99 if !all.is_empty() => {
                    let path = self.rng.pick(&all).clone();
                    let modes: &[u32] = if files.contains(&path) { &FILE_MODES } else { &DIR_MODES };
                    Some(Op::Chmod { path, mode: *self.rng.pick(modes) })
                }
                _ => None,
            };
            if let Some(op) = op {
                return op;
            }
        }
    }

    /// A rename of any entry to a free name, or of a file over another file; never a directory
    /// into itself.
    fn rename_op(&mut self, all: &[String]) -> Option<Op> {
        let from = self.rng.pick(all).clone();
        let dirs: Vec<String> =
            self.dirs().into_iter().filter(|d| *d != from && !d.starts_with(&format!("{from}/"))).collect();
        let to = self.path_in(&dirs);
        let over_a_file =
            matches!((self.tree.get(&from), self.tree.get(&to)), (Some(Entry::File { .. }), Some(Entry::File { .. })));
        (to != from && (over_a_file || !self.tree.contains_key(&to))).then_some(Op::Rename { from, to })
    }

    /// The data of a create or a write: the generator's next bytes.
    fn data(&mut self, len: usize) -> Vec<u8> {
        self.rng.bytes(len)
    }

    /// Changes the model as `op` (with `data`, a create's or write's bytes) changes the tree;
    /// returns the paths whose state the other node must now see: the entries changed, and the
    /// directories whose listing changed.
    fn apply(&mut self, op: &Op, data: &[u8]) -> Vec<String> {
        let file = |data: Vec<u8>| Entry::File { data, mode: 0o644 };
        match op {
            Op::Create { path, .. } => {
                self.tree.insert(path.clone(), file(data.to_vec()));
                vec![path.clone(), parent(path).to_string()]
            }
            Op::Write { path, off, .. } => {
                let Some(Entry::File { data: d, .. }) = self.tree.get_mut(path) else { unreachable!() };
                let end = *off as usize + data.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[*off as usize..end].copy_from_slice(data);
                vec![path.clone()]
            }
            Op::Truncate { path, size } => {
                let Some(Entry::File { data: d, .. }) = self.tree.get_mut(path) else { unreachable!() };
                d.resize(*size as usize, 0);
                vec![path.clone()]
            }
            Op::Rename { from, to } => {
                let moved: Vec<String> =
                    self.tree.keys().filter(|p| *p == from || p.starts_with(&format!("{from}/"))).cloned().collect();
                let mut touched = vec![from.clone(), parent(from).to_string(), parent(to).to_string()];
                for p in moved {
                    let e = self.tree.remove(&p).unwrap();
                    let q = format!("{to}{}", &p[from.len()..]);
                    self.tree.insert(q.clone(), e);
                    touched.push(q);
                }
                touched
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                self.tree.remove(path);
                vec![path.clone(), parent(path).to_string()]
            }
            Op::Mkdir { path } => {
                self.tree.insert(path.clone(), Entry::Dir { mode: 0o755 });
                vec![path.clone(), parent(path).to_string()]
            }
            Op::Chmod { path, mode } => {
                match self.tree.get_mut(path).unwrap() {
                    Entry::File { mode: m, .. } | Entry::Dir { mode: m } => *m = *mode,
                }
                vec![path.clone()]
            }
        }
    }
}

/// Does `op` (with `data`) on the tree below `root`.
fn perform(root: &Path, op: &Op, data: &[u8]) -> std::io::Result<()> {
    use std::fs::{self, OpenOptions};
    let p = |rel: &str| root.join(rel);
    match op {
        Op::Create { path, .. } => {
            OpenOptions::new().write(true).create_new(true).mode(0o644).open(p(path))?.write_all(data)
        }
        Op::Write { path, off, .. } => OpenOptions::new().write(true).open(p(path))?.write_all_at(data, *off),
        Op::Truncate { path, size } => OpenOptions::new().write(true).open(p(path))?.set_len(*size),
        Op::Rename { from, to } => fs::rename(p(from), p(to)),
        Op::Unlink { path } => fs::remove_file(p(path)),
        Op::Rmdir { path } => fs::remove_dir(p(path)),
        Op::Mkdir { path } => {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(0o755).create(p(path))
        }
        Op::Chmod { path, mode } => fs::set_permissions(p(path), fs::Permissions::from_mode(*mode)),
    }
}

/// What `root` holds at `rel` against what the model expects there: None if they agree.
fn disagreement(model: &Model, root: &Path, rel: &str) -> Option<String> {
    let path = root.join(rel);
    let meta = match (std::fs::symlink_metadata(&path), model.tree.get(rel)) {
        (Err(e), None) if e.kind() == std::io::ErrorKind::NotFound => return None,
        (Ok(_), None) if !rel.is_empty() => return Some("exists, but the model has removed it".into()),
        (Err(e), _) => return Some(format!("stat: {e}")),
        (Ok(meta), _) => meta,
    };
    let mode = meta.permissions().mode() & 0o7777;
    match model.tree.get(rel) {
        Some(Entry::File { data, mode: want }) => {
            let got = match std::fs::read(&path) {
                Ok(got) => got,
                Err(e) => return Some(format!("read: {e}")),
            };
            if !meta.is_file() || meta.len() != data.len() as u64 || mode != *want || got != *data {
                return Some(format!(
                    "file of size {} (read {} bytes, sha1 {}), mode {mode:o}; the model: size {}, sha1 {}, mode {want:o}",
                    meta.len(),
                    got.len(),
                    hash(&got),
                    data.len(),
                    hash(data),
                ));
            }
        }
        Some(Entry::Dir { mode: want }) if !meta.is_dir() || mode != *want => {
            return Some(format!("is_dir {}, mode {mode:o}; the model: a directory of mode {want:o}", meta.is_dir()));
        }
        _ => {}
    }
    if meta.is_dir() {
        let (got, want) = (names(&path), model.children(rel));
        if got != want {
            return Some(format!("lists {got:?}; the model: {want:?}"));
        }
    }
    None
}

/// The sequence for one seed: each step one node (at random) performs a step the model says
/// must succeed, then the other node checks every path it changed; every 50 steps and at the
/// end both nodes check the whole tree.
///
/// With `kill = Some((step, victim))` the victim's daemon is killed before that step; the
/// survivor then performs and checks every later step, and at the end the victim mounts again
/// and checks the whole tree too. The model stays exact through the kill: every step was read
/// by the other node at once, and a node gives up its lock only after its changes are in place.
fn seeded_sequence(vol: &Volume, seed: u64, ops: usize, kill: Option<(usize, usize)>) {
    eprintln!("seeded sequence: seed {seed:#x}, {ops} steps, kill {kill:?} (O2FS_SEED={seed:#x} to replay)");
    // Creates and mkdirs ask for 0o644 and 0o755, which the model expects to get.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut nodes = vol.mount_both();
    let roots: Vec<PathBuf> = nodes.iter().map(|(_, d)| d.join("seq")).collect();
    std::fs::create_dir(&roots[0]).unwrap();
    std::fs::set_permissions(&roots[0], std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut model = Model { rng: Rng::new(seed), tree: BTreeMap::new() };
    let mut history: Vec<String> = Vec::new();
    let fail = |nodes: &[Node; 2], history: &[String], what: String| -> ! {
        let logs: String = nodes.iter().enumerate().map(|(i, (m, _))| format!("--- n{i}\n{}", m.stderr())).collect();
        panic!(
            "seeded sequence, seed {seed:#x}: {what}\nreplay: O2FS_SEED={seed:#x} cargo test --test cluster_workloads \
             seeded\nsteps so far:\n{}\ndaemon logs:\n{logs}",
            history.join("\n")
        )
    };
    let mut alive = [true, true];
    for step in 0..ops {
        if let Some((_, victim)) = kill.filter(|&(at, _)| at == step) {
            history.push(format!("#{step}: kill -9 of n{victim}"));
            nodes[victim].0.kill();
            alive[victim] = false;
        }
        let drawn = model.rng.below(2) as usize;
        let writer = if alive[drawn] { drawn } else { 1 - drawn };
        let op = model.next_op();
        let data = match &op {
            Op::Create { len, .. } | Op::Write { len, .. } => model.data(*len),
            _ => vec![],
        };
        history.push(format!("#{step} n{writer}: {op:?}"));
        if let Err(e) = perform(&roots[writer], &op, &data) {
            fail(&nodes, &history, format!("n{writer} failed step #{step}: {e}"));
        }
        let mut check = model.apply(&op, &data);
        if step % 50 == 49 || step + 1 == ops {
            check = model.tree.keys().cloned().chain([String::new()]).collect();
        }
        for reader in [1 - writer, writer].into_iter().filter(|&r| alive[r]) {
            for rel in &check {
                if let Some(what) = disagreement(&model, &roots[reader], rel) {
                    fail(&nodes, &history, format!("after step #{step} on n{writer}, n{reader} sees /{rel}: {what}"));
                }
            }
            if check.len() < model.tree.len() {
                break; // after a single step only the other node reads
            }
        }
    }
    if let Some((_, victim)) = kill {
        nodes[victim] = recovered_and_remounted(vol, victim);
        let all: Vec<String> = model.tree.keys().cloned().chain([String::new()]).collect();
        for rel in &all {
            if let Some(what) = disagreement(&model, &roots[victim], rel) {
                fail(&nodes, &history, format!("n{victim}, mounted again after its kill, sees /{rel}: {what}"));
            }
        }
    }
    vol.finish(nodes);
}

/// The sequence of `O2FS_SEED`, or of SEQ_SEED, `O2FS_OPS` steps long.
fn seeded_write_on_one_read_on_the_other(vol: &Volume) {
    let seed = std::env::var("O2FS_SEED").map_or(SEQ_SEED, |s| parse_seed(&s));
    seeded_sequence(vol, seed, env_number("O2FS_OPS", SEQ_DEFAULT_OPS), None);
}

/// The same with n1's daemon killed a third of the way through (n1: on the mirror the lower
/// node's death makes the higher one fence, since no shared disk tells a death from a split).
fn kill_9_of_n1_during_the_seeded_sequence(vol: &Volume) {
    let seed = std::env::var("O2FS_SEED").map_or(SEQ_SEED, |s| parse_seed(&s));
    let ops = env_number("O2FS_OPS", SEQ_DEFAULT_OPS);
    seeded_sequence(vol, seed, ops, Some((ops / 3, 1)));
}

// ---------------------------------------------------------------------------------------------
// The tests: each workload on a shared image and on the mirror, each test on loopback addresses
// of its own.

/// `#[test] fn NAME_on_a_shared_image` and `NAME_on_the_mirror` running workload `NAME` with
/// the nodes on `SHARED_NET`.1/.2 and `MIRROR_NET`.1/.2.
macro_rules! on_a_shared_image_and_the_mirror {
    ($($workload:ident: $shared:ident on $shared_net:literal, $mirror:ident on $mirror_net:literal;)*) => {$(
        #[test]
        fn $shared() {
            $workload(&Volume::Shared(Shared::new($shared_net)));
        }

        #[test]
        fn $mirror() {
            $workload(&Volume::Mirror(OnMirror::new($mirror_net)));
        }
    )*};
}

on_a_shared_image_and_the_mirror! {
    creates_in_one_directory:
        creates_in_one_directory_on_a_shared_image on "127.0.20",
        creates_in_one_directory_on_the_mirror on "127.0.21";
    rename_storm: rename_storm_on_a_shared_image on "127.0.22", rename_storm_on_the_mirror on "127.0.23";
    seeded_write_on_one_read_on_the_other:
        seeded_write_on_one_read_on_the_other_on_a_shared_image on "127.0.24",
        seeded_write_on_one_read_on_the_other_on_the_mirror on "127.0.27";
    kill_9_of_n1_during_creates:
        kill_9_of_n1_during_creates_on_a_shared_image on "127.0.25",
        kill_9_of_n1_during_creates_on_the_mirror on "127.0.28";
    kill_9_of_n1_during_the_seeded_sequence:
        kill_9_of_n1_during_the_seeded_sequence_on_a_shared_image on "127.0.39",
        kill_9_of_n1_during_the_seeded_sequence_on_the_mirror on "127.0.40";
}

#[test]
fn kill_9_of_n0_during_a_rename_storm_on_a_shared_image() {
    kill_9_during_a_rename_storm(&Volume::Shared(Shared::new("127.0.26")), 0);
}

/// On the mirror the victim is n1 (see `kill_9_of_n1_during_the_seeded_sequence`).
#[test]
fn kill_9_of_n1_during_a_rename_storm_on_the_mirror() {
    kill_9_during_a_rename_storm(&Volume::Mirror(OnMirror::new("127.0.41")), 1);
}

/// The smallest case of what a kill -9 during a rename storm on the mirror found: a node is
/// killed, mounts again and resyncs from its peer (a full resync of its replica), and the peer
/// unmounts first, while that resync still runs. The peer's mirror used to stop at once and
/// leave the restarted node without an up-to-date copy: its every write failed, so its unmount
/// left its slot taken and its journal dirty while the daemon exited 0, and the next resync
/// copied the peer's replica over its own. Now an unmounting node's mirror stays connected while
/// its peer writes or resyncs from it, and a failed unmount makes the daemon fail. The victim is
/// n1: on the mirror the death of the lower node makes n1 fence (no shared disk tells a death
/// from a split); the survivor n0 leaves cleanly, so n1 goes on after it.
#[test]
fn a_node_unmounting_while_its_peer_resyncs_from_it_waits_for_the_resync() {
    let m = OnMirror::new("127.0.29");
    let mut nodes = m.mount_both();
    std::fs::write(nodes[0].1.join("before"), b"both up").unwrap();
    for i in 0..2 {
        m.wait_in_sync(i);
    }
    let vol = Volume::Mirror(m);
    nodes[1].0.kill();
    std::fs::write(nodes[0].1.join("while n1 is dead"), b"n0 alone").unwrap();
    nodes[1] = recovered_and_remounted(&vol, 1);
    assert_eq!(read(&nodes[1].1.join("while n1 is dead")), b"n0 alone");
    // n0 unmounts first (n1 still resyncing from it); n1 goes on writing.
    nodes[0].0.detach();
    std::fs::write(nodes[1].1.join("after n0 left"), b"n1 alone").unwrap();
    // Unmounted and out of the cluster, n0's replica stays for n1, and n0 still answers `o2fs
    // status` (its cluster runtime, which used to serve the socket, has stopped by now).
    let Volume::Mirror(m) = &vol else { unreachable!() };
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let s = m.status(0);
        assert_eq!(s["mirror"]["connection"], "Connected", "n0 while it lingers: {s}");
    }
    // Both must end clean, n1's last writes must have reached both replicas, and the two be equal.
    vol.finish(nodes);
}
