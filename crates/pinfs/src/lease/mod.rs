//! The lease engine: open leases, layout leases and the break protocol
//! (SPEC §3), as a generic component — pinfs's counterpart of Linux's
//! `fs/locks.c`.
//!
//! It knows files (opaque [`FileKey`]s), byte ranges, owners, handles and
//! conflicts, and nothing about blocks, extents or any structure of the file
//! system. The file system tells it about opens and closes and asks it before
//! every operation that breaks leases; holders are told through callbacks, a
//! pollable per-owner [`EventQueue`] and (across processes) real signals.
//!
//! # Interface, in the order the file system uses it
//!
//! Identities are plain numbers chosen by the caller: [`FileKey`] (inode
//! number and generation folded together), [`OwnerId`] (an actor: process,
//! daemon client), [`HandleId`] (an open file description, or any object a
//! layout lease should live as long as, such as a mapping or a registration),
//! [`LeaseId`] (chosen by the engine). Ranges are [`ByteRange`]s `[start, end)`,
//! `end == u64::MAX` meaning "to end of file".
//!
//! * [`LeaseEngine::new`]`(break_time)` — `break_time` is lease-break-time;
//!   zero means a breaker waits for the holder indefinitely and leases are
//!   never forcibly broken. [`LeaseEngine::set_break_time`] changes it for
//!   breaks that start afterwards.
//! * Opens: [`LeaseEngine::open`] registers a handle *and* breaks conflicting
//!   open leases, exactly like Linux's `open(2)` (the handle counts as open
//!   while the break is pending, so nobody can slip a lease in; on error the
//!   handle is not registered). [`LeaseEngine::opened`] only registers (for a
//!   file that was just created), [`LeaseEngine::break_for_open`] only breaks.
//!   [`LeaseEngine::closed`] forgets the handle and releases every lease bound
//!   to it — open *and* layout leases, as Linux releases leases at close.
//! * Open leases (SPEC §3.1, `F_SETLEASE`): [`LeaseEngine::set_lease`] with
//!   [`LeaseRequest::read`], [`LeaseRequest::write`], [`LeaseRequest::unlock`];
//!   [`LeaseEngine::get_lease`] (`F_GETLEASE`: the *target* type while a break
//!   is pending). Rules, as `generic_add_lease`/`check_conflicting_open`:
//!   a read lease is refused with `EAGAIN` while any handle (the caller's
//!   included) has the file open for writing — so it only works on a
//!   read-only handle; a write lease is refused while any *other* handle has
//!   the file open or any other handle holds a lease; a handle's own lease is
//!   modified in place (downgrade, upgrade) under the same checks;
//!   `Unlock` without a lease is `EAGAIN`; a handle the engine does not know
//!   is `EBADF`. A breaker being let in counts as an open handle while it
//!   waits, which is what makes a downgrade succeed only against a read-only
//!   opener. Permission (`EACCES` for a file the caller does not own without
//!   `CAP_LEASE`) is the file system's check: the engine knows no users.
//! * Open-lease breakers: [`LeaseEngine::break_for_open`] (a read-only open
//!   breaks write leases by downgrade; a writing open breaks every open lease
//!   by removal) and [`LeaseEngine::break_for_truncate`] (truncate by path:
//!   removal). As in Linux the breaker's own leases are not exempt: open
//!   leases belong to handles, not actors.
//! * Layout leases (SPEC §3.2): [`LeaseRequest::layout_shared`]
//!   (`F_RDLCK|F_LAYOUT`), [`LeaseRequest::layout_exclusive`]
//!   (`F_WRLCK|F_LAYOUT`), and `.unbreakable()` on either
//!   (`F_LAYOUT|F_EXCLUSIVE`; on the shared type several pinners can hold it,
//!   on the exclusive type it also keeps exclusive control); `.range(r)` for a
//!   ranged lease. Layout leases never conflict with opens. Two exclusive
//!   layout leases of different owners over overlapping ranges conflict
//!   (`EAGAIN`); everything else coexists. A handle may hold several layout
//!   leases (one per range); a request for the same (handle, owner, range)
//!   modifies that lease, but a lease that is being broken cannot be modified
//!   (`EAGAIN`: release it and ask again). A request from another owner
//!   that overlaps a layout change in progress waits until the change is
//!   done (SPEC: "that request waits until the change is done"); with
//!   `nonblocking` it fails with `EWOULDBLOCK` (== `EAGAIN` on Linux), with a
//!   raised [`Interrupt`] with `EINTR`.
//! * Layout changes: [`LeaseEngine::begin_layout_change`]`(file, range,
//!   breaker, opts)` — the one entry point of truncate, punch, zero,
//!   collapse, insert, allocation into holes, reflink, unsharing and freeing
//!   at unlink — returns a [`LayoutChangeGuard`] once no other owner's
//!   layout lease overlaps `range`. Another owner's unbreakable lease over the
//!   range: `ETXTBSY` at once, nothing is broken, and its holder gets a
//!   [`EventKind::Refused`] event. The caller holds a shared layout lease on
//!   the file while another owner's exclusive layout lease overlaps the range:
//!   `ETXTBSY`. Otherwise every other owner's overlapping layout lease is
//!   broken (removal) and the caller waits; the caller's own leases are not
//!   broken and it is not notified. While the guard lives, other owners'
//!   overlapping layout lease requests wait.
//! * Breaking ([`BreakOptions`]): on entering, a breaker registers itself
//!   (its pending open, or its layout change) so that no new conflicting
//!   lease can be granted, marks every conflicting lease
//!   [`LeaseState::Breaking`] with a deadline `break_time` from now (a lease
//!   cannot be un-broken), notifies the holders, and waits until they
//!   release or downgrade — or until the deadline, when the lease is
//!   forcibly downgraded or removed. So no breaker waits longer than
//!   `break_time` plus the time the forced breaks take. A forced break is
//!   complete before any breaker proceeds past it: the holder's callbacks
//!   have run (an [`EventKind::Lost`] event) and, for a layout lease, the
//!   revoke hook ([`LeaseEngine::set_revoke_hook`]) has returned.
//!   `nonblocking` returns `EWOULDBLOCK` at once and a raised [`Interrupt`]
//!   returns `EINTR`; in both cases the break goes on (the leases stay
//!   breaking, and the next breaker enforces the deadline; `set_lease` and
//!   `get_lease` enforce it for open leases, as Linux's
//!   `time_out_leases`). [`BreakReport`] tells a caller how long it waited.
//! * One bound per operation (SPEC §3.3.5): an operation that breaks leases
//!   more than once or waits for something else afterwards (the file
//!   system's wait for pins) takes [`LeaseEngine::break_deadline`] once, at
//!   its start, and passes it to each break ([`BreakOptions::until`]: the
//!   leases it marks are forced by then at the latest) and to its other
//!   waits ([`LeaseEngine::time_left`]), so the whole operation waits at
//!   most `break_time`. [`break_time_from_secs`] is the one conversion from
//!   a user's seconds: a positive value never rounds down to 0 ("never").
//! * Pin holders: [`LeaseEngine::notify_refused`] raises the
//!   [`EventKind::Refused`] event for the holders of pins that made a layout
//!   change fail (the `fail` truncate policy), whether or not they still
//!   hold a lease.
//! * Notification ([`notify`]): per lease ([`LeaseRequest::callback`]) and
//!   per owner ([`LeaseEngine::set_owner_callback`]) callbacks, both run for
//!   every event; the per-owner [`EventQueue`] ([`LeaseEngine::owner_events`])
//!   whose [`EventQueue::fd`] is an eventfd readable while events are queued
//!   (created on first use, so a holder that only calls `recv` pays no
//!   system call per event);
//!   [`notify::raise_signal`]/[`notify::queue_signal`] and
//!   [`notify::signal_callback`] for a real signal (`SIGIO` by default) to
//!   another process.
//! * Visibility: [`LeaseEngine::list`] ([`LeaseInfo`]: enough for a
//!   `/proc/locks`-style `ID LEASE|LAYOUT TYPE ACTIVE|BREAKING ACTOR PATH
//!   START END` line once the file system maps keys to names) and `tracing`
//!   events under the target `pinfs::lease` (conflict, break start, break
//!   done, forced break, revocation).
//! * Owner death: [`LeaseEngine::drop_owner`] releases all its leases,
//!   forgets its handles and callback, and closes its event queue.
//!
//! # Locking and re-entrancy
//!
//! One engine-wide mutex guards all state; breakers and waiting lease
//! requests sleep on one condition variable (after a short adaptive spin:
//! a holder usually answers within microseconds). Callbacks, the revoke
//! hook, event-queue pushes and signals always run with the engine lock
//! *released*, on the thread of the engine call that raised the event — a
//! breaker; for a forced break of an open lease also `set_lease` or
//! `get_lease` — so a callback may call back into the engine, typically to
//! release the lease. A callback must not *block* on the engine (for
//! instance re-request a layout lease without `nonblocking`): the breaker
//! it runs on would wait for itself.
//!
//! Lock order: the file system calls `begin_layout_change`, `break_for_*`,
//! `open` and blocking layout `set_lease` **before** taking any lock of its
//! own, and the revoke hook — which only a breaker runs — may take
//! file-system locks. Engine lock → event-queue lock is the only nesting
//! inside the engine.
//!
//! # Model checking
//!
//! `LeaseEngine::new_model` (feature `model-check`) builds an engine on
//! shuttle's primitives and a virtual clock (see `sync.rs`);
//! `tests/lease_model.rs` explores a holder that re-requests during breaks
//! and two breakers, checks that no breaker proceeds past an active lease,
//! that no notification is lost, that nothing deadlocks and that waits are
//! bounded by `break_time`, and shows that broken variants
//! (`Fault`) are caught. `cargo test` runs it (the crate's tests enable
//! the feature).
//!
//! # Limits
//!
//! [`MAX_LEASES_PER_FILE`] (`ENOLCK`), [`MAX_HANDLES_PER_FILE`] (`ENFILE`),
//! [`MAX_OWNER_ENTRIES`] (`EMFILE`), [`MAX_CHANGES_PER_FILE`] (`EBUSY`) and
//! [`MAX_EVENTS_PER_OWNER`] (the queue then drops events and reports
//! [`QueueError::Overflow`]; the holder resynchronises with `list`, and its
//! callbacks still see every event).

