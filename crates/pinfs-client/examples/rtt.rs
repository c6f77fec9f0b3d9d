//! Round-trip time of small requests through a daemon: `cargo run --release
//! -p pinfs-client --example rtt -- SOCKET [N]` times N (default 10,000)
//! `statfs` calls, N 4 KiB `pread`s and N/100 1 MiB `pread`s of one
//! client, and prints the mean per call — a quick look at the per-operation overhead, not a benchmark
//! with a baseline (`pinfs bench` has those).

use std::time::Instant;

use pinfs::fs::OpenFlags;
use pinfs_client::{Client, ConnectOptions};

fn main() -> pinfs::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("usage: rtt SOCKET [N]");
        std::process::exit(2);
    };
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let c = Client::connect_with(&socket, ConnectOptions { signal: Some(0) })?;
    let t = Instant::now();
    for _ in 0..n {
        c.statfs()?;
    }
    println!("statfs: {:?} per call", t.elapsed() / n);
    let f = c.open("/rtt", OpenFlags::CREATE, 0o644)?;
    f.pwrite(0, &vec![7u8; 1 << 20])?;
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        f.pread(0, &mut buf)?;
    }
    println!("pread 4 KiB: {:?} per call", t.elapsed() / n);
    let mut big = vec![0u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..n / 100 {
        f.pread(0, &mut big)?;
    }
    let per = t.elapsed() / (n / 100);
    println!(
        "pread 1 MiB: {per:?} per call ({:.0} MiB/s)",
        1.0 / per.as_secs_f64()
    );
    drop(f);
    c.unlink("/rtt")
}
