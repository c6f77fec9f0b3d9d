//! `pinfs bench ipc`: pinfs shared among processes through its daemon,
//! against the kernel's own services between processes on tmpfs.
//!
//! Printed in one run (STYLE 17: ratios against a baseline measured in the
//! same run):
//!
//! 1. The cross-process lease-break round trip. A holder *process* (a client
//!    of the daemon) holds a lease on a file; this process truncates the
//!    file by path through the daemon; the daemon signals the holder and
//!    sends it the event; the holder, waiting on its event queue, releases
//!    the lease; the truncate completes. Timed here, from before the
//!    truncate to its answer. Two leases: the open write lease (`F_WRLCK`,
//!    the kernel's very lease) and a shared layout lease (`F_RDLCK|F_LAYOUT`,
//!    which a truncate breaks as a layout change). The baseline: a holder
//!    process with `F_SETLEASE F_WRLCK` on a `/dev/shm` file, `F_SETSIG` set
//!    to a realtime signal it keeps blocked and takes with `sigtimedwait`
//!    (the fastest way a process hears of a break), and `truncate(2)` by
//!    path here. Hot (the breaker starts as soon as the holder is ready) and
//!    cold (1 ms later: the holder sleeps and must be woken), p50 and p99.
//!    Target: at most 1.0× the kernel.
//! 2. Per-operation cost of small operations through the daemon — `pread`
//!    and `pwrite` of 4 KiB, `open`+`close`, `stat` — against the same
//!    system calls on a tmpfs file; the difference is the daemon's overhead.
//! 3. Bandwidth of sequential copies out of and into a `MAP_SHARED` mapping
//!    of a daemon's file in this (client) process — loads and stores straight
//!    to the pool, the daemon not involved — against `memcpy` between two
//!    plain buffers. Target: at least 0.95× (zero-copy stays zero-copy).
//!
//! The bench starts everything itself: a pool under `/dev/shm` (removed
//! afterwards), `pinfs serve` on it and the holder processes (this
//! executable's hidden `bench-ipc-helper` subcommand, driven through its
//! standard input and output). Every figure comes from several rounds,
//! interleaved with its baseline so a noisy neighbour hits both.
//!
//! # Safety
//!
//! The kernel's side calls `libc` where `rustix` has nothing: `truncate(2)`
//! here, the lease holder's calls in [`holders`]. The bandwidth measurement
//! copies to and from the mapping through raw pointers, as an application
//! does; each block says why the ranges are valid and not aliased by a
//! reference.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pinfs::fs::{Fs, OpenFlags};
use pinfs::map::MAP_SHARED;
use pinfs::media::MappedPool;
use pinfs_client::{Client, ConnectOptions};

use crate::bench_target::{Goal, Latency, Scorecard};

mod holders;
pub use holders::helper;

/// Target of the lease-break round trip: pinfs's time relative to the
/// kernel's.
const LEASE_GOAL: Goal = Goal::AtMost(1.0);
/// Target of mapped bandwidth: speed relative to `memcpy`.
const BANDWIDTH_GOAL: Goal = Goal::AtLeast(0.95);

