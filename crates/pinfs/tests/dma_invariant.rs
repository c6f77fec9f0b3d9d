//! SPEC §4.4 with device traffic: a device streams writes into a registered
//! file while another actor truncates and punches it and a third creates,
//! fills and deletes files with known contents. The checker verifies that
//! no file ever shows data it did not write — each filled file holds only
//! its own pattern, device bytes appear only in the registered file — and
//! that once a registration is revoked no device write lands anywhere in the
//! pool (`invalidate`: it fails; `redirect`: it lands in scratch). Every
//! truncate policy × every revocation mode, for every device the pool
//! allows. The negative control (pin protection and revocation switched
//! off) must detect corruption, for every device.

mod dma_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use dma_support::*;
use pinfs::dma::{Completion, Device, RevokeMode, PAGE_BYTES};
use pinfs::fs::{FallocMode, Fs, OpenFlags, TruncatePolicy};
use pinfs::media::Media;

/// The registered file's size.
const REG_BYTES: u64 = 32 * PAGE_BYTES;
/// Each filled file's size.
const FILL_BYTES: u64 = 8 * PAGE_BYTES;
/// Filled files alive at once (older ones are deleted, so blocks recycle).
const FILLS_LIVE: usize = 24;
/// Rounds (a registered file each) per configuration.
const ROUNDS: usize = 2;
const BREAK: Duration = Duration::from_millis(20);

const ORIGINAL: &[u8; 8] = b"ORIGINAL";
const DEVICE: &[u8; 8] = b"DEVICEWR";
const REVOKED: &[u8; 8] = b"REVOKED!";

fn pattern(magic: &[u8; 8], len: u64) -> Vec<u8> {
    magic.iter().copied().cycle().take(len as usize).collect()
}

fn fill_magic(k: u64) -> [u8; 8] {
    let mut m = *b"FILL0000";
    m[4..].copy_from_slice(format!("{:04}", k % 10_000).as_bytes());
    m
}

/// The devices to run with on a memfd pool.
fn devices(pool: &Arc<dyn Media>) -> Vec<Arc<dyn Device>> {
    vec![soft(pool), uring(pool)]
}

#[derive(Default, Debug)]
struct Counts {
    device_writes: AtomicU64,
    device_ok: AtomicU64,
    device_failed: AtomicU64,
    after_revoke: AtomicU64,
    layout_changes: AtomicU64,
    refused: AtomicU64,
    fills: AtomicU64,
    corrupt_bytes: AtomicU64,
}

/// Count bytes of `got` that are not `want`.
fn diff(got: &[u8], want: &[u8]) -> u64 {
    got.iter().zip(want).filter(|(a, b)| a != b).count() as u64
}

/// Bytes of the pool inside 8-byte words equal to `magic`.
fn scan_pool(pool: &Arc<dyn Media>, magic: &[u8; 8]) -> u64 {
    let mut found = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < pool.len_bytes() {
        let n = buf.len().min((pool.len_bytes() - at) as usize);
        pool.read(at, &mut buf[..n]).unwrap();
        found += buf[..n].chunks_exact(8).filter(|w| *w == magic).count() as u64 * 8;
        at += n as u64;
    }
    found
}

