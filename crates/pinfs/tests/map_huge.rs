//! 2 MiB pages in mappings (issue 4: "2 MiB pages where extents allow").
//!
//! On a pool the kernel backs with transparent 2 MiB pages (a memfd with
//! shmem THP allowed), a 2 MiB window of a file whose blocks are one
//! 2 MiB-aligned run of pool blocks is mapped by one page-table entry; the
//! kernel's own accounting (`/proc/self/smaps`, `ShmemPmdMapped`) is what
//! these tests read. A store into a wholly unallocated window allocates the
//! whole window, as a DAX file system's 2 MiB fault does. Each property has
//! its control: misaligned extents, windows not wholly inside the mapping or
//! the file, and partly allocated windows stay on 4 KiB pages.
//!
//! The tests set the machine up themselves (`shmem_enabled` = `advise`, as
//! root) and skip with a printed reason only where that is impossible.

#![allow(unsafe_code)]

mod map_support;

use std::sync::Arc;
use std::time::Duration;

use map_support::*;
use pinfs::fs::{Cred, FallocMode, Fs, Handle};
use pinfs::map::MapFlags;
use pinfs::media::{HugePolicy, MappedPool, Media};

const LONG: Duration = Duration::from_secs(45);
const HUGE: u64 = 2 << 20;
const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// Let memfd memory advised `MADV_HUGEPAGE` be allocated in 2 MiB pages;
/// `Err(reason)` where this machine cannot.
fn enable_shmem_thp() -> Result<(), String> {
    let selected = |path: &str| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let start = text.find('[')?;
        let end = text[start..].find(']')? + start;
        Some(text[start + 1..end].to_string())
    };
    let global = format!("{THP}/shmem_enabled");
    let own = format!("{THP}/hugepages-2048kB/shmem_enabled");
    let Some(current) = selected(&global) else {
        return Err(format!("{global} is missing: no transparent huge pages"));
    };
    if matches!(current.as_str(), "never" | "deny") {
        std::fs::write(&global, "advise")
            .map_err(|e| format!("cannot set {global} to advise ({e}); it is {current}"))?;
    }
    if selected(&own).as_deref() == Some("never") {
        std::fs::write(&own, "inherit")
            .map_err(|e| format!("cannot set {own} to inherit ({e})"))?;
    }
    let probe = MappedPool::memfd(4 << 20).map_err(|e| e.to_string())?;
    if !probe.caps().huge_pages {
        return Err("memfd pools still get no 2 MiB pages".to_string());
    }
    Ok(())
}

