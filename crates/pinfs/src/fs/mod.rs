//! The file system: files, directories and their layout in a pool (SPEC §7).
//!
//! [`Fs`] is a mounted file system. Metadata lives in memory as a mirror of
//! the pool (`state`), behind one reader-writer lock: reads and in-place
//! writes of already-allocated, unshared blocks take it shared and touch the
//! media directly (no system call, no copy beyond the one into the caller's
//! buffer); every layout change takes it exclusively and goes through a
//! staged `state::Op` committed by the journal, so it is atomic across
//! crashes and durable when it returns.
//!
//! Layout changes all funnel through the functions of `ops.rs`, so the lease
//! and pin machinery has one place to intervene.

mod dma;
mod extent;
mod falloc;
mod load;
mod mmap;
mod node;
mod ops;
mod pins;
mod shared;
mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

pub use self::dma::{Registration, RegistrationId, RegistrationInfo, MAX_REGISTRATIONS};
pub use self::extent::{Extent, ExtentMap, Segment};
pub use self::falloc::FallocMode;
pub use self::mmap::{FAULT_AROUND_BYTES, MAX_MAPPINGS};
pub use self::node::{
    Groups, Node, RenameFlags, SetAttr, TimeSet, MAX_GROUPS, MAX_LINKS, MAX_NAME, MAX_SYMLINK,
};
pub use self::pins::Pin;
use self::state::{FsState, Op};
use crate::format::{self, *};
use crate::journal::{Journal, Recovery};
use crate::lease::{BreakOptions, ByteRange, FileKey, LayoutChangeGuard, LeaseEngine, OwnerId};
use crate::media::Media;
pub use crate::pin::TruncatePolicy;
use crate::{Errno, Error, Result};

/// Who performs an operation: credentials for permission checks, and the
/// owner (an actor, process or client) that leases and pins are attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cred {
    /// User id; 0 bypasses permission checks.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups: permission checks treat each like `gid`.
    pub groups: Groups,
    /// Owner identity for leases and pins.
    pub owner: u64,
}

impl Cred {
    /// Root, owner 0.
    pub const ROOT: Cred = Cred::root_as(0);

    /// Root (uid and gid 0) acting as actor `owner`: root processes differ
    /// only in who holds their leases, pins and mappings.
    pub const fn root_as(owner: u64) -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            groups: Groups::NONE,
            owner,
        }
    }

    /// Whether `gid` is the caller's group or one of its supplementary
    /// groups (`in_group_p`).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(gid)
    }
}

/// How a file is opened (`open(2)` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OpenFlags {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// `O_CREAT`.
    pub create: bool,
    /// `O_EXCL`.
    pub exclusive: bool,
    /// `O_TRUNC`.
    pub truncate: bool,
    /// `O_NONBLOCK`: lease breaks return `EWOULDBLOCK` instead of waiting.
    pub nonblocking: bool,
}

impl OpenFlags {
    /// `O_RDONLY`.
    pub const RDONLY: OpenFlags = OpenFlags {
        read: true,
        write: false,
        create: false,
        exclusive: false,
        truncate: false,
        nonblocking: false,
    };
    /// `O_RDWR`.
    pub const RDWR: OpenFlags = OpenFlags {
        read: true,
        write: true,
        ..Self::RDONLY
    };
    /// `O_RDWR | O_CREAT`.
    pub const CREATE: OpenFlags = OpenFlags {
        create: true,
        ..Self::RDWR
    };
}

/// `stat` of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stat {
    /// Inode number.
    pub ino: u64,
    /// Generation of the inode slot.
    pub generation: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 4 KiB blocks mapped (written or unwritten).
    pub blocks: u64,
    /// Extents in the block map.
    pub extents: u64,
    /// Access time, ns.
    pub atime_ns: u64,
    /// Modification time, ns.
    pub mtime_ns: u64,
    /// Change time, ns.
    pub ctime_ns: u64,
    /// Device number of a character or block special file, else 0.
    pub rdev: u64,
}

