//! Issue 10's many-clients test: at least 64 concurrent client processes
//! (`pinfs-random-worker`, each driven by a seed) take and break open and
//! layout leases, pin under unbreakable leases, open, write, truncate, punch
//! and zero on four shared files, against one daemon with a short
//! lease-break-time (0.3 s) and `Fence::Kill`, while the test SIGKILLs
//! workers at random moments (starting a new one for each). A few workers
//! ignore breaks: the daemon must fence (kill) them.
//!
//! Afterwards, asked by a fresh client: no other client, lease, pin,
//! registration, mapping or busy block remains; the daemon serves a new
//! client; and once stopped (the path SIGTERM takes in `pinfs serve`),
//! `fsck` of the pool is clean. The seed (`PINFS_SEED` replays one) and the
//! counts are printed. `PINFS_MANY_CLIENTS_LONG=1` runs a longer version.
//!
//! The negative control runs the same scenario with the daemon's cleanup of
//! gone clients switched off (`Server::disable_cleanup_for_tests`): the same
//! check must find what they left behind.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use pinfs::fs::{OpenFlags, TruncatePolicy};
use pinfs_client::{Client, ConnectOptions, Status};
use pinfs_server::Fence;
use support::{wait_until, Daemon, Proc};

const BREAK_TIME: Duration = Duration::from_millis(300);
/// Every this many workers, one ignores breaks (and is fenced).
const IGNORING_EVERY: usize = 16;

/// How big a run is.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Workers started at once (and kept running: each one killed is
    /// replaced).
    clients: usize,
    /// Operations per worker.
    ops: u64,
    /// Workers the test kills.
    kills: usize,
    /// Longest pause between two kills, in milliseconds.
    kill_gap_ms: u64,
}

impl Scale {
    fn default_run() -> Scale {
        if std::env::var_os("PINFS_MANY_CLIENTS_LONG").is_some() {
            Scale {
                clients: 96,
                ops: 2000,
                kills: 400,
                kill_gap_ms: 60,
            }
        } else {
            Scale {
                clients: 64,
                ops: 250,
                kills: 24,
                kill_gap_ms: 100,
            }
        }
    }
}

