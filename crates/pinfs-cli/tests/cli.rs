//! Scenarios at the command-line boundary: the built `pinfs` binary run as
//! a user or a script would run it (CLI.md is the contract).
//!
//! One small helper per boundary ([`pinfs`] runs the binary; [`Pool`] is a
//! pool file in a temporary directory with `mkfs`, `io`, `fsck`), so each
//! test reads as a scenario and asserts exact output lines.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn err_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// Exit 0 with nothing on stderr.
    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert_eq!(self.stderr, "", "{self:#?}");
        self
    }

    /// Exit 1 with exactly one line on stderr, and no panic.
    #[track_caller]
    fn fails_with_one_line(&self) -> &str {
        assert_eq!(self.code, Some(1), "{self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        let lines = self.err_lines();
        assert_eq!(lines.len(), 1, "{self:#?}");
        lines[0]
    }
}

/// Run `pinfs ARGS` (with neither `PINFS_LOG` nor `RUST_LOG` set).
fn pinfs<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    pinfs_env(args, &[])
}

/// Run `pinfs ARGS` with environment variables `env` set (and no other
/// log filter).
fn pinfs_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(args)
        .env_remove("PINFS_LOG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run pinfs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `pinfs io [--pool POOL] -c CMD...`.
fn io(pool: Option<&Path>, cmds: &[&str]) -> Run {
    let mut args: Vec<String> = vec!["io".into()];
    if let Some(p) = pool {
        args.extend(["--pool".into(), p.display().to_string()]);
    }
    for c in cmds {
        args.extend(["-c".into(), (*c).into()]);
    }
    pinfs(&args)
}

/// A pool file in its own temporary directory.
struct Pool {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Pool {
    /// `pinfs mkfs --size 256m DIR/pool`.
    fn mkfs() -> Pool {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pool");
        let run = pinfs(&[
            "mkfs".as_ref(),
            "--size".as_ref(),
            "256m".as_ref(),
            path.as_os_str(),
        ]);
        run.ok();
        assert!(run.stdout.contains("268435456 bytes"), "{run:#?}");
        Pool { dir, path }
    }

    fn io(&self, cmds: &[&str]) -> Run {
        io(Some(&self.path), cmds)
    }

    fn fsck(&self) -> Run {
        pinfs(&["fsck".as_ref(), self.path.as_os_str()])
    }

    /// Another file next to the pool.
    fn sibling(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The `pread -v` lines of `len` bytes of `byte` at `offset`, as `xfs_io`
/// prints them (only letters and digits print as themselves).
fn dump_of(offset: u64, len: usize, byte: u8) -> Vec<String> {
    let ch = if byte.is_ascii_alphanumeric() {
        byte as char
    } else {
        '.'
    };
    (0..len)
        .step_by(16)
        .map(|i| {
            let n = (len - i).min(16);
            format!(
                "{:08x}:  {}  {}",
                offset + i as u64,
                vec![format!("{byte:02x}"); n].join(" "),
                ch.to_string().repeat(n)
            )
        })
        .collect()
}

#[test]
fn write_read_back_and_check_across_runs() {
    let pool = Pool::mkfs();
    let run = pool.io(&[
        "open -c /f",
        "pwrite 0 40",
        "pread -v 0 40",
        "pwrite -S 0x41 64 3",
        "pread -v 60 16",
        "pread 0 1m",
    ]);
    run.ok();
    assert_eq!(
        run.lines(),
        [
            "wrote 40/40 bytes at offset 0",
            "00000000:  cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd  ................",
            "00000010:  cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd  ................",
            "00000020:  cd cd cd cd cd cd cd cd  ........",
            "read 40/40 bytes at offset 0",
            "wrote 3/3 bytes at offset 64",
            "0000003c:  00 00 00 00 41 41 41  ....AAA",
            "read 7/16 bytes at offset 60",
            "read 67/1048576 bytes at offset 0",
        ]
    );
    pool.fsck().ok();

    // A second run on the reopened pool sees the data, and changes it more.
    let run = pool.io(&[
        "open /f",
        "stat",
        "pread -v 64 3",
        "truncate 4k",
        "pwrite -S 32 4k 2",
        "pread -v 4094 4",
        "stat",
    ]);
    run.ok();
    assert_eq!(
        run.lines(),
        [
            "size 67",
            "blocks 1",
            "extents 1",
            "00000040:  41 41 41  AAA",
            "read 3/3 bytes at offset 64",
            "wrote 2/2 bytes at offset 4096",
            "00000ffe:  00 00 20 20  ....",
            "read 4/4 bytes at offset 4094",
            "size 4098",
            "blocks 2",
            "extents 1",
        ]
    );
    pool.fsck().ok();
}

#[test]
fn large_writes_go_in_chunks_and_read_back() {
    let pool = Pool::mkfs();
    let run = pool.io(&["open -c /big", "pwrite -S 0xee 1k 3m", "pread 0 8m", "stat"]);
    run.ok();
    assert_eq!(
        run.lines(),
        [
            "wrote 3145728/3145728 bytes at offset 1024",
            "read 3146752/8388608 bytes at offset 0",
            "size 3146752",
            "blocks 769",
            "extents 1",
        ]
    );
    let run = pool.io(&["open -r /big", "pread -v 3146736 64"]);
    run.ok();
    let mut want = dump_of(3146736, 16, 0xee);
    want.push("read 16/64 bytes at offset 3146736".into());
    assert_eq!(run.lines(), want);
    pool.fsck().ok();
}

#[test]
fn punch_reflink_and_fiemap_flags() {
    let pool = Pool::mkfs();
    let run = pool.io(&[
        "open -c /a",
        "pwrite 0 16k",
        "open -c /b",
        "reflink /a",
        "fiemap",
        "pwrite -S 0x5a 0 4k",
        "fiemap",
        "pread -v 4094 4",
        "fpunch 8k 4k",
        "stat",
        "open -c /u",
        "falloc 0 8k",
        "fiemap",
        "open -c /r",
        "reflink /u 0 0 8k",
        "fiemap",
        "open /a",
        "pread -v 0 2",
    ]);
    run.ok();
    let lines = run.lines();
    let flags = |line: &str| line.rsplit(' ').next().map(str::to_string);
    // /b after reflink: all shared with /a.
    assert!(
        lines[1].starts_with("0 ") && lines[1].ends_with(" 16384 shared"),
        "{lines:?}"
    );
    // /b after writing its first block: a private block, then the shared rest.
    assert!(
        lines[3].starts_with("0 ") && lines[3].ends_with(" 4096 -"),
        "{lines:?}"
    );
    assert!(
        lines[4].starts_with("4096 ") && lines[4].ends_with(" 12288 shared"),
        "{lines:?}"
    );
    assert_eq!(
        &lines[5..8],
        [
            "00000ffe:  5a 5a cd cd  ZZ..",
            "read 4/4 bytes at offset 4094",
            "size 16384",
        ]
    );
    // The punched block is gone from /b (16 KiB size, 3 blocks).
    assert_eq!(&lines[8..10], ["blocks 3", "extents 3"]);
    // fallocate: unwritten; then reflinked: unwritten and shared.
    assert_eq!(flags(lines[10]).as_deref(), Some("unwritten"), "{lines:?}");
    assert_eq!(
        flags(lines[11]).as_deref(),
        Some("unwritten,shared"),
        "{lines:?}"
    );
    // /a still holds its own bytes.
    assert_eq!(
        &lines[12..],
        ["00000000:  cd cd  ..", "read 2/2 bytes at offset 0"]
    );
    pool.fsck().ok();
    pool.io(&["open /b", "fiemap"]).ok();
    pool.fsck().ok();
}

#[test]
fn namespace() {
    let run = io(
        None,
        &[
            "mkdir /d",
            "open -c /d/x",
            "open -c /y",
            "close",
            "rename /y /d/z",
            "ls /",
            "ls /d",
            "unlink /d/x",
            "rmdir /d",
            "unlink /d/z",
            "rmdir /d",
            "ls /",
            "statfs",
        ],
    );
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.err_lines(), ["rmdir: Directory not empty"]);
    let lines = run.lines();
    assert_eq!(&lines[..3], ["d/", "x", "z"]);
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert!(
        lines[3].starts_with("blocks ") && lines[4].starts_with("free "),
        "{lines:?}"
    );
    assert_eq!(lines[5], "busy 0");
}

#[test]
fn actors_run_in_the_background_and_report_at_wait() {
    let run = io(
        None,
        &[
            "@a open -c /f",
            "@a pwrite 0 4k &",
            "echo the script moves on",
            "@a wait",
            "@b open -r /f",
            "@b pread 0 8k &",
            "@b stat &",
            "@b wait",
        ],
    );
    run.ok();
    assert_eq!(
        run.lines(),
        [
            "the script moves on",
            "wrote 4096/4096 bytes at offset 0",
            "read 4096/8192 bytes at offset 0",
            "size 4096",
            "blocks 1",
            "extents 1",
        ]
    );
}

#[test]
fn failing_commands_print_strerror_and_the_run_goes_on() {
    let run = io(
        None,
        &[
            "truncate 0",
            "@a truncate 0 &",
            "open /missing",
            "open -r -c /f",
            "pwrite 0 1",
            "frobnicate",
            "echo still running",
            "@a wait",
        ],
    );
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.lines(), ["still running"]);
    assert_eq!(
        run.err_lines(),
        [
            "truncate: Bad file descriptor",
            "open: No such file or directory",
            "pwrite: Bad file descriptor",
            "frobnicate: unknown command",
            "truncate: Bad file descriptor",
        ]
    );
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn a_stat_without_a_current_file_fails() {
    let run = io(None, &["stat"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.err_lines(), ["stat: Bad file descriptor"]);
}

#[test]
fn missing_foreign_and_damaged_pools_are_one_line_errors() {
    let pool = Pool::mkfs();

    let missing = pool.sibling("missing");
    let line = io(Some(&missing), &["ls /"])
        .fails_with_one_line()
        .to_string();
    assert!(
        line.starts_with("pinfs: ") && line.contains("No such file"),
        "{line}"
    );
    pinfs(&["fsck".as_ref(), missing.as_os_str()]).fails_with_one_line();

    let random = pool.sibling("random");
    let mut rng = pinfs::util::SplitMix64::new(1);
    let bytes: Vec<u8> = (0..4 << 20).map(|_| rng.next() as u8).collect();
    std::fs::write(&random, bytes).unwrap();
    let line = io(Some(&random), &["ls /"])
        .fails_with_one_line()
        .to_string();
    assert!(line.contains("not a pinfs pool"), "{line}");
    pinfs(&["fsck".as_ref(), random.as_os_str()]).fails_with_one_line();
    pinfs(&["stat".as_ref(), random.as_os_str()]).fails_with_one_line();

    let half = pool.sibling("half");
    std::fs::copy(&pool.path, &half).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&half).unwrap();
    f.set_len(128 << 20).unwrap();
    drop(f);
    let line = io(Some(&half), &["ls /"]).fails_with_one_line().to_string();
    assert!(
        line.starts_with(&format!("pinfs: {}: ", half.display())),
        "{line}"
    );
    pinfs(&["fsck".as_ref(), half.as_os_str()]).fails_with_one_line();

    let tiny = pool.sibling("tiny");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    io(Some(&tiny), &["ls /"]).fails_with_one_line();

    // The pool itself is untouched by all this.
    pool.fsck().ok();
}

#[test]
fn options_are_validated() {
    let line = io(None, &[]).code;
    assert_eq!(line, Some(1), "a usage error without -c is exit status 1");
    let run = pinfs(&["io", "--policy", "sometimes", "-c", "echo"]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    let run = pinfs(&["io", "--break-time", "forever", "-c", "echo"]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    let run = pinfs(&[
        "io",
        "--policy",
        "revoke",
        "--break-time",
        "0.5",
        "-c",
        "echo ok",
    ]);
    run.ok();
    assert_eq!(run.lines(), ["ok"]);
    let line = pinfs(&["io", "--socket", "/nowhere", "-c", "echo"])
        .fails_with_one_line()
        .to_string();
    // A socket nobody serves is one error naming it.
    assert!(
        line.contains("/nowhere") && line.contains("No such file or directory"),
        "{line}"
    );
}

#[test]
fn stat_and_demo() {
    let pool = Pool::mkfs();
    let run = pinfs(&["stat".as_ref(), pool.path.as_os_str()]);
    run.ok();
    let lines = run.lines();
    assert!(lines.iter().any(|l| l.starts_with("blocks ")), "{lines:?}");
    assert!(
        lines.contains(&"busy 0") && lines.contains(&"bytes 268435456"),
        "{lines:?}"
    );
    // The demo tells its own story: its unresponsive holder makes the lease
    // engine and the mapping layer emit forced-removal and invalidation
    // trace events, but they reach stderr only when asked for.
    let run = pinfs(&["demo"]);
    run.ok();
    assert!(run.stdout.contains("consistent"), "{run:#?}");
    // One name per actor: `@NAME`, as io prints it.
    assert!(
        run.stdout.contains("@holder is notified") && run.stdout.contains("ACTIVE @holder /leased"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("owner "), "{run:#?}");
    assert!(
        run.stdout
            .contains("A store through the invalidated mapping now raises SIGBUS"),
        "{run:#?}"
    );
    // The device scenes: a timeline, real devices, and no log lines.
    assert!(run.stderr.is_empty(), "{run:#?}");
    for needle in [
        "] @app quiesces: stops the stream",
        "its writes complete with protection-error",
        "its writes keep completing ok, into scratch memory",
        "revocation confirmed after",
        "unchanged, no device write reached them",
        "refused at once, Text file busy",
        "@app is told: break /ira refused",
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {run:#?}");
    }
}

/// `bench lease --quick` runs (a few seconds) and prints a verdict on each
/// round-trip line with a target (issue 12's cold targets among them), and
/// the physical limit — bare hand-offs measured in the same run — next to
/// pinfs's figure for every carrier. Figures are not asserted.
#[test]
fn bench_lease_quick_prints_verdicts_and_the_physical_limit() {
    let run = pinfs(&["bench", "lease", "--quick"]);
    run.ok();
    let lines = run.lines();
    for (label, goal) in [
        ("hot p50", "0.25x"),
        ("hot p99", "0.25x"),
        ("cold p50", "0.5x"),
        ("cold p99", "0.8x"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("{label}: {run:#?}"));
        assert!(
            line.ends_with("target met") || line.ends_with(&format!("(target <= {goal})")),
            "{line}"
        );
    }
    for carrier in [
        "futex, two threads",
        "condvar, two threads",
        "futex, two processes",
        "eventfd, two processes",
    ] {
        for mode in ["hot p50", "hot p99", "cold p50", "cold p99"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("{mode} {carrier} ")) && l.contains('x')),
                "{mode} {carrier}: {run:#?}"
            );
        }
    }
    let summary = lines.last().copied().unwrap_or_default();
    assert!(summary.starts_with("all 4 targets: target "), "{run:#?}");
}

/// `bench dma --quick` runs (a few seconds), logs nothing, and prints a
/// verdict on every line that has a target: the figures are not asserted
/// (no wall-clock assertions), their presence and wording are.
#[test]
fn bench_dma_quick_prints_a_verdict_per_target() {
    let run = pinfs(&["bench", "dma", "--quick"]);
    run.ok();
    let lines = run.lines();
    let with_target: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("target met") || l.contains("target NOT met: "))
        .collect();
    for label in [
        "Mapping::register, uring device",
        "Mapping::register, soft device",
        "soft write 4 KiB",
        "soft write 1024 KiB",
        "uring write 4 KiB",
        "uring write 1024 KiB",
        "revocation uring, 0 in flight",
        "revocation soft, 64 in flight",
        "truncate 256 MiB registered, uring",
        "truncate 256 MiB registered, soft",
    ] {
        assert!(
            with_target.iter().any(|l| l.starts_with(label)),
            "{label}: {run:#?}"
        );
    }
    let summary = lines.last().copied().unwrap_or_default();
    assert!(summary.starts_with("all 14 targets: target "), "{run:#?}");
    assert_eq!(with_target.len(), 15, "14 lines and the summary: {run:#?}");
}

/// `bench scale --quick` runs (1 GiB and 1 TiB sparse pools, a few
/// seconds) and prints a row per pool and a verdict per target; figures are
/// not asserted (no wall-clock assertions), their presence and wording are.
#[test]
fn bench_scale_quick_prints_a_row_per_pool_and_verdicts() {
    let run = pinfs(&["bench", "scale", "--quick"]);
    run.ok();
    let lines = run.lines();
    for pool in ["1G", "1024G"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(pool)),
            "{pool}: {run:#?}"
        );
    }
    for label in [
        "1024 GiB mkfs",
        "1024 GiB mount",
        "1024 GiB resident after mount",
        "fsck 1024 GiB / fsck 1 GiB",
    ] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(label)
                && (l.contains("target met") || l.contains("target NOT met: "))),
            "{label}: {run:#?}"
        );
    }
    let summary = lines.last().copied().unwrap_or_default();
    assert!(
        summary.trim_start().starts_with("all 4 targets: target "),
        "{run:#?}"
    );
}

