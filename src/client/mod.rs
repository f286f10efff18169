//! The Rust client library, for panels, adapters, tools and tests.
//!
//! A [`Client`] is a cheap handle to one background task (the driver) that owns the
//! connection, reconnects with exponential backoff and jitter, resumes its session
//! (the bus replays what was missed, or resyncs), re-subscribes, re-joins rooms and
//! re-declares devices after a new session, and answers heartbeats.
//!
//! ```no_run
//! # async fn demo() -> Result<(), avbus::client::Error> {
//! use avbus::client::{Client, ClientOptions, SubEvent};
//! use futures_util::StreamExt;
//!
//! let client = Client::connect(ClientOptions::tcp("127.0.0.1:7420", "wall-panel")).await?;
//! let mut sub = client.subscribe(&["boardroom/#"]).await?;
//! while let Some(ev) = sub.next().await {
//!     if let SubEvent::Update(u) = ev {
//!         println!("{} = {}", u.topic, avbus::value::to_json_string(&u.value));
//!     }
//! }
//! match client.set("boardroom/projector/power", "on".into()).await {
//!     Ok(reply) => println!("ok {:?}", reply.result),
//!     Err(e) => eprintln!("{}: {}", e.code, e.message),
//! }
//! # Ok(()) }
//! ```

mod driver;
mod outgoing;
pub mod telemetry;

pub use telemetry::{StreamStats, TelemetryStats, TelemetrySubscription, TelemetryValue};

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::bus::LocalConnector;
use crate::model::{DeviceDescriptor, Quality};
use crate::protocol::{
    ClientMsg, Command, ErrorCode, Member, Role, Seq, SessionId, Update, WireError,
};
use crate::tls::TlsClient;
use crate::value::Value;

/// Requests queued from handles to the driver. Callers wait when it is full.
const REQUEST_QUEUE: usize = 1024;
/// Events buffered per subscription by default (`ClientOptions::sub_queue`).
pub const SUB_QUEUE: usize = 4096;
/// Commands buffered for an adapter before further ones are answered `busy`.
const COMMAND_QUEUE: usize = 1024;
/// Room events buffered; beyond it they are dropped (and logged).
const ROOM_QUEUE: usize = 1024;
/// Connection events kept for slow listeners (a lagging listener skips old ones).
const EVENT_QUEUE: usize = 64;

/// Where to connect.
#[derive(Clone)]
pub enum Endpoint {
    /// `host:port` over TCP.
    Tcp(String),
    /// `host:port` over TLS, trusting what the [`TlsClient`] trusts.
    Tls(String, TlsClient),
    /// In-process, to a bus running in this process.
    Local(LocalConnector),
}

/// How to connect.
#[derive(Clone)]
pub struct ClientOptions {
    pub endpoint: Endpoint,
    /// Shown in presence and logs.
    pub name: String,
    pub role: Role,
    /// Sent as is in `hello`: nil, or `{token: "avbus_..."}` (see
    /// [`ClientOptions::token`]).
    pub credentials: Value,
    /// Limit for one connection attempt (TCP connect and handshake).
    pub connect_timeout: Duration,
    /// Limit for `get`, `subscribe`, `join`, `declare`, acknowledged `publish`.
    pub request_timeout: Duration,
    /// Deadline sent with `set` and `call` (the bus answers `timeout` after it).
    pub command_timeout: Duration,
    /// Reconnect after a lost connection (on by default).
    pub reconnect: bool,
    /// First reconnect delay; doubles up to `backoff_max`, each with ±50 % jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest frame accepted from the bus.
    pub max_frame: usize,
    /// Events buffered per subscription. When the application falls this far behind
    /// on one subscription, that subscription stops receiving (the others, commands
    /// and heartbeats go on); once the application has drained it, it gets
    /// [`SubEvent::Gap`] with the number dropped, [`SubEvent::Resync`], and a fresh
    /// snapshot, so it ends holding the bus's state again.
    pub sub_queue: usize,
}

impl ClientOptions {
    /// Options for a TCP connection with defaults for everything else.
    pub fn tcp(addr: &str, name: &str) -> ClientOptions {
        ClientOptions::new(Endpoint::Tcp(addr.into()), name)
    }

