//! `pinfs demo`: the end-to-end scenario, narrated, on a volatile pool.
//!
//! It shows what the file system does, step by step, and checks every claim
//! it narrates (a demo that lies is worse than none): reflink shares blocks,
//! a write to the copy moves only the written block (copy-on-write), a hole
//! punched in one sharer frees nothing until the other lets go, a layout
//! change by one actor waits for another actor's shared layout lease to be
//! released after notifying it, and the metadata is consistent at the end.
//! Then a holder writes through a `MAP_DIRECT` mapping with a pinned range
//! while another actor truncates the file: once with a holder that reacts to
//! the notification, once with one that never does (its mapping is
//! invalidated at lease-break-time; its pinned blocks stay busy, never reused,
//! until it unpins). Then devices ([`devices`], steps 7–9): a device
//! streaming into a registered file meets another actor's truncate, with an
//! owner that reacts, one that never does (revocation at lease-break-time),
//! and Ira Weiny's unbreakable lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pinfs::fs::{Cred, FallocMode, Fs, Handle, MountOptions, OpenFlags, TruncatePolicy};
use pinfs::lease::{EventKind, LeaseRequest, LeaseType, OwnerId};
use pinfs::map::MapFlags;
use pinfs::media::{MappedPool, Media};

use crate::io::lease_cmds::listing_line;

mod devices;

/// Size of the demo's pool.
const POOL_BYTES: u64 = 64 << 20;

/// Size of the demo file.
const FILE_BYTES: usize = 64 << 10;

/// Print a file's extents, indented, as `io`'s `fiemap` does.
fn show_fiemap(name: &str, h: &Handle) -> Result<()> {
    println!("   fiemap {name} (logical physical length flags):");
    for e in h.fiemap()? {
        let flags = match (e.unwritten, e.shared) {
            (true, true) => "unwritten,shared",
            (true, false) => "unwritten",
            (false, true) => "shared",
            (false, false) => "-",
        };
        println!(
            "     {:>6} {:>10} {:>6} {flags}",
            e.logical, e.physical, e.len
        );
    }
    Ok(())
}

/// Lease owner of the file steps, shown as `@main` (as `io` names it).
const MAIN: u64 = 1;

/// Lease owner of the lease section's holder, shown as `@holder`.
const HOLDER: u64 = 2;

/// Lease owner of the lease section's breaker, shown as `@breaker`.
const BREAKER: u64 = 3;

/// An owner as `io` shows an actor: `@NAME`.
fn actor(owner: OwnerId) -> String {
    match owner.0 {
        MAIN => "@main".to_string(),
        HOLDER => "@holder".to_string(),
        BREAKER => "@breaker".to_string(),
        _ => crate::io::unnamed_actor(owner),
    }
}

/// How long the holder waits for its notification before the demo gives up
/// (only a bug makes it wait at all: the breaker is already on its way).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// Print the lease listing, indented, in the format of `io`'s `leases`
/// (owners as `@NAME`; `path` is the leased file's).
fn show_leases(fs: &Fs, path: &str) {
    println!("   leases (id kind type state actor path start end):");
    let leases = fs.leases().list();
    if leases.is_empty() {
        println!("     (none)");
    }
    for l in leases {
        println!("     {}", listing_line(&l, &actor(l.owner), path));
    }
}

