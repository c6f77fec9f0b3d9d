//! Mappings in *another* process's address space (SPEC §8): what the file
//! system sends to the client that holds the pages, and the guard it keeps.
//!
//! A client process maps pool blocks itself (it holds the pool's
//! descriptor), so the file system cannot change its page tables: it asks.
//! [`RemoteSpace::place`] carries a batch of [`RemotePiece`]s — plain data a
//! wire can carry — to the client's service thread, which applies them to
//! its [`super::client::ClientMapping`] and acknowledges. The file system
//! computes what each page shows exactly as for its own mappings (one
//! `desired`, one `affected`/`replace`, one write-fault path, in
//! `fs/mmap.rs`); only the last step, changing the page tables, happens in
//! the client.
//!
//! **A placement is a promise the client keeps before the file system
//! goes on.** `place` is called under the file system's state lock, after a
//! layout change committed and before any block it frees is released, and
//! blocks until the client acknowledged. So:
//! - a client's service thread must never need the file system (the
//!   daemon) to apply a placement and acknowledge it — no request, no lock
//!   the daemon may hold; it only changes its own page tables;
//! - a slow client stalls every layout change of the file system until it
//!   acknowledges, at most lease-break-time: then `place` must return
//!   [`Unacknowledged`], and the implementation fences the client (kills
//!   it). The file system then treats the mapping as *broken*: every pool
//!   block it may still reach — whatever the client was last told, and what
//!   the failed placement carried — stays busy (never free, never reused,
//!   copied rather than shared by reflink) until the [`RemoteMapping`] is
//!   dropped, which the daemon does only once the client's death is
//!   confirmed (pidfd) or the client acknowledged its munmap. A broken
//!   remote mapping is sent nothing more.

use crate::map::place::Kind;
use crate::map::region::PAGE_BYTES;
use crate::map::Mapping;
use crate::Errno;

/// Most pieces in one [`RemoteSpace::place`] call. A re-placement needing
/// more (a very fragmented file) is sent as several calls, in order.
pub const MAX_PLACE_PIECES: usize = 4096;

/// What a run of pages of a client's mapping shows: the public mirror of
/// the file system's own page kinds (pool offsets in bytes, page-aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RemoteKind {
    /// The pool from byte `pool_offset` on (page `i` of the run shows
    /// `pool_offset + i * 4096`): `mmap` of the pool's descriptor, shared
    /// for a shared mapping, private for a private one.
    Pool {
        /// Pool byte offset of the run's first page.
        pool_offset: u64,
    },
    /// Anonymous memory registered with the client's userfaultfd: a read
    /// fault is answered by the client — zeros (`copy_of: None`), or a
    /// write-protected copy of the pool from `copy_of` (a shared block,
    /// never written in place); a write fault is forwarded to the file
    /// system, which allocates or unshares and re-places the page.
    Served {
        /// Pool byte offset copied into the run's first page, if any.
        copy_of: Option<u64>,
    },
    /// Anonymous zero-fill memory (holes of private and read-only mappings).
    Zero,
    /// Every access raises `SIGBUS` (an empty memfd mapped there).
    Sigbus,
    /// Inaccessible.
    Nothing,
}

/// One run of pages of a client's mapping and what it shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RemotePiece {
    /// First page (4 KiB) of the run, from the start of the mapping.
    pub page: u64,
    /// Pages in the run.
    pub pages: u64,
    /// What the run shows.
    pub kind: RemoteKind,
}

/// A client did not acknowledge a placement (it timed out at
/// lease-break-time, its connection broke, or it could not apply it); it is
/// being fenced, and its mapping is now broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("mapping {map}: the client did not acknowledge a placement: {reason}")]
pub struct Unacknowledged {
    /// The mapping ([`RemoteMapping::id`]).
    pub map: u64,
    /// Why (one line).
    pub reason: String,
}

/// How the file system reaches a client's address space (see the module
/// doc for the contract: called under the state lock, blocking until the
/// client applied `pieces` and acknowledged, bounded by lease-break-time).
pub trait RemoteSpace: Send + Sync {
    /// Make the client's mapping `map` ([`RemoteMapping::id`]) show
    /// `pieces` (at most [`MAX_PLACE_PIECES`], in page order, not
    /// overlapping), and return once the client acknowledged; an error when
    /// it did not (the client is being fenced).
    fn place(&self, map: u64, pieces: &[RemotePiece]) -> Result<(), Unacknowledged>;
}

impl From<Kind> for RemoteKind {
    fn from(k: Kind) -> RemoteKind {
        match k {
            Kind::Pool { block } => RemoteKind::Pool {
                pool_offset: block * PAGE_BYTES,
            },
            Kind::Served { copy_of } => RemoteKind::Served {
                copy_of: copy_of.map(|b| b * PAGE_BYTES),
            },
            Kind::Zero => RemoteKind::Zero,
            Kind::Sigbus => RemoteKind::Sigbus,
            Kind::Nothing => RemoteKind::Nothing,
        }
    }
}

impl RemoteKind {
    /// The page kind, checking what a peer sent: pool offsets must be
    /// page-aligned (`EINVAL`).
    pub(crate) fn to_kind(self) -> Result<Kind, Errno> {
        let block = |offset: u64| {
            offset
                .is_multiple_of(PAGE_BYTES)
                .then_some(offset / PAGE_BYTES)
                .ok_or(Errno::EINVAL)
        };
        Ok(match self {
            RemoteKind::Pool { pool_offset } => Kind::Pool {
                block: block(pool_offset)?,
            },
            RemoteKind::Served { copy_of: None } => Kind::Served { copy_of: None },
            RemoteKind::Served {
                copy_of: Some(offset),
            } => Kind::Served {
                copy_of: Some(block(offset)?),
            },
            RemoteKind::Zero => Kind::Zero,
            RemoteKind::Sigbus => Kind::Sigbus,
            RemoteKind::Nothing => Kind::Nothing,
        })
    }
}

/// The file system's side of a mapping in a client process
/// ([`crate::fs::Handle::mmap_remote`]): it keeps the mapping's pages true
/// to the layout through its [`RemoteSpace`], holds the `MAP_DIRECT` lease,
/// answers the client's write faults ([`RemoteMapping::write_fault`]), and
/// takes pins and registrations through the mapping. Dropping it forgets
/// the mapping — do so only once the client can no longer reach its pages
/// (it acknowledged its munmap, or its death is confirmed): a broken
/// mapping's blocks are released then.
pub struct RemoteMapping {
    pub(crate) mapping: Mapping,
}

impl std::fmt::Debug for RemoteMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RemoteMapping").field(&self.mapping).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_cross_the_wire_and_back() {
        for k in [
            Kind::Pool { block: 3 },
            Kind::Served { copy_of: None },
            Kind::Served { copy_of: Some(9) },
            Kind::Zero,
            Kind::Sigbus,
            Kind::Nothing,
        ] {
            assert_eq!(RemoteKind::from(k).to_kind(), Ok(k));
        }
        assert_eq!(
            RemoteKind::Pool { pool_offset: 100 }.to_kind(),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            RemoteKind::Served {
                copy_of: Some(4097)
            }
            .to_kind(),
            Err(Errno::EINVAL)
        );
    }
}
