//! The inode-level API: every namespace and attribute operation named by
//! inode number and generation ([`Node`]) instead of by path — what a FUSE
//! mount's requests carry. The path API of `mod.rs` is a walk plus these
//! functions, so clients of the daemon, the FUSE mount and the CLI all take
//! one path through the permission checks, the POSIX rules (sticky
//! directories, set-id bits, timestamps) and the lease breaks.
//!
//! A [`Node`] names one *use* of an inode slot: every function here fails
//! with `ESTALE` when the slot is free or holds a later file (another
//! generation), so a caller holding a node of a removed file never acts on
//! the file that reused its slot.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::extent::Segment;
use super::ops::{bytes_of, write_range, Source};
use super::state::{FsState, Inode, Op};
use super::{
    break_options, drop_link, file_key, now_ns, touch_dir, Cred, DirEntry, Fs, Handle, OpenFlags,
    Stat, MAY_EXEC, MAY_READ, MAY_WRITE,
};
use crate::format::*;
use crate::lease::{Access, BreakOptions, ByteRange, HandleId, LayoutChangeGuard, OwnerId};
use crate::{Errno, Result};

pub use crate::format::{MAX_LINKS, MAX_SYMLINK};

/// Longest name of a directory entry, in bytes (`ENAMETOOLONG` beyond it).
pub const MAX_NAME: usize = NAME_MAX;

/// Most supplementary groups a [`Cred`] carries (the rest are dropped:
/// permission checks then see fewer groups, never more).
pub const MAX_GROUPS: usize = 32;

/// A file system object named by inode number and generation (what FUSE's
/// node ids carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Node {
    /// Inode number.
    pub ino: u64,
    /// Generation of the inode slot when the object was created.
    pub generation: u32,
}

impl Node {
    /// The root directory (mkfs gives it generation 0, and it is never
    /// freed).
    pub const ROOT: Node = Node {
        ino: ROOT_INO,
        generation: 0,
    };
}

/// A caller's supplementary groups: an inline set of up to [`MAX_GROUPS`]
/// gids, so a [`Cred`] stays `Copy`. A caller with more has them dropped
/// and the set marked *truncated*: membership of a group not in the set is
/// then unknown, and permission checks decide it on doubt safely (see
/// [`Groups::is_truncated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups {
    len: u8,
    truncated: bool,
    gids: [u32; MAX_GROUPS],
}

impl Groups {
    /// No supplementary group.
    pub const NONE: Groups = Groups {
        len: 0,
        truncated: false,
        gids: [0; MAX_GROUPS],
    };

    /// The groups of `gids`, keeping the first [`MAX_GROUPS`] (and marked
    /// truncated when there were more).
    pub fn from_slice(gids: &[u32]) -> Groups {
        let mut g = Groups::NONE;
        let n = gids.len().min(MAX_GROUPS);
        g.gids[..n].copy_from_slice(&gids[..n]);
        g.len = n as u8;
        g.truncated = gids.len() > MAX_GROUPS;
        g
    }

    /// Whether `gid` is one of them (false for a dropped one: grant
    /// nothing on a membership not known).
    pub fn contains(&self, gid: u32) -> bool {
        self.as_slice().contains(&gid)
    }

    /// Whether some of the caller's groups were dropped: then a gid not in
    /// the set may still be one of the caller's. File access then gets
    /// only what both the group and the other bits allow (never more than
    /// the caller really has, whichever way the membership is), and
    /// privileges that need membership (keeping set-gid, chown to a group)
    /// are refused.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The gids.
    pub fn as_slice(&self) -> &[u32] {
        &self.gids[..usize::from(self.len)]
    }
}

impl Default for Groups {
    fn default() -> Self {
        Groups::NONE
    }
}

/// A time `utimensat` sets: `UTIME_NOW` or an explicit time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time (`UTIME_NOW`): both times now, the owner, root, or
    /// anyone who may write the file; one of them alone, the owner or root.
    Now,
    /// An explicit time, ns since the epoch: the owner or root only.
    Ns(u64),
}

/// What `setattr(2)` (FUSE `SETATTR`) may change at once; `None` leaves a
/// field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (the type bits are ignored).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size: truncate, a layout change that breaks leases (SPEC §3.2, §4.3).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<TimeSet>,
    /// Modification time.
    pub mtime: Option<TimeSet>,
    /// Change time, set as given when the caller is the owner or root
    /// (otherwise any change sets it to now; alone from anyone else:
    /// `EPERM`).
    pub ctime_ns: Option<u64>,
}

/// `renameat2` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// `RENAME_NOREPLACE`: `EEXIST` if the target exists.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap the two names (both must exist).
    pub exchange: bool,
}

/// A name a directory entry may have: not empty, no `/` (`EINVAL`), at most
/// [`MAX_NAME`] bytes (`ENAMETOOLONG`).
fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL.into());
    }
    if name.len() > MAX_NAME {
        return Err(Errno::ENAMETOOLONG.into());
    }
    Ok(())
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// Whether `cred` may remove or rename `victim`'s entry in `dir` as far as
/// the sticky bit goes: root, the entry's owner or the directory's owner.
fn sticky_allows(cred: &Cred, dir: &Inode, victim: &Inode) -> bool {
    cred.uid == 0 || dir.mode & S_ISVTX == 0 || cred.uid == dir.uid || cred.uid == victim.uid
}