/// The lease section: a holder (`@holder`) keeps a shared layout lease on
/// /leased; a breaker (`@breaker`, on its own thread) truncates the file; the
/// holder is notified while the truncate waits, releases, and the truncate
/// completes.
fn leases(fs: &Arc<Fs>) -> Result<()> {
    let holder = Cred::root_as(HOLDER);
    let breaker = Cred::root_as(BREAKER);
    println!("5. Leases: @holder holds a shared layout lease on /leased (F_RDLCK|F_LAYOUT).");
    // The queue exists before the lease does: no notification is lost.
    let events = fs.leases().owner_events(OwnerId(HOLDER))?;
    let file = fs.open(holder, "/leased", OpenFlags::CREATE, 0o644)?;
    file.pwrite(0, &[0xab; FILE_BYTES])?;
    fs.leases().set_lease(
        file.lease_file(),
        file.lease_handle(),
        OwnerId(HOLDER),
        LeaseRequest::layout_shared(),
    )?;
    show_leases(fs, "/leased");

    println!("   @breaker truncates /leased to 4 KiB, on its own thread: it must wait.");
    let theirs = fs.open(breaker, "/leased", OpenFlags::RDWR, 0)?;
    let truncated = Arc::new(AtomicBool::new(false));
    let flag = truncated.clone();
    let truncate = std::thread::spawn(move || {
        let result = theirs.truncate(4096);
        flag.store(true, Ordering::SeqCst);
        result
    });
    let event = events
        .recv_timeout(NOTIFY_TIMEOUT)?
        .context("the holder was never notified")?;
    ensure!(
        event.kind == EventKind::Break && event.target == LeaseType::Unlock,
        "unexpected notification {event:?}"
    );
    println!(
        "   @holder is notified: lease {} is breaking (layout change by {}); the truncate waits",
        event.lease.id,
        actor(event.breaker)
    );
    ensure!(
        !truncated.load(Ordering::SeqCst),
        "the truncate went ahead of an active layout lease"
    );
    ensure!(
        file.stat()?.size == FILE_BYTES as u64,
        "the file changed before the holder released its lease"
    );
    show_leases(fs, "/leased");

    println!("   @holder lets go of what it holds over the file and releases the lease.");
    fs.leases().set_lease(
        file.lease_file(),
        file.lease_handle(),
        OwnerId(HOLDER),
        LeaseRequest::layout_unlock(),
    )?;
    truncate
        .join()
        .map_err(|_| anyhow::anyhow!("the truncating thread panicked"))?
        .context("truncate")?;
    let size = file.stat()?.size;
    ensure!(size == 4096, "after the truncate the size is {size}");
    println!("   The truncate completes: /leased is now {size} bytes.");
    show_leases(fs, "/leased");
    drop(file);
    fs.leases().drop_owner(OwnerId(HOLDER));
    Ok(())
}

/// Step 6: a `MAP_DIRECT` holder with a pinned range meets a truncate.
fn direct_mapping() -> Result<()> {
    const BREAK_TIME: Duration = Duration::from_secs(1);
    let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(POOL_BYTES).context("second pool")?);
    Fs::mkfs(&*pool)?;
    let fs = Fs::mount_with(
        pool,
        MountOptions {
            break_time: BREAK_TIME,
            policy: TruncatePolicy::Defer,
        },
    )?;
    let holder = Cred::root_as(HOLDER);
    let breaker = Cred::root_as(BREAKER);
    println!(
        "6. Direct access: a second pool, lease-break-time {} s, truncate policy defer.",
        BREAK_TIME.as_secs()
    );
    let events = fs.leases().owner_events(OwnerId(HOLDER))?;
    let file = fs.open(holder, "/direct", OpenFlags::CREATE, 0o644)?;
    file.pwrite(0, &[0x11; FILE_BYTES])?;
    for reacts in [true, false] {
        if !reacts {
            file.pwrite(0, &[0x11; FILE_BYTES])?;
        }
        let map = file.mmap(0, FILE_BYTES as u64, MapFlags::DIRECT)?;
        let pin = map.pin_long_term(0, 16 << 10, None)?;
        map.write(0, b"written through the mapping")?;
        map.persist(0, 4096)?;
        println!(
            "   @holder maps /direct with MAP_DIRECT, pins 16 KiB of it for a device, and stores through the mapping."
        );
        show_leases(&fs, "/direct");
        println!("   @breaker truncates /direct to 4 KiB on its own thread.");
        let theirs = fs.open(breaker, "/direct", OpenFlags::RDWR, 0)?;
        let started = std::time::Instant::now();
        let truncate = std::thread::spawn(move || theirs.truncate(4096));
        let event = events
            .recv_timeout(NOTIFY_TIMEOUT)?
            .context("the holder was never notified")?;
        ensure!(
            event.kind == EventKind::Break,
            "unexpected notification {event:?}"
        );
        println!(
            "   @holder is notified: its MAP_DIRECT lease {} is breaking",
            event.lease.id
        );
        if reacts {
            println!("   It reacts: the device lets go (unpin) and it unmaps.");
            drop(pin);
            drop(map);
            truncate
                .join()
                .map_err(|_| anyhow::anyhow!("truncate thread panicked"))??;
            ensure!(fs.statfs().busy == 0, "nothing should be busy");
            println!(
                "   The truncate completes after {:.0?}; busy blocks: {}.",
                started.elapsed(),
                fs.statfs().busy
            );
        } else {
            println!("   This time it never reacts: the truncate waits for lease-break-time.");
            truncate
                .join()
                .map_err(|_| anyhow::anyhow!("truncate thread panicked"))??;
            let lost = events.recv_timeout(NOTIFY_TIMEOUT)?;
            ensure!(
                lost.is_some_and(|e| e.kind == EventKind::Lost),
                "the holder was not told it lost the lease"
            );
            ensure!(map.is_invalidated(), "the mapping should be invalidated");
            let busy = fs.statfs().busy;
            ensure!(
                busy == 3,
                "the pinned blocks past 4 KiB should be busy, got {busy}"
            );
            println!(
                "   After {:.1?} the lease is forcibly removed, the mapping invalidated, and the truncate completes;",
                started.elapsed()
            );
            println!("   the 3 pinned blocks it removed are busy extents: not free, never reused (busy {busy}).");
            let store = map.write(0, b"x");
            ensure!(
                store.is_err(),
                "a store through an invalidated mapping must fault"
            );
            println!("   A store through the invalidated mapping now raises SIGBUS.");
            drop(pin);
            ensure!(fs.statfs().busy == 0, "unpin should free the busy blocks");
            println!("   The device unpins: busy blocks {} -> free.", busy);
            drop(map);
        }
        ensure!(
            file.stat()?.size == 4096,
            "the truncate did not take effect"
        );
    }
    let problems = fs.check();
    ensure!(problems.is_empty(), "{} problems found", problems.len());
    Ok(())
}

