//! The X32 console adapter: a [`Driver`] for the adapter kit that speaks
//! [`super::proto`] to one console over a connected UDP socket (port 10023).
//!
//! # Mapping
//! | control | kind | X32 |
//! |---|---|---|
//! | `chNN_fader` (01..=32) | float 0..1 | `/ch/NN/mix/fader`: the fader's travel, so a slider sits where the desk's does |
//! | `chNN_fader_db` | float -90..=+10 dB, dB taper, 0.1 dB steps | the same fader through the console's fader law (-90 stands for `-oo`) |
//! | `chNN_mute` | bool | `/ch/NN/mix/on`, inverted: `on` 1 = not muted |
//! | `chNN_name` | string, ≤ 12 printable ASCII | `/ch/NN/config/name` |
//! | `meters` | meter, 32 channels, dBFS -90..=+18 | the first 32 values of `/meters/1` |
//! | `model`, `firmware` | read-only strings | `/xinfo` |
//!
//! A control name is one topic level, hence `ch01_fader` rather than `ch01/fader`. A
//! fader set is stored on the console's 1024 steps; the value panels get back is the
//! stored one.
//!
//! # Requests
//! OSC has no request ids: a get is answered with the parameter's address and value,
//! the same message a change pushed to `/xremote` clients is. So any message for a
//! parameter answers a get of it. A set is sent with a get behind it and confirmed by
//! the value that comes back (the console's echo, or the get's answer); a lost datagram
//! is sent again after [`Retry::try_timeout`], up to [`Retry::tries`] times. A console
//! that answers with another value every time (a hand on the fader at the same moment)
//! wins: its value is what panels see. No answer at all is [`DeviceError::Unreachable`].
//! The full state is read at connect and every poll (a safety net for lost pushes), 16
//! gets in flight at a time.
//!
//! # Subscriptions and liveness
//! `connect` asks `/xinfo` (the link is proven by its answer), then subscribes to
//! `/xremote` and to `/meters/1`; both lapse after 10 s on the console, so both are
//! renewed every [`X32Settings::renew`] (4 s by default: a lost renewal or two do no
//! harm), from [`Driver::next_event`]'s timer and before every command and poll, so a
//! busy command queue cannot starve them.
//!
//! Meter blobs prove the console is alive 20 times a second. When none has come for
//! [`X32Settings::meter_silence`] (or, with meters off, when nothing at all came for a
//! renewal interval) the driver asks `/status`; no answer after every try is
//! [`DeviceError::Unreachable`], and the kit marks the console offline, meters
//! included. An answer means the console lost the meter subscription (it restarted
//! within the silence, say): the driver subscribes to both again and reads the full
//! state, as a restarted console may have recalled another scene (no stale mutes after
//! a console restart). So meters shown `ok` are at most `meter_silence` + `tries` ×
//! `try_timeout` old (under 1 s by default) before the console turns offline; the kit
//! has no way to mark a single control stale meanwhile.
//!
//! Meter frames are conflated: [`Driver::next_event`] takes every datagram waiting and
//! reports the newest frame once, with the parameter changes pushed meanwhile. Other
//! addresses the console pushes are ignored; undecodable datagrams are logged with
//! their first bytes, escaped, and dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use super::controls::descriptor;
use super::controls::{info_changes, meter_value, param_changes, parse_control, Leaf};
use super::proto::{
    db_to_fader, quantize_fader, quote, valid_name, ConsoleInfo, MeterBank, Param, ParamValue,
    Reply, Request, CHANNELS, FADER_STEPS, MAX_DATAGRAM, NAME_LEN, PORT,
};
use crate::config::DeviceConfig;
use crate::devices::kit::{
    Changes, CommandFailure, DeviceCommand, DeviceError, Driver, Host, Timing,
};
use crate::model::DeviceDescriptor;
use crate::protocol::{CommandOp, ErrorCode};
use crate::value::{as_number, Value};

