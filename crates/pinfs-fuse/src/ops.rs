//! The FUSE operations over a mounted [`Fs`]: each request translated into
//! one call of the core's inode-level API (`Fs::lookup`, `Fs::setattr`,
//! `Handle::pwrite`, `Handle::fallocate`, ...) — the functions every client
//! goes through, so a FUSE `truncate` breaks leases, waits, or fails with
//! `ETXTBSY` exactly as a client's would — and its `pinfs::Error` into the
//! errno the kernel hands back to the caller (in one place: [`errno`]).
//!
//! Coherence: files are opened `FOPEN_DIRECT_IO` and attributes and
//! entries have a zero time-to-live ([`TTL`]): clients change data and
//! sizes by storing straight into pool memory, outside FUSE, so the kernel
//! must hold no page or size of its own. `FUSE_DIRECT_IO_ALLOW_MMAP` lets
//! shared `mmap` through the mount work regardless (ARCHITECTURE.md, "The
//! FUSE mount").

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags as FuseOpenFlags,
    RenameFlags as FuseRenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use pinfs::format::{BLOCK_SIZE, NAME_MAX};
use pinfs::fs::{Cred, FallocMode, Fs, Node, OpenFlags, RenameFlags, SetAttr, Stat, TimeSet};
use pinfs::{Errno, Result};

use crate::breakers::Breakers;
use crate::cred::request_cred;
use crate::handles::{snapshot_bytes, Handles, Open, OpenDir, OpenFile};
use crate::node::{attr, file_type, node_id, node_of_id};

/// Time-to-live of every attribute and entry the kernel is given: none.
/// Sizes and data change outside FUSE (clients store into pool memory and
/// change layouts through the daemon), so the kernel must ask every time.
pub const TTL: Duration = Duration::ZERO;

/// The largest read or write the kernel is told to send (fuser's request
/// buffer holds at most 16 MiB; 1 MiB is what the kernel's `max_pages`
/// allows by default and plenty for throughput).
pub const MAX_IO_BYTES: u32 = 1 << 20;

/// The errno a core error reaches the caller as.
pub fn errno(e: &pinfs::Error) -> fuser::Errno {
    fuser::Errno::from_i32(e.errno().0)
}

/// A reply that can refuse a request the breaker pool has no room for.
trait Refuse {
    fn refuse(self);
}

macro_rules! refuse_with_eagain {
    ($($t:ty),*) => {$(
        impl Refuse for $t {
            fn refuse(self) {
                self.error(fuser::Errno::from_i32(libc::EAGAIN));
            }
        }
    )*};
}
refuse_with_eagain!(ReplyAttr, ReplyEmpty, ReplyOpen, ReplyCreate, ReplyWrite);

/// The `fuser::Filesystem` of one mount. Cheap to clone (shared state
/// behind `Arc`s): a request that may break a lease runs on a breaker
/// thread with a clone ([`crate::breakers`]).
#[derive(Debug, Clone)]
pub struct PinfsFuse {
    fs: Arc<Fs>,
    root: Node,
    owner: u64,
    handles: Arc<Handles>,
    breakers: Breakers,
    /// The negative control's owner (0: `owner`).
    #[cfg(feature = "negative-controls")]
    owner_override: Arc<std::sync::atomic::AtomicU64>,
}

impl PinfsFuse {
    /// A FUSE file system over `fs` whose callers act as lease owner `owner`.
    pub fn new(fs: Arc<Fs>, owner: u64) -> PinfsFuse {
        let root = fs.root();
        PinfsFuse {
            fs,
            root,
            owner,
            handles: Arc::default(),
            breakers: Breakers::default(),
            #[cfg(feature = "negative-controls")]
            owner_override: Arc::default(),
        }
    }

