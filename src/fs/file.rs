//! File data (ocfs2-format.md §5, §9): inline data while it fits, then extents; holes stay
//! holes, unwritten extents read as zeros. Data goes straight to the device; the metadata that
//! points at it joins the running transaction, so data is on disk before it is referenced.

use super::core::{Core, Time};
use super::error::{FsError, Result};
use super::extent_map;
use super::lock::LockMode;
use super::read_buf::ReadBuf;
use super::read_gate::InFlight;
use crate::dev::BlockDevice;
use crate::format::extent::{ExtentList, ExtentRec, EXT_UNWRITTEN};
use crate::format::inline::inline_capacity;
use crate::format::inode::{Id2, Inode, INLINE_DATA_FL, S_IFMT, S_IFREG};
use std::ops::Range;
use std::sync::Arc;

/// What `lseek` looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    Data,
    Hole,
}

impl Core {
    /// Largest file size: cluster offsets are 32-bit.
    pub fn max_file_size(&self) -> u64 {
        (u32::MAX as u64) * self.cs()
    }

    /// Reads up to `len` bytes at `off` (short at end of file).
    pub fn file_read(&mut self, inode: &Inode, off: u64, len: u64) -> Result<Vec<u8>> {
        self.read_plan(inode, off, len)?.run().map(ReadBuf::into_vec)
    }

    /// What reading up to `len` bytes at `off` takes: the bytes themselves (inline data, end of
    /// file), or the device ranges to copy, to be read after the core is released.
    pub fn read_plan(&mut self, inode: &Inode, off: u64, len: u64) -> Result<ReadPlan> {
        if off >= inode.size {
            return Ok(ReadPlan::Ready(Vec::new()));
        }
        let len = len.min(inode.size - off) as usize;
        if let Id2::Inline(d) = &inode.id2 {
            let end = (off as usize + len).min(d.data.len());
            return Ok(ReadPlan::Ready(d.data.get(off as usize..end).unwrap_or(&[]).to_vec()));
        }
        let tree = self.load_tree(inode)?;
        let cs = self.cs();
        let mut runs = Vec::new();
        let mut pos = off;
        while pos < off + len as u64 {
            let cpos = pos / cs;
            let chunk_end = ((cpos + 1) * cs).min(off + len as u64);
            if let Some(r) = extent_map::lookup(&tree.recs, cpos).filter(|r| r.flags & EXT_UNWRITTEN == 0) {
                // The whole contiguous run at once; holes and unwritten extents read as zeros.
                let run_end = (r.end() * cs).min(off + len as u64);
                let phys = r.blkno * self.bs() as u64 + (pos - r.cpos as u64 * cs);
                runs.push(((pos - off) as usize, phys, (run_end - pos) as usize));
                pos = run_end;
            } else {
                pos = chunk_end;
            }
        }
        Ok(ReadPlan::Device { dev: self.cache.dev().clone(), len, runs, _in_flight: self.reads.enter() })
    }

    /// Writes `data` at `off`, allocating what is missing; updates size and times in `inode`
    /// (the caller writes it). Returns how many bytes went in: all of them, or fewer when the
    /// volume filled up part-way (a short write, as kernel filesystems give; the next write
    /// then fails with ENOSPC).
    pub fn file_write(&mut self, inode: &mut Inode, off: u64, data: &[u8], now: Time) -> Result<usize> {
        // Data goes to the device before the inode is written: only under the inode's lock
        // exclusive (so does every data change below).
        self.cache.check(inode.blkno, LockMode::Ex)?;
        let end = off.checked_add(data.len() as u64).ok_or(FsError::TooBig)?;
        if end > self.max_file_size() {
            return Err(FsError::TooBig);
        }
        if let Id2::Inline(d) = &mut inode.id2 {
            if end as usize <= d.data.len() {
                d.data[off as usize..end as usize].copy_from_slice(data);
                inode.size = inode.size.max(end);
                touch_mtime(inode, now);
                return Ok(data.len());
            }
            self.uninline_file(inode)?;
        }
        let mut end = end;
        if !data.is_empty() {
            end = self.ensure_written(inode, off, end, true)?;
            self.write_mapped(inode, off, &data[..(end - off) as usize])?;
        }
        inode.size = inode.size.max(end);
        touch_mtime(inode, now);
        Ok((end - off) as usize)
    }

