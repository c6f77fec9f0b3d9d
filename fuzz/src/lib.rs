//! The `mount_image` fuzz target's logic: build a pool image from fuzz bytes,
//! then fsck it, mount it and operate on it — nothing may panic.
//!
//! Random bytes alone almost never get past the superblock's magic and CRC,
//! so most inputs instead damage a real pool: a 4 MiB image made once by
//! [`Template::build`] (directories, small files, a reflink, a fragmented
//! file whose extents spill into an index block and two leaf blocks, a
//! directory spanning two blocks, a symlink, a FIFO, a character device, a
//! second name of a file, and an orphan: unlinked while open), and
//! the fuzz bytes are patches aimed at its metadata regions. Patches may be
//! followed by a *reseal* that recomputes every checksum, so the damage
//! reaches the code behind the checksums (geometry checks, extent and
//! directory validation, journal replay, the cross-checks of fsck).
//!
//! # Input format
//!
//! Byte 0 is a set of flags:
//!
//! - bits 0–1: `0` — the rest of the input is the whole image (raw bytes);
//!   otherwise the rest is a list of patches to the template;
//! - bit 2: start from the *replay* template, whose journal holds a committed
//!   transaction not yet applied (mount replays it);
//! - bit 3: reseal the checksums after patching;
//! - bit 4: patches XOR their bytes in instead of overwriting.
//!
//! A patch is `region: u8, offset: u32 LE, len: u8, bytes[len]`. `region`
//! indexes [`Template::regions`] (modulo their count) and `offset` is taken
//! modulo the region's length; bytes past the region's end are dropped.
//! Region `0xff` instead truncates the image to `offset % (len + 1)` bytes
//! after patching and resealing.
//!
//! # What is checked
//!
//! - `Fs::fsck` and `Fs::mount` return, with an error whose message is not
//!   empty, or with success; they never panic.
//! - When mount succeeds, fsck of the same image found no problem, and after
//!   a series of operations (every result is accepted, errors included) the
//!   file system is still consistent (`Fs::check` is empty) and its image
//!   mounts again, consistent.
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use pinfs::format::{
    self, IndexBlock, InodeRecord, JournalHeader, LeafBlock, StateBlock, Superblock, BLOCK_SIZE,
    INODE_SIZE, JOURNAL_APPLIED_OFFSET, SharedHeader, SHARED_RUN_SIZE,
};
use pinfs::fs::{Cred, FallocMode, Fs, Handle, OpenFlags};
use pinfs::media::RecordingMedia;
use zerocopy::{FromBytes, IntoBytes};

/// Size of the template pool (the smallest mkfs accepts).
pub const TEMPLATE_BYTES: u64 = 4 << 20;

/// Region index that truncates the image instead of patching it.
const TRUNCATE: u8 = 0xff;

/// Most directories and files `operate` visits, so one input stays fast.
const MAX_VISIT_DIRS: usize = 32;
const MAX_VISIT_FILES: usize = 16;
/// Most bytes `operate` reads from one file.
const MAX_READ_BYTES: usize = 64 << 10;

/// How a region's checksum is recomputed by a reseal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// No checksum (directory slots, data).
    None,
    /// The superblock's CRC.
    Superblock,
    /// The state block's magic and CRC.
    State,
    /// The journal header: CRC of the committed records and header CRC.
    JournalHeader,
    /// One inode slot's CRC.
    Inode,
    /// An extent index block's magic and CRC.
    Index,
    /// An extent leaf block's magic and CRC.
    Leaf,
    /// The shared-run table's CRC (header and the entries it counts).
    Shared,
}

/// A metadata structure of the template that patches aim at.
#[derive(Clone, Debug)]
pub struct Region {
    /// What it is, for humans.
    pub name: String,
    /// Pool byte offset.
    pub start: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// How a reseal fixes its checksum.
    pub seal: Seal,
}

/// The pool images inputs start from, and where their metadata lies.
pub struct Template {
    /// A consistent image with content (and an orphan to reap).
    pub image: Vec<u8>,
    /// The same with `applied_seq` one behind `seq`: mount replays the last
    /// committed transaction (the orphan's unlink), as after a crash between
    /// steps 3 and 4 of the commit protocol.
    pub replay: Vec<u8>,
    /// Metadata regions, in a fixed order.
    pub regions: Vec<Region>,
    /// Journal geometry, for resealing the header.
    journal_area: u64,
    journal_area_bytes: u64,
}

