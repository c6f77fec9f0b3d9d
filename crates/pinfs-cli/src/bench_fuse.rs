//! `pinfs bench fuse`: ordinary tools' view of pinfs — the FUSE mount —
//! against the kernel's tmpfs, and against FUSE itself.
//!
//! The same code (system calls on paths and descriptors, as `cp`, `dd` or a
//! database would make them) runs in three directories in the same run:
//! - a FUSE mount of pinfs (`pinfs_fuse::mount`, as `pinfs serve --mount`
//!   makes it) on a memfd pool;
//! - a directory of the kernel's tmpfs (`/dev/shm`): what a local file
//!   system costs with no user-space daemon at all;
//! - a FUSE mount of a file system that does nothing ([`null::NullFs`]),
//!   with the same thread count and direct I/O: the cost of the FUSE
//!   transport alone, the limit no FUSE file system can beat.
//!
//! Each line prints pinfs, tmpfs and the floor, the ratio to tmpfs, and the
//! share of the floor pinfs reaches. The target is that pinfs adds little to
//! FUSE's own cost (at least [`FLOOR_GOAL`] of the floor): where pinfs is
//! close to the floor and far from tmpfs, FUSE itself is the limit.

mod null;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pinfs::fs::Fs;
use pinfs::media::{MappedPool, Media};

use crate::bench_fs::{median, pattern, ShmDir};
use crate::bench_target::{Goal, Scorecard};

/// pinfs through FUSE must reach this share of the null file system's rate.
const FLOOR_GOAL: Goal = Goal::AtLeast(0.8);
/// FUSE worker threads of both mounts.
const THREADS: usize = 4;
/// Seed of the random offsets (the same sequence in every directory).
const OFFSET_SEED: u64 = 0x5eed_f05e;

/// The sizes of one run.
struct Plan {
    file_bytes: u64,
    random_ops: usize,
    name_ops: usize,
    rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                file_bytes: 16 << 20,
                random_ops: 500,
                name_ops: 200,
                rounds: 1,
            }
        } else {
            Plan {
                file_bytes: 256 << 20,
                random_ops: 20_000,
                name_ops: 5_000,
                rounds: 3,
            }
        }
    }
}

/// One directory under test.
struct Side {
    name: &'static str,
    dir: PathBuf,
}

/// One line of the table: a rate per side (pinfs, tmpfs, floor).
struct Row {
    op: &'static str,
    size: &'static str,
    unit: &'static str,
    rates: [f64; 3],
}

