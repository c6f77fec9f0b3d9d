//! How lease holders are told (SPEC §3.3 step 2): break callbacks, the
//! per-owner event queue pollable through an eventfd, and real signals to
//! other processes.
//!
//! The engine builds a [`BreakEvent`] for every break, refused change and
//! forced break, and hands it — with its own lock released — to the lease's
//! callback, the owner's callback and the owner's [`EventQueue`]. The queue
//! is bounded ([`MAX_EVENTS_PER_OWNER`]): past the
//! limit events are counted, not stored, and the next receive reports
//! [`QueueError::Overflow`] so that the holder resynchronises from
//! `LeaseEngine::list` (as inotify's `IN_Q_OVERFLOW`). Callbacks are not
//! bounded: they see every event.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::sync::{self, Condvar, Mutex, Runtime};
use super::{BreakEvent, LeaseInfo, MAX_EVENTS_PER_OWNER};
use crate::Errno;

pub use super::signal::{queue_signal, raise_signal, signal_callback};

/// A break callback: runs on the breaker's thread, with no engine lock
/// held. It may call back into the engine (release the lease) but must not
/// block on it.
pub type BreakCallback = Arc<dyn Fn(&BreakEvent) + Send + Sync>;

/// The revoke hook: runs when `break_time` passed and a layout lease is
/// forcibly removed, *before* any breaker waiting on that lease proceeds.
/// Later work revokes the lease's mappings and device registrations here.
pub type RevokeHook = Arc<dyn Fn(&LeaseInfo) + Send + Sync>;

/// How long a receiver spins for an event before it parks (real runtime
/// only): a break answered within a few microseconds never pays a wake-up.
const RECV_SPIN: Duration = Duration::from_micros(20);

/// Why a receive returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// This many events were dropped because the queue was full: list the
    /// owner's leases to learn which are breaking.
    Overflow {
        /// How many were dropped since the last report.
        dropped: u64,
    },
    /// The owner was dropped (`LeaseEngine::drop_owner`); no event will come.
    Closed,
}

impl QueueError {
    /// The errno an edge reports for it.
    pub fn errno(self) -> Errno {
        match self {
            QueueError::Overflow { .. } => Errno::EOVERFLOW,
            QueueError::Closed => Errno::EBADF,
        }
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Overflow { dropped } => {
                write!(f, "lease event queue overflowed: {dropped} events dropped")
            }
            QueueError::Closed => f.write_str("lease event queue closed"),
        }
    }
}

impl std::error::Error for QueueError {}

struct QueueState {
    events: VecDeque<BreakEvent>,
    dropped: u64,
    closed: bool,
    /// Whether the eventfd counter is non-zero (readable).
    signalled: bool,
}

pub(crate) struct QueueInner {
    runtime: Runtime,
    state: Mutex<QueueState>,
    ready: Condvar,
    /// Events (or an overflow or close report) waiting: lets a receiver spin
    /// without the lock.
    pending: AtomicUsize,
    /// Created by the first [`EventQueue::fd`] call (under the state lock):
    /// a holder that never polls pays no system call per event.
    eventfd: OnceLock<OwnedFd>,
}

/// The event queue of one owner. Clones share the queue. Its [`fd`](Self::fd)
/// polls readable (`POLLIN`) while an event is waiting, so that a holder can
/// wait for breaks in its own event loop; a holder that only calls
/// [`recv`](Self::recv) never creates it.
#[derive(Clone)]
pub struct EventQueue {
    inner: Arc<QueueInner>,
}

impl QueueInner {
    pub(crate) fn new(runtime: Runtime) -> Arc<Self> {
        Arc::new(QueueInner {
            runtime,
            state: Mutex::new(
                runtime,
                QueueState {
                    events: VecDeque::new(),
                    dropped: 0,
                    closed: false,
                    signalled: false,
                },
            ),
            ready: Condvar::new(runtime),
            pending: AtomicUsize::new(0),
            eventfd: OnceLock::new(),
        })
    }

    fn has_news(st: &QueueState) -> bool {
        !st.events.is_empty() || st.dropped > 0 || st.closed
    }

    fn signal_fd(&self, st: &mut QueueState) {
        if let Some(fd) = self.eventfd.get() {
            if !st.signalled {
                // A full counter (EAGAIN) still polls readable: nothing to do.
                let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
                st.signalled = true;
            }
        }
    }