/// The byte at `offset` of a file.
fn byte_at(h: &Handle, offset: u64) -> Result<u8> {
    let mut b = [0u8; 1];
    let n = h.pread(offset, &mut b)?;
    ensure!(n == 1, "short read at {offset}");
    Ok(b[0])
}

/// Run the demo.
pub fn run() -> Result<()> {
    let pool = MappedPool::memfd(POOL_BYTES).context("creating a volatile pool")?;
    println!("pinfs demo: a volatile {} MiB pool", POOL_BYTES >> 20);
    println!("   {}", pool.caps());
    Fs::mkfs(&pool).context("mkfs")?;
    let fs = Fs::mount(Arc::new(pool)).context("mount")?;
    let start = fs.statfs();
    println!(
        "   mkfs: {} data blocks of 4 KiB, {} free; {} inodes",
        start.blocks, start.free, start.inodes
    );
    let me = Cred::root_as(MAIN);

    println!();
    println!("1. Create /original and write 64 KiB of 0xab: one extent, 16 blocks.");
    let original = fs.open(me, "/original", OpenFlags::CREATE, 0o644)?;
    original.pwrite(0, &[0xab; FILE_BYTES])?;
    show_fiemap("/original", &original)?;

    println!();
    println!("2. Reflink /original into /copy: both files map the same blocks; nothing is copied.");
    let copy = fs.open(me, "/copy", OpenFlags::CREATE, 0o644)?;
    let before = fs.statfs().free;
    copy.reflink(&original, None)?;
    ensure!(fs.statfs().free == before, "reflink allocated blocks");
    show_fiemap("/original", &original)?;
    show_fiemap("/copy", &copy)?;
    println!("   free blocks unchanged: {before}");

    println!();
    println!("3. Write 4 KiB of 0xcd at 8 KiB in /copy: copy-on-write moves only that block.");
    copy.pwrite(8 << 10, &[0xcd; 4096])?;
    show_fiemap("/copy", &copy)?;
    let (o, c) = (byte_at(&original, 8 << 10)?, byte_at(&copy, 8 << 10)?);
    ensure!((o, c) == (0xab, 0xcd), "copy-on-write broke: {o:#x} {c:#x}");
    println!(
        "   /original still reads {o:#04x} at 8 KiB, /copy reads {c:#04x}; one block allocated"
    );
    ensure!(
        fs.statfs().free == before - 1,
        "copy-on-write should allocate one block"
    );

    println!();
    println!(
        "4. Punch 16 KiB..32 KiB out of /original: the blocks are still /copy's, so none is freed."
    );
    let before = fs.statfs().free;
    original.fallocate(FallocMode::PunchHole, 16 << 10, 16 << 10)?;
    show_fiemap("/original", &original)?;
    println!(
        "   (the block at 8 KiB is /original's alone since /copy moved off it: no longer shared)"
    );
    ensure!(
        fs.statfs().free == before,
        "punching shared blocks freed them"
    );
    println!("   free blocks unchanged: {before}");
    println!("   Punch the same range out of /copy: now nobody maps them, 4 blocks are freed.");
    copy.fallocate(FallocMode::PunchHole, 16 << 10, 16 << 10)?;
    let after = fs.statfs().free;
    ensure!(
        after == before + 4,
        "expected 4 blocks freed, free {before} -> {after}"
    );
    println!("   free blocks: {before} -> {after}");

    println!();
    leases(&fs)?;

    println!();
    direct_mapping()?;

    println!();
    devices::run()?;

    println!();
    println!("10. Check the metadata as fsck does.");
    let problems = fs.check();
    for p in &problems {
        println!("   problem: {p}");
    }
    ensure!(problems.is_empty(), "{} problems found", problems.len());
    println!("   consistent: no problems");
    Ok(())
}
