//! The fault service never lets one mapping's faults stall every other
//! mapping's, and never leaves a fault hanging:
//!
//! (a) a write fault of mapping A that waits in a lease break (another actor
//!     holds a shared layout lease on A's file and never answers) does not
//!     stop a read and a write fault of mapping B (another file);
//! (b) a lease break callback that reads a hole of another mapping does not
//!     deadlock;
//! (c) when the service fails (injected), later and pending faults raise
//!     `SIGBUS` instead of hanging;
//! (d) two mappings' write faults dispatched back to back while one worker
//!     idles each get a worker (the first blocks in a break);
//! (e) with lease-break-time 0, more mappings than the old fixed pool of
//!     eight workers blocked in breaks of one holder's leases stall neither
//!     another mapping's faults nor the holder's own store into a hole of
//!     its mapping, which it makes before releasing.
//!
//! Negative controls for (d) and (e): the old dispatch rule (an idle worker
//! counted for every fault, woken or not) and the old fixed pool of eight
//! workers stall the fault that must complete.
//!
//! Negative controls for (a) and (b): with the fault service forced into
//! the old single-thread design, B's faults stall (seen as a timeout of the
//! child's wait, not as a timing measurement). Every scenario runs in a
//! forked child (`in_child`), so a hang ends as a failure, never as a stuck
//! test.

mod map_support;

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use map_support::*;
use pinfs::fs::{Cred, FallocMode, Fs, Handle, OpenFlags};
use pinfs::lease::{EventKind, LeaseState, OwnerId};
use pinfs::map::{MapFlags, Mapping};

/// Lease-break-time: longer than any child lives (`in_child` alarms at 30 s),
/// so a break that nobody answers blocks for the whole scenario.
const NEVER: Duration = Duration::from_secs(45);
/// How long a child waits for B's faults before calling them stalled when
/// they must complete (generous: only a hang exceeds it).
const COMPLETES_WITHIN: Duration = Duration::from_secs(20);
/// How long a negative control waits to see B stall (it stalls for good).
const STALL_SEEN_AFTER: Duration = Duration::from_secs(2);
/// The lease holder's actor.
const LEASE_OWNER: u64 = 3;

/// Exit codes of the scenarios.
const DONE: i32 = 0;
const STALLED: i32 = 1;

struct Setup {
    fs: Arc<Fs>,
    a: Handle,
    b: Handle,
    ma: Arc<Mapping>,
    mb: Arc<Mapping>,
    /// The other actor's `MAP_DIRECT` mapping of /a: its shared layout lease.
    direct: Mapping,
}

/// Files /a and /b (4 pages, holes at pages 1 and 2), a shared mapping of
/// each, and a shared layout lease on /a held by another actor.
fn setup(single_threaded: bool) -> Setup {
    let fs = mount(NEVER);
    if single_threaded {
        fs.single_threaded_fault_service_for_tests().unwrap();
    }
    let a = file(&fs, "/a", 4 * PAGE, 1);
    let b = file(&fs, "/b", 4 * PAGE, 2);
    for h in [&a, &b] {
        h.fallocate(FallocMode::PunchHole, PAGE, 2 * PAGE).unwrap();
    }
    let ma = Arc::new(a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap());
    let mb = Arc::new(b.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap());
    let holder = fs
        .open(Cred::root_as(LEASE_OWNER), "/a", OpenFlags::RDWR, 0)
        .unwrap();
    let direct = holder.mmap(0, 4 * PAGE, MapFlags::DIRECT).unwrap();
    Setup {
        fs,
        a,
        b,
        ma,
        mb,
        direct,
    }
}

/// Store into A's hole on another thread: the write fault breaks the other
/// actor's lease and waits. Returns once the lease is being broken.
fn blocked_store_into_a(s: &Setup) -> thread::JoinHandle<()> {
    let ma = s.ma.clone();
    let t = thread::spawn(move || store(&ma, PAGE, 9));
    let deadline = Instant::now() + COMPLETES_WITHIN;
    while !s
        .fs
        .leases()
        .list()
        .iter()
        .any(|l| l.state == LeaseState::Breaking)
    {
        assert!(
            Instant::now() < deadline,
            "the write fault never broke the lease"
        );
        thread::sleep(Duration::from_millis(5));
    }
    t
}

/// (a): while A's write fault waits in the break, B's read and write faults.
fn other_mapping_progresses(single_threaded: bool, wait: Duration) -> i32 {
    let s = setup(single_threaded);
    let t = blocked_store_into_a(&s);
    let (tx, rx) = mpsc::channel();
    let mb = s.mb.clone();
    thread::spawn(move || {
        let read = load(&mb, PAGE);
        store(&mb, 2 * PAGE + 1, 7);
        let _ = tx.send(read);
    });
    match rx.recv_timeout(wait) {
        Ok(0) => {}
        Ok(_) => return 10,
        Err(_) => return STALLED,
    }
    expect!(contents(&s.b, 2 * PAGE, 2) == [0, 7], 11);
    // Releasing the lease lets A's store finish.
    drop(s.direct);
    expect!(t.join().is_ok(), 12);
    expect!(contents(&s.a, PAGE, 1) == [9], 13);
    DONE
}

