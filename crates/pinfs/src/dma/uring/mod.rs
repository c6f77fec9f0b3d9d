//! The `uring` device (SPEC §6.5): real kernel long-term pins and real kernel
//! DMA through io_uring fixed buffers over pool memory.
//!
//! - **Registration** turns a region's pool pages into io_uring fixed
//!   buffers, one table entry per contiguous run of pool pages (split at the
//!   kernel's 1 GiB per buffer), in a sparse table registered once
//!   ([`ring::TABLE_ENTRIES`]). Filling an entry is what makes the kernel pin
//!   the pages with FOLL_LONGTERM — the kernel refuses that for page-cache
//!   pages of a disk file, so on a regular-file pool registration fails with
//!   the kernel's error ([`UringDevice::register`] says why).
//! - **A device write** is `IORING_OP_READ_FIXED` from a source (a memfd the
//!   device fills, or a caller's descriptor such as a pipe) into the fixed
//!   buffer; **a device read** is `IORING_OP_WRITE_FIXED` from the buffer
//!   into a sink memfd. The kernel does the copy: it is the DMA.
//! - **Revocation** replaces the region's entries: emptied (`invalidate`:
//!   later requests fail with the kernel's `EFAULT`, reported as
//!   [`Completion::ProtectionError`]) or pointed at device-owned scratch
//!   memory (`redirect`: later requests succeed into memory of no file). A
//!   request that looked the old entry up keeps the old pages until it
//!   completes, so revocation is *confirmed* only when every request
//!   submitted under the old entries has completed.
//!
//! # Why generations under one lock
//!
//! Each region has a generation, bumped by every replacement of its
//! entries. A request is counted against the generation current when it is
//! queued, and queueing happens under the same lock as the replacement
//! (the state lock, which holds the one right to the submission queue); the
//! kernel looks the entry up only after that — when the request is issued
//! inside some later `io_uring_enter`, or later still for a linked request
//! or one retried after a poll. So the count errs only one way: a request
//! counted against the new generation was queued after the kernel's table
//! held the new entries, and cannot reach the old pages; a request counted
//! against an old generation may or may not have looked up the old entry,
//! and revocation waits for it either way. `revoke` returns once no request
//! of an older generation is in flight — that is, once its completion has
//! been posted, after which the kernel touches its buffer no more (it may
//! drop its reference to the old pages a moment later, but a reference is
//! not an access).
//!
//! Measured on Linux 6.18: a request that looked up the entry before the
//! replacement (a `READ_FIXED` blocked on an empty pipe) completes into the
//! old pages when data arrives; a request submitted after an `invalidate`
//! completes with `-EFAULT` (reported as [`Completion::ProtectionError`]).
//!
//! Requests, their completions and who reaps them: `io.rs` (why the
//! callers reap, and no reaper thread).

mod io;
mod memory;
mod ring;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use self::io::{InFlight, TicketState};
use self::memory::{Files, Scratch};
use self::ring::{CqToken, Ring, SqToken};
use super::{
    Backing, Completion, Device, DeviceCaps, MrId, MrKeys, RevokeMode, MAX_REGISTRATION_PAGES,
    PAGE_BYTES,
};
use crate::media::Media;
use crate::{Errno, Error, Result};

pub use self::io::Ticket;
pub use self::memory::{KEEP_FILE_BYTES, MAX_IDLE_FILES, SCRATCH_WINDOW_BYTES};
pub use self::ring::{MAX_ENTRY_BYTES, RING_ENTRIES, TABLE_ENTRIES};

/// Most kernel requests (one per run a device access crosses) in flight at
/// once; a submission beyond it waits for completions.
pub const MAX_IN_FLIGHT: usize = 1024;

/// First device address handed out; device addresses grow from here and are
/// never reused (so a late access can never reach a later registration at
/// the same address).
pub const IOVA_BASE: u64 = 1 << 32;

/// Most regions registered at once (each takes at least one table entry,
/// so the table is the tighter bound unless runs are long).
pub const MAX_REGIONS: usize = TABLE_ENTRIES as usize;

/// How long a revocation waits, by default, for requests in flight under
/// the old entries before it cancels them
/// ([`UringDevice::set_revoke_cancel_after`]). Requests from the device's own
/// memfds finish in microseconds to milliseconds; one that takes longer
/// reads a stream with no data (a pipe nobody fills).
pub const REVOKE_CANCEL_AFTER: Duration = Duration::from_secs(1);

