//! Mappings of the daemon's files in this process (SPEC §8), zero-copy:
//! [`RemoteFile::mmap`] reserves a [`ClientMapping`] (the core library's
//! client half), registers it under its number on the connection — so that
//! the daemon's `Place` frames for it, which start arriving before the
//! `Mmap` reply, are applied — and asks the daemon to map. From then on the
//! connection's reader thread applies every `Place` for it and acknowledges
//! (directly, never behind a request: the daemon waits for that under its
//! state lock, and fences this process after lease-break-time). Holes are
//! served by this process's own fault service; a store into one becomes a
//! `Fault` request, answered after the page's re-placement was applied.
//!
//! Dropping a [`ClientMap`] tears the mapping down first, then tells the
//! daemon (`Munmap`) and waits for its answer: the daemon only then
//! forgets it. If the connection goes,
//! every mapping is made `SIGBUS` (the daemon will not re-place it any
//! more); the daemon keeps what they reached busy until this process dies.
//!
//! Registrations ([`ClientMap::register`]) are with the daemon's soft RDMA
//! device: a [`RemoteRegistration`] drives it with `dma-write`/`dma-read`
//! requests carrying the data, as a peer's RDMA traffic would.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use pinfs::dma::{Completion, MrKeys, RevokeMode};
use pinfs::map::client::{ClientMapping, FaultForwarder};
use pinfs::map::{MapFlags, RemoteKind, RemotePiece, MAX_PLACE_PIECES};
use pinfs::{Errno, Result};
use pinfs_proto::{ClientMsg, Op, Reply, MAX_IO};

use crate::{Client, Conn, RemoteFile, RemotePin};

/// Page size of mappings.
const PAGE: u64 = 4096;

/// A client's write fault, as a `Fault` request on its connection.
struct ConnForwarder {
    conn: Weak<Conn>,
}

impl FaultForwarder for ConnForwarder {
    fn write_fault(&self, map: u64, page: u64) -> Result<()> {
        let conn = self.conn.upgrade().ok_or(Errno::ENOTCONN)?;
        match conn.call(Op::Fault { map, page })? {
            Reply::Done => Ok(()),
            _ => Err(Errno::EPROTO.into()),
        }
    }
}

impl Conn {
    /// The pool's descriptor, shared by this connection's mappings (one
    /// duplicate, made on first use).
    fn map_pool(&self) -> Result<Arc<OwnedFd>> {
        let mut pool = self.map_pool.lock();
        if let Some(p) = &*pool {
            return Ok(p.clone());
        }
        let fd = self.pool_fd.try_clone().map_err(|e| crate::io_error(&e))?;
        let fd = Arc::new(fd);
        *pool = Some(fd.clone());
        Ok(fd)
    }

    /// A `Place` frame (the reader thread): apply it to the mapping it
    /// names and acknowledge. A mapping this process no longer has (torn
    /// down) shows nothing: acknowledged as done. `Err`: the frame breaks
    /// the protocol (the connection ends).
    pub(crate) fn place(
        &self,
        map: u64,
        token: u64,
        pieces: &[RemotePiece],
    ) -> std::result::Result<(), String> {
        if pieces.len() > MAX_PLACE_PIECES {
            return Err(format!(
                "a placement of {} pieces (most {MAX_PLACE_PIECES})",
                pieces.len()
            ));
        }
        let mapping = self
            .maps
            .lock()
            .get(&map)
            .and_then(Weak::upgrade)
            .or_else(|| self.zombies.lock().get(&map).cloned());
        let errno = match mapping {
            Some(m) => match m.apply(pieces) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(target: "pinfs::client", map, error = %e, "cannot apply a placement");
                    e.errno().0
                }
            },
            None => 0,
        };
        self.send(&ClientMsg::Ack { token, errno })
            .map_err(|e| format!("cannot acknowledge a placement: {e}"))
    }

    /// The connection is gone (the reader thread): nobody will re-place
    /// this process's mappings any more, so every page raises `SIGBUS`.
    pub(crate) fn orphan_mappings(&self) {
        let maps: Vec<Arc<ClientMapping>> = self
            .maps
            .lock()
            .drain()
            .filter_map(|(_, m)| m.upgrade())
            .collect();
        for m in maps {
            let pages = m.len().div_ceil(PAGE);
            if let Err(e) = m.apply(&[RemotePiece {
                page: 0,
                pages,
                kind: RemoteKind::Sigbus,
            }]) {
                tracing::error!(target: "pinfs::client", map = m.id(), error = %e, "cannot make an orphaned mapping SIGBUS");
            }
        }
    }
}

