//! The virtual address range of one mapping, and what is placed in it.
//!
//! A [`Region`] reserves one range of the address space (an inaccessible
//! anonymous mapping) and owns it until it drops. Everything a mapping shows
//! is then placed *inside* that range with `MAP_FIXED`: pool blocks (a shared
//! or private mapping of the pool's descriptor at the block's offset),
//! anonymous memory (holes served by the fault service, or plain zero-fill
//! memory of private and read-only mappings), a mapping of an *empty* memfd
//! (every access raises a real kernel `SIGBUS`: nothing backs it), or nothing
//! at all (inaccessible, once the mapping is torn down).
//!
//! A `MAP_FIXED` that fails may, on kernels that unmap the old pages before
//! mapping the new ones, leave part of the range unmapped — a gap where
//! another thread's `mmap` can land, and which a later `MAP_FIXED` here
//! would then overwrite. So after a failed placement the range is reclaimed
//! with `MAP_FIXED_NOREPLACE` (inaccessible anonymous memory), which only
//! succeeds where nothing is mapped; if anything is (`EEXIST`: the old
//! pages, or someone else's in a gap — the two cannot be told apart), the
//! region is *poisoned*: no `MAP_FIXED` ever goes into it again, it is never
//! unmapped (its pages may be someone else's), and its mapping breaks, so
//! the blocks its pages may reach stay held (`Placed::broken`).
//!
//! Every range placed here is marked `MADV_DONTFORK`: the file system
//! re-places mappings when layouts change, and it can only do that in its
//! own address space. A child that inherited a mapping would keep pointers
//! to blocks after they are freed and given to another file (SPEC §4.4);
//! not inheriting it makes the child's access fault instead.
//!
//! # Safety
//!
//! A `Region` is the sole owner of `base..base+len` from `reserve` until its
//! `Drop`: the range was created by an `mmap` the kernel placed where nothing
//! was mapped, and this module never hands out Rust references into it, only
//! its address. So replacing pieces of it with `MAP_FIXED` cannot unmap or
//! alias any memory the rest of the program owns — as long as no placement
//! failed leaving a gap that someone else mapped into: a failed placement
//! either reclaims its whole range (`MAP_FIXED_NOREPLACE`) or poisons the
//! region, after which nothing here maps into, copies from or unmaps it. All
//! offsets are checked against the region's length before an address is
//! formed.
//! [`Region::read`]/[`Region::write`] copy with `process_vm_readv`/`writev`:
//! the kernel makes the copy, opaque to the compiler like a volatile access,
//! so pool memory that others write concurrently is never copied by a plain
//! `memcpy` here either (see `media::volatile`). Users who turn
//! [`Region::base`] into loads and stores do so with raw, volatile accesses of
//! their own (SPEC §5.2 allows the memory to change under them at any time,
//! as it does in Linux).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::BorrowedFd;

use rustix::mm::{Advice, MapFlags, ProtFlags};

use crate::{Errno, Error, Result};

/// Page (and block) size of everything placed in a region.
pub(crate) const PAGE_BYTES: u64 = 4096;
/// Regions are placed so that file offsets and addresses agree modulo this,
/// letting 2 MiB-aligned pool extents land on 2 MiB-aligned addresses.
pub(crate) const HUGE_BYTES: u64 = 2 << 20;

/// What backs a run of pages.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backing<'a> {
    /// The pool's descriptor at `offset` (bytes); `shared`: `MAP_SHARED`
    /// (stores reach the pool), else `MAP_PRIVATE` (copy on write); `huge`:
    /// the pool has transparent 2 MiB pages, so the placement is advised
    /// `MADV_HUGEPAGE`.
    Pool {
        fd: BorrowedFd<'a>,
        offset: u64,
        shared: bool,
        huge: bool,
    },
    /// Private anonymous memory: zero-fill, or served by userfaultfd once
    /// registered.
    Anon,
    /// A shared mapping of an empty memfd: every access raises `SIGBUS`.
    Sigbus { fd: BorrowedFd<'a> },
    /// Inaccessible (`PROT_NONE`).
    Nothing,
}