/// Start `pinfs io --pool POOL -c "echo mounted" -c "sleep 3000"` and return
/// once it has mounted (it printed its first line): the holder of the pool.
fn hold(pool: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(["io", "--pool"])
        .arg(pool)
        .args(["-c", "echo mounted", "-c", "sleep 3000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the holder");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "mounted\n");
    child
}

#[test]
fn a_mounted_pool_is_busy_for_every_other_process() {
    let pool = Pool::mkfs();
    pool.io(&["open -c /f", "pwrite -S 0x61 0 4k"]).ok();
    let mut holder = hold(&pool.path);
    let busy = format!(
        "Device or resource busy: pool is in use by pid {} (pinfs); {}",
        holder.id(),
        pinfs::media::lock::SHARE_HINT
    );
    // A second io, fsck, mkfs -f (with and without --size), stat: each one
    // line naming the holder, and nothing changed.
    let path = pool.path.as_os_str();
    for run in [
        pool.io(&["open /f", "truncate 0"]),
        pool.fsck(),
        pinfs(&["mkfs".as_ref(), "-f".as_ref(), path]),
        pinfs(&[
            "mkfs".as_ref(),
            "-f".as_ref(),
            "--size".as_ref(),
            "8m".as_ref(),
            path,
        ]),
        pinfs(&["stat".as_ref(), path]),
    ] {
        let line = run.fails_with_one_line();
        assert_eq!(line, format!("pinfs: {}: {busy}", pool.path.display()));
    }
    assert_eq!(std::fs::metadata(&pool.path).unwrap().len(), 256 << 20);
    // The holder dies (as a crash would end it): the lock goes with it.
    holder.kill().unwrap();
    holder.wait().unwrap();
    pool.fsck().ok();
    let run = pool.io(&["open /f", "stat"]);
    run.ok();
    assert_eq!(run.lines()[0], "size 4096");
}

