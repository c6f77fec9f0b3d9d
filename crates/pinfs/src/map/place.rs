//! What is placed at each page of a mapping, as runs.
//!
//! The file system decides what every page of a mapping *should* show
//! (a [`Kind`] per page, computed from the layout); this records what each
//! page *does* show, so that re-placing a range after a layout change only
//! touches the pages whose kind changed, and so that the fault service
//! knows what to copy into a page it serves.

use std::collections::BTreeMap;

/// What one page of a mapping shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Pool block `block` (a run: page `i` of it shows block `block + i`).
    Pool {
        /// First pool block.
        block: u64,
    },
    /// Anonymous memory registered with the fault service: reads are
    /// answered with zeros (`copy_of: None`: a hole or unwritten block) or
    /// with a write-protected copy of pool block `copy_of` (a shared block,
    /// never changed in place); writes ask the file system for a block.
    Served {
        /// First pool block copied on read (a run, as for `Pool`).
        copy_of: Option<u64>,
    },
    /// Anonymous zero-fill memory (holes of private and read-only mappings).
    Zero,
    /// The empty-memfd mapping: every access raises `SIGBUS`.
    Sigbus,
    /// Inaccessible: nothing placed yet, or torn down.
    Nothing,
}

impl Kind {
    /// The kind `pages` pages further into a run of this kind.
    pub(crate) fn advance(self, pages: u64) -> Kind {
        match self {
            Kind::Pool { block } => Kind::Pool {
                block: block + pages,
            },
            Kind::Served {
                copy_of: Some(block),
            } => Kind::Served {
                copy_of: Some(block + pages),
            },
            other => other,
        }
    }
}

/// Runs of pages `0..pages` of one mapping and what they show.
#[derive(Clone, Debug)]
pub(crate) struct Runs {
    /// First page → (pages, kind); the runs tile `0..pages`.
    map: BTreeMap<u64, (u64, Kind)>,
    pages: u64,
}

impl Runs {
    /// `pages` pages showing `kind`.
    pub(crate) fn new(pages: u64, kind: Kind) -> Self {
        let mut map = BTreeMap::new();
        if pages > 0 {
            map.insert(0, (pages, kind));
        }
        Runs { map, pages }
    }

    /// What page `page` shows.
    pub(crate) fn kind_at(&self, page: u64) -> Option<Kind> {
        let (&s, &(n, k)) = self.map.range(..=page).next_back()?;
        (page < s + n).then(|| k.advance(page - s))
    }

    /// The pieces of `start..end` (clipped to the mapping): (first page,
    /// pages, kind at the first page).
    pub(crate) fn pieces(&self, start: u64, end: u64) -> Vec<(u64, u64, Kind)> {
        let end = end.min(self.pages);
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let first = self
            .map
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        for (&s, &(n, k)) in self.map.range(first..end) {
            let from = s.max(start);
            let to = (s + n).min(end);
            if from < to {
                out.push((from, to - from, k.advance(from - s)));
            }
        }
        out
    }

    /// The sub-runs of `start..start+pages` (clipped to the mapping) whose
    /// pages do not show what a run of `kind` starting at `start` would
    /// show: (first page, pages), merged, in order. Placing just these keeps
    /// re-placement proportional to what changed.
    pub(crate) fn dirty(&self, start: u64, pages: u64, kind: Kind) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, n, have) in self.pieces(start, start + pages) {
            if have == kind.advance(s - start) {
                continue;
            }
            match out.last_mut() {
                Some((ds, dn)) if *ds + *dn == s => *dn += n,
                _ => out.push((s, n)),
            }
        }
        out
    }

    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(n, k))) = self.map.range(..at).next_back() {
            if at < s + n {
                self.map.insert(s, (at - s, k));
                self.map.insert(at, (s + n - at, k.advance(at - s)));
            }
        }
    }

    /// Record that `start..start+pages` now shows `kind` (a run).
    pub(crate) fn set(&mut self, start: u64, pages: u64, kind: Kind) {
        let end = (start + pages).min(self.pages);
        if start >= end {
            return;
        }
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.map.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            self.map.remove(&s);
        }
        let (mut s, mut n, mut k) = (start, end - start, kind);
        // Merge with neighbours that continue the run, to keep the map small.
        if let Some((&ps, &(pn, pk))) = self.map.range(..s).next_back() {
            if ps + pn == s && pk.advance(pn) == k {
                self.map.remove(&ps);
                (s, n, k) = (ps, pn + n, pk);
            }
        }
        if let Some(&(nn, nk)) = self.map.get(&(s + n)) {
            if k.advance(n) == nk {
                self.map.remove(&(s + n));
                n += nn;
            }
        }
        self.map.insert(s, (n, k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_splits_merges_and_advances() {
        let mut r = Runs::new(10, Kind::Nothing);
        r.set(2, 3, Kind::Pool { block: 100 });
        r.set(5, 2, Kind::Pool { block: 103 });
        assert_eq!(
            r.pieces(0, 10),
            vec![
                (0, 2, Kind::Nothing),
                (2, 5, Kind::Pool { block: 100 }),
                (7, 3, Kind::Nothing)
            ]
        );
        assert_eq!(r.kind_at(4), Some(Kind::Pool { block: 102 }));
        r.set(3, 1, Kind::Sigbus);
        assert_eq!(
            r.pieces(2, 6),
            vec![
                (2, 1, Kind::Pool { block: 100 }),
                (3, 1, Kind::Sigbus),
                (4, 2, Kind::Pool { block: 102 })
            ]
        );
        assert_eq!(r.kind_at(10), None);
        r.set(0, 10, Kind::Served { copy_of: None });
        assert_eq!(
            r.pieces(0, 100),
            vec![(0, 10, Kind::Served { copy_of: None })]
        );
        r.set(8, 5, Kind::Zero);
        assert_eq!(r.pieces(7, 100).len(), 2);
        // Only the pages that differ are dirty, merged into runs.
        let mut r = Runs::new(10, Kind::Nothing);
        r.set(2, 2, Kind::Pool { block: 7 });
        r.set(5, 1, Kind::Pool { block: 10 });
        assert_eq!(
            r.dirty(0, 10, Kind::Pool { block: 5 }),
            vec![(0, 2), (4, 1), (6, 4)]
        );
        assert_eq!(r.dirty(2, 2, Kind::Pool { block: 7 }), vec![]);
        assert_eq!(r.dirty(8, 5, Kind::Nothing), vec![]);
    }
}
