//! The FUSE mount as a new user meets it, with real processes: `pinfs serve
//! --mount`, a client (`pinfs io --socket`) holding a `MAP_DIRECT` mapping
//! with a registration, and coreutils on the mount — `truncate -s 0`,
//! `fallocate --punch-hole`, `rm`: the holder is told and releases and the
//! command completes; a holder that ignores the break is fenced (killed) at
//! lease-break-time and the command completes; against an unbreakable
//! lease under `--policy fail` the command fails with `Text file busy`.
//! Coherence between a client's stores and the mount; mount hygiene
//! (SIGTERM, an administrator's `fusermount3 -u`, SIGKILL then
//! `fusermount3 -u` and a second mount). Each test skips with a printed
//! reason where FUSE is missing or the user is not root.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use support::io;

/// How long a test waits for something that should come at once before it
/// gives up (a hang guard, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse");
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return Some("no fusermount3");
    }
    if !rustix::process::geteuid().is_root() {
        return Some("not root");
    }
    None
}

macro_rules! need_fuse {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A `pinfs serve --mount` on a fresh pool in a temporary directory;
/// killed on drop (and its mount cleared).
struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Serve a fresh 64 MiB pool with `opts`, mounted at `mnt`.
    fn start(opts: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = dir.path().join("pool");
        let out = pinfs(&["mkfs", "--size", "64m", pool.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{out:?}");
        std::fs::create_dir(dir.path().join("mnt")).expect("mkdir mnt");
        let mut d = Daemon { dir, child: None };
        d.child = Some(d.spawn(opts));
        d
    }

    /// Start `pinfs serve --mount` on this pool; returns once it is ready.
    fn spawn(&self, opts: &[&str]) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pinfs"))
            .arg("serve")
            .arg(self.pool())
            .arg("--socket")
            .arg(self.socket())
            .arg("--mount")
            .arg(self.mnt())
            .args(opts)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pinfs serve");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("serve says it is ready");
        assert!(first.starts_with("serving "), "{first:?}");
        child
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn pool(&self) -> PathBuf {
        self.dir.path().join("pool")
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// A path on the mount.
    fn on_mount(&self, name: &str) -> PathBuf {
        self.mnt().join(name)
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
        let out = pinfs(&["stat", "--socket", self.socket().to_str().expect("utf-8")]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Poll `stat --socket` until `done` holds; panics after [`PATIENCE`].
    fn wait_for(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let start = std::time::Instant::now();
        loop {
            let lines = self.stat();
            if done(&lines) {
                return lines;
            }
            assert!(start.elapsed() < PATIENCE, "never: {lines:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: the daemon exits 0, the mount is gone, the pool is
    /// consistent. Returns the daemon's stderr.
    fn stop_and_fsck(mut self) -> String {
        let mut child = self.child.take().expect("running");
        signal(&child, rustix::process::Signal::TERM);
        let status = child.wait().expect("wait for serve");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(status.success(), "serve exited {status:?}: {err}");
        assert!(!mounted(&self.mnt()), "still mounted after SIGTERM");
        let out = pinfs(&["fsck", self.pool().to_str().expect("utf-8")]);
        assert!(out.status.success(), "fsck: {out:?}");
        err
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if mounted(&self.mnt()) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(self.mnt())
                .output();
        }
    }
}

fn pinfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(args)
        .output()
        .expect("pinfs")
}

/// A shell command on the mount: (stdout, stderr, success).
fn sh(cmd: &str, args: &[&str], path: &Path) -> (String, String, bool) {
    let out = Command::new(cmd).args(args).arg(path).output().expect(cmd);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, sig).expect("signal");
}

/// Whether `dir` is a mount point now (`/proc/self/mounts`).
fn mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.to_str().expect("utf-8");
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir))
}

/// Read lines of a background `io` until one equals `want`.
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

/// A client holding a `MAP_DIRECT` mapping of /f with a registration of
/// the daemon's device, which releases both when told.
const RELEASING_HOLDER: &[&str] = &[
    "open /f",
    "mmap -d 0 64k",
    "dma-reg 0 64k",
    "echo holding",
    "wait-break 60000",
    "dma-dereg 1",
    "munmap",
    "echo released",
];

/// `tool` on the mount against a releasing holder: the holder is told,
/// releases, the command completes (exit 0); `check` looks at the file
/// afterwards.
fn releasing_holder_then(tool: &str, args: &[&str], check: impl Fn(&Daemon)) {
    let daemon = Daemon::start(&["--break-time", "30"]);
    let (_, err, ok) = daemon.io(&["open -c /f", "pwrite -S 0x5a 0 64k"]);
    assert!(ok, "{err}");
    let (mut holder, mut out) = daemon.spawn_io(RELEASING_HOLDER);
    read_until(&mut out, "holding");
    let (_, err, ok) = sh(tool, args, &daemon.on_mount("f"));
    assert!(ok, "{tool}: {err}");
    assert_eq!(rest(out), ["break /f none", "released"]);
    // Exit 0: it released, it was not fenced.
    let status = holder.wait().expect("holder");
    assert!(status.success(), "{status:?}");
    check(&daemon);
    daemon.wait_for(|s| s.contains(&"registrations 0".to_string()));
    daemon.stop_and_fsck();
}

#[test]
fn truncate_on_the_mount_waits_for_the_holder_to_release() {
    need_fuse!();
    releasing_holder_then("truncate", &["-s", "0"], |d| {
        assert_eq!(std::fs::metadata(d.on_mount("f")).expect("stat").len(), 0);
    });
}

#[test]
fn punch_hole_on_the_mount_waits_for_the_holder_to_release() {
    need_fuse!();
    releasing_holder_then(
        "fallocate",
        &["--punch-hole", "--offset", "0", "--length", "16384"],
        |d| {
            let data = std::fs::read(d.on_mount("f")).expect("read");
            assert_eq!(data.len(), 64 << 10);
            assert!(data[..16384].iter().all(|&b| b == 0));
            assert!(data[16384..].iter().all(|&b| b == 0x5a));
        },
    );
}

/// `rm` removes the name at once: the holder still has the file open, so
/// nothing is freed yet — no layout change, no break, its registration
/// keeps working — and the blocks are freed when the holder lets go.
#[test]
fn rm_on_the_mount_defers_the_freeing_while_the_holder_holds_the_file() {
    need_fuse!();
    let daemon = Daemon::start(&["--break-time", "30"]);
    daemon.io(&["open -c /f", "pwrite -S 0x5a 0 64k", "open -c /go"]);
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "mmap -d 0 64k",
        "dma-reg 0 64k",
        "@go open /go",
        "@go lease read --layout",
        "echo holding",
        "@go wait-break 60000",
        "@go lease none --layout",
        "dma-write -S 0x66 1 0 4k",
        "dma-read -v 1 0 4",
        "echo done",
    ]);
    read_until(&mut out, "holding");
    let (_, err, ok) = sh("rm", &[], &daemon.on_mount("f"));
    assert!(ok, "rm: {err}");
    assert!(!daemon.on_mount("f").exists());
    // Nothing freed: the holder's file keeps its blocks and registration.
    let lines = daemon.stat();
    assert!(lines.contains(&"registrations 1".to_string()), "{lines:?}");
    assert!(lines.contains(&"busy 0".to_string()), "{lines:?}");
    let free_held = free_blocks(&lines);
    // Let the holder go on (a grow of /go, which allocates nothing, breaks
    // its other actor's lease): its registration still reaches the data.
    let (_, err, ok) = sh("truncate", &["-s", "4k"], &daemon.on_mount("go"));
    assert!(ok, "{err}");
    let rest = rest(out);
    assert_eq!(rest[0], "break /go none", "{rest:?}");
    assert_eq!(rest[1], "ok", "{rest:?}");
    assert!(rest[2].starts_with("00000000:  66 66 66 66"), "{rest:?}");
    assert!(holder.wait().expect("holder").success());
    // Gone with the holder: the file's 16 blocks are free.
    daemon.wait_for(|s| free_blocks(s) == free_held + 16 && s.contains(&"busy 0".to_string()));
    daemon.stop_and_fsck();
}

