//! Lease breaks across processes (SPEC §3.3, §8): the holder's process gets
//! the real signal and the event, and gives up; a holder that ignores the
//! break is killed at lease-break-time (fencing), the breaker proceeds,
//! everything the holder held is released and the daemon keeps serving;
//! with `--fence off` it only loses the lease; with fencing switched off
//! (the negative control) the holder survives, which the fencing test
//! would catch.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use pinfs::fs::{OpenFlags, TruncatePolicy};
use pinfs_server::Fence;
use support::{wait_until, Daemon};

#[test]
fn a_break_reaches_the_holder_process_as_signal_and_event() {
    let d = Daemon::start(TruncatePolicy::Defer, Duration::from_secs(45), Fence::Kill);
    let mut holder = d.spawn(&["open /f", "write 0 65536", "layout", "ready", "react"]);
    holder.expect("ready");
    // Another process truncates: it waits until the holder, in its own
    // process, has released.
    let mut truncater = d.spawn(&["open-rw /f", "truncate 0"]);
    assert_eq!(truncater.expect("truncate"), "truncate ok");
    assert_eq!(holder.expect("break "), "break Break");
    assert_eq!(
        holder.expect("signal "),
        "signal yes",
        "the signal did not arrive"
    );
    holder.expect("released");
    for p in [&mut holder, &mut truncater] {
        let st = p.wait_exit(support::PATIENCE).expect("client exits");
        assert!(st.success());
    }
    let c = d.client();
    assert_eq!(c.stat("/f").unwrap().size, 0);
    drop(c);
    d.stop_and_fsck();
}

/// A holder that ignores a break, under lease-break-time 0.5 s: the
/// truncate completes; returns whether the holder was killed (and checks
/// that, then, nothing of it remains and the daemon still serves).
fn ignoring_holder(fencing_disabled: bool) -> bool {
    let d = Daemon::start_with(
        TruncatePolicy::Defer,
        Duration::from_millis(500),
        Fence::Kill,
        |s| {
            if fencing_disabled {
                s.disable_fencing_for_tests();
            }
        },
    );
    let mut holder = d.spawn(&["open /g", "write 0 65536", "layout", "ready", "hold"]);
    holder.expect("ready");
    let c = d.client();
    c.truncate_path("/g", 0).unwrap();
    let killed = match holder.wait_exit(Duration::from_secs(5)) {
        Some(st) => st.signal() == Some(libc::SIGKILL),
        None => false,
    };
    if killed {
        // Everything it held is released once its death is confirmed.
        let pid = holder.pid();
        assert!(wait_until(|| {
            let s = c.status().unwrap();
            s.clients.iter().all(|cl| cl.pid != pid) && s.leases.is_empty()
        }));
        // The daemon keeps serving, and the file is still there.
        assert_eq!(c.stat("/g").unwrap().size, 0);
        let f = c.open("/g", OpenFlags::RDWR, 0).unwrap();
        assert_eq!(f.pwrite(0, b"after").unwrap(), 5);
        drop(f);
        drop(c);
        d.stop_and_fsck();
    }
    killed
}

#[test]
fn a_holder_that_ignores_the_break_is_killed_at_lease_break_time() {
    assert!(ignoring_holder(false), "the holder was not fenced");
}

#[test]
fn negative_control_without_fencing_the_holder_survives() {
    assert!(
        !ignoring_holder(true),
        "the holder died although fencing was off: the fencing test cannot tell"
    );
}

#[test]
fn fence_off_only_removes_the_lease() {
    let d = Daemon::start(
        TruncatePolicy::Defer,
        Duration::from_millis(500),
        Fence::Off,
    );
    let mut holder = d.spawn(&["open /h", "write 0 4096", "layout", "ready", "hold"]);
    holder.expect("ready");
    let c = d.client();
    c.truncate_path("/h", 0).unwrap();
    assert!(
        holder.wait_exit(Duration::from_secs(1)).is_none(),
        "killed under --fence off"
    );
    let s = c.status().unwrap();
    let me = s
        .clients
        .iter()
        .find(|cl| cl.pid == holder.pid())
        .expect("still connected");
    assert!(me.leases.is_empty(), "its lease was not removed");
    assert_eq!(me.handles.len(), 1);
    assert!(s.leases.is_empty());
    drop(holder);
    drop(c);
    d.stop_and_fsck();
}

/// A client process that stops answering (SIGSTOP: its library's reader
/// cannot acknowledge) is fenced when the daemon asks it something and
/// lease-break-time passes; returns whether it was killed.
fn unresponsive_client(fencing_disabled: bool) -> bool {
    let d = Daemon::start_with(
        TruncatePolicy::Defer,
        Duration::from_millis(500),
        Fence::Kill,
        |s| {
            if fencing_disabled {
                s.disable_fencing_for_tests();
            }
        },
    );
    let mut p = d.spawn(&["ready", "hold"]);
    let id: u64 = p
        .expect("connected")
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    p.expect("ready");
    d.server().ping(id).unwrap();
    let pid = rustix::process::Pid::from_child(&p.child);
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // The signal is asynchronous: wait until the process is stopped.
    let stat = format!("/proc/{}/stat", p.pid());
    assert!(wait_until(|| std::fs::read_to_string(&stat).is_ok_and(
        |s| s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('T'))
    )));
    assert_eq!(
        d.server().ping(id).unwrap_err().errno(),
        pinfs::Errno::ETIMEDOUT
    );
    let killed = matches!(
        p.wait_exit(Duration::from_secs(5)),
        Some(st) if st.signal() == Some(libc::SIGKILL)
    );
    if killed {
        let c = d.client();
        assert!(wait_until(|| c.status().unwrap().clients.len() == 1));
        drop(c);
        d.stop_and_fsck();
    }
    killed
}

#[test]
fn a_client_that_does_not_acknowledge_in_time_is_fenced() {
    assert!(unresponsive_client(false));
}

#[test]
fn negative_control_an_unacknowledging_client_survives_without_fencing() {
    assert!(!unresponsive_client(true));
}