/// The seed: `PINFS_SEED`, or the clock.
fn seed() -> u64 {
    std::env::var("PINFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// splitmix64: the test's seeded generator (workers get seeds from it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a run did and what it left behind.
#[derive(Debug, Default)]
struct Outcome {
    started: usize,
    ignoring: usize,
    finished: usize,
    killed_by_test: usize,
    fenced_by_daemon: usize,
    ignoring_fenced: usize,
    /// Workers that ended any other way (a lost connection, a panic).
    failed: Vec<String>,
    ops: usize,
    op_errors: usize,
    /// Operations that succeeded, by name: what the storm did.
    done: BTreeMap<String, usize>,
    /// Refusals by operation and errno (`pin EPERM`): what the storm hit.
    refusals: BTreeMap<String, usize>,
    breaks: usize,
    released: usize,
    /// What the fresh client found once every worker was gone.
    leftovers: Vec<String>,
    /// The fresh client's own file round trip after the storm.
    new_client_served: bool,
}

impl Outcome {
    fn print(&self, seed: u64, scale: Scale, label: &str, took: Duration) {
        println!(
            "{label}: seed {seed} (replay: PINFS_SEED={seed}); clients started {} ({} ignoring breaks), finished {}, killed by the test {}, fenced by the daemon {} ({} of them ignoring breaks), failed {}; operations done {} ({} refused by the file system), lease breaks received {}, broken leases given up {}; {} ops per worker, {} kills planned; {:.1} s",
            self.started,
            self.ignoring,
            self.finished,
            self.killed_by_test,
            self.fenced_by_daemon,
            self.ignoring_fenced,
            self.failed.len(),
            self.ops,
            self.op_errors,
            self.breaks,
            self.released,
            scale.ops,
            scale.kills,
            took.as_secs_f64(),
        );
        println!("{label}: done: {:?}", self.done);
        println!("{label}: refusals: {:?}", self.refusals);
        println!("{label}: left behind: {:?}", self.leftovers);
    }
}

/// Everything `status` (asked by client `me`) shows that a finished storm
/// must not leave: other clients, leases, pins, registrations, mappings,
/// busy extents and busy blocks.
fn leftovers(status: &Status, me: u64) -> Vec<String> {
    let mut left = Vec::new();
    for c in &status.clients {
        if !c.mappings.is_empty() {
            left.push(format!("client {} mappings {:?}", c.client_id, c.mappings));
        }
        if c.client_id != me {
            left.push(format!(
                "client {} (pid {}, fenced {}, disconnected {}): {} handles, {} leases, {} pins, {} registrations",
                c.client_id,
                c.pid,
                c.fenced,
                c.disconnected,
                c.handles.len(),
                c.leases.len(),
                c.pins.len(),
                c.registrations.len()
            ));
        }
    }
    for l in &status.leases {
        left.push(format!("lease {} owner {} {:?}", l.id, l.owner.0, l.kind));
    }
    for p in &status.pins {
        left.push(format!("pin {} owner {}", p.id.0, p.owner));
    }
    for r in &status.registrations {
        left.push(format!("registration {} owner {}", r.id, r.owner));
    }
    if !status.busy_extents.is_empty() {
        left.push(format!("busy extents {:?}", status.busy_extents));
    }
    if status.statfs.busy != 0 {
        left.push(format!("busy blocks {}", status.statfs.busy));
    }
    left
}

/// A worker the test started.
struct Worker {
    proc: Proc,
    ignoring: bool,
}

fn spawn_worker(d: &Daemon, rng: &mut Rng, scale: Scale, ignoring: bool) -> Worker {
    let seed = rng.next().to_string();
    let ops = scale.ops.to_string();
    let mut args = vec![seed.as_str(), ops.as_str()];
    if ignoring {
        args.push("ignore");
    }
    Worker {
        proc: d.spawn_program(env!("CARGO_BIN_EXE_pinfs-random-worker"), None, &args),
        ignoring,
    }
}

/// Waits for worker `w` to end and counts what it did and how it ended.
fn tally(out: &mut Outcome, w: &mut Worker, killed: &HashSet<i32>) {
    // Bounded against a hang, not a timing assertion.
    let status = w.proc.wait_exit(Duration::from_secs(300));
    let lines = w.proc.all_lines().to_vec();
    out.ops += lines.iter().filter(|l| l.starts_with("op ")).count();
    for l in lines
        .iter()
        .filter(|l| l.starts_with("op ") && l.ends_with(" ok"))
    {
        *out.done.entry(l[3..l.len() - 3].to_owned()).or_default() += 1;
    }
    for l in lines
        .iter()
        .filter(|l| l.starts_with("op ") && !l.ends_with(" ok"))
    {
        out.op_errors += 1;
        *out.refusals.entry(l[3..].to_owned()).or_default() += 1;
    }
    out.breaks += lines
        .iter()
        .filter(|l| l.starts_with("break ") && l.ends_with(" Break"))
        .count();
    out.released += lines.iter().filter(|l| l.starts_with("released ")).count();
    let pid = w.proc.pid();
    match status {
        Some(st) if st.success() && !w.ignoring => out.finished += 1,
        Some(st) if st.signal() == Some(libc::SIGKILL) && killed.contains(&pid) => {
            out.killed_by_test += 1
        }
        Some(st) if st.signal() == Some(libc::SIGKILL) => {
            out.fenced_by_daemon += 1;
            out.ignoring_fenced += usize::from(w.ignoring);
        }
        other => out.failed.push(format!(
            "pid {pid} (ignoring {}): {other:?}, last lines {:?}",
            w.ignoring,
            &lines[lines.len().saturating_sub(5)..]
        )),
    }
}

/// The storm: `scale.clients` workers at once, `scale.kills` of them killed
/// at random moments (each replaced), the breaks-ignoring ones fenced at the
/// end; then what a fresh client finds. With `cleanup` false the daemon's
/// cleanup of gone clients is off (the negative control); the daemon is
/// returned so the caller decides how to stop it.
fn storm(seed: u64, scale: Scale, cleanup: bool) -> (Outcome, Daemon) {
    let mut rng = Rng(seed);
    let d = Daemon::start_with(TruncatePolicy::Defer, BREAK_TIME, Fence::Kill, |s| {
        if !cleanup {
            s.disable_cleanup_for_tests();
        }
    });
    let mut out = Outcome::default();
    let mut workers: Vec<Worker> = (0..scale.clients)
        .map(|i| {
            spawn_worker(
                &d,
                &mut rng,
                scale,
                i % IGNORING_EVERY == IGNORING_EVERY - 1,
            )
        })
        .collect();
    // Kill workers at random moments; each kill starts a new worker, so that
    // as many stay at work.
    let mut killed: HashSet<i32> = HashSet::new();
    for _ in 0..scale.kills {
        std::thread::sleep(Duration::from_millis(rng.below(scale.kill_gap_ms + 1)));
        let running: Vec<usize> = workers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, w)| {
                (!w.ignoring && matches!(w.proc.child.try_wait(), Ok(None))).then_some(i)
            })
            .collect();
        if running.is_empty() {
            break;
        }
        let i = running[rng.below(running.len() as u64) as usize];
        if workers[i].proc.child.kill().is_ok() {
            killed.insert(workers[i].proc.pid());
        }
        workers.push(spawn_worker(&d, &mut rng, scale, false));
    }
    out.started = workers.len();
    out.ignoring = workers.iter().filter(|w| w.ignoring).count();

    // The fresh client (events only: the test process takes no SIGIO).
    let c = Client::connect_with(&d.socket, ConnectOptions { signal: Some(0) })
        .expect("the daemon accepts a fresh client");
    // Workers that answer breaks run to their end.
    for w in workers.iter_mut().filter(|w| !w.ignoring) {
        tally(&mut out, w, &killed);
    }
    // Those that ignore breaks end holding a shared layout lease on /w0
    // (unless fenced already): a layout change there breaks it, and at
    // lease-break-time the daemon kills them. Unbreakable leases over /w0
    // of workers whose sessions are still ending refuse it (`ETXTBSY`) for
    // a moment: try again. With cleanup off they never go: one try.
    for w in workers.iter_mut().filter(|w| w.ignoring) {
        w.proc.expect_or_exit("holding");
    }
    let mut fencing_truncate = Err(pinfs::Errno::ETXTBSY.into());
    wait_until(|| {
        let grow = c.stat("/w0").map_or(4096, |s| s.size + 4096);
        fencing_truncate = c.truncate_path("/w0", grow);
        !cleanup || !matches!(&fencing_truncate, Err(e) if e.errno() == pinfs::Errno::ETXTBSY)
    });
    if cleanup {
        fencing_truncate.expect("the truncate that fences the breaks-ignoring workers");
    }
    for w in workers.iter_mut().filter(|w| w.ignoring) {
        tally(&mut out, w, &killed);
    }

    // What the storm left: once every worker's session is gone (with
    // cleanup off, once each is at least disconnected — nothing more will
    // happen to it), one snapshot.
    let me = c.id();
    let others_settled = |s: &Status| {
        s.clients.iter().filter(|cs| cs.client_id != me).all(|cs| {
            if cleanup {
                false
            } else {
                cs.disconnected
            }
        })
    };
    let settled = wait_until(|| c.status().is_ok_and(|s| others_settled(&s)));
    let status = c.status().expect("status from the fresh client");
    out.leftovers = leftovers(&status, me);
    if !settled {
        out.leftovers.push("sessions still ending".to_owned());
    }

    // The daemon still serves a new client.
    let fresh = Client::connect_with(&d.socket, ConnectOptions { signal: Some(0) })
        .expect("the daemon accepts a new client");
    out.new_client_served = (|| -> pinfs::Result<bool> {
        let f = fresh.open("/after-the-storm", OpenFlags::CREATE, 0o644)?;
        f.pwrite(0, b"still serving")?;
        let mut back = [0u8; 13];
        let n = f.pread(0, &mut back)?;
        Ok(n == back.len() && &back == b"still serving")
    })()
    .unwrap_or(false);
    (out, d)
}

