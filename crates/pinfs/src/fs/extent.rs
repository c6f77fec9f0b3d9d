//! A file's block map in memory: file block → pool block runs.
//!
//! This is the *layout* of SPEC §2 minus sharing (which lives in the
//! reference counts): every layout change of a file is a sequence of the
//! operations here — map, unmap, convert, shift. The on-media form (inline
//! records, index and leaf blocks) is produced from it by `inode.rs`.

use std::collections::BTreeMap;

/// One mapped run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First pool block.
    pub physical: u64,
    /// Length in blocks.
    pub len: u64,
    /// Allocated but unwritten: reads as zeros.
    pub unwritten: bool,
}

/// A piece of a file range: a hole or part of an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// No blocks: reads as zeros.
    Hole {
        /// First file block.
        logical: u64,
        /// Blocks.
        len: u64,
    },
    /// Mapped blocks.
    Mapped {
        /// First file block.
        logical: u64,
        /// First pool block.
        physical: u64,
        /// Blocks.
        len: u64,
        /// Unwritten.
        unwritten: bool,
    },
}

impl Segment {
    /// First file block.
    pub fn logical(&self) -> u64 {
        match *self {
            Segment::Hole { logical, .. } | Segment::Mapped { logical, .. } => logical,
        }
    }
    /// Length in blocks.
    pub fn len(&self) -> u64 {
        match *self {
            Segment::Hole { len, .. } | Segment::Mapped { len, .. } => len,
        }
    }
    /// Never true: segments have at least one block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The block map of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentMap {
    map: BTreeMap<u64, Extent>,
}

