//! `pinfs bench fs`: file-system throughput against the kernel's tmpfs.
//!
//! pinfs serves `pread`/`pwrite` of already-allocated blocks with a shared
//! lock and one copy to or from pool memory, with no system call, so it should
//! be at least as fast as `pread(2)`/`pwrite(2)` on a tmpfs file (`/dev/shm`),
//! which is the same memory copy plus a system call and the page-cache lookup.
//! This command measures both in the same run, on the same access pattern,
//! and prints the ratios (STYLE 17: a benchmark is a ratio against a baseline
//! measured in the same run, never an absolute number compared to a constant).
//!
//! What is measured:
//!
//! - `pread` and `pwrite` at 4 KiB, 64 KiB and 1 MiB: random offsets aligned
//!   to the I/O size, drawn from a fixed seed, identical for pinfs and tmpfs,
//!   over a file of [`FILE_BYTES`] written once beforehand (so neither side
//!   allocates during the measurement). pinfs runs on a memfd pool. Each
//!   measurement is repeated in rounds that alternate pinfs and tmpfs, so a
//!   noisy neighbour on a shared machine hits both; the median round counts.
//! - create+unlink: `open(O_CREAT|O_EXCL)` + close of distinct names in one
//!   directory, then `unlink` of each, against the same system calls in a
//!   `/dev/shm` directory. One operation is one create plus one unlink.
//!
//! Note what each side promises: a pinfs metadata operation is durable when
//! it returns (its journal commit flushes and fences), and a pinfs `pwrite`
//! notes its dirty range for `fsync`, while tmpfs promises nothing beyond the
//! process; the comparison is of what an application pays per call.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pinfs::fs::{Cred, Fs, Handle, OpenFlags};
use pinfs::media::{MappedPool, Media};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::bench_huge;
use crate::bench_target::{Goal, Scorecard};

/// The target of the pread and pwrite rows: at least tmpfs's speed.
const FS_GOAL: Goal = Goal::AtLeast(1.0);

/// Size of the pool the pinfs side runs on.
const POOL_BYTES: u64 = 1 << 30;
/// Size of the file read and written, on both sides.
const FILE_BYTES: u64 = 256 << 20;
/// Pool and file size with `--quick`.
const QUICK_POOL_BYTES: u64 = 256 << 20;
const QUICK_FILE_BYTES: u64 = 64 << 20;
/// I/O sizes measured.
const IO_SIZES: [u64; 3] = [4 << 10, 64 << 10, 1 << 20];
/// Bytes moved per round and per side, for each (operation, size).
const ROUND_BYTES: u64 = 2 << 30;
const QUICK_ROUND_BYTES: u64 = 128 << 20;
/// Rounds per measurement (the median counts).
const ROUNDS: usize = 5;
const QUICK_ROUNDS: usize = 1;
/// Files created and unlinked per round of the create+unlink measurement.
const CREATE_FILES: usize = 20_000;
const QUICK_CREATE_FILES: usize = 1_000;
/// Seed of the offset sequence (the same for both sides, and for every run).
const OFFSET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Offsets drawn per size; the sequence repeats after that.
const OFFSETS: usize = 1 << 16;

/// Parameters of one run.
struct Plan {
    pool_bytes: u64,
    file_bytes: u64,
    round_bytes: u64,
    rounds: usize,
    create_files: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                pool_bytes: QUICK_POOL_BYTES,
                file_bytes: QUICK_FILE_BYTES,
                round_bytes: QUICK_ROUND_BYTES,
                rounds: QUICK_ROUNDS,
                create_files: QUICK_CREATE_FILES,
            }
        } else {
            Plan {
                pool_bytes: POOL_BYTES,
                file_bytes: FILE_BYTES,
                round_bytes: ROUND_BYTES,
                rounds: ROUNDS,
                create_files: CREATE_FILES,
            }
        }
    }
}

