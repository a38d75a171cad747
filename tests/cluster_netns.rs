//! Two nodes in network namespaces of the test's own, joined by a veth pair: a counter under
//! `o2fs lock` from both ends exact; then the link goes down inside one namespace and the
//! higher node fences (its locked command is killed) while the lower one, told by the disk
//! heartbeat that this is a split and not a death, carries on and takes the lock.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{rand_u16, Cluster};
use common::{run, text};

const LIMIT: Duration = Duration::from_secs(20);

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), text(&out));
}

/// Two namespaces with one end of a veth pair each, `NET.1` and `NET.2` on them; deleted (and
/// with them the veth pair) on drop, even when the test fails.
struct VethPair {
    netns: [String; 2],
    links: [String; 2],
    net: String,
}

impl VethPair {
    fn new() -> VethPair {
        let tag = format!("{:x}{:04x}", std::process::id() % 0xfff, rand_u16());
        let pair = VethPair {
            netns: [format!("o2fs-{tag}-a"), format!("o2fs-{tag}-b")],
            links: [format!("o2v{tag}a"), format!("o2v{tag}b")],
            net: format!("10.199.{}", 1 + rand_u16() % 254),
        };
        for ns in &pair.netns {
            ip(&["netns", "add", ns]);
        }
        let [a, b] = &pair.links;
        ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        for (i, (link, ns)) in pair.links.iter().zip(&pair.netns).enumerate() {
            ip(&["link", "set", link, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{}.{}/24", pair.net, i + 1), "dev", link]);
            ip(&["-n", ns, "link", "set", link, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn down(&self, i: usize) {
        ip(&["-n", &self.netns[i], "link", "set", &self.links[i], "down"]);
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

#[test]
fn two_namespaces_count_exactly_then_a_link_down_fences_the_higher_node() {
    let pair = VethPair::new();
    // Declared after the pair, so dropped first: the daemons die before their namespaces go.
    let c = Cluster::in_namespaces(&pair.net, &pair.netns, true);
    c.wait_view(&[0, 1], &[0, 1], LIMIT);
    const PER_CLIENT: usize = 10;
    let v = c.count_under_lock(&[0, 1], 2, PER_CLIENT);
    assert_eq!(v, 2 * 2 * PER_CLIENT, "lost updates across the veth link\n{}", c.logs());

    c.split_fences_the_higher_node(|| pair.down(1));
}
