//! `fallocate(2)` and its family (SPEC §7): allocate unwritten, keep size,
//! punch hole, zero range, collapse range, insert range — what each stages,
//! the one rule that says when a call changes nothing (no lease break, no
//! copy, timestamps only), and the partial blocks at the edges of a zero
//! range (zeroed in place and left allocated).

use super::extent::Segment;
use super::ops::{allocate_unwritten, bytes_of, unmap_blocks, write_range, zero_eof_tail, Source};
use super::state::{FsState, Op};
use super::{now_ns, Handle};
use crate::format::{BLOCK_SIZE, MAX_FILE_BYTES};
use crate::lease::ByteRange;
use crate::{Errno, Result};

/// What `fallocate` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum FallocMode {
    /// Allocate unwritten blocks in the holes of the range.
    Allocate {
        /// Do not change the size.
        keep_size: bool,
    },
    /// Free the blocks of the range; the size is kept.
    PunchHole,
    /// Make the range read as zeros, leaving it allocated (unwritten).
    ZeroRange {
        /// Do not change the size.
        keep_size: bool,
    },
    /// Remove the range, moving what follows down (block-aligned).
    CollapseRange,
    /// Insert a hole, moving what follows up (block-aligned).
    InsertRange,
}

/// The partial blocks at the edges of `[offset, end)`, as byte ranges: the
/// whole range when it holds no whole block, else the parts before the first
/// and after the last whole block.
fn partial_edges(offset: u64, end: u64) -> Vec<(u64, u64)> {
    let (first_full, last_full) = (offset.div_ceil(BLOCK_SIZE), end / BLOCK_SIZE);
    if first_full >= last_full {
        return vec![(offset, end)];
    }
    [
        (offset, first_full * BLOCK_SIZE),
        (last_full * BLOCK_SIZE, end),
    ]
    .into_iter()
    .filter(|(from, to)| from < to)
    .collect()
}

/// Whether any of pool blocks `physical..physical+len` is shared.
fn any_shared(refcount: impl Fn(u64) -> u32, physical: u64, len: u64) -> bool {
    (physical..physical + len).any(|b| refcount(b) > 1)
}

/// Whether `fallocate(mode, offset, end - offset)` would leave file `ino`
/// as it is (apart from timestamps) — then it is no layout change at all.
/// Must agree with [`stage_fallocate`]: whenever this says so, that stages
/// no change.
fn falloc_changes_nothing(
    st: &FsState,
    ino: u64,
    mode: FallocMode,
    offset: u64,
    end: u64,
) -> Result<bool> {
    let inode = st.inode(ino)?;
    let size = inode.size;
    let (first, last) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
    let (first_full, last_full) = (offset.div_ceil(BLOCK_SIZE), end / BLOCK_SIZE);
    let map = &inode.extents;
    let mapped = |s: &Segment| matches!(s, Segment::Mapped { .. });
    Ok(match mode {
        FallocMode::CollapseRange | FallocMode::InsertRange => false,
        FallocMode::Allocate { keep_size } => {
            (keep_size || end <= size) && map.segments(first, last).iter().all(mapped)
        }
        FallocMode::PunchHole => {
            let whole =
                first_full < last_full && map.segments(first_full, last_full).iter().any(mapped);
            // Partial blocks: only their written bytes below end of file
            // need zeroing (unwritten blocks read as zeros already, and
            // bytes past end of file are never trusted).
            let partial = partial_edges(offset, end).into_iter().any(|(from, to)| {
                let to = to.min(size);
                from < to
                    && map
                        .segments(from / BLOCK_SIZE, to.div_ceil(BLOCK_SIZE))
                        .iter()
                        .any(|s| {
                            matches!(
                                s,
                                Segment::Mapped {
                                    unwritten: false,
                                    ..
                                }
                            )
                        })
            });
            !whole && !partial
        }
        FallocMode::ZeroRange { keep_size } => {
            if !keep_size && end > size {
                return Ok(false);
            }
            let visible_end = end.min(size);
            map.segments(first, last).iter().all(|s| match *s {
                Segment::Hole { .. } => false,
                Segment::Mapped {
                    logical,
                    physical,
                    len,
                    unwritten,
                } => {
                    let (bstart, bend) = bytes_of(logical, len);
                    let seen = offset.max(bstart) < visible_end.min(bend);
                    !seen || (unwritten && !any_shared(|b| st.refcount(b), physical, len))
                }
            })
        }
    })
}

