//! The router: the topic table, retained state, the replay log, sessions, rooms and
//! devices, behind one lock ([`RouterCore`]).
//!
//! A connection's reader routes its client's frames itself: it takes the lock, applies
//! every complete frame it has buffered, and flushes the outboxes they touched before it
//! reads its socket again, so a publish reaches its subscribers' sockets with no task
//! hop in between. The router's own task takes the lock for everything else:
//! connects and disconnects (through one bounded channel, [`ROUTER_QUEUE`]), command
//! deadlines, held acknowledgements, `$sys` and session expiry. Nobody holds the lock
//! across an `.await`, and the router never awaits a connection: it answers by pushing
//! encoded frames into each connection's [`Outbox`].
//!
//! Because every change is applied under the one lock, in order, a subscriber's
//! snapshot and its live stream meet with no gap and no duplicate: the snapshot is
//! taken and queued between two publishes, and every later publish is queued after it.
//!
//! The router's other halves: `devices.rs` (descriptors, commands, liveness),
//! `reads.rs` (subscribe, `get`, snapshots, resume), `rooms.rs` (rooms and
//! presence), `sys.rs` (`$sys` and `$clients`). Every client action is checked
//! against the session's [`Grant`] before it touches state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::devices::{DeviceEntry, PendingCmd};
use super::guard::{bump, GuardStats};
use super::journal::{Entry, Journal, JournalError, Recovery};
use super::outbox::{Outbox, OutboxStats, Pushed};
use super::replay::ReplayLog;
use super::subs::SubTree;
use super::telemetry::HubHandle;
use crate::auth::{Backoff, Grant};
use crate::config::Config;
use crate::model::Quality;
use crate::protocol::{
    encode_update_frame, frame, now_ms, BusMsg, ClientMsg, Epoch, ErrorCode, Resume, Role, Seq,
    SessionId, UpdateRef,
};
use crate::topic::{Filter, Topic};
use crate::value::Value;

/// Messages waiting for the router's task (connects, disconnects, resyncs).
/// Connections wait (per connection, never the router) when it is full.
pub const ROUTER_QUEUE: usize = 8192;
/// Messages the router takes per wake-up, so one burst is handled in one pass.
const BATCH: usize = 512;
/// Answers remembered per session, so a request resent after a reconnect is answered
/// again without running twice.
const ANSWER_CACHE: usize = 256;

/// A map keyed by the bus's own sequential ids (sessions), hashed by [`IdHasher`].
pub(super) type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Hashes ids the bus hands out itself, never ones a client picks: one multiply per
/// word instead of SipHash, whose cost buys resistance to keys chosen by an attacker
/// (tables keyed by names from clients keep it). Every publish looks a session up
/// once per subscriber.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The product's high bits are its best mixed; the table takes its bucket from
        // the low bits and its tag from the top seven.
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Identifies one TCP (or in-process) connection, to ignore messages from a
/// connection that a resume has replaced.
pub type ConnId = u64;

/// What the handshake passes to the router.
pub struct Hello {
    pub name: String,
    pub role: Role,
    pub resume: Option<Resume>,
    /// This connection's telemetry token (for `welcome`).
    pub token: u64,
    /// What the client may do, from its credentials.
    pub grant: Arc<Grant>,
}

/// Messages to the router.
pub enum RouterMsg {
    Connect {
        hello: Hello,
        conn: ConnId,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<SessionId>,
    },
    /// A client's frame. Its reader applies it under the lock itself when it can;
    /// through the channel, `behind` is the reader's count of its frames there,
    /// taken down as each is applied (the reader sends none directly until it is 0).
    Client {
        session: SessionId,
        conn: ConnId,
        msg: ClientMsg,
        behind: Option<Arc<AtomicUsize>>,
    },
    Disconnected {
        session: SessionId,
        conn: ConnId,
        reason: String,
        clean: bool,
    },
    /// The connection's queue overflowed past conflation: send a fresh snapshot.
    Resync { session: SessionId, conn: ConnId },
}

pub(super) struct Attached {
    pub id: ConnId,
    pub outbox: Arc<Outbox>,
}

