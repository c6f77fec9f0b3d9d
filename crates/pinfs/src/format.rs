//! The on-media format: every structure pinfs keeps in a pool, byte by byte.
//!
//! All integers are little-endian and fixed-width ([`U32`], [`U64`]); every
//! structure is `#[repr(C)]` with explicit padding and derives the `zerocopy`
//! traits, so it is read and written as plain bytes, never through references
//! into pool memory. `docs/format.md` is the prose version of this file; keep
//! them in step.
//!
//! Pool layout, in 4 KiB blocks:
//!
//! ```text
//! 0                superblock (written once, by mkfs)
//! 1                state block (orphan list head, inode generation)
//! journal_start    journal header block, then the record area
//! shared_start     shared-run table: (start, len, count) of every block
//!                  shared by reflink; header written by mkfs, nothing else
//! inode_start      inode table, INODE_SIZE bytes per inode; never zeroed:
//!                  only slots below the state block's high-water mark are
//!                  ever read
//! data_start       data blocks (file data, directory data, extent blocks)
//! ```
//!
//! Why this shape (format version 2; version 3 adds symlinks, special files
//! and hard links, no new structure): the cost of mkfs, mount and fsck and
//! the memory of a mounted file system grow with what is used, not with the
//! pool. A block one extent maps has reference count 1 *because* that extent
//! maps it, so only shared blocks have a stored count; free space is what no
//! extent maps, rebuilt at mount from the extent maps. Inode slots are handed
//! out lowest-free-first below a high-water mark that grows as files are
//! created, so mount reads only the slots ever used.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::{Error, Result};

/// Size of a block: the unit of allocation and of the layout.
pub const BLOCK_SIZE: u64 = 4096;
/// log2 of [`BLOCK_SIZE`].
pub const BLOCK_SHIFT: u32 = 12;
/// Blocks in a 2 MiB huge page: large allocations prefer runs aligned to it.
pub const HUGE_BLOCKS: u64 = 512;

/// Superblock magic.
pub const SUPER_MAGIC: [u8; 8] = *b"PINFS\0\r\n";
/// Format version this code writes (mkfs) and reads.
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format version this code also reads: version 2's layout is
/// byte-identical (its reserved inode bytes are zero, which is `rdev` 0),
/// so a version-2 pool mounts, and mount upgrades its superblock to
/// [`FORMAT_VERSION`] (see [`Superblock::upgrade_words`]) before anything
/// of version 3 can be written — a pinfs that reads only version 2 then
/// refuses the pool instead of misreading a symlink as a file.
pub const OLDEST_FORMAT_VERSION: u32 = 2;

// The upgrade rewrites two aligned 8-byte words (version, CRC): each is
// written whole or not at all on persistent memory.
const _: () = assert!(std::mem::offset_of!(Superblock, version) == 8);
const _: () = assert!(std::mem::offset_of!(Superblock, crc) % 8 == 0);
/// State block magic.
pub const STATE_MAGIC: u64 = u64::from_le_bytes(*b"PINFSSTA");
/// Journal header magic.
pub const JOURNAL_MAGIC: u64 = u64::from_le_bytes(*b"PINFSJNL");
/// Extent index block magic.
pub const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"EIDX");
/// Extent leaf block magic.
pub const LEAF_MAGIC: u32 = u32::from_le_bytes(*b"ELEF");
/// Shared-run table magic.
pub const SHARED_MAGIC: u32 = u32::from_le_bytes(*b"PSHR");

/// Size of a shared-run table entry ([`SharedRun`]); the table header
/// ([`SharedHeader`]) is the same size.
pub const SHARED_RUN_SIZE: u64 = 16;
/// Most blocks of the shared-run table (a named limit: bounds the table's
/// share of a transaction and of memory; 256 blocks hold 65,535 runs).
pub const MAX_SHARED_TABLE_BLOCKS: u64 = 256;
/// Pool blocks per shared-run table block chosen by mkfs: one table block
/// (255 runs) per 4 MiB of pool, up to [`MAX_SHARED_TABLE_BLOCKS`] — the
/// most a pool of 1 GiB or more gets.
pub const BLOCKS_PER_SHARED_TABLE_BLOCK: u64 = 1024;

