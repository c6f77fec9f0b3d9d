//! The `extern "C"` functions of `pinfs.h`: each checks its pointers,
//! translates C numbers through [`crate::flags`], calls the client library
//! and returns a count, a number or `-errno`.
//!
//! # Safety
//!
//! This module opts into `unsafe` because a C caller hands it raw pointers:
//! the connection (`pinfs_client *`, made by `pinfs_connect` and valid
//! until `pinfs_disconnect`), NUL-terminated strings, I/O buffers of a
//! stated length, and out-parameters. Every pointer is checked for null
//! (`-EFAULT`); beyond that the C caller promises what C functions always
//! ask — a non-null pointer points at what the signature says, for as long
//! as the call runs, and a connection is not used after (or during)
//! `pinfs_disconnect`. Each `unsafe` block says which of these it relies
//! on. No Rust panic crosses the boundary: every body runs under
//! `catch_unwind` and a panic becomes `-EIO`. Pool memory is never touched
//! here (the client library and the daemon do that).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use pinfs::lease::{EventKind, LeaseKind};
use pinfs::Errno;
use pinfs_client::{Client, ConnectOptions, LeaseSpec};

use crate::flags;
use crate::state::Conn;

/// A connection to a pinfs daemon (opaque). Made by `pinfs_connect`,
/// freed by `pinfs_disconnect`. Its functions may be called from several
/// threads at once.
pub struct PinfsClient {
    conn: Conn,
}

/// `pinfs_event.kind`: the lease is being broken; release it (or, when
/// `target` is `F_RDLCK`, downgrade it) within lease-break-time.
pub const PINFS_EVENT_BREAK: c_int = 1;
/// `pinfs_event.kind`: someone's layout change was refused with
/// `ETXTBSY` because of this connection's unbreakable layout lease (which
/// is unchanged).
pub const PINFS_EVENT_REFUSED: c_int = 2;
/// `pinfs_event.kind`: lease-break-time passed; the lease was forcibly
/// removed (or downgraded, `target` `F_RDLCK`) and what it protected
/// revoked.
pub const PINFS_EVENT_LOST: c_int = 3;

/// Most bytes one `pinfs_pread` or `pinfs_pwrite` moves; larger
/// requests are short (as `read(2)` may be), never an error.
pub const PINFS_MAX_IO_BYTES: usize = 64 << 20;

/// A lease notification, filled by `pinfs_next_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PinfsEvent {
    /// `PINFS_EVENT_BREAK`, `PINFS_EVENT_REFUSED` or `PINFS_EVENT_LOST`.
    pub kind: c_int,
    /// What the lease must become: `F_UNLCK` (release) or `F_RDLCK`
    /// (downgrade).
    pub target: c_int,
    /// 1 for a layout lease, 0 for an open lease.
    pub layout: c_int,
    /// The file number the lease was set through on this connection, or -1
    /// when it is not known (a lease set before, or forgotten).
    pub fd: c_int,
    /// The lease's id.
    pub lease_id: u64,
    /// First byte of the range the lease covers.
    pub start: u64,
    /// End of that range (exclusive); `UINT64_MAX` means end of file.
    pub end: u64,
}

/// Run `body`, turning its error into `-errno` and a panic into `-EIO`.
fn guard(body: impl FnOnce() -> Result<i64, Errno>) -> i64 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => -i64::from(e.0),
        Err(_) => -i64::from(libc::EIO),
    }
}

/// [`guard`] for functions returning `int`.
fn guard_int(body: impl FnOnce() -> Result<i64, Errno>) -> c_int {
    let v = guard(body);
    c_int::try_from(v).unwrap_or(-libc::EOVERFLOW)
}

/// The library's error as an errno.
fn errno(e: pinfs::Error) -> Errno {
    e.errno()
}

/// The connection behind `c`.
///
/// # Safety
/// `c` is null or a pointer `pinfs_connect` returned and
/// `pinfs_disconnect` has not freed.
unsafe fn conn<'a>(c: *const PinfsClient) -> Result<&'a Conn, Errno> {
    // SAFETY: per this function's contract, a non-null `c` points at a live
    // `PinfsClient` (a `Box` leaked by `pinfs_connect`), only read here.
    unsafe { c.as_ref() }.map(|c| &c.conn).ok_or(Errno::EFAULT)
}

