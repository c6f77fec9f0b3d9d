//! Long-term pins at the library boundary: what entitles one (SPEC §4.2),
//! and what each truncate policy does to a layout change over pinned blocks
//! (SPEC §4.3) — `fail` refusing and telling the pin holders, `wait` and
//! `revoke` bounded by one lease-break-time for the whole operation
//! (SPEC §3.3.5), `revoke` freeing blocks only after revocation, `defer`
//! finishing at once — and lease-break-time conversion never turning a
//! positive value into "never".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use pinfs::fs::{Cred, Fs, Handle, MountOptions, OpenFlags, TruncatePolicy};
use pinfs::lease::{
    break_time_from_secs, BreakEvent, ByteRange, EventKind, EventQueue, LeaseId, LeaseRequest,
    OwnerId,
};
use pinfs::map::MapFlags;
use pinfs::media::{MappedPool, Media};
use pinfs::pin::{PinVia, RevokeFn};
use pinfs::Errno;

const HOLDER: Cred = Cred::root_as(1);
const OTHER: Cred = Cred::root_as(2);
const BLOCK: u64 = 4096;
const FILE_BYTES: u64 = 64 << 10;
const PINNED: u64 = 16 << 10;
/// Long enough never to pass during a test that does not wait for it.
const LONG: Duration = Duration::from_secs(3600);
/// How long a test waits for something that must happen promptly before it
/// calls it a hang (generous: a loaded 2-core CI machine).
const PROMPTLY: Duration = Duration::from_secs(20);

fn mount(policy: TruncatePolicy, break_time: Duration) -> Arc<Fs> {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(32 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    Fs::mount_with(media, MountOptions { break_time, policy }).unwrap()
}

/// `/f`, FILE_BYTES written, opened by the holder.
fn file(fs: &Arc<Fs>) -> Handle {
    let h = fs.open(HOLDER, "/f", OpenFlags::CREATE, 0o644).unwrap();
    h.pwrite(0, &vec![7; FILE_BYTES as usize]).unwrap();
    h
}

/// The holder's `F_LAYOUT|F_EXCLUSIVE` lease over `range` of `h`'s file.
fn unbreakable(fs: &Fs, h: &Handle, range: ByteRange) -> LeaseId {
    fs.leases()
        .set_lease(
            h.lease_file(),
            h.lease_handle(),
            OwnerId(HOLDER.owner),
            LeaseRequest::layout_shared().unbreakable().range(range),
        )
        .unwrap()
}

fn release(fs: &Fs, id: LeaseId) {
    fs.leases().release(id).unwrap();
}

/// The event queue of `owner` (events raised before it exists are not
/// queued: create it first).
fn queue(fs: &Fs, owner: Cred) -> EventQueue {
    fs.leases().owner_events(OwnerId(owner.owner)).unwrap()
}

/// Every event in `q` within `within`.
fn events(q: &EventQueue, within: Duration) -> Vec<BreakEvent> {
    let mut out = Vec::new();
    while let Ok(Some(ev)) = q.recv_timeout(within) {
        out.push(ev);
    }
    out
}

/// Run `f` on a thread; its result, or a test failure if it does not finish
/// within [`PROMPTLY`] (the defect being tested would make it hang).
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PROMPTLY)
        .unwrap_or_else(|_| panic!("{what} did not finish within {PROMPTLY:?}"))
}

// ---------------------------------------------------------------- item 1

