//! Mappings: file ranges placed in the address space as pool memory
//! (SPEC §5).
//!
//! A [`Mapping`] is one reserved address range (`region.rs`) in which the
//! file system places, page by page, what the file's layout says that
//! range shows:
//!
//! | the file has                            | the page shows                                   |
//! |-----------------------------------------|--------------------------------------------------|
//! | a written, unshared block               | the pool block itself (`MAP_SHARED` of the pool)  |
//! | a hole or unwritten block               | shared writable: memory served by the fault service (reads: zeros, write-protected; writes: a zeroed block is allocated, or the unwritten one converted); private or read-only: anonymous zero-fill memory |
//! | a shared (reflinked) block              | shared writable: a write-protected copy served on read, copy-on-write on the first store; otherwise the pool block (read-only, or `MAP_PRIVATE`) |
//! | nothing: the page lies wholly past EOF  | an empty memfd: every access raises `SIGBUS`     |
//!
//! Layout changes keep live mappings true: after every commit, while the
//! file system still holds its state lock — before a freed block can be
//! handed out again — the affected pages of every live mapping of the file
//! are re-placed (the §4.4 invariant for mappings). See `fs/mmap.rs`.
//!
//! `MAP_DIRECT` mappings ([`MapFlags::direct`]) hold a shared layout lease
//! for their lifetime; their faults never allocate, convert or unshare
//! (those pages raise `SIGBUS`), and when their lease is forcibly removed at
//! lease-break-time the whole range becomes the `SIGBUS` mapping. Loads from
//! holes and unwritten blocks of a `MAP_DIRECT` mapping read zeros (served
//! like any other hole); the store that would allocate or convert makes the
//! page the `SIGBUS` mapping before the storing thread is woken, so the store
//! raises `SIGBUS` — and so does any later access to that page, until a
//! layout change of the range re-places it. If any block under a
//! `MAP_DIRECT` mapping is shared (reflinked), the whole mapping raises
//! `SIGBUS` (SPEC §5.2's "the file has shared blocks", read as: under the
//! mapped range).
//!
//! The fault service (`fault.rs`) is the only code that answers page faults:
//! per file system, one thread reads the userfaultfd and answers read faults
//! (never blocking), and workers answer write faults, one fault per mapping
//! at a time, with a worker started for every mapping that has a fault and
//! no worker coming — so a write fault waiting in a lease break stalls only
//! its own mapping, however many mappings wait. If the service fails, every served page
//! becomes the `SIGBUS` mapping and every waiter is woken: no fault hangs.
//!
//! A page that cannot be re-placed at all (`mmap(MAP_FIXED)` failing for
//! it, its `SIGBUS` fallback and its no-access fallback) breaks its mapping
//! (`Placed::broken`): the pool blocks the page may still reach stay busy
//! until the mapping is unmapped (`fs/mmap.rs::release_blocks`) — for good
//! if its tear-down fails too (the file system's zombies), and reflink
//! copies them rather than share them. A failed `MAP_FIXED` that may have
//! left a gap in the range poisons the region (`region.rs`): nothing is
//! mapped into it again, so the mapping breaks.
//!
//! Mappings are not inherited across `fork` (`MADV_DONTFORK`): the file
//! system can only re-place pages in its own address space, and a child
//! holding stale pool pages could reach blocks after they were freed.
//!
//! A mapping may also live in a *client* process of the daemon (SPEC §8):
//! the file system keeps a [`RemoteMapping`] — the same `MapInner`, whose
//! pages are placed through a [`RemoteSpace`] instead of a local region —
//! and the client a [`client::ClientMapping`] that applies what it is sent
//! (see `remote.rs` for the contract: acknowledged placements under the
//! state lock, unacknowledged ⇒ broken and fenced, and `client.rs`). The
//! placing code both halves share is `local.rs`.

pub mod client;
pub(crate) mod fault;
pub(crate) mod local;
pub(crate) mod place;
pub(crate) mod region;
mod remote;

use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) use self::local::{LocalPages, PlaceCtx};
use self::place::{Kind, Runs};
use self::region::{Backing, PAGE_BYTES};
pub use self::remote::{
    RemoteKind, RemoteMapping, RemotePiece, RemoteSpace, Unacknowledged, MAX_PLACE_PIECES,
};
use crate::fs::Fs;
use crate::lease::LeaseId;
use crate::{Errno, Result};

