//! Device registrations in the file system (SPEC §6.1–6.4): who may hand a
//! range of a mapping to a device, what the registration holds while the
//! device may reach the blocks, and how it is taken away.
//!
//! A registration is the file system's half of `->lease_direct()`:
//! - **Entitlement** ([`Mapping::register`]), in this order: an on-demand
//!   paging device needs nothing (no lease, no pins: every layout change over
//!   its range invalidates the affected translations first); otherwise a
//!   `MAP_DIRECT` mapping whose lease is broken, breaking or invalidated is
//!   `ENXIO`; a `MAP_DIRECT` mapping and a device that can be revoked in the
//!   mode asked for is Dan Williams' model; the owner's unbreakable layout
//!   lease (`F_LAYOUT|F_EXCLUSIVE`) over the range through a shared writable
//!   mapping is Ira Weiny's model; anything else is `EOPNOTSUPP`.
//! - **What it holds** (not on-demand paging): its own shared layout lease
//!   over the file range, whose break callback is the revocation — on `Break`
//!   the owner is told (its queue, as for every lease) and should quiesce and
//!   deregister; on `Lost` (forced at lease-break-time) the device is revoked
//!   (confirmed), the registration is marked revoked and its pins dropped,
//!   all before the breaker proceeds, so the layout change that forced it
//!   frees blocks no device can reach any more. Then long-term pins
//!   ([`PinVia::Registration`]), which make the range written and private
//!   and keep the blocks from reuse under every truncate policy; their
//!   revoke function is the device's. Only then is the device given the pool
//!   pages.
//! - **On-demand paging** (SPEC §6.4): the device asks [`OdpSource`] for each
//!   page. The answer first makes the page written and private — for a read
//!   too: an ODP read of a hole allocates a zeroed block, unlike a CPU
//!   mapping's read, because the device keeps the translation and would not
//!   see a later allocation. Every committed layout change over the range
//!   calls [`Device::invalidate_pages`] from `Op::install`, under the state
//!   lock, before any block it frees can be reused ([`odp_affected`],
//!   [`odp_invalidate`]).
//!
//! With devices the truncate policies read (SPEC §4.3): under Dan Williams'
//! model the registration's lease is broken by every other owner's layout
//! change, and losing it revokes the device — so `wait`, `defer` and
//! `revoke` all end, at lease-break-time, with a confirmed revocation and
//! the blocks freed after it; `fail` refuses before any break. Under Ira
//! Weiny's model nobody else can change the layout; the owner's own changes
//! meet the pins and follow the policy (`revoke` acts as `defer` for a device
//! that cannot be revoked).
//!
//! Lock order: a registration's `stage` lock (held across the device calls
//! that give or take its access) comes before the state lock, never after;
//! the on-demand hook runs under the state lock and takes no `stage` lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::state::{FsState, Inode};
use super::{file_key, Fs, Pin, Segment};
use crate::dma::{
    Backing, Completion, Device, MrId, MrKeys, PageSource, RevokeMode, MAX_REGISTRATION_PAGES,
    PAGE_BYTES,
};
use crate::format::{block_offset, BLOCK_SIZE};
use crate::lease::{
    BreakCallback, BreakEvent, ByteRange, EventKind, HandleId, LeaseId, LeaseRequest, LeaseState,
    OwnerId,
};
use crate::map::Mapping;
use crate::pin::{PinVia, RevokeFn};
use crate::{Errno, Result};

/// Most registrations at once, per file system (a named limit; `ENOSPC`
/// beyond it, as a device runs out of memory-region slots).
pub const MAX_REGISTRATIONS: usize = 4096;

/// Identity of a registration (unique per file system).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RegistrationId(pub u64);