/// A path argument: `EFAULT` for null, `EINVAL` when not UTF-8.
///
/// # Safety
/// `p` is null or a NUL-terminated string valid for the call.
unsafe fn path<'a>(p: *const c_char) -> Result<&'a str, Errno> {
    if p.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: non-null, and per this function's contract NUL-terminated
    // and valid for the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Errno::EINVAL)
}

/// Connect to the daemon serving `socket_path`; on success `*out` is the
/// new connection and 0 is returned. `signal` is what the daemon sends this
/// process when one of its leases is being broken: -1 for `SIGIO` (the
/// default), 0 for none (events only), or one of `SIGURG`, `SIGUSR1`,
/// `SIGUSR2` or a realtime signal (`-EINVAL` for any other). The pool's
/// descriptor and every resource are released by `pinfs_disconnect`.
///
/// # Safety
/// `socket_path` is null or a NUL-terminated string; `out` is null or
/// points at writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn pinfs_connect(
    socket_path: *const c_char,
    signal: c_int,
    out: *mut *mut PinfsClient,
) -> c_int {
    guard_int(|| {
        if out.is_null() {
            return Err(Errno::EFAULT);
        }
        // SAFETY: the caller passes null or a NUL-terminated string.
        let socket = unsafe { path(socket_path) }?;
        let signal = match signal {
            -1 => None,
            // Only signals that do nothing unless handled (the daemon
            // refuses others too): none, SIGIO, SIGURG, SIGUSR1/2, or a
            // realtime one (glibc's reserved 32/33 excluded).
            s if s == 0
                || s == libc::SIGIO
                || s == libc::SIGURG
                || s == libc::SIGUSR1
                || s == libc::SIGUSR2
                || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&s) =>
            {
                Some(s)
            }
            _ => return Err(Errno::EINVAL),
        };
        let client =
            Client::connect_with(Path::new(socket), ConnectOptions { signal }).map_err(errno)?;
        let boxed = Box::new(PinfsClient {
            conn: Conn::new(client),
        });
        // SAFETY: `out` is non-null and, per the contract, writable storage
        // for one pointer.
        unsafe { out.write(Box::into_raw(boxed)) };
        Ok(0)
    })
}

/// Close the connection: its files close, its pins drop and its leases are
/// released (as at a process exit). Null is ignored.
///
/// # Safety
/// `c` is null or a connection not yet disconnected, which no other thread
/// is using and nobody uses afterwards.
#[no_mangle]
pub unsafe extern "C" fn pinfs_disconnect(c: *mut PinfsClient) {
    if c.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `c` came from `Box::into_raw` in `pinfs_connect` and, per
        // the contract, is freed once, here, with nobody else using it.
        drop(unsafe { Box::from_raw(c) });
    }));
}

/// Open `path` with `open(2)` flags (`O_RDONLY`, `O_WRONLY`, `O_RDWR`,
/// `O_CREAT`, `O_EXCL`, `O_TRUNC`, `O_NONBLOCK`; `O_CLOEXEC` is ignored;
/// others are `-EINVAL`), creating it with `mode`. Returns a file number of
/// this connection (≥ 0).
///
/// # Safety
/// `c` as for every function (null or live); `path` null or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pinfs_open(
    c: *const PinfsClient,
    path: *const c_char,
    flags: c_int,
    mode: u32,
) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        // SAFETY: the caller passes null or a NUL-terminated string.
        let path = unsafe { self::path(path) }?;
        let flags = flags::open_flags(flags)?;
        let file = conn.client.open(path, flags, mode).map_err(errno)?;
        Ok(i64::from(conn.insert_file(file)?))
    })
}

/// Close file `fd` (its open leases go with it).
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_close(c: *const PinfsClient, fd: c_int) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        conn.remove_file(fd)?;
        Ok(0)
    })
}

/// Read up to `count` bytes at `offset` into `buf`; returns the bytes read
/// (short at end of file, or past `PINFS_MAX_IO_BYTES`).
///
/// # Safety
/// `c` is null or a live connection; `buf` is null or writable for `count`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn pinfs_pread(
    c: *const PinfsClient,
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: u64,
) -> i64 {
    guard(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        if buf.is_null() {
            return Err(Errno::EFAULT);
        }
        let count = count.min(PINFS_MAX_IO_BYTES);
        // SAFETY: non-null, and per the contract writable for `count`
        // bytes (fewer are used) for the duration of the call; caller
        // memory, not pool memory.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), count) };
        let file = conn.file(fd)?;
        let n = file.pread(offset, buf).map_err(errno)?;
        Ok(n as i64)
    })
}

