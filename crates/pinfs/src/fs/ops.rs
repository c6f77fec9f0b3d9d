//! Operations on open files: reads, writes and the layout changes truncate,
//! reflink and copy-on-write (the fallocate family is in `falloc.rs`), and
//! the staging helpers they share.
//!
//! Two rules keep data safe here:
//! - *Fresh blocks never show old data*: a block enters a file only zeroed,
//!   fully written, copied from the block it replaces, or unwritten (which
//!   reads as zeros); and those bytes are durable before the transaction that
//!   maps the block commits.
//! - *Bytes past end of file are never trusted*: truncate down leaves the tail
//!   of the last block alone until the size commits, so every operation that
//!   grows a file zeroes `[old size, end of that block)` first
//!   ([`zero_eof_tail`]).
//!
//! And three rules keep operations honest:
//! - *Limits refuse before anything is visible*: the staged inode passes the
//!   mount-time validation's limits before any data is written in place
//!   (`Op::validate_limits`), and the whole validation before commit, so an
//!   operation past 2^50 bytes or 32,768 extents fails with `EFBIG` and
//!   changes nothing; a `pwrite` crossing 2^50 bytes writes up to it.
//! - *A change that changes nothing is no layout change*
//!   (`falloc_changes_nothing`, truncate to the same size, an empty clone):
//!   no lease break, no copy, no allocation; timestamps only.
//! - *Zero range leaves its whole block range allocated*, the partial blocks
//!   at its edges included.

use std::sync::atomic::Ordering;

use super::extent::{Extent, Segment};
use super::state::{FsState, Op};
use super::{now_ns, Cred, FiemapExtent, Fs, Handle, Node, Stat};
use crate::alloc::Run;
use crate::format::{block_offset, BLOCK_SIZE, MAX_FILE_BYTES};
use crate::lease::{BreakDeadline, ByteRange, HandleId};
use crate::media::Media;
use crate::{Errno, Result};

/// Where the bytes of a write come from.
#[derive(Clone, Copy)]
pub(super) enum Source<'d> {
    Bytes(&'d [u8]),
    Zeros,
    /// The file's current contents: makes a range written and private
    /// (allocating holes zeroed, converting unwritten, copying shared
    /// blocks) without changing what it reads as — what a long-term pin
    /// needs before a device may write to the blocks.
    Keep,
}

impl Source<'_> {
    /// Write `len` bytes of the source, starting `at` bytes into it, to the pool.
    fn put(&self, media: &dyn Media, pool_offset: u64, at: u64, len: u64) -> Result<()> {
        match self {
            Source::Bytes(b) => media.write(pool_offset, &b[at as usize..(at + len) as usize]),
            Source::Zeros => media.fill(pool_offset, len, 0),
            Source::Keep => Ok(()),
        }
    }
}

/// Byte range of block range `logical..logical+len`.
pub(super) fn bytes_of(logical: u64, len: u64) -> (u64, u64) {
    (logical * BLOCK_SIZE, (logical + len) * BLOCK_SIZE)
}

/// Copy into the pool blocks `physical..physical+n` (mapped at file block
/// `logical`) the part of `[offset, end)` they cover from `src`; the rest of
/// those blocks is copied from `old` (copy-on-write) or zeroed (fresh blocks).
fn fill_blocks(
    op: &mut Op<'_>,
    logical: u64,
    physical: u64,
    n: u64,
    (offset, end): (u64, u64),
    src: Source<'_>,
    old: Option<u64>,
) -> Result<()> {
    let media = op.media;
    let (bstart, bend) = bytes_of(logical, n);
    let cstart = offset.max(bstart);
    let cend = end.min(bend);
    let pool = block_offset(physical);
    let edge = |from: u64, to: u64| -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let at = pool + (from - bstart);
        match old {
            Some(o) => {
                let mut buf = vec![0u8; (to - from) as usize];
                media.read(block_offset(o) + (from - bstart), &mut buf)?;
                media.write(at, &buf)
            }
            None => media.fill(at, to - from, 0),
        }
    };
    edge(bstart, cstart.min(bend))?;
    edge(cend.max(bstart), bend)?;
    if cstart < cend {
        match src {
            // Keeping what the file reads as: the old block's bytes, or
            // zeros for a fresh or unwritten block — never the stale
            // contents of whatever the block held before.
            Source::Keep => edge(cstart, cend)?,
            _ => src.put(
                media,
                pool + (cstart - bstart),
                cstart - offset,
                cend - cstart,
            )?,
        }
    }
    op.tx.data_written(pool, n * BLOCK_SIZE);
    Ok(())
}

