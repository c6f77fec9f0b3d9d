//! Fault-around (ARCHITECTURE.md "Mappings"; docs/semantics.md): a store
//! fault into a hole of a shared writable mapping allocates the whole
//! aligned `FAULT_AROUND_BYTES` chunk around it when every block of the
//! chunk is a hole, inside the mapping and below end of file — zeroed and
//! durable in one commit — and otherwise one block. Shown: the amounts
//! (`stat` blocks and `statfs` free), the zeroed contents, the chunk not
//! allocated past end of file or outside the mapping, `MAP_DIRECT` never
//! allocating, and that an image of the pool taken right after a `MAP_SYNC`
//! fault mounts with the chunk allocated and zeroed. Client mappings get
//! the same through `RemoteMapping::write_fault` (`map_remote.rs`).

mod map_support;

use std::sync::Arc;
use std::time::Duration;

use map_support::*;
use pinfs::fs::{FallocMode, Fs, Handle, FAULT_AROUND_BYTES};
use pinfs::map::{MapFlags, MAP_SHARED_VALIDATE, MAP_SYNC};
use pinfs::media::{Media, RecordingMedia};

const LONG: Duration = Duration::from_secs(45);
/// Blocks in one fault-around chunk.
const CHUNK: u64 = FAULT_AROUND_BYTES / PAGE;

fn blocks(h: &Handle) -> u64 {
    h.stat().unwrap().blocks
}

// A chunk is a power of two of blocks, more than one and well under a
// 2 MiB window (which has its own rule).
const _: () = assert!(CHUNK.is_power_of_two() && CHUNK > 1 && FAULT_AROUND_BYTES < 2 << 20);

#[test]
fn one_store_into_a_free_chunk_allocates_exactly_the_chunk_zeroed() {
    let fs = mount(LONG);
    let h = file(&fs, "/sparse", 0, 0);
    h.truncate(4 * FAULT_AROUND_BYTES).unwrap();
    let m = h.mmap(0, 4 * FAULT_AROUND_BYTES, MapFlags::SHARED).unwrap();
    let free = fs.statfs().free;
    // A store in the middle of chunk 1.
    let at = FAULT_AROUND_BYTES + 5 * PAGE + 123;
    store(&m, at, 0x5a);
    assert_eq!(blocks(&h), CHUNK, "one store, one whole chunk");
    assert_eq!(fs.statfs().free, free - CHUNK);
    let ext = h.fiemap().unwrap();
    assert_eq!(ext.len(), 1, "one extent: {ext:?}");
    assert_eq!(ext[0].logical, FAULT_AROUND_BYTES);
    assert_eq!(ext[0].len, FAULT_AROUND_BYTES);
    assert!(!ext[0].unwritten, "written (zeroed), not unwritten");
    // Every other store in the chunk faults no more allocation.
    for p in 0..CHUNK {
        store(&m, FAULT_AROUND_BYTES + p * PAGE + 7, 0x33);
    }
    assert_eq!(blocks(&h), CHUNK);
    // Zeroed, apart from the stores; the other chunks are still holes.
    let data = contents(&h, FAULT_AROUND_BYTES, FAULT_AROUND_BYTES as usize);
    for (i, &b) in data.iter().enumerate() {
        let i = i as u64;
        let want = if i % PAGE == 7 {
            0x33
        } else if i == at - FAULT_AROUND_BYTES {
            0x5a
        } else {
            0
        };
        assert_eq!(b, want, "byte {i} of the chunk");
    }
    // A second chunk, by its last byte.
    store(&m, 3 * FAULT_AROUND_BYTES - 1, 1);
    assert_eq!(blocks(&h), 2 * CHUNK);
    assert_eq!(fs.statfs().free, free - 2 * CHUNK);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn a_chunk_not_wholly_free_allocates_one_block() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 0, 0);
    h.truncate(3 * FAULT_AROUND_BYTES).unwrap();
    // Chunk 0: one block written. Chunk 1: one block unwritten.
    h.pwrite(3 * PAGE, &[9; PAGE as usize]).unwrap();
    h.fallocate(
        FallocMode::Allocate { keep_size: true },
        FAULT_AROUND_BYTES + 2 * PAGE,
        PAGE,
    )
    .unwrap();
    let m = h.mmap(0, 3 * FAULT_AROUND_BYTES, MapFlags::SHARED).unwrap();
    store(&m, 8 * PAGE, 1);
    assert_eq!(blocks(&h), 3, "one block allocated already: one more");
    store(&m, FAULT_AROUND_BYTES + 9 * PAGE, 2);
    assert_eq!(blocks(&h), 4, "one block unwritten: one more");
    // Converting the unwritten block allocates nothing.
    store(&m, FAULT_AROUND_BYTES + 2 * PAGE, 3);
    assert_eq!(blocks(&h), 4);
    // Chunk 2 is free: the whole chunk.
    store(&m, 2 * FAULT_AROUND_BYTES, 4);
    assert_eq!(blocks(&h), 4 + CHUNK);
    assert_eq!(contents(&h, 3 * PAGE, 1), [9]);
    assert_eq!(contents(&h, 8 * PAGE, 2), [1, 0]);
}

