//! The pinfs daemon (SPEC §8): one mounted file system served to client
//! processes over a Unix stream socket, in the wire protocol of
//! `pinfs-proto`.
//!
//! [`Server::new`] takes the mounted [`Fs`]; [`Server::serve`] accepts
//! connections until [`Stop::stop`], then says `Bye` to every client,
//! releases everything every session held, and returns — the caller
//! unmounts (drops the `Fs`).
//!
//! # Sessions
//!
//! Each connection is a session (`session.rs`): the peer's `SO_PEERCRED`
//! (pid, uid, gid), its supplementary groups (`SO_PEERGROUPS`, the first
//! `MAX_GROUPS` kept and the rest marked dropped) and a pidfd of its
//! process, all taken right after `accept` (`peer.rs`: `SO_PEERPIDFD`; a
//! peer that cannot be pinned is refused), and a credential
//! `Cred{uid, gid, groups, owner}` with an owner number of its own, under which
//! every operation runs — so the core's permission checks apply to the
//! client's user, and its leases and pins are attributed to it. Threads: a
//! reader that only decodes, checks bounds and queues (it never blocks on
//! the file system, and handles acknowledgements itself); workers, started
//! as requests need them, at most [`pinfs_proto::MAX_INFLIGHT`] — so a
//! request waiting in a lease break never holds up the client's next one;
//! and a writer fed by a bounded queue ([`MAX_OUTGOING`] frames,
//! [`MAX_OUTGOING_BYTES`] bytes; a reply goes out directly when nothing is
//! queued and the socket takes it without blocking), so the file
//! system never waits on a slow client: a client whose queue overflows is
//! dropped. A malformed, oversized or out-of-order frame, a wrong version,
//! a frame carrying descriptors, or one request too many in flight drops
//! that client only, with a `warn` naming its pid and the reason.
//!
//! # Lease breaks and fencing
//!
//! A session's owner callback (`LeaseEngine::set_owner_callback`) turns
//! every lease event of the client into an `Event` frame and a signal to its
//! process through its pidfd (the one it chose in `Hello` — `SIGIO`,
//! `SIGURG`, `SIGUSR1`, `SIGUSR2` or a realtime signal — `SIGIO` by
//! default). When a layout
//! lease of the client is forcibly removed at lease-break-time (the `Lost`
//! event, delivered before the breaker proceeds), the client is *fenced*:
//! its address space cannot be changed from outside, so with
//! [`Fence::Kill`] its process is killed through its pidfd; with
//! [`Fence::Off`] it only loses the lease. [`Server::fence`] is the same
//! entry for other callers (a client that does not acknowledge a mapping
//! re-placement in time).
//!
//! # Cleanup
//!
//! A session that ends (disconnect, death, violation, shutdown) loses its
//! leases at once, its open files once its in-flight requests are done, and
//! its pins once its process is confirmed dead (its pidfd is readable) —
//! until then the blocks they reach stay busy, since a device of a live
//! process may still write to them. A fenced client loses nothing before
//! its death is confirmed. Shutdown does not wait for deaths.

#![deny(unsafe_code)]

mod maps;
mod ops;
mod peer;
mod pool;
mod session;
mod status;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use pinfs::fs::Fs;
use pinfs::{Errno, Error, Result};
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

pub use maps::{MAX_MAPPINGS_PER_CLIENT, MAX_REGISTRATIONS_PER_CLIENT};
pub use pinfs_proto::ClientId;
use session::Session;

/// Most clients connected at once; one more is told `Bye` and closed. Gone
/// clients whose death is awaited (they held pins or mappings) do not count
/// here but against [`MAX_LINGERING`].
pub const MAX_CLIENTS: usize = 1024;

/// Most gone clients whose death is awaited at once (each keeps a thread
/// and what it held); while there are this many, new clients are refused.
pub const MAX_LINGERING: usize = 1024;

/// How long an ending session's writer may take to deliver what is queued
/// (its `Bye` among it) before the connection is shut in both directions.
pub const BYE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Most frames waiting to be written to one client; a client that lets more
/// pile up is dropped (the file system never waits on a slow reader).
pub const MAX_OUTGOING: usize = 4096;

/// Most open files per client (`EMFILE` beyond).
pub const MAX_FILES_PER_CLIENT: usize = 65_536;

/// Most bytes waiting to be written to one client (replies carry up to
/// `MAX_IO` bytes each): a client that lets more pile up is dropped.
pub const MAX_OUTGOING_BYTES: usize = 64 << 20;

/// Most long-term pins per client (`ENOSPC` beyond).
pub const MAX_PINS_PER_CLIENT: usize = 65_536;

/// Most connections that have not yet said `Hello` at once; more are closed
/// at once (each waits up to [`HELLO_TIMEOUT`] on a thread of its own).
pub const MAX_HANDSHAKES: usize = 64;

