//! Mappings in client processes, on the daemon's side (SPEC §8): the
//! session's [`RemoteMapping`]s under the client's numbers, the
//! [`RemoteSpace`] that carries placements to the client (`Place` frames,
//! acknowledged by `Ack` on the connection's reader thread), fencing of a
//! client that does not acknowledge within lease-break-time, and the
//! handlers of `Mmap`, `Munmap`, `Fault`, `Persist`, `MapPin`, `Register`,
//! `Deregister`, `DmaWrite` and `DmaRead` (the device is the daemon's soft
//! RDMA device: the client reaches it only through requests).
//!
//! A placement is sent under the file system's state lock and waited for
//! (`Session::ask`):
//! the client library applies it on its reader thread, which never waits
//! for the daemon, so the acknowledgement comes unless the client is stuck,
//! gone or dead. Then — at lease-break-time, or at once when the session
//! is ending or has once let an acknowledgement time out — `place` fails, the client is fenced, and the core treats the
//! mapping as broken: the blocks it may reach stay busy until the session's
//! cleanup drops the `RemoteMapping`, which it does only after the client's
//! death is confirmed (`session.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pinfs::dma::Device;
use pinfs::fs::Registration;
use pinfs::map::{MapFlags, RemoteMapping, RemotePiece, RemoteSpace, Unacknowledged};
use pinfs::{Errno, Result};
use pinfs_proto::{DaemonMsg, Op, Reply, MAX_IO};

use crate::session::Session;
use crate::{Shared, MAX_PINS_PER_CLIENT};

/// Most mappings per client (`ENOMEM` beyond, as `mmap` runs out of
/// mappings).
pub const MAX_MAPPINGS_PER_CLIENT: usize = 4096;

/// Most device registrations per client (`ENOSPC` beyond).
pub const MAX_REGISTRATIONS_PER_CLIENT: usize = 1024;

/// What the session holds of mappings and registrations.
#[derive(Default)]
pub(crate) struct SessionMaps {
    /// The client's mappings, by the client's number (`None` while its
    /// `Mmap` is in progress: the number is taken).
    maps: Mutex<HashMap<u64, Option<Arc<RemoteMapping>>>>,
    /// The client's registrations, by id.
    regs: Mutex<HashMap<u64, Arc<Registration>>>,
}

impl SessionMaps {
    /// The daemon's ids of the client's mappings (for `Status`).
    pub(crate) fn mapping_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .maps
            .lock()
            .values()
            .flatten()
            .map(|m| m.id())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether the client has mappings (cleanup waits for its death then).
    pub(crate) fn has_mappings(&self) -> bool {
        !self.maps.lock().is_empty()
    }

    /// Deregisters every registration (the device is the daemon's: nothing
    /// of the client's process can reach it once they are gone).
    pub(crate) fn drop_registrations(&self) {
        let regs: Vec<Arc<Registration>> = self.regs.lock().drain().map(|(_, r)| r).collect();
        drop(regs);
    }

    /// Forgets every mapping: only once the client can no longer reach
    /// them (its death confirmed).
    pub(crate) fn drop_mappings(&self) -> usize {
        let maps: Vec<Arc<RemoteMapping>> =
            self.maps.lock().drain().filter_map(|(_, m)| m).collect();
        maps.len()
    }
}

/// The address space of one client mapping: placements travel as `Place`
/// frames on its connection.
struct SessionSpace {
    session: Weak<Session>,
    shared: Weak<Shared>,
    /// The client's number for the mapping.
    map: u64,
}

impl RemoteSpace for SessionSpace {
    fn place(&self, map: u64, pieces: &[RemotePiece]) -> std::result::Result<(), Unacknowledged> {
        let fail = |reason: String| Unacknowledged { map, reason };
        let (Some(session), Some(shared)) = (self.session.upgrade(), self.shared.upgrade()) else {
            return Err(fail("the client's session is gone".to_owned()));
        };
        let break_time = shared.fs.leases().break_time();
        let timeout = (!break_time.is_zero()).then_some(break_time);
        let asked = session.ask(
            &shared,
            |token| DaemonMsg::Place {
                map: self.map,
                token,
                pieces: pieces.to_vec(),
            },
            timeout,
            &format!("placement of mapping {}", self.map),
        );
        let reason = match asked {
            Ok(0) => return Ok(()),
            Ok(errno) => format!("the client could not apply a placement: {}", Errno(errno)),
            // `ask` fenced it already.
            Err(Errno::ETIMEDOUT) => {
                return Err(fail("not acknowledged within lease-break-time".to_owned()))
            }
            Err(e) => format!("no acknowledgement: {e}"),
        };
        // Its pages may still reach blocks the layout change frees: it must
        // die before they are reused (the core holds them until then).
        session.fence(&shared, &format!("mapping {}: {reason}", self.map));
        Err(fail(reason))
    }
}

fn mapping(session: &Session, map: u64) -> Result<Arc<RemoteMapping>> {
    Ok(session
        .mapped
        .maps
        .lock()
        .get(&map)
        .cloned()
        .flatten()
        .ok_or(Errno::EINVAL)?)
}

