//! The free-space allocator and the busy-extent list.
//!
//! Free space is kept in memory as runs of free data blocks, indexed by start
//! and by length; it is rebuilt at mount from the extent maps (a block is
//! free when no extent or extent-tree block uses it), in time proportional to
//! the extents, so the allocator itself has no on-media state and cannot
//! disagree with the files after a crash.
//!
//! Policy: a request first tries to continue at a goal block (the block after
//! the file's previous extent) so files stay contiguous; requests of 2 MiB or
//! more prefer 2 MiB-aligned runs so direct mappings can use huge pages; the
//! rest is best fit, falling back to the largest runs.
//!
//! Busy extents: blocks that have left every file but that a pin may still
//! reach (SPEC §4.3, `defer`) are *held back* here instead of being freed.
//! They are not free and never handed out until released by the last unpin.

use std::collections::{BTreeMap, BTreeSet};

use crate::format::HUGE_BLOCKS;
use crate::{Errno, Result};

/// A run of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Run {
    /// First block.
    pub start: u64,
    /// Length in blocks.
    pub len: u64,
}

impl Run {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Free runs and busy extents of the data region.
#[derive(Debug, Default, Clone)]
pub struct Allocator {
    /// start → len of each free run; runs never touch or overlap.
    by_start: BTreeMap<u64, u64>,
    /// (len, start) of each free run.
    by_len: BTreeSet<(u64, u64)>,
    free_blocks: u64,
    /// start → len of busy extents (held back, not free).
    busy: BTreeMap<u64, u64>,
    busy_blocks: u64,
}

impl Allocator {
    /// An allocator with no free space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Free blocks (busy ones excluded).
    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Blocks held back as busy extents.
    pub fn busy_blocks(&self) -> u64 {
        self.busy_blocks
    }

    /// The busy extents, in block order.
    pub fn busy_extents(&self) -> Vec<Run> {
        self.busy
            .iter()
            .map(|(&start, &len)| Run { start, len })
            .collect()
    }

    /// The free runs, in block order.
    pub fn free_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.by_start
            .iter()
            .map(|(&start, &len)| Run { start, len })
    }

    fn insert_run(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
    }

    fn remove_run(&mut self, start: u64) -> u64 {
        let len = self.by_start.remove(&start).expect("free run exists");
        self.by_len.remove(&(len, start));
        len
    }

    /// Return `run` to free space, merging with its neighbours.
    ///
    /// Panics if any block of it is already free: that is a double free, a
    /// bug that would hand one block to two owners.
    pub fn free(&mut self, run: Run) {
        if run.len == 0 {
            return;
        }
        let mut start = run.start;
        let mut len = run.len;
        if let Some((&ps, &pl)) = self.by_start.range(..=start).next_back() {
            assert!(ps + pl <= start, "double free of block {start}");
            if ps + pl == start {
                self.remove_run(ps);
                start = ps;
                len += pl;
            }
        }
        if let Some((&ns, &nl)) = self.by_start.range(run.start..).next() {
            assert!(ns >= run.end(), "double free of block {ns}");
            if ns == run.end() {
                self.remove_run(ns);
                len += nl;
            }
        }
        self.insert_run(start, len);
        self.free_blocks += run.len;
    }

    /// Take exactly `run` out of free space (it must be wholly free).
    fn take(&mut self, run: Run) {
        let (&fs, &fl) = self
            .by_start
            .range(..=run.start)
            .next_back()
            .expect("taken range is free");
        assert!(fs + fl >= run.end(), "taken range is free");
        self.remove_run(fs);
        if fs < run.start {
            self.insert_run(fs, run.start - fs);
        }
        if run.end() < fs + fl {
            self.insert_run(run.end(), fs + fl - run.end());
        }
        self.free_blocks -= run.len;
    }

    /// Whether every block of `run` is free.
    pub fn is_free(&self, run: Run) -> bool {
        self.by_start
            .range(..=run.start)
            .next_back()
            .is_some_and(|(&s, &l)| s + l >= run.end())
    }

