//! A strict PJLink projector over real TCP, for testing adapters without hardware.
//!
//! [`Sim::start`] binds and greets every connection; commands are answered as the spec
//! and the manuals cited in [`crate::devices::pjlink`] describe: the digest in front of
//! the first command when a password is set, `ERR3` for what needs the lamp on or
//! arrives during warm-up or cool-down, `ERR2` for bad parameters, `ERR1` for commands
//! the model does not define. [`Panel`] is the projector's own front panel; its changes
//! are visible to controllers and, on class 2 models, sent as UDP status notifications
//! to [`SimConfig::notify`]. [`Sim::inject`] writes raw bytes to every controller;
//! [`Sim::stop`] kills the device.
//!
//! Choices where the sources are silent or devices differ (this is the strict end):
//! a line that is not a PJLink command (no `%`, class other than 1 or 2, lower-case
//! body, control bytes, a digest where none is due, [`MAX_FIRST_LINE`] bytes without a
//! CR) closes the connection without a reply; a well-formed command the model lacks
//! gets `ERR1`; set commands during warm-up or cool-down get `ERR3`, `POWR 1` with a
//! fan, lamp or temperature error `ERR4`; `INPT ?`, `AVMT ?`, `FREZ ?` and `IRES ?`
//! need the lamp on; `%1INST ?` lists only the inputs class 1 can name; connections
//! beyond [`SimConfig::max_connections`] are accepted and closed without a greeting.
//!
//! One task accepts, one serves each connection, one short task runs each warm-up or
//! cool-down; all end when the simulator stops. Device state sits behind a std `Mutex`
//! that is never held across an `.await`: every use is a few field updates.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::proto::{
    format_lamps, format_line, next_line, parse_line, write_line, AuthRandom, AvMute, AvMuteSet,
    Body, Class, Command, ErrorCode, ErrorLevel, ErrorStatus, Greeting, InputCode, InputKind, Lamp,
    MacAddress, Message, Notification, PowerState, Reply, Response, Text, MAX_FIRST_LINE,
};

/// Injected writes queued per connection; more are dropped (and logged), so a
/// controller that stopped reading cannot grow the simulator's memory.
const INJECT_QUEUE: usize = 16;
/// Bytes read at a time; with [`MAX_FIRST_LINE`] this bounds each read buffer.
const READ_CHUNK: usize = 512;
/// `NAME ?` is at most 64 bytes (`INF1`, `INF2`, `INFO`, `SNUM`, `SVER`: 32).
const MAX_NAME: usize = 64;
const MANUFACTURER: &str = "avbus";
const PRODUCT: &str = "PJ-SIM";
const SERIAL: &str = "SIM0001";
const SOFTWARE: &str = "1.0";
const RESOLUTION: &str = "1920x1080";
const FILTER_HOURS: &str = "300";
const LAMP_MODEL: &str = "LMP-SIM1";
const FILTER_MODEL: &str = "FLT-SIM1";

/// How the simulated projector behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `Some`: the greeting is `PJLINK 1 <random>` and the first command needs the digest.
    pub password: Option<String>,
    /// PJLink class, 1 or 2 (class 2 adds `%2` commands and UDP notifications).
    pub class: u8,
    /// `NAME ?`, at most 64 bytes.
    pub name: String,
    /// Input codes (`INST ?`), e.g. `["11", "31"]`; the first is selected at start.
    pub inputs: Vec<String>,
    /// How long `POWR 1` stays in warm-up (`POWR ?` = 3).
    pub warmup: Duration,
    /// How long `POWR 0` stays in cool-down (`POWR ?` = 2).
    pub cooldown: Duration,
    /// Close a connection that sent nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Controllers served at once (some models: 1).
    pub max_connections: usize,
    /// A laser light source: `LAMP ?` answers `ERR1`.
    pub laser: bool,
    /// Lamp hours at start; they advance while the lamp is lit.
    pub lamp_hours: u32,
    /// The MAC address in `%2LKUP`.
    pub mac: [u8; 6],
    /// Class 2: where status notifications go by UDP (on real projectors, a controller
    /// address from the setup menu or web page).
    pub notify: Option<SocketAddr>,
}