#[test]
fn a_pin_through_a_shared_mapping_needs_the_owners_exclusive_layout_lease() {
    let fs = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs);
    let shared = h.mmap(0, FILE_BYTES, MapFlags::SHARED).unwrap();
    // Without the lease: EPERM (the control for the grant below).
    assert_eq!(
        shared.pin_long_term(0, PINNED, None).unwrap_err().errno(),
        Errno::EPERM
    );
    // Another owner's unbreakable lease does not entitle the holder.
    let theirs = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    let their_lease = fs
        .leases()
        .set_lease(
            theirs.lease_file(),
            theirs.lease_handle(),
            OwnerId(OTHER.owner),
            LeaseRequest::layout_shared().unbreakable(),
        )
        .unwrap();
    assert_eq!(
        shared.pin_long_term(0, PINNED, None).unwrap_err().errno(),
        Errno::EPERM
    );
    release(&fs, their_lease);
    // Ira Weiny's flow: mmap (plain MAP_SHARED), take the unbreakable lease
    // over the range, pin.
    let lease = unbreakable(&fs, &h, ByteRange::new(0, PINNED));
    let pin = shared.pin_long_term(0, PINNED, None).unwrap();
    let info = pin.info().unwrap();
    assert_eq!(info.via, PinVia::ExclusiveLease);
    assert_eq!(
        (info.owner, info.offset, info.len),
        (HOLDER.owner, 0, PINNED)
    );
    // The pin reaches the blocks the mapping shows: a device store into the
    // pinned pool range is seen through the mapping.
    let (pool_off, pool_len) = pin.pool_ranges()[0];
    assert_eq!(pool_len, PINNED);
    fs.media().write(pool_off, &[0x5a; 8]).unwrap();
    let mut seen = [0u8; 8];
    shared.read(0, &mut seen).unwrap();
    assert_eq!(seen, [0x5a; 8]);
    // Only the range the lease covers.
    assert_eq!(
        shared
            .pin_long_term(PINNED, BLOCK, None)
            .unwrap_err()
            .errno(),
        Errno::EPERM,
        "beyond the lease's range"
    );
    // Another owner's layout change over it: ETXTBSY (unbreakable lease).
    assert_eq!(theirs.truncate(0).unwrap_err().errno(), Errno::ETXTBSY);
    // Once the lease is released, new pins fail; the existing pin stays.
    release(&fs, lease);
    assert_eq!(
        shared.pin_long_term(0, PINNED, None).unwrap_err().errno(),
        Errno::EPERM
    );
    assert_eq!(fs.pins().len(), 1);
}

#[test]
fn a_pin_needs_a_shared_writable_mapping_even_under_the_lease() {
    let fs = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs);
    let _lease = unbreakable(&fs, &h, ByteRange::WHOLE);
    // As the kernel's FOLL_LONGTERM|FOLL_WRITE: a MAP_PRIVATE mapping's
    // stores never reach the file, a read-only one cannot store at all.
    let private = h.mmap(0, FILE_BYTES, MapFlags::PRIVATE).unwrap();
    assert_eq!(
        private.pin_long_term(0, PINNED, None).unwrap_err().errno(),
        Errno::EPERM
    );
    let read_only = h.mmap(0, FILE_BYTES, MapFlags::SHARED.read_only()).unwrap();
    assert_eq!(
        read_only
            .pin_long_term(0, PINNED, None)
            .unwrap_err()
            .errno(),
        Errno::EPERM
    );
    // The control: the same lease through a shared writable mapping.
    let shared = h.mmap(0, FILE_BYTES, MapFlags::SHARED).unwrap();
    assert!(shared.pin_long_term(0, PINNED, None).is_ok());
}

// ---------------------------------------------------------------- item 3

#[test]
fn fail_refuses_at_once_and_tells_every_pin_holder() {
    let fs = mount(TruncatePolicy::Fail, LONG);
    let q = queue(&fs, HOLDER);
    let h = file(&fs);
    // A pin kept after its lease is released (no lease left to notify
    // through), and one through a MAP_DIRECT mapping (whose lease is still
    // held).
    let lease = unbreakable(&fs, &h, ByteRange::new(0, PINNED));
    let kept = h.pin_long_term(0, PINNED, None).unwrap();
    release(&fs, lease);
    let direct = h
        .mmap(PINNED, FILE_BYTES - PINNED, MapFlags::DIRECT)
        .unwrap();
    let via_direct = direct.pin_long_term(0, BLOCK, None).unwrap();
    assert_eq!(via_direct.info().unwrap().offset, PINNED);
    let key = h.lease_file();

    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    // Refused at once (LONG would show as a hang): the lease of the
    // MAP_DIRECT mapping is not even broken.
    let t = promptly("a truncate under `fail`", move || {
        let r = other.truncate(BLOCK);
        (r, other)
    });
    let (r, other) = t;
    assert_eq!(r.unwrap_err().errno(), Errno::ETXTBSY);
    assert_eq!(h.stat().unwrap().size, FILE_BYTES, "nothing changed");
    assert!(!direct.is_invalidated());
    // One `Refused` event for the holder (both pins are its own).
    let evs = events(&q, Duration::from_millis(100));
    assert_eq!(evs.len(), 1, "{evs:?}");
    let ev = evs[0];
    assert_eq!(ev.kind, EventKind::Refused);
    assert_eq!(ev.lease.file, key);
    assert_eq!(ev.breaker, OwnerId(OTHER.owner));
    // It is about the holder's layout lease over the range when it has one
    // (the MAP_DIRECT mapping's).
    assert_eq!(
        Some(ev.lease.id),
        fs.leases()
            .list_file(key)
            .iter()
            .find(|l| l.owner == OwnerId(HOLDER.owner))
            .map(|l| l.id)
    );
    // Without the MAP_DIRECT pin, the remaining pin's holder has no lease:
    // it is told all the same, about no lease (id 0).
    drop(via_direct);
    drop(direct);
    assert_eq!(other.truncate(BLOCK).unwrap_err().errno(), Errno::ETXTBSY);
    let evs = events(&q, Duration::from_millis(100));
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        (evs[0].kind, evs[0].lease.id, evs[0].lease.file),
        (EventKind::Refused, LeaseId(0), key)
    );
    // Controls: a change over unpinned blocks proceeds and tells nobody; the
    // holder's own refused change does not notify the holder.
    other.truncate(PINNED).unwrap();
    assert!(events(&q, Duration::from_millis(100)).is_empty());
    assert_eq!(h.truncate(0).unwrap_err().errno(), Errno::ETXTBSY);
    assert!(events(&q, Duration::from_millis(100)).is_empty());
    drop(kept);
    other.truncate(0).unwrap();
}