impl Stat {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// The file system object this describes.
    pub fn node(&self) -> Node {
        Node {
            ino: self.ino,
            generation: self.generation,
        }
    }
}

/// `statfs` of the file system, in 4 KiB blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StatFs {
    /// Data blocks.
    pub blocks: u64,
    /// Free data blocks.
    pub free: u64,
    /// Blocks held back as busy extents (neither free nor in any file).
    pub busy: u64,
    /// Inode slots.
    pub inodes: u64,
    /// Free inode slots.
    pub free_inodes: u64,
    /// The file system shut down after a journal error and is read-only
    /// ([`Fs::is_shut_down`]).
    pub read_only: bool,
}

/// One extent as `fiemap` reports it, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FiemapExtent {
    /// File offset.
    pub logical: u64,
    /// Pool offset.
    pub physical: u64,
    /// Length.
    pub len: u64,
    /// Allocated, unwritten.
    pub unwritten: bool,
    /// Shared with another file or range (reflinked).
    pub shared: bool,
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DirEntry {
    /// Name: the bytes of the directory entry, not necessarily UTF-8 (a
    /// name any caller created must come back as it is, so a lookup of it
    /// finds the file); [`DirEntry::name_lossy`] for printing.
    #[cfg_attr(feature = "serde", serde(with = "serde_bytes"))]
    pub name: Vec<u8>,
    /// Inode.
    pub ino: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Its file type: the `S_IFMT` bits of its mode.
    pub kind: u32,
}

impl DirEntry {
    /// The name for printing: invalid UTF-8 replaced by U+FFFD (never to
    /// look the entry up with).
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// What `fsck` found.
#[derive(Clone, Debug)]
pub struct FsckReport {
    /// What the journal recovery did.
    pub recovery: Recovery,
    /// Problems, one line each; empty when consistent.
    pub problems: Vec<String>,
    /// Inodes in use.
    pub inodes: u64,
    /// Data blocks in use.
    pub used_blocks: u64,
}

/// Options chosen at mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// How long a lease holder has to give up a lease after notification;
    /// zero means breakers wait indefinitely (SPEC §2, default 45 s).
    pub break_time: Duration,
    /// What layout changes do to blocks long-term pins still reach.
    pub policy: TruncatePolicy,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            break_time: Duration::from_secs(45),
            policy: TruncatePolicy::Defer,
        }
    }
}

/// A mounted file system.
pub struct Fs {
    media: Arc<dyn Media>,
    state: RwLock<FsState>,
    next_handle: AtomicU64,
    leases: LeaseEngine,
    policy: TruncatePolicy,
    /// Bumped and notified at every unpin (the `wait` policy waits on it).
    unpins: parking_lot::Mutex<u64>,
    unpinned: parking_lot::Condvar,
    /// The thread answering page faults of mappings, started by the first
    /// mapping that needs it.
    faults: parking_lot::Mutex<Option<crate::map::fault::FaultService>>,
}

impl Drop for Fs {
    fn drop(&mut self) {
        if let Some(flag) = self.media.mount_flag() {
            flag.store(false, Ordering::Release);
        }
    }
}

/// A media seen through a view that refuses every change (`EROFS`): fsck of
/// a mounted pool must not write to it.
#[derive(Debug)]
struct ReadOnlyView<'a>(&'a dyn Media);

impl Media for ReadOnlyView<'_> {
    fn caps(&self) -> crate::media::MediaCaps {
        self.0.caps()
    }
    fn len_bytes(&self) -> u64 {
        self.0.len_bytes()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(offset, buf)
    }
    fn write(&self, _offset: u64, _data: &[u8]) -> Result<()> {
        Err(Errno::EROFS.into())
    }
    fn fill(&self, _offset: u64, _len: u64, _byte: u8) -> Result<()> {
        Err(Errno::EROFS.into())
    }
    fn write_u64(&self, _offset: u64, _value: u64) -> Result<()> {
        Err(Errno::EROFS.into())
    }
    fn flush(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(Errno::EROFS.into())
    }
    fn fence(&self) {}
}

