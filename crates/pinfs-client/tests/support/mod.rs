//! The one helper of the daemon tests: a daemon served from a thread of the
//! test process on a fresh memfd pool (so a test can flip its test-only
//! switches), client processes spawned from `pinfs-test-client` (or, for
//! the mapping tests, `pinfs-map-client`) whose output lines a test waits
//! for, and the final check — stop, unmount, fsck.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pinfs::fs::{Fs, MountOptions, TruncatePolicy};
use pinfs::media::{MappedPool, Media};
use pinfs_client::{Client, ConnectOptions};
use pinfs_server::{Fence, ServeOptions, Server, Stop};

/// How long a test waits for something that should happen at once (a
/// bound against hangs, not a timing assertion).
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    server: Option<Arc<Server>>,
    stop: Stop,
    thread: Option<JoinHandle<pinfs::Result<()>>>,
    media: Arc<MappedPool>,
}

impl Daemon {
    pub fn start(policy: TruncatePolicy, break_time: Duration, fence: Fence) -> Daemon {
        Self::start_with(policy, break_time, fence, |_| {})
    }

    pub fn start_with(
        policy: TruncatePolicy,
        break_time: Duration,
        fence: Fence,
        setup: impl FnOnce(&Server),
    ) -> Daemon {
        let media = Arc::new(MappedPool::memfd(64 << 20).unwrap());
        Fs::mkfs(&*media).unwrap();
        let fs = Fs::mount_with(
            Arc::clone(&media) as Arc<dyn Media>,
            MountOptions { break_time, policy },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Clients of other users must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("pinfs.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let server = Arc::new(Server::new(
            fs,
            ServeOptions {
                fence,
                ..ServeOptions::default()
            },
        ));
        setup(&server);
        let stop = Stop::new().unwrap();
        let (srv, st) = (Arc::clone(&server), stop.clone());
        let thread = std::thread::spawn(move || srv.serve(listener, &st));
        Daemon {
            dir,
            socket,
            server: Some(server),
            stop,
            thread: Some(thread),
            media,
        }
    }

    /// A client in the test process itself: no signal (the test runner
    /// must not get `SIGIO`), events only.
    pub fn client(&self) -> Client {
        Client::connect_with(&self.socket, ConnectOptions { signal: Some(0) }).unwrap()
    }

    /// A client process running `cmds` (see `pinfs-test-client`).
    pub fn spawn(&self, cmds: &[&str]) -> Proc {
        self.spawn_as(None, cmds)
    }

    pub fn spawn_as(&self, ids: Option<(u32, u32)>, cmds: &[&str]) -> Proc {
        self.spawn_program(env!("CARGO_BIN_EXE_pinfs-test-client"), ids, cmds)
    }

    /// A process of the mapping tests (see `pinfs-map-client`).
    pub fn spawn_map_client(&self, ids: Option<(u32, u32)>, args: &[&str]) -> Proc {
        self.spawn_program(env!("CARGO_BIN_EXE_pinfs-map-client"), ids, args)
    }

    /// A process of `program` (a client binary of this package) given the
    /// socket and then `args`.
    pub fn spawn_program(&self, program: &str, ids: Option<(u32, u32)>, args: &[&str]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((uid, gid)) = ids {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The server, shared (for a thread that may outlive a failing test).
    pub fn server_arc(&self) -> Arc<Server> {
        Arc::clone(self.server.as_ref().expect("running"))
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Stops the daemon (every session ends), unmounts, and checks the pool.
    pub fn stop_and_fsck(mut self) {
        self.stop.stop();
        self.thread.take().unwrap().join().unwrap().unwrap();
        let server =
            Arc::try_unwrap(self.server.take().unwrap()).expect("the server is only the test's");
        let fs = Arc::clone(server.fs());
        drop(server);
        assert_eq!(
            Arc::strong_count(&fs),
            1,
            "a session still holds the file system"
        );
        drop(fs);
        let report = Fs::fsck(&*self.media).unwrap();
        assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
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

pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Waits for a line starting with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no line `{prefix}` from the client; saw {:?}", self.seen),
            }
        }
    }

    /// Waits for a line starting with `prefix` (`true`) or for the process
    /// to exit first (`false`).
    pub fn expect_or_exit(&mut self, prefix: &str) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(10)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return true;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        panic!("neither `{prefix}` nor an exit; saw {:?}", self.seen)
    }

    /// Every line the process printed, once it has exited (its output
    /// ends): what was already seen and the rest.
    pub fn all_lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        &self.seen
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits (bounded) for the process to exit; `None` if it is still alive.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds or `PATIENCE` passes.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
