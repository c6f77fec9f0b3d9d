//! `pinfs io`: the script runner, modelled on `xfs_io` (CLI.md "`io`
//! commands").
//!
//! A script is the list of `-c` commands, run in order. Each command belongs
//! to an *actor* (`@NAME`, or `@main` without a prefix): something like a
//! separate process, with its own identity ([`Cred`] with a unique owner),
//! its own current file, and its own thread, on which its commands run one
//! after the other. The runner (the calling thread) hands each command to its
//! actor and, unless the command ends in ` &`, waits for it before moving on;
//! `@NAME wait` waits for that actor's background commands and prints their
//! results. Actors are what let a script hold a lease in one actor while
//! another truncates, and watch the break happen.
//!
//! Output is atomic per command: a foreground command writes straight to
//! stdout while the runner (the only other writer) waits for it; a background
//! command's output is held and printed by the runner when it is waited for.
//! Failures are printed by the runner only, as `CMD: MESSAGE` on stderr
//! ([`CmdError`]'s `Display` is the one translation to text).
//!
//! Commands live in command sets, one module per concept, tried in turn by
//! [`dispatch`]: `file_cmds` (files and the namespace), `lease_cmds`
//! (leases and their break notifications) and `other_cmds` (`sleep`,
//! `echo`). Mapping and pin commands arrive as further modules
//! (`map_cmds.rs`, `pin_cmds.rs`, `dma_cmds.rs`) added to [`COMMAND_SETS`], with their per-actor state
//! added to [`Actor`] and shared state to [`Shared`].
//!
//! Each actor is a lease owner ([`OwnerId`] = its `Cred::owner`). Its event
//! queue is created with the actor, before it runs anything, so that no
//! break notification addressed to it is lost; when the actor ends, its
//! handles close and the engine forgets the owner
//! ([`pinfs::lease::LeaseEngine::drop_owner`]), as at a process exit.

pub mod backend;
mod dma_cmds;
mod dump;
mod file_cmds;
pub mod lease_cmds;
mod map_cmds;
mod other_cmds;
pub mod parse;
mod pin_cmds;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use pinfs::fs::{Cred, Fs};
use pinfs::lease::{FileKey, OwnerId};
use pinfs::Errno;
use pinfs_client::Client;

use self::backend::{Conn, File};
use self::parse::{Line, MAIN_ACTOR};
use crate::error::CmdError;

/// Most actors one script may start (each is a thread).
pub const MAX_ACTORS: usize = 64;

/// Most background commands one actor may have outstanding (not yet waited for).
pub const MAX_PENDING: usize = 1024;

/// Longest lease-break-time accepted, in seconds (a day).
pub const MAX_BREAK_TIME_SECS: f64 = pinfs::lease::MAX_BREAK_TIME_SECS;

/// Most files whose path a run remembers for the `leases` listing and
/// `wait-break` (each distinct file opened adds one); past it, new files
/// show as `?`.
pub const MAX_KNOWN_PATHS: usize = 65_536;

/// What a layout change does about long-term-pinned blocks (`--policy`,
/// SPEC §4.3): the library's type.
pub use pinfs::fs::TruncatePolicy;

/// Settings of a run, from the command line; both are given to the file
/// system at mount (`MountOptions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The truncate policy.
    pub policy: TruncatePolicy,
    /// lease-break-time; zero means breaks are never forced.
    pub break_time: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: TruncatePolicy::Defer,
            break_time: Duration::from_secs(45),
        }
    }
}

/// Parse `--break-time SECONDS`: a non-negative decimal, fractions allowed
/// (`0.5`), at most [`MAX_BREAK_TIME_SECS`]; `0` means never force.
pub fn parse_break_time(s: &str) -> Result<Duration, String> {
    // Through the library's one conversion: a positive time, however small,
    // never rounds down to 0 ("never force").
    let secs = parse::number::seconds_f64(s, MAX_BREAK_TIME_SECS)?;
    pinfs::lease::break_time_from_secs(secs).map_err(|e| format!("\"{s}\": {e}"))
}

/// How an owner that no script named is shown (`@owner-7`): every output
/// names an actor the same way, `@NAME`, whether a script named it or not.
pub fn unnamed_actor(owner: OwnerId) -> String {
    format!("@owner-{}", owner.0)
}