    /// Whether any block of `run` is free or busy (a block no file uses).
    pub fn overlaps_unused(&self, run: Run) -> bool {
        let hit = |m: &BTreeMap<u64, u64>| {
            m.range(..run.end())
                .next_back()
                .is_some_and(|(&s, &l)| s + l > run.start)
        };
        run.len > 0 && (hit(&self.by_start) || hit(&self.busy))
    }

    /// Allocate `want` blocks, as few runs as possible, near `goal`.
    /// `ENOSPC` (taking nothing) when not enough blocks are free.
    pub fn alloc(&mut self, want: u64, goal: Option<u64>) -> Result<Vec<Run>> {
        if want > self.free_blocks {
            return Err(Errno::ENOSPC.into());
        }
        let mut out = Vec::new();
        let mut left = want;
        // 1. Continue right where the file's previous extent ends — unless
        //    the request is whole 2 MiB pages and continuing would put them
        //    off a 2 MiB boundary: then alignment wins (below), so that the
        //    blocks can be mapped with 2 MiB pages.
        let whole_huge = want >= HUGE_BLOCKS && want.is_multiple_of(HUGE_BLOCKS);
        if let Some(g) = goal.filter(|g| !whole_huge || g.is_multiple_of(HUGE_BLOCKS)) {
            if let Some((&s, &l)) = self.by_start.range(..=g).next_back() {
                if s + l > g {
                    let n = left.min(s + l - g);
                    let r = Run { start: g, len: n };
                    self.take(r);
                    out.push(r);
                    left -= n;
                }
            }
        }
        while left > 0 {
            let r = self.pick(left);
            self.take(r);
            out.push(r);
            left -= r.len;
        }
        Ok(out)
    }

    /// Choose the next run for a request of `want` blocks.
    fn pick(&self, want: u64) -> Run {
        // 2 MiB-aligned placement for large requests: the smallest run that
        // holds `want` (or at least one huge page) from an aligned start.
        if want >= HUGE_BLOCKS {
            let target = want - want % HUGE_BLOCKS;
            for &(len, start) in self.by_len.range((target, 0)..) {
                let aligned = start.next_multiple_of(HUGE_BLOCKS);
                if aligned + target <= start + len {
                    let n = (start + len - aligned).min(want);
                    return Run {
                        start: aligned,
                        len: n,
                    };
                }
            }
        }
        // Best fit.
        if let Some(&(_, start)) = self.by_len.range((want, 0)..).next() {
            return Run { start, len: want };
        }
        // Fragmented: the largest run there is.
        let &(len, start) = self.by_len.iter().next_back().expect("free space checked");
        Run { start, len }
    }