/// Write `count` bytes of `buf` at `offset`; returns the bytes written.
///
/// # Safety
/// `c` is null or a live connection; `buf` is null or readable for `count`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn pinfs_pwrite(
    c: *const PinfsClient,
    fd: c_int,
    buf: *const c_void,
    count: usize,
    offset: u64,
) -> i64 {
    guard(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        if buf.is_null() {
            return Err(Errno::EFAULT);
        }
        let count = count.min(PINFS_MAX_IO_BYTES);
        // SAFETY: non-null, and per the contract readable for `count` bytes
        // for the duration of the call; caller memory, not pool memory.
        let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), count) };
        let file = conn.file(fd)?;
        let n = file.pwrite(offset, data).map_err(errno)?;
        Ok(n as i64)
    })
}

/// `ftruncate(2)` of file `fd`.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_ftruncate(c: *const PinfsClient, fd: c_int, size: u64) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        conn.file(fd)?.truncate(size).map_err(errno)?;
        Ok(0)
    })
}

/// `truncate(2)` by path (breaks open leases too, as in Linux).
///
/// # Safety
/// `c` is null or a live connection; `path` null or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pinfs_truncate(
    c: *const PinfsClient,
    path: *const c_char,
    size: u64,
) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        // SAFETY: the caller passes null or a NUL-terminated string.
        let path = unsafe { self::path(path) }?;
        conn.client.truncate_path(path, size).map_err(errno)?;
        Ok(0)
    })
}

/// `fallocate(2)` of file `fd`, `mode` being Linux's `FALLOC_FL_*` bits
/// (0, `KEEP_SIZE`, `PUNCH_HOLE|KEEP_SIZE`, `ZERO_RANGE[|KEEP_SIZE]`,
/// `COLLAPSE_RANGE`, `INSERT_RANGE`; others as Linux: `-EOPNOTSUPP` or
/// `-EINVAL`).
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_fallocate(
    c: *const PinfsClient,
    fd: c_int,
    mode: c_int,
    offset: u64,
    len: u64,
) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let mode = flags::falloc_mode(mode)?;
        conn.file(fd)?.fallocate(mode, offset, len).map_err(errno)?;
        Ok(0)
    })
}

/// Make file `fd` durable.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_fsync(c: *const PinfsClient, fd: c_int) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        conn.file(fd)?.fsync().map_err(errno)?;
        Ok(0)
    })
}

/// Remove a name.
///
/// # Safety
/// `c` is null or a live connection; `path` null or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pinfs_unlink(c: *const PinfsClient, path: *const c_char) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        // SAFETY: the caller passes null or a NUL-terminated string.
        let path = unsafe { self::path(path) }?;
        conn.client.unlink(path).map_err(errno)?;
        Ok(0)
    })
}

/// Set, change or release a lease on file `fd` over a byte range: `arg` is
/// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`, optionally or'ed with
/// `PINFS_F_LAYOUT` (a layout lease) and `PINFS_F_EXCLUSIVE` (unbreakable;
/// with `PINFS_F_LAYOUT` only). `offset`/`len` limit a layout lease (`len`
/// 0: to end of file; both 0: the whole file); an open lease takes the
/// whole file only. `-EACCES` on a file the caller does not own (unless
/// root), `-EAGAIN` on a conflict, `-EINVAL` for a bad argument.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_setlease_range(
    c: *const PinfsClient,
    fd: c_int,
    arg: c_int,
    offset: u64,
    len: u64,
) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let req = flags::lease_request(arg, offset, len)?;
        let spec = LeaseSpec {
            ty: req.ty,
            layout: req.layout,
            unbreakable: req.unbreakable,
            range: req.range,
            nonblocking: false,
        };
        let lease = conn.file(fd)?.set_lease(spec).map_err(errno)?;
        conn.note_lease(lease, fd);
        Ok(0)
    })
}

/// `pinfs_setlease_range` over the whole file: `fcntl(fd, F_SETLEASE,
/// arg)` with pinfs's layout flags.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_setlease(c: *const PinfsClient, fd: c_int, arg: c_int) -> c_int {
    // SAFETY: same contract, passed on.
    unsafe { pinfs_setlease_range(c, fd, arg, 0, 0) }
}

/// `fcntl(fd, F_GETLEASE)`: `F_RDLCK`, `F_WRLCK` or `F_UNLCK` — the target
/// type while a break is pending.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_getlease(c: *const PinfsClient, fd: c_int) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let ty = conn.file(fd)?.get_lease().map_err(errno)?;
        Ok(i64::from(flags::lease_type_number(ty)))
    })
}

