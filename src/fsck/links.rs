//! Pass 4 (ocfs2-format.md §11.1, §8.3, §15 pass 4): orphan directories are emptied by
//! finishing the deletion of what they list; then every live inode must be referenced by at
//! least one entry (else it goes to lost+found) and its link count must equal the number of
//! entries naming it, counting '.' and '..'.

use super::{connectivity, Checker, Result};
use crate::format::bytes::{le32, put_le32, put_le64};
use crate::format::dirent::file_type_of_mode;
use crate::format::inode::{ORPHANED_FL, VALID_FL};
use crate::fs::sysfile::SystemFile;
use std::collections::HashMap;

pub fn pass4(c: &mut Checker) -> Result<()> {
    for slot in 0..c.vol.sb().max_slots {
        orphans(c, slot)?;
    }
    link_counts(c)
}

/// Finishes off every inode listed in `orphan_dir:slot`: frees it (its clusters and its
/// allocator bit follow at the end) and removes the entry.
fn orphans(c: &mut Checker, slot: u16) -> Result<()> {
    let Some(od) = c.sysfile(&SystemFile::OrphanDir(slot).name()) else { return Ok(()) };
    let Some(dir) = c.dirs.get(&od) else { return Ok(()) };
    for e in dir.children() {
        let msg = format!("inode {} is listed in orphan_dir:{slot:04}; its deletion is finished", e.inode);
        if !c.report.found("INODE_ORPHANED", e.inode, false, msg) {
            c.orphans.insert(e.inode, slot);
            continue;
        }
        if let Some(d) = c.dirs.get_mut(&od) {
            d.remove(e.area, e.off);
            let d = d.clone();
            d.flush(c, e.area)?;
        }
        if c.inodes.remove(&e.inode).is_some() {
            c.dirs.remove(&e.inode);
            if let Some(mut b) = c.read(e.inode)? {
                let flags = le32(&b, 0x2C) & !(VALID_FL | ORPHANED_FL);
                put_le32(&mut b, 0x2C, flags);
                put_le64(&mut b, 0x48, c.now.max(1));
                c.write(e.inode, &b)?;
            }
        }
    }
    Ok(())
}

fn link_counts(c: &mut Checker) -> Result<()> {
    let mut refs: HashMap<u64, u32> = HashMap::new();
    for (&d, dir) in &c.dirs {
        *refs.entry(d).or_default() += 1;
        *refs.entry(dir.dotdot).or_default() += 1;
        for e in dir.children() {
            *refs.entry(e.inode).or_default() += 1;
        }
    }
    let live: Vec<(u64, u16, u16, u32)> = c.inodes.iter().map(|(&b, i)| (b, i.mode, i.links, i.flags)).collect();
    for (ino, mode, links, flags) in live {
        if c.orphans.contains_key(&ino) || flags & ORPHANED_FL != 0 && !refs.contains_key(&ino) {
            continue;
        }
        let mut n = refs.get(&ino).copied().unwrap_or(0);
        if n == 0 {
            let msg = format!("inode {ino} is not referenced by any directory; linked into lost+found as #{ino}");
            let fix = c.report.found("INODE_NOT_CONNECTED", ino, false, msg);
            if connectivity::link_into_lost_found(c, ino, file_type_of_mode(mode), fix)? {
                n = 1;
            } else {
                if let Some(p) = c.report.problems.last_mut() {
                    p.fixed = false;
                }
                continue;
            }
        }
        if n != links as u32 {
            let msg = format!("inode {ino} has link count {links} but {n} directory entries name it");
            c.report.deferred("INODE_COUNT", ino, msg);
            c.link_fixes.push((ino, n.min(u16::MAX as u32) as u16));
        }
    }
    Ok(())
}
