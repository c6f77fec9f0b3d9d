//! `pinfs bench dma`: device registrations, device writes, and revocation,
//! each against a baseline measured in the same run where one exists.
//!
//! What is measured, in one run, on memfd pools (the kernel pins their
//! pages for io_uring):
//!
//! - **Registration time per GiB** through [`Mapping::register`] (entitlement,
//!   the registration's lease, long-term pins, the device's table), for both
//!   devices, against io_uring's own `register_buffers` of the same amount of
//!   populated anonymous memory (same transparent-huge-page setting as the
//!   pool). Target ≤ 1.0×.
//! - **Device write throughput** at 4 KiB and 1 MiB, one write at a time:
//!   `soft` against an opaque `memcpy` of the same size; `uring` (a
//!   `READ_FIXED` from a pre-filled memfd into the registered pool pages)
//!   against a plain `READ_FIXED` from the same memfd into anonymous fixed
//!   buffers on a ring set up as the device's. Target ≥ 0.9×.
//! - **Revocation latency**, from lease-break-time expiring to revocation
//!   confirmed, with 0, 1 and 64 requests in flight, p50/p99. No kernel
//!   mechanism publishes such a figure, so the target is absolute (see
//!   [`revocation_target`]).
//! - **A truncate of a 1 GiB registered file** under `revoke`, the owner
//!   unresponsive: total time minus lease-break-time. Target ≤ 50 ms.
//!
//! Every line with a target ends with the verdict of `bench_target`.
//!
//! # Safety
//!
//! The baselines call io_uring and mmap directly: an anonymous mapping owned
//! by [`Anon`] from creation to drop, registered as a fixed buffer only while
//! the [`Anon`] lives (the ring is dropped first), and `READ_FIXED` requests
//! whose address range lies inside that buffer and whose descriptor stays
//! open until the completion is reaped (each request is waited for before
//! the next is pushed). The `memcpy` baseline copies between two owned
//! vectors, in bounds.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;
use pinfs::dma::soft::{SoftDevice, WorkRequest};
use pinfs::dma::uring::{UringDevice, RING_ENTRIES, TABLE_ENTRIES};
use pinfs::dma::{Backing, Completion, Device, DeviceCaps, MrId, MrKeys, RevokeMode};
use pinfs::fs::{Cred, Fs, Handle, MountOptions, OpenFlags, TruncatePolicy};
use pinfs::map::{MapFlags, Mapping};
use pinfs::media::{MappedPool, Media};

use crate::bench_huge;
use crate::bench_target::{Goal, Scorecard};

/// Registration cost relative to io_uring's registration of anonymous memory.
const REGISTER_GOAL: Goal = Goal::AtMost(1.0);

/// Device write throughput relative to its baseline.
const WRITE_GOAL: Goal = Goal::AtLeast(0.9);

/// The truncate's time beyond lease-break-time, relative to 50 ms.
const TRUNCATE_BEYOND: Duration = Duration::from_millis(50);

/// Lease-break-time of the revocation-latency pool (short: many rounds).
const LATENCY_BREAK: Duration = Duration::from_millis(20);

/// Lease-break-time of the 1 GiB truncate.
const BIG_BREAK: Duration = Duration::from_millis(100);

const BLOCK: u64 = 4096;
const OWNER: Cred = Cred::root_as(1);
const OTHER: Cred = Cred::root_as(2);

