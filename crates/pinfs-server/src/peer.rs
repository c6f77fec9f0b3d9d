//! The peer process of a connection, pinned at `accept` (SPEC §8): its
//! credentials (`SO_PEERCRED`, and its supplementary groups from
//! `SO_PEERGROUPS`), a pidfd of it (`SO_PEERPIDFD`, or
//! `pidfd_open` right after `accept` plus a re-check of `SO_PEERCRED`), and
//! signals sent through that pidfd only — so a pid reused by an unrelated
//! process after the client exits can never be signalled or killed.
//!
//! # Safety
//!
//! This module calls `getsockopt(2)` and `pidfd_send_signal(2)` through
//! `libc` (`SO_PEERGROUPS` into a local `Vec<gid_t>` of the length told),
//! because `rustix` offers neither `SO_PEERPIDFD` nor a
//! `pidfd_send_signal` with a `siginfo` (the lease id travels as the
//! signal's value) nor realtime signals without an unchecked constructor,
//! and its `SO_PEERCRED` wrapper assumes a non-zero pid (a peer in another
//! pid namespace reads as pid 0). Each call gets a pointer to a local value
//! of exactly the size it is told, which the kernel only writes (or only
//! reads) within that call; a descriptor the kernel returns is taken into an
//! `OwnedFd` at once, once.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEERPIDFD` (Linux ≥ 6.5; `asm-generic/socket.h`), not yet in `libc`.
const SO_PEERPIDFD: libc::c_int = 77;

/// Most supplementary groups read from a peer (Linux `NGROUPS_MAX`); the
/// file system keeps the first `pinfs::fs::MAX_GROUPS` of them and marks
/// the rest dropped.
const MAX_PEER_GROUPS: usize = 65_536;

/// Who is at the other end of a connection, pinned at `accept`.
pub(crate) struct Peer {
    pub(crate) pid: i32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Its supplementary groups (`SO_PEERGROUPS`, as at `connect`), the
    /// dropped ones marked.
    pub(crate) groups: pinfs::fs::Groups,
    /// The peer process; `None` when it cannot be pinned (the session is
    /// then refused: without it death cannot be confirmed).
    pub(crate) pidfd: Option<OwnedFd>,
}

/// The peer's `SO_PEERCRED`, pid as the kernel gives it (0: outside our pid
/// namespace).
fn peer_cred(sock: BorrowedFd<'_>) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a local `ucred` and `len` its exact size; the kernel
    // writes at most `len` bytes into it during the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux ≥ 4.13): asked
/// first for one more than the file system keeps, so a longer list is
/// known to be longer (`ERANGE` tells the length; it is read once more in
/// full, up to [`MAX_PEER_GROUPS`], and truncated by `Groups`).
fn peer_groups(sock: BorrowedFd<'_>) -> std::io::Result<pinfs::fs::Groups> {
    let mut want = pinfs::fs::MAX_GROUPS + 1;
    loop {
        let mut gids: Vec<libc::gid_t> = vec![0; want];
        let mut len = std::mem::size_of_val(gids.as_slice()) as libc::socklen_t;
        // SAFETY: `gids` is a local buffer of exactly `len` bytes; the
        // kernel writes at most `len` bytes into it during the call (and on
        // `ERANGE` only the length it needs into `len`).
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                gids.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            let n = (len as usize / std::mem::size_of::<libc::gid_t>()).min(gids.len());
            return Ok(pinfs::fs::Groups::from_slice(&gids[..n]));
        }
        let err = std::io::Error::last_os_error();
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if err.raw_os_error() != Some(libc::ERANGE) || needed <= want || needed > MAX_PEER_GROUPS {
            return Err(err);
        }
        want = needed;
    }
}

/// The peer's pidfd from `SO_PEERPIDFD`.
fn peer_pidfd(sock: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a local `c_int` and `len` its exact size; the kernel
    // writes at most `len` bytes into it during the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the kernel just installed `fd` in our table for us; nobody
    // else owns it, and it is taken exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the peer of a just-accepted connection.
pub(crate) fn pin(sock: BorrowedFd<'_>) -> std::io::Result<Peer> {
    let cred = peer_cred(sock)?;
    let groups = peer_groups(sock)?;
    let pidfd = match peer_pidfd(sock) {
        Ok(fd) => Some(fd),
        // Older kernels: open it now, then check the credentials still name
        // the same process (a pid reused in between would not have our
        // socket's credentials recorded at `connect`, but the connector may
        // have exited — then the pidfd could name another process).
        Err(_) if cred.pid > 0 => {
            match rustix::process::Pid::from_raw(cred.pid)
                .map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()))
            {
                Some(Ok(fd)) => {
                    // The connector is alive now (its pidfd does not poll
                    // readable) and the socket still reports its pid.
                    let again = peer_cred(sock)?;
                    if again.pid == cred.pid && !exited(fd.as_fd()) {
                        Some(fd)
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        Err(_) => None,
    };
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups,
        pidfd,
    })
}

/// Whether the process of `pidfd` has exited (its pidfd polls readable).
/// A poll error is not an exit.
pub(crate) fn exited(pidfd: BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    matches!(
        poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0
            })
        ),
        Ok(n) if n > 0 && fds[0].revents().contains(PollFlags::IN)
    )
}

