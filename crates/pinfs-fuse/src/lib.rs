//! A FUSE mount of a live pinfs file system (SPEC §8, last point): ordinary
//! tools — `truncate`, `fallocate`, `cp`, `rm`, test suites — act on the
//! files of a mounted [`pinfs::fs::Fs`], through the same library functions as
//! every client, so each of their layout changes is a lease breaker with
//! SPEC's semantics: it waits for the holder, or fails with `Text file busy`
//! under `fail` or against an unbreakable lease, visible as the shell
//! command's error.
//!
//! [`mount`] mounts the file system at a directory (`mount(2)` as root,
//! `fusermount3` otherwise: fuser's pure-Rust mount, no libfuse) and returns
//! once the mount is live — the kernel's `INIT` answered — with worker
//! threads serving requests; [`Mount::unmount`] (or dropping the [`Mount`])
//! unmounts and joins them. An unmount from outside (`fusermount3 -u DIR`
//! by an administrator) ends the workers too; [`Mount::ended`] tells.
//!
//! Each request runs with the caller's credentials (`uid`, `gid` from the
//! request, supplementary groups from `/proc/PID/status`) and the mount's
//! own lease owner ([`MountOptions::owner`]). A request that may break a
//! lease waits for the break on one of the mount's breaker threads
//! ([`MAX_BREAKERS`]), never on a FUSE worker, so the workers
//! (`MountOptions::threads`) keep serving everyone else.
//!
//! Coherence with direct access: every file is opened `FOPEN_DIRECT_IO`
//! (with `FUSE_DIRECT_IO_ALLOW_MMAP`, so shared `mmap` through the mount
//! works) and attributes and entries have a zero time-to-live, so the
//! kernel never serves a cached page or size while clients store straight
//! into pool memory (ARCHITECTURE.md, "The FUSE mount").

#![deny(unsafe_code)]

mod breakers;
mod cred;
mod handles;
mod node;
mod ops;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::{Config, MountOption, SessionACL, SessionUnmounter};
use pinfs::fs::Fs;

pub use self::breakers::{
    MAX_BREAKERS, MAX_BREAKERS_PER_UID, MAX_BREAKER_QUEUE, MAX_BREAKER_QUEUE_PER_UID,
};
pub use self::handles::{
    MAX_OPEN_HANDLES, MAX_OPEN_HANDLES_PER_UID, MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_BYTES_PER_UID,
};
pub use self::node::{node_id, node_of_id};

/// Workers serving requests when [`MountOptions::threads`] asks for fewer
/// (lease waits run on the breaker threads, not on these).
pub const MIN_THREADS: usize = 4;

/// At most this many workers (each holds a request buffer of 16 MiB plus
/// a page: fuser's largest write).
pub const MAX_THREADS: usize = 64;

/// The lease owner of a mount made with [`MountOptions::default`]: apart
/// from the daemon's clients (from `1 << 48`) and the in-process actors
/// (small numbers).
pub const DEFAULT_OWNER: u64 = 1 << 47;

