//! Behaviour of the lease engine, scenario by scenario, with threads as
//! actors: the Linux test project's `F_SETLEASE` tests (fcntl23–fcntl33)
//! ported to the engine, and the layout-lease semantics of SPEC §3.2–§3.3.
//!
//! Tests never assert an upper bound on time: "the breaker proceeded as soon
//! as the holder acted" is checked by ordering (the holder raises a flag
//! before acting; the breaker must see it), and every wait has only a
//! generous hang guard.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use pinfs::lease::{
    Access, BreakEvent, BreakOptions, BreakReason, ByteRange, EventKind, EventQueue, FileKey,
    HandleId, LeaseEngine, LeaseInfo, LeaseKind, LeaseRequest, LeaseState, LeaseType, OwnerId,
};
use pinfs::Errno;

/// How long a test waits for something that must happen before it calls
/// the test hung. Not a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(30);
/// Long enough that no forced break happens during a test that expects the
/// holder to act.
const LONG_BREAK_TIME: Duration = Duration::from_secs(45);
const FILE: FileKey = FileKey(0x1234);

/// One actor of a scenario: an owner with its event queue.
struct Actor {
    owner: OwnerId,
    events: EventQueue,
}

impl Actor {
    fn new(engine: &LeaseEngine, id: u64) -> Self {
        let owner = OwnerId(id);
        Actor {
            owner,
            events: engine.owner_events(owner).unwrap(),
        }
    }

    /// The next event; panics if none comes.
    fn next_event(&self) -> BreakEvent {
        self.events
            .recv_timeout(HANG_GUARD)
            .unwrap()
            .expect("holder was never notified")
    }

    fn no_event(&self) {
        assert_eq!(self.events.try_recv(), Ok(None), "unexpected event");
    }
}

fn engine(break_time: Duration) -> LeaseEngine {
    LeaseEngine::new(break_time)
}

fn handle_access(mode: u8) -> Access {
    match mode {
        0 => Access::ReadOnly,
        1 => Access::WriteOnly,
        _ => Access::ReadWrite,
    }
}

/// Waits (hang-guarded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < HANG_GUARD, "never happened: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn only_lease(e: &LeaseEngine) -> LeaseInfo {
    let l = e.list();
    assert_eq!(l.len(), 1, "{l:?}");
    l[0]
}

// ---------------------------------------------------------------- grants

#[test]
fn read_lease_only_on_a_read_only_handle() {
    // fcntl23/fcntl24 and the EAGAIN cases of fcntl(F_SETLEASE, F_RDLCK).
    for (mode, ok) in [(0, true), (1, false), (2, false)] {
        let e = engine(LONG_BREAK_TIME);
        let a = OwnerId(1);
        e.opened(FILE, HandleId(1), a, handle_access(mode)).unwrap();
        let r = e.set_lease(FILE, HandleId(1), a, LeaseRequest::read());
        if ok {
            r.unwrap();
            assert_eq!(e.get_lease(FILE, HandleId(1)), LeaseType::Read);
            e.set_lease(FILE, HandleId(1), a, LeaseRequest::unlock())
                .unwrap();
            assert_eq!(e.get_lease(FILE, HandleId(1)), LeaseType::Unlock);
        } else {
            assert_eq!(r, Err(Errno::EAGAIN), "mode {mode}");
            assert_eq!(e.get_lease(FILE, HandleId(1)), LeaseType::Unlock);
        }
    }
}

#[test]
fn write_lease_on_any_handle_that_is_the_only_open() {
    for mode in 0..3 {
        let e = engine(LONG_BREAK_TIME);
        let a = OwnerId(1);
        e.opened(FILE, HandleId(1), a, handle_access(mode)).unwrap();
        e.set_lease(FILE, HandleId(1), a, LeaseRequest::write())
            .unwrap();
        assert_eq!(e.get_lease(FILE, HandleId(1)), LeaseType::Write);
        let info = only_lease(&e);
        assert_eq!(
            (info.kind, info.state),
            (LeaseKind::Lease, LeaseState::Active)
        );
        e.set_lease(FILE, HandleId(1), a, LeaseRequest::unlock())
            .unwrap();
        assert!(e.list().is_empty());
    }
}