/// Whether the permission bits `new` are those of `mode` with `S_ISUID`
/// and/or `S_ISGID` cleared and nothing else changed (at least one cleared):
/// the one mode change a non-owner may make (see `Fs::setattr`).
fn clears_only_set_id(mode: u32, new: u32) -> bool {
    let (cur, new) = (mode & 0o7777, new & 0o7777);
    let cleared = cur & !new;
    new & !cur == 0 && cleared != 0 && cleared & !(S_ISUID | S_ISGID) == 0
}

/// The set-id bits a write or truncate by `cred` removes (Linux
/// `file_remove_privs`): none for root; `S_ISUID`, and `S_ISGID` when
/// group-execute is set (otherwise it marks mandatory locking, not set-gid).
pub(super) fn privs_to_kill(cred: &Cred, mode: u32) -> u32 {
    if cred.uid == 0 || mode & S_IFMT != S_IFREG {
        return 0;
    }
    let mut kill = mode & S_ISUID;
    if mode & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
        kill |= S_ISGID;
    }
    kill
}

impl FsState {
    /// The inode `node` names: `ESTALE` if its slot is free or holds
    /// another generation.
    pub(super) fn node(&self, node: Node) -> Result<&Inode> {
        match self.inodes.get(&node.ino) {
            Some(i) if i.generation == node.generation || !self.check_generation => Ok(i),
            _ => Err(Errno::ESTALE.into()),
        }
    }

    /// The directory `node` names (`ENOTDIR` for anything else).
    fn dir_node(&self, node: Node) -> Result<&Inode> {
        let i = self.node(node)?;
        if i.is_dir() {
            Ok(i)
        } else {
            Err(Errno::ENOTDIR.into())
        }
    }

    /// The entry `name` of directory `dir`, after the search permission.
    fn entry(&self, cred: &Cred, dir: Node, name: &[u8]) -> Result<u64> {
        self.dir_node(dir)?;
        self.may(cred, dir.ino, MAY_EXEC)?;
        Ok(self
            .dirs
            .get(&dir.ino)
            .and_then(|d| d.entries.get(name))
            .ok_or(Errno::ENOENT)?
            .0)
    }

    /// Whether `name` exists in `dir` (the caller checked `dir`).
    fn has_entry(&self, dir: u64, name: &[u8]) -> bool {
        self.dirs
            .get(&dir)
            .is_some_and(|d| d.entries.contains_key(name))
    }

    /// The open-time checks on an existing file: type, then permission.
    fn check_open(&self, cred: &Cred, ino: u64, flags: OpenFlags) -> Result<()> {
        let i = self.inode(ino)?;
        match i.mode & S_IFMT {
            S_IFREG => {}
            S_IFDIR if flags.write || flags.truncate => return Err(Errno::EISDIR.into()),
            S_IFDIR => {}
            // The core opens neither: a symlink is never followed by it
            // (`O_NOFOLLOW`'s `ELOOP`), and special files have no data
            // here (the kernel opens FIFOs and devices itself).
            S_IFLNK => return Err(Errno::ELOOP.into()),
            _ => return Err(Errno::ENXIO.into()),
        }
        let want = if flags.read { MAY_READ } else { 0 }
            | if flags.write || flags.truncate {
                MAY_WRITE
            } else {
                0
            };
        self.may(cred, ino, want)
    }

    /// A directory `ino` may not move under itself: `EINVAL` if `to` is
    /// `ino` or below it.
    fn check_not_below(&self, ino: u64, to: u64) -> Result<()> {
        let mut at = to;
        let mut steps = 0;
        loop {
            if at == ino {
                return Err(Errno::EINVAL.into());
            }
            if at == ROOT_INO || steps > self.dirs.len() {
                return Ok(());
            }
            at = self.inode(at)?.parent;
            steps += 1;
        }
    }
}

/// What a removal asks of the entry it removes, checked before any lease
/// is broken for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// `unlink`: not a directory (`EISDIR`).
    NonDir,
    /// `rmdir`: an empty directory (`ENOTDIR`, `ENOTEMPTY`).
    EmptyDir,
    /// A rename's target: checked by the rename itself.
    Any,
}

/// What a new inode is made of.
struct NewNode<'d> {
    /// Type and permission bits.
    mode: u32,
    rdev: u64,
    /// A symlink's target.
    data: Option<&'d [u8]>,
}

impl Fs {
    /// The root directory.
    pub fn root(&self) -> Node {
        let st = self.state.read();
        Node {
            ino: ROOT_INO,
            generation: st.inode(ROOT_INO).map_or(0, |i| i.generation),
        }
    }

    /// The entry `name` of `dir` (`ENOENT`, `ENOTDIR`, `EACCES` without
    /// search permission on `dir`). `.` and `..` name the directory and its
    /// parent.
    pub fn lookup(&self, cred: Cred, dir: Node, name: &[u8]) -> Result<Stat> {
        let st = self.state.read();
        let d = st.dir_node(dir)?;
        let parent = d.parent;
        st.may(&cred, dir.ino, MAY_EXEC)?;
        match name {
            b"." => return st.stat(dir.ino),
            b".." => return st.stat(parent),
            _ => check_name(name)?,
        }
        let ino = st.entry(&cred, dir, name)?;
        st.stat(ino)
    }

    /// `stat` of `node`.
    pub fn getattr(&self, node: Node) -> Result<Stat> {
        let st = self.state.read();
        st.node(node)?;
        st.stat(node.ino)
    }

