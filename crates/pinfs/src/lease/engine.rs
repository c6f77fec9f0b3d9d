//! The lease table and the break protocol: who holds which lease on which
//! file and range, which opens are in flight, which layout changes are in
//! progress, and the one loop every breaker runs (mark, notify, wait,
//! force at `break_time`).
//!
//! All state sits behind one mutex ([`Inner::state`]); breakers and layout
//! lease requests that must wait sleep on one condition variable
//! ([`Inner::changed`]), woken by every release, downgrade, close, finished
//! revocation, finished layout change and raised [`Interrupt`]. Callbacks,
//! queue pushes and the revoke hook run with the mutex released (see the
//! module documentation of [`crate::lease`] for the re-entrancy and lock
//! order rules).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::notify::{BreakCallback, EventQueue, QueueInner, RevokeHook};
use super::sync::{self, Condvar, Mutex, MutexGuard, Runtime};
use super::{
    Access, BreakDeadline, BreakEvent, BreakOptions, BreakReason, ByteRange, EventKind, FileKey,
    HandleId, LeaseId, LeaseInfo, LeaseKind, LeaseRequest, LeaseState, LeaseType, OwnerId, ENOLCK,
    MAX_CHANGES_PER_FILE, MAX_HANDLES_PER_FILE, MAX_LEASES_PER_FILE, MAX_OWNER_ENTRIES,
};
use crate::Errno;

/// Tracing target of every lease event.
const TARGET: &str = "pinfs::lease";

/// How long a waiting breaker spins for the holder's answer before it parks
/// (real runtime only).
const BREAK_SPIN: Duration = Duration::from_micros(20);

/// A deliberately broken protocol, for showing that the model check can
/// fail (negative control, STYLE 16). Never set outside tests.
#[cfg(feature = "model-check")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    /// The protocol as specified.
    #[default]
    None,
    /// Breakers mark and notify, then proceed without waiting.
    SkipBreakWait,
    /// Breakers mark leases breaking but never tell the holder.
    SkipNotify,
}

/// A pending break of one lease: toward a downgrade or toward removal.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// When it is forced (engine clock, nanoseconds); `None` when
    /// `break_time` was zero: never.
    deadline: Option<u64>,
    reason: BreakReason,
    breaker: OwnerId,
}

struct Lease {
    id: LeaseId,
    kind: LeaseKind,
    /// `Read` or `Write`.
    ty: LeaseType,
    unbreakable: bool,
    owner: OwnerId,
    handle: HandleId,
    range: ByteRange,
    callback: Option<BreakCallback>,
    downgrade: Option<Pending>,
    removal: Option<Pending>,
}

impl Lease {
    fn breaking(&self) -> bool {
        self.downgrade.is_some() || self.removal.is_some()
    }

    fn target(&self) -> LeaseType {
        if self.removal.is_some() {
            LeaseType::Unlock
        } else if self.downgrade.is_some() {
            LeaseType::Read
        } else {
            self.ty
        }
    }

    fn info(&self, file: FileKey) -> LeaseInfo {
        LeaseInfo {
            id: self.id,
            kind: self.kind,
            ty: self.ty,
            target: self.target(),
            unbreakable: self.unbreakable,
            state: if self.breaking() {
                LeaseState::Breaking
            } else {
                LeaseState::Active
            },
            owner: self.owner,
            handle: self.handle,
            file,
            range: self.range,
        }
    }

    /// The earliest time this lease changes by force.
    fn next_deadline(&self) -> Option<u64> {
        [self.downgrade, self.removal]
            .iter()
            .flatten()
            .filter_map(|p| p.deadline)
            .min()
    }
}

/// A lease forcibly downgraded or removed at `break_time` whose holder is
/// still being told (and, for a layout lease, whose revoke hook is still
/// running). It blocks the breakers it conflicted with until that is done,
/// so that no breaker proceeds before a forced break is complete.
struct Forcing {
    /// Unique per forced change (a lease can be downgraded, then removed).
    seq: u64,
    kind: LeaseKind,
    owner: OwnerId,
    range: ByteRange,
}

impl Forcing {
    fn blocks(&self, breaker: Breaker, breaker_owner: OwnerId) -> bool {
        match breaker {
            Breaker::Open(_) | Breaker::Truncate => self.kind == LeaseKind::Lease,
            Breaker::Layout(range) => {
                self.kind == LeaseKind::Layout
                    && self.owner != breaker_owner
                    && self.range.overlaps(&range)
            }
        }
    }
}

/// A layout change in progress (between `begin_layout_change` and the drop
/// of its guard).
struct Change {
    id: u64,
    owner: OwnerId,
    range: ByteRange,
}

struct OpenHandle {
    owner: OwnerId,
    access: Access,
}

#[derive(Default)]
struct FileState {
    leases: Vec<Lease>,
    handles: HashMap<HandleId, OpenHandle>,
    /// Read-only opens, plus read-only openers waiting in a break
    /// (Linux's `i_readcount`).
    readers: usize,
    /// Writing opens, plus writing openers and truncaters waiting in a
    /// break (Linux's `i_writecount`).
    writers: usize,
    changes: Vec<Change>,
    forcing: Vec<Forcing>,
}

impl FileState {
    fn is_idle(&self) -> bool {
        self.leases.is_empty()
            && self.handles.is_empty()
            && self.readers == 0
            && self.writers == 0
            && self.changes.is_empty()
            && self.forcing.is_empty()
    }

    fn count_open(&mut self, access: Access, delta: isize) {
        let n = if access.writes() {
            &mut self.writers
        } else {
            &mut self.readers
        };
        *n = n
            .checked_add_signed(delta)
            .expect("open count out of balance");
    }
}

#[derive(Default)]
struct OwnerEntry {
    callback: Option<BreakCallback>,
    queue: Option<Arc<QueueInner>>,
}

struct State {
    files: HashMap<FileKey, FileState>,
    /// Which file each lease is on, for `release(id)`.
    lease_files: HashMap<LeaseId, FileKey>,
    owners: HashMap<OwnerId, OwnerEntry>,
    next_lease: u64,
    next_change: u64,
    break_time: Duration,
    revoke_hook: Option<RevokeHook>,
    /// Threads sleeping on `changed` (breakers, requests, model timers).
    waiters: usize,
    /// Virtual clock of the model runtime (nanoseconds).
    #[cfg(feature = "model-check")]
    model_now: u64,
    /// Pending model timers: id → deadline. A timer stays here after it
    /// fired until its waiter has seen it, so that time cannot run past a
    /// deadline before its waiter observed it.
    #[cfg(feature = "model-check")]
    timers: std::collections::BTreeMap<u64, u64>,
    #[cfg(feature = "model-check")]
    next_timer: u64,
    #[cfg(feature = "model-check")]
    fault: Fault,
}

struct Inner {
    runtime: Runtime,
    state: Mutex<State>,
    changed: Condvar,
    epoch: Instant,
    /// Bumped (under the lock) by every state change a waiter may be waiting
    /// for; lets a breaker spin without the lock before it parks.
    generation: AtomicU64,
}

/// A notification to deliver once the lock is released.
struct Note {
    event: BreakEvent,
    lease_cb: Option<BreakCallback>,
    owner_cb: Option<BreakCallback>,
    queue: Option<Arc<QueueInner>>,
}

