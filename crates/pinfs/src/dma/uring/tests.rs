//! Unit tests of the `uring` device against the real kernel: device writes
//! and reads through fixed buffers over a memfd pool, runs, revocation in
//! both modes, confirmation with a request in flight (and its negative
//! control), and the kernel's refusal to pin a regular-file pool.
//!
//! # Safety
//!
//! Only the hand-run throughput comparison uses `unsafe`: a raw io_uring
//! baseline whose fixed buffer is a `Vec` that outlives its registration.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use super::*;
use crate::media::MappedPool;

const POOL_BYTES: u64 = 16 << 20;

fn pool() -> Arc<dyn Media> {
    Arc::new(MappedPool::memfd(POOL_BYTES).expect("memfd pool"))
}

fn pages(list: &[u64]) -> Backing {
    Backing::Pinned(list.iter().map(|p| p * PAGE_BYTES).collect())
}

fn pool_bytes(pool: &Arc<dyn Media>, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    pool.read(offset, &mut b).expect("pool read");
    b
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn device_write_lands_in_pool_and_read_returns_pool_bytes() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let keys = dev
        .register(pages(&[10, 11, 12]), RevokeMode::Invalidate)
        .unwrap();
    assert_eq!(dev.name(), "uring");
    assert_eq!(
        dev.entries(keys.mr),
        1,
        "three contiguous pages are one fixed buffer"
    );
    assert!(keys.iova >= IOVA_BASE);
    assert_eq!(keys.lkey, keys.rkey);

    let data = pattern(5000, 7);
    assert_eq!(dev.write(keys.mr, 100, &data).unwrap(), Completion::Ok);
    assert_eq!(pool_bytes(&pool, 10 * PAGE_BYTES + 100, 5000), data);

    let theirs = pattern(3000, 99);
    pool.write(12 * PAGE_BYTES + 5, &theirs).unwrap();
    let mut buf = vec![0; 3000];
    assert_eq!(
        dev.read(keys.mr, 2 * PAGE_BYTES + 5, &mut buf).unwrap(),
        Completion::Ok
    );
    assert_eq!(buf, theirs);
}

#[test]
fn an_access_crossing_two_runs_takes_one_request_per_run() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    // Pages 10, 11 (one run) then 20 (another): region bytes 4096.. span both.
    let keys = dev
        .register(pages(&[10, 11, 20]), RevokeMode::Invalidate)
        .unwrap();
    assert_eq!(dev.entries(keys.mr), 2);
    let data = pattern(6000, 3);
    let ticket = dev.submit_write(keys.mr, PAGE_BYTES + 100, &data).unwrap();
    let (c, kernel) = ticket.wait();
    assert_eq!(c, Completion::Ok);
    assert_eq!(kernel.len(), 2, "one kernel request per run: {kernel:?}");
    let first = (PAGE_BYTES - 100) as usize;
    assert_eq!(
        pool_bytes(&pool, 11 * PAGE_BYTES + 100, first),
        data[..first]
    );
    assert_eq!(
        pool_bytes(&pool, 20 * PAGE_BYTES, 6000 - first),
        data[first..]
    );
    assert_eq!(
        pool_bytes(&pool, 12 * PAGE_BYTES, 64),
        vec![0; 64],
        "page 12 is not in the region"
    );

    let mut back = vec![0; 6000];
    assert_eq!(
        dev.read(keys.mr, PAGE_BYTES + 100, &mut back).unwrap(),
        Completion::Ok
    );
    assert_eq!(back, data);
    // Past the end: refused without reaching the kernel.
    assert_eq!(
        dev.write(keys.mr, 3 * PAGE_BYTES - 10, &[1; 20]).unwrap(),
        Completion::ProtectionError
    );
}

