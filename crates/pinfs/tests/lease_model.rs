//! Model check of the lease break protocol (SPEC §3.3) under `shuttle`.
//!
//! Actors: a holder that takes a layout lease, waits for its break, "unmaps"
//! and releases, then asks again (so it re-requests while breaks are in
//! progress); two breakers changing overlapping ranges of the file. Time is
//! virtual: a breaker's wait may time out at any point the scheduler picks,
//! so both "the holder answers" and "break_time passes, the lease is revoked"
//! are explored. A second scenario does the same with an open write lease
//! and two opening breakers.
//!
//! Properties, checked in every explored schedule:
//! 1. A breaker never proceeds past an active conflicting lease: when it
//!    proceeds, every lease its holder still believes it has was revoked
//!    (the revoke hook ran) — ghost state kept outside the engine.
//! 2. No notification is lost: every lease that was revoked had been
//!    notified with a `Break` event; with `break_time` 0 a lost notification
//!    leaves holder and breaker waiting for each other, which shuttle
//!    reports as a deadlock.
//! 3. No deadlock (shuttle fails the schedule).
//! 4. Waits are bounded: with `break_time` > 0 no breaker waits longer than
//!    `break_time` of virtual time.
//!
//! Negative controls (STYLE 16): the same check against an engine with the
//! wait skipped, or with notifications dropped, must fail.
//!
//! A third scenario checks the one bound of SPEC §3.3.5: one operation
//! (a reflink: destination and source) breaks the layout leases of two
//! holders on two files, one after the other, with one deadline computed at
//! its start ([`LeaseEngine::break_deadline`], [`BreakOptions::until`]).
//! Whether the holders answer or not, and whenever the scheduler lets time
//! pass, the two breaks together wait at most `break_time`, and what is
//! left of the deadline for the pin wait that follows brings the whole
//! operation to at most `break_time` as well. Negative control: each break
//! with its own `break_time` (the defect) must be caught.
//!
//! Seeds: `PINFS_MODEL_SEED` (default fixed) and `PINFS_MODEL_ITERATIONS`
//! (default 4000 per scheduler and configuration) reproduce a run.
#![cfg(feature = "model-check")]

use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use pinfs::lease::{
    Access, BreakDeadline, BreakOptions, BreakReport, ByteRange, EventKind, Fault, FileKey,
    HandleId, LeaseEngine, LeaseId, LeaseInfo, LeaseRequest, OwnerId, QueueError,
};
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::sync::Mutex;
use shuttle::{Config, Runner};

const FILE: FileKey = FileKey(7);
const HOLDER: OwnerId = OwnerId(1);
const BREAKERS: [OwnerId; 2] = [OwnerId(2), OwnerId(3)];
const HOLDER_ROUNDS: usize = 2;
const BREAK_TIME: Duration = Duration::from_millis(100);

/// What the holder believes and what happened to its leases: kept outside
/// the engine, so the engine is not checked against itself.
#[derive(Default)]
struct Ghost {
    /// Leases the holder was granted and has not given up: it relies on
    /// them (its mappings and registrations exist).
    believed: HashSet<LeaseId>,
    /// Leases whose `Break` event reached the holder.
    notified: HashSet<LeaseId>,
    /// Layout leases the revoke hook ran for (their mappings are gone).
    revoked: HashSet<LeaseId>,
    /// Leases forcibly removed, as the holder's callback heard (`Lost`
    /// runs before any breaker proceeds).
    lost: HashSet<LeaseId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Layout lease vs. two layout changes.
    Layout,
    /// Open write lease vs. two writing opens.
    Open,
}

thread_local! {
    /// Executions run by this test's thread (shuttle runs every schedule on
    /// the thread that called it; tests run on threads of their own).
    static EXECUTIONS: Cell<usize> = const { Cell::new(0) };
    /// Executions in which a lease was forcibly broken at break_time.
    static FORCED: Cell<usize> = const { Cell::new(0) };
    /// Holder re-requests that met a break in progress (they waited, or
    /// were refused with EAGAIN for an open lease).
    static REREQUEST_DURING_BREAK: Cell<usize> = const { Cell::new(0) };
}

fn executions() -> usize {
    EXECUTIONS.with(Cell::get)
}

fn config() -> Config {
    let mut c = Config::new();
    c.stack_size = 1 << 20;
    c
}