/// Stage the change of `fallocate(mode, offset, end - offset)` on file
/// `ino` (the caller holds the layout guard).
fn stage_fallocate(
    op: &mut Op<'_>,
    ino: u64,
    mode: FallocMode,
    offset: u64,
    end: u64,
) -> Result<()> {
    let size = op.inode(ino)?.size;
    let len = end - offset;
    let (first, last) = (offset / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
    let (first_full, last_full) = (offset.div_ceil(BLOCK_SIZE), end / BLOCK_SIZE);
    let grow = |op: &mut Op<'_>, keep: bool| -> Result<()> {
        if !keep && end > size {
            zero_eof_tail(op, ino)?;
            op.inode_mut(ino)?.size = end;
        }
        Ok(())
    };
    match mode {
        FallocMode::Allocate { keep_size } => {
            allocate_unwritten(op, ino, first, last)?;
            grow(op, keep_size)?;
        }
        FallocMode::PunchHole => {
            if first_full < last_full {
                unmap_blocks(op, ino, first_full, last_full)?;
            }
            let visible = clip(partial_edges(offset, end), size);
            zero_edges(op, ino, &visible, false)?;
        }
        FallocMode::ZeroRange { keep_size } => {
            let new_size = if keep_size { size } else { size.max(end) };
            // Whole blocks that hold data or are shared, below end of file:
            // replaced by fresh unwritten blocks (allocated below), so a
            // later write there needs no copy. Unwritten blocks of this file
            // alone stay as they are.
            if first_full < last_full {
                let segs = op.inode(ino)?.extents.segments(first_full, last_full);
                for seg in segs {
                    if let Segment::Mapped {
                        logical,
                        physical,
                        len: n,
                        unwritten,
                    } = seg
                    {
                        let seen = logical * BLOCK_SIZE < new_size;
                        if seen && (!unwritten || any_shared(|b| op.refcount(b), physical, n)) {
                            unmap_blocks(op, ino, logical, logical + n)?;
                        }
                    }
                }
            }
            // fallocate(2): the whole block range is allocated afterwards,
            // the partial blocks at the edges included, so no later write
            // into the range fails for want of space.
            allocate_unwritten(op, ino, first, last)?;
            grow(op, keep_size)?;
            let visible = clip(partial_edges(offset, end), new_size);
            zero_edges(op, ino, &visible, true)?;
        }
        FallocMode::CollapseRange => {
            if end >= size {
                return Err(Errno::EINVAL.into());
            }
            unmap_blocks(op, ino, first_full, last_full)?;
            op.inode_mut(ino)?
                .extents
                .shift(last_full, -((len / BLOCK_SIZE) as i64));
            op.inode_mut(ino)?.size = size - len;
        }
        FallocMode::InsertRange => {
            if offset >= size {
                return Err(Errno::EINVAL.into());
            }
            // Past the largest file: the size here; blocks preallocated
            // beyond end of file are caught by the inode validation at
            // commit (`EFBIG`, nothing changed).
            if size + len > MAX_FILE_BYTES {
                return Err(Errno::EFBIG.into());
            }
            op.inode_mut(ino)?
                .extents
                .shift(first_full, (len / BLOCK_SIZE) as i64);
            op.inode_mut(ino)?.size = size + len;
        }
    }
    Ok(())
}

/// The parts of byte ranges below `limit`.
fn clip(ranges: Vec<(u64, u64)>, limit: u64) -> Vec<(u64, u64)> {
    ranges
        .into_iter()
        .map(|(from, to)| (from, to.min(limit)))
        .filter(|(from, to)| from < to)
        .collect()
}

