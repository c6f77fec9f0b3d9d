//! Mappings follow the file's layout (SPEC §5): holes read as zeros without
//! allocating, stores allocate zeroed blocks or copy shared ones, and every
//! layout change — truncate, punch, zero, collapse, insert, reflink — takes
//! effect in live mappings at once. Plus the flags and their errors,
//! `MAP_DIRECT`'s lease and pins, `persist`, and the §4.4 invariant for
//! mappings with its negative control.
//!
//! Accesses that could raise `SIGBUS` go through `Mapping::read`/`write`
//! (which report `EFAULT` instead); raw loads and stores only where SPEC
//! promises no signal (`map_sigbus.rs` runs the signalling ones in children).

#![allow(unsafe_code)]

mod map_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use map_support::*;
use pinfs::fs::{Cred, FallocMode, OpenFlags};
use pinfs::lease::{EventKind, LeaseKind, OwnerId};
use pinfs::map::{MapFlags, MAP_SHARED_VALIDATE};
use pinfs::media::{MappedPool, Media, MediaCaps, PoolMemory};
use pinfs::pin::PinVia;
use pinfs::{Errno, Result};

const LONG: Duration = Duration::from_secs(45);

fn read(m: &pinfs::map::Mapping, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    m.read(offset, &mut buf)?;
    Ok(buf)
}