    /// `access(2)`: `mask` is `R_OK|W_OK|X_OK` bits (4, 2, 1; 0 tests
    /// existence). Root may read and write anything, and execute what has
    /// an execute bit (or is a directory).
    pub fn access(&self, cred: Cred, node: Node, mask: u32) -> Result<()> {
        let st = self.state.read();
        let i = st.node(node)?;
        let mask = mask & 7;
        if cred.uid == 0 {
            if mask & MAY_EXEC != 0 && !i.is_dir() && i.mode & 0o111 == 0 {
                return Err(Errno::EACCES.into());
            }
            return Ok(());
        }
        st.may(&cred, node.ino, mask)
    }

    /// Open `node` (no creation): the checks of `open(2)` on an existing
    /// file — `EISDIR` for a directory opened for writing, `ELOOP` for a
    /// symlink, `ENXIO` for a special file — then open leases are broken
    /// (SPEC §3.1) and `truncate` applied.
    pub fn open_node(self: &Arc<Self>, cred: Cred, node: Node, flags: OpenFlags) -> Result<Handle> {
        if flags.write || flags.truncate {
            self.writable()?;
        }
        let st = self.state.write();
        st.node(node)?;
        st.check_open(&cred, node.ino, flags)?;
        self.finish_open(st, cred, node, flags, false)
    }

    /// `open(2)` with `O_CREAT` (and `O_EXCL` when `flags.exclusive`) of
    /// `name` in `dir`: an existing file is opened as [`Fs::open_node`]
    /// does; a new one is a regular file with `mode`'s permission bits,
    /// owned by the caller (its group `dir`'s if `dir` is set-group-id).
    pub fn create_in(
        self: &Arc<Self>,
        cred: Cred,
        dir: Node,
        name: &[u8],
        mode: u32,
        flags: OpenFlags,
    ) -> Result<(Handle, Stat)> {
        check_name(name)?;
        self.writable()?;
        let mut st = self.state.write();
        st.dir_node(dir)?;
        st.may(&cred, dir.ino, MAY_EXEC)?;
        let existing = if is_dot(name) {
            Some(if name == b"." {
                dir.ino
            } else {
                st.inode(dir.ino)?.parent
            })
        } else {
            st.dirs
                .get(&dir.ino)
                .and_then(|d| d.entries.get(name))
                .map(|e| e.0)
        };
        let (node, created) = match existing {
            Some(ino) => {
                if flags.exclusive {
                    return Err(Errno::EEXIST.into());
                }
                // `O_CREAT` never opens a directory (Linux: `EISDIR`).
                if st.inode(ino)?.is_dir() {
                    return Err(Errno::EISDIR.into());
                }
                st.check_open(&cred, ino, flags)?;
                let generation = st.inode(ino)?.generation;
                (Node { ino, generation }, false)
            }
            None => {
                let ino = self.make_locked(
                    &mut st,
                    &cred,
                    dir.ino,
                    name,
                    NewNode {
                        mode: S_IFREG | (mode & 0o7777),
                        rdev: 0,
                        data: None,
                    },
                )?;
                let generation = st.inode(ino)?.generation;
                (Node { ino, generation }, true)
            }
        };
        let handle = self.finish_open(st, cred, node, flags, created)?;
        let stat = handle.stat()?;
        Ok((handle, stat))
    }

    /// Make the handle of an open whose checks passed (under `st`): count
    /// the open, then break open leases (a new file has none) and apply
    /// `O_TRUNC` without the state lock.
    fn finish_open(
        self: &Arc<Self>,
        mut st: parking_lot::RwLockWriteGuard<'_, FsState>,
        cred: Cred,
        node: Node,
        flags: OpenFlags,
        created: bool,
    ) -> Result<Handle> {
        st.runtime(node.ino).opens.fetch_add(1, Ordering::Relaxed);
        drop(st);
        let key = file_key(node.ino, node.generation);
        // From here the handle exists: dropping it (on any error) closes it.
        let handle = Handle {
            fs: self.clone(),
            id: self.next_handle.fetch_add(1, Ordering::Relaxed),
            ino: node.ino,
            generation: node.generation,
            key,
            cred,
            flags,
        };
        let access = match (flags.read, flags.write) {
            (true, false) => Access::ReadOnly,
            (false, true) => Access::WriteOnly,
            _ => Access::ReadWrite,
        };
        let (id, owner) = (HandleId(handle.id), OwnerId(cred.owner));
        if created {
            // Nobody can hold a lease on a file that did not exist.
            self.leases.opened(key, id, owner, access)?;
        } else {
            self.leases
                .open(key, id, owner, access, &break_options(flags.nonblocking))?;
        }
        if flags.truncate && !created && !handle.stat()?.is_dir() {
            // Clears the set-id bits in the truncate's own commit.
            handle.truncate_unchecked(0)?;
        }
        Ok(handle)
    }

    /// Create `name` in `dir` (under the state lock): the caller checked
    /// the name and that `dir` is a directory; here the write permission,
    /// the absence of the name, the link limit of `dir` for a
    /// subdirectory, and the set-group-id rules (Linux `inode_init_owner`
    /// and `mode_strip_sgid`).
    fn make_locked(
        &self,
        st: &mut FsState,
        cred: &Cred,
        dir: u64,
        name: &[u8],
        new: NewNode<'_>,
    ) -> Result<u64> {
        if is_dot(name) || st.has_entry(dir, name) {
            return Err(Errno::EEXIST.into());
        }
        st.may(cred, dir, MAY_WRITE | MAY_EXEC)?;
        let d = st.inode(dir)?;
        let is_dir = new.mode & S_IFMT == S_IFDIR;
        if is_dir && d.nlink >= MAX_LINKS {
            return Err(Errno::EMLINK.into());
        }
        let mut mode = new.mode;
        let gid = if d.mode & S_ISGID != 0 {
            if is_dir {
                mode |= S_ISGID;
            } else if mode & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP
                && cred.uid != 0
                && !cred.in_group(d.gid)
            {
                mode &= !S_ISGID;
            }
            d.gid
        } else {
            cred.gid
        };
        let now = now_ns();
        let mut op = Op::new(st, &*self.media);
        let ino = op.new_inode(mode, cred.uid, gid, now)?;
        if is_dir {
            let child = op.inode_mut(ino)?;
            child.nlink = 2;
            child.parent = dir;
            op.inode_mut(dir)?.nlink += 1;
        }
        op.inode_mut(ino)?.rdev = new.rdev;
        if let Some(data) = new.data {
            write_range(&mut op, ino, 0, data.len() as u64, Source::Bytes(data))?;
            op.inode_mut(ino)?.size = data.len() as u64;
        }
        op.link(dir, name, ino)?;
        touch_dir(&mut op, dir, now)?;
        op.commit()?;
        Ok(ino)
    }