// ---------------------------------------------------------------- item 2

/// lease-break-time for the timed scenarios below.
const BREAK: Duration = Duration::from_secs(2);

/// The holder maps `/f` `MAP_DIRECT`, pins through the mapping and then
/// never answers; another owner truncates the file to 0. Returns the
/// truncate's result, how long it took, and whether the pin was revoked.
fn unanswered_truncate(policy: TruncatePolicy) -> (pinfs::Result<()>, Duration, bool) {
    let fs = mount(policy, BREAK);
    let h = file(&fs);
    let direct = h.mmap(0, FILE_BYTES, MapFlags::DIRECT).unwrap();
    let revoked = Arc::new(AtomicBool::new(false));
    let flag = revoked.clone();
    let revoke: RevokeFn = Arc::new(move || {
        flag.store(true, Ordering::SeqCst);
        Ok(())
    });
    let _pin = direct.pin_long_term(0, PINNED, Some(revoke)).unwrap();
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    let start = Instant::now();
    let r = other.truncate(0);
    let took = start.elapsed();
    assert!(direct.is_invalidated(), "the MAP_DIRECT lease was forced");
    (r, took, revoked.load(Ordering::SeqCst))
}

#[test]
fn wait_and_revoke_take_one_break_time_not_two() {
    // Both policies run at once (each on its own file system) to keep the
    // test at about one BREAK.
    let wait = thread::spawn(|| unanswered_truncate(TruncatePolicy::Wait));
    let revoke = thread::spawn(|| unanswered_truncate(TruncatePolicy::Revoke));
    let (wait, revoke) = (wait.join().unwrap(), revoke.join().unwrap());
    assert_eq!(wait.0.unwrap_err().errno(), Errno::ETXTBSY);
    assert!(!wait.2, "`wait` never revokes");
    assert!(revoke.0.is_ok(), "{:?}", revoke.0);
    assert!(revoke.2, "`revoke` revoked the pin");
    for (policy, took) in [("wait", wait.1), ("revoke", revoke.1)] {
        // The holder is owed the whole BREAK (a timed wait never ends
        // early). That the lease break and the pin wait share one deadline
        // (≈ BREAK in all, not 2 × BREAK) is checked without a clock: the
        // lease model check (`lease_model`, virtual time, with the per-break
        // defect as negative control) and `lease_semantics`'s
        // `an_earlier_operation_bound_tightens_a_lease_another_breaker_marked`.
        // Tests assert no wall-clock upper bound; the figure is printed.
        assert!(took >= BREAK, "{policy}: {took:?}");
        println!("{policy}: truncate over an unanswered pin took {took:?} (break time {BREAK:?})");
    }
}

// ---------------------------------------------------------------- item 5

