//! `SIGBUS` is real (SPEC §5.2, §10): raw loads and stores through mappings,
//! in child processes, are killed by the kernel's `SIGBUS` exactly in the
//! cases SPEC lists — beyond end of file (also after a truncate shrinks a
//! live mapping), through an invalidated `MAP_DIRECT` mapping, and on a
//! `MAP_DIRECT` fault that would allocate, convert unwritten extents or touch
//! a reflinked file — and not otherwise: the same accesses one step inside
//! those limits run to the end, and what they stored is in the file.
//!
//! Each scenario builds its own file system in the child (mappings are not
//! inherited across fork), returns 0 when every check held, or a number
//! naming the check that failed.

#![allow(unsafe_code)]

mod map_support;

use std::time::Duration;

use map_support::*;
use pinfs::fs::{FallocMode, OpenFlags};
use pinfs::map::MapFlags;

const LONG: Duration = Duration::from_secs(45);

#[test]
fn beyond_eof_raises_sigbus_and_the_eof_page_does_not() {
    // 2.5 pages of file, 4 pages of mapping.
    let scenario = |beyond: Option<bool>| {
        move || {
            let fs = mount(LONG);
            let h = file(&fs, "/f", 2 * PAGE + 2048, 1);
            let m = h.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
            expect!(load(&m, 0) == 1, 10);
            expect!(load(&m, 2 * PAGE + 2047) == 1, 11);
            // The tail of the page holding EOF is mapped, as in Linux.
            expect!(load(&m, 2 * PAGE + 2048) == 0, 12);
            expect!(load(&m, 3 * PAGE - 1) == 0, 13);
            store(&m, 2 * PAGE + 10, 7);
            expect!(contents(&h, 2 * PAGE + 10, 1) == [7], 14);
            match beyond {
                Some(true) => store(&m, 3 * PAGE, 9),
                Some(false) => {
                    load(&m, 3 * PAGE + 100);
                }
                None => {}
            }
            0
        }
    };
    assert_eq!(in_child(scenario(None)), CLEAN);
    assert_eq!(in_child(scenario(Some(false))), SIGBUS, "load beyond EOF");
    assert_eq!(in_child(scenario(Some(true))), SIGBUS, "store beyond EOF");
}

#[test]
fn truncate_makes_the_tail_of_a_live_mapping_sigbus() {
    let scenario = |after: u64| {
        move || {
            let fs = mount(LONG);
            let h = file(&fs, "/f", 4 * PAGE, 3);
            let m = h.mmap(0, 4 * PAGE, MapFlags::SHARED).unwrap();
            expect!(load(&m, 3 * PAGE) == 3, 10);
            h.truncate(PAGE + 100).unwrap();
            expect!(load(&m, PAGE + 50) == 3, 11);
            expect!(load(&m, PAGE + 100) == 0, 12);
            load(&m, after);
            0
        }
    };
    assert_eq!(in_child(scenario(PAGE + 200)), CLEAN);
    assert_eq!(in_child(scenario(2 * PAGE)), SIGBUS);
    assert_eq!(in_child(scenario(3 * PAGE + 5)), SIGBUS);
}

#[test]
fn invalidated_direct_mapping_raises_sigbus() {
    // The holder never reacts to the break: at lease-break-time its lease is
    // removed, the mapping invalidated, and the punch goes ahead.
    let scenario = |punch: bool| {
        move || {
            let fs = mount(Duration::from_millis(50));
            let h = file(&fs, "/f", 4 * PAGE, 5);
            let m = h.mmap(0, 4 * PAGE, MapFlags::DIRECT).unwrap();
            expect!(load(&m, 0) == 5, 10);
            store(&m, 1, 6);
            expect!(m.lease().is_some(), 11);
            if punch {
                let other = fs.open(OTHER, "/f", OpenFlags::RDWR, 0).unwrap();
                other
                    .fallocate(FallocMode::PunchHole, 3 * PAGE, PAGE)
                    .unwrap();
                expect!(m.is_invalidated(), 12);
                expect!(fs.leases().list().is_empty(), 13);
            }
            // Page 0 was never punched: only the invalidation can stop this.
            load(&m, 0);
            0
        }
    };
    assert_eq!(in_child(scenario(false)), CLEAN);
    assert_eq!(in_child(scenario(true)), SIGBUS);
}