    /// Create `name` in `dir` (no handle).
    fn make(&self, cred: Cred, dir: Node, name: &[u8], new: NewNode<'_>) -> Result<Stat> {
        check_name(name)?;
        self.writable()?;
        let mut st = self.state.write();
        st.dir_node(dir)?;
        st.may(&cred, dir.ino, MAY_EXEC)?;
        let ino = self.make_locked(&mut st, &cred, dir.ino, name, new)?;
        st.stat(ino)
    }

    /// `mkdir(2)` of `name` in `dir`: `mode`'s permission and sticky bits
    /// (set-id bits are not taken from it, as in Linux; a set-gid parent
    /// passes its own on).
    pub fn mkdir_in(&self, cred: Cred, dir: Node, name: &[u8], mode: u32) -> Result<Stat> {
        self.make(
            cred,
            dir,
            name,
            NewNode {
                mode: S_IFDIR | (mode & 0o1777),
                rdev: 0,
                data: None,
            },
        )
    }

    /// `mknod(2)`: a regular file, FIFO, socket, or (root only: `EPERM`)
    /// character or block device numbered `rdev`. A directory is `EPERM`,
    /// any other type `EINVAL`.
    pub fn mknod_in(
        &self,
        cred: Cred,
        dir: Node,
        name: &[u8],
        mode: u32,
        rdev: u64,
    ) -> Result<Stat> {
        let kind = match mode & S_IFMT {
            0 => S_IFREG,
            k => k,
        };
        let rdev = match kind {
            S_IFREG | S_IFIFO | S_IFSOCK => 0,
            S_IFCHR | S_IFBLK if cred.uid == 0 => rdev,
            S_IFCHR | S_IFBLK | S_IFDIR => return Err(Errno::EPERM.into()),
            _ => return Err(Errno::EINVAL.into()),
        };
        self.make(
            cred,
            dir,
            name,
            NewNode {
                mode: kind | (mode & 0o7777),
                rdev,
                data: None,
            },
        )
    }

    /// `symlink(2)`: `name` in `dir` pointing at `target` (stored as the
    /// link's data; never interpreted by pinfs). An empty target is
    /// `ENOENT`, one over [`MAX_SYMLINK`] bytes `ENAMETOOLONG`.
    pub fn symlink_in(&self, cred: Cred, dir: Node, name: &[u8], target: &[u8]) -> Result<Stat> {
        if target.is_empty() {
            return Err(Errno::ENOENT.into());
        }
        if target.len() > MAX_SYMLINK || target.contains(&0) {
            return Err(if target.contains(&0) {
                Errno::EINVAL
            } else {
                Errno::ENAMETOOLONG
            }
            .into());
        }
        self.make(
            cred,
            dir,
            name,
            NewNode {
                mode: S_IFLNK | 0o777,
                rdev: 0,
                data: Some(target),
            },
        )
    }

    /// `readlink(2)`: a symlink's target (`EINVAL` for anything else).
    pub fn readlink(&self, _cred: Cred, node: Node) -> Result<Vec<u8>> {
        let st = self.state.read();
        let i = st.node(node)?;
        if i.mode & S_IFMT != S_IFLNK {
            return Err(Errno::EINVAL.into());
        }
        // Validation bounds a symlink's size by `MAX_SYMLINK`.
        let len = usize::try_from(i.size).map_err(|_| Errno::EUCLEAN)?;
        let mut out = vec![0u8; len];
        for seg in i.extents.segments(0, i.size.div_ceil(BLOCK_SIZE)) {
            let (from, to) = bytes_of(seg.logical(), seg.len());
            let to = to.min(i.size);
            if let Segment::Mapped { physical, .. } = seg {
                self.media
                    .read(block_offset(physical), &mut out[from as usize..to as usize])?;
            }
        }
        Ok(out)
    }