pub(super) struct Session {
    pub name: String,
    pub role: Role,
    pub conn: Option<Attached>,
    pub filters: BTreeSet<Filter>,
    pub rooms: BTreeSet<String>,
    pub expires: Option<Instant>,
    pub answers: AnswerCache,
    pub inflight: HashSet<u64>,
    pub pressed: HashSet<Arc<str>>,
    pub devices: BTreeSet<String>,
    pub grant: Arc<Grant>,
    /// Some filter reaches beyond what the grant may read, so every delivered topic
    /// is checked; false for most sessions (their filters lie within their rules),
    /// which then cost nothing extra per update.
    pub screen: bool,
    /// The topic of this session's last valid `pub`. The reader hands a run of pubs
    /// to one topic the same string, so the next one is known valid by pointer.
    pub checked: Option<Arc<str>>,
}

/// What kind of request an answer belongs to: ids are the client's, and a raw client
/// may reuse one across kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Command,
    Publish,
}

/// The last [`ANSWER_CACHE`] answers of a session, so that a request resent after a
/// reconnect is answered again without being executed (or published) twice.
#[derive(Default)]
pub(super) struct AnswerCache {
    map: HashMap<(Kind, u64), Bytes>,
    order: VecDeque<(Kind, u64)>,
}

impl AnswerCache {
    pub(super) fn get(&self, kind: Kind, id: u64) -> Option<Bytes> {
        self.map.get(&(kind, id)).cloned()
    }

    fn insert(&mut self, kind: Kind, id: u64, frame: Bytes) {
        if self.map.insert((kind, id), frame).is_none() {
            self.order.push_back((kind, id));
        }
        while self.order.len() > ANSWER_CACHE {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

pub(super) struct Retained {
    pub frame: Bytes,
}

impl Retained {
    /// Holds a copy of `frame` in an allocation of its own. Frames are carved out of
    /// the router's 64 KiB encode buffer, and a `Bytes` keeps its whole chunk alive:
    /// a retained value that is seldom replaced would pin 64 KiB for one ~100-byte
    /// frame, and over hours the retained topics would pin a chunk each (the soak's
    /// memory creep). Short-lived holders (outboxes, the FIFO replay log) keep the
    /// shared slice; only the long-lived copy pays for one small allocation.
    fn new(frame: &Bytes) -> Self {
        Retained {
            frame: Bytes::copy_from_slice(frame),
        }
    }
}

/// Control-state fields of an update record.
#[derive(Default)]
pub(super) struct ControlFields<'a> {
    pub quality: Option<Quality>,
    pub position: Option<f64>,
    pub display: Option<&'a str>,
    pub target: Option<&'a Value>,
    pub deadline: Option<u64>,
    /// The update's time (ms since the epoch); `None`: now. A journaled publish
    /// passes the time it journaled, so a restart restores the same time.
    pub time: Option<u64>,
}

/// The router behind its lock, shared by the router's task and every connection's
/// reader. A panic while the lock is held poisons it: every later `lock` then says
/// `None`, readers end their connections, and the router's task cancels the bus.
pub struct RouterCore(Mutex<Router>);

impl RouterCore {
    pub fn new(router: Router) -> Arc<RouterCore> {
        Arc::new(RouterCore(Mutex::new(router)))
    }

    /// The router, or `None` once a panic under the lock has poisoned it.
    pub(super) fn lock(&self) -> Option<MutexGuard<'_, Router>> {
        self.0.lock().ok()
    }

    /// The router if nobody holds it (`Err(true)`: somebody does; `Err(false)`:
    /// poisoned). Readers never wait for the lock: a long hold (a 100,000-topic
    /// snapshot, a resume's replay) would block their worker thread.
    pub(super) fn try_lock(&self) -> Result<MutexGuard<'_, Router>, bool> {
        match self.0.try_lock() {
            Ok(r) => Ok(r),
            Err(TryLockError::WouldBlock) => Err(true),
            Err(TryLockError::Poisoned(_)) => Err(false),
        }
    }
}

