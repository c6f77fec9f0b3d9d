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