#[test]
fn revoke_frees_blocks_only_after_the_device_confirms() {
    let fs = mount(TruncatePolicy::Revoke, Duration::from_millis(50));
    let h = file(&fs);
    let lease = unbreakable(&fs, &h, ByteRange::WHOLE);
    let free_before = fs.statfs().free;
    // The "device" records how many blocks were free when it was told to
    // stop: the pinned blocks must not be among them yet.
    let free_at_revoke = Arc::new(AtomicU64::new(u64::MAX));
    let (fs2, seen) = (Arc::downgrade(&fs), free_at_revoke.clone());
    let revoke: RevokeFn = Arc::new(move || {
        if let Some(fs) = fs2.upgrade() {
            seen.store(fs.statfs().free, Ordering::SeqCst);
        }
        Ok(())
    });
    let pin = h.pin_long_term(0, PINNED, Some(revoke)).unwrap();
    release(&fs, lease);
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    other.truncate(0).unwrap();
    assert_eq!(
        free_at_revoke.load(Ordering::SeqCst),
        free_before,
        "no block was freed before the device confirmed revocation"
    );
    assert!(pin.info().is_none(), "the pin is revoked");
    assert!(fs.pins().is_empty());
    let st = fs.statfs();
    assert_eq!(st.busy, 0);
    assert_eq!(st.free, free_before + FILE_BYTES / BLOCK, "all freed after");
}

#[test]
fn revoke_acts_as_defer_for_a_pin_that_cannot_be_revoked() {
    let fs = mount(TruncatePolicy::Revoke, Duration::from_millis(50));
    let h = file(&fs);
    let lease = unbreakable(&fs, &h, ByteRange::WHOLE);
    let pin = h.pin_long_term(0, PINNED, None).unwrap();
    release(&fs, lease);
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    other.truncate(0).unwrap();
    assert!(pin.info().is_some(), "nothing could revoke it");
    assert_eq!(fs.statfs().busy, PINNED / BLOCK, "its blocks stay busy");
    drop(pin);
    assert_eq!(fs.statfs().busy, 0);
}

#[test]
fn defer_finishes_at_once_whatever_lease_break_time() {
    let fs = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs);
    let lease = unbreakable(&fs, &h, ByteRange::WHOLE);
    let pin = h.pin_long_term(0, PINNED, None).unwrap();
    release(&fs, lease);
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    promptly("a truncate under `defer`", move || other.truncate(0)).unwrap();
    assert!(pin.info().is_some());
    assert_eq!(fs.statfs().busy, PINNED / BLOCK);
    drop(pin);
    assert_eq!(fs.statfs().busy, 0);
}

// ---------------------------------------------------------------- item 4

#[test]
fn a_tiny_positive_break_time_forces_rather_than_waits_forever() {
    let tiny = break_time_from_secs(0.000_000_000_1).unwrap();
    assert!(!tiny.is_zero(), "a positive break time is never `never`");
    let fs = mount(TruncatePolicy::Defer, tiny);
    let q = queue(&fs, HOLDER);
    let h = file(&fs);
    shared_layout(&fs, &h);
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    promptly("a break with a 0.1 ns lease-break-time", move || {
        other.truncate(0)
    })
    .unwrap();
    let kinds: Vec<EventKind> = events(&q, Duration::from_millis(100))
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Break, EventKind::Lost]);
    // The control: 0 really is "never" (the breaker would wait forever), so
    // only a non-blocking breaker can show it: the lease stays breaking.
    let fs = mount(TruncatePolicy::Defer, break_time_from_secs(0.0).unwrap());
    let h = file(&fs);
    shared_layout(&fs, &h);
    let nb = fs
        .open(
            OTHER,
            "/f",
            OpenFlags {
                nonblocking: true,
                ..OpenFlags::RDWR
            },
            0,
        )
        .unwrap();
    assert_eq!(nb.truncate(0).unwrap_err().errno(), Errno::EWOULDBLOCK);
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        nb.truncate(0).unwrap_err().errno(),
        Errno::EWOULDBLOCK,
        "never forced"
    );
}

/// A shared (breakable) layout lease of the holder over the whole file.
fn shared_layout(fs: &Fs, h: &Handle) {
    fs.leases()
        .set_lease(
            h.lease_file(),
            h.lease_handle(),
            OwnerId(HOLDER.owner),
            LeaseRequest::layout_shared(),
        )
        .unwrap();
}