impl Template {
    /// The template, built on first use.
    pub fn get() -> &'static Template {
        static T: OnceLock<Template> = OnceLock::new();
        T.get_or_init(|| Template::build().expect("building the template pool must work"))
    }

    /// mkfs a pool, fill it, and map its metadata.
    pub fn build() -> pinfs::Result<Template> {
        let media = Arc::new(RecordingMedia::new(TEMPLATE_BYTES));
        Fs::mkfs(&*media)?;
        let fs = Fs::mount(media.clone())?;
        let root = Cred::ROOT;
        fs.mkdir(root, "/dir", 0o755)?;
        fs.mkdir(root, "/dir/sub", 0o755)?;
        write_file(&fs, "/a", &[(0, 10_000)])?;
        write_file(&fs, "/dir/b", &[(0, 5_000)])?;
        write_file(&fs, "/dir/sub/c", &[(0, 3 * BLOCK_SIZE as usize)])?;
        // Every other block: 8 extents (> 6 inline) need an index and a leaf;
        // 200 extents need two leaves (170 per leaf).
        let frag: Vec<(u64, usize)> = (0..16).step_by(2).map(|b| (b * BLOCK_SIZE, 100)).collect();
        write_file(&fs, "/frag", &frag)?;
        let big: Vec<(u64, usize)> = (0..400).step_by(2).map(|b| (b * BLOCK_SIZE, 64)).collect();
        write_file(&fs, "/dir/big", &big)?;
        // Enough names for /dir to need a second block (15 slots per block).
        for i in 0..20 {
            drop(fs.open(root, &format!("/dir/e{i:02}"), OpenFlags::CREATE, 0o644)?);
        }
        let src = fs.open(root, "/a", OpenFlags::RDONLY, 0)?;
        let dst = fs.open(root, "/r", OpenFlags::CREATE, 0o644)?;
        dst.reflink(&src, None)?;
        drop((src, dst));
        // Format version 3's file types: a symlink (its target in a data
        // block), special files (a device's number in its inode) and a
        // second name of /a.
        let dir = fs.lookup(root, fs.root(), b"dir")?.node();
        fs.symlink_in(root, dir, b"link", b"../a")?;
        fs.mknod_in(root, dir, b"fifo", format::S_IFIFO | 0o644, 0)?;
        fs.mknod_in(root, fs.root(), b"chr", format::S_IFCHR | 0o600, 0x0105)?;
        let a = fs.lookup(root, fs.root(), b"a")?.node();
        fs.link_in(root, a, dir, b"a2")?;
        let orphan = fs.open(root, "/orphan", OpenFlags::CREATE, 0o644)?;
        orphan.pwrite(0, &[7u8; 2 * BLOCK_SIZE as usize])?;
        fs.unlink(root, "/orphan")?;
        // The image while the orphan is open: the next mount must reap it.
        let image = media.image();
        drop(orphan);
        drop(fs);

        let sb: Superblock = format::decode(&image, "superblock")?;
        let journal_header = sb.journal_start.get() * BLOCK_SIZE;
        let journal_area = journal_header + BLOCK_SIZE;
        let journal_area_bytes = (sb.journal_blocks.get() - 1) * BLOCK_SIZE;
        let header: JournalHeader =
            format::decode(&image[journal_header as usize..], "journal header")?;
        let mut replay = image.clone();
        let at = (journal_header + JOURNAL_APPLIED_OFFSET) as usize;
        replay[at..at + 8].copy_from_slice(&(header.seq.get() - 1).to_le_bytes());

        let mut regions = vec![
            region("superblock", 0, BLOCK_SIZE, Seal::Superblock),
            region(
                "state block",
                sb.state_block.get() * BLOCK_SIZE,
                BLOCK_SIZE,
                Seal::State,
            ),
            region(
                "journal header",
                journal_header,
                size_of::<JournalHeader>() as u64,
                Seal::JournalHeader,
            ),
            region(
                "journal records",
                journal_area,
                header.records_len.get().max(64),
                Seal::None,
            ),
            region(
                "shared-run table",
                sb.shared_start.get() * BLOCK_SIZE,
                sb.shared_blocks.get() * BLOCK_SIZE,
                Seal::Shared,
            ),
            region(
                "inode table",
                sb.inode_start.get() * BLOCK_SIZE,
                sb.inode_blocks.get() * BLOCK_SIZE,
                Seal::None,
            ),
        ];
        for ino in 1..sb.inode_count.get() {
            let at = sb.inode_offset(ino);
            let rec: InodeRecord = format::decode(&image[at as usize..], "inode")?;
            if rec.mode.get() == 0 {
                continue;
            }
            regions.push(region(&format!("inode {ino}"), at, INODE_SIZE, Seal::Inode));
            let index = rec.extent_index.get();
            let mut blocks = Vec::new();
            if index != 0 {
                regions.push(region(
                    &format!("inode {ino} index"),
                    index * BLOCK_SIZE,
                    BLOCK_SIZE,
                    Seal::Index,
                ));
                let idx: IndexBlock =
                    format::decode(&image[(index * BLOCK_SIZE) as usize..], "index")?;
                for &leaf in &idx.leaves[..idx.leaf_count.get() as usize] {
                    let leaf = leaf.get();
                    regions.push(region(
                        &format!("inode {ino} leaf"),
                        leaf * BLOCK_SIZE,
                        BLOCK_SIZE,
                        Seal::Leaf,
                    ));
                    let l: LeafBlock =
                        format::decode(&image[(leaf * BLOCK_SIZE) as usize..], "leaf")?;
                    blocks.extend(
                        l.records[..l.count.get() as usize]
                            .iter()
                            .map(|r| r.physical.get()),
                    );
                }
            } else {
                let n = (rec.extent_count.get() as usize).min(rec.inline.len());
                blocks.extend(rec.inline[..n].iter().map(|r| r.physical.get()));
            }
            let is_dir = rec.mode.get() & format::S_IFMT == format::S_IFDIR;
            // Every directory block; the first data block of a file.
            let take = if is_dir {
                blocks.len()
            } else {
                blocks.len().min(1)
            };
            for b in &blocks[..take] {
                let what = if is_dir {
                    "directory block"
                } else {
                    "data block"
                };
                regions.push(region(
                    &format!("inode {ino} {what}"),
                    b * BLOCK_SIZE,
                    BLOCK_SIZE,
                    Seal::None,
                ));
            }
        }
        regions.push(region("whole pool", 0, image.len() as u64, Seal::None));
        Ok(Template {
            image,
            replay,
            regions,
            journal_area,
            journal_area_bytes,
        })
    }

    /// Build the image an input describes (see the module docs).
    pub fn image_for(&self, data: &[u8]) -> Vec<u8> {
        let Some((&flags, mut rest)) = data.split_first() else {
            return Vec::new();
        };
        if flags & 3 == 0 {
            return rest.to_vec();
        }
        let mut img = if flags & 4 != 0 {
            self.replay.clone()
        } else {
            self.image.clone()
        };
        let xor = flags & 16 != 0;
        let mut truncate_to = None;
        while rest.len() >= 6 {
            let which = rest[0];
            let offset = u64::from(u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]));
            let len = usize::from(rest[5]).min(rest.len() - 6);
            let bytes = &rest[6..6 + len];
            rest = &rest[6 + len..];
            if which == TRUNCATE {
                truncate_to = Some((offset % (img.len() as u64 + 1)) as usize);
                continue;
            }
            let r = &self.regions[usize::from(which) % self.regions.len()];
            let start = r.start + offset % r.len;
            let end = (r.start + r.len).min(img.len() as u64);
            for (p, &b) in (start..end).zip(bytes) {
                let p = p as usize;
                img[p] = if xor { img[p] ^ b } else { b };
            }
        }
        if flags & 8 != 0 {
            self.reseal(&mut img);
        }
        if let Some(n) = truncate_to {
            img.truncate(n);
        }
        img
    }

    /// Recompute every checksum of the template's structures in `img`.
    pub fn reseal(&self, img: &mut [u8]) {
        for r in &self.regions {
            let at = r.start as usize;
            match r.seal {
                Seal::None => {}
                Seal::Superblock => reseal_one::<Superblock>(img, at, Superblock::seal),
                Seal::State => reseal_one::<StateBlock>(img, at, StateBlock::seal),
                Seal::Inode => reseal_one::<InodeRecord>(img, at, InodeRecord::seal),
                Seal::Index => reseal_one::<IndexBlock>(img, at, IndexBlock::seal),
                Seal::Leaf => reseal_one::<LeafBlock>(img, at, LeafBlock::seal),
                Seal::Shared => {
                    let n = size_of::<SharedHeader>();
                    let Some(Ok(h)) = img.get(at..at + n).map(SharedHeader::read_from_bytes)
                    else {
                        continue;
                    };
                    let count = u64::from(h.count.get()).min(r.len / SHARED_RUN_SIZE - 1);
                    let entries = img_range(img, r.start + SHARED_RUN_SIZE, count * SHARED_RUN_SIZE);
                    let crc = format::shared_table_crc(&h, entries);
                    reseal_one::<SharedHeader>(img, at, |h| h.crc = crc.into());
                }
                Seal::JournalHeader => {
                    let n = size_of::<JournalHeader>();
                    let Some(Ok(h)) = img.get(at..at + n).map(JournalHeader::read_from_bytes)
                    else {
                        continue;
                    };
                    let len = h.records_len.get().min(self.journal_area_bytes);
                    let records_crc = format::crc(img_range(img, self.journal_area, len));
                    reseal_one::<JournalHeader>(img, at, |h| {
                        h.records_crc = records_crc.into();
                        h.seal();
                    });
                }
            }
        }
    }
}