fn registration(session: &Session, reg: u64) -> Result<Arc<Registration>> {
    Ok(session
        .mapped
        .regs
        .lock()
        .get(&reg)
        .cloned()
        .ok_or(Errno::ENOENT)?)
}

/// The daemon's soft RDMA device, created on first use.
fn soft_device(shared: &Shared) -> Result<Arc<dyn Device>> {
    let mut dev = shared.soft_device.lock();
    if let Some(d) = &*dev {
        return Ok(d.clone());
    }
    let d: Arc<dyn Device> = Arc::new(pinfs::dma::soft::SoftDevice::new(
        shared.fs.media().clone(),
    )?);
    *dev = Some(d.clone());
    Ok(d)
}

/// The mapping requests (see the module doc).
pub(crate) fn handle(shared: &Arc<Shared>, session: &Arc<Session>, op: Op) -> Result<Reply> {
    let maps = &session.mapped;
    match op {
        Op::Mmap {
            file,
            map,
            offset,
            len,
            flags,
            read_only,
        } => {
            let flags = MapFlags::from_raw(flags)?;
            let flags = if read_only { flags.read_only() } else { flags };
            let of = session
                .files
                .lock()
                .get(&file)
                .cloned()
                .ok_or(Errno::EBADF)?;
            {
                // The number is taken before anything is placed under it.
                let mut m = maps.maps.lock();
                if m.contains_key(&map) {
                    return Err(Errno::EEXIST.into());
                }
                if m.len() >= MAX_MAPPINGS_PER_CLIENT {
                    return Err(Errno::ENOMEM.into());
                }
                m.insert(map, None);
            }
            let space = Arc::new(SessionSpace {
                session: Arc::downgrade(session),
                shared: Arc::downgrade(shared),
                map,
            });
            match of.handle.mmap_remote(offset, len, flags, space) {
                Ok(remote) => {
                    let id = remote.id();
                    maps.maps.lock().insert(map, Some(Arc::new(remote)));
                    Ok(Reply::Mapped { id })
                }
                Err(e) => {
                    maps.maps.lock().remove(&map);
                    Err(e)
                }
            }
        }
        Op::Munmap { map } => {
            let mut m = maps.maps.lock();
            if !matches!(m.get(&map), Some(Some(_))) {
                return Err(Errno::EINVAL.into());
            }
            let gone = m.remove(&map);
            drop(m);
            drop(gone);
            Ok(Reply::Done)
        }
        Op::Fault { map, page } => {
            mapping(session, map)?.write_fault(page)?;
            Ok(Reply::Done)
        }
        Op::Persist { map, offset, len } => {
            mapping(session, map)?.persist(offset, len)?;
            Ok(Reply::Done)
        }
        Op::MapPin { map, offset, len } => {
            if session.pins.lock().len() >= MAX_PINS_PER_CLIENT {
                return Err(Errno::ENOSPC.into());
            }
            let pin = mapping(session, map)?.pin_long_term(offset, len, None)?;
            let (id, pool_ranges) = (pin.id(), pin.pool_ranges());
            session.pins.lock().insert(id, pin);
            Ok(Reply::Pinned {
                pin: id,
                pool_ranges,
            })
        }
        Op::Register {
            map,
            offset,
            len,
            mode,
        } => {
            if maps.regs.lock().len() >= MAX_REGISTRATIONS_PER_CLIENT {
                return Err(Errno::ENOSPC.into());
            }
            let device = soft_device(shared)?;
            let reg = mapping(session, map)?.register(device, offset, len, mode)?;
            let (id, keys) = (reg.id().0, reg.keys());
            maps.regs.lock().insert(id, Arc::new(reg));
            Ok(Reply::Registered { reg: id, keys })
        }
        Op::Deregister { reg } => {
            let mut r = maps.regs.lock().remove(&reg).ok_or(Errno::ENOENT)?;
            // A device access in flight (another worker of this client)
            // holds it: it ends first, then the registration is gone
            // before the reply — `Done` means deregistered.
            loop {
                match Arc::try_unwrap(r) {
                    Ok(reg) => {
                        reg.deregister()?;
                        break;
                    }
                    Err(back) => {
                        r = back;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
            Ok(Reply::Done)
        }
        Op::DmaWrite { reg, offset, data } => {
            let completion = registration(session, reg)?.write(offset, &data)?;
            Ok(Reply::Dma {
                completion,
                data: Vec::new(),
            })
        }
        Op::DmaRead { reg, offset, len } => {
            let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?.min(MAX_IO);
            let mut buf = vec![0u8; len];
            let completion = registration(session, reg)?.read(offset, &mut buf)?;
            if completion != pinfs::dma::Completion::Ok {
                buf.clear();
            }
            Ok(Reply::Dma {
                completion,
                data: buf,
            })
        }
        _ => Err(Errno::ENOSYS.into()),
    }
}
