//! A strict X32 console on a real UDP socket, to test the X32 adapter (pushes,
//! subscriptions that lapse, meters, a console that goes away) without hardware. After
//! the documents cited in [`super`]:
//! * **Requests**: `/xinfo` and `/status` are answered; a channel parameter's address
//!   alone is a get (answered to the sender), with a value a set: faders are clamped to
//!   0..1 and stored on the console's 1024 steps, mutes are `on` ints (1 = not muted),
//!   names at most 12 printable ASCII characters. Replies go to the sender's address.
//! * **`/xremote`**: the sender is pushed every change (a set from any client, the
//!   sender's own included, as the console echoes it; or a move on the [`Panel`]) until
//!   [`SimConfig::xremote_ttl`] after its last `/xremote`; then nothing. At most
//!   [`SimConfig::max_remotes`] live clients (an X32 serves 4); a further one is refused
//!   (ignored and counted) until one lapses.
//! * **`/meters`**: banks `/meters/0` (70 values) and `/meters/1` (96) are sent to the
//!   subscriber at once and then every [`SimConfig::meter_interval`] × time factor
//!   (1..=99, anything else 1) until [`SimConfig::meters_ttl`] after the request or its
//!   last `/renew`. A `/renew` of a lapsed bank does nothing: the client must subscribe
//!   again. Other banks are ignored and counted as unknown.
//! * **Signal**: every channel has a source that wanders (mean-reverting random walk in
//!   dB around the channel's programme level) with decaying bursts on top (syllables,
//!   hits); the channel meter is that level after the fader, 0 when muted. Gate and
//!   dynamics gain reductions (`/meters/1` values 33..=96) follow from the pre-fader level
//!   (gate closed below -60 dBFS; a 3:1 compressor above -20 dBFS), as linear gains
//!   (1.0 = no reduction). Buses, returns and matrixes in `/meters/0` are silent.
//! * **Malformed** datagrams (broken OSC, wrong arguments for a known address) are
//!   ignored, as the console does, and counted; well-formed ones at addresses the
//!   simulator does not model are ignored and counted apart.
//!
//! One task owns the socket; the desk sits behind a std `Mutex` that nothing holds
//! across an `.await`, shared with [`Sim::state`] and the [`Panel`].

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::devices::udp::UdpSimulator;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{
    fader_to_db, quantize_fader, valid_name, Channel, ConsoleInfo, ConsoleStatus, MeterBank, Param,
    ParamValue, Reply, Request, CHANNELS, MAX_DATAGRAM,
};

/// Meter subscriptions held at once (client × bank). Past this a new one is refused
/// (ignored and counted), as a console out of resources would.
const MAX_METER_SUBS: usize = 16;
/// Datagrams waiting for their send time ([`SimConfig::reply_delay`]). Past this one
/// is dropped with a warning: to the client it is one more lost datagram.
const MAX_OUTBOX: usize = 4096;
/// Receive buffer: one byte more than the largest datagram decoded, so an oversized
/// one is seen as too long rather than truncated into something valid.
const RECV_BUF: usize = MAX_DATAGRAM + 1;
/// Datagrams taken per wake-up before replies go out, so a flood cannot hold replies
/// (and the stop signal) back for long.
const RECV_BATCH: usize = 32;
/// Longest time step of the signal model: after a pause the signal does not jump.
const MAX_STEP: f64 = 0.5;
/// Channels 1..=12 carry programme (speech, playback); the rest are quiet spares.
const PROGRAMME: [(&str, f64); 12] = [
    ("Lectern", -18.0),
    ("Handheld 1", -20.0),
    ("Handheld 2", -22.0),
    ("Lapel 1", -24.0),
    ("Lapel 2", -24.0),
    ("Lapel 3", -26.0),
    ("Playback L", -14.0),
    ("Playback R", -14.5),
    ("Laptop L", -16.0),
    ("Laptop R", -16.5),
    ("Ambient L", -34.0),
    ("Ambient R", -35.0),
];
/// Programme level of the spare channels (room noise on open mics).
const SPARE_DB: f64 = -48.0;

