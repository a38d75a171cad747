//! Read access to a volume: probe the superblock, read inodes and blocks, walk extent trees,
//! list directories and find system files. Everything read is validated; a bad block comes back
//! as an error that names it.

use crate::dev::BlockDevice;
use crate::format::dirent::{parse_entries, DirEntry};
use crate::format::extent::{ExtentBlock, ExtentRec};
use crate::format::inode::{Id2, Inode};
use crate::format::superblock::{is_ocfs1, SuperBlock, SUPERBLOCK_BLKNO};
use crate::format::FormatError;
use crate::fs::geometry::Geometry;
use crate::fs::sysfile::SystemFile;
use std::sync::Arc;

pub use super::error::{FsError, Result};

/// An open volume: its device, superblock inode and geometry.
pub struct Volume {
    pub dev: Arc<dyn BlockDevice>,
    /// The superblock block as an inode (`i_clusters` = total clusters, `i_fs_generation`).
    pub super_inode: Inode,
    pub geo: Geometry,
}

impl Volume {
    /// Probes block 2 for each block size from 512 to 4096 (§2.2) and opens the volume.
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Self> {
        let mut first = vec![0u8; 512];
        dev.read_at(&mut first, 0)?;
        if is_ocfs1(&first) {
            return Err(FsError::Ocfs1);
        }
        let mut last_err = None;
        for bits in 9..=12u32 {
            let bs = 1usize << bits;
            let mut buf = vec![0u8; bs];
            if dev.read_block(SUPERBLOCK_BLKNO, &mut buf).is_err() {
                continue;
            }
            match Inode::decode_superblock(&buf, SUPERBLOCK_BLKNO) {
                Ok(inode) => {
                    let Some(sb) = inode.superblock() else { continue };
                    if sb.blocksize_bits != bits {
                        continue;
                    }
                    return Self::from_super(dev, inode);
                }
                Err(e @ FormatError::BadSignature { .. }) => last_err = last_err.or(Some(e)),
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e @ FormatError::BadSignature { .. }) | Some(e @ FormatError::Short { .. }) => {
                tracing::debug!("probe: {e}");
                Err(FsError::NotOcfs2)
            }
            Some(e) => Err(e.into()),
            None => Err(FsError::NotOcfs2),
        }
    }

    /// Opens using the superblock copy at `blkno` (a backup, §2.3) with block size `bs`.
    pub fn open_at(dev: Arc<dyn BlockDevice>, blkno: u64, bs: usize) -> Result<Self> {
        let mut buf = vec![0u8; bs];
        dev.read_block(blkno, &mut buf)?;
        let inode = Inode::decode_superblock(&buf, blkno)?;
        Self::from_super(dev, inode)
    }

    fn from_super(dev: Arc<dyn BlockDevice>, super_inode: Inode) -> Result<Self> {
        let Some(sb) = super_inode.superblock() else { return Err(FsError::NotOcfs2) };
        let geo = Geometry::from_superblock(sb, super_inode.clusters);
        if geo.total_blocks() * geo.block_size as u64 > dev.size() {
            return Err(FsError::Corrupt {
                blkno: super_inode.blkno,
                what: format!(
                    "superblock says {} clusters ({} bytes) but the device has {} bytes",
                    super_inode.clusters,
                    geo.volume_bytes(),
                    dev.size()
                ),
            });
        }
        Ok(Volume { dev, super_inode, geo })
    }

    pub fn sb(&self) -> &SuperBlock {
        // SAFETY of the invariant: `from_super` only builds a Volume from a superblock inode.
        match &self.super_inode.id2 {
            Id2::Super(sb) => sb,
            _ => unreachable!("Volume holds a superblock inode"), // cannot fail: checked in from_super
        }
    }

    pub fn fs_generation(&self) -> u32 {
        self.super_inode.fs_generation
    }
    pub fn block_size(&self) -> usize {
        self.geo.block_size
    }