/// The in-process claim on a media (SPEC §7: a pool has one mount at a time;
/// see [`Media::mount_flag`]). Given back when dropped, unless kept — then
/// the mounted `Fs` gives it back when it is dropped.
struct MountClaim<'a> {
    flag: Option<&'a std::sync::atomic::AtomicBool>,
}

impl<'a> MountClaim<'a> {
    fn take(media: &'a dyn Media) -> Result<Self> {
        let flag = media.mount_flag();
        if let Some(f) = flag {
            if f.swap(true, Ordering::AcqRel) {
                return Err(Error::media(
                    "pool is already mounted by this process; a pool has one mount at a time",
                    std::io::Error::from_raw_os_error(libc::EBUSY),
                ));
            }
        }
        Ok(MountClaim { flag })
    }

    /// The claim now belongs to the `Fs` just built.
    fn keep(mut self) {
        self.flag = None;
    }
}

impl Drop for MountClaim<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.flag {
            f.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("media", &self.media)
            .finish_non_exhaustive()
    }
}

/// An open file (an open file description). Closing is dropping it.
#[derive(Debug)]
pub struct Handle {
    fs: Arc<Fs>,
    id: u64,
    ino: u64,
    generation: u32,
    key: FileKey,
    cred: Cred,
    flags: OpenFlags,
}

/// The lease engine's name for a file: inode number and generation, so a
/// reused inode slot is a different file.
fn file_key(ino: u64, generation: u32) -> FileKey {
    FileKey(ino | u64::from(generation) << 32)
}

fn break_options(nonblocking: bool) -> BreakOptions {
    if nonblocking {
        BreakOptions::nonblocking()
    } else {
        BreakOptions::blocking()
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Split an absolute path into its components.
fn components(path: &str) -> Result<Vec<&[u8]>> {
    if !path.starts_with('/') {
        return Err(Errno::EINVAL.into());
    }
    let parts: Vec<&[u8]> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::as_bytes)
        .collect();
    for p in &parts {
        if p.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG.into());
        }
        if *p == b".." {
            // Paths are absolute and canonical inside the file system.
            return Err(Errno::EINVAL.into());
        }
    }
    Ok(parts)
}

/// Access bits for [`FsState::may`].
const MAY_READ: u32 = 4;
const MAY_WRITE: u32 = 2;
const MAY_EXEC: u32 = 1;

impl FsState {
    fn may(&self, cred: &Cred, ino: u64, want: u32) -> Result<()> {
        let i = self.inode(ino)?;
        if cred.uid == 0 {
            return Ok(());
        }
        let bits = if cred.uid == i.uid {
            i.mode >> 6
        } else if cred.in_group(i.gid) {
            i.mode >> 3
        } else if cred.groups.is_truncated() {
            // Membership unknown (groups were dropped): only what the
            // group and the other bits both allow — a 0604 file of one of
            // the dropped groups must stay unreadable to its members.
            i.mode >> 3 & i.mode
        } else {
            i.mode
        } & 7;
        if bits & want == want {
            Ok(())
        } else {
            Err(Errno::EACCES.into())
        }
    }

    /// Resolve every component of `parts`, checking search permission.
    fn walk(&self, cred: &Cred, parts: &[&[u8]]) -> Result<u64> {
        let mut at = ROOT_INO;
        for p in parts {
            let dir = self.dirs.get(&at).ok_or(Errno::ENOTDIR)?;
            self.may(cred, at, MAY_EXEC)?;
            at = dir.entries.get(*p).ok_or(Errno::ENOENT)?.0;
        }
        Ok(at)
    }