    /// [`ensure_written`](Self::ensure_written) of the whole range, or ENOSPC.
    fn ensure_all_written(&mut self, inode: &mut Inode, off: u64, end: u64, caller_writes: bool) -> Result<()> {
        match self.ensure_written(inode, off, end, caller_writes)? {
            reached if reached < end => Err(FsError::NoSpace),
            _ => Ok(()),
        }
    }

    /// Makes `[off, end)` backed by written clusters: allocates holes and converts unwritten
    /// extents, zeroing them since they were never written — except, when `caller_writes`,
    /// the part of `[off, end)` the caller writes next (zeroing clusters about to be
    /// overwritten doubles the data written, and on a host file it punches and reallocates
    /// them). Returns where the backed range ends: `end`, or less when the volume filled up
    /// after `off` (then a cluster boundary, so every cluster taken lies inside what the caller
    /// writes). The data goes to the device before the transaction that maps it commits
    /// (ordered mode), and an operation that fails gives the clusters back, so stale bytes are
    /// never readable.
    fn ensure_written(&mut self, inode: &mut Inode, off: u64, end: u64, caller_writes: bool) -> Result<u64> {
        let covered = if caller_writes { off..end } else { off..off };
        let cs = self.cs();
        let bpc = self.geo.bpc();
        let (first, last) = (off / cs, (end - 1) / cs);
        let mut tree = self.load_tree(inode)?;
        let mut changed = false;
        let mut reached = end;
        let mut c = first;
        while c <= last {
            let step = match extent_map::lookup(&tree.recs, c).copied() {
                Some(r) if r.flags & EXT_UNWRITTEN == 0 => {
                    c = r.end();
                    continue;
                }
                Some(r) => {
                    let stop = r.end().min(last + 1);
                    self.zero_uncovered(r.blkno + (c - r.cpos as u64) * bpc, c, stop - c, &covered).map(|()| {
                        extent_map::mark_written(&mut tree.recs, c, stop - c, bpc);
                        stop
                    })
                }
                None => {
                    // The hole ends at the next mapped cluster or the end of the write.
                    let next = tree.recs.iter().map(|r| r.cpos as u64).filter(|&p| p > c).min().unwrap_or(u64::MAX);
                    let want = (last + 1).min(next) - c;
                    let goal = goal_after(&tree.recs, c, &self.geo);
                    self.alloc_hole(&mut tree.recs, c, want, goal, 0, &covered).map(|got| c + got)
                }
            };
            match step {
                Ok(next) => c = next,
                // Full after `off`: what is backed so far makes a short write.
                Err(FsError::NoSpace) if c * cs > off => {
                    reached = c * cs;
                    break;
                }
                // Any other error: the clusters taken so far are given back by the operation's
                // undo (Core::abort_op), with every other change it made.
                Err(e) => return Err(e),
            }
            changed = true;
        }
        if changed {
            self.store_tree(inode, &mut tree)?;
        }
        Ok(reached)
    }

    /// Maps up to `want` new clusters at logical cluster `c` (zeroed outside the file bytes
    /// `covered`, which the caller writes, unless `flags` says unwritten); returns how many it
    /// got.
    fn alloc_hole(
        &mut self,
        recs: &mut Vec<ExtentRec>,
        c: u64,
        want: u64,
        goal: Option<u64>,
        flags: u8,
        covered: &Range<u64>,
    ) -> Result<u64> {
        let (cluster, got) = self.alloc_clusters(want, goal)?;
        let blkno = self.geo.cluster_to_blkno(cluster);
        if flags & EXT_UNWRITTEN == 0 {
            self.zero_uncovered(blkno, c, got, covered)?;
        }
        extent_map::insert(recs, c as u32, got as u32, blkno, flags, self.geo.bpc());
        Ok(got)
    }

