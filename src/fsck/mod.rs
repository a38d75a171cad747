//! fsck engine: checks an OCFS2 volume offline and repairs it through the `BlockDevice`.
//!
//! A run: open the superblock (falling back to a backup, `superblock`), refuse a volume in use,
//! replay dirty journals (`journal`), then the passes of ocfs2-format.md §15:
//! `chains` (pass 0: chain allocators and group descriptors), `inodes` + `extents` (pass 1:
//! every inode, extent trees, cluster claims), `dirs` (pass 2: directory entries),
//! `connectivity` (pass 3: reachability, lost+found, '..'), `links` (pass 4: orphans, link
//! counts), and finally `usage`, which compares the allocator bitmaps with what the passes
//! found in use (§6.5) and rebuilds bitmaps and counters from that model (`alloc`).
//!
//! Repairs that change the namespace or trees are written when found (with `-y`); derived
//! state (bitmaps, counters, link counts) is rebuilt at the end, and only when nothing else
//! was left unrepaired.

mod alloc;
mod chains;
mod connectivity;
mod dirs;
mod extents;
mod inodes;
mod journal;
mod links;
pub mod report;
mod superblock;
mod usage;

pub use report::{Problem, Report};

use crate::dev::{BlockDevice, DevError};
use crate::format::FormatError;
use crate::fs::{FsError, Volume};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What the run may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-n`: write nothing.
    Check,
    /// `-p`: safe repairs only (counters, bitmaps, link counts).
    Preen,
    /// `-y`: every repair.
    Repair,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// `-f`: check even when the volume looks clean.
    pub force: bool,
    /// `-F`: do not refuse a volume whose slot map shows it in use.
    pub skip_cluster_check: bool,
    /// `-r N`: use backup superblock N (1-based, §2.3).
    pub backup: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options { mode: Mode::Check, force: true, skip_cluster_check: true, backup: None }
    }
}

/// Operational errors: the run could not be carried out (fsck exit 8).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Dev(#[from] DevError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{0}")]
    InUse(String),
    #[error("no usable superblock: {0}")]
    NoSuperblock(String),
    #[error("volume uses features o2fs does not support: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, FsckError>;

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    /// The volume was clean and `-f` was not given: only the superblock was checked.
    pub skipped_clean: bool,
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        self.report.exit_code()
    }
}

/// A live inode as pass 1 saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct InodeInfo {
    pub mode: u16,
    pub links: u16,
    pub flags: u32,
    /// Cluster runs (first cluster, count) of its leaf extents (§6.5).
    pub claims: Vec<(u64, u64)>,
    /// Extent blocks of its tree.
    pub ebs: Vec<u64>,
    /// Leaf records (directories only: pass 2 maps their blocks).
    pub leaves: Vec<crate::format::extent::ExtentRec>,
}

/// State shared by the passes.
pub(crate) struct Checker {
    pub vol: Volume,
    pub report: Report,
    pub bs: usize,
    pub bpc: u64,
    pub clusters: u64,
    pub blocks: u64,
    pub gen: u32,
    pub now: u64,
    pub allocs: Vec<alloc::Alloc>,
    /// System files by name (§11).
    pub sysfiles: BTreeMap<String, u64>,
    /// Clusters claimed so far (for duplicate detection).
    pub claimed: Vec<u8>,
    /// Clusters in use that no inode owns: reserved area, descriptors, suballocator groups,
    /// backups, local-alloc windows, truncate logs (§6.5).
    pub base: Vec<u8>,
    pub inodes: BTreeMap<u64, InodeInfo>,
    pub dirs: BTreeMap<u64, dirs::Dir>,
    /// Inodes listed in orphan directories (left alone by the link-count pass).
    pub orphans: HashMap<u64, u16>,
    /// Link counts to rewrite at the end (inode, count), found by pass 4.
    pub link_fixes: Vec<(u64, u16)>,
    /// A structure everything else depends on is unusable; later passes are skipped.
    pub abort: bool,
}

/// Runs fsck on a device.
pub fn check(dev: Arc<dyn BlockDevice>, opts: &Options) -> Result<Outcome> {
    let mut report = Report::new(opts.mode);
    let vol = superblock::open(dev, opts, &mut report)?;
    superblock::check_features(&vol)?;
    if !opts.skip_cluster_check {
        superblock::refuse_if_in_use(&vol)?;
    }
    let dirty = journal::dirty_slots(&vol)?;
    if !opts.force && report.problems.is_empty() && dirty.is_empty() && !superblock::has_error_state(&vol) {
        report.note("volume is clean; use -f to check anyway".into());
        return Ok(Outcome { report, skipped_clean: true });
    }
    journal::replay_dirty(&vol, &dirty, &mut report)?;
    let mut c = Checker::new(vol, report);
    c.run()?;
    Ok(Outcome { report: c.report, skipped_clean: false })
}

impl Checker {
    fn new(vol: Volume, report: Report) -> Self {
        let geo = vol.geo;
        let clusters = geo.total_clusters as u64;
        let map = vec![0u8; clusters.div_ceil(8) as usize];
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Checker {
            bs: geo.block_size,
            bpc: geo.bpc(),
            clusters,
            blocks: geo.total_blocks(),
            gen: vol.fs_generation(),
            now,
            vol,
            report,
            allocs: Vec::new(),
            sysfiles: BTreeMap::new(),
            claimed: map.clone(),
            base: map,
            inodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            orphans: HashMap::new(),
            link_fixes: Vec::new(),
            abort: false,
        }
    }

    fn run(&mut self) -> Result<()> {
        self.report.note("Pass 0: checking superblock, system directory and chain allocators".into());
        superblock::check_fields(self)?;
        chains::pass0(self)?;
        if self.abort {
            return Ok(());
        }
        self.report.note("Pass 1: checking inodes and extent trees".into());
        inodes::pass1(self)?;
        self.report.note("Pass 2: checking directory entries".into());
        dirs::pass2(self)?;
        self.report.note("Pass 3: checking directory connectivity".into());
        connectivity::pass3(self)?;
        self.report.note("Pass 4: checking orphans and link counts".into());
        links::pass4(self)?;
        self.report.note("Checking allocator bitmaps against use".into());
        usage::check_and_rebuild(self)?;
        journal::clear_dirty_flags(self)?;
        superblock::finish(self)?;
        Ok(())
    }

    /// Reads a block, or None when its number is outside the volume.
    pub fn read(&self, blkno: u64) -> Result<Option<Vec<u8>>> {
        if blkno >= self.blocks {
            return Ok(None);
        }
        Ok(Some(self.vol.read_block(blkno)?))
    }

    pub fn write(&self, blkno: u64, buf: &[u8]) -> Result<()> {
        if blkno < self.blocks {
            self.vol.write_block(blkno, buf)?;
        }
        Ok(())
    }

    /// Marks clusters `[start, start+len)` claimed; returns false (and claims nothing) when
    /// any of them is outside the volume or was already claimed (§6.5: one owner per cluster).
    pub fn claim(&mut self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else { return false };
        if end > self.clusters {
            return false;
        }
        if (start..end).any(|c| crate::fs::bitmap::test(&self.claimed, c as usize)) {
            return false;
        }
        crate::fs::bitmap::set_range(&mut self.claimed, start as usize, len as usize);
        true
    }

    /// Marks clusters in use by no inode (§6.5); overlaps between such areas are not errors.
    pub fn claim_base(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len).min(self.clusters);
        if start < end {
            crate::fs::bitmap::set_range(&mut self.claimed, start as usize, (end - start) as usize);
            crate::fs::bitmap::set_range(&mut self.base, start as usize, (end - start) as usize);
        }
    }

    pub fn sysfile(&self, name: &str) -> Option<u64> {
        self.sysfiles.get(name).copied()
    }
}
