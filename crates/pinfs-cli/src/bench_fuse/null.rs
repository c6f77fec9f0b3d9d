//! The FUSE floor of `pinfs bench fuse`: a file system that does nothing.
//!
//! It has a root directory holding one file, `data`, of a fixed size whose
//! reads return zeros from a static buffer and whose writes are accepted
//! without being stored, and any number of empty files created and removed
//! by name. Every request is answered from memory at once, so what an
//! operation costs through it is what the kernel's FUSE transport costs (a
//! request to the daemon and back, with the same thread count and the same
//! direct I/O as the pinfs mount): the limit no FUSE file system can beat.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};
use parking_lot::Mutex;

/// The node id of `data`.
const DATA: u64 = 2;
/// Attributes and entries are never cached, as on the pinfs mount.
const TTL: Duration = Duration::ZERO;
/// The largest read the kernel asks for (FUSE's maximum request size).
const MAX_READ: usize = 1 << 20;
static ZEROS: [u8; MAX_READ] = [0; MAX_READ];

/// The do-nothing file system.
pub struct NullFs {
    data_size: u64,
    /// Files created by name, with their node ids.
    names: Mutex<HashMap<OsString, u64>>,
    next: AtomicU64,
}

impl NullFs {
    /// A root holding `data` of `data_size` bytes.
    pub fn new(data_size: u64) -> NullFs {
        NullFs {
            data_size,
            names: Mutex::new(HashMap::new()),
            next: AtomicU64::new(DATA + 1),
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink) = match ino {
            1 => (FileType::Directory, 0o755, 0, 2),
            DATA => (FileType::RegularFile, 0o644, self.data_size, 1),
            _ => (FileType::RegularFile, 0o644, 0, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for NullFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        let ino = if name == "data" {
            Some(DATA)
        } else {
            self.names.lock().get(name).copied()
        };
        match ino {
            Some(ino) => reply.entry(&TTL, &self.attr(ino), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino.0));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let n = (size as usize)
            .min(MAX_READ)
            .min(self.data_size.saturating_sub(offset) as usize);
        reply.data(&ZEROS[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        self.names.lock().insert(name.to_owned(), ino);
        reply.created(
            &TTL,
            &self.attr(ino),
            Generation(0),
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO,
        );
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.names.lock().remove(name) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}