/// What the simulated console is like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// One time-factor unit of meter interval (an X32: 50 ms).
    pub meter_interval: Duration,
    /// How long an `/xremote` lasts (an X32: 10 s).
    pub xremote_ttl: Duration,
    /// How long a `/meters` subscription or `/renew` lasts (an X32: 10 s).
    pub meters_ttl: Duration,
    /// Delay before every reply and push.
    pub reply_delay: Duration,
    /// Live `/xremote` clients served at once (an X32: 4, an X AIR: 8).
    pub max_remotes: usize,
    /// Drop every Nth received datagram (counting all), as if lost on the way in;
    /// `Some(0)` drops nothing.
    pub drop_every: Option<u32>,
    /// Seed of the signal model (the same seed, the same signal for the same timing).
    pub seed: u64,
    /// What `/xinfo` and `/status` report.
    pub name: String,
    pub model: String,
    pub version: String,
}

impl Default for SimConfig {
    /// An X32 as shipped: meters every 50 ms, subscriptions of 10 s, 4 remotes.
    fn default() -> Self {
        SimConfig {
            meter_interval: Duration::from_millis(50),
            xremote_ttl: Duration::from_secs(10),
            meters_ttl: Duration::from_secs(10),
            reply_delay: Duration::from_millis(1),
            max_remotes: 4,
            drop_every: None,
            seed: 32,
            name: "X32-SIM".into(),
            model: "X32".into(),
            version: "4.06".into(),
        }
    }
}

impl SimConfig {
    /// The default console made fast for tests: meters every 10 ms, replies at once.
    pub fn fast() -> Self {
        SimConfig {
            meter_interval: Duration::from_millis(10),
            reply_delay: Duration::ZERO,
            ..SimConfig::default()
        }
    }
}

/// One channel as the console holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StripState {
    pub fader: f32,
    /// `/ch/NN/mix/on`: true = not muted.
    pub on: bool,
    pub name: String,
    /// The channel's meter now: linear, after the fader, 0 when muted.
    pub level: f32,
}

/// A snapshot of the console.
#[derive(Debug, Clone, PartialEq)]
pub struct SimState {
    /// Channels 1..=32, in order.
    pub strips: Vec<StripState>,
    /// `/xremote` clients whose subscription has not lapsed.
    pub remotes: usize,
    /// Meter subscriptions that have not lapsed.
    pub meter_subs: usize,
    /// Datagrams received, dropped by [`SimConfig::drop_every`], ignored as malformed,
    /// and ignored as well-formed but unknown.
    pub received: u64,
    pub dropped: u64,
    pub malformed: u64,
    pub unknown: u64,
    /// `/xremote` and `/meters` requests refused for want of room.
    pub refused: u64,
    /// `/xremote` requests from a client already subscribed.
    pub remote_renewals: u64,
    /// `/renew`s that found their meter subscription.
    pub meter_renewals: u64,
    /// `/meters` subscriptions accepted (new or replacing one).
    pub subscriptions: u64,
    /// Changes pushed, and meter blobs sent.
    pub pushes: u64,
    pub meter_blobs: u64,
}

impl SimState {
    /// Channel `n` (1..=32).
    pub fn strip(&self, n: u8) -> &StripState {
        &self.strips[usize::from(n.clamp(1, CHANNELS) - 1)]
    }
}

/// Why the [`Panel`] refused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PanelError {
    #[error("the console has no channel {0}")]
    NoChannel(u8),
    #[error("a name is at most 12 printable ASCII characters")]
    Name,
}

/// A simulated console serving one UDP socket. Dropping it stops the task too.
pub struct Sim {
    net: UdpSimulator,
    shared: Arc<Shared>,
}

