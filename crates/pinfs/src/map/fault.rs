//! The fault service: one `userfaultfd` per file system and one thread that
//! answers its faults.
//!
//! Holes (and unwritten or shared blocks) of writable shared mappings are
//! private anonymous memory registered with the userfaultfd in both modes,
//! `MISSING` and `WP`. The kernel then stops a thread at its first access
//! to such a page and queues a message here; the service thread asks the
//! file system what to do:
//!
//! - a read fault is answered with `UFFDIO_COPY` of zeros (a hole) or of the
//!   block's bytes (a shared block), *write-protected* in the same call
//!   (`UFFDIO_COPY_MODE_WP`), so no pool block is allocated and a later
//!   write to the page faults again;
//! - a write fault (on a missing page, or on one of those write-protected
//!   copies) makes the file system allocate, convert or unshare the block;
//!   the commit re-places the page with the pool block (`MAP_FIXED` over
//!   the registered anonymous page), and `UFFDIO_WAKE` lets the thread retry
//!   its store, now into the pool.
//!
//! Only anonymous memory is ever registered, never the pool, so this works
//! on every pool kind (the kernel cannot write-protect pages of a regular
//! file on a block file system, and could not make a `MAP_FIXED` swap of a
//! write-protected pool page atomic). Verified on Linux 6.18: a thread
//! blocked in a userfault whose page is replaced by `MAP_FIXED` resumes
//! correctly after `UFFDIO_WAKE`, and `process_vm_readv`/`writev` wait for the
//! service like a CPU access does.
//!
//! # Safety
//!
//! The unsafe code here is the `userfaultfd` system call and its `ioctl`s.
//! Each ioctl gets a pointer to a properly sized, initialised `#[repr(C)]`
//! argument that lives across the call. `UFFDIO_COPY` reads `len` bytes from
//! a source buffer the caller passes as a slice of at least that length, and
//! writes only into pages of a registered range — memory the kernel itself
//! manages for the registering mapping, never Rust-owned memory.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use crate::{Error, Result};

// The userfaultfd ABI (include/uapi/linux/userfaultfd.h). libc 0.2 does not
// carry the ioctl numbers, so they are spelled out: `_IOWR(0xAA, nr, size)`
// is `0xC000_0000 | size << 16 | 0xAA << 8 | nr`, `_IOR` is `0x8000_0000 | ...`.
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = 0xC018_AA3F;
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
const UFFDIO_WAKE: u64 = 0x8010_AA02;
const UFFDIO_COPY: u64 = 0xC028_AA03;
/// `_IO(0xAA, 0)` on `/dev/userfaultfd`.
const USERFAULTFD_IOC_NEW: u64 = 0xAA00;
const UFFD_USER_MODE_ONLY: i32 = 1;

const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// `sizeof(struct uffd_msg)`.
const MSG_BYTES: usize = 32;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// One page fault the kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    /// The faulting address (page-aligned by the kernel).
    pub address: u64,
    /// A store (missing page written, or a write-protected page).
    pub write: bool,
}

/// A userfaultfd.
#[derive(Debug)]
pub(crate) struct Uffd {
    fd: OwnedFd,
}

