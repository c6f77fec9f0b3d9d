//! Pins: references that keep pool blocks from being freed or reused while a
//! device (or anything holding their addresses) can still reach them.
//!
//! The table lives inside the file system's state, under its lock, because
//! every layout change consults it: whether the blocks it removes are pinned
//! decides between the truncate policies (SPEC §4.3) — fail, wait, defer
//! (the blocks go to the busy-extent list until the last pin drops) or revoke.
//! The pin table knows blocks and owners; it knows nothing of leases.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::alloc::Run;
use crate::{Errno, Result};

/// Most long-term pins at once, per file system (a named limit; `ENOSPC`
/// beyond it, as a device runs out of registration slots).
pub const MAX_PINS: usize = 1 << 20;

/// The truncate policy: what a layout change does to blocks a long-term pin
/// still reaches (SPEC §4.3). Chosen per file system; default `Defer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TruncatePolicy {
    /// Fail with `ETXTBSY` at once, changing nothing.
    Fail,
    /// Wait for the pins to drop, at most lease-break-time; then `ETXTBSY`.
    Wait,
    /// Complete at once; pinned blocks go to the busy-extent list.
    #[default]
    Defer,
    /// Wait up to lease-break-time, then revoke the pins and proceed.
    Revoke,
}

impl std::str::FromStr for TruncatePolicy {
    type Err = Errno;
    fn from_str(s: &str) -> Result<Self, Errno> {
        match s {
            "fail" => Ok(TruncatePolicy::Fail),
            "wait" => Ok(TruncatePolicy::Wait),
            "defer" => Ok(TruncatePolicy::Defer),
            "revoke" => Ok(TruncatePolicy::Revoke),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl fmt::Display for TruncatePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TruncatePolicy::Fail => "fail",
            TruncatePolicy::Wait => "wait",
            TruncatePolicy::Defer => "defer",
            TruncatePolicy::Revoke => "revoke",
        })
    }
}

/// Identity of a pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PinId(pub u64);

/// What entitles a long-term pin (SPEC §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PinVia {
    /// An unbreakable layout lease (`F_LAYOUT|F_EXCLUSIVE`) of the owner.
    ExclusiveLease,
    /// A `MAP_DIRECT` mapping covering the range.
    DirectMapping(u64),
    /// A device registration (SPEC §6.1), which took the pin for its device
    /// and lists it as its own.
    Registration(crate::fs::RegistrationId),
}

/// Stops a device from reaching pinned memory. Called at revocation; when it
/// returns, the device can no longer reach the blocks (SPEC §6.3).
/// `Err` when the device could not confirm: the pin then stays (its blocks
/// stay busy), since a device that may still reach them must not see them
/// reused.
pub type RevokeFn = Arc<dyn Fn() -> crate::Result<()> + Send + Sync>;

/// A pin as listed (SPEC §9, `/proc/<pid>/file_pins`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PinInfo {
    /// Its id.
    pub id: PinId,
    /// Who took it.
    pub owner: u64,
    /// The inode pinned.
    pub ino: u64,
    /// File byte range pinned.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The pool blocks it reaches, in file order.
    pub blocks: Vec<Run>,
    /// What entitled it.
    pub via: PinVia,
    /// Whether it has been revoked (the device can no longer reach it).
    pub revoked: bool,
}

pub(crate) struct PinEntry {
    pub info: PinInfo,
    pub revoke: Option<RevokeFn>,
}

/// The pins of one file, ordered by file offset.
#[derive(Default)]
struct FilePins {
    by_offset: BTreeSet<(u64, PinId)>,
    /// The longest pin the file has had (never shrinks): a pin overlapping
    /// `[start, end)` starts in `[start - longest, end)`.
    longest: u64,
}

/// How many pins reach each pool block, as disjoint runs of blocks that
/// share one (non-zero) count: run start → (length, count). Blocks no pin
/// reaches are absent. Two adjacent runs never have the same count (they
/// are merged), so the map has at most about two entries per live pin run
/// whatever the lengths — registration costs per run, not per block.
#[derive(Default)]
struct BlockCounts {
    runs: BTreeMap<u64, (u64, u32)>,
}

impl BlockCounts {
    /// Make `b` a run boundary: no run starts before `b` and ends after it.
    fn cut(&mut self, b: u64) {
        if let Some((&s, &(len, c))) = self.runs.range(..b).next_back() {
            if s + len > b {
                self.runs.insert(s, (b - s, c));
                self.runs.insert(b, (s + len - b, c));
            }
        }
    }

