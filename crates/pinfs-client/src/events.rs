//! The client's queue of lease notifications: [`BreakEvent`]s the daemon
//! sent, waiting for the application, with a descriptor (an eventfd) that
//! polls readable while one is queued — or once the connection is gone, so
//! that an event loop learns of that too.
//!
//! Bounded ([`MAX_QUEUED_EVENTS`]): past it the next receive reports
//! `EOVERFLOW` (list the leases to resynchronise), as the core's per-owner
//! queue does — but no lease's latest event is lost: one arriving at a full
//! queue replaces the queued event of the same lease, or is kept aside, one
//! per lease ([`MAX_COALESCED_LEASES`]), and delivered after the queue. A
//! break notice missed would leave the application holding a lease it is
//! asked to give up — and, for a layout lease, get its process killed.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pinfs::lease::BreakEvent;
use pinfs::{Errno, Error, Result};
use rustix::event::{eventfd, EventfdFlags};

/// Most events queued for the application; past it events coalesce per
/// lease.
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// Most leases whose latest event is kept aside while the queue is full
/// (more than a client can hold on many files); beyond, events are dropped
/// and only counted.
pub const MAX_COALESCED_LEASES: usize = 65_536;

struct State {
    events: VecDeque<BreakEvent>,
    /// The latest event of each lease that found the queue full, by lease.
    coalesced: BTreeMap<u64, BreakEvent>,
    dropped: u64,
    /// Why the connection ended, once it has.
    closed: Option<String>,
    /// Whether the eventfd's counter is non-zero.
    signalled: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    eventfd: OwnedFd,
}

/// The lease notifications of one client. Clones share the queue.
#[derive(Clone)]
pub struct Events {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.shared.state.lock().events.len())
            .finish()
    }
}

impl Events {
    pub(crate) fn new() -> Result<Self> {
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::from(Errno(e.raw_os_error())))?;
        Ok(Events {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    events: VecDeque::new(),
                    coalesced: BTreeMap::new(),
                    dropped: 0,
                    closed: None,
                    signalled: false,
                }),
                ready: Condvar::new(),
                eventfd: efd,
            }),
        })
    }

    /// A descriptor that polls readable (`POLLIN`) while an event is queued
    /// or the connection is gone. Do not read it: receiving resets it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.eventfd.as_fd()
    }

    fn raise(&self, st: &mut State) {
        if !st.signalled {
            st.signalled = true;
            let _ = rustix::io::write(&self.shared.eventfd, &1u64.to_ne_bytes());
        }
    }

    fn settle(&self, st: &mut State) {
        if st.signalled
            && st.events.is_empty()
            && st.coalesced.is_empty()
            && st.dropped == 0
            && st.closed.is_none()
        {
            st.signalled = false;
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.shared.eventfd, &mut b);
        }
    }

    pub(crate) fn push(&self, ev: BreakEvent) {
        let mut st = self.shared.state.lock();
        if st.events.len() >= MAX_QUEUED_EVENTS {
            // Overflow: reported once, but the lease's latest event is kept.
            st.dropped += 1;
            let lease = ev.lease.id.0;
            if let Some(q) = st.events.iter_mut().rev().find(|q| q.lease.id.0 == lease) {
                *q = ev;
            } else if st.coalesced.len() < MAX_COALESCED_LEASES || st.coalesced.contains_key(&lease)
            {
                st.coalesced.insert(lease, ev);
            }
        } else {
            st.events.push_back(ev);
        }
        self.raise(&mut st);
        drop(st);
        self.shared.ready.notify_all();
    }

    pub(crate) fn close(&self, reason: String) {
        let mut st = self.shared.state.lock();
        st.closed.get_or_insert(reason);
        self.raise(&mut st);
        drop(st);
        self.shared.ready.notify_all();
    }

    fn take(&self, st: &mut State) -> Result<Option<BreakEvent>> {
        if st.dropped > 0 {
            st.dropped = 0;
            self.settle(st);
            return Err(Errno::EOVERFLOW.into());
        }
        if let Some(ev) = st.events.pop_front() {
            self.settle(st);
            return Ok(Some(ev));
        }
        if let Some((_, ev)) = st.coalesced.pop_first() {
            self.settle(st);
            return Ok(Some(ev));
        }
        if st.closed.is_some() {
            return Err(Errno::ENOTCONN.into());
        }
        Ok(None)
    }

    /// The next event, if one is queued. `EOVERFLOW` once after events were
    /// dropped; `ENOTCONN` when the queue is empty and the connection gone.
    pub fn try_recv(&self) -> Result<Option<BreakEvent>> {
        let mut st = self.shared.state.lock();
        self.take(&mut st)
    }

    /// The next event, waiting up to `timeout` (`Ok(None)` when none came).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<BreakEvent>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock();
        loop {
            if let Some(ev) = self.take(&mut st)? {
                return Ok(Some(ev));
            }
            if self.shared.ready.wait_until(&mut st, deadline).timed_out() {
                return self.take(&mut st);
            }
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        let st = self.shared.state.lock();
        st.events.len() + st.coalesced.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the connection ended, once it has.
    pub fn closed_reason(&self) -> Option<String> {
        self.shared.state.lock().closed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinfs::lease::{
        BreakReason, ByteRange, EventKind, FileKey, HandleId, LeaseId, LeaseInfo, LeaseKind,
        LeaseState, LeaseType, OwnerId,
    };

    fn event(lease: u64, kind: EventKind) -> BreakEvent {
        BreakEvent {
            kind,
            lease: LeaseInfo {
                id: LeaseId(lease),
                kind: LeaseKind::Layout,
                ty: LeaseType::Read,
                target: LeaseType::Unlock,
                unbreakable: false,
                state: LeaseState::Breaking,
                owner: OwnerId(6),
                handle: HandleId(7),
                file: FileKey(8),
                range: ByteRange::WHOLE,
            },
            target: LeaseType::Unlock,
            reason: BreakReason::LayoutChange(ByteRange::new(0, 4096)),
            breaker: OwnerId(9),
        }
    }

    #[test]
    fn a_break_at_a_full_queue_is_never_lost() {
        let q = Events::new().unwrap();
        for _ in 0..MAX_QUEUED_EVENTS {
            q.push(event(1, EventKind::Refused));
        }
        // Lease 2's break and lease 1's loss find the queue full.
        q.push(event(2, EventKind::Break));
        q.push(event(1, EventKind::Lost));
        let mut got = Vec::new();
        let mut overflowed = false;
        loop {
            match q.try_recv() {
                Ok(Some(ev)) => got.push(ev),
                Ok(None) => break,
                Err(e) if e.errno() == Errno::EOVERFLOW => overflowed = true,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(overflowed, "the overflow was not reported");
        assert!(
            got.iter()
                .any(|e| e.lease.id == LeaseId(2) && e.kind == EventKind::Break),
            "lease 2's break was dropped"
        );
        assert_eq!(
            got.iter()
                .rev()
                .find(|e| e.lease.id == LeaseId(1))
                .map(|e| e.kind),
            Some(EventKind::Lost),
            "lease 1's latest event was dropped"
        );
    }
}
