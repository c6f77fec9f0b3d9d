//! A scripted client of a pinfs daemon, for the cross-process tests: a
//! separate process that connects, runs the commands given as arguments in
//! order, and prints one line per result on stdout (flushed per line), so a
//! test can drive a lease holder, a truncater or a pinner in its own
//! process and read what happened to it.
//!
//! `pinfs-test-client SOCKET [--signal N] CMD...`, each CMD one argument
//! (words separated by spaces): `open PATH` (read-write, created 0644),
//! `open-ro PATH`, `open-rw PATH`, `write OFF LEN`, `layout` (shared layout
//! lease), `exclusive OFF LEN` (unbreakable layout lease over the range),
//! `lease read|write`, `pin OFF LEN`, `truncate SIZE`, `truncate-path PATH
//! SIZE`, `release`, `unpin`, `react` (wait for a break event, then release
//! the lease and unpin), `sleep MS`, `ready`, `hold` (sleep until killed).
//! Each prints `NAME ok [ID]` or `NAME err ERRNO-NAME`; `react` prints
//! `break KIND`, `signal yes|no` (whether the lease-break signal arrived)
//! and `released`.
//!
//! `chaos SEED OPS [ignore]` runs OPS random operations on shared files
//! `/c0`..`/c3` — opens, writes, reads, layout leases, unbreakable leases
//! with pins, unpins, truncates, punches — while a second thread releases
//! every lease whose break it is told of (unless `ignore`: then the daemon
//! fences it). Errors the file system may give are counted; a lost
//! connection ends the run. Prints `chaos done OPS ERRORS`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pinfs::fs::OpenFlags;
use pinfs::lease::{ByteRange, LeaseId};
use pinfs_client::{Client, ConnectOptions, LeaseSpec, RemoteFile, RemotePin};

fn errname(e: &pinfs::Error) -> String {
    let n = e.errno();
    n.name().map_or_else(|| format!("E{}", n.0), str::to_owned)
}

fn num(s: Option<&str>) -> u64 {
    s.and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("usage: pinfs-test-client SOCKET [--signal N] CMD...");
        std::process::exit(2);
    };
    let mut cmds: Vec<String> = args.collect();
    let mut signal = None;
    if cmds.first().map(String::as_str) == Some("--signal") && cmds.len() >= 2 {
        signal = cmds[1].parse().ok();
        cmds.drain(..2);
    }
    let got_signal = Arc::new(AtomicBool::new(false));
    let sig = signal.unwrap_or(libc::SIGIO);
    if sig != 0 {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&got_signal)) {
            eprintln!("cannot handle signal {sig}: {e}");
            std::process::exit(2);
        }
    }
    let client = match Client::connect_with(&socket, ConnectOptions { signal }) {
        Ok(c) => c,
        Err(e) => {
            println!("connect err {}", errname(&e));
            std::process::exit(1);
        }
    };
    println!("connected {}", client.id());
    let mut file: Option<RemoteFile> = None;
    let mut lease: Option<LeaseId> = None;
    let mut pins: Vec<RemotePin> = Vec::new();
    for cmd in &cmds {
        let mut w = cmd.split_whitespace();
        let name = w.next().unwrap_or("");
        let (a, b) = (w.next(), w.next());
        let report = |r: pinfs::Result<String>| match r {
            Ok(s) if s.is_empty() => println!("{name} ok"),
            Ok(s) => println!("{name} ok {s}"),
            Err(e) => println!("{name} err {}", errname(&e)),
        };
        let need_file = || file.as_ref().ok_or(pinfs::Error::from(pinfs::Errno::EBADF));
        match name {
            "open" | "open-ro" | "open-rw" => {
                let flags = match name {
                    "open" => OpenFlags::CREATE,
                    "open-ro" => OpenFlags::RDONLY,
                    _ => OpenFlags::RDWR,
                };
                match client.open(a.unwrap_or("/"), flags, 0o644) {
                    Ok(f) => {
                        file = Some(f);
                        report(Ok(String::new()));
                    }
                    Err(e) => report(Err(e)),
                }
            }
            "write" => report(need_file().and_then(|f| {
                let data = vec![0xab; num(b) as usize];
                f.pwrite(num(a), &data).map(|n| n.to_string())
            })),
            "layout" | "exclusive" | "lease" => {
                let spec = match (name, a) {
                    ("layout", _) => LeaseSpec::layout_shared(),
                    ("exclusive", _) => LeaseSpec::layout_shared()
                        .unbreakable()
                        .range(ByteRange::from_len(num(a), num(b))),
                    (_, Some("read")) => LeaseSpec::read(),
                    _ => LeaseSpec::write(),
                };
                match need_file().and_then(|f| f.set_lease(spec)) {
                    Ok(id) => {
                        lease = Some(id);
                        report(Ok(id.0.to_string()));
                    }
                    Err(e) => report(Err(e)),
                }
            }
            "pin" => match need_file().and_then(|f| f.pin_long_term(num(a), num(b))) {
                Ok(p) => {
                    let id = p.id().0;
                    pins.push(p);
                    report(Ok(id.to_string()));
                }
                Err(e) => report(Err(e)),
            },
            "truncate" => {
                report(need_file().and_then(|f| f.truncate(num(a)).map(|()| String::new())))
            }
            "truncate-path" => report(
                client
                    .truncate_path(a.unwrap_or("/"), num(b))
                    .map(|()| String::new()),
            ),
            "release" => report(match lease.take() {
                Some(id) => client.release_lease(id).map(|()| String::new()),
                None => Err(pinfs::Errno::ENOENT.into()),
            }),
            "unpin" => {
                pins.clear();
                report(Ok(String::new()));
            }
            "react" => {
                let ev = loop {
                    match client.events().recv_timeout(Duration::from_secs(60)) {
                        Ok(Some(ev)) => break Some(ev),
                        Ok(None) => {}
                        Err(_) => break None,
                    }
                };
                match ev {
                    Some(ev) => println!("break {:?}", ev.kind),
                    None => println!("break none"),
                }
                // The signal is sent before the event is queued.
                let seen = got_signal.load(Ordering::SeqCst);
                println!("signal {}", if seen { "yes" } else { "no" });
                pins.clear();
                if let Some(id) = lease.take() {
                    let _ = client.release_lease(id);
                }
                println!("released");
            }
            "chaos" => chaos(&client, num(a), num(b), w.next() == Some("ignore")),
            "sleep" => std::thread::sleep(Duration::from_millis(num(a))),
            "ready" => println!("ready"),
            "hold" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            other => {
                println!("{other} err unknown-command");
            }
        }
    }
    drop(pins);
    drop(file);
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
}