    /// Merge the run ending at `b` with the one starting there when their
    /// counts agree (keeps the no-equal-neighbours invariant after a change
    /// that ends at `b`; inside the changed range all counts moved together,
    /// so neighbours there stay distinct).
    fn merge(&mut self, b: u64) {
        let Some(&(len, c)) = self.runs.get(&b) else {
            return;
        };
        if let Some((&s, prev)) = self.runs.range_mut(..b).next_back() {
            if s + prev.0 == b && prev.1 == c {
                prev.0 += len;
                self.runs.remove(&b);
            }
        }
    }

    /// One more pin reaches `r`.
    fn add(&mut self, r: Run) {
        if r.len == 0 {
            return;
        }
        let (start, end) = (r.start, r.end());
        self.cut(start);
        self.cut(end);
        let mut gaps: Vec<Run> = Vec::new();
        let mut at = start;
        for (&b, v) in self.runs.range_mut(start..end) {
            if b > at {
                gaps.push(Run {
                    start: at,
                    len: b - at,
                });
            }
            v.1 += 1;
            at = b + v.0;
        }
        if at < end {
            gaps.push(Run {
                start: at,
                len: end - at,
            });
        }
        // A gap's neighbours inside the range now count at least 2.
        for g in gaps {
            self.runs.insert(g.start, (g.len, 1));
        }
        self.merge(start);
        self.merge(end);
    }

    /// One pin fewer reaches `r`; the blocks that no pin reaches any more
    /// are appended to `freed` (merged with its last run when adjacent).
    fn sub(&mut self, r: Run, freed: &mut Vec<Run>) {
        if r.len == 0 {
            return;
        }
        let (start, end) = (r.start, r.end());
        self.cut(start);
        self.cut(end);
        let mut zero: Vec<u64> = Vec::new();
        let mut at = start;
        for (&b, v) in self.runs.range_mut(start..end) {
            debug_assert_eq!(b, at, "pinned block counted");
            at = b + v.0;
            v.1 -= 1;
            if v.1 == 0 {
                zero.push(b);
                match freed.last_mut() {
                    Some(last) if last.end() == b => last.len += v.0,
                    _ => freed.push(Run { start: b, len: v.0 }),
                }
            }
        }
        debug_assert_eq!(at, end, "pinned block counted");
        for b in zero {
            self.runs.remove(&b);
        }
        self.merge(start);
        self.merge(end);
    }

    /// Split `run` into (pinned, unpinned) sub-runs, each in block order.
    fn split(&self, run: Run) -> (Vec<Run>, Vec<Run>) {
        let (mut pinned, mut free): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
        let (start, end) = (run.start, run.end());
        let before = self
            .runs
            .range(..start)
            .next_back()
            .filter(|(&s, &(len, _))| s + len > start);
        let mut at = start;
        for (&s, &(len, _)) in before.into_iter().chain(self.runs.range(start..end)) {
            let (from, to) = (s.max(start), (s + len).min(end));
            if from > at {
                free.push(Run {
                    start: at,
                    len: from - at,
                });
            }
            match pinned.last_mut() {
                Some(last) if last.end() == from => last.len += to - from,
                _ => pinned.push(Run {
                    start: from,
                    len: to - from,
                }),
            }
            at = to;
        }
        if at < end {
            free.push(Run {
                start: at,
                len: end - at,
            });
        }
        (pinned, free)
    }
}

/// Every long-term pin, and how many pins reach each block.
#[derive(Default)]
pub(crate) struct PinTable {
    pins: HashMap<PinId, PinEntry>,
    /// How many pins reach each block, kept by runs (a pin of a GiB is one
    /// entry, not 262,144).
    by_block: BlockCounts,
    /// inode → its pins by file offset, so a layout change looks only at
    /// the pins near its range (not at every pin of the file).
    by_ino: HashMap<u64, FilePins>,
    next: u64,
}

impl fmt::Debug for PinTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinTable")
            .field("pins", &self.pins.len())
            .finish()
    }
}

impl PinTable {
    pub fn insert(&mut self, mut info: PinInfo, revoke: Option<RevokeFn>) -> Result<PinId> {
        if self.pins.len() >= MAX_PINS {
            return Err(Errno::ENOSPC.into());
        }
        self.next += 1;
        info.id = PinId(self.next);
        for &r in &info.blocks {
            self.by_block.add(r);
        }
        tracing::debug!(target: "pinfs::pin", id = self.next, owner = info.owner, ino = info.ino, offset = info.offset, len = info.len, "pin");
        let id = info.id;
        let file = self.by_ino.entry(info.ino).or_default();
        file.by_offset.insert((info.offset, id));
        file.longest = file.longest.max(info.len);
        self.pins.insert(id, PinEntry { info, revoke });
        Ok(id)
    }

