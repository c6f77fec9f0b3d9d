//! The physical limit of a lease-break round trip on this machine, measured
//! in the same run as `pinfs bench lease`: the same two hand-offs (the
//! breaker wakes the holder, the holder wakes the breaker) with nothing
//! else — no lease, no event, no lock.
//!
//! - `futex, two threads`: the holder sleeps in `FUTEX_WAIT`; the breaker
//!   stores, `FUTEX_WAKE`s it and sleeps in `FUTEX_WAIT` itself until the
//!   holder answers the same way. The least any sleeping holder thread costs.
//! - `futex, two processes`: the same on a shared page (no private futex).
//! - `eventfd, two processes`: each side blocks in `read` of its eventfd
//!   and is woken by the other's `write`: what a holder that waits for
//!   breaks on its event-queue descriptor (or a daemon client on its
//!   socket) pays at least.
//!
//! Timing, the cold gap and the warm-up are those of the lease round trips,
//! so the rows compare directly.
//!
//! # Safety
//!
//! The futex calls go through `libc::syscall` (the futex words are atomics
//! in memory that lives for the whole measurement: an `Arc`, or a shared
//! anonymous page unmapped only after the child is reaped). The forked
//! child only makes system calls and atomic accesses on memory prepared
//! before the fork, and leaves with `_exit`; the parent kills and reaps it on
//! every path out ([`Child`]'s `Drop`).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench_lease::{wait_readable, Child};

/// Longest wait for the other side before a measurement gives up.
const SIDE_TIMEOUT: Duration = Duration::from_secs(5);

/// What carries the two hand-offs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// `FUTEX_WAIT`/`FUTEX_WAKE` between two threads of this process.
    FutexThreads,
    /// A `parking_lot` mutex and condition variable per direction between
    /// two threads (the primitives the lease engine and its event queue
    /// use), the holder's wait timed as the queue's is.
    CondvarThreads,
    /// The same between two processes (a shared page).
    FutexProcesses,
    /// Blocking `read`/`write` of two eventfds between two processes.
    EventfdProcesses,
}

impl Carrier {
    /// Every carrier, in printing order.
    pub const ALL: [Carrier; 4] = [
        Carrier::FutexThreads,
        Carrier::CondvarThreads,
        Carrier::FutexProcesses,
        Carrier::EventfdProcesses,
    ];

    /// Its row label.
    pub fn label(self) -> &'static str {
        match self {
            Carrier::FutexThreads => "futex, two threads",
            Carrier::CondvarThreads => "condvar, two threads",
            Carrier::FutexProcesses => "futex, two processes",
            Carrier::EventfdProcesses => "eventfd, two processes",
        }
    }
}

/// The futex words: the breaker's round number (`ping`), the holder's
/// answer (`pong`), and the round the holder is waiting for (`ready`), each
/// on its own cache line.
#[repr(C, align(64))]
struct Words {
    ping: AtomicU32,
    _p1: [u8; 60],
    pong: AtomicU32,
    _p2: [u8; 60],
    ready: AtomicU32,
}

/// Sleeps until `word` holds `want` (or `SIDE_TIMEOUT` passes: `false`).
fn futex_wait_for(word: &AtomicU32, want: u32, private: bool) -> bool {
    let start = Instant::now();
    loop {
        let now = word.load(Ordering::Acquire);
        if now == want {
            return true;
        }
        if start.elapsed() > SIDE_TIMEOUT {
            return false;
        }
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let op = libc::FUTEX_WAIT | if private { libc::FUTEX_PRIVATE_FLAG } else { 0 };
        // SAFETY: `word` is a live, aligned 32-bit atomic; the kernel only
        // compares it with `now` and sleeps (at most 100 ms).
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                op,
                now,
                &ts as *const libc::timespec,
            );
        }
    }
}

/// Stores `value` in `word` and wakes its sleeper.
fn futex_set(word: &AtomicU32, value: u32, private: bool) {
    word.store(value, Ordering::Release);
    let op = libc::FUTEX_WAKE | if private { libc::FUTEX_PRIVATE_FLAG } else { 0 };
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE only wakes
    // threads sleeping on it.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), op, 1);
    }
}