impl Note {
    fn deliver(self) {
        if let Some(cb) = &self.lease_cb {
            cb(&self.event);
        }
        if let Some(cb) = &self.owner_cb {
            cb(&self.event);
        }
        if let Some(q) = &self.queue {
            q.push(self.event);
        }
    }
}

/// Leases forced at `break_time`, to finish with the lock released.
struct Expired {
    notes: Vec<Note>,
    /// Layout leases to revoke.
    revoke: Vec<LeaseInfo>,
    /// Their file's `forcing` entries, to clear once all is delivered.
    forcing: Vec<u64>,
}

/// What a breaker does.
#[derive(Clone, Copy, Debug)]
enum Breaker {
    /// An open with this access: breaks open leases.
    Open(Access),
    /// A truncate by path: breaks every open lease by removal.
    Truncate,
    /// A layout change over a range by an owner: breaks other owners'
    /// overlapping layout leases by removal.
    Layout(ByteRange),
}

impl Breaker {
    fn reason(self) -> BreakReason {
        match self {
            Breaker::Open(a) => BreakReason::Open(a),
            Breaker::Truncate => BreakReason::Truncate,
            Breaker::Layout(r) => BreakReason::LayoutChange(r),
        }
    }

    /// The type `lease` must reach for this breaker to proceed, if it
    /// conflicts at all (Linux's `leases_conflict` on the current type).
    fn conflict(self, lease: &Lease, breaker: OwnerId) -> Option<LeaseType> {
        match self {
            Breaker::Open(access) => {
                if lease.kind != LeaseKind::Lease {
                    None
                } else if access.writes() {
                    Some(LeaseType::Unlock)
                } else if lease.ty == LeaseType::Write {
                    Some(LeaseType::Read)
                } else {
                    None
                }
            }
            Breaker::Truncate => (lease.kind == LeaseKind::Lease).then_some(LeaseType::Unlock),
            Breaker::Layout(range) => (lease.kind == LeaseKind::Layout
                && lease.owner != breaker
                && lease.range.overlaps(&range))
            .then_some(LeaseType::Unlock),
        }
    }
}

/// A token that makes a waiting breaker (or layout lease request) return
/// `EINTR`, like a signal interrupting a sleeping `open(2)`. It stays raised
/// until [`clear`](Self::clear)ed.
pub struct Interrupt {
    raised: AtomicBool,
    engine: Weak<Inner>,
}

impl Interrupt {
    /// Raises it: every wait that uses it returns `EINTR` (the break goes on).
    pub fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        if let Some(inner) = self.engine.upgrade() {
            let mut st = inner.state.lock();
            inner.wake(&mut st);
        }
    }

    /// Lowers it again.
    pub fn clear(&self) {
        self.raised.store(false, Ordering::SeqCst);
    }

    /// Whether it is raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("raised", &self.is_raised())
            .finish()
    }
}

fn interrupted(opts: &BreakOptions) -> bool {
    opts.interrupt.as_ref().is_some_and(|i| i.is_raised())
}

/// Held while a layout change is in progress, from the moment
/// [`LeaseEngine::begin_layout_change`] returns: other owners' overlapping
/// layout lease requests wait until it is dropped. Drop it when the change
/// is done (committed or abandoned).
pub struct LayoutChangeGuard {
    inner: Arc<Inner>,
    file: FileKey,
    range: ByteRange,
    owner: OwnerId,
    id: u64,
}

impl LayoutChangeGuard {
    /// The file being changed.
    pub fn file(&self) -> FileKey {
        self.file
    }

    /// The range being changed.
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// Who is changing it.
    pub fn owner(&self) -> OwnerId {
        self.owner
    }
}

impl Drop for LayoutChangeGuard {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        if let Some(fs) = st.files.get_mut(&self.file) {
            fs.changes.retain(|c| c.id != self.id);
        }
        State::gc(&mut st, self.file);
        self.inner.wake(&mut st);
        tracing::trace!(target: TARGET, file = self.file.0, change = self.id, "layout change done");
    }
}

impl std::fmt::Debug for LayoutChangeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayoutChangeGuard")
            .field("file", &self.file)
            .field("range", &self.range)
            .field("owner", &self.owner)
            .finish()
    }
}

/// The lease engine (see [`crate::lease`] for the whole interface). Clones
/// share one engine.
#[derive(Clone)]
pub struct LeaseEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("LeaseEngine")
            .field("break_time", &st.break_time)
            .field("files", &st.files.len())
            .field("leases", &st.lease_files.len())
            .finish()
    }
}

impl State {
    fn new(break_time: Duration) -> Self {
        State {
            files: HashMap::new(),
            lease_files: HashMap::new(),
            owners: HashMap::new(),
            next_lease: 1,
            next_change: 1,
            break_time,
            revoke_hook: None,
            waiters: 0,
            #[cfg(feature = "model-check")]
            model_now: 0,
            #[cfg(feature = "model-check")]
            timers: Default::default(),
            #[cfg(feature = "model-check")]
            next_timer: 1,
            #[cfg(feature = "model-check")]
            fault: Fault::None,
        }
    }

    /// Forgets a file nobody refers to any more.
    fn gc(st: &mut State, file: FileKey) {
        if st.files.get(&file).is_some_and(FileState::is_idle) {
            st.files.remove(&file);
        }
    }

    /// Builds the notification of `lease`'s holder (lease callback, owner
    /// callback, owner queue).
    fn note(
        &self,
        lease: &Lease,
        file: FileKey,
        kind: EventKind,
        target: LeaseType,
        reason: BreakReason,
        breaker: OwnerId,
    ) -> Note {
        let owner = self.owners.get(&lease.owner);
        Note {
            event: BreakEvent {
                kind,
                lease: lease.info(file),
                target,
                reason,
                breaker,
            },
            lease_cb: lease.callback.clone(),
            owner_cb: owner.and_then(|o| o.callback.clone()),
            queue: owner.and_then(|o| o.queue.clone()),
        }
    }

    /// Removes the leases of `file` that `pred` selects; returns them.
    fn remove_leases(&mut self, file: FileKey, mut pred: impl FnMut(&Lease) -> bool) -> Vec<Lease> {
        let Some(fs) = self.files.get_mut(&file) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        let mut i = 0;
        while i < fs.leases.len() {
            if pred(&fs.leases[i]) {
                // `remove`, not `swap_remove`: grant order (ids ascend) is
                // kept, which listings rely on.
                removed.push(fs.leases.remove(i));
            } else {
                i += 1;
            }
        }
        for l in &removed {
            self.lease_files.remove(&l.id);
        }
        removed
    }