impl RemoteFile {
    /// Maps `[offset, offset + len)` of the file into this process
    /// (`offset` page-aligned) with raw `mmap` flag bits, validated as SPEC
    /// §5.1 says (`MAP_SHARED_VALIDATE` with an unknown bit: `EOPNOTSUPP`;
    /// `MAP_DIRECT` on a file this client's user does not own: `EACCES`).
    /// Readable and writable. Dropping the [`ClientMap`] unmaps.
    pub fn mmap(&self, offset: u64, len: u64, raw_flags: u32) -> Result<ClientMap> {
        self.mmap_with(offset, len, raw_flags, false)
    }

    /// The same, read-only (`PROT_READ`).
    pub fn mmap_read_only(&self, offset: u64, len: u64, raw_flags: u32) -> Result<ClientMap> {
        self.mmap_with(offset, len, raw_flags, true)
    }

    fn mmap_with(
        &self,
        offset: u64,
        len: u64,
        raw_flags: u32,
        read_only: bool,
    ) -> Result<ClientMap> {
        let flags = MapFlags::from_raw(raw_flags)?;
        let flags = if read_only { flags.read_only() } else { flags };
        let conn = &self.client.inner.conn;
        let forwarder = Arc::new(ConnForwarder {
            conn: Arc::downgrade(conn),
        });
        let mapping = Arc::new(ClientMapping::reserve(
            len,
            offset,
            flags,
            conn.map_pool()?,
            forwarder,
        )?);
        mapping.set_huge_pages(conn.welcome.huge_pages);
        let map = mapping.id();
        // Before the request: its placements come before its reply.
        conn.maps.lock().insert(map, Arc::downgrade(&mapping));
        let reply = self.client.call(Op::Mmap {
            file: self.id,
            map,
            offset,
            len,
            flags: raw_flags,
            read_only,
        });
        match reply {
            Ok(Reply::Mapped { id }) => Ok(ClientMap {
                client: self.client.clone(),
                mapping,
                daemon_id: id,
                unmapped: false,
            }),
            other => {
                conn.maps.lock().remove(&map);
                // Torn down when dropped; the daemon did not map it (or,
                // for a reply that makes no sense, is told to forget it).
                if other.is_ok() {
                    self.client.call_discard(Op::Munmap { map });
                }
                match other {
                    Err(e) => Err(e),
                    Ok(_) => Err(Errno::EPROTO.into()),
                }
            }
        }
    }
}

/// A mapping of a daemon's file in this process. Dropping it unmaps it.
///
/// The memory is reached through [`ClientMap::as_ptr`] with raw, volatile
/// loads and stores — the pool itself, zero-copy; it changes under the
/// caller whenever the file's layout changes — or through
/// [`ClientMap::read`]/[`ClientMap::write`], which report a page that would
/// raise `SIGBUS` as `EFAULT`.
pub struct ClientMap {
    client: Client,
    mapping: Arc<ClientMapping>,
    daemon_id: u64,
    /// `unmap` did what dropping does.
    unmapped: bool,
}

impl std::fmt::Debug for ClientMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMap")
            .field("mapping", &self.mapping)
            .field("daemon_id", &self.daemon_id)
            .finish()
    }
}

