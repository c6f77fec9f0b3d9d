//! The pinfs client library: the file system a `pinfs serve` daemon owns,
//! used from another process with the core library's operations and names
//! (SPEC §8).
//!
//! [`Client::connect`] opens one connection to the daemon's socket; a
//! [`Client`] is `Clone + Send + Sync`, and any number of threads may call
//! it at once: requests carry ids, and one reader thread per connection
//! hands each reply to its caller (at most [`pinfs_proto::MAX_INFLIGHT`]
//! unanswered at a time — further callers wait their turn here, never
//! overrunning the daemon's bound). The daemon's `Welcome` brings the pool's
//! file descriptor ([`Client::pool_fd`]), so that the client maps pool blocks
//! itself, zero-copy.
//!
//! Files are [`RemoteFile`]s with the core `Handle`'s method names (dropping
//! one closes it); long-term pins are [`RemotePin`]s (dropping one unpins).
//! Lease notifications arrive as the core's [`BreakEvent`]s on
//! [`Client::events`], a queue with a pollable descriptor, and — unless the
//! client chose otherwise in [`ConnectOptions`] — as a real `SIGIO` to the
//! process. Errors are the core's [`pinfs::Error`] with the daemon's errno;
//! once the connection is gone every call fails with `ENOTCONN` (`EPIPE`
//! for a request that could not be sent), and the event queue reports it.
//!
//! Every client is one owner for leases and pins: two `Client`s of one
//! process are two actors, as two processes would be.

#![deny(unsafe_code)]

mod events;
mod maps;

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use pinfs::fs::{DirEntry, FallocMode, FiemapExtent, OpenFlags, Stat, StatFs};
use pinfs::lease::{FileKey, LeaseId, LeaseType};
use pinfs::pin::PinId;
use pinfs::{Errno, Error, Result};
use pinfs_proto::{
    decode, encode, ClientMsg, DaemonMsg, FileId, FrameReader, Op, ProtoError, Reply, Welcome,
    MAX_FRAME, MAX_INFLIGHT, MAX_IO, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};

pub use events::{Events, MAX_QUEUED_EVENTS};

/// Most mappings of one connection kept after a failed tear-down (their
/// pages may still reach pool blocks). The daemon maps at most this many
/// per client (`pinfs_server::MAX_MAPPINGS_PER_CLIENT`) and forgets none of
/// them, so the bound is never reached by a daemon that keeps its own.
pub const MAX_ZOMBIE_MAPPINGS: usize = 4096;
pub use maps::{ClientMap, RemoteRegistration};
pub use pinfs::lease::BreakEvent;
pub use pinfs_proto::{ClientStatus, HandleStatus, LeaseSpec, RegistrationStatus, Status};

/// How to connect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The signal the daemon sends this process when one of its leases is
    /// being broken: `None` for `SIGIO` (the default, as without
    /// `F_SETSIG`), `Some(0)` for none (events only), `Some(sig)` for
    /// another (a realtime signal carries the lease id as its value). As
    /// with Linux leases, the process must handle or ignore the signal: the
    /// default action of `SIGIO` terminates it.
    pub signal: Option<i32>,
}

/// A connection to a pinfs daemon. Clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Callers rely on it: any thread may use (a clone of) a client.
const _: fn() = || {
    fn shareable<T: Clone + Send + Sync>() {}
    shareable::<Client>();
    fn sendable<T: Send + Sync>() {}
    sendable::<RemoteFile>();
    sendable::<RemotePin>();
    sendable::<Events>();
};

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.inner.conn.welcome.client_id)
            .finish_non_exhaustive()
    }
}

/// Where a caller waits for its reply.
enum Slot {
    Waiting(mpsc::Sender<std::result::Result<Reply, i32>>),
    /// Nobody waits (close, unpin from `Drop`): the reply is dropped.
    Discard,
}

