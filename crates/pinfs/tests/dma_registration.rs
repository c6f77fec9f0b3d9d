//! Device registrations at the library boundary (SPEC §6.1–6.4): each rule
//! of who may register (Dan Williams' `MAP_DIRECT` model, Ira Weiny's
//! unbreakable-lease model, on-demand paging, `ENXIO`, `EOPNOTSUPP`), the
//! `lease_direct` flow (owner told, owner deregisters, the breaker
//! proceeds; or an owner that never reacts, revoked at lease-break-time
//! before any block is freed), and on-demand paging re-faulting after a
//! punch. Each test that shows a protection also shows its absence being
//! detected (a control).

mod dma_support;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use dma_support::*;
use pinfs::dma::{Completion, Device, DeviceCaps, RevokeMode, PAGE_BYTES};
use pinfs::fs::{FallocMode, Fs, RegistrationId, TruncatePolicy};
use pinfs::lease::{ByteRange, EventKind, LeaseRequest, OwnerId};
use pinfs::media::Media;
use pinfs::pin::PinVia;
use pinfs::Errno;

const FILE: u64 = 16 * PAGE_BYTES;
const LONG: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_millis(150);
const PROMPTLY: Duration = Duration::from_secs(20);

/// The device under test: the shipped software RDMA device.
fn device(pool: &Arc<dyn Media>) -> Arc<dyn Device> {
    soft(pool)
}

fn errno(r: pinfs::Result<impl std::fmt::Debug>) -> Errno {
    r.expect_err("must fail").errno()
}

/// The pool byte offsets of the registered pages (from its pins).
fn pinned_pages(fs: &Fs, id: RegistrationId) -> Vec<u64> {
    fs.pins()
        .iter()
        .filter(|p| p.via == PinVia::Registration(id))
        .flat_map(|p| p.blocks.clone())
        .flat_map(|r| (r.start..r.start + r.len).map(|b| b * PAGE_BYTES))
        .collect()
}

fn pool_page(pool: &Arc<dyn Media>, at: u64) -> Vec<u8> {
    let mut b = vec![0; PAGE_BYTES as usize];
    pool.read(at, &mut b).unwrap();
    b
}

#[test]
fn map_direct_with_a_revocable_device_registers_in_both_modes() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_direct(&h, FILE);
    let dev = device(&pool);
    let a = m
        .register(dev.clone(), 0, 4 * PAGE_BYTES, RevokeMode::Invalidate)
        .unwrap();
    let b = m
        .register(
            dev.clone(),
            8 * PAGE_BYTES,
            4 * PAGE_BYTES,
            RevokeMode::Redirect,
        )
        .unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(a.write(100, b"device").unwrap(), Completion::Ok);
    assert_eq!(b.write(0, &[9; 10]).unwrap(), Completion::Ok);
    let mut got = [0u8; 6];
    h.pread(100, &mut got).unwrap();
    assert_eq!(&got, b"device");
    let mut got = [0u8; 10];
    h.pread(8 * PAGE_BYTES, &mut got).unwrap();
    assert_eq!(got, [9; 10]);
    let mut back = [0u8; 6];
    assert_eq!(a.read(100, &mut back).unwrap(), Completion::Ok);
    assert_eq!(&back, b"device");
    // Listed, attributed, with pins taken through the registration.
    let regs = fs.registrations();
    assert_eq!(regs.len(), 2);
    assert_eq!(regs[0].id, a.id());
    assert_eq!(
        (regs[0].owner, regs[0].offset, regs[0].len),
        (OWNER.owner, 0, 4 * PAGE_BYTES)
    );
    assert_eq!(regs[1].mode, RevokeMode::Redirect);
    assert_eq!(regs[1].keys, b.keys());
    assert_eq!(pinned_pages(&fs, a.id()).len(), 4);
    assert_eq!(pinned_pages(&fs, b.id()).len(), 4);
    // Deregistration releases pins and the listing; dropping does too.
    a.deregister().unwrap();
    drop(b);
    assert!(fs.registrations().is_empty());
    assert!(fs.pins().is_empty());
}