    /// Drop a pin; returns the blocks no pin reaches any more.
    pub fn remove(&mut self, id: PinId) -> Option<Vec<Run>> {
        let e = self.pins.remove(&id)?;
        if let Some(file) = self.by_ino.get_mut(&e.info.ino) {
            file.by_offset.remove(&(e.info.offset, id));
            if file.by_offset.is_empty() {
                self.by_ino.remove(&e.info.ino);
            }
        }
        tracing::debug!(target: "pinfs::pin", id = id.0, "unpin");
        let mut freed: Vec<Run> = Vec::new();
        for &r in &e.info.blocks {
            self.by_block.sub(r, &mut freed);
        }
        Some(freed)
    }

    /// Split `run` into (pinned, unpinned) sub-runs.
    pub fn split(&self, run: Run) -> (Vec<Run>, Vec<Run>) {
        self.by_block.split(run)
    }

    /// Pins of inode `ino` overlapping file bytes `[start, end)`.
    pub fn of_file_range(&self, ino: u64, start: u64, end: u64) -> Vec<PinId> {
        let Some(file) = self.by_ino.get(&ino) else {
            return Vec::new();
        };
        if start >= end {
            return Vec::new();
        }
        let from = (start.saturating_sub(file.longest), PinId(0));
        file.by_offset
            .range(from..(end, PinId(0)))
            .map(|&(_, id)| id)
            .filter(|id| {
                self.pins
                    .get(id)
                    .is_some_and(|e| e.info.offset < end && start < e.info.offset + e.info.len)
            })
            .collect()
    }

    pub fn get(&self, id: PinId) -> Option<&PinEntry> {
        self.pins.get(&id)
    }

    pub fn get_mut(&mut self, id: PinId) -> Option<&mut PinEntry> {
        self.pins.get_mut(&id)
    }