/// `MAP_SHARED`: stores reach the file; extension flags are ignored.
pub const MAP_SHARED: u32 = 0x01;
/// `MAP_PRIVATE`: stores stay private to the mapping (copy-on-write).
pub const MAP_PRIVATE: u32 = 0x02;
/// `MAP_SHARED_VALIDATE`: `MAP_SHARED`, failing with `EOPNOTSUPP` on any flag
/// it does not know; the only type under which extension flags take effect.
pub const MAP_SHARED_VALIDATE: u32 = 0x03;
/// The mapping-type bits.
pub const MAP_TYPE: u32 = 0x0f;
/// `MAP_FIXED`: pinfs chooses the address; refused (`EINVAL`).
pub const MAP_FIXED: u32 = 0x10;
/// `MAP_ANONYMOUS`: not a file mapping; refused (`EINVAL`).
pub const MAP_ANONYMOUS: u32 = 0x20;
/// `MAP_NORESERVE`: accepted and ignored (nothing is reserved anyway).
pub const MAP_NORESERVE: u32 = 0x4000;
/// `MAP_POPULATE`: accepted and ignored (pool blocks are placed at once).
pub const MAP_POPULATE: u32 = 0x8000;
/// `MAP_NONBLOCK`: accepted and ignored.
pub const MAP_NONBLOCK: u32 = 0x10000;
/// `MAP_SYNC` (extension, Linux's value): an allocating write fault is
/// durable before it returns. Every pinfs write fault commits before it
/// returns, so this only documents the caller's need.
pub const MAP_SYNC: u32 = 0x80000;
/// `MAP_DIRECT` (extension): a layout lease for the mapping's lifetime, no
/// allocating faults (SPEC §5.2). Linux has no such flag; this bit
/// (`0x200000`, bit 21) is unused by Linux's `mmap` flags on every
/// architecture (it lies between `MAP_FIXED_NOREPLACE`, `0x100000`, and the
/// hugetlb size field from bit 26).
pub const MAP_DIRECT: u32 = 0x20_0000;

/// Legacy flags accepted (and ignored) under every type.
const LEGACY_ACCEPTED: u32 = MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK;
/// Extension flags: effective only with `MAP_SHARED_VALIDATE`.
const EXTENSIONS: u32 = MAP_SYNC | MAP_DIRECT;

/// How a file range is mapped (SPEC §5.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapFlags {
    /// `MAP_SHARED` (stores reach the file); else `MAP_PRIVATE`.
    pub shared: bool,
    /// `MAP_SHARED_VALIDATE`: extension flags take effect.
    pub validate: bool,
    /// `MAP_DIRECT` (needs `validate`).
    pub direct: bool,
    /// `MAP_SYNC` (needs `validate`).
    pub sync: bool,
    /// `PROT_READ` only; else `PROT_READ|PROT_WRITE`.
    pub read_only: bool,
}

impl MapFlags {
    /// `MAP_SHARED`, readable and writable.
    pub const SHARED: MapFlags = MapFlags {
        shared: true,
        validate: false,
        direct: false,
        sync: false,
        read_only: false,
    };
    /// `MAP_PRIVATE`, readable and writable.
    pub const PRIVATE: MapFlags = MapFlags {
        shared: false,
        ..Self::SHARED
    };
    /// `MAP_SHARED_VALIDATE | MAP_DIRECT`.
    pub const DIRECT: MapFlags = MapFlags {
        validate: true,
        direct: true,
        ..Self::SHARED
    };

