//! Cluster mounts of the test's own: nodes on one shared image ([`Shared`], SAN-style: several
//! daemons on this machine open the same file) or each node on its own replica of the mirror
//! ([`OnMirror`]), with cluster.conf, secret and resource file in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cluster::TIMING;
use super::netns::VethPair;
use super::{bin, run, text, Mount};

/// A cluster mount's arguments for node `i` of a test directory holding `cluster.conf`'s
/// `secret` and the nodes' admin sockets `n<i>.sock` (TIMING: the tests' small timings).
pub fn node_args(dir: &Path, conf: &Path, i: usize) -> Vec<String> {
    let mut args: Vec<String> = vec!["--node".into(), format!("n{i}"), "-c".into(), conf.display().to_string()];
    args.push("--secret-file".into());
    args.push(dir.join("secret").display().to_string());
    args.push("--socket".into());
    args.push(dir.join(format!("n{i}.sock")).display().to_string());
    args.extend(TIMING.iter().map(|s| s.to_string()));
    args
}

/// A port of the test's own (and the next one, for the mirror).
fn random_port() -> u16 {
    30000 + super::cluster::rand_u16() % 20000
}

/// cluster.conf of `nodes` nodes n0, n1… on `net`.1, `net`.2… and its secret, in `dir`.
fn write_cluster_conf(dir: &Path, name: &str, net: &str, port: u16, nodes: usize) -> PathBuf {
    let addresses: Vec<String> = (1..=nodes).map(|i| format!("{net}.{i}")).collect();
    write_cluster_conf_at(dir, name, &addresses, port)
}

/// cluster.conf of nodes n0, n1… on `addresses` and its secret, in `dir`.
fn write_cluster_conf_at(dir: &Path, name: &str, addresses: &[String], port: u16) -> PathBuf {
    let mut conf = format!("cluster:\n\tnode_count = {}\n\tname = {name}\n\n", addresses.len());
    for (i, addr) in addresses.iter().enumerate() {
        conf += &format!(
            "node:\n\tip_port = {port}\n\tip_address = {addr}\n\tnumber = {i}\n\tname = n{i}\n\tcluster = {name}\n\n"
        );
    }
    let path = dir.join("cluster.conf");
    std::fs::write(&path, conf).unwrap();
    std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
    path
}

/// The directory node `i` mounts on.
fn mountpoint(dir: &Path, i: usize) -> PathBuf {
    let mnt = dir.join(format!("mnt{i}"));
    std::fs::create_dir_all(&mnt).unwrap();
    mnt
}

pub struct Shared {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub conf: PathBuf,
}

impl Shared {
    /// A 512 MiB volume with 4 slots and a two-node cluster.conf on `net`.1/.2.
    pub fn new(net: &str) -> Shared {
        Shared::with_nodes(net, 2)
    }

    /// The same with `nodes` nodes on `net`.1, `net`.2, …
    pub fn with_nodes(net: &str, nodes: usize) -> Shared {
        Shared::at(&(1..=nodes).map(|i| format!("{net}.{i}")).collect::<Vec<_>>())
    }

    /// The same with a node on each of `addresses`.
    pub fn at(addresses: &[String]) -> Shared {
        let dir = tempfile::tempdir().unwrap();
        let port = random_port();
        let conf = write_cluster_conf_at(dir.path(), &format!("m{port}"), addresses, port);
        let image = dir.path().join("vol.img");
        std::fs::File::create(&image).unwrap().set_len(512 << 20).unwrap();
        let out = run(Command::new(bin("mkfs.o2fs")).args(["-q", "-N", "4", "-F"]).arg(&image));
        assert!(out.status.success(), "mkfs.o2fs: {}", text(&out));
        Shared { dir, image, conf }
    }

    pub fn mount(&self, i: usize) -> (Mount, PathBuf) {
        self.mount_with(i, &[])
    }

    /// [`mount`](Self::mount) with more arguments for `o2fs mount` (`-o OPTIONS`…).
    pub fn mount_with(&self, i: usize, extra: &[&str]) -> (Mount, PathBuf) {
        let mnt = mountpoint(self.dir.path(), i);
        let mut args = node_args(self.dir.path(), &self.conf, i);
        args.extend(extra.iter().map(|a| a.to_string()));
        let m = Mount::start(&self.image, &mnt, &args).unwrap_or_else(|e| panic!("{e}"));
        (m, mnt)
    }

    /// What node `i`'s daemon reports (`o2fs status --json`).
    pub fn status(&self, i: usize) -> serde_json::Value {
        status(&self.dir.path().join(format!("n{i}.sock")), i)
    }

    /// Unmounts every node (highest first) and judges the image with fsck.ocfs2.
    pub fn unmount_and_judge(&self, mounts: &mut [&mut Mount]) {
        for m in mounts.iter_mut().rev() {
            m.unmount().unwrap();
        }
        super::assert_fsck_ocfs2_clean(&self.image);
    }
}

/// Two nodes on the mirror: each mounts its own replica (`o2fs mount -r`), on `net`.1 and
/// `net`.2 (in network namespaces if `wrap` says so). mkfs runs on n0's replica; n1's fresh
/// replica is invalidated so the first handshake resyncs all of it from n0.
pub struct OnMirror {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub res: PathBuf,
    /// Per node, what its daemons run through (its network namespace), if anything.
    pub wrap: [Vec<String>; 2],
}

impl OnMirror {
    const SIZE: u64 = 256 << 20;

    pub fn new(net: &str) -> OnMirror {
        OnMirror::on(net, [vec![], vec![]])
    }

