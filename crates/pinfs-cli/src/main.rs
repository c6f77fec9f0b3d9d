//! The `pinfs` command: the command-line edge of the pinfs library.
//!
//! It parses (clap), wires pools to the library and translates results into
//! text and exit statuses; the contract is `CLI.md`. Subcommands: `mkfs`,
//! `fsck`, `io` (the `xfs_io`-style script runner in [`io`]), `stat`, `serve`, `mount`, `demo`
//! and `bench`. Every failure of a subcommand is one line on stderr,
//! `pinfs: <error>`, and exit status 1 (see [`error`] for the wording);
//! `io` also exits 1 when any of its commands failed.

mod bench_dma;
mod bench_fs;
mod bench_fuse;
mod bench_huge;
mod bench_ipc;
mod bench_lease;
mod bench_limit;
mod bench_map;
mod bench_scale;
mod bench_target;
mod demo;
mod error;
mod fuse_mount;
mod io;
mod serve;
mod stat;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pinfs::fs::{Fs, MountOptions};
use pinfs::journal::Recovery;
use pinfs::media::{MappedPool, Media};

use crate::error::CliError;
use crate::io::{Settings, TruncatePolicy};

/// Size of a pool `mkfs` creates without `--size`, and of the volatile pool
/// of `io` without `--pool`.
const DEFAULT_POOL_BYTES: u64 = 256 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "pinfs",
    version,
    about = "A persistent-memory file system whose data can be pinned for long-term DMA",
    long_about = None,
    after_help = ENV_HELP
)]
struct Cli {
    /// Show the library's trace events on stderr (lease conflicts, breaks,
    /// revocations, pins, busy extents): -v info, -vv debug, -vvv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The environment variables, at the end of `pinfs --help`.
const ENV_HELP: &str = "\
Environment:
  PINFS_LOG, RUST_LOG  which library trace events reach stderr, in tracing's
                       filter syntax (e.g. `info`, `pinfs::lease=debug`);
                       PINFS_LOG wins over RUST_LOG, and both over -v.
                       Without any of them only errors are shown.

Exit status: 0 success; 1 any error (one line on stderr, `pinfs: ...`), or
for `io` any failed command. The full reference is docs/cli.md.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a file system on POOL (a file, created when missing; a file on
    /// /dev/shm or hugetlbfs; or a device-dax device).
    Mkfs {
        /// Overwrite a pool that already holds a pinfs file system.
        #[arg(short, long)]
        force: bool,
        /// Pool size (k/m/g suffixes; at least 4m). Default: the size of an
        /// existing pool, else 256m. Resizes an existing file (with -f when it
        /// holds a file system).
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes, allow_hyphen_values = true)]
        size: Option<u64>,
        /// The pool.
        pool: PathBuf,
    },
    /// Check a pool; exit 0 when consistent, else name each problem and exit 1.
    Fsck {
        /// The pool.
        pool: PathBuf,
    },
    /// Run xfs_io-style commands (-c, in order) against a pool; `pinfs io
    /// --help` lists them.
    #[command(after_help = IO_AFTER_HELP)]
    Io(IoArgs),
    /// Show a pool's space, inodes and journal.
    #[command(group = clap::ArgGroup::new("target").required(true).args(["pool", "socket"]))]
    Stat {
        /// The pool.
        pool: Option<PathBuf>,
        /// Ask the daemon serving this socket instead: its clients (pid,
        /// uid, what each holds), leases, pins, registrations, busy extents
        /// and space.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Serve POOL to client processes over a Unix socket (the daemon, in the
    /// foreground; SIGINT/SIGTERM stop it cleanly).
    Serve(serve::ServeArgs),
    /// Mount POOL's file system with FUSE at DIR, in the foreground, without
    /// a socket (SIGINT/SIGTERM or `fusermount3 -u DIR` end it).
    Mount(fuse_mount::MountArgs),
    /// The end-to-end scenario, narrated, on a volatile pool.
    Demo,
    /// Benchmarks, each printing ratios against a baseline measured in the same run.
    Bench {
        /// Which benchmark; all when omitted.
        name: Option<BenchName>,
        /// Shorter runs (for smoke tests).
        #[arg(long)]
        quick: bool,
        /// `bench map`: how its memfd pool gets 2 MiB pages — `auto` (as the
        /// kernel's settings say), `first-touch`, `collapse` (what a memfd
        /// does under shmem_enabled=never), `none` (4 KiB pages only).
        #[arg(long, value_enum, default_value = "auto")]
        huge: bench_map::HugeChoice,
    },
    /// A helper process of `pinfs bench ipc` (started by it).
    #[command(hide = true)]
    BenchIpcHelper {
        /// The helper's role and arguments.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
}

/// The end of `pinfs io --help` (and `pinfs help io`): every command, in
/// short; docs/cli.md has the full reference.
const IO_AFTER_HELP: &str = "\
Script: each -c is one command, run in order against the actor's current file
(like xfs_io). `@NAME CMD` runs CMD as actor NAME (its own identity, files,
mappings, pins, leases and thread; no prefix = @main); `CMD &` runs it in the
background; `@NAME wait` collects its background results (`wait: nothing
pending` when there are none). OFF/LEN take k/m/g suffixes or 0x hex; a
failing command prints `CMD: MESSAGE` on stderr (strerror text) and the run
goes on; io exits 1 if any command failed.

Files:
  open [-r] [-w] [-c] [-t] [-n] PATH   current file; -r read-only, -w write-only,
                                       -c create, -t truncate, -n non-blocking
  close                                close the current file
  pwrite [-S BYTE] OFF LEN             prints `wrote LEN/LEN bytes at offset OFF`
  pread [-v] OFF LEN                   prints `read N/LEN bytes at offset OFF`;
                                       -v dumps the bytes as xfs_io does
  truncate LEN | truncate -p PATH LEN  ftruncate(2) / truncate(2) by path
  falloc [-k] OFF LEN                  allocate unwritten; -k keep size
  fpunch | fzero [-k] | fcollapse | finsert OFF LEN
  reflink SRC [SRC_OFF DST_OFF LEN]    clone SRC (or a range) into the current file
  fsync
  stat      `size N`, `blocks N`, `extents N`
  fiemap    one line per extent: `LOGICAL PHYSICAL LEN unwritten|shared|-`
  statfs    `blocks N`, `free N`, `busy N` (4 KiB blocks)
  unlink PATH, mkdir PATH, rmdir PATH, rename FROM TO, ls [PATH]

Leases (on the current file):
  lease read|write|none [--layout] [--exclusive] [--range OFF LEN]
      read = F_RDLCK, write = F_WRLCK, none = F_UNLCK (release); --layout: a
      layout lease; --exclusive: unbreakable (F_LAYOUT|F_EXCLUSIVE)
  getlease      `read`, `write` or `none` (the target type while a break is pending)
  wait-break MS waits up to MS for a notification to this actor:
      break FILE read|none   being broken: downgrade to read / release
      break FILE refused     a layout change was refused (Text file busy) because
                             of this actor's unbreakable layout lease, or of
                             its pins (--policy fail)
      break FILE lost        lease-break-time passed: the lease was removed
      break FILE downgraded  lease-break-time passed: downgraded to read
      or fails with `wait-break: Connection timed out`
  leases        every lease, as /proc/locks:
      ID LEASE|LAYOUT TYPE ACTIVE|BREAKING @ACTOR PATH START END

Mappings and pins (on the current file / mapping):
  mmap [-r] [-s] [-d] [-F HEXFLAGS] OFF LEN   -r read-only, -s MAP_SYNC,
                                       -d MAP_DIRECT, -F raw MAP_SHARED_VALIDATE bits
  mwrite [-S BYTE] OFF LEN, mread [-v] OFF LEN   store/load (a fault fails with SIGBUS)
  persist OFF LEN   flush a range of the mapping to the media
  munmap
  mstat     `offset N`, `length N`, `flags ...`, `huge N`
  pin OFF LEN       long-term pin of a range of the mapping; prints `pin ID`
  unpin ID
  pins      per actor a line `@ACTOR`, then `<TAB>PATH START END` per pinned range
            (a registration's: `... DEVICE mr ID`; on-demand ones `... mr ID odp`)

Devices (on the current mapping; devices are created once per run):
  dma-reg [--device soft|uring] [--revoke invalidate|redirect|odp] OFF LEN
      register a range of the mapping (default soft, invalidate); prints
      `mr ID iova 0xADDR lkey 0xK rkey 0xK`. Needs MAP_DIRECT, or the actor's
      unbreakable layout lease over the range, or --revoke odp
  dma-write [-S BYTE] ID OFF LEN, dma-read [-v] ID OFF LEN
      the device writes/reads through registration ID; prints the completion
      status (`ok`, `protection-error`, ...); not ok also fails the command
  dma-stream [-S BYTE] ID OFF LEN   (with &) the device writes in a loop until
      dma-stop ID or deregistration; prints `dma-stream: N writes (ok X, ...)`
  dma-stop ID
  dma-dereg ID      deregister (only the registering actor)

Other: sleep MS, echo TEXT.
With --socket, each actor is its own client of the daemon (mappings are made
in this process; devices are the daemon's soft device); mstat and the uring
device are in-process only (`CMD: Operation not supported`).";

/// Options of `pinfs io`.
#[derive(Args, Debug)]
struct IoArgs {
    /// Work in-process on this existing pool. Without it, `io` runs on a
    /// volatile 256 MiB pool (a memfd) formatted on the fly and gone at exit:
    /// handy for scripts and tests.
    #[arg(long, value_name = "POOL")]
    pool: Option<PathBuf>,
    /// Be a client of the daemon serving this socket (`pinfs serve`): each
    /// actor is its own connection; --policy and --break-time are the
    /// daemon's then. `mstat` and `--device uring` are in-process only
    /// (`Operation not supported`).
    #[arg(long, value_name = "PATH", conflicts_with = "pool")]
    socket: Option<PathBuf>,
    /// What a layout change does about long-term-pinned blocks (SPEC §4.3):
    ///   fail   — fails at once with "Text file busy", changes nothing;
    ///   wait   — breaks layout leases, waits up to lease-break-time for the
    ///            pins to drop, then "Text file busy";
    ///   defer  — completes at once; pinned blocks stay busy (not reused)
    ///            until their last pin drops;
    ///   revoke — breaks layout leases; at lease-break-time revokes device
    ///            access, then frees the blocks.
    #[arg(
        long,
        value_name = "fail|wait|defer|revoke",
        default_value = "defer",
        value_parser = parse_policy,
        verbatim_doc_comment
    )]
    policy: TruncatePolicy,
    /// lease-break-time in seconds (fractions allowed; 0 = never force).
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = io::parse_break_time,
        default_value = "45",
        allow_hyphen_values = true
    )]
    break_time: Duration,
    /// A command (listed below); repeat for a script. `@NAME CMD` runs it
    /// in actor NAME; a trailing ` &` runs it in the background.
    #[arg(
        short = 'c',
        value_name = "CMD",
        required = true,
        allow_hyphen_values = true
    )]
    commands: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BenchName {
    /// File-system throughput against tmpfs.
    Fs,
    /// The lease engine.
    Lease,
    /// Layout changes over long-term-pinned files.
    Map,
    /// Device registrations, device writes and revocation (soft and uring).
    Dma,
    /// The daemon: lease breaks across processes, small operations and
    /// mapped bandwidth in a client, against the kernel.
    Ipc,
    /// mkfs, mount, fsck and resident memory of pools up to 1 TiB, vs XFS.
    Scale,
    /// The FUSE mount: throughput and metadata rates against tmpfs and
    /// against a FUSE file system that does nothing.
    Fuse,
}

