//! `pinfs bench map`: the cost of layout changes over long-term-pinned files.
//!
//! What is measured, in one run:
//!
//! - A truncate of a 1 GiB file carrying 0, 1,000 and 10,000 long-term pins
//!   (one block each, spread evenly) under the `defer` policy: the truncate
//!   completes at once and the pinned blocks go to the busy-extent list. The
//!   baseline is the same truncate with no pins.
//! - Scaling: a truncate that removes only the last 1/64 of the file, while
//!   the file carries 1,000 or 10,000 pins in all (so about 16 or 156 in the
//!   removed range). The target is a cost proportional to the pins in the
//!   truncated range, not to all pins: with 10× the pins in the file but the
//!   same removed range, the time should grow by the pins in that range only.
//!
//! Pins are taken as a device owner would take them (under an unbreakable
//! layout lease, SPEC §4.2), then the lease is released so that another
//! owner's truncate reaches the pinned blocks and meets the policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pinfs::fs::{Cred, FallocMode, Fs, MountOptions, OpenFlags, Pin, TruncatePolicy};
use pinfs::lease::{LeaseRequest, OwnerId};
use pinfs::media::{MappedPool, Media};

const FILE_BYTES: u64 = 1 << 30;
const BLOCK: u64 = 4096;
const DEVICE: Cred = Cred {
    uid: 0,
    gid: 0,
    owner: 1,
};
const TRUNCATOR: Cred = Cred {
    uid: 0,
    gid: 0,
    owner: 2,
};

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

/// `pinfs bench map`.
pub fn run(quick: bool) -> Result<()> {
    let media: Arc<dyn Media> =
        Arc::new(MappedPool::memfd(FILE_BYTES + (512 << 20)).context("memfd pool")?);
    Fs::mkfs(&*media)?;
    let fs = Fs::mount_with(
        media,
        MountOptions {
            break_time: Duration::from_secs(45),
            policy: TruncatePolicy::Defer,
        },
    )?;
    let rounds = if quick { 1 } else { 5 };
    println!(
        "pinfs bench map: truncate of a {} MiB file carrying long-term pins (one 4 KiB block each, evenly spread), policy defer, memfd pool; median of {rounds} round(s)",
        FILE_BYTES >> 20
    );
    println!();
    println!(
        "{:<34} {:>10} {:>12} {:>10} {:>8}",
        "truncate", "pins", "time", "busy", "ratio"
    );
    let (base, _) = measure(&fs, 0, 0, rounds)?;
    println!(
        "{:<34} {:>10} {:>10.2}ms {:>10} {:>8}",
        "whole file (baseline: no pins)",
        0,
        ms(base),
        0,
        "1.00x"
    );
    for pins in [1_000u64, 10_000] {
        let (t, busy) = measure(&fs, pins, 0, rounds)?;
        println!(
            "{:<34} {:>10} {:>10.2}ms {:>10} {:>7.2}x",
            "whole file",
            pins,
            ms(t),
            busy,
            ratio(t, base)
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
    println!(
        "marginal cost per pin in the truncated range: {:.2} us; target: proportional to the pins in the truncated range, not to all pins",
        (t2.as_secs_f64() - t1.as_secs_f64()).max(0.0) * 1e6 / extra_pins
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
