//! A random client of a pinfs daemon, for the many-clients test
//! (`tests/many_clients.rs`, issue 10): one process that, driven by a seed,
//! runs a number of random operations on a few files shared with every other
//! worker — opens and closes, reads and writes, open leases (read, write),
//! layout leases (shared, exclusive, unbreakable with long-term pins),
//! unpins and releases, truncates by handle and by path, punches and zeroes
//! ranges, mappings (shared ones it loads from and stores to, holes
//! included; `MAP_DIRECT` ones with pins and soft-device registrations
//! through them, the device writing) and unmaps — while a second thread
//! answers every lease break the daemon sends (event and signal) as a
//! well-behaved holder does: it drops the `MAP_DIRECT` mappings of the file
//! (with their pins and registrations), then releases the lease.
//!
//! `pinfs-random-worker SOCKET SEED OPS [ignore]`. With `ignore` the worker
//! never gives up a broken lease (nor unmaps), and after its operations
//! gives up what it took, takes a shared layout lease on the first shared
//! file and waits: the daemon must fence it (kill it at lease-break-time)
//! once someone changes that file's layout.
//!
//! One line per thing that happened, on stdout (flushed per line, so a
//! killed worker has told what it did): `connected ID`, `op NAME ok` or `op
//! NAME ERRNO-NAME` per operation, `break LEASE KIND` per event received,
//! `released LEASE` per broken lease given up (after `unmapped N` when it
//! dropped direct mappings for it), `done OPS ERRORS` at the end,
//! `holding LEASE` (with `ignore`). A lost connection (which the test counts
//! as a failure: only a kill may end a worker early) prints `lost
//! connection` and exits 3.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinfs::dma::RevokeMode;
use pinfs::fs::{FallocMode, OpenFlags};
use pinfs::lease::{ByteRange, EventKind, FileKey, LeaseId, LeaseKind};
use pinfs::map::{MAP_DIRECT, MAP_SHARED, MAP_SHARED_VALIDATE};
use pinfs::{Errno, Error};
use pinfs_client::{
    Client, ClientMap, ConnectOptions, LeaseSpec, RemoteFile, RemotePin, RemoteRegistration,
};

/// How many files the workers share (`/w0` ...): few, so they collide.
const SHARED_FILES: u64 = 4;
/// The range of file offsets the workers touch.
const FILE_BYTES: u64 = 1 << 20;
/// Most bytes one read or write moves.
const MAX_IO_BYTES: u64 = 64 << 10;
/// Most files a worker keeps open (the oldest is closed to open another).
const MAX_OPEN_FILES: usize = 4;
/// Most long-term pins a worker holds at once.
const MAX_PINS: usize = 8;
/// Most leases a worker remembers (older ones are released first).
const MAX_LEASES: usize = 8;
/// Most mappings of each kind (shared, direct) a worker keeps (the oldest is
/// unmapped to map another).
const MAX_MAPPINGS: usize = 4;
/// How long a worker that ignores breaks keeps asking for the lease it is
/// to hold at the end (others' exclusive layout leases refuse it).
const HOLD_PATIENCE: Duration = Duration::from_secs(20);
/// Exit status for a connection lost without being killed.
const EXIT_LOST_CONNECTION: i32 = 3;

fn errname(e: &Error) -> String {
    let n = e.errno();
    n.name().map_or_else(|| format!("E{}", n.0), str::to_owned)
}

/// xorshift64*: a seeded generator that needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A block-aligned range inside the shared span.
    fn range(&mut self) -> (u64, u64) {
        let off = self.below(FILE_BYTES / 4096) * 4096;
        let len = (1 + self.below(16)) * 4096;
        (off, len)
    }
}

/// Whether `e` means the daemon is gone (not an answer of the file system).
fn is_disconnect(e: &Error) -> bool {
    matches!(e.errno(), Errno::ENOTCONN | Errno::EPIPE)
}

fn lost_connection() -> ! {
    println!("lost connection");
    std::process::exit(EXIT_LOST_CONNECTION)
}

/// A `MAP_DIRECT` mapping with what was taken through it. Fields drop in
/// order: the registrations and pins go before the mapping.
struct Direct {
    file: FileKey,
    regs: Vec<RemoteRegistration>,
    pins: Vec<RemotePin>,
    map: ClientMap,
}

