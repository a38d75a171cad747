//! Volume geometry derived from the superblock: block/cluster conversions and where the global
//! bitmap's groups live (ocfs2-format.md §2.2, §6.2).

use crate::format::group::group_bitmap_bytes;
use crate::format::superblock::SuperBlock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: usize,
    pub cluster_size: usize,
    pub blocksize_bits: u32,
    pub clustersize_bits: u32,
    pub total_clusters: u32,
    /// Block of global-bitmap group 0's descriptor (`s_first_cluster_group`).
    pub first_cluster_group: u64,
}

impl Geometry {
    pub fn new(blocksize_bits: u32, clustersize_bits: u32, total_clusters: u32) -> Self {
        let block_size = 1usize << blocksize_bits;
        let cluster_size = 1usize << clustersize_bits;
        let bpc = (cluster_size / block_size) as u64;
        // Group 0's descriptor takes the first block of the first cluster after block 2.
        let first_cluster_group = 3u64.div_ceil(bpc) * bpc;
        Geometry { block_size, cluster_size, blocksize_bits, clustersize_bits, total_clusters, first_cluster_group }
    }

    pub fn from_superblock(sb: &SuperBlock, total_clusters: u32) -> Self {
        let mut g = Self::new(sb.blocksize_bits, sb.clustersize_bits, total_clusters);
        g.first_cluster_group = sb.first_cluster_group;
        g
    }

    /// Blocks per cluster.
    pub fn bpc(&self) -> u64 {
        (self.cluster_size / self.block_size) as u64
    }
    pub fn total_blocks(&self) -> u64 {
        self.total_clusters as u64 * self.bpc()
    }
    pub fn volume_bytes(&self) -> u64 {
        self.total_clusters as u64 * self.cluster_size as u64
    }
    pub fn cluster_to_blkno(&self, cluster: u64) -> u64 {
        cluster * self.bpc()
    }
    pub fn blkno_to_cluster(&self, blkno: u64) -> u64 {
        blkno / self.bpc()
    }
    pub fn clusters_for_bytes(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_size as u64)
    }

    /// Bytes in a suballocator group as mkfs makes them: 4 MiB (1 MiB for 512-byte and 2 MiB
    /// for 1 KiB blocks), and at least one cluster.
    pub fn suballoc_group_bytes(&self) -> u64 {
        let bytes: u64 = match self.block_size {
            512 => 1 << 20,
            1024 => 2 << 20,
            _ => 4 << 20,
        };
        bytes.max(self.cluster_size as u64)
    }

    /// Suballocator clusters per group (`cl_cpg`) as mkfs makes them.
    pub fn suballoc_cpg(&self) -> u64 {
        self.suballoc_group_bytes() / self.cluster_size as u64
    }

    /// Blocks per chunk of the volume whose inodes share the master of their cluster locks: one
    /// suballocator group's worth, so that a group placed on a chunk boundary lies in one.
    pub fn lock_chunk_blocks(&self) -> u64 {
        self.suballoc_group_bytes() / self.block_size as u64
    }

    /// The same chunks in clusters (at least 1).
    pub fn lock_chunk_clusters(&self) -> u64 {
        (self.lock_chunk_blocks() / self.bpc()).max(1)
    }

    /// Bits (clusters) per global-bitmap group: (bs − 64) × 8.
    pub fn global_cpg(&self) -> u32 {
        group_bitmap_bytes(self.block_size) as u32 * 8
    }
    pub fn global_group_count(&self) -> u32 {
        self.total_clusters.div_ceil(self.global_cpg())
    }
    /// Descriptor block of global group `g`: group 0 at `s_first_cluster_group`, others at the
    /// first block of cluster g × cpg.
    pub fn global_group_blkno(&self, g: u32) -> u64 {
        if g == 0 {
            self.first_cluster_group
        } else {
            self.cluster_to_blkno(g as u64 * self.global_cpg() as u64)
        }
    }
    /// Clusters covered by global group `g` (the last one may be short).
    pub fn global_group_bits(&self, g: u32) -> u32 {
        let cpg = self.global_cpg();
        let start = g * cpg;
        cpg.min(self.total_clusters.saturating_sub(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_group_matches_reference_table() {
        // (block bits, cluster bits, s_first_cluster_group) from ocfs2-format.md §2.5.
        for (b, c, fcg) in [(9, 12, 8), (10, 12, 4), (11, 12, 4), (12, 12, 3), (12, 13, 4), (12, 16, 16), (12, 20, 256)]
        {
            assert_eq!(Geometry::new(b, c, 1000).first_cluster_group, fcg, "{b}/{c}");
        }
        let g = Geometry::new(12, 16, 81920);
        assert_eq!(g.global_group_count(), 3);
        assert_eq!(g.global_group_blkno(1), 516096);
        assert_eq!(g.global_group_blkno(2), 1032192);
        assert_eq!(g.global_group_bits(2), 17408);
    }
}
