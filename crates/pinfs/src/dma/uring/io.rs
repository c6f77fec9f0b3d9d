//! The `uring` device's requests: an access split into one kernel request
//! per run it crosses, counted against its region's generation when it is
//! queued; its [`Ticket`]; and the reaping of completions, which accounts
//! each to its request, region and ticket.
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

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::ring::Request;
use super::{Inner, Region, RegionState, State, LEADER_TICK, MAX_IN_FLIGHT};
use crate::dma::{Completion, MrId};
use crate::{Errno, Error, Result};

pub(super) struct InFlight {
    pub(super) ticket: u64,
    pub(super) mr: u64,
    pub(super) generation: u64,
    pub(super) expected: i32,
}

pub(super) struct TicketState {
    pub(super) remaining: usize,
    pub(super) outcome: Completion,
    /// What the kernel returned for each request (bytes or `-errno`).
    pub(super) kernel: Vec<i32>,
    /// The region was invalidated when the request was submitted.
    pub(super) submitted_invalidated: bool,
    /// Source or sink kept open until every request completed.
    pub(super) file: Option<OwnedFd>,
    /// Whether `file` is one of the device's memfds (reused afterwards).
    pub(super) own_file: bool,
    pub(super) len_bytes: u64,
    /// The `Ticket` was dropped: whoever accounts its last completion
    /// releases it.
    pub(super) abandoned: bool,
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

    pub(super) fn wait_keep_file(
        &mut self,
    ) -> (Completion, Vec<i32>, Option<(OwnedFd, bool, u64)>) {
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
    pub(super) fn early_outcome(&self, mr: MrId, offset: u64, len: u64) -> Option<Completion> {
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

    pub(super) fn ready_ticket(self: &Arc<Self>, outcome: Completion) -> Ticket {
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
    /// current generation and queued under the state lock, then handed to
    /// the kernel outside it (see the module doc of `uring`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit(
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

    pub(super) fn give_back(&self, file: OwnedFd, own_file: bool, len: u64) {
        if own_file {
            self.files.give(file, len);
        }
    }

    pub(super) fn release_file(&self, t: TicketState) {
        if let Some(f) = t.file {
            self.give_back(f, t.own_file, t.len_bytes);
        }
    }

    /// Account completions taken off the queue, release the abandoned
    /// tickets they finish, and wake every waiter (also when `batch` is
    /// empty: a waiter that found the queue's lock taken waits for this).
    pub(super) fn account(&self, batch: &[(u64, i32)]) {
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
    pub(super) fn poll_completions(&self) {
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
    pub(super) fn wait_for_completions(&self, st: &mut MutexGuard<'_, State>) {
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
    pub(super) fn complete(&mut self, user_data: u64, res: i32) -> Option<TicketState> {
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
    pub(super) fn uncount(&mut self, generation: u64, n: usize) {
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