#[test]
fn read_leases_from_several_handles_coexist() {
    let e = engine(LONG_BREAK_TIME);
    for h in 1..=3 {
        e.opened(FILE, HandleId(h), OwnerId(h), Access::ReadOnly)
            .unwrap();
        e.set_lease(FILE, HandleId(h), OwnerId(h), LeaseRequest::read())
            .unwrap();
    }
    assert_eq!(e.list().len(), 3);
    // ... and then nobody may take a write lease, not even one of them.
    assert_eq!(
        e.set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::write()),
        Err(Errno::EAGAIN)
    );
    // A read lease is refused while anyone has the file open for writing.
    e.opened(FILE, HandleId(9), OwnerId(9), Access::WriteOnly)
        .unwrap();
    e.opened(FILE, HandleId(4), OwnerId(4), Access::ReadOnly)
        .unwrap();
    assert_eq!(
        e.set_lease(FILE, HandleId(4), OwnerId(4), LeaseRequest::read()),
        Err(Errno::EAGAIN)
    );
}

#[test]
fn write_lease_refused_for_each_of_the_nine_second_handle_combinations() {
    // LTP fcntl32-style: the lease-taking handle's mode × another handle's.
    for first in 0..3 {
        for second in 0..3 {
            let e = engine(LONG_BREAK_TIME);
            e.opened(FILE, HandleId(1), OwnerId(1), handle_access(first))
                .unwrap();
            e.opened(FILE, HandleId(2), OwnerId(2), handle_access(second))
                .unwrap();
            assert_eq!(
                e.set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::write()),
                Err(Errno::EAGAIN),
                "lease on {:?} with {:?} open",
                handle_access(first),
                handle_access(second)
            );
            // Once the other handle is closed the lease is granted.
            e.closed(FILE, HandleId(2));
            e.set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::write())
                .unwrap();
        }
    }
}

#[test]
fn closing_the_handle_releases_its_leases() {
    let e = engine(LONG_BREAK_TIME);
    e.opened(FILE, HandleId(1), OwnerId(1), Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::write())
        .unwrap();
    e.set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::layout_shared())
        .unwrap();
    assert_eq!(e.list().len(), 2);
    e.closed(FILE, HandleId(1));
    assert!(e.list().is_empty());
}

// -------------------------------------------------------- open breakers

#[derive(Clone, Copy, Debug)]
enum Op {
    Open(Access),
    Truncate,
}

/// One of LTP fcntl33's seven cases: the holder takes `lease` on a
/// read-only handle, the breaker runs `op`; the holder is notified, tries
/// to downgrade (which must succeed only against a read-only opener), then
/// releases; the breaker must proceed only after the holder acted.
fn breaker_case(lease: LeaseType, op: Op) {
    let e = engine(LONG_BREAK_TIME);
    let holder = Actor::new(&e, 1);
    let breaker = OwnerId(2);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    let req = match lease {
        LeaseType::Read => LeaseRequest::read(),
        _ => LeaseRequest::write(),
    };
    e.set_lease(FILE, HandleId(1), holder.owner, req).unwrap();

    let acted = Arc::new(AtomicBool::new(false));
    let t = {
        let (e, acted) = (e.clone(), Arc::clone(&acted));
        thread::spawn(move || {
            let r = match op {
                Op::Open(access) => e.open(
                    FILE,
                    HandleId(2),
                    breaker,
                    access,
                    &BreakOptions::blocking(),
                ),
                Op::Truncate => e.break_for_truncate(FILE, breaker, &BreakOptions::blocking()),
            };
            (r, acted.load(Ordering::SeqCst))
        })
    };

    let ev = holder.next_event();
    let downgrade = lease == LeaseType::Write && matches!(op, Op::Open(Access::ReadOnly));
    let expected_target = if downgrade {
        LeaseType::Read
    } else {
        LeaseType::Unlock
    };
    assert_eq!(ev.kind, EventKind::Break);
    assert_eq!(ev.breaker, breaker);
    assert_eq!(ev.target, expected_target, "{lease:?} vs {op:?}");
    assert_eq!(
        ev.reason,
        match op {
            Op::Open(a) => BreakReason::Open(a),
            Op::Truncate => BreakReason::Truncate,
        }
    );
    // F_GETLEASE reports the target type while the break is pending.
    assert_eq!(e.get_lease(FILE, HandleId(1)), expected_target);
    assert_eq!(only_lease(&e).state, LeaseState::Breaking);

    acted.store(true, Ordering::SeqCst);
    if lease == LeaseType::Write {
        let r = e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::read());
        if downgrade {
            r.unwrap();
        } else {
            assert_eq!(r, Err(Errno::EAGAIN), "downgrade allowed against {op:?}");
        }
    }
    if !downgrade {
        e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::unlock())
            .unwrap();
    }
    let (r, saw_act) = t.join().unwrap();
    r.unwrap();
    assert!(saw_act, "breaker proceeded before the holder acted");
    if downgrade {
        let info = only_lease(&e);
        assert_eq!((info.ty, info.state), (LeaseType::Read, LeaseState::Active));
        assert_eq!(e.get_lease(FILE, HandleId(1)), LeaseType::Read);
    } else {
        assert!(e.list().is_empty());
    }
    holder.no_event();
}

