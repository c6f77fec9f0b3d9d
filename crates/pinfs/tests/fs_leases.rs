//! The file system's layout changes go through the lease engine: each kind
//! of layout change breaks an overlapping layout lease of another owner and
//! waits for it; changes that are not layout changes (in-place writes,
//! unwritten conversion) and the holder's own changes do not notify it.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pinfs::fs::{Cred, FallocMode, Fs, Handle, MountOptions, OpenFlags};
use pinfs::lease::{ByteRange, EventKind, LeaseRequest, LeaseType, OwnerId};
use pinfs::media::{MappedPool, Media};
use pinfs::Errno;

const HOLDER: Cred = Cred::root_as(1);
const OTHER: Cred = Cred::root_as(2);

fn mount(break_time: Duration) -> Arc<Fs> {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(32 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    Fs::mount_with(
        media,
        MountOptions {
            break_time,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A file with 64 KiB written and 64 KiB unwritten after it.
fn file(fs: &Arc<Fs>, path: &str) -> Handle {
    let h = fs.open(HOLDER, path, OpenFlags::CREATE, 0o644).unwrap();
    h.pwrite(0, &[1; 64 << 10]).unwrap();
    h.fallocate(
        FallocMode::Allocate { keep_size: false },
        64 << 10,
        64 << 10,
    )
    .unwrap();
    h
}

fn shared_layout(fs: &Fs, h: &Handle, range: Option<ByteRange>) {
    let mut req = LeaseRequest::layout_shared();
    if let Some(r) = range {
        req = req.range(r);
    }
    fs.leases()
        .set_lease(h.lease_file(), h.lease_handle(), OwnerId(HOLDER.owner), req)
        .unwrap();
}

/// Run `change` as another owner while the holder waits for the break
/// notification and releases its lease. Returns whether the holder was
/// notified (and the change waited for it).
fn breaks(
    fs: &Arc<Fs>,
    holder: &Handle,
    change: impl FnOnce(&Arc<Fs>) -> pinfs::Result<()> + Send + 'static,
) -> bool {
    let events = fs.leases().owner_events(OwnerId(HOLDER.owner)).unwrap();
    let fs2 = fs.clone();
    let breaker = thread::spawn(move || change(&fs2));
    let ev = events.recv_timeout(Duration::from_millis(500)).unwrap();
    let notified = matches!(ev, Some(e) if e.kind == EventKind::Break);
    if notified {
        // The breaker must still be waiting for us.
        assert!(
            !breaker.is_finished(),
            "breaker proceeded past an active lease"
        );
        fs.leases()
            .set_lease(
                holder.lease_file(),
                holder.lease_handle(),
                OwnerId(HOLDER.owner),
                LeaseRequest::layout_unlock(),
            )
            .unwrap();
    }
    breaker.join().unwrap().unwrap();
    notified
}

fn other(fs: &Arc<Fs>, path: &str) -> Handle {
    fs.open(OTHER, path, OpenFlags::RDWR, 0).unwrap()
}

/// A layout change another owner makes.
type Change = Box<dyn FnOnce(&Arc<Fs>) -> pinfs::Result<()> + Send>;

#[test]
fn each_layout_change_breaks_a_shared_layout_lease() {
    let fs = mount(Duration::ZERO);
    let changes: Vec<(&str, Change)> = vec![
        ("truncate", Box::new(|fs| other(fs, "/f").truncate(4096))),
        (
            "punch",
            Box::new(|fs| other(fs, "/f").fallocate(FallocMode::PunchHole, 0, 8192)),
        ),
        (
            "zero",
            Box::new(|fs| {
                other(fs, "/f").fallocate(FallocMode::ZeroRange { keep_size: true }, 0, 8192)
            }),
        ),
        (
            "collapse",
            Box::new(|fs| other(fs, "/f").fallocate(FallocMode::CollapseRange, 0, 4096)),
        ),
        (
            "insert",
            Box::new(|fs| other(fs, "/f").fallocate(FallocMode::InsertRange, 0, 4096)),
        ),
        (
            "allocate",
            Box::new(|fs| {
                other(fs, "/f").fallocate(FallocMode::Allocate { keep_size: false }, 1 << 20, 4096)
            }),
        ),
        (
            "append",
            Box::new(|fs| other(fs, "/f").pwrite(200 << 10, b"x").map(drop)),
        ),
        (
            "reflink into",
            Box::new(|fs| {
                let src = fs.open(OTHER, "/src", OpenFlags::RDONLY, 0)?;
                other(fs, "/f").reflink(&src, Some((0, 0, 4096)))
            }),
        ),
        (
            "reflink from",
            Box::new(|fs| {
                let dst = fs.open(OTHER, "/dst", OpenFlags::CREATE, 0o644)?;
                let src = fs.open(OTHER, "/f", OpenFlags::RDONLY, 0)?;
                dst.reflink(&src, Some((0, 0, 4096)))
            }),
        ),
        (
            "truncate by path",
            Box::new(|fs| fs.truncate_path(OTHER, "/f", 8192)),
        ),
        ("unlink", Box::new(|fs| fs.unlink(OTHER, "/f"))),
    ];
    file(&fs, "/src");
    for (what, change) in changes {
        let h = file(&fs, "/f");
        shared_layout(&fs, &h, None);
        if what == "unlink" {
            // Freeing happens at unlink only when nobody has the file open:
            // a lease holder does, so the unlink itself is no layout change
            // and the lease ends with the holder's close.
            let fs2 = fs.clone();
            thread::spawn(move || change(&fs2)).join().unwrap().unwrap();
            continue;
        }
        assert!(
            breaks(&fs, &h, change),
            "{what} did not break the layout lease"
        );
        drop(h);
        let _ = fs.unlink(HOLDER, "/f");
    }
    assert!(fs.check().is_empty());
}

#[test]
fn in_place_writes_and_own_changes_do_not_notify() {
    let fs = mount(Duration::ZERO);
    let h = file(&fs, "/f");
    shared_layout(&fs, &h, None);
    let events = fs.leases().owner_events(OwnerId(HOLDER.owner)).unwrap();
    // Another owner writes over written blocks and converts unwritten ones:
    // neither changes the layout.
    let o = other(&fs, "/f");
    o.pwrite(100, &[9; 8192]).unwrap();
    o.pwrite(70 << 10, &[9; 100]).unwrap();
    // The holder changes its own file's layout.
    h.truncate(32 << 10).unwrap();
    h.fallocate(FallocMode::PunchHole, 0, 4096).unwrap();
    assert_eq!(events.try_recv().unwrap(), None, "no notification expected");
    let leases = fs.leases().list();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].state, pinfs::lease::LeaseState::Active);
}

#[test]
fn ranged_lease_only_breaks_on_overlap() {
    let fs = mount(Duration::ZERO);
    let h = file(&fs, "/f");
    shared_layout(&fs, &h, Some(ByteRange::new(0, 4096)));
    let events = fs.leases().owner_events(OwnerId(HOLDER.owner)).unwrap();
    other(&fs, "/f")
        .fallocate(FallocMode::PunchHole, 16 << 10, 4096)
        .unwrap();
    assert_eq!(events.try_recv().unwrap(), None);
    assert!(breaks(&fs, &h, |fs| other(fs, "/f").fallocate(
        FallocMode::PunchHole,
        0,
        4096
    )));
}

#[test]
fn unbreakable_lease_refuses_others_at_once() {
    let fs = mount(Duration::from_secs(45));
    let h = file(&fs, "/f");
    fs.leases()
        .set_lease(
            h.lease_file(),
            h.lease_handle(),
            OwnerId(HOLDER.owner),
            LeaseRequest::layout_shared().unbreakable(),
        )
        .unwrap();
    let events = fs.leases().owner_events(OwnerId(HOLDER.owner)).unwrap();
    let o = other(&fs, "/f");
    let before = o.stat().unwrap();
    assert_eq!(o.truncate(0).unwrap_err().errno(), Errno::ETXTBSY);
    assert_eq!(
        o.fallocate(FallocMode::PunchHole, 0, 4096)
            .unwrap_err()
            .errno(),
        Errno::ETXTBSY
    );
    assert_eq!(o.stat().unwrap(), before, "nothing changed");
    let ev = events
        .try_recv()
        .unwrap()
        .expect("holder told someone tried");
    assert_eq!(ev.kind, EventKind::Refused);
    // The holder itself may still change its layout.
    h.truncate(4096).unwrap();
}

#[test]
fn unresponsive_holder_loses_its_lease_and_the_change_proceeds() {
    let fs = mount(Duration::from_millis(200));
    let h = file(&fs, "/f");
    shared_layout(&fs, &h, None);
    let events = fs.leases().owner_events(OwnerId(HOLDER.owner)).unwrap();
    other(&fs, "/f").truncate(0).unwrap();
    assert_eq!(other(&fs, "/f").stat().unwrap().size, 0);
    let kinds: Vec<EventKind> = std::iter::from_fn(|| events.try_recv().unwrap())
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Break, EventKind::Lost]);
    assert_eq!(
        fs.leases().get_lease(h.lease_file(), h.lease_handle()),
        LeaseType::Unlock
    );
}