#[test]
fn a_range_outside_the_mapping_or_unaligned_is_einval() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_direct(&h, FILE);
    let dev = device(&pool);
    let inval = |o, l| errno(m.register(dev.clone(), o, l, RevokeMode::Invalidate));
    assert_eq!(inval(0, FILE + PAGE_BYTES), Errno::EINVAL);
    assert_eq!(inval(1, PAGE_BYTES), Errno::EINVAL);
    assert_eq!(inval(0, 0), Errno::EINVAL);
    assert_eq!(inval(u64::MAX - 4095, PAGE_BYTES), Errno::EINVAL);
}

#[test]
fn a_plain_shared_mapping_without_the_lease_is_eopnotsupp() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_shared(&h, FILE);
    let dev = device(&pool);
    for mode in [RevokeMode::Invalidate, RevokeMode::Redirect] {
        assert_eq!(
            errno(m.register(dev.clone(), 0, FILE, mode)),
            Errno::EOPNOTSUPP
        );
    }
    assert!(fs.pins().is_empty() && fs.registrations().is_empty());
}

#[test]
fn the_owners_unbreakable_lease_entitles_a_plain_shared_mapping() {
    let (fs, pool) = mount(TruncatePolicy::Fail, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_shared(&h, FILE);
    fs.leases()
        .set_lease(
            h.lease_file(),
            h.lease_handle(),
            OwnerId(OWNER.owner),
            LeaseRequest::layout_shared()
                .unbreakable()
                .range(ByteRange::new(0, FILE)),
        )
        .unwrap();
    let r = m
        .register(device(&pool), 0, FILE, RevokeMode::Invalidate)
        .unwrap();
    assert_eq!(r.write(0, b"ira").unwrap(), Completion::Ok);
    let mut got = [0u8; 3];
    h.pread(0, &mut got).unwrap();
    assert_eq!(&got, b"ira");
    // Nobody else can change the layout: another actor's truncate is refused.
    let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
    assert_eq!(errno(other.truncate(0)), Errno::ETXTBSY);
    // The owner's own truncate over registered blocks follows `fail`.
    assert_eq!(errno(h.truncate(0)), Errno::ETXTBSY);
    assert!(!r.is_revoked());
}

#[test]
fn an_odp_device_registers_through_a_plain_mapping_without_pins_or_lease() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_shared(&h, FILE);
    let r = m.register(device(&pool), 0, FILE, RevokeMode::Odp).unwrap();
    assert!(fs.pins().is_empty(), "on-demand paging pins nothing");
    let leases = fs.leases().list_file(h.lease_file());
    assert!(leases.is_empty(), "and takes no lease: {leases:?}");
    assert_eq!(r.write(PAGE_BYTES, b"odp").unwrap(), Completion::Ok);
    let mut got = [0u8; 3];
    h.pread(PAGE_BYTES, &mut got).unwrap();
    assert_eq!(&got, b"odp");
    assert_eq!(fs.registrations()[0].mode, RevokeMode::Odp);
}

#[test]
fn a_device_lacking_the_mode_is_eopnotsupp() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_direct(&h, FILE);
    // The shipped device that cannot page on demand: io_uring.
    let ring = uring(&pool);
    assert!(!ring.caps().odp);
    assert_eq!(
        errno(m.register(ring.clone(), 0, FILE, RevokeMode::Odp)),
        Errno::EOPNOTSUPP
    );
    // Its control: in a mode it has, the same registration works.
    drop(m.register(ring, 0, FILE, RevokeMode::Invalidate).unwrap());
    let pinned_only: Arc<dyn Device> = Toy::new(
        pool.clone(),
        DeviceCaps {
            invalidate: true,
            redirect: false,
            odp: false,
        },
    );
    assert_eq!(
        errno(m.register(pinned_only.clone(), 0, FILE, RevokeMode::Odp)),
        Errno::EOPNOTSUPP
    );
    assert_eq!(
        errno(m.register(pinned_only.clone(), 0, FILE, RevokeMode::Redirect)),
        Errno::EOPNOTSUPP
    );
    let unrevocable: Arc<dyn Device> = Toy::new(pool.clone(), DeviceCaps::default());
    assert_eq!(
        errno(m.register(unrevocable, 0, FILE, RevokeMode::Invalidate)),
        Errno::EOPNOTSUPP
    );
    assert!(fs.pins().is_empty() && fs.registrations().is_empty());
    // The control: the same device in a mode it has registers.
    m.register(pinned_only, 0, FILE, RevokeMode::Invalidate)
        .unwrap();
}

