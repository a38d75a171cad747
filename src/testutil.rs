//! Support for tests only, not part of o2fs's API: public (and hidden from the docs) so that the
//! integration tests under `tests/` can share it with the unit tests. A seeded generator for fuzz
//! and mutation loops, the `O2FS_SEED` override, and the text mutator of the config parsers'
//! mutation tests.

/// xorshift64*: small, seeded, reproducible; not for anything but tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`. Nearby seeds give unrelated sequences, and no seed (0 included)
    /// gives the zero state, which xorshift never leaves.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0), taken from the high bits, the best of xorshift64*.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        self.fill(&mut out);
        out
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The seed a randomized test uses: `O2FS_SEED` (decimal or `0x` hex) when set, else `default`.
/// A value that is neither is refused rather than silently replaced.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("O2FS_SEED") {
        Ok(s) => parse_seed(&s).unwrap_or_else(|| panic!("O2FS_SEED={s:?}: not a decimal or 0x-hex number")),
        Err(_) => default,
    }
}

/// How many seeds a seeded sweep runs: `O2FS_SEEDS` (a wider search than CI's) when set, else
/// `default`.
pub fn seed_count_from_env(default: u64) -> u64 {
    match std::env::var("O2FS_SEEDS") {
        Ok(s) => parse_seed(&s).unwrap_or_else(|| panic!("O2FS_SEEDS={s:?}: not a decimal or 0x-hex number")),
        Err(_) => default,
    }
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => s.parse().ok(),
    }
}

/// `text` with one to four random edits: a run of up to 8 characters deleted, a character of
/// `alphabet` inserted or written over one, or a piece (up to 40 characters) of the text copied
/// elsewhere. `alphabet` should hold the characters the parser under test gives meaning to.
pub fn mutate_text(text: &str, alphabet: &[char], rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let pick = |rng: &mut Rng| alphabet[rng.below(alphabet.len() as u64) as usize];
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() as u64 + 1) as usize;
        match rng.below(4) {
            0 if at < chars.len() => {
                let end = (at + 1 + rng.below(8) as usize).min(chars.len());
                chars.drain(at..end);
            }
            1 => chars.insert(at, pick(rng)),
            2 if at < chars.len() => chars[at] = pick(rng),
            _ => {
                let from = rng.below(chars.len() as u64 + 1) as usize;
                let (lo, hi) = (at.min(from), at.max(from));
                let piece: Vec<char> = chars[lo..hi.min(lo + 40)].to_vec();
                chars.splice(at..at, piece);
            }
        }
    }
    chars.into_iter().collect()
}

/// Parses 2000 mutations (see [`mutate_text`]) of `bases`, taken in turn, with seeds 0..2000,
/// and fails, naming the seed and the text, if `parse` panics on one.
pub fn assert_mutations_never_panic(bases: &[&str], alphabet: &[char], parse: impl Fn(&str)) {
    for seed in 0..2000u64 {
        let base = bases[seed as usize % bases.len()];
        let text = mutate_text(base, alphabet, &mut Rng::new(seed));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&text)));
        assert!(outcome.is_ok(), "seed {seed}: parse panicked on {text:?}");
    }
}

/// A refusal case of a parser's test: the text, and what the error it gets must satisfy.
pub type Refusal<E> = (String, fn(&E) -> bool);

/// Checks that `parse` refuses every case with an error its predicate accepts; a failure names
/// the case by its index.
pub fn assert_refusals<T, E: std::fmt::Debug>(cases: &[Refusal<E>], parse: impl Fn(&str) -> Result<T, E>) {
    for (i, (text, expected)) in cases.iter().enumerate() {
        match parse(text) {
            Ok(_) => panic!("case {i}: parsed:\n{text}"),
            Err(e) => assert!(expected(&e), "case {i}: unexpected error {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_zero_is_a_seed() {
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..4).map(|_| r.next()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(0).iter().all(|&x| x != 0));
    }

    #[test]
    fn below_bytes_and_fill_stay_in_bounds() {
        let mut r = Rng::new(1);
        assert_eq!((r.below(0), r.below(1)), (0, 0));
        let draws: Vec<u64> = (0..1000).map(|_| r.below(6)).collect();
        assert!(draws.iter().all(|&x| x < 6));
        assert!((0..6).all(|v| draws.contains(&v)), "{draws:?}");
        assert_eq!(r.bytes(13).len(), 13);
        let mut buf = [0u8; 21];
        r.fill(&mut buf);
        assert!(buf[16..].iter().any(|&b| b != 0), "the short tail was filled");
    }

    #[test]
    fn seeds_parse_as_decimal_or_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x5EED_0F_0CF5 "), Some(0x5EED_0F_0CF5));
        assert_eq!(parse_seed("0Xff"), Some(255));
        assert_eq!(parse_seed("seed"), None);
        assert_eq!(parse_seed("0x"), None);
    }

    #[test]
    fn mutations_are_reproducible_and_draw_from_the_text_and_alphabet() {
        let text = "key = value\n";
        let mutate = |seed| mutate_text(text, &['#', '\n'], &mut Rng::new(seed));
        let outs: Vec<String> = (0..200).map(mutate).collect();
        assert_eq!(outs[..10], (0..10).map(mutate).collect::<Vec<_>>());
        assert!(outs.iter().filter(|o| o.as_str() != text).count() > 150);
        assert!(outs.iter().flat_map(|o| o.chars()).all(|c| text.contains(c) || c == '#'));
        assert_eq!(mutate_text("", &['x'], &mut Rng::new(3)).chars().filter(|&c| c != 'x').count(), 0);
    }

    #[test]
    #[should_panic(expected = "case 1: unexpected error")]
    fn a_wrong_refusal_is_reported_with_its_case() {
        let parse = |t: &str| t.parse::<u8>();
        let cases: Vec<Refusal<std::num::ParseIntError>> = vec![
            ("x".into(), |e| e.to_string().contains("invalid")),
            ("".into(), |e| e.to_string().contains("invalid")),
        ];
        assert_refusals(&cases, parse);
    }

    #[test]
    #[should_panic(expected = "seed 0: parse panicked")]
    fn a_panicking_parser_is_reported_with_its_seed() {
        assert_mutations_never_panic(&["a = b\n"], &['='], |t| assert!(t.is_empty()));
    }
}