#[test]
fn a_write_fault_blocked_in_a_lease_break_stalls_only_its_own_mapping() {
    assert_eq!(
        in_child(|| other_mapping_progresses(false, COMPLETES_WITHIN)),
        Ending::Exited(DONE)
    );
}

#[test]
fn negative_control_one_thread_for_all_faults_stalls_every_mapping() {
    assert_eq!(
        in_child(|| other_mapping_progresses(true, STALL_SEEN_AFTER)),
        Ending::Exited(STALLED)
    );
}

/// (b): the lease holder's break callback reads a hole of mapping B.
fn callback_reads_a_hole(single_threaded: bool, wait: Duration) -> i32 {
    let s = setup(single_threaded);
    let (tx, rx) = mpsc::channel();
    let tx = parking_lot::Mutex::new(tx);
    let mb = s.mb.clone();
    s.fs.leases()
        .set_owner_callback(
            OwnerId(LEASE_OWNER),
            Some(Arc::new(move |ev: &pinfs::lease::BreakEvent| {
                if ev.kind == EventKind::Break {
                    let _ = tx.lock().send(load(&mb, PAGE));
                }
            })),
        )
        .unwrap();
    let ma = s.ma.clone();
    let t = thread::spawn(move || store(&ma, PAGE, 9));
    match rx.recv_timeout(wait) {
        Ok(0) => {}
        Ok(_) => return 10,
        Err(_) => return STALLED,
    }
    drop(s.direct);
    expect!(t.join().is_ok(), 11);
    expect!(contents(&s.a, PAGE, 1) == [9], 12);
    DONE
}

#[test]
fn a_lease_break_callback_reading_a_hole_does_not_deadlock() {
    assert_eq!(
        in_child(|| callback_reads_a_hole(false, COMPLETES_WITHIN)),
        Ending::Exited(DONE)
    );
}

#[test]
fn negative_control_one_thread_for_all_faults_deadlocks_the_callback() {
    assert_eq!(
        in_child(|| callback_reads_a_hole(true, STALL_SEEN_AFTER)),
        Ending::Exited(STALLED)
    );
}

#[test]
fn a_lost_fault_service_turns_later_faults_into_sigbus() {
    let scenario = |fail: bool| {
        move || {
            let fs = mount(NEVER);
            let a = file(&fs, "/a", 4 * PAGE, 1);
            a.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
            let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
            expect!(load(&m, 0) == 1, 10);
            if fail {
                fs.fail_fault_service_for_tests().unwrap();
            }
            // A hole: answered by the service, or SIGBUS once it is lost.
            expect!(load(&m, PAGE) == 0, 11);
            0
        }
    };
    assert_eq!(in_child(scenario(false)), CLEAN);
    assert_eq!(in_child(scenario(true)), SIGBUS);
}

#[test]
fn a_lost_fault_service_turns_pending_faults_into_sigbus() {
    // A's store waits in the lease break; then the service fails (or, the
    // control, the lease is released and the store completes).
    let scenario = |fail: bool| {
        move || {
            let s = setup(false);
            let t = blocked_store_into_a(&s);
            if fail {
                s.fs.fail_fault_service_for_tests().unwrap();
                // The waiting store is woken into a SIGBUS page.
                thread::sleep(COMPLETES_WITHIN);
                return STALLED;
            }
            drop(s.direct);
            expect!(t.join().is_ok(), 10);
            expect!(contents(&s.a, PAGE, 1) == [9], 11);
            DONE
        }
    };
    assert_eq!(in_child(scenario(false)), Ending::Exited(DONE));
    assert_eq!(in_child(scenario(true)), SIGBUS);
}

