//! A broken mapping whose tear-down fails keeps protecting its blocks
//! (SPEC §4.4 for mappings):
//!
//! - unmapping it when the tear-down placement fails (injected, as an
//!   exhausted `vm.max_map_count` would make it fail) leaves its pages
//!   reaching the file's blocks, so a later truncate must leave those blocks
//!   busy instead of freeing them;
//! - a reflink of a file whose blocks such pages (or a live broken
//!   mapping's stuck pages) still reach copies those blocks instead of
//!   sharing them: a stuck page is a writer nobody can stop, and a store
//!   through it into a shared block would change the other file;
//! - a mapping whose address range is poisoned (a failed placement may have
//!   left a gap another thread mapped into) breaks at its next re-placement
//!   and, never torn down, keeps its blocks held after munmap.
//!
//! Negative controls: with the hold disabled the truncate frees the blocks
//! and the reflink shares them.

mod map_support;

use std::time::Duration;

use map_support::*;
use pinfs::fs::Handle;
use pinfs::map::MapFlags;

const LONG: Duration = Duration::from_secs(45);
const A: u8 = 0xA5;
const PAGES: u64 = 4;

/// /a (PAGES pages of `A`), mapped, read through, then unmapped while every
/// placement fails: the tear-down fails. Returns the file system and /a.
fn failed_teardown(hold: bool) -> (std::sync::Arc<pinfs::fs::Fs>, Handle) {
    let fs = mount(LONG);
    if !hold {
        fs.disable_map_hold_for_tests();
    }
    let a = file(&fs, "/a", PAGES * PAGE, A);
    let m = a.mmap(0, PAGES * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, PAGE), A);
    m.inject_placement_failures_for_tests(0, u64::MAX);
    drop(m);
    assert_eq!(fs.mapping_count(), 0);
    (fs, a)
}

/// Busy blocks after truncating /a to 0 past a failed tear-down.
fn busy_after_truncate(hold: bool) -> u64 {
    let (fs, a) = failed_teardown(hold);
    assert_eq!(fs.statfs().busy, 0);
    a.truncate(0).unwrap();
    fs.statfs().busy
}

#[test]
fn blocks_of_a_mapping_whose_tear_down_failed_stay_busy_after_truncate() {
    assert_eq!(busy_after_truncate(true), PAGES);
}

#[test]
fn negative_control_without_the_hold_truncate_frees_them() {
    assert_eq!(busy_after_truncate(false), 0);
}

/// Whether a reflink of /a into /b shares a block with /a.
fn reflink_shares_a_held_block(hold: bool) -> bool {
    let (fs, a) = failed_teardown(hold);
    let b = file(&fs, "/b", 0, 0);
    b.reflink(&a, None).unwrap();
    assert_eq!(
        contents(&b, 0, (PAGES * PAGE) as usize),
        vec![A; (PAGES * PAGE) as usize]
    );
    let blocks = |h: &Handle| -> Vec<u64> {
        h.fiemap()
            .unwrap()
            .iter()
            .flat_map(|e| (e.physical..e.physical + e.len).step_by(PAGE as usize))
            .collect()
    };
    let (ba, bb) = (blocks(&a), blocks(&b));
    bb.iter().any(|x| ba.contains(x))
}

#[test]
fn reflink_copies_blocks_a_stuck_page_still_reaches() {
    assert!(!reflink_shares_a_held_block(true));
}

#[test]
fn negative_control_without_the_hold_reflink_shares_them() {
    assert!(reflink_shares_a_held_block(false));
}

/// A mapping whose address range is poisoned (a failed placement may have
/// left a gap someone else mapped into: nothing is placed there again)
/// breaks at its next re-placement, holds its blocks, and — since it can
/// never be torn down — keeps them held after munmap. Returns busy blocks
/// after the punch, and after munmap plus truncate.
fn poisoned(hold: bool) -> (u64, u64) {
    let fs = mount(LONG);
    if !hold {
        fs.disable_map_hold_for_tests();
    }
    let a = file(&fs, "/a", PAGES * PAGE, A);
    let m = a.mmap(0, PAGES * PAGE, MapFlags::SHARED).unwrap();
    assert_eq!(load(&m, PAGE), A);
    m.poison_region_for_tests();
    a.fallocate(pinfs::fs::FallocMode::PunchHole, PAGE, PAGE)
        .unwrap();
    assert!(m.is_broken(), "a poisoned mapping breaks");
    let after_punch = fs.statfs().busy;
    drop(m);
    a.truncate(0).unwrap();
    (after_punch, fs.statfs().busy)
}

#[test]
fn a_poisoned_mapping_breaks_and_holds_its_blocks_for_good() {
    assert_eq!(poisoned(true), (1, PAGES));
}

#[test]
fn negative_control_without_the_hold_a_poisoned_mappings_blocks_are_freed() {
    assert_eq!(poisoned(false), (0, 0));
}
