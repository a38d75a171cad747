//! `o2fs mount` end to end (issue 3, the parts that need no journal): real FUSE mounts of images
//! made by mkfs.o2fs and mkfs.ocfs2, workloads through the kernel, then a clean unmount and the
//! independent judge (fsck.ocfs2 -fnF, ocfs2-format.md §17.2), our own fsck, and debugfs.ocfs2
//! reading the content back. Every test has its own image and mountpoint in a tempdir; the
//! `Mount` guard unmounts and reaps its own daemon by PID even when a test fails.

mod common;

use common::*;
use nix::errno::Errno;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A volume of the test's own: tempdir, image, mountpoint.
struct Vol {
    _tmp: tempfile::TempDir,
    img: PathBuf,
    mnt: PathBuf,
}

impl Vol {
    /// mkfs.o2fs `-q -b BS -C CS -M local --size SIZE` (plus `extra`).
    fn new(bs: &str, cs: &str, size: u64, extra: &[&str]) -> Vol {
        let tmp = tempfile::tempdir().expect("tempdir");
        let img = tmp.path().join("vol.img");
        let size_s = size.to_string();
        let mut args = vec!["-q", "-b", bs, "-C", cs, "-N", "1", "-M", "local", "--size", &size_s];
        args.extend_from_slice(extra);
        let out = run(Command::new(bin("mkfs.o2fs")).args(&args).arg(&img));
        assert!(out.status.success(), "mkfs.o2fs {args:?}: {}", text(&out));
        Self::at(tmp, img)
    }

