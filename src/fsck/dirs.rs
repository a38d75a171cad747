//! Pass 2 (ocfs2-format.md §8, §15 pass 2): every directory block or inline area. Broken
//! `rec_len`s are salvaged (the record is stretched to the next plausible entry); '.' and '..'
//! must come first; other entries must have a sane name, point at a live inode of the type
//! they claim, be unique, and give each subdirectory only one parent. Bad entries are removed
//! (merged into the previous record, §8.3).

use super::{Checker, Result};
use crate::format::bytes::{le16, le64, put_le16, put_le64, put_u8, u8_at};
use crate::format::dirent::{
    file_type_of_mode, parse_entries, rec_len_for, write_entry, DirEntry, FT_DIR, MIN_REC_LEN,
};
use crate::format::extent::ExtentRec;
use crate::format::inline::INLINE_DATA_OFFSET;
use crate::format::inode::{Id2, Inode, ID2_OFFSET};
use std::collections::{HashMap, HashSet};

/// One directory block, or the inline area of an inline directory (`blkno` = the inode).
#[derive(Debug, Clone)]
pub struct Area {
    pub blkno: u64,
    pub inline: bool,
    pub bytes: Vec<u8>,
}

/// A directory after pass 2: its areas (well-formed) and its '..' target.
#[derive(Debug, Clone)]
pub struct Dir {
    pub areas: Vec<Area>,
    pub dotdot: u64,
}

/// A used entry and where it lives.
#[derive(Debug, Clone)]
pub struct Ent {
    pub area: usize,
    pub off: usize,
    pub inode: u64,
    pub file_type: u8,
    pub name: Vec<u8>,
}

impl Dir {
    /// Used entries other than '.' and '..' of the first area's first two records.
    pub fn children(&self) -> Vec<Ent> {
        self.all().into_iter().filter(|e| !(e.area == 0 && (e.name == b"." || e.name == b".."))).collect()
    }

    /// Every used entry, in order.
    pub fn all(&self) -> Vec<Ent> {
        let mut out = Vec::new();
        for (i, a) in self.areas.iter().enumerate() {
            for e in parse_entries(&a.bytes, a.blkno).unwrap_or_default() {
                if e.is_used() {
                    out.push(Ent { area: i, off: e.offset, inode: e.inode, file_type: e.file_type, name: e.name });
                }
            }
        }
        out
    }

    /// Removes the entry at `off` of area `area`: merged into the previous record, or marked
    /// unused when it is the first of its area (§8.3).
    pub fn remove(&mut self, area: usize, off: usize) {
        let Some(a) = self.areas.get_mut(area) else { return };
        let entries = parse_entries(&a.bytes, a.blkno).unwrap_or_default();
        let Some(e) = entries.iter().find(|e| e.offset == off) else { return };
        match entries.iter().find(|p| p.offset + p.rec_len as usize == off) {
            Some(prev) => put_le16(&mut a.bytes, prev.offset + 8, prev.rec_len.saturating_add(e.rec_len)),
            None => {
                put_le64(&mut a.bytes, off, 0);
                put_u8(&mut a.bytes, off + 11, 0);
            }
        }
    }

    pub fn set_inode(&mut self, area: usize, off: usize, ino: u64) {
        if let Some(a) = self.areas.get_mut(area) {
            put_le64(&mut a.bytes, off, ino);
        }
    }

    pub fn set_type(&mut self, area: usize, off: usize, ft: u8) {
        if let Some(a) = self.areas.get_mut(area) {
            put_u8(&mut a.bytes, off + 11, ft);
        }
    }

    /// Sets '..' (second record of the first area) when it exists.
    pub fn set_dotdot(&mut self, ino: u64) -> Option<usize> {
        let e = self.all().into_iter().find(|e| e.area == 0 && e.name == b"..")?;
        self.set_inode(0, e.off, ino);
        self.dotdot = ino;
        Some(0)
    }

