//! A file at the extent limit (SPEC §7: 32,768 extents), for the tests that
//! meet it: `fs_limits.rs` (every operation at the limit) and
//! `crash_extent_limit.rs` (crash images of them).

use std::sync::Arc;

use pinfs::format::MAX_EXTENTS_PER_FILE;
use pinfs::fs::{Cred, Fs, Handle, OpenFlags};

const BS: u64 = 4096;

/// A file of exactly 32,768 extents, built by reflink doubling between `/a`
/// and `/b` so it needs four pool blocks: each extent is 3 shared blocks
/// followed by a 1-block hole. The pool block after the 3 (the allocation
/// goal for the hole) is kept in use by `/keep`, so nothing written into a
/// hole can merge with its neighbour by chance. Returns the file, its path,
/// and the other file of the doubling (half as many extents).
pub fn file_at_the_extent_limit(fs: &Arc<Fs>) -> (Handle, &'static str, Handle) {
    let a = fs.open(Cred::ROOT, "/a", OpenFlags::CREATE, 0o644).unwrap();
    let b = fs.open(Cred::ROOT, "/b", OpenFlags::CREATE, 0o644).unwrap();
    let keep = fs
        .open(Cred::ROOT, "/keep", OpenFlags::CREATE, 0o644)
        .unwrap();
    a.pwrite(0, &[9; 4 * BS as usize]).unwrap();
    keep.reflink(&a, Some((3 * BS, 0, BS))).unwrap();
    a.truncate(3 * BS).unwrap();
    a.truncate(4 * BS).unwrap();
    let (mut src, mut dst) = ((a, "/a"), (b, "/b"));
    let (mut span, mut extents) = (4 * BS, 1usize);
    while extents < MAX_EXTENTS_PER_FILE {
        dst.0.reflink(&src.0, Some((0, 0, span))).unwrap();
        dst.0.reflink(&src.0, Some((0, span, span))).unwrap();
        span *= 2;
        extents *= 2;
        std::mem::swap(&mut src, &mut dst);
    }
    assert_eq!(src.0.fiemap().unwrap().len(), MAX_EXTENTS_PER_FILE);
    assert_eq!(src.0.stat().unwrap().size, span);
    (src.0, src.1, dst.0)
}