#[test]
fn a_broken_map_direct_lease_is_enxio() {
    let (fs, pool) = mount(TruncatePolicy::Defer, SHORT);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_direct(&h, FILE);
    let dev = device(&pool);
    // The control: registering works before the break.
    drop(
        m.register(dev.clone(), 0, PAGE_BYTES, RevokeMode::Invalidate)
            .unwrap(),
    );
    let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
    other.truncate(FILE / 2).unwrap();
    assert!(m.is_invalidated());
    assert_eq!(
        errno(m.register(dev.clone(), 0, PAGE_BYTES, RevokeMode::Invalidate)),
        Errno::ENXIO
    );
    // An on-demand device too: the mapping itself is invalidated.
    assert_eq!(
        errno(m.register(dev, 0, PAGE_BYTES, RevokeMode::Odp)),
        Errno::ENXIO
    );
}

/// A `MAP_DIRECT` mapping whose lease is *breaking* (another actor's
/// truncate waits on it, lease-break-time an hour) is `ENXIO` too — for
/// every mode — and the registration that was refused holds nothing. The
/// owner then lets go (unmaps), and the truncate completes.
#[test]
fn a_breaking_map_direct_lease_is_enxio() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let events = fs.leases().owner_events(OwnerId(OWNER.owner)).unwrap();
    let m = map_direct(&h, FILE);
    let dev = device(&pool);
    let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
    let truncate = thread::spawn(move || other.truncate(0));
    let ev = events.recv_timeout(PROMPTLY).unwrap().expect("the break");
    assert_eq!(ev.kind, EventKind::Break);
    assert!(!m.is_invalidated(), "breaking, not yet broken");
    for mode in [
        RevokeMode::Invalidate,
        RevokeMode::Redirect,
        RevokeMode::Odp,
    ] {
        assert_eq!(
            errno(m.register(dev.clone(), 0, PAGE_BYTES, mode)),
            Errno::ENXIO,
            "{mode:?}"
        );
    }
    assert!(fs.registrations().is_empty() && fs.pins().is_empty());
    drop(m);
    truncate.join().unwrap().unwrap();
    assert_eq!(h.stat().unwrap().size, 0);
}

/// A mapping that cannot write the file (read-only, private) entitles no
/// registration: `EOPNOTSUPP`, whatever the device and mode.
#[test]
fn a_mapping_that_cannot_write_the_file_is_eopnotsupp() {
    let (fs, pool) = mount(TruncatePolicy::Defer, SHORT);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let dev = device(&pool);
    for flags in [
        pinfs::map::MapFlags::PRIVATE,
        pinfs::map::MapFlags::SHARED.read_only(),
    ] {
        let m = h.mmap(0, FILE, flags).unwrap();
        for mode in [RevokeMode::Invalidate, RevokeMode::Odp] {
            assert_eq!(
                errno(m.register(dev.clone(), 0, PAGE_BYTES, mode)),
                Errno::EOPNOTSUPP,
                "{flags:?} {mode:?}"
            );
        }
    }
    // The control: a shared writable mapping registers on demand.
    let m = h.mmap(0, FILE, pinfs::map::MapFlags::SHARED).unwrap();
    drop(m.register(dev, 0, PAGE_BYTES, RevokeMode::Odp).unwrap());
}

