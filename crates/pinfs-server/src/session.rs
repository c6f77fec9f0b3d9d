//! One client connection: its identity and credential, its threads (reader,
//! workers, writer), what it holds, how lease events reach it, fencing, and
//! the cleanup when it ends.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use pinfs::fs::{Cred, Handle, Pin};
use pinfs::lease::{BreakEvent, EventKind, LeaseKind, OwnerId};
use pinfs::pin::PinId;
use pinfs_proto::{
    decode, encode, ClientId, ClientMsg, DaemonMsg, FileId, FrameReader, Op, ProtoError, Welcome,
    MAX_FRAME, MAX_INFLIGHT, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};
use rustix::event::{poll, PollFd, PollFlags};

use crate::{Fence, Shared, HELLO_TIMEOUT, MAX_OUTGOING, MAX_OUTGOING_BYTES};

const TARGET: &str = "pinfs::server";

/// Owners of daemon clients start here, far from the small numbers an
/// in-process user of the same `Fs` would pick.
pub(crate) const OWNER_BASE: u64 = 1 << 48;

/// The tokens of `Session::ask` have this bit set; acknowledgements of
/// tokens without it belong to the mapping code's placements, which number
/// their own (so neither can take the other's acknowledgement).
pub(crate) const ASK_TOKEN_BIT: u64 = 1 << 63;

/// An open file of a client.
pub(crate) struct OpenFile {
    pub(crate) handle: Handle,
    pub(crate) path: String,
}

/// Requests waiting for a worker.
struct Work {
    jobs: VecDeque<(u64, Op)>,
    idle: usize,
    workers: Vec<JoinHandle<()>>,
    closed: bool,
}

/// The acknowledgements a session awaits.
#[derive(Default)]
struct Acks {
    waiting: HashMap<u64, SyncSender<i32>>,
    /// The session is ending: no acknowledgement can come; asking fails at
    /// once (`ENOTCONN`).
    closed: bool,
    /// The client once let an acknowledgement time out: asking again fails
    /// at once (`ENOTCONN`) — a layout change never waits twice on a
    /// client that cannot answer.
    unresponsive: bool,
}

/// One client.
pub(crate) struct Session {
    pub(crate) id: ClientId,
    pub(crate) pid: i32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) cred: Cred,
    /// The client's process, pinned at `accept` (`peer.rs`): signals and
    /// fencing go through it only, and its readability confirms death.
    pidfd: OwnedFd,
    signal: i32,
    sock: UnixStream,
    out: Mutex<Option<SyncSender<Vec<u8>>>>,
    /// Frames handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// Their bytes (at most `MAX_OUTGOING_BYTES`).
    queued_bytes: Arc<AtomicUsize>,
    pub(crate) files: Mutex<HashMap<FileId, Arc<OpenFile>>>,
    pub(crate) next_file: AtomicU64,
    pub(crate) pins: Mutex<HashMap<PinId, Pin>>,
    inflight: AtomicUsize,
    work: Mutex<Work>,
    work_ready: Condvar,
    pub(crate) fenced: AtomicBool,
    pub(crate) disconnected: AtomicBool,
    /// Its connection is over: it is being cleaned up, perhaps waiting for
    /// its process's death (its pins or mappings stay until then). It no
    /// longer counts against `max_clients`, only against
    /// [`crate::MAX_LINGERING`]. Set before `disconnected`.
    pub(crate) lingering: AtomicBool,
    /// Why the session is ending, set by whoever ends it first.
    ending: Mutex<Option<String>>,
    /// Acknowledgements awaited, by token (`Session::ask`), and whether any
    /// can still come.
    acks: Mutex<Acks>,
    next_token: AtomicU64,
    /// Its mappings, registrations and placements waiting for `Ack`.
    pub(crate) mapped: crate::maps::SessionMaps,
}

impl Session {
    pub(crate) fn owner(&self) -> OwnerId {
        OwnerId(self.cred.owner)
    }

