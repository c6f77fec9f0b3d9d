//! The daemon review's findings, each as a test that fails without its fix:
//! a `Hello` choosing a harmful signal is refused; a session that has ended
//! (or let an acknowledgement time out) is never waited on again, even with
//! lease-break-time 0; a client cannot unlock the daemon's pool lock through
//! the descriptor it is handed.
//!
//! # Safety
//!
//! One `fcntl(F_OFD_SETLK)` with a `flock` on the stack (a hostile client's
//! unlock); the descriptor is borrowed, so it is open.
#![allow(unsafe_code)]

mod support;

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use pinfs::fs::{Fs, MountOptions, OpenFlags, TruncatePolicy};
use pinfs::lease::ByteRange;
use pinfs::media::{MappedPool, Media};
use pinfs_client::{Client, ConnectOptions, LeaseSpec};
use pinfs_proto::{
    decode, encode, send_frame, ClientMsg, DaemonMsg, FrameReader, Op, Reply, MAX_FRAME,
    PROTOCOL_VERSION,
};
use pinfs_server::{Fence, ServeOptions, Server, Stop};
use support::{Daemon, PATIENCE};

fn frame(msg: &ClientMsg) -> Vec<u8> {
    encode(msg, usize::MAX).unwrap()
}

/// A raw connection after `Hello` with `signal`: the daemon's first answer,
/// the pool descriptor if one came, and the reader.
fn raw_hello(d: &Daemon, signal: i32) -> (UnixStream, FrameReader, DaemonMsg, Option<OwnedFd>) {
    let s = UnixStream::connect(&d.socket).unwrap();
    send_frame(
        &s,
        &frame(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            signal,
        }),
    )
    .unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap(), MAX_FRAME, 1);
    let f = r.read_frame().unwrap();
    let msg = decode::<DaemonMsg>(&f.payload).unwrap();
    let fd = f.fds.into_iter().next();
    r.set_max_fds(0);
    (s, r, msg, fd)
}

/// Sends request `op` and reads frames up to its reply.
fn call(s: &UnixStream, r: &mut FrameReader, id: u64, op: Op) -> Reply {
    send_frame(s, &frame(&ClientMsg::Request { id, op })).unwrap();
    loop {
        let f = r.read_frame().unwrap();
        if let DaemonMsg::Reply { id: got, result } = decode::<DaemonMsg>(&f.payload).unwrap() {
            assert_eq!(got, id);
            return result.expect("request failed");
        }
    }
}

/// Through a raw connection: creates `path` with 64 KiB, takes an
/// unbreakable layout lease and a long-term pin of it — so the session
/// outlives its connection until this process dies.
fn pin_blocks(s: &UnixStream, r: &mut FrameReader, path: &str) {
    let Reply::Opened { file, .. } = call(
        s,
        r,
        1,
        Op::Open {
            path: path.into(),
            flags: OpenFlags::CREATE,
            mode: 0o644,
        },
    ) else {
        panic!("no Opened")
    };
    call(
        s,
        r,
        2,
        Op::Pwrite {
            file,
            offset: 0,
            data: vec![7; 65536],
        },
    );
    call(
        s,
        r,
        3,
        Op::SetLease {
            file,
            spec: LeaseSpec::layout_shared()
                .unbreakable()
                .range(ByteRange::new(0, 65536)),
        },
    );
    call(
        s,
        r,
        4,
        Op::PinLongTerm {
            file,
            offset: 0,
            len: 65536,
        },
    );
}

#[test]
fn hello_choosing_a_harmful_signal_is_refused() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Off);
    for sig in [libc::SIGKILL, libc::SIGSTOP, libc::SIGTERM, libc::SIGSEGV] {
        let (_s, _r, msg, fd) = raw_hello(&d, sig);
        match msg {
            DaemonMsg::Bye { reason } => assert!(reason.contains("signal"), "{reason}"),
            other => panic!("signal {sig} accepted: {other:?}"),
        }
        assert!(fd.is_none(), "the pool reached a refused client");
    }
    for sig in [libc::SIGUSR1, libc::SIGRTMIN()] {
        let (_s, _r, msg, _fd) = raw_hello(&d, sig);
        assert!(
            matches!(msg, DaemonMsg::Welcome(_)),
            "signal {sig} refused: {msg:?}"
        );
    }
    d.stop_and_fsck();
}

