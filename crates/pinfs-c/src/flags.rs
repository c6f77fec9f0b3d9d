//! The numbers a C caller passes, translated to the library's types: open
//! flags (`O_*`), fallocate modes (`FALLOC_FL_*`), lease arguments
//! (`F_RDLCK`/`F_WRLCK`/`F_UNLCK` with the `PINFS_F_LAYOUT` and
//! `PINFS_F_EXCLUSIVE` bits) and lease types back to numbers.
//!
//! Kept apart from the `extern "C"` functions so that every rule here is
//! plain safe code with unit tests. The Linux values are the ABI: a C
//! program passes the same constants it would pass to `open(2)`,
//! `fallocate(2)` and `fcntl(F_SETLEASE)`; the two lease flag bits are
//! pinfs's own (Linux has no layout leases), defined in the header.

use pinfs::dma::{Completion, RevokeMode};
use pinfs::fs::{FallocMode, OpenFlags};
use pinfs::lease::{ByteRange, LeaseRequest, LeaseType};
use pinfs::Errno;

/// `F_RDLCK` (Linux's value): a read lease (with `PINFS_F_LAYOUT`, a
/// shared layout lease).
pub const PINFS_F_RDLCK: i32 = 0;
/// `F_WRLCK` (Linux's value): a write lease (with `PINFS_F_LAYOUT`, an
/// exclusive layout lease).
pub const PINFS_F_WRLCK: i32 = 1;
/// `F_UNLCK` (Linux's value): release (with `PINFS_F_LAYOUT`, the
/// handle's layout leases).
pub const PINFS_F_UNLCK: i32 = 2;
/// Flag bit of a lease argument: a layout lease (SPEC §3.2) instead of an
/// open lease. pinfs's own value (no kernel defines `F_LAYOUT`).
pub const PINFS_F_LAYOUT: i32 = 16;
/// Flag bit of a lease argument, with `PINFS_F_LAYOUT`: unbreakable (a
/// layout change by anyone else fails with `ETXTBSY`; what long-term pins
/// need). Not allowed without `PINFS_F_LAYOUT` (`-EINVAL`).
pub const PINFS_F_EXCLUSIVE: i32 = 32;

/// `mmap` flag `MAP_SHARED` (Linux's value).
pub const PINFS_MAP_SHARED: u32 = 0x01;
/// `mmap` flag `MAP_PRIVATE` (Linux's value).
pub const PINFS_MAP_PRIVATE: u32 = 0x02;
/// `mmap` flag `MAP_SHARED_VALIDATE` (Linux's value): unknown flags fail
/// with `-EOPNOTSUPP`, and the extension flags take effect (SPEC §5.1).
pub const PINFS_MAP_SHARED_VALIDATE: u32 = 0x03;
/// `mmap` flag `MAP_SYNC` (Linux's value): the block map under the mapping
/// is durable, so `pinfs_persist` is all a store needs (SPEC §5.3).
pub const PINFS_MAP_SYNC: u32 = 0x8_0000;
/// `mmap` flag `MAP_DIRECT` (pinfs's own value; no kernel defines it): a layout
/// lease for the mapping's lifetime, broken by anyone else's layout change;
/// unmap within lease-break-time (SPEC §5.2). Needs the file's owner or
/// root (`-EACCES`).
pub const PINFS_MAP_DIRECT: u32 = 0x20_0000;

/// `pinfs_register` revocation mode: the device's translations are removed
/// at lease-break-time; its later accesses complete with
/// `PINFS_DMA_PROTECTION_ERROR` (SPEC §6.3).
pub const PINFS_REVOKE_INVALIDATE: i32 = 0;
/// `pinfs_register` revocation mode: translations re-pointed at scratch
/// memory at lease-break-time; the device's writes are discarded.
pub const PINFS_REVOKE_REDIRECT: i32 = 1;
/// `pinfs_register` revocation mode: on-demand paging, nothing pinned
/// (SPEC §6.4).
pub const PINFS_REVOKE_ODP: i32 = 2;

/// A device request's completion status: done.
pub const PINFS_DMA_OK: i32 = 0;
/// Completion status: the region's translations are gone (revoked), the
/// key is wrong, or the access passes its end.
pub const PINFS_DMA_PROTECTION_ERROR: i32 = 1;
/// Completion status: on-demand paging could not get a translation.
pub const PINFS_DMA_PAGE_FAULT: i32 = 2;
/// Completion status: the region is deregistered or unknown.
pub const PINFS_DMA_INVALID_REGION: i32 = 3;
/// Completion status: the device itself failed.
pub const PINFS_DMA_DEVICE_ERROR: i32 = 4;