/// Smallest pool mkfs accepts.
pub const MIN_POOL_BYTES: u64 = 4 << 20;
/// Bytes of pool per inode slot chosen by mkfs.
pub const BYTES_PER_INODE: u64 = 16 << 10;
/// Fewest inodes mkfs creates.
pub const MIN_INODES: u64 = 64;
/// Most inodes mkfs creates (inode numbers fit comfortably in 32 bits).
pub const MAX_INODES: u64 = 1 << 24;
/// Inode number of the root directory. Inode 0 is never used.
pub const ROOT_INO: u64 = 1;

/// Size of an inode slot.
pub const INODE_SIZE: u64 = 256;
/// Extents stored in the inode itself.
pub const INLINE_EXTENTS: usize = 6;
/// Extent records in one leaf block.
pub const LEAF_EXTENTS: usize = 170;
/// Leaf pointers in the index block.
pub const INDEX_LEAVES: usize = 510;
/// Most extents one file may have (a named limit: bounds the size of a
/// metadata transaction; `EFBIG` beyond it).
pub const MAX_EXTENTS_PER_FILE: usize = 32 * 1024;
/// Largest file size (SPEC §7; `EFBIG` beyond it).
pub const MAX_FILE_BYTES: u64 = 1 << 50;
/// The largest file in blocks: no extent of a file reaches past block
/// `MAX_FILE_BLOCKS` (preallocation past end of file included).
pub const MAX_FILE_BLOCKS: u64 = MAX_FILE_BYTES / BLOCK_SIZE;

/// Size of a directory entry slot.
pub const DIRENT_SIZE: u64 = 272;
/// Directory entry slots per directory block (slots never straddle blocks).
pub const DIRENTS_PER_BLOCK: u64 = BLOCK_SIZE / DIRENT_SIZE;
/// Longest name.
pub const NAME_MAX: usize = 255;
/// Most entries in one directory.
pub const MAX_DIR_ENTRIES: u64 = 1 << 20;

/// Most references to one block (reflink copies).
pub const MAX_BLOCK_REFS: u32 = u32::MAX - 1;

/// Extent flag: allocated but unwritten (reads as zeros).
pub const EXTENT_UNWRITTEN: u32 = 1;

/// File type bits of `mode`, as in `stat(2)`.
pub const S_IFMT: u32 = 0o170000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Symbolic link: its target is its data (format version 3).
pub const S_IFLNK: u32 = 0o120000;
/// FIFO (named pipe): no data, no blocks (format version 3).
pub const S_IFIFO: u32 = 0o010000;
/// Character device: no data, no blocks; `rdev` names it (format version 3).
pub const S_IFCHR: u32 = 0o020000;
/// Block device: no data, no blocks; `rdev` names it (format version 3).
pub const S_IFBLK: u32 = 0o060000;
/// Unix-domain socket: no data, no blocks (format version 3).
pub const S_IFSOCK: u32 = 0o140000;
/// Set-user-id bit.
pub const S_ISUID: u32 = 0o4000;
/// Set-group-id bit.
pub const S_ISGID: u32 = 0o2000;
/// Sticky bit: in a directory, only a name's owner, the directory's owner or
/// root may remove or rename it.
pub const S_ISVTX: u32 = 0o1000;
/// Group-execute bit (whether `S_ISGID` means "set-group-id" on a file).
pub const S_IXGRP: u32 = 0o010;
/// Longest symbolic link target in bytes (`PATH_MAX` less its NUL).
pub const MAX_SYMLINK: usize = 4095;
/// Most links to one inode (`EMLINK` beyond it); a directory's count
/// includes `.` and each subdirectory's `..`.
pub const MAX_LINKS: u32 = 65_000;

/// The superblock, in block 0. Written once by mkfs and never again, so it
/// cannot be torn by a crash after mkfs.
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Superblock {
    /// [`SUPER_MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`] (or [`OLDEST_FORMAT_VERSION`] for a pool made by
    /// an older pinfs).
    pub version: U32,
    /// [`BLOCK_SIZE`].
    pub block_size: U32,
    /// Blocks in the pool covered by this file system.
    pub total_blocks: U64,
    /// Random identity of this file system.
    pub uuid: [u8; 16],
    /// Creation time, ns since the epoch.
    pub created_ns: U64,
    /// The state block.
    pub state_block: U64,
    /// First block of the journal (its header).
    pub journal_start: U64,
    /// Blocks of the journal, header included.
    pub journal_blocks: U64,
    /// First block of the shared-run table.
    pub shared_start: U64,
    /// Blocks of the shared-run table (1 ..= [`MAX_SHARED_TABLE_BLOCKS`]).
    pub shared_blocks: U64,
    /// First block of the inode table.
    pub inode_start: U64,
    /// Blocks of the inode table.
    pub inode_blocks: U64,
    /// Inode slots (inode numbers are `1..inode_count`).
    pub inode_count: U64,
    /// First data block: the data region is `data_start..total_blocks`.
    pub data_start: U64,
    /// Inode number of the root directory.
    pub root_ino: U64,
    /// Reserved, zero.
    pub reserved: [U64; 4],
    /// CRC-32C of all bytes above.
    pub crc: U32,
    /// Zero.
    pub pad: U32,
}