impl ClientMap {
    /// First byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

    /// Length in bytes, as asked for.
    pub fn len(&self) -> u64 {
        self.mapping.len()
    }

    /// Never true: mappings are at least one byte long.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// The effective flags.
    pub fn flags(&self) -> MapFlags {
        self.mapping.flags()
    }

    /// The daemon's id of the mapping (as pin listings show it:
    /// `PinVia::DirectMapping(id)`).
    pub fn daemon_id(&self) -> u64 {
        self.daemon_id
    }

    /// What page `page` shows now.
    pub fn kind_at(&self, page: u64) -> Option<RemoteKind> {
        self.mapping.kind_at(page)
    }

    /// Copies `buf.len()` bytes at `offset` (into the mapping) out, as
    /// loads would; `EFAULT` where a load would raise `SIGBUS`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.mapping.read(offset, buf)
    }

    /// Stores `data` at `offset` (into the mapping), as stores would;
    /// `EFAULT` where a store would raise `SIGBUS`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.mapping.write(offset, data)
    }

    /// Makes the stores to `[offset, offset + len)` durable (SPEC §5.3).
    pub fn persist(&self, offset: u64, len: u64) -> Result<()> {
        self.client.done(Op::Persist {
            map: self.mapping.id(),
            offset,
            len,
        })
    }

    /// A long-term pin of `[offset, offset + len)` through the mapping
    /// (SPEC §4.2: `MAP_DIRECT`, or an unbreakable layout lease; `EPERM`
    /// otherwise). Dropping it unpins.
    pub fn pin_long_term(&self, offset: u64, len: u64) -> Result<RemotePin> {
        match self.client.call(Op::MapPin {
            map: self.mapping.id(),
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

    /// Registers `[offset, offset + len)` of the mapping (page-aligned)
    /// with the daemon's soft RDMA device, revoked in `mode` (SPEC §6.1).
    /// Dropping the registration deregisters.
    pub fn register(&self, offset: u64, len: u64, mode: RevokeMode) -> Result<RemoteRegistration> {
        match self.client.call(Op::Register {
            map: self.mapping.id(),
            offset,
            len,
            mode,
        })? {
            Reply::Registered { reg, keys } => Ok(RemoteRegistration {
                client: self.client.clone(),
                reg,
                keys,
                deregistered: false,
            }),
            _ => Err(Errno::EPROTO.into()),
        }
    }

    /// Unmaps now: tears the mapping down, then tells the daemon and
    /// reports its answer (dropping does the same, logging an error). A
    /// failed tear-down keeps the mapping known (a zombie, see
    /// [`ClientMap::drop`]'s notes) and the daemon is not told.
    pub fn unmap(mut self) -> Result<()> {
        let map = self.mapping.id();
        // Torn down first, forgotten after: a `Place` arriving meanwhile
        // still finds the mapping and is applied (or fails), never acked
        // as done for a mapping whose pages still show the old blocks.
        if let Err(e) = self.mapping.tear_down() {
            self.unmapped = true;
            self.keep_as_zombie();
            return Err(e);
        }
        self.unmapped = true;
        self.client.inner.conn.maps.lock().remove(&map);
        self.client.done(Op::Munmap { map })
    }

    /// A mapping that could not be torn down: its pages may still reach
    /// pool blocks, so it stays known for the connection's life and every
    /// `Place` for it is acknowledged `EIO` — the daemon keeps it broken
    /// and its blocks busy until this process dies.
    fn keep_as_zombie(&self) {
        let map = self.mapping.id();
        let conn = &self.client.inner.conn;
        if conn.zombies.lock().len() < crate::MAX_ZOMBIE_MAPPINGS {
            conn.zombies.lock().insert(map, Arc::clone(&self.mapping));
        } else {
            tracing::error!(target: "pinfs::client", map, "too many mappings that could not be torn down: this one is leaked, placements for it are acknowledged as done");
        }
    }
}

impl Drop for ClientMap {
    fn drop(&mut self) {
        if self.unmapped {
            return;
        }
        let map = self.mapping.id();
        match self.mapping.tear_down() {
            // Waited for, as `munmap(2)` is: once it returns the daemon
            // sends this mapping nothing more, so a process that exits
            // right after cannot leave a placement unacknowledged (which
            // would get it fenced).
            Ok(()) => {
                self.client.inner.conn.maps.lock().remove(&map);
                if let Err(e) = self.client.done(Op::Munmap { map }) {
                    tracing::debug!(target: "pinfs::client", map, error = %e, "munmap not acknowledged by the daemon");
                }
            }
            // Its pages may still reach pool blocks: the daemon must keep
            // them busy, so it is not told (it holds them until this
            // process dies).
            Err(e) => {
                tracing::error!(target: "pinfs::client", map, error = %e, "a mapping could not be torn down; the daemon keeps its blocks");
                self.keep_as_zombie();
            }
        }
    }
}

/// A registration with the daemon's soft RDMA device. Dropping it
/// deregisters.
pub struct RemoteRegistration {
    client: Client,
    reg: u64,
    keys: MrKeys,
    deregistered: bool,
}

impl std::fmt::Debug for RemoteRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRegistration")
            .field("reg", &self.reg)
            .field("keys", &self.keys)
            .finish()
    }
}

