//! Small helpers shared by the modules: size parsing, checked arithmetic,
//! and a seeded generator.

use crate::{Errno, Result};

/// Parse a size with an optional `k`/`m`/`g`/`t` suffix (powers of 1024), or a
/// `0x` hexadecimal number, as `xfs_io` does.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    let (digits, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        't' | 'T' => (&s[..s.len() - 1], 1 << 40),
        'b' | 'B' => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// `a + b`, or `EFBIG` when it overflows (offsets from the outside world).
pub fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or(Errno::EFBIG.into())
}

/// A tiny, seeded, deterministic generator (SplitMix64): crash images,
/// damaged images, test workloads and benchmark offsets must be reproducible
/// from a printed seed, and nothing here needs a `rand` crate for that.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The sequence of `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("0x10"), Some(16));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999g"), None);
    }
}
