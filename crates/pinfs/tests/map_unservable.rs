//! A fault that can never be served ends in `SIGBUS`, never in a thread
//! re-faulting for ever:
//!
//! - a fault of a broken mapping whose page can be made neither `SIGBUS`
//!   nor inaccessible (placements failing, injected) sends the faulting
//!   thread `SIGBUS` itself (`tgkill`), as the kernel answers an
//!   unservable fault;
//! - a page whose page tables disagree with its placement (a placement that
//!   reported success without happening, injected) faults again and again
//!   with nothing changing: past a bound the thread gets `SIGBUS`.
//!
//! Controls: the same scenarios without the injection complete normally.
//! (With the protection removed, the children spin until their 30 s alarm:
//! checked by hand on the code before this fix, too slow for the suite.)

mod map_support;

use std::time::Duration;

use map_support::*;
use pinfs::fs::FallocMode;
use pinfs::map::MapFlags;

const LONG: Duration = Duration::from_secs(45);
const A: u8 = 0xA5;

#[test]
fn a_fault_of_a_broken_mapping_that_cannot_be_made_sigbus_kills_its_thread() {
    let scenario = |inject: bool| {
        move || {
            let fs = mount(LONG);
            let a = file(&fs, "/a", 4 * PAGE, A);
            a.fallocate(FallocMode::PunchHole, 3 * PAGE, PAGE).unwrap();
            let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
            if inject {
                // Every placement fails from now on: the punch breaks the
                // mapping, and page 3 can be made neither SIGBUS nor
                // inaccessible when it faults.
                m.inject_placement_failures_for_tests(0, u64::MAX);
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
fn a_page_that_faults_for_ever_without_progress_gets_sigbus() {
    let scenario = |inject: bool, write: bool| {
        move || {
            let fs = mount(LONG);
            let a = file(&fs, "/a", 4 * PAGE, A);
            a.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
            let m = a.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
            if inject {
                // The re-placement of page 1 after the write below reports
                // success but leaves the served (missing) page in place.
                m.inject_silent_placements_for_tests(1);
            }
            a.pwrite(PAGE, &[5u8; PAGE as usize]).unwrap();
            if write {
                store(&m, PAGE, 6);
                expect!(contents(&a, PAGE, 1) == [6], 12);
            } else {
                expect!(load(&m, PAGE) == 5, 13);
            }
            0
        }
    };
    for write in [false, true] {
        assert_eq!(in_child(scenario(false, write)), CLEAN, "write {write}");
        assert_eq!(in_child(scenario(true, write)), SIGBUS, "write {write}");
    }
}
