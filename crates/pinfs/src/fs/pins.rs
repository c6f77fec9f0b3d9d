//! Long-term pins of file ranges, and what layout changes do about them
//! (SPEC §4).
//!
//! A long-term pin is opt-in: it needs an unbreakable layout lease of the
//! pinning owner over the range (through the handle, or through any shared
//! writable mapping), or a live `MAP_DIRECT` mapping covering it
//! (`Mapping::pin_long_term`, in `mmap.rs`); `EPERM` otherwise. Pinning first makes the
//! range written and private — holes allocated zeroed, unwritten blocks
//! zeroed and converted, shared blocks copied — so a device can write to the
//! blocks without exposing stale data or touching another file; it then
//! records the pool blocks, which the owner hands to its device.
//!
//! A layout change that removes pinned blocks from a file applies the
//! truncate policy: `fail` refuses before any lease break and tells the pin
//! holders, `wait` waits for the pins to drop, `revoke` waits and then
//! revokes them, `defer` goes ahead. The operation's one deadline —
//! lease-break-time from its start — bounds its lease breaks and its wait
//! for pins together (SPEC §3.3.5). Whatever the policy, blocks a pin still
//! reaches never return to free space: `FsState::release_blocks` puts them on
//! the busy-extent list, and the last unpin frees them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::ops::{write_range, Source};
use super::state::{FsState, Op};
use super::{Fs, Handle, Node};
use crate::alloc::Run;
use crate::format::{BLOCK_SIZE, MAX_FILE_BYTES};
use crate::lease::{BreakDeadline, ByteRange, LayoutChangeGuard, LeaseKind, LeaseState, OwnerId};
use crate::pin::{PinId, PinInfo, PinVia, RevokeFn, TruncatePolicy};
use crate::{Errno, Result};

/// A long-term pin; dropping it unpins (SPEC §4.2: only the owner, or its
/// death, drops a pin — not closing the handle).
pub struct Pin {
    fs: Arc<Fs>,
    id: PinId,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin").field("id", &self.id).finish()
    }
}

impl Pin {
    /// Its id.
    pub fn id(&self) -> PinId {
        self.id
    }

    /// What it pins, or `None` once revoked.
    pub fn info(&self) -> Option<PinInfo> {
        self.fs
            .state
            .read()
            .pins
            .get(self.id)
            .map(|e| e.info.clone())
    }

    /// The pool byte ranges the pin reaches, in file order: what a device is
    /// given (offsets into the pool mapping).
    pub fn pool_ranges(&self) -> Vec<(u64, u64)> {
        self.info()
            .map(|i| {
                i.blocks
                    .iter()
                    .map(|r| (r.start * BLOCK_SIZE, r.len * BLOCK_SIZE))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.fs.unpin(self.id);
    }
}

impl Handle {
    /// Take a long-term pin of `[offset, offset+len)` (block-aligned
    /// outward). Requires an unbreakable layout lease (`F_LAYOUT|
    /// F_EXCLUSIVE`) of this handle's owner covering the range: `EPERM`
    /// otherwise. `revoke`, when given, stops the device from reaching the
    /// blocks; the `revoke` policy calls it at lease-break-time.
    pub fn pin_long_term(&self, offset: u64, len: u64, revoke: Option<RevokeFn>) -> Result<Pin> {
        let fs = self.fs.clone();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES && len > 0)
            .ok_or(Errno::EINVAL)?;
        let (start, end) = (
            offset / BLOCK_SIZE * BLOCK_SIZE,
            end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE,
        );
        let owner = self.cred.owner;
        if !fs.holds_unbreakable_lease(self.ino, owner, start, end)? {
            return Err(Errno::EPERM.into());
        }
        fs.pin_range(
            self.ino,
            owner,
            start,
            end,
            PinVia::ExclusiveLease,
            revoke,
            self.flags.nonblocking,
        )
    }
}

impl Fs {
    /// Whether `owner` holds an active unbreakable layout lease
    /// (`F_LAYOUT|F_EXCLUSIVE`) covering `[start, end)` of `ino`: what
    /// entitles a long-term pin through a handle or an ordinary shared
    /// mapping (SPEC §4.2). A lease being broken no longer entitles.
    pub(crate) fn holds_unbreakable_lease(
        &self,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
    ) -> Result<bool> {
        let key = {
            let st = self.state.read();
            super::file_key(ino, st.inode(ino)?.generation)
        };
        Ok(self.leases.list_file(key).iter().any(|l| {
            l.kind == LeaseKind::Layout
                && l.unbreakable
                && l.state == LeaseState::Active
                && l.owner == OwnerId(owner)
                && l.range.start <= start
                && l.range.end >= end
        }))
    }