#[test]
fn write_lease_vs_read_only_open_is_a_downgrade() {
    breaker_case(LeaseType::Write, Op::Open(Access::ReadOnly));
}

#[test]
fn write_lease_vs_write_only_open() {
    breaker_case(LeaseType::Write, Op::Open(Access::WriteOnly));
}

#[test]
fn write_lease_vs_read_write_open() {
    breaker_case(LeaseType::Write, Op::Open(Access::ReadWrite));
}

#[test]
fn write_lease_vs_truncate() {
    breaker_case(LeaseType::Write, Op::Truncate);
}

#[test]
fn read_lease_vs_write_only_open() {
    breaker_case(LeaseType::Read, Op::Open(Access::WriteOnly));
}

#[test]
fn read_lease_vs_read_write_open() {
    breaker_case(LeaseType::Read, Op::Open(Access::ReadWrite));
}

#[test]
fn read_lease_vs_truncate() {
    breaker_case(LeaseType::Read, Op::Truncate);
}

#[test]
fn read_only_open_does_not_break_a_read_lease() {
    let e = engine(LONG_BREAK_TIME);
    let holder = Actor::new(&e, 1);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::read())
        .unwrap();
    e.open(
        FILE,
        HandleId(2),
        OwnerId(2),
        Access::ReadOnly,
        &BreakOptions::nonblocking(),
    )
    .unwrap();
    holder.no_event();
    assert_eq!(only_lease(&e).state, LeaseState::Active);
}

#[test]
fn non_blocking_open_gets_ewouldblock_and_the_break_goes_on() {
    let e = engine(LONG_BREAK_TIME);
    let holder = Actor::new(&e, 1);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    assert_eq!(
        e.open(
            FILE,
            HandleId(2),
            OwnerId(2),
            Access::WriteOnly,
            &BreakOptions::nonblocking()
        ),
        Err(Errno::EWOULDBLOCK)
    );
    let ev = holder.next_event();
    assert_eq!((ev.kind, ev.target), (EventKind::Break, LeaseType::Unlock));
    let info = only_lease(&e);
    assert_eq!(
        (info.state, info.target),
        (LeaseState::Breaking, LeaseType::Unlock)
    );
    assert_eq!(e.get_lease(FILE, HandleId(1)), LeaseType::Unlock);
    // The failed open left no handle behind, so the holder may set its
    // lease again — but that does not un-break it (Linux's lease_modify
    // keeps the pending flags).
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    assert_eq!(only_lease(&e).state, LeaseState::Breaking);
    // Released and taken anew, it is a new, active lease.
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::unlock())
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    assert_eq!(only_lease(&e).state, LeaseState::Active);
}

#[test]
fn interrupted_breaker_gets_eintr_and_the_break_goes_on() {
    let e = engine(LONG_BREAK_TIME);
    let holder = Actor::new(&e, 1);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    let interrupt = e.new_interrupt();
    let t = {
        let (e, i) = (e.clone(), Arc::clone(&interrupt));
        thread::spawn(move || {
            e.break_for_truncate(FILE, OwnerId(2), &BreakOptions::interruptible(i))
        })
    };
    let ev = holder.next_event();
    assert_eq!(ev.target, LeaseType::Unlock);
    interrupt.raise();
    assert_eq!(t.join().unwrap(), Err(Errno::EINTR));
    assert_eq!(only_lease(&e).state, LeaseState::Breaking);
    // A raised interrupt makes the next wait return at once, too.
    assert_eq!(
        e.break_for_truncate(
            FILE,
            OwnerId(2),
            &BreakOptions::interruptible(Arc::clone(&interrupt))
        ),
        Err(Errno::EINTR)
    );
    interrupt.clear();
    assert!(!interrupt.is_raised());
}

