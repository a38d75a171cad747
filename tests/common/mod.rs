//! Helpers shared by the integration tests: locating the workspace's binaries and judging
//! images with Debian's ocfs2-tools exactly as ocfs2-format.md §17.2 prescribes.
#![allow(dead_code)]

pub mod cluster;
pub mod daemon;
pub mod netns;
pub mod nft;
pub mod nodes;
pub mod rng;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Directory holding the workspace binaries (target/<profile>), next to the test executable.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/test").to_path_buf()
}

/// Path of a workspace program by its installed name (mkfs.o2fs, fsck.o2fs, o2fs); the test fails
/// if it was not built. Cargo cannot name a binary with a dot, so `mkfs.o2fs` is built as
/// `mkfs-o2fs` and reached through a symlink of the installed name (argv[0] stays right).
pub fn bin(name: &str) -> PathBuf {
    let built = bin_dir().join(name.replace('.', "-"));
    assert!(built.exists(), "{} is missing: build the workspace first (cargo build --workspace)", built.display());
    let p = bin_dir().join(name);
    if name.contains('.') && std::fs::symlink_metadata(&p).is_err() {
        // Several tests may race to make it; any of them succeeding is enough.
        let _ = std::os::unix::fs::symlink(&built, &p);
    }
    p
}

/// Runs `cmd` (a program that must refuse its input at once, within 30 s), with its stderr in
/// `log`; fails the test unless it exits unsuccessfully. Returns its stderr.
pub fn must_fail(cmd: &mut Command, log: &Path) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let status = wait_bounded(&mut child, std::time::Duration::from_secs(30));
    let err = std::fs::read_to_string(log).unwrap_or_default();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(status.is_some_and(|st| !st.success()), "{cmd:?} was not refused ({status:?}):\n{err}");
    err
}

/// `o2fs`, run through `wrapper` when it is not empty (`ip netns exec NS`, `nsenter …`: programs
/// that exec it, so the child's PID stays the daemon's).
pub fn o2fs_via<S: AsRef<std::ffi::OsStr>>(wrapper: &[S]) -> Command {
    match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(bin("o2fs"));
            c
        }
        None => Command::new(bin("o2fs")),
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs a command with `y` lines on standard input (fsck.ocfs2 -F asks for confirmation).
pub fn run_yes(cmd: &mut Command) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all("y\n".repeat(64).as_bytes());
    }
    child.wait_with_output().expect("wait")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// True when ocfs2-tools are installed. In CI they must be (`.ci/run` installs them), so a
/// missing tool is a failure there, not a skip.
pub fn have_ocfs2_tools() -> bool {
    let found = Command::new("fsck.ocfs2").arg("-V").stdin(Stdio::null()).output().is_ok();
    if !found && std::env::var_os("CI").is_some() {
        panic!("ocfs2-tools are not installed, and CI must run these tests");
    }
    found
}

/// fsck.ocfs2's verdict (§17.2): `-fnF` exits 0 even when it finds problems, so a problem is any
/// line starting with '[' or a missing "All passes succeeded". Returns the log on failure.
pub fn fsck_ocfs2(img: &Path) -> Result<(), String> {
    let out = run_yes(Command::new("fsck.ocfs2").arg("-fnF").arg(img));
    let log = text(&out);
    let problems = log.lines().any(|l| l.starts_with('['));
    if problems || !log.lines().any(|l| l.starts_with("All passes succeeded")) {
        return Err(log);
    }
    Ok(())
}

pub fn assert_fsck_ocfs2_clean(img: &Path) {
    if let Err(log) = fsck_ocfs2(img) {
        panic!("fsck.ocfs2 -fnF {} found problems:\n{log}", img.display());
    }
}

