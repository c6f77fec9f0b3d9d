//! Pools mapped `MAP_SHARED` into this process: every real backend.
//!
//! [`MappedPool`] owns one shared mapping of a whole pool and the descriptor it
//! came from, and is the only code that reads and writes pool memory through
//! pointers. It recognises the backend from the descriptor (`fstat`, then
//! `fstatfs`), because the backend decides how stores are persisted and
//! whether the kernel lets devices pin the memory for long:
//!
//! | backend            | persisted by               | lasts             | long-term pins |
//! |--------------------|----------------------------|-------------------|----------------|
//! | regular file       | `msync(MS_SYNC)` of pages  | across reboot     | refused        |
//! | tmpfs (`/dev/shm`) | cache-line write-back      | until host reboot | allowed        |
//! | hugetlbfs          | cache-line write-back      | until host reboot | allowed        |
//! | memfd              | cache-line write-back      | process lifetime  | allowed        |
//! | device-dax         | cache-line write-back      | across reboot     | allowed        |
//!
//! Memory-backed pools (tmpfs, hugetlbfs, memfd) need no write-back to be
//! "durable", but they stand in for persistent memory, so they pay the same
//! flush and fence costs as device-dax would. A pool's length is the file's
//! length rounded down to whole pages; it must be at least [`MIN_POOL_BYTES`].
//!
//! The pool is mapped at a 2 MiB-aligned address, and advised
//! `MADV_HUGEPAGE` where the kernel gives its shmem transparent 2 MiB pages
//! (`MediaCaps::huge_pages`), so that pool offsets, addresses and those pages
//! line up, and direct mappings of aligned extents use them. How the pool's
//! memory comes to be in 2 MiB pages is its [`HugePolicy`]: allocated so on
//! first touch where `shmem_enabled` (or a tmpfs mount's `huge=`) allows it,
//! or — for a memfd under the kernel's default `shmem_enabled=never`, which
//! still honours `MADV_COLLAPSE` — collapsed on request: every whole 2 MiB
//! window that [`Media::write`] or [`Media::fill`] is about to fill while none
//! of its memory exists yet is first made one 2 MiB page (one page faulted in,
//! then `MADV_COLLAPSE`), which costs what a 2 MiB first touch costs.
//!
//! # Safety
//!
//! The mapping is created by [`MappedPool`] and unmapped only in its `Drop`,
//! so for the life of the value `base..base+len_bytes` is mapped readable and
//! writable. Every access is bounds-checked with [`check_range`] before a raw
//! pointer is formed, and pool memory is reached only through the volatile
//! copies and fills of [`super::volatile`] and a volatile 8-byte store —
//! never through a `&`/`&mut` reference nor a plain `memcpy`, since other
//! processes and devices write the same memory concurrently. The caller's
//! buffer is ordinary Rust memory and the crate never lends out references
//! into the pool, so the two cannot overlap. Collapsing a window
//! ([`HugePolicy::Collapse`]) asks the kernel about and advises a checked,
//! page-aligned range of the same mapping (`mincore`, `MADV_COLLAPSE`, which
//! moves the contents into a 2 MiB page without changing them) and loads one
//! byte of it with a volatile read.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FileType, MemfdFlags, Mode, OFlags};
use rustix::mm::{Advice, MapFlags, MsyncFlags, ProtFlags};

use super::{
    check_range, flush, volatile, Durability, FlushMethod, Media, MediaCaps, MediaKind, PoolMemory,
};
use crate::{Errno, Error, Result};

/// The smallest pool accepted, in bytes: room for the superblock, journal and
/// some data; anything smaller is almost certainly the wrong file.
pub const MIN_POOL_BYTES: u64 = 1 << 20;

/// Mapping alignment of device-dax when sysfs does not say (the common 2 MiB).
const DEVDAX_DEFAULT_ALIGN_BYTES: u64 = 2 << 20;

/// The pool is mapped at an address aligned to at least this, so that pool
/// offsets and addresses agree modulo a 2 MiB page.
const HUGE_ALIGN_BYTES: u64 = 2 << 20;

/// `MADV_COLLAPSE` (Linux 6.1): make a 2 MiB window of a mapping one 2 MiB
/// page now, whatever `shmem_enabled` says unless it is `deny`. Not in every
/// `libc` target module, so spelled out (the value is the kernel's UAPI).
const MADV_COLLAPSE: libc::c_int = 25;

/// 4 KiB pages in a 2 MiB window (the `mincore` vector of one window).
const PAGES_PER_HUGE: usize = (HUGE_ALIGN_BYTES / 4096) as usize;

/// `TMPFS_MAGIC` from `statfs(2)`.
const TMPFS_MAGIC: u32 = 0x0102_1994;
/// `HUGETLBFS_MAGIC` from `statfs(2)`.
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// A pool mapped shared into this process.
#[derive(Debug)]
pub struct MappedPool {
    /// First byte of the mapping; valid for `len_bytes` until `Drop`.
    base: NonNull<u8>,
    /// Length of the pool and of the mapping, in bytes (whole pages).
    len_bytes: u64,
    /// The mapping, reached only by checked volatile copies.
    window: volatile::Window,
    /// The descriptor the pool is mapped from.
    fd: OwnedFd,
    /// Where the pool was opened from (`None` for a memfd).
    path: Option<PathBuf>,
    caps: MediaCaps,
    /// A file system is mounted on this pool in this process (the in-process
    /// half of SPEC §7's one-mount rule; the OFD lock is the other half).
    mounted: AtomicBool,
    /// How its memory comes to be in 2 MiB pages.
    huge_policy: HugePolicy,
    /// `MADV_COLLAPSE` has not been refused as unsupported (`EINVAL`) yet.
    collapse_works: AtomicBool,
}

