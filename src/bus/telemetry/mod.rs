//! The telemetry hub: one task that owns the UDP socket, every telemetry stream's
//! newest value and every telemetry subscription.
//!
//! ```text
//!  UDP socket ──(bind, publish)──> hub ──(data, at each subscriber's rate)──> UDP
//!  in-process adapters ─(INGEST_QUEUE, try_send)─┘  │
//!  connection readers ─(tsub/tunsub, HUB_QUEUE)─────┤  answers → the connection's Outbox
//!  router ─(streams, get, TCP meter pub; try_send)──┘
//! ```
//!
//! Telemetry never shares a queue with control: the router never waits on the hub
//! (it uses `try_send`), the hub never waits on anything (datagrams go out in
//! non-blocking `sendmmsg` batches: a full socket buffer drops them and counts
//! them), and a subscriber gets the newest value of each dirty stream when its
//! [`RateGate`] opens — never a backlog.
//!
//! `ingest.rs` takes datagrams and values in, `fanout.rs` sends the batches, `io.rs`
//! does the batched socket calls.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;
use super::router::{map, ConnId};
use crate::auth::Grant;
use crate::config::Config;
use crate::model::Quality;
use crate::protocol::{frame, BusMsg, ErrorCode, SessionId, StreamDesc};
use crate::telemetry::{decode_value, records, RateGate, Record, MAX_DATAGRAM};
use crate::topic::Filter;
use crate::value::Value;

mod fanout;
mod ingest;
mod io;
mod slot;
mod stats;
mod thread;

pub use slot::{TelemetrySlot, SLOT_DATAGRAMS};
pub use stats::Stats;

/// Control messages waiting for the hub (connection readers wait when it is full;
/// the router uses `try_send` and counts a full queue).
pub const HUB_QUEUE: usize = 4096;
/// In-process telemetry batches waiting for the hub; when full, batches are dropped
/// and counted (newer values follow).
pub const INGEST_QUEUE: usize = 1024;
/// Telemetry subscriptions one connection may hold.
pub const MAX_TSUBS: usize = 256;
/// Datagrams read per wake-up before other work gets a turn (in `recvmmsg` calls
/// of [`io::RECV_BATCH`]).
const RECV_BURST: usize = 256;

/// One telemetry stream (a `meter` control), as the router registers it.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub alias: u32,
    pub topic: Arc<str>,
    pub channels: u32,
}

/// Messages to the hub.
pub enum HubMsg {
    /// A connection's telemetry identity (sent once its session is known).
    Attach {
        conn: ConnId,
        session: SessionId,
        token: u64,
        outbox: Arc<Outbox>,
        /// The TCP peer's address: UDP datagrams for this token must come from it.
        /// `None` for in-process connections.
        peer: Option<IpAddr>,
        /// A WebSocket client's telemetry goes here instead of UDP.
        slot: Option<Arc<TelemetrySlot>>,
        /// What the session may read: telemetry subscriptions see only streams its
        /// `telemetry` rules allow.
        grant: Arc<Grant>,
    },
    Detach {
        conn: ConnId,
    },
    /// Streams declared (or re-declared) by an adapter's session.
    Streams {
        owner: SessionId,
        streams: Vec<StreamInfo>,
    },
    Subscribe {
        conn: ConnId,
        id: u64,
        filter: String,
        hz: f64,
    },
    Unsubscribe {
        conn: ConnId,
        id: u64,
        sub: u64,
    },
    /// `get` of a meter topic, answered into `outbox`.
    Get {
        outbox: Arc<Outbox>,
        id: u64,
        topic: String,
        seq: u64,
        online: bool,
    },
}

/// New values from an in-process adapter or a TCP `pub` of a meter control.
pub struct Ingest {
    pub session: SessionId,
    pub values: Vec<(u32, Value)>,
}

/// The senders other tasks use to reach the hub.
#[derive(Clone)]
pub struct HubHandle {
    pub ctl: mpsc::Sender<HubMsg>,
    pub ingest: mpsc::Sender<Ingest>,
    pub stats: Arc<Stats>,
    /// The bound UDP address.
    pub udp: SocketAddr,
}

