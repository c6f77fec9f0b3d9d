//! SPEC §7/§10 limits at the library API: a file holds at most 2^50 bytes
//! and 32,768 extents, and every operation that would pass either fails with
//! `EFBIG` and changes nothing — its layout, its data and free space are as
//! before, and the pool still mounts (the mount-time validation of every
//! inode is the one every operation passes before it commits). A `pwrite`
//! that crosses the largest size writes up to it and returns the short
//! count. The negative control commits without that validation and shows
//! the pool mount then refuses.

mod limit_support;

use std::sync::Arc;

use limit_support::file_at_the_extent_limit;
use pinfs::format::{MAX_EXTENTS_PER_FILE, MAX_FILE_BYTES};
use pinfs::fs::{Cred, FallocMode, FiemapExtent, Fs, Handle, OpenFlags};
use pinfs::map::MapFlags;
use pinfs::media::{MappedPool, Media};
use pinfs::Errno;

const BS: u64 = 4096;
const MAX: u64 = MAX_FILE_BYTES;

fn mount(pool_bytes: u64) -> (Arc<dyn Media>, Arc<Fs>) {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(pool_bytes).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media.clone()).unwrap();
    (media, fs)
}

/// What a refused operation must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    fiemap: Vec<FiemapExtent>,
    /// The first `DATA_BYTES` of the file (the whole file in most tests).
    data: Vec<u8>,
    free: u64,
}

const DATA_BYTES: u64 = 64 * BS;

fn seen(fs: &Fs, h: &Handle) -> Seen {
    let size = h.stat().unwrap().size;
    let mut data = vec![0u8; size.min(DATA_BYTES) as usize];
    h.pread(0, &mut data).unwrap();
    Seen {
        size,
        fiemap: h.fiemap().unwrap(),
        data,
        free: fs.statfs().free,
    }
}

/// Run `op`, which must fail with `EFBIG` and change nothing.
fn must_refuse<T: std::fmt::Debug>(
    fs: &Fs,
    h: &Handle,
    what: &str,
    op: impl FnOnce() -> pinfs::Result<T>,
) {
    let before = seen(fs, h);
    match op() {
        Err(e) => assert_eq!(e.errno(), Errno::EFBIG, "{what}: {e}"),
        Ok(v) => panic!("{what}: succeeded ({v:?}) past a limit"),
    }
    let after = seen(fs, h);
    if after != before {
        // A summary: these files have tens of thousands of extents.
        let at = before
            .fiemap
            .iter()
            .zip(&after.fiemap)
            .position(|(a, b)| a != b);
        panic!(
            "{what}: a refused operation changed the file: size {} -> {}, free {} -> {}, \
             extents {} -> {}, first differing extent {:?}: {:?} -> {:?}, data same: {}",
            before.size,
            after.size,
            before.free,
            after.free,
            before.fiemap.len(),
            after.fiemap.len(),
            at,
            at.map(|i| before.fiemap[i]),
            at.map(|i| after.fiemap[i]),
            before.data == after.data
        );
    }
    let problems = fs.check();
    assert!(problems.is_empty(), "{what}: {problems:?}");
}

fn remount_is_clean(media: &Arc<dyn Media>) {
    let report = Fs::fsck(&**media).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    Fs::mount(media.clone()).expect("the pool mounts");
}

/// The outside review's sequence: `pwrite 0 8192`, `falloc -k 2^50-4096
/// 4096`, `finsert 0 4096` — the insert would move the preallocated block
/// past the largest file; it must be refused, and the pool must mount.
#[test]
fn insert_past_the_largest_file_is_refused_and_the_pool_mounts() {
    let (media, fs) = mount(32 << 20);
    let h = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    h.pwrite(0, &[7; 8192]).unwrap();
    h.fallocate(FallocMode::Allocate { keep_size: true }, MAX - BS, BS)
        .unwrap();
    must_refuse(&fs, &h, "finsert", || {
        h.fallocate(FallocMode::InsertRange, 0, BS)
    });
    // Collapse moves it down: allowed.
    h.fallocate(FallocMode::CollapseRange, 0, BS).unwrap();
    assert!(fs.check().is_empty());
    drop(h);
    drop(fs);
    remount_is_clean(&media);
}