#[test]
fn invalidate_makes_later_writes_fail_and_leaves_the_pool_unchanged() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let keys = dev
        .register(pages(&[30, 31, 40]), RevokeMode::Invalidate)
        .unwrap();
    assert_eq!(dev.write(keys.mr, 0, &[5; 100]).unwrap(), Completion::Ok);
    dev.revoke(keys.mr).unwrap();
    assert!(dev.is_revoked(keys.mr));
    dev.revoke(keys.mr).unwrap(); // idempotent
    let before: Vec<Vec<u8>> = [30, 31, 40]
        .iter()
        .map(|p| pool_bytes(&pool, p * PAGE_BYTES, PAGE_BYTES as usize))
        .collect();

    let (c, kernel) = dev
        .submit_write(keys.mr, 0, &vec![0xEE; 3 * 4096])
        .unwrap()
        .wait();
    println!("kernel's result for READ_FIXED on invalidated (empty) entries: {kernel:?} -> {c}");
    assert_eq!(c, Completion::ProtectionError);
    assert!(kernel.iter().all(|&r| r == -libc::EFAULT), "{kernel:?}");
    let mut buf = [0; 64];
    assert_eq!(
        dev.read(keys.mr, 0, &mut buf).unwrap(),
        Completion::ProtectionError
    );
    let after: Vec<Vec<u8>> = [30, 31, 40]
        .iter()
        .map(|p| pool_bytes(&pool, p * PAGE_BYTES, PAGE_BYTES as usize))
        .collect();
    assert_eq!(
        before, after,
        "no write reached the pool after invalidation"
    );

    dev.deregister(keys.mr).unwrap();
    dev.deregister(keys.mr).unwrap(); // idempotent
    dev.revoke(keys.mr).unwrap(); // a deregistered region is revoked already
    assert_eq!(dev.revoke(MrId(999)).unwrap_err().errno(), Errno::EINVAL);
    assert_eq!(
        dev.write(keys.mr, 0, &[1]).unwrap(),
        Completion::InvalidRegion
    );
    // The entries are free again: a new registration gets its own address.
    let again = dev.register(pages(&[30]), RevokeMode::Invalidate).unwrap();
    assert!(again.iova > keys.iova, "device addresses are never reused");
    assert_ne!(again.mr, keys.mr);
}

#[test]
fn redirect_sends_later_writes_to_scratch() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let keys = dev
        .register(pages(&[50, 60, 61]), RevokeMode::Redirect)
        .unwrap();
    dev.revoke(keys.mr).unwrap();
    assert!(dev.is_revoked(keys.mr));
    let data = pattern(8000, 11);
    let (c, kernel) = dev.submit_write(keys.mr, 100, &data).unwrap().wait();
    assert_eq!(c, Completion::Ok, "{kernel:?}");
    for p in [50, 60, 61] {
        assert_eq!(
            pool_bytes(&pool, p * PAGE_BYTES, PAGE_BYTES as usize),
            vec![0; PAGE_BYTES as usize],
            "pool page {p} unchanged"
        );
    }
    let mut scratch = vec![0; 8000];
    dev.read_scratch(keys.mr, 100, &mut scratch).unwrap();
    assert_eq!(scratch, data, "the write went to scratch");
    // A read of a redirected region completes and reads zeros: the scratch
    // window is shared by the device's redirected regions, so it must not
    // show what this (or another registration's) device wrote there.
    let other = dev.register(pages(&[70]), RevokeMode::Redirect).unwrap();
    dev.revoke(other.mr).unwrap();
    for mr in [keys.mr, other.mr] {
        let mut back = vec![0xffu8; 3000];
        assert_eq!(dev.read(mr, 100, &mut back).unwrap(), Completion::Ok);
        assert_eq!(back, vec![0; 3000], "{mr:?} reads zeros, not scratch");
    }
    dev.deregister(other.mr).unwrap();
    dev.deregister(keys.mr).unwrap();
}

#[test]
fn a_large_redirected_region_pins_one_scratch_window() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    // 12 MiB of pool: the scratch is 12 MiB of addresses over an 8 MiB window.
    let n = 3 * 1024;
    let keys = dev
        .register(
            Backing::Pinned((0..n).map(|p| p * PAGE_BYTES).collect()),
            RevokeMode::Redirect,
        )
        .unwrap();
    let before = pool_bytes(&pool, 0, 64);
    dev.revoke(keys.mr).unwrap();
    let tail = 11 << 20;
    assert_eq!(dev.write(keys.mr, tail, b"late").unwrap(), Completion::Ok);
    let mut b = [0; 4];
    dev.read_scratch(keys.mr, tail, &mut b).unwrap();
    assert_eq!(&b, b"late");
    dev.read_scratch(keys.mr, tail - SCRATCH_WINDOW_BYTES, &mut b)
        .unwrap();
    assert_eq!(&b, b"late", "one window, mapped again");
    assert_eq!(pool_bytes(&pool, tail, 4), vec![0; 4]);
    assert_eq!(pool_bytes(&pool, 0, 64), before);
}