/// A file system on a 64 MiB memfd pool with 2 MiB pages, or `None` (and a
/// printed reason) where the machine cannot provide them.
fn huge_fs(test: &str) -> Option<Arc<Fs>> {
    match enable_shmem_thp() {
        Ok(()) => {
            let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(64 << 20).unwrap());
            assert!(media.caps().huge_pages);
            Some(mount_on(media, LONG))
        }
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// Load one byte of every page of `m`, as a device or application walking
/// the mapping would; returns a checksum so the loads are not optimised out.
fn touch_all(m: &pinfs::map::Mapping) -> u64 {
    (0..m.len().div_ceil(PAGE))
        .map(|p| u64::from(load(m, p * PAGE)))
        .sum()
}

fn blocks(h: &Handle) -> u64 {
    h.stat().unwrap().blocks
}

#[test]
fn aligned_extents_are_mapped_with_2mib_pages() {
    let Some(fs) = huge_fs("aligned_extents_are_mapped_with_2mib_pages") else {
        return;
    };
    let h = file(&fs, "/f", 4 * HUGE, 0x5a);
    for e in h.fiemap().unwrap() {
        assert_eq!(e.physical % HUGE, 0, "2 MiB writes get aligned blocks");
    }
    let m = h.mmap(0, 4 * HUGE, MapFlags::SHARED).unwrap();
    assert_eq!(touch_all(&m), 0x5a * 4 * HUGE / PAGE);
    assert_eq!(m.huge_mapped_bytes().unwrap(), 4 * HUGE);
    // A store through a 2 MiB page reaches the file.
    store(&m, HUGE + 12345, 0x77);
    assert_eq!(contents(&h, HUGE + 12344, 3), vec![0x5a, 0x77, 0x5a]);
    // MAP_DIRECT mappings are placed the same way.
    let d = h.mmap(0, 4 * HUGE, MapFlags::DIRECT).unwrap();
    touch_all(&d);
    assert_eq!(d.huge_mapped_bytes().unwrap(), 4 * HUGE);
}

#[test]
fn misaligned_extents_stay_on_4k_pages() {
    let Some(fs) = huge_fs("misaligned_extents_stay_on_4k_pages") else {
        return;
    };
    // Two files written a block at a time, in turn: each one's blocks are
    // scattered, so no window is one aligned run of pool blocks.
    let a = file(&fs, "/a", 0, 0);
    let b = file(&fs, "/b", 0, 0);
    for i in 0..(2 * HUGE / PAGE) {
        a.pwrite(i * PAGE, &[0xa1; PAGE as usize]).unwrap();
        b.pwrite(i * PAGE, &[0xb2; PAGE as usize]).unwrap();
    }
    let m = a.mmap(0, 2 * HUGE, MapFlags::SHARED).unwrap();
    assert_eq!(touch_all(&m), 0xa1 * 2 * HUGE / PAGE);
    assert_eq!(m.huge_mapped_bytes().unwrap(), 0);
    // Over aligned extents, a mapping gets 2 MiB pages exactly for the
    // windows wholly inside it: none of [4 KiB, 4 MiB - 4 KiB), one of
    // [4 KiB, 4 MiB).
    let c = file(&fs, "/c", 2 * HUGE, 0xc3);
    let m = c.mmap(PAGE, 2 * HUGE - 2 * PAGE, MapFlags::SHARED).unwrap();
    touch_all(&m);
    assert_eq!(m.huge_mapped_bytes().unwrap(), 0);
    let m = c.mmap(PAGE, 2 * HUGE - PAGE, MapFlags::SHARED).unwrap();
    touch_all(&m);
    assert_eq!(m.huge_mapped_bytes().unwrap(), HUGE);
    let whole = c.mmap(0, 2 * HUGE, MapFlags::SHARED).unwrap();
    touch_all(&whole);
    assert_eq!(whole.huge_mapped_bytes().unwrap(), 2 * HUGE);
}

#[test]
fn a_store_into_an_unallocated_window_allocates_the_whole_window() {
    let Some(fs) = huge_fs("a_store_into_an_unallocated_window_allocates_the_whole_window") else {
        return;
    };
    let h = file(&fs, "/sparse", 0, 0);
    h.truncate(4 * HUGE + 5 * PAGE).unwrap();
    let m = h.mmap(0, 4 * HUGE + 5 * PAGE, MapFlags::SHARED).unwrap();
    let free = fs.statfs().free;
    // One store in each of the four whole windows.
    for w in 0..4 {
        store(&m, w * HUGE + (w + 1) * 3 * PAGE + 17, 0x40 + w as u8);
    }
    assert_eq!(
        blocks(&h),
        4 * HUGE / PAGE,
        "four stores, four whole windows"
    );
    assert_eq!(fs.statfs().free, free - 4 * HUGE / PAGE);
    touch_all(&m);
    assert_eq!(m.huge_mapped_bytes().unwrap(), 4 * HUGE);
    // The rest of every window reads as zeros; the stores are in the file.
    let data = contents(&h, 0, (4 * HUGE) as usize);
    for (i, &b) in data.iter().enumerate() {
        let i = i as u64;
        let w = i / HUGE;
        let want = if i == w * HUGE + (w + 1) * 3 * PAGE + 17 {
            0x40 + w as u8
        } else {
            0
        };
        assert_eq!(b, want, "byte {i}");
    }
    // Controls: the window past the last whole one reaches beyond end of
    // file, so a store there allocates one block.
    store(&m, 4 * HUGE + PAGE, 1);
    assert_eq!(blocks(&h), 4 * HUGE / PAGE + 1);
}

#[test]
fn windows_not_wholly_free_or_not_wholly_mapped_allocate_less() {
    let Some(fs) = huge_fs("windows_not_wholly_free_or_not_wholly_mapped_allocate_less") else {
        return;
    };
    let h = file(&fs, "/f", 0, 0);
    h.truncate(4 * HUGE).unwrap();
    // Window 0 partly allocated (one block written).
    h.pwrite(7 * PAGE, &[9; PAGE as usize]).unwrap();
    // Window 1 partly unwritten.
    h.fallocate(FallocMode::Allocate { keep_size: true }, HUGE, PAGE)
        .unwrap();
    let m = h.mmap(0, 4 * HUGE, MapFlags::SHARED).unwrap();
    store(&m, 3 * PAGE, 1);
    assert_eq!(blocks(&h), 3, "partly allocated window: one more block");
    store(&m, HUGE + 9 * PAGE, 2);
    assert_eq!(blocks(&h), 4, "partly unwritten window: one more block");
    // Window 3 is only half inside this mapping: not the window, only the
    // fault-around chunk (wholly free and inside the mapping).
    let half = h.mmap(3 * HUGE, HUGE / 2, MapFlags::SHARED).unwrap();
    store(&half, 0, 3);
    let chunk = pinfs::fs::FAULT_AROUND_BYTES / PAGE;
    assert_eq!(
        blocks(&h),
        4 + chunk,
        "window not wholly inside the mapping"
    );
    // Window 2 is wholly free and mapped: the whole window.
    store(&m, 2 * HUGE, 4);
    assert_eq!(blocks(&h), 4 + chunk + HUGE / PAGE);
    assert_eq!(contents(&h, 7 * PAGE, 1), vec![9]);
    assert_eq!(contents(&h, 3 * PAGE, 1), vec![1]);
    assert_eq!(contents(&h, 3 * HUGE, 1), vec![3]);
}

#[test]
fn punch_truncate_and_reflink_split_a_2mib_page_and_keep_the_rest() {
    let Some(fs) = huge_fs("punch_truncate_and_reflink_split_a_2mib_page_and_keep_the_rest") else {
        return;
    };
    let h = file(&fs, "/f", 4 * HUGE, 0x31);
    let m = h.mmap(0, 4 * HUGE, MapFlags::SHARED).unwrap();
    touch_all(&m);
    assert_eq!(m.huge_mapped_bytes().unwrap(), 4 * HUGE);
    // Punch one block of window 1: it reads as zeros at once, the window
    // falls back to 4 KiB pages, the others keep their 2 MiB pages.
    h.fallocate(FallocMode::PunchHole, HUGE + 5 * PAGE, PAGE)
        .unwrap();
    assert_eq!(load(&m, HUGE + 5 * PAGE + 9), 0);
    assert_eq!(load(&m, HUGE + 4 * PAGE), 0x31);
    touch_all(&m);
    assert_eq!(m.huge_mapped_bytes().unwrap(), 3 * HUGE);
    // A store into the punched block allocates just that block.
    let before = blocks(&h);
    store(&m, HUGE + 5 * PAGE, 0x32);
    assert_eq!(blocks(&h), before + 1);
    // Reflink window 2 into another file: shared blocks are served
    // write-protected copies, so window 2 leaves its 2 MiB page too.
    let other = file(&fs, "/g", 0, 0);
    other.reflink(&h, Some((2 * HUGE, 0, HUGE))).unwrap();
    touch_all(&m);
    assert_eq!(m.huge_mapped_bytes().unwrap(), 2 * HUGE);
    store(&m, 2 * HUGE + 8, 0x33);
    assert_eq!(contents(&other, 8, 1), vec![0x31], "copy on write");
    // Truncate into window 3: everything past the new end raises SIGBUS
    // (checked through the copying accessor), window 0 stays huge.
    h.truncate(3 * HUGE + PAGE).unwrap();
    let mut b = [0u8; 1];
    assert!(m.read(3 * HUGE + 2 * PAGE, &mut b).is_err());
    touch_range(&m, 0, 3 * HUGE + PAGE);
    assert_eq!(m.huge_mapped_bytes().unwrap(), HUGE);
    assert_eq!(contents(&h, 0, 4), vec![0x31; 4]);
    drop(m);
    fs.unlink(Cred::ROOT, "/g").unwrap();
}

/// Load one byte of every page of `m` in `[from, to)`.
fn touch_range(m: &pinfs::map::Mapping, from: u64, to: u64) {
    for p in (from / PAGE)..to.div_ceil(PAGE) {
        load(m, p * PAGE);
    }
}

/// SPEC §4.4 with 2 MiB windows: writers store through mappings of sparse
/// files (every first store into a window allocates the whole window, and
/// it is mapped with a 2 MiB page) while punching whole windows and
/// truncating their files; checkers create files of aligned 2 MiB extents —
/// the blocks just freed — and verify them. Returns corrupt bytes seen.
fn huge_invariant(fs: &Arc<Fs>, rounds: usize) -> u64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    const WINDOWS: u64 = 2;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..2u8 {
        let h = file(fs, &format!("/w{w}"), 0, 0);
        h.truncate(WINDOWS * HUGE).unwrap();
        let m = h.mmap(0, WINDOWS * HUGE, MapFlags::SHARED).unwrap();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let tag = [0xd0 + w; 64];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = (i * 4160) % (WINDOWS * HUGE - 64);
                // EFAULT past a truncated end of file is expected.
                let _ = m.write(at, &tag);
                if i % 61 == 60 {
                    let win = (i / 61) % WINDOWS;
                    let _ = h.fallocate(FallocMode::PunchHole, win * HUGE, HUGE);
                    if i.is_multiple_of(3) {
                        let _ = h.truncate(0);
                        let _ = h.truncate(WINDOWS * HUGE);
                    }
                }
                i += 1;
            }
            i
        }));
    }
    let mut corrupt = 0;
    for r in 0..rounds {
        let path = format!("/c{}", r % 3);
        let _ = fs.unlink(Cred::ROOT, &path);
        let c = file(fs, &path, HUGE, 0x5a);
        for _ in 0..3 {
            corrupt += contents(&c, 0, HUGE as usize)
                .iter()
                .filter(|&&b| b != 0x5a)
                .count() as u64;
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let stores: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{stores} stores, {corrupt} corrupt bytes seen");
    corrupt
}

#[test]
fn no_file_sees_stores_through_another_files_2mib_pages() {
    let Some(fs) = huge_fs("no_file_sees_stores_through_another_files_2mib_pages") else {
        return;
    };
    assert_eq!(huge_invariant(&fs, 200), 0);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn negative_control_without_replacement_2mib_pages_leak_stores() {
    let Some(fs) = huge_fs("negative_control_without_replacement_2mib_pages_leak_stores") else {
        return;
    };
    fs.disable_map_replacement_for_tests();
    assert!(
        huge_invariant(&fs, 200) > 0,
        "with re-placement off the test must see corruption"
    );
}

/// A tmpfs of 64 MiB mounted with `huge=OPTION` at a fresh directory, or
/// `None` where this process cannot mount; unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(option: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size=64m,huge={option}"))
            .arg("pinfs-test")
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn tmpfs_pools_follow_their_mounts_huge_option() {
    let global = std::fs::read_to_string(format!("{THP}/shmem_enabled")).unwrap_or_default();
    if global.contains("[deny]") || global.contains("[force]") || global.is_empty() {
        eprintln!("skipping tmpfs_pools_follow_their_mounts_huge_option: shmem_enabled overrides mounts: {global}");
        return;
    }
    for (option, huge) in [("within_size", true), ("never", false)] {
        let Some(mnt) = Tmpfs::mount(option) else {
            eprintln!("skipping tmpfs_pools_follow_their_mounts_huge_option: cannot mount tmpfs here (not root?)");
            return;
        };
        let pool = MappedPool::create(&mnt.0.path().join("pool"), 48 << 20).unwrap();
        assert_eq!(pool.caps().huge_pages, huge, "huge={option}");
        let fs = mount_on(Arc::new(pool), LONG);
        let h = file(&fs, "/f", 2 * HUGE, 0x11);
        let m = h.mmap(0, 2 * HUGE, MapFlags::SHARED).unwrap();
        assert_eq!(touch_all(&m), 0x11 * 2 * HUGE / PAGE);
        let want = if huge { 2 * HUGE } else { 0 };
        assert_eq!(m.huge_mapped_bytes().unwrap(), want, "huge={option}");
        drop(m);
        drop(h);
        drop(fs);
    }
}

/// A hugetlbfs mount with at least 24 free 2 MiB pages (raising
/// `vm.nr_hugepages` as root), or `None`; undone when dropped.
struct Hugetlbfs {
    dir: tempfile::TempDir,
    raised_from: Option<u64>,
}

impl Hugetlbfs {
    const NR: &'static str = "/proc/sys/vm/nr_hugepages";

    fn mount() -> Result<Hugetlbfs, String> {
        let read =
            |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let free = |_: ()| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("HugePages_Free:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut raised_from = None;
        if free(()) < 24 {
            let now = read(Self::NR).ok_or("no vm.nr_hugepages")?;
            std::fs::write(Self::NR, (now + 24).to_string())
                .map_err(|e| format!("cannot raise vm.nr_hugepages ({e})"))?;
            raised_from = Some(now);
        }
        let mounted = std::process::Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "pinfs-test"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        let this = Hugetlbfs { dir, raised_from };
        if !mounted {
            return Err("cannot mount hugetlbfs".to_string());
        }
        if free(()) < 24 {
            return Err(format!("only {} free 2 MiB pages", free(())));
        }
        Ok(this)
    }
}

impl Drop for Hugetlbfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
        if let Some(n) = self.raised_from {
            let _ = std::fs::write(Self::NR, n.to_string());
        }
    }
}

/// hugetlbfs pools (2 MiB pages only): the file system, pins and policies
/// work on them; `mmap` is refused with `EOPNOTSUPP` because a file's
/// 4 KiB blocks cannot be placed from 2 MiB-only memory one by one.
#[test]
fn hugetlbfs_pools_work_and_refuse_mmap() {
    let mnt = match Hugetlbfs::mount() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipping hugetlbfs_pools_work_and_refuse_mmap: {why}");
            return;
        }
    };
    let pool = MappedPool::create(&mnt.dir.path().join("pool"), 32 << 20).unwrap();
    assert_eq!(pool.caps().page_size, HUGE);
    assert!(pool.caps().long_term_pin);
    let fs = mount_on(Arc::new(pool), LONG);
    let h = file(&fs, "/f", HUGE, 0x61);
    h.fallocate(FallocMode::PunchHole, 8 * PAGE, PAGE).unwrap();
    let data = contents(&h, 0, HUGE as usize);
    assert!(data[8 * PAGE as usize..9 * PAGE as usize]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        data.iter().filter(|&&b| b == 0x61).count() as u64,
        HUGE - PAGE
    );
    assert_eq!(
        h.mmap(0, HUGE, MapFlags::SHARED).unwrap_err().errno(),
        pinfs::Errno::EOPNOTSUPP
    );
    // A long-term pin under an unbreakable layout lease; another owner's
    // truncate under the default policy (defer) leaves the block busy.
    use pinfs::lease::{LeaseRequest, OwnerId};
    let (lf, lh, owner) = (h.lease_file(), h.lease_handle(), OwnerId(HOLDER.owner));
    fs.leases()
        .set_lease(lf, lh, owner, LeaseRequest::layout_shared().unbreakable())
        .unwrap();
    let pin = h.pin_long_term(0, PAGE, None).unwrap();
    fs.leases()
        .set_lease(lf, lh, owner, LeaseRequest::layout_unlock())
        .unwrap();
    let other = fs.open(OTHER, "/f", pinfs::fs::OpenFlags::RDWR, 0).unwrap();
    other.truncate(0).unwrap();
    assert_eq!(fs.statfs().busy, 1);
    drop(pin);
    assert_eq!(fs.statfs().busy, 0);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn collapsing_pools_map_large_files_with_2mib_pages() {
    // A memfd under shmem_enabled=never (the kernel's default) collapses the
    // whole 2 MiB windows it writes; forced here, so the test needs no
    // setting changed. Written by pwrite and by whole-window write faults,
    // both files are then mapped with 2 MiB entries.
    let run = |policy: HugePolicy| -> Option<(u64, u64)> {
        let pool = MappedPool::memfd_with_huge_policy(64 << 20, policy).unwrap();
        let media: Arc<dyn Media> = Arc::new(pool);
        let fs = mount_on(media, LONG);
        let h = file(&fs, "/written", 4 * HUGE, 0x21);
        let m = h.mmap(0, 4 * HUGE, MapFlags::SHARED).unwrap();
        assert_eq!(touch_all(&m), 0x21 * 4 * HUGE / PAGE);
        let written = m.huge_mapped_bytes().unwrap();
        let f = file(&fs, "/faulted", 0, 0);
        f.truncate(4 * HUGE).unwrap();
        let n = f.mmap(0, 4 * HUGE, MapFlags::SHARED).unwrap();
        for p in 0..4 * HUGE / PAGE {
            store(&n, p * PAGE, 0x22);
        }
        assert_eq!(touch_all(&n), 0x22 * 4 * HUGE / PAGE);
        Some((written, n.huge_mapped_bytes().unwrap()))
    };
    let (written, faulted) = run(HugePolicy::Collapse).unwrap();
    if written == 0 && faulted == 0 {
        // The kernel refused MADV_COLLAPSE (before 6.1, or the 2 MiB size
        // set to never, or shmem_enabled=deny).
        eprintln!("skipping collapsing_pools_map_large_files_with_2mib_pages: no MADV_COLLAPSE of shmem here");
        return;
    }
    assert_eq!((written, faulted), (4 * HUGE, 4 * HUGE));
    // Negative control: no policy, no 2 MiB pages (unless the kernel gives
    // every memfd page of a sized file 2 MiB pages).
    let global = pinfs::media::mapped::thp_setting("shmem_enabled").unwrap_or_default();
    if matches!(global.as_str(), "always" | "within_size" | "force") {
        eprintln!("control skipped: shmem_enabled={global} gives every memfd 2 MiB pages");
        return;
    }
    assert_eq!(run(HugePolicy::None).unwrap(), (0, 0));
}
