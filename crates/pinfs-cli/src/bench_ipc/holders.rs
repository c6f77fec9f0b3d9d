//! The holder processes of `pinfs bench ipc`: this executable run as
//! `pinfs bench-ipc-helper ROLE ARGS...` by the bench, one lease holder
//! per process — a client of the bench's daemon, or a process holding a
//! kernel lease on a tmpfs file — driven through standard input and output
//! (`g` to take the lease, `q` to quit; `r` when held; at the end one line
//! per round with when the holder was notified and when its release
//! returned, on the monotonic clock the bench shares).
//!
//! # Safety
//!
//! The kernel holder needs `fcntl(F_SETLEASE)`, `fcntl(F_SETSIG)`, a signal
//! mask and `sigtimedwait`, none of which `rustix` offers, so it calls
//! `libc`. It runs in its own single-threaded process, so the signal mask it
//! sets is the whole process's.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use pinfs::fs::OpenFlags;
use pinfs::lease::EventKind;
use pinfs_client::{Client, LeaseSpec};

use super::{mono_ns, HolderLease, SIDE_TIMEOUT};

/// `fcntl(F_SETSIG)` (not exported by the `libc` crate for this target).
const F_SETSIG: libc::c_int = 10;

/// `pinfs bench-ipc-helper ROLE ARGS...`: a holder process of `bench ipc`.
/// `pinfs-holder SOCKET PATH write|layout` or `kernel-holder PATH`. Reads
/// `g`/`q` on standard input; after each `g` takes its lease, answers `r`,
/// waits for the break and gives the lease up.
pub fn helper(args: &[String]) -> Result<()> {
    match args {
        [role, socket, path, lease] if role == "pinfs-holder" => {
            let lease = match lease.as_str() {
                "write" => HolderLease::Write,
                "layout" => HolderLease::Layout,
                other => bail!("unknown lease {other:?}"),
            };
            pinfs_holder(socket, path, lease)
        }
        [role, path] if role == "kernel-holder" => kernel_holder(Path::new(path)),
        _ => bail!("usage: pinfs bench-ipc-helper (pinfs-holder SOCKET PATH write|layout | kernel-holder PATH)"),
    }
}

/// Waits for `g` (true) or `q`/end of input (false).
fn next_round(input: &mut impl Read) -> Result<bool> {
    let mut b = [0u8; 1];
    Ok(input.read(&mut b)? == 1 && b[0] == b'g')
}

fn ready(out: &mut impl Write) -> Result<()> {
    out.write_all(b"r")?;
    out.flush()?;
    Ok(())
}

fn pinfs_holder(socket: &str, path: &str, lease: HolderLease) -> Result<()> {
    // The daemon signals a break with SIGIO (whose default action would end
    // the process) as well as the event this holder waits for.
    signal_hook::flag::register(libc::SIGIO, Arc::new(AtomicBool::new(false)))?;
    let client = Client::connect(socket).map_err(|e| anyhow!("connect: {e}"))?;
    let file = client
        .open(path, OpenFlags::RDONLY, 0)
        .map_err(|e| anyhow!("open {path}: {e}"))?;
    let spec = match lease {
        HolderLease::Write => LeaseSpec::write(),
        HolderLease::Layout => LeaseSpec::layout_shared(),
    };
    let (mut input, mut out) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut times = Vec::new();
    while next_round(&mut input)? {
        // The breaker's own handle may still be closing (a write lease
        // needs the file to itself): try again until granted.
        let deadline = Instant::now() + SIDE_TIMEOUT;
        let id = loop {
            match file.set_lease(spec) {
                Ok(id) => break id,
                Err(e) if e.errno() == pinfs::Errno::EAGAIN && Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => bail!("set lease: {e}"),
            }
        };
        ready(&mut out)?;
        let ev = client
            .events()
            .recv_timeout(SIDE_TIMEOUT)
            .map_err(|e| anyhow!("events: {e}"))?
            .context("no break event")?;
        let notified = mono_ns();
        if ev.kind != EventKind::Break || ev.lease.id != id {
            bail!("unexpected event {:?} for lease {}", ev.kind, ev.lease.id);
        }
        match lease {
            HolderLease::Write => file.set_lease(LeaseSpec::unlock()).map(drop),
            HolderLease::Layout => client.release_lease(id),
        }
        .map_err(|e| anyhow!("release: {e}"))?;
        times.push((notified, mono_ns()));
    }
    report(&mut out, &times)
}

/// A holder's last words: one line per round, when it was notified and
/// when its release returned.
fn report(out: &mut impl Write, times: &[(u64, u64)]) -> Result<()> {
    for (notified, released) in times {
        writeln!(out, "{notified} {released}")?;
    }
    out.flush()?;
    Ok(())
}

fn setlease(fd: RawFd, ty: libc::c_int) -> std::io::Result<()> {
    // SAFETY: fcntl(F_SETLEASE) takes a descriptor and an integer and
    // touches no memory of ours; `fd` is open for the duration of the call.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, ty) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn kernel_holder(path: &Path) -> Result<()> {
    let sig = libc::SIGRTMIN() + 1;
    // SAFETY: an all-zero sigset_t is a valid value; sigemptyset then
    // initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, local signal set; this process has one
    // thread, whose mask this sets.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let fd = file.as_raw_fd();
    let timeout = libc::timespec {
        tv_sec: SIDE_TIMEOUT.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    let (mut input, mut out) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut times = Vec::new();
    while next_round(&mut input)? {
        // F_UNLCK resets the descriptor's F_SETSIG signal: set it each round.
        // SAFETY: fcntl(F_SETSIG) takes a descriptor and an integer.
        if unsafe { libc::fcntl(fd, F_SETSIG, sig) } != 0 {
            bail!("F_SETSIG: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + SIDE_TIMEOUT;
        while let Err(e) = setlease(fd, libc::F_WRLCK) {
            if Instant::now() > deadline {
                bail!("F_SETLEASE F_WRLCK: {e} (leases disabled? /proc/sys/fs/leases-enable)");
            }
            std::thread::yield_now();
        }
        ready(&mut out)?;
        // SAFETY: an all-zero siginfo_t is a valid out-parameter; `set` and
        // `timeout` are initialised locals.
        let got = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigtimedwait(&set, &mut info, &timeout)
        };
        let notified = mono_ns();
        if got != sig {
            bail!("no lease-break signal within {SIDE_TIMEOUT:?}");
        }
        setlease(fd, libc::F_UNLCK).context("F_SETLEASE F_UNLCK")?;
        times.push((notified, mono_ns()));
    }
    report(&mut out, &times)
}
