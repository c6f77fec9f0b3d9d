//! Reading a pool into memory (mount) and checking it (fsck).
//!
//! Nothing read from the pool is trusted: every number is range-checked
//! before it is used as an index or an offset, and every structure's CRC is
//! verified, so a damaged or foreign pool fails with an error naming what is
//! wrong — never a panic, never an out-of-bounds access. [`check`] then
//! cross-checks the structures against each other (the shared-run table
//! against the extents that use each block, free space against them, link
//! counts against directory entries, the directory tree, the orphan list);
//! mount refuses a pool with any problem, and `pinfs fsck` lists them all.
//!
//! Both read and check only what is used: the inode slots below the
//! high-water mark, the extent maps, the shared runs — time and memory
//! proportional to files and extents, never to the pool's size.

use std::collections::{BTreeSet, HashMap};

use zerocopy::FromBytes;

use super::extent::{Extent, ExtentMap};
use super::shared::SharedRuns;
use super::state::{Dir, FsState, Inode};
use crate::alloc::{Allocator, Run};
use crate::format::*;
use crate::journal::{Journal, Recovery};
use crate::media::Media;
use crate::{Error, Result};

/// Read and validate everything; replay the journal first.
pub(crate) fn load(media: &dyn Media) -> Result<(FsState, Recovery)> {
    if media.len_bytes() < BLOCK_SIZE {
        return Err(Error::Foreign {
            what: format!(
                "pool of {} bytes is too small to hold a superblock",
                media.len_bytes()
            ),
        });
    }
    let mut raw = vec![0u8; size_of::<Superblock>()];
    media.read(0, &mut raw)?;
    let sb: Superblock = decode(&raw, "superblock")?;
    sb.validate(media.len_bytes())?;
    let (journal, recovery) =
        Journal::recover(media, sb.journal_start.get(), sb.journal_blocks.get())?;

    let mut raw = vec![0u8; size_of::<StateBlock>()];
    media.read(block_offset(sb.state_block.get()), &mut raw)?;
    let state: StateBlock = decode(&raw, "state block")?;
    state.validate(&sb)?;
    let shared = SharedRuns::load(media, &sb)?;

    let mut inodes = HashMap::new();
    let mut free_inodes = BTreeSet::new();
    let count = sb.inode_count.get();
    // Only the slots ever used; the rest of the table was never written.
    let high = state.inode_high.get();
    let mut table = vec![0u8; (high * INODE_SIZE) as usize];
    media.read(block_offset(sb.inode_start.get()), &mut table)?;
    for ino in 1..high {
        let at = (ino * INODE_SIZE) as usize;
        let rec: InodeRecord = decode(&table[at..at + INODE_SIZE as usize], "inode")?;
        if rec.mode.get() == 0 {
            free_inodes.insert(ino);
            continue;
        }
        if !rec.crc_ok() {
            return Err(Error::corrupt(format!("inode {ino}: checksum mismatch")));
        }
        let inode = load_inode(media, &sb, ino, &rec)?;
        inodes.insert(ino, inode);
    }
    let mut dirs = HashMap::new();
    for inode in inodes.values() {
        if inode.is_dir() {
            dirs.insert(inode.ino, load_dir(media, &sb, inode, &inodes)?);
        }
    }
    let alloc = free_space(&sb, &inodes);
    // The orphan list, bounded by the number of inodes so a cycle cannot loop.
    let mut orphans = Vec::new();
    let mut at = state.orphan_head.get();
    while at != 0 {
        let Some(inode) = inodes.get(&at) else {
            return Err(Error::corrupt(format!(
                "orphan list: inode {at} is not in use"
            )));
        };
        if orphans.len() as u64 >= count || orphans.contains(&at) {
            return Err(Error::corrupt("orphan list: cycle"));
        }
        orphans.push(at);
        at = inode.orphan_next;
    }
    let st = FsState {
        sb,
        journal,
        inodes,
        free_inodes,
        dirs,
        alloc,
        shared,
        inode_high: high,
        orphans,
        next_generation: state.next_generation.get(),
        runtime: HashMap::new(),
        pins: Default::default(),
        protect_pinned: true,
        shut_down: false,
        shut_down_on_journal_error: true,
        validate_commits: true,
        check_generation: true,
        persist_books: true,
        maps: Default::default(),
        dma: Default::default(),
    };
    Ok((st, recovery))
}

