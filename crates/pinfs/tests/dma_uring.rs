//! The `uring` device through the public API, as the file system holds it:
//! a `dyn Device` over a memfd pool — registration, real kernel DMA in both
//! directions, revocation in both modes, deregistration.

use std::sync::Arc;

use pinfs::dma::uring::UringDevice;
use pinfs::dma::{Backing, Completion, Device, RevokeMode, PAGE_BYTES};
use pinfs::media::{MappedPool, Media};

#[test]
fn a_uring_device_as_the_file_system_sees_it() {
    let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(8 << 20).unwrap());
    let dev: Arc<dyn Device> = Arc::new(UringDevice::new(Arc::clone(&pool)).unwrap());
    assert_eq!(dev.name(), "uring");
    for (i, mode) in [RevokeMode::Invalidate, RevokeMode::Redirect]
        .into_iter()
        .enumerate()
    {
        let first = 16 * (i as u64 + 1);
        let pages = vec![first * PAGE_BYTES, (first + 4) * PAGE_BYTES];
        let keys = dev.register(Backing::Pinned(pages), mode).unwrap();
        assert_eq!(
            dev.write(keys.mr, PAGE_BYTES - 3, b"kernel dma").unwrap(),
            Completion::Ok
        );
        let mut got = [0; 10];
        pool.read(first * PAGE_BYTES + PAGE_BYTES - 3, &mut got[..3])
            .unwrap();
        pool.read((first + 4) * PAGE_BYTES, &mut got[3..]).unwrap();
        assert_eq!(&got, b"kernel dma");
        let mut back = [0; 10];
        assert_eq!(
            dev.read(keys.mr, PAGE_BYTES - 3, &mut back).unwrap(),
            Completion::Ok
        );
        assert_eq!(&back, b"kernel dma");

        dev.revoke(keys.mr).unwrap();
        let expected = match mode {
            RevokeMode::Invalidate => Completion::ProtectionError,
            _ => Completion::Ok,
        };
        assert_eq!(dev.write(keys.mr, 0, b"late").unwrap(), expected, "{mode}");
        let mut now = [0; 4];
        pool.read(first * PAGE_BYTES, &mut now).unwrap();
        assert_eq!(
            now, [0; 4],
            "{mode}: nothing lands in the pool after revocation"
        );
        dev.deregister(keys.mr).unwrap();
        assert_eq!(
            dev.write(keys.mr, 0, b"x").unwrap(),
            Completion::InvalidRegion
        );
    }
}
