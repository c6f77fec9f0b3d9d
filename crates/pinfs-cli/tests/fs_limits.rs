//! The outside review's scenario at the command line: user commands must not
//! leave a pool that no longer mounts. `finsert` that would push a block
//! preallocated at the end of the largest file past it is refused with
//! `EFBIG` ("File too large"), and `fsck` then finds the pool consistent.

mod support;

use std::process::Command;

use support::io;

const MAX_FILE_BYTES: u64 = 1 << 50;

#[test]
fn insert_past_the_largest_file_is_refused_and_fsck_is_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let pool = pool.to_str().expect("utf-8 path");
    let mkfs = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(["mkfs", "--size", "32m", pool])
        .output()
        .expect("run pinfs mkfs");
    assert!(mkfs.status.success(), "{mkfs:?}");
    let falloc = format!("falloc -k {} 4096", MAX_FILE_BYTES - 4096);
    let (out, err, ok) = io(
        &["--pool", pool],
        &[
            "open -c -w /f",
            "pwrite 0 8192",
            &falloc,
            "finsert 0 4096",
            "stat",
        ],
    );
    assert!(!ok, "the refused insert makes io exit 1: {out}{err}");
    assert_eq!(err.trim(), "finsert: File too large", "{err}");
    assert!(out.contains("size 8192"), "nothing changed: {out}");
    let fsck = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(["fsck", pool])
        .output()
        .expect("run pinfs fsck");
    assert!(
        fsck.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// A write that crosses the largest file size writes up to it and says so
/// (`wrote 100/4096`, as xfs_io reports a short write); one that starts at
/// the limit fails with `File too large`.
#[test]
fn a_write_across_the_largest_file_is_short() {
    let at = MAX_FILE_BYTES - 100;
    let cross = format!("pwrite {at} 4096");
    let past = format!("pwrite {MAX_FILE_BYTES} 1");
    let (out, err, ok) = io(&[], &["open -c /f", &cross, "stat", &past]);
    assert!(!ok, "the write at the limit fails: {out}{err}");
    assert!(
        out.contains(&format!("wrote 100/4096 bytes at offset {at}")),
        "{out}"
    );
    assert!(out.contains(&format!("size {MAX_FILE_BYTES}")), "{out}");
    assert_eq!(err.trim(), "pwrite: File too large", "{err}");
}
