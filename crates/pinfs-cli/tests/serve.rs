//! `pinfs serve` end to end (CLI.md, SPEC §8): the daemon as a user starts
//! it — prints `serving POOL on SOCKET`, serves a client (and a client
//! process that is fenced), refuses a second daemon on a live socket,
//! replaces a stale one, and on SIGTERM tells its clients, exits 0 and
//! leaves a pool `pinfs fsck` finds consistent.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinfs::fs::OpenFlags;
use pinfs_client::{Client, ConnectOptions};

fn pinfs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .args(args)
        .env_remove("PINFS_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn mkfs(pool: &Path) {
    let out = pinfs(&["mkfs", "--size", "64m", pool.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// Starts `pinfs serve` and waits for its ready line.
fn serve(pool: &Path, socket: &Path, extra: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pinfs"))
        .arg("serve")
        .arg(pool)
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim_end(),
        format!("serving {} on {}", pool.display(), socket.display())
    );
    child
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "pinfs serve did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn terminate(child: &Child) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[test]
fn serve_start_use_sigterm_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let socket = dir.path().join("sock");
    mkfs(&pool);
    let mut daemon = serve(&pool, &socket, &["--break-time", "0.5", "--policy", "fail"]);
    let c = Client::connect_with(&socket, ConnectOptions { signal: Some(0) }).unwrap();
    assert_eq!(c.pid_of_daemon(), daemon.id() as i32);
    assert!(c.welcome().pool_len >= 64 << 20);
    assert_eq!(c.welcome().break_time, Duration::from_millis(500));
    let f = c.open("/hello", OpenFlags::CREATE, 0o644).unwrap();
    assert_eq!(f.pwrite(0, b"over the socket").unwrap(), 15);
    let mut buf = [0u8; 15];
    assert_eq!(f.pread(0, &mut buf).unwrap(), 15);
    assert_eq!(&buf, b"over the socket");
    f.fsync().unwrap();
    // The pool is locked by the daemon; a second daemon on the same socket
    // (another pool) is refused while the first answers.
    let other = dir.path().join("other");
    mkfs(&other);
    let out = pinfs(&[
        "serve",
        other.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    terminate(&daemon);
    let st = wait_exit(&mut daemon);
    assert_eq!(st.code(), Some(0));
    // The client was told; every call now fails.
    let errno = f.stat().unwrap_err().errno().0;
    assert!(errno == libc::ENOTCONN || errno == libc::EPIPE, "{errno}");
    assert!(c.disconnected().is_some());
    assert!(!socket.exists(), "the socket was not removed");
    drop((f, c));
    let out = pinfs(&["fsck", pool.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // A stale socket (its daemon gone) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    let mut daemon = serve(&pool, &socket, &[]);
    let c = Client::connect_with(&socket, ConnectOptions { signal: Some(0) }).unwrap();
    let mut buf = [0u8; 15];
    let f = c.open("/hello", OpenFlags::RDONLY, 0).unwrap();
    assert_eq!(f.pread(0, &mut buf).unwrap(), 15);
    assert_eq!(&buf, b"over the socket");
    terminate(&daemon);
    assert_eq!(wait_exit(&mut daemon).code(), Some(0));
    drop((f, c));
    assert!(pinfs(&["fsck", pool.to_str().unwrap()]).status.success());
}

#[test]
fn serve_refuses_a_bad_mount_point_and_bad_options_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let socket = dir.path().join("sock");
    mkfs(&pool);
    let (p, s) = (pool.to_str().unwrap(), socket.to_str().unwrap());
    for (args, says) in [
        (
            vec!["serve", p, "--socket", s, "--mount", "/nonexistent/dir"],
            "--mount /nonexistent/dir: not a directory to mount on",
        ),
        (vec!["serve", p, "--socket", s, "--fence", "maybe"], "fence"),
        (
            vec!["serve", p, "--socket", s, "--break-time", "-1"],
            "break-time",
        ),
        (vec!["serve", p], "--socket"),
    ] {
        let out = pinfs(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!socket.exists());
    // A missing pool: one line naming it.
    let out = pinfs(&["serve", "/nonexistent/pool", "--socket", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pool"));
}