/// Run the benchmark and print the table; `quick` shrinks it to a smoke run.
pub fn run(quick: bool) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        println!("pinfs bench fuse: skipped: this machine has no FUSE (/dev/fuse is missing)");
        return Ok(());
    }
    let plan = Plan::new(quick);
    let scratch = Scratch::new()?;
    let shm = ShmDir::new("fuse")?;

    let pool_bytes = plan.file_bytes * 2 + (256 << 20);
    let pool: Arc<dyn Media> =
        Arc::new(MappedPool::memfd(pool_bytes).context("create the memfd pool")?);
    Fs::mkfs(&*pool).context("mkfs on the memfd pool")?;
    let fs = Fs::mount(pool).context("mount the memfd pool")?;
    let pinfs_dir = scratch.path.join("pinfs");
    let null_dir = scratch.path.join("null");
    for d in [&pinfs_dir, &null_dir] {
        std::fs::create_dir(d).with_context(|| format!("create {}", d.display()))?;
    }
    let pinfs_mount = pinfs_fuse::mount(
        fs.clone(),
        &pinfs_dir,
        pinfs_fuse::MountOptions {
            threads: THREADS,
            ..Default::default()
        },
    )
    .with_context(|| format!("mount pinfs at {}", pinfs_dir.display()))?;
    let mut null_config = fuser::Config::default();
    null_config.mount_options = vec![
        fuser::MountOption::FSName("pinfs-bench-null".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    null_config.n_threads = Some(THREADS);
    null_config.clone_fd = true;
    let null_mount =
        fuser::spawn_mount(null::NullFs::new(plan.file_bytes), &null_dir, &null_config)
            .with_context(|| format!("mount the null file system at {}", null_dir.display()))?;

    println!(
        "pinfs bench fuse{}: the pinfs FUSE mount (memfd pool of {} MiB) vs the kernel's tmpfs ({}) vs a FUSE file system that does nothing (the floor); {THREADS} FUSE threads, direct I/O, no attribute caching on both mounts; {} MiB file; {} round(s), alternating, median shown",
        if quick { " --quick" } else { "" },
        pool_bytes >> 20,
        shm.path.display(),
        plan.file_bytes >> 20,
        plan.rounds,
    );

    let sides = [
        Side {
            name: "pinfs",
            dir: pinfs_dir.clone(),
        },
        Side {
            name: "tmpfs",
            dir: shm.path.clone(),
        },
        Side {
            name: "floor",
            dir: null_dir.clone(),
        },
    ];
    // The data file: written once on the two real file systems (the null
    // one has its `data` already), so reads find written blocks.
    for s in &sides[..2] {
        fill(&s.dir.join("data"), plan.file_bytes)
            .with_context(|| format!("{}: write the data file", s.name))?;
    }

    let mut rows = Vec::new();
    let measures: [(&str, &str, &str, Measure); 7] = [
        ("read", "1M", "GiB/s", Measure::Seq { write: false }),
        ("write", "1M", "GiB/s", Measure::Seq { write: true }),
        ("pread", "4K", "ops/s", Measure::Random { write: false }),
        ("pwrite", "4K", "ops/s", Measure::Random { write: true }),
        ("open+close", "-", "ops/s", Measure::OpenClose),
        ("create+unlink", "-", "ops/s", Measure::CreateUnlink),
        ("stat", "-", "ops/s", Measure::Stat),
    ];
    for (op, size, unit, m) in measures {
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..plan.rounds {
            for (i, s) in sides.iter().enumerate() {
                let rate = m
                    .run(&s.dir, &plan)
                    .with_context(|| format!("{op} {size} on {}", s.name))?;
                samples[i].push(rate);
            }
        }
        rows.push(Row {
            op,
            size,
            unit,
            rates: samples.map(median),
        });
    }

    print_table(&rows);
    drop(null_mount);
    pinfs_mount
        .unmount()
        .context("unmount the pinfs FUSE mount")?;
    let problems = fs.check();
    if !problems.is_empty() {
        bail!(
            "the pool is inconsistent after the benchmark: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

/// What one line measures, as a rate.
#[derive(Clone, Copy)]
enum Measure {
    /// 1 MiB reads or writes, start to end of the data file (GiB/s).
    Seq { write: bool },
    /// 4 KiB reads or writes at random aligned offsets (ops/s).
    Random { write: bool },
    /// `open` + `close` of the data file (ops/s).
    OpenClose,
    /// Create a new file, then remove it (pairs/s).
    CreateUnlink,
    /// `stat` of the data file (ops/s).
    Stat,
}

impl Measure {
    fn run(self, dir: &Path, plan: &Plan) -> Result<f64> {
        let data = dir.join("data");
        match self {
            Measure::Seq { write } => {
                let f = OpenOptions::new().read(true).write(true).open(&data)?;
                let mut buf = pattern(1 << 20);
                let start = Instant::now();
                for off in (0..plan.file_bytes).step_by(1 << 20) {
                    let n = if write {
                        f.write_at(&buf, off)?
                    } else {
                        f.read_at(&mut buf, off)?
                    };
                    if n != buf.len() {
                        bail!("short I/O of {n} bytes at {off}");
                    }
                }
                Ok(plan.file_bytes as f64 / start.elapsed().as_secs_f64() / f64::from(1u32 << 30))
            }
            Measure::Random { write } => {
                let f = OpenOptions::new().read(true).write(true).open(&data)?;
                let mut buf = pattern(4096);
                let mut rng = pinfs::util::SplitMix64::new(OFFSET_SEED);
                let slots = plan.file_bytes / 4096;
                let start = Instant::now();
                for _ in 0..plan.random_ops {
                    let off = rng.below(slots) * 4096;
                    let n = if write {
                        f.write_at(&buf, off)?
                    } else {
                        f.read_at(&mut buf, off)?
                    };
                    if n != buf.len() {
                        bail!("short I/O of {n} bytes at {off}");
                    }
                }
                Ok(plan.random_ops as f64 / start.elapsed().as_secs_f64())
            }
            Measure::OpenClose => {
                let start = Instant::now();
                for _ in 0..plan.random_ops {
                    drop(File::open(&data)?);
                }
                Ok(plan.random_ops as f64 / start.elapsed().as_secs_f64())
            }
            Measure::CreateUnlink => {
                let names: Vec<PathBuf> = (0..plan.name_ops)
                    .map(|i| dir.join(format!("f{i:06}")))
                    .collect();
                let start = Instant::now();
                for p in &names {
                    drop(
                        OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(p)
                            .with_context(|| format!("create {}", p.display()))?,
                    );
                }
                for p in &names {
                    std::fs::remove_file(p).with_context(|| format!("remove {}", p.display()))?;
                }
                Ok(plan.name_ops as f64 / start.elapsed().as_secs_f64())
            }
            Measure::Stat => {
                let start = Instant::now();
                for _ in 0..plan.random_ops {
                    std::fs::metadata(&data)?;
                }
                Ok(plan.random_ops as f64 / start.elapsed().as_secs_f64())
            }
        }
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<14} {:>4} {:>11} {:>11} {:>11} {:>9} {:>9}  unit",
        "operation", "size", "pinfs", "tmpfs", "floor", "vs tmpfs", "of floor"
    );
    let mut card = Scorecard::default();
    for r in rows {
        let [p, t, f] = r.rates;
        let shown = |v: f64| {
            if r.unit == "ops/s" {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        let of_floor = p / f;
        let verdict = card.check(&format!("{} {}", r.op, r.size), of_floor, FLOOR_GOAL);
        // Close to the floor and far below tmpfs: the transport is the limit.
        let limit = if of_floor >= 0.8 && p / t < 0.5 {
            "  (FUSE-bound)"
        } else {
            ""
        };
        println!(
            "{:<14} {:>4} {:>11} {:>11} {:>11} {:>8.2}x {:>8.2}x  {:<6} {verdict}{limit}",
            r.op,
            r.size,
            shown(p),
            shown(t),
            shown(f),
            p / t,
            of_floor,
            r.unit
        );
    }
    println!();
    println!("target: pinfs {FLOOR_GOAL} the floor (what FUSE itself allows) on every line");
    println!("{}", card.summary());
}

/// A fresh directory for the two mount points, removed on drop.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!("pinfs-bench-fuse-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The mounts are gone by now (they are dropped first); only the
        // empty mount points remain.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("bench: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Write `bytes` of a non-zero pattern to a new file.
fn fill(path: &Path, bytes: u64) -> Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let buf = pattern(1 << 20);
    for off in (0..bytes).step_by(1 << 20) {
        f.write_all_at(&buf, off)?;
    }
    f.sync_all()?;
    Ok(())
}
