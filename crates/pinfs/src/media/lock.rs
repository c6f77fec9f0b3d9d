//! The exclusive lock that makes a pool one process's at a time (SPEC §7).
//!
//! Two processes that both mount a pool each keep their own in-memory mirror
//! of the metadata and overwrite each other's commits: data is lost without a
//! word. So every pool opened by path ([`super::MappedPool::open`] and
//! [`super::MappedPool::create`]) is locked before anything reads, resizes or
//! maps it, and the lock lives as long as the pool's descriptor. A memfd needs
//! none: nobody else can open it by name.
//!
//! The lock is an *open file description* lock (`F_OFD_SETLK`, whole file,
//! write), for three reasons:
//! - it belongs to the descriptor the pool is mapped from, not to the
//!   process, so a second open of the same pool *in the same process* (a
//!   second mount) conflicts too — POSIX record locks would not;
//! - closing some other descriptor of the same file (a `std::fs::metadata`,
//!   a test reading the pool) does not drop it, as it drops POSIX locks;
//! - the kernel releases it when the descriptor closes, process death
//!   included, so a crashed holder never leaves a stale lock behind.
//!
//! A refused lock is `EBUSY` with a message naming the holder. OFD locks do
//! not record a pid (`/proc/locks` shows `-1`), so the holder is found from
//! the lock lines of `/proc/PID/fdinfo/FD`, which the kernel prints for the
//! very descriptor that holds the lock; the pool's `MAJOR:MINOR:INODE` picks
//! the line. When it cannot be read (another user's process), the message
//! says "another process".
//!
//! # Safety
//!
//! One `fcntl` call with a pointer to a `flock` that lives on the stack for
//! the duration of the call; the descriptor is borrowed, so it is open.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use crate::{Error, Result};

/// The hint every refusal ends with: how to share a pool between processes.
pub const SHARE_HINT: &str =
    "a pool is used by one process at a time: stop the holder first (to share a pool among processes, serve it: `pinfs serve POOL --socket PATH`)";

/// Lock the pool behind `fd` (opened from `path`) for this descriptor alone.
///
/// Fails with `EBUSY` naming the holder when another descriptor — of this
/// process or another — holds the lock; with the system's error when the
/// file system cannot lock at all (then the pool is refused rather than used
/// unprotected).
pub fn lock_exclusive(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        // Zero: to the end of the file, however it grows.
        l_len: 0,
        // Must be zero for OFD locks.
        l_pid: 0,
    };
    // SAFETY: `fd` is a borrowed, hence open, descriptor; `lock` is a valid
    // `flock` that outlives the call, which only reads it (F_OFD_SETLK).
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // The lock is held through another open file description.
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(busy(fd, path)),
        _ => Err(Error::media(format!("lock {}", path.display()), err)),
    }
}

/// The `EBUSY` error for `path`, naming the holder when it can be found.
fn busy(fd: BorrowedFd<'_>, path: &Path) -> Error {
    let holder = match holder_of(fd) {
        Some(pid) if pid == std::process::id() => format!("pid {pid} (this process)"),
        Some(pid) => match command_name(pid) {
            Some(comm) => format!("pid {pid} ({comm})"),
            None => format!("pid {pid}"),
        },
        None => "another process".to_string(),
    };
    Error::media(
        format!(
            "pool {} is in use by {holder}; {SHARE_HINT}",
            path.display()
        ),
        io::Error::from_raw_os_error(libc::EBUSY),
    )
}

/// The kernel's name for the file behind `fd` in lock listings:
/// `MAJOR:MINOR:INODE`, major and minor as two-digit hex (as `fs/locks.c`
/// prints them).
fn lock_key(fd: BorrowedFd<'_>) -> Option<String> {
    let st = rustix::fs::fstat(fd).ok()?;
    Some(format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev),
        st.st_ino
    ))
}

/// The pid of a process with a descriptor that holds an OFD lock on the file
/// behind `fd`, from `/proc/*/fdinfo/*` (readable for this user's processes).
fn holder_of(fd: BorrowedFd<'_>) -> Option<u32> {
    let key = lock_key(fd)?;
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        for info in fds.flatten() {
            let Ok(text) = std::fs::read_to_string(info.path()) else {
                continue;
            };
            if holds_lock_on(&text, &key) {
                return Some(pid);
            }
        }
    }
    None
}

/// Whether an fdinfo text has a lock line (`lock:\t1: OFDLCK ADVISORY WRITE
/// -1 08:01:1234 0 EOF`) for the file `key`.
fn holds_lock_on(fdinfo: &str, key: &str) -> bool {
    fdinfo
        .lines()
        .filter(|l| l.starts_with("lock:"))
        .any(|l| l.contains("OFDLCK") && l.split_whitespace().any(|w| w == key))
}