impl Default for SimConfig {
    /// A class 1 lamp projector with real-world timings: 30 s warm-up, 90 s cool-down,
    /// one controller at a time, idle connections closed after 30 s.
    fn default() -> SimConfig {
        SimConfig {
            password: None,
            class: 1,
            name: "avbus projector".into(),
            inputs: ["11", "12", "31", "32", "33"].map(String::from).to_vec(),
            warmup: Duration::from_secs(30),
            cooldown: Duration::from_secs(90),
            idle_timeout: Some(Duration::from_secs(30)),
            max_connections: 1,
            laser: false,
            lamp_hours: 1200,
            // Locally administered, so nobody's real address.
            mac: [0x02, 0x00, 0x5e, 0x10, 0x43, 0x52],
            notify: None,
        }
    }
}

impl SimConfig {
    /// For tests: 50 ms transitions and room for several controllers.
    pub fn fast() -> SimConfig {
        let ms = Duration::from_millis(50);
        let (warmup, cooldown, max_connections) = (ms, ms, 8);
        SimConfig {
            warmup,
            cooldown,
            max_connections,
            ..SimConfig::default()
        }
    }
}

/// A snapshot of the simulated projector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimState {
    pub power: PowerState,
    pub input: InputCode,
    pub mute: AvMute,
    pub freeze: bool,
    pub errors: ErrorStatus,
    pub lamp_hours: u32,
    /// Controllers connected right now.
    pub connections: usize,
}

/// Identifies one controller connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SessionId(u64);

/// What the simulated hardware is doing.
#[derive(Debug, Clone, Copy)]
struct Device {
    power: PowerState,
    /// Bumped at each warm-up or cool-down, so a superseded timer does nothing.
    transition: u64,
    input: InputCode,
    mute: AvMute,
    freeze: bool,
    errors: ErrorStatus,
    lamp_seconds: u64,
    lit_since: Option<Instant>,
}

impl Device {
    fn on(&self) -> Result<(), ErrorCode> {
        match self.power {
            PowerState::On => Ok(()),
            _ => Err(ErrorCode::UnavailableTime),
        }
    }

    /// Changes power, keeping lamp time: the lamp is lit in warm-up and on.
    fn set_power(&mut self, power: PowerState) {
        let lit = matches!(power, PowerState::WarmUp | PowerState::On);
        match (self.lit_since, lit) {
            (None, true) => self.lit_since = Some(Instant::now()),
            (Some(since), false) => {
                self.lamp_seconds += since.elapsed().as_secs();
                self.lit_since = None;
            }
            _ => {}
        }
        self.power = power;
    }

    /// A failure that keeps the lamp from striking: power-on answers `ERR4`.
    fn failed(&self) -> bool {
        let e = &self.errors;
        [e.fan, e.lamp, e.temperature].contains(&ErrorLevel::Error)
    }

    fn lamp(&self) -> Lamp {
        let lit = self.lit_since.map_or(0, |since| since.elapsed().as_secs());
        let hours = u32::try_from((self.lamp_seconds + lit) / 3600).unwrap_or(u32::MAX);
        Lamp {
            hours,
            on: self.lit_since.is_some(),
        }
    }

    fn state(&self, connections: usize) -> SimState {
        let (power, input, mute, freeze, errors) =
            (self.power, self.input, self.mute, self.freeze, self.errors);
        let lamp_hours = self.lamp().hours;
        SimState {
            power,
            input,
            mute,
            freeze,
            errors,
            lamp_hours,
            connections,
        }
    }
}