    /// Options for a TLS connection with defaults for everything else.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), avbus::tls::TlsError> {
    /// use avbus::client::ClientOptions;
    /// use avbus::tls::TlsClient;
    /// let tls = TlsClient::from_files("site-ca.pem".as_ref(), None)?;
    /// let opts = ClientOptions::tls("10.0.0.5:7420", "wall-panel", tls).token("avbus_...");
    /// # Ok(()) }
    /// ```
    pub fn tls(addr: &str, name: &str, tls: TlsClient) -> ClientOptions {
        ClientOptions::new(Endpoint::Tls(addr.into(), tls), name)
    }

    /// Presents `token` as the credentials in `hello` (builder style).
    pub fn token(mut self, token: &str) -> Self {
        self.credentials = Value::Map(vec![(Value::from("token"), Value::from(token))]);
        self
    }

    /// Options for an in-process connection.
    pub fn local(connector: LocalConnector, name: &str) -> ClientOptions {
        ClientOptions::new(Endpoint::Local(connector), name)
    }

    fn new(endpoint: Endpoint, name: &str) -> ClientOptions {
        ClientOptions {
            endpoint,
            name: name.into(),
            role: Role::Tool,
            credentials: Value::Nil,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(5),
            reconnect: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            sub_queue: SUB_QUEUE,
        }
    }

    /// Sets the role (builder style).
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Turns automatic reconnection on or off (builder style).
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
}

/// What the connection is doing, for a panel's status line.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionEvent {
    /// Connected; `resumed` when the bus kept the session.
    Connected { session: SessionId, resumed: bool },
    /// The connection ended, and why.
    Disconnected { reason: String },
    /// A connection attempt failed.
    ConnectError { error: String },
    /// A connection attempt took longer than `connect_timeout`.
    ConnectTimeout,
    /// Waiting `delay` before attempt `attempt`.
    Reconnecting { attempt: u32, delay: Duration },
    /// State was refreshed from a snapshot (a new session, or the replay log no
    /// longer reached back): what a panel shows is the bus's state again.
    Resynced,
}

/// Errors of the client library (connection and request level).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection attempt timed out")]
    ConnectTimeout,
    #[error("the bus refused the connection: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("{code}: {message}")]
    Bus { code: ErrorCode, message: String },
    #[error("no answer in time")]
    Timeout,
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// The wire code, when the bus sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Refused { code, .. } | Error::Bus { code, .. } => Some(*code),
            Error::Timeout => Some(ErrorCode::Timeout),
            _ => None,
        }
    }
}

/// A command's typed failure: the bus's (or adapter's) code and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
}

/// A command's success: the adapter's result (often nil).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub result: Value,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SubEvent {
    /// A topic's value (snapshot or live).
    Update(Update),
    /// A fresh snapshot follows that replaces what was delivered before (a new
    /// session after a restart, or a gap too large to replay): clear and rebuild.
    Resync,
    /// The snapshot (or a resume's replay) is complete; live updates follow.
    Synced { seq: Seq },
    /// The bus's queue for this client overflowed: `dropped` events were lost and
    /// `conflated` state updates merged; the newest values follow.
    Gap { dropped: u64, conflated: u64 },
}

/// A live subscription: a `Stream` of [`SubEvent`], snapshot first, then live.
/// Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<SubEvent>,
    client: Client,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subscription({})", self.id)
    }
}

impl Stream for Subscription {
    type Item = SubEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        Client::try_send(
            &self.client.tx,
            &self.client.shared,
            Req::Unsub { id: self.id },
        );
    }
}

/// A command for a device this adapter declared. Answer it once with
/// [`IncomingCommand::ok`] or [`IncomingCommand::fail`]; dropping it unanswered
/// leaves the panel to the bus's deadline (`timeout`).
#[derive(Debug)]
pub struct IncomingCommand {
    pub command: Command,
    client: Client,
}

impl IncomingCommand {
    /// Answers success with `result`.
    pub async fn ok(self, result: Value) {
        let msg = ClientMsg::Reply {
            id: self.command.id,
            result,
            error: None,
        };
        let _ = self.client.fire(msg).await;
    }

    /// Answers with a typed error.
    pub async fn fail(self, code: ErrorCode, message: impl Into<String>) {
        let msg = ClientMsg::Reply {
            id: self.command.id,
            result: Value::Nil,
            error: Some(WireError {
                code,
                message: message.into(),
            }),
        };
        let _ = self.client.fire(msg).await;
    }
}

