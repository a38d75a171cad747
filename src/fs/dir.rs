//! Directories (ocfs2-format.md §8): entries tiling an inline area or the directory's blocks,
//! with an in-memory index per directory (name → position, and the largest free record per
//! block) so lookups and inserts do not scan the whole directory.
//!
//! Entries never move once placed: an insert splits the slack of an existing record, a removal
//! merges the record into its predecessor, and inline → block conversion keeps byte offsets.
//! Positions therefore make stable readdir cookies.

use super::core::Core;
use super::error::{FsError, Result};
use super::extent_map;
use crate::format::dirent::*;
use crate::format::extent::ExtentList;
use crate::format::inode::{Id2, Inode, INLINE_DATA_FL};
use std::collections::HashMap;

/// Where an entry lives: logical block (0 for an inline directory) and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub lblk: u64,
    pub off: u16,
}

/// A directory entry as readdir reports it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Stable position cookie, never 0.
    pub cookie: u64,
    pub ino: u64,
    pub file_type: u8,
    pub name: Vec<u8>,
}

pub struct DirIndex {
    names: HashMap<Vec<u8>, (Loc, u64, u8)>,
    /// Largest record an insert could use, per block.
    free: Vec<u16>,
    /// Physical block of each logical block (empty for inline directories).
    pblk: Vec<u64>,
}

fn largest_free(entries: &[DirEntry]) -> u16 {
    entries.iter().map(|e| if e.is_used() { e.slack() } else { e.rec_len as usize }).max().unwrap_or(0) as u16
}

pub fn validate_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(())
}

impl Core {
    fn area(&mut self, dir: &Inode, idx: &DirIndex, lblk: u64) -> Result<Vec<u8>> {
        match &dir.id2 {
            Id2::Inline(d) => Ok(d.data.clone()),
            _ => {
                let p = *idx.pblk.get(lblk as usize).ok_or(FsError::Corrupt {
                    blkno: dir.blkno,
                    what: format!("directory block {lblk} is not mapped"),
                })?;
                self.cache.read(p, dir.blkno)
            }
        }
    }

    /// Writes an area back: inline areas go into `dir` (the caller writes the inode).
    fn put_area(&mut self, dir: &mut Inode, pblk: Option<u64>, data: Vec<u8>) -> Result<()> {
        match (&mut dir.id2, pblk) {
            (Id2::Inline(d), _) => {
                d.data = data;
                Ok(())
            }
            (_, Some(p)) => self.cache.write(p, dir.blkno, data),
            _ => Err(FsError::Corrupt { blkno: dir.blkno, what: "directory block without a location".into() }),
        }
    }

    /// Builds (or returns) the index of a directory.
    fn index(&mut self, dir: &Inode) -> Result<DirIndex> {
        if let Some(idx) = self.dirs.remove(&dir.blkno) {
            return Ok(idx);
        }
        let mut idx = DirIndex { names: HashMap::new(), free: Vec::new(), pblk: Vec::new() };
        let nblocks = match &dir.id2 {
            Id2::Inline(_) => 1,
            Id2::Extents(_) => {
                let tree = self.load_tree(dir)?;
                let n = dir.size / self.bs() as u64;
                for lblk in 0..n {
                    let cpos = lblk / self.geo.bpc();
                    let r = extent_map::lookup(&tree.recs, cpos).ok_or(FsError::Corrupt {
                        blkno: dir.blkno,
                        what: format!("directory hole at block {lblk}"),
                    })?;
                    idx.pblk.push(r.blkno + (cpos - r.cpos as u64) * self.geo.bpc() + lblk % self.geo.bpc());
                }
                n
            }
            _ => {
                return Err(FsError::Corrupt {
                    blkno: dir.blkno,
                    what: "directory with neither inline data nor extents".into(),
                })
            }
        };
        for lblk in 0..nblocks {
            let area = self.area(dir, &idx, lblk)?;
            let at = idx.pblk.get(lblk as usize).copied().unwrap_or(dir.blkno);
            let entries = parse_entries(&area, at)?;
            idx.free.push(largest_free(&entries));
            for e in entries.into_iter().filter(|e| e.is_used()) {
                idx.names.insert(e.name.clone(), (Loc { lblk, off: e.offset as u16 }, e.inode, e.file_type));
            }
        }
        Ok(idx)
    }