    /// Queues a frame for the writer. A full queue drops the client (the
    /// file system never waits for a slow reader); `false` when it is gone.
    pub(crate) fn send(&self, msg: &DaemonMsg) -> bool {
        let frame = match encode(msg, MAX_FRAME) {
            Ok(f) => f,
            Err(ProtoError::TooLarge { .. }) => {
                // Only replies grow: answer with the errno instead.
                if let DaemonMsg::Reply { id, .. } = msg {
                    return self.send(&DaemonMsg::Reply {
                        id: *id,
                        result: Err(libc::EOVERFLOW),
                    });
                }
                return false;
            }
            Err(e) => {
                tracing::error!(target: TARGET, client = self.id, error = %e, "cannot encode a message");
                return false;
            }
        };
        let out = self.out.lock();
        let Some(tx) = out.as_ref() else {
            return false;
        };
        let mut frame = frame;
        if self.queued.load(Ordering::Acquire) == 0 {
            // Nothing waits for the writer (and only senders, under `out`,
            // add to it): the frame may go out now, from this thread, as far
            // as the socket takes it without blocking — one thread hand-off
            // less per reply. What does not fit goes to the writer, in order.
            match rustix::net::send(
                &self.sock,
                &frame,
                rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT,
            ) {
                Ok(n) if n == frame.len() => return true,
                Ok(n) => {
                    frame.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                // The connection is gone; the reader sees it too.
                Err(_) => return false,
            }
        }
        let bytes = frame.len();
        if self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > MAX_OUTGOING_BYTES {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            drop(out);
            self.violation(&format!(
                "more than {MAX_OUTGOING_BYTES} bytes waiting to be read"
            ));
            return false;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                drop(out);
                self.violation(&format!(
                    "more than {MAX_OUTGOING} messages waiting to be read"
                ));
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                false
            }
        }
    }

    /// Drops the client for breaking the protocol: logged with its pid.
    fn violation(&self, reason: &str) {
        tracing::warn!(target: TARGET, client = self.id, pid = self.pid, uid = self.uid, reason, "dropping client");
        self.end(reason);
    }

    /// Ends the session: a `Bye` is queued and the connection's read side
    /// shut, so the reader leaves and cleans up.
    pub(crate) fn end(&self, reason: &str) {
        {
            let mut ending = self.ending.lock();
            if ending.is_some() {
                return;
            }
            *ending = Some(reason.to_owned());
        }
        self.close_acks();
        let _ = self.send(&DaemonMsg::bye(reason));
        let _ = self.sock.shutdown(std::net::Shutdown::Read);
    }

    /// No acknowledgement can come any more: askers waiting learn it now
    /// (`ENOTCONN`), later ones at once.
    fn close_acks(&self) {
        let mut acks = self.acks.lock();
        acks.closed = true;
        acks.waiting.clear();
    }