/// One reserved address range (see the module doc).
#[derive(Debug)]
pub(crate) struct Region {
    base: usize,
    len: u64,
    /// Fault injection (tests): (placements still to let through, then
    /// placements to fail).
    #[cfg(feature = "negative-controls")]
    inject: parking_lot::Mutex<(u64, u64)>,
    /// A failed placement may have left a gap someone else mapped into:
    /// nothing is placed, copied or unmapped here any more (module doc).
    poisoned: std::sync::atomic::AtomicBool,
    /// Fault injection (tests): placements still to report as done without
    /// doing them (the page tables then disagree with the placement).
    #[cfg(feature = "negative-controls")]
    silent: parking_lot::Mutex<u64>,
}

impl Region {
    /// Reserve `len` bytes (whole pages) at an address congruent to `phase`
    /// modulo 2 MiB.
    pub(crate) fn reserve(len: u64, phase: u64) -> Result<Region> {
        if len == 0 || !len.is_multiple_of(PAGE_BYTES) {
            return Err(Errno::EINVAL.into());
        }
        let total = len.checked_add(HUGE_BYTES).ok_or(Errno::ENOMEM)?;
        let total_usize = usize::try_from(total).map_err(|_| Errno::ENOMEM)?;
        // SAFETY: a null hint lets the kernel choose an unused range, so the
        // new mapping aliases nothing the program owns.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                total_usize,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| Error::media("reserve address space for a mapping", e.into()))?;
        let raw = raw as usize;
        let want = (phase % HUGE_BYTES) as usize;
        let huge = HUGE_BYTES as usize;
        let base = raw + ((want + huge - raw % huge) % huge);
        let head = base - raw;
        let tail = total_usize - head - len as usize;
        // SAFETY: both pieces lie inside the reservation just made and
        // nothing else refers to them; they are trimmed off it.
        unsafe {
            if head > 0 {
                let _ = rustix::mm::munmap(raw as *mut c_void, head);
            }
            if tail > 0 {
                let _ = rustix::mm::munmap((base + len as usize) as *mut c_void, tail);
            }
        }
        let region = Region {
            base,
            len,
            #[cfg(feature = "negative-controls")]
            inject: parking_lot::Mutex::new((0, 0)),
            #[cfg(feature = "negative-controls")]
            silent: parking_lot::Mutex::new(0),
            poisoned: std::sync::atomic::AtomicBool::new(false),
        };
        region.dont_fork(0, len);
        Ok(region)
    }

