//! The fault service: one `userfaultfd` per file system, one thread that
//! reads its faults and answers the read faults, and a bounded pool of
//! workers answering the write faults ([`FaultService`]).
//!
//! Holes (and unwritten or shared blocks) of writable shared mappings are
//! private anonymous memory registered with the userfaultfd in both modes,
//! `MISSING` and `WP`. The kernel then stops a thread at its first access
//! to such a page and queues a message here; the service thread reads it
//! and asks the file system what to do — itself for a read fault, through
//! a worker for a write fault:
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
//! No fault hangs: a write fault may wait in a lease break, but only on a
//! worker of its own: faults of one mapping are answered one at a time, and
//! a worker is started whenever a mapping has a fault no worker is answering
//! and no idle worker has been woken for it — so the workers number at most
//! the mappings with a fault in progress, and no mapping's fault ever waits
//! for a worker held by another mapping's lease break (nor for its own
//! holder's: a lease holder storing into a hole of its own mapping before
//! it releases gets a worker too). Read faults never wait for a worker at
//! all. If the service cannot go on (a read or poll error on the
//! userfaultfd, a thread ending unexpectedly), the file system re-places
//! every served page as the `SIGBUS` mapping and wakes every waiter
//! ([`OnLost`]).
//!
//! # Safety
//!
//! The unsafe code here is the `userfaultfd` system call and its `ioctl`s.
//! The generic `ioctl` helper is an `unsafe fn` (the argument type must
//! match the request); its callers are typed wrappers, one per request,
//! each passing a properly sized, initialised `#[repr(C)]` argument that
//! lives across the call. `Uffd::register` is `unsafe` too: only region
//! memory that Rust never references may be registered. `UFFDIO_COPY` reads `len` bytes from
//! a source buffer the caller passes as a slice of at least that length, and
//! writes only into pages of a registered range — memory the kernel itself
//! manages for the registering mapping, never Rust-owned memory.
//! [`sigbus_thread`] sends a signal (`tgkill`/`kill`) and touches no memory.
//!
//! A fault that cannot be answered at all — its page can be made neither
//! the pool block nor the `SIGBUS` mapping, or it keeps faulting with
//! nothing changing ([`crate::map::MAX_FAULTS_WITHOUT_PROGRESS`]) — gets the
//! kernel's answer to an unservable fault: `SIGBUS` sent to the faulting
//! thread (its id comes with each fault, `UFFD_FEATURE_THREAD_ID`).
#![allow(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};

use parking_lot::{Condvar, Mutex};

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
/// The faulting thread's id in each fault message (Linux 4.14+).
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
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
    /// The faulting thread (`UFFD_FEATURE_THREAD_ID`), 0 if unknown.
    pub ptid: u32,
}