/// Size of the bench's pool.
const POOL_BYTES: u64 = 768 << 20;
/// Round trips per mode and side (after the warm-up).
const ROUND_TRIPS: usize = 1000;
const QUICK_ROUND_TRIPS: usize = 100;
/// Round trips run first in every chunk and not counted.
const WARMUP: usize = 10;
/// Each measurement is taken in this many chunks, alternating pinfs and
/// the kernel.
const CHUNKS: usize = 5;
/// How long the breaker waits before a cold round trip.
const COLD_GAP: Duration = Duration::from_millis(1);
/// Operations per chunk of the per-operation measurement, and its chunks
/// (more and shorter than the round trips': a burst of load on a shared
/// machine then spoils fewer of them, and the median is of chunk means).
const OPS: usize = 1000;
const QUICK_OPS: usize = 200;
const OP_CHUNKS: usize = 11;
/// Bytes of one small read or write.
const SMALL_IO: usize = 4096;
/// The small-I/O file's size (reads and writes walk through it).
const SMALL_FILE_BYTES: u64 = 1 << 20;
/// The mapped file's size, and the number of timed rounds of each copy.
const BANDWIDTH_BYTES: usize = 256 << 20;
const QUICK_BANDWIDTH_BYTES: usize = 32 << 20;
const BANDWIDTH_ROUNDS: usize = 9;
/// Longest wait for a helper or the daemon before the bench gives up.
const SIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the benchmark and print the results; `quick` shrinks it.
pub fn run(quick: bool) -> Result<()> {
    let trips = if quick {
        QUICK_ROUND_TRIPS
    } else {
        ROUND_TRIPS
    };
    let ops = if quick { QUICK_OPS } else { OPS };
    let bw_bytes = if quick {
        QUICK_BANDWIDTH_BYTES
    } else {
        BANDWIDTH_BYTES
    };
    let bench = Bench::start()?;
    let client = Client::connect_with(&bench.socket, ConnectOptions { signal: Some(0) })
        .map_err(|e| anyhow!("connect to the bench's daemon: {e}"))?;
    println!(
        "pinfs bench ipc{}: through `pinfs serve` (pool {}, {} MiB, 2 MiB pages: {}) vs the kernel between processes on tmpfs; {trips} round trips per mode and side in {CHUNKS} alternating chunks; {OP_CHUNKS} alternating chunks of {ops} small operations",
        if quick { " --quick" } else { "" },
        bench.pool.display(),
        POOL_BYTES >> 20,
        if client.welcome().huge_pages { "yes" } else { "no" },
    );
    let mut card = Scorecard::default();
    lease_breaks(&bench, &client, trips, &mut card)?;
    println!();
    small_ops(&bench, &client, ops)?;
    println!();
    bandwidth(&bench, &client, bw_bytes, &mut card)?;
    println!();
    println!(
        "targets: lease-break round trip {LEASE_GOAL} the kernel's; mapped bandwidth {BANDWIDTH_GOAL} memcpy"
    );
    println!("{}", card.summary());
    drop(client);
    bench.stop()
}

// ------------------------------------------------------------------ set-up

/// The bench's directory under `/dev/shm` (pool, socket, the kernel's
/// files) and its daemon; stopped and removed on drop.
struct Bench {
    dir: PathBuf,
    pool: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
}