impl std::fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A registration as listed ([`Fs::registrations`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// Its id.
    pub id: RegistrationId,
    /// Who registered (the mapping's owner).
    pub owner: u64,
    /// The file.
    pub ino: u64,
    /// First file byte registered.
    pub offset: u64,
    /// Bytes registered.
    pub len: u64,
    /// The device's kind (`soft`, `uring`).
    pub device: &'static str,
    /// How it is revoked.
    pub mode: RevokeMode,
    /// Device addresses and keys.
    pub keys: MrKeys,
    /// Whether the device's access has been revoked.
    pub revoked: bool,
}

/// One registration in the file system's table (under the state lock).
pub(crate) struct RegEntry {
    inner: Weak<RegInner>,
    ino: u64,
    /// File bytes `[offset, offset + len)`.
    offset: u64,
    len: u64,
    /// On-demand paging: the device and region whose translations layout
    /// changes invalidate; set once the device has the region.
    odp: Option<(Arc<dyn Device>, MrId)>,
}

/// Every registration of the file system, by id.
#[derive(Default)]
pub(crate) struct DmaTable {
    regs: BTreeMap<RegistrationId, RegEntry>,
    next: u64,
    /// Test-only negative control: revocation pretends to be confirmed
    /// without telling the device, and layout changes leave on-demand
    /// translations alone.
    unprotected: bool,
}

impl std::fmt::Debug for DmaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaTable")
            .field("registrations", &self.regs.len())
            .finish()
    }
}

/// What the device has been given, and whether it was taken back: changed
/// only under this lock, which is held across the device calls that make
/// or end its access, so a revocation never races a registration.
#[derive(Default)]
struct Stage {
    keys: Option<MrKeys>,
    revoked: bool,
    deregistered: bool,
}

struct RegInner {
    fs: Arc<Fs>,
    id: RegistrationId,
    device: Arc<dyn Device>,
    owner: u64,
    ino: u64,
    offset: u64,
    len: u64,
    mode: RevokeMode,
    stage: Mutex<Stage>,
    revoked: AtomicBool,
    lease: Mutex<Option<LeaseId>>,
    pin: Mutex<Option<Pin>>,
}

impl RegInner {
    /// Withdraw the device's access and wait for the confirmation (the
    /// revoke function of its pins, and the first half of its lease's
    /// `Lost` callback). Idempotent. `Err`: not confirmed (the device may
    /// still reach the blocks; the caller keeps them pinned).
    fn revoke(&self) -> Result<()> {
        let mut stage = self.stage.lock();
        if stage.revoked {
            return Ok(());
        }
        let pretend = self.fs.state.read().dma.unprotected;
        if let Some(k) = stage.keys.filter(|_| !pretend) {
            tracing::warn!(target: "pinfs::dma", reg = self.id.0, mr = k.mr.0, device = self.device.name(), mode = %self.mode, "revoking a device registration");
            if let Err(e) = self.device.revoke(k.mr) {
                // Not confirmed: the pins stay (see `lost` and
                // `Fs::revoke_pins`), so say so loudly.
                tracing::error!(target: "pinfs::dma", reg = self.id.0, error = %e, "device revocation failed");
                return Err(e);
            }
        }
        stage.revoked = true;
        self.revoked.store(true, Ordering::Release);
        Ok(())
    }

    /// The registration's lease was forcibly removed: revoke, then drop the
    /// pins so the layout change that forced it can free the blocks. A
    /// revocation that failed keeps the pins (the blocks stay busy).
    fn lost(&self) {
        *self.lease.lock() = None;
        if self.revoke().is_ok() {
            let pin = self.pin.lock().take();
            drop(pin);
        }
    }

    /// Deregister: revoke (confirmed quiescence), forget the region, release
    /// pins, lease and the table entry. Idempotent.
    fn deregister(&self) -> Result<()> {
        let mut result = Ok(());
        {
            let mut stage = self.stage.lock();
            if stage.deregistered {
                return Ok(());
            }
            if let Some(k) = stage.keys {
                if !stage.revoked {
                    // Before the pins go, no access may still be in flight.
                    if let Err(e) = self.device.revoke(k.mr) {
                        // The device may still reach the blocks: they stay
                        // pinned — for good, since the guard that owns the
                        // pin is going away (STYLE 8: a release that fails
                        // must not leave memory reachable).
                        tracing::error!(target: "pinfs::dma", reg = self.id.0, error = %e, "revocation at deregistration failed; the blocks stay pinned (busy) for the life of the file system");
                        if let Some(pin) = self.pin.lock().take() {
                            std::mem::forget(pin);
                        }
                        return Err(e);
                    }
                    stage.revoked = true;
                }
            }
            // Out of the table before the region is forgotten: an on-demand
            // region is revoked (no translation, no new fault), so no layout
            // change needs to reach it any more.
            self.fs.state.write().dma.regs.remove(&self.id);
            if let Some(k) = stage.keys {
                result = self.device.deregister(k.mr);
            }
            stage.deregistered = true;
        }
        let pin = self.pin.lock().take();
        drop(pin);
        if let Some(id) = self.lease.lock().take() {
            let _ = self.fs.leases.release(id);
        }
        tracing::debug!(target: "pinfs::dma", reg = self.id.0, "deregistered");
        result
    }
}

