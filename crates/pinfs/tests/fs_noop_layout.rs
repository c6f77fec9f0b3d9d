//! A layout change that changes nothing changes nothing (SPEC §2): punching
//! holes or bytes past end of file, zeroing unwritten blocks, allocating what
//! is allocated, truncating to the same size, cloning nothing — none of them
//! is a layout change, so none breaks a layout lease, copies a shared block
//! or needs a free block (a full pool does not make them fail). And zero
//! range leaves its whole block range allocated, the partial blocks at its
//! edges included, so a later write there cannot fail for want of space.
//!
//! The lease detector is a non-blocking handle of another owner: a layout
//! change that breaks the holder's lease fails at once with `EWOULDBLOCK`
//! (and the holder gets an event). The control runs a real layout change
//! through the same detector and sees both.

use std::sync::Arc;

use pinfs::fs::{Cred, FallocMode, FiemapExtent, Fs, Handle, OpenFlags};
use pinfs::lease::{LeaseRequest, OwnerId};
use pinfs::media::{MappedPool, Media};
use pinfs::Errno;

const BS: u64 = 4096;
const HOLDER: Cred = Cred::root_as(1);
const OTHER: Cred = Cred::root_as(2);

fn mount(pool_bytes: u64) -> Arc<Fs> {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(pool_bytes).unwrap());
    Fs::mkfs(&*media).unwrap();
    Fs::mount(media).unwrap()
}

/// `/f`: 10,000 bytes written (its last block partial) and shared with
/// `/g` by reflink; grown to 20 blocks (holes after the data); blocks 12..16
/// preallocated (unwritten, private).
fn setup(fs: &Arc<Fs>) -> (Handle, Handle) {
    let f = fs.open(HOLDER, "/f", OpenFlags::CREATE, 0o644).unwrap();
    f.pwrite(0, &[5; 10_000]).unwrap();
    let g = fs.open(HOLDER, "/g", OpenFlags::CREATE, 0o644).unwrap();
    g.reflink(&f, None).unwrap();
    f.truncate(20 * BS).unwrap();
    f.fallocate(FallocMode::Allocate { keep_size: true }, 12 * BS, 4 * BS)
        .unwrap();
    (f, g)
}

fn take_layout_lease(fs: &Fs, h: &Handle) {
    fs.leases()
        .set_lease(
            h.lease_file(),
            h.lease_handle(),
            OwnerId(HOLDER.owner),
            LeaseRequest::layout_shared(),
        )
        .unwrap();
}

fn other_nonblocking(fs: &Arc<Fs>) -> Handle {
    let flags = OpenFlags {
        nonblocking: true,
        ..OpenFlags::RDWR
    };
    fs.open(OTHER, "/f", flags, 0).unwrap()
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    fiemap: Vec<FiemapExtent>,
    data: Vec<u8>,
    free: u64,
}

fn seen(fs: &Fs, h: &Handle) -> Seen {
    let size = h.stat().unwrap().size;
    let mut data = vec![0u8; size as usize];
    h.pread(0, &mut data).unwrap();
    Seen {
        size,
        fiemap: h.fiemap().unwrap(),
        data,
        free: fs.statfs().free,
    }
}

/// The calls that change nothing on `setup`'s file.
fn no_ops(o: &Handle, g: &Handle) -> Vec<(&'static str, pinfs::Result<()>)> {
    let size = 20 * BS;
    vec![
        (
            "punch wholly past end of file",
            o.fallocate(FallocMode::PunchHole, size, 8 * BS),
        ),
        (
            "punch of holes",
            o.fallocate(FallocMode::PunchHole, 4 * BS, 6 * BS),
        ),
        (
            "punch of a partial hole block",
            o.fallocate(FallocMode::PunchHole, 5 * BS + 7, 100),
        ),
        (
            "punch of unwritten blocks, partly",
            o.fallocate(FallocMode::PunchHole, 12 * BS + 100, 200),
        ),
        (
            "zero range of unwritten private blocks",
            o.fallocate(
                FallocMode::ZeroRange { keep_size: true },
                12 * BS + 100,
                3 * BS,
            ),
        ),
        (
            "allocate what is allocated",
            o.fallocate(FallocMode::Allocate { keep_size: false }, 12 * BS, 4 * BS),
        ),
        ("truncate to the same size", o.truncate(size)),
        ("clone nothing", o.reflink(g, Some((10_000, 0, 0)))),
    ]
}

#[test]
fn changes_that_change_nothing_break_no_lease_and_copy_nothing() {
    let fs = mount(32 << 20);
    let (f, g) = setup(&fs);
    take_layout_lease(&fs, &f);
    let events = fs.leases().owner_events(OwnerId(HOLDER.owner)).unwrap();
    let o = other_nonblocking(&fs);
    let before = seen(&fs, &f);
    let mtime = f.stat().unwrap().mtime_ns;
    for (what, r) in no_ops(&o, &g) {
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(seen(&fs, &f), before, "{what} changed the file");
        assert_eq!(
            events.try_recv().unwrap(),
            None,
            "{what} notified the holder"
        );
    }
    // Timestamps are the one thing they update, as in Linux.
    assert!(f.stat().unwrap().mtime_ns >= mtime);
    assert_eq!(fs.leases().list().len(), 1);
    assert_eq!(
        fs.leases().list()[0].state,
        pinfs::lease::LeaseState::Active
    );
    assert!(fs.check().is_empty());

    // Control: a real layout change through the same detector is caught.
    let r = o.fallocate(FallocMode::PunchHole, 0, BS);
    assert_eq!(r.unwrap_err().errno(), Errno::EWOULDBLOCK);
    assert!(
        events.try_recv().unwrap().is_some(),
        "the holder is notified of a real change"
    );
}

