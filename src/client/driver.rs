//! The client's background task: owns the socket, (re)connects, resumes, routes
//! frames to subscriptions and requests, and keeps the heartbeat.
//!
//! State it keeps so that a reconnect is invisible to the application: its session
//! and the last sequence seen (for `resume`), the local subscriptions with their
//! filters, requests not yet answered (resent with the same id, which the bus
//! answers without running a command twice), joined rooms and declared devices.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::telemetry::LinkMsg;
use super::{
    Answer, Client, ClientOptions, ConnectionEvent, Endpoint, Error, IncomingCommand, Req,
    RoomEvent, Shared, SubEvent,
};
use crate::bus::{frame_decoder, next_frame, FrameDecoder, ReadSize};
use crate::model::DeviceDescriptor;
use crate::protocol::{
    decode_bus, encode_client_into, encode_into, BusMsg, ClientMsg, Epoch, ErrorCode, Resume, Seq,
    SessionId, WireError, PROTOCOL_VERSION,
};
use crate::topic::matches;

/// Fire-and-forget messages kept while disconnected; the oldest are dropped beyond.
const PARKED: usize = 1024;
/// Requests taken from the queue per wake-up before writing them out together.
const REQ_BATCH: usize = 128;
/// How often a lagging subscription is checked for having been drained.
const RECOVER_CHECK: Duration = Duration::from_millis(20);
/// Heartbeats the bus may miss before the client gives up on the connection.
const HEARTBEAT_MISSES: u32 = 3;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Reader = FramedRead<Box<dyn AsyncRead + Send + Unpin>, FrameDecoder>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What the driver keeps to hand commands a [`Client`] (without keeping the
/// connection alive itself: the request sender is weak).
pub(crate) struct DriverHandle {
    pub tx: mpsc::WeakSender<Req>,
    pub events: broadcast::Sender<ConnectionEvent>,
    pub shared: Arc<Shared>,
    pub opts: Arc<ClientOptions>,
}

impl DriverHandle {
    fn client(&self) -> Option<Client> {
        Some(Client {
            tx: self.tx.upgrade()?,
            events: self.events.clone(),
            shared: self.shared.clone(),
            opts: self.opts.clone(),
        })
    }
}

struct LocalSub {
    filters: Vec<String>,
    tx: mpsc::Sender<SubEvent>,
    /// Until its snapshot starts, the caller of `subscribe` waits here (answered at
    /// the start, not the end, so a snapshot larger than the subscription's queue can
    /// be read while it streams in).
    reply: Option<oneshot::Sender<Answer>>,
    /// Whether its snapshot completed; if not, a reconnect asks for it again.
    synced: bool,
    /// Events dropped since the application fell behind (`None`: keeping up).
    lagged: Option<u64>,
}

struct PendingReq {
    msg: ClientMsg,
    reply: oneshot::Sender<Answer>,
}

enum Outcome {
    /// Every handle is gone or `close` was called.
    Stop,
    /// The connection was lost; reconnect if configured.
    Lost(String),
}

struct Conn {
    reader: Reader,
    writer: Writer,
    heartbeat: Duration,
    resumed: bool,
}

struct Driver {
    opts: Arc<ClientOptions>,
    rx: mpsc::Receiver<Req>,
    events: broadcast::Sender<ConnectionEvent>,
    shared: Arc<Shared>,
    handle: DriverHandle,
    subs: HashMap<u64, LocalSub>,
    requests: HashMap<u64, PendingReq>,
    declared: BTreeMap<String, (DeviceDescriptor, bool)>,
    /// Ids of `declare` requests in flight → device key (their answers carry the
    /// telemetry aliases of the device's meters).
    declare_ids: HashMap<u64, String>,
    /// Telemetry subscriptions: id → (filter, hz), re-made on every connection
    /// (the bus keeps them per connection, with its telemetry token).
    tsubs: BTreeMap<u64, (String, f64)>,
    tsub_replies: HashMap<u64, oneshot::Sender<Answer>>,
    rooms: BTreeSet<String>,
    commands: Option<mpsc::Sender<IncomingCommand>>,
    room_tx: Option<mpsc::Sender<RoomEvent>>,
    parked: VecDeque<ClientMsg>,
    /// Pings in flight: number, when sent, and who waits (none for heartbeats).
    pings: VecDeque<(u64, Instant, Option<oneshot::Sender<Duration>>)>,
    ping_n: u64,
    session: Option<(SessionId, Epoch)>,
    last_seq: Seq,
    /// The snapshot batch being received: its subscription id (0: a resume) and
    /// whether it is a resync.
    snap: Option<(u64, bool)>,
    wbuf: BytesMut,
    /// Requests taken from the handles since the last write (see `outgoing.rs`).
    handled: usize,
    /// Publishes the handles had encoded when the connection was lost: sent on the
    /// next one after the restored requests and before the parked messages (their
    /// place in call order).
    stale: BytesMut,
    /// Whether some subscription is lagging (see [`Driver::recover`]).
    lagging: bool,
    /// Subscriptions an event goes to (reused).
    targets: Vec<u64>,
    last_error: Option<String>,
    /// Whether a connection was ever established (a later new session is a resync).
    connected_before: bool,
}

pub(crate) async fn run(
    opts: Arc<ClientOptions>,
    rx: mpsc::Receiver<Req>,
    events: broadcast::Sender<ConnectionEvent>,
    shared: Arc<Shared>,
    first: oneshot::Sender<Result<(), Error>>,
    handle: DriverHandle,
) {
    let d = Driver {
        opts,
        rx,
        events,
        shared,
        handle,
        subs: HashMap::new(),
        requests: HashMap::new(),
        declared: BTreeMap::new(),
        declare_ids: HashMap::new(),
        tsubs: BTreeMap::new(),
        tsub_replies: HashMap::new(),
        rooms: BTreeSet::new(),
        commands: None,
        room_tx: None,
        parked: VecDeque::new(),
        pings: VecDeque::new(),
        ping_n: 0,
        session: None,
        last_seq: Seq(0),
        snap: None,
        wbuf: BytesMut::with_capacity(16 * 1024),
        handled: 0,
        stale: BytesMut::new(),
        targets: Vec::new(),
        lagging: false,
        last_error: None,
        connected_before: false,
    };
    d.main(first).await;
}

fn backoff(opts: &ClientOptions, attempt: u32) -> Duration {
    let base = opts
        .backoff_min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = base.min(opts.backoff_max);
    // ±50 % jitter, so panels that lost the bus together do not return together.
    capped.mul_f64(0.5 + fastrand::f64())
}

impl Driver {
    fn emit(&self, ev: ConnectionEvent) {
        let _ = self.events.send(ev);
    }

    async fn main(mut self, first: oneshot::Sender<Result<(), Error>>) {
        let mut first = Some(first);
        let mut attempt = 0u32;
        loop {
            match self.connect_once().await {
                Ok(conn) => {
                    attempt = 0;
                    if let Some(f) = first.take() {
                        let _ = f.send(Ok(()));
                    }
                    let outcome = self.run_conn(conn).await;
                    self.shared.out.set_connected(false);
                    self.shared.out.taken(std::mem::take(&mut self.handled));
                    let left = self.shared.out.take();
                    self.stale.extend_from_slice(&left);
                    match outcome {
                        Outcome::Stop => return,
                        Outcome::Lost(reason) => {
                            tracing::debug!(name = %self.opts.name, reason, "connection lost");
                            self.emit(ConnectionEvent::Disconnected { reason });
                        }
                    }
                }
                Err(e) => {
                    self.emit(match &e {
                        Error::ConnectTimeout => ConnectionEvent::ConnectTimeout,
                        other => ConnectionEvent::ConnectError {
                            error: other.to_string(),
                        },
                    });
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e));
                        return;
                    }
                }
            }
            if !self.opts.reconnect {
                return;
            }
            attempt += 1;
            let delay = backoff(&self.opts, attempt);
            self.emit(ConnectionEvent::Reconnecting { attempt, delay });
            if let Outcome::Stop = self.idle(delay).await {
                return;
            }
        }
    }

    /// Waits out a backoff delay while keeping requests for the next connection.
    async fn idle(&mut self, delay: Duration) -> Outcome {
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return Outcome::Lost(String::new()),
                req = self.rx.recv() => match req {
                    None => return Outcome::Stop,
                    Some(Req::Close(done)) => {
                        let _ = done.send(());
                        return Outcome::Stop;
                    }
                    Some(r) => {
                        self.request(r, false);
                        self.shared.out.taken(1);
                    }
                },
            }
        }
    }

    async fn connect_once(&mut self) -> Result<Conn, Error> {
        let opts = self.opts.clone();
        match tokio::time::timeout(opts.connect_timeout, self.handshake(&opts)).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout),
        }
    }

    async fn handshake(&mut self, opts: &ClientOptions) -> Result<Conn, Error> {
        let mut bus_ip = None;
        let io: Result<tokio::net::TcpStream, Box<dyn Io>> = match &opts.endpoint {
            Endpoint::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| Error::Connect(format!("{addr}: {e}")))?;
                let _ = s.set_nodelay(true);
                bus_ip = s.peer_addr().ok().map(|a| a.ip());
                Ok(s)
            }
            Endpoint::Tls(addr, tls) => {
                let s = tls.connect(addr).await.map_err(Error::Connect)?;
                bus_ip = s.get_ref().0.peer_addr().ok().map(|a| a.ip());
                Err(Box::new(s))
            }
            Endpoint::Local(c) => {
                Err(Box::new(c.connect().await.ok_or_else(|| {
                    Error::Connect("the in-process bus has stopped".into())
                })?))
            }
        };
        // Plain TCP: tokio's own halves (a short read clears readiness there: no
        // `recv` that can only say `EAGAIN` after each frame).
        let (rd, mut writer): (Box<dyn AsyncRead + Send + Unpin>, Writer) = match io {
            Ok(s) => {
                let (rd, wr) = s.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Err(io) => {
                let (rd, wr) = tokio::io::split(io);
                (Box::new(rd), Box::new(wr))
            }
        };
        let mut reader = FramedRead::new(
            rd,
            frame_decoder(opts.max_frame + crate::protocol::BUS_ENVELOPE),
        );
        let resume = self.session.map(|(session, epoch)| Resume {
            session,
            epoch,
            last_seq: self.last_seq,
        });
        let mut buf = BytesMut::new();
        encode_into(
            &mut buf,
            &ClientMsg::Hello {
                v: PROTOCOL_VERSION,
                name: opts.name.clone(),
                role: opts.role,
                credentials: opts.credentials.clone(),
                resume,
            },
        );
        writer
            .write_all(&buf)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let body = match reader.next().await {
            None => return Err(Error::Connect("closed during handshake".into())),
            Some(Err(e)) => return Err(Error::Connect(e.to_string())),
            Some(Ok(b)) => b,
        };
        match decode_bus(&body).map_err(|e| Error::Connect(e.to_string()))? {
            BusMsg::Welcome {
                session,
                epoch,
                seq,
                heartbeat_ms,
                resumed,
                udp,
                token,
                ..
            } => {
                self.shared.session.store(session.0, Ordering::Relaxed);
                let udp = match (&opts.endpoint, udp) {
                    (_, None) => None,
                    (Endpoint::Tcp(_) | Endpoint::Tls(..), Some(port)) => {
                        bus_ip.map(|ip| (ip, port).into())
                    }
                    (Endpoint::Local(c), Some(_)) => Some(c.hub().udp),
                };
                self.shared.link.send(LinkMsg::Endpoint {
                    udp,
                    token: token.unwrap_or(0),
                    session,
                });
                if !resumed {
                    self.last_seq = seq;
                }
                self.session = Some((session, epoch));
                Ok(Conn {
                    reader,
                    writer,
                    heartbeat: Duration::from_millis(heartbeat_ms.max(1)),
                    resumed,
                })
            }
            BusMsg::Error { code, message, .. } => Err(Error::Refused { code, message }),
            other => Err(Error::Connect(format!("expected welcome, got {other:?}"))),
        }
    }

    fn write(&mut self, msg: &ClientMsg) {
        encode_client_into(&mut self.wbuf, msg);
    }

    /// After a welcome: restore everything the application set up.
    fn restore(&mut self, resumed: bool, first_session: bool) {
        let session = self.session.map_or(SessionId(0), |(s, _)| s);
        self.emit(ConnectionEvent::Connected { session, resumed });
        let mut subs: Vec<(u64, Vec<String>)> = Vec::new();
        for (id, s) in &self.subs {
            if !resumed || !s.synced {
                subs.push((*id, s.filters.clone()));
                if !resumed && !first_session && s.synced {
                    let _ = s.tx.try_send(SubEvent::Resync);
                }
            }
        }
        if !resumed && !first_session {
            self.emit(ConnectionEvent::Resynced);
        }
        for (id, filters) in subs {
            self.write(&ClientMsg::Sub { id, filters });
        }
        if !resumed {
            let rooms: Vec<String> = self.rooms.iter().cloned().collect();
            for room in rooms {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                self.write(&ClientMsg::Join { id, room });
            }
        }
        // Devices go offline when the adapter's connection ends; declaring them again
        // brings them back (marked stale until the adapter republishes values).
        let declared: Vec<(DeviceDescriptor, bool)> = self.declared.values().cloned().collect();
        for (device, online) in declared {
            if !self.requests.values().any(|p| matches!(&p.msg, ClientMsg::Declare { device: d, .. } if d.key() == device.key())) {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                self.declare_ids.insert(id, device.key());
                self.write(&ClientMsg::Declare { id, device, online });
            }
        }
        self.requests.retain(|_, p| !p.reply.is_closed());
        let resend: Vec<ClientMsg> = self.requests.values().map(|p| p.msg.clone()).collect();
        for msg in resend {
            self.write(&msg);
        }
        let stale = std::mem::take(&mut self.stale);
        self.wbuf.extend_from_slice(&stale);
        while let Some(msg) = self.parked.pop_front() {
            self.write(&msg);
        }
        let tsubs: Vec<(u64, String, f64)> = self
            .tsubs
            .iter()
            .map(|(id, (f, hz))| (*id, f.clone(), *hz))
            .collect();
        for (id, filter, hz) in tsubs {
            self.write(&ClientMsg::Tsub { id, filter, hz });
        }
    }

    /// Says goodbye: the handles' frames, the driver's own, then `bye`.
    async fn goodbye(&mut self, conn: &mut Conn) {
        self.shared.out.set_connected(false);
        let out = self.shared.out.take();
        self.write(&ClientMsg::Bye { reason: None });
        let _ = conn.writer.write_all(&out).await;
        let _ = conn.writer.write_all(&self.wbuf).await;
        let _ = conn.writer.shutdown().await;
    }

    async fn run_conn(&mut self, mut conn: Conn) -> Outcome {
        let first_session = !self.connected_before;
        self.connected_before = true;
        self.restore(conn.resumed, first_session);
        self.last_error = None;
        let interval = conn.heartbeat;
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        // While a subscription lags, check often whether the application drained it.
        let mut recheck = tokio::time::interval(RECOVER_CHECK);
        // Handles encode into the outgoing buffer only once this connection's first
        // write (the restored state, then what was parked) is out.
        let mut first = true;
        // The whole frames behind the one the reader yielded are taken where they lie
        // (`next_frame`), and the reads are sized to the traffic.
        let max = self.opts.max_frame + crate::protocol::BUS_ENVELOPE;
        let mut read_size = ReadSize::new();
        loop {
            // The handles' frames first, then the driver's own.
            let out = self.shared.out.take();
            let written = async {
                conn.writer.write_all(&out).await?;
                conn.writer.write_all(&self.wbuf).await
            }
            .await;
            self.wbuf.clear();
            if let Err(e) = written {
                return Outcome::Lost(format!("write failed: {e}"));
            }
            self.shared.out.taken(std::mem::take(&mut self.handled));
            if std::mem::take(&mut first) {
                self.shared.out.set_connected(true);
            }
            tokio::select! {
                // Frames from the handles in an empty buffer.
                _ = self.shared.out.wake.notified() => {}
                // Frames from the bus (every buffered frame before the next read).
                next = conn.reader.next() => match next {
                    None => {
                        return Outcome::Lost(self.last_error.take().unwrap_or_else(|| "closed by the bus".into()));
                    }
                    Some(Err(e)) => return Outcome::Lost(format!("read failed: {e}")),
                    Some(Ok(body)) => {
                        last_rx = Instant::now();
                        // This frame and every whole one already read behind it.
                        let first = body;
                        let mut body: &[u8] = &first;
                        let (mut bytes, mut taken) = (0, 0);
                        loop {
                            bytes += crate::protocol::LEN_PREFIX + body.len();
                            match decode_bus(body) {
                                Ok(msg) => self.frame(msg),
                                Err(e) => return Outcome::Lost(format!("bad frame from the bus: {e}")),
                            }
                            body = match next_frame(conn.reader.read_buffer(), &mut taken, max) {
                                Ok(Some(b)) => b,
                                Ok(None) => break,
                                Err(e) => return Outcome::Lost(format!("read failed: {e}")),
                            };
                        }
                        conn.reader.read_buffer_mut().advance(taken);
                        let left = conn.reader.read_buffer().len();
                        read_size.after_read(bytes + left, conn.reader.read_buffer_mut());
                    }
                },
                // Requests from the application, several per wake-up.
                req = self.rx.recv() => {
                    let Some(req) = req else {
                        self.goodbye(&mut conn).await;
                        return Outcome::Stop;
                    };
                    let mut next = Some(req);
                    let mut n = 0;
                    while let Some(r) = next.take() {
                        self.handled += 1;
                        if let Req::Close(done) = r {
                            self.goodbye(&mut conn).await;
                            let _ = done.send(());
                            return Outcome::Stop;
                        }
                        self.request(r, true);
                        n += 1;
                        if n < REQ_BATCH {
                            next = self.rx.try_recv().ok();
                        }
                    }
                }
                // A lagging subscription may have been drained by the application.
                _ = recheck.tick(), if self.lagging => self.recover(),
                // Heartbeat: ping the bus; give up after several silent intervals.
                _ = tick.tick() => {
                    if last_rx.elapsed() >= interval * HEARTBEAT_MISSES {
                        return Outcome::Lost("heartbeat timeout".into());
                    }
                    self.ping_n += 1;
                    let n = self.ping_n;
                    self.write(&ClientMsg::Ping { n });
                    self.requests.retain(|_, p| !p.reply.is_closed());
                    // Forget pings never answered (bounded by the heartbeat deadline).
                    let horizon = interval * HEARTBEAT_MISSES;
                    self.pings.retain(|(_, sent, tx)| {
                        sent.elapsed() < horizon && !tx.as_ref().is_some_and(|t| t.is_closed())
                    });
                    self.pings.push_back((n, Instant::now(), None));
                }
            }
        }
    }

    /// Handles one request from a handle. `connected`: write it now; otherwise keep
    /// it for the next connection.
    fn request(&mut self, req: Req, connected: bool) {
        let mut out: Option<ClientMsg> = None;
        match req {
            Req::Request { id, msg, reply } => {
                out = Some(msg.clone());
                self.requests.insert(id, PendingReq { msg, reply });
            }
            Req::Fire(msg) => {
                if connected {
                    out = Some(msg);
                } else {
                    if self.parked.len() >= PARKED {
                        self.parked.pop_front();
                        tracing::warn!("client disconnected: oldest unsent message dropped");
                    }
                    self.parked.push_back(msg);
                }
            }
            Req::Sub {
                id,
                filters,
                tx,
                reply,
            } => {
                out = Some(ClientMsg::Sub {
                    id,
                    filters: filters.clone(),
                });
                self.subs.insert(
                    id,
                    LocalSub {
                        filters,
                        tx,
                        reply: Some(reply),
                        synced: false,
                        lagged: None,
                    },
                );
            }
            Req::Unsub { id } => {
                if let Some(gone) = self.subs.remove(&id) {
                    let still: BTreeSet<&String> =
                        self.subs.values().flat_map(|s| s.filters.iter()).collect();
                    let filters: Vec<String> = gone
                        .filters
                        .into_iter()
                        .filter(|f| !still.contains(f))
                        .collect();
                    if !filters.is_empty() && connected {
                        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                        out = Some(ClientMsg::Unsub { id, filters });
                    }
                }
            }
            Req::Declare {
                id,
                device,
                online,
                reply,
            } => {
                self.declared.insert(device.key(), (device.clone(), online));
                self.declare_ids.insert(id, device.key());
                let msg = ClientMsg::Declare { id, device, online };
                out = Some(msg.clone());
                self.requests.insert(id, PendingReq { msg, reply });
            }
            Req::Status { device, online } => {
                if let Some(d) = self.declared.get_mut(&device) {
                    d.1 = online;
                }
                if connected {
                    out = Some(ClientMsg::Status {
                        device,
                        online,
                        reason: None,
                    });
                }
            }
            Req::Join { id, room, reply } => {
                self.rooms.insert(room.clone());
                let msg = ClientMsg::Join { id, room };
                out = Some(msg.clone());
                self.requests.insert(id, PendingReq { msg, reply });
            }
            Req::Leave { id, room, reply } => {
                self.rooms.remove(&room);
                let msg = ClientMsg::Leave { id, room };
                out = Some(msg.clone());
                self.requests.insert(id, PendingReq { msg, reply });
            }
            Req::Tsub {
                id,
                filter,
                hz,
                reply,
            } => {
                self.tsubs.insert(id, (filter.clone(), hz));
                self.tsub_replies.insert(id, reply);
                out = Some(ClientMsg::Tsub { id, filter, hz });
            }
            Req::Tunsub { sub } => {
                self.shared.link.send(LinkMsg::Unsub { id: sub });
                if self.tsubs.remove(&sub).is_some() && connected {
                    let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                    out = Some(ClientMsg::Tunsub { id, sub });
                }
            }
            Req::Commands(tx) => self.commands = Some(tx),
            Req::Rooms(tx) => self.room_tx = Some(tx),
            Req::Ping(tx) => {
                if connected {
                    self.ping_n += 1;
                    let n = self.ping_n;
                    self.pings.push_back((n, Instant::now(), Some(tx)));
                    out = Some(ClientMsg::Ping { n });
                }
            }
            Req::Close(done) => {
                let _ = done.send(());
            }
        }
        if let (true, Some(msg)) = (connected, out) {
            self.write(&msg);
        }
    }

    /// Hands an event to the matching subscriptions without ever waiting: one that the
    /// application is not reading stops receiving (counted) until it is drained, then
    /// [`Driver::recover`] resyncs it. Commands, other subscriptions and heartbeats
    /// are never held up by it.
    fn deliver(&mut self, ev: SubEvent, only: Option<u64>) {
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        // An update goes to the subscriptions whose filters match its topic.
        let topic = match &ev {
            SubEvent::Update(u) => Some(u.topic.as_str()),
            _ => None,
        };
        for (id, s) in self.subs.iter_mut() {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            if topic.is_some_and(|t| !s.filters.iter().any(|f| matches(f, t))) {
                continue;
            }
            if let Some(n) = s.lagged.as_mut() {
                *n += 1;
                continue;
            }
            targets.push(*id);
        }
        // The last subscription takes the event itself; only the others get copies
        // (usually there is one).
        let mut ev = Some(ev);
        let last = targets.len().saturating_sub(1);
        for (i, id) in targets.iter().enumerate() {
            let e = if i == last { ev.take() } else { ev.clone() };
            let (Some(e), Some(s)) = (e, self.subs.get_mut(id)) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(e) {
                tracing::warn!(
                    sub = id,
                    "subscription not read fast enough: resync when drained"
                );
                s.lagged = Some(1);
                self.lagging = true;
            }
        }
        self.targets = targets;
    }

    /// Resyncs the lagging subscriptions whose queue the application has drained.
    fn recover(&mut self) {
        let mut resub = Vec::new();
        for (id, s) in self.subs.iter_mut() {
            let Some(dropped) = s.lagged else { continue };
            if s.tx.capacity() < s.tx.max_capacity() {
                continue;
            }
            s.lagged = None;
            s.synced = false;
            let _ = s.tx.try_send(SubEvent::Gap {
                dropped,
                conflated: 0,
            });
            let _ = s.tx.try_send(SubEvent::Resync);
            resub.push((*id, s.filters.clone()));
        }
        self.lagging = self.subs.values().any(|s| s.lagged.is_some());
        for (id, filters) in resub {
            self.write(&ClientMsg::Sub { id, filters });
        }
    }

    fn target(&self, id: u64) -> Option<u64> {
        (id != 0).then_some(id)
    }

    fn frame(&mut self, msg: BusMsg) {
        match msg {
            BusMsg::Update(u) => {
                // Live updates and a resume's replay arrive in sequence order, so
                // everything up to this one has been seen; a snapshot's records carry
                // older numbers and prove nothing until its `synced`.
                if matches!(self.snap, None | Some((0, false))) {
                    self.last_seq = self.last_seq.max(u.seq);
                }
                let only = self.snap.and_then(|(id, _)| self.target(id));
                self.deliver(SubEvent::Update(u), only);
            }
            BusMsg::Snapshot { id, resync, .. } => {
                self.snap = Some((id, resync));
                if let Some(reply) = self.subs.get_mut(&id).and_then(|s| s.reply.take()) {
                    let _ = reply.send(Answer::Ok(rmpv::Value::Nil));
                }
                if resync {
                    self.emit(ConnectionEvent::Resynced);
                    self.deliver(SubEvent::Resync, self.target(id));
                }
            }
            BusMsg::Synced { id, seq, .. } => {
                self.snap = None;
                self.last_seq = self.last_seq.max(seq);
                if let Some(s) = self.subs.get_mut(&id) {
                    s.synced = true;
                }
                self.deliver(SubEvent::Synced { seq }, self.target(id));
            }
            BusMsg::Gap {
                dropped, conflated, ..
            } => {
                self.deliver(SubEvent::Gap { dropped, conflated }, None);
            }
            BusMsg::Ok { id, result } => {
                if self.tsubs.contains_key(&id) {
                    let streams = super::parse_streams(&result);
                    self.shared.link.send(LinkMsg::Streams { sub: id, streams });
                    if let Some(reply) = self.tsub_replies.remove(&id) {
                        let _ = reply.send(Answer::Ok(result));
                    }
                    return;
                }
                if let Some(key) = self.declare_ids.remove(&id) {
                    self.owned_streams(&key, &result);
                }
                if let Some(p) = self.requests.remove(&id) {
                    let _ = p.reply.send(Answer::Ok(result));
                }
            }
            BusMsg::Puback { id, seq } => {
                if let Some(p) = self.requests.remove(&id) {
                    let _ = p.reply.send(Answer::Puback(seq));
                }
            }
            BusMsg::Error {
                id: Some(id),
                code,
                message,
            } => {
                self.declare_ids.remove(&id);
                if let Some(reply) = self.tsub_replies.remove(&id) {
                    self.tsubs.remove(&id);
                    let _ = reply.send(Answer::Err(code, message));
                } else if let Some(p) = self.requests.remove(&id) {
                    let _ = p.reply.send(Answer::Err(code, message));
                } else if let Some(s) = self.subs.remove(&id) {
                    if let Some(reply) = s.reply {
                        let _ = reply.send(Answer::Err(code, message));
                    }
                } else {
                    tracing::warn!(id, %code, message, "error from the bus");
                }
            }
            BusMsg::Error {
                id: None,
                code,
                message,
            } => {
                tracing::warn!(%code, message, "error from the bus");
                self.last_error = Some(format!("{code}: {message}"));
            }
            BusMsg::Cmd(command) => {
                let id = command.id;
                let refused = match (&self.commands, self.handle.client()) {
                    (Some(tx), Some(client)) => {
                        tx.try_send(IncomingCommand { command, client }).is_err()
                    }
                    _ => true,
                };
                if refused {
                    self.write(&ClientMsg::Reply {
                        id,
                        result: rmpv::Value::Nil,
                        error: Some(WireError {
                            code: ErrorCode::Busy,
                            message: "the adapter is not taking commands".into(),
                        }),
                    });
                }
            }
            BusMsg::Presence {
                room,
                session,
                name,
                role,
                joined,
            } => {
                let member = crate::protocol::Member {
                    session,
                    name,
                    role,
                };
                let ev = if joined {
                    RoomEvent::Joined { room, member }
                } else {
                    RoomEvent::Left { room, member }
                };
                self.room_event(ev);
            }
            BusMsg::Said {
                room,
                from,
                name,
                value,
            } => {
                self.room_event(RoomEvent::Said {
                    room,
                    from,
                    name,
                    value,
                });
            }
            BusMsg::Ping { n } => self.write(&ClientMsg::Pong { n }),
            BusMsg::Pong { n } => {
                if let Some(i) = self.pings.iter().position(|(p, _, _)| *p == n) {
                    if let Some((_, sent, tx)) = self.pings.remove(i) {
                        let rtt = sent.elapsed();
                        self.shared
                            .rtt_us
                            .store(rtt.as_micros() as u64, Ordering::Relaxed);
                        if let Some(tx) = tx {
                            let _ = tx.send(rtt);
                        }
                    }
                }
            }
            BusMsg::Bye { reason, message } => {
                self.last_error = Some(format!("{reason}: {message}"));
            }
            BusMsg::Welcome { .. } => {
                tracing::warn!("unexpected second welcome from the bus");
            }
            BusMsg::Streams { sub, streams } => {
                self.shared.link.send(LinkMsg::Streams { sub, streams });
            }
        }
    }

    /// A `declare` answer lists the telemetry aliases of the device's meters.
    fn owned_streams(&self, key: &str, result: &rmpv::Value) {
        let Some(rmpv::Value::Map(streams)) = crate::value::get(result, "streams") else {
            return;
        };
        let owned: Vec<(String, u32)> = streams
            .iter()
            .filter_map(|(k, v)| Some((format!("{key}/{}", k.as_str()?), v.as_u64()? as u32)))
            .collect();
        if !owned.is_empty() {
            self.shared.link.send(LinkMsg::Owned(owned));
        }
    }

    fn room_event(&self, ev: RoomEvent) {
        if let Some(tx) = &self.room_tx {
            if tx.try_send(ev).is_err() {
                tracing::warn!("room event dropped: the application is not reading room events");
            }
        }
    }
}