    fn unsignal_fd_if_idle(&self, st: &mut QueueState) {
        if st.signalled && !Self::has_news(st) {
            if let Some(fd) = self.eventfd.get() {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(fd, &mut buf);
            }
            st.signalled = false;
        }
    }

    /// Queues `event`, or counts it as dropped when the queue is full.
    pub(crate) fn push(&self, event: BreakEvent) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        if st.events.len() >= MAX_EVENTS_PER_OWNER {
            if st.dropped == 0 {
                tracing::warn!(
                    target: "pinfs::lease",
                    owner = event.lease.owner.0,
                    limit = MAX_EVENTS_PER_OWNER,
                    "lease event queue full: dropping events"
                );
                self.pending.fetch_add(1, Ordering::Release);
            }
            st.dropped += 1;
        } else {
            st.events.push_back(event);
            self.pending.fetch_add(1, Ordering::Release);
        }
        self.signal_fd(&mut st);
        drop(st);
        self.ready.notify_all();
    }

    /// Closes the queue: receivers get the queued events, then `Closed`.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        if !st.closed {
            st.closed = true;
            self.pending.fetch_add(1, Ordering::Release);
            self.signal_fd(&mut st);
        }
        drop(st);
        self.ready.notify_all();
    }

    fn take(&self, st: &mut QueueState) -> Result<Option<BreakEvent>, QueueError> {
        let out = if st.dropped > 0 {
            let dropped = std::mem::take(&mut st.dropped);
            self.pending.fetch_sub(1, Ordering::Relaxed);
            Err(QueueError::Overflow { dropped })
        } else if let Some(ev) = st.events.pop_front() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            Ok(Some(ev))
        } else if st.closed {
            // `Closed` stays pending: every later receive reports it too.
            Err(QueueError::Closed)
        } else {
            Ok(None)
        };
        self.unsignal_fd_if_idle(st);
        out
    }
}

impl EventQueue {
    pub(crate) fn from_inner(inner: Arc<QueueInner>) -> Self {
        EventQueue { inner }
    }

    /// The eventfd: readable while an event (or an overflow or close report)
    /// is waiting. Poll it, then call [`try_recv`](Self::try_recv) until it
    /// returns `Ok(None)`; do not read it yourself. Created on the first
    /// call (errors: those of `eventfd(2)`, such as `EMFILE`).
    pub fn fd(&self) -> Result<BorrowedFd<'_>, Errno> {
        let inner = &self.inner;
        if let Some(fd) = inner.eventfd.get() {
            return Ok(fd.as_fd());
        }
        use rustix::event::{eventfd, EventfdFlags};
        let mut st = inner.state.lock();
        if inner.eventfd.get().is_none() {
            let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .map_err(|e| Errno(e.raw_os_error()))?;
            // Set under the state lock, so no push can miss it.
            let _ = inner.eventfd.set(fd);
            if QueueInner::has_news(&st) {
                inner.signal_fd(&mut st);
            }
        }
        drop(st);
        Ok(inner.eventfd.get().expect("just set").as_fd())
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Result<Option<BreakEvent>, QueueError> {
        let mut st = self.inner.state.lock();
        self.inner.take(&mut st)
    }

    /// Waits for the next event.
    pub fn recv(&self) -> Result<BreakEvent, QueueError> {
        loop {
            if let Some(ev) = self.recv_until(None)? {
                return Ok(ev);
            }
        }
    }

    /// Waits at most `timeout` for the next event. (Under the model checker
    /// time is not modelled here: the wait may time out at any point.)
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<BreakEvent>, QueueError> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Option<BreakEvent>, QueueError> {
        let inner = &self.inner;
        if inner.runtime.may_spin() {
            sync::spin_until(RECV_SPIN, || inner.pending.load(Ordering::Acquire) > 0);
        }
        let mut st = inner.state.lock();
        loop {
            if let Some(ev) = inner.take(&mut st)? {
                return Ok(Some(ev));
            }
            match (inner.runtime, deadline) {
                (Runtime::Std, None) => st = inner.ready.wait(st),
                (Runtime::Std, Some(d)) => {
                    if Instant::now() >= d {
                        return Ok(None);
                    }
                    st = inner.ready.wait_until(st, d);
                }
                #[cfg(feature = "model-check")]
                (Runtime::Model, None) => st = inner.ready.wait(st),
                #[cfg(feature = "model-check")]
                (Runtime::Model, Some(_)) => {
                    drop(st);
                    sync::yield_now(inner.runtime);
                    return self.try_recv();
                }
            }
        }
    }

