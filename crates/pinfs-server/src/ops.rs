//! The daemon's handlers: one per `Op`, each the core library call with the
//! session's credential, translated to a `Reply` or an errno in one place
//! ([`run`]). Files and pins are the session's: a client names only its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pinfs::fs::Handle;
use pinfs::{Errno, Result};
use pinfs_proto::{FileId, Op, Reply, MAX_IO};

use crate::session::{OpenFile, Session};
use crate::{Shared, MAX_FILES_PER_CLIENT, MAX_PINS_PER_CLIENT};

/// Runs `op` for `session`: the reply, or the errno of the failure.
pub(crate) fn run(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    op: Op,
) -> std::result::Result<Reply, i32> {
    let name = op.name();
    handle(shared, session, op).map_err(|e| {
        tracing::debug!(target: "pinfs::server", client = session.id, op = name, error = %e, "request failed");
        e.errno().0
    })
}

fn file(session: &Session, file: FileId) -> Result<Arc<OpenFile>> {
    Ok(session
        .files
        .lock()
        .get(&file)
        .cloned()
        .ok_or(Errno::EBADF)?)
}

fn handle(shared: &Arc<Shared>, session: &Arc<Session>, op: Op) -> Result<Reply> {
    let fs = &shared.fs;
    let cred = session.cred;
    let with = |id: FileId, f: &dyn Fn(&Handle) -> Result<Reply>| -> Result<Reply> {
        let of = file(session, id)?;
        f(&of.handle)
    };
    match op {
        Op::Open { path, flags, mode } => {
            if session.files.lock().len() >= MAX_FILES_PER_CLIENT {
                return Err(Errno::EMFILE.into());
            }
            let handle = fs.open(cred, &path, flags, mode)?;
            let (key, ino) = (handle.lease_file(), handle.ino());
            let id = session.next_file.fetch_add(1, Ordering::Relaxed);
            session
                .files
                .lock()
                .insert(id, Arc::new(OpenFile { handle, path }));
            Ok(Reply::Opened { file: id, key, ino })
        }
        Op::Close { file } => {
            let f = session.files.lock().remove(&file).ok_or(Errno::EBADF)?;
            drop(f);
            Ok(Reply::Done)
        }
        Op::Pread { file, offset, len } => with(file, &|h| {
            let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?.min(MAX_IO);
            let mut buf = vec![0u8; len];
            let n = h.pread(offset, &mut buf)?;
            buf.truncate(n);
            Ok(Reply::Data(buf))
        }),
        Op::Pwrite { file, offset, data } => {
            with(file, &|h| Ok(Reply::Count(h.pwrite(offset, &data)? as u64)))
        }
        Op::Truncate { file, size } => with(file, &|h| h.truncate(size).map(|()| Reply::Done)),
        Op::TruncatePath { path, size } => {
            fs.truncate_path(cred, &path, size)?;
            Ok(Reply::Done)
        }
        Op::Fallocate {
            file,
            mode,
            offset,
            len,
        } => with(file, &|h| {
            h.fallocate(mode, offset, len).map(|()| Reply::Done)
        }),
        Op::Reflink {
            file: dst,
            src,
            range,
        } => {
            let s = file(session, src)?;
            with(dst, &|h| h.reflink(&s.handle, range).map(|()| Reply::Done))
        }
        Op::Fsync { file } => with(file, &|h| h.fsync().map(|()| Reply::Done)),
        Op::Fstat { file } => with(file, &|h| h.stat().map(Reply::Stat)),
        Op::Fiemap { file } => with(file, &|h| h.fiemap().map(Reply::Fiemap)),
        Op::Fchmod { file, mode } => with(file, &|h| h.chmod(mode).map(|()| Reply::Done)),
        Op::Chmod { path, mode } => fs.chmod(cred, &path, mode).map(|()| Reply::Done),
        Op::Chown { path, uid, gid } => fs.chown(cred, &path, uid, gid).map(|()| Reply::Done),
        Op::Unlink { path } => fs.unlink(cred, &path).map(|()| Reply::Done),
        Op::Mkdir { path, mode } => fs.mkdir(cred, &path, mode).map(|()| Reply::Done),
        Op::Rmdir { path } => fs.rmdir(cred, &path).map(|()| Reply::Done),
        Op::Rename { from, to } => fs.rename(cred, &from, &to).map(|()| Reply::Done),
        Op::Readdir { path } => fs.readdir(cred, &path).map(Reply::Dir),
        Op::Stat { path } => fs.stat(cred, &path).map(Reply::Stat),
        Op::Statfs => Ok(Reply::StatFs(fs.statfs())),
        Op::SetLease { file, spec } => {
            with(file, &|h| h.set_lease(spec.to_request()).map(Reply::Lease))
        }
        Op::GetLease { file } => with(file, &|h| Ok(Reply::LeaseType(h.get_lease()))),
        Op::ReleaseLease { lease } => {
            let info = fs.leases().lease(lease).ok_or(Errno::ENOENT)?;
            if info.owner != session.owner() {
                return Err(Errno::EPERM.into());
            }
            fs.leases().release(lease)?;
            Ok(Reply::Done)
        }
        Op::PinLongTerm { file, offset, len } => {
            if session.pins.lock().len() >= MAX_PINS_PER_CLIENT {
                return Err(Errno::ENOSPC.into());
            }
            let of = self::file(session, file)?;
            let pin = of.handle.pin_long_term(offset, len, None)?;
            let (id, pool_ranges) = (pin.id(), pin.pool_ranges());
            session.pins.lock().insert(id, pin);
            Ok(Reply::Pinned {
                pin: id,
                pool_ranges,
            })
        }
        Op::Unpin { pin } => {
            let p = session.pins.lock().remove(&pin).ok_or(Errno::ENOENT)?;
            drop(p);
            Ok(Reply::Done)
        }
        Op::Status => {
            let mut status = crate::status::status(shared);
            // Other users' processes (their pids and open paths) are root's
            // to see, as `/proc/PID/fd` is.
            if session.uid != 0 {
                status.clients.retain(|c| c.uid == session.uid);
            }
            Ok(Reply::Status(Box::new(status)))
        }
        op @ (Op::Mmap { .. }
        | Op::Munmap { .. }
        | Op::Fault { .. }
        | Op::Persist { .. }
        | Op::MapPin { .. }
        | Op::Register { .. }
        | Op::Deregister { .. }
        | Op::DmaWrite { .. }
        | Op::DmaRead { .. }) => crate::maps::handle(shared, session, op),
    }
}
