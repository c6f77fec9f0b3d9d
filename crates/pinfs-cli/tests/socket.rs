//! `pinfs io --socket` and `pinfs stat --socket` against a `pinfs serve`
//! started by the test: the same script prints the same through the daemon
//! as in process; commands the daemon does not offer fail with one line;
//! actors of separate `io` invocations (separate processes) collide through
//! the daemon — a break reaches the holder, which releases, and the
//! truncate completes; a holder that does not release is fenced; `stat
//! --socket` lists clients, leases and pins, and nothing once the client
//! is gone.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use support::io;

/// How long a test waits for something that should come at once before it
/// gives up (a hang guard, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);

/// A `pinfs serve` on a fresh pool in a temporary directory; stopped with
/// SIGTERM on drop.
struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Serve a fresh 256 MiB pool (the size of `io`'s volatile pool, so
    /// `statfs` reads the same) with `opts` (`--break-time`, `--policy`).
    fn start(opts: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = dir.path().join("pool");
        let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
            .args(["mkfs", "--size", "256m"])
            .arg(&pool)
            .output()
            .expect("mkfs");
        assert!(out.status.success(), "{out:?}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pinfs"))
            .arg("serve")
            .arg(&pool)
            .arg("--socket")
            .arg(dir.path().join("sock"))
            .args(opts)
            .stdout(Stdio::piped())
            .spawn()
            .expect("pinfs serve");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("serve says it is ready");
        assert!(first.starts_with("serving "), "{first:?}");
        Daemon {
            dir,
            child: Some(child),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn pool(&self) -> PathBuf {
        self.dir.path().join("pool")
    }

    /// `pinfs io --socket S` with the commands.
    fn io(&self, cmds: &[&str]) -> (String, String, bool) {
        let socket = self.socket();
        io(&["--socket", socket.to_str().expect("utf-8 path")], cmds)
    }

    /// `pinfs io --socket S` in the background, stdout piped.
    fn spawn_io(&self, cmds: &[&str]) -> (Child, BufReader<ChildStdout>) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pinfs"));
        c.arg("io").arg("--socket").arg(self.socket());
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pinfs io");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        (child, out)
    }

    /// `pinfs stat --socket S`: its lines.
    fn stat(&self) -> Vec<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
            .arg("stat")
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("pinfs stat");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Stop the daemon (SIGTERM), check it exits 0 and the pool is
    /// consistent.
    fn stop_and_fsck(mut self) {
        let child = self.child.take().expect("running");
        stop(child);
        let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
            .arg("fsck")
            .arg(self.pool())
            .output()
            .expect("fsck");
        assert!(out.status.success(), "fsck: {out:?}");
    }
}