/// How long a new connection has to say `Hello`.
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What happens to a client that keeps a layout lease past lease-break-time
/// (or does not acknowledge a re-placement in time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fence {
    /// Kill its process (`SIGKILL` through its pidfd), which releases
    /// everything it held once its death is confirmed.
    #[default]
    Kill,
    /// Only remove the lease, as in process: nobody is killed.
    Off,
}

impl std::str::FromStr for Fence {
    type Err = Errno;
    fn from_str(s: &str) -> std::result::Result<Self, Errno> {
        match s {
            "kill" => Ok(Fence::Kill),
            "off" => Ok(Fence::Off),
            _ => Err(Errno::EINVAL),
        }
    }
}

/// Options of a daemon.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Fencing (default: kill).
    pub fence: Fence,
    /// Most clients at once (at most [`MAX_CLIENTS`]).
    pub max_clients: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            fence: Fence::Kill,
            max_clients: MAX_CLIENTS,
        }
    }
}

/// Asks a serving daemon to stop; clones share the request. Safe to call
/// from a signal-handling thread.
#[derive(Clone, Debug)]
pub struct Stop {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    stopped: AtomicBool,
    /// Readable once stopped: wakes `serve` and waits for deaths.
    eventfd: OwnedFd,
}

impl Stop {
    /// A stop request not yet made.
    pub fn new() -> Result<Stop> {
        let eventfd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::from(Errno(e.raw_os_error())))?;
        Ok(Stop {
            inner: Arc::new(StopInner {
                stopped: AtomicBool::new(false),
                eventfd,
            }),
        })
    }

    /// Requests the stop.
    pub fn stop(&self) {
        if !self.inner.stopped.swap(true, Ordering::AcqRel) {
            let _ = rustix::io::write(&self.inner.eventfd, &1u64.to_ne_bytes());
        }
    }

    /// Whether it was requested.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.inner.eventfd
    }
}

/// What the daemon's threads share.
pub(crate) struct Shared {
    pub(crate) fs: Arc<Fs>,
    pub(crate) options: ServeOptions,
    pub(crate) sessions: Mutex<HashMap<ClientId, Arc<Session>>>,
    next_client: AtomicU64,
    /// Connections not yet past `Hello` (at most [`MAX_HANDSHAKES`]).
    pub(crate) handshakes: std::sync::atomic::AtomicUsize,
    /// Set by `serve` for its duration: what deaths are awaited against.
    pub(crate) stop: Mutex<Option<Stop>>,
    /// The soft RDMA device clients register mappings with, created on
    /// first use (`maps.rs`).
    pub(crate) soft_device: Mutex<Option<Arc<dyn pinfs::dma::Device>>>,
    /// Test switch: fencing kills nobody (the negative control).
    #[cfg(feature = "negative-controls")]
    pub(crate) fencing_disabled: AtomicBool,
    /// Test switch: a session that ends releases nothing (the negative
    /// control of the cleanup tests).
    #[cfg(feature = "negative-controls")]
    pub(crate) cleanup_disabled: AtomicBool,
}

impl Shared {
    pub(crate) fn fencing_disabled(&self) -> bool {
        #[cfg(feature = "negative-controls")]
        {
            self.fencing_disabled.load(Ordering::Relaxed)
        }
        #[cfg(not(feature = "negative-controls"))]
        {
            false
        }
    }

    pub(crate) fn cleanup_disabled(&self) -> bool {
        #[cfg(feature = "negative-controls")]
        {
            self.cleanup_disabled.load(Ordering::Relaxed)
        }
        #[cfg(not(feature = "negative-controls"))]
        {
            false
        }
    }
}

