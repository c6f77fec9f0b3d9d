//! Every operation of a client runs with its own user (SO_PEERCRED): a
//! client of another uid gets `EACCES` for a lease on a file it does not
//! own and for opening root's 0600 file for writing; on its own file it may;
//! root (`CAP_LEASE`) may take a lease on anybody's file. Needs root (to
//! run a client as another user); skips with a reason otherwise.

mod support;

use std::time::Duration;

use pinfs::fs::{OpenFlags, TruncatePolicy};
use pinfs_client::LeaseSpec;
use pinfs_server::Fence;
use support::Daemon;

const OTHER: (u32, u32) = (4242, 4242);

#[test]
fn a_client_of_another_user_is_checked_as_that_user() {
    if !support::is_root() {
        println!("skipped: needs root to run a client as another uid");
        return;
    }
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let root = d.client();
    root.mkdir("/pub", 0o777).unwrap();
    let secret = root.open("/secret", OpenFlags::CREATE, 0o600).unwrap();
    secret.pwrite(0, b"root's").unwrap();
    drop(root.open("/shared", OpenFlags::CREATE, 0o644).unwrap());
    let mut other = d.spawn_as(
        Some(OTHER),
        &[
            "open-ro /shared",
            "lease read",
            "layout",
            "open-rw /secret",
            "open-ro /secret",
            "open /pub/mine",
            "layout",
            "ready",
            "hold",
        ],
    );
    other.expect("connected");
    assert_eq!(other.expect("open-ro"), "open-ro ok");
    assert_eq!(other.expect("lease"), "lease err EACCES");
    assert_eq!(other.expect("layout"), "layout err EACCES");
    assert_eq!(other.expect("open-rw"), "open-rw err EACCES");
    assert_eq!(other.expect("open-ro"), "open-ro err EACCES");
    assert_eq!(other.expect("open"), "open ok");
    assert!(other.expect("layout").starts_with("layout ok"));
    other.expect("ready");
    let s = root.status().unwrap();
    let cl = s.clients.iter().find(|c| c.pid == other.pid()).unwrap();
    assert_eq!((cl.uid, cl.gid), OTHER);
    assert_eq!(root.stat("/pub/mine").unwrap().uid, OTHER.0);
    // Root may lease a file it does not own (CAP_LEASE).
    let mine = root.open("/pub/mine", OpenFlags::RDONLY, 0).unwrap();
    mine.set_lease(LeaseSpec::layout_shared()).unwrap();
    // ... and another client's lease is not root's to release by id.
    let theirs = s.leases.iter().find(|l| l.owner.0 == cl.owner).unwrap().id;
    assert_eq!(
        root.release_lease(theirs).unwrap_err().errno(),
        pinfs::Errno::EPERM
    );
    drop(other);
    drop((mine, secret, root));
    d.stop_and_fsck();
}