#[test]
fn open_breaks_a_write_lease() {
    let fs = mount(Duration::ZERO);
    drop(fs.open(HOLDER, "/f", OpenFlags::CREATE, 0o644).unwrap());
    let h = fs.open(HOLDER, "/f", OpenFlags::RDONLY, 0).unwrap();
    let (file, handle, owner) = (h.lease_file(), h.lease_handle(), OwnerId(HOLDER.owner));
    fs.leases()
        .set_lease(file, handle, owner, LeaseRequest::write())
        .unwrap();
    let events = fs.leases().owner_events(owner).unwrap();
    // A non-blocking read-only opener fails at once; the break goes on.
    let nb = fs.open(
        OTHER,
        "/f",
        OpenFlags {
            nonblocking: true,
            ..OpenFlags::RDONLY
        },
        0,
    );
    assert_eq!(nb.unwrap_err().errno(), Errno::EWOULDBLOCK);
    assert_eq!(
        fs.leases().get_lease(file, handle),
        LeaseType::Read,
        "pending downgrade"
    );
    let ev = events.try_recv().unwrap().expect("notified");
    assert_eq!((ev.kind, ev.target), (EventKind::Break, LeaseType::Read));
    // The holder downgrades; a blocking reader then opens at once.
    fs.leases()
        .set_lease(file, handle, owner, LeaseRequest::read())
        .unwrap();
    fs.open(OTHER, "/f", OpenFlags::RDONLY, 0).unwrap();
    // A writer needs the lease gone: it waits until the holder releases.
    let fs2 = fs.clone();
    let writer = thread::spawn(move || fs2.open(OTHER, "/f", OpenFlags::RDWR, 0).map(drop));
    let ev = events
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("notified again");
    assert_eq!(ev.target, LeaseType::Unlock);
    assert!(!writer.is_finished());
    fs.leases()
        .set_lease(file, handle, owner, LeaseRequest::unlock())
        .unwrap();
    writer.join().unwrap().unwrap();
}

