//! `pinfs bench map`: direct mappings, and layout changes over pinned files.
//!
//! What is measured, in one run:
//!
//! - Sequential read and write bandwidth through a `MAP_SHARED` mapping of a
//!   256 MiB file (plain CPU copies between the mapping and a private
//!   buffer), against `memcpy` between two plain buffers of the same size.
//!   Target: ≥ 0.95×.
//! - Mapping and touching (one load per 4 KiB page) an allocated 1 GiB file,
//!   against `mmap(2)` of a file of the same size on the kernel's tmpfs plus
//!   the same loads. Target: ≥ 0.9× as fast.
//! - A truncate of a 1 GiB file carrying 0, 1,000 and 10,000 long-term pins
//!   (one block each, spread evenly) under the `defer` policy: the truncate
//!   completes at once and the pinned blocks go to the busy-extent list. The
//!   baseline is the same truncate with no pins.
//! - Scaling: a truncate that removes only the last 1/64 of the file, while
//!   the file carries 1,000 or 10,000 pins in all (so about 16 or 156 in the
//!   removed range). The target is a cost proportional to the pins in the
//!   truncated range, not to all pins: with 10× the pins in the file but the
//!   same removed range, the time should grow by the pins in that range only.
//!   Its verdict compares the marginal cost of a pin in that range with the
//!   marginal cost of a pin in a whole-file truncate (at most 3×).
//!
//! Every line with a target ends with the verdict of `bench_target`.
//!
//!
//! Pins are taken as a device owner would take them (under an unbreakable
//! layout lease, SPEC §4.2), then the lease is released so that another
//! owner's truncate reaches the pinned blocks and meets the policy.

//!
//! # Safety
//!
//! The mapping measurements read and write mapping memory through raw
//! pointers (as an application does); each block says why the range is
//! mapped and not aliased by a reference.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bench_fs::ShmDir;
use crate::bench_huge;
use crate::bench_target::{Goal, Scorecard};

/// Target of mapped bandwidth: speed relative to `memcpy`.
const BANDWIDTH_GOAL: Goal = Goal::AtLeast(0.95);

/// Target of mapping and touching a file: speed relative to tmpfs `mmap`.
const TOUCH_GOAL: Goal = Goal::AtLeast(0.9);

/// Target of a truncate of the whole 1 GiB file, pins or not (issue 12).
const TRUNCATE_GOAL: Goal = Goal::TimeUnder(Duration::from_millis(10));

/// Targets of stores into a sparse file (issue 12): against tmpfs with
/// 4 KiB pages, and against a memfd with 2 MiB pages.
const STORE_TMPFS_GOAL: Goal = Goal::AtLeast(0.5);
const STORE_THP_GOAL: Goal = Goal::AtLeast(0.9);

/// Target of the scaling measurement: the marginal cost of a pin in the
/// truncated range, relative to the marginal cost of a pin when the whole
/// file is truncated (every pin in range). A cost that grew with all the
/// file's pins would put many times more on each pin in range.
const SCALING_GOAL: Goal = Goal::AtMost(3.0);
use pinfs::fs::{Cred, FallocMode, Fs, MountOptions, OpenFlags, Pin, TruncatePolicy};
use pinfs::lease::{LeaseRequest, OwnerId};
use pinfs::map::MapFlags;
use pinfs::media::{HugePolicy, MappedPool, Media};

const FILE_BYTES: u64 = 1 << 30;
const BLOCK: u64 = 4096;
const DEVICE: Cred = Cred::root_as(1);
const TRUNCATOR: Cred = Cred::root_as(2);