/// Absolute targets of revocation latency (p99), by requests in flight:
/// with none, the breaker's wake-up at the deadline (the kernel's timer
/// slack alone is 50 µs) plus one table update; each request in flight adds
/// its own completion (a 4 KiB copy for `uring`'s pipe reads, up to the
/// copy of the 256 KiB a `soft` worker is doing) and a wake-up of the
/// waiter on a loaded two-core machine.
fn revocation_target(in_flight: usize) -> Duration {
    match in_flight {
        0 => Duration::from_micros(200),
        1 => Duration::from_micros(500),
        _ => Duration::from_millis(5),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The `p`-th percentile (nearest rank) of `v`, sorted.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A memfd pool of `bytes`, mounted with `policy` and `break_time`.
fn pool(bytes: u64, break_time: Duration) -> Result<(Arc<Fs>, Arc<dyn Media>)> {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(bytes).context("memfd pool")?);
    Fs::mkfs(&*media)?;
    let fs = Fs::mount_with(
        media.clone(),
        MountOptions {
            break_time,
            policy: TruncatePolicy::Revoke,
        },
    )?;
    Ok((fs, media))
}

/// `/path` of `len` written bytes, owned by `OWNER`.
fn written_file(fs: &Arc<Fs>, path: &str, len: u64) -> Result<Handle> {
    let h = fs.open(OWNER, path, OpenFlags::CREATE, 0o644)?;
    h.truncate(0)?;
    let chunk = vec![0x5au8; (8 << 20).min(len as usize)];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(chunk.len() as u64) as usize;
        h.pwrite(at, &chunk[..n])?;
        at += n as u64;
    }
    Ok(h)
}

/// An anonymous private mapping, populated.
struct Anon {
    base: *mut u8,
    len: usize,
}

impl Anon {
    fn new(len: usize, huge: bool) -> Result<Anon> {
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap anonymous");
        }
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice on the mapping just made; failure is harmless.
        unsafe { libc::madvise(p, len, advice) };
        let a = Anon {
            base: p.cast(),
            len,
        };
        // Populate, as the pool's pages are: one store per 4 KiB.
        for off in (0..len).step_by(BLOCK as usize) {
            // SAFETY: in bounds of the mapping, which we own.
            unsafe { a.base.add(off).write_volatile(1) };
        }
        Ok(a)
    }

    fn iovec(&self, off: usize, len: usize) -> libc::iovec {
        libc::iovec {
            // SAFETY: callers keep off + len within the mapping.
            iov_base: unsafe { self.base.add(off) }.cast(),
            iov_len: len,
        }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: our mapping; no ring that registered it outlives us (see
        // the module doc).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A ring set up as the `uring` device's: `RING_ENTRIES` deep, with a
/// sparse table of `TABLE_ENTRIES` fixed buffers.
fn device_like_ring() -> Result<IoUring> {
    let ring = IoUring::builder()
        .build(RING_ENTRIES)
        .context("io_uring setup")?;
    ring.submitter()
        .register_buffers_sparse(TABLE_ENTRIES)
        .context("register a sparse table")?;
    Ok(ring)
}

/// A memfd of `len` bytes of 0x3c: the source of device writes.
fn source_memfd(len: usize) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("pinfs-bench-dma", rustix::fs::MemfdFlags::CLOEXEC)
        .context("memfd_create")?;
    let data = vec![0x3cu8; len];
    let mut at = 0;
    while at < len {
        at += rustix::io::pwrite(&fd, &data[at..], at as u64).context("fill the source")?;
    }
    Ok(fd)
}

/// Registration time per GiB, both devices, against `register_buffers`.
fn registration(
    fs: &Arc<Fs>,
    media: &Arc<dyn Media>,
    len: u64,
    rounds: usize,
    card: &mut Scorecard,
) -> Result<()> {
    let gib = len as f64 / (1u64 << 30) as f64;
    let huge = media.caps().huge_pages;
    let anon = Anon::new(len as usize, huge)?;
    let mut base = Vec::new();
    for _ in 0..rounds {
        let ring: IoUring = IoUring::builder().build(RING_ENTRIES)?;
        let iov: Vec<libc::iovec> = (0..len)
            .step_by(1 << 30)
            .map(|o| anon.iovec(o as usize, (len - o).min(1 << 30) as usize))
            .collect();
        let t = Instant::now();
        // SAFETY: the iovecs lie in `anon`, which outlives `ring`.
        unsafe { ring.submitter().register_buffers(&iov) }
            .context("io_uring register_buffers of anonymous memory")?;
        base.push(t.elapsed());
        ring.submitter().unregister_buffers()?;
    }
    drop(anon);
    let base = median(base);
    println!(
        "{:<44} {:>10.2} ms/GiB {:>8}",
        format!(
            "io_uring register_buffers, anonymous{} (baseline)",
            if huge { ", THP" } else { "" }
        ),
        ms(base) / gib,
        "1.00x"
    );
    let file = written_file(fs, "/big", len)?;
    let uring: Arc<dyn Device> = Arc::new(UringDevice::new(media.clone())?);
    let soft: Arc<dyn Device> = Arc::new(SoftDevice::new(media.clone())?);
    for dev in [uring, soft] {
        let timed = Timed::new(dev.clone());
        let mut times = Vec::new();
        let mut in_device = Vec::new();
        for _ in 0..rounds {
            let map = file.mmap(0, len, MapFlags::DIRECT)?;
            let t = Instant::now();
            let reg = map.register(timed.clone(), 0, len, RevokeMode::Invalidate)?;
            times.push(t.elapsed());
            in_device.push(*timed.registered_in.lock());
            reg.deregister()?;
            drop(map);
        }
        let t = median(times);
        let ratio = t.as_secs_f64() / base.as_secs_f64();
        let label = format!("Mapping::register, {} device", dev.name());
        println!(
            "{label:<44} {:>10.2} ms/GiB {ratio:>7.2}x  {}",
            ms(t) / gib,
            card.check(&label, ratio, REGISTER_GOAL)
        );
        println!(
            "{:<44} {:>10.2} ms/GiB  (the rest is the file system's: lease, pins, page list)",
            format!("  of which the {} device's own register", dev.name()),
            ms(median(in_device)) / gib
        );
    }
    Ok(())
}

/// Throughput of `ops` calls of `f` moving `size` bytes each, in GiB/s;
/// the best of `rounds`.
fn throughput(
    size: usize,
    ops: usize,
    rounds: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    // Warm up: every slot touched once (page faults, caches) before timing.
    for i in 0..ops.min(64) {
        f(i)?;
    }
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        for i in 0..ops {
            f(i)?;
        }
        best = best.min(t.elapsed());
    }
    Ok((size * ops) as f64 / best.as_secs_f64() / (1u64 << 30) as f64)
}

