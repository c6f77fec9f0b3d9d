//! Namespace operations: create, unlink (also while open), rename, mkdir,
//! rmdir, readdir, permissions — and that what they promise survives a
//! remount.

use std::sync::Arc;

use pinfs::fs::{Cred, Fs, OpenFlags};
use pinfs::media::{MappedPool, Media, RecordingMedia};
use pinfs::Errno;

fn pool() -> (Arc<dyn Media>, Arc<Fs>) {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(16 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media.clone()).unwrap();
    (media, fs)
}

fn errno<T: std::fmt::Debug>(r: pinfs::Result<T>) -> Errno {
    r.expect_err("must fail").errno()
}

fn names(fs: &Fs, dir: &str) -> Vec<String> {
    fs.readdir(Cred::ROOT, dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name_lossy().into_owned())
        .collect()
}

const ROOT: Cred = Cred::ROOT;

#[test]
fn unlinked_open_file_lives_until_close() {
    let (_, fs) = pool();
    let free = fs.statfs().free;
    let h = fs.open(ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    h.pwrite(0, &[5; 100 << 10]).unwrap();
    let used = free - fs.statfs().free;
    fs.unlink(ROOT, "/f").unwrap();
    assert_eq!(errno(fs.stat(ROOT, "/f")), Errno::ENOENT);
    assert_eq!(h.stat().unwrap().nlink, 0);
    let mut buf = [0u8; 10];
    h.pread(50 << 10, &mut buf).unwrap();
    assert_eq!(buf, [5; 10], "still readable through the handle");
    assert_eq!(free - fs.statfs().free, used, "blocks kept while open");
    drop(h);
    assert!(
        free - fs.statfs().free <= 1,
        "blocks freed at last close (the root's block stays)"
    );
    assert!(fs.check().is_empty());
}

#[test]
fn orphans_left_by_a_crash_are_freed_at_mount() {
    let (_media, fs) = pool();
    let h = fs.open(ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    h.pwrite(0, &[5; 1 << 20]).unwrap();
    fs.unlink(ROOT, "/f").unwrap();
    let free_while_open = fs.statfs().free;
    // "Crash": the handle is never closed; mount the pool's current image
    // (a copy: the live mount keeps the pool itself).
    let report = fs.fsck_snapshot().unwrap();
    assert!(
        report.problems.is_empty(),
        "an open orphan is consistent: {:?}",
        report.problems
    );
    let image: Arc<dyn Media> = Arc::new(RecordingMedia::from_image(fs.snapshot().unwrap()));
    drop(h);
    let fs2 = Fs::mount(image).unwrap();
    assert_eq!(
        fs2.statfs().free,
        free_while_open + 256,
        "the orphan's blocks came back"
    );
    assert!(fs2.check().is_empty());
}

#[test]
fn rename_follows_posix() {
    let (media, fs) = pool();
    fs.mkdir(ROOT, "/d", 0o755).unwrap();
    fs.mkdir(ROOT, "/d/e", 0o755).unwrap();
    fs.open(ROOT, "/d/a", OpenFlags::CREATE, 0o644)
        .unwrap()
        .pwrite(0, b"a")
        .unwrap();
    fs.open(ROOT, "/b", OpenFlags::CREATE, 0o644)
        .unwrap()
        .pwrite(0, b"bb")
        .unwrap();
    // File over file replaces it.
    fs.rename(ROOT, "/d/a", "/b").unwrap();
    assert_eq!(fs.stat(ROOT, "/b").unwrap().size, 1);
    assert_eq!(names(&fs, "/d"), ["e"]);
    // Type mismatches and cycles.
    assert_eq!(errno(fs.rename(ROOT, "/b", "/d/e")), Errno::EISDIR);
    assert_eq!(errno(fs.rename(ROOT, "/d", "/b")), Errno::ENOTDIR);
    assert_eq!(errno(fs.rename(ROOT, "/d", "/d/e/x")), Errno::EINVAL);
    fs.open(ROOT, "/d/e/z", OpenFlags::CREATE, 0o644).unwrap();
    fs.mkdir(ROOT, "/x", 0o755).unwrap();
    assert_eq!(errno(fs.rename(ROOT, "/x", "/d/e")), Errno::ENOTEMPTY);
    // A directory moves with its contents; link counts follow.
    fs.rename(ROOT, "/d/e", "/x").unwrap();
    assert_eq!(names(&fs, "/x"), ["z"]);
    assert_eq!(fs.stat(ROOT, "/d").unwrap().nlink, 2);
    assert_eq!(fs.stat(ROOT, "/").unwrap().nlink, 4);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
    drop(fs);
    let fs = Fs::mount(media).unwrap();
    assert_eq!(names(&fs, "/"), ["b", "d", "x"]);
    assert_eq!(names(&fs, "/x"), ["z"]);
}

#[test]
fn directories() {
    let (_, fs) = pool();
    fs.mkdir(ROOT, "/d", 0o755).unwrap();
    assert_eq!(errno(fs.mkdir(ROOT, "/d", 0o755)), Errno::EEXIST);
    assert_eq!(errno(fs.mkdir(ROOT, "/nope/d", 0o755)), Errno::ENOENT);
    fs.open(ROOT, "/d/f", OpenFlags::CREATE, 0o644).unwrap();
    assert_eq!(errno(fs.rmdir(ROOT, "/d")), Errno::ENOTEMPTY);
    assert_eq!(errno(fs.rmdir(ROOT, "/d/f")), Errno::ENOTDIR);
    assert_eq!(errno(fs.unlink(ROOT, "/d")), Errno::EISDIR);
    assert_eq!(
        errno(fs.open(ROOT, "/d", OpenFlags::RDWR, 0)),
        Errno::EISDIR
    );
    assert_eq!(
        errno(fs.open(ROOT, "/d/f/g", OpenFlags::CREATE, 0o644)),
        Errno::ENOTDIR
    );
    assert_eq!(
        errno(fs.open(
            ROOT,
            &format!("/{}", "n".repeat(256)),
            OpenFlags::CREATE,
            0o644
        )),
        Errno::ENAMETOOLONG
    );
    fs.open(
        ROOT,
        &format!("/{}", "n".repeat(255)),
        OpenFlags::CREATE,
        0o644,
    )
    .unwrap();
    assert_eq!(
        errno(fs.open(
            ROOT,
            "/d/f",
            OpenFlags {
                exclusive: true,
                ..OpenFlags::CREATE
            },
            0o644
        )),
        Errno::EEXIST
    );
    // Many entries: the directory grows over several blocks.
    for i in 0..100 {
        fs.open(ROOT, &format!("/d/n{i}"), OpenFlags::CREATE, 0o644)
            .unwrap();
    }
    assert_eq!(names(&fs, "/d").len(), 101);
    for i in 0..100 {
        fs.unlink(ROOT, &format!("/d/n{i}")).unwrap();
    }
    fs.unlink(ROOT, "/d/f").unwrap();
    fs.rmdir(ROOT, "/d").unwrap();
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn permissions() {
    let (_, fs) = pool();
    let alice = Cred {
        uid: 1000,
        gid: 1000,
        groups: pinfs::fs::Groups::NONE,
        owner: 7,
    };
    let bob = Cred {
        uid: 1001,
        gid: 1001,
        groups: pinfs::fs::Groups::NONE,
        owner: 8,
    };
    fs.mkdir(ROOT, "/pub", 0o777).unwrap();
    let h = fs.open(alice, "/pub/a", OpenFlags::CREATE, 0o600).unwrap();
    assert_eq!(h.stat().unwrap().uid, 1000);
    assert_eq!(
        errno(fs.open(bob, "/pub/a", OpenFlags::RDONLY, 0)),
        Errno::EACCES
    );
    assert_eq!(errno(fs.chmod(bob, "/pub/a", 0o666)), Errno::EPERM);
    fs.chmod(alice, "/pub/a", 0o644).unwrap();
    fs.open(bob, "/pub/a", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(
        errno(fs.open(bob, "/pub/a", OpenFlags::RDWR, 0)),
        Errno::EACCES
    );
    assert_eq!(
        errno(fs.chown(alice, "/pub/a", Some(1001), None)),
        Errno::EPERM
    );
    fs.chown(ROOT, "/pub/a", Some(1001), None).unwrap();
    assert_eq!(
        errno(fs.open(alice, "/a", OpenFlags::CREATE, 0o644)),
        Errno::EACCES,
        "root dir is 0755"
    );
    // A read-only handle cannot write.
    let r = fs.open(alice, "/pub/a", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(errno(r.pwrite(0, b"x")), Errno::EBADF);
}