/// What the caller threads and the reader thread share.
struct Conn {
    sock: UnixStream,
    /// Serialises whole frames onto the socket.
    write_lock: Mutex<()>,
    pending: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    /// Requests sent and not answered, at most `MAX_INFLIGHT`.
    inflight: Mutex<usize>,
    inflight_freed: Condvar,
    /// Why the connection is gone, once it is.
    gone: Mutex<Option<String>>,
    events: Events,
    welcome: Welcome,
    pool_fd: OwnedFd,
    daemon_pid: i32,
    /// This connection's mappings by their number, for the reader thread
    /// to apply `Place`s to (`maps.rs`).
    maps: Mutex<HashMap<u64, std::sync::Weak<pinfs::map::client::ClientMapping>>>,
    /// Mappings whose tear-down failed, kept for the connection's life: a
    /// `Place` for one is acknowledged `EIO` (never as done), so the daemon
    /// keeps the blocks their pages may reach busy (`maps.rs`).
    zombies: Mutex<HashMap<u64, Arc<pinfs::map::client::ClientMapping>>>,
    /// The pool's descriptor shared by the mappings (`maps.rs`).
    map_pool: Mutex<Option<Arc<OwnedFd>>>,
}

struct Inner {
    conn: Arc<Conn>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader sees the end of the stream and leaves; the daemon sees
        // the client go and releases what it held.
        let _ = self.conn.sock.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.reader.lock().take() {
            let _ = h.join();
        }
    }
}

fn io_error(e: &std::io::Error) -> Error {
    Error::Errno(Errno(e.raw_os_error().unwrap_or(libc::EIO)))
}

fn proto_error(e: &ProtoError) -> Error {
    match e {
        ProtoError::Io(io) => io_error(io),
        ProtoError::Closed | ProtoError::Truncated => Errno::ENOTCONN.into(),
        ProtoError::TooLarge { .. } | ProtoError::Bound { .. } => Errno::EMSGSIZE.into(),
        _ => Errno::EPROTO.into(),
    }
}

