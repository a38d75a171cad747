//! What a file creation costs on a cluster mount (issue 6, "Lock costs"), counted rather than
//! timed: lock messages and FUSE requests per create of a small file, as bench/cluster.sh's
//! create.py makes them (open O_CREAT|O_EXCL, write 1 KiB, close).
//! Nodes on 127.0.16.1-4.

mod common;

use common::nodes::Shared;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Enough files to go past the first inode group mkfs made for slot 0 (1024 inodes on the
/// bench's volume, straddling two lock-mastery chunks of different masters), and to grow each
/// node's inode allocator twice.
const FILES: usize = 3000;

/// Two nodes, on `addresses`, on one image made as bench/cluster.sh makes it (1 GiB, 4 slots,
/// 4K blocks and clusters).
fn bench_volume(addresses: [&str; 2]) -> Shared {
    let s = Shared::at(&addresses.map(String::from));
    std::fs::File::create(&s.image).unwrap().set_len(1 << 30).unwrap();
    let out = std::process::Command::new(common::bin("mkfs.o2fs"))
        .args(["-q", "-N", "4", "-b", "4K", "-C", "4K", "-F"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.o2fs: {}", String::from_utf8_lossy(&out.stderr));
    s
}

/// Creates `n` files of 1 KiB in `dir` as bench/cluster.sh's create.py does.
fn create(dir: &Path, prefix: &str, n: usize) {
    let payload = [b'x'; 1024];
    for i in 0..n {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dir.join(format!("{prefix}{i:06}")))
            .unwrap();
        f.write_all(&payload).unwrap();
    }
}

fn lock_messages(s: &Shared, i: usize) -> u64 {
    let st = s.status(i);
    st["lock_messages_sent"].as_u64().unwrap_or_else(|| panic!("no lock_messages_sent in {st}"))
}

/// Two nodes creating files at once, each in a directory of its own, send next to no lock
/// message: every new inode is placed where its creator masters its locks (metadata and open
/// lock), including the inodes of the first group mkfs made for each slot, whatever chunks it
/// spans, and an inode allocator grows from its node's local-alloc window. What is left is
/// the global bitmap's lock, taken once by each node to open its window.
#[test]
fn creates_in_separate_directories_send_next_to_no_lock_message() {
    let s = bench_volume(["127.0.16.1", "127.0.16.2"]);
    // n1 first: it takes slot 0, whose first inode group (mkfs made it) begins in a chunk
    // n1 masters and ends in one n0 masters.
    let (mut m1, b) = s.mount(1);
    let (mut m0, a) = s.mount(0);
    let dirs = [a.join("d0"), b.join("d1")];
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
        create(d, "warm", 1);
    }
    let before = [lock_messages(&s, 0), lock_messages(&s, 1)];
    std::thread::scope(|sc| {
        for d in &dirs {
            sc.spawn(move || create(d, "f", FILES));
        }
    });
    let after = [lock_messages(&s, 0), lock_messages(&s, 1)];
    for i in 0..2 {
        let sent = after[i] - before[i];
        assert!(sent <= 6, "n{i} sent {sent} lock messages during {FILES} creates");
    }
    for d in [&a, &b] {
        for sub in ["d0", "d1"] {
            assert_eq!(std::fs::read_dir(d.join(sub)).unwrap().count(), FILES + 1, "{sub} seen from {d:?}");
        }
    }
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
}

/// FUSE requests node `i`'s daemon served so far, by kind (`o2fs status --json`), once every
/// file created has had its RELEASE (the kernel sends it after close returns).
fn requests(s: &Shared, i: usize) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = s.status(i);
        let counts = st["fuse_requests"].clone();
        if counts["release"] == counts["create"] || std::time::Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The FUSE requests one create of a small file costs a cluster mount, by kind: LOOKUP (the
/// new name), CREATE, WRITE, FLUSH, RELEASE and two GETATTRs: the directory's (for the next
/// path walk's permission check: the create changed it) and the new file's (its CREATE reply
/// carries attribute TTL 0 on a cluster mount, see `fuse::kcache`) — one more than a
/// single-node mount.
#[test]
fn requests_per_create() {
    const N: u64 = 300;
    let s = bench_volume(["127.0.16.3", "127.0.16.4"]);
    let (mut m0, a) = s.mount(0);
    let (mut m1, _) = s.mount(1);
    let d = a.join("d");
    std::fs::create_dir(&d).unwrap();
    create(&d, "warm", 1);
    let before = requests(&s, 0);
    create(&d, "f", N as usize);
    let after = requests(&s, 0);
    let n = |kind: &str| {
        let count = |v: &serde_json::Value| v[kind].as_u64().unwrap_or_else(|| panic!("no {kind} count in {v}"));
        count(&after) - count(&before)
    };
    let spent = format!("{N} creates took {after} requests after {before}");
    for kind in ["create", "write", "flush", "release"] {
        assert_eq!(n(kind), N, "{kind}: {spent}");
    }
    assert_eq!(n("open") + n("setattr"), 0, "{spent}");
    assert!(n("lookup") <= N + 2, "{spent}");
    assert!(n("getattr") <= 2 * N + 2, "{spent}");
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
}

/// A file just created on one node and changed at once on the other: the creator's very next
/// fstat and stat show the change (the CREATE reply's attributes are not kept: TTL 0).
#[test]
fn a_change_right_after_a_create_on_the_other_node_is_seen_at_once() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = bench_volume(["127.0.16.5", "127.0.16.6"]);
    let (mut m0, a) = s.mount(0);
    let (mut m1, b) = s.mount(1);
    std::fs::create_dir(a.join("d")).unwrap();
    for i in 0..40u32 {
        let name = format!("d/c{i}");
        let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(a.join(&name)).unwrap();
        let mode = 0o600 | (i % 2) << 2;
        std::fs::set_permissions(b.join(&name), std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, mode, "fstat of {name} after a chmod on n1");
        assert_eq!(std::fs::metadata(a.join(&name)).unwrap().mode() & 0o7777, mode, "stat of {name}");
    }
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
}
