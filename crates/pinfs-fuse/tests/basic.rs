//! The mount as ordinary tools see it: files written and read back with
//! `std::fs` and coreutils, truncated and punched, listed, renamed and
//! removed, `df`; what the mount shows is what the core's API shows.

mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use pinfs::fs::{Cred, OpenFlags};
use support::{sh, Mounted};

#[test]
fn write_read_truncate_through_the_mount() {
    need_fuse!();
    let m = Mounted::default_fs();
    let f = m.path("a");
    std::fs::write(&f, vec![0xab; 100_000]).expect("write");
    assert_eq!(std::fs::read(&f).expect("read"), vec![0xab; 100_000]);
    // The core sees what the mount wrote.
    let h =
        m.fs.open(Cred::ROOT, "/a", OpenFlags::RDONLY, 0)
            .expect("open in the core");
    let mut buf = vec![0; 10];
    assert_eq!(h.pread(99_990, &mut buf).expect("pread"), 10);
    assert_eq!(buf, vec![0xab; 10]);
    drop(h);
    // `truncate` (coreutils) shrinks it.
    let out = sh("truncate", &["-s", "4096", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::metadata(&f).expect("stat").len(), 4096);
    assert_eq!(m.fs.stat(Cred::ROOT, "/a").expect("stat").size, 4096);
    // Grows back with zeros.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .expect("open");
    file.set_len(8192).expect("ftruncate");
    let mut all = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut all).expect("read");
    assert_eq!(&all[..4096], &[0xab; 4096][..]);
    assert_eq!(&all[4096..], &[0; 4096][..]);
    // Writes at an offset, appends.
    file.seek(SeekFrom::Start(10)).unwrap();
    file.write_all(b"hello").expect("write");
    drop(file);
    let mut app = std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .expect("open append");
    app.write_all(b"tail").expect("append");
    drop(app);
    let all = std::fs::read(&f).expect("read");
    assert_eq!(all.len(), 8196);
    assert_eq!(&all[10..15], b"hello");
    assert_eq!(&all[8192..], b"tail");
}

#[test]
fn namespace_and_statfs() {
    need_fuse!();
    let m = Mounted::default_fs();
    std::fs::create_dir(m.path("d")).expect("mkdir");
    std::fs::write(m.path("d/x"), b"x").expect("create");
    std::fs::write(m.path("d/y"), b"y").expect("create");
    let mut names: Vec<String> = std::fs::read_dir(m.path("d"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["x", "y"]);
    std::fs::rename(m.path("d/x"), m.path("z")).expect("rename");
    assert_eq!(std::fs::read(m.path("z")).expect("read"), b"x");
    std::fs::remove_file(m.path("d/y")).expect("unlink");
    std::fs::remove_dir(m.path("d")).expect("rmdir");
    assert!(m.fs.stat(Cred::ROOT, "/d").is_err());
    // A node id carries the generation: st_ino differs from the core's
    // inode number only in its high half.
    let st = m.fs.stat(Cred::ROOT, "/z").expect("stat");
    assert_eq!(
        std::fs::metadata(m.path("z")).expect("stat").ino(),
        u64::from(st.generation) << 32 | st.ino
    );
    let out = sh("df", &["-B4096", m.dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pinfs"), "{text}");
}

#[test]
fn unmount_joins_and_a_busy_mount_still_ends() {
    need_fuse!();
    let mut m = Mounted::default_fs();
    std::fs::write(m.path("f"), b"data").expect("write");
    // An open file keeps the mount busy: unmount detaches and aborts.
    let held = std::fs::File::open(m.path("f")).expect("open");
    m.unmount();
    drop(held);
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        !mounts.contains(m.dir.path().to_str().unwrap()),
        "still mounted: {mounts}"
    );
}

/// Every `fallocate` mode the kernel passes does through the mount what the
/// core does;
/// `SEEK_DATA`/`SEEK_HOLE` follow the extent map; `copy_file_range` of
/// whole blocks shares them (a reflink) and of a partial block copies.
#[test]
fn fallocate_modes_seek_and_copy_file_range() {
    use rustix::fs::{copy_file_range, fallocate, seek, FallocateFlags, SeekFrom as S};
    need_fuse!();
    let m = Mounted::default_fs();
    let block = 4096usize;
    let mut model: Vec<u8> = (0..16 * block).map(|i| (i / block) as u8 + 1).collect();
    std::fs::write(m.path("f"), &model).expect("write");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f"))
        .expect("open");
    let check = |model: &[u8], what: &str| {
        assert_eq!(std::fs::read(m.path("f")).expect("read"), model, "{what}");
    };
    // Punch two blocks: zeros, a hole SEEK_HOLE finds.
    fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        4 * 4096,
        8192,
    )
    .expect("punch");
    model[4 * block..6 * block].fill(0);
    check(&model, "punch");
    assert_eq!(seek(&f, S::Hole(0)).expect("SEEK_HOLE"), 4 * 4096);
    assert_eq!(seek(&f, S::Data(4 * 4096)).expect("SEEK_DATA"), 6 * 4096);
    // Zero a range across a partial block.
    fallocate(&f, FallocateFlags::ZERO_RANGE, 100, 5000).expect("zero");
    model[100..5100].fill(0);
    check(&model, "zero range");
    // Collapse and insert never reach a FUSE file system: the kernel's
    // FUSE refuses every mode but KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE.
    for mode in [FallocateFlags::COLLAPSE_RANGE, FallocateFlags::INSERT_RANGE] {
        let e = fallocate(&f, mode, 8 * 4096, 4096).expect_err("not passed by the kernel");
        assert_eq!(e.raw_os_error(), libc::EOPNOTSUPP);
    }
    check(&model, "collapse and insert refused");
    // Allocate past the end, keeping the size, then growing it.
    fallocate(&f, FallocateFlags::KEEP_SIZE, model.len() as u64, 8192).expect("keep size");
    check(&model, "keep size");
    fallocate(&f, FallocateFlags::empty(), model.len() as u64, 4096).expect("allocate");
    model.extend(vec![0; block]);
    check(&model, "allocate");
    // An unknown mode is refused.
    let e = fallocate(&f, FallocateFlags::UNSHARE_RANGE, 0, 4096).expect_err("unknown mode");
    assert_eq!(e.raw_os_error(), libc::EOPNOTSUPP);
    // copy_file_range: whole blocks are shared, a partial block is copied.
    let g = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.path("g"))
        .expect("create g");
    let (mut i, mut o) = (8 * 4096u64, 0u64);
    let n = copy_file_range(&f, Some(&mut i), &g, Some(&mut o), 4 * block).expect("reflink");
    assert_eq!(n, 4 * block);
    let (mut i, mut o) = (10u64, 4 * 4096 + 10);
    let n = copy_file_range(&f, Some(&mut i), &g, Some(&mut o), 100).expect("copy");
    assert_eq!(n, 100);
    let got = std::fs::read(m.path("g")).expect("read g");
    assert_eq!(&got[..4 * block], &model[8 * block..12 * block]);
    assert_eq!(&got[4 * block + 10..4 * block + 110], &model[10..110]);
    let h =
        m.fs.open(Cred::ROOT, "/g", OpenFlags::RDONLY, 0)
            .expect("open g in the core");
    assert!(
        h.fiemap().expect("fiemap")[0].shared,
        "whole blocks were shared"
    );
}