mod engine;
pub mod notify;
mod signal;
pub(crate) mod sync;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::Errno;

#[cfg(feature = "model-check")]
pub use engine::Fault;
pub use engine::{Interrupt, LayoutChangeGuard, LeaseEngine};
pub use notify::{BreakCallback, EventQueue, QueueError, RevokeHook};

/// Most leases (open and layout) on one file.
pub const MAX_LEASES_PER_FILE: usize = 1024;
/// Most open handles the engine tracks on one file.
pub const MAX_HANDLES_PER_FILE: usize = 65_536;
/// Most owners with a callback or an event queue at once.
pub const MAX_OWNER_ENTRIES: usize = 65_536;
/// Most layout changes in progress on one file at once.
pub const MAX_CHANGES_PER_FILE: usize = 1024;
/// Most events queued for one owner; later ones are dropped and counted.
pub const MAX_EVENTS_PER_OWNER: usize = 4096;

/// "No locks available": the lease table of a file is full. (Not in
/// [`Errno`]'s named list, hence a constant here.)
pub const ENOLCK: Errno = Errno(libc::ENOLCK);

/// A file, as the file system identifies it (inode number and generation
/// folded together). Opaque to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FileKey(pub u64);

/// An actor that holds leases or breaks them: a thread of the library's
/// user, a process, a daemon client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OwnerId(pub u64);