#[test]
fn direct_faults_that_would_allocate_convert_or_touch_a_reflinked_file_raise_sigbus() {
    #[derive(Clone, Copy, Debug)]
    enum Case {
        /// A fully written, private file: loads and stores just work.
        Written,
        /// A store into a hole: would allocate.
        Hole,
        /// A store into an unwritten extent: would convert it.
        Unwritten,
        /// A load from a file with reflinked blocks.
        Reflinked,
    }
    // `store`: end the scenario with the store that would allocate or
    // convert; without it the scenario only loads (zeros) and must end
    // cleanly — a load of a hole or unwritten extent never raises SIGBUS.
    let scenario = |case: Case, store_last: bool| {
        move || {
            let fs = mount(LONG);
            let h = file(&fs, "/f", 4 * PAGE, 8);
            match case {
                Case::Written => {}
                Case::Hole => h.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap(),
                Case::Unwritten => h
                    .fallocate(FallocMode::ZeroRange { keep_size: true }, PAGE, PAGE)
                    .unwrap(),
                Case::Reflinked => {
                    let g = file(&fs, "/g", 0, 0);
                    g.reflink(&h, None).unwrap();
                }
            }
            let m = h.mmap(0, 4 * PAGE, MapFlags::DIRECT).unwrap();
            match case {
                Case::Written => {
                    expect!(load(&m, PAGE) == 8, 10);
                    store(&m, PAGE + 1, 9);
                    m.persist(PAGE, 2).unwrap();
                    expect!(contents(&h, PAGE, 2) == [8, 9], 11);
                }
                Case::Hole | Case::Unwritten => {
                    expect!(load(&m, 0) == 8, 12);
                    // Loads read zeros and allocate nothing ...
                    let free = fs.statfs().free;
                    expect!(load(&m, PAGE + 1) == 0, 13);
                    expect!(fs.statfs().free == free, 14);
                    expect!(m.write(PAGE, &[1]).is_err(), 15);
                    expect!(load(&m, 2 * PAGE - 1) == 0, 16);
                    // ... the store that would allocate or convert is killed.
                    if store_last {
                        store(&m, PAGE + 1, 9);
                    }
                }
                Case::Reflinked => {
                    load(&m, 0);
                }
            }
            0
        }
    };
    assert_eq!(in_child(scenario(Case::Written, true)), CLEAN);
    // MAP_DIRECT loads of holes and unwritten extents read zeros (SPEC §5.2).
    for case in [Case::Hole, Case::Unwritten] {
        assert_eq!(in_child(scenario(case, false)), CLEAN, "{case:?} load");
    }
    for case in [Case::Hole, Case::Unwritten, Case::Reflinked] {
        assert_eq!(in_child(scenario(case, true)), SIGBUS, "{case:?}");
    }
}

#[test]
fn ordinary_shared_mappings_do_not_raise_sigbus() {
    // Inside EOF, an ordinary MAP_SHARED mapping serves every page: written
    // blocks directly, holes and unwritten extents by allocation, reflinked
    // blocks by copy-on-write.
    let ending = in_child(|| {
        let fs = mount(LONG);
        let h = file(&fs, "/f", 8 * PAGE, 1);
        h.fallocate(FallocMode::PunchHole, 2 * PAGE, 2 * PAGE)
            .unwrap();
        h.fallocate(FallocMode::ZeroRange { keep_size: true }, 4 * PAGE, PAGE)
            .unwrap();
        let g = file(&fs, "/g", 0, 0);
        g.reflink(&h, Some((6 * PAGE, 0, 2 * PAGE))).unwrap();
        let m = h.mmap(0, 8 * PAGE, MapFlags::SHARED).unwrap();
        // Written blocks.
        expect!(load(&m, 0) == 1, 10);
        store(&m, 5, 2);
        expect!(contents(&h, 5, 1) == [2], 11);
        // A hole reads zeros and allocates nothing...
        let free = fs.statfs().free;
        expect!(load(&m, 2 * PAGE + 9) == 0, 12);
        expect!(fs.statfs().free == free, 13);
        // ... and a store there allocates one zeroed block.
        store(&m, 2 * PAGE + 9, 3);
        expect!(fs.statfs().free == free - 1, 14);
        expect!(
            contents(&h, 2 * PAGE, 10) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
            15
        );
        // Unwritten: zeros, then converted by a store.
        expect!(load(&m, 4 * PAGE) == 0, 16);
        store(&m, 4 * PAGE + 1, 4);
        expect!(contents(&h, 4 * PAGE, 2) == [0, 4], 17);
        expect!(fs.statfs().free == free - 1, 18);
        // Reflinked: shared reads, a private copy on the first store.
        expect!(load(&m, 6 * PAGE) == 1, 19);
        store(&m, 6 * PAGE, 5);
        expect!(contents(&h, 6 * PAGE, 2) == [5, 1], 20);
        expect!(contents(&g, 0, 2) == [1, 1], 21);
        expect!(fs.check().is_empty(), 22);
        0
    });
    assert_eq!(ending, CLEAN);
}

/// Counts the warnings and errors logged on the thread it is the default
/// subscriber of.
struct CountComplaints(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for CountComplaints {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let level = *event.metadata().level();
        if level == tracing::Level::ERROR || level == tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn direct_mapping_over_holes_and_unwritten_extents_logs_nothing() {
    // A MAP_DIRECT mapping over a hole and an unwritten extent places them
    // as served pages (zeros on load): nothing fails, nothing is logged.
    let fs = mount(LONG);
    let h = file(&fs, "/f", 4 * PAGE, 8);
    h.fallocate(FallocMode::PunchHole, PAGE, PAGE).unwrap();
    h.fallocate(FallocMode::ZeroRange { keep_size: true }, 2 * PAGE, PAGE)
        .unwrap();
    let complaints = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let m = tracing::subscriber::with_default(CountComplaints(complaints.clone()), || {
        h.mmap(0, 4 * PAGE, MapFlags::DIRECT).unwrap()
    });
    assert_eq!(
        complaints.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "mmap logged a warning or error"
    );
    let mut buf = [1u8; 3];
    m.read(PAGE + 10, &mut buf).unwrap();
    assert_eq!(buf, [0, 0, 0]);
    m.read(2 * PAGE, &mut buf).unwrap();
    assert_eq!(buf, [0, 0, 0]);
    assert_eq!(load(&m, 2 * PAGE + 7), 0);
}