/// A daemon serving one file system.
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A daemon for the mounted `fs`.
    pub fn new(fs: Arc<Fs>, options: ServeOptions) -> Server {
        let options = ServeOptions {
            max_clients: options.max_clients.min(MAX_CLIENTS),
            ..options
        };
        Server {
            shared: Arc::new(Shared {
                fs,
                options,
                sessions: Mutex::new(HashMap::new()),
                next_client: AtomicU64::new(1),
                handshakes: std::sync::atomic::AtomicUsize::new(0),
                stop: Mutex::new(None),
                soft_device: Mutex::new(None),
                #[cfg(feature = "negative-controls")]
                fencing_disabled: AtomicBool::new(false),
                #[cfg(feature = "negative-controls")]
                cleanup_disabled: AtomicBool::new(false),
            }),
        }
    }

    /// The file system served.
    pub fn fs(&self) -> &Arc<Fs> {
        &self.shared.fs
    }

    /// A lease owner of its own for another user of the served file system
    /// in the daemon's process (the FUSE mount of `pinfs serve --mount`):
    /// taken from the same numbers as the clients' owners, so it is never
    /// a client's, and the leases that user's operations break are the
    /// clients'.
    pub fn new_owner(&self) -> u64 {
        session::OWNER_BASE + self.shared.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Serves clients on `listener` until `stop` is requested; then tells
    /// every client `Bye`, ends every session (releasing what it held) and
    /// returns. Errors: the listener's.
    pub fn serve(&self, listener: UnixListener, stop: &Stop) -> Result<()> {
        *self.shared.stop.lock() = Some(stop.clone());
        if let Some(m) = self.shared.fs.media().mapping() {
            match pool::seal(m.fd) {
                Ok(true) => {
                    tracing::debug!(target: "pinfs::server", "memfd pool sealed against shrinking and growing")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(target: "pinfs::server", error = %e, "cannot seal the memfd pool")
                }
            }
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::media("listening socket", e))?;
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let result = loop {
            if stop.is_stopped() {
                break Ok(());
            }
            let mut fds = [
                PollFd::new(&listener, PollFlags::IN),
                PollFd::new(stop.fd(), PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => break Err(Error::from(Errno(e.raw_os_error()))),
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.shared.handshakes.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
                        self.shared.handshakes.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(target: "pinfs::server", "too many connections saying nothing: one refused");
                        drop(stream);
                        continue;
                    }
                    // The peer is pinned now, before its connector can
                    // exit and its pid be reused (finding: pid reuse).
                    let peer = match peer::pin(std::os::fd::AsFd::as_fd(&stream)) {
                        Ok(p) => p,
                        Err(e) => {
                            self.shared.handshakes.fetch_sub(1, Ordering::AcqRel);
                            tracing::warn!(target: "pinfs::server", error = %e, "no peer credentials: connection refused");
                            continue;
                        }
                    };
                    let id = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
                    let shared = Arc::clone(&self.shared);
                    match std::thread::Builder::new()
                        .name(format!("pinfs-client-{id}"))
                        .spawn(move || session::run(shared, id, stream, peer))
                    {
                        Ok(h) => threads.push(h),
                        Err(e) => {
                            self.shared.handshakes.fetch_sub(1, Ordering::AcqRel);
                            tracing::warn!(target: "pinfs::server", error = %e, "cannot start a session thread");
                        }
                    }
                    threads.retain(|h| !h.is_finished());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: log, keep serving those connected.
                    tracing::warn!(target: "pinfs::server", error = %e, "accept failed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        };
        // Shutdown: every session is told and ends; its thread releases
        // what it held (without waiting for deaths: `stop` is raised).
        let sessions: Vec<Arc<Session>> = self.shared.sessions.lock().values().cloned().collect();
        for s in sessions {
            s.end("the daemon is shutting down");
        }
        for h in threads {
            let _ = h.join();
        }
        *self.shared.stop.lock() = None;
        tracing::info!(target: "pinfs::server", "all sessions ended");
        result
    }

    /// Fences client `client` now (as at a layout lease lost at
    /// lease-break-time): with [`Fence::Kill`] its process is killed; with
    /// [`Fence::Off`] nothing more happens. `ENOENT` for an unknown client.
    pub fn fence(&self, client: ClientId, reason: &str) -> Result<()> {
        let s = self
            .shared
            .sessions
            .lock()
            .get(&client)
            .cloned()
            .ok_or(Errno::ENOENT)?;
        s.fence(&self.shared, reason);
        Ok(())
    }

    /// Sends client `client` the message `make(token)` and waits for its
    /// acknowledgement of `token` (`ClientMsg::Ack`), at most
    /// lease-break-time (for ever when that is 0): the way the daemon asks
    /// a client's library for something it must confirm, such as
    /// re-placing pages of its mappings. No answer in time fences the
    /// client (`ETIMEDOUT`; with [`Fence::Off`] its session is ended
    /// instead). Returns the client's errno (0: done); `ENOENT` for an
    /// unknown client, `ENOTCONN` when it goes away first — and at once,
    /// without sending anything, once its session is ending or it has let
    /// one acknowledgement time out.
    pub fn ask(
        &self,
        client: ClientId,
        make: impl FnOnce(u64) -> pinfs_proto::DaemonMsg,
        what: &str,
    ) -> Result<i32> {
        let s = self
            .shared
            .sessions
            .lock()
            .get(&client)
            .cloned()
            .ok_or(Errno::ENOENT)?;
        let break_time = self.shared.fs.leases().break_time();
        let timeout = (!break_time.is_zero()).then_some(break_time);
        Ok(s.ask(&self.shared, make, timeout, what)?)
    }

    /// Checks that client `client` answers (`Ping`), within lease-break-time;
    /// one that does not is fenced (`ETIMEDOUT`).
    pub fn ping(&self, client: ClientId) -> Result<()> {
        self.ask(
            client,
            |token| pinfs_proto::DaemonMsg::Ping { token },
            "ping",
        )
        .map(drop)
    }

    /// The status `pinfs stat --socket` prints.
    pub fn status(&self) -> pinfs_proto::Status {
        status::status(&self.shared)
    }

    /// Test-only negative control: fencing kills nobody.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_fencing_for_tests(&self) {
        self.shared.fencing_disabled.store(true, Ordering::Relaxed);
    }

    /// Test-only negative control: a client that disconnects or dies
    /// releases nothing — its session, files, leases and pins stay listed
    /// (and held) for good.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_cleanup_for_tests(&self) {
        self.shared.cleanup_disabled.store(true, Ordering::Relaxed);
    }
}
