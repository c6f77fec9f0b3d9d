//! Mappings in client processes (SPEC §8), end to end inside one process:
//! the file system's `RemoteMapping` reaches a `ClientMapping` through a
//! loopback `RemoteSpace` whose "service thread" applies each placement
//! and acknowledges (as the client library's does across the socket), and
//! the client's write faults come back through a `FaultForwarder` that
//! calls `RemoteMapping::write_fault` (as the daemon does for a `Fault`
//! request).
//!
//! Shown: loads and stores through the client's mapping reach the file;
//! holes read zeros without allocating; a store into a hole allocates;
//! truncate, punch, reflink and copy-on-write re-place the client's pages
//! before any block is reused — SPEC §4.4, other files never change — with
//! its negative control (re-placement of client mappings off ⇒ detected);
//! a client that does not acknowledge keeps its blocks busy until its
//! `RemoteMapping` is dropped, with its negative control (holding off ⇒ a
//! new file gets the blocks and the stale client changes it); a reflink
//! under a client that does not acknowledge never shares a block the
//! client stores into, with its negative control (the write-protect before
//! the commit off ⇒ the clone changes), and one that fails after that
//! write-protect gives the client its pages back; `MAP_DIRECT`
//! invalidation at lease-break-time makes the client's pages `SIGBUS`;
//! pins, `persist` and a soft-device registration through a client mapping.

#![allow(unsafe_code)]

mod map_support;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use map_support::*;
use parking_lot::RwLock;
use pinfs::dma::{Completion, RevokeMode};
use pinfs::fs::{Cred, FallocMode, Fs, Handle, OpenFlags};
use pinfs::map::client::{ClientMapping, FaultForwarder};
use pinfs::map::{MapFlags, RemoteKind, RemoteMapping, RemotePiece, RemoteSpace, Unacknowledged};
use pinfs::media::Media;
use pinfs::pin::PinVia;
use pinfs::{Errno, Result};

const LONG: Duration = Duration::from_secs(45);

/// How long the loopback waits for its service thread: the analogue of
/// lease-break-time (generous: the thread only changes page tables).
const ACK_WAIT: Duration = Duration::from_secs(20);

type Request = (Vec<RemotePiece>, mpsc::Sender<Result<()>>);

/// The loopback `RemoteSpace`: a service thread applies each placement to
/// the client mapping and acknowledges; `hung` models a client that stopped
/// acknowledging (it applies nothing, and the placement times out at once).
struct Loopback {
    tx: parking_lot::Mutex<mpsc::Sender<Request>>,
    hung: AtomicBool,
    placements: AtomicU64,
}

impl RemoteSpace for Loopback {
    fn place(&self, map: u64, pieces: &[RemotePiece]) -> std::result::Result<(), Unacknowledged> {
        let unacked = |reason: &str| Unacknowledged {
            map,
            reason: reason.into(),
        };
        if self.hung.load(Ordering::Acquire) {
            return Err(unacked("the client is hung (test)"));
        }
        assert!(pieces.len() <= pinfs::map::MAX_PLACE_PIECES);
        self.placements.fetch_add(1, Ordering::Relaxed);
        let (ack_tx, ack_rx) = mpsc::channel();
        self.tx
            .lock()
            .send((pieces.to_vec(), ack_tx))
            .map_err(|_| unacked("service thread gone"))?;
        match ack_rx.recv_timeout(ACK_WAIT) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unacked(&e.to_string())),
            Err(_) => Err(unacked("no acknowledgement")),
        }
    }
}

/// Where the client's write faults go: the daemon's `RemoteMapping`, once
/// `mmap_remote` returned (faults cannot come before: nothing is served yet).
#[derive(Default)]
struct Forwarder {
    remote: RwLock<Option<Arc<RemoteMapping>>>,
}

impl FaultForwarder for Forwarder {
    fn write_fault(&self, _map: u64, page: u64) -> Result<()> {
        let remote = self.remote.read().clone().ok_or(Errno::ENXIO)?;
        remote.write_fault(page)
    }
}

/// One mapping in a "client": its two halves and the loopback between.
struct Pair {
    client: Arc<ClientMapping>,
    forwarder: Arc<Forwarder>,
    space: Arc<Loopback>,
}