/// Send `SIGBUS` to the thread of `fault`: the kernel's own answer to a
/// fault that can be neither served nor made to raise `SIGBUS` by placing
/// the empty memfd (the thread would otherwise re-fault for ever). Without
/// the thread's id, the whole process gets it.
pub(crate) fn sigbus_thread(fault: &Fault) {
    let pid = std::process::id() as libc::pid_t;
    let r = if fault.ptid != 0 {
        // SAFETY: `tgkill(2)` only sends a signal to a thread of this
        // process; it touches no memory.
        unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                pid,
                fault.ptid as libc::pid_t,
                libc::SIGBUS,
            )
        }
    } else {
        // SAFETY: `kill(2)` only sends a signal to this process.
        i64::from(unsafe { libc::kill(pid, libc::SIGBUS) })
    };
    if r != 0 {
        tracing::error!(target: "pinfs::map", ptid = fault.ptid, error = %std::io::Error::last_os_error(), "cannot send SIGBUS to a faulting thread");
    }
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
        let negotiate = |features: u64| {
            let mut api = UffdioApi {
                api: UFFD_API,
                features,
                ioctls: 0,
            };
            // SAFETY: `UFFDIO_API` takes a `struct uffdio_api`, which
            // `UffdioApi` spells out; it carries no pointers.
            unsafe { ioctl(&fd, UFFDIO_API, &mut api) }
        };
        // The thread id lets an unservable fault be answered with a SIGBUS
        // to that thread; a kernel without it still serves faults.
        negotiate(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID)
            .or_else(|_| negotiate(UFFD_FEATURE_PAGEFAULT_FLAG_WP))
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

    /// Read up to [`MAX_FAULTS_PER_READ`] queued faults with one `read` into
    /// `out`; `false` once none is queued (the descriptor is non-blocking).
    fn read_faults(&self, out: &mut Vec<Fault>) -> std::io::Result<bool> {
        let mut buf = [0u8; MSG_BYTES * MAX_FAULTS_PER_READ];
        let n = match rustix::io::read(&self.fd, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if n < MSG_BYTES {
            return Ok(false);
        }
        // The kernel returns whole messages only.
        for msg in buf[..n].chunks_exact(MSG_BYTES) {
            if let Some(fault) = parse_fault(msg) {
                out.push(fault);
            }
        }
        Ok(true)
    }
}

/// Most fault messages read with one `read` of the userfaultfd: the reader
/// drains every pending fault in a few system calls instead of one each.
const MAX_FAULTS_PER_READ: usize = 64;