/// A file of `FILE_BYTES` with `pins` one-block pins spread evenly.
fn pinned_file(fs: &Arc<Fs>, pins: u64) -> Result<Vec<Pin>> {
    let h = fs.open(DEVICE, "/big", OpenFlags::CREATE, 0o644)?;
    h.truncate(0)?;
    // Allocate, then make every block written (a pin needs written blocks;
    // doing it here keeps the pin loop cheap).
    h.fallocate(FallocMode::Allocate { keep_size: false }, 0, FILE_BYTES)?;
    let chunk = vec![0x5au8; 8 << 20];
    let mut at = 0;
    while at < FILE_BYTES {
        h.pwrite(at, &chunk)?;
        at += chunk.len() as u64;
    }
    let (file, handle, owner) = (h.lease_file(), h.lease_handle(), OwnerId(DEVICE.owner));
    fs.leases().set_lease(
        file,
        handle,
        owner,
        LeaseRequest::layout_shared().unbreakable(),
    )?;
    let mut out = Vec::with_capacity(pins as usize);
    if let Some(stride) = (FILE_BYTES / BLOCK).checked_div(pins) {
        for i in 0..pins {
            out.push(h.pin_long_term(i * stride * BLOCK, BLOCK, None)?);
        }
    }
    fs.leases()
        .set_lease(file, handle, owner, LeaseRequest::layout_unlock())?;
    Ok(out)
}

