//! A client killed with SIGKILL while holding files, an unbreakable layout
//! lease and a long-term pin loses all of them (SPEC §8): afterwards no
//! lease, pin or handle of it remains, the blocks it pinned are free once
//! the file lets go of them, and fsck of the stopped pool is clean.

mod support;

use std::time::Duration;

use pinfs::fs::TruncatePolicy;
use pinfs::Errno;
use pinfs_server::Fence;
use support::{wait_until, Daemon};

#[test]
fn a_killed_client_loses_its_handles_leases_and_pins() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let c = d.client();
    drop(c.open("/p", pinfs::fs::OpenFlags::CREATE, 0o644).unwrap());
    let before = c.statfs().unwrap();
    let mut holder = d.spawn(&[
        "open /p",
        "write 0 1048576",
        "exclusive 0 1048576",
        "pin 0 1048576",
        "ready",
        "hold",
    ]);
    holder.expect("ready");
    let pid = holder.pid();
    let s = c.status().unwrap();
    let h = s.clients.iter().find(|cl| cl.pid == pid).unwrap();
    assert_eq!((h.handles.len(), h.leases.len(), h.pins.len()), (1, 1, 1));
    assert_eq!(s.pins[0].owner, h.owner);
    // Its unbreakable lease refuses everybody else's layout change.
    assert_eq!(
        c.truncate_path("/p", 0).unwrap_err().errno(),
        Errno::ETXTBSY
    );
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    assert!(
        wait_until(|| {
            let s = c.status().unwrap();
            s.clients.iter().all(|cl| cl.pid != pid) && s.leases.is_empty() && s.pins.is_empty()
        }),
        "something of the dead client remains: {:?}",
        c.status().unwrap()
    );
    c.truncate_path("/p", 0).unwrap();
    let after = c.statfs().unwrap();
    assert_eq!(after.busy, 0);
    assert_eq!(after.free, before.free);
    drop(c);
    d.stop_and_fsck();
}

#[test]
fn a_remote_pin_outlives_its_lease_and_file_and_keeps_blocks_busy() {
    // SPEC §4.2 through the daemon: closing the file and releasing the
    // lease do not drop the pin; truncating the file leaves its blocks busy
    // until the pin is dropped.
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let c = d.client();
    let f = c.open("/q", pinfs::fs::OpenFlags::CREATE, 0o644).unwrap();
    f.pwrite(0, &vec![1u8; 65536]).unwrap();
    let lease = f
        .set_lease(
            pinfs_client::LeaseSpec::layout_shared()
                .unbreakable()
                .range(pinfs::lease::ByteRange::new(0, 65536)),
        )
        .unwrap();
    let pin = f.pin_long_term(0, 65536).unwrap();
    let other = d.client();
    // Dropping everything but the pin: the connection stays, for the pin.
    f.release_lease(lease).unwrap();
    drop(f);
    other.truncate_path("/q", 0).unwrap();
    assert_eq!(other.statfs().unwrap().busy, 16, "pinned blocks are busy");
    drop(pin);
    assert!(wait_until(|| other.statfs().unwrap().busy == 0));
    drop(c);
    drop(other);
    d.stop_and_fsck();
}