/// A descriptor that polls readable (`POLLIN`) while a lease notification
/// is queued for this connection, or once the connection is gone. It
/// belongs to the connection: do not close it, and do not read it (use
/// `pinfs_next_event`).
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_notify_fd(c: *const PinfsClient) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        Ok(i64::from(conn.client.events().fd().as_raw_fd()))
    })
}

/// Take the next lease notification without waiting: 1 and `*ev` filled
/// when there was one, 0 when none is queued, `-ENOTCONN` once the
/// connection is gone and nothing is left, `-EOVERFLOW` once after
/// notifications were dropped (too many unread).
///
/// # Safety
/// `c` is null or a live connection; `ev` is null or points at writable
/// storage for one `pinfs_event`.
#[no_mangle]
pub unsafe extern "C" fn pinfs_next_event(c: *const PinfsClient, ev: *mut PinfsEvent) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        if ev.is_null() {
            return Err(Errno::EFAULT);
        }
        let Some(event) = conn.client.events().try_recv().map_err(errno)? else {
            return Ok(0);
        };
        let out = PinfsEvent {
            kind: match event.kind {
                EventKind::Break => PINFS_EVENT_BREAK,
                EventKind::Refused => PINFS_EVENT_REFUSED,
                EventKind::Lost => PINFS_EVENT_LOST,
            },
            target: flags::lease_type_number(event.target),
            layout: c_int::from(event.lease.kind == LeaseKind::Layout),
            fd: conn.fd_of_lease(event.lease.id),
            lease_id: event.lease.id.0,
            start: event.lease.range.start,
            end: event.lease.range.end,
        };
        // SAFETY: non-null and, per the contract, writable storage for one
        // `pinfs_event`.
        unsafe { ev.write(out) };
        Ok(1)
    })
}

/// A long-term pin of `[offset, offset + len)` of file `fd`, under this
/// connection's unbreakable layout lease over the range (`F_RDLCK |
/// PINFS_F_LAYOUT | PINFS_F_EXCLUSIVE`; without it `-EPERM`, SPEC §4.2).
/// Returns the pin's id (> 0), which `pinfs_unpin` takes. Closing the
/// file does not drop it; unpinning or disconnecting does.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_pin(c: *const PinfsClient, fd: c_int, offset: u64, len: u64) -> i64 {
    guard(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let pin = conn.file(fd)?.pin_long_term(offset, len).map_err(errno)?;
        let id = conn.insert_pin(pin)?;
        i64::try_from(id).map_err(|_| Errno(libc::EOVERFLOW))
    })
}

/// Drop pin `pin` (`-EINVAL` when this connection holds none by that id).
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_unpin(c: *const PinfsClient, pin: u64) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        conn.remove_pin(pin)?.unpin().map_err(errno)?;
        Ok(0)
    })
}

/// Device addresses and keys of a registration, filled by `pinfs_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PinfsMrKeys {
    /// The memory region's number on the device.
    pub mr: u64,
    /// First device address (I/O virtual address) of the region.
    pub iova: u64,
    /// Local key (the device's own work requests name it).
    pub lkey: u32,
    /// Remote key (a peer's work requests name it).
    pub rkey: u32,
}

/// Map `[offset, offset + len)` of file `fd` into this process — the pool's
/// own memory, zero-copy — with `prot` `PROT_READ` or `PROT_READ |
/// PROT_WRITE` and raw `mmap` flag bits (`PINFS_MAP_SHARED`, or
/// `PINFS_MAP_SHARED_VALIDATE` with `PINFS_MAP_SYNC` and/or
/// `PINFS_MAP_DIRECT`), validated as SPEC §5.1 says: with
/// `MAP_SHARED_VALIDATE` an unknown bit is `-EOPNOTSUPP`; `MAP_DIRECT` on a
/// file this process's user does not own is `-EACCES`. `*addr` is the
/// mapping's first byte; loads and stores there reach the file (`SIGBUS`
/// beyond end of file, or through an invalidated `MAP_DIRECT` mapping).
/// Returns the mapping's id (> 0) for `pinfs_munmap`, `pinfs_persist`,
/// `pinfs_map_pin` and `pinfs_register`. At most `PINFS_MAX_MAPS`.
///
/// # Safety
/// `c` is null or a live connection; `addr` is null or writable storage
/// for one pointer.
#[no_mangle]
pub unsafe extern "C" fn pinfs_mmap(
    c: *const PinfsClient,
    fd: c_int,
    offset: u64,
    len: usize,
    prot: c_int,
    flags: u32,
    addr: *mut *mut c_void,
) -> i64 {
    guard(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        if addr.is_null() {
            return Err(Errno::EFAULT);
        }
        let read_only = flags::read_only(prot)?;
        let file = conn.file(fd)?;
        let len = len as u64;
        let map = if read_only {
            file.mmap_read_only(offset, len, flags)
        } else {
            file.mmap(offset, len, flags)
        }
        .map_err(errno)?;
        let start = map.as_ptr();
        let id = conn.insert_map(map)?;
        // SAFETY: non-null and, per the contract, writable storage for one
        // pointer.
        unsafe { addr.write(start.cast()) };
        i64::try_from(id).map_err(|_| Errno(libc::EOVERFLOW))
    })
}

