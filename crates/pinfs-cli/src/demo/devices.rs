//! The device part of `pinfs demo` (issue 9): a device streaming into a
//! registered file while another actor truncates it, told as a timeline.
//!
//! Three scenes, each on a fresh volatile (memfd) pool so that the `uring`
//! device can long-term-pin it and the kernel itself does the device's
//! copies (`READ_FIXED` into fixed buffers over pool pages):
//!
//! - (a) `lease_direct` with a cooperative owner: notified, it stops the
//!   stream and deregisters; the truncate completes before lease-break-time.
//! - (b) the same owner never reacts: at lease-break-time the device is
//!   revoked (once `invalidate`, once `redirect`), the blocks are freed only
//!   after the revocation is confirmed, and checksums show that no other
//!   file changed.
//! - (c) Ira Weiny's model: an unbreakable layout lease through a plain
//!   shared mapping; another actor's truncate is refused, the holder told.
//!
//! Every claim printed is checked (`ensure!`): a demo that lies is worse
//! than none. Times are printed, never asserted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use parking_lot::Mutex;
use pinfs::dma::soft::SoftDevice;
use pinfs::dma::uring::UringDevice;
use pinfs::dma::{Backing, Completion, Device, DeviceCaps, MrId, MrKeys, RevokeMode};
use pinfs::fs::{Cred, Fs, Handle, MountOptions, OpenFlags, Registration, TruncatePolicy};
use pinfs::lease::{EventKind, LeaseRequest, OwnerId};
use pinfs::map::MapFlags;
use pinfs::media::{MappedPool, Media};
use pinfs::Errno;

/// Each scene's pool.
const POOL_BYTES: u64 = 64 << 20;

/// The registered file.
const FILE_BYTES: u64 = 1 << 20;

/// Bytes per device write of the stream.
const CHUNK: usize = 64 << 10;

/// Lease-break-time of the scenes (short: the demo must stay quick).
const BREAK_TIME: Duration = Duration::from_millis(500);

/// Longest wait for a notification (only a bug makes the demo wait at all).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lease owners of the scenes, shown as `@app`, `@truncator`, `@other`.
const OWNER: u64 = 11;
const TRUNCATOR: u64 = 12;
const OTHER: u64 = 13;

/// Most writes one stream makes (a named limit: the stream stops itself).
const MAX_STREAM_WRITES: u64 = 1 << 20;

/// Prints `[  12.3 ms] @actor what` lines, elapsed since the scene began.
#[derive(Clone)]
struct Timeline {
    start: Instant,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
        }
    }

    fn ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    fn say(&self, what: impl AsRef<str>) {
        println!("   [{:>7.1} ms] {}", self.ms(), what.as_ref());
    }
}