/// The number after `what` in a daemon's log (its lines carry colour codes).
pub fn logged_number(log: &str, what: &str) -> Option<u64> {
    let at = log.find(what)? + what.len();
    log[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// `debugfs.ocfs2 -R CMD IMG` output.
pub fn debugfs(img: &Path, cmd: &str) -> String {
    text(&run(Command::new("debugfs.ocfs2").arg("-R").arg(cmd).arg(img)))
}

/// A sparse image file of `size` bytes in `dir`.
pub fn sparse_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("create image");
    f.set_len(size).expect("size image");
    p
}

/// mkfs.ocfs2 with the supported subset (§17.1); `local` picks the non-clustered variant.
pub fn mkfs_ocfs2(img: &Path, bs: &str, cs: &str, slots: u32, local: bool) {
    let mut cmd = Command::new("mkfs.ocfs2");
    cmd.args(["-q", "-b", bs, "-C", cs, "-N", &slots.to_string(), "--fs-feature-level=max-compat"]);
    if local {
        cmd.args(["-M", "local", "--fs-features=sparse,unwritten,inline-data,extended-slotmap"]);
    } else {
        cmd.args([
            "--cluster-stack=o2cb",
            "--cluster-name=ocfs2",
            "--fs-features=sparse,unwritten,inline-data,extended-slotmap,clusterinfo",
        ]);
    }
    let out = run_yes(cmd.arg("-F").arg(img));
    assert!(out.status.success(), "mkfs.ocfs2 failed: {}", text(&out));
}

/// Opens slot `slot`'s JBD2 journal (`journal:NNNN`) on the volume's device, mapped through the
/// journal inode's extents; returns the journal inode's block number too.
pub fn open_journal(vol: &o2fs::fs::Volume, slot: u16) -> (u64, o2fs::journal::Journal) {
    use o2fs::fs::sysfile::SystemFile;
    let blkno = vol.system_file_blkno(SystemFile::Journal(slot)).expect("journal inode");
    let inode = vol.read_inode(blkno).expect("read journal inode");
    let leaves = vol.leaf_extents(&inode).expect("journal extents");
    let map = o2fs::journal::JournalMap::from_extent_recs(&leaves, vol.geo.bpc());
    let journal = o2fs::journal::Journal::open(vol.dev.clone(), map, vol.block_size()).expect("open journal");
    (blkno, journal)
}

/// Sets or clears JOURNAL_DIRTY_FL in slot `slot`'s journal inode (re-encoded and written, then
/// flushed), as a node does when it loads or cleanly unloads its journal (§13.8).
pub fn set_journal_dirty(vol: &o2fs::fs::Volume, slot: u16, dirty: bool) {
    use o2fs::format::inode::{Inode, JOURNAL_DIRTY_FL};
    use o2fs::fs::sysfile::SystemFile;
    let blkno = vol.system_file_blkno(SystemFile::Journal(slot)).expect("journal inode");
    let mut raw = vol.read_block(blkno).expect("read journal inode");
    let mut inode = Inode::decode(&raw, blkno).expect("decode journal inode");
    let flags = inode.journal_flags() & !JOURNAL_DIRTY_FL | if dirty { JOURNAL_DIRTY_FL } else { 0 };
    inode.set_journal(flags, inode.journal_recovery_generation());
    inode.encode(&mut raw);
    vol.write_block(blkno, &raw).expect("write journal inode");
    vol.dev.flush().expect("flush");
}

/// True when `dir` is a mountpoint.
pub fn is_mountpoint(dir: &Path) -> bool {
    mount_type(dir).is_some()
}

/// The filesystem type of the mount on `dir`, from /proc/self/mountinfo (mount point in field
/// 5, with octal escapes; the type follows the " - " separator).
pub fn mount_type(dir: &Path) -> Option<String> {
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|mp| Path::new(&unescape_mountinfo(mp)) == want))
        .filter_map(|l| l.split(" - ").nth(1)?.split(' ').next().map(str::to_string))
        .last()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits up to `limit` for `child` to exit.