/// The leader's longest wait in the kernel before it looks again (the
/// completion it waits for is normally what wakes it; this bounds the
/// cost of anything unforeseen).
const LEADER_TICK: Duration = Duration::from_millis(100);

/// Why the kernel refused to register pool pages, by its errno.
fn pin_refused(errno: Errno) -> &'static str {
    match errno.0 {
        libc::EFAULT | libc::EOPNOTSUPP => {
            "io_uring could not register the pool pages as fixed buffers: \
             the kernel will not long-term-pin (FOLL_LONGTERM) page-cache pages of a disk file \
             for io_uring; use a memfd, tmpfs (/dev/shm), hugetlbfs or device-dax pool"
        }
        libc::ENOMEM => {
            "io_uring could not register the pool pages as fixed buffers: \
             pinned pages are charged to RLIMIT_MEMLOCK (without CAP_IPC_LOCK); \
             raise it (ulimit -l) or register less"
        }
        _ => "io_uring could not register the pool pages as fixed buffers",
    }
}

/// The `uring` device.
pub struct UringDevice {
    inner: Arc<Inner>,
}

struct Inner {
    /// Address of pool byte 0 in this process.
    pool_base: u64,
    pool_len: u64,
    /// Dropped (closing the ring, so the kernel drops its pins) before the
    /// pool and the scratch it may still name: fields drop in order.
    ring: Ring,
    /// The right to read completions: held by the leader (module doc).
    cq: Mutex<CqToken>,
    state: Mutex<State>,
    /// Signalled after every accounting of completions (and when a
    /// revocation starts waiting).
    changed: Condvar,
    files: Files,
    /// The memfd behind every redirected region's scratch ([`Scratch`]).
    scratch_file: OwnedFd,
    /// Kept so that pool memory stays mapped while any entry points at it.
    pool: Arc<dyn Media>,
}

struct State {
    sq: SqToken,
    regions: HashMap<u64, Region>,
    /// Free table entries (a stack).
    free_entries: Vec<u32>,
    next_mr: u64,
    next_iova: u64,
    /// Kernel requests in flight, by `user_data`.
    requests: HashMap<u64, InFlight>,
    next_user_data: u64,
    tickets: HashMap<u64, TicketState>,
    next_ticket: u64,
    /// Revocations waiting for in-flight requests (observable by tests).
    revocations_waiting: usize,
    closing: bool,
    /// How long `revoke` and `deregister` wait for requests under the old
    /// entries before cancelling them (`None`: wait for as long as they
    /// take).
    cancel_after: Option<Duration>,
    /// Negative control: `revoke` does not wait for in-flight requests.
    revoke_waits: bool,
}

/// What a region is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegionState {
    Live,
    Invalidated,
    Redirected,
}

struct Region {
    keys: MrKeys,
    mode: RevokeMode,
    len_bytes: u64,
    runs: Vec<Run>,
    generation: u64,
    state: RegionState,
    /// Requests in flight, by the generation they were submitted under.
    in_flight: BTreeMap<u64, usize>,
    scratch: Option<Scratch>,
}

/// One contiguous run of pool pages: one table entry.
#[derive(Clone, Copy, Debug)]
struct Run {
    region_offset: u64,
    /// Address of the run's first pool byte in this process.
    pool_addr: u64,
    len_bytes: u64,
    entry: u32,
}

impl fmt::Debug for UringDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("UringDevice")
            .field("pool", &self.inner.pool)
            .field("regions", &st.regions.len())
            .field("in_flight", &st.requests.len())
            .finish()
    }
}