#[test]
fn on_demand_paging_and_bad_pages_are_refused() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    assert!(!dev.caps().odp && dev.caps().invalidate && dev.caps().redirect);
    assert_eq!(
        dev.register(pages(&[1]), RevokeMode::Odp)
            .unwrap_err()
            .errno(),
        Errno::EOPNOTSUPP
    );
    assert_eq!(
        dev.register(Backing::Pinned(vec![100]), RevokeMode::Invalidate)
            .unwrap_err()
            .errno(),
        Errno::EINVAL,
        "unaligned page"
    );
    assert_eq!(
        dev.register(Backing::Pinned(vec![POOL_BYTES]), RevokeMode::Invalidate)
            .unwrap_err()
            .errno(),
        Errno::EINVAL,
        "outside the pool"
    );
    assert_eq!(
        dev.register(Backing::Pinned(vec![]), RevokeMode::Invalidate)
            .unwrap_err()
            .errno(),
        Errno::EINVAL
    );
}

/// What the in-flight scenario saw.
struct InFlightRun {
    /// `revoke` had returned before the pipe was filled.
    returned_before_fill: bool,
    /// The region's pool page, read by the revoking thread right after
    /// `revoke` returned ("confirmed").
    pool_at_confirmation: Vec<u8>,
    /// The same page at the end.
    pool_at_end: Vec<u8>,
    completion: Completion,
}

/// A `READ_FIXED` from an empty pipe is in flight (blocked in the kernel,
/// holding the old buffer) when another thread revokes the region; then the
/// pipe is filled.
fn revoke_with_a_request_in_flight(mode: RevokeMode, revoke_waits: bool) -> InFlightRun {
    let pool = pool();
    let dev = Arc::new(UringDevice::new(Arc::clone(&pool)).unwrap());
    // This scenario fills the pipe itself: the revocation must wait for it.
    dev.set_revoke_cancel_after(None);
    #[cfg(feature = "negative-controls")]
    if !revoke_waits {
        dev.disable_revoke_wait_for_tests();
    }
    #[cfg(not(feature = "negative-controls"))]
    assert!(revoke_waits);
    let page = 70 * PAGE_BYTES;
    let keys = dev.register(Backing::Pinned(vec![page]), mode).unwrap();
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let ticket = dev
        .submit_write_from_fd(keys.mr, 0, PAGE_BYTES, rd.as_fd(), 0)
        .unwrap();
    assert!(
        !ticket.is_done(),
        "the pipe is empty: the request is in flight"
    );
    assert_eq!(dev.in_flight(keys.mr), 1);

    let returned = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let revoker = {
        let (dev, pool, returned) = (Arc::clone(&dev), Arc::clone(&pool), Arc::clone(&returned));
        std::thread::spawn(move || {
            dev.revoke(keys.mr).unwrap();
            returned.store(true, Ordering::SeqCst);
            tx.send(pool_bytes(&pool, page, PAGE_BYTES as usize))
                .unwrap();
        })
    };
    // Until revoke is either waiting for the request or has returned (a
    // state, polled; nothing here depends on how long anything takes).
    while dev.revocations_waiting() == 0 && !returned.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let returned_before_fill = returned.load(Ordering::SeqCst);
    assert!(!ticket.is_done());
    assert_eq!(
        pool_bytes(&pool, page, 64),
        vec![0; 64],
        "nothing landed yet"
    );
    if !returned_before_fill {
        assert!(rx.try_recv().is_err(), "revoke has not returned");
    }
    let late = vec![0xAB; PAGE_BYTES as usize];
    assert_eq!(rustix::io::write(&wr, &late).unwrap(), late.len());
    let (completion, kernel) = ticket.wait();
    println!(
        "{mode}: the in-flight READ_FIXED completed after revoke with {kernel:?} ({completion})"
    );
    let pool_at_confirmation = rx.recv().unwrap();
    revoker.join().unwrap();
    InFlightRun {
        returned_before_fill,
        pool_at_confirmation,
        pool_at_end: pool_bytes(&pool, page, PAGE_BYTES as usize),
        completion,
    }
}