/// An open file description — or, for layout leases, any object whose
/// lifetime the lease should have (a mapping, a registration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HandleId(pub u64);

/// A lease, as numbered by the engine (shown by `list`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The access mode of an open handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Access {
    /// `O_RDONLY`.
    ReadOnly,
    /// `O_WRONLY`.
    WriteOnly,
    /// `O_RDWR`.
    ReadWrite,
}

impl Access {
    /// Whether the handle is open for writing (`O_WRONLY` or `O_RDWR`).
    pub fn writes(self) -> bool {
        !matches!(self, Access::ReadOnly)
    }
}

/// The type of a lease (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LeaseType {
    /// `F_RDLCK`: shared.
    Read,
    /// `F_WRLCK`: exclusive.
    Write,
    /// `F_UNLCK`: no lease / release.
    Unlock,
}

impl fmt::Display for LeaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseType::Read => "READ",
            LeaseType::Write => "WRITE",
            LeaseType::Unlock => "UNLCK",
        })
    }
}

/// Which kind of lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LeaseKind {
    /// An open lease (`F_SETLEASE`), broken by opens and truncate.
    Lease,
    /// A layout lease (`F_LAYOUT`), broken by layout changes.
    Layout,
}

impl fmt::Display for LeaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseKind::Lease => "LEASE",
            LeaseKind::Layout => "LAYOUT",
        })
    }
}