/// Device write throughput at 4 KiB and 1 MiB.
fn writes(fs: &Arc<Fs>, media: &Arc<dyn Media>, quick: bool, card: &mut Scorecard) -> Result<()> {
    const REGION: usize = 4 << 20;
    let total: usize = if quick { 16 << 20 } else { 128 << 20 };
    let rounds = if quick { 1 } else { 3 };
    let file = written_file(fs, "/w", REGION as u64)?;
    let map = file.mmap(0, REGION as u64, MapFlags::DIRECT)?;
    let soft = Arc::new(SoftDevice::new(media.clone())?);
    let uring = Arc::new(UringDevice::new(media.clone())?);
    let soft_reg = map.register(soft.clone(), 0, REGION as u64, RevokeMode::Invalidate)?;
    let uring_reg = map.register(uring.clone(), 0, REGION as u64, RevokeMode::Invalidate)?;
    let src = source_memfd(REGION)?;
    // The baseline ring, with a 4 MiB anonymous fixed buffer at entry 0.
    let anon = Anon::new(REGION, media.caps().huge_pages)?;
    let mut ring = device_like_ring()?;
    // SAFETY: the iovec lies in `anon`, which outlives `ring` (dropped at
    // the end of this function in reverse order of declaration).
    unsafe {
        ring.submitter()
            .register_buffers_update(0, &[anon.iovec(0, REGION)], None)
    }
    .context("fill a table entry with anonymous memory")?;
    for size in [4usize << 10, 1 << 20] {
        let ops = total / size;
        let slots = REGION / size;
        let data = vec![0xa5u8; size];
        // Non-zero, so the allocation is touched (not lazily zeroed pages).
        let mut sink = vec![1u8; REGION];
        let memcpy = throughput(size, ops, rounds, |i| {
            let at = (i % slots) * size;
            sink[at..at + size].copy_from_slice(std::hint::black_box(&data));
            std::hint::black_box(&mut sink);
            Ok(())
        })?;
        let dev = throughput(size, ops, rounds, |i| {
            let at = ((i % slots) * size) as u64;
            match soft_reg.write(at, &data)? {
                Completion::Ok => Ok(()),
                c => Err(anyhow!("soft write: {c}")),
            }
        })?;
        let label = format!("soft write {} KiB", size >> 10);
        let ratio = dev / memcpy;
        println!(
            "{label:<44} {dev:>9.2} GiB/s  vs memcpy {memcpy:>7.2} GiB/s {ratio:>7.3}x  pool {}  {}",
            bench_huge::pool(&**media),
            card.check(&label, ratio, WRITE_GOAL)
        );
        let fd = src.as_raw_fd();
        let read_fixed = throughput(size, ops, rounds, |i| {
            let at = (i % slots) * size;
            let sqe = opcode::ReadFixed::new(
                types::Fd(fd),
                anon.iovec(at, size).iov_base.cast(),
                size as u32,
                0,
            )
            .offset(at as u64)
            .build();
            // SAFETY: the buffer range lies in entry 0 (`anon`) and the
            // descriptor stays open; we wait for the completion below.
            unsafe { ring.submission().push(&sqe) }.map_err(|_| anyhow!("sq full"))?;
            ring.submit_and_wait(1)?;
            let cqe = ring
                .completion()
                .next()
                .ok_or_else(|| anyhow!("no completion"))?;
            ensure!(cqe.result() == size as i32, "READ_FIXED: {}", cqe.result());
            Ok(())
        })?;
        let mr = uring_reg.keys().mr;
        let dev = throughput(size, ops, rounds, |i| {
            let at = ((i % slots) * size) as u64;
            match uring.write_from_fd(mr, at, size as u64, src.as_fd(), at)? {
                Completion::Ok => Ok(()),
                c => Err(anyhow!("uring write: {c}")),
            }
        })?;
        let label = format!("uring write {} KiB", size >> 10);
        let ratio = dev / read_fixed;
        println!(
            "{label:<44} {dev:>9.2} GiB/s  vs READ_FIXED {read_fixed:>5.2} GiB/s {ratio:>7.3}x  pool {}  {}",
            bench_huge::pool(&**media),
            card.check(&label, ratio, WRITE_GOAL)
        );
    }
    drop(ring);
    drop(anon);
    Ok(())
}

