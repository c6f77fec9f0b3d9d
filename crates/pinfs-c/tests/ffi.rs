//! Every function of `pinfs.h`, called from Rust as a C program would,
//! against a daemon served by the test: data round trips, the fallocate
//! modes, leases with the layout bits and their errors, pins under an
//! unbreakable lease (and `-EPERM` without), mappings with raw flags,
//! stores through them, a registration and device traffic, break events on the
//! notification descriptor, and refusals: bad file numbers, flags,
//! arguments and pointers; a gone daemon is `-ENOTCONN`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pinfs::fs::{Fs, MountOptions};
use pinfs::media::MappedPool;
use pinfs_c::*;
use pinfs_server::{ServeOptions, Server, Stop};

/// A daemon on a fresh volatile pool, served on a thread.
fn serve(dir: &Path) -> (Stop, std::thread::JoinHandle<()>, CString) {
    let pool = MappedPool::memfd(64 << 20).expect("memfd pool");
    Fs::mkfs(&pool).expect("mkfs");
    let fs = Fs::mount_with(
        Arc::new(pool),
        MountOptions {
            break_time: Duration::from_secs(120),
            ..MountOptions::default()
        },
    )
    .expect("mount");
    let socket = dir.join("sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let server = Server::new(fs, ServeOptions::default());
    let stop = Stop::new().expect("stop");
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || server.serve(listener, &stop).expect("serve"))
    };
    let path = CString::new(socket.to_str().expect("utf-8").as_bytes()).expect("no NUL");
    (stop, thread, path)
}

/// A connection that asked for no signal (events only): the test process
/// has no SIGIO handler.
fn connect(socket: &CString) -> *mut PinfsClient {
    let mut c = std::ptr::null_mut();
    // SAFETY: a valid string and out-pointer.
    let rc = unsafe { pinfs_connect(socket.as_ptr(), 0, &mut c) };
    assert_eq!(rc, 0);
    assert!(!c.is_null());
    c
}

