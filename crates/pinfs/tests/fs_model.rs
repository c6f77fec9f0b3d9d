//! The file system against a model: random sequences of data and layout
//! operations on two files, compared byte for byte with plain vectors, with
//! the metadata cross-checked (the fsck checks) after every operation and the
//! pool remounted at the end.
//!
//! Some operations work near the largest file (2^50 bytes): preallocation,
//! zeroing and punching in the last blocks below it (keeping the size, so
//! the model's bytes do not change), which later inserts must not push
//! past it. The model tracks those blocks and predicts each `EFBIG`; every
//! refused operation must leave both files' extents and free space as they
//! were, and after every operation the pool on the media must pass the
//! checks mount runs (`Fs::fsck`).

use std::sync::Arc;

use std::collections::BTreeSet;

use pinfs::format::{MAX_FILE_BLOCKS, MAX_FILE_BYTES};
use pinfs::fs::{Cred, FallocMode, Fs, OpenFlags};
use pinfs::media::{MappedPool, Media};
use proptest::prelude::*;

const BS: u64 = 4096;

#[derive(Clone, Debug)]
enum FileOp {
    Write {
        file: usize,
        off: u64,
        len: u64,
        byte: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Punch {
        file: usize,
        off: u64,
        len: u64,
    },
    Zero {
        file: usize,
        off: u64,
        len: u64,
        keep: bool,
    },
    Alloc {
        file: usize,
        off: u64,
        len: u64,
        keep: bool,
    },
    Collapse {
        file: usize,
        off_blocks: u64,
        len_blocks: u64,
    },
    Insert {
        file: usize,
        off_blocks: u64,
        len_blocks: u64,
    },
    Reflink {
        to: usize,
        src_blocks: u64,
        dst_blocks: u64,
        len_blocks: u64,
    },
    ReflinkWhole {
        to: usize,
    },
    /// A keep-size fallocate of `len_blocks` starting `back_blocks` below
    /// the largest file (past it when `len_blocks > back_blocks`).
    High {
        file: usize,
        mode: HighMode,
        back_blocks: u64,
        len_blocks: u64,
    },
    /// Truncate past the largest file.
    TruncateTooBig {
        file: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum HighMode {
    Alloc,
    Zero,
    Punch,
}

/// What the model says pinfs must do.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Done,
    /// Refused (EINVAL and the like), nothing changed.
    Refused,
    /// Refused with `EFBIG`, nothing changed.
    TooBig,
}

/// The model: each file's bytes, and its blocks allocated near the largest
/// file (beyond end of file, so they do not show in the bytes).
#[derive(Clone, Debug, Default)]
struct Model {
    bytes: [Vec<u8>; 2],
    high: [BTreeSet<u64>; 2],
}

fn file_op() -> impl Strategy<Value = FileOp> {
    let file = 0usize..2;
    let off = 0u64..(40 * BS);
    let len = 1u64..(12 * BS);
    prop_oneof![
        4 => (file.clone(), off.clone(), len.clone(), any::<u8>()).prop_map(|(file, off, len, byte)| FileOp::Write { file, off, len, byte }),
        1 => (file.clone(), 0u64..(48 * BS)).prop_map(|(file, size)| FileOp::Truncate { file, size }),
        1 => (file.clone(), off.clone(), len.clone()).prop_map(|(file, off, len)| FileOp::Punch { file, off, len }),
        1 => (file.clone(), off.clone(), len.clone(), any::<bool>()).prop_map(|(file, off, len, keep)| FileOp::Zero { file, off, len, keep }),
        1 => (file.clone(), off.clone(), len.clone(), any::<bool>()).prop_map(|(file, off, len, keep)| FileOp::Alloc { file, off, len, keep }),
        1 => (file.clone(), 0u64..30, 1u64..8).prop_map(|(file, off_blocks, len_blocks)| FileOp::Collapse { file, off_blocks, len_blocks }),
        1 => (file.clone(), 0u64..30, 1u64..8).prop_map(|(file, off_blocks, len_blocks)| FileOp::Insert { file, off_blocks, len_blocks }),
        2 => (file.clone(), 0u64..30, 0u64..30, 1u64..10).prop_map(|(to, src_blocks, dst_blocks, len_blocks)| FileOp::Reflink { to, src_blocks, dst_blocks, len_blocks }),
        1 => file.clone().prop_map(|to| FileOp::ReflinkWhole { to }),
        2 => (file.clone(), prop_oneof![Just(HighMode::Alloc), Just(HighMode::Zero), Just(HighMode::Punch)], 1u64..6, 1u64..5)
            .prop_map(|(file, mode, back_blocks, len_blocks)| FileOp::High { file, mode, back_blocks, len_blocks }),
        1 => file.prop_map(|file| FileOp::TruncateTooBig { file }),
    ]
}

/// Apply an operation to the model, saying what pinfs must do.
fn apply_model(model: &mut Model, op: &FileOp) -> Expect {
    // Blocks near the largest file first: they decide `EFBIG`.
    match *op {
        FileOp::High {
            file,
            mode,
            back_blocks,
            len_blocks,
        } => {
            let first = MAX_FILE_BLOCKS - back_blocks;
            let end = first + len_blocks;
            if end > MAX_FILE_BLOCKS {
                return Expect::TooBig;
            }
            let high = &mut model.high[file];
            match mode {
                HighMode::Alloc | HighMode::Zero => high.extend(first..end),
                HighMode::Punch => high.retain(|b| !(first..end).contains(b)),
            }
            return Expect::Done;
        }
        FileOp::TruncateTooBig { .. } => return Expect::TooBig,
        FileOp::Insert {
            file,
            off_blocks,
            len_blocks,
        } if off_blocks * BS < model.bytes[file].len() as u64
            && model.high[file]
                .last()
                .is_some_and(|&b| b + len_blocks >= MAX_FILE_BLOCKS) =>
        {
            return Expect::TooBig;
        }
        _ => {}
    }
    let before = model.bytes.clone();
    if !apply_bytes(&mut model.bytes, op) {
        return Expect::Refused;
    }
    // Truncating down frees everything past the new size; insert and
    // collapse move the blocks after the range.
    match *op {
        FileOp::Truncate { file, size } if size < before[file].len() as u64 => {
            model.high[file].clear();
        }
        FileOp::Insert {
            file,
            off_blocks,
            len_blocks,
        } => {
            let h = &mut model.high[file];
            *h = h
                .iter()
                .map(|&b| if b >= off_blocks { b + len_blocks } else { b })
                .collect();
        }
        FileOp::Collapse {
            file,
            off_blocks,
            len_blocks,
        } => {
            let h = &mut model.high[file];
            *h = h
                .iter()
                .filter(|&&b| !(off_blocks..off_blocks + len_blocks).contains(&b))
                .map(|&b| {
                    if b >= off_blocks + len_blocks {
                        b - len_blocks
                    } else {
                        b
                    }
                })
                .collect();
        }
        _ => {}
    }
    Expect::Done
}

/// Apply an operation to the model's bytes; `false` when pinfs must refuse it.
fn apply_bytes(m: &mut [Vec<u8>; 2], op: &FileOp) -> bool {
    match *op {
        FileOp::Write {
            file,
            off,
            len,
            byte,
        } => {
            let f = &mut m[file];
            let end = (off + len) as usize;
            if f.len() < end {
                f.resize(end, 0);
            }
            f[off as usize..end].fill(byte);
        }
        FileOp::Truncate { file, size } => m[file].resize(size as usize, 0),
        FileOp::Punch { file, off, len } => {
            let f = &mut m[file];
            let end = ((off + len) as usize).min(f.len());
            if (off as usize) < end {
                f[off as usize..end].fill(0);
            }
        }
        FileOp::Zero {
            file,
            off,
            len,
            keep,
        } => {
            let f = &mut m[file];
            let end = (off + len) as usize;
            if !keep && f.len() < end {
                f.resize(end, 0);
            }
            let end = end.min(f.len());
            if (off as usize) < end {
                f[off as usize..end].fill(0);
            }
        }
        FileOp::Alloc {
            file,
            off,
            len,
            keep,
        } => {
            let end = (off + len) as usize;
            if !keep && m[file].len() < end {
                m[file].resize(end, 0);
            }
        }
        FileOp::Collapse {
            file,
            off_blocks,
            len_blocks,
        } => {
            let f = &mut m[file];
            let (off, end) = (
                (off_blocks * BS) as usize,
                ((off_blocks + len_blocks) * BS) as usize,
            );
            if end >= f.len() {
                return false;
            }
            f.drain(off..end);
        }
        FileOp::Insert {
            file,
            off_blocks,
            len_blocks,
        } => {
            let f = &mut m[file];
            let off = (off_blocks * BS) as usize;
            if off >= f.len() {
                return false;
            }
            let hole = vec![0u8; (len_blocks * BS) as usize];
            f.splice(off..off, hole);
        }
        FileOp::Reflink {
            to,
            src_blocks,
            dst_blocks,
            len_blocks,
        } => {
            let src = m[1 - to].clone();
            let (so, d, len) = (src_blocks * BS, dst_blocks * BS, len_blocks * BS);
            // Clip to the source's end, as pinfs requires the range inside it;
            // an unaligned tail is allowed only when it reaches the
            // destination's end of file.
            if so >= src.len() as u64 {
                return false;
            }
            let len = len.min(src.len() as u64 - so);
            let dst = &mut m[to];
            if !len.is_multiple_of(BS) && d + len < dst.len() as u64 {
                return false;
            }
            let end = (d + len) as usize;
            if dst.len() < end {
                dst.resize(end, 0);
            }
            dst[d as usize..end].copy_from_slice(&src[so as usize..(so + len) as usize]);
        }
        FileOp::ReflinkWhole { to } => {
            let src = m[1 - to].clone();
            let dst = &mut m[to];
            if !src.len().is_multiple_of(BS as usize) && src.len() < dst.len() {
                return false;
            }
            if dst.len() < src.len() {
                dst.resize(src.len(), 0);
            }
            dst[..src.len()].copy_from_slice(&src);
        }
        FileOp::High { .. } | FileOp::TruncateTooBig { .. } => {}
    }
    true
}

fn reflink_range(op: &FileOp, src_len: u64) -> Option<(u64, u64, u64)> {
    match *op {
        FileOp::Reflink {
            src_blocks,
            dst_blocks,
            len_blocks,
            ..
        } => {
            let so = src_blocks * BS;
            let len = (len_blocks * BS).min(src_len.saturating_sub(so));
            Some((so, dst_blocks * BS, len.max(1)))
        }
        _ => None,
    }
}

fn contents(h: &pinfs::fs::Handle) -> Vec<u8> {
    let size = h.stat().unwrap().size;
    let mut buf = vec![0u8; size as usize];
    assert_eq!(h.pread(0, &mut buf).unwrap() as u64, size);
    buf
}

/// Compare contents, reporting the first difference (not megabytes of bytes).
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: length {} (want {}), first difference at {at:?}: got {:?} want {:?}",
            got.len(),
            want.len(),
            at.map(|i| got[i]),
            at.map(|i| want[i])
        );
    }
}

