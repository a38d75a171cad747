//! Bad input to a cluster mount: a second daemon claiming a running node's name, a node that
//! is not in cluster.conf, a volume made for another cluster, a mirror whose peer holds another
//! volume, a resource file that does not suit a cluster mount, a peer that never comes within
//! the wfc-timeout. Each is refused with a message that names the problem, and nothing is
//! written to the volume.

mod common;

use common::nodes::{node_args, read, OnMirror, Shared};
use common::{bin, text};
use std::path::Path;
use std::process::Command;

/// `o2fs mount -f ARGS… IMAGE DIR` that must fail before mounting: its stderr.
fn mount_must_fail(s: &Shared, args: &[String], dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let log = s.dir.path().join("refused.err");
    let mut cmd = Command::new(bin("o2fs"));
    cmd.arg("mount").arg("-f").args(args).arg(&s.image).arg(dir);
    let err = common::must_fail(&mut cmd, &log);
    assert!(!common::is_mountpoint(dir), "refused, yet mounted");
    err
}

fn sha1(p: &Path) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    Sha1::digest(read(p)).to_vec()
}

#[test]
fn a_second_daemon_with_a_running_nodes_name_is_refused() {
    let s = Shared::new("127.0.13");
    let (mut m0, d0) = s.mount(0);
    std::fs::write(d0.join("before"), b"n0").unwrap();
    let err = mount_must_fail(&s, &node_args(s.dir.path(), &s.conf, 0), &s.dir.path().join("again"));
    assert!(err.contains("\"n0\" is already running"), "{err}");
    // The running node is undisturbed, and the volume holds one mount.
    std::fs::write(d0.join("after"), b"still n0").unwrap();
    assert_eq!(read(&d0.join("before")), b"n0");
    s.unmount_and_judge(&mut [&mut m0]);
}

#[test]
fn a_node_not_in_cluster_conf_is_refused_without_a_write() {
    let s = Shared::new("127.0.13");
    let before = sha1(&s.image);
    let mut args = node_args(s.dir.path(), &s.conf, 0);
    args[1] = "stranger".into();
    let err = mount_must_fail(&s, &args, &s.dir.path().join("mnt"));
    assert!(err.contains("\"stranger\"") && err.contains("cluster.conf"), "{err}");
    assert_eq!(sha1(&s.image), before, "a refused mount wrote to the volume");
}

#[test]
fn a_volume_of_another_cluster_is_refused_without_a_write() {
    let s = Shared::new("127.0.13");
    let out = common::run(
        Command::new(bin("mkfs.o2fs"))
            .args(["-q", "-N", "4", "-F", "--cluster-stack=o2cb", "--cluster-name=elsewhere"])
            .arg(&s.image),
    );
    assert!(out.status.success(), "mkfs.o2fs: {}", text(&out));
    let before = sha1(&s.image);
    let err = mount_must_fail(&s, &node_args(s.dir.path(), &s.conf, 0), &s.dir.path().join("mnt"));
    assert!(err.contains("belongs to cluster \"elsewhere\""), "{err}");
    assert_eq!(sha1(&s.image), before, "a refused mount wrote to the volume");
}

#[test]
fn a_mirror_whose_peer_holds_another_volume_is_refused_without_a_write() {
    // mkfs on each node's disk makes two volumes; both replicas are "just created" for the
    // mirror, which must not take them for equal.
    let s = OnMirror::unsynced("127.0.13", [vec![], vec![]]);
    s.mkfs(0);
    s.mkfs(1);
    let before = [sha1(&s.replica(0)), sha1(&s.replica(1))];
    let errs: Vec<String> = std::thread::scope(|sc| {
        let runs: Vec<_> = (0..2)
            .map(|i| {
                let s = &s;
                sc.spawn(move || {
                    let mnt = s.dir.path().join(format!("mnt{i}"));
                    std::fs::create_dir_all(&mnt).unwrap();
                    let mut cmd = Command::new(bin("o2fs"));
                    cmd.arg("mount").arg("-f").args(node_args(s.dir.path(), &s.conf, i));
                    cmd.arg("-r").arg(&s.res).arg(&mnt);
                    common::must_fail(&mut cmd, &s.dir.path().join(format!("n{i}.err")))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for err in &errs {
        assert!(err.contains("hold different data"), "{err}");
    }
    assert_eq!([sha1(&s.replica(0)), sha1(&s.replica(1))], before, "a refused mount wrote to a replica");
}

/// `o2fs mount -f` of node `i` on the mirror `s`, which must fail: its stderr and how long it took.
fn mirror_mount_must_fail(s: &OnMirror, i: usize) -> (String, std::time::Duration) {
    let mnt = s.dir.path().join(format!("mnt{i}"));
    std::fs::create_dir_all(&mnt).unwrap();
    let mut cmd = Command::new(bin("o2fs"));
    cmd.arg("mount").arg("-f").args(node_args(s.dir.path(), &s.conf, i)).arg("-r").arg(&s.res).arg(&mnt);
    let started = std::time::Instant::now();
    let err = common::must_fail(&mut cmd, &s.dir.path().join(format!("n{i}.err")));
    assert!(!common::is_mountpoint(&mnt), "refused, yet mounted");
    (err, started.elapsed())
}

fn edit_resource(s: &OnMirror, edit: impl Fn(String) -> String) {
    std::fs::write(&s.res, edit(std::fs::read_to_string(&s.res).unwrap())).unwrap();
}

/// A cluster mount on the mirror needs both nodes primary and a mirror that freezes on a lost
/// peer: a resource file that says otherwise is refused before anything starts, naming file,
/// line and statement.
#[test]
fn a_resource_unfit_for_a_cluster_mount_is_refused_naming_the_line() {
    let s = OnMirror::unsynced("127.0.33", [vec![], vec![]]);
    s.mkfs(0);
    let before = sha1(&s.replica(0));
    edit_resource(&s, |t| t.replace("\tstartup", "\tdisk { fencing dont-care; }\n\tstartup"));
    let (err, _) = mirror_mount_must_fail(&s, 0);
    let res = s.res.display();
    assert!(err.contains(&format!("{res}:4: resource r0: `fencing dont-care`")), "{err}");
    edit_resource(&s, |t| {
        t.replace("dont-care", "resource-and-stonith").replace("become-primary-on both", "become-primary-on n0")
    });
    let (err, _) = mirror_mount_must_fail(&s, 0);
    assert!(err.contains(&format!("{res}:5: resource r0: `become-primary-on n0`")), "{err}");
    assert_eq!(sha1(&s.replica(0)), before, "a refused mount wrote to the replica");
}

/// wfc-timeout: a node whose peer never comes gives up after that many seconds; a cluster
/// mount then refuses to go on alone (its replica may be outdated).
#[test]
fn a_peer_that_never_comes_ends_the_wait_after_the_wfc_timeout() {
    let s = OnMirror::unsynced("127.0.33", [vec![], vec![]]);
    s.mkfs(0);
    edit_resource(&s, |t| t.replace("wfc-timeout 60;", "wfc-timeout 2;"));
    let (err, took) = mirror_mount_must_fail(&s, 0);
    assert!(err.contains("did not connect within the wfc-timeout"), "{err}");
    assert!(took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(20), "{took:?}");
}