impl HubHandle {
    /// Queues in-process values; drops (and counts) them when the hub is behind.
    pub fn ingest(&self, batch: Ingest) {
        if self.ingest.try_send(batch).is_err() {
            self.stats.ingest_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A control message from the router, which never waits on the hub.
    pub fn try_ctl(&self, msg: HubMsg) -> bool {
        let ok = self.ctl.try_send(msg).is_ok();
        if !ok {
            self.stats.ingest_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("telemetry hub queue full; a control message was dropped");
        }
        ok
    }
}

struct Stream {
    topic: Arc<str>,
    owner: SessionId,
    channels: u32,
    /// Sequence of values encoded by the hub itself (in-process and TCP sources).
    seq: u32,
    time_us: u64,
    /// The newest value: one record per chunk (empty: no value), encoded once and
    /// copied into every subscriber's datagram; each buffer is overwritten in place
    /// by the next value.
    records: Vec<BytesMut>,
    last_in: Option<Instant>,
    stale: bool,
    subs: Vec<StreamSub>,
}

impl Stream {
    fn has_value(&self) -> bool {
        self.records.iter().any(|r| !r.is_empty())
    }
}

/// A subscription to a stream, with the batch of that subscription the stream was
/// last marked dirty for (so it is listed once per batch without a search).
struct StreamSub {
    key: u64,
    marked: u64,
}

struct Sink {
    session: SessionId,
    grant: Arc<Grant>,
    outbox: Arc<Outbox>,
    peer: Option<IpAddr>,
    udp: Option<SocketAddr>,
    slot: Option<Arc<TelemetrySlot>>,
    dseq: u32,
    subs: Vec<u64>,
}

struct TSub {
    conn: ConnId,
    id: u64,
    filter: Filter,
    gate: RateGate,
    /// Streams changed since the last batch (each once: see [`StreamSub`]).
    dirty: Vec<u32>,
    /// The batch being gathered; a stream marked with an older one is not listed.
    batch: u64,
    queued: bool,
}

/// Binds the UDP socket (buffer sizes from the config) and starts the hub on a
/// thread of its own (`thread.rs`).
///
/// # Errors
/// The bind error, naming the address.
pub fn start(
    cfg: &Arc<Config>,
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
    guard: Arc<super::guard::GuardStats>,
) -> std::io::Result<HubHandle> {
    let named = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot listen on udp {addr}: {e}"))
    };
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(named)?;
    // Ask for large buffers; the kernel may cap them (net.core.rmem_max), so the
    // sizes granted are read back and reported in `$sys/telemetry/`.
    let _ = sock.set_recv_buffer_size(cfg.telemetry.udp_recv_buffer);
    let _ = sock.set_send_buffer_size(cfg.telemetry.udp_send_buffer);
    sock.set_nonblocking(true).map_err(named)?;
    sock.bind(&addr.into()).map_err(named)?;
    let stats = Arc::new(Stats::default());
    stats.recv_buffer.store(
        sock.recv_buffer_size().unwrap_or(0) as u64,
        Ordering::Relaxed,
    );
    stats.send_buffer.store(
        sock.send_buffer_size().unwrap_or(0) as u64,
        Ordering::Relaxed,
    );
    // The socket belongs to the hub's own runtime (`thread.rs`).
    let rt = thread::runtime()?;
    let socket = {
        let _in_rt = rt.enter();
        UdpSocket::from_std(sock.into())?
    };
    let udp = socket.local_addr()?;
    let (ctl_tx, ctl_rx) = mpsc::channel(HUB_QUEUE);
    let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_QUEUE);
    let hub = Hub {
        socket,
        guard,
        stats: stats.clone(),
        stale_after: Duration::from_millis(cfg.telemetry.stale_ms),
        max_hz: cfg.telemetry.max_hz,
        streams: HashMap::new(),
        by_topic: HashMap::new(),
        sinks: HashMap::new(),
        by_token: HashMap::new(),
        subs: HashMap::new(),
        next_sub: 1,
        dirty_subs: Vec::new(),
        out: BytesMut::with_capacity(MAX_DATAGRAM),
        scratch: BytesMut::with_capacity(MAX_DATAGRAM),
        tx: io::SendBatch::new(),
    };
    thread::spawn(rt, hub, ctl_rx, ingest_rx, cancel, tracker)?;
    Ok(HubHandle {
        ctl: ctl_tx,
        ingest: ingest_tx,
        stats,
        udp,
    })
}

struct Hub {
    socket: UdpSocket,
    /// Refusal counters (`$sys/auth/forbidden` counts refused telemetry too).
    guard: Arc<super::guard::GuardStats>,
    stats: Arc<Stats>,
    stale_after: Duration,
    max_hz: f64,
    streams: HashMap<u32, Stream>,
    by_topic: HashMap<Arc<str>, u32>,
    sinks: HashMap<ConnId, Sink>,
    by_token: HashMap<u64, ConnId>,
    subs: HashMap<u64, TSub>,
    next_sub: u64,
    /// Subscriptions with values waiting for their gate.
    dirty_subs: Vec<u64>,
    /// The datagram being assembled (reused).
    out: BytesMut,
    scratch: BytesMut,
    /// UDP datagrams of a flush, waiting for `sendmmsg` (reused).
    tx: io::SendBatch,
}