#[test]
fn sixty_four_client_processes_killed_at_random_leave_nothing_behind() {
    let (seed, scale) = (seed(), Scale::default_run());
    println!("many clients: seed {seed} (replay: PINFS_SEED={seed})");
    let start = Instant::now();
    let (out, d) = storm(seed, scale, true);
    out.print(seed, scale, "many clients", start.elapsed());
    assert!(scale.clients >= 64);
    assert!(out.failed.is_empty(), "workers failed: {:#?}", out.failed);
    assert_eq!(
        out.ignoring_fenced, out.ignoring,
        "every worker that ignores breaks is fenced by the daemon"
    );
    assert!(out.killed_by_test > 0, "the test killed nobody");
    assert!(out.ops > 0 && out.breaks > 0, "the storm did nothing");
    assert!(
        out.leftovers.is_empty(),
        "left behind: {:#?}",
        out.leftovers
    );
    assert!(out.new_client_served, "the daemon no longer serves");
    d.stop_and_fsck();
}

/// The negative control: with the daemon's cleanup of gone clients off, the
/// same check finds what the dead and departed workers held.
#[test]
fn many_clients_negative_control_without_cleanup_leaves_state_behind() {
    let seed = seed();
    let scale = Scale {
        clients: 16,
        ops: 40,
        kills: 4,
        kill_gap_ms: 40,
    };
    let start = Instant::now();
    let (out, d) = storm(seed, scale, false);
    out.print(seed, scale, "many clients, cleanup off", start.elapsed());
    assert!(
        !out.leftovers.is_empty(),
        "with cleanup off the check must find leftovers (seed {seed})"
    );
    // Gone clients stay listed, holding what they held.
    assert!(
        out.leftovers.iter().any(|l| l.starts_with("client ")),
        "{:#?}",
        out.leftovers
    );
    assert!(out.new_client_served, "the daemon no longer serves");
    // The file system is still referenced by the sessions never cleaned up:
    // stop the daemon without the unmount check.
    drop(d);
}