impl RemoteRegistration {
    /// Its id (as `Status` lists it).
    pub fn id(&self) -> u64 {
        self.reg
    }

    /// Device addresses and keys.
    pub fn keys(&self) -> MrKeys {
        self.keys
    }

    /// The device writes `data` at `offset` of the registration (a peer's
    /// RDMA write): its completion. More than `MAX_IO` bytes go as several
    /// requests of at most `MAX_IO`, in order; the first completion that is
    /// not `Ok` is returned (what came before it was written).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<Completion> {
        let mut at = 0usize;
        loop {
            let chunk = &data[at..data.len().min(at + MAX_IO)];
            let off = offset.checked_add(at as u64).ok_or(Errno::EINVAL)?;
            let completion = match self.client.call(Op::DmaWrite {
                reg: self.reg,
                offset: off,
                data: chunk.to_vec(),
            })? {
                Reply::Dma { completion, .. } => completion,
                _ => return Err(Errno::EPROTO.into()),
            };
            at += chunk.len();
            if completion != Completion::Ok || at >= data.len() {
                return Ok(completion);
            }
        }
    }

    /// The device reads `buf.len()` bytes at `offset`: its completion;
    /// `buf` holds them when it is `Ok`. More than `MAX_IO` bytes go as
    /// several requests, as for [`RemoteRegistration::write`].
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<Completion> {
        let mut at = 0usize;
        loop {
            let end = buf.len().min(at + MAX_IO);
            let off = offset.checked_add(at as u64).ok_or(Errno::EINVAL)?;
            let completion = match self.client.call(Op::DmaRead {
                reg: self.reg,
                offset: off,
                len: (end - at) as u64,
            })? {
                Reply::Dma { completion, data } => {
                    if completion == Completion::Ok {
                        if data.len() != end - at {
                            return Err(Errno::EPROTO.into());
                        }
                        buf[at..end].copy_from_slice(&data);
                    }
                    completion
                }
                _ => return Err(Errno::EPROTO.into()),
            };
            at = end;
            if completion != Completion::Ok || at >= buf.len() {
                return Ok(completion);
            }
        }
    }

    /// Deregisters now and reports the daemon's answer.
    pub fn deregister(mut self) -> Result<()> {
        self.deregistered = true;
        self.client.done(Op::Deregister { reg: self.reg })
    }
}

impl Drop for RemoteRegistration {
    fn drop(&mut self) {
        if !self.deregistered {
            self.client.call_discard(Op::Deregister { reg: self.reg });
        }
    }
}