impl Bench {
    fn start() -> Result<Bench> {
        let dir = PathBuf::from(format!("/dev/shm/pinfs-bench-ipc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut bench = Bench {
            pool: dir.join("pool"),
            socket: dir.join("socket"),
            dir,
            daemon: None,
        };
        {
            let pool = MappedPool::create(&bench.pool, POOL_BYTES)
                .map_err(|e| anyhow!("{}: {e}", bench.pool.display()))?;
            Fs::mkfs(&pool).map_err(|e| anyhow!("mkfs {}: {e}", bench.pool.display()))?;
        }
        let exe = std::env::current_exe().context("this executable")?;
        let mut daemon = Command::new(exe)
            .arg("serve")
            .arg(&bench.pool)
            .arg("--socket")
            .arg(&bench.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start pinfs serve")?;
        let out = daemon.stdout.take().context("the daemon's output")?;
        bench.daemon = Some(daemon);
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .context("the daemon's ready line")?;
        if !line.starts_with("serving ") {
            bail!("pinfs serve did not start (said {line:?})");
        }
        Ok(bench)
    }

    /// A helper process of this executable: `bench-ipc-helper ARGS...`.
    fn helper(&self, args: &[&str]) -> Result<Helper> {
        let exe = std::env::current_exe().context("this executable")?;
        let mut child = Command::new(exe)
            .arg("bench-ipc-helper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start a helper process")?;
        let input = child.stdin.take().context("helper input")?;
        let output = child.stdout.take().context("helper output")?;
        Ok(Helper {
            child,
            input,
            output,
        })
    }

    /// Stops the daemon (SIGTERM: it tells its clients and unmounts) and
    /// removes the directory; an error if the daemon did not stop cleanly.
    fn stop(mut self) -> Result<()> {
        self.stop_daemon()
    }

    fn stop_daemon(&mut self) -> Result<()> {
        let Some(mut d) = self.daemon.take() else {
            return Ok(());
        };
        if let Some(pid) = rustix::process::Pid::from_raw(d.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + SIDE_TIMEOUT;
        loop {
            if let Some(st) = d.try_wait()? {
                return if st.success() {
                    Ok(())
                } else {
                    Err(anyhow!("pinfs serve exited with {st}"))
                };
            }
            if Instant::now() > deadline {
                let _ = d.kill();
                let _ = d.wait();
                bail!("pinfs serve did not stop within {SIDE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Err(e) = self.stop_daemon() {
            eprintln!("pinfs: bench ipc: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A helper process, driven one byte at a time: the bench writes `g` (go)
/// or `q` (quit); the helper answers `r` when its lease is held.
struct Helper {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
}

impl Helper {
    /// Tells the holder to take its lease and waits until it holds it.
    fn take_lease(&mut self) -> Result<()> {
        self.input
            .write_all(b"g")
            .context("tell the holder to go")?;
        let mut b = [0u8; 1];
        match self.output.read(&mut b) {
            Ok(1) if b[0] == b'r' => Ok(()),
            Ok(_) => bail!("holder gone ({})", self.status()),
            Err(e) => Err(anyhow!("holder: {e}")),
        }
    }

    fn status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(st)) => format!("exited: {st}"),
            _ => "still running".to_owned(),
        }
    }

    /// Tells the holder to quit; returns what it reports then: for every
    /// round, when it was notified and when its release returned.
    fn quit(mut self) -> Result<Vec<(u64, u64)>> {
        self.input
            .write_all(b"q")
            .context("tell the holder to quit")?;
        let mut report = String::new();
        self.output
            .read_to_string(&mut report)
            .context("the holder's report")?;
        let st = self.child.wait().context("wait for the holder")?;
        if !st.success() {
            bail!("holder exited with {st}");
        }
        report
            .lines()
            .map(|l| {
                let mut w = l.split_whitespace().map(str::parse::<u64>);
                match (w.next(), w.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
                    _ => Err(anyhow!("holder report line {l:?}")),
                }
            })
            .collect()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ------------------------------------------------------------ lease breaks

/// The lease a pinfs holder takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HolderLease {
    /// `F_WRLCK`, as the kernel's holder.
    Write,
    /// `F_RDLCK|F_LAYOUT`.
    Layout,
}

impl HolderLease {
    fn arg(self) -> &'static str {
        match self {
            HolderLease::Write => "write",
            HolderLease::Layout => "layout",
        }
    }
}

/// Now on the monotonic clock every process shares, in nanoseconds (so the
/// holder's times and the breaker's compare).
fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// One side's round trips, and where the time went.
#[derive(Default)]
struct Trips {
    total: Vec<Duration>,
    /// Breaker starts → holder notified.
    notify: Vec<Duration>,
    /// Holder notified → its release returned.
    release: Vec<Duration>,
    /// Holder's release returned → breaker proceeds.
    proceed: Vec<Duration>,
}

/// Round trips against `holder` (which then quits): before each, the
/// holder takes its lease; `breaker(round)` breaks it (and returns once it
/// is given up). The first `WARMUP` are not counted.
fn round_trips(
    mut holder: Helper,
    trips: usize,
    cold: bool,
    mut breaker: impl FnMut(usize) -> Result<()>,
    into: &mut Trips,
) -> Result<()> {
    let mut breaker_times = Vec::with_capacity(WARMUP + trips);
    for round in 0..WARMUP + trips {
        holder.take_lease()?;
        if cold {
            std::thread::sleep(COLD_GAP);
        }
        let start = mono_ns();
        breaker(round)?;
        breaker_times.push((start, mono_ns()));
    }
    let holder_times = holder.quit()?;
    if holder_times.len() != breaker_times.len() {
        bail!(
            "the holder reported {} rounds of {}",
            holder_times.len(),
            breaker_times.len()
        );
    }
    let span = |a: u64, b: u64| Duration::from_nanos(b.saturating_sub(a));
    for (&(start, end), &(notified, released)) in
        breaker_times.iter().zip(&holder_times).skip(WARMUP)
    {
        into.total.push(span(start, end));
        into.notify.push(span(start, notified));
        into.release.push(span(notified, released));
        into.proceed.push(span(released, end));
    }
    Ok(())
}

/// The truncate size of round `round`: it alternates, so that every
/// truncate changes the file (a truncate to the same size is no layout
/// change and breaks no layout lease).
fn truncate_size(round: usize) -> u64 {
    if round.is_multiple_of(2) {
        4096
    } else {
        0
    }
}

/// `truncate(2)` by path (which `rustix` does not offer).
fn kernel_truncate(path: &std::ffi::CStr, size: u64) -> std::io::Result<()> {
    let size =
        libc::off_t::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call;
    // truncate(2) only reads it.
    if unsafe { libc::truncate(path.as_ptr(), size) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn lease_breaks(bench: &Bench, client: &Client, trips: usize, card: &mut Scorecard) -> Result<()> {
    let kernel_file = bench.dir.join("lease");
    std::fs::write(&kernel_file, b"lease").context("create the kernel's file")?;
    let kernel_path = CString::new(kernel_file.as_os_str().as_bytes())?;
    let socket = bench.socket.to_string_lossy().into_owned();
    let chunk = trips.div_ceil(CHUNKS);
    let mut rows = Vec::new();
    for lease in [HolderLease::Write, HolderLease::Layout] {
        let path = format!("/lease-{}", lease.arg());
        drop(
            client
                .open(&path, OpenFlags::CREATE, 0o644)
                .map_err(|e| anyhow!("create {path}: {e}"))?,
        );
        for cold in [false, true] {
            let (mut pinfs, mut kernel) = (Trips::default(), Trips::default());
            for _ in 0..CHUNKS {
                let holder = bench.helper(&["pinfs-holder", &socket, &path, lease.arg()])?;
                round_trips(
                    holder,
                    chunk,
                    cold,
                    |round| {
                        client
                            .truncate_path(&path, truncate_size(round))
                            .map_err(|e| anyhow!("truncate {path}: {e}"))
                    },
                    &mut pinfs,
                )?;
                let holder = bench.helper(&["kernel-holder", &kernel_file.to_string_lossy()])?;
                round_trips(
                    holder,
                    chunk,
                    cold,
                    |round| {
                        kernel_truncate(&kernel_path, truncate_size(round))
                            .map_err(|e| anyhow!("truncate {}: {e}", kernel_file.display()))
                    },
                    &mut kernel,
                )?;
            }
            rows.push((lease, cold, pinfs, kernel));
        }
    }
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        "lease-break round trip (processes)", "pinfs", "kernel", "ratio"
    );
    let mut breakdowns = Vec::new();
    for (lease, cold, pinfs, kernel) in rows {
        let what = match lease {
            HolderLease::Write => "write lease",
            HolderLease::Layout => "layout lease",
        };
        let mode = if cold { "cold" } else { "hot" };
        let median = |v: &[Duration]| Latency::of(v.to_vec()).p50;
        for (side, t) in [("pinfs", &pinfs), ("kernel", &kernel)] {
            breakdowns.push(format!(
                "{side} {what}, {mode}, medians: breaker starts -> holder notified {:.1}us; holder's release {:.1}us; released -> breaker proceeds {:.1}us",
                us(median(&t.notify)),
                us(median(&t.release)),
                us(median(&t.proceed)),
            ));
        }
        let (pinfs, kernel) = (Latency::of(pinfs.total), Latency::of(kernel.total));
        for (label, p, k) in [
            ("p50", pinfs.p50, kernel.p50),
            ("p99", pinfs.p99, kernel.p99),
        ] {
            let name = format!("{what}, {mode} {label}");
            let ratio = p.as_secs_f64() / k.as_secs_f64();
            let verdict = card.check(&name, ratio, LEASE_GOAL);
            println!(
                "{name:<40} {:>10.1}us {:>10.1}us {ratio:>7.3}x  {verdict}",
                us(p),
                us(k)
            );
        }
    }
    println!("(pinfs: truncate by path through the daemon, holder releases on its event; kernel: truncate(2) vs F_SETLEASE F_WRLCK, holder in sigtimedwait; both breakers wait until the holder gave up its lease)");
    for b in breakdowns {
        println!("{b}");
    }
    Ok(())
}

// ------------------------------------------------------------- small ops

/// One small operation, on pinfs (through the daemon) and on the kernel.
#[derive(Clone, Copy, Debug)]
enum SmallOp {
    Pread,
    Pwrite,
    OpenClose,
    Stat,
}

impl SmallOp {
    fn name(self) -> &'static str {
        match self {
            SmallOp::Pread => "pread 4 KiB",
            SmallOp::Pwrite => "pwrite 4 KiB",
            SmallOp::OpenClose => "open + close",
            SmallOp::Stat => "stat",
        }
    }
}

/// Median of per-chunk means.
fn median_mean(mut chunks: Vec<Duration>) -> Duration {
    chunks.sort_unstable();
    chunks[chunks.len() / 2]
}

fn small_ops(bench: &Bench, client: &Client, ops: usize) -> Result<()> {
    let path = "/small";
    let file = client
        .open(path, OpenFlags::CREATE, 0o644)
        .map_err(|e| anyhow!("create {path}: {e}"))?;
    let fill = vec![0x5au8; SMALL_FILE_BYTES as usize];
    file.pwrite(0, &fill)
        .map_err(|e| anyhow!("fill {path}: {e}"))?;
    let kernel_file = bench.dir.join("small");
    std::fs::write(&kernel_file, &fill).context("create the kernel's file")?;
    let kpath = CString::new(kernel_file.as_os_str().as_bytes())?;
    let kfd = rustix::fs::open(
        kpath.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .context("open the kernel's file")?;
    let mut buf = vec![0u8; SMALL_IO];
    let blocks = SMALL_FILE_BYTES / SMALL_IO as u64;
    println!(
        "{:<40} {:>12} {:>12} {:>8} {:>12}",
        "small operations (per op)", "pinfs", "kernel", "ratio", "overhead"
    );
    for op in [
        SmallOp::Pread,
        SmallOp::Pwrite,
        SmallOp::OpenClose,
        SmallOp::Stat,
    ] {
        let (mut pinfs, mut kernel) = (Vec::new(), Vec::new());
        for _ in 0..OP_CHUNKS {
            let start = Instant::now();
            for i in 0..ops {
                let at = (i as u64 % blocks) * SMALL_IO as u64;
                let r = match op {
                    SmallOp::Pread => file.pread(at, &mut buf).map(drop),
                    SmallOp::Pwrite => file.pwrite(at, &buf).map(drop),
                    SmallOp::OpenClose => client.open(path, OpenFlags::RDWR, 0).map(drop),
                    SmallOp::Stat => client.stat(path).map(drop),
                };
                r.map_err(|e| anyhow!("{} on {path}: {e}", op.name()))?;
            }
            pinfs.push(start.elapsed() / ops as u32);
            let start = Instant::now();
            for i in 0..ops {
                let at = (i as u64 % blocks) * SMALL_IO as u64;
                match op {
                    SmallOp::Pread => drop(rustix::io::pread(&kfd, &mut buf, at)?),
                    SmallOp::Pwrite => drop(rustix::io::pwrite(&kfd, &buf, at)?),
                    SmallOp::OpenClose => drop(rustix::fs::open(
                        kpath.as_c_str(),
                        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )?),
                    SmallOp::Stat => drop(rustix::fs::stat(kpath.as_c_str())?),
                }
            }
            kernel.push(start.elapsed() / ops as u32);
        }
        let (p, k) = (median_mean(pinfs), median_mean(kernel));
        println!(
            "{:<40} {:>10.2}us {:>10.2}us {:>7.1}x {:>+10.2}us",
            op.name(),
            us(p),
            us(k),
            p.as_secs_f64() / k.as_secs_f64(),
            us(p) - us(k)
        );
    }
    println!("(pinfs: one request and reply over the daemon's socket per operation, median of {OP_CHUNKS} chunks; close is not waited for, as a client's drop sends it)");
    drop(file);
    client
        .unlink(path)
        .map_err(|e| anyhow!("unlink {path}: {e}"))?;
    Ok(())
}

// -------------------------------------------------------------- bandwidth

/// Copy `len` bytes from `src` to `dst`, opaque to the optimiser (which
/// could otherwise drop or merge copies into a buffer overwritten later).
///
/// # Safety
/// Both ranges must be valid for `len` bytes and must not overlap.
unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    let (src, dst) = (std::hint::black_box(src), std::hint::black_box(dst));
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    std::hint::black_box(dst);
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn gibs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64
}

fn bandwidth(bench: &Bench, client: &Client, bytes: usize, card: &mut Scorecard) -> Result<()> {
    let path = "/bandwidth";
    let file = client
        .open(path, OpenFlags::CREATE, 0o644)
        .map_err(|e| anyhow!("create {path}: {e}"))?;
    file.pwrite(0, &vec![0x33u8; bytes])
        .map_err(|e| anyhow!("fill {path}: {e}"))?;
    let map = file
        .mmap(0, bytes as u64, MAP_SHARED)
        .map_err(|e| anyhow!("mmap {path}: {e}"))?;
    let p = map.as_ptr();
    let mut a = vec![1u8; bytes];
    let b = vec![2u8; bytes];
    let dst = a.as_mut_ptr();
    // Warm both sides (page tables, caches) once.
    // SAFETY: `p` maps `bytes` of written, unshared file blocks while `map`
    // lives, and nothing changes the file's layout meanwhile; `a` is a
    // distinct heap buffer of that size.
    unsafe { copy(p, dst, bytes) };
    // Diagnostic baseline: the kernel's own mapping of a tmpfs file of the
    // same size (page size and placement as the pool's, no pinfs at all).
    let kernel_file = bench.dir.join("bandwidth");
    std::fs::write(&kernel_file, vec![0x33u8; bytes]).context("create the kernel's file")?;
    let kfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&kernel_file)
        .context("open the kernel's file")?;
    // SAFETY: a fresh shared mapping of a file of `bytes` bytes, at an
    // address the kernel chooses; unmapped below, never referenced.
    let kmap = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            bytes,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &kfile,
            0,
        )
    }
    .context("mmap the kernel's file")?
    .cast::<u8>();
    // SAFETY: `kmap` maps `bytes` of the file; `a` is a distinct buffer.
    unsafe { copy(kmap, dst, bytes) };
    let (mut memcpy, mut read, mut write) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut kread, mut kwrite) = (Duration::MAX, Duration::MAX);
    // Interleaved rounds, best of each: all see the same machine.
    for _ in 0..BANDWIDTH_ROUNDS {
        // SAFETY: `a` and `b` are distinct heap buffers of `bytes`.
        memcpy = memcpy.min(timed(|| unsafe { copy(b.as_ptr(), dst, bytes) }));
        // SAFETY: as for the warm-up.
        read = read.min(timed(|| unsafe { copy(p, dst, bytes) }));
        // SAFETY: as for the warm-up; only this process uses the file.
        write = write.min(timed(|| unsafe { copy(b.as_ptr(), p, bytes) }));
        // SAFETY: `kmap` maps `bytes`, distinct from `a` and `b`.
        kread = kread.min(timed(|| unsafe { copy(kmap, dst, bytes) }));
        // SAFETY: as above.
        kwrite = kwrite.min(timed(|| unsafe { copy(b.as_ptr(), kmap, bytes) }));
    }
    std::hint::black_box(&a);
    // SAFETY: `kmap` is the mapping made above, of `bytes`, no longer used.
    unsafe { rustix::mm::munmap(kmap.cast(), bytes) }.context("munmap the kernel's file")?;
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        format!("mapped bandwidth ({} MiB, client process)", bytes >> 20),
        "GiB/s",
        "memcpy",
        "ratio"
    );
    for (what, t) in [
        ("read through the mapping", read),
        ("write through the mapping", write),
    ] {
        let ratio = memcpy.as_secs_f64() / t.as_secs_f64();
        let verdict = card.check(what, ratio, BANDWIDTH_GOAL);
        println!(
            "{what:<40} {:>12.2} {:>12.2} {ratio:>7.3}x  {verdict}",
            gibs(bytes, t),
            gibs(bytes, memcpy)
        );
    }
    println!(
        "(diagnostic: the same copies through the kernel's mmap of a tmpfs file: read {:.2} GiB/s ({:.3}x memcpy), write {:.2} GiB/s ({:.3}x); pinfs / kernel mmap: read {:.3}x, write {:.3}x)",
        gibs(bytes, kread),
        memcpy.as_secs_f64() / kread.as_secs_f64(),
        gibs(bytes, kwrite),
        memcpy.as_secs_f64() / kwrite.as_secs_f64(),
        kread.as_secs_f64() / read.as_secs_f64(),
        kwrite.as_secs_f64() / write.as_secs_f64(),
    );
    drop(map);
    drop(file);
    client
        .unlink(path)
        .map_err(|e| anyhow!("unlink {path}: {e}"))?;
    Ok(())
}