    /// Make `[start, end)` (block-aligned, inside the file) of `ino` written
    /// and private — allocating holes (zeroed), converting unwritten extents,
    /// unsharing reflinked blocks — as a layout change by `owner`, durable
    /// when it returns; what a long-term pin and an on-demand-paging device
    /// fault both need before a device may reach the blocks. Returns the
    /// layout change's guard (`None` when nothing had to change) and the
    /// state lock, held exclusively so the blocks cannot change before the
    /// caller has looked at them. `EINVAL` past end of file.
    pub(super) fn make_written_private(
        self: &Arc<Self>,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        nonblocking: bool,
    ) -> Result<(
        Option<LayoutChangeGuard>,
        parking_lot::RwLockWriteGuard<'_, FsState>,
    )> {
        let fs = self;
        // Making the range written and private is the holder's own layout
        // change: it needs no notification to the holder. A range that
        // already is changes nothing, so it takes no layout change at all —
        // which also lets owners holding unbreakable leases over the same
        // written range each pin it (their leases refuse each other's
        // layout changes, not each other's pins).
        let ready = |st: &FsState| -> Result<bool> {
            let inode = st.inode(ino)?;
            if end.div_ceil(BLOCK_SIZE) > inode.size.div_ceil(BLOCK_SIZE) {
                return Err(Errno::EINVAL.into());
            }
            Ok(inode
                .extents
                .segments(start / BLOCK_SIZE, end / BLOCK_SIZE)
                .iter()
                .all(|seg| match *seg {
                    super::Segment::Mapped {
                        physical,
                        len,
                        unwritten,
                        ..
                    } => !unwritten && st.refcounts_all_one(physical, len),
                    super::Segment::Hole { .. } => false,
                }))
        };
        let mut take_change = !ready(&fs.state.read())?;
        let (layout, st) = loop {
            let layout = match take_change {
                true => Some(fs.layout_change(
                    fs.node_of(ino)?,
                    ByteRange::new(start, end),
                    owner,
                    nonblocking,
                )?),
                false => None,
            };
            let mut st = fs.state.write();
            if !ready(&st)? {
                if layout.is_none() {
                    // Changed between the two looks: take the layout change
                    // after all (guard before state lock: the lock order).
                    take_change = true;
                    continue;
                }
                let mut op = Op::new(&mut st, &*fs.media);
                write_range(&mut op, ino, start, end - start, Source::Keep)?;
                op.commit()?;
            }
            break (layout, st);
        };
        Ok((layout, st))
    }

    /// Pin `[start, end)` (block-aligned) of `ino` for `owner`, entitled by
    /// `via` (the caller checked the entitlement).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pin_range(
        self: &Arc<Self>,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        via: PinVia,
        revoke: Option<RevokeFn>,
        nonblocking: bool,
    ) -> Result<Pin> {
        let fs = self.clone();
        let (_layout, mut st) = self.make_written_private(ino, owner, start, end, nonblocking)?;
        let mut blocks: Vec<Run> = Vec::new();
        for seg in st
            .inode(ino)?
            .extents
            .segments(start / BLOCK_SIZE, end / BLOCK_SIZE)
        {
            match seg {
                super::Segment::Mapped {
                    physical,
                    len,
                    unwritten: false,
                    ..
                } => match blocks.last_mut() {
                    Some(r) if r.end() == physical => r.len += len,
                    _ => blocks.push(Run {
                        start: physical,
                        len,
                    }),
                },
                _ => unreachable!("a pinned range was just made written"),
            }
        }
        let info = PinInfo {
            id: PinId(0),
            owner,
            ino,
            offset: start,
            len: end - start,
            blocks,
            via,
            revoked: false,
        };
        let id = st.pins.insert(info, revoke)?;
        st.runtime(ino).pins.fetch_add(1, Ordering::Relaxed);
        drop(st);
        Ok(Pin { fs, id })
    }
}