/// Full state read interval unless `poll_ms` says otherwise: changes arrive as pushes,
/// so this only repairs what a lost push left wrong.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);
/// `/xremote` and `/meters` renewal interval (both lapse after 10 s on an X32).
pub const DEFAULT_RENEW: Duration = Duration::from_secs(4);
/// No meter blob for this long (10 blobs at 20 Hz) and the console is asked whether it
/// is still there.
pub const DEFAULT_METER_SILENCE: Duration = Duration::from_millis(500);
/// The meter bank subscribed: its first 32 values are the input channels.
const BANK: MeterBank = MeterBank::Channels;
/// Gets in flight at once while reading the full state: a burst small enough for the
/// console's input buffer, large enough that a read takes a few round trips.
const READ_WINDOW: usize = 16;
/// Receive buffer: one byte more than the largest datagram decoded, so an oversized
/// one is seen as too long rather than truncated into something valid.
const RECV_BUF: usize = MAX_DATAGRAM + 1;
/// Datagrams already waiting that are absorbed at once before the timers are judged
/// and changes reported: at 20 meter blobs a second this is all of them, and a flood
/// still yields.
const RECV_BATCH: usize = 64;

/// What [`Driver::execute`] answers.
type Answered = Result<Result<Changes, CommandFailure>, DeviceError>;

pub use crate::devices::udp::{LocalAddr, Retry};

/// The default retransmission: 150 ms (a console on a LAN answers within a few ms), 3 copies.
pub const DEFAULT_RETRY: Retry = Retry {
    try_timeout: Duration::from_millis(150),
    tries: 3,
};

/// Everything an [`X32Driver`] is made from; cheap to clone, so the kit's `make`
/// closure builds a fresh driver from it after a panic.
#[derive(Debug, Clone)]
pub struct X32Settings {
    pub room: String,
    pub name: String,
    pub label: String,
    /// Console host name or address.
    pub host: String,
    pub port: u16,
    pub poll: Duration,
    /// See [`DEFAULT_RENEW`].
    pub renew: Duration,
    pub retry: Retry,
    /// `/meters` time factor: blobs every 50 ms × this on an X32 (1 = 20 Hz); 0 turns
    /// meters off.
    pub meter_factor: u8,
    /// See [`DEFAULT_METER_SILENCE`].
    pub meter_silence: Duration,
    local: LocalAddr,
}

impl X32Settings {
    /// Settings from a `[[device]] driver = "x32-osc"` entry, with the defaults above.
    ///
    /// # Errors
    /// As [`check`].
    pub fn from_device(d: &DeviceConfig) -> Result<X32Settings, String> {
        check(d)?;
        Ok(X32Settings {
            room: d.room.clone(),
            name: d.name.clone(),
            label: d.label.clone().unwrap_or_else(|| "Audio console".into()),
            host: d.host.clone().unwrap_or_default(),
            port: d.port.unwrap_or(PORT),
            poll: d.poll_ms.map_or(DEFAULT_POLL, Duration::from_millis),
            renew: DEFAULT_RENEW,
            retry: DEFAULT_RETRY,
            meter_factor: 1,
            meter_silence: DEFAULT_METER_SILENCE,
            local: LocalAddr::default(),
        })
    }

    /// Where the drivers made from these settings are bound.
    pub fn local_addr(&self) -> LocalAddr {
        self.local.clone()
    }

    /// A driver, not yet connected.
    pub fn driver(&self) -> X32Driver {
        X32Driver {
            console: format!("{}:{}", self.host, self.port),
            settings: self.clone(),
            link: None,
        }
    }
}

/// The open UDP link.
struct Link {
    socket: UdpSocket,
    buf: Box<[u8]>,
    st: LinkState,
}

/// What the driver knows of the console, and its timers.
struct LinkState {
    info: ConsoleInfo,
    /// Every parameter value heard; at most the 96 modelled parameters.
    values: BTreeMap<Param, ParamValue>,
    /// Parameters heard since [`Driver::next_event`] last reported.
    dirty: BTreeSet<Param>,
    /// The newest meter frame not yet reported (the 32 channels, linear).
    meters: Option<Vec<f32>>,
    renew_at: Instant,
    /// When a valid datagram, and a meter blob, last came.
    heard: Instant,
    metered: Instant,
    /// A `/status` asked and not yet answered: when it was sent, and how many times.
    probe: Option<(Instant, u32)>,
    /// The meters went silent: subscribe again once the console answers the probe.
    resubscribe: bool,
    /// The console lost its subscriptions, so it probably restarted (and recalled a
    /// scene): read the full state again before reporting anything else.
    resync: bool,
}

/// An X32 console driven through the adapter kit.
pub struct X32Driver {
    settings: X32Settings,
    /// `host:port`, for logs and errors.
    console: String,
    link: Option<Link>,
}

impl X32Driver {
    /// A driver for a `[[device]] driver = "x32-osc"` entry, with default timing.
    ///
    /// # Errors
    /// As [`check`].
    pub fn new(d: &DeviceConfig) -> Result<X32Driver, String> {
        X32Settings::from_device(d).map(|s| s.driver())
    }

