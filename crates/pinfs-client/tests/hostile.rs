//! Hostile clients (raw sockets): garbage, a truncated frame, a huge
//! length, a wrong version, a message before `Hello`, a second `Hello`,
//! frames carrying descriptors, data over `MAX_IO`, and too many requests
//! in flight — each loses only its own connection (told `Bye` where the
//! daemon can), while a well-behaved client of the same daemon keeps
//! working throughout.

mod support;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pinfs::fs::{OpenFlags, TruncatePolicy};
use pinfs_client::{Client, LeaseSpec, RemoteFile};
use pinfs_proto::{
    decode, encode, send_frame, send_frame_with_fd, ClientMsg, DaemonMsg, FrameReader, Op, Reply,
    MAX_FRAME, MAX_INFLIGHT, MAX_IO, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};
use pinfs_server::Fence;
use support::Daemon;

fn frame(msg: &ClientMsg) -> Vec<u8> {
    encode(msg, usize::MAX).unwrap()
}

fn hello(version: u32) -> Vec<u8> {
    frame(&ClientMsg::Hello { version, signal: 0 })
}

/// A raw connection that has been welcomed.
fn welcomed(d: &Daemon) -> (UnixStream, FrameReader) {
    let s = UnixStream::connect(&d.socket).unwrap();
    send_frame(&s, &hello(PROTOCOL_VERSION)).unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap(), MAX_FRAME, 1);
    let f = r.read_frame().unwrap();
    assert!(matches!(
        decode::<DaemonMsg>(&f.payload).unwrap(),
        DaemonMsg::Welcome(_)
    ));
    r.set_max_fds(0);
    (s, r)
}

/// The daemon closes the connection: everything up to the end is read
/// (bounded); returns the reason of the `Bye` among it, if any.
fn dropped(s: &mut UnixStream) -> Option<String> {
    s.set_read_timeout(Some(support::PATIENCE)).unwrap();
    let mut all = Vec::new();
    match s.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
        Err(e) => panic!("the daemon did not close the connection: {e}"),
    }
    let mut at = 0;
    let mut bye = None;
    while at + 4 <= all.len() {
        let len = u32::from_le_bytes(all[at..at + 4].try_into().unwrap()) as usize;
        let Some(payload) = all.get(at + 4..at + 4 + len) else {
            break;
        };
        if let Ok(DaemonMsg::Bye { reason }) = decode::<DaemonMsg>(payload) {
            bye = Some(reason);
        }
        at += 4 + len;
    }
    bye
}

/// Dropped, told why, and the why mentions `what`.
fn dropped_for(s: &mut UnixStream, what: &str) {
    let reason = dropped(s).expect("no Bye");
    assert!(
        reason.contains(what),
        "Bye `{reason}` does not say `{what}`"
    );
}

/// The good client still works.
fn still_serving(good: &Client, file: &RemoteFile) {
    assert_eq!(file.pwrite(0, b"fine").unwrap(), 4);
    let mut b = [0u8; 4];
    assert_eq!(file.pread(0, &mut b).unwrap(), 4);
    assert_eq!(&b, b"fine");
    good.statfs().unwrap();
}