/// Time one truncate to `size` by another owner.
fn truncate_time(fs: &Arc<Fs>, size: u64) -> Result<Duration> {
    let h = fs.open(TRUNCATOR, "/big", OpenFlags::RDWR, 0)?;
    let t = Instant::now();
    h.truncate(size)?;
    Ok(t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Run `rounds` measurements of (file with `pins` pins, truncate to `size`);
/// returns the median time and the busy blocks right after the truncate.
fn measure(fs: &Arc<Fs>, pins: u64, size: u64, rounds: usize) -> Result<(Duration, u64)> {
    let mut times = Vec::new();
    let mut busy = 0;
    for _ in 0..rounds {
        let held = pinned_file(fs, pins)?;
        times.push(truncate_time(fs, size)?);
        busy = fs.statfs().busy;
        drop(held);
    }
    Ok((median(times), busy))
}

const BANDWIDTH_BYTES: usize = 256 << 20;

/// GiB/s of `bytes` moved in `d`.
fn gibs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64
}

/// Best of `rounds` timings of `f`.
fn best(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Bandwidth through a mapping against memcpy between plain buffers; every
/// line with the 2 MiB-page coverage of the memory it read or wrote.
fn bandwidth(fs: &Arc<Fs>, rounds: usize, card: &mut Scorecard) -> Result<()> {
    let h = fs.open(DEVICE, "/bw", OpenFlags::CREATE, 0o644)?;
    h.pwrite(0, &vec![0x33u8; BANDWIDTH_BYTES])?;
    let map = h.mmap(0, BANDWIDTH_BYTES as u64, MapFlags::SHARED)?;
    let mut a = vec![1u8; BANDWIDTH_BYTES];
    let b = vec![2u8; BANDWIDTH_BYTES];
    let p = map.as_ptr();
    // Warm both sides (page tables, caches) once.
    // SAFETY: `p` maps BANDWIDTH_BYTES of written, unshared file blocks for
    // as long as `map` lives; `a` is a distinct heap buffer of that size.
    unsafe { std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), BANDWIDTH_BYTES) };
    // Interleaved rounds: memcpy, read, write, pool read, each timed once per
    // round, best of each — so all four see the same machine conditions.
    // The pool read reads the file's own blocks where they are one run.
    let pool = fs.media().mapping().map(|m| {
        let at = h
            .fiemap()
            .ok()
            .and_then(|x| x.first().copied())
            .filter(|e| e.len >= BANDWIDTH_BYTES as u64 && e.physical + e.len <= m.len_bytes)
            .map_or(64 << 20, |e| e.physical);
        // SAFETY: `at + BANDWIDTH_BYTES` is inside the pool mapping (checked
        // above, or 64 MiB into a pool of over 1 GiB).
        unsafe { m.base.as_ptr().add(at as usize) }
    });
    let (mut memcpy, mut read, mut write, mut pool_read) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    // Every copy goes through `copy`, whose pointers are opaque to the
    // optimiser: without that, LLVM may drop or merge copies into a buffer
    // that is overwritten later (it did: memcpy once showed twice the
    // machine's bandwidth).
    let dst = a.as_mut_ptr();
    for _ in 0..rounds * 2 {
        // SAFETY: `a` and `b` are distinct heap buffers of BANDWIDTH_BYTES.
        memcpy = memcpy.min(best(1, || unsafe { copy(b.as_ptr(), dst) }));
        // SAFETY: as above.
        read = read.min(best(1, || unsafe { copy(p, dst) }));
        // SAFETY: as above; nothing else reads or writes the file meanwhile.
        write = write.min(best(1, || unsafe { copy(b.as_ptr(), p) }));
        if let Some(src) = pool {
            // Diagnostic: the same copy straight from the pool's own mapping.
            // SAFETY: `src` starts BANDWIDTH_BYTES inside the pool mapping
            // and nothing holds a reference into it.
            pool_read = pool_read.min(best(1, || unsafe { copy(src, dst) }));
        }
    }
    std::hint::black_box(&a);
    // Coverage, read after the timing (reading smaps walks page tables).
    let cov = |addr: *const u8| {
        bench_huge::coverage(addr as usize, BANDWIDTH_BYTES)
            .map_or("huge ?".into(), |c| c.to_string())
    };
    let map_cov = map.huge_mapped_bytes().map_or("huge ?".to_string(), |n| {
        format!("huge {:>3.0}%", n as f64 * 100.0 / BANDWIDTH_BYTES as f64)
    });
    let base_cov = format!("{} / {}", cov(b.as_ptr()), cov(a.as_ptr()));
    println!(
        "{:<34} {:>10} {:>10} {:>8}  {:<21} verdict",
        "bandwidth (256 MiB, sequential)", "GiB/s", "memcpy", "ratio", "2 MiB pages"
    );
    let line = |what: &str, t: Duration, pages: &str, verdict: &str| {
        let ratio = memcpy.as_secs_f64() / t.as_secs_f64();
        let l = format!(
            "{:<34} {:>10.2} {:>10.2} {:>7.2}x  {:<21} {verdict}",
            what,
            gibs(BANDWIDTH_BYTES, t),
            gibs(BANDWIDTH_BYTES, memcpy),
            ratio,
            pages,
        );
        println!("{}", l.trim_end());
    };
    line(
        "memcpy (baseline: src / dst)",
        memcpy,
        &base_cov,
        "(baseline)",
    );
    for (what, t) in [
        ("read through mapping", read),
        ("write through mapping", write),
    ] {
        let ratio = memcpy.as_secs_f64() / t.as_secs_f64();
        let verdict = card.check(what, ratio, BANDWIDTH_GOAL);
        line(what, t, &map_cov, &verdict);
    }
    if let Some(src) = pool {
        line(
            "read from the pool's own mapping",
            pool_read,
            &format!("{} (pool)", cov(src)),
            "(diagnostic)",
        );
    }
    drop(map);
    drop(h);
    fs.unlink(DEVICE, "/bw")?;
    Ok(())
}

/// Copy BANDWIDTH_BYTES from `src` to `dst`, opaque to the optimiser.
///
/// # Safety
/// Both ranges must be valid for BANDWIDTH_BYTES and must not overlap.
unsafe fn copy(src: *const u8, dst: *mut u8) {
    let (src, dst) = (std::hint::black_box(src), std::hint::black_box(dst));
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, BANDWIDTH_BYTES) };
    std::hint::black_box(dst);
}

/// Touch one byte per page of `len` bytes at `p`.
///
/// # Safety
/// `p..p+len` must be mapped and readable.
unsafe fn touch(p: *const u8, len: usize) -> u64 {
    let mut sum = 0u64;
    for off in (0..len).step_by(4096) {
        // SAFETY: in range, per the caller.
        sum += u64::from(unsafe { std::ptr::read_volatile(p.add(off)) });
    }
    sum
}

