//! The pool descriptor as the daemon shares it (SPEC §8 trust model:
//! whoever holds it reaches every block; the daemon's permission checks
//! protect against mistakes, not against a hostile client). Two things keep
//! a client from hurting the *daemon* through it:
//!
//! - each client gets an open file description of its own ([`reopen`],
//!   through `/proc/self/fd/N`), so its `F_OFD_SETLK(F_UNLCK)` or
//!   `fcntl(F_SETFL)` cannot touch the daemon's description — whose OFD lock
//!   keeps the pool one mount's (SPEC §7);
//! - a memfd pool is sealed against shrinking and growing ([`seal`]), so a
//!   client's `ftruncate` cannot take pages from under the daemon's mapping
//!   (`SIGBUS` in the daemon). A pool file on disk cannot be sealed: there a
//!   client's `ftruncate` still can (documented in `docs/semantics.md`).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, SealFlags};

/// A new open file description of the file behind `fd`, read-write,
/// close-on-exec.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Seals a memfd pool against shrinking and growing. `Ok(false)`: not a
/// memfd (or one created without sealing), nothing done.
pub(crate) fn seal(fd: BorrowedFd<'_>) -> rustix::io::Result<bool> {
    match rustix::fs::fcntl_get_seals(fd) {
        Ok(seals) if seals.contains(SealFlags::SEAL) => Ok(false),
        Ok(_) => {
            rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW)?;
            Ok(true)
        }
        // Not a memfd.
        Err(rustix::io::Errno::INVAL) => Ok(false),
        Err(e) => Err(e),
    }
}