/// `/proc/PID/comm`, the holder's command name.
fn command_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim();
    (!comm.is_empty()).then(|| comm.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn fdinfo_lock_lines() {
        let text = "pos:\t0\nflags:\t02\nlock:\t1: OFDLCK  ADVISORY  WRITE -1 08:01:1234 0 EOF\n";
        assert!(holds_lock_on(text, "08:01:1234"));
        assert!(!holds_lock_on(text, "08:01:123"));
        let posix = "lock:\t1: POSIX  ADVISORY  WRITE 77 08:01:1234 0 EOF\n";
        assert!(!holds_lock_on(posix, "08:01:1234"));
    }

    #[test]
    fn a_second_descriptor_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let first = std::fs::File::create(&path).unwrap();
        lock_exclusive(first.as_fd(), &path).unwrap();
        // Locking again through the same description is no conflict.
        lock_exclusive(first.as_fd(), &path).unwrap();
        let second = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let err = lock_exclusive(second.as_fd(), &path).unwrap_err();
        assert_eq!(err.errno(), crate::Errno::EBUSY);
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {} (this process)", std::process::id())),
            "{text}"
        );
        assert!(text.contains(SHARE_HINT), "{text}");
        // Closing an unrelated descriptor of the file keeps the lock (a POSIX
        // lock would be gone now); closing the holder releases it.
        drop(std::fs::File::open(&path).unwrap());
        assert!(lock_exclusive(second.as_fd(), &path).is_err());
        drop(first);
        lock_exclusive(second.as_fd(), &path).unwrap();
    }

    #[test]
    fn a_second_mount_in_one_process_is_ebusy() {
        use crate::fs::Fs;
        use crate::media::MappedPool;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let pool = MappedPool::create(&path, 8 << 20).unwrap();
        Fs::mkfs(&pool).unwrap();
        let fs = Fs::mount(Arc::new(pool)).unwrap();
        // Opening it again (to mount, fsck or mkfs it) is refused, and so is
        // `create`, which would otherwise resize the mounted pool.
        let err = MappedPool::open(&path).unwrap_err();
        assert_eq!(err.errno(), crate::Errno::EBUSY, "{err}");
        let err = MappedPool::create(&path, 4 << 20).unwrap_err();
        assert_eq!(err.errno(), crate::Errno::EBUSY, "{err}");
        assert_eq!(fs.media().len_bytes(), 8 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
        // Unmounted (the last reference to the pool dropped): free again.
        drop(fs);
        let pool = MappedPool::open(&path).unwrap();
        Fs::mount(Arc::new(pool)).unwrap();
    }

    /// The in-process half: a second mount (or an fsck) of the same open
    /// pool — one descriptor, so the OFD lock cannot tell — is `EBUSY`; and
    /// the negative control, what that prevents: with the claim cleared
    /// (protection off), two mounts of one pool each commit from their own
    /// in-memory mirror, and after a remount one mount's work is gone or the
    /// metadata is inconsistent.
    #[test]
    fn a_second_mount_of_one_open_pool_is_ebusy_and_would_lose_data() {
        use crate::fs::{Cred, Fs, OpenFlags};
        use crate::media::{MappedPool, Media};
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(8 << 20).unwrap());
        Fs::mkfs(&*pool).unwrap();
        let first = Fs::mount(pool.clone()).unwrap();
        let err = Fs::mount(pool.clone()).unwrap_err();
        assert_eq!(err.errno(), crate::Errno::EBUSY, "{err}");
        assert!(err.to_string().contains("already mounted"), "{err}");
        let err = Fs::fsck(&*pool).unwrap_err();
        assert_eq!(err.errno(), crate::Errno::EBUSY, "{err}");
        // A refused mount gives nothing back that it did not take: the first
        // mount still holds the claim.
        assert!(pool.mount_flag().unwrap().load(Ordering::Acquire));
        // Protection off: the claim cleared by hand.
        pool.mount_flag().unwrap().store(false, Ordering::Release);
        let second = Fs::mount(pool.clone()).unwrap();
        let me = Cred::root_as(1);
        first.open(me, "/first", OpenFlags::CREATE, 0o644).unwrap();
        second
            .open(me, "/second", OpenFlags::CREATE, 0o644)
            .unwrap();
        drop((first, second));
        // Both dropped: the pool is free again, in this process too.
        assert!(!pool.mount_flag().unwrap().load(Ordering::Acquire));
        let fs = Fs::mount(pool).unwrap();
        let names: Vec<String> = fs
            .readdir(me, "/")
            .unwrap()
            .into_iter()
            .map(|e| e.name_lossy().into_owned())
            .collect();
        let both = names.iter().any(|n| n == "first") && names.iter().any(|n| n == "second");
        assert!(
            !both || !fs.check().is_empty(),
            "two unguarded mounts kept both files consistently ({names:?}): the control shows nothing"
        );
    }
}