/// A device's registration of a range of a file (SPEC §6.1); dropping it
/// deregisters.
pub struct Registration {
    inner: Arc<RegInner>,
    keys: MrKeys,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.inner.id)
            .field("device", &self.inner.device.name())
            .field("mode", &self.inner.mode)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Registration {
    /// Its id.
    pub fn id(&self) -> RegistrationId {
        self.inner.id
    }

    /// The device addresses and keys.
    pub fn keys(&self) -> MrKeys {
        self.keys
    }

    /// Bytes registered.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Whether it registers nothing (never: registrations are non-empty).
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// How it is revoked.
    pub fn mode(&self) -> RevokeMode {
        self.inner.mode
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.inner.device
    }

    /// The device writes `data` at byte `offset` of the registration (its
    /// own traffic: an RDMA peer's write, a `READ_FIXED`), and waits for the
    /// completion.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<Completion> {
        self.inner.device.write(self.keys.mr, offset, data)
    }

    /// The device reads `buf.len()` bytes at byte `offset` of the
    /// registration; `buf` holds them when the completion is `Ok`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<Completion> {
        self.inner.device.read(self.keys.mr, offset, buf)
    }

    /// Whether the device's access has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.inner.revoked.load(Ordering::Acquire)
    }

    /// Deregister: the device's access ends (confirmed), its addresses are
    /// released, then the pins and the lease. Dropping does the same.
    pub fn deregister(self) -> Result<()> {
        self.inner.deregister()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Err(e) = self.inner.deregister() {
            tracing::error!(target: "pinfs::dma", reg = self.inner.id.0, error = %e, "deregistration at drop failed");
        }
    }
}

/// The file system answering an on-demand-paging device's faults for one
/// registration (SPEC §6.4).
struct OdpSource {
    fs: Weak<Fs>,
    ino: u64,
    generation: u32,
    owner: u64,
    /// First file byte of the registration.
    start: u64,
    pages: u64,
}

impl PageSource for OdpSource {
    fn fault(&self, page: u64, _write: bool) -> Result<u64> {
        // Reads are made written too (see the module doc).
        let fs = self.fs.upgrade().ok_or(Errno::ENXIO)?;
        if page >= self.pages {
            return Err(Errno::EINVAL.into());
        }
        {
            let st = fs.state.read();
            if st.inode(self.ino)?.generation != self.generation {
                // The file is gone and its slot reused.
                return Err(Errno::ENOENT.into());
            }
        }
        let start = self.start + page * PAGE_BYTES;
        let end = start + PAGE_BYTES;
        let (_layout, st) = fs.make_written_private(self.ino, self.owner, start, end, false)?;
        let inode = st.inode(self.ino)?;
        if inode.generation != self.generation {
            return Err(Errno::ENOENT.into());
        }
        let block = start / BLOCK_SIZE;
        match inode.extents.segments(block, block + 1).first() {
            Some(&Segment::Mapped {
                logical,
                physical,
                unwritten: false,
                ..
            }) => Ok(block_offset(physical + (block - logical))),
            _ => Err(Errno::EIO.into()),
        }
    }
}