/// Negative control: with the validation off, the same sequence commits an
/// inode that mount refuses — what the test above guards against.
#[test]
fn without_the_validation_the_pool_no_longer_mounts() {
    let (media, fs) = mount(32 << 20);
    fs.disable_commit_validation_for_tests();
    let h = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    h.pwrite(0, &[7; 8192]).unwrap();
    h.fallocate(FallocMode::Allocate { keep_size: true }, MAX - BS, BS)
        .unwrap();
    h.fallocate(FallocMode::InsertRange, 0, BS)
        .expect("unvalidated, the insert commits");
    let problems = fs.check();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("beyond the largest file")),
        "{problems:?}"
    );
    drop(h);
    drop(fs);
    let err = Fs::mount(media.clone()).expect_err("mount must refuse the pool");
    assert!(err.to_string().contains("beyond the largest file"), "{err}");
}

/// Every path that can pass 2^50 bytes refuses with `EFBIG`, changing
/// nothing.
#[test]
fn every_path_refuses_to_pass_the_largest_file() {
    let (media, fs) = mount(32 << 20);
    let h = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    h.pwrite(0, &[3; 3 * BS as usize]).unwrap();
    let src = fs
        .open(Cred::ROOT, "/src", OpenFlags::CREATE, 0o644)
        .unwrap();
    src.pwrite(0, &[4; 2 * BS as usize]).unwrap();
    must_refuse(&fs, &h, "pwrite at the limit", || h.pwrite(MAX, b"x"));
    must_refuse(&fs, &h, "pwrite past the limit", || {
        h.pwrite(MAX + BS, b"x")
    });
    must_refuse(&fs, &h, "truncate", || h.truncate(MAX + 1));
    must_refuse(&fs, &h, "truncate by path", || {
        fs.truncate_path(Cred::ROOT, "/f", MAX + 1)
    });
    for mode in [
        FallocMode::Allocate { keep_size: false },
        FallocMode::Allocate { keep_size: true },
        FallocMode::ZeroRange { keep_size: false },
        FallocMode::ZeroRange { keep_size: true },
        FallocMode::PunchHole,
        FallocMode::InsertRange,
        FallocMode::CollapseRange,
    ] {
        must_refuse(&fs, &h, &format!("{mode:?} across the limit"), || {
            h.fallocate(mode, MAX - BS, 2 * BS)
        });
    }
    must_refuse(&fs, &h, "reflink range across the limit", || {
        h.reflink(&src, Some((0, MAX - BS, 2 * BS)))
    });
    // Up to the limit exactly is allowed.
    h.fallocate(
        FallocMode::ZeroRange { keep_size: true },
        MAX - 2 * BS,
        2 * BS,
    )
    .unwrap();
    h.fallocate(
        FallocMode::Allocate { keep_size: true },
        MAX - 4 * BS,
        2 * BS,
    )
    .unwrap();
    // The file is 3 blocks, with blocks preallocated at the very end:
    // inserting would push them past the limit.
    must_refuse(&fs, &h, "insert with blocks at the end", || {
        h.fallocate(FallocMode::InsertRange, BS, BS)
    });
    // A file whose size is near the limit: insert passes the size.
    let big = fs
        .open(Cred::ROOT, "/big", OpenFlags::CREATE, 0o644)
        .unwrap();
    big.pwrite(0, &[5; BS as usize]).unwrap();
    big.truncate(MAX - BS).unwrap();
    must_refuse(&fs, &big, "insert past the size limit", || {
        big.fallocate(FallocMode::InsertRange, 0, 2 * BS)
    });
    big.fallocate(FallocMode::InsertRange, 0, BS).unwrap();
    assert_eq!(big.stat().unwrap().size, MAX);
    must_refuse(&fs, &big, "reflink to the end of a limit-size file", || {
        big.reflink(&src, Some((0, MAX, BS)))
    });
    drop((h, src, big));
    drop(fs);
    remount_is_clean(&media);
}

