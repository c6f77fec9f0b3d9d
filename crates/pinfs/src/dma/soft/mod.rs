//! The `soft` device (SPEC §6.5): a software RDMA NIC with the shape of a
//! verbs device, reaching pool memory from its own worker threads.
//!
//! - **Protection domain** ([`SoftDevice`] itself): its memory regions, each
//!   with an lkey and an rkey (a keyed permutation of a counter: not
//!   guessable, never 0, never handed out twice) and a fresh page-aligned
//!   IOVA range followed by a guard gap ([`iova`]). A range is reserved from
//!   registration to *deregistration*, not revocation (SPEC §6.3).
//! - **Translation table** per region, page granular ([`region`]): pool page
//!   | scratch page | none (invalidated) | not yet faulted (ODP); filled once
//!   at registration for [`Backing::Pinned`].
//! - **Queues** ([`queue`]): a [`QueuePair`] posts [`WorkRequest`]s naming
//!   (key, IOVA, length) to the device's send queue (at most [`SQ_DEPTH`]
//!   waiting, `EAGAIN` beyond) and polls or waits for [`WorkCompletion`]s in
//!   its completion queue. [`WORKERS`] threads `pinfs-soft-N` take requests
//!   and complete them asynchronously. The trait's [`Device::write`] and
//!   [`Device::read`] translate (region, offset) to (lkey, IOVA), post and
//!   wait; they lend the caller's buffer to the worker instead of copying it
//!   (the copy to the pool is the only copy, as a NIC's DMA is), and spread
//!   transfers of [`blocking::SPLIT_MIN_BYTES`] or more over the workers.
//! - **Limits**: [`MAX_REGIONS`] regions, [`MAX_REGISTRATION_PAGES`] pages
//!   per region, [`SQ_DEPTH`] queued requests, [`CQ_DEPTH`] outstanding per
//!   queue pair, [`MAX_WR_BYTES`] per request, [`WORKERS`] workers.
//! - **Revocation, confirmed**: workers hold a region's table lock (read
//!   side) for each page copy and re-read the translation each time;
//!   `revoke`, `invalidate_pages` and `deregister` take the write side. So
//!   when they return, no copy in flight or later reaches a withdrawn pool
//!   page. `Redirect` re-points every page of the region at *one* scratch
//!   page per region (device memory that belongs to no file: later writes
//!   land there and complete `Ok`; reads return whatever it holds).
//! - **On-demand paging**: see [`region`] for the fault protocol and the
//!   argument that `invalidate_pages` cannot deadlock against the file
//!   system.
//!
//! `deregister` confirms like `revoke` (it waits for copies in progress,
//! after which no access reaches the region's pages) and then frees the
//! IOVA range and keys at once: it does not wait for whole requests in
//! flight, because a request may be inside [`PageSource::fault`](crate::dma::PageSource::fault), i.e.
//! waiting on the file system, which may be the caller of `deregister`.
//! Such a request holds the region alive and completes with
//! `ProtectionError` without touching memory. (So the page source may see
//! one `fault` call that started before `deregister` or `revoke` returned
//! finish after it; its answer is never installed.)

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::dma::{
    Backing, Completion, Device, DeviceCaps, MrId, MrKeys, RevokeMode, MAX_REGISTRATION_PAGES,
};
use crate::media::Media;
use crate::{Errno, Error, Result};

pub mod blocking;
pub mod iova;
mod mem;
pub mod queue;
pub mod region;
#[cfg(test)]
mod tests;

use mem::PoolWindow;
use queue::{CompletionQueue, Op, Payload, Posted, Sink};
pub use queue::{WorkCompletion, WorkRequest, CQ_DEPTH};
use region::{Access, Region};

/// Worker threads per device (the build machines have two cores; a NIC
/// has a few engines, not one per request).
pub const WORKERS: usize = 2;
/// Requests waiting in the send queue at most.
pub const SQ_DEPTH: usize = 512;
/// Memory regions per device at most.
pub const MAX_REGIONS: usize = 4096;
/// Longest single work request (a verbs device's maximum message size);
/// [`Device::write`]/[`Device::read`] split longer transfers.
pub const MAX_WR_BYTES: u64 = 16 << 20;

