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
//! submitted, and submission happens under the same lock as the
//! replacement, so the count is exact: a request counted against the new
//! generation was submitted after the kernel's table already held the new
//! entries, and cannot reach the old pages whenever the kernel looks the
//! entry up (at issue, or later for a linked request). A request counted
//! against an old generation may or may not have looked up the old entry;
//! revocation waits for it either way (conservative). `revoke` returns once
//! no request of an older generation is in flight.
//!
//! # Why the callers reap (and no reaper thread)
//!
//! Completions are reaped by the threads that wait for them, one at a time:
//! whoever needs a completion that has not been accounted yet takes the
//! completion queue's lock (it becomes the *leader*), takes what is posted
//! or else waits in the kernel for at least one completion (with a tick),
//! accounts everything it took — to whichever request, region and ticket
//! it belongs — releases the lock and wakes the other waiters; a waiter
//! that finds the lock taken waits on a condition variable for the
//! leader's accounting, then checks again (and may lead in turn). A
//! revocation waiting for old requests is such a waiter, so it needs no
//! thread of its own, even for a request whose submitter never waits.
//!
//! A dedicated reaper thread was the first design and was measured worse:
//! io_uring runs a `READ_FIXED` from a memfd in its io-wq worker (memfds
//! lack `FMODE_NOWAIT`), so every completion is posted from another thread
//! anyway; a reaper adds a second hand-off (worker → reaper → waiter),
//! which on this project's loaded two-core machines is a wait to be
//! scheduled. With the waiter leading it is one hand-off, as for a plain
//! `submit_and_wait`. What it costs: an access nobody waits for (a dropped
//! [`Ticket`]) is accounted, and its descriptor closed, at the next wait of
//! anyone, and at the latest when the device is dropped.

mod memory;
mod ring;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use self::memory::{Files, Scratch};
use self::ring::{CqToken, Request, Ring, SqToken};
use super::{
    Backing, Completion, Device, DeviceCaps, MrId, MrKeys, RevokeMode, MAX_REGISTRATION_PAGES,
    PAGE_BYTES,
};
use crate::media::Media;
use crate::{Errno, Error, Result};

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
    /// Kept so that pool memory stays mapped while any entry points at it.
    pool: Arc<dyn Media>,
    /// Address of pool byte 0 in this process.
    pool_base: u64,
    pool_len: u64,
    ring: Ring,
    /// The right to read completions: held by the leader (module doc).
    cq: Mutex<CqToken>,
    state: Mutex<State>,
    /// Signalled after every accounting of completions (and when a
    /// revocation starts waiting).
    changed: Condvar,
    files: Files,
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

struct InFlight {
    ticket: u64,
    mr: u64,
    generation: u64,
    expected: i32,
}

struct TicketState {
    remaining: usize,
    outcome: Completion,
    /// What the kernel returned for each request (bytes or `-errno`).
    kernel: Vec<i32>,
    /// The region was invalidated when the request was submitted.
    submitted_invalidated: bool,
    /// Source or sink kept open until every request completed.
    file: Option<OwnedFd>,
    /// Whether `file` is one of the device's memfds (reused afterwards).
    own_file: bool,
    len_bytes: u64,
    /// The `Ticket` was dropped: whoever accounts its last completion
    /// releases it.
    abandoned: bool,
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

/// A device access in flight; [`Ticket::wait`] waits for its completion.
/// Dropping it does not cancel the access (the device cleans up when it
/// completes).
pub struct Ticket {
    inner: Arc<Inner>,
    id: u64,
    waited: bool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish()
    }
}

impl Ticket {
    /// Whether the access has completed.
    pub fn is_done(&self) -> bool {
        self.inner.poll_completions();
        let st = self.inner.state.lock();
        st.tickets.get(&self.id).is_none_or(|t| t.remaining == 0)
    }

    /// Wait for the completion: its status and what the kernel returned for
    /// each of its requests (bytes moved, or `-errno`).
    pub fn wait(mut self) -> (Completion, Vec<i32>) {
        let (outcome, kernel, file) = self.wait_keep_file();
        if let Some((fd, own, used)) = file {
            self.inner.give_back(fd, own, used);
        }
        (outcome, kernel)
    }

