//! A journal commit that fails after its commit point (a flush that fails
//! once the transaction is durable) cannot be rolled back: the next mount
//! replays it. The file system then shuts down, as kernel file systems do on
//! a journal error: memory holds what the pool will replay, every later
//! change fails with `EIO`, reads still work, and remounting the pool gives
//! the committed state. A failure before the commit point is an ordinary
//! error: nothing changed, and the file system stays writable.
//!
//! Faults are injected with `RecordingMedia::fail_flush_after_fences`: a
//! commit issues four fences (records, commit point, apply, applied), so the
//! first flush after 2 or 3 more fences is after the commit point, and the
//! next flush (0) is before it.
//!
//! The negative control turns the shutdown off: the next change then writes
//! its journal records over those the pool still has to replay, and a power
//! failure during it leaves a pool that does not mount.

use std::sync::Arc;

use pinfs::fs::{Cred, FallocMode, Fs, Handle, OpenFlags};
use pinfs::media::recording::CrashMode;
use pinfs::media::{Media, RecordingMedia};
use pinfs::Errno;

const BS: u64 = 4096;

/// A mounted pool with `/f` holding one durable block of 1s.
fn setup() -> (Arc<RecordingMedia>, Arc<Fs>, Handle) {
    let media = Arc::new(RecordingMedia::new(8 << 20));
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media.clone() as Arc<dyn Media>).unwrap();
    let f = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    f.pwrite(0, &[1; BS as usize]).unwrap();
    f.fsync().unwrap();
    media.start_recording();
    (media, fs, f)
}

fn contents(h: &Handle) -> Vec<u8> {
    let mut buf = vec![0u8; h.stat().unwrap().size as usize];
    h.pread(0, &mut buf).unwrap();
    buf
}

fn eio<T: std::fmt::Debug>(what: &str, r: pinfs::Result<T>) {
    match r {
        Err(e) => assert_eq!(e.errno(), Errno::EIO, "{what}: {e}"),
        Ok(v) => panic!("{what} succeeded ({v:?}) on a shut-down file system"),
    }
}

/// Mount `image` and return `/f`'s contents, after checking the pool.
fn remounted(image: Vec<u8>) -> Vec<u8> {
    let media: Arc<dyn Media> = Arc::new(RecordingMedia::from_image(image));
    let fs = Fs::mount(media).expect("the image mounts");
    assert!(fs.check().is_empty(), "{:?}", fs.check());
    assert!(!fs.is_shut_down());
    let f = fs.open(Cred::ROOT, "/f", OpenFlags::RDONLY, 0).unwrap();
    contents(&f)
}

#[test]
fn a_failure_after_the_commit_point_shuts_the_file_system_down() {
    for fences in [2, 3] {
        let (media, fs, f) = setup();
        media.fail_flush_after_fences(fences);
        // Grows the file into a fresh block: a transaction.
        let r = f.pwrite(BS, &[2; BS as usize]);
        assert!(r.is_err(), "the failed flush is reported");
        assert!(fs.is_shut_down(), "after fence {fences}");
        assert!(fs.statfs().read_only);
        // Memory is what the pool will replay: the write happened.
        let mut want = vec![1u8; BS as usize];
        want.extend_from_slice(&[2; BS as usize]);
        assert_eq!(contents(&f), want, "reads show the committed state");
        assert!(fs.check().is_empty());
        // Every change fails with EIO, in place or not; nothing is written.
        let free = fs.statfs().free;
        eio("in-place pwrite", f.pwrite(0, &[9; 10]));
        eio("growing pwrite", f.pwrite(4 * BS, b"x"));
        eio("truncate", f.truncate(BS));
        eio("punch", f.fallocate(FallocMode::PunchHole, 0, BS));
        eio(
            "allocate",
            f.fallocate(FallocMode::Allocate { keep_size: false }, 0, 8 * BS),
        );
        eio(
            "create",
            fs.open(Cred::ROOT, "/new", OpenFlags::CREATE, 0o644),
        );
        eio("mkdir", fs.mkdir(Cred::ROOT, "/d", 0o755));
        eio("rename", fs.rename(Cred::ROOT, "/f", "/h"));
        eio("unlink", fs.unlink(Cred::ROOT, "/f"));
        eio("chmod", fs.chmod(Cred::ROOT, "/f", 0o600));
        eio("fsync", f.fsync());
        assert_eq!(contents(&f), want, "nothing changed after the shutdown");
        assert_eq!(fs.statfs().free, free);
        // Reads and lookups still work.
        assert_eq!(fs.readdir(Cred::ROOT, "/").unwrap().len(), 1);
        fs.open(Cred::ROOT, "/f", OpenFlags::RDONLY, 0).unwrap();
        // The pool replays the transaction: durable stores only, and all.
        let durable = media.crash_image(media.fence_count(), CrashMode::DurableOnly);
        assert_eq!(
            remounted(durable),
            want,
            "after fence {fences}: durable image"
        );
        assert_eq!(remounted(media.image()), want);
        // A power failure at any point since: the image mounts, with the
        // state before the operation or the committed one.
        for k in 0..=media.fence_count() {
            let got = remounted(media.crash_image(k, CrashMode::DurableOnly));
            assert!(
                got == want || got == want[..BS as usize],
                "crash point {k}: neither state"
            );
        }
    }
}

