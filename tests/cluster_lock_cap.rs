//! The bound on idle cluster locks (`-o lockcache=N`; src/dlm/glue.rs `Lru`): a node that
//! creates far more files than the bound keeps at most that many inode locks cached, gives the
//! least recently used up through the downconvert path, and both nodes still see every file as
//! it is. An open file keeps its open lock however many of its peers' locks go. Loopback
//! addresses 127.0.44.1-2.

mod common;

use common::nodes::{read, Shared};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The bound the test mounts with (small, to keep the test short).
const CAP: u64 = 200;
/// Cached locks beyond the bound that are allowed: locks not subject to it (super, system files:
/// about twenty), locks in use by the request running, and locks being given up.
const SLACK: u64 = 64;
const DIRS: usize = 3;
const PER_DIR: usize = 1000;

fn mode_of(i: usize) -> u32 {
    [0o600, 0o640, 0o644, 0o604, 0o660][i % 5]
}

/// 100 bytes naming the file.
fn content(name: &str) -> Vec<u8> {
    let mut c = format!("{name} ").into_bytes();
    c.resize(100, b'.');
    c
}

fn cached_locks(s: &Shared, i: usize) -> u64 {
    let st = s.status(i);
    st["cached_locks"].as_u64().unwrap_or_else(|| panic!("no cached_locks in {st}"))
}

fn check_all(d: &Path, rewritten: &[String]) {
    for dir in 0..DIRS {
        for i in 0..PER_DIR {
            let name = format!("d{dir}/f{i}");
            let path = d.join(&name);
            let want =
                if rewritten.contains(&name) { format!("{name} rewritten on n1").into_bytes() } else { content(&name) };
            assert_eq!(read(&path), want, "{}", path.display());
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, mode_of(i), "mode of {}", path.display());
        }
    }
}

#[test]
fn a_node_creating_many_files_keeps_at_most_the_bound_of_idle_locks() {
    let s = Shared::new("127.0.44");
    let opt = format!("lockcache={CAP}");
    let (mut m0, d0) = s.mount_with(0, &["-o", &opt]);
    let (mut m1, d1) = s.mount_with(1, &["-o", &opt]);
    // A file n0 keeps open while its locks would be among the oldest.
    std::fs::write(d0.join("kept-open"), b"still here").unwrap();
    let mut open = std::fs::OpenOptions::new().read(true).write(true).open(d0.join("kept-open")).unwrap();
    let mut most = 0;
    for dir in 0..DIRS {
        std::fs::create_dir(d0.join(format!("d{dir}"))).unwrap();
        for i in 0..PER_DIR {
            let path = d0.join(format!("d{dir}/f{i}"));
            std::fs::write(&path, content(&format!("d{dir}/f{i}"))).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode_of(i))).unwrap();
            if i % 50 == 49 {
                let n = cached_locks(&s, 0);
                most = most.max(n);
                assert!(n <= CAP + SLACK, "n0 caches {n} locks after {} creates (bound {CAP})", dir * PER_DIR + i + 1);
            }
        }
    }
    let dropped = s.status(0)["dropped_locks"].as_u64().unwrap();
    assert!(dropped >= (DIRS * PER_DIR) as u64 - CAP, "only {dropped} locks given up");
    eprintln!("n0 cached at most {most} locks, gave up {dropped}");
    // The open file's open lock stayed: n1's unlink leaves it to n0, which still reads and
    // writes it through its descriptor (had the lock gone, n1 would have freed the inode).
    std::fs::remove_file(d1.join("kept-open")).unwrap();
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut buf = Vec::new();
    open.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"still here");
    open.write_all(b", and more").unwrap();
    open.seek(SeekFrom::Start(0)).unwrap();
    buf.clear();
    open.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"still here, and more");
    drop(open);
    // Every file reads back as written, with its mode, on the node that gave its locks up and
    // on the other; then n1 rewrites some and n0 sees it.
    check_all(&d0, &[]);
    check_all(&d1, &[]);
    let rewritten: Vec<String> =
        (0..DIRS).flat_map(|d| [format!("d{d}/f0"), format!("d{d}/f{}", PER_DIR / 2)]).collect();
    for name in &rewritten {
        std::fs::write(d1.join(name), format!("{name} rewritten on n1")).unwrap();
    }
    check_all(&d0, &rewritten);
    // Both nodes read every file: both stay bounded, and so do the DLM's records — each node's
    // locks (cached ones and open locks, which go with their inode's cached lock) and the
    // resources it masters (forgotten once nobody holds them).
    for i in 0..2 {
        let st = s.status(i);
        let n = |k: &str| st[k].as_u64().unwrap_or_else(|| panic!("no {k} in {st}"));
        assert!(n("cached_locks") <= CAP + SLACK, "n{i}: {st}");
        assert!(n("dlm_locks") <= 2 * (CAP + SLACK), "n{i}: {st}");
        assert!(n("mastered_resources") <= 4 * (CAP + SLACK), "n{i}: {st}");
        eprintln!("n{i}: {st}");
    }
    s.unmount_and_judge(&mut [&mut m0, &mut m1]);
}