/// The page fault a `struct uffd_msg` reports (`None` for other events).
fn parse_fault(msg: &[u8]) -> Option<Fault> {
    if msg.len() != MSG_BYTES || msg[0] != UFFD_EVENT_PAGEFAULT {
        return None;
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&msg[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let flags = word(8);
    let mut ptid = [0u8; 4];
    // `pagefault.feat.ptid`: 0 unless the feature was negotiated.
    ptid.copy_from_slice(&msg[24..28]);
    Some(Fault {
        address: word(16),
        write: flags & (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP) != 0,
        ptid: u32::from_ne_bytes(ptid),
    })
}

/// Most idle worker threads kept for later write faults; a worker that
/// finds no job while this many others wait exits. Workers are otherwise
/// not capped by a fixed number: a write fault may wait in a lease break
/// (up to lease-break-time, or for good with 0), so each mapping with a
/// fault in progress may need a worker of its own (at most one: faults of
/// one mapping are answered one at a time). Their number is bounded by the
/// live mappings (`fs::MAX_MAPPINGS`).
pub const MAX_IDLE_FAULT_WORKERS: usize = 8;

/// Answers one fault (the file system's `serve_fault`).
pub(crate) type FaultHandler = Arc<dyn Fn(&Uffd, Fault) + Send + Sync>;
/// The mapping a fault address belongs to (a key: faults of one key are
/// answered one at a time), or `None` for an address of no live mapping.
pub(crate) type FaultKey = Arc<dyn Fn(u64) -> Option<u64> + Send + Sync>;
/// Called once when the service can no longer answer faults: must make
/// every served page raise `SIGBUS` and wake every waiter.
pub(crate) type OnLost = Arc<dyn Fn(&Uffd) + Send + Sync>;

/// The write faults waiting for a worker, and the workers.
#[derive(Default)]
struct Queue {
    /// (mapping key, fault), oldest first.
    jobs: VecDeque<(u64, Fault)>,
    /// Keys a worker is answering now: their other faults wait.
    busy: HashSet<u64>,
    /// Workers waiting for a job (woken or not).
    idle: usize,
    /// Wake-ups sent to idle workers that no worker has taken yet: a woken
    /// worker leaves `idle` only once it runs again, so `idle - wakeups` is
    /// the number of idle workers a new job may still count on. (Counting
    /// `idle` alone lost wake-ups: two jobs dispatched back to back both
    /// saw the one idle worker, and the second waited behind the first.)
    wakeups: usize,
    /// Workers alive.
    workers: usize,
    /// Test switch: most workers (`None`: no fixed cap).
    cap: Option<usize>,
    /// Test switch: count on every idle worker, woken or not (the old rule
    /// that lost wake-ups; a negative control).
    uncounted_wakeups: bool,
    /// The service stopped: workers exit once idle.
    closed: bool,
}

/// What a dispatch must do so that a queued job gets a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// A worker will take it anyway: the one answering its mapping, or one
    /// already woken or started for an earlier job of its mapping.
    Nothing,
    /// Wake an idle worker (already counted in `wakeups`).
    Notify,
    /// Start a worker (already counted in `workers`).
    Spawn,
}

impl Queue {
    /// Queue `job` and decide how it gets a worker: every mapping with a
    /// job no worker is answering has a worker of its own coming, so no
    /// job waits for a worker blocked on another mapping's fault.
    fn push(&mut self, key: u64, fault: Fault) -> Wake {
        let covered = self.busy.contains(&key) || self.jobs.iter().any(|&(k, _)| k == key);
        self.jobs.push_back((key, fault));
        if covered {
            return Wake::Nothing;
        }
        if self.uncounted_wakeups && self.idle > 0 {
            return Wake::Notify;
        }
        if self.idle > self.wakeups {
            self.wakeups += 1;
            return Wake::Notify;
        }
        if self.cap.is_some_and(|c| self.workers >= c) {
            // The negative control's fixed cap: the job waits for a worker.
            return Wake::Nothing;
        }
        self.workers += 1;
        Wake::Spawn
    }

    /// The oldest job whose mapping no worker is answering.
    fn take(&mut self) -> Option<(u64, Fault)> {
        let i = self.jobs.iter().position(|(k, _)| !self.busy.contains(k))?;
        let job = self.jobs.remove(i)?;
        self.busy.insert(job.0);
        Some(job)
    }
}

/// What the service thread, the workers and the owner share.
struct Shared {
    uffd: Arc<Uffd>,
    handle: FaultHandler,
    key: FaultKey,
    on_lost: OnLost,
    stopping: AtomicBool,
    /// The service can no longer answer faults (see [`OnLost`]).
    lost: AtomicBool,
    /// Test switch: answer write faults on the service thread too (the old
    /// single-thread design, a negative control).
    inline_writes: AtomicBool,
    /// Test switch: the service thread fails as on a read error.
    fail: AtomicBool,
    /// Test switch: the service thread reads no faults.
    paused: AtomicBool,
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The fault service of one userfaultfd: a thread that reads every fault
/// message and answers read faults itself (they never block: a copy of zeros
/// or of a block), and a bounded pool of workers answering write faults
/// (which may wait in a lease break), one mapping at a time each — so a
/// write fault that blocks stalls only its own mapping. Stopped on drop.
pub(crate) struct FaultService {
    shared: Arc<Shared>,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl std::fmt::Debug for FaultService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultService")
            .field("lost", &self.shared.lost.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FaultService {
    /// Open a userfaultfd and start the thread that answers its faults with
    /// `handle`; `key` names the mapping of a fault, `on_lost` runs if the
    /// service fails.
    pub(crate) fn start(
        handle: FaultHandler,
        key: FaultKey,
        on_lost: OnLost,
    ) -> Result<FaultService> {
        let uffd = Arc::new(Uffd::open()?);
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::media("eventfd", e.into()))?;
        let stop_thread = stop
            .try_clone()
            .map_err(|e| Error::media("dup eventfd", e))?;
        let shared = Arc::new(Shared {
            uffd,
            handle,
            key,
            on_lost,
            stopping: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            inline_writes: AtomicBool::new(false),
            fail: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let sh = shared.clone();
        let thread = thread::Builder::new()
            .name("pinfs-faults".into())
            .spawn(move || serve(&sh, &stop_thread))
            .map_err(|e| Error::media("spawn the fault service thread", e))?;
        let thread_id = thread.thread().id();
        Ok(FaultService {
            shared,
            stop,
            thread: Some(thread),
            thread_id,
        })
    }

    /// The userfaultfd, to register ranges with.
    pub(crate) fn uffd(&self) -> &Arc<Uffd> {
        &self.shared.uffd
    }

    /// Whether the service can no longer answer faults.
    pub(crate) fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Acquire)
    }

    /// Test switch: answer write faults on the service thread (one thread
    /// for everything, as before the worker pool).
    #[cfg(feature = "negative-controls")]
    pub(crate) fn set_inline_writes(&self, inline: bool) {
        self.shared.inline_writes.store(inline, Ordering::Release);
    }

    /// Test switch: at most `cap` workers (the fixed pool before workers
    /// were started per blocked mapping, a negative control), or no cap.
    #[cfg(feature = "negative-controls")]
    pub(crate) fn set_worker_cap(&self, cap: Option<usize>) {
        self.shared.queue.lock().cap = cap;
    }

    /// Test switch: dispatch counts on every idle worker, even one already
    /// woken for an earlier fault (the old rule, a negative control).
    #[cfg(feature = "negative-controls")]
    pub(crate) fn set_uncounted_wakeups(&self, on: bool) {
        self.shared.queue.lock().uncounted_wakeups = on;
    }

    /// Test switch: the service thread stops reading faults while `paused`
    /// (so that tests can have several faults dispatched back to back).
    #[cfg(feature = "negative-controls")]
    pub(crate) fn pause(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
        self.kick();
    }

    /// Test switch: make the service thread fail as on a read error.
    #[cfg(feature = "negative-controls")]
    pub(crate) fn fail(&self) {
        self.shared.fail.store(true, Ordering::Release);
        self.kick();
    }

    fn kick(&self) {
        let _ = rustix::io::write(self.stop.as_fd(), &1u64.to_ne_bytes());
    }
}

/// Declares the service lost if the thread holding it ends other than by
/// an orderly stop (a panic while answering a fault, say): otherwise the
/// faults it would have answered hang.
struct LostUnlessStopped<'a>(&'a Shared);

impl Drop for LostUnlessStopped<'_> {
    fn drop(&mut self) {
        let sh = self.0;
        if !sh.stopping.load(Ordering::Acquire) && !sh.lost.load(Ordering::Acquire) {
            lose(sh, "a fault service thread ended unexpectedly");
        }
    }
}

/// The service thread: read every fault, answer reads, queue writes.
fn serve(sh: &Arc<Shared>, stop: &OwnedFd) {
    let _lost_on_exit = LostUnlessStopped(sh);
    let uffd = &*sh.uffd;
    loop {
        let mut fds = [
            PollFd::new(&uffd.fd, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return lose(sh, &format!("poll failed: {e}")),
        }
        if sh.stopping.load(Ordering::Acquire) {
            return;
        }
        if sh.fail.load(Ordering::Acquire) {
            return lose(sh, "failure injected");
        }
        if fds[1].revents().contains(PollFlags::IN) {
            // A kick (a test switch): consume it, or poll would spin.
            let mut drained = [0u8; 8];
            let _ = rustix::io::read(stop, &mut drained);
        }
        if sh.paused.load(Ordering::Acquire) {
            // Test switch: faults stay queued in the kernel meanwhile.
            thread::sleep(PAUSE_POLL);
            continue;
        }
        // Write faults read in one go are queued together, under one lock:
        // each must get its own worker even though none of the workers
        // woken for the earlier ones has run yet (`Queue::wakeups`).
        let mut writes = Vec::new();
        let mut read = Vec::with_capacity(MAX_FAULTS_PER_READ);
        loop {
            read.clear();
            match uffd.read_faults(&mut read) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    dispatch(sh, writes);
                    return lose(sh, &format!("read failed: {e}"));
                }
            }
            for &fault in &read {
                if fault.write && !sh.inline_writes.load(Ordering::Acquire) {
                    writes.push(fault);
                } else {
                    (sh.handle)(uffd, fault);
                }
            }
        }
        dispatch(sh, writes);
    }
}