/// A device whose revocation is timed (and which can put requests in flight
/// at the moment it begins); otherwise the device itself.
struct Timed {
    inner: Arc<dyn Device>,
    /// When revocation began and was confirmed (the first revocation only).
    times: Mutex<Option<(Instant, Instant)>>,
    /// Run as revocation begins: fills the pipes or posts the work requests.
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Time spent in the device's own `register` (the last one).
    registered_in: Mutex<Duration>,
}

impl Timed {
    fn new(inner: Arc<dyn Device>) -> Arc<Timed> {
        Arc::new(Timed {
            inner,
            times: Mutex::new(None),
            hook: Mutex::new(None),
            registered_in: Mutex::new(Duration::ZERO),
        })
    }
}

impl std::fmt::Debug for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed").field("inner", &self.inner).finish()
    }
}

impl Device for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn caps(&self) -> DeviceCaps {
        self.inner.caps()
    }
    fn register(&self, backing: Backing, mode: RevokeMode) -> pinfs::Result<MrKeys> {
        let t = Instant::now();
        let r = self.inner.register(backing, mode);
        *self.registered_in.lock() = t.elapsed();
        r
    }
    fn revoke(&self, mr: MrId) -> pinfs::Result<()> {
        let begun = Instant::now();
        if let Some(hook) = self.hook.lock().take() {
            hook();
        }
        let r = self.inner.revoke(mr);
        let mut times = self.times.lock();
        if times.is_none() {
            *times = Some((begun, Instant::now()));
        }
        r
    }
    fn is_revoked(&self, mr: MrId) -> bool {
        self.inner.is_revoked(mr)
    }
    fn invalidate_pages(&self, mr: MrId, first: u64, count: u64) -> pinfs::Result<()> {
        self.inner.invalidate_pages(mr, first, count)
    }
    fn deregister(&self, mr: MrId) -> pinfs::Result<()> {
        self.inner.deregister(mr)
    }
    fn write(&self, mr: MrId, offset: u64, data: &[u8]) -> pinfs::Result<Completion> {
        self.inner.write(mr, offset, data)
    }
    fn read(&self, mr: MrId, offset: u64, buf: &mut [u8]) -> pinfs::Result<Completion> {
        self.inner.read(mr, offset, buf)
    }
}

