//! The fault side of mappings: starting and losing the fault service,
//! answering its faults (read faults from the layout, write faults by
//! allocating, converting or unsharing the block — an ordinary write — or,
//! into a wholly free 2 MiB window or `FAULT_AROUND_BYTES` chunk, the whole
//! window or chunk in one commit), and the pages that must raise `SIGBUS`
//! instead.

use super::*;

impl Fs {
    /// The fault service's userfaultfd, starting the service on first use.
    /// `EIO` once the service is lost: no fault could be answered.
    pub(super) fn fault_service(self: &Arc<Self>) -> Result<Arc<Uffd>> {
        let mut svc = self.faults.lock();
        if let Some(s) = &*svc {
            if s.is_lost() {
                return Err(Error::media(
                    "the fault service of this file system failed",
                    std::io::Error::from_raw_os_error(libc::EIO),
                ));
            }
            return Ok(s.uffd().clone());
        }
        let weak = Arc::downgrade(self);
        let handle: FaultHandler = Arc::new(move |uffd, fault| match weak.upgrade() {
            Some(fs) => fs.serve_fault(uffd, fault),
            None => uffd.wake(page_of(fault.address), PAGE_BYTES),
        });
        let weak = Arc::downgrade(self);
        let key: FaultKey = Arc::new(move |addr| {
            let fs = weak.upgrade()?;
            let m = fs.state.read().maps.find(page_of(addr))?;
            Some(m.id)
        });
        let weak = Arc::downgrade(self);
        let on_lost: OnLost = Arc::new(move |uffd| {
            if let Some(fs) = weak.upgrade() {
                fs.fault_service_lost(uffd);
            }
        });
        let started = FaultService::start(handle, key, on_lost)?;
        let uffd = started.uffd().clone();
        *svc = Some(started);
        Ok(uffd)
    }

    /// The fault service stopped answering: every page it would serve is
    /// re-placed as `SIGBUS`, and every thread waiting on a fault of a
    /// mapping woken — to retry, and die of `SIGBUS` rather than hang.
    fn fault_service_lost(&self, uffd: &Uffd) {
        let mut st = self.state.write();
        st.maps.service_lost = true;
        for m in st.maps.all() {
            // A client's mapping is served by the client's own service.
            let Some(local) = m.local().filter(|_| m.served()) else {
                continue;
            };
            place_range(&st, &*self.media, &m, 0, m.pages());
            uffd.wake(local.region.base(), local.region.len());
        }
    }

    /// Test switch: the fault service answers write faults on its one
    /// thread, as before the worker pool (a negative control: one write
    /// fault blocked in a lease break stalls every mapping's faults).
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn single_threaded_fault_service_for_tests(self: &Arc<Self>) -> Result<()> {
        self.fault_service()?;
        if let Some(s) = &*self.faults.lock() {
            s.set_inline_writes(true);
        }
        Ok(())
    }

