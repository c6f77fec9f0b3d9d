//! Work requests and completions of the soft device: what a caller posts to
//! the send queue, what workers deliver into a completion queue, and the
//! completion queue itself.
//!
//! A completion queue never overflows: posting reserves its slot
//! ([`CQ_DEPTH`] outstanding requests per queue pair at most, `EAGAIN`
//! beyond), so a worker can always deliver. Every accepted request is
//! completed exactly once — by the worker, or, if it is dropped unserved
//! (a bug, a panic), by its own `Drop` with a device error — so a caller
//! waiting for it, and a buffer lent to it, are never left hanging.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::mem::{LentBuf, LentBytes};
use crate::dma::Completion;

/// Outstanding requests (posted, completion not yet polled) per queue pair.
pub const CQ_DEPTH: usize = 256;

/// A work request, as posted to the send queue. Requests name device
/// addresses — a key (lkey or rkey) and an IOVA — as RDMA does, never a
/// region and offset: the device resolves them itself.
#[derive(Debug)]
pub enum WorkRequest {
    /// Write `data` at `iova` of the region `key` names.
    Write {
        /// Returned in the completion.
        wr_id: u64,
        /// The region's lkey or rkey.
        key: u32,
        /// First device address written.
        iova: u64,
        /// The bytes: shared, so a caller can post the same buffer again
        /// and again without copying it (as a verbs request names a local
        /// buffer rather than carrying one).
        data: Arc<[u8]>,
    },
    /// Read `len` bytes at `iova` of the region `key` names.
    Read {
        /// Returned in the completion.
        wr_id: u64,
        /// The region's lkey or rkey.
        key: u32,
        /// First device address read.
        iova: u64,
        /// Bytes to read.
        len: u64,
    },
}

/// A completion queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The request's `wr_id`.
    pub wr_id: u64,
    /// How it ended.
    pub status: Completion,
    /// Bytes moved (the request's length when `status` is `Ok`, else 0).
    pub byte_len: u64,
    /// The bytes read (read requests that completed `Ok`; else empty).
    pub data: Vec<u8>,
}

/// What a request does, with its buffer.
pub(super) enum Op {
    Write(Payload),
    Read(Sink),
}

/// The bytes a write brings.
pub(super) enum Payload {
    Shared(Arc<[u8]>),
    Lent(LentBytes),
}

impl Payload {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Shared(v) => v,
            Payload::Lent(l) => l.as_slice(),
        }
    }
}

/// Where a read's bytes go.
pub(super) enum Sink {
    /// A buffer of this many bytes, allocated only when a worker serves the
    /// request: what queued reads hold in memory stays bounded by what the
    /// workers serve at once, not by the queue depths.
    Deferred(usize),
    Owned(Vec<u8>),
    Lent(LentBuf),
}

impl Sink {
    /// Allocate a deferred buffer.
    pub(super) fn materialize(&mut self) {
        if let Sink::Deferred(n) = *self {
            *self = Sink::Owned(vec![0; n]);
        }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Sink::Deferred(_) => &mut [],
            Sink::Owned(v) => v,
            Sink::Lent(l) => l.as_mut_slice(),
        }
    }
}

/// A request accepted by the device, on its way to a completion.
pub(super) struct Posted {
    pub(super) wr_id: u64,
    pub(super) key: u32,
    pub(super) iova: u64,
    pub(super) op: Op,
    cq: Arc<CompletionQueue>,
    completed: bool,
}

impl Posted {
    pub(super) fn new(wr_id: u64, key: u32, iova: u64, op: Op, cq: Arc<CompletionQueue>) -> Self {
        Posted {
            wr_id,
            key,
            iova,
            op,
            cq,
            completed: false,
        }
    }

    /// A request that was never accepted: no completion will be delivered;
    /// its completion-queue slot is the caller's to give back.
    pub(super) fn forget(mut self) -> Arc<CompletionQueue> {
        self.completed = true;
        Arc::clone(&self.cq)
    }

    /// Deliver the completion (after the last touch of the buffer).
    pub(super) fn complete(mut self, status: Completion) {
        let len = match &mut self.op {
            Op::Write(p) => p.as_slice().len(),
            Op::Read(Sink::Deferred(n)) => *n,
            Op::Read(s) => s.as_mut_slice().len(),
        } as u64;
        let data = match (&mut self.op, status) {
            (Op::Read(Sink::Owned(v)), Completion::Ok) => std::mem::take(v),
            _ => Vec::new(),
        };
        let byte_len = if status == Completion::Ok { len } else { 0 };
        self.completed = true;
        self.cq.deliver(WorkCompletion {
            wr_id: self.wr_id,
            status,
            byte_len,
            data,
        });
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        if !self.completed {
            self.cq.deliver(WorkCompletion {
                wr_id: self.wr_id,
                status: Completion::DeviceError(libc::ECANCELED),
                byte_len: 0,
                data: Vec::new(),
            });
        }
    }
}

/// A completion queue: entries delivered by workers, polled by its owner.
#[derive(Default)]
pub(super) struct CompletionQueue {
    state: Mutex<CqState>,
    ready: Condvar,
}

#[derive(Default)]
struct CqState {
    entries: VecDeque<WorkCompletion>,
    /// Posted and not yet polled (delivered or not).
    outstanding: usize,
}

impl CompletionQueue {
    /// Reserve a slot for one more request; false at [`CQ_DEPTH`].
    pub(super) fn reserve(&self) -> bool {
        let mut s = self.state.lock();
        if s.outstanding >= CQ_DEPTH {
            return false;
        }
        s.outstanding += 1;
        true
    }

    /// Give back a slot reserved for a request that was not accepted.
    pub(super) fn unreserve(&self) {
        let mut s = self.state.lock();
        s.outstanding = s.outstanding.saturating_sub(1);
    }

    fn deliver(&self, wc: WorkCompletion) {
        self.state.lock().entries.push_back(wc);
        self.ready.notify_all();
    }

    /// Requests posted and not yet polled.
    pub(super) fn outstanding(&self) -> usize {
        self.state.lock().outstanding
    }

    /// Up to `max` delivered entries; with `wait`, blocks until there is at
    /// least one (unless nothing is outstanding).
    pub(super) fn take(&self, max: usize, wait: bool) -> Vec<WorkCompletion> {
        let mut s = self.state.lock();
        while wait && s.entries.is_empty() && s.outstanding > 0 {
            self.ready.wait(&mut s);
        }
        let n = max.min(s.entries.len());
        s.outstanding -= n;
        s.entries.drain(..n).collect()
    }
}