    /// Forces the leases of `file` whose break deadline has passed (Linux's
    /// `time_out_leases`): overdue downgrades happen, overdue removals
    /// remove; each forced change is recorded in the file's `forcing` list.
    /// Layout leases only when `layout_too` (only breakers force those, so
    /// that the revoke hook runs on a thread that holds no file-system lock).
    fn expire(&mut self, file: FileKey, now: u64, layout_too: bool) -> Option<Expired> {
        let overdue = |p: &Option<Pending>| p.and_then(|p| p.deadline).is_some_and(|d| d <= now);
        let forceable = |l: &Lease| layout_too || l.kind == LeaseKind::Lease;
        let due = |l: &Lease, p: &Option<Pending>| forceable(l) && overdue(p);
        let fs = self.files.get_mut(&file)?;
        if !fs
            .leases
            .iter()
            .any(|l| due(l, &l.downgrade) || due(l, &l.removal))
        {
            return None;
        }
        // Overdue downgrades first (a lease overdue for both is removed).
        let mut downgraded = Vec::new();
        for l in fs.leases.iter_mut() {
            if due(l, &l.downgrade) && !due(l, &l.removal) {
                let p = l.downgrade.take().expect("due implies pending");
                l.ty = LeaseType::Read;
                tracing::warn!(
                    target: TARGET,
                    lease = l.id.0,
                    file = file.0,
                    owner = l.owner.0,
                    "lease break timed out: forced downgrade"
                );
                downgraded.push((l.id, p, l.range));
            }
        }
        let removed = self.remove_leases(file, |l| due(l, &l.removal));
        let mut forcing = Vec::new();
        let mut next_seq = self.next_change;
        let fs = self.files.get_mut(&file).expect("still has state");
        for &(id, _, range) in &downgraded {
            let owner = fs
                .leases
                .iter()
                .find(|l| l.id == id)
                .map_or(OwnerId(0), |l| l.owner);
            fs.forcing.push(Forcing {
                seq: next_seq,
                kind: LeaseKind::Lease,
                owner,
                range,
            });
            forcing.push(next_seq);
            next_seq += 1;
        }
        let mut revoke = Vec::new();
        for l in &removed {
            tracing::warn!(
                target: TARGET,
                lease = l.id.0,
                file = file.0,
                owner = l.owner.0,
                kind = %l.kind,
                "lease break timed out: forced removal"
            );
            fs.forcing.push(Forcing {
                seq: next_seq,
                kind: l.kind,
                owner: l.owner,
                range: l.range,
            });
            forcing.push(next_seq);
            next_seq += 1;
            if l.kind == LeaseKind::Layout {
                revoke.push(l.info(file));
            }
        }
        self.next_change = next_seq;
        let mut notes = Vec::new();
        let fs = &self.files[&file];
        for (id, p, _) in downgraded {
            let l = fs
                .leases
                .iter()
                .find(|l| l.id == id)
                .expect("downgraded, not removed");
            notes.push(self.note(
                l,
                file,
                EventKind::Lost,
                LeaseType::Read,
                p.reason,
                p.breaker,
            ));
        }
        for l in &removed {
            let p = l.removal.expect("due implies pending");
            notes.push(self.note(
                l,
                file,
                EventKind::Lost,
                LeaseType::Unlock,
                p.reason,
                p.breaker,
            ));
        }
        Some(Expired {
            notes,
            revoke,
            forcing,
        })
    }
}

impl Inner {
    fn now(&self, st: &State) -> u64 {
        match self.runtime {
            Runtime::Std => {
                let _ = st;
                u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
            }
            #[cfg(feature = "model-check")]
            Runtime::Model => st.model_now,
        }
    }

    fn deadline(&self, st: &State) -> Option<u64> {
        if st.break_time.is_zero() {
            None
        } else {
            let bt = u64::try_from(st.break_time.as_nanos()).unwrap_or(u64::MAX);
            Some(self.now(st).saturating_add(bt))
        }
    }