    /// The switch of [`crate::Mount::act_as_owner_for_tests`].
    #[cfg(feature = "negative-controls")]
    pub fn owner_override(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.owner_override)
    }

    fn owner(&self) -> u64 {
        #[cfg(feature = "negative-controls")]
        {
            let o = self
                .owner_override
                .load(std::sync::atomic::Ordering::Acquire);
            if o != 0 {
                return o;
            }
        }
        self.owner
    }

    fn cred(&self, req: &Request) -> Cred {
        request_cred(req.uid(), req.gid(), req.pid(), self.owner())
    }

    /// Run `f` on a breaker thread, never on this FUSE worker: it may wait
    /// up to lease-break-time for a lease holder, and a worker waiting
    /// there serves nobody else. Refused with `EAGAIN` when the pool (or
    /// the caller's uid's share of it) is full.
    fn off_worker<R: Refuse + Send + 'static>(
        &self,
        req: &Request,
        reply: R,
        f: impl FnOnce(&PinfsFuse, Cred, R) + Send + 'static,
    ) {
        let (me, cred) = (self.clone(), self.cred(req));
        self.breakers.submit(req.uid(), move |run| {
            if run {
                f(&me, cred, reply);
            } else {
                reply.refuse();
            }
        });
    }

    fn node(&self, id: INodeNo) -> Node {
        node_of_id(id.0, self.root)
    }

    /// The attributes of `stat` with the node id as `ino` (fuser sends an
    /// entry's node id from it; `stat(2)` shows it as `st_ino`).
    fn attr(&self, stat: &Stat) -> fuser::FileAttr {
        let mut a = attr(stat);
        a.ino = INodeNo(node_id(stat.node(), self.root));
        a
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Stat>) {
        match r {
            Ok(st) => reply.entry(&TTL, &self.attr(&st), Generation(u64::from(st.generation))),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn attr_reply(&self, reply: ReplyAttr, r: Result<Stat>) {
        match r {
            Ok(st) => reply.attr(&TTL, &self.attr(&st)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// The flags every open file gets: no page cache (clients change data
    /// outside FUSE), writes to one file may run in parallel (the core
    /// orders them itself).
    fn fopen_flags() -> FopenFlags {
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    }

    fn open_file(&self, cred: Cred, handle: pinfs::fs::Handle, raw_flags: i32) -> Result<u64> {
        self.handles.insert(
            cred.uid,
            Open::File(Arc::new(OpenFile {
                handle: Arc::new(handle),
                append: raw_flags & libc::O_APPEND != 0,
            })),
        )
    }

    fn setattr_inner(
        &self,
        cred: Cred,
        ino: INodeNo,
        attr: &SetAttr,
        fh: Option<FileHandle>,
    ) -> Result<Stat> {
        // With a file handle (ftruncate, fchmod, futimens) the handle's own
        // rights apply — a file opened for writing can be truncated even if
        // its mode no longer allows writing, as ftruncate(2) does.
        if let Some(fh) = fh {
            if let Ok(Open::File(f)) = self.handles.get(fh.0) {
                return f.handle.setattr(attr);
            }
        }
        self.fs.setattr(cred, self.node(ino), attr)
    }

    /// A snapshot of directory `node`'s entries, charged to `cred.uid`.
    fn read_dir_snapshot(&self, cred: Cred, node: Node) -> Result<OpenDir> {
        let entries = self.fs.readdir_node(cred, node)?;
        let bytes = snapshot_bytes(&entries);
        self.handles.charge(cred.uid, bytes)?;
        Ok(OpenDir {
            node,
            uid: cred.uid,
            entries: parking_lot::Mutex::new((Arc::new(entries), bytes)),
            fresh: true.into(),
        })
    }

    /// Take `dir`'s snapshot again (a `readdir` from offset 0: `rewinddir`
    /// shows what was created since), charged to whoever opened it.
    fn refresh_snapshot(&self, cred: Cred, dir: &OpenDir) -> Result<()> {
        let entries = self.fs.readdir_node(cred, dir.node)?;
        let bytes = snapshot_bytes(&entries);
        let mut held = dir.entries.lock();
        self.handles.charge(dir.uid, bytes)?;
        self.handles.uncharge(dir.uid, held.1);
        *held = (Arc::new(entries), bytes);
        Ok(())
    }

    /// `open` with the caller's credentials `cred`.
    fn open_inner(&self, cred: Cred, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        let (node, of) = (self.node(ino), open_flags(flags.0));
        let r = (|| {
            if of.nonblocking {
                // O_NONBLOCK is the open's own: an open that would wait for
                // a lease break is EWOULDBLOCK (the break proceeds), as in
                // open(2). Later layout changes through the file wait
                // whatever its flags, as Linux's ftruncate and fallocate do
                // (coreutils `truncate` opens O_NONBLOCK, for FIFOs): so
                // the file kept is opened blocking, once the non-blocking
                // open has shown nothing is to be waited for.
                drop(self.fs.open_node(cred, node, of)?);
            }
            let h = self.fs.open_node(
                cred,
                node,
                OpenFlags {
                    nonblocking: false,
                    ..of
                },
            )?;
            self.open_file(cred, h, flags.0)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), Self::fopen_flags()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// `lseek(SEEK_DATA | SEEK_HOLE)` from the file's extent map: data is
    /// every mapped extent (written or unwritten, as ext4 and XFS report
    /// unwritten extents as data unless they look at page state).
    fn seek_data_hole(&self, f: &OpenFile, offset: u64, whence: i32) -> Result<u64> {
        let size = f.handle.stat()?.size;
        if offset >= size {
            return Err(Errno::ENXIO.into());
        }
        let extents = f.handle.fiemap()?;
        let in_extent = |at: u64| {
            extents
                .iter()
                .find(|e| e.logical <= at && at < e.logical + e.len)
        };
        if whence == libc::SEEK_DATA {
            if in_extent(offset).is_some() {
                return Ok(offset);
            }
            match extents
                .iter()
                .map(|e| e.logical)
                .filter(|&l| l > offset && l < size)
                .min()
            {
                Some(l) => Ok(l),
                None => Err(Errno::ENXIO.into()),
            }
        } else {
            let mut at = offset;
            while let Some(e) = in_extent(at) {
                at = e.logical + e.len;
            }
            Ok(at.min(size))
        }
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::Ns(ns_of(t)),
    }
}

fn ns_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The core's open flags for FUSE's raw `open` flags. `O_CREAT`, `O_EXCL`
/// and `O_TRUNC` never reach `open` (the kernel sends `create`, or a
/// `setattr` of size 0 before the open).
fn open_flags(raw: i32) -> OpenFlags {
    let acc = raw & libc::O_ACCMODE;
    OpenFlags {
        read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
        write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
        create: false,
        exclusive: false,
        truncate: false,
        nonblocking: raw & libc::O_NONBLOCK != 0,
    }
}

/// What `fallocate(2)`'s `mode` asks, or `EOPNOTSUPP`.
pub fn falloc_mode(mode: i32) -> Result<FallocMode> {
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let rest = mode & !libc::FALLOC_FL_KEEP_SIZE;
    Ok(match rest {
        0 => FallocMode::Allocate { keep_size },
        libc::FALLOC_FL_PUNCH_HOLE if keep_size => FallocMode::PunchHole,
        libc::FALLOC_FL_ZERO_RANGE => FallocMode::ZeroRange { keep_size },
        libc::FALLOC_FL_COLLAPSE_RANGE if !keep_size => FallocMode::CollapseRange,
        libc::FALLOC_FL_INSERT_RANGE if !keep_size => FallocMode::InsertRange,
        // PUNCH_HOLE without KEEP_SIZE is EINVAL in fallocate(2) (the VFS
        // refuses it before us); everything else is a mode pinfs lacks.
        libc::FALLOC_FL_PUNCH_HOLE => return Err(Errno::EINVAL.into()),
        _ => return Err(Errno::EOPNOTSUPP.into()),
    })
}

fn name_bytes(name: &OsStr) -> Result<&[u8]> {
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG.into());
    }
    Ok(b)
}

impl Filesystem for PinfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Shared mmap of FOPEN_DIRECT_IO files (fsx maps files; tools mmap).
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_err()
        {
            tracing::warn!(target: "pinfs::fuse", "the kernel cannot mmap direct-I/O files: shared mmap through the mount fails with ENODEV");
        }
        // Parallel lookups and readdirs in one directory; the kernel still
        // serializes changes to a directory.
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // FUSE_DONT_MASK is not asked for: the kernel applies the caller's
        // umask, and modes arrive masked.
        let _ = config.set_max_write(MAX_IO_BYTES);
        Ok(())
    }

    fn destroy(&mut self) {
        self.breakers.stop();
        self.handles.clear();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = name_bytes(name).and_then(|n| self.fs.lookup(self.cred(req), self.node(parent), n));
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = match fh.map(|fh| self.handles.get(fh.0)) {
            Some(Ok(Open::File(f))) => f.handle.stat(),
            _ => self.fs.getattr(self.node(ino)),
        };
        self.attr_reply(reply, r);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime_ns: ctime.map(ns_of),
        };
        if size.is_none() {
            let r = self.setattr_inner(self.cred(req), ino, &set, fh);
            return self.attr_reply(reply, r);
        }
        // A size change breaks layout leases: off the worker.
        self.off_worker(req, reply, move |me, cred, reply| {
            let r = me.setattr_inner(cred, ino, &set, fh);
            me.attr_reply(reply, r);
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(self.cred(req), self.node(ino)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = name_bytes(name).and_then(|n| {
            self.fs
                .mknod_in(self.cred(req), self.node(parent), n, mode, u64::from(rdev))
        });
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = name_bytes(name)
            .and_then(|n| self.fs.mkdir_in(self.cred(req), self.node(parent), n, mode));
        self.entry(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Removing the last name may free blocks (a layout change).
        let name = name.as_bytes().to_vec();
        self.off_worker(req, reply, move |me, cred, reply| {
            match name_bytes(OsStr::from_bytes(&name))
                .and_then(|n| me.fs.unlink_in(cred, me.node(parent), n))
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.off_worker(req, reply, move |me, cred, reply| {
            match name_bytes(OsStr::from_bytes(&name))
                .and_then(|n| me.fs.rmdir_in(cred, me.node(parent), n))
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = name_bytes(link_name).and_then(|n| {
            self.fs.symlink_in(
                self.cred(req),
                self.node(parent),
                n,
                target.as_os_str().as_bytes(),
            )
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        // Replacing a file may free its blocks (a layout change).
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        self.off_worker(req, reply, move |me, cred, reply| {
            let r = (|| {
                if flags.contains(FuseRenameFlags::RENAME_WHITEOUT) {
                    return Err(Errno::EINVAL.into());
                }
                let rf = RenameFlags {
                    noreplace: flags.contains(FuseRenameFlags::RENAME_NOREPLACE),
                    exchange: flags.contains(FuseRenameFlags::RENAME_EXCHANGE),
                };
                me.fs.rename_in(
                    cred,
                    me.node(parent),
                    name_bytes(OsStr::from_bytes(&name))?,
                    me.node(newparent),
                    name_bytes(OsStr::from_bytes(&newname))?,
                    rf,
                )
            })();
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = name_bytes(newname).and_then(|n| {
            self.fs
                .link_in(self.cred(req), self.node(ino), self.node(newparent), n)
        });
        self.entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        if open_flags(flags.0).write {
            // An open for writing breaks open leases: off the worker.
            self.off_worker(req, reply, move |me, cred, reply| {
                me.open_inner(cred, ino, flags, reply)
            });
        } else {
            self.open_inner(self.cred(req), ino, flags, reply);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.handles.file(fh.0).and_then(|f| {
            let mut buf = vec![0u8; size.min(MAX_IO_BYTES) as usize];
            let n = f.handle.pread(offset, &mut buf)?;
            buf.truncate(n);
            Ok(buf)
        });
        match r {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A write that allocates or unshares blocks breaks layout leases.
        let data = data.to_vec();
        self.off_worker(req, reply, move |me, _cred, reply| {
            let r = me.handles.file(fh.0).and_then(|f| {
                let at = if f.append {
                    f.handle.stat()?.size
                } else {
                    offset
                };
                f.handle.pwrite(at, &data)
            });
            match r {
                // At most MAX_IO_BYTES (the kernel sends no more).
                Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Data is in pool memory once written; nothing is buffered here.
        match self.handles.get(fh.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Dropping the last reference closes the core's handle (an unlinked
        // file's blocks are freed then, if nothing else holds it).
        self.handles.remove(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.handles.file(fh.0).and_then(|f| f.handle.fsync()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        let (node, cred) = (self.node(ino), self.cred(req));
        let r = self.read_dir_snapshot(cred, node).and_then(|d| {
            let d = Arc::new(d);
            self.handles
                .insert(cred.uid, Open::Dir(Arc::clone(&d)))
                .inspect_err(|_| self.handles.uncharge(d.uid, d.entries.lock().1))
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.handles.dir(fh.0) {
            Ok(d) => d,
            Err(e) => return reply.error(errno(&e)),
        };
        // Offsets: 1 after ".", 2 after "..", 3 + i after entry i. `d_ino`
        // is informational (the kernel and `ls` take `st_ino` from a
        // lookup): `..`'s is the directory's own, an entry's is its plain
        // inode number — its generation (the high half of its node id and
        // `st_ino`) would need a lookup, and a lookup needs search
        // permission, which reading a directory does not.
        let me = node_id(dir.node, self.root);
        let fresh = dir.fresh.swap(false, std::sync::atomic::Ordering::AcqRel);
        if offset == 0 && !fresh {
            // Starting over (the first read after opendir, or rewinddir):
            // show the directory as it is now.
            if let Err(e) = self.refresh_snapshot(self.cred(req), &dir) {
                return reply.error(errno(&e));
            }
        }
        let entries = Arc::clone(&dir.entries.lock().0);
        let mut at = offset;
        while at < 2 {
            let name = if at == 0 { "." } else { ".." };
            if reply.add(INodeNo(me), at + 1, FileType::Directory, name) {
                return reply.ok();
            }
            at += 1;
        }
        let skip = usize::try_from(at - 2).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(skip) {
            if reply.add(
                INodeNo(e.ino),
                i as u64 + 3,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace change is committed through the journal before it
        // returns: directories are always durable.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        // Busy blocks are neither free nor in any file (SPEC §4.3): they
        // count as used here; `pinfs stat` lists them.
        reply.statfs(
            s.blocks,
            s.free,
            s.free,
            s.inodes,
            s.free_inodes,
            BLOCK_SIZE as u32,
            NAME_MAX as u32,
            BLOCK_SIZE as u32,
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self
            .fs
            .access(self.cred(req), self.node(ino), mask.bits() as u32)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        // Creating over an existing file (no O_EXCL) opens it for writing,
        // and O_TRUNC truncates it: both break leases.
        let name = name.as_bytes().to_vec();
        self.off_worker(req, reply, move |me, cred, reply| {
            let name = OsStr::from_bytes(&name);
            let r = (|| {
                let mut of = open_flags(flags);
                // A new file has no lease to wait for; an existing one (O_CREAT
                // without O_EXCL) waits like `open` after its check, above.
                if of.nonblocking {
                    if let Ok(st) = me.fs.lookup(cred, me.node(parent), name_bytes(name)?) {
                        drop(me.fs.open_node(cred, st.node(), of)?);
                    }
                    of.nonblocking = false;
                }
                of.create = true;
                of.exclusive = flags & libc::O_EXCL != 0;
                of.truncate = flags & libc::O_TRUNC != 0;
                let (h, st) =
                    me.fs
                        .create_in(cred, me.node(parent), name_bytes(name)?, mode, of)?;
                let fh = me.open_file(cred, h, flags)?;
                Ok((fh, st))
            })();
            match r {
                Ok((fh, st)) => reply.created(
                    &TTL,
                    &me.attr(&st),
                    Generation(u64::from(st.generation)),
                    FileHandle(fh),
                    Self::fopen_flags(),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.off_worker(req, reply, move |me, _cred, reply| {
            let r = falloc_mode(mode).and_then(|m| {
                let f = me.handles.file(fh.0)?;
                f.handle.fallocate(m, offset, length)
            });
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = (|| {
            let f = self.handles.file(fh.0)?;
            let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
            match whence {
                libc::SEEK_DATA | libc::SEEK_HOLE => self.seek_data_hole(&f, offset, whence),
                _ => Err(Errno::EINVAL.into()),
            }
        })();
        match r {
            Ok(at) => reply.offset(i64::try_from(at).unwrap_or(i64::MAX)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // A copy of whole blocks is a reflink (shared blocks, copied on
        // write); anything else is EOPNOTSUPP, and the kernel (or the tool)
        // copies with reads and writes.
        // A reflink replaces the destination's blocks (a layout change).
        self.off_worker(req, reply, move |me, _cred, reply| {
            let r = (|| {
                let (src, dst) = (me.handles.file(fh_in.0)?, me.handles.file(fh_out.0)?);
                let src_size = src.handle.stat()?.size;
                let dst_size = dst.handle.stat()?.size;
                let len = len
                    .min(src_size.saturating_sub(offset_in))
                    .min(u64::from(u32::MAX) / BLOCK_SIZE * BLOCK_SIZE);
                if len == 0 {
                    return Ok(0);
                }
                let aligned =
                    offset_in.is_multiple_of(BLOCK_SIZE) && offset_out.is_multiple_of(BLOCK_SIZE);
                let whole = len.is_multiple_of(BLOCK_SIZE)
                    || (offset_in + len == src_size && offset_out + len >= dst_size);
                // Within one file ranges may overlap, which a reflink refuses
                // and a copy must not: the kernel copies those.
                if !aligned || !whole || src.handle.node() == dst.handle.node() {
                    return Err(Errno::EOPNOTSUPP.into());
                }
                dst.handle
                    .reflink(&src.handle, Some((offset_in, offset_out, len)))?;
                Ok(len)
            })();
            match r {
                Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallocate_modes() {
        assert_eq!(
            falloc_mode(0).ok(),
            Some(FallocMode::Allocate { keep_size: false })
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_KEEP_SIZE).ok(),
            Some(FallocMode::Allocate { keep_size: true })
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).ok(),
            Some(FallocMode::PunchHole)
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE).ok(),
            Some(FallocMode::ZeroRange { keep_size: true })
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_COLLAPSE_RANGE).ok(),
            Some(FallocMode::CollapseRange)
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_INSERT_RANGE).ok(),
            Some(FallocMode::InsertRange)
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_PUNCH_HOLE)
                .map_err(|e| e.errno())
                .err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(
            falloc_mode(0x40).map_err(|e| e.errno()).err(),
            Some(Errno::EOPNOTSUPP)
        );
    }

    #[test]
    fn open_flags_from_raw() {
        let r = open_flags(libc::O_RDONLY);
        assert!(r.read && !r.write);
        let w = open_flags(libc::O_WRONLY | libc::O_NONBLOCK);
        assert!(!w.read && w.write && w.nonblocking);
        let rw = open_flags(libc::O_RDWR);
        assert!(rw.read && rw.write && !rw.nonblocking);
    }
}