    /// `link(2)`: a new name for `node` in `dir` (`EPERM` for a directory,
    /// `EMLINK` at [`MAX_LINKS`], `ENOENT` for a file with no name left).
    pub fn link_in(&self, cred: Cred, node: Node, dir: Node, name: &[u8]) -> Result<Stat> {
        check_name(name)?;
        self.writable()?;
        let mut st = self.state.write();
        let i = st.node(node)?;
        if i.is_dir() {
            return Err(Errno::EPERM.into());
        }
        let nlink = i.nlink;
        st.dir_node(dir)?;
        st.may(&cred, dir.ino, MAY_EXEC)?;
        if is_dot(name) || st.has_entry(dir.ino, name) {
            return Err(Errno::EEXIST.into());
        }
        st.may(&cred, dir.ino, MAY_WRITE | MAY_EXEC)?;
        if nlink == 0 {
            return Err(Errno::ENOENT.into());
        }
        if nlink >= MAX_LINKS {
            return Err(Errno::EMLINK.into());
        }
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.media);
        op.link(dir.ino, name, node.ino)?;
        let i = op.inode_mut(node.ino)?;
        i.nlink += 1;
        i.ctime_ns = now;
        touch_dir(&mut op, dir.ino, now)?;
        op.commit()?;
        st.stat(node.ino)
    }

    /// Before removing `name` from `dir`: if that drops the last link of a
    /// file nobody has open, its blocks are freed — a layout change of the
    /// whole file, whose leases are broken first (without the state lock).
    /// The removal's own checks come first ([`Fs::may_delete`], and what
    /// `what` asks of the victim), so a caller who may not remove the name
    /// breaks nobody's lease; an absent name is no error here (a rename's
    /// target may be absent; the operation reports its own `ENOENT`).
    fn freeing_guard(
        &self,
        cred: &Cred,
        dir: Node,
        name: &[u8],
        what: Victim,
    ) -> Result<Option<LayoutChangeGuard>> {
        let victim = {
            let st = self.state.read();
            let ino = match self.may_delete(&st, cred, dir, name) {
                Ok(ino) => ino,
                Err(e) if e.errno() == Errno::ENOENT => return Ok(None),
                Err(e) => return Err(e),
            };
            let i = st.inode(ino)?;
            match what {
                Victim::NonDir if i.is_dir() => return Err(Errno::EISDIR.into()),
                Victim::EmptyDir => match st.dirs.get(&ino) {
                    None => return Err(Errno::ENOTDIR.into()),
                    Some(d) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY.into()),
                    Some(_) => {}
                },
                _ => {}
            }
            let last = i.is_dir() || i.nlink == 1;
            if !last || st.in_use(ino) {
                return Ok(None);
            }
            Node {
                ino,
                generation: i.generation,
            }
        };
        self.layout_change(victim, ByteRange::WHOLE, cred.owner, false)
            .map(Some)
    }

    /// The checks of removing `name`'s entry from `dir` (Linux
    /// `may_delete`), in its order: search permission and existence, write
    /// permission on `dir`, the sticky bit (`EPERM`); returns the victim.
    fn may_delete(&self, st: &FsState, cred: &Cred, dir: Node, name: &[u8]) -> Result<u64> {
        let ino = st.entry(cred, dir, name)?;
        st.may(cred, dir.ino, MAY_WRITE | MAY_EXEC)?;
        if !sticky_allows(cred, st.inode(dir.ino)?, st.inode(ino)?) {
            return Err(Errno::EPERM.into());
        }
        Ok(ino)
    }

    /// `unlink(2)` of `name` in `dir`: any non-directory (`EISDIR`).
    pub fn unlink_in(&self, cred: Cred, dir: Node, name: &[u8]) -> Result<()> {
        if is_dot(name) {
            return Err(Errno::EISDIR.into());
        }
        check_name(name)?;
        self.writable()?;
        let _freeing = self.freeing_guard(&cred, dir, name, Victim::NonDir)?;
        let mut st = self.state.write();
        let ino = self.may_delete(&st, &cred, dir, name)?;
        if st.inode(ino)?.is_dir() {
            return Err(Errno::EISDIR.into());
        }
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.media);
        op.unlink_name(dir.ino, name)?;
        touch_dir(&mut op, dir.ino, now)?;
        drop_link(&mut op, ino, now)?;
        op.commit()
    }

    /// `rmdir(2)` of `name` in `dir`: an empty directory (`ENOTDIR`,
    /// `ENOTEMPTY`; `.` is `EINVAL`, `..` `ENOTEMPTY`).
    pub fn rmdir_in(&self, cred: Cred, dir: Node, name: &[u8]) -> Result<()> {
        match name {
            b"." => return Err(Errno::EINVAL.into()),
            b".." => return Err(Errno::ENOTEMPTY.into()),
            _ => check_name(name)?,
        }
        self.writable()?;
        let _freeing = self.freeing_guard(&cred, dir, name, Victim::EmptyDir)?;
        let mut st = self.state.write();
        let ino = self.may_delete(&st, &cred, dir, name)?;
        let d = st.dirs.get(&ino).ok_or(Errno::ENOTDIR)?;
        if !d.entries.is_empty() {
            return Err(Errno::ENOTEMPTY.into());
        }
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.media);
        op.unlink_name(dir.ino, name)?;
        touch_dir(&mut op, dir.ino, now)?;
        op.inode_mut(dir.ino)?.nlink -= 1;
        op.inode_mut(ino)?.nlink = 1;
        drop_link(&mut op, ino, now)?;
        op.commit()
    }

    /// `renameat2(2)`: move `name` of `dir` to `to_name` of `to_dir`,
    /// replacing a target of a compatible type (POSIX rules), or — with
    /// `flags.exchange` — swapping the two. Sticky directories guard both
    /// names; a directory moving to another parent needs write permission
    /// on itself (its `..` changes).
    pub fn rename_in(
        &self,
        cred: Cred,
        dir: Node,
        name: &[u8],
        to_dir: Node,
        to_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.noreplace && flags.exchange {
            return Err(Errno::EINVAL.into());
        }
        if is_dot(name) || is_dot(to_name) {
            return Err(Errno::EINVAL.into());
        }
        check_name(name)?;
        check_name(to_name)?;
        self.writable()?;
        {
            let st = self.state.read();
            // Two names of one file: POSIX says rename does nothing, and
            // Linux returns 0 once the lookups (search permission) found
            // one inode, before any other permission check (`vfs_rename`;
            // `RENAME_NOREPLACE` is `EEXIST` before that).
            if !flags.noreplace {
                if let (Ok(a), Ok(b)) =
                    (st.entry(&cred, dir, name), st.entry(&cred, to_dir, to_name))
                {
                    if a == b {
                        return Ok(());
                    }
                }
            }
            // The source's checks before any lease of the target is broken.
            self.may_delete(&st, &cred, dir, name)?;
        }
        let _freeing = if flags.exchange || (dir == to_dir && name == to_name) {
            None
        } else {
            self.freeing_guard(&cred, to_dir, to_name, Victim::Any)?
        };
        let mut st = self.state.write();
        let ino = self.may_delete(&st, &cred, dir, name)?;
        st.dir_node(to_dir)?;
        st.may(&cred, to_dir.ino, MAY_EXEC)?;
        let target = st
            .dirs
            .get(&to_dir.ino)
            .and_then(|d| d.entries.get(to_name))
            .map(|e| e.0);
        st.may(&cred, to_dir.ino, MAY_WRITE | MAY_EXEC)?;
        if let Some(t) = target {
            if !sticky_allows(&cred, st.inode(to_dir.ino)?, st.inode(t)?) {
                return Err(Errno::EPERM.into());
            }
        }
        let (fdir, tdir) = (dir.ino, to_dir.ino);
        let is_dir = st.inode(ino)?.is_dir();
        if is_dir && fdir != tdir {
            st.may(&cred, ino, MAY_WRITE)?;
        }
        if flags.noreplace && target.is_some() {
            return Err(Errno::EEXIST.into());
        }
        // Two names of one file: POSIX says rename does nothing.
        if target == Some(ino) {
            return Ok(());
        }
        if flags.exchange {
            let t = target.ok_or(Errno::ENOENT)?;
            return self.exchange_locked(&mut st, &cred, (fdir, name, ino), (tdir, to_name, t));
        }
        if is_dir {
            st.check_not_below(ino, tdir)?;
        }
        if let Some(t) = target {
            let t_dir = st.inode(t)?.is_dir();
            match (is_dir, t_dir) {
                (true, false) => return Err(Errno::ENOTDIR.into()),
                (false, true) => return Err(Errno::EISDIR.into()),
                (true, true) if !st.dirs[&t].entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY.into())
                }
                _ => {}
            }
        } else if is_dir && fdir != tdir && st.inode(tdir)?.nlink >= MAX_LINKS {
            return Err(Errno::EMLINK.into());
        }
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.media);
        if let Some(t) = target {
            op.unlink_name(tdir, to_name)?;
            if is_dir {
                op.inode_mut(tdir)?.nlink -= 1;
                op.inode_mut(t)?.nlink = 1;
            }
            drop_link(&mut op, t, now)?;
        }
        op.unlink_name(fdir, name)?;
        op.link(tdir, to_name, ino)?;
        if is_dir && fdir != tdir {
            op.inode_mut(fdir)?.nlink -= 1;
            op.inode_mut(tdir)?.nlink += 1;
            op.inode_mut(ino)?.parent = tdir;
        }
        op.inode_mut(ino)?.ctime_ns = now;
        touch_dir(&mut op, fdir, now)?;
        touch_dir(&mut op, tdir, now)?;
        op.commit()
    }

    /// `RENAME_EXCHANGE` of two existing entries (checked by the caller,
    /// except the rules that depend on both: neither directory moves below
    /// itself, write permission on a directory changing parent).
    fn exchange_locked(
        &self,
        st: &mut FsState,
        cred: &Cred,
        (fdir, name, a): (u64, &[u8], u64),
        (tdir, to_name, b): (u64, &[u8], u64),
    ) -> Result<()> {
        let (a_dir, b_dir) = (st.inode(a)?.is_dir(), st.inode(b)?.is_dir());
        if a_dir {
            st.check_not_below(a, tdir)?;
        }
        if b_dir {
            st.check_not_below(b, fdir)?;
            if fdir != tdir {
                st.may(cred, b, MAY_WRITE)?;
            }
        }
        if fdir != tdir && a_dir != b_dir {
            // The parent a directory moves into gains a `..` link: at
            // `MAX_LINKS` that is `EMLINK`, before anything changes.
            let gains = if a_dir { tdir } else { fdir };
            if st.inode(gains)?.nlink >= MAX_LINKS {
                return Err(Errno::EMLINK.into());
            }
        }
        let now = now_ns();
        let mut op = Op::new(st, &*self.media);
        op.unlink_name(fdir, name)?;
        op.unlink_name(tdir, to_name)?;
        op.link(fdir, name, b)?;
        op.link(tdir, to_name, a)?;
        if fdir != tdir && a_dir != b_dir {
            // One directory moves each way: the parents' `..` counts follow.
            let (gains, loses) = if a_dir { (tdir, fdir) } else { (fdir, tdir) };
            op.inode_mut(gains)?.nlink += 1;
            op.inode_mut(loses)?.nlink -= 1;
        }
        if a_dir {
            op.inode_mut(a)?.parent = tdir;
        }
        if b_dir {
            op.inode_mut(b)?.parent = fdir;
        }
        op.inode_mut(a)?.ctime_ns = now;
        op.inode_mut(b)?.ctime_ns = now;
        touch_dir(&mut op, fdir, now)?;
        touch_dir(&mut op, tdir, now)?;
        op.commit()
    }

    /// The entries of `dir`, sorted by name, without `.` and `..` (read
    /// permission on `dir`).
    pub fn readdir_node(&self, cred: Cred, dir: Node) -> Result<Vec<DirEntry>> {
        let st = self.state.read();
        st.dir_node(dir)?;
        st.may(&cred, dir.ino, MAY_READ)?;
        let mut out: Vec<DirEntry> = st.dirs[&dir.ino]
            .entries
            .iter()
            .map(|(name, &(ino, _))| {
                let kind = st.inodes.get(&ino).map_or(0, |i| i.mode & S_IFMT);
                DirEntry {
                    name: name.to_vec(),
                    ino,
                    is_dir: kind == S_IFDIR,
                    kind,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `setattr(2)`: change what `attr` names, with the caller's rights
    /// (Linux `setattr_prepare` and `notify_change`):
    /// - `mode`: owner or root (`EPERM`); a caller other than root not in
    ///   the file's group loses `S_ISGID`; anyone with write permission may
    ///   clear `S_ISUID`/`S_ISGID` and change nothing else (how the kernel's
    ///   FUSE sends the set-id clearing of a non-owner's truncate);
    /// - `uid`: root, or the owner "changing" it to itself; `gid`: root, or
    ///   the owner changing it to one of its groups (`EPERM`); either clears
    ///   `S_ISUID` (and `S_ISGID` with group-execute) of a non-directory;
    /// - `size`: like `truncate(2)` by path — write permission (`EACCES`),
    ///   `EISDIR`/`EINVAL` for a directory/non-regular file; breaks open
    ///   leases and layout leases; a caller other than root clears the
    ///   set-id bits;
    /// - times: both set to now needs the owner, root or write permission
    ///   (`EACCES`); any other time set (explicit, or one now with the
    ///   other left alone) the owner or root (`EPERM`), as in Linux;
    /// - `ctime_ns`: taken from the owner or root only; alone, from anyone
    ///   else, `EPERM`; with another permitted change, the change time
    ///   becomes now instead.
    ///
    /// Any change sets the change time.
    pub fn setattr(&self, cred: Cred, node: Node, attr: &SetAttr) -> Result<Stat> {
        self.setattr_via(cred, node, attr, None)
    }

    /// [`Fs::setattr`], through an open handle when `handle` is given: its
    /// size change is `ftruncate` (the handle must be writable: `EINVAL`;
    /// no open-lease break, as `ftruncate` breaks none).
    pub(super) fn setattr_via(
        &self,
        cred: Cred,
        node: Node,
        attr: &SetAttr,
        handle: Option<&Handle>,
    ) -> Result<Stat> {
        self.writable()?;
        {
            let st = self.state.read();
            let i = st.node(node)?;
            self.check_setattr(&st, &cred, i, attr, handle.is_some())?;
        }
        if let Some(size) = attr.size {
            match handle {
                Some(h) => {
                    if !h.flags.write {
                        return Err(Errno::EINVAL.into());
                    }
                    self.truncate_inode(node, size, &cred, h.flags.nonblocking, None)?;
                }
                None => self.truncate_node(cred, node, size)?,
            }
        }
        let only_size = *attr
            == SetAttr {
                size: attr.size,
                ..SetAttr::default()
            };
        if only_size {
            // Truncate set the times and cleared the set-id bits. An empty
            // request changes nothing at all.
            return self.getattr(node);
        }
        let mut st = self.state.write();
        let i = st.node(node)?;
        let mut rest = *attr;
        if let Some(m) = attr.mode {
            // A non-owner's set-id clearing that came with the size (how
            // FUSE sends a truncate's): the truncate cleared them already,
            // leaving no change that needs the owner.
            let owner = cred.uid == 0 || cred.uid == i.uid;
            if !owner && attr.size.is_some() && i.mode & 0o7777 == m & 0o7777 {
                rest.mode = None;
            }
        }
        let attr = &rest;
        // Checked again under the lock that applies them: the file may have
        // changed hands meanwhile.
        self.check_setattr(
            &st,
            &cred,
            i,
            &SetAttr {
                size: None,
                ..*attr
            },
            true,
        )?;
        // Whether the given change time is taken (owner or root, looked at
        // before an owner change).
        let ctime_by_owner = cred.uid == 0 || cred.uid == i.uid;
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.media);
        let i = op.inode_mut(node.ino)?;
        let kind = i.mode & S_IFMT;
        if let Some(u) = attr.uid {
            i.uid = u;
        }
        if let Some(g) = attr.gid {
            i.gid = g;
        }
        if let Some(m) = attr.mode {
            let mut m = m & 0o7777;
            if cred.uid != 0 && !cred.in_group(i.gid) {
                m &= !S_ISGID;
            }
            i.mode = kind | m;
        }
        if (attr.uid.is_some() || attr.gid.is_some()) && kind != S_IFDIR {
            let mut kill = S_ISUID;
            if i.mode & S_IXGRP != 0 {
                kill |= S_ISGID;
            }
            i.mode &= !kill;
        }
        if attr.size.is_some() {
            i.mode &= !privs_to_kill(&cred, i.mode);
        }
        let time = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::Ns(ns) => ns,
        };
        if let Some(t) = attr.atime {
            i.atime_ns = time(t);
        }
        if let Some(t) = attr.mtime {
            i.mtime_ns = time(t);
        }
        i.ctime_ns = match attr.ctime_ns {
            Some(ctime) if ctime_by_owner => ctime,
            _ => now,
        };
        op.commit()?;
        if attr.mtime.is_some() {
            // The time set replaces the one in-place writes left in the
            // runtime (under the write lock: no in-place write runs), or a
            // later stat and fsync would show the write's time again.
            if let Some(rt) = st.runtime.get(&node.ino) {
                rt.lazy_mtime_ns.store(0, Ordering::Relaxed);
            }
        }
        st.stat(node.ino)
    }

    /// The permission rules of [`Fs::setattr`] (documented there).
    fn check_setattr(
        &self,
        st: &FsState,
        cred: &Cred,
        i: &Inode,
        attr: &SetAttr,
        via_handle: bool,
    ) -> Result<()> {
        let root = cred.uid == 0;
        let owner = root || cred.uid == i.uid;
        if attr.size.is_some() {
            match i.mode & S_IFMT {
                S_IFREG => {}
                S_IFDIR => return Err(Errno::EISDIR.into()),
                _ => return Err(Errno::EINVAL.into()),
            }
            if !via_handle {
                st.may(cred, i.ino, MAY_WRITE)?;
            }
        }
        if let Some(m) = attr.mode {
            if !owner {
                // A non-owner may only clear the set-id bits, and only as a
                // writer: the kernel's FUSE (without `HANDLE_KILLPRIV`)
                // sends the set-id clearing of a truncate, `O_TRUNC` or
                // fallocate by a non-owner as a mode change, which Linux's
                // `file_remove_privs` grants to anyone who may write.
                if !clears_only_set_id(i.mode, m) {
                    return Err(Errno::EPERM.into());
                }
                if st.may(cred, i.ino, MAY_WRITE).is_err() {
                    return Err(Errno::EPERM.into());
                }
            }
        }
        if let Some(u) = attr.uid {
            if !(root || cred.uid == i.uid && u == i.uid) {
                return Err(Errno::EPERM.into());
            }
        }
        if let Some(g) = attr.gid {
            if !(root || cred.uid == i.uid && (g == i.gid || cred.in_group(g))) {
                return Err(Errno::EPERM.into());
            }
        }
        // Both "now" (`utimes(NULL)`, `touch`): the owner, root or a
        // writer (`EACCES`). Any other time set — explicit, or one "now"
        // with the other left alone (`touch -a`) — the owner or root only
        // (`EPERM`), as Linux decides (`setattr_prepare`; checked on tmpfs:
        // `setpriv --reuid=65534 touch -a` of a 0666 file is refused).
        if (attr.atime.is_some() || attr.mtime.is_some()) && !owner {
            if attr.atime == Some(TimeSet::Now) && attr.mtime == Some(TimeSet::Now) {
                st.may(cred, i.ino, MAY_WRITE)?;
            } else {
                return Err(Errno::EPERM.into());
            }
        }
        // The change time alone: the owner or root. Linux never lets a
        // process set it; FUSE sends it only along with another change, and
        // for a caller other than the owner or root the time given is not
        // taken (the change sets it to now, see `setattr_via`).
        let ctime_alone = *attr
            == SetAttr {
                ctime_ns: attr.ctime_ns,
                ..SetAttr::default()
            };
        if attr.ctime_ns.is_some() && ctime_alone && !owner {
            return Err(Errno::EPERM.into());
        }
        Ok(())
    }

    /// `truncate(2)` of `node`: breaks every open lease (by removal), then
    /// changes the layout; one deadline for the lease breaks and the wait
    /// for pins, `fail` refusing before any of them waits (SPEC §4.3).
    fn truncate_node(&self, cred: Cred, node: Node, size: u64) -> Result<()> {
        let key = file_key(node.ino, node.generation);
        let removed = size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let bound = self.pins_before_break(node, removed, u64::MAX, cred.owner)?;
        self.leases.break_for_truncate(
            key,
            OwnerId(cred.owner),
            &BreakOptions::blocking().until(bound),
        )?;
        // `truncate_inode` checks the node on each pass and under the lock
        // of its commit: it must still be the file whose leases were broken.
        self.truncate_inode(node, size, &cred, false, Some(bound))
    }

    /// Clear the set-id bits a write or truncate by `cred` removes (see
    /// [`privs_to_kill`]); nothing to do (no lock taken exclusively, no
    /// commit) in the common case.
    pub(super) fn kill_privs(&self, cred: &Cred, node: Node) -> Result<()> {
        if cred.uid == 0 || privs_to_kill(cred, self.state.read().node(node)?.mode) == 0 {
            return Ok(());
        }
        let mut st = self.state.write();
        let ino = node.ino;
        let kill = privs_to_kill(cred, st.node(node)?.mode);
        if kill == 0 {
            return Ok(());
        }
        let mut op = Op::new(&mut st, &*self.media);
        let i = op.inode_mut(ino)?;
        i.mode &= !kill;
        i.ctime_ns = now_ns();
        op.commit()
    }

    /// Test-only negative control: node functions accept a node whatever
    /// the generation of its slot, so a test can show that a stale node
    /// would then reach the file that reused the slot.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn skip_generation_check_for_tests(&self) {
        self.state.write().check_generation = false;
    }
}

impl Handle {
    /// The object this handle has open.
    pub fn node(&self) -> Node {
        Node {
            ino: self.ino,
            generation: self.generation,
        }
    }

    /// `fchmod`/`fchown`/`futimens`/`ftruncate`: [`Fs::setattr`] with the
    /// opener's credentials; a size change needs the handle open for
    /// writing (`EINVAL`) rather than write permission.
    pub fn setattr(&self, attr: &SetAttr) -> Result<Stat> {
        self.fs
            .setattr_via(self.cred, self.node(), attr, Some(self))
    }
}
