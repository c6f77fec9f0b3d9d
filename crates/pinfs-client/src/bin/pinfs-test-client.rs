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
