//! The truncate policies tried as a new user would, through `pinfs io`: an
//! actor pins a range under an unbreakable layout lease, gives the lease up
//! (the pin stays), and another actor truncates the file.

mod support;

use support::io;

/// The set-up every scenario shares: /f of 64 KiB, 16 KiB of it pinned by
/// @main, the lease given up.
const PINNED: &[&str] = &[
    "open -c /f",
    "pwrite 0 64k",
    "lease read --layout --exclusive",
    "pin 0 16k",
    "lease none --layout",
    "@b open /f",
];

fn script(rest: &[&'static str]) -> Vec<&'static str> {
    PINNED.iter().chain(rest).copied().collect()
}

fn lines_with<'a>(s: &'a str, prefix: &str) -> Vec<&'a str> {
    s.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn a_pin_needs_an_exclusive_layout_lease() {
    let (out, err, ok) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 8k",
            "pin 0 4k",
            "lease read --layout",
            "pin 0 4k",
        ],
    );
    assert!(!ok);
    assert_eq!(
        err.matches("pin: Operation not permitted").count(),
        2,
        "{err}"
    );
    assert!(!out.contains("pin 1"));
    // After the lease is released, new pins fail; existing ones stay.
    let (out, err, _) = io(
        &[],
        &[
            "open -c /f",
            "pwrite 0 8k",
            "lease read --layout --exclusive",
            "pin 0 4k",
            "lease none --layout",
            "pin 4k 4k",
            "pins",
        ],
    );
    assert!(
        out.contains("pin 1") && err.contains("pin: Operation not permitted"),
        "{out}{err}"
    );
    assert!(out.contains("@main\n\t/f 0 4095"), "{out}");
}

#[test]
fn fail_refuses_and_changes_nothing() {
    let (out, err, ok) = io(
        &["--policy", "fail"],
        &script(&["@b truncate 4k", "@b stat", "@b truncate 32k", "@b stat"]),
    );
    assert!(!ok);
    assert!(err.contains("truncate: Text file busy"), "{err}");
    // The first truncate would remove pinned blocks: refused, size intact;
    // the second removes only unpinned blocks: it proceeds.
    assert_eq!(
        lines_with(&out, "size "),
        ["size 65536", "size 32768"],
        "{out}"
    );
}

#[test]
fn wait_finishes_when_the_pin_drops_or_fails_at_break_time() {
    let (out, err, _) = io(
        &["--policy", "wait", "--break-time", "0"],
        &script(&[
            "@b truncate 0 &",
            "sleep 200",
            "statfs",
            "unpin 1",
            "@b wait",
            "@b stat",
        ]),
    );
    assert!(!err.contains("truncate:"), "{err}");
    assert!(
        out.contains("size 0"),
        "the truncate finished once the pin dropped: {out}"
    );
    let (out, err, ok) = io(
        &["--policy", "wait", "--break-time", "0.3"],
        &script(&["@b truncate 0", "@b stat"]),
    );
    assert!(!ok && err.contains("truncate: Text file busy"), "{err}");
    assert!(out.contains("size 65536"), "{out}");
}

#[test]
fn defer_finishes_at_once_and_shows_busy_blocks() {
    let (out, err, ok) = io(
        &["--policy", "defer"],
        &script(&["@b truncate 0", "@b stat", "statfs", "unpin 1", "statfs"]),
    );
    assert!(ok, "{err}");
    assert!(out.contains("size 0"));
    assert_eq!(lines_with(&out, "busy "), ["busy 4", "busy 0"], "{out}");
}

#[test]
fn revoke_finishes_after_break_time() {
    let (out, err, ok) = io(
        &["--policy", "revoke", "--break-time", "0.3"],
        &script(&["@b truncate 0", "@b stat", "statfs", "pins"]),
    );
    assert!(ok, "{err}");
    assert!(out.contains("size 0"));
    assert_eq!(
        lines_with(&out, "busy "),
        ["busy 0"],
        "revoked blocks are freed: {out}"
    );
    assert!(!out.contains("@main"), "the revoked pin is gone: {out}");
}