#[test]
fn an_ended_session_is_never_waited_on_even_with_break_time_zero() {
    // A raw client (this process: alive for the whole test) pins blocks, so
    // its session outlives its connection, waiting for its death. It
    // breaks the protocol and never reads again, but keeps its socket open.
    // Asking it anything must fail at once: before the fix the request went
    // out and, with lease-break-time 0, was waited for for ever.
    let d = Daemon::start(TruncatePolicy::Defer, Duration::ZERO, Fence::Off);
    let (s, mut r, welcome, _pool) = raw_hello(&d, 0);
    let DaemonMsg::Welcome(w) = welcome else {
        panic!("not welcomed: {welcome:?}")
    };
    pin_blocks(&s, &mut r, "/pinned");
    // Garbage: the session ends (Bye), the socket stays open on our side.
    std::io::Write::write_all(
        &mut &s,
        &[8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    )
    .unwrap();
    loop {
        let f = r.read_frame().unwrap();
        if matches!(
            decode::<DaemonMsg>(&f.payload).unwrap(),
            DaemonMsg::Bye { .. }
        ) {
            break;
        }
    }
    let (tx, rx) = channel();
    let server = d.server_arc();
    let asker = std::thread::spawn(move || {
        let _ = tx.send(server.ping(w.client_id));
    });
    let got = rx
        .recv_timeout(PATIENCE)
        .expect("the daemon waits on a session that has ended");
    let err = got.expect_err("an ended session answered");
    assert_eq!(err.errno(), pinfs::Errno::ENOTCONN, "{err}");
    asker.join().unwrap();
    drop(r);
    drop(s);
    d.stop_and_fsck();
}

#[test]
fn a_client_cannot_unlock_the_daemons_pool_lock() {
    // A pool opened by path is locked (SPEC §7) through the daemon's open
    // file description. The descriptor handed to a client is its own
    // description: its `F_OFD_SETLK(F_UNLCK)` releases nothing of the
    // daemon's, so a second mount of the pool is still refused. Before the
    // fix the client got the daemon's description and could unlock it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let media = Arc::new(MappedPool::create(&path, 64 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount_with(
        Arc::clone(&media) as Arc<dyn Media>,
        MountOptions {
            break_time: Duration::from_secs(45),
            policy: TruncatePolicy::Defer,
        },
    )
    .unwrap();
    let socket = dir.path().join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = Arc::new(Server::new(fs, ServeOptions::default()));
    let stop = Stop::new().unwrap();
    let (srv, st) = (Arc::clone(&server), stop.clone());
    let serving = std::thread::spawn(move || srv.serve(listener, &st));

    let client = Client::connect_with(&socket, ConnectOptions { signal: Some(0) }).unwrap();
    assert!(
        MappedPool::open(&path).is_err(),
        "the pool is not locked at all"
    );
    unlock_ofd(client.pool_fd());
    let second = MappedPool::open(&path);
    assert!(
        second.is_err(),
        "a client's unlock dropped the daemon's pool lock: a second mount got the pool"
    );
    drop(second);
    drop(client);
    stop.stop();
    serving.join().unwrap().unwrap();
}

/// `F_OFD_SETLK(F_UNLCK)` over the whole file, as a hostile client would.
fn unlock_ofd(fd: BorrowedFd<'_>) {
    let lock = libc::flock {
        l_type: libc::F_UNLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: `fd` is borrowed, hence open; `lock` is a valid `flock` on
    // the stack for the call, which only reads it.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    assert_eq!(rc, 0, "unlock: {}", std::io::Error::last_os_error());
}

#[test]
fn a_client_cannot_resize_a_memfd_pool() {
    // The daemon's mapping of a memfd pool would lose its pages (SIGBUS in
    // the daemon) if a client shrank the file: the daemon seals it.
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Off);
    let c = d.client();
    let len = c.welcome().pool_len;
    let fd = c.pool_fd();
    assert_eq!(
        rustix::fs::ftruncate(fd, len / 2),
        Err(rustix::io::Errno::PERM),
        "a client shrank the pool"
    );
    assert_eq!(
        rustix::fs::ftruncate(fd, len * 2),
        Err(rustix::io::Errno::PERM),
        "a client grew the pool"
    );
    drop(c);
    d.stop_and_fsck();
}