/// Map and touch a 1 GiB file, against the kernel's tmpfs.
fn map_and_touch(fs: &Arc<Fs>, rounds: usize, card: &mut Scorecard, thp: bool) -> Result<()> {
    let len = FILE_BYTES as usize;
    let h = fs.open(DEVICE, "/touch", OpenFlags::CREATE, 0o644)?;
    let chunk = vec![0x44u8; 8 << 20];
    for at in (0..FILE_BYTES).step_by(chunk.len()) {
        h.pwrite(at, &chunk)?;
    }
    let shm = ShmDir::new("map")?;
    let tmpfs = shm.create("touch")?;
    {
        use std::io::Write;
        let mut w = &tmpfs;
        for _ in 0..(len / chunk.len()) {
            w.write_all(&chunk)?;
        }
    }
    let mut huge_bytes = 0;
    let mut pinfs_time = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        let m = h.mmap(0, FILE_BYTES, MapFlags::SHARED.read_only())?;
        // SAFETY: the mapping covers `len` readable bytes while `m` lives.
        std::hint::black_box(unsafe { touch(m.as_ptr(), len) });
        pinfs_time = pinfs_time.min(t.elapsed());
        // Read (and unmapped) outside the timing.
        huge_bytes = m.huge_mapped_bytes().unwrap_or(0);
    }
    let kernel_time = best(rounds, || {
        // SAFETY: `tmpfs` is an open file of `len` bytes.
        std::hint::black_box(unsafe { kernel_map_and_touch(tmpfs.as_fd(), len, LOAD) });
    });
    row(
        "map + touch 1 GiB (vs tmpfs mmap)",
        pinfs_time,
        kernel_time,
        Some((card, TOUCH_GOAL)),
    );
    // The stronger baseline: the kernel's own shmem with 2 MiB pages (a
    // memfd filled through a MADV_HUGEPAGE mapping), where this kernel
    // allows them on first touch.
    if thp {
        let memfd = rustix::fs::memfd_create("pinfs-bench-thp", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&memfd, FILE_BYTES)?;
        // SAFETY: `memfd` is `len` bytes long.
        unsafe { kernel_map_and_touch(memfd.as_fd(), len, HUGE_STORE) };
        let thp_time = best(rounds, || {
            // SAFETY: as above.
            std::hint::black_box(unsafe { kernel_map_and_touch(memfd.as_fd(), len, HUGE_LOAD) });
        });
        row(
            "map + touch 1 GiB (vs memfd + THP)",
            pinfs_time,
            thp_time,
            None,
        );
    }
    println!(
        "  (the pinfs mapping had {} of {} MiB mapped with 2 MiB pages)",
        huge_bytes >> 20,
        FILE_BYTES >> 20
    );
    drop(h);
    fs.unlink(DEVICE, "/touch")?;
    Ok(())
}

/// One timed row; with a target, it ends with the verdict.
fn row(what: &str, pinfs: Duration, baseline: Duration, target: Option<(&mut Scorecard, Goal)>) {
    let ratio = baseline.as_secs_f64() / pinfs.as_secs_f64();
    let verdict = match target {
        Some((card, goal)) => card.check(what, ratio, goal),
        None => String::new(),
    };
    let line = format!(
        "{:<45} {:>10.2}ms {:>8.2}ms {:>7.2}x  {verdict}",
        what,
        ms(pinfs),
        ms(baseline),
        ratio
    );
    println!("{}", line.trim_end());
}

const LOAD: Touch = Touch {
    store: false,
    huge: false,
};
const STORE: Touch = Touch {
    store: true,
    huge: false,
};
const HUGE_LOAD: Touch = Touch {
    store: false,
    huge: true,
};
const HUGE_STORE: Touch = Touch {
    store: true,
    huge: true,
};