    pub fn list(&self) -> Vec<PinInfo> {
        let mut v: Vec<PinInfo> = self.pins.values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|p| p.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(blocks: Vec<Run>) -> PinInfo {
        PinInfo {
            id: PinId(0),
            owner: 1,
            ino: 5,
            offset: 0,
            len: 4096,
            blocks,
            via: PinVia::ExclusiveLease,
            revoked: false,
        }
    }

    #[test]
    fn counts_and_splits() {
        let mut t = PinTable::default();
        let a = t
            .insert(info(vec![Run { start: 10, len: 4 }]), None)
            .unwrap();
        let b = t
            .insert(info(vec![Run { start: 12, len: 4 }]), None)
            .unwrap();
        assert_eq!(
            t.split(Run { start: 8, len: 10 }),
            (
                vec![Run { start: 10, len: 6 }],
                vec![Run { start: 8, len: 2 }, Run { start: 16, len: 2 }]
            )
        );
        assert_eq!(
            t.remove(a).unwrap(),
            vec![Run { start: 10, len: 2 }],
            "12..14 still pinned by b"
        );
        assert_eq!(
            t.split(Run { start: 13, len: 1 }).0,
            vec![Run { start: 13, len: 1 }]
        );
        assert_eq!(t.of_file_range(5, 0, 4096), vec![b]);
        assert_eq!(t.of_file_range(6, 0, 4096), vec![]);
        assert_eq!(t.remove(b).unwrap(), vec![Run { start: 12, len: 4 }]);
        assert!(t.of_file_range(5, 0, u64::MAX).is_empty());
        assert!(t.split(Run { start: 0, len: 100 }).0.is_empty());
        assert_eq!(
            "revoke".parse::<TruncatePolicy>(),
            Ok(TruncatePolicy::Revoke)
        );
    }

    /// The pins overlapping a range, found by offset: a long pin that
    /// starts well before the range still counts; pins wholly before or
    /// after it do not; a brute-force scan agrees on every range.
    #[test]
    fn file_range_queries_match_a_scan() {
        let mut t = PinTable::default();
        let mut all = Vec::new();
        for (i, (offset, len)) in [
            (0u64, 4096u64),
            (8192, 1 << 20),
            (40960, 4096),
            (1 << 21, 4096),
        ]
        .into_iter()
        .enumerate()
        {
            let mut p = info(vec![Run {
                start: 100 + i as u64,
                len: 1,
            }]);
            p.offset = offset;
            p.len = len;
            all.push((t.insert(p, None).unwrap(), offset, len));
        }
        for start in (0..(3 << 20)).step_by(4096 * 7) {
            for len in [1u64, 4096, 1 << 20] {
                let end = start + len;
                let mut got = t.of_file_range(5, start, end);
                got.sort();
                let want: Vec<PinId> = all
                    .iter()
                    .filter(|&&(_, o, l)| o < end && start < o + l)
                    .map(|&(id, _, _)| id)
                    .collect();
                assert_eq!(got, want, "[{start}, {end})");
            }
        }
    }

    /// The per-block model the run-based counts replace: block → count.
    #[derive(Default)]
    struct Model(BTreeMap<u64, u32>);

    impl Model {
        fn add(&mut self, r: Run) {
            for b in r.start..r.end() {
                *self.0.entry(b).or_default() += 1;
            }
        }
        fn sub(&mut self, r: Run, freed: &mut Vec<Run>) {
            for b in r.start..r.end() {
                let c = self.0.get_mut(&b).expect("counted");
                *c -= 1;
                if *c == 0 {
                    self.0.remove(&b);
                    match freed.last_mut() {
                        Some(last) if last.end() == b => last.len += 1,
                        _ => freed.push(Run { start: b, len: 1 }),
                    }
                }
            }
        }
        fn split(&self, run: Run) -> (Vec<Run>, Vec<Run>) {
            let (mut pinned, mut free): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
            for b in run.start..run.end() {
                let v = if self.0.contains_key(&b) {
                    &mut pinned
                } else {
                    &mut free
                };
                match v.last_mut() {
                    Some(last) if last.end() == b => last.len += 1,
                    _ => v.push(Run { start: b, len: 1 }),
                }
            }
            (pinned, free)
        }
    }

    /// The runs' counts, expanded per block, and whether the invariants
    /// hold (disjoint, non-empty, non-zero, no equal adjacent counts).
    fn expand(c: &BlockCounts) -> (BTreeMap<u64, u32>, bool) {
        let mut out = BTreeMap::new();
        let mut ok = true;
        let mut prev: Option<(u64, u32)> = None;
        for (&s, &(len, n)) in &c.runs {
            ok &= len > 0 && n > 0;
            if let Some((end, pn)) = prev {
                ok &= end <= s && !(end == s && pn == n);
            }
            prev = Some((s + len, n));
            for b in s..s + len {
                out.insert(b, n);
            }
        }
        (out, ok)
    }

    fn small_run() -> impl Strategy<Value = Run> {
        (0u64..64, 1u64..24).prop_map(|(start, len)| Run { start, len })
    }

    proptest! {
        /// Run-based counts agree with a per-block model after every insert
        /// and remove of multi-run pins: counts, freed runs (exact, in
        /// order), and `split` of arbitrary runs; the map stays merged.
        #[test]
        fn run_counts_match_per_block_model(
            ops in proptest::collection::vec(
                (proptest::collection::vec(small_run(), 1..4), any::<bool>(), any::<u16>(), small_run()),
                1..60,
            )
        ) {
            let mut t = PinTable::default();
            let mut model = Model::default();
            let mut live: Vec<(PinId, Vec<Run>)> = Vec::new();
            for (blocks, drop_one, pick, probe) in ops {
                if drop_one && !live.is_empty() {
                    let (id, runs) = live.swap_remove(pick as usize % live.len());
                    let mut want = Vec::new();
                    for &r in &runs {
                        model.sub(r, &mut want);
                    }
                    prop_assert_eq!(t.remove(id).unwrap(), want);
                } else {
                    for &r in &blocks {
                        model.add(r);
                    }
                    live.push((t.insert(info(blocks.clone()), None).unwrap(), blocks));
                }
                let (got, merged) = expand(&t.by_block);
                prop_assert!(merged, "runs disjoint, non-zero and merged");
                prop_assert_eq!(&got, &model.0);
                prop_assert_eq!(t.split(probe), model.split(probe));
                prop_assert_eq!(t.split(Run { start: 0, len: 100 }), model.split(Run { start: 0, len: 100 }));
            }
        }
    }

    /// A pin of a GiB costs one entry, not one per block; a second pin
    /// inside it splits the run into three, and dropping it merges them.
    #[test]
    fn a_long_pin_is_one_entry() {
        let mut t = PinTable::default();
        let gib = Run {
            start: 1000,
            len: 1 << 18,
        };
        let a = t.insert(info(vec![gib]), None).unwrap();
        assert_eq!(t.by_block.runs.len(), 1);
        let b = t
            .insert(
                info(vec![Run {
                    start: 5000,
                    len: 10,
                }]),
                None,
            )
            .unwrap();
        assert_eq!(t.by_block.runs.len(), 3);
        assert_eq!(t.remove(b).unwrap(), vec![]);
        assert_eq!(t.by_block.runs.len(), 1);
        assert_eq!(t.remove(a).unwrap(), vec![gib]);
        assert!(t.by_block.runs.is_empty());
    }
}
