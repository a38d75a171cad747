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

/// READ requests node `i`'s daemon served so far.
fn reads(s: &Shared, i: usize) -> u64 {
    let st = s.status(i);
    st["fuse_requests"]["read"].as_u64().unwrap_or_else(|| panic!("no read count in {st}"))
}

fn pread(f: &std::fs::File, len: usize, at: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(f, &mut v, at).unwrap();
    v
}

fn pwrite(p: &Path, data: &[u8], at: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, data, at).unwrap();
}

/// The page cache: a node re-reads a file from its kernel while the other node leaves the file
/// alone, and reads the other node's change (same size: only the mtime tells) at once, through
/// a descriptor it kept open, also in a page it had itself partly rewritten meanwhile.
#[test]
fn page_cache_holds_while_the_lock_stays_and_goes_with_it() {
    const LEN: usize = 256 << 10;
    let s = Shared::at(&["127.0.0.44".to_string(), "127.0.0.45".to_string()]);
    let (mut m0, a) = s.mount(0);
    let (mut m1, b) = s.mount(1);
    let mut expected: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    std::fs::write(a.join("f"), &expected).unwrap();
    let (fa, fb) = (a.join("f"), b.join("f"));
    assert_eq!(content(&fb), expected, "n1 reads what n0 wrote");

    let open = std::fs::File::open(&fa).unwrap();
    assert_eq!(pread(&open, LEN, 0), expected);
    let before = reads(&s, 0);
    for _ in 0..50 {
        assert_eq!(pread(&open, LEN, 0), expected);
    }
    let spent = reads(&s, 0) - before;
    assert!(spent <= 2, "50 re-reads of 256 KiB on an idle cluster took {spent} READ requests");

    for round in 0..6u8 {
        // n1 rewrites a piece in the middle of a page: the size stays.
        let at = 4096 * (1 + round as usize * 9) + 100;
        let piece = vec![0xa0 + round; 300];
        pwrite(&fb, &piece, at as u64);
        expected[at..at + piece.len()].copy_from_slice(&piece);
        assert_eq!(pread(&open, LEN, 0), expected, "round {round}: n1's rewrite, read on n0");
        // n0 rewrites a few bytes of a page n1 changes next; then n1 rewrites other bytes of it.
        let page = 4096 * (40 + round as usize);
        pwrite(&fa, b"n0", (page + 10) as u64);
        expected[page + 10..page + 12].copy_from_slice(b"n0");
        assert_eq!(pread(&open, 4096, page as u64), expected[page..page + 4096], "round {round}: own write");
        pwrite(&fb, b"n1", (page + 20) as u64);
        expected[page + 20..page + 22].copy_from_slice(b"n1");
        assert_eq!(pread(&open, LEN, 0), expected, "round {round}: both wrote one page, read on n0");
        assert_eq!(content(&fb), expected, "round {round}: read on n1");
        // A chmod or touch on n0 after n1's rewrite: its reply brings n1's mtime to n0's kernel
        // without the comparison a read makes.
        let at = 4096 * (3 + round as usize * 9);
        pwrite(&fb, &[0xb0 + round; 64], at as u64);
        expected[at..at + 64].fill(0xb0 + round);
        if round % 2 == 0 {
            std::fs::set_permissions(&fa, std::fs::Permissions::from_mode(0o640 + round as u32)).unwrap();
        } else {
            let w = std::fs::File::options().write(true).open(&fa).unwrap();
            w.set_modified(std::time::SystemTime::now()).unwrap();
        }
        assert_eq!(pread(&open, LEN, 0), expected, "round {round}: n1's rewrite, then chmod/touch on n0, read on n0");
    }
    drop(open);
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
}
