//! Device registrations tried as a new user would, through `pinfs io`: one
//! test per rule of SPEC §6.1 (`MAP_DIRECT` with a revocable device, a plain
//! mapping without or with the actor's unbreakable lease, on-demand paging,
//! `No such device or address` after the lease broke, a device lacking the
//! mode), the `pins` listing, and a truncate by another actor while the
//! device streams writes — the owner told and deregistering, or never
//! reacting and revoked at lease-break-time.

mod support;

use support::io;

/// @main's file /f of 64 KiB, mapped `MAP_DIRECT`.
const DIRECT: &[&str] = &["open -c /f", "pwrite 0 64k", "mmap -d 0 64k"];

fn with(set_up: &[&'static str], rest: &[&'static str]) -> Vec<&'static str> {
    set_up.iter().chain(rest).copied().collect()
}

fn mr_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("mr "))
        .unwrap_or_else(|| panic!("no `mr` line in {out}"))
}

#[test]
fn map_direct_and_a_revocable_device_register_and_the_device_writes() {
    let (out, err, ok) = io(
        &[],
        &with(
            DIRECT,
            &[
                "dma-reg 0 16k",
                "dma-reg --revoke redirect 16k 16k",
                "dma-write -S 0x41 1 0 4k",
                "dma-read -v 1 0 16",
                "pread -v 0 16",
                "pins",
                "dma-dereg 1",
                "dma-dereg 2",
                "pins",
            ],
        ),
    );
    assert!(ok, "{err}");
    let mr = mr_line(&out);
    let words: Vec<&str> = mr.split_whitespace().collect();
    assert_eq!(words[0..2], ["mr", "1"], "{mr}");
    assert_eq!(words[2], "iova");
    assert!(words[3].starts_with("0x"), "{mr}");
    assert_eq!((words[4], words[6]), ("lkey", "rkey"), "{mr}");
    assert!(out.contains("\nok\n"), "{out}");
    assert_eq!(
        out.matches("00000000:  41 41 41 41").count(),
        2,
        "the device's bytes, read by the device and by pread: {out}"
    );
    assert!(
        out.contains("@main\n\t/f 0 16383 soft mr 1\n\t/f 16384 32767 soft mr 2\n"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("soft mr 2"),
        "deregistered: nothing listed after: {out}"
    );
}

#[test]
fn a_plain_mapping_without_the_lease_is_not_supported() {
    let (out, err, ok) = io(
        &[],
        &["open -c /f", "pwrite 0 64k", "mmap 0 64k", "dma-reg 0 16k"],
    );
    assert!(!ok);
    assert!(err.contains("dma-reg: Operation not supported"), "{err}");
    assert!(!out.contains("mr "), "{out}");
}

#[test]
fn the_actors_unbreakable_lease_entitles_a_plain_mapping() {
    let (out, err, ok) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 64k",
            "mmap 0 64k",
            "lease read --layout --exclusive",
            "dma-reg 0 16k",
            "dma-write 1 0 4k",
            "@b open /f",
            "@b truncate 0",
            "wait-break 1000",
        ],
    );
    assert!(!ok, "the other actor's truncate must fail");
    assert!(mr_line(&out).starts_with("mr 1 "), "{out}");
    assert!(err.contains("truncate: Text file busy"), "{err}");
    assert!(out.contains("break /f refused"), "{out}");
}

#[test]
fn an_odp_device_registers_through_a_plain_mapping() {
    let (out, err, ok) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 64k",
            "mmap 0 64k",
            "dma-reg --revoke odp 0 64k",
            "dma-write -S 0x42 1 4k 4k",
            "fpunch 4k 4k",
            "dma-write -S 0x43 1 4k 4k",
            "pread -v 4k 16",
            "pins",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("00001000:  43 43 43 43"),
        "re-faulted after the punch: {out}"
    );
    assert!(out.contains("\t/f 0 65535 soft mr 1 odp"), "{out}");
}

#[test]
fn a_broken_map_direct_lease_is_enxio() {
    let (out, err, ok) = io(
        &["--break-time", "0.1"],
        &with(DIRECT, &["@b open /f", "@b truncate 32k", "dma-reg 0 16k"]),
    );
    assert!(!ok);
    assert!(err.contains("dma-reg: No such device or address"), "{err}");
    assert!(!out.contains("mr "), "{out}");
}

#[test]
fn a_device_lacking_the_mode_is_not_supported() {
    let (_out, err, ok) = io(
        &[],
        &with(DIRECT, &["dma-reg --device uring --revoke odp 0 16k"]),
    );
    assert!(!ok);
    assert!(err.contains("dma-reg: Operation not supported"), "{err}");
    let (_out, err, ok) = io(&[], &with(DIRECT, &["dma-reg --revoke sideways 0 16k"]));
    assert!(!ok);
    assert!(err.contains("no such revocation mode"), "{err}");
}

#[test]
fn only_the_registering_actor_deregisters() {
    let (_out, err, ok) = io(&[], &with(DIRECT, &["dma-reg 0 16k", "@b dma-dereg 1"]));
    assert!(!ok);
    assert!(err.contains("dma-dereg: Operation not permitted"), "{err}");
}

