//! What an `io` actor talks to: the in-process file system (`--pool`, or the
//! volatile pool) or a daemon (`--socket`), behind one shape so that every
//! command reads the same either way and prints the same output.
//!
//! [`Conn`] is an actor's connection — its identity and its event queue —
//! and [`File`] one of its open files. Both are enums with delegating
//! methods rather than traits: there are exactly two sides, every command
//! needs the same handful of calls, and an enum keeps the in-process side
//! exactly what it was (the calls are the library's own). [`HeldMap`],
//! [`HeldPin`] and [`RegHandle`] are an actor's mapping, pins and device
//! registrations, either side. What only one side offers (`mstat`'s view of
//! a mapping, the `uring` device, in-process devices) asks for it with
//! [`HeldMap::local`] or `Shared::fs`, and through a
//! daemon fails with `EOPNOTSUPP` (`mstat: Operation not supported`).

use std::sync::Arc;
use std::time::Duration;

use pinfs::fs::{Cred, DirEntry, FallocMode, FiemapExtent, Fs, Handle, OpenFlags, Stat, StatFs};
use pinfs::lease::{BreakEvent, EventQueue, FileKey, LeaseRequest, LeaseType, OwnerId};
use pinfs::map::MapFlags;
use pinfs::{Errno, Result};
use pinfs_client::{Client, ClientMap, LeaseSpec, RemoteFile, RemotePin, RemoteRegistration};

use crate::error::CmdError;

/// An actor's connection to the file system.
#[derive(Debug)]
pub enum Conn {
    /// The in-process file system: the actor is an identity ([`Cred`] with a
    /// unique owner) and a lease-event queue of the run's engine.
    Local {
        /// The mounted file system (shared by every actor of the run).
        fs: Arc<Fs>,
        /// The actor's identity.
        cred: Cred,
        /// Its lease-break notifications.
        events: EventQueue,
    },
    /// A connection to a daemon (`--socket`): one per actor, so each actor
    /// is its own client (its own owner of leases and pins) as a separate
    /// process would be; its notifications are the client's event queue.
    Remote(Client),
}

impl Conn {
    /// Open `path` (created with `mode` under `flags.create`).
    pub fn open(&self, path: &str, flags: OpenFlags, mode: u32) -> Result<File> {
        match self {
            Conn::Local { fs, cred, .. } => fs.open(*cred, path, flags, mode).map(File::Local),
            Conn::Remote(c) => c.open(path, flags, mode).map(File::Remote),
        }
    }

    /// `truncate(2)` by path.
    pub fn truncate_path(&self, path: &str, size: u64) -> Result<()> {
        match self {
            Conn::Local { fs, cred, .. } => fs.truncate_path(*cred, path, size),
            Conn::Remote(c) => c.truncate_path(path, size),
        }
    }

    /// Remove a name.
    pub fn unlink(&self, path: &str) -> Result<()> {
        match self {
            Conn::Local { fs, cred, .. } => fs.unlink(*cred, path),
            Conn::Remote(c) => c.unlink(path),
        }
    }

    /// Make a directory.
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        match self {
            Conn::Local { fs, cred, .. } => fs.mkdir(*cred, path, mode),
            Conn::Remote(c) => c.mkdir(path, mode),
        }
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, path: &str) -> Result<()> {
        match self {
            Conn::Local { fs, cred, .. } => fs.rmdir(*cred, path),
            Conn::Remote(c) => c.rmdir(path),
        }
    }

    /// Rename.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        match self {
            Conn::Local { fs, cred, .. } => fs.rename(*cred, from, to),
            Conn::Remote(c) => c.rename(from, to),
        }
    }

    /// A directory's entries.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self {
            Conn::Local { fs, cred, .. } => fs.readdir(*cred, path),
            Conn::Remote(c) => c.readdir(path),
        }
    }

    /// Space and inode counts.
    pub fn statfs(&self) -> Result<StatFs> {
        match self {
            Conn::Local { fs, .. } => Ok(fs.statfs()),
            Conn::Remote(c) => c.statfs(),
        }
    }

    /// The next lease-break notification addressed to this actor, waiting
    /// up to `timeout`; `None` when none came.
    pub fn recv_event(&self, timeout: Duration) -> Result<Option<BreakEvent>, CmdError> {
        match self {
            Conn::Local { events, .. } => events
                .recv_timeout(timeout)
                .map_err(|e| CmdError::Errno(e.errno())),
            Conn::Remote(c) => Ok(c.events().recv_timeout(timeout)?),
        }
    }
}