/// The state block: the few global values metadata operations change.
#[derive(Clone, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StateBlock {
    /// [`STATE_MAGIC`].
    pub magic: U64,
    /// First inode of the orphan list (unlinked while still open), 0 if empty.
    pub orphan_head: U64,
    /// Generation given to the next inode allocated.
    pub next_generation: U64,
    /// Inode high-water mark: no slot at or above it has ever been used
    /// (2 ..= inode slots; mount reads slots `1..inode_high` only).
    pub inode_high: U64,
    /// CRC-32C of the bytes above.
    pub crc: U32,
    /// Zero.
    pub pad: U32,
}

/// The journal header, first bytes of the journal's first block.
///
/// `seq`..`header_crc` lie in one cache line and are covered by `header_crc`,
/// so a torn header write is detected. `applied_seq` lies in the next cache
/// line and is written alone, with one atomic 8-byte store.
#[derive(Clone, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct JournalHeader {
    /// [`JOURNAL_MAGIC`].
    pub magic: U64,
    /// Sequence number of the last committed transaction.
    pub seq: U64,
    /// Bytes of records the committed transaction occupies in the record area.
    pub records_len: U64,
    /// CRC-32C of those record bytes.
    pub records_crc: U32,
    /// CRC-32C of the fields above.
    pub header_crc: U32,
    /// Zero.
    pub pad: [U64; 4],
    /// Sequence number of the last transaction applied in place.
    pub applied_seq: U64,
}

/// Byte offset of [`JournalHeader::applied_seq`] in the header block.
pub const JOURNAL_APPLIED_OFFSET: u64 = 64;

/// A journal record header; `len` bytes of data follow, padded to 8 bytes.
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RecordHeader {
    /// Pool byte offset the data goes to.
    pub offset: U64,
    /// Length of the data.
    pub len: U32,
    /// Zero.
    pub pad: U32,
}

/// One extent: `len` blocks from `physical` mapped at file block `logical`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ExtentRecord {
    /// First file block.
    pub logical: U64,
    /// First pool block.
    pub physical: U64,
    /// Length in blocks (never 0 in a used record).
    pub len: U32,
    /// [`EXTENT_UNWRITTEN`] or 0.
    pub flags: U32,
}

/// An inode slot in the inode table. `mode == 0` marks a free slot.
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InodeRecord {
    /// File type and permission bits; 0 if the slot is free.
    pub mode: U32,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Directory entries referring to this inode (plus `.`/`..` for directories).
    pub nlink: U32,
    /// Size in bytes.
    pub size: U64,
    /// Last access, ns since the epoch.
    pub atime_ns: U64,
    /// Last data change.
    pub mtime_ns: U64,
    /// Last inode change.
    pub ctime_ns: U64,
    /// Generation: distinguishes successive uses of the slot.
    pub generation: U32,
    /// Number of extents.
    pub extent_count: U32,
    /// Extent index block when `extent_count > INLINE_EXTENTS`, else 0.
    pub extent_index: U64,
    /// Next inode on the orphan list, 0 at the end.
    pub orphan_next: U64,
    /// Parent directory (directories only; for `..`).
    pub parent: U64,
    /// Extents when they fit in the inode.
    pub inline: [ExtentRecord; INLINE_EXTENTS],
    /// Device number of a character or block special file; zero for every
    /// other type (format version 3; reserved and zero in version 2).
    pub rdev: U64,
    /// Zero.
    pub reserved: [U64; 2],
    /// CRC-32C of the bytes above.
    pub crc: U32,
    /// Zero.
    pub pad: U32,
}

/// The extent index block: which leaf blocks hold the extents, in order.
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IndexBlock {
    /// [`INDEX_MAGIC`].
    pub magic: U32,
    /// Leaves in use.
    pub leaf_count: U32,
    /// Inode this block belongs to.
    pub ino: U32,
    /// CRC-32C of the whole block with this field zero.
    pub crc: U32,
    /// Leaf block numbers.
    pub leaves: [U64; INDEX_LEAVES],
}