/// Whether a lease is being broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LeaseState {
    /// Granted and not being broken.
    Active,
    /// A breaker has marked it; the holder must release (or downgrade). A
    /// lease cannot go back to `Active` except by reaching its target type.
    Breaking,
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseState::Active => "ACTIVE",
            LeaseState::Breaking => "BREAKING",
        })
    }
}

/// A byte range `[start, end)` of a file; `end == u64::MAX` means "to end of
/// file" (and `ByteRange::WHOLE` the whole file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte; `u64::MAX`: to end of file.
    pub end: u64,
}

impl ByteRange {
    /// The whole file.
    pub const WHOLE: ByteRange = ByteRange {
        start: 0,
        end: u64::MAX,
    };

    /// `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        ByteRange { start, end }
    }

    /// `[start, start + len)`, saturating at end of file.
    pub fn from_len(start: u64, len: u64) -> Self {
        ByteRange {
            start,
            end: start.saturating_add(len),
        }
    }

    /// From `start` to end of file.
    pub fn to_eof(start: u64) -> Self {
        ByteRange {
            start,
            end: u64::MAX,
        }
    }

    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &ByteRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether the range covers the whole file.
    pub fn is_whole(&self) -> bool {
        *self == Self::WHOLE
    }

    pub(crate) fn validate(&self) -> Result<(), Errno> {
        if self.start < self.end {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }
}

impl fmt::Display for ByteRange {
    /// `START END`, with `EOF` for an open end (as `/proc/locks`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end == u64::MAX {
            write!(f, "{} EOF", self.start)
        } else {
            write!(f, "{} {}", self.start, self.end - 1)
        }
    }
}

/// How a breaker (or a waiting layout-lease request) waits.
#[derive(Clone, Default)]
pub struct BreakOptions {
    /// Do not wait: return `EWOULDBLOCK` at once if a lease had to be broken
    /// (the break still proceeds). `O_NONBLOCK` on the breaker's open.
    pub nonblocking: bool,
    /// Return `EINTR` as soon as this is raised (the break still proceeds).
    pub interrupt: Option<Arc<Interrupt>>,
    /// Where the call reports how long it took and how many leases it
    /// broke (for tracing, benchmarks and the model check).
    pub report: Option<Arc<BreakReport>>,
    /// The bound of the whole operation this break is part of (SPEC §3.3.5):
    /// leases this call marks are forced no later than this, so an
    /// operation that breaks leases more than once (reflink: destination
    /// and source) and then waits for pins still waits at most one
    /// lease-break-time. `None`: lease-break-time from when they are marked.
    pub deadline: Option<BreakDeadline>,
}