/// A device as the file system sees it, with the moments of its revocation
/// printed on the timeline: the blocks' state when revocation begins, and
/// when it is confirmed. It changes nothing of what the device does.
struct Watched {
    inner: Arc<dyn Device>,
    fs: Mutex<Weak<Fs>>,
    line: Timeline,
    label: String,
    /// Narrate revocations (set for the forced ones of scene (b); a
    /// deregistration's own quiescence is not the story).
    narrate: AtomicBool,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Device for Watched {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn caps(&self) -> DeviceCaps {
        self.inner.caps()
    }
    fn register(&self, backing: Backing, mode: RevokeMode) -> pinfs::Result<MrKeys> {
        self.inner.register(backing, mode)
    }
    fn revoke(&self, mr: MrId) -> pinfs::Result<()> {
        let already = self.inner.is_revoked(mr) || !self.narrate.load(Ordering::SeqCst);
        if !already {
            if let Some(fs) = self.fs.lock().upgrade() {
                let s = fs.statfs();
                self.line.say(format!(
                    "@truncator, at lease-break-time: the registration's lease is removed; the {} is revoked first (statfs: free {}, busy {}: nothing freed yet)",
                    self.label, s.free, s.busy
                ));
            }
        }
        let t = Instant::now();
        let r = self.inner.revoke(mr);
        if !already && r.is_ok() {
            let took = t.elapsed();
            let free = self.fs.lock().upgrade().map(|fs| fs.statfs().free);
            self.line.say(format!(
                "{}: revocation confirmed after {:.0?}: no request in flight or later reaches the pages (statfs free still {}); only now may the truncate free them",
                self.label,
                took,
                free.map_or("?".into(), |f| f.to_string())
            ));
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

/// A scene's file system and device.
struct Scene {
    fs: Arc<Fs>,
    device: Arc<Watched>,
    /// The same device when it is the `uring` one (to look at its scratch).
    uring: Option<Arc<UringDevice>>,
    line: Timeline,
}

impl Scene {
    /// A fresh memfd pool, mounted with `policy`, and the `uring` device
    /// over it (the `soft` device when io_uring is unavailable, said so).
    fn new(policy: TruncatePolicy) -> Result<Scene> {
        let pool: Arc<dyn Media> =
            Arc::new(MappedPool::memfd(POOL_BYTES).context("a volatile pool")?);
        Fs::mkfs(&*pool)?;
        let fs = Fs::mount_with(
            pool.clone(),
            MountOptions {
                break_time: BREAK_TIME,
                policy,
            },
        )?;
        let (inner, uring): (Arc<dyn Device>, _) = match UringDevice::new(pool.clone()) {
            Ok(d) => {
                let d = Arc::new(d);
                (d.clone(), Some(d))
            }
            Err(e) => {
                println!("   (io_uring is unavailable here: {e}; the soft device stands in)");
                (Arc::new(SoftDevice::new(pool)?), None)
            }
        };
        let line = Timeline::new();
        let label = format!("{} device", inner.name());
        let device = Arc::new(Watched {
            inner,
            fs: Mutex::new(Arc::downgrade(&fs)),
            line: line.clone(),
            label,
            narrate: AtomicBool::new(false),
        });
        Ok(Scene {
            fs,
            device,
            uring,
            line,
        })
    }

    fn dev(&self) -> &str {
        &self.device.label
    }

    /// A file of `FILE_BYTES` bytes of `byte`, created by `who`.
    fn file(&self, who: u64, path: &str, byte: u8) -> Result<Handle> {
        let h = self
            .fs
            .open(Cred::root_as(who), path, OpenFlags::CREATE, 0o644)?;
        h.pwrite(0, &vec![byte; FILE_BYTES as usize])?;
        Ok(h)
    }
}

/// FNV-1a over a whole file: the "no other file touched" checksum.
fn checksum(h: &Handle) -> Result<u64> {
    let size = h.stat()?.size;
    let mut buf = vec![0u8; size as usize];
    let n = h.pread(0, &mut buf)?;
    ensure!(n as u64 == size, "short read");
    Ok(buf.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }))
}

/// What a stream saw: completions by status, and when the first not-ok one
/// came.
#[derive(Default)]
struct StreamCounts {
    ok: AtomicU64,
    protection_error: AtomicU64,
    other: AtomicU64,
    /// Milliseconds on the timeline of the first not-ok completion (bits of
    /// an f64; 0 = none yet).
    first_error_ms: AtomicU64,
    /// `ok` completions counted after the registration was revoked.
    ok_after_revoke: AtomicU64,
}

/// A device streaming `CHUNK`-byte writes of `byte` round the registration
/// until stopped (the device's own traffic: nobody asks the file system).
struct Stream {
    stop: Arc<AtomicBool>,
    counts: Arc<StreamCounts>,
    thread: JoinHandle<Arc<Registration>>,
}

impl Stream {
    fn start(reg: Registration, byte: u8, line: Timeline) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(StreamCounts::default());
        let reg = Arc::new(reg);
        let (s, c) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let data = vec![byte; CHUNK];
            let chunks = reg.len() / CHUNK as u64;
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) && i < MAX_STREAM_WRITES {
                let revoked = reg.is_revoked();
                let status = reg
                    .write((i % chunks) * CHUNK as u64, &data)
                    .unwrap_or(Completion::DeviceError(libc::EIO));
                match status {
                    Completion::Ok => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                        if revoked {
                            c.ok_after_revoke.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Completion::ProtectionError => {
                        c.protection_error.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        c.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if status != Completion::Ok && c.first_error_ms.load(Ordering::Relaxed) == 0 {
                    c.first_error_ms
                        .store(line.ms().max(0.001).to_bits(), Ordering::Relaxed);
                }
                i += 1;
                // A paced stream (a NIC fed by a peer), not a spin: the
                // demo's machine has two cores.
                std::thread::sleep(Duration::from_micros(200));
            }
            reg
        });
        Stream {
            stop,
            counts,
            thread,
        }
    }

    fn writes(&self) -> u64 {
        let c = &self.counts;
        c.ok.load(Ordering::Relaxed)
            + c.protection_error.load(Ordering::Relaxed)
            + c.other.load(Ordering::Relaxed)
    }

    /// Stop and wait for the stream; hands the registration back.
    fn stop(self) -> Result<(Registration, Arc<StreamCounts>)> {
        self.stop.store(true, Ordering::SeqCst);
        let reg = self
            .thread
            .join()
            .map_err(|_| anyhow!("the stream panicked"))?;
        let reg = Arc::try_unwrap(reg).map_err(|_| anyhow!("the registration is still shared"))?;
        Ok((reg, self.counts))
    }
}

fn summary(c: &StreamCounts) -> String {
    format!(
        "ok {}, protection-error {}, other {}",
        c.ok.load(Ordering::Relaxed),
        c.protection_error.load(Ordering::Relaxed),
        c.other.load(Ordering::Relaxed)
    )
}

/// `@truncator` truncates `path` to 0 on its own thread.
fn truncate_in_background(fs: &Arc<Fs>, path: &str) -> Result<JoinHandle<pinfs::Result<()>>> {
    let h = fs.open(Cred::root_as(TRUNCATOR), path, OpenFlags::RDWR, 0)?;
    Ok(std::thread::spawn(move || h.truncate(0)))
}

fn join<T>(t: JoinHandle<T>) -> Result<T> {
    t.join().map_err(|_| anyhow!("a thread panicked"))
}

/// Scene (a): the owner is told, quiesces, deregisters; the truncate
/// completes without waiting for lease-break-time.
fn cooperative() -> Result<()> {
    let sc = Scene::new(TruncatePolicy::Revoke)?;
    println!(
        "7. A device streams into a registered file; @app reacts (policy revoke, lease-break-time {} ms, {}).",
        BREAK_TIME.as_millis(),
        sc.dev()
    );
    let line = &sc.line;
    let events = sc.fs.leases().owner_events(OwnerId(OWNER))?;
    let file = sc.file(OWNER, "/stream", 0x11)?;
    let map = file.mmap(0, FILE_BYTES, MapFlags::DIRECT)?;
    let reg = map.register(sc.device.clone(), 0, FILE_BYTES, RevokeMode::Invalidate)?;
    let k = reg.keys();
    line.say(format!(
        "@app maps /stream with MAP_DIRECT and registers 1 MiB with the {}: mr {} iova {:#x} (the kernel pins the pages)",
        sc.dev(),
        k.mr.0,
        k.iova
    ));
    let stream = Stream::start(reg, 0x22, line.clone());
    while stream.writes() < 8 {
        std::thread::sleep(Duration::from_millis(1));
    }
    line.say(format!(
        "@app's {} streams 64 KiB writes into /stream ({} so far)",
        sc.dev(),
        stream.writes()
    ));
    let started = Instant::now();
    let truncate = truncate_in_background(&sc.fs, "/stream")?;
    line.say("@truncator truncates /stream to 0: its layout change breaks @app's leases");
    let ev = events
        .recv_timeout(NOTIFY_TIMEOUT)?
        .context("@app was never notified")?;
    ensure!(
        ev.kind == EventKind::Break,
        "unexpected notification {ev:?}"
    );
    line.say(format!(
        "@app is notified: lease {} is breaking (layout change by @truncator); the truncate waits",
        ev.lease.id
    ));
    ensure!(!truncate.is_finished(), "the truncate did not wait");
    let (reg, counts) = stream.stop()?;
    line.say(format!(
        "@app quiesces: stops the stream ({})",
        summary(&counts)
    ));
    ensure!(
        counts.protection_error.load(Ordering::Relaxed) == 0,
        "a cooperative owner's device saw errors"
    );
    ensure!(!reg.is_revoked(), "revoked although the owner reacted");
    reg.deregister()?;
    drop(map);
    line.say("@app deregisters (pins, lease and device addresses released) and unmaps");
    join(truncate)?.context("truncate")?;
    let s = sc.fs.statfs();
    ensure!(s.busy == 0, "nothing should stay busy");
    line.say(format!(
        "@truncator's truncate completes after {:.1?} (lease-break-time {:.0?}): /stream is {} bytes, busy {}",
        started.elapsed(),
        BREAK_TIME,
        file.stat()?.size,
        s.busy
    ));
    Ok(())
}

/// Scene (b): the owner never reacts; the device is revoked in `mode` at
/// lease-break-time.
fn unresponsive(step: &str, mode: RevokeMode) -> Result<()> {
    let sc = Scene::new(TruncatePolicy::Revoke)?;
    println!(
        "{step} @app never reacts; revoke mode {mode} (policy revoke, lease-break-time {} ms, {}).",
        BREAK_TIME.as_millis(),
        sc.dev()
    );
    let line = &sc.line;
    let other = sc.file(OTHER, "/other", 0x5a)?;
    let other_sum = checksum(&other)?;
    line.say(format!(
        "@other fills /other with 1 MiB of 0x5a: checksum {other_sum:016x}"
    ));
    let file = sc.file(OWNER, "/victim", 0x11)?;
    let map = file.mmap(0, FILE_BYTES, MapFlags::DIRECT)?;
    let reg = map.register(sc.device.clone(), 0, FILE_BYTES, mode)?;
    line.say(format!(
        "@app maps /victim with MAP_DIRECT, registers 1 MiB with the {} ({mode}), and goes quiet",
        sc.dev()
    ));
    let stream = Stream::start(reg, 0xee, line.clone());
    while stream.writes() < 8 {
        std::thread::sleep(Duration::from_millis(1));
    }
    line.say(format!("@app's {} streams 0xee into /victim", sc.dev()));
    let victim_blocks: Vec<(u64, u64)> = file
        .fiemap()?
        .iter()
        .map(|e| (e.physical, e.physical + e.len))
        .collect();
    let before = sc.fs.statfs();
    line.say(format!(
        "statfs before: free {}, busy {}",
        before.free, before.busy
    ));
    sc.device.narrate.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let truncate = truncate_in_background(&sc.fs, "/victim")?;
    line.say("@truncator truncates /victim to 0: the break is sent; nobody answers");
    join(truncate)?.context("truncate")?;
    let took = started.elapsed();
    let after = sc.fs.statfs();
    line.say(format!(
        "@truncator's truncate completes after {:.0?} (lease-break-time {:.0?}); statfs after: free {}, busy {}",
        took, BREAK_TIME, after.free, after.busy
    ));
    let freed = FILE_BYTES / 4096;
    ensure!(
        after.busy == 0 && after.free >= before.free + freed,
        "the registered blocks should be free after the confirmed revocation"
    );
    // Another actor takes the freed blocks at once.
    let fresh = sc.file(OTHER, "/fresh", 0x77)?;
    let fresh_sum = checksum(&fresh)?;
    let reused: u64 = fresh
        .fiemap()?
        .iter()
        .map(|e| {
            victim_blocks
                .iter()
                .map(|&(a, b)| b.min(e.physical + e.len).saturating_sub(a.max(e.physical)))
                .sum::<u64>()
        })
        .sum();
    line.say(format!(
        "@other creates /fresh (1 MiB of 0x77): {} KiB of it in blocks /victim had; checksum {fresh_sum:016x}",
        reused >> 10
    ));
    // Let the device go on a little against the revoked region.
    let at = stream.writes();
    while stream.writes() < at + 16 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (reg, counts) = stream.stop()?;
    ensure!(reg.is_revoked(), "the registration should be revoked");
    match mode {
        RevokeMode::Invalidate => {
            let first = f64::from_bits(counts.first_error_ms.load(Ordering::Relaxed));
            ensure!(
                counts.protection_error.load(Ordering::Relaxed) > 0,
                "invalidate: the device's writes should fail"
            );
            line.say(format!(
                "@app's {}: its writes complete with protection-error from {:.1} ms on ({})",
                sc.dev(),
                first,
                summary(&counts)
            ));
        }
        _ => {
            ensure!(
                counts.protection_error.load(Ordering::Relaxed) == 0
                    && counts.ok_after_revoke.load(Ordering::Relaxed) > 0,
                "redirect: the device's writes should keep completing ok"
            );
            line.say(format!(
                "@app's {}: its writes keep completing ok, into scratch memory of no file ({}, {} after revocation)",
                sc.dev(),
                summary(&counts),
                counts.ok_after_revoke.load(Ordering::Relaxed)
            ));
            if let Some(u) = &sc.uring {
                let mut scratch = vec![0u8; FILE_BYTES as usize];
                u.read_scratch(reg.keys().mr, 0, &mut scratch)?;
                let landed = scratch.iter().filter(|&&b| b == 0xee).count();
                ensure!(landed > 0, "redirect: the writes should land in scratch");
                line.say(format!(
                    "the uring device's scratch memory holds {landed} bytes of 0xee: where the writes went"
                ));
            }
        }
    }
    let (o, f) = (checksum(&other)?, checksum(&fresh)?);
    ensure!(o == other_sum, "/other changed: {o:016x}");
    ensure!(f == fresh_sum, "/fresh changed: {f:016x}");
    line.say(format!(
        "checksums after: /other {o:016x}, /fresh {f:016x}: unchanged, no device write reached them"
    ));
    drop(reg);
    drop(map);
    ensure!(sc.fs.check().is_empty(), "fsck found problems");
    Ok(())
}

/// Scene (c): Ira Weiny's model.
fn unbreakable() -> Result<()> {
    let sc = Scene::new(TruncatePolicy::Revoke)?;
    println!(
        "9. Ira Weiny's model: an unbreakable layout lease, a plain shared mapping ({}).",
        sc.dev()
    );
    let line = &sc.line;
    let events = sc.fs.leases().owner_events(OwnerId(OWNER))?;
    let file = sc.file(OWNER, "/ira", 0x11)?;
    sc.fs.leases().set_lease(
        file.lease_file(),
        file.lease_handle(),
        OwnerId(OWNER),
        LeaseRequest::layout_shared().unbreakable(),
    )?;
    line.say("@app takes an unbreakable layout lease on /ira (F_RDLCK|F_LAYOUT|F_EXCLUSIVE)");
    let map = file.mmap(0, FILE_BYTES, MapFlags::SHARED)?;
    let reg = map.register(sc.device.clone(), 0, FILE_BYTES, RevokeMode::Invalidate)?;
    line.say(format!(
        "@app maps /ira MAP_SHARED (no MAP_DIRECT) and registers 1 MiB with the {}: mr {}",
        sc.dev(),
        reg.keys().mr.0
    ));
    let status = reg.write(0, b"written by the device")?;
    ensure!(status == Completion::Ok, "device write: {status}");
    line.say(format!("@app's {} writes: {status}", sc.dev()));
    let theirs = sc
        .fs
        .open(Cred::root_as(TRUNCATOR), "/ira", OpenFlags::RDWR, 0)?;
    let refused = theirs.truncate(0);
    let errno = match refused {
        Err(e) => e.errno(),
        Ok(()) => return Err(anyhow!("the truncate went through an unbreakable lease")),
    };
    ensure!(errno == Errno::ETXTBSY, "refused with {errno:?}");
    line.say(format!(
        "@truncator truncates /ira to 0: refused at once, {}",
        errno.message()
    ));
    let ev = events
        .recv_timeout(NOTIFY_TIMEOUT)?
        .context("@app was never told")?;
    ensure!(
        ev.kind == EventKind::Refused,
        "unexpected notification {ev:?}"
    );
    line.say(format!(
        "@app is told: break /ira refused (lease {} unchanged; the device keeps its access)",
        ev.lease.id
    ));
    ensure!(
        !reg.is_revoked() && file.stat()?.size == FILE_BYTES,
        "nothing may change"
    );
    let mut back = [0u8; 21];
    file.pread(0, &mut back)?;
    ensure!(
        &back == b"written by the device",
        "the device's write is not in the file"
    );
    line.say("/ira still 1 MiB, and reads back what the device wrote");
    reg.deregister()?;
    drop(map);
    Ok(())
}

/// Run the three scenes.
pub fn run() -> Result<()> {
    cooperative()?;
    println!();
    unresponsive("8a.", RevokeMode::Invalidate)?;
    println!();
    unresponsive("8b.", RevokeMode::Redirect)?;
    println!();
    unbreakable()
}
