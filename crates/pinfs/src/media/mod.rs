//! The media a pool lives on, and the persistence primitives.
//!
//! Everything above this module sees a pool as a [`Media`]: a byte-addressable
//! range with explicit persistence (`flush` a range, then `fence`). Only this
//! module touches raw pool memory; the rest of the crate goes through bounds-
//! checked copies, so no `&`/`&mut` reference ever points into memory that a
//! device or another process may write concurrently.
//!
//! Backends: a regular file (page cache, persisted with `msync`), a file on
//! tmpfs or hugetlbfs, a memfd (volatile), a device-dax character device, and
//! the [`recording`] media that logs stores, flushes and fences so tests can
//! build the image a crash would leave at any point.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use crate::Result;

pub mod flush;
pub mod lock;
pub mod mapped;
pub mod recording;
pub mod volatile;

pub use mapped::{HugePolicy, MappedPool};
pub use recording::RecordingMedia;

/// How long data written to a pool lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Survives a reboot (regular file, device-dax on real persistent memory).
    AcrossReboot,
    /// Lasts until the host reboots (tmpfs, hugetlbfs).
    UntilHostReboot,
    /// Lasts while some process holds the pool open (memfd).
    ProcessLifetime,
}

/// What kind of backend a pool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    /// A regular file on a block file system, mapped through the page cache.
    File,
    /// A file on tmpfs (`/dev/shm`).
    Tmpfs,
    /// A file on hugetlbfs.
    Hugetlbfs,
    /// An anonymous memfd.
    Memfd,
    /// A device-dax character device (`/dev/daxX.Y`).
    DevDax,
    /// In-memory test media that records stores, flushes and fences.
    Recording,
}

/// How `flush` makes stores durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMethod {
    /// Write back cache lines with `clwb` (keeps them cached).
    Clwb,
    /// Write back and evict cache lines with `clflushopt`.
    Clflushopt,
    /// Write back and evict cache lines with `clflush` (serialising).
    Clflush,
    /// `msync(MS_SYNC)` of the pages (page-cache backed pools).
    Msync,
    /// Nothing to do (recording media logs the call instead).
    None,
}

/// What a backend can do, reported by [`Media::caps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaCaps {
    /// The backend kind.
    pub kind: MediaKind,
    /// How long data lasts.
    pub durability: Durability,
    /// Whether the kernel allows long-term pins (`FOLL_LONGTERM`) of this memory:
    /// yes for memfd, tmpfs, hugetlbfs and device-dax; no for a regular file.
    pub long_term_pin: bool,
    /// How `flush` persists stores.
    pub flush: FlushMethod,
    /// The page size the pool is mapped with (4 KiB, or 2 MiB for hugetlbfs
    /// and device-dax).
    pub page_size: u64,
    /// Whether the kernel backs this 4 KiB-page pool with transparent 2 MiB
    /// pages (shmem THP: a memfd with `shmem_enabled` `always`,
    /// `within_size` or `advise`, or a tmpfs mounted `huge=` one of those —
    /// on first touch; or a memfd under `never`, by collapsing the whole
    /// windows it writes: `mapped::HugePolicy`).
    /// Then a 2 MiB-aligned run of pool blocks mapped at a 2 MiB-aligned
    /// address is one page-table entry, and a write fault into a wholly
    /// unallocated 2 MiB window of a mapping allocates the whole window.
    pub huge_pages: bool,
}

impl fmt::Display for MediaCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} pool: data lasts {}, {}, flush by {:?}, {} KiB pages{}",
            self.kind,
            match self.durability {
                Durability::AcrossReboot => "across reboot",
                Durability::UntilHostReboot => "until host reboot",
                Durability::ProcessLifetime => "for the process lifetime",
            },
            // What "no" means precisely: only the kernel's own pins are
            // refused; everything pinfs does itself works on every pool.
            if self.long_term_pin {
                "kernel DMA (io_uring fixed buffers) allowed"
            } else {
                "kernel DMA refused (the kernel will not pin MAP_SHARED pages of a disk \
                 file for io_uring fixed buffers; pinfs long-term pins, mappings and leases work)"
            },
            self.flush,
            self.page_size / 1024,
            if self.huge_pages {
                " (transparent 2 MiB pages)"
            } else {
                ""
            }
        )
    }
}

/// A byte-addressable pool with explicit persistence.
///
/// Stores become durable only after `flush` of their range followed by
/// `fence`. Aligned 8-byte stores made with [`Media::write_u64`] are atomic
/// with respect to crashes; nothing larger is.
pub trait Media: Send + Sync + fmt::Debug {
    /// What this backend is and can do.
    fn caps(&self) -> MediaCaps;

    /// Size of the pool in bytes.
    fn len_bytes(&self) -> u64;

    /// Copy `buf.len()` bytes at `offset` out of the pool.
    /// Fails with `EINVAL` when the range is outside the pool.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Copy `data` into the pool at `offset` (not yet durable).
    fn write(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// Set `len` bytes at `offset` to `byte` (not yet durable).
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<()>;

    /// A single, crash-atomic 8-byte store; `offset` must be 8-byte aligned.
    fn write_u64(&self, offset: u64, value: u64) -> Result<()>;

    /// Start writing back the cache lines (or pages) of a range.
    fn flush(&self, offset: u64, len: u64) -> Result<()>;

    /// Order: every flush issued before the fence is durable after it.
    fn fence(&self);

    /// Whether a file system is mounted on this media in this process: `Fs`
    /// claims it at mount (a second mount, or an fsck, of the same open
    /// media is `EBUSY`) and clears it when dropped. The pool lock
    /// ([`lock`]) keeps other processes out; this keeps a second mount of
    /// the same descriptor out (SPEC §7). `None`: media that cannot be
    /// claimed (the default).
    fn mount_flag(&self) -> Option<&std::sync::atomic::AtomicBool> {
        None
    }

    /// The pool's memory, when it is mapped into this process (every real
    /// backend; `None` for media that only emulate one). Used by direct
    /// mappings and device registrations, which must reach pool memory itself.
    fn mapping(&self) -> Option<PoolMemory<'_>> {
        None
    }
}

/// The raw memory of a mapped pool, with the descriptor it was mapped from.
#[derive(Clone, Copy, Debug)]
pub struct PoolMemory<'a> {
    /// First byte of the pool mapping.
    pub base: NonNull<u8>,
    /// Length of the mapping in bytes.
    pub len_bytes: u64,
    /// The descriptor the pool was mapped from (to map ranges elsewhere, or to
    /// pass to clients of the daemon).
    pub fd: BorrowedFd<'a>,
}

/// Checks that `offset..offset+len` lies in a pool of `pool_len` bytes.
pub fn check_range(pool_len: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= pool_len => Ok(()),
        _ => Err(crate::Errno::EINVAL.into()),
    }
}
