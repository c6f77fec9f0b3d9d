//! Unit tests of the protocol: every message round-trips, the encoding is
//! pinned, every bound is enforced at its edge, and garbage, truncated,
//! oversized and descriptor-carrying frames are refused.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pinfs::fs::{DirEntry, FallocMode, OpenFlags, TruncatePolicy};
use pinfs::lease::{
    BreakEvent, BreakReason, ByteRange, EventKind, FileKey, HandleId, LeaseId, LeaseInfo,
    LeaseKind, LeaseState, LeaseType, OwnerId,
};
use pinfs::pin::PinId;

use super::*;

fn sample_requests() -> Vec<Op> {
    let p = || "/a/b".to_owned();
    vec![
        Op::Open {
            path: p(),
            flags: OpenFlags::CREATE,
            mode: 0o644,
        },
        Op::Close { file: 1 },
        Op::Pread {
            file: 1,
            offset: 7,
            len: 4096,
        },
        Op::Pwrite {
            file: 1,
            offset: 9,
            data: vec![1, 2, 3],
        },
        Op::Truncate { file: 1, size: 0 },
        Op::TruncatePath { path: p(), size: 1 },
        Op::Fallocate {
            file: 1,
            mode: FallocMode::ZeroRange { keep_size: true },
            offset: 0,
            len: 8192,
        },
        Op::Reflink {
            file: 1,
            src: 2,
            range: Some((0, 4096, 4096)),
        },
        Op::Fsync { file: 1 },
        Op::Fstat { file: 1 },
        Op::Fiemap { file: 1 },
        Op::Fchmod {
            file: 1,
            mode: 0o600,
        },
        Op::Chmod {
            path: p(),
            mode: 0o600,
        },
        Op::Chown {
            path: p(),
            uid: Some(1),
            gid: None,
        },
        Op::Unlink { path: p() },
        Op::Mkdir {
            path: p(),
            mode: 0o755,
        },
        Op::Rmdir { path: p() },
        Op::Rename {
            from: p(),
            to: "/c".to_owned(),
        },
        Op::Readdir { path: p() },
        Op::Stat { path: p() },
        Op::Statfs,
        Op::SetLease {
            file: 1,
            spec: LeaseSpec::layout_shared()
                .unbreakable()
                .range(ByteRange::new(0, 4096))
                .nonblocking(),
        },
        Op::GetLease { file: 1 },
        Op::ReleaseLease { lease: LeaseId(3) },
        Op::PinLongTerm {
            file: 1,
            offset: 0,
            len: 4096,
        },
        Op::Unpin { pin: PinId(4) },
        Op::Status,
        Op::Mmap {
            file: 1,
            map: 7,
            offset: 4096,
            len: 8192,
            flags: pinfs::map::MAP_SHARED_VALIDATE | pinfs::map::MAP_DIRECT,
            read_only: false,
        },
        Op::Munmap { map: 7 },
        Op::Fault { map: 7, page: 1 },
        Op::Persist {
            map: 7,
            offset: 0,
            len: 64,
        },
        Op::MapPin {
            map: 7,
            offset: 0,
            len: 4096,
        },
        Op::Register {
            map: 7,
            offset: 0,
            len: 8192,
            mode: pinfs::dma::RevokeMode::Redirect,
        },
        Op::Deregister { reg: 2 },
        Op::DmaWrite {
            reg: 2,
            offset: 3,
            data: vec![1; 10],
        },
        Op::DmaRead {
            reg: 2,
            offset: 3,
            len: 10,
        },
    ]
}

fn event() -> BreakEvent {
    BreakEvent {
        kind: EventKind::Break,
        lease: LeaseInfo {
            id: LeaseId(5),
            kind: LeaseKind::Layout,
            ty: LeaseType::Read,
            target: LeaseType::Unlock,
            unbreakable: false,
            state: LeaseState::Breaking,
            owner: OwnerId(6),
            handle: HandleId(7),
            file: FileKey(8),
            range: ByteRange::WHOLE,
        },
        target: LeaseType::Unlock,
        reason: BreakReason::LayoutChange(ByteRange::new(0, 4096)),
        breaker: OwnerId(9),
    }
}

fn round_trip<T>(msg: &T, max: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let frame = encode(msg, max).unwrap();
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    let back: T = decode(&frame[4..]).unwrap();
    assert_eq!(&back, msg);
}

