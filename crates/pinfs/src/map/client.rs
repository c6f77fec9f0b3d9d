//! Mappings in a client process (SPEC §8): the client's half of a
//! [`super::RemoteMapping`].
//!
//! A [`ClientMapping`] reserves an address range (2 MiB-phase-aligned like
//! every pinfs mapping, everything inaccessible) and shows, page by page,
//! what the file system sends ([`ClientMapping::apply`], called by the
//! client library's service thread for every `place` of the daemon, then
//! acknowledged): pool pages mapped from the pool's descriptor (zero-copy:
//! loads and stores go to the media), served pages, `SIGBUS` pages, nothing.
//! The placing itself is the local mapping's code (`local.rs`).
//!
//! Served pages (holes, unwritten and shared blocks of a shared writable
//! mapping) are anonymous memory registered with the *client's own*
//! userfaultfd. One fault service per client process, shared by its
//! mappings (`fault.rs`'s `FaultService`, the one the file system uses for
//! its own mappings): a read fault is answered here — zeros, or a
//! write-protected copy of the pool block read through the pool's
//! descriptor — without asking anyone; a write fault goes, on a worker of
//! its mapping (one mapping's fault never waits on another's), to the
//! [`FaultForwarder`], which asks the daemon to allocate, convert or unshare
//! and returns after the page's re-placement arrived and was applied; then
//! the thread is woken. An error makes the page `SIGBUS` (or, if even that
//! cannot be placed, sends `SIGBUS` to the thread), as for local mappings.
//!
//! Applying never needs the daemon: it changes only this process's page
//! tables (under the mapping's own lock), so the daemon, which waits for
//! the acknowledgement under its state lock, can always get it.
//!
//! `read`/`write` copy through the mapping like [`super::Mapping`]'s, with
//! the mapping's lock as the short-term pin: no re-placement can be
//! applied — so acknowledged, so no block freed — while a run is copied.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use super::fault::{sigbus_thread, Fault, FaultHandler, FaultKey, FaultService, OnLost, Uffd};
use super::local::{sigbus_memfd, LocalPages, PlaceCtx};
use super::place::{Kind, Runs};
use super::region::{Region, HUGE_BYTES, PAGE_BYTES};
use super::remote::RemotePiece;
use super::{walk_pages, MapFlags, Step};
use crate::{Errno, Error, Result};

/// How a client's write fault reaches the file system: the client library
/// turns it into a request to the daemon ([`super::RemoteMapping::write_fault`]
/// there). It returns once the daemon answered — after the page's
/// re-placement arrived and was applied — or with the error that makes the
/// store raise `SIGBUS`. Called on a fault worker, never on the thread that
/// applies placements.
pub trait FaultForwarder: Send + Sync {
    /// A store faulted on page `page` of the client mapping `map`
    /// ([`ClientMapping::id`]).
    fn write_fault(&self, map: u64, page: u64) -> Result<()>;
}

/// The process's client mappings, by address, for the fault service.
#[derive(Default)]
struct Registry {
    maps: Mutex<BTreeMap<usize, Weak<Inner>>>,
    /// The fault service failed: served pages raise `SIGBUS`.
    lost: AtomicBool,
}

impl Registry {
    fn find(&self, addr: usize) -> Option<Arc<Inner>> {
        let maps = self.maps.lock();
        let (_, m) = maps.range(..=addr).next_back()?;
        let m = m.upgrade()?;
        (addr < m.local.region.base() + m.local.region.len() as usize).then_some(m)
    }
}

/// The process's fault service for client mappings, started by the first
/// served mapping and kept for the life of the process.
struct Service {
    registry: Arc<Registry>,
    uffd: Arc<Uffd>,
    _service: FaultService,
}