#[test]
fn revoke_is_confirmed_only_after_the_request_in_flight_completes() {
    for mode in [RevokeMode::Invalidate, RevokeMode::Redirect] {
        let run = revoke_with_a_request_in_flight(mode, true);
        assert!(
            !run.returned_before_fill,
            "{mode}: revoke returned with a request in flight"
        );
        // The request held the old pages: it completes into them, which is
        // fine because revocation was not yet confirmed.
        assert_eq!(run.completion, Completion::Ok);
        assert_eq!(run.pool_at_confirmation, vec![0xAB; PAGE_BYTES as usize]);
        assert_eq!(
            run.pool_at_end, run.pool_at_confirmation,
            "{mode}: nothing landed in the pool after confirmation"
        );
    }
}

/// Negative control: with revoke not waiting, the test sees revoke return
/// while the request is in flight, and the late data land in the pool after
/// "confirmation" — the damage the positive test would catch.
#[cfg(feature = "negative-controls")]
#[test]
fn negative_control_revoke_without_waiting_lets_late_data_land() {
    let run = revoke_with_a_request_in_flight(RevokeMode::Invalidate, false);
    assert!(
        run.returned_before_fill,
        "revoke returned with the request in flight"
    );
    assert_eq!(run.pool_at_confirmation, vec![0; PAGE_BYTES as usize]);
    let landed = run
        .pool_at_end
        .iter()
        .zip(&run.pool_at_confirmation)
        .filter(|(a, b)| a != b)
        .count();
    println!("negative control: {landed} bytes landed in the pool after revoke returned");
    assert_eq!(landed, PAGE_BYTES as usize, "the late write is detected");
}

#[test]
fn a_request_stuck_in_flight_is_cancelled_past_the_bound() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    dev.set_revoke_cancel_after(Some(std::time::Duration::ZERO));
    let page = 90 * PAGE_BYTES;
    let keys = dev
        .register(Backing::Pinned(vec![page]), RevokeMode::Invalidate)
        .unwrap();
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let ticket = dev
        .submit_write_from_fd(keys.mr, 0, PAGE_BYTES, rd.as_fd(), 0)
        .unwrap();
    assert!(!ticket.is_done());
    // Nobody fills the pipe: revoke cancels the request, then returns.
    dev.revoke(keys.mr).unwrap();
    assert!(ticket.is_done(), "confirmed: the request has completed");
    let (c, kernel) = ticket.wait();
    println!("stuck request after revoke: {kernel:?} ({c})");
    assert_eq!(kernel, vec![-libc::ECANCELED]);
    // Data that arrives now lands nowhere.
    rustix::io::write(&wr, &[0xCD; 4096]).unwrap();
    assert_eq!(dev.in_flight(keys.mr), 0);
    assert_eq!(
        pool_bytes(&pool, page, PAGE_BYTES as usize),
        vec![0; PAGE_BYTES as usize]
    );
}

#[test]
fn dropping_the_device_cancels_requests_in_flight() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let keys = dev.register(pages(&[80]), RevokeMode::Invalidate).unwrap();
    let (rd, _wr) = rustix::pipe::pipe().unwrap();
    let ticket = dev
        .submit_write_from_fd(keys.mr, 0, 512, rd.as_fd(), 0)
        .unwrap();
    drop(dev); // must not hang on the empty pipe
    let (c, kernel) = ticket.wait();
    assert_eq!(kernel, vec![-libc::ECANCELED]);
    assert_eq!(c, Completion::DeviceError(libc::ECANCELED));
}

/// `statfs(2)` magic of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