pub struct Router {
    pub(super) cfg: Arc<Config>,
    pub(super) epoch: Epoch,
    pub(super) seq: Seq,
    pub(super) retained: BTreeMap<Arc<str>, Retained>,
    pub(super) subs: SubTree,
    pub(super) sessions: IdMap<SessionId, Session>,
    pub(super) next_session: u64,
    pub(super) replay: ReplayLog,
    pub(super) rooms: HashMap<String, BTreeSet<SessionId>>,
    pub(super) devices: HashMap<String, DeviceEntry>,
    pub(super) pending: HashMap<u64, PendingCmd>,
    pub(super) deadlines: DelayQueue<u64>,
    pub(super) next_cmd: u64,
    pub(super) buf: BytesMut,
    pub(super) scratch: Vec<SessionId>,
    /// The telemetry hub (never awaited: `try_send` only).
    pub(super) hub: HubHandle,
    /// Telemetry aliases of meter topics, stable for the bus's run.
    pub(super) aliases: HashMap<Arc<str>, u32>,
    /// Outboxes with frames queued quietly during this batch: flushed at its end.
    pub(super) dirty: Vec<Arc<Outbox>>,
    /// Gathering buffer for direct writes (reused).
    wbuf: BytesMut,
    pub(super) sys_last: HashMap<String, Value>,
    pub(super) totals: OutboxStats,
    pub(super) connections: usize,
    /// Refusal counters (shared with connections and the hub) and the address
    /// backoff, both published under `$sys`.
    pub(super) guard: Arc<GuardStats>,
    pub(super) backoff: Arc<Backoff>,
    /// The retained-state journal (`[persist]`), if configured.
    pub(super) journal: Option<Journal>,
    /// Publish acknowledgements waiting for their journal record to reach the disk
    /// (`fsync = "always"`), oldest first.
    held: VecDeque<HeldAck>,
    /// What the journal held at start, for `$sys/persist/`.
    pub(super) recovered: Vec<(&'static str, u64)>,
}

/// A `puback` sent once the journal has record `lsn` on disk.
struct HeldAck {
    lsn: u64,
    session: SessionId,
    id: u64,
    seq: Seq,
}

impl Router {
    pub fn new(
        cfg: Arc<Config>,
        epoch: Epoch,
        hub: HubHandle,
        (guard, backoff): (Arc<GuardStats>, Arc<Backoff>),
    ) -> Router {
        let replay = ReplayLog::new(cfg.limits.replay_entries, cfg.limits.replay_bytes);
        Router {
            cfg,
            epoch,
            seq: Seq(0),
            retained: BTreeMap::new(),
            subs: SubTree::default(),
            sessions: IdMap::default(),
            next_session: 1,
            replay,
            rooms: HashMap::new(),
            devices: HashMap::new(),
            pending: HashMap::new(),
            deadlines: DelayQueue::new(),
            next_cmd: 1,
            buf: BytesMut::with_capacity(64 * 1024),
            scratch: Vec::new(),
            hub,
            aliases: HashMap::new(),
            dirty: Vec::new(),
            wbuf: BytesMut::with_capacity(64 * 1024),
            sys_last: HashMap::new(),
            totals: OutboxStats::default(),
            connections: 0,
            guard,
            backoff,
            journal: None,
            held: VecDeque::new(),
            recovered: Vec::new(),
        }
    }

    /// Gives the router its journal and the retained topics read back from it, which
    /// it holds again (under new sequence numbers) before any client connects.
    pub(super) fn restore(&mut self, journal: Journal, entries: Vec<Entry>, found: &Recovery) {
        let max = self.cfg.limits.max_topics;
        let mut skipped = 0usize;
        for e in entries {
            let topic = match Topic::new(&e.topic) {
                Ok(t) if !t.is_reserved() && self.retained.len() < max => t.shared(),
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            self.seq.0 += 1;
            let frame = encode_update_frame(
                &mut self.buf,
                &UpdateRef {
                    seq: self.seq,
                    topic: &topic,
                    value: &e.value,
                    time: e.time,
                    retain: true,
                    quality: e.quality,
                    position: None,
                    display: None,
                    target: None,
                    deadline: None,
                },
            );
            self.retained.insert(topic, Retained::new(&frame));
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                max_topics = max,
                "journal topics not restored (invalid, reserved or over limits.max_topics)"
            );
        }
        self.journal = Some(journal);
        self.recovered = vec![
            ("recovered_topics", self.retained.len() as u64),
            ("recovered_records", found.records as u64),
            ("recovery_ms", found.elapsed.as_millis() as u64),
            ("corrupt_tail_bytes", found.tail.as_ref().map_or(0, |t| t.1)),
        ];
    }

