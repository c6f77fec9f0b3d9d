//! Shared by the `dma_*` tests: mounting a pool with a policy, a file
//! mapped `MAP_DIRECT` or shared, and the devices to register with.
//!
//! `Toy` is a minimal synchronous device (one lock per region: accesses hold
//! it shared while they copy, revocation and invalidation take it
//! exclusively, which is their confirmation). It lets the file-system side be
//! tested independently of the shipped devices, whose own behaviour the
//! tests check through `pinfs::dma::soft` and `pinfs::dma::uring`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use pinfs::dma::{
    Backing, Completion, Device, DeviceCaps, MrId, MrKeys, PageSource, RevokeMode, PAGE_BYTES,
};
use pinfs::fs::{Cred, Fs, Handle, MountOptions, OpenFlags, TruncatePolicy};
use pinfs::map::{MapFlags, Mapping};
use pinfs::media::{MappedPool, Media};
use pinfs::Result;

pub const OWNER: Cred = Cred::root_as(1);
pub const OTHER: Cred = Cred::root_as(2);

pub fn mount(policy: TruncatePolicy, break_time: Duration) -> (Arc<Fs>, Arc<dyn Media>) {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(64 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount_with(media.clone(), MountOptions { break_time, policy }).unwrap();
    (fs, media)
}

/// `path` with `bytes` of `fill`, opened read-write by `cred`.
pub fn file(fs: &Arc<Fs>, cred: Cred, path: &str, bytes: u64, fill: u8) -> Handle {
    let h = fs.open(cred, path, OpenFlags::CREATE, 0o644).unwrap();
    if bytes > 0 {
        h.pwrite(0, &vec![fill; bytes as usize]).unwrap();
    }
    h
}

pub fn map_direct(h: &Handle, len: u64) -> Mapping {
    h.mmap(0, len, MapFlags::DIRECT).unwrap()
}

pub fn map_shared(h: &Handle, len: u64) -> Mapping {
    h.mmap(0, len, MapFlags::SHARED).unwrap()
}

struct Region {
    mode: RevokeMode,
    table: Vec<Option<u64>>,
    revoked: bool,
    source: Option<Arc<dyn PageSource>>,
    /// Bumped by every invalidation: a fault answered across one is retried.
    seq: u64,
}

/// The minimal test device (see the module doc).
#[derive(Debug)]
pub struct Toy {
    pool: Arc<dyn Media>,
    caps: DeviceCaps,
    regions: Mutex<HashMap<u64, Arc<RwLock<Region>>>>,
    next: AtomicU64,
    scratch: Mutex<Vec<u8>>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region").finish_non_exhaustive()
    }
}

impl Toy {
    pub fn new(pool: Arc<dyn Media>, caps: DeviceCaps) -> Arc<Toy> {
        Arc::new(Toy {
            pool,
            caps,
            regions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            scratch: Mutex::new(vec![0; PAGE_BYTES as usize]),
        })
    }

    fn region(&self, mr: MrId) -> Option<Arc<RwLock<Region>>> {
        self.regions.lock().get(&mr.0).cloned()
    }

    fn access(
        &self,
        mr: MrId,
        offset: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(Option<u64>, usize, usize) -> Result<()>,
    ) -> Result<Completion> {
        let Some(r) = self.region(mr) else {
            return Ok(Completion::InvalidRegion);
        };
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let page = at / PAGE_BYTES;
            let n = ((PAGE_BYTES - at % PAGE_BYTES) as usize).min(len - done);
            let g = r.read();
            if page as usize >= g.table.len() {
                return Ok(Completion::ProtectionError);
            }
            if g.revoked && g.mode == RevokeMode::Redirect {
                f(None, done, n)?;
                done += n;
                continue;
            }
            if g.revoked {
                return Ok(Completion::ProtectionError);
            }
            match g.table[page as usize] {
                Some(pool) => {
                    f(Some(pool + at % PAGE_BYTES), done, n)?;
                    done += n;
                }
                None => {
                    let Some(source) = g.source.clone() else {
                        return Ok(Completion::ProtectionError);
                    };
                    let seq = g.seq;
                    drop(g);
                    let Ok(pool) = source.fault(page, write) else {
                        return Ok(Completion::PageFault);
                    };
                    let mut g = r.write();
                    if g.seq == seq && !g.revoked {
                        g.table[page as usize] = Some(pool);
                    }
                }
            }
        }
        Ok(Completion::Ok)
    }
}