/// An extent leaf block: up to [`LEAF_EXTENTS`] records, packed in order.
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LeafBlock {
    /// [`LEAF_MAGIC`].
    pub magic: U32,
    /// Records in use.
    pub count: U32,
    /// Inode this block belongs to.
    pub ino: U32,
    /// CRC-32C of the whole block with this field zero.
    pub crc: U32,
    /// The records.
    pub records: [ExtentRecord; LEAF_EXTENTS],
}

/// The shared-run table's header, first bytes of its first block; `count`
/// [`SharedRun`] entries follow it directly.
#[derive(Clone, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SharedHeader {
    /// [`SHARED_MAGIC`].
    pub magic: U32,
    /// Entries in use.
    pub count: U32,
    /// CRC-32C of the header (this field as zero) and the `count` entries.
    pub crc: U32,
    /// Zero.
    pub pad: U32,
}

/// A run of shared blocks: `len` blocks from `start`, each with `count`
/// references (≥ 2). Entries are sorted, disjoint and maximal (two runs
/// that touch have different counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SharedRun {
    /// First block.
    pub start: U64,
    /// Length in blocks (> 0).
    pub len: U32,
    /// References to each block of the run (2 ..= [`MAX_BLOCK_REFS`]).
    pub count: U32,
}

/// A directory entry slot. `ino == 0` marks a free slot.
#[derive(Clone, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DirentRecord {
    /// Inode the name refers to, 0 if free.
    pub ino: U64,
    /// Generation of that inode when linked (checked by fsck).
    pub generation: U32,
    /// Length of `name`.
    pub name_len: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// The name bytes (not NUL-terminated).
    pub name: [u8; NAME_MAX + 1],
}

const _: () = {
    assert!(size_of::<Superblock>() <= BLOCK_SIZE as usize);
    assert!(size_of::<JournalHeader>() == 72);
    assert!(size_of::<InodeRecord>() == INODE_SIZE as usize);
    assert!(size_of::<IndexBlock>() == BLOCK_SIZE as usize);
    assert!(size_of::<LeafBlock>() == BLOCK_SIZE as usize);
    assert!(size_of::<DirentRecord>() == DIRENT_SIZE as usize);
    assert!(size_of::<ExtentRecord>() == 24);
    assert!(size_of::<SharedHeader>() == SHARED_RUN_SIZE as usize);
    assert!(size_of::<SharedRun>() == SHARED_RUN_SIZE as usize);
};

/// CRC of a shared-run table: its header with the CRC field as zero, then
/// the entries' bytes.
pub fn shared_table_crc(header: &SharedHeader, entries: &[u8]) -> u32 {
    let mut h = header.clone();
    h.crc = 0.into();
    crc32c::crc32c_append(crc32c::crc32c(h.as_bytes()), entries)
}

/// CRC-32C of `bytes`.
pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC-32C of a structure whose trailing CRC field covers the bytes before it.
pub fn crc_before(bytes: &[u8], crc_offset: usize) -> u32 {
    crc(&bytes[..crc_offset])
}

/// CRC-32C of a block whose CRC field at `crc_offset` counts as zero.
pub fn crc_with_hole(bytes: &[u8], crc_offset: usize) -> u32 {
    let mut c = crc32c::crc32c(&bytes[..crc_offset]);
    c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &bytes[crc_offset + 4..])
}

/// Decode a structure from bytes read from the pool.
pub fn decode<T: FromBytes>(bytes: &[u8], what: &str) -> Result<T> {
    T::read_from_prefix(bytes)
        .map(|(v, _)| v)
        .map_err(|_| Error::corrupt(format!("{what}: short read")))
}

impl Superblock {
    /// Byte offset of the CRC field.
    pub const CRC_OFFSET: usize = std::mem::offset_of!(Superblock, crc);

    /// Seal the CRC.
    pub fn seal(&mut self) {
        self.crc = crc_before(self.as_bytes(), Self::CRC_OFFSET).into();
    }

