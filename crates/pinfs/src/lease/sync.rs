//! The lease engine's locks, condition variables and clock, swappable for a
//! model checker.
//!
//! The break protocol is a concurrency protocol (holders, breakers, timers),
//! so it is checked under `shuttle` (feature `model-check`). Instead of a
//! compile-time swap of `std` for `shuttle` — which would turn every other
//! test of the crate into a shuttle test as soon as the feature is on — each
//! engine picks its [`Runtime`] when it is created: [`Runtime::Std`]
//! (`parking_lot`, real time) for real use, [`Runtime::Model`] (shuttle's
//! primitives, virtual time) for `LeaseEngine::new_model`. Without the
//! feature the enums below have one variant and the match is free.
//!
//! Virtual time: shuttle does not model time (its `wait_timeout` never times
//! out), so under [`Runtime::Model`] a timed wait is an untimed wait plus a
//! *timer thread* that the scheduler may run at any point; when it runs it
//! advances the engine's virtual clock to its deadline and wakes the waiters.
//! Timers fire in deadline order (see `table.rs`), so every interleaving of
//! "the holder acts" and "break_time passes" is explored and no timer can
//! make another waiter observe time jumping past its own deadline.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// Which primitives an engine runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runtime {
    /// `parking_lot` locks and the monotonic clock.
    Std,
    /// shuttle's locks and a virtual clock (model checking only).
    #[cfg(feature = "model-check")]
    Model,
}

impl Runtime {
    /// Whether short spins before parking make sense (never under the model
    /// checker, where a spin is just a longer schedule).
    pub(crate) fn may_spin(self) -> bool {
        matches!(self, Runtime::Std)
    }
}

/// A mutex of the selected runtime.
// The model variant is larger, but there is one mutex per engine and per
// event queue; boxing it would put an indirection on every real lock.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Mutex<T> {
    Std(parking_lot::Mutex<T>),
    #[cfg(feature = "model-check")]
    Model(shuttle::sync::Mutex<T>),
}

/// The guard of a [`Mutex`].
pub(crate) enum MutexGuard<'a, T> {
    Std(parking_lot::MutexGuard<'a, T>),
    #[cfg(feature = "model-check")]
    Model(shuttle::sync::MutexGuard<'a, T>),
}

impl<T> Mutex<T> {
    pub(crate) fn new(runtime: Runtime, value: T) -> Self {
        match runtime {
            Runtime::Std => Mutex::Std(parking_lot::Mutex::new(value)),
            #[cfg(feature = "model-check")]
            Runtime::Model => Mutex::Model(shuttle::sync::Mutex::new(value)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        match self {
            Mutex::Std(m) => MutexGuard::Std(m.lock()),
            // A panic while locked is a failed model check; the lock itself
            // stays usable so that the failure is reported, not a poison error.
            #[cfg(feature = "model-check")]
            Mutex::Model(m) => MutexGuard::Model(m.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            MutexGuard::Std(g) => g,
            #[cfg(feature = "model-check")]
            MutexGuard::Model(g) => g,
        }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match self {
            MutexGuard::Std(g) => g,
            #[cfg(feature = "model-check")]
            MutexGuard::Model(g) => g,
        }
    }
}

/// A condition variable of the selected runtime. A guard and a condvar of
/// different runtimes never meet: both come from the same engine.
pub(crate) enum Condvar {
    Std(parking_lot::Condvar),
    #[cfg(feature = "model-check")]
    Model(shuttle::sync::Condvar),
}

impl Condvar {
    pub(crate) fn new(runtime: Runtime) -> Self {
        match runtime {
            Runtime::Std => Condvar::Std(parking_lot::Condvar::new()),
            #[cfg(feature = "model-check")]
            Runtime::Model => Condvar::Model(shuttle::sync::Condvar::new()),
        }
    }

    /// Waits for a notification (spurious wake-ups allowed).
    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        match (self, guard) {
            (Condvar::Std(cv), MutexGuard::Std(mut g)) => {
                cv.wait(&mut g);
                MutexGuard::Std(g)
            }
            #[cfg(feature = "model-check")]
            (Condvar::Model(cv), MutexGuard::Model(g)) => {
                MutexGuard::Model(cv.wait(g).unwrap_or_else(|e| e.into_inner()))
            }
            #[cfg(feature = "model-check")]
            _ => unreachable!("condvar and mutex of different runtimes"),
        }
    }

    /// Waits for a notification or until `deadline` (real time). Under the
    /// model runtime there is no real time: the wait is untimed, and callers
    /// that need modelled timeouts use the engine's timer threads instead.
    pub(crate) fn wait_until<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Instant,
    ) -> MutexGuard<'a, T> {
        match (self, guard) {
            (Condvar::Std(cv), MutexGuard::Std(mut g)) => {
                let _ = cv.wait_until(&mut g, deadline);
                MutexGuard::Std(g)
            }
            #[cfg(feature = "model-check")]
            (Condvar::Model(_), g @ MutexGuard::Model(_)) => {
                // A timed wait that the model cannot time out would report a
                // false deadlock; the queue's timed receive yields instead.
                drop(g);
                unreachable!("real-time wait under the model runtime")
            }
            #[cfg(feature = "model-check")]
            _ => unreachable!("condvar and mutex of different runtimes"),
        }
    }

    pub(crate) fn notify_all(&self) {
        match self {
            Condvar::Std(cv) => {
                cv.notify_all();
            }
            #[cfg(feature = "model-check")]
            Condvar::Model(cv) => cv.notify_all(),
        }
    }
}

/// Lets other threads run (a scheduling point under the model checker).
#[cfg(feature = "model-check")]
pub(crate) fn yield_now(runtime: Runtime) {
    match runtime {
        Runtime::Std => std::thread::yield_now(),
        Runtime::Model => shuttle::thread::yield_now(),
    }
}

/// Runs `f` on a new thread of the model (timer threads). Only the model
/// runtime has timer threads: real time needs none.
#[cfg(feature = "model-check")]
pub(crate) fn spawn_model_thread(f: impl FnOnce() + Send + 'static) {
    let _ = shuttle::thread::spawn(f);
}

/// Spins for at most `limit`, until `done()` holds. Returns whether it did.
/// Used before parking where the other side usually answers within a few
/// microseconds (a holder releasing, an event arriving): parking and being
/// woken costs a futex wake-up, and on a virtual machine an inter-processor
/// interrupt to a halted virtual CPU, which dominates such a hand-off.
///
/// The spin yields the processor every [`CHECKS_PER_YIELD`] checks from the
/// start. The thread it waits for has often just been woken *onto this
/// processor* (the scheduler puts a wakee next to its waker when the other
/// processor looks busy or halted), and then it runs only once the spinner
/// lets it: a spin that stayed pure for its first 2 µs (as this one once
/// did) added those 2 µs to every such hand-off, and `pinfs bench lease`
/// measured cold round trips of 6.6 µs with it against 4.2–4.5 µs without
/// (kernel: 5.4–6.4 µs, bare futex ping-pong: 2.6–4.1 µs, same runs). A
/// yield with nothing else to run costs a fraction of a microsecond, so the
/// other case — the thread answering from another processor — loses little.
pub(crate) fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    if limit.is_zero() {
        return done();
    }
    let start = Instant::now();
    let mut i: u32 = 0;
    loop {
        if done() {
            return true;
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(CHECKS_PER_YIELD) {
            // Reading the clock costs tens of nanoseconds: only here.
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::yield_now();
            continue;
        }
        std::hint::spin_loop();
    }
}

/// Checks of a spin between two yields (see [`spin_until`]).
const CHECKS_PER_YIELD: u32 = 16;