/// When lease-break-time runs out for one operation, on the engine's clock
/// (virtual time under the model checker): computed once, when the
/// operation starts ([`LeaseEngine::break_deadline`]), and shared by every
/// wait of that operation — its lease breaks ([`BreakOptions::until`]) and
/// the file system's wait for pins (SPEC §3.3.5: one bound for the whole
/// operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakDeadline {
    /// Engine clock, nanoseconds; `None`: lease-break-time is 0, never.
    pub(crate) at_ns: Option<u64>,
}

impl BreakDeadline {
    /// The deadline of an operation under lease-break-time 0: never.
    pub const NEVER: BreakDeadline = BreakDeadline { at_ns: None };

    /// Whether it never comes (lease-break-time 0).
    pub fn is_never(&self) -> bool {
        self.at_ns.is_none()
    }
}

/// Longest lease-break-time [`break_time_from_secs`] accepts: a day (a
/// typo should not make a breaker wait for years).
pub const MAX_BREAK_TIME_SECS: f64 = 86_400.0;

/// lease-break-time from a number of seconds as a user gives it (`0.5`):
/// `0` is "never force"; any positive value, however small, becomes at least
/// the engine's smallest positive unit (1 ns) — it never rounds down to
/// `0`, which would mean the opposite (wait forever). Negative, not finite
/// or above [`MAX_BREAK_TIME_SECS`]: `EINVAL`. Edges (the command line, the
/// daemon's options) convert through this one function.
pub fn break_time_from_secs(secs: f64) -> Result<std::time::Duration, Errno> {
    if !secs.is_finite() || !(0.0..=MAX_BREAK_TIME_SECS).contains(&secs) {
        return Err(Errno::EINVAL);
    }
    if secs == 0.0 {
        return Ok(std::time::Duration::ZERO);
    }
    let d = std::time::Duration::try_from_secs_f64(secs).map_err(|_| Errno::EINVAL)?;
    Ok(d.max(MIN_BREAK_TIME))
}

/// The smallest positive lease-break-time: one unit of the engine's clock.
pub const MIN_BREAK_TIME: std::time::Duration = std::time::Duration::from_nanos(1);

/// What one breaking call did, filled in when it returns (see
/// [`BreakOptions::report`]).
#[derive(Debug, Default)]
pub struct BreakReport {
    pub(crate) waited_ns: AtomicU64,
    pub(crate) broken: AtomicU64,
}

impl BreakReport {
    /// A fresh report.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Time from entering the engine to returning, on the engine's clock
    /// (virtual time under the model checker).
    pub fn waited(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// How many leases this call marked breaking.
    pub fn broken(&self) -> u64 {
        self.broken.load(Ordering::Relaxed)
    }
}

impl BreakOptions {
    /// Wait as long as the protocol says.
    pub fn blocking() -> Self {
        Self::default()
    }

    /// Do not wait (`EWOULDBLOCK`).
    pub fn nonblocking() -> Self {
        BreakOptions {
            nonblocking: true,
            ..Self::default()
        }
    }

    /// Also report what the call did into `report`.
    pub fn with_report(mut self, report: Arc<BreakReport>) -> Self {
        self.report = Some(report);
        self
    }

    /// Wait, but give up with `EINTR` when `interrupt` is raised.
    pub fn interruptible(interrupt: Arc<Interrupt>) -> Self {
        BreakOptions {
            interrupt: Some(interrupt),
            ..Self::default()
        }
    }