/// The fallocate mode bits pinfs knows (Linux's `FALLOC_FL_*` values).
const FALLOC_KNOWN: i32 = libc::FALLOC_FL_KEEP_SIZE
    | libc::FALLOC_FL_PUNCH_HOLE
    | libc::FALLOC_FL_COLLAPSE_RANGE
    | libc::FALLOC_FL_ZERO_RANGE
    | libc::FALLOC_FL_INSERT_RANGE;

/// `open(2)` flags to the library's: the access mode (`O_RDONLY`,
/// `O_WRONLY`, `O_RDWR`) and `O_CREAT`, `O_EXCL`, `O_TRUNC`, `O_NONBLOCK`.
/// `O_CLOEXEC` is accepted and means nothing here (no descriptor is made);
/// any other bit is `EINVAL`, so a program never believes a flag it passed
/// took effect.
pub fn open_flags(raw: i32) -> Result<OpenFlags, Errno> {
    let known = libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_TRUNC
        | libc::O_NONBLOCK
        | libc::O_CLOEXEC;
    if raw & !known != 0 {
        return Err(Errno::EINVAL);
    }
    let (read, write) = match raw & libc::O_ACCMODE {
        libc::O_RDONLY => (true, false),
        libc::O_WRONLY => (false, true),
        libc::O_RDWR => (true, true),
        _ => return Err(Errno::EINVAL),
    };
    Ok(OpenFlags {
        read,
        write,
        create: raw & libc::O_CREAT != 0,
        exclusive: raw & libc::O_EXCL != 0,
        truncate: raw & libc::O_TRUNC != 0,
        nonblocking: raw & libc::O_NONBLOCK != 0,
    })
}

/// `fallocate(2)` mode bits to a [`FallocMode`], with Linux's rules
/// (`vfs_fallocate`): an unknown bit, or a hole punch without
/// `FALLOC_FL_KEEP_SIZE`, is `EOPNOTSUPP`; collapse and insert take no other
/// bit and punch and zero do not go together (`EINVAL`).
pub fn falloc_mode(raw: i32) -> Result<FallocMode, Errno> {
    if raw & !FALLOC_KNOWN != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let keep_size = raw & libc::FALLOC_FL_KEEP_SIZE != 0;
    let op = raw & !libc::FALLOC_FL_KEEP_SIZE;
    match op {
        0 => Ok(FallocMode::Allocate { keep_size }),
        libc::FALLOC_FL_PUNCH_HOLE if keep_size => Ok(FallocMode::PunchHole),
        libc::FALLOC_FL_PUNCH_HOLE => Err(Errno::EOPNOTSUPP),
        libc::FALLOC_FL_ZERO_RANGE => Ok(FallocMode::ZeroRange { keep_size }),
        libc::FALLOC_FL_COLLAPSE_RANGE if !keep_size => Ok(FallocMode::CollapseRange),
        libc::FALLOC_FL_INSERT_RANGE if !keep_size => Ok(FallocMode::InsertRange),
        _ => Err(Errno::EINVAL),
    }
}

/// A lease argument (`F_RDLCK|F_WRLCK|F_UNLCK`, optionally with
/// `PINFS_F_LAYOUT` and `PINFS_F_EXCLUSIVE`) and a byte range (`len` 0 =
/// to the end of the file, as `fcntl` locks) to a [`LeaseRequest`]. A range
/// other than the whole file needs `PINFS_F_LAYOUT` (open leases cover
/// the whole file): `EINVAL`, as is an unknown type or bit.
pub fn lease_request(arg: i32, offset: u64, len: u64) -> Result<LeaseRequest, Errno> {
    let bits = PINFS_F_LAYOUT | PINFS_F_EXCLUSIVE;
    let (ty, flags) = (arg & !bits, arg & bits);
    let layout = flags & PINFS_F_LAYOUT != 0;
    let unbreakable = flags & PINFS_F_EXCLUSIVE != 0;
    if unbreakable && !layout {
        return Err(Errno::EINVAL);
    }
    let req = match (ty, layout) {
        (PINFS_F_RDLCK, false) => LeaseRequest::read(),
        (PINFS_F_WRLCK, false) => LeaseRequest::write(),
        (PINFS_F_UNLCK, false) => LeaseRequest::unlock(),
        (PINFS_F_RDLCK, true) => LeaseRequest::layout_shared(),
        (PINFS_F_WRLCK, true) => LeaseRequest::layout_exclusive(),
        (PINFS_F_UNLCK, true) => LeaseRequest::layout_unlock(),
        _ => return Err(Errno::EINVAL),
    };
    let req = if unbreakable && ty != PINFS_F_UNLCK {
        req.unbreakable()
    } else {
        req
    };
    let whole = offset == 0 && len == 0;
    if whole {
        return Ok(req);
    }
    if !layout {
        return Err(Errno::EINVAL);
    }
    let range = if len == 0 {
        ByteRange::new(offset, u64::MAX)
    } else {
        offset.checked_add(len).ok_or(Errno::EINVAL)?;
        ByteRange::from_len(offset, len)
    };
    Ok(req.range(range))
}