/// How a pool's memory comes to be in transparent 2 MiB pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugePolicy {
    /// Never: a regular file, hugetlbfs or device-dax (their own page size),
    /// a tmpfs mounted without `huge=`, or a kernel that refuses shmem THP
    /// (`shmem_enabled` `deny`, or the 2 MiB size set to `never`).
    None,
    /// The kernel allocates 2 MiB pages when memory is first touched through
    /// the pool's `MADV_HUGEPAGE` mapping (`shmem_enabled` `always`,
    /// `within_size`, `advise` or `force`; a tmpfs mounted with `huge=`).
    FirstTouch,
    /// Only on request (a memfd under `shmem_enabled=never`): each whole
    /// 2 MiB window [`Media::write`] or [`Media::fill`] fills while none of
    /// its memory exists yet is collapsed into one 2 MiB page first.
    Collapse,
}

impl std::fmt::Display for HugePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HugePolicy::None => "no 2 MiB pages",
            HugePolicy::FirstTouch => "2 MiB pages on first touch",
            HugePolicy::Collapse => "2 MiB pages by MADV_COLLAPSE of whole windows written",
        })
    }
}

// SAFETY: `MappedPool` owns its mapping and descriptor outright; the raw base
// pointer is only an address. All access to pool memory goes through raw
// copies whose concurrent use is the pool's contract (other processes and
// devices write it too), so moving or sharing the value between threads adds
// no data race that a second process would not already cause.
unsafe impl Send for MappedPool {}
// SAFETY: see `Send` above; `&MappedPool` exposes no interior state except
// the pool memory itself, which is accessed only through raw-pointer copies.
unsafe impl Sync for MappedPool {}

impl MappedPool {
    /// A new volatile pool of `size_bytes` (rounded up to whole pages) in an
    /// anonymous memfd, zero-filled.
    pub fn memfd(size_bytes: u64) -> Result<Self> {
        check_min_size("memfd", size_bytes)?;
        let page_bytes = system_page_bytes();
        let len_bytes =
            round_up(size_bytes, page_bytes).ok_or_else(|| too_large("memfd", size_bytes))?;
        // Sealing allowed: a daemon serving the pool seals it against
        // shrinking and growing before handing it to clients.
        let fd = rustix::fs::memfd_create(
            "pinfs-pool",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| Error::media("memfd_create", e.into()))?;
        rustix::fs::ftruncate(&fd, len_bytes)
            .map_err(|e| Error::media(format!("size memfd to {len_bytes} bytes"), e.into()))?;
        let huge_policy = if page_bytes != 4096 {
            HugePolicy::None
        } else if shmem_huge_allowed(None) {
            HugePolicy::FirstTouch
        } else if shmem_collapse_allowed() {
            HugePolicy::Collapse
        } else {
            HugePolicy::None
        };
        let caps = MediaCaps {
            kind: MediaKind::Memfd,
            durability: Durability::ProcessLifetime,
            long_term_pin: true,
            flush: flush::detect(),
            page_size: page_bytes,
            huge_pages: huge_policy != HugePolicy::None,
        };
        Self::map(fd, None, caps, len_bytes, huge_policy)
    }

