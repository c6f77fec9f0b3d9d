//! Recording media: an in-memory pool that logs every store, flush and fence,
//! so tests can build the image a power failure would leave at any point.
//!
//! Crash consistency cannot be tested by pulling the plug, so tests run the
//! file system on [`RecordingMedia`], call [`RecordingMedia::start_recording`]
//! once the setup they do not want enumerated (mkfs, say) is done, run the
//! operation under test, and then ask for [`RecordingMedia::crash_image`] at
//! every crash point and every [`CrashMode`], mounting each image to check
//! that it recovers.
//!
//! # Persistence model
//!
//! The log is the program-order sequence of *stores* (`write`, `fill`,
//! `write_u64`: offset and bytes), *flushes* (`flush(offset, len)`) and
//! *fences*. The fences are numbered 0, 1, ... in log order.
//!
//! - **Crash points.** Crash point `k` (for `k` in `0..=fence_count`) is the
//!   moment just before fence `k`; crash point `fence_count` is after the last
//!   logged event. Events before that moment happened; later ones never did.
//! - **Durable.** A store is durable at crash point `k` if every 64-byte cache
//!   line it touches was covered by a flush issued *after* the store and
//!   *before* some fence that precedes crash point `k`. A flush issued before
//!   the store does not count; neither does a flush not yet followed by a fence.
//! - **Pending.** Every other store that happened before the crash point is
//!   pending: its bytes may or may not have reached the media.
//! - **Tearing.** A pending store reaches the media in aligned 8-byte words,
//!   each independently; nothing smaller is torn. So a [`Media::write_u64`]
//!   store (always one aligned word) is never torn, and larger stores are.
//!
//! An image is the base (the contents at `start_recording`) with a chosen set
//! of stores, or parts of stores, applied in program order, which gives a later
//! store to the same bytes the last word:
//!
//! - [`CrashMode::DurableOnly`]: the durable stores only — the least a correct
//!   program can count on.
//! - [`CrashMode::AllPending`]: every store that happened — as if all caches
//!   had been written back just before the failure.
//! - [`CrashMode::Random`]: the durable stores, plus each aligned word of each
//!   pending store with probability 1/2, from a seeded generator, so a failing
//!   image can be rebuilt from its seed.
//!
//! # Fault injection
//!
//! [`RecordingMedia::fail_flush_after_fences`] makes one later flush fail
//! with `EIO` (and not be logged: the write-back did not happen), so tests
//! can make a commit fail before or after its commit point and check what
//! the file system does about it.
//!
//! When each store becomes durable is computed in one pass over the log and
//! cached until the next logged event, so enumerating thousands of crash
//! points costs one copy of the base plus the stores replayed, per image.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use parking_lot::Mutex;

use super::{check_range, Durability, FlushMethod, Media, MediaCaps, MediaKind};
use crate::util::SplitMix64;
use crate::{Errno, Result};

/// The unit of write-back, in bytes.
pub const CACHE_LINE_BYTES: u64 = 64;

/// The unit of tearing: pending stores reach the media in aligned words.
pub const WORD_BYTES: u64 = 8;

/// Which pending stores a crash image includes (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only the stores that are durable at the crash point.
    DurableOnly,
    /// Every store before the crash point, durable or not.
    AllPending,
    /// The durable stores plus each aligned 8-byte word of each pending store
    /// with probability 1/2, decided by a generator seeded with this value.
    Random(u64),
}

/// In-memory test media that records stores, flushes and fences.
pub struct RecordingMedia {
    len_bytes: u64,
    state: Mutex<State>,
    /// A file system is mounted on it (see [`Media::mount_flag`]).
    mounted: std::sync::atomic::AtomicBool,
}

struct State {
    /// The contents as if every store had persisted.
    current: Vec<u8>,
    /// The contents at `start_recording`, which every crash image starts from.
    base: Vec<u8>,
    recording: bool,
    events: Vec<Event>,
    stores: Vec<Store>,
    /// The bytes of `write` and `write_u64` stores, back to back.
    store_bytes: Vec<u8>,
    fences: usize,
    /// Per store, the number of the fence after which it is durable (the
    /// fence count when it never is); `None` when the log changed since the
    /// last computation.
    durable_after_fence: Option<Vec<usize>>,
    /// Fault injection: the first flush once this many more fences have
    /// been issued fails (then this is cleared).
    fail_flush_after: Option<usize>,
}