/// SIGTERM and wait: the daemon exits 0.
fn stop(mut child: Child) {
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = child.wait().expect("wait for serve");
    assert!(status.success(), "serve exited {status:?}");
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Read lines of a background `io` until one equals `want` (its output up
/// to there is returned); panics when the output ends first.
fn read_until(out: &mut BufReader<ChildStdout>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read io output");
        assert!(n > 0, "output ended before {want:?}: {seen:?}");
        let line = line.trim_end().to_string();
        let done = line == want;
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// The rest of a background `io`'s stdout.
fn rest(mut out: BufReader<ChildStdout>) -> Vec<String> {
    let mut all = String::new();
    std::io::Read::read_to_string(&mut out, &mut all).expect("read io output");
    all.lines().map(str::to_string).collect()
}

/// The script both sides run: files, layout changes, namespace, a lease
/// and its listing, a pin under an unbreakable lease, a break between two
/// actors, statfs.
const SCRIPT: &[&str] = &[
    "open -c /f",
    "pwrite -S 0xab 0 10k",
    "pread -v 4090 12",
    "stat",
    "falloc -k 16k 8k",
    "fiemap",
    "fpunch 4k 4k",
    "fiemap",
    "truncate 6k",
    "stat",
    "mkdir /d",
    "rename /f /d/g",
    "ls /d",
    "open /d/g",
    "reflink /d/g",
    "lease read --layout --exclusive --range 0 4k",
    "leases",
    "pin 0 4k",
    "pins",
    "unpin 1",
    "lease none --layout",
    "@b open /d/g",
    "@b lease read --layout",
    "@c open /d/g",
    "@c fpunch 0 4k &",
    "@b wait-break 10000",
    "@b lease none --layout",
    "@c wait",
    "getlease",
    "statfs",
    "close",
    "unlink /d/g",
    "rmdir /d",
    "ls /",
    "pread 0 1",
];

#[test]
fn io_prints_the_same_through_the_daemon_as_in_process() {
    let (local_out, local_err, local_ok) = io(&[], SCRIPT);
    let daemon = Daemon::start(&[]);
    let (out, err, ok) = daemon.io(SCRIPT);
    assert_eq!(out, local_out, "stdout differs; stderr: {err}");
    assert_eq!(err, local_err);
    assert_eq!(ok, local_ok);
    // The script fails where it means to (a file cloned onto itself; no
    // current file at the end), alike on both sides: a check that it ran
    // through.
    assert_eq!(
        err,
        "reflink: Invalid argument\npread: Bad file descriptor\n"
    );
    assert!(out.contains("break /d/g none"), "{out}");
    assert!(
        out.contains("1 LAYOUT READ+EXCL ACTIVE @main /d/g 0 4095"),
        "{out}"
    );
    daemon.stop_and_fsck();
}

/// Mappings through the daemon print what they print in process: stores
/// and loads, persist, a pin through the mapping, a `MAP_DIRECT` mapping
/// broken by another actor's truncate, raw flags validated.
const MAP_SCRIPT: &[&str] = &[
    "open -c /m",
    "pwrite -S 0x33 0 16k",
    "mmap -s 0 16k",
    "mwrite -S 0x44 4k 4k",
    "mread -v 4090 12",
    "persist 0 16k",
    "lease read --layout --exclusive",
    "pin 0 8k",
    "pins",
    "unpin 1",
    "lease none --layout",
    "munmap",
    "mmap -d 0 16k",
    "mread -v 8190 4",
    "@b open /m",
    "@b truncate 4k &",
    "wait-break 10000",
    "munmap",
    "@b wait",
    "stat",
    "mmap 0 16k",
    "mread 8k 1",
    "mwrite 0 1",
    "munmap",
    "mmap -F 0x400003 0 4k",
    "mmap -r 0 4k",
    "mread -v 0 4",
    "mwrite 0 1",
    "pread -v 4090 12",
];

#[test]
fn mappings_through_the_daemon_print_what_they_print_in_process() {
    let (local_out, local_err, local_ok) = io(&[], MAP_SCRIPT);
    let daemon = Daemon::start(&[]);
    let (out, err, ok) = daemon.io(MAP_SCRIPT);
    assert_eq!(out, local_out, "stdout differs; stderr: {err}");
    assert_eq!(err, local_err);
    assert_eq!(ok, local_ok);
    // What fails, fails alike: beyond end of file, an unknown flag under
    // MAP_SHARED_VALIDATE, a store through a read-only mapping.
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "mread: SIGBUS",
            "mmap: Operation not supported",
            "mwrite: SIGBUS",
        ],
        "{err}"
    );
    assert!(out.contains("break /m none"), "{out}");
    daemon.stop_and_fsck();
}

#[test]
fn what_only_the_in_process_side_offers_fails_with_one_line() {
    let daemon = Daemon::start(&[]);
    let (out, err, ok) = daemon.io(&[
        "open -c /f",
        "pwrite 0 64k",
        "mmap -d 0 64k",
        "mstat",
        "dma-reg --device uring 0 4k",
        "dma-reg 0 64k",
        "dma-write -S 0x22 1 0 8",
        "dma-read -v 1 0 16",
        "dma-dereg 1",
        "pread 0 4k",
    ]);
    assert!(!ok);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "mstat: Operation not supported",
            "dma-reg: Operation not supported",
        ]
    );
    // The daemon's soft device did the rest.
    assert!(
        out.contains("\nok\n00000000:  22 22 22 22 22 22 22 22 cd cd"),
        "{out}"
    );
    assert!(out.ends_with("read 4096/4096 bytes at offset 0\n"), "{out}");
    daemon.stop_and_fsck();
}

#[test]
fn a_registration_holder_in_another_process_deregisters_and_the_truncate_completes() {
    let daemon = Daemon::start(&["--break-time", "30"]);
    daemon.io(&["open -c /f", "pwrite 0 64k"]);
    // One shell: MAP_DIRECT, a registration, the device streaming writes.
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "mmap -d 0 64k",
        "dma-reg 0 64k",
        "@dev dma-stream -S 0x77 1 0 4k &",
        "echo holding",
        "wait-break 60000",
        "dma-dereg 1",
        "munmap",
        "@dev wait",
        "echo released",
    ]);
    read_until(&mut out, "holding");
    // The other shell truncates: the holder is told, deregisters and
    // unmaps (well within lease-break-time), the truncate completes.
    let (stdout, err, ok) = daemon.io(&["open /f", "truncate 4k", "pread -v 0 4", "stat"]);
    assert!(ok, "{err}");
    assert!(
        stdout.starts_with("00000000:  77 77 77 77"),
        "the device's writes landed: {stdout}"
    );
    assert!(stdout.contains("size 4096\n"), "{stdout}");
    let rest = rest(out);
    assert_eq!(rest.len(), 3, "{rest:?}");
    assert_eq!(rest[0], "break /f none");
    // The stream ended with the deregistration, every write completed.
    assert!(rest[1].starts_with("dma-stream: "), "{rest:?}");
    assert!(!rest[1].contains("error"), "{rest:?}");
    assert_eq!(rest[2], "released");
    assert!(holder.wait().expect("holder").success());
    // Once the daemon has seen it go (asynchronously), nothing of it is left.
    wait_for(&daemon, |lines| {
        [
            "clients 0",
            "leases 0",
            "pins 0",
            "registrations 0",
            "busy 0",
        ]
        .iter()
        .all(|want| lines.contains(&want.to_string()))
    });
    daemon.stop_and_fsck();
}