#[test]
fn mkfs_refuses_an_existing_file_system_without_force() {
    let pool = Pool::mkfs();
    pool.io(&["open -c /keep", "pwrite 0 4k"]).ok();
    let path = pool.path.as_os_str();
    for args in [vec!["mkfs"], vec!["mkfs", "--size", "8m"]] {
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        args.push(path);
        let line = pinfs(&args).fails_with_one_line().to_string();
        assert_eq!(
            line,
            format!(
                "pinfs: {}: holds a pinfs file system (format version {}, 268435456 bytes); use -f to overwrite it (its files are lost)",
                pool.path.display(),
                pinfs::format::FORMAT_VERSION
            )
        );
    }
    // Untouched: same size, same file.
    assert_eq!(std::fs::metadata(&pool.path).unwrap().len(), 256 << 20);
    pool.io(&["open /keep", "stat"]).ok();
    // -f without --size keeps the pool's size (never shrinks silently).
    let run = pinfs(&["mkfs".as_ref(), "-f".as_ref(), path]);
    run.ok();
    assert!(run.stdout.contains("268435456 bytes"), "{run:#?}");
    let line = pool.io(&["open /keep"]).fails_with_one_line().to_string();
    assert_eq!(line, "open: No such file or directory");
    // -f --size resizes, as asked.
    let run = pinfs(&[
        "mkfs".as_ref(),
        "--force".as_ref(),
        "--size".as_ref(),
        "8m".as_ref(),
        path,
    ]);
    run.ok();
    assert!(run.stdout.contains("8388608 bytes"), "{run:#?}");
    pool.fsck().ok();
    // A file holding something else, or a damaged pinfs superblock, is not
    // formatted over without -f either; one of zeros is.
    let other = pool.sibling("other");
    for (head, what) in [
        (
            b"not a file system".to_vec(),
            "data that is not a pinfs file system",
        ),
        (b"PINFS\0\r\n\x01".to_vec(), "a damaged pinfs file system"),
    ] {
        let mut bytes = head.clone();
        bytes.resize(8 << 20, 0);
        std::fs::write(&other, &bytes).unwrap();
        let line = pinfs(&["mkfs".as_ref(), other.as_os_str()])
            .fails_with_one_line()
            .to_string();
        assert_eq!(
            line,
            format!(
                "pinfs: {}: holds {what}; use -f to overwrite it (its files are lost)",
                other.display()
            )
        );
        assert_eq!(std::fs::read(&other).unwrap(), bytes, "untouched");
    }
    std::fs::write(&other, vec![0u8; 8 << 20]).unwrap();
    pinfs(&["mkfs".as_ref(), other.as_os_str()]).ok();
}

