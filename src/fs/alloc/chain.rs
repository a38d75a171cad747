//! Building and updating chain-allocator groups (ocfs2-format.md §6.2–6.4).

use crate::format::chain::{ChainList, ChainRec};
use crate::format::group::{group_bitmap_bytes, GroupDesc};
use crate::fs::bitmap;

/// A fresh group descriptor at `blkno` covering `bits` bits, with bit 0 set (the descriptor's
/// own block or cluster, or the start of group 0's reserved area).
pub fn new_group(block_size: usize, blkno: u64, bits: u16, chain: u16, generation: u32, parent: u64) -> GroupDesc {
    let size = group_bitmap_bytes(block_size);
    let mut gd = GroupDesc {
        size,
        bits,
        free_bits_count: bits,
        chain,
        generation,
        contig_free_bits: 0,
        next_group: 0,
        parent_dinode: parent,
        blkno,
        bitmap: vec![0; size as usize],
    };
    set_bit(&mut gd, 0);
    gd
}

/// Marks `bit` used; returns false if it already was (counters untouched then).
pub fn set_bit(gd: &mut GroupDesc, bit: u16) -> bool {
    if bit >= gd.bits || bitmap::test(&gd.bitmap, bit as usize) {
        return false;
    }
    bitmap::set(&mut gd.bitmap, bit as usize);
    gd.free_bits_count -= 1;
    true
}

/// Marks `bit` free; returns false if it already was.
pub fn clear_bit(gd: &mut GroupDesc, bit: u16) -> bool {
    if bit >= gd.bits || !bitmap::test(&gd.bitmap, bit as usize) {
        return false;
    }
    bitmap::clear(&mut gd.bitmap, bit as usize);
    gd.free_bits_count += 1;
    true
}

/// The chain list describing `groups` (each group's `chain` and `next_group` already set): one
/// record per chain index, heads as given in `heads` (chain → first group blkno).
pub fn chain_list(cpg: u16, bpc: u16, count: u16, groups: &[GroupDesc], heads: &[u64]) -> ChainList {
    let mut recs: Vec<ChainRec> = heads.iter().map(|&blkno| ChainRec { free: 0, total: 0, blkno }).collect();
    for gd in groups {
        if let Some(rec) = recs.get_mut(gd.chain as usize) {
            rec.free += gd.free_bits_count as u32;
            rec.total += gd.bits as u32;
        }
    }
    ChainList { cpg, bpc, count, recs }
}

/// Links groups into `count` chains the way mkfs does: group i goes to chain i % count, and
/// each chain lists its groups in order. Sets `chain`/`next_group`; returns the chain heads.
pub fn link_round_robin(groups: &mut [GroupDesc], count: u16) -> Vec<u64> {
    let nchains = (groups.len()).min(count as usize);
    let mut heads = vec![0u64; nchains];
    for i in (0..groups.len()).rev() {
        let chain = i % count as usize;
        groups[i].chain = chain as u16;
        groups[i].next_group = heads[chain];
        heads[chain] = groups[i].blkno;
    }
    heads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_chains_sum_their_groups() {
        let mut groups: Vec<GroupDesc> = (0..5).map(|i| new_group(4096, 100 + i, 10, 0, 7, 39)).collect();
        set_bit(&mut groups[3], 4);
        let heads = link_round_robin(&mut groups, 2);
        assert_eq!(heads, vec![100, 101]);
        assert_eq!(groups[0].next_group, 102);
        assert_eq!(groups[4].next_group, 0);
        let cl = chain_list(32256, 1, 243, &groups, &heads);
        assert_eq!(cl.recs[0].total, 30);
        assert_eq!(cl.recs[1].free, 18 - 1);
        assert!(!set_bit(&mut groups[3], 4));
        assert!(clear_bit(&mut groups[3], 4));
    }
}