    fn wait_keep_file(&mut self) -> (Completion, Vec<i32>, Option<(OwnedFd, bool, u64)>) {
        self.waited = true;
        let inner = &*self.inner;
        let mut st = inner.state.lock();
        let t = loop {
            match st.tickets.get(&self.id) {
                None => return (Completion::DeviceError(libc::EIO), Vec::new(), None),
                Some(t) if t.remaining == 0 => match st.tickets.remove(&self.id) {
                    Some(t) => break t,
                    None => return (Completion::DeviceError(libc::EIO), Vec::new(), None),
                },
                Some(_) => inner.wait_for_completions(&mut st),
            }
        };
        drop(st);
        let file = t.file.map(|f| (f, t.own_file, t.len_bytes));
        (t.outcome, t.kernel, file)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.waited {
            return;
        }
        let mut st = self.inner.state.lock();
        let done = match st.tickets.get_mut(&self.id) {
            Some(t) if t.remaining == 0 => true,
            Some(t) => {
                t.abandoned = true;
                false
            }
            None => false,
        };
        if done {
            if let Some(t) = st.tickets.remove(&self.id) {
                drop(st);
                self.inner.release_file(t);
            }
        }
    }
}

impl Inner {
    /// The outcome of an access that needs no kernel request: unknown region,
    /// out of bounds, empty.
    fn early_outcome(&self, mr: MrId, offset: u64, len: u64) -> Option<Completion> {
        let st = self.state.lock();
        let Some(region) = st.regions.get(&mr.0) else {
            return Some(Completion::InvalidRegion);
        };
        match offset.checked_add(len) {
            Some(end) if end <= region.len_bytes => {}
            _ => return Some(Completion::ProtectionError),
        }
        (len == 0).then_some(Completion::Ok)
    }

    fn ready_ticket(self: &Arc<Self>, outcome: Completion) -> Ticket {
        let mut st = self.state.lock();
        let id = st.next_ticket;
        st.next_ticket += 1;
        st.tickets.insert(
            id,
            TicketState {
                remaining: 0,
                outcome,
                kernel: Vec::new(),
                submitted_invalidated: false,
                file: None,
                own_file: false,
                len_bytes: 0,
                abandoned: false,
            },
        );
        Ticket {
            inner: Arc::clone(self),
            id,
            waited: false,
        }
    }