    /// Opens an existing pool: a regular file, a file on tmpfs or hugetlbfs,
    /// or a device-dax character device. Locks it for this value alone
    /// ([`super::lock`]): `EBUSY`, naming the holder, while another has it.
    pub fn open(path: &Path) -> Result<Self> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::media(format!("open {}", path.display()), e.into()))?;
        // One process at a time (SPEC §7): locked before anything is read.
        super::lock::lock_exclusive(fd.as_fd(), path)?;
        Self::from_fd(fd, path)
    }

    /// Creates the pool file when missing (mode 0600), sets its length to
    /// `size_bytes` (rounded up to the file system's page size, e.g. 2 MiB on
    /// hugetlbfs), and opens it. An existing file is resized to that length,
    /// whatever it was. A device-dax device cannot be resized; it must hold at
    /// least `size_bytes`. Locked as [`MappedPool::open`], before resizing.
    pub fn create(path: &Path, size_bytes: u64) -> Result<Self> {
        Self::create_with(path, size_bytes, OFlags::empty())
    }

    /// As [`MappedPool::create`], but the file must not exist yet
    /// (`O_EXCL`): the caller then knows it made the file (and may remove
    /// it again if formatting fails).
    pub fn create_new(path: &Path, size_bytes: u64) -> Result<Self> {
        Self::create_with(path, size_bytes, OFlags::EXCL)
    }

    fn create_with(path: &Path, size_bytes: u64, extra: OFlags) -> Result<Self> {
        let what = path.display().to_string();
        check_min_size(&what, size_bytes)?;
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | extra,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| Error::media(format!("create {what}"), e.into()))?;
        // Locked before it is resized: a mounted pool must not change size.
        super::lock::lock_exclusive(fd.as_fd(), path)?;
        let (caps, current_bytes) = detect(&fd, &what)?;
        if caps.kind == MediaKind::DevDax {
            if current_bytes < size_bytes {
                return Err(Error::media(
                    format!("{what}: device holds {current_bytes} bytes, {size_bytes} requested"),
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
        } else {
            let len_bytes =
                round_up(size_bytes, caps.page_size).ok_or_else(|| too_large(&what, size_bytes))?;
            rustix::fs::ftruncate(&fd, len_bytes)
                .map_err(|e| Error::media(format!("size {what} to {len_bytes} bytes"), e.into()))?;
        }
        Self::from_fd(fd, path)
    }

    /// Where the pool was opened from; `None` for a memfd.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn from_fd(fd: OwnedFd, path: &Path) -> Result<Self> {
        let what = path.display().to_string();
        let (caps, file_bytes) = detect(&fd, &what)?;
        // Whole pages only: a partial last page is not backed by the file (and
        // hugetlbfs and device-dax can only be mapped in whole pages).
        let len_bytes = file_bytes - file_bytes % caps.page_size;
        if len_bytes < MIN_POOL_BYTES {
            return Err(Error::media(
                format!(
                    "{what}: {file_bytes} bytes is smaller than the minimum pool of {} KiB",
                    MIN_POOL_BYTES / 1024
                ),
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        // A tmpfs file follows its mount's `huge=` (the administrator's
        // choice for that mount); only a memfd, whose internal mount nobody
        // can configure, falls back to collapsing.
        let huge_policy = if caps.huge_pages {
            HugePolicy::FirstTouch
        } else {
            HugePolicy::None
        };
        Self::map(fd, Some(path.to_path_buf()), caps, len_bytes, huge_policy)
    }

    /// A memfd pool as [`MappedPool::memfd`], whose memory gets 2 MiB pages
    /// by `policy` instead of the policy the kernel's settings give — for
    /// measurements and tests: what the pool costs with no 2 MiB pages
    /// (`None`), or by collapsing (`Collapse`, the path a memfd takes under
    /// `shmem_enabled=never`) on a machine set up otherwise. `FirstTouch`
    /// where the settings do not allow it gets 4 KiB pages.
    pub fn memfd_with_huge_policy(size_bytes: u64, policy: HugePolicy) -> Result<Self> {
        let pool = Self::memfd(size_bytes)?;
        // Map the descriptor afresh with the policy asked for; the first
        // mapping goes with `pool`.
        let fd = pool
            .fd
            .try_clone()
            .map_err(|e| Error::media("dup memfd", e))?;
        let (len_bytes, caps) = (pool.len_bytes, pool.caps);
        drop(pool);
        let caps = MediaCaps {
            huge_pages: policy != HugePolicy::None,
            ..caps
        };
        Self::map(fd, None, caps, len_bytes, policy)
    }

    /// How this pool's memory comes to be in 2 MiB pages.
    pub fn huge_policy(&self) -> HugePolicy {
        self.huge_policy
    }

    fn map(
        fd: OwnedFd,
        path: Option<PathBuf>,
        caps: MediaCaps,
        len_bytes: u64,
        huge_policy: HugePolicy,
    ) -> Result<Self> {
        let what = match &path {
            Some(p) => p.display().to_string(),
            None => "memfd".to_string(),
        };
        let map_len = usize::try_from(len_bytes)
            .ok()
            .filter(|&n| isize::try_from(n).is_ok())
            .ok_or_else(|| too_large(&what, len_bytes))?;
        let addr = map_aligned(&fd, map_len, caps.page_size.max(HUGE_ALIGN_BYTES))
            .map_err(|e| Error::media(format!("map {what} ({len_bytes} bytes)"), e.into()))?;
        if huge_policy == HugePolicy::FirstTouch {
            // Ask for transparent 2 MiB pages: pool memory first touched through
            // this mapping is then allocated in 2 MiB pages (the kernel allows
            // it for this file: `MediaCaps::huge_pages`), so that 2 MiB-aligned
            // extents can be mapped with one page-table entry.
            // SAFETY: the range is the mapping just created; the advice changes
            // only how its pages are allocated, not their contents.
            if let Err(e) = unsafe { rustix::mm::madvise(addr, map_len, Advice::LinuxHugepage) } {
                tracing::debug!(pool = %what, error = %e, "MADV_HUGEPAGE refused");
            }
        }
        let Some(base) = NonNull::new(addr.cast::<u8>()) else {
            return Err(Error::media(
                format!("map {what}"),
                io::Error::from_raw_os_error(libc::ENOMEM),
            ));
        };
        let window_len = usize::try_from(len_bytes).map_err(|_| too_large(&what, len_bytes))?;
        // SAFETY: the mapping just made stays mapped, readable and writable
        // until `Drop`, and is never lent out as a Rust reference.
        let window = unsafe { volatile::Window::new(base, window_len) };
        let pool = MappedPool {
            base,
            len_bytes,
            window,
            fd,
            path,
            caps,
            mounted: AtomicBool::new(false),
            huge_policy,
            collapse_works: AtomicBool::new(true),
        };
        // Device-dax maps only at addresses aligned to its page size; the kernel
        // picks such an address, but a misaligned one would fault on every access.
        // `page_size` is a power of two (system page, checked hugetlbfs or
        // device-dax alignment), so a mask tests alignment.
        if (base.as_ptr() as usize as u64) & (caps.page_size - 1) != 0 {
            return Err(Error::media(
                format!(
                    "map {what}: address not aligned to {} bytes",
                    caps.page_size
                ),
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        tracing::debug!(pool = %what, len_bytes, caps = %caps, "mapped pool");
        Ok(pool)
    }

    /// A raw pointer to `offset` after checking `offset..offset+len` is inside
    /// the pool; returns it with `len` as a `usize`.
    fn at(&self, offset: u64, len: u64) -> Result<(*mut u8, usize)> {
        check_range(self.len_bytes, offset, len)?;
        // Both fit: the range is inside a mapping whose length is a `usize`.
        let offset = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        Ok((self.base.as_ptr().wrapping_add(offset), len))
    }

    /// Under [`HugePolicy::Collapse`], before `offset..offset+len` is filled:
    /// make every whole 2 MiB window of it that has no memory yet one 2 MiB
    /// page. A window with any page present is left alone: it is either one
    /// 2 MiB page already or 4 KiB pages whose collapse would copy them (up
    /// to milliseconds per window), which a write must not pay.
    fn collapse_fresh_windows(&self, offset: u64, len: u64) {
        if self.huge_policy != HugePolicy::Collapse
            || len < HUGE_ALIGN_BYTES
            || !self.collapse_works.load(Ordering::Relaxed)
        {
            return;
        }
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        let Some(mut window) = offset.checked_next_multiple_of(HUGE_ALIGN_BYTES) else {
            return;
        };
        while window + HUGE_ALIGN_BYTES <= end {
            self.collapse_if_fresh(window);
            window += HUGE_ALIGN_BYTES;
        }
    }

    /// One window of [`Self::collapse_fresh_windows`].
    fn collapse_if_fresh(&self, window: u64) {
        let Ok((addr, span)) = self.at(window, HUGE_ALIGN_BYTES) else {
            return;
        };
        let mut resident = [0u8; PAGES_PER_HUGE];
        // SAFETY: `addr..addr+span` is inside the live mapping (checked by
        // `at`) and page aligned (the pool is mapped 2 MiB aligned, `window`
        // is a multiple of 2 MiB); `resident` has one byte per page of it.
        // mincore only reports which pages exist.
        let r = unsafe { libc::mincore(addr.cast::<c_void>(), span, resident.as_mut_ptr()) };
        if r != 0 || resident.iter().any(|&b| b & 1 != 0) {
            return;
        }
        // The kernel collapses a window only if some page of it exists: a
        // load faults one in (a hole reads as zeros, so nothing changes).
        // SAFETY: `addr` is the first byte of the window, inside the live
        // mapping; a raw volatile load makes no reference into the pool.
        let _ = unsafe { ptr::read_volatile(addr) };
        // SAFETY: the range is the window just checked; MADV_COLLAPSE moves
        // its contents into one 2 MiB page without changing them (the kernel
        // locks and unmaps the old pages while it copies), so concurrent
        // users of the pool see the same bytes.
        let r = unsafe { libc::madvise(addr.cast::<c_void>(), span, MADV_COLLAPSE) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                // No MADV_COLLAPSE (before Linux 6.1) or not for this mapping:
                // stop asking.
                self.collapse_works.store(false, Ordering::Relaxed);
            }
            tracing::debug!(window, error = %e, "MADV_COLLAPSE refused");
        }
    }

    /// `msync(MS_SYNC)` of the pages covering `offset..offset+len`.
    fn msync(&self, offset: u64, len: u64) -> Result<()> {
        // msync wants a page-aligned start; pool length is whole pages, so
        // the rounded-up end stays inside the mapping.
        let page_bytes = system_page_bytes();
        let start = offset - offset % page_bytes;
        let end = offset
            .checked_add(len)
            .and_then(|end| round_up(end, page_bytes))
            .map(|end| end.min(self.len_bytes))
            .ok_or(Errno::EINVAL)?;
        let (addr, span) = self.at(start, end - start)?;
        // SAFETY: `addr..addr+span` is page aligned and lies inside our live
        // mapping (checked by `at`); msync neither reads nor writes it from
        // Rust's point of view.
        unsafe { rustix::mm::msync(addr.cast::<c_void>(), span, MsyncFlags::SYNC) }
            .map_err(|e| Error::media(format!("msync {start}..{end}"), e.into()))
    }
}

impl Media for MappedPool {
    fn caps(&self) -> MediaCaps {
        self.caps
    }

    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self.window.read(offset, buf) {
            true => Ok(()),
            false => Err(Errno::EINVAL.into()),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.collapse_fresh_windows(offset, data.len() as u64);
        match self.window.write(offset, data) {
            true => Ok(()),
            false => Err(Errno::EINVAL.into()),
        }
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<()> {
        self.collapse_fresh_windows(offset, len);
        let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        match self.window.fill(offset, len, byte) {
            true => Ok(()),
            false => Err(Errno::EINVAL.into()),
        }
    }

    /// Stores `value` little-endian, as one aligned 8-byte store.
    fn write_u64(&self, offset: u64, value: u64) -> Result<()> {
        if offset & 7 != 0 {
            return Err(Errno::EINVAL.into());
        }
        let (dst, _) = self.at(offset, 8)?;
        // SAFETY: `dst..dst+8` is inside the live, writable mapping (checked by
        // `at`) and 8-byte aligned (the mapping is page aligned and `offset` is
        // a multiple of 8), so this is a single aligned 8-byte store — a plain
        // `mov`, atomic with respect to crashes — which the compiler may neither
        // split nor elide because it is volatile.
        unsafe { ptr::write_volatile(dst.cast::<u64>(), value.to_le()) };
        Ok(())
    }

    fn flush(&self, offset: u64, len: u64) -> Result<()> {
        let (start, span) = self.at(offset, len)?;
        if span == 0 {
            return Ok(());
        }
        match self.caps.flush {
            FlushMethod::Msync => self.msync(offset, len),
            FlushMethod::None => Ok(()),
            method => {
                // SAFETY: `start..start+span` is inside the live mapping
                // (checked by `at`).
                unsafe { flush::flush_lines(start, span, method) };
                Ok(())
            }
        }
    }

    fn fence(&self) {
        match self.caps.flush {
            // `msync(MS_SYNC)` was already durable when it returned; only keep
            // the compiler and CPU from reordering around the fence.
            FlushMethod::Msync | FlushMethod::None => {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst)
            }
            _ => flush::fence(),
        }
    }

    fn mount_flag(&self) -> Option<&AtomicBool> {
        Some(&self.mounted)
    }

    fn mapping(&self) -> Option<PoolMemory<'_>> {
        Some(PoolMemory {
            base: self.base,
            len_bytes: self.len_bytes,
            fd: self.fd.as_fd(),
        })
    }
}

impl Drop for MappedPool {
    fn drop(&mut self) {
        // `map` proved the length fits a usize.
        let map_len = self.len_bytes as usize;
        // SAFETY: `base..base+map_len` is exactly the mapping `map` created,
        // unmapped nowhere else; after this no method runs on `self`, and the
        // `PoolMemory` views borrow `self`, so none outlives it.
        if let Err(e) = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), map_len) }
        {
            tracing::warn!(error = %e, len_bytes = self.len_bytes, "munmap of pool failed");
        }
        // The descriptor closes when `fd` drops.
    }
}

/// Map `len` bytes of `fd` from offset 0, shared and read-write, at an
/// address aligned to `align` (a power of two).
fn map_aligned(fd: &OwnedFd, len: usize, align: u64) -> rustix::io::Result<*mut c_void> {
    let align = usize::try_from(align).map_err(|_| rustix::io::Errno::NOMEM)?;
    let total = len.checked_add(align).ok_or(rustix::io::Errno::NOMEM)?;
    // SAFETY: a null hint lets the kernel choose an unused range, so this
    // inaccessible reservation aliases nothing the program owns.
    let raw = unsafe {
        rustix::mm::mmap_anonymous(
            ptr::null_mut(),
            total,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }? as usize;
    let base = raw.next_multiple_of(align);
    let (head, tail) = (base - raw, raw + total - (base + len));
    // SAFETY: `base..base+len` lies inside the reservation just made, which
    // nothing else refers to, so MAP_FIXED replaces only it; `fd` is a live
    // read-write descriptor at least `len` bytes long (callers checked).
    let mapped = unsafe {
        rustix::mm::mmap(
            base as *mut c_void,
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED | MapFlags::FIXED,
            fd,
            0,
        )
    };
    // SAFETY: the trimmed pieces (and, on failure, the whole reservation) are
    // parts of the reservation above that nothing refers to.
    unsafe {
        match mapped {
            Ok(_) => {
                if head > 0 {
                    let _ = rustix::mm::munmap(raw as *mut c_void, head);
                }
                if tail > 0 {
                    let _ = rustix::mm::munmap((base + len) as *mut c_void, tail);
                }
            }
            Err(_) => {
                let _ = rustix::mm::munmap(raw as *mut c_void, total);
            }
        }
    }
    mapped
}

/// Whether shmem memory may be allocated in transparent 2 MiB pages for a
/// mapping advised `MADV_HUGEPAGE`: for a memfd (`mount_huge` = `None`) the
/// `shmem_enabled` policy of the kernel's internal mount decides (the 2 MiB
/// size's own setting, unless it says `inherit`); for a tmpfs file, the
/// mount's `huge=` option (`mount_huge`), unless the global policy is
/// `force` or `deny`.
fn shmem_huge_allowed(mount_huge: Option<&str>) -> bool {
    let Some(global) = thp_setting("shmem_enabled") else {
        return false;
    };
    let allows = |v: &str| matches!(v, "always" | "within_size" | "advise" | "force");
    match global.as_str() {
        "force" => return true,
        "deny" => return false,
        _ => {}
    }
    match mount_huge {
        Some(option) => allows(option),
        None => match thp_setting("hugepages-2048kB/shmem_enabled").as_deref() {
            None | Some("inherit") => allows(&global),
            Some(own) => allows(own),
        },
    }
}

/// The selected value (`[value]`) of a setting under
/// `/sys/kernel/mm/transparent_hugepage`, e.g. `shmem_enabled`.
pub fn thp_setting(name: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(format!("/sys/kernel/mm/transparent_hugepage/{name}")).ok()?;
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

/// Whether `MADV_COLLAPSE` may make shmem memory 2 MiB pages although
/// `shmem_enabled` does not allocate them on first touch: the kernel honours
/// it under every policy but `deny`, unless the 2 MiB size itself says
/// `never`.
fn shmem_collapse_allowed() -> bool {
    let Some(global) = thp_setting("shmem_enabled") else {
        return false;
    };
    let own = thp_setting("hugepages-2048kB/shmem_enabled");
    global != "deny" && own.as_deref() != Some("never")
}

/// The `huge=` option of the tmpfs mount holding `fd` (`never` when absent).
fn tmpfs_huge_option(fd: &OwnedFd) -> Option<String> {
    let stx = rustix::fs::statx(
        fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info
        .lines()
        .find(|l| l.split(' ').next() == Some(&stx.stx_mnt_id.to_string()))?;
    let super_options = line.split(" - ").nth(1)?.split(' ').nth(2)?;
    Some(
        super_options
            .split(',')
            .find_map(|o| o.strip_prefix("huge="))
            .unwrap_or("never")
            .to_string(),
    )
}

/// Recognises the backend of `fd` and its size in bytes.
fn detect(fd: &OwnedFd, what: &str) -> Result<(MediaCaps, u64)> {
    let stat =
        rustix::fs::fstat(fd).map_err(|e| Error::media(format!("fstat {what}"), e.into()))?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::CharacterDevice => detect_devdax(stat.st_rdev, what),
        FileType::RegularFile => {
            let file_bytes = u64::try_from(stat.st_size).map_err(|_| {
                Error::media(
                    format!("{what}: negative size"),
                    io::Error::from_raw_os_error(libc::EINVAL),
                )
            })?;
            let statfs = rustix::fs::fstatfs(fd)
                .map_err(|e| Error::media(format!("fstatfs {what}"), e.into()))?;
            // Magic numbers are 32-bit; `f_type`'s width and sign vary by target.
            let caps = match statfs.f_type as u32 {
                TMPFS_MAGIC => MediaCaps {
                    kind: MediaKind::Tmpfs,
                    durability: Durability::UntilHostReboot,
                    long_term_pin: true,
                    flush: flush::detect(),
                    page_size: system_page_bytes(),
                    huge_pages: system_page_bytes() == 4096
                        && shmem_huge_allowed(tmpfs_huge_option(fd).as_deref()),
                },
                HUGETLBFS_MAGIC => MediaCaps {
                    kind: MediaKind::Hugetlbfs,
                    durability: Durability::UntilHostReboot,
                    long_term_pin: true,
                    flush: flush::detect(),
                    page_size: u64::try_from(statfs.f_bsize)
                        .ok()
                        .filter(|&b| b.is_power_of_two())
                        .ok_or_else(|| {
                            Error::media(
                                format!("{what}: bad hugetlbfs page size {}", statfs.f_bsize),
                                io::Error::from_raw_os_error(libc::EINVAL),
                            )
                        })?,
                    huge_pages: false,
                },
                _ => MediaCaps {
                    kind: MediaKind::File,
                    durability: Durability::AcrossReboot,
                    long_term_pin: false,
                    flush: FlushMethod::Msync,
                    page_size: system_page_bytes(),
                    huge_pages: false,
                },
            };
            Ok((caps, file_bytes))
        }
        other => Err(Error::media(
            format!("{what}: a {other:?} is neither a regular file nor a device-dax device"),
            io::Error::from_raw_os_error(libc::EINVAL),
        )),
    }
}

/// Size and alignment of a device-dax character device, from sysfs.
///
/// Compiled everywhere but untested here: it needs a real or emulated
/// persistent-memory namespace configured in device-dax mode.
fn detect_devdax(rdev: rustix::fs::Dev, what: &str) -> Result<(MediaCaps, u64)> {
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/char/{major}:{minor}"));
    let subsystem = std::fs::read_link(sys.join("subsystem"))
        .map_err(|e| Error::media(format!("{what}: read {}/subsystem", sys.display()), e))?;
    if subsystem.file_name().and_then(|n| n.to_str()) != Some("dax") {
        return Err(Error::media(
            format!("{what}: character device {major}:{minor} is not device-dax"),
            io::Error::from_raw_os_error(libc::ENODEV),
        ));
    }
    let size_bytes = read_sysfs_u64(&sys.join("size"))
        .map_err(|e| Error::media(format!("{what}: read {}/size", sys.display()), e))?;
    // Newer kernels publish the alignment on the device, older on its parent.
    let align_bytes = read_sysfs_u64(&sys.join("align"))
        .or_else(|_| read_sysfs_u64(&sys.join("device/align")))
        .ok()
        .filter(|a| a.is_power_of_two())
        .unwrap_or(DEVDAX_DEFAULT_ALIGN_BYTES);
    let caps = MediaCaps {
        kind: MediaKind::DevDax,
        durability: Durability::AcrossReboot,
        long_term_pin: true,
        flush: flush::detect(),
        page_size: align_bytes,
        huge_pages: false,
    };
    Ok((caps, size_bytes))
}

fn read_sysfs_u64(path: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
}

fn system_page_bytes() -> u64 {
    rustix::param::page_size() as u64
}

fn round_up(n: u64, align: u64) -> Option<u64> {
    n.checked_next_multiple_of(align)
}

fn check_min_size(what: &str, size_bytes: u64) -> Result<()> {
    if size_bytes < MIN_POOL_BYTES {
        return Err(Error::media(
            format!(
                "{what}: a pool of {size_bytes} bytes is smaller than the minimum of {} KiB",
                MIN_POOL_BYTES / 1024
            ),
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    Ok(())
}

fn too_large(what: &str, size_bytes: u64) -> Error {
    Error::media(
        format!("{what}: a pool of {size_bytes} bytes cannot be mapped"),
        io::Error::from_raw_os_error(libc::EFBIG),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL_BYTES: u64 = 2 << 20;

    /// The kind `detect` should report for a regular file in `dir`, from an
    /// independent `statfs` of the directory.
    fn expected_kind_in(dir: &Path) -> MediaKind {
        let statfs = rustix::fs::statfs(dir).expect("statfs of test directory");
        match statfs.f_type as u32 {
            TMPFS_MAGIC => MediaKind::Tmpfs,
            HUGETLBFS_MAGIC => MediaKind::Hugetlbfs,
            _ => MediaKind::File,
        }
    }

    fn roundtrip(pool: &MappedPool) {
        let len = pool.len_bytes();
        pool.write(4093, b"hello, pool").unwrap();
        pool.fill(8192, 100, 0xab).unwrap();
        pool.write_u64(len - 8, 0x0102_0304_0506_0708).unwrap();
        pool.flush(4093, 11).unwrap();
        pool.flush(8192, 100).unwrap();
        pool.flush(len - 8, 8).unwrap();
        pool.flush(0, len).unwrap();
        pool.flush(0, 0).unwrap();
        pool.fence();

        let mut buf = [0u8; 11];
        pool.read(4093, &mut buf).unwrap();
        assert_eq!(&buf, b"hello, pool");
        let mut filled = [0u8; 102];
        pool.read(8191, &mut filled).unwrap();
        assert_eq!(filled[0], 0);
        assert!(filled[1..101].iter().all(|&b| b == 0xab));
        assert_eq!(filled[101], 0);
        let mut word = [0u8; 8];
        pool.read(len - 8, &mut word).unwrap();
        assert_eq!(u64::from_le_bytes(word), 0x0102_0304_0506_0708);

        let mem = pool.mapping().expect("mapped pools expose their memory");
        assert_eq!(mem.len_bytes, len);
        // SAFETY: offset 4093 is inside the live mapping; a single-byte raw
        // read makes no reference into pool memory.
        let first = unsafe { mem.base.as_ptr().add(4093).read_volatile() };
        assert_eq!(first, b'h');
    }

    #[test]
    fn memfd_roundtrip() {
        let pool = MappedPool::memfd(POOL_BYTES + 1).unwrap();
        let caps = pool.caps();
        assert_eq!(caps.kind, MediaKind::Memfd);
        assert_eq!(caps.durability, Durability::ProcessLifetime);
        assert!(caps.long_term_pin);
        assert_eq!(caps.flush, flush::detect());
        // Rounded up to whole pages.
        assert_eq!(pool.len_bytes(), POOL_BYTES + caps.page_size);
        assert!(pool.path().is_none());
        roundtrip(&pool);
        eprintln!("{caps}");
    }

    #[test]
    fn dev_shm_file_is_tmpfs() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() || expected_kind_in(shm) != MediaKind::Tmpfs {
            eprintln!("skipped: /dev/shm is not a tmpfs here");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let path = dir.path().join("pool");
        let pool = MappedPool::create(&path, POOL_BYTES).unwrap();
        let caps = pool.caps();
        assert_eq!(caps.kind, MediaKind::Tmpfs);
        assert_eq!(caps.durability, Durability::UntilHostReboot);
        assert!(caps.long_term_pin);
        assert_eq!(caps.flush, flush::detect());
        assert_eq!(pool.path(), Some(path.as_path()));
        roundtrip(&pool);
        let mode = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn regular_file_kind_follows_fstatfs_and_persists() {
        // `/tmp` may itself be a tmpfs; the target directory usually is not.
        let candidates = [
            std::env::temp_dir(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        ];
        let mut saw_file = false;
        for dir in candidates.iter().filter(|d| d.is_dir()) {
            let expected = expected_kind_in(dir);
            let tmp = tempfile::tempdir_in(dir).unwrap();
            let path = tmp.path().join("pool");
            {
                let pool = MappedPool::create(&path, POOL_BYTES).unwrap();
                let caps = pool.caps();
                assert_eq!(caps.kind, expected, "in {}", dir.display());
                if expected == MediaKind::File {
                    saw_file = true;
                    assert_eq!(caps.durability, Durability::AcrossReboot);
                    assert!(!caps.long_term_pin);
                    assert_eq!(caps.flush, FlushMethod::Msync);
                }
                roundtrip(&pool);
            }
            // Reopening sees what was written (and flushed) before.
            let pool = MappedPool::open(&path).unwrap();
            assert_eq!(pool.len_bytes(), POOL_BYTES);
            let mut buf = [0u8; 11];
            pool.read(4093, &mut buf).unwrap();
            assert_eq!(&buf, b"hello, pool");
        }
        if !saw_file {
            eprintln!("note: no non-tmpfs directory found; File kind not exercised");
        }
    }

    #[test]
    fn out_of_range_is_einval() {
        let pool = MappedPool::memfd(MIN_POOL_BYTES).unwrap();
        let len = pool.len_bytes();
        let einval = |r: Result<()>| assert_eq!(r.unwrap_err().errno(), Errno::EINVAL);
        let mut buf = [0u8; 16];
        einval(pool.read(len - 8, &mut buf));
        einval(pool.read(u64::MAX - 4, &mut buf));
        einval(pool.write(len, b"x"));
        einval(pool.write(u64::MAX, b"x"));
        einval(pool.fill(len - 1, 2, 0));
        einval(pool.fill(1, u64::MAX, 0));
        einval(pool.write_u64(len, 1));
        einval(pool.write_u64(u64::MAX - 7, 1));
        einval(pool.write_u64(12, 1));
        einval(pool.flush(len - 1, 2));
        einval(pool.flush(u64::MAX, 2));
        // The edges themselves are fine.
        pool.read(len - 16, &mut buf).unwrap();
        pool.write(len, b"").unwrap();
        pool.write_u64(len - 8, 1).unwrap();
        pool.flush(len, 0).unwrap();
    }

    #[test]
    fn too_small_pools_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::File::create(&empty).unwrap();
        let err = MappedPool::open(&empty).unwrap_err();
        assert_eq!(err.errno(), Errno::EINVAL);
        assert!(
            err.to_string().contains("smaller than the minimum"),
            "{err}"
        );

        let small = dir.path().join("small");
        std::fs::write(&small, vec![0u8; 4096]).unwrap();
        assert_eq!(MappedPool::open(&small).unwrap_err().errno(), Errno::EINVAL);

        let refused = dir.path().join("refused");
        let err = MappedPool::create(&refused, 4096).unwrap_err();
        assert_eq!(err.errno(), Errno::EINVAL);
        assert!(!refused.exists(), "a refused create leaves no file behind");

        assert_eq!(MappedPool::memfd(0).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(
            MappedPool::open(&dir.path().join("missing"))
                .unwrap_err()
                .errno(),
            Errno::ENOENT
        );
        assert_eq!(
            MappedPool::open(dir.path()).unwrap_err().errno(),
            Errno::EISDIR
        );
    }

    #[test]
    fn concurrent_writers_share_one_pool() {
        let pool = std::sync::Arc::new(MappedPool::memfd(MIN_POOL_BYTES).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        pool.write_u64((t * 1000 + i) * 8, t << 32 | i).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut word = [0u8; 8];
        pool.read((3 * 1000 + 999) * 8, &mut word).unwrap();
        assert_eq!(u64::from_le_bytes(word), 3 << 32 | 999);
    }

    /// Bytes of the pool mapping the kernel maps with 2 MiB entries
    /// (`ShmemPmdMapped`/`FilePmdMapped` of its line in `/proc/self/smaps`).
    fn pmd_mapped_bytes(pool: &MappedPool) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}-", pool.base.as_ptr() as usize);
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if line.contains('-') && line.split(' ').next().is_some_and(|w| w.contains('-')) {
                inside = line.starts_with(&start);
                continue;
            }
            if inside {
                for key in ["ShmemPmdMapped:", "FilePmdMapped:"] {
                    if let Some(v) = line.strip_prefix(key) {
                        kib += v.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
                    }
                }
            }
        }
        kib * 1024
    }

    #[test]
    fn whole_windows_written_under_collapse_are_2mib_pages() {
        let written = 2 * HUGE_ALIGN_BYTES;
        let write = |pool: &MappedPool| {
            // Whole windows 1 and 2, by a write and by a fill; a partial
            // window 3 (left alone: collapsing it would give a file's
            // neighbours memory they did not ask for).
            pool.write(HUGE_ALIGN_BYTES, &vec![0x5a; HUGE_ALIGN_BYTES as usize])
                .unwrap();
            pool.fill(2 * HUGE_ALIGN_BYTES, HUGE_ALIGN_BYTES + 4096, 0x5b)
                .unwrap();
        };
        let pool = MappedPool::memfd_with_huge_policy(8 << 20, HugePolicy::Collapse).unwrap();
        assert!(pool.caps().huge_pages);
        write(&pool);
        if !pool.collapse_works.load(Ordering::Relaxed) {
            eprintln!("skipped: this kernel refuses MADV_COLLAPSE of shmem");
            return;
        }
        assert_eq!(pmd_mapped_bytes(&pool), written);
        let mut buf = vec![0u8; 3 * HUGE_ALIGN_BYTES as usize];
        pool.read(HUGE_ALIGN_BYTES, &mut buf).unwrap();
        let (a, rest) = buf.split_at(HUGE_ALIGN_BYTES as usize);
        assert!(a.iter().all(|&b| b == 0x5a));
        assert!(rest[..HUGE_ALIGN_BYTES as usize + 4096]
            .iter()
            .all(|&b| b == 0x5b));
        assert!(rest[HUGE_ALIGN_BYTES as usize + 4096..]
            .iter()
            .all(|&b| b == 0));
        // Negative control: the same writes with no policy stay in 4 KiB
        // pages (unless the kernel gives 2 MiB pages to every memfd).
        let global = thp_setting("shmem_enabled").unwrap_or_default();
        if matches!(global.as_str(), "always" | "within_size" | "force") {
            eprintln!("control skipped: shmem_enabled={global} gives every memfd 2 MiB pages");
            return;
        }
        let control = MappedPool::memfd_with_huge_policy(8 << 20, HugePolicy::None).unwrap();
        write(&control);
        assert_eq!(pmd_mapped_bytes(&control), 0);
    }
}
