//! Devices that reach file memory by DMA, and what they must be able to do
//! so that the file system stays free to change a file's layout (SPEC §6).
//!
//! A device here is what an RDMA NIC is to Linux: it resolves its own
//! addresses (an IOVA range and keys) through its own translation table,
//! filled once at registration, and never asks the file system on each
//! access. That is why revocation must be explicit: the file system cannot
//! change what a device reaches by changing a page table. The interface is
//! therefore small and strict:
//!
//! - [`Device::register`] fills the table from a list of pool pages
//!   ([`Backing::Pinned`], for registrations that hold long-term pins) or
//!   leaves it empty for on-demand paging ([`Backing::OnDemand`]: the device
//!   asks a [`PageSource`] — the file system — when it meets a page without a
//!   translation);
//! - [`Device::revoke`] withdraws access in a [`RevokeMode`] and returns only
//!   once revocation is *confirmed*: no access in flight or issued later can
//!   reach the pages the registration had. Only then may the file system
//!   free those blocks (SPEC §6.3);
//! - [`Device::invalidate_pages`] (on-demand paging only) drops some
//!   translations, synchronously, before a layout change over them proceeds
//!   (SPEC §6.4);
//! - [`Device::deregister`] releases the device addresses.
//!
//! Device I/O ([`Device::write`], [`Device::read`]) is what the device does
//! on its own — an RDMA peer writing into a memory region, a `READ_FIXED`
//! landing in an io_uring fixed buffer — exposed so that tests, the command
//! line and benchmarks can drive real traffic. Its outcome is a
//! [`Completion`] status, as a completion queue reports it, not an error of
//! the file system.
//!
//! The file-system side (who may register what, the registration's own
//! layout lease and pins, the policies) is `fs/dma.rs`; this module knows
//! nothing of files, only of pool offsets.

use std::fmt;
use std::sync::Arc;

use crate::Result;

pub mod soft;
pub mod uring;

/// Bytes per device page: the granularity of every translation table here.
pub const PAGE_BYTES: u64 = 4096;

/// Longest registration, in pages (a named limit: a table grows from input).
pub const MAX_REGISTRATION_PAGES: u64 = 1 << 20; // 4 GiB

/// How a device's access is withdrawn (SPEC §6.3, §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RevokeMode {
    /// Translations removed synchronously; the IOVA range stays reserved
    /// until deregistration; later accesses complete with an error.
    Invalidate,
    /// Translations re-pointed at scratch memory that belongs to no file;
    /// the device sees no error and its writes are discarded.
    Redirect,
    /// On-demand paging: nothing pinned; translations are faulted in from the
    /// file system and invalidated by every layout change over them.
    Odp,
}

impl RevokeMode {
    /// The name used on the command line and in listings.
    pub fn name(self) -> &'static str {
        match self {
            RevokeMode::Invalidate => "invalidate",
            RevokeMode::Redirect => "redirect",
            RevokeMode::Odp => "odp",
        }
    }
}

impl fmt::Display for RevokeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RevokeMode {
    type Err = crate::Errno;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "invalidate" => Ok(RevokeMode::Invalidate),
            "redirect" => Ok(RevokeMode::Redirect),
            "odp" => Ok(RevokeMode::Odp),
            _ => Err(crate::Errno::EINVAL),
        }
    }
}

/// What a device can do (SPEC §6.3: a device that can do neither
/// `invalidate` nor `redirect` is refused over file data unless it pages on
/// demand).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCaps {
    /// Can remove translations synchronously, keeping the IOVA reserved.
    pub invalidate: bool,
    /// Can re-point translations at scratch memory.
    pub redirect: bool,
    /// Can fault translations in on demand (no pins).
    pub odp: bool,
}

impl DeviceCaps {
    /// Whether the device can be registered in `mode`.
    pub fn supports(self, mode: RevokeMode) -> bool {
        match mode {
            RevokeMode::Invalidate => self.invalidate,
            RevokeMode::Redirect => self.redirect,
            RevokeMode::Odp => self.odp,
        }
    }

    /// Whether its access can be revoked at all (either way).
    pub fn revocable(self) -> bool {
        self.invalidate || self.redirect
    }
}

/// A memory region of a device: what one registration is to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MrId(pub u64);

/// What registration hands back: the device addresses and keys a peer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MrKeys {
    /// The region.
    pub mr: MrId,
    /// First device address (I/O virtual address) of the region; the region
    /// is `pages * PAGE_BYTES` long from there.
    pub iova: u64,
    /// Local key (the device's own work requests name it).
    pub lkey: u32,
    /// Remote key (a peer's work requests name it).
    pub rkey: u32,
}

