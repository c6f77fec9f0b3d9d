//! The daemon's status (SPEC §9 per client process): every client with what
//! it holds, the lease list, pins, registrations, busy extents and space —
//! what `pinfs stat --socket` prints. Built from the core's own listings.

use std::sync::atomic::Ordering;

use pinfs_proto::{ClientStatus, HandleStatus, RegistrationStatus, Status};

use crate::Shared;

pub(crate) fn status(shared: &Shared) -> Status {
    let fs = &shared.fs;
    let leases = fs.leases().list();
    let pins = fs.pins();
    let registrations: Vec<RegistrationStatus> = fs
        .registrations()
        .into_iter()
        .map(|r| RegistrationStatus {
            id: r.id.0,
            owner: r.owner,
            ino: r.ino,
            offset: r.offset,
            len: r.len,
            device: r.device.to_owned(),
            revoked: r.revoked,
        })
        .collect();
    let mut sessions: Vec<_> = shared.sessions.lock().values().cloned().collect();
    sessions.sort_by_key(|s| s.id);
    let mut paths = Vec::new();
    let clients = sessions
        .iter()
        .map(|s| {
            let owner = s.cred.owner;
            let mut handles: Vec<HandleStatus> = s
                .files
                .lock()
                .iter()
                .map(|(&file, f)| {
                    let key = f.handle.lease_file();
                    if !paths.iter().any(|(k, _)| *k == key) {
                        paths.push((key, f.path.clone()));
                    }
                    HandleStatus {
                        file,
                        path: f.path.clone(),
                        ino: f.handle.ino(),
                    }
                })
                .collect();
            handles.sort_by_key(|h| h.file);
            ClientStatus {
                client_id: s.id,
                pid: s.pid,
                uid: s.uid,
                gid: s.gid,
                owner,
                handles,
                leases: leases
                    .iter()
                    .filter(|l| l.owner.0 == owner)
                    .map(|l| l.id)
                    .collect(),
                pins: pins
                    .iter()
                    .filter(|p| p.owner == owner)
                    .map(|p| p.id)
                    .collect(),
                registrations: registrations
                    .iter()
                    .filter(|r| r.owner == owner)
                    .map(|r| r.id)
                    .collect(),
                mappings: s.mapped.mapping_ids(),
                fenced: s.fenced.load(Ordering::Acquire),
                disconnected: s.disconnected.load(Ordering::Acquire),
            }
        })
        .collect();
    Status {
        daemon_pid: std::process::id() as i32,
        clients,
        leases,
        pins,
        registrations,
        busy_extents: fs.busy_extents(),
        statfs: fs.statfs(),
        paths,
    }
}