/// An open file of an actor (drop closes it).
#[derive(Debug)]
pub enum File {
    /// A handle of the in-process file system.
    Local(Handle),
    /// A file opened through the daemon.
    Remote(RemoteFile),
}

impl File {
    /// The file as the lease engine names it (for the path listings).
    pub fn lease_file(&self) -> FileKey {
        match self {
            File::Local(h) => h.lease_file(),
            File::Remote(f) => f.lease_file(),
        }
    }

    /// Read at `offset`; the count read (short at end of file).
    pub fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self {
            File::Local(h) => h.pread(offset, buf),
            File::Remote(f) => f.pread(offset, buf),
        }
    }

    /// Write at `offset`; the count written.
    pub fn pwrite(&self, offset: u64, data: &[u8]) -> Result<usize> {
        match self {
            File::Local(h) => h.pwrite(offset, data),
            File::Remote(f) => f.pwrite(offset, data),
        }
    }

    /// `ftruncate(2)`.
    pub fn truncate(&self, size: u64) -> Result<()> {
        match self {
            File::Local(h) => h.truncate(size),
            File::Remote(f) => f.truncate(size),
        }
    }

    /// The fallocate family.
    pub fn fallocate(&self, mode: FallocMode, offset: u64, len: u64) -> Result<()> {
        match self {
            File::Local(h) => h.fallocate(mode, offset, len),
            File::Remote(f) => f.fallocate(mode, offset, len),
        }
    }

    /// Clone `src` (or a range of it: source offset, destination offset,
    /// length) into this file. Both files are of the same connection.
    pub fn reflink(&self, src: &File, range: Option<(u64, u64, u64)>) -> Result<()> {
        match (self, src) {
            (File::Local(h), File::Local(s)) => h.reflink(s, range),
            (File::Remote(f), File::Remote(s)) => f.reflink(s, range),
            // Never made by one actor: its files all come from one side.
            _ => Err(Errno(libc::EXDEV).into()),
        }
    }

    /// Make the file durable.
    pub fn fsync(&self) -> Result<()> {
        match self {
            File::Local(h) => h.fsync(),
            File::Remote(f) => f.fsync(),
        }
    }

    /// Size, blocks, extents.
    pub fn stat(&self) -> Result<Stat> {
        match self {
            File::Local(h) => h.stat(),
            File::Remote(f) => f.stat(),
        }
    }

    /// The extent map.
    pub fn fiemap(&self) -> Result<Vec<FiemapExtent>> {
        match self {
            File::Local(h) => h.fiemap(),
            File::Remote(f) => f.fiemap(),
        }
    }

    /// Set (or release) a lease through this file for `owner` (the actor).
    pub fn set_lease(&self, owner: OwnerId, req: LeaseRequest) -> Result<()> {
        match self {
            File::Local(h) => h
                .fs()
                .leases()
                .set_lease(h.lease_file(), h.lease_handle(), owner, req)
                .map(|_| ())
                .map_err(Into::into),
            File::Remote(f) => f
                .set_lease(LeaseSpec {
                    ty: req.ty,
                    layout: req.layout,
                    unbreakable: req.unbreakable,
                    range: req.range,
                    nonblocking: false,
                })
                .map(|_| ()),
        }
    }

    /// The handle's open lease (the target type while a break is pending).
    pub fn get_lease(&self) -> Result<LeaseType> {
        match self {
            File::Local(h) => Ok(h.fs().leases().get_lease(h.lease_file(), h.lease_handle())),
            File::Remote(f) => f.get_lease(),
        }
    }
}

/// A long-term pin an actor holds (dropping it unpins).
#[derive(Debug)]
pub enum HeldPin {
    /// Taken in process.
    Local(pinfs::fs::Pin),
    /// Taken through the daemon.
    Remote(RemotePin),
}

impl HeldPin {
    /// Its id (what `pin` prints and `unpin` takes).
    pub fn id(&self) -> u64 {
        match self {
            HeldPin::Local(p) => p.id().0,
            HeldPin::Remote(p) => p.id().0,
        }
    }
}

impl Conn {
    /// The daemon's client, for the listings it answers (`leases`, `pins`).
    pub fn client(&self) -> Option<&Client> {
        match self {
            Conn::Local { .. } => None,
            Conn::Remote(c) => Some(c),
        }
    }
}