/// The crash points at which the pool, power lost there, does not mount.
fn unmountable_crash_points(media: &RecordingMedia) -> Vec<usize> {
    (0..=media.fence_count())
        .filter(|&k| {
            let image = media.crash_image(k, CrashMode::DurableOnly);
            Fs::mount(Arc::new(RecordingMedia::from_image(image))).is_err()
        })
        .collect()
}

/// Negative control: without the shutdown, the next change commits over
/// the journal records the pool still has to replay, and a power failure
/// during it leaves a pool that does not mount. With it, nothing does.
#[test]
fn without_the_shutdown_the_next_commit_destroys_the_replay() {
    for protected in [true, false] {
        let (media, fs, f) = setup();
        if !protected {
            fs.disable_shutdown_for_tests();
        }
        media.fail_flush_after_fences(2);
        assert!(f.pwrite(BS, &[2; BS as usize]).is_err());
        let next = f.pwrite(2 * BS, &[3; BS as usize]);
        let bad = unmountable_crash_points(&media);
        if protected {
            assert_eq!(next.unwrap_err().errno(), Errno::EIO);
            assert!(bad.is_empty(), "crash points {bad:?} do not mount");
        } else {
            next.expect("unprotected, the next change commits");
            assert!(
                !bad.is_empty(),
                "the control must show the damage the shutdown prevents"
            );
        }
    }
}

#[test]
fn a_failure_before_the_commit_point_changes_nothing() {
    let (media, fs, f) = setup();
    let free = fs.statfs().free;
    media.fail_flush_after_fences(0);
    let r = f.pwrite(BS, &[2; BS as usize]);
    assert_eq!(r.unwrap_err().errno(), Errno::EIO);
    assert!(!fs.is_shut_down());
    assert!(!fs.statfs().read_only);
    assert_eq!(contents(&f), vec![1u8; BS as usize], "nothing changed");
    assert_eq!(fs.statfs().free, free, "its block went back to free space");
    assert!(fs.check().is_empty());
    let durable = media.crash_image(media.fence_count(), CrashMode::DurableOnly);
    assert_eq!(remounted(durable), vec![1u8; BS as usize]);
    // Still writable.
    f.pwrite(BS, &[3; BS as usize]).unwrap();
    let mut want = vec![1u8; BS as usize];
    want.extend_from_slice(&[3; BS as usize]);
    assert_eq!(contents(&f), want);
    assert_eq!(remounted(media.image()), want);
}

/// The header flush itself fails (the commit point's own write): whether the
/// header reached the media is unknown, so the file system assumes the pool
/// may replay it and shuts down. A crash image at any point then mounts with
/// the state before or after the operation — never anything else.
#[test]
fn a_failed_commit_point_write_is_treated_as_may_replay() {
    let (media, fs, f) = setup();
    media.fail_flush_after_fences(1);
    assert!(f.pwrite(BS, &[2; BS as usize]).is_err());
    assert!(
        fs.is_shut_down(),
        "a commit point of unknown fate shuts down"
    );
    let mut after = vec![1u8; BS as usize];
    after.extend_from_slice(&[2; BS as usize]);
    let before = vec![1u8; BS as usize];
    for k in 0..=media.fence_count() {
        for mode in [CrashMode::DurableOnly, CrashMode::AllPending] {
            let got = remounted(media.crash_image(k, mode));
            assert!(got == after || got == before, "crash point {k} {mode:?}");
        }
    }
}

/// After a shutdown no change gets as far as breaking a lease: a holder of a
/// shared layout lease hears nothing of another owner's refused truncate,
/// punch, reflink or open for writing.
#[test]
fn a_shut_down_file_system_breaks_no_lease_and_refuses_every_change() {
    use pinfs::lease::{LeaseRequest, OwnerId};
    let (media, fs, _f) = setup();
    let holder = Cred::root_as(7);
    let other = Cred::root_as(8);
    let h = fs.open(holder, "/f", OpenFlags::RDONLY, 0).unwrap();
    let events = fs.leases().owner_events(OwnerId(holder.owner)).unwrap();
    let lease = fs
        .leases()
        .set_lease(
            h.lease_file(),
            h.lease_handle(),
            OwnerId(holder.owner),
            LeaseRequest::layout_shared(),
        )
        .unwrap();
    let g = fs.open(other, "/f", OpenFlags::RDWR, 0).unwrap();
    let src = fs.open(other, "/src", OpenFlags::CREATE, 0o644).unwrap();
    src.pwrite(0, &[5; BS as usize]).unwrap();
    // Shut down by a failure past the commit point (another file's write).
    media.fail_flush_after_fences(2);
    assert!(src.pwrite(BS, &[6; BS as usize]).is_err());
    assert!(fs.is_shut_down());
    eio("truncate", g.truncate(0));
    eio("truncate by path", fs.truncate_path(other, "/f", 0));
    eio("punch", g.fallocate(FallocMode::PunchHole, 0, BS));
    eio("reflink", g.reflink(&src, None));
    eio("open for writing", fs.open(other, "/f", OpenFlags::RDWR, 0));
    eio(
        "open with truncate",
        fs.open(
            other,
            "/f",
            OpenFlags {
                truncate: true,
                ..OpenFlags::RDWR
            },
            0,
        ),
    );
    assert_eq!(
        events.try_recv(),
        Ok(None),
        "the lease holder was told nothing"
    );
    let info = fs.leases().lease(lease).expect("still held");
    assert_eq!(info.state, pinfs::lease::LeaseState::Active);
}