/// How `kernel_map_and_touch` touches the pages.
#[derive(Clone, Copy)]
struct Touch {
    /// Store one byte per page (allocating what is not there), else load.
    store: bool,
    /// Advise `MADV_HUGEPAGE` first.
    huge: bool,
}

/// The kernel's side: map `len` bytes of `fd` shared at a 2 MiB-aligned
/// address, touch every page, unmap.
///
/// # Safety
/// `fd` must be a file at least `len` bytes long.
unsafe fn kernel_map_and_touch(fd: BorrowedFd<'_>, len: usize, how: Touch) -> u64 {
    use rustix::mm::{Advice, MapFlags as F, ProtFlags as P};
    const HUGE: usize = 2 << 20;
    let prot = if how.store {
        P::READ | P::WRITE
    } else {
        P::READ
    };
    // SAFETY: an inaccessible reservation the kernel places where nothing is
    // mapped; the file is then mapped with MAP_FIXED at its first 2 MiB
    // boundary, inside it, and everything is unmapped below. Nothing else
    // refers to any of it. The file is `len` bytes long (caller).
    unsafe {
        let Ok(r) = rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len + HUGE,
            P::empty(),
            F::PRIVATE | F::NORESERVE,
        ) else {
            return 0;
        };
        let at = (r as usize).next_multiple_of(HUGE) as *mut std::ffi::c_void;
        let sum = match rustix::mm::mmap(at, len, prot, F::SHARED | F::FIXED, fd, 0) {
            Err(_) => 0,
            Ok(p) => {
                if how.huge {
                    let _ = rustix::mm::madvise(p, len, Advice::LinuxHugepage);
                }
                if how.store {
                    for off in (0..len).step_by(4096) {
                        std::ptr::write_volatile(p.cast::<u8>().add(off), 0x44);
                    }
                    0
                } else {
                    touch(p.cast(), len)
                }
            }
        };
        let _ = rustix::mm::munmap(r, len + HUGE);
        sum
    }
}

/// Stores into a sparse file through a mapping: the first store into each
/// chunk faults and allocates it (whole 2 MiB windows where the pool has
/// 2 MiB pages, 64 KiB fault-around chunks otherwise), against
/// the same on a sparse tmpfs file.
fn store_faults(
    fs: &Arc<Fs>,
    rounds: usize,
    bytes: u64,
    thp: bool,
    card: &mut Scorecard,
) -> Result<()> {
    let len = bytes as usize;
    let shm = ShmDir::new("map-faults")?;
    let tmpfs = shm.create("faults")?;
    let mut pinfs_time = Duration::MAX;
    let mut kernel_time = Duration::MAX;
    for _ in 0..rounds {
        let h = fs.open(DEVICE, "/faults", OpenFlags::CREATE, 0o644)?;
        h.truncate(bytes)?;
        let t = Instant::now();
        let m = h.mmap(0, bytes, MapFlags::SHARED)?;
        for off in (0..len).step_by(4096) {
            // SAFETY: the mapping covers `len` writable bytes inside the
            // file while `m` lives; a store faults and allocates.
            unsafe { std::ptr::write_volatile(m.as_ptr().add(off), 0x55) };
        }
        drop(m);
        pinfs_time = pinfs_time.min(t.elapsed());
        drop(h);
        fs.unlink(DEVICE, "/faults")?;

        tmpfs.set_len(bytes)?;
        let t = Instant::now();
        // SAFETY: `tmpfs` is `len` bytes long.
        unsafe { kernel_map_and_touch(tmpfs.as_fd(), len, STORE) };
        kernel_time = kernel_time.min(t.elapsed());
        tmpfs.set_len(0)?;
    }
    row(
        &format!("map + store {} MiB sparse (vs tmpfs)", bytes >> 20),
        pinfs_time,
        kernel_time,
        Some((&mut *card, STORE_TMPFS_GOAL)),
    );
    if thp {
        let memfd = rustix::fs::memfd_create("pinfs-bench-thp", rustix::fs::MemfdFlags::CLOEXEC)?;
        let mut thp_time = Duration::MAX;
        for _ in 0..rounds {
            rustix::fs::ftruncate(&memfd, bytes)?;
            let t = Instant::now();
            // SAFETY: `memfd` is `len` bytes long.
            unsafe { kernel_map_and_touch(memfd.as_fd(), len, HUGE_STORE) };
            thp_time = thp_time.min(t.elapsed());
            rustix::fs::ftruncate(&memfd, 0)?;
        }
        row(
            &format!("map + store {} MiB sparse (vs memfd+THP)", bytes >> 20),
            pinfs_time,
            thp_time,
            Some((card, STORE_THP_GOAL)),
        );
    }
    Ok(())
}