#[test]
fn actors_of_separate_io_runs_collide_through_the_daemon() {
    let daemon = Daemon::start(&["--break-time", "30"]);
    let (_, err, ok) = daemon.io(&["open -c /f", "pwrite 0 64k"]);
    assert!(ok, "{err}");
    // One shell: the holder takes a layout lease and waits for its break.
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "lease write --layout",
        "echo holding",
        "wait-break 60000",
        "lease none --layout",
        "echo released",
    ]);
    read_until(&mut out, "holding");
    // The other shell truncates: the break reaches the holder's process,
    // which releases (well before lease-break-time, 30 s, would fence it),
    // and the truncate completes.
    let (stdout, err, ok) = daemon.io(&["open /f", "truncate 4k", "stat"]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with("size 4096\n"), "{stdout}");
    assert_eq!(rest(out), ["break /f none", "released"]);
    let status = holder.wait().expect("holder");
    // Exit 0: it was not fenced (killed), it released.
    assert!(status.success(), "{status:?}");
    daemon.stop_and_fsck();
}

#[test]
fn a_holder_that_does_not_release_is_fenced_and_the_truncate_completes() {
    let daemon = Daemon::start(&["--break-time", "0.5"]);
    daemon.io(&["open -c /f", "pwrite 0 64k"]);
    // The holder never looks at its notifications.
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "lease read --layout",
        "echo holding",
        "sleep 60000",
        "echo survived",
    ]);
    read_until(&mut out, "holding");
    let (stdout, err, ok) = daemon.io(&["open /f", "truncate 4k", "stat"]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with("size 4096\n"), "{stdout}");
    let status = holder.wait().expect("holder");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(rest(out).is_empty());
    // The daemon keeps serving, and nothing of the holder is left.
    wait_for(&daemon, |s| s.contains(&"leases 0".to_string()));
    daemon.stop_and_fsck();
}

#[test]
fn an_unbreakable_lease_in_another_process_makes_truncate_text_file_busy() {
    let daemon = Daemon::start(&["--policy", "fail"]);
    daemon.io(&["open -c /f", "pwrite 0 64k"]);
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "lease read --layout --exclusive",
        "pin 0 16k",
        "echo holding",
        "wait-break 60000",
        "echo told",
    ]);
    read_until(&mut out, "holding");
    let (stdout, err, ok) = daemon.io(&["open /f", "truncate 4k", "stat"]);
    assert!(!ok);
    assert_eq!(err, "truncate: Text file busy\n");
    assert!(stdout.starts_with("size 65536\n"), "{stdout}");
    // The holder was told someone tried.
    assert_eq!(rest(out), ["break /f refused", "told"]);
    assert!(holder.wait().expect("holder").success());
    daemon.stop_and_fsck();
}

/// Poll `stat --socket` until `done` holds (the daemon confirms a death
/// asynchronously); panics after [`PATIENCE`].
fn wait_for(daemon: &Daemon, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let lines = daemon.stat();
        if done(&lines) {
            return lines;
        }
        assert!(start.elapsed() < PATIENCE, "never: {lines:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stat_socket_lists_clients_leases_and_pins_and_nothing_once_they_are_gone() {
    let daemon = Daemon::start(&[]);
    daemon.io(&["open -c /f", "pwrite 0 64k"]);
    let before = daemon.stat();
    assert!(before.contains(&"clients 0".to_string()), "{before:#?}");
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "lease read --layout --exclusive",
        "pin 0 16k",
        "echo holding",
        "sleep 60000",
    ]);
    read_until(&mut out, "holding");
    let lines = daemon.stat();
    let text = lines.join("\n");
    let pid = holder.id();
    let client = lines
        .iter()
        .find(|l| l.starts_with("@client-"))
        .unwrap_or_else(|| panic!("no client line: {text}"));
    let name = client.split_whitespace().next().expect("name");
    assert!(
        client.contains(&format!(
            " pid {pid} uid 0 gid 0 handles 1 leases 1 pins 1 "
        )),
        "{text}"
    );
    for want in [
        "clients 1".to_string(),
        "\t/f".to_string(),
        "leases 1".to_string(),
        format!("1 LAYOUT READ+EXCL ACTIVE {name} /f 0 EOF"),
        "pins 1".to_string(),
        name.to_string(),
        "\t/f 0 16383".to_string(),
        "registrations 0".to_string(),
    ] {
        assert!(lines.contains(&want), "{want:?} missing from:\n{text}");
    }
    // The holder dies: everything it held goes.
    holder.kill().expect("kill holder");
    holder.wait().expect("reap holder");
    let after = wait_for(&daemon, |s| {
        s.contains(&"clients 0".to_string()) && s.contains(&"pins 0".to_string())
    });
    assert!(after.contains(&"leases 0".to_string()), "{after:#?}");
    assert!(after.contains(&"busy 0".to_string()), "{after:#?}");
    daemon.stop_and_fsck();
}

#[test]
fn stat_socket_of_nobody_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .arg("stat")
        .arg("--socket")
        .arg(dir.path().join("none"))
        .output()
        .expect("pinfs stat");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
}