#[test]
fn unresponsive_write_lease_holder_loses_it_at_break_time() {
    let e = engine(Duration::from_millis(100));
    let holder = Actor::new(&e, 1);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    e.open(
        FILE,
        HandleId(2),
        OwnerId(2),
        Access::ReadWrite,
        &BreakOptions::blocking(),
    )
    .unwrap();
    assert!(e.list().is_empty());
    assert_eq!(holder.next_event().kind, EventKind::Break);
    let lost = holder.next_event();
    assert_eq!(
        (lost.kind, lost.target),
        (EventKind::Lost, LeaseType::Unlock)
    );
}

#[test]
fn unresponsive_holder_is_forcibly_downgraded_for_a_read_only_opener() {
    let e = engine(Duration::from_millis(100));
    let holder = Actor::new(&e, 1);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    e.open(
        FILE,
        HandleId(2),
        OwnerId(2),
        Access::ReadOnly,
        &BreakOptions::blocking(),
    )
    .unwrap();
    let info = only_lease(&e);
    assert_eq!((info.ty, info.state), (LeaseType::Read, LeaseState::Active));
    assert_eq!(holder.next_event().kind, EventKind::Break);
    let lost = holder.next_event();
    assert_eq!((lost.kind, lost.target), (EventKind::Lost, LeaseType::Read));
}

#[test]
fn zero_break_time_waits_for_the_holder_indefinitely() {
    let e = engine(Duration::ZERO);
    let holder = Actor::new(&e, 1);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let t = {
        let (e, done) = (e.clone(), Arc::clone(&done));
        thread::spawn(move || {
            e.break_for_truncate(FILE, OwnerId(2), &BreakOptions::blocking())
                .unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    holder.next_event();
    // Well past any plausible forced break: still waiting.
    thread::sleep(Duration::from_millis(300));
    assert!(!done.load(Ordering::SeqCst));
    assert_eq!(only_lease(&e).state, LeaseState::Breaking);
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::unlock())
        .unwrap();
    t.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
}

#[test]
fn owner_callback_runs_and_may_signal_from_the_breaker_thread() {
    let e = engine(LONG_BREAK_TIME);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (e2, s2) = (e.clone(), Arc::clone(&seen));
    e.set_owner_callback(
        OwnerId(1),
        Some(Arc::new(move |ev: &BreakEvent| {
            s2.lock().unwrap().push(ev.lease.id);
            // Re-entering the engine from the callback is allowed.
            e2.set_lease(
                ev.lease.file,
                ev.lease.handle,
                ev.lease.owner,
                LeaseRequest::unlock(),
            )
            .unwrap();
        })),
    )
    .unwrap();
    e.opened(FILE, HandleId(1), OwnerId(1), Access::ReadOnly)
        .unwrap();
    let id = e
        .set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::write())
        .unwrap();
    e.open(
        FILE,
        HandleId(2),
        OwnerId(2),
        Access::WriteOnly,
        &BreakOptions::blocking(),
    )
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![id]);
}

#[test]
fn dropping_the_owner_lets_the_breaker_proceed() {
    let e = engine(Duration::ZERO);
    let holder = Actor::new(&e, 1);
    e.opened(FILE, HandleId(1), holder.owner, Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), holder.owner, LeaseRequest::write())
        .unwrap();
    let t = {
        let e = e.clone();
        thread::spawn(move || {
            e.open(
                FILE,
                HandleId(2),
                OwnerId(2),
                Access::ReadWrite,
                &BreakOptions::blocking(),
            )
        })
    };
    holder.next_event();
    e.drop_owner(holder.owner);
    t.join().unwrap().unwrap();
    assert!(e.list().is_empty());
}

// -------------------------------------------------------- layout leases

#[test]
fn layout_leases_do_not_conflict_with_opens() {
    let e = engine(LONG_BREAK_TIME);
    e.opened(FILE, HandleId(1), OwnerId(1), Access::ReadWrite)
        .unwrap();
    e.opened(FILE, HandleId(2), OwnerId(2), Access::WriteOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::layout_shared())
        .unwrap();
    e.set_lease(FILE, HandleId(2), OwnerId(2), LeaseRequest::layout_shared())
        .unwrap();
    // ... and opens do not break them.
    e.open(
        FILE,
        HandleId(3),
        OwnerId(3),
        Access::ReadWrite,
        &BreakOptions::nonblocking(),
    )
    .unwrap();
    e.break_for_truncate(FILE, OwnerId(3), &BreakOptions::nonblocking())
        .unwrap();
    assert!(e.list().iter().all(|l| l.state == LeaseState::Active));
}