    fn link(&mut self) -> Result<&mut Link, DeviceError> {
        self.link.as_mut().ok_or_else(not_connected)
    }

    /// Sends one request. An ICMP error from an earlier datagram ("port unreachable")
    /// counts as this one being lost: the retransmissions find out.
    async fn send(&mut self, request: &Request) -> Result<(), DeviceError> {
        let X32Driver { console, link, .. } = self;
        let link = link.as_mut().ok_or_else(not_connected)?;
        match link.socket.send(&request.encode()).await {
            Err(e) if e.kind() != io::ErrorKind::ConnectionRefused => {
                Err(DeviceError::Unreachable(format!("{console}: {e}")))
            }
            _ => Ok(()),
        }
    }

    /// The next datagram before `deadline`, absorbed into the link state: its replies,
    /// or `None` at the deadline or when the console's port is unreachable.
    async fn recv_until(&mut self, deadline: Instant) -> Result<Option<Vec<Reply>>, DeviceError> {
        let X32Driver { console, link, .. } = self;
        let link = link.as_mut().ok_or_else(not_connected)?;
        let received = tokio::time::timeout_at(deadline, link.socket.recv(&mut link.buf)).await;
        let n = match received {
            Err(_) => return Ok(None),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(None),
            Ok(Err(e)) => return Err(DeviceError::Unreachable(format!("receive: {e}"))),
        };
        Ok(Some(link.st.absorb(console, &link.buf[..n])))
    }

    /// Asks `/xinfo` until it is answered.
    async fn ask_info(&mut self) -> Result<ConsoleInfo, DeviceError> {
        let Retry { try_timeout, tries } = self.settings.retry;
        for _ in 0..tries.max(1) {
            self.send(&Request::XInfo).await?;
            let deadline = Instant::now() + try_timeout;
            while let Some(replies) = self.recv_until(deadline).await? {
                if let Some(Reply::XInfo(info)) = replies.into_iter().find(is_info) {
                    return Ok(info);
                }
            }
        }
        let why = format!("{}: no answer to /xinfo after {tries} tries", self.console);
        Err(DeviceError::Unreachable(why))
    }

    /// Reads `params` from the console, [`READ_WINDOW`] gets in flight at a time.
    async fn read(&mut self, params: &[Param]) -> Result<(), DeviceError> {
        let Retry { try_timeout, tries } = self.settings.retry;
        for window in params.chunks(READ_WINDOW) {
            let mut want = window.to_vec();
            for _ in 0..tries.max(1) {
                for p in want.clone() {
                    self.send(&Request::Get(p)).await?;
                }
                let deadline = Instant::now() + try_timeout;
                while !want.is_empty() {
                    let Some(replies) = self.recv_until(deadline).await? else {
                        break;
                    };
                    want.retain(|p| !replies.iter().any(|r| answers(r, *p)));
                }
                if want.is_empty() {
                    break;
                }
            }
            if let Some(p) = want.first() {
                let (console, n) = (&self.console, want.len());
                let why = format!(
                    "{console}: no answer to {} (and {} more) after {tries} tries",
                    p.address(),
                    n - 1
                );
                return Err(DeviceError::Unreachable(why));
            }
        }
        Ok(())
    }

    /// Sets `p` to `target` and confirms it, as the module documentation describes.
    async fn set(&mut self, p: Param, target: ParamValue) -> Answered {
        let Retry { try_timeout, tries } = self.settings.retry;
        let mut heard = None;
        for _ in 0..tries.max(1) {
            self.send(&Request::Set(p, target.clone())).await?;
            self.send(&Request::Get(p)).await?;
            let deadline = Instant::now() + try_timeout;
            while let Some(replies) = self.recv_until(deadline).await? {
                for reply in replies {
                    let Reply::Param(q, v) = reply else { continue };
                    if q != p {
                        continue;
                    }
                    if same(&v, &target) {
                        return Ok(Ok(param_changes(p, &v)));
                    }
                    heard = Some(v);
                }
            }
        }
        match heard {
            Some(v) => {
                tracing::info!(console = %self.console, address = p.address(), ?v, "the console kept another value");
                Ok(Ok(param_changes(p, &v)))
            }
            None => {
                let why = format!(
                    "{}: no answer to {} after {tries} tries",
                    self.console,
                    p.address()
                );
                Err(DeviceError::Unreachable(why))
            }
        }
    }