impl UringDevice {
    /// A device over `pool`'s memory, with its own ring, sparse buffer
    /// table. `ENODEV` when the pool is not mapped in this
    /// process; the kernel's error when io_uring is unavailable.
    pub fn new(pool: Arc<dyn Media>) -> Result<UringDevice> {
        let (pool_base, pool_len) = match pool.mapping() {
            Some(m) => (m.base.as_ptr() as u64, m.len_bytes),
            None => return Err(Errno::ENODEV.into()),
        };
        let (ring, sq, cq) = Ring::new().map_err(|e| {
            Error::media(
                format!("set up io_uring with a sparse table of {TABLE_ENTRIES} fixed buffers"),
                e,
            )
        })?;
        let inner = Arc::new(Inner {
            pool,
            pool_base,
            pool_len,
            ring,
            cq: Mutex::new(cq),
            state: Mutex::new(State {
                sq,
                regions: HashMap::new(),
                free_entries: (0..TABLE_ENTRIES).rev().collect(),
                next_mr: 1,
                next_iova: IOVA_BASE,
                requests: HashMap::new(),
                next_user_data: 1,
                tickets: HashMap::new(),
                next_ticket: 1,
                revocations_waiting: 0,
                closing: false,
                cancel_after: Some(REVOKE_CANCEL_AFTER),
                revoke_waits: true,
            }),
            changed: Condvar::new(),
            files: Files::default(),
            scratch_file: Scratch::file()?,
        });
        Ok(UringDevice { inner })
    }

    /// The device writes `data` into region `mr` at byte `offset`
    /// (`READ_FIXED` from a device memfd into the buffer), asynchronously:
    /// the ticket waits for the completion.
    pub fn submit_write(&self, mr: MrId, offset: u64, data: &[u8]) -> Result<Ticket> {
        let len = data.len() as u64;
        if let Some(early) = self.inner.early_outcome(mr, offset, len) {
            return Ok(self.inner.ready_ticket(early));
        }
        let fd = self.inner.files.take()?;
        if let Err(e) = memory::pwrite_all(&fd, 0, data) {
            self.inner.files.give(fd, len);
            return Err(e);
        }
        self.inner.submit(mr, offset, len, true, fd, true, 0, false)
    }

    /// The device writes `len` bytes read from `fd` (at `fd_offset`; a pipe
    /// ignores it) into region `mr` at byte `offset`, asynchronously. The
    /// requests of one access are linked, so a stream is consumed in order;
    /// a short read fails the access. The descriptor is duplicated and kept
    /// open until the access completes.
    pub fn submit_write_from_fd(
        &self,
        mr: MrId,
        offset: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
    ) -> Result<Ticket> {
        // The source's offsets must not wrap (the kernel takes them as
        // signed, `loff_t`).
        if fd_offset
            .checked_add(len)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(Errno::EINVAL.into());
        }
        if let Some(early) = self.inner.early_outcome(mr, offset, len) {
            return Ok(self.inner.ready_ticket(early));
        }
        let fd = fd
            .try_clone_to_owned()
            .map_err(|e| Error::media("duplicate a uring source descriptor", e))?;
        self.inner
            .submit(mr, offset, len, true, fd, false, fd_offset, true)
    }

    /// [`UringDevice::submit_write_from_fd`], waiting for the completion.
    pub fn write_from_fd(
        &self,
        mr: MrId,
        offset: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
    ) -> Result<Completion> {
        Ok(self
            .submit_write_from_fd(mr, offset, len, fd, fd_offset)?
            .wait()
            .0)
    }

    /// Copy bytes of a redirected region's scratch memory (where its writes
    /// went after revocation). `EINVAL` when the region has none.
    pub fn read_scratch(&self, mr: MrId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let st = self.inner.state.lock();
        let scratch = st
            .regions
            .get(&mr.0)
            .and_then(|r| r.scratch.as_ref())
            .ok_or(Errno::EINVAL)?;
        scratch.read(offset, buf)
    }

    /// How long `revoke` and `deregister` wait for requests in flight under
    /// the old entries before cancelling them; `None`: as long as they take
    /// (default [`REVOKE_CANCEL_AFTER`]). Either way they return only once
    /// those requests have completed (cancelled or not).
    pub fn set_revoke_cancel_after(&self, after: Option<Duration>) {
        self.inner.state.lock().cancel_after = after;
    }

    /// Revocations now waiting for requests in flight under the old entries.
    pub fn revocations_waiting(&self) -> usize {
        self.inner.state.lock().revocations_waiting
    }

    /// Kernel requests in flight on region `mr`.
    pub fn in_flight(&self, mr: MrId) -> usize {
        let st = self.inner.state.lock();
        st.regions
            .get(&mr.0)
            .map_or(0, |r| r.in_flight.values().sum())
    }

    /// Fixed-buffer table entries region `mr` takes (its runs of pool pages).
    pub fn entries(&self, mr: MrId) -> usize {
        let st = self.inner.state.lock();
        st.regions.get(&mr.0).map_or(0, |r| r.runs.len())
    }

    /// Test-only negative control: `revoke` returns without waiting for the
    /// requests in flight under the old entries, so a request that already
    /// holds the old pages lands in them after "confirmation".
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_revoke_wait_for_tests(&self) {
        self.inner.state.lock().revoke_waits = false;
    }
}

