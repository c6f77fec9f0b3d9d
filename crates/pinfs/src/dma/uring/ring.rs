//! The io_uring instance of the `uring` device and every system call made on
//! it: the sparse fixed-buffer table (registered once, its entries filled,
//! replaced and emptied one by one), submission of requests, and the
//! wait for completions.
//!
//! It owns the unsafe half of the device so that `uring/mod.rs`, which owns
//! the protocol (regions, generations, in-flight counts, confirmation), is
//! plain safe code.
//!
//! # Safety
//!
//! - A fixed-buffer entry names memory the kernel pins (FOLL_LONGTERM) and
//!   writes into by DMA for as long as the entry, or any request that looked
//!   it up, lives. Every iovec given to [`Ring::set_entry`] points into
//!   memory that outlives the ring: pool memory (the device holds the pool's
//!   `Arc<dyn Media>` until after the ring is closed) or a device-owned
//!   scratch mapping (dropped only after the table is unregistered). The
//!   kernel holds its own page references, so even memory unmapped too early
//!   would not be written through a dangling address: it would stay
//!   allocated, pinned, until the entry goes.
//! - A submitted entry names a file descriptor and a fixed buffer address;
//!   callers keep the descriptor open until the request's completion is
//!   reaped (the request record owns it), and the address lies in a
//!   registered buffer (the kernel checks it against the entry and fails the
//!   request with `EFAULT` otherwise — no user memory is reached through it).
//! - The submission queue is touched only by a holder of the one [`SqToken`],
//!   which lives inside the device's state lock; the completion queue only by
//!   a holder of the one [`CqToken`], which lives in a lock of its own. So
//!   `submission_shared` and `completion_shared` never hand out two views of
//!   one queue at a time.
#![allow(unsafe_code)]

use std::io;

use io_uring::{opcode, squeue, types, IoUring};

/// Submission-queue depth of the device's ring. Requests beyond it wait in
/// user space (the queue is flushed to the kernel whenever it fills).
pub const RING_ENTRIES: u32 = 256;

/// Entries of the sparse fixed-buffer table, registered once at creation.
/// One registration takes one entry per contiguous run of pool pages. It is
/// the kernel's own maximum (`IORING_MAX_REG_BUFFERS`, 1 << 14); the entry
/// index of a request is a `u16`.
pub const TABLE_ENTRIES: u32 = 1 << 14;

/// Longest fixed buffer the kernel accepts (`SZ_1G`, checked by
/// `io_buffer_validate`): longer runs of pool pages take several entries.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// `user_data` of a cancellation request (its own completion is ignored).
pub const CANCEL_USER_DATA: u64 = u64::MAX - 1;

/// The right to read the completion queue: exactly one exists per ring,
/// kept in its own lock, held by the thread that reaps for everyone (the
/// leader, see the `uring` module doc).
#[derive(Debug)]
pub struct CqToken(());

/// The right to use the submission queue: exactly one exists per ring, kept
/// inside the device's state lock, so submissions are ordered against
/// buffer-table updates by that lock.
#[derive(Debug)]
pub struct SqToken(());

/// One request to submit.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// `READ_FIXED` (file → buffer: a device write) or `WRITE_FIXED`
    /// (buffer → file: a device read).
    pub into_buffer: bool,
    /// The source or sink descriptor.
    pub fd: i32,
    /// Offset in that file (ignored by the kernel for pipes).
    pub file_offset: u64,
    /// Address inside the fixed buffer.
    pub addr: u64,
    /// Bytes (at most [`MAX_ENTRY_BYTES`]).
    pub len: u32,
    /// Fixed-buffer table index.
    pub entry: u16,
    /// Run after the previous request of the same batch (`IOSQE_IO_LINK`
    /// on the previous one), so a stream source is consumed in order.
    pub linked: bool,
    /// Returned in the completion.
    pub user_data: u64,
}

/// The device's io_uring.
pub struct Ring {
    ring: IoUring,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}