/// What every actor of a run shares.
#[derive(Debug)]
pub struct Shared {
    /// The mounted file system, when the run is in process (`None` through
    /// a daemon).
    fs: Option<Arc<Fs>>,
    /// The daemon's socket, when the run is its client (`--socket`).
    socket: Option<PathBuf>,
    /// A connection made before the run (checking the socket), which the
    /// first actor takes over.
    first_client: Mutex<Option<Client>>,
    /// Actor names by daemon client id (for the listings the daemon answers).
    clients: Mutex<HashMap<u64, String>>,
    /// The run's settings.
    // `policy` is read by the pin commands that arrive with later work.
    #[allow(dead_code)]
    pub settings: Settings,
    /// Actor names by lease owner (for the `leases` listing).
    names: Mutex<HashMap<OwnerId, String>>,
    /// The path each file was last opened (or leased) by, for the `leases`
    /// listing and `wait-break`. A rename afterwards is not seen: the
    /// listing shows the path as the script last named it.
    paths: Mutex<HashMap<FileKey, String>>,
    /// The run's devices and registrations (`dma-*` commands).
    pub dma: dma_cmds::DmaState,
}

impl Shared {
    fn new(
        fs: Option<Arc<Fs>>,
        socket: Option<Client>,
        path: Option<PathBuf>,
        settings: Settings,
    ) -> Self {
        Shared {
            fs,
            socket: path,
            first_client: Mutex::new(socket),
            clients: Mutex::new(HashMap::new()),
            settings,
            names: Mutex::new(HashMap::new()),
            paths: Mutex::new(HashMap::new()),
            dma: Default::default(),
        }
    }

    /// The in-process file system, or `EOPNOTSUPP` through a daemon: what
    /// the commands the daemon does not offer yet (mappings, devices) ask
    /// for first, so that each says `CMD: Operation not supported`.
    pub fn fs(&self) -> Result<&Arc<Fs>, CmdError> {
        self.fs.as_ref().ok_or(CmdError::Errno(Errno::EOPNOTSUPP))
    }

    /// A new actor's connection, as lease owner `owner`. In process, its
    /// event queue is created here, before the actor can hold a lease, so
    /// that no notification addressed to it is lost.
    fn connect(&self, owner: OwnerId, name: &str) -> Result<Conn, CmdError> {
        if let Some(socket) = &self.socket {
            let client = match self.first_client.lock().take() {
                Some(c) => c,
                None => Client::connect(socket)?,
            };
            self.clients.lock().insert(client.id(), name.to_string());
            return Ok(Conn::Remote(client));
        }
        let fs = self.fs()?;
        let events = fs.leases().owner_events(owner)?;
        Ok(Conn::Local {
            fs: fs.clone(),
            cred: Cred::root_as(owner.0),
            events,
        })
    }

    /// Remember that `owner` is actor `name`.
    fn name_owner(&self, owner: OwnerId, name: &str) {
        self.names.lock().insert(owner, name.to_string());
    }

    /// `@NAME` of a lease owner ([`unnamed_actor`] for an owner that is no
    /// actor of this run).
    pub fn actor_label(&self, owner: OwnerId) -> String {
        match self.names.lock().get(&owner) {
            Some(name) => format!("@{name}"),
            None => unnamed_actor(owner),
        }
    }

    /// How the listings the daemon answers name a lease or pin owner: an
    /// actor of this run by its `@NAME`, any other client as
    /// `@client-ID` (`pinfs stat --socket` maps ids to processes).
    pub fn client_label(&self, status: &pinfs_client::Status, owner: u64) -> String {
        crate::stat::owner_label(status, owner, &self.clients.lock())
    }

    /// The `pins` listing of a daemon's `Status`, actors by name.
    pub fn status_pin_lines(&self, status: &pinfs_client::Status) -> Vec<String> {
        crate::stat::status_pin_lines(status, &self.clients.lock())
    }

    /// Remember that `file` goes by `path` (up to [`MAX_KNOWN_PATHS`]
    /// files; a known file's path is always updated).
    pub fn remember_path(&self, file: FileKey, path: &str) {
        let mut paths = self.paths.lock();
        if paths.len() < MAX_KNOWN_PATHS || paths.contains_key(&file) {
            paths.insert(file, path.to_string());
        }
    }

    /// The path of inode `ino` (whatever its generation), or `?`.
    pub fn path_of_ino(&self, ino: u64) -> String {
        self.paths
            .lock()
            .iter()
            .find(|(k, _)| k.0 & 0xffff_ffff == ino)
            .map_or_else(|| "?".to_string(), |(_, p)| p.clone())
    }

