//! The blocking helper behind [`Device::write`](crate::dma::Device::write)
//! and [`Device::read`](crate::dma::Device::read): translate (region,
//! offset) to (lkey, IOVA), post, wait — lending the caller's buffer to the
//! worker so the copy into the pool is the only copy, as a NIC's DMA is.
//!
//! # Safety
//!
//! The lent buffer is a raw pointer to the caller's slice (see `mem`). It
//! is sound because `transfer` keeps the slice borrowed and does not
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
use super::{Shared, MAX_WR_BYTES, WORKERS};
use crate::dma::{Completion, MrKeys};
use crate::Result;

/// Transfers at least this long are split across the workers (each piece
/// on its own request, posted together), as a NIC spreads a large message
/// over its engines; shorter ones are one request.
pub const SPLIT_MIN_BYTES: usize = 256 << 10;

/// Perform `access` at byte `offset` of the region `keys` names: in pieces
/// of at most [`MAX_WR_BYTES`] (and, from [`SPLIT_MIN_BYTES`], spread over
/// the [`WORKERS`](super::WORKERS)), a batch of at most `WORKERS` pieces
/// posted at once (waiting for room in the send queue) and all waited for.
/// The status is the first piece's, in address order, that is not `Ok`
/// (pieces after it may have been copied: a device write is not atomic).
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
    let piece = if len >= SPLIT_MIN_BYTES {
        len.div_ceil(WORKERS).min(MAX_WR_BYTES as usize)
    } else {
        len.min(MAX_WR_BYTES as usize)
    }
    .max(1);
    let base = match &mut access {
        Access::Write(d) => Base::Write(d.as_ptr()),
        Access::Read(b) => Base::Read(b.as_mut_ptr()),
    };
    let cq = Arc::new(CompletionQueue::default());
    let mut done = 0usize;
    loop {
        // One batch: up to WORKERS pieces, identified by their index.
        let mut batch = 0u64;
        while batch < WORKERS as u64 && (done < len || (len == 0 && batch == 0)) {
            let chunk = (len - done).min(piece);
            let Some(iova) = keys
                .iova
                .checked_add(offset)
                .and_then(|a| a.checked_add(done as u64))
            else {
                break;
            };
            // Each piece lends its own, disjoint range, all derived from the
            // one base pointer taken above (no reborrow of the caller's
            // slice while a worker may be using an earlier piece).
            // SAFETY: see the module doc: every piece's completion is waited
            // for below before the caller's slice is used again or this
            // returns; `done + chunk <= len` keeps each piece inside the
            // slice, and pieces never overlap, so a worker writing a read
            // piece has its range to itself.
            let op = unsafe {
                match base {
                    Base::Write(p) => {
                        Op::Write(Payload::Lent(LentBytes::from_raw(p.add(done), chunk)))
                    }
                    Base::Read(p) => Op::Read(Sink::Lent(LentBuf::from_raw(p.add(done), chunk))),
                }
            };
            if !cq.reserve() {
                break;
            }
            if let Err(e) = shared.push(
                Posted::new(batch, keys.lkey, iova, op, Arc::clone(&cq)),
                true,
            ) {
                // Nothing more is accepted: wait for what was, then report.
                let _ = wait_all(&cq, batch);
                return Err(e);
            }
            batch += 1;
            done += chunk;
        }
        if batch == 0 {
            // The address wrapped.
            return Ok(Completion::ProtectionError);
        }
        let status = wait_all(&cq, batch);
        if status != Completion::Ok || done >= len {
            return Ok(status);
        }
    }
}

/// The caller's buffer, as the one pointer every piece is derived from.
#[derive(Clone, Copy)]
enum Base {
    Write(*const u8),
    Read(*mut u8),
}

/// Wait for the completions of requests `0..n` of `cq`; the status of the
/// first (by id) that is not `Ok`.
fn wait_all(cq: &CompletionQueue, n: u64) -> Completion {
    let mut statuses = vec![Completion::Ok; n as usize];
    let mut seen = 0;
    while seen < n {
        let got = cq.take(n as usize, true);
        if got.is_empty() {
            // Nothing outstanding: cannot happen while `seen < n`.
            return Completion::DeviceError(libc::EIO);
        }
        for wc in got {
            if let Some(s) = statuses.get_mut(wc.wr_id as usize) {
                *s = wc.status;
            }
            seen += 1;
        }
    }
    statuses
        .into_iter()
        .find(|s| *s != Completion::Ok)
        .unwrap_or(Completion::Ok)
}