impl File {
    /// A long-term pin of a range of the file under the actor's
    /// unbreakable layout lease (SPEC §4.2). In process, `revoke` is what
    /// the `revoke` policy calls; through the daemon the daemon revokes.
    pub fn pin_long_term(
        &self,
        offset: u64,
        len: u64,
        revoke: Option<pinfs::pin::RevokeFn>,
    ) -> Result<HeldPin> {
        match self {
            File::Local(h) => h.pin_long_term(offset, len, revoke).map(HeldPin::Local),
            File::Remote(f) => f.pin_long_term(offset, len).map(HeldPin::Remote),
        }
    }
}

/// An actor's current mapping (dropping it unmaps).
#[derive(Debug)]
pub enum HeldMap {
    /// In process.
    Local(pinfs::map::Mapping),
    /// In this process, of a daemon's file (the client maps the pool's
    /// blocks itself; the daemon re-places them at layout changes).
    Remote(ClientMap),
}

impl HeldMap {
    /// Load `buf.len()` bytes at `offset` of the mapping (`EFAULT` where a
    /// real load would raise `SIGBUS`).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            HeldMap::Local(m) => m.read(offset, buf),
            HeldMap::Remote(m) => m.read(offset, buf),
        }
    }

    /// Store `data` at `offset` of the mapping (`EFAULT` as for `read`).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            HeldMap::Local(m) => m.write(offset, data),
            HeldMap::Remote(m) => m.write(offset, data),
        }
    }

    /// Make a range of the mapping durable (SPEC §5.3).
    pub fn persist(&self, offset: u64, len: u64) -> Result<()> {
        match self {
            HeldMap::Local(m) => m.persist(offset, len),
            HeldMap::Remote(m) => m.persist(offset, len),
        }
    }

    /// A long-term pin of a range of the mapping (SPEC §4.2).
    pub fn pin_long_term(
        &self,
        offset: u64,
        len: u64,
        revoke: Option<pinfs::pin::RevokeFn>,
    ) -> Result<HeldPin> {
        match self {
            HeldMap::Local(m) => m.pin_long_term(offset, len, revoke).map(HeldPin::Local),
            HeldMap::Remote(m) => m.pin_long_term(offset, len).map(HeldPin::Remote),
        }
    }

    /// The in-process mapping, or `EOPNOTSUPP` (`mstat`, which reads what
    /// only the in-process mapping knows).
    pub fn local(&self) -> Result<&pinfs::map::Mapping, CmdError> {
        match self {
            HeldMap::Local(m) => Ok(m),
            HeldMap::Remote(_) => Err(CmdError::Errno(Errno::EOPNOTSUPP)),
        }
    }
}

/// A device registration of the run.
#[derive(Debug)]
pub enum RegHandle {
    /// With one of the run's devices, in process.
    Local(pinfs::fs::Registration),
    /// With the daemon's soft RDMA device.
    Remote(RemoteRegistration),
}

impl RegHandle {
    /// The device writes `data` at `offset` of the registration.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<pinfs::dma::Completion> {
        match self {
            RegHandle::Local(r) => r.write(offset, data),
            RegHandle::Remote(r) => r.write(offset, data),
        }
    }

    /// The device reads `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<pinfs::dma::Completion> {
        match self {
            RegHandle::Local(r) => r.read(offset, buf),
            RegHandle::Remote(r) => r.read(offset, buf),
        }
    }

    /// Deregister and report how it went.
    pub fn deregister(self) -> Result<()> {
        match self {
            RegHandle::Local(r) => r.deregister(),
            RegHandle::Remote(r) => r.deregister(),
        }
    }
}

impl File {
    /// Map `[offset, offset + len)` of the file: in process with `flags`,
    /// through the daemon with the same flags as raw `mmap` bits `raw`
    /// (validated there as SPEC §5.1 says); read-only per `flags`.
    pub fn mmap(&self, offset: u64, len: u64, flags: MapFlags, raw: u32) -> Result<HeldMap> {
        match self {
            File::Local(h) => h.mmap(offset, len, flags).map(HeldMap::Local),
            File::Remote(f) if flags.read_only => {
                f.mmap_read_only(offset, len, raw).map(HeldMap::Remote)
            }
            File::Remote(f) => f.mmap(offset, len, raw).map(HeldMap::Remote),
        }
    }
}