/// `--huge`: how the benchmark's pool gets 2 MiB pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HugeChoice {
    /// As the kernel's settings say (`MappedPool::memfd`).
    Auto,
    /// Allocated in 2 MiB pages on first touch (where the settings allow).
    FirstTouch,
    /// Whole windows collapsed as they are written (a memfd's path under
    /// `shmem_enabled=never`).
    Collapse,
    /// 4 KiB pages only (what a memfd got under `never` before collapsing).
    None,
}

/// `pinfs bench map`.
pub fn run(quick: bool, huge: HugeChoice) -> Result<()> {
    let bytes = FILE_BYTES + (512 << 20);
    let pool = match huge {
        HugeChoice::Auto => MappedPool::memfd(bytes),
        HugeChoice::FirstTouch => MappedPool::memfd_with_huge_policy(bytes, HugePolicy::FirstTouch),
        HugeChoice::Collapse => MappedPool::memfd_with_huge_policy(bytes, HugePolicy::Collapse),
        HugeChoice::None => MappedPool::memfd_with_huge_policy(bytes, HugePolicy::None),
    }
    .context("memfd pool")?;
    let policy = pool.huge_policy();
    let media: Arc<dyn Media> = Arc::new(pool);
    Fs::mkfs(&*media)?;
    let fs = Fs::mount_with(
        media,
        MountOptions {
            break_time: Duration::from_secs(45),
            policy: TruncatePolicy::Defer,
        },
    )?;
    let rounds = if quick { 1 } else { 5 };
    println!("pinfs bench map: direct mappings on a memfd pool; best of {rounds} round(s) (the ratio is pinfs speed / baseline speed)");
    let caps = fs.media().caps();
    println!("{caps}");
    println!("{}", bench_huge::settings_line());
    println!(
        "pool memory: {policy}{} (this benchmark changes no setting)",
        if huge == HugeChoice::Auto {
            " (as the kernel's settings give)"
        } else {
            " (chosen by --huge)"
        }
    );
    if !caps.huge_pages && huge == HugeChoice::Auto {
        println!(
            "(no 2 MiB pages: this kernel refuses them for memfd (shmem_enabled=deny, or the 2 MiB size set to never))"
        );
    }
    println!();
    let mut card = Scorecard::default();
    bandwidth(&fs, rounds, &mut card)?;
    // The kernel's memfd + THP baselines need 2 MiB pages on first touch.
    let thp =
        MappedPool::memfd(4 << 20).is_ok_and(|probe| probe.huge_policy() == HugePolicy::FirstTouch);
    if !thp {
        println!("(memfd + THP baselines skipped: shmem_enabled gives a memfd no 2 MiB pages on first touch)");
    }
    map_and_touch(&fs, rounds, &mut card, thp)?;
    // Without 2 MiB pages every 64 KiB fault-around chunk is its own
    // durable allocation (one commit each; 2 MiB windows otherwise), so the
    // sparse file is kept as small as the figure (64 MiB).
    store_faults(
        &fs,
        rounds,
        if caps.huge_pages {
            FILE_BYTES
        } else {
            64 << 20
        },
        thp,
        &mut card,
    )?;
    println!("targets: bandwidth {BANDWIDTH_GOAL} memcpy; map + touch {TOUCH_GOAL} as fast as tmpfs mmap; map + store {STORE_TMPFS_GOAL} tmpfs, {STORE_THP_GOAL} memfd+THP");
    println!();
    println!(
        "truncate of a {} MiB file carrying long-term pins (one 4 KiB block each, evenly spread), policy defer, memfd pool; median of {rounds} round(s); target: whole file {TRUNCATE_GOAL}; the ratio is time / time without pins",
        FILE_BYTES >> 20
    );
    println!();
    println!(
        "{:<34} {:>10} {:>12} {:>10} {:>8}",
        "truncate", "pins", "time", "busy", "ratio"
    );
    let (base, _) = measure(&fs, 0, 0, rounds)?;
    println!(
        "{:<34} {:>10} {:>10.2}ms {:>10} {:>8}  {}",
        "whole file (baseline: no pins)",
        0,
        ms(base),
        0,
        "1.00x",
        card.check("truncate 1 GiB", base.as_secs_f64(), TRUNCATE_GOAL)
    );
    let mut whole_times = Vec::new();
    for pins in [1_000u64, 10_000] {
        let (t, busy) = measure(&fs, pins, 0, rounds)?;
        whole_times.push((busy, t));
        println!(
            "{:<34} {:>10} {:>10.2}ms {:>10} {:>7.2}x  {}",
            "whole file",
            pins,
            ms(t),
            busy,
            ratio(t, base),
            card.check(
                &format!("truncate 1 GiB, {pins} pins"),
                t.as_secs_f64(),
                TRUNCATE_GOAL
            )
        );
    }
    println!();
    let tail = FILE_BYTES - FILE_BYTES / 64;
    let (tail_base, _) = measure(&fs, 0, tail, rounds)?;
    println!(
        "{:<34} {:>10} {:>10.3}ms {:>10} {:>8}",
        "last 1/64 (baseline: no pins)",
        0,
        ms(tail_base),
        0,
        "1.00x"
    );
    let mut tail_times = Vec::new();
    for pins in [1_000u64, 10_000] {
        let (t, busy) = measure(&fs, pins, tail, rounds)?;
        println!(
            "{:<34} {:>10} {:>10.3}ms {:>10} {:>7.2}x",
            format!("last 1/64 ({busy} pins in range)"),
            pins,
            ms(t),
            busy,
            ratio(t, tail_base)
        );
        tail_times.push((pins, busy, t));
    }
    println!();
    let (p1, b1, t1) = tail_times[0];
    let (p2, b2, t2) = tail_times[1];
    let extra_pins = (b2 as f64 - b1 as f64).max(1.0);
    println!(
        "scaling: {p1} -> {p2} pins in the file ({}x), {b1} -> {b2} in the truncated range; time {:.3} -> {:.3} ms ({:.2}x)",
        p2 / p1,
        ms(t1),
        ms(t2),
        ratio(t2, t1)
    );
    let per_pin_in_range = (t2.as_secs_f64() - t1.as_secs_f64()).max(0.0) / extra_pins;
    let (wb1, wt1) = whole_times[0];
    let (wb2, wt2) = whole_times[1];
    let per_pin_whole =
        (wt2.as_secs_f64() - wt1.as_secs_f64()).max(1e-9) / (wb2 as f64 - wb1 as f64).max(1.0);
    let scaling = per_pin_in_range / per_pin_whole;
    let verdict = card.check("scaling", scaling, SCALING_GOAL);
    println!(
        "marginal cost per pin in the truncated range: {:.2} us, {scaling:.2}x that of a whole-file truncate ({:.2} us); {verdict}",
        per_pin_in_range * 1e6,
        per_pin_whole * 1e6
    );
    println!();
    println!("{}", card.summary());
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