/// Waits until at least `n` leases are being broken.
fn wait_breaking(fs: &Fs, n: usize) {
    let deadline = Instant::now() + COMPLETES_WITHIN;
    while fs
        .leases()
        .list()
        .iter()
        .filter(|l| l.state == LeaseState::Breaking)
        .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "the write faults never broke {n} leases"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A pause that lets a storing thread reach its fault (ordering only: if
/// it is too short the scenario tests less, it never fails wrongly).
const SETTLE: Duration = Duration::from_millis(300);

/// (d) A burst: with one worker idle, A's and B's write faults are
/// dispatched back to back (the service is paused while both threads
/// fault); A's blocks in the lease break, B's must still complete. The old
/// dispatch counted the idle worker for both and started none for B.
fn burst(old_rule: bool, wait: Duration) -> i32 {
    let s = setup(false);
    if old_rule {
        s.fs.uncounted_fault_wakeups_for_tests().unwrap();
    }
    // Warm up: a write fault of B leaves one worker idle.
    store(&s.mb, PAGE, 3);
    s.fs.pause_fault_service_for_tests(true).unwrap();
    let ma = s.ma.clone();
    let ta = thread::spawn(move || store(&ma, PAGE, 9));
    thread::sleep(SETTLE);
    let (tx, rx) = mpsc::channel();
    let mb = s.mb.clone();
    thread::spawn(move || {
        store(&mb, 2 * PAGE, 7);
        let _ = tx.send(());
    });
    thread::sleep(SETTLE);
    s.fs.pause_fault_service_for_tests(false).unwrap();
    if rx.recv_timeout(wait).is_err() {
        return STALLED;
    }
    expect!(
        contents(&s.b, PAGE, PAGE as usize + 1)[..] == {
            let mut v = vec![3u8];
            v.resize(PAGE as usize, 0);
            v.push(7);
            v
        }[..],
        10
    );
    drop(s.direct);
    expect!(ta.join().is_ok(), 11);
    expect!(contents(&s.a, PAGE, 1) == [9], 12);
    DONE
}

#[test]
fn back_to_back_faults_of_two_mappings_do_not_share_a_blocked_worker() {
    assert_eq!(
        in_child(|| burst(false, COMPLETES_WITHIN)),
        Ending::Exited(DONE)
    );
}

#[test]
fn negative_control_uncounted_wake_ups_leave_the_second_fault_waiting() {
    assert_eq!(
        in_child(|| burst(true, STALL_SEEN_AFTER)),
        Ending::Exited(STALLED)
    );
}

/// More mappings than the old fixed pool of workers (eight).
const BLOCKED: usize = 9;

/// (e) Worker exhaustion, lease-break-time 0 (breakers wait for ever):
/// `BLOCKED` mappings' write faults wait in breaks of leases that actor H
/// holds; then another mapping's read and write faults, and H's own store
/// into a hole of its own mapping — which H makes before releasing its
/// leases — must complete. With a fixed pool of eight workers, all eight
/// wait on H and H's fault waits for a worker: a deadlock for good.
fn exhaustion(cap: Option<usize>, wait: Duration) -> i32 {
    let fs = mount(Duration::ZERO);
    if cap.is_some() {
        fs.cap_fault_workers_for_tests(cap).unwrap();
    }
    let h_cred = Cred::root_as(LEASE_OWNER);
    let mut maps = Vec::new();
    let mut directs = Vec::new();
    let mut handles = Vec::new();
    for i in 0..BLOCKED {
        let path = format!("/f{i}");
        let f = file(&fs, &path, 4 * PAGE, 1);
        f.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
        maps.push(Arc::new(f.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap()));
        let hf = fs.open(h_cred, &path, OpenFlags::RDWR, 0).unwrap();
        directs.push(hf.mmap(0, 4 * PAGE, MapFlags::DIRECT).unwrap());
        handles.push(f);
    }
    let b = file(&fs, "/b", 4 * PAGE, 2);
    b.fallocate(FallocMode::PunchHole, PAGE, 2 * PAGE).unwrap();
    let mb = Arc::new(b.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap());
    drop(fs.open(h_cred, "/h", OpenFlags::CREATE, 0o644).unwrap());
    let h = fs.open(h_cred, "/h", OpenFlags::RDWR, 0).unwrap();
    h.pwrite(0, &[4u8; 4 * PAGE as usize]).unwrap();
    h.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
    let mh = Arc::new(h.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap());

    let stores: Vec<_> = maps
        .iter()
        .map(|m| {
            let m = m.clone();
            thread::spawn(move || store(&m, PAGE, 9))
        })
        .collect();
    wait_breaking(&fs, cap.unwrap_or(BLOCKED).min(BLOCKED));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let read = load(&mb, PAGE);
        store(&mb, 2 * PAGE + 1, 7);
        // H, notified, stores into its own hole before it releases.
        store(&mh, PAGE, 5);
        let _ = tx.send(read);
    });
    match rx.recv_timeout(wait) {
        Ok(0) => {}
        Ok(_) => return 10,
        Err(_) => return STALLED,
    }
    expect!(contents(&b, 2 * PAGE, 2) == [0, 7], 11);
    expect!(contents(&h, PAGE, 1) == [5], 12);
    // H releases: every blocked store completes.
    drop(directs);
    for t in stores {
        expect!(t.join().is_ok(), 13);
    }
    for f in &handles {
        expect!(contents(f, PAGE, 1) == [9], 14);
    }
    DONE
}

#[test]
fn more_than_eight_mappings_blocked_in_breaks_stall_no_other_mapping() {
    assert_eq!(
        in_child(|| exhaustion(None, COMPLETES_WITHIN)),
        Ending::Exited(DONE)
    );
}

#[test]
fn negative_control_a_fixed_pool_of_eight_workers_deadlocks() {
    assert_eq!(
        in_child(|| exhaustion(Some(8), STALL_SEEN_AFTER)),
        Ending::Exited(STALLED)
    );
}