/// Something that happened in a room this client joined.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    Joined {
        room: String,
        member: Member,
    },
    Left {
        room: String,
        member: Member,
    },
    Said {
        room: String,
        from: SessionId,
        name: String,
        value: Value,
    },
}

pub(crate) enum Answer {
    Ok(Value),
    Puback(Seq),
    Err(ErrorCode, String),
}

pub(crate) enum Req {
    /// A request answered by `ok`/`error`/`puback` with the same id.
    Request {
        id: u64,
        msg: ClientMsg,
        reply: oneshot::Sender<Answer>,
    },
    /// A message with no answer.
    Fire(ClientMsg),
    Sub {
        id: u64,
        filters: Vec<String>,
        tx: mpsc::Sender<SubEvent>,
        reply: oneshot::Sender<Answer>,
    },
    Unsub {
        id: u64,
    },
    Declare {
        id: u64,
        device: DeviceDescriptor,
        online: bool,
        reply: oneshot::Sender<Answer>,
    },
    Status {
        device: String,
        online: bool,
    },
    Join {
        id: u64,
        room: String,
        reply: oneshot::Sender<Answer>,
    },
    Leave {
        id: u64,
        room: String,
        reply: oneshot::Sender<Answer>,
    },
    /// A telemetry subscription (kept and re-made on every connection).
    Tsub {
        id: u64,
        filter: String,
        hz: f64,
        reply: oneshot::Sender<Answer>,
    },
    Tunsub {
        sub: u64,
    },
    Commands(mpsc::Sender<IncomingCommand>),
    Rooms(mpsc::Sender<RoomEvent>),
    Ping(oneshot::Sender<Duration>),
    Close(oneshot::Sender<()>),
}

pub(crate) struct Shared {
    next_id: AtomicU64,
    session: AtomicU64,
    /// Last measured round trip in µs (0: none yet).
    rtt_us: AtomicU64,
    /// The telemetry link (UDP, or the in-process hub).
    link: telemetry::LinkHandle,
    /// Fire-and-forget frames encoded by the handles, for the driver's next write.
    out: outgoing::Outgoing,
}

/// The `streams` list of a `tsub` answer (or of a `streams` message).
pub(crate) fn parse_streams(result: &Value) -> Vec<crate::protocol::StreamDesc> {
    let list = match result {
        Value::Map(_) => crate::value::get(result, "streams").cloned(),
        Value::Array(_) => Some(result.clone()),
        _ => None,
    };
    list.and_then(|l| crate::value::from_value(&l).ok())
        .unwrap_or_default()
}

/// A handle to a connection to the bus. Clone it freely; the connection closes when
/// every handle is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Req>,
    events: broadcast::Sender<ConnectionEvent>,
    shared: Arc<Shared>,
    opts: Arc<ClientOptions>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.opts.name)
    }
}

