//! The soft device's address space and keys: which IOVA ranges are
//! reserved, and the lkey/rkey values regions are named by.
//!
//! An IOVA range stays reserved from registration until *deregistration* —
//! not until revocation — so a late access by a peer that still holds an
//! old (key, IOVA) pair can never land in memory registered later at the
//! same address (SPEC §6.3). Allocation is next-fit from a rotating cursor
//! (as IOMMU allocators do, to delay reuse further still) and every range is
//! followed by [`IOVA_GUARD_PAGES`] unmapped pages, so an access that runs
//! off the end of one region never lands in the next.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use crate::dma::PAGE_BYTES;

/// First IOVA handed out (never 0: a zero address is a bug's favourite).
pub const IOVA_BASE: u64 = 1 << 32;
/// End of the IOVA space (a 47-bit space, as x86 IOMMUs give): room for
/// thousands of the largest regions.
pub const IOVA_END: u64 = 1 << 47;
/// Unmapped pages after every region.
pub const IOVA_GUARD_PAGES: u64 = 16;

/// Reserved IOVA ranges.
#[derive(Debug)]
pub(super) struct IovaSpace {
    /// Start → length in bytes (region plus guard).
    reserved: BTreeMap<u64, u64>,
    /// Where the next search starts.
    cursor: u64,
}

impl IovaSpace {
    pub(super) fn new() -> Self {
        IovaSpace {
            reserved: BTreeMap::new(),
            cursor: IOVA_BASE,
        }
    }

    /// Reserve a fresh range for `pages` pages (plus the guard); `None`
    /// when the space is full.
    pub(super) fn reserve(&mut self, pages: u64) -> Option<u64> {
        let need = pages
            .checked_add(IOVA_GUARD_PAGES)?
            .checked_mul(PAGE_BYTES)?;
        for from in [self.cursor, IOVA_BASE] {
            if let Some(start) = self.first_fit(from, need) {
                self.reserved.insert(start, need);
                self.cursor = start + need;
                return Some(start);
            }
        }
        None
    }

    /// The first free `need` bytes at or after `from`.
    fn first_fit(&self, from: u64, need: u64) -> Option<u64> {
        let mut candidate = from;
        // A range that starts before `from` may cover it.
        if let Some((&s, &l)) = self.reserved.range(..candidate).next_back() {
            candidate = candidate.max(s + l);
        }
        for (&s, &l) in self.reserved.range(candidate..) {
            if s >= candidate.checked_add(need)? {
                break;
            }
            candidate = candidate.max(s + l);
        }
        (candidate.checked_add(need)? <= IOVA_END).then_some(candidate)
    }

    /// Release the range starting at `start`.
    pub(super) fn release(&mut self, start: u64) {
        self.reserved.remove(&start);
    }
}

/// Key generator: the n-th key is a keyed permutation (a four-round
/// Feistel network over 16-bit halves, round keys random per device) of n —
/// so keys are unique for the device's life (no key is ever handed out
/// twice: a late request with a deregistered region's key can never match
/// a later region), not guessable from earlier keys by a peer, and never 0.
pub(super) struct KeyGen {
    round_keys: [u16; 4],
    counter: u32,
}

impl std::fmt::Debug for KeyGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyGen")
    }
}

impl KeyGen {
    pub(super) fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        let r = h.finish();
        KeyGen {
            round_keys: [
                r as u16,
                (r >> 16) as u16,
                (r >> 32) as u16,
                (r >> 48) as u16,
            ],
            counter: 0,
        }
    }

    fn permute(&self, n: u32) -> u32 {
        let (mut l, mut r) = ((n >> 16) as u16, n as u16);
        for &k in &self.round_keys {
            let f = (r ^ k).wrapping_mul(0x9e37).rotate_left(5) ^ k.rotate_right(3);
            (l, r) = (r, l ^ f);
        }
        (u32::from(l) << 16) | u32::from(r)
    }

    /// A fresh key, or `None` once all 2^32 - 1 are spent.
    pub(super) fn next(&mut self) -> Option<u32> {
        loop {
            self.counter = self.counter.checked_add(1)?;
            let key = self.permute(self.counter);
            if key != 0 {
                return Some(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_fresh_guarded_and_reused_only_after_release() {
        let mut s = IovaSpace::new();
        let a = s.reserve(4).unwrap();
        let b = s.reserve(4).unwrap();
        assert!(b >= a + (4 + IOVA_GUARD_PAGES) * PAGE_BYTES);
        s.release(a);
        // Next-fit: the released range is not the next one handed out.
        let c = s.reserve(4).unwrap();
        assert_ne!(c, a);
        assert!(c > b);
        // Wrap-around into the freed space once the end is reached.
        let huge = (IOVA_END - c) / PAGE_BYTES - 2 * IOVA_GUARD_PAGES - 8;
        assert!(s.reserve(huge).is_some());
        let d = s.reserve(4).unwrap();
        assert_eq!(d, a);
    }

    #[test]
    fn keys_are_never_zero_and_never_repeat() {
        let mut k = KeyGen::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let key = k.next().unwrap();
            assert_ne!(key, 0);
            assert!(seen.insert(key));
        }
        // Not a counter: consecutive keys differ in many bits.
        let (a, b) = (k.next().unwrap(), k.next().unwrap());
        assert!((a ^ b).count_ones() > 4, "{a:#x} {b:#x}");
        // A bijection: a small domain maps onto itself without collision.
        let k = KeyGen::new();
        let mut all = std::collections::HashSet::new();
        for n in 0..1u32 << 16 {
            assert!(all.insert(k.permute(n)));
        }
    }
}
