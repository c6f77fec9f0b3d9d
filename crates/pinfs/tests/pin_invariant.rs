//! The invariant of SPEC §4.4 under concurrency: a block that a pin can
//! still reach is never given to another file, and no file shows data it did
//! not write — for every truncate policy.
//!
//! "Devices" are threads that take the pool addresses of their pinned ranges
//! once and keep storing their tag into them, never consulting the file
//! system again (as DMA does). Meanwhile other threads truncate and punch the
//! pinned files and create, fill and verify files of their own. A checker
//! reads every file of its own: a device tag in one of them is corruption.
//! With the protection switched off (the test-only switch), the same run must
//! detect corruption — the negative control showing the test can fail.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pinfs::fs::{Cred, FallocMode, Fs, MountOptions, OpenFlags, Pin, TruncatePolicy};
use pinfs::lease::{LeaseRequest, OwnerId};
use pinfs::media::{MappedPool, Media};
use pinfs::pin::RevokeFn;
use pinfs::Errno;

const DEVICES: usize = 3;
const PINNED: u64 = 256 << 10;
/// Device tags: 0xd0 + device index. Files of the churn threads write other bytes.
const TAG: u8 = 0xd0;
const DEVICE: Cred = Cred::root_as(100);

struct Device {
    stop: Arc<AtomicBool>,
    /// Raised by revocation; the device stops and acknowledges.
    revoked: Arc<AtomicBool>,
    acked: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
    pin: Option<Pin>,
}

/// Result of one run: corruptions seen, layout changes refused, busy blocks seen.
#[derive(Debug, Default)]
struct Outcome {
    corrupt: u64,
    refused: u64,
    max_busy: u64,
    stores: u64,
}

fn run(policy: TruncatePolicy, protected: bool, rounds: usize) -> Outcome {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(48 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount_with(
        media.clone(),
        MountOptions {
            break_time: Duration::from_millis(30),
            policy,
        },
    )
    .unwrap();
    if !protected {
        fs.disable_pin_protection_for_tests();
    }
    // Each device pins its own file under an unbreakable layout lease, then
    // gives the lease up: existing pins stay (SPEC §4.2), and other actors'
    // layout changes now reach the pinned blocks and meet the policy.
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        let path = format!("/dev{d}");
        let h = fs.open(DEVICE, &path, OpenFlags::CREATE, 0o644).unwrap();
        h.pwrite(0, &vec![1; PINNED as usize]).unwrap();
        let (file, handle, owner) = (h.lease_file(), h.lease_handle(), OwnerId(DEVICE.owner));
        fs.leases()
            .set_lease(
                file,
                handle,
                owner,
                LeaseRequest::layout_shared().unbreakable(),
            )
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let revoked = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicBool::new(false));
        let revoke: RevokeFn = {
            let (revoked, acked) = (revoked.clone(), acked.clone());
            Arc::new(move || {
                revoked.store(true, Ordering::SeqCst);
                while !acked.load(Ordering::SeqCst) {
                    thread::yield_now();
                }
                Ok(())
            })
        };
        let pin = h.pin_long_term(0, PINNED, Some(revoke)).unwrap();
        let ranges = pin.pool_ranges();
        fs.leases()
            .set_lease(file, handle, owner, LeaseRequest::layout_unlock())
            .unwrap();
        drop(h); // closing does not drop the pin either
        let thread = {
            let (stop, revoked, acked, media) =
                (stop.clone(), revoked.clone(), acked.clone(), media.clone());
            thread::spawn(move || {
                let tag = [TAG + d as u8; 512];
                let mut stores = 0u64;
                'dma: while !stop.load(Ordering::Relaxed) {
                    for &(off, len) in &ranges {
                        for at in (off..off + len).step_by(4096) {
                            if revoked.load(Ordering::SeqCst) {
                                acked.store(true, Ordering::SeqCst);
                                break 'dma;
                            }
                            media.write(at + (stores % 8) * 512, &tag).unwrap();
                            stores += 1;
                        }
                    }
                }
                acked.store(true, Ordering::SeqCst);
                stores
            })
        };
        devices.push(Device {
            stop,
            revoked,
            acked,
            thread: Some(thread),
            pin: Some(pin),
        });
    }

    let corrupt = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let max_busy = Arc::new(AtomicU64::new(0));
    // Layout changers: truncate and punch the pinned files, then grow them.
    let changer = {
        let (fs, refused, max_busy) = (fs.clone(), refused.clone(), max_busy.clone());
        thread::spawn(move || {
            let me = Cred::root_as(200);
            for round in 0..rounds {
                let path = format!("/dev{}", round % DEVICES);
                let h = fs.open(me, &path, OpenFlags::RDWR, 0).unwrap();
                let r = if round % 2 == 0 {
                    h.truncate(0)
                } else {
                    h.fallocate(FallocMode::PunchHole, 0, PINNED)
                };
                match r {
                    Ok(()) => {}
                    Err(e) if e.errno() == Errno::ETXTBSY => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("layout change failed: {e}"),
                }
                max_busy.fetch_max(fs.statfs().busy, Ordering::Relaxed);
                // Leave the freed blocks (if any) to the allocators for a
                // moment before the file takes blocks again.
                thread::sleep(Duration::from_millis(2));
                h.pwrite(0, &vec![2; PINNED as usize]).unwrap();
            }
        })
    };
    // Allocators: create files, fill them with their own byte, check every
    // file still holds only its own byte, unlink the oldest.
    let allocators: Vec<_> = (0..2)
        .map(|t| {
            let (fs, corrupt) = (fs.clone(), corrupt.clone());
            thread::spawn(move || {
                let me = Cred::root_as(300 + t);
                let mut live: Vec<(String, u8)> = Vec::new();
                for i in 0..rounds * 2 {
                    let byte = 0x10 + ((i + t as usize * 7) % 0x70) as u8;
                    let path = format!("/a{t}-{i}");
                    let h = fs.open(me, &path, OpenFlags::CREATE, 0o644).unwrap();
                    h.pwrite(0, &vec![byte; 96 << 10]).unwrap();
                    live.push((path, byte));
                    for (p, b) in &live {
                        let h = fs.open(me, p, OpenFlags::RDONLY, 0).unwrap();
                        let mut buf = vec![0u8; 96 << 10];
                        h.pread(0, &mut buf).unwrap();
                        let bad = buf.iter().filter(|&&x| x != *b).count() as u64;
                        corrupt.fetch_add(bad, Ordering::Relaxed);
                    }
                    if live.len() > 6 {
                        let (p, _) = live.remove(0);
                        fs.unlink(me, &p).unwrap();
                    }
                }
            })
        })
        .collect();
    changer.join().unwrap();
    for a in allocators {
        a.join().unwrap();
    }
    let mut stores = 0;
    for mut d in devices {
        d.stop.store(true, Ordering::Relaxed);
        stores += d.thread.take().unwrap().join().unwrap();
        let _ = (&d.revoked, &d.acked);
        drop(d.pin.take());
    }
    assert!(fs.check().is_empty(), "{:?}", fs.check());
    assert_eq!(fs.statfs().busy, 0, "the last unpin frees every busy block");
    Outcome {
        corrupt: corrupt.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        max_busy: max_busy.load(Ordering::Relaxed),
        stores,
    }
}