#[test]
fn exclusive_layout_leases_of_two_owners_conflict() {
    let e = engine(LONG_BREAK_TIME);
    e.set_lease(
        FILE,
        HandleId(1),
        OwnerId(1),
        LeaseRequest::layout_exclusive(),
    )
    .unwrap();
    assert_eq!(
        e.set_lease(
            FILE,
            HandleId(2),
            OwnerId(2),
            LeaseRequest::layout_exclusive()
        ),
        Err(Errno::EAGAIN)
    );
    // Shared ones coexist with it, and a disjoint range is no conflict.
    e.set_lease(FILE, HandleId(2), OwnerId(2), LeaseRequest::layout_shared())
        .unwrap();
    let e2 = engine(LONG_BREAK_TIME);
    let lo = ByteRange::new(0, 4096);
    let hi = ByteRange::new(4096, 8192);
    e2.set_lease(
        FILE,
        HandleId(1),
        OwnerId(1),
        LeaseRequest::layout_exclusive().range(lo),
    )
    .unwrap();
    e2.set_lease(
        FILE,
        HandleId(2),
        OwnerId(2),
        LeaseRequest::layout_exclusive().range(hi),
    )
    .unwrap();
}

#[test]
fn another_owners_layout_change_breaks_a_shared_lease_and_waits() {
    let e = engine(LONG_BREAK_TIME);
    let holder = Actor::new(&e, 1);
    let breaker = OwnerId(2);
    e.set_lease(
        FILE,
        HandleId(1),
        holder.owner,
        LeaseRequest::layout_shared(),
    )
    .unwrap();
    let acted = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let t = {
        let (e, acted) = (e.clone(), Arc::clone(&acted));
        thread::spawn(move || {
            let guard = e
                .begin_layout_change(
                    FILE,
                    ByteRange::new(0, 4096),
                    breaker,
                    &BreakOptions::blocking(),
                )
                .unwrap();
            let saw = acted.load(Ordering::SeqCst);
            tx.send(saw).unwrap();
            // Hold the change until told to finish.
            thread::park();
            drop(guard);
        })
    };
    let ev = holder.next_event();
    assert_eq!(ev.kind, EventKind::Break);
    assert_eq!(ev.target, LeaseType::Unlock);
    assert_eq!(
        ev.reason,
        BreakReason::LayoutChange(ByteRange::new(0, 4096))
    );
    assert_eq!(ev.lease.kind, LeaseKind::Layout);
    assert_eq!(only_lease(&e).state, LeaseState::Breaking);
    acted.store(true, Ordering::SeqCst);
    e.release(ev.lease.id).unwrap();
    assert!(
        rx.recv_timeout(HANG_GUARD).unwrap(),
        "change went ahead before release"
    );

    // The holder asks again: that waits until the change is done.
    assert_eq!(
        e.set_lease(
            FILE,
            HandleId(1),
            holder.owner,
            LeaseRequest::layout_shared().nonblocking()
        ),
        Err(Errno::EWOULDBLOCK)
    );
    let granted = Arc::new(AtomicBool::new(false));
    let re = {
        let (e, granted) = (e.clone(), Arc::clone(&granted));
        let owner = holder.owner;
        thread::spawn(move || {
            let id = e
                .set_lease(FILE, HandleId(1), owner, LeaseRequest::layout_shared())
                .unwrap();
            granted.store(true, Ordering::SeqCst);
            id
        })
    };
    thread::sleep(Duration::from_millis(50));
    assert!(
        !granted.load(Ordering::SeqCst),
        "re-request granted during the change"
    );
    t.thread().unpark();
    t.join().unwrap();
    let id = re.join().unwrap();
    assert_eq!(only_lease(&e).id, id);
    assert_eq!(only_lease(&e).state, LeaseState::Active);
}