/// Requests a round puts in flight, and how they are collected afterwards.
enum InFlight {
    None,
    /// `uring`: `READ_FIXED` from pipes, submitted before the truncate and
    /// blocked in the kernel until the hook fills the pipes.
    Uring(Vec<pinfs::dma::uring::Ticket>),
    /// `soft`: work requests posted by the hook.
    Soft(Arc<pinfs::dma::soft::QueuePair>),
}

/// The load average (1 min) from /proc, for the reader of the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// One revocation-latency sample: register, break the lease with an
/// unresponsive owner, and time from the deadline to confirmation. Returns
/// (deadline → confirmed, of which the device's revoke).
fn revocation_round(
    fs: &Arc<Fs>,
    dev: &Arc<dyn Device>,
    uring: Option<&Arc<UringDevice>>,
    soft: Option<&Arc<SoftDevice>>,
    pipes: &[(OwnedFd, OwnedFd)],
    n: usize,
) -> Result<(Duration, Duration)> {
    const LEN: u64 = 1 << 20;
    const WR: usize = 256 << 10;
    let file = written_file(fs, "/r", LEN)?;
    let map: Mapping = file.mmap(0, LEN, MapFlags::DIRECT)?;
    let timed = Timed::new(dev.clone());
    let reg = map.register(timed.clone(), 0, LEN, RevokeMode::Invalidate)?;
    let keys = reg.keys();
    let mut flight = InFlight::None;
    let posted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    if n > 0 {
        if let Some(u) = uring {
            let mut tickets = Vec::with_capacity(n);
            for (i, (r, _)) in pipes.iter().take(n).enumerate() {
                let at = (i as u64 * BLOCK) % LEN;
                tickets.push(u.submit_write_from_fd(keys.mr, at, BLOCK, r.as_fd(), 0)?);
            }
            // They wait in the kernel for their pipes: in flight.
            let waiting = u.in_flight(keys.mr);
            ensure!(waiting == n, "{waiting} of {n} requests in flight");
            let writers: Vec<OwnedFd> = pipes
                .iter()
                .take(n)
                .map(|(_, w)| w.try_clone())
                .collect::<std::io::Result<_>>()?;
            *timed.hook.lock() = Some(Box::new(move || {
                let page = [0x42u8; BLOCK as usize];
                for w in &writers {
                    let _ = rustix::io::write(w, &page);
                }
            }));
            flight = InFlight::Uring(tickets);
        } else if let Some(s) = soft {
            let qp = Arc::new(s.queue_pair());
            let qp2 = qp.clone();
            let wrs: Vec<WorkRequest> = (0..n)
                .map(|i| WorkRequest::Write {
                    wr_id: i as u64,
                    key: keys.rkey,
                    iova: keys.iova + (i * WR) as u64 % LEN,
                    data: vec![0x42; WR].into(),
                })
                .collect();
            let count = posted.clone();
            *timed.hook.lock() = Some(Box::new(move || {
                for wr in wrs {
                    if qp2.post_send(wr).is_ok() {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
            flight = InFlight::Soft(qp);
        }
    }
    let other = fs.open(OTHER, "/r", OpenFlags::RDWR, 0)?;
    let started = Instant::now();
    other.truncate(0)?;
    ensure!(reg.is_revoked(), "not revoked by the truncate");
    let (begun, confirmed) = (*timed.times.lock()).ok_or_else(|| anyhow!("never revoked"))?;
    let deadline = started + LATENCY_BREAK;
    match flight {
        InFlight::None => {}
        InFlight::Uring(tickets) => {
            for t in tickets {
                let _ = t.wait();
            }
        }
        InFlight::Soft(qp) => {
            let p = posted.load(std::sync::atomic::Ordering::Relaxed);
            ensure!(p == n, "{p} of {n} work requests posted");
            while qp.outstanding() > 0 {
                qp.wait_cq(64);
            }
        }
    }
    drop(reg);
    drop(map);
    Ok((
        confirmed.saturating_duration_since(deadline),
        confirmed - begun,
    ))
}

/// Revocation latency, both devices, 0/1/64 requests in flight.
fn revocation(quick: bool, card: &mut Scorecard) -> Result<()> {
    let rounds: usize = if quick { 10 } else { 60 };
    let (fs, media) = pool(64 << 20, LATENCY_BREAK)?;
    let uring = Arc::new(UringDevice::new(media.clone())?);
    let soft = Arc::new(SoftDevice::new(media.clone())?);
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..64)
        .map(|_| rustix::pipe::pipe().context("pipe"))
        .collect::<Result<_>>()?;
    println!(
        "revocation latency, lease-break-time {} ms, owner unresponsive, {rounds} rounds each (p99 = nearest rank: the slowest {} round(s)): from the deadline (taken as truncate start + lease-break-time, so slightly early: an upper bound) to revocation confirmed; 'in flight': uring READ_FIXED from pipes filled as revocation begins, soft 256 KiB work requests posted as it begins",
        LATENCY_BREAK.as_millis(),
        rounds.div_ceil(100)
    );
    for n in [0usize, 1, 64] {
        for dev in ["uring", "soft"] {
            let (d, u, s): (Arc<dyn Device>, _, _) = if dev == "uring" {
                (uring.clone(), Some(&uring), None)
            } else {
                (soft.clone(), None, Some(&soft))
            };
            let mut total = Vec::with_capacity(rounds);
            let mut own = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let (t, o) = revocation_round(&fs, &d, u, s, &pipes, n)?;
                total.push(t);
                own.push(o);
            }
            total.sort();
            own.sort();
            let (p50, p99) = (percentile(&total, 50.0), percentile(&total, 99.0));
            let target = revocation_target(n);
            let label = format!("revocation {dev}, {n} in flight");
            let ratio = p99.as_secs_f64() / target.as_secs_f64();
            println!(
                "{label:<34} p50 {:>7.1} us  p99 {:>7.1} us  (device revoke p50 {:>6.1} p99 {:>6.1} us)  target p99 <= {} us: {}",
                us(p50),
                us(p99),
                us(percentile(&own, 50.0)),
                us(percentile(&own, 99.0)),
                target.as_micros(),
                card.check(&label, ratio, Goal::AtMost(1.0))
            );
        }
    }
    Ok(())
}

/// A truncate of a registered file of `len` under `revoke`, the owner
/// unresponsive: total time minus lease-break-time.
fn big_truncate(
    fs: &Arc<Fs>,
    media: &Arc<dyn Media>,
    len: u64,
    card: &mut Scorecard,
) -> Result<()> {
    let devices: [Arc<dyn Device>; 2] = [
        Arc::new(UringDevice::new(media.clone())?),
        Arc::new(SoftDevice::new(media.clone())?),
    ];
    // Baseline: the same truncate of the same file, nothing registered.
    written_file(fs, "/big", len)?;
    let other = fs.open(OTHER, "/big", OpenFlags::RDWR, 0)?;
    let t = Instant::now();
    other.truncate(0)?;
    let plain = t.elapsed();
    println!(
        "{:<44} total {:>8.1} ms  (for comparison: freeing {} MiB of blocks)",
        format!("truncate {} MiB, nothing registered", len >> 20),
        ms(plain),
        len >> 20
    );
    for dev in devices {
        let file = written_file(fs, "/big", len)?;
        let map = file.mmap(0, len, MapFlags::DIRECT)?;
        let timed = Timed::new(dev.clone());
        let reg = map.register(timed.clone(), 0, len, RevokeMode::Invalidate)?;
        let other = fs.open(OTHER, "/big", OpenFlags::RDWR, 0)?;
        let busy_before = fs.statfs().free;
        let t = Instant::now();
        other.truncate(0)?;
        let total = t.elapsed();
        ensure!(reg.is_revoked(), "the truncate did not revoke");
        let s = fs.statfs();
        ensure!(
            s.busy == 0 && s.free >= busy_before + len / BLOCK,
            "the blocks were not freed"
        );
        let beyond = total.saturating_sub(BIG_BREAK);
        let label = format!("truncate {} MiB registered, {}", len >> 20, dev.name());
        let ratio = beyond.as_secs_f64() / TRUNCATE_BEYOND.as_secs_f64();
        println!(
            "{label:<44} total {:>8.1} ms  beyond lease-break-time {:>6.1} ms  target <= {} ms: {}",
            ms(total),
            ms(beyond),
            TRUNCATE_BEYOND.as_millis(),
            card.check(&label, ratio, Goal::AtMost(1.0))
        );
        if let Some((begun, confirmed)) = *timed.times.lock() {
            println!(
                "{:<44} deadline -> revoke begins {:>6.1} ms, device revoke {:>6.1} ms, then the truncate {:>6.1} ms",
                "  of which",
                ms(begun.saturating_duration_since(t + BIG_BREAK)),
                ms(confirmed - begun),
                ms((t + total).saturating_duration_since(confirmed))
            );
        }
        drop(reg);
        drop(map);
    }
    Ok(())
}

/// Run `bench dma`.
pub fn run(quick: bool) -> Result<()> {
    let len: u64 = if quick { 256 << 20 } else { 1 << 30 };
    let rounds = if quick { 1 } else { 3 };
    println!(
        "pinfs bench dma: devices on memfd pools (uring: real kernel pins and DMA through io_uring fixed buffers; soft: software RDMA device)"
    );
    let (fs, media) = pool(len + (256 << 20), BIG_BREAK)?;
    println!("{}", media.caps());
    println!(
        "load average {} on {} cores (others' work shows in the tail latencies)",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    let mut card = Scorecard::default();
    println!(
        "registration of {} MiB, median of {rounds} round(s) (ratio: time / baseline time; target {REGISTER_GOAL})",
        len >> 20
    );
    registration(&fs, &media, len, rounds, &mut card)?;
    println!();
    println!(
        "device writes into a registered 4 MiB range, one at a time, best of {} round(s) (ratio: speed / baseline speed; target {WRITE_GOAL})",
        if quick { 1 } else { 3 }
    );
    writes(&fs, &media, quick, &mut card)?;
    println!();
    revocation(quick, &mut card)?;
    println!();
    println!(
        "truncate by another actor, policy revoke, lease-break-time {} ms, owner unresponsive",
        BIG_BREAK.as_millis()
    );
    big_truncate(&fs, &media, len, &mut card)?;
    println!();
    println!("{}", card.summary());
    Ok(())
}
