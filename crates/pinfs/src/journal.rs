//! The metadata journal: how every metadata operation becomes atomic and
//! durable.
//!
//! A metadata operation builds a [`Transaction`]: the new bytes of every
//! metadata structure it changes (inode slots, extent blocks, directory slots,
//! the shared-run table, the state block), plus the data ranges that must be
//! durable before the metadata may point at them (freshly written blocks).
//! [`Journal::commit`] then runs a byte-granular redo protocol:
//!
//! 1. flush the data ranges; write the records (only the bytes that differ
//!    from what the pool holds) to the record area; flush; **fence**;
//! 2. write the header (sequence, length, CRC of the records, CRC of the
//!    header) in one cache line; flush; **fence** — the commit point;
//! 3. apply the records in place; flush; **fence**;
//! 4. store `applied_seq = seq` with one atomic 8-byte store; flush; **fence**.
//!
//! On mount, [`Journal::recover`] replays the committed transaction when
//! `applied_seq != seq` (replay is idempotent). A header whose CRC fails was
//! torn during step 2, before anything was written in place, and the previous
//! transaction had been applied (step 4 is fenced before the next step 1), so
//! it is discarded. `docs/format.md` has the case-by-case crash analysis.
//!
//! A commit that fails says on which side of the commit point it failed
//! ([`CommitError`]): before it, the pool will not replay the transaction and
//! the caller rolls back; from the header write on, the pool may (or will)
//! replay it, so the caller must treat the transaction as done and stop
//! committing (the file system goes read-only), because the journal's record
//! area can no longer be reused safely.

use std::collections::BTreeMap;

use zerocopy::{FromBytes, IntoBytes};

use crate::format::{self, JournalHeader, RecordHeader, BLOCK_SIZE, JOURNAL_APPLIED_OFFSET};
use crate::media::Media;
use crate::{Errno, Error, Result};

/// Bytes of a record header in the record area.
const RECORD_HEADER: u64 = size_of::<RecordHeader>() as u64;

/// Runs of unchanged bytes at least this long split a record in two (a
/// record header costs 16 bytes; smaller gaps are cheaper to rewrite).
const DIFF_GAP: usize = 32;

/// The bytes one metadata operation changes, gathered before commit.
#[derive(Default, Debug)]
pub struct Transaction {
    /// Pool offset → new bytes; entries never overlap (later writes merge).
    writes: BTreeMap<u64, Vec<u8>>,
    /// Data ranges that must be durable before the commit point.
    data: Vec<(u64, u64)>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stage `bytes` to be written at pool offset `offset`.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = offset + bytes.len() as u64;
        // Merge with every staged write this one overlaps or touches.
        let mut start = offset;
        let mut stop = end;
        let overlapping: Vec<u64> = self
            .writes
            .range(..=end)
            .rev()
            .take_while(|(&o, v)| o + v.len() as u64 >= offset)
            .map(|(&o, _)| o)
            .collect();
        if overlapping.is_empty() {
            self.writes.insert(offset, bytes.to_vec());
            return;
        }
        for &o in &overlapping {
            let len = self.writes[&o].len() as u64;
            start = start.min(o);
            stop = stop.max(o + len);
        }
        let mut merged = vec![0u8; (stop - start) as usize];
        for o in overlapping {
            if let Some(old) = self.writes.remove(&o) {
                let at = (o - start) as usize;
                merged[at..at + old.len()].copy_from_slice(&old);
            }
        }
        let at = (offset - start) as usize;
        merged[at..at + bytes.len()].copy_from_slice(bytes);
        self.writes.insert(start, merged);
    }

    /// Stage a structure.
    pub fn write_struct<T: IntoBytes + zerocopy::Immutable>(&mut self, offset: u64, value: &T) {
        self.write(offset, value.as_bytes());
    }

    /// Require `offset..offset+len` (file data) to be durable before commit.
    pub fn data_written(&mut self, offset: u64, len: u64) {
        if len > 0 {
            self.data.push((offset, len));
        }
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.data.is_empty()
    }

    /// The staged bytes that would land at `offset..offset+buf.len()`, over
    /// what the media holds (read-your-writes for multi-step operations).
    pub fn read_through(&self, media: &dyn Media, offset: u64, buf: &mut [u8]) -> Result<()> {
        media.read(offset, buf)?;
        let end = offset + buf.len() as u64;
        for (&o, bytes) in self.writes.range(..end) {
            let wend = o + bytes.len() as u64;
            if wend <= offset {
                continue;
            }
            let from = offset.max(o);
            let to = end.min(wend);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - o) as usize..(to - o) as usize]);
        }
        Ok(())
    }
}