    /// Fences the client (SPEC §8): with `Fence::Kill`, kills its process
    /// through its pidfd; its holdings are released once its death is
    /// confirmed. Idempotent.
    pub(crate) fn fence(&self, shared: &Shared, reason: &str) {
        if self.fenced.swap(true, Ordering::AcqRel) {
            return;
        }
        match shared.options.fence {
            Fence::Off => {
                tracing::warn!(target: TARGET, client = self.id, pid = self.pid, reason, "client not fenced (--fence off)");
                self.fenced.store(false, Ordering::Release);
            }
            Fence::Kill if shared.fencing_disabled() => {
                tracing::warn!(target: TARGET, client = self.id, pid = self.pid, reason, "fencing disabled (test switch)");
            }
            Fence::Kill => {
                tracing::warn!(target: TARGET, client = self.id, pid = self.pid, reason, "fencing client: killing its process");
                if let Err(e) =
                    rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL)
                {
                    // It lives on (holding everything until it dies), but
                    // it is served no more.
                    tracing::warn!(target: TARGET, client = self.id, pid = self.pid, error = %e, "cannot kill fenced client: only its connection is closed");
                    self.end(reason);
                }
            }
        }
    }

    /// Waits until the client's process is confirmed dead (its pidfd
    /// readable) or the daemon stops. A poll error is never taken for a
    /// death: it is retried.
    fn wait_for_death(&self, shared: &Shared) {
        let stop = shared.stop.lock().clone();
        loop {
            let mut fds = vec![PollFd::new(&self.pidfd, PollFlags::IN)];
            if let Some(s) = &stop {
                fds.push(PollFd::new(s.fd(), PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) => {
                    if !fds[0].revents().is_empty() {
                        return;
                    }
                    if stop.as_ref().is_some_and(|s| s.is_stopped()) {
                        return;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(target: TARGET, client = self.id, pid = self.pid, error = %e, "cannot poll the client's pidfd: retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    fn alive(&self) -> bool {
        !crate::peer::exited(self.pidfd.as_fd())
    }

    /// Queues a request for a worker, starting one when none is idle.
    fn submit(self: &Arc<Self>, shared: &Arc<Shared>, id: u64, op: Op) {
        let mut w = self.work.lock();
        w.jobs.push_back((id, op));
        if w.idle == 0 && w.workers.len() < MAX_INFLIGHT {
            let (me, sh) = (Arc::clone(self), Arc::clone(shared));
            match std::thread::Builder::new()
                .name(format!("pinfs-worker-{}", self.id))
                .spawn(move || me.work_loop(&sh))
            {
                Ok(h) => w.workers.push(h),
                Err(e) => {
                    tracing::error!(target: TARGET, client = self.id, error = %e, "cannot start a worker");
                    if w.workers.is_empty() {
                        drop(w);
                        self.violation("the daemon cannot start a worker");
                        return;
                    }
                }
            }
        }
        drop(w);
        self.work_ready.notify_one();
    }

    fn work_loop(self: Arc<Self>, shared: &Arc<Shared>) {
        // Counted idle while sending its reply: the client's next request
        // (which may arrive before the send returns) finds an idle worker
        // instead of starting a new thread each time.
        let mut replying = false;
        loop {
            let job = {
                let mut w = self.work.lock();
                if std::mem::take(&mut replying) {
                    w.idle -= 1;
                }
                loop {
                    if let Some(j) = w.jobs.pop_front() {
                        break Some(j);
                    }
                    if w.closed {
                        break None;
                    }
                    w.idle += 1;
                    self.work_ready.wait(&mut w);
                    w.idle -= 1;
                }
            };
            let Some((id, op)) = job else {
                return;
            };
            let result = crate::ops::run(shared, &self, op);
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            self.work.lock().idle += 1;
            replying = true;
            self.send(&DaemonMsg::Reply { id, result });
        }
    }

    /// Sends the message `make(token)` and waits for the client's
    /// acknowledgement of `token`, at most `timeout` (`None`: for ever). No
    /// answer in time fences the client (`ETIMEDOUT`); a connection that
    /// ends first is `ENOTCONN`. Returns the client's errno (0: done).
    pub(crate) fn ask(
        &self,
        shared: &Shared,
        make: impl FnOnce(u64) -> DaemonMsg,
        timeout: Option<std::time::Duration>,
        what: &str,
    ) -> Result<i32, pinfs::Errno> {
        let token = ASK_TOKEN_BIT | self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        {
            let mut acks = self.acks.lock();
            if acks.closed || acks.unresponsive {
                return Err(pinfs::Errno::ENOTCONN);
            }
            acks.waiting.insert(token, tx);
        }
        if !self.send(&make(token)) {
            self.acks.lock().waiting.remove(&token);
            return Err(pinfs::Errno::ENOTCONN);
        }
        let got = match timeout {
            Some(t) => rx.recv_timeout(t).map_err(|e| match e {
                std::sync::mpsc::RecvTimeoutError::Timeout => true,
                std::sync::mpsc::RecvTimeoutError::Disconnected => false,
            }),
            None => rx.recv().map_err(|_| false),
        };
        match got {
            Ok(errno) => Ok(errno),
            Err(timed_out) => {
                {
                    let mut acks = self.acks.lock();
                    acks.waiting.remove(&token);
                    acks.unresponsive |= timed_out;
                }
                if timed_out {
                    let reason = format!("{what} not acknowledged in time");
                    self.fence(shared, &reason);
                    if shared.options.fence == Fence::Off {
                        // Not killed, but not waited on again either.
                        self.end(&reason);
                    }
                    Err(pinfs::Errno::ETIMEDOUT)
                } else {
                    Err(pinfs::Errno::ENOTCONN)
                }
            }
        }
    }

    /// The owner callback: every lease event of the client becomes an event
    /// frame and a signal; a layout lease lost at lease-break-time fences.
    fn on_event(&self, shared: &Shared, ev: &BreakEvent) {
        if self.signal != 0 {
            if let Err(e) = crate::peer::send_signal(self.pidfd.as_fd(), self.signal, ev.lease.id.0)
            {
                tracing::debug!(target: TARGET, client = self.id, pid = self.pid, error = %e, "cannot signal client");
            }
        }
        self.send(&DaemonMsg::Event(*ev));
        if ev.kind == EventKind::Lost && ev.lease.kind == LeaseKind::Layout {
            self.fence(
                shared,
                &format!(
                    "layout lease {} not given up within lease-break-time",
                    ev.lease.id
                ),
            );
        }
    }
}

/// Why a connection's first frame is not a usable `Hello`.
fn read_hello(reader: &mut FrameReader) -> Result<i32, String> {
    let frame = reader.read_frame().map_err(|e| e.to_string())?;
    match decode::<ClientMsg>(&frame.payload).map_err(|e| e.to_string())? {
        ClientMsg::Hello { version, signal } => {
            if version != PROTOCOL_VERSION {
                return Err(ProtoError::Version {
                    got: version,
                    expected: PROTOCOL_VERSION,
                }
                .to_string());
            }
            if !crate::peer::allowed_signal(signal) {
                return Err(format!(
                    "signal {signal} in Hello is not one of SIGIO, SIGURG, SIGUSR1, SIGUSR2, a realtime signal or 0"
                ));
            }
            Ok(signal)
        }
        _ => Err("first message is not Hello".to_owned()),
    }
}

/// A connection's thread: handshake, then the reader loop, then cleanup.
/// `peer` was pinned right after `accept` (`peer.rs`).
pub(crate) fn run(shared: Arc<Shared>, id: ClientId, stream: UnixStream, peer: crate::peer::Peer) {
    let _ = stream.set_nonblocking(false);
    let crate::peer::Peer {
        pid,
        uid,
        gid,
        groups,
        pidfd,
    } = peer;
    let bye = |stream: &UnixStream, reason: &str| {
        tracing::warn!(target: TARGET, client = id, pid, uid, reason, "dropping client");
        if let Ok(f) = encode(&DaemonMsg::bye(reason), MAX_FRAME) {
            let _ = pinfs_proto::send_frame(stream, &f);
        }
    };
    let Ok(read_half) = stream.try_clone() else {
        shared.handshakes.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let mut reader = FrameReader::new(read_half, MAX_REQUEST_FRAME, 0);
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let hello = read_hello(&mut reader);
    shared.handshakes.fetch_sub(1, Ordering::AcqRel);
    let signal = match hello {
        Ok(s) => s,
        Err(reason) => return bye(&stream, &reason),
    };
    let _ = stream.set_read_timeout(None);
    // Without its process pinned, the client's death could not be confirmed
    // (its mappings and pins would be released while it may still use
    // them) and it could not be signalled safely: it is not served.
    let Some(pidfd) = pidfd else {
        return bye(
            &stream,
            "the daemon cannot pin the client's process (no pidfd)",
        );
    };
    if crate::peer::exited(pidfd.as_fd()) {
        return bye(&stream, "the process that connected has exited");
    }
    // With `--fence kill` every client must be killable: one the daemon may
    // not signal would keep a lost layout lease's pages (SPEC §8).
    if shared.options.fence == Fence::Kill && !shared.fencing_disabled() {
        match crate::peer::may_signal(pidfd.as_fd()) {
            Ok(true) => {}
            Ok(false) => return bye(
                &stream,
                "the daemon may not signal this process, so it could not fence it (--fence kill)",
            ),
            Err(e) => {
                tracing::warn!(target: TARGET, client = id, pid, error = %e, "cannot check that the client can be fenced");
                return bye(
                    &stream,
                    "the daemon cannot check that it could fence this process",
                );
            }
        }
    }
    let media = shared.fs.media();
    let Some(daemon_pool_fd) = media.mapping().map(|m| m.fd) else {
        return bye(&stream, "the pool has no file descriptor to share");
    };
    // The client gets an open file description of its own (SPEC §8 trust:
    // it still reaches every block): what it does to the description — an
    // `F_OFD_SETLK(F_UNLCK)`, file flags — cannot touch the daemon's, whose
    // OFD lock keeps the pool one mount's (SPEC §7).
    let pool_fd = match crate::pool::reopen(daemon_pool_fd) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(target: TARGET, client = id, error = %e, "cannot reopen the pool for a client");
            return bye(&stream, "the daemon cannot share the pool");
        }
    };
    let (tx, rx) = sync_channel::<Vec<u8>>(MAX_OUTGOING);
    let Ok(sock) = stream.try_clone() else {
        return;
    };
    let session = Arc::new(Session {
        id,
        pid,
        uid,
        gid,
        cred: Cred {
            uid,
            gid,
            groups,
            owner: OWNER_BASE + id,
        },
        pidfd,
        signal,
        sock,
        out: Mutex::new(Some(tx)),
        queued: Arc::new(AtomicUsize::new(0)),
        queued_bytes: Arc::new(AtomicUsize::new(0)),
        files: Mutex::new(HashMap::new()),
        next_file: AtomicU64::new(1),
        pins: Mutex::new(HashMap::new()),
        inflight: AtomicUsize::new(0),
        work: Mutex::new(Work {
            jobs: VecDeque::new(),
            idle: 0,
            workers: Vec::new(),
            closed: false,
        }),
        work_ready: Condvar::new(),
        fenced: AtomicBool::new(false),
        disconnected: AtomicBool::new(false),
        lingering: AtomicBool::new(false),
        ending: Mutex::new(None),
        acks: Mutex::new(Acks::default()),
        next_token: AtomicU64::new(1),
        mapped: crate::maps::SessionMaps::default(),
    });
    {
        let mut sessions = shared.sessions.lock();
        // Checked under the sessions lock, which shutdown takes to list the
        // sessions it ends after raising `stop`: a handshake completing
        // meanwhile is either listed (and ended) or refused here.
        if shared.stop.lock().as_ref().is_some_and(|s| s.is_stopped()) {
            drop(sessions);
            return bye(&stream, "the daemon is shutting down");
        }
        let lingering = sessions
            .values()
            .filter(|s| s.lingering.load(Ordering::Acquire))
            .count();
        if sessions.len() - lingering >= shared.options.max_clients {
            drop(sessions);
            return bye(&stream, "too many clients");
        }
        if lingering >= crate::MAX_LINGERING {
            drop(sessions);
            return bye(&stream, "too many gone clients whose death is awaited");
        }
        sessions.insert(id, Arc::clone(&session));
    }
    // Welcome goes out before the writer starts, so it is the first frame.
    let welcome = DaemonMsg::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        client_id: id,
        pool_len: media.len_bytes(),
        huge_pages: media.caps().huge_pages,
        break_time: shared.fs.leases().break_time(),
        policy: shared.fs.policy(),
    });
    let sent = encode(&welcome, MAX_FRAME)
        .and_then(|f| pinfs_proto::send_frame_with_fd(&stream, &f, pool_fd.as_fd()));
    drop(pool_fd);
    if let Err(e) = sent {
        tracing::warn!(target: TARGET, client = id, pid, error = %e, "cannot welcome client");
        shared.sessions.lock().remove(&id);
        return;
    }
    // The writer says when it is done, so cleanup can wait for it with a
    // deadline (`BYE_GRACE`).
    let (writer_done_tx, writer_done_rx) = sync_channel::<()>(1);
    let writer = {
        let Ok(wsock) = stream.try_clone() else {
            shared.sessions.lock().remove(&id);
            return;
        };
        std::thread::Builder::new()
            .name(format!("pinfs-writer-{id}"))
            .spawn({
                let queued = Arc::clone(&session.queued);
                let queued_bytes = Arc::clone(&session.queued_bytes);
                move || {
                    write_loop(wsock, rx, queued, queued_bytes);
                    let _ = writer_done_tx.send(());
                }
            })
            .ok()
            .map(|h| (h, writer_done_rx))
    };
    // Lease events of this client's owner reach it from now on.
    let weak: Weak<Session> = Arc::downgrade(&session);
    let weak_shared: Weak<Shared> = Arc::downgrade(&shared);
    let callback: pinfs::lease::BreakCallback = Arc::new(move |ev: &BreakEvent| {
        if let (Some(s), Some(sh)) = (weak.upgrade(), weak_shared.upgrade()) {
            s.on_event(&sh, ev);
        }
    });
    if let Err(e) = shared
        .fs
        .leases()
        .set_owner_callback(session.owner(), Some(callback))
    {
        session.violation(&format!("cannot register lease notifications: {e}"));
    }
    tracing::info!(target: TARGET, client = id, pid, uid, gid, "client connected");
    let reason = read_loop(&shared, &session, &mut reader);
    session.end(&reason);
    cleanup(&shared, &session, writer);
}

fn write_loop(
    sock: UnixStream,
    rx: Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    queued_bytes: Arc<AtomicUsize>,
) {
    for frame in rx {
        let sent = pinfs_proto::send_frame(&sock, &frame);
        queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        queued.fetch_sub(1, Ordering::AcqRel);
        if sent.is_err() {
            break;
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

/// Reads requests until the connection ends; returns why it ended.
fn read_loop(shared: &Arc<Shared>, session: &Arc<Session>, reader: &mut FrameReader) -> String {
    loop {
        let frame = match reader.read_frame() {
            Ok(f) => f,
            Err(ProtoError::Closed) => {
                return session
                    .ending
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "client disconnected".to_owned())
            }
            Err(e) => {
                if let Some(r) = session.ending.lock().clone() {
                    return r;
                }
                session.violation(&e.to_string());
                return e.to_string();
            }
        };
        let msg = match decode::<ClientMsg>(&frame.payload).and_then(|m| m.validate().map(|()| m)) {
            Ok(m) => m,
            Err(e) => {
                session.violation(&e.to_string());
                return e.to_string();
            }
        };
        match msg {
            ClientMsg::Hello { .. } => {
                let r = "a second Hello".to_owned();
                session.violation(&r);
                return r;
            }
            ClientMsg::Request { id, op } => {
                if session.inflight.fetch_add(1, Ordering::AcqRel) >= MAX_INFLIGHT {
                    let r = format!("more than {MAX_INFLIGHT} requests in flight");
                    session.violation(&r);
                    return r;
                }
                session.submit(shared, id, op);
            }
            ClientMsg::Ack { token, errno } => {
                // Handled here, never queued behind file-system work. A
                // late one (its asker gave up and fenced) is only logged.
                let waiter = match token & ASK_TOKEN_BIT {
                    0 => None,
                    _ => session.acks.lock().waiting.remove(&token),
                };
                match waiter {
                    Some(tx) => {
                        let _ = tx.try_send(errno);
                    }
                    None => {
                        tracing::debug!(target: TARGET, client = session.id, token, errno, "unexpected acknowledgement")
                    }
                }
            }
        }
    }
}

/// Releases what the session held (see the crate docs for the order), then
/// forgets it.
fn cleanup(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    writer: Option<(JoinHandle<()>, Receiver<()>)>,
) {
    session.lingering.store(true, Ordering::Release);
    session.disconnected.store(true, Ordering::Release);
    // No acknowledgement can come any more: askers still waiting (mapping
    // placements among them) learn it now — not after the wait for the
    // client's death below, which their failure may be what brings about.
    session.close_acks();
    if shared.cleanup_disabled() {
        // The negative control: the connection closes, nothing is
        // released, and the session stays listed.
        tracing::warn!(target: TARGET, client = session.id, "cleanup disabled (test switch)");
        *session.out.lock() = None;
        let _ = session.sock.shutdown(std::net::Shutdown::Both);
        if let Some((h, _)) = writer {
            let _ = h.join();
        }
        return;
    }
    // Nothing more goes out: the writer drains what is queued (the `Bye`)
    // within `BYE_GRACE`; a client that does not read meanwhile has both
    // directions shut, which ends a blocked write — a session never waits
    // for ever on a reader (nor does the death wait below hold a thread
    // blocked in a write).
    *session.out.lock() = None;
    if let Some((h, done)) = writer {
        if done.recv_timeout(crate::BYE_GRACE).is_err() {
            // Blocked in a write to a client that does not read: shutting
            // the socket ends that write.
            let _ = session.sock.shutdown(std::net::Shutdown::Both);
        }
        let _ = h.join();
    }
    let _ = session.sock.shutdown(std::net::Shutdown::Both);
    let fenced = session.fenced.load(Ordering::Acquire);
    if fenced {
        // Its address space may still reach everything it held.
        session.wait_for_death(shared);
    }
    let leases = shared.fs.leases();
    // Leases first: a request of its own that waits in a lease break of
    // another client must not keep its leases alive meanwhile.
    leases.drop_owner(session.owner());
    let workers = {
        let mut w = session.work.lock();
        w.closed = true;
        w.jobs.clear();
        std::mem::take(&mut w.workers)
    };
    session.work_ready.notify_all();
    for h in workers {
        let _ = h.join();
    }
    let files: Vec<Arc<OpenFile>> = session.files.lock().drain().map(|(_, f)| f).collect();
    drop(files);
    // A request finished meanwhile may have taken a lease again.
    leases.drop_owner(session.owner());
    // The daemon's device is the daemon's: registrations go now.
    session.mapped.drop_registrations();
    let has_pins = !session.pins.lock().is_empty();
    // Its mappings are in its address space, which the daemon can no
    // longer change: they (and the blocks they may reach) stay until it
    // is dead.
    let has_maps = session.mapped.has_mappings();
    if (has_pins || has_maps) && session.alive() {
        tracing::info!(target: TARGET, client = session.id, pid = session.pid, has_maps, "client gone with pins or mappings: they stay until its process dies");
        session.wait_for_death(shared);
    }
    let nmaps = session.mapped.drop_mappings();
    let pins: Vec<Pin> = session.pins.lock().drain().map(|(_, p)| p).collect();
    let npins = pins.len();
    drop(pins);
    shared.sessions.lock().remove(&session.id);
    let reason = session.ending.lock().clone().unwrap_or_default();
    tracing::info!(target: TARGET, client = session.id, pid = session.pid, pins = npins, mappings = nmaps, fenced, %reason, "client gone, everything it held released");
}
