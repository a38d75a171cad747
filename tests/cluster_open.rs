//! Open locks across nodes: a file unlinked on one node while open on another stays readable
//! and writable there until its last close, then is freed (its inode and clusters back, no
//! orphan left) — also when the node holding it open is killed, and on the mirror. Every image
//! is judged by fsck.ocfs2 afterwards.

mod common;

use common::nodes::{OnMirror, Shared};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const SIZE: usize = 3 << 20;

fn content() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8).collect()
}

/// statfs of a node's mount.
fn statvfs(mnt: &Path) -> libc::statvfs {
    let path = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct it is given; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0, "statvfs {}", mnt.display());
    st
}

/// Free clusters as a node's mount reports them.
fn free_clusters(mnt: &Path) -> u64 {
    statvfs(mnt).f_bfree
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `victim` on `writer` (durably), opens it on `holder`, unlinks it on `unlinker`: the
/// holder still reads all of it and writes to it, and neither node lists it. Returns the
/// holder's handle and the inode number.
fn open_then_unlink(writer: &Path, holder: &Path, unlinker: &Path) -> (std::fs::File, u64) {
    common::nodes::write_synced(&writer.join("victim"), &content()).unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(holder.join("victim")).unwrap();
    let ino = f.metadata().unwrap().ino();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    std::fs::remove_file(unlinker.join("victim")).unwrap();
    for d in [holder, unlinker] {
        let names: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!names.iter().any(|n| n == "victim"), "{} still lists it: {names:?}", d.display());
        assert!(!d.join("victim").exists());
    }
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut all).unwrap();
    assert!(all == content(), "the holder reads the unlinked file whole");
    f.write_all(b"appended after the unlink").unwrap();
    f.sync_all().unwrap();
    let mut tail = vec![0u8; 25];
    f.seek(SeekFrom::Start(SIZE as u64)).unwrap();
    f.read_exact(&mut tail).unwrap();
    assert_eq!(tail, b"appended after the unlink");
    (f, ino)
}

/// After the unmount: no orphan in any slot's orphan directory, and inode `ino` freed.
fn assert_freed(image: &Path, ino: u64) {
    for slot in 0..2 {
        let orphans = common::debugfs(image, &format!("ls //orphan_dir:{slot:04}"));
        let names: Vec<&str> = orphans.split_whitespace().filter(|w| w.starts_with("0000")).collect();
        assert!(names.is_empty(), "orphans left in slot {slot}: {orphans}");
    }
    let dev: std::sync::Arc<dyn o2fs::dev::BlockDevice> =
        std::sync::Arc::new(o2fs::dev::FileDevice::open(image, false).unwrap());
    let vol = o2fs::fs::Volume::open(dev).unwrap();
    assert!(!vol.read_inode(ino).unwrap().is_valid(), "inode {ino} is freed");
}

#[test]
fn unlinked_on_one_node_stays_readable_on_the_other_until_its_last_close() {
    let s = Shared::new("127.0.17");
    let (mut m0, d0) = s.mount(0);
    let (mut m1, d1) = s.mount(1);
    let before = free_clusters(&d0);
    let (f, ino) = open_then_unlink(&d0, &d0, &d1);
    assert!(free_clusters(&d0) < before, "the open file keeps its clusters");
    // A second handle on the holder: the first close is not the last.
    let second = std::fs::File::open(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f))).unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(300));
    assert!(free_clusters(&d0) < before, "still open through the second handle");
    drop(second);
    wait_until("the clusters coming back after the last close", Duration::from_secs(20), || {
        free_clusters(&d0) == before
    });
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
    assert_freed(&s.image, ino);
}

/// The node holding the file open dies: the survivor (which unlinked it, so the orphan is in
/// its own slot) frees it once the dead node's open lock is gone with it. Then the reverse:
/// the unlinking node dies and the survivor, which holds the file open, recovers its slot
/// without freeing it, reads it on, and frees it from the dead node's orphan directory at its
/// last close.
#[test]
fn a_killed_nodes_open_files_are_freed_by_the_survivor() {
    let s = Shared::new("127.0.18");
    let (mut m0, d0) = s.mount(0);
    let (mut m1, d1) = s.mount(1);
    let (f, ino) = open_then_unlink(&d1, &d0, &d1);
    let slot0 = common::logged_number(&m0.stderr(), "mounted in slot ").expect("n0 logs its slot");
    m0.kill();
    drop(f);
    wait_until("n1 recovering n0", Duration::from_secs(60), || {
        m1.stderr().contains(&format!("slot {slot0} recovered"))
    });
    assert!(!d1.join("victim").exists());

    let (mut m0, d0) = s.mount(0);
    let (g, ino2) = open_then_unlink(&d0, &d0, &d1);
    let slot1 = common::logged_number(&m1.stderr(), "mounted in slot ").expect("n1 logs its slot");
    m1.kill();
    let recovered = format!("slot {slot1} recovered");
    wait_until("n0 recovering n1", Duration::from_secs(60), || m0.stderr().contains(&recovered));
    let mut g = g;
    let mut all = Vec::new();
    g.seek(SeekFrom::Start(0)).unwrap();
    g.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), SIZE + 25, "still readable after the unlinking node's recovery");
    let (free, cluster) = (free_clusters(&d0), statvfs(&d0).f_frsize);
    drop(g);
    wait_until("the clusters coming back after the last close", Duration::from_secs(20), || {
        free_clusters(&d0) >= free + SIZE as u64 / cluster
    });
    s.unmount_and_judge(&mut [&mut m0]);
    assert_freed(&s.image, ino);
    assert_freed(&s.image, ino2);
}

#[test]
fn on_the_mirror_an_unlinked_open_file_is_freed_at_its_last_close() {
    let s = OnMirror::new("127.0.19");
    let [(mut m0, d0), (mut m1, d1)] = s.mount_both();
    let before = free_clusters(&d1);
    let (f, ino) = open_then_unlink(&d1, &d1, &d0);
    drop(f);
    wait_until("the clusters coming back after the last close", Duration::from_secs(20), || {
        free_clusters(&d1) == before
    });
    s.wait_both_in_sync();
    s.unmount_and_compare(&mut m0, &mut m1);
    assert_freed(&s.replica(0), ino);
}
