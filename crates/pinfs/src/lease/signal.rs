//! Real signals to a lease holder's process (SPEC §3.3 step 2, §8): the
//! daemon raises `SIGIO` — or the signal the holder chose, as with
//! `F_SETSIG` — in a client whose lease is being broken.
//!
//! # Safety
//!
//! This module calls `kill(2)` and `sigqueue(3)` through `libc`, because
//! `rustix` only names the classic signals and the holder may choose a
//! realtime one. Both calls take plain integers (and, for `sigqueue`, a
//! `sigval` passed by value that the kernel copies and never dereferences),
//! so they have no memory-safety preconditions. What they can do is signal
//! the wrong processes: `pid` 0 and negative values address process groups
//! or every process, so they are refused before any call.
#![allow(unsafe_code)]

use std::sync::Arc;

use super::notify::BreakCallback;
use super::BreakEvent;
use crate::Errno;

fn check(pid: i32, signo: i32) -> Result<(), Errno> {
    if pid <= 0 || signo <= 0 || signo > libc::SIGRTMAX() {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Sends signal `signo` (`SIGIO` unless the holder chose another) to process
/// `pid`. `pid` must name one process (> 0).
pub fn raise_signal(pid: i32, signo: i32) -> Result<(), Errno> {
    check(pid, signo)?;
    // SAFETY: `kill` takes two integers and touches no memory of ours; `pid`
    // was checked to name a single process.
    let rc = unsafe { libc::kill(pid, signo) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// Sends signal `signo` with the value `value` (delivered as `si_value`,
/// e.g. the lease id) to process `pid`; for a realtime signal the kernel
/// queues every one, where a classic signal may coalesce.
pub fn queue_signal(pid: i32, signo: i32, value: u64) -> Result<(), Errno> {
    check(pid, signo)?;
    let val = libc::sigval {
        // The value travels as a pointer-sized integer; it is never
        // dereferenced by anyone.
        sival_ptr: value as usize as *mut libc::c_void,
    };
    // SAFETY: `sigqueue` takes integers and a `sigval` by value, which the
    // kernel copies into the signal's `siginfo`; `pid` names one process.
    let rc = unsafe { libc::sigqueue(pid, signo, val) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// A break callback that queues `signo` (default `SIGIO`) to process `pid`
/// for every event, with the lease id as the signal's value: what the daemon
/// registers for a client process. A signal that cannot be sent (the process
/// is gone) is logged and otherwise ignored: the owner's death is handled by
/// `drop_owner`.
pub fn signal_callback(pid: i32, signo: Option<i32>) -> BreakCallback {
    let signo = signo.unwrap_or(libc::SIGIO);
    Arc::new(move |ev: &BreakEvent| {
        if let Err(e) = queue_signal(pid, signo, ev.lease.id.0) {
            tracing::warn!(
                target: "pinfs::lease",
                pid,
                signo,
                lease = ev.lease.id.0,
                error = %e,
                "could not signal lease holder"
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_groups_and_bad_signals() {
        assert_eq!(raise_signal(0, libc::SIGIO), Err(Errno::EINVAL));
        assert_eq!(raise_signal(-1, libc::SIGIO), Err(Errno::EINVAL));
        assert_eq!(raise_signal(1, 0), Err(Errno::EINVAL));
        assert_eq!(queue_signal(1, libc::SIGRTMAX() + 1, 0), Err(Errno::EINVAL));
    }

    #[test]
    fn a_queued_realtime_signal_arrives_with_its_value() {
        // A child process blocks the signal and waits for it synchronously
        // (in the multi-threaded test process another thread could take it).
        let sig = libc::SIGRTMIN() + 3;
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: an all-zero sigset_t is a valid value; sigemptyset then
        // initialises it properly.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
        }
        // SAFETY: the child only makes async-signal-safe calls (sigprocmask,
        // write, sigtimedwait, _exit) on data it owns, as fork in a
        // multi-threaded process requires.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: async-signal-safe calls on valid local data only; the
            // all-zero siginfo_t is a valid out-parameter.
            unsafe {
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                let one = 1u8;
                libc::write(fds[1], (&one as *const u8).cast(), 1);
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let ts = libc::timespec {
                    tv_sec: 5,
                    tv_nsec: 0,
                };
                let got = libc::sigtimedwait(&set, &mut info, &ts);
                let ok = got == sig && info.si_value().sival_ptr as usize == 42;
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let mut b = 0u8;
        // SAFETY: reads one byte into a local of one byte.
        let n = unsafe { libc::read(fds[0], (&mut b as *mut u8).cast(), 1) };
        assert_eq!(n, 1);
        queue_signal(pid, sig, 42).unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        // SAFETY: closes the pipe's two descriptors, owned by this test.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
