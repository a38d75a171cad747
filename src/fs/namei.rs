//! Namespace operations: create, mknod, mkdir, symlink, link, unlink, rmdir, rename, setattr,
//! with POSIX link-count rules (§8.3), orphans for files unlinked while open (§11.1) and the
//! ownership rules kernel filesystems follow (caller's uid/gid, setgid directories, suid/sgid
//! cleared on chown).

use super::core::{Core, Time};
use super::dir::validate_name;
use super::error::{FsError, Result};
use super::lock::LockMode;
use crate::format::dirent::{file_type_of_mode, FT_DIR};
use crate::format::extent::ExtentList;
use crate::format::inode::*;

/// OCFS2_LINK_MAX without indexed directories.
pub const LINK_MAX: u16 = 32000;
const S_ISUID: u16 = 0o4000;
const S_ISGID: u16 = 0o2000;

/// Who asks (FUSE tells us).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// rename(2) flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// setattr's requested changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
}

fn set_ctime(inode: &mut Inode, now: Time) {
    inode.ctime = now.sec;
    inode.ctime_nsec = now.nsec;
}

fn set_mtime(inode: &mut Inode, now: Time) {
    inode.mtime = now.sec;
    inode.mtime_nsec = now.nsec;
    set_ctime(inode, now);
}

