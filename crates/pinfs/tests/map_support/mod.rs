//! Helpers of the mapping tests: a file system on a memfd pool, files of
//! known bytes, raw loads and stores through a mapping, and running a
//! scenario in a child process to see whether the kernel kills it with
//! `SIGBUS`.
#![allow(unsafe_code, dead_code)]

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use pinfs::fs::{Cred, Fs, Handle, MountOptions, OpenFlags};
use pinfs::map::Mapping;
use pinfs::media::{MappedPool, Media};

pub const PAGE: u64 = 4096;

/// The file's owner (and holder of `MAP_DIRECT` mappings).
pub const HOLDER: Cred = Cred {
    uid: 1000,
    gid: 1000,
    groups: pinfs::fs::Groups::NONE,
    owner: 1,
};

/// Another user and actor: a lease breaker.
pub const OTHER: Cred = Cred {
    uid: 1001,
    gid: 1001,
    groups: pinfs::fs::Groups::NONE,
    owner: 2,
};

/// A fresh file system on a 32 MiB memfd pool.
pub fn mount(break_time: Duration) -> Arc<Fs> {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(32 << 20).unwrap());
    mount_on(media, break_time)
}

pub fn mount_on(media: Arc<dyn Media>, break_time: Duration) -> Arc<Fs> {
    Fs::mkfs(&*media).unwrap();
    Fs::mount_with(
        media,
        MountOptions {
            break_time,
            ..MountOptions::default()
        },
    )
    .unwrap()
}

/// Create `path` (mode 0666, owned by `HOLDER`) holding `len` bytes of
/// `byte`, and open it read-write as `HOLDER`.
pub fn file(fs: &Arc<Fs>, path: &str, len: u64, byte: u8) -> Handle {
    drop(fs.open(Cred::ROOT, path, OpenFlags::CREATE, 0o666).unwrap());
    fs.chown(Cred::ROOT, path, Some(HOLDER.uid), Some(HOLDER.gid))
        .unwrap();
    let h = fs.open(HOLDER, path, OpenFlags::RDWR, 0).unwrap();
    if len > 0 {
        h.pwrite(0, &vec![byte; len as usize]).unwrap();
    }
    h
}

/// `len` bytes of the file at `offset`, through `pread`.
pub fn contents(h: &Handle, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = h.pread(offset, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn check_in_range(m: &Mapping, offset: u64) {
    assert!(
        offset < m.len().div_ceil(PAGE) * PAGE,
        "offset {offset} outside the mapping"
    );
}

/// A raw load, as an application does it; raises `SIGBUS` where SPEC says so.
pub fn load(m: &Mapping, offset: u64) -> u8 {
    check_in_range(m, offset);
    // SAFETY: the address lies in the mapping's range, which stays reserved
    // while `m` lives. The load is volatile and goes through no reference:
    // the file system changes what the page shows at any time (and the
    // access may raise SIGBUS, which is what the tests look for).
    unsafe { std::ptr::read_volatile(m.as_ptr().add(offset as usize)) }
}

/// A raw store (see [`load`]).
pub fn store(m: &Mapping, offset: u64, byte: u8) {
    check_in_range(m, offset);
    // SAFETY: as in `load`.
    unsafe { std::ptr::write_volatile(m.as_ptr().add(offset as usize), byte) }
}

/// How a child process ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// `_exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

pub const SIGBUS: Ending = Ending::Signaled(libc::SIGBUS);
pub const CLEAN: Ending = Ending::Exited(0);

/// Run `scenario` in a forked child and report how the child ended: the
/// scenario's return value as exit code (0: nothing unexpected happened;
/// other values name the check that failed), or the signal that killed it.
///
/// Mappings are not inherited across fork, so a scenario builds its own
/// file system in the child. The child has 30 s (`alarm`) before `SIGALRM`
/// ends it, so a hang shows up as a failure instead of a stuck test.
pub fn in_child(scenario: impl FnOnce() -> i32) -> Ending {
    // SAFETY: `fork` has no memory-safety preconditions. The child runs only
    // `scenario` and leaves through `_exit`, never returning into the test
    // harness or running its destructors; the state it inherited from other
    // threads is not used except through the allocator, which the C library
    // makes fork-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: `alarm` only arms a timer of this (child) process.
        unsafe { libc::alarm(30) };
        let code = std::panic::catch_unwind(AssertUnwindSafe(scenario)).unwrap_or(101);
        // SAFETY: ends the child at once without unwinding into the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    if libc::WIFSIGNALED(status) {
        Ending::Signaled(libc::WTERMSIG(status))
    } else {
        Ending::Exited(libc::WEXITSTATUS(status))
    }
}

/// In a child scenario: return `$code` unless `$cond` holds.
#[macro_export]
macro_rules! expect {
    ($cond:expr, $code:expr) => {
        if !$cond {
            return $code;
        }
    };
}