/// `Handle::set_lease` checks what the engine cannot: only the file's owner,
/// or uid 0 (`CAP_LEASE`), may set or release a lease on it (SPEC §10,
/// `EACCES`) — what makes a daemon client of another user fail.
#[test]
fn a_lease_on_a_file_the_caller_does_not_own_is_eacces() {
    let fs = mount(Duration::from_secs(45));
    let user = Cred {
        uid: 1000,
        gid: 1000,
        groups: pinfs::fs::Groups::NONE,
        owner: 7,
    };
    let roots = fs.open(HOLDER, "/r", OpenFlags::CREATE, 0o666).unwrap();
    let theirs = fs.open(user, "/r", OpenFlags::RDONLY, 0).unwrap();
    for req in [
        LeaseRequest::read(),
        LeaseRequest::layout_shared(),
        LeaseRequest::layout_shared().unbreakable(),
        LeaseRequest::unlock(),
    ] {
        assert_eq!(theirs.set_lease(req).unwrap_err().errno(), Errno::EACCES);
    }
    // Root may; and the owner may, on its own file.
    roots.set_lease(LeaseRequest::layout_shared()).unwrap();
    fs.chmod(Cred::ROOT, "/", 0o777).unwrap();
    let own = fs.open(user, "/mine", OpenFlags::CREATE, 0o644).unwrap();
    own.set_lease(LeaseRequest::layout_shared()).unwrap();
    let ro = fs.open(user, "/mine", OpenFlags::RDONLY, 0).unwrap();
    drop(own);
    ro.set_lease(LeaseRequest::read()).unwrap();
    assert_eq!(ro.get_lease(), LeaseType::Read);
    let by_root = fs.open(OTHER, "/mine", OpenFlags::RDONLY, 0).unwrap();
    by_root.set_lease(LeaseRequest::read()).unwrap();
}
