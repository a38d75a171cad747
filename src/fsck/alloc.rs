//! In-memory model of a chain allocator (ocfs2-format.md §6) and its rebuild: the passes fill
//! in the bitmap each group should have (`want`); the rebuild writes descriptors, chain records
//! and inode counters derived from those bitmaps (§6.3), relinking the chains from the model.

use super::{Checker, Result};
use crate::format::chain::{chain_recs_per_inode, ChainList, ChainRec};
use crate::format::group::{group_bitmap_bytes, GroupDesc};
use crate::format::inode::{Id2, Inode};
use crate::fs::bitmap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `global_bitmap`: one bit per cluster.
    Global,
    /// `global_inode_alloc`, `inode_alloc:NNNN`: one bit per inode block.
    Inode,
    /// `extent_alloc:NNNN`: one bit per extent block.
    Extent,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub blkno: u64,
    pub desc: GroupDesc,
    /// The block as read (empty for a descriptor fsck creates).
    pub raw: Vec<u8>,
    /// The bitmap this group should have.
    pub want: Vec<u8>,
}

impl Group {
    pub fn bits(&self) -> usize {
        self.desc.bits as usize
    }
}

#[derive(Debug, Clone)]
pub struct Alloc {
    pub name: String,
    pub blkno: u64,
    pub kind: Kind,
    /// `i_suballoc_slot` its objects carry: the slot, or 0xFFFF for global files.
    pub slot: u16,
    pub inode: Inode,
    pub cpg: u16,
    pub bpc: u16,
    pub chains: Vec<Vec<Group>>,
}

impl Alloc {
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.chains.iter().flatten()
    }
    pub fn groups_mut(&mut self) -> impl Iterator<Item = &mut Group> {
        self.chains.iter_mut().flatten()
    }

    /// The group of a suballocator that covers block `blk`, and the bit of `blk` in it.
    pub fn locate_mut(&mut self, blk: u64) -> Option<(&mut Group, usize)> {
        self.groups_mut().find(|g| blk >= g.blkno && blk < g.blkno + g.desc.bits as u64).map(|g| {
            let bit = (blk - g.blkno) as usize;
            (g, bit)
        })
    }

    /// Writes descriptors and the allocator inode as derived from the `want` bitmaps; empty
    /// chains are dropped and every link is rewritten from the model.
    pub fn rebuild(&self, c: &Checker) -> Result<()> {
        let chains: Vec<&Vec<Group>> = self.chains.iter().filter(|ch| !ch.is_empty()).collect();
        let mut recs = Vec::new();
        for (k, chain) in chains.iter().enumerate() {
            let (mut free, mut total) = (0u32, 0u32);
            for (i, g) in chain.iter().enumerate() {
                let mut d = g.desc.clone();
                let bits = g.bits();
                let used = bitmap::count_set(&g.want, bits);
                if d.bitmap != g.want {
                    d.contig_free_bits = 0;
                }
                d.bitmap = g.want.clone();
                d.free_bits_count = (bits - used.min(bits)) as u16;
                d.chain = k as u16;
                d.next_group = chain.get(i + 1).map_or(0, |n| n.blkno);
                d.parent_dinode = self.blkno;
                d.blkno = g.blkno;
                d.generation = c.gen;
                d.size = group_bitmap_bytes(c.bs);
                let mut buf = vec![0u8; c.bs];
                d.encode(&mut buf);
                if buf != g.raw {
                    c.write(g.blkno, &buf)?;
                }
                free = free.saturating_add(d.free_bits_count as u32);
                total = total.saturating_add(bits as u32);
            }
            recs.push(ChainRec { free, total, blkno: chain.first().map_or(0, |g| g.blkno) });
        }
        let total: u64 = recs.iter().map(|r| r.total as u64).sum();
        let free: u64 = recs.iter().map(|r| r.free as u64).sum();
        // Re-read: pass 1 may have repaired header fields since pass 0 loaded it.
        let raw = c.read(self.blkno)?.unwrap_or_default();
        let mut inode = Inode::decode(&raw, self.blkno).unwrap_or_else(|_| self.inode.clone());
        let cpg = if self.kind == Kind::Global { c.vol.geo.global_cpg() as u16 } else { self.cpg };
        inode.id2 = Id2::Chain(ChainList { cpg, bpc: self.bpc, count: chain_recs_per_inode(c.bs), recs });
        inode.set_bitmap((total - free.min(total)) as u32, total as u32);
        let clusters = total / self.bpc.max(1) as u64;
        inode.clusters = clusters as u32;
        inode.size = clusters * c.vol.geo.cluster_size as u64;
        let mut buf = vec![0u8; c.bs];
        inode.encode(&mut buf);
        if buf != raw {
            c.write(self.blkno, &buf)?;
        }
        Ok(())
    }
}