/// The bytes of `img` at `start..start+len`, clipped to the image.
fn img_range(img: &[u8], start: u64, len: u64) -> &[u8] {
    let s = (start as usize).min(img.len());
    let e = (start.saturating_add(len) as usize).min(img.len());
    &img[s..e]
}

/// Decode the structure at `at`, let `seal` fix it, and store it back; a
/// structure cut off by the end of the image is left alone.
fn reseal_one<T: FromBytes + IntoBytes + zerocopy::Immutable>(
    img: &mut [u8],
    at: usize,
    seal: impl FnOnce(&mut T),
) {
    let n = size_of::<T>();
    let Some(bytes) = img.get(at..at + n) else {
        return;
    };
    let Ok(mut v) = T::read_from_bytes(bytes) else {
        return;
    };
    seal(&mut v);
    img[at..at + n].copy_from_slice(v.as_bytes());
}

fn region(name: &str, start: u64, len: u64, seal: Seal) -> Region {
    Region {
        name: name.into(),
        start,
        len: len.max(1),
        seal,
    }
}

/// Create `path` and write `len` bytes at each `offset`.
fn write_file(fs: &Arc<Fs>, path: &str, writes: &[(u64, usize)]) -> pinfs::Result<()> {
    let h = fs.open(Cred::ROOT, path, OpenFlags::CREATE, 0o644)?;
    for &(off, len) in writes {
        let data: Vec<u8> = (0..len)
            .map(|i| (i % 251) as u8 ^ (off >> 12) as u8)
            .collect();
        h.pwrite(off, &data)?;
    }
    Ok(())
}

