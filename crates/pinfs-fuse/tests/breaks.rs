//! The FUSE path as a lease breaker, in one process: a holder with a
//! `MAP_DIRECT` mapping and a soft-device registration over a file, and the
//! real `truncate` (coreutils) plus a write on the mount. The holder is told
//! before anything changes, releases, and registers again over what the
//! file now holds — and while the truncate waits, the mount serves other
//! processes (its wait runs on a breaker thread); the negative control switches lease breaking off on the
//! FUSE path (its changes made as the holder's own) and sees the
//! registration silently go stale: the file changed under it, it was never
//! told.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use pinfs::dma::soft::SoftDevice;
use pinfs::dma::{Completion, Device, RevokeMode};
use pinfs::fs::{Cred, OpenFlags, TruncatePolicy};
use pinfs::lease::OwnerId;
use pinfs::map::MapFlags;
use support::Mounted;

/// The holder's identity.
const HOLDER: Cred = Cred::root_as(1);
/// The file's size: 16 blocks.
const FILE: usize = 64 << 10;
/// A hang guard, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the scenario saw.
struct Seen {
    /// The holder was told (a break event) before the truncate completed.
    told: bool,
    /// The first bytes the holder's registration reads after the change.
    registration: Vec<u8>,
    /// The same bytes read through the mount.
    file: Vec<u8>,
}

/// Requests of other processes on the mount complete (a hang guard, not a
/// timing assertion: a mount whose only worker is blocked never answers).
fn others_are_served(m: &Mounted) {
    let (tx, rx) = std::sync::mpsc::channel();
    let other = m.path("other");
    let root = m.dir.path().to_path_buf();
    std::thread::spawn(move || {
        std::fs::write(&other, b"served").expect("write another file");
        let back = std::fs::read(&other).expect("read it");
        let names = std::fs::read_dir(&root).expect("ls").count();
        let _ = tx.send((back, names));
    });
    let (back, names) = rx.recv_timeout(PATIENCE).expect("the mount answers others");
    assert_eq!(back, b"served");
    assert_eq!(names, 2);
}

fn scenario(breaks_off: bool) -> Seen {
    let m = Mounted::new(TruncatePolicy::Defer, Duration::from_secs(3600));
    let fs = Arc::clone(&m.fs);
    let h = fs
        .open(HOLDER, "/f", OpenFlags::CREATE, 0o644)
        .expect("create");
    h.pwrite(0, &[0x11; FILE]).expect("pwrite");
    let events = fs
        .leases()
        .owner_events(OwnerId(HOLDER.owner))
        .expect("events");
    let dev: Arc<dyn Device> =
        Arc::new(SoftDevice::new(Arc::clone(fs.media())).expect("soft device"));
    let map = h
        .mmap(0, FILE as u64, MapFlags::DIRECT)
        .expect("MAP_DIRECT");
    let reg = map
        .register(Arc::clone(&dev), 0, FILE as u64, RevokeMode::Invalidate)
        .expect("register");
    if breaks_off {
        m.mount
            .as_ref()
            .expect("mounted")
            .act_as_owner_for_tests(HOLDER.owner);
    }
    // Another shell: truncate the file to nothing, then write new data.
    let path = m.path("f");
    let changer = std::thread::spawn(move || {
        let out = std::process::Command::new("truncate")
            .args(["-s", "0"])
            .arg(&path)
            .output()
            .expect("truncate");
        assert!(out.status.success(), "{out:?}");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.write_all(&[0x22; FILE]).expect("write");
    });
    let told = match events.recv_timeout(if breaks_off { Duration::ZERO } else { PATIENCE }) {
        Ok(Some(_)) => {
            // Told before anything changed: the truncate waits for us.
            assert!(!changer.is_finished());
            // Meanwhile the mount serves everyone else: the truncate
            // waits on a breaker thread, not a worker.
            others_are_served(&m);
            assert!(!changer.is_finished());
            true
        }
        _ => false,
    };
    let reg = if told {
        // Release what the lease protected, then map and register again
        // once the change is done.
        reg.deregister().expect("deregister");
        drop(map);
        changer.join().expect("changer");
        let map = h
            .mmap(0, FILE as u64, MapFlags::DIRECT)
            .expect("MAP_DIRECT");
        let reg = map
            .register(Arc::clone(&dev), 0, FILE as u64, RevokeMode::Invalidate)
            .expect("register again");
        (reg, Some(map))
    } else {
        changer.join().expect("changer");
        (reg, Some(map))
    };
    let mut registration = vec![0; 16];
    assert_eq!(
        reg.0.read(0, &mut registration).expect("dma read"),
        Completion::Ok
    );
    let file = std::fs::read(m.path("f")).expect("read")[..16].to_vec();
    drop(reg);
    Seen {
        told,
        registration,
        file,
    }
}

#[test]
fn truncate_on_the_mount_tells_the_registration_holder_first() {
    need_fuse!();
    let seen = scenario(false);
    assert!(seen.told, "the holder was never told");
    assert_eq!(seen.file, [0x22; 16]);
    assert_eq!(seen.registration, seen.file, "the registration is stale");
}

#[test]
fn negative_control_without_breaks_the_registration_goes_stale_untold() {
    need_fuse!();
    let seen = scenario(true);
    assert!(!seen.told);
    assert_eq!(seen.file, [0x22; 16]);
    // The damage the breaks prevent: the file changed under the
    // registration and its device still reads (and would write) the old
    // blocks, which are no longer the file's.
    assert_eq!(seen.registration, [0x11; 16]);
}