    /// The path `file` was last opened by, or `?`.
    pub fn path_of(&self, file: FileKey) -> String {
        self.paths
            .lock()
            .get(&file)
            .cloned()
            .unwrap_or_else(|| "?".to_string())
    }
}

/// An open file, as an actor's current file.
#[derive(Debug)]
pub struct OpenFile {
    /// The open file description (in process or through the daemon).
    pub handle: File,
    /// The path it was opened by (what the `leases` listing shows for the
    /// leases set through it).
    pub path: String,
}

/// One actor: its identity and everything it holds, owned by its thread.
///
/// Its leases live in the lease engine, bound to its handles (closing a
/// handle releases them). Later work adds here what else an actor holds:
/// its mappings (current mapping first) and pins. Dropping an actor
/// releases all of it, as a process exit does.
#[derive(Debug)]
pub struct Actor {
    /// The name, without `@` (for the `pins` listing of later work).
    #[allow(dead_code)]
    pub name: String,
    /// Owner of its leases, pins and registrations.
    pub owner: OwnerId,
    /// Its connection: identity for permission checks, the lease-break
    /// notifications addressed to it (`wait-break`).
    pub conn: Conn,
    /// The current file (`open`, `close`).
    pub file: Option<OpenFile>,
    /// Its current mapping (`mmap`; dropped by `munmap` or the actor's end).
    pub mapping: Option<backend::HeldMap>,
    /// Its long-term pins, by id (dropped by `unpin` or the actor's end).
    pub pins: std::collections::BTreeMap<u64, backend::HeldPin>,
}

impl Actor {
    fn new(name: &str, owner: OwnerId, conn: Conn) -> Self {
        Actor {
            name: name.to_string(),
            owner,
            conn,
            file: None,
            mapping: None,
            pins: std::collections::BTreeMap::new(),
        }
    }

    /// The actor as a lease owner.
    pub fn owner(&self) -> OwnerId {
        self.owner
    }

    /// The current file, or `EBADF` when there is none.
    pub fn file(&self) -> Result<&OpenFile, CmdError> {
        self.file.as_ref().ok_or(CmdError::Errno(Errno::EBADF))
    }

    /// The current file's handle, or `EBADF` when there is none.
    pub fn handle(&self) -> Result<&File, CmdError> {
        Ok(&self.file()?.handle)
    }
}

/// Where a command's output goes.
#[derive(Debug)]
pub enum Output {
    /// Straight to stdout (a foreground command: nothing else prints meanwhile).
    Direct,
    /// Held until the runner prints it (a background command).
    Held(Vec<u8>),
}

impl Output {
    /// Print one line. A closed stdout is not the command's failure; the
    /// lines are dropped.
    pub fn line(&mut self, text: impl fmt::Display) {
        match self {
            Output::Direct => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
            }
            Output::Held(buf) => {
                let _ = writeln!(buf, "{text}");
            }
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Output::Direct => {
                let _ = std::io::stdout().flush();
                Vec::new()
            }
            Output::Held(buf) => buf,
        }
    }
}

/// What a command runs with.
pub struct Ctx<'a> {
    /// The actor running it.
    pub actor: &'a mut Actor,
    /// What all actors share.
    pub shared: &'a Shared,
    /// Where its output goes.
    pub out: &'a mut Output,
}

/// The result of one command.
pub type CmdResult = Result<(), CmdError>;