impl Fs {
    /// The truncate policy in force.
    pub fn policy(&self) -> TruncatePolicy {
        self.policy
    }

    /// Every long-term pin, by id.
    pub fn pins(&self) -> Vec<PinInfo> {
        self.state.read().pins.list()
    }

    /// The busy extents (SPEC §9): pool blocks removed from files that a
    /// pin, broken mapping or registration may still reach, not free until
    /// it lets go.
    pub fn busy_extents(&self) -> Vec<Run> {
        self.state.read().alloc.busy_extents()
    }

    /// Test-only negative control: with protection off, layout changes
    /// ignore pins and free pinned blocks at once, so a device can write into
    /// blocks another file was given. Tests use it to show they can fail.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_pin_protection_for_tests(&self) {
        self.state.write().protect_pinned = false;
    }

    /// Drop a pin: blocks no pin reaches any more leave the busy list; an
    /// unlinked inode nothing else keeps is freed.
    fn unpin(&self, id: PinId) {
        let mut st = self.state.write();
        let Some(ino) = st.pins.get(id).map(|e| e.info.ino) else {
            return;
        };
        let freed = st.pins.remove(id).unwrap_or_default();
        for r in freed {
            super::mmap::release_unpinned(&mut st, r);
        }
        if let Some(rt) = st.runtime.get(&ino).cloned() {
            rt.pins.fetch_sub(1, Ordering::Relaxed);
        }
        if !st.in_use(ino) && st.inodes.get(&ino).is_some_and(|i| i.nlink == 0) {
            let mut op = Op::new(&mut st, &*self.media);
            let freed = match op.free_inode(ino) {
                Ok(()) => op.commit(),
                Err(e) => Err(e),
            };
            if let Err(e) = freed {
                tracing::error!(ino, error = %e, "freeing an unlinked file at last unpin failed");
            }
        }
        drop(st);
        *self.unpins.lock() += 1;
        self.unpinned.notify_all();
    }

    fn pinned_in(&self, ino: u64, start: u64, end: u64) -> Vec<PinId> {
        let st = self.state.read();
        if !st.protect_pinned || start >= end {
            return Vec::new();
        }
        st.pins.of_file_range(ino, start, end)
    }

    /// The start of a layout change that may remove the blocks `[start,
    /// end)` of `ino` (SPEC §4.3), by `breaker`: fixes the operation's one
    /// bound — lease-break-time from now — and applies `fail`, which refuses
    /// at once, before any lease break, when a pin reaches those blocks, and
    /// tells each pin holder (other than the breaker) with the same
    /// `Refused` event an unbreakable lease's holder gets. The bound returned
    /// is then shared by the lease breaks ([`Fs::layout_change_until`]) and
    /// the wait for pins ([`Fs::pins_after_break`]), so that the whole
    /// operation waits at most lease-break-time (SPEC §3.3.5), not once per
    /// phase.
    pub(super) fn pins_before_break(
        &self,
        node: Node,
        start: u64,
        end: u64,
        breaker: u64,
    ) -> Result<BreakDeadline> {
        let ino = node.ino;
        // Never the pins of a later file in the slot (`ESTALE`).
        self.state.read().node(node)?;
        let deadline = self.leases.break_deadline();
        if self.policy != TruncatePolicy::Fail {
            return Ok(deadline);
        }
        let pins = self.pinned_in(ino, start, end);
        if pins.is_empty() {
            return Ok(deadline);
        }
        tracing::info!(target: "pinfs::pin", ino, start, end, "layout change over pinned blocks refused (fail)");
        let (key, holders) = {
            let st = self.state.read();
            st.node(node)?;
            let key = super::file_key(ino, node.generation);
            let holders: Vec<OwnerId> = pins
                .iter()
                .filter_map(|&id| st.pins.get(id).map(|e| OwnerId(e.info.owner)))
                .collect();
            (key, holders)
        };
        // Told with no file-system lock held: the holders' callbacks may call
        // back into the file system (unpin, release a lease).
        self.leases
            .notify_refused(key, &holders, ByteRange::new(start, end), OwnerId(breaker));
        Err(Errno::ETXTBSY.into())
    }

    /// [`Fs::layout_change`] bounded by the operation's deadline from
    /// [`Fs::pins_before_break`]: leases it breaks are forced by then at
    /// the latest.
    pub(super) fn layout_change_until(
        &self,
        node: Node,
        range: ByteRange,
        owner: u64,
        nonblocking: bool,
        deadline: BreakDeadline,
    ) -> Result<LayoutChangeGuard> {
        self.layout_change_bounded(node, range, owner, nonblocking, Some(deadline))
    }

    /// The `wait` and `revoke` policies, after the lease break: wait for the
    /// pins over `[start, end)` of `ino` to drop until the operation's
    /// `deadline` (the one the lease break had: together they wait at most
    /// lease-break-time; forever when it is 0); then `ETXTBSY` (`wait`) or
    /// revoke (`revoke`).
    pub(super) fn pins_after_break(
        &self,
        node: Node,
        start: u64,
        end: u64,
        deadline: BreakDeadline,
    ) -> Result<()> {
        let ino = node.ino;
        if !matches!(self.policy, TruncatePolicy::Wait | TruncatePolicy::Revoke) {
            return Ok(());
        }
        // The engine's clock converted once to the condition variable's.
        let deadline = self
            .leases
            .time_left(deadline)
            .map(|left| Instant::now() + left);
        loop {
            let mut seen = self.unpins.lock();
            if self.pinned_in(ino, start, end).is_empty() {
                return Ok(());
            }
            match deadline {
                None => self.unpinned.wait(&mut seen),
                Some(d) => {
                    if Instant::now() >= d || self.unpinned.wait_until(&mut seen, d).timed_out() {
                        break;
                    }
                }
            }
        }
        if self.policy == TruncatePolicy::Wait {
            tracing::info!(target: "pinfs::pin", ino, start, end, "pins did not drop within lease-break-time (wait)");
            return Err(Errno::ETXTBSY.into());
        }
        self.revoke_pins(node, start, end)
    }

    /// Revoke the pins over a range: each device is told to stop and, once
    /// its revoke function confirms, can no longer reach the blocks, so the
    /// pin is dropped (SPEC §6.3). Pins without a revoke function cannot be
    /// revoked, and a revocation that was not confirmed keeps its pin: their
    /// blocks go to the busy list when the change frees them.
    fn revoke_pins(&self, node: Node, start: u64, end: u64) -> Result<()> {
        let ino = node.ino;
        let ids = self.pinned_in(ino, start, end);
        let revocable: Vec<(PinId, RevokeFn)> = {
            let st = self.state.read();
            // Never the pins of a later file in the slot (`ESTALE`).
            st.node(node)?;
            ids.iter()
                .filter_map(|&id| {
                    st.pins
                        .get(id)
                        .and_then(|e| e.revoke.clone().map(|r| (id, r)))
                })
                .collect()
        };
        for (id, revoke) in revocable {
            tracing::warn!(target: "pinfs::pin", pin = id.0, ino, "revoking a long-term pin at lease-break-time");
            if let Err(e) = revoke() {
                tracing::error!(target: "pinfs::pin", pin = id.0, ino, error = %e, "revocation not confirmed: the pin stays and its blocks stay busy");
                continue;
            }
            if let Some(e) = self.state.write().pins.get_mut(id) {
                e.info.revoked = true;
            }
            self.unpin(id);
        }
        Ok(())
    }
}