impl Hub {
    async fn run(
        mut self,
        mut ctl: mpsc::Receiver<HubMsg>,
        mut ingest: mpsc::Receiver<Ingest>,
        cancel: CancellationToken,
    ) {
        let mut rx = io::RecvBatch::new();
        let check = (self.stale_after / 4).max(Duration::from_millis(20));
        let mut stale_tick = tokio::time::interval(check);
        stale_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wake: Option<Instant> = None;
        loop {
            let sleep = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                m = ctl.recv() => match m {
                    Some(m) => self.control(m),
                    None => return,
                },
                r = self.socket.readable() => {
                    if r.is_ok() {
                        self.read_burst(&mut rx);
                    }
                }
                Some(batch) = ingest.recv() => self.ingest_local(batch),
                _ = sleep, if wake.is_some() => {}
                _ = stale_tick.tick(), if !self.streams.is_empty() => self.check_stale(),
            }
            wake = self.flush(Instant::now());
        }
    }

    fn control(&mut self, m: HubMsg) {
        match m {
            HubMsg::Attach {
                conn,
                session,
                token,
                outbox,
                peer,
                slot,
                grant,
            } => {
                self.by_token.insert(token, conn);
                self.sinks.insert(
                    conn,
                    Sink {
                        session,
                        grant,
                        outbox,
                        peer,
                        udp: None,
                        slot,
                        dseq: 0,
                        subs: Vec::new(),
                    },
                );
            }
            HubMsg::Detach { conn } => {
                self.by_token.retain(|_, c| *c != conn);
                if let Some(sink) = self.sinks.remove(&conn) {
                    for key in sink.subs {
                        self.remove_sub(key);
                    }
                }
            }
            HubMsg::Streams { owner, streams } => self.add_streams(owner, streams),
            HubMsg::Subscribe {
                conn,
                id,
                filter,
                hz,
            } => self.subscribe(conn, id, &filter, hz),
            HubMsg::Unsubscribe { conn, id, sub } => {
                let Some(sink) = self.sinks.get_mut(&conn) else {
                    return;
                };
                let key = sink
                    .subs
                    .iter()
                    .copied()
                    .find(|k| self.subs.get(k).is_some_and(|s| s.id == sub));
                let outbox = sink.outbox.clone();
                match key {
                    Some(k) => {
                        sink.subs.retain(|x| *x != k);
                        self.remove_sub(k);
                        let _ = outbox.push(frame(&BusMsg::Ok {
                            id,
                            result: Value::Nil,
                        }));
                    }
                    None => {
                        let _ = outbox.push(frame(&BusMsg::Error {
                            id: Some(id),
                            code: ErrorCode::UnknownTopic,
                            message: format!("no telemetry subscription {sub}"),
                        }));
                    }
                }
            }
            HubMsg::Get {
                outbox,
                id,
                topic,
                seq,
                online,
            } => {
                let record = self.by_topic.get(topic.as_str()).and_then(|a| {
                    let s = self.streams.get(a)?;
                    let recs: Vec<Record> =
                        s.records.iter().filter_map(|b| parse_record(b)).collect();
                    let value = decode_value(&recs).unwrap_or(Value::Nil);
                    let quality = if !online {
                        Quality::Offline
                    } else if s.stale || !s.has_value() {
                        Quality::Stale
                    } else {
                        Quality::Ok
                    };
                    Some(map(vec![
                        ("seq", Value::from(seq)),
                        ("topic", Value::from(topic.as_str())),
                        ("value", value),
                        ("time", Value::from(s.time_us / 1000)),
                        ("retain", Value::Boolean(true)),
                        ("quality", crate::value::to_value(&quality)),
                    ]))
                });
                let f = match record {
                    Some(result) => frame(&BusMsg::Ok { id, result }),
                    None => frame(&BusMsg::Error {
                        id: Some(id),
                        code: ErrorCode::UnknownTopic,
                        message: format!("{topic} is not a telemetry stream"),
                    }),
                };
                let _ = outbox.push(f);
            }
        }
    }

    fn add_streams(&mut self, owner: SessionId, streams: Vec<StreamInfo>) {
        for info in streams {
            let alias = info.alias;
            let known = match self.streams.get_mut(&alias) {
                Some(s) => {
                    s.owner = owner;
                    if s.channels != info.channels {
                        s.channels = info.channels;
                        s.records.iter_mut().for_each(|r| r.clear());
                    }
                    true
                }
                None => {
                    self.streams.insert(
                        alias,
                        Stream {
                            topic: info.topic.clone(),
                            owner,
                            channels: info.channels,
                            seq: 0,
                            time_us: 0,
                            records: Vec::new(),
                            last_in: None,
                            stale: true,
                            subs: Vec::new(),
                        },
                    );
                    self.by_topic.insert(info.topic.clone(), alias);
                    false
                }
            };
            if known {
                continue;
            }
            // Tell the subscriptions this new stream matches.
            let sinks = &self.sinks;
            let matching: Vec<u64> = self
                .subs
                .iter()
                .filter(|(_, s)| {
                    s.filter.matches(&info.topic)
                        && sinks
                            .get(&s.conn)
                            .is_some_and(|k| k.grant.telemetry.allows(&info.topic))
                })
                .map(|(k, _)| *k)
                .collect();
            let desc = StreamDesc {
                alias,
                topic: info.topic.to_string(),
                channels: info.channels,
            };
            for key in matching {
                let sub = &self.subs[&key];
                if let Some(sink) = self.sinks.get(&sub.conn) {
                    let _ = sink.outbox.push(frame(&BusMsg::Streams {
                        sub: sub.id,
                        streams: vec![desc.clone()],
                    }));
                }
                if let Some(s) = self.streams.get_mut(&alias) {
                    s.subs.push(StreamSub { key, marked: 0 });
                }
            }
        }
        self.stats
            .streams
            .store(self.streams.len() as u64, Ordering::Relaxed);
    }

    fn subscribe(&mut self, conn: ConnId, id: u64, raw: &str, hz: f64) {
        let Some(sink) = self.sinks.get(&conn) else {
            return;
        };
        let outbox = sink.outbox.clone();
        let refuse = |code: ErrorCode, message: String| {
            let _ = outbox.push(frame(&BusMsg::Error {
                id: Some(id),
                code,
                message,
            }));
        };
        let filter = match Filter::new(raw) {
            Ok(f) => f,
            Err(e) => return refuse(ErrorCode::InvalidFilter, format!("{raw:?}: {e}")),
        };
        let grant = sink.grant.clone();
        if !grant.telemetry.reaches(&filter) {
            self.guard
                .forbidden
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "telemetry {filter}: not allowed for credential {:?}",
                    grant.name
                ),
            );
        }
        if sink.subs.len() >= MAX_TSUBS {
            return refuse(
                ErrorCode::Limit,
                format!("at most {MAX_TSUBS} telemetry subscriptions per connection"),
            );
        }
        if !(hz.is_finite() && hz > 0.0) {
            return refuse(
                ErrorCode::BadMessage,
                format!("hz must be above 0, not {hz}"),
            );
        }
        let key = self.next_sub;
        self.next_sub += 1;
        let mut matched = Vec::new();
        let mut dirty = Vec::new();
        // The subscription's first batch is 1; a stream with a value is in it.
        for (alias, s) in &mut self.streams {
            if filter.matches(&s.topic) && grant.telemetry.allows(&s.topic) {
                let has_value = s.has_value();
                s.subs.push(StreamSub {
                    key,
                    marked: u64::from(has_value),
                });
                matched.push(StreamDesc {
                    alias: *alias,
                    topic: s.topic.to_string(),
                    channels: s.channels,
                });
                if has_value {
                    dirty.push(*alias);
                }
            }
        }
        matched.sort_by_key(|d| d.alias);
        let queued = !dirty.is_empty();
        self.subs.insert(
            key,
            TSub {
                conn,
                id,
                filter,
                gate: RateGate::new(hz.min(self.max_hz)),
                dirty,
                batch: 1,
                queued,
            },
        );
        if queued {
            self.dirty_subs.push(key);
        }
        if let Some(sink) = self.sinks.get_mut(&conn) {
            sink.subs.push(key);
        }
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, Ordering::Relaxed);
        let streams: Vec<Value> = matched.iter().map(crate::value::to_value).collect();
        let _ = outbox.push(frame(&BusMsg::Ok {
            id,
            result: map(vec![
                ("sub", Value::from(id)),
                ("streams", Value::Array(streams)),
            ]),
        }));
    }

    fn remove_sub(&mut self, key: u64) {
        if self.subs.remove(&key).is_some() {
            for s in self.streams.values_mut() {
                s.subs.retain(|e| e.key != key);
            }
        }
        self.stats
            .subscriptions
            .store(self.subs.len() as u64, Ordering::Relaxed);
    }
}

fn parse_record(b: &[u8]) -> Option<Record<'_>> {
    records(b).next()?.ok()
}

/// IPv4 and IPv4-mapped IPv6 addresses of the same host compare equal.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}
