//! The file-system side of mappings (SPEC §5): `Handle::mmap`, what each
//! page of a mapping shows, the re-placement of live mappings after every
//! layout change, and the answers to write faults.
//!
//! Three rules hold here:
//! - *What a page shows follows from the layout alone* ([`desired`]), so the
//!   same function places a new mapping, re-places it after a layout change,
//!   and checks a fault.
//! - *Re-placement happens after the commit and before any freed block can
//!   be reused*: [`affected`] and [`replace`] run inside `Op::install`, with
//!   the state lock held exclusively, so by the time another operation can
//!   allocate a block, no mapping reaches it (SPEC §4.4 for mappings).
//! - *A write fault is an ordinary write*: allocation into a hole and
//!   unsharing go through [`Fs::layout_change`] with the mapping's owner as
//!   breaker, before the state lock; the block is zeroed (or copied), made
//!   durable, committed — and so re-placed — before the faulting thread is
//!   woken, which is also what `MAP_SYNC` asks for.
//!
//! Submodules: `faults` (the fault service's side: answering faults, losing
//! the service), `guard` (what a `Mapping` does: `persist`, pins,
//! `read`/`write`, unmap), `held` (blocks broken mappings may still reach
//! stay busy), `remote` (`Handle::mmap_remote`, `RemoteMapping`),
//! `budget` (the share of `vm.max_map_count` the live mappings may need,
//! charged at `mmap` and refunded at munmap).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use super::ops::{write_range, Source};
use super::state::{FsState, Inode, Op};
use super::{now_ns, Fs, Handle, Segment};
use crate::alloc::Run;
use crate::format::{block_offset, BLOCK_SIZE, HUGE_BLOCKS, MAX_FILE_BYTES};
use crate::lease::{
    BreakCallback, BreakEvent, ByteRange, EventKind, HandleId, LeaseRequest, LeaseState, OwnerId,
};
use crate::map::fault::{sigbus_thread, Fault, FaultHandler, FaultKey, FaultService, OnLost, Uffd};
use crate::map::local::sigbus_memfd;
use crate::map::place::{Kind, Runs};
use crate::map::region::{Region, HUGE_BYTES, PAGE_BYTES};
use crate::map::{
    walk_pages, LocalPages, MapFlags, MapInner, Mapping, PlaceCtx, Placed, RemoteSpace, Space,
    Step, MAX_FAULTS_WITHOUT_PROGRESS,
};
use crate::media::Media;
use crate::pin::{PinVia, RevokeFn};
use crate::{Errno, Error, Result};

/// Most live mappings per file system (a named limit; `ENOMEM` beyond it,
/// as `mmap` reports running out of mappings).
pub const MAX_MAPPINGS: usize = 65_536;

/// Fault-around: the most one store fault into a hole of a shared writable
/// (not `MAP_DIRECT`) mapping allocates when no 2 MiB window applies — the
/// whole aligned chunk of this size around the faulting block, if every
/// block of it is a hole, inside the mapping and below end of file (zeroed,
/// written and durable in one commit, as a DAX file system's fault-around
/// would). One fault then serves the next stores of a sequential writer
/// too: chosen by measurement (`pinfs bench map`, docs/performance.md).
pub const FAULT_AROUND_BYTES: u64 = 64 << 10;

/// [`FAULT_AROUND_BYTES`] in file blocks.
const FAULT_AROUND_BLOCKS: u64 = FAULT_AROUND_BYTES / BLOCK_SIZE;

mod budget;
mod faults;
mod guard;
mod held;
mod remote;

use self::budget::{charge_budget, check_budget, refund_budget};
use self::held::release_held;
pub(crate) use self::held::{release_blocks, release_unpinned, split_held, unprotect};

