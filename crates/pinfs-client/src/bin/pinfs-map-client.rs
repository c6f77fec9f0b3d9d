//! A client process for the cross-process mapping tests: it maps a file of
//! a pinfs daemon into itself, or changes layouts, or checks files, and
//! prints one line of counts at the end (flushed), so a test can run
//! writers, layout changers and a checker as separate processes.
//!
//! `pinfs-map-client SOCKET CMD ARGS...`:
//! - `store PATH PAGES MILLIS TAG`: map `PATH` (`MAP_SHARED`, `PAGES`
//!   pages) and store 64-byte runs of `TAG` through the mapping for
//!   `MILLIS` ms (a store past a truncated end is refused, `EFAULT`, and
//!   counted apart); prints `stores N refused M`.
//! - `churn PATH PAGES MILLIS`: punch holes in `PATH` and truncate it down
//!   and back up for `MILLIS` ms; prints `changes N`.
//! - `check MILLIS`: for `MILLIS` ms, create files of 16 pages of `0x5a`
//!   and read each back three times; prints `corrupt N` (bytes that were
//!   not `0x5a`).
//! - `map PATH PAGES FLAGS`: map `PATH` with the raw `mmap` flag bits
//!   `FLAGS` (decimal) and print `mmap ok` or `mmap err ERRNO-NAME`.
//! - `direct PATH PAGES react|ignore`: what an RDMA application does — map
//!   `PATH` `MAP_SHARED_VALIDATE|MAP_DIRECT`, register the mapping with the
//!   daemon's soft device (print `registered`), and stream device writes
//!   into it; on a lease break (`SIGIO` and an event) either deregister and
//!   unmap (print `released signal yes|no writes N`, exit) or ignore it
//!   (print `break ignored`, go on until killed).
//! - `hold PATH PAGES`: map `PATH` (`MAP_SHARED`), store into every page,
//!   print `mapped`, then sleep until killed (a test stops it to model a
//!   client that does not acknowledge).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pinfs::dma::RevokeMode;

use pinfs::fs::{FallocMode, OpenFlags};
use pinfs::map::{MAP_DIRECT, MAP_SHARED, MAP_SHARED_VALIDATE};
use pinfs_client::{Client, ConnectOptions};

const PAGE: u64 = 4096;

