//! `pinfs bench scale`: what mkfs, mount and fsck cost, and what a mounted
//! file system keeps resident, as pools grow to persistent-memory sizes
//! (issue 12, "pools of real persistent-memory size").
//!
//! For pools of 1 GiB, 100 GiB and 1 TiB — sparse files in `/dev/shm`, so a
//! terabyte costs only the pages written — each holding 1,000 small files:
//! the time of `mkfs`, of mount (open + journal recovery + load + check;
//! the median of five, as for fsck),
//! of `fsck`, and the resident memory mount adds (the process's `VmRSS`
//! after mount less before; the peak, `VmHWM` reset through
//! `/proc/self/clear_refs` just before, less the same baseline). Next to
//! them, in the same run, `mkfs.xfs` and `mount -o loop` of a sparse image
//! of the same size, and `xfs_repair -n` of it (skipped with the reason
//! printed when `mkfs.xfs` is missing or a loop mount is refused).
//!
//! Targets (the issue's): at 1 TiB, mkfs < 1 s, mount < 0.5 s, resident
//! after mount < 64 MiB plus what the files use; fsck proportional to use —
//! a 1 TiB pool's fsck at most twice the 1 GiB pool's with the same files.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pinfs::fs::{Cred, Fs, OpenFlags};
use pinfs::media::MappedPool;

use crate::bench_fs::ShmDir;
use crate::bench_target::{Goal, Scorecard};

const GIB: u64 = 1 << 30;
/// Files in every pool.
const FILES: usize = 1000;
/// Files per directory (so no directory is unusually large).
const FILES_PER_DIR: usize = 100;
/// Bytes written to each file.
const FILE_BYTES: usize = 16 << 10;
/// Mounts and fscks per pool (the median is shown).
const ROUNDS: usize = 5;
/// Resident memory allowed beyond what the files use (issue 12).
const RSS_ALLOWANCE: u64 = 64 << 20;
/// Targets at the largest pool.
const MKFS_GOAL: Goal = Goal::TimeUnder(Duration::from_secs(1));
const MOUNT_GOAL: Goal = Goal::TimeUnder(Duration::from_millis(500));
/// The largest pool's fsck against the smallest's, same files.
const FSCK_GROWTH_GOAL: Goal = Goal::AtMost(2.0);

