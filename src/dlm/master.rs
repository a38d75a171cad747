//! Who masters a resource: rendezvous (highest-random-weight) hashing of the resource name and
//! each member's node number, so that every member computes the same master from the same view
//! without a directory lookup, and a membership change moves only the resources of the nodes that
//! came or went. The hash is fixed (FNV-1a 64) so that all builds and runs agree. What is hashed
//! is the name's mastery key ([`ResName::mastery_key`]): resources keyed alike share their master
//! in every view, which lets the filesystem place a new inode where this node masters its lock.

use std::collections::BTreeSet;

use super::{NodeId, ResName};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV_OFFSET, |h, b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

fn weight(res: &ResName, node: NodeId) -> u64 {
    fnv1a64(res.mastery_key().bytes().chain([node]))
}

/// The master of `res` among `members` (None when there are none): the member of highest weight,
/// the higher node number breaking a tie.
pub fn master_of(res: &ResName, members: &BTreeSet<NodeId>) -> Option<NodeId> {
    members.iter().copied().max_by_key(|&node| (weight(res, node), node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mastery_is_stable_and_moves_only_from_leavers() {
        let all: BTreeSet<NodeId> = (0..5).collect();
        let names: Vec<ResName> = (0..200).map(|i| ResName::ocfs2('M', i, 0)).collect();
        // Pinned: a change of hash would split a cluster of mixed builds.
        let pinned: Vec<NodeId> = names[..8].iter().map(|n| master_of(n, &all).unwrap()).collect();
        assert_eq!(pinned, PINNED);
        let without_2: BTreeSet<NodeId> = all.iter().copied().filter(|&n| n != 2).collect();
        let mut per_node = [0; 5];
        for name in &names {
            let before = master_of(name, &all).unwrap();
            per_node[before as usize] += 1;
            let after = master_of(name, &without_2).unwrap();
            assert!(before == 2 || before == after, "{name}: {before} -> {after}");
        }
        assert!(per_node.iter().all(|&c| c > 20), "{per_node:?}");
        assert_eq!(master_of(&names[0], &BTreeSet::new()), None);
    }

    #[test]
    fn names_keyed_alike_share_their_master_in_every_view() {
        let views: Vec<BTreeSet<NodeId>> = vec![(0..2).collect(), (0..5).collect(), [1, 3, 4].into()];
        for key in 0..50u64 {
            let names: Vec<ResName> = (0..10).map(|b| ResName::ocfs2('M', key * 1024 + b, 0).keyed(key)).collect();
            for members in &views {
                let master = master_of(&names[0], members);
                assert!(names.iter().all(|n| master_of(n, members) == master), "key {key} in {members:?}");
            }
        }
        let two: BTreeSet<NodeId> = (0..2).collect();
        let masters: BTreeSet<_> = (0..50).map(|k| master_of(&ResName::ocfs2('M', 0, 0).keyed(k), &two)).collect();
        assert_eq!(masters.len(), 2, "keys spread over the members");
    }

    const PINNED: [NodeId; 8] = [4, 4, 1, 4, 3, 0, 4, 2];
}