    /// How many events are waiting.
    pub fn len(&self) -> usize {
        self.inner.state.lock().events.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventQueue")
            .field("fd", &self.inner.eventfd.get())
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{
        BreakReason, ByteRange, EventKind, FileKey, HandleId, LeaseId, LeaseKind, LeaseState,
        LeaseType, OwnerId,
    };

    fn event(n: u64) -> BreakEvent {
        let lease = LeaseInfo {
            id: LeaseId(n),
            kind: LeaseKind::Lease,
            ty: LeaseType::Write,
            target: LeaseType::Unlock,
            unbreakable: false,
            state: LeaseState::Breaking,
            owner: OwnerId(1),
            handle: HandleId(1),
            file: FileKey(1),
            range: ByteRange::WHOLE,
        };
        BreakEvent {
            kind: EventKind::Break,
            lease,
            target: LeaseType::Unlock,
            reason: BreakReason::Truncate,
            breaker: OwnerId(2),
        }
    }

    fn readable(q: &EventQueue) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let fd = q.fd().unwrap();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        poll(&mut fds, Some(&rustix::time::Timespec::default())).unwrap() == 1
    }

    #[test]
    fn eventfd_is_readable_exactly_while_events_wait() {
        let q = EventQueue::from_inner(QueueInner::new(Runtime::Std));
        assert!(!readable(&q));
        q.inner.push(event(1));
        q.inner.push(event(2));
        assert!(readable(&q));
        assert_eq!(q.try_recv().unwrap().unwrap().lease.id, LeaseId(1));
        assert!(readable(&q));
        assert_eq!(q.recv().unwrap().lease.id, LeaseId(2));
        assert!(!readable(&q));
        assert_eq!(q.try_recv(), Ok(None));
        assert_eq!(
            q.recv_timeout(Duration::from_millis(1)),
            Ok(None),
            "times out"
        );
    }

    #[test]
    fn eventfd_created_late_reflects_events_already_queued() {
        let q = EventQueue::from_inner(QueueInner::new(Runtime::Std));
        q.inner.push(event(1));
        assert!(q.inner.eventfd.get().is_none(), "no fd until asked for");
        assert!(readable(&q));
        q.try_recv().unwrap().unwrap();
        assert!(!readable(&q));
    }

    #[test]
    fn overflow_is_reported_once_then_events_continue() {
        let q = EventQueue::from_inner(QueueInner::new(Runtime::Std));
        for n in 0..(MAX_EVENTS_PER_OWNER as u64 + 3) {
            q.inner.push(event(n));
        }
        assert_eq!(q.len(), MAX_EVENTS_PER_OWNER);
        assert_eq!(q.try_recv(), Err(QueueError::Overflow { dropped: 3 }));
        assert_eq!(
            QueueError::Overflow { dropped: 3 }.errno(),
            Errno::EOVERFLOW
        );
        for n in 0..MAX_EVENTS_PER_OWNER as u64 {
            assert_eq!(q.try_recv().unwrap().unwrap().lease.id, LeaseId(n));
        }
        assert_eq!(q.try_recv(), Ok(None));
        assert!(!readable(&q));
    }

    #[test]
    fn close_wakes_a_blocked_receiver() {
        let q = EventQueue::from_inner(QueueInner::new(Runtime::Std));
        q.inner.push(event(7));
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            let first = q2.recv();
            let second = q2.recv();
            (first, second)
        });
        std::thread::sleep(Duration::from_millis(20));
        q.inner.close();
        let (first, second) = t.join().unwrap();
        assert_eq!(first.unwrap().lease.id, LeaseId(7));
        assert_eq!(second, Err(QueueError::Closed));
        assert!(readable(&q));
        q.inner.push(event(8));
        assert_eq!(q.try_recv(), Err(QueueError::Closed));
    }
}
