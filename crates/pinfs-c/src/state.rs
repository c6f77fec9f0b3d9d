//! What one C connection holds on the Rust side: the client, its open
//! files by number and its pins by id, each table bounded. Safe code; the
//! `extern "C"` functions in [`crate::ffi`] only translate to and from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pinfs::lease::LeaseId;
use pinfs::Errno;
use pinfs_client::{Client, ClientMap, RemoteFile, RemotePin, RemoteRegistration};

/// Most files one connection may have open through the C interface.
pub const PINFS_MAX_OPEN_FILES: usize = 4096;

/// Most long-term pins one connection may hold through the C interface.
pub const PINFS_MAX_PINS: usize = 4096;

/// Most mappings one connection may hold through the C interface.
pub const PINFS_MAX_MAPS: usize = 1024;

/// Most device registrations one connection may hold through the C
/// interface.
pub const PINFS_MAX_REGISTRATIONS: usize = 1024;

/// Most leases whose file number a connection remembers (to name the file
/// of a break event); the oldest is forgotten first.
pub const PINFS_MAX_KNOWN_LEASES: usize = 4096;

/// One connection: what `pinfs_client *` points at.
pub struct Conn {
    /// The daemon's client.
    pub client: Client,
    files: Mutex<Files>,
    pins: Mutex<BTreeMap<u64, RemotePin>>,
    /// Which file number each lease was set through (newest ids last).
    leases: Mutex<BTreeMap<u64, i32>>,
    /// Mappings by id (the ids this connection hands out, from 1).
    maps: Mutex<Numbered<ClientMap>>,
    /// Registrations by id (the daemon's ids).
    regs: Mutex<BTreeMap<u64, Arc<RemoteRegistration>>>,
}

/// A table handing out ids from 1.
struct Numbered<T> {
    items: BTreeMap<u64, Arc<T>>,
    next: u64,
}

struct Files {
    open: BTreeMap<i32, Arc<RemoteFile>>,
    /// The next number to try (numbers are reused only after wrapping).
    next: i32,
}

impl Drop for Conn {
    /// As a process exit would: the devices' access first, then pins,
    /// mappings, files (each drop tells the daemon).
    fn drop(&mut self) {
        self.regs.get_mut().clear();
        self.pins.get_mut().clear();
        self.maps.get_mut().items.clear();
        self.files.get_mut().open.clear();
    }
}

impl Conn {
    /// A connection over `client`, holding nothing yet.
    pub fn new(client: Client) -> Self {
        Conn {
            client,
            files: Mutex::new(Files {
                open: BTreeMap::new(),
                next: 0,
            }),
            pins: Mutex::new(BTreeMap::new()),
            leases: Mutex::new(BTreeMap::new()),
            maps: Mutex::new(Numbered {
                items: BTreeMap::new(),
                next: 1,
            }),
            regs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keep a mapping; its id (> 0). `ENOMEM` at [`PINFS_MAX_MAPS`] (the
    /// mapping is dropped, unmapping it).
    pub fn insert_map(&self, map: ClientMap) -> Result<u64, Errno> {
        let mut maps = self.maps.lock();
        if maps.items.len() >= PINFS_MAX_MAPS {
            return Err(Errno::ENOMEM);
        }
        let id = maps.next;
        maps.next += 1;
        maps.items.insert(id, Arc::new(map));
        Ok(id)
    }

    /// Mapping `id` (`EINVAL` when none).
    pub fn map(&self, id: u64) -> Result<Arc<ClientMap>, Errno> {
        self.maps
            .lock()
            .items
            .get(&id)
            .cloned()
            .ok_or(Errno::EINVAL)
    }

    /// Forget mapping `id` (`EINVAL` when none); the caller unmaps it.
    pub fn remove_map(&self, id: u64) -> Result<Arc<ClientMap>, Errno> {
        self.maps.lock().items.remove(&id).ok_or(Errno::EINVAL)
    }

    /// Keep a registration; its id. `ENOMEM` at
    /// [`PINFS_MAX_REGISTRATIONS`] (it is dropped, deregistering).
    pub fn insert_reg(&self, reg: RemoteRegistration) -> Result<u64, Errno> {
        let mut regs = self.regs.lock();
        if regs.len() >= PINFS_MAX_REGISTRATIONS {
            return Err(Errno::ENOMEM);
        }
        let id = reg.id();
        regs.insert(id, Arc::new(reg));
        Ok(id)
    }

    /// Registration `id` (`EINVAL` when none).
    pub fn reg(&self, id: u64) -> Result<Arc<RemoteRegistration>, Errno> {
        self.regs.lock().get(&id).cloned().ok_or(Errno::EINVAL)
    }

    /// Forget registration `id` (`EINVAL` when none); the caller
    /// deregisters it.
    pub fn remove_reg(&self, id: u64) -> Result<Arc<RemoteRegistration>, Errno> {
        self.regs.lock().remove(&id).ok_or(Errno::EINVAL)
    }

    /// Give `file` the lowest free number from the rotating cursor;
    /// `EMFILE` at `PINFS_MAX_OPEN_FILES`.
    pub fn insert_file(&self, file: RemoteFile) -> Result<i32, Errno> {
        let mut files = self.files.lock();
        if files.open.len() >= PINFS_MAX_OPEN_FILES {
            return Err(Errno::EMFILE);
        }
        let mut fd = files.next;
        while files.open.contains_key(&fd) {
            fd = if fd == i32::MAX { 0 } else { fd + 1 };
        }
        files.next = if fd == i32::MAX { 0 } else { fd + 1 };
        files.open.insert(fd, Arc::new(file));
        Ok(fd)
    }

    /// The file numbered `fd` (`EBADF` when none).
    pub fn file(&self, fd: i32) -> Result<Arc<RemoteFile>, Errno> {
        self.files.lock().open.get(&fd).cloned().ok_or(Errno::EBADF)
    }

    /// Close `fd` (`EBADF` when none). The file closes once no call using
    /// it is still running.
    pub fn remove_file(&self, fd: i32) -> Result<(), Errno> {
        let file = self.files.lock().open.remove(&fd).ok_or(Errno::EBADF)?;
        drop(file);
        Ok(())
    }

    /// Keep a pin; `EMFILE` at `PINFS_MAX_PINS` (the pin is dropped, unpinning).
    pub fn insert_pin(&self, pin: RemotePin) -> Result<u64, Errno> {
        let mut pins = self.pins.lock();
        if pins.len() >= PINFS_MAX_PINS {
            return Err(Errno::EMFILE);
        }
        let id = pin.id().0;
        pins.insert(id, pin);
        Ok(id)
    }

    /// Drop pin `id` (`EINVAL` when this connection holds none by it).
    pub fn remove_pin(&self, id: u64) -> Result<RemotePin, Errno> {
        self.pins.lock().remove(&id).ok_or(Errno::EINVAL)
    }

    /// Remember that lease `lease` was set through `fd`.
    pub fn note_lease(&self, lease: LeaseId, fd: i32) {
        let mut leases = self.leases.lock();
        if leases.len() >= PINFS_MAX_KNOWN_LEASES && !leases.contains_key(&lease.0) {
            leases.pop_first();
        }
        leases.insert(lease.0, fd);
    }

    /// The file number lease `lease` was set through, or -1.
    pub fn fd_of_lease(&self, lease: LeaseId) -> i32 {
        self.leases.lock().get(&lease.0).copied().unwrap_or(-1)
    }
}
