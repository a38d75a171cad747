//! Pass 3 (ocfs2-format.md §8.3, §15 pass 3): every directory must be reachable from the root
//! or the system directory, and its '..' must name the directory that holds it. Unreachable
//! directories are linked into lost+found as `#<inode>`.

use super::{Checker, Result};
use crate::format::dirent::FT_DIR;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Parent of every directory reachable from the roots (the roots are their own parents).
fn reach(c: &Checker, roots: &[u64]) -> HashMap<u64, u64> {
    let mut parent = HashMap::new();
    let mut queue = VecDeque::new();
    for &r in roots {
        if c.dirs.contains_key(&r) && parent.insert(r, r).is_none() {
            queue.push_back(r);
        }
    }
    while let Some(d) = queue.pop_front() {
        let Some(dir) = c.dirs.get(&d) else { continue };
        for e in dir.children() {
            if c.dirs.contains_key(&e.inode) && !parent.contains_key(&e.inode) {
                parent.insert(e.inode, d);
                queue.push_back(e.inode);
            }
        }
    }
    parent
}

/// lost+found: the directory named so in the root (§2.4 step 12).
pub fn lost_and_found(c: &Checker) -> Option<u64> {
    let root = c.vol.sb().root_blkno;
    c.dirs
        .get(&root)?
        .children()
        .into_iter()
        .find(|e| e.name == b"lost+found" && c.dirs.contains_key(&e.inode))
        .map(|e| e.inode)
}

/// Links `ino` into lost+found as `#ino`; returns false when there is no room or no lost+found.
pub fn link_into_lost_found(c: &mut Checker, ino: u64, ft: u8, write: bool) -> Result<bool> {
    let Some(lf) = lost_and_found(c) else { return Ok(false) };
    let name = format!("#{ino}");
    let Some(dir) = c.dirs.get_mut(&lf) else { return Ok(false) };
    let Some(area) = dir.add(name.as_bytes(), ino, ft) else { return Ok(false) };
    if write {
        let dir = dir.clone();
        dir.flush(c, area)?;
    }
    Ok(true)
}

pub fn pass3(c: &mut Checker) -> Result<()> {
    let sb = c.vol.sb().clone();
    let roots = [sb.root_blkno, sb.system_dir_blkno];
    if lost_and_found(c).is_none() {
        c.report.unfixable("LOSTFOUND_MISSING", sb.root_blkno, "the root directory has no lost+found directory".into());
    }
    // Reconnect: repeat until every directory is reachable (bounded by the directory count).
    for _ in 0..=c.dirs.len() {
        let parent = reach(c, &roots);
        let unreached: BTreeSet<u64> = c.dirs.keys().copied().filter(|d| !parent.contains_key(d)).collect();
        if unreached.is_empty() {
            break;
        }
        // Tops: unreached directories whose parent is not itself unreached and listing them;
        // with none (a cycle), take the lowest.
        let listed_by_unreached = |d: u64| {
            let p = c.dirs.get(&d).map_or(0, |x| x.dotdot);
            unreached.contains(&p) && c.dirs.get(&p).is_some_and(|pd| pd.children().iter().any(|e| e.inode == d))
        };
        let mut tops: Vec<u64> = unreached.iter().copied().filter(|&d| !listed_by_unreached(d)).collect();
        if tops.is_empty() {
            tops.extend(unreached.iter().next());
        }
        let mut progress = false;
        for d in tops {
            let msg = format!("directory inode {d} is not reachable from the root; linked into lost+found as #{d}");
            let fix = c.report.found("DIR_NOT_CONNECTED", d, false, msg);
            if link_into_lost_found(c, d, FT_DIR, fix)? {
                progress = true;
                let lf = lost_and_found(c).unwrap_or(0);
                if let Some(dir) = c.dirs.get_mut(&d) {
                    if dir.set_dotdot(lf).is_some() && fix {
                        let dir = dir.clone();
                        dir.flush(c, 0)?;
                    }
                }
            } else if let Some(p) = c.report.problems.last_mut() {
                p.fixed = false;
                p.message.push_str(" (no room in lost+found)");
            }
        }
        if !progress {
            break;
        }
    }
    // '..' of every reachable directory names its parent.
    let parent = reach(c, &roots);
    let mut fixes: Vec<(u64, u64)> = Vec::new();
    for (&d, &p) in &parent {
        if c.dirs.get(&d).is_some_and(|x| x.dotdot != p) {
            fixes.push((d, p));
        }
    }
    fixes.sort_unstable();
    for (d, p) in fixes {
        let old = c.dirs.get(&d).map_or(0, |x| x.dotdot);
        let fix =
            c.report.found("DIR_DOTDOT", d, false, format!("directory inode {d}: '..' is {old} but its parent is {p}"));
        if let Some(dir) = c.dirs.get_mut(&d) {
            if dir.set_dotdot(p).is_some() && fix {
                let dir = dir.clone();
                dir.flush(c, 0)?;
            }
        }
    }
    Ok(())
}