/// Answers lease events: every `Break` of a lease is given up at once
/// (unless the worker ignores breaks) — for a layout lease, after dropping
/// the file's direct mappings, their pins and registrations (SPEC §3.2: the
/// holder releases what it holds over the range). Runs until the
/// connection ends.
fn answer_breaks(
    client: Client,
    leases: Arc<Mutex<Vec<LeaseId>>>,
    directs: Arc<Mutex<Vec<Direct>>>,
    ignore: bool,
) {
    loop {
        match client.events().recv_timeout(Duration::from_millis(100)) {
            Ok(Some(ev)) => {
                println!("break {} {:?}", ev.lease.id.0, ev.kind);
                if ev.kind != EventKind::Break || ignore {
                    continue;
                }
                if ev.lease.kind == LeaseKind::Layout {
                    let dropped: Vec<Direct> = match directs.lock() {
                        Ok(mut d) => {
                            let (gone, kept) = d.drain(..).partition(|m| m.file == ev.lease.file);
                            *d = kept;
                            gone
                        }
                        Err(_) => Vec::new(),
                    };
                    if !dropped.is_empty() {
                        let n = dropped.len();
                        drop(dropped);
                        println!("unmapped {n}");
                    }
                }
                if let Ok(mut held) = leases.lock() {
                    held.retain(|l| *l != ev.lease.id);
                }
                match client.release_lease(ev.lease.id) {
                    // ENOENT: the main thread released it meanwhile, or it
                    // was forced already.
                    Ok(()) | Err(Error::Errno(Errno::ENOENT)) => {
                        println!("released {}", ev.lease.id.0)
                    }
                    Err(e) if is_disconnect(&e) => return,
                    Err(e) => println!("release {} {}", ev.lease.id.0, errname(&e)),
                }
            }
            Ok(None) => {}
            // Events were dropped: nothing to resynchronise here, since
            // the next break of a held lease comes as a fresh event.
            Err(e) if e.errno() == Errno::EOVERFLOW => {}
            Err(_) => return,
        }
    }
}

struct Worker {
    client: Client,
    rng: Rng,
    files: Vec<RemoteFile>,
    pins: Vec<RemotePin>,
    leases: Arc<Mutex<Vec<LeaseId>>>,
    /// Shared mappings: only this thread touches them.
    maps: Vec<ClientMap>,
    /// Direct mappings: the break thread drops them.
    directs: Arc<Mutex<Vec<Direct>>>,
    seed: u64,
}

impl Worker {
    fn path(&mut self) -> String {
        format!("/w{}", self.rng.below(SHARED_FILES))
    }

    fn file(&mut self) -> Option<&RemoteFile> {
        if self.files.is_empty() {
            return None;
        }
        let i = self.rng.below(self.files.len() as u64) as usize;
        self.files.get(i)
    }

    fn remember(&mut self, id: LeaseId) {
        let oldest = {
            let Ok(mut held) = self.leases.lock() else {
                return;
            };
            held.push(id);
            (held.len() > MAX_LEASES).then(|| held.remove(0))
        };
        if let Some(old) = oldest {
            let _ = self.client.release_lease(old);
        }
    }

    /// A shared (`MAP_SHARED`) mapping of a random range of an open file.
    fn map_shared(&mut self, off: u64, len: u64) -> pinfs::Result<()> {
        let Some(f) = self.file() else {
            return Ok(());
        };
        let m = f.mmap(off, len, MAP_SHARED)?;
        if self.maps.len() >= MAX_MAPPINGS {
            self.maps.remove(0);
        }
        self.maps.push(m);
        Ok(())
    }

    /// A `MAP_DIRECT` mapping, and through it maybe a pin and a
    /// registration the device then writes through.
    fn map_direct(&mut self, off: u64, len: u64) -> pinfs::Result<()> {
        let (pin, register) = (self.rng.below(2) == 0, self.rng.below(2) == 0);
        let Some(f) = self.file() else {
            return Ok(());
        };
        let file = f.lease_file();
        let map = f.mmap(off, len, MAP_SHARED_VALIDATE | MAP_DIRECT)?;
        let mut d = Direct {
            file,
            regs: Vec::new(),
            pins: Vec::new(),
            map,
        };
        // A refusal (EPERM, ENXIO, EOPNOTSUPP...) shows in the result; the
        // mapping is kept either way.
        let result = (|| {
            if pin {
                d.pins.push(d.map.pin_long_term(0, len)?);
            }
            if register {
                let reg = d.map.register(0, len, RevokeMode::Invalidate)?;
                reg.write(0, &[self.seed as u8; 512])?;
                d.regs.push(reg);
            }
            Ok(())
        })();
        let oldest = {
            let Ok(mut directs) = self.directs.lock() else {
                return result;
            };
            directs.push(d);
            (directs.len() > MAX_MAPPINGS).then(|| directs.remove(0))
        };
        drop(oldest);
        result
    }

