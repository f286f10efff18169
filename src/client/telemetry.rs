//! The client's telemetry link: one task per client that owns its UDP socket, binds
//! it to the connection's token, turns the bus's datagrams into
//! [`TelemetryValue`]s for each telemetry subscription, counts loss, and sends the
//! values an adapter publishes for its meter controls.
//!
//! It is separate from the control connection on purpose: a telemetry flood never
//! queues behind (or in front of) commands, and a panel that stops reading its
//! telemetry loses telemetry only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::Stream;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bus::telemetry::{HubHandle, Ingest};
use crate::protocol::{SessionId, StreamDesc};
use crate::telemetry::{
    decode_header, decode_value, encode_value, put_header, records, Kind, FLAG_STALE, MAX_DATAGRAM,
};
use crate::value::Value;

/// Messages from the driver and handles to the link.
const LINK_QUEUE: usize = 1024;
/// Values buffered per telemetry subscription; beyond it new values are dropped and
/// counted (`TelemetryStats::dropped_local`) — the application is not reading.
pub const TELEMETRY_QUEUE: usize = 1024;
/// How often a bind is resent until the bus confirms it, and how many times.
const BIND_RETRY: Duration = Duration::from_millis(200);
const BIND_TRIES: u32 = 50;

/// One value of one telemetry stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryValue {
    /// The meter control's topic.
    pub topic: Arc<str>,
    pub alias: u32,
    /// A float for one channel, an array for several. A stream larger than one
    /// datagram arrives in parts: this part's values start at channel `offset`.
    pub value: Value,
    pub offset: u16,
    /// The stream's sequence: a jump means values were skipped (conflated by the
    /// rate limit, or lost).
    pub seq: u32,
    /// When the source produced it, µs since the Unix epoch.
    pub time_us: u64,
    /// The source has gone silent: this is its last known value.
    pub stale: bool,
}

/// Per-stream figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Values received.
    pub received: u64,
    /// Values the stream's sequence says were not received: conflated by the
    /// bus's rate limit (by design) or lost on the way.
    pub skipped: u64,
    /// Values received during the last full second.
    pub rate_hz: f64,
    last_seq: Option<u32>,
    window_start: Option<Instant>,
    window_count: u64,
}

/// Loss and rate, for a panel's diagnostics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetryStats {
    /// Data datagrams received on this client's link.
    pub datagrams: u64,
    /// Datagrams the bus sent that never arrived (gaps in its datagram sequence):
    /// exact network loss.
    pub datagrams_lost: u64,
    /// Values dropped because the application did not read this subscription.
    pub dropped_local: u64,
    pub streams: HashMap<Arc<str>, StreamStats>,
}

#[derive(Default)]
struct LinkCounters {
    datagrams: AtomicU64,
    lost: AtomicU64,
}

pub(crate) enum LinkMsg {
    /// A new connection's telemetry endpoint (`udp: None`: the bus has none).
    Endpoint {
        udp: Option<SocketAddr>,
        token: u64,
        session: SessionId,
    },
    Sub {
        id: u64,
        tx: mpsc::Sender<TelemetryValue>,
        stats: Arc<Mutex<TelemetryStats>>,
    },
    Streams {
        sub: u64,
        streams: Vec<StreamDesc>,
    },
    Unsub {
        id: u64,
    },
    /// Aliases of a declared device's meter controls: `(topic, alias)`.
    Owned(Vec<(String, u32)>),
    /// Values to publish: `(topic, value)`.
    Publish(Vec<(String, Value)>),
}

/// Sends to the link without ever waiting (telemetry is lossy by design).
#[derive(Clone)]
pub(crate) struct LinkHandle {
    tx: mpsc::Sender<LinkMsg>,
    pub dropped: Arc<AtomicU64>,
}