impl Client {
    /// Connects to the daemon listening at `path`, with the default options
    /// (`SIGIO` on a lease break).
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Self::connect_with(path, ConnectOptions::default())
    }

    /// Connects with `options`. Errors: the socket's (`ENOENT`,
    /// `ECONNREFUSED`), `EPROTO` for a daemon that does not speak this
    /// protocol version, `ECONNREFUSED` when the daemon says `Bye`.
    pub fn connect_with(path: impl AsRef<Path>, options: ConnectOptions) -> Result<Client> {
        let sock = UnixStream::connect(path.as_ref()).map_err(|e| io_error(&e))?;
        let signal = options.signal.unwrap_or(libc::SIGIO);
        if signal < 0 || signal > libc::SIGRTMAX() {
            return Err(Errno::EINVAL.into());
        }
        let hello = encode(
            &ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                signal,
            },
            MAX_REQUEST_FRAME,
        )
        .map_err(|e| proto_error(&e))?;
        pinfs_proto::send_frame(&sock, &hello).map_err(|e| proto_error(&e))?;
        let mut reader =
            FrameReader::new(sock.try_clone().map_err(|e| io_error(&e))?, MAX_FRAME, 1);
        let mut frame = reader.read_frame().map_err(|e| proto_error(&e))?;
        let welcome = match decode::<DaemonMsg>(&frame.payload).map_err(|e| proto_error(&e))? {
            DaemonMsg::Welcome(w) if w.version == PROTOCOL_VERSION => w,
            DaemonMsg::Welcome(_) => return Err(Errno::EPROTO.into()),
            DaemonMsg::Bye { reason } => {
                tracing::warn!(target: "pinfs::client", %reason, "daemon refused the connection");
                return Err(Errno::ECONNREFUSED.into());
            }
            _ => return Err(Errno::EPROTO.into()),
        };
        let pool_fd = match (frame.fds.pop(), frame.fds.is_empty()) {
            (Some(fd), true) => fd,
            _ => return Err(Errno::EPROTO.into()),
        };
        // From here on no frame may carry a descriptor.
        reader.set_max_fds(0);
        let daemon_pid = rustix::net::sockopt::socket_peercred(&sock)
            .map(|c| c.pid.as_raw_nonzero().get())
            .unwrap_or(0);
        let conn = Arc::new(Conn {
            sock,
            write_lock: Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            inflight: Mutex::new(0),
            inflight_freed: Condvar::new(),
            gone: Mutex::new(None),
            events: Events::new()?,
            welcome,
            pool_fd,
            daemon_pid,
            maps: Mutex::new(HashMap::new()),
            zombies: Mutex::new(HashMap::new()),
            map_pool: Mutex::new(None),
        });
        let reader_conn = Arc::clone(&conn);
        let handle = std::thread::Builder::new()
            .name(format!("pinfs-client-{}", conn.welcome.client_id))
            .spawn(move || reader_conn.read_loop(reader))
            .map_err(|e| io_error(&e))?;
        Ok(Client {
            inner: Arc::new(Inner {
                conn,
                reader: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The daemon's number for this client.
    pub fn id(&self) -> u64 {
        self.inner.conn.welcome.client_id
    }

    /// The daemon's process id (from the socket's peer credentials).
    pub fn pid_of_daemon(&self) -> i32 {
        self.inner.conn.daemon_pid
    }

    /// The pool's file descriptor, received in `Welcome`: map
    /// `[0, pool_len)` of it to reach pool blocks.
    pub fn pool_fd(&self) -> BorrowedFd<'_> {
        self.inner.conn.pool_fd.as_fd()
    }

    /// What the daemon said at connection: pool length, 2 MiB pages,
    /// lease-break-time, truncate policy.
    pub fn welcome(&self) -> &Welcome {
        &self.inner.conn.welcome
    }

    /// The queue of lease notifications for this client.
    pub fn events(&self) -> &Events {
        &self.inner.conn.events
    }

    /// Why the connection is gone, once it is.
    pub fn disconnected(&self) -> Option<String> {
        self.inner.conn.gone.lock().clone()
    }

    /// Sends `op` and waits for its reply.
    fn call(&self, op: Op) -> Result<Reply> {
        self.inner.conn.call(op)
    }

    /// Sends `op`; its reply is dropped (what `Drop` of a file or pin does).
    fn call_discard(&self, op: Op) {
        self.inner.conn.call_discard(op);
    }

    fn done(&self, op: Op) -> Result<()> {
        match self.call(op)? {
            Reply::Done => Ok(()),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// `truncate(2)` by path.
    pub fn truncate_path(&self, path: &str, size: u64) -> Result<()> {
        self.done(Op::TruncatePath {
            path: path.to_owned(),
            size,
        })
    }

    /// Removes a name.
    pub fn unlink(&self, path: &str) -> Result<()> {
        self.done(Op::Unlink {
            path: path.to_owned(),
        })
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        self.done(Op::Mkdir {
            path: path.to_owned(),
            mode,
        })
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &str) -> Result<()> {
        self.done(Op::Rmdir {
            path: path.to_owned(),
        })
    }

    /// Renames.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.done(Op::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }

    /// Lists a directory, sorted by name.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self.call(Op::Readdir {
            path: path.to_owned(),
        })? {
            Reply::Dir(d) => Ok(d),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// `stat` a path.
    pub fn stat(&self, path: &str) -> Result<Stat> {
        match self.call(Op::Stat {
            path: path.to_owned(),
        })? {
            Reply::Stat(s) => Ok(s),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// Changes permission bits.
    pub fn chmod(&self, path: &str, mode: u32) -> Result<()> {
        self.done(Op::Chmod {
            path: path.to_owned(),
            mode,
        })
    }

    /// Changes owner and group.
    pub fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        self.done(Op::Chown {
            path: path.to_owned(),
            uid,
            gid,
        })
    }

    /// Space, in 4 KiB blocks.
    pub fn statfs(&self) -> Result<StatFs> {
        match self.call(Op::Statfs)? {
            Reply::StatFs(s) => Ok(s),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// Opens (and maybe creates) `path`.
    pub fn open(&self, path: &str, flags: OpenFlags, mode: u32) -> Result<RemoteFile> {
        match self.call(Op::Open {
            path: path.to_owned(),
            flags,
            mode,
        })? {
            Reply::Opened { file, key, ino } => Ok(RemoteFile {
                client: self.clone(),
                id: file,
                key,
                ino,
                flags,
                path: path.to_owned(),
            }),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// Everything `pinfs stat --socket` prints: clients, leases, pins,
    /// registrations, busy extents, space.
    pub fn status(&self) -> Result<Status> {
        match self.call(Op::Status)? {
            Reply::Status(s) => Ok(*s),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// Releases one of this client's leases by id (`ENOENT` when it is not
    /// held any more, `EPERM` when it is another client's).
    pub fn release_lease(&self, lease: LeaseId) -> Result<()> {
        self.done(Op::ReleaseLease { lease })
    }
}

impl Conn {
    fn is_gone(&self) -> bool {
        self.gone.lock().is_some()
    }

    fn send(&self, msg: &ClientMsg) -> Result<()> {
        let frame = encode(msg, MAX_REQUEST_FRAME).map_err(|e| proto_error(&e))?;
        let _w = self.write_lock.lock();
        pinfs_proto::send_frame(&self.sock, &frame).map_err(|e| {
            tracing::debug!(target: "pinfs::client", error = %e, "request not sent");
            Error::from(Errno::EPIPE)
        })
    }

    /// Waits for room under `MAX_INFLIGHT`.
    fn take_inflight(&self) -> Result<()> {
        let mut n = self.inflight.lock();
        while *n >= MAX_INFLIGHT {
            if self.is_gone() {
                return Err(Errno::ENOTCONN.into());
            }
            self.inflight_freed
                .wait_for(&mut n, Duration::from_millis(100));
        }
        *n += 1;
        Ok(())
    }

    fn give_inflight(&self) {
        *self.inflight.lock() -= 1;
        self.inflight_freed.notify_one();
    }

    fn call(&self, op: Op) -> Result<Reply> {
        if self.is_gone() {
            return Err(Errno::ENOTCONN.into());
        }
        self.take_inflight()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending.lock().insert(id, Slot::Waiting(tx));
        // The reader may have gone between the check and the insert: it
        // drains `pending` after setting `gone`, so check again.
        if self.is_gone() {
            self.pending.lock().remove(&id);
            self.give_inflight();
            return Err(Errno::ENOTCONN.into());
        }
        let sent = self.send(&ClientMsg::Request { id, op });
        let result = match sent {
            Ok(()) => rx.recv().map_err(|_| Error::from(Errno::ENOTCONN)),
            Err(e) => {
                self.pending.lock().remove(&id);
                Err(e)
            }
        };
        self.give_inflight();
        match result? {
            Ok(reply) => Ok(reply),
            Err(errno) => Err(Errno(errno).into()),
        }
    }

    fn call_discard(&self, op: Op) {
        if self.is_gone() || self.take_inflight().is_err() {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(id, Slot::Discard);
        if self.send(&ClientMsg::Request { id, op }).is_err()
            && self.pending.lock().remove(&id).is_some()
        {
            self.give_inflight();
        }
    }

    /// The reader thread: hands replies to callers and events to the queue
    /// until the connection ends, then fails everything still waiting.
    fn read_loop(&self, mut reader: FrameReader) {
        let reason = loop {
            let frame = match reader.read_frame() {
                Ok(f) => f,
                Err(ProtoError::Closed) => break "the daemon closed the connection".to_owned(),
                Err(e) => break format!("connection lost: {e}"),
            };
            let msg = match decode::<DaemonMsg>(&frame.payload) {
                Ok(m) => m,
                Err(e) => break format!("undecodable message from the daemon: {e}"),
            };
            match msg {
                DaemonMsg::Reply { id, result } => {
                    let slot = self.pending.lock().remove(&id);
                    match slot {
                        Some(Slot::Waiting(tx)) => {
                            // The caller gives the in-flight slot back.
                            let _ = tx.send(result);
                        }
                        Some(Slot::Discard) => self.give_inflight(),
                        None => break format!("reply to unknown request {id}"),
                    }
                }
                DaemonMsg::Event(ev) => self.events.push(ev),
                DaemonMsg::Place { map, token, pieces } => {
                    // Applied and acknowledged here, never behind a reply.
                    if let Err(reason) = self.place(map, token, &pieces) {
                        break reason;
                    }
                }
                DaemonMsg::Bye { reason } => break format!("the daemon said goodbye: {reason}"),
                DaemonMsg::Ping { token } => {
                    if let Err(e) = self.send(&ClientMsg::Ack { token, errno: 0 }) {
                        break format!("cannot acknowledge: {e}");
                    }
                }
                DaemonMsg::Welcome(_) => break "a second Welcome from the daemon".to_owned(),
            }
        };
        tracing::debug!(target: "pinfs::client", %reason, "connection ended");
        *self.gone.lock() = Some(reason.clone());
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        // Dropping the senders wakes every waiting caller with ENOTCONN.
        let drained: Vec<Slot> = self.pending.lock().drain().map(|(_, s)| s).collect();
        for s in drained {
            if let Slot::Discard = s {
                self.give_inflight();
            }
        }
        self.inflight_freed.notify_all();
        // Nobody re-places this process's mappings any more.
        self.orphan_mappings();
        self.events.close(reason);
    }
}

/// An open file of the daemon's file system. Dropping it closes it.
pub struct RemoteFile {
    client: Client,
    id: FileId,
    key: FileKey,
    ino: u64,
    flags: OpenFlags,
    path: String,
}

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        self.client.call_discard(Op::Close { file: self.id });
    }
}

impl RemoteFile {
    /// The client it belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The daemon's name for it on this connection.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The lease engine's name for the file (as `LeaseInfo::file`).
    pub fn lease_file(&self) -> FileKey {
        self.key
    }

    /// Its inode.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The flags it was opened with.
    pub fn flags(&self) -> OpenFlags {
        self.flags
    }

    /// The path it was opened by.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn done(&self, op: Op) -> Result<()> {
        self.client.done(op)
    }

    /// Reads up to `buf.len()` bytes at `offset` (several requests of at
    /// most `MAX_IO` bytes); returns the bytes read, short at end of file.
    pub fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let want = (buf.len() - done).min(MAX_IO);
            let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
            let data = match self.client.call(Op::Pread {
                file: self.id,
                offset: at,
                len: want as u64,
            })? {
                Reply::Data(d) if d.len() <= want => d,
                _ => return Err(Errno::EPROTO.into()),
            };
            buf[done..done + data.len()].copy_from_slice(&data);
            done += data.len();
            if data.len() < want {
                break;
            }
        }
        Ok(done)
    }

    /// Writes `data` at `offset` (several requests of at most `MAX_IO`
    /// bytes); returns the bytes written.
    pub fn pwrite(&self, offset: u64, data: &[u8]) -> Result<usize> {
        let mut done = 0usize;
        loop {
            let chunk = &data[done..(done + MAX_IO).min(data.len())];
            let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
            let n = match self.client.call(Op::Pwrite {
                file: self.id,
                offset: at,
                data: chunk.to_vec(),
            })? {
                Reply::Count(n) if n as usize <= chunk.len() => n as usize,
                _ => return Err(Errno::EPROTO.into()),
            };
            done += n;
            if done >= data.len() || n < chunk.len() {
                return Ok(done);
            }
        }
    }

    /// Truncates (or extends) the file.
    pub fn truncate(&self, size: u64) -> Result<()> {
        self.done(Op::Truncate {
            file: self.id,
            size,
        })
    }

    /// `fallocate(2)` in `mode` over `[offset, offset + len)`.
    pub fn fallocate(&self, mode: FallocMode, offset: u64, len: u64) -> Result<()> {
        self.done(Op::Fallocate {
            file: self.id,
            mode,
            offset,
            len,
        })
    }

    /// Clones `src` (or `(src_offset, dst_offset, len)` of it) into this
    /// file. Both must be files of the same client (`EXDEV` otherwise).
    pub fn reflink(&self, src: &RemoteFile, range: Option<(u64, u64, u64)>) -> Result<()> {
        if !Arc::ptr_eq(&self.client.inner, &src.client.inner) {
            return Err(Errno::EXDEV.into());
        }
        self.done(Op::Reflink {
            file: self.id,
            src: src.id,
            range,
        })
    }

    /// Makes the file durable.
    pub fn fsync(&self) -> Result<()> {
        self.done(Op::Fsync { file: self.id })
    }

    /// `fstat`.
    pub fn stat(&self) -> Result<Stat> {
        match self.client.call(Op::Fstat { file: self.id })? {
            Reply::Stat(s) => Ok(s),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// The file's extents.
    pub fn fiemap(&self) -> Result<Vec<FiemapExtent>> {
        match self.client.call(Op::Fiemap { file: self.id })? {
            Reply::Fiemap(v) => Ok(v),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// `fchmod`.
    pub fn chmod(&self, mode: u32) -> Result<()> {
        self.done(Op::Fchmod {
            file: self.id,
            mode,
        })
    }

    /// Sets, changes or releases a lease on the file (`F_SETLEASE`, with
    /// `F_LAYOUT`/`F_EXCLUSIVE`); returns its id. `EACCES` on a file the
    /// client's user does not own, unless it is root (`CAP_LEASE`).
    pub fn set_lease(&self, spec: LeaseSpec) -> Result<LeaseId> {
        match self.client.call(Op::SetLease {
            file: self.id,
            spec,
        })? {
            Reply::Lease(id) => Ok(id),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// `F_GETLEASE`: the open lease's type (the target type while a break
    /// is pending).
    pub fn get_lease(&self) -> Result<LeaseType> {
        match self.client.call(Op::GetLease { file: self.id })? {
            Reply::LeaseType(t) => Ok(t),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// Releases a lease by id (one this client holds).
    pub fn release_lease(&self, lease: LeaseId) -> Result<()> {
        self.client.release_lease(lease)
    }

    /// A long-term pin of `[offset, offset + len)` under the client's
    /// unbreakable layout lease (`EPERM` without one). Dropping it unpins.
    pub fn pin_long_term(&self, offset: u64, len: u64) -> Result<RemotePin> {
        match self.client.call(Op::PinLongTerm {
            file: self.id,
            offset,
            len,
        })? {
            Reply::Pinned { pin, pool_ranges } => Ok(RemotePin {
                client: self.client.clone(),
                id: pin,
                pool_ranges,
                unpinned: false,
            }),
            _ => Err(Errno::EPROTO.into()),
        }
    }
}

/// A long-term pin held through the daemon. Dropping it unpins.
pub struct RemotePin {
    client: Client,
    id: PinId,
    pool_ranges: Vec<(u64, u64)>,
    /// `unpin` already sent it.
    unpinned: bool,
}

impl std::fmt::Debug for RemotePin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePin").field("id", &self.id).finish()
    }
}

impl RemotePin {
    /// Its id.
    pub fn id(&self) -> PinId {
        self.id
    }

    /// The pool byte ranges it reaches, `(offset, length)` in file order:
    /// what a device is given (offsets into a mapping of [`Client::pool_fd`]).
    pub fn pool_ranges(&self) -> &[(u64, u64)] {
        &self.pool_ranges
    }

    /// Unpins now and reports the daemon's answer (dropping unpins too,
    /// without waiting for it).
    pub fn unpin(mut self) -> Result<()> {
        self.unpinned = true;
        self.client.done(Op::Unpin { pin: self.id })
    }
}

impl Drop for RemotePin {
    fn drop(&mut self) {
        if !self.unpinned {
            self.client.call_discard(Op::Unpin { pin: self.id });
        }
    }
}