impl Ring {
    /// A new ring with its sparse buffer table, and the one submission token.
    pub fn new() -> io::Result<(Ring, SqToken, CqToken)> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        ring.submitter().register_buffers_sparse(TABLE_ENTRIES)?;
        Ok((Ring { ring }, SqToken(()), CqToken(())))
    }

    /// Point table entry `entry` at `base..base + len` (the kernel pins those
    /// pages long-term, FOLL_LONGTERM), or empty it (`None`). Replacing an
    /// entry drops the table's reference to the old buffer: requests that
    /// already looked it up keep theirs until they complete. Called with the
    /// state lock held (`_token`), so no submission interleaves.
    pub fn set_entry(
        &self,
        _token: &mut SqToken,
        entry: u32,
        buf: Option<(u64, u64)>,
    ) -> io::Result<()> {
        let (base, len) = buf.unwrap_or((0, 0));
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let iov = libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `iov` names pool memory or device-owned scratch memory,
        // both of which outlive the ring (module doc); a null base empties
        // the entry. The kernel copies the iovec before returning.
        unsafe {
            self.ring
                .submitter()
                .register_buffers_update(entry, &[iov], None)
        }
    }

    /// Empty the whole table (at shutdown, after every request completed).
    pub fn unregister_all(&self) -> io::Result<()> {
        self.ring.submitter().unregister_buffers()
    }

    /// Queue `requests` under the state lock (`_token`); linked requests
    /// are chained to their predecessor. They reach the kernel at the next
    /// [`Ring::flush`] (or earlier, when the queue fills). A linked batch
    /// longer than the queue is refused (`E2BIG`): a chain must be queued
    /// whole to stay a chain. On an error, the first `pushed` requests are
    /// queued all the same (they will run), the others are not.
    pub fn queue(
        &self,
        _token: &mut SqToken,
        requests: &[Request],
    ) -> Result<(), (usize, io::Error)> {
        let linked = requests.iter().skip(1).any(|r| r.linked);
        if linked && requests.len() > RING_ENTRIES as usize {
            return Err((0, io::Error::from_raw_os_error(libc::E2BIG)));
        }
        if linked {
            // SAFETY: the token holder alone views the submission queue
            // (one view, dropped before any other is made).
            let sq = unsafe { self.ring.submission_shared() };
            let room = sq.capacity() - sq.len();
            drop(sq);
            if room < requests.len() {
                self.flush().map_err(|e| (0, e))?;
            }
        }
        let mut entries = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let e = if r.into_buffer {
                opcode::ReadFixed::new(types::Fd(r.fd), r.addr as *mut u8, r.len, r.entry)
                    .offset(r.file_offset)
                    .build()
            } else {
                opcode::WriteFixed::new(types::Fd(r.fd), r.addr as *const u8, r.len, r.entry)
                    .offset(r.file_offset)
                    .build()
            };
            let next_linked = requests.get(i + 1).is_some_and(|n| n.linked);
            let e = if next_linked {
                e.flags(squeue::Flags::IO_LINK)
            } else {
                e
            };
            entries.push(e.user_data(r.user_data));
        }
        self.push_all(&entries)
    }

    /// Queue a cancellation of every request in flight.
    pub fn cancel_all(&self, _token: &mut SqToken) -> io::Result<()> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL_USER_DATA);
        self.push_all(&[e]).map_err(|(_, e)| e)
    }

    /// Queue a cancellation of the request with `user_data` (a linked
    /// request's successors are cancelled with it).
    pub fn cancel(&self, _token: &mut SqToken, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(user_data))
            .build()
            .user_data(CANCEL_USER_DATA);
        self.push_all(&[e]).map_err(|(_, e)| e)
    }

    /// Push every entry (flushing whenever the queue is full); on an error,
    /// how many were pushed.
    fn push_all(&self, entries: &[squeue::Entry]) -> Result<(), (usize, io::Error)> {
        for (pushed, e) in entries.iter().enumerate() {
            loop {
                // SAFETY: only the holder of the one `SqToken` (taken by
                // every caller) creates a submission-queue view.
                let mut sq = unsafe { self.ring.submission_shared() };
                // SAFETY: the entry's descriptor stays open and its buffer
                // address lies in a registered buffer until its completion
                // is reaped (module doc).
                if unsafe { sq.push(e) }.is_ok() {
                    break;
                }
                drop(sq);
                self.flush().map_err(|e| (pushed, e))?;
            }
        }
        Ok(())
    }

    /// Hand every queued request to the kernel. Needs no lock: a request
    /// was counted when it was queued, and whichever thread's
    /// `io_uring_enter` passes it on, the kernel looks its entry up only
    /// after that (see the module doc of `uring`).
    pub fn flush(&self) -> io::Result<()> {
        loop {
            match self.ring.submitter().submit() {
                Ok(_) => return Ok(()),
                Err(e) if retryable(&e) => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Hand back every completion available now as `(user_data, result)`,
    /// by the holder of the one [`CqToken`].
    pub fn drain(&self, _token: &mut CqToken, out: &mut Vec<(u64, i32)>) {
        // SAFETY: only the holder of the one `CqToken` creates a
        // completion-queue view.
        let cq = unsafe { self.ring.completion_shared() };
        out.extend(cq.map(|c| (c.user_data(), c.result())));
    }

    /// Wait until at least one completion is available or `timeout` passes
    /// (the leader's wait; it also hands queued requests to the kernel).
    pub fn wait(&self, timeout: std::time::Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if retryable(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Errors of `io_uring_enter` that mean "try again".
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}