    /// Test switch: at most `cap` fault workers (`None`: one per mapping
    /// with a fault in progress, the design). A negative control: with the
    /// old fixed pool of eight, eight mappings blocked in lease breaks stall
    /// every other mapping's write faults.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn cap_fault_workers_for_tests(self: &Arc<Self>, cap: Option<usize>) -> Result<()> {
        self.fault_service()?;
        if let Some(s) = &*self.faults.lock() {
            s.set_worker_cap(cap);
        }
        Ok(())
    }

    /// Test switch: the fault service dispatches write faults by the old
    /// rule, counting on an idle worker even when it was already woken for
    /// an earlier fault (a negative control: of two faults dispatched back
    /// to back, the second waits behind the first).
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn uncounted_fault_wakeups_for_tests(self: &Arc<Self>) -> Result<()> {
        self.fault_service()?;
        if let Some(s) = &*self.faults.lock() {
            s.set_uncounted_wakeups(true);
        }
        Ok(())
    }

    /// Test switch: the fault service stops reading faults while `paused`
    /// (they queue in the kernel), so that a test can have several faults
    /// dispatched back to back.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn pause_fault_service_for_tests(self: &Arc<Self>, paused: bool) -> Result<()> {
        self.fault_service()?;
        if let Some(s) = &*self.faults.lock() {
            s.pause(paused);
        }
        Ok(())
    }

    /// Test fault injection: the fault service fails as on a read error of
    /// its userfaultfd.
    #[cfg(feature = "negative-controls")]
    #[doc(hidden)]
    pub fn fail_fault_service_for_tests(self: &Arc<Self>) -> Result<()> {
        self.fault_service()?;
        if let Some(s) = &*self.faults.lock() {
            s.fail();
        }
        Ok(())
    }

    /// The empty memfd of the `SIGBUS` mapping, created on first use and
    /// sealed so that it can never grow.
    pub(super) fn sigbus_fd(&self) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.state.read().maps.sigbus.clone() {
            return Ok(fd);
        }
        let fd = sigbus_memfd()?;
        let mut st = self.state.write();
        Ok(st.maps.sigbus.get_or_insert_with(|| Arc::new(fd)).clone())
    }

    /// Answer one fault (reads on the fault service thread, writes on a
    /// fault worker).
    fn serve_fault(&self, uffd: &Uffd, fault: Fault) {
        let addr = page_of(fault.address);
        let found = self.state.read().maps.find(addr);
        let Some((m, local)) = found.and_then(|m| {
            let local = m.local()?;
            let base = local.region.base();
            Some((m.clone(), base))
        }) else {
            uffd.wake(addr, PAGE_BYTES);
            return;
        };
        let page = (addr - local) as u64 / PAGE_BYTES;
        if m.local().is_some_and(|l| l.refault(fault.ptid, page)) {
            // The page keeps faulting while nothing changes: what the kernel
            // sees and what the placement says disagree, and no answer here
            // would end it. The kernel's own answer to such a fault.
            tracing::error!(target: "pinfs::map", map = m.id, page, ptid = fault.ptid, "a fault made no progress {MAX_FAULTS_WITHOUT_PROGRESS} times: SIGBUS to its thread");
            sigbus_thread(&fault);
            uffd.wake(addr, PAGE_BYTES);
            return;
        }
        if m.placed.lock().broken {
            // Its placements cannot be trusted any more (SPEC §4.4).
            self.sigbus_page_or_thread(&m, page, &fault);
            uffd.wake(addr, PAGE_BYTES);
            return;
        }
        if !fault.write {
            // Under the state lock, so that the copy matches the layout the
            // page's placement was computed from.
            let st = self.state.read();
            let placed = m.placed.lock();
            match placed.runs.kind_at(page) {
                Some(Kind::Served { copy_of }) => {
                    let mut buf = vec![0u8; PAGE_BYTES as usize];
                    let read = match copy_of {
                        Some(b) => self.media.read(block_offset(b), &mut buf),
                        None => Ok(()),
                    };
                    match read.and_then(|()| uffd.copy_wp(addr, &buf)) {
                        Ok(()) => m.changed(),
                        Err(e) => {
                            tracing::error!(target: "pinfs::map", map = m.id, page, error = %e, "serving a read fault failed");
                            drop(placed);
                            drop(st);
                            self.sigbus_page_or_thread(&m, page, &fault);
                            uffd.wake(addr, PAGE_BYTES);
                        }
                    }
                }
                _ => uffd.wake(addr, PAGE_BYTES),
            }
            return;
        }
        if let Err(e) = self.write_fault(&m, page) {
            // As Linux answers ENOSPC or EIO in a write fault; and a
            // MAP_DIRECT store that would allocate or convert (SPEC §5.2).
            if m.flags.direct {
                tracing::debug!(target: "pinfs::map", map = m.id, ino = m.ino, page, "MAP_DIRECT store would allocate or convert: SIGBUS");
            } else {
                tracing::warn!(target: "pinfs::map", map = m.id, ino = m.ino, page, error = %e, "write fault failed: SIGBUS");
            }
            self.sigbus_page_or_thread(&m, page, &fault);
        }
        uffd.wake(addr, PAGE_BYTES);
    }

    /// Make the block behind page `page` of `m` written and private
    /// (allocate a zeroed block into a hole, zero and convert an unwritten
    /// one, copy a shared one), durably, and re-place the page. A store
    /// into a wholly unallocated 2 MiB window of the file allocates the
    /// whole window at once, as a 2 MiB page fault of a DAX file system
    /// does (see [`free_chunk`]): one commit instead of 512, and the
    /// window can then be mapped with one 2 MiB page. Otherwise a store
    /// into a wholly unallocated [`FAULT_AROUND_BYTES`] chunk allocates
    /// the whole chunk (fault-around): one fault and one commit for the
    /// next stores of a sequential writer too.
    pub(super) fn write_fault(&self, m: &MapInner, page: u64) -> Result<()> {
        if !m.served() || m.flags.direct {
            // MAP_DIRECT faults never allocate, convert or unshare.
            return Err(Errno::EFAULT.into());
        }
        let first = m.file_offset / BLOCK_SIZE;
        let fb = first + page;
        let huge = self.media.caps().huge_pages;
        // The blocks the layout-change guard covers, once taken.
        let mut guarded: Option<(u64, u64)> = None;
        let mut guard = None;
        for _ in 0..8 {
            let mut st = self.state.write();
            let need = block_need(&st, m.ino, fb)?;
            let window = huge
                .then(|| free_chunk(&st, m, fb, HUGE_BLOCKS))
                .flatten()
                .or_else(|| free_chunk(&st, m, fb, FAULT_AROUND_BLOCKS));
            if need == Need::Layout && guard.is_none() {
                drop(st);
                let (b0, b1) = window.unwrap_or((fb, fb + 1));
                let range = ByteRange::new(b0 * BLOCK_SIZE, b1 * BLOCK_SIZE);
                guard = Some(self.layout_change(self.node_of(m.ino)?, range, m.owner, false)?);
                guarded = Some((b0, b1));
                continue;
            }
            // The window only if the guard covers it and it is still wholly
            // unallocated; otherwise the one block (inside any guard).
            let (mut b0, mut b1) = match window {
                Some(w) if guarded == Some(w) => w,
                _ => (fb, fb + 1),
            };
            if need != Need::Nothing {
                match self.commit_fault(&mut st, m.ino, b0, b1) {
                    // Not enough free space for the window or chunk: the
                    // store still gets its one block, as without them.
                    Err(e) if e.errno() == Errno::ENOSPC && b1 - b0 > 1 => {
                        (b0, b1) = (fb, fb + 1);
                        self.commit_fault(&mut st, m.ino, b0, b1)?;
                    }
                    r => r?,
                }
            }
            // The commit re-placed the pages in every mapping of the file;
            // a fault that found the block ready only needs this one.
            place_range(&st, &*self.media, m, b0 - first, b1 - first);
            return Ok(());
        }
        Err(Errno::EAGAIN.into())
    }

    /// Make file blocks `b0..b1` of `ino` written and private (zeroed where
    /// they were holes or unwritten), and commit: one transaction, so the
    /// whole range is durable at once or not at all. Rolled back on error.
    fn commit_fault(&self, st: &mut FsState, ino: u64, b0: u64, b1: u64) -> Result<()> {
        let mut op = Op::new(st, &*self.media);
        write_range(
            &mut op,
            ino,
            b0 * BLOCK_SIZE,
            (b1 - b0) * BLOCK_SIZE,
            Source::Keep,
        )?;
        let now = now_ns();
        let i = op.inode_mut(ino)?;
        i.mtime_ns = now;
        i.ctime_ns = now;
        op.commit()
    }

    /// Make page `page` of `m` raise `SIGBUS` for the thread of `fault`: by
    /// placing the `SIGBUS` mapping there, or — when even that fails and
    /// the page still shows what it faulted on, so that waking the thread
    /// would only make it fault again, for ever — by sending the thread
    /// `SIGBUS` itself.
    fn sigbus_page_or_thread(&self, m: &MapInner, page: u64, fault: &Fault) {
        self.sigbus_page(m, page);
        let shown = m.placed.lock().runs.kind_at(page);
        if !matches!(shown, Some(Kind::Sigbus | Kind::Nothing)) {
            tracing::error!(target: "pinfs::map", map = m.id, page, ptid = fault.ptid, "a page that cannot be served cannot be made SIGBUS either: SIGBUS to the faulting thread");
            sigbus_thread(fault);
        }
    }

    /// Make one page of `m` raise `SIGBUS` (a fault that could not be
    /// answered); the next re-placement of the page recomputes it.
    pub(super) fn sigbus_page(&self, m: &MapInner, page: u64) {
        let st = self.state.read();
        let ctx = place_ctx(&st, &*self.media);
        let mut placed = m.placed.lock();
        m.show(&mut placed, &[(page, 1, Kind::Sigbus)], ctx.as_ref());
    }
}