    /// Decode raw `mmap` flag bits (C interface, daemon protocol), SPEC §5.1:
    /// under `MAP_SHARED_VALIDATE` an unknown flag is `EOPNOTSUPP` and the
    /// extension flags take effect; under `MAP_SHARED` and `MAP_PRIVATE`
    /// unknown and extension flags are ignored, as Linux does. A type other
    /// than the three, or `MAP_FIXED`/`MAP_ANONYMOUS` (meaningless for a
    /// pinfs file), is `EINVAL`. The result is readable and writable.
    pub fn from_raw(bits: u32) -> Result<MapFlags, Errno> {
        let (shared, validate) = match bits & MAP_TYPE {
            MAP_SHARED => (true, false),
            MAP_PRIVATE => (false, false),
            MAP_SHARED_VALIDATE => (true, true),
            _ => return Err(Errno::EINVAL),
        };
        let rest = bits & !MAP_TYPE;
        if validate && rest & !(LEGACY_ACCEPTED | EXTENSIONS | MAP_FIXED | MAP_ANONYMOUS) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if rest & (MAP_FIXED | MAP_ANONYMOUS) != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(MapFlags {
            shared,
            validate,
            direct: validate && rest & MAP_DIRECT != 0,
            sync: validate && rest & MAP_SYNC != 0,
            read_only: false,
        })
    }

    /// The same, read-only (`PROT_READ`).
    pub fn read_only(self) -> MapFlags {
        MapFlags {
            read_only: true,
            ..self
        }
    }

    /// The flags that take effect: extension flags only with `validate`
    /// (which implies a shared mapping).
    pub(crate) fn effective(self) -> MapFlags {
        let shared = self.shared || self.validate;
        MapFlags {
            shared,
            direct: self.direct && self.validate,
            sync: self.sync && self.validate,
            ..self
        }
    }

    /// Stores through the mapping reach the file.
    pub(crate) fn writes_file(self) -> bool {
        self.shared && !self.read_only
    }
}

/// Placement of one mapping, under its own lock.
#[derive(Debug)]
pub(crate) struct Placed {
    /// What each page shows.
    pub runs: Runs,
    /// The `MAP_DIRECT` lease was forcibly removed: every page is `SIGBUS`.
    pub invalidated: bool,
    /// Torn down (the guard dropped): nothing is placed any more.
    pub dead: bool,
    /// Some page could be neither placed as asked nor made to raise
    /// `SIGBUS` nor made inaccessible: it may still reach the pool blocks
    /// in `held`, which must then stay busy until the mapping is torn down
    /// (see `fs/mmap.rs::release_blocks`). Later faults raise `SIGBUS`.
    pub broken: bool,
    /// Pool blocks (start, count) stuck pages of a broken mapping may reach.
    pub held: Vec<(u64, u64)>,
}

/// Whose address space a mapping's pages are in.
pub(crate) enum Space {
    /// This process's: the file system places the pages itself.
    Local(LocalPages),
    /// A client process's: the file system asks it ([`RemoteSpace::place`]).
    Remote(Arc<dyn RemoteSpace>),
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Space::Local(l) => f.debug_tuple("Local").field(&l.region).finish(),
            Space::Remote(_) => f.write_str("Remote"),
        }
    }
}

/// The shared part of a mapping: what the file system and the fault service
/// see. The [`Mapping`] guard owns one reference; the file system keeps weak
/// ones.
#[derive(Debug)]
pub(crate) struct MapInner {
    /// Its id (also the lease engine's handle id of its lease).
    pub id: u64,
    /// The file.
    pub ino: u64,
    /// Who mapped it (leases and layout changes are attributed to it).
    pub owner: u64,
    /// File offset of the first byte.
    pub file_offset: u64,
    /// Length asked for, in bytes.
    pub len: u64,
    /// Pages of the address range (`len` rounded up).
    pub pages: u64,
    /// Effective flags.
    pub flags: MapFlags,
    /// Where the pages are.
    pub space: Space,
    /// What is placed.
    pub placed: Mutex<Placed>,
    /// The `MAP_DIRECT` layout lease.
    pub lease: Mutex<Option<LeaseId>>,
    /// The file system's count of broken mappings (`MapTable`), which every
    /// release of blocks consults: this one adds itself when it breaks.
    pub broken_maps: Arc<std::sync::atomic::AtomicUsize>,
}

/// Most faults of one page by one thread with nothing changed in the
/// mapping in between: past this the thread would spin for ever (its page
/// shows what the kernel faults on, while the placement says otherwise), so
/// it gets `SIGBUS`. Generous: a thread re-faults a page legitimately only
/// when a fault races a re-placement, once or twice.
pub const MAX_FAULTS_WITHOUT_PROGRESS: u32 = 1000;

