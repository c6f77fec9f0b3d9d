//! The soft device through the public interface only, as the file system
//! and the command line use it: a `dyn Device` over a memfd pool, and the
//! verbs-shaped queue pair.

use std::sync::Arc;

use pinfs::dma::soft::{SoftDevice, WorkRequest};
use pinfs::dma::{Backing, Completion, Device, RevokeMode, PAGE_BYTES};
use pinfs::media::{MappedPool, Media};

#[test]
fn a_soft_device_behind_dyn_device_writes_revokes_and_deregisters() {
    let pool: Arc<dyn Media> = Arc::new(MappedPool::memfd(4 << 20).unwrap());
    let soft = Arc::new(SoftDevice::new(Arc::clone(&pool)).unwrap());
    let dev: Arc<dyn Device> = soft.clone();
    assert_eq!(dev.name(), "soft");
    assert!(dev.caps().supports(RevokeMode::Odp) && dev.caps().revocable());

    let keys = dev
        .register(
            Backing::Pinned(vec![16 * PAGE_BYTES, 17 * PAGE_BYTES]),
            RevokeMode::Redirect,
        )
        .unwrap();
    assert_eq!(dev.write(keys.mr, 10, b"hello").unwrap(), Completion::Ok);
    let mut b = [0u8; 5];
    pool.read(16 * PAGE_BYTES + 10, &mut b).unwrap();
    assert_eq!(&b, b"hello");

    // A peer's write by rkey and IOVA through a queue pair.
    let qp = soft.queue_pair();
    qp.post_send(WorkRequest::Write {
        wr_id: 1,
        key: keys.rkey,
        iova: keys.iova + PAGE_BYTES,
        data: Arc::from(&b"peer"[..]),
    })
    .unwrap();
    let wc = qp.wait_cq(1);
    assert_eq!((wc[0].wr_id, wc[0].status), (1, Completion::Ok));
    pool.read(17 * PAGE_BYTES, &mut b[..4]).unwrap();
    assert_eq!(&b[..4], b"peer");

    // Redirected: the peer keeps writing without error, the pool is left alone.
    dev.revoke(keys.mr).unwrap();
    assert!(dev.is_revoked(keys.mr));
    assert_eq!(dev.write(keys.mr, 10, b"WORLD").unwrap(), Completion::Ok);
    pool.read(16 * PAGE_BYTES + 10, &mut b).unwrap();
    assert_eq!(&b, b"hello");

    dev.deregister(keys.mr).unwrap();
    assert_eq!(
        dev.write(keys.mr, 10, b"x").unwrap(),
        Completion::InvalidRegion
    );
}
