//! Two nodes mount one shared image at once (SAN-style: two daemons on this machine open the
//! same file) and see each other's changes at once; a node killed mid-workload is recovered by
//! the survivor. Every image is judged by fsck.ocfs2 afterwards.

mod common;

use common::nodes::{OnMirror, Shared};
use common::{bin, run, Mount};
use std::path::{Path, PathBuf};
use std::process::Command;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn two_nodes_see_each_others_changes_at_once() {
    let s = Shared::new("127.0.7");
    let (mut m0, d0) = s.mount(0);
    let (mut m1, d1) = s.mount(1);
    // Data written on one node is read on the other right after the write returns.
    std::fs::write(d0.join("a"), b"from n0").unwrap();
    assert_eq!(read(&d1.join("a")), b"from n0");
    std::fs::write(d1.join("a"), b"n1 rewrote it, longer").unwrap();
    assert_eq!(read(&d0.join("a")), b"n1 rewrote it, longer");
    // Names, sizes, modes.
    std::fs::create_dir(d1.join("dir")).unwrap();
    std::fs::write(d1.join("dir/big"), vec![7u8; 300_000]).unwrap();
    assert_eq!(read(&d0.join("dir/big")).len(), 300_000);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d0.join("dir/big"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(d1.join("dir/big")).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::rename(d0.join("dir/big"), d0.join("moved")).unwrap();
    assert!(!d1.join("dir/big").exists());
    assert_eq!(std::fs::metadata(d1.join("moved")).unwrap().len(), 300_000);
    std::fs::remove_file(d1.join("moved")).unwrap();
    assert!(!d0.join("moved").exists());
    // Both create files in one directory at once: every name is seen on both.
    const N: usize = 300;
    std::thread::scope(|sc| {
        for (d, tag) in [(&d0, "x"), (&d1, "y")] {
            sc.spawn(move || {
                for i in 0..N {
                    std::fs::write(d.join("dir").join(format!("{tag}{i}")), format!("{tag}{i}")).unwrap();
                }
            });
        }
    });
    for d in [&d0, &d1] {
        let names = std::fs::read_dir(d.join("dir")).unwrap().count();
        assert_eq!(names, 2 * N, "in {}", d.display());
    }
    assert_eq!(read(&d0.join("dir/y7")), b"y7");
    assert_eq!(read(&d1.join("dir/x7")), b"x7");
    m1.unmount().unwrap();
    m0.unmount().unwrap();
    common::assert_fsck_ocfs2_clean(&s.image);
}

#[test]
fn survivor_recovers_a_killed_node() {
    let s = Shared::new("127.0.6");
    let (mut m0, d0) = s.mount(0);
    let (mut m1, d1) = s.mount(1);
    // n1 writes and fsyncs, then keeps writing without fsync, then dies.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(d1.join("durable")).unwrap();
        f.write_all(&vec![5u8; 100_000]).unwrap();
        f.sync_all().unwrap();
    }
    for i in 0..50 {
        std::fs::write(d1.join(format!("f{i}")), vec![i as u8; 5000]).unwrap();
    }
    m1.kill();
    // The survivor carries on once the dead node is recovered.
    std::fs::write(d0.join("after"), b"survivor").unwrap();
    assert_eq!(read(&d0.join("durable")), vec![5u8; 100_000], "n1's fsynced data survives");
    for i in 0..50 {
        std::fs::write(d0.join(format!("g{i}")), b"more").unwrap();
    }
    // The dead node's slot is free again: it can mount anew.
    let (mut m1, d1b) = s.mount(1);
    assert_eq!(read(&d1b.join("after")), b"survivor");
    m1.unmount().unwrap();
    m0.unmount().unwrap();
    common::assert_fsck_ocfs2_clean(&s.image);
}