impl MapInner {
    /// Pages in the mapping.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// The pages in this process, unless the mapping is a client's.
    pub(crate) fn local(&self) -> Option<&LocalPages> {
        match &self.space {
            Space::Local(l) => Some(l),
            Space::Remote(_) => None,
        }
    }

    /// Whether the pages are in a client process.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self.space, Space::Remote(_))
    }

    /// Whether its holes are served by the fault service: shared writable
    /// mappings (for `MAP_DIRECT` ones, only their loads).
    pub(crate) fn served(&self) -> bool {
        self.flags.writes_file()
    }

    /// Make the pages show `want` (runs of (first page, pages, kind)),
    /// touching only the pages whose kind differs from what they show —
    /// placed here for a local mapping (`ctx` needed: without it nothing is
    /// placed), in one acknowledged [`RemoteSpace::place`] call (or several
    /// of [`MAX_PLACE_PIECES`]) for a client's. Pages that cannot be changed
    /// mark the mapping broken and record the pool blocks they may still
    /// reach in [`Placed::held`]: the file system's next release of blocks
    /// then keeps those busy (never free, never reused) until tear-down
    /// (`fs/mmap.rs`).
    pub(crate) fn show(
        &self,
        placed: &mut Placed,
        want: &[(u64, u64, Kind)],
        ctx: Option<&PlaceCtx<'_>>,
    ) {
        if placed.dead {
            return;
        }
        match &self.space {
            Space::Local(local) => {
                let Some(ctx) = ctx else { return };
                for &(start, pages, kind) in want {
                    for (ds, dn) in placed.runs.dirty(start, pages, kind) {
                        let k = kind.advance(ds - start);
                        match local.place(self.id, ds, dn, k, self.flags, ctx) {
                            Some(shown) => placed.runs.set(ds, dn, shown),
                            None => self.stuck(placed, ds, dn),
                        }
                    }
                }
            }
            Space::Remote(space) => self.show_remote(space, placed, want),
        }
    }

    /// [`MapInner::show`] for a client's mapping: the dirty pieces, batched.
    fn show_remote(
        &self,
        space: &Arc<dyn RemoteSpace>,
        placed: &mut Placed,
        want: &[(u64, u64, Kind)],
    ) {
        if placed.broken {
            // Fenced: it is sent nothing more; what it may reach is held.
            return;
        }
        let mut pieces: Vec<RemotePiece> = Vec::new();
        for &(start, pages, kind) in want {
            for (ds, dn) in placed.runs.dirty(start, pages, kind) {
                pieces.push(RemotePiece {
                    page: ds,
                    pages: dn,
                    kind: kind.advance(ds - start).into(),
                });
            }
        }
        for batch in pieces.chunks(MAX_PLACE_PIECES) {
            match space.place(self.id, batch) {
                Ok(()) => {
                    for p in batch {
                        // Checked when sent: pool offsets are block offsets.
                        if let Ok(k) = p.kind.to_kind() {
                            placed.runs.set(p.page, p.pages, k);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(target: "pinfs::map", map = self.id, ino = self.ino, error = %e, "a client did not acknowledge a placement: mapping broken, every block it may reach stays busy until it is dropped");
                    // The client may show anything it was ever told: the
                    // runs it acknowledged, and any of the pieces not
                    // acknowledged (applied or not).
                    let pending: Vec<(u64, u64, Kind)> = pieces
                        .iter()
                        .filter_map(|p| Some((p.page, p.pages, p.kind.to_kind().ok()?)))
                        .collect();
                    self.stuck_remote(placed, &pending);
                    return;
                }
            }
        }
    }

    /// Pages `start..start+pages` of a local mapping could not be changed:
    /// they still show what `placed.runs` says. Record the pool blocks they
    /// reach and mark the mapping broken.
    fn stuck(&self, placed: &mut Placed, start: u64, pages: u64) {
        self.mark_broken(placed);
        for (_, n, kind) in placed.runs.pieces(start, start + pages) {
            if let Kind::Pool { block } = kind {
                placed.held.push((block, n));
            }
        }
    }

    /// A client's mapping could not be placed: it may reach every pool
    /// block its runs say and every one of `pending` — shown, or copied by
    /// the client's own fault service (`Served` copies are read from the
    /// pool by the client, unlike a local mapping's, which the file system
    /// reads under its lock).
    fn stuck_remote(&self, placed: &mut Placed, pending: &[(u64, u64, Kind)]) {
        self.mark_broken(placed);
        let shown = placed.runs.pieces(0, self.pages);
        for &(_, n, kind) in shown.iter().chain(pending) {
            if let Kind::Pool { block }
            | Kind::Served {
                copy_of: Some(block),
            } = kind
            {
                placed.held.push((block, n));
            }
        }
    }

    fn mark_broken(&self, placed: &mut Placed) {
        if !placed.broken {
            placed.broken = true;
            self.broken_maps
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// A page changed: progress for the fault service (see
    /// [`LocalPages::refault`]).
    pub(crate) fn changed(&self) {
        if let Some(l) = self.local() {
            l.changed();
        }
    }

    /// The `MAP_DIRECT` lease was lost at lease-break-time: every page now
    /// raises `SIGBUS`, for good (SPEC §5.2). A range that can be neither
    /// made `SIGBUS` nor inaccessible breaks the mapping (its blocks are
    /// held by the next release, `fs/mmap.rs`); so does a client that does
    /// not acknowledge.
    pub(crate) fn invalidate(&self) {
        let mut placed = self.placed.lock();
        if placed.dead || placed.invalidated {
            return;
        }
        placed.invalidated = true;
        tracing::warn!(target: "pinfs::map", map = self.id, ino = self.ino, "MAP_DIRECT lease lost at lease-break-time: mapping invalidated");
        let pages = self.pages();
        let local = match &self.space {
            Space::Local(l) => l,
            Space::Remote(space) => {
                return self.show_remote(space, &mut placed, &[(0, pages, Kind::Sigbus)]);
            }
        };
        match local.sigbus_place(0, pages * PAGE_BYTES) {
            Ok(()) => placed.runs.set(0, pages, Kind::Sigbus),
            Err(e) => {
                tracing::error!(target: "pinfs::map", map = self.id, error = %e, "invalidation: SIGBUS placement failed; making the range inaccessible");
                if local
                    .region
                    .place(0, pages * PAGE_BYTES, Backing::Nothing, false)
                    .is_ok()
                {
                    placed.runs.set(0, pages, Kind::Nothing);
                } else {
                    self.stuck(&mut placed, 0, pages);
                }
            }
        }
    }

    /// The guard dropped: nothing stays reachable through the range, even
    /// while a fault being answered still holds a reference. Returns whether
    /// it worked; if not, the pages keep reaching what they reached (the
    /// held blocks of a broken mapping must then stay busy for good). A
    /// client's mapping is dropped only once the client can no longer reach
    /// it (`RemoteMapping`): nothing to do but forget it.
    pub(crate) fn tear_down(&self) -> bool {
        let mut placed = self.placed.lock();
        let pages = self.pages();
        let ok = match &self.space {
            Space::Remote(_) => true,
            // A whole-region placement splits no VMA outside the region, so
            // it is the placement most likely to succeed.
            Space::Local(local) => {
                match local
                    .region
                    .place(0, pages * PAGE_BYTES, Backing::Nothing, false)
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(target: "pinfs::map", map = self.id, error = %e, "tearing down a mapping failed");
                        self.stuck(&mut placed, 0, pages);
                        false
                    }
                }
            }
        };
        placed.runs.set(0, pages, Kind::Nothing);
        placed.dead = true;
        ok
    }
}
/// A live mapping of a file range (SPEC §5); dropping it unmaps it and
/// releases its `MAP_DIRECT` lease.
///
/// The memory is reached through [`Mapping::as_ptr`] with raw, volatile
/// loads and stores (it changes under the caller whenever the file's layout
/// changes, as in Linux), or through [`Mapping::read`] and
/// [`Mapping::write`], which report a page that would raise `SIGBUS` as
/// `EFAULT` instead.
///
/// Faults of holes are answered by the file system's fault service, which
/// takes the file system's locks and (for stores) may break leases. So a
/// thread must not touch a mapping's holes while it is inside the file
/// system: passing mapping memory as the buffer of `pread`/`pwrite` can
/// deadlock. Copy through [`Mapping::read`]/[`Mapping::write`] instead,
/// which never fault while holding a lock. A lease break callback may read
/// holes of any mapping (read faults never wait for a write fault); a store
/// from it into a hole of the very mapping whose write fault is breaking
/// the lease waits for that fault, i.e. until lease-break-time.
pub struct Mapping {
    pub(crate) fs: Arc<Fs>,
    pub(crate) inner: Arc<MapInner>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("id", &self.inner.id)
            .field("ino", &self.inner.ino)
            .field("file_offset", &self.inner.file_offset)
            .field("len", &self.inner.len)
            .field("flags", &self.inner.flags)
            .finish()
    }
}

