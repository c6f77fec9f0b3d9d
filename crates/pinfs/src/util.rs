//! Small helpers shared by the modules: size parsing and checked arithmetic.

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
