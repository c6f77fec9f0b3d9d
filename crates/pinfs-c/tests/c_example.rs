//! `examples/rdma_like.c`, compiled with `cc` against `include/pinfs.h` and
//! the static library this package builds, run against a daemon the test
//! serves: it maps the file `MAP_DIRECT`, stores through the mapping,
//! registers it with the device and streams device writes; the test's other
//! side (a client of the same daemon) truncates the file. The example gets
//! the break (event and SIGIO), deregisters, unmaps, exits 0, and the
//! truncate completes with what the example wrote through the mapping and
//! the device in place. With the example ignoring its notifications (the negative
//! control), it is fenced — killed at lease-break-time — and the truncate
//! completes all the same.
//!
//! The daemon is `pinfs_server::Server`, what `pinfs serve` runs, served on
//! a thread of the test: this package cannot name the `pinfs` binary
//! (`CARGO_BIN_EXE_*` exists only for a package's own binaries), and a
//! path guessed under `target/` could be a stale build.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pinfs::fs::{Fs, MountOptions, OpenFlags};
use pinfs::media::MappedPool;
use pinfs_client::Client;
use pinfs_server::{ServeOptions, Server, Stop};

/// The static library of this package, next to the test binary.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory");
    let lib = deps.join("libpinfs_c.a");
    assert!(lib.exists(), "{} not built", lib.display());
    lib
}

/// Compile the example into `dir`; its path.
fn compile_example(dir: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join("rdma_like");
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
        ])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/rdma_like.c"))
        .arg(static_lib())
        // What the Rust standard library needs (`rustc --print native-static-libs`).
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
            "-o",
        ])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A daemon serving a fresh volatile pool on a socket in `dir`.
struct Daemon {
    server: Arc<Server>,
    stop: Stop,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, break_time: Duration) -> Daemon {
        let pool = MappedPool::memfd(64 << 20).expect("memfd pool");
        Fs::mkfs(&pool).expect("mkfs");
        let fs = Fs::mount_with(
            Arc::new(pool),
            MountOptions {
                break_time,
                ..MountOptions::default()
            },
        )
        .expect("mount");
        let socket = dir.join("sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        // Anyone may connect (as `pinfs serve` allows): the other-user test.
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o777);
        std::fs::set_permissions(dir, open.clone()).expect("chmod dir");
        std::fs::set_permissions(&socket, open).expect("chmod socket");
        let server = Arc::new(Server::new(fs, ServeOptions::default()));
        let stop = Stop::new().expect("stop");
        let thread = {
            let (server, stop) = (server.clone(), stop.clone());
            std::thread::spawn(move || server.serve(listener, &stop).expect("serve"))
        };
        Daemon {
            server,
            stop,
            thread: Some(thread),
            socket,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Run the example (with `extra` arguments) holding `/data`, truncate the
/// file from another client once it is ready; the example's exit status,
/// its stdout, and whether the truncate succeeded.
fn scenario(break_time: Duration, extra: &[&str]) -> (std::process::ExitStatus, String, Daemon) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_example(dir.path());
    let daemon = Daemon::start(dir.path(), break_time);
    let breaker = Client::connect(&daemon.socket).expect("connect");
    let f = breaker
        .open(
            "/data",
            OpenFlags {
                create: true,
                ..OpenFlags::RDWR
            },
            0o644,
        )
        .expect("create /data");
    f.pwrite(0, &[7u8; 64 << 10]).expect("fill /data");
    drop(f);

    let mut child = Command::new(&exe)
        .arg(&daemon.socket)
        .arg("/data")
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the example");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    while !seen.ends_with("ready\n") {
        let n = out.read_line(&mut seen).expect("read example output");
        assert!(n > 0, "the example ended before it was ready: {seen:?}");
    }
    // The other side: a truncate, which breaks the example's layout lease
    // and completes once it is released (or fenced).
    let f = breaker
        .open("/data", OpenFlags::RDWR, 0)
        .expect("open /data");
    f.truncate(8192).expect("the truncate completes");
    assert_eq!(f.stat().expect("stat").size, 8192);
    let mut head = [0u8; 8192];
    assert_eq!(f.pread(0, &mut head).expect("read back"), 8192);
    let wrote = extra.is_empty();
    // Its store through the mapping (persisted), then its device's writes
    // at 4 KiB (only a released run is sure to have made one).
    assert!(head[..16].iter().all(|&b| b == 0xa5), "{:x?}", &head[..16]);
    if wrote {
        assert!(head[4096..].iter().all(|&b| b == 0x5a));
    }
    let status = child.wait().expect("wait for the example");
    out.read_to_string(&mut seen).expect("read example output");
    (status, seen, daemon)
}

#[test]
fn the_example_releases_on_a_break_and_the_truncate_completes() {
    // lease-break-time far beyond the test: the truncate completed because
    // the example released, not because the daemon fenced it.
    let (status, out, daemon) = scenario(Duration::from_secs(120), &[]);
    assert!(status.success(), "{status:?}: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "mapped /data", "{out}");
    assert!(lines[1].starts_with("registered iova 0x"), "{out}");
    assert_eq!(lines[2], "ready", "{out}");
    assert!(lines.contains(&"break target none"), "{out}");
    assert!(lines.contains(&"signal SIGIO"), "{out}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("released after ")),
        "{out}"
    );
    // Nothing of it is left in the daemon.
    assert!(daemon.server.status().leases.is_empty());
}

#[test]
fn an_example_that_ignores_the_break_is_fenced_and_the_truncate_completes() {
    let (status, out, daemon) = scenario(Duration::from_millis(500), &["ignore"]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}: {out}");
    assert!(!out.contains("released"), "{out}");
    let start = std::time::Instant::now();
    // Its death is confirmed asynchronously; then nothing of it is left.
    while !daemon.server.status().leases.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lease never dropped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn another_user_may_open_but_not_map_direct() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: running the example as another user needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = compile_example(dir.path());
    let daemon = Daemon::start(dir.path(), Duration::from_secs(120));
    let root = Client::connect(&daemon.socket).expect("connect");
    let f = root
        .open(
            "/data",
            OpenFlags {
                create: true,
                ..OpenFlags::RDWR
            },
            0o666,
        )
        .expect("create /data");
    f.pwrite(0, &[7u8; 64 << 10]).expect("fill /data");
    use std::os::unix::process::CommandExt;
    let out = Command::new(&exe)
        .arg(&daemon.socket)
        .arg("/data")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the example as nobody");
    // The file is writable by everyone, so the open succeeds; MAP_DIRECT
    // needs the file's owner (or CAP_LEASE): EACCES (SPEC §5.2).
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "rdma_like: mmap: Permission denied\n"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