impl Client {
    /// Connects, waiting for the first handshake to finish.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::ConnectTimeout`] or [`Error::Refused`] when the
    /// first attempt fails (later disconnections are retried if `reconnect` is on).
    pub async fn connect(opts: ClientOptions) -> Result<Client, Error> {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            session: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            link: telemetry::spawn(match &opts.endpoint {
                Endpoint::Local(c) => Some(c.hub()),
                Endpoint::Tcp(_) | Endpoint::Tls(..) => None,
            }),
            out: outgoing::Outgoing::default(),
        });
        let opts = Arc::new(opts);
        let client = Client {
            tx,
            events: events.clone(),
            shared: shared.clone(),
            opts: opts.clone(),
        };
        let (first_tx, first_rx) = oneshot::channel();
        let handle = client.clone_for_driver();
        tokio::spawn(driver::run(opts, rx, events, shared, first_tx, handle));
        match first_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// A handle for the driver to attach to incoming commands. It holds a weak-ish
    /// sender: the driver ends when every user handle is gone, because it checks
    /// the request channel's user count (see `driver::run`).
    fn clone_for_driver(&self) -> driver::DriverHandle {
        driver::DriverHandle {
            tx: self.tx.downgrade(),
            events: self.events.clone(),
            shared: self.shared.clone(),
            opts: self.opts.clone(),
        }
    }

    fn id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The current session id (0 before the first welcome).
    pub fn session(&self) -> SessionId {
        SessionId(self.shared.session.load(Ordering::Relaxed))
    }

    /// The round trip last measured (by a heartbeat or [`Client::ping`]), for a
    /// panel's status line; `None` before the first answer.
    pub fn last_rtt(&self) -> Option<Duration> {
        match self.shared.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Connection events (connected, disconnected, reconnecting, resynced, ...).
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    async fn send(&self, req: Req) -> Result<(), Error> {
        // Counted until the driver has written it, so no publish overtakes it. The
        // slot is reserved first, so a caller that gives up waiting for it (a
        // timeout, a `select!`) leaves nothing counted.
        let permit = self.tx.reserve().await.map_err(|_| Error::Closed)?;
        self.shared.out.queued();
        permit.send(req);
        Ok(())
    }

    /// Hands a request to the driver without waiting (dropped when its queue is
    /// full or it is gone).
    fn try_send(tx: &mpsc::Sender<Req>, shared: &Shared, req: Req) {
        shared.out.queued();
        if tx.try_send(req).is_err() {
            shared.out.taken(1);
        }
    }

    /// A `pub` encoded by this task into the driver's outgoing buffer (see
    /// `outgoing.rs`), else handed to the driver through its queue.
    async fn fire_pub(
        &self,
        topic: &str,
        value: Value,
        retain: bool,
        quality: Option<Quality>,
    ) -> Result<(), Error> {
        let taken = self
            .shared
            .out
            .push(|b| crate::protocol::encode_pub(b, topic, &value, retain, None, quality));
        if taken {
            return Ok(());
        }
        self.send(Req::Fire(ClientMsg::Pub {
            topic: topic.into(),
            value,
            retain,
            id: None,
            quality,
        }))
        .await
    }

    /// Sends a message that has no answer: encoded by the caller into the driver's
    /// outgoing buffer, as publishes are, else through the request queue.
    async fn fire(&self, msg: ClientMsg) -> Result<(), Error> {
        if self
            .shared
            .out
            .push(|b| crate::protocol::encode_client_into(b, &msg))
        {
            return Ok(());
        }
        self.send(Req::Fire(msg)).await
    }

    async fn wait(&self, rx: oneshot::Receiver<Answer>, limit: Duration) -> Result<Answer, Error> {
        match tokio::time::timeout(limit, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(a)) => Ok(a),
        }
    }

    async fn request(&self, id: u64, msg: ClientMsg) -> Result<Answer, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Req::Request { id, msg, reply }).await?;
        self.wait(rx, self.opts.request_timeout).await
    }

    /// Subscribes to `filters`: the stream yields the current value of every matching
    /// retained topic, then [`SubEvent::Synced`], then live updates, with no gap and
    /// no duplicate between them. Returns as soon as the snapshot starts arriving, so
    /// a snapshot larger than the subscription's queue is read while it streams.
    ///
    /// # Errors
    /// [`Error::Bus`] with `invalid_filter` or `limit`; [`Error::Timeout`],
    /// [`Error::Closed`].
    pub async fn subscribe(&self, filters: &[&str]) -> Result<Subscription, Error> {
        let id = self.id();
        let (tx, rx) = mpsc::channel(self.opts.sub_queue.max(1));
        let (reply, answer) = oneshot::channel();
        let filters = filters.iter().map(|f| f.to_string()).collect();
        self.send(Req::Sub {
            id,
            filters,
            tx,
            reply,
        })
        .await?;
        let sub = Subscription {
            id,
            rx,
            client: self.clone(),
        };
        match self.wait(answer, self.opts.request_timeout).await? {
            Answer::Err(code, message) => Err(Error::Bus { code, message }),
            _ => Ok(sub),
        }
    }

    /// Reads one topic's retained record (`None` if the bus holds none).
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`], [`Error::Bus`].
    pub async fn get(&self, topic: &str) -> Result<Option<Update>, Error> {
        let id = self.id();
        match self
            .request(
                id,
                ClientMsg::Get {
                    id,
                    topic: topic.into(),
                },
            )
            .await?
        {
            Answer::Ok(v) => crate::value::from_value::<Update>(&v)
                .map(Some)
                .map_err(|e| Error::Bus {
                    code: ErrorCode::BadMessage,
                    message: e,
                }),
            Answer::Err(ErrorCode::UnknownTopic, _) => Ok(None),
            Answer::Err(code, message) => Err(Error::Bus { code, message }),
            Answer::Puback(_) => Ok(None),
        }
    }

    /// Publishes and waits for the bus to accept it; returns its sequence number.
    ///
    /// # Errors
    /// [`Error::Bus`] (`invalid_topic`, `forbidden`, `limit`, ...), [`Error::Timeout`].
    pub async fn publish(&self, topic: &str, value: Value, retain: bool) -> Result<Seq, Error> {
        let id = self.id();
        let msg = ClientMsg::Pub {
            topic: topic.into(),
            value,
            retain,
            id: Some(id),
            quality: None,
        };
        match self.request(id, msg).await? {
            Answer::Puback(seq) => Ok(seq),
            Answer::Err(code, message) => Err(Error::Bus { code, message }),
            Answer::Ok(_) => Ok(Seq(0)),
        }
    }

    /// Publishes without waiting for the bus (fire and forget; errors are logged by
    /// the bus and sent back without an id).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn publish_nowait(
        &self,
        topic: &str,
        value: Value,
        retain: bool,
    ) -> Result<(), Error> {
        self.fire_pub(topic, value, retain, None).await
    }

    /// Adapter: publishes a control's value with a quality (e.g. `stale`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn publish_state(
        &self,
        topic: &str,
        value: Value,
        quality: Quality,
    ) -> Result<(), Error> {
        self.fire_pub(topic, value, true, Some(quality)).await
    }

    /// Writes a control's value. Exactly one answer: the adapter's result, or a typed
    /// error (`device_offline`, `invalid_value`, `unknown_topic`, `not_writable`,
    /// `timeout`, `busy`, `forbidden`). Resent with the same id after a reconnect; the
    /// bus never runs it twice.
    ///
    /// # Errors
    /// [`CommandError`] with the code.
    pub async fn set(&self, topic: &str, value: Value) -> Result<Reply, CommandError> {
        let id = self.id();
        let timeout_ms = Some(self.opts.command_timeout.as_millis() as u64);
        self.command(
            id,
            ClientMsg::Set {
                id,
                topic: topic.into(),
                value,
                timeout_ms,
            },
        )
        .await
    }

    /// Fires a trigger with arguments. Answered like [`Client::set`].
    ///
    /// # Errors
    /// [`CommandError`] with the code.
    pub async fn call(&self, topic: &str, args: Value) -> Result<Reply, CommandError> {
        let id = self.id();
        let timeout_ms = Some(self.opts.command_timeout.as_millis() as u64);
        self.command(
            id,
            ClientMsg::Call {
                id,
                topic: topic.into(),
                args,
                timeout_ms,
            },
        )
        .await
    }

    async fn command(&self, id: u64, msg: ClientMsg) -> Result<Reply, CommandError> {
        let (reply, rx) = oneshot::channel();
        let closed = || CommandError {
            code: ErrorCode::Closed,
            message: "the client is closed".into(),
        };
        self.send(Req::Request { id, msg, reply })
            .await
            .map_err(|_| closed())?;
        // The bus answers `timeout` at the deadline; wait a little longer for it.
        let limit = self.opts.command_timeout + self.opts.request_timeout;
        match self.wait(rx, limit).await {
            Ok(Answer::Ok(result)) => Ok(Reply { result }),
            Ok(Answer::Puback(_)) => Ok(Reply { result: Value::Nil }),
            Ok(Answer::Err(code, message)) => Err(CommandError { code, message }),
            Err(Error::Timeout) => Err(CommandError {
                code: ErrorCode::Timeout,
                message: "no answer from the bus in time".into(),
            }),
            Err(_) => Err(closed()),
        }
    }

    /// Adapter: declares a device (re-declared automatically after a new session).
    ///
    /// # Errors
    /// [`Error::Bus`] with `invalid_descriptor` or `conflict`.
    pub async fn declare(&self, device: DeviceDescriptor, online: bool) -> Result<(), Error> {
        let id = self.id();
        let (reply, rx) = oneshot::channel();
        self.send(Req::Declare {
            id,
            device,
            online,
            reply,
        })
        .await?;
        match self.wait(rx, self.opts.request_timeout).await? {
            Answer::Err(code, message) => Err(Error::Bus { code, message }),
            _ => Ok(()),
        }
    }

    /// Subscribes to the telemetry streams (meter controls) matching `filter`: the
    /// bus sends the newest value of each at most `hz` times a second over UDP,
    /// never a backlog. Re-made automatically after a reconnect.
    ///
    /// # Errors
    /// [`Error::Bus`] with `invalid_filter` or `limit`; [`Error::Timeout`],
    /// [`Error::Closed`].
    pub async fn telemetry(&self, filter: &str, hz: f64) -> Result<TelemetrySubscription, Error> {
        let id = self.id();
        let (tx, rx) = mpsc::channel(telemetry::TELEMETRY_QUEUE);
        let stats = Arc::new(std::sync::Mutex::new(TelemetryStats::default()));
        self.shared.link.send(telemetry::LinkMsg::Sub {
            id,
            tx,
            stats: stats.clone(),
        });
        let (reply, answer) = oneshot::channel();
        self.send(Req::Tsub {
            id,
            filter: filter.into(),
            hz,
            reply,
        })
        .await?;
        let streams = match self.wait(answer, self.opts.request_timeout).await? {
            Answer::Ok(result) => parse_streams(&result),
            Answer::Err(code, message) => {
                self.shared.link.send(telemetry::LinkMsg::Unsub { id });
                return Err(Error::Bus { code, message });
            }
            Answer::Puback(_) => Vec::new(),
        };
        let (tx, shared) = (self.tx.clone(), self.shared.clone());
        Ok(TelemetrySubscription {
            id,
            rx,
            stats,
            streams,
            unsub: Some(Box::new(move || {
                Client::try_send(&tx, &shared, Req::Tunsub { sub: id });
            })),
        })
    }

    /// Adapter: publishes new values of its devices' meter controls as telemetry
    /// (`(topic, value)`; numbers and arrays of numbers travel as f32). Never waits:
    /// values are dropped when the link is behind, and newer ones follow.
    pub fn publish_telemetry(&self, values: Vec<(String, Value)>) {
        self.shared.link.send(telemetry::LinkMsg::Publish(values));
    }

    /// Adapter: reports a declared device (`room/name`) reachable or not.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn set_online(&self, device: &str, online: bool) -> Result<(), Error> {
        self.send(Req::Status {
            device: device.into(),
            online,
        })
        .await
    }

    /// Adapter: the commands for this client's devices. Call once; a second call
    /// replaces the first receiver.
    pub async fn commands(&self) -> mpsc::Receiver<IncomingCommand> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let _ = self.send(Req::Commands(tx)).await;
        rx
    }

    /// Events of the rooms this client joined. Call once.
    pub async fn room_events(&self) -> mpsc::Receiver<RoomEvent> {
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let _ = self.send(Req::Rooms(tx)).await;
        rx
    }

    /// Joins a room; returns its members (this client included).
    ///
    /// # Errors
    /// [`Error::Bus`] with `invalid_topic`.
    pub async fn join(&self, room: &str) -> Result<Vec<Member>, Error> {
        let id = self.id();
        let (reply, rx) = oneshot::channel();
        self.send(Req::Join {
            id,
            room: room.into(),
            reply,
        })
        .await?;
        match self.wait(rx, self.opts.request_timeout).await? {
            Answer::Ok(v) => crate::value::from_value(&v).map_err(|e| Error::Bus {
                code: ErrorCode::BadMessage,
                message: e,
            }),
            Answer::Err(code, message) => Err(Error::Bus { code, message }),
            Answer::Puback(_) => Ok(Vec::new()),
        }
    }

    /// Leaves a room.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`].
    pub async fn leave(&self, room: &str) -> Result<(), Error> {
        let id = self.id();
        let (reply, rx) = oneshot::channel();
        self.send(Req::Leave {
            id,
            room: room.into(),
            reply,
        })
        .await?;
        self.wait(rx, self.opts.request_timeout).await.map(|_| ())
    }

    /// Broadcasts a value to the other members of a joined room.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn say(&self, room: &str, value: Value) -> Result<(), Error> {
        self.fire(ClientMsg::Say {
            room: room.into(),
            value,
        })
        .await
    }

    /// Measures the round trip to the bus.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`].
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Req::Ping(tx)).await?;
        match tokio::time::timeout(self.opts.request_timeout, rx).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Says goodbye (the session ends at once, no resume) and stops the driver.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Req::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