#[test]
fn every_message_round_trips() {
    round_trip(
        &ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            signal: 29,
        },
        MAX_REQUEST_FRAME,
    );
    round_trip(&ClientMsg::Ack { token: 1, errno: 0 }, MAX_REQUEST_FRAME);
    for (id, op) in sample_requests().into_iter().enumerate() {
        op.validate().unwrap();
        round_trip(&ClientMsg::Request { id: id as u64, op }, MAX_REQUEST_FRAME);
    }
    let replies = vec![
        Ok(Reply::Done),
        Ok(Reply::Opened {
            file: 1,
            key: FileKey(2),
            ino: 3,
        }),
        Ok(Reply::Data(vec![9; 100])),
        Ok(Reply::Count(100)),
        Ok(Reply::Lease(LeaseId(1))),
        Ok(Reply::LeaseType(LeaseType::Read)),
        Ok(Reply::Pinned {
            pin: PinId(1),
            pool_ranges: vec![(4096, 8192)],
        }),
        Ok(Reply::Mapped { id: 12 }),
        Ok(Reply::Registered {
            reg: 2,
            keys: pinfs::dma::MrKeys {
                mr: pinfs::dma::MrId(1),
                iova: 0x1000,
                lkey: 5,
                rkey: 6,
            },
        }),
        Ok(Reply::Dma {
            completion: pinfs::dma::Completion::DeviceError(5),
            data: vec![1, 2],
        }),
        Err(libc::ETXTBSY),
    ];
    for (id, result) in replies.into_iter().enumerate() {
        round_trip(
            &DaemonMsg::Reply {
                id: id as u64,
                result,
            },
            MAX_FRAME,
        );
    }
    round_trip(&DaemonMsg::Event(event()), MAX_FRAME);
    round_trip(&DaemonMsg::bye("shutting down"), MAX_FRAME);
    round_trip(&DaemonMsg::Ping { token: 77 }, MAX_FRAME);
    // The largest placement the core sends fits a frame.
    use pinfs::map::{RemoteKind, RemotePiece, MAX_PLACE_PIECES};
    let kinds = [
        RemoteKind::Pool {
            pool_offset: u64::MAX - 4095,
        },
        RemoteKind::Served {
            copy_of: Some(u64::MAX - 4095),
        },
        RemoteKind::Served { copy_of: None },
        RemoteKind::Zero,
        RemoteKind::Sigbus,
        RemoteKind::Nothing,
    ];
    let pieces: Vec<RemotePiece> = (0..MAX_PLACE_PIECES as u64)
        .map(|i| RemotePiece {
            page: u64::MAX - i,
            pages: u64::MAX,
            kind: kinds[i as usize % kinds.len()],
        })
        .collect();
    round_trip(
        &DaemonMsg::Place {
            map: u64::MAX,
            token: u64::MAX,
            pieces,
        },
        MAX_FRAME,
    );
    round_trip(
        &DaemonMsg::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            client_id: 1,
            pool_len: 1 << 30,
            huge_pages: true,
            break_time: Duration::from_millis(500),
            policy: TruncatePolicy::Fail,
        }),
        MAX_FRAME,
    );
}

/// The bytes of a few messages, pinned: a change of a core value type or of
/// a variant's position that would change the wire fails here (bump
/// `PROTOCOL_VERSION` and update the bytes together).
/// `Reply::Dir`'s position among the replies.
const DIR_VARIANT: u8 = 6;

#[test]
fn encoding_is_pinned() {
    let hello = encode(
        &ClientMsg::Hello {
            version: 1,
            signal: 29,
        },
        MAX_REQUEST_FRAME,
    )
    .unwrap();
    assert_eq!(hello, [3, 0, 0, 0, 0, 1, 58]);
    let open = encode(
        &ClientMsg::Request {
            id: 1,
            op: Op::Open {
                path: "/f".to_owned(),
                flags: OpenFlags::CREATE,
                mode: 0o644,
            },
        },
        MAX_REQUEST_FRAME,
    )
    .unwrap();
    assert_eq!(
        open,
        [14, 0, 0, 0, 1, 1, 0, 2, b'/', b'f', 1, 1, 1, 0, 0, 0, 0xa4, 0x03]
    );
    // Data travels as a length and the bytes.
    let pwrite = encode(
        &ClientMsg::Request {
            id: 1,
            op: Op::Pwrite {
                file: 1,
                offset: 2,
                data: vec![9, 8],
            },
        },
        MAX_REQUEST_FRAME,
    )
    .unwrap();
    assert_eq!(pwrite, [8, 0, 0, 0, 1, 1, 3, 1, 2, 2, 9, 8]);
    let data = encode(
        &DaemonMsg::Reply {
            id: 1,
            result: Ok(Reply::Data(vec![7])),
        },
        MAX_FRAME,
    )
    .unwrap();
    assert_eq!(data[4..], [1, 1, 0, 2, 1, 7]);
    // A directory entry carries its file type (protocol version 2).
    let dir = encode(
        &DaemonMsg::Reply {
            id: 1,
            result: Ok(Reply::Dir(vec![DirEntry {
                name: b"a".to_vec(),
                ino: 2,
                is_dir: false,
                kind: pinfs::format::S_IFREG,
            }])),
        },
        MAX_FRAME,
    )
    .unwrap();
    assert_eq!(
        dir[4..],
        [1, 1, 0, DIR_VARIANT, 1, 1, b'a', 2, 0, 0x80, 0x80, 0x02]
    );
    // A name is its bytes, UTF-8 or not (length, then the bytes, as a
    // `String` was encoded: the same wire format for UTF-8 names).
    let raw = DaemonMsg::Reply {
        id: 1,
        result: Ok(Reply::Dir(vec![DirEntry {
            name: b"caf\xe9".to_vec(),
            ino: 2,
            is_dir: false,
            kind: pinfs::format::S_IFREG,
        }])),
    };
    let frame = encode(&raw, MAX_FRAME).unwrap();
    assert_eq!(frame[4..12], [1, 1, 0, DIR_VARIANT, 1, 4, b'c', b'a']);
    assert_eq!(frame[12..14], [b'f', 0xe9]);
    round_trip(&raw, MAX_FRAME);
    let ev = encode(&DaemonMsg::Event(event()), MAX_FRAME).unwrap();
    assert_eq!(
        ev[4..],
        [
            2, 0, 5, 1, 0, 2, 0, 1, 6, 7, 8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0x01, 2, 2, 0, 0x80, 0x20, 9
        ]
    );
}