#[test]
fn mkfs_sizes_are_checked_and_a_failed_mkfs_leaves_nothing() {
    let pool = Pool::mkfs();
    let fresh = pool.sibling("fresh");
    for size in ["1m", "4095k", "0"] {
        let line = pinfs(&[
            "mkfs".as_ref(),
            "--size".as_ref(),
            size.as_ref(),
            fresh.as_os_str(),
        ])
        .fails_with_one_line()
        .to_string();
        assert!(
            line.contains("too small for a file system (at least 4 MiB): Invalid argument"),
            "{line}"
        );
        assert!(
            !fresh.exists(),
            "mkfs --size {size} left {} behind",
            fresh.display()
        );
    }
    for (size, says) in [
        ("-1", "\"-1\": must not be negative"),
        ("12q", "\"12q\" is not a size"),
        ("99999999999999999999", "too large"),
    ] {
        let line = pinfs(&[
            "mkfs".as_ref(),
            "--size".as_ref(),
            size.as_ref(),
            fresh.as_os_str(),
        ])
        .fails_with_one_line()
        .to_string();
        assert!(line.starts_with("pinfs: ") && line.contains(says), "{line}");
        assert!(!fresh.exists());
    }
    // A file mkfs created but could not use is removed: a directory that
    // does not exist cannot even be created in; a pool inside a missing
    // directory fails cleanly.
    let nowhere = pool.sibling("no/such/dir");
    pinfs(&["mkfs".as_ref(), nowhere.as_os_str()]).fails_with_one_line();
    // The true minimum works.
    let run = pinfs(&[
        "mkfs".as_ref(),
        "--size".as_ref(),
        "4m".as_ref(),
        fresh.as_os_str(),
    ]);
    run.ok();
    assert!(run.stdout.contains("4194304 bytes"), "{run:#?}");
    // A small existing file without a file system is refused with the same
    // words, and is left as it was (mkfs did not create it).
    let small = pool.sibling("small");
    std::fs::write(&small, vec![0u8; 2 << 20]).unwrap();
    let line = pinfs(&["mkfs".as_ref(), small.as_os_str()])
        .fails_with_one_line()
        .to_string();
    assert!(
        line.contains("too small for a file system (at least 4 MiB)"),
        "{line}"
    );
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 2 << 20);
    // A directory is no pool.
    pinfs(&["mkfs".as_ref(), pool.dir.path().as_os_str()]).fails_with_one_line();
}

