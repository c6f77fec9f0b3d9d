//! `pinfs bench lease`: the lease engine against the kernel's own leases.
//!
//! Printed in one run (STYLE 17: ratios against a baseline measured in the
//! same run):
//!
//! 1. Lease set+release rate: `set_lease(Write)` + `set_lease(Unlock)` on the
//!    engine (and a layout lease set+release), against `fcntl(F_SETLEASE,
//!    F_WRLCK)` + `fcntl(F_SETLEASE, F_UNLCK)` on a tmpfs file.
//! 2. Break round trip on the engine, between two threads: the breaker
//!    starts a writing `open` → the holder, waiting on its event queue, is
//!    notified → it releases → the breaker proceeds. Time is taken in the
//!    breaker, from before the open to after it.
//! 3. The same on the kernel, between two processes: a child holds
//!    `F_SETLEASE F_WRLCK` on a `/dev/shm` file, with `F_SETSIG` set to a
//!    realtime signal that it keeps blocked and takes with `sigtimedwait`
//!    (the fastest way a process can hear of a break); the parent's
//!    `open(O_RDWR)` blocks until the child's `F_UNLCK`.
//!
//! Each round trip is measured twice: *hot*, the breaker starting as soon as
//! the holder is ready (the holder may still be spinning on its queue, as a
//! busy holder would), and *cold*, the breaker starting 1 ms later (the
//! holder is asleep and must be woken). The kernel's lease-break-time does
//! not matter: the holder releases at once.
//!
//! # Safety
//!
//! The kernel side needs `fork`, `fcntl(F_SETLEASE)`, `fcntl(F_SETSIG)`,
//! signal masks and `sigtimedwait`, none of which `rustix` offers, so this
//! module calls `libc`. The forked child of this (possibly multi-threaded)
//! process only makes async-signal-safe system calls on memory prepared
//! before the fork, and leaves with `_exit`; the parent kills and reaps it
//! on every path out ([`Child`]'s `Drop`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::bench_limit::{self, Carrier};
use crate::bench_target::{Goal, Latency, Scorecard};
use anyhow::{bail, Context, Result};
use pinfs::lease::{Access, BreakOptions, FileKey, HandleId, LeaseEngine, LeaseRequest, OwnerId};

/// Round trips measured per mode (after the warm-up).
const ROUND_TRIPS: usize = 2000;
const QUICK_ROUND_TRIPS: usize = 200;
/// Round trips run first (in every chunk) and not counted.
const WARMUP: usize = 20;
/// Each mode is measured in this many chunks, alternating pinfs and the
/// kernel, so that a noisy neighbour on a shared machine hits both.
const CHUNKS: usize = 5;
/// Set+release pairs for the rate measurement.
const SET_RELEASE_OPS: usize = 200_000;
const QUICK_SET_RELEASE_OPS: usize = 20_000;
/// How long the breaker waits before a cold round trip.
const COLD_GAP: Duration = Duration::from_millis(1);
/// Longest wait for the other side before the benchmark gives up.
const SIDE_TIMEOUT: Duration = Duration::from_secs(5);
/// `fcntl(F_SETSIG)` (not exported by the `libc` crate for this target).
const F_SETSIG: libc::c_int = 10;
/// Target of a hot round trip: at most this fraction of the kernel's.
const HOT_GOAL: Goal = Goal::AtMost(0.25);
/// Targets of a cold round trip (issue 12): median and 99th percentile.
const COLD_P50_GOAL: Goal = Goal::AtMost(0.5);
const COLD_P99_GOAL: Goal = Goal::AtMost(0.8);

/// The target of one round-trip line.
fn goal(mode: &str, percentile: &str) -> Goal {
    match (mode, percentile) {
        ("cold", "p50") => COLD_P50_GOAL,
        ("cold", _) => COLD_P99_GOAL,
        _ => HOT_GOAL,
    }
}