/// `mmap` protection bits to "read-only": `PROT_READ`, or `PROT_READ |
/// PROT_WRITE` (`PROT_WRITE` alone is read-write, as on x86); anything else
/// (`PROT_NONE`, `PROT_EXEC`, unknown bits) is `EINVAL`.
pub fn read_only(prot: i32) -> Result<bool, Errno> {
    match prot {
        libc::PROT_READ => Ok(true),
        p if p == libc::PROT_WRITE || p == libc::PROT_READ | libc::PROT_WRITE => Ok(false),
        _ => Err(Errno::EINVAL),
    }
}

/// A `PINFS_REVOKE_*` number to the library's mode (`EINVAL` otherwise).
pub fn revoke_mode(n: i32) -> Result<RevokeMode, Errno> {
    match n {
        PINFS_REVOKE_INVALIDATE => Ok(RevokeMode::Invalidate),
        PINFS_REVOKE_REDIRECT => Ok(RevokeMode::Redirect),
        PINFS_REVOKE_ODP => Ok(RevokeMode::Odp),
        _ => Err(Errno::EINVAL),
    }
}

/// A completion as its `PINFS_DMA_*` number.
pub fn completion_number(c: Completion) -> i32 {
    match c {
        Completion::Ok => PINFS_DMA_OK,
        Completion::ProtectionError => PINFS_DMA_PROTECTION_ERROR,
        Completion::PageFault => PINFS_DMA_PAGE_FAULT,
        Completion::InvalidRegion => PINFS_DMA_INVALID_REGION,
        Completion::DeviceError(_) => PINFS_DMA_DEVICE_ERROR,
    }
}