fn free_blocks(stat: &[String]) -> u64 {
    stat.iter()
        .find_map(|l| l.strip_prefix("free "))
        .and_then(|n| n.parse().ok())
        .expect("free N")
}

#[test]
fn a_holder_that_ignores_the_break_is_fenced_and_truncate_completes() {
    need_fuse!();
    let daemon = Daemon::start(&["--break-time", "1"]);
    daemon.io(&["open -c /f", "pwrite 0 64k"]);
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "mmap -d 0 64k",
        "dma-reg 0 64k",
        "echo holding",
        "sleep 60000",
        "echo survived",
    ]);
    read_until(&mut out, "holding");
    let (_, err, ok) = sh("truncate", &["-s", "0"], &daemon.on_mount("f"));
    assert!(ok, "truncate: {err}");
    assert_eq!(
        std::fs::metadata(daemon.on_mount("f")).expect("stat").len(),
        0
    );
    let status = holder.wait().expect("holder");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(rest(out).is_empty());
    daemon.wait_for(|s| s.contains(&"leases 0".to_string()) && s.contains(&"busy 0".to_string()));
    daemon.stop_and_fsck();
}

#[test]
fn an_unbreakable_lease_makes_the_commands_text_file_busy() {
    need_fuse!();
    let daemon = Daemon::start(&["--policy", "fail"]);
    daemon.io(&["open -c /f", "pwrite 0 64k"]);
    let (mut holder, mut out) = daemon.spawn_io(&[
        "open /f",
        "lease read --layout --exclusive",
        "pin 0 16k",
        "echo holding",
        "wait-break 60000",
        "wait-break 60000",
        "echo told",
    ]);
    read_until(&mut out, "holding");
    let f = daemon.on_mount("f");
    let (_, err, ok) = sh("truncate", &["-s", "0"], &f);
    assert!(!ok);
    assert!(err.contains("Text file busy"), "{err}");
    assert!(err.starts_with("truncate: "), "{err}");
    let (_, err, ok) = sh(
        "fallocate",
        &["--punch-hole", "--offset", "0", "--length", "4096"],
        &f,
    );
    assert!(!ok);
    assert!(err.contains("Text file busy"), "{err}");
    // Nothing changed.
    assert_eq!(std::fs::metadata(&f).expect("stat").len(), 64 << 10);
    // The holder was told someone tried, each time.
    assert_eq!(rest(out), ["break /f refused", "break /f refused", "told"]);
    assert!(holder.wait().expect("holder").success());
    daemon.stop_and_fsck();
}