impl LinkHandle {
    pub fn send(&self, m: LinkMsg) {
        if self.tx.try_send(m).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts a client's link. `hub`: the in-process bus's hub, to publish without UDP.
pub(crate) fn spawn(hub: Option<HubHandle>) -> LinkHandle {
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let link = Link {
        hub,
        socket: None,
        target: None,
        token: 0,
        session: SessionId(0),
        bound: false,
        bind_tries: 0,
        dseq_out: 0,
        next_dseq: None,
        subs: HashMap::new(),
        aliases: HashMap::new(),
        owned: HashMap::new(),
        unsent: HashMap::new(),
        counters: Arc::new(LinkCounters::default()),
        values: Vec::new(),
        buf: BytesMut::with_capacity(MAX_DATAGRAM),
        scratch: BytesMut::with_capacity(MAX_DATAGRAM),
    };
    tokio::spawn(link.run(rx));
    LinkHandle {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    }
}

struct SubState {
    tx: mpsc::Sender<TelemetryValue>,
    stats: Arc<Mutex<TelemetryStats>>,
}

struct Link {
    hub: Option<HubHandle>,
    socket: Option<UdpSocket>,
    target: Option<SocketAddr>,
    token: u64,
    session: SessionId,
    bound: bool,
    bind_tries: u32,
    dseq_out: u32,
    next_dseq: Option<u32>,
    subs: HashMap<u64, SubState>,
    /// alias → (topic, subscriptions receiving it).
    aliases: HashMap<u32, (Arc<str>, Vec<u64>)>,
    /// Streams this client publishes: topic → (alias, sequence).
    owned: HashMap<String, (u32, u32)>,
    /// The newest value of each owned stream published before the bus confirmed
    /// the bind (at most one per stream), sent once it does.
    unsent: HashMap<String, Value>,
    counters: Arc<LinkCounters>,
    /// Values of the datagram being read (reused).
    values: Vec<TelemetryValue>,
    buf: BytesMut,
    scratch: BytesMut,
}

impl Link {
    async fn run(mut self, mut rx: mpsc::Receiver<LinkMsg>) {
        let mut datagram = vec![0u8; MAX_DATAGRAM + 1];
        let mut retry = tokio::time::interval(BIND_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let binding = self.socket.is_some() && !self.bound && self.bind_tries < BIND_TRIES;
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.message(m).await,
                    None => return,
                },
                // An error is an ICMP "port unreachable" from an earlier send (the
                // bus went away): harmless, the next endpoint rebinds.
                r = recv(self.socket.as_ref(), &mut datagram) => {
                    if let Ok(n) = r {
                        self.datagram(&datagram[..n]);
                    }
                }
                _ = retry.tick(), if binding => self.send_bind(),
            }
        }
    }

    fn needs_socket(&self) -> bool {
        !self.subs.is_empty() || (self.hub.is_none() && !self.owned.is_empty())
    }