/// The live mappings, by file, by id, and (those in this process) by
/// address (in the state, under its lock).
#[derive(Default)]
pub(crate) struct MapTable {
    by_ino: HashMap<u64, Vec<Weak<MapInner>>>,
    by_id: BTreeMap<u64, Weak<MapInner>>,
    by_addr: BTreeMap<usize, Weak<MapInner>>,
    /// Test-only negative control: layout changes leave live mappings alone.
    replace_disabled: bool,
    /// Test-only negative control: layout changes leave mappings in client
    /// processes alone (nothing is sent to them).
    remote_replace_disabled: bool,
    /// Test-only negative control: blocks a broken mapping reaches are freed
    /// like any other (not held busy).
    hold_disabled: bool,
    /// Test-only negative control: a reflink shares source blocks without
    /// first write-protecting the live pages that store into them in place
    /// (they are re-placed only after the commit, by `Op::install`).
    protect_disabled: bool,
    /// Test-only: the placement budget (of all live mappings together, and
    /// so of one), instead of the one computed from `vm.max_map_count`.
    budget_override: Option<u64>,
    /// Areas (kernel VMAs) charged to each live mapping at `mmap`, by id,
    /// counted as [`desired`] places them; refunded at munmap.
    charges: HashMap<u64, u64>,
    /// Their sum: never more than the budget (`fs/mmap/budget.rs`).
    charged: u64,
    /// Mappings that are broken ([`crate::map::Placed::broken`]): while
    /// non-zero, every release of blocks looks for the ones they hold.
    broken: Arc<AtomicUsize>,
    /// Blocks put on the busy list because a broken mapping may reach them
    /// (released again when no broken mapping holds them any more).
    diverted: Vec<Run>,
    /// Pool blocks of broken mappings whose tear-down failed: their pages
    /// may reach these blocks for the life of the process, so they are held
    /// for good ([`MapTable::held_blocks`] includes them).
    zombies: Vec<Run>,
    /// The fault service's userfaultfd, once started.
    uffd: Option<Arc<Uffd>>,
    /// The fault service failed: pages it would serve raise `SIGBUS`.
    service_lost: bool,
    /// The empty memfd whose mapping raises `SIGBUS`.
    sigbus: Option<Arc<OwnedFd>>,
}