#[test]
fn holes_read_zeros_without_allocating_and_stores_allocate_zeroed_blocks() {
    let fs = mount(LONG);
    // Leave stale bytes in free blocks: a fresh block must not show them.
    let junk = file(&fs, "/junk", 64 * PAGE, 0xee);
    drop(junk);
    fs.unlink(Cred::ROOT, "/junk").unwrap();
    let h = file(&fs, "/f", 0, 0);
    h.truncate(16 * PAGE).unwrap();
    let m = h.mmap(0, 16 * PAGE, MapFlags::SHARED).unwrap();
    let free = fs.statfs().free;
    for p in 0..16 {
        assert_eq!(load(&m, p * PAGE + 7), 0);
    }
    assert_eq!(
        read(&m, 0, (16 * PAGE) as usize).unwrap(),
        vec![0; 16 * PAGE as usize]
    );
    assert_eq!(fs.statfs().free, free, "reading holes allocates nothing");
    assert_eq!(h.stat().unwrap().blocks, 0);
    // A store into a page that was read (a write-protected zero page).
    store(&m, 3 * PAGE + 100, 0x42);
    // A store into a page never touched (a missing page).
    store(&m, 9 * PAGE, 0x43);
    m.write(12 * PAGE + 4000, &[0x44; 200]).unwrap();
    // The file is one fault-around chunk, wholly free and mapped: the first
    // store allocated all of it (zeroed), the others nothing more.
    assert_eq!(16 * PAGE, pinfs::fs::FAULT_AROUND_BYTES);
    assert_eq!(fs.statfs().free, free - 16);
    let mut want = vec![0u8; PAGE as usize];
    want[100] = 0x42;
    assert_eq!(contents(&h, 3 * PAGE, PAGE as usize), want);
    assert_eq!(load(&m, 3 * PAGE + 100), 0x42);
    assert_eq!(contents(&h, 9 * PAGE, 2), [0x43, 0]);
    assert_eq!(contents(&h, 12 * PAGE + 3999, 202)[..3], [0, 0x44, 0x44]);
    assert!(contents(&h, 9 * PAGE + 1, PAGE as usize - 1)
        .iter()
        .all(|&b| b == 0));
    // The stores went to the pool blocks the file now maps.
    let ext = h.fiemap().unwrap();
    let e = ext
        .iter()
        .find(|e| (e.logical..e.logical + e.len).contains(&(9 * PAGE)))
        .unwrap();
    let mut byte = [0u8; 1];
    fs.media()
        .read(e.physical + 9 * PAGE - e.logical, &mut byte)
        .unwrap();
    assert_eq!(byte, [0x43]);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn punch_zero_truncate_collapse_insert_take_effect_in_live_mappings() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 8 * PAGE, 0xab);
    for p in 0..8 {
        h.pwrite(p * PAGE, &[p as u8 + 1]).unwrap();
    }
    let m = h.mmap(0, 10 * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, 5 * PAGE), 6);
    // Punch: zeros at once, never the old data.
    h.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
    assert_eq!(
        read(&m, PAGE, PAGE as usize).unwrap(),
        vec![0; PAGE as usize]
    );
    // Zero range: unwritten blocks read as zeros.
    h.fallocate(FallocMode::ZeroRange { keep_size: true }, 2 * PAGE, PAGE)
        .unwrap();
    assert_eq!(load(&m, 2 * PAGE), 0);
    assert_eq!(load(&m, 2 * PAGE + 5), 0);
    // Collapse page 3: what was page 4 is now page 3.
    h.fallocate(FallocMode::CollapseRange, 3 * PAGE, PAGE)
        .unwrap();
    assert_eq!(load(&m, 3 * PAGE), 5);
    assert_eq!(load(&m, 6 * PAGE), 8);
    // The file is 7 pages now: page 7 is beyond EOF.
    assert_eq!(
        m.read(7 * PAGE, &mut [0]).unwrap_err().errno(),
        Errno::EFAULT
    );
    // Insert a hole at page 3.
    h.fallocate(FallocMode::InsertRange, 3 * PAGE, PAGE)
        .unwrap();
    assert_eq!(load(&m, 3 * PAGE), 0);
    assert_eq!(load(&m, 4 * PAGE), 5);
    assert_eq!(load(&m, 7 * PAGE), 8);
    // Truncate down, then up: the regrown range is holes.
    h.truncate(2 * PAGE + 10).unwrap();
    assert_eq!(
        m.read(3 * PAGE, &mut [0]).unwrap_err().errno(),
        Errno::EFAULT
    );
    assert_eq!(m.write(5 * PAGE, &[1]).unwrap_err().errno(), Errno::EFAULT);
    assert_eq!(load(&m, 0), 1);
    h.truncate(10 * PAGE).unwrap();
    assert_eq!(
        read(&m, 3 * PAGE, PAGE as usize).unwrap(),
        vec![0; PAGE as usize]
    );
    store(&m, 9 * PAGE + 1, 0x99);
    assert_eq!(contents(&h, 9 * PAGE, 2), [0, 0x99]);
    // Growth by pwrite past EOF is seen too.
    h.pwrite(10 * PAGE, b"x").unwrap();
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn stores_to_reflinked_blocks_copy_first() {
    let fs = mount(LONG);
    let a = file(&fs, "/a", 4 * PAGE, 0x11);
    let b = file(&fs, "/b", 0, 0);
    b.reflink(&a, None).unwrap();
    let mb = b.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&mb, PAGE), 0x11);
    store(&mb, PAGE, 0x22);
    assert_eq!(contents(&a, PAGE, 1), [0x11], "the source is unchanged");
    assert_eq!(contents(&b, PAGE, 2), [0x22, 0x11]);
    let shared: Vec<bool> = b.fiemap().unwrap().iter().map(|e| e.shared).collect();
    assert_eq!(shared, [true, false, true]);

    // Blocks that become shared while mapped are write-protected at once.
    let ma = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    store(&ma, 0, 0x33);
    let c = file(&fs, "/c", 0, 0);
    c.reflink(&a, None).unwrap();
    store(&ma, 1, 0x44);
    assert_eq!(contents(&c, 0, 3), [0x33, 0x11, 0x11]);
    assert_eq!(contents(&a, 0, 3), [0x33, 0x44, 0x11]);
    // And a private mapping of shared blocks never reaches them.
    let mc = c.mmap(0, 4 * PAGE, MapFlags::PRIVATE).unwrap();
    store(&mc, 2, 0x55);
    assert_eq!(load(&mc, 2), 0x55);
    assert_eq!(contents(&c, 2, 1), [0x11]);
    assert_eq!(contents(&a, 2, 1), [0x11]);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn flags_and_their_errors() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 4 * PAGE, 1);
    assert_eq!(
        MapFlags::from_raw(MAP_SHARED_VALIDATE | 0x40_0000),
        Err(Errno::EOPNOTSUPP)
    );
    let inval = |r: Result<pinfs::map::Mapping>| r.unwrap_err().errno();
    assert_eq!(inval(h.mmap(100, PAGE, MapFlags::SHARED)), Errno::EINVAL);
    assert_eq!(inval(h.mmap(0, 0, MapFlags::SHARED)), Errno::EINVAL);
    // A read-only handle maps read-only or private, not shared writable.
    let ro = fs.open(HOLDER, "/f", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(inval(ro.mmap(0, PAGE, MapFlags::SHARED)), Errno::EACCES);
    let r = ro.mmap(0, PAGE, MapFlags::SHARED.read_only()).unwrap();
    assert_eq!(load(&r, 0), 1);
    let p = ro.mmap(0, PAGE, MapFlags::PRIVATE).unwrap();
    store(&p, 0, 9);
    assert_eq!(load(&p, 0), 9);
    assert_eq!(contents(&h, 0, 1), [1], "private stores stay private");
    // MAP_DIRECT: the owner or root only.
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    assert_eq!(inval(other.mmap(0, PAGE, MapFlags::DIRECT)), Errno::EACCES);
    let root = fs.open(Cred::ROOT, "/f", OpenFlags::RDWR, 0).unwrap();
    assert!(root
        .mmap(0, PAGE, MapFlags::DIRECT)
        .unwrap()
        .lease()
        .is_some());
    // Extension flags without MAP_SHARED_VALIDATE do not take effect.
    let plain = other
        .mmap(
            0,
            PAGE,
            MapFlags {
                direct: true,
                sync: true,
                ..MapFlags::SHARED
            },
        )
        .unwrap();
    assert!(!plain.flags().direct && plain.lease().is_none());
    // MAP_SYNC is accepted: write faults are durable before they return.
    let sync = MapFlags::from_raw(MAP_SHARED_VALIDATE | pinfs::map::MAP_SYNC).unwrap();
    let s = h.mmap(0, 4 * PAGE, sync).unwrap();
    assert!(s.flags().sync);
    // Directories cannot be mapped.
    fs.mkdir(Cred::ROOT, "/d", 0o755).unwrap();
    let d = fs.open(Cred::ROOT, "/d", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(inval(d.mmap(0, PAGE, MapFlags::PRIVATE)), Errno::ENODEV);
}

#[test]
fn direct_mapping_holds_a_layout_lease_and_a_reacting_holder_keeps_its_data() {
    let fs = mount(Duration::from_secs(20));
    let h = file(&fs, "/f", 4 * PAGE, 1);
    let m = h.mmap(0, 4 * PAGE, MapFlags::DIRECT).unwrap();
    let leases = fs.leases().list();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].kind, LeaseKind::Layout);
    assert_eq!(leases[0].owner, OwnerId(HOLDER.owner));
    // The holder's own layout changes do not break it.
    h.fallocate(FallocMode::Allocate { keep_size: false }, 4 * PAGE, PAGE)
        .unwrap();
    assert_eq!(fs.leases().list().len(), 1);
    // The holder reacts to a break by unmapping: the breaker proceeds long
    // before lease-break-time.
    let slot = Arc::new(parking_lot::Mutex::new(Some(m)));
    let s = slot.clone();
    let broke = Arc::new(AtomicBool::new(false));
    let b = broke.clone();
    fs.leases()
        .set_owner_callback(
            OwnerId(HOLDER.owner),
            Some(Arc::new(move |ev: &pinfs::lease::BreakEvent| {
                if ev.kind == EventKind::Break {
                    b.store(true, Ordering::SeqCst);
                    s.lock().take();
                }
            })),
        )
        .unwrap();
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    let t = Instant::now();
    other.truncate(PAGE).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(broke.load(Ordering::SeqCst));
    assert!(slot.lock().is_none());
    assert!(
        fs.leases().list().is_empty(),
        "unmapping released the lease"
    );
    assert_eq!(fs.mapping_count(), 0);
}

