//! The one helper of the FUSE mount's tests: a file system on a memfd pool
//! mounted at a temporary directory in the test process, and the skip rule
//! (no `/dev/fuse`, no `fusermount3`, or not root: a printed reason).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use pinfs::fs::{Fs, MountOptions as FsOptions, TruncatePolicy};
use pinfs::media::{MappedPool, Media};
use pinfs_fuse::{Mount, MountOptions};

/// Why FUSE tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return Some("no fusermount3".into());
    }
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not root".into());
    }
    None
}

/// Skip the calling test with a printed reason when FUSE is unavailable.
#[macro_export]
macro_rules! need_fuse {
    () => {
        if let Some(why) = support::skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A mounted file system and its FUSE mount.
pub struct Mounted {
    pub fs: Arc<Fs>,
    pub mount: Option<Mount>,
    pub dir: tempfile::TempDir,
}

impl Mounted {
    /// A fresh 64 MiB file system with `policy` and `break_time`, mounted.
    pub fn new(policy: TruncatePolicy, break_time: Duration) -> Mounted {
        let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(64 << 20).expect("memfd pool"));
        Fs::mkfs(&*media).expect("mkfs");
        let fs = Fs::mount_with(media, FsOptions { break_time, policy }).expect("mount");
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = pinfs_fuse::mount(Arc::clone(&fs), dir.path(), MountOptions::default())
            .expect("FUSE mount");
        Mounted {
            fs,
            mount: Some(mount),
            dir,
        }
    }

    /// The default: `defer`, 45 s.
    pub fn default_fs() -> Mounted {
        Mounted::new(TruncatePolicy::Defer, Duration::from_secs(45))
    }

    /// A path under the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Unmount (the workers are joined).
    pub fn unmount(&mut self) {
        if let Some(m) = self.mount.take() {
            m.unmount().expect("unmount");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
    }
}

/// Run a command; its output.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().expect(cmd)
}