/// Why [`Journal::commit`] failed, relative to the commit point.
#[derive(Debug)]
pub enum CommitError {
    /// Failed before the header was written: the pool will not replay the
    /// transaction; nothing of it is visible after a crash. Roll back.
    NotCommitted(Error),
    /// Failed once the header had been written: the next mount will (or, if
    /// the header write never reached the media, may) replay the
    /// transaction. The caller must act as if it committed, and commit
    /// nothing more.
    Committed(Error),
}

impl CommitError {
    /// The underlying error.
    pub fn into_error(self) -> Error {
        match self {
            CommitError::NotCommitted(e) | CommitError::Committed(e) => e,
        }
    }
}

/// Statistics of the journal, for `stat` and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct JournalStats {
    /// Transactions committed since mount.
    pub commits: u64,
    /// Record bytes written since mount.
    pub record_bytes: u64,
}

/// The journal of one mounted file system.
#[derive(Debug)]
pub struct Journal {
    /// Pool offset of the header block.
    header_offset: u64,
    /// Pool offset of the record area.
    area_offset: u64,
    /// Bytes of the record area.
    area_bytes: u64,
    /// Sequence of the last committed transaction.
    seq: u64,
    stats: JournalStats,
    /// Scratch buffer for the serialized records (kept to avoid reallocating).
    scratch: Vec<u8>,
}

/// What recovery found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The last transaction had been applied.
    Clean,
    /// The committed transaction was replayed.
    Replayed {
        /// Its sequence number.
        seq: u64,
        /// Its record bytes.
        bytes: u64,
    },
    /// A torn header (crash during commit) was discarded.
    TornHeaderDiscarded,
}

impl Journal {
    /// Write an empty journal (mkfs).
    pub fn format(media: &dyn Media, start_block: u64) -> Result<()> {
        let mut h = JournalHeader::default();
        h.seal();
        let off = start_block * BLOCK_SIZE;
        media.fill(off, BLOCK_SIZE, 0)?;
        media.write(off, h.as_bytes())?;
        media.flush(off, BLOCK_SIZE)?;
        Ok(())
    }