/// A lease type as the number `getlease` returns.
pub fn lease_type_number(ty: LeaseType) -> i32 {
    match ty {
        LeaseType::Read => PINFS_F_RDLCK,
        LeaseType::Write => PINFS_F_WRLCK,
        LeaseType::Unlock => PINFS_F_UNLCK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_types_are_linux_values() {
        // Written as literals so that cbindgen can put them in the header.
        assert_eq!(PINFS_F_RDLCK, libc::F_RDLCK);
        assert_eq!(PINFS_F_WRLCK, libc::F_WRLCK);
        assert_eq!(PINFS_F_UNLCK, libc::F_UNLCK);
    }

    #[test]
    fn map_flags_are_the_libraries() {
        use pinfs::map;
        assert_eq!(PINFS_MAP_SHARED, map::MAP_SHARED);
        assert_eq!(PINFS_MAP_PRIVATE, map::MAP_PRIVATE);
        assert_eq!(PINFS_MAP_SHARED_VALIDATE, map::MAP_SHARED_VALIDATE);
        assert_eq!(PINFS_MAP_SYNC, map::MAP_SYNC);
        assert_eq!(PINFS_MAP_DIRECT, map::MAP_DIRECT);
        assert_eq!(read_only(libc::PROT_READ), Ok(true));
        assert_eq!(read_only(libc::PROT_READ | libc::PROT_WRITE), Ok(false));
        assert_eq!(read_only(libc::PROT_NONE), Err(Errno::EINVAL));
        assert_eq!(
            read_only(libc::PROT_READ | libc::PROT_EXEC),
            Err(Errno::EINVAL)
        );
        assert_eq!(revoke_mode(PINFS_REVOKE_ODP), Ok(RevokeMode::Odp));
        assert_eq!(revoke_mode(3), Err(Errno::EINVAL));
    }

    #[test]
    fn open_flags_follow_open_2() {
        let f = open_flags(libc::O_RDONLY).unwrap();
        assert!(f.read && !f.write && !f.create);
        let f = open_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC).unwrap();
        assert!(!f.read && f.write && f.create && f.truncate && !f.exclusive);
        let f =
            open_flags(libc::O_RDWR | libc::O_EXCL | libc::O_NONBLOCK | libc::O_CLOEXEC).unwrap();
        assert!(f.read && f.write && f.exclusive && f.nonblocking);
        assert_eq!(open_flags(libc::O_ACCMODE), Err(Errno::EINVAL));
        assert_eq!(
            open_flags(libc::O_RDWR | libc::O_DIRECT),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn falloc_modes_follow_linux() {
        use libc::{
            FALLOC_FL_COLLAPSE_RANGE as COLLAPSE, FALLOC_FL_INSERT_RANGE as INSERT,
            FALLOC_FL_KEEP_SIZE as KEEP, FALLOC_FL_PUNCH_HOLE as PUNCH,
            FALLOC_FL_ZERO_RANGE as ZERO,
        };
        assert_eq!(
            falloc_mode(0),
            Ok(FallocMode::Allocate { keep_size: false })
        );
        assert_eq!(
            falloc_mode(KEEP),
            Ok(FallocMode::Allocate { keep_size: true })
        );
        assert_eq!(falloc_mode(PUNCH | KEEP), Ok(FallocMode::PunchHole));
        assert_eq!(falloc_mode(PUNCH), Err(Errno::EOPNOTSUPP));
        assert_eq!(
            falloc_mode(ZERO),
            Ok(FallocMode::ZeroRange { keep_size: false })
        );
        assert_eq!(
            falloc_mode(ZERO | KEEP),
            Ok(FallocMode::ZeroRange { keep_size: true })
        );
        assert_eq!(falloc_mode(COLLAPSE), Ok(FallocMode::CollapseRange));
        assert_eq!(falloc_mode(INSERT), Ok(FallocMode::InsertRange));
        assert_eq!(falloc_mode(COLLAPSE | KEEP), Err(Errno::EINVAL));
        assert_eq!(falloc_mode(PUNCH | ZERO | KEEP), Err(Errno::EINVAL));
        assert_eq!(falloc_mode(0x100), Err(Errno::EOPNOTSUPP));
    }

    #[test]
    fn lease_arguments() {
        let r = lease_request(PINFS_F_RDLCK, 0, 0).unwrap();
        assert_eq!(
            (r.ty, r.layout, r.unbreakable),
            (LeaseType::Read, false, false)
        );
        let r = lease_request(PINFS_F_WRLCK | PINFS_F_LAYOUT, 0, 0).unwrap();
        assert_eq!(
            (r.ty, r.layout, r.unbreakable),
            (LeaseType::Write, true, false)
        );
        let r = lease_request(
            PINFS_F_RDLCK | PINFS_F_LAYOUT | PINFS_F_EXCLUSIVE,
            4096,
            8192,
        )
        .unwrap();
        assert_eq!(
            (r.ty, r.layout, r.unbreakable),
            (LeaseType::Read, true, true)
        );
        assert_eq!(r.range, ByteRange::from_len(4096, 8192));
        let r = lease_request(PINFS_F_UNLCK | PINFS_F_LAYOUT | PINFS_F_EXCLUSIVE, 0, 0).unwrap();
        assert_eq!(
            (r.ty, r.layout, r.unbreakable),
            (LeaseType::Unlock, true, false)
        );
        let r = lease_request(PINFS_F_RDLCK | PINFS_F_LAYOUT, 4096, 0).unwrap();
        assert_eq!(r.range, ByteRange::new(4096, u64::MAX));
        assert_eq!(
            lease_request(PINFS_F_RDLCK | PINFS_F_EXCLUSIVE, 0, 0).err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(
            lease_request(PINFS_F_RDLCK, 0, 4096).err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(lease_request(7, 0, 0).err(), Some(Errno::EINVAL));
        assert_eq!(
            lease_request(PINFS_F_RDLCK | 64, 0, 0).err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(
            lease_request(PINFS_F_RDLCK | PINFS_F_LAYOUT, u64::MAX, 2).err(),
            Some(Errno::EINVAL)
        );
    }
}