/// Another actor truncates; the owner is told, deregisters and unmaps; the
/// truncate completes without waiting for lease-break-time.
#[test]
fn lease_direct_the_owner_told_deregisters_and_the_truncate_completes() {
    let (fs, pool) = mount(TruncatePolicy::Revoke, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let events = fs.leases().owner_events(OwnerId(OWNER.owner)).unwrap();
    let m = map_direct(&h, FILE);
    let r = m
        .register(device(&pool), 0, FILE, RevokeMode::Invalidate)
        .unwrap();
    let fs2 = fs.clone();
    let truncate = thread::spawn(move || {
        let other = fs2
            .open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0)
            .unwrap();
        other.truncate(0)
    });
    let mut broke = 0;
    while broke < 2 {
        let ev = events.recv_timeout(PROMPTLY).unwrap().expect("owner told");
        assert_eq!(ev.kind, EventKind::Break);
        broke += 1;
    }
    assert!(!r.is_revoked(), "told, not yet revoked");
    r.deregister().unwrap();
    drop(m);
    truncate.join().unwrap().unwrap();
    assert_eq!(fs.statfs().busy, 0);
    assert!(fs.pins().is_empty() && fs.registrations().is_empty());
}

/// An owner that never reacts: at lease-break-time the device is revoked
/// before the truncate frees anything; with `invalidate` its next write
/// fails, with `redirect` it lands nowhere; another file given the blocks
/// is untouched.
#[test]
fn lease_direct_an_unresponsive_owner_is_revoked_at_lease_break_time() {
    for policy in [
        TruncatePolicy::Revoke,
        TruncatePolicy::Defer,
        TruncatePolicy::Wait,
    ] {
        for (mode, make) in [RevokeMode::Invalidate, RevokeMode::Redirect]
            .into_iter()
            .flat_map(|m| [(m, soft as fn(&_) -> _), (m, uring)])
        {
            let (fs, pool) = mount(policy, SHORT);
            let h = file(&fs, OWNER, "/f", FILE, 1);
            let m = map_direct(&h, FILE);
            let r = m.register(make(&pool), 0, FILE, mode).unwrap();
            let policy = format!("{policy} {}", r.device().name());
            let pages = pinned_pages(&fs, r.id());
            assert_eq!(pages.len() as u64, FILE / PAGE_BYTES);
            let free_before = fs.statfs().free;
            let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
            other.truncate(0).unwrap();
            assert!(
                r.is_revoked(),
                "{policy} {mode}: revoked before the truncate returned"
            );
            assert!(fs.registrations()[0].revoked);
            assert_eq!(fs.statfs().busy, 0, "{policy} {mode}: freed once revoked");
            assert!(fs.statfs().free >= free_before + FILE / PAGE_BYTES);
            // Another file takes the blocks.
            let g = file(&fs, OTHER, "/g", 4 * FILE, 0x5a);
            let c = r.write(0, &vec![0xee; FILE as usize]).unwrap();
            match mode {
                RevokeMode::Invalidate => assert_eq!(c, Completion::ProtectionError),
                _ => assert_eq!(c, Completion::Ok, "redirect: no error"),
            }
            for &p in &pages {
                assert!(
                    !pool_page(&pool, p).contains(&0xee),
                    "{policy} {mode}: a revoked write reached the pool"
                );
            }
            let mut back = vec![0; 4 * FILE as usize];
            g.pread(0, &mut back).unwrap();
            assert!(back.iter().all(|&b| b == 0x5a));
            drop(r);
            drop(m);
        }
    }
}

/// The control of the test above: with revocation switched off, the
/// device's write after the truncate lands in the file given the blocks.
#[test]
fn control_without_revocation_the_new_file_is_corrupted() {
    let (fs, pool) = mount(TruncatePolicy::Revoke, SHORT);
    fs.disable_dma_revocation_for_tests();
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_direct(&h, FILE);
    let r = m
        .register(device(&pool), 0, FILE, RevokeMode::Invalidate)
        .unwrap();
    let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
    other.truncate(0).unwrap();
    let g = file(&fs, OTHER, "/g", 4 * FILE, 0x5a);
    assert_eq!(
        r.write(0, &vec![0xee; FILE as usize]).unwrap(),
        Completion::Ok
    );
    let mut back = vec![0; 4 * FILE as usize];
    g.pread(0, &mut back).unwrap();
    let corrupt = back.iter().filter(|&&b| b == 0xee).count();
    println!("control: {corrupt} corrupt bytes in /g");
    assert!(
        corrupt > 0,
        "the control must detect the device writing into /g"
    );
}