#[test]
fn every_function_from_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stop, thread, socket) = serve(dir.path());
    let a = connect(&socket);
    let b = connect(&socket);
    let path = c"/f";
    // SAFETY: live connections, valid strings and buffers of the stated
    // sizes throughout.
    unsafe {
        let fd = pinfs_open(a, path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644);
        assert_eq!(fd, 0);
        assert_eq!(
            pinfs_open(a, path.as_ptr(), libc::O_RDWR | libc::O_DIRECT, 0),
            -libc::EINVAL
        );
        assert_eq!(
            pinfs_open(a, c"/nope".as_ptr(), libc::O_RDONLY, 0),
            -libc::ENOENT
        );

        let data = vec![0x5au8; 3 * 4096];
        assert_eq!(
            pinfs_pwrite(a, fd, data.as_ptr().cast(), data.len(), 0),
            3 * 4096
        );
        let mut back = vec![0u8; 4 * 4096];
        assert_eq!(
            pinfs_pread(a, fd, back.as_mut_ptr().cast(), back.len(), 0),
            3 * 4096
        );
        assert_eq!(back[..3 * 4096], data[..]);

        // fallocate modes as Linux: punch needs KEEP_SIZE.
        assert_eq!(
            pinfs_fallocate(a, fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096),
            -libc::EOPNOTSUPP
        );
        assert_eq!(
            pinfs_fallocate(
                a,
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096
            ),
            0
        );
        assert_eq!(pinfs_pread(a, fd, back.as_mut_ptr().cast(), 4096, 0), 4096);
        assert!(back[..4096].iter().all(|&x| x == 0));
        assert_eq!(
            pinfs_fallocate(a, fd, libc::FALLOC_FL_KEEP_SIZE, 0, 64 << 10),
            0
        );
        assert_eq!(pinfs_fsync(a, fd), 0);

        // Open leases, as fcntl(F_SETLEASE/F_GETLEASE).
        assert_eq!(pinfs_getlease(a, fd), PINFS_F_UNLCK);
        assert_eq!(pinfs_setlease(a, fd, PINFS_F_WRLCK), 0);
        assert_eq!(pinfs_getlease(a, fd), PINFS_F_WRLCK);
        assert_eq!(pinfs_setlease(a, fd, PINFS_F_UNLCK), 0);
        assert_eq!(
            pinfs_setlease(a, fd, PINFS_F_RDLCK | PINFS_F_EXCLUSIVE),
            -libc::EINVAL
        );
        assert_eq!(
            pinfs_setlease_range(a, fd, PINFS_F_RDLCK, 0, 4096),
            -libc::EINVAL
        );
        assert_eq!(pinfs_setlease(a, fd, 99), -libc::EINVAL);

        // A pin needs the unbreakable layout lease (SPEC §4.2).
        assert_eq!(pinfs_pin(a, fd, 0, 8192), -i64::from(libc::EPERM));
        let lease = PINFS_F_RDLCK | PINFS_F_LAYOUT | PINFS_F_EXCLUSIVE;
        assert_eq!(pinfs_setlease_range(a, fd, lease, 0, 8192), 0);
        let pin = pinfs_pin(a, fd, 4096, 4096);
        assert!(pin > 0, "{pin}");
        // Another client's layout change over it: Text file busy, and the
        // holder is told (a REFUSED event on its notification descriptor).
        let fb = pinfs_open(b, path.as_ptr(), libc::O_RDWR, 0);
        assert!(fb >= 0);
        assert_eq!(pinfs_ftruncate(b, fb, 0), -libc::ETXTBSY);
        let ev = next_event(a);
        assert_eq!((ev.kind, ev.fd, ev.layout), (PINFS_EVENT_REFUSED, fd, 1));
        assert_eq!((ev.start, ev.end), (0, 8192));
        assert_eq!(pinfs_unpin(a, pin as u64), 0);
        assert_eq!(pinfs_unpin(a, pin as u64), -libc::EINVAL);
        assert_eq!(pinfs_setlease(a, fd, PINFS_F_UNLCK | PINFS_F_LAYOUT), 0);

        // A breakable layout lease: another client's truncate by path
        // breaks it; the event names the file number.
        assert_eq!(pinfs_setlease(a, fd, PINFS_F_RDLCK | PINFS_F_LAYOUT), 0);
        let breaker = std::thread::spawn({
            let b = b as usize;
            move || pinfs_truncate(b as *const PinfsClient, c"/f".as_ptr(), 4096)
        });
        let ev = next_event(a);
        assert_eq!(
            (ev.kind, ev.fd, ev.target),
            (PINFS_EVENT_BREAK, fd, PINFS_F_UNLCK)
        );
        assert_eq!(pinfs_setlease(a, fd, PINFS_F_UNLCK | PINFS_F_LAYOUT), 0);
        assert_eq!(breaker.join().expect("breaker"), 0);
        let mut none = PinfsEvent::default();
        assert_eq!(pinfs_next_event(a, &mut none), 0);

        // Mappings with raw flag bits (SPEC §5.1), zero-copy stores,
        // persist, a pin through the mapping, a registration and device
        // traffic.
        // (Block 0 is unwritten since the fallocate: a MAP_DIRECT fault
        // there would raise SIGBUS, SPEC §5.2; write it first.)
        assert_eq!(pinfs_pwrite(a, fd, data.as_ptr().cast(), 4096, 0), 4096);
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let validate = PINFS_MAP_SHARED_VALIDATE;
        assert_eq!(
            pinfs_mmap(a, fd, 0, 4096, rw, validate | 0x400000, &mut addr),
            -i64::from(libc::EOPNOTSUPP)
        );
        assert_eq!(
            pinfs_mmap(a, fd, 0, 4096, libc::PROT_EXEC, PINFS_MAP_SHARED, &mut addr),
            -i64::from(libc::EINVAL)
        );
        assert_eq!(
            pinfs_mmap(a, fd, 0, 4096, rw, PINFS_MAP_SHARED, std::ptr::null_mut()),
            -i64::from(libc::EFAULT)
        );
        let map = pinfs_mmap(
            a,
            fd,
            0,
            4096,
            rw,
            validate | PINFS_MAP_DIRECT | PINFS_MAP_SYNC,
            &mut addr,
        );
        assert!(map > 0, "{map}");
        assert!(!addr.is_null());
        // The mapping is the file: a store through it is what pread sees.
        std::ptr::write_volatile(addr.cast::<u8>().add(100), 0xee);
        assert_eq!(pinfs_persist(a, map as u64, 0, 4096), 0);
        assert_eq!(pinfs_pread(a, fd, back.as_mut_ptr().cast(), 1, 100), 1);
        assert_eq!(back[0], 0xee);
        let mpin = pinfs_map_pin(a, map as u64, 0, 4096);
        assert!(mpin > 0, "{mpin}");
        assert_eq!(pinfs_unpin(a, mpin as u64), 0);
        let mut keys = PinfsMrKeys::default();
        assert_eq!(
            pinfs_register(a, map as u64, 0, 4096, 7, &mut keys),
            -i64::from(libc::EINVAL)
        );
        let reg = pinfs_register(a, map as u64, 0, 4096, PINFS_REVOKE_INVALIDATE, &mut keys);
        assert!(reg > 0, "{reg}");
        assert_ne!(keys.iova, 0);
        let bytes = [0x42u8; 8];
        assert_eq!(
            pinfs_dma_write(a, reg as u64, 8, bytes.as_ptr().cast(), 8),
            PINFS_DMA_OK
        );
        let mut seen = [0u8; 16];
        assert_eq!(
            pinfs_dma_read(a, reg as u64, 0, seen.as_mut_ptr().cast(), 16),
            PINFS_DMA_OK
        );
        assert_eq!(seen[8..], bytes);
        assert_eq!(std::ptr::read_volatile(addr.cast::<u8>().add(8)), 0x42);
        // Past the region's end: the device's own error, not the call's.
        assert_eq!(
            pinfs_dma_write(a, reg as u64, 4096, bytes.as_ptr().cast(), 8),
            PINFS_DMA_PROTECTION_ERROR
        );
        assert_eq!(pinfs_deregister(a, reg as u64), 0);
        assert_eq!(pinfs_deregister(a, reg as u64), -libc::EINVAL);
        assert_eq!(
            pinfs_dma_write(a, reg as u64, 0, bytes.as_ptr().cast(), 8),
            -libc::EINVAL
        );
        assert_eq!(pinfs_munmap(a, map as u64), 0);
        assert_eq!(pinfs_munmap(a, map as u64), -libc::EINVAL);
        assert_eq!(pinfs_persist(a, map as u64, 0, 1), -libc::EINVAL);

        // Refusals.
        assert_eq!(pinfs_close(a, 77), -libc::EBADF);
        assert_eq!(
            pinfs_pread(a, 77, back.as_mut_ptr().cast(), 1, 0),
            -i64::from(libc::EBADF)
        );
        assert_eq!(
            pinfs_pwrite(a, fd, std::ptr::null(), 1, 0),
            -i64::from(libc::EFAULT)
        );
        assert_eq!(pinfs_next_event(a, std::ptr::null_mut()), -libc::EFAULT);
        assert_eq!(
            pinfs_open(a, std::ptr::null(), libc::O_RDONLY, 0),
            -libc::EFAULT
        );
        assert_eq!(pinfs_fallocate(a, fd, 0x4000, 0, 1), -libc::EOPNOTSUPP);
        assert_eq!(pinfs_unlink(a, c"/nope".as_ptr()), -libc::ENOENT);
        assert_eq!(pinfs_close(a, fd), 0);
        assert_eq!(pinfs_close(a, fd), -libc::EBADF);
        assert_eq!(pinfs_unlink(a, path.as_ptr()), 0);

        // The daemon goes: calls fail with ENOTCONN (EPIPE if the request
        // could not even be sent), and the queue says so.
        stop.stop();
        thread.join().expect("serve thread");
        let rc = pinfs_open(b, c"/g".as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644);
        assert!(rc == -libc::ENOTCONN || rc == -libc::EPIPE, "{rc}");
        let mut ev = PinfsEvent::default();
        let mut rc = pinfs_next_event(b, &mut ev);
        for _ in 0..1000 {
            if rc != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            rc = pinfs_next_event(b, &mut ev);
        }
        assert_eq!(rc, -libc::ENOTCONN);
        pinfs_disconnect(a);
        pinfs_disconnect(b);
    }
}

/// Wait (poll the notification descriptor, bounded) for the next event of
/// `c`.
///
/// # Safety
/// `c` is a live connection.
unsafe fn next_event(c: *const PinfsClient) -> PinfsEvent {
    // SAFETY: per the contract, `c` is live.
    let fd = unsafe { pinfs_notify_fd(c) };
    assert!(fd >= 0);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 60_000) };
    assert_eq!(ready, 1, "no event within a minute");
    let mut ev = PinfsEvent::default();
    // SAFETY: live connection, valid out-pointer.
    assert_eq!(unsafe { pinfs_next_event(c, &mut ev) }, 1);
    ev
}
