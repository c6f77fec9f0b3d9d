//! One memory region of the soft device: its page-granular translation
//! table and the copy loop that is the only way any access reaches memory.
//!
//! The table maps each page of the region's IOVA range to a pool page (with
//! a write permission bit), to the region's scratch page (redirected), to
//! nothing (invalidated: the access is a protection error), or to "not yet
//! faulted" (on-demand paging: ask the [`PageSource`]).
//!
//! Confirmation rests on one lock per region, `table`: a worker holds its
//! read side for the whole of each copy (one page, or a short run of
//! physically contiguous pages, at most [`COPY_RUN_PAGES`]) and re-reads the
//! translation for every copy; `revoke`, `invalidate_pages` and
//! `deregister` change the table under the write side. So when one of them
//! returns, every copy that used an old translation has finished, and every
//! later copy sees the new one: no access reaches a withdrawn pool page.
//!
//! On-demand paging follows the mmu-notifier pattern: a worker that meets an
//! untranslated page notes the table's invalidation sequence, drops the lock,
//! calls [`PageSource::fault`] holding no device lock, then installs the
//! answer only if no invalidation happened meanwhile (else it retries, at
//! most [`MAX_FAULT_RETRIES`] times per page). Because no device lock is
//! ever held across `fault`, and the write side waits only for copies in
//! progress (bounded memory copies that never call out), the file system
//! may call `invalidate_pages` while holding its own locks — even from
//! inside `fault` — without deadlock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::mem::{PoolWindow, ScratchPage};
use crate::dma::{Completion, MrKeys, PageSource, RevokeMode, PAGE_BYTES};
use crate::{Errno, Result};

/// Longest run of physically contiguous pages copied under one hold of the
/// read lock: bounds how long `revoke` waits (64 KiB of copying) while
/// sparing a 1 MiB request 256 lock round trips.
pub const COPY_RUN_PAGES: u64 = 16;

/// Faults one page may take within one request before the request gives up
/// with [`Completion::PageFault`] (each retry means an invalidation raced the
/// fault; the file system is changing the range faster than we can use it).
pub const MAX_FAULT_RETRIES: u32 = 16;

/// Table entry: invalidated (no translation; the access is refused).
const INVALID: u64 = u64::MAX;
/// Table entry: not faulted in yet (on-demand paging).
const UNFAULTED: u64 = u64::MAX - 1;
/// Table entry: the region's scratch page (redirected).
const SCRATCH: u64 = u64::MAX - 2;
/// Low bit of a pool entry: the translation allows writes (pool offsets are
/// page-aligned, so their low 12 bits are free; the sentinels above are not
/// page-aligned with bit 0 alone set, so they never decode as pool pages).
const WRITABLE: u64 = 1;

/// What a table entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Translation {
    Pool { offset: u64, writable: bool },
    Scratch,
    Invalid,
    Unfaulted,
}

fn decode(entry: u64) -> Translation {
    match entry {
        INVALID => Translation::Invalid,
        UNFAULTED => Translation::Unfaulted,
        SCRATCH => Translation::Scratch,
        e => Translation::Pool {
            offset: e & !(PAGE_BYTES - 1),
            writable: e & WRITABLE != 0,
        },
    }
}

fn pool_entry(offset: u64, writable: bool) -> u64 {
    offset | if writable { WRITABLE } else { 0 }
}

/// Whether `offset` names a whole page of a pool of `pool_len` bytes.
pub(super) fn valid_pool_page(offset: u64, pool_len: u64) -> bool {
    offset.is_multiple_of(PAGE_BYTES)
        && offset
            .checked_add(PAGE_BYTES)
            .is_some_and(|end| end <= pool_len)
}

/// The translation table, under the region's lock.
struct Table {
    /// One entry per page.
    entries: Vec<u64>,
    /// Invalidation sequence: bumped by every change that removes
    /// translations, so a fault that raced one does not install.
    seq: u64,
    /// Revoked: nothing is faulted in any more.
    revoked: bool,
    /// Deregistered: nothing is reached any more.
    dead: bool,
}

/// An access: the bytes a write brings or the buffer a read fills.
pub(super) enum Access<'a> {
    Write(&'a [u8]),
    Read(&'a mut [u8]),
}

impl Access<'_> {
    fn len(&self) -> usize {
        match self {
            Access::Write(d) => d.len(),
            Access::Read(b) => b.len(),
        }
    }

    fn is_write(&self) -> bool {
        matches!(self, Access::Write(_))
    }
}

