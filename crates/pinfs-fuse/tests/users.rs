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
    let want = (MAX_OPEN_HANDLES_PER_UID + 256) as u64;
    rustix::process::setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(want),
        },
    )
    .expect("raise RLIMIT_NOFILE");
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