/// Run the benchmark and print the results; `quick` shrinks it.
pub fn run(quick: bool) -> Result<()> {
    let trips = if quick {
        QUICK_ROUND_TRIPS
    } else {
        ROUND_TRIPS
    };
    let ops = if quick {
        QUICK_SET_RELEASE_OPS
    } else {
        SET_RELEASE_OPS
    };
    let file = ShmFile::new()?;
    println!(
        "pinfs bench lease{}: lease engine (two threads) vs kernel leases (two processes, {}); {trips} round trips per mode and side, in {CHUNKS} alternating chunks after {WARMUP} warm-up each; {ops} set+release pairs",
        if quick { " --quick" } else { "" },
        file.path.to_string_lossy(),
    );

    let engine_rate = engine_set_release(ops, false);
    let engine_layout_rate = engine_set_release(ops, true);
    let kernel_rate = kernel_set_release(&file, ops)?;

    let mut rows = Vec::new();
    let mut breakdowns = Vec::new();
    let mut limits = Vec::new();
    let chunk = trips.div_ceil(CHUNKS);
    for cold in [false, true] {
        let mode = if cold { "cold" } else { "hot" };
        let (mut pinfs, mut kernel) = (Samples::default(), Samples::default());
        let mut bare: Vec<Vec<Duration>> = vec![Vec::new(); Carrier::ALL.len()];
        for _ in 0..CHUNKS {
            pinfs.append(engine_round_trips(chunk, cold)?);
            kernel.append(kernel_round_trips(&file, chunk, cold)?);
            for (i, carrier) in Carrier::ALL.into_iter().enumerate() {
                let gap = cold.then_some(COLD_GAP);
                bare[i].extend(bench_limit::round_trips(carrier, chunk, WARMUP, gap)?);
            }
        }
        breakdowns.push((
            mode,
            Latency::of(pinfs.handed).p50,
            Latency::of(pinfs.notify).p50,
            Latency::of(pinfs.proceed).p50,
        ));
        let pinfs = Latency::of(pinfs.total);
        for (carrier, samples) in Carrier::ALL.into_iter().zip(bare) {
            limits.push((mode, carrier, pinfs, Latency::of(samples)));
        }
        rows.push((mode, pinfs, Latency::of(kernel.total)));
    }
    let callback = engine_callback_round_trips(trips)?;

    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "set+release rate", "pinfs", "kernel", "ratio"
    );
    println!(
        "{:<28} {:>12.0} {:>12.0} {:>7.2}x  ops/s",
        "open lease (F_WRLCK)",
        engine_rate,
        kernel_rate,
        engine_rate / kernel_rate
    );
    println!(
        "{:<28} {:>12.0} {:>12} {:>8}  ops/s",
        "layout lease (shared)", engine_layout_rate, "-", "-"
    );
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "break round trip", "pinfs", "kernel", "ratio"
    );
    let mut card = Scorecard::default();
    for (mode, pinfs, kernel) in &rows {
        for (label, p, k) in [
            ("p50", pinfs.p50, kernel.p50),
            ("p99", pinfs.p99, kernel.p99),
        ] {
            let ratio = p.as_secs_f64() / k.as_secs_f64();
            let verdict = card.check(&format!("{mode} {label}"), ratio, goal(mode, label));
            println!(
                "{:<28} {:>10.1}us {:>10.1}us {:>7.3}x  {verdict}",
                format!("{mode} {label}"),
                p.as_secs_f64() * 1e6,
                k.as_secs_f64() * 1e6,
                ratio
            );
        }
    }
    let hot_kernel = rows[0].2;
    for (label, p, k) in [
        ("callback p50 (vs hot)", callback.p50, hot_kernel.p50),
        ("callback p99 (vs hot)", callback.p99, hot_kernel.p99),
    ] {
        println!(
            "{:<28} {:>10.1}us {:>10.1}us {:>7.3}x  (holder releases in its break callback, on the breaker's thread)",
            label,
            p.as_secs_f64() * 1e6,
            k.as_secs_f64() * 1e6,
            p.as_secs_f64() / k.as_secs_f64()
        );
    }
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>8}  (the same two hand-offs with nothing else, same gap: the physical limit)",
        "bare hand-off round trip", "pinfs", "bare", "ratio"
    );
    for (mode, carrier, pinfs, bare) in &limits {
        for (label, p, b) in [("p50", pinfs.p50, bare.p50), ("p99", pinfs.p99, bare.p99)] {
            println!(
                "{:<28} {:>10.1}us {:>10.1}us {:>7.2}x  (no target: how close pinfs is to the limit)",
                format!("{mode} {label} {}", carrier.label()),
                p.as_secs_f64() * 1e6,
                b.as_secs_f64() * 1e6,
                p.as_secs_f64() / b.as_secs_f64(),
            );
        }
    }
    println!();
    for (mode, handed, notify, proceed) in &breakdowns {
        println!(
            "pinfs {mode} round trip, medians from the breaker's start: event handed over (engine work) {:.1}us, holder has it {:.1}us; then holder releases -> breaker proceeds {:.1}us",
            handed.as_secs_f64() * 1e6,
            notify.as_secs_f64() * 1e6,
            proceed.as_secs_f64() * 1e6
        );
    }
    println!();
    println!(
        "targets: pinfs break round trip (two threads) vs the kernel's (two processes): hot {HOT_GOAL}; cold p50 {COLD_P50_GOAL}, cold p99 {COLD_P99_GOAL}"
    );
    println!("{}", card.summary());
    Ok(())
}