    /// Stores to (or loads from) a random page of a random mapping.
    fn touch(&mut self, direct: bool, store: bool) -> pinfs::Result<()> {
        let byte = self.seed as u8;
        let pick = self.rng.next();
        let access = |m: &ClientMap| {
            let page = pick % m.len().div_ceil(4096);
            let at = page * 4096;
            let n = (m.len() - at).min(4096) as usize;
            if store {
                m.write(at, &vec![byte; n])
            } else {
                m.read(at, &mut vec![0u8; n])
            }
        };
        if direct {
            let directs = self.directs.lock().map_err(|_| Errno::EIO)?;
            if directs.is_empty() {
                return Ok(());
            }
            access(&directs[(pick % directs.len() as u64) as usize].map)
        } else {
            if self.maps.is_empty() {
                return Ok(());
            }
            access(&self.maps[(pick % self.maps.len() as u64) as usize])
        }
    }

    /// Unmaps a random mapping (shared or direct).
    fn unmap(&mut self) {
        if self.rng.below(2) == 0 && !self.maps.is_empty() {
            let i = self.rng.below(self.maps.len() as u64) as usize;
            self.maps.swap_remove(i);
            return;
        }
        let i = self.rng.next();
        let gone = self.directs.lock().ok().and_then(|mut d| {
            let n = d.len() as u64;
            (n > 0).then(|| d.swap_remove((i % n) as usize))
        });
        drop(gone);
    }

    fn set_lease(&mut self, spec: LeaseSpec) -> pinfs::Result<()> {
        let Some(f) = self.file() else {
            return Ok(());
        };
        let id = f.set_lease(spec.nonblocking())?;
        self.remember(id);
        Ok(())
    }