/// Every block a file uses — its extents and extent-tree blocks — as runs
/// sorted by start (a shared block appears once per use).
fn used_runs<'a>(inodes: impl Iterator<Item = &'a Inode>) -> Vec<Run> {
    let mut used = Vec::new();
    for inode in inodes {
        for (_, e) in inode.extents.iter() {
            used.push(Run {
                start: e.physical,
                len: e.len,
            });
        }
        for b in inode.tree_blocks() {
            used.push(Run { start: b, len: 1 });
        }
    }
    used.sort_unstable();
    used
}

/// Free space: the data region less every block a file uses. Time
/// proportional to the extents.
fn free_space(sb: &Superblock, inodes: &HashMap<u64, Inode>) -> Allocator {
    let mut alloc = Allocator::new();
    let mut at = sb.data_start.get();
    for r in used_runs(inodes.values()) {
        if r.start > at {
            alloc.free(Run {
                start: at,
                len: r.start - at,
            });
        }
        at = at.max(r.end());
    }
    let total = sb.total_blocks.get();
    if total > at {
        alloc.free(Run {
            start: at,
            len: total - at,
        });
    }
    alloc
}

/// How many uses each block has, as maximal runs of equal count ≥ 1:
/// (start, len, count), in order. A sweep over the extents' ends.
fn use_counts(used: &[Run]) -> Vec<(u64, u64, u64)> {
    let mut edges: Vec<(u64, i64)> = Vec::with_capacity(used.len() * 2);
    for r in used {
        edges.push((r.start, 1));
        edges.push((r.end(), -1));
    }
    edges.sort_unstable();
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut depth = 0i64;
    let mut i = 0;
    while i < edges.len() {
        let at = edges[i].0;
        while i < edges.len() && edges[i].0 == at {
            depth += edges[i].1;
            i += 1;
        }
        let Some(&(next, _)) = edges.get(i) else {
            break;
        };
        if depth > 0 {
            let c = depth as u64;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == at && last.2 == c => last.1 += next - at,
                _ => out.push((at, next - at, c)),
            }
        }
    }
    out
}

fn load_inode(media: &dyn Media, sb: &Superblock, ino: u64, rec: &InodeRecord) -> Result<Inode> {
    let bad = |what: &str| Error::corrupt(format!("inode {ino}: {what}"));
    let mode = rec.mode.get();
    let n = rec.extent_count.get() as usize;
    // Bounds what is read below; `Inode::validate` names the limit again.
    if n > MAX_EXTENTS_PER_FILE {
        return Err(bad("too many extents"));
    }
    let mut records = Vec::with_capacity(n);
    let mut leaves = Vec::new();
    let index = rec.extent_index.get();
    if index == 0 {
        if n > INLINE_EXTENTS {
            return Err(bad("extent count exceeds inline space but no index block"));
        }
        records.extend_from_slice(&rec.inline[..n]);
    } else {
        if n <= INLINE_EXTENTS || !sb.is_data_range(index, 1) {
            return Err(bad("extent index block out of range"));
        }
        let mut raw = vec![0u8; BLOCK_SIZE as usize];
        media.read(block_offset(index), &mut raw)?;
        let idx = IndexBlock::read_from_bytes(&raw).map_err(|_| bad("index block"))?;
        if !idx.crc_ok() || u64::from(idx.ino.get()) != ino {
            return Err(bad("extent index block damaged"));
        }
        let lc = idx.leaf_count.get() as usize;
        if lc != n.div_ceil(LEAF_EXTENTS) {
            return Err(bad("extent index leaf count"));
        }
        for (i, b) in idx.leaves[..lc].iter().enumerate() {
            let b = b.get();
            if !sb.is_data_range(b, 1) {
                return Err(bad("extent leaf block out of range"));
            }
            media.read(block_offset(b), &mut raw)?;
            let leaf = LeafBlock::read_from_bytes(&raw).map_err(|_| bad("leaf block"))?;
            let want = if i + 1 < lc {
                LEAF_EXTENTS
            } else {
                n - LEAF_EXTENTS * i
            };
            if !leaf.crc_ok()
                || u64::from(leaf.ino.get()) != ino
                || leaf.count.get() as usize != want
            {
                return Err(bad("extent leaf block damaged"));
            }
            records.extend_from_slice(&leaf.records[..want]);
            leaves.push(b);
        }
    }
    let mut extents = ExtentMap::new();
    let mut next_logical = 0u64;
    for r in &records {
        let (l, p, len) = (r.logical.get(), r.physical.get(), u64::from(r.len.get()));
        // Only what building the map needs (non-empty, in order, block
        // numbers whose sums cannot overflow); everything else is
        // `Inode::validate`'s, below.
        let Some(end) = l
            .checked_add(len)
            .filter(|_| len > 0 && l >= next_logical && sb.is_data_range(p, len))
        else {
            return Err(bad(&format!(
                "extent {l}+{len}@{p} invalid or out of order"
            )));
        };
        if r.flags.get() & !EXTENT_UNWRITTEN != 0 {
            return Err(bad("unknown extent flags"));
        }
        next_logical = end;
        extents.map(
            l,
            Extent {
                physical: p,
                len,
                unwritten: r.flags.get() & EXTENT_UNWRITTEN != 0,
            },
        );
    }
    let inode = Inode {
        ino,
        generation: rec.generation.get(),
        mode,
        uid: rec.uid.get(),
        gid: rec.gid.get(),
        nlink: rec.nlink.get(),
        size: rec.size.get(),
        atime_ns: rec.atime_ns.get(),
        mtime_ns: rec.mtime_ns.get(),
        ctime_ns: rec.ctime_ns.get(),
        parent: rec.parent.get(),
        orphan_next: rec.orphan_next.get(),
        rdev: rec.rdev.get(),
        extents,
        index_block: index,
        leaves,
    };
    // The same validation every operation passes before it commits.
    inode.validate(sb).map_err(|v| bad(&v.message()))?;
    Ok(inode)
}

