//! pinfs: a persistent-memory file system whose file data can be handed to
//! devices for long-term, zero-copy DMA while the file system stays free to
//! truncate, punch holes, reflink and reallocate.
//!
//! This crate is the whole core: the media a pool lives on ([`media`]), the
//! on-media format ([`format`](mod@format)), the metadata journal ([`journal`]), the block
//! allocator ([`alloc`]), the file system itself ([`fs`]), its mappings into
//! the address space ([`map`]), the devices that reach file memory by DMA
//! ([`dma`]) and the lease engine ([`lease`]). Binaries
//! (the `pinfs` command, later the daemon and the FUSE mount) only parse,
//! wire and translate. See `ARCHITECTURE.md` for the map.
#![deny(unsafe_code)]

pub mod alloc;
pub mod dma;
pub mod error;
pub mod format;
pub mod fs;
pub mod journal;
pub mod lease;
pub mod map;
pub mod media;
pub mod pin;
pub mod util;

pub use error::{Errno, Error, Result};
pub use fs::{Cred, Groups, Node, RenameFlags, SetAttr, TimeSet};