/// The pool block right after file block `logical - 1`'s, to keep files
/// contiguous.
fn goal_for(op: &Op<'_>, ino: u64, logical: u64) -> Result<Option<u64>> {
    Ok(op.inode(ino)?.extents.goal(logical))
}

/// Write `[offset, offset+len)` of file `ino` from `src`: in place where the
/// blocks are written and unshared, into fresh blocks for holes, converting
/// unwritten blocks, copying shared blocks first (copy-on-write).
///
/// In two passes: first everything that changes the block map (holes,
/// copies, conversions — their bytes go to blocks no reader sees until the
/// commit), then, once the staged inode has passed the mount-time
/// validation's limits ([`Op::validate_limits`]: `EFBIG`), the in-place
/// writes, which a rollback could not undo. So a write refused for a limit
/// changes nothing.
pub(super) fn write_range(
    op: &mut Op<'_>,
    ino: u64,
    offset: u64,
    len: u64,
    src: Source<'_>,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let end = offset + len;
    let range = (offset, end);
    let segs = op
        .inode(ino)?
        .extents
        .segments(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
    let mut in_place = Vec::new();
    for seg in segs {
        match seg {
            Segment::Hole { logical, len: n } => {
                allocate_hole(op, ino, logical, n, false, |op, l, r| {
                    fill_blocks(op, l, r.start, r.len, range, src, None)
                })?;
            }
            Segment::Mapped {
                logical,
                physical,
                len: n,
                unwritten,
            } => {
                // Split by sharing: shared blocks (written or not) are never
                // changed in place; the write goes to a private copy.
                let mut i = 0;
                while i < n {
                    let shared = op.refcount(physical + i) > 1;
                    let mut k = 1;
                    while i + k < n && (op.refcount(physical + i + k) > 1) == shared {
                        k += 1;
                    }
                    let (l, p) = (logical + i, physical + i);
                    if shared {
                        op.inode_mut(ino)?.extents.unmap(l, l + k);
                        op.decref(p, k);
                        allocate_hole(op, ino, l, k, false, |op, at, r| {
                            let old = (!unwritten).then_some(p + (at - l));
                            fill_blocks(op, at, r.start, r.len, range, src, old)
                        })?;
                    } else if unwritten {
                        fill_blocks(op, l, p, k, range, src, None)?;
                        op.inode_mut(ino)?.extents.set_written(l, l + k);
                    } else {
                        in_place.push((l, p, k));
                    }
                    i += k;
                }
            }
        }
    }
    if in_place.is_empty() {
        return Ok(());
    }
    op.validate_limits()?;
    for (l, p, k) in in_place {
        let (bstart, bend) = bytes_of(l, k);
        let (cstart, cend) = (offset.max(bstart), end.min(bend));
        let pool = block_offset(p) + (cstart - bstart);
        src.put(op.media, pool, cstart - offset, cend - cstart)?;
        op.tx.data_written(pool, cend - cstart);
    }
    Ok(())
}

/// Zero the written blocks' bytes in `[offset, offset+len)`, leaving holes
/// and unwritten blocks alone (they read as zeros already).
fn zero_existing(op: &mut Op<'_>, ino: u64, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let end = offset + len;
    let segs = op
        .inode(ino)?
        .extents
        .segments(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
    for seg in segs {
        if let Segment::Mapped {
            logical,
            len: n,
            unwritten: false,
            ..
        } = seg
        {
            let (bstart, bend) = bytes_of(logical, n);
            let from = offset.max(bstart);
            write_range(op, ino, from, end.min(bend) - from, Source::Zeros)?;
        }
    }
    Ok(())
}

/// Before a file grows past its size: zero the stale bytes between the old
/// end of file and the end of its last block.
pub(super) fn zero_eof_tail(op: &mut Op<'_>, ino: u64) -> Result<()> {
    let size = op.inode(ino)?.size;
    let tail = size % BLOCK_SIZE;
    if tail != 0 {
        zero_existing(op, ino, size, BLOCK_SIZE - tail)?;
    }
    Ok(())
}

/// Unmap file blocks `start..end` and drop their references.
pub(super) fn unmap_blocks(op: &mut Op<'_>, ino: u64, start: u64, end: u64) -> Result<()> {
    for (_, e) in op.inode_mut(ino)?.extents.unmap(start, end) {
        op.decref(e.physical, e.len);
    }
    Ok(())
}

/// Allocate unwritten blocks in the holes of file blocks `start..end`.
pub(super) fn allocate_unwritten(op: &mut Op<'_>, ino: u64, start: u64, end: u64) -> Result<()> {
    let segs = op.inode(ino)?.extents.segments(start, end);
    for seg in segs {
        if let Segment::Hole { logical, len } = seg {
            allocate_hole(op, ino, logical, len, true, |_, _, _| Ok(()))?;
        }
    }
    Ok(())
}

/// Allocate blocks for the hole at file blocks `logical..logical+n` of
/// `ino`, placed after the file's previous block where possible, and map
/// them (`unwritten` or written); `prepare(op, first file block, run)`
/// fills each run before it is mapped.
fn allocate_hole(
    op: &mut Op<'_>,
    ino: u64,
    logical: u64,
    n: u64,
    unwritten: bool,
    mut prepare: impl FnMut(&mut Op<'_>, u64, Run) -> Result<()>,
) -> Result<()> {
    let goal = goal_for(op, ino, logical)?;
    let mut l = logical;
    for r in op.alloc(n, goal)? {
        prepare(op, l, r)?;
        op.inode_mut(ino)?.extents.map(
            l,
            Extent {
                physical: r.start,
                len: r.len,
                unwritten,
            },
        );
        l += r.len;
    }
    Ok(())
}

/// How a write of `[offset, end)` reaches the file.
enum WritePlan {
    /// Every block written, unshared, inside the file: copy in place into
    /// these segments.
    InPlace(Vec<Segment>),
    /// Only unwritten blocks to convert: not a layout change (SPEC §2).
    Convert,
    /// Allocation into holes, unsharing, or growth: a layout change of this range.
    Layout(ByteRange),
}

fn write_plan(st: &FsState, ino: u64, offset: u64, end: u64) -> Result<WritePlan> {
    let inode = st.inode(ino)?;
    if inode.is_dir() {
        return Err(Errno::EISDIR.into());
    }
    if st.shut_down {
        return Err(Errno::EIO.into());
    }
    if end > inode.size {
        return Ok(WritePlan::Layout(ByteRange::to_eof(offset.min(inode.size))));
    }
    let segs = inode
        .extents
        .segments(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
    let mut convert = false;
    for &seg in &segs {
        match seg {
            Segment::Hole { .. } => return Ok(WritePlan::Layout(ByteRange::new(offset, end))),
            Segment::Mapped {
                physical,
                len,
                unwritten,
                ..
            } => {
                // One lookup in the shared runs, not one per block.
                if st.shared.overlaps(physical, len) {
                    return Ok(WritePlan::Layout(ByteRange::new(offset, end)));
                }
                convert |= unwritten;
            }
        }
    }
    Ok(if convert {
        WritePlan::Convert
    } else {
        WritePlan::InPlace(segs)
    })
}

impl Handle {
    /// The lease engine's name for the open file.
    pub fn lease_file(&self) -> crate::lease::FileKey {
        self.key
    }

    /// The lease engine's name for this open file description.
    pub fn lease_handle(&self) -> HandleId {
        HandleId(self.id)
    }

    /// The file system.
    pub fn fs(&self) -> &std::sync::Arc<Fs> {
        &self.fs
    }

    /// Inode number of the open file.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// This open file description's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The flags it was opened with.
    pub fn flags(&self) -> super::OpenFlags {
        self.flags
    }

    /// Who opened it.
    pub fn cred(&self) -> super::Cred {
        self.cred
    }

    /// `F_SETLEASE` (with `F_LAYOUT`/`F_EXCLUSIVE` for layout leases) on
    /// this open file, held by its owner: [`crate::lease::LeaseEngine::set_lease`]
    /// after the permission check the engine cannot make — only the file's
    /// owner, or uid 0 (`CAP_LEASE`), may set or release a lease on it
    /// (`EACCES`, SPEC §10), as Linux's `generic_setlease`.
    pub fn set_lease(&self, req: crate::lease::LeaseRequest) -> Result<crate::lease::LeaseId> {
        if self.cred.uid != 0 {
            let owner_uid = self.fs.state.read().inode(self.ino)?.uid;
            if owner_uid != self.cred.uid {
                return Err(Errno::EACCES.into());
            }
        }
        Ok(self.fs.leases().set_lease(
            self.key,
            self.lease_handle(),
            crate::lease::OwnerId(self.cred.owner),
            req,
        )?)
    }

    /// `F_GETLEASE`: the handle's open lease type (the target type while a
    /// break is pending).
    pub fn get_lease(&self) -> crate::lease::LeaseType {
        self.fs.leases().get_lease(self.key, self.lease_handle())
    }

    pub(super) fn need_write(&self) -> Result<()> {
        if self.flags.write {
            Ok(())
        } else {
            Err(Errno::EBADF.into())
        }
    }

    /// Read up to `buf.len()` bytes at `offset`; returns the bytes read (0 at
    /// or past end of file).
    pub fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if !self.flags.read {
            return Err(Errno::EBADF.into());
        }
        let st = self.fs.state.read();
        let inode = st.inode(self.ino)?;
        if inode.is_dir() {
            return Err(Errno::EISDIR.into());
        }
        if offset >= inode.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (inode.size - offset).min(buf.len() as u64);
        let end = offset + n;
        let media = &*self.fs.media;
        for seg in inode
            .extents
            .segments(offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE))
        {
            let (bstart, bend) = bytes_of(seg.logical(), seg.len());
            let (from, to) = (offset.max(bstart), end.min(bend));
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match seg {
                Segment::Mapped {
                    physical,
                    unwritten: false,
                    ..
                } => {
                    media.read(block_offset(physical) + (from - bstart), dst)?;
                }
                _ => dst.fill(0),
            }
        }
        Ok(n as usize)
    }

    /// Write `data` at `offset`; returns the bytes written: `data.len()`,
    /// or fewer when the write would cross the largest file size
    /// (`MAX_FILE_BYTES`), where it stops, as Linux does; `EFBIG` when
    /// `offset` is at or past it.
    pub fn pwrite(&self, offset: u64, data: &[u8]) -> Result<usize> {
        self.need_write()?;
        if data.is_empty() {
            return Ok(0);
        }
        let room = MAX_FILE_BYTES
            .checked_sub(offset)
            .filter(|&r| r > 0)
            .ok_or(Errno::EFBIG)?;
        let data = &data[..data.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        let len = data.len() as u64;
        let end = offset + len;
        let _direct = self.fs.break_direct_for_write(
            self.ino,
            offset,
            end,
            self.cred.owner,
            self.flags.nonblocking,
        )?;
        let mut guard = None;
        let mut st = loop {
            {
                // Fast path: every block written, unshared and inside the
                // file — no layout change, so a shared lock and a copy into
                // the pool suffice.
                let st = self.fs.state.read();
                // A write by anyone but root drops the set-id bits first
                // (Linux `file_remove_privs`): looked at under the lock the
                // write takes anyway, cleared (a commit) only when set.
                if super::node::privs_to_kill(&self.cred, st.inode(self.ino)?.mode) != 0 {
                    drop(st);
                    self.fs.kill_privs(&self.cred, self.node())?;
                    continue;
                }
                match write_plan(&st, self.ino, offset, end)? {
                    WritePlan::InPlace(segs) => {
                        return self.write_in_place(&st, &segs, offset, data)
                    }
                    WritePlan::Layout(range) if guard.is_none() => {
                        drop(st);
                        guard = Some(self.fs.layout_change(
                            self.node(),
                            range,
                            self.cred.owner,
                            self.flags.nonblocking,
                        )?);
                        continue;
                    }
                    _ => {}
                }
            }
            let st = self.fs.state.write();
            // The file may have changed while no lock was held.
            match write_plan(&st, self.ino, offset, end)? {
                WritePlan::Layout(_) if guard.is_none() => continue,
                _ => break st,
            }
        };
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.fs.media);
        if offset > op.inode(self.ino)?.size {
            zero_eof_tail(&mut op, self.ino)?;
        }
        write_range(&mut op, self.ino, offset, len, Source::Bytes(data))?;
        let i = op.inode_mut(self.ino)?;
        i.size = i.size.max(end);
        i.mtime_ns = now;
        i.ctime_ns = now;
        op.commit()?;
        Ok(data.len())
    }

    /// The in-place write of the fast path (see [`write_plan`]).
    fn write_in_place(
        &self,
        st: &FsState,
        segs: &[Segment],
        offset: u64,
        data: &[u8],
    ) -> Result<usize> {
        let end = offset + data.len() as u64;
        let media = &*self.fs.media;
        let rt = st.runtime.get(&self.ino).ok_or(Errno::EBADF)?;
        for &seg in segs {
            let (bstart, bend) = bytes_of(seg.logical(), seg.len());
            let (from, to) = (offset.max(bstart), end.min(bend));
            if let Segment::Mapped { physical, .. } = seg {
                let pool = block_offset(physical) + (from - bstart);
                media.write(
                    pool,
                    &data[(from - offset) as usize..(to - offset) as usize],
                )?;
                rt.note_dirty(media, pool, to - from)?;
            }
        }
        rt.lazy_mtime_ns.fetch_max(now_ns(), Ordering::Relaxed);
        Ok(data.len())
    }

    /// Set the size: blocks past the new end of file are freed.
    pub fn truncate(&self, size: u64) -> Result<()> {
        self.setattr(&super::SetAttr {
            size: Some(size),
            ..Default::default()
        })
        .map(drop)
    }

    /// Truncate without the handle's access check (`O_TRUNC` on open, which
    /// checked write permission itself); the set-id bits the opener may
    /// not keep go in the same commit.
    pub(super) fn truncate_unchecked(&self, size: u64) -> Result<()> {
        self.fs
            .truncate_inode(self.node(), size, &self.cred, self.flags.nonblocking, None)
    }

    /// Clone `src` (or `src_offset..+len` of it, to `dst_offset`) into this
    /// file, sharing blocks; later writes to either copy them first.
    /// Offsets must be block-aligned; `len` too unless the range ends at the
    /// end of `src` and reaches the end of this file.
    pub fn reflink(&self, src: &Handle, range: Option<(u64, u64, u64)>) -> Result<()> {
        self.need_write()?;
        if !src.flags.read {
            return Err(Errno::EBADF.into());
        }
        if !std::sync::Arc::ptr_eq(&self.fs, &src.fs) {
            return Err(Errno::EXDEV.into());
        }
        // Both files' layouts change: the destination's block map, and which
        // of the source's blocks are shared.
        let (src_size, dst_size) = {
            let st = self.fs.state.read();
            (st.inode(src.ino)?.size, st.inode(self.ino)?.size)
        };
        let (so, dof, len) = match range {
            None => (0, 0, src_size),
            Some((s, d, 0)) => (s, d, src_size.saturating_sub(s)),
            Some(r) => r,
        };
        if len == 0 && so <= src_size {
            // Nothing to clone: no layout change of either file.
            return Ok(());
        }
        if dof.checked_add(len).is_none_or(|e| e > MAX_FILE_BYTES) {
            return Err(Errno::EFBIG.into());
        }
        self.fs.writable()?;
        let dst_range = match dof.checked_add(len) {
            Some(e) if e <= dst_size && len > 0 => ByteRange::new(dof, e),
            _ => ByteRange::to_eof(dof.min(dst_size)),
        };
        let src_range = ByteRange::new(so, so.saturating_add(len.max(1)));
        let (owner, nb) = (self.cred.owner, self.flags.nonblocking);
        // Pinned blocks the destination loses follow the policy; pinned
        // source blocks are copied, never shared (a device writing to a
        // shared block would change the other file).
        let dst_blocks = (
            dst_range.start / BLOCK_SIZE * BLOCK_SIZE,
            dst_range.end.saturating_add(BLOCK_SIZE - 1) / BLOCK_SIZE * BLOCK_SIZE,
        );
        // One bound for the whole operation (SPEC §3.3.5): both lease
        // breaks and the wait for pins share it.
        let bound = self
            .fs
            .pins_before_break(self.node(), dst_blocks.0, dst_blocks.1, owner)?;
        let _dst_layout = self
            .fs
            .layout_change_until(self.node(), dst_range, owner, nb, bound)?;
        let _src_layout = self
            .fs
            .layout_change_until(src.node(), src_range, owner, nb, bound)?;
        self.fs
            .pins_after_break(self.node(), dst_blocks.0, dst_blocks.1, bound)?;
        let mut st = self.fs.state.write();
        let src_inode = st.inode(src.ino)?;
        if !src_inode.is_reg() {
            return Err(Errno::EINVAL.into());
        }
        let src_size = src_inode.size;
        let dst_size = st.inode(self.ino)?.size;
        let (src_off, dst_off, len) = match range {
            None => (0, 0, src_size),
            Some((s, d, 0)) => (s, d, src_size.saturating_sub(s)),
            Some(r) => r,
        };
        let src_end = src_off.checked_add(len).ok_or(Errno::EINVAL)?;
        let dst_end = dst_off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(Errno::EFBIG)?;
        if !src_off.is_multiple_of(BLOCK_SIZE)
            || !dst_off.is_multiple_of(BLOCK_SIZE)
            || src_end > src_size
        {
            return Err(Errno::EINVAL.into());
        }
        if !(len.is_multiple_of(BLOCK_SIZE) || (src_end == src_size && dst_end >= dst_size)) {
            return Err(Errno::EINVAL.into());
        }
        if src.ino == self.ino && src_off < dst_end && dst_off < src_end {
            return Err(Errno::EINVAL.into());
        }
        if len == 0 {
            return Ok(());
        }
        let now = now_ns();
        // Pages write-protected before their blocks are shared
        // (`split_held`): re-placed again if the reflink fails.
        let mut protected = Vec::new();
        let mut op = Op::new(&mut st, &*self.fs.media);
        let ino = self.ino;
        let staged = (|| -> Result<()> {
            if dst_off > dst_size {
                zero_eof_tail(&mut op, ino)?;
            }
            let nblocks = len.div_ceil(BLOCK_SIZE);
            let (sb, db) = (src_off / BLOCK_SIZE, dst_off / BLOCK_SIZE);
            let segs = op.inode(src.ino)?.extents.segments(sb, sb + nblocks);
            unmap_blocks(&mut op, ino, db, db + nblocks)?;
            for seg in segs {
                if let Segment::Mapped {
                    logical,
                    physical,
                    len: n,
                    unwritten,
                } = seg
                {
                    let at = db + (logical - sb);
                    let whole = Run {
                        start: physical,
                        len: n,
                    };
                    let (mut pinned, pin_free) = if op.st.protect_pinned {
                        op.st.pins.split(whole)
                    } else {
                        (Vec::new(), vec![whole])
                    };
                    // Blocks a broken mapping may still reach are copied like
                    // pinned ones: a stuck page is a writer nobody can stop.
                    let mut shareable = Vec::new();
                    for r in pin_free {
                        let (held, free) =
                            super::mmap::split_held(op.st, op.media, src.ino, r, &mut protected);
                        pinned.extend(held);
                        shareable.extend(free);
                    }
                    for r in shareable {
                        op.incref(r.start, r.len)?;
                        let e = Extent {
                            physical: r.start,
                            len: r.len,
                            unwritten,
                        };
                        op.inode_mut(ino)?.extents.map(at + (r.start - physical), e);
                    }
                    for r in pinned {
                        // A copy: fresh blocks with the pinned blocks' contents.
                        let l = at + (r.start - physical);
                        let mut done = 0;
                        for fresh in op.alloc(r.len, None)? {
                            let mut buf = vec![0u8; (fresh.len * BLOCK_SIZE) as usize];
                            op.media.read(block_offset(r.start + done), &mut buf)?;
                            op.media.write(block_offset(fresh.start), &buf)?;
                            op.tx
                                .data_written(block_offset(fresh.start), fresh.len * BLOCK_SIZE);
                            let e = Extent {
                                physical: fresh.start,
                                len: fresh.len,
                                unwritten,
                            };
                            op.inode_mut(ino)?.extents.map(l + done, e);
                            done += fresh.len;
                        }
                    }
                }
            }
            let i = op.inode_mut(ino)?;
            i.size = i.size.max(dst_end);
            i.mtime_ns = now;
            i.ctime_ns = now;
            Ok(())
        })();
        let result = match staged {
            Ok(()) => op.commit(),
            Err(e) => {
                drop(op);
                Err(e)
            }
        };
        if result.is_err() && !protected.is_empty() {
            super::mmap::unprotect(&st, &*self.fs.media, protected);
        }
        result
    }

    /// Make the file's data and metadata durable.
    pub fn fsync(&self) -> Result<()> {
        let mut st = self.fs.state.write();
        if st.shut_down {
            // As on a kernel file system that shut down: nothing more is
            // made durable.
            return Err(Errno::EIO.into());
        }
        let media = &*self.fs.media;
        let rt = st.runtime(self.ino);
        let ranges: Vec<(u64, u64)> = std::mem::take(&mut *rt.dirty.lock());
        for (o, l) in ranges {
            media.flush(o, l)?;
        }
        super::mmap::flush_mappings(&st, media, self.ino)?;
        media.fence();
        let lazy = rt.lazy_mtime_ns.load(Ordering::Relaxed);
        if lazy > st.inode(self.ino)?.mtime_ns {
            let mut op = Op::new(&mut st, media);
            let i = op.inode_mut(self.ino)?;
            i.mtime_ns = lazy;
            i.ctime_ns = i.ctime_ns.max(lazy);
            op.commit()?;
        }
        Ok(())
    }

    /// `fstat`.
    pub fn stat(&self) -> Result<Stat> {
        self.fs.state.read().stat(self.ino)
    }

    /// `fchmod`.
    pub fn chmod(&self, mode: u32) -> Result<()> {
        self.setattr(&super::SetAttr {
            mode: Some(mode),
            ..Default::default()
        })
        .map(drop)
    }

    /// The extents, split where sharing changes, in bytes.
    pub fn fiemap(&self) -> Result<Vec<FiemapExtent>> {
        let st = self.fs.state.read();
        let inode = st.inode(self.ino)?;
        let mut out = Vec::new();
        for (l, e) in inode.extents.iter() {
            let mut i = 0;
            while i < e.len {
                let shared = st.refcount(e.physical + i) > 1;
                let mut k = 1;
                while i + k < e.len && (st.refcount(e.physical + i + k) > 1) == shared {
                    k += 1;
                }
                out.push(FiemapExtent {
                    logical: (l + i) * BLOCK_SIZE,
                    physical: (e.physical + i) * BLOCK_SIZE,
                    len: k * BLOCK_SIZE,
                    unwritten: e.unwritten,
                    shared,
                });
                i += k;
            }
        }
        Ok(out)
    }
}

impl Fs {
    /// Set the size of the file `node` names, by `cred`: a layout change
    /// of everything past the smaller of the old and new sizes; the set-id
    /// bits `cred` may not keep ([`super::node::privs_to_kill`]) are cleared
    /// in the same commit (never a truncated file still set-id after a
    /// crash). `node` is checked on every pass and under the lock of the
    /// commit: the lock is dropped while leases break, and a file removed
    /// meanwhile is `ESTALE`, never the later file in its slot. `bound`:
    /// the operation's one deadline when the caller already fixed it (and
    /// applied `fail`) before breaking other leases itself — truncate by
    /// path breaks open leases first (SPEC §3.3.5: one bound for the whole
    /// operation).
    pub(super) fn truncate_inode(
        &self,
        node: Node,
        size: u64,
        cred: &Cred,
        nonblocking: bool,
        bound: Option<BreakDeadline>,
    ) -> Result<()> {
        if size > MAX_FILE_BYTES {
            return Err(Errno::EFBIG.into());
        }
        self.writable()?;
        let (ino, owner) = (node.ino, cred.owner);
        let removed = size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let mut layout = None;
        // Where the guard's range starts (it runs to end of file).
        let mut guarded_from = u64::MAX;
        let mut st = loop {
            let seen = self.state.read().node(node)?.size;
            // Truncate to the size the file has is no layout change: only
            // the timestamps change, as in Linux; no lease breaks.
            if layout.is_none() && seen != size {
                guarded_from = size.min(seen);
                let bound = match bound {
                    Some(b) => b,
                    None => self.pins_before_break(node, removed, u64::MAX, owner)?,
                };
                layout = Some(self.layout_change_until(
                    node,
                    ByteRange::to_eof(size.min(seen)),
                    owner,
                    nonblocking,
                    bound,
                )?);
                self.pins_after_break(node, removed, u64::MAX, bound)?;
            }
            let st = self.state.write();
            let current = st.node(node)?.size;
            if layout.is_none() && current != size {
                continue;
            }
            // The size moved between the look and the guard (another
            // truncate): the guard must cover [min(current, size), EOF).
            if layout.is_some() && size.min(current) < guarded_from {
                drop(st);
                layout = None;
                continue;
            }
            break st;
        };
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.media);
        let old = op.inode(ino)?.size;
        if size < old {
            let end = op.inode(ino)?.extents.end();
            unmap_blocks(&mut op, ino, size.div_ceil(BLOCK_SIZE), end)?;
        } else if size > old {
            zero_eof_tail(&mut op, ino)?;
        }
        let i = op.inode_mut(ino)?;
        i.size = size;
        i.mode &= !super::node::privs_to_kill(cred, i.mode);
        i.mtime_ns = now;
        i.ctime_ns = now;
        op.commit()?;
        // The bytes past the new end of file in its last block are stale now.
        // Zero them when the block is ours alone; this is not needed for
        // correctness (growth zeroes them first) but keeps them from lingering.
        if size < old && !size.is_multiple_of(BLOCK_SIZE) {
            let inode = st.inode(ino)?;
            if let Some((l, e)) = inode.extents.lookup(size / BLOCK_SIZE) {
                let p = e.physical + size / BLOCK_SIZE - l;
                if !e.unwritten && st.refcount(p) == 1 {
                    let at = block_offset(p) + size % BLOCK_SIZE;
                    let media = &*self.media;
                    media.fill(at, BLOCK_SIZE - size % BLOCK_SIZE, 0)?;
                    media.flush(at, BLOCK_SIZE - size % BLOCK_SIZE)?;
                    media.fence();
                }
            }
        }
        Ok(())
    }
}

impl Drop for Handle {
    /// Close: the last close of an unlinked file frees it.
    fn drop(&mut self) {
        self.fs.leases.closed(self.key, HandleId(self.id));
        let mut st = self.fs.state.write();
        let Some(rt) = st.runtime.get(&self.ino).cloned() else {
            return;
        };
        rt.opens.fetch_sub(1, Ordering::Relaxed);
        if st.in_use(self.ino) {
            return;
        }
        if st.inodes.get(&self.ino).is_some_and(|i| i.nlink == 0) {
            let mut op = Op::new(&mut st, &*self.fs.media);
            let freed = match op.free_inode(self.ino) {
                Ok(()) => op.commit(),
                Err(e) => Err(e),
            };
            if let Err(e) = freed {
                // The inode stays on the orphan list; the next mount frees it.
                tracing::error!(ino = self.ino, error = %e, "freeing an unlinked file at last close failed");
            }
        }
    }
}