    /// Absorbs every datagram already waiting (at most [`RECV_BATCH`]), so that what
    /// the timers judge is what has arrived, not what this task had time to read.
    fn drain(&mut self) {
        let X32Driver { console, link, .. } = self;
        let Some(link) = link.as_mut() else { return };
        for _ in 0..RECV_BATCH {
            let Ok(n) = link.socket.try_recv(&mut link.buf) else {
                break;
            };
            link.st.absorb(console, &link.buf[..n]);
        }
    }

    /// Renewals, liveness probes and a meter re-subscription that are due now.
    async fn maintain(&mut self) -> Result<(), DeviceError> {
        self.drain();
        let now = Instant::now();
        // Copied out: `self` is borrowed mutably by every send below.
        let X32Settings {
            renew: every,
            retry,
            meter_factor,
            meter_silence,
            ..
        } = self.settings;
        let meters = meter_factor > 0;
        let st = &self.link()?.st;
        let (renew, probe, resubscribe) = (now >= st.renew_at, st.probe, st.resubscribe);
        let silent_meters = meters && now >= st.metered + meter_silence;
        let silent = now >= st.heard + every;
        if renew {
            self.send(&Request::XRemote).await?;
            if meters {
                self.send(&Request::Renew(Some(BANK))).await?;
            }
            self.link()?.st.renew_at = now + every;
        }
        match probe {
            Some((sent, tries)) if now >= sent + retry.try_timeout => {
                if tries >= retry.tries.max(1) {
                    let why = format!("{}: no answer to /status after {tries} tries", self.console);
                    return Err(DeviceError::Unreachable(why));
                }
                self.send(&Request::Status).await?;
                self.link()?.st.probe = Some((now, tries + 1));
            }
            Some(_) => {}
            // The console answered the probe but its meters had stopped: it no longer
            // holds the subscription.
            None if resubscribe => {
                tracing::warn!(console = %self.console, "meters stopped: subscribing again, reading the state");
                self.send(&Request::XRemote).await?;
                let time_factor = i32::from(meter_factor);
                self.send(&Request::Meters {
                    bank: BANK,
                    time_factor,
                })
                .await?;
                let st = &mut self.link()?.st;
                (st.metered, st.resubscribe, st.resync) = (now, false, true);
            }
            None if silent_meters || silent => {
                tracing::debug!(console = %self.console, silent_meters, "quiet console: asking /status");
                self.send(&Request::Status).await?;
                let st = &mut self.link()?.st;
                st.probe = Some((now, 1));
                st.resubscribe |= silent_meters;
            }
            None => {}
        }
        Ok(())
    }
}

impl LinkState {
    /// Takes in one datagram from the console; returns its replies.
    fn absorb(&mut self, console: &str, bytes: &[u8]) -> Vec<Reply> {
        let replies = match Reply::decode(bytes) {
            Ok(replies) => replies,
            Err(error) => {
                tracing::warn!(console, bytes = %quote(bytes), %error, "undecodable datagram ignored");
                return Vec::new();
            }
        };
        let now = Instant::now();
        self.heard = now;
        for reply in &replies {
            match reply {
                Reply::Param(p, v) => {
                    self.values.insert(*p, v.clone());
                    self.dirty.insert(*p);
                }
                Reply::Meters(bank, values) if *bank == BANK && values.len() >= CHANNELS.into() => {
                    self.meters = Some(values[..usize::from(CHANNELS)].to_vec());
                    self.metered = now;
                }
                Reply::Meters(bank, values) => {
                    tracing::debug!(console, ?bank, len = values.len(), "meter blob ignored");
                }
                Reply::Status(_) | Reply::XInfo(_) => self.probe = None,
                Reply::Other(address) => tracing::trace!(console, address, "not modelled"),
            }
        }
        replies
    }

    /// What changed since the last report, if anything.
    fn take_changes(&mut self) -> Option<Changes> {
        if self.dirty.is_empty() && self.meters.is_none() {
            return None;
        }
        let mut changes = Changes::new();
        for p in std::mem::take(&mut self.dirty) {
            if let Some(v) = self.values.get(&p) {
                changes.extend(param_changes(p, v));
            }
        }
        if let Some(levels) = self.meters.take() {
            changes.push(("meters".into(), meter_value(&levels)));
        }
        Some(changes)
    }