fn run(ops: &[FileOp]) {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(64 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let free_at_start;
    {
        let fs = Fs::mount(media.clone()).unwrap();
        let h = [
            fs.open(Cred::ROOT, "/a", OpenFlags::CREATE, 0o644).unwrap(),
            fs.open(Cred::ROOT, "/b", OpenFlags::CREATE, 0o644).unwrap(),
        ];
        // The root directory's block is allocated by now; the files have none.
        free_at_start = fs.statfs().free;
        let mut model = Model::default();
        for (i, op) in ops.iter().enumerate() {
            let before = model.bytes.clone();
            let saved = model.clone();
            let layout_before = (
                h[0].fiemap().unwrap(),
                h[1].fiemap().unwrap(),
                fs.statfs().free,
            );
            let expect = apply_model(&mut model, op);
            let r = match *op {
                FileOp::Write {
                    file,
                    off,
                    len,
                    byte,
                } => h[file].pwrite(off, &vec![byte; len as usize]).map(|_| ()),
                FileOp::Truncate { file, size } => h[file].truncate(size),
                FileOp::Punch { file, off, len } => {
                    h[file].fallocate(FallocMode::PunchHole, off, len)
                }
                FileOp::Zero {
                    file,
                    off,
                    len,
                    keep,
                } => h[file].fallocate(FallocMode::ZeroRange { keep_size: keep }, off, len),
                FileOp::Alloc {
                    file,
                    off,
                    len,
                    keep,
                } => h[file].fallocate(FallocMode::Allocate { keep_size: keep }, off, len),
                FileOp::Collapse {
                    file,
                    off_blocks,
                    len_blocks,
                } => h[file].fallocate(FallocMode::CollapseRange, off_blocks * BS, len_blocks * BS),
                FileOp::Insert {
                    file,
                    off_blocks,
                    len_blocks,
                } => h[file].fallocate(FallocMode::InsertRange, off_blocks * BS, len_blocks * BS),
                FileOp::Reflink { to, .. } => {
                    let src_len = before[1 - to].len() as u64;
                    if reflink_range(op, src_len).is_some_and(|(so, _, _)| so >= src_len) {
                        Err(pinfs::Errno::EINVAL.into())
                    } else {
                        h[to].reflink(&h[1 - to], reflink_range(op, src_len))
                    }
                }
                FileOp::ReflinkWhole { to } => h[to].reflink(&h[1 - to], None),
                FileOp::High {
                    file,
                    mode,
                    back_blocks,
                    len_blocks,
                } => {
                    let mode = match mode {
                        HighMode::Alloc => FallocMode::Allocate { keep_size: true },
                        HighMode::Zero => FallocMode::ZeroRange { keep_size: true },
                        HighMode::Punch => FallocMode::PunchHole,
                    };
                    h[file].fallocate(mode, MAX_FILE_BYTES - back_blocks * BS, len_blocks * BS)
                }
                FileOp::TruncateTooBig { file } => h[file].truncate(MAX_FILE_BYTES + 1),
            };
            match expect {
                Expect::Done => {
                    r.unwrap_or_else(|e| panic!("op {i} {op:?} failed: {e}"));
                }
                Expect::Refused | Expect::TooBig => {
                    let e = match r {
                        Err(e) => e,
                        Ok(()) => panic!("op {i} {op:?} should have been refused"),
                    };
                    if expect == Expect::TooBig {
                        assert_eq!(e.errno(), pinfs::Errno::EFBIG, "op {i} {op:?}");
                    }
                    model = saved;
                    let layout_after = (
                        h[0].fiemap().unwrap(),
                        h[1].fiemap().unwrap(),
                        fs.statfs().free,
                    );
                    assert!(
                        layout_after == layout_before,
                        "op {i} {op:?} was refused ({e}) but changed extents or free space"
                    );
                }
            }
            for (f, (handle, want)) in h.iter().zip(&model.bytes).enumerate() {
                same(
                    &contents(handle),
                    want,
                    &format!("file {f} after op {i} {op:?}"),
                );
            }
            let problems = fs.check();
            assert!(problems.is_empty(), "after op {i} {op:?}: {problems:?}");
            // What the next mount would say of the pool as committed now.
            let report = fs
                .fsck_snapshot()
                .unwrap_or_else(|e| panic!("after op {i} {op:?}: {e}"));
            assert!(
                report.problems.is_empty(),
                "after op {i} {op:?}: {:?}",
                report.problems
            );
        }
        drop(h);
        // Remount and compare again.
        drop(fs);
        let fs = Fs::mount(media.clone()).unwrap();
        for (f, name) in ["/a", "/b"].iter().enumerate() {
            let h = fs.open(Cred::ROOT, name, OpenFlags::RDONLY, 0).unwrap();
            same(
                &contents(&h),
                &model.bytes[f],
                &format!("{name} after remount"),
            );
        }
        fs.unlink(Cred::ROOT, "/a").unwrap();
        fs.unlink(Cred::ROOT, "/b").unwrap();
        assert_eq!(
            fs.statfs().free,
            free_at_start,
            "every block returns to free space"
        );
    }
    let report = Fs::fsck(&*media).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn file_ops_match_the_model(ops in proptest::collection::vec(file_op(), 1..40)) {
        run(&ops);
    }
}

#[test]
fn fresh_blocks_never_show_old_data() {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(16 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media).unwrap();
    // Fill most of the pool with a pattern, free it, then allocate every way
    // there is and look for the pattern.
    let free = fs.statfs().free;
    let h = fs
        .open(Cred::ROOT, "/old", OpenFlags::CREATE, 0o644)
        .unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let mut off = 0;
    while off + (1 << 20) < (free - 64) * BS {
        h.pwrite(off, &chunk).unwrap();
        off += 1 << 20;
    }
    drop(h);
    fs.unlink(Cred::ROOT, "/old").unwrap();
    let h = fs
        .open(Cred::ROOT, "/new", OpenFlags::CREATE, 0o644)
        .unwrap();
    h.pwrite(3 * BS + 100, b"x").unwrap(); // partial block in a hole
    h.fallocate(FallocMode::Allocate { keep_size: false }, 8 * BS, 64 * BS)
        .unwrap();
    h.pwrite(10 * BS + 7, b"y").unwrap(); // partial write into unwritten
    h.truncate(200 * BS + 5).unwrap();
    h.fallocate(
        FallocMode::ZeroRange { keep_size: false },
        300 * BS,
        10 * BS,
    )
    .unwrap();
    h.pwrite(400 * BS, &[1; 10]).unwrap();
    let data = contents(&h);
    assert!(!data.contains(&0xa5), "old data visible in a new file");
    assert_eq!(data.iter().filter(|&&b| b != 0).count(), 12);
}

#[test]
fn bytes_past_eof_do_not_come_back() {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(16 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media).unwrap();
    let a = fs.open(Cred::ROOT, "/a", OpenFlags::CREATE, 0o644).unwrap();
    a.pwrite(0, &[7; 4096]).unwrap();
    let b = fs.open(Cred::ROOT, "/b", OpenFlags::CREATE, 0o644).unwrap();
    b.reflink(&a, None).unwrap();
    // Shrink the shared copy to mid-block, then grow it: the tail must read
    // as zeros in b, and a must be untouched.
    b.truncate(100).unwrap();
    b.truncate(4096).unwrap();
    let mut buf = vec![0u8; 4096];
    b.pread(0, &mut buf).unwrap();
    assert!(buf[..100].iter().all(|&x| x == 7) && buf[100..].iter().all(|&x| x == 0));
    a.pread(0, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&x| x == 7),
        "copy-on-write protected the source"
    );
}