    /// Runs until `cancel` fires (then says goodbye to every client) or every sender
    /// is gone.
    pub async fn run(
        core: Arc<RouterCore>,
        mut rx: mpsc::Receiver<RouterMsg>,
        cancel: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let (interval, durable) = match core.lock() {
            Some(r) => (
                r.cfg.sys.interval_ms,
                r.journal.as_ref().map(Journal::waker),
            ),
            None => return,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Command deadlines, run out in the same lock hold that takes them from the
        // queue: a reply that a reader handles in between would otherwise settle a
        // command whose deadline is already gone from it. Readers insert deadlines
        // too; the queue wakes this task when one goes in ahead of those it holds.
        // Ready(false): the lock is poisoned.
        let deadlines = || {
            std::future::poll_fn(|cx| {
                let Some(mut r) = core.lock() else {
                    return Poll::Ready(false);
                };
                let mut fired = false;
                while let Poll::Ready(Some(e)) = r.deadlines.poll_expired(cx) {
                    r.command_timeout(e.into_inner());
                    fired = true;
                }
                // Every hold ends with a flush (see `connection::Flush`).
                r.flush_dirty();
                if fired {
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            })
        };
        loop {
            enum Work {
                Msgs,
                Held,
                Tick,
                Done,
            }
            let work = tokio::select! {
                // Shutdown first, so a flood of messages cannot delay it.
                biased;
                _ = cancel.cancelled() => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    Work::Msgs
                }
                // Acknowledgements waiting for the disk (the journal's notice is kept
                // until taken, so one sent while a reader held the lock is not lost).
                _ = async {
                    match &durable {
                        Some(d) => d.notified().await,
                        None => std::future::pending().await,
                    }
                } => Work::Held,
                alive = deadlines() => {
                    if !alive {
                        break;
                    }
                    Work::Done
                }
                // Housekeeping: expire sessions past their grace, refresh `$sys`.
                _ = tick.tick() => Work::Tick,
            };
            match work {
                // One message per lock hold, so readers wait behind one connect (or
                // resume) at most, not behind a whole batch.
                Work::Msgs => {
                    for msg in batch.drain(..) {
                        let Some(mut r) = core.lock() else { break };
                        r.handle(msg);
                    }
                }
                Work::Held => {
                    if let Some(mut r) = core.lock() {
                        r.release_held();
                    }
                }
                Work::Tick => {
                    if let Some(mut r) = core.lock() {
                        r.expire_sessions();
                        r.publish_sys();
                    }
                }
                Work::Done => continue,
            }
            let Some(mut r) = core.lock() else { break };
            r.flush_dirty();
        }
        if core.0.is_poisoned() {
            // A panic under the lock: the state may be half-changed, so the bus stops
            // (every connection hears `bye` below, if the state still allows it).
            tracing::error!("the router panicked: the bus is stopping");
            cancel.cancel();
        }
        core.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .shutdown();
    }

    /// End of a batch: every outbox that got frames writes them (directly to its
    /// socket when its writer is idle, else through its writer task).
    pub(super) fn flush_dirty(&mut self) {
        if let Some(j) = &mut self.journal {
            j.flush();
        }
        for o in self.dirty.drain(..) {
            o.flush(&mut self.wbuf);
        }
        // A huge batch must not pin a huge buffer for the bus's life.
        if self.wbuf.capacity() > 1 << 20 {
            self.wbuf = BytesMut::with_capacity(64 * 1024);
        }
    }

    fn shutdown(&mut self) {
        // Everything accepted reaches the disk, then its publishers hear so.
        if let Some(j) = &mut self.journal {
            j.close();
        }
        self.release_held();
        self.flush_dirty();
        let bye = frame(&BusMsg::Bye {
            reason: "shutdown".into(),
            message: "the bus is shutting down".into(),
        });
        for s in self.sessions.values_mut() {
            if let Some(c) = s.conn.take() {
                c.outbox.close(Some(bye.clone()));
            }
        }
    }

    pub(super) fn handle(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Connect {
                hello,
                conn,
                outbox,
                reply,
            } => self.connect(hello, conn, outbox, reply),
            RouterMsg::Client {
                session,
                conn,
                msg,
                behind,
            } => {
                if self.is_current(session, conn) {
                    self.client_msg(session, msg);
                }
                if let Some(b) = behind {
                    b.fetch_sub(1, Ordering::AcqRel);
                }
            }
            RouterMsg::Disconnected {
                session,
                conn,
                reason,
                clean,
            } => {
                if self.is_current(session, conn) {
                    self.disconnected(session, &reason, clean);
                }
            }
            RouterMsg::Resync { session, conn } => {
                if self.is_current(session, conn) {
                    let filters: Vec<Filter> =
                        self.sessions[&session].filters.iter().cloned().collect();
                    self.send_snapshot(session, 0, &filters, true);
                }
            }
        }
    }

