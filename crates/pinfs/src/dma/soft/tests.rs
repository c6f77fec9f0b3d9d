//! Unit tests of the soft device over a memfd pool: no file system; the
//! page source of on-demand paging is a small table handing out pool
//! offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::*;
use crate::dma::{PageSource, PAGE_BYTES};
use crate::media::{MappedPool, RecordingMedia};

const P: u64 = PAGE_BYTES;

fn pool(bytes: u64) -> Arc<dyn Media> {
    Arc::new(MappedPool::memfd(bytes).unwrap())
}

fn page_bytes(pool: &Arc<dyn Media>, offset: u64) -> Vec<u8> {
    let mut b = vec![0; P as usize];
    pool.read(offset, &mut b).unwrap();
    b
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn refuses_media_without_a_mapping() {
    let media: Arc<dyn Media> = Arc::new(RecordingMedia::new(1 << 20));
    let err = SoftDevice::new(media).unwrap_err();
    assert_eq!(err.errno(), Errno::EOPNOTSUPP);
    assert!(err.to_string().contains("not mapped"), "{err}");
}

#[test]
fn write_read_round_trip_through_the_pool() {
    let pool = pool(4 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    assert_eq!(dev.name(), "soft");
    assert!(dev.caps().invalidate && dev.caps().redirect && dev.caps().odp);
    // Pages out of order and partly contiguous (the copy runs coalesce).
    let pages = vec![8 * P, 3 * P, 4 * P, 5 * P, 20 * P];
    let keys = dev
        .register(Backing::Pinned(pages.clone()), RevokeMode::Invalidate)
        .unwrap();
    assert_ne!(keys.lkey, 0);
    assert_ne!(keys.rkey, 0);
    assert_ne!(keys.lkey, keys.rkey);
    assert_eq!(keys.iova % P, 0);
    assert_eq!(dev.keys(keys.mr), Some(keys));

    let data = pattern((5 * P - 300) as usize, 7);
    assert_eq!(dev.write(keys.mr, 100, &data).unwrap(), Completion::Ok);
    // Each region page landed in its pool page.
    let mut expect = vec![0u8; (5 * P) as usize];
    expect[100..100 + data.len()].copy_from_slice(&data);
    for (i, &off) in pages.iter().enumerate() {
        let want = &expect[i * P as usize..(i + 1) * P as usize];
        assert_eq!(page_bytes(&pool, off), want, "page {i}");
    }
    let mut back = vec![0; data.len()];
    assert_eq!(dev.read(keys.mr, 100, &mut back).unwrap(), Completion::Ok);
    assert_eq!(back, data);

    // The same through a queue pair, by rkey and IOVA, asynchronously.
    let qp = dev.queue_pair();
    qp.post_send(WorkRequest::Write {
        wr_id: 41,
        key: keys.rkey,
        iova: keys.iova + 2 * P + 5,
        data: vec![0xAB; 10].into(),
    })
    .unwrap();
    qp.post_send(WorkRequest::Read {
        wr_id: 42,
        key: keys.lkey,
        iova: keys.iova + 2 * P,
        len: 20,
    })
    .unwrap();
    let mut wcs = Vec::new();
    while wcs.len() < 2 {
        wcs.extend(qp.wait_cq(8));
    }
    wcs.sort_by_key(|w| w.wr_id);
    assert_eq!(wcs[0].wr_id, 41);
    assert_eq!(wcs[0].status, Completion::Ok);
    assert_eq!(wcs[0].byte_len, 10);
    assert_eq!(wcs[1].status, Completion::Ok);
    // The read may run before or after the write (two workers): either
    // way it reads pool page 4 (region page 2).
    let now = page_bytes(&pool, 4 * P);
    assert_eq!(&now[5..15], &[0xAB; 10]);
    assert_eq!(wcs[1].data.len(), 20);
    assert_eq!(qp.outstanding(), 0);
    assert!(qp.wait_cq(1).is_empty());
    dev.deregister(keys.mr).unwrap();
    assert_eq!(
        dev.write(keys.mr, 0, b"x").unwrap(),
        Completion::InvalidRegion
    );
}

#[test]
fn large_transfers_are_split_over_the_workers_and_still_exact() {
    let pool = pool(8 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    // 600 pages in reverse pool order: no run coalesces, every page is
    // translated on its own.
    let pages: Vec<u64> = (0..600).rev().map(|i| (100 + i) * P).collect();
    let a = dev
        .register(Backing::Pinned(pages.clone()), RevokeMode::Invalidate)
        .unwrap();
    let len = 600 * P as usize - 100;
    assert!(len >= blocking::SPLIT_MIN_BYTES);
    let data = pattern(len, 11);
    assert_eq!(dev.write(a.mr, 50, &data).unwrap(), Completion::Ok);
    let mut expect = vec![0u8; 600 * P as usize];
    expect[50..50 + len].copy_from_slice(&data);
    for (i, &off) in pages.iter().enumerate() {
        let want = &expect[i * P as usize..(i + 1) * P as usize];
        assert!(page_bytes(&pool, off) == want, "page {i}");
    }
    let mut back = vec![0u8; len];
    assert_eq!(dev.read(a.mr, 50, &mut back).unwrap(), Completion::Ok);
    assert!(back == data);
    // Running past the end: the first piece is fine, the last is refused,
    // and the transfer reports it.
    assert_eq!(
        dev.write(a.mr, 200, &data).unwrap(),
        Completion::ProtectionError
    );
    let mut back = vec![0u8; len];
    assert_eq!(
        dev.read(a.mr, 200, &mut back).unwrap(),
        Completion::ProtectionError
    );
}

#[test]
fn wrong_key_and_out_of_range_are_protection_errors() {
    let pool = pool(4 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    let a = dev
        .register(
            Backing::Pinned(vec![10 * P, 11 * P]),
            RevokeMode::Invalidate,
        )
        .unwrap();
    let b = dev
        .register(Backing::Pinned(vec![12 * P]), RevokeMode::Redirect)
        .unwrap();
    let before: Vec<_> = (10..13).map(|p| page_bytes(&pool, p * P)).collect();
    let qp = dev.queue_pair();
    let wrong = (a.rkey ^ 0x5a5a_0001) | 1;
    assert!(wrong != a.lkey && wrong != b.lkey && wrong != b.rkey);
    let cases = [
        (wrong, a.iova),              // a key nobody holds
        (0, a.iova),                  // the zero key
        (b.rkey, a.iova),             // another region's key
        (a.rkey, b.iova),             // ... the other way
        (a.rkey, a.iova - 1),         // before the region
        (a.rkey, a.iova + 2 * P - 5), // runs past its end
        (a.rkey, a.iova + 2 * P),     // at its end (guard gap)
        (a.rkey, u64::MAX - 3),       // wraps
    ];
    for (i, &(key, iova)) in cases.iter().enumerate() {
        qp.post_send(WorkRequest::Write {
            wr_id: i as u64,
            key,
            iova,
            data: vec![0xEE; 10].into(),
        })
        .unwrap();
    }
    let mut n = 0;
    while n < cases.len() {
        for wc in qp.wait_cq(16) {
            assert_eq!(wc.status, Completion::ProtectionError, "case {}", wc.wr_id);
            assert_eq!(wc.byte_len, 0);
            n += 1;
        }
    }
    assert_eq!(
        dev.write(a.mr, 2 * P - 5, &[1; 10]).unwrap(),
        Completion::ProtectionError
    );
    assert_eq!(
        dev.write(a.mr, u64::MAX - 2, &[1; 10]).unwrap(),
        Completion::ProtectionError
    );
    let after: Vec<_> = (10..13).map(|p| page_bytes(&pool, p * P)).collect();
    assert_eq!(before, after);
    // Registration refuses pages outside the pool, unaligned pages, empty
    // regions and a mode that does not fit the backing.
    let len = pool.len_bytes();
    for bad in [vec![len], vec![P + 1], vec![]] {
        let e = dev.register(Backing::Pinned(bad), RevokeMode::Invalidate);
        assert_eq!(e.unwrap_err().errno(), Errno::EINVAL);
    }
    let e = dev.register(Backing::Pinned(vec![0]), RevokeMode::Odp);
    assert_eq!(e.unwrap_err().errno(), Errno::EINVAL);
    assert_eq!(dev.revoke(MrId(999)).unwrap_err().errno(), Errno::EINVAL);
}

#[test]
fn send_and_completion_queues_are_bounded() {
    let pool = pool(4 << 20);
    let dev = SoftDevice::new(pool).unwrap();
    let a = dev
        .register(Backing::Pinned(vec![0]), RevokeMode::Invalidate)
        .unwrap();
    let qp = dev.queue_pair();
    let wr = |i| WorkRequest::Write {
        wr_id: i,
        key: a.lkey,
        iova: a.iova,
        data: vec![1].into(),
    };
    for i in 0..CQ_DEPTH as u64 {
        qp.post_send(wr(i)).unwrap();
    }
    // Not polled: the completion queue is full.
    assert_eq!(qp.post_send(wr(0)).unwrap_err().errno(), Errno::EAGAIN);
    let mut n = 0;
    while n < CQ_DEPTH {
        n += qp.wait_cq(CQ_DEPTH).len();
    }
    qp.post_send(wr(0)).unwrap();
    let big = WorkRequest::Read {
        wr_id: 0,
        key: a.lkey,
        iova: a.iova,
        len: MAX_WR_BYTES + 1,
    };
    assert_eq!(qp.post_send(big).unwrap_err().errno(), Errno::EINVAL);
    // A queue pair outliving its device is refused, not hung.
    qp.wait_cq(1);
    drop(dev);
    assert_eq!(qp.post_send(wr(0)).unwrap_err().errno(), Errno::ENODEV);
    assert_eq!(qp.outstanding(), 0);
}

#[test]
fn invalidate_refuses_later_access_and_leaves_the_pool_alone() {
    let pool = pool(4 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    let a = dev
        .register(
            Backing::Pinned(vec![30 * P, 31 * P]),
            RevokeMode::Invalidate,
        )
        .unwrap();
    assert_eq!(dev.write(a.mr, 0, &[7; 100]).unwrap(), Completion::Ok);
    assert!(!dev.is_revoked(a.mr));
    dev.revoke(a.mr).unwrap();
    assert!(dev.is_revoked(a.mr));
    dev.revoke(a.mr).unwrap(); // idempotent
    let before = (page_bytes(&pool, 30 * P), page_bytes(&pool, 31 * P));
    assert_eq!(
        dev.write(a.mr, 0, &[9; 2 * P as usize]).unwrap(),
        Completion::ProtectionError
    );
    let mut buf = [0; 10];
    assert_eq!(
        dev.read(a.mr, 0, &mut buf).unwrap(),
        Completion::ProtectionError
    );
    assert_eq!(
        before,
        (page_bytes(&pool, 30 * P), page_bytes(&pool, 31 * P))
    );
    assert_eq!(&before.0[..100], &[7; 100]);
    dev.deregister(a.mr).unwrap();
    dev.deregister(a.mr).unwrap(); // idempotent
    dev.revoke(a.mr).unwrap();
}

#[test]
fn redirect_completes_ok_into_scratch_and_leaves_the_pool_alone() {
    let pool = pool(4 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    let a = dev
        .register(Backing::Pinned(vec![40 * P, 41 * P]), RevokeMode::Redirect)
        .unwrap();
    assert_eq!(dev.write(a.mr, 0, &[7; 100]).unwrap(), Completion::Ok);
    dev.revoke(a.mr).unwrap();
    assert!(dev.is_revoked(a.mr));
    let before = (page_bytes(&pool, 40 * P), page_bytes(&pool, 41 * P));
    let data = pattern(2 * P as usize, 3);
    assert_eq!(dev.write(a.mr, 0, &data).unwrap(), Completion::Ok);
    assert_eq!(
        before,
        (page_bytes(&pool, 40 * P), page_bytes(&pool, 41 * P))
    );
    // One scratch page for the whole region: a read returns what the last
    // write left there (region page 1's bytes, written last).
    let mut buf = vec![0; P as usize];
    assert_eq!(dev.read(a.mr, 0, &mut buf).unwrap(), Completion::Ok);
    assert_eq!(buf, &data[P as usize..]);
    // Beyond the region is still a protection error.
    assert_eq!(
        dev.write(a.mr, 2 * P, &[1]).unwrap(),
        Completion::ProtectionError
    );
}

#[test]
fn iova_of_a_revoked_region_is_not_reused_until_deregistration() {
    let pool = pool(4 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    let a = dev
        .register(
            Backing::Pinned(vec![50 * P, 51 * P]),
            RevokeMode::Invalidate,
        )
        .unwrap();
    dev.revoke(a.mr).unwrap();
    let b = dev
        .register(
            Backing::Pinned(vec![60 * P, 61 * P]),
            RevokeMode::Invalidate,
        )
        .unwrap();
    let (a_end, b_end) = (a.iova + 2 * P, b.iova + 2 * P);
    assert!(b.iova >= a_end || b_end <= a.iova, "ranges overlap");
    assert_ne!(b.iova, a.iova);
    let b_before = (page_bytes(&pool, 60 * P), page_bytes(&pool, 61 * P));
    // A's late accesses, at A's addresses and at B's: refused, and B's pages
    // unchanged.
    let qp = dev.queue_pair();
    for (i, iova) in [a.iova, b.iova, a.iova + P].into_iter().enumerate() {
        qp.post_send(WorkRequest::Write {
            wr_id: i as u64,
            key: a.rkey,
            iova,
            data: vec![0xCC; 64].into(),
        })
        .unwrap();
    }
    let mut n = 0;
    while n < 3 {
        for wc in qp.wait_cq(4) {
            assert_eq!(wc.status, Completion::ProtectionError);
            n += 1;
        }
    }
    assert_eq!(
        b_before,
        (page_bytes(&pool, 60 * P), page_bytes(&pool, 61 * P))
    );
    // After deregistration A's key is dead for good, and the range may be
    // handed out again (next-fit delays that; not required either way).
    dev.deregister(a.mr).unwrap();
    let c = dev
        .register(Backing::Pinned(vec![70 * P]), RevokeMode::Invalidate)
        .unwrap();
    assert!(c.lkey != a.lkey && c.lkey != a.rkey && c.rkey != a.rkey);
    qp.post_send(WorkRequest::Write {
        wr_id: 9,
        key: a.rkey,
        iova: c.iova,
        data: vec![0xCC; 64].into(),
    })
    .unwrap();
    assert_eq!(qp.wait_cq(1)[0].status, Completion::ProtectionError);
    assert_ne!(&page_bytes(&pool, 70 * P)[..64], &[0xCC; 64]);
}

/// A page source handing out pool offsets from a table the test changes;
/// optionally invalidating the page from inside `fault` (as a file system
/// changing the layout while it serves the fault would) a number of times.
#[derive(Default)]
struct TableSource {
    answers: Mutex<HashMap<u64, u64>>,
    faults: Mutex<Vec<(u64, bool)>>,
    fail: AtomicBool,
    /// (device, region) to invalidate from inside `fault`.
    target: OnceLock<(Arc<SoftDevice>, MrId)>,
    invalidations_left: AtomicU64,
}

impl PageSource for TableSource {
    fn fault(&self, page: u64, write: bool) -> Result<u64> {
        self.faults.lock().push((page, write));
        if self.fail.load(Ordering::SeqCst) {
            return Err(Errno::ENOSPC.into());
        }
        if self.invalidations_left.load(Ordering::SeqCst) > 0 {
            self.invalidations_left.fetch_sub(1, Ordering::SeqCst);
            if let Some((dev, mr)) = self.target.get() {
                dev.invalidate_pages(*mr, page, 1).unwrap();
            }
        }
        self.answers
            .lock()
            .get(&page)
            .copied()
            .ok_or(Errno::EIO.into())
    }
}

#[test]
fn odp_faults_in_and_refaults_to_the_new_page_after_invalidation() {
    let pool = pool(4 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    let source = Arc::new(TableSource::default());
    source.answers.lock().extend([(0, 80 * P), (1, 81 * P)]);
    let a = dev
        .register(
            Backing::OnDemand {
                pages: 2,
                source: Arc::clone(&source) as Arc<dyn PageSource>,
            },
            RevokeMode::Odp,
        )
        .unwrap();
    // Nothing is faulted at registration.
    assert!(source.faults.lock().is_empty());
    // A read faults read-only; the write after it faults again, for write.
    let mut buf = [0u8; 8];
    assert_eq!(dev.read(a.mr, P, &mut buf).unwrap(), Completion::Ok);
    assert_eq!(dev.write(a.mr, P, &[5; 64]).unwrap(), Completion::Ok);
    assert_eq!(&page_bytes(&pool, 81 * P)[..64], &[5; 64]);
    assert_eq!(*source.faults.lock(), vec![(1, false), (1, true)]);
    // Translated now: no more faults.
    assert_eq!(dev.write(a.mr, P, &[6; 64]).unwrap(), Completion::Ok);
    assert_eq!(source.faults.lock().len(), 2);
    // The file system moves page 1 (a punch, then a new block).
    dev.invalidate_pages(a.mr, 1, 1).unwrap();
    source.answers.lock().insert(1, 90 * P);
    let old = page_bytes(&pool, 81 * P);
    assert_eq!(dev.write(a.mr, P, &[8; 64]).unwrap(), Completion::Ok);
    assert_eq!(&page_bytes(&pool, 90 * P)[..64], &[8; 64]);
    assert_eq!(page_bytes(&pool, 81 * P), old, "old page touched");
    assert_eq!(source.faults.lock().last(), Some(&(1, true)));
    // A fault the file system cannot serve.
    source.fail.store(true, Ordering::SeqCst);
    assert_eq!(dev.write(a.mr, 0, &[1]).unwrap(), Completion::PageFault);
    // Invalidating beyond the region is refused; pinned regions ignore it.
    assert_eq!(
        dev.invalidate_pages(a.mr, 1, 2).unwrap_err().errno(),
        Errno::EINVAL
    );
    let pinned = dev
        .register(Backing::Pinned(vec![95 * P]), RevokeMode::Invalidate)
        .unwrap();
    dev.invalidate_pages(pinned.mr, 0, 1).unwrap();
    assert_eq!(dev.write(pinned.mr, 0, &[2; 8]).unwrap(), Completion::Ok);
    assert_eq!(&page_bytes(&pool, 95 * P)[..8], &[2; 8]);
    // Revoked: no translation, no new fault.
    source.fail.store(false, Ordering::SeqCst);
    dev.revoke(a.mr).unwrap();
    let n = source.faults.lock().len();
    assert_eq!(
        dev.write(a.mr, P, &[9; 64]).unwrap(),
        Completion::ProtectionError
    );
    assert_eq!(source.faults.lock().len(), n);
    assert_eq!(&page_bytes(&pool, 90 * P)[..64], &[8; 64]);
}

#[test]
fn odp_fault_raced_by_invalidation_retries_then_gives_up() {
    let pool = pool(4 << 20);
    let dev = Arc::new(SoftDevice::new(Arc::clone(&pool)).unwrap());
    let source = Arc::new(TableSource::default());
    source.answers.lock().insert(0, 100 * P);
    let a = dev
        .register(
            Backing::OnDemand {
                pages: 1,
                source: Arc::clone(&source) as Arc<dyn PageSource>,
            },
            RevokeMode::Odp,
        )
        .unwrap();
    // The source invalidates the page from inside `fault` (no deadlock: the
    // device holds no lock there): the first answers are never installed.
    assert!(source.target.set((Arc::clone(&dev), a.mr)).is_ok());
    source.invalidations_left.store(3, Ordering::SeqCst);
    assert_eq!(dev.write(a.mr, 0, &[4; 16]).unwrap(), Completion::Ok);
    assert_eq!(source.faults.lock().len(), 4);
    assert_eq!(&page_bytes(&pool, 100 * P)[..16], &[4; 16]);
    // Forever raced: bounded retries, then a page fault.
    dev.invalidate_pages(a.mr, 0, 1).unwrap();
    source
        .invalidations_left
        .store(u64::MAX / 2, Ordering::SeqCst);
    assert_eq!(dev.write(a.mr, 0, &[5; 16]).unwrap(), Completion::PageFault);
    let faults = source.faults.lock().len();
    assert_eq!(faults, 4 + region::MAX_FAULT_RETRIES as usize);
    assert_eq!(&page_bytes(&pool, 100 * P)[..16], &[4; 16]);
    // Break the cycle device → source → device.
    dev.deregister(a.mr).unwrap();
    drop(source);
}

/// How the region's access is withdrawn under traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Withdraw {
    /// `revoke` of a pinned region in this mode.
    Revoke(RevokeMode),
    /// `deregister` of a pinned (invalidate-mode) region.
    Deregister,
    /// On-demand region: the file system moves every page to a new one
    /// (the source's answers change) and calls `invalidate_pages`.
    InvalidatePages,
}

/// What one run of [`withdraw_under_traffic`] saw.
#[derive(Debug, Default)]
struct Traffic {
    writes: u64,
    bytes: u64,
    /// Completions seen once the withdrawal had been called.
    after: u64,
    /// ... of which `Ok`.
    ok_after: u64,
    /// Old pool pages that changed after the withdrawal returned.
    changed_pages: u64,
    /// Rounds run.
    rounds: u64,
    /// Rounds whose withdrawal ran while a request had just started.
    mid_copy: u64,
    /// Longest and total time the withdrawal call took (informative only).
    max_withdraw: std::time::Duration,
    sum_withdraw: std::time::Duration,
    /// On-demand: new pages written after the invalidation.
    new_pages_written: u64,
}

/// Pages of the region the streamers write (4 MiB: a request takes long
/// enough that one is in flight when the withdrawal runs).
const STREAM_PAGES: u64 = 1024;
/// Patterns each streamer cycles through.
const PATTERNS: u64 = 4;
/// Requests each streamer keeps in flight.
const STREAM_DEPTH: usize = 3;
/// Requests each streamer completes after the withdrawal before the pages
/// are compared.
const WRITES_AFTER: u64 = 16;
/// Registrations (each withdrawn under traffic) per run.
const ROUNDS: u64 = 4;
/// Most rounds the negative control runs looking for a late write.
const CONTROL_ROUNDS: u64 = 40;
/// Where the region's pool pages start, and where on-demand pages move to.
const OLD_BASE: u64 = 512 * P;
const NEW_BASE: u64 = OLD_BASE + STREAM_PAGES * P;

/// A page source answering page `i` → `base + i * P`, `base` switchable.
struct MovingSource {
    base: AtomicU64,
}

impl PageSource for MovingSource {
    fn fault(&self, page: u64, _write: bool) -> Result<u64> {
        Ok(self.base.load(Ordering::SeqCst) + page * P)
    }
}

/// Two threads stream whole-region writes into a registered region while
/// this thread withdraws its access; the old pool pages are snapshotted the
/// moment the withdrawal returns (in reverse order, so the snapshot runs
/// against a copy in flight rather than behind it) and compared once every
/// request has completed, after more traffic.
///
/// With protection on it runs [`ROUNDS`] rounds; without (the negative
/// control) it stops at the first round that saw a late write, or after
/// [`CONTROL_ROUNDS`]: whether a copy is still running when the snapshot is
/// taken is up to the scheduler on a busy two-core machine, so one round
/// may miss it; many in a row do not.
fn withdraw_under_traffic(how: Withdraw, confirmed: bool) -> Traffic {
    let pool = pool(12 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    if !confirmed {
        dev.unconfirmed_revoke_for_tests();
    }
    let pages: Vec<u64> = (0..STREAM_PAGES).map(|i| OLD_BASE + i * P).collect();
    let mut total = Traffic::default();
    let rounds = if confirmed { ROUNDS } else { CONTROL_ROUNDS };
    for round in 0..rounds {
        if !confirmed && total.changed_pages > 0 {
            break;
        }
        total.rounds += 1;
        let source = Arc::new(MovingSource {
            base: AtomicU64::new(OLD_BASE),
        });
        let keys = match how {
            Withdraw::Revoke(mode) => dev.register(Backing::Pinned(pages.clone()), mode),
            Withdraw::Deregister => {
                dev.register(Backing::Pinned(pages.clone()), RevokeMode::Invalidate)
            }
            Withdraw::InvalidatePages => dev.register(
                Backing::OnDemand {
                    pages: STREAM_PAGES,
                    source: Arc::clone(&source) as Arc<dyn PageSource>,
                },
                RevokeMode::Odp,
            ),
        }
        .unwrap();
        let new_before: Vec<Vec<u8>> = (0..STREAM_PAGES)
            .map(|i| page_bytes(&pool, NEW_BASE + i * P))
            .collect();
        let stop = AtomicBool::new(false);
        let withdrawn = AtomicBool::new(false);
        let completed = AtomicU64::new(0);
        let after = AtomicU64::new(0);
        let ok_after = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let mut mid_copy = 0u64;
        let mut took = std::time::Duration::ZERO;
        let snapshot = std::thread::scope(|s| {
            for t in 0..2u64 {
                let qp = dev.queue_pair();
                let (stop, withdrawn, completed) = (&stop, &withdrawn, &completed);
                let (after, ok_after, bytes) = (&after, &ok_after, &bytes);
                s.spawn(move || {
                    // A ring of patterns, distinct per streamer and round:
                    // consecutive requests always write different bytes.
                    let ring: Vec<Arc<[u8]>> = (0..PATTERNS)
                        .map(|k| {
                            let byte = ((round * 2 * PATTERNS + k * 2 + t) % 255 + 1) as u8;
                            vec![byte; (STREAM_PAGES * P) as usize].into()
                        })
                        .collect();
                    let mut seq = 0u64;
                    loop {
                        while !stop.load(Ordering::SeqCst) && qp.outstanding() < STREAM_DEPTH {
                            seq += 1;
                            qp.post_send(WorkRequest::Write {
                                wr_id: seq,
                                key: keys.rkey,
                                iova: keys.iova,
                                data: Arc::clone(&ring[(seq % PATTERNS) as usize]),
                            })
                            .unwrap();
                        }
                        if qp.outstanding() == 0 {
                            return;
                        }
                        for wc in qp.wait_cq(8) {
                            completed.fetch_add(1, Ordering::SeqCst);
                            bytes.fetch_add(wc.byte_len, Ordering::SeqCst);
                            if withdrawn.load(Ordering::SeqCst) {
                                after.fetch_add(1, Ordering::SeqCst);
                                if wc.status == Completion::Ok {
                                    ok_after.fetch_add(1, Ordering::SeqCst);
                                }
                            } else {
                                assert_eq!(wc.status, Completion::Ok);
                            }
                        }
                    }
                });
            }
            while completed.load(Ordering::SeqCst) < 2 {
                std::thread::yield_now();
            }
            // Withdraw while a request has just started on the region (its
            // first page written, the page an eighth in not yet), so the
            // race window is real, not left to scheduling luck; bounded.
            let (mut first, mut eighth) = ([0u8], [0u8]);
            for _ in 0..1_000_000 {
                pool.read(OLD_BASE, &mut first).unwrap();
                pool.read(OLD_BASE + STREAM_PAGES / 8 * P, &mut eighth)
                    .unwrap();
                if first != eighth {
                    mid_copy += 1;
                    break;
                }
                std::hint::spin_loop();
            }
            withdrawn.store(true, Ordering::SeqCst);
            let started = std::time::Instant::now();
            match how {
                Withdraw::Revoke(_) => dev.revoke(keys.mr).unwrap(),
                Withdraw::Deregister => dev.deregister(keys.mr).unwrap(),
                Withdraw::InvalidatePages => {
                    source.base.store(NEW_BASE, Ordering::SeqCst);
                    dev.invalidate_pages(keys.mr, 0, STREAM_PAGES).unwrap();
                }
            }
            took = started.elapsed();
            let snapshot: Vec<Vec<u8>> = {
                let mut v: Vec<_> = (0..STREAM_PAGES)
                    .rev()
                    .map(|i| page_bytes(&pool, OLD_BASE + i * P))
                    .collect();
                v.reverse();
                v
            };
            while after.load(Ordering::SeqCst) < 2 * WRITES_AFTER {
                std::thread::yield_now();
            }
            stop.store(true, Ordering::SeqCst);
            snapshot
        });
        // Every request has completed (the streamers drained their queues).
        let changed = (0..STREAM_PAGES)
            .filter(|&i| page_bytes(&pool, OLD_BASE + i * P) != snapshot[i as usize])
            .count() as u64;
        total.new_pages_written += (0..STREAM_PAGES)
            .filter(|&i| page_bytes(&pool, NEW_BASE + i * P) != new_before[i as usize])
            .count() as u64;
        if how != Withdraw::Deregister {
            dev.deregister(keys.mr).unwrap();
        }
        total.writes += completed.into_inner();
        total.bytes += bytes.into_inner();
        total.after += after.into_inner();
        total.ok_after += ok_after.into_inner();
        total.changed_pages += changed;
        total.mid_copy += mid_copy;
        total.max_withdraw = total.max_withdraw.max(took);
        total.sum_withdraw += took;
    }
    println!(
        "soft {how:?} under traffic, protection {}: {} device writes, {} MiB written, \
         {} completed after the withdrawal ({} ok), {} of {} withdrawals during a copy \
         (took mean {:?}, max {:?}), {} old pool pages changed after it returned, \
         {} new pages written",
        if confirmed {
            "on"
        } else {
            "OFF (negative control)"
        },
        total.writes,
        total.bytes >> 20,
        total.after,
        total.ok_after,
        total.mid_copy,
        total.rounds,
        total.sum_withdraw / total.rounds.max(1) as u32,
        total.max_withdraw,
        total.changed_pages,
        total.new_pages_written,
    );
    total
}

const ALL_WITHDRAWALS: [Withdraw; 4] = [
    Withdraw::Revoke(RevokeMode::Invalidate),
    Withdraw::Revoke(RevokeMode::Redirect),
    Withdraw::Deregister,
    Withdraw::InvalidatePages,
];

#[test]
fn withdrawal_is_confirmed_under_traffic() {
    for how in ALL_WITHDRAWALS {
        let t = withdraw_under_traffic(how, true);
        assert_eq!(
            t.changed_pages, 0,
            "{how:?}: old pages changed after it returned"
        );
        assert!(t.after >= ROUNDS * 2 * WRITES_AFTER);
        match how {
            // Only requests that raced the withdrawal may complete Ok once
            // it started; later ones are refused.
            Withdraw::Revoke(RevokeMode::Invalidate) | Withdraw::Deregister => {
                assert!(t.ok_after < t.after)
            }
            // The device sees no error: writes land in scratch, or in the
            // new pages.
            _ => assert_eq!(t.ok_after, t.after),
        }
        if how == Withdraw::InvalidatePages {
            // The device re-faulted to the new pages and wrote them.
            assert_eq!(t.new_pages_written, ROUNDS * STREAM_PAGES);
        } else {
            assert_eq!(t.new_pages_written, 0);
        }
    }
}

#[test]
fn withdrawal_under_traffic_negative_control_detects_late_writes() {
    for how in ALL_WITHDRAWALS {
        let t = withdraw_under_traffic(how, false);
        assert!(
            t.changed_pages > 0,
            "{how:?}: with protection off the test saw no late write"
        );
    }
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn drop_completes_every_accepted_request_and_stops_the_workers() {
    let pool = pool(8 << 20);
    let dev = SoftDevice::new(Arc::clone(&pool)).unwrap();
    // A thread names itself once it runs: wait (boundedly) for that.
    let named = || {
        thread_names()
            .iter()
            .filter(|n| n.starts_with("pinfs-soft-"))
            .count()
    };
    for _ in 0..2000 {
        if named() >= WORKERS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(named() >= WORKERS, "{:?}", thread_names());
    let pages: Vec<u64> = (0..256).map(|i| (512 + i) * P).collect();
    let a = dev
        .register(Backing::Pinned(pages), RevokeMode::Invalidate)
        .unwrap();
    let qp = dev.queue_pair();
    let data: Arc<[u8]> = vec![3u8; 256 * P as usize].into();
    for i in 0..32 {
        qp.post_send(WorkRequest::Write {
            wr_id: i,
            key: a.lkey,
            iova: a.iova,
            data: Arc::clone(&data),
        })
        .unwrap();
    }
    // Dropped with requests queued: the workers drain the queue first.
    drop(dev);
    let mut got = Vec::new();
    while qp.outstanding() > 0 {
        got.extend(qp.poll_cq(64));
    }
    assert_eq!(got.len(), 32);
    assert!(got.iter().all(|w| w.status == Completion::Ok));
    assert_eq!(page_bytes(&pool, 512 * P), vec![3u8; P as usize]);
    assert_eq!(
        qp.post_send(WorkRequest::Read {
            wr_id: 0,
            key: a.lkey,
            iova: a.iova,
            len: 1,
        })
        .unwrap_err()
        .errno(),
        Errno::ENODEV
    );
}