/// State shared by the accept task, the connection tasks, [`Sim`] and [`Panel`].
struct Shared {
    cfg: SimConfig,
    class: Class,
    inputs: Vec<InputCode>,
    device: Mutex<Device>,
    changes: watch::Sender<SimState>,
    sessions: Mutex<HashMap<SessionId, mpsc::Sender<Bytes>>>,
    next_session: AtomicU64,
    /// A std socket: a datagram send does not wait, and a fresh tokio socket refuses
    /// `try_send_to` until the runtime has polled it.
    udp: Option<UdpSocket>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these plain fields half-updated.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn value(text: impl Into<String>) -> Result<Reply, ErrorCode> {
    // The name is validated at start; every other value is short ASCII.
    Text::new(text)
        .map(Reply::Value)
        .map_err(|_| ErrorCode::Failure)
}

fn ok((): ()) -> Reply {
    Reply::Ok
}

fn input_name(code: InputCode) -> String {
    let kind = match code.kind() {
        InputKind::Rgb => "RGB",
        InputKind::Video => "VIDEO",
        InputKind::Digital => "DIGITAL",
        InputKind::Storage => "STORAGE",
        InputKind::Network => "NETWORK",
        InputKind::Internal => "INTERNAL",
    };
    format!("{kind} {}", code.number())
}

impl Shared {
    fn snapshot(&self) -> SimState {
        let connections = lock(&self.sessions).len();
        lock(&self.device).state(connections)
    }

    /// Publishes the current state. The snapshot is taken inside the watch's lock, so
    /// the last one published is always the newest.
    fn publish(&self) {
        self.changes.send_if_modified(|state| {
            let now = self.snapshot();
            let changed = *state != now;
            *state = now;
            changed
        });
    }

    /// Changes the device, then publishes and, on class 2, notifies.
    fn with_device<R>(&self, f: impl FnOnce(&mut Device) -> R) -> R {
        let (result, before, after) = {
            let mut d = lock(&self.device);
            let before = (d.power, d.input, d.errors);
            (f(&mut d), before, (d.power, d.input, d.errors))
        };
        self.publish();
        let changes = [
            (before.0 != after.0, Notification::Power(after.0)),
            (before.1 != after.1, Notification::Input(after.1)),
            (before.2 != after.2, Notification::Errors(after.2)),
        ];
        for (_, notification) in changes.into_iter().filter(|(changed, _)| *changed) {
            self.notify(notification);
        }
        result
    }

    /// Sends a class 2 status notification by UDP: best effort, like the real thing.
    fn notify(&self, notification: Notification) {
        let (Some(udp), Some(to)) = (&self.udp, self.cfg.notify) else {
            return;
        };
        let line = format_line(&Message::Response(notification.to_response()));
        if let Err(e) = udp.send_to(&line, to) {
            debug!(%to, error = %e, "PJLink sim: notification lost");
        }
    }

    fn power(self: &Arc<Self>, on: bool) -> Result<(), ErrorCode> {
        let started = self.with_device(|d| {
            let (next, after) = match (on, d.power) {
                (true, PowerState::On) | (false, PowerState::Standby) => return Ok(None),
                (_, PowerState::WarmUp | PowerState::Cooling) => {
                    return Err(ErrorCode::UnavailableTime)
                }
                (true, _) if d.failed() => return Err(ErrorCode::Failure),
                (true, _) => (PowerState::WarmUp, self.cfg.warmup),
                (false, _) => (PowerState::Cooling, self.cfg.cooldown),
            };
            d.set_power(next);
            d.transition += 1;
            Ok(Some((d.transition, after)))
        })?;
        let Some((transition, after)) = started else {
            return Ok(());
        };
        let shared = Arc::clone(self);
        let finish = async move {
            tokio::select! {
                () = shared.cancel.cancelled() => {}
                () = tokio::time::sleep(after) => shared.with_device(|d| {
                    match (d.transition == transition, d.power) {
                        (true, PowerState::WarmUp) => d.set_power(PowerState::On),
                        (true, PowerState::Cooling) => d.set_power(PowerState::Standby),
                        _ => {}
                    }
                }),
            }
        };
        self.tracker.spawn_on(finish, &self.runtime);
        Ok(())
    }

    /// Selects `code` if this model has it and, for class 1 commands, class 1 names it.
    fn select_input(&self, code: &str, class: Class) -> Result<(), ErrorCode> {
        let code = InputCode::parse(code).map_err(|_| ErrorCode::OutOfParameter)?;
        if !self.inputs.contains(&code) || (class == Class::One && !code.is_class1()) {
            return Err(ErrorCode::OutOfParameter);
        }
        self.with_device(|d| d.on().map(|()| d.input = code))
    }