#[derive(Clone, Copy)]
enum Event {
    /// Index into `State::stores`.
    Store(usize),
    Flush {
        offset: u64,
        len: u64,
    },
    Fence,
}

#[derive(Clone, Copy)]
struct Store {
    offset: u64,
    len: u64,
    payload: Payload,
    /// How many fences precede the store in the log.
    fences_before: usize,
}

#[derive(Clone, Copy)]
enum Payload {
    /// `len` bytes in `State::store_bytes` from this index.
    Bytes { start: usize },
    /// `len` copies of this byte.
    Fill(u8),
}

impl RecordingMedia {
    /// A zero-filled recording media of `len_bytes` (not yet recording).
    ///
    /// # Panics
    ///
    /// When `len_bytes` does not fit in this process's memory (a test bug).
    pub fn new(len_bytes: u64) -> Self {
        let len = usize::try_from(len_bytes).expect("recording media must fit in memory");
        Self::from_image(vec![0; len])
    }

    /// A recording media holding `image` (not yet recording).
    pub fn from_image(image: Vec<u8>) -> Self {
        RecordingMedia {
            mounted: std::sync::atomic::AtomicBool::new(false),
            len_bytes: image.len() as u64,
            state: Mutex::new(State {
                current: image,
                base: Vec::new(),
                recording: false,
                events: Vec::new(),
                stores: Vec::new(),
                store_bytes: Vec::new(),
                fences: 0,
                durable_after_fence: None,
                fail_flush_after: None,
            }),
        }
    }

    /// Fault injection: the first flush issued after `fences` more fences
    /// (0: the next flush) fails with `EIO`, once, and is not logged. A
    /// journal commit issues four fences (records, commit point, apply,
    /// applied), so `0` fails it before its commit point and `2` or `3`
    /// after it. Works whether or not the media is recording.
    pub fn fail_flush_after_fences(&self, fences: usize) {
        self.state.lock().fail_flush_after = Some(fences);
    }

    /// The current contents, as if every store had persisted.
    pub fn image(&self) -> Vec<u8> {
        self.state.lock().current.clone()
    }

    /// Makes the current contents the base of every crash image, clears the
    /// log and starts logging. Before the first call nothing is logged.
    pub fn start_recording(&self) {
        let mut st = self.state.lock();
        let st = &mut *st;
        st.base.clone_from(&st.current);
        st.recording = true;
        st.events.clear();
        st.stores.clear();
        st.store_bytes.clear();
        st.fences = 0;
        st.durable_after_fence = None;
    }

    /// Whether stores, flushes and fences are being logged.
    pub fn is_recording(&self) -> bool {
        self.state.lock().recording
    }

    /// Fences logged since `start_recording`; crash points are
    /// `0..=fence_count()`.
    pub fn fence_count(&self) -> usize {
        self.state.lock().fences
    }

    /// Stores, flushes and fences logged since `start_recording`.
    pub fn logged_events(&self) -> usize {
        self.state.lock().events.len()
    }