    fn at(tmp: tempfile::TempDir, img: PathBuf) -> Vol {
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).expect("mountpoint");
        Vol { _tmp: tmp, img, mnt }
    }

    fn mount(&self) -> Mount {
        Mount::new(&self.img, &self.mnt, "")
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// Clean unmount, then both judges.
fn unmount_and_check(mut m: Mount) {
    m.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
    check_image(&m.image);
}

fn check_image(img: &Path) {
    assert_fsck_ocfs2_clean(img);
    let ours = run(Command::new(bin("fsck.o2fs")).arg("-fn").arg(img));
    assert_eq!(ours.status.code(), Some(0), "fsck.o2fs -fn {}: {}", img.display(), text(&ours));
}

/// debugfs.ocfs2's `cat PATH` (stdout only: the bytes of the file).
fn debugfs_cat(img: &Path, path: &str) -> Vec<u8> {
    let out = run(Command::new("debugfs.ocfs2").arg("-R").arg(format!("cat {path}")).arg(img));
    out.stdout
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn errno_of(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

fn free_clusters(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir).expect("statvfs").blocks_free() as u64
}

/// Polls until `f` holds (the kernel sends RELEASE asynchronously after close).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Files of every kind and the namespace operations.

fn namespace_workload(v: &Vol, bs: usize) {
    // Directories, nested.
    fs::create_dir_all(v.p("a/b/c/d")).unwrap();
    fs::create_dir(v.p("e")).unwrap();
    assert!(fs::metadata(v.p("a/b/c/d")).unwrap().is_dir());
    assert_eq!(fs::metadata(v.p("a")).unwrap().nlink(), 3);

    // fifo, device nodes, a socket.
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    nix::unistd::mkfifo(&v.p("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    mknod(&v.p("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    mknod(&v.p("loop"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), makedev(7, 0)).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(v.p("sock")).unwrap();
    drop(listener);
    assert!(fs::symlink_metadata(v.p("fifo")).unwrap().file_type().is_fifo());
    let null = fs::symlink_metadata(v.p("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    let lp = fs::symlink_metadata(v.p("loop")).unwrap();
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), makedev(7, 0));
    assert!(fs::symlink_metadata(v.p("sock")).unwrap().file_type().is_socket());

    // Symlinks: fast, and long ones (3000 bytes is long on 512-byte blocks, 4000 on 4K).
    std::os::unix::fs::symlink("a/b/c", v.p("fast")).unwrap();
    let long3: String = (0..3000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let long4: String = (0..4000).map(|i| (b'A' + (i % 26) as u8) as char).collect();
    std::os::unix::fs::symlink(&long3, v.p("long3")).unwrap();
    std::os::unix::fs::symlink(&long4, v.p("long4")).unwrap();
    assert_eq!(fs::read_link(v.p("fast")).unwrap(), Path::new("a/b/c"));
    assert_eq!(fs::read_link(v.p("long3")).unwrap(), Path::new(&long3));
    assert_eq!(fs::read_link(v.p("long4")).unwrap(), Path::new(&long4));
    assert!(fs::metadata(v.p("fast")).unwrap().is_dir(), "following a fast symlink");
    let _ = bs;

    // Hard links.
    fs::write(v.p("h1"), b"linked").unwrap();
    fs::hard_link(v.p("h1"), v.p("a/h2")).unwrap();
    fs::hard_link(v.p("h1"), v.p("e/h3")).unwrap();
    let m1 = fs::metadata(v.p("h1")).unwrap();
    assert_eq!(m1.nlink(), 3);
    assert_eq!(m1.ino(), fs::metadata(v.p("e/h3")).unwrap().ino());
    fs::remove_file(v.p("h1")).unwrap();
    assert_eq!(fs::metadata(v.p("a/h2")).unwrap().nlink(), 2);
    assert_eq!(fs::read(v.p("e/h3")).unwrap(), b"linked");

    // Renames: across directories, a directory across directories, replacing a file.
    fs::write(v.p("a/moveme"), b"moved").unwrap();
    fs::rename(v.p("a/moveme"), v.p("e/moved")).unwrap();
    assert!(fs::metadata(v.p("a/moveme")).is_err());
    assert_eq!(fs::read(v.p("e/moved")).unwrap(), b"moved");
    fs::rename(v.p("a/b/c"), v.p("e/c")).unwrap();
    assert_eq!(fs::metadata(v.p("a/b")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(v.p("e")).unwrap().nlink(), 3);
    assert!(fs::metadata(v.p("e/c/d/..")).unwrap().is_dir());
    assert_eq!(fs::metadata(v.p("e/c/..")).unwrap().ino(), fs::metadata(v.p("e")).unwrap().ino());
    fs::write(v.p("e/victim"), pattern(7, 50_000)).unwrap();
    fs::write(v.p("e/winner"), b"winner").unwrap();
    fs::rename(v.p("e/winner"), v.p("e/victim")).unwrap();
    assert_eq!(fs::read(v.p("e/victim")).unwrap(), b"winner");
    assert!(fs::metadata(v.p("e/winner")).is_err());

    // renameat2: NOREPLACE refuses an existing target, EXCHANGE swaps (also a dir and a file,
    // across directories).
    use nix::fcntl::{renameat2, RenameFlags};
    fs::write(v.p("x1"), b"one").unwrap();
    fs::write(v.p("e/x2"), b"two").unwrap();
    assert_eq!(renameat2(None, &v.p("x1"), None, &v.p("e/x2"), RenameFlags::RENAME_NOREPLACE), Err(Errno::EEXIST));
    renameat2(None, &v.p("x1"), None, &v.p("x3"), RenameFlags::RENAME_NOREPLACE).unwrap();
    renameat2(None, &v.p("x3"), None, &v.p("e/x2"), RenameFlags::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(v.p("x3")).unwrap(), b"two");
    assert_eq!(fs::read(v.p("e/x2")).unwrap(), b"one");
    fs::create_dir(v.p("a/xd")).unwrap();
    fs::write(v.p("a/xd/inside"), b"in").unwrap();
    renameat2(None, &v.p("a/xd"), None, &v.p("x3"), RenameFlags::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(v.p("x3/inside")).unwrap(), b"in");
    assert_eq!(fs::read(v.p("a/xd")).unwrap(), b"two");
    assert_eq!(fs::metadata(v.p("x3/..")).unwrap().ino(), fs::metadata(&v.mnt).unwrap().ino());
    assert_eq!(fs::metadata(v.p("a")).unwrap().nlink(), 3, "a lost xd (dir) and gained a file");

    // A directory over an empty one; a directory into its own subdirectory.
    fs::create_dir_all(v.p("r1/sub")).unwrap();
    fs::create_dir(v.p("r2")).unwrap();
    fs::rename(v.p("r1"), v.p("r2")).unwrap();
    assert!(fs::metadata(v.p("r2/sub")).unwrap().is_dir());
    assert!(fs::metadata(v.p("r1")).is_err());
    assert_eq!(errno_of(&fs::rename(v.p("r2"), v.p("r2/sub/inner")).unwrap_err()), Some(Errno::EINVAL));
    fs::write(v.p("r2/sub/f"), b"f").unwrap();
    fs::create_dir(v.p("r3")).unwrap();
    assert_eq!(errno_of(&fs::rename(v.p("r3"), v.p("r2")).unwrap_err()), Some(Errno::ENOTEMPTY));

    // rmdir of a non-empty directory.
    assert_eq!(errno_of(&fs::remove_dir(v.p("e/c")).unwrap_err()), Some(Errno::ENOTEMPTY));
    fs::remove_dir(v.p("e/c/d")).unwrap();
    fs::remove_dir(v.p("e/c")).unwrap();

    // Names of 255 bytes work, 256 do not.
    let n255 = "n".repeat(255);
    let n256 = "n".repeat(256);
    fs::write(v.p(&format!("a/{n255}")), b"long name").unwrap();
    assert_eq!(fs::read(v.p(&format!("a/{n255}"))).unwrap(), b"long name");
    assert_eq!(errno_of(&fs::write(v.p(&format!("a/{n256}")), b"x").unwrap_err()), Some(Errno::ENAMETOOLONG));
    assert_eq!(errno_of(&fs::create_dir(v.p(&n256)).unwrap_err()), Some(Errno::ENAMETOOLONG));

    // chmod, chown, utimensat with nanoseconds.
    fs::write(v.p("attrs"), b"attrs").unwrap();
    fs::set_permissions(v.p("attrs"), fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::chown(v.p("attrs"), Some(1234), Some(5678)).unwrap();
    use nix::sys::time::TimeSpec;
    let at = TimeSpec::new(1_000_000_000, 123_456_789);
    let mt = TimeSpec::new(1_500_000_000, 987_654_321);
    nix::sys::stat::utimensat(None, &v.p("attrs"), &at, &mt, nix::sys::stat::UtimensatFlags::FollowSymlink).unwrap();
    let am = fs::metadata(v.p("attrs")).unwrap();
    assert_eq!(am.mode() & 0o7777, 0o751, "chown cleared setuid");
    assert_eq!((am.uid(), am.gid()), (1234, 5678));
    assert_eq!((am.atime(), am.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((am.mtime(), am.mtime_nsec()), (1_500_000_000, 987_654_321));
    fs::set_permissions(v.p("attrs"), fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(v.p("attrs")).unwrap().mode() & 0o7777, 0o4751);

    // Extended attributes are not supported.
    let c = std::ffi::CString::new(v.p("attrs").into_os_string().into_encoded_bytes()).unwrap();
    let name = c"user.test";
    let r = unsafe { nix::libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!((r, Errno::last()), (-1, Errno::EOPNOTSUPP), "setxattr");
    let mut buf = [0u8; 64];
    let r = unsafe { nix::libc::getxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(r, -1, "getxattr");
    assert!(matches!(Errno::last(), Errno::EOPNOTSUPP | Errno::ENODATA), "getxattr: {}", Errno::last());
    let r = unsafe { nix::libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r <= 0, "listxattr lists nothing");
}

/// Runs `script` under sh as `uid`:`uid` with no supplementary groups; its output on failure.
fn as_user(uid: u32, script: &str) -> Result<String, String> {
    let id = uid.to_string();
    let out =
        run(Command::new("setpriv").args(["--reuid", &id, "--regid", &id, "--clear-groups", "sh", "-ec", script]));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(text(&out))
    }
}

/// What other users than root see through `-o allow_other` (default_permissions is on by
/// default): ownership from the caller, permission bits, sticky directories, set-id bits
/// dropped by a write of another user, EFBIG past the largest file the format holds.
#[test]
fn other_users_get_kernel_filesystem_semantics() {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("4096", "4096", 64 * MIB, &[]);
    // The test's tempdir must let the users reach the mountpoint.
    fs::set_permissions(v.mnt.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mount::new(&v.img, &v.mnt, "allow_other");
    fs::set_permissions(&v.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    let (public, private) = (v.p("public"), v.p("private"));
    fs::create_dir(&public).unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let (pd, pv) = (public.display(), private.display());

    // New files and directories belong to the caller.
    as_user(1000, &format!("umask 022; echo a > {pd}/a; mkdir {pd}/d")).unwrap();
    for name in ["a", "d"] {
        let md = fs::metadata(public.join(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000), "owner of {name}");
    }
    assert_eq!(fs::metadata(public.join("a")).unwrap().mode() & 0o777, 0o644);
    // Permission bits hold: another user cannot enter a private directory or write a 0644 file.
    let e = as_user(1000, &format!("ls {pv}")).unwrap_err();
    assert!(e.contains("Permission denied"), "ls of a 0700 directory: {e}");
    let e = as_user(1001, &format!("echo b >> {pd}/a")).unwrap_err();
    assert!(e.contains("Permission denied"), "write to another's 0644 file: {e}");
    // Sticky directory: only the owner (or the directory's owner) removes or renames an entry.
    let e = as_user(1001, &format!("rm -f {pd}/a")).unwrap_err();
    assert!(e.contains("Operation not permitted"), "rm of another's file in a sticky dir: {e}");
    let e = as_user(1001, &format!("mv {pd}/a {pd}/moved")).unwrap_err();
    assert!(e.contains("Operation not permitted"), "rename of another's file in a sticky dir: {e}");
    assert!(public.join("a").exists());
    as_user(1000, &format!("rm {pd}/a")).unwrap();

    // A write by another user drops set-user-ID and (group-executable) set-group-ID.
    let shared = public.join("setid");
    fs::write(&shared, b"x").unwrap();
    std::os::unix::fs::chown(&shared, Some(1000), Some(1000)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o6777)).unwrap();
    as_user(1001, &format!("echo y >> {}", shared.display())).unwrap();
    assert_eq!(fs::metadata(&shared).unwrap().mode() & 0o7777, 0o777, "set-id bits after another user's write");

    // The largest file: 2^32 - 1 clusters (cluster offsets are 32-bit). A write past it is
    // EFBIG, up to it works.
    let f = OpenOptions::new().create(true).write(true).open(v.p("big")).unwrap();
    let max = ((1u64 << 32) - 1) * 4096;
    assert_eq!(errno_of(&f.write_at(b"x", max).unwrap_err()), Some(Errno::EFBIG));
    f.write_at(b"x", max - 1).unwrap();
    assert_eq!(f.metadata().unwrap().len(), max);
    drop(f);
    fs::remove_file(v.p("big")).unwrap();
    unmount_and_check(m);
}

fn namespace_after(v: &Vol) {
    let ls = debugfs(&v.img, "ls -l /");
    for name in ["fifo", "null", "loop", "sock", "fast", "long3", "long4", "x3", "attrs"] {
        assert!(ls.split_whitespace().any(|w| w == name), "{name} missing from debugfs ls:\n{ls}");
    }
    assert_eq!(debugfs_cat(&v.img, "/e/victim"), b"winner");
    assert_eq!(debugfs_cat(&v.img, "/a/xd"), b"two");
    assert_eq!(debugfs_cat(&v.img, "/x3/inside"), b"in");
    let st = debugfs(&v.img, "stat /a/h2");
    assert!(st.contains("Link count: 2") || st.contains("Links: 2"), "{st}");
}

#[test]
fn namespace_every_kind_4k() {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("4096", "4096", 256 * MIB, &[]);
    let m = v.mount();
    namespace_workload(&v, 4096);
    unmount_and_check(m);
    namespace_after(&v);
    // A second mount sees the same tree.
    let m = v.mount();
    assert_eq!(fs::read_link(v.p("long4")).unwrap().as_os_str().len(), 4000);
    assert_eq!(fs::read(v.p("x3/inside")).unwrap(), b"in");
    unmount_and_check(m);
}

#[test]
fn namespace_every_kind_512() {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("512", "4096", 256 * MIB, &[]);
    let m = v.mount();
    namespace_workload(&v, 512);
    unmount_and_check(m);
    namespace_after(&v);
}

// ---------------------------------------------------------------------------------------------
// File data.

fn data_workload(v: &Vol) -> Vec<(&'static str, Vec<u8>)> {
    let mut expect = Vec::new();
    // Inline small file; one that grows past the inline size; a 3 MB file.
    fs::write(v.p("small"), b"hello, inline").unwrap();
    expect.push(("small", b"hello, inline".to_vec()));
    let grow = pattern(1, 10_000);
    {
        let mut f = File::create(v.p("grow")).unwrap();
        for chunk in grow.chunks(100) {
            f.write_all(chunk).unwrap();
        }
    }
    expect.push(("grow", grow));
    let big = pattern(2, 3 << 20);
    fs::write(v.p("big"), &big).unwrap();
    assert_eq!(fs::read(v.p("big")).unwrap(), big);
    expect.push(("big", big));

    // Sparse: one byte at 100 MiB.
    {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(v.p("sparse")).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"Z", 100 * MIB).unwrap();
    }
    let sm = fs::metadata(v.p("sparse")).unwrap();
    assert_eq!(sm.len(), 100 * MIB + 1);
    assert_eq!(sm.blocks(), 4096 / 512, "one cluster allocated");
    {
        let f = File::open(v.p("sparse")).unwrap();
        let fd = f.as_raw_fd();
        use nix::unistd::{lseek, Whence};
        assert_eq!(lseek(fd, 0, Whence::SeekData).unwrap(), (100 * MIB) as i64);
        assert_eq!(lseek(fd, 0, Whence::SeekHole).unwrap(), 0);
        assert_eq!(lseek(fd, (100 * MIB) as i64, Whence::SeekHole).unwrap(), (100 * MIB + 1) as i64);
        assert_eq!(lseek(fd, (100 * MIB + 1) as i64, Whence::SeekData), Err(Errno::ENXIO));
        let mut buf = vec![0xFFu8; 8192];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 50 * MIB).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    // Truncate down and up: bytes past the cut read back as zeros.
    for (name, len, cut) in [("trunc_inline", 200usize, 50usize), ("trunc_big", 1_000_000, 300_001)] {
        let data = pattern(3, len);
        fs::write(v.p(name), &data).unwrap();
        let f = OpenOptions::new().write(true).open(v.p(name)).unwrap();
        f.set_len(cut as u64).unwrap();
        assert_eq!(fs::read(v.p(name)).unwrap(), data[..cut]);
        f.set_len(len as u64).unwrap();
        let mut want = data[..cut].to_vec();
        want.resize(len, 0);
        assert_eq!(fs::read(v.p(name)).unwrap(), want, "{name} after truncate down and up");
        expect.push((name, want));
    }

    // Preallocated (unwritten) range, then a partial write inside it: the rest reads zeros.
    {
        use nix::fcntl::{fallocate, FallocateFlags};
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(v.p("prealloc")).unwrap();
        fallocate(f.as_raw_fd(), FallocateFlags::empty(), 0, 256 * 1024).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"in the middle", 100_000).unwrap();
        let mut want = vec![0u8; 256 * 1024];
        want[100_000..100_013].copy_from_slice(b"in the middle");
        assert!(fs::read(v.p("prealloc")).unwrap() == want);
        expect.push(("prealloc", want));
    }

    // O_TRUNC of a file with extents.
    fs::write(v.p("otrunc"), pattern(6, 100_000)).unwrap();
    OpenOptions::new().write(true).truncate(true).open(v.p("otrunc")).unwrap().write_all(b"short").unwrap();
    assert_eq!(fs::read(v.p("otrunc")).unwrap(), b"short");
    expect.push(("otrunc", b"short".to_vec()));

    // O_APPEND.
    fs::write(v.p("append"), b"start;").unwrap();
    for i in 0..3 {
        let mut f = OpenOptions::new().append(true).open(v.p("append")).unwrap();
        write!(f, "more{i};").unwrap();
    }
    {
        let mut f = OpenOptions::new().append(true).open(v.p("append")).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&vec![b'+'; 5000]).unwrap();
    }
    let mut app = b"start;more0;more1;more2;".to_vec();
    app.extend(vec![b'+'; 5000]);
    assert_eq!(fs::read(v.p("append")).unwrap(), app);
    expect.push(("append", app));

    // fallocate: default mode allocates and grows; KEEP_SIZE allocates only; PUNCH_HOLE zeroes
    // and frees.
    use nix::fcntl::{fallocate, FallocateFlags};
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(v.p("falloc")).unwrap();
    let fd = f.as_raw_fd();
    let before = free_clusters(&v.mnt);
    fallocate(fd, FallocateFlags::empty(), 0, MIB as i64).unwrap();
    let m = f.metadata().unwrap();
    assert_eq!(m.len(), MIB);
    assert_eq!(m.blocks(), MIB / 512);
    assert_eq!(before - free_clusters(&v.mnt), MIB / 4096);
    // KEEP_SIZE over a hole inside the file allocates without changing the size; past the end
    // of the file it is refused, since fsck.ocfs2 reports clusters wholly beyond i_size
    // (INODE_SPARSE_SIZE, ocfs2-format.md §15).
    f.set_len(2 * MIB).unwrap();
    fallocate(fd, FallocateFlags::FALLOC_FL_KEEP_SIZE, MIB as i64, MIB as i64).unwrap();
    let m = f.metadata().unwrap();
    assert_eq!((m.len(), m.blocks()), (2 * MIB, 2 * MIB / 512));
    let free_before = free_clusters(&v.mnt);
    assert_eq!(fallocate(fd, FallocateFlags::FALLOC_FL_KEEP_SIZE, 2 * MIB as i64, MIB as i64), Err(Errno::EOPNOTSUPP));
    let m = f.metadata().unwrap();
    assert_eq!((m.len(), m.blocks()), (2 * MIB, 2 * MIB / 512));
    assert_eq!(free_clusters(&v.mnt), free_before);
    let mut buf = vec![1u8; MIB as usize];
    (&f).read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "fallocated range reads zeros");
    // Write a pattern over the first MiB (converting unwritten extents), then punch a hole in it.
    let pat = pattern(4, MIB as usize);
    std::os::unix::fs::FileExt::write_all_at(&f, &pat, 0).unwrap();
    let before = free_clusters(&v.mnt);
    fallocate(fd, FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE, 65536 + 100, 131072)
        .unwrap();
    let mut want = pat.clone();
    want[65536 + 100..65536 + 100 + 131072].fill(0);
    let mut got = vec![0u8; MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 0).unwrap();
    assert!(got == want, "punched range reads zeros, the rest is intact");
    // Whole clusters inside [65636, 196708): 17..48 → 31 clusters.
    assert_eq!(free_clusters(&v.mnt) - before, 31, "punched clusters are freed");
    assert_eq!(f.metadata().unwrap().len(), 2 * MIB);
    drop(f);
    want.resize(2 * MIB as usize, 0);
    assert!(fs::read(v.p("falloc")).unwrap() == want);
    expect.push(("falloc", want));
    expect
}

fn data_test(bs: &str) {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new(bs, "4096", 256 * MIB, &[]);
    let m = v.mount();
    let expect = data_workload(&v);
    unmount_and_check(m);
    for (name, want) in &expect {
        let got = debugfs_cat(&v.img, &format!("/{name}"));
        assert!(&got == want, "debugfs cat /{name}: {} bytes, want {}", got.len(), want.len());
    }
    let st = debugfs(&v.img, "stat /small");
    assert!(st.contains("Dynamic Features: (0x1) InlineData"), "small file is inline:\n{st}");
    // Remount: the same bytes through FUSE.
    let m = v.mount();
    for (name, want) in &expect {
        assert!(&fs::read(v.p(name)).unwrap() == want, "{name} after remount");
    }
    unmount_and_check(m);
}

#[test]
fn file_data_4k() {
    data_test("4096");
}

#[test]
fn file_data_512() {
    data_test("512");
}

/// Seeded random writes, truncates and hole punches on one file, against a model in memory.
#[test]
fn random_file_ops_match_a_model() {
    if !have_ocfs2_tools() {
        return;
    }
    let seed: u64 = std::env::var("O2FS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_2024);
    eprintln!("random_file_ops_match_a_model: seed {seed} (O2FS_SEED to replay)");
    let v = Vol::new("512", "4096", 256 * MIB, &[]);
    let m = v.mount();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x >> 32
    };
    let mut model: Vec<u8> = Vec::new();
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(v.p("model")).unwrap();
    use nix::fcntl::{fallocate, FallocateFlags};
    for step in 0..1000 {
        let (a, b) = (next(), next());
        match a % 10 {
            0 => {
                let len = b % (6 * MIB);
                f.set_len(len).unwrap();
                model.resize(len as usize, 0);
            }
            1 => {
                let off = b % (6 * MIB);
                let len = next() % (300 * 1024) + 1;
                fallocate(
                    f.as_raw_fd(),
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    off as i64,
                    len as i64,
                )
                .unwrap();
                let (s, e) = ((off as usize).min(model.len()), ((off + len) as usize).min(model.len()));
                model[s..e].fill(0);
            }
            _ => {
                let off = b % (6 * MIB);
                let len = (next() % 20_000 + 1) as usize;
                let data = pattern(seed ^ step, len);
                std::os::unix::fs::FileExt::write_all_at(&f, &data, off).unwrap();
                if model.len() < off as usize + len {
                    model.resize(off as usize + len, 0);
                }
                model[off as usize..off as usize + len].copy_from_slice(&data);
            }
        }
        if step % 100 == 99 {
            assert!(fs::read(v.p("model")).unwrap() == model, "seed {seed}: content differs after step {step}");
        }
    }
    drop(f);
    unmount_and_check(m);
    let cat = debugfs_cat(&v.img, "/model");
    let first_diff = cat.iter().zip(&model).position(|(a, b)| a != b);
    assert!(
        cat == model,
        "seed {seed}: debugfs cat differs: {} bytes, model {}, first difference at {first_diff:?}",
        cat.len(),
        model.len()
    );
}

#[test]
fn unlinked_open_file_and_statfs() {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("4096", "4096", 256 * MIB, &[]);
    let m = v.mount();
    // statfs drops by 10 MB worth of clusters and recovers.
    let free0 = free_clusters(&v.mnt);
    let data = pattern(5, 10 << 20);
    fs::write(v.p("ten"), &data).unwrap();
    let used = free0 - free_clusters(&v.mnt);
    assert!((2560..2560 + 8).contains(&used), "10 MB took {used} clusters");
    fs::remove_file(v.p("ten")).unwrap();
    eventually("free clusters to recover after unlink", || free_clusters(&v.mnt) == free0);

    // An unlinked open file stays readable until closed; then its space is freed.
    fs::write(v.p("open"), &data).unwrap();
    let mut f = File::open(v.p("open")).unwrap();
    fs::remove_file(v.p("open")).unwrap();
    assert!(fs::metadata(v.p("open")).is_err());
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert!(got == data, "unlinked open file reads back");
    assert!(free_clusters(&v.mnt) < free0, "still allocated while open");
    drop(f);
    eventually("free clusters to recover after close", || free_clusters(&v.mnt) == free0);
    unmount_and_check(m);
}

// ---------------------------------------------------------------------------------------------
// Extent trees of depth ≥ 2.

fn tree_depth(img: &Path, path: &str) -> u32 {
    let st = debugfs(img, &format!("stat {path}"));
    st.lines()
        .find_map(|l| {
            l.trim().strip_prefix("Tree Depth:").and_then(|r| r.split_whitespace().next()).and_then(|d| d.parse().ok())
        })
        .unwrap_or_else(|| panic!("no Tree Depth in debugfs stat {path}:\n{st}"))
}

#[test]
fn thousands_of_extents_depth_two() {
    if !have_ocfs2_tools() {
        return;
    }
    const N: u64 = 3000;
    let v = Vol::new("512", "4096", 256 * MIB, &[]);
    let m = v.mount();
    {
        let f = File::create(v.p("frag")).unwrap();
        for i in 0..N {
            std::os::unix::fs::FileExt::write_all_at(&f, &pattern(i, 4096), 2 * i * 4096).unwrap();
        }
    }
    let f = File::open(v.p("frag")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (2 * N - 1) * 4096);
    assert_eq!(f.metadata().unwrap().blocks(), N * 8);
    let mut buf = vec![0u8; 8192];
    for i in 0..N {
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf[..(if i + 1 == N { 4096 } else { 8192 })], 2 * i * 4096)
            .unwrap();
        assert!(buf[..4096] == pattern(i, 4096)[..], "cluster {}", 2 * i);
        if i + 1 < N {
            assert!(buf[4096..].iter().all(|&b| b == 0), "hole at cluster {}", 2 * i + 1);
        }
    }
    drop(f);
    unmount_and_check(m);
    assert!(tree_depth(&v.img, "/frag") >= 2);
    assert_eq!(debugfs_cat(&v.img, "/frag")[2 * 1234 * 4096..][..4096], pattern(1234, 4096)[..]);

    let m = v.mount();
    let half = N * 4096;
    OpenOptions::new().write(true).open(v.p("frag")).unwrap().set_len(half).unwrap();
    let f = File::open(v.p("frag")).unwrap();
    assert_eq!(f.metadata().unwrap().blocks(), (N / 2) * 8);
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf[..4096], 2 * 700 * 4096).unwrap();
    assert!(buf[..4096] == pattern(700, 4096)[..]);
    drop(f);
    unmount_and_check(m);

    let m = v.mount();
    OpenOptions::new().write(true).open(v.p("frag")).unwrap().set_len(0).unwrap();
    assert_eq!(fs::metadata(v.p("frag")).unwrap().blocks(), 0);
    unmount_and_check(m);
    assert_eq!(tree_depth(&v.img, "/frag"), 0);
}

// ---------------------------------------------------------------------------------------------
// A directory with many entries.

#[test]
fn directory_with_many_entries() {
    if !have_ocfs2_tools() {
        return;
    }
    // Issue 3 asks for 100 000 entries; lookups go through the in-memory index (src/fs/dir.rs).
    const N: usize = 100_000;
    let v = Vol::new("4096", "4096", 1024 * MIB, &[]);
    let m = v.mount();
    fs::create_dir(v.p("big")).unwrap();
    let start = Instant::now();
    for i in 0..N {
        File::create(v.p(&format!("big/file-{i:06}"))).unwrap();
    }
    eprintln!("created {N} files in {:?}", start.elapsed());
    for i in (0..N).step_by(997) {
        assert!(fs::metadata(v.p(&format!("big/file-{i:06}"))).unwrap().is_file());
    }
    assert_eq!(fs::read_dir(v.p("big")).unwrap().count(), N);
    for i in (0..N).step_by(2) {
        fs::remove_file(v.p(&format!("big/file-{i:06}"))).unwrap();
    }
    let mut names: Vec<String> =
        fs::read_dir(v.p("big")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let want: Vec<String> = (1..N).step_by(2).map(|i| format!("file-{i:06}")).collect();
    assert!(names == want, "{} entries after unlinking half, want {}", names.len(), want.len());
    eprintln!("whole directory workload {:?}", start.elapsed());
    unmount_and_check(m);
    let ls = debugfs(&v.img, "ls /big");
    assert!(ls.contains("file-099999") && !ls.contains("file-099998"));
}

// ---------------------------------------------------------------------------------------------
// Filling the volume.

/// Writes 1 MiB chunks into 4 MiB files until ENOSPC, then 4 KiB chunks until ENOSPC again;
/// returns the bytes written and how many writes were short. A write that fails must leave its
/// file's size alone.
fn fill(dir: &Path) -> (u64, usize) {
    let data = pattern(9, MIB as usize);
    let mut chunk = MIB as usize;
    let mut total = 0u64;
    let mut short = 0;
    let mut n = 0;
    loop {
        n += 1;
        let path = dir.join(format!("fill{n:04}"));
        let mut f = match File::create(&path) {
            Ok(f) => f,
            Err(e) if errno_of(&e) == Some(Errno::ENOSPC) => return (total, short),
            Err(e) => panic!("create fill{n}: {e}"),
        };
        let mut written = 0u64;
        while written < 4 * MIB {
            match f.write(&data[..chunk]) {
                Ok(k) => {
                    written += k as u64;
                    total += k as u64;
                    short += usize::from(k < chunk);
                }
                Err(e) if errno_of(&e) == Some(Errno::ENOSPC) => {
                    assert_eq!(f.metadata().unwrap().len(), written, "{} after a failed write", path.display());
                    if chunk == 4096 {
                        return (total, short);
                    }
                    chunk = 4096;
                }
                Err(e) => panic!("write fill{n}: {e}"),
            }
        }
    }
}

/// Removes the files `fill` made.
fn remove_fills(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("fill") {
            fs::remove_file(e.path()).unwrap();
        }
    }
}

#[test]
fn fill_the_volume_twice() {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("4096", "4096", 64 * MIB, &[]);
    let m = v.mount();
    let (first, short) = fill(&v.mnt);
    assert!(first > 16 * MIB, "only {first} bytes fit");
    // The 1 MiB write that met the full volume wrote what fit, as kernel filesystems do.
    assert_eq!(short, 1, "short writes");
    assert!(free_clusters(&v.mnt) < 16, "volume not full: {} free clusters", free_clusters(&v.mnt));
    unmount_and_check(m);

    let m = v.mount();
    remove_fills(&v.mnt);
    let (second, _) = fill(&v.mnt);
    let diff = first.abs_diff(second) as f64 / first as f64;
    assert!(diff <= 0.05, "first fill {first} bytes, second {second}");
    unmount_and_check(m);
}

/// Clusters freed by one file and taken by another must read as zeros wherever the new file
/// never wrote: the allocator zeroes only what the write that takes them does not cover.
#[test]
fn reused_clusters_read_zeros_where_never_written() {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("4096", "65536", 32 * MIB, &[]);
    let m = v.mount();
    // Every free cluster gets nonzero bytes, then goes back to the allocator.
    fill(&v.mnt);
    remove_fills(&v.mnt);
    let mut expected = Vec::new();
    for i in 0..80u64 {
        let path = v.p(&format!("reuse{i:03}"));
        let f = OpenOptions::new().create(true).read(true).write(true).open(&path).unwrap();
        let mut model = Vec::new();
        if i % 2 == 1 {
            // Unwritten extents turned written by a small write inside them.
            nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, 131072).unwrap();
            model.resize(131072, 0);
        }
        // Small writes at unaligned offsets in fresh clusters, one across a cluster boundary.
        for (off, len) in [(5000 + i, 100), (65530, 12), (200_000 + 7 * i, 10)] {
            let data = pattern(i * 3 + off, len as usize);
            f.write_all_at(&data, off).unwrap();
            let end = (off + len) as usize;
            model.resize(model.len().max(end), 0);
            model[off as usize..end].copy_from_slice(&data);
        }
        expected.push((path, model));
    }
    // Read back from the volume, not from the kernel's page cache.
    unmount_and_check(m);
    let m = v.mount();
    for (path, model) in &expected {
        let got = fs::read(path).unwrap();
        let first_bad = got.iter().zip(model).position(|(a, b)| a != b);
        assert!(
            got.len() == model.len() && first_bad.is_none(),
            "{}: first differing byte {first_bad:?}",
            path.display()
        );
    }
    unmount_and_check(m);
}

// ---------------------------------------------------------------------------------------------
// Images made by mkfs.ocfs2.

#[test]
fn mkfs_ocfs2_images_mount() {
    if !have_ocfs2_tools() {
        return;
    }
    for local in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let img = sparse_image(tmp.path(), "ocfs2.img", 256 * MIB);
        mkfs_ocfs2(&img, "4096", "4096", 2, local);
        let v = Vol::at(tmp, img);
        let m = v.mount();
        fs::create_dir(v.p("dir")).unwrap();
        let data = pattern(11, 200_000);
        fs::write(v.p("dir/file"), &data).unwrap();
        fs::write(v.p("dir/small"), b"small").unwrap();
        std::os::unix::fs::symlink("dir/file", v.p("link")).unwrap();
        fs::rename(v.p("dir/small"), v.p("small")).unwrap();
        for i in 0..50 {
            fs::write(v.p(&format!("dir/f{i}")), format!("{i}")).unwrap();
        }
        unmount_and_check(m);
        assert!(debugfs_cat(&v.img, "/dir/file") == data, "local={local}");
        assert_eq!(debugfs_cat(&v.img, "/small"), b"small");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input.

/// `o2fs mount -f IMG DIR` must fail by itself within 20 s; returns its stderr. No mount may be
/// left behind.
fn mount_fails(img: &Path, dir: &Path) -> String {
    match Mount::try_new(img, dir, "") {
        Ok(mut m) => {
            let _ = m.unmount();
            panic!("o2fs mounted {}", img.display());
        }
        Err(e) => {
            assert!(!is_mountpoint(dir), "a mount was left on {}", dir.display());
            e
        }
    }
}

#[test]
fn bad_images_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();

    // Truncated: a good volume cut to 1 MiB.
    let trunc = tmp.path().join("trunc.img");
    let out = run(Command::new(bin("mkfs.o2fs"))
        .args(["-q", "-b", "4096", "-C", "4096", "-M", "local", "-N", "1", "--size", "64M"])
        .arg(&trunc));
    assert!(out.status.success(), "{}", text(&out));
    File::options().write(true).open(&trunc).unwrap().set_len(MIB).unwrap();
    let e = mount_fails(&trunc, &mnt);
    assert!(e.contains("superblock"), "truncated image: {e}");

    // All zeros.
    let zero = sparse_image(tmp.path(), "zero.img", 64 * MIB);
    let e = mount_fails(&zero, &mnt);
    assert!(e.to_lowercase().contains("ocfs2"), "all-zero image: {e}");

    // Random bytes.
    let rnd = tmp.path().join("random.img");
    fs::write(&rnd, pattern(13, 4 * MIB as usize)).unwrap();
    let e = mount_fails(&rnd, &mnt);
    assert!(e.to_lowercase().contains("ocfs2"), "random image: {e}");

    // The daemonising path reports the error from its parent, and exits non-zero.
    let out = run(Command::new(bin("o2fs")).arg("mount").arg(&zero).arg(&mnt));
    if is_mountpoint(&mnt) {
        let _ = run(Command::new("fusermount3").arg("-u").arg(&mnt));
        panic!("the all-zero image was mounted by the daemonising o2fs mount");
    }
    assert!(!out.status.success() && text(&out).to_lowercase().contains("ocfs2"), "daemonising mount: {}", text(&out));

    // An unsupported incompat feature: xattr (0x200) in s_feature_incompat (superblock 0xC0+0x20).
    let x = tmp.path().join("xattr.img");
    let out = run(Command::new(bin("mkfs.o2fs"))
        .args(["-q", "-b", "4096", "-C", "4096", "-M", "local", "-N", "1", "--size", "64M"])
        .arg(&x));
    assert!(out.status.success(), "{}", text(&out));
    {
        let mut f = File::options().read(true).write(true).open(&x).unwrap();
        let off = 2 * 4096 + 0xC0 + 0x20 + 1;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut b).unwrap();
        b[0] |= 0x02;
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&b).unwrap();
    }
    let e = mount_fails(&x, &mnt);
    assert!(e.contains("xattr"), "xattr volume: {e}");
}

// ---------------------------------------------------------------------------------------------
// readdir offsets under concurrent change.

/// One getdents64 call with a small buffer: (d_off, name) pairs; empty at the end.
fn getdents(fd: i32, buf: &mut [u8]) -> Vec<(i64, String)> {
    let n = unsafe { nix::libc::syscall(nix::libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0, "getdents64: {}", Errno::last());
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < n as usize {
        let d_off = i64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap()) as usize;
        let name_bytes = &buf[at + 19..at + reclen];
        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
        out.push((d_off, String::from_utf8_lossy(&name_bytes[..end]).into_owned()));
        at += reclen;
    }
    out
}

#[test]
fn readdir_offsets_stay_stable_under_change() {
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("4096", "4096", 256 * MIB, &[]);
    let m = v.mount();
    let d = v.p("d");
    fs::create_dir(&d).unwrap();
    const N: usize = 600;
    for i in 0..N {
        fs::write(d.join(format!("stay-{i:04}-{}", "x".repeat(i % 40))), b"").unwrap();
    }
    // Every third entry is removed during the walk (some before, some after it was seen); new
    // entries are added all along.
    let removable = |i: usize| i.is_multiple_of(3);
    let dirf = File::open(&d).unwrap();
    let mut buf = vec![0u8; 512];
    let mut seen: Vec<String> = Vec::new();
    let mut step = 0usize;
    loop {
        let batch = getdents(dirf.as_raw_fd(), &mut buf);
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.into_iter().map(|(_, n)| n));
        for k in 0..4 {
            let i = (step * 37 + k * 151) % N;
            if removable(i) {
                let _ = fs::remove_file(d.join(format!("stay-{i:04}-{}", "x".repeat(i % 40))));
            }
            fs::write(d.join(format!("new-{step:04}-{k}-{}", "y".repeat((step + k) % 30))), b"").unwrap();
        }
        step += 1;
        assert!(step < 10_000, "readdir does not end");
    }
    assert!(step > 10, "the walk took only {step} batches");
    let mut counts = std::collections::HashMap::new();
    for n in &seen {
        *counts.entry(n.clone()).or_insert(0) += 1;
    }
    let dup: Vec<_> = counts.iter().filter(|(_, &c)| c > 1).collect();
    assert!(dup.is_empty(), "returned twice: {dup:?}");
    for i in (0..N).filter(|&i| !removable(i)) {
        let name = format!("stay-{i:04}-{}", "x".repeat(i % 40));
        assert!(counts.contains_key(&name), "{name} existed throughout but was skipped");
    }
    assert!(counts.contains_key(".") && counts.contains_key(".."));
    drop(dirf);
    unmount_and_check(m);
}

// ---------------------------------------------------------------------------------------------
// A clustered volume mounted on one node heartbeats, and refuses a second mount.

#[test]
fn clustered_volume_heartbeats_while_mounted() {
    if !have_ocfs2_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("c.img");
    let out = run(Command::new(bin("mkfs.o2fs")).args(["-q", "-N", "2", "-L", "hb", "--size", "128M"]).arg(&img));
    assert!(out.status.success(), "{}", text(&out));
    let v = Vol::at(tmp, img);
    let mounted = |v: &Vol| text(&run(Command::new(bin("o2fs")).arg("mounted").arg(&v.img)));
    assert!(mounted(&v).contains("Not mounted"), "{}", mounted(&v));
    let m = v.mount();
    let listing = mounted(&v);
    assert!(listing.lines().nth(1).is_some_and(|l| l.trim_end().ends_with(" 0")), "{listing}");
    assert!(
        debugfs(&v.img, "hb").lines().any(|l| l.trim_start().starts_with("0:")),
        "debugfs.ocfs2 -R hb shows no node 0"
    );
    // The same image cannot be mounted twice.
    let other = v._tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let second = Mount::try_new(&v.img, &other, "");
    assert!(second.as_ref().is_err_and(|e| e.contains("already mounted")), "second mount: {:?}", second.err());
    unmount_and_check(m);
    assert!(mounted(&v).contains("Not mounted"));
}

/// The kernel shows the mount as type fuse.o2fs (as fstab and `mount -t` name it), so
/// `umount -t fuse.o2fs` finds it.
#[test]
fn mounts_as_type_fuse_o2fs() {
    let v = Vol::new("4096", "4096", 64 * MIB, &[]);
    let m = v.mount();
    assert_eq!(mount_type(&v.mnt).as_deref(), Some("fuse.o2fs"));
    let out = run(Command::new("umount").args(["-t", "fuse.o2fs"]).arg(&v.mnt));
    assert!(out.status.success(), "umount -t fuse.o2fs: {}", text(&out));
    // The daemon must still end cleanly (exit 0) and leave the volume clean.
    unmount_and_check(m);
}

// ---------------------------------------------------------------------------------------------
// A truncate log left by another OCFS2 driver is flushed at mount.

#[test]
fn truncate_log_records_are_freed_at_mount() {
    use o2fs::format::bytes::{le32, put_le16, put_le32};
    use o2fs::fs::sysfile::SystemFile;
    if !have_ocfs2_tools() {
        return;
    }
    let v = Vol::new("4096", "4096", 64 * MIB, &[]);
    let dev = std::sync::Arc::new(o2fs::dev::FileDevice::open(&v.img, true).unwrap());
    let vol = o2fs::fs::Volume::open(dev.clone()).unwrap();
    let (gd_blk, gb_blk, tl_blk) = (
        vol.sb().first_cluster_group,
        vol.system_file_blkno(SystemFile::GlobalBitmap).unwrap(),
        vol.system_file_blkno(SystemFile::TruncateLog(0)).unwrap(),
    );
    // Five clusters near the end of the volume, marked used and listed in the truncate log
    // (§6.5 counts truncate-log clusters as in use; §7.2 gives the layout).
    let start = vol.geo.total_clusters - 10;
    let edit = |blk: u64, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = vol.read_block(blk).unwrap();
        f(&mut b);
        vol.write_block(blk, &b).unwrap();
    };
    edit(gd_blk, &|b| {
        for c in start..start + 5 {
            b[0x40 + c as usize / 8] |= 1 << (c % 8);
        }
        let free = u16::from_le_bytes([b[0x0C], b[0x0D]]) - 5;
        put_le16(b, 0x0C, free);
    });
    edit(gb_blk, &|b| {
        let (used, free) = (le32(b, 0xB8), le32(b, 0xD0));
        put_le32(b, 0xB8, used + 5); // i_used
        put_le32(b, 0xD0, free - 5); // chain 0 c_free
    });
    edit(tl_blk, &|b| {
        put_le16(b, 0xC2, 1); // tl_used
        put_le32(b, 0xC8, start);
        put_le32(b, 0xCC, 5);
    });
    drop(vol);
    assert_fsck_ocfs2_clean(&v.img);
    let used = |img: &Path| {
        debugfs(img, "stat //global_bitmap").lines().find(|l| l.contains("Bitmap Total")).unwrap_or("").to_string()
    };
    let before = used(&v.img);
    unmount_and_check(v.mount());
    assert!(debugfs(&v.img, "stat //truncate_log:0000").contains("Used: 0"), "the truncate log was not emptied");
    assert_ne!(used(&v.img), before, "the logged clusters were not freed");
}