/// Issue `request` with `arg` as its argument.
///
/// # Safety
///
/// `T` must be the `#[repr(C)]` argument type the kernel expects for
/// `request` (the size the request number encodes), and every pointer it
/// carries must satisfy that request's contract: for `UFFDIO_COPY`, `src`
/// readable for `len` bytes and `dst` inside a range this process registered
/// (memory no Rust reference points into). A mismatch lets the kernel read
/// or write memory Rust does not expect it to.
unsafe fn ioctl<T>(fd: &OwnedFd, request: u64, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is a live, exclusively borrowed value; that it is the
    // right type for `request` is the caller's promise.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as _,
            (arg as *mut T).cast::<libc::c_void>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// Open a userfaultfd and negotiate the API. Tries the system call, then
    /// `/dev/userfaultfd` (which unprivileged users may be given), then
    /// user-mode-only faults (enough for loads and stores, not for system
    /// calls that touch the pages).
    pub(crate) fn open() -> Result<Uffd> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let by_syscall = |extra: i32| -> std::io::Result<OwnedFd> {
            // SAFETY: `userfaultfd(2)` takes only flags and returns a new
            // descriptor, which becomes owned here.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | extra) };
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: a fresh descriptor nobody else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
            }
        };
        let by_device = || -> std::io::Result<OwnedFd> {
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd")?;
            // SAFETY: `USERFAULTFD_IOC_NEW` takes the flags as its argument and
            // returns a new descriptor, which becomes owned here.
            let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                // SAFETY: a fresh descriptor nobody else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        let fd = by_syscall(0)
            .or_else(|_| by_device())
            .or_else(|_| by_syscall(UFFD_USER_MODE_ONLY))
            .map_err(|e| Error::media("userfaultfd", e))?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_PAGEFAULT_FLAG_WP,
            ioctls: 0,
        };
        // SAFETY: `UFFDIO_API` takes a `struct uffdio_api`, which `UffdioApi`
        // spells out; it carries no pointers.
        unsafe { ioctl(&fd, UFFDIO_API, &mut api) }
            .map_err(|e| Error::media("UFFDIO_API", e))?;
        Ok(Uffd { fd })
    }

    /// Register `start..start+len` (private anonymous memory) for missing and
    /// write-protect faults.
    ///
    /// # Safety
    ///
    /// The range must be memory of a mapping region (`region.rs`) that no
    /// Rust reference points into and that stays so while it is registered:
    /// [`Uffd::copy_wp`] fills missing pages of registered ranges with bytes
    /// of its choosing, which would otherwise change memory behind Rust's
    /// back (and accesses to the range now wait for the fault service).
    pub(crate) unsafe fn register(&self, start: usize, len: u64) -> Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: `UFFDIO_REGISTER` takes a `struct uffdio_register`
        // (`UffdioRegister`); the range is the caller's promise.
        unsafe { ioctl(&self.fd, UFFDIO_REGISTER, &mut reg) }
            .map_err(|e| Error::media("UFFDIO_REGISTER", e))
    }

    /// Fill the missing page(s) at `dst` with `src` (page-multiple length),
    /// write-protected, and wake the threads waiting on them. A page that is
    /// no longer missing or registered (re-placed meanwhile) is not an error:
    /// the threads are woken to retry.
    pub(crate) fn copy_wp(&self, dst: usize, src: &[u8]) -> Result<()> {
        let mut c = UffdioCopy {
            dst: dst as u64,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: UFFDIO_COPY_MODE_WP,
            copy: 0,
        };
        // SAFETY: `UFFDIO_COPY` takes a `struct uffdio_copy` (`UffdioCopy`);
        // `src` is a live slice of `len` bytes, and the kernel writes only
        // missing pages of registered ranges, which `register`'s callers
        // promised are region memory no Rust reference points into (any
        // other `dst` fails with `ENOENT`/`EINVAL`).
        match unsafe { ioctl(&self.fd, UFFDIO_COPY, &mut c) } {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) => {
                self.wake(dst, src.len() as u64);
                Ok(())
            }
            Err(e) => Err(Error::media("UFFDIO_COPY", e)),
        }
    }

    /// Wake the threads waiting on faults in `start..start+len`.
    pub(crate) fn wake(&self, start: usize, len: u64) {
        let mut r = UffdioRange {
            start: start as u64,
            len,
        };
        // SAFETY: `UFFDIO_WAKE` takes a `struct uffdio_range` (`UffdioRange`)
        // and only wakes threads; it touches no memory of the range.
        if let Err(e) = unsafe { ioctl(&self.fd, UFFDIO_WAKE, &mut r) } {
            tracing::warn!(target: "pinfs::map", error = %e, "UFFDIO_WAKE failed");
        }
    }

    /// The next queued fault, if any (the descriptor is non-blocking).
    fn next(&self) -> std::io::Result<Option<Fault>> {
        let mut msg = [0u8; MSG_BYTES];
        match rustix::io::read(&self.fd, &mut msg) {
            Ok(MSG_BYTES) => {}
            Ok(_) => return Ok(None),
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if msg[0] != UFFD_EVENT_PAGEFAULT {
            return Ok(None);
        }
        let word = |at: usize| u64::from_ne_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
        let flags = word(8);
        Ok(Some(Fault {
            address: word(16),
            write: flags & (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP) != 0,
        }))
    }
}

/// The thread answering one userfaultfd; stopped and joined on drop.
#[derive(Debug)]
pub(crate) struct FaultService {
    uffd: Arc<Uffd>,
    stop: OwnedFd,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl FaultService {
    /// Open a userfaultfd and start the thread that passes each fault to
    /// `handle`.
    pub(crate) fn start<F>(handle: F) -> Result<FaultService>
    where
        F: Fn(&Uffd, Fault) + Send + 'static,
    {
        let uffd = Arc::new(Uffd::open()?);
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::media("eventfd", e.into()))?;
        let stop_thread = stop
            .try_clone()
            .map_err(|e| Error::media("dup eventfd", e))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (u, s) = (uffd.clone(), stopping.clone());
        let thread = thread::Builder::new()
            .name("pinfs-faults".into())
            .spawn(move || serve(&u, &stop_thread, &s, handle))
            .map_err(|e| Error::media("spawn the fault service thread", e))?;
        let thread_id = thread.thread().id();
        Ok(FaultService {
            uffd,
            stop,
            stopping,
            thread: Some(thread),
            thread_id,
        })
    }

    /// The userfaultfd, to register ranges with.
    pub(crate) fn uffd(&self) -> &Arc<Uffd> {
        &self.uffd
    }
}

fn serve<F: Fn(&Uffd, Fault)>(uffd: &Uffd, stop: &OwnedFd, stopping: &AtomicBool, handle: F) {
    loop {
        let mut fds = [
            PollFd::new(&uffd.fd, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(target: "pinfs::map", error = %e, "fault service: poll failed");
                return;
            }
        }
        if stopping.load(Ordering::Acquire) {
            return;
        }
        loop {
            match uffd.next() {
                Ok(Some(fault)) => handle(uffd, fault),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(target: "pinfs::map", error = %e, "fault service: read failed");
                    return;
                }
            }
        }
    }
}

impl Drop for FaultService {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = rustix::io::write(self.stop.as_fd(), &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            // The file system may be dropped by the service thread itself
            // (it held the last reference while answering a fault): it then
            // exits on its own after this returns.
            if thread::current().id() != self.thread_id {
                let _ = t.join();
            }
        }
    }
}
