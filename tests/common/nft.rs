//! A network split on loopback: an nftables table of the test's own (a unique name) dropping
//! every packet between two addresses, both ways; deleted when dropped, even while a failing
//! test unwinds.

use std::process::Command;

use super::cluster::rand_u16;
use super::{run, text};

pub struct Split(String);

impl Split {
    pub fn new(a: &str, b: &str) -> Split {
        let name = format!("o2fs_split_{}_{}", std::process::id(), rand_u16());
        let rules = format!(
            "table ip {name} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
             ip saddr {a} ip daddr {b} drop\n    ip saddr {b} ip daddr {a} drop\n  }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{name}.nft"));
        std::fs::write(&file, rules).unwrap();
        let out = run(Command::new("nft").arg("-f").arg(&file));
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "nft: {}", text(&out));
        Split(name)
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        let _ = run(Command::new("nft").args(["delete", "table", "ip", &self.0]));
    }
}
