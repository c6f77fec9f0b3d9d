//! The mounted file system's metadata in memory, and the staged operation
//! ([`Op`]) through which every metadata change reaches the media.
//!
//! The in-memory state mirrors the pool exactly (it is rebuilt from it at
//! mount). A metadata operation never edits that state directly: it stages
//! copies of what it changes in an [`Op`], which serializes them into a
//! journal transaction, commits it, and only then installs the copies. A
//! failure before the commit point leaves both the pool and the in-memory
//! state as they were; a failure after it installs the copies (the pool will
//! replay them) and shuts the file system down. Before anything is written,
//! every staged inode passes [`Inode::validate`], the same check mount runs,
//! so nothing is committed that mount would refuse.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;
use zerocopy::{FromZeros, IntoBytes};

use super::extent::{Extent, ExtentMap};
use crate::alloc::{Allocator, Run};
use crate::format::*;
use crate::journal::{CommitError, Journal, Transaction};
use crate::media::Media;
use crate::{Errno, Result};

/// A file, directory or free slot's metadata in memory.
#[derive(Clone, Debug)]
pub(crate) struct Inode {
    pub ino: u64,
    pub generation: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime_ns: u64,
    pub mtime_ns: u64,
    pub ctime_ns: u64,
    pub parent: u64,
    pub orphan_next: u64,
    /// Device number of a character or block special file, else 0.
    pub rdev: u64,
    pub extents: ExtentMap,
    /// Extent index block on media, 0 when the extents are inline.
    pub index_block: u64,
    /// Extent leaf blocks on media, in order.
    pub leaves: Vec<u64>,
}

/// Why an inode is not one mount accepts ([`Inode::validate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// Past a limit of SPEC §7 (2^50 bytes, 32,768 extents): an operation
    /// that would cause it fails with `EFBIG` and changes nothing.
    Limit(&'static str),
    /// A structure no correct operation produces: on a pool, damage; staged
    /// by an operation, a bug (refused before commit, never written).
    Broken(String),
}

impl Violation {
    /// The message, as mount and fsck name it.
    pub fn message(&self) -> String {
        match self {
            Violation::Limit(m) => (*m).to_string(),
            Violation::Broken(m) => m.clone(),
        }
    }

    /// The error an operation that staged this inode returns: `EFBIG` for a
    /// limit; for a broken structure an invariant error (`EUCLEAN`, logged)
    /// — and a panic in debug builds, where tests should stop at the bug.
    pub fn into_error(self, ino: u64) -> crate::Error {
        match self {
            Violation::Limit(_) => Errno::EFBIG.into(),
            Violation::Broken(m) => {
                tracing::error!(ino, problem = %m, "an operation staged an invalid inode; refused before commit");
                debug_assert!(false, "inode {ino}: operation staged an invalid inode: {m}");
                crate::Error::corrupt(format!(
                    "inode {ino}: invariant broken by an operation: {m}"
                ))
            }
        }
    }
}

impl Inode {
    /// The one validation of an inode: mount and fsck run it on every inode
    /// read from a pool, and [`Op`] runs it on every inode it stages before
    /// anything is committed — so no operation can commit an inode that
    /// mount would refuse. Checks the file type, the size and extent-count
    /// limits, every extent (non-empty, representable, inside the data
    /// region, inside the largest file, sorted and disjoint), that no
    /// written block lies past the block holding end of file, and that a
    /// directory is whole written blocks within its entry limit.
    /// The limits of SPEC §7 alone (size, extent count, last extent's end):
    /// constant time, for the checks an operation makes before writing data
    /// in place; [`Inode::validate`] runs them first.
    pub fn check_limits(&self) -> std::result::Result<(), Violation> {
        if self.size > MAX_FILE_BYTES {
            return Err(Violation::Limit("size too large"));
        }
        if self.extents.len() > MAX_EXTENTS_PER_FILE {
            return Err(Violation::Limit("too many extents"));
        }
        // Extents are disjoint and sorted (`validate` checks it; mount checks
        // that their ends do not overflow before building the map): the
        // last one ends last.
        if self.extents.end() > MAX_FILE_BLOCKS {
            return Err(Violation::Limit("extent beyond the largest file"));
        }
        Ok(())
    }

