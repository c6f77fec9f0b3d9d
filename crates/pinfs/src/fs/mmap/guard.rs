//! What a [`Mapping`] guard does (SPEC §5.2, §5.3, §4.2): `persist`, long-
//! term pins through the mapping, `read`/`write` that report `SIGBUS` as
//! `EFAULT`, and the unmap at drop — for a mapping in this process and, as
//! `RemoteMapping` delegates to it, for one in a client process.

use super::*;

impl Mapping {
    /// Make the stores to `[offset, offset+len)` (into the mapping) durable
    /// (SPEC §5.3): write back the CPU cache lines of the pool blocks behind
    /// the range and fence (`msync` on a regular-file pool). With
    /// `MAP_DIRECT` or `MAP_SYNC` the block map under the range is already
    /// durable, so no `fsync` is needed.
    pub fn persist(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.inner.len)
            .ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let media = &*self.fs.media;
        {
            let _st = self.fs.state.read();
            let placed = self.inner.placed.lock();
            for (s, n, kind) in placed
                .runs
                .pieces(offset / PAGE_BYTES, end.div_ceil(PAGE_BYTES))
            {
                if let Kind::Pool { block } = kind {
                    let from = offset.max(s * PAGE_BYTES);
                    let to = end.min((s + n) * PAGE_BYTES);
                    media.flush(block_offset(block) + (from - s * PAGE_BYTES), to - from)?;
                }
            }
        }
        media.fence();
        Ok(())
    }

    /// Take a long-term pin of `[offset, offset+len)` (into the mapping,
    /// block-aligned outward) through this mapping (SPEC §4.2). Entitled by
    /// either this mapping being `MAP_DIRECT` with its lease held and not
    /// being broken (Dan Williams' model), or the mapping's owner holding an
    /// unbreakable layout lease (`F_LAYOUT|F_EXCLUSIVE`) over the range —
    /// Ira Weiny's flow: plain `mmap(MAP_SHARED)`, take the lease, register.
    /// Either way the mapping must be shared and writable: a long-term pin is
    /// writable (the device stores into the blocks), and as the kernel's
    /// `FOLL_LONGTERM | FOLL_WRITE` needs a shared writable VMA to reach the
    /// file's pages, a `MAP_PRIVATE` mapping (whose stores never reach the
    /// file) or a read-only one does not entitle it. `EPERM` otherwise, and
    /// when the mapping is invalidated or the range passes its end. Like any
    /// pin, it first makes the range written and private, and it outlives
    /// the mapping.
    pub fn pin_long_term(
        &self,
        offset: u64,
        len: u64,
        revoke: Option<RevokeFn>,
    ) -> Result<crate::fs::Pin> {
        let m = &self.inner;
        let end = offset
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Errno::EINVAL)?;
        if !m.flags.writes_file() || self.is_invalidated() || end > m.len {
            return Err(Errno::EPERM.into());
        }
        let start = (m.file_offset + offset) / BLOCK_SIZE * BLOCK_SIZE;
        let end = (m.file_offset + end).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let direct_lease_held = m.flags.direct
            && (*m.lease.lock())
                .and_then(|id| self.fs.leases.lease(id))
                .is_some_and(|l| l.state == LeaseState::Active);
        let via = if direct_lease_held {
            PinVia::DirectMapping(m.id)
        } else if self
            .fs
            .holds_unbreakable_lease(m.ino, m.owner, start, end)?
        {
            PinVia::ExclusiveLease
        } else {
            return Err(Errno::EPERM.into());
        };
        self.fs
            .pin_range(m.ino, m.owner, start, end, via, revoke, false)
    }
}