#[test]
fn mkfs_says_precisely_what_the_kernel_refuses() {
    let pool = Pool::mkfs();
    let run = pinfs(&["mkfs".as_ref(), "-f".as_ref(), pool.path.as_os_str()]);
    run.ok();
    if run.stdout.contains("File pool") {
        assert!(
            run.stdout.contains(
                "kernel DMA refused (the kernel will not pin MAP_SHARED pages of a disk file for io_uring fixed buffers; pinfs long-term pins, mappings and leases work)"
            ),
            "{run:#?}"
        );
        // And pinfs's own long-term pin works on it.
        let run = pool.io(&["open -c /f", "pwrite 0 64k", "mmap -d 0 64k", "pin 0 16k"]);
        run.ok();
        assert_eq!(run.lines().last(), Some(&"pin 1"));
    } else {
        // The temporary directory is on tmpfs: the kernel allows it.
        assert!(
            run.stdout
                .contains("kernel DMA (io_uring fixed buffers) allowed"),
            "{run:#?}"
        );
    }
}

#[test]
fn trace_events_reach_stderr_only_when_asked_for() {
    // A holder that never reacts: the lease is forcibly removed at
    // lease-break-time, which the library traces as a warning.
    let script = [
        "-c",
        "open -c /f",
        "-c",
        "pwrite 0 4k",
        "-c",
        "@h open /f",
        "-c",
        "@h lease read --layout",
        "-c",
        "@b open /f",
        "-c",
        "@b truncate 0",
        "-c",
        "@h wait-break 5000",
    ];
    let mut args = vec!["io", "--break-time", "0.1"];
    args.extend(script);
    let run = pinfs(&args);
    run.ok();
    let story = ["wrote 4096/4096 bytes at offset 0", "break /f none"];
    assert_eq!(run.lines(), story);
    for env in [[("RUST_LOG", "info")], [("PINFS_LOG", "info")]] {
        let run = pinfs_env(&args, &env);
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(run.stderr.contains("pinfs::lease"), "{env:?}: {run:#?}");
        assert_eq!(run.lines(), story, "stdout stays the script's own");
    }
    let mut verbose = vec!["-v"];
    verbose.extend(&args);
    let run = pinfs(&verbose);
    assert!(run.stderr.contains("pinfs::lease"), "{run:#?}");
    // PINFS_LOG wins over -v and RUST_LOG.
    let run = pinfs_env(&verbose, &[("PINFS_LOG", "off"), ("RUST_LOG", "trace")]);
    run.ok();
    assert!(!run.stderr.contains("pinfs::lease"), "{run:#?}");
    assert_eq!(run.lines(), story);
    // Both are documented where a user looks.
    let help = pinfs(&["--help"]);
    assert!(help.stdout.contains("PINFS_LOG, RUST_LOG") && help.stdout.contains("-v, --verbose"));
}