/// The file system's side of on-demand paging (SPEC §6.4).
pub trait PageSource: Send + Sync {
    /// The pool byte offset of page `page` of the registration. With
    /// `write`, the file system first makes the block written and private
    /// (allocating into a hole, converting, unsharing — a layout change by
    /// the registration's owner, durable before this returns), as a write
    /// fault would. An error makes the access complete with
    /// [`Completion::PageFault`].
    ///
    /// Called by the device *without* any lock of its own held: the file
    /// system may, while serving it, call [`Device::invalidate_pages`].
    fn fault(&self, page: u64, write: bool) -> Result<u64>;
}

/// What a registration's translation table starts from.
pub enum Backing {
    /// Page `i` of the region is the pool page at byte offset `pages[i]`
    /// (page-aligned, inside the pool). The caller holds long-term pins on
    /// them for as long as the device may reach them.
    Pinned(Vec<u64>),
    /// `pages` pages, none translated yet: the device asks `source`.
    OnDemand {
        /// Length of the region in pages.
        pages: u64,
        /// Who answers the device's page faults.
        source: Arc<dyn PageSource>,
    },
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Pinned(p) => write!(f, "Pinned({} pages)", p.len()),
            Backing::OnDemand { pages, .. } => write!(f, "OnDemand({pages} pages)"),
        }
    }
}

/// How one device access ended, as a completion queue reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Completion {
    /// Done.
    Ok,
    /// The region's translations are gone (invalidated), the key is wrong,
    /// or the access passes the region's end.
    ProtectionError,
    /// On-demand paging: the file system could not give a translation.
    PageFault,
    /// The region is deregistered or unknown.
    InvalidRegion,
    /// The device itself failed (e.g. the kernel's error for an io_uring
    /// request), with the errno when there is one.
    DeviceError(i32),
}

impl Completion {
    /// The status word printed by the command line (`ok`,
    /// `protection-error`, ...).
    pub fn name(self) -> String {
        match self {
            Completion::Ok => "ok".into(),
            Completion::ProtectionError => "protection-error".into(),
            Completion::PageFault => "page-fault".into(),
            Completion::InvalidRegion => "invalid-region".into(),
            Completion::DeviceError(e) => {
                format!("device-error ({})", crate::Errno(e).message())
            }
        }
    }
}

impl fmt::Display for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A device that reaches pool memory through its own translation table.
///
/// Implementations must be safe against every interleaving of their own
/// traffic with `revoke`, `invalidate_pages` and `deregister`: when one of
/// those returns, no access in flight or issued later reaches the pool pages
/// it withdrew (that is what "confirmed" means).
pub trait Device: Send + Sync + fmt::Debug {
    /// Its kind (`soft`, `uring`), as the command line names it.
    fn name(&self) -> &'static str;

    /// What it can do.
    fn caps(&self) -> DeviceCaps;

    /// Register a region: fill the translation table from `backing` (the
    /// device never consults the file system again for a pinned region).
    /// `mode` is how it will be revoked; a mode the device does not support
    /// is `EOPNOTSUPP`. Errors of the underlying mechanism (the kernel
    /// refusing to pin, say) come back as they are, with a message.
    fn register(&self, backing: Backing, mode: RevokeMode) -> Result<MrKeys>;

    /// Withdraw the region's access in its mode (`Invalidate` or `Redirect`;
    /// for `Odp` every translation is dropped and no new fault is answered)
    /// and return once revocation is confirmed. Idempotent.
    fn revoke(&self, mr: MrId) -> Result<()>;

    /// Whether the region has been revoked.
    fn is_revoked(&self, mr: MrId) -> bool;

    /// On-demand paging: drop the translations of pages
    /// `first..first + count`, synchronously (no access in flight still uses
    /// them when this returns); the next access re-faults. A no-op for a
    /// pinned region.
    fn invalidate_pages(&self, mr: MrId, first: u64, count: u64) -> Result<()>;

    /// Forget the region and release its device addresses, once no access
    /// can reach its pages. Idempotent.
    fn deregister(&self, mr: MrId) -> Result<()>;

    /// The device writes `data` into the region at byte `offset` (an RDMA
    /// peer's write, a `READ_FIXED` into the buffer) and waits for its
    /// completion.
    fn write(&self, mr: MrId, offset: u64, data: &[u8]) -> Result<Completion>;

    /// The device reads `buf.len()` bytes of the region at byte `offset` (an
    /// RDMA read, a `WRITE_FIXED` out of the buffer) and waits for its
    /// completion; `buf` holds the bytes when it is [`Completion::Ok`].
    fn read(&self, mr: MrId, offset: u64, buf: &mut [u8]) -> Result<Completion>;
}