    /// Submit one access of `len` bytes at `offset` of region `mr`: one
    /// kernel request per run it crosses, counted against the region's
    /// current generation, all under the state lock.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        self: &Arc<Self>,
        mr: MrId,
        offset: u64,
        len: u64,
        into_buffer: bool,
        file: OwnedFd,
        own_file: bool,
        file_offset: u64,
        linked: bool,
    ) -> Result<Ticket> {
        let mut st = self.state.lock();
        // Re-check under the lock that submits (the region may have gone).
        let pieces = loop {
            if st.closing {
                drop(st);
                self.give_back(file, own_file, len);
                return Err(Errno(libc::ESHUTDOWN).into());
            }
            let Some(region) = st.regions.get(&mr.0) else {
                drop(st);
                self.give_back(file, own_file, len);
                return Ok(self.ready_ticket(Completion::InvalidRegion));
            };
            let pieces = match region.pieces(offset, len) {
                Some(p) => p,
                None => {
                    drop(st);
                    self.give_back(file, own_file, len);
                    return Ok(self.ready_ticket(Completion::ProtectionError));
                }
            };
            if st.requests.len() + pieces.len() <= MAX_IN_FLIGHT || st.requests.is_empty() {
                break pieces;
            }
            self.wait_for_completions(&mut st);
        };
        let mut guard = st;
        let st = &mut *guard;
        let Some(region) = st.regions.get_mut(&mr.0) else {
            return Err(Errno::EIO.into()); // unreachable: checked above under the same lock
        };
        let generation = region.generation;
        let invalidated = region.state == RegionState::Invalidated;
        *region.in_flight.entry(generation).or_insert(0) += pieces.len();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        let fd = file.as_raw_fd();
        let mut requests = Vec::with_capacity(pieces.len());
        for p in &pieces {
            let user_data = st.next_user_data;
            st.next_user_data += 1;
            st.requests.insert(
                user_data,
                InFlight {
                    ticket,
                    mr: mr.0,
                    generation,
                    expected: p.len as i32,
                },
            );
            requests.push(Request {
                into_buffer,
                fd,
                file_offset: file_offset + (p.region_offset - offset),
                addr: p.addr,
                len: p.len,
                entry: p.entry,
                linked,
                user_data,
            });
        }
        st.tickets.insert(
            ticket,
            TicketState {
                remaining: pieces.len(),
                outcome: Completion::Ok,
                kernel: Vec::with_capacity(pieces.len()),
                submitted_invalidated: invalidated,
                file: Some(file),
                own_file,
                len_bytes: len,
                abandoned: false,
            },
        );
        if let Err((pushed, e)) = self.ring.queue(&mut st.sq, &requests) {
            // The requests not queued never run: forget them. Those queued
            // run and stay counted; their ticket is released when they
            // complete.
            let unqueued = &requests[pushed..];
            for r in unqueued {
                st.requests.remove(&r.user_data);
            }
            if let Some(region) = st.regions.get_mut(&mr.0) {
                region.uncount(generation, unqueued.len());
            }
            let mut release = None;
            if pushed == 0 {
                release = st.tickets.remove(&ticket);
            } else if let Some(t) = st.tickets.get_mut(&ticket) {
                t.remaining = pushed;
                t.abandoned = true;
            }
            drop(guard);
            if let Some(t) = release {
                self.release_file(t);
            }
            self.changed.notify_all();
            if pushed > 0 {
                let _ = self.ring.flush();
            }
            return Err(Error::media("queue a uring request", e));
        }
        drop(guard);
        // Outside the lock: the copy of an access that completes inline
        // (a memfd source) runs inside this system call.
        if let Err(e) = self.ring.flush() {
            // Still queued and counted: the next leader's wait submits it.
            tracing::warn!(error = %e, "uring: io_uring_enter failed; retried at the next wait");
        }
        Ok(Ticket {
            inner: Arc::clone(self),
            id: ticket,
            waited: false,
        })
    }

    fn give_back(&self, file: OwnedFd, own_file: bool, len: u64) {
        if own_file {
            self.files.give(file, len);
        }
    }

    fn release_file(&self, t: TicketState) {
        if let Some(f) = t.file {
            self.give_back(f, t.own_file, t.len_bytes);
        }
    }

    /// Account completions taken off the queue, release the abandoned
    /// tickets they finish, and wake every waiter (also when `batch` is
    /// empty: a waiter that found the queue's lock taken waits for this).
    fn account(&self, batch: &[(u64, i32)]) {
        let mut released = Vec::new();
        {
            let mut st = self.state.lock();
            for &(user_data, res) in batch {
                if let Some(t) = st.complete(user_data, res) {
                    released.push(t);
                }
            }
            self.changed.notify_all();
        }
        for t in released {
            self.release_file(t);
        }
    }

    /// Account what is posted now, unless another thread is leading.
    fn poll_completions(&self) {
        let mut batch = Vec::new();
        if let Some(mut cq) = self.cq.try_lock() {
            self.ring.drain(&mut cq, &mut batch);
        } else {
            return;
        }
        self.account(&batch);
    }

    /// Wait until some completions have been accounted: lead (take the
    /// completion queue, waiting in the kernel if nothing is posted) or, if
    /// another thread leads, wait for its accounting. The state lock is
    /// held on entry and on return, released meanwhile; callers re-check
    /// what they wait for.
    fn wait_for_completions(&self, st: &mut MutexGuard<'_, State>) {
        // Tried with the state lock held: a leader notifies (under the state
        // lock) only after releasing the queue, so if this fails the
        // notification is still to come and cannot be missed.
        let Some(mut cq) = self.cq.try_lock() else {
            self.changed.wait(st);
            return;
        };
        MutexGuard::unlocked(st, || {
            let mut batch = Vec::new();
            self.ring.drain(&mut cq, &mut batch);
            if batch.is_empty() {
                if let Err(e) = self.ring.wait(LEADER_TICK) {
                    tracing::error!(error = %e, "uring: waiting for completions failed");
                }
                self.ring.drain(&mut cq, &mut batch);
            }
            drop(cq);
            self.account(&batch);
        });
    }
}

