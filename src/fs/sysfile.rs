//! The system files and their names in the system directory (ocfs2-format.md §11).

use crate::format::inode::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemFile {
    BadBlocks,
    GlobalInodeAlloc,
    SlotMap,
    Heartbeat,
    GlobalBitmap,
    OrphanDir(u16),
    ExtentAlloc(u16),
    InodeAlloc(u16),
    Journal(u16),
    LocalAlloc(u16),
    TruncateLog(u16),
}

/// The global system files, in mkfs order (quota files are not part of the subset).
pub const GLOBALS: [SystemFile; 5] = [
    SystemFile::BadBlocks,
    SystemFile::GlobalInodeAlloc,
    SystemFile::SlotMap,
    SystemFile::Heartbeat,
    SystemFile::GlobalBitmap,
];

/// The per-slot kinds, in mkfs order; each is created for every slot before the next kind.
pub const PER_SLOT: [fn(u16) -> SystemFile; 6] = [
    SystemFile::OrphanDir,
    SystemFile::ExtentAlloc,
    SystemFile::InodeAlloc,
    SystemFile::Journal,
    SystemFile::LocalAlloc,
    SystemFile::TruncateLog,
];

impl SystemFile {
    /// Every system file of a volume with `slots` slots, in mkfs order.
    pub fn all(slots: u16) -> Vec<SystemFile> {
        let mut v = GLOBALS.to_vec();
        for kind in PER_SLOT {
            v.extend((0..slots).map(kind));
        }
        v
    }

    pub fn name(&self) -> String {
        match self {
            SystemFile::BadBlocks => "bad_blocks".into(),
            SystemFile::GlobalInodeAlloc => "global_inode_alloc".into(),
            SystemFile::SlotMap => "slot_map".into(),
            SystemFile::Heartbeat => "heartbeat".into(),
            SystemFile::GlobalBitmap => "global_bitmap".into(),
            SystemFile::OrphanDir(s) => format!("orphan_dir:{s:04}"),
            SystemFile::ExtentAlloc(s) => format!("extent_alloc:{s:04}"),
            SystemFile::InodeAlloc(s) => format!("inode_alloc:{s:04}"),
            SystemFile::Journal(s) => format!("journal:{s:04}"),
            SystemFile::LocalAlloc(s) => format!("local_alloc:{s:04}"),
            SystemFile::TruncateLog(s) => format!("truncate_log:{s:04}"),
        }
    }

    /// `i_flags` besides VALID|SYSTEM (§11 table).
    pub fn extra_flags(&self) -> u32 {
        match self {
            SystemFile::GlobalInodeAlloc
            | SystemFile::GlobalBitmap
            | SystemFile::ExtentAlloc(_)
            | SystemFile::InodeAlloc(_) => BITMAP_FL | CHAIN_FL,
            SystemFile::Heartbeat => HEARTBEAT_FL,
            SystemFile::Journal(_) => JOURNAL_FL,
            SystemFile::LocalAlloc(_) => BITMAP_FL | LOCAL_ALLOC_FL,
            SystemFile::TruncateLog(_) => DEALLOC_FL,
            _ => 0,
        }
    }

    pub fn mode(&self) -> u16 {
        match self {
            SystemFile::OrphanDir(_) => S_IFDIR | 0o755,
            _ => S_IFREG | 0o644,
        }
    }

    pub fn slot(&self) -> Option<u16> {
        match *self {
            SystemFile::OrphanDir(s)
            | SystemFile::ExtentAlloc(s)
            | SystemFile::InodeAlloc(s)
            | SystemFile::Journal(s)
            | SystemFile::LocalAlloc(s)
            | SystemFile::TruncateLog(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order() {
        let all = SystemFile::all(2);
        assert_eq!(all.len(), 17);
        assert_eq!(all[5].name(), "orphan_dir:0000");
        assert_eq!(all[16].name(), "truncate_log:0001");
        assert_eq!(SystemFile::GlobalBitmap.extra_flags() | VALID_FL | SYSTEM_FL, 0x491);
        assert_eq!(SystemFile::LocalAlloc(0).extra_flags() | VALID_FL | SYSTEM_FL, 0xD1);
    }
}