/// Fill every free block of the pool.
fn fill_pool(fs: &Arc<Fs>) -> Handle {
    let h = fs
        .open(Cred::ROOT, "/fill", OpenFlags::CREATE, 0o644)
        .unwrap();
    let chunk = vec![0xeeu8; 64 * BS as usize];
    let mut off = 0u64;
    loop {
        match h.pwrite(off, &chunk) {
            Ok(n) => off += n as u64,
            Err(e) if e.errno() == Errno::ENOSPC => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    loop {
        match h.pwrite(off, &[0xee; BS as usize]) {
            Ok(n) => off += n as u64,
            Err(e) if e.errno() == Errno::ENOSPC => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // Whatever single blocks are left (an extent block the big file could
    // not get, say): one small file each.
    let mut n = 0;
    while fs.statfs().free > 0 {
        let small = fs
            .open(Cred::ROOT, &format!("/fill{n}"), OpenFlags::CREATE, 0o644)
            .unwrap();
        n += 1;
        match small.pwrite(0, &[0xee; BS as usize]) {
            Ok(_) => {}
            Err(e) if e.errno() == Errno::ENOSPC => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    assert_eq!(fs.statfs().free, 0, "the pool is full");
    h
}

/// XFS punches past end of file on a full file system; so must pinfs — the
/// shared last block must not be copied for bytes nobody can read.
#[test]
fn changes_that_change_nothing_succeed_on_a_full_pool() {
    let fs = mount(16 << 20);
    let f = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    f.pwrite(0, &[5; 10_000]).unwrap();
    let g = fs.open(Cred::ROOT, "/g", OpenFlags::CREATE, 0o644).unwrap();
    g.reflink(&f, None).unwrap();
    let _fill = fill_pool(&fs);
    let before = seen(&fs, &f);
    f.fallocate(FallocMode::PunchHole, 10_000, 2 * BS)
        .expect("punch past end of file on a full pool");
    f.fallocate(FallocMode::PunchHole, 10_100, 100)
        .expect("punch past end of file within the last block");
    f.fallocate(FallocMode::ZeroRange { keep_size: true }, 10_000, 200)
        .expect("zero range past end of file within the last block");
    f.truncate(10_000).expect("truncate to the same size");
    assert_eq!(seen(&fs, &f), before);
    assert!(fs.check().is_empty());
}

/// fallocate(2) ZERO_RANGE preallocates the partial blocks at its edges: a
/// write into them later must not fail with `ENOSPC`, even on a full pool.
#[test]
fn zero_range_allocates_its_partial_edge_blocks() {
    let fs = mount(16 << 20);
    let f = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    f.truncate(10 * BS).unwrap();
    // Blocks 1 (partial), 2 (whole) and 5 (partial) are holes before.
    f.fallocate(
        FallocMode::ZeroRange { keep_size: true },
        BS + 100,
        2 * BS - 100,
    )
    .unwrap();
    f.fallocate(FallocMode::ZeroRange { keep_size: false }, 5 * BS + 10, 300)
        .unwrap();
    let mapped: Vec<(u64, u64, bool)> = f
        .fiemap()
        .unwrap()
        .iter()
        .map(|e| (e.logical / BS, e.len / BS, e.unwritten))
        .collect();
    let blocks: Vec<u64> = mapped.iter().flat_map(|&(l, n, _)| l..l + n).collect();
    assert_eq!(blocks, vec![1, 2, 5], "{mapped:?}");
    assert!(mapped.iter().all(|&(_, _, unwritten)| unwritten));
    let _fill = fill_pool(&fs);
    f.pwrite(BS, &[1; 100])
        .expect("write into the partial first block");
    f.pwrite(2 * BS + 5, &[2; 100])
        .expect("write into the whole block");
    f.pwrite(5 * BS, &[3; 10])
        .expect("write into the partial last block");
    let mut buf = vec![0u8; 6 * BS as usize];
    f.pread(0, &mut buf).unwrap();
    assert!(buf[BS as usize..BS as usize + 100].iter().all(|&b| b == 1));
    assert_eq!(
        buf.iter().filter(|&&b| b != 0).count(),
        210,
        "only what was written reads back non-zero"
    );
    assert!(fs.check().is_empty());
}

/// Zero range still zeroes the data it covers in the partial blocks, in
/// place when the block is private and by copy when shared, and replaces
/// whole written blocks by unwritten ones.
#[test]
fn zero_range_zeroes_data_in_partial_and_whole_blocks() {
    let fs = mount(16 << 20);
    let f = fs.open(Cred::ROOT, "/f", OpenFlags::CREATE, 0o644).unwrap();
    f.pwrite(0, &[7; 4 * BS as usize]).unwrap();
    let g = fs.open(Cred::ROOT, "/g", OpenFlags::CREATE, 0o644).unwrap();
    g.reflink(&f, Some((3 * BS, 0, BS))).unwrap();
    f.fallocate(FallocMode::ZeroRange { keep_size: true }, 100, 3 * BS + 100)
        .unwrap();
    let mut buf = vec![0u8; 4 * BS as usize];
    f.pread(0, &mut buf).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 7));
    assert!(buf[100..3 * BS as usize + 200].iter().all(|&b| b == 0));
    assert!(buf[3 * BS as usize + 200..].iter().all(|&b| b == 7));
    let mut gb = vec![0u8; BS as usize];
    g.pread(0, &mut gb).unwrap();
    assert!(
        gb.iter().all(|&b| b == 7),
        "the shared block was copied, not zeroed"
    );
    let ext = f.fiemap().unwrap();
    assert!(
        ext.iter().any(|e| e.logical == BS && e.unwritten),
        "whole blocks became unwritten: {ext:?}"
    );
    assert!(fs.check().is_empty());
}