/// Unmap mapping `map` (as `munmap(2)`: once it returns, its addresses no
/// longer reach the file). Pins and registrations made through it stay
/// until dropped.
///
/// # Safety
/// `c` is null or a live connection; no thread still uses the mapping's
/// memory.
#[no_mangle]
pub unsafe extern "C" fn pinfs_munmap(c: *const PinfsClient, map: u64) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let map = conn.remove_map(map)?;
        // A call of another thread still using it (a persist) finishes
        // first; then it is unmapped here, so 0 means unmapped.
        sole(map).unmap().map_err(errno)?;
        Ok(0)
    })
}

/// Make the stores to `[offset, offset + len)` of mapping `map` durable
/// (SPEC §5.3: cache flush and fence over a `MAP_SYNC`/`MAP_DIRECT`
/// mapping, no `fsync`).
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_persist(
    c: *const PinfsClient,
    map: u64,
    offset: u64,
    len: u64,
) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        conn.map(map)?.persist(offset, len).map_err(errno)?;
        Ok(0)
    })
}

/// A long-term pin of `[offset, offset + len)` of mapping `map` (offsets
/// relative to the mapping): needs a `MAP_DIRECT` mapping or this
/// connection's unbreakable layout lease over the range (else `-EPERM`,
/// SPEC §4.2). Returns the pin's id for `pinfs_unpin`.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_map_pin(
    c: *const PinfsClient,
    map: u64,
    offset: u64,
    len: u64,
) -> i64 {
    guard(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let pin = conn.map(map)?.pin_long_term(offset, len).map_err(errno)?;
        let id = conn.insert_pin(pin)?;
        i64::try_from(id).map_err(|_| Errno(libc::EOVERFLOW))
    })
}

/// Register `[offset, offset + len)` of mapping `map` (page-aligned) with
/// the daemon's RDMA device (SPEC §6.1), revoked at lease-break-time as
/// `revoke` says (`PINFS_REVOKE_INVALIDATE`, `_REDIRECT` or `_ODP`).
/// Needs a `MAP_DIRECT` mapping, this connection's unbreakable layout lease
/// over the range, or `PINFS_REVOKE_ODP` (else `-EOPNOTSUPP`); `-ENXIO`
/// when the mapping's lease is broken or breaking. `*keys` (when not null)
/// receives the device addresses and keys. Returns the registration's id
/// (> 0).
///
/// # Safety
/// `c` is null or a live connection; `keys` is null or writable storage
/// for one `pinfs_mr_keys`.
#[no_mangle]
pub unsafe extern "C" fn pinfs_register(
    c: *const PinfsClient,
    map: u64,
    offset: u64,
    len: u64,
    revoke: c_int,
    keys: *mut PinfsMrKeys,
) -> i64 {
    guard(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let mode = flags::revoke_mode(revoke)?;
        let reg = conn.map(map)?.register(offset, len, mode).map_err(errno)?;
        let k = reg.keys();
        let id = conn.insert_reg(reg)?;
        if !keys.is_null() {
            let out = PinfsMrKeys {
                mr: k.mr.0,
                iova: k.iova,
                lkey: k.lkey,
                rkey: k.rkey,
            };
            // SAFETY: non-null and, per the contract, writable storage for
            // one `pinfs_mr_keys`.
            unsafe { keys.write(out) };
        }
        i64::try_from(id).map_err(|_| Errno(libc::EOVERFLOW))
    })
}

