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
//! - `hold PATH PAGES`: map `PATH` (`MAP_SHARED`), store into every page,
//!   print `mapped`, then sleep until killed (a test stops it to model a
//!   client that does not acknowledge).

use std::io::Write;
use std::time::{Duration, Instant};

use pinfs::fs::{FallocMode, OpenFlags};
use pinfs::map::MAP_SHARED;
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
    // No lease-break signal: these clients hold no leases.
    let client = match Client::connect_with(&args[0], ConnectOptions { signal: Some(0) }) {
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
