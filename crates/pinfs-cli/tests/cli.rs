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

/// Run `pinfs ARGS`.
fn pinfs<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(args)
        .env_remove("PINFS_LOG")
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
    assert!(line.contains("not supported yet"), "{line}");
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
    let run = pinfs(&["demo"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    // The demo's unresponsive holder makes the lease engine and the mapping
    // layer log their forced-removal and invalidation trace events (SPEC §9)
    // as warnings; nothing else may reach stderr.
    for line in run.stderr.lines() {
        assert!(
            line.contains(" WARN pinfs::"),
            "unexpected stderr line {line:?}"
        );
    }
    assert!(run.stdout.contains("consistent"), "{run:#?}");
    assert!(
        run.stdout
            .contains("A store through the invalidated mapping now raises SIGBUS"),
        "{run:#?}"
    );
}