/// Whether a client may choose `signal` in `Hello` for its lease events:
/// the ones that do nothing unless handled — `SIGIO`, `SIGURG`, `SIGUSR1`,
/// `SIGUSR2`, realtime signals — or 0 (none).
pub(crate) fn allowed_signal(signal: i32) -> bool {
    signal == 0
        || signal == libc::SIGIO
        || signal == libc::SIGURG
        || signal == libc::SIGUSR1
        || signal == libc::SIGUSR2
        || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal)
}

/// The kernel's `siginfo_t` for `SI_QUEUE` (as `sigqueue(3)` sends it), on
/// 64-bit Linux: the union starts at offset 16; the whole is 128 bytes.
#[repr(C)]
struct QueuedSigInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    pid: libc::pid_t,
    uid: libc::uid_t,
    value: u64,
    _rest: [u64; 12],
}

const _: () = assert!(std::mem::size_of::<QueuedSigInfo>() == 128);

/// Sends `signal` with `value` (delivered as `si_value`, e.g. the lease
/// id) to the process of `pidfd` — never to whatever process has its pid
/// now. `signal` must be [`allowed_signal`] and not 0.
pub(crate) fn send_signal(pidfd: BorrowedFd<'_>, signal: i32, value: u64) -> std::io::Result<()> {
    if signal == 0 || !allowed_signal(signal) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let info = QueuedSigInfo {
        signo: signal,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid: std::process::id() as libc::pid_t,
        // SAFETY: `getuid` has no preconditions and touches no memory.
        uid: unsafe { libc::getuid() },
        value,
        _rest: [0; 12],
    };
    // SAFETY: `info` is a local, fully initialised 128-byte `siginfo_t`
    // image the kernel only reads (copies) during the call; the descriptor
    // is borrowed for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            &info as *const QueuedSigInfo,
            0u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process may signal the process of `pidfd` (signal 0:
/// the permission check alone). `Err` only for other failures.
pub(crate) fn may_signal(pidfd: BorrowedFd<'_>) -> std::io::Result<bool> {
    // SAFETY: a null `siginfo` and signal 0 make the kernel only check the
    // target and the permission; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<QueuedSigInfo>(),
            0u32,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EPERM) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_harmless_signals_are_allowed() {
        for s in [
            0,
            libc::SIGIO,
            libc::SIGURG,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGRTMIN(),
            libc::SIGRTMAX(),
        ] {
            assert!(allowed_signal(s), "{s}");
        }
        for s in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGTERM,
            libc::SIGSEGV,
            libc::SIGINT,
            -1,
            libc::SIGRTMAX() + 1,
        ] {
            assert!(!allowed_signal(s), "{s}");
        }
    }

    #[test]
    fn a_socket_pair_pins_ourselves() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = pin(a.as_fd()).unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        let fd = p.pidfd.expect("no pidfd for ourselves");
        assert!(!exited(fd.as_fd()));
        assert!(may_signal(fd.as_fd()).unwrap());
        // A signal with no effect on us: a realtime one, blocked? Signal 0
        // is refused (it is not a signal to send).
        assert!(send_signal(fd.as_fd(), 0, 0).is_err());
        assert!(send_signal(fd.as_fd(), libc::SIGKILL, 0).is_err());
    }
}

#[cfg(test)]
mod group_tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// The groups read from a connected peer are the process's own
    /// supplementary groups (both ends are this process here).
    #[test]
    fn peer_groups_are_the_connectors_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let got = super::peer_groups(a.as_fd()).unwrap();
        let mut own = rustix::process::getgroups().unwrap();
        own.truncate(pinfs::fs::MAX_GROUPS + 1);
        let own: Vec<u32> = own.iter().map(|g| g.as_raw()).collect();
        let want = pinfs::fs::Groups::from_slice(&own);
        assert_eq!(got, want);
        assert_eq!(got.is_truncated(), own.len() > pinfs::fs::MAX_GROUPS);
    }
}