    fn is_current(&self, session: SessionId, conn: ConnId) -> bool {
        self.sessions
            .get(&session)
            .and_then(|s| s.conn.as_ref())
            .is_some_and(|c| c.id == conn)
    }

    // ----- sessions -------------------------------------------------------------

    fn connect(
        &mut self,
        hello: Hello,
        conn: ConnId,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<SessionId>,
    ) {
        self.connections += 1;
        // A session resumes only under the credential that opened it: nobody takes
        // over another client's session (and its rights) by naming its id.
        let resumable = hello.resume.filter(|r| {
            r.epoch == self.epoch
                && self.sessions.get(&r.session).is_some_and(|s| {
                    Arc::ptr_eq(&s.grant, &hello.grant) || s.grant.name == hello.grant.name
                })
        });
        let token = hello.token;
        let (sid, resumed) = match resumable {
            Some(r) => {
                let s = self.sessions.get_mut(&r.session).expect("checked above");
                if let Some(old) = s.conn.take() {
                    self.connections -= 1;
                    let stats = old.outbox.stats();
                    self.totals.dropped += stats.dropped;
                    self.totals.conflated += stats.conflated;
                    self.totals.gaps += stats.gaps;
                    self.totals.resyncs += stats.resyncs;
                    old.outbox.close(Some(frame(&BusMsg::Bye {
                        reason: "replaced".into(),
                        message: "the session resumed on another connection".into(),
                    })));
                }
                s.conn = Some(Attached { id: conn, outbox });
                s.expires = None;
                (r.session, Some(r.last_seq))
            }
            None => {
                let sid = SessionId(self.next_session);
                self.next_session += 1;
                self.sessions.insert(
                    sid,
                    Session {
                        name: hello.name,
                        role: hello.role,
                        conn: Some(Attached { id: conn, outbox }),
                        filters: BTreeSet::new(),
                        rooms: BTreeSet::new(),
                        expires: None,
                        answers: AnswerCache::default(),
                        inflight: HashSet::new(),
                        pressed: HashSet::new(),
                        devices: BTreeSet::new(),
                        grant: hello.grant,
                        screen: false,
                        checked: None,
                    },
                );
                (sid, None)
            }
        };
        let _ = reply.send(sid);
        self.send(
            sid,
            frame(&BusMsg::Welcome {
                v: crate::protocol::PROTOCOL_VERSION,
                session: sid,
                epoch: self.epoch,
                seq: self.seq,
                heartbeat_ms: self.cfg.session.heartbeat_ms,
                resumed: resumed.is_some(),
                max_frame: self.cfg.limits.max_frame_bytes as u64,
                udp: Some(self.hub.udp.port()),
                token: Some(token),
            }),
        );
        if let Some(last_seq) = resumed {
            self.resume(sid, last_seq);
            self.adapter_back(sid);
        }
        self.publish_presence(sid);
    }

    fn disconnected(&mut self, sid: SessionId, reason: &str, clean: bool) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let detached = s.conn.take();
        tracing::debug!(session = %sid, name = %s.name, reason, "disconnected");
        let grace = Duration::from_millis(self.cfg.session.grace_ms);
        s.expires = Some(Instant::now() + grace);
        if let Some(c) = detached {
            self.connections -= 1;
            self.add_totals(c.outbox.stats());
            c.outbox.close(None);
        }
        self.release_pressed(sid);
        self.owner_gone(sid);
        if clean || grace.is_zero() {
            self.end_session(sid);
        } else {
            self.publish_presence(sid);
        }
    }