impl Pair {
    fn remote(&self) -> Arc<RemoteMapping> {
        self.forwarder.remote.read().clone().expect("mapped")
    }

    /// The daemon forgets the mapping (the client unmapped, or died).
    fn drop_remote(&self) {
        self.forwarder.remote.write().take();
    }
}

fn pool_fd(fs: &Fs) -> Arc<OwnedFd> {
    let mem = fs.media().mapping().expect("a mapped pool");
    Arc::new(mem.fd.try_clone_to_owned().unwrap())
}

/// Map `[offset, offset+len)` of `h` "in a client": reserve the client's
/// mapping first, start its service thread, then ask the file system.
fn map_remote(h: &Handle, fs: &Fs, offset: u64, len: u64, flags: MapFlags) -> Result<Pair> {
    let forwarder = Arc::new(Forwarder::default());
    let client = Arc::new(ClientMapping::reserve(
        len,
        offset,
        flags,
        pool_fd(fs),
        forwarder.clone(),
    )?);
    let (tx, rx) = mpsc::channel::<Request>();
    let applier = Arc::downgrade(&client);
    thread::spawn(move || {
        for (pieces, ack) in rx {
            let r = match applier.upgrade() {
                Some(c) => c.apply(&pieces),
                None => Ok(()),
            };
            let _ = ack.send(r);
        }
    });
    let space = Arc::new(Loopback {
        tx: parking_lot::Mutex::new(tx),
        hung: AtomicBool::new(false),
        placements: AtomicU64::new(0),
    });
    let remote = h.mmap_remote(offset, len, flags, space.clone())?;
    *forwarder.remote.write() = Some(Arc::new(remote));
    Ok(Pair {
        client,
        forwarder,
        space,
    })
}

fn cload(c: &ClientMapping, offset: u64) -> u8 {
    assert!(offset < c.len());
    // SAFETY: inside the client mapping's reserved range, which lives as
    // long as `c`; volatile, through no reference (the pages change under
    // us whenever the layout does).
    unsafe { std::ptr::read_volatile(c.as_ptr().add(offset as usize)) }
}

fn cstore(c: &ClientMapping, offset: u64, byte: u8) {
    assert!(offset < c.len());
    // SAFETY: as in `cload`.
    unsafe { std::ptr::write_volatile(c.as_ptr().add(offset as usize), byte) }
}

fn cread(c: &ClientMapping, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    c.read(offset, &mut buf)?;
    Ok(buf)
}