/// What a write fault needs done to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Already written and private (or past EOF: the page raises SIGBUS).
    Nothing,
    /// Unwritten: zero and convert, not a layout change (SPEC §2).
    Convert,
    /// A hole or a shared block: allocate or unshare, a layout change.
    Layout,
}

/// The `blocks`-aligned chunk of file blocks around `fb` (a 2 MiB window,
/// or a fault-around chunk) that a write fault through `m` may allocate
/// whole: it lies wholly inside the mapping and below end of file, and none
/// of its blocks is allocated.
fn free_chunk(st: &FsState, m: &MapInner, fb: u64, blocks: u64) -> Option<(u64, u64)> {
    let first = m.file_offset / BLOCK_SIZE;
    let pages = m.pages();
    let w0 = fb - fb % blocks;
    let w1 = w0 + blocks;
    let inode = st.inode(m.ino).ok()?;
    let inside = w0 >= first && w1 <= first + pages && w1 * BLOCK_SIZE <= inode.size;
    if !inside {
        return None;
    }
    let hole = matches!(
        inode.extents.segments(w0, w1).as_slice(),
        [Segment::Hole { len, .. }] if *len == blocks
    );
    hole.then_some((w0, w1))
}

fn block_need(st: &FsState, ino: u64, fb: u64) -> Result<Need> {
    let inode = st.inode(ino)?;
    if fb * BLOCK_SIZE >= inode.size {
        return Ok(Need::Nothing);
    }
    Ok(match inode.extents.lookup(fb) {
        None => Need::Layout,
        Some((l, e)) if st.refcount(e.physical + fb - l) > 1 => Need::Layout,
        Some((_, e)) if e.unwritten => Need::Convert,
        Some(_) => Need::Nothing,
    })
}

pub(super) fn page_of(addr: u64) -> usize {
    (addr & !(PAGE_BYTES - 1)) as usize
}
