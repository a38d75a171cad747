//! Block numbers of every system file of a mounted volume, looked up once by name (§11).

use super::error::Result;
use super::sysfile::SystemFile;
use super::volume::Volume;

#[derive(Debug, Clone)]
pub struct SysFiles {
    /// This node's slot.
    pub slot: u16,
    pub global_bitmap: u64,
    pub slot_map: u64,
    pub heartbeat: u64,
    pub orphan_dir: Vec<u64>,
    pub extent_alloc: Vec<u64>,
    pub inode_alloc: Vec<u64>,
    pub journal: Vec<u64>,
    pub local_alloc: Vec<u64>,
    pub truncate_log: Vec<u64>,
}

impl SysFiles {
    pub fn load(vol: &Volume, slot: u16) -> Result<Self> {
        let slots = vol.sb().max_slots;
        let per_slot = |kind: fn(u16) -> SystemFile| -> Result<Vec<u64>> {
            (0..slots).map(|s| vol.system_file_blkno(kind(s))).collect()
        };
        Ok(SysFiles {
            slot,
            global_bitmap: vol.system_file_blkno(SystemFile::GlobalBitmap)?,
            slot_map: vol.system_file_blkno(SystemFile::SlotMap)?,
            heartbeat: vol.system_file_blkno(SystemFile::Heartbeat)?,
            orphan_dir: per_slot(SystemFile::OrphanDir)?,
            extent_alloc: per_slot(SystemFile::ExtentAlloc)?,
            inode_alloc: per_slot(SystemFile::InodeAlloc)?,
            journal: per_slot(SystemFile::Journal)?,
            local_alloc: per_slot(SystemFile::LocalAlloc)?,
            truncate_log: per_slot(SystemFile::TruncateLog)?,
        })
    }

    /// The extent allocator an extent block came from (`h_suballoc_slot`), or ours.
    pub fn extent_alloc_of(&self, slot: u16) -> u64 {
        self.extent_alloc.get(slot as usize).copied().unwrap_or(self.extent_alloc[self.slot as usize])
    }

    /// The inode allocator an inode came from (`i_suballoc_slot`); None for system inodes.
    pub fn inode_alloc_of(&self, slot: u16) -> Option<u64> {
        self.inode_alloc.get(slot as usize).copied()
    }
}