/// A command set: runs `line` when it knows the command, else `None`.
pub type CommandSet = fn(&mut Ctx<'_>, &Line) -> Option<CmdResult>;

/// The command sets, tried in turn.
const COMMAND_SETS: &[CommandSet] = &[
    file_cmds::run,
    lease_cmds::run,
    map_cmds::run,
    pin_cmds::run,
    dma_cmds::run,
    other_cmds::run,
];

/// Run one command in its actor.
fn dispatch(ctx: &mut Ctx<'_>, line: &Line) -> CmdResult {
    COMMAND_SETS
        .iter()
        .find_map(|set| set(ctx, line))
        .unwrap_or(Err(CmdError::Unknown))
}

/// A command handed to an actor's thread.
struct Job {
    line: Line,
    background: bool,
    done: Sender<Outcome>,
}

/// A finished command.
struct Outcome {
    name: String,
    held_output: Vec<u8>,
    result: CmdResult,
}

/// The body of an actor's thread: run its commands in order until the
/// runner hangs up, then drop the actor (closing what it holds) and make the
/// lease engine forget it.
fn actor_main(mut actor: Actor, shared: Arc<Shared>, jobs: Receiver<Job>) {
    let owner = actor.owner();
    while let Ok(job) = jobs.recv() {
        let mut out = if job.background {
            Output::Held(Vec::new())
        } else {
            Output::Direct
        };
        let result = dispatch(
            &mut Ctx {
                actor: &mut actor,
                shared: &shared,
                out: &mut out,
            },
            &job.line,
        );
        // The runner may be gone only if it panicked; nothing to tell then.
        let _ = job.done.send(Outcome {
            name: job.line.name,
            held_output: out.finish(),
            result,
        });
    }
    // Its registrations end with it (device access first), then what it
    // holds, then its leases: as at a process exit.
    shared.dma.drop_owner(owner.0);
    drop(actor);
    if let Ok(fs) = shared.fs() {
        fs.leases().drop_owner(owner);
    }
}

/// The runner's side of an actor.
struct ActorSlot {
    name: String,
    jobs: Sender<Job>,
    /// Background commands not yet waited for, oldest first: the command's
    /// name, its text (for the warning when nobody collects it), its outcome.
    pending: VecDeque<(String, String, Receiver<Outcome>)>,
    thread: JoinHandle<()>,
}

/// The runner: actors by first appearance, and whether anything failed.
struct Runner {
    shared: Arc<Shared>,
    actors: Vec<ActorSlot>,
    failed: bool,
}

impl Runner {
    /// Print a finished command's held output and its failure, if any.
    fn report(&mut self, outcome: Outcome) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&outcome.held_output);
        let _ = stdout.flush();
        drop(stdout);
        if let Err(e) = outcome.result {
            self.fail(&outcome.name, &e);
        }
    }

    fn fail(&mut self, name: &str, err: &dyn fmt::Display) {
        let _ = writeln!(std::io::stderr().lock(), "{name}: {err}");
        self.failed = true;
    }

    /// Wait for one command's outcome and report it.
    fn collect(&mut self, name: String, done: &Receiver<Outcome>) {
        match done.recv() {
            Ok(outcome) => self.report(outcome),
            Err(_) => self.fail(&name, &CmdError::ActorLost),
        }
    }

    /// A background command of `actor` that the script never waited for:
    /// its output, then one warning line with its result.
    fn uncollected(&mut self, actor: &str, text: &str, done: &Receiver<Outcome>) {
        let result = match done.recv() {
            Ok(outcome) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&outcome.held_output);
                let _ = stdout.flush();
                outcome.result
            }
            Err(_) => Err(CmdError::ActorLost),
        };
        let said = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "@{actor}: result of '{text}' never collected: {said}"
        );
        if result.is_err() {
            self.failed = true;
        }
    }

    /// The slot of actor `name`, starting it on first use.
    fn actor(&mut self, name: &str) -> Result<usize, CmdError> {
        if let Some(i) = self.actors.iter().position(|a| a.name == name) {
            return Ok(i);
        }
        if self.actors.len() >= MAX_ACTORS {
            return Err(CmdError::Limit {
                what: "actors",
                limit: MAX_ACTORS,
            });
        }
        // Owners are numbered from 1 in order of appearance (0 is `Cred::ROOT`).
        let owner = self.actors.len() as u64 + 1;
        // The queue exists before the actor can hold a lease: no
        // notification addressed to it is lost.
        let conn = self.shared.connect(OwnerId(owner), name)?;
        self.shared.name_owner(OwnerId(owner), name);
        let actor = Actor::new(name, OwnerId(owner), conn);
        let (jobs, incoming) = mpsc::channel();
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("@{name}"))
            .spawn(move || actor_main(actor, shared, incoming))
            .map_err(|e| {
                if let Ok(fs) = self.shared.fs() {
                    fs.leases().drop_owner(OwnerId(owner));
                }
                Errno(e.raw_os_error().unwrap_or(libc::EAGAIN))
            })?;
        self.actors.push(ActorSlot {
            name: name.to_string(),
            jobs,
            pending: VecDeque::new(),
            thread,
        });
        Ok(self.actors.len() - 1)
    }

    /// `@NAME wait`: report every background command of the actor. With
    /// none, it says `wait: nothing pending` and succeeds: like `xfs_io`'s
    /// informational commands, it reports a state, not a failure of the file
    /// system (a script that meant to wait for something sees the line).
    fn wait(&mut self, name: &str) {
        let pending = self
            .actors
            .iter()
            .position(|a| a.name == name)
            .filter(|&i| !self.actors[i].pending.is_empty());
        let Some(i) = pending else {
            Output::Direct.line("wait: nothing pending");
            return;
        };
        while let Some((cmd, _, done)) = self.actors[i].pending.pop_front() {
            self.collect(cmd, &done);
        }
    }

    /// Run one script line.
    fn step(&mut self, text: &str) {
        let line = match parse::line(text) {
            Ok(line) => line,
            // Named by its first word: the actor prefix is what is wrong.
            Err(e) => {
                let first = text.split_whitespace().next().unwrap_or_default();
                return self.fail(first, &e);
            }
        };
        if line.name.is_empty() {
            return;
        }
        if line.name == "wait" {
            if !line.args.is_empty() {
                return self.fail(
                    "wait",
                    &CmdError::usage("[@NAME] wait", "no operands expected"),
                );
            }
            return self.wait(&line.actor);
        }
        let i = match self.actor(&line.actor) {
            Ok(i) => i,
            Err(e) => return self.fail(&line.name, &e),
        };
        if line.background && self.actors[i].pending.len() >= MAX_PENDING {
            let e = CmdError::Limit {
                what: "background commands (use wait)",
                limit: MAX_PENDING,
            };
            return self.fail(&line.name, &e);
        }
        let (done, outcome) = mpsc::channel();
        let name = line.name.clone();
        let text = if line.rest.is_empty() {
            line.name.clone()
        } else {
            format!("{} {}", line.name, line.rest)
        };
        let background = line.background;
        let job = Job {
            line,
            background,
            done,
        };
        if self.actors[i].jobs.send(job).is_err() {
            return self.fail(&name, &CmdError::ActorLost);
        }
        if background {
            self.actors[i].pending.push_back((name, text, outcome));
        } else {
            self.collect(name, &outcome);
        }
    }

    /// The end of the script: every actor exits once it has run what it was
    /// given (as a process does at the end of its program), dropping what it
    /// holds; the runner reports what was still in the background, actor by
    /// actor, each with a warning on stderr that nobody collected it
    /// (`@b: result of 'truncate 4k' never collected: Text file busy`); a
    /// failure among them still fails the run. Hanging up on all actors first matters: an idle holder's leases
    /// go with it, so a breaker still waiting for them proceeds instead of
    /// waiting out lease-break-time (or forever, with `--break-time 0`).
    fn finish(mut self) -> bool {
        let slots: Vec<ActorSlot> = self.actors.drain(..).collect();
        let mut ending = Vec::with_capacity(slots.len());
        for slot in slots {
            // The actor still runs the jobs already queued, then exits.
            drop(slot.jobs);
            ending.push((slot.name, slot.pending, slot.thread));
        }
        for (actor, pending, thread) in ending {
            for (_, text, done) in pending {
                self.uncollected(&actor, &text, &done);
            }
            // A panicked actor was reported when its outcome went missing.
            let _ = thread.join();
        }
        !self.failed
    }
}