#[test]
fn three_nodes_and_a_shared_append_only_log() {
    let s = Shared::with_nodes("127.0.5", 3);
    let mounts: Vec<(Mount, PathBuf)> = (0..3).map(|i| s.mount(i)).collect();
    let log = mounts[0].1.join("shared.log");
    std::fs::write(&log, b"").unwrap();
    const RECORDS: usize = 100;
    // Every node appends fixed-size records with O_APPEND at the same time: none may be lost or
    // torn (o2fs appends at the volume's end of file under the cluster lock).
    std::thread::scope(|sc| {
        for (i, (_, dir)) in mounts.iter().enumerate() {
            let path = dir.join("shared.log");
            sc.spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                for r in 0..RECORDS {
                    f.write_all(format!("node{i} record {r:04}\n").as_bytes()).unwrap();
                }
            });
        }
    });
    for (_, dir) in &mounts {
        let text = String::from_utf8(read(&dir.join("shared.log"))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3 * RECORDS, "records lost or torn");
        for i in 0..3 {
            let mine: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&format!("node{i} "))).collect();
            assert_eq!(mine.len(), RECORDS);
            assert!(
                mine.iter().enumerate().all(|(r, l)| **l == format!("node{i} record {r:04}")),
                "order kept per node"
            );
        }
    }
    // Names created on each node are seen on the others.
    for (i, (_, dir)) in mounts.iter().enumerate() {
        for f in 0..50 {
            std::fs::write(dir.join(format!("n{i}-{f}")), b"x").unwrap();
        }
    }
    for (_, dir) in &mounts {
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1 + 1 + 3 * 50, "lost+found, the log, 150 files");
    }
    for (mut m, _) in mounts.into_iter().rev() {
        m.unmount().unwrap();
    }
    common::assert_fsck_ocfs2_clean(&s.image);
}

#[test]
fn two_nodes_on_the_mirror_each_on_its_own_replica() {
    let s = OnMirror::new("127.0.11");
    // The first node waits for its peer (wfc-timeout): both start at once.
    let [(mut m0, d0), (mut m1, d1)] = s.mount_both();
    std::fs::write(d0.join("a"), b"from n0").unwrap();
    assert_eq!(read(&d1.join("a")), b"from n0");
    std::fs::create_dir(d1.join("dir")).unwrap();
    std::fs::write(d1.join("dir/big"), vec![9u8; 300_000]).unwrap();
    assert_eq!(read(&d0.join("dir/big")), vec![9u8; 300_000]);
    std::fs::write(d0.join("a"), b"n0 again, longer").unwrap();
    assert_eq!(read(&d1.join("a")), b"n0 again, longer");
    // One admin socket answers for the cluster and for the mirror.
    for i in 0..2 {
        s.wait_in_sync(i, || s.status(i));
        let st = s.status(i);
        assert_eq!(st["cluster"]["node"], format!("n{i}"), "{st}");
        assert_eq!(st["mirror"]["node"], format!("n{i}"), "{st}");
    }
    let out = run(Command::new(bin("o2fs")).args(["verify", "--node", "n0", "--socket"]).arg(s.socket(0)));
    assert!(out.status.success(), "o2fs verify: {}", common::text(&out));
    let locks = run(Command::new(bin("o2fs")).args(["locks", "--node", "n1", "--socket"]).arg(s.socket(1)));
    assert!(locks.status.success(), "o2fs locks: {}", common::text(&locks));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while s.status(0)["mirror"]["verify"]["finished"] != true {
        assert!(std::time::Instant::now() < deadline, "verify never finished: {}", s.status(0));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(s.status(0)["mirror"]["verify"]["out_of_sync_blocks"], 0, "{}", s.status(0));
    m1.unmount().unwrap();
    m0.unmount().unwrap();
    // n0 unmounted last, alone: its last writes reach n1 when the two mirrors meet again.
    s.resync();
    for i in 0..2 {
        common::assert_fsck_ocfs2_clean(&s.replica(i));
    }
    assert_eq!(s.sha1(0), s.sha1(1), "the two replicas differ");
}
