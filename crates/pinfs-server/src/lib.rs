//! The pinfs daemon (SPEC §8) — skeleton: the public API, filled in next.

#![deny(unsafe_code)]

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use pinfs::fs::Fs;
use pinfs::{Errno, Result};

/// What happens to a client that keeps a layout lease past lease-break-time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fence {
    /// Kill its process (`SIGKILL` through its pidfd).
    #[default]
    Kill,
    /// Only remove the lease, as in process.
    Off,
}

/// Options of a daemon.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Fencing.
    pub fence: Fence,
}

/// Asks a serving daemon to stop.
#[derive(Clone, Debug, Default)]
pub struct Stop;

/// A daemon serving one file system.
pub struct Server {
    _fs: Arc<Fs>,
    _options: ServeOptions,
}

impl Server {
    /// A daemon for `fs`.
    pub fn new(fs: Arc<Fs>, options: ServeOptions) -> Server {
        Server {
            _fs: fs,
            _options: options,
        }
    }

    /// Serves clients on `listener` until `stop`.
    pub fn serve(&self, _listener: UnixListener, _stop: &Stop) -> Result<()> {
        Err(Errno::ENOSYS.into())
    }
}
