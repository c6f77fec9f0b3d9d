//! The raw memory the soft device reaches, and nothing else: the pool's
//! mapping ([`PoolWindow`]), the device-owned scratch page a redirected
//! region writes into ([`ScratchPage`]), and a caller's buffer lent to the
//! workers for the length of one blocking request ([`LentBytes`],
//! [`LentBuf`]). Every other part of the device is safe code that calls the
//! bounds-checked copies here, which go through `media::volatile`.
//!
//! # Safety
//!
//! - A [`PoolWindow`] owns an `Arc` of its media, so the pool mapping it
//!   copies into stays mapped as long as the window lives: a mapped media
//!   maps its pool once, when it is opened, and unmaps it only when dropped
//!   (`Media::mapping` hands out the same range for the media's whole life).
//!   Every copy checks `offset + len <= len_bytes` with checked arithmetic
//!   before forming an address, and never forms a Rust reference into the
//!   pool: devices (ours, the kernel's) and other processes write it
//!   concurrently.
//! - A [`ScratchPage`] is an anonymous private mapping owned by this value
//!   alone from creation to `Drop`; like the pool it is written by several
//!   workers at once, so it too is reached only by volatile copies, checked
//!   against its length.
//! - A lent buffer is a raw pointer to a caller's Rust buffer. It is created
//!   only by `unsafe fn`s whose contract is that the caller keeps the buffer
//!   borrowed, untouched and alive until the request's completion has been
//!   delivered; the device completes every request it accepted (workers
//!   drain the queue before they stop, and a request dropped unfinished
//!   completes with an error from its `Drop`), and a worker touches the
//!   buffer only before it delivers the completion.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::Arc;

use crate::dma::PAGE_BYTES;
use crate::media::{volatile, Media};
use crate::{Errno, Error, Result};

/// The pool's memory as the device copies to and from it.
pub(super) struct PoolWindow {
    /// Keeps the mapping alive (see the module's Safety section).
    _media: Arc<dyn Media>,
    /// The pool mapping, reached by checked volatile copies.
    window: volatile::Window,
}

impl PoolWindow {
    /// The window over `media`'s mapping; media that is not mapped into this
    /// process (emulated media) cannot be reached by a device.
    pub(super) fn new(media: Arc<dyn Media>) -> Result<Self> {
        let (base, len_bytes) = match media.mapping() {
            Some(m) => (m.base, m.len_bytes),
            None => {
                return Err(Error::media(
                    "the soft device copies into pool memory itself, and this pool is not \
                     mapped into the process (emulated media)",
                    std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                ))
            }
        };
        let len = usize::try_from(len_bytes).map_err(|_| Errno::ENOMEM)?;
        // SAFETY: the media maps its pool once, for its whole life, and
        // `self` holds the media (see the module's Safety section).
        let window = unsafe { volatile::Window::new(base, len) };
        Ok(PoolWindow {
            _media: media,
            window,
        })
    }

    /// Pool length in bytes.
    pub(super) fn len_bytes(&self) -> u64 {
        self.window.len() as u64
    }

    /// Copy `data` into the pool at `offset`; false when out of range.
    pub(super) fn copy_in(&self, offset: u64, data: &[u8]) -> bool {
        self.window.write(offset, data)
    }

    /// Copy pool bytes at `offset` into `buf`; false when out of range.
    pub(super) fn copy_out(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.window.read(offset, buf)
    }
}

/// One page of device-owned memory that belongs to no file: where a
/// redirected region's accesses land.
pub(super) struct ScratchPage {
    ptr: NonNull<u8>,
    /// The page, reached by checked volatile copies (concurrent workers
    /// write it, as they write the pool).
    window: volatile::Window,
}

// SAFETY: the page is plain memory owned by this value; it is only reached
// through volatile copies, never through references, so sharing the
// pointer is sound.
unsafe impl Send for ScratchPage {}
// SAFETY: as above.
unsafe impl Sync for ScratchPage {}

impl ScratchPage {
    /// A fresh zeroed page.
    pub(super) fn new() -> Result<Self> {
        // SAFETY: a null hint lets the kernel choose an unused range, so the
        // new private anonymous mapping aliases nothing the program owns.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                PAGE_BYTES as usize,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .map_err(|e| Error::media("map a scratch page for a redirected region", e.into()))?;
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or(Errno::ENOMEM)?;
        // SAFETY: the page stays mapped until `Drop`, and `self` owns it.
        let window = unsafe { volatile::Window::new(ptr, PAGE_BYTES as usize) };
        Ok(ScratchPage { ptr, window })
    }

    /// Copy `data` into the page at `offset`; false when out of range.
    pub(super) fn copy_in(&self, offset: u64, data: &[u8]) -> bool {
        self.window.write(offset, data)
    }

    /// Copy page bytes at `offset` into `buf`; false when out of range.
    pub(super) fn copy_out(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.window.read(offset, buf)
    }
}

impl Drop for ScratchPage {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `new` with this length and is owned
        // by this value alone; nothing reaches it after drop.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), PAGE_BYTES as usize) }
        {
            tracing::warn!(error = %e, "munmap of a soft-device scratch page failed");
        }
    }
}

/// A caller's bytes lent to a worker for one blocking write request.
pub(super) struct LentBytes {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the lender guarantees the buffer outlives the request and is not
// written meanwhile (see `new`); only one worker holds the request.
unsafe impl Send for LentBytes {}

impl LentBytes {
    /// Lend `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` lies in one live Rust buffer that the caller keeps
    /// alive and unmodified until the completion of the request carrying
    /// this value has been delivered.
    pub(super) unsafe fn from_raw(ptr: *const u8, len: usize) -> Self {
        LentBytes { ptr, len }
    }

    /// The lent bytes.
    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: `new`'s contract: the buffer is alive and not written
        // while the request (which owns `self`) is being served.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A caller's buffer lent to a worker for one blocking read request.
pub(super) struct LentBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the lender guarantees exclusive use of the buffer by the request
// until its completion (see `new`); only one worker holds the request.
unsafe impl Send for LentBuf {}

impl LentBuf {
    /// Lend `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` lies in one live Rust buffer that nobody else
    /// touches — neither the caller nor another lent range overlapping it —
    /// until the completion of the request carrying this value has been
    /// delivered.
    pub(super) unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        LentBuf { ptr, len }
    }

    /// The lent buffer.
    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `new`'s contract: the buffer is alive and used by nobody
        // else while the request (which owns `self`) is being served.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}
