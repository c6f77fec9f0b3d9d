//! Mapping safety does not rest on `mmap(MAP_FIXED)` never failing (SPEC
//! §4.4 for mappings):
//!
//! - when a page of a live mapping can be neither re-placed after a layout
//!   change nor made to raise `SIGBUS` nor made inaccessible (injected
//!   failures stand in for an exhausted `vm.max_map_count`), the mapping is
//!   marked broken and the pool block the page still reaches stays busy —
//!   another file filling the pool never gets it — until the mapping is
//!   unmapped, which frees it. Negative control: with the hold disabled the
//!   same scenario sees the block reused (the mapping shows another file's
//!   bytes) while still mapped.
//! - `mmap` of a range too fragmented for its share of `vm.max_map_count`
//!   fails with `ENOMEM` up front.
//! - a reflink of a file whose writable mapping cannot be re-placed never
//!   shares the blocks the stuck pages store into: the clone keeps the
//!   source's contents at reflink time. Negative control: with the
//!   write-protect before the commit switched off the stores change it.

mod map_support;

use std::time::Duration;

use map_support::*;
use pinfs::fs::FallocMode;
use pinfs::map::MapFlags;
use pinfs::Errno;

const LONG: Duration = Duration::from_secs(45);
const A: u8 = 0xA5;
const B: u8 = 0xB6;
/// Bytes per write while filling the pool.
const FILL_CHUNK: usize = 64 << 10;

/// How the mapped blocks are freed.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Punch page 1: one block.
    Punch,
    /// Truncate to one page: pages 1..4, three blocks.
    Truncate,
}

/// Free page 1 (and, truncating, the pages after it) of a mapped 4-page
/// file while every re-placement (and its fallbacks) of the mapping fails,
/// then let another file take every free block. Returns whether the block
/// of page 1 was reused while still mapped.
fn cut_with_failed_replacement(cut: Cut, hold: bool) -> bool {
    let fs = mount(LONG);
    if !hold {
        fs.disable_map_hold_for_tests();
    }
    let a = file(&fs, "/a", 4 * PAGE, A);
    let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, PAGE), A);
    let punched = a
        .fiemap()
        .unwrap()
        .iter()
        .find(|e| e.logical <= PAGE && PAGE < e.logical + e.len)
        .map(|e| e.physical + PAGE - e.logical)
        .expect("page 1 is mapped");
    // The re-placement, its SIGBUS fallback and its no-access fallback fail,
    // and so does every later placement until the injection is lifted.
    m.inject_placement_failures_for_tests(0, u64::MAX);
    let freed = match cut {
        Cut::Punch => {
            a.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
            assert_eq!(contents(&a, PAGE, 1), [0], "the file has the hole");
            1
        }
        Cut::Truncate => {
            a.truncate(PAGE).unwrap();
            3
        }
    };
    assert!(m.is_broken(), "the mapping is marked broken");
    let busy = fs.statfs().busy;
    let expected = if hold { freed } else { 0 };
    assert_eq!(busy, expected, "the reachable blocks are busy iff held");

    // Another file takes every free block there is.
    let b = file(&fs, "/b", 0, 0);
    let chunk = vec![B; FILL_CHUNK];
    let mut at = 0u64;
    while b.pwrite(at, &chunk).is_ok_and(|n| n == FILL_CHUNK) {
        at += FILL_CHUNK as u64;
    }
    // Fill what is left block by block (ENOSPC ends it).
    while b.pwrite(at, &chunk[..PAGE as usize]).is_ok() {
        at += PAGE;
    }
    assert!(at > 0);
    let in_b = b
        .fiemap()
        .unwrap()
        .iter()
        .any(|e| e.physical <= punched && punched < e.physical + e.len);
    // The stuck page still shows the block: its bytes say who has it.
    let reused = in_b || load(&m, PAGE) != A;

    m.inject_placement_failures_for_tests(0, 0);
    if hold {
        assert!(!reused);
        drop(m);
        assert_eq!(fs.statfs().busy, 0, "munmap releases the held block");
        let free = fs.statfs().free;
        assert!(free >= 1, "the held block is free again");
        // And it can be allocated.
        b.pwrite(at, &chunk[..PAGE as usize]).unwrap();
        let got_it = b
            .fiemap()
            .unwrap()
            .iter()
            .any(|e| e.physical <= punched && punched < e.physical + e.len);
        assert!(got_it || free > 1, "the released block is allocatable");
        drop(b);
        fs.unlink(pinfs::fs::Cred::ROOT, "/b").unwrap();
        assert!(fs.check().is_empty(), "{:?}", fs.check());
    }
    reused
}

#[test]
fn blocks_a_mapping_cannot_stop_reaching_stay_busy_until_munmap() {
    for cut in [Cut::Punch, Cut::Truncate] {
        assert!(!cut_with_failed_replacement(cut, true), "{cut:?}");
    }
}

#[test]
fn negative_control_without_the_hold_the_block_is_reused_while_mapped() {
    for cut in [Cut::Punch, Cut::Truncate] {
        assert!(cut_with_failed_replacement(cut, false), "{cut:?}");
    }
}