impl Inner {
    /// Point every entry of `region` at its buffer in `state` (`None`: empty).
    fn set_entries(&self, sq: &mut SqToken, region: &Region, to: RegionState) -> Result<()> {
        for run in &region.runs {
            let buf = match (to, &region.scratch) {
                (RegionState::Live, _) => Some((run.pool_addr, run.len_bytes)),
                (RegionState::Redirected, Some(s)) => {
                    Some((s.addr() + run.region_offset, run.len_bytes))
                }
                _ => None,
            };
            self.ring
                .set_entry(sq, run.entry, buf)
                .map_err(|e| Error::media(format!("update fixed buffer {}", run.entry), e))?;
        }
        Ok(())
    }

    /// Wait (the lock released meanwhile) until no request of region `mr`
    /// submitted before generation `generation` is in flight.
    ///
    /// Past the state's `cancel_after`, the old requests still in flight are
    /// cancelled (a stream source with no data would otherwise hold the
    /// revocation forever, against SPEC §3's bound on breaking); the wait
    /// goes on until they have completed — cancelled, or done if the
    /// cancellation came too late to stop them.
    fn wait_older(&self, st: &mut MutexGuard<'_, State>, mr: u64, generation: u64) {
        st.revocations_waiting += 1;
        self.changed.notify_all();
        // Requests queued by a thread that has not entered the kernel yet
        // go now, so the wait does not hang on them.
        if let Err(e) = self.ring.flush() {
            tracing::warn!(error = %e, "uring: flushing queued requests failed");
        }
        let started = Instant::now();
        let mut cancelled = false;
        while st
            .regions
            .get(&mr)
            .and_then(|r| r.in_flight.keys().next().copied())
            .is_some_and(|oldest| oldest < generation)
        {
            let due = st.cancel_after.is_some_and(|d| started.elapsed() >= d);
            if due && !cancelled {
                cancelled = true;
                self.cancel_older(st, mr, generation);
            }
            self.wait_for_completions(st);
        }
        st.revocations_waiting -= 1;
    }

    /// Cancel the requests of region `mr` submitted before `generation`.
    fn cancel_older(&self, st: &mut MutexGuard<'_, State>, mr: u64, generation: u64) {
        let st = &mut **st;
        let old: Vec<u64> = st
            .requests
            .iter()
            .filter(|(_, r)| r.mr == mr && r.generation < generation)
            .map(|(&user_data, _)| user_data)
            .collect();
        tracing::warn!(
            mr,
            requests = old.len(),
            "uring: requests under revoked entries still in flight; cancelling them"
        );
        for user_data in old {
            if let Err(e) = self.ring.cancel(&mut st.sq, user_data) {
                tracing::warn!(error = %e, "uring: cancelling a request failed");
            }
        }
        if let Err(e) = self.ring.flush() {
            tracing::warn!(error = %e, "uring: submitting cancellations failed");
        }
    }
}

impl Device for UringDevice {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn caps(&self) -> DeviceCaps {
        DeviceCaps {
            invalidate: true,
            redirect: true,
            odp: false,
        }
    }

