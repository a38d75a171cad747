//! Problem list and output: every finding has a code (named like fsck.ocfs2's, ocfs2-format.md
//! §15), the block or inode it concerns, a message, and whether it was repaired.

use super::Mode;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: &'static str,
    /// Block or inode number the problem is about.
    pub blkno: u64,
    pub message: String,
    /// Safe repairs (counters, bitmaps, link counts) are the only ones `-p` makes.
    pub safe: bool,
    pub fixed: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.fixed { "fixed" } else { "not fixed" };
        write!(f, "[{}] {} ({state})", self.code, self.message)
    }
}

/// Everything a run found, plus detail notes printed with `-v`.
#[derive(Debug, Clone)]
pub struct Report {
    pub mode: Mode,
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
    /// Indexes of safe problems whose repair waits for the end of the run.
    deferred: Vec<usize>,
}

impl Report {
    pub fn new(mode: Mode) -> Self {
        Report { mode, problems: Vec::new(), notes: Vec::new(), deferred: Vec::new() }
    }

    /// Whether a repair of this kind is allowed in this mode.
    pub fn allowed(&self, safe: bool) -> bool {
        match self.mode {
            Mode::Repair => true,
            Mode::Preen => safe,
            Mode::Check => false,
        }
    }

    /// Records a problem that is repaired on the spot when the mode allows; returns whether the
    /// caller should repair it.
    pub fn found(&mut self, code: &'static str, blkno: u64, safe: bool, message: String) -> bool {
        let fixed = self.allowed(safe);
        tracing::debug!(code, blkno, fixed, "{message}");
        self.problems.push(Problem { code, blkno, message, safe, fixed });
        fixed
    }

    /// Records a problem that can never be repaired here.
    pub fn unfixable(&mut self, code: &'static str, blkno: u64, message: String) {
        self.problems.push(Problem { code, blkno, message, safe: false, fixed: false });
    }

    /// Records a safe problem whose repair (a rebuilt counter, bitmap or link count) is written
    /// at the end of the run, and only when nothing else was left unrepaired.
    pub fn deferred(&mut self, code: &'static str, blkno: u64, message: String) {
        self.deferred.push(self.problems.len());
        self.problems.push(Problem { code, blkno, message, safe: true, fixed: false });
    }

    /// True when derived state may be rewritten: the mode allows safe repairs and no other
    /// problem was left unrepaired (rebuilding from a model that differs from the disk would
    /// make things worse).
    pub fn may_commit(&self) -> bool {
        self.allowed(true) && self.problems.iter().enumerate().all(|(i, p)| p.fixed || self.deferred.contains(&i))
    }

    /// Marks every deferred problem repaired (called after the rebuild was written).
    pub fn commit_deferred(&mut self) {
        for &i in &self.deferred {
            if let Some(p) = self.problems.get_mut(i) {
                p.fixed = true;
            }
        }
    }

    pub fn note(&mut self, s: String) {
        tracing::info!("{s}");
        self.notes.push(s);
    }

    /// fsck(8) exit status: 0 clean, 1 all corrected, 4 some left.
    pub fn exit_code(&self) -> i32 {
        if self.problems.is_empty() {
            0
        } else if self.problems.iter().all(|p| p.fixed) {
            1
        } else {
            4
        }
    }

    /// The report as one JSON object (no external dependency: the strings are escaped here).
    pub fn to_json(&self) -> String {
        let items: Vec<String> = self
            .problems
            .iter()
            .map(|p| {
                format!(
                    "{{\"code\":\"{}\",\"blkno\":{},\"message\":\"{}\",\"safe\":{},\"fixed\":{}}}",
                    p.code,
                    p.blkno,
                    json_escape(&p.message),
                    p.safe,
                    p.fixed
                )
            })
            .collect();
        format!("{{\"exit_code\":{},\"problems\":[{}]}}", self.exit_code(), items.join(","))
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_fsck8() {
        let mut r = Report::new(Mode::Repair);
        assert_eq!(r.exit_code(), 0);
        assert!(r.found("X", 1, false, "m".into()));
        assert_eq!(r.exit_code(), 1);
        r.deferred("Y", 2, "n\"".into());
        assert_eq!(r.exit_code(), 4);
        assert!(r.may_commit());
        r.commit_deferred();
        assert_eq!(r.exit_code(), 1);
        assert!(r.to_json().contains("n\\\""));
        let mut p = Report::new(Mode::Preen);
        assert!(!p.found("X", 1, false, "m".into()));
        p.deferred("Y", 2, "n".into());
        assert!(!p.may_commit());
    }
}