/// Two owners, each with an unbreakable layout lease over the same written
/// range, can each pin it: pinning a range that is already written and
/// private changes no layout, so it needs no layout change — which the other
/// owner's unbreakable lease would refuse (`ETXTBSY`, and a spurious
/// `refused` notification to it). Pinning a hole still is a layout change,
/// and is still refused.
#[test]
fn owners_with_unbreakable_leases_over_one_written_range_each_pin_it() {
    let fs = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs);
    let g = fs.open(OTHER, "/f", OpenFlags::default(), 0).unwrap();
    let (q_holder, q_other) = (queue(&fs, HOLDER), queue(&fs, OTHER));
    let range = ByteRange::new(0, FILE_BYTES);
    let mine = unbreakable(&fs, &h, range);
    let theirs = fs
        .leases()
        .set_lease(
            g.lease_file(),
            g.lease_handle(),
            OwnerId(OTHER.owner),
            LeaseRequest::layout_shared().unbreakable().range(range),
        )
        .unwrap();
    let a = h.pin_long_term(0, PINNED, None).unwrap();
    let b = g.pin_long_term(0, PINNED, None).unwrap();
    assert_eq!(a.pool_ranges(), b.pool_ranges(), "the same blocks");
    assert!(events(&q_holder, Duration::from_millis(50)).is_empty());
    assert!(events(&q_other, Duration::from_millis(50)).is_empty());
    // A hole: pinning it allocates, a layout change the other lease refuses.
    h.fallocate(pinfs::fs::FallocMode::PunchHole, FILE_BYTES - BLOCK, BLOCK)
        .unwrap_err();
    drop((a, b));
    release(&fs, theirs);
    h.fallocate(pinfs::fs::FallocMode::PunchHole, FILE_BYTES - BLOCK, BLOCK)
        .unwrap();
    let theirs = fs
        .leases()
        .set_lease(
            g.lease_file(),
            g.lease_handle(),
            OwnerId(OTHER.owner),
            LeaseRequest::layout_shared().unbreakable().range(range),
        )
        .unwrap();
    assert_eq!(
        h.pin_long_term(FILE_BYTES - BLOCK, BLOCK, None)
            .unwrap_err()
            .errno(),
        Errno::ETXTBSY
    );
    release(&fs, theirs);
    release(&fs, mine);
}

/// Truncate by path breaks open leases too (as truncate(2) does); under
/// `fail` a pinned range is still refused *before any* lease break (SPEC
/// §4.3): the holder's open write lease is not even broken, and nothing
/// waits for it (with lease-break-time an hour, a wait would show as a hang).
#[test]
fn truncate_by_path_under_fail_refuses_before_breaking_open_leases() {
    let fs = mount(TruncatePolicy::Fail, LONG);
    let h = file(&fs);
    let lease = unbreakable(&fs, &h, ByteRange::new(0, PINNED));
    let _pin = h.pin_long_term(0, PINNED, None).unwrap();
    release(&fs, lease);
    let open_lease = fs
        .leases()
        .set_lease(
            h.lease_file(),
            h.lease_handle(),
            OwnerId(HOLDER.owner),
            LeaseRequest::write(),
        )
        .unwrap();
    let fs2 = fs.clone();
    let r = promptly("truncate by path under `fail`", move || {
        fs2.truncate_path(OTHER, "/f", BLOCK)
    });
    assert_eq!(r.unwrap_err().errno(), Errno::ETXTBSY);
    let info = fs.leases().lease(open_lease).expect("still held");
    assert_eq!(info.state, pinfs::lease::LeaseState::Active, "not broken");
    assert_eq!(h.stat().unwrap().size, FILE_BYTES);
    release(&fs, open_lease);
}

/// A revocation the device cannot confirm keeps its pin: under `revoke`
/// the layout change still goes ahead (at lease-break-time), but the pinned
/// blocks it removed stay busy — never free — until the pin drops.
#[test]
fn an_unconfirmed_revocation_keeps_the_blocks_busy() {
    let fs = mount(TruncatePolicy::Revoke, Duration::from_millis(50));
    let h = file(&fs);
    let lease = unbreakable(&fs, &h, ByteRange::WHOLE);
    let failing: RevokeFn = Arc::new(|| Err(Errno::EIO.into()));
    let pin = h.pin_long_term(0, PINNED, Some(failing)).unwrap();
    release(&fs, lease);
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    other.truncate(0).unwrap();
    assert_eq!(
        fs.statfs().busy,
        PINNED / BLOCK,
        "not confirmed: still busy"
    );
    assert_eq!(fs.pins().len(), 1, "the pin stays");
    drop(pin);
    assert_eq!(fs.statfs().busy, 0);
}