    /// Force the leases this call marks no later than `deadline`, the bound
    /// of the operation the call is part of.
    pub fn until(mut self, deadline: BreakDeadline) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl fmt::Debug for BreakOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakOptions")
            .field("nonblocking", &self.nonblocking)
            .field("interruptible", &self.interrupt.is_some())
            .field("report", &self.report.is_some())
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A request to [`LeaseEngine::set_lease`].
#[derive(Clone)]
pub struct LeaseRequest {
    /// `Read`, `Write` or `Unlock` (release).
    pub ty: LeaseType,
    /// A layout lease (`F_LAYOUT`) rather than an open lease.
    pub layout: bool,
    /// Unbreakable (`F_EXCLUSIVE`, layout leases only).
    pub unbreakable: bool,
    /// The range a layout lease covers (open leases: whole file only).
    pub range: ByteRange,
    /// Run for every event about this lease (in addition to the owner's).
    pub callback: Option<BreakCallback>,
    /// How a layout request waits for a layout change in progress.
    pub wait: BreakOptions,
}

impl LeaseRequest {
    fn new(ty: LeaseType, layout: bool) -> Self {
        LeaseRequest {
            ty,
            layout,
            unbreakable: false,
            range: ByteRange::WHOLE,
            callback: None,
            wait: BreakOptions::default(),
        }
    }

    /// `F_RDLCK`: an open read lease.
    pub fn read() -> Self {
        Self::new(LeaseType::Read, false)
    }

    /// `F_WRLCK`: an open write lease.
    pub fn write() -> Self {
        Self::new(LeaseType::Write, false)
    }

    /// `F_UNLCK`: release the handle's open lease.
    pub fn unlock() -> Self {
        Self::new(LeaseType::Unlock, false)
    }

    /// `F_RDLCK|F_LAYOUT`: a shared layout lease.
    pub fn layout_shared() -> Self {
        Self::new(LeaseType::Read, true)
    }

    /// `F_WRLCK|F_LAYOUT`: an exclusive-control layout lease.
    pub fn layout_exclusive() -> Self {
        Self::new(LeaseType::Write, true)
    }

    /// `F_UNLCK|F_LAYOUT`: release the handle's layout leases overlapping
    /// the range.
    pub fn layout_unlock() -> Self {
        Self::new(LeaseType::Unlock, true)
    }

    /// Makes a layout lease unbreakable (`F_EXCLUSIVE`).
    pub fn unbreakable(mut self) -> Self {
        self.unbreakable = true;
        self
    }

    /// Limits a layout lease to `range`.
    pub fn range(mut self, range: ByteRange) -> Self {
        self.range = range;
        self
    }

    /// Runs `callback` for every event about this lease.
    pub fn callback(mut self, callback: BreakCallback) -> Self {
        self.callback = Some(callback);
        self
    }

    /// How the request waits for a layout change in progress.
    pub fn wait(mut self, wait: BreakOptions) -> Self {
        self.wait = wait;
        self
    }

    /// Fail with `EWOULDBLOCK` rather than wait for a layout change.
    pub fn nonblocking(mut self) -> Self {
        self.wait.nonblocking = true;
        self
    }
}

impl fmt::Debug for LeaseRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseRequest")
            .field("ty", &self.ty)
            .field("layout", &self.layout)
            .field("unbreakable", &self.unbreakable)
            .field("range", &self.range)
            .field("callback", &self.callback.is_some())
            .field("wait", &self.wait)
            .finish()
    }
}

/// A snapshot of one lease, for listings and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LeaseInfo {
    /// Its number.
    pub id: LeaseId,
    /// Open lease or layout lease.
    pub kind: LeaseKind,
    /// The type it has now (`Read` or `Write`).
    pub ty: LeaseType,
    /// The type it is being broken to (`Unlock` for removal, `Read` for a
    /// downgrade), or `ty` when it is not being broken; what `get_lease` and
    /// `/proc/locks` report.
    pub target: LeaseType,
    /// Unbreakable layout lease (`F_EXCLUSIVE`).
    pub unbreakable: bool,
    /// Active or breaking.
    pub state: LeaseState,
    /// Its holder.
    pub owner: OwnerId,
    /// The handle it is bound to.
    pub handle: HandleId,
    /// Its file.
    pub file: FileKey,
    /// The range it covers.
    pub range: ByteRange,
}