/// The fuzz target: see the module docs.
pub fn mount_image(data: &[u8]) {
    let image = Template::get().image_for(data);
    check_image(image);
}

/// fsck, mount, operate, check, remount: panics only on a broken promise.
pub fn check_image(image: Vec<u8>) {
    let fsck_media = RecordingMedia::from_image(image.clone());
    let fsck = Fs::fsck(&fsck_media);
    if let Err(e) = &fsck {
        assert!(
            !e.to_string().is_empty(),
            "fsck failed with an empty message: {e:?}"
        );
    }
    let media = Arc::new(RecordingMedia::from_image(image));
    let fs = match Fs::mount(media.clone()) {
        Ok(fs) => fs,
        Err(e) => {
            assert!(
                !e.to_string().is_empty(),
                "mount failed with an empty message: {e:?}"
            );
            return;
        }
    };
    match &fsck {
        Ok(report) => assert!(
            report.problems.is_empty(),
            "mount accepted a pool fsck finds problems in: {:?}",
            report.problems
        ),
        Err(e) => panic!("mount accepted a pool fsck refused: {e}"),
    }
    let problems = fs.check();
    assert!(
        problems.is_empty(),
        "inconsistent right after mount: {problems:?}"
    );
    operate(&fs);
    let problems = fs.check();
    assert!(
        problems.is_empty(),
        "operations on a pool that mounted clean left it inconsistent: {problems:?}"
    );
    drop(fs);
    let again =
        Fs::mount(Arc::new(RecordingMedia::from_image(media.image()))).unwrap_or_else(|e| {
            panic!("a pool that mounted clean does not mount after operations: {e}")
        });
    let problems = again.check();
    assert!(
        problems.is_empty(),
        "inconsistent after operations and remount: {problems:?}"
    );
}