/// How a mount is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// The lease owner every FUSE caller acts as: leases of other owners
    /// are broken by what callers do through the mount.
    pub owner: u64,
    /// Worker threads serving requests (each with its own `/dev/fuse`
    /// descriptor, `FUSE_DEV_IOC_CLONE`); raised to [`MIN_THREADS`],
    /// capped at [`MAX_THREADS`].
    pub threads: usize,
    /// `allow_other`: users other than the mounter may use the mount (the
    /// kernel checks permissions with `default_permissions` either way). A
    /// mounter other than root needs `user_allow_other` in
    /// `/etc/fuse.conf` for it.
    pub allow_other: bool,
    /// The mount's subtype (`fuse.SUBTYPE` in `/proc/mounts`).
    pub subtype: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            owner: DEFAULT_OWNER,
            threads: MIN_THREADS,
            allow_other: true,
            subtype: "pinfs".to_string(),
        }
    }
}

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mount point is not a directory (or cannot be reached).
    #[error("{}: not a directory to mount on: {source}", dir.display())]
    MountPoint {
        /// The mount point.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Mounting failed (no `/dev/fuse`, not permitted, `fusermount3`
    /// missing, the kernel refused the protocol).
    #[error("{}: cannot mount: {source}", dir.display())]
    Mount {
        /// The mount point.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Unmounting failed (`EBUSY` when something still uses the mount is
    /// handled by a lazy unmount; this is anything else).
    #[error("{}: cannot unmount: {source}", dir.display())]
    Unmount {
        /// The mount point.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The thread serving the mount could not start, or panicked.
    #[error("{}: the FUSE session: {what}", dir.display())]
    Session {
        /// The mount point.
        dir: PathBuf,
        /// What happened.
        what: String,
    },
}

/// A live FUSE mount. Unmounted by [`Mount::unmount`] or when dropped.
#[derive(Debug)]
pub struct Mount {
    dir: PathBuf,
    unmounter: SessionUnmounter,
    session: Option<JoinHandle<std::io::Result<()>>>,
    /// Set before we unmount, so the session's end is not taken for an
    /// unmount from outside.
    unmounting: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
    /// The negative control's owner (0: the mount's own).
    #[cfg(feature = "negative-controls")]
    owner_override: Arc<std::sync::atomic::AtomicU64>,
}

/// Mount `fs` at `dir`. Returns once the mount is live: the kernel's
/// `INIT` is answered, so any process may use `dir` at once.
pub fn mount(fs: Arc<Fs>, dir: &Path, opts: MountOptions) -> Result<Mount, Error> {
    let meta = std::fs::metadata(dir).map_err(|source| Error::MountPoint {
        dir: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::MountPoint {
            dir: dir.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("pinfs".to_string()),
        MountOption::Subtype(opts.subtype.clone()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoAtime,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.clamp(MIN_THREADS, MAX_THREADS));
    config.clone_fd = true;
    let filesystem = ops::PinfsFuse::new(fs, opts.owner);
    #[cfg(feature = "negative-controls")]
    let owner_override = filesystem.owner_override();
    // `Session::new` mounts and answers `INIT`: when it returns, the mount
    // is live.
    let mut session =
        fuser::Session::new(filesystem, dir, &config).map_err(|source| Error::Mount {
            dir: dir.to_path_buf(),
            source,
        })?;
    let unmounter = session.unmount_callable();
    let unmounting = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(AtomicBool::new(false));
    let (ours, done, at) = (
        Arc::clone(&unmounting),
        Arc::clone(&ended),
        dir.to_path_buf(),
    );
    let thread = std::thread::Builder::new()
        .name("pinfs-fuse".to_string())
        .spawn(move || {
            let r = session.run();
            done.store(true, Ordering::Release);
            if !ours.load(Ordering::Acquire) {
                tracing::warn!(target: "pinfs::fuse", dir = %at.display(), "the FUSE mount was unmounted from outside; the file system stays mounted for its other users");
            }
            r
        })
        .map_err(|e| Error::Session {
            dir: dir.to_path_buf(),
            what: e.to_string(),
        })?;
    tracing::info!(target: "pinfs::fuse", dir = %dir.display(), owner = opts.owner, "mounted");
    Ok(Mount {
        dir: dir.to_path_buf(),
        unmounter,
        session: Some(thread),
        unmounting,
        ended,
        #[cfg(feature = "negative-controls")]
        owner_override,
    })
}

impl Mount {
    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the mount has ended: unmounted from outside
    /// (`fusermount3 -u`), or the kernel connection was aborted.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Unmount and wait for the workers to finish their requests. When
    /// something still uses the mount (`EBUSY`: an open file, a working
    /// directory), the mount is detached lazily and its connection aborted,
    /// so the workers end and the file system can be unmounted; those users
    /// then see `ENOTCONN`.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.unmount_inner()
    }

    /// Test-only negative control: lease breaking off on the FUSE path.
    /// Every later request acts as lease owner `owner` instead of the
    /// mount's own; given a lease holder's owner, the mount's layout
    /// changes are that holder's own and break none of its leases (SPEC
    /// §3.2), so a test can show what the breaks protect.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn act_as_owner_for_tests(&self, owner: u64) {
        self.owner_override.store(owner, Ordering::Release);
    }

    fn unmount_inner(&mut self) -> Result<(), Error> {
        let Some(thread) = self.session.take() else {
            return Ok(());
        };
        self.unmounting.store(true, Ordering::Release);
        if !self.ended() {
            if let Err(e) = self.unmounter.unmount() {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    if !detach_and_abort(&self.dir) {
                        // Not joined: the workers end with the last user.
                        return Ok(());
                    }
                } else {
                    // The session keeps running: join it only once it ends.
                    self.session = Some(thread);
                    return Err(Error::Unmount {
                        dir: self.dir.clone(),
                        source: e,
                    });
                }
            }
        }
        match thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Session {
                dir: self.dir.clone(),
                what: e.to_string(),
            }),
            Err(_) => Err(Error::Session {
                dir: self.dir.clone(),
                what: "a worker panicked".to_string(),
            }),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(target: "pinfs::fuse", error = %e, "unmount at drop");
        }
    }
}

/// Where the fuse control file system is mounted (systemd mounts it at
/// boot; a bare machine may not have it).
const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

/// A busy mount: detach it (`MNT_DETACH`) so it leaves the namespace now,
/// then abort its connection through the fuse control file system, so the
/// workers see `ENODEV` and end (what `umount -l` plus
/// `echo 1 > /sys/fs/fuse/connections/N/abort` would do). Mounts the
/// control file system first where it is missing (as systemd's
/// `sys-fs-fuse-connections.mount` would). Returns whether the connection
/// was aborted; if not, the workers serve the remaining users and end when
/// the last one goes.
fn detach_and_abort(dir: &Path) -> bool {
    let dev = std::fs::metadata(dir).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    });
    if let Err(e) = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH) {
        tracing::warn!(target: "pinfs::fuse", dir = %dir.display(), error = %e, "lazy unmount");
    }
    let Some(dev) = dev else {
        return false;
    };
    let abort = format!("{FUSECTL_DIR}/{}/abort", rustix::fs::minor(dev));
    if !Path::new(&abort).exists() {
        if let Err(e) = rustix::mount::mount(
            "fusectl",
            FUSECTL_DIR,
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        ) {
            tracing::warn!(target: "pinfs::fuse", error = %e, "cannot mount the fuse control file system at {FUSECTL_DIR}");
        }
    }
    match std::fs::write(&abort, b"1") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(target: "pinfs::fuse", path = %abort, error = %e, "cannot abort the FUSE connection; its workers end when its last user goes");
            false
        }
    }
}
