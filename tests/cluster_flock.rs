//! flock(2) is cluster-wide on a cluster mount (README "Locking across nodes"): an exclusive
//! flock on one node keeps every other node's flock out, shared flocks coexist, a counter
//! incremented under flock from both nodes loses nothing, and a dead holder's flock passes to
//! a waiter once the node is recovered. Loopback addresses 127.0.37.x.

mod common;

use common::nodes::{read, Shared};
use nix::errno::Errno;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

fn open(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p).unwrap()
}

/// flock(2) on `f` with `op` (LOCK_SH, LOCK_EX, LOCK_UN, | LOCK_NB).
fn flock(f: &File, op: i32) -> Result<(), Errno> {
    // SAFETY: flock only reads the descriptor number, which `f` keeps open.
    Errno::result(unsafe { libc::flock(f.as_raw_fd(), op) }).map(drop)
}

/// A non-blocking flock of a fresh open of `p`: the locked file, or the errno.
fn try_flock(p: &Path, op: i32) -> Result<File, Errno> {
    let f = open(p);
    flock(&f, op | libc::LOCK_NB).map(|()| f)
}

#[test]
fn flock_excludes_across_nodes_and_counts_without_loss() {
    let s = Shared::new("127.0.37");
    let (mut m0, d0) = s.mount(0);
    let (mut m1, d1) = s.mount(1);
    std::fs::write(d0.join("lock"), b"").unwrap();
    let (p0, p1) = (d0.join("lock"), d1.join("lock"));

    // Exclusive on n0 keeps n1 out, shared or exclusive; released, n1 gets it.
    let held = try_flock(&p0, libc::LOCK_EX).expect("n0 takes an exclusive flock");
    assert_eq!(try_flock(&p1, libc::LOCK_EX).err(), Some(Errno::EWOULDBLOCK));
    assert_eq!(try_flock(&p1, libc::LOCK_SH).err(), Some(Errno::EWOULDBLOCK));
    // Another open file on the same node is another owner: kept out too.
    assert_eq!(try_flock(&p0, libc::LOCK_EX).err(), Some(Errno::EWOULDBLOCK));
    flock(&held, libc::LOCK_UN).expect("unlock");
    drop(held);
    let held = try_flock(&p1, libc::LOCK_EX).expect("n1 takes it once n0 let go");
    assert_eq!(try_flock(&p0, libc::LOCK_SH).err(), Some(Errno::EWOULDBLOCK));
    // Closing the file (no unlock first) drops its flock; shared flocks coexist on both nodes.
    drop(held);
    let sh0 = try_flock(&p0, libc::LOCK_SH).expect("shared on n0");
    let sh1 = try_flock(&p1, libc::LOCK_SH).expect("shared on n1 beside n0's");
    assert_eq!(try_flock(&p1, libc::LOCK_EX).err(), Some(Errno::EWOULDBLOCK));
    drop((sh0, sh1));

    // Two writers per node increment one counter under a blocking exclusive flock.
    const ROUNDS: usize = 40;
    std::fs::write(d0.join("counter"), b"0").unwrap();
    std::thread::scope(|sc| {
        for d in [&d0, &d0, &d1, &d1] {
            sc.spawn(move || {
                let path = d.join("counter");
                let file = open(&path);
                for _ in 0..ROUNDS {
                    flock(&file, libc::LOCK_EX).expect("flock");
                    let mut buf = [0u8; 32];
                    let n = file.read_at(&mut buf, 0).unwrap();
                    let v: usize = std::str::from_utf8(&buf[..n]).unwrap().trim().parse().unwrap();
                    let next = (v + 1).to_string();
                    file.write_at(next.as_bytes(), 0).unwrap();
                    file.set_len(next.len() as u64).unwrap();
                    flock(&file, libc::LOCK_UN).expect("unlock");
                }
            });
        }
    });
    assert_eq!(read(&d1.join("counter")), (4 * ROUNDS).to_string().as_bytes(), "increments lost");
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
}

#[test]
fn a_dead_holders_flock_passes_to_the_waiter() {
    let s = Shared::new("127.0.38");
    let (mut m0, d0) = s.mount(0);
    let (mut m1, d1) = s.mount(1);
    std::fs::write(d0.join("lock"), b"").unwrap();
    let held = try_flock(&d1.join("lock"), libc::LOCK_EX).expect("n1 takes the flock");
    let (tx, rx) = std::sync::mpsc::channel();
    let p0 = d0.join("lock");
    let waiter = std::thread::spawn(move || {
        let got = flock(&open(&p0), libc::LOCK_EX);
        let _ = tx.send(got.is_ok());
        got
    });
    // The waiter stays blocked while n1 lives.
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err(), "n0 got the flock while n1 held it");
    m1.kill();
    // A hang guard, not a speed figure: the test timings detect a death in about a second.
    assert_eq!(rx.recv_timeout(Duration::from_secs(120)), Ok(true), "n0's flock after n1 died");
    waiter.join().unwrap().unwrap();
    drop(held);
    s.unmount_and_judge(&mut [&mut m0]);
}