#[test]
fn every_bound_is_enforced() {
    let dma_write = |n: usize| Op::DmaWrite {
        reg: 1,
        offset: 0,
        data: vec![0; n],
    };
    dma_write(MAX_IO).validate().unwrap();
    assert!(dma_write(MAX_IO + 1).validate().is_err());
    let dma_read = |n: u64| Op::DmaRead {
        reg: 1,
        offset: 0,
        len: n,
    };
    dma_read(MAX_IO as u64).validate().unwrap();
    assert!(dma_read(MAX_IO as u64 + 1).validate().is_err());
    let pwrite = |n: usize| Op::Pwrite {
        file: 1,
        offset: 0,
        data: vec![0; n],
    };
    pwrite(MAX_IO).validate().unwrap();
    assert!(matches!(
        pwrite(MAX_IO + 1).validate(),
        Err(ProtoError::Bound { max: MAX_IO, .. })
    ));
    // The largest request fits its frame.
    let big = ClientMsg::Request {
        id: u64::MAX,
        op: pwrite(MAX_IO),
    };
    encode(&big, MAX_REQUEST_FRAME).unwrap();
    let two_paths = ClientMsg::Request {
        id: u64::MAX,
        op: Op::Rename {
            from: "x".repeat(MAX_PATH),
            to: "y".repeat(MAX_PATH),
        },
    };
    two_paths.validate().unwrap();
    encode(&two_paths, MAX_REQUEST_FRAME).unwrap();
    let pread = |len: u64| Op::Pread {
        file: 1,
        offset: 0,
        len,
    };
    pread(MAX_IO as u64).validate().unwrap();
    assert!(pread(MAX_IO as u64 + 1).validate().is_err());
    assert!(pread(u64::MAX).validate().is_err());
    let long = "p".repeat(MAX_PATH + 1);
    for op in [
        Op::Open {
            path: long.clone(),
            flags: OpenFlags::RDONLY,
            mode: 0,
        },
        Op::TruncatePath {
            path: long.clone(),
            size: 0,
        },
        Op::Unlink { path: long.clone() },
        Op::Mkdir {
            path: long.clone(),
            mode: 0,
        },
        Op::Rmdir { path: long.clone() },
        Op::Readdir { path: long.clone() },
        Op::Stat { path: long.clone() },
        Op::Chmod {
            path: long.clone(),
            mode: 0,
        },
        Op::Chown {
            path: long.clone(),
            uid: None,
            gid: None,
        },
        Op::Rename {
            from: "/a".to_owned(),
            to: long.clone(),
        },
        Op::Rename {
            from: long.clone(),
            to: "/a".to_owned(),
        },
    ] {
        assert!(
            matches!(op.validate(), Err(ProtoError::Bound { max: MAX_PATH, .. })),
            "{}",
            op.name()
        );
    }
    // Encoding refuses a frame over its limit.
    assert!(matches!(
        encode(&pwrite(100), 50),
        Err(ProtoError::TooLarge { max: 50, .. })
    ));
    // Bye reasons are one line, bounded, cut at a character boundary.
    let DaemonMsg::Bye { reason } = DaemonMsg::bye(&"é".repeat(MAX_REASON)) else {
        unreachable!()
    };
    assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
    assert_eq!(
        DaemonMsg::bye("first\nsecond"),
        DaemonMsg::Bye {
            reason: "first".to_owned()
        }
    );
}

