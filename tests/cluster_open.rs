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

/// Clusters free as a node's mount reports them, and how many `bytes` fill.
fn free_and_clusters(mnt: &Path, bytes: usize) -> (u64, u64) {
    let st = statvfs(mnt);
    (st.f_bfree, bytes as u64 / st.f_frsize)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `last_step` (a close or an unlink) and waits until `mnt` counts the clusters of the
/// `bytes` it frees as free again (the nodes allocate nothing meanwhile). A close does not
/// wait for the daemon's release, hence the wait.
fn frees(mnt: &Path, bytes: usize, why: &str, last_step: impl FnOnce()) {
    let (free, clusters) = free_and_clusters(mnt, bytes);
    last_step();
    wait_until(why, Duration::from_secs(20), || free_and_clusters(mnt, 0).0 >= free + clusters);
}

/// Runs `step` (a close that is not the last) and checks that `mnt` got nothing of `bytes` back.
fn keeps(mnt: &Path, bytes: usize, why: &str, step: impl FnOnce()) {
    let (free, clusters) = free_and_clusters(mnt, bytes);
    step();
    std::thread::sleep(Duration::from_millis(300));
    assert!(free_and_clusters(mnt, 0).0 < free + clusters, "{why}");
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
    for slot in 0..4 {
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
    let (f, ino) = open_then_unlink(&d0, &d0, &d1);
    // A second handle on the holder (a second open): the first close is not the last.
    let second = std::fs::File::open(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f))).unwrap();
    keeps(&d0, SIZE, "still open through the second handle", || drop(f));
    frees(&d0, SIZE, "the clusters coming back after the last close", || drop(second));
    let mut freed = vec![ino];
    freed.extend((0..24).map(|round| open_unlink_round(&d0, &d1, round)));
    // The replacements go too: nothing of the rounds is left.
    for round in (0..24).filter(|r| r % 8 >= 4) {
        let name = d1.join(format!("round{round}"));
        freed.push(std::fs::metadata(&name).unwrap().ino());
        std::fs::remove_file(name).unwrap();
    }
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
    freed.into_iter().for_each(|ino| assert_freed(&s.image, ino));
}

/// One round of open, unlink (or rename over) and close between two nodes, the roles varied by
/// `round`: the unlinking node may have written the file (keeping its open lock after its close), the
/// other may hold it open alone, with the unlinking node, or only have read it before the
/// unlink (then the unlink frees it at once). Returns the inode number, freed by the end.
fn open_unlink_round(d0: &Path, d1: &Path, round: usize) -> u64 {
    let (holder, unlinker) = if round % 2 == 0 { (d0, d1) } else { (d1, d0) };
    let name = format!("round{round}");
    let data = vec![round as u8; 256 << 10];
    std::fs::write(unlinker.join(&name), &data).unwrap();
    assert!(common::nodes::read(&holder.join(&name)) == data);
    let ino = std::fs::metadata(holder.join(&name)).unwrap().ino();
    // Half the rounds replace the name by a rename instead of removing it.
    let replacement = unlinker.join(format!("{name}.new"));
    if round % 8 >= 4 {
        std::fs::write(&replacement, b"replacement").unwrap();
    }
    let unlink = || match round % 8 >= 4 {
        true => std::fs::rename(&replacement, unlinker.join(&name)).unwrap(),
        false => std::fs::remove_file(unlinker.join(&name)).unwrap(),
    };
    if round % 4 == 3 {
        frees(d0, data.len(), "freed at the unlink: the other node only read it", unlink);
        return ino;
    }
    let mut held = std::fs::File::open(holder.join(&name)).unwrap();
    let also = (round % 4 == 2).then(|| std::fs::File::open(unlinker.join(&name)).unwrap());
    unlink();
    let mut all = Vec::new();
    held.read_to_end(&mut all).unwrap();
    assert!(all == data, "round {round}: the holder reads it whole after the unlink");
    match also {
        Some(also) => {
            keeps(d0, data.len(), "still open on the unlinking node", || drop(held));
            frees(d0, data.len(), "freed at the unlinking node's close", || drop(also));
        }
        None => frees(d0, data.len(), "freed at the holder's close", || drop(held)),
    }
    ino
}

/// Waits until one of `mounts` logs that it recovered the slot of the node it names.
fn wait_recovered(mounts: &[&common::Mount], slot: u64) {
    let done = format!("slot {slot} recovered");
    wait_until("the slot's recovery", Duration::from_secs(60), || mounts.iter().any(|m| m.stderr().contains(&done)));
}

fn slot_of(m: &common::Mount) -> u64 {
    common::logged_number(&m.stderr(), "mounted in slot ").expect("a node logs its slot")
}

/// Three nodes. The node holding the file open dies: a survivor frees it once the dead node's
/// open lock is gone with it (the orphan is in the unlinking survivor's slot). Then a node
/// mounting, which scans every slot's orphans, and the recovery of the unlinking node, killed,
/// leave the orphan to the node that still has it open (their try-locks fail, or it is open
/// on the recovering node itself); it reads on and frees it from the dead node's orphan
/// directory at its last close.
#[test]
fn a_killed_nodes_open_files_are_freed_by_the_survivor() {
    let s = Shared::with_nodes("127.0.18", 3);
    let (mut m0, d0) = s.mount(0);
    let (mut m1, d1) = s.mount(1);
    let (mut m2, _) = s.mount(2);
    let (f, ino) = open_then_unlink(&d1, &d0, &d1);
    let slot0 = slot_of(&m0);
    m0.kill();
    drop(f);
    wait_recovered(&[&m1, &m2], slot0);

    let (mut m0, d0) = s.mount(0);
    let (mut g, ino2) = open_then_unlink(&d0, &d0, &d1);
    m2.unmount().unwrap();
    let (mut m2, _) = s.mount(2);
    let slot1 = slot_of(&m1);
    m1.kill();
    wait_recovered(&[&m0, &m2], slot1);
    let mut all = Vec::new();
    g.seek(SeekFrom::Start(0)).unwrap();
    g.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), SIZE + 25, "still readable after a mount and the unlinking node's recovery");
    frees(&d0, SIZE, "the clusters coming back after the last close", || drop(g));
    s.unmount_and_judge(&mut [&mut m0, &mut m2]);
    assert_freed(&s.image, ino);
    assert_freed(&s.image, ino2);
}

#[test]
fn on_the_mirror_an_unlinked_open_file_is_freed_at_its_last_close() {
    let s = OnMirror::new("127.0.19");
    let [(mut m0, d0), (mut m1, d1)] = s.mount_both();
    let (f, ino) = open_then_unlink(&d1, &d1, &d0);
    frees(&d1, SIZE, "the clusters coming back after the last close", || drop(f));
    s.wait_both_in_sync();
    s.unmount_and_compare(&mut m0, &mut m1);
    assert_freed(&s.replica(0), ino);
}