/// Where a run's actors work.
#[derive(Debug)]
pub enum Target {
    /// In process, on this file system.
    Local(Arc<Fs>),
    /// Through the daemon at this socket, each actor its own connection;
    /// the client given is the first actor's (made beforehand, so that a
    /// socket nobody serves is one error before the script starts).
    Daemon(PathBuf, Client),
}

/// Run a script; `true` when every command succeeded.
pub fn run(target: Target, settings: Settings, script: &[String]) -> bool {
    let shared = match target {
        Target::Local(fs) => Shared::new(Some(fs), None, None, settings),
        Target::Daemon(path, client) => Shared::new(None, Some(client), Some(path), settings),
    };
    let mut runner = Runner {
        shared: Arc::new(shared),
        actors: Vec::new(),
        failed: false,
    };
    // `@main` exists from the start so that it is owner 1 in every script.
    if let Err(e) = runner.actor(MAIN_ACTOR) {
        runner.fail("io", &e);
        return false;
    }
    for text in script {
        runner.step(text);
    }
    runner.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn break_times() {
        assert_eq!(parse_break_time("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_break_time("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_break_time("0"), Ok(Duration::ZERO));
        assert!(parse_break_time("-1").is_err());
        assert!(parse_break_time("nan").is_err());
        assert!(parse_break_time("inf").is_err());
        assert!(parse_break_time("1e9").is_err());
        assert!(parse_break_time("x").is_err());
    }
}
