//! Reference counts by extent: the shared runs (format version 2).
//!
//! A block one extent maps has reference count 1 because that extent maps
//! it; a block no extent maps is free (or busy). Only blocks shared by
//! reflink have a count worth storing, and they are kept as maximal runs of
//! equal count — in memory in [`SharedRuns`], on media in the shared-run
//! table (`format::SharedHeader` + `format::SharedRun` entries), journaled
//! with the operation that changes them. Most pools have no shared blocks
//! at all, so a truncate of an unshared file journals its inode's extent
//! change only, and mount reads one header.

use std::collections::BTreeMap;

use zerocopy::{FromBytes, IntoBytes};

use crate::format::*;
use crate::{Error, Result};

/// The shared runs: start → (len, count), sorted, disjoint, maximal, every
/// count ≥ 2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SharedRuns {
    runs: BTreeMap<u64, (u64, u32)>,
}

impl SharedRuns {
    /// Runs in the table.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// The reference count of `block` when it is shared.
    pub fn count(&self, block: u64) -> Option<u32> {
        self.runs
            .range(..=block)
            .next_back()
            .filter(|(&s, &(l, _))| s + l > block)
            .map(|(_, &(_, c))| c)
    }

    /// Whether any block of `start..start+len` is shared.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        self.first_from(start)
            .is_some_and(|(s, _, _)| s < start.saturating_add(len))
    }

    /// The first shared run ending after `block`, clipped to start at it:
    /// (start, len, count).
    pub fn first_from(&self, block: u64) -> Option<(u64, u64, u32)> {
        if let Some((&s, &(l, c))) = self.runs.range(..=block).next_back() {
            if s + l > block {
                return Some((block, s + l - block, c));
            }
        }
        self.runs
            .range(block.saturating_add(1)..)
            .next()
            .map(|(&s, &(l, c))| (s, l, c))
    }

    /// The runs in block order: (start, len, count).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.runs.iter().map(|(&s, &(l, c))| (s, l, c))
    }

    /// Give every block of `start..start+len` the count `count` (0 or 1:
    /// not shared any more), keeping the runs maximal.
    pub fn set(&mut self, start: u64, len: u64, count: u32) {
        if len == 0 {
            return;
        }
        let end = start + len;
        // Cut out what overlaps start..end, keeping the parts outside it.
        let cut: Vec<(u64, (u64, u32))> = self
            .runs
            .range(..end)
            .rev()
            .take_while(|(&s, &(l, _))| s + l > start)
            .map(|(&s, &v)| (s, v))
            .collect();
        for (s, (l, c)) in cut {
            self.runs.remove(&s);
            if s < start {
                self.runs.insert(s, (start - s, c));
            }
            if s + l > end {
                self.runs.insert(end, (s + l - end, c));
            }
        }
        if count < 2 {
            return;
        }
        let (mut s, mut l) = (start, len);
        if let Some((&ps, &(pl, pc))) = self.runs.range(..start).next_back() {
            if ps + pl == start && pc == count {
                self.runs.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&(nl, nc)) = self.runs.get(&end) {
            if nc == count {
                self.runs.remove(&end);
                l += nl;
            }
        }
        self.runs.insert(s, (l, count));
    }

    /// The table as it is stored: header, then the entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = Vec::with_capacity(self.runs.len() * SHARED_RUN_SIZE as usize);
        for (s, l, c) in self.iter() {
            let r = SharedRun {
                start: s.into(),
                // `set` never builds a run longer than an extent (< 2^32).
                len: (l as u32).into(),
                count: c.into(),
            };
            entries.extend_from_slice(r.as_bytes());
        }
        let mut h = SharedHeader {
            magic: SHARED_MAGIC.into(),
            count: (self.runs.len() as u32).into(),
            ..Default::default()
        };
        h.crc = shared_table_crc(&h, &entries).into();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&entries);
        out
    }

    /// Read the table of `sb`'s pool: every entry range-checked, the runs
    /// sorted, disjoint and maximal, the CRC right — else `Error::Corrupt`
    /// naming the shared-run table.
    pub fn load(media: &dyn crate::media::Media, sb: &Superblock) -> Result<Self> {
        let bad = |what: String| Error::corrupt(format!("shared-run table: {what}"));
        let mut raw = vec![0u8; SHARED_RUN_SIZE as usize];
        media.read(sb.shared_offset(), &mut raw)?;
        let h: SharedHeader = decode(&raw, "shared-run table header")?;
        if h.magic.get() != SHARED_MAGIC || h.pad.get() != 0 {
            return Err(bad("bad magic".into()));
        }
        let n = u64::from(h.count.get());
        if n > sb.shared_capacity() {
            return Err(bad(format!(
                "{n} runs, more than its {} entries",
                sb.shared_capacity()
            )));
        }
        let mut entries = vec![0u8; (n * SHARED_RUN_SIZE) as usize];
        media.read(sb.shared_offset() + SHARED_RUN_SIZE, &mut entries)?;
        if h.crc.get() != shared_table_crc(&h, &entries) {
            return Err(bad("checksum mismatch".into()));
        }
        let mut runs = BTreeMap::new();
        let mut prev: Option<(u64, u32)> = None;
        for (i, chunk) in entries.chunks_exact(SHARED_RUN_SIZE as usize).enumerate() {
            let r = SharedRun::read_from_bytes(chunk).map_err(|_| bad("short entry".into()))?;
            let (s, l, c) = (r.start.get(), u64::from(r.len.get()), r.count.get());
            if l == 0 || !sb.is_data_range(s, l) || !(2..=MAX_BLOCK_REFS).contains(&c) {
                return Err(bad(format!("run {i} ({s}+{l}, count {c}) invalid")));
            }
            if let Some((pend, pc)) = prev {
                if s < pend || (s == pend && c == pc) {
                    return Err(bad(format!("run {i} ({s}+{l}) out of order")));
                }
            }
            prev = Some((s + l, c));
            runs.insert(s, (l, c));
        }
        Ok(SharedRuns { runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_runs_maximal() {
        let mut s = SharedRuns::default();
        s.set(10, 5, 2);
        s.set(15, 5, 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 10, 2)]);
        s.set(12, 2, 3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![(10, 2, 2), (12, 2, 3), (14, 6, 2)]
        );
        s.set(12, 2, 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 10, 2)]);
        s.set(11, 3, 1);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 1, 2), (14, 6, 2)]);
        assert_eq!(s.count(10), Some(2));
        assert_eq!(s.count(11), None);
        assert!(s.overlaps(12, 3));
        assert!(!s.overlaps(11, 3));
        assert_eq!(s.first_from(11), Some((14, 6, 2)));
        assert_eq!(s.first_from(15), Some((15, 5, 2)));
        assert_eq!(s.first_from(20), None);
    }
}