    /// Fill one table entry per contiguous run of `pages` (the kernel pins
    /// them long-term). On a regular-file pool the kernel refuses the pin:
    /// the error is its errno (`EFAULT` on Linux 6.x) with a message that
    /// says why and which pools work.
    fn register(&self, backing: Backing, mode: RevokeMode) -> Result<MrKeys> {
        let pages = match backing {
            Backing::Pinned(pages) => pages,
            Backing::OnDemand { .. } => return Err(Errno::EOPNOTSUPP.into()),
        };
        if mode == RevokeMode::Odp {
            return Err(Errno::EOPNOTSUPP.into());
        }
        if pages.is_empty() || pages.len() as u64 > MAX_REGISTRATION_PAGES {
            return Err(Errno::EINVAL.into());
        }
        let inner = &*self.inner;
        let mut runs: Vec<Run> = Vec::new();
        for (i, &page) in pages.iter().enumerate() {
            let in_pool = page
                .checked_add(PAGE_BYTES)
                .is_some_and(|end| end <= inner.pool_len);
            if !page.is_multiple_of(PAGE_BYTES) || !in_pool {
                return Err(Errno::EINVAL.into());
            }
            let region_offset = i as u64 * PAGE_BYTES;
            let addr = inner.pool_base + page;
            match runs.last_mut() {
                Some(r) if r.pool_addr + r.len_bytes == addr && r.len_bytes < MAX_ENTRY_BYTES => {
                    r.len_bytes += PAGE_BYTES;
                }
                _ => runs.push(Run {
                    region_offset,
                    pool_addr: addr,
                    len_bytes: PAGE_BYTES,
                    entry: 0,
                }),
            }
        }
        let len_bytes = pages.len() as u64 * PAGE_BYTES;
        // Made now, not at revocation: revocation should only re-point
        // entries, and must not fail for want of memory.
        let scratch = match mode {
            RevokeMode::Redirect => Some(Scratch::new(len_bytes, &inner.scratch_file)?),
            _ => None,
        };
        let mut guard = inner.state.lock();
        let st = &mut *guard;
        if st.closing {
            return Err(Errno(libc::ESHUTDOWN).into());
        }
        if st.regions.len() >= MAX_REGIONS || st.free_entries.len() < runs.len() {
            return Err(Errno::ENOSPC.into());
        }
        let id = st.next_mr;
        let keys = u32::try_from(id).map_err(|_| Errno::ENOSPC)?;
        let iova = st.next_iova;
        // A guard page between regions: an access one past a region's end
        // names no other region.
        let next_iova = iova
            .checked_add(len_bytes + PAGE_BYTES)
            .ok_or(Errno::ENOSPC)?;
        for run in &mut runs {
            // Checked above: enough free entries.
            run.entry = st.free_entries.pop().ok_or(Errno::ENOSPC)?;
        }
        let region = Region {
            keys: MrKeys {
                mr: MrId(id),
                iova,
                lkey: keys,
                rkey: keys,
            },
            mode,
            len_bytes,
            runs,
            generation: 0,
            state: RegionState::Live,
            in_flight: BTreeMap::new(),
            scratch,
        };
        if let Err(e) = inner.set_entries(&mut st.sq, &region, RegionState::Live) {
            // Undo the entries filled so far (emptying an entry never fails
            // for a valid index) and give them back.
            let _ = inner.set_entries(&mut st.sq, &region, RegionState::Invalidated);
            st.free_entries.extend(region.runs.iter().map(|r| r.entry));
            let errno = e.errno();
            tracing::warn!(%errno, "uring: the kernel refused to register pool pages");
            return Err(Error::media(
                pin_refused(errno),
                std::io::Error::from_raw_os_error(errno.0),
            ));
        }
        st.next_mr += 1;
        st.next_iova = next_iova;
        let keys = region.keys;
        st.regions.insert(id, region);
        Ok(keys)
    }

    /// Replace the region's entries (emptied, or scratch for `redirect`),
    /// then wait until every request submitted under the old entries has
    /// completed: only then can no kernel request reach the old pages.
    fn revoke(&self, mr: MrId) -> Result<()> {
        let inner = &*self.inner;
        let mut st = inner.state.lock();
        let state = &mut *st;
        let issued = (1..state.next_mr).contains(&mr.0);
        let Some(region) = state.regions.get_mut(&mr.0) else {
            // Deregistered: nothing of it is reachable any more.
            return if issued {
                Ok(())
            } else {
                Err(Errno::EINVAL.into())
            };
        };
        if region.state == RegionState::Live {
            let mut to = RegionState::Invalidated;
            if region.scratch.is_some() {
                to = RegionState::Redirected;
            }
            if let Err(e) = inner.set_entries(&mut state.sq, region, to) {
                if to == RegionState::Invalidated {
                    // Entries may be half replaced: the region is not
                    // revoked, and the caller must keep its blocks busy.
                    return Err(e);
                }
                // Scratch could not be pinned: invalidate instead.
                tracing::warn!(error = %e, "uring: redirect failed; invalidating instead");
                to = RegionState::Invalidated;
                inner.set_entries(&mut state.sq, region, to)?;
            }
            region.state = to;
            region.generation += 1;
            tracing::info!(mr = mr.0, mode = %region.mode, "uring: region revoked");
        }
        let generation = region.generation;
        if !st.revoke_waits {
            return Ok(());
        }
        inner.wait_older(&mut st, mr.0, generation);
        Ok(())
    }