impl ExtentMap {
    /// An empty map (a file of holes).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file has no blocks.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Extents in file order: (first file block, extent).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Extent)> + '_ {
        self.map.iter().map(|(&l, &e)| (l, e))
    }

    /// Blocks mapped (written or unwritten).
    pub fn mapped_blocks(&self) -> u64 {
        self.map.values().map(|e| e.len).sum()
    }

    /// The extent containing file block `logical`, with its first file block.
    pub fn lookup(&self, logical: u64) -> Option<(u64, Extent)> {
        let (&l, &e) = self.map.range(..=logical).next_back()?;
        (l + e.len > logical).then_some((l, e))
    }

    /// The pool block right after the one mapping file block `logical - 1`:
    /// where a block for `logical` should go to keep the file contiguous.
    pub fn goal(&self, logical: u64) -> Option<u64> {
        let prev = logical.checked_sub(1)?;
        self.lookup(prev).map(|(l, e)| e.physical + (logical - l))
    }

    /// The end (one past the last block) of the last extent, 0 if none.
    pub fn end(&self) -> u64 {
        self.map.iter().next_back().map_or(0, |(&l, e)| l + e.len)
    }

    /// Cut `start..end` into holes and mapped pieces, in order.
    pub fn segments(&self, start: u64, end: u64) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut at = start;
        let first = self.lookup(start).map_or(start, |(l, _)| l);
        for (&l, &e) in self.map.range(first..end) {
            let from = l.max(start);
            let to = (l + e.len).min(end);
            if from >= to {
                continue;
            }
            if at < from {
                out.push(Segment::Hole {
                    logical: at,
                    len: from - at,
                });
            }
            out.push(Segment::Mapped {
                logical: from,
                physical: e.physical + (from - l),
                len: to - from,
                unwritten: e.unwritten,
            });
            at = to;
        }
        if at < end {
            out.push(Segment::Hole {
                logical: at,
                len: end - at,
            });
        }
        out
    }

    /// Split the extent containing `at` so that an extent starts at `at`.
    fn split_at(&mut self, at: u64) {
        if let Some((l, e)) = self.lookup(at) {
            if l < at {
                let head = at - l;
                self.map.insert(l, Extent { len: head, ..e });
                self.map.insert(
                    at,
                    Extent {
                        physical: e.physical + head,
                        len: e.len - head,
                        unwritten: e.unwritten,
                    },
                );
            }
        }
    }

    /// Unmap `start..end`; returns the removed pieces (file block, extent).
    pub fn unmap(&mut self, start: u64, end: u64) -> Vec<(u64, Extent)> {
        if start >= end {
            return Vec::new();
        }
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.map.range(start..end).map(|(&l, _)| l).collect();
        keys.into_iter()
            .map(|l| (l, self.map.remove(&l).expect("key just listed")))
            .collect()
    }

    /// Map `ext` at file block `logical`; the range must be a hole.
    /// Merges with contiguous neighbours of the same state.
    pub fn map(&mut self, logical: u64, ext: Extent) {
        debug_assert!(ext.len > 0);
        debug_assert!(
            self.segments(logical, logical + ext.len)
                .iter()
                .all(|s| matches!(s, Segment::Hole { .. })),
            "mapping over mapped blocks"
        );
        let mut logical = logical;
        let mut ext = ext;
        if let Some((&pl, &pe)) = self.map.range(..logical).next_back() {
            if pl + pe.len == logical
                && pe.physical + pe.len == ext.physical
                && pe.unwritten == ext.unwritten
            {
                self.map.remove(&pl);
                logical = pl;
                ext = Extent {
                    physical: pe.physical,
                    len: pe.len + ext.len,
                    ..ext
                };
            }
        }
        let next = logical + ext.len;
        if let Some(&ne) = self.map.get(&next) {
            if ext.physical + ext.len == ne.physical && ne.unwritten == ext.unwritten {
                self.map.remove(&next);
                ext.len += ne.len;
            }
        }
        self.map.insert(logical, ext);
    }

    /// Mark `start..end` written (must be wholly mapped).
    pub fn set_written(&mut self, start: u64, end: u64) {
        for (l, e) in self.unmap(start, end) {
            self.map(
                l,
                Extent {
                    unwritten: false,
                    ..e
                },
            );
        }
    }

    /// Move every extent at or after `from` by `delta` blocks (collapse:
    /// negative, the range `from+delta..from` must be a hole; insert:
    /// positive). An extent straddling `from` is split first.
    pub fn shift(&mut self, from: u64, delta: i64) {
        self.split_at(from);
        let moved: Vec<(u64, Extent)> = self.map.range(from..).map(|(&l, &e)| (l, e)).collect();
        for (l, _) in &moved {
            self.map.remove(l);
        }
        for (l, e) in moved {
            let nl = l.checked_add_signed(delta).expect("shift stays in range");
            self.map(nl, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(physical: u64, len: u64) -> Extent {
        Extent {
            physical,
            len,
            unwritten: false,
        }
    }

    #[test]
    fn map_merges_and_unmap_splits() {
        let mut m = ExtentMap::new();
        m.map(0, ext(100, 4));
        m.map(4, ext(104, 4));
        assert_eq!(m.len(), 1);
        let removed = m.unmap(2, 5);
        assert_eq!(removed, vec![(2, ext(102, 3))]);
        assert_eq!(
            m.segments(0, 10),
            vec![
                Segment::Mapped {
                    logical: 0,
                    physical: 100,
                    len: 2,
                    unwritten: false
                },
                Segment::Hole { logical: 2, len: 3 },
                Segment::Mapped {
                    logical: 5,
                    physical: 105,
                    len: 3,
                    unwritten: false
                },
                Segment::Hole { logical: 8, len: 2 },
            ]
        );
    }

    #[test]
    fn written_conversion_splits_unwritten() {
        let mut m = ExtentMap::new();
        m.map(
            0,
            Extent {
                physical: 10,
                len: 10,
                unwritten: true,
            },
        );
        m.set_written(3, 5);
        let s: Vec<_> = m.iter().map(|(l, e)| (l, e.len, e.unwritten)).collect();
        assert_eq!(s, vec![(0, 3, true), (3, 2, false), (5, 5, true)]);
        m.set_written(0, 10);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn shift_for_collapse_and_insert() {
        let mut m = ExtentMap::new();
        m.map(0, ext(50, 10));
        m.shift(4, 3); // insert 3 blocks at 4
        assert_eq!(m.segments(4, 7), vec![Segment::Hole { logical: 4, len: 3 }]);
        assert_eq!(m.lookup(7), Some((7, ext(54, 6))));
        assert_eq!(
            m.goal(8),
            Some(55),
            "right after the block mapping file block 7 (54)"
        );
        assert_eq!(m.goal(0), None);
        m.shift(7, -3); // collapse them again
        assert_eq!(m.len(), 1);
        assert_eq!(m.lookup(0), Some((0, ext(50, 10))));
    }
}
