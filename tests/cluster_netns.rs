//! Two nodes in network namespaces of the test's own, joined by a veth pair: a counter under
//! `o2fs lock` from both ends exact; then the link goes down inside one namespace and the
//! higher node fences (its locked command is killed) while the lower one, told by the disk
//! heartbeat that this is a split and not a death, carries on and takes the lock.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::netns::VethPair;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn two_namespaces_count_exactly_then_a_link_down_fences_the_higher_node() {
    let pair = VethPair::new("10.199");
    // Declared after the pair, so dropped first: the daemons die before their namespaces go.
    let c = Cluster::in_namespaces(&pair.net, &pair.netns, true);
    c.wait_view(&[0, 1], &[0, 1], LIMIT);
    const PER_CLIENT: usize = 10;
    let v = c.count_under_lock(&[0, 1], 2, PER_CLIENT);
    assert_eq!(v, 2 * 2 * PER_CLIENT, "lost updates across the veth link\n{}", c.logs());

    c.split_fences_the_higher_node(|| pair.down(1));
}