/// A software RDMA device over one pool.
pub struct SoftDevice {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// What the device and its workers share.
struct Shared {
    pool: PoolWindow,
    pd: RwLock<Pd>,
    sq: Mutex<SendQueue>,
    /// Signalled when a request is queued (workers wait on it).
    work: Condvar,
    /// Signalled when a request leaves the queue (blocking posters wait).
    space: Condvar,
    /// Negative control: revocation not confirmed (see
    /// [`SoftDevice::unconfirmed_revoke_for_tests`]).
    #[cfg(feature = "negative-controls")]
    unconfirmed_revoke: std::sync::atomic::AtomicBool,
}

/// The protection domain: regions by id and by key, addresses, keys.
struct Pd {
    regions: HashMap<MrId, Arc<Region>>,
    by_key: HashMap<u32, Arc<Region>>,
    iova: iova::IovaSpace,
    keygen: iova::KeyGen,
    next_mr: u64,
}

struct SendQueue {
    requests: VecDeque<Posted>,
    stopping: bool,
}

impl fmt::Debug for SoftDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pd = self.shared.pd.read();
        f.debug_struct("SoftDevice")
            .field("regions", &pd.regions.len())
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl SoftDevice {
    /// A device over `pool`, which must be mapped into this process (the
    /// device copies into pool memory itself); starts its workers.
    pub fn new(pool: Arc<dyn Media>) -> Result<SoftDevice> {
        let shared = Arc::new(Shared {
            pool: PoolWindow::new(pool)?,
            pd: RwLock::new(Pd {
                regions: HashMap::new(),
                by_key: HashMap::new(),
                iova: iova::IovaSpace::new(),
                keygen: iova::KeyGen::new(),
                next_mr: 1,
            }),
            sq: Mutex::new(SendQueue {
                requests: VecDeque::new(),
                stopping: false,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            #[cfg(feature = "negative-controls")]
            unconfirmed_revoke: std::sync::atomic::AtomicBool::new(false),
        });
        let mut device = SoftDevice {
            shared,
            workers: Vec::with_capacity(WORKERS),
        };
        for n in 0..WORKERS {
            let shared = Arc::clone(&device.shared);
            let handle = std::thread::Builder::new()
                .name(format!("pinfs-soft-{n}"))
                .spawn(move || shared.serve())
                .map_err(|e| Error::media("start a soft-device worker", e))?;
            // On an error above, `device` drops and stops the workers
            // already started.
            device.workers.push(handle);
        }
        Ok(device)
    }

    /// A queue pair: posts to the device's send queue, completes into its
    /// own completion queue.
    pub fn queue_pair(&self) -> QueuePair {
        QueuePair {
            shared: Arc::clone(&self.shared),
            cq: Arc::new(CompletionQueue::default()),
        }
    }

    /// The addresses and keys of a registered region.
    pub fn keys(&self, mr: MrId) -> Option<MrKeys> {
        self.shared.pd.read().regions.get(&mr).map(|r| r.keys)
    }

    /// Test-only negative control: revocation is no longer confirmed —
    /// requests read their translations once when they start and copy
    /// without holding the region's lock, so `revoke` waits for nothing and
    /// requests in flight keep writing the pages it withdrew.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn unconfirmed_revoke_for_tests(&self) {
        self.shared
            .unconfirmed_revoke
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn region(&self, mr: MrId) -> Option<Arc<Region>> {
        self.shared.pd.read().regions.get(&mr).cloned()
    }

    /// Whether `mr` was ever handed out by this device.
    fn issued(&self, mr: MrId) -> bool {
        mr.0 >= 1 && mr.0 < self.shared.pd.read().next_mr
    }
}

impl Shared {
    /// Queue a request; with `block`, wait for room instead of `EAGAIN`.
    /// A request not accepted gives its completion-queue slot back.
    fn push(&self, posted: Posted, block: bool) -> Result<()> {
        let mut sq = self.sq.lock();
        loop {
            if sq.stopping {
                drop(sq);
                Self::refuse(posted);
                return Err(Errno::ENODEV.into());
            }
            if sq.requests.len() < SQ_DEPTH {
                break;
            }
            if !block {
                drop(sq);
                Self::refuse(posted);
                return Err(Errno::EAGAIN.into());
            }
            self.space.wait(&mut sq);
        }
        sq.requests.push_back(posted);
        drop(sq);
        self.work.notify_one();
        Ok(())
    }

    /// Drop a request that was never accepted: no completion, slot back.
    fn refuse(posted: Posted) {
        let cq = posted.forget();
        cq.unreserve();
    }

    /// A worker: serve requests until the device stops and the queue is
    /// empty (every accepted request is completed).
    fn serve(&self) {
        loop {
            let posted = {
                let mut sq = self.sq.lock();
                loop {
                    if let Some(p) = sq.requests.pop_front() {
                        break p;
                    }
                    if sq.stopping {
                        return;
                    }
                    self.work.wait(&mut sq);
                }
            };
            self.space.notify_one();
            self.execute(posted);
        }
    }

    /// Resolve a request's key and perform it.
    fn execute(&self, mut posted: Posted) {
        let region = self.pd.read().by_key.get(&posted.key).cloned();
        let status = match region {
            None => Completion::ProtectionError,
            Some(region) => match posted.iova.checked_sub(region.keys.iova) {
                None => Completion::ProtectionError,
                Some(start) => {
                    let access = match &mut posted.op {
                        Op::Write(p) => Access::Write(p.as_slice()),
                        Op::Read(s) => {
                            s.materialize();
                            Access::Read(s.as_mut_slice())
                        }
                    };
                    self.access(&region, start, access)
                }
            },
        };
        posted.complete(status);
    }

    fn access(&self, region: &Region, start: u64, access: Access<'_>) -> Completion {
        #[cfg(feature = "negative-controls")]
        if self
            .unconfirmed_revoke
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return region.access_cached(&self.pool, start, access);
        }
        region.access(&self.pool, start, access)
    }
}

impl Drop for SoftDevice {
    fn drop(&mut self) {
        self.shared.sq.lock().stopping = true;
        self.shared.work.notify_all();
        self.shared.space.notify_all();
        let me = std::thread::current().id();
        for w in self.workers.drain(..) {
            // The last reference may be dropped by a worker itself (a page
            // source that holds the device): it must not join itself.
            if w.thread().id() == me {
                continue;
            }
            if w.join().is_err() {
                tracing::warn!("a soft-device worker panicked");
            }
        }
    }
}

/// A queue pair: posts work requests to the device and polls their
/// completions (its own completion queue, at most [`CQ_DEPTH`] outstanding).
pub struct QueuePair {
    shared: Arc<Shared>,
    cq: Arc<CompletionQueue>,
}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("outstanding", &self.cq.outstanding())
            .finish()
    }
}