fn seed() -> u64 {
    std::env::var("PINFS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1ea5e)
}

fn iterations() -> usize {
    std::env::var("PINFS_MODEL_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000)
}

/// One execution of the protocol.
fn protocol(scenario: Scenario, break_time: Duration, fault: Fault) {
    EXECUTIONS.with(|n| n.set(n.get() + 1));
    let engine = LeaseEngine::new_model(break_time);
    engine.inject_fault(fault);
    let ghost = Arc::new(Mutex::new(Ghost::default()));
    {
        let ghost = Arc::clone(&ghost);
        engine.set_revoke_hook(Some(Arc::new(move |info: &LeaseInfo| {
            ghost.lock().unwrap().revoked.insert(info.id);
        })));
    }
    {
        let ghost = Arc::clone(&ghost);
        engine
            .set_owner_callback(
                HOLDER,
                Some(Arc::new(move |ev: &pinfs::lease::BreakEvent| {
                    if ev.kind == EventKind::Lost {
                        ghost.lock().unwrap().lost.insert(ev.lease.id);
                    }
                })),
            )
            .unwrap();
    }
    let events = engine.owner_events(HOLDER).unwrap();
    let holder_handle = HandleId(1);
    if scenario == Scenario::Open {
        engine
            .opened(FILE, holder_handle, HOLDER, Access::ReadOnly)
            .unwrap();
    }

    let holder = {
        let (engine, ghost) = (engine.clone(), Arc::clone(&ghost));
        shuttle::thread::spawn(move || {
            for _ in 0..HOLDER_ROUNDS {
                let req = match scenario {
                    Scenario::Layout => LeaseRequest::layout_shared(),
                    Scenario::Open => LeaseRequest::write(),
                };
                // Re-requests come while breaks are in progress: a layout
                // request waits for the change, an open lease is refused
                // while an opener is being let in.
                // Ask without waiting first, to count the requests that
                // meet a break in progress; then ask for real.
                let first =
                    engine.set_lease(FILE, holder_handle, HOLDER, req.clone().nonblocking());
                if matches!(first, Err(pinfs::Errno::EWOULDBLOCK)) {
                    REREQUEST_DURING_BREAK.with(|n| n.set(n.get() + 1));
                }
                let result = match first {
                    Err(pinfs::Errno::EWOULDBLOCK) => {
                        engine.set_lease(FILE, holder_handle, HOLDER, req)
                    }
                    other => other,
                };
                let id = match result {
                    Ok(id) => id,
                    Err(pinfs::Errno::EAGAIN) => {
                        REREQUEST_DURING_BREAK.with(|n| n.set(n.get() + 1));
                        continue;
                    }
                    // The owner was dropped at the end: its handle is gone.
                    Err(pinfs::Errno::EBADF) => break,
                    Err(e) => panic!("unexpected refusal {e:?}"),
                };
                ghost.lock().unwrap().believed.insert(id);
                // Wait for this lease's break (or its loss).
                let lost = loop {
                    match events.recv() {
                        Ok(ev) => {
                            if ev.kind == EventKind::Break {
                                ghost.lock().unwrap().notified.insert(ev.lease.id);
                            }
                            if ev.lease.id == id {
                                break ev.kind == EventKind::Lost;
                            }
                        }
                        Err(QueueError::Closed) => break true,
                        Err(e) => panic!("holder queue: {e}"),
                    }
                };
                // Give up what the lease protected, then the lease.
                ghost.lock().unwrap().believed.remove(&id);
                if !lost {
                    let _ = engine.release(id);
                }
            }
            // Drain until the owner is dropped, recording notifications.
            loop {
                match events.recv() {
                    Ok(ev) if ev.kind == EventKind::Break => {
                        ghost.lock().unwrap().notified.insert(ev.lease.id);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    };

    let breakers: Vec<_> = BREAKERS
        .iter()
        .enumerate()
        .map(|(i, &me)| {
            let (engine, ghost) = (engine.clone(), Arc::clone(&ghost));
            shuttle::thread::spawn(move || {
                let report = BreakReport::new();
                let opts = BreakOptions::blocking().with_report(Arc::clone(&report));
                let guard = match scenario {
                    Scenario::Layout => {
                        // Overlapping ranges: [0, 4 KiB) and the whole file.
                        let range = if i == 0 {
                            ByteRange::new(0, 4096)
                        } else {
                            ByteRange::WHOLE
                        };
                        Some(engine.begin_layout_change(FILE, range, me, &opts).unwrap())
                    }
                    Scenario::Open => {
                        engine
                            .open(FILE, HandleId(10 + i as u64), me, Access::WriteOnly, &opts)
                            .unwrap();
                        None
                    }
                };
                let waited = report.waited();
                {
                    let g = ghost.lock().unwrap();
                    for id in &g.believed {
                        // A layout lease must have been revoked; an open
                        // lease at least taken away (it protects nothing
                        // the engine could revoke).
                        let gone = match scenario {
                            Scenario::Layout => g.revoked.contains(id),
                            Scenario::Open => g.lost.contains(id),
                        };
                        assert!(
                            gone,
                            "breaker {me:?} proceeded past the holder's active lease {id:?}"
                        );
                    }
                }
                if !break_time.is_zero() {
                    assert!(
                        waited <= break_time,
                        "breaker {me:?} waited {waited:?} > break_time {break_time:?}"
                    );
                }
                drop(guard);
                if scenario == Scenario::Open {
                    // The opener closes again, so that the holder may
                    // re-take its lease.
                    engine.closed(FILE, HandleId(10 + i as u64));
                }
            })
        })
        .collect();

    for b in breakers {
        b.join().unwrap();
    }
    engine.drop_owner(HOLDER);
    holder.join().unwrap();

    let g = ghost.lock().unwrap();
    if !g.lost.is_empty() {
        FORCED.with(|n| n.set(n.get() + 1));
    }
    for id in g.revoked.iter().chain(&g.lost) {
        assert!(
            g.notified.contains(id),
            "lease {id:?} was revoked but its holder was never notified"
        );
    }
}

/// Runs the protocol under the random and the PCT scheduler for each
/// break_time; returns the number of executions.
fn check(scenario: Scenario, fault: Fault, break_times: &[Duration], iterations: usize) -> usize {
    let before = executions();
    for &break_time in break_times {
        let f = move || protocol(scenario, break_time, fault);
        Runner::new(RandomScheduler::new_from_seed(seed(), iterations), config()).run(f);
        Runner::new(PctScheduler::new_from_seed(seed(), 3, iterations), config()).run(f);
    }
    executions() - before
}

#[test]
fn break_protocol_holds_in_every_explored_schedule() {
    let mut total = 0;
    for scenario in [Scenario::Layout, Scenario::Open] {
        let forced_before = FORCED.with(Cell::get);
        let rereq_before = REREQUEST_DURING_BREAK.with(Cell::get);
        let n = check(
            scenario,
            Fault::None,
            &[Duration::ZERO, BREAK_TIME],
            iterations(),
        );
        let forced = FORCED.with(Cell::get) - forced_before;
        let rereq = REREQUEST_DURING_BREAK.with(Cell::get) - rereq_before;
        println!(
            "lease model check: {scenario:?}: {n} schedules explored ({forced} with a forced break at break_time, {rereq} holder re-requests during a break), all properties hold (seed {:#x})",
            seed()
        );
        // The timeout path and the re-request path were actually explored.
        assert!(forced > 0, "no schedule reached break_time");
        assert!(rereq > 0, "no schedule re-requested during a break");
        total += n;
    }
    println!("lease model check: {total} schedules in all");
}

/// Runs `check` on a deliberately broken engine and asserts it fails.
fn assert_caught(scenario: Scenario, fault: Fault, break_time: Duration) {
    let before = executions();
    let result = catch_unwind(AssertUnwindSafe(|| {
        check(scenario, fault, &[break_time], iterations())
    }));
    let ran = executions() - before;
    assert!(
        result.is_err(),
        "the model check did not catch {fault:?} in {ran} schedules of {scenario:?}"
    );
    println!(
        "lease model check: broken variant {fault:?} ({scenario:?}, break_time {break_time:?}) caught after {ran} schedules"
    );
}

#[test]
fn broken_variant_that_skips_the_wait_is_caught() {
    for scenario in [Scenario::Layout, Scenario::Open] {
        for break_time in [Duration::ZERO, BREAK_TIME] {
            assert_caught(scenario, Fault::SkipBreakWait, break_time);
        }
    }
}

#[test]
fn broken_variant_that_loses_notifications_is_caught() {
    for scenario in [Scenario::Layout, Scenario::Open] {
        // break_time 0: holder and breaker wait for each other (deadlock);
        // otherwise the lease is revoked without its holder having heard.
        for break_time in [Duration::ZERO, BREAK_TIME] {
            assert_caught(scenario, Fault::SkipNotify, break_time);
        }
    }
}

/// The files and holders of the one-bound scenario, and its breaker.
const BOUND_FILES: [FileKey; 2] = [FileKey(7), FileKey(8)];
const BOUND_HOLDERS: [OwnerId; 2] = [OwnerId(1), OwnerId(4)];
const BOUND_BREAKER: OwnerId = OwnerId(2);

/// One operation breaking two files' layout leases under one deadline
/// (`shared_bound`) or, as the defect did, a fresh `break_time` per break.
/// Holders that `answer` release their lease when told; the others never do.
fn bounded_operation(break_time: Duration, answer: bool, shared_bound: bool) {
    EXECUTIONS.with(|n| n.set(n.get() + 1));
    let engine = LeaseEngine::new_model(break_time);
    let revoked = Arc::new(Mutex::new(HashSet::new()));
    {
        let revoked = Arc::clone(&revoked);
        engine.set_revoke_hook(Some(Arc::new(move |info: &LeaseInfo| {
            revoked.lock().unwrap().insert(info.id);
        })));
    }
    let mut leases = Vec::new();
    let mut holders = Vec::new();
    for (i, (&file, &owner)) in BOUND_FILES.iter().zip(&BOUND_HOLDERS).enumerate() {
        let events = engine.owner_events(owner).unwrap();
        let id = engine
            .set_lease(
                file,
                HandleId(1 + i as u64),
                owner,
                LeaseRequest::layout_shared(),
            )
            .unwrap();
        leases.push(id);
        let engine = engine.clone();
        holders.push(shuttle::thread::spawn(move || loop {
            match events.recv() {
                Ok(ev) if ev.kind == EventKind::Break && answer => {
                    let _ = engine.release(ev.lease.id);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }));
    }
    // The operation starts: its one deadline.
    let deadline: BreakDeadline = engine.break_deadline();
    let mut waited = Duration::ZERO;
    for (&file, &id) in BOUND_FILES.iter().zip(&leases) {
        let report = BreakReport::new();
        let mut opts = BreakOptions::blocking().with_report(Arc::clone(&report));
        if shared_bound {
            opts = opts.until(deadline);
        }
        let guard = engine
            .begin_layout_change(file, ByteRange::WHOLE, BOUND_BREAKER, &opts)
            .unwrap();
        // Proceeding past a lease needs it released, or forced and revoked.
        assert!(
            engine.lease(id).is_none(),
            "proceeded past the active lease {id:?}"
        );
        if !answer {
            assert!(revoked.lock().unwrap().contains(&id), "{id:?} not revoked");
        }
        waited += report.waited();
        drop(guard);
    }
    assert!(
        waited <= break_time,
        "one operation's lease breaks waited {waited:?} > break_time {break_time:?}"
    );
    // What is left of the deadline is all the pin wait may still use.
    let left = engine
        .time_left(deadline)
        .expect("break_time > 0 has a deadline");
    assert!(
        waited + left <= break_time,
        "breaks {waited:?} + pin wait {left:?} > break_time {break_time:?}"
    );
    for owner in BOUND_HOLDERS {
        engine.drop_owner(owner);
    }
    for h in holders {
        h.join().unwrap();
    }
}

/// Runs the one-bound scenario under both schedulers.
fn check_bound(answer: bool, shared_bound: bool, iterations: usize) -> usize {
    let before = executions();
    let f = move || bounded_operation(BREAK_TIME, answer, shared_bound);
    Runner::new(RandomScheduler::new_from_seed(seed(), iterations), config()).run(f);
    Runner::new(PctScheduler::new_from_seed(seed(), 3, iterations), config()).run(f);
    executions() - before
}

/// Fewer schedules than the main check: the scenario is small.
fn bound_iterations() -> usize {
    iterations().min(1000)
}

#[test]
fn one_operation_waits_one_break_time_for_all_its_breaks() {
    let mut n = 0;
    for answer in [false, true] {
        n += check_bound(answer, true, bound_iterations());
    }
    println!(
        "lease model check: one bound per operation: {n} schedules explored, all within break_time (seed {:#x})",
        seed()
    );
}

#[test]
fn broken_variant_with_a_break_time_per_break_is_caught() {
    let before = executions();
    let result = catch_unwind(AssertUnwindSafe(|| {
        check_bound(false, false, bound_iterations())
    }));
    let ran = executions() - before;
    assert!(
        result.is_err(),
        "the model check did not catch a fresh break_time per break in {ran} schedules"
    );
    println!("lease model check: a break_time per break caught after {ran} schedules");
}