    /// Open the journal and bring the pool to the last committed state.
    pub fn recover(media: &dyn Media, start_block: u64, blocks: u64) -> Result<(Self, Recovery)> {
        let header_offset = start_block * BLOCK_SIZE;
        let mut j = Journal {
            header_offset,
            area_offset: header_offset + BLOCK_SIZE,
            area_bytes: (blocks - 1) * BLOCK_SIZE,
            seq: 0,
            stats: JournalStats::default(),
            scratch: Vec::new(),
        };
        let mut raw = [0u8; size_of::<JournalHeader>()];
        media.read(header_offset, &mut raw)?;
        let h: JournalHeader = format::decode(&raw, "journal header")?;
        let applied = h.applied_seq.get();
        if !h.is_sealed() {
            // Torn during step 2. Everything before it was applied (step 4 of
            // the previous transaction is fenced before step 1 of the next).
            if h.magic.get() != format::JOURNAL_MAGIC && h.seq.get() == 0 && applied == 0 {
                return Err(Error::corrupt("journal header: bad magic"));
            }
            if applied == u64::MAX {
                return Err(Error::corrupt("journal: sequence number exhausted"));
            }
            j.seq = applied;
            j.rewrite_header(media, applied)?;
            return Ok((j, Recovery::TornHeaderDiscarded));
        }
        if h.magic.get() != format::JOURNAL_MAGIC {
            return Err(Error::corrupt("journal header: bad magic"));
        }
        j.seq = h.seq.get();
        if j.seq == u64::MAX || applied > j.seq {
            return Err(Error::corrupt("journal: sequence numbers out of order"));
        }
        if applied == j.seq {
            return Ok((j, Recovery::Clean));
        }
        let len = h.records_len.get();
        if len > j.area_bytes {
            return Err(Error::corrupt(
                "journal: committed transaction larger than the journal",
            ));
        }
        let mut records = vec![0u8; len as usize];
        media.read(j.area_offset, &mut records)?;
        if format::crc(&records) != h.records_crc.get() {
            return Err(Error::corrupt(
                "journal: committed records fail their checksum",
            ));
        }
        j.apply(media, &records, true)?;
        media.fence();
        media.write_u64(header_offset + JOURNAL_APPLIED_OFFSET, j.seq)?;
        media.flush(header_offset + JOURNAL_APPLIED_OFFSET, 8)?;
        media.fence();
        let seq = j.seq;
        Ok((j, Recovery::Replayed { seq, bytes: len }))
    }

    fn rewrite_header(&mut self, media: &dyn Media, seq: u64) -> Result<()> {
        let mut h = JournalHeader {
            seq: seq.into(),
            applied_seq: seq.into(),
            ..Default::default()
        };
        h.records_crc = format::crc(&[]).into();
        h.seal();
        media.write(self.header_offset, h.as_bytes())?;
        media.flush(self.header_offset, h.as_bytes().len() as u64)?;
        media.fence();
        Ok(())
    }

    /// Largest number of record bytes a transaction may need.
    pub fn capacity(&self) -> u64 {
        self.area_bytes
    }

    /// Statistics since mount.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Serialize the records of `tx` (only bytes that differ from the pool)
    /// into the scratch buffer. Returns their length.
    fn encode(&mut self, media: &dyn Media, tx: &Transaction) -> Result<u64> {
        self.scratch.clear();
        let mut current = Vec::new();
        for (&offset, new) in &tx.writes {
            current.resize(new.len(), 0);
            media.read(offset, &mut current)?;
            let mut i = 0;
            while i < new.len() {
                if new[i] == current[i] {
                    i += 1;
                    continue;
                }
                // A changed run: extend it until DIFF_GAP equal bytes follow.
                let start = i;
                let mut end = i + 1;
                let mut same = 0;
                let mut j = end;
                while j < new.len() && same < DIFF_GAP {
                    if new[j] == current[j] {
                        same += 1;
                    } else {
                        same = 0;
                        end = j + 1;
                    }
                    j += 1;
                }
                let rec = RecordHeader {
                    offset: (offset + start as u64).into(),
                    len: ((end - start) as u32).into(),
                    pad: 0.into(),
                };
                self.scratch.extend_from_slice(rec.as_bytes());
                self.scratch.extend_from_slice(&new[start..end]);
                let padded = self.scratch.len().next_multiple_of(8);
                self.scratch.resize(padded, 0);
                i = end;
            }
        }
        Ok(self.scratch.len() as u64)
    }