    /// Resolve the parent directory of `path` and return it with the last name.
    fn walk_parent<'p>(&self, cred: &Cred, path: &'p str) -> Result<(u64, &'p [u8])> {
        let parts = components(path)?;
        let (name, dirs) = parts.split_last().ok_or(Errno::EEXIST)?;
        let dir = self.walk(cred, dirs)?;
        if !self.dirs.contains_key(&dir) {
            return Err(Errno::ENOTDIR.into());
        }
        Ok((dir, name))
    }

    fn stat(&self, ino: u64) -> Result<Stat> {
        let i = self.inode(ino)?;
        let lazy = self
            .runtime
            .get(&ino)
            .map_or(0, |r| r.lazy_mtime_ns.load(Ordering::Relaxed));
        Ok(Stat {
            ino,
            generation: i.generation,
            mode: i.mode,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: i.extents.mapped_blocks(),
            extents: i.extents.len() as u64,
            atime_ns: i.atime_ns,
            mtime_ns: i.mtime_ns.max(lazy),
            ctime_ns: i.ctime_ns.max(lazy),
            rdev: i.rdev,
        })
    }
}

impl Fs {
    /// `EINVAL` with a message saying so for a pool of `len_bytes` too small
    /// for a file system (below [`format::MIN_POOL_BYTES`]): what `mkfs`
    /// checks, for callers that want to refuse before creating a pool.
    pub fn check_pool_size(len_bytes: u64) -> Result<()> {
        if len_bytes < format::MIN_POOL_BYTES {
            return Err(Error::media(
                format!(
                    "a pool of {len_bytes} bytes is too small for a file system (at least {} MiB)",
                    format::MIN_POOL_BYTES >> 20
                ),
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        Ok(())
    }

    /// Create an empty file system on `media` (mkfs). A pool smaller than
    /// [`format::MIN_POOL_BYTES`] is `EINVAL`, with a message saying so.
    pub fn mkfs(media: &dyn Media) -> Result<()> {
        Self::check_pool_size(media.len_bytes())?;
        let mut sb = format::plan_layout(media.len_bytes())?;
        let now = now_ns();
        sb.created_ns = now.into();
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&now.to_le_bytes());
        uuid[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        sb.uuid = crc_mix(uuid);
        sb.seal();
        use zerocopy::IntoBytes;
        // Only what mount reads is written — a cost independent of the
        // pool's size: the state block, the journal header, an empty
        // shared-run table and the root's inode slot. The inode table is
        // not zeroed (mount reads only slots below the high-water mark,
        // each written whole when first used), nor the journal's record
        // area (nothing past a clean header is read).
        media.fill(0, BLOCK_SIZE, 0)?;
        Journal::format(media, sb.journal_start.get())?;
        let mut state = format::StateBlock {
            next_generation: 1.into(),
            inode_high: (ROOT_INO + 1).into(),
            ..Default::default()
        };
        state.seal();
        media.fill(block_offset(sb.state_block.get()), BLOCK_SIZE, 0)?;
        media.write(block_offset(sb.state_block.get()), state.as_bytes())?;
        let shared = shared::SharedRuns::default().encode();
        media.write(sb.shared_offset(), &shared)?;
        // The root directory: an inode with no blocks.
        let root = state::Inode {
            ino: ROOT_INO,
            generation: 0,
            mode: S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            parent: ROOT_INO,
            orphan_next: 0,
            rdev: 0,
            extents: ExtentMap::new(),
            index_block: 0,
            leaves: Vec::new(),
        };
        media.write(sb.inode_offset(ROOT_INO), root.record().as_bytes())?;
        media.flush(0, 2 * BLOCK_SIZE)?;
        media.flush(sb.shared_offset(), shared.len() as u64)?;
        media.flush(sb.inode_offset(ROOT_INO), INODE_SIZE)?;
        media.fence();
        // The superblock last: a pool without one is not a file system.
        media.write(0, sb.as_bytes())?;
        media.flush(0, BLOCK_SIZE)?;
        media.fence();
        Ok(())
    }

    /// Mount the file system on `media`: replay the journal, load and check
    /// the metadata, and free the blocks of orphans left by a crash.
    pub fn mount(media: Arc<dyn Media>) -> Result<Arc<Fs>> {
        Self::mount_with(media, MountOptions::default())
    }

    /// Mount with options.
    pub fn mount_with(media: Arc<dyn Media>, options: MountOptions) -> Result<Arc<Fs>> {
        // Claimed before journal recovery writes anything; given back if
        // the mount fails, else when the `Fs` is dropped.
        let claim = MountClaim::take(&*media)?;
        let (mut st, recovery) = load::load(&*media)?;
        if recovery != Recovery::Clean {
            tracing::info!(?recovery, "journal recovery");
        }
        let problems = load::check(&st);
        if let Some(first) = problems.first() {
            return Err(Error::corrupt(format!(
                "{first}{} (run pinfs fsck)",
                if problems.len() > 1 {
                    format!(" and {} more problems", problems.len() - 1)
                } else {
                    String::new()
                }
            )));
        }
        // A version-2 pool (or one whose upgrade a crash interrupted)
        // becomes version 3 before anything of version 3 is written to it.
        if let Some(words) = st.sb.upgrade_words() {
            for (at, word) in words {
                media.write(at, &word)?;
                media.flush(at, 8)?;
                media.fence();
            }
            st.sb.version = FORMAT_VERSION.into();
            st.sb.seal();
            tracing::info!("pool upgraded to format version {FORMAT_VERSION}");
        }
        // From here the `Fs` owns the claim (its `Drop` gives it back).
        claim.keep();
        let fs = Arc::new(Fs {
            media,
            state: RwLock::new(st),
            next_handle: AtomicU64::new(1),
            leases: LeaseEngine::new(options.break_time),
            policy: options.policy,
            unpins: parking_lot::Mutex::new(0),
            unpinned: parking_lot::Condvar::new(),
            faults: parking_lot::Mutex::new(None),
        });
        fs.reap_orphans()?;
        Ok(fs)
    }

    /// The pool's bytes as committed now: copied under the state lock, so
    /// no transaction is half-applied in the copy (data written in place
    /// meanwhile may or may not be in it). What a crash now would leave on
    /// media that persist every store; for diagnostics and tests — it copies
    /// the whole pool.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.media.len_bytes()).map_err(|_| Errno::EFBIG)?;
        let mut image = vec![0u8; len];
        let _st = self.state.read();
        self.media.read(0, &mut image)?;
        Ok(image)
    }

    /// What [`Fs::fsck`] says of the mounted pool as committed now (fsck of
    /// the media itself is refused while it is mounted). Read under the
    /// state lock, so no transaction is in flight, through a view that
    /// refuses every write: between commits the journal is clean and fsck
    /// writes nothing; should it need to (a shut-down file system with a
    /// transaction to replay), it checks a [`snapshot`](Fs::snapshot)
    /// instead.
    pub fn fsck_snapshot(&self) -> Result<FsckReport> {
        {
            let _st = self.state.read();
            match Self::check_media(&ReadOnlyView(&*self.media)) {
                Err(e) if e.errno() == Errno::EROFS => {}
                done => return done,
            }
        }
        let image = self.snapshot()?;
        Self::check_media(&crate::media::RecordingMedia::from_image(image))
    }

    /// Check a pool without changing it beyond journal recovery. Refused
    /// with `EBUSY` while the media is mounted ([`Fs::fsck_snapshot`]
    /// checks a mounted one).
    pub fn fsck(media: &dyn Media) -> Result<FsckReport> {
        let _claim = MountClaim::take(media)?;
        Self::check_media(media)
    }

    fn check_media(media: &dyn Media) -> Result<FsckReport> {
        let (st, recovery) = load::load(media)?;
        let problems = load::check(&st);
        Ok(FsckReport {
            recovery,
            problems,
            inodes: st.inodes.len() as u64,
            used_blocks: st.sb.data_blocks() - st.alloc.free_blocks() - st.alloc.busy_blocks(),
        })
    }

    fn reap_orphans(&self) -> Result<()> {
        let mut st = self.state.write();
        let orphans = st.orphans.clone();
        for ino in orphans {
            tracing::info!(ino, "freeing orphan left by a crash");
            let mut op = Op::new(&mut st, &*self.media);
            op.free_inode(ino)?;
            op.commit()?;
        }
        Ok(())
    }

    /// The media the file system lives on.
    pub fn media(&self) -> &Arc<dyn Media> {
        &self.media
    }

    /// The lease engine of this file system.
    pub fn leases(&self) -> &LeaseEngine {
        &self.leases
    }

    /// The one entry point of every layout change (SPEC §3.2): break the
    /// layout leases of others over `range` of file `ino` and wait per the
    /// protocol. Must be called before taking the state lock; the returned
    /// guard holds off new conflicting layout leases until the change is done.
    pub(crate) fn layout_change(
        &self,
        node: Node,
        range: ByteRange,
        owner: u64,
        nonblocking: bool,
    ) -> Result<LayoutChangeGuard> {
        self.layout_change_bounded(node, range, owner, nonblocking, None)
    }

    /// The node file `ino` is now: for callers that hold the file open (a
    /// handle, a mapping, a pin), whose slot cannot be reused meanwhile.
    pub(crate) fn node_of(&self, ino: u64) -> Result<Node> {
        let st = self.state.read();
        Ok(Node {
            ino,
            generation: st.inode(ino)?.generation,
        })
    }

    /// [`Fs::layout_change`], its lease breaks forced by `deadline` at the
    /// latest when the operation fixed one (SPEC §3.3.5).
    pub(crate) fn layout_change_bounded(
        &self,
        node: Node,
        range: ByteRange,
        owner: u64,
        nonblocking: bool,
        deadline: Option<crate::lease::BreakDeadline>,
    ) -> Result<LayoutChangeGuard> {
        // A shut-down file system changes nothing, so it breaks no lease
        // either: every layout change is refused here, before any break.
        self.writable()?;
        // The leases of the file `node` names, never of a later file in
        // its slot (`ESTALE`).
        self.state.read().node(node)?;
        let key = file_key(node.ino, node.generation);
        let opts = break_options(nonblocking);
        let opts = match deadline {
            Some(d) => opts.until(d),
            None => opts,
        };
        Ok(self
            .leases
            .begin_layout_change(key, range, OwnerId(owner), &opts)?)
    }

    /// Resolve `path` to the object it names (the last component is not
    /// followed: the path API follows no symlink anywhere, and one in the
    /// middle of a path is `ENOTDIR`, as any non-directory there).
    fn resolve(&self, cred: &Cred, path: &str) -> Result<Node> {
        let st = self.state.read();
        let ino = st.walk(cred, &components(path)?)?;
        Ok(Node {
            ino,
            generation: st.inode(ino)?.generation,
        })
    }

    /// Resolve the directory holding the last component of `path`, and
    /// that component (`EEXIST` for `/` itself, as `mkdir /` is).
    fn resolve_parent<'p>(&self, cred: &Cred, path: &'p str) -> Result<(Node, &'p [u8])> {
        let st = self.state.read();
        let (dir, name) = st.walk_parent(cred, path)?;
        Ok((
            Node {
                ino: dir,
                generation: st.inode(dir)?.generation,
            },
            name,
        ))
    }

    /// Run a path operation: a walk, then a node function. The object may
    /// be removed (and its slot reused) between the two, which the node
    /// function reports as `ESTALE`; a path names whatever is there now, so
    /// the walk is retried (a bounded number of times).
    fn by_path<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        const PATH_RETRIES: usize = 8;
        let mut tries = 0;
        loop {
            match f() {
                Err(e) if e.errno() == Errno::ESTALE && tries < PATH_RETRIES => tries += 1,
                done => return done,
            }
        }
    }