#[test]
fn each_hostile_client_loses_only_its_own_connection() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let good = d.client();
    let file = good.open("/good", OpenFlags::CREATE, 0o644).unwrap();
    still_serving(&good, &file);
    let raw = || UnixStream::connect(&d.socket).unwrap();

    // Garbage: a plausible length, then bytes that are no message.
    let mut s = raw();
    s.write_all(&[8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    dropped_for(&mut s, "undecodable");
    still_serving(&good, &file);

    // A truncated frame: the length promises more than ever comes.
    let mut s = raw();
    s.write_all(&100u32.to_le_bytes()).unwrap();
    s.write_all(&[0; 10]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    dropped(&mut s);
    still_serving(&good, &file);

    // A huge length: refused before anything is allocated for it.
    let mut s = raw();
    s.write_all(&0xffff_fff0u32.to_le_bytes()).unwrap();
    dropped_for(&mut s, "exceeds the limit");
    still_serving(&good, &file);

    // A wrong version.
    let mut s = raw();
    send_frame(&s, &hello(PROTOCOL_VERSION + 1)).unwrap();
    dropped_for(&mut s, "protocol version");
    still_serving(&good, &file);

    // A request before Hello.
    let mut s = raw();
    send_frame(
        &s,
        &frame(&ClientMsg::Request {
            id: 1,
            op: Op::Statfs,
        }),
    )
    .unwrap();
    dropped_for(&mut s, "not Hello");
    still_serving(&good, &file);

    // A descriptor with Hello, and one with a later request.
    let spare = tempfile::tempfile().unwrap();
    let mut s = raw();
    send_frame_with_fd(&s, &hello(PROTOCOL_VERSION), spare.as_fd()).unwrap();
    dropped_for(&mut s, "file descriptors");
    still_serving(&good, &file);
    let (mut s, _r) = welcomed(&d);
    send_frame_with_fd(
        &s,
        &frame(&ClientMsg::Request {
            id: 1,
            op: Op::Statfs,
        }),
        spare.as_fd(),
    )
    .unwrap();
    dropped_for(&mut s, "file descriptors");
    still_serving(&good, &file);

    // A second Hello.
    let (mut s, _r) = welcomed(&d);
    send_frame(&s, &hello(PROTOCOL_VERSION)).unwrap();
    dropped_for(&mut s, "second Hello");
    still_serving(&good, &file);

    // Data over MAX_IO in a frame under the frame limit.
    let (mut s, _r) = welcomed(&d);
    let big = frame(&ClientMsg::Request {
        id: 1,
        op: Op::Pwrite {
            file: 1,
            offset: 0,
            data: vec![0; MAX_IO + 1],
        },
    });
    assert!(big.len() - 4 <= MAX_REQUEST_FRAME);
    send_frame(&s, &big).unwrap();
    dropped_for(&mut s, "pwrite data");
    still_serving(&good, &file);

    // A frame over the request limit.
    let (mut s, _r) = welcomed(&d);
    s.write_all(&((MAX_REQUEST_FRAME + 1) as u32).to_le_bytes())
        .unwrap();
    dropped_for(&mut s, "exceeds the limit");
    still_serving(&good, &file);

    // Too many requests in flight: opens that each wait for the client's
    // own write lease to be given up (as in Linux, a handle's open lease is
    // broken by the same client's writing open), never answered, then one
    // more.
    let (mut s, mut r) = welcomed(&d);
    let call = |s: &UnixStream, r: &mut FrameReader, id: u64, op: Op| -> Reply {
        send_frame(s, &frame(&ClientMsg::Request { id, op })).unwrap();
        match decode::<DaemonMsg>(&r.read_frame().unwrap().payload).unwrap() {
            DaemonMsg::Reply { id: got, result } if got == id => result.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    let Reply::Opened { file: fid, .. } = call(
        &s,
        &mut r,
        1,
        Op::Open {
            path: "/h".to_owned(),
            flags: OpenFlags::CREATE,
            mode: 0o644,
        },
    ) else {
        panic!("open")
    };
    drop(call(
        &s,
        &mut r,
        2,
        Op::SetLease {
            file: fid,
            spec: LeaseSpec::write(),
        },
    ));
    let mut burst = Vec::new();
    for id in 0..=MAX_INFLIGHT as u64 {
        burst.extend(frame(&ClientMsg::Request {
            id: 100 + id,
            op: Op::Open {
                path: "/h".to_owned(),
                flags: OpenFlags::RDWR,
                mode: 0,
            },
        }));
    }
    s.write_all(&burst).unwrap();
    dropped_for(&mut s, "in flight");
    still_serving(&good, &file);

    // Only the good client is left, and it holds nothing it did not take.
    assert!(support::wait_until(
        || good.status().unwrap().clients.len() == 1
    ));
    let st = good.status().unwrap();
    assert!(st.leases.is_empty(), "{:?}", st.leases);
    drop(file);
    drop(good);
    d.stop_and_fsck();
}

#[test]
fn silent_connections_are_bounded() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let good = d.client();
    let file = good.open("/good", OpenFlags::CREATE, 0o644).unwrap();
    // Connections that never say Hello hold a handshake slot each...
    let silent: Vec<UnixStream> = (0..pinfs_server::MAX_HANDSHAKES)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    // ... so once they are all taken, one more is closed at once (the
    // accept loop may not have seen every silent one yet: retry, bounded).
    assert!(support::wait_until(|| {
        let mut extra = UnixStream::connect(&d.socket).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(extra.read(&mut b), Ok(0))
    }));
    still_serving(&good, &file);
    drop(silent);
    // Their slots come back: a new client is welcomed.
    assert!(support::wait_until(|| {
        pinfs_client::Client::connect_with(
            &d.socket,
            pinfs_client::ConnectOptions { signal: Some(0) },
        )
        .is_ok()
    }));
    drop(file);
    drop(good);
    d.stop_and_fsck();
}

#[test]
fn a_client_that_does_not_read_its_replies_is_dropped() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let good = d.client();
    let file = good.open("/good", OpenFlags::CREATE, 0o644).unwrap();
    file.pwrite(0, &vec![5u8; MAX_IO]).unwrap();
    let (mut s, mut r) = welcomed(&d);
    send_frame(
        &s,
        &frame(&ClientMsg::Request {
            id: 1,
            op: Op::Open {
                path: "/good".to_owned(),
                flags: OpenFlags::RDONLY,
                mode: 0,
            },
        }),
    )
    .unwrap();
    let Ok(DaemonMsg::Reply {
        result: Ok(Reply::Opened { file: fid, .. }),
        ..
    }) = decode::<DaemonMsg>(&r.read_frame().unwrap().payload)
    else {
        panic!("open")
    };
    // 1 MiB reads, a few at a time (never near the in-flight bound), and
    // no reply read: the daemon's outgoing bytes pass their bound.
    let per_batch = 8;
    let batches = pinfs_server::MAX_OUTGOING_BYTES / MAX_IO / per_batch + 4;
    let mut id = 10;
    for _ in 0..batches {
        let mut burst = Vec::new();
        for _ in 0..per_batch {
            id += 1;
            burst.extend(frame(&ClientMsg::Request {
                id,
                op: Op::Pread {
                    file: fid,
                    offset: 0,
                    len: MAX_IO as u64,
                },
            }));
        }
        if s.write_all(&burst).is_err() {
            break; // already dropped
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // What was queued still arrives, then the end: dropped for the bytes
    // it let pile up (not for requests in flight, which would have ended
    // it before its replies reached the bound).
    s.set_read_timeout(Some(support::PATIENCE)).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    assert!(
        all.len() >= pinfs_server::MAX_OUTGOING_BYTES,
        "only {} bytes came before the end",
        all.len()
    );
    // ... and no more than the bound (plus the socket's own buffer and
    // one reply): the daemon did not keep queueing.
    assert!(
        all.len() <= pinfs_server::MAX_OUTGOING_BYTES + (8 << 20),
        "{} bytes queued for a client that does not read",
        all.len()
    );
    still_serving(&good, &file);
    assert!(support::wait_until(
        || good.status().unwrap().clients.len() == 1
    ));
    drop(file);
    drop(good);
    d.stop_and_fsck();
}