    /// The pool image a power failure at `crash_point` would leave (just
    /// before fence number `crash_point`; `fence_count()` means after the last
    /// event), with pending stores chosen by `mode`.
    ///
    /// # Panics
    ///
    /// When `crash_point > fence_count()` (a test bug).
    pub fn crash_image(&self, crash_point: usize, mode: CrashMode) -> Vec<u8> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        assert!(
            crash_point <= st.fences,
            "crash point {crash_point} beyond the {} logged fences",
            st.fences
        );
        if !st.recording {
            return st.current.clone();
        }
        if st.durable_after_fence.is_none() {
            st.durable_after_fence = Some(durable_after_fence(&st.events, &st.stores));
        }
        let durable_after = st.durable_after_fence.as_deref().unwrap_or_default();
        let mut image = st.base.clone();
        let mut rng = SplitMix64::new(match mode {
            CrashMode::Random(seed) => seed,
            _ => 0,
        });
        // Stores are in program order and `fences_before` never decreases,
        // so the stores that happened before the crash point are a prefix.
        let happened = st
            .stores
            .partition_point(|s| s.fences_before <= crash_point);
        for (store, &fence) in st.stores[..happened].iter().zip(durable_after) {
            let durable = fence < crash_point;
            match mode {
                CrashMode::DurableOnly if !durable => {}
                CrashMode::Random(_) if !durable => {
                    for word in words(store.offset, store.len) {
                        if rng.next() & 1 == 1 {
                            apply(&mut image, &st.store_bytes, store, word);
                        }
                    }
                }
                _ => apply(
                    &mut image,
                    &st.store_bytes,
                    store,
                    store.offset..store.offset + store.len,
                ),
            }
        }
        image
    }

    /// Byte range of the pool for `offset..offset+len`, bounds-checked.
    fn span(&self, offset: u64, len: u64) -> Result<Range<usize>> {
        check_range(self.len_bytes, offset, len)?;
        // Both fit: the range is inside a `Vec`.
        let start = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        Ok(start..start + len)
    }

    /// Applies a store to the current contents and logs it when recording.
    fn store(&self, offset: u64, len: u64, bytes: Option<&[u8]>, fill: u8) -> Result<()> {
        let range = self.span(offset, len)?;
        if range.is_empty() {
            return Ok(());
        }
        let mut guard = self.state.lock();
        let st = &mut *guard;
        match bytes {
            Some(bytes) => st.current[range].copy_from_slice(bytes),
            None => st.current[range].fill(fill),
        }
        if st.recording {
            let payload = match bytes {
                Some(bytes) => {
                    let start = st.store_bytes.len();
                    st.store_bytes.extend_from_slice(bytes);
                    Payload::Bytes { start }
                }
                None => Payload::Fill(fill),
            };
            st.events.push(Event::Store(st.stores.len()));
            st.stores.push(Store {
                offset,
                len,
                payload,
                fences_before: st.fences,
            });
            st.durable_after_fence = None;
        }
        Ok(())
    }
}

impl fmt::Debug for RecordingMedia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RecordingMedia");
        d.field("len_bytes", &self.len_bytes);
        // Never block (or deadlock) in Debug: the lock may be held by the caller.
        match self.state.try_lock() {
            Some(st) => d
                .field("recording", &st.recording)
                .field("logged_events", &st.events.len())
                .field("fences", &st.fences),
            None => d.field("state", &"<locked>"),
        };
        d.finish()
    }
}

impl Media for RecordingMedia {
    fn mount_flag(&self) -> Option<&std::sync::atomic::AtomicBool> {
        Some(&self.mounted)
    }