impl QueuePair {
    /// Post a request; it completes asynchronously into this pair's queue.
    /// `EAGAIN` when the send queue or the completion queue is full,
    /// `EINVAL` for a request longer than [`MAX_WR_BYTES`], `ENODEV` once
    /// the device is gone. Bad keys and addresses are not refused here: as
    /// on a NIC, they complete with [`Completion::ProtectionError`].
    pub fn post_send(&self, wr: WorkRequest) -> Result<()> {
        let posted_len = match &wr {
            WorkRequest::Write { data, .. } => data.len() as u64,
            WorkRequest::Read { len, .. } => *len,
        };
        if posted_len > MAX_WR_BYTES {
            return Err(Errno::EINVAL.into());
        }
        if !self.cq.reserve() {
            return Err(Errno::EAGAIN.into());
        }
        let cq = Arc::clone(&self.cq);
        let posted = match wr {
            WorkRequest::Write {
                wr_id,
                key,
                iova,
                data,
            } => Posted::new(wr_id, key, iova, Op::Write(Payload::Shared(data)), cq),
            WorkRequest::Read {
                wr_id,
                key,
                iova,
                len,
            } => Posted::new(wr_id, key, iova, Op::Read(Sink::Deferred(len as usize)), cq),
        };
        self.shared.push(posted, false)
    }

    /// Up to `max` completions delivered so far (does not block).
    pub fn poll_cq(&self, max: usize) -> Vec<WorkCompletion> {
        self.cq.take(max, false)
    }

    /// Up to `max` completions, blocking until there is at least one;
    /// empty at once when nothing is outstanding.
    pub fn wait_cq(&self, max: usize) -> Vec<WorkCompletion> {
        self.cq.take(max, true)
    }

    /// Requests posted whose completion has not been polled yet.
    pub fn outstanding(&self) -> usize {
        self.cq.outstanding()
    }
}