#[test]
fn fail_refuses_another_actors_truncate_over_registered_blocks() {
    let (fs, pool) = mount(TruncatePolicy::Fail, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let events = fs.leases().owner_events(OwnerId(OWNER.owner)).unwrap();
    let m = map_direct(&h, FILE);
    let r = m
        .register(device(&pool), 0, FILE, RevokeMode::Invalidate)
        .unwrap();
    let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
    assert_eq!(errno(other.truncate(0)), Errno::ETXTBSY);
    let ev = events.recv_timeout(PROMPTLY).unwrap().expect("holder told");
    assert_eq!(ev.kind, EventKind::Refused);
    assert_eq!(r.write(0, b"still").unwrap(), Completion::Ok);
}

/// SPEC §6.4: after a punch, the device's next write re-faults into a new
/// block; the old block, given to another file, is untouched.
#[test]
fn odp_refaults_after_a_punch_and_never_reaches_the_old_block() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_shared(&h, FILE);
    let r = m.register(device(&pool), 0, FILE, RevokeMode::Odp).unwrap();
    assert_eq!(
        r.write(0, &[0xd1; PAGE_BYTES as usize]).unwrap(),
        Completion::Ok
    );
    let old = h.fiemap().unwrap()[0].physical;
    h.fallocate(FallocMode::PunchHole, 0, PAGE_BYTES).unwrap();
    let g = file(&fs, OTHER, "/g", PAGE_BYTES, 0x77);
    let reused = g.fiemap().unwrap()[0].physical == old;
    assert_eq!(
        r.write(0, &[0xd2; PAGE_BYTES as usize]).unwrap(),
        Completion::Ok
    );
    let mut back = vec![0; PAGE_BYTES as usize];
    h.pread(0, &mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0xd2),
        "the write re-faulted into the file"
    );
    assert_ne!(h.fiemap().unwrap()[0].physical, old);
    g.pread(0, &mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0x77),
        "the old block's new owner is untouched"
    );
    println!("old block reused by /g: {reused}");
    assert!(
        reused,
        "the allocator reuses the punched block (what makes the test able to fail)"
    );
    // A read of a hole allocates (the device keeps the translation).
    h.fallocate(FallocMode::PunchHole, PAGE_BYTES, PAGE_BYTES)
        .unwrap();
    let mut one = [0u8; 1];
    assert_eq!(r.read(PAGE_BYTES, &mut one).unwrap(), Completion::Ok);
    assert_eq!(one, [0]);
}

/// The control of the test above: without invalidation the device's write
/// after the punch lands in the old block, now `/g`'s.
#[test]
fn control_without_odp_invalidation_the_old_blocks_new_owner_is_corrupted() {
    let (fs, pool) = mount(TruncatePolicy::Defer, LONG);
    fs.disable_dma_revocation_for_tests();
    let h = file(&fs, OWNER, "/f", FILE, 1);
    let m = map_shared(&h, FILE);
    let r = m.register(device(&pool), 0, FILE, RevokeMode::Odp).unwrap();
    assert_eq!(
        r.write(0, &[0xd1; PAGE_BYTES as usize]).unwrap(),
        Completion::Ok
    );
    h.fallocate(FallocMode::PunchHole, 0, PAGE_BYTES).unwrap();
    let g = file(&fs, OTHER, "/g", PAGE_BYTES, 0x77);
    assert_eq!(
        r.write(0, &[0xd2; PAGE_BYTES as usize]).unwrap(),
        Completion::Ok
    );
    let mut back = vec![0; PAGE_BYTES as usize];
    g.pread(0, &mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0xd2),
        "the control must see /g overwritten"
    );
}

/// A device whose revocation takes a while and looks, meanwhile, at how many
/// blocks are free: none of the registered ones may be yet.
#[derive(Debug)]
struct SlowRevoke {
    inner: Arc<dyn Device>,
    fs: parking_lot::Mutex<std::sync::Weak<Fs>>,
    free_during: parking_lot::Mutex<Option<u64>>,
}

