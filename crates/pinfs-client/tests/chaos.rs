//! Many client processes at once (issue 10): 64 processes take and break
//! layout leases, take unbreakable leases and pin, unpin, write, truncate
//! and punch on four shared files through one daemon; some ignore breaks
//! (and are fenced: killed at lease-break-time), others are killed with
//! SIGKILL at random moments. Afterwards no lease, pin, handle or busy
//! block remains, the daemon still serves, and fsck of the stopped pool is
//! clean. Prints its seed (`PINFS_SEED` replays one) and the counts. The
//! negative control runs clients the same way with the daemon's cleanup of
//! dead clients switched off, and the same check finds what they left.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use pinfs::fs::TruncatePolicy;
use pinfs_server::Fence;
use support::{wait_until, Daemon};

const CLIENTS: usize = 64;
const OPS_PER_CLIENT: u64 = 150;

#[test]
fn sixty_four_clients_killed_at_random_leave_nothing_behind() {
    let seed: u64 = std::env::var("PINFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("seed {seed} (replay with PINFS_SEED={seed})");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let d = Daemon::start(
        TruncatePolicy::Defer,
        Duration::from_millis(500),
        Fence::Kill,
    );
    let mut procs = Vec::new();
    let mut ignoring = Vec::new();
    for i in 0..CLIENTS {
        let s = next();
        if i % 16 == 15 {
            // Ignores every break; ends holding a layout lease it will not
            // give up.
            let cmd = format!("chaos {s} {OPS_PER_CLIENT} ignore");
            ignoring.push(d.spawn(&[&cmd, "open /c0", "layout", "ready", "sleep 60000"]));
        } else {
            procs.push(d.spawn(&[&format!("chaos {s} {OPS_PER_CLIENT}")]));
        }
    }
    // Kill some of them at random moments.
    let start = Instant::now();
    let mut killed_by_test = 0;
    for _ in 0..CLIENTS / 4 {
        std::thread::sleep(Duration::from_millis(next() % 40));
        let i = (next() % procs.len() as u64) as usize;
        if procs[i].child.try_wait().unwrap().is_none() && procs[i].child.kill().is_ok() {
            killed_by_test += 1;
        }
    }
    let (mut done, mut sigkilled, mut other) = (0, 0, 0);
    for p in &mut procs {
        match p.wait_exit(Duration::from_secs(120)) {
            Some(st) if st.success() => done += 1,
            Some(st) if st.signal() == Some(libc::SIGKILL) => sigkilled += 1,
            Some(st) => {
                other += 1;
                println!("client {} exited {st:?}: {:?}", p.pid(), p.seen);
            }
            None => panic!("client {} did not finish", p.pid()),
        }
    }
    // The clients that ignore breaks hold a layout lease on /c0: a
    // truncate breaks it, and at lease-break-time they are fenced.
    let c = d.client();
    // (One may already have been fenced during its random run.)
    for p in &mut ignoring {
        p.expect_or_exit("ready");
    }
    c.truncate_path("/c0", 0).unwrap();
    let mut fenced = 0;
    for p in &mut ignoring {
        match p.wait_exit(Duration::from_secs(20)) {
            Some(st) if st.signal() == Some(libc::SIGKILL) => fenced += 1,
            st => panic!("client {} ignoring breaks was not fenced: {st:?}", p.pid()),
        }
    }
    println!(
        "clients {CLIENTS}: finished {done}, killed by the test {sigkilled} (of {killed_by_test} kills), fenced {fenced}, failed {other}, in {:?}",
        start.elapsed()
    );
    assert_eq!(other, 0, "a client lost its connection or failed");
    assert!(
        wait_until(|| {
            let s = c.status().unwrap();
            s.clients.len() == 1 && s.leases.is_empty() && s.pins.is_empty()
        }),
        "left behind: {:?}",
        c.status().unwrap()
    );
    let s = c.status().unwrap();
    assert!(s.busy_extents.is_empty(), "busy: {:?}", s.busy_extents);
    assert_eq!(s.statfs.busy, 0);
    for i in 0..4 {
        let _ = c.truncate_path(&format!("/c{i}"), 0);
    }
    drop(c);
    d.stop_and_fsck();
}

#[test]
fn negative_control_without_cleanup_the_dead_leave_state_behind() {
    let d = Daemon::start_with(
        TruncatePolicy::Defer,
        Duration::from_millis(500),
        Fence::Kill,
        |s| s.disable_cleanup_for_tests(),
    );
    let mut procs: Vec<_> = (0..8u64)
        .map(|i| {
            let path = format!("/n{i}");
            d.spawn(&[
                &format!("chaos {} 50", 0x9e37_79b9 * (i + 1)),
                &format!("open {path}"),
                "write 0 65536",
                "exclusive 0 65536",
                "pin 0 65536",
                "ready",
                "hold",
            ])
        })
        .collect();
    for p in &mut procs {
        p.expect_or_exit("ready");
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    let c = d.client();
    // Every dead client's connection is seen gone.
    assert!(wait_until(|| c
        .status()
        .unwrap()
        .clients
        .iter()
        .filter(|cl| cl.disconnected)
        .count()
        == procs.len()));
    let s = c.status().unwrap();
    let left = s.clients.iter().filter(|cl| cl.disconnected).count();
    println!(
        "without cleanup: {left} dead clients listed, {} leases, {} pins, {} busy blocks",
        s.leases.len(),
        s.pins.len(),
        s.statfs.busy
    );
    // The check of the real test ("only the fresh client is left, no lease,
    // no pin") fails here.
    assert!(!(s.clients.len() == 1 && s.leases.is_empty() && s.pins.is_empty()));
    assert!(left > 0 && !s.leases.is_empty() && !s.pins.is_empty());
}