impl Device for SoftDevice {
    fn name(&self) -> &'static str {
        "soft"
    }

    fn caps(&self) -> DeviceCaps {
        DeviceCaps {
            invalidate: true,
            redirect: true,
            odp: true,
        }
    }

    fn register(&self, backing: Backing, mode: RevokeMode) -> Result<MrKeys> {
        let pages = match &backing {
            Backing::Pinned(p) => p.len() as u64,
            Backing::OnDemand { pages, .. } => *pages,
        };
        let mode_fits = matches!(
            (&backing, mode),
            (
                Backing::Pinned(_),
                RevokeMode::Invalidate | RevokeMode::Redirect
            ) | (Backing::OnDemand { .. }, RevokeMode::Odp)
        );
        if !mode_fits || pages == 0 || pages > MAX_REGISTRATION_PAGES {
            return Err(Errno::EINVAL.into());
        }
        if let Backing::Pinned(p) = &backing {
            let pool_len = self.shared.pool.len_bytes();
            if !p.iter().all(|&o| region::valid_pool_page(o, pool_len)) {
                return Err(Errno::EINVAL.into());
            }
        }
        let mut guard = self.shared.pd.write();
        let pd = &mut *guard;
        if pd.regions.len() >= MAX_REGIONS {
            return Err(Errno::ENOMEM.into());
        }
        let iova = pd.iova.reserve(pages).ok_or(Errno::ENOMEM)?;
        let mr = MrId(pd.next_mr);
        let (Some(lkey), Some(rkey)) = (pd.keygen.next(), pd.keygen.next()) else {
            pd.iova.release(iova);
            return Err(Errno::ENOMEM.into());
        };
        let keys = MrKeys {
            mr,
            iova,
            lkey,
            rkey,
        };
        let region = match backing {
            Backing::Pinned(p) => Region::pinned(keys, mode, &p),
            Backing::OnDemand { pages, source } => Ok(Region::on_demand(keys, pages, source)),
        };
        let region = match region {
            Ok(r) => Arc::new(r),
            Err(e) => {
                pd.iova.release(iova);
                return Err(e);
            }
        };
        pd.next_mr += 1;
        pd.regions.insert(mr, Arc::clone(&region));
        pd.by_key.insert(lkey, Arc::clone(&region));
        pd.by_key.insert(rkey, region);
        Ok(keys)
    }

    fn revoke(&self, mr: MrId) -> Result<()> {
        match self.region(mr) {
            Some(r) => {
                r.revoke();
                Ok(())
            }
            None if self.issued(mr) => Ok(()),
            None => Err(Errno::EINVAL.into()),
        }
    }

    fn is_revoked(&self, mr: MrId) -> bool {
        self.region(mr).is_some_and(|r| r.is_revoked())
    }

    fn invalidate_pages(&self, mr: MrId, first: u64, count: u64) -> Result<()> {
        match self.region(mr) {
            Some(r) => r.invalidate_pages(first, count),
            None if self.issued(mr) => Ok(()),
            None => Err(Errno::EINVAL.into()),
        }
    }

    fn deregister(&self, mr: MrId) -> Result<()> {
        let region = {
            let mut pd = self.shared.pd.write();
            let Some(region) = pd.regions.remove(&mr) else {
                return if mr.0 >= 1 && mr.0 < pd.next_mr {
                    Ok(())
                } else {
                    Err(Errno::EINVAL.into())
                };
            };
            for key in [region.keys.lkey, region.keys.rkey] {
                pd.by_key.remove(&key);
            }
            region
        };
        // No new request finds the region now; wait for the copies in
        // progress (outside the domain lock: workers look keys up under it).
        region.kill();
        self.shared.pd.write().iova.release(region.keys.iova);
        Ok(())
    }

    fn write(&self, mr: MrId, offset: u64, data: &[u8]) -> Result<Completion> {
        match self.keys(mr) {
            Some(keys) => blocking::transfer(&self.shared, keys, offset, Access::Write(data)),
            None => Ok(Completion::InvalidRegion),
        }
    }

    fn read(&self, mr: MrId, offset: u64, buf: &mut [u8]) -> Result<Completion> {
        match self.keys(mr) {
            Some(keys) => blocking::transfer(&self.shared, keys, offset, Access::Read(buf)),
            None => Ok(Completion::InvalidRegion),
        }
    }
}