fn load_dir(
    media: &dyn Media,
    sb: &Superblock,
    inode: &Inode,
    inodes: &HashMap<u64, Inode>,
) -> Result<Dir> {
    let ino = inode.ino;
    let bad = |what: String| Error::corrupt(format!("directory {ino}: {what}"));
    // Its size and blocks passed `Inode::validate` (`load_inode`).
    let blocks = inode.size / BLOCK_SIZE;
    let count = sb.inode_count.get();
    let mut dir = Dir {
        slots: blocks * DIRENTS_PER_BLOCK,
        ..Default::default()
    };
    let mut raw = vec![0u8; BLOCK_SIZE as usize];
    for logical in 0..blocks {
        let Some((l, e)) = inode.extents.lookup(logical) else {
            return Err(bad(format!("block {logical} is a hole")));
        };
        if e.unwritten {
            return Err(bad(format!("block {logical} is unwritten")));
        }
        media.read(block_offset(e.physical + logical - l), &mut raw)?;
        for i in 0..DIRENTS_PER_BLOCK {
            let slot = logical * DIRENTS_PER_BLOCK + i;
            let at = (i * DIRENT_SIZE) as usize;
            let d = DirentRecord::read_from_bytes(&raw[at..at + DIRENT_SIZE as usize])
                .map_err(|_| bad("entry".into()))?;
            let target = d.ino.get();
            if target == 0 {
                dir.free_slots.insert(slot);
                continue;
            }
            let Some(name) = d.name() else {
                return Err(bad(format!("slot {slot}: bad name length")));
            };
            if target >= count
                || name.contains(&b'/')
                || name.contains(&0)
                || name == b"."
                || name == b".."
            {
                return Err(bad(format!("slot {slot}: invalid entry")));
            }
            // The entry was made for one use of the slot: a different
            // generation means the name points at a reused inode.
            if inodes
                .get(&target)
                .is_some_and(|t| t.generation != d.generation.get())
            {
                return Err(bad(format!(
                    "slot {slot}: entry for an older use of inode {target}"
                )));
            }
            if dir.entries.insert(name.into(), (target, slot)).is_some() {
                return Err(bad(format!(
                    "duplicate name {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
        }
    }
    Ok(dir)
}

/// Cross-check the loaded structures. Returns one line per problem.
pub(crate) fn check(st: &FsState) -> Vec<String> {
    let mut problems = Vec::new();
    let sb = &st.sb;
    // Reference counts: every block's uses, from every extent and tree
    // block, against the shared-run table (a block used more than once is
    // there with that count; a block used once is not) and against free
    // space (no used block is free or busy; every other block is).
    let counts = use_counts(&used_runs(st.inodes.values()));
    let want: Vec<(u64, u64, u64)> = counts.iter().copied().filter(|r| r.2 > 1).collect();
    let have: Vec<(u64, u64, u64)> = st
        .shared
        .iter()
        .map(|(s, l, c)| (s, l, u64::from(c)))
        .collect();
    if want != have {
        let mut shown = 0;
        for r in have.iter().filter(|r| !want.contains(r)) {
            if shown < 10 {
                problems.push(format!(
                    "shared-run table: blocks {}+{} with count {}, but the files use them otherwise",
                    r.0, r.1, r.2
                ));
            }
            shown += 1;
        }
        for r in want.iter().filter(|r| !have.contains(r)) {
            if shown < 10 {
                problems.push(format!(
                    "blocks {}+{}: used {} times, but the shared-run table does not say so",
                    r.0, r.1, r.2
                ));
            }
            shown += 1;
        }
        if shown > 10 {
            problems.push(format!("... {} more shared-run differences", shown - 10));
        }
    }
    let mut used_blocks = 0u64;
    let mut overlapping = 0u64;
    for &(start, len, _) in &counts {
        used_blocks += len;
        if st.alloc.overlaps_unused(Run { start, len }) {
            if overlapping < 10 {
                problems.push(format!("blocks {start}+{len}: used by a file but free"));
            }
            overlapping += 1;
        }
    }
    let accounted = used_blocks + st.alloc.free_blocks() + st.alloc.busy_blocks();
    if overlapping == 0 && accounted != sb.data_blocks() {
        problems.push(format!(
            "{} data blocks are neither used, free nor busy",
            sb.data_blocks().abs_diff(accounted)
        ));
    }
    // Directory entries: targets exist with matching generation; link counts.
    let mut links: HashMap<u64, u64> = HashMap::new();
    let mut parent_of: HashMap<u64, u64> = HashMap::new();
    for (&dir, d) in &st.dirs {
        for (name, &(target, _)) in &d.entries {
            let name = String::from_utf8_lossy(name);
            let Some(t) = st.inodes.get(&target) else {
                problems.push(format!(
                    "directory {dir}: entry {name:?} refers to free inode {target}"
                ));
                continue;
            };
            *links.entry(target).or_default() += 1;
            if t.is_dir() {
                *links.entry(dir).or_default() += 1; // the child's ".."
                if parent_of.insert(target, dir).is_some() {
                    problems.push(format!("directory {target} has more than one name"));
                }
                if t.parent != dir {
                    problems.push(format!(
                        "directory {target}: parent {} but named in {dir}",
                        t.parent
                    ));
                }
            }
        }
    }
    for inode in st.inodes.values() {
        let ino = inode.ino;
        let mut want = links.get(&ino).copied().unwrap_or(0);
        if inode.is_dir() {
            want += 1; // "."
            if ino == ROOT_INO {
                want += 1; // the root's ".." is itself
            }
        }
        let orphan = st.orphans.contains(&ino);
        if u64::from(inode.nlink) != want {
            problems.push(format!(
                "inode {ino}: link count {} but {want} links found",
                inode.nlink
            ));
        }
        if inode.nlink == 0 && !orphan {
            problems.push(format!("inode {ino}: unlinked but not on the orphan list"));
        }
        if orphan && inode.nlink != 0 {
            problems.push(format!("inode {ino}: on the orphan list but still linked"));
        }
        // Mount ran it on what it read; run it again on what is in memory
        // now (a mounted file system's check), so a test after every
        // operation sees what the next mount would.
        if let Err(v) = inode.validate(sb) {
            problems.push(format!("inode {ino}: {}", v.message()));
        }
    }
    match st.inodes.get(&ROOT_INO) {
        Some(r) if r.is_dir() => {}
        _ => problems.push("root directory missing".into()),
    }
    // Every directory reaches the root through its parents.
    for &dir in st.dirs.keys() {
        let mut at = dir;
        let mut steps = 0;
        while at != ROOT_INO {
            match parent_of.get(&at) {
                Some(&p) if steps < st.dirs.len() => {
                    at = p;
                    steps += 1;
                }
                _ => {
                    problems.push(format!("directory {dir} is not connected to the root"));
                    break;
                }
            }
        }
    }
    problems
}