#[test]
fn the_holders_own_change_does_not_notify_it_but_waits_for_other_holders() {
    let e = engine(LONG_BREAK_TIME);
    let a = Actor::new(&e, 1);
    let b = Actor::new(&e, 2);
    e.set_lease(FILE, HandleId(1), a.owner, LeaseRequest::layout_shared())
        .unwrap();
    // Alone: the change goes ahead at once and nobody hears of it.
    drop(
        e.begin_layout_change(
            FILE,
            ByteRange::WHOLE,
            a.owner,
            &BreakOptions::nonblocking(),
        )
        .unwrap(),
    );
    a.no_event();
    assert_eq!(only_lease(&e).state, LeaseState::Active);

    // With another shared holder: that one is broken, and the change waits.
    let b_lease = e
        .set_lease(FILE, HandleId(2), b.owner, LeaseRequest::layout_shared())
        .unwrap();
    let acted = Arc::new(AtomicBool::new(false));
    let t = {
        let (e, acted) = (e.clone(), Arc::clone(&acted));
        let owner = a.owner;
        thread::spawn(move || {
            let g = e.begin_layout_change(FILE, ByteRange::WHOLE, owner, &BreakOptions::blocking());
            (g.map(drop), acted.load(Ordering::SeqCst))
        })
    };
    let ev = b.next_event();
    assert_eq!((ev.lease.id, ev.breaker), (b_lease, a.owner));
    acted.store(true, Ordering::SeqCst);
    e.release(b_lease).unwrap();
    let (r, saw) = t.join().unwrap();
    r.unwrap();
    assert!(saw);
    a.no_event();
    assert_eq!(only_lease(&e).owner, a.owner);
}

#[test]
fn unbreakable_lease_makes_another_owners_change_fail_at_once_and_tells_the_holder() {
    let e = engine(LONG_BREAK_TIME);
    let pinner = Actor::new(&e, 1);
    let id = e
        .set_lease(
            FILE,
            HandleId(1),
            pinner.owner,
            LeaseRequest::layout_shared()
                .unbreakable()
                .range(ByteRange::new(0, 1 << 20)),
        )
        .unwrap();
    let other = Actor::new(&e, 3);
    let other_lease = e
        .set_lease(
            FILE,
            HandleId(3),
            other.owner,
            LeaseRequest::layout_shared(),
        )
        .unwrap();
    // Blocking or not, the answer is immediate: ETXTBSY.
    let err = e
        .begin_layout_change(
            FILE,
            ByteRange::new(4096, 8192),
            OwnerId(2),
            &BreakOptions::blocking(),
        )
        .unwrap_err();
    assert_eq!(err, Errno::ETXTBSY);
    assert_eq!(err.to_string(), "Text file busy");
    let ev = pinner.next_event();
    assert_eq!(
        (ev.kind, ev.lease.id, ev.breaker),
        (EventKind::Refused, id, OwnerId(2))
    );
    // Nothing was broken: not the pinner's lease, not the bystander's.
    assert!(e.list().iter().all(|l| l.state == LeaseState::Active));
    other.no_event();
    let _ = other_lease;
    // Outside the pinned range the change is an ordinary one.
    let t = {
        let e = e.clone();
        thread::spawn(move || {
            e.begin_layout_change(
                FILE,
                ByteRange::new(2 << 20, 3 << 20),
                OwnerId(2),
                &BreakOptions::blocking(),
            )
            .map(drop)
        })
    };
    let ev = other.next_event();
    e.release(ev.lease.id).unwrap();
    t.join().unwrap().unwrap();
    // The holder's own change is not refused by its own lease.
    drop(
        e.begin_layout_change(
            FILE,
            ByteRange::new(0, 4096),
            pinner.owner,
            &BreakOptions::nonblocking(),
        )
        .unwrap(),
    );
    assert_eq!(e.list().len(), 1);
    assert_eq!(e.list()[0].type_label(), "READ+EXCL");
}

#[test]
fn shared_holders_change_fails_while_another_holds_the_exclusive_layout_lease() {
    let e = engine(LONG_BREAK_TIME);
    let owner_x = Actor::new(&e, 1);
    let shared = OwnerId(2);
    e.set_lease(
        FILE,
        HandleId(1),
        owner_x.owner,
        LeaseRequest::layout_exclusive(),
    )
    .unwrap();
    e.set_lease(FILE, HandleId(2), shared, LeaseRequest::layout_shared())
        .unwrap();
    assert_eq!(
        e.begin_layout_change(
            FILE,
            ByteRange::new(0, 4096),
            shared,
            &BreakOptions::blocking()
        )
        .unwrap_err(),
        Errno::ETXTBSY
    );
    owner_x.no_event();
    // The exclusive holder changes the layout: the shared holder is broken.
    assert_eq!(
        e.begin_layout_change(
            FILE,
            ByteRange::new(0, 4096),
            owner_x.owner,
            &BreakOptions::nonblocking()
        )
        .unwrap_err(),
        Errno::EWOULDBLOCK
    );
    e.set_lease(FILE, HandleId(2), shared, LeaseRequest::layout_unlock())
        .unwrap();
    // Someone holding no layout lease breaks the exclusive one.
    let t = {
        let e = e.clone();
        thread::spawn(move || {
            e.begin_layout_change(
                FILE,
                ByteRange::WHOLE,
                OwnerId(9),
                &BreakOptions::blocking(),
            )
            .map(drop)
        })
    };
    let ev = owner_x.next_event();
    assert_eq!((ev.kind, ev.lease.ty), (EventKind::Break, LeaseType::Write));
    e.closed(FILE, HandleId(1)); // close releases layout leases too
    t.join().unwrap().unwrap();
    assert!(e.list().is_empty());
}