    /// Moves inline data into a first cluster (§9) and makes the inode extent-based.
    fn uninline_file(&mut self, inode: &mut Inode) -> Result<()> {
        let Id2::Inline(d) = &inode.id2 else { return Ok(()) };
        let bytes = d.data[..(inode.size as usize).min(d.data.len())].to_vec();
        inode.dyn_features &= !INLINE_DATA_FL;
        inode.id2 = Id2::Extents(ExtentList::empty(crate::format::extent::recs_per_inode(self.bs())));
        if !bytes.is_empty() {
            self.ensure_all_written(inode, 0, bytes.len() as u64, true)?;
            self.write_mapped(inode, 0, &bytes)?;
        }
        Ok(())
    }

    /// Changes the size: shrinking frees whole clusters past the end and zeroes the tail of the
    /// last one; growing leaves a hole (sparse) or allocates zeroed clusters (non-sparse).
    pub fn file_truncate(&mut self, inode: &mut Inode, size: u64, now: Time) -> Result<()> {
        if size > self.max_file_size() {
            return Err(FsError::TooBig);
        }
        self.cache.check(inode.blkno, LockMode::Ex)?;
        if let Id2::Inline(d) = &mut inode.id2 {
            if size as usize <= d.data.len() {
                let from = (size as usize).min(inode.size as usize);
                d.data[from..].fill(0);
                inode.size = size;
                touch_mtime(inode, now);
                return Ok(());
            }
            self.uninline_file(inode)?;
        }
        let cs = self.cs();
        if size < inode.size {
            let keep = size.div_ceil(cs);
            let mut tree = self.load_tree(inode)?;
            let freed = extent_map::remove(
                &mut tree.recs,
                keep,
                u64::from(u32::MAX) + 1 - keep.min(u64::from(u32::MAX)),
                self.geo.bpc(),
            );
            for (blkno, n) in freed {
                self.free_clusters(blkno, n)?;
            }
            self.store_tree(inode, &mut tree)?;
            // Bytes past the new end inside the last cluster must read as zeros later.
            if size % cs != 0 {
                if let Some(r) = extent_map::lookup(&tree.recs, size / cs).filter(|r| r.flags & EXT_UNWRITTEN == 0) {
                    let phys = r.blkno * self.bs() as u64 + (size - r.cpos as u64 * cs);
                    let zeros = vec![0u8; (cs - size % cs) as usize];
                    self.cache.dev().write_at(&zeros, phys)?;
                }
            }
        } else if size > inode.size && !self.sparse_enabled() {
            self.ensure_all_written(inode, inode.size, size, false)?;
        }
        inode.size = size;
        touch_mtime(inode, now);
        Ok(())
    }

