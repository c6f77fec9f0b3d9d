//! The mount's open files and directories, by FUSE file handle (`fh`).
//!
//! A FUSE `open` makes one [`Handle`] — one open file description, as
//! `open(2)` would — kept until `release`; `opendir` keeps a snapshot of the
//! directory's entries, so `readdir` offsets stay stable while the
//! directory changes, taken again when a `readdir` starts over at offset 0
//! (`rewinddir`). Snapshots are bounded in bytes: [`MAX_SNAPSHOT_BYTES`]
//! for the mount, [`MAX_SNAPSHOT_BYTES_PER_UID`] for one non-root uid
//! (`ENOMEM` past either; root is bound by the first only, which memory
//! requires). Both share one number space and one bound,
//! [`MAX_OPEN_HANDLES`] (`ENFILE` past it), of which one non-root uid may
//! hold at most [`MAX_OPEN_HANDLES_PER_UID`] (`EMFILE` past it), so one
//! user cannot take the table from everyone else.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pinfs::fs::{DirEntry, Handle, Node};
use pinfs::{Errno, Result};

/// At most this many files and directories open through one mount at a
/// time (`ENFILE` past it, as a system file table would).
pub const MAX_OPEN_HANDLES: usize = 1 << 16;

/// At most this many of them held by one uid other than root (`EMFILE`
/// past it): a quarter of the table, so at least four users share it and
/// root always finds room.
pub const MAX_OPEN_HANDLES_PER_UID: usize = MAX_OPEN_HANDLES / 4;

/// At most this many bytes of directory snapshots held by one mount
/// (`ENOMEM` for an `opendir` or a rewinding `readdir` past it).
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// At most this many of them held by one uid other than root: a quarter.
pub const MAX_SNAPSHOT_BYTES_PER_UID: usize = MAX_SNAPSHOT_BYTES / 4;

/// The bytes a snapshot of `entries` is charged.
pub fn snapshot_bytes(entries: &[DirEntry]) -> usize {
    entries
        .iter()
        .map(|e| std::mem::size_of::<DirEntry>() + e.name.len())
        .sum()
}

/// An open file of the mount.
#[derive(Debug)]
pub struct OpenFile {
    /// The core's open file description.
    pub handle: Arc<Handle>,
    /// `O_APPEND`: writes go to the end of file, whatever offset the kernel
    /// sends.
    pub append: bool,
}

/// What a FUSE file handle stands for.
#[derive(Debug, Clone)]
pub enum Open {
    /// A file from `open` or `create`.
    File(Arc<OpenFile>),
    /// A directory from `opendir`: its node and its entries when it was
    /// opened (without `.` and `..`).
    Dir(Arc<OpenDir>),
}

/// An open directory.
#[derive(Debug)]
pub struct OpenDir {
    /// The directory.
    pub node: Node,
    /// Who opened it (whose snapshot bytes it holds).
    pub uid: u32,
    /// Its entries when opened or last rewound, sorted by name, and the
    /// bytes they are charged.
    pub entries: Mutex<(Arc<Vec<DirEntry>>, usize)>,
    /// Taken by `opendir` and not yet read: the first `readdir` at offset
    /// 0 need not take it again.
    pub fresh: std::sync::atomic::AtomicBool,
}

/// The table of open handles.
#[derive(Debug, Default)]
pub struct Handles {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Each handle with the uid that opened it.
    open: HashMap<u64, (u32, Open)>,
    /// Handles held per uid (root not counted).
    per_uid: HashMap<u32, usize>,
    /// Snapshot bytes held, in all and per uid (root not counted).
    snapshot_bytes: usize,
    snapshot_per_uid: HashMap<u32, usize>,
}

impl Handles {
    /// Keep `open`, opened by `uid`; its FUSE file handle.
    pub fn insert(&self, uid: u32, open: Open) -> Result<u64> {
        let mut t = self.inner.lock();
        if t.open.len() >= MAX_OPEN_HANDLES {
            return Err(Errno::ENFILE.into());
        }
        if uid != 0 {
            let n = t.per_uid.entry(uid).or_default();
            if *n >= MAX_OPEN_HANDLES_PER_UID {
                return Err(Errno::EMFILE.into());
            }
            *n += 1;
        }
        t.next += 1;
        let fh = t.next;
        t.open.insert(fh, (uid, open));
        Ok(fh)
    }

    /// Charge `uid` `bytes` more of snapshots (`ENOMEM` past a bound).
    pub fn charge(&self, uid: u32, bytes: usize) -> Result<()> {
        let mut t = self.inner.lock();
        if t.snapshot_bytes.saturating_add(bytes) > MAX_SNAPSHOT_BYTES {
            return Err(Errno::ENOMEM.into());
        }
        if uid != 0 {
            let n = t.snapshot_per_uid.entry(uid).or_default();
            if n.saturating_add(bytes) > MAX_SNAPSHOT_BYTES_PER_UID {
                return Err(Errno::ENOMEM.into());
            }
            *n += bytes;
        }
        t.snapshot_bytes += bytes;
        Ok(())
    }

    /// Give back `bytes` of `uid`'s snapshots.
    pub fn uncharge(&self, uid: u32, bytes: usize) {
        let mut t = self.inner.lock();
        Self::uncharge_in(&mut t, uid, bytes);
    }

    fn uncharge_in(t: &mut Table, uid: u32, bytes: usize) {
        t.snapshot_bytes = t.snapshot_bytes.saturating_sub(bytes);
        if let Some(n) = t.snapshot_per_uid.get_mut(&uid) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                t.snapshot_per_uid.remove(&uid);
            }
        }
    }

    /// What `fh` stands for (`EBADF` if nothing).
    pub fn get(&self, fh: u64) -> Result<Open> {
        self.inner
            .lock()
            .open
            .get(&fh)
            .map(|(_, o)| o.clone())
            .ok_or_else(|| Errno::EBADF.into())
    }

    /// The open file `fh` (`EBADF` if it is none, `EISDIR` for a directory).
    pub fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        match self.get(fh)? {
            Open::File(f) => Ok(f),
            Open::Dir(_) => Err(Errno::EISDIR.into()),
        }
    }

    /// The open directory `fh`.
    pub fn dir(&self, fh: u64) -> Result<Arc<OpenDir>> {
        match self.get(fh)? {
            Open::Dir(d) => Ok(d),
            Open::File(_) => Err(Errno::ENOTDIR.into()),
        }
    }

    /// Forget `fh` (closing the file when the last request using it is done).
    pub fn remove(&self, fh: u64) -> Option<Open> {
        let mut t = self.inner.lock();
        let (uid, open) = t.open.remove(&fh)?;
        if let Open::Dir(d) = &open {
            let bytes = d.entries.lock().1;
            Self::uncharge_in(&mut t, d.uid, bytes);
        }
        if let Some(n) = t.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                t.per_uid.remove(&uid);
            }
        }
        Some(open)
    }

    /// Forget every handle (at unmount), closing the files.
    pub fn clear(&self) {
        let all = {
            let mut t = self.inner.lock();
            t.per_uid.clear();
            t.snapshot_per_uid.clear();
            t.snapshot_bytes = 0;
            std::mem::take(&mut t.open)
        };
        drop(all);
    }
}
