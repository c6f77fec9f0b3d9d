//! The pinfs daemon's wire protocol (SPEC §8): what a client and `pinfs
//! serve` say to each other over a Unix stream socket, and how it is framed.
//!
//! It is its own crate because it is the boundary between two processes: the
//! daemon (`pinfs-server`) and the client library (`pinfs-client`) depend on
//! it and on nothing of each other.
//!
//! # Shape
//!
//! * A frame is a `u32` little-endian payload length followed by the payload,
//!   a [`postcard`] encoding of one message ([`frame`]). Frames are bounded:
//!   [`MAX_REQUEST_FRAME`] from a client, [`MAX_FRAME`] from the daemon; the
//!   bytes of one `pread`/`pwrite` are at most [`MAX_IO`], paths at most
//!   [`MAX_PATH`] bytes (components at most `NAME_MAX`), and a client has at
//!   most [`MAX_INFLIGHT`] requests unanswered.
//! * A client opens with [`ClientMsg::Hello`] (its [`PROTOCOL_VERSION`] and
//!   the signal it wants on a lease break); the daemon answers
//!   [`DaemonMsg::Welcome`], which carries the pool's file descriptor
//!   (`SCM_RIGHTS`) so the client maps pool blocks itself. No other frame
//!   may carry a descriptor, in either direction.
//! * Then the client sends [`ClientMsg::Request`]s, each with an id of its
//!   choosing, and the daemon answers each with one [`DaemonMsg::Reply`]
//!   carrying the same id (errors are errno numbers), in any order. Lease
//!   notifications arrive unasked as [`DaemonMsg::Event`]; a daemon that
//!   drops the client or shuts down says why in [`DaemonMsg::Bye`].
//! * Adding an operation is one [`Op`] variant (and one [`Reply`] variant if
//!   it returns something new), plus one handler in the daemon and one
//!   method in the client library. Variants are only ever appended, so an
//!   older peer decodes every message it knows; a change of an existing
//!   message bumps [`PROTOCOL_VERSION`].
//!
//! The value types (`Stat`, `LeaseInfo`, `BreakEvent`, `PinInfo`, ...) are
//! the core library's own, encoded through its `serde` feature: a client sees
//! exactly what an in-process caller sees. A test pins their encoding
//! (`tests::encoding_is_pinned`), so a change in the core that would change
//! the wire shows up as a failing test, not as two peers misreading each
//! other.

#![deny(unsafe_code)]

pub mod frame;
mod msg;

pub use frame::{decode, encode, send_frame, send_frame_with_fd, Frame, FrameReader, ProtoError};
pub use msg::*;

/// The protocol version this build speaks; a `Hello` with another version
/// is refused (`Bye`) and the connection closed.
/// Version 2: `Stat` carries `rdev` and `DirEntry` its file type (`kind`),
/// for the file types of format version 3; a `DirEntry`'s name is bytes
/// (not necessarily UTF-8; encoded as a `String` was: length, then bytes).
pub const PROTOCOL_VERSION: u32 = 2;

/// Most data bytes in one `pread` reply or `pwrite` request (1 MiB); the
/// client library splits larger I/O.
pub const MAX_IO: usize = 1 << 20;

/// Longest path in a request, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Longest frame payload a client may send: one `pwrite` of [`MAX_IO`]
/// bytes, or two paths, with room for the message around them.
pub const MAX_REQUEST_FRAME: usize = MAX_IO + 2 * MAX_PATH + 1024;

/// Longest frame payload the daemon sends (a `pread` reply, a directory
/// listing, a status). A reply that would be larger is refused with
/// `EOVERFLOW` instead.
pub const MAX_FRAME: usize = 16 << 20;

/// Most requests a client may have unanswered on one connection; one more
/// is a protocol violation and loses the connection.
pub const MAX_INFLIGHT: usize = 64;

/// Longest reason text in a `Bye`, in bytes.
pub const MAX_REASON: usize = 512;

/// Most entries of any list in a request (none today carries one; kept so a
/// future list has its bound).
pub const MAX_LIST: usize = 4096;

#[cfg(test)]
mod tests;