/// One memory region.
pub(super) struct Region {
    /// Its addresses and keys.
    pub(super) keys: MrKeys,
    /// Length in pages.
    pub(super) pages: u64,
    /// How it is revoked.
    pub(super) mode: RevokeMode,
    table: RwLock<Table>,
    /// Mirror of `Table::revoked`, read without the lock by `is_revoked`.
    revoked: AtomicBool,
    /// Who answers faults (on-demand paging only).
    source: Option<Arc<dyn PageSource>>,
    /// Where redirected accesses land (redirect mode only): one page shared
    /// by every page of the region, allocated at registration so that
    /// `revoke` cannot fail.
    scratch: Option<ScratchPage>,
}

impl Region {
    /// A pinned region over `pool_pages` (already validated).
    pub(super) fn pinned(keys: MrKeys, mode: RevokeMode, pool_pages: &[u64]) -> Result<Region> {
        let scratch = match mode {
            RevokeMode::Redirect => Some(ScratchPage::new()?),
            _ => None,
        };
        let entries = pool_pages.iter().map(|&p| pool_entry(p, true)).collect();
        Ok(Region::with(keys, mode, entries, None, scratch))
    }

    /// An on-demand region of `pages` pages, none translated.
    pub(super) fn on_demand(keys: MrKeys, pages: u64, source: Arc<dyn PageSource>) -> Region {
        let entries = vec![UNFAULTED; pages as usize];
        Region::with(keys, RevokeMode::Odp, entries, Some(source), None)
    }

    fn with(
        keys: MrKeys,
        mode: RevokeMode,
        entries: Vec<u64>,
        source: Option<Arc<dyn PageSource>>,
        scratch: Option<ScratchPage>,
    ) -> Region {
        Region {
            keys,
            pages: entries.len() as u64,
            mode,
            table: RwLock::new(Table {
                entries,
                seq: 0,
                revoked: false,
                dead: false,
            }),
            revoked: AtomicBool::new(false),
            source,
            scratch,
        }
    }

    /// Whether the region has been revoked.
    pub(super) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Withdraw access in the region's mode; when this returns no copy that
    /// used an old translation is still running (the write side waited for
    /// them). Idempotent.
    pub(super) fn revoke(&self) {
        let mut t = self.table.write();
        if t.revoked {
            return;
        }
        let fill = match self.mode {
            RevokeMode::Redirect => SCRATCH,
            RevokeMode::Invalidate | RevokeMode::Odp => INVALID,
        };
        t.entries.fill(fill);
        t.seq += 1;
        t.revoked = true;
        self.revoked.store(true, Ordering::Release);
    }

    /// Drop the translations of pages `first..first + count` (on-demand
    /// paging; a no-op for pinned regions and after revocation).
    pub(super) fn invalidate_pages(&self, first: u64, count: u64) -> Result<()> {
        let end = first.checked_add(count).ok_or(Errno::EINVAL)?;
        if end > self.pages {
            return Err(Errno::EINVAL.into());
        }
        if self.source.is_none() || count == 0 {
            return Ok(());
        }
        let mut t = self.table.write();
        if t.revoked || t.dead {
            return Ok(());
        }
        t.entries[first as usize..end as usize].fill(UNFAULTED);
        t.seq += 1;
        Ok(())
    }

    /// Deregistration: after this no access reaches anything (waits for the
    /// copies in progress, as `revoke` does).
    pub(super) fn kill(&self) {
        let mut t = self.table.write();
        t.dead = true;
        t.seq += 1;
    }

