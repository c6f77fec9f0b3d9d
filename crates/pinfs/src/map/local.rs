//! A mapping's pages in *this* process's address space: the reserved range
//! ([`Region`]), the empty memfd whose mapping raises `SIGBUS`, and the
//! placement of one run of a [`Kind`] with its fallbacks — the pool block,
//! anonymous memory (served or zero-fill), `SIGBUS`, nothing.
//!
//! Two owners share it: a mapping in the file system's own process
//! ([`super::MapInner`] with a local space) and a mapping in a client
//! process ([`super::client::ClientMapping`]), whose placements the daemon
//! sends. Both decide *what* a page shows elsewhere; this decides only *how*
//! it is shown, and reports the pages that could be shown neither as asked
//! nor as `SIGBUS` nor as nothing (they keep showing what they showed: the
//! owner must treat the blocks they reach as still reachable).
//!
//! It also counts progress for the fault answerers: a fault of a page that
//! sees no change since the same thread's last fault of it made no progress
//! ([`LocalPages::refault`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::fault::Uffd;
use super::place::Kind;
use super::region::{Backing, Region, PAGE_BYTES};
use super::{MapFlags, MAX_FAULTS_WITHOUT_PROGRESS};
use crate::{Errno, Error, Result};

/// Most (thread, page) pairs whose faults without progress one mapping
/// tracks; the table is cleared beyond it (counting restarts: a spinning
/// thread is then caught a little later).
const MAX_TRACKED_REFAULTS: usize = 256;

/// Where placed pages come from: the descriptors and the fault service.
pub(crate) struct PlaceCtx<'a> {
    /// The pool's descriptor.
    pub pool: BorrowedFd<'a>,
    /// The fault service's userfaultfd (writable shared mappings only).
    pub uffd: Option<&'a Uffd>,
    /// The pool has transparent 2 MiB pages (`MediaCaps::huge_pages`):
    /// advise pool placements `MADV_HUGEPAGE`.
    pub huge: bool,
}

/// A sealed, empty memfd: mapped shared, every access to it
/// raises a real `SIGBUS` (nothing backs it, and it can never grow).
pub(crate) fn sigbus_memfd() -> Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "pinfs-sigbus",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| Error::media("memfd_create", e.into()))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)
        .map_err(|e| Error::media("seal the SIGBUS memfd", e.into()))?;
    Ok(fd)
}

/// The pages of one mapping in this process (see the module doc).
#[derive(Debug)]
pub(crate) struct LocalPages {
    /// The address range.
    pub region: Region,
    /// The empty memfd placed where accesses raise `SIGBUS`.
    pub sigbus: Arc<OwnedFd>,
    /// Counts every change of what a page shows (a placement, a served
    /// copy).
    progress: AtomicU64,
    /// Faults without progress, per (thread, page): (progress seen, count).
    refaults: Mutex<HashMap<(u32, u64), (u64, u32)>>,
}

impl LocalPages {
    pub(crate) fn new(region: Region, sigbus: Arc<OwnedFd>) -> Self {
        LocalPages {
            region,
            sigbus,
            progress: AtomicU64::new(0),
            refaults: Mutex::new(HashMap::new()),
        }
    }

    /// Show `kind` at pages `start..start+pages` (a run). A placement that
    /// fails falls back to `SIGBUS`, and then to nothing. Returns what the
    /// pages show now, or `None` when even nothing could not be placed:
    /// they keep showing what they showed (the caller records the blocks
    /// they may reach). `map` names the mapping in logs.
    pub(crate) fn place(
        &self,
        map: u64,
        start: u64,
        pages: u64,
        kind: Kind,
        flags: MapFlags,
        ctx: &PlaceCtx<'_>,
    ) -> Option<Kind> {
        let (offset, len) = (start * PAGE_BYTES, pages * PAGE_BYTES);
        let writable = !flags.read_only;
        let r = match kind {
            Kind::Pool { block } => self.region.place(
                offset,
                len,
                Backing::Pool {
                    fd: ctx.pool,
                    offset: block * PAGE_BYTES,
                    shared: flags.shared,
                    huge: ctx.huge,
                },
                writable,
            ),
            Kind::Served { .. } => match ctx.uffd {
                Some(uffd) => self
                    .region
                    .place(offset, len, Backing::Anon, true)
                    .and_then(|()| self.region.register(uffd, offset, len)),
                None => Err(Errno::EOPNOTSUPP.into()),
            },
            Kind::Zero => self.region.place(offset, len, Backing::Anon, writable),
            Kind::Sigbus => self.sigbus_place(offset, len),
            Kind::Nothing => self.region.place(offset, len, Backing::Nothing, false),
        };
        match r {
            Ok(()) => {
                self.changed();
                Some(kind)
            }
            Err(e) => {
                tracing::error!(target: "pinfs::map", map, start, pages, ?kind, error = %e, "placing pages failed; they raise SIGBUS instead");
                let fallback = self
                    .sigbus_place(offset, len)
                    .map(|()| Kind::Sigbus)
                    .or_else(|_| {
                        self.region
                            .place(offset, len, Backing::Nothing, false)
                            .map(|()| Kind::Nothing)
                    });
                match fallback {
                    Ok(k) => {
                        self.changed();
                        Some(k)
                    }
                    Err(e) => {
                        tracing::error!(target: "pinfs::map", map, start, pages, error = %e, "cannot even make pages inaccessible: mapping broken, the blocks they reach stay reachable");
                        None
                    }
                }
            }
        }
    }

    /// Place the `SIGBUS` mapping over `len` bytes at `offset`.
    pub(crate) fn sigbus_place(&self, offset: u64, len: u64) -> Result<()> {
        self.region.place(
            offset,
            len,
            Backing::Sigbus {
                fd: self.sigbus.as_fd(),
            },
            true,
        )
    }

    /// Count a fault of `page` by thread `ptid`: whether that thread has
    /// now faulted on the page more than [`MAX_FAULTS_WITHOUT_PROGRESS`]
    /// times with nothing in the mapping changing in between — a fault that
    /// can never be served, whose thread must get `SIGBUS` rather than spin.
    pub(crate) fn refault(&self, ptid: u32, page: u64) -> bool {
        let now = self.progress.load(Ordering::Acquire);
        let mut r = self.refaults.lock();
        if r.len() >= MAX_TRACKED_REFAULTS && !r.contains_key(&(ptid, page)) {
            r.clear();
        }
        let e = r.entry((ptid, page)).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > MAX_FAULTS_WITHOUT_PROGRESS {
            r.remove(&(ptid, page));
            return true;
        }
        false
    }

    /// A page changed (placed, or filled by a served copy): progress (see
    /// [`LocalPages::refault`]).
    pub(crate) fn changed(&self) {
        self.progress.fetch_add(1, Ordering::AcqRel);
    }
}