#[test]
fn long_term_pins_through_direct_mappings_only() {
    let fs = mount(Duration::from_millis(50));
    let h = file(&fs, "/f", 8 * PAGE, 1);
    let shared = h.mmap(0, 8 * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(
        shared.pin_long_term(0, PAGE, None).unwrap_err().errno(),
        Errno::EPERM
    );
    let d = h.mmap(PAGE, 4 * PAGE, MapFlags::DIRECT).unwrap();
    assert_eq!(
        d.pin_long_term(0, 5 * PAGE, None).unwrap_err().errno(),
        Errno::EPERM,
        "beyond the mapping"
    );
    let pin = d.pin_long_term(PAGE, 2 * PAGE, None).unwrap();
    let info = pin.info().unwrap();
    assert_eq!(info.via, PinVia::DirectMapping(d.id()));
    assert_eq!((info.offset, info.len), (2 * PAGE, 2 * PAGE));
    assert_eq!(info.owner, HOLDER.owner);
    // Another actor's truncate breaks the lease; the holder does not react:
    // the mapping is invalidated, new pins fail, the existing pin stays
    // (and, under `defer`, its blocks become busy).
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    other.truncate(0).unwrap();
    assert!(d.is_invalidated());
    assert_eq!(d.read(0, &mut [0]).unwrap_err().errno(), Errno::EFAULT);
    assert_eq!(
        d.pin_long_term(0, PAGE, None).unwrap_err().errno(),
        Errno::EPERM
    );
    assert_eq!(fs.pins().len(), 1);
    assert_eq!(fs.statfs().busy, 2);
    drop(pin);
    assert_eq!(fs.statfs().busy, 0);
}

/// A pool that counts `flush` calls (persist's cache-line write-back).
#[derive(Debug)]
struct Counting {
    pool: MappedPool,
    flushed_bytes: AtomicU64,
}

impl Media for Counting {
    fn caps(&self) -> MediaCaps {
        self.pool.caps()
    }
    fn len_bytes(&self) -> u64 {
        self.pool.len_bytes()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.pool.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.pool.write(offset, data)
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<()> {
        self.pool.fill(offset, len, byte)
    }
    fn write_u64(&self, offset: u64, value: u64) -> Result<()> {
        self.pool.write_u64(offset, value)
    }
    fn flush(&self, offset: u64, len: u64) -> Result<()> {
        self.flushed_bytes.fetch_add(len, Ordering::Relaxed);
        self.pool.flush(offset, len)
    }
    fn fence(&self) {
        self.pool.fence()
    }
    fn mapping(&self) -> Option<PoolMemory<'_>> {
        self.pool.mapping()
    }
}

#[test]
fn persist_flushes_the_pool_blocks_behind_the_range() {
    let media = Arc::new(Counting {
        pool: MappedPool::memfd(32 << 20).unwrap(),
        flushed_bytes: AtomicU64::new(0),
    });
    let fs = mount_on(media.clone(), LONG);
    let h = file(&fs, "/f", 4 * PAGE, 1);
    h.fallocate(FallocMode::PunchHole, 2 * PAGE, PAGE).unwrap();
    let m = h.mmap(0, 4 * PAGE, MapFlags::DIRECT).unwrap();
    store(&m, 100, 7);
    let before = media.flushed_bytes.load(Ordering::Relaxed);
    m.persist(64, 4 * PAGE - 64).unwrap();
    // Three written pages minus the 64 bytes before the range; the hole
    // has nothing behind it.
    assert_eq!(
        media.flushed_bytes.load(Ordering::Relaxed) - before,
        3 * PAGE - 64
    );
    assert_eq!(m.persist(0, 5 * PAGE).unwrap_err().errno(), Errno::EINVAL);
    assert_eq!(contents(&h, 100, 1), [7]);
}

#[test]
fn unlinked_file_lives_until_its_last_mapping_drops() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 4 * PAGE, 3);
    let free = fs.statfs().free;
    let m = h.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    drop(h);
    fs.unlink(Cred::ROOT, "/f").unwrap();
    assert_eq!(load(&m, PAGE), 3);
    store(&m, PAGE, 4);
    assert_eq!(fs.statfs().free, free);
    drop(m);
    assert_eq!(fs.statfs().free, free + 4);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