/// Reference counts by extent (format version 2): a truncate of an
/// unshared file journals its inode's extent change alone — a few hundred
/// bytes whatever the file's size, not a count per block (16 KiB for the
/// 4,096 blocks here under a per-block table) — and a truncate of a
/// reflinked copy journals the shared-run table's few changed runs.
#[test]
fn a_truncate_journals_extents_not_blocks() {
    let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(64 << 20).unwrap());
    Fs::mkfs(&*pool).unwrap();
    let fs = Fs::mount(pool.clone()).unwrap();
    let root = Cred::ROOT;
    let h = fs.open(root, "/big", OpenFlags::CREATE, 0o644).unwrap();
    // Four extents of 1,024 blocks (written in four pieces, gaps between).
    for i in 0..4u64 {
        h.pwrite(i * 1100 * BS, &vec![i as u8 + 1; (1024 * BS) as usize])
            .unwrap();
    }
    let copy = fs.open(root, "/copy", OpenFlags::CREATE, 0o644).unwrap();
    copy.reflink(&h, None).unwrap();
    let free_before = fs.statfs().free;

    let before = fs.journal_stats();
    copy.truncate(0).unwrap();
    let shared_drop = fs.journal_stats().record_bytes - before.record_bytes;
    assert_eq!(
        fs.statfs().free,
        free_before,
        "blocks still used by /big stay used"
    );
    assert!(fs.check().is_empty(), "{:?}", fs.check());

    let before = fs.journal_stats();
    h.truncate(0).unwrap();
    let unshared = fs.journal_stats().record_bytes - before.record_bytes;
    assert_eq!(fs.statfs().free, free_before + 4096);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
    println!("journaled: truncate of the reflinked copy {shared_drop} bytes, of the unshared file {unshared} bytes");
    assert!(
        unshared < 1024,
        "unshared truncate journaled {unshared} bytes"
    );
    assert!(
        shared_drop < 2048,
        "shared truncate journaled {shared_drop} bytes"
    );
    drop((h, copy, fs));
    let report = Fs::fsck(&*pool).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The inode high-water mark as committed to the pool's state block.