#[test]
fn numbers_are_never_negative_and_say_so_in_one_line() {
    for args in [
        vec!["io", "--break-time", "-1", "-c", "echo"],
        vec!["mkfs", "--size", "-1", "/nonexistent/pool"],
    ] {
        let line = pinfs(&args).fails_with_one_line().to_string();
        assert!(
            line.starts_with("pinfs: ") && line.ends_with("\"-1\": must not be negative"),
            "{line}"
        );
    }
    let run = io(
        None,
        &[
            "open -c /f",
            "pwrite -1 4k",
            "pwrite 0 -4k",
            "pread -v -1 4",
            "truncate -1",
            "fpunch -1 4k",
            "pwrite -S -1 0 4",
            "sleep -5",
            "wait-break -1",
            "unpin -1",
            "lease read --layout --range -1 4k",
            "mmap -1 4k",
            "mmap -F -1 0 4k",
        ],
    );
    assert_eq!(run.code, Some(1), "{run:#?}");
    let lines = run.err_lines();
    assert_eq!(lines.len(), 12, "{run:#?}");
    for line in lines {
        assert!(line.contains(": must not be negative; usage: "), "{line}");
    }
}

#[test]
fn wait_with_nothing_pending_says_so_and_uncollected_results_are_reported() {
    let run = io(None, &["@x wait", "wait"]);
    run.ok();
    assert_eq!(
        run.lines(),
        ["wait: nothing pending", "wait: nothing pending"]
    );

    // Background commands nobody waits for: each result is reported at the
    // end, and a failure among them fails the run.
    let run = io(
        None,
        &[
            "open -c /f",
            "@a open /f",
            "@a pwrite 0 4k &",
            "@b truncate 4k &",
        ],
    );
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.lines(), ["wrote 4096/4096 bytes at offset 0"]);
    assert_eq!(
        run.err_lines(),
        [
            "@a: result of 'pwrite 0 4k' never collected: ok",
            "@b: result of 'truncate 4k' never collected: Bad file descriptor",
        ]
    );
    let run = io(None, &["@a echo hi &"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.err_lines(),
        ["@a: result of 'echo hi' never collected: ok"]
    );
}