impl Drop for Mapping {
    /// Unmap: nothing stays reachable, the file system forgets the mapping
    /// (an unlinked file nothing else keeps is freed), and the `MAP_DIRECT`
    /// lease is released — in that order, so that the layout change the
    /// lease held off cannot free a block this range still reaches.
    fn drop(&mut self) {
        let m = &self.inner;
        let torn_down = m.tear_down();
        {
            let mut st = self.fs.state.write();
            // Before the mapping leaves the table (and with it
            // `held_blocks`), a failed tear-down moves what its pages may
            // still reach to the zombies: nothing may free those blocks
            // between the two steps.
            let broken = {
                let placed = m.placed.lock();
                if placed.broken && !torn_down {
                    // The pages still reach the held blocks (tear-down
                    // recorded every pool run it still showed): they stay
                    // busy for the life of the file system, never reused.
                    tracing::error!(target: "pinfs::map", map = m.id, "a broken mapping could not be torn down: its blocks stay busy for good");
                    st.maps
                        .zombies
                        .extend(placed.held.iter().map(|&(start, len)| Run { start, len }));
                }
                placed.broken
            };
            st.maps.remove(m);
            refund_budget(&mut st.maps, m.id);
            if broken {
                st.maps.broken.fetch_sub(1, Ordering::AcqRel);
                if torn_down {
                    release_held(&mut st);
                }
            }
            if let Some(rt) = st.runtime.get(&m.ino).cloned() {
                rt.opens.fetch_sub(1, Ordering::Relaxed);
            }
            if !st.in_use(m.ino) && st.inodes.get(&m.ino).is_some_and(|i| i.nlink == 0) {
                let mut op = Op::new(&mut st, &*self.fs.media);
                let freed = match op.free_inode(m.ino) {
                    Ok(()) => op.commit(),
                    Err(e) => Err(e),
                };
                if let Err(e) = freed {
                    tracing::error!(ino = m.ino, error = %e, "freeing an unlinked file at last unmap failed");
                }
            }
        }
        if let Some(id) = m.lease.lock().take() {
            let _ = self.fs.leases.release(id);
        }
    }
}

impl Mapping {
    /// Walk `[offset, offset+len)` run by run ([`walk_pages`]), under the
    /// state lock (shared) and the mapping's placement lock: the copy of
    /// each run is a short-term pin (SPEC §4.1) — no layout change can free
    /// a block while it is being copied. Served writes are faulted first,
    /// with the locks dropped.
    fn walk(
        &self,
        offset: u64,
        len: u64,
        write: bool,
        mut each: impl FnMut(&LocalPages, u64, u64, Step) -> Result<()>,
    ) -> Result<()> {
        self.check(offset, len)?;
        let m = &*self.inner;
        let local = m.local().ok_or(Errno::EFAULT)?;
        walk_pages(
            offset,
            len,
            write,
            |f| {
                let _st = self.fs.state.read();
                let placed = m.placed.lock();
                f(&placed.runs)
            },
            |at, n, step| each(local, at, n, step),
            |page| self.fs.write_fault(m, page),
        )
    }

    /// Copy `buf.len()` bytes at `offset` (into the mapping) out, as loads
    /// would; `EFAULT` where a load would raise `SIGBUS`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let media = &*self.fs.media;
        self.walk(offset, buf.len() as u64, false, |local, at, n, step| {
            let dst = &mut buf[(at - offset) as usize..(at - offset + n) as usize];
            match step {
                Step::Copy => local.region.read(at, dst),
                Step::Source(None) => {
                    dst.fill(0);
                    Ok(())
                }
                Step::Source(Some(block)) => {
                    // The run starts at `at`'s page, whose block is `block`.
                    media.read(block_offset(block) + at % PAGE_BYTES, dst)
                }
                Step::Fault => unreachable!("reads never fault"),
            }
        })
    }

    /// Store `data` at `offset` (into the mapping), as stores would
    /// (allocating holes, copying shared blocks); `EFAULT` where a store
    /// would raise `SIGBUS` (the bytes before that page are stored), or the
    /// error that would make a write fault raise `SIGBUS` (`ENOSPC`, ...).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.walk(
            offset,
            data.len() as u64,
            true,
            |local, at, n, step| match step {
                Step::Copy => local.region.write(
                    at,
                    &data[(at - offset) as usize..(at - offset + n) as usize],
                ),
                _ => unreachable!("writes copy or fault"),
            },
        )
    }
}