    /// Adds an entry where a record has room; returns the area changed.
    pub fn add(&mut self, name: &[u8], ino: u64, ft: u8) -> Option<usize> {
        let need = rec_len_for(name.len());
        for (i, a) in self.areas.iter_mut().enumerate() {
            for e in parse_entries(&a.bytes, a.blkno).unwrap_or_default() {
                let rec = e.rec_len as usize;
                if !e.is_used() && rec >= need {
                    write_entry(&mut a.bytes, e.offset, ino, rec as u16, ft, name);
                    return Some(i);
                }
                let own = rec_len_for(e.name.len());
                if e.is_used() && rec >= own + need {
                    put_le16(&mut a.bytes, e.offset + 8, own as u16);
                    write_entry(&mut a.bytes, e.offset + own, ino, (rec - own) as u16, ft, name);
                    return Some(i);
                }
            }
        }
        None
    }

    /// Writes area `i` back: the block, or the inline area inside the inode block (§8.4).
    pub fn flush(&self, c: &Checker, i: usize) -> Result<()> {
        let Some(a) = self.areas.get(i) else { return Ok(()) };
        if a.inline {
            let Some(mut b) = c.read(a.blkno)? else { return Ok(()) };
            let start = ID2_OFFSET + INLINE_DATA_OFFSET;
            if let Some(dst) = b.get_mut(start..start + a.bytes.len()) {
                dst.copy_from_slice(&a.bytes);
                c.write(a.blkno, &b)?;
            }
        } else {
            c.write(a.blkno, &a.bytes)?;
        }
        Ok(())
    }
}

/// Could a record start at `off`? (rec_len sane, name fits, inode inside the volume.)
fn plausible(b: &[u8], off: usize, blocks: u64) -> bool {
    let rest = b.len().saturating_sub(off);
    if rest < MIN_REC_LEN {
        return false;
    }
    let (ino, rec, nl) = (le64(b, off), le16(b, off + 8) as usize, u8_at(b, off + 10) as usize);
    rec >= MIN_REC_LEN
        && rec % 4 == 0
        && rec <= rest
        && (ino == 0 || (nl > 0 && rec_len_for(nl) <= rec && ino < blocks))
}

/// Makes an area parse (§8.3): each bad `rec_len` is stretched to the next plausible record
/// (or the end); a too-short tail is given to the record before it. Returns one message per
/// repair.
pub fn salvage(a: &mut Area, blocks: u64) -> Vec<String> {
    let mut msgs = Vec::new();
    let len = a.bytes.len();
    let mut off = 0usize;
    let mut prev: Option<usize> = None;
    while off < len {
        let rest = len - off;
        if rest < MIN_REC_LEN {
            match prev {
                Some(p) => {
                    let r = le16(&a.bytes, p + 8) as usize + rest;
                    put_le16(&mut a.bytes, p + 8, r as u16);
                }
                None => a.bytes.iter_mut().for_each(|b| *b = 0),
            }
            msgs.push(format!(
                "directory block {}: {rest}-byte tail at offset {off} given to the previous entry",
                a.blkno
            ));
            break;
        }
        let ino = le64(&a.bytes, off);
        let rec = le16(&a.bytes, off + 8) as usize;
        let nl = u8_at(&a.bytes, off + 10) as usize;
        let rest_ok = |r: usize| r == rest || rest - r >= MIN_REC_LEN;
        let ok = rec >= MIN_REC_LEN
            && rec.is_multiple_of(4)
            && rec <= rest
            && rest_ok(rec)
            && (ino == 0 || (nl > 0 && rec_len_for(nl) <= rec));
        if ok {
            prev = Some(off);
            off += rec;
            continue;
        }
        let min = if ino != 0 && nl > 0 { rec_len_for(nl) } else { MIN_REC_LEN };
        let mut new_len = rest;
        let mut p = off + min;
        while p + MIN_REC_LEN <= len {
            if plausible(&a.bytes, p, blocks) {
                new_len = p - off;
                break;
            }
            p += 4;
        }
        if ino != 0 && (nl == 0 || rec_len_for(nl) > new_len) {
            put_le64(&mut a.bytes, off, 0);
        }
        put_le16(&mut a.bytes, off + 8, new_len as u16);
        msgs.push(format!(
            "directory block {}: entry at offset {off} has rec_len {rec} (name_len {nl}); set to {new_len}",
            a.blkno
        ));
        prev = Some(off);
        off += new_len;
    }
    if parse_entries(&a.bytes, a.blkno).is_err() {
        a.bytes.iter_mut().for_each(|b| *b = 0);
        write_entry(&mut a.bytes, 0, 0, len as u16, 0, &[]);
        msgs.push(format!("directory block {}: unreadable, emptied", a.blkno));
    }
    msgs
}