    /// Whether the CRC matches, or would match with the version being the
    /// other one a pool may have ([`OLDEST_FORMAT_VERSION`] or
    /// [`FORMAT_VERSION`]): a crash during the upgrade leaves one of its
    /// two words written — such a superblock is whole, of either version.
    fn crc_ok_across_upgrade(&self) -> bool {
        [self.version.get(), OLDEST_FORMAT_VERSION, FORMAT_VERSION]
            .into_iter()
            .any(|v| {
                let mut other = self.clone();
                other.version = v.into();
                self.crc.get() == crc_before(other.as_bytes(), Self::CRC_OFFSET)
            })
    }

    /// The writes that upgrade this superblock to [`FORMAT_VERSION`]:
    /// `(offset, 8 bytes)` for the word holding the version, then the word
    /// holding the CRC — each an aligned 8-byte store, to be made durable
    /// in this order (every crash state is accepted by
    /// [`Superblock::validate`]). `None` when there is nothing to do.
    pub fn upgrade_words(&self) -> Option<[(u64, [u8; 8]); 2]> {
        let mut new = self.clone();
        new.version = FORMAT_VERSION.into();
        new.seal();
        if new.as_bytes() == self.as_bytes() {
            return None;
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&new.as_bytes()[at..at + 8]);
            (at as u64, w)
        };
        Some([word(8), word(Self::CRC_OFFSET)])
    }

    /// Check magic, version, CRC and the layout's arithmetic against a pool of
    /// `pool_bytes`. A failure names what is wrong.
    pub fn validate(&self, pool_bytes: u64) -> Result<()> {
        if self.magic != SUPER_MAGIC {
            return Err(Error::Foreign {
                what: "no pinfs superblock (bad magic)".into(),
            });
        }
        if !self.crc_ok_across_upgrade() || self.pad.get() != 0 {
            return Err(Error::corrupt("superblock checksum mismatch"));
        }
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.version.get()) {
            return Err(Error::Foreign {
                what: format!(
                    "format version {} (this pinfs reads version {FORMAT_VERSION} and version {OLDEST_FORMAT_VERSION})",
                    self.version.get()
                ),
            });
        }
        if u64::from(self.block_size.get()) != BLOCK_SIZE {
            return Err(Error::corrupt(format!(
                "superblock: block size {} (expected {BLOCK_SIZE})",
                self.block_size.get()
            )));
        }
        let total = self.total_blocks.get();
        if total.checked_mul(BLOCK_SIZE).is_none_or(|b| b > pool_bytes) {
            return Err(Error::corrupt(format!(
                "superblock: file system of {total} blocks does not fit the pool of {pool_bytes} bytes (truncated pool?)"
            )));
        }
        // The regions must follow each other in order, each inside the pool.
        let regions = [
            ("state block", self.state_block.get(), 1),
            (
                "journal",
                self.journal_start.get(),
                self.journal_blocks.get(),
            ),
            (
                "shared-run table",
                self.shared_start.get(),
                self.shared_blocks.get(),
            ),
            (
                "inode table",
                self.inode_start.get(),
                self.inode_blocks.get(),
            ),
        ];
        let mut next = 1u64;
        for (name, start, len) in regions {
            if start != next || len == 0 {
                return Err(Error::corrupt(format!("superblock: {name} misplaced")));
            }
            next = start
                .checked_add(len)
                .filter(|&e| e <= total)
                .ok_or_else(|| Error::corrupt(format!("superblock: {name} outside the pool")))?;
        }
        if self.data_start.get() != next || next >= total {
            return Err(Error::corrupt("superblock: data region misplaced"));
        }
        if self.journal_blocks.get() < 2 {
            return Err(Error::corrupt("superblock: journal too small"));
        }
        if self.shared_blocks.get() > MAX_SHARED_TABLE_BLOCKS {
            return Err(Error::corrupt("superblock: shared-run table size"));
        }
        let ic = self.inode_count.get();
        if !(2..=MAX_INODES + 1).contains(&ic)
            || self.inode_blocks.get() != (ic * INODE_SIZE).div_ceil(BLOCK_SIZE)
        {
            return Err(Error::corrupt("superblock: inode table size"));
        }
        if self.root_ino.get() != ROOT_INO {
            return Err(Error::corrupt("superblock: root inode"));
        }
        Ok(())
    }

    /// Blocks in the data region.
    pub fn data_blocks(&self) -> u64 {
        self.total_blocks.get() - self.data_start.get()
    }

    /// Pool byte offset of inode `ino`'s slot.
    pub fn inode_offset(&self, ino: u64) -> u64 {
        self.inode_start.get() * BLOCK_SIZE + ino * INODE_SIZE
    }

    /// Pool byte offset of the shared-run table (its header).
    pub fn shared_offset(&self) -> u64 {
        self.shared_start.get() * BLOCK_SIZE
    }

    /// Most entries the shared-run table holds.
    pub fn shared_capacity(&self) -> u64 {
        (self.shared_blocks.get() * BLOCK_SIZE) / SHARED_RUN_SIZE - 1
    }

    /// Is `block..block+len` inside the data region?
    pub fn is_data_range(&self, block: u64, len: u64) -> bool {
        block >= self.data_start.get()
            && block
                .checked_add(len)
                .is_some_and(|e| e <= self.total_blocks.get())
    }
}