impl State {
    /// Account one completion; returns an abandoned ticket that is done.
    fn complete(&mut self, user_data: u64, res: i32) -> Option<TicketState> {
        let req = self.requests.remove(&user_data)?;
        let mut region_now = None;
        if let Some(region) = self.regions.get_mut(&req.mr) {
            region.uncount(req.generation, 1);
            region_now = Some((region.state, region.generation));
        }
        let t = self.tickets.get_mut(&req.ticket)?;
        t.remaining = t.remaining.saturating_sub(1);
        t.kernel.push(res);
        if res != req.expected && t.outcome == Completion::Ok {
            // The kernel's EFAULT on an entry we emptied is the invalidated
            // region's protection error: the request was submitted while it
            // was invalidated, or looked the entry up after it was (a
            // linked request); a deregistered region's entries are empty too.
            let revoked_since = match region_now {
                None => true,
                Some((state, generation)) => {
                    state == RegionState::Invalidated && generation > req.generation
                }
            };
            t.outcome = if res == -libc::EFAULT && (t.submitted_invalidated || revoked_since) {
                Completion::ProtectionError
            } else if res < 0 {
                Completion::DeviceError(-res)
            } else {
                // Short transfer (a stream ran dry, or the link was cut).
                Completion::DeviceError(libc::EIO)
            };
        }
        if t.remaining == 0 && t.abandoned {
            return self.tickets.remove(&req.ticket);
        }
        None
    }
}

/// One kernel request's share of an access.
struct Piece {
    region_offset: u64,
    addr: u64,
    len: u32,
    entry: u16,
}

impl Region {
    /// Forget `n` requests counted against `generation`.
    fn uncount(&mut self, generation: u64, n: usize) {
        if let Some(c) = self.in_flight.get_mut(&generation) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.in_flight.remove(&generation);
            }
        }
    }

    /// The kernel requests an access of `len` bytes at `offset` needs: one
    /// per run it crosses, each addressed inside the buffer the run's entry
    /// names now (pool pages, or scratch once redirected; an invalidated
    /// region keeps naming its old pool pages, as a late device would — the
    /// kernel finds the entry empty). `None` when out of bounds.
    fn pieces(&self, offset: u64, len: u64) -> Option<Vec<Piece>> {
        let end = offset.checked_add(len)?;
        if end > self.len_bytes {
            return None;
        }
        let first = self
            .runs
            .partition_point(|r| r.region_offset + r.len_bytes <= offset);
        let mut out = Vec::new();
        let mut at = offset;
        for run in &self.runs[first..] {
            if at >= end {
                break;
            }
            let within = at - run.region_offset;
            let n = (run.len_bytes - within).min(end - at);
            let base = match (self.state, &self.scratch) {
                (RegionState::Redirected, Some(s)) => s.addr() + run.region_offset,
                _ => run.pool_addr,
            };
            out.push(Piece {
                region_offset: at,
                addr: base + within,
                len: u32::try_from(n).ok()?,
                entry: u16::try_from(run.entry).ok()?,
            });
            at += n;
        }
        Some(out)
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
            scratch: None,
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
        let region = state.regions.get_mut(&mr.0).ok_or(Errno::EINVAL)?;
        if region.state == RegionState::Live {
            let mut to = RegionState::Invalidated;
            if region.mode == RevokeMode::Redirect {
                match Scratch::new(region.len_bytes) {
                    Ok(s) => {
                        region.scratch = Some(s);
                        to = RegionState::Redirected;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "uring: no scratch memory; invalidating instead")
                    }
                }
            }
            if let Err(e) = inner.set_entries(&mut state.sq, region, to) {
                if to == RegionState::Invalidated {
                    // Entries may be half replaced: the region is not
                    // revoked, and the caller must keep its blocks busy.
                    return Err(e);
                }
                // Scratch could not be pinned: invalidate instead.
                tracing::warn!(error = %e, "uring: redirect failed; invalidating instead");
                region.scratch = None;
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