#[test]
fn a_later_fault_of_a_broken_mapping_raises_sigbus() {
    let scenario = |break_it: bool| {
        move || {
            let fs = mount(LONG);
            let a = file(&fs, "/a", 4 * PAGE, A);
            a.fallocate(FallocMode::PunchHole, 3 * PAGE, PAGE).unwrap();
            let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
            if break_it {
                m.inject_placement_failures_for_tests(0, 3);
                a.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
                expect!(m.is_broken(), 10);
            }
            // A hole never touched: its first load is a fault.
            expect!(load(&m, 3 * PAGE) == 0, 11);
            0
        }
    };
    assert_eq!(in_child(scenario(false)), CLEAN);
    assert_eq!(in_child(scenario(true)), SIGBUS);
}

#[test]
fn mmap_of_a_too_fragmented_range_fails_with_enomem() {
    const PAGES: u64 = 64;
    let fs = mount(LONG);
    let f = file(&fs, "/f", PAGES * PAGE, A);
    for p in (1..PAGES).step_by(2) {
        f.fallocate(FallocMode::PunchHole, p * PAGE, PAGE).unwrap();
    }
    let whole = file(&fs, "/whole", PAGES * PAGE, A);
    fs.set_map_budget_for_tests(Some(PAGES / 4));
    for flags in [MapFlags::SHARED, MapFlags::PRIVATE] {
        // PAGES runs (block, hole, block, ...) over a budget of PAGES / 4.
        let err = f.mmap(0, PAGES * PAGE, flags).unwrap_err();
        assert_eq!(err.errno(), Errno::ENOMEM, "{err}");
        assert!(err.to_string().contains("areas"), "a clear error: {err}");
        // A part of it that fits, and an unfragmented file, map.
        let part = f.mmap(0, (PAGES / 8) * PAGE, flags).unwrap();
        assert_eq!(load(&part, 0), A);
        let w = whole.mmap(0, PAGES * PAGE, flags).unwrap();
        assert_eq!(load(&w, (PAGES - 1) * PAGE), A);
    }
    assert_eq!(fs.mapping_count(), 0);
    // The real budget (a share of vm.max_map_count) admits it.
    fs.set_map_budget_for_tests(None);
    let m = f.mmap(0, PAGES * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, 2 * PAGE), A);
    drop(m);
}

/// A block both pinned and reached by a broken mapping: the last unpin must
/// not free it while the broken mapping still shows it; the munmap then
/// does (with the pin gone). Default policy `defer`: the punch goes ahead
/// over the pinned block, which leaves the file busy.
#[test]
fn a_pinned_block_a_broken_mapping_reaches_stays_busy_past_the_unpin() {
    let fs = mount(LONG);
    let a = file(&fs, "/a", 4 * PAGE, A);
    // The owner's unbreakable lease entitles the pin; its own punch goes on.
    let lease = fs
        .leases()
        .set_lease(
            a.lease_file(),
            a.lease_handle(),
            pinfs::lease::OwnerId(a.cred().owner),
            pinfs::lease::LeaseRequest::layout_shared().unbreakable(),
        )
        .unwrap();
    let pin = a.pin_long_term(PAGE, PAGE, None).unwrap();
    let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, PAGE), A);
    m.inject_placement_failures_for_tests(0, u64::MAX);
    a.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
    assert!(m.is_broken());
    assert_eq!(fs.statfs().busy, 1, "pinned and held");
    drop(pin);
    assert_eq!(
        fs.statfs().busy,
        1,
        "the unpin leaves it busy: the broken mapping still reaches it"
    );
    m.inject_placement_failures_for_tests(0, 0);
    drop(m);
    assert_eq!(fs.statfs().busy, 0, "munmap frees it");
    fs.leases().release(lease).unwrap();
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

/// A local writable mapping of `/a` whose placements all fail; `/a` is
/// reflinked to `/b`; stores go through the stale pages. Returns the bytes
/// of `/b` that differ from `/a`'s contents at reflink time.
fn reflink_with_failed_placement(protect: bool) -> usize {
    let fs = mount(LONG);
    if !protect {
        fs.disable_reflink_protect_for_tests();
    }
    let a = file(&fs, "/a", 4 * PAGE, A);
    let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, PAGE), A);
    let at_reflink = contents(&a, 0, (4 * PAGE) as usize);
    m.inject_placement_failures_for_tests(0, u64::MAX);
    let b = file(&fs, "/b", 0, 0);
    b.reflink(&a, None).unwrap();
    assert!(m.is_broken(), "the mapping is marked broken");
    for page in 0..4 {
        store(&m, page * PAGE + 3, B);
    }
    let changed = contents(&b, 0, (4 * PAGE) as usize)
        .iter()
        .zip(&at_reflink)
        .filter(|(x, y)| x != y)
        .count();
    m.inject_placement_failures_for_tests(0, 0);
    drop(m);
    if protect {
        assert!(fs.check().is_empty(), "{:?}", fs.check());
    }
    changed
}

#[test]
fn reflink_never_shares_a_block_a_stuck_local_page_stores_into() {
    assert_eq!(reflink_with_failed_placement(true), 0);
}

#[test]
fn negative_control_without_pre_commit_protection_a_stuck_page_changes_the_clone() {
    assert!(
        reflink_with_failed_placement(false) > 0,
        "without the write-protect before the commit the stuck page must change the clone"
    );
}