/// The layout mkfs chooses for a pool of `pool_bytes`.
pub fn plan_layout(pool_bytes: u64) -> Result<Superblock> {
    if pool_bytes < MIN_POOL_BYTES {
        return Err(Error::Errno(crate::Errno::EINVAL));
    }
    let total = pool_bytes / BLOCK_SIZE;
    let inode_count = (pool_bytes / BYTES_PER_INODE).clamp(MIN_INODES, MAX_INODES) + 1;
    let inode_blocks = (inode_count * INODE_SIZE).div_ceil(BLOCK_SIZE);
    let shared_blocks = total
        .div_ceil(BLOCKS_PER_SHARED_TABLE_BLOCK)
        .clamp(1, MAX_SHARED_TABLE_BLOCKS);
    // The journal must hold the largest transaction: the whole shared-run
    // table rewritten, plus two extent maps of the largest file, plus room
    // for the inodes, directory slots and state block around them.
    let max_map_bytes = (MAX_EXTENTS_PER_FILE.div_ceil(LEAF_EXTENTS) as u64 + 1) * BLOCK_SIZE;
    let journal_bytes =
        (shared_blocks * BLOCK_SIZE * 2 + 2 * max_map_bytes + (1 << 20)).clamp(2 << 20, 256 << 20);
    let journal_blocks = (journal_bytes / BLOCK_SIZE).min(total / 4);
    let state_block = 1;
    let journal_start = 2;
    let shared_start = journal_start + journal_blocks;
    let data_start = shared_start + shared_blocks + inode_blocks;
    if data_start + 64 > total {
        return Err(Error::Errno(crate::Errno::EINVAL));
    }
    let mut sb = Superblock {
        magic: SUPER_MAGIC,
        version: FORMAT_VERSION.into(),
        block_size: (BLOCK_SIZE as u32).into(),
        total_blocks: total.into(),
        uuid: [0; 16],
        created_ns: 0.into(),
        state_block: state_block.into(),
        journal_start: journal_start.into(),
        journal_blocks: journal_blocks.into(),
        shared_start: shared_start.into(),
        shared_blocks: shared_blocks.into(),
        inode_start: (shared_start + shared_blocks).into(),
        inode_blocks: inode_blocks.into(),
        inode_count: inode_count.into(),
        data_start: data_start.into(),
        root_ino: ROOT_INO.into(),
        reserved: [0.into(); 4],
        crc: 0.into(),
        pad: 0.into(),
    };
    sb.seal();
    Ok(sb)
}

impl StateBlock {
    const CRC_OFFSET: usize = std::mem::offset_of!(StateBlock, crc);

    /// Seal the CRC.
    pub fn seal(&mut self) {
        self.magic = STATE_MAGIC.into();
        self.crc = crc_before(self.as_bytes(), Self::CRC_OFFSET).into();
    }

    /// Check magic, CRC and that the inode high-water mark lies in the
    /// inode table of `sb`.
    pub fn validate(&self, sb: &Superblock) -> Result<()> {
        if self.magic.get() != STATE_MAGIC {
            return Err(Error::corrupt("state block: bad magic"));
        }
        if self.crc.get() != crc_before(self.as_bytes(), Self::CRC_OFFSET) {
            return Err(Error::corrupt("state block: checksum mismatch"));
        }
        if !(ROOT_INO + 1..=sb.inode_count.get()).contains(&self.inode_high.get()) {
            return Err(Error::corrupt(format!(
                "state block: inode high-water mark {} outside the inode table",
                self.inode_high.get()
            )));
        }
        Ok(())
    }
}

impl JournalHeader {
    const CRC_OFFSET: usize = std::mem::offset_of!(JournalHeader, header_crc);