    /// Perform `access` at region byte `start`, page by page, re-reading the
    /// translation under the read lock for every copy.
    pub(super) fn access(
        &self,
        pool: &PoolWindow,
        start: u64,
        mut access: Access<'_>,
    ) -> Completion {
        let len = access.len() as u64;
        if !self.in_bounds(start, len) {
            return Completion::ProtectionError;
        }
        let write = access.is_write();
        let mut done = 0u64;
        let mut faults = 0u32;
        while done < len {
            let pos = start + done;
            let page = pos / PAGE_BYTES;
            let in_page = pos % PAGE_BYTES;
            let t = self.table.read();
            if t.dead {
                return Completion::ProtectionError;
            }
            let chunk = match decode(t.entries[page as usize]) {
                Translation::Invalid => return Completion::ProtectionError,
                Translation::Scratch => {
                    let chunk = (PAGE_BYTES - in_page).min(len - done);
                    let Some(scratch) = &self.scratch else {
                        return Completion::DeviceError(libc::EFAULT);
                    };
                    let r = done as usize..(done + chunk) as usize;
                    let ok = match &mut access {
                        Access::Write(d) => scratch.copy_in(in_page, &d[r]),
                        Access::Read(b) => scratch.copy_out(in_page, &mut b[r]),
                    };
                    if !ok {
                        return Completion::DeviceError(libc::EFAULT);
                    }
                    chunk
                }
                Translation::Pool { offset, writable } if writable || !write => {
                    // Extend over physically contiguous pages with the same
                    // permission, within the request and the run bound.
                    let last_page = (start + len - 1) / PAGE_BYTES;
                    let mut run_end = page + 1;
                    while run_end <= last_page
                        && run_end < page + COPY_RUN_PAGES
                        && decode(t.entries[run_end as usize])
                            == (Translation::Pool {
                                offset: offset + (run_end - page) * PAGE_BYTES,
                                writable,
                            })
                    {
                        run_end += 1;
                    }
                    let chunk = (run_end * PAGE_BYTES).min(start + len) - pos;
                    let r = done as usize..(done + chunk) as usize;
                    let ok = match &mut access {
                        Access::Write(d) => pool.copy_in(offset + in_page, &d[r]),
                        Access::Read(b) => pool.copy_out(offset + in_page, &mut b[r]),
                    };
                    if !ok {
                        return Completion::DeviceError(libc::EFAULT);
                    }
                    chunk
                }
                Translation::Pool { .. } | Translation::Unfaulted => {
                    let Some(source) = &self.source else {
                        // A pinned region is never untranslated nor
                        // read-only: a table bug, refused.
                        return Completion::ProtectionError;
                    };
                    if t.revoked {
                        return Completion::ProtectionError;
                    }
                    let seq = t.seq;
                    drop(t);
                    faults += 1;
                    if faults > MAX_FAULT_RETRIES {
                        return Completion::PageFault;
                    }
                    // No device lock is held here (see the module doc).
                    let offset = match source.fault(page, write) {
                        Ok(o) if valid_pool_page(o, pool.len_bytes()) => o,
                        _ => return Completion::PageFault,
                    };
                    let mut t = self.table.write();
                    if t.seq == seq && !t.revoked && !t.dead {
                        t.entries[page as usize] = pool_entry(offset, write);
                    }
                    continue;
                }
            };
            done += chunk;
            faults = 0;
        }
        Completion::Ok
    }

    /// Negative control only: the broken device — translations read once at
    /// the start of the request and cached, copies made without the lock, so
    /// `revoke`, `invalidate_pages` and `deregister` wait for nothing and
    /// in-flight requests keep writing the old pages. (A request that finds
    /// an untranslated page takes the real path, so that on-demand regions
    /// still fault in.)
    #[cfg(feature = "negative-controls")]
    pub(super) fn access_cached(
        &self,
        pool: &PoolWindow,
        start: u64,
        mut access: Access<'_>,
    ) -> Completion {
        let len = access.len() as u64;
        if !self.in_bounds(start, len) {
            return Completion::ProtectionError;
        }
        if len == 0 {
            return Completion::Ok;
        }
        let (first, last) = (start / PAGE_BYTES, (start + len - 1) / PAGE_BYTES);
        let cached: Vec<u64> = {
            let t = self.table.read();
            if t.dead {
                return Completion::ProtectionError;
            }
            t.entries[first as usize..=last as usize].to_vec()
        };
        // Pages to fault in: the real path (faults are not what this
        // control breaks; it breaks what happens after the lookup).
        if cached.iter().any(|&e| {
            !matches!(
                decode(e),
                Translation::Pool { writable: true, .. }
                    | Translation::Scratch
                    | Translation::Invalid
            )
        }) {
            return self.access(pool, start, access);
        }
        let mut done = 0u64;
        while done < len {
            let pos = start + done;
            let in_page = pos % PAGE_BYTES;
            let chunk = (PAGE_BYTES - in_page).min(len - done);
            let r = done as usize..(done + chunk) as usize;
            let ok = match decode(cached[(pos / PAGE_BYTES - first) as usize]) {
                Translation::Pool { offset, .. } => match &mut access {
                    Access::Write(d) => pool.copy_in(offset + in_page, &d[r]),
                    Access::Read(b) => pool.copy_out(offset + in_page, &mut b[r]),
                },
                Translation::Scratch => match (&self.scratch, &mut access) {
                    (Some(s), Access::Write(d)) => s.copy_in(in_page, &d[r]),
                    (Some(s), Access::Read(b)) => s.copy_out(in_page, &mut b[r]),
                    (None, _) => false,
                },
                Translation::Invalid | Translation::Unfaulted => {
                    return Completion::ProtectionError
                }
            };
            if !ok {
                return Completion::DeviceError(libc::EFAULT);
            }
            done += chunk;
        }
        Completion::Ok
    }

    /// Whether region bytes `start..start + len` lie inside the region.
    fn in_bounds(&self, start: u64, len: u64) -> bool {
        start
            .checked_add(len)
            .is_some_and(|end| end <= self.pages * PAGE_BYTES)
    }
}
