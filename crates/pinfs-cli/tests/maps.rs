//! Mappings through `pinfs io`, as a user would try them: stores and loads,
//! `SIGBUS` reported and survived, holes, live layout changes, `MAP_DIRECT`
//! with its lease and its invalidation, pins through a mapping, and the
//! truncate policies meeting a direct-mapped, pinned file.

mod support;

use support::io;

fn field(out: &str, name: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .collect()
}

#[test]
fn stores_reach_the_file_and_holes_allocate_only_when_written() {
    let (out, err, ok) = io(
        &[],
        &[
            "open -c /f",
            "truncate 64k",
            "statfs",
            "mmap 0 64k",
            "mread -v 0 16",
            "statfs", // reading a hole allocates nothing
            "mwrite -S 0x41 8k 10",
            "statfs", // writing one allocates a zeroed fault-around chunk
            "pread -v 8k 16",
            "persist 8k 4k",
            "munmap",
        ],
    );
    assert!(ok, "{err}");
    let free = field(&out, "free ");
    assert_eq!(free[0], free[1], "a hole read allocated: {out}");
    // The 64 KiB file is one wholly free fault-around chunk, all mapped.
    assert_eq!(
        free[1] - free[2],
        pinfs::fs::FAULT_AROUND_BYTES / 4096,
        "one chunk for the store: {out}"
    );
    assert!(
        out.contains("00002000:  41 41 41 41 41 41 41 41 41 41 00 00 00 00 00 00"),
        "{out}"
    );
}

#[test]
fn sigbus_beyond_eof_is_reported_and_survived() {
    let (out, err, ok) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 8k",
            "mmap 0 16k",
            "mread 8k 4",
            "mwrite 12k 1",
            "truncate 4k",
            "mread 4k 1",
            "mread -v 0 4",
            "echo survived",
        ],
    );
    assert!(!ok);
    assert_eq!(err.matches("mread: SIGBUS").count(), 2, "{err}");
    assert_eq!(err.matches("mwrite: SIGBUS").count(), 1, "{err}");
    assert!(
        out.contains("survived") && out.contains("00000000:  cd cd cd cd"),
        "{out}"
    );
}

#[test]
fn flags_are_validated() {
    let (_, err, _) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 4k",
            "mmap -F 0x400003 0 4k",
            "mmap -F 0x400001 0 4k",
            "mmap -F 0x80003 0 4k",
        ],
    );
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        ["mmap: Operation not supported"],
        "unknown bit: refused only with MAP_SHARED_VALIDATE"
    );
}

#[test]
fn map_direct_faults_that_would_change_the_layout_raise_sigbus() {
    let (_, err, _) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 8k",
            "falloc -k 8k 8k",
            "truncate 24k",
            "mmap -d 0 24k",
            "mwrite 0 4",   // written block: fine
            "mwrite 8k 4",  // unwritten: conversion
            "mwrite 16k 4", // hole: allocation
            "open -c /g",
            "reflink /f",
            "mmap -d 0 8k",
            "mread 0 4", // reflinked file
        ],
    );
    assert_eq!(err.matches("mwrite: SIGBUS").count(), 2, "{err}");
    assert_eq!(err.matches("mread: SIGBUS").count(), 1, "{err}");
}

#[test]
fn a_direct_mapping_is_broken_by_others_and_invalidated_at_break_time() {
    // A holder that reacts: it unmaps, and the truncate completes.
    let (out, err, ok) = io(
        &["--break-time", "0"],
        &[
            "@h open -c /f",
            "@h pwrite 0 64k",
            "@h mmap -d 0 64k",
            "@h mwrite 0 4",
            "@b open /f",
            "@b truncate 8k &",
            "@h wait-break 5000",
            "@h munmap",
            "@b wait",
            "@b stat",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("break /f none") && out.contains("size 8192"),
        "{out}"
    );
    // A holder that never reacts: at lease-break-time the mapping is
    // invalidated, the truncate completes, and every access is SIGBUS.
    let (out, err, _) = io(
        &["--break-time", "0.3"],
        &[
            "@h open -c /f",
            "@h pwrite 0 64k",
            "@h mmap -d 0 64k",
            "@b open /f",
            "@b truncate 8k",
            "@b stat",
            "@h mread 0 4",
            "@h mwrite 0 4",
        ],
    );
    assert!(out.contains("size 8192"), "{out}");
    assert!(
        err.contains("mread: SIGBUS") && err.contains("mwrite: SIGBUS"),
        "{err}"
    );
}

#[test]
fn revoke_invalidates_the_pinning_direct_mapping() {
    let (out, err, _) = io(
        &["--policy", "revoke", "--break-time", "0.3"],
        &[
            "@h open -c /f",
            "@h pwrite 0 64k",
            "@h mmap -d 0 64k",
            "@h pin 0 16k",
            "@b open /f",
            "@b truncate 0",
            "@b stat",
            "statfs",
            "@h pins",
            "@h mread 0 4",
        ],
    );
    assert!(out.contains("size 0"), "{out}{err}");
    assert_eq!(field(&out, "busy "), [0], "revoked blocks are free: {out}");
    assert!(!out.contains("@h\n"), "the revoked pin is gone: {out}");
    assert!(err.contains("mread: SIGBUS"), "{err}");
}

#[test]
fn a_pin_needs_a_direct_mapping() {
    let (out, err, _) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 8k",
            "mmap 0 8k",
            "pin 0 4k",
            "mmap -d 0 8k",
            "pin 0 4k",
            "munmap",
            "pins",
        ],
    );
    assert_eq!(
        err.matches("pin: Operation not permitted").count(),
        1,
        "{err}"
    );
    assert!(
        out.contains("pin 1") && out.contains("\t/f 0 4095"),
        "the pin outlives the mapping: {out}"
    );
}

#[test]
fn mstat_shows_2mib_pages_where_the_extents_allow() {
    // Let memfd memory advised MADV_HUGEPAGE have 2 MiB pages (as root).
    let knob = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
    let now = std::fs::read_to_string(knob).unwrap_or_default();
    let unavailable = now.is_empty()
        || now.contains("[deny]")
        || (now.contains("[never]") && std::fs::write(knob, "advise").is_err());
    if unavailable {
        eprintln!(
            "skipping mstat_shows_2mib_pages_where_the_extents_allow: no shmem THP ({now:?})"
        );
        return;
    }
    let (out, err, ok) = io(
        &[],
        &[
            "open -c /f",
            "truncate 4m",
            "mmap 0 4m",
            "mwrite 0 4m", // two whole-window faults
            "stat",
            "mstat",
            "fpunch 8k 4k", // window 0 leaves its 2 MiB page
            "mread 0 4m",
            "mstat",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(field(&out, "blocks "), vec![1024], "{out}");
    assert_eq!(field(&out, "huge "), vec![4 << 20, 2 << 20], "{out}");
    assert!(out.contains("flags shared\n"), "{out}");
}