#[test]
fn loads_and_stores_reach_the_file_holes_read_zeros_and_stores_allocate() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 8 * PAGE, 0x11);
    h.truncate(16 * PAGE).unwrap();
    let p = map_remote(&h, &fs, 0, 16 * PAGE, MapFlags::SHARED).unwrap();
    let c = &p.client;
    assert_eq!(p.space.placements.load(Ordering::Relaxed), 1, "one batch");
    // Written blocks are the pool itself: loads see the file, stores reach it.
    assert_eq!(cload(c, 5), 0x11);
    assert_eq!(
        c.kind_at(0),
        Some(RemoteKind::Pool {
            pool_offset: h.fiemap().unwrap()[0].physical
        })
    );
    cstore(c, 3 * PAGE + 9, 0x77);
    assert_eq!(contents(&h, 3 * PAGE + 9, 1), [0x77]);
    h.pwrite(PAGE, &[0x22; 3]).unwrap();
    assert_eq!(cload(c, PAGE + 2), 0x22);
    // Holes read zeros (raw loads answered by the client's own fault
    // service, and `read`) and allocate nothing.
    let free = fs.statfs().free;
    for page in 8..16 {
        assert_eq!(cload(c, page * PAGE + 100), 0);
    }
    assert_eq!(
        cread(c, 8 * PAGE, 8 * PAGE as usize).unwrap(),
        vec![0; 8 * PAGE as usize]
    );
    assert_eq!(fs.statfs().free, free, "reading holes allocates nothing");
    // A raw store into a hole that was read (write-protected zeros) and one
    // into a hole never touched: the daemon allocates, re-places, wakes.
    cstore(c, 9 * PAGE + 1, 0x42);
    cstore(c, 12 * PAGE, 0x43);
    c.write(14 * PAGE + 4090, &[0x44; 10]).unwrap();
    assert_eq!(fs.statfs().free, free - 4);
    assert_eq!(contents(&h, 9 * PAGE, 2), [0, 0x42]);
    assert_eq!(contents(&h, 12 * PAGE, 2), [0x43, 0]);
    assert_eq!(contents(&h, 14 * PAGE + 4089, 12)[..3], [0, 0x44, 0x44]);
    assert_eq!(cload(c, 9 * PAGE + 1), 0x42);
    assert!(matches!(c.kind_at(9), Some(RemoteKind::Pool { .. })));
    // Past end of file: SIGBUS pages (EFAULT through `read`).
    h.truncate(10 * PAGE).unwrap();
    assert_eq!(c.kind_at(10), Some(RemoteKind::Sigbus));
    assert_eq!(
        c.read(10 * PAGE, &mut [0]).unwrap_err().errno(),
        Errno::EFAULT
    );
    assert_eq!(cload(c, 9 * PAGE + 1), 0x42);
    p.remote().persist(0, 10 * PAGE).unwrap();
    // The client unmaps first, then the daemon forgets it.
    c.tear_down().unwrap();
    p.drop_remote();
    assert_eq!(fs.mapping_count(), 0);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn punch_truncate_reflink_and_copy_on_write_replace_client_pages() {
    let fs = mount(LONG);
    let a = file(&fs, "/a", 4 * PAGE, 0);
    for page in 0..4 {
        a.pwrite(page * PAGE, &[page as u8 + 1; 8]).unwrap();
    }
    let p = map_remote(&a, &fs, 0, 4 * PAGE, MapFlags::SHARED).unwrap();
    let c = &p.client;
    // Punch: the client reads zeros at once, never the old block — one
    // acknowledged placement for the whole change.
    let before = p.space.placements.load(Ordering::Relaxed);
    a.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
    assert_eq!(p.space.placements.load(Ordering::Relaxed), before + 1);
    assert_eq!(c.kind_at(1), Some(RemoteKind::Served { copy_of: None }));
    assert_eq!(cread(c, PAGE, 8).unwrap(), [0; 8]);
    // Reflink /a to /b: the client's shared blocks become served copies
    // (never stored to in place); a store copies first, /b keeps its data.
    let b = file(&fs, "/b", 0, 0);
    b.reflink(&a, None).unwrap();
    assert!(matches!(
        c.kind_at(0),
        Some(RemoteKind::Served { copy_of: Some(_) })
    ));
    assert_eq!(cload(c, 2 * PAGE), 3, "a copy of the shared block");
    cstore(c, 2 * PAGE, 0x99);
    assert_eq!(contents(&a, 2 * PAGE, 2), [0x99, 3]);
    assert_eq!(contents(&b, 2 * PAGE, 2), [3, 3], "the clone never changes");
    assert!(matches!(c.kind_at(2), Some(RemoteKind::Pool { .. })));
    // Truncate: pages past the end raise SIGBUS in the client.
    a.truncate(PAGE).unwrap();
    assert_eq!(c.kind_at(1), Some(RemoteKind::Sigbus));
    assert_eq!(
        c.read(2 * PAGE, &mut [0]).unwrap_err().errno(),
        Errno::EFAULT
    );
    drop(p);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

/// SPEC §4.4 across the loopback: writer threads store through client
/// mappings of their own files while those files are punched and truncated
/// under them; the checker creates, fills and verifies other files. No
/// other file ever shows a writer's tag — unless re-placement of client
/// mappings is switched off.
fn remote_invariant(replace: bool, rounds: usize) -> u64 {
    const WRITERS: usize = 2;
    const PAGES: u64 = 32;
    let fs = mount(LONG);
    if !replace {
        fs.disable_remote_replacement_for_tests();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let h = file(&fs, &format!("/w{w}"), PAGES * PAGE, 0);
        let p = map_remote(&h, &fs, 0, PAGES * PAGE, MapFlags::SHARED).unwrap();
        let stop = stop.clone();
        threads.push(thread::spawn(move || {
            let tag = [0xd0 + w as u8; 64];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let page = i % PAGES;
                // EFAULT past a truncated end of file is expected.
                let _ = p.client.write(page * PAGE + (i * 64) % PAGE, &tag);
                if i.is_multiple_of(97) {
                    let at = (i * 7) % PAGES;
                    let _ = h.fallocate(FallocMode::PunchHole, at * PAGE, 2 * PAGE);
                    if i.is_multiple_of(3) {
                        let _ = h.truncate((i % PAGES) * PAGE);
                        let _ = h.truncate(PAGES * PAGE);
                    }
                }
                i += 1;
            }
            drop(p);
            i
        }));
    }
    let mut corrupt = 0;
    for r in 0..rounds {
        let path = format!("/c{}", r % 4);
        let _ = fs.unlink(Cred::ROOT, &path);
        let c = file(&fs, &path, 16 * PAGE, 0x5a);
        for _ in 0..3 {
            let data = contents(&c, 0, (16 * PAGE) as usize);
            corrupt += data.iter().filter(|&&b| b != 0x5a).count() as u64;
            thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let stores: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("replace={replace}: {stores} stores, {corrupt} corrupt bytes seen");
    if replace {
        assert!(fs.check().is_empty(), "{:?}", fs.check());
    }
    corrupt
}

#[test]
fn no_file_sees_stores_through_another_files_client_mapping() {
    assert_eq!(remote_invariant(true, 300), 0);
}

#[test]
fn negative_control_without_client_replacement_stores_reach_other_files() {
    assert!(
        remote_invariant(false, 300) > 0,
        "with client re-placement off the test must see corruption"
    );
}

/// A client stops acknowledging; its file is truncated to nothing and a new
/// file is written; the client then stores through its stale pages. Returns
/// (busy blocks while the daemon keeps the mapping, bytes of the new file
/// the stale client changed, busy blocks after it is dropped).
fn unacknowledged(hold: bool) -> (u64, u64, u64) {
    let fs = mount(LONG);
    if !hold {
        fs.disable_map_hold_for_tests();
    }
    let a = file(&fs, "/a", 8 * PAGE, 0x11);
    let p = map_remote(&a, &fs, 0, 8 * PAGE, MapFlags::SHARED).unwrap();
    let reached: Vec<u64> = a.fiemap().unwrap().iter().map(|e| e.physical).collect();
    p.space.hung.store(true, Ordering::Release);
    a.truncate(0).unwrap();
    assert!(
        p.remote().is_broken(),
        "an unacknowledged placement breaks it"
    );
    // Broken: sent nothing more, its write faults refused.
    assert_eq!(p.remote().write_fault(0).unwrap_err().errno(), Errno::EIO);
    let busy = fs.statfs().busy;
    // A new file takes all the free space there is.
    let n = file(&fs, "/new", 0, 0);
    let (mut at, mut chunk) = (0u64, 256u64);
    loop {
        match n.pwrite(at, &vec![0x5a; (chunk * PAGE) as usize]) {
            Ok(done) if done > 0 => at += done as u64,
            _ if chunk > 1 => chunk /= 4,
            _ => break,
        }
    }
    let now: Vec<u64> = n.fiemap().unwrap().iter().map(|e| e.physical).collect();
    if hold {
        assert!(
            now.iter()
                .all(|&x| x < reached[0] || x >= reached[0] + 8 * PAGE),
            "no block the client reaches is reused"
        );
    }
    // The stale client still shows the old blocks (it never applied the
    // truncate) and stores through them.
    for page in 0..8 {
        p.client.write(page * PAGE, &[0xee; 16]).unwrap();
    }
    let seen = contents(&n, 0, at as usize);
    let changed = seen.iter().filter(|&&b| b != 0x5a).count() as u64;
    // The client dies (its mapping goes); its death confirmed, the daemon
    // drops its side.
    p.client.tear_down().unwrap();
    p.drop_remote();
    let after = fs.statfs().busy;
    drop(n);
    if hold {
        assert!(fs.check().is_empty(), "{:?}", fs.check());
    }
    (busy, changed, after)
}

#[test]
fn an_unacknowledging_client_keeps_its_blocks_busy_until_dropped() {
    let (busy, changed, after) = unacknowledged(true);
    assert_eq!(busy, 8, "every block the client may reach is busy");
    assert_eq!(changed, 0, "no other file sees its stores");
    assert_eq!(after, 0, "released once the mapping is dropped");
}

#[test]
fn negative_control_without_holding_an_unacknowledging_clients_blocks() {
    let (busy, changed, _) = unacknowledged(false);
    assert_eq!(busy, 0);
    assert!(
        changed > 0,
        "with holding off the stale client must corrupt the new file"
    );
}

#[test]
fn map_direct_invalidation_at_lease_break_time_makes_client_pages_sigbus() {
    let fs = mount(Duration::from_millis(200));
    let h = file(&fs, "/d", 4 * PAGE, 0x31);
    let p = map_remote(&h, &fs, 0, 4 * PAGE, MapFlags::DIRECT).unwrap();
    let c = &p.client;
    assert!(p.remote().lease().is_some());
    assert_eq!(cload(c, 10), 0x31);
    // Another actor truncates: the holder never releases, so at
    // lease-break-time the lease is removed and the client's pages are
    // invalidated before the truncate goes ahead.
    let other = fs.open(OTHER, "/d", OpenFlags::RDWR, 0).unwrap();
    // Only the owner (or CAP_LEASE) maps MAP_DIRECT, in a client too.
    assert_eq!(
        map_remote(&other, &fs, 0, PAGE, MapFlags::DIRECT)
            .err()
            .map(|e| e.errno()),
        Some(Errno::EACCES)
    );
    other.truncate(PAGE).unwrap();
    assert!(p.remote().is_invalidated());
    for page in 0..4 {
        assert_eq!(c.kind_at(page), Some(RemoteKind::Sigbus));
    }
    assert_eq!(c.read(0, &mut [0]).unwrap_err().errno(), Errno::EFAULT);
    assert_eq!(c.write(0, &[1]).unwrap_err().errno(), Errno::EFAULT);
    drop(p);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn map_direct_stores_that_would_allocate_raise_sigbus_in_the_client() {
    let fs = mount(LONG);
    let h = file(&fs, "/d", 2 * PAGE, 0x31);
    h.truncate(4 * PAGE).unwrap();
    let p = map_remote(&h, &fs, 0, 4 * PAGE, MapFlags::DIRECT).unwrap();
    let c = &p.client;
    // The hole reads zeros (served by the client) ...
    assert_eq!(cload(c, 3 * PAGE), 0);
    let free = fs.statfs().free;
    // ... but a store into it would allocate: EFAULT (SIGBUS), nothing
    // allocated, the page now SIGBUS in the client.
    assert_eq!(c.write(3 * PAGE, &[1]).unwrap_err().errno(), Errno::EFAULT);
    assert_eq!(fs.statfs().free, free);
    assert_eq!(c.kind_at(3), Some(RemoteKind::Sigbus));
    // Written blocks take stores, zero-copy.
    cstore(c, 5, 0x55);
    assert_eq!(contents(&h, 5, 1), [0x55]);
}

#[test]
fn pins_persist_and_a_soft_device_registration_through_a_client_mapping() {
    let fs = mount(LONG);
    let pool: Arc<dyn Media> = fs.media().clone();
    let h = file(&fs, "/r", 8 * PAGE, 0);
    let p = map_remote(&h, &fs, 0, 8 * PAGE, MapFlags::DIRECT).unwrap();
    let remote = p.remote();
    // A long-term pin through the MAP_DIRECT mapping.
    let pin = remote.pin_long_term(0, 2 * PAGE, None).unwrap();
    assert!(fs
        .pins()
        .iter()
        .any(|i| i.via == PinVia::DirectMapping(remote.id())));
    drop(pin);
    // A plain shared mapping without an exclusive layout lease entitles none.
    let q = map_remote(&h, &fs, 0, PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(
        q.remote().pin_long_term(0, PAGE, None).unwrap_err().errno(),
        Errno::EPERM
    );
    // A device (in the daemon's process) writes the file through a
    // registration of the client's mapping; the client sees it, zero-copy.
    let dev: Arc<dyn pinfs::dma::Device> =
        Arc::new(pinfs::dma::soft::SoftDevice::new(pool).unwrap());
    let reg = remote
        .register(dev, 0, 4 * PAGE, RevokeMode::Invalidate)
        .unwrap();
    assert_eq!(reg.write(PAGE + 3, b"rdma").unwrap(), Completion::Ok);
    assert_eq!(cread(&p.client, PAGE + 3, 4).unwrap(), b"rdma");
    assert_eq!(contents(&h, PAGE + 3, 4), b"rdma");
    // Stores by the client, made durable without fsync.
    cstore(&p.client, 7 * PAGE, 0x71);
    remote.persist(7 * PAGE, 1).unwrap();
    assert_eq!(
        remote.persist(0, 9 * PAGE).unwrap_err().errno(),
        Errno::EINVAL
    );
    reg.deregister().unwrap();
    assert!(fs.registrations().is_empty());
    drop(q);
    drop(p);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn a_client_mapping_refuses_what_a_peer_may_not_send() {
    let fs = mount(LONG);
    let h = file(&fs, "/v", 2 * PAGE, 1);
    let p = map_remote(&h, &fs, 0, 2 * PAGE, MapFlags::SHARED).unwrap();
    let c = &p.client;
    let shown = c.kind_at(0);
    let zero = RemotePiece {
        page: 0,
        pages: 1,
        kind: RemoteKind::Zero,
    };
    for bad in [
        RemotePiece {
            page: 1,
            pages: 2,
            kind: RemoteKind::Zero,
        },
        RemotePiece {
            page: u64::MAX,
            pages: 2,
            kind: RemoteKind::Zero,
        },
        RemotePiece {
            page: 0,
            pages: 1,
            kind: RemoteKind::Pool { pool_offset: 100 },
        },
        RemotePiece {
            page: 0,
            pages: 1,
            kind: RemoteKind::Served {
                copy_of: Some(4097),
            },
        },
    ] {
        // Checked before anything is applied: the valid piece before the
        // bad one is not applied either.
        assert_eq!(c.apply(&[zero, bad]).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(c.kind_at(0), shown);
    }
    // Torn down: placements change nothing and are acknowledged.
    c.tear_down().unwrap();
    c.apply(&[RemotePiece {
        page: 0,
        pages: 2,
        kind: RemoteKind::Sigbus,
    }])
    .unwrap();
    assert_eq!(c.kind_at(0), Some(RemoteKind::Nothing));
    assert_eq!(c.read(0, &mut [0]).unwrap_err().errno(), Errno::EFAULT);
}

/// Fault-around reaches client mappings too: a client's store into a wholly
/// free chunk allocates the whole chunk (zeroed) through
/// `RemoteMapping::write_fault`, one into a chunk with a block allocated
/// already allocates one block.
#[test]
fn client_stores_fault_around_as_local_ones_do() {
    let chunk = pinfs::fs::FAULT_AROUND_BYTES;
    let fs = mount(LONG);
    let h = file(&fs, "/f", 0, 0);
    h.truncate(2 * chunk).unwrap();
    h.pwrite(2 * PAGE, &[0x44; PAGE as usize]).unwrap();
    let p = map_remote(&h, &fs, 0, 2 * chunk, MapFlags::SHARED).unwrap();
    let c = &p.client;
    let free = fs.statfs().free;
    cstore(c, chunk + 5 * PAGE + 1, 0x66);
    assert_eq!(
        h.stat().unwrap().blocks,
        1 + chunk / PAGE,
        "the whole chunk"
    );
    assert_eq!(fs.statfs().free, free - chunk / PAGE);
    let data = contents(&h, chunk, chunk as usize);
    for (i, &b) in data.iter().enumerate() {
        let want = if i as u64 == 5 * PAGE + 1 { 0x66 } else { 0 };
        assert_eq!(b, want, "byte {i} of the chunk");
    }
    cstore(c, 7 * PAGE, 0x67);
    assert_eq!(
        h.stat().unwrap().blocks,
        2 + chunk / PAGE,
        "a chunk not wholly free: one block"
    );
    assert_eq!(cload(c, 2 * PAGE), 0x44);
    assert_eq!(contents(&h, 7 * PAGE, 1), [0x67]);
}

/// A client maps `/a` writable and stops acknowledging; `/a` is reflinked
/// to `/b`; the client then stores through its stale pages. Returns the
/// bytes of `/b` that differ from `/a`'s contents at reflink time.
fn reflink_under_unacknowledging_client(protect: bool) -> usize {
    let fs = mount(LONG);
    if !protect {
        fs.disable_reflink_protect_for_tests();
    }
    let a = file(&fs, "/a", 4 * PAGE, 0);
    for page in 0..4 {
        a.pwrite(page * PAGE, &[page as u8 + 1; PAGE as usize])
            .unwrap();
    }
    let p = map_remote(&a, &fs, 0, 4 * PAGE, MapFlags::SHARED).unwrap();
    assert!(matches!(p.client.kind_at(0), Some(RemoteKind::Pool { .. })));
    let at_reflink = contents(&a, 0, (4 * PAGE) as usize);
    p.space.hung.store(true, Ordering::Release);
    let b = file(&fs, "/b", 0, 0);
    b.reflink(&a, None).unwrap();
    assert!(
        p.remote().is_broken(),
        "an unacknowledged placement breaks it"
    );
    // The stale client still shows /a's blocks in place and stores.
    for page in 0..4 {
        cstore(&p.client, page * PAGE + 7, 0xee);
    }
    let seen = contents(&b, 0, (4 * PAGE) as usize);
    let changed = seen.iter().zip(&at_reflink).filter(|(x, y)| x != y).count();
    p.client.tear_down().unwrap();
    p.drop_remote();
    if protect {
        assert!(fs.check().is_empty(), "{:?}", fs.check());
    }
    changed
}

#[test]
fn reflink_never_shares_a_block_an_unacknowledging_client_stores_into() {
    assert_eq!(
        reflink_under_unacknowledging_client(true),
        0,
        "the clone keeps the source's contents at reflink time"
    );
}

#[test]
fn negative_control_without_pre_commit_protection_the_clone_changes() {
    assert!(
        reflink_under_unacknowledging_client(false) > 0,
        "without the write-protect before the commit the stale client must change the clone"
    );
}

/// A reflink that fails after it write-protected the client's pages (a
/// pinned source block must be copied and the pool is full) leaves them
/// showing the blocks in place again: nothing was shared.
#[test]
fn a_failed_reflink_gives_the_client_its_pages_back() {
    let fs = mount(LONG);
    let a = file(&fs, "/a", 4 * PAGE, 0x11);
    let p = map_remote(&a, &fs, 0, 4 * PAGE, MapFlags::SHARED).unwrap();
    let before: Vec<_> = (0..4).map(|page| p.client.kind_at(page)).collect();
    assert!(matches!(before[1], Some(RemoteKind::Pool { .. })));
    // Page 0 pinned: a reflink copies it, which needs a free block.
    let lease = fs
        .leases()
        .set_lease(
            a.lease_file(),
            a.lease_handle(),
            pinfs::lease::OwnerId(HOLDER.owner),
            pinfs::lease::LeaseRequest::layout_shared()
                .unbreakable()
                .range(pinfs::lease::ByteRange::new(0, PAGE)),
        )
        .unwrap();
    let pin = a.pin_long_term(0, PAGE, None).unwrap();
    // Another file takes every free block there is.
    let n = file(&fs, "/full", 0, 0);
    let (mut at, mut chunk) = (0u64, 256u64);
    loop {
        match n.pwrite(at, &vec![0x5a; (chunk * PAGE) as usize]) {
            Ok(done) if done > 0 => at += done as u64,
            _ if chunk > 1 => chunk /= 4,
            _ => break,
        }
    }
    let b = file(&fs, "/b", 0, 0);
    assert_eq!(b.reflink(&a, None).unwrap_err().errno(), Errno::ENOSPC);
    let after: Vec<_> = (0..4).map(|page| p.client.kind_at(page)).collect();
    assert_eq!(after, before, "the pages show the unshared blocks in place");
    cstore(&p.client, PAGE, 0x22);
    assert_eq!(contents(&a, PAGE, 1), [0x22]);
    drop(pin);
    fs.leases().release(lease).ok();
    drop(p);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}
