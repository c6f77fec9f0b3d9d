//! Lease waits never starve the mount: more `truncate`s than FUSE workers,
//! each waiting for a different file's lease holder, and a `stat` of the
//! mount's root from another process is still answered — the waits run on
//! the breaker threads, not on the workers (which, blocked, would leave
//! the `stat` to wait for lease-break-time).

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use pinfs::fs::{Cred, OpenFlags, TruncatePolicy};
use pinfs::lease::OwnerId;
use pinfs::map::MapFlags;
use pinfs_fuse::MIN_THREADS;
use support::Mounted;

/// A hang guard, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);
/// One more waiting truncate than there are workers.
const WAITERS: usize = MIN_THREADS + 1;
const FILE: usize = 64 << 10;

#[test]
fn truncates_waiting_on_many_holders_leave_stat_served() {
    need_fuse!();
    let m = Mounted::new(TruncatePolicy::Defer, Duration::from_secs(3600));
    let mut holders = Vec::new();
    for i in 0..WAITERS {
        let who = Cred::root_as(100 + i as u64);
        let h =
            m.fs.open(who, &format!("/e{i}"), OpenFlags::CREATE, 0o666)
                .expect("create");
        h.pwrite(0, &[0x11; FILE]).expect("pwrite");
        let events =
            m.fs.leases()
                .owner_events(OwnerId(who.owner))
                .expect("events");
        let map = h
            .mmap(0, FILE as u64, MapFlags::DIRECT)
            .expect("MAP_DIRECT");
        holders.push((h, map, events));
    }
    let mut truncates: Vec<Child> = (0..WAITERS)
        .map(|i| {
            Command::new("truncate")
                .args(["-s", "0"])
                .arg(m.path(&format!("e{i}")))
                .spawn()
                .expect("truncate")
        })
        .collect();
    // Every truncate is waiting for its holder.
    for (_, _, events) in &holders {
        assert!(
            matches!(events.recv_timeout(PATIENCE), Ok(Some(_))),
            "a holder was never told: its truncate never ran"
        );
    }
    // Another process is answered meanwhile.
    let (tx, rx) = std::sync::mpsc::channel();
    let root = m.dir.path().to_path_buf();
    std::thread::spawn(move || {
        let out = Command::new("stat").arg(&root).output().expect("stat");
        let _ = tx.send(out.status.success());
    });
    let served = rx.recv_timeout(PATIENCE);
    for c in &mut truncates {
        assert!(
            c.try_wait().expect("try_wait").is_none(),
            "a truncate did not wait"
        );
    }
    // Release: the truncates complete.
    holders.clear();
    for mut c in truncates {
        assert!(c.wait().expect("truncate").success());
    }
    assert_eq!(served, Ok(true), "stat of the root was not answered");
    for i in 0..WAITERS {
        assert_eq!(
            std::fs::metadata(m.path(&format!("e{i}")))
                .expect("stat")
                .len(),
            0
        );
    }
}