/// The areas of a directory: the inline area, or each block below `i_size` (§8.3, §8.4).
/// Stops at the first hole or unreadable block and returns how many blocks were usable.
fn read_areas(c: &Checker, inode: &Inode, leaves: &[ExtentRec]) -> Result<(Vec<Area>, Option<u64>)> {
    if let Id2::Inline(d) = &inode.id2 {
        return Ok((vec![Area { blkno: inode.blkno, inline: true, bytes: d.data.clone() }], None));
    }
    let nblocks = inode.size / c.bs as u64;
    let mapped: u64 = leaves.iter().map(|r| r.len as u64).sum::<u64>() * c.bpc;
    let mut areas = Vec::new();
    for lblk in 0..nblocks.min(mapped) {
        let Some((pblk, _)) = c.vol.map_block(leaves, lblk) else { return Ok((areas, Some(lblk))) };
        let Some(bytes) = c.read(pblk)? else { return Ok((areas, Some(lblk))) };
        areas.push(Area { blkno: pblk, inline: false, bytes });
    }
    let short = (nblocks > mapped).then_some(mapped);
    Ok((areas, short))
}

/// Names and inodes of a directory's used entries, read without reporting or writing (used to
/// find the system files before the passes).
pub fn lenient_entries(c: &Checker, inode: &Inode) -> Result<Vec<(Vec<u8>, u64)>> {
    let leaves = c.vol.leaf_extents(inode).unwrap_or_default();
    let (areas, _) = read_areas(c, inode, &leaves)?;
    let mut dir = Dir { areas, dotdot: 0 };
    for a in dir.areas.iter_mut() {
        salvage(a, c.blocks);
    }
    Ok(dir.all().into_iter().map(|e| (e.name, e.inode)).collect())
}