#[test]
fn range_lease_is_untouched_by_a_change_outside_its_range() {
    let e = engine(LONG_BREAK_TIME);
    let holder = Actor::new(&e, 1);
    let range = ByteRange::new(0, 4096);
    e.set_lease(
        FILE,
        HandleId(1),
        holder.owner,
        LeaseRequest::layout_shared().range(range),
    )
    .unwrap();
    let g = e
        .begin_layout_change(
            FILE,
            ByteRange::new(8192, 16384),
            OwnerId(2),
            &BreakOptions::nonblocking(),
        )
        .unwrap();
    holder.no_event();
    assert_eq!(only_lease(&e).state, LeaseState::Active);
    // A request for a range away from the change is not held up by it.
    e.set_lease(
        FILE,
        HandleId(1),
        holder.owner,
        LeaseRequest::layout_shared()
            .range(ByteRange::new(4096, 8192))
            .nonblocking(),
    )
    .unwrap();
    drop(g);
    // An overlapping change (even by one byte) breaks it.
    assert_eq!(
        e.begin_layout_change(
            FILE,
            ByteRange::new(4095, 4096),
            OwnerId(2),
            &BreakOptions::nonblocking()
        )
        .unwrap_err(),
        Errno::EWOULDBLOCK
    );
    let ev = holder.next_event();
    assert_eq!(ev.lease.range, range);
    holder.no_event();
}

#[test]
fn unresponsive_layout_holder_is_revoked_at_break_time_before_the_change() {
    let e = engine(Duration::from_millis(100));
    let holder = Actor::new(&e, 1);
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let in_hook = Arc::new(AtomicUsize::new(0));
    {
        let (r, h) = (Arc::clone(&revoked), Arc::clone(&in_hook));
        e.set_revoke_hook(Some(Arc::new(move |info: &LeaseInfo| {
            h.fetch_add(1, Ordering::SeqCst);
            // Revocation takes a while; nobody may proceed meanwhile.
            thread::sleep(Duration::from_millis(20));
            r.lock().unwrap().push(info.id);
        })));
    }
    let id = e
        .set_lease(
            FILE,
            HandleId(1),
            holder.owner,
            LeaseRequest::layout_shared(),
        )
        .unwrap();
    // Two breakers: both must see the revocation finished before going on.
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (e, r) = (e.clone(), Arc::clone(&revoked));
            thread::spawn(move || {
                let g = e
                    .begin_layout_change(
                        FILE,
                        ByteRange::WHOLE,
                        OwnerId(10 + i),
                        &BreakOptions::blocking(),
                    )
                    .unwrap();
                let seen = r.lock().unwrap().clone();
                drop(g);
                seen
            })
        })
        .collect();
    for t in threads {
        assert_eq!(
            t.join().unwrap(),
            vec![id],
            "breaker went ahead before revocation"
        );
    }
    assert_eq!(in_hook.load(Ordering::SeqCst), 1);
    assert!(e.list().is_empty());
    assert_eq!(holder.next_event().kind, EventKind::Break);
    let lost = holder.next_event();
    assert_eq!((lost.kind, lost.lease.id), (EventKind::Lost, id));
    // Having lost it, the holder may ask again.
    e.set_lease(
        FILE,
        HandleId(1),
        holder.owner,
        LeaseRequest::layout_shared(),
    )
    .unwrap();
}

