//! The journal layer against Debian's ocfs2-tools: transactions o2fs writes into a real
//! `journal:0000` are listed by `debugfs.ocfs2 logdump`, replayed by `fsck.ocfs2`, and replayed
//! byte-identically by o2fs's own recovery (ocfs2-format.md §13, §17.2, §17.5).

mod common;

use common::{open_journal, set_journal_dirty};
use o2fs::dev::FileDevice;
use o2fs::format::inode::{Inode, JOURNAL_DIRTY_FL};
use o2fs::format::jbd2::JBD2_MAGIC;
use o2fs::fs::sysfile::SystemFile;
use o2fs::fs::Volume;
use o2fs::journal::{Journal, JournalMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const BS: usize = 4096;

fn open(img: &Path) -> Volume {
    Volume::open(Arc::new(FileDevice::open(img, true).expect("open image"))).expect("open volume")
}

/// journal:0000 of `vol`.
fn journal(vol: &Volume) -> Journal {
    open_journal(vol, 0).1
}

fn journal_inode(vol: &Volume) -> Inode {
    vol.read_inode(vol.system_file_blkno(SystemFile::Journal(0)).expect("journal:0000")).expect("journal inode")
}

fn block(img: &Path, blkno: u64) -> Vec<u8> {
    open(img).read_block(blkno).expect("read block")
}

/// A scratch directory, or None (the test is skipped) when ocfs2-tools are missing.
fn scratch() -> Option<tempfile::TempDir> {
    if !common::have_ocfs2_tools() {
        eprintln!("ocfs2-tools missing: skipped");
        return None;
    }
    Some(tempfile::tempdir().expect("tempdir"))
}

fn copy(img: &Path, name: &str) -> PathBuf {
    let to = img.with_file_name(name);
    let out = common::run(Command::new("cp").arg("--sparse=always").arg(img).arg(&to));
    assert!(out.status.success(), "cp: {}", common::text(&out));
    to
}

/// A fresh 256 MiB volume (4K blocks, 4K clusters, 2 slots, cluster stack), opened, and its
/// journal:0000 with the log mkfs left emptied.
fn fresh_volume(dir: &Path) -> (PathBuf, Volume, Journal) {
    let img = common::sparse_image(dir, "vol.img", 256 << 20);
    common::mkfs_ocfs2(&img, "4096", "4096", 2, false);
    let vol = open(&img);
    let mut j = journal(&vol);
    // mkfs leaves s_start = 1 over a zeroed log with the dirty flag clear (§13.8).
    assert!(j.needs_recovery());
    assert_eq!(j.discard().expect("discard").transactions, 0);
    (img, vol, j)
}

/// The root inode block with `i_mtime` moved `by` seconds.
fn root_with_mtime(vol: &Volume, by: u64) -> (u64, Vec<u8>, u64) {
    let root = vol.sb().root_blkno;
    let mut raw = vol.read_block(root).expect("root block");
    let mut inode = Inode::decode(&raw, root).expect("root inode");
    inode.mtime += by;
    inode.encode(&mut raw);
    (root, raw, inode.mtime)
}

fn mtime(img: &Path, blkno: u64) -> u64 {
    Inode::decode(&block(img, blkno), blkno).expect("inode").mtime
}

/// What `debugfs.ocfs2 logdump` shows: commit blocks' sequences and descriptor tags
/// (sequence, block, escaped), in log order.
#[derive(Default)]
struct LogDump {
    commits: Vec<u32>,
    tags: Vec<(u32, u64, bool)>,
}

fn parse_logdump(dump: &str) -> LogDump {
    let mut out = LogDump::default();
    let mut kind = "";
    let mut seq = 0u32;
    for line in dump.lines().map(str::trim) {
        if line.starts_with("Block ") {
            kind = if line.ends_with("Journal Descriptor") {
                "descriptor"
            } else if line.ends_with("Journal Commit Block") {
                "commit"
            } else {
                ""
            };
        } else if let Some(rest) = line.strip_prefix("Seq: ") {
            seq = rest.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(u32::MAX);
            if kind == "commit" {
                out.commits.push(seq);
            }
        } else if kind == "descriptor" {
            // " 0. 65535           JBD2_FLAG_ESCAPE"
            let mut words = line.split_whitespace();
            let (Some(idx), Some(blk)) = (words.next(), words.next()) else { continue };
            if idx.ends_with('.') && idx[..idx.len() - 1].parse::<u32>().is_ok() {
                if let Ok(b) = blk.parse() {
                    out.tags.push((seq, b, line.contains("JBD2_FLAG_ESCAPE")));
                }
            }
        }
    }
    out
}

struct Crashed {
    img: PathBuf,
    root: u64,
    root_block: Vec<u8>,
    new_mtime: u64,
    free: u64,
    free_block: Vec<u8>,
    journal_sb_blk: u64,
}

/// Two transactions in journal:0000, not checkpointed, and the slot marked dirty: what a node
/// that crashed after committing leaves behind.
fn crashed_volume(dir: &Path) -> Crashed {
    let (img, vol, mut j) = fresh_volume(dir);

    let total = vol.geo.total_blocks();
    let free = total - 1;
    assert!(common::debugfs(&img, &format!("icheck {free}")).contains("Unused"), "block {free} is in use");
    let mut free_block: Vec<u8> = (0..BS).map(|i| (i * 7 + 3) as u8).collect();
    free_block[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
    free_block[4..24].copy_from_slice(b"o2fs journal test 1 ");

    let (root, first, _) = root_with_mtime(&vol, 1000);
    let t1 = j.commit(vec![(root, first)], vec![]).expect("commit 1");
    let (_, root_block, new_mtime) = root_with_mtime(&vol, 2000);
    assert_eq!(root_block.len(), BS);
    let t2 = j.commit(vec![(free, free_block.clone()), (root, root_block.clone())], vec![]).expect("commit 2");
    assert_eq!((t1 + 1, j.stats().transactions, j.stats().blocks_logged), (t2, 2, 3));
    let journal_sb_blk =
        JournalMap::from_extent_recs(&vol.leaf_extents(&journal_inode(&vol)).expect("extents"), vol.geo.bpc())
            .fs_block(0)
            .expect("journal block 0");
    drop(j);
    set_journal_dirty(&vol, 0, true);
    // Nothing reached its place.
    assert_ne!(mtime(&img, root), new_mtime);
    assert_ne!(block(&img, free), free_block);
    Crashed { img, root, root_block, new_mtime, free, free_block, journal_sb_blk }
}

#[test]
fn ocfs2_tools_read_and_replay_our_journal() {
    let Some(dir) = scratch() else { return };
    let c = crashed_volume(dir.path());

    // (a) logdump lists both transactions and their blocks.
    let dump = common::debugfs(&c.img, "logdump 0");
    let log = parse_logdump(&dump);
    assert_eq!(log.commits, [2, 3], "{dump}");
    assert_eq!(log.tags, [(2, c.root, false), (3, c.free, true), (3, c.root, false)], "{dump}");

    // (b) fsck.ocfs2 replays them (run twice, §17.5), and the result is clean.
    let by_fsck = copy(&c.img, "fsck.img");
    for _ in 0..2 {
        common::run_yes(Command::new("fsck.ocfs2").arg("-fyF").arg(&by_fsck));
    }
    assert_eq!(mtime(&by_fsck, c.root), c.new_mtime);
    assert_eq!(block(&by_fsck, c.root), c.root_block);
    assert_eq!(block(&by_fsck, c.free), c.free_block, "the escaped block was not restored");
    let vol = open(&by_fsck);
    assert_eq!(journal_inode(&vol).journal_flags() & JOURNAL_DIRTY_FL, 0, "fsck left the slot dirty");
    assert!(!journal(&vol).needs_recovery());
    drop(vol);
    common::assert_fsck_ocfs2_clean(&by_fsck);

    // (c) o2fs's own recovery gives the same bytes.
    let by_us = copy(&c.img, "o2fs.img");
    let vol = open(&by_us);
    let mut j = journal(&vol);
    assert!(j.needs_recovery());
    let info = j.recover().expect("recover");
    assert_eq!((info.transactions, info.blocks_replayed, info.first_tid, info.end_tid), (2, 2, 2, 4));
    drop(j);
    for (what, b) in [("root inode", c.root), ("free block", c.free), ("journal superblock", c.journal_sb_blk)] {
        assert!(block(&by_us, b) == block(&by_fsck, b), "{what} (block {b}) differs from fsck.ocfs2's replay");
    }
    // Recovery done, the caller clears the flag (§13.8); fsck.ocfs2 then finds nothing wrong.
    set_journal_dirty(&vol, 0, false);
    drop(vol);
    common::assert_fsck_ocfs2_clean(&by_us);
}

/// The clean path: commit, checkpoint, and the volume passes fsck.ocfs2 with the change in place.
#[test]
fn checkpointed_transactions_leave_a_clean_volume() {
    let Some(dir) = scratch() else { return };
    let (img, vol, mut j) = fresh_volume(dir.path());
    set_journal_dirty(&vol, 0, true);
    let root = vol.sb().root_blkno;
    let mut raw = vol.read_block(root).expect("root block");
    let mut inode = Inode::decode(&raw, root).expect("root inode");
    let base = inode.mtime;
    for step in 1..=20u64 {
        inode.mtime = base + step;
        inode.encode(&mut raw);
        j.commit(vec![(root, raw.clone())], vec![]).expect("commit");
        if step % 5 == 0 {
            j.checkpoint().expect("checkpoint");
            assert_eq!(mtime(&img, root), base + step);
        }
    }
    assert_eq!(j.stats().checkpoints, 4);
    j.checkpoint().expect("checkpoint");
    assert!(j.is_empty() && j.superblock().start == 0);
    drop(j);
    set_journal_dirty(&vol, 0, false);
    drop(vol);
    assert_eq!(mtime(&img, root), base + 20);
    common::assert_fsck_ocfs2_clean(&img);
}

/// A journal that revoked gains the REVOKE feature; with it enabled on every slot, fsck.ocfs2 in
/// write mode has nothing to fix (JOURNAL_MISSING_FEATURE otherwise, §13.2).
#[test]
fn revoke_feature_on_every_slot_satisfies_fsck() {
    let Some(dir) = scratch() else { return };
    let (img, vol, mut j) = fresh_volume(dir.path());
    let free = vol.geo.total_blocks() - 1;
    let before = vol.read_block(free).expect("free block");
    j.commit(vec![(free, vec![0x5A; BS])], vec![]).expect("commit");
    j.commit(vec![], vec![free]).expect("revoke");
    j.checkpoint().expect("checkpoint");
    assert_eq!(vol.read_block(free).expect("free block"), before, "a revoked block was checkpointed");
    drop(j);
    let (_, mut j1) = open_journal(&vol, 1);
    j1.discard().expect("discard");
    j1.enable_revoke().expect("enable revoke");
    drop(j1);
    drop(vol);
    let out = common::run_yes(Command::new("fsck.ocfs2").arg("-fyF").arg(&img));
    let log = common::text(&out);
    assert!(!log.lines().any(|l| l.starts_with('[')), "fsck.ocfs2 -fyF fixed something:\n{log}");
    common::assert_fsck_ocfs2_clean(&img);
}