/// Adds an entry to a directory on disk (before pass 2 has loaded it); false when there is
/// no room.
pub fn add_on_disk(c: &Checker, inode: &Inode, name: &[u8], ino: u64, ft: u8) -> Result<bool> {
    let leaves = c.vol.leaf_extents(inode).unwrap_or_default();
    let (areas, _) = read_areas(c, inode, &leaves)?;
    let mut dir = Dir { areas, dotdot: 0 };
    for a in dir.areas.iter_mut() {
        salvage(a, c.blocks);
    }
    match dir.add(name, ino, ft) {
        Some(i) => {
            dir.flush(c, i)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

pub fn pass2(c: &mut Checker) -> Result<()> {
    let dirs: Vec<u64> = c.inodes.iter().filter(|(_, i)| i.mode & 0o170000 == 0o040000).map(|(&b, _)| b).collect();
    let mut parent_of: HashMap<u64, u64> = HashMap::new();
    for blkno in dirs {
        check_dir(c, blkno, &mut parent_of)?;
    }
    Ok(())
}

fn check_dir(c: &mut Checker, blkno: u64, parent_of: &mut HashMap<u64, u64>) -> Result<()> {
    let Some(raw) = c.read(blkno)? else { return Ok(()) };
    let Ok(inode) = Inode::decode(&raw, blkno) else { return Ok(()) };
    let leaves = c.inodes.get(&blkno).map(|i| i.leaves.clone()).unwrap_or_default();
    let (areas, short) = read_areas(c, &inode, &leaves)?;
    if let Some(n) = short {
        let msg = format!(
            "directory inode {blkno} has i_size {} but only {n} readable blocks; i_size set to {}",
            inode.size,
            n * c.bs as u64
        );
        if c.report.found("DIR_HOLE", blkno, false, msg) {
            let mut b = raw.clone();
            put_le64(&mut b, 0x20, n * c.bs as u64);
            c.write(blkno, &b)?;
        }
    }
    if areas.is_empty() {
        c.report.unfixable("DIR_ZERO", blkno, format!("directory inode {blkno} has no directory blocks"));
        c.dirs.insert(blkno, Dir { areas, dotdot: 0 });
        return Ok(());
    }
    let mut dir = Dir { areas, dotdot: 0 };
    let mut dirty: HashSet<usize> = HashSet::new();
    for i in 0..dir.areas.len() {
        for m in salvage(&mut dir.areas[i], c.blocks) {
            if c.report.found("DIRENT_LENGTH", dir.areas[i].blkno, false, m) {
                dirty.insert(i);
            }
        }
    }
    check_dots(c, blkno, &mut dir, &mut dirty);
    let mut names: HashSet<Vec<u8>> = HashSet::new();
    for e in dir.children() {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let what = format!("directory {blkno}: entry '{name}' (inode {})", e.inode);
        let bad = if e.name == b"." || e.name == b".." {
            Some(("DIRENT_DOTTY_DUP", format!("{what} is a second '{name}'")))
        } else if e.name.iter().any(|&b| b == b'/' || b == 0) {
            Some(("DIRENT_NAME_CHARS", format!("{what} has '/' or NUL in its name")))
        } else if e.inode >= c.blocks || e.inode < 3 {
            Some(("DIRENT_INODE_RANGE", format!("{what} points outside the volume")))
        } else if !c.inodes.contains_key(&e.inode) {
            Some(("DIRENT_INODE_FREE", format!("{what} points at an inode that is not in use")))
        } else if !names.insert(e.name.clone()) {
            Some(("DIRENT_DUPLICATE", format!("{what} repeats a name")))
        } else {
            None
        };
        if let Some((code, msg)) = bad {
            if c.report.found(code, blkno, false, format!("{msg}; entry removed")) {
                dirty.insert(e.area);
            }
            dir.remove(e.area, e.off);
            continue;
        }
        let mode = c.inodes.get(&e.inode).map_or(0, |i| i.mode);
        let ft = file_type_of_mode(mode);
        if e.file_type != ft {
            let msg = format!("{what} has file type {} but the inode's mode says {ft}", e.file_type);
            if c.report.found("DIRENT_TYPE", blkno, false, msg) {
                dirty.insert(e.area);
            }
            dir.set_type(e.area, e.off, ft);
        }
        if ft == FT_DIR {
            if let Some(p) = parent_of.get(&e.inode) {
                let msg = format!("{what}: directory {} already has a parent ({p}); entry removed", e.inode);
                if c.report.found("DIR_PARENT_DUP", blkno, false, msg) {
                    dirty.insert(e.area);
                }
                dir.remove(e.area, e.off);
                continue;
            }
            parent_of.insert(e.inode, blkno);
        }
    }
    for i in dirty {
        dir.flush(c, i)?;
    }
    c.dirs.insert(blkno, dir);
    Ok(())
}

/// '.' first (pointing at the directory) and '..' second (§8.3).
fn check_dots(c: &mut Checker, blkno: u64, dir: &mut Dir, dirty: &mut HashSet<usize>) {
    let Some(a) = dir.areas.first() else { return };
    let entries: Vec<DirEntry> = parse_entries(&a.bytes, a.blkno).unwrap_or_default();
    match entries.first() {
        Some(e) if e.is_used() && e.name == b"." => {
            if e.inode != blkno {
                let msg = format!("directory {blkno}: '.' points at {} instead of itself", e.inode);
                if c.report.found("DIRENT_DOT_INODE", blkno, false, msg) {
                    dirty.insert(0);
                }
                dir.set_inode(0, 0, blkno);
            }
        }
        Some(e) if !e.is_used() => {
            if c.report.found(
                "DIRENT_NOT_DOTTY",
                blkno,
                false,
                format!("directory {blkno}: first entry is not '.'; recreated"),
            ) {
                dirty.insert(0);
            }
            let rec = e.rec_len;
            if let Some(a) = dir.areas.first_mut() {
                write_entry(&mut a.bytes, 0, blkno, rec, FT_DIR, b".");
            }
        }
        _ => c.report.unfixable("DIRENT_NOT_DOTTY", blkno, format!("directory {blkno}: first entry is not '.'")),
    }
    let entries: Vec<DirEntry> =
        dir.areas.first().and_then(|a| parse_entries(&a.bytes, a.blkno).ok()).unwrap_or_default();
    match entries.get(1) {
        Some(e) if e.is_used() && e.name == b".." => dir.dotdot = e.inode,
        _ => {
            c.report.unfixable("DIRENT_NOT_DOTTY", blkno, format!("directory {blkno}: second entry is not '..'"));
        }
    }
}