#[test]
fn non_blocking_layout_breaker_and_later_enforcement() {
    let e = engine(Duration::from_millis(50));
    let holder = Actor::new(&e, 1);
    let hook_ran = Arc::new(AtomicBool::new(false));
    let h = Arc::clone(&hook_ran);
    e.set_revoke_hook(Some(Arc::new(move |_: &LeaseInfo| {
        h.store(true, Ordering::SeqCst)
    })));
    e.set_lease(
        FILE,
        HandleId(1),
        holder.owner,
        LeaseRequest::layout_shared(),
    )
    .unwrap();
    assert_eq!(
        e.begin_layout_change(
            FILE,
            ByteRange::WHOLE,
            OwnerId(2),
            &BreakOptions::nonblocking()
        )
        .unwrap_err(),
        Errno::EWOULDBLOCK
    );
    assert_eq!(holder.next_event().kind, EventKind::Break);
    assert_eq!(only_lease(&e).state, LeaseState::Breaking);
    // A non-blocking breaker that failed leaves no change in progress: the
    // holder's own other requests are not held up.
    e.set_lease(
        FILE,
        HandleId(7),
        holder.owner,
        LeaseRequest::layout_shared()
            .range(ByteRange::new(0, 1))
            .nonblocking(),
    )
    .unwrap();
    // Past the deadline, the next breaker enforces it (revoking first).
    thread::sleep(Duration::from_millis(60));
    eventually("a later breaker enforces the deadline", || {
        e.begin_layout_change(
            FILE,
            ByteRange::WHOLE,
            OwnerId(2),
            &BreakOptions::nonblocking(),
        )
        .is_ok()
    });
    assert!(hook_ran.load(Ordering::SeqCst));
}

#[test]
fn listing_shows_kind_type_state_owner_and_range() {
    let e = engine(LONG_BREAK_TIME);
    e.opened(FILE, HandleId(1), OwnerId(1), Access::ReadOnly)
        .unwrap();
    e.set_lease(FILE, HandleId(1), OwnerId(1), LeaseRequest::write())
        .unwrap();
    e.set_lease(
        FILE,
        HandleId(2),
        OwnerId(2),
        LeaseRequest::layout_shared().range(ByteRange::new(0, 4096)),
    )
    .unwrap();
    let _ = e.break_for_open(
        FILE,
        OwnerId(3),
        Access::ReadOnly,
        &BreakOptions::nonblocking(),
    );
    let lines: Vec<String> = e
        .list()
        .iter()
        .map(|l| {
            format!(
                "{} {} {} {} {} {} {}",
                l.id,
                l.kind,
                l.type_label(),
                l.state,
                l.owner.0,
                l.file.0,
                l.range
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            format!("1 LEASE READ BREAKING 1 {} 0 EOF", FILE.0),
            format!("2 LAYOUT READ ACTIVE 2 {} 0 4095", FILE.0),
        ]
    );
}

/// SPEC §3.3.5, one bound per operation, when another breaker marked the
/// lease first: an operation whose deadline was fixed before that mark must
/// not inherit the later breaker's (later) deadline. The lease's forced-at
/// time may only move earlier, to the operation's own bound. Observed on the
/// engine's clock values, not by timing the wait.
#[test]
fn an_earlier_operation_bound_tightens_a_lease_another_breaker_marked() {
    let e = engine(LONG_BREAK_TIME);
    let holder = Actor::new(&e, 1);
    let id = e
        .set_lease(
            FILE,
            HandleId(1),
            holder.owner,
            LeaseRequest::layout_shared(),
        )
        .unwrap();
    // The operation begins: its one deadline (now + lease-break-time).
    let bound = e.break_deadline();
    thread::sleep(Duration::from_millis(20));
    // Another breaker marks the lease later: forced at its own, later time.
    let nonblocking = BreakOptions {
        nonblocking: true,
        ..BreakOptions::blocking()
    };
    assert_eq!(
        e.begin_layout_change(FILE, ByteRange::WHOLE, OwnerId(2), &nonblocking)
            .err(),
        Some(Errno::EWOULDBLOCK)
    );
    let theirs = e.forced_at(id).expect("breaking");
    assert_ne!(theirs, bound, "the later breaker's deadline is its own");
    // The operation reaches the same lease: now forced at its bound.
    assert_eq!(
        e.begin_layout_change(
            FILE,
            ByteRange::WHOLE,
            OwnerId(3),
            &nonblocking.clone().until(bound)
        )
        .err(),
        Some(Errno::EWOULDBLOCK)
    );
    assert_eq!(e.forced_at(id), Some(bound));
    // A later bound never pushes it back out.
    let later = e.break_deadline();
    let _ = e.begin_layout_change(
        FILE,
        ByteRange::WHOLE,
        OwnerId(4),
        &nonblocking.until(later),
    );
    assert_eq!(e.forced_at(id), Some(bound));
    e.release(id).unwrap();
}