/// A client's stores through its `MAP_DIRECT` mapping are what `cat`
/// returns at once; a write through the mount is what the client's shared
/// mapping loads next.
#[test]
fn client_stores_and_mount_writes_are_one_file() {
    need_fuse!();
    let daemon = Daemon::start(&["--break-time", "30"]);
    daemon.io(&["open -c /f", "pwrite -S 0x11 0 64k"]);
    let (mut direct, mut out) = daemon.spawn_io(&[
        "open /f",
        "mmap -d 0 64k",
        "mwrite -S 0x5a 0 4k",
        "echo stored",
        "wait-break 60000",
        "munmap",
        "echo released",
    ]);
    read_until(&mut out, "stored");
    let (cat, err, ok) = sh("cat", &[], &daemon.on_mount("f"));
    assert!(ok, "{err}");
    let cat = cat.into_bytes();
    assert!(cat[..4096].iter().all(|&b| b == 0x5a));
    assert!(cat[4096..].iter().all(|&b| b == 0x11));
    // A write by someone else breaks the MAP_DIRECT lease (SPEC §5.2): the
    // holder unmaps and the write completes.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(daemon.on_mount("f"))
        .expect("open on the mount");
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(8192)).expect("seek");
    file.write_all(&[0x6b; 4096]).expect("write");
    drop(file);
    assert_eq!(rest(out), ["break /f none", "released"]);
    assert!(direct.wait().expect("client").success());
    // A shared mapping held across a write on the mount loads the new
    // bytes; the write, then a layout change (grow), whose break tells the
    // client the write is done.
    let (mut shared, mut out) = daemon.spawn_io(&[
        "open /f",
        "mmap 0 64k",
        "@w open /f",
        "@w lease read --layout --range 64k 4k",
        "echo mapped",
        "@w wait-break 60000",
        "mread -v 8192 4",
        "@w lease none --layout",
    ]);
    read_until(&mut out, "mapped");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(daemon.on_mount("f"))
        .expect("open on the mount");
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(8192)).expect("seek");
    file.write_all(&[0x7c; 4096]).expect("write");
    drop(file);
    let (_, err, ok) = sh("truncate", &["-s", "128k"], &daemon.on_mount("f"));
    assert!(ok, "{err}");
    let rest = rest(out);
    assert_eq!(rest[0], "break /f none", "{rest:?}");
    assert!(rest[1].starts_with("00002000:  7c 7c 7c 7c"), "{rest:?}");
    assert!(shared.wait().expect("client").success());
    daemon.stop_and_fsck();
}