impl Mapping {
    /// First byte of the mapping (file offset [`Mapping::file_offset`]).
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner
            .local()
            .map_or(std::ptr::null_mut(), |l| l.region.base() as *mut u8)
    }

    /// Length in bytes, as asked for (the address range is rounded up to
    /// whole pages).
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

    /// Its id (shown in pin listings as `PinVia::DirectMapping(id)`).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Its `MAP_DIRECT` layout lease, while held.
    pub fn lease(&self) -> Option<LeaseId> {
        *self.inner.lease.lock()
    }

    /// Whether the `MAP_DIRECT` lease was lost and every access raises `SIGBUS`.
    pub fn is_invalidated(&self) -> bool {
        self.inner.placed.lock().invalidated
    }

    /// Bytes of the mapping the kernel currently maps with 2 MiB pages
    /// (from `/proc/self/smaps`). A 2 MiB window of the file is mapped so
    /// when its blocks are one 2 MiB-aligned run of pool blocks, written and
    /// unshared, the pool has transparent 2 MiB pages
    /// ([`crate::media::MediaCaps::huge_pages`]), and the window has been touched.
    pub fn huge_mapped_bytes(&self) -> Result<u64> {
        match self.inner.local() {
            Some(l) => l.region.huge_mapped_bytes(),
            None => Ok(0),
        }
    }

    /// Test-only fault injection: the next `skip` placements of pages in
    /// this mapping succeed, the `fail` after them fail with `ENOMEM` (as
    /// `mmap(MAP_FIXED)` does once `vm.max_map_count` is exhausted).
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn inject_placement_failures_for_tests(&self, skip: u64, fail: u64) {
        if let Some(l) = self.inner.local() {
            l.region.inject_placement_failures(skip, fail);
        }
    }

    /// Test-only fault injection: the mapping's address range is poisoned,
    /// as after a failed placement that may have left a gap someone else
    /// mapped into: nothing is placed in it any more.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn poison_region_for_tests(&self) {
        if let Some(l) = self.inner.local() {
            l.region.poison();
        }
    }

    /// Test-only fault injection: the next `n` placements of pages in this
    /// mapping report success without doing anything, so the page tables
    /// disagree with what the file system believes the pages show.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn inject_silent_placements_for_tests(&self, n: u64) {
        if let Some(l) = self.inner.local() {
            l.region.inject_silent_placements(n);
        }
    }

    /// Whether some page of the mapping could not be re-placed (nor made to
    /// raise `SIGBUS`): its faults raise `SIGBUS`, and the pool blocks it may
    /// still reach stay busy until it is unmapped.
    pub fn is_broken(&self) -> bool {
        self.inner.placed.lock().broken
    }

    pub(crate) fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.inner.len => Ok(()),
            _ => Err(Errno::EINVAL.into()),
        }
    }
}

