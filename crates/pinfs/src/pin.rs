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
pub struct PinId(pub u64);

/// What entitles a long-term pin (SPEC §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Every long-term pin, and how many pins reach each block.
#[derive(Default)]
pub(crate) struct PinTable {
    pins: HashMap<PinId, PinEntry>,
    /// block → number of pins reaching it.
    by_block: BTreeMap<u64, u32>,
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
        for r in &info.blocks {
            for b in r.start..r.end() {
                *self.by_block.entry(b).or_default() += 1;
            }
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
        for r in &e.info.blocks {
            for b in r.start..r.end() {
                let c = self.by_block.get_mut(&b).expect("pinned block counted");
                *c -= 1;
                if *c == 0 {
                    self.by_block.remove(&b);
                    match freed.last_mut() {
                        Some(last) if last.end() == b => last.len += 1,
                        _ => freed.push(Run { start: b, len: 1 }),
                    }
                }
            }
        }
        Some(freed)
    }

    /// Split `run` into (pinned, unpinned) sub-runs.
    pub fn split(&self, run: Run) -> (Vec<Run>, Vec<Run>) {
        let (mut pinned, mut free) = (Vec::new(), Vec::new());
        let mut at = run.start;
        for (&b, _) in self.by_block.range(run.start..run.end()) {
            if b > at {
                free.push(Run {
                    start: at,
                    len: b - at,
                });
            }
            match pinned.last_mut() {
                Some(Run { start, len }) if *start + *len == b => *len += 1,
                _ => pinned.push(Run { start: b, len: 1 }),
            }
            at = b + 1;
        }
        if at < run.end() {
            free.push(Run {
                start: at,
                len: run.end() - at,
            });
        }
        (pinned, free)
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
}