    /// When [`X32Driver::maintain`] next has something to do.
    fn next_deadline(&self, s: &X32Settings) -> Instant {
        let mut at = self.renew_at;
        match self.probe {
            Some((sent, _)) => at = at.min(sent + s.retry.try_timeout),
            None if self.resubscribe => at = Instant::now(),
            None => {
                at = at.min(self.heard + s.renew);
                if s.meter_factor > 0 {
                    at = at.min(self.metered + s.meter_silence);
                }
            }
        }
        at
    }
}

impl Driver for X32Driver {
    fn descriptor(&self) -> DeviceDescriptor {
        let s = &self.settings;
        descriptor(&s.room, &s.name, &s.label, s.meter_factor)
    }

    fn timing(&self) -> Timing {
        let Retry { try_timeout, tries } = self.settings.retry;
        let message = try_timeout * tries.max(1);
        let windows = Param::all().count().div_ceil(READ_WINDOW) as u32;
        Timing {
            poll: self.settings.poll,
            connect: Timing::default().connect.max(message * 2),
            poll_timeout: message * windows + Duration::from_secs(1),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
        }
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        self.disconnect().await;
        let console = self.console.clone();
        let io = |e: io::Error| DeviceError::Unreachable(format!("{console}: {e}"));
        let (host, port) = (self.settings.host.as_str(), self.settings.port);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(io)?
            .next();
        let addr = addr.ok_or_else(|| io(io::ErrorKind::NotFound.into()))?;
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).await.map_err(io)?;
        // Connected: the kernel drops datagrams from anyone but the console, and ICMP
        // "port unreachable" reaches us as an error.
        socket.connect(addr).await.map_err(io)?;
        self.settings.local.set(socket.local_addr().ok());
        let now = Instant::now();
        self.link = Some(Link {
            socket,
            buf: vec![0; RECV_BUF].into_boxed_slice(),
            st: LinkState {
                info: ConsoleInfo::default(),
                values: BTreeMap::new(),
                dirty: BTreeSet::new(),
                meters: None,
                renew_at: now + self.settings.renew,
                heard: now,
                metered: now,
                probe: None,
                resubscribe: false,
                resync: false,
            },
        });
        let info = self.ask_info().await?;
        tracing::info!(console = %self.console, model = info.model, firmware = info.version, name = info.name, "console found");
        self.link()?.st.info = info;
        self.send(&Request::XRemote).await?;
        if self.settings.meter_factor > 0 {
            let time_factor = i32::from(self.settings.meter_factor);
            self.send(&Request::Meters {
                bank: BANK,
                time_factor,
            })
            .await?;
        }
        let st = &mut self.link()?.st;
        (st.heard, st.metered) = (Instant::now(), Instant::now());
        Ok(())
    }

    async fn poll(&mut self) -> Result<Changes, DeviceError> {
        self.maintain().await?;
        let params: Vec<Param> = Param::all().collect();
        self.read(&params).await?;
        let st = &mut self.link()?.st;
        let mut changes = info_changes(&st.info);
        for (p, v) in &st.values {
            changes.extend(param_changes(*p, v));
        }
        // Everything is reported here; pushes heard meanwhile need no second report.
        st.dirty.clear();
        Ok(changes)
    }

    async fn execute(&mut self, c: &DeviceCommand) -> Answered {
        self.maintain().await?;
        let Some((channel, leaf)) = parse_control(&c.control).filter(|_| c.op == CommandOp::Set)
        else {
            let why = format!("{} does not take {:?}", c.control, c.op);
            return Ok(refuse(ErrorCode::NotWritable, why));
        };
        let number = as_number(&c.value).filter(|f| f.is_finite());
        let (param, target) = match (leaf, number, &c.value) {
            (Leaf::Fader, Some(f), _) if (0.0..=1.0).contains(&f) => {
                let f = quantize_fader(f as f32);
                (Param::Fader(channel), ParamValue::Fader(f))
            }
            (Leaf::FaderDb, Some(db), _) => {
                let f = quantize_fader(db_to_fader(db));
                (Param::Fader(channel), ParamValue::Fader(f))
            }
            (Leaf::Mute, _, Value::Boolean(muted)) => (Param::On(channel), ParamValue::On(!muted)),
            (Leaf::Name, _, Value::String(s)) if s.as_str().is_some_and(valid_name) => {
                let name = s.as_str().unwrap_or_default().to_owned();
                (Param::Name(channel), ParamValue::Name(name))
            }
            (Leaf::Name, ..) => {
                let why =
                    format!("a channel name is at most {NAME_LEN} printable ASCII characters");
                return Ok(refuse(ErrorCode::InvalidValue, why));
            }
            _ => {
                let why = format!(
                    "{}: {} does not fit",
                    c.control,
                    crate::value::to_json_string(&c.value)
                );
                return Ok(refuse(ErrorCode::InvalidValue, why));
            }
        };
        let answered = self.set(param, target).await?;
        if let Some(link) = self.link.as_mut() {
            link.st.dirty.remove(&param);
        }
        Ok(answered)
    }

    /// Between requests: pushed changes and meter blobs, renewals and liveness probes.
    /// Cancel-safe: a datagram is either still in the socket or absorbed, and a timer
    /// action interrupted before it updated its timer is done again.
    async fn next_event(&mut self) -> Result<Changes, DeviceError> {
        loop {
            if self.link.as_ref().is_some_and(|l| l.st.resync) {
                // Interrupted, the flag stays and the read is done again.
                let params: Vec<Param> = Param::all().collect();
                self.read(&params).await?;
                let st = &mut self.link()?.st;
                st.dirty.extend(Param::all());
                st.resync = false;
            }
            let X32Driver {
                settings,
                console,
                link,
            } = self;
            let Some(link) = link.as_mut() else {
                return std::future::pending().await;
            };
            if let Some(changes) = link.st.take_changes() {
                return Ok(changes);
            }
            let deadline = link.st.next_deadline(settings);
            tokio::select! {
                // A push, a meter blob, an answer to a probe (or garbage).
                received = link.socket.recv(&mut link.buf) => match received {
                    // The rest of what is waiting is taken by `maintain`, so the
                    // newest meter frame wins.
                    Ok(n) => {
                        link.st.absorb(console, &link.buf[..n]);
                    }
                    // An ICMP error for an earlier datagram: the probe finds out.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(DeviceError::Unreachable(format!("receive: {e}"))),
                },
                // A renewal or a probe is due.
                () = tokio::time::sleep_until(deadline) => {}
            }
            self.maintain().await?;
        }
    }

    async fn disconnect(&mut self) {
        self.link = None;
        self.settings.local.set(None);
    }
}