    pub fn validate(&self, sb: &Superblock) -> std::result::Result<(), Violation> {
        let kind = self.mode & S_IFMT;
        if ![
            S_IFREG, S_IFDIR, S_IFLNK, S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK,
        ]
        .contains(&kind)
        {
            return Err(Violation::Broken(format!("unknown file type {kind:o}")));
        }
        if self.rdev != 0 && kind != S_IFCHR && kind != S_IFBLK {
            return Err(Violation::Broken(format!(
                "device number on file type {kind:o}"
            )));
        }
        if kind != S_IFDIR && self.parent != 0 {
            return Err(Violation::Broken(format!(
                "parent {} on a non-directory",
                self.parent
            )));
        }
        if self.nlink > MAX_LINKS {
            return Err(Violation::Broken(format!(
                "link count {} over {MAX_LINKS}",
                self.nlink
            )));
        }
        self.check_limits()?;
        // Every limit is checked first, before any structural rule, so that
        // an operation half-way through (`Op::validate_limits`) sees them.
        let eof_block = self.size.div_ceil(BLOCK_SIZE);
        let mut next_logical = 0u64;
        for (l, e) in self.extents.iter() {
            if e.len == 0
                || e.len > u64::from(u32::MAX)
                || l < next_logical
                || !sb.is_data_range(e.physical, e.len)
            {
                return Err(Violation::Broken(format!(
                    "extent {l}+{}@{} invalid or out of order",
                    e.len, e.physical
                )));
            }
            next_logical = l + e.len;
            if !e.unwritten && next_logical > eof_block {
                return Err(Violation::Broken("written blocks beyond its size".into()));
            }
        }
        match kind {
            S_IFDIR => self.validate_dir()?,
            S_IFLNK => self.validate_symlink()?,
            S_IFIFO | S_IFCHR | S_IFBLK | S_IFSOCK
                if self.size != 0 || !self.extents.is_empty() =>
            {
                return Err(Violation::Broken(format!(
                    "special file (type {kind:o}) with data"
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// A symbolic link is its target: 1 ..= `MAX_SYMLINK` bytes in whole
    /// written blocks from block 0, exactly the blocks its size needs.
    fn validate_symlink(&self) -> std::result::Result<(), Violation> {
        if self.size == 0 || self.size > MAX_SYMLINK as u64 {
            return Err(Violation::Broken(format!("symlink size {}", self.size)));
        }
        let mut at = 0;
        for (l, e) in self.extents.iter() {
            if l != at || e.unwritten {
                return Err(Violation::Broken(format!(
                    "symlink block {at} is a hole or unwritten"
                )));
            }
            at = l + e.len;
        }
        if at != self.size.div_ceil(BLOCK_SIZE) {
            return Err(Violation::Broken(format!(
                "symlink blocks end at {at}, its size at {}",
                self.size
            )));
        }
        Ok(())
    }

    /// A directory is whole written blocks of entry slots, no more than its
    /// entry limit needs (directories grow by one block when full).
    fn validate_dir(&self) -> std::result::Result<(), Violation> {
        let blocks = self.size / BLOCK_SIZE;
        if !self.size.is_multiple_of(BLOCK_SIZE)
            || blocks * DIRENTS_PER_BLOCK > MAX_DIR_ENTRIES + DIRENTS_PER_BLOCK
        {
            return Err(Violation::Broken(format!("directory size {}", self.size)));
        }
        let mut at = 0;
        for (l, e) in self.extents.iter() {
            if l != at || e.unwritten {
                return Err(Violation::Broken(format!(
                    "directory block {at} is a hole or unwritten"
                )));
            }
            at = l + e.len;
        }
        if at != blocks {
            return Err(Violation::Broken(format!(
                "directory blocks end at {at}, its size at {blocks}"
            )));
        }
        Ok(())
    }

    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// Blocks of the extent tree (index and leaves).
    pub fn tree_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        (self.index_block != 0)
            .then_some(self.index_block)
            .into_iter()
            .chain(self.leaves.iter().copied())
    }

    /// The inode slot record, extents inline or pointing at the tree.
    pub fn record(&self) -> InodeRecord {
        let mut r = InodeRecord::new_zeroed();
        r.mode = self.mode.into();
        r.uid = self.uid.into();
        r.gid = self.gid.into();
        r.nlink = self.nlink.into();
        r.size = self.size.into();
        r.atime_ns = self.atime_ns.into();
        r.mtime_ns = self.mtime_ns.into();
        r.ctime_ns = self.ctime_ns.into();
        r.generation = self.generation.into();
        r.extent_count = (self.extents.len() as u32).into();
        r.extent_index = self.index_block.into();
        r.orphan_next = self.orphan_next.into();
        r.parent = self.parent.into();
        r.rdev = self.rdev.into();
        if self.index_block == 0 {
            for (slot, (l, e)) in r.inline.iter_mut().zip(self.extents.iter()) {
                *slot = extent_record(l, e);
            }
        }
        r.seal();
        r
    }
}

/// The on-media record of an extent.
pub(crate) fn extent_record(logical: u64, e: Extent) -> ExtentRecord {
    ExtentRecord {
        logical: logical.into(),
        physical: e.physical.into(),
        len: (e.len as u32).into(),
        flags: if e.unwritten { EXTENT_UNWRITTEN } else { 0 }.into(),
    }
}

/// A directory's entries in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dir {
    /// name → (inode, slot).
    pub entries: HashMap<Box<[u8]>, (u64, u64)>,
    /// Free slots below `slots`.
    pub free_slots: BTreeSet<u64>,
    /// Slots the directory's blocks hold.
    pub slots: u64,
}

/// Per-inode state that exists only while mounted.
#[derive(Debug, Default)]
pub(crate) struct Runtime {
    /// Open handles (and, later, mappings and pins) keeping an unlinked
    /// inode alive.
    pub opens: AtomicU64,
    /// Long-term pins on the inode (they keep an unlinked inode alive).
    pub pins: AtomicU64,
    /// Data ranges written since the last fsync (pool byte ranges).
    pub dirty: Mutex<Vec<(u64, u64)>>,
    /// Modification time of writes that did not go through a transaction;
    /// persisted with the next transaction on the inode or at fsync.
    pub lazy_mtime_ns: AtomicU64,
}

/// Most dirty ranges remembered per inode; more are flushed at once.
pub(crate) const MAX_DIRTY_RANGES: usize = 256;

impl Runtime {
    /// Remember a written data range for fsync.
    pub fn note_dirty(&self, media: &dyn Media, offset: u64, len: u64) -> Result<()> {
        let mut d = self.dirty.lock();
        if let Some(last) = d.last_mut() {
            if last.0 + last.1 == offset {
                last.1 += len;
                return Ok(());
            }
        }
        if d.len() >= MAX_DIRTY_RANGES {
            for (o, l) in d.drain(..) {
                media.flush(o, l)?;
            }
        }
        d.push((offset, len));
        Ok(())
    }
}

/// Everything the mounted file system knows, mirroring the pool.
#[derive(Debug)]
pub(crate) struct FsState {
    pub sb: Superblock,
    pub journal: Journal,
    pub inodes: HashMap<u64, Inode>,
    pub free_inodes: BTreeSet<u64>,
    pub dirs: HashMap<u64, Dir>,
    pub alloc: Allocator,
    /// Blocks shared by reflink and their counts; every other block has
    /// count 1 when a file uses it, else 0 (free or busy).
    pub shared: super::shared::SharedRuns,
    /// Inode high-water mark: no slot at or above it has ever been used.
    pub inode_high: u64,
    pub orphans: Vec<u64>,
    pub next_generation: u64,
    pub runtime: HashMap<u64, Arc<Runtime>>,
    /// Long-term pins (SPEC §4).
    pub pins: crate::pin::PinTable,
    /// Test-only: when false, blocks a pin still reaches are freed like any
    /// other (the negative control of the invariant tests).
    pub protect_pinned: bool,
    /// Live mappings, re-placed by every committed layout change.
    pub maps: super::mmap::MapTable,
    /// Device registrations (SPEC §6); the on-demand ones are invalidated
    /// by every committed layout change over their range.
    pub dma: super::dma::DmaTable,
    /// A commit failed after its commit point: memory holds what the pool
    /// will replay, and nothing may change any more (`EIO`), as a kernel
    /// file system shuts down on a journal error.
    pub shut_down: bool,
    /// Test-only: when false, a commit that fails after its commit point
    /// leaves the file system writable (the negative control of the
    /// shutdown tests: the next commit then overwrites records the pool
    /// still has to replay).
    pub shut_down_on_journal_error: bool,
    /// Test-only: when false, operations commit inodes without
    /// [`Inode::validate`] (the negative control of the limit tests).
    pub validate_commits: bool,
    /// Node functions refuse a node whose generation is not its slot's
    /// (`ESTALE`); off only for a negative-control test.
    pub check_generation: bool,
    /// Test-only: when false, commits leave the shared-run table and the
    /// inode high-water mark on the pool as they were (memory still follows):
    /// the negative control of the tests that the pool keeps them.
    pub persist_books: bool,
}

impl FsState {
    /// The reference count of data block `block`: its shared count, else 1
    /// when a file uses it, 0 when it is free or busy.
    pub fn refcount(&self, block: u64) -> u32 {
        match self.shared.count(block) {
            Some(c) => c,
            None if self.alloc.overlaps_unused(Run {
                start: block,
                len: 1,
            }) =>
            {
                0
            }
            None => 1,
        }
    }

    /// Whether every block of `start..start+len` has exactly one reference
    /// (owned by one file, not shared): a few tree lookups, not one per
    /// block. `false` for blocks outside the data region.
    pub fn refcounts_all_one(&self, start: u64, len: u64) -> bool {
        self.sb.is_data_range(start, len)
            && !self.shared.overlaps(start, len)
            && !self.alloc.overlaps_unused(Run { start, len })
    }

    /// Inode slots free for new files: the free ones below the high-water
    /// mark and every one above it.
    pub fn free_inode_count(&self) -> u64 {
        self.free_inodes.len() as u64 + (self.sb.inode_count.get() - self.inode_high)
    }

    pub fn inode(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT.into())
    }

    pub fn runtime(&mut self, ino: u64) -> Arc<Runtime> {
        self.runtime.entry(ino).or_default().clone()
    }

    /// Whether open handles or pins keep an unlinked inode alive.
    pub fn in_use(&self, ino: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.runtime
            .get(&ino)
            .is_some_and(|r| r.opens.load(Relaxed) > 0 || r.pins.load(Relaxed) > 0)
    }

    /// Return blocks nothing refers to any more: to free space, or — when a
    /// pin still reaches them — to the busy-extent list (SPEC §4.3 `defer`).
    pub fn release_blocks(&mut self, run: Run) {
        if !self.protect_pinned {
            self.alloc.free(run);
            return;
        }
        let (pinned, free) = self.pins.split(run);
        for r in pinned {
            self.alloc.hold_busy(r);
        }
        for r in free {
            self.alloc.free(r);
        }
    }
}

/// A staged directory change: (directory, name, new (inode, slot) or removal).
type DirEdit = (u64, Box<[u8]>, Option<(u64, u64)>);

/// One staged metadata operation. See the module doc.
pub(crate) struct Op<'a> {
    pub st: &'a mut FsState,
    pub media: &'a dyn Media,
    pub tx: Transaction,
    inodes: BTreeMap<u64, Inode>,
    /// Staged counts of blocks that are or become shared (per block: a
    /// reflink's cost is its blocks). Unshared blocks are never here.
    refs: BTreeMap<u64, u32>,
    /// Unshared blocks this operation dropped the only reference to:
    /// start → len (their count is 0 from now on in this operation).
    freed: BTreeMap<u64, u64>,
    /// The shared runs after this operation, built by `prepare`.
    new_shared: Option<super::shared::SharedRuns>,
    /// Staged inode high-water mark.
    inode_high: Option<u64>,
    allocated: Vec<Run>,
    taken_inodes: Vec<u64>,
    released_inodes: Vec<u64>,
    dir_edits: Vec<DirEdit>,
    dir_new_slots: BTreeMap<u64, u64>,
    orphans: Option<Vec<u64>>,
    generation: Option<u64>,
    /// Blocks whose last reference this operation dropped, with whether they
    /// held file data (tree blocks never do). The caller decides after commit
    /// whether each goes back to free space or to the busy list.
    pub released_blocks: Vec<Run>,
}

impl<'a> Op<'a> {
    pub fn new(st: &'a mut FsState, media: &'a dyn Media) -> Self {
        Op {
            st,
            media,
            tx: Transaction::new(),
            inodes: BTreeMap::new(),
            refs: BTreeMap::new(),
            freed: BTreeMap::new(),
            new_shared: None,
            inode_high: None,
            allocated: Vec::new(),
            taken_inodes: Vec::new(),
            released_inodes: Vec::new(),
            dir_edits: Vec::new(),
            dir_new_slots: BTreeMap::new(),
            orphans: None,
            generation: None,
            released_blocks: Vec::new(),
        }
    }

    /// The inode as this operation sees it.
    pub fn inode(&self, ino: u64) -> Result<&Inode> {
        match self.inodes.get(&ino) {
            Some(i) => Ok(i),
            None => self.st.inode(ino),
        }
    }

    /// A staged copy of the inode to change.
    pub fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        if !self.inodes.contains_key(&ino) {
            let i = self.st.inode(ino)?.clone();
            self.inodes.insert(ino, i);
        }
        Ok(self.inodes.get_mut(&ino).expect("just staged"))
    }

    pub fn refcount(&self, block: u64) -> u32 {
        if let Some(&c) = self.refs.get(&block) {
            return c;
        }
        if self.freed_overlaps(block, 1) {
            return 0;
        }
        self.st.refcount(block)
    }

    fn freed_overlaps(&self, start: u64, end: u64) -> bool {
        self.freed
            .range(..end)
            .next_back()
            .is_some_and(|(&s, &l)| s + l > start)
    }

    /// Allocate `n` zero-reference blocks, giving them one reference each
    /// (taken out of free space and mapped by one extent: count 1, stored
    /// nowhere).
    pub fn alloc(&mut self, n: u64, goal: Option<u64>) -> Result<Vec<Run>> {
        let runs = self.st.alloc.alloc(n, goal)?;
        self.allocated.extend_from_slice(&runs);
        Ok(runs)
    }

    /// Allocate `n` blocks and zero them (durable before the commit point).
    pub fn alloc_zeroed(&mut self, n: u64, goal: Option<u64>) -> Result<Vec<Run>> {
        let runs = self.alloc(n, goal)?;
        for r in &runs {
            let off = block_offset(r.start);
            self.media.fill(off, r.len * BLOCK_SIZE, 0)?;
            self.tx.data_written(off, r.len * BLOCK_SIZE);
        }
        Ok(runs)
    }

    /// Add a reference to each block of the run (reflink).
    pub fn incref(&mut self, start: u64, len: u64) -> Result<()> {
        for b in start..start + len {
            let c = self.refcount(b);
            if c >= MAX_BLOCK_REFS {
                return Err(Errno::EMLINK.into());
            }
            self.refs.insert(b, c + 1);
        }
        Ok(())
    }

    /// Drop a reference from each block of the run; blocks reaching zero are
    /// released after commit. Unshared stretches go in one step each (their
    /// count 1 is stored nowhere, so nothing is journaled for them); only
    /// shared blocks, or blocks this operation already staged, go block by
    /// block.
    pub fn decref(&mut self, start: u64, len: u64) {
        let end = start + len;
        let mut run: Option<Run> = None;
        let mut release = |this: &mut Self, r: Run| match &mut run {
            Some(p) if p.end() == r.start => p.len += r.len,
            _ => {
                if let Some(p) = run.replace(r) {
                    this.released_blocks.push(p);
                }
            }
        };
        let mut b = start;
        while b < end {
            let next_staged = self.refs.range(b..end).next().map(|(&k, _)| k);
            let next_shared = self.st.shared.first_from(b).map(|(s, _, _)| s);
            let special = next_staged
                .into_iter()
                .chain(next_shared)
                .min()
                .unwrap_or(end)
                .min(end);
            if special > b {
                // Count 1 each: owned by this extent alone.
                assert!(
                    !self.freed_overlaps(b, special)
                        && !self.st.alloc.overlaps_unused(Run {
                            start: b,
                            len: special - b
                        }),
                    "dropping a reference to free block in {b}..{special}"
                );
                self.freed.insert(b, special - b);
                release(
                    self,
                    Run {
                        start: b,
                        len: special - b,
                    },
                );
                b = special;
                continue;
            }
            let c = self.refcount(b);
            assert!(c > 0, "dropping a reference to free block {b}");
            self.refs.insert(b, c - 1);
            if c == 1 {
                release(self, Run { start: b, len: 1 });
            }
            b += 1;
        }
        if let Some(r) = run {
            self.released_blocks.push(r);
        }
    }

    /// A new inode slot, with a fresh generation.
    pub fn new_inode(&mut self, mode: u32, uid: u32, gid: u32, now_ns: u64) -> Result<u64> {
        // Lowest free slot below the high-water mark, else the mark itself
        // (which then rises): mount reads only the slots below it.
        let high = self.inode_high.unwrap_or(self.st.inode_high);
        let ino = match self
            .st
            .free_inodes
            .range(..high)
            .find(|i| !self.taken_inodes.contains(i))
        {
            Some(&ino) => ino,
            None => {
                if high >= self.st.sb.inode_count.get() {
                    return Err(Errno::ENOSPC.into());
                }
                self.inode_high = Some(high + 1);
                high
            }
        };
        self.taken_inodes.push(ino);
        let generation = self.generation.unwrap_or(self.st.next_generation);
        self.generation = Some(generation.checked_add(1).ok_or(Errno::EOVERFLOW)?);
        self.inodes.insert(
            ino,
            Inode {
                ino,
                generation: generation as u32,
                mode,
                uid,
                gid,
                nlink: 1,
                size: 0,
                atime_ns: now_ns,
                mtime_ns: now_ns,
                ctime_ns: now_ns,
                parent: 0,
                orphan_next: 0,
                rdev: 0,
                extents: ExtentMap::new(),
                index_block: 0,
                leaves: Vec::new(),
            },
        );
        Ok(ino)
    }

    /// Free an inode and every block it references.
    pub fn free_inode(&mut self, ino: u64) -> Result<()> {
        let inode = self.inode(ino)?.clone();
        for (_, e) in inode.extents.iter() {
            self.decref(e.physical, e.len);
        }
        for b in inode.tree_blocks() {
            self.decref(b, 1);
        }
        if let Some(list) = self.orphan_list() {
            if list.contains(&ino) {
                self.orphan_remove(ino)?;
            }
        }
        self.inodes.remove(&ino);
        self.released_inodes.push(ino);
        self.tx
            .write_struct(self.st.sb.inode_offset(ino), &InodeRecord::free());
        // Freeing the highest used slot lowers the high-water mark past every
        // free slot below it, in this same transaction: mount then reads up
        // to the highest live inode, not the most ever used.
        let high = self.inode_high.unwrap_or(self.st.inode_high);
        if ino + 1 == high {
            let mut h = ino;
            while h > ROOT_INO + 1 && self.slot_free(h - 1) {
                h -= 1;
            }
            self.inode_high = Some(h);
        }
        Ok(())
    }

    /// Whether inode slot `ino` is free as this operation sees it.
    fn slot_free(&self, ino: u64) -> bool {
        (self.st.free_inodes.contains(&ino) && !self.taken_inodes.contains(&ino))
            || self.released_inodes.contains(&ino)
    }

    fn orphan_list(&mut self) -> Option<&mut Vec<u64>> {
        if self.orphans.is_none() {
            self.orphans = Some(self.st.orphans.clone());
        }
        self.orphans.as_mut()
    }

    /// Put an unlinked, still-open inode on the orphan list.
    pub fn orphan_add(&mut self, ino: u64) -> Result<()> {
        let list = self.orphan_list().expect("staged");
        let head = list.first().copied().unwrap_or(0);
        list.insert(0, ino);
        self.inode_mut(ino)?.orphan_next = head;
        Ok(())
    }

    /// Take an inode off the orphan list.
    pub fn orphan_remove(&mut self, ino: u64) -> Result<()> {
        let list = self.orphan_list().expect("staged");
        let Some(pos) = list.iter().position(|&i| i == ino) else {
            return Ok(());
        };
        list.remove(pos);
        let next = list.get(pos).copied().unwrap_or(0);
        let prev = pos.checked_sub(1).map(|p| list[p]);
        if let Some(p) = prev {
            self.inode_mut(p)?.orphan_next = next;
        }
        if self.inodes.contains_key(&ino) || self.st.inodes.contains_key(&ino) {
            self.inode_mut(ino)?.orphan_next = 0;
        }
        Ok(())
    }

    /// Link `name` → `ino` in `dir` (the name must be absent).
    pub fn link(&mut self, dir: u64, name: &[u8], ino: u64) -> Result<()> {
        let slot = self.free_slot(dir)?;
        let generation = self.inode(ino)?.generation;
        let rec = DirentRecord::new(name, ino, generation);
        let off = self.slot_offset(dir, slot)?;
        self.tx.write_struct(off, &rec);
        self.dir_edits.push((dir, name.into(), Some((ino, slot))));
        Ok(())
    }

    /// Remove `name` from `dir` (it must be present).
    pub fn unlink_name(&mut self, dir: u64, name: &[u8]) -> Result<()> {
        let slot = self
            .st
            .dirs
            .get(&dir)
            .and_then(|d| d.entries.get(name))
            .map(|&(_, s)| s)
            .or_else(|| {
                self.dir_edits
                    .iter()
                    .rev()
                    .find(|(d, n, _)| *d == dir && **n == *name)
                    .and_then(|(_, _, e)| e.map(|(_, s)| s))
            })
            .ok_or(Errno::ENOENT)?;
        let off = self.slot_offset(dir, slot)?;
        self.tx.write(off, &0u64.to_le_bytes());
        self.dir_edits.push((dir, name.into(), None));
        Ok(())
    }

    fn slot_offset(&self, dir: u64, slot: u64) -> Result<u64> {
        let logical = slot / DIRENTS_PER_BLOCK;
        let (l, e) = self.inode(dir)?.extents.lookup(logical).ok_or_else(|| {
            crate::Error::corrupt(format!("directory {dir}: slot {slot} unmapped"))
        })?;
        Ok(block_offset(e.physical + logical - l) + (slot % DIRENTS_PER_BLOCK) * DIRENT_SIZE)
    }

    /// A free slot of `dir`, growing it by a zeroed block when full.
    fn free_slot(&mut self, dir: u64) -> Result<u64> {
        let used: BTreeSet<u64> = self
            .dir_edits
            .iter()
            .filter(|(d, _, e)| *d == dir && e.is_some())
            .filter_map(|(_, _, e)| e.map(|(_, s)| s))
            .collect();
        let d = self.st.dirs.get(&dir).ok_or(Errno::ENOTDIR)?;
        if let Some(&s) = d.free_slots.iter().find(|s| !used.contains(s)) {
            return Ok(s);
        }
        let slots = self.dir_new_slots.get(&dir).copied().unwrap_or(d.slots);
        if let Some(s) = (d.slots..slots).find(|s| !used.contains(s)) {
            return Ok(s);
        }
        if d.entries.len() as u64 >= MAX_DIR_ENTRIES {
            return Err(Errno::ENOSPC.into());
        }
        let logical = slots / DIRENTS_PER_BLOCK;
        let goal = self.inode(dir)?.extents.goal(logical);
        let runs = self.alloc_zeroed(1, goal)?;
        let inode = self.inode_mut(dir)?;
        inode.extents.map(
            logical,
            Extent {
                physical: runs[0].start,
                len: 1,
                unwritten: false,
            },
        );
        inode.size = (logical + 1) * BLOCK_SIZE;
        self.dir_new_slots.insert(dir, slots + DIRENTS_PER_BLOCK);
        Ok(slots)
    }

    /// Serialize, commit, install.
    ///
    /// A failure before the commit point (a staged inode mount would refuse,
    /// a transaction too large, a media error writing the records) changes
    /// nothing. A failure after it cannot be undone — the next mount replays
    /// the transaction — so the operation is installed in memory as the pool
    /// will have it, the file system shuts down (read-only: every later
    /// change fails with `EIO`), and the error is returned.
    pub fn commit(mut self) -> Result<()> {
        if self.st.shut_down {
            self.rollback();
            return Err(Errno::EIO.into());
        }
        if let Err(e) = self.prepare() {
            self.rollback();
            return Err(e);
        }
        match self.st.journal.commit(self.media, &self.tx) {
            Ok(()) => {
                self.install();
                Ok(())
            }
            Err(CommitError::NotCommitted(e)) => {
                self.rollback();
                Err(e)
            }
            Err(CommitError::Committed(e)) => {
                tracing::error!(
                    error = %e,
                    "journal commit failed after its commit point: the file system is now read-only"
                );
                self.st.shut_down = self.st.shut_down_on_journal_error;
                self.install();
                Err(e)
            }
        }
    }

    /// Every inode this operation has staged is one mount accepts
    /// ([`Inode::validate`]): `EFBIG` past a limit, an invariant error for a
    /// broken structure (a bug). Run before anything is committed.
    fn validate_staged(&self) -> Result<()> {
        if !self.st.validate_commits {
            return Ok(());
        }
        for inode in self.inodes.values() {
            inode
                .validate(&self.st.sb)
                .map_err(|v| v.into_error(inode.ino))?;
        }
        Ok(())
    }

    /// The limits part of [`Inode::validate`] on every inode staged so far
    /// (`EFBIG`), for an operation half-way through — whose structure may be
    /// transiently off, a write's blocks mapped before its size grows. Run
    /// before writing data in place, which a rollback cannot undo, so an
    /// operation refused for a limit changes nothing. [`Op::commit`] runs
    /// the whole validation again.
    pub fn validate_limits(&self) -> Result<()> {
        if !self.st.validate_commits {
            return Ok(());
        }
        for inode in self.inodes.values() {
            if let Err(v) = inode.check_limits() {
                return Err(v.into_error(inode.ino));
            }
        }
        Ok(())
    }

    fn prepare(&mut self) -> Result<()> {
        self.validate_staged()?;
        let staged: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in staged {
            self.write_extent_tree(ino)?;
            let inode = &self.inodes[&ino];
            let rec = inode.record();
            self.tx.write_struct(self.st.sb.inode_offset(ino), &rec);
        }
        // Shared counts: the whole table after this operation, when it
        // changes (only reflinks and what they shared touch it).
        if !self.refs.is_empty() {
            let mut shared = self.st.shared.clone();
            let mut it = self.refs.iter().map(|(&b, &c)| (b, c)).peekable();
            while let Some((b, c)) = it.next() {
                let mut len = 1;
                while it.next_if(|&(nb, nc)| nb == b + len && nc == c).is_some() {
                    len += 1;
                }
                shared.set(b, len, c);
            }
            if shared != self.st.shared && self.st.persist_books {
                if shared.len() as u64 > self.st.sb.shared_capacity() {
                    return Err(Errno::ENOSPC.into());
                }
                self.tx.write(self.st.sb.shared_offset(), &shared.encode());
            }
            self.new_shared = Some(shared);
        }
        if self.orphans.is_some() || self.generation.is_some() || self.inode_high.is_some() {
            let mut s = StateBlock {
                orphan_head: self
                    .orphans
                    .as_ref()
                    .unwrap_or(&self.st.orphans)
                    .first()
                    .copied()
                    .unwrap_or(0)
                    .into(),
                next_generation: self.generation.unwrap_or(self.st.next_generation).into(),
                inode_high: if self.st.persist_books {
                    self.inode_high.unwrap_or(self.st.inode_high)
                } else {
                    self.st.inode_high
                }
                .into(),
                ..Default::default()
            };
            s.seal();
            self.tx
                .write_struct(block_offset(self.st.sb.state_block.get()), &s);
        }
        Ok(())
    }

    /// Lay the extents of a staged inode out inline or in its tree blocks,
    /// reusing the blocks it has, allocating or releasing the difference.
    fn write_extent_tree(&mut self, ino: u64) -> Result<()> {
        let inode = &self.inodes[&ino];
        let n = inode.extents.len();
        // `validate_staged` ran first; the tree below has room for exactly
        // this many records.
        assert!(
            n <= MAX_EXTENTS_PER_FILE,
            "inode {ino}: unchecked extent count {n}"
        );
        let need_leaves = if n <= INLINE_EXTENTS {
            0
        } else {
            n.div_ceil(LEAF_EXTENTS)
        };
        let mut leaves = inode.leaves.clone();
        let mut index = inode.index_block;
        let recs: Vec<ExtentRecord> = if need_leaves > 0 {
            inode
                .extents
                .iter()
                .map(|(l, e)| extent_record(l, e))
                .collect()
        } else {
            Vec::new()
        };
        while leaves.len() > need_leaves {
            let b = leaves.pop().expect("non-empty");
            self.decref(b, 1);
        }
        if need_leaves == 0 && index != 0 {
            self.decref(index, 1);
            index = 0;
        }
        if need_leaves > 0 {
            let want = need_leaves - leaves.len() + usize::from(index == 0);
            let goal = leaves.last().map(|b| b + 1);
            let mut fresh: Vec<u64> = Vec::new();
            for r in self.alloc(want as u64, goal)? {
                fresh.extend(r.start..r.end());
            }
            if index == 0 {
                index = fresh.remove(0);
            }
            leaves.extend(fresh);
            let mut idx = IndexBlock::new_zeroed();
            idx.magic = INDEX_MAGIC.into();
            idx.leaf_count = (leaves.len() as u32).into();
            idx.ino = (ino as u32).into();
            for (i, (&b, chunk)) in leaves.iter().zip(recs.chunks(LEAF_EXTENTS)).enumerate() {
                idx.leaves[i] = b.into();
                let mut leaf = LeafBlock::new_zeroed();
                leaf.magic = LEAF_MAGIC.into();
                leaf.count = (chunk.len() as u32).into();
                leaf.ino = (ino as u32).into();
                leaf.records[..chunk.len()].copy_from_slice(chunk);
                leaf.seal();
                self.tx.write(block_offset(b), leaf.as_bytes());
            }
            idx.seal();
            self.tx.write(block_offset(index), idx.as_bytes());
        }
        let inode = self.inodes.get_mut(&ino).expect("staged");
        inode.leaves = leaves;
        inode.index_block = index;
        Ok(())
    }

    fn install(mut self) {
        // Installed: the blocks it allocated are the file system's now, not
        // to be given back when the `Op` drops.
        self.allocated.clear();
        let inodes = std::mem::take(&mut self.inodes);
        let refs = std::mem::take(&mut self.refs);
        let taken_inodes = std::mem::take(&mut self.taken_inodes);
        let released_inodes = std::mem::take(&mut self.released_inodes);
        let dir_edits = std::mem::take(&mut self.dir_edits);
        let dir_new_slots = std::mem::take(&mut self.dir_new_slots);
        let orphans = self.orphans.take();
        let generation = self.generation.take();
        let new_shared = self.new_shared.take();
        let inode_high = self.inode_high.take();
        let released_blocks = std::mem::take(&mut self.released_blocks);
        let media = self.media;
        let st = &mut *self.st;
        // Live mappings this changes, found before it is installed.
        let remap = super::mmap::affected(st, &inodes, &refs);
        // And on-demand device translations (SPEC §6.4).
        let odp = super::dma::odp_affected(st, &inodes, &refs);
        if let Some(shared) = new_shared {
            st.shared = shared;
        }
        if let Some(high) = inode_high {
            st.inode_high = high;
        }
        for ino in taken_inodes {
            st.free_inodes.remove(&ino);
        }
        for (ino, inode) in inodes {
            if inode.is_dir() {
                st.dirs.entry(ino).or_default();
            }
            st.inodes.insert(ino, inode);
        }
        for (dir, slots) in dir_new_slots {
            if let Some(d) = st.dirs.get_mut(&dir) {
                d.free_slots.extend(d.slots..slots);
                d.slots = slots;
            }
        }
        for (dir, name, e) in dir_edits {
            let Some(d) = st.dirs.get_mut(&dir) else {
                continue;
            };
            match e {
                Some((ino, slot)) => {
                    d.free_slots.remove(&slot);
                    d.entries.insert(name, (ino, slot));
                }
                None => {
                    if let Some((_, slot)) = d.entries.remove(&name) {
                        d.free_slots.insert(slot);
                    }
                }
            }
        }
        for ino in released_inodes {
            st.inodes.remove(&ino);
            st.dirs.remove(&ino);
            st.runtime.remove(&ino);
            st.free_inodes.insert(ino);
        }
        // Free slots at or above the (possibly lowered) mark are not free
        // slots to hand out but unused ones: `new_inode` takes the mark.
        drop(st.free_inodes.split_off(&st.inode_high));
        if let Some(o) = orphans {
            st.orphans = o;
        }
        if let Some(g) = generation {
            st.next_generation = g;
        }
        // Before anyone can allocate what is freed below (the caller holds
        // the state lock), no mapping reaches it any more: re-placed first,
        // so that blocks a mapping that could not be re-placed still reaches
        // are known when they are released.
        let held = super::mmap::replace(st, media, remap);
        // Likewise no on-demand device translation reaches it.
        super::dma::odp_invalidate(odp);
        // Blocks nothing refers to any more go back to free space, unless a
        // pin or a broken mapping still reaches them.
        for r in released_blocks {
            super::mmap::release_blocks(st, &held, r);
        }
    }

    /// Give back what staging took; nothing else reached memory or the pool.
    fn rollback(self) {
        drop(self);
    }
}

impl Drop for Op<'_> {
    /// An `Op` dropped without being installed — rolled back, or abandoned
    /// by an early `?` while staging — returns the blocks it allocated, so a
    /// failed operation leaves free space as it was.
    fn drop(&mut self) {
        for r in self.allocated.drain(..) {
            self.st.alloc.free(r);
        }
    }
}