    /// One random operation: its name and result.
    fn step(&mut self) -> (&'static str, pinfs::Result<()>) {
        let (off, len) = self.rng.range();
        match self.rng.below(28) {
            0 | 1 => {
                let path = self.path();
                let flags = if self.rng.below(3) == 0 {
                    OpenFlags::RDONLY
                } else {
                    OpenFlags::CREATE
                };
                // A blocking open: it breaks other workers' open leases.
                let r = self.client.open(&path, flags, 0o666).map(|f| {
                    if self.files.len() >= MAX_OPEN_FILES {
                        self.files.remove(0);
                    }
                    self.files.push(f);
                });
                ("open", r)
            }
            2 => {
                if !self.files.is_empty() {
                    let i = self.rng.below(self.files.len() as u64) as usize;
                    self.files.swap_remove(i);
                }
                ("close", Ok(()))
            }
            3 | 4 => {
                let byte = self.seed as u8;
                let n = (len).min(MAX_IO_BYTES) as usize;
                let r = self
                    .file()
                    .map_or(Ok(()), |f| f.pwrite(off, &vec![byte; n]).map(drop));
                ("pwrite", r)
            }
            5 => {
                let n = (len).min(MAX_IO_BYTES) as usize;
                let r = self.file().map_or(Ok(()), |f| {
                    let mut buf = vec![0u8; n];
                    f.pread(off, &mut buf).map(drop)
                });
                ("pread", r)
            }
            6 => ("lease-read", self.set_lease(LeaseSpec::read())),
            7 => ("lease-write", self.set_lease(LeaseSpec::write())),
            8 | 9 => {
                let spec = if self.rng.below(2) == 0 {
                    LeaseSpec::layout_shared()
                } else {
                    LeaseSpec::layout_shared().range(ByteRange::from_len(off, len))
                };
                ("layout-shared", self.set_lease(spec))
            }
            10 => (
                "layout-exclusive",
                self.set_lease(LeaseSpec::layout_exclusive()),
            ),
            11 => {
                if self.pins.len() >= MAX_PINS {
                    self.pins.remove(0);
                }
                let r = (|| {
                    let Some(f) = self.file() else {
                        return Ok(());
                    };
                    let spec = LeaseSpec::layout_shared()
                        .unbreakable()
                        .range(ByteRange::from_len(off, len))
                        .nonblocking();
                    let id = f.set_lease(spec)?;
                    let pin = f.pin_long_term(off, len);
                    self.remember(id);
                    self.pins.push(pin?);
                    Ok(())
                })();
                ("pin", r)
            }
            12 => {
                if !self.pins.is_empty() {
                    let i = self.rng.below(self.pins.len() as u64) as usize;
                    self.pins.swap_remove(i);
                }
                ("unpin", Ok(()))
            }
            13 => {
                let id = self.leases.lock().ok().and_then(|mut held| held.pop());
                let r = match id {
                    Some(id) => match self.client.release_lease(id) {
                        // Broken and forced, or given up by the other thread.
                        Err(Error::Errno(Errno::ENOENT)) => Ok(()),
                        r => r,
                    },
                    None => Ok(()),
                };
                ("release", r)
            }
            14 | 15 => {
                let size = self.rng.below(FILE_BYTES);
                ("truncate", self.file().map_or(Ok(()), |f| f.truncate(size)))
            }
            16 => {
                let (path, size) = (self.path(), self.rng.below(FILE_BYTES));
                ("truncate-path", self.client.truncate_path(&path, size))
            }
            17 => (
                "punch",
                self.file()
                    .map_or(Ok(()), |f| f.fallocate(FallocMode::PunchHole, off, len)),
            ),
            18 => (
                "zero",
                self.file().map_or(Ok(()), |f| {
                    f.fallocate(FallocMode::ZeroRange { keep_size: true }, off, len)
                }),
            ),
            19 | 20 => ("mmap", self.map_shared(off, len)),
            21 => ("mmap-direct", self.map_direct(off, len)),
            22 | 23 => ("mwrite", self.touch(false, true)),
            24 => ("mread", self.touch(false, false)),
            25 => ("dwrite", self.touch(true, true)),
            26 => {
                self.unmap();
                ("munmap", Ok(()))
            }
            _ => ("statfs", self.client.statfs().map(drop)),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(socket), Some(seed), Some(ops)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: pinfs-random-worker SOCKET SEED OPS [ignore]");
        std::process::exit(2);
    };
    let ignore = args.get(3).map(String::as_str) == Some("ignore");
    // The daemon signals a break with SIGIO, whose default action would end
    // the process: take it (the event on the connection says which lease).
    if let Err(e) = signal_hook::flag::register(libc::SIGIO, Arc::new(AtomicBool::new(false))) {
        eprintln!("cannot handle SIGIO: {e}");
        std::process::exit(2);
    }
    let client = match Client::connect_with(socket, ConnectOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            println!("connect {}", errname(&e));
            std::process::exit(1);
        }
    };
    println!("connected {}", client.id());
    let leases = Arc::new(Mutex::new(Vec::new()));
    let directs = Arc::new(Mutex::new(Vec::new()));
    {
        let (c, l, d) = (client.clone(), Arc::clone(&leases), Arc::clone(&directs));
        std::thread::spawn(move || answer_breaks(c, l, d, ignore));
    }
    let mut w = Worker {
        client: client.clone(),
        rng: Rng(seed | 1),
        files: Vec::new(),
        pins: Vec::new(),
        leases,
        maps: Vec::new(),
        directs,
        seed,
    };
    let mut errors = 0u64;
    for _ in 0..ops {
        let (name, r) = w.step();
        match r {
            Ok(()) => println!("op {name} ok"),
            Err(e) if is_disconnect(&e) => lost_connection(),
            Err(e) => {
                errors += 1;
                println!("op {name} {}", errname(&e));
            }
        }
    }
    println!("done {ops} {errors}");
    if ignore {
        // Give up what the run took (unbreakable leases would refuse the
        // layout change that is to break the held lease), then hold.
        let taken: Vec<LeaseId> = w
            .leases
            .lock()
            .map(|mut l| l.drain(..).collect())
            .unwrap_or_default();
        for id in taken {
            let _ = client.release_lease(id);
        }
        w.pins.clear();
        w.maps.clear();
        if let Ok(mut d) = w.directs.lock() {
            d.clear();
        }
        w.files.clear();
        // Another worker's exclusive layout lease refuses ours (`EAGAIN`)
        // for as long as it holds it: try again, for a bounded while.
        let deadline = std::time::Instant::now() + HOLD_PATIENCE;
        let held = client
            .open("/w0", OpenFlags::CREATE, 0o666)
            .and_then(|f| loop {
                match f.set_lease(LeaseSpec::layout_shared().nonblocking()) {
                    Ok(id) => break Ok((f, id)),
                    Err(e)
                        if e.errno() == Errno::EAGAIN && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => break Err(e),
                }
            });
        match held {
            Ok((_file, id)) => {
                println!("holding {}", id.0);
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Err(e) if is_disconnect(&e) => lost_connection(),
            Err(e) => println!("hold {}", errname(&e)),
        }
    }
}