    /// `truncate(2)` by path: breaks every open lease (by removal), then
    /// changes the layout ([`Fs::setattr`] with a size).
    pub fn truncate_path(&self, cred: Cred, path: &str, size: u64) -> Result<()> {
        self.by_path(|| {
            let node = self.resolve(&cred, path)?;
            self.setattr(
                cred,
                node,
                &SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                },
            )
        })
        .map(drop)
    }

    /// Open (and maybe create) `path` ([`Fs::create_in`], or a walk and
    /// [`Fs::open_node`]).
    pub fn open(
        self: &Arc<Self>,
        cred: Cred,
        path: &str,
        flags: OpenFlags,
        mode: u32,
    ) -> Result<Handle> {
        self.by_path(|| {
            if flags.create && components(path)?.is_empty() {
                // `/` exists, and `O_CREAT` never opens a directory.
                return Err(if flags.exclusive {
                    Errno::EEXIST
                } else {
                    Errno::EISDIR
                }
                .into());
            }
            if flags.create {
                let (dir, name) = self.resolve_parent(&cred, path)?;
                self.create_in(cred, dir, name, mode, flags).map(|(h, _)| h)
            } else {
                // The walk checks search permission on every directory, as
                // `lookup` would on the last one.
                let node = self.resolve(&cred, path)?;
                self.open_node(cred, node, flags)
            }
        })
    }

    /// Remove a name of a non-directory ([`Fs::unlink_in`]); its blocks are
    /// freed when it has no links and nothing keeps it open.
    pub fn unlink(&self, cred: Cred, path: &str) -> Result<()> {
        self.by_path(|| {
            let (dir, name) = self.resolve_parent(&cred, path)?;
            self.unlink_in(cred, dir, name)
        })
    }

    /// Create a directory ([`Fs::mkdir_in`]).
    pub fn mkdir(&self, cred: Cred, path: &str, mode: u32) -> Result<()> {
        self.by_path(|| {
            let (dir, name) = self.resolve_parent(&cred, path)?;
            self.mkdir_in(cred, dir, name, mode).map(drop)
        })
    }

    /// Remove an empty directory ([`Fs::rmdir_in`]).
    pub fn rmdir(&self, cred: Cred, path: &str) -> Result<()> {
        self.by_path(|| {
            let (dir, name) = self.resolve_parent(&cred, path)?;
            self.rmdir_in(cred, dir, name)
        })
    }

    /// Rename `from` to `to`, replacing `to` if it exists (POSIX rules;
    /// [`Fs::rename_in`]).
    pub fn rename(&self, cred: Cred, from: &str, to: &str) -> Result<()> {
        self.by_path(|| {
            let (fdir, fname) = self.resolve_parent(&cred, from)?;
            let (tdir, tname) = self.resolve_parent(&cred, to)?;
            self.rename_in(cred, fdir, fname, tdir, tname, RenameFlags::default())
        })
    }

    /// List a directory, sorted by name ([`Fs::readdir_node`]).
    pub fn readdir(&self, cred: Cred, path: &str) -> Result<Vec<DirEntry>> {
        self.by_path(|| {
            let node = self.resolve(&cred, path)?;
            self.readdir_node(cred, node)
        })
    }

    /// `stat` a path (`lstat`: a symlink is reported, not followed).
    pub fn stat(&self, cred: Cred, path: &str) -> Result<Stat> {
        let st = self.state.read();
        let ino = st.walk(&cred, &components(path)?)?;
        st.stat(ino)
    }

    /// Change permission bits (owner or root; [`Fs::setattr`]).
    pub fn chmod(&self, cred: Cred, path: &str, mode: u32) -> Result<()> {
        self.by_path(|| {
            let node = self.resolve(&cred, path)?;
            self.setattr(
                cred,
                node,
                &SetAttr {
                    mode: Some(mode),
                    ..SetAttr::default()
                },
            )
        })
        .map(drop)
    }

    /// Change owner and group (root; or the owner changing the group to one
    /// of its own; [`Fs::setattr`]).
    pub fn chown(&self, cred: Cred, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        self.by_path(|| {
            let node = self.resolve(&cred, path)?;
            self.setattr(
                cred,
                node,
                &SetAttr {
                    uid,
                    gid,
                    ..SetAttr::default()
                },
            )
        })
        .map(drop)
    }

    /// Space in 4 KiB blocks.
    pub fn statfs(&self) -> StatFs {
        let st = self.state.read();
        StatFs {
            blocks: st.sb.data_blocks(),
            free: st.alloc.free_blocks(),
            busy: st.alloc.busy_blocks(),
            inodes: st.sb.inode_count.get() - 1,
            free_inodes: st.free_inode_count(),
            read_only: st.shut_down,
        }
    }

    /// Whether the file system has shut down: a commit failed after its
    /// commit point (a flush of the journal failed once the transaction was
    /// durable), so memory holds what the pool will replay and every change
    /// since fails with `EIO`; reads still work. Remounting the pool
    /// replays the transaction and makes it writable again.
    pub fn is_shut_down(&self) -> bool {
        self.state.read().shut_down
    }

    /// Test-only negative control: operations commit inodes without the
    /// validation mount runs, so a test can show that what it guards
    /// against (a pool mount refuses) really happens without it.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_commit_validation_for_tests(&self) {
        self.state.write().validate_commits = false;
    }

    /// Test-only negative control: commits no longer write the shared-run
    /// table or the inode high-water mark to the pool (memory still follows
    /// them), so a test can show that a pool without them is refused.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn skip_format_books_for_tests(&self) {
        self.state.write().persist_books = false;
    }

    /// Test-only negative control: a commit that fails after its commit
    /// point no longer shuts the file system down, so a test can show the
    /// damage the shutdown prevents.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn disable_shutdown_for_tests(&self) {
        self.state.write().shut_down_on_journal_error = false;
    }

    /// `EIO` once the file system has shut down: checked by every change
    /// before it breaks a lease or writes anything (`Op::commit` checks
    /// again, for the paths that reach it directly).
    pub(crate) fn writable(&self) -> Result<()> {
        if self.state.read().shut_down {
            Err(Errno::EIO.into())
        } else {
            Ok(())
        }
    }

    /// Cross-check the mounted metadata (the checks fsck runs).
    pub fn check(&self) -> Vec<String> {
        load::check(&self.state.read())
    }

    /// Journal statistics since mount.
    pub fn journal_stats(&self) -> crate::journal::JournalStats {
        self.state.read().journal.stats()
    }
}

/// Update a directory's times.
fn touch_dir(op: &mut Op<'_>, dir: u64, now: u64) -> Result<()> {
    let d = op.inode_mut(dir)?;
    d.mtime_ns = now;
    d.ctime_ns = now;
    Ok(())
}

/// Drop one link of `ino`; free it, or orphan it while it is still open.
fn drop_link(op: &mut Op<'_>, ino: u64, now: u64) -> Result<()> {
    let open = op.st.in_use(ino);
    let i = op.inode_mut(ino)?;
    i.nlink -= 1;
    i.ctime_ns = now;
    if i.nlink == 0 {
        if open {
            op.orphan_add(ino)?;
        } else {
            op.free_inode(ino)?;
        }
    }
    Ok(())
}

/// Mix the bytes of a uuid seed (the uuid only needs to differ between pools).
fn crc_mix(seed: [u8; 16]) -> [u8; 16] {
    let a = format::crc(&seed);
    let b = format::crc(&a.to_le_bytes());
    let mut out = seed;
    out[..4].copy_from_slice(&a.to_le_bytes());
    out[12..].copy_from_slice(&b.to_le_bytes());
    out
}