    /// Hold `run` back as a busy extent: not free, not reusable.
    pub fn hold_busy(&mut self, run: Run) {
        if run.len == 0 {
            return;
        }
        tracing::debug!(target: "pinfs::alloc", start = run.start, len = run.len, "busy extent insert");
        // Merge with adjacent busy extents to keep the list short.
        let mut start = run.start;
        let mut len = run.len;
        if let Some((&ps, &pl)) = self.busy.range(..start).next_back() {
            if ps + pl == start {
                self.busy.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(nl) = self.busy.remove(&run.end()) {
            len += nl;
        }
        self.busy.insert(start, len);
        self.busy_blocks += run.len;
    }

    /// Release the part of the busy list inside `run` to free space. Returns
    /// the number of blocks released.
    pub fn release_busy(&mut self, run: Run) -> u64 {
        let mut released = 0;
        let overlapping: Vec<(u64, u64)> = self
            .busy
            .range(..run.end())
            .filter(|(&s, &l)| s + l > run.start)
            .map(|(&s, &l)| (s, l))
            .collect();
        for (s, l) in overlapping {
            self.busy.remove(&s);
            let from = s.max(run.start);
            let to = (s + l).min(run.end());
            if s < from {
                self.busy.insert(s, from - s);
            }
            if to < s + l {
                self.busy.insert(to, s + l - to);
            }
            self.busy_blocks -= to - from;
            self.free(Run {
                start: from,
                len: to - from,
            });
            released += to - from;
        }
        if released > 0 {
            tracing::debug!(target: "pinfs::alloc", start = run.start, len = run.len, released, "busy extent clear");
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_free(runs: &[(u64, u64)]) -> Allocator {
        let mut a = Allocator::new();
        for &(start, len) in runs {
            a.free(Run { start, len });
        }
        a
    }

    #[test]
    fn goal_then_best_fit() {
        let mut a = with_free(&[(100, 10), (200, 3), (300, 50)]);
        assert_eq!(
            a.alloc(3, Some(105)).unwrap(),
            vec![Run { start: 105, len: 3 }]
        );
        assert_eq!(a.alloc(3, None).unwrap(), vec![Run { start: 200, len: 3 }]);
        assert_eq!(a.free_blocks(), 57);
        assert!(a.alloc(58, None).is_err());
        assert_eq!(a.free_blocks(), 57, "failed allocation takes nothing");
    }

    #[test]
    fn large_requests_are_huge_page_aligned() {
        let mut a = with_free(&[(7, 4000)]);
        let r = a.alloc(1024, None).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].start % HUGE_BLOCKS, 0);
    }

    #[test]
    fn whole_huge_pages_leave_a_misaligned_goal_for_alignment() {
        // Continuing at block 100 would put 2 MiB off a 2 MiB boundary.
        let mut a = with_free(&[(100, 4000)]);
        assert_eq!(
            a.alloc(HUGE_BLOCKS, Some(100)).unwrap(),
            vec![Run {
                start: HUGE_BLOCKS,
                len: HUGE_BLOCKS
            }]
        );
        // An aligned goal, or a request not of whole 2 MiB pages, continues.
        assert_eq!(
            a.alloc(HUGE_BLOCKS, Some(2 * HUGE_BLOCKS)).unwrap(),
            vec![Run {
                start: 2 * HUGE_BLOCKS,
                len: HUGE_BLOCKS
            }]
        );
        assert_eq!(
            a.alloc(600, Some(100)).unwrap()[0],
            Run {
                start: 100,
                len: 412
            }
        );
    }

    #[test]
    fn busy_blocks_are_not_reused() {
        let mut a = with_free(&[(0, 10)]);
        let got = a.alloc(10, None).unwrap();
        a.hold_busy(got[0]);
        assert_eq!(a.busy_blocks(), 10);
        assert!(a.alloc(1, None).is_err());
        assert_eq!(a.release_busy(Run { start: 2, len: 3 }), 3);
        assert_eq!(a.busy_blocks(), 7);
        assert_eq!(a.alloc(3, None).unwrap(), vec![Run { start: 2, len: 3 }]);
    }

    proptest! {
        /// Allocations never overlap each other or free space, and freeing
        /// everything restores the original runs.
        #[test]
        fn no_block_handed_out_twice(ops in proptest::collection::vec((1u64..700, any::<bool>()), 1..60)) {
            let mut a = with_free(&[(10, 3000), (5000, 1200)]);
            let mut owned: Vec<Run> = Vec::new();
            for (n, free_one) in ops {
                if free_one && !owned.is_empty() {
                    let r = owned.swap_remove(n as usize % owned.len());
                    a.free(r);
                } else if let Ok(runs) = a.alloc(n, Some(n * 7)) {
                    prop_assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), n);
                    owned.extend(runs);
                }
                let mut all: Vec<Run> = owned.iter().copied().chain(a.free_runs()).collect();
                all.sort();
                for w in all.windows(2) {
                    prop_assert!(w[0].end() <= w[1].start, "overlap {:?}", w);
                }
            }
            for r in owned {
                a.free(r);
            }
            prop_assert_eq!(a.free_runs().collect::<Vec<_>>(), vec![Run { start: 10, len: 3000 }, Run { start: 5000, len: 1200 }]);
        }
    }
}