/// One pool's figures.
struct Figures {
    mkfs: Duration,
    mount: Duration,
    fsck: Duration,
    /// Resident bytes mount added, and its peak.
    rss: i64,
    peak: i64,
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> Result<(i64, i64)> {
    let s = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let field = |name: &str| -> Result<i64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/self/status"))?;
        let kb: i64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unreadable {name}"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Reset `VmHWM` to the current `VmRSS` (`clear_refs` value 5).
fn reset_peak() {
    // Without it the peak is the process's so far: still an upper bound.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn measure(dir: &Path, bytes: u64) -> Result<Figures> {
    let path = dir.join(format!("pool-{}g", bytes / GIB));
    let t = Instant::now();
    let pool = MappedPool::create(&path, bytes).context("create the pool file")?;
    Fs::mkfs(&pool).context("mkfs")?;
    let mkfs = t.elapsed();
    // 1,000 files of 16 KiB in 10 directories (not timed).
    {
        let fs = Fs::mount(Arc::new(pool)).context("mount to fill")?;
        let data = vec![0x5au8; FILE_BYTES];
        for d in 0..FILES / FILES_PER_DIR {
            fs.mkdir(Cred::ROOT, &format!("/d{d}"), 0o755)?;
            for f in 0..FILES_PER_DIR {
                let h = fs.open(Cred::ROOT, &format!("/d{d}/f{f}"), OpenFlags::CREATE, 0o644)?;
                h.pwrite(0, &data)?;
            }
        }
    }
    // Times of a millisecond are at the mercy of a busy machine: the
    // median of ROUNDS; memory from the first mount.
    let mut mounts = Vec::new();
    let (mut rss_delta, mut peak_delta) = (0, 0);
    for round in 0..ROUNDS {
        let (before, _) = rss()?;
        reset_peak();
        let t = Instant::now();
        let pool = MappedPool::open(&path).context("open the pool")?;
        let fs = Fs::mount(Arc::new(pool)).context("mount")?;
        mounts.push(t.elapsed());
        if round == 0 {
            let (after, peak) = rss()?;
            (rss_delta, peak_delta) = (after - before, peak - before);
        }
        drop(fs);
    }
    let pool = MappedPool::open(&path).context("open the pool for fsck")?;
    let mut fscks = Vec::new();
    let mut report = None;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        report = Some(Fs::fsck(&pool).context("fsck")?);
        fscks.push(t.elapsed());
    }
    let report = report.context("no fsck ran")?;
    let (mount, fsck) = (median(mounts), median(fscks));
    anyhow::ensure!(
        report.problems.is_empty() && report.inodes as usize == FILES + FILES / FILES_PER_DIR + 1,
        "fsck of the {} GiB pool: {} inodes, problems {:?}",
        bytes / GIB,
        report.inodes,
        report.problems
    );
    drop(pool);
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(Figures {
        mkfs,
        mount,
        fsck,
        rss: rss_delta,
        peak: peak_delta,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// XFS on a sparse image of `bytes`: mkfs, mount, and `xfs_repair -n`
/// times, or why not.
fn xfs(dir: &Path, bytes: u64) -> std::result::Result<(Duration, Duration, Duration), String> {
    let image = dir.join(format!("xfs-{}g.img", bytes / GIB));
    let mnt = dir.join(format!("xfs-{}g.mnt", bytes / GIB));
    let run = |cmd: &mut Command| -> std::result::Result<Duration, String> {
        let t = Instant::now();
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "{:?} failed: {}",
                cmd.get_program(),
                err.lines().next().unwrap_or("").trim()
            ));
        }
        Ok(t.elapsed())
    };
    let result = (|| {
        let f = std::fs::File::create(&image).map_err(|e| format!("create image: {e}"))?;
        f.set_len(bytes).map_err(|e| format!("size image: {e}"))?;
        drop(f);
        std::fs::create_dir(&mnt).map_err(|e| format!("create mount point: {e}"))?;
        let mkfs = run(Command::new("mkfs.xfs").args(["-f", "-q"]).arg(&image))?;
        let mount = run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt))?;
        run(Command::new("umount").arg(&mnt))?;
        let fsck = run(Command::new("xfs_repair").arg("-n").arg(&image))?;
        Ok((mkfs, mount, fsck))
    })();
    let _ = std::fs::remove_dir(&mnt);
    let _ = std::fs::remove_file(&image);
    result
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(b: i64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Run the benchmark; `quick`: 1 GiB and 1 TiB only.
pub fn run(quick: bool) -> Result<()> {
    let shm = ShmDir::new("scale")?;
    let sizes: Vec<u64> = if quick {
        vec![GIB, 1024 * GIB]
    } else {
        vec![GIB, 100 * GIB, 1024 * GIB]
    };
    println!(
        "pinfs bench scale{}: sparse pools in {} with {FILES} files of {} KiB each; mkfs, mount (open + recovery + load + check; median of {ROUNDS}) and fsck (median of {ROUNDS}) times, resident memory mount adds (VmRSS after - before; peak from VmHWM reset before mount); next to mkfs.xfs, mount -o loop and xfs_repair -n of a sparse image of the same size",
        if quick { " --quick" } else { "" },
        shm.path.display(),
        FILE_BYTES >> 10,
    );
    let have_xfs = Command::new("mkfs.xfs").arg("-V").output().is_ok();
    if !have_xfs {
        println!("  xfs column skipped: mkfs.xfs not found (apt-get install -y xfsprogs)");
    }
    println!(
        "  {:>8}  {:>10} {:>10} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10}",
        "pool", "mkfs", "mount", "fsck", "rss", "rss peak", "xfs mkfs", "xfs mount", "xfs_repair"
    );
    let mut card = Scorecard::default();
    let mut all = Vec::new();
    for &bytes in &sizes {
        let f = measure(&shm.path, bytes)?;
        let x = if have_xfs {
            xfs(&shm.path, bytes)
        } else {
            Err("mkfs.xfs not found".into())
        };
        let (xm, xmo, xr) = match &x {
            Ok((a, b, c)) => (ms(*a), ms(*b), ms(*c)),
            Err(_) => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "  {:>6}G  {:>10} {:>10} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10}",
            bytes / GIB,
            ms(f.mkfs),
            ms(f.mount),
            ms(f.fsck),
            mib(f.rss),
            mib(f.peak),
            xm,
            xmo,
            xr
        );
        if let Err(why) = x {
            if have_xfs {
                println!("    xfs column skipped: {why}");
            }
        }
        all.push((bytes, f));
    }
    let (largest, big) = all.last().context("no pool measured")?;
    let (_, small) = all.first().context("no pool measured")?;
    let label = format!("{} GiB", largest / GIB);
    let used = (FILES * FILE_BYTES) as i64;
    println!(
        "  {label} mkfs {}: {}",
        ms(big.mkfs),
        card.check(&format!("{label} mkfs"), big.mkfs.as_secs_f64(), MKFS_GOAL)
    );
    println!(
        "  {label} mount {}: {}",
        ms(big.mount),
        card.check(
            &format!("{label} mount"),
            big.mount.as_secs_f64(),
            MOUNT_GOAL
        )
    );
    let rss_ratio = big.rss.max(big.peak) as f64 / (RSS_ALLOWANCE as i64 + used) as f64;
    println!(
        "  {label} resident after mount (peak) {} vs 64 MiB + {} of files: {}",
        mib(big.rss.max(big.peak)),
        mib(used),
        card.check(&format!("{label} resident"), rss_ratio, Goal::AtMost(1.0))
    );
    let growth = big.fsck.as_secs_f64() / small.fsck.as_secs_f64().max(1e-6);
    println!(
        "  fsck {label} / fsck 1 GiB, same files: {growth:.2}x: {}",
        card.check("fsck growth with pool size", growth, FSCK_GROWTH_GOAL)
    );
    println!("  {}", card.summary());
    Ok(())
}