impl Mapping {
    /// Register `[offset, offset+len)` of this mapping (page-aligned,
    /// relative to the mapping) with `device`, to be revoked in `mode`
    /// (SPEC §6.1; see the module doc for the entitlement rules and what the
    /// registration holds). Errors: `EINVAL` (range not page-aligned, empty,
    /// past the mapping, longer than [`MAX_REGISTRATION_PAGES`]),
    /// `EOPNOTSUPP` (not entitled — a mapping that cannot write the file
    /// entitles nothing — or the device cannot do `mode`), `ENXIO`
    /// (the `MAP_DIRECT` mapping's lease is broken, breaking, or broke while
    /// registering; the mapping is invalidated), `ENOSPC` (more than
    /// [`MAX_REGISTRATIONS`]), and the device's own errors.
    pub fn register(
        &self,
        device: Arc<dyn Device>,
        offset: u64,
        len: u64,
        mode: RevokeMode,
    ) -> Result<Registration> {
        let m = &self.inner;
        let fs = &self.fs;
        let end = offset.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0
            || !offset.is_multiple_of(PAGE_BYTES)
            || !len.is_multiple_of(PAGE_BYTES)
            || end > m.len.div_ceil(PAGE_BYTES) * PAGE_BYTES
            || len / PAGE_BYTES > MAX_REGISTRATION_PAGES
        {
            return Err(Errno::EINVAL.into());
        }
        // A device writes the file: a mapping that cannot (read-only,
        // private) entitles nothing (SPEC §6.1: otherwise EOPNOTSUPP).
        if !m.flags.writes_file() {
            return Err(Errno::EOPNOTSUPP.into());
        }
        let (start, end) = (m.file_offset + offset, m.file_offset + end);
        let caps = device.caps();
        let odp = mode == RevokeMode::Odp;
        // A MAP_DIRECT mapping whose lease is broken or breaking is ENXIO
        // whatever the device (an on-demand one too: the mapping itself is
        // invalidated or about to be).
        let direct_ok = m.flags.direct && !self.is_invalidated() && self.direct_lease_active();
        if m.flags.direct && !direct_ok {
            return Err(Errno::ENXIO.into());
        }
        let via_direct = if odp {
            if !caps.odp {
                return Err(Errno::EOPNOTSUPP.into());
            }
            false
        } else {
            if m.flags.direct && caps.supports(mode) {
                true
            } else if fs.holds_unbreakable_lease(m.ino, m.owner, start, end)? {
                if !caps.supports(mode) {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                false
            } else {
                return Err(Errno::EOPNOTSUPP.into());
            }
        };
        let generation = fs.state.read().inode(m.ino)?.generation;
        let id = {
            let mut st = fs.state.write();
            if st.dma.regs.len() >= MAX_REGISTRATIONS {
                return Err(Errno::ENOSPC.into());
            }
            st.dma.next += 1;
            RegistrationId(st.dma.next)
        };
        let inner = Arc::new(RegInner {
            fs: fs.clone(),
            id,
            device: device.clone(),
            owner: m.owner,
            ino: m.ino,
            offset: start,
            len: end - start,
            mode,
            stage: Mutex::new(Stage::default()),
            revoked: AtomicBool::new(false),
            lease: Mutex::new(None),
            pin: Mutex::new(None),
        });
        fs.state.write().dma.regs.insert(
            id,
            RegEntry {
                inner: Arc::downgrade(&inner),
                ino: m.ino,
                offset: start,
                len: end - start,
                odp: None,
            },
        );
        // From here a failure deregisters what was taken (the guard's drop).
        let mut reg = Registration {
            inner,
            keys: MrKeys {
                mr: MrId(0),
                iova: 0,
                lkey: 0,
                rkey: 0,
            },
        };
        let keys = if odp {
            let source = Arc::new(OdpSource {
                fs: Arc::downgrade(fs),
                ino: m.ino,
                generation,
                owner: m.owner,
                start,
                pages: (end - start) / PAGE_BYTES,
            });
            let mut stage = reg.inner.stage.lock();
            let keys = device.register(
                Backing::OnDemand {
                    pages: (end - start) / PAGE_BYTES,
                    source,
                },
                mode,
            )?;
            stage.keys = Some(keys);
            if let Some(e) = fs.state.write().dma.regs.get_mut(&id) {
                e.odp = Some((device.clone(), keys.mr));
            }
            keys
        } else {
            self.register_pinned(&reg.inner, generation, via_direct)?
        };
        reg.keys = keys;
        tracing::info!(target: "pinfs::dma", reg = id.0, ino = m.ino, start, end, device = device.name(), %mode, mr = keys.mr.0, "registered");
        Ok(reg)
    }

    /// Whether this `MAP_DIRECT` mapping's lease is held and not breaking.
    fn direct_lease_active(&self) -> bool {
        (*self.inner.lease.lock())
            .and_then(|id| self.fs.leases.lease(id))
            .is_some_and(|l| l.state == LeaseState::Active)
    }

    /// The non-ODP half of [`Mapping::register`]: its own lease, the pins,
    /// the device's table, then the check that the mapping's lease did not
    /// break meanwhile.
    fn register_pinned(
        &self,
        inner: &Arc<RegInner>,
        generation: u32,
        via_direct: bool,
    ) -> Result<MrKeys> {
        let fs = &self.fs;
        let (start, end) = (inner.offset, inner.offset + inner.len);
        let weak = Arc::downgrade(inner);
        let on_event: BreakCallback = Arc::new(move |ev: &BreakEvent| {
            // `Break`: the owner's queue has it (as for every lease); the
            // owner quiesces and deregisters. `Lost`: revoke, now.
            if ev.kind == EventKind::Lost {
                if let Some(r) = weak.upgrade() {
                    r.lost();
                }
            }
        });
        let req = LeaseRequest::layout_shared()
            .range(ByteRange::new(start, end))
            .callback(on_event);
        let handle = HandleId(fs.next_handle.fetch_add(1, Ordering::Relaxed));
        let lease = fs.leases.set_lease(
            file_key(inner.ino, generation),
            handle,
            OwnerId(inner.owner),
            req,
        )?;
        *inner.lease.lock() = Some(lease);
        let revoke: Option<RevokeFn> = inner.device.caps().revocable().then(|| {
            let weak = Arc::downgrade(inner);
            Arc::new(move || match weak.upgrade() {
                Some(r) => r.revoke(),
                None => Ok(()),
            }) as RevokeFn
        });
        let pin = fs.pin_range(
            inner.ino,
            inner.owner,
            start,
            end,
            PinVia::Registration(inner.id),
            revoke,
            false,
        )?;
        // The pool pages, in region order, from the blocks the pin reaches.
        let pages: Vec<u64> = pin
            .info()
            .ok_or(Errno::ENXIO)?
            .blocks
            .iter()
            .flat_map(|r| (r.start..r.end()).map(block_offset))
            .collect();
        *inner.pin.lock() = Some(pin);
        let keys = {
            let mut stage = inner.stage.lock();
            if stage.revoked {
                // Revoked (its lease lost) before the device had anything.
                return Err(Errno::ENXIO.into());
            }
            let keys = inner.device.register(Backing::Pinned(pages), inner.mode)?;
            stage.keys = Some(keys);
            keys
        };
        let lease_held = (*inner.lease.lock())
            .and_then(|id| fs.leases.lease(id))
            .is_some_and(|l| l.state == LeaseState::Active);
        let broke = (via_direct && (self.is_invalidated() || !self.direct_lease_active()))
            || !lease_held
            || inner.pin.lock().is_none();
        if broke {
            return Err(Errno::ENXIO.into());
        }
        Ok(keys)
    }
}

impl Fs {
    /// Test-only negative control: a registration's revocation (its lease
    /// lost, its pins revoked) no longer tells the device — the device keeps
    /// its translations while the blocks are freed and reused — and layout
    /// changes no longer invalidate on-demand translations. Tests use it
    /// (with [`Fs::disable_pin_protection_for_tests`] for `defer`) to show
    /// they detect a device reaching blocks it no longer owns.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_dma_revocation_for_tests(&self) {
        self.state.write().dma.unprotected = true;
    }