static SERVICE: OnceLock<Mutex<Option<Arc<Service>>>> = OnceLock::new();
static SIGBUS_FD: OnceLock<Arc<OwnedFd>> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The process's fault service, started on first use.
fn service() -> Result<Arc<Service>> {
    let mut slot = SERVICE.get_or_init(|| Mutex::new(None)).lock();
    if let Some(s) = &*slot {
        if s.registry.lost.load(Ordering::Acquire) {
            return Err(Error::media(
                "the client's fault service failed",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        return Ok(s.clone());
    }
    let registry = Arc::new(Registry::default());
    let reg = registry.clone();
    let handle: FaultHandler = Arc::new(move |uffd, fault| serve(&reg, uffd, fault));
    let reg = registry.clone();
    let key: FaultKey = Arc::new(move |addr| Some(reg.find(page_of(addr))?.id));
    let reg = Arc::downgrade(&registry);
    let on_lost: OnLost = Arc::new(move |uffd| {
        if let Some(reg) = reg.upgrade() {
            lost(&reg, uffd);
        }
    });
    let started = FaultService::start(handle, key, on_lost)?;
    let s = Arc::new(Service {
        registry,
        uffd: started.uffd().clone(),
        _service: started,
    });
    *slot = Some(s.clone());
    Ok(s)
}

/// The process's empty `SIGBUS` memfd.
fn sigbus_fd() -> Result<Arc<OwnedFd>> {
    if let Some(fd) = SIGBUS_FD.get() {
        return Ok(fd.clone());
    }
    let fd = Arc::new(sigbus_memfd()?);
    Ok(SIGBUS_FD.get_or_init(|| fd).clone())
}

fn page_of(addr: u64) -> usize {
    (addr & !(PAGE_BYTES - 1)) as usize
}

/// Answer one fault of a client mapping (reads on the service thread,
/// writes on a worker of the mapping).
fn serve(reg: &Registry, uffd: &Uffd, fault: Fault) {
    let addr = page_of(fault.address);
    let Some(m) = reg.find(addr) else {
        uffd.wake(addr, PAGE_BYTES);
        return;
    };
    let page = (addr - m.local.region.base()) as u64 / PAGE_BYTES;
    if m.local.refault(fault.ptid, page) {
        tracing::error!(target: "pinfs::map", map = m.id, page, ptid = fault.ptid, "a client fault made no progress: SIGBUS to its thread");
        sigbus_thread(&fault);
        uffd.wake(addr, PAGE_BYTES);
        return;
    }
    if !fault.write {
        // Under the mapping's lock: a re-placement (and so the freeing of
        // the copied block) waits until the copy is in.
        let placed = m.placed.lock();
        if let Some(Kind::Served { copy_of }) = placed.runs.kind_at(page) {
            let mut buf = vec![0u8; PAGE_BYTES as usize];
            let read = match copy_of {
                Some(b) => m.read_pool(b * PAGE_BYTES, &mut buf),
                None => Ok(()),
            };
            match read.and_then(|()| uffd.copy_wp(addr, &buf)) {
                Ok(()) => m.local.changed(),
                Err(e) => {
                    tracing::error!(target: "pinfs::map", map = m.id, page, error = %e, "serving a client read fault failed");
                    drop(placed);
                    m.sigbus_page_or_thread(page, &fault);
                }
            }
        }
        uffd.wake(addr, PAGE_BYTES);
        return;
    }
    if let Err(e) = m.faults.write_fault(m.id, page) {
        tracing::debug!(target: "pinfs::map", map = m.id, page, error = %e, "client write fault refused: SIGBUS");
        m.sigbus_page_or_thread(page, &fault);
    }
    uffd.wake(addr, PAGE_BYTES);
}

/// The fault service failed: every served page of every client mapping
/// becomes `SIGBUS`, every waiter is woken.
fn lost(reg: &Registry, uffd: &Uffd) {
    reg.lost.store(true, Ordering::Release);
    let maps: Vec<Arc<Inner>> = reg.maps.lock().values().filter_map(Weak::upgrade).collect();
    for m in maps {
        let mut placed = m.placed.lock();
        let served: Vec<(u64, u64)> = placed
            .runs
            .pieces(0, m.pages)
            .into_iter()
            .filter(|(_, _, k)| matches!(k, Kind::Served { .. }))
            .map(|(s, n, _)| (s, n))
            .collect();
        for (s, n) in served {
            m.place(&mut placed, s, n, Kind::Sigbus);
        }
        drop(placed);
        uffd.wake(m.local.region.base(), m.local.region.len());
    }
}

/// What a client mapping shows, under its lock.
struct ClientPlaced {
    runs: Runs,
    /// Torn down: nothing is placed any more.
    dead: bool,
    /// Some pages could not be changed (they still show what they showed).
    broken: bool,
    /// A tear-down failed: its pages may still reach pool blocks. Every
    /// later placement fails (`EIO`), so the daemon keeps the mapping
    /// broken and its blocks busy; `dead` stays false so a retry tears down.
    teardown_failed: bool,
    /// Test-only negative control: placements are acknowledged unapplied.
    #[cfg(feature = "negative-controls")]
    skip: bool,
}

struct Inner {
    id: u64,
    file_offset: u64,
    len: u64,
    pages: u64,
    flags: MapFlags,
    pool: Arc<OwnedFd>,
    huge: AtomicBool,
    faults: Arc<dyn FaultForwarder>,
    local: LocalPages,
    placed: Mutex<ClientPlaced>,
    /// The process's fault service, for a mapping whose holes are served.
    service: Option<Arc<Service>>,
}

impl Inner {
    /// Read `buf.len()` bytes of the pool at `offset` through its
    /// descriptor (the kernel copies: no access to mapped pool memory here).
    fn read_pool(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(&*self.pool, &mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(Errno::EFAULT.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::media("read the pool", e.into())),
            }
        }
        Ok(())
    }

    fn served_lost(&self) -> bool {
        self.service
            .as_ref()
            .is_none_or(|s| s.registry.lost.load(Ordering::Acquire))
    }

    /// Show `kind` at `start..start+pages`, touching only what differs.
    /// Returns false if some pages could not be changed.
    fn place(&self, placed: &mut ClientPlaced, start: u64, pages: u64, kind: Kind) -> bool {
        // Without a fault service nothing answers a served page: SIGBUS
        // rather than a thread hanging on it.
        let kind = match kind {
            Kind::Served { .. } if self.served_lost() => Kind::Sigbus,
            k => k,
        };
        let ctx = PlaceCtx {
            pool: self.pool.as_fd(),
            uffd: self.service.as_ref().map(|s| &*s.uffd),
            huge: self.huge.load(Ordering::Acquire),
        };
        let mut ok = true;
        for (ds, dn) in placed.runs.dirty(start, pages, kind) {
            let was_served = placed
                .runs
                .pieces(ds, ds + dn)
                .iter()
                .any(|(_, _, k)| matches!(k, Kind::Served { .. }));
            let k = kind.advance(ds - start);
            match self.local.place(self.id, ds, dn, k, self.flags, &ctx) {
                Some(shown) => placed.runs.set(ds, dn, shown),
                None => {
                    placed.broken = true;
                    ok = false;
                }
            }
            if was_served {
                // Threads stopped on the old served pages retry now.
                if let Some(s) = &self.service {
                    s.uffd.wake(
                        self.local.region.base() + (ds * PAGE_BYTES) as usize,
                        dn * PAGE_BYTES,
                    );
                }
            }
        }
        ok
    }

    /// Make page `page` raise `SIGBUS` for the thread of `fault` (a fault
    /// that could not be answered); if the page cannot be made so and
    /// still shows what it faulted on, `SIGBUS` goes to the thread itself.
    fn sigbus_page_or_thread(&self, page: u64, fault: &Fault) {
        let mut placed = self.placed.lock();
        if !placed.dead {
            self.place(&mut placed, page, 1, Kind::Sigbus);
        }
        let shown = placed.runs.kind_at(page);
        if !matches!(shown, Some(Kind::Sigbus | Kind::Nothing)) {
            tracing::error!(target: "pinfs::map", map = self.id, page, "a client page that cannot be served cannot be made SIGBUS either: SIGBUS to the faulting thread");
            sigbus_thread(fault);
        }
    }

    fn tear_down(&self) -> Result<()> {
        let mut placed = self.placed.lock();
        if placed.dead {
            return Ok(());
        }
        if let Some(s) = &self.service {
            s.registry.maps.lock().remove(&self.local.region.base());
        }
        let r = self.local.region.place(
            0,
            self.pages * PAGE_BYTES,
            super::region::Backing::Nothing,
            false,
        );
        match r {
            Ok(()) => {
                // Dead only once nothing is placed any more: a failed
                // tear-down must not make later placements succeed unapplied.
                placed.dead = true;
                placed.teardown_failed = false;
                placed.runs.set(0, self.pages, Kind::Nothing);
                Ok(())
            }
            Err(e) => {
                tracing::error!(target: "pinfs::map", map = self.id, error = %e, "tearing down a client mapping failed: its pages still reach the pool");
                placed.broken = true;
                placed.teardown_failed = true;
                Err(e)
            }
        }
    }
}

/// A mapping of a file range in this (client) process: the pages the
/// daemon places (see the module doc). Dropping it tears it down.
///
/// The memory is reached through [`ClientMapping::as_ptr`] with raw,
/// volatile loads and stores (it changes under the caller whenever the
/// file's layout changes), or through [`ClientMapping::read`] and
/// [`ClientMapping::write`], which report a page that would raise `SIGBUS`
/// as `EFAULT` instead.
pub struct ClientMapping {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClientMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMapping")
            .field("id", &self.inner.id)
            .field("file_offset", &self.inner.file_offset)
            .field("len", &self.inner.len)
            .field("flags", &self.inner.flags)
            .finish()
    }
}

impl ClientMapping {
    /// Reserve the address range of a mapping of `len` bytes at file offset
    /// `file_offset` (page-aligned; the address agrees with it modulo
    /// 2 MiB), showing nothing yet; pool pages will be mapped from `pool`;
    /// write faults of served pages go to `faults`. A shared writable
    /// mapping starts the process's fault service if it is not running; if
    /// it cannot start, a `MAP_DIRECT` mapping still maps (its holes raise
    /// `SIGBUS`), others fail. `EINVAL` for an unaligned offset or an empty
    /// or too long range.
    pub fn reserve(
        len: u64,
        file_offset: u64,
        flags: MapFlags,
        pool: Arc<OwnedFd>,
        faults: Arc<dyn FaultForwarder>,
    ) -> Result<ClientMapping> {
        let flags = flags.effective();
        if len == 0 || !file_offset.is_multiple_of(PAGE_BYTES) {
            return Err(Errno::EINVAL.into());
        }
        let end = file_offset
            .checked_add(len)
            .filter(|&e| e <= crate::format::MAX_FILE_BYTES)
            .ok_or(Errno::EINVAL)?;
        let region_len = end.div_ceil(PAGE_BYTES) * PAGE_BYTES - file_offset;
        let service = match flags.writes_file().then(service) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) if flags.direct => {
                tracing::warn!(target: "pinfs::map", error = %e, "no fault service in this client: holes of this MAP_DIRECT mapping raise SIGBUS");
                None
            }
            Some(Err(e)) => return Err(e),
        };
        let region = Region::reserve(region_len, file_offset % HUGE_BYTES)?;
        let pages = region_len / PAGE_BYTES;
        let inner = Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            file_offset,
            len,
            pages,
            flags,
            pool,
            huge: AtomicBool::new(false),
            faults,
            local: LocalPages::new(region, sigbus_fd()?),
            placed: Mutex::new(ClientPlaced {
                runs: Runs::new(pages, Kind::Nothing),
                dead: false,
                broken: false,
                teardown_failed: false,
                #[cfg(feature = "negative-controls")]
                skip: false,
            }),
            service,
        });
        if let Some(s) = &inner.service {
            s.registry
                .maps
                .lock()
                .insert(inner.local.region.base(), Arc::downgrade(&inner));
        }
        Ok(ClientMapping { inner })
    }

    /// The pool has transparent 2 MiB pages (the daemon says so): pool
    /// placements from now on are advised `MADV_HUGEPAGE`.
    pub fn set_huge_pages(&self, huge: bool) {
        self.inner.huge.store(huge, Ordering::Release);
    }

    /// Show `pieces` (what the daemon's `place` carried), touching only
    /// the pages whose kind changes, and wake the threads waiting on
    /// re-placed served pages. Returns once the page tables show them: the
    /// caller then acknowledges. `EINVAL` (nothing applied) for a piece
    /// outside the mapping or with an unaligned pool offset; `EIO` when
    /// some pages could not be changed (they keep what they showed: do not
    /// acknowledge — the daemon then holds the blocks until this process is
    /// gone). A torn-down mapping applies nothing and succeeds.
    pub fn apply(&self, pieces: &[RemotePiece]) -> Result<()> {
        let m = &*self.inner;
        let mut kinds = Vec::with_capacity(pieces.len());
        for p in pieces {
            let end = p.page.checked_add(p.pages).ok_or(Errno::EINVAL)?;
            if end > m.pages {
                return Err(Errno::EINVAL.into());
            }
            kinds.push((p.page, p.pages, p.kind.to_kind()?));
        }
        let mut placed = m.placed.lock();
        if placed.dead {
            return Ok(());
        }
        if placed.teardown_failed {
            return Err(Errno::EIO.into());
        }
        #[cfg(feature = "negative-controls")]
        if placed.skip {
            return Ok(());
        }
        let mut ok = true;
        for (page, pages, kind) in kinds {
            ok &= m.place(&mut placed, page, pages, kind);
        }
        if ok {
            Ok(())
        } else {
            Err(Error::media(
                "re-placing pages of a client mapping",
                std::io::Error::from_raw_os_error(libc::EIO),
            ))
        }
    }

    /// Test-only negative control: placements are acknowledged without
    /// being applied, so this process keeps reaching blocks after the
    /// daemon freed them.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn skip_placements_for_tests(&self, skip: bool) {
        self.inner.placed.lock().skip = skip;
    }

    /// Its id in this process: the `map` of [`FaultForwarder::write_fault`],
    /// and the id the client library registers it under.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// First byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.local.region.base() as *mut u8
    }

    /// Length in bytes, as asked for.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Never true: mappings are at least one byte long.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// File offset of the first byte.
    pub fn file_offset(&self) -> u64 {
        self.inner.file_offset
    }

    /// The effective flags.
    pub fn flags(&self) -> MapFlags {
        self.inner.flags
    }

    /// Whether some page could not be re-placed.
    pub fn is_broken(&self) -> bool {
        self.inner.placed.lock().broken
    }

    /// What page `page` shows now (tests, diagnostics).
    pub fn kind_at(&self, page: u64) -> Option<super::RemoteKind> {
        self.inner.placed.lock().runs.kind_at(page).map(Into::into)
    }

    fn walk(
        &self,
        offset: u64,
        len: u64,
        write: bool,
        mut each: impl FnMut(&Inner, u64, u64, Step) -> Result<()>,
    ) -> Result<()> {
        let m = &*self.inner;
        match offset.checked_add(len) {
            Some(end) if end <= m.len => {}
            _ => return Err(Errno::EINVAL.into()),
        }
        walk_pages(
            offset,
            len,
            write,
            |f| {
                let placed = m.placed.lock();
                f(&placed.runs)
            },
            |at, n, step| each(m, at, n, step),
            |page| m.faults.write_fault(m.id, page),
        )
    }

    /// Copy `buf.len()` bytes at `offset` (into the mapping) out, as loads
    /// would; `EFAULT` where a load would raise `SIGBUS`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.walk(offset, buf.len() as u64, false, |m, at, n, step| {
            let dst = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            match step {
                Step::Copy => m.local.region.read(at, dst),
                Step::Source(None) => {
                    dst.fill(0);
                    Ok(())
                }
                // The run starts at `at`'s page, whose block is `block`.
                Step::Source(Some(block)) => m.read_pool(block * PAGE_BYTES + at % PAGE_BYTES, dst),
                Step::Fault => Err(Errno::EFAULT.into()),
            }
        })
    }

    /// Store `data` at `offset` (into the mapping), as stores would (a
    /// served page asks the daemon for a block first); `EFAULT` where a
    /// store would raise `SIGBUS` (the bytes before that page are stored),
    /// or the error that would make the write fault raise `SIGBUS`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.walk(
            offset,
            data.len() as u64,
            true,
            |m, at, n, step| match step {
                Step::Copy => m.local.region.write(
                    at,
                    &data[(at - offset) as usize..(at - offset + n) as usize],
                ),
                _ => Err(Errno::EFAULT.into()),
            },
        )
    }

    /// Unmap: nothing stays reachable through the range; later placements
    /// are ignored. Tell the daemon (which then drops its
    /// [`super::RemoteMapping`]) only after this succeeded: on an error the
    /// pages may still reach pool blocks, which the daemon must keep busy
    /// until this process is gone.
    pub fn tear_down(&self) -> Result<()> {
        self.inner.tear_down()
    }
}

impl Drop for ClientMapping {
    fn drop(&mut self) {
        if let Err(e) = self.inner.tear_down() {
            tracing::error!(target: "pinfs::map", map = self.inner.id, error = %e, "tearing down a client mapping at drop failed");
        }
    }
}