/// Linux writes up to the largest size and returns the short count; only a
/// write starting at or past it is `EFBIG`.
#[test]
fn pwrite_across_the_largest_file_is_short() {
    let (media, fs) = mount(32 << 20);
    let h = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8 + 1).collect();
    assert_eq!(h.pwrite(MAX - 100, &data).unwrap(), 100);
    assert_eq!(h.stat().unwrap().size, MAX);
    let mut back = vec![0u8; 200];
    assert_eq!(h.pread(MAX - 200, &mut back).unwrap(), 200);
    assert!(back[..100].iter().all(|&b| b == 0));
    assert_eq!(&back[100..], &data[..100]);
    assert_eq!(h.pwrite(MAX, &data).unwrap_err().errno(), Errno::EFBIG);
    assert_eq!(h.pwrite(MAX, &[]).unwrap(), 0, "an empty write is no write");
    assert!(fs.check().is_empty());
    drop(h);
    drop(fs);
    remount_is_clean(&media);
}

/// Every operation that would give a file at the extent limit one more
/// extent is refused; those that do not add one still work.
#[test]
fn every_path_refuses_to_pass_the_extent_limit() {
    let (media, fs) = mount(64 << 20);
    let (f, _, _other) = file_at_the_extent_limit(&fs);
    let q = fs.open(Cred::ROOT, "/q", OpenFlags::CREATE, 0o644).unwrap();
    q.pwrite(0, &[1; BS as usize]).unwrap();
    let hole = 3 * BS;
    must_refuse(&fs, &f, "pwrite into a hole", || f.pwrite(hole + 10, b"x"));
    must_refuse(&fs, &f, "copy-on-write in the middle of an extent", || {
        f.pwrite(BS + 10, b"x")
    });
    must_refuse(&fs, &f, "allocate a hole", || {
        f.fallocate(FallocMode::Allocate { keep_size: true }, hole, BS)
    });
    must_refuse(&fs, &f, "zero range over a hole", || {
        f.fallocate(FallocMode::ZeroRange { keep_size: true }, hole, BS)
    });
    must_refuse(&fs, &f, "zero range over part of a hole block", || {
        f.fallocate(FallocMode::ZeroRange { keep_size: true }, hole + 100, 100)
    });
    must_refuse(&fs, &f, "zero range splitting an extent", || {
        f.fallocate(FallocMode::ZeroRange { keep_size: true }, BS, BS)
    });
    must_refuse(&fs, &f, "punch splitting an extent", || {
        f.fallocate(FallocMode::PunchHole, BS, BS)
    });
    must_refuse(&fs, &f, "punch of part of a shared block", || {
        // Copy-on-write of the middle block splits the extent in three.
        f.fallocate(FallocMode::PunchHole, BS + 10, 10)
    });
    must_refuse(&fs, &f, "insert splitting an extent", || {
        f.fallocate(FallocMode::InsertRange, BS, BS)
    });
    must_refuse(&fs, &f, "collapse splitting an extent", || {
        f.fallocate(FallocMode::CollapseRange, BS, BS)
    });
    must_refuse(&fs, &f, "reflink into a hole", || {
        f.reflink(&q, Some((0, hole, BS)))
    });
    // A whole-file clone of a file of two extents over the first three
    // blocks: one extent out, two in.
    let two = fs
        .open(Cred::ROOT, "/two", OpenFlags::CREATE, 0o644)
        .unwrap();
    two.pwrite(0, &[2; BS as usize]).unwrap();
    two.pwrite(2 * BS, &[2; BS as usize]).unwrap();
    two.fallocate(FallocMode::PunchHole, BS, BS).unwrap();
    assert_eq!(two.fiemap().unwrap().len(), 2);
    must_refuse(&fs, &f, "whole-file reflink", || f.reflink(&two, None));
    // A write fault goes through the same path: the store into the hole
    // would allocate a block, a new extent.
    let map = f.mmap(0, 8 * BS, MapFlags::SHARED).unwrap();
    must_refuse(&fs, &f, "write fault into a hole", || {
        map.write(hole + 10, b"x")
    });
    drop(map);
    // Boundary: removing one extent makes room for exactly one.
    f.fallocate(FallocMode::PunchHole, 0, 3 * BS).unwrap();
    assert_eq!(f.fiemap().unwrap().len(), MAX_EXTENTS_PER_FILE - 1);
    f.pwrite(hole + 10, b"x").unwrap();
    assert_eq!(f.fiemap().unwrap().len(), MAX_EXTENTS_PER_FILE);
    must_refuse(&fs, &f, "the next hole", || f.pwrite(hole + 4 * BS, b"y"));
    assert!(fs.check().is_empty());
    drop((f, _other, q, two));
    drop(fs);
    remount_is_clean(&media);
}
