//! One user cannot take the mount from others: a non-root user opening
//! the mount's root until refused is refused at its share of the handle
//! table (`EMFILE`), and root still opens, lists and creates.
//!
//! The other user is a thread of this process with its own credentials
//! (`setresuid` on one thread, as the raw system call does), so no helper
//! program is needed.

mod support;

use std::fs::File;
use std::path::PathBuf;

use pinfs_fuse::MAX_OPEN_HANDLES_PER_UID;
use rustix::process::{Resource, Rlimit};
use support::Mounted;

/// The tests that open many files take turns: the descriptor limit is the
/// process's, shared by tests running in parallel.
static MANY_FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Raise this process's descriptor limit to its hard limit; whether that
/// leaves room for `need` descriptors (if not, the test is skipped with a
/// printed reason: raising the hard limit needs `CAP_SYS_RESOURCE`).
fn room_for(need: u64) -> bool {
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    if let Some(h) = hard {
        if h < need {
            eprintln!("skipped: the hard descriptor limit {h} is below the {need} needed");
            return false;
        }
    }
    rustix::process::setrlimit(
        Resource::Nofile,
        Rlimit {
            current: hard,
            maximum: hard,
        },
    )
    .expect("raise RLIMIT_NOFILE to its hard limit");
    true
}

/// `nobody`.
const NOBODY: u32 = 65534;

/// Run `f` on a thread acting as `nobody`.
pub fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let (u, g) = (
            rustix::process::Uid::from_raw(NOBODY),
            rustix::process::Gid::from_raw(NOBODY),
        );
        rustix::thread::set_thread_groups(&[]).expect("setgroups");
        rustix::thread::set_thread_res_gid(g, g, g).expect("setresgid");
        rustix::thread::set_thread_res_uid(u, u, u).expect("setresuid");
        f()
    })
    .join()
    .expect("the nobody thread")
}

#[test]
fn one_user_cannot_take_the_handle_table() {
    need_fuse!();
    const NEED: u64 = MAX_OPEN_HANDLES_PER_UID as u64 + 256;
    let _turn = MANY_FILES.lock().unwrap_or_else(|p| p.into_inner());
    if !room_for(NEED) {
        return;
    }
    let m = Mounted::default_fs();
    std::fs::write(m.path("f"), b"x").expect("create");
    let root: PathBuf = m.dir.path().to_path_buf();
    let r = root.clone();
    let (held, err) = as_nobody(move || {
        let mut held = Vec::new();
        loop {
            match File::open(&r) {
                Ok(f) => held.push(f),
                Err(e) => return (held, e),
            }
            if held.len() > MAX_OPEN_HANDLES_PER_UID {
                panic!("nobody opened more than its share");
            }
        }
    });
    assert_eq!(held.len(), MAX_OPEN_HANDLES_PER_UID);
    assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    // Root is not refused while nobody holds its share.
    assert_eq!(std::fs::read_dir(&root).expect("ls").count(), 1);
    std::fs::write(m.path("g"), b"y").expect("create as root");
    assert_eq!(std::fs::read(m.path("f")).expect("cat"), b"x");
    drop(held);
}

#[test]
fn a_readable_directory_lists_without_search_permission() {
    need_fuse!();
    let m = Mounted::default_fs();
    std::fs::create_dir(m.path("d")).expect("mkdir");
    std::fs::write(m.path("d/a"), b"a").expect("create a");
    std::fs::write(m.path("d/b"), b"b").expect("create b");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(m.path("d"), std::fs::Permissions::from_mode(0o744))
        .expect("chmod 744");
    let d = m.path("d");
    let mut names = as_nobody(move || {
        std::fs::read_dir(&d)
            .expect("nobody reads d")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect::<Vec<_>>()
    });
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

/// The names a directory stream gives from where it is (without `.`, `..`).
fn names(d: &mut rustix::fs::Dir) -> Vec<String> {
    let mut v: Vec<String> = d
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

#[test]
fn rewinddir_shows_entries_created_since_opendir() {
    need_fuse!();
    let m = Mounted::default_fs();
    std::fs::create_dir(m.path("d")).expect("mkdir");
    let mut d = rustix::fs::Dir::new(File::open(m.path("d")).expect("opendir")).expect("dir");
    assert!(names(&mut d).is_empty());
    std::fs::write(m.path("d/new"), b"n").expect("create");
    d.rewind();
    assert_eq!(names(&mut d), ["new"], "rewinddir shows the new entry");
}

#[test]
fn directory_snapshots_are_bounded_per_user() {
    need_fuse!();
    // Past the snapshot bound long before the handle bound.
    const NEED: u64 = MAX_OPEN_HANDLES_PER_UID as u64 + 256;
    let _turn = MANY_FILES.lock().unwrap_or_else(|p| p.into_inner());
    if !room_for(NEED) {
        return;
    }
    let m = Mounted::default_fs();
    std::fs::create_dir(m.path("big")).expect("mkdir");
    const ENTRIES: usize = 500;
    const NAME: usize = 200;
    for i in 0..ENTRIES {
        let name = format!("{i:0>width$}", width = NAME);
        File::create(m.path("big").join(name)).expect("create");
    }
    let big = m.path("big");
    let (held, err) = as_nobody(move || {
        let mut held = Vec::new();
        loop {
            match File::open(&big) {
                Ok(f) => held.push(f),
                Err(e) => return (held, e),
            }
        }
    });
    // At most the uid's share of snapshot bytes, each snapshot at least
    // its names' bytes.
    assert!(
        held.len() <= pinfs_fuse::MAX_SNAPSHOT_BYTES_PER_UID / (ENTRIES * NAME),
        "nobody held {} snapshots",
        held.len()
    );
    assert_eq!(err.raw_os_error(), Some(libc::ENOMEM), "{err}");
    // Root still lists it.
    assert_eq!(
        std::fs::read_dir(m.path("big")).expect("ls").count(),
        ENTRIES
    );
    drop(held);
}