#[test]
fn help_lists_io_commands_and_policies() {
    for args in [vec!["io", "--help"], vec!["help", "io"]] {
        let run = pinfs(&args);
        run.ok();
        for needle in [
            "open [-r] [-w] [-c] [-t] [-n] PATH",
            "fiemap",
            "wait-break MS",
            "mmap [-r] [-s] [-d] [-F HEXFLAGS] OFF LEN",
            "pin OFF LEN",
            "pins",
            "wait: nothing",
            "dma-reg [--device soft|uring] [--revoke invalidate|redirect|odp] OFF LEN",
            "dma-stream [-S BYTE] ID OFF LEN",
            "With --socket, each actor is its own client of the daemon",
            "fail   — fails at once",
            "wait   — breaks layout leases",
            "defer  — completes at once",
            "revoke — breaks layout leases",
        ] {
            assert!(
                run.stdout.contains(needle),
                "{needle:?} missing from {args:?}"
            );
        }
    }
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    for args in [
        vec!["io", "--pool", missing, "-c", "ls /"],
        vec!["io", "--policy", "sometimes", "-c", "echo"],
        vec!["io", "--break-time", "forever", "-c", "echo"],
        vec!["io", "--break-time", "1e9", "-c", "echo"],
        vec!["io"],
        vec!["fsck", missing],
        vec!["stat", missing],
        vec!["mkfs", "--size", "lots", missing],
        vec!["mkfs", "--size", "2m", missing],
        vec!["bench", "everything"],
        vec!["frobnicate"],
        vec!["fsck"],
    ] {
        let line = pinfs(&args).fails_with_one_line().to_string();
        assert!(line.starts_with("pinfs: "), "{args:?}: {line}");
    }
    let line = pinfs(&["io", "--policy", "x", "-c", "echo"])
        .fails_with_one_line()
        .to_string();
    assert!(line.contains("fail, wait, defer or revoke"), "{line}");
    assert!(
        !Path::new(missing).exists(),
        "a failed mkfs left its pool behind"
    );
}