    /// Tells waiters that something changed.
    fn wake(&self, st: &mut State) {
        self.generation.fetch_add(1, Ordering::Release);
        if st.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Sleeps until woken or until `deadline` (engine clock).
    fn wait<'a>(
        self: &'a Arc<Self>,
        mut st: MutexGuard<'a, State>,
        deadline: Option<u64>,
    ) -> MutexGuard<'a, State> {
        st.waiters += 1;
        match self.runtime {
            Runtime::Std => {
                let generation = self.generation.load(Ordering::Acquire);
                drop(st);
                let changed = sync::spin_until(BREAK_SPIN, || {
                    self.generation.load(Ordering::Acquire) != generation
                });
                st = self.state.lock();
                if !changed && self.generation.load(Ordering::Acquire) == generation {
                    st = match deadline {
                        None => self.changed.wait(st),
                        Some(d) => self
                            .changed
                            .wait_until(st, self.epoch + Duration::from_nanos(d)),
                    };
                }
            }
            #[cfg(feature = "model-check")]
            Runtime::Model => match deadline {
                None => st = self.changed.wait(st),
                Some(d) => {
                    let id = st.next_timer;
                    st.next_timer += 1;
                    st.timers.insert(id, d);
                    let me = Arc::clone(self);
                    sync::spawn_model_thread(move || me.run_model_timer(id, d));
                    st = self.changed.wait(st);
                    st.timers.remove(&id);
                    // Other timers may have been waiting for this one.
                    self.changed.notify_all();
                }
            },
        }
        st.waiters -= 1;
        st
    }

    /// A model timer: when the scheduler runs it and no earlier timer is
    /// pending, time reaches `deadline` and the waiters wake.
    #[cfg(feature = "model-check")]
    fn run_model_timer(self: Arc<Self>, id: u64, deadline: u64) {
        let mut st = self.state.lock();
        loop {
            if !st.timers.contains_key(&id) {
                return; // its waiter left before it fired
            }
            let earliest = st.timers.values().copied().min().unwrap_or(deadline);
            if deadline <= earliest {
                st.model_now = st.model_now.max(deadline);
                self.wake(&mut st);
                return;
            }
            st.waiters += 1;
            st = self.changed.wait(st);
            st.waiters -= 1;
        }
    }

    /// Forces overdue leases of `file`, then — lock released — tells their
    /// holders and runs the revoke hook; until then the forced leases block
    /// the breakers they conflicted with (see [`Forcing`]).
    fn expire<'a>(
        self: &'a Arc<Self>,
        mut st: MutexGuard<'a, State>,
        file: FileKey,
        layout_too: bool,
    ) -> (MutexGuard<'a, State>, bool) {
        let now = self.now(&st);
        let Some(expired) = st.expire(file, now, layout_too) else {
            return (st, false);
        };
        let hook = st.revoke_hook.clone();
        self.wake(&mut st);
        drop(st);
        for note in expired.notes {
            note.deliver();
        }
        for info in &expired.revoke {
            if let Some(hook) = &hook {
                hook(info);
            }
            tracing::warn!(
                target: TARGET,
                lease = info.id.0,
                file = file.0,
                owner = info.owner.0,
                "layout lease revoked"
            );
        }
        let mut st = self.state.lock();
        if let Some(fs) = st.files.get_mut(&file) {
            fs.forcing.retain(|f| !expired.forcing.contains(&f.seq));
        }
        State::gc(&mut st, file);
        self.wake(&mut st);
        (st, true)
    }

    fn deliver<'a>(&'a self, st: MutexGuard<'a, State>, notes: Vec<Note>) -> MutexGuard<'a, State> {
        drop(st);
        for n in notes {
            n.deliver();
        }
        self.state.lock()
    }

    /// The break loop shared by every breaker: force overdue leases, refuse
    /// (`ETXTBSY`) what cannot be broken, mark and notify what conflicts,
    /// then wait — until nothing conflicts, the caller may not wait
    /// (`EWOULDBLOCK`), or it is interrupted (`EINTR`).
    ///
    /// For a layout breaker, `change` registers the change in progress
    /// (before anything is marked) and is left registered on success.
    fn run_break(
        self: &Arc<Self>,
        file: FileKey,
        breaker_owner: OwnerId,
        breaker: Breaker,
        opts: &BreakOptions,
        pending_open: Option<Access>,
    ) -> Result<Option<u64>, Errno> {
        let mut st = self.state.lock();
        let entered = self.now(&st);
        // Enter: from here on no lease that conflicts with this breaker can
        // be granted (the pending open counts as an open; the change in
        // progress holds layout requests), and everything that conflicts
        // is marked now, so every deadline this breaker waits for is at
        // most `break_time` away.
        let mut change: Option<u64> = None;
        if let Breaker::Layout(range) = breaker {
            if let Some(refused) = self.refuse_layout_change(&mut st, file, range, breaker_owner) {
                drop(self.deliver(st, refused));
                return Err(Errno::ETXTBSY);
            }
            let fs = st.files.entry(file).or_default();
            if fs.changes.len() >= MAX_CHANGES_PER_FILE {
                State::gc(&mut st, file);
                return Err(Errno::EBUSY);
            }
            let id = st.next_change;
            st.next_change += 1;
            st.files
                .get_mut(&file)
                .expect("just inserted")
                .changes
                .push(Change {
                    id,
                    owner: breaker_owner,
                    range,
                });
            change = Some(id);
        }
        if let Some(access) = pending_open {
            st.files.entry(file).or_default().count_open(access, 1);
        }
        let mut waited = false;
        let mut broken = 0u64;
        let result = loop {
            let notes = self.mark(&mut st, file, breaker_owner, breaker, opts.deadline);
            if !notes.is_empty() {
                broken += notes.len() as u64;
                st = self.deliver(st, notes);
                continue;
            }
            let (s, expired) = self.expire(st, file, true);
            st = s;
            if expired {
                continue;
            }
            let Some(fs) = st.files.get(&file) else {
                break Ok(());
            };
            let blocked_by_forcing = fs.forcing.iter().any(|f| f.blocks(breaker, breaker_owner));
            let conflicts = fs
                .leases
                .iter()
                .any(|l| breaker.conflict(l, breaker_owner).is_some());
            if !conflicts && !blocked_by_forcing {
                break Ok(());
            }
            #[cfg(feature = "model-check")]
            if st.fault == Fault::SkipBreakWait {
                break Ok(());
            }
            if opts.nonblocking {
                tracing::debug!(target: TARGET, file = file.0, breaker = breaker_owner.0, "non-blocking breaker: EWOULDBLOCK");
                break Err(Errno::EWOULDBLOCK);
            }
            if interrupted(opts) {
                tracing::debug!(target: TARGET, file = file.0, breaker = breaker_owner.0, "breaker interrupted: EINTR");
                break Err(Errno::EINTR);
            }
            let deadline = fs
                .leases
                .iter()
                .filter(|l| breaker.conflict(l, breaker_owner).is_some())
                .filter_map(Lease::next_deadline)
                .min();
            if deadline.is_some_and(|d| d <= self.now(&st)) {
                continue; // overdue: the next round forces it
            }
            waited = true;
            st = self.wait(st, deadline);
        };
        if let Some(access) = pending_open {
            if let Some(fs) = st.files.get_mut(&file) {
                fs.count_open(access, -1);
            }
        }
        if result.is_err() {
            if let (Some(id), Some(fs)) = (change, st.files.get_mut(&file)) {
                fs.changes.retain(|c| c.id != id);
            }
        }
        let elapsed = self.now(&st).saturating_sub(entered);
        State::gc(&mut st, file);
        // Dropping a pending open or a change may let someone else go.
        self.wake(&mut st);
        drop(st);
        if let Some(report) = &opts.report {
            report.waited_ns.store(elapsed, Ordering::Relaxed);
            report.broken.store(broken, Ordering::Relaxed);
        }
        if result.is_ok() && waited {
            tracing::debug!(
                target: TARGET,
                file = file.0,
                breaker = breaker_owner.0,
                ?breaker,
                waited_us = elapsed / 1000,
                "lease break done"
            );
        }
        result.map(|()| change)
    }

    /// `ETXTBSY` cases of a layout change (SPEC §3.2), checked before
    /// anything is broken; returns the notes for the holders of unbreakable
    /// leases, who are told someone tried.
    fn refuse_layout_change(
        &self,
        st: &mut State,
        file: FileKey,
        range: ByteRange,
        owner: OwnerId,
    ) -> Option<Vec<Note>> {
        let fs = st.files.get(&file)?;
        let others = || {
            fs.leases.iter().filter(|l| {
                l.kind == LeaseKind::Layout && l.owner != owner && l.range.overlaps(&range)
            })
        };
        let unbreakable: Vec<&Lease> = others().filter(|l| l.unbreakable).collect();
        if !unbreakable.is_empty() {
            tracing::info!(target: TARGET, file = file.0, breaker = owner.0, ?range, "layout change refused: unbreakable layout lease (ETXTBSY)");
            let reason = BreakReason::LayoutChange(range);
            return Some(
                unbreakable
                    .into_iter()
                    .map(|l| st.note(l, file, EventKind::Refused, l.ty, reason, owner))
                    .collect(),
            );
        }
        let shared_holder = fs
            .leases
            .iter()
            .any(|l| l.kind == LeaseKind::Layout && l.owner == owner && l.ty == LeaseType::Read);
        if shared_holder && others().any(|l| l.ty == LeaseType::Write) {
            tracing::info!(target: TARGET, file = file.0, breaker = owner.0, ?range, "layout change refused: another owner holds the exclusive layout lease (ETXTBSY)");
            return Some(Vec::new());
        }
        None
    }

    /// Marks every conflicting lease that is not already broken toward the
    /// needed target; returns the notifications to send.
    fn mark(
        &self,
        st: &mut State,
        file: FileKey,
        breaker_owner: OwnerId,
        breaker: Breaker,
        bound: Option<BreakDeadline>,
    ) -> Vec<Note> {
        // lease-break-time from now, but no later than the bound of the
        // operation this break is part of (SPEC §3.3.5).
        let deadline = match (self.deadline(st), bound.and_then(|b| b.at_ns)) {
            (Some(own), Some(bound)) => Some(own.min(bound)),
            (own, bound) => own.or(bound),
        };
        let reason = breaker.reason();
        let Some(fs) = st.files.get_mut(&file) else {
            return Vec::new();
        };
        let mut marked = Vec::new();
        for (i, l) in fs.leases.iter_mut().enumerate() {
            let Some(target) = breaker.conflict(l, breaker_owner) else {
                continue;
            };
            let pending = Pending {
                deadline,
                reason,
                breaker: breaker_owner,
            };
            let newly = match target {
                LeaseType::Unlock if l.removal.is_none() => {
                    l.removal = Some(pending);
                    true
                }
                LeaseType::Read if !l.breaking() => {
                    l.downgrade = Some(pending);
                    true
                }
                _ => false,
            };
            if !newly {
                // Already breaking (another breaker marked it, perhaps later
                // than this operation began): its deadline may only move
                // earlier, to this operation's bound, so that no operation
                // waits past its own (SPEC §3.3.5).
                let pending = match (l.removal.as_mut(), l.downgrade.as_mut()) {
                    (Some(p), _) | (None, Some(p)) => Some(p),
                    (None, None) => None,
                };
                if let (Some(p), Some(ours)) = (pending, deadline) {
                    p.deadline = Some(p.deadline.map_or(ours, |theirs| theirs.min(ours)));
                }
            }
            if newly {
                tracing::info!(
                    target: TARGET,
                    lease = l.id.0,
                    file = file.0,
                    owner = l.owner.0,
                    breaker = breaker_owner.0,
                    kind = %l.kind,
                    %target,
                    "lease break start"
                );
                marked.push((i, target));
            }
        }
        #[cfg(feature = "model-check")]
        if st.fault == Fault::SkipNotify {
            return Vec::new();
        }
        let st = &*st;
        let fs = &st.files[&file];
        marked
            .into_iter()
            .map(|(i, target)| {
                st.note(
                    &fs.leases[i],
                    file,
                    EventKind::Break,
                    target,
                    reason,
                    breaker_owner,
                )
            })
            .collect()
    }
}

