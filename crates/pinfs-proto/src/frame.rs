//! Frames: a `u32` little-endian length, then a `postcard` payload of at most
//! a given size; and the one descriptor the protocol passes (the pool's, in
//! `Welcome`) through `SCM_RIGHTS`.
//!
//! Every frame is read with `recvmsg` (`MSG_CMSG_CLOEXEC`), so a descriptor
//! a peer attaches to any frame is seen — and refused, closed at once, where
//! none is expected — and control data the buffer could not hold
//! (`MSG_CTRUNC`) is an error, never silently lost. A length above the
//! reader's bound is refused before a byte of the payload is read or any
//! memory is set aside for it.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Most descriptors one `recvmsg` makes room for: more than the protocol
/// ever sends, so that a peer sending a few is told apart from control
/// data that did not fit (`MSG_CTRUNC`).
const MAX_FDS_PER_READ: usize = 4;

/// How much a reader asks the kernel for at once when no large frame is
/// pending.
const READ_CHUNK: usize = 64 << 10;

/// Why a frame could not be read, written or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A frame longer than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a message.
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
    /// The payload has bytes after its message.
    #[error("{0} bytes after the message in a frame")]
    Trailing(usize),
    /// A frame carried file descriptors where none are expected.
    #[error("frame carried {0} file descriptors")]
    FdsAttached(usize),
    /// Control data did not fit (`MSG_CTRUNC`): descriptors were lost.
    #[error("control data truncated (MSG_CTRUNC)")]
    ControlTruncated,
    /// The peer speaks another protocol version.
    #[error("protocol version {got}, this side speaks {expected}")]
    Version {
        /// What the peer announced.
        got: u32,
        /// What this side speaks.
        expected: u32,
    },
    /// A field over its bound.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    Bound {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message that breaks the protocol's rules (out of order, too many
    /// requests in flight, ...).
    #[error("{0}")]
    Violation(String),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame (header included), refusing a payload over
/// `max` bytes (`TooLarge`).
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![0u8; HEADER_BYTES];
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out))?;
    let len = out.len() - HEADER_BYTES;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    let header = u32::try_from(len).map_err(|_| ProtoError::TooLarge { len, max })?;
    out[..HEADER_BYTES].copy_from_slice(&header.to_le_bytes());
    Ok(out)
}

/// Decodes one message from a frame's payload; every byte must belong to it.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtoError> {
    let (msg, rest) = postcard::take_from_bytes(payload)?;
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(ProtoError::Trailing(rest.len()))
    }
}

/// Writes one encoded frame, whole. `MSG_NOSIGNAL`: a peer that went away
/// is `EPIPE` here, never a `SIGPIPE` that would kill the process (a C
/// program linking the client library keeps the default action).
pub fn send_frame(sock: &UnixStream, frame: &[u8]) -> Result<(), ProtoError> {
    let mut at = 0;
    while at < frame.len() {
        match rustix::net::send(sock, &frame[at..], SendFlags::NOSIGNAL) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(n) => at += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    }
    Ok(())
}

/// Writes one encoded frame with `fd` attached (`SCM_RIGHTS`, on its first
/// byte).
pub fn send_frame_with_fd(
    sock: &UnixStream,
    frame: &[u8],
    fd: BorrowedFd<'_>,
) -> Result<(), ProtoError> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(ProtoError::ControlTruncated);
    }
    let sent = loop {
        match sendmsg(
            sock,
            &[IoSlice::new(frame)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    };
    if sent < frame.len() {
        send_frame(sock, &frame[sent..])?;
    }
    Ok(())
}

/// One frame read: its payload and the descriptors that came with it.
#[derive(Debug)]
pub struct Frame {
    /// The payload (header removed).
    pub payload: Vec<u8>,
    /// Descriptors received with the frame (close-on-exec).
    pub fds: Vec<OwnedFd>,
}

/// Reads frames from a stream socket, buffered, each at most `max` bytes.
#[derive(Debug)]
pub struct FrameReader {
    sock: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
    max_fds: usize,
}

impl FrameReader {
    /// A reader of frames of at most `max` payload bytes carrying at most
    /// `max_fds` descriptors in all (more: `FdsAttached`).
    pub fn new(sock: UnixStream, max: usize, max_fds: usize) -> Self {
        FrameReader {
            sock,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max,
            max_fds,
        }
    }

    /// Allows `max_fds` descriptors on the frames read from now on.
    pub fn set_max_fds(&mut self, max_fds: usize) {
        self.max_fds = max_fds;
    }

    /// The socket.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Reads the next frame. Errors: `Closed` at a clean end between frames,
    /// `Truncated` inside one, `TooLarge`, `FdsAttached` (the descriptors
    /// are closed), `ControlTruncated`, `Io`.
    pub fn read_frame(&mut self) -> Result<Frame, ProtoError> {
        let mut fds = Vec::new();
        loop {
            let avail = self.end - self.start;
            let mut need = HEADER_BYTES;
            if avail >= HEADER_BYTES {
                let mut header = [0u8; HEADER_BYTES];
                header.copy_from_slice(&self.buf[self.start..self.start + HEADER_BYTES]);
                let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
                if len > self.max {
                    return Err(ProtoError::TooLarge { len, max: self.max });
                }
                need = HEADER_BYTES + len;
                if avail >= need {
                    let at = self.start + HEADER_BYTES;
                    let payload = self.buf[at..at + len].to_vec();
                    self.start += need;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    return Ok(Frame { payload, fds });
                }
            }
            // Room for the rest of this frame: move what is buffered to the
            // front, and grow (only up to one bounded frame) if needed.
            if self.buf.len() - self.start < need {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < need {
                    self.buf.resize(need, 0);
                }
            } else if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.fill(&mut fds)?;
            if fds.len() > self.max_fds {
                return Err(ProtoError::FdsAttached(fds.len()));
            }
            if n == 0 {
                return Err(if self.end == self.start && fds.is_empty() {
                    ProtoError::Closed
                } else {
                    ProtoError::Truncated
                });
            }
        }
    }

    /// One `recvmsg` into the free end of the buffer.
    fn fill(&mut self, fds: &mut Vec<OwnedFd>) -> Result<usize, ProtoError> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
            match recvmsg(
                self.sock.as_fd(),
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
        };
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(got) = m {
                fds.extend(got);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(ProtoError::ControlTruncated);
        }
        self.end += msg.bytes;
        Ok(msg.bytes)
    }
}
