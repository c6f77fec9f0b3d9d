//! The client library itself: one `Client` shared by many threads at once
//! (more than the daemon's in-flight bound, which the library keeps), large
//! I/O split into `MAX_IO` pieces, every core operation through the daemon
//! with the core's results, the event queue's pollable descriptor, and a
//! daemon that goes away (calls fail with `ENOTCONN`, the queue says so).

mod support;

use std::time::Duration;

use pinfs::fs::{FallocMode, OpenFlags, TruncatePolicy};
use pinfs::lease::{EventKind, LeaseType};
use pinfs::Errno;
use pinfs_client::LeaseSpec;
use pinfs_proto::{MAX_INFLIGHT, MAX_IO};
use pinfs_server::Fence;
use rustix::event::{poll, PollFd, PollFlags};
use support::Daemon;

#[test]
fn many_threads_share_one_client() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let c = d.client();
    let threads: Vec<_> = (0..(MAX_INFLIGHT * 2) as u64)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let path = format!("/t{t}");
                let f = c.open(&path, OpenFlags::CREATE, 0o644).unwrap();
                for i in 0..20u64 {
                    let data = [(t + i) as u8; 100];
                    f.pwrite(i * 100, &data).unwrap();
                    let mut back = [0u8; 100];
                    f.pread(i * 100, &mut back).unwrap();
                    assert_eq!(back, data);
                }
                assert_eq!(f.stat().unwrap().size, 2000);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(c.readdir("/").unwrap().len(), MAX_INFLIGHT * 2);
    drop(c);
    d.stop_and_fsck();
}

#[test]
fn every_operation_through_the_daemon() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let c = d.client();
    c.mkdir("/d", 0o755).unwrap();
    assert_eq!(c.mkdir("/d", 0o755).unwrap_err().errno(), Errno::EEXIST);
    let f = c.open("/d/a", OpenFlags::CREATE, 0o644).unwrap();
    // Larger than one message: split and reassembled.
    let big: Vec<u8> = (0..MAX_IO * 2 + 123).map(|i| (i % 251) as u8).collect();
    assert_eq!(f.pwrite(0, &big).unwrap(), big.len());
    let mut back = vec![0u8; big.len() + 100];
    assert_eq!(f.pread(0, &mut back).unwrap(), big.len());
    assert_eq!(&back[..big.len()], &big[..]);
    f.fallocate(FallocMode::PunchHole, 0, 4096).unwrap();
    let mut first = [1u8; 4096];
    f.pread(0, &mut first).unwrap();
    assert!(first.iter().all(|&b| b == 0));
    let g = c.open("/d/b", OpenFlags::CREATE, 0o644).unwrap();
    g.reflink(&f, None).unwrap();
    assert!(g.fiemap().unwrap().iter().any(|e| e.shared));
    g.fsync().unwrap();
    f.truncate(8192).unwrap();
    assert_eq!(f.stat().unwrap().size, 8192);
    c.truncate_path("/d/b", 4096).unwrap();
    assert_eq!(c.stat("/d/b").unwrap().size, 4096);
    f.chmod(0o600).unwrap();
    assert_eq!(c.stat("/d/a").unwrap().mode & 0o777, 0o600);
    c.chmod("/d/a", 0o640).unwrap();
    c.chown("/d/a", None, Some(7)).unwrap();
    assert_eq!(c.stat("/d/a").unwrap().gid, 7);
    c.rename("/d/b", "/d/c").unwrap();
    let names: Vec<String> = c
        .readdir("/d")
        .unwrap()
        .into_iter()
        .map(|e| e.name_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a", "c"]);
    drop(g);
    c.unlink("/d/c").unwrap();
    // Leases with the core's rules: a read lease needs a read-only handle.
    assert_eq!(
        f.set_lease(LeaseSpec::read()).unwrap_err().errno(),
        Errno::EAGAIN
    );
    let r = c.open("/d/a", OpenFlags::RDONLY, 0).unwrap();
    drop(f);
    let id = r.set_lease(LeaseSpec::read()).unwrap();
    assert_eq!(r.get_lease().unwrap(), LeaseType::Read);
    let s = c.status().unwrap();
    assert_eq!(s.leases.len(), 1);
    assert_eq!(s.path_of(s.leases[0].file), "/d/a");
    r.release_lease(id).unwrap();
    assert_eq!(r.release_lease(id).unwrap_err().errno(), Errno::ENOENT);
    // A pin needs the unbreakable layout lease.
    assert_eq!(r.pin_long_term(0, 4096).unwrap_err().errno(), Errno::EPERM);
    drop(r);
    assert_eq!(c.rmdir("/d").unwrap_err().errno(), Errno::ENOTEMPTY);
    c.unlink("/d/a").unwrap();
    c.rmdir("/d").unwrap();
    assert!(c.statfs().unwrap().free > 0);
    drop(c);
    d.stop_and_fsck();
}

#[test]
fn events_poll_readable_and_a_vanished_daemon_fails_calls() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let holder = d.client();
    let breaker = d.client();
    let f = holder.open("/e", OpenFlags::CREATE, 0o644).unwrap();
    f.pwrite(0, &[1; 4096]).unwrap();
    let id = f.set_lease(LeaseSpec::layout_shared()).unwrap();
    let readable = |c: &pinfs_client::Client, ms: i64| {
        let fd = c.events().fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ts = rustix::time::Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        poll(&mut fds, Some(&ts)).unwrap() == 1
    };
    assert!(!readable(&holder, 0));
    let t = std::thread::spawn(move || breaker.truncate_path("/e", 0));
    assert!(readable(&holder, 20_000), "no event made the fd readable");
    let ev = holder.events().try_recv().unwrap().unwrap();
    assert_eq!((ev.kind, ev.lease.id), (EventKind::Break, id));
    assert!(!readable(&holder, 0), "still readable with the queue empty");
    f.release_lease(id).unwrap();
    t.join().unwrap().unwrap();
    // The daemon goes away: the client is told, every call fails, and the
    // queue reports it (its fd stays readable).
    d.stop_and_fsck();
    assert!(support::wait_until(|| holder.disconnected().is_some()));
    assert!(holder.disconnected().unwrap().contains("shutting down"));
    let errno = f.stat().unwrap_err().errno();
    assert!(
        errno == Errno::ENOTCONN || errno == Errno::EPIPE,
        "{errno:?}"
    );
    assert_eq!(holder.statfs().unwrap_err().errno(), Errno::ENOTCONN);
    assert_eq!(
        holder.events().try_recv().unwrap_err().errno(),
        Errno::ENOTCONN
    );
    assert!(readable(&holder, 0));
}
