//! Inode → FUSE attributes.

use crate::format::inode::*;
use fuser::{FileAttr, FileType, INodeNo};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An inode time (seconds stored as a signed two's-complement count) as a SystemTime.
pub fn time(sec: u64, nsec: u32) -> SystemTime {
    let nsec = Duration::from_nanos(nsec.min(999_999_999) as u64);
    let sec = sec as i64;
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + nsec
    }
}

pub fn kind(mode: u16) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        S_IFLNK => FileType::Symlink,
        S_IFCHR => FileType::CharDevice,
        S_IFBLK => FileType::BlockDevice,
        S_IFIFO => FileType::NamedPipe,
        S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// Directory-entry type code → FUSE file type.
pub fn kind_of_dirent(ft: u8) -> FileType {
    use crate::format::dirent::*;
    match ft {
        FT_DIR => FileType::Directory,
        FT_SYMLINK => FileType::Symlink,
        FT_CHRDEV => FileType::CharDevice,
        FT_BLKDEV => FileType::BlockDevice,
        FT_FIFO => FileType::NamedPipe,
        FT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub fn attr(ino: u64, inode: &Inode, cluster_size: u64) -> FileAttr {
    let rdev = if matches!(inode.mode & S_IFMT, S_IFCHR | S_IFBLK) { inode.rdev() as u32 } else { 0 };
    FileAttr {
        ino: INodeNo(ino),
        size: inode.size,
        blocks: inode.clusters as u64 * cluster_size / 512,
        atime: time(inode.atime, inode.atime_nsec),
        mtime: time(inode.mtime, inode.mtime_nsec),
        ctime: time(inode.ctime, inode.ctime_nsec),
        crtime: time(inode.ctime, inode.ctime_nsec),
        kind: kind(inode.mode),
        perm: inode.mode & 0o7777,
        nlink: inode.links_count as u32,
        uid: inode.uid,
        gid: inode.gid,
        rdev,
        blksize: cluster_size.clamp(4096, 1 << 20) as u32,
        flags: 0,
    }
}