    /// Seal the header CRC.
    pub fn seal(&mut self) {
        self.magic = JOURNAL_MAGIC.into();
        self.header_crc = crc_before(self.as_bytes(), Self::CRC_OFFSET).into();
    }

    /// Whether the CRC matches (a torn commit leaves it mismatched).
    pub fn is_sealed(&self) -> bool {
        self.header_crc.get() == crc_before(self.as_bytes(), Self::CRC_OFFSET)
    }
}

impl InodeRecord {
    const CRC_OFFSET: usize = std::mem::offset_of!(InodeRecord, crc);

    /// A free slot.
    pub fn free() -> Self {
        Self::new_zeroed()
    }

    /// Seal the CRC (free slots are all zero, CRC included).
    pub fn seal(&mut self) {
        self.crc = if self.mode.get() == 0 {
            0.into()
        } else {
            crc_before(self.as_bytes(), Self::CRC_OFFSET).into()
        };
    }

    /// Check the CRC of a used slot.
    pub fn crc_ok(&self) -> bool {
        let want = if self.mode.get() == 0 {
            0
        } else {
            crc_before(self.as_bytes(), Self::CRC_OFFSET)
        };
        self.crc.get() == want
    }
}

impl IndexBlock {
    const CRC_OFFSET: usize = std::mem::offset_of!(IndexBlock, crc);
    /// Seal the CRC.
    pub fn seal(&mut self) {
        self.crc = 0.into();
        self.crc = crc_with_hole(self.as_bytes(), Self::CRC_OFFSET).into();
    }
    /// Check magic and CRC.
    pub fn crc_ok(&self) -> bool {
        self.magic.get() == INDEX_MAGIC
            && self.crc.get() == crc_with_hole(self.as_bytes(), Self::CRC_OFFSET)
    }
}

impl LeafBlock {
    const CRC_OFFSET: usize = std::mem::offset_of!(LeafBlock, crc);
    /// Seal the CRC.
    pub fn seal(&mut self) {
        self.crc = 0.into();
        self.crc = crc_with_hole(self.as_bytes(), Self::CRC_OFFSET).into();
    }
    /// Check magic and CRC.
    pub fn crc_ok(&self) -> bool {
        self.magic.get() == LEAF_MAGIC
            && self.crc.get() == crc_with_hole(self.as_bytes(), Self::CRC_OFFSET)
    }
}

impl DirentRecord {
    /// An entry for `name` → `ino`.
    pub fn new(name: &[u8], ino: u64, generation: u32) -> Self {
        let mut d = Self::new_zeroed();
        d.ino = ino.into();
        d.generation = generation.into();
        d.name_len = name.len() as u8;
        d.name[..name.len()].copy_from_slice(name);
        d
    }

    /// The name bytes, or `None` when the length is out of range.
    pub fn name(&self) -> Option<&[u8]> {
        let n = usize::from(self.name_len);
        (n > 0 && n <= NAME_MAX).then(|| &self.name[..n])
    }
}

/// Pool byte offset of block `block`.
pub fn block_offset(block: u64) -> u64 {
    block * BLOCK_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_validate() {
        for mib in [4u64, 5, 8, 64, 256, 1024, 64 * 1024] {
            let bytes = mib << 20;
            let sb = plan_layout(bytes).unwrap();
            sb.validate(bytes).unwrap();
            assert!(sb.data_blocks() > sb.total_blocks.get() / 2, "{mib} MiB");
        }
        assert!(plan_layout(1 << 20).is_err());
    }

    #[test]
    fn superblock_damage_detected() {
        let sb = plan_layout(8 << 20).unwrap();
        let bytes = sb.as_bytes().to_vec();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let s: Superblock = decode(&b, "sb").unwrap();
            assert!(s.validate(8 << 20).is_err(), "byte {i}");
        }
        assert!(sb.validate(4 << 20).is_err(), "truncated pool");
    }

    #[test]
    fn crcs() {
        let mut ino = InodeRecord::free();
        assert!(ino.crc_ok());
        ino.mode = (S_IFREG | 0o644).into();
        ino.seal();
        assert!(ino.crc_ok());
        ino.size = 5.into();
        assert!(!ino.crc_ok());
        let mut leaf = LeafBlock::new_zeroed();
        leaf.magic = LEAF_MAGIC.into();
        leaf.seal();
        assert!(leaf.crc_ok());
        leaf.records[3].len = 1.into();
        assert!(!leaf.crc_ok());
    }
}
