//! The kernel's attribute and name caches on a cluster mount (issue 6): a node keeps them while
//! it holds the covering cluster lock — repeated stats on an idle cluster do not reach its
//! daemon — and loses them when another node takes the lock, so its very next stat after the
//! other node's change shows that change (well inside the caches' 1 s time to live).
//! Nodes on 127.0.0.42 and 127.0.0.43.

mod common;

use common::nodes::Shared;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// LOOKUP and GETATTR requests node `i`'s daemon served so far.
fn served(s: &Shared, i: usize) -> u64 {
    let st = s.status(i);
    let counts = &st["fuse_requests"];
    let n = |what: &str| counts[what].as_u64().unwrap_or_else(|| panic!("no {what} count in {st}"));
    n("lookup") + n("getattr")
}

/// Stats `p` a few times (filling the kernel's caches) and returns the last.
fn warm(p: &Path) -> std::fs::Metadata {
    (0..3).map(|_| std::fs::metadata(p).unwrap()).last().unwrap()
}

fn content(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn kernel_caches_hold_while_the_lock_stays_and_go_with_it() {
    let s = Shared::at(&["127.0.0.42".to_string(), "127.0.0.43".to_string()]);
    let (mut m0, a) = s.mount(0);
    let (mut m1, b) = s.mount(1);
    std::fs::create_dir(a.join("d")).unwrap();
    std::fs::write(a.join("d/f"), b"first version").unwrap();
    let (fa, fb) = (a.join("d/f"), b.join("d/f"));
    assert_eq!(content(&fb), b"first version", "n1 reads what n0 wrote");

    // Cached: with n1 idle, stats of a path and of an open file on n0 stay in its kernel.
    let open = std::fs::File::open(&fa).unwrap();
    warm(&fa);
    let before = served(&s, 0);
    for _ in 0..100 {
        std::fs::metadata(&fa).unwrap();
        open.metadata().unwrap();
    }
    let spent = served(&s, 0) - before;
    assert!(spent <= 6, "200 stats on an idle cluster took {spent} LOOKUP/GETATTR requests");

    // Coherent: each change on n1 shows in n0's very next stat.
    warm(&fa);
    std::fs::set_permissions(&fb, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(&fa).unwrap().mode() & 0o7777, 0o600, "chmod on n1");
    assert_eq!(open.metadata().unwrap().mode() & 0o7777, 0o600, "chmod on n1, fstat");

    warm(&fa);
    std::os::unix::fs::chown(&fb, Some(1234), Some(5678)).unwrap();
    let m = std::fs::metadata(&fa).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678), "chown on n1");

    warm(&fa);
    std::fs::OpenOptions::new().write(true).open(&fb).unwrap().set_len(5).unwrap();
    assert_eq!(std::fs::metadata(&fa).unwrap().len(), 5, "truncate on n1");
    assert_eq!(content(&fa), b"first", "truncate on n1, read");

    warm(&fa);
    std::fs::write(&fb, b"second version, longer").unwrap();
    assert_eq!(open.metadata().unwrap().len(), 22, "write on n1, fstat");
    assert_eq!(content(&fa), b"second version, longer", "write on n1, read");

    // Names: a rename on n1 moves the name on n0; a name n0 found missing appears.
    let ino = warm(&fa).ino();
    assert!(std::fs::metadata(a.join("d/g")).is_err());
    std::fs::rename(&fb, b.join("d/g")).unwrap();
    assert!(std::fs::metadata(&fa).is_err(), "renamed away on n1");
    assert_eq!(std::fs::metadata(a.join("d/g")).unwrap().ino(), ino, "renamed on n1");
    std::fs::write(b.join("d/f"), b"new file").unwrap();
    let m = std::fs::metadata(&fa).unwrap();
    assert_ne!(m.ino(), ino, "a new file of the old name on n1");
    assert_eq!(content(&fa), b"new file");

    // A directory: removed and made again on n1, n0 sees the new one.
    drop(open);
    let dir_ino = warm(&a.join("d")).ino();
    std::fs::remove_file(b.join("d/f")).unwrap();
    std::fs::remove_file(b.join("d/g")).unwrap();
    std::fs::remove_dir(b.join("d")).unwrap();
    assert!(std::fs::metadata(a.join("d")).is_err(), "rmdir on n1");
    std::fs::create_dir(b.join("d")).unwrap();
    assert_ne!(std::fs::metadata(a.join("d")).unwrap().ino(), dir_ino, "mkdir on n1");
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
}