/// The device writes `len` bytes of `buf` at `offset` of registration
/// `reg` (what a peer's RDMA write does). Returns the completion status, a
/// `PINFS_DMA_*` number (`PINFS_DMA_OK`, or `PINFS_DMA_PROTECTION_ERROR`
/// once revoked, ...); `-errno` only when the request could not be made
/// (at most `PINFS_MAX_IO_BYTES` bytes: `-EINVAL` beyond).
///
/// # Safety
/// `c` is null or a live connection; `buf` is null or readable for `len`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn pinfs_dma_write(
    c: *const PinfsClient,
    reg: u64,
    offset: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        if buf.is_null() {
            return Err(Errno::EFAULT);
        }
        if len > PINFS_MAX_IO_BYTES {
            return Err(Errno::EINVAL);
        }
        // SAFETY: non-null and, per the contract, readable for `len` bytes
        // for the duration of the call; caller memory, not pool memory.
        let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        let done = conn.reg(reg)?.write(offset, data).map_err(errno)?;
        Ok(i64::from(flags::completion_number(done)))
    })
}

/// The device reads `len` bytes at `offset` of registration `reg` into
/// `buf` (filled only when the status is `PINFS_DMA_OK`). Returns the
/// completion status as `pinfs_dma_write`.
///
/// # Safety
/// `c` is null or a live connection; `buf` is null or writable for `len`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn pinfs_dma_read(
    c: *const PinfsClient,
    reg: u64,
    offset: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        if buf.is_null() {
            return Err(Errno::EFAULT);
        }
        if len > PINFS_MAX_IO_BYTES {
            return Err(Errno::EINVAL);
        }
        // SAFETY: non-null and, per the contract, writable for `len` bytes
        // for the duration of the call; caller memory, not pool memory.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        let done = conn.reg(reg)?.read(offset, out).map_err(errno)?;
        Ok(i64::from(flags::completion_number(done)))
    })
}

/// Deregister `reg`: the device can no longer reach the memory, and the
/// pins of the registration drop.
///
/// # Safety
/// `c` is null or a live connection.
#[no_mangle]
pub unsafe extern "C" fn pinfs_deregister(c: *const PinfsClient, reg: u64) -> c_int {
    guard_int(|| {
        // SAFETY: the caller passes null or a live connection.
        let conn = unsafe { conn(c) }?;
        let reg = conn.remove_reg(reg)?;
        // As for `pinfs_munmap`: 0 means deregistered (its lease released).
        sole(reg).deregister().map_err(errno)?;
        Ok(0)
    })
}

/// The object once the calls of other threads that still use it (taken
/// out of the connection's table, nobody new can) have finished.
fn sole<T>(mut a: std::sync::Arc<T>) -> T {
    loop {
        match std::sync::Arc::try_unwrap(a) {
            Ok(t) => return t,
            Err(back) => {
                a = back;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_pointers_are_efault_and_panics_are_eio() {
        // SAFETY: null is allowed everywhere and must be refused, not read.
        unsafe {
            let mut out: *mut PinfsClient = std::ptr::null_mut();
            assert_eq!(pinfs_connect(std::ptr::null(), -1, &mut out), -libc::EFAULT);
            assert_eq!(
                pinfs_connect(c"/nonexistent".as_ptr(), -1, std::ptr::null_mut()),
                -libc::EFAULT
            );
            assert_eq!(
                pinfs_open(std::ptr::null(), c"/f".as_ptr(), 0, 0),
                -libc::EFAULT
            );
            assert_eq!(pinfs_close(std::ptr::null(), 0), -libc::EFAULT);
            assert_eq!(
                pinfs_pread(std::ptr::null(), 0, std::ptr::null_mut(), 1, 0),
                -i64::from(libc::EFAULT)
            );
            assert_eq!(pinfs_notify_fd(std::ptr::null()), -libc::EFAULT);
            assert_eq!(
                pinfs_next_event(std::ptr::null(), std::ptr::null_mut()),
                -libc::EFAULT
            );
            assert_eq!(pinfs_setlease(std::ptr::null(), 0, 0), -libc::EFAULT);
            assert_eq!(pinfs_unpin(std::ptr::null(), 1), -libc::EFAULT);
            pinfs_disconnect(std::ptr::null_mut());
            // No daemon there: the connect fails with the socket's errno.
            assert_eq!(
                pinfs_connect(c"/nonexistent/sock".as_ptr(), -1, &mut out),
                -libc::ENOENT
            );
            assert!(out.is_null());
        }
        assert_eq!(guard(|| panic!("boom")), -i64::from(libc::EIO));
        assert_eq!(guard_int(|| Ok(i64::MAX)), -libc::EOVERFLOW);
    }
}