    fn with_index<T>(&mut self, dir: &Inode, f: impl FnOnce(&mut Core, &mut DirIndex) -> Result<T>) -> Result<T> {
        let mut idx = self.index(dir)?;
        let r = f(self, &mut idx);
        // A failed change may have left the index half-updated: rebuild it next time.
        if r.is_ok() {
            self.dirs.insert(dir.blkno, idx);
        }
        r
    }

    /// (inode, file type) of `name` in `dir`.
    pub fn dir_lookup(&mut self, dir: &Inode, name: &[u8]) -> Result<Option<(u64, u8)>> {
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        self.with_index(dir, |_, idx| Ok(idx.names.get(name).map(|(_, ino, ft)| (*ino, *ft))))
    }

    /// Adds `name` → `ino`. The caller has checked the name is not present and writes `dir`.
    pub fn dir_add(&mut self, dir: &mut Inode, name: &[u8], ino: u64, file_type: u8) -> Result<()> {
        validate_name(name)?;
        self.changing_dir(dir.blkno)?;
        let need = rec_len_for(name.len());
        let snapshot = dir.clone();
        self.with_index(&snapshot, |core, idx| loop {
            let candidates: Vec<u64> =
                (0..idx.free.len() as u64).filter(|&b| idx.free[b as usize] as usize >= need).collect();
            for lblk in candidates {
                if core.try_insert(dir, idx, lblk, name, ino, file_type, need)? {
                    return Ok(());
                }
            }
            if dir.is_inline() {
                core.uninline_dir(dir, idx)?;
            } else {
                core.grow_dir(dir, idx)?;
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn try_insert(
        &mut self,
        dir: &mut Inode,
        idx: &mut DirIndex,
        lblk: u64,
        name: &[u8],
        ino: u64,
        ft: u8,
        need: usize,
    ) -> Result<bool> {
        let mut area = self.area(dir, idx, lblk)?;
        let pblk = idx.pblk.get(lblk as usize).copied();
        let entries = parse_entries(&area, pblk.unwrap_or(dir.blkno))?;
        let Some(e) = entries.iter().find(|e| if e.is_used() { e.slack() >= need } else { e.rec_len as usize >= need })
        else {
            idx.free[lblk as usize] = largest_free(&entries);
            return Ok(false);
        };
        let off = if e.is_used() {
            let keep = rec_len_for(e.name.len());
            write_entry(&mut area, e.offset, e.inode, keep as u16, e.file_type, &e.name);
            let off = e.offset + keep;
            write_entry(&mut area, off, ino, e.rec_len - keep as u16, ft, name);
            off
        } else {
            write_entry(&mut area, e.offset, ino, e.rec_len, ft, name);
            e.offset
        };
        idx.free[lblk as usize] = largest_free(&parse_entries(&area, pblk.unwrap_or(dir.blkno))?);
        idx.names.insert(name.to_vec(), (Loc { lblk, off: off as u16 }, ino, ft));
        self.put_area(dir, pblk, area)?;
        Ok(true)
    }

    /// Inline directory → one block in a new cluster (§8.4); offsets are kept.
    fn uninline_dir(&mut self, dir: &mut Inode, idx: &mut DirIndex) -> Result<()> {
        let Id2::Inline(data) = &dir.id2 else { return Ok(()) };
        let bs = self.bs();
        let mut block = vec![0u8; bs];
        block[..data.data.len()].copy_from_slice(&data.data);
        let entries = parse_entries(&data.data, dir.blkno)?;
        let last =
            entries.last().ok_or(FsError::Corrupt { blkno: dir.blkno, what: "empty inline directory".into() })?;
        let stretched = (bs - last.offset) as u16;
        crate::format::bytes::put_le16(&mut block, last.offset + 8, stretched);
        let (cluster, _) = self.alloc_clusters(1, None)?;
        let blkno = self.geo.cluster_to_blkno(cluster);
        self.zero_clusters(blkno, 1)?;
        self.cache.write(blkno, dir.blkno, block.clone())?;
        dir.dyn_features &= !INLINE_DATA_FL;
        dir.id2 = Id2::Extents(ExtentList::empty(crate::format::extent::recs_per_inode(bs)));
        let mut tree = self.load_tree(dir)?;
        extent_map::insert(&mut tree.recs, 0, 1, blkno, 0, self.geo.bpc());
        self.store_tree(dir, &mut tree)?;
        dir.size = bs as u64;
        idx.pblk = vec![blkno];
        idx.free = vec![largest_free(&parse_entries(&block, blkno)?)];
        Ok(())
    }

    /// Appends an empty block to an extent directory (allocating a cluster when needed).
    fn grow_dir(&mut self, dir: &mut Inode, idx: &mut DirIndex) -> Result<()> {
        let bs = self.bs();
        let bpc = self.geo.bpc();
        let lblk = idx.pblk.len() as u64;
        let pblk = if lblk < dir.clusters as u64 * bpc {
            let tree = self.load_tree(dir)?;
            let cpos = lblk / bpc;
            let r = extent_map::lookup(&tree.recs, cpos)
                .ok_or(FsError::Corrupt { blkno: dir.blkno, what: "directory cluster not mapped".into() })?;
            r.blkno + (cpos - r.cpos as u64) * bpc + lblk % bpc
        } else {
            if lblk / bpc > u32::MAX as u64 {
                return Err(FsError::NoSpace);
            }
            let goal = idx.pblk.last().map(|&p| self.geo.blkno_to_cluster(p) + 1);
            let (cluster, _) = self.alloc_clusters(1, goal)?;
            let blkno = self.geo.cluster_to_blkno(cluster);
            self.zero_clusters(blkno, 1)?;
            let mut tree = self.load_tree(dir)?;
            extent_map::insert(&mut tree.recs, (lblk / bpc) as u32, 1, blkno, 0, bpc);
            self.store_tree(dir, &mut tree)?;
            blkno
        };
        let block = build_area(bs, &[]).ok_or(FsError::Invalid("block size"))?;
        self.cache.write(pblk, dir.blkno, block)?;
        dir.size = (lblk + 1) * bs as u64;
        idx.pblk.push(pblk);
        idx.free.push(bs as u16);
        Ok(())
    }

    /// Removes `name` from `dir` (the caller writes `dir`). Returns the inode it named.
    pub fn dir_remove(&mut self, dir: &mut Inode, name: &[u8]) -> Result<u64> {
        self.changing_dir(dir.blkno)?;
        let snapshot = dir.clone();
        self.with_index(&snapshot, |core, idx| {
            let (loc, ino, _) = idx.names.remove(name).ok_or(FsError::NotFound)?;
            let pblk = idx.pblk.get(loc.lblk as usize).copied();
            let mut area = core.area(dir, idx, loc.lblk)?;
            let entries = parse_entries(&area, pblk.unwrap_or(dir.blkno))?;
            let i = entries.iter().position(|e| e.offset == loc.off as usize).ok_or(FsError::Corrupt {
                blkno: pblk.unwrap_or(dir.blkno),
                what: format!("index points at offset {} which starts no entry", loc.off),
            })?;
            if i > 0 {
                let prev = &entries[i - 1];
                crate::format::bytes::put_le16(&mut area, prev.offset + 8, prev.rec_len + entries[i].rec_len);
            } else {
                crate::format::bytes::put_le64(&mut area, entries[i].offset, 0);
            }
            idx.free[loc.lblk as usize] = largest_free(&parse_entries(&area, pblk.unwrap_or(dir.blkno))?);
            core.put_area(dir, pblk, area)?;
            Ok(ino)
        })
    }

    /// Points an existing entry at another inode (rename over an existing name, `..` fix-ups).
    pub fn dir_retarget(&mut self, dir: &mut Inode, name: &[u8], ino: u64, file_type: u8) -> Result<()> {
        self.changing_dir(dir.blkno)?;
        let snapshot = dir.clone();
        self.with_index(&snapshot, |core, idx| {
            let entry = idx.names.get_mut(name).ok_or(FsError::NotFound)?;
            let loc = entry.0;
            *entry = (loc, ino, file_type);
            let pblk = idx.pblk.get(loc.lblk as usize).copied();
            let mut area = core.area(dir, idx, loc.lblk)?;
            crate::format::bytes::put_le64(&mut area, loc.off as usize, ino);
            crate::format::bytes::put_u8(&mut area, loc.off as usize + 11, file_type);
            core.put_area(dir, pblk, area)
        })
    }

    /// Used entries with position cookies greater than `after`, in position order.
    pub fn dir_list(&mut self, dir: &Inode, after: u64) -> Result<Vec<Listed>> {
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        let bs = self.bs() as u64;
        let snapshot = dir.clone();
        self.with_index(&snapshot, |core, idx| {
            let mut out = Vec::new();
            let first = after / bs;
            for lblk in first..idx.free.len() as u64 {
                let area = core.area(dir, idx, lblk)?;
                let at = idx.pblk.get(lblk as usize).copied().unwrap_or(dir.blkno);
                for e in parse_entries(&area, at)?.into_iter().filter(|e| e.is_used()) {
                    let cookie = lblk * bs + e.offset as u64 + 1;
                    if cookie > after {
                        out.push(Listed { cookie, ino: e.inode, file_type: e.file_type, name: e.name });
                    }
                }
            }
            Ok(out)
        })
    }

    /// True when only `.` and `..` remain.
    pub fn dir_is_empty(&mut self, dir: &Inode) -> Result<bool> {
        let snapshot = dir.clone();
        self.with_index(&snapshot, |_, idx| Ok(idx.names.keys().all(|n| n == b"." || n == b"..")))
    }

    /// Entries in the directory (including `.` and `..`).
    pub fn dir_len(&mut self, dir: &Inode) -> Result<usize> {
        let snapshot = dir.clone();
        self.with_index(&snapshot, |_, idx| Ok(idx.names.len()))
    }

    /// Writes the first entries of a new directory: `.` and `..` (inline, or in a new cluster
    /// when the volume has no inline data).
    pub fn dir_init(&mut self, dir: &mut Inode, parent: u64) -> Result<()> {
        let entries: [(u64, u8, &[u8]); 2] = [(dir.blkno, FT_DIR, b"."), (parent, FT_DIR, b"..")];
        if let Id2::Inline(d) = &mut dir.id2 {
            let cap = d.data.len();
            d.data = build_area(cap, &entries).ok_or(FsError::Invalid("inline area too small"))?;
            dir.size = cap as u64;
            return Ok(());
        }
        let bs = self.bs();
        let (cluster, _) = self.alloc_clusters(1, None)?;
        let blkno = self.geo.cluster_to_blkno(cluster);
        self.zero_clusters(blkno, 1)?;
        self.cache.write(blkno, dir.blkno, build_area(bs, &entries).ok_or(FsError::Invalid("block size"))?)?;
        let mut tree = self.load_tree(dir)?;
        extent_map::insert(&mut tree.recs, 0, 1, blkno, 0, self.geo.bpc());
        self.store_tree(dir, &mut tree)?;
        dir.size = bs as u64;
        Ok(())
    }
}
