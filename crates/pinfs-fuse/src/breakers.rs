//! The mount's breaker threads: requests that may break a lease (and so
//! wait up to lease-break-time for a holder) run here, never on a FUSE
//! worker, so a few waiting `truncate`s — from any user — cannot starve
//! `stat`, `lookup` or `readdir` of everyone else.
//!
//! A bounded pool: at most [`MAX_BREAKERS`] threads (started when needed),
//! a queue behind them of at most [`MAX_BREAKER_QUEUE`] requests in all, and
//! at most [`MAX_BREAKERS_PER_UID`] requests of one uid running or queued
//! at a time (root exempt), so one user cannot take every slot. A request
//! past a bound is answered `EAGAIN` at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// At most this many breaker threads per mount.
pub const MAX_BREAKERS: usize = 64;

/// At most this many breaking requests admitted (running or queued) per
/// mount; `EAGAIN` past it.
pub const MAX_BREAKER_QUEUE: usize = 1024;

/// At most this many breaking requests of one non-root uid admitted
/// (running or queued) at a time; `EAGAIN` past it. A quarter of the
/// threads: four users at least share the pool.
pub const MAX_BREAKERS_PER_UID: usize = MAX_BREAKERS / 4;

/// A request's work: called with `true` to run, `false` to answer
/// `EAGAIN` (refused at a bound).
type Job = Box<dyn FnOnce(bool) + Send + 'static>;

/// The pool of one mount.
#[derive(Debug, Default, Clone)]
pub struct Breakers {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Breakers")
            .field("admitted", &s.admitted)
            .field("threads", &s.threads)
            .finish()
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<(u32, Job)>,
    /// Requests admitted per uid (root not counted).
    per_uid: HashMap<u32, usize>,
    admitted: usize,
    threads: usize,
    idle: usize,
    stopping: bool,
}

impl Breakers {
    /// Run `job(true)` for `uid` on a breaker thread, or `job(false)` here
    /// at once when a bound is reached (the job answers `EAGAIN`). Returns
    /// whether it was admitted.
    pub fn submit<F: FnOnce(bool) + Send + 'static>(&self, uid: u32, job: F) -> bool {
        let mut s = self.inner.state.lock();
        let over_uid =
            uid != 0 && s.per_uid.get(&uid).copied().unwrap_or(0) >= MAX_BREAKERS_PER_UID;
        if s.stopping || s.admitted >= MAX_BREAKER_QUEUE || over_uid {
            drop(s);
            job(false);
            return false;
        }
        if uid != 0 {
            *s.per_uid.entry(uid).or_default() += 1;
        }
        s.admitted += 1;
        s.queue.push_back((uid, Box::new(job)));
        if s.idle > 0 {
            self.inner.work.notify_one();
        } else if s.threads < MAX_BREAKERS {
            let shared = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("pinfs-fuse-breaker".to_string())
                .spawn(move || shared.serve());
            match spawned {
                Ok(_) => s.threads += 1,
                Err(e) if s.threads == 0 => {
                    // No thread at all: the request cannot run.
                    tracing::warn!(target: "pinfs::fuse", error = %e, "cannot start a breaker thread");
                    let (uid, job) = s.queue.pop_back().expect("just queued");
                    Self::release(&mut s, uid);
                    drop(s);
                    // The closure is boxed: run it here rather than lose
                    // its reply (it blocks this worker, as before).
                    job(true);
                }
                Err(e) => {
                    tracing::warn!(target: "pinfs::fuse", error = %e, "cannot start another breaker thread; the request queues");
                }
            }
        }
        true
    }

    fn release(s: &mut State, uid: u32) {
        s.admitted -= 1;
        if uid != 0 {
            if let Some(n) = s.per_uid.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    s.per_uid.remove(&uid);
                }
            }
        }
    }

    /// Let the threads end once the queue is empty (at unmount).
    pub fn stop(&self) {
        self.inner.state.lock().stopping = true;
        self.inner.work.notify_all();
    }
}

impl Shared {
    fn serve(&self) {
        let mut s = self.state.lock();
        loop {
            if let Some((uid, job)) = s.queue.pop_front() {
                drop(s);
                job(true);
                s = self.state.lock();
                Breakers::release(&mut s, uid);
                continue;
            }
            if s.stopping {
                s.threads -= 1;
                return;
            }
            s.idle += 1;
            self.work.wait(&mut s);
            s.idle -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn one_uid_is_capped_root_is_not() {
        let b = Breakers::default();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go = Arc::new(Mutex::new(go_rx));
        let mut held = 0;
        for _ in 0..MAX_BREAKERS_PER_UID {
            let go = Arc::clone(&go);
            assert!(b.submit(1000, move |run| {
                assert!(run);
                let _ = go.lock().recv();
            }));
            held += 1;
        }
        let (tx, rx) = mpsc::channel();
        let t3 = tx.clone();
        assert!(!b.submit(1000, move |run| t3.send(u32::from(run) + 10).expect("send")));
        assert_eq!(
            rx.recv().expect("refused"),
            10,
            "uid 1000 past its cap is refused"
        );
        let t2 = tx.clone();
        assert!(b.submit(1001, move |run| t2.send(u32::from(run)).expect("send")));
        assert!(b.submit(0, move |run| tx.send(u32::from(run) + 1).expect("send")));
        let mut got = vec![rx.recv().expect("ran"), rx.recv().expect("ran")];
        got.sort();
        // Another uid and root still run while uid 1000 holds its slots.
        assert_eq!(got, [1, 2]);
        for _ in 0..held {
            go_tx.send(()).expect("release");
        }
        b.stop();
    }
}