/// The service cannot go on: hand over to `on_lost` (every served page
/// raises `SIGBUS`, every waiter is woken), so that no fault hangs. Once.
fn lose(sh: &Shared, why: &str) {
    if sh.lost.swap(true, Ordering::AcqRel) {
        return;
    }
    tracing::error!(target: "pinfs::map", why, "fault service lost: served pages now raise SIGBUS");
    (sh.on_lost)(&sh.uffd);
}

/// Queue write faults for the workers, waking or starting one for each
/// unless a worker will take it anyway ([`Queue::push`]).
fn dispatch(sh: &Arc<Shared>, faults: Vec<Fault>) {
    if faults.is_empty() {
        return;
    }
    // The mappings first: the key lookup takes the file system's lock,
    // never taken under the queue's.
    let mut keyed = Vec::with_capacity(faults.len());
    for fault in faults {
        match (sh.key)(fault.address) {
            Some(key) => keyed.push((key, fault)),
            // No live mapping: nothing to answer, let the thread retry.
            None => sh.uffd.wake(page_start(fault.address), PAGE),
        }
    }
    let mut inline = Vec::new();
    {
        let mut q = sh.queue.lock();
        for (key, fault) in keyed {
            match q.push(key, fault) {
                Wake::Nothing => {}
                Wake::Notify => {
                    sh.ready.notify_one();
                }
                Wake::Spawn => {
                    let w = sh.clone();
                    let spawned = thread::Builder::new()
                        .name("pinfs-fault-worker".into())
                        .spawn(move || work(&w));
                    if let Err(e) = spawned {
                        q.workers -= 1;
                        tracing::warn!(target: "pinfs::map", error = %e, workers = q.workers, "cannot start a fault worker");
                        if q.workers == 0 {
                            // Nobody would ever answer it: answer it here.
                            if let Some(i) = q.jobs.iter().rposition(|&(k, _)| k == key) {
                                q.jobs.remove(i);
                            }
                            inline.push(fault);
                        } else {
                            // A worker answers it once one is free (the old
                            // bounded pool, only while threads cannot start).
                            sh.ready.notify_one();
                        }
                    }
                }
            }
        }
    }
    for fault in inline {
        (sh.handle)(&sh.uffd, fault);
    }
}