/// Whether `v` is what a set to `target` stores (a fader within half a step).
fn same(v: &ParamValue, target: &ParamValue) -> bool {
    match (v, target) {
        (ParamValue::Fader(a), ParamValue::Fader(b)) => {
            (a - b).abs() <= 0.5 / f32::from(FADER_STEPS - 1) + f32::EPSILON
        }
        _ => v == target,
    }
}

/// Whether `reply` carries `p`'s value.
fn answers(reply: &Reply, p: Param) -> bool {
    matches!(reply, Reply::Param(q, _) if *q == p)
}

fn is_info(reply: &Reply) -> bool {
    matches!(reply, Reply::XInfo(_))
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Result<Changes, CommandFailure> {
    Err(CommandFailure::new(code, message))
}

fn not_connected() -> DeviceError {
    DeviceError::Unreachable("not connected".into())
}

/// Checks a `[[device]] driver = "x32-osc"` entry: `host` is required, `port` defaults
/// to 10023, `poll_ms` (the full re-read) to 10000; OSC has no password.
///
/// # Errors
/// A message naming the key.
pub fn check(d: &DeviceConfig) -> Result<(), String> {
    if d.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
        return Err("driver \"x32-osc\" needs host = \"<console address>\"".into());
    }
    if d.port == Some(0) {
        return Err("driver \"x32-osc\": port = 0 is not a console port (default 10023)".into());
    }
    if d.password.is_some() {
        return Err("driver \"x32-osc\" takes no password (the console's OSC has none)".into());
    }
    if d.poll_ms.is_some_and(|ms| !(100..=600_000).contains(&ms)) {
        return Err("driver \"x32-osc\": poll_ms must be within 100..=600000".into());
    }
    Ok(())
}

/// Starts one configured console on `host` until `cancel` (an entry [`check`] refuses
/// is logged and not started).
pub fn spawn(host: &Host, d: &DeviceConfig, cancel: CancellationToken) -> JoinHandle<()> {
    match X32Settings::from_device(d) {
        Ok(settings) => host.spawn(move || settings.driver(), cancel),
        Err(e) => {
            tracing::error!(device = %format!("{}/{}", d.room, d.name), error = %e, "not started");
            tokio::spawn(async {})
        }
    }
}
