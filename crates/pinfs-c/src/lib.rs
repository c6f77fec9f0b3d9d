//! The C interface of pinfs: a shared library (`libpinfs_c.so`) and a
//! static one (`libpinfs_c.a`) over the client library
//! ([`pinfs_client`]), with the header `include/pinfs.h` generated from
//! this crate by cbindgen. `docs/c-api.md` is the reference for C
//! programmers; `examples/rdma_like.c` shows the whole protocol.
//!
//! Shape: a connection is an opaque `pinfs_client *`; files are small
//! integers (`fd`s of that connection, not kernel descriptors) so that a
//! stale or made-up number is `-EBADF`, never undefined behaviour; pins, mappings and
//! registrations are their ids. Every function returns `-errno` on failure. The rules that
//! turn C numbers into the library's types (`O_*`, `FALLOC_FL_*`, lease
//! arguments) live in [`flags`], in safe code; the `extern "C"` functions
//! live in [`ffi`], the one module with `unsafe` (raw pointers from C).

pub mod ffi;
pub mod flags;
mod state;

pub use state::{
    PINFS_MAX_KNOWN_LEASES, PINFS_MAX_MAPS, PINFS_MAX_OPEN_FILES, PINFS_MAX_PINS,
    PINFS_MAX_REGISTRATIONS,
};

pub use ffi::*;
pub use flags::{
    PINFS_DMA_DEVICE_ERROR, PINFS_DMA_INVALID_REGION, PINFS_DMA_OK, PINFS_DMA_PAGE_FAULT,
    PINFS_DMA_PROTECTION_ERROR, PINFS_F_EXCLUSIVE, PINFS_F_LAYOUT, PINFS_F_RDLCK, PINFS_F_UNLCK,
    PINFS_F_WRLCK, PINFS_MAP_DIRECT, PINFS_MAP_PRIVATE, PINFS_MAP_SHARED,
    PINFS_MAP_SHARED_VALIDATE, PINFS_MAP_SYNC, PINFS_REVOKE_INVALIDATE, PINFS_REVOKE_ODP,
    PINFS_REVOKE_REDIRECT,
};