    fn caps(&self) -> MediaCaps {
        MediaCaps {
            kind: MediaKind::Recording,
            durability: Durability::ProcessLifetime,
            long_term_pin: false,
            flush: FlushMethod::None,
            page_size: 4096,
            huge_pages: false,
        }
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let range = self.span(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.state.lock().current[range]);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.store(offset, data.len() as u64, Some(data), 0)
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<()> {
        self.store(offset, len, None, byte)
    }

    /// Stores `value` little-endian, like the mapped pools.
    fn write_u64(&self, offset: u64, value: u64) -> Result<()> {
        if offset & (WORD_BYTES - 1) != 0 {
            return Err(Errno::EINVAL.into());
        }
        self.store(offset, WORD_BYTES, Some(&value.to_le_bytes()), 0)
    }

    fn flush(&self, offset: u64, len: u64) -> Result<()> {
        self.span(offset, len)?;
        let mut st = self.state.lock();
        if st.fail_flush_after == Some(0) {
            st.fail_flush_after = None;
            return Err(Errno::EIO.into());
        }
        if st.recording && len > 0 {
            st.events.push(Event::Flush { offset, len });
            st.durable_after_fence = None;
        }
        Ok(())
    }

    fn fence(&self) {
        let mut st = self.state.lock();
        if let Some(n) = st.fail_flush_after.as_mut() {
            *n = n.saturating_sub(1);
        }
        if st.recording {
            st.events.push(Event::Fence);
            st.fences += 1;
            st.durable_after_fence = None;
        }
    }
}

/// Cache lines `first..=last` touched by `offset..offset+len` (`len > 0`).
fn lines(offset: u64, len: u64) -> (u64, u64) {
    (
        offset / CACHE_LINE_BYTES,
        (offset + len - 1) / CACHE_LINE_BYTES,
    )
}

/// For each store, the number of the first fence after which it is durable:
/// the fence following the flush that covered the last of its lines still
/// unflushed. Stores never fully flushed-and-fenced get `fences` (no crash
/// point sees them durable).
fn durable_after_fence(events: &[Event], stores: &[Store]) -> Vec<usize> {
    let total_fences = events.iter().filter(|e| matches!(e, Event::Fence)).count();
    let mut durable_after = vec![total_fences; stores.len()];
    // Per store, how many of its lines no flush has covered yet.
    let mut unflushed_lines = vec![0u64; stores.len()];
    // Per cache line, the stores waiting for a flush of it.
    let mut waiting: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let mut fences_seen = 0;
    for event in events {
        match *event {
            Event::Store(i) => {
                let (first, last) = lines(stores[i].offset, stores[i].len);
                unflushed_lines[i] = last - first + 1;
                for line in first..=last {
                    waiting.entry(line).or_default().push(i);
                }
            }
            Event::Flush { offset, len } => {
                let (first, last) = lines(offset, len);
                let covered: Vec<u64> =
                    waiting.range(first..=last).map(|(&line, _)| line).collect();
                for line in covered {
                    for i in waiting.remove(&line).unwrap_or_default() {
                        unflushed_lines[i] -= 1;
                        if unflushed_lines[i] == 0 {
                            // Durable once the next fence (number `fences_seen`)
                            // has run.
                            durable_after[i] = fences_seen;
                        }
                    }
                }
            }
            Event::Fence => fences_seen += 1,
        }
    }
    durable_after
}

/// Splits `offset..offset+len` at aligned 8-byte word boundaries.
fn words(offset: u64, len: u64) -> impl Iterator<Item = Range<u64>> {
    let end = offset + len;
    let mut start = offset;
    std::iter::from_fn(move || {
        if start >= end {
            return None;
        }
        let next = ((start / WORD_BYTES + 1) * WORD_BYTES).min(end);
        let word = start..next;
        start = next;
        Some(word)
    })
}

/// Writes the part `part` (pool offsets, inside the store) of `store` into
/// `image`.
fn apply(image: &mut [u8], store_bytes: &[u8], store: &Store, part: Range<u64>) {
    // Logged stores were bounds-checked against the pool, which is `image`'s
    // length, so these conversions and slices are in range.
    let dst = part.start as usize..part.end as usize;
    match store.payload {
        Payload::Bytes { start } => {
            let from = start + (part.start - store.offset) as usize;
            image[dst.clone()].copy_from_slice(&store_bytes[from..from + dst.len()]);
        }
        Payload::Fill(byte) => image[dst].fill(byte),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: u64 = 4096;

    fn byte_at(image: &[u8], offset: u64) -> u8 {
        image[offset as usize]
    }

    #[test]
    fn setup_before_recording_is_the_base() {
        let m = RecordingMedia::new(LEN);
        m.write(0, b"mkfs").unwrap();
        m.flush(0, 4).unwrap();
        m.fence();
        assert_eq!(m.logged_events(), 0);
        assert_eq!(m.fence_count(), 0);
        m.start_recording();
        assert!(m.is_recording());
        assert_eq!(&m.crash_image(0, CrashMode::DurableOnly)[..4], b"mkfs");
        let mut buf = [0u8; 4];
        m.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"mkfs");
    }

    #[test]
    fn flushed_and_fenced_store_survives() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.write(100, &[7; 40]).unwrap(); // lines 1 and 2
        m.flush(64, 128).unwrap();
        m.fence();
        assert_eq!(m.fence_count(), 1);
        assert_eq!(m.logged_events(), 3);
        // Before the fence: not durable.
        let before = m.crash_image(0, CrashMode::DurableOnly);
        assert!(before.iter().all(|&b| b == 0));
        // After it: durable.
        let after = m.crash_image(1, CrashMode::DurableOnly);
        assert!(after[100..140].iter().all(|&b| b == 7));
        assert_eq!(after, m.image());
    }