    /// Node i in namespace i of `pair`, at its address there.
    pub fn in_namespaces(pair: &VethPair) -> OnMirror {
        OnMirror::on(&pair.net, [pair.enter(0), pair.enter(1)])
    }

    fn on(net: &str, wrap: [Vec<String>; 2]) -> OnMirror {
        let s = OnMirror::unsynced(net, wrap);
        s.mkfs(0);
        // n1's replica holds nothing yet: invalidated, it is the target of a full resync.
        let d = s.mirror_up(1);
        let reply = d.request(r#"{"cmd":"invalidate"}"#).unwrap();
        assert_eq!(reply["ok"], true, "invalidate: {reply}\n{}", d.log());
        s
    }

    /// The configuration and two empty replicas, neither made nor invalidated.
    pub fn unsynced(net: &str, wrap: [Vec<String>; 2]) -> OnMirror {
        let dir = tempfile::tempdir().unwrap();
        let port = random_port();
        let conf = write_cluster_conf(dir.path(), &format!("r{port}"), net, port, 2);
        let mut hosts = String::new();
        for i in 0..2 {
            hosts += &format!(
                "\ton n{i} {{\n\t\tdevice /dev/o2fs0;\n\t\tdisk {d}/n{i}.img;\n\t\taddress {net}.{}:{};\n\
                 \t\tmeta-disk {d}/n{i}.meta[0];\n\t}}\n",
                i + 1,
                port + 1,
                d = dir.path().display()
            );
        }
        let res = format!(
            "resource r0 {{\n\tprotocol C;\n\tsyncer {{ verify-alg sha1; rate 1G; }}\n\
             \tstartup {{ wfc-timeout 60; degr-wfc-timeout 60; become-primary-on both; }}\n\
             \tnet {{ cram-hmac-alg sha1; shared-secret \"m1rr0r\"; allow-two-primaries; }}\n{hosts}}}\n"
        );
        let res_path = dir.path().join("r0.res");
        std::fs::write(&res_path, res).unwrap();
        let s = OnMirror { dir, conf, res: res_path, wrap };
        for i in 0..2 {
            super::sparse_image(s.dir.path(), &format!("n{i}.img"), Self::SIZE);
        }
        s
    }

    /// mkfs.o2fs on node i's replica file (behind the mirror's back).
    pub fn mkfs(&self, i: usize) {
        let out = run(Command::new(bin("mkfs.o2fs")).args(["-q", "-N", "2", "-F"]).arg(self.replica(i)));
        assert!(out.status.success(), "mkfs.o2fs: {}", text(&out));
    }

    pub fn replica(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.img"))
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.sock"))
    }

    /// `o2fs mirror up` for node `i` alone (no filesystem).
    pub fn mirror_up(&self, i: usize) -> super::daemon::Daemon {
        let res = self.res.display().to_string();
        let node = format!("n{i}");
        let args = ["mirror", "up", "--keepalive-ms", "200", "--idle-timeout-ms", "1500", "--node", &node, "-r", &res];
        super::daemon::Daemon::start_via(self.dir.path(), &format!("mirror-n{i}"), &self.wrap[i], &args)
    }

    pub fn mount(&self, i: usize) -> (Mount, PathBuf) {
        let mnt = mountpoint(self.dir.path(), i);
        let args = node_args(self.dir.path(), &self.conf, i);
        let m = Mount::start_on_mirror(&self.wrap[i], &self.res, &mnt, &args).unwrap_or_else(|e| panic!("{e}"));
        (m, mnt)
    }

    /// Both nodes at once: the first waits for its peer (wfc-timeout).
    pub fn mount_both(&self) -> [(Mount, PathBuf); 2] {
        std::thread::scope(|sc| {
            let a = sc.spawn(|| self.mount(0));
            let b = sc.spawn(|| self.mount(1));
            [a.join().unwrap(), b.join().unwrap()]
        })
    }

    /// Unmounts both nodes (at once: a node's replica stays connected while its peer writes),
    /// judges both replicas with fsck.ocfs2 and requires them byte-identical.
    pub fn unmount_and_compare(&self, m0: &mut Mount, m1: &mut Mount) {
        Mount::unmount_all(&mut [m0, m1]).unwrap();
        for i in 0..2 {
            super::assert_fsck_ocfs2_clean(&self.replica(i));
        }
        assert_eq!(self.sha1(0), self.sha1(1), "the two replicas differ");
    }

    pub fn status(&self, i: usize) -> serde_json::Value {
        status(&self.socket(i), i)
    }

    pub fn wait_both_in_sync(&self) {
        for i in 0..2 {
            self.wait_in_sync(i);
        }
    }

    /// Waits (60 s at most) until node `i`'s mirror is connected, in sync and quiet.
    pub fn wait_in_sync(&self, i: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let s = self.status(i);
            let m = &s["mirror"];
            if m["replication"] == "Established"
                && m["quiet"] == true
                && m["disk"] == "UpToDate"
                && m["peer_disk"] == "UpToDate"
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "n{i}: the mirror never settled: {s}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn sha1(&self, i: usize) -> String {
        use sha1::{Digest, Sha1};
        let digest = Sha1::digest(read(&self.replica(i)));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What the daemon of node `i` answering on `socket` reports (`o2fs status --json`).
fn status(socket: &Path, i: usize) -> serde_json::Value {
    let reply =
        o2fs::net::admin::request(socket, &serde_json::json!({"cmd": "status"}), std::time::Duration::from_secs(20));
    reply.unwrap_or_else(|e| panic!("status of n{i}: {e}"))
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A write that is durable on return (fsync), or the error it met.
pub fn write_synced(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}