impl LeaseEngine {
    /// An engine whose breakers give holders `break_time` (lease-break-time;
    /// zero: wait for them indefinitely, never force).
    pub fn new(break_time: Duration) -> Self {
        Self::with_runtime(Runtime::Std, break_time)
    }

    /// An engine on shuttle's primitives and a virtual clock, for model
    /// checking inside `shuttle::check_*`. Time passes only when a breaker's
    /// wait times out, at a point the scheduler chooses.
    #[cfg(feature = "model-check")]
    pub fn new_model(break_time: Duration) -> Self {
        Self::with_runtime(Runtime::Model, break_time)
    }

    fn with_runtime(runtime: Runtime, break_time: Duration) -> Self {
        LeaseEngine {
            inner: Arc::new(Inner {
                runtime,
                state: Mutex::new(runtime, State::new(break_time)),
                changed: Condvar::new(runtime),
                epoch: Instant::now(),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// Installs a deliberately broken protocol (negative controls only).
    #[cfg(feature = "model-check")]
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        self.inner.state.lock().fault = fault;
    }

    /// The deadline of an operation that starts now: lease-break-time from
    /// now on the engine's clock, or never when it is 0. Compute it once, at
    /// the start, and pass it to every wait of the operation
    /// ([`BreakOptions::until`], [`LeaseEngine::time_left`]).
    pub fn break_deadline(&self) -> BreakDeadline {
        let st = self.inner.state.lock();
        BreakDeadline {
            at_ns: self.inner.deadline(&st),
        }
    }

    /// How long until `deadline` on the engine's clock (zero once it has
    /// passed); `None` when it never comes.
    pub fn time_left(&self, deadline: BreakDeadline) -> Option<Duration> {
        let at = deadline.at_ns?;
        let st = self.inner.state.lock();
        Some(Duration::from_nanos(at.saturating_sub(self.inner.now(&st))))
    }

    /// Tells the `holders` of pins over `range` of `file` that `breaker`'s
    /// layout change was refused because of their pins (SPEC §4.3, `fail`:
    /// "pin holders are notified") — the same [`EventKind::Refused`] event
    /// an unbreakable lease's holder gets. Each holder gets one event, about
    /// its layout lease over the range when it has one (so that lease's
    /// callback runs too); a holder with no such lease (pins outlive leases,
    /// SPEC §4.2) gets it about no lease: `lease.id` is `LeaseId(0)`, which
    /// no lease has, `lease.ty` is `Unlock` and `lease.range` is `range`.
    /// The breaker itself is never told of its own refusal.
    pub fn notify_refused(
        &self,
        file: FileKey,
        holders: &[OwnerId],
        range: ByteRange,
        breaker: OwnerId,
    ) {
        let st = self.inner.state.lock();
        let reason = BreakReason::LayoutChange(range);
        let mut notes = Vec::new();
        let mut told: Vec<OwnerId> = Vec::new();
        for &owner in holders {
            if owner == breaker || told.contains(&owner) {
                continue;
            }
            told.push(owner);
            let lease = st.files.get(&file).and_then(|fs| {
                let mine = || {
                    fs.leases.iter().filter(|l| {
                        l.kind == LeaseKind::Layout && l.owner == owner && l.range.overlaps(&range)
                    })
                };
                // The unbreakable lease, when there is one, is the one that
                // entitles pins (SPEC §4.2).
                mine().find(|l| l.unbreakable).or_else(|| mine().next())
            });
            let note = match lease {
                Some(l) => st.note(l, file, EventKind::Refused, l.ty, reason, breaker),
                None => {
                    let entry = st.owners.get(&owner);
                    Note {
                        event: BreakEvent {
                            kind: EventKind::Refused,
                            lease: LeaseInfo {
                                id: LeaseId(0),
                                kind: LeaseKind::Layout,
                                ty: LeaseType::Unlock,
                                target: LeaseType::Unlock,
                                unbreakable: false,
                                state: LeaseState::Active,
                                owner,
                                handle: HandleId(0),
                                file,
                                range,
                            },
                            target: LeaseType::Unlock,
                            reason,
                            breaker,
                        },
                        lease_cb: None,
                        owner_cb: entry.and_then(|o| o.callback.clone()),
                        queue: entry.and_then(|o| o.queue.clone()),
                    }
                }
            };
            notes.push(note);
        }
        tracing::info!(target: TARGET, file = file.0, breaker = breaker.0, ?range, holders = notes.len(), "pin holders told of a refused layout change");
        drop(self.inner.deliver(st, notes));
    }

    /// lease-break-time.
    pub fn break_time(&self) -> Duration {
        self.inner.state.lock().break_time
    }

    /// Sets lease-break-time for breaks that start from now on.
    pub fn set_break_time(&self, break_time: Duration) {
        self.inner.state.lock().break_time = break_time;
    }

    /// Installs (or removes) the hook run when a layout lease is forcibly
    /// removed at `break_time`, before any breaker proceeds.
    pub fn set_revoke_hook(&self, hook: Option<RevokeHook>) {
        self.inner.state.lock().revoke_hook = hook;
    }

    /// Installs (or removes) the callback run for every event about the
    /// owner's leases.
    pub fn set_owner_callback(
        &self,
        owner: OwnerId,
        callback: Option<BreakCallback>,
    ) -> Result<(), Errno> {
        let mut st = self.inner.state.lock();
        if !st.owners.contains_key(&owner) {
            if callback.is_none() {
                return Ok(());
            }
            if st.owners.len() >= MAX_OWNER_ENTRIES {
                return Err(Errno::EMFILE);
            }
        }
        let e = st.owners.entry(owner).or_default();
        e.callback = callback;
        if e.callback.is_none() && e.queue.is_none() {
            st.owners.remove(&owner);
        }
        Ok(())
    }

    /// The owner's event queue (created on first use; events raised before
    /// it existed are not in it — `list` shows the leases' state).
    pub fn owner_events(&self, owner: OwnerId) -> Result<EventQueue, Errno> {
        let mut st = self.inner.state.lock();
        if !st.owners.contains_key(&owner) && st.owners.len() >= MAX_OWNER_ENTRIES {
            return Err(Errno::EMFILE);
        }
        let e = st.owners.entry(owner).or_default();
        if e.queue.is_none() {
            e.queue = Some(QueueInner::new(self.inner.runtime));
        }
        Ok(EventQueue::from_inner(Arc::clone(
            e.queue.as_ref().expect("just set"),
        )))
    }

    /// A token to interrupt waits of this engine (`EINTR`).
    pub fn new_interrupt(&self) -> Arc<Interrupt> {
        Arc::new(Interrupt {
            raised: AtomicBool::new(false),
            engine: Arc::downgrade(&self.inner),
        })
    }

    /// Records an open handle (after `open` succeeded, or for a file just
    /// created, which nobody can hold a lease on). No break.
    pub fn opened(
        &self,
        file: FileKey,
        handle: HandleId,
        owner: OwnerId,
        access: Access,
    ) -> Result<(), Errno> {
        let mut st = self.inner.state.lock();
        let fs = st.files.entry(file).or_default();
        if fs.handles.contains_key(&handle) {
            return Err(Errno::EEXIST);
        }
        if fs.handles.len() >= MAX_HANDLES_PER_FILE {
            State::gc(&mut st, file);
            return Err(Errno::ENFILE);
        }
        fs.handles.insert(handle, OpenHandle { owner, access });
        fs.count_open(access, 1);
        Ok(())
    }

    /// Opens: records the handle, then breaks the open leases it conflicts
    /// with, as Linux's `open(2)` does (the handle counts as open during the
    /// break). On error (`EWOULDBLOCK`, `EINTR`) the handle is not recorded.
    pub fn open(
        &self,
        file: FileKey,
        handle: HandleId,
        owner: OwnerId,
        access: Access,
        opts: &BreakOptions,
    ) -> Result<(), Errno> {
        self.opened(file, handle, owner, access)?;
        match self
            .inner
            .run_break(file, owner, Breaker::Open(access), opts, None)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                self.closed(file, handle);
                Err(e)
            }
        }
    }

    /// Forgets a handle and releases every lease bound to it — open and
    /// layout leases alike, as Linux releases leases when a file is closed.
    pub fn closed(&self, file: FileKey, handle: HandleId) {
        let mut st = self.inner.state.lock();
        let Some(fs) = st.files.get_mut(&file) else {
            return;
        };
        if let Some(h) = fs.handles.remove(&handle) {
            fs.count_open(h.access, -1);
        }
        let removed = st.remove_leases(file, |l| l.handle == handle);
        for l in &removed {
            tracing::debug!(target: TARGET, lease = l.id.0, file = file.0, "lease released at close");
        }
        State::gc(&mut st, file);
        self.inner.wake(&mut st);
    }

    /// Breaks the open leases an open with `access` conflicts with (a
    /// read-only open: write leases, by downgrade; a writing open: every
    /// open lease, by removal) and waits per `opts`. The opener counts as an
    /// open handle of the file while it waits. Prefer [`open`](Self::open),
    /// which also records the handle without a gap.
    pub fn break_for_open(
        &self,
        file: FileKey,
        breaker: OwnerId,
        access: Access,
        opts: &BreakOptions,
    ) -> Result<(), Errno> {
        self.inner
            .run_break(file, breaker, Breaker::Open(access), opts, Some(access))
            .map(drop)
    }

    /// Breaks every open lease of the file by removal (truncate by path)
    /// and waits per `opts`.
    pub fn break_for_truncate(
        &self,
        file: FileKey,
        breaker: OwnerId,
        opts: &BreakOptions,
    ) -> Result<(), Errno> {
        self.inner
            .run_break(
                file,
                breaker,
                Breaker::Truncate,
                opts,
                Some(Access::WriteOnly),
            )
            .map(drop)
    }

    /// The one entry point of every layout-changing operation: breaks the
    /// layout leases of other owners overlapping `range` (SPEC §3.2), waits
    /// per `opts`, and returns a guard that keeps other owners' overlapping
    /// layout lease requests waiting until it is dropped. Call it before
    /// taking any file-system lock.
    ///
    /// Errors: `ETXTBSY` (unbreakable lease of another owner over the range,
    /// or the caller holds a shared layout lease while another owner's
    /// exclusive one overlaps the range), `EWOULDBLOCK`, `EINTR`, `EINVAL`
    /// (empty range), `EBUSY` (too many changes in progress on the file).
    pub fn begin_layout_change(
        &self,
        file: FileKey,
        range: ByteRange,
        breaker: OwnerId,
        opts: &BreakOptions,
    ) -> Result<LayoutChangeGuard, Errno> {
        range.validate()?;
        let id = self
            .inner
            .run_break(file, breaker, Breaker::Layout(range), opts, None)?
            .expect("a layout break registers its change");
        Ok(LayoutChangeGuard {
            inner: Arc::clone(&self.inner),
            file,
            range,
            owner: breaker,
            id,
        })
    }

    /// Sets, changes or releases a lease (`F_SETLEASE`, with `F_LAYOUT` and
    /// `F_EXCLUSIVE` for layout leases): see [`crate::lease`] for the rules.
    /// Returns the lease's id (for `Unlock`, the id of a released lease).
    pub fn set_lease(
        &self,
        file: FileKey,
        handle: HandleId,
        owner: OwnerId,
        req: LeaseRequest,
    ) -> Result<LeaseId, Errno> {
        if req.layout {
            self.set_layout_lease(file, handle, owner, req)
        } else {
            self.set_open_lease(file, handle, owner, req)
        }
    }

    /// Forces overdue *open* leases (Linux's `time_out_leases` in
    /// `F_SETLEASE` and `F_GETLEASE`); layout leases are left to breakers.
    fn expire_open_leases<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        file: FileKey,
    ) -> MutexGuard<'a, State> {
        loop {
            let (s, expired) = self.inner.expire(st, file, false);
            st = s;
            if !expired {
                return st;
            }
        }
    }

    fn set_open_lease(
        &self,
        file: FileKey,
        handle: HandleId,
        owner: OwnerId,
        req: LeaseRequest,
    ) -> Result<LeaseId, Errno> {
        if req.unbreakable || !req.range.is_whole() {
            return Err(Errno::EINVAL);
        }
        let st = self.inner.state.lock();
        let mut st = self.expire_open_leases(st, file);
        let access = st
            .files
            .get(&file)
            .and_then(|fs| fs.handles.get(&handle))
            .map(|h| h.access)
            .ok_or(Errno::EBADF)?;
        let fs = st.files.get_mut(&file).expect("the handle is open");
        let mine = fs
            .leases
            .iter()
            .position(|l| l.kind == LeaseKind::Lease && l.handle == handle);
        if req.ty == LeaseType::Unlock {
            let Some(i) = mine else {
                return Err(Errno::EAGAIN);
            };
            let id = fs.leases[i].id;
            st.remove_leases(file, |l| l.id == id);
            tracing::debug!(target: TARGET, lease = id.0, file = file.0, "lease released");
            self.inner.wake(&mut st);
            return Ok(id);
        }
        // check_conflicting_open(): opens, including openers waiting in a
        // break, counted as Linux counts i_readcount and i_writecount.
        let open_conflict = match req.ty {
            LeaseType::Read => fs.writers > 0,
            _ => {
                let (self_w, self_r) = if access.writes() { (1, 0) } else { (0, 1) };
                fs.writers != self_w || fs.readers != self_r
            }
        };
        // No write lease while another handle holds any open lease.
        let lease_conflict = req.ty == LeaseType::Write
            && fs
                .leases
                .iter()
                .any(|l| l.kind == LeaseKind::Lease && l.handle != handle);
        if open_conflict || lease_conflict {
            tracing::debug!(
                target: TARGET,
                file = file.0,
                owner = owner.0,
                ty = %req.ty,
                open_conflict,
                "lease conflict: EAGAIN"
            );
            return Err(Errno::EAGAIN);
        }
        if let Some(i) = mine {
            // lease_modify(): change the type in place; reaching the target
            // of a pending downgrade completes it.
            let l = &mut fs.leases[i];
            l.ty = req.ty;
            if req.ty == LeaseType::Read {
                l.downgrade = None;
            }
            if req.callback.is_some() {
                l.callback = req.callback;
            }
            l.owner = owner;
            let id = l.id;
            tracing::debug!(target: TARGET, lease = id.0, file = file.0, ty = %req.ty, "lease modified");
            self.inner.wake(&mut st);
            return Ok(id);
        }
        self.insert(&mut st, file, handle, owner, req, LeaseKind::Lease)
    }

    fn insert(
        &self,
        st: &mut State,
        file: FileKey,
        handle: HandleId,
        owner: OwnerId,
        req: LeaseRequest,
        kind: LeaseKind,
    ) -> Result<LeaseId, Errno> {
        let fs = st.files.entry(file).or_default();
        if fs.leases.len() >= MAX_LEASES_PER_FILE {
            tracing::warn!(target: TARGET, file = file.0, limit = MAX_LEASES_PER_FILE, "lease table of the file is full");
            State::gc(st, file);
            return Err(ENOLCK);
        }
        let id = LeaseId(st.next_lease);
        st.next_lease += 1;
        st.files
            .get_mut(&file)
            .expect("just inserted")
            .leases
            .push(Lease {
                id,
                kind,
                ty: req.ty,
                unbreakable: req.unbreakable,
                owner,
                handle,
                range: req.range,
                callback: req.callback,
                downgrade: None,
                removal: None,
            });
        st.lease_files.insert(id, file);
        tracing::debug!(target: TARGET, lease = id.0, file = file.0, owner = owner.0, %kind, ty = %req.ty, "lease granted");
        Ok(id)
    }

    fn set_layout_lease(
        &self,
        file: FileKey,
        handle: HandleId,
        owner: OwnerId,
        req: LeaseRequest,
    ) -> Result<LeaseId, Errno> {
        req.range.validate()?;
        let mut st = self.inner.state.lock();
        // A request overlapping another owner's change in progress waits
        // until the change is done.
        loop {
            if req.ty == LeaseType::Unlock {
                break;
            }
            let blocked = st.files.get(&file).is_some_and(|fs| {
                fs.changes
                    .iter()
                    .any(|c| c.owner != owner && c.range.overlaps(&req.range))
            });
            if !blocked {
                break;
            }
            if req.wait.nonblocking {
                return Err(Errno::EWOULDBLOCK);
            }
            if interrupted(&req.wait) {
                return Err(Errno::EINTR);
            }
            st = self.inner.wait(st, None);
        }
        if req.ty == LeaseType::Unlock {
            let removed = st.remove_leases(file, |l| {
                l.kind == LeaseKind::Layout
                    && l.handle == handle
                    && l.owner == owner
                    && l.range.overlaps(&req.range)
            });
            State::gc(&mut st, file);
            let Some(first) = removed.first() else {
                return Err(Errno::EAGAIN);
            };
            tracing::debug!(target: TARGET, lease = first.id.0, file = file.0, count = removed.len(), "layout lease released");
            self.inner.wake(&mut st);
            return Ok(first.id);
        }
        let fs = st.files.entry(file).or_default();
        if req.ty == LeaseType::Write
            && fs.leases.iter().any(|l| {
                l.kind == LeaseKind::Layout
                    && l.owner != owner
                    && l.ty == LeaseType::Write
                    && l.range.overlaps(&req.range)
            })
        {
            tracing::debug!(target: TARGET, file = file.0, owner = owner.0, "layout lease conflict: EAGAIN");
            State::gc(&mut st, file);
            return Err(Errno::EAGAIN);
        }
        if let Some(l) = fs.leases.iter_mut().find(|l| {
            l.kind == LeaseKind::Layout
                && l.handle == handle
                && l.owner == owner
                && l.range == req.range
        }) {
            if l.breaking() {
                // A lease cannot be un-broken: release it, then ask again.
                return Err(Errno::EAGAIN);
            }
            l.ty = req.ty;
            l.unbreakable = req.unbreakable;
            if req.callback.is_some() {
                l.callback = req.callback;
            }
            return Ok(l.id);
        }
        self.insert(&mut st, file, handle, owner, req, LeaseKind::Layout)
    }

    /// Releases one lease by id (what a registration or mapping does when
    /// it goes away). `ENOENT` if it is not held (any more).
    pub fn release(&self, id: LeaseId) -> Result<(), Errno> {
        let mut st = self.inner.state.lock();
        let file = *st.lease_files.get(&id).ok_or(Errno::ENOENT)?;
        st.remove_leases(file, |l| l.id == id);
        State::gc(&mut st, file);
        tracing::debug!(target: TARGET, lease = id.0, file = file.0, "lease released");
        self.inner.wake(&mut st);
        Ok(())
    }

    /// `F_GETLEASE`: the type of the handle's open lease — the *target*
    /// type while a break is pending (`Read` for a downgrade, `Unlock` for a
    /// removal) — or `Unlock` when it has none.
    pub fn get_lease(&self, file: FileKey, handle: HandleId) -> LeaseType {
        let st = self.inner.state.lock();
        let st = self.expire_open_leases(st, file);
        st.files
            .get(&file)
            .and_then(|fs| {
                fs.leases
                    .iter()
                    .find(|l| l.kind == LeaseKind::Lease && l.handle == handle)
            })
            .map_or(LeaseType::Unlock, Lease::target)
    }

    /// One lease, if it is held.
    pub fn lease(&self, id: LeaseId) -> Option<LeaseInfo> {
        let st = self.inner.state.lock();
        let file = *st.lease_files.get(&id)?;
        st.files[&file]
            .leases
            .iter()
            .find(|l| l.id == id)
            .map(|l| l.info(file))
    }

    /// When a breaking lease will be forced (downgraded or removed), as a
    /// [`BreakDeadline`] comparable with an operation's; `None` when the
    /// lease is not held or not breaking. (`BreakDeadline::never()` for a
    /// break under lease-break-time 0.)
    pub fn forced_at(&self, id: LeaseId) -> Option<BreakDeadline> {
        let st = self.inner.state.lock();
        let file = *st.lease_files.get(&id)?;
        let l = st.files[&file].leases.iter().find(|l| l.id == id)?;
        l.breaking().then(|| BreakDeadline {
            at_ns: l.next_deadline(),
        })
    }

    /// Every lease, by id: the `/proc/locks`-style listing.
    pub fn list(&self) -> Vec<LeaseInfo> {
        let st = self.inner.state.lock();
        let mut out: Vec<LeaseInfo> = st
            .files
            .iter()
            .flat_map(|(&file, fs)| fs.leases.iter().map(move |l| l.info(file)))
            .collect();
        out.sort_unstable_by_key(|i| i.id);
        out
    }

    /// The leases on one file, by id.
    pub fn list_file(&self, file: FileKey) -> Vec<LeaseInfo> {
        let st = self.inner.state.lock();
        st.files
            .get(&file)
            .map(|fs| fs.leases.iter().map(|l| l.info(file)).collect())
            .unwrap_or_default()
    }

    /// An owner is gone (process death, client disconnect): releases all its
    /// leases, forgets its handles and callback, and closes its event queue.
    /// Layout changes it has in progress end when their guards drop.
    pub fn drop_owner(&self, owner: OwnerId) {
        let mut st = self.inner.state.lock();
        let files: Vec<FileKey> = st.files.keys().copied().collect();
        let mut released = 0usize;
        for file in files {
            released += st.remove_leases(file, |l| l.owner == owner).len();
            let fs = st.files.get_mut(&file).expect("listed above");
            let gone: Vec<HandleId> = fs
                .handles
                .iter()
                .filter(|(_, h)| h.owner == owner)
                .map(|(&id, _)| id)
                .collect();
            for id in gone {
                let h = fs.handles.remove(&id).expect("listed above");
                fs.count_open(h.access, -1);
            }
            State::gc(&mut st, file);
        }
        let queue = st.owners.remove(&owner).and_then(|e| e.queue);
        self.inner.wake(&mut st);
        drop(st);
        if let Some(q) = queue {
            q.close();
        }
        tracing::debug!(target: TARGET, owner = owner.0, released, "owner dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const F: FileKey = FileKey(1);
    const A: OwnerId = OwnerId(1);
    const B: OwnerId = OwnerId(2);

    fn engine() -> LeaseEngine {
        LeaseEngine::new(Duration::from_secs(45))
    }

    #[test]
    fn file_state_is_forgotten_when_idle() {
        let e = engine();
        e.opened(F, HandleId(1), A, Access::ReadOnly).unwrap();
        let id = e
            .set_lease(F, HandleId(1), A, LeaseRequest::write())
            .unwrap();
        e.release(id).unwrap();
        assert_eq!(e.release(id), Err(Errno::ENOENT));
        e.closed(F, HandleId(1));
        assert!(e.inner.state.lock().files.is_empty());
    }

    #[test]
    fn unknown_handle_is_ebadf_and_unlock_without_lease_is_eagain() {
        let e = engine();
        assert_eq!(
            e.set_lease(F, HandleId(9), A, LeaseRequest::read()),
            Err(Errno::EBADF)
        );
        e.opened(F, HandleId(1), A, Access::ReadOnly).unwrap();
        assert_eq!(
            e.set_lease(F, HandleId(1), A, LeaseRequest::unlock()),
            Err(Errno::EAGAIN)
        );
        assert_eq!(
            e.opened(F, HandleId(1), A, Access::ReadOnly),
            Err(Errno::EEXIST)
        );
    }

    #[test]
    fn lease_table_limit_is_enolck() {
        let e = engine();
        for h in 0..MAX_LEASES_PER_FILE as u64 {
            e.set_lease(F, HandleId(h), A, LeaseRequest::layout_shared())
                .unwrap();
        }
        let err = e
            .set_lease(F, HandleId(u64::MAX), A, LeaseRequest::layout_shared())
            .unwrap_err();
        assert_eq!(err, ENOLCK);
    }

    #[test]
    fn layout_requests_validate_ranges_and_open_leases_refuse_ranges() {
        let e = engine();
        let empty = ByteRange::new(5, 5);
        assert_eq!(
            e.set_lease(
                F,
                HandleId(1),
                A,
                LeaseRequest::layout_shared().range(empty)
            ),
            Err(Errno::EINVAL)
        );
        e.opened(F, HandleId(1), A, Access::ReadOnly).unwrap();
        assert_eq!(
            e.set_lease(
                F,
                HandleId(1),
                A,
                LeaseRequest::read().range(ByteRange::new(0, 1))
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            e.begin_layout_change(F, empty, B, &BreakOptions::default())
                .unwrap_err(),
            Errno::EINVAL
        );
    }

    #[test]
    fn callback_may_release_the_lease_from_inside() {
        let e = engine();
        let calls = Arc::new(AtomicUsize::new(0));
        let (e2, c2) = (e.clone(), Arc::clone(&calls));
        let cb: BreakCallback = Arc::new(move |ev: &BreakEvent| {
            c2.fetch_add(1, Ordering::SeqCst);
            e2.release(ev.lease.id).unwrap();
        });
        e.set_lease(
            F,
            HandleId(1),
            A,
            LeaseRequest::layout_shared().callback(cb),
        )
        .unwrap();
        let guard = e
            .begin_layout_change(F, ByteRange::WHOLE, B, &BreakOptions::default())
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(e.list().is_empty());
        drop(guard);
    }

    #[test]
    fn a_breaking_layout_lease_cannot_be_modified() {
        let e = engine();
        e.set_lease(F, HandleId(1), A, LeaseRequest::layout_shared())
            .unwrap();
        assert_eq!(
            e.begin_layout_change(F, ByteRange::WHOLE, B, &BreakOptions::nonblocking())
                .unwrap_err(),
            Errno::EWOULDBLOCK
        );
        assert_eq!(
            e.set_lease(F, HandleId(1), A, LeaseRequest::layout_exclusive()),
            Err(Errno::EAGAIN)
        );
        assert_eq!(e.list()[0].state, LeaseState::Breaking);
    }

    #[test]
    fn only_breakers_run_the_revoke_hook() {
        let e = LeaseEngine::new(Duration::from_millis(1));
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        e.set_revoke_hook(Some(Arc::new(move |_: &LeaseInfo| {
            r.fetch_add(1, Ordering::SeqCst);
        })));
        e.set_lease(F, HandleId(1), A, LeaseRequest::layout_shared())
            .unwrap();
        let nb = BreakOptions::nonblocking();
        assert_eq!(
            e.begin_layout_change(F, ByteRange::WHOLE, B, &nb)
                .unwrap_err(),
            Errno::EWOULDBLOCK
        );
        std::thread::sleep(Duration::from_millis(5));
        // Overdue, but lease requests and queries leave layout leases to
        // breakers (the file system may call them under its own locks).
        e.opened(F, HandleId(2), A, Access::ReadOnly).unwrap();
        assert_eq!(e.get_lease(F, HandleId(2)), LeaseType::Unlock);
        e.set_lease(F, HandleId(2), A, LeaseRequest::read())
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        drop(e.begin_layout_change(F, ByteRange::WHOLE, B, &nb).unwrap());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn drop_owner_releases_everything_and_closes_its_queue() {
        let e = engine();
        let q = e.owner_events(A).unwrap();
        e.opened(F, HandleId(1), A, Access::ReadWrite).unwrap();
        e.set_lease(F, HandleId(1), A, LeaseRequest::write())
            .unwrap();
        e.set_lease(FileKey(2), HandleId(2), A, LeaseRequest::layout_shared())
            .unwrap();
        e.drop_owner(A);
        assert!(e.list().is_empty());
        assert!(e.inner.state.lock().files.is_empty());
        assert_eq!(q.try_recv(), Err(super::super::QueueError::Closed));
    }

    #[test]
    fn a_lease_overdue_for_downgrade_and_removal_is_removed_with_one_event() {
        let e = engine();
        e.opened(F, HandleId(1), A, Access::ReadOnly).unwrap();
        e.set_lease(F, HandleId(1), A, LeaseRequest::write())
            .unwrap();
        e.set_break_time(Duration::from_millis(1));
        // A read-only open asks for a downgrade, a writing open for removal;
        // both overdue at once give one `Lost` note, for the removal.
        assert_eq!(
            e.break_for_open(F, B, Access::ReadOnly, &BreakOptions::nonblocking()),
            Err(Errno::EWOULDBLOCK)
        );
        assert_eq!(
            e.break_for_open(F, B, Access::WriteOnly, &BreakOptions::nonblocking()),
            Err(Errno::EWOULDBLOCK)
        );
        let q = e.owner_events(A).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(e.get_lease(F, HandleId(1)), LeaseType::Unlock);
        let ev = q.try_recv().unwrap().unwrap();
        assert_eq!((ev.kind, ev.target), (EventKind::Lost, LeaseType::Unlock));
        assert_eq!(q.try_recv(), Ok(None));
    }
}