    pub fn read_block(&self, blkno: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.geo.block_size];
        self.read_block_into(blkno, &mut buf)?;
        Ok(buf)
    }

    pub fn read_block_into(&self, blkno: u64, buf: &mut [u8]) -> Result<()> {
        if blkno >= self.geo.total_blocks() {
            return Err(FsError::Corrupt {
                blkno,
                what: format!("block number past the end of the volume ({} blocks)", self.geo.total_blocks()),
            });
        }
        self.dev.read_block(blkno, buf)?;
        Ok(())
    }

    /// `count` consecutive blocks from `blkno`, as one buffer.
    pub fn dev_read(&self, blkno: u64, count: u64) -> Result<Vec<u8>> {
        // Checked before the buffer is sized: both numbers may come from a corrupt block.
        if blkno.checked_add(count).is_none_or(|end| end > self.geo.total_blocks()) {
            return Err(FsError::Corrupt { blkno, what: "read past the end of the volume".into() });
        }
        let mut buf = vec![0u8; (count as usize) * self.geo.block_size];
        self.dev.read_at(&mut buf, blkno * self.geo.block_size as u64)?;
        Ok(buf)
    }

    pub fn write_block(&self, blkno: u64, buf: &[u8]) -> Result<()> {
        self.dev.write_block(blkno, buf)?;
        Ok(())
    }

    /// Reads and validates an inode (signature, counts, own blkno, volume generation).
    pub fn read_inode(&self, blkno: u64) -> Result<Inode> {
        let buf = self.read_block(blkno)?;
        let inode = Inode::decode(&buf, blkno)?;
        inode.check_identity(blkno, self.fs_generation())?;
        Ok(inode)
    }

    pub fn read_extent_block(&self, blkno: u64) -> Result<ExtentBlock> {
        let buf = self.read_block(blkno)?;
        let eb = ExtentBlock::decode(&buf, blkno)?;
        eb.check_identity(blkno, self.fs_generation())?;
        Ok(eb)
    }

    /// All leaf records of an inode's extent tree, in tree order (none for an inode without
    /// one). Fails on any structural problem (wrong depth, loops, bad blocks) rather than
    /// guessing.
    pub fn leaf_extents(&self, inode: &Inode) -> Result<Vec<ExtentRec>> {
        if inode.extents().is_none() {
            return Ok(Vec::new());
        }
        Ok(super::extent_tree::load(&mut &*self, inode)?.recs)
    }

    /// Physical block of logical block `lblk` of a file, None in a hole.
    pub fn map_block(&self, leaves: &[ExtentRec], lblk: u64) -> Option<(u64, bool)> {
        let bpc = self.geo.bpc();
        let cpos = lblk / bpc;
        leaves
            .iter()
            .find(|r| (r.cpos as u64) <= cpos && cpos < r.end())
            // Saturating: a corrupt block number then fails the read as past the end.
            .map(|r| (r.blkno.saturating_add((cpos - r.cpos as u64) * bpc + lblk % bpc), r.is_unwritten()))
    }

    /// The first `len` bytes of a file's data (inline or extents; holes and unwritten read 0).
    pub fn read_data(&self, inode: &Inode, len: u64) -> Result<Vec<u8>> {
        if let Id2::Inline(data) = &inode.id2 {
            let mut v = data.data.clone();
            v.truncate(len as usize);
            return Ok(v);
        }
        let leaves = self.leaf_extents(inode)?;
        let bs = self.geo.block_size as u64;
        let mut out = vec![0u8; len as usize];
        for (i, chunk) in out.chunks_mut(bs as usize).enumerate() {
            if let Some((pblk, false)) = self.map_block(&leaves, i as u64) {
                let buf = self.read_block(pblk)?;
                chunk.copy_from_slice(&buf[..chunk.len()]);
            }
        }
        Ok(out)
    }

    /// Every entry (used or not) of a directory, inline or in its blocks below `i_size`.
    pub fn dir_entries(&self, dir: &Inode) -> Result<Vec<(u64, DirEntry)>> {
        if let Id2::Inline(data) = &dir.id2 {
            return Ok(parse_entries(&data.data, dir.blkno)?.into_iter().map(|e| (dir.blkno, e)).collect());
        }
        let leaves = self.leaf_extents(dir)?;
        let nblocks = dir.size / self.geo.block_size as u64;
        let mut out = Vec::new();
        for lblk in 0..nblocks {
            let Some((pblk, _)) = self.map_block(&leaves, lblk) else {
                return Err(FsError::Corrupt {
                    blkno: dir.blkno,
                    what: format!("directory has a hole at block {lblk}"),
                });
            };
            let buf = self.read_block(pblk)?;
            out.extend(parse_entries(&buf, pblk)?.into_iter().map(|e| (pblk, e)));
        }
        Ok(out)
    }

    /// Looks a name up in a directory (used entries only).
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<u64>> {
        Ok(self.dir_entries(dir)?.into_iter().find(|(_, e)| e.is_used() && e.name == name).map(|(_, e)| e.inode))
    }

    /// Block number of a system file, found by name in the system directory (§11).
    pub fn system_file_blkno(&self, file: SystemFile) -> Result<u64> {
        let sysdir = self.read_inode(self.sb().system_dir_blkno)?;
        self.lookup(&sysdir, file.name().as_bytes())?.ok_or_else(|| FsError::MissingSystemFile(file.name()))
    }

    /// Byte offset and length of the heartbeat area (the `heartbeat` file's first extent).
    pub fn heartbeat_area(&self) -> Result<(u64, u64)> {
        let hb = self.system_inode(SystemFile::Heartbeat)?;
        let first = self
            .leaf_extents(&hb)?
            .into_iter()
            .next()
            .ok_or(FsError::Corrupt { blkno: hb.blkno, what: "heartbeat file has no data".into() })?;
        let len = hb.size.min(first.len as u64 * self.geo.cluster_size as u64);
        Ok((first.blkno * self.block_size() as u64, len))
    }

    pub fn system_inode(&self, file: SystemFile) -> Result<Inode> {
        self.read_inode(self.system_file_blkno(file)?)
    }
}
