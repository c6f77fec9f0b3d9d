//! Memory and files the `uring` device owns itself: the scratch buffer a
//! redirected region's table entries point at (memory that belongs to no
//! file), and the memfds a device write reads from and a device read
//! writes to (the kernel moves the bytes between them and the fixed buffer:
//! that copy is the device's DMA).
//!
//! # Safety
//!
//! [`Scratch`] owns its mappings (a reservation and the windows mapped
//! over it) from creation to `Drop`; its
//! accessors are bounds-checked and copy with `crate::media::volatile`,
//! because the kernel writes the mapping concurrently (by DMA through the
//! fixed-buffer table), so no Rust reference into it is ever made.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use parking_lot::Mutex;
use rustix::fs::MemfdFlags;

use crate::media::volatile;
use crate::{Errno, Error, Result};

/// Idle source/sink memfds kept for reuse (more are created under load and
/// closed when returned beyond this).
pub const MAX_IDLE_FILES: usize = 16;

/// A source/sink memfd that grew past this is emptied before reuse, so an
/// idle device does not keep a large request's bytes.
pub const KEEP_FILE_BYTES: u64 = 8 << 20;

/// Real memory behind every redirected region's scratch of one device: a
/// region's length of address space is this much of one device-wide memfd
/// mapped over and over (so redirecting a 1 GiB region pins 8 MiB, not
/// 1 GiB, and many regions still 8 MiB).
pub const SCRATCH_WINDOW_BYTES: u64 = 8 << 20;

/// Memory that belongs to no file, which a redirected region's entries
/// point at: `len_bytes` of address space over the device's scratch memfd
/// of [`SCRATCH_WINDOW_BYTES`], mapped repeatedly. Writes to offsets a window
/// apart land on the same bytes; they are all discarded anyway.
#[derive(Debug)]
pub struct Scratch {
    base: NonNull<u8>,
    len_bytes: usize,
}

// SAFETY: `Scratch` owns its mapping; the pointer is only an address, and
// every access is a volatile copy (module doc), so sharing or moving it
// between threads adds no data race beyond the kernel's own writes.
unsafe impl Send for Scratch {}
// SAFETY: as for `Send`: `&Scratch` exposes only bounds-checked volatile copies.
unsafe impl Sync for Scratch {}

impl Scratch {
    /// The memfd every scratch of a device maps: [`SCRATCH_WINDOW_BYTES`].
    pub fn file() -> Result<OwnedFd> {
        let memfd = rustix::fs::memfd_create("pinfs-uring-scratch", MemfdFlags::CLOEXEC)
            .map_err(|e| Error::media("memfd_create for uring scratch", e.into()))?;
        rustix::fs::ftruncate(&memfd, SCRATCH_WINDOW_BYTES)
            .map_err(|e| Error::media("size uring scratch", e.into()))?;
        Ok(memfd)
    }

    /// Map `len_bytes` (whole pages, non-zero) of scratch address space over
    /// `memfd` (made by [`Scratch::file`]), its pages populated now so that
    /// pointing table entries at it later (at revocation) allocates nothing.
    pub fn new(len_bytes: u64, memfd: &OwnedFd) -> Result<Scratch> {
        let len = usize::try_from(len_bytes).map_err(|_| Errno::ENOMEM)?;
        if len == 0 || !len_bytes.is_multiple_of(super::PAGE_BYTES) {
            return Err(Errno::EINVAL.into());
        }
        let window_bytes = len_bytes.min(SCRATCH_WINDOW_BYTES);
        // Reserve the whole range first, so the windows land side by side
        // at addresses nobody else holds.
        // SAFETY: a fresh mapping at an address the kernel chooses overlaps
        // nothing of ours.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::empty(),
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
            )
        }
        .map_err(|e| Error::media(format!("reserve {len} bytes for uring scratch"), e.into()))?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        let scratch = Scratch {
            base,
            len_bytes: len,
        };
        let mut at = 0u64;
        while at < len_bytes {
            let n = (len_bytes - at).min(window_bytes) as usize;
            // SAFETY: `at..at + n` lies inside the reservation made above,
            // which `scratch` owns; MAP_FIXED replaces only that part of it.
            unsafe {
                rustix::mm::mmap(
                    base.as_ptr().add(at as usize).cast(),
                    n,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::SHARED
                        | rustix::mm::MapFlags::FIXED
                        | rustix::mm::MapFlags::POPULATE,
                    memfd,
                    0,
                )
            }
            .map_err(|e| Error::media("map a uring scratch window", e.into()))?;
            at += n as u64;
        }
        Ok(scratch)
    }

    /// First byte, as the address a fixed-buffer entry names.
    pub fn addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Copy bytes at `offset` out of the scratch memory.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        // SAFETY: the range is mapped (readable, writable) until `Drop`, and
        // `self` owns it; the copy is volatile because the kernel may be
        // writing it.
        let window = unsafe { volatile::Window::new(self.base, self.len_bytes) };
        match window.read(offset, buf) {
            true => Ok(()),
            false => Err(Errno::EINVAL.into()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the whole range was reserved by `new` with this length and
        // nothing refers to it any more (the table entries pointing at it
        // were replaced first; the kernel keeps its own page references for
        // any request still finishing).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len_bytes) };
    }
}

/// Memfds that carry a device request's bytes to or from the kernel.
#[derive(Debug, Default)]
pub struct Files {
    idle: Mutex<Vec<OwnedFd>>,
}

impl Files {
    /// An empty memfd (reused when one is idle).
    pub fn take(&self) -> Result<OwnedFd> {
        if let Some(fd) = self.idle.lock().pop() {
            return Ok(fd);
        }
        rustix::fs::memfd_create("pinfs-uring-io", MemfdFlags::CLOEXEC)
            .map_err(|e| Error::media("memfd_create for a uring request", e.into()))
    }

    /// Give a memfd back; `len_bytes` is how much of it was used.
    pub fn give(&self, fd: OwnedFd, len_bytes: u64) {
        if len_bytes > KEEP_FILE_BYTES && rustix::fs::ftruncate(&fd, 0).is_err() {
            return; // closed instead
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_FILES {
            idle.push(fd);
        }
    }
}

/// Write all of `data` at `offset` of `fd`.
pub fn pwrite_all(fd: &OwnedFd, mut offset: u64, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, offset) {
            Ok(0) => return Err(Errno::EIO.into()),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::media("fill a uring source memfd", e.into())),
        }
    }
    Ok(())
}

/// Read all of `buf` at `offset` of `fd` (bytes past its end read as zeros).
pub fn pread_all(fd: &OwnedFd, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
    while !buf.is_empty() {
        match rustix::io::pread(fd, &mut *buf, offset) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::media("read a uring sink memfd", e.into())),
        }
    }
    Ok(())
}