impl LeaseInfo {
    /// The `TYPE` column: the target type, with `+EXCL` for an unbreakable
    /// layout lease.
    pub fn type_label(&self) -> String {
        if self.unbreakable {
            format!("{}+EXCL", self.target)
        } else {
            self.target.to_string()
        }
    }
}

/// Why a lease is being broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum BreakReason {
    /// An open with this access mode.
    Open(Access),
    /// A truncate by path.
    Truncate,
    /// A layout change over this range.
    LayoutChange(ByteRange),
}

/// What happened to the lease an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EventKind {
    /// The lease is now breaking: release it (or downgrade it to
    /// `target`) within `break_time`.
    Break,
    /// Someone tried to change the layout under an unbreakable lease and was
    /// refused with `ETXTBSY`; the lease is unchanged.
    Refused,
    /// `break_time` passed: the lease was forcibly downgraded (`target ==
    /// Read`) or removed (and, for a layout lease, revoked).
    Lost,
}

/// A notification to a lease holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BreakEvent {
    /// What happened.
    pub kind: EventKind,
    /// The lease, as it was when the event was raised.
    pub lease: LeaseInfo,
    /// `Read`: downgrade; `Unlock`: release.
    pub target: LeaseType,
    /// What the breaker was doing.
    pub reason: BreakReason,
    /// Who broke it.
    pub breaker: OwnerId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_half_open() {
        let a = ByteRange::new(0, 4096);
        assert!(a.overlaps(&ByteRange::new(4095, 4096)));
        assert!(!a.overlaps(&ByteRange::new(4096, 8192)));
        assert!(ByteRange::WHOLE.overlaps(&ByteRange::to_eof(1 << 40)));
        assert_eq!(ByteRange::from_len(10, u64::MAX).end, u64::MAX);
        assert_eq!(ByteRange::new(3, 3).validate(), Err(Errno::EINVAL));
        assert_eq!(ByteRange::new(0, 4096).to_string(), "0 4095");
        assert_eq!(ByteRange::WHOLE.to_string(), "0 EOF");
    }

    #[test]
    fn a_positive_break_time_never_rounds_to_never() {
        use std::time::Duration;
        // The control: the plain conversion rounds 0.1 ns down to zero,
        // which the engine reads as "never force".
        assert_eq!(Duration::try_from_secs_f64(1e-10), Ok(Duration::ZERO));
        assert_eq!(break_time_from_secs(1e-10), Ok(MIN_BREAK_TIME));
        assert_eq!(break_time_from_secs(f64::MIN_POSITIVE), Ok(MIN_BREAK_TIME));
        assert_eq!(break_time_from_secs(0.0), Ok(Duration::ZERO));
        assert_eq!(break_time_from_secs(0.5), Ok(Duration::from_millis(500)));
        assert_eq!(break_time_from_secs(45.0), Ok(Duration::from_secs(45)));
        assert_eq!(
            break_time_from_secs(MAX_BREAK_TIME_SECS),
            Ok(Duration::from_secs(86_400))
        );
        for bad in [
            -1.0,
            -1e-10,
            f64::NAN,
            f64::INFINITY,
            MAX_BREAK_TIME_SECS * 2.0,
        ] {
            assert_eq!(break_time_from_secs(bad), Err(Errno::EINVAL), "{bad}");
        }
        // -0.0 is zero, not negative.
        assert_eq!(break_time_from_secs(-0.0), Ok(Duration::ZERO));
    }

    #[test]
    fn labels_match_proc_locks() {
        assert_eq!(LeaseKind::Layout.to_string(), "LAYOUT");
        assert_eq!(LeaseState::Breaking.to_string(), "BREAKING");
        assert_eq!(LeaseType::Unlock.to_string(), "UNLCK");
        assert_eq!(ENOLCK.message(), "No locks available");
    }
}