    /// Apply encoded records in place and flush them (no fence).
    fn apply(&self, media: &dyn Media, records: &[u8], validate: bool) -> Result<()> {
        let mut at = 0usize;
        while at < records.len() {
            let (rec, rest) = RecordHeader::read_from_prefix(&records[at..])
                .map_err(|_| Error::corrupt("journal: truncated record header"))?;
            let len = rec.len.get() as usize;
            let offset = rec.offset.get();
            if rest.len() < len {
                return Err(Error::corrupt("journal: truncated record"));
            }
            // Records may target the state block and everything after the
            // journal; never the superblock or the journal itself.
            let end = offset.checked_add(len as u64);
            if validate
                && (offset < BLOCK_SIZE
                    || end.is_none_or(|e| e > media.len_bytes())
                    || (end.is_some_and(|e| e > self.header_offset)
                        && offset < self.area_offset + self.area_bytes))
            {
                return Err(Error::corrupt(format!(
                    "journal: record at {offset:#x}+{len} outside the metadata and data regions"
                )));
            }
            media.write(offset, &rest[..len])?;
            media.flush(offset, len as u64)?;
            at += (RECORD_HEADER as usize + len).next_multiple_of(8);
        }
        Ok(())
    }

    /// Commit `tx` atomically and durably (steps 1–4 of the module doc).
    /// Fails with `EFBIG`, changing nothing, when the transaction does not
    /// fit the journal. A failure says whether it came before or after the
    /// commit point ([`CommitError`]).
    pub fn commit(
        &mut self,
        media: &dyn Media,
        tx: &Transaction,
    ) -> std::result::Result<(), CommitError> {
        let len = self
            .commit_records(media, tx)
            .map_err(CommitError::NotCommitted)?;
        if len == 0 {
            return Ok(());
        }
        self.commit_header_and_apply(media, len)
            .map_err(CommitError::Committed)?;
        self.stats.commits += 1;
        self.stats.record_bytes += len;
        Ok(())
    }

    /// Step 1: the data ranges and the records, durable. Returns the record
    /// bytes (0: nothing to commit). Nothing here is visible after a crash.
    fn commit_records(&mut self, media: &dyn Media, tx: &Transaction) -> Result<u64> {
        for &(off, len) in &tx.data {
            media.flush(off, len)?;
        }
        let len = self.encode(media, tx)?;
        if len > self.area_bytes {
            tracing::warn!(
                len,
                capacity = self.area_bytes,
                "transaction larger than the journal"
            );
            return Err(Errno::EFBIG.into());
        }
        if len == 0 {
            if !tx.data.is_empty() {
                media.fence();
            }
            return Ok(0);
        }
        // Recovery refuses u64::MAX, so this cannot wrap in practice; a
        // pool that commits 2^64 transactions fails cleanly instead.
        self.seq.checked_add(1).ok_or(Errno::EOVERFLOW)?;
        // Step 1: records.
        media.write(self.area_offset, &self.scratch)?;
        media.flush(self.area_offset, len)?;
        media.fence();
        Ok(len)
    }

    /// Steps 2–4: the header (the commit point), the in-place apply, and
    /// `applied_seq`. Any failure here may leave a transaction the next
    /// mount replays.
    fn commit_header_and_apply(&mut self, media: &dyn Media, len: u64) -> Result<()> {
        // Step 2: the commit point.
        let seq = self.seq.checked_add(1).ok_or(Errno::EOVERFLOW)?;
        let mut h = JournalHeader {
            seq: seq.into(),
            records_len: len.into(),
            records_crc: format::crc(&self.scratch).into(),
            applied_seq: self.seq.into(),
            ..Default::default()
        };
        h.seal();
        // Only the first cache line: applied_seq is written in step 4 alone.
        media.write(
            self.header_offset,
            &h.as_bytes()[..JOURNAL_APPLIED_OFFSET as usize],
        )?;
        media.flush(self.header_offset, JOURNAL_APPLIED_OFFSET)?;
        media.fence();
        self.seq = seq;
        // Step 3: in place.
        self.apply(media, &self.scratch, false)?;
        media.fence();
        // Step 4: applied.
        media.write_u64(self.header_offset + JOURNAL_APPLIED_OFFSET, seq)?;
        media.flush(self.header_offset + JOURNAL_APPLIED_OFFSET, 8)?;
        media.fence();
        Ok(())
    }
}