/// A worker: answer queued write faults until the service stops (or it
/// finds nothing to do while enough others idle).
fn work(sh: &Shared) {
    // A worker that dies mid-fault leaves its mapping's key busy for good.
    let lost_on_exit = LostUnlessStopped(sh);
    let mut q = sh.queue.lock();
    loop {
        if let Some((key, fault)) = q.take() {
            drop(q);
            (sh.handle)(&sh.uffd, fault);
            q = sh.queue.lock();
            q.busy.remove(&key);
            // Faults of that mapping waited for this one: the loop takes
            // the next (each other takeable job has its own worker coming).
            continue;
        }
        if q.closed || q.idle - q.wakeups.min(q.idle) >= MAX_IDLE_FAULT_WORKERS {
            q.workers -= 1;
            // An orderly exit: not a service failure.
            std::mem::forget(lost_on_exit);
            return;
        }
        q.idle += 1;
        sh.ready.wait(&mut q);
        q.idle -= 1;
        // This worker runs again: a wake-up sent to an idle worker is used
        // (a spurious wake-up may use another's; that worker then counts as
        // not idle while it waits, which can only start an extra worker).
        q.wakeups = q.wakeups.saturating_sub(1);
    }
}

fn page_start(addr: u64) -> usize {
    (addr & !(PAGE - 1)) as usize
}

