//! The messages: what a client asks ([`ClientMsg`], [`Op`]), what the daemon
//! answers ([`DaemonMsg`], [`Reply`]), and the listing `pinfs stat --socket`
//! prints ([`Status`]). Every bound a request must respect is checked in one
//! place, [`ClientMsg::validate`], before the daemon acts on it.

use std::time::Duration;

use pinfs::alloc::Run;
use pinfs::dma::{Completion, MrKeys, RevokeMode};
use pinfs::fs::{DirEntry, FallocMode, FiemapExtent, OpenFlags, Stat, StatFs, TruncatePolicy};
use pinfs::lease::{BreakEvent, ByteRange, FileKey, LeaseId, LeaseInfo, LeaseRequest, LeaseType};
use pinfs::map::RemotePiece;
use pinfs::pin::{PinId, PinInfo};
use serde::{Deserialize, Serialize};

use crate::frame::ProtoError;
use crate::{MAX_IO, MAX_PATH, MAX_REASON};

/// A client's name for one of its open files (an open file description in
/// the daemon), chosen by the daemon at `Open`.
pub type FileId = u64;

/// A client: what the daemon numbers its connections by (`Welcome`,
/// `Status`).
pub type ClientId = u64;

/// Client → daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// The first message of a connection.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the client.
        version: u32,
        /// The signal the daemon sends the client's process when one of its
        /// leases is being broken (`SIGIO` by default, as `F_SETSIG`); 0:
        /// none (events only).
        signal: i32,
    },
    /// An operation; answered by one `Reply` with the same `id`.
    Request {
        /// The client's number for the request (unique among its
        /// unanswered ones).
        id: u64,
        /// What to do.
        op: Op,
    },
    /// An acknowledgement of something the daemon asked of the client's
    /// service thread (mapping re-placement): `token` names the request,
    /// `errno` 0 for done. Handled on the connection's reader thread,
    /// never queued behind file-system work.
    Ack {
        /// The daemon's number for what is acknowledged.
        token: u64,
        /// 0, or the errno of the failure.
        errno: i32,
    },
}

/// A lease request as it travels (SPEC §3; [`LeaseRequest`] minus its
/// callback, which cannot cross a process boundary — a client learns of
/// breaks through events and its signal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSpec {
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub ty: LeaseType,
    /// `F_LAYOUT`.
    pub layout: bool,
    /// `F_EXCLUSIVE` (unbreakable; layout leases only).
    pub unbreakable: bool,
    /// The range a layout lease covers.
    pub range: ByteRange,
    /// Fail with `EWOULDBLOCK` rather than wait for a layout change in
    /// progress.
    pub nonblocking: bool,
}

impl LeaseSpec {
    /// `F_RDLCK`.
    pub fn read() -> Self {
        Self::new(LeaseType::Read, false)
    }
    /// `F_WRLCK`.
    pub fn write() -> Self {
        Self::new(LeaseType::Write, false)
    }
    /// `F_UNLCK`.
    pub fn unlock() -> Self {
        Self::new(LeaseType::Unlock, false)
    }
    /// `F_RDLCK|F_LAYOUT`.
    pub fn layout_shared() -> Self {
        Self::new(LeaseType::Read, true)
    }
    /// `F_WRLCK|F_LAYOUT`.
    pub fn layout_exclusive() -> Self {
        Self::new(LeaseType::Write, true)
    }
    /// `F_UNLCK|F_LAYOUT`.
    pub fn layout_unlock() -> Self {
        Self::new(LeaseType::Unlock, true)
    }
    /// Adds `F_EXCLUSIVE` (unbreakable).
    pub fn unbreakable(mut self) -> Self {
        self.unbreakable = true;
        self
    }
    /// Limits a layout lease to `range`.
    pub fn range(mut self, range: ByteRange) -> Self {
        self.range = range;
        self
    }
    /// Do not wait for a layout change in progress.
    pub fn nonblocking(mut self) -> Self {
        self.nonblocking = true;
        self
    }

    fn new(ty: LeaseType, layout: bool) -> Self {
        LeaseSpec {
            ty,
            layout,
            unbreakable: false,
            range: ByteRange::WHOLE,
            nonblocking: false,
        }
    }

