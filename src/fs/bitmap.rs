//! Bit operations on allocator bitmaps (group descriptors, local alloc): bit n is
//! `byte[n / 8] >> (n % 8) & 1` (ocfs2-format.md §14.1). Out-of-range bits read as set and are
//! never written, so a corrupt count can not make an allocator hand out bytes it does not own.

pub fn test(map: &[u8], bit: usize) -> bool {
    map.get(bit / 8).map_or(true, |b| b >> (bit % 8) & 1 == 1)
}

pub fn set(map: &mut [u8], bit: usize) {
    if let Some(b) = map.get_mut(bit / 8) {
        *b |= 1 << (bit % 8);
    }
}

pub fn clear(map: &mut [u8], bit: usize) {
    if let Some(b) = map.get_mut(bit / 8) {
        *b &= !(1 << (bit % 8));
    }
}

pub fn set_range(map: &mut [u8], start: usize, len: usize) {
    (start..start + len).for_each(|bit| set(map, bit));
}

pub fn clear_range(map: &mut [u8], start: usize, len: usize) {
    (start..start + len).for_each(|bit| clear(map, bit));
}

/// Set bits among the first `nbits`.
pub fn count_set(map: &[u8], nbits: usize) -> usize {
    let full = nbits / 8;
    let mut n: usize = map.iter().take(full).map(|b| b.count_ones() as usize).sum();
    n += (full * 8..nbits).filter(|&bit| test(map, bit)).count();
    n
}

/// First run of `len` clear bits in `[from, nbits)`, first fit.
pub fn find_clear_run(map: &[u8], nbits: usize, from: usize, len: usize) -> Option<usize> {
    if len == 0 {
        return Some(from);
    }
    let mut run_start = from;
    let mut run = 0;
    let mut bit = from;
    while bit < nbits {
        // Skip whole set bytes quickly.
        if bit % 8 == 0 && run == 0 && map.get(bit / 8) == Some(&0xFF) {
            bit += 8;
            continue;
        }
        if test(map, bit) {
            run = 0;
        } else {
            if run == 0 {
                run_start = bit;
            }
            run += 1;
            if run == len {
                return Some(run_start);
            }
        }
        bit += 1;
    }
    None
}

/// Longest run of clear bits among the first `nbits`.
pub fn longest_clear_run(map: &[u8], nbits: usize) -> usize {
    let (mut best, mut run) = (0, 0);
    for bit in 0..nbits {
        if test(map, bit) {
            run = 0;
        } else {
            run += 1;
            best = best.max(run);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_counts() {
        let mut m = vec![0u8; 4];
        set_range(&mut m, 0, 10);
        set(&mut m, 12);
        assert_eq!(count_set(&m, 32), 11);
        assert_eq!(find_clear_run(&m, 32, 0, 2), Some(10));
        assert_eq!(find_clear_run(&m, 32, 0, 3), Some(13));
        assert_eq!(find_clear_run(&m, 20, 0, 8), None);
        assert_eq!(longest_clear_run(&m, 32), 19);
        clear_range(&mut m, 0, 10);
        assert_eq!(count_set(&m, 32), 1);
        assert!(test(&m, 1000), "bits past the map read as set");
    }
}