/// The §4.4 invariant for mappings, under concurrency: writers keep storing
/// their tag through mappings of their files (as applications do, never
/// asking the file system) while other threads punch and truncate those
/// files and create, fill and verify files of their own. No other file ever
/// shows a tag. With re-placement switched off, a stale mapping reaches
/// blocks given to other files, and the check sees it.
fn mapping_invariant(replace: bool, rounds: usize) -> u64 {
    const WRITERS: usize = 2;
    const PAGES: u64 = 32;
    let fs = mount(LONG);
    if !replace {
        fs.disable_map_replacement_for_tests();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let h = file(&fs, &format!("/w{w}"), PAGES * PAGE, 0);
        let m = h.mmap(0, PAGES * PAGE, MapFlags::SHARED).unwrap();
        let stop = stop.clone();
        let fs = fs.clone();
        threads.push(thread::spawn(move || {
            let tag = [0xd0 + w as u8; 64];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let page = i % PAGES;
                // EFAULT past a truncated end of file is expected.
                let _ = m.write(page * PAGE + (i * 64) % PAGE, &tag);
                if i.is_multiple_of(97) {
                    // The file's owner changes its layout under its mapping.
                    let at = (i * 7) % PAGES;
                    let _ = h.fallocate(FallocMode::PunchHole, at * PAGE, 2 * PAGE);
                    if i.is_multiple_of(3) {
                        let _ = h.truncate((i % PAGES) * PAGE);
                        let _ = h.truncate(PAGES * PAGE);
                    }
                }
                i += 1;
            }
            drop(fs);
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
fn no_file_sees_stores_through_another_files_mapping() {
    assert_eq!(mapping_invariant(true, 300), 0);
}

#[test]
fn negative_control_without_replacement_stores_reach_other_files() {
    let corrupt = mapping_invariant(false, 300);
    assert!(
        corrupt > 0,
        "with re-placement off the test must see corruption"
    );
}

#[test]
fn negative_control_single_step() {
    // The same in one deterministic step: punch a mapped block, give it to
    // another file, store through the stale mapping.
    for replace in [true, false] {
        let fs = mount(LONG);
        if !replace {
            fs.disable_map_replacement_for_tests();
        }
        let a = file(&fs, "/a", PAGE, 1);
        let m = a.mmap(0, PAGE, MapFlags::SHARED).unwrap();
        let block = a.fiemap().unwrap()[0].physical;
        a.fallocate(FallocMode::PunchHole, 0, PAGE).unwrap();
        let b = file(&fs, "/b", 0, 0);
        b.pwrite(0, &[2; PAGE as usize]).unwrap();
        assert_eq!(
            b.fiemap().unwrap()[0].physical,
            block,
            "the block was reused"
        );
        store(&m, 0, 0xd0);
        let seen = contents(&b, 0, 1)[0];
        if replace {
            assert_eq!(seen, 2);
            assert_eq!(contents(&a, 0, 1), [0xd0]);
        } else {
            assert_eq!(seen, 0xd0, "the stale mapping reached the other file");
        }
    }
}

#[test]
fn another_owners_in_place_write_breaks_a_direct_mapping() {
    let fs = mount(Duration::from_millis(50));
    let h = file(&fs, "/f", 4 * PAGE, 1);
    let m = h.mmap(0, 2 * PAGE, MapFlags::DIRECT).unwrap();
    // The holder's own writes and writes outside the range do not break it.
    h.pwrite(0, b"own").unwrap();
    let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
    other.pwrite(3 * PAGE, b"outside").unwrap();
    assert!(!m.is_invalidated());
    assert_eq!(fs.leases().list().len(), 1);
    // Another owner's in-place write inside it does; the holder does not
    // react, so the mapping is invalidated before the write lands.
    other.pwrite(PAGE, b"inside").unwrap();
    assert!(m.is_invalidated());
    assert_eq!(m.read(PAGE, &mut [0]).unwrap_err().errno(), Errno::EFAULT);
    assert_eq!(contents(&h, PAGE, 6), b"inside");
    assert!(fs.leases().list().is_empty());
}

#[test]
fn pinning_and_write_faults_never_expose_stale_blocks() {
    // Blocks freed by another file still hold its bytes; a pin (which makes
    // its range written: holes allocated, unwritten converted) and a write
    // fault must hand them out zeroed.
    let fs = mount(LONG);
    drop(file(&fs, "/junk", 256 * PAGE, 0xee));
    fs.unlink(Cred::ROOT, "/junk").unwrap();
    let h = file(&fs, "/f", 0, 0);
    h.truncate(8 * PAGE).unwrap();
    h.fallocate(FallocMode::Allocate { keep_size: true }, 4 * PAGE, 4 * PAGE)
        .unwrap();
    let m = h.mmap(0, 8 * PAGE, MapFlags::DIRECT).unwrap();
    let _pin = m.pin_long_term(0, 8 * PAGE, None).unwrap();
    assert_eq!(
        contents(&h, 0, (8 * PAGE) as usize),
        vec![0; 8 * PAGE as usize]
    );
    // The pin made the range written: the MAP_DIRECT mapping now reaches it.
    assert_eq!(
        read(&m, 0, (8 * PAGE) as usize).unwrap(),
        vec![0; 8 * PAGE as usize]
    );
    store(&m, 5 * PAGE, 1);
    assert_eq!(contents(&h, 5 * PAGE, 1), [1]);
}

#[test]
fn fsync_writes_back_stores_made_through_mappings() {
    let media = Arc::new(Counting {
        pool: MappedPool::memfd(32 << 20).unwrap(),
        flushed_bytes: AtomicU64::new(0),
    });
    let fs = mount_on(media.clone(), LONG);
    let h = file(&fs, "/f", 4 * PAGE, 1);
    h.fsync().unwrap();
    let m = h.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    store(&m, 10, 2);
    let before = media.flushed_bytes.load(Ordering::Relaxed);
    h.fsync().unwrap();
    assert!(media.flushed_bytes.load(Ordering::Relaxed) - before >= 4 * PAGE);
}

/// Mappings on pools other than a memfd: a regular file on a block file
/// system (page cache; `persist` is `msync`) and a tmpfs file.
#[test]
fn regular_file_and_tmpfs_pools() {
    let dirs = [std::env::temp_dir(), std::path::PathBuf::from("/dev/shm")];
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let tmp = tempfile::tempdir_in(dir).unwrap();
        let pool = MappedPool::create(&tmp.path().join("pool"), 32 << 20).unwrap();
        let kind = pool.caps().kind;
        let fs = mount_on(Arc::new(pool), LONG);
        let a = file(&fs, "/a", 4 * PAGE, 1);
        a.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
        let b = file(&fs, "/b", 0, 0);
        b.reflink(&a, None).unwrap();
        let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
        assert_eq!(load(&m, 0), 1, "{kind:?}");
        assert_eq!(load(&m, PAGE), 0);
        store(&m, PAGE + 1, 2);
        store(&m, 2 * PAGE, 3);
        m.persist(0, 4 * PAGE).unwrap();
        assert_eq!(contents(&a, PAGE, 2), [0, 2]);
        assert_eq!(contents(&a, 2 * PAGE, 2), [3, 1]);
        assert_eq!(contents(&b, 2 * PAGE, 2), [1, 1], "{kind:?}: copy-on-write");
        a.truncate(PAGE).unwrap();
        assert_eq!(m.read(PAGE, &mut [0]).unwrap_err().errno(), Errno::EFAULT);
        assert!(fs.check().is_empty(), "{kind:?}: {:?}", fs.check());
    }
}

#[test]
fn concurrent_stores_into_the_same_holes_allocate_once() {
    const THREADS: u64 = 4;
    const PAGES: u64 = 64;
    let fs = mount(LONG);
    let h = file(&fs, "/f", 0, 0);
    h.truncate(PAGES * PAGE).unwrap();
    let m = Arc::new(h.mmap(0, PAGES * PAGE, MapFlags::SHARED).unwrap());
    let free = fs.statfs().free;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let m = m.clone();
            thread::spawn(move || {
                for p in 0..PAGES {
                    if p % 3 == t % 3 {
                        assert_eq!(load(&m, p * PAGE + 2000 + t), 0);
                    }
                    store(&m, p * PAGE + t, 1 + t as u8);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fs.statfs().free, free - PAGES);
    for p in 0..PAGES {
        assert_eq!(contents(&h, p * PAGE, 5), [1, 2, 3, 4, 0], "page {p}");
    }
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}