#[test]
fn a_client_that_stops_reading_never_pins_its_session() {
    // The client fills its socket with replies it never reads, then breaks
    // the protocol. Its session must end and go away (its writer is not
    // left blocked for ever): before the fix it stayed listed, a thread
    // blocked in a write, counting against `max_clients`.
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Off);
    let (s, mut r, welcome, _pool) = raw_hello(&d, 0);
    let DaemonMsg::Welcome(w) = welcome else {
        panic!("not welcomed: {welcome:?}")
    };
    let Reply::Opened { file, .. } = call(
        &s,
        &mut r,
        1,
        Op::Open {
            path: "/big".into(),
            flags: OpenFlags::CREATE,
            mode: 0o644,
        },
    ) else {
        panic!("no Opened")
    };
    call(
        &s,
        &mut r,
        2,
        Op::Pwrite {
            file,
            offset: 0,
            data: vec![7; pinfs_proto::MAX_IO],
        },
    );
    // Sixteen MiB of replies: far more than a socket buffers, far less than
    // the daemon queues before dropping a client.
    for id in 3..19 {
        send_frame(
            &s,
            &frame(&ClientMsg::Request {
                id,
                op: Op::Pread {
                    file,
                    offset: 0,
                    len: pinfs_proto::MAX_IO as u64,
                },
            }),
        )
        .unwrap();
    }
    // The replies are flowing (and our receive buffer filling): the
    // daemon's writer now blocks on us.
    assert!(
        support::wait_until(|| rustix::io::ioctl_fionread(&s).unwrap_or(0) >= 64 * 1024),
        "no replies came"
    );
    std::io::Write::write_all(
        &mut &s,
        &[8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    )
    .unwrap();
    let listed = |id| {
        d.server()
            .status()
            .clients
            .iter()
            .any(|c| c.client_id == id)
    };
    assert!(
        support::wait_until(|| !listed(w.client_id)),
        "a session whose client does not read stays for ever"
    );
    drop(r);
    drop(s);
    d.stop_and_fsck();
}

#[test]
fn gone_clients_awaiting_death_do_not_lock_out_new_ones() {
    // With room for one client: a client that pinned blocks and went away
    // (this process lives on, so its session waits for its death) must not
    // take that room. Before the fix the next client was told "too many
    // clients".
    let media = Arc::new(MappedPool::memfd(64 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount_with(
        Arc::clone(&media) as Arc<dyn Media>,
        MountOptions {
            break_time: Duration::from_secs(45),
            policy: TruncatePolicy::Defer,
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = Arc::new(Server::new(
        fs,
        ServeOptions {
            fence: Fence::Off,
            max_clients: 1,
        },
    ));
    let stop = Stop::new().unwrap();
    let (srv, st) = (Arc::clone(&server), stop.clone());
    let serving = std::thread::spawn(move || srv.serve(listener, &st));
    let hello = || {
        let s = UnixStream::connect(&socket).unwrap();
        send_frame(
            &s,
            &frame(&ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                signal: 0,
            }),
        )
        .unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut r = FrameReader::new(s.try_clone().unwrap(), MAX_FRAME, 1);
        let msg = decode::<DaemonMsg>(&r.read_frame().unwrap().payload).unwrap();
        r.set_max_fds(0);
        (s, r, msg)
    };
    let (s, mut r, msg) = hello();
    let DaemonMsg::Welcome(w) = msg else {
        panic!("not welcomed: {msg:?}")
    };
    pin_blocks(&s, &mut r, "/kept");
    drop(r);
    drop(s);
    // Its session stays, awaiting this process's death.
    assert!(support::wait_until(|| {
        server
            .status()
            .clients
            .iter()
            .any(|c| c.client_id == w.client_id && c.disconnected)
    }));
    let (_s2, _r2, msg) = hello();
    assert!(
        matches!(msg, DaemonMsg::Welcome(_)),
        "a gone client awaiting death took the only place: {msg:?}"
    );
    stop.stop();
    serving.join().unwrap().unwrap();
}