#[test]
fn the_docs_are_complete_in_this_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let cli = std::fs::read_to_string(root.join("docs/cli.md")).unwrap();
    for (name, text) in [("README.md", &readme), ("docs/cli.md", &cli)] {
        assert!(
            !text.contains("../shared"),
            "{name} sends readers outside the repository"
        );
    }
    assert!(readme.contains("docs/cli.md"));
    // Every io command the help lists is in the reference, as code.
    for cmd in [
        "open",
        "close",
        "pwrite",
        "pread",
        "truncate",
        "falloc",
        "fpunch",
        "fzero",
        "fcollapse",
        "finsert",
        "reflink",
        "fsync",
        "stat",
        "fiemap",
        "statfs",
        "unlink",
        "mkdir",
        "rmdir",
        "rename",
        "ls",
        "lease",
        "getlease",
        "wait-break",
        "leases",
        "mmap",
        "mwrite",
        "mread",
        "persist",
        "munmap",
        "mstat",
        "pin",
        "unpin",
        "pins",
        "sleep",
        "echo",
        "wait",
        "dma-reg",
        "dma-write",
        "dma-read",
        "dma-stream",
        "dma-stop",
        "dma-dereg",
        "pinfs serve",
        "pinfs mkfs",
        "pinfs fsck",
        "pinfs io",
        "pinfs stat",
        "pinfs demo",
        "pinfs bench",
        "PINFS_LOG",
        "RUST_LOG",
    ] {
        assert!(cli.contains(&format!("`{cmd}")), "docs/cli.md lacks `{cmd}");
    }
    for words in [
        "Exit status",
        "Device or resource busy",
        "not yet available",
    ] {
        assert!(cli.contains(words), "docs/cli.md lacks {words:?}");
    }
}