impl Sim {
    /// Binds `listen` (the socket is ready when this returns) and serves it.
    ///
    /// # Errors
    /// The socket's bind error.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> io::Result<Sim> {
        let (socket, addr) = UdpSimulator::bind(listen).await?;
        let desk = Mutex::new(Desk::new(cfg, addr, Instant::now()));
        let shared = Arc::new(Shared {
            desk,
            wake: Notify::new(),
        });
        let serving = shared.clone();
        let net = UdpSimulator::serve(socket, addr, |socket, cancel| run(socket, serving, cancel));
        Ok(Sim { net, shared })
    }

    /// The address the console listens on.
    pub fn addr(&self) -> SocketAddr {
        self.net.addr()
    }

    /// The console's front panel; it outlives the socket harmlessly.
    pub fn panel(&self) -> Panel {
        Panel {
            shared: self.shared.clone(),
        }
    }

    /// The console now.
    pub fn state(&self) -> SimState {
        self.shared.lock().snapshot(Instant::now())
    }

    /// Sends raw bytes from the console's socket to `to` (garbage, for tests).
    ///
    /// # Errors
    /// The socket's send error.
    pub async fn inject(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<usize> {
        self.net.inject(to, bytes).await
    }

    /// Stops serving and closes the socket; a new [`Sim::start`] on the same address
    /// brings up a fresh console (no subscriptions, default scene).
    pub async fn stop(self) {
        self.net.stop().await;
    }
}

/// The console's surface: a change made here is pushed to every live `/xremote`
/// client, as a fader moved by hand is.
#[derive(Clone)]
pub struct Panel {
    shared: Arc<Shared>,
}

impl Panel {
    /// Moves channel `n`'s fader to `f` (clamped, on the console's steps).
    ///
    /// # Errors
    /// [`PanelError::NoChannel`].
    pub fn set_fader(&self, n: u8, f: f32) -> Result<(), PanelError> {
        self.change(n, Param::Fader, ParamValue::Fader(f))
    }

    /// Presses channel `n`'s mute: `on` true = not muted.
    ///
    /// # Errors
    /// [`PanelError::NoChannel`].
    pub fn set_on(&self, n: u8, on: bool) -> Result<(), PanelError> {
        self.change(n, Param::On, ParamValue::On(on))
    }

    /// Types channel `n`'s name.
    ///
    /// # Errors
    /// [`PanelError::NoChannel`], [`PanelError::Name`].
    pub fn set_name(&self, n: u8, name: &str) -> Result<(), PanelError> {
        if !valid_name(name) {
            return Err(PanelError::Name);
        }
        self.change(n, Param::Name, ParamValue::Name(name.into()))
    }

    fn change(&self, n: u8, param: fn(Channel) -> Param, v: ParamValue) -> Result<(), PanelError> {
        let channel = Channel::new(n).ok_or(PanelError::NoChannel(n))?;
        let now = Instant::now();
        let mut desk = self.shared.lock();
        desk.apply(param(channel), v);
        desk.push_change(now, param(channel));
        drop(desk);
        // The task sends the pushes.
        self.shared.wake.notify_one();
        Ok(())
    }
}

struct Shared {
    desk: Mutex<Desk>,
    /// Wakes the task after a [`Panel`] change.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Desk> {
        // A panic elsewhere while holding the lock leaves a usable desk.
        self.desk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The socket task: receive, send what is due, wake for meters and delayed replies.
async fn run(socket: Arc<UdpSocket>, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut ready = Vec::new();
    loop {
        let deadline = {
            let mut desk = shared.lock();
            desk.poll(Instant::now(), &mut ready);
            desk.next_deadline()
        };
        for (to, bytes) in ready.drain(..) {
            // A failed send is a lost datagram, as UDP has them.
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(%to, error = %e, "x32 sim: send failed");
            }
        }
        tokio::select! {
            // `Sim::stop` or drop: the socket closes when the last handle goes.
            () = cancel.cancelled() => break,
            // A datagram from a client (or garbage).
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let mut desk = shared.lock();
                    desk.on_datagram(Instant::now(), from, &buf[..n]);
                    // Take what is already waiting too, then answer the whole batch.
                    for _ in 1..RECV_BATCH {
                        let Ok((n, from)) = socket.try_recv_from(&mut buf) else { break };
                        desk.on_datagram(Instant::now(), from, &buf[..n]);
                    }
                }
                // E.g. an ICMP error for an earlier send to a client that went away.
                Err(e) => tracing::debug!(error = %e, "x32 sim: receive failed"),
            },
            // Meters or a delayed reply are due.
            () = sleep_until(deadline) => {}
            // The panel changed something: pushes to send.
            () = shared.wake.notified() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `now + delay`, or a year on if a configured delay is too large to add.
fn later(now: Instant, delay: Duration) -> Instant {
    let year = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(delay).unwrap_or(now + year)
}

/// A channel's source: a level in dBFS wandering around its programme level, plus a
/// decaying burst.
#[derive(Debug, Clone, Copy)]
struct Source {
    programme: f64,
    base: f64,
    burst: f64,
}

impl Source {
    fn new(programme: f64) -> Source {
        Source {
            programme,
            base: programme,
            burst: 0.0,
        }
    }

