//! Lease scenarios at the command-line boundary: the Linux test project's
//! `fcntl` lease tests (fcntl23/24/25: grant and release per open mode; the
//! write-lease conflicts with a second open handle; fcntl33: the breaker
//! cases), ported to `pinfs io` scripts with actors, and the layout-lease
//! scenarios of SPEC §3.2–§3.3 (issue 3, "What it must show").
//!
//! One helper, [`io`], runs a script through the built binary and returns
//! what it printed and its exit status, so each test reads as a script and
//! its exact output. Scripts start breakers in the background (` &`) and
//! let the holder act; the holder's `stat` and the `leases` listing show
//! that the breaker has not gone past a lease still held, and `@b wait`
//! that it proceeds once the holder acted. Timeouts are generous and only
//! mean "eventually": no test asserts an upper bound on wall-clock time.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of `pinfs io` did.
#[derive(Debug)]
struct Out {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

impl Out {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn err_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// Exit 0, nothing on stderr, exactly `lines` on stdout.
    #[track_caller]
    fn ok_with(&self, lines: &[&str]) {
        assert_eq!(
            (self.code, self.stderr.as_str()),
            (Some(0), ""),
            "{self:#?}"
        );
        assert_eq!(self.lines(), lines, "{self:#?}");
    }

    /// Exit 1, exactly `lines` on stdout and `errors` on stderr.
    #[track_caller]
    fn fails_with(&self, lines: &[&str], errors: &[&str]) {
        assert_eq!(self.code, Some(1), "{self:#?}");
        assert_eq!(self.lines(), lines, "{self:#?}");
        assert_eq!(self.err_lines(), errors, "{self:#?}");
    }
}

/// Longest a script may run before the test calls it hung and kills it: a
/// guard against a deadlock hanging the suite, not a performance bound.
const HUNG_AFTER: Duration = Duration::from_secs(120);

/// Run `pinfs io OPTIONS -c LINE...` on a fresh volatile pool. Library
/// traces are off, so stderr holds only the failing commands.
fn io(options: &[&str], script: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pinfs"));
    cmd.arg("io").args(options).env("PINFS_LOG", "off");
    for line in script {
        cmd.args(["-c", line]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pinfs");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).expect("read output");
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pinfs") {
            break status;
        }
        if started.elapsed() > HUNG_AFTER {
            let _ = child.kill();
            panic!("pinfs io hung: {script:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        code: status.code(),
    }
}

/// Script lines that create /f with 64 KiB of data and close it, so that
/// nobody has it open.
const SETUP: [&str; 3] = ["open -c /f", "pwrite 0 64k", "close"];
const WROTE: &str = "wrote 65536/65536 bytes at offset 0";
const EAGAIN: &str = "lease: Resource temporarily unavailable";

/// `SETUP` followed by `lines`.
fn script<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    SETUP.iter().chain(lines).copied().collect()
}

/// `stat` output for a size, block count and extent count.
fn stat(size: u64, blocks: u64, extents: u64) -> [String; 3] {
    [
        format!("size {size}"),
        format!("blocks {blocks}"),
        format!("extents {extents}"),
    ]
}

// fcntl23/24/25: grant and release per open mode.

#[test]
fn leases_are_granted_and_released_per_open_mode() {
    // A read lease needs a read-only handle (nobody, the holder included,
    // may have the file open for writing); a write lease any lone handle.
    for (mode, read_granted) in [("-r", true), ("-w", false), ("", false)] {
        let open = format!("@h open {mode} /f");
        let out = io(
            &[],
            &script(&[
                &open,
                "@h lease read",
                "@h getlease",
                "@h lease write",
                "@h getlease",
                "leases",
                "@h lease none",
                "@h getlease",
                "leases",
            ]),
        );
        let expected = [
            WROTE,
            if read_granted { "read" } else { "none" },
            "write",
            "1 LEASE WRITE ACTIVE @h /f 0 EOF",
            "none",
        ];
        if read_granted {
            out.ok_with(&expected);
        } else {
            out.fails_with(&expected, &[EAGAIN]);
        }
    }
}

#[test]
fn releasing_without_a_lease_and_bad_requests_fail() {
    let out = io(
        &[],
        &script(&[
            "@h open -r /f",
            "@h lease none",
            "@h lease shared",
            "@h lease read --range 0 4k",
            "@h getlease",
        ]),
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    let errors = out.err_lines();
    assert_eq!(errors.len(), 3, "{out:#?}");
    assert_eq!(errors[0], EAGAIN);
    assert!(
        errors[1].starts_with("lease: bad lease type \"shared\""),
        "{out:#?}"
    );
    assert!(
        errors[2].starts_with("lease: --range needs --layout"),
        "{out:#?}"
    );
    assert_eq!(out.lines(), [WROTE, "none"]);
    // Without a current file there is nothing to lease.
    let out = io(&[], &["@x lease read", "@x getlease"]);
    out.fails_with(
        &[],
        &[
            "lease: Bad file descriptor",
            "getlease: Bad file descriptor",
        ],
    );
}

// A write lease is refused while another handle has the file open, for each
// of the 9 combinations of the holder's and the other handle's open modes.

#[test]
fn a_write_lease_is_refused_while_another_handle_is_open() {
    let modes = ["-r", "-w", ""];
    for holder in modes {
        for other in modes {
            let (open_h, open_o) = (
                format!("@h open {holder} /f"),
                format!("@o open {other} /f"),
            );
            let out = io(
                &[],
                &script(&[
                    &open_h,
                    &open_o,
                    "@h lease write",
                    "@h getlease",
                    "leases",
                    // Control: once the other handle is closed, it is granted.
                    "@o close",
                    "@h lease write",
                    "@h getlease",
                ]),
            );
            out.fails_with(&[WROTE, "none", "write"], &[EAGAIN]);
        }
    }
}

// fcntl33: the 7 breaker cases.

/// One breaker case: the holder's lease, the breaker's command, and whether
/// the break is a downgrade (a read-only open against a write lease).
struct BreakerCase {
    lease: &'static str,
    breaker: &'static str,
    downgrade: bool,
}

const BREAKER_CASES: [BreakerCase; 7] = [
    BreakerCase {
        lease: "write",
        breaker: "open -r /f",
        downgrade: true,
    },
    BreakerCase {
        lease: "write",
        breaker: "open -w /f",
        downgrade: false,
    },
    BreakerCase {
        lease: "write",
        breaker: "open /f",
        downgrade: false,
    },
    BreakerCase {
        lease: "write",
        breaker: "truncate -p /f 4k",
        downgrade: false,
    },
    BreakerCase {
        lease: "read",
        breaker: "open -w /f",
        downgrade: false,
    },
    BreakerCase {
        lease: "read",
        breaker: "open /f",
        downgrade: false,
    },
    BreakerCase {
        lease: "read",
        breaker: "truncate -p /f 4k",
        downgrade: false,
    },
];

#[test]
fn every_breaker_notifies_the_holder_and_proceeds_when_it_acts() {
    for case in BREAKER_CASES {
        let truncates = case.breaker.starts_with("truncate");
        // The holder's handle is read-only: the only kind a read lease can
        // have, and the kind whose write lease can be downgraded.
        let set = format!("@h lease {}", case.lease);
        let start = format!("@b {} &", case.breaker);
        let mut lines = vec![
            "@h open -r /f",
            set.as_str(),
            start.as_str(),
            "@h wait-break 5000",
            "@h getlease",
            // The breaker is still held: the lease is there, breaking, and
            // a truncating breaker has not changed the file.
            "leases",
            "@h stat",
            // The downgrade: granted only against a read-only opener.
            "@h lease read",
        ];
        if !case.downgrade {
            lines.push("@h lease none");
        }
        lines.extend([
            "echo holder acted",
            "@b wait",
            "@h getlease",
            "leases",
            "@h stat",
        ]);
        let out = io(&[], &script(&lines));

        let target = if case.downgrade { "read" } else { "none" };
        let note = format!("break /f {target}");
        let breaking = format!(
            "1 LEASE {} BREAKING @h /f 0 EOF",
            if case.downgrade { "READ" } else { "UNLCK" }
        );
        let before = stat(65536, 16, 1);
        let after = if truncates {
            stat(4096, 1, 1)
        } else {
            stat(65536, 16, 1)
        };
        let mut expected: Vec<&str> = vec![WROTE, &note, target, &breaking];
        expected.extend(before.iter().map(String::as_str));
        expected.push("holder acted");
        if case.downgrade {
            expected.extend(["read", "1 LEASE READ ACTIVE @h /f 0 EOF"]);
        } else {
            expected.push("none");
        }
        expected.extend(after.iter().map(String::as_str));
        let context = format!("lease {} vs {}", case.lease, case.breaker);
        if case.downgrade {
            assert_eq!(out.stderr, "", "{context}: {out:#?}");
            out.ok_with(&expected);
        } else {
            assert_eq!(out.err_lines(), [EAGAIN], "{context}: {out:#?}");
            out.fails_with(&expected, &[EAGAIN]);
        }
    }
}

#[test]
fn a_non_blocking_breaker_fails_at_once_and_the_break_proceeds() {
    for lease in ["read", "write"] {
        let set = format!("@h lease {lease}");
        let out = io(
            &[],
            &script(&[
                "@h open -r /f",
                &set,
                "@b open -n -w /f",
                "@h getlease",
                "@h wait-break 5000",
                "leases",
                "@h lease none",
                // Nothing left to break: the same open now succeeds at once.
                "@b open -n -w /f",
                "@b stat",
            ]),
        );
        let mut expected = vec![
            WROTE,
            "none",
            "break /f none",
            "1 LEASE UNLCK BREAKING @h /f 0 EOF",
        ];
        let st = stat(65536, 16, 1);
        expected.extend(st.iter().map(String::as_str));
        out.fails_with(&expected, &["open: Resource temporarily unavailable"]);
    }
}

// Layout leases (SPEC §3.2).

#[test]
fn another_actors_truncate_or_punch_breaks_a_shared_layout_lease_and_waits() {
    for (change, after) in [
        ("truncate 4k", stat(4096, 1, 1)),
        ("fpunch 0 4k", stat(65536, 15, 1)),
    ] {
        let start = format!("@b {change} &");
        let out = io(
            &[],
            &script(&[
                "@h open /f",
                "@h lease read --layout",
                "@b open /f",
                &start,
                "@h wait-break 5000",
                "leases",
                "@h stat",
                "@h lease none --layout",
                "echo released",
                "@b wait",
                "@h stat",
                // The holder may ask again once the change is done.
                "@h lease read --layout",
                "leases",
            ]),
        );
        let before = stat(65536, 16, 1);
        let mut expected = vec![
            WROTE,
            "break /f none",
            "1 LAYOUT UNLCK BREAKING @h /f 0 EOF",
        ];
        expected.extend(before.iter().map(String::as_str));
        expected.push("released");
        expected.extend(after.iter().map(String::as_str));
        expected.push("2 LAYOUT READ ACTIVE @h /f 0 EOF");
        out.ok_with(&expected);
    }
}

#[test]
fn the_holders_own_layout_change_does_not_notify_it() {
    let out = io(
        &[],
        &script(&[
            "@h open /f",
            "@h lease read --layout",
            "@h truncate 32k",
            "@h fpunch 0 4k",
            "@h wait-break 200",
            "@h stat",
            "leases",
        ]),
    );
    let mut expected = vec![WROTE];
    let st = stat(32768, 7, 1);
    expected.extend(st.iter().map(String::as_str));
    expected.push("1 LAYOUT READ ACTIVE @h /f 0 EOF");
    out.fails_with(&expected, &["wait-break: Connection timed out"]);
}

#[test]
fn an_unbreakable_layout_lease_refuses_others_layout_changes_at_once() {
    let out = io(
        &[],
        &script(&[
            "@h open /f",
            "@h lease read --layout --exclusive",
            "leases",
            "@b open /f",
            "@b truncate 0",
            "@h wait-break 5000",
            "@b fpunch 0 4k",
            "@h wait-break 5000",
            "@b stat",
            "leases",
            // Control: released, the same truncate goes ahead.
            "@h lease none --layout",
            "@b truncate 0",
            "@b stat",
            "leases",
        ]),
    );
    let (before, after) = (stat(65536, 16, 1), stat(0, 0, 0));
    let mut expected = vec![
        WROTE,
        "1 LAYOUT READ+EXCL ACTIVE @h /f 0 EOF",
        "break /f refused",
        "break /f refused",
    ];
    expected.extend(before.iter().map(String::as_str));
    expected.push("1 LAYOUT READ+EXCL ACTIVE @h /f 0 EOF");
    expected.extend(after.iter().map(String::as_str));
    out.fails_with(
        &expected,
        &["truncate: Text file busy", "fpunch: Text file busy"],
    );
}

#[test]
fn a_range_lease_is_untouched_by_changes_outside_its_range() {
    let out = io(
        &[],
        &script(&[
            "@h open /f",
            "@h pwrite 64k 64k",
            "@h lease read --layout --range 0 4k",
            "@b open /f",
            "@b fpunch 64k 4k",
            "@h wait-break 200",
            "leases",
            // Control: a change overlapping the range breaks it.
            "@b fpunch 0 4k &",
            "@h wait-break 5000",
            "leases",
            "@h lease none --layout",
            "@b wait",
            "leases",
        ]),
    );
    out.fails_with(
        &[
            WROTE,
            "wrote 65536/65536 bytes at offset 65536",
            "1 LAYOUT READ ACTIVE @h /f 0 4095",
            "break /f none",
            "1 LAYOUT UNLCK BREAKING @h /f 0 4095",
        ],
        &["wait-break: Connection timed out"],
    );
}

// lease-break-time (SPEC §3.3).

#[test]
fn an_unresponsive_holder_loses_its_layout_lease_at_lease_break_time() {
    let out = io(
        &["--break-time", "0.3"],
        &script(&[
            "@h open /f",
            "@h lease read --layout",
            "@b open /f",
            "@b truncate 0 &",
            "@b wait",
            "@b stat",
            "leases",
            "@h wait-break 5000",
            "@h wait-break 5000",
        ]),
    );
    let mut expected = vec![WROTE];
    let st = stat(0, 0, 0);
    expected.extend(st.iter().map(String::as_str));
    expected.extend(["break /f none", "break /f lost"]);
    out.ok_with(&expected);
}

#[test]
fn an_unresponsive_holder_loses_or_is_downgraded_from_its_open_lease() {
    // A write opener: the lease is removed.
    let out = io(
        &["--break-time", "0.3"],
        &script(&[
            "@h open -r /f",
            "@h lease write",
            "@b open -w /f &",
            "@b wait",
            "leases",
            "@h getlease",
            "@h wait-break 5000",
            "@h wait-break 5000",
        ]),
    );
    out.ok_with(&[WROTE, "none", "break /f none", "break /f lost"]);
    // A read-only opener: the lease is downgraded to a read lease.
    let out = io(
        &["--break-time", "0.3"],
        &script(&[
            "@h open -r /f",
            "@h lease write",
            "@b open -r /f &",
            "@b wait",
            "leases",
            "@h getlease",
            "@h wait-break 5000",
            "@h wait-break 5000",
        ]),
    );
    out.ok_with(&[
        WROTE,
        "1 LEASE READ ACTIVE @h /f 0 EOF",
        "read",
        "break /f read",
        "break /f downgraded",
    ]);
}

#[test]
fn truncate_by_path_and_break_time_options() {
    // `truncate -p` needs no current file; plain `truncate` is ftruncate.
    let out = io(
        &["--break-time", "0"],
        &script(&["@x truncate -p /f 4k", "@x truncate 0", "open /f", "stat"]),
    );
    let mut expected = vec![WROTE];
    let st = stat(4096, 1, 1);
    expected.extend(st.iter().map(String::as_str));
    out.fails_with(&expected, &["truncate: Bad file descriptor"]);
    // A break with lease-break-time 0 (never forced) still completes once
    // the holder releases.
    let out = io(
        &["--break-time", "0"],
        &script(&[
            "@h open -r /f",
            "@h lease read",
            "@b truncate -p /f 0 &",
            "@h wait-break 5000",
            "@h lease none",
            "@b wait",
            "@h stat",
        ]),
    );
    let mut expected = vec![WROTE, "break /f none"];
    let st = stat(0, 0, 0);
    expected.extend(st.iter().map(String::as_str));
    out.ok_with(&expected);
}

#[test]
fn stat_of_a_pool_lists_its_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
            .args(args)
            .env("PINFS_LOG", "off")
            .output()
            .expect("run pinfs");
        assert!(out.status.success(), "{out:#?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "mkfs".as_ref(),
        "--size".as_ref(),
        "16m".as_ref(),
        pool.as_os_str(),
    ]);
    let stdout = run(&["stat".as_ref(), pool.as_os_str()]);
    // A pool mounted by `stat` alone has no leases: the header only.
    assert_eq!(stdout.lines().last(), Some("leases 0"), "{stdout}");
}

#[test]
fn a_script_that_ends_with_a_breaker_waiting_does_not_hang() {
    // With lease-break-time 0 the breaker would wait forever; at the end of
    // the script the idle holder exits, its lease goes with it, and the
    // breaker completes (and is reported, with a warning that nobody
    // collected it).
    let out = io(
        &["--break-time", "0"],
        &script(&[
            "@h open -r /f",
            "@h lease write",
            "@b open -w /f &",
            "@b pwrite 0 4k &",
            "@h wait-break 5000",
            "echo end",
        ]),
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.lines(),
        [
            WROTE,
            "break /f none",
            "end",
            "wrote 4096/4096 bytes at offset 0"
        ],
        "{out:#?}"
    );
    assert_eq!(
        out.err_lines(),
        [
            "@b: result of 'open -w /f' never collected: ok",
            "@b: result of 'pwrite 0 4k' never collected: ok",
        ],
        "{out:#?}"
    );
}
