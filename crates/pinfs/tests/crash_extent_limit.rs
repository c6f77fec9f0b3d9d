//! Crash consistency at the extent limit (SPEC §7: 32,768 extents per
//! file). A file of exactly that many extents meets the layout changes
//! that would pass the limit — zero range and keep-size allocation into a
//! hole, insert range inside an extent — and those that stay within it —
//! collapsing a hole, punching an extent, allocating into the hole that left.
//! Every crash image, at every fence of every operation and in every
//! persistence mode, mounts, passes fsck, and shows the file exactly as it
//! was before the operation or after it; a refused operation (`EFBIG`)
//! leaves every image as it was before.
//! (The random crash workload in `crash.rs` covers the 2^50-byte limit;
//! a 32,768-extent file is built here directly, by reflink doubling.)

mod limit_support;

use std::sync::Arc;

use limit_support::file_at_the_extent_limit;
use pinfs::format::MAX_EXTENTS_PER_FILE;
use pinfs::fs::{Cred, FallocMode, FiemapExtent, Fs, Handle, OpenFlags};
use pinfs::media::recording::CrashMode;
use pinfs::media::{Media, RecordingMedia};
use pinfs::Errno;

const BS: u64 = 4096;
const POOL: u64 = 8 << 20;
/// The middle extent (each extent: 3 blocks, then a 1-block hole).
const MID: u64 = (MAX_EXTENTS_PER_FILE as u64 / 2) * 4 * BS;

/// What a crash image must show of the file: its size, extent map and
/// bytes (the extent map compared by logical layout and flags; physical
/// placement of fresh blocks may differ between images only if the
/// operation had not committed, which the states already tell apart).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    extents: Vec<FiemapExtent>,
    bytes_hash: u64,
}

