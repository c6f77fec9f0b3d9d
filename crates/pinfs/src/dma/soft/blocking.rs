//! The blocking helper behind [`Device::write`](crate::dma::Device::write)
//! and [`Device::read`](crate::dma::Device::read): translate (region,
//! offset) to (lkey, IOVA), post, wait — lending the caller's buffer to the
//! worker so the copy into the pool is the only copy, as a NIC's DMA is.
//!
//! # Safety
//!
//! The lent buffer is a raw pointer to the caller's slice (see `mem`). It
//! is sound because [`transfer`] keeps the slice borrowed and does not
//! return (nor touch the slice) before the completion of the request that
//! carries it has been delivered: it waits for it unconditionally, and the
//! device delivers a completion for every request it accepts — workers
//! drain the queue before they stop, and a request dropped unserved
//! completes from its own `Drop`. A request the device refuses is dropped
//! before `transfer` returns, unused.
#![allow(unsafe_code)]

use std::sync::Arc;

use super::mem::{LentBuf, LentBytes};
use super::queue::{CompletionQueue, Op, Payload, Posted, Sink};
use super::region::Access;
use super::{Shared, MAX_WR_BYTES};
use crate::dma::{Completion, MrKeys};
use crate::{Errno, Result};

/// Perform `access` at byte `offset` of the region `keys` names, in requests
/// of at most [`MAX_WR_BYTES`], each posted (waiting for room in the send
/// queue) and waited for; the first that does not complete `Ok` ends it.
pub(super) fn transfer(
    shared: &Shared,
    keys: MrKeys,
    offset: u64,
    mut access: Access<'_>,
) -> Result<Completion> {
    let len = match &access {
        Access::Write(d) => d.len(),
        Access::Read(b) => b.len(),
    };
    let cq = Arc::new(CompletionQueue::default());
    let mut done = 0usize;
    loop {
        let chunk = (len - done).min(MAX_WR_BYTES as usize);
        let Some(iova) = keys
            .iova
            .checked_add(offset)
            .and_then(|a| a.checked_add(done as u64))
        else {
            return Ok(Completion::ProtectionError);
        };
        let r = done..done + chunk;
        let op = match &mut access {
            // SAFETY: see the module doc: the completion is waited for
            // below before `access` is used again or this returns.
            Access::Write(d) => Op::Write(Payload::Lent(unsafe { LentBytes::new(&d[r]) })),
            // SAFETY: as above.
            Access::Read(b) => Op::Read(Sink::Lent(unsafe { LentBuf::new(&mut b[r]) })),
        };
        if !cq.reserve() {
            return Err(Errno::EAGAIN.into());
        }
        shared.push(Posted::new(0, keys.lkey, iova, op, Arc::clone(&cq)), true)?;
        let wc = cq.take(1, true);
        let status = wc
            .first()
            .map_or(Completion::DeviceError(libc::EIO), |w| w.status);
        done += chunk;
        if status != Completion::Ok || done >= len {
            return Ok(status);
        }
    }
}