#[test]
fn a_regular_file_pool_is_refused_with_the_kernels_error() {
    // A directory on a disk file system (not tmpfs): the build directory.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let fs_type = rustix::fs::statfs(dir.path()).unwrap().f_type as i64;
    if fs_type == TMPFS_MAGIC {
        println!("skipped: {} is on tmpfs", dir.path().display());
        return;
    }
    let pool: Arc<dyn Media> =
        Arc::new(MappedPool::create(&dir.path().join("pool"), 1 << 20).unwrap());
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let err = dev
        .register(pages(&[1, 2]), RevokeMode::Invalidate)
        .unwrap_err();
    println!(
        "regular-file pool (fs type {fs_type:#x}): {err} [{:?}]",
        err.errno()
    );
    assert_eq!(err.errno(), Errno::EFAULT);
    assert!(err
        .to_string()
        .contains("memfd, tmpfs (/dev/shm), hugetlbfs or device-dax"));
    // Nothing leaked: the table is whole again.
    assert_eq!(
        dev.inner.state.lock().free_entries.len(),
        TABLE_ENTRIES as usize
    );
}

#[test]
fn a_dev_shm_pool_registers() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        println!("skipped: no /dev/shm");
        return;
    };
    let pool: Arc<dyn Media> =
        Arc::new(MappedPool::create(&dir.path().join("pool"), 1 << 20).unwrap());
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let keys = dev
        .register(pages(&[1, 2]), RevokeMode::Invalidate)
        .unwrap();
    assert_eq!(dev.write(keys.mr, 10, b"tmpfs").unwrap(), Completion::Ok);
    assert_eq!(pool_bytes(&pool, PAGE_BYTES + 10, 5), b"tmpfs");
}

/// Not a test: a quick throughput comparison, run by hand with
/// `--ignored --nocapture` (benchmarks proper are `pinfs bench dma`).
#[test]
#[ignore]
fn throughput_against_raw_read_fixed() {
    use io_uring::{opcode, types, IoUring};
    use std::time::Instant;
    for &size in &[4096usize, 1 << 20] {
        let iters = if size == 4096 { 5000 } else { 200 };
        let pool = pool();
        let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
        let keys = dev
            .register(
                Backing::Pinned((0..256).map(|p| p * PAGE_BYTES).collect()),
                RevokeMode::Invalidate,
            )
            .unwrap();
        let data = pattern(size, 1);
        let mut ring = IoUring::new(8).unwrap();
        let mut anon = vec![0u8; 1 << 20];
        let iov = libc::iovec {
            iov_base: anon.as_mut_ptr().cast(),
            iov_len: anon.len(),
        };
        // SAFETY: `anon` outlives the ring's use of it (unregistered below).
        unsafe { ring.submitter().register_buffers(&[iov]).unwrap() };
        let src = rustix::fs::memfd_create("src", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        // Best of interleaved rounds: the machine is shared.
        let (mut ours, mut base) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..iters {
                assert_eq!(dev.write(keys.mr, 0, &data).unwrap(), Completion::Ok);
            }
            ours = ours.min(t.elapsed().as_secs_f64());
            // Baseline: the same pwrite + READ_FIXED into an anonymous fixed buffer.
            let t = Instant::now();
            for _ in 0..iters {
                memory::pwrite_all(&src, 0, &data).unwrap();
                let e = opcode::ReadFixed::new(
                    types::Fd(src.as_raw_fd()),
                    iov.iov_base.cast(),
                    size as u32,
                    0,
                )
                .build()
                .user_data(1);
                // SAFETY: the buffer is registered and the fd open.
                unsafe { ring.submission().push(&e).unwrap() };
                ring.submit_and_wait(1).unwrap();
                let c = ring.completion().next().unwrap();
                assert_eq!(c.result(), size as i32);
            }
            base = base.min(t.elapsed().as_secs_f64());
        }
        ring.submitter().unregister_buffers().unwrap();
        println!(
            "{size} B: uring device {:.0} MB/s, raw READ_FIXED {:.0} MB/s, ratio {:.2}",
            (size * iters) as f64 / ours / 1e6,
            (size * iters) as f64 / base / 1e6,
            base / ours
        );
    }
}