/// One line of the result table.
struct Row {
    op: &'static str,
    size: String,
    unit: &'static str,
    pinfs: f64,
    tmpfs: f64,
    /// Whether this row is under the pread/pwrite target.
    targeted: bool,
}

/// A scratch directory in `/dev/shm` (the kernel's tmpfs, the baseline of
/// the benchmarks), removed with everything in it on drop (also when a
/// benchmark fails half-way).
pub(crate) struct ShmDir {
    pub(crate) path: PathBuf,
}

impl ShmDir {
    /// `/dev/shm/pinfs-bench-TAG-PID`.
    pub(crate) fn new(tag: &str) -> Result<ShmDir> {
        let path = PathBuf::from(format!("/dev/shm/pinfs-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(ShmDir { path })
    }

    /// Create the new, empty file `name` in it, open for reading and writing.
    pub(crate) fn create(&self, name: &str) -> Result<File> {
        let path = self.path.join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("bench: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// The two files under test, each with the same contents and size.
struct Files {
    pinfs: Handle,
    tmpfs: File,
}

/// Which way data moves.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Run the benchmark and print the table; `quick` shrinks it to a smoke run.
pub fn run(quick: bool) -> Result<()> {
    let plan = Plan::new(quick);
    let shm = ShmDir::new("fs")?;

    let pool: Arc<dyn Media> =
        Arc::new(MappedPool::memfd(plan.pool_bytes).context("create the memfd pool")?);
    Fs::mkfs(&*pool).context("mkfs on the memfd pool")?;
    let fs = Fs::mount(pool.clone()).context("mount the memfd pool")?;

    println!(
        "pinfs bench fs{}: pinfs on a {} MiB memfd pool vs tmpfs ({}); {} MiB file, random offsets aligned to the I/O size (seed {OFFSET_SEED:#x}, same sequence for both); {} round(s) of {} MiB per measurement, alternating, median shown",
        if quick { " --quick" } else { "" },
        plan.pool_bytes >> 20,
        shm.path.display(),
        plan.file_bytes >> 20,
        plan.rounds,
        plan.round_bytes >> 20,
    );

    let files = prepare_files(&fs, &shm, plan.file_bytes)?;
    let mut rows = Vec::new();
    for (dir, op) in [(Direction::Read, "pread"), (Direction::Write, "pwrite")] {
        for size in IO_SIZES {
            let (p, t) = measure_io(&files, &plan, dir, size)?;
            rows.push(Row {
                op,
                size: size_label(size),
                unit: "GiB/s",
                pinfs: p,
                tmpfs: t,
                targeted: true,
            });
        }
    }
    // Release the big file before the metadata benchmark; it leaves the pool's
    // directory tree as it was.
    drop(files);
    fs.unlink(Cred::ROOT, "/data").context("unlink /data")?;
    std::fs::remove_file(shm.path.join("data")).context("remove the tmpfs data file")?;

    let (p, t) = measure_create_unlink(&fs, &shm.path, &plan)?;
    rows.push(Row {
        op: "create+unlink",
        size: "-".into(),
        unit: "ops/s",
        pinfs: p,
        tmpfs: t,
        // Issue 12: "fine; keep it so" — at least as fast as tmpfs.
        targeted: true,
    });

    print_table(&rows, &bench_huge::pool(&*pool));
    let problems = fs.check();
    if !problems.is_empty() {
        bail!(
            "the pool is inconsistent after the benchmark: {}",
            problems.join("; ")
        );
    }
    drop(shm);
    Ok(())
}

/// Create the file on both sides and write it once, so every later access
/// lands on allocated, written blocks.
fn prepare_files(fs: &Arc<Fs>, shm: &ShmDir, file_bytes: u64) -> Result<Files> {
    let pinfs = fs
        .open(Cred::ROOT, "/data", OpenFlags::CREATE, 0o644)
        .context("create /data in the pool")?;
    let tmpfs = shm.create("data")?;
    let chunk = pattern(1 << 20);
    let mut off = 0;
    while off < file_bytes {
        pinfs
            .pwrite(off, &chunk)
            .context("prewrite the pinfs file")?;
        tmpfs
            .write_all_at(&chunk, off)
            .context("prewrite the tmpfs file")?;
        off += chunk.len() as u64;
    }
    Ok(Files { pinfs, tmpfs })
}

/// Measure one (direction, size) pair on both sides: returns GiB/s for pinfs
/// and for tmpfs, the medians of the rounds.
fn measure_io(files: &Files, plan: &Plan, dir: Direction, size: u64) -> Result<(f64, f64)> {
    let offsets = random_offsets(plan.file_bytes, size);
    let ops = (plan.round_bytes / size).max(1) as usize;
    let mut buf = pattern(size as usize);
    // One untimed warm-up pass on each side (page tables, caches, CPU clock).
    for side in [Side::Pinfs, Side::Tmpfs] {
        run_io(files, side, dir, &offsets, ops.min(offsets.len()), &mut buf)?;
    }
    let mut pinfs = Vec::new();
    let mut tmpfs = Vec::new();
    for _ in 0..plan.rounds {
        pinfs.push(gib_per_s(
            ops as u64 * size,
            run_io(files, Side::Pinfs, dir, &offsets, ops, &mut buf)?,
        ));
        tmpfs.push(gib_per_s(
            ops as u64 * size,
            run_io(files, Side::Tmpfs, dir, &offsets, ops, &mut buf)?,
        ));
    }
    Ok((median(pinfs), median(tmpfs)))
}

/// Which side of the comparison an I/O loop runs on.
#[derive(Clone, Copy)]
enum Side {
    Pinfs,
    Tmpfs,
}

/// `ops` operations at `offsets` (cycled) on one side's file, timed: one
/// call per operation (`pread(2)`/`pwrite(2)` on tmpfs), as an application
/// does.
fn run_io(
    files: &Files,
    side: Side,
    dir: Direction,
    offsets: &[u64],
    ops: usize,
    buf: &mut [u8],
) -> Result<Duration> {
    let start = Instant::now();
    for &off in offsets.iter().cycle().take(ops) {
        let n: Result<usize> = match (side, dir) {
            (Side::Pinfs, Direction::Read) => files.pinfs.pread(off, buf).map_err(Into::into),
            (Side::Pinfs, Direction::Write) => files.pinfs.pwrite(off, buf).map_err(Into::into),
            (Side::Tmpfs, Direction::Read) => files.tmpfs.read_at(buf, off).map_err(Into::into),
            (Side::Tmpfs, Direction::Write) => files.tmpfs.write_at(buf, off).map_err(Into::into),
        };
        let name = match side {
            Side::Pinfs => "pinfs",
            Side::Tmpfs => "tmpfs",
        };
        let n = n.with_context(|| format!("{name} I/O of {} bytes at {off}", buf.len()))?;
        if n != buf.len() {
            bail!("{name}: short I/O of {n} bytes at {off}");
        }
    }
    Ok(start.elapsed())
}

/// Create+unlink rate (operations per second) for pinfs and tmpfs.
fn measure_create_unlink(fs: &Arc<Fs>, shm: &Path, plan: &Plan) -> Result<(f64, f64)> {
    let n = plan.create_files;
    fs.mkdir(Cred::ROOT, "/bench", 0o755)
        .context("mkdir /bench in the pool")?;
    let pinfs_paths: Vec<String> = (0..n).map(|i| format!("/bench/f{i:06}")).collect();
    let tmpfs_dir_path = shm.join("bench");
    std::fs::create_dir(&tmpfs_dir_path)
        .with_context(|| format!("create {}", tmpfs_dir_path.display()))?;
    let tmpfs_dir = rustix::fs::open(
        &tmpfs_dir_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open {}", tmpfs_dir_path.display()))?;
    let tmpfs_names: Vec<CString> = (0..n)
        .map(|i| CString::new(format!("f{i:06}")).expect("no NUL in a generated name"))
        .collect();
    let create = OpenFlags {
        exclusive: true,
        ..OpenFlags::CREATE
    };
    let mut pinfs = Vec::new();
    let mut tmpfs = Vec::new();
    for _ in 0..plan.rounds {
        let start = Instant::now();
        for p in &pinfs_paths {
            drop(
                fs.open(Cred::ROOT, p, create, 0o644)
                    .with_context(|| format!("pinfs create {p}"))?,
            );
        }
        for p in &pinfs_paths {
            fs.unlink(Cred::ROOT, p)
                .with_context(|| format!("pinfs unlink {p}"))?;
        }
        pinfs.push(n as f64 / start.elapsed().as_secs_f64());
        tmpfs.push(create_unlink_tmpfs(&tmpfs_dir, &tmpfs_names)?);
    }
    fs.rmdir(Cred::ROOT, "/bench")
        .context("rmdir /bench in the pool")?;
    Ok((median(pinfs), median(tmpfs)))
}

fn create_unlink_tmpfs(dir: &OwnedFd, names: &[CString]) -> Result<f64> {
    let start = Instant::now();
    for name in names {
        let fd = rustix::fs::openat(
            dir,
            name.as_c_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .with_context(|| format!("tmpfs create {name:?}"))?;
        drop(fd);
    }
    for name in names {
        rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty())
            .with_context(|| format!("tmpfs unlink {name:?}"))?;
    }
    Ok(names.len() as f64 / start.elapsed().as_secs_f64())
}

/// The table; `pool_pages` is the pool's 2 MiB-page coverage, printed on
/// the bandwidth rows (the tmpfs side's page sizes are not visible to a
/// process that only calls `pread`/`pwrite`).
fn print_table(rows: &[Row], pool_pages: &str) {
    println!();
    println!(
        "{:<14} {:>6} {:>12} {:>12} {:>7}  unit",
        "operation", "size", "pinfs", "tmpfs", "ratio"
    );
    let mut card = Scorecard::default();
    for r in rows {
        let (p, t) = if r.unit == "ops/s" {
            (format!("{:.0}", r.pinfs), format!("{:.0}", r.tmpfs))
        } else {
            (format!("{:.2}", r.pinfs), format!("{:.2}", r.tmpfs))
        };
        let ratio = r.pinfs / r.tmpfs;
        // pread and pwrite rows have a target: as fast as tmpfs.
        let verdict = if r.targeted {
            card.check(&format!("{} {}", r.op, r.size), ratio, FS_GOAL)
        } else {
            String::new()
        };
        let pages = if r.unit == "GiB/s" {
            format!("pool {pool_pages}")
        } else {
            String::new()
        };
        let line = format!(
            "{:<14} {:>6} {:>12} {:>12} {:>6.2}x  {:<6} {pages:<15} {verdict}",
            r.op, r.size, p, t, ratio, r.unit
        );
        println!("{}", line.trim_end());
    }
    println!();
    println!(
        "target: pinfs {FS_GOAL} tmpfs for pread and pwrite at every size, and for create+unlink"
    );
    println!("{}", card.summary());
}

/// [`OFFSETS`] offsets, multiples of `size`, uniformly spread over a file of
/// `file_bytes`, from the fixed seed.
fn random_offsets(file_bytes: u64, size: u64) -> Vec<u64> {
    let slots = file_bytes / size;
    let mut rng = pinfs::util::SplitMix64::new(OFFSET_SEED);
    (0..OFFSETS).map(|_| rng.below(slots) * size).collect()
}

/// A buffer of non-zero bytes (so nothing can shortcut zero pages).
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

fn gib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / f64::from(1u32 << 30)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{}M", bytes >> 20)
    } else {
        format!("{}K", bytes >> 10)
    }
}