    /// `dt` seconds on: pulled back towards the programme level (half-way in about a
    /// second) with a random walk of 5 dB per √s; bursts of up to +15 dB about four
    /// times a second, decaying at 60 dB/s.
    fn step(&mut self, dt: f64, rng: &mut fastrand::Rng) {
        let normal: f64 = (0..12).map(|_| rng.f64()).sum::<f64>() - 6.0;
        self.base += 0.7 * (self.programme - self.base) * dt + 5.0 * dt.sqrt() * normal;
        self.base = self.base.clamp(-100.0, -3.0);
        self.burst = (self.burst - 60.0 * dt).max(0.0);
        if rng.f64() < 4.0 * dt {
            self.burst = self.burst.max(15.0 * rng.f64());
        }
    }

    /// The pre-fader level in dBFS.
    fn db(&self) -> f64 {
        (self.base + self.burst).min(12.0)
    }
}

struct Strip {
    fader: f32,
    on: bool,
    name: String,
    source: Source,
}

impl Strip {
    /// The channel meter: linear, after the fader, 0 when muted or at `-oo`.
    fn level(&self) -> f32 {
        if !self.on || self.fader <= 0.0 {
            return 0.0;
        }
        let db = self.source.db() + fader_to_db(self.fader);
        10f64.powf(db / 20.0) as f32
    }

    /// Gate gain: closed (-20 dB) below -60 dBFS before the fader.
    fn gate(&self) -> f32 {
        if self.source.db() < -60.0 {
            0.1
        } else {
            1.0
        }
    }

    /// Compressor gain: 3:1 above -20 dBFS before the fader.
    fn dynamics(&self) -> f32 {
        let over = (self.source.db() + 20.0).max(0.0);
        10f64.powf(-over * (2.0 / 3.0) / 20.0) as f32
    }
}

/// A client served `/xremote` pushes until `until`.
struct Remote {
    addr: SocketAddr,
    until: Instant,
}

struct MeterSub {
    addr: SocketAddr,
    bank: MeterBank,
    interval: Duration,
    next: Instant,
    until: Instant,
}

struct Desk {
    cfg: SimConfig,
    addr: SocketAddr,
    strips: Vec<Strip>,
    remotes: Vec<Remote>,
    subs: Vec<MeterSub>,
    /// Datagrams with their send times, in the order they were made.
    outbox: Vec<(Instant, SocketAddr, Vec<u8>)>,
    rng: fastrand::Rng,
    /// When the signal was last stepped.
    at: Instant,
    received: u64,
    dropped: u64,
    malformed: u64,
    unknown: u64,
    refused: u64,
    remote_renewals: u64,
    meter_renewals: u64,
    subscriptions: u64,
    pushes: u64,
    meter_blobs: u64,
}

impl Desk {
    fn new(cfg: SimConfig, addr: SocketAddr, now: Instant) -> Desk {
        let strips = Channel::all()
            .map(|c| {
                let programme = PROGRAMME.get(c.index());
                Strip {
                    fader: quantize_fader(if programme.is_some() { 0.75 } else { 0.5 }),
                    on: true,
                    name: programme.map_or_else(String::new, |(n, _)| (*n).into()),
                    source: Source::new(programme.map_or(SPARE_DB, |(_, db)| *db)),
                }
            })
            .collect();
        Desk {
            rng: fastrand::Rng::with_seed(cfg.seed),
            cfg,
            addr,
            strips,
            remotes: Vec::new(),
            subs: Vec::new(),
            outbox: Vec::new(),
            at: now,
            received: 0,
            dropped: 0,
            malformed: 0,
            unknown: 0,
            refused: 0,
            remote_renewals: 0,
            meter_renewals: 0,
            subscriptions: 0,
            pushes: 0,
            meter_blobs: 0,
        }
    }