impl Core {
    /// The directory inode `parent`, checked to be a directory.
    fn dir_inode(&mut self, parent: u64) -> Result<Inode> {
        let dir = self.read_inode(parent)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(dir)
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Inode> {
        if name.len() > crate::format::dirent::MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        let dir = self.dir_inode(parent)?;
        let (ino, _) = self.dir_lookup(&dir, name)?.ok_or(FsError::NotFound)?;
        self.read_inode(ino)
    }

    /// Creates a non-directory inode of `mode` (regular, device, fifo, socket) or a directory.
    pub fn create(&mut self, parent: u64, name: &[u8], mode: u16, rdev: u64, who: Caller, now: Time) -> Result<Inode> {
        validate_name(name)?;
        let mut dir = self.dir_inode(parent)?;
        if self.dir_lookup(&dir, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let is_dir = mode & S_IFMT == S_IFDIR;
        if is_dir && dir.links_count >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        // A setgid directory gives its group to new entries, and its setgid bit to new directories.
        let (gid, mode) = if dir.mode & S_ISGID != 0 {
            (dir.gid, if is_dir { mode | S_ISGID } else { mode })
        } else {
            (who.gid, mode)
        };
        let mut inode = self.new_inode(mode, who.uid, gid, now)?;
        if matches!(mode & S_IFMT, S_IFCHR | S_IFBLK) {
            inode.id1 = rdev;
        }
        if is_dir {
            self.dir_init(&mut inode, dir.blkno)?;
            dir.links_count += 1;
        }
        self.write_inode(&inode)?;
        self.dir_add(&mut dir, name, inode.blkno, file_type_of_mode(mode))?;
        set_mtime(&mut dir, now);
        self.write_inode(&dir)?;
        Ok(inode)
    }

    /// A symlink: fast (target in the inode) when it fits, else one cluster (§10).
    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8], who: Caller, now: Time) -> Result<Inode> {
        validate_name(name)?;
        if target.is_empty() || target.len() >= 4096 || target.contains(&0) {
            return Err(if target.len() >= 4096 { FsError::NameTooLong } else { FsError::Invalid("symlink target") });
        }
        let mut dir = self.dir_inode(parent)?;
        if self.dir_lookup(&dir, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let mut inode = self.new_inode(S_IFLNK | 0o777, who.uid, who.gid, now)?;
        let cap = fast_symlink_capacity(self.bs());
        inode.size = target.len() as u64;
        if target.len() < cap {
            let mut raw = vec![0u8; cap];
            raw[..target.len()].copy_from_slice(target);
            inode.id2 = Id2::FastSymlink(raw);
        } else {
            inode.id2 = Id2::Extents(ExtentList::empty(crate::format::extent::recs_per_inode(self.bs())));
            let mut data = target.to_vec();
            data.push(0);
            let size = inode.size;
            if self.file_write(&mut inode, 0, &data, now)? < data.len() {
                return Err(FsError::NoSpace);
            }
            inode.size = size;
        }
        self.write_inode(&inode)?;
        self.dir_add(&mut dir, name, inode.blkno, crate::format::dirent::FT_SYMLINK)?;
        set_mtime(&mut dir, now);
        self.write_inode(&dir)?;
        Ok(inode)
    }

    pub fn readlink(&mut self, ino: u64) -> Result<Vec<u8>> {
        let inode = self.read_inode(ino)?;
        if inode.mode & S_IFMT != S_IFLNK {
            return Err(FsError::Invalid("not a symlink"));
        }
        // Targets are shorter than PATH_MAX (`symlink` refuses longer ones): a corrupt i_size
        // must not size the read buffer (it made the daemon abort on a failed allocation).
        if inode.size >= 4096 {
            return Err(FsError::Corrupt { blkno: ino, what: format!("symlink of {} bytes", inode.size) });
        }
        let len = inode.size as usize;
        match &inode.id2 {
            Id2::FastSymlink(raw) => Ok(raw
                .get(..len)
                .ok_or(FsError::Corrupt { blkno: ino, what: "symlink longer than its inode".into() })?
                .to_vec()),
            _ => self.file_read(&inode, 0, len as u64),
        }
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8], now: Time) -> Result<Inode> {
        validate_name(name)?;
        let mut inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(FsError::NotPermitted);
        }
        self.cache.check(ino, LockMode::Ex)?;
        if inode.links_count >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let mut dir = self.dir_inode(parent)?;
        if self.dir_lookup(&dir, name)?.is_some() {
            return Err(FsError::Exists);
        }
        self.dir_add(&mut dir, name, ino, file_type_of_mode(inode.mode))?;
        set_mtime(&mut dir, now);
        self.write_inode(&dir)?;
        inode.links_count += 1;
        set_ctime(&mut inode, now);
        self.write_inode(&inode)?;
        Ok(inode)
    }

    /// Checks the cluster locks `drop_link` will need, before the operation changes any
    /// directory: a request that needs one more lock reruns, and the directories it changed
    /// lose their indexes (a big one's rebuild scans all its blocks).
    fn check_drop_link(&mut self, inode: &Inode, open: bool) -> Result<()> {
        self.cache.check(inode.blkno, LockMode::Ex)?;
        if (inode.is_dir() || inode.links_count <= 1) && !open {
            if let Some(alloc) = self.sys.inode_alloc_of(inode.suballoc_slot) {
                self.cache.check(alloc, LockMode::Ex)?;
            }
            if inode.clusters > 0 {
                self.cache.check(self.sys.global_bitmap, LockMode::Ex)?;
            }
        }
        Ok(())
    }

    /// Drops one link of `inode`; at zero links it is deleted, or orphaned while `open` says it
    /// may still be in use. Writes the inode; returns its number if it orphaned it.
    fn drop_link(&mut self, mut inode: Inode, open: bool, now: Time) -> Result<Option<u64>> {
        let dir_like = inode.is_dir();
        inode.links_count = if dir_like { 0 } else { inode.links_count.saturating_sub(1) };
        set_ctime(&mut inode, now);
        if inode.links_count > 0 {
            return self.write_inode(&inode).map(|()| None);
        }
        if open {
            let blkno = inode.blkno;
            return self.orphan(inode).map(|()| Some(blkno));
        }
        self.delete_inode(inode).map(|()| None)
    }

    /// Links an in-use, unlinked inode into this slot's orphan directory (§11.1).
    fn orphan(&mut self, mut inode: Inode) -> Result<()> {
        let slot = self.sys.slot;
        let mut odir = self.read_inode(self.sys.orphan_dir[slot as usize])?;
        let name = format!("{:016x}", inode.blkno);
        self.dir_add(&mut odir, name.as_bytes(), inode.blkno, file_type_of_mode(inode.mode))?;
        if inode.is_dir() {
            odir.links_count += 1;
        }
        self.write_inode(&odir)?;
        inode.flags |= ORPHANED_FL;
        inode.orphaned_slot = slot;
        self.write_inode(&inode)
    }

    /// Whether `ino` is an orphan: in use, unlinked, listed in an orphan directory.
    pub fn is_orphan(&mut self, ino: u64) -> Result<bool> {
        let inode = self.cache.read_inode(ino)?;
        Ok(inode.is_valid() && inode.flags & ORPHANED_FL != 0 && inode.links_count == 0)
    }

    /// Frees an orphaned inode once nobody uses it any more.
    pub fn reap_orphan(&mut self, ino: u64) -> Result<()> {
        if !self.is_orphan(ino)? {
            return Ok(());
        }
        let inode = self.cache.read_inode(ino)?;
        let odir_blk = *self.sys.orphan_dir.get(inode.orphaned_slot as usize).ok_or(FsError::Corrupt {
            blkno: ino,
            what: format!("orphaned in slot {} which does not exist", inode.orphaned_slot),
        })?;
        let mut odir = self.read_inode(odir_blk)?;
        self.dir_remove(&mut odir, format!("{:016x}", ino).as_bytes())?;
        if inode.is_dir() {
            odir.links_count = odir.links_count.saturating_sub(1);
        }
        self.write_inode(&odir)?;
        self.delete_inode(inode)
    }

    /// Orphans left in a slot's orphan directory (after a crash): their inode numbers.
    pub fn orphans_of(&mut self, slot: u16) -> Result<Vec<u64>> {
        let odir = self.read_inode(self.sys.orphan_dir[slot as usize])?;
        Ok(self.dir_list(&odir, 0)?.into_iter().filter(|e| e.name != b"." && e.name != b"..").map(|e| e.ino).collect())
    }

    /// The orphans of every slot.
    pub fn all_orphans(&mut self) -> Result<Vec<u64>> {
        let mut all = Vec::new();
        for slot in 0..self.sys.orphan_dir.len() as u16 {
            all.extend(self.orphans_of(slot)?);
        }
        Ok(all)
    }

    /// Removes a name; an inode left without links is freed, or orphaned while `is_open` says
    /// it may be in use (its number is returned then).
    pub fn unlink(
        &mut self,
        parent: u64,
        name: &[u8],
        is_open: impl Fn(u64) -> bool,
        now: Time,
    ) -> Result<Option<u64>> {
        let mut dir = self.dir_inode(parent)?;
        let (ino, _) = self.dir_lookup(&dir, name)?.ok_or(FsError::NotFound)?;
        // It changes: ask for its lock exclusive at once rather than shared first.
        self.cache.check(ino, LockMode::Ex)?;
        let inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(FsError::IsDir);
        }
        self.check_drop_link(&inode, is_open(ino))?;
        self.dir_remove(&mut dir, name)?;
        set_mtime(&mut dir, now);
        self.write_inode(&dir)?;
        self.drop_link(inode, is_open(ino), now)
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8], now: Time) -> Result<()> {
        if name == b"." {
            return Err(FsError::Invalid("rmdir ."));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        let mut dir = self.dir_inode(parent)?;
        let (ino, _) = self.dir_lookup(&dir, name)?.ok_or(FsError::NotFound)?;
        self.cache.check(ino, LockMode::Ex)?;
        let inode = self.read_inode(ino)?;
        if !inode.is_dir() {
            return Err(FsError::NotDir);
        }
        if !self.dir_is_empty(&inode)? {
            return Err(FsError::NotEmpty);
        }
        self.check_drop_link(&inode, false)?;
        self.dir_remove(&mut dir, name)?;
        dir.links_count = dir.links_count.saturating_sub(1);
        set_mtime(&mut dir, now);
        self.write_inode(&dir)?;
        self.drop_link(inode, false, now).map(drop)
    }

    /// True when `ancestor` is `dir` or one of its ancestors (following `..`).
    fn is_ancestor(&mut self, ancestor: u64, mut dir: u64) -> Result<bool> {
        for _ in 0..4096 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == self.root {
                return Ok(false);
            }
            let d = self.read_inode(dir)?;
            dir = self
                .dir_lookup(&d, b"..")?
                .map(|(i, _)| i)
                .ok_or(FsError::Corrupt { blkno: dir, what: "directory without ..".into() })?;
        }
        Err(FsError::Corrupt { blkno: dir, what: "directory chain too deep or looping".into() })
    }

    /// Moves a name; a replaced inode left without links is freed, or orphaned while `is_open`
    /// says it may be in use (its number is returned then).
    pub fn rename(
        &mut self,
        from_dir: u64,
        from: &[u8],
        to_dir: u64,
        to: &[u8],
        flags: RenameFlags,
        is_open: impl Fn(u64) -> bool,
        now: Time,
    ) -> Result<Option<u64>> {
        validate_name(to)?;
        if [b".".as_slice(), b".."].contains(&from) || [b".".as_slice(), b".."].contains(&to) {
            return Err(FsError::Invalid("rename of . or .."));
        }
        let src_dir = self.dir_inode(from_dir)?;
        let (src_ino, src_ft) = self.dir_lookup(&src_dir, from)?.ok_or(FsError::NotFound)?;
        let dst_dir0 = self.dir_inode(to_dir)?;
        let dst = self.dir_lookup(&dst_dir0, to)?;
        if from_dir == to_dir && from == to {
            return if flags.exchange || dst.is_some() { Ok(None) } else { Err(FsError::NotFound) };
        }
        let src = self.read_inode(src_ino)?;
        if src.is_dir() && from_dir != to_dir && self.is_ancestor(src_ino, to_dir)? {
            return Err(FsError::Invalid("a directory cannot move into itself"));
        }
        self.cache.check(src_ino, LockMode::Ex)?;
        if flags.exchange {
            let (dst_ino, dst_ft) = dst.ok_or(FsError::NotFound)?;
            let other = self.read_inode(dst_ino)?;
            if other.is_dir() && from_dir != to_dir && self.is_ancestor(dst_ino, from_dir)? {
                return Err(FsError::Invalid("a directory cannot move into itself"));
            }
            self.cache.check(dst_ino, LockMode::Ex)?;
            let mut sd = self.read_inode(from_dir)?;
            self.dir_retarget(&mut sd, from, dst_ino, dst_ft)?;
            self.write_inode(&sd)?;
            let mut dd = self.read_inode(to_dir)?;
            self.dir_retarget(&mut dd, to, src_ino, src_ft)?;
            self.write_inode(&dd)?;
            if from_dir != to_dir {
                self.reparent(src, to_dir, now)?;
                self.reparent(other, from_dir, now)?;
                self.adjust_dir_links(from_dir, to_dir, src_ft == FT_DIR, dst_ft == FT_DIR, now)?;
            }
            return self.touch_dirs(from_dir, to_dir, now).map(|()| None);
        }
        let mut orphaned = None;
        if let Some((dst_ino, _)) = dst {
            if flags.noreplace {
                return Err(FsError::Exists);
            }
            if dst_ino == src_ino {
                // Two links to one inode: rename drops the source name.
                let mut sd = self.read_inode(from_dir)?;
                self.dir_remove(&mut sd, from)?;
                self.write_inode(&sd)?;
                let inode = self.read_inode(src_ino)?;
                self.drop_link(inode, true, now)?;
                return self.touch_dirs(from_dir, to_dir, now).map(|()| None);
            }
            let victim = self.read_inode(dst_ino)?;
            match (src.is_dir(), victim.is_dir()) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.dir_is_empty(&victim)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            self.check_drop_link(&victim, is_open(dst_ino))?;
            let mut dd = self.read_inode(to_dir)?;
            self.dir_retarget(&mut dd, to, src_ino, src_ft)?;
            if victim.is_dir() {
                dd.links_count = dd.links_count.saturating_sub(1);
            }
            self.write_inode(&dd)?;
            orphaned = self.drop_link(victim, is_open(dst_ino), now)?;
        } else {
            let mut dd = self.read_inode(to_dir)?;
            if src.is_dir() && from_dir != to_dir && dd.links_count >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            self.dir_add(&mut dd, to, src_ino, src_ft)?;
            self.write_inode(&dd)?;
        }
        let mut sd = self.read_inode(from_dir)?;
        self.dir_remove(&mut sd, from)?;
        self.write_inode(&sd)?;
        let src = self.read_inode(src_ino)?;
        if src.is_dir() && from_dir != to_dir {
            self.reparent(src, to_dir, now)?;
            self.adjust_dir_links(from_dir, to_dir, true, false, now)?;
        } else {
            let mut src = src;
            set_ctime(&mut src, now);
            self.write_inode(&src)?;
        }
        self.touch_dirs(from_dir, to_dir, now).map(|()| orphaned)
    }

    /// Points a moved directory's `..` at its new parent.
    fn reparent(&mut self, mut inode: Inode, parent: u64, now: Time) -> Result<()> {
        if inode.is_dir() {
            self.dir_retarget(&mut inode, b"..", parent, FT_DIR)?;
        }
        set_ctime(&mut inode, now);
        self.write_inode(&inode)
    }

    /// A subdirectory moved from `a` to `b` (and, for exchange, one from `b` to `a`).
    fn adjust_dir_links(&mut self, a: u64, b: u64, a_to_b: bool, b_to_a: bool, _now: Time) -> Result<()> {
        let delta = a_to_b as i32 - b_to_a as i32;
        if delta == 0 {
            return Ok(());
        }
        let mut da = self.read_inode(a)?;
        da.links_count = (da.links_count as i32 - delta).max(2) as u16;
        self.write_inode(&da)?;
        let mut db = self.read_inode(b)?;
        db.links_count = (db.links_count as i32 + delta) as u16;
        self.write_inode(&db)
    }

    fn touch_dirs(&mut self, a: u64, b: u64, now: Time) -> Result<()> {
        for d in if a == b { vec![a] } else { vec![a, b] } {
            let mut dir = self.read_inode(d)?;
            set_mtime(&mut dir, now);
            self.write_inode(&dir)?;
        }
        Ok(())
    }

    pub fn setattr(&mut self, ino: u64, attr: SetAttr, now: Time) -> Result<Inode> {
        let mut inode = self.read_inode(ino)?;
        if let Some(size) = attr.size {
            if inode.is_dir() {
                return Err(FsError::IsDir);
            }
            if inode.mode & S_IFMT != S_IFREG {
                return Err(FsError::Invalid("truncate of a non-regular file"));
            }
            if size != inode.size {
                self.file_truncate(&mut inode, size, now)?;
            } else {
                set_mtime(&mut inode, now);
            }
        }
        let chown = attr.uid.is_some_and(|u| u != inode.uid) || attr.gid.is_some_and(|g| g != inode.gid);
        if let Some(uid) = attr.uid {
            inode.uid = uid;
        }
        if let Some(gid) = attr.gid {
            inode.gid = gid;
        }
        match attr.mode {
            Some(mode) => inode.mode = (inode.mode & S_IFMT) | (mode & !S_IFMT),
            // chown clears setuid, and setgid when group-executable, as kernel filesystems do.
            None if chown && !inode.is_dir() => {
                inode.mode &= !S_ISUID;
                if inode.mode & 0o010 != 0 {
                    inode.mode &= !S_ISGID;
                }
            }
            None => {}
        }
        if let Some(t) = attr.atime {
            (inode.atime, inode.atime_nsec) = (t.sec, t.nsec);
        }
        if let Some(t) = attr.mtime {
            (inode.mtime, inode.mtime_nsec) = (t.sec, t.nsec);
        }
        let c = attr.ctime.unwrap_or(now);
        (inode.ctime, inode.ctime_nsec) = (c.sec, c.nsec);
        self.write_inode(&inode)?;
        Ok(inode)
    }
}