/// Read everything reachable (bounded), then change the namespace and data.
/// Every error is acceptable; only panics and inconsistency count.
fn operate(fs: &Arc<Fs>) {
    let root = Cred::ROOT;
    let mut dirs = vec!["/".to_string()];
    let mut files = Vec::new();
    let mut i = 0;
    while i < dirs.len() && i < MAX_VISIT_DIRS {
        let dir = dirs[i].clone();
        i += 1;
        let Ok(entries) = fs.readdir(root, &dir) else {
            continue;
        };
        for e in entries {
            let path = if dir == "/" {
                format!("/{}", e.name_lossy())
            } else {
                format!("{dir}/{}", e.name_lossy())
            };
            let _ = fs.stat(root, &path);
            if let Ok(st) = fs.stat(root, &path) {
                let _ = fs.readlink(root, st.node());
                let _ = fs.getattr(st.node());
            }
            if e.is_dir {
                dirs.push(path);
            } else if files.len() < MAX_VISIT_FILES {
                files.push(path);
            }
        }
    }
    let mut buf = vec![0u8; MAX_READ_BYTES];
    let mut handles: Vec<Handle> = Vec::new();
    for f in &files {
        let Ok(h) = fs.open(root, f, OpenFlags::RDWR, 0) else {
            continue;
        };
        let size = h.stat().map_or(0, |s| s.size);
        let _ = h.pread(0, &mut buf);
        let _ = h.pread(size.saturating_sub(1), &mut buf[..1]);
        let _ = h.pread(size / 2, &mut buf);
        let _ = h.fiemap();
        handles.push(h);
    }
    if let Some(h) = handles.first() {
        let size = h.stat().map_or(0, |s| s.size);
        let _ = h.pwrite(0, &[0xab; 5000]);
        let _ = h.pwrite(size + BLOCK_SIZE + 17, b"past the end");
        let _ = h.truncate(size / 2);
        let _ = h.fallocate(FallocMode::PunchHole, 0, BLOCK_SIZE);
        let _ = h.fallocate(FallocMode::Allocate { keep_size: true }, 0, 8 * BLOCK_SIZE);
        let _ = h.fallocate(
            FallocMode::ZeroRange { keep_size: false },
            100,
            3 * BLOCK_SIZE,
        );
        let _ = h.fallocate(FallocMode::InsertRange, 0, BLOCK_SIZE);
        let _ = h.fallocate(FallocMode::CollapseRange, BLOCK_SIZE, BLOCK_SIZE);
        if let Ok(copy) = fs.open(root, "/fz_copy", OpenFlags::CREATE, 0o644) {
            let _ = copy.reflink(h, None);
            let _ = copy.pwrite(10, b"copy on write");
            let _ = copy.fsync();
        }
        let _ = fs.unlink(root, "/fz_copy");
        let _ = h.fsync();
    }
    // Unlink a file that is still open, read it, then let the close free it.
    if let (Some(f), Some(h)) = (files.get(1), handles.get(1)) {
        let _ = fs.unlink(root, f);
        let _ = h.pread(0, &mut buf);
        let _ = h.pwrite(0, b"orphan");
    }
    drop(handles);
    let _ = fs.mkdir(root, "/fz_d", 0o755);
    if let Ok(h) = fs.open(root, "/fz_d/x", OpenFlags::CREATE, 0o600) {
        let _ = h.pwrite(0, &buf[..3 * BLOCK_SIZE as usize]);
    }
    let _ = fs.rename(root, "/fz_d/x", "/fz_y");
    let _ = fs.rmdir(root, "/fz_d");
    if let Some(d) = dirs.get(1) {
        let _ = fs.rename(root, d, "/fz_moved");
    }
    if let Some(f) = files.get(2) {
        let _ = fs.rename(root, f, "/fz_y");
        let _ = fs.chmod(root, "/fz_y", 0o600);
        let _ = fs.chown(root, "/fz_y", Some(1), Some(1));
    }
    let _ = fs.unlink(root, "/fz_y");
    // The new file types: made, linked, renamed over and removed.
    let top = fs.root();
    let _ = fs.symlink_in(root, top, b"fz_l", b"/a/b/c");
    let _ = fs.mknod_in(root, top, b"fz_p", format::S_IFIFO | 0o600, 0);
    if let Some(f) = files.first() {
        if let Ok(st) = fs.stat(root, f) {
            let _ = fs.link_in(root, st.node(), top, b"fz_h");
        }
    }
    let _ = fs.rename(root, "/fz_l", "/fz_p");
    let _ = fs.unlink(root, "/fz_h");
    let _ = fs.unlink(root, "/fz_p");
    let _ = fs.statfs();
}