fn inode_high(pool: &dyn Media) -> u64 {
    let mut raw = vec![0u8; size_of::<pinfs::format::StateBlock>()];
    pool.read(BS, &mut raw).unwrap();
    let st: pinfs::format::StateBlock = pinfs::format::decode(&raw, "state").unwrap();
    st.inode_high.get()
}

/// Inode slots are handed out lowest-free-first below the high-water mark:
/// creating after unlinking reuses slots instead of growing what mount
/// reads; freeing the highest slots lowers the mark again; a remount sees
/// every file.
#[test]
fn inode_slots_are_reused_below_the_high_water_mark() {
    let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(16 << 20).unwrap());
    Fs::mkfs(&*pool).unwrap();
    let fs = Fs::mount(pool.clone()).unwrap();
    let root = Cred::ROOT;
    let free0 = fs.statfs().free_inodes;
    let mut first = Vec::new();
    for i in 0..40 {
        drop(
            fs.open(root, &format!("/f{i}"), OpenFlags::CREATE, 0o644)
                .unwrap(),
        );
        first.push(fs.stat(root, &format!("/f{i}")).unwrap().ino);
    }
    let highest = *first.iter().max().unwrap();
    assert_eq!(highest, 41, "slots 2.. in order after the root's");
    assert_eq!(inode_high(&*pool), 42);
    // Freeing a slot below the top keeps the mark; freeing the top lowers
    // it past every free slot below.
    fs.unlink(root, "/f10").unwrap();
    assert_eq!(inode_high(&*pool), 42);
    fs.unlink(root, "/f39").unwrap();
    assert_eq!(inode_high(&*pool), 41);
    for i in (0..39).filter(|&i| i != 10) {
        fs.unlink(root, &format!("/f{i}")).unwrap();
    }
    assert_eq!(inode_high(&*pool), 2, "only the root is left");
    assert_eq!(fs.statfs().free_inodes, free0);
    assert!(fs.check().is_empty());
    for i in 0..40 {
        drop(
            fs.open(root, &format!("/g{i}"), OpenFlags::CREATE, 0o644)
                .unwrap(),
        );
        let ino = fs.stat(root, &format!("/g{i}")).unwrap().ino;
        assert!(ino <= highest, "/g{i} got slot {ino} above {highest}");
    }
    drop(fs);
    let fs = Fs::mount(pool.clone()).unwrap();
    assert_eq!(fs.statfs().free_inodes, free0 - 40);
    for i in 0..40 {
        fs.stat(root, &format!("/g{i}")).unwrap();
    }
    assert!(fs.check().is_empty());
}