    fn snapshot(&mut self, now: Instant) -> SimState {
        self.step(now);
        let strips = self.strips.iter().map(|s| StripState {
            fader: s.fader,
            on: s.on,
            name: s.name.clone(),
            level: s.level(),
        });
        SimState {
            strips: strips.collect(),
            remotes: self.remotes.iter().filter(|r| r.until > now).count(),
            meter_subs: self.subs.iter().filter(|s| s.until > now).count(),
            received: self.received,
            dropped: self.dropped,
            malformed: self.malformed,
            unknown: self.unknown,
            refused: self.refused,
            remote_renewals: self.remote_renewals,
            meter_renewals: self.meter_renewals,
            subscriptions: self.subscriptions,
            pushes: self.pushes,
            meter_blobs: self.meter_blobs,
        }
    }

    /// Moves the signal on to `now`.
    fn step(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        for strip in &mut self.strips {
            strip.source.step(dt.min(MAX_STEP), &mut self.rng);
        }
    }

    fn value(&self, p: Param) -> ParamValue {
        let strip = &self.strips[p.channel().index()];
        match p {
            Param::Fader(_) => ParamValue::Fader(strip.fader),
            Param::On(_) => ParamValue::On(strip.on),
            Param::Name(_) => ParamValue::Name(strip.name.clone()),
        }
    }

    /// Stores a value as the console would; false if it does not fit the parameter.
    fn apply(&mut self, p: Param, v: ParamValue) -> bool {
        let strip = &mut self.strips[p.channel().index()];
        match (p, v) {
            (Param::Fader(_), ParamValue::Fader(f)) => strip.fader = quantize_fader(f),
            (Param::On(_), ParamValue::On(on)) => strip.on = on,
            (Param::Name(_), ParamValue::Name(name)) if valid_name(&name) => strip.name = name,
            _ => return false,
        }
        true
    }

    /// Pushes `p`'s value to every live `/xremote` client.
    fn push_change(&mut self, now: Instant, p: Param) {
        let bytes = Reply::Param(p, self.value(p)).encode();
        let to: Vec<SocketAddr> = self
            .remotes
            .iter()
            .filter(|r| r.until > now)
            .map(|r| r.addr)
            .collect();
        for addr in to {
            self.pushes += 1;
            self.send(now, addr, bytes.clone());
        }
    }

    fn send(&mut self, now: Instant, to: SocketAddr, bytes: Vec<u8>) {
        if self.outbox.len() >= MAX_OUTBOX {
            tracing::warn!(%to, "x32 sim: outbox full, datagram dropped");
            return;
        }
        self.outbox
            .push((later(now, self.cfg.reply_delay), to, bytes));
    }

    /// Moves what is due by `now` to `ready`: delayed replies and pushes, meter blobs.
    fn poll(&mut self, now: Instant, ready: &mut Vec<(SocketAddr, Vec<u8>)>) {
        self.outbox.retain(|(due, to, bytes)| {
            let send = *due <= now;
            if send {
                ready.push((*to, bytes.clone()));
            }
            !send
        });
        self.subs.retain(|s| s.until > now);
        if self.subs.iter().all(|s| s.next > now) {
            return;
        }
        self.step(now);
        let levels: Vec<f32> = self.strips.iter().map(Strip::level).collect();
        for sub in &mut self.subs {
            if sub.next > now {
                continue;
            }
            let values = match sub.bank {
                MeterBank::Channels => {
                    let gates = self.strips.iter().map(Strip::gate);
                    let dynamics = self.strips.iter().map(Strip::dynamics);
                    levels
                        .iter()
                        .copied()
                        .chain(gates)
                        .chain(dynamics)
                        .collect()
                }
                MeterBank::Overview => {
                    let mut v = levels.clone();
                    v.resize(MeterBank::Overview.values(), 0.0);
                    v
                }
            };
            ready.push((sub.addr, Reply::Meters(sub.bank, values).encode()));
            self.meter_blobs += 1;
            // On the subscription's own beat; no catching up after a stall.
            let next = later(sub.next, sub.interval);
            sub.next = if next > now {
                next
            } else {
                later(now, sub.interval)
            };
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let replies = self.outbox.iter().map(|(due, _, _)| *due);
        let meters = self.subs.iter().map(|s| s.next);
        replies.chain(meters).min()
    }

    fn on_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.received += 1;
        if self
            .cfg
            .drop_every
            .is_some_and(|n| n > 0 && self.received.is_multiple_of(u64::from(n)))
        {
            self.dropped += 1;
            return;
        }
        let requests = match Request::decode(bytes) {
            Ok(requests) => requests,
            Err(e) => {
                self.malformed += 1;
                tracing::debug!(%from, error = %e, "x32 sim: datagram ignored");
                return;
            }
        };
        for request in requests {
            self.request(now, from, request);
        }
    }