    /// Answers one command as the projector would.
    fn execute(self: &Arc<Self>, cmd: &Command) -> Reply {
        use ErrorCode::{OutOfParameter, Undefined};
        let (cfg, param, query) = (&self.cfg, cmd.param.as_str(), cmd.is_query());
        let d = *lock(&self.device);
        let on = d.on();
        // Query-only commands: any parameter but `?` is out of range.
        let get = |answer| if query { answer } else { Err(OutOfParameter) };
        let listed = |class| {
            self.inputs
                .iter()
                .filter(move |c| class == Class::Two || c.is_class1())
        };
        let result = match (cmd.class, cmd.body) {
            (Class::Two, _) if self.class == Class::One => Err(Undefined),
            (Class::One, Body::POWR) if query => value(d.power.as_str()),
            (Class::One, Body::POWR) => match param {
                "0" | "1" => self.power(param == "1").map(ok),
                _ => Err(OutOfParameter),
            },
            (_, Body::INPT) if query => on.and_then(|()| value(d.input.to_string())),
            (class, Body::INPT) => self.select_input(param, class).map(ok),
            (class, Body::INST) => get(value(
                listed(class)
                    .map(InputCode::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
            (Class::One, Body::AVMT) if query => on.and_then(|()| value(d.mute.as_str())),
            (Class::One, Body::AVMT) => match AvMuteSet::parse(param) {
                Ok(set) => self.with_device(|d| d.on().map(|()| d.mute = d.mute.apply(set))),
                Err(_) => Err(OutOfParameter),
            }
            .map(ok),
            (Class::One, Body::ERST) => get(value(d.errors.to_string())),
            (Class::One, Body::LAMP) if cfg.laser => Err(Undefined),
            (Class::One, Body::LAMP) => get(value(format_lamps(&[d.lamp()]))),
            (Class::One, Body::NAME) => get(value(cfg.name.as_str())),
            (Class::One, Body::INF1) => get(value(MANUFACTURER)),
            (Class::One, Body::INF2) => get(value(PRODUCT)),
            (Class::One, Body::INFO) => get(value("")),
            (Class::One, Body::CLSS) => get(value(self.class.as_str())),
            (Class::Two, Body::SNUM) => get(value(SERIAL)),
            (Class::Two, Body::SVER) => get(value(SOFTWARE)),
            (Class::Two, Body::INNM) => match param.strip_prefix('?').map(InputCode::parse) {
                Some(Ok(code)) if self.inputs.contains(&code) => value(input_name(code)),
                _ => Err(OutOfParameter),
            },
            (Class::Two, Body::IRES) => get(on.and_then(|()| value(RESOLUTION))),
            (Class::Two, Body::RRES) => get(value(RESOLUTION)),
            (Class::Two, Body::FILT) => get(value(FILTER_HOURS)),
            (Class::Two, Body::RLMP) => get(value(if cfg.laser { "" } else { LAMP_MODEL })),
            (Class::Two, Body::RFIL) => get(value(FILTER_MODEL)),
            (Class::Two, Body::SVOL | Body::MVOL) if matches!(param, "0" | "1") => on.map(ok),
            (Class::Two, Body::FREZ) if query => {
                on.and_then(|()| value(u8::from(d.freeze).to_string()))
            }
            (Class::Two, Body::FREZ) if matches!(param, "0" | "1") => self
                .with_device(|d| d.on().map(|()| d.freeze = param == "1"))
                .map(ok),
            (Class::Two, Body::SVOL | Body::MVOL | Body::FREZ) => Err(OutOfParameter),
            _ => Err(Undefined),
        };
        result.unwrap_or_else(Reply::Error)
    }

    /// Registers a connection, unless the model's limit is reached.
    fn register(&self) -> Option<(SessionId, mpsc::Receiver<Bytes>)> {
        let (tx, rx) = mpsc::channel(INJECT_QUEUE);
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= self.cfg.max_connections {
            return None;
        }
        let id = SessionId(self.next_session.fetch_add(1, Ordering::Relaxed));
        sessions.insert(id, tx);
        drop(sessions);
        self.publish();
        Some((id, rx))
    }
}

/// Removes a connection from the registry however its task ends.
struct SessionGuard {
    shared: Arc<Shared>,
    id: SessionId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        lock(&self.shared.sessions).remove(&self.id);
        self.shared.publish();
    }
}

/// Answers one line, appending the reply to `out`; `false`: close the connection.
fn handle_line(
    shared: &Arc<Shared>,
    line: &[u8],
    challenge: &mut Option<AuthRandom>,
    out: &mut Vec<u8>,
) -> bool {
    let password = shared.cfg.password.as_deref().unwrap_or("");
    let command = match (parse_line(line), challenge.take()) {
        // §5.1: the digest comes in front of the first command, and only there.
        (
            Ok(Message::Command {
                digest: Some(d),
                command,
            }),
            Some(random),
        ) if d.matches(&random, password) => command,
        (_, Some(_)) => {
            write_line(&Message::AuthError, out);
            return false;
        }
        (
            Ok(Message::Command {
                digest: None,
                command,
            }),
            None,
        ) => command,
        (Ok(other), None) => {
            debug!(?other, "PJLink sim: not a command; dropping controller");
            return false;
        }
        (Err(e), None) => {
            debug!(error = %e, "PJLink sim: dropping controller");
            return false;
        }
    };
    let reply = shared.execute(&command);
    write_line(&Message::Response(Response::to(&command, reply)), out);
    true
}

async fn idle(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Serves one controller until it leaves, misbehaves, idles out or the sim stops.
async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    id: SessionId,
    mut injected: mpsc::Receiver<Bytes>,
) {
    let _guard = SessionGuard {
        shared: Arc::clone(&shared),
        id,
    };
    let (mut rd, mut wr) = stream.into_split();
    let mut challenge = shared.cfg.password.as_ref().map(|_| AuthRandom::generate());
    let greeting = challenge
        .clone()
        .map_or(Greeting::Open, Greeting::Challenge);
    if wr
        .write_all(&format_line(&Message::Greeting(greeting)))
        .await
        .is_err()
    {
        return;
    }
    let idle_timeout = shared.cfg.idle_timeout;
    let mut deadline = idle_timeout.map(|t| tokio::time::Instant::now() + t);
    let mut buf = BytesMut::with_capacity(MAX_FIRST_LINE + READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    let mut out = Vec::new();
    let mut open = true;
    while open {
        tokio::select! {
            // Stopped: the connection dies with the device.
            () = shared.cancel.cancelled() => return,
            // Nothing received for too long.
            () = idle(deadline) => break,
            // Raw bytes from `Sim::inject`, written as they are.
            Some(bytes) = injected.recv() => {
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            read = rd.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // Answer every complete line, then write all replies at once.
                while open {
                    match next_line(&mut buf) {
                        Ok(Some(line)) => {
                            deadline = idle_timeout.map(|t| tokio::time::Instant::now() + t);
                            open = handle_line(&shared, &line, &mut challenge, &mut out);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "PJLink sim: dropping controller");
                            open = false;
                        }
                    }
                }
                if !out.is_empty() && wr.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
    }
    let _ = wr.shutdown().await;
}

async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = tokio::select! {
            // Stopped: returning drops the listener and frees the port.
            () = shared.cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    debug!(error = %e, "PJLink sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the limit: accepted and closed (dropped), no greeting.
        if let Some((id, injected)) = shared.register() {
            let _ = stream.set_nodelay(true);
            shared
                .tracker
                .spawn(serve(Arc::clone(&shared), stream, id, injected));
        }
    }
}

/// Checks the configuration; returns the class and the inputs.
fn validate(cfg: &SimConfig) -> io::Result<(Class, Vec<InputCode>)> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let class = Class::parse(&cfg.class.to_string()).map_err(|e| invalid(e.to_string()))?;
    let mut inputs = Vec::new();
    for code in &cfg.inputs {
        let input = InputCode::parse(code).map_err(|e| invalid(e.to_string()))?;
        if class == Class::One && !input.is_class1() {
            return Err(invalid(format!("input {code} needs class 2")));
        }
        inputs.push(input);
    }
    if inputs.is_empty() || cfg.max_connections == 0 {
        return Err(invalid(
            "a projector needs an input and a connection".into(),
        ));
    }
    Text::new(cfg.name.as_str()).map_err(|e| invalid(e.to_string()))?;
    if cfg.name.len() > MAX_NAME {
        return Err(invalid(format!("name longer than {MAX_NAME} bytes")));
    }
    Ok((class, inputs))
}

/// A running simulated projector.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Sim {
    /// Binds `listen` (port 0 picks one) and serves until [`Sim::stop`] or drop.
    ///
    /// # Errors
    /// `InvalidInput` for a bad [`SimConfig`]; the bind error otherwise.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> io::Result<Sim> {
        let (class, inputs) = validate(&cfg)?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let udp = match (class, cfg.notify) {
            (Class::Two, Some(SocketAddr::V4(_))) => {
                Some(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?)
            }
            (Class::Two, Some(SocketAddr::V6(_))) => {
                Some(UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?)
            }
            _ => None,
        };
        let device = Device {
            power: PowerState::Standby,
            transition: 0,
            input: inputs[0],
            mute: AvMute::default(),
            freeze: false,
            errors: ErrorStatus::default(),
            lamp_seconds: u64::from(cfg.lamp_hours) * 3600,
            lit_since: None,
        };
        let mac = MacAddress(cfg.mac);
        let shared = Arc::new(Shared {
            cfg,
            class,
            inputs,
            changes: watch::Sender::new(device.state(0)),
            device: Mutex::new(device),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
            udp,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        // The network link just came up.
        shared.notify(Notification::LinkUp(mac));
        shared.tracker.spawn(accept(Arc::clone(&shared), listener));
        Ok(Sim { addr, shared })
    }

    /// The address controllers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The projector's own front panel and remote.
    pub fn panel(&self) -> Panel {
        Panel {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The state right now.
    pub fn state(&self) -> SimState {
        self.shared.snapshot()
    }

    /// Every change (power steps, input, mute, errors, connections); newest only.
    pub fn changes(&self) -> watch::Receiver<SimState> {
        self.shared.changes.subscribe()
    }

    /// Writes `bytes` as they are to every connected controller (behind at most
    /// 16 earlier injections; beyond that they are dropped and logged).
    pub fn inject(&self, bytes: &[u8]) {
        let bytes = Bytes::copy_from_slice(bytes);
        for (id, tx) in lock(&self.shared.sessions).iter() {
            if tx.try_send(bytes.clone()).is_err() {
                debug!(?id, "PJLink sim: injection dropped, queue full");
            }
        }
    }

    /// Kills the device: closes the listener and every connection and waits for all
    /// its tasks to end. Starting again on [`Sim::addr`] brings it back.
    pub async fn stop(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// The projector's front panel and IR remote: same rules as network commands, and
/// the changes are visible to every controller.
#[derive(Clone)]
pub struct Panel {
    shared: Arc<Shared>,
}

impl Panel {
    /// Power on: warm-up, then on.
    ///
    /// # Errors
    /// `UnavailableTime` during a transition; `Failure` with a fan, lamp or
    /// temperature error.
    pub fn power_on(&self) -> Result<(), ErrorCode> {
        self.shared.power(true)
    }

    /// Power off: cool-down, then standby.
    ///
    /// # Errors
    /// `UnavailableTime` during a transition.
    pub fn power_off(&self) -> Result<(), ErrorCode> {
        self.shared.power(false)
    }

    /// Selects an input, e.g. `"32"`.
    ///
    /// # Errors
    /// `OutOfParameter` for an input the model lacks; `UnavailableTime` unless on.
    pub fn select_input(&self, code: &str) -> Result<(), ErrorCode> {
        self.shared.select_input(code, self.shared.class)
    }

    /// Sets video and audio mute.
    ///
    /// # Errors
    /// `UnavailableTime` unless on.
    pub fn set_mute(&self, mute: AvMute) -> Result<(), ErrorCode> {
        self.shared.with_device(|d| d.on().map(|()| d.mute = mute))
    }

    /// Raises or clears warnings and errors (`ERST ?`).
    pub fn set_error(&self, errors: ErrorStatus) {
        self.shared.with_device(|d| d.errors = errors);
    }

    /// Sets the lamp hour counter (a lamp change).
    pub fn set_lamp_hours(&self, hours: u32) {
        self.shared.with_device(|d| {
            d.lamp_seconds = u64::from(hours) * 3600;
            d.lit_since = d.lit_since.map(|_| Instant::now());
        });
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
