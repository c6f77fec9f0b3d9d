//! The `vm.max_map_count` budget of mappings (`fs/mmap/budget.rs`) cannot
//! be bypassed:
//!
//! - it is a running total over the live mappings, charged at `mmap` and
//!   refunded at munmap: many small mappings, each far under the budget,
//!   cannot together pass it;
//! - areas are counted as they are placed: a shared writable mapping
//!   splits at every change between shared (reflinked) and private blocks
//!   inside one extent, so it needs more areas than the file has extents.
//!
//! (Tests set the budget with `set_map_budget_for_tests`; the real one is
//! `vm.max_map_count / MAP_COUNT_SHARE`.)

mod map_support;

use std::time::Duration;

use map_support::*;
use pinfs::fs::FallocMode;
use pinfs::map::MapFlags;
use pinfs::Errno;

const LONG: Duration = Duration::from_secs(45);
const A: u8 = 0xA5;

#[test]
fn the_budget_is_a_total_over_live_mappings() {
    let fs = mount(LONG);
    // Four runs: block, hole, block, hole.
    let f = file(&fs, "/f", 4 * PAGE, A);
    for p in [1, 3] {
        f.fallocate(FallocMode::PunchHole, p * PAGE, PAGE).unwrap();
    }
    fs.set_map_budget_for_tests(Some(10));
    let one = f.mmap(0, 4 * PAGE, MapFlags::PRIVATE).unwrap();
    let two = f.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    // 8 areas charged: 4 more would pass 10, though each mapping fits.
    let err = f.mmap(0, 4 * PAGE, MapFlags::PRIVATE).unwrap_err();
    assert_eq!(err.errno(), Errno::ENOMEM, "{err}");
    assert!(err.to_string().contains("areas"), "a clear error: {err}");
    // Two fit.
    let small = f.mmap(0, 2 * PAGE, MapFlags::PRIVATE).unwrap();
    assert_eq!(load(&small, 0), A);
    assert_eq!(fs.mapping_count(), 3);
    // Unmapping refunds.
    drop(one);
    let three = f.mmap(0, 4 * PAGE, MapFlags::PRIVATE).unwrap();
    assert_eq!(load(&three, 2 * PAGE), A);
    drop((two, three, small));
    // All refunded: the whole budget again.
    let all: Vec<_> = (0..2)
        .map(|_| f.mmap(0, 4 * PAGE, MapFlags::PRIVATE).unwrap())
        .collect();
    assert_eq!(all.len(), 2);
}

#[test]
fn a_shared_writable_mapping_is_charged_its_shared_private_splits() {
    let fs = mount(LONG);
    let s = file(&fs, "/s", 4 * PAGE, A);
    assert_eq!(s.fiemap().unwrap().len(), 1, "one extent");
    // Pages 0 and 1 become shared with /t; 2 and 3 stay private.
    let t = file(&fs, "/t", 0, 0);
    t.reflink(&s, Some((0, 0, 2 * PAGE))).unwrap();
    fs.set_map_budget_for_tests(Some(1));
    // Private or read-only: the blocks themselves, one area.
    let p = s.mmap(0, 4 * PAGE, MapFlags::PRIVATE).unwrap();
    assert_eq!(load(&p, 0), A);
    drop(p);
    // Shared writable: write-protected copies for the shared blocks, the
    // pool for the private ones — two areas, over a budget of one.
    let err = s.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap_err();
    assert_eq!(err.errno(), Errno::ENOMEM, "{err}");
    fs.set_map_budget_for_tests(Some(2));
    let m = s.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, 0), A);
    assert_eq!(load(&m, 3 * PAGE), A);
}