    fn request(&mut self, now: Instant, from: SocketAddr, request: Request) {
        let ip = self.addr.ip().to_string();
        match request {
            Request::XInfo => {
                let info = ConsoleInfo {
                    ip,
                    name: self.cfg.name.clone(),
                    model: self.cfg.model.clone(),
                    version: self.cfg.version.clone(),
                };
                self.send(now, from, Reply::XInfo(info).encode());
            }
            Request::Status => {
                let state = "active".into();
                let name = self.cfg.name.clone();
                let status = ConsoleStatus { state, ip, name };
                self.send(now, from, Reply::Status(status).encode());
            }
            Request::XRemote => self.xremote(now, from),
            Request::Get(p) => self.send(now, from, Reply::Param(p, self.value(p)).encode()),
            Request::Set(p, v) => {
                if self.apply(p, v) {
                    self.push_change(now, p);
                } else {
                    self.malformed += 1;
                }
            }
            Request::Meters { bank, time_factor } => self.meters(now, from, bank, time_factor),
            Request::Renew(bank) => {
                let until = later(now, self.cfg.meters_ttl);
                let live = self.subs.iter_mut().filter(|s| s.until > now);
                for sub in live.filter(|s| s.addr == from && bank.is_none_or(|b| b == s.bank)) {
                    sub.until = until;
                    self.meter_renewals += 1;
                }
            }
            Request::Other(address) => {
                self.unknown += 1;
                tracing::debug!(%from, address, "x32 sim: unknown address ignored");
            }
        }
    }

    fn xremote(&mut self, now: Instant, from: SocketAddr) {
        self.remotes.retain(|r| r.until > now);
        let until = later(now, self.cfg.xremote_ttl);
        if let Some(r) = self.remotes.iter_mut().find(|r| r.addr == from) {
            r.until = until;
            self.remote_renewals += 1;
        } else if self.remotes.len() < self.cfg.max_remotes {
            self.remotes.push(Remote { addr: from, until });
        } else {
            self.refused += 1;
            tracing::debug!(%from, "x32 sim: /xremote refused, every slot taken");
        }
    }

    fn meters(&mut self, now: Instant, from: SocketAddr, bank: MeterBank, time_factor: i32) {
        self.subs.retain(|s| s.until > now);
        let factor = if (1..=99).contains(&time_factor) {
            time_factor.unsigned_abs()
        } else {
            1
        };
        let sub = MeterSub {
            addr: from,
            bank,
            interval: self.cfg.meter_interval.saturating_mul(factor),
            next: now,
            until: later(now, self.cfg.meters_ttl),
        };
        let held = self.subs.len();
        match self
            .subs
            .iter_mut()
            .find(|s| s.addr == from && s.bank == bank)
        {
            Some(old) => {
                *old = sub;
                self.subscriptions += 1;
            }
            None if held < MAX_METER_SUBS => {
                self.subs.push(sub);
                self.subscriptions += 1;
            }
            None => {
                self.refused += 1;
                tracing::debug!(%from, "x32 sim: /meters refused, every slot taken");
            }
        }
    }
}