    fn expire_sessions(&mut self) {
        let now = Instant::now();
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|e| e <= now))
            .map(|(id, _)| *id)
            .collect();
        for sid in expired {
            self.end_session(sid);
        }
    }

    fn end_session(&mut self, sid: SessionId) {
        let rooms: Vec<String> = match self.sessions.get(&sid) {
            Some(s) => s.rooms.iter().cloned().collect(),
            None => return,
        };
        for room in rooms {
            self.leave_room(sid, &room);
        }
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        if let Some(c) = &s.conn {
            self.connections -= 1;
            self.add_totals(c.outbox.stats());
            c.outbox.close(None);
        }
        for f in &s.filters {
            self.subs.remove(f, sid);
        }
        for p in self.pending.values_mut() {
            if p.origin.is_some_and(|(o, _)| o == sid) {
                p.origin = None;
            }
        }
        for key in &s.devices {
            if let Some(d) = self.devices.get_mut(key) {
                if d.owner == Some(sid) {
                    d.owner = None;
                }
            }
        }
        self.publish_sys_value(format!("$clients/{sid}"), Value::Nil);
        self.publish_sys_value(format!("$sys/queues/{sid}"), Value::Nil);
    }

    // ----- sending --------------------------------------------------------------

    /// Queues an answer for a session; a client that stopped reading is dropped.
    pub(super) fn send(&mut self, sid: SessionId, frame: Bytes) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(c) = &s.conn else {
            return;
        };
        let pushed = c.outbox.push_quiet(frame);
        if let Ok(true) = pushed {
            self.dirty.push(c.outbox.clone());
        }
        if pushed.is_err() {
            tracing::warn!(session = %sid, name = %s.name, "slow consumer: closing connection");
            c.outbox.close(Some(crate::protocol::frame(&BusMsg::Bye {
                reason: "slow_consumer".into(),
                message: "answers left unread past twice the queue bound".into(),
            })));
            self.disconnected(sid, "slow_consumer", false);
        }
    }

    /// Answers command `id` and remembers the answer, so that a resend of the same
    /// request id is answered again without running the command twice.
    pub(super) fn answer(&mut self, sid: SessionId, kind: Kind, id: u64, frame: Bytes) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            if kind == Kind::Command {
                s.inflight.remove(&id);
            }
            s.answers.insert(kind, id, frame.clone());
        }
        self.send(sid, frame);
    }

    /// Sends an error (answering request `id` if given). Not remembered: only
    /// command answers and publish acknowledgements are (see [`Router::answer`]).
    pub(super) fn error(
        &mut self,
        sid: SessionId,
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    ) {
        self.send(sid, frame(&BusMsg::Error { id, code, message }));
    }

    /// Answers command `id` with an error, remembered for a resend.
    pub(super) fn command_error(
        &mut self,
        sid: SessionId,
        id: u64,
        code: ErrorCode,
        message: String,
    ) {
        let f = frame(&BusMsg::Error {
            id: Some(id),
            code,
            message,
        });
        self.answer(sid, Kind::Command, id, f);
    }

    /// The session's grant.
    pub(super) fn grant(&self, sid: SessionId) -> Option<Arc<Grant>> {
        self.sessions.get(&sid).map(|s| s.grant.clone())
    }

    /// Whether the session's grant passes `check` (no session: no).
    pub(super) fn may(&self, sid: SessionId, check: impl FnOnce(&Grant) -> bool) -> bool {
        self.sessions.get(&sid).is_some_and(|s| check(&s.grant))
    }

    /// Refuses a request the session's grant does not allow (`forbidden`), counted
    /// in `$sys/auth/forbidden`. The message names the action, never what exists.
    pub(super) fn forbidden(&mut self, sid: SessionId, id: Option<u64>, what: String) {
        bump(&self.guard.forbidden);
        let name = self.sessions.get(&sid).map(|s| s.grant.name.clone());
        let who = name.as_deref().unwrap_or("?");
        tracing::debug!(session = %sid, credential = who, what, "forbidden");
        self.error(
            sid,
            id,
            ErrorCode::Forbidden,
            format!("{what}: not allowed for credential {who:?}"),
        );
    }

    pub(super) fn ok(&mut self, sid: SessionId, id: u64, result: Value) {
        self.send(sid, frame(&BusMsg::Ok { id, result }));
    }

    // ----- publishing -----------------------------------------------------------

    /// Assigns the next sequence number, encodes the update once, stores it (retained
    /// and in the replay log) and queues the same bytes for every matching session.
    pub(super) fn publish(
        &mut self,
        topic: &Arc<str>,
        value: &Value,
        retain: bool,
        ctl: ControlFields<'_>,
    ) -> Seq {
        self.seq.0 += 1;
        let seq = self.seq;
        let frame = encode_update_frame(
            &mut self.buf,
            &UpdateRef {
                seq,
                topic,
                value,
                time: ctl.time.unwrap_or_else(now_ms),
                retain,
                quality: ctl.quality,
                position: ctl.position,
                display: ctl.display,
                target: ctl.target,
                deadline: ctl.deadline,
            },
        );
        if retain {
            if value.is_nil() && ctl.quality.is_none() {
                self.retained.remove(&**topic);
            } else {
                self.retained.insert(topic.clone(), Retained::new(&frame));
            }
        }
        self.replay.push(seq, topic.clone(), frame.clone());
        let mut targets = std::mem::take(&mut self.scratch);
        self.subs.matches(topic, &mut targets);
        for sid in &targets {
            let Some(s) = self.sessions.get(sid) else {
                continue;
            };
            // Only sessions with a filter wider than their read rules pay for a check.
            if s.screen && !s.grant.read.allows(topic) {
                continue;
            }
            if let Some(c) = &s.conn {
                match c.outbox.push_update(topic, seq, &frame, retain) {
                    Pushed::Queued { flush: true } => self.dirty.push(c.outbox.clone()),
                    Pushed::Conflated => tracing::trace!(session = %sid, %topic, "conflated"),
                    _ => {}
                }
            }
        }
        self.scratch = targets;
        seq
    }

    /// Retained topics held.
    pub(super) fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// The bus's current sequence number.
    pub(super) fn current_seq(&self) -> Seq {
        self.seq
    }

    pub(super) fn delete_retained(&mut self, topic: &str) {
        if self.retained.contains_key(topic) {
            let t: Arc<str> = topic.into();
            self.publish(&t, &Value::Nil, true, ControlFields::default());
        }
    }

    // ----- client messages ------------------------------------------------------

    fn client_msg(&mut self, sid: SessionId, msg: ClientMsg) {
        match msg {
            ClientMsg::Sub { id, filters } => self.subscribe(sid, id, &filters),
            ClientMsg::Unsub { id, filters } => {
                for f in &filters {
                    if let Ok(f) = Filter::new(f) {
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            if s.filters.remove(&f) {
                                self.subs.remove(&f, sid);
                            }
                        }
                    }
                }
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.screen = s.filters.iter().any(|f| !s.grant.read.covers(f));
                }
                self.ok(sid, id, Value::Nil);
            }
            ClientMsg::Get { id, topic } => self.get(sid, id, &topic),
            ClientMsg::Pub {
                topic,
                value,
                retain,
                id,
                quality,
            } => self.client_publish(sid, id, topic, value, retain, quality),
            ClientMsg::Set {
                id,
                topic,
                value,
                timeout_ms,
            } => self.command(
                sid,
                id,
                &topic,
                crate::protocol::CommandOp::Set,
                value,
                timeout_ms,
            ),
            ClientMsg::Call {
                id,
                topic,
                args,
                timeout_ms,
            } => self.command(
                sid,
                id,
                &topic,
                crate::protocol::CommandOp::Call,
                args,
                timeout_ms,
            ),
            ClientMsg::Declare { id, device, online } => self.declare(sid, id, device, online),
            ClientMsg::Status {
                device,
                online,
                reason,
            } => self.status(sid, &device, online, reason.as_deref()),
            ClientMsg::Reply { id, result, error } => self.reply(sid, id, result, error),
            ClientMsg::Join { id, room } => self.join(sid, id, room),
            ClientMsg::Leave { id, room } => {
                self.leave_room(sid, &room);
                self.publish_presence(sid);
                self.ok(sid, id, Value::Nil);
            }
            ClientMsg::Say { room, value } => self.say(sid, &room, value),
            ClientMsg::Hello { .. } => {
                self.error(sid, None, ErrorCode::Unexpected, "hello sent twice".into());
            }
            // Heartbeats and goodbyes are handled by the connection task.
            // Answered by the connection or the telemetry hub directly.
            ClientMsg::Ping { .. }
            | ClientMsg::Pong { .. }
            | ClientMsg::Bye { .. }
            | ClientMsg::Tsub { .. }
            | ClientMsg::Tunsub { .. } => {}
        }
    }

    fn client_publish(
        &mut self,
        sid: SessionId,
        id: Option<u64>,
        raw: Arc<str>,
        value: Value,
        retain: bool,
        quality: Option<Quality>,
    ) {
        let mut none = None;
        let memo = self
            .sessions
            .get_mut(&sid)
            .map_or(&mut none, |s| &mut s.checked);
        let topic = match Topic::from_shared_memo(raw.clone(), memo) {
            Ok(t) => t,
            Err(e) => return self.error(sid, id, ErrorCode::InvalidTopic, format!("{raw:?}: {e}")),
        };
        if let Some(id) = id {
            let cached = self
                .sessions
                .get(&sid)
                .and_then(|s| s.answers.get(Kind::Publish, id));
            if let Some(f) = cached {
                return self.send(sid, f);
            }
        }
        if topic.is_reserved() {
            return self.forbidden(
                sid,
                id,
                format!("publishing {topic}: `$` topics belong to the bus"),
            );
        }
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        // An adapter's own device controls are its to publish (owning the device is
        // the permission); everything else needs a `publish` rule.
        if !s.grant.publish.allows(topic.as_str()) && !owns_control(&s.devices, topic.as_str()) {
            return self.forbidden(sid, id, format!("publishing {topic}"));
        }
        let seq = match self.device_publish(sid, &topic, &value, quality) {
            Some(Ok(seq)) => seq,
            Some(Err((code, message))) => return self.error(sid, id, code, message),
            None => {
                if retain
                    && !value.is_nil()
                    && !self.retained.contains_key(topic.as_str())
                    && self.retained.len() >= self.cfg.limits.max_topics
                {
                    return self.error(
                        sid,
                        id,
                        ErrorCode::Limit,
                        format!(
                            "the bus holds its maximum of {} topics",
                            self.cfg.limits.max_topics
                        ),
                    );
                }
                let topic = topic.shared();
                let time = now_ms();
                let lsn = match self.journal_append(&topic, &value, retain, time) {
                    Ok(lsn) => lsn,
                    Err(e) => {
                        let code = match e {
                            JournalError::Behind(_) => ErrorCode::Busy,
                            JournalError::Failed(_) => ErrorCode::Unavailable,
                        };
                        return self.error(sid, id, code, format!("{topic}: {e}"));
                    }
                };
                let at = ControlFields {
                    time: Some(time),
                    ..ControlFields::default()
                };
                let seq = self.publish(&topic, &value, retain, at);
                if let (Some(lsn), Some(id)) = (lsn, id) {
                    if self.journal.as_ref().is_some_and(Journal::acks_wait) {
                        self.held.push_back(HeldAck {
                            lsn,
                            session: sid,
                            id,
                            seq,
                        });
                        return;
                    }
                }
                seq
            }
        };
        if let Some(id) = id {
            self.answer(sid, Kind::Publish, id, frame(&BusMsg::Puback { id, seq }));
        }
    }
}