// ------------------------------------------------------------------ engine

fn engine_set_release(ops: usize, layout: bool) -> f64 {
    let e = LeaseEngine::new(Duration::from_secs(45));
    let (file, handle, owner) = (FileKey(1), HandleId(1), OwnerId(1));
    e.opened(file, handle, owner, Access::ReadOnly)
        .expect("fresh engine");
    let (set, unset) = if layout {
        (LeaseRequest::layout_shared(), LeaseRequest::layout_unlock())
    } else {
        (LeaseRequest::write(), LeaseRequest::unlock())
    };
    let start = Instant::now();
    for _ in 0..ops {
        e.set_lease(file, handle, owner, set.clone())
            .expect("uncontended lease");
        e.set_lease(file, handle, owner, unset.clone())
            .expect("held lease");
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Round-trip samples; for the engine also where the time goes: breaker
/// starts → holder has its event (`notify`), holder has its event →
/// breaker proceeds (`proceed`: the holder releases, the breaker sees it).
#[derive(Default)]
struct Samples {
    total: Vec<Duration>,
    /// Breaker starts → its event is handed to the holder's queue.
    handed: Vec<Duration>,
    notify: Vec<Duration>,
    proceed: Vec<Duration>,
}

impl Samples {
    fn append(&mut self, mut other: Samples) {
        self.total.append(&mut other.total);
        self.handed.append(&mut other.handed);
        self.notify.append(&mut other.notify);
        self.proceed.append(&mut other.proceed);
    }
}

/// Break round trips on the engine: a holder thread and this thread.
fn engine_round_trips(trips: usize, cold: bool) -> Result<Samples> {
    let e = LeaseEngine::new(SIDE_TIMEOUT);
    let (file, holder, breaker) = (FileKey(1), OwnerId(1), OwnerId(2));
    let holder_handle = HandleId(1);
    e.opened(file, holder_handle, holder, Access::ReadOnly)?;
    let events = e.owner_events(holder)?;
    // When the breaker hands the event over: the owner's callback runs on
    // the breaker's thread right before the event enters the queue.
    let base = Instant::now();
    let handed = Arc::new(AtomicU64::new(0));
    {
        let handed = Arc::clone(&handed);
        e.set_owner_callback(
            holder,
            Some(Arc::new(move |_: &pinfs::lease::BreakEvent| {
                handed.store(
                    Instant::now().saturating_duration_since(base).as_nanos() as u64,
                    Ordering::Release,
                );
            })),
        )?;
    }
    // Round number the holder has its lease for (0: none yet).
    let ready = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    // When the holder got its event (ns since `base`).
    let woke = Arc::new(AtomicU64::new(0));
    let total = WARMUP + trips;
    let since_base = move |t: Instant| t.saturating_duration_since(base).as_nanos() as u64;

    let holder_thread = {
        let (e, ready, failed) = (e.clone(), Arc::clone(&ready), Arc::clone(&failed));
        let woke = Arc::clone(&woke);
        thread::spawn(move || -> Result<()> {
            let result = (|| {
                for round in 1..=total as u64 {
                    // The breaker's handle of the previous round may still be
                    // closing: a write lease needs the file to itself.
                    let deadline = Instant::now() + SIDE_TIMEOUT;
                    while e
                        .set_lease(file, holder_handle, holder, LeaseRequest::write())
                        .is_err()
                    {
                        if Instant::now() > deadline {
                            bail!("holder: write lease never granted");
                        }
                        thread::yield_now();
                    }
                    ready.store(round, Ordering::Release);
                    let ev = events
                        .recv_timeout(SIDE_TIMEOUT)
                        .map_err(|e| anyhow::anyhow!("holder: {e}"))?
                        .context("holder: no break event")?;
                    woke.store(since_base(Instant::now()), Ordering::Release);
                    e.set_lease(file, holder_handle, holder, LeaseRequest::unlock())
                        .with_context(|| format!("holder: release after {:?}", ev.kind))?;
                }
                Ok(())
            })();
            if result.is_err() {
                failed.store(true, Ordering::Release);
            }
            result
        })
    };

    let mut samples = Samples::default();
    let mut outcome = Ok(());
    for round in 1..=total as u64 {
        let deadline = Instant::now() + SIDE_TIMEOUT;
        while ready.load(Ordering::Acquire) != round {
            if failed.load(Ordering::Acquire) || Instant::now() > deadline {
                break;
            }
            thread::yield_now();
        }
        if ready.load(Ordering::Acquire) != round {
            outcome = Err(anyhow::anyhow!("breaker: holder never ready"));
            break;
        }
        if cold {
            thread::sleep(COLD_GAP);
        }
        let h = HandleId(1000 + round);
        let start = Instant::now();
        let r = e.open(
            file,
            h,
            breaker,
            Access::ReadWrite,
            &BreakOptions::blocking(),
        );
        let end = Instant::now();
        if let Err(err) = r {
            outcome = Err(anyhow::anyhow!("breaker open: {err}"));
            break;
        }
        e.closed(file, h);
        if round as usize > WARMUP {
            samples.total.push(end - start);
            let (s, w, f) = (
                since_base(start),
                woke.load(Ordering::Acquire),
                since_base(end),
            );
            let hd = handed.load(Ordering::Acquire);
            samples
                .handed
                .push(Duration::from_nanos(hd.saturating_sub(s)));
            samples
                .notify
                .push(Duration::from_nanos(w.saturating_sub(s)));
            samples
                .proceed
                .push(Duration::from_nanos(f.saturating_sub(w)));
        }
    }
    if outcome.is_err() {
        // Let the holder out of its wait.
        e.drop_owner(holder);
    }
    let joined = holder_thread
        .join()
        .map_err(|_| anyhow::anyhow!("holder thread panicked"))?;
    outcome?;
    joined?;
    Ok(samples)
}

/// Break round trips where the holder acts in its break callback, which the
/// engine runs on the breaker's thread: no thread is woken at all. (The
/// kernel has no counterpart: a signal handler still needs its process to
/// be scheduled.)
fn engine_callback_round_trips(trips: usize) -> Result<Latency> {
    let e = LeaseEngine::new(SIDE_TIMEOUT);
    let (file, holder, breaker) = (FileKey(1), OwnerId(1), OwnerId(2));
    let holder_handle = HandleId(1);
    e.opened(file, holder_handle, holder, Access::ReadOnly)?;
    let releaser = e.clone();
    e.set_owner_callback(
        holder,
        Some(Arc::new(move |ev: &pinfs::lease::BreakEvent| {
            let _ = releaser.release(ev.lease.id);
        })),
    )?;
    let mut samples = Vec::with_capacity(trips);
    for round in 0..(WARMUP + trips) as u64 {
        e.set_lease(file, holder_handle, holder, LeaseRequest::write())?;
        let h = HandleId(1000 + round);
        let start = Instant::now();
        e.open(
            file,
            h,
            breaker,
            Access::ReadWrite,
            &BreakOptions::blocking(),
        )?;
        let took = start.elapsed();
        e.closed(file, h);
        if round as usize >= WARMUP {
            samples.push(took);
        }
    }
    Ok(Latency::of(samples))
}

// ------------------------------------------------------------------ kernel

/// A file on tmpfs, removed on drop.
struct ShmFile {
    path: CString,
}

impl ShmFile {
    fn new() -> Result<Self> {
        let path = format!("/dev/shm/pinfs-bench-lease-{}", std::process::id());
        std::fs::write(&path, b"lease").with_context(|| format!("create {path}"))?;
        Ok(ShmFile {
            path: CString::new(path).expect("no NUL in the path"),
        })
    }

    fn open(&self, flags: rustix::fs::OFlags) -> Result<OwnedFd> {
        rustix::fs::open(
            self.path.as_c_str(),
            flags | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("open {:?}", self.path))
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = rustix::fs::unlink(self.path.as_c_str());
    }
}

fn setlease(fd: RawFd, ty: libc::c_int) -> std::io::Result<()> {
    // SAFETY: fcntl(F_SETLEASE) takes a descriptor and an integer and
    // touches no memory of ours; `fd` is open for the duration of the call.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, ty) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn kernel_set_release(file: &ShmFile, ops: usize) -> Result<f64> {
    let fd = file.open(rustix::fs::OFlags::RDONLY)?;
    setlease(fd.as_raw_fd(), libc::F_WRLCK)
        .context("F_SETLEASE F_WRLCK on tmpfs (leases disabled? /proc/sys/fs/leases-enable)")?;
    setlease(fd.as_raw_fd(), libc::F_UNLCK)?;
    let start = Instant::now();
    for _ in 0..ops {
        setlease(fd.as_raw_fd(), libc::F_WRLCK)?;
        setlease(fd.as_raw_fd(), libc::F_UNLCK)?;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// A forked child (the lease holder, or a bare hand-off holder of
/// `bench_limit`); killed and reaped on drop.
pub(crate) struct Child {
    pid: libc::pid_t,
    /// Already reaped (its pid may belong to someone else now).
    reaped: std::cell::Cell<bool>,
}

impl Child {
    /// The guard of child `pid`, not yet reaped.
    pub(crate) fn new(pid: libc::pid_t) -> Child {
        Child {
            pid,
            reaped: std::cell::Cell::new(false),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped.get() {
            return;
        }
        // SAFETY: kill and waitpid take integers and a status pointer to a
        // local; `pid` is our own child, not yet reaped.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

/// Exit statuses of the child, for the error message.
fn child_failure(code: i32) -> &'static str {
    match code {
        10 => "could not open the file",
        11 => "F_SETSIG failed",
        12 => "F_SETLEASE F_WRLCK kept failing",
        13 => "no lease-break signal within the timeout",
        14 => "F_SETLEASE F_UNLCK failed",
        15 => "parent died",
        _ => "unknown failure",
    }
}

/// The child's side, after fork: async-signal-safe calls only, no
/// allocation, no locks; every way out is `_exit`.
///
/// # Safety
///
/// Must run in a freshly forked child; `path` must point at a NUL-terminated
/// string and `set` at an initialised signal set, both prepared before the
/// fork.
unsafe fn holder_child(
    path: *const libc::c_char,
    set: *const libc::sigset_t,
    sig: libc::c_int,
    go: RawFd,
    ready: RawFd,
    parent: libc::pid_t,
) -> ! {
    // SAFETY: only system calls on the descriptors and the memory this
    // function's contract describes, plus an all-zero siginfo_t (a valid
    // out-parameter).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(15);
        }
        libc::sigprocmask(libc::SIG_BLOCK, set, std::ptr::null_mut());
        let fd = libc::open(path, libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            libc::_exit(10);
        }
        let timeout = libc::timespec {
            tv_sec: SIDE_TIMEOUT.as_secs() as libc::time_t,
            tv_nsec: 0,
        };
        let mut byte = 0u8;
        loop {
            // Wait for the parent's go (it has closed its descriptor).
            let n = libc::read(go, (&mut byte as *mut u8).cast(), 1);
            if n != 1 || byte == b'q' {
                libc::_exit(0);
            }
            // F_UNLCK resets the descriptor's F_SETSIG signal to SIGIO: set
            // it again every round.
            if libc::fcntl(fd, F_SETSIG, sig) != 0 {
                libc::_exit(11);
            }
            let mut tries = 0u32;
            while libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) != 0 {
                tries += 1;
                if tries > 1_000_000 {
                    libc::_exit(12);
                }
                libc::sched_yield();
            }
            libc::write(ready, (&byte as *const u8).cast(), 1);
            let mut info: libc::siginfo_t = std::mem::zeroed();
            if libc::sigtimedwait(set, &mut info, &timeout) != sig {
                libc::_exit(13);
            }
            if libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) != 0 {
                libc::_exit(14);
            }
        }
    }
}

/// Break round trips on the kernel: a forked holder and this process.
fn kernel_round_trips(file: &ShmFile, trips: usize, cold: bool) -> Result<Samples> {
    let sig = libc::SIGRTMIN() + 1;
    // SAFETY: an all-zero sigset_t is a valid value; sigemptyset then
    // initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, local signal set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    let (go_r, go_w) = rustix::pipe::pipe().context("pipe")?;
    let (ready_r, ready_w) = rustix::pipe::pipe().context("pipe")?;
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: the child runs `holder_child` only, which keeps to
    // async-signal-safe calls on memory prepared here (`file.path`, `set`)
    // and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the fresh child; the pointers are valid (they
        // point into memory copied by the fork) and NUL-terminated/initialised.
        unsafe {
            holder_child(
                file.path.as_ptr(),
                &set,
                sig,
                go_r.as_raw_fd(),
                ready_w.as_raw_fd(),
                parent,
            )
        }
    }
    let child = Child::new(pid);
    drop(go_r);
    drop(ready_w);

    let mut samples = Samples::default();
    for round in 0..WARMUP + trips {
        rustix::io::write(&go_w, b"g").context("tell the holder to go")?;
        wait_readable(&ready_r, SIDE_TIMEOUT)
            .with_context(|| format!("holder not ready ({})", child_status(&child)))?;
        let mut b = [0u8; 1];
        if rustix::io::read(&ready_r, &mut b).context("read ready")? != 1 {
            // The holder closed its end: it is exiting; say why.
            thread::sleep(Duration::from_millis(10));
            bail!("holder gone ({})", child_status(&child));
        }
        if cold {
            thread::sleep(COLD_GAP);
        }
        let start = Instant::now();
        let fd = file.open(rustix::fs::OFlags::RDWR)?;
        let took = start.elapsed();
        drop(fd);
        if round >= WARMUP {
            samples.total.push(took);
        }
    }
    rustix::io::write(&go_w, b"q").context("tell the holder to quit")?;
    drop(child);
    Ok(samples)
}

pub(crate) fn wait_readable(fd: &OwnedFd, timeout: Duration) -> Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    if poll(&mut fds, Some(&ts)).context("poll")? == 0 {
        bail!("timed out after {timeout:?}");
    }
    Ok(())
}

/// Why the child stopped, if it did (for error messages).
fn child_status(child: &Child) -> String {
    let mut status = 0;
    // SAFETY: non-blocking waitpid on our own child with a local status.
    let r = unsafe { libc::waitpid(child.pid, &mut status, libc::WNOHANG) };
    if r == child.pid {
        child.reaped.set(true);
    }
    if r == child.pid && libc::WIFEXITED(status) {
        format!(
            "holder exited: {}",
            child_failure(libc::WEXITSTATUS(status))
        )
    } else if r == child.pid && libc::WIFSIGNALED(status) {
        format!("holder killed by signal {}", libc::WTERMSIG(status))
    } else if r == child.pid {
        "holder stopped".to_string()
    } else {
        "holder still running".to_string()
    }
}
