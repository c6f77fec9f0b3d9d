//! `pinfs serve POOL --socket PATH [--mount DIR] [--fence kill|off]
//! [--policy ...] [--break-time S]`: the daemon (SPEC §8) in the foreground.
//!
//! It opens and locks the pool, mounts it with the options, binds the
//! socket — refusing a path where a daemon answers, replacing a stale socket
//! left by one that died, refusing anything that is not a socket — and, with
//! `--mount DIR`, mounts the same live file system with FUSE at DIR
//! ([`pinfs_fuse`], under a lease owner of its own from the server's
//! numbering, so what tools do there breaks the clients' leases). It prints
//! `serving POOL on SOCKET` once clients can connect and the mount is live,
//! and serves ([`pinfs_server::Server`]) until SIGINT or SIGTERM. Then the
//! FUSE mount is unmounted, every client is told `Bye` and loses what it
//! held, the socket is removed, the file system is unmounted (its last
//! reference dropped, after which `pinfs fsck POOL` is clean), and the exit
//! status is 0. An administrator's `fusermount3 -u DIR` ends only the FUSE
//! mount (a warning says so); the daemon goes on serving its socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use pinfs::fs::MountOptions;
use pinfs_server::{Fence, ServeOptions, Server, Stop};

use crate::error::CliError;
use crate::io::TruncatePolicy;

/// Options of `pinfs serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The pool to serve (locked for as long as the daemon runs).
    pub pool: PathBuf,
    /// Where clients connect (a Unix socket, created; anyone may connect,
    /// every operation is checked against the client's own user).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Also mount the served file system with FUSE at DIR (a directory):
    /// ordinary tools there act on the clients' files as lease breakers.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
    /// What happens to a client that keeps a layout lease past
    /// lease-break-time: kill (its process is killed, which releases
    /// everything it held) or off (it only loses the lease).
    #[arg(long, value_name = "kill|off", default_value = "kill", value_parser = parse_fence)]
    pub fence: Fence,
    /// Truncate policy (SPEC §4.3): fail, wait, defer or revoke.
    #[arg(long, value_name = "fail|wait|defer|revoke", default_value = "defer", value_parser = crate::parse_policy)]
    pub policy: TruncatePolicy,
    /// lease-break-time in seconds (fractions allowed; 0 = never force).
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = crate::io::parse_break_time,
        default_value = "45",
        allow_hyphen_values = true
    )]
    pub break_time: Duration,
}

fn parse_fence(s: &str) -> Result<Fence, String> {
    s.parse()
        .map_err(|_| format!("bad fence \"{s}\" (kill or off)"))
}

/// Binds `path`: refuses a live daemon's socket and anything not a socket,
/// removes a stale socket.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(anyhow!(
                    "{}: exists and is not a socket; refusing to replace it",
                    path.display()
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(anyhow!(
                    "{}: a daemon is already serving on this socket",
                    path.display()
                ));
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{}: cannot remove the stale socket", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("{}: cannot bind", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("{}: cannot set permissions", path.display()))?;
    Ok(listener)
}

/// `pinfs serve`.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let options = MountOptions {
        break_time: args.break_time,
        policy: args.policy,
    };
    let fs = crate::mount(&args.pool, options)?;
    let listener = bind(&args.socket).map_err(CliError::Other)?;
    let stop = Stop::new().map_err(|e| CliError::Other(anyhow!("stop event: {e}")))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| CliError::Other(anyhow!("signal handling: {e}")))?;
    let handle = signals.handle();
    let on_signal = stop.clone();
    let signal_thread = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(target: "pinfs::server", sig, "stopping");
            on_signal.stop();
        }
    });
    let server = Server::new(
        Arc::clone(&fs),
        ServeOptions {
            fence: args.fence,
            ..ServeOptions::default()
        },
    );
    let fuse = match &args.mount {
        Some(dir) => {
            let opts = pinfs_fuse::MountOptions {
                owner: server.new_owner(),
                ..pinfs_fuse::MountOptions::default()
            };
            match pinfs_fuse::mount(Arc::clone(&fs), dir, opts) {
                Ok(m) => Some(m),
                Err(e) => {
                    handle.close();
                    let _ = signal_thread.join();
                    let _ = std::fs::remove_file(&args.socket);
                    return Err(CliError::Other(anyhow!("--mount {e}")));
                }
            }
        }
        None => None,
    };
    println!(
        "serving {} on {}",
        args.pool.display(),
        args.socket.display()
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let served = server.serve(listener, &stop);
    handle.close();
    let _ = signal_thread.join();
    // The FUSE mount goes before the file system: its open files are
    // closed, so nothing of the mount outlives the pool.
    if let Some(m) = fuse {
        if let Err(e) = m.unmount() {
            tracing::warn!(target: "pinfs::server", error = %e, "FUSE unmount");
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    drop(server);
    // The last reference: dropping it unmounts (the journal is committed
    // operation by operation, so there is nothing left to write).
    match Arc::try_unwrap(fs) {
        Ok(fs) => drop(fs),
        Err(fs) => {
            tracing::warn!(target: "pinfs::server", refs = Arc::strong_count(&fs), "file system still referenced at exit");
        }
    }
    served.map_err(|e| CliError::pool(&args.pool, e))
}