/// How often a paused service thread looks again (test switch only).
const PAUSE_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// Page size of faults (4 KiB pages only are ever registered).
const PAGE: u64 = 4096;

impl Drop for FaultService {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.kick();
        if let Some(t) = self.thread.take() {
            // The file system may be dropped by a fault-answering thread
            // itself (it held the last reference while answering a fault):
            // that thread then exits on its own after this returns.
            if thread::current().id() != self.thread_id {
                let _ = t.join();
            }
        }
        // Workers are not joined: one may be this thread, or be waiting in
        // a lease break; each exits when it finds the queue closed.
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(address: u64) -> Fault {
        Fault {
            address,
            write: true,
            ptid: 0,
        }
    }

    /// Two mappings' faults dispatched back to back while one worker idles:
    /// the first wakes it, the second must start a worker of its own (the
    /// old rule, "start one when none is idle", started none, and the second
    /// fault waited behind the first — for good if it blocked in a break).
    #[test]
    fn back_to_back_faults_of_two_mappings_get_two_workers() {
        let mut q = Queue {
            idle: 1,
            workers: 1,
            ..Queue::default()
        };
        assert_eq!(q.push(1, fault(0x1000)), Wake::Notify);
        assert_eq!(q.push(2, fault(0x2000)), Wake::Spawn);
        assert_eq!(q.workers, 2);
        // A second fault of a mapping with a worker coming needs none.
        assert_eq!(q.push(2, fault(0x3000)), Wake::Nothing);
        // Mapping 1's fault is taken; its next fault waits for that worker.
        assert_eq!(q.take().map(|j| j.0), Some(1));
        assert_eq!(q.push(1, fault(0x1000)), Wake::Nothing);
        // A third mapping's fault gets a worker even with every worker
        // taken by the first two (one may be blocked in a lease break).
        assert_eq!(q.push(3, fault(0x4000)), Wake::Spawn);
        assert_eq!(q.workers, 3);
    }

    /// A `uffd_msg` as the kernel lays it out: event, flags, address, ptid.
    fn msg(event: u8, flags: u64, address: u64, ptid: u32) -> [u8; MSG_BYTES] {
        let mut m = [0u8; MSG_BYTES];
        m[0] = event;
        m[8..16].copy_from_slice(&flags.to_ne_bytes());
        m[16..24].copy_from_slice(&address.to_ne_bytes());
        m[24..28].copy_from_slice(&ptid.to_ne_bytes());
        m
    }

    /// Several messages read in one go are each parsed (the batched read
    /// hands every one to the service), other events skipped.
    #[test]
    fn a_batch_of_messages_parses_into_its_faults() {
        let mut buf = Vec::new();
        buf.extend(msg(UFFD_EVENT_PAGEFAULT, 0, 0x1000, 7));
        buf.extend(msg(
            UFFD_EVENT_PAGEFAULT,
            UFFD_PAGEFAULT_FLAG_WRITE,
            0x2000,
            8,
        ));
        buf.extend(msg(0x13, 0, 0x3000, 9));
        buf.extend(msg(UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_WP, 0x4000, 0));
        let faults: Vec<Fault> = buf
            .chunks_exact(MSG_BYTES)
            .filter_map(parse_fault)
            .collect();
        assert_eq!(
            faults,
            vec![
                Fault {
                    address: 0x1000,
                    write: false,
                    ptid: 7
                },
                Fault {
                    address: 0x2000,
                    write: true,
                    ptid: 8
                },
                Fault {
                    address: 0x4000,
                    write: true,
                    ptid: 0
                },
            ]
        );
        assert_eq!(parse_fault(&buf[..MSG_BYTES - 1]), None, "a short message");
    }

    #[test]
    fn the_negative_control_cap_leaves_faults_waiting() {
        let mut q = Queue {
            workers: 8,
            cap: Some(8),
            ..Queue::default()
        };
        assert_eq!(q.push(9, fault(0x1000)), Wake::Nothing);
    }
}
