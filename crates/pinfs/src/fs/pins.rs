//! Long-term pins of file ranges, and what layout changes do about them
//! (SPEC §4).
//!
//! A long-term pin is opt-in: it needs an unbreakable layout lease of the
//! pinning owner over the range, or a live `MAP_DIRECT` mapping covering it
//! (`Mapping::pin_long_term`, in `mmap.rs`); `EPERM` otherwise. Pinning first makes the
//! range written and private — holes allocated zeroed, unwritten blocks
//! zeroed and converted, shared blocks copied — so a device can write to the
//! blocks without exposing stale data or touching another file; it then
//! records the pool blocks, which the owner hands to its device.
//!
//! A layout change that removes pinned blocks from a file applies the
//! truncate policy: `fail` refuses before any lease break, `wait` waits for
//! the pins to drop (at most lease-break-time), `revoke` waits and then
//! revokes them, `defer` goes ahead. Whatever the policy, blocks a pin still
//! reaches never return to free space: `FsState::release_blocks` puts them on
//! the busy-extent list, and the last unpin frees them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::ops::{write_range, Source};
use super::state::Op;
use super::{Fs, Handle};
use crate::alloc::Run;
use crate::format::{BLOCK_SIZE, MAX_FILE_BYTES};
use crate::lease::{ByteRange, LeaseKind, LeaseState, OwnerId};
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
        let entitled = fs.leases.list_file(self.key).iter().any(|l| {
            l.kind == LeaseKind::Layout
                && l.unbreakable
                && l.state == LeaseState::Active
                && l.owner == OwnerId(owner)
                && l.range.start <= start
                && l.range.end >= end
        });
        if !entitled {
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
        // Making the range written and private is the holder's own layout
        // change: it needs no notification to the holder.
        let _layout = fs.layout_change(ino, ByteRange::new(start, end), owner, nonblocking)?;
        let mut st = fs.state.write();
        if end.div_ceil(BLOCK_SIZE) > st.inode(ino)?.size.div_ceil(BLOCK_SIZE) {
            return Err(Errno::EINVAL.into());
        }
        let mut op = Op::new(&mut st, &*fs.media);
        write_range(&mut op, ino, start, end - start, Source::Keep)?;
        op.commit()?;
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
            st.alloc.release_busy(r);
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

    /// The `fail` policy, checked before any lease break: a layout change
    /// that would remove pinned blocks `[start, end)` of `ino` fails at once.
    pub(super) fn pins_before_break(&self, ino: u64, start: u64, end: u64) -> Result<()> {
        if self.policy == TruncatePolicy::Fail && !self.pinned_in(ino, start, end).is_empty() {
            tracing::info!(target: "pinfs::pin", ino, start, end, "layout change over pinned blocks refused (fail)");
            return Err(Errno::ETXTBSY.into());
        }
        Ok(())
    }

    /// The `wait` and `revoke` policies, after the lease break: wait for the
    /// pins over `[start, end)` of `ino` to drop, at most lease-break-time
    /// (forever when it is 0); then `ETXTBSY` (`wait`) or revoke (`revoke`).
    pub(super) fn pins_after_break(&self, ino: u64, start: u64, end: u64) -> Result<()> {
        if !matches!(self.policy, TruncatePolicy::Wait | TruncatePolicy::Revoke) {
            return Ok(());
        }
        let break_time = self.leases.break_time();
        let deadline = (!break_time.is_zero()).then(|| Instant::now() + break_time);
        loop {
            let mut seen = self.unpins.lock();
            if self.pinned_in(ino, start, end).is_empty() {
                return Ok(());
            }
            match deadline {
                None => self.unpinned.wait(&mut seen),
                Some(d) => {
                    if self.unpinned.wait_until(&mut seen, d).timed_out() {
                        break;
                    }
                }
            }
        }
        if self.policy == TruncatePolicy::Wait {
            tracing::info!(target: "pinfs::pin", ino, start, end, "pins did not drop within lease-break-time (wait)");
            return Err(Errno::ETXTBSY.into());
        }
        self.revoke_pins(ino, start, end);
        Ok(())
    }

    /// Revoke the pins over a range: each device is told to stop and, once
    /// its revoke function returns, can no longer reach the blocks, so the
    /// pin is dropped (SPEC §6.3). Pins without a revoke function cannot be
    /// revoked; their blocks go to the busy list when the change frees them.
    fn revoke_pins(&self, ino: u64, start: u64, end: u64) {
        let ids = self.pinned_in(ino, start, end);
        let revocable: Vec<(PinId, RevokeFn)> = {
            let st = self.state.read();
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
            revoke();
            if let Some(e) = self.state.write().pins.get_mut(id) {
                e.info.revoked = true;
            }
            self.unpin(id);
        }
    }
}