impl Device for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn caps(&self) -> DeviceCaps {
        self.caps
    }
    fn register(&self, backing: Backing, mode: RevokeMode) -> Result<MrKeys> {
        if !self.caps.supports(mode) {
            return Err(pinfs::Errno::EOPNOTSUPP.into());
        }
        let (table, source) = match backing {
            Backing::Pinned(p) => (p.into_iter().map(Some).collect(), None),
            Backing::OnDemand { pages, source } => (vec![None; pages as usize], Some(source)),
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.regions.lock().insert(
            id,
            Arc::new(RwLock::new(Region {
                mode,
                table,
                revoked: false,
                source,
                seq: 0,
            })),
        );
        Ok(MrKeys {
            mr: MrId(id),
            iova: id << 32,
            lkey: id as u32,
            rkey: id as u32 | 0x8000_0000,
        })
    }
    fn revoke(&self, mr: MrId) -> Result<()> {
        if let Some(r) = self.region(mr) {
            let mut g = r.write();
            g.revoked = true;
            g.seq += 1;
            g.table.iter_mut().for_each(|t| *t = None);
        }
        Ok(())
    }
    fn is_revoked(&self, mr: MrId) -> bool {
        self.region(mr).is_some_and(|r| r.read().revoked)
    }
    fn invalidate_pages(&self, mr: MrId, first: u64, count: u64) -> Result<()> {
        if let Some(r) = self.region(mr) {
            let mut g = r.write();
            if g.source.is_some() {
                g.seq += 1;
                let end = (first + count).min(g.table.len() as u64);
                for p in first..end {
                    g.table[p as usize] = None;
                }
            }
        }
        Ok(())
    }
    fn deregister(&self, mr: MrId) -> Result<()> {
        if let Some(r) = self.regions.lock().remove(&mr.0) {
            drop(r.write());
        }
        Ok(())
    }
    fn write(&self, mr: MrId, offset: u64, data: &[u8]) -> Result<Completion> {
        let pool = self.pool.clone();
        self.access(mr, offset, data.len(), true, |at, from, n| match at {
            Some(at) => pool.write(at, &data[from..from + n]),
            None => {
                self.scratch.lock()[..n].copy_from_slice(&data[from..from + n]);
                Ok(())
            }
        })
    }
    fn read(&self, mr: MrId, offset: u64, buf: &mut [u8]) -> Result<Completion> {
        let pool = self.pool.clone();
        let len = buf.len();
        self.access(mr, offset, len, false, |at, from, n| match at {
            Some(at) => pool.read(at, &mut buf[from..from + n]),
            None => {
                buf[from..from + n].copy_from_slice(&self.scratch.lock()[..n]);
                Ok(())
            }
        })
    }
}

/// The shipped software RDMA device over `pool`.
pub fn soft(pool: &Arc<dyn Media>) -> Arc<dyn Device> {
    Arc::new(pinfs::dma::soft::SoftDevice::new(pool.clone()).unwrap())
}

/// The io_uring device over `pool` (real kernel pins and DMA).
pub fn uring(pool: &Arc<dyn Media>) -> Arc<dyn Device> {
    Arc::new(pinfs::dma::uring::UringDevice::new(pool.clone()).unwrap())
}

pub fn toy(pool: &Arc<dyn Media>) -> Arc<dyn Device> {
    Toy::new(
        pool.clone(),
        DeviceCaps {
            invalidate: true,
            redirect: true,
            odp: true,
        },
    )
}