#[test]
fn garbage_and_trailing_bytes_are_refused() {
    assert!(matches!(
        decode::<ClientMsg>(&[0xff, 0xff, 0xff]),
        Err(ProtoError::Decode(_))
    ));
    assert!(decode::<ClientMsg>(&[]).is_err());
    // A valid Hello followed by one more byte.
    assert!(matches!(
        decode::<ClientMsg>(&[0, 1, 58, 0]),
        Err(ProtoError::Trailing(1))
    ));
    // A length prefix for a vector far past the payload: refused, not
    // allocated.
    assert!(decode::<ClientMsg>(&[1, 1, 3, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    // Every prefix of a valid message is refused.
    let frame = encode(
        &ClientMsg::Request {
            id: 1,
            op: sample_requests().remove(0),
        },
        MAX_REQUEST_FRAME,
    )
    .unwrap();
    for cut in 0..frame.len() - 4 {
        assert!(decode::<ClientMsg>(&frame[4..4 + cut]).is_err(), "{cut}");
    }
}

fn reader_pair(max: usize, max_fds: usize) -> (UnixStream, FrameReader) {
    let (a, b) = UnixStream::pair().unwrap();
    (a, FrameReader::new(b, max, max_fds))
}

#[test]
fn frames_are_reassembled_and_split() {
    let (mut w, mut r) = reader_pair(MAX_REQUEST_FRAME, 0);
    let f1 = encode(&ClientMsg::Ack { token: 1, errno: 0 }, MAX_REQUEST_FRAME).unwrap();
    let big = ClientMsg::Request {
        id: 2,
        op: Op::Pwrite {
            file: 1,
            offset: 0,
            data: vec![7; MAX_IO],
        },
    };
    let f2 = encode(&big, MAX_REQUEST_FRAME).unwrap();
    let mut all = f1.clone();
    all.extend_from_slice(&f2);
    let writer = std::thread::spawn(move || {
        // Dribbled out in odd pieces.
        for chunk in all.chunks(1000 + 7) {
            w.write_all(chunk).unwrap();
        }
    });
    let got1: ClientMsg = decode(&r.read_frame().unwrap().payload).unwrap();
    assert_eq!(got1, ClientMsg::Ack { token: 1, errno: 0 });
    let got2: ClientMsg = decode(&r.read_frame().unwrap().payload).unwrap();
    assert_eq!(got2, big);
    writer.join().unwrap();
    assert!(matches!(r.read_frame(), Err(ProtoError::Closed)));
}

#[test]
fn oversized_truncated_and_closed_are_told_apart() {
    let (mut w, mut r) = reader_pair(1024, 0);
    w.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(matches!(
        r.read_frame(),
        Err(ProtoError::TooLarge { max: 1024, .. })
    ));
    let (mut w, mut r) = reader_pair(1024, 0);
    w.write_all(&1025u32.to_le_bytes()).unwrap();
    assert!(matches!(
        r.read_frame(),
        Err(ProtoError::TooLarge { len: 1025, .. })
    ));
    let (mut w, mut r) = reader_pair(1024, 0);
    w.write_all(&100u32.to_le_bytes()).unwrap();
    w.write_all(&[0; 10]).unwrap();
    drop(w);
    assert!(matches!(r.read_frame(), Err(ProtoError::Truncated)));
    let (mut w, mut r) = reader_pair(1024, 0);
    w.write_all(&[1, 0]).unwrap();
    drop(w);
    assert!(matches!(r.read_frame(), Err(ProtoError::Truncated)));
    let (w, mut r) = reader_pair(1024, 0);
    drop(w);
    assert!(matches!(r.read_frame(), Err(ProtoError::Closed)));
}

#[test]
fn descriptors_pass_only_where_expected() {
    let frame = encode(&ClientMsg::Ack { token: 1, errno: 0 }, MAX_REQUEST_FRAME).unwrap();
    let file = tempfile::tempfile().unwrap();
    // Refused (and closed) where none is expected.
    let (w, mut r) = reader_pair(1024, 0);
    send_frame_with_fd(&w, &frame, file.as_fd()).unwrap();
    assert!(matches!(r.read_frame(), Err(ProtoError::FdsAttached(1))));
    // Received where one is.
    let (w, mut r) = reader_pair(1024, 1);
    send_frame_with_fd(&w, &frame, file.as_fd()).unwrap();
    let got = r.read_frame().unwrap();
    assert_eq!(got.fds.len(), 1);
    assert_eq!(got.payload, frame[4..]);
    // The received descriptor is close-on-exec.
    let flags = rustix::io::fcntl_getfd(&got.fds[0]).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
}