    /// Every live registration, by id (SPEC §9: listed with the pins).
    pub fn registrations(&self) -> Vec<RegistrationInfo> {
        let regs: Vec<Arc<RegInner>> = self
            .state
            .read()
            .dma
            .regs
            .values()
            .filter_map(|e| e.inner.upgrade())
            .collect();
        regs.iter()
            .filter_map(|r| {
                let keys = r.stage.lock().keys?;
                Some(RegistrationInfo {
                    id: r.id,
                    owner: r.owner,
                    ino: r.ino,
                    offset: r.offset,
                    len: r.len,
                    device: r.device.name(),
                    mode: r.mode,
                    keys,
                    revoked: r.revoked.load(Ordering::Acquire),
                })
            })
            .collect()
    }
}

/// One on-demand invalidation: pages `first..first+count` of region `mr`.
pub(crate) type OdpInvalidation = (Arc<dyn Device>, MrId, u64, u64);

/// The on-demand-paging translations an operation about to be installed
/// makes stale (called by `Op::install` before it installs `inodes` and
/// `refs`): pages of each ODP registration whose block was written (only
/// written private blocks are ever translated) and changes — the file's
/// layout there differs in the new inode, or the block is freed or becomes
/// shared (a reflink source).
pub(crate) fn odp_affected(
    st: &FsState,
    inodes: &BTreeMap<u64, Inode>,
    refs: &BTreeMap<u64, u32>,
) -> Vec<OdpInvalidation> {
    let mut out = Vec::new();
    if st.dma.unprotected || st.dma.regs.values().all(|e| e.odp.is_none()) {
        return out;
    }
    let changed: Vec<u64> = refs
        .iter()
        .filter(|&(&b, &c)| c == 0 || (c > 1) != (st.refcount(b) > 1))
        .map(|(&b, _)| b)
        .collect();
    for e in st.dma.regs.values() {
        let Some((device, mr)) = &e.odp else {
            continue;
        };
        let Some(old) = st.inodes.get(&e.ino) else {
            continue;
        };
        let new = inodes.get(&e.ino);
        // A file the commit does not touch and no block whose sharing or
        // freeing changes: nothing of this registration goes stale (the
        // common case: a commit on another file), so no page walk.
        if new.is_none() && changed.is_empty() {
            continue;
        }
        let (b0, b1) = (e.offset / BLOCK_SIZE, (e.offset + e.len) / BLOCK_SIZE);
        let mut pages: Vec<(u64, u64)> = Vec::new();
        for seg in old.extents.segments(b0, b1) {
            let Segment::Mapped {
                logical,
                physical,
                len,
                unwritten: false,
            } = seg
            else {
                continue;
            };
            for i in 0..len {
                let (l, p) = (logical + i, physical + i);
                let moved = new.is_some_and(|n| {
                    !matches!(
                        n.extents.segments(l, l + 1).first(),
                        Some(&Segment::Mapped { logical: nl, physical: np, unwritten: false, .. })
                            if np + (l - nl) == p
                    )
                });
                if moved || changed.binary_search(&p).is_ok() {
                    let page = l - b0;
                    match pages.last_mut() {
                        Some((s, n)) if *s + *n == page => *n += 1,
                        _ => pages.push((page, 1)),
                    }
                }
            }
        }
        for (first, count) in pages {
            out.push((device.clone(), *mr, first, count));
        }
    }
    out
}

/// Drop the stale translations [`odp_affected`] found, synchronously, before
/// the operation releases any block (still under the state lock). A device
/// that cannot invalidate is revoked instead.
pub(crate) fn odp_invalidate(list: Vec<OdpInvalidation>) {
    for (device, mr, first, count) in list {
        if let Err(e) = device.invalidate_pages(mr, first, count) {
            tracing::error!(target: "pinfs::dma", mr = mr.0, first, count, error = %e, "on-demand invalidation failed; revoking the region");
            if let Err(e) = device.revoke(mr) {
                tracing::error!(target: "pinfs::dma", mr = mr.0, error = %e, "revoking the region failed too");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Registration>();
        send_sync::<RegistrationInfo>();
        assert_eq!(RegistrationId(7).to_string(), "7");
    }
}