/// The holder's side of `rounds` futex round trips (thread or child).
fn futex_holder(w: &Words, rounds: u32, private: bool) -> bool {
    for round in 1..=rounds {
        w.ready.store(round, Ordering::Release);
        if !futex_wait_for(&w.ping, round, private) {
            return false;
        }
        futex_set(&w.pong, round, private);
    }
    true
}

/// The breaker's side: waits (yielding, as the lease benchmark does) for the
/// holder to be ready, lets `gap` pass, then times one round trip.
fn futex_breaker(w: &Words, round: u32, gap: Option<Duration>, private: bool) -> Result<Duration> {
    let deadline = Instant::now() + SIDE_TIMEOUT;
    while w.ready.load(Ordering::Acquire) != round {
        if Instant::now() > deadline {
            bail!("futex holder never ready");
        }
        thread::yield_now();
    }
    if let Some(gap) = gap {
        thread::sleep(gap);
    }
    let start = Instant::now();
    futex_set(&w.ping, round, private);
    if !futex_wait_for(&w.pong, round, private) {
        bail!("futex holder never answered");
    }
    Ok(start.elapsed())
}

/// `trips` round trips (after `warmup` uncounted ones) over `carrier`; with
/// `gap`, the breaker starts that long after the holder went to sleep.
pub fn round_trips(
    carrier: Carrier,
    trips: usize,
    warmup: usize,
    gap: Option<Duration>,
) -> Result<Vec<Duration>> {
    let total = u32::try_from(warmup + trips).context("too many round trips")?;
    match carrier {
        Carrier::FutexThreads => {
            let w = Arc::new(Words {
                ping: AtomicU32::new(0),
                _p1: [0; 60],
                pong: AtomicU32::new(0),
                _p2: [0; 60],
                ready: AtomicU32::new(0),
            });
            let holder = {
                let w = Arc::clone(&w);
                thread::spawn(move || futex_holder(&w, total, true))
            };
            let mut out = Vec::with_capacity(trips);
            let mut result = Ok(());
            for round in 1..=total {
                match futex_breaker(&w, round, gap, true) {
                    Ok(d) if round as usize > warmup => out.push(d),
                    Ok(_) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let finished = holder
                .join()
                .map_err(|_| anyhow::anyhow!("futex holder panicked"))?;
            result?;
            if !finished {
                bail!("futex holder timed out");
            }
            Ok(out)
        }
        Carrier::CondvarThreads => condvar_threads(total, warmup, gap),
        Carrier::FutexProcesses => futex_processes(total, warmup, gap),
        Carrier::EventfdProcesses => eventfd_processes(total, warmup, gap),
    }
}

/// One direction of [`Carrier::CondvarThreads`]: the last round sent.
#[derive(Default)]
struct Slot {
    round: parking_lot::Mutex<u32>,
    changed: parking_lot::Condvar,
}

impl Slot {
    fn send(&self, round: u32) {
        *self.round.lock() = round;
        self.changed.notify_all();
    }

    fn wait_for(&self, round: u32) -> bool {
        let deadline = Instant::now() + SIDE_TIMEOUT;
        let mut g = self.round.lock();
        while *g != round {
            if self.changed.wait_until(&mut g, deadline).timed_out() {
                return *g == round;
            }
        }
        true
    }
}

fn condvar_threads(total: u32, warmup: usize, gap: Option<Duration>) -> Result<Vec<Duration>> {
    // (to holder, to breaker, holder ready)
    let slots: Arc<[Slot; 3]> = Arc::new(Default::default());
    let holder = {
        let slots = Arc::clone(&slots);
        thread::spawn(move || {
            for round in 1..=total {
                slots[2].send(round);
                if !slots[0].wait_for(round) {
                    return false;
                }
                slots[1].send(round);
            }
            true
        })
    };
    let mut out = Vec::new();
    let mut result = Ok(());
    for round in 1..=total {
        if !slots[2].wait_for(round) {
            result = Err(anyhow::anyhow!("condvar holder never ready"));
            break;
        }
        if let Some(gap) = gap {
            thread::sleep(gap);
        }
        let start = Instant::now();
        slots[0].send(round);
        if !slots[1].wait_for(round) {
            result = Err(anyhow::anyhow!("condvar holder never answered"));
            break;
        }
        if round as usize > warmup {
            out.push(start.elapsed());
        }
    }
    let finished = holder
        .join()
        .map_err(|_| anyhow::anyhow!("condvar holder panicked"))?;
    result?;
    if !finished {
        bail!("condvar holder timed out");
    }
    Ok(out)
}

/// A shared anonymous page holding [`Words`], unmapped on drop.
struct SharedPage(*mut Words);

impl SharedPage {
    fn new() -> Result<SharedPage> {
        // SAFETY: a fresh shared anonymous mapping at an address the kernel
        // chooses; zero-filled, which is a valid `Words` (atomics of 0).
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                4096,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }
        .context("mmap a shared page")?;
        Ok(SharedPage(p.cast()))
    }

    fn words(&self) -> &Words {
        // SAFETY: the page is mapped, zero-initialised (a valid `Words`) and
        // only ever accessed through atomics, for as long as `self` lives.
        unsafe { &*self.0 }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the page `new` mapped; the only reference to it borrows
        // `self`, so none outlives this.
        let _ = unsafe { rustix::mm::munmap(self.0.cast(), 4096) };
    }
}

/// Forks a child that runs `body` and `_exit`s with its status (0: done).
///
/// # Safety
///
/// `body` must only make async-signal-safe calls on memory prepared
/// before the fork (no allocation, no locks).
unsafe fn fork_child(body: impl FnOnce() -> bool) -> Result<Child> {
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: the child runs `body` (the caller's contract) and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the fresh child; `body` keeps to the contract above.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(2);
            }
            let ok = body();
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    Ok(Child::new(pid))
}

fn futex_processes(total: u32, warmup: usize, gap: Option<Duration>) -> Result<Vec<Duration>> {
    let page = SharedPage::new()?;
    let w = page.words();
    // SAFETY: the child only does atomics and futex system calls on the
    // shared page, which stays mapped in it until it exits.
    let child = unsafe { fork_child(|| futex_holder(w, total, false))? };
    let mut out = Vec::new();
    for round in 1..=total {
        let d = futex_breaker(w, round, gap, false)?;
        if round as usize > warmup {
            out.push(d);
        }
    }
    drop(child);
    drop(page);
    Ok(out)
}

fn eventfd_processes(total: u32, warmup: usize, gap: Option<Duration>) -> Result<Vec<Duration>> {
    use rustix::event::{eventfd, EventfdFlags};
    let to_holder: OwnedFd = eventfd(0, EventfdFlags::CLOEXEC).context("eventfd")?;
    let to_breaker: OwnedFd = eventfd(0, EventfdFlags::CLOEXEC).context("eventfd")?;
    let ready: OwnedFd = eventfd(0, EventfdFlags::CLOEXEC).context("eventfd")?;
    let (h, b, r) = (
        to_holder.as_raw_fd(),
        to_breaker.as_raw_fd(),
        ready.as_raw_fd(),
    );
    let holder = move || -> bool {
        let mut v = 0u64;
        for _ in 0..total {
            let one = 1u64;
            // SAFETY: 8-byte reads and writes of local integers on
            // eventfds that stay open in the child.
            unsafe {
                if libc::write(r, (&one as *const u64).cast(), 8) != 8
                    || libc::read(h, (&mut v as *mut u64).cast(), 8) != 8
                    || libc::write(b, (&one as *const u64).cast(), 8) != 8
                {
                    return false;
                }
            }
        }
        true
    };
    // SAFETY: the child only reads and writes eventfds it inherited.
    let child = unsafe { fork_child(holder)? };
    let mut out = Vec::new();
    let mut v = [0u8; 8];
    let one = 1u64.to_ne_bytes();
    for round in 1..=total as usize {
        wait_readable(&ready, SIDE_TIMEOUT).context("eventfd holder never ready")?;
        if rustix::io::read(&ready, &mut v).context("read ready eventfd")? != 8 {
            bail!("eventfd holder never ready");
        }
        if let Some(gap) = gap {
            thread::sleep(gap);
        }
        let start = Instant::now();
        rustix::io::write(&to_holder, &one).context("write eventfd")?;
        wait_readable(&to_breaker, SIDE_TIMEOUT).context("eventfd holder never answered")?;
        rustix::io::read(&to_breaker, &mut v).context("read eventfd")?;
        if round > warmup {
            out.push(start.elapsed());
        }
    }
    drop(child);
    Ok(out)
}