    async fn ensure_socket(&mut self) {
        let Some(target) = self.target else { return };
        if self.socket.is_some() || !self.needs_socket() {
            return;
        }
        let local: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        match UdpSocket::bind(local).await {
            Ok(s) => {
                if s.connect(target).await.is_ok() {
                    self.socket = Some(s);
                    self.bound = false;
                    self.bind_tries = 0;
                    self.send_bind();
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open a UDP socket for telemetry"),
        }
    }

    fn send_bind(&mut self) {
        let Some(s) = &self.socket else { return };
        self.bind_tries += 1;
        self.buf.clear();
        put_header(&mut self.buf, Kind::Bind, 0, Some(self.token));
        let _ = s.try_send(&self.buf);
    }

    async fn message(&mut self, m: LinkMsg) {
        match m {
            LinkMsg::Endpoint {
                udp,
                token,
                session,
            } => {
                // A new connection: new token, new datagram sequence; the old socket
                // is bound to the old token, so start afresh.
                self.socket = None;
                self.bound = false;
                self.next_dseq = None;
                self.token = token;
                self.session = session;
                self.target = udp.map(|a| {
                    let ip = match a.ip() {
                        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
                        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
                        ip => ip,
                    };
                    SocketAddr::new(ip, a.port())
                });
                self.ensure_socket().await;
            }
            LinkMsg::Sub { id, tx, stats } => {
                self.subs.insert(id, SubState { tx, stats });
                self.ensure_socket().await;
            }
            LinkMsg::Streams { sub, streams } => {
                for d in streams {
                    let entry = self
                        .aliases
                        .entry(d.alias)
                        .or_insert_with(|| (Arc::from(d.topic.as_str()), Vec::new()));
                    if *entry.0 != *d.topic {
                        // Aliases are per bus run: after a restart one may name
                        // another topic.
                        *entry = (Arc::from(d.topic.as_str()), Vec::new());
                    }
                    if !entry.1.contains(&sub) {
                        entry.1.push(sub);
                    }
                }
            }
            LinkMsg::Unsub { id } => {
                self.subs.remove(&id);
                for (_, subs) in self.aliases.values_mut() {
                    subs.retain(|s| *s != id);
                }
            }
            LinkMsg::Owned(list) => {
                for (topic, alias) in list {
                    let seq = self.owned.get(&topic).map_or(0, |(_, s)| *s);
                    self.owned.insert(topic, (alias, seq));
                }
                self.ensure_socket().await;
            }
            LinkMsg::Publish(values) => self.publish(values),
        }
    }

    fn publish(&mut self, values: Vec<(String, Value)>) {
        if let Some(hub) = &self.hub {
            let values: Vec<(u32, Value)> = values
                .into_iter()
                .filter_map(|(t, v)| Some((self.owned.get(&t)?.0, v)))
                .collect();
            if !values.is_empty() {
                hub.ingest(Ingest {
                    session: self.session,
                    values,
                });
            }
            return;
        }
        let (Some(socket), true) = (&self.socket, self.bound) else {
            for (topic, value) in values {
                if self.owned.contains_key(&topic) {
                    self.unsent.insert(topic, value);
                }
            }
            return;
        };
        let time_us = crate::telemetry::now_us();
        self.buf.clear();
        put_header(
            &mut self.buf,
            Kind::Publish,
            self.dseq_out,
            Some(self.token),
        );
        let header = self.buf.len();
        for (topic, value) in values {
            let Some((alias, seq)) = self.owned.get_mut(&topic) else {
                continue;
            };
            *seq = seq.wrapping_add(1);
            let Ok(recs) = encode_value(&mut self.scratch, *alias, *seq, time_us, 0, &value) else {
                continue;
            };
            for rec in recs {
                if self.buf.len() + rec.len() > MAX_DATAGRAM {
                    let _ = socket.try_send(&self.buf);
                    self.dseq_out = self.dseq_out.wrapping_add(1);
                    self.buf.clear();
                    put_header(
                        &mut self.buf,
                        Kind::Publish,
                        self.dseq_out,
                        Some(self.token),
                    );
                }
                self.buf.extend_from_slice(&rec);
            }
        }
        if self.buf.len() > header {
            let _ = socket.try_send(&self.buf);
            self.dseq_out = self.dseq_out.wrapping_add(1);
        }
    }

    fn datagram(&mut self, d: &[u8]) {
        let Ok((header, body)) = decode_header(d) else {
            return;
        };
        match header.kind {
            Kind::Bound => {
                self.bound = true;
                if !self.unsent.is_empty() {
                    let values = self.unsent.drain().collect();
                    self.publish(values);
                }
            }
            Kind::Data => {
                self.bound = true;
                self.counters.datagrams.fetch_add(1, Ordering::Relaxed);
                if let Some(expected) = self.next_dseq {
                    let gap = header.dseq.wrapping_sub(expected);
                    // A small forward jump is loss; a "negative" one is reordering.
                    if gap > 0 && gap < u32::MAX / 2 {
                        self.counters
                            .lost
                            .fetch_add(u64::from(gap), Ordering::Relaxed);
                    }
                }
                self.next_dseq = Some(header.dseq.wrapping_add(1));
                let now = Instant::now();
                let mut values = std::mem::take(&mut self.values);
                for r in records(body) {
                    let Ok(r) = r else { break };
                    let Some((topic, subs)) = self.aliases.get(&r.alias) else {
                        continue;
                    };
                    let Some(value) = decode_value(&[r]) else {
                        continue;
                    };
                    let v = TelemetryValue {
                        topic: topic.clone(),
                        alias: r.alias,
                        value,
                        offset: r.offset,
                        seq: r.seq,
                        time_us: r.time_us,
                        stale: r.flags & FLAG_STALE != 0,
                    };
                    if !subs.is_empty() {
                        values.push(v);
                    }
                }
                // One lock per subscription per datagram.
                let aliases = &self.aliases;
                for (id, s) in &self.subs {
                    let mine = values.iter().filter(|v| {
                        aliases
                            .get(&v.alias)
                            .is_some_and(|(_, subs)| subs.contains(id))
                    });
                    deliver(s, mine, &self.counters, now);
                }
                values.clear();
                self.values = values;
            }
            Kind::Bind | Kind::Publish => {}
        }
    }
}

fn deliver<'a>(
    s: &SubState,
    values: impl Iterator<Item = &'a TelemetryValue>,
    c: &LinkCounters,
    now: Instant,
) {
    let Ok(mut st) = s.stats.lock() else { return };
    st.datagrams = c.datagrams.load(Ordering::Relaxed);
    st.datagrams_lost = c.lost.load(Ordering::Relaxed);
    for v in values {
        let full = s.tx.try_send(v.clone()).is_err();
        if full {
            st.dropped_local += 1;
        }
        count(&mut st, v, now);
    }
}

fn count(st: &mut TelemetryStats, v: &TelemetryValue, now: Instant) {
    let ss = st.streams.entry(v.topic.clone()).or_default();
    // Parts of one chunked value share its sequence: count the value once.
    if v.offset == 0 || ss.last_seq != Some(v.seq) {
        if let Some(last) = ss.last_seq {
            let jump = v.seq.wrapping_sub(last);
            if jump > 1 && jump < u32::MAX / 2 {
                ss.skipped += u64::from(jump - 1);
            }
        }
        if !v.stale {
            ss.received += 1;
            ss.window_count += 1;
        }
        ss.last_seq = Some(v.seq);
    }
    let start = *ss.window_start.get_or_insert(now);
    let span = now - start;
    if span >= Duration::from_secs(1) {
        ss.rate_hz = ss.window_count as f64 / span.as_secs_f64();
        ss.window_start = Some(now);
        ss.window_count = 0;
    }
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<usize> {
    match socket {
        Some(s) => s.recv(buf).await,
        None => std::future::pending().await,
    }
}

/// A telemetry subscription: a stream of [`TelemetryValue`]s, the newest value of
/// each matching stream at most at the rate asked for. Dropping it unsubscribes.
pub struct TelemetrySubscription {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<TelemetryValue>,
    pub(crate) stats: Arc<Mutex<TelemetryStats>>,
    pub(crate) streams: Vec<StreamDesc>,
    pub(crate) unsub: Option<Box<dyn FnOnce() + Send>>,
}

impl TelemetrySubscription {
    /// The streams that matched when it was made (more may come later).
    pub fn streams(&self) -> &[StreamDesc] {
        &self.streams
    }

    /// Loss and rate so far.
    pub fn stats(&self) -> TelemetryStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The next value; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<TelemetryValue> {
        self.rx.recv().await
    }

    /// The subscription's id on the bus.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Stream for TelemetrySubscription {
    type Item = TelemetryValue;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TelemetrySubscription {
    fn drop(&mut self) {
        if let Some(f) = self.unsub.take() {
            f();
        }
    }
}