/// What a copy through a mapping (`read`/`write`, local or in a client)
/// does with one run of pages.
pub(crate) enum Step {
    /// Copy through the address range (pool blocks, private memory).
    Copy,
    /// Answer from the source, without touching the page (served reads):
    /// zeros, or the pool block given.
    Source(Option<u64>),
    /// Ask the file system for a block first (served writes).
    Fault,
}

/// Walk `[offset, offset+len)` of a mapping run by run, as its `read` or
/// `write` does. `locked` runs its argument on the runs with the locks
/// that make the copy of each run a short-term pin (SPEC §4.1: no layout
/// change can free a block — no re-placement can be acknowledged — while
/// it is copied); `each` copies one run (at, len, step) under them. No copy
/// made under the locks may fault into a fault service, which would need
/// them: served pages are answered from their source, or (writes) faulted
/// first through `fault` with the locks dropped. `EFAULT` where an access
/// would raise `SIGBUS`; `EAGAIN` if a page keeps needing a fault.
pub(crate) fn walk_pages(
    offset: u64,
    len: u64,
    write: bool,
    mut locked: impl FnMut(&mut dyn FnMut(&Runs) -> Result<Option<u64>>) -> Result<Option<u64>>,
    mut each: impl FnMut(u64, u64, Step) -> Result<()>,
    mut fault: impl FnMut(u64) -> Result<()>,
) -> Result<()> {
    let end = offset.checked_add(len).ok_or(Errno::EINVAL)?;
    let mut at = offset;
    let mut faults = 0;
    while at < end {
        let page = at / PAGE_BYTES;
        let fault_page = locked(&mut |runs: &Runs| {
            let pieces = runs.pieces(page, end.div_ceil(PAGE_BYTES));
            let Some(&(s, n, kind)) = pieces.first() else {
                return Err(Errno::EFAULT.into());
            };
            let to = end.min((s + n) * PAGE_BYTES);
            let step = match kind {
                Kind::Pool { .. } | Kind::Zero => Step::Copy,
                Kind::Served { .. } if write => Step::Fault,
                Kind::Served { copy_of } => Step::Source(copy_of),
                Kind::Sigbus | Kind::Nothing => return Err(Errno::EFAULT.into()),
            };
            if let Step::Fault = step {
                return Ok(Some(page));
            }
            each(at, to - at, step)?;
            at = to;
            Ok(None)
        })?;
        if let Some(page) = fault_page {
            faults += 1;
            if faults > 8 {
                return Err(Errno::EAGAIN.into());
            }
            fault(page)?;
        } else {
            faults = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_flags_follow_spec_5_1() {
        let shared = MapFlags::from_raw(MAP_SHARED).unwrap();
        assert_eq!(shared, MapFlags::SHARED);
        assert_eq!(MapFlags::from_raw(MAP_PRIVATE).unwrap(), MapFlags::PRIVATE);
        // Legacy flags alone under VALIDATE behave as MAP_SHARED.
        let v = MapFlags::from_raw(MAP_SHARED_VALIDATE | MAP_POPULATE).unwrap();
        assert!(v.shared && v.validate && !v.direct && !v.sync);
        assert_eq!(
            MapFlags {
                validate: false,
                ..v
            },
            MapFlags::SHARED
        );
        // Extension flags take effect only with VALIDATE ...
        let d = MapFlags::from_raw(MAP_SHARED_VALIDATE | MAP_DIRECT | MAP_SYNC).unwrap();
        assert!(d.direct && d.sync && d.shared);
        let ignored = MapFlags::from_raw(MAP_SHARED | MAP_DIRECT | MAP_SYNC).unwrap();
        assert_eq!(ignored, MapFlags::SHARED);
        assert_eq!(
            MapFlags::from_raw(MAP_PRIVATE | MAP_SYNC).unwrap(),
            MapFlags::PRIVATE
        );
        // ... and unknown flags fail only with VALIDATE.
        for unknown in [0x40_0000, 0x100, 0x8000_0000, 0x40] {
            assert_eq!(
                MapFlags::from_raw(MAP_SHARED_VALIDATE | unknown),
                Err(Errno::EOPNOTSUPP),
                "{unknown:#x}"
            );
            assert!(MapFlags::from_raw(MAP_SHARED | unknown).is_ok());
        }
        assert_eq!(MapFlags::from_raw(0), Err(Errno::EINVAL));
        assert_eq!(MapFlags::from_raw(0x0f), Err(Errno::EINVAL));
        assert_eq!(
            MapFlags::from_raw(MAP_SHARED | MAP_FIXED),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            MapFlags::from_raw(MAP_SHARED_VALIDATE | MAP_ANONYMOUS),
            Err(Errno::EINVAL)
        );
        // The struct form: extension flags without VALIDATE are dropped.
        let eff = MapFlags {
            direct: true,
            sync: true,
            ..MapFlags::SHARED
        }
        .effective();
        assert_eq!(eff, MapFlags::SHARED);
        assert!(MapFlags::DIRECT.effective().direct);
        assert!(MapFlags::PRIVATE.read_only().read_only);
    }
}