    /// fallocate: `keep_size` leaves i_size alone; `punch` frees whole clusters in the range
    /// and zeroes the partial ones; otherwise holes become unwritten (or zeroed) extents.
    pub fn file_fallocate(
        &mut self,
        inode: &mut Inode,
        off: u64,
        len: u64,
        keep_size: bool,
        punch: bool,
        now: Time,
    ) -> Result<()> {
        let end = off.checked_add(len).ok_or(FsError::TooBig)?;
        if end > self.max_file_size() {
            return Err(FsError::TooBig);
        }
        if inode.mode & S_IFMT != S_IFREG {
            return Err(FsError::NotSupported);
        }
        self.cache.check(inode.blkno, LockMode::Ex)?;
        // On a sparse volume i_size must reach into the last allocated cluster (fsck.ocfs2's
        // INODE_SPARSE_SIZE, ocfs2-format.md §15): clusters wholly past the end of the file
        // cannot be kept, so KEEP_SIZE may only allocate up to the cluster holding i_size.
        let stays_inline = matches!(inode.id2, Id2::Inline(_)) && end <= inline_capacity(self.bs()) as u64;
        if keep_size && !punch && len > 0 && !stays_inline && end > inode.size.div_ceil(self.cs()) * self.cs() {
            return Err(FsError::NotSupported);
        }
        if matches!(inode.id2, Id2::Inline(_)) {
            if punch {
                if let Id2::Inline(d) = &mut inode.id2 {
                    let s = (off as usize).min(d.data.len());
                    let e = (end as usize).min(d.data.len());
                    d.data[s..e].fill(0);
                }
                return Ok(());
            }
            if end as usize <= inline_capacity(self.bs()) as usize {
                if !keep_size {
                    inode.size = inode.size.max(end);
                }
                return Ok(());
            }
            self.uninline_file(inode)?;
        }
        let cs = self.cs();
        let bpc = self.geo.bpc();
        let mut tree = self.load_tree(inode)?;
        if punch {
            let (first_full, end_full) = (off.div_ceil(cs), end / cs);
            if end_full > first_full {
                for (blkno, n) in extent_map::remove(&mut tree.recs, first_full, end_full - first_full, bpc) {
                    self.free_clusters(blkno, n)?;
                }
                self.store_tree(inode, &mut tree)?;
            }
            // Partial clusters at either edge: write zeros over the written parts.
            for (s, e) in [(off, (first_full * cs).min(end)), ((end_full * cs).max(off), end)] {
                if e > s {
                    let zeros = vec![0u8; (e - s) as usize];
                    if let Some(r) = extent_map::lookup(&tree.recs, s / cs).filter(|r| r.flags & EXT_UNWRITTEN == 0) {
                        let phys = r.blkno * self.bs() as u64 + (s - r.cpos as u64 * cs);
                        self.cache.dev().write_at(&zeros, phys)?;
                    }
                }
            }
            touch_mtime(inode, now);
            return Ok(());
        }
        let flags = if self.unwritten_enabled() { EXT_UNWRITTEN } else { 0 };
        let mut c = off / cs;
        let last = (end.max(off + 1) - 1) / cs;
        while c <= last && len > 0 {
            if let Some(r) = extent_map::lookup(&tree.recs, c) {
                c = r.end();
                continue;
            }
            let next = tree.recs.iter().map(|r| r.cpos as u64).filter(|&p| p > c).min().unwrap_or(u64::MAX);
            let want = (last + 1).min(next) - c;
            let goal = goal_after(&tree.recs, c, &self.geo);
            c += self.alloc_hole(&mut tree.recs, c, want, goal, flags, &(off..off))?;
        }
        self.store_tree(inode, &mut tree)?;
        if !keep_size && end > inode.size {
            inode.size = end;
        }
        inode.ctime = now.sec;
        inode.ctime_nsec = now.nsec;
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE from `off` (unwritten extents count as holes only when reading
    /// them would give zeros; like ext4 without page-cache probing, they count as data).
    pub fn file_seek(&mut self, inode: &Inode, off: u64, what: Seek) -> Result<u64> {
        if off >= inode.size {
            return Err(FsError::Nxio);
        }
        if matches!(inode.id2, Id2::Inline(_)) {
            return Ok(if what == Seek::Data { off } else { inode.size });
        }
        let cs = self.cs();
        let tree = self.load_tree(inode)?;
        let mut c = off / cs;
        loop {
            let pos = (c * cs).max(off);
            if pos >= inode.size {
                return if what == Seek::Data { Err(FsError::Nxio) } else { Ok(inode.size) };
            }
            match (extent_map::lookup(&tree.recs, c), what) {
                (Some(_), Seek::Data) | (None, Seek::Hole) => return Ok(pos),
                (Some(r), Seek::Hole) => c = r.end(),
                (None, Seek::Data) => match tree.recs.iter().map(|r| r.cpos as u64).filter(|&p| p > c).min() {
                    Some(p) => c = p,
                    None => return Err(FsError::Nxio),
                },
            }
        }
    }
}

/// Allocation goal: right after the physical end of the extent before `cpos`.
fn goal_after(recs: &[ExtentRec], cpos: u64, geo: &super::geometry::Geometry) -> Option<u64> {
    let prev = recs.iter().take_while(|r| (r.cpos as u64) < cpos).last()?;
    Some((geo.blkno_to_cluster(prev.blkno) + prev.len as u64).min(geo.total_clusters as u64 - 1))
}

fn touch_mtime(inode: &mut Inode, now: Time) {
    (inode.mtime, inode.mtime_nsec, inode.ctime, inode.ctime_nsec) = (now.sec, now.nsec, now.sec, now.nsec);
}

impl Core {
    /// Zeroes the `n` clusters at device block `blkno`, which hold file clusters `c..c + n`,
    /// except for the file bytes in `covered`.
    fn zero_uncovered(&mut self, blkno: u64, c: u64, n: u64, covered: &Range<u64>) -> Result<()> {
        let (cs, bs) = (self.cs(), self.bs() as u64);
        let (start, end) = (c * cs, (c + n) * cs);
        if covered.is_empty() || covered.end <= start || covered.start >= end {
            return self.zero_clusters(blkno, n);
        }
        let phys = |pos: u64| blkno * bs + (pos - start);
        for (s, e) in [(start, covered.start.max(start)), (covered.end.min(end), end)] {
            if e > s {
                self.cache.dev().zero_range(phys(s), e - s)?;
            }
        }
        Ok(())
    }

    /// Writes file bytes through the extent map, run by run (the range must be mapped).
    fn write_mapped(&mut self, inode: &Inode, off: u64, data: &[u8]) -> Result<()> {
        let tree = self.load_tree(inode)?;
        let (cs, bs) = (self.cs(), self.bs() as u64);
        let dev = self.cache.dev().clone();
        let end = off + data.len() as u64;
        let mut pos = off;
        while pos < end {
            let r = extent_map::lookup(&tree.recs, pos / cs).ok_or(FsError::Corrupt {
                blkno: inode.blkno,
                what: format!("cluster {} unmapped after allocation", pos / cs),
            })?;
            let run_end = (r.end() * cs).min(end);
            dev.write_at(
                &data[(pos - off) as usize..(run_end - off) as usize],
                r.blkno * bs + (pos - r.cpos as u64 * cs),
            )?;
            pos = run_end;
        }
        Ok(())
    }
}

/// A file read planned under the core: run it after releasing the core (see `read_gate`).
pub enum ReadPlan {
    Ready(Vec<u8>),
    /// `len` bytes: `(offset in the result, device offset, length)` runs, zeros elsewhere.
    Device {
        dev: Arc<dyn BlockDevice>,
        len: usize,
        runs: Vec<(usize, u64, usize)>,
        _in_flight: InFlight,
    },
}

impl ReadPlan {
    pub fn run(self) -> Result<ReadBuf> {
        match self {
            ReadPlan::Ready(data) => Ok(ReadBuf::from_vec(data)),
            ReadPlan::Device { dev, len, runs, _in_flight } => {
                // Runs come in file order; what lies between them (holes, unwritten extents)
                // reads as zeros. Every byte is written: the buffer may hold an earlier read.
                let mut out = ReadBuf::unfilled(len);
                let buf = out.as_mut_slice();
                let mut filled = 0;
                for (at, phys, n) in runs {
                    buf[filled..at].fill(0);
                    dev.read_at(&mut buf[at..at + n], phys)?;
                    filled = at + n;
                }
                buf[filled..].fill(0);
                Ok(out)
            }
        }
    }
}
