//! The mount's breaker threads: requests that may break a lease (and so
//! wait up to lease-break-time for a holder) run here, never on a FUSE
//! worker, so a few waiting `truncate`s — from any user — cannot starve
//! `stat`, `lookup` or `readdir` of everyone else.
//!
//! A bounded pool: at most [`MAX_BREAKERS`] threads (started when needed).
//! One uid other than root runs at most [`MAX_BREAKERS_PER_UID`] requests at
//! a time — its others wait in the queue, so one user cannot take every
//! thread — and has at most [`MAX_BREAKER_QUEUE_PER_UID`] running or
//! queued; non-root users together at most [`MAX_BREAKER_QUEUE`]. A request
//! past those is answered `EAGAIN` at once. Root is exempt (its requests
//! are as many as its processes' threads blocked in them), and so are the
//! kernel's background page writebacks of shared mappings, which it
//! typically sends with root's ids.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// At most this many breaker threads per mount.
pub const MAX_BREAKERS: usize = 64;

/// At most this many requests of one non-root uid run at a time (a quarter
/// of the threads: four users at least share them); its others queue.
pub const MAX_BREAKERS_PER_UID: usize = MAX_BREAKERS / 4;

/// At most this many requests of one non-root uid running or queued;
/// `EAGAIN` past it.
pub const MAX_BREAKER_QUEUE_PER_UID: usize = 256;

/// At most this many requests of non-root uids running or queued in all;
/// `EAGAIN` past it.
pub const MAX_BREAKER_QUEUE: usize = 4096;

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
            .field("queued", &s.queue.len())
            .field("threads", &s.threads)
            .finish()
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<(u32, Job)>,
    /// Per non-root uid: requests running or queued.
    admitted: HashMap<u32, usize>,
    /// Per non-root uid: requests running.
    running: HashMap<u32, usize>,
    /// Requests of non-root uids running or queued.
    admitted_all: usize,
    threads: usize,
    idle: usize,
    /// Idle threads notified and not yet awake (so two requests arriving
    /// together wake two threads, not one twice).
    waking: usize,
    stopping: bool,
}

impl State {
    /// The first queued request whose uid may run another now.
    fn take(&mut self) -> Option<(u32, Job)> {
        let at = self.queue.iter().position(|(uid, _)| {
            *uid == 0 || self.running.get(uid).copied().unwrap_or(0) < MAX_BREAKERS_PER_UID
        })?;
        let (uid, job) = self.queue.remove(at)?;
        if uid != 0 {
            *self.running.entry(uid).or_default() += 1;
        }
        Some((uid, job))
    }

    /// A request of `uid` is done.
    fn done(&mut self, uid: u32) {
        if uid == 0 {
            return;
        }
        for map in [&mut self.running, &mut self.admitted] {
            if let Some(n) = map.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&uid);
                }
            }
        }
        self.admitted_all -= 1;
    }
}

impl Breakers {
    /// Run `job(true)` for `uid` on a breaker thread, or `job(false)` here
    /// at once when a bound is reached (the job answers `EAGAIN`). Returns
    /// whether it was admitted.
    pub fn submit<F: FnOnce(bool) + Send + 'static>(&self, uid: u32, job: F) -> bool {
        let mut s = self.inner.state.lock();
        let refused = s.stopping
            || (uid != 0
                && (s.admitted_all >= MAX_BREAKER_QUEUE
                    || s.admitted.get(&uid).copied().unwrap_or(0) >= MAX_BREAKER_QUEUE_PER_UID));
        if refused {
            drop(s);
            job(false);
            return false;
        }
        if uid != 0 {
            *s.admitted.entry(uid).or_default() += 1;
            s.admitted_all += 1;
        }
        s.queue.push_back((uid, Box::new(job)));
        if s.idle > s.waking {
            s.waking += 1;
            self.inner.work.notify_one();
        } else if s.threads < MAX_BREAKERS {
            let shared = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("pinfs-fuse-breaker".to_string())
                .spawn(move || shared.serve());
            match spawned {
                Ok(_) => s.threads += 1,
                Err(e) => {
                    // It waits for a running thread (none: it runs here,
                    // blocking this worker, rather than never).
                    tracing::warn!(target: "pinfs::fuse", error = %e, "cannot start a breaker thread");
                    if s.threads == 0 {
                        if let Some((uid, job)) = s.queue.pop_back() {
                            s.done(uid);
                            drop(s);
                            job(true);
                        }
                    }
                }
            }
        }
        true
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
            if let Some((uid, job)) = s.take() {
                drop(s);
                job(true);
                s = self.state.lock();
                s.done(uid);
                continue;
            }
            if s.stopping && s.queue.is_empty() {
                s.threads -= 1;
                return;
            }
            s.idle += 1;
            self.work.wait(&mut s);
            s.idle -= 1;
            s.waking = s.waking.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn one_uid_runs_its_share_and_queues_the_rest_root_is_not_held() {
        let b = Breakers::default();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go = Arc::new(Mutex::new(go_rx));
        for _ in 0..MAX_BREAKERS_PER_UID {
            let go = Arc::clone(&go);
            assert!(b.submit(1000, move |run| {
                assert!(run);
                let _ = go.lock().recv();
            }));
        }
        let (tx, rx) = mpsc::channel();
        // Past its running share, uid 1000's request queues.
        let t = tx.clone();
        assert!(b.submit(1000, move |run| t.send(u32::from(run) + 10).expect("send")));
        // Another uid and root run meanwhile (uid 1000's queued request
        // cannot: its share is held until a `go`).
        let t = tx.clone();
        assert!(b.submit(1001, move |run| t.send(u32::from(run)).expect("send")));
        let t = tx.clone();
        assert!(b.submit(0, move |run| t.send(u32::from(run) + 1).expect("send")));
        let mut got = vec![rx.recv().expect("ran"), rx.recv().expect("ran")];
        got.sort();
        assert_eq!(got, [1, 2]);
        // Its queue is bounded: past it, EAGAIN at once.
        for _ in MAX_BREAKERS_PER_UID + 1..MAX_BREAKER_QUEUE_PER_UID {
            assert!(b.submit(1000, |run| assert!(run)));
        }
        let t = tx.clone();
        assert!(!b.submit(1000, move |run| t.send(u32::from(run) + 20).expect("send")));
        assert_eq!(rx.recv().expect("refused"), 20);
        // Released, the queued request runs.
        for _ in 0..MAX_BREAKERS_PER_UID {
            go_tx.send(()).expect("release");
        }
        assert_eq!(rx.recv().expect("ran"), 11);
        b.stop();
    }
}