impl Device for SlowRevoke {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn caps(&self) -> DeviceCaps {
        self.inner.caps()
    }
    fn register(&self, b: pinfs::dma::Backing, m: RevokeMode) -> pinfs::Result<pinfs::dma::MrKeys> {
        self.inner.register(b, m)
    }
    fn revoke(&self, mr: pinfs::dma::MrId) -> pinfs::Result<()> {
        thread::sleep(Duration::from_millis(50));
        if let Some(fs) = self.fs.lock().upgrade() {
            *self.free_during.lock() = Some(fs.statfs().free);
        }
        self.inner.revoke(mr)
    }
    fn is_revoked(&self, mr: pinfs::dma::MrId) -> bool {
        self.inner.is_revoked(mr)
    }
    fn invalidate_pages(&self, mr: pinfs::dma::MrId, f: u64, c: u64) -> pinfs::Result<()> {
        self.inner.invalidate_pages(mr, f, c)
    }
    fn deregister(&self, mr: pinfs::dma::MrId) -> pinfs::Result<()> {
        self.inner.deregister(mr)
    }
    fn write(&self, mr: pinfs::dma::MrId, o: u64, d: &[u8]) -> pinfs::Result<Completion> {
        self.inner.write(mr, o, d)
    }
    fn read(&self, mr: pinfs::dma::MrId, o: u64, b: &mut [u8]) -> pinfs::Result<Completion> {
        self.inner.read(mr, o, b)
    }
}

#[test]
fn blocks_are_freed_only_after_revocation_is_confirmed() {
    for policy in [TruncatePolicy::Revoke, TruncatePolicy::Defer] {
        let (fs, pool) = mount(policy, SHORT);
        let slow = Arc::new(SlowRevoke {
            inner: device(&pool),
            fs: parking_lot::Mutex::new(Arc::downgrade(&fs)),
            free_during: parking_lot::Mutex::new(None),
        });
        let h = file(&fs, OWNER, "/f", FILE, 1);
        let m = map_direct(&h, FILE);
        let r = m
            .register(slow.clone(), 0, FILE, RevokeMode::Invalidate)
            .unwrap();
        let free_before = fs.statfs().free;
        let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
        other.truncate(0).unwrap();
        assert_eq!(
            *slow.free_during.lock(),
            Some(free_before),
            "{policy}: nothing freed while revoking"
        );
        assert!(
            fs.statfs().free >= free_before + FILE / PAGE_BYTES,
            "{policy}: freed after"
        );
        drop(r);
    }
}

/// Ira Weiny's model: the owner's own truncate over its registered blocks
/// follows the policy — `revoke` revokes the device at lease-break-time,
/// `defer` leaves the device reaching busy blocks until deregistration.
#[test]
fn the_owners_own_layout_change_follows_the_policy() {
    for policy in [TruncatePolicy::Revoke, TruncatePolicy::Defer] {
        let (fs, pool) = mount(policy, SHORT);
        let h = file(&fs, OWNER, "/f", FILE, 1);
        let m = map_shared(&h, FILE);
        fs.leases()
            .set_lease(
                h.lease_file(),
                h.lease_handle(),
                OwnerId(OWNER.owner),
                LeaseRequest::layout_shared()
                    .unbreakable()
                    .range(ByteRange::new(0, FILE)),
            )
            .unwrap();
        let r = m
            .register(device(&pool), 0, FILE, RevokeMode::Invalidate)
            .unwrap();
        h.truncate(0).unwrap();
        let busy = fs.statfs().busy;
        match policy {
            TruncatePolicy::Revoke => {
                assert!(r.is_revoked());
                assert_eq!(busy, 0);
                assert_eq!(r.write(0, b"x").unwrap(), Completion::ProtectionError);
            }
            _ => {
                assert!(!r.is_revoked());
                assert_eq!(
                    busy,
                    FILE / PAGE_BYTES,
                    "defer: the registered blocks stay busy"
                );
                assert_eq!(r.write(0, b"x").unwrap(), Completion::Ok);
                r.deregister().unwrap();
                assert_eq!(fs.statfs().busy, 0, "freed at deregistration");
            }
        }
    }
}