/// One configuration; returns the counts.
fn run(
    policy: TruncatePolicy,
    mode: RevokeMode,
    device_index: usize,
    control: bool,
) -> Arc<Counts> {
    let (fs, pool) = mount(policy, BREAK);
    if control {
        fs.disable_pin_protection_for_tests();
        fs.disable_dma_revocation_for_tests();
    }
    let device = devices(&pool).swap_remove(device_index);
    let counts = Arc::new(Counts::default());
    let stop_fill = Arc::new(AtomicBool::new(false));
    // The filler: creates, fills, verifies and deletes files all along.
    let filler = {
        let (fs, counts, stop) = (fs.clone(), counts.clone(), stop_fill.clone());
        thread::spawn(move || {
            let mut live: std::collections::VecDeque<u64> = Default::default();
            let mut k = 0u64;
            let check = |fs: &Arc<Fs>, k: u64| {
                let h = fs
                    .open(OTHER, &format!("/fill{k}"), OpenFlags::RDWR, 0)
                    .unwrap();
                let mut got = vec![0u8; FILL_BYTES as usize];
                h.pread(0, &mut got).unwrap();
                counts.corrupt_bytes.fetch_add(
                    diff(&got, &pattern(&fill_magic(k), FILL_BYTES)),
                    Ordering::Relaxed,
                );
            };
            while !stop.load(Ordering::Acquire) {
                let h = file(&fs, OTHER, &format!("/fill{k}"), 0, 0);
                h.pwrite(0, &pattern(&fill_magic(k), FILL_BYTES)).unwrap();
                counts.fills.fetch_add(1, Ordering::Relaxed);
                live.push_back(k);
                k += 1;
                for &old in live.iter().step_by(5) {
                    check(&fs, old);
                }
                if live.len() > FILLS_LIVE {
                    let old = live.pop_front().unwrap();
                    check(&fs, old);
                    fs.unlink(OTHER, &format!("/fill{old}")).unwrap();
                }
            }
            for old in live {
                check(&fs, old);
            }
        })
    };
    for round in 0..ROUNDS {
        let path = format!("/reg{round}");
        let h = file(&fs, OWNER, &path, 0, 0);
        h.pwrite(0, &pattern(ORIGINAL, REG_BYTES)).unwrap();
        let m = if mode == RevokeMode::Odp {
            map_shared(&h, REG_BYTES)
        } else {
            map_direct(&h, REG_BYTES)
        };
        let reg = Arc::new(m.register(device.clone(), 0, REG_BYTES, mode).unwrap());
        let stop_dev = Arc::new(AtomicBool::new(false));
        // The device: streams writes, until stopped; once the registration
        // is revoked, with a pattern that must never land anywhere.
        let dev = {
            let (reg, counts, stop) = (reg.clone(), counts.clone(), stop_dev.clone());
            thread::spawn(move || {
                let (dev_pat, rev_pat) =
                    (pattern(DEVICE, PAGE_BYTES), pattern(REVOKED, PAGE_BYTES));
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let revoked = reg.is_revoked();
                    let data = if revoked { &rev_pat } else { &dev_pat };
                    let at = (i * 7 % (REG_BYTES / PAGE_BYTES)) * PAGE_BYTES;
                    let c = reg.write(at, data).unwrap();
                    counts.device_writes.fetch_add(1, Ordering::Relaxed);
                    if revoked {
                        counts.after_revoke.fetch_add(1, Ordering::Relaxed);
                    }
                    match c {
                        Completion::Ok => counts.device_ok.fetch_add(1, Ordering::Relaxed),
                        _ => counts.device_failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            })
        };
        // Another actor changes the layout under the device.
        let other = fs.open(OTHER, &path, OpenFlags::RDWR, 0).unwrap();
        let steps: [&dyn Fn() -> pinfs::Result<()>; 4] = [
            &|| other.fallocate(FallocMode::PunchHole, 4 * PAGE_BYTES, 4 * PAGE_BYTES),
            &|| other.truncate(REG_BYTES / 2),
            &|| other.truncate(REG_BYTES),
            &|| other.truncate(0),
        ];
        for step in steps {
            thread::sleep(Duration::from_millis(2));
            match step() {
                Ok(()) => counts.layout_changes.fetch_add(1, Ordering::Relaxed),
                Err(e) if e.errno() == pinfs::Errno::ETXTBSY => {
                    counts.refused.fetch_add(1, Ordering::Relaxed)
                }
                Err(e) => panic!("{policy} {mode}: layout change failed: {e}"),
            };
        }
        thread::sleep(Duration::from_millis(5));
        stop_dev.store(true, Ordering::Release);
        dev.join().unwrap();
        // What the registered file shows: its own bytes, the device's, zeros.
        let size = h.stat().unwrap().size;
        let mut got = vec![0u8; size as usize];
        h.pread(0, &mut got).unwrap();
        for w in got.chunks(8) {
            if w != ORIGINAL && w != DEVICE && w.iter().any(|&b| b != 0) {
                counts.corrupt_bytes.fetch_add(8, Ordering::Relaxed);
            }
        }
        drop(reg);
        drop(m);
    }
    stop_fill.store(true, Ordering::Release);
    filler.join().unwrap();
    // After revocation no device write landed anywhere in the pool.
    let landed = scan_pool(&pool, REVOKED);
    counts.corrupt_bytes.fetch_add(landed, Ordering::Relaxed);
    counts
}

fn report(what: &str, c: &Counts) {
    println!(
        "{what}: device writes {} (ok {}, failed {}, after revocation {}), layout changes {} (refused {}), files filled {}, corrupt bytes {}",
        c.device_writes.load(Ordering::Relaxed),
        c.device_ok.load(Ordering::Relaxed),
        c.device_failed.load(Ordering::Relaxed),
        c.after_revoke.load(Ordering::Relaxed),
        c.layout_changes.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.fills.load(Ordering::Relaxed),
        c.corrupt_bytes.load(Ordering::Relaxed),
    );
}

/// Each device's name and what it can do.
fn device_names() -> Vec<(&'static str, pinfs::dma::DeviceCaps)> {
    let (_fs, pool) = mount(TruncatePolicy::Defer, BREAK);
    devices(&pool)
        .iter()
        .map(|d| (d.name(), d.caps()))
        .collect()
}

#[test]
fn no_block_a_device_reaches_is_given_to_another_file() {
    for (d, (name, caps)) in device_names().into_iter().enumerate() {
        for policy in [
            TruncatePolicy::Fail,
            TruncatePolicy::Wait,
            TruncatePolicy::Defer,
            TruncatePolicy::Revoke,
        ] {
            for mode in [
                RevokeMode::Invalidate,
                RevokeMode::Redirect,
                RevokeMode::Odp,
            ] {
                if !caps.supports(mode) {
                    continue;
                }
                let c = run(policy, mode, d, false);
                report(&format!("{name} {policy} {mode}"), &c);
                assert_eq!(
                    c.corrupt_bytes.load(Ordering::Relaxed),
                    0,
                    "{name} {policy} {mode}"
                );
                assert!(c.device_writes.load(Ordering::Relaxed) > 0);
            }
        }
    }
}

/// The control: with pin protection and revocation off, the same test sees
/// device writes in other files.
#[test]
fn control_without_protection_corruption_is_detected() {
    for (d, (name, caps)) in device_names().into_iter().enumerate() {
        for mode in [
            RevokeMode::Invalidate,
            RevokeMode::Redirect,
            RevokeMode::Odp,
        ] {
            if !caps.supports(mode) {
                continue;
            }
            let mut corrupt = 0;
            // The race may need a few tries to land a write in a reused block.
            for _ in 0..5 {
                let c = run(TruncatePolicy::Revoke, mode, d, true);
                report(&format!("control {name} revoke {mode}"), &c);
                corrupt = c.corrupt_bytes.load(Ordering::Relaxed);
                if corrupt > 0 {
                    break;
                }
            }
            assert!(corrupt > 0, "control {name} {mode}: must detect corruption");
        }
    }
}