impl Router {
    /// Journals a client's retained publish outside devices (a deletion only if the
    /// topic exists); the record's number, or `None` when nothing is journaled.
    fn journal_append(
        &mut self,
        topic: &Arc<str>,
        value: &Value,
        retain: bool,
        time: u64,
    ) -> Result<Option<u64>, JournalError> {
        let Some(j) = &mut self.journal else {
            return Ok(None);
        };
        if !retain || (value.is_nil() && !self.retained.contains_key(&**topic)) {
            return Ok(None);
        }
        j.append(topic, value, time, None).map(Some)
    }

    /// Acknowledgements waiting for the disk.
    pub(super) fn held_acks(&self) -> usize {
        self.held.len()
    }

    /// Sends the acknowledgements whose records are on disk; when the journal has
    /// failed, the held ones get `unavailable` instead.
    fn release_held(&mut self) {
        let Some(j) = &self.journal else {
            return;
        };
        let durable = j.durable();
        let failed = j.failed();
        while let Some(h) = self.held.front() {
            if h.lsn > durable && failed.is_none() {
                break;
            }
            let h = self.held.pop_front().expect("front exists");
            let answer = if h.lsn <= durable {
                frame(&BusMsg::Puback {
                    id: h.id,
                    seq: h.seq,
                })
            } else {
                frame(&BusMsg::Error {
                    id: Some(h.id),
                    code: ErrorCode::Unavailable,
                    message: format!(
                        "published but not journaled: {}",
                        failed.as_deref().unwrap_or_default()
                    ),
                })
            };
            self.answer(h.session, Kind::Publish, h.id, answer);
        }
    }
}

/// Whether `topic` is a control of one of `devices` (`<room>/<device>/<control>`).
fn owns_control(devices: &BTreeSet<String>, topic: &str) -> bool {
    // A byte scan: `rsplit_once('/')` sets up a char searcher, for every publish.
    topic
        .bytes()
        .rposition(|b| b == b'/')
        .is_some_and(|i| devices.contains(&topic[..i]))
}

/// Builds a string-keyed MessagePack map.
pub(super) fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}