#[test]
fn sigterm_unmounts_and_the_pool_is_clean() {
    need_fuse!();
    let daemon = Daemon::start(&[]);
    assert!(mounted(&daemon.mnt()));
    std::fs::write(daemon.on_mount("f"), b"hello").expect("write");
    let (stdout, err, ok) = daemon.io(&["open /f", "pread -v 0 5"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("68 65 6c 6c 6f"), "{stdout}");
    daemon.stop_and_fsck();
}

#[test]
fn fusermount_u_by_an_admin_ends_the_mount_and_the_daemon_serves_on() {
    need_fuse!();
    let daemon = Daemon::start(&[]);
    std::fs::write(daemon.on_mount("f"), b"x").expect("write");
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(daemon.mnt())
        .output()
        .expect("fusermount3");
    assert!(out.status.success(), "{out:?}");
    assert!(!mounted(&daemon.mnt()));
    let (_, err, ok) = daemon.io(&["open /f", "pwrite 0 4k"]);
    assert!(ok, "{err}");
    let err = daemon.stop_and_fsck();
    assert!(err.contains("unmounted from outside"), "{err}");
}

#[test]
fn a_killed_daemon_leaves_a_mount_fusermount_clears_and_the_pool_mounts_again() {
    need_fuse!();
    let mut daemon = Daemon::start(&[]);
    std::fs::write(daemon.on_mount("f"), b"kept").expect("write");
    let mut child = daemon.child.take().expect("running");
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait();
    // The dead daemon's mount is still there, and answers ENOTCONN.
    assert!(mounted(&daemon.mnt()));
    let e = std::fs::metadata(daemon.on_mount("f")).expect_err("a dead mount");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(daemon.mnt())
        .output()
        .expect("fusermount3");
    assert!(out.status.success(), "{out:?}");
    assert!(!mounted(&daemon.mnt()));
    // The pool mounts again, with what was written.
    daemon.child = Some(daemon.spawn(&[]));
    assert_eq!(std::fs::read(daemon.on_mount("f")).expect("read"), b"kept");
    daemon.stop_and_fsck();
}

/// `pinfs mount POOL DIR`: live once it says so; SIGTERM unmounts DIR and
/// the pool (exit 0, fsck clean); `fusermount3 -u DIR` ends it the same way.
#[test]
fn pinfs_mount_runs_until_sigterm_or_fusermount_u() {
    need_fuse!();
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let out = pinfs(&["mkfs", "--size", "64m", pool.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{out:?}");
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pinfs"))
            .arg("mount")
            .arg(&pool)
            .arg(&mnt)
            .stdout(Stdio::piped())
            .spawn()
            .expect("pinfs mount");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("mount says it is live");
        assert_eq!(
            first.trim_end(),
            format!("mounted {} at {}", pool.display(), mnt.display())
        );
        child
    };
    let mut child = start();
    std::fs::write(mnt.join("f"), b"one").expect("write");
    signal(&child, rustix::process::Signal::TERM);
    assert!(child.wait().expect("wait").success());
    assert!(!mounted(&mnt));
    let out = pinfs(&["fsck", pool.to_str().expect("utf-8")]);
    assert!(out.status.success(), "fsck: {out:?}");
    let mut child = start();
    assert_eq!(std::fs::read(mnt.join("f")).expect("read"), b"one");
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .output()
        .expect("fusermount3");
    assert!(out.status.success(), "{out:?}");
    assert!(child.wait().expect("wait").success());
    let out = pinfs(&["fsck", pool.to_str().expect("utf-8")]);
    assert!(out.status.success(), "fsck: {out:?}");
}