/// Another actor truncates while the device streams; the owner is told,
/// stops the stream, deregisters and unmaps; the truncate completes.
#[test]
fn truncate_during_a_stream_the_owner_deregisters() {
    let (out, err, ok) = io(
        &["--policy", "revoke", "--break-time", "30"],
        &with(
            DIRECT,
            &[
                "dma-reg 0 64k",
                "@dev dma-stream -S 0x44 1 0 4k &",
                "sleep 50",
                "@b open /f",
                "@b truncate 0 &",
                "wait-break 5000",
                "dma-dereg 1",
                "munmap",
                "@b wait",
                "@dev wait",
                "@b stat",
                "statfs",
            ],
        ),
    );
    assert!(ok, "{err}\n{out}");
    assert!(out.contains("break /f none"), "{out}");
    let stream = out
        .lines()
        .find(|l| l.starts_with("dma-stream: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!stream.starts_with("dma-stream: 0 writes"), "{stream}");
    assert!(out.contains("size 0"), "{out}");
    assert!(out.contains("busy 0"), "{out}");
}

/// The owner never reacts: at lease-break-time the device is revoked — its
/// writes then complete with `protection-error` — and the truncate
/// completes with nothing left busy.
#[test]
fn truncate_during_a_stream_an_unresponsive_owner_is_revoked() {
    let (out, err, ok) = io(
        &["--policy", "revoke", "--break-time", "0.2"],
        &with(
            DIRECT,
            &[
                "dma-reg 0 64k",
                "@dev dma-stream 1 0 4k &",
                "sleep 50",
                "@b open /f",
                "@b truncate 0",
                "@b statfs",
                "dma-write 1 0 4k",
                "sleep 100",
                "dma-stop 1",
                "@dev wait",
                "pins",
            ],
        ),
    );
    assert!(!ok, "the write after revocation fails");
    // Still listed (its device addresses stay reserved) until dma-dereg.
    assert!(out.contains("\t/f 0 65535 soft mr 1 revoked"), "{out}");
    assert!(err.contains("dma-write: protection-error"), "{err}");
    assert!(out.contains("\nprotection-error\n"), "{out}");
    assert!(out.contains("busy 0"), "{out}");
    let stream = out
        .lines()
        .find(|l| l.starts_with("dma-stream: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(stream.contains("protection-error"), "{stream}");
}

/// `uring` on a regular-file pool: the kernel will not pin its pages; the
/// registration fails with the kernel's error and says why. The same script
/// with `soft` works (the control).
#[test]
fn uring_on_a_regular_file_pool_fails_with_the_kernels_error() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(["mkfs", "--size", "16m"])
        .arg(&pool)
        .output()
        .unwrap();
    assert!(made.status.success());
    let pool = pool.to_str().unwrap();
    let (out, err, ok) = io(
        &["--pool", pool],
        &with(DIRECT, &["dma-reg --device uring 0 16k"]),
    );
    assert!(!ok);
    let line = err
        .lines()
        .find(|l| l.starts_with("dma-reg: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.len() > "dma-reg: Operation not supported".len(),
        "says why: {line}"
    );
    assert!(!out.contains("mr "), "{out}");
    println!("{line}");
    let (out, err, ok) = io(&["--pool", pool], &with(DIRECT, &["dma-reg 0 16k"]));
    assert!(ok, "{err}");
    assert!(out.contains("mr 1 "), "{out}");
}

/// The same with real kernel DMA (`uring`, the default memfd pool allows
/// it) and `redirect`: after revocation the device keeps writing without an
/// error, and its writes land nowhere — the file given the blocks next holds
/// only its own bytes.
#[test]
fn truncate_during_a_uring_stream_redirect_lands_nowhere() {
    let (out, err, ok) = io(
        &["--policy", "revoke", "--break-time", "0.2"],
        &with(
            DIRECT,
            &[
                "dma-reg --device uring --revoke redirect 0 64k",
                "@dev dma-stream -S 0x45 1 0 4k &",
                "sleep 50",
                "@b open /f",
                "@b truncate 0",
                "@b open -c /g",
                "@b pwrite -S 0x47 0 64k",
                "dma-write -S 0x45 1 0 64k",
                "sleep 50",
                "dma-stop 1",
                "@dev wait",
                "@b pread -v 0 64k",
                "@b statfs",
            ],
        ),
    );
    assert!(ok, "{err}\n{out}");
    let stream = out
        .lines()
        .find(|l| l.starts_with("dma-stream: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        !stream.contains("protection-error"),
        "redirect: no errors: {stream}"
    );
    let dump: Vec<&str> = out.lines().filter(|l| l.contains(":  ")).collect();
    assert_eq!(dump.len(), 4096, "{out}");
    assert!(
        dump.iter().all(|l| !l.contains(" 45 ")),
        "a redirected write reached /g"
    );
    assert!(out.contains("busy 0"), "{out}");
}