fn chaos(client: &Client, seed: u64, ops: u64, ignore: bool) {
    const FILE_BYTES: u64 = 1 << 20;
    let mut rng = Rng(seed | 1);
    if !ignore {
        let c = client.clone();
        std::thread::spawn(move || loop {
            match c.events().recv_timeout(Duration::from_millis(100)) {
                Ok(Some(ev)) if ev.kind == pinfs::lease::EventKind::Break => {
                    let _ = c.release_lease(ev.lease.id);
                }
                Ok(_) => {}
                Err(e) if e.errno() == pinfs::Errno::EOVERFLOW => {}
                Err(_) => return,
            }
        });
    }
    let mut files: Vec<RemoteFile> = Vec::new();
    let mut leases: Vec<LeaseId> = Vec::new();
    let mut pins: Vec<RemotePin> = Vec::new();
    let mut errors = 0u64;
    for _ in 0..ops {
        let path = format!("/c{}", rng.below(4));
        let off = rng.below(FILE_BYTES / 4096) * 4096;
        let len = (1 + rng.below(16)) * 4096;
        let pick = rng.below(files.len() as u64) as usize;
        let r: pinfs::Result<()> = match rng.below(12) {
            0 | 1 => client.open(&path, OpenFlags::CREATE, 0o644).map(|f| {
                if files.len() >= 3 {
                    files.remove(0);
                }
                files.push(f);
            }),
            2 | 3 => files.get(pick).map_or(Ok(()), |f| {
                f.pwrite(off, &vec![seed as u8; len as usize]).map(drop)
            }),
            4 => files.get(pick).map_or(Ok(()), |f| {
                let mut b = vec![0u8; len as usize];
                f.pread(off, &mut b).map(drop)
            }),
            5 => files.get(pick).map_or(Ok(()), |f| {
                f.set_lease(LeaseSpec::layout_shared().nonblocking())
                    .map(|id| leases.push(id))
            }),
            6 => leases.pop().map_or(Ok(()), |id| client.release_lease(id)),
            7 => files.get(pick).map_or(Ok(()), |f| {
                let spec = LeaseSpec::layout_shared()
                    .unbreakable()
                    .range(ByteRange::from_len(off, len))
                    .nonblocking();
                let id = f.set_lease(spec)?;
                leases.push(id);
                let p = f.pin_long_term(off, len)?;
                pins.push(p);
                Ok(())
            }),
            8 => {
                if !pins.is_empty() {
                    let i = rng.below(pins.len() as u64) as usize;
                    pins.swap_remove(i);
                }
                Ok(())
            }
            9 => files
                .get(pick)
                .map_or(Ok(()), |f| f.truncate(rng.below(FILE_BYTES))),
            10 => files.get(pick).map_or(Ok(()), |f| {
                f.fallocate(pinfs::fs::FallocMode::PunchHole, off, len)
            }),
            _ => client.truncate_path(&path, rng.below(FILE_BYTES)),
        };
        if let Err(e) = r {
            let n = e.errno();
            if n == pinfs::Errno::ENOTCONN || n == pinfs::Errno::EPIPE {
                println!("chaos lost-connection");
                std::process::exit(3);
            }
            errors += 1;
        }
    }
    println!("chaos done {ops} {errors}");
}