    /// The core library's request for it.
    pub fn to_request(&self) -> LeaseRequest {
        let req = match (self.ty, self.layout) {
            (LeaseType::Read, false) => LeaseRequest::read(),
            (LeaseType::Write, false) => LeaseRequest::write(),
            (LeaseType::Unlock, false) => LeaseRequest::unlock(),
            (LeaseType::Read, true) => LeaseRequest::layout_shared(),
            (LeaseType::Write, true) => LeaseRequest::layout_exclusive(),
            (LeaseType::Unlock, true) => LeaseRequest::layout_unlock(),
        };
        let req = if self.unbreakable {
            req.unbreakable()
        } else {
            req
        };
        let req = req.range(self.range);
        if self.nonblocking {
            req.nonblocking()
        } else {
            req
        }
    }
}

/// An operation, with the core library's arguments minus the caller's
/// credentials (the daemon supplies the client's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `Fs::open` → `Reply::Opened`.
    Open {
        /// Absolute path.
        path: String,
        /// `open(2)` flags.
        flags: OpenFlags,
        /// Permission bits of a created file.
        mode: u32,
    },
    /// Close an open file.
    Close {
        /// Which.
        file: FileId,
    },
    /// `Handle::pread` of at most [`MAX_IO`] bytes → `Reply::Data`.
    Pread {
        /// Which file.
        file: FileId,
        /// File offset.
        offset: u64,
        /// Bytes wanted.
        len: u64,
    },
    /// `Handle::pwrite` → `Reply::Count`.
    Pwrite {
        /// Which file.
        file: FileId,
        /// File offset.
        offset: u64,
        /// At most [`MAX_IO`] bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `Handle::truncate`.
    Truncate {
        /// Which file.
        file: FileId,
        /// New size.
        size: u64,
    },
    /// `Fs::truncate_path`.
    TruncatePath {
        /// Absolute path.
        path: String,
        /// New size.
        size: u64,
    },
    /// `Handle::fallocate`.
    Fallocate {
        /// Which file.
        file: FileId,
        /// Which mode.
        mode: FallocMode,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// `Handle::reflink` of `src` into `file`.
    Reflink {
        /// Destination.
        file: FileId,
        /// Source (an open file of the same client).
        src: FileId,
        /// `(src_offset, dst_offset, len)`, or the whole file.
        range: Option<(u64, u64, u64)>,
    },
    /// `Handle::fsync`.
    Fsync {
        /// Which file.
        file: FileId,
    },
    /// `Handle::stat` → `Reply::Stat`.
    Fstat {
        /// Which file.
        file: FileId,
    },
    /// `Handle::fiemap` → `Reply::Fiemap`.
    Fiemap {
        /// Which file.
        file: FileId,
    },
    /// `Handle::chmod`.
    Fchmod {
        /// Which file.
        file: FileId,
        /// Permission bits.
        mode: u32,
    },
    /// `Fs::chmod`.
    Chmod {
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// `Fs::chown`.
    Chown {
        /// Absolute path.
        path: String,
        /// New owner.
        uid: Option<u32>,
        /// New group.
        gid: Option<u32>,
    },
    /// `Fs::unlink`.
    Unlink {
        /// Absolute path.
        path: String,
    },
    /// `Fs::mkdir`.
    Mkdir {
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// `Fs::rmdir`.
    Rmdir {
        /// Absolute path.
        path: String,
    },
    /// `Fs::rename`.
    Rename {
        /// Old path.
        from: String,
        /// New path.
        to: String,
    },
    /// `Fs::readdir` → `Reply::Dir`.
    Readdir {
        /// Absolute path.
        path: String,
    },
    /// `Fs::stat` → `Reply::Stat`.
    Stat {
        /// Absolute path.
        path: String,
    },
    /// `Fs::statfs` → `Reply::StatFs`.
    Statfs,
    /// `Handle::set_lease` → `Reply::Lease`.
    SetLease {
        /// Which file.
        file: FileId,
        /// What lease.
        spec: LeaseSpec,
    },
    /// `Handle::get_lease` → `Reply::LeaseType`.
    GetLease {
        /// Which file.
        file: FileId,
    },
    /// Release one of the client's leases by id.
    ReleaseLease {
        /// Which lease.
        lease: LeaseId,
    },
    /// `Handle::pin_long_term` → `Reply::Pinned`.
    PinLongTerm {
        /// Which file.
        file: FileId,
        /// File offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Drop one of the client's pins.
    Unpin {
        /// Which pin.
        pin: PinId,
    },
    /// Everything `pinfs stat --socket` prints → `Reply::Status`.
    Status,
    /// `Handle::mmap_remote` of `[offset, offset+len)` of `file` into the
    /// client's mapping `map` (the client's number for it, unique on the
    /// connection; the client has reserved it and applies `Place`s for it
    /// from before sending this) with raw `MAP_*` bits (SPEC §5.1:
    /// `MapFlags::from_raw`) → `Reply::Mapped`. The first `Place` for it
    /// arrives before the reply.
    Mmap {
        /// Which file.
        file: FileId,
        /// The client's mapping.
        map: u64,
        /// File offset (page-aligned).
        offset: u64,
        /// Bytes.
        len: u64,
        /// Raw `mmap` flag bits.
        flags: u32,
        /// `PROT_READ` only.
        read_only: bool,
    },
    /// The client tore mapping `map` down: the daemon forgets it.
    Munmap {
        /// The client's mapping.
        map: u64,
    },
    /// A store faulted on page `page` of mapping `map` (`RemoteMapping::
    /// write_fault`); answered once the page's `Place` was acknowledged.
    Fault {
        /// The client's mapping.
        map: u64,
        /// Page of the mapping.
        page: u64,
    },
    /// `persist` of `[offset, offset+len)` of mapping `map`.
    Persist {
        /// The client's mapping.
        map: u64,
        /// Offset into the mapping.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// A long-term pin through mapping `map` → `Reply::Pinned`.
    MapPin {
        /// The client's mapping.
        map: u64,
        /// Offset into the mapping.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Register `[offset, offset+len)` of mapping `map` with the daemon's
    /// soft RDMA device → `Reply::Registered`.
    Register {
        /// The client's mapping.
        map: u64,
        /// Offset into the mapping (page-aligned).
        offset: u64,
        /// Bytes (page-aligned).
        len: u64,
        /// How the device is revoked.
        mode: RevokeMode,
    },
    /// Deregister one of the client's registrations.
    Deregister {
        /// Which.
        reg: u64,
    },
    /// The device writes `data` at `offset` of registration `reg` (a peer's
    /// RDMA write) → `Reply::Dma`.
    DmaWrite {
        /// Which registration.
        reg: u64,
        /// Offset into it.
        offset: u64,
        /// At most [`MAX_IO`] bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The device reads `len` bytes at `offset` of registration `reg` →
    /// `Reply::Dma`.
    DmaRead {
        /// Which registration.
        reg: u64,
        /// Offset into it.
        offset: u64,
        /// At most [`MAX_IO`] bytes.
        len: u64,
    },
}

/// What a successful operation returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done, nothing to return.
    Done,
    /// `Open`: the new file's id, and its lease-engine key (for listings).
    Opened {
        /// The client's name for it.
        file: FileId,
        /// The lease engine's name for the file.
        key: FileKey,
        /// Its inode.
        ino: u64,
    },
    /// `Pread`: the bytes read.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `Pwrite`: bytes written.
    Count(u64),
    /// `Stat`, `Fstat`.
    Stat(Stat),
    /// `Fiemap`.
    Fiemap(Vec<FiemapExtent>),
    /// `Readdir`.
    Dir(Vec<DirEntry>),
    /// `Statfs`.
    StatFs(StatFs),
    /// `SetLease`: the lease's id.
    Lease(LeaseId),
    /// `GetLease`.
    LeaseType(LeaseType),
    /// `PinLongTerm`: the pin and the pool byte ranges it reaches.
    Pinned {
        /// Its id.
        pin: PinId,
        /// `(pool offset, length)` in file order: what a device is given.
        pool_ranges: Vec<(u64, u64)>,
    },
    /// `Status`.
    Status(Box<Status>),
    /// `Mmap`: the daemon's id of the mapping (as pin listings show it).
    Mapped {
        /// `RemoteMapping::id`.
        id: u64,
    },
    /// `Register`: the registration and its device addresses and keys.
    Registered {
        /// Its id.
        reg: u64,
        /// Device addresses and keys.
        keys: MrKeys,
    },
    /// `DmaWrite`, `DmaRead`: how the device access completed, and the
    /// bytes read (empty for a write, or when it did not complete `Ok`).
    Dma {
        /// The completion's status.
        completion: Completion,
        /// Bytes read.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// What the daemon tells a client at connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`crate::PROTOCOL_VERSION`] of the daemon.
    pub version: u32,
    /// The client's number.
    pub client_id: ClientId,
    /// The pool's length in bytes (the descriptor that comes with this
    /// message maps `[0, pool_len)`).
    pub pool_len: u64,
    /// Whether the pool is backed by 2 MiB pages.
    pub huge_pages: bool,
    /// lease-break-time of the file system (zero: never forced).
    pub break_time: Duration,
    /// The truncate policy of the file system.
    pub policy: TruncatePolicy,
}

/// Daemon → client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DaemonMsg {
    /// The answer to `Hello`, carrying the pool's descriptor.
    Welcome(Welcome),
    /// The answer to a `Request`.
    Reply {
        /// The request's id.
        id: u64,
        /// The result, or an errno number.
        result: Result<Reply, i32>,
    },
    /// A lease notification (SPEC §3.3 step 2): the same event an
    /// in-process holder receives.
    Event(BreakEvent),
    /// The daemon is closing this connection, and why.
    Bye {
        /// One line.
        reason: String,
    },
    /// Asks the client's library to acknowledge (`ClientMsg::Ack` with this
    /// token, errno 0) at once, from its reader thread: a liveness check,
    /// and the shape of every daemon request that needs an acknowledgement
    /// (mapping re-placement): a client that does not answer within
    /// lease-break-time is fenced.
    Ping {
        /// Echoed in the acknowledgement.
        token: u64,
    },
    /// Make the client's mapping `map` show `pieces` (at most
    /// `pinfs::map::MAX_PLACE_PIECES`), then acknowledge with
    /// `ClientMsg::Ack { token }` — applied by the client's reader thread
    /// directly, never queued behind a request: the daemon waits for it
    /// under its state lock, up to lease-break-time, and fences a client
    /// that does not acknowledge.
    Place {
        /// The client's mapping.
        map: u64,
        /// What the acknowledgement names.
        token: u64,
        /// Runs of pages and what they show.
        pieces: Vec<RemotePiece>,
    },
}

/// One client as `Status` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Its number.
    pub client_id: ClientId,
    /// Its process (from `SO_PEERCRED`).
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The owner its leases and pins are attributed to.
    pub owner: u64,
    /// Its open files.
    pub handles: Vec<HandleStatus>,
    /// The leases it holds.
    pub leases: Vec<LeaseId>,
    /// The pins it holds.
    pub pins: Vec<PinId>,
    /// Its device registrations.
    pub registrations: Vec<u64>,
    /// Its mappings.
    pub mappings: Vec<u64>,
    /// It was fenced (killed, or its lease removed) and its death is not
    /// yet confirmed.
    pub fenced: bool,
    /// Its connection is gone; what it still holds waits for its death to
    /// be confirmed.
    pub disconnected: bool,
}

/// One open file of a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandleStatus {
    /// The client's name for it.
    pub file: FileId,
    /// The path it was opened by.
    pub path: String,
    /// Its inode.
    pub ino: u64,
}

/// One device registration as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistrationStatus {
    /// Its id.
    pub id: u64,
    /// Who registered.
    pub owner: u64,
    /// The file.
    pub ino: u64,
    /// First file byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// The device's kind.
    pub device: String,
    /// Whether the device's access has been revoked.
    pub revoked: bool,
}

/// Everything `pinfs stat --socket` prints (SPEC §9, per client process).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's process.
    pub daemon_pid: i32,
    /// Connected clients (and gone ones whose death is not yet confirmed).
    pub clients: Vec<ClientStatus>,
    /// Every lease, by id (`/proc/locks` style).
    pub leases: Vec<LeaseInfo>,
    /// Every long-term pin, by id.
    pub pins: Vec<PinInfo>,
    /// Every device registration.
    pub registrations: Vec<RegistrationStatus>,
    /// Busy extents, in blocks.
    pub busy_extents: Vec<Run>,
    /// Space.
    pub statfs: StatFs,
    /// The path each file was last opened by (for listings).
    pub paths: Vec<(FileKey, String)>,
}

impl Status {
    /// The path a file was last opened by, or `ino:N`-style `?` when no
    /// client opened it by a name the daemon knows.
    pub fn path_of(&self, file: FileKey) -> &str {
        self.paths
            .iter()
            .find(|(k, _)| *k == file)
            .map_or("?", |(_, p)| p.as_str())
    }

    /// The pid of the client whose owner is `owner`, if it is listed.
    pub fn pid_of_owner(&self, owner: u64) -> Option<i32> {
        self.clients
            .iter()
            .find(|c| c.owner == owner)
            .map(|c| c.pid)
    }
}

fn check_path(path: &str) -> Result<(), ProtoError> {
    bound("path", path.len(), MAX_PATH)
}

fn bound(what: &'static str, len: usize, max: usize) -> Result<(), ProtoError> {
    if len > max {
        Err(ProtoError::Bound { what, len, max })
    } else {
        Ok(())
    }
}

impl Op {
    /// Checks every bound of the request: I/O of at most [`MAX_IO`] bytes,
    /// paths of at most [`MAX_PATH`] bytes.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Op::Pread { len, .. } => bound(
                "pread length",
                usize::try_from(*len).unwrap_or(usize::MAX),
                MAX_IO,
            ),
            Op::Pwrite { data, .. } => bound("pwrite data", data.len(), MAX_IO),
            Op::Open { path, .. }
            | Op::TruncatePath { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Readdir { path }
            | Op::Stat { path } => check_path(path),
            Op::Rename { from, to } => {
                check_path(from)?;
                check_path(to)
            }
            Op::DmaWrite { data, .. } => bound("dma-write data", data.len(), MAX_IO),
            Op::DmaRead { len, .. } => bound(
                "dma-read length",
                usize::try_from(*len).unwrap_or(usize::MAX),
                MAX_IO,
            ),
            Op::Close { .. }
            | Op::Mmap { .. }
            | Op::Munmap { .. }
            | Op::Fault { .. }
            | Op::Persist { .. }
            | Op::MapPin { .. }
            | Op::Register { .. }
            | Op::Deregister { .. }
            | Op::Truncate { .. }
            | Op::Fallocate { .. }
            | Op::Reflink { .. }
            | Op::Fsync { .. }
            | Op::Fstat { .. }
            | Op::Fiemap { .. }
            | Op::Fchmod { .. }
            | Op::Statfs
            | Op::SetLease { .. }
            | Op::GetLease { .. }
            | Op::ReleaseLease { .. }
            | Op::PinLongTerm { .. }
            | Op::Unpin { .. }
            | Op::Status => Ok(()),
        }
    }

    /// The operation's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Pread { .. } => "pread",
            Op::Pwrite { .. } => "pwrite",
            Op::Truncate { .. } => "truncate",
            Op::TruncatePath { .. } => "truncate_path",
            Op::Fallocate { .. } => "fallocate",
            Op::Reflink { .. } => "reflink",
            Op::Fsync { .. } => "fsync",
            Op::Fstat { .. } => "fstat",
            Op::Fiemap { .. } => "fiemap",
            Op::Fchmod { .. } => "fchmod",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Unlink { .. } => "unlink",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::Readdir { .. } => "readdir",
            Op::Stat { .. } => "stat",
            Op::Statfs => "statfs",
            Op::SetLease { .. } => "set_lease",
            Op::GetLease { .. } => "get_lease",
            Op::ReleaseLease { .. } => "release_lease",
            Op::PinLongTerm { .. } => "pin_long_term",
            Op::Unpin { .. } => "unpin",
            Op::Status => "status",
            Op::Mmap { .. } => "mmap",
            Op::Munmap { .. } => "munmap",
            Op::Fault { .. } => "fault",
            Op::Persist { .. } => "persist",
            Op::MapPin { .. } => "map_pin",
            Op::Register { .. } => "register",
            Op::Deregister { .. } => "deregister",
            Op::DmaWrite { .. } => "dma_write",
            Op::DmaRead { .. } => "dma_read",
        }
    }
}

impl ClientMsg {
    /// Checks every bound of the message ([`Op::validate`]).
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            ClientMsg::Request { op, .. } => op.validate(),
            ClientMsg::Hello { .. } | ClientMsg::Ack { .. } => Ok(()),
        }
    }
}

impl DaemonMsg {
    /// A `Bye` with `reason` cut to [`MAX_REASON`] bytes (at a character
    /// boundary) and to its first line.
    pub fn bye(reason: &str) -> Self {
        let line = reason.lines().next().unwrap_or("");
        let mut end = line.len().min(MAX_REASON);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        DaemonMsg::Bye {
            reason: line[..end].to_owned(),
        }
    }
}