/// The shared-run table is a named limit (`MAX_SHARED_TABLE_BLOCKS`; one
/// block, 255 runs, in a 4 MiB pool): an operation that would need more runs
/// fails with `ENOSPC` and changes nothing, and the pool stays consistent.
#[test]
fn a_full_shared_run_table_is_enospc_and_changes_nothing() {
    let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(4 << 20).unwrap());
    Fs::mkfs(&*pool).unwrap();
    let fs = Fs::mount(pool.clone()).unwrap();
    let root = Cred::ROOT;
    let a = fs.open(root, "/a", OpenFlags::CREATE, 0o644).unwrap();
    a.pwrite(0, &vec![7u8; 600 * BS as usize]).unwrap();
    let b = fs.open(root, "/b", OpenFlags::CREATE, 0o644).unwrap();
    b.reflink(&a, None).unwrap();
    // Unsharing every other block splits the one shared run into many.
    let mut refused = None;
    for i in (0..600u64).step_by(2) {
        let before = (b.fiemap().unwrap(), fs.statfs().free);
        match b.pwrite(i * BS, &[1]) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.errno(), pinfs::Errno::ENOSPC, "{e}");
                assert_eq!((b.fiemap().unwrap(), fs.statfs().free), before);
                refused = Some(i);
                break;
            }
        }
    }
    assert!(refused.is_some(), "300 runs fit a 255-run table?");
    assert!(fs.check().is_empty(), "{:?}", fs.check());
    drop((a, b, fs));
    let report = Fs::fsck(&*pool).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The pool keeps what version 2 adds — the shared-run table and the inode