pub fn wait_bounded(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An `o2fs mount -f` daemon of the test's own, and its mount. `unmount` (or Drop, even while a
/// failing test unwinds) unmounts with fusermount3 and waits for that child; a daemon that does
/// not exit in time is killed by its PID and the mount detached. Nothing is killed by name.
pub struct Mount {
    pub dir: PathBuf,
    pub image: PathBuf,
    child: Option<std::process::Child>,
    stderr_path: PathBuf,
    /// This guard's mount is unmounted or detached: the directory is no longer its business (a
    /// node killed and mounted again on the same directory belongs to another guard).
    gone: bool,
}

impl Mount {
    /// Mounts `image` on `dir` with `-o opts` (none when empty); panics with the daemon's stderr
    /// if it exits or the mount does not appear within 30 s.
    pub fn new(image: &Path, dir: &Path, opts: &str) -> Mount {
        Self::try_new(image, dir, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new(image: &Path, dir: &Path, opts: &str) -> Result<Mount, String> {
        let opts: Vec<String> = if opts.is_empty() { vec![] } else { vec!["-o".into(), opts.into()] };
        Self::start(image, dir, &opts)
    }

    /// `o2fs mount -f ARGS… IMAGE DIR` (e.g. a cluster mount's `--node`, `-c`…).
    pub fn start(image: &Path, dir: &Path, args: &[String]) -> Result<Mount, String> {
        Self::launch(&[], image, Some(image), dir, args)
    }

    /// `o2fs mount -f ARGS… -r RESOURCE DIR`: a node on the mirror (ARGS has its `--node`, `-c`…),
    /// run through `wrapper` (e.g. `nsenter --net=…`; empty: none).
    pub fn start_on_mirror(wrapper: &[String], resource: &Path, dir: &Path, args: &[String]) -> Result<Mount, String> {
        let mut all = args.to_vec();
        all.extend(["-r".to_string(), resource.display().to_string()]);
        Self::launch(wrapper, resource, None, dir, &all)
    }

    /// Runs `[WRAPPER…] o2fs mount -f ARGS… [IMAGE] DIR` and waits for the mount; `source` names
    /// it. The wrapper must exec the daemon, so that the PID is the daemon's.
    fn launch(
        wrapper: &[String],
        source: &Path,
        image_arg: Option<&Path>,
        dir: &Path,
        args: &[String],
    ) -> Result<Mount, String> {
        use std::time::{Duration, Instant};
        let image = source;
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = std::env::temp_dir().join(format!("o2fs-mount-{}-{n}.log", std::process::id()));
        let log =
            std::fs::File::create(&stderr_path).map_err(|e| format!("creating {}: {e}", stderr_path.display()))?;
        let mut cmd = o2fs_via(wrapper);
        cmd.arg("mount").arg("-f").args(args);
        cmd.args(image_arg).arg(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
        let child = cmd.spawn().map_err(|e| format!("running {cmd:?}: {e}"))?;
        let mut m =
            Mount { dir: dir.to_path_buf(), image: image.to_path_buf(), child: Some(child), stderr_path, gone: false };
        let start = Instant::now();
        loop {
            if is_mountpoint(dir) {
                return Ok(m);
            }
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                m.child = None;
                return Err(format!(
                    "o2fs mount {} {} exited ({st}) before mounting:\n{}",
                    image.display(),
                    dir.display(),
                    m.stderr()
                ));
            }
            if start.elapsed() > Duration::from_secs(30) {
                let log = m.stderr();
                m.cleanup();
                return Err(format!("o2fs mount {} {}: no mount after 30 s:\n{log}", image.display(), dir.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The daemon has not exited.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Unmounts and waits for the daemon; Err (with its stderr) unless it exits 0 in time.
    pub fn unmount(&mut self) -> Result<(), String> {
        let last = self.detach();
        self.wait_exit(&last)
    }

    /// Unmounts several nodes, then waits for all their daemons (a node on the mirror stays up
    /// until its peer stops writing, so one-by-one unmounts would wait on each other).
    pub fn unmount_all(mounts: &mut [&mut Mount]) -> Result<(), String> {
        let last: Vec<String> = mounts.iter_mut().map(|m| m.detach()).collect();
        mounts.iter_mut().zip(last).map(|(m, l)| m.wait_exit(&l)).collect()
    }

    /// `fusermount3 -u`, retried while busy, without waiting for the daemon; returns the last
    /// complaint of fusermount3.
    pub fn detach(&mut self) -> String {
        // A just-closed file may still be released by the kernel: retry a busy mount briefly.
        let mut last = String::new();
        for _ in 0..50 {
            if !is_mountpoint(&self.dir) {
                break;
            }
            let out = run(Command::new("fusermount3").arg("-u").arg(&self.dir));
            if out.status.success() {
                break;
            }
            last = text(&out);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        last
    }

    /// Waits for the daemon after a detach; Err (with its stderr) unless it exits 0 in time.
    fn wait_exit(&mut self, last: &str) -> Result<(), String> {
        use std::time::Duration;
        let Some(mut child) = self.child.take() else { return Ok(()) };
        match wait_bounded(&mut child, Duration::from_secs(30)) {
            Some(st) if st.success() => {
                self.gone = true;
                Ok(())
            }
            Some(st) => Err(format!("o2fs daemon exited with {st} (fusermount3: {last}):\n{}", self.stderr())),
            None => {
                let log = self.stderr();
                kill_pid(&mut child);
                let _ = run(Command::new("umount").arg("-l").arg(&self.dir));
                self.gone = true;
                Err(format!("o2fs daemon did not exit within 30 s of fusermount3 -u ({last}); killed:\n{log}"))
            }
        }
    }

    /// Simulates a crash of the node: SIGKILL to the daemon (its PID), then detaches the dead
    /// mount.
    pub fn kill(&mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_pid(&mut child);
        }
        if !self.gone && is_mountpoint(&self.dir) {
            let _ = run(Command::new("umount").arg("-l").arg(&self.dir));
        }
        self.gone = true;
    }
}

/// SIGKILL to this child only (by its PID), then reap it.
fn kill_pid(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = wait_bounded(child, std::time::Duration::from_secs(10));
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.unmount() {
                eprintln!("Mount guard: {e}");
            }
        }
        self.cleanup();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// The metadata blocks of a volume, found by walking it from the root and the system directory
/// (tests/badimage.rs corrupts them; tests/populated.rs round-trips them).
#[derive(Debug, Default)]
pub struct MetaBlocks {
    /// Every inode reachable from the root or the system directory, and every allocated bit of
    /// the inode allocators' groups: (block, a path or a description).
    pub inodes: Vec<(u64, String)>,
    /// Each block is named by its owner's path and its place there, so that a list sorted by
    /// name is the same for two images made by the same steps whatever block numbers they got.
    pub extent_blocks: Vec<(u64, String)>,
    /// Blocks of extent-based directories (inline directories live in their inode).
    pub dir_blocks: Vec<(u64, String)>,
    pub groups: Vec<(u64, String)>,
    /// First block of each journal (the JBD2 superblock).
    pub journal_supers: Vec<(u64, String)>,
}

/// Walks a clean volume's metadata; panics (naming the block) on anything it cannot read.
pub fn walk_metadata(vol: &o2fs::fs::Volume) -> MetaBlocks {
    use o2fs::format::inode::{Id2, JOURNAL_FL};
    use std::collections::{BTreeSet, VecDeque};
    let sb = vol.sb().clone();
    let mut out = MetaBlocks::default();
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<(u64, String)> =
        [(sb.root_blkno, "/".to_string()), (sb.system_dir_blkno, "//".to_string())].into();
    let mut inode_groups = Vec::new();
    while let Some((blkno, path)) = queue.pop_front() {
        if !seen.insert(blkno) {
            continue;
        }
        let inode = vol.read_inode(blkno).unwrap_or_else(|e| panic!("inode {blkno} ({path}): {e}"));
        out.inodes.push((blkno, path.clone()));
        if let Some(chain) = inode.chain() {
            let is_inode_alloc = path.contains("inode_alloc");
            for (c, rec) in chain.recs.iter().enumerate() {
                let mut g = rec.blkno;
                let mut n = 0;
                while g != 0 {
                    let raw = vol.read_block(g).unwrap();
                    let gd = o2fs::format::group::GroupDesc::decode(&raw, g).unwrap_or_else(|e| panic!("{path}: {e}"));
                    out.groups.push((g, format!("{path} chain {c} group {n}")));
                    n += 1;
                    if is_inode_alloc {
                        inode_groups.push(gd.clone());
                    }
                    g = gd.next_group;
                }
            }
        }
        if let Some(list) = inode.extents() {
            let mut stack: Vec<(u16, u64)> = if list.tree_depth > 0 {
                list.recs.iter().map(|r| (list.tree_depth, r.blkno)).collect()
            } else {
                vec![]
            };
            while let Some((depth, eb_blk)) = stack.pop() {
                let eb = vol.read_extent_block(eb_blk).unwrap_or_else(|e| panic!("{path}: {e}"));
                assert_eq!(eb.list.tree_depth + 1, depth, "{path}: extent block {eb_blk} depth");
                out.extent_blocks.push((eb_blk, format!("{path} extent block {}", out.extent_blocks.len())));
                if eb.list.tree_depth > 0 {
                    stack.extend(eb.list.recs.iter().map(|r| (eb.list.tree_depth, r.blkno)));
                }
            }
        }
        if inode.flags & JOURNAL_FL != 0 {
            if let Some(first) = vol.leaf_extents(&inode).unwrap().first() {
                out.journal_supers.push((first.blkno, format!("{path} journal superblock")));
            }
        }
        if inode.is_dir() {
            let entries = vol.dir_entries(&inode).unwrap_or_else(|e| panic!("{path}: {e}"));
            if !matches!(inode.id2, Id2::Inline(_)) {
                let mut blocks: Vec<u64> = entries.iter().map(|(p, _)| *p).collect();
                blocks.dedup();
                out.dir_blocks
                    .extend(blocks.into_iter().enumerate().map(|(i, b)| (b, format!("{path} directory block {i}"))));
            }
            for (_, e) in entries.iter().filter(|(_, e)| e.is_used() && e.name != b"." && e.name != b"..") {
                let sep = if path.ends_with('/') { "" } else { "/" };
                queue.push_back((e.inode, format!("{path}{sep}{}", String::from_utf8_lossy(&e.name))));
            }
        }
    }
    // Allocated inodes no directory names (orphans, leaks) are metadata too.
    for gd in inode_groups {
        for bit in 0..gd.bits as u64 {
            // Bit 0 is the group descriptor's own block.
            let blk = gd.blkno + bit;
            if bit > 0 && o2fs::fs::bitmap::test(&gd.bitmap, bit as usize) && seen.insert(blk) {
                let raw = vol.read_block(blk).unwrap();
                assert!(
                    raw.starts_with(o2fs::format::inode::INODE_SIGNATURE),
                    "allocated inode block {blk} has no inode"
                );
                out.inodes.push((blk, format!("bit {bit} of inode group {}", gd.blkno)));
            }
        }
    }
    out
}