/// Writers stream device writes into a region (two runs) from several
/// threads while it is revoked: after `revoke` returns nothing changes in
/// the region's pool pages, pages around it never change, and later writes
/// fail (`invalidate`) or succeed into scratch (`redirect`). The
/// deterministic negative control of the same protection is
/// `negative_control_revoke_without_waiting_lets_late_data_land`.
#[test]
fn concurrent_writers_during_revocation() {
    use std::sync::atomic::AtomicU64;
    for mode in [RevokeMode::Invalidate, RevokeMode::Redirect] {
        let pool = pool();
        let dev = Arc::new(UringDevice::new(Arc::clone(&pool)).unwrap());
        let region_pages: Vec<u64> = (100..116).chain(200..216).collect();
        let keys = dev.register(pages(&region_pages), mode).unwrap();
        let len = region_pages.len() as u64 * PAGE_BYTES;
        let guards = [99u64, 116, 199, 216];
        let stop = Arc::new(AtomicBool::new(false));
        // Set once `revoke` has returned: writes submitted after it are
        // counted apart, and must all fail (invalidate) or all succeed
        // (redirect).
        let confirmed = Arc::new(AtomicBool::new(false));
        let after = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let (dev, stop, ok, failed) = (
                    Arc::clone(&dev),
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&failed),
                );
                let (confirmed, after) = (Arc::clone(&confirmed), Arc::clone(&after));
                std::thread::spawn(move || {
                    let mut x = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    while !stop.load(Ordering::SeqCst) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let size = 1 + x % 9000;
                        let offset = (x >> 20) % (len - size);
                        let data = vec![(w as u8 + 1) * 0x11; size as usize];
                        let late = confirmed.load(Ordering::SeqCst);
                        let c = dev.write(keys.mr, offset, &data).unwrap();
                        match c {
                            Completion::Ok => ok.fetch_add(1, Ordering::SeqCst),
                            _ => failed.fetch_add(1, Ordering::SeqCst),
                        };
                        // (Writes racing with `revoke` may go either way.)
                        if late {
                            after[usize::from(c != Completion::Ok)].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        let total = |ok: &AtomicU64, failed: &AtomicU64| {
            ok.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst)
        };
        while total(&ok, &failed) < 300 {
            std::thread::yield_now();
        }
        dev.revoke(keys.mr).unwrap();
        confirmed.store(true, Ordering::SeqCst);
        let at_confirmation: Vec<Vec<u8>> = region_pages
            .iter()
            .map(|p| pool_bytes(&pool, p * PAGE_BYTES, PAGE_BYTES as usize))
            .collect();
        let (ok_before, failed_before) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
        let target = total(&ok, &failed) + 300;
        while total(&ok, &failed) < target {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        let changed: usize = region_pages
            .iter()
            .zip(&at_confirmation)
            .map(|(p, snap)| {
                let now = pool_bytes(&pool, p * PAGE_BYTES, PAGE_BYTES as usize);
                now.iter().zip(snap).filter(|(a, b)| a != b).count()
            })
            .sum();
        let guard_bytes: usize = guards
            .iter()
            .map(|p| {
                pool_bytes(&pool, p * PAGE_BYTES, PAGE_BYTES as usize)
                    .iter()
                    .filter(|&&b| b != 0)
                    .count()
            })
            .sum();
        let (ok_after, failed_after) = (
            after[0].load(Ordering::SeqCst),
            after[1].load(Ordering::SeqCst),
        );
        println!(
            "{mode}: device writes before confirmation {} ok / {} failed, after {ok_after} ok / \
             {failed_after} failed; bytes changed in the pool after confirmation: {changed}; \
             bytes outside the region: {guard_bytes}",
            ok_before, failed_before
        );
        assert_eq!(
            changed, 0,
            "{mode}: a device write landed after confirmation"
        );
        assert_eq!(
            guard_bytes, 0,
            "{mode}: a device write landed outside its region"
        );
        match mode {
            RevokeMode::Invalidate => assert_eq!(ok_after, 0),
            _ => assert_eq!(failed_after, 0),
        }
        assert!(
            at_confirmation.iter().flatten().any(|&b| b != 0),
            "writes landed before"
        );
    }
}

/// Not a test: revocation latency (from the call to confirmation) with 0, 1
/// and 64 device writes of 64 KiB in flight, run by hand with `--ignored
/// --nocapture`.
#[test]
#[ignore]
fn revocation_latency() {
    use std::time::Instant;
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let data = pattern(64 << 10, 5);
    for mode in [RevokeMode::Invalidate, RevokeMode::Redirect] {
        for in_flight in [0usize, 1, 64] {
            let mut us = Vec::new();
            for _ in 0..200 {
                // 1 MiB region in 16 runs of 64 KiB (every other 64 KiB).
                let keys = dev
                    .register(
                        Backing::Pinned(
                            (0..256)
                                .map(|p| (p / 16 * 32 + p % 16) * PAGE_BYTES)
                                .collect(),
                        ),
                        mode,
                    )
                    .unwrap();
                let tickets: Vec<_> = (0..in_flight)
                    .map(|i| {
                        let off = (i as u64 % 16) * (64 << 10);
                        dev.submit_write(keys.mr, off, &data).unwrap()
                    })
                    .collect();
                let t = Instant::now();
                dev.revoke(keys.mr).unwrap();
                us.push(t.elapsed().as_secs_f64() * 1e6);
                for t in tickets {
                    t.wait();
                }
                dev.deregister(keys.mr).unwrap();
            }
            us.sort_by(f64::total_cmp);
            println!(
                "revoke ({mode}) with {in_flight:2} in flight: p50 {:.0} us, p99 {:.0} us",
                us[us.len() / 2],
                us[us.len() * 99 / 100]
            );
        }
    }
}

#[test]
fn a_callers_file_feeds_a_write_across_runs() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let keys = dev
        .register(pages(&[5, 9, 10]), RevokeMode::Invalidate)
        .unwrap();
    let src = rustix::fs::memfd_create("src", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let data = pattern(7000, 21);
    memory::pwrite_all(&src, 1000, &data).unwrap();
    let c = dev
        .write_from_fd(keys.mr, 2000, 7000, src.as_fd(), 1000)
        .unwrap();
    assert_eq!(c, Completion::Ok);
    let first = (PAGE_BYTES - 2000) as usize;
    assert_eq!(
        pool_bytes(&pool, 5 * PAGE_BYTES + 2000, first),
        data[..first]
    );
    assert_eq!(
        pool_bytes(&pool, 9 * PAGE_BYTES, 7000 - first),
        data[first..]
    );
    // A source that runs dry: the access fails, nothing past the data lands.
    let c = dev
        .write_from_fd(keys.mr, 0, 3 * PAGE_BYTES, src.as_fd(), 4000)
        .unwrap();
    assert_eq!(c, Completion::DeviceError(libc::EIO), "short read");
    let err = dev
        .write_from_fd(keys.mr, 0, 10, src.as_fd(), u64::MAX - 5)
        .unwrap_err();
    assert_eq!(err.errno(), Errno::EINVAL);
}

#[test]
fn many_accesses_in_flight_wait_for_room() {
    let pool = pool();
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let keys = dev
        .register(pages(&[1, 3]), RevokeMode::Invalidate)
        .unwrap();
    // Each access crosses both runs: two requests each, past MAX_IN_FLIGHT.
    let tickets: Vec<_> = (0..MAX_IN_FLIGHT as u64)
        .map(|i| {
            dev.submit_write(keys.mr, PAGE_BYTES - 8, &i.to_le_bytes().repeat(2))
                .unwrap()
        })
        .collect();
    for t in tickets {
        assert_eq!(t.wait().0, Completion::Ok);
    }
    assert_eq!(dev.in_flight(keys.mr), 0);
}

#[test]
fn the_table_has_a_limit() {
    // Every other page: one entry per page, one more than the table holds.
    let pool: Arc<dyn Media> =
        Arc::new(MappedPool::memfd(2 * (TABLE_ENTRIES as u64 + 1) * PAGE_BYTES).unwrap());
    let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
    let scattered: Vec<u64> = (0..=TABLE_ENTRIES as u64)
        .map(|i| 2 * i * PAGE_BYTES)
        .collect();
    let err = dev
        .register(Backing::Pinned(scattered), RevokeMode::Invalidate)
        .unwrap_err();
    assert_eq!(err.errno(), Errno::ENOSPC);
    assert!(dev.register(pages(&[0]), RevokeMode::Invalidate).is_ok());
}

#[test]
fn deregister_waits_for_the_request_in_flight() {
    let pool = pool();
    let dev = Arc::new(UringDevice::new(Arc::clone(&pool)).unwrap());
    dev.set_revoke_cancel_after(None);
    let keys = dev.register(pages(&[7]), RevokeMode::Redirect).unwrap();
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let ticket = dev
        .submit_write_from_fd(keys.mr, 0, 100, rd.as_fd(), 0)
        .unwrap();
    let returned = Arc::new(AtomicBool::new(false));
    let h = {
        let (dev, returned) = (Arc::clone(&dev), Arc::clone(&returned));
        std::thread::spawn(move || {
            dev.deregister(keys.mr).unwrap();
            returned.store(true, Ordering::SeqCst);
        })
    };
    while dev.revocations_waiting() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(!returned.load(Ordering::SeqCst));
    rustix::io::write(&wr, &[0x42; 100]).unwrap();
    assert_eq!(ticket.wait().0, Completion::Ok);
    h.join().unwrap();
    assert!(returned.load(Ordering::SeqCst));
    assert_eq!(dev.entries(keys.mr), 0);
    assert_eq!(
        dev.inner.state.lock().free_entries.len(),
        TABLE_ENTRIES as usize
    );
}

/// Not a test: registration time of 256 MiB of pool against io_uring's
/// registration of 256 MiB of anonymous memory, run by hand with
/// `--ignored --nocapture`.
#[test]
#[ignore]
fn registration_time_against_anonymous() {
    use io_uring::IoUring;
    use std::time::Instant;
    const LEN: u64 = 256 << 20;
    for round in 0..3 {
        let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(LEN).unwrap());
        let dev = UringDevice::new(Arc::clone(&pool)).unwrap();
        let t = Instant::now();
        let keys = dev
            .register(
                Backing::Pinned((0..LEN / PAGE_BYTES).map(|p| p * PAGE_BYTES).collect()),
                RevokeMode::Invalidate,
            )
            .unwrap();
        let ours = t.elapsed().as_secs_f64();
        let t = Instant::now();
        dev.revoke(keys.mr).unwrap();
        let revoke = t.elapsed().as_secs_f64();

        let ring = IoUring::new(8).unwrap();
        let mut anon = vec![0u8; LEN as usize];
        let iov = libc::iovec {
            iov_base: anon.as_mut_ptr().cast(),
            iov_len: anon.len(),
        };
        let t = Instant::now();
        // SAFETY: `anon` outlives the registration (unregistered below).
        unsafe { ring.submitter().register_buffers(&[iov]).unwrap() };
        let base = t.elapsed().as_secs_f64();
        ring.submitter().unregister_buffers().unwrap();
        println!(
            "round {round}: register 256 MiB of pool {:.1} ms, of anonymous memory {:.1} ms, \
             ratio {:.2}; revoke (unpin) {:.1} ms",
            ours * 1e3,
            base * 1e3,
            ours / base,
            revoke * 1e3
        );
    }
}

/// A linked chain (one access over two runs, from a pipe) whose head is
/// blocked when the region is invalidated: the head holds the old buffer
/// and completes into it; the second request is issued only after the
/// head, and then finds the entry empty. Either way revoke waits for both.
#[test]
fn a_linked_request_issued_after_invalidation_finds_the_entry_empty() {
    let pool = pool();
    let dev = Arc::new(UringDevice::new(Arc::clone(&pool)).unwrap());
    dev.set_revoke_cancel_after(None);
    let keys = dev
        .register(pages(&[20, 30]), RevokeMode::Invalidate)
        .unwrap();
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let ticket = dev
        .submit_write_from_fd(keys.mr, 0, 2 * PAGE_BYTES, rd.as_fd(), 0)
        .unwrap();
    let revoker = {
        let dev = Arc::clone(&dev);
        std::thread::spawn(move || dev.revoke(keys.mr).unwrap())
    };
    while dev.revocations_waiting() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(!revoker.is_finished());
    rustix::io::write(&wr, &[0x5A; 2 * 4096]).unwrap();
    let (c, kernel) = ticket.wait();
    revoker.join().unwrap();
    println!("linked chain across an invalidation: {kernel:?} -> {c}");
    assert_eq!(kernel[0], PAGE_BYTES as i32, "the head used the old buffer");
    assert_eq!(pool_bytes(&pool, 20 * PAGE_BYTES, 4), vec![0x5A; 4]);
    if kernel[1] < 0 {
        assert_eq!(c, Completion::ProtectionError);
        assert_eq!(pool_bytes(&pool, 30 * PAGE_BYTES, 4), vec![0; 4]);
    }
}
