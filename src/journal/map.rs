//! Journal block → filesystem block: the journal is the data of `journal:NNNN`, so journal
//! block *j* is logical block *j* of that file, mapped through its extent list (§13.1).

use crate::format::extent::ExtentRec;

/// One contiguous run: journal blocks `[first_jblk, first_jblk + len)` live at filesystem blocks
/// `[fs_blkno, fs_blkno + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRun {
    pub first_jblk: u64,
    pub fs_blkno: u64,
    pub len: u64,
}

/// The journal file's block map, sorted by journal block, runs never overlapping.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalMap {
    runs: Vec<MapRun>,
}

impl JournalMap {
    /// Builds a map from `(first_jblk, fs_blkno, len_blocks)` runs in any order. Empty runs are
    /// dropped; where runs overlap in journal space the earlier one (by `first_jblk`) wins.
    pub fn new(extents: Vec<(u64, u64, u64)>) -> Self {
        let mut runs: Vec<MapRun> = extents
            .into_iter()
            .filter(|&(_, _, len)| len > 0)
            .map(|(first_jblk, fs_blkno, len)| MapRun { first_jblk, fs_blkno, len })
            .collect();
        runs.sort_by_key(|r| r.first_jblk);
        let mut out: Vec<MapRun> = Vec::with_capacity(runs.len());
        for mut r in runs {
            if let Some(prev) = out.last() {
                let prev_end = prev.first_jblk.saturating_add(prev.len);
                if r.first_jblk < prev_end {
                    let cut = prev_end - r.first_jblk;
                    if cut >= r.len {
                        continue;
                    }
                    r.first_jblk += cut;
                    r.fs_blkno = r.fs_blkno.saturating_add(cut);
                    r.len -= cut;
                }
            }
            out.push(r);
        }
        JournalMap { runs: out }
    }

    /// From the journal inode's leaf extent records (cluster units) and blocks per cluster.
    pub fn from_extent_recs(recs: &[ExtentRec], blocks_per_cluster: u64) -> Self {
        let bpc = blocks_per_cluster.max(1);
        JournalMap::new(recs.iter().map(|r| (r.cpos as u64 * bpc, r.blkno, r.len as u64 * bpc)).collect())
    }

    /// Filesystem block holding journal block `jblk`, None when unmapped.
    pub fn fs_block(&self, jblk: u64) -> Option<u64> {
        let i = self.runs.partition_point(|r| r.first_jblk <= jblk).checked_sub(1)?;
        let r = &self.runs[i];
        (jblk - r.first_jblk < r.len).then(|| r.fs_blkno + (jblk - r.first_jblk))
    }

    /// Journal blocks mapped without a hole from block 0.
    pub fn contiguous_len(&self) -> u64 {
        let mut next = 0u64;
        for r in &self.runs {
            if r.first_jblk != next {
                break;
            }
            next = next.saturating_add(r.len);
        }
        next
    }

    /// True when filesystem block `fs_blkno` holds some journal block.
    pub fn contains_fs_block(&self, fs_blkno: u64) -> bool {
        self.runs.iter().any(|r| fs_blkno >= r.fs_blkno && fs_blkno - r.fs_blkno < r.len)
    }

    pub fn runs(&self) -> &[MapRun] {
        &self.runs
    }

    /// How many journal blocks from `jblk` on (at most `max`) sit at consecutive filesystem
    /// blocks, so that one device write can cover them.
    pub fn contiguous_from(&self, jblk: u64, max: u64) -> u64 {
        let Some(i) = self.runs.partition_point(|r| r.first_jblk <= jblk).checked_sub(1) else { return 0 };
        let r = &self.runs[i];
        let off = jblk - r.first_jblk;
        if off >= r.len {
            return 0;
        }
        (r.len - off).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_runs_and_holes() {
        let m = JournalMap::new(vec![(10, 500, 5), (0, 100, 8)]);
        assert_eq!(m.fs_block(0), Some(100));
        assert_eq!(m.fs_block(7), Some(107));
        assert_eq!(m.fs_block(8), None);
        assert_eq!(m.fs_block(10), Some(500));
        assert_eq!(m.fs_block(14), Some(504));
        assert_eq!(m.fs_block(15), None);
        assert_eq!(m.contiguous_len(), 8);
        assert!(m.contains_fs_block(504) && !m.contains_fs_block(505) && !m.contains_fs_block(99));
        assert_eq!(m.contiguous_from(5, 100), 3);
        assert_eq!(m.contiguous_from(9, 100), 0);
    }

    #[test]
    fn overlaps_are_trimmed() {
        let m = JournalMap::new(vec![(0, 100, 8), (4, 900, 8), (5, 7, 1), (0, 1, 0)]);
        assert_eq!(m.fs_block(3), Some(103));
        assert_eq!(m.fs_block(7), Some(107));
        assert_eq!(m.fs_block(8), Some(904));
        assert_eq!(m.fs_block(11), Some(907));
        assert_eq!(m.contiguous_len(), 12);
    }

    #[test]
    fn from_cluster_extents() {
        let recs =
            [ExtentRec { cpos: 0, len: 2, flags: 0, blkno: 64 }, ExtentRec { cpos: 2, len: 1, flags: 0, blkno: 320 }];
        let m = JournalMap::from_extent_recs(&recs, 16);
        assert_eq!(m.fs_block(31), Some(95));
        assert_eq!(m.fs_block(32), Some(320));
        assert_eq!(m.contiguous_len(), 48);
    }
}
