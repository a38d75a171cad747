//! Two network namespaces of the test's own joined by a veth pair, for tests that cut a link
//! between two nodes. Names and the /24 are random per test; everything is deleted on drop
//! (the veth pair goes with its namespaces), even when the test fails.

use std::process::Command;

use super::cluster::rand_u16;
use super::{run, text};

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), text(&out));
}

pub struct VethPair {
    pub netns: [String; 2],
    links: [String; 2],
    /// The first three octets: namespace i has `NET.(i+1)`.
    pub net: String,
}

impl VethPair {
    /// A pair on a random `PREFIX.x` network (each test file its own PREFIX, e.g. "10.199").
    pub fn new(prefix: &str) -> VethPair {
        let tag = format!("{:x}{:04x}", std::process::id() % 0xfff, rand_u16());
        let pair = VethPair {
            netns: [format!("o2fs-{tag}-a"), format!("o2fs-{tag}-b")],
            links: [format!("o2v{tag}a"), format!("o2v{tag}b")],
            net: format!("{prefix}.{}", 1 + rand_u16() % 254),
        };
        for ns in &pair.netns {
            ip(&["netns", "add", ns]);
        }
        let [a, b] = &pair.links;
        ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        for (i, (link, ns)) in pair.links.iter().zip(&pair.netns).enumerate() {
            ip(&["link", "set", link, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{}/24", pair.addr(i)), "dev", link]);
            ip(&["-n", ns, "link", "set", link, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Namespace i's address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.net, i + 1)
    }

    /// Takes namespace i's end of the link down.
    pub fn down(&self, i: usize) {
        ip(&["-n", &self.netns[i], "link", "set", &self.links[i], "down"]);
    }

    /// Brings namespace i's end of the link up again.
    pub fn up(&self, i: usize) {
        ip(&["-n", &self.netns[i], "link", "set", &self.links[i], "up"]);
    }

    /// A command prefix that runs a program in namespace i's network only. `ip netns exec`
    /// would also give it a mount namespace of its own, hiding a FUSE mount from the test.
    pub fn enter(&self, i: usize) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{}", self.netns[i])]
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}