#[test]
fn defer_keeps_pinned_blocks_busy() {
    let o = run(TruncatePolicy::Defer, true, 40);
    println!("defer: {o:?}");
    assert!(o.stores > 0, "the devices stored");
    assert_eq!(o.corrupt, 0);
    assert_eq!(o.refused, 0, "defer completes at once");
    assert!(o.max_busy >= PINNED / 4096, "pinned blocks were held busy");
}

#[test]
fn fail_refuses_changes_over_pinned_blocks() {
    let o = run(TruncatePolicy::Fail, true, 20);
    println!("fail: {o:?}");
    assert_eq!(o.corrupt, 0);
    assert_eq!(o.refused, 20, "every change over pinned blocks fails");
}

#[test]
fn wait_times_out_while_pins_stay() {
    let o = run(TruncatePolicy::Wait, true, 10);
    println!("wait: {o:?}");
    assert_eq!(o.corrupt, 0);
    assert_eq!(o.refused, 10);
}

#[test]
fn revoke_stops_the_device_then_frees() {
    let o = run(TruncatePolicy::Revoke, true, 20);
    println!("revoke: {o:?}");
    assert_eq!(o.corrupt, 0);
    assert_eq!(o.refused, 0);
    assert_eq!(o.max_busy, 0, "revoked blocks are freed, not held busy");
}

/// Negative control: the same run without the protection corrupts other
/// files, and the checker sees it.
#[test]
fn without_protection_corruption_is_detected() {
    let o = run(TruncatePolicy::Defer, false, 40);
    println!("unprotected: {o:?}");
    assert!(o.stores > 0, "the devices stored");
    assert!(
        o.corrupt > 0,
        "the checker must see device stores in other files"
    );
}