/// high-water mark — with every commit; the negative control shows that a
/// pool whose commits leave them behind is refused (fsck names the damage,
/// mount fails), so the checks above would see a commit path that forgot
/// them.
#[cfg(feature = "negative-controls")]
#[test]
fn without_the_shared_runs_and_the_inode_mark_the_pool_is_refused() {
    let root = Cred::ROOT;
    for skip in [false, true] {
        // A reflink: its shared runs.
        let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(16 << 20).unwrap());
        Fs::mkfs(&*pool).unwrap();
        let fs = Fs::mount(pool.clone()).unwrap();
        let a = fs.open(root, "/a", OpenFlags::CREATE, 0o644).unwrap();
        a.pwrite(0, &[3u8; 8 * BS as usize]).unwrap();
        let b = fs.open(root, "/b", OpenFlags::CREATE, 0o644).unwrap();
        if skip {
            fs.skip_format_books_for_tests();
        }
        b.reflink(&a, None).unwrap();
        drop((a, b, fs));
        let report = Fs::fsck(&*pool).unwrap();
        assert_eq!(
            report
                .problems
                .iter()
                .any(|p| p.contains("shared-run table")),
            skip,
            "skip {skip}: {:?}",
            report.problems
        );
        assert_eq!(Fs::mount(pool.clone()).is_err(), skip);

        // A create: the mark over its slot.
        let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(16 << 20).unwrap());
        Fs::mkfs(&*pool).unwrap();
        let fs = Fs::mount(pool.clone()).unwrap();
        if skip {
            fs.skip_format_books_for_tests();
        }
        drop(fs.open(root, "/c", OpenFlags::CREATE, 0o644).unwrap());
        drop(fs);
        let report = Fs::fsck(&*pool).unwrap();
        assert_eq!(
            report.problems.iter().any(|p| p.contains("free inode")),
            skip,
            "skip {skip}: {:?}",
            report.problems
        );
        assert_eq!(Fs::mount(pool.clone()).is_err(), skip);
    }
}