/// `--size`: a size with k/m/g suffixes (the one number parser of `io`).
fn parse_bytes(s: &str) -> Result<u64, String> {
    io::parse::number::size(s)
}

/// Parse the command line. `--help` and `--version` print and exit 0;
/// any other mistake is one line, `pinfs: ...`, and exit status 1 (as every
/// other bad input), not clap's multi-line report and status 2.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return Err(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    },
                );
            }
            eprintln!("pinfs: {}", one_line(&e.render().to_string()));
            Err(ExitCode::FAILURE)
        }
    }
}

/// Clap's report in one line: without `error: `, the usage and the "for
/// more information" lines (`--help` has those), the rest joined.
fn one_line(report: &str) -> String {
    let mut words = Vec::new();
    for line in report.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("For more information")
        {
            continue;
        }
        words.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
    }
    let text = words.join(" ");
    // "for more information, try '--help'" sometimes shares the line.
    text.replace("  ", " ")
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // A daemon tells its operator why it drops or fences a client.
    init_tracing(
        cli.verbose,
        matches!(cli.command, Command::Serve(_) | Command::Mount(_)),
    );
    let result = match cli.command {
        Command::Mkfs { force, size, pool } => mkfs(&pool, size, force),
        Command::Fsck { pool } => fsck(&pool),
        Command::Io(args) => match run_io(args) {
            Ok(true) => Ok(()),
            // The failing commands have been reported one by one.
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Stat { pool, socket } => match (pool, socket) {
            (Some(pool), None) => stat(&pool),
            (None, Some(socket)) => stat::stat_socket(&socket),
            // clap's group makes them exclusive.
            _ => Err(CliError::NotSupported {
                what: "POOL with --socket",
            }),
        },
        Command::Serve(args) => serve::run(args),
        Command::Mount(args) => fuse_mount::run(args),
        Command::Demo => demo::run().map_err(CliError::Other),
        Command::Bench { name, quick, huge } => bench(name, quick, huge),
        Command::BenchIpcHelper { args } => bench_ipc::helper(&args).map_err(CliError::Other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pinfs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Library trace events go to stderr only when asked for: `PINFS_LOG`, else
/// `RUST_LOG` (tracing's filter syntax), else `-v` (info, debug, trace);
/// without any, errors only — the demo and `io` tell their own story on
/// stdout, and a forcibly broken lease is theirs to report, not a log line
/// in the middle of it. Colours only on a terminal, so that scripts capture
/// plain text.
fn init_tracing(verbose: u8, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PINFS_LOG")
        .or_else(|_| EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| {
            EnvFilter::new(match verbose {
                0 if daemon => "error,pinfs::server=warn,pinfs::fuse=warn",
                0 => "error",
                1 => "info",
                2 => "debug",
                _ => "trace",
            })
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Open an existing pool.
fn open_pool(path: &Path) -> Result<MappedPool, CliError> {
    MappedPool::open(path).map_err(|e| CliError::pool(path, e))
}

/// Open and mount an existing pool.
fn mount(path: &Path, options: MountOptions) -> Result<Arc<Fs>, CliError> {
    let pool = open_pool(path)?;
    Fs::mount_with(Arc::new(pool), options).map_err(|e| CliError::pool(path, e))
}

/// A fresh volatile pool (memfd), formatted and mounted.
fn volatile_fs(size_bytes: u64, options: MountOptions) -> Result<Arc<Fs>, CliError> {
    let pool = MappedPool::memfd(size_bytes).map_err(CliError::Volatile)?;
    Fs::mkfs(&pool).map_err(CliError::Volatile)?;
    Fs::mount_with(Arc::new(pool), options).map_err(CliError::Volatile)
}

/// `pinfs mkfs`. A missing pool file is created exclusively (`O_EXCL`), so
/// mkfs knows it made it and removes it again when it fails: a failed mkfs
/// leaves nothing behind. An existing pool is opened (and so locked: a
/// mounted pool is `EBUSY`) before anything is said about it, is refused
/// when it holds anything but zeros unless `-f`, and keeps its size unless
/// `--size` says otherwise.
fn mkfs(path: &Path, size: Option<u64>, force: bool) -> Result<(), CliError> {
    // Checked before anything is created: a size the file system cannot use.
    if let Some(size) = size {
        check_fs_size(path, size)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pool = MappedPool::create_new(path, size.unwrap_or(DEFAULT_POOL_BYTES))
                .map_err(|e| CliError::pool(path, e))?;
            let made = format_pool(path, pool);
            if made.is_err() {
                let _ = std::fs::remove_file(path);
            }
            made
        }
        Err(e) => Err(CliError::pool(
            path,
            pinfs::Error::media(format!("stat {}", path.display()), e),
        )),
        Ok(meta) => {
            let existing = MappedPool::open(path);
            if let Err(e) = &existing {
                if e.errno() == pinfs::Errno::EBUSY {
                    return Err(CliError::pool(path, existing.unwrap_err()));
                }
            }
            if !force {
                if let Some(what) = occupant(path, existing.as_ref().ok()) {
                    return Err(CliError::Exists {
                        path: path.to_path_buf(),
                        what,
                    });
                }
            }
            let pool = match (existing, size) {
                // An existing pool keeps its size: mkfs never shrinks silently.
                (Ok(pool), None) => Ok(pool),
                (Ok(pool), Some(size)) if pool.len_bytes() == size => Ok(pool),
                (existing, Some(size)) => {
                    drop(existing);
                    MappedPool::create(path, size)
                }
                (Err(_), None) if meta.is_file() && meta.len() == 0 => {
                    MappedPool::create(path, DEFAULT_POOL_BYTES)
                }
                (Err(e), None) => Err(e),
            }
            .map_err(|e| CliError::pool(path, e))?;
            format_pool(path, pool)
        }
    }
}

/// `EINVAL` for a pool size below the file system's minimum (the library's
/// own check, made before anything is created).
fn check_fs_size(path: &Path, size: u64) -> Result<(), CliError> {
    Fs::check_pool_size(size).map_err(|e| CliError::pool(path, e))
}

/// What an existing pool holds in its first block, when it holds anything
/// but zeros: a pinfs file system (its version and size, or that its
/// superblock is damaged), or data of something else — either of which a
/// mkfs without `-f` must not destroy. Read through the opened pool when
/// there is one (a device-dax pool cannot be `read(2)`), else through a
/// plain descriptor (a file too small to be a pool).
fn occupant(path: &Path, pool: Option<&MappedPool>) -> Option<String> {
    use pinfs::format::{Superblock, BLOCK_SIZE, SUPER_MAGIC};
    let mut head = vec![0u8; BLOCK_SIZE as usize];
    let len = match pool {
        Some(pool) => {
            let n = head.len().min(pool.len_bytes() as usize);
            pool.read(0, &mut head[..n]).ok()?;
            n
        }
        None => {
            use std::io::Read;
            let mut file = std::fs::File::open(path).ok()?;
            let mut n = 0;
            while n < head.len() {
                match file.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(_) => return None,
                }
            }
            n
        }
    };
    let head = &head[..len];
    if head.iter().all(|&b| b == 0) {
        return None;
    }
    if head.len() < 8 || head[..8] != SUPER_MAGIC {
        return Some("data that is not a pinfs file system".into());
    }
    let pool_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let pool_bytes = pool.map_or(pool_bytes, |p| p.len_bytes());
    Some(
        match pinfs::format::decode::<Superblock>(head, "superblock") {
            Ok(sb) if sb.validate(pool_bytes).is_ok() => format!(
                "a pinfs file system (format version {}, {} bytes)",
                sb.version.get(),
                sb.total_blocks.get().saturating_mul(BLOCK_SIZE)
            ),
            _ => "a damaged pinfs file system".into(),
        },
    )
}

/// Format `pool` and say what it is.
fn format_pool(path: &Path, pool: MappedPool) -> Result<(), CliError> {
    Fs::mkfs(&pool).map_err(|e| CliError::pool(path, e))?;
    let caps = pool.caps();
    let len_bytes = pool.len_bytes();
    let fs = Fs::mount(Arc::new(pool)).map_err(|e| CliError::pool(path, e))?;
    let st = fs.statfs();
    println!(
        "{}: {len_bytes} bytes, {} data blocks of 4 KiB, {} inodes; {caps}",
        path.display(),
        st.blocks,
        st.inodes
    );
    Ok(())
}

/// What journal recovery did, in words.
fn recovery_text(r: Recovery) -> String {
    match r {
        Recovery::Clean => "journal clean, nothing to replay".to_string(),
        Recovery::Replayed { seq, bytes } => {
            format!("journal replayed transaction {seq} ({bytes} bytes)")
        }
        Recovery::TornHeaderDiscarded => {
            "journal discarded a torn commit (a crash during commit)".to_string()
        }
    }
}

fn fsck(path: &Path) -> Result<(), CliError> {
    let pool = open_pool(path)?;
    let report = Fs::fsck(&pool).map_err(|e| CliError::pool(path, e))?;
    let recovery = recovery_text(report.recovery);
    if report.problems.is_empty() {
        println!(
            "{}: consistent; {recovery}; {} inodes, {} data blocks in use",
            path.display(),
            report.inodes,
            report.used_blocks
        );
        return Ok(());
    }
    println!("{}: {recovery}", path.display());
    for problem in &report.problems {
        println!("{problem}");
    }
    Err(CliError::Inconsistent {
        path: path.to_path_buf(),
        problems: report.problems.len(),
    })
}

/// `--policy fail|wait|defer|revoke`.
fn parse_policy(s: &str) -> Result<TruncatePolicy, String> {
    s.parse()
        .map_err(|_| format!("unknown policy {s:?} (fail, wait, defer or revoke)"))
}

/// `pinfs io`: `Ok(false)` when some command failed.
fn run_io(args: IoArgs) -> Result<bool, CliError> {
    let settings = Settings {
        policy: args.policy,
        break_time: args.break_time,
    };
    let options = MountOptions {
        break_time: settings.break_time,
        policy: settings.policy,
    };
    let target = match (&args.socket, &args.pool) {
        // The first actor's connection, made now: a socket nobody serves is
        // one error naming it, before the script starts.
        (Some(socket), _) => {
            // The daemon signals a holder's process on a lease break (SIGIO,
            // whose default action ends it); io's actors take their
            // notifications from their connections' event queues, so the
            // signal is only counted.
            signal_hook::flag::register(
                signal_hook::consts::SIGIO,
                std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            )
            .map_err(|e| CliError::Socket {
                path: socket.clone(),
                source: pinfs::Errno(e.raw_os_error().unwrap_or(libc::EINVAL)).into(),
            })?;
            let client = pinfs_client::Client::connect(socket).map_err(|e| CliError::Socket {
                path: socket.clone(),
                source: e,
            })?;
            io::Target::Daemon(socket.clone(), client)
        }
        (None, Some(path)) => io::Target::Local(mount(path, options)?),
        (None, None) => io::Target::Local(volatile_fs(DEFAULT_POOL_BYTES, options)?),
    };
    Ok(io::run(target, settings, &args.commands))
}

/// `pinfs stat POOL`.
fn stat(path: &Path) -> Result<(), CliError> {
    let fs = mount(path, MountOptions::default())?;
    stat::stat_pool(&fs);
    Ok(())
}

fn bench(
    name: Option<BenchName>,
    quick: bool,
    huge: bench_map::HugeChoice,
) -> Result<(), CliError> {
    let run = |b: BenchName| match b {
        BenchName::Fs => bench_fs::run(quick),
        BenchName::Lease => bench_lease::run(quick),
        BenchName::Map => bench_map::run(quick, huge),
        BenchName::Dma => bench_dma::run(quick),
        BenchName::Ipc => bench_ipc::run(quick),
        BenchName::Scale => bench_scale::run(quick),
        BenchName::Fuse => bench_fuse::run(quick),
    };
    let chosen = match name {
        Some(b) => vec![b],
        None => vec![
            BenchName::Fs,
            BenchName::Lease,
            BenchName::Map,
            BenchName::Dma,
            BenchName::Ipc,
            BenchName::Scale,
            BenchName::Fuse,
        ],
    };
    for b in chosen {
        run(b).map_err(CliError::Other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn io_options() {
        let cli = Cli::try_parse_from([
            "pinfs",
            "io",
            "--policy",
            "revoke",
            "--break-time",
            "0.5",
            "-c",
            "open -c /f",
            "-c",
            "@a pwrite 0 4k &",
        ])
        .unwrap();
        let Command::Io(args) = cli.command else {
            panic!("not io")
        };
        assert_eq!(args.policy, TruncatePolicy::Revoke);
        assert_eq!(args.break_time, Duration::from_millis(500));
        assert_eq!(args.commands, ["open -c /f", "@a pwrite 0 4k &"]);
        assert!(Cli::try_parse_from(["pinfs", "io", "--policy", "x", "-c", "echo"]).is_err());
        assert!(Cli::try_parse_from(["pinfs", "io", "--break-time", "-1", "-c", "echo"]).is_err());
        assert!(Cli::try_parse_from(["pinfs", "io"]).is_err());
    }
}