impl std::fmt::Debug for MapTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapTable")
            .field("mappings", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

impl MapTable {
    /// The live mapping containing `addr`.
    fn find(&self, addr: usize) -> Option<Arc<MapInner>> {
        let (_, m) = self.by_addr.range(..=addr).next_back()?;
        let m = m.upgrade()?;
        let region = &m.local()?.region;
        let base = region.base();
        (addr < base + region.len() as usize).then_some(m)
    }

    fn of_ino(&self, ino: u64) -> Vec<Arc<MapInner>> {
        self.by_ino
            .get(&ino)
            .map(|v| v.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Whether a live `MAP_DIRECT` mapping of someone other than `owner`
    /// covers part of `[offset, end)` of `ino` — asked on every `pwrite`, so
    /// it allocates nothing.
    fn direct_of_other(&self, ino: u64, owner: u64, offset: u64, end: u64) -> bool {
        self.by_ino.get(&ino).is_some_and(|v| {
            v.iter().filter_map(Weak::upgrade).any(|m| {
                m.flags.direct
                    && m.owner != owner
                    && m.file_offset < end
                    && offset < m.file_offset + m.pages() * PAGE_BYTES
            })
        })
    }

    fn all(&self) -> Vec<Arc<MapInner>> {
        self.by_id.values().filter_map(Weak::upgrade).collect()
    }

    fn insert(&mut self, m: &Arc<MapInner>) -> Result<()> {
        if self.by_id.len() >= MAX_MAPPINGS {
            return Err(Errno::ENOMEM.into());
        }
        self.by_ino
            .entry(m.ino)
            .or_default()
            .push(Arc::downgrade(m));
        self.by_id.insert(m.id, Arc::downgrade(m));
        if let Some(l) = m.local() {
            self.by_addr.insert(l.region.base(), Arc::downgrade(m));
        }
        Ok(())
    }

    /// The pool blocks the broken mappings may still reach, sorted and
    /// merged.
    pub(super) fn held_blocks(&self) -> Vec<Run> {
        let mut held: Vec<Run> = self.zombies.clone();
        for m in self.all() {
            let placed = m.placed.lock();
            if placed.broken {
                held.extend(placed.held.iter().map(|&(start, len)| Run { start, len }));
            }
        }
        held.sort();
        let mut merged: Vec<Run> = Vec::with_capacity(held.len());
        for r in held {
            match merged.last_mut() {
                Some(last) if r.start <= last.end() => {
                    last.len = last.len.max(r.end() - last.start);
                }
                _ => merged.push(r),
            }
        }
        merged
    }

    fn remove(&mut self, m: &MapInner) {
        self.by_id.remove(&m.id);
        if let Some(l) = m.local() {
            self.by_addr.remove(&l.region.base());
        }
        if let Some(v) = self.by_ino.get_mut(&m.ino) {
            v.retain(|w| !std::ptr::eq(w.as_ptr(), m));
            if v.is_empty() {
                self.by_ino.remove(&m.ino);
            }
        }
    }
}

/// A pool whose blocks can be placed in mappings: mapped, with 4 KiB pages.
fn place_ctx<'a>(st: &'a FsState, media: &'a dyn Media) -> Option<PlaceCtx<'a>> {
    let mem = media.mapping()?;
    Some(PlaceCtx {
        pool: mem.fd,
        uffd: st.maps.uffd.as_deref(),
        huge: media.caps().huge_pages,
    })
}

/// What pages `p0..p1` of mapping `m` should show, from the layout in `st`:
/// runs of (first page, pages, kind).
fn desired(
    st: &FsState,
    m: &MapInner,
    p0: u64,
    p1: u64,
    invalidated: bool,
) -> Vec<(u64, u64, Kind)> {
    let p1 = p1.min(m.pages());
    if p0 >= p1 {
        return Vec::new();
    }
    let all = |k: Kind| vec![(p0, p1 - p0, k)];
    if invalidated {
        return all(Kind::Sigbus);
    }
    let Ok(inode) = st.inode(m.ino) else {
        return all(Kind::Sigbus);
    };
    let fb0 = m.file_offset / BLOCK_SIZE;
    // Pages wholly past end of file raise SIGBUS; the one holding EOF does not.
    let inside = inode
        .size
        .div_ceil(BLOCK_SIZE)
        .saturating_sub(fb0)
        .clamp(p0, p1);
    if m.flags.direct && has_shared(st, inode, fb0, fb0 + m.pages()) {
        // A MAP_DIRECT fault over a reflinked file raises SIGBUS (SPEC §5.2).
        return all(Kind::Sigbus);
    }
    let served = m.served();
    // With the fault service lost nothing can answer a served page's fault:
    // it raises SIGBUS rather than hang (or take stores nobody persists).
    // A client's mapping is served by the client's own service, which
    // makes its pages SIGBUS itself if it has none.
    let lost = !m.is_remote() && (st.maps.service_lost || st.maps.uffd.is_none());
    let empty = match (served, lost) {
        (false, _) => Kind::Zero,
        (true, false) => Kind::Served { copy_of: None },
        (true, true) => Kind::Sigbus,
    };
    let mut out: Vec<(u64, u64, Kind)> = Vec::new();
    let mut push = |page: u64, n: u64, k: Kind| match out.last_mut() {
        Some((s, len, last)) if *s + *len == page && last.advance(*len) == k => *len += n,
        _ => out.push((page, n, k)),
    };
    for seg in inode.extents.segments(fb0 + p0, fb0 + inside) {
        let page = seg.logical() - fb0;
        match seg {
            Segment::Hole { len, .. }
            | Segment::Mapped {
                len,
                unwritten: true,
                ..
            } => push(page, len, empty),
            Segment::Mapped { physical, len, .. } => {
                let mut i = 0;
                while i < len {
                    let shared = st.refcount(physical + i) > 1;
                    let mut k = 1;
                    while i + k < len && (st.refcount(physical + i + k) > 1) == shared {
                        k += 1;
                    }
                    let block = physical + i;
                    let kind = if shared && served && lost {
                        Kind::Sigbus
                    } else if shared && served {
                        // Never written in place: a write-protected copy,
                        // copied on the first store.
                        Kind::Served {
                            copy_of: Some(block),
                        }
                    } else {
                        Kind::Pool { block }
                    };
                    push(page + i, k, kind);
                    i += k;
                }
            }
        }
    }
    if inside < p1 {
        push(inside, p1 - inside, Kind::Sigbus);
    }
    out
}

/// Whether any written block of file blocks `b0..b1` is shared.
fn has_shared(st: &FsState, inode: &Inode, b0: u64, b1: u64) -> bool {
    inode.extents.segments(b0, b1).iter().any(|s| match *s {
        Segment::Mapped { physical, len, .. } => {
            (physical..physical + len).any(|b| st.refcount(b) > 1)
        }
        Segment::Hole { .. } => false,
    })
}

/// Bring pages `p0..p1` of `m` up to date with the layout in `st`.
fn place_range(st: &FsState, media: &dyn Media, m: &MapInner, p0: u64, p1: u64) {
    let ctx = place_ctx(st, media);
    let mut placed = m.placed.lock();
    if placed.dead {
        return;
    }
    let want = desired(st, m, p0, p1, placed.invalidated);
    m.show(&mut placed, &want, ctx.as_ref());
}

/// File blocks whose layout differs between `old` and `new` (one range,
/// `u64::MAX` for "to end of file"), or `None`.
fn changed_blocks(old: Option<&Inode>, new: &Inode) -> Option<(u64, u64)> {
    let Some(old) = old else {
        return Some((0, u64::MAX));
    };
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    if old.size != new.size {
        lo = old.size.min(new.size) / BLOCK_SIZE;
        hi = u64::MAX;
    }
    // Only the blocks whose mapping differs: an extent that grew by one
    // block (a write fault after another) changes one block, not the
    // whole extent — re-placing the extent would make faults O(n) each.
    for (a, b) in [(old, new), (new, old)] {
        for (l, e) in a.extents.iter() {
            if b.extents.lookup(l) == Some((l, e)) {
                continue;
            }
            for seg in b.extents.segments(l, l + e.len) {
                let same = match seg {
                    Segment::Mapped {
                        logical,
                        physical,
                        unwritten,
                        ..
                    } => physical == e.physical + (logical - l) && unwritten == e.unwritten,
                    Segment::Hole { .. } => false,
                };
                if !same {
                    lo = lo.min(seg.logical());
                    hi = hi.max(seg.logical() + seg.len());
                }
            }
        }
    }
    (lo < hi).then_some((lo, hi))
}

/// Pages of the mappings that an operation about to be installed changes:
/// called by `Op::install` *before* it installs `inodes` (the staged
/// inodes) and `refs` (the staged reference counts) into `st`.
pub(crate) fn affected(
    st: &FsState,
    inodes: &BTreeMap<u64, Inode>,
    refs: &BTreeMap<u64, u32>,
) -> Vec<(Arc<MapInner>, u64, u64)> {
    let maps = &st.maps;
    if maps.by_id.is_empty() || maps.replace_disabled {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (&ino, new) in inodes {
        let live = maps.of_ino(ino);
        if live.is_empty() {
            continue;
        }
        let Some((b0, b1)) = changed_blocks(st.inodes.get(&ino), new) else {
            continue;
        };
        for m in live {
            if maps.remote_replace_disabled && m.is_remote() {
                continue;
            }
            let fb0 = m.file_offset / BLOCK_SIZE;
            if m.flags.direct {
                // Whether the file has shared blocks is a whole-mapping matter.
                let pages = m.pages();
                out.push((m, 0, pages));
                continue;
            }
            let p0 = b0.saturating_sub(fb0);
            let p1 = b1.saturating_sub(fb0).min(m.pages());
            if p0 < p1 {
                out.push((m, p0, p1));
            }
        }
    }
    // Blocks that become shared, unshared or free change what the mappings
    // placing them show, whichever file they belong to (a reflink source).
    let changed: Vec<u64> = refs
        .iter()
        .filter(|&(&b, &c)| c == 0 || (c > 1) != (st.refcount(b) > 1))
        .map(|(&b, _)| b)
        .collect();
    if !changed.is_empty() {
        for m in maps.all() {
            if maps.remote_replace_disabled && m.is_remote() {
                continue;
            }
            if m.flags.direct {
                // Its pages over shared blocks show SIGBUS, not the blocks:
                // look at the file's blocks under the mapping instead.
                let fb0 = m.file_offset / BLOCK_SIZE;
                let hit = st.inodes.get(&m.ino).is_some_and(|i| {
                    i.extents
                        .segments(fb0, fb0 + m.pages())
                        .iter()
                        .any(|s| match *s {
                            Segment::Mapped { physical, len, .. } => {
                                let k = changed.partition_point(|&b| b < physical);
                                changed.get(k).is_some_and(|&b| b < physical + len)
                            }
                            Segment::Hole { .. } => false,
                        })
                });
                if hit {
                    let pages = m.pages();
                    out.push((m, 0, pages));
                }
                continue;
            }
            let hit = {
                let placed = m.placed.lock();
                placed
                    .runs
                    .pieces(0, m.pages())
                    .into_iter()
                    .filter_map(|(s, n, k)| match k {
                        Kind::Pool { block }
                        | Kind::Served {
                            copy_of: Some(block),
                        } => {
                            let i = changed.partition_point(|&b| b < block);
                            (changed.get(i).is_some_and(|&b| b < block + n)).then_some((s, s + n))
                        }
                        _ => None,
                    })
                    .fold(None, |acc: Option<(u64, u64)>, (s, e)| match acc {
                        Some((a, b)) => Some((a.min(s), b.max(e))),
                        None => Some((s, e)),
                    })
            };
            if let Some((s, e)) = hit {
                out.push((m, s, e));
            }
        }
    }
    out
}

/// Re-place the pages [`affected`] found, from the layout now installed in
/// `st` (still under the exclusive state lock).
///
/// Returns the pool blocks that broken mappings — this re-placement's, or
/// earlier ones' — may still reach: the caller passes them to every
/// [`release_blocks`] of the operation, which keeps them busy.
#[must_use = "blocks broken mappings still reach must not be freed"]
pub(crate) fn replace(
    st: &FsState,
    media: &dyn Media,
    mut list: Vec<(Arc<MapInner>, u64, u64)>,
) -> Held {
    // One re-placement per mapping (a client's: one `place` call), over the
    // union of what changed in it (its file's layout, blocks it shows).
    list.sort_by_key(|(m, p0, _)| (m.id, *p0));
    let mut merged: Vec<(Arc<MapInner>, u64, u64)> = Vec::with_capacity(list.len());
    for (m, p0, p1) in list {
        match merged.last_mut() {
            Some((last, _, e)) if last.id == m.id => *e = (*e).max(p1),
            _ => merged.push((m, p0, p1)),
        }
    }
    for (m, p0, p1) in merged {
        place_range(st, media, &m, p0, p1);
    }
    if (st.maps.broken.load(Ordering::Acquire) == 0 && st.maps.zombies.is_empty())
        || st.maps.hold_disabled
    {
        return Held(Vec::new());
    }
    Held(st.maps.held_blocks())
}

/// Pool blocks broken mappings may still reach (sorted, merged), from
/// [`replace`].
#[derive(Debug)]
pub(crate) struct Held(Vec<Run>);

impl Handle {
    /// Map `[offset, offset+len)` of the file (SPEC §5). `offset` must be
    /// page-aligned (`EINVAL`); `len > 0`. A handle not open for reading
    /// cannot map (`EACCES`); one not open for writing cannot map writable
    /// and shared (`EACCES`). `MAP_DIRECT` needs `validate`, is for the
    /// file's owner or uid 0 (`CAP_LEASE`) only (`EACCES`), and takes a
    /// shared layout lease of the mapped range for the mapping's lifetime.
    /// Pools that cannot be placed page by page (not mapped, or with pages
    /// larger than 4 KiB: hugetlbfs, device-dax) give `EOPNOTSUPP`. A range
    /// whose layout would need more separate areas than are left of the
    /// live mappings' share of `vm.max_map_count` (one in
    /// `MAP_COUNT_SHARE`, a running total) gives `ENOMEM`.
    pub fn mmap(&self, offset: u64, len: u64, flags: MapFlags) -> Result<Mapping> {
        self.map_range(offset, len, flags, None)
    }

    /// [`Handle::mmap`] into this process (`remote: None`) or into a
    /// client's address space: the checks, the `MAP_DIRECT` lease, the
    /// first placement. A client's mapping needs no fault service here (the
    /// client serves its holes), no `SIGBUS` memfd and no share of this
    /// process's `vm.max_map_count` (its areas are the client's).
    pub(super) fn map_range(
        &self,
        offset: u64,
        len: u64,
        flags: MapFlags,
        remote: Option<Arc<dyn RemoteSpace>>,
    ) -> Result<Mapping> {
        let fs = &self.fs;
        let flags = flags.effective();
        if !offset.is_multiple_of(PAGE_BYTES) || len == 0 {
            return Err(Errno::EINVAL.into());
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(Errno::EOVERFLOW)?;
        let region_len = end.div_ceil(PAGE_BYTES) * PAGE_BYTES - offset;
        if !self.flags.read || (flags.writes_file() && !self.flags.write) {
            return Err(Errno::EACCES.into());
        }
        match fs.media.mapping() {
            Some(_) if fs.media.caps().page_size == PAGE_BYTES => {}
            _ => return Err(Errno::EOPNOTSUPP.into()),
        }
        {
            let st = fs.state.read();
            let inode = st.inode(self.ino)?;
            if !inode.is_reg() {
                return Err(Errno::ENODEV.into());
            }
            if flags.direct && self.cred.uid != 0 && self.cred.uid != inode.uid {
                return Err(Errno::EACCES.into());
            }
        }
        let pages = region_len / PAGE_BYTES;
        let (space, uffd) = match remote {
            Some(space) => (Space::Remote(space), None),
            None => {
                // Every writable shared mapping has its holes served,
                // MAP_DIRECT ones included: their loads read zeros (SPEC
                // §5.2); only the store that would allocate or convert
                // raises SIGBUS (`write_fault`).
                let service = flags.writes_file().then(|| fs.fault_service());
                let uffd = match service {
                    None => None,
                    Some(Ok(u)) => Some(u),
                    // Without a fault service (no userfaultfd for this
                    // process) a MAP_DIRECT mapping still maps: its holes
                    // raise SIGBUS.
                    Some(Err(e)) if flags.direct => {
                        tracing::warn!(target: "pinfs::map", error = %e, "no fault service: holes of this MAP_DIRECT mapping raise SIGBUS");
                        None
                    }
                    Some(Err(e)) => return Err(e),
                };
                let sigbus = fs.sigbus_fd()?;
                let region = Region::reserve(region_len, offset % HUGE_BYTES)?;
                (Space::Local(LocalPages::new(region, sigbus)), uffd)
            }
        };
        let broken_maps = fs.state.read().maps.broken.clone();
        let inner = Arc::new(MapInner {
            id: fs.next_handle.fetch_add(1, Ordering::Relaxed),
            ino: self.ino,
            owner: self.cred.owner,
            file_offset: offset,
            len,
            pages,
            flags,
            space,
            placed: parking_lot::Mutex::new(Placed {
                runs: Runs::new(pages, Kind::Nothing),
                invalidated: false,
                dead: false,
                broken: false,
                held: Vec::new(),
            }),
            lease: parking_lot::Mutex::new(None),
            broken_maps,
        });
        if let Some(u) = &uffd {
            // Before counting its areas: what the mapping's holes show
            // depends on whether a fault service serves them.
            fs.state.write().maps.uffd.get_or_insert_with(|| u.clone());
        }
        let areas = if inner.is_remote() {
            0
        } else {
            check_budget(&fs.state.read(), &inner)?
        };
        if flags.direct {
            // Before the state lock: the request waits for a layout change
            // in progress (SPEC §3.2).
            let weak = Arc::downgrade(&inner);
            let on_event: BreakCallback = Arc::new(move |ev: &BreakEvent| {
                if ev.kind == EventKind::Lost {
                    if let Some(m) = weak.upgrade() {
                        m.invalidate();
                    }
                }
            });
            let req = LeaseRequest::layout_shared()
                .range(ByteRange::new(offset, offset + region_len))
                .callback(on_event);
            let req = if self.flags.nonblocking {
                req.nonblocking()
            } else {
                req
            };
            let id =
                fs.leases
                    .set_lease(self.key, HandleId(inner.id), OwnerId(self.cred.owner), req)?;
            *inner.lease.lock() = Some(id);
        }
        let mapping = Mapping {
            fs: fs.clone(),
            inner,
        };
        let mut st = fs.state.write();
        if let Some(u) = uffd {
            st.maps.uffd.get_or_insert(u);
        }
        // Counted first: on an error below, the guard's drop undoes it.
        st.runtime(self.ino).opens.fetch_add(1, Ordering::Relaxed);
        // Charged under the lock that inserts it: concurrent mmaps cannot
        // both pass the total. The guard's drop refunds it.
        if !mapping.inner.is_remote() {
            charge_budget(&mut st.maps, &mapping.inner, areas)?;
        }
        st.maps.insert(&mapping.inner)?;
        place_range(&st, &*fs.media, &mapping.inner, 0, pages);
        drop(st);
        Ok(mapping)
    }
}

impl Fs {
    /// Test-only negative control: layout changes stop re-placing live
    /// mappings, so a mapping keeps reaching blocks after they are freed and
    /// given to another file. Tests use it to show they can fail.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_map_replacement_for_tests(&self) {
        self.state.write().maps.replace_disabled = true;
    }

    /// Test-only negative control: blocks that a broken mapping (one whose
    /// pages could not be re-placed) still reaches are freed at once instead
    /// of being held busy until it is unmapped.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_map_hold_for_tests(&self) {
        self.state.write().maps.hold_disabled = true;
    }

    /// Test-only negative control: a reflink no longer write-protects the
    /// mapped pages of the blocks it shares before it commits, so a page
    /// whose re-placement after the commit fails keeps storing into a block
    /// the destination shares.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_reflink_protect_for_tests(&self) {
        self.state.write().maps.protect_disabled = true;
    }

    /// Test-only: the most areas all live mappings together may need
    /// (instead of the share of `vm.max_map_count`); `None` restores it.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn set_map_budget_for_tests(&self, areas: Option<u64>) {
        self.state.write().maps.budget_override = areas;
    }

    /// Live mappings.
    pub fn mapping_count(&self) -> usize {
        self.state.read().maps.all().len()
    }
}

/// Write back the pool blocks under the live shared mappings of `ino`
/// (`fsync`: stores through mappings are not tracked one by one).
pub(crate) fn flush_mappings(st: &FsState, media: &dyn Media, ino: u64) -> Result<()> {
    for m in st.maps.of_ino(ino) {
        if !m.flags.writes_file() {
            continue;
        }
        let placed = m.placed.lock();
        for (_, n, kind) in placed.runs.pieces(0, m.pages()) {
            if let Kind::Pool { block } = kind {
                media.flush(block_offset(block), n * PAGE_BYTES)?;
            }
        }
    }
    Ok(())
}

impl Fs {
    /// A `write` by `owner` over `[offset, end)` of `ino` breaks the
    /// `MAP_DIRECT` leases of other owners over the range (SPEC §5.2), even
    /// when it changes no layout: returns the guard of that break, held
    /// until the write is done.
    pub(super) fn break_direct_for_write(
        &self,
        ino: u64,
        offset: u64,
        end: u64,
        owner: u64,
        nonblocking: bool,
    ) -> Result<Option<crate::lease::LayoutChangeGuard>> {
        if !self
            .state
            .read()
            .maps
            .direct_of_other(ino, owner, offset, end)
        {
            return Ok(None);
        }
        self.layout_change(
            self.node_of(ino)?,
            ByteRange::new(offset, end),
            owner,
            nonblocking,
        )
        .map(Some)
    }
}
