//! Mappings in client processes, on the file system's side (SPEC §8):
//! `Handle::mmap_remote` and what a [`RemoteMapping`] does. Everything but
//! the page tables is the local mapping's code — the checks and the
//! `MAP_DIRECT` lease (`map_range`), what each page shows (`desired`), the
//! re-placement inside `Op::install` (`affected`/`replace`), write faults
//! (`Fs::write_fault`), blocks held for a broken mapping (`held.rs`),
//! `persist`, pins and registrations — because a `RemoteMapping` *is* a
//! [`Mapping`] whose space is the client's ([`crate::map::RemoteSpace`]).

use super::*;
use crate::dma::{Device, RevokeMode};
use crate::fs::Registration;
use crate::map::RemoteMapping;

impl Handle {
    /// Map `[offset, offset+len)` of the file into a client process whose
    /// address space `space` reaches (SPEC §8): the same checks as
    /// [`Handle::mmap`] (`EINVAL`, `EACCES` for the handle's mode and for
    /// `MAP_DIRECT` on a file the caller does not own without
    /// `CAP_LEASE`, `EOPNOTSUPP` for pools that cannot be placed page by
    /// page), the same `MAP_DIRECT` lease; no `vm.max_map_count` budget
    /// (the areas are the client's). Before it returns, the whole range was
    /// placed through `space` — so the client must have reserved its
    /// mapping and be ready to apply placements before it asks. If the
    /// client does not acknowledge that first placement, the mapping comes
    /// back already broken ([`RemoteMapping::is_broken`]): the caller should
    /// fence the client and drop it once its death is confirmed.
    pub fn mmap_remote(
        &self,
        offset: u64,
        len: u64,
        flags: MapFlags,
        space: Arc<dyn RemoteSpace>,
    ) -> Result<RemoteMapping> {
        let mapping = self.map_range(offset, len, flags, Some(space))?;
        Ok(RemoteMapping { mapping })
    }
}

impl RemoteMapping {
    /// Its id: the `map` of every [`RemoteSpace::place`] call for it, and
    /// the mapping in pin listings (`PinVia::DirectMapping(id)`).
    pub fn id(&self) -> u64 {
        self.mapping.id()
    }

    /// Length in bytes, as asked for.
    pub fn len(&self) -> u64 {
        self.mapping.len()
    }

    /// Never true: mappings are at least one byte long.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// File offset of the first byte.
    pub fn file_offset(&self) -> u64 {
        self.mapping.file_offset()
    }

    /// The effective flags.
    pub fn flags(&self) -> MapFlags {
        self.mapping.flags()
    }

    /// Its `MAP_DIRECT` layout lease, while held.
    pub fn lease(&self) -> Option<crate::lease::LeaseId> {
        self.mapping.lease()
    }

    /// Whether the `MAP_DIRECT` lease was lost and every page was made
    /// `SIGBUS`.
    pub fn is_invalidated(&self) -> bool {
        self.mapping.is_invalidated()
    }

    /// Whether the client did not acknowledge a placement: it is sent
    /// nothing more, and every pool block it may still reach stays busy
    /// until this guard is dropped.
    pub fn is_broken(&self) -> bool {
        self.mapping.is_broken()
    }

    /// A store of the client faulted on page `page` of the mapping (a hole,
    /// an unwritten block, a shared block's write-protected copy): do what
    /// a local write fault does — allocate a zeroed block, convert, or
    /// unshare, durably, committed — and return once the page's
    /// re-placement was acknowledged, so the client can wake the storing
    /// thread. An error (`EFAULT` for a `MAP_DIRECT` store that would
    /// allocate or convert, `ENOSPC`, `EIO` for a broken mapping, `EINVAL`
    /// for a page past the mapping) means the store must raise `SIGBUS`:
    /// the page was made `SIGBUS` in the client first, where the mapping is
    /// not broken.
    pub fn write_fault(&self, page: u64) -> Result<()> {
        let m = &*self.mapping.inner;
        let fs = &self.mapping.fs;
        if page >= m.pages() {
            return Err(Errno::EINVAL.into());
        }
        if m.placed.lock().broken {
            return Err(Errno::EIO.into());
        }
        match fs.write_fault(m, page) {
            Ok(()) if m.placed.lock().broken => Err(Errno::EIO.into()),
            Ok(()) => Ok(()),
            Err(e) => {
                fs.sigbus_page(m, page);
                Err(e)
            }
        }
    }

    /// Make the client's stores to `[offset, offset+len)` (into the
    /// mapping) durable, as [`Mapping::persist`] (the pool blocks' cache
    /// lines are written back from this process: same memory).
    pub fn persist(&self, offset: u64, len: u64) -> Result<()> {
        self.mapping.persist(offset, len)
    }

    /// A long-term pin through the mapping, as [`Mapping::pin_long_term`].
    pub fn pin_long_term(
        &self,
        offset: u64,
        len: u64,
        revoke: Option<crate::pin::RevokeFn>,
    ) -> Result<crate::fs::Pin> {
        self.mapping.pin_long_term(offset, len, revoke)
    }

    /// Register a range of the mapping with a device of this process (the
    /// daemon's), as [`Mapping::register`].
    pub fn register(
        &self,
        device: Arc<dyn Device>,
        offset: u64,
        len: u64,
        mode: RevokeMode,
    ) -> Result<Registration> {
        self.mapping.register(device, offset, len, mode)
    }
}

impl Fs {
    /// Test-only negative control: layout changes stop re-placing mappings
    /// in client processes (nothing is sent), so a client keeps reaching
    /// blocks after they are freed and given to another file.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_remote_replacement_for_tests(&self) {
        self.state.write().maps.remote_replace_disabled = true;
    }
}
