//! Crash test (issue 3): a workload that fsyncs known files runs on a mount whose daemon is
//! killed with SIGKILL at seeded random moments. Then (a) a copy of the image replayed by
//! `fsck.ocfs2 -fyF` passes fsck.ocfs2, and (b) remounting with o2fs replays the journal, every
//! file fsynced before the kill is intact, and the image passes fsck.ocfs2 after unmount.

mod common;

use common::*;
use o2fs::testutil::Rng;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the workload knows was fsynced: file name → contents.
type Synced = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// Writes, renames and removes files; after every fsync the file's content is recorded.
fn workload(dir: &Path, seed: u64, synced: Synced, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(seed);
    let _ = std::fs::create_dir(dir.join("d"));
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let name = format!("f{}", rng.below(40));
        let len = match rng.below(4) {
            0 => rng.below(200) as usize,
            1 => rng.below(5000) as usize,
            _ => rng.below(300_000) as usize,
        };
        let data = rng.bytes(len);
        let path = dir.join(&name);
        // Rewriting a file gives up the guarantee on its old content until the new one is synced.
        synced.lock().unwrap().remove(&name);
        let Ok(mut f) = std::fs::File::create(&path) else { return };
        if f.write_all(&data).is_err() {
            return;
        }
        if rng.below(2) == 0 {
            if f.sync_all().is_err() {
                return;
            }
            synced.lock().unwrap().insert(name.clone(), data);
        }
        // Metadata churn that is never fsynced.
        let scratch = dir.join("d").join(format!("s{}", i % 25));
        match rng.below(3) {
            0 => {
                let n = rng.below(9000) as usize;
                let _ = std::fs::write(&scratch, rng.bytes(n));
            }
            1 => {
                let _ = std::fs::rename(&scratch, dir.join("d").join(format!("r{}", i % 7)));
            }
            _ => {
                let _ = std::fs::remove_file(&scratch);
            }
        }
    }
}

#[test]
fn sigkill_mid_workload_loses_nothing_that_was_fsynced() {
    if !have_ocfs2_tools() {
        return;
    }
    let base_seed = o2fs::testutil::seed_from_env(0xC0A5_7E57);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4u64 {
        let seed = base_seed.wrapping_add(round);
        let ctx = format!("seed {seed} (O2FS_SEED={base_seed}, round {round})");
        let img = dir.path().join(format!("c{round}.img"));
        let out = run(Command::new(bin("mkfs.o2fs"))
            .args(["-q", "-M", "local", "-b", "4K", "-C", "4K", "--size", "256M"])
            .arg(&img));
        assert!(out.status.success(), "{ctx}: {}", text(&out));
        let mnt = dir.path().join(format!("m{round}"));
        std::fs::create_dir(&mnt).unwrap();

        let mut m = Mount::new(&img, &mnt, "commit=1");
        let synced: Synced = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (mnt, synced, stop) = (mnt.clone(), synced.clone(), stop.clone());
            std::thread::spawn(move || workload(&mnt, seed, synced, stop))
        };
        let mut rng = Rng::new(seed ^ 0x5EED);
        std::thread::sleep(Duration::from_millis(300 + rng.below(1500)));
        m.kill();
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        let synced = synced.lock().unwrap().clone();
        assert!(!synced.is_empty(), "{ctx}: the workload fsynced nothing before the kill");

        // (a) fsck.ocfs2 replays our journal on a copy.
        let copy = dir.path().join(format!("c{round}-copy.img"));
        std::fs::copy(&img, &copy).unwrap();
        for _ in 0..2 {
            run_yes(Command::new("fsck.ocfs2").arg("-fyF").arg(&copy));
        }
        if let Err(log) = fsck_ocfs2(&copy) {
            panic!("{ctx}: after fsck.ocfs2 -fyF replayed the journal, fsck.ocfs2 -fnF found problems:\n{log}");
        }
        std::fs::remove_file(&copy).unwrap();

        // (b) o2fs replays it at mount; fsynced files are intact.
        let mut m = Mount::new(&img, &mnt, "");
        for (name, data) in &synced {
            let got = std::fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("{ctx}: fsynced {name} is gone: {e}"));
            assert!(got == *data, "{ctx}: fsynced {name} has {} bytes, expected {}", got.len(), data.len());
        }
        m.unmount().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        if let Err(log) = fsck_ocfs2(&img) {
            panic!("{ctx}: after o2fs replayed and unmounted, fsck.ocfs2 found problems:\n{log}");
        }
        std::fs::remove_file(&img).unwrap();
    }
}
