//! The client's queue of lease notifications: [`BreakEvent`]s the daemon
//! sent, waiting for the application, with a descriptor (an eventfd) that
//! polls readable while one is queued — or once the connection is gone, so
//! that an event loop learns of that too.
//!
//! Bounded ([`MAX_QUEUED_EVENTS`]): past it events are counted, not kept,
//! and the next receive reports `EOVERFLOW` (list the leases to
//! resynchronise), as the core's per-owner queue does.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pinfs::lease::BreakEvent;
use pinfs::{Errno, Error, Result};
use rustix::event::{eventfd, EventfdFlags};

/// Most events queued for the application; more are dropped and counted.
pub const MAX_QUEUED_EVENTS: usize = 4096;

struct State {
    events: VecDeque<BreakEvent>,
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
        if st.signalled && st.events.is_empty() && st.dropped == 0 && st.closed.is_none() {
            st.signalled = false;
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.shared.eventfd, &mut b);
        }
    }

    pub(crate) fn push(&self, ev: BreakEvent) {
        let mut st = self.shared.state.lock();
        if st.events.len() >= MAX_QUEUED_EVENTS {
            st.dropped += 1;
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
        self.shared.state.lock().events.len()
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