fn num(s: Option<&String>) -> u64 {
    s.and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("pinfs-map-client: a number is missing or malformed");
        std::process::exit(2)
    })
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: pinfs-map-client SOCKET store|churn|check|hold ARGS...");
        std::process::exit(2);
    }
    // Only `direct` holds a lease and wants the lease-break signal.
    let got_signal = Arc::new(AtomicBool::new(false));
    let signal = if args[1] == "direct" {
        if let Err(e) = signal_hook::flag::register(libc::SIGIO, Arc::clone(&got_signal)) {
            eprintln!("pinfs-map-client: cannot handle SIGIO: {e}");
            std::process::exit(2);
        }
        None
    } else {
        Some(0)
    };
    let client = match Client::connect_with(&args[0], ConnectOptions { signal }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pinfs-map-client: connect: {e}");
            std::process::exit(1);
        }
    };
    let fail = |what: &str, e: pinfs::Error| -> ! {
        eprintln!("pinfs-map-client: {what}: {e}");
        std::process::exit(1)
    };
    match args[1].as_str() {
        "store" => {
            let (path, pages) = (&args[2], num(args.get(3)));
            let until = Instant::now() + Duration::from_millis(num(args.get(4)));
            let tag = [num(args.get(5)) as u8; 64];
            let f = client
                .open(path, OpenFlags::RDWR, 0)
                .unwrap_or_else(|e| fail("open", e));
            let m = f
                .mmap(0, pages * PAGE, MAP_SHARED)
                .unwrap_or_else(|e| fail("mmap", e));
            let (mut stores, mut refused, mut i) = (0u64, 0u64, 0u64);
            while Instant::now() < until {
                let page = i % pages;
                match m.write(page * PAGE + (i * 64) % PAGE, &tag) {
                    Ok(()) => stores += 1,
                    Err(_) => refused += 1,
                }
                i += 1;
            }
            drop(m);
            say(&format!("stores {stores} refused {refused}"));
        }
        "churn" => {
            let (path, pages) = (&args[2], num(args.get(3)));
            let until = Instant::now() + Duration::from_millis(num(args.get(4)));
            let f = client
                .open(path, OpenFlags::RDWR, 0)
                .unwrap_or_else(|e| fail("open", e));
            let (mut changes, mut i) = (0u64, 0u64);
            while Instant::now() < until {
                let at = (i * 7) % pages;
                if f.fallocate(FallocMode::PunchHole, at * PAGE, 2 * PAGE)
                    .is_ok()
                {
                    changes += 1;
                }
                if i.is_multiple_of(3) {
                    let _ = f.truncate((i % pages) * PAGE);
                    let _ = f.truncate(pages * PAGE);
                    changes += 2;
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            say(&format!("changes {changes}"));
        }
        "check" => {
            let until = Instant::now() + Duration::from_millis(num(args.get(2)));
            let (mut corrupt, mut r) = (0u64, 0u64);
            while Instant::now() < until {
                r += 1;
                let path = format!("/check{}", r % 4);
                let _ = client.unlink(&path);
                let f = client
                    .open(&path, OpenFlags::CREATE, 0o644)
                    .unwrap_or_else(|e| fail("create", e));
                f.pwrite(0, &vec![0x5a; 16 * PAGE as usize])
                    .unwrap_or_else(|e| fail("pwrite", e));
                for _ in 0..3 {
                    let mut buf = vec![0u8; 16 * PAGE as usize];
                    let n = f.pread(0, &mut buf).unwrap_or_else(|e| fail("pread", e));
                    corrupt += buf[..n].iter().filter(|&&b| b != 0x5a).count() as u64;
                }
            }
            say(&format!("corrupt {corrupt}"));
        }
        "map" => {
            let (path, pages, flags) = (&args[2], num(args.get(3)), num(args.get(4)) as u32);
            let f = client
                .open(path, OpenFlags::RDWR, 0)
                .unwrap_or_else(|e| fail("open", e));
            match f.mmap(0, pages * PAGE, flags) {
                Ok(_) => say("mmap ok"),
                Err(e) => {
                    let n = e.errno();
                    say(&format!(
                        "mmap err {}",
                        n.name().map_or_else(|| format!("E{}", n.0), str::to_owned)
                    ));
                }
            }
        }
        "direct" => {
            let (path, pages) = (&args[2], num(args.get(3)));
            let react = args.get(4).map(String::as_str) == Some("react");
            let f = client
                .open(path, OpenFlags::RDWR, 0)
                .unwrap_or_else(|e| fail("open", e));
            let m = f
                .mmap(0, pages * PAGE, MAP_SHARED_VALIDATE | MAP_DIRECT)
                .unwrap_or_else(|e| fail("mmap", e));
            let reg = m
                .register(0, pages * PAGE, RevokeMode::Invalidate)
                .unwrap_or_else(|e| fail("register", e));
            say("registered");
            let (mut writes, mut ignored) = (0u64, false);
            loop {
                // The device streams into the file (a peer's RDMA writes).
                if reg.write((writes % pages) * PAGE, b"stream").is_ok() {
                    writes += 1;
                }
                match client.events().recv_timeout(Duration::from_millis(5)) {
                    Ok(Some(_)) if react => break,
                    Ok(Some(_)) if !ignored => {
                        ignored = true;
                        say("break ignored");
                    }
                    Ok(_) => {}
                    Err(e) => fail("events", e),
                }
            }
            reg.deregister().unwrap_or_else(|e| fail("deregister", e));
            m.unmap().unwrap_or_else(|e| fail("unmap", e));
            let seen = if got_signal.load(Ordering::SeqCst) {
                "yes"
            } else {
                "no"
            };
            say(&format!("released signal {seen} writes {writes}"));
        }
        "hold" => {
            let (path, pages) = (&args[2], num(args.get(3)));
            let f = client
                .open(path, OpenFlags::RDWR, 0)
                .unwrap_or_else(|e| fail("open", e));
            let m = f
                .mmap(0, pages * PAGE, MAP_SHARED)
                .unwrap_or_else(|e| fail("mmap", e));
            for page in 0..pages {
                m.write(page * PAGE, &[0xee; 8])
                    .unwrap_or_else(|e| fail("store", e));
            }
            say("mapped");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        other => {
            eprintln!("pinfs-map-client: unknown command {other}");
            std::process::exit(2);
        }
    }
}