    /// First byte.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether a failed placement poisoned the region (module doc).
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(std::sync::atomic::Ordering::Acquire)
    }

    fn refuse_if_poisoned(&self) -> Result<()> {
        if self.is_poisoned() {
            return Err(Error::media(
                "the mapping's address range may hold someone else's memory after a failed placement",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    /// After a failed `MAP_FIXED` over `len` bytes at `offset`: take the
    /// range back with `MAP_FIXED_NOREPLACE` (inaccessible), which only
    /// works if the failure unmapped all of it; if anything is mapped there
    /// — our old pages, or another thread's in a gap the failure left —
    /// poison the region. Returns whether the range was reclaimed.
    fn reclaim_after_failure(&self, offset: u64, len: u64) -> bool {
        let addr = (self.base + offset as usize) as *mut c_void;
        // SAFETY: `MAP_FIXED_NOREPLACE` never replaces an existing mapping:
        // it maps only if nothing at all is mapped in the range, so it
        // cannot touch memory anyone owns (an old kernel that ignores the
        // flag places it elsewhere instead, unmapped again below).
        let r = unsafe {
            rustix::mm::mmap_anonymous(
                addr,
                len as usize,
                ProtFlags::empty(),
                MapFlags::FIXED_NOREPLACE | MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        };
        match r {
            Ok(p) if p == addr => {
                tracing::warn!(target: "pinfs::map", offset, len, "a failed placement had unmapped its range: reclaimed");
                true
            }
            other => {
                if let Ok(p) = other {
                    // SAFETY: `p` is the mapping just made, elsewhere, by a
                    // kernel that ignored `MAP_FIXED_NOREPLACE`; nothing
                    // else refers to it.
                    let _ = unsafe { rustix::mm::munmap(p, len as usize) };
                }
                self.poisoned
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::error!(target: "pinfs::map", offset, len, "a failed placement may have left a gap in the mapping's range: region poisoned, never mapped into again");
                false
            }
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Errno::EINVAL.into()),
        }
    }

    fn dont_fork(&self, offset: u64, len: u64) {
        // SAFETY: `offset..offset+len` lies in the region (callers checked);
        // the advice only changes what a future fork copies.
        let r = unsafe {
            rustix::mm::madvise(
                (self.base + offset as usize) as *mut c_void,
                len as usize,
                Advice::LinuxDontFork,
            )
        };
        if let Err(e) = r {
            tracing::warn!(target: "pinfs::map", error = %e, "MADV_DONTFORK failed");
        }
    }

    fn advise_huge(&self, offset: u64, len: u64) {
        // SAFETY: `offset..offset+len` lies in the region (callers checked);
        // the advice only lets the kernel use 2 MiB pages for it.
        let r = unsafe {
            rustix::mm::madvise(
                (self.base + offset as usize) as *mut c_void,
                len as usize,
                Advice::LinuxHugepage,
            )
        };
        if let Err(e) = r {
            tracing::debug!(target: "pinfs::map", error = %e, "MADV_HUGEPAGE refused");
        }
    }

    /// Bytes of the region the kernel currently maps with 2 MiB page-table
    /// entries (the `ShmemPmdMapped` and `FilePmdMapped` lines of
    /// `/proc/self/smaps` for the pieces placed in it).
    pub(crate) fn huge_mapped_bytes(&self) -> Result<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps")
            .map_err(|e| Error::media("read /proc/self/smaps", e))?;
        let (lo, hi) = (self.base as u64, self.base as u64 + self.len);
        let mut inside = false;
        let mut total_kib = 0u64;
        for line in smaps.lines() {
            let mut words = line.split_ascii_whitespace();
            let Some(first) = words.next() else { continue };
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    inside = a >= lo && b <= hi;
                    continue;
                }
            }
            if inside && matches!(first, "ShmemPmdMapped:" | "FilePmdMapped:") {
                total_kib += words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
        }
        Ok(total_kib * 1024)
    }

    /// Fault injection (tests): let the next `skip` placements through, then
    /// fail the `fail` after them with `ENOMEM`, as `mmap(MAP_FIXED)` fails
    /// when `vm.max_map_count` is exhausted.
    #[cfg(feature = "negative-controls")]
    pub(crate) fn inject_placement_failures(&self, skip: u64, fail: u64) {
        *self.inject.lock() = (skip, fail);
    }

    #[cfg(feature = "negative-controls")]
    fn injected_failure(&self) -> bool {
        let mut g = self.inject.lock();
        match *g {
            (0, 0) => false,
            (0, ref mut fail) => {
                *fail -= 1;
                true
            }
            (ref mut skip, _) => {
                *skip -= 1;
                false
            }
        }
    }

    #[cfg(not(feature = "negative-controls"))]
    fn injected_failure(&self) -> bool {
        false
    }

    /// Fault injection (tests): poison the region as a failed placement
    /// that left a gap would.
    #[cfg(feature = "negative-controls")]
    pub(crate) fn poison(&self) {
        self.poisoned
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Fault injection (tests): the next `n` placements report success
    /// without changing anything.
    #[cfg(feature = "negative-controls")]
    pub(crate) fn inject_silent_placements(&self, n: u64) {
        *self.silent.lock() = n;
    }

    #[cfg(feature = "negative-controls")]
    fn injected_silence(&self) -> bool {
        let mut g = self.silent.lock();
        let silent = *g > 0;
        *g = g.saturating_sub(1);
        silent
    }

    #[cfg(not(feature = "negative-controls"))]
    fn injected_silence(&self) -> bool {
        false
    }

    /// Place `backing` over `len` bytes at `offset` (page-aligned, inside the
    /// region), readable, and writable when `writable`.
    pub(crate) fn place(
        &self,
        offset: u64,
        len: u64,
        backing: Backing<'_>,
        writable: bool,
    ) -> Result<()> {
        self.check(offset, len)?;
        self.refuse_if_poisoned()?;
        if self.injected_failure() {
            return Err(Error::media(
                "place pages in a mapping (injected failure)",
                std::io::Error::from_raw_os_error(libc::ENOMEM),
            ));
        }
        if !offset.is_multiple_of(PAGE_BYTES) || !len.is_multiple_of(PAGE_BYTES) {
            return Err(Errno::EINVAL.into());
        }
        if len == 0 || self.injected_silence() {
            return Ok(());
        }
        let addr = (self.base + offset as usize) as *mut c_void;
        let size = len as usize;
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let fixed = MapFlags::FIXED;
        // SAFETY: `addr..addr+size` lies inside the region this value owns
        // (checked above), so `MAP_FIXED` replaces only pages of this region,
        // which no Rust reference points into (module doc). The descriptors
        // are live for the duration of the call; the kernel keeps its own
        // reference to the file afterwards.
        let placed = unsafe {
            match backing {
                Backing::Pool {
                    fd, offset, shared, ..
                } => rustix::mm::mmap(
                    addr,
                    size,
                    prot,
                    fixed
                        | if shared {
                            MapFlags::SHARED
                        } else {
                            MapFlags::PRIVATE
                        },
                    fd,
                    offset,
                ),
                Backing::Anon => rustix::mm::mmap_anonymous(
                    addr,
                    size,
                    prot,
                    fixed | MapFlags::PRIVATE | MapFlags::NORESERVE,
                ),
                Backing::Sigbus { fd } => rustix::mm::mmap(
                    addr,
                    size,
                    ProtFlags::READ | ProtFlags::WRITE,
                    fixed | MapFlags::SHARED,
                    fd,
                    0,
                ),
                Backing::Nothing => rustix::mm::mmap_anonymous(
                    addr,
                    size,
                    ProtFlags::empty(),
                    fixed | MapFlags::PRIVATE | MapFlags::NORESERVE,
                ),
            }
        };
        match placed {
            Ok(p) if p == addr => {
                self.dont_fork(offset, len);
                if let Backing::Pool { huge: true, .. } = backing {
                    self.advise_huge(offset, len);
                }
                Ok(())
            }
            Ok(p) => {
                // Not where MAP_FIXED puts it (no such kernel): give it back.
                // SAFETY: `p` is the mapping just made; nothing refers to it.
                let _ = unsafe { rustix::mm::munmap(p, size) };
                self.reclaim_after_failure(offset, len);
                Err(Errno::ENOMEM.into())
            }
            Err(e) => {
                self.reclaim_after_failure(offset, len);
                Err(Error::media("place pages in a mapping", e.into()))
            }
        }
    }

    /// Register `len` bytes at `offset` (page-aligned, inside the region,
    /// placed as [`Backing::Anon`]) with the fault service's userfaultfd.
    pub(crate) fn register(&self, uffd: &super::fault::Uffd, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        self.refuse_if_poisoned()?;
        // SAFETY: the range lies inside this region (checked above), which
        // this value owns and never lends out as a Rust reference (module
        // doc), until its `Drop` unmaps it — which also unregisters it.
        unsafe { uffd.register(self.base + offset as usize, len) }
    }

    /// Copy `buf.len()` bytes at `offset` out of the region, as a system call
    /// would: a page that would raise `SIGBUS` (or is inaccessible) makes it
    /// fail with `EFAULT` instead. Holes are served by the fault service like
    /// any other access.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        if self.is_poisoned() {
            return Err(Errno::EFAULT.into());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let local = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: buf.len() - done,
            };
            let remote = libc::iovec {
                iov_base: (self.base + offset as usize + done) as *mut c_void,
                iov_len: buf.len() - done,
            };
            // SAFETY: `local` describes the caller's exclusive buffer, which
            // the kernel writes through a copy (never a Rust reference into
            // the region); `remote` lies inside the region (checked above).
            // The call reports an unreachable page as an error instead of a
            // signal.
            let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(Errno::EFAULT.into()),
                _ => return Err(Errno::last().into()),
            }
        }
        Ok(())
    }

    /// Copy `data` into the region at `offset` (see [`Region::read`]): a
    /// store that would raise `SIGBUS` fails with `EFAULT`, possibly after
    /// storing the bytes before the faulting page.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        if self.is_poisoned() {
            return Err(Errno::EFAULT.into());
        }
        let mut done = 0usize;
        while done < data.len() {
            let local = libc::iovec {
                iov_base: data[done..].as_ptr() as *mut c_void,
                iov_len: data.len() - done,
            };
            let remote = libc::iovec {
                iov_base: (self.base + offset as usize + done) as *mut c_void,
                iov_len: data.len() - done,
            };
            // SAFETY: the kernel only reads `local` (the caller's buffer) and
            // copies into `remote`, inside the region (checked above).
            let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(Errno::EFAULT.into()),
                _ => return Err(Errno::last().into()),
            }
        }
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.is_poisoned() {
            // Part of the range may be someone else's now: leave it all (the
            // pages still reaching pool blocks keep them held, as zombies).
            tracing::error!(target: "pinfs::map", base = self.base, len = self.len, "a poisoned mapping range is left mapped");
            return;
        }
        // SAFETY: `base..base+len` is the reservation this value owns; after
        // this nothing refers to it.
        if let Err(e) = unsafe { rustix::mm::munmap(self.base as *mut c_void, self.len as usize) } {
            tracing::warn!(target: "pinfs::map", error = %e, "munmap of a mapping failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_aligns_to_the_file_phase() {
        for phase in [
            0,
            PAGE_BYTES,
            HUGE_BYTES - PAGE_BYTES,
            3 * HUGE_BYTES + 5 * PAGE_BYTES,
        ] {
            let r = Region::reserve(8 * PAGE_BYTES, phase).unwrap();
            assert_eq!(r.base() as u64 % HUGE_BYTES, phase % HUGE_BYTES);
            assert_eq!(r.len(), 8 * PAGE_BYTES);
        }
        assert!(Region::reserve(100, 0).is_err());
    }

    #[test]
    fn anonymous_and_sigbus_pages() {
        let r = Region::reserve(4 * PAGE_BYTES, 0).unwrap();
        let mut buf = [1u8; 8];
        // Reserved but inaccessible.
        assert_eq!(r.read(0, &mut buf).unwrap_err().errno(), Errno::EFAULT);
        r.place(0, 2 * PAGE_BYTES, Backing::Anon, true).unwrap();
        r.write(PAGE_BYTES - 4, b"abcdefgh").unwrap();
        r.read(PAGE_BYTES - 4, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdefgh");
        let empty = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        use std::os::fd::AsFd;
        r.place(
            2 * PAGE_BYTES,
            2 * PAGE_BYTES,
            Backing::Sigbus { fd: empty.as_fd() },
            true,
        )
        .unwrap();
        assert_eq!(
            r.read(2 * PAGE_BYTES, &mut buf).unwrap_err().errno(),
            Errno::EFAULT
        );
        assert_eq!(
            r.write(2 * PAGE_BYTES - 4, b"12345678")
                .unwrap_err()
                .errno(),
            Errno::EFAULT
        );
        assert!(r
            .place(PAGE_BYTES, 4 * PAGE_BYTES, Backing::Anon, true)
            .is_err());
    }

    /// Unmap `len` bytes at `offset` of `r` behind its back, as a kernel
    /// that unmaps before mapping leaves a failed `MAP_FIXED`.
    fn unmap_behind(r: &Region, offset: u64, len: u64) {
        // SAFETY: the range lies in `r`, which this test owns; no reference
        // points into it.
        unsafe {
            rustix::mm::munmap((r.base() + offset as usize) as *mut c_void, len as usize).unwrap();
        }
    }

    /// Another thread's anonymous page at `addr` (nothing mapped there),
    /// holding `byte`.
    fn foreign_page(addr: usize, byte: u8) -> *mut u8 {
        // SAFETY: NOREPLACE maps only where nothing is mapped.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                addr as *mut c_void,
                PAGE_BYTES as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::FIXED_NOREPLACE | MapFlags::PRIVATE,
            )
        }
        .unwrap();
        assert_eq!(p as usize, addr);
        // SAFETY: the page was just mapped, readable and writable.
        unsafe { std::ptr::write_volatile(p.cast::<u8>(), byte) };
        p.cast()
    }

    #[test]
    fn a_failed_placement_that_left_a_gap_poisons_the_region() {
        let r = Region::reserve(4 * PAGE_BYTES, 0).unwrap();
        r.place(0, 4 * PAGE_BYTES, Backing::Anon, true).unwrap();
        // A MAP_FIXED over pages 1..3 failed after unmapping page 1, and
        // another thread's mmap landed there.
        unmap_behind(&r, PAGE_BYTES, PAGE_BYTES);
        let foreign = foreign_page(r.base() + PAGE_BYTES as usize, 0x5A);
        assert!(!r.reclaim_after_failure(PAGE_BYTES, 2 * PAGE_BYTES));
        assert!(r.is_poisoned());
        // No MAP_FIXED into it again: the foreign page survives every
        // placement attempt, copies through the region, and its drop.
        assert!(r.place(0, 4 * PAGE_BYTES, Backing::Nothing, false).is_err());
        assert!(r
            .place(PAGE_BYTES, PAGE_BYTES, Backing::Anon, true)
            .is_err());
        assert!(r.write(PAGE_BYTES, &[1]).is_err());
        drop(r);
        // SAFETY: the foreign page is still mapped (the point of the test).
        assert_eq!(unsafe { std::ptr::read_volatile(foreign) }, 0x5A);
    }

    #[test]
    fn a_failed_placement_that_unmapped_its_range_is_reclaimed() {
        let r = Region::reserve(4 * PAGE_BYTES, 0).unwrap();
        r.place(0, 4 * PAGE_BYTES, Backing::Anon, true).unwrap();
        unmap_behind(&r, PAGE_BYTES, 2 * PAGE_BYTES);
        assert!(r.reclaim_after_failure(PAGE_BYTES, 2 * PAGE_BYTES));
        assert!(!r.is_poisoned());
        // Ours again (inaccessible), and placeable.
        let mut b = [0u8; 1];
        assert!(r.read(PAGE_BYTES, &mut b).is_err());
        r.place(PAGE_BYTES, 2 * PAGE_BYTES, Backing::Anon, true)
            .unwrap();
        r.write(PAGE_BYTES, &[7]).unwrap();
        r.read(PAGE_BYTES, &mut b).unwrap();
        assert_eq!(b, [7]);
    }

    #[test]
    fn a_real_failed_placement_reclaims_or_poisons() {
        // A real MAP_FIXED failure: a directory cannot be mapped.
        let r = Region::reserve(2 * PAGE_BYTES, 0).unwrap();
        r.place(0, 2 * PAGE_BYTES, Backing::Anon, true).unwrap();
        let dir = std::fs::File::open("/").unwrap();
        use std::os::fd::AsFd;
        let err = r.place(
            0,
            PAGE_BYTES,
            Backing::Pool {
                fd: dir.as_fd(),
                offset: 0,
                shared: true,
                huge: false,
            },
            true,
        );
        assert!(err.is_err());
        // The kernel refused before unmapping anything: the old pages are
        // still there, so the range could not be reclaimed, and the region
        // is poisoned (a gap and our own pages cannot be told apart).
        assert!(r.is_poisoned());
    }
}