fn seen(h: &Handle) -> Seen {
    let size = h.stat().unwrap().size;
    // The bytes where the operations act (the file is 512 MiB of copies of
    // one pattern; the extent map covers the rest).
    let mut buf = Vec::new();
    for (at, len) in [(0, 16 * BS), (MID - 4 * BS, 12 * BS)] {
        let mut part = vec![0u8; len as usize];
        let n = h.pread(at, &mut part).unwrap();
        buf.extend_from_slice(&part[..n]);
    }
    let bytes_hash = buf.iter().fold(0xcbf29ce484222325u64, |acc, &b| {
        (acc ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    Seen {
        size,
        extents: h.fiemap().unwrap(),
        bytes_hash,
    }
}

fn seen_in_image(image: Vec<u8>, path: &str) -> Result<Seen, String> {
    let media: Arc<dyn Media> = Arc::new(RecordingMedia::from_image(image));
    let fs = Fs::mount(media).map_err(|e| format!("mount refused: {e}"))?;
    let problems = fs.check();
    if !problems.is_empty() {
        return Err(format!("fsck: {problems:?}"));
    }
    let a = fs
        .open(Cred::ROOT, path, OpenFlags::RDONLY, 0)
        .map_err(|e| format!("open {path}: {e}"))?;
    Ok(seen(&a))
}

#[test]
fn every_crash_image_at_the_extent_limit_is_before_or_after() {
    let media = Arc::new(RecordingMedia::new(POOL));
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media.clone() as Arc<dyn Media>).unwrap();
    let (a, path, _) = file_at_the_extent_limit(&fs);
    // The other file of the doubling goes: each crash image mounts faster.
    let scratch = if path == "/a" { "/b" } else { "/a" };
    fs.unlink(Cred::ROOT, scratch).unwrap();
    // The middle extent's hole and the extent itself (each extent: 3 blocks
    // then a 1-block hole).
    let mid = MID;
    type Step<'a> = (&'a str, Box<dyn Fn(&Handle) -> pinfs::Result<()>>, bool);
    let steps: Vec<Step> = vec![
        (
            "zero range (keep size) over a hole: one more extent",
            Box::new(move |h| {
                h.fallocate(FallocMode::ZeroRange { keep_size: true }, mid + 3 * BS, BS)
            }),
            false,
        ),
        (
            "keep-size allocation into a hole: one more extent",
            Box::new(move |h| {
                h.fallocate(FallocMode::Allocate { keep_size: true }, mid + 3 * BS, BS)
            }),
            false,
        ),
        (
            "insert range inside an extent: splits it",
            Box::new(move |h| h.fallocate(FallocMode::InsertRange, mid + BS, BS)),
            false,
        ),
        (
            "collapse a hole: the count stays",
            Box::new(move |h| h.fallocate(FallocMode::CollapseRange, mid + 3 * BS, BS)),
            true,
        ),
        (
            "punch an extent: one fewer",
            Box::new(move |h| h.fallocate(FallocMode::PunchHole, mid, 3 * BS)),
            true,
        ),
        (
            "keep-size allocation into that hole: back at the limit",
            Box::new(move |h| h.fallocate(FallocMode::Allocate { keep_size: true }, mid, BS)),
            true,
        ),
        (
            "zero range of another hole: over the limit again",
            Box::new(move |h| h.fallocate(FallocMode::ZeroRange { keep_size: true }, 7 * BS, BS)),
            false,
        ),
    ];
    let mut images = 0usize;
    for (what, op, allowed) in steps {
        let before = seen(&a);
        media.start_recording();
        let r = op(&a);
        match (allowed, &r) {
            (true, Ok(())) => {}
            (false, Err(e)) if e.errno() == Errno::EFBIG => {}
            _ => panic!("{what}: {r:?}"),
        }
        let after = seen(&a);
        assert!(a.fiemap().unwrap().len() <= MAX_EXTENTS_PER_FILE, "{what}");
        if !allowed {
            assert_eq!(after, before, "{what}: refused, yet changed");
        }
        for k in 0..=media.fence_count() {
            for mode in [
                CrashMode::DurableOnly,
                CrashMode::AllPending,
                CrashMode::Random(k as u64),
            ] {
                images += 1;
                let got = seen_in_image(media.crash_image(k, mode), path)
                    .unwrap_or_else(|e| panic!("{what}: crash point {k} {mode:?}: {e}"));
                assert!(
                    got == before || got == after,
                    "{what}: crash point {k} {mode:?} shows neither state: size {} extents {} hash {:x} (before: {} {} {:x}; first differing extent {:?})",
                    got.size,
                    got.extents.len(),
                    got.bytes_hash,
                    before.size,
                    before.extents.len(),
                    before.bytes_hash,
                    got.extents.iter().zip(&before.extents).find(|(x, y)| x != y)
                );
            }
        }
        // Once it returned, exactly the state after.
        let end = seen_in_image(
            media.crash_image(media.fence_count(), CrashMode::DurableOnly),
            path,
        )
        .unwrap();
        assert_eq!(end, after, "{what}: the durable state once it returned");
    }
    println!("extent-limit crash images: {images}, every one before or after its operation");
}

/// The negative control: with the commit-time validation off, the same zero
/// range is no longer refused with `EFBIG`: it gets as far as laying out a
/// 32,769th extent, where only the extent tree's last-resort assertion (a
/// panic: a bug) stops it from committing a pool that mount would refuse.
#[test]
fn without_commit_validation_the_limit_is_not_refused() {
    let media = Arc::new(RecordingMedia::new(POOL));
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media.clone() as Arc<dyn Media>).unwrap();
    let (a, path, _) = file_at_the_extent_limit(&fs);
    fs.disable_commit_validation_for_tests();
    media.start_recording();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.fallocate(FallocMode::ZeroRange { keep_size: true }, MID + 3 * BS, BS)
    }));
    match r {
        // The assertion caught what validation should have refused.
        Err(_) => {}
        Ok(Ok(())) => {
            let image = media.crash_image(media.fence_count(), CrashMode::DurableOnly);
            let err = seen_in_image(image, path).expect_err("mount must refuse the image");
            assert!(err.contains("mount refused"), "{err}");
        }
        Ok(Err(e)) => panic!("without validation the operation was still refused: {e}"),
    }
}