    #[test]
    fn unflushed_store_is_only_pending() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.write(10, b"lost").unwrap();
        m.fence();
        for k in 0..=1 {
            let durable = m.crash_image(k, CrashMode::DurableOnly);
            assert_eq!(&durable[10..14], &[0; 4]);
            let all = m.crash_image(k, CrashMode::AllPending);
            assert_eq!(&all[10..14], b"lost");
        }
    }

    #[test]
    fn partly_flushed_store_is_not_durable() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.write(60, &[1; 8]).unwrap(); // lines 0 and 1
        m.flush(0, 64).unwrap(); // line 0 only
        m.fence();
        assert_eq!(byte_at(&m.crash_image(1, CrashMode::DurableOnly), 60), 0);
        m.flush(64, 1).unwrap(); // now line 1
        m.fence();
        assert_eq!(byte_at(&m.crash_image(1, CrashMode::DurableOnly), 60), 0);
        assert_eq!(byte_at(&m.crash_image(2, CrashMode::DurableOnly), 60), 1);
    }

    #[test]
    fn crash_between_flush_and_fence_loses_the_store() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.fence(); // fence 0
        m.write_u64(8, 0x1122_3344_5566_7788).unwrap();
        m.flush(8, 8).unwrap();
        m.fence(); // fence 1
                   // Crash point 1 is after the flush, before fence 1.
        let image = m.crash_image(1, CrashMode::DurableOnly);
        assert_eq!(&image[8..16], &[0; 8]);
        let image = m.crash_image(1, CrashMode::AllPending);
        assert_eq!(&image[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        let image = m.crash_image(2, CrashMode::DurableOnly);
        assert_eq!(&image[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        // Crash point 0 is before the store happened at all.
        let image = m.crash_image(0, CrashMode::AllPending);
        assert!(image.iter().all(|&b| b == 0));
    }

    #[test]
    fn flush_issued_before_the_store_does_not_count() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.flush(0, LEN).unwrap();
        m.write(200, b"late").unwrap();
        m.fence();
        let image = m.crash_image(1, CrashMode::DurableOnly);
        assert_eq!(&image[200..204], &[0; 4]);
    }

    #[test]
    fn store_after_flush_keeps_the_flushed_value_durable() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.write(0, b"old!").unwrap();
        m.flush(0, 4).unwrap();
        m.write(0, b"new!").unwrap(); // same line, after the flush
        m.fence();
        assert_eq!(&m.crash_image(1, CrashMode::DurableOnly)[..4], b"old!");
        assert_eq!(&m.crash_image(1, CrashMode::AllPending)[..4], b"new!");
    }

    #[test]
    fn fill_is_logged_and_replayed() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.fill(0, LEN, 0xee).unwrap();
        m.flush(0, LEN).unwrap();
        m.fence();
        assert!(m
            .crash_image(1, CrashMode::DurableOnly)
            .iter()
            .all(|&b| b == 0xee));
        assert!(m
            .crash_image(0, CrashMode::DurableOnly)
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn random_is_deterministic_and_tears_only_at_words() {
        let old = 0x5a;
        let m = RecordingMedia::from_image(vec![old; LEN as usize]);
        m.start_recording();
        // A long unaligned store, and many aligned words.
        m.write(3, &[0xa5; 1000]).unwrap();
        for i in 0..64u64 {
            m.write_u64(2048 + i * 8, u64::MAX - i).unwrap();
        }
        m.fence();
        let a = m.crash_image(1, CrashMode::Random(42));
        let b = m.crash_image(1, CrashMode::Random(42));
        assert_eq!(a, b, "same seed, same image");
        let c = m.crash_image(1, CrashMode::Random(43));
        assert_ne!(a, c, "another seed tears differently");

        let mut saw_old = false;
        let mut saw_new = false;
        for word in words(3, 1000) {
            let bytes = &a[word.start as usize..word.end as usize];
            let all_old = bytes.iter().all(|&x| x == old);
            let all_new = bytes.iter().all(|&x| x == 0xa5);
            assert!(all_old || all_new, "word {word:?} torn inside: {bytes:?}");
            saw_old |= all_old;
            saw_new |= all_new;
        }
        assert!(saw_old && saw_new);
        for i in 0..64u64 {
            let at = (2048 + i * 8) as usize;
            let value = u64::from_le_bytes(a[at..at + 8].try_into().unwrap());
            assert!(value == u64::from_le_bytes([old; 8]) || value == u64::MAX - i);
        }
        // Bytes no store touched keep the base value.
        assert_eq!(a[0..3], [old; 3]);
        assert_eq!(a[1003..2048], [old; 1045][..]);
    }

    #[test]
    fn random_keeps_durable_stores() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.write(0, &[9; 256]).unwrap();
        m.flush(0, 256).unwrap();
        m.fence();
        for seed in 0..20 {
            assert!(m.crash_image(1, CrashMode::Random(seed))[..256]
                .iter()
                .all(|&b| b == 9));
        }
    }

    #[test]
    fn later_events_invalidate_the_cached_analysis() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.write(0, b"x").unwrap();
        m.fence();
        assert_eq!(byte_at(&m.crash_image(1, CrashMode::DurableOnly), 0), 0);
        m.flush(0, 1).unwrap();
        m.fence();
        assert_eq!(byte_at(&m.crash_image(1, CrashMode::DurableOnly), 0), 0);
        // The flush came after the store and before fence 1.
        assert_eq!(byte_at(&m.crash_image(2, CrashMode::DurableOnly), 0), b'x');
    }

    #[test]
    fn injected_flush_failure_hits_the_chosen_flush_once() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.fail_flush_after_fences(1);
        m.flush(0, 8).unwrap(); // before the fence: still fine
        m.fence();
        assert_eq!(m.flush(0, 8).unwrap_err().errno(), Errno::EIO);
        m.flush(0, 8).unwrap(); // once only
                                // The failed flush is not logged: 2 flushes and 1 fence.
        assert_eq!(m.logged_events(), 3);
        m.fail_flush_after_fences(0);
        assert_eq!(m.flush(64, 8).unwrap_err().errno(), Errno::EIO);
    }

    #[test]
    fn out_of_range_is_einval_and_not_logged() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        let einval = |r: Result<()>| assert_eq!(r.unwrap_err().errno(), Errno::EINVAL);
        einval(m.write(LEN - 1, b"ab"));
        einval(m.fill(u64::MAX, 2, 0));
        einval(m.write_u64(4, 0));
        einval(m.write_u64(LEN, 0));
        einval(m.flush(LEN, 1));
        let mut buf = [0u8; 2];
        einval(m.read(LEN - 1, &mut buf));
        assert_eq!(m.logged_events(), 0);
        assert_eq!(m.caps().kind, MediaKind::Recording);
        assert!(m.mapping().is_none());
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn crash_point_beyond_the_log_is_a_test_bug() {
        let m = RecordingMedia::new(LEN);
        m.start_recording();
        m.crash_image(1, CrashMode::DurableOnly);
    }

    #[test]
    fn many_crash_points_over_a_large_pool() {
        // The scale crash tests use: 8 MiB, thousands of events.
        let m = RecordingMedia::new(8 << 20);
        m.fill(0, 8 << 20, 0).unwrap();
        m.start_recording();
        for i in 0..2000u64 {
            let offset = (i * 4104) % ((8 << 20) - 4096);
            m.write(offset, &[i as u8; 100]).unwrap();
            m.write_u64(offset & !7, i).unwrap();
            m.flush(offset, 100).unwrap();
            if i % 2 == 0 {
                m.fence();
            }
        }
        assert_eq!(m.fence_count(), 1000);
        for k in (0..=m.fence_count()).step_by(50) {
            let image = m.crash_image(k, CrashMode::Random(k as u64));
            assert_eq!(image.len(), 8 << 20);
        }
        assert_eq!(m.crash_image(1000, CrashMode::AllPending), m.image());
    }
}