/// Make byte ranges `ranges` (inside the partial blocks at the edges of a
/// punch or zero range) read as zeros: written blocks are zeroed (copied
/// first when shared); with `unshare`, shared unwritten blocks get private
/// zeroed copies too (zero range leaves its blocks ready to write).
///
/// Copies first, then the limits check, then the in-place zeroing: a
/// refused operation must not have changed data in place.
fn zero_edges(op: &mut Op<'_>, ino: u64, ranges: &[(u64, u64)], unshare: bool) -> Result<()> {
    let mut pieces = Vec::new();
    for &(from, to) in ranges {
        let segs = op
            .inode(ino)?
            .extents
            .segments(from / BLOCK_SIZE, to.div_ceil(BLOCK_SIZE));
        for seg in segs {
            if let Segment::Mapped {
                logical,
                physical,
                len,
                unwritten,
            } = seg
            {
                for i in 0..len {
                    let (bstart, bend) = bytes_of(logical + i, 1);
                    let (f, t) = (from.max(bstart), to.min(bend));
                    let shared = op.refcount(physical + i) > 1;
                    if f < t && (!unwritten || (shared && unshare)) {
                        pieces.push((f, t, shared));
                    }
                }
            }
        }
    }
    for &(f, t, shared) in &pieces {
        if shared {
            write_range(op, ino, f, t - f, Source::Zeros)?;
        }
    }
    op.validate_limits()?;
    for &(f, t, shared) in &pieces {
        if !shared {
            write_range(op, ino, f, t - f, Source::Zeros)?;
        }
    }
    Ok(())
}

impl Handle {
    /// `fallocate(2)`.
    ///
    /// A call that would change nothing (SPEC §2: no block mapped or
    /// unmapped, no data changed, no size change — punching holes, zeroing
    /// unwritten blocks, allocating what is allocated) changes nothing: it
    /// is no layout change, breaks no lease, copies no shared block, and
    /// only updates the timestamps, as Linux does.
    pub fn fallocate(&self, mode: FallocMode, offset: u64, len: u64) -> Result<()> {
        self.need_write()?;
        if len == 0 {
            return Err(Errno::EINVAL.into());
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(Errno::EFBIG)?;
        if matches!(mode, FallocMode::CollapseRange | FallocMode::InsertRange)
            && (!offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE))
        {
            return Err(Errno::EINVAL.into());
        }
        self.fs.writable()?;
        // As any modification by a caller other than root: the set-id bits
        // go first (Linux `file_modified`).
        self.fs.kill_privs(&self.cred, self.node())?;
        // The blocks the change removes from the file.
        let removed = match mode {
            FallocMode::PunchHole | FallocMode::ZeroRange { .. } => (
                offset.div_ceil(BLOCK_SIZE) * BLOCK_SIZE,
                end / BLOCK_SIZE * BLOCK_SIZE,
            ),
            FallocMode::CollapseRange => (offset, end),
            FallocMode::Allocate { .. } | FallocMode::InsertRange => (0, 0),
        };
        let mut layout = None;
        let mut st = loop {
            if layout.is_none() {
                let (seen, noop) = {
                    let st = self.fs.state.read();
                    let seen = st.inode(self.ino)?.size;
                    (
                        seen,
                        falloc_changes_nothing(&st, self.ino, mode, offset, end)?,
                    )
                };
                if !noop {
                    let range = match mode {
                        FallocMode::PunchHole
                        | FallocMode::Allocate { keep_size: true }
                        | FallocMode::ZeroRange { keep_size: true } => ByteRange::new(offset, end),
                        FallocMode::Allocate { .. } | FallocMode::ZeroRange { .. }
                            if end <= seen =>
                        {
                            ByteRange::new(offset, end)
                        }
                        _ => ByteRange::to_eof(offset.min(seen)),
                    };
                    let (owner, nb) = (self.cred.owner, self.flags.nonblocking);
                    let bound =
                        self.fs
                            .pins_before_break(self.node(), removed.0, removed.1, owner)?;
                    layout =
                        Some(
                            self.fs
                                .layout_change_until(self.node(), range, owner, nb, bound)?,
                        );
                    self.fs
                        .pins_after_break(self.node(), removed.0, removed.1, bound)?;
                }
            }
            let st = self.fs.state.write();
            // Without a layout guard, the file must still be one this call
            // leaves alone (it may have changed while no lock was held).
            if layout.is_none() && !falloc_changes_nothing(&st, self.ino, mode, offset, end)? {
                continue;
            }
            break st;
        };
        let now = now_ns();
        let mut op = Op::new(&mut st, &*self.fs.media);
        let ino = self.ino;
        if layout.is_some() {
            stage_fallocate(&mut op, ino, mode, offset, end)?;
        }
        let i = op.inode_mut(ino)?;
        i.mtime_ns = now;
        i.ctime_ns = now;
        op.commit()
    }
}