    fn is_revoked(&self, mr: MrId) -> bool {
        let st = self.inner.state.lock();
        st.regions
            .get(&mr.0)
            .is_some_and(|r| r.state != RegionState::Live)
    }

    fn invalidate_pages(&self, _mr: MrId, _first: u64, _count: u64) -> Result<()> {
        Ok(()) // pinned regions only: nothing is paged on demand
    }

    /// Empty the entries, wait for the requests of older generations, then
    /// free the entries and forget the region (its device address is never
    /// handed out again).
    fn deregister(&self, mr: MrId) -> Result<()> {
        let inner = &*self.inner;
        let mut st = inner.state.lock();
        let state = &mut *st;
        let Some(region) = state.regions.get_mut(&mr.0) else {
            return Ok(());
        };
        if region.state != RegionState::Invalidated {
            inner.set_entries(&mut state.sq, region, RegionState::Invalidated)?;
            region.state = RegionState::Invalidated;
            region.generation += 1;
        }
        let generation = region.generation;
        inner.wait_older(&mut st, mr.0, generation);
        // Requests of the current generation (submitted after the entries
        // were emptied) may still be in flight: they reach no memory, but
        // the entries stay out of the free list until they are done, so no
        // later registration's buffer can be under them.
        while st
            .regions
            .get(&mr.0)
            .is_some_and(|r| !r.in_flight.is_empty())
        {
            inner.wait_for_completions(&mut st);
        }
        if let Some(region) = st.regions.remove(&mr.0) {
            st.free_entries
                .extend(region.runs.iter().rev().map(|r| r.entry));
        }
        Ok(())
    }

    fn write(&self, mr: MrId, offset: u64, data: &[u8]) -> Result<Completion> {
        Ok(self.submit_write(mr, offset, data)?.wait().0)
    }

    fn read(&self, mr: MrId, offset: u64, buf: &mut [u8]) -> Result<Completion> {
        let len = buf.len() as u64;
        let inner = &self.inner;
        if let Some(early) = inner.early_outcome(mr, offset, len) {
            return Ok(early);
        }
        // A redirected region's entries point at scratch memory the
        // device's redirected regions share (one bounded window): a read of
        // it must not show what another registration's device wrote there.
        // It completes, as redirect promises, and reads zeros.
        let redirected = inner
            .state
            .lock()
            .regions
            .get(&mr.0)
            .is_some_and(|r| r.state == RegionState::Redirected);
        if redirected {
            buf.fill(0);
            return Ok(Completion::Ok);
        }
        let sink = inner.files.take()?;
        let mut ticket = inner.submit(mr, offset, len, false, sink, true, 0, false)?;
        let (outcome, _, file) = ticket.wait_keep_file();
        if let Some((sink, own, used)) = file {
            let copied = if outcome == Completion::Ok {
                memory::pread_all(&sink, 0, buf)
            } else {
                Ok(())
            };
            inner.give_back(sink, own, used);
            copied?;
        }
        Ok(outcome)
    }
}

impl Drop for UringDevice {
    /// Cancel what is in flight, wait for every completion, empty the table; then the ring closes and the scratch memory goes.
    fn drop(&mut self) {
        let inner = &*self.inner;
        {
            let mut st = inner.state.lock();
            st.closing = true;
            if !st.requests.is_empty() {
                if let Err(e) = inner.ring.cancel_all(&mut st.sq) {
                    tracing::warn!(error = %e, "uring: cancelling requests at close failed");
                }
                let _ = inner.ring.flush();
            }
            while !st.requests.is_empty() {
                inner.wait_for_completions(&mut st);
            }
        }
        let _ = inner.ring.unregister_all();
        inner.state.lock().regions.clear();
    }
}

#[cfg(test)]
mod tests;
