//! Lease waits never starve the mount: more `truncate`s than FUSE workers,
//! each waiting for a different file's lease holder, and a `stat` of the
//! mount's root from another process is still answered — the waits run on
//! the breaker threads, not on the workers (which, blocked, would leave
//! the `stat` to wait for lease-break-time). And one user cannot take the
//! breaker threads: past its share its truncates queue (not refused) and
//! root's truncate still runs.

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

#[test]
fn one_user_runs_its_share_of_breakers_and_root_still_breaks() {
    need_fuse!();
    use pinfs_fuse::MAX_BREAKERS_PER_UID;
    let m = Mounted::new(TruncatePolicy::Defer, Duration::from_secs(3600));
    // Files 0..=MAX_BREAKERS_PER_UID truncated by nobody, the last by root.
    let files = MAX_BREAKERS_PER_UID + 2;
    let mut holders = Vec::new();
    for i in 0..files {
        let who = Cred::root_as(200 + i as u64);
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
    let truncate = |i: usize, nobody: bool| {
        let mut c = if nobody {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "truncate",
            ]);
            c
        } else {
            Command::new("truncate")
        };
        c.args(["-s", "0"])
            .arg(m.path(&format!("e{i}")))
            .spawn()
            .expect("truncate")
    };
    let mut theirs: Vec<Child> = (0..=MAX_BREAKERS_PER_UID)
        .map(|i| truncate(i, true))
        .collect();
    // nobody's share is running: each of its first truncates told a holder.
    let mut told = 0;
    for (_, _, events) in &holders[..=MAX_BREAKERS_PER_UID] {
        if matches!(events.recv_timeout(Duration::ZERO), Ok(Some(_))) {
            told += 1;
        }
    }
    // Wait for the rest: poll each holder in turn (a hang guard of about
    // PATIENCE in all, not a timing assertion).
    let poll = Duration::from_millis(10);
    let mut rounds = PATIENCE.as_millis() / poll.as_millis();
    while told < MAX_BREAKERS_PER_UID {
        assert!(rounds > 0, "nobody's truncates never ran");
        rounds -= 1;
        for (_, _, events) in &holders[..=MAX_BREAKERS_PER_UID] {
            if matches!(events.recv_timeout(poll), Ok(Some(_))) {
                told += 1;
            }
        }
    }
    // Root's truncate is not held behind nobody's queue.
    let mut root = truncate(MAX_BREAKERS_PER_UID + 1, false);
    assert!(
        matches!(holders[files - 1].2.recv_timeout(PATIENCE), Ok(Some(_))),
        "root's truncate never ran"
    );
    // nobody's one past its share waits its turn (queued, not refused):
    // exactly MAX_BREAKERS_PER_UID of its holders were told.
    let mut more = 0;
    for (_, _, events) in &holders[..=MAX_BREAKERS_PER_UID] {
        if matches!(events.recv_timeout(Duration::ZERO), Ok(Some(_))) {
            more += 1;
        }
    }
    assert_eq!(told + more, MAX_BREAKERS_PER_UID);
    for c in &mut theirs {
        assert!(
            c.try_wait().expect("try_wait").is_none(),
            "a truncate failed"
        );
    }
    holders.clear();
    assert!(root.wait().expect("root's truncate").success());
    for mut c in theirs {
        assert!(
            c.wait().expect("truncate").success(),
            "nobody's truncate was refused"
        );
    }
}