#[test]
fn never_past_end_of_file_nor_outside_the_mapping() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 0, 0);
    // End of file in the middle of chunk 1.
    h.truncate(FAULT_AROUND_BYTES + 3 * PAGE).unwrap();
    let m = h.mmap(0, 2 * FAULT_AROUND_BYTES, MapFlags::SHARED).unwrap();
    store(&m, FAULT_AROUND_BYTES + PAGE, 1);
    assert_eq!(blocks(&h), 1, "the chunk reaches past end of file");
    assert_eq!(h.stat().unwrap().size, FAULT_AROUND_BYTES + 3 * PAGE);
    // Chunk 0 only half inside a mapping that starts in its middle.
    let half = h
        .mmap(
            FAULT_AROUND_BYTES / 2,
            FAULT_AROUND_BYTES / 2,
            MapFlags::SHARED,
        )
        .unwrap();
    store(&half, 0, 2);
    assert_eq!(blocks(&h), 2, "the chunk is not wholly inside the mapping");
    // The same chunk through the whole mapping: no longer wholly free.
    store(&m, 0, 3);
    assert_eq!(blocks(&h), 3);
    assert_eq!(contents(&h, FAULT_AROUND_BYTES / 2, 1), [2]);
    assert_eq!(contents(&h, 0, 1), [3]);
}

#[test]
fn map_direct_stores_never_allocate() {
    let ending = in_child(|| {
        let fs = mount(LONG);
        let h = file(&fs, "/f", 0, 0);
        h.truncate(2 * FAULT_AROUND_BYTES).unwrap();
        let m = h.mmap(0, 2 * FAULT_AROUND_BYTES, MapFlags::DIRECT).unwrap();
        // A load of the hole reads zeros and allocates nothing.
        if load(&m, PAGE) != 0 || blocks(&h) != 0 {
            return 11;
        }
        store(&m, PAGE, 1);
        10
    });
    assert_eq!(ending, SIGBUS, "a MAP_DIRECT store into a hole");
}

/// The pool bytes right after one `MAP_SYNC` store fault, mounted as a
/// crash image: the fault's commit was durable before the store went on,
/// so the image has the whole chunk allocated and zeroed (and the store).
#[test]
fn a_map_sync_fault_is_durable_with_the_whole_chunk_zeroed() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 0, 0);
    h.truncate(2 * FAULT_AROUND_BYTES).unwrap();
    let sync = MapFlags::from_raw(MAP_SHARED_VALIDATE | MAP_SYNC).unwrap();
    let m = h.mmap(0, 2 * FAULT_AROUND_BYTES, sync).unwrap();
    // Old bytes in blocks the chunk may get: zeroing must be seen.
    let junk = file(&fs, "/junk", 4 * FAULT_AROUND_BYTES, 0xee);
    let old = junk.fiemap().unwrap();
    drop(junk);
    fs.unlink(pinfs::fs::Cred::ROOT, "/junk").unwrap();
    store(&m, FAULT_AROUND_BYTES + 3 * PAGE, 0x77);
    let chunk = h.fiemap().unwrap()[0].physical;
    assert!(
        old.iter()
            .any(|e| (e.physical..e.physical + e.len).contains(&chunk)),
        "the chunk reuses the junk's blocks (so zeroing is seen): {chunk} vs {old:?}"
    );
    let media = fs.media();
    let mut image = vec![0u8; media.len_bytes() as usize];
    media.read(0, &mut image).unwrap();
    let crashed: Arc<dyn Media> = Arc::new(RecordingMedia::from_image(image));
    let report = Fs::fsck(&*crashed).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let after = Fs::mount(crashed).unwrap();
    let h2 = after
        .open(HOLDER, "/f", pinfs::fs::OpenFlags::RDWR, 0)
        .unwrap();
    assert_eq!(blocks(&h2), CHUNK, "the chunk is allocated");
    let data = contents(&h2, FAULT_AROUND_BYTES, FAULT_AROUND_BYTES as usize);
    for (i, &b) in data.iter().enumerate() {
        let want = if i as u64 == 3 * PAGE { 0x77 } else { 0 };
        assert_eq!(b, want, "byte {i} of the chunk");
    }
    assert_eq!(blocks(&h), CHUNK);
    drop(m);
}

/// With fewer free blocks than a chunk, a store into a free chunk still gets
/// its one block (not `SIGBUS`, as `ENOSPC` for the chunk would give).
#[test]
fn short_of_space_a_store_gets_one_block() {
    let fs = mount(LONG);
    let h = file(&fs, "/f", 0, 0);
    h.truncate(2 * FAULT_AROUND_BYTES).unwrap();
    let m = h.mmap(0, 2 * FAULT_AROUND_BYTES, MapFlags::SHARED).unwrap();
    let fill = file(&fs, "/fill", 0, 0);
    let leave = CHUNK / 2;
    let take = fs.statfs().free - leave;
    fill.fallocate(FallocMode::Allocate { keep_size: false }, 0, take * PAGE)
        .unwrap();
    assert_eq!(fs.statfs().free, leave);
    store(&m, 3 * PAGE, 0x21);
    assert_eq!(blocks(&h), 1, "one block: the chunk does not fit");
    assert_eq!(fs.statfs().free, leave - 1);
    assert_eq!(contents(&h, 3 * PAGE, 2), [0x21, 0]);
    // Space again: the next free chunk is allocated whole.
    fill.truncate(0).unwrap();
    store(&m, FAULT_AROUND_BYTES, 0x22);
    assert_eq!(blocks(&h), 1 + CHUNK);
}
