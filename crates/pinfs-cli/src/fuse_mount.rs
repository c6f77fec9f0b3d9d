//! `pinfs mount POOL DIR [--policy ...] [--break-time S]`: the file system
//! of POOL mounted with FUSE at DIR, in the foreground, without a socket —
//! for a pool nobody else uses (a pool shared with clients is mounted by
//! `pinfs serve --mount`).
//!
//! It opens and locks the pool, mounts it, mounts DIR ([`pinfs_fuse`]),
//! prints `mounted POOL at DIR` once the mount is live, and runs until
//! SIGINT or SIGTERM — then unmounts DIR and the pool, exit status 0 — or
//! until DIR is unmounted from outside (`fusermount3 -u DIR`), which ends it
//! the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use pinfs::fs::MountOptions;

use crate::error::CliError;
use crate::io::TruncatePolicy;

/// How often the foreground loop looks for a signal or an outside unmount.
const POLL: Duration = Duration::from_millis(100);

/// Options of `pinfs mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// The pool (locked for as long as the mount runs).
    pub pool: PathBuf,
    /// The directory to mount on.
    pub dir: PathBuf,
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

/// `pinfs mount`.
pub fn run(args: MountArgs) -> Result<(), CliError> {
    let fs = crate::mount(
        &args.pool,
        MountOptions {
            break_time: args.break_time,
            policy: args.policy,
        },
    )?;
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]);
    let mut signals = signals.map_err(|e| CliError::Other(anyhow!("signal handling: {e}")))?;
    let mount = pinfs_fuse::mount(
        Arc::clone(&fs),
        &args.dir,
        pinfs_fuse::MountOptions::default(),
    )
    .map_err(|e| CliError::Other(anyhow!("{e}")))?;
    println!("mounted {} at {}", args.pool.display(), args.dir.display());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    while !mount.ended() {
        if let Some(sig) = signals.pending().next() {
            tracing::info!(target: "pinfs::fuse", sig, "unmounting");
            break;
        }
        std::thread::sleep(POLL);
    }
    let unmounted = mount.unmount();
    // The last reference: dropping it unmounts the pool.
    match Arc::try_unwrap(fs) {
        Ok(fs) => drop(fs),
        Err(fs) => {
            tracing::warn!(target: "pinfs::fuse", refs = Arc::strong_count(&fs), "file system still referenced at exit");
        }
    }
    unmounted.map_err(|e| CliError::Other(anyhow!("{e}")))
}
