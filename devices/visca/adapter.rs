//! The VISCA-over-IP PTZ camera adapter: a [`Driver`] for the adapter kit that speaks
//! [`super::proto`] to one camera over a connected UDP socket (port 52381).
//!
//! # Mapping
//! | control | kind | VISCA |
//! |---|---|---|
//! | `power` | enum `off` `warming` `on` `cooling` | `CAM_Power` `81 01 04 00 02/03 FF`, `CAM_PowerInq` |
//! | `pan_left` `pan_right` `tilt_up` `tilt_down` | momentary | `Pan-tiltDrive` `81 01 06 01 VV WW 0x 0y FF` |
//! | `zoom_in` `zoom_out` | momentary | `CAM_Zoom` tele/wide `2p`/`3p`, stop `00` |
//! | `recall` `store` | trigger `{"preset": n}` or `n` | `CAM_Memory` recall/set `81 01 04 3F 02/01 pp FF` |
//! | `home` | trigger | `Pan-tiltHome` `81 01 06 04 FF` |
//! | `pan` `tilt` `zoom` | read-only int, raw VISCA units | `Pan-tiltPosInq`, `CAM_ZoomPosInq` |
//!
//! Pressing a momentary control (`true`) starts a continuous move, releasing it
//! (`false`) stops that axis; pan and tilt combine into one diagonal drive. A release
//! is always sent to the camera, even if this driver never saw the press (a restarted
//! driver, or the bus releasing the button of a panel that vanished). Positions are
//! the camera's own units, declared over the whole 16-bit wire range because every
//! model has its own limits (an SRG-300 pans `DE00`..=`2200`, ±170°); they reach
//! panels by polling, so moves made with the camera's IR remote show up too.
//!
//! Power: switching takes seconds on a real camera (6 s on an SRG-300), longer than a
//! panel's command deadline. The command is answered once the camera has accepted it
//! (ACK), after waiting briefly for the completion: if the completion came, `power` is
//! `on`/`off`, otherwise `warming`/`cooling` until the power inquiry (or the late
//! completion, which [`Driver::next_event`] watches for) shows the new state. Commands
//! meanwhile are refused by the camera ("not executable") and answered `busy`.
//!
//! # Request engine and retransmission
//! One message at a time (the kit runs commands and polls one at a time), each with
//! the next sequence number; `connect` sends control `RESET` first and numbers from 1,
//! as Sony's manual and `bitfocus/companion-module-sony-visca` (`src/visca.js`) do.
//! A message unanswered within [`Retry::try_timeout`] is sent again with the **same**
//! number, up to [`Retry::tries`] times, after Sony's retransmission table (SRG-300H
//! technical manual, <https://manualshive.com/en/manual/sony/srg300h/400108?page=32>):
//! * control `ERROR 0F 01` to a retransmission means the first copy was performed and
//!   only its reply was lost: a command counts as accepted (its completion may still
//!   come), an inquiry is asked again with a new number;
//! * `0F 01` to a first copy means the camera lost our numbering (it restarted): the
//!   driver sends `RESET` and sends the message again, once;
//! * `90 60 03` buffer full → `busy`; `90 6y 41` not executable → `busy` ("the camera
//!   is in standby" or "switching power"); `90 60 02` syntax → `invalid_value`;
//! * no answer after every try → [`DeviceError::Unreachable`]: the kit marks the camera
//!   offline and reconnects with backoff. So does an ICMP "port unreachable".
//!
//! Datagrams for other sequence numbers (late completions, stray replies) are logged
//! at debug and ignored; undecodable ones are logged with their bytes, escaped. Other
//! sources are listed in [`super`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{
    Answer, Command, Direction, Inquiry, Power, PresetAction, Seq, Speed, ViscaError, Zoom, PORT,
};
use crate::config::DeviceConfig;
use crate::devices::kit::{
    Changes, CommandFailure, DeviceCommand, DeviceError, Driver, Host, Timing,
};
use crate::model::{Access, ControlKind, ControlSpec, DeviceDescriptor, EnumOption};
use crate::protocol::{CommandOp, ErrorCode};
use crate::value::{as_number, Value};
use engine::{decode, Event, Expect, Link, Outcome};

mod engine;

/// Position poll interval unless `poll_ms` says otherwise: positions only reach
/// panels through inquiries, so this is how late a move made at the camera shows.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// How long a recall or home waits for its completion before answering anyway (the
/// positions then show the camera on its way). Below a panel's 5 s command deadline.
pub const DEFAULT_MOVE_WAIT: Duration = Duration::from_secs(2);
/// How long a power command waits for its completion after the ACK: long enough for
/// a camera already in that state, short enough that a real switch is answered
/// promptly as `warming`/`cooling`.
const POWER_WAIT: Duration = Duration::from_millis(300);
/// After this, a switch the power inquiry still does not show is taken as failed and
/// the inquiry is believed.
const SWITCH_LIMIT: Duration = Duration::from_secs(30);
/// Receive buffer: larger than any valid datagram (24 bytes) so that an oversized one
/// is seen as too long rather than truncated into something valid.
const RECV_BUF: usize = 2048;
/// Drive speeds: mid-table (about 47°/s pan, 31°/s tilt on an SRG-300), usable for
/// framing by hand.
const DRIVE_SPEED: Speed = Speed {
    pan: 0x0C,
    tilt: 0x0A,
};
/// Variable zoom speed (0..=7).
const ZOOM_SPEED: u8 = 4;
/// Largest preset number (`FF` means "no number" in `CAM_Memory`).
const MAX_PRESET: u8 = 0xFE;

/// The momentary controls: name, label, axis, sense (right, up and in are +1).
const MOMENTARY: [(&str, &str, Axis, i8); 6] = [
    ("pan_left", "Pan left", Axis::Pan, -1),
    ("pan_right", "Pan right", Axis::Pan, 1),
    ("tilt_up", "Tilt up", Axis::Tilt, 1),
    ("tilt_down", "Tilt down", Axis::Tilt, -1),
    ("zoom_in", "Zoom in", Axis::Zoom, 1),
    ("zoom_out", "Zoom out", Axis::Zoom, -1),
];

/// What [`Driver::execute`] answers.
type Answered = Result<Result<Changes, CommandFailure>, DeviceError>;

pub use crate::devices::udp::{LocalAddr, Retry};

/// The default retransmission: 200 ms (a camera on a LAN answers within
/// milliseconds; this rides out a busy switch without stalling a panel), 3 copies.
pub const DEFAULT_RETRY: Retry = Retry {
    try_timeout: Duration::from_millis(200),
    tries: 3,
};

/// Everything a [`ViscaDriver`] is made from; cheap to clone, so the kit's `make`
/// closure builds a fresh driver from it after a panic.
#[derive(Debug, Clone)]
pub struct ViscaSettings {
    pub room: String,
    pub name: String,
    pub label: String,
    /// Camera host name or address.
    pub host: String,
    pub port: u16,
    pub poll: Duration,
    pub retry: Retry,
    /// See [`DEFAULT_MOVE_WAIT`].
    pub move_wait: Duration,
    local: LocalAddr,
}

impl ViscaSettings {
    /// Settings from a `[[device]] driver = "visca"` entry, with the defaults above.
    ///
    /// # Errors
    /// As [`check`].
    pub fn from_device(d: &DeviceConfig) -> Result<ViscaSettings, String> {
        check(d)?;
        Ok(ViscaSettings {
            room: d.room.clone(),
            name: d.name.clone(),
            label: d.label.clone().unwrap_or_else(|| "PTZ camera".into()),
            host: d.host.clone().unwrap_or_default(),
            port: d.port.unwrap_or(PORT),
            poll: d.poll_ms.map_or(DEFAULT_POLL, Duration::from_millis),
            retry: DEFAULT_RETRY,
            move_wait: DEFAULT_MOVE_WAIT,
            local: LocalAddr::default(),
        })
    }

    /// Where the drivers made from these settings are bound.
    pub fn local_addr(&self) -> LocalAddr {
        self.local.clone()
    }

    /// A driver, not yet connected.
    pub fn driver(&self) -> ViscaDriver {
        ViscaDriver {
            camera: format!("{}:{}", self.host, self.port),
            settings: self.clone(),
            link: None,
            held: Held::default(),
            switch: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    Pan = 0,
    Tilt = 1,
    Zoom = 2,
}

/// Which way panels drive each axis (indexed by [`Axis`]): -1, 0 or 1.
#[derive(Debug, Clone, Copy, Default)]
struct Held([i8; 3]);

impl Held {
    /// The command that drives `axis` as held now (pan and tilt go together).
    fn command(&self, axis: Axis) -> Command {
        let [pan, tilt, zoom] = self.0;
        if axis == Axis::Zoom {
            return Command::Zoom(match zoom {
                1 => Zoom::Tele(Some(ZOOM_SPEED)),
                -1 => Zoom::Wide(Some(ZOOM_SPEED)),
                _ => Zoom::Stop,
            });
        }
        use Direction::*;
        let all = [Up, Down, Left, Right, UpLeft, UpRight, DownLeft, DownRight];
        let direction = all.into_iter().find(|d| (d.pan(), d.tilt()) == (pan, tilt));
        Command::Drive(direction.unwrap_or(Stop), DRIVE_SPEED)
    }

    /// The pressed state of the momentary controls of `axis` (all when `None`).
    fn changes(&self, axis: Option<Axis>) -> Changes {
        MOMENTARY
            .iter()
            .filter(|(_, _, a, _)| axis.is_none_or(|x| x == *a))
            .map(|(name, _, a, sense)| ((*name).into(), (self.0[*a as usize] == *sense).into()))
            .collect()
    }
}

/// A power command the camera accepted but has not completed.
#[derive(Debug, Clone, Copy)]
struct Switch {
    to: Power,
    seq: Seq,
    since: Instant,
}

/// A VISCA-over-IP camera driven through the adapter kit.
pub struct ViscaDriver {
    settings: ViscaSettings,
    /// `host:port`, for logs and errors.
    camera: String,
    link: Option<Link>,
    held: Held,
    switch: Option<Switch>,
}

impl ViscaDriver {
    /// A driver for a `[[device]] driver = "visca"` entry, with default timing.
    ///
    /// # Errors
    /// As [`check`].
    pub fn new(d: &DeviceConfig) -> Result<ViscaDriver, String> {
        ViscaSettings::from_device(d).map(|s| s.driver())
    }

    /// A datagram for no message in flight; true if it completed a power switch.
    fn stray(&mut self, seq: Seq, event: Event) -> bool {
        let done = event == Event::Completion && self.switch.is_some_and(|s| s.seq == seq);
        if done {
            self.switch = None;
        }
        tracing::debug!(camera = %self.camera, %seq, ?event, done, "stray datagram");
        done
    }

    async fn inquire(&mut self, inquiry: Inquiry) -> Result<Option<Answer>, DeviceError> {
        let outcome = self
            .request(inquiry.encode(), Expect::Answer(inquiry))
            .await?;
        Ok(match outcome {
            Outcome::Answer(a) => Some(a),
            _ => None,
        })
    }

    /// Pan, tilt and zoom as the camera reports them (each skipped if refused).
    async fn positions(&mut self) -> Result<Changes, DeviceError> {
        let mut changes = Changes::new();
        if let Some(Answer::PanTiltPosition(p)) = self.inquire(Inquiry::PanTiltPosition).await? {
            changes.push(("pan".into(), p.pan.into()));
            changes.push(("tilt".into(), p.tilt.into()));
        }
        if let Some(Answer::ZoomPosition(z)) = self.inquire(Inquiry::ZoomPosition).await? {
            changes.push(("zoom".into(), z.into()));
        }
        Ok(changes)
    }

    /// Runs a command: whether it completed within `wait` and the number it went out
    /// with last (a resync renumbers it), or the camera's refusal.
    async fn command(
        &mut self,
        command: Command,
        wait: Duration,
    ) -> Result<Result<(bool, Seq), ViscaError>, DeviceError> {
        let outcome = self
            .request(command.encode(), Expect::Completion(wait))
            .await?;
        let seq = self.link.as_ref().map_or(Seq(0), |l| l.last);
        match outcome {
            Outcome::Accepted(completed) => Ok(Ok((completed, seq))),
            Outcome::Refused(e) => Ok(Err(e)),
            Outcome::Answer(_) => Err(DeviceError::Protocol("a command got data".into())),
        }
    }

    /// A VISCA error reply, worded for a panel.
    fn refusal(&self, e: ViscaError) -> CommandFailure {
        let message = match e {
            ViscaError::Syntax => "the camera refused the command as malformed or out of range",
            ViscaError::BufferFull => "both of the camera's command sockets are busy",
            ViscaError::NotExecutable if self.switch.is_some() => "the camera is switching power",
            ViscaError::NotExecutable => "the camera cannot do that now: in standby or switching",
            ViscaError::Cancelled => "the command was cancelled",
            ViscaError::NoSocket | ViscaError::MessageLength => "the camera refused the command",
        };
        let code = match e {
            ViscaError::Syntax => ErrorCode::InvalidValue,
            _ => ErrorCode::Busy,
        };
        CommandFailure::new(code, message)
    }

    async fn set_power(&mut self, value: &Value) -> Answered {
        let to = match value.as_str() {
            Some("on") => Power::On,
            Some("off") => Power::Off,
            _ => return Ok(refuse(ErrorCode::InvalidValue, "set power to on or off")),
        };
        let (completed, seq) = match self.command(Command::Power(to), POWER_WAIT).await? {
            Ok(done) => done,
            Err(e) => return Ok(Err(self.refusal(e))),
        };
        let since = Instant::now();
        self.switch = (!completed).then_some(Switch { to, seq, since });
        let mut changes = vec![("power".into(), power_option(to, completed).into())];
        if to == Power::Off {
            // Standby stops every motor: nothing is held any more.
            self.held = Held::default();
            changes.extend(self.held.changes(None));
        }
        Ok(Ok(changes))
    }

    async fn press(&mut self, axis: Axis, sense: i8, pressed: bool) -> Answered {
        let mut held = self.held;
        let slot = &mut held.0[axis as usize];
        if pressed {
            *slot = sense;
        } else if *slot == sense {
            *slot = 0;
        }
        let wait = self.settings.retry.try_timeout;
        match self.command(held.command(axis), wait).await? {
            Ok(_) => {}
            // In standby or switching power nothing moves: a release got what it wants
            // (the bus's release of a vanished panel included).
            Err(ViscaError::NotExecutable) if !pressed => {}
            Err(e) => return Ok(Err(self.refusal(e))),
        }
        self.held = held;
        let mut changes = held.changes(Some(axis));
        if held.0[axis as usize] == 0 {
            // Stopped: where it came to rest, without waiting for the next poll.
            changes.extend(self.positions().await?);
        }
        Ok(Ok(changes))
    }

    /// Recall, store; and home (`None`).
    async fn go(&mut self, action: Option<PresetAction>, args: &Value) -> Answered {
        let n = preset_number(args);
        let (command, wait) = match (action, n) {
            (None, _) => (Command::Home, self.settings.move_wait),
            (Some(a @ PresetAction::Recall), Some(n)) => {
                (Command::Preset(a, n), self.settings.move_wait)
            }
            (Some(a), Some(n)) => (Command::Preset(a, n), self.settings.retry.try_timeout),
            (Some(_), None) => {
                let rule = format!("takes {{\"preset\": 0..={MAX_PRESET}}} or a number");
                return Ok(refuse(ErrorCode::InvalidValue, rule));
            }
        };
        match self.command(command, wait).await? {
            Ok(_) if action == Some(PresetAction::Set) => Ok(Ok(Changes::new())),
            Ok(_) => Ok(Ok(self.positions().await?)),
            Err(ViscaError::Syntax) if action.is_some() => {
                let why = format!("the camera has no preset {}", n.unwrap_or_default());
                Ok(refuse(ErrorCode::InvalidValue, why))
            }
            Err(e) => Ok(Err(self.refusal(e))),
        }
    }
}

impl Driver for ViscaDriver {
    fn descriptor(&self) -> DeviceDescriptor {
        let s = &self.settings;
        descriptor(&s.room, &s.name, &s.label)
    }

    fn timing(&self) -> Timing {
        let Retry { try_timeout, tries } = self.settings.retry;
        let message = try_timeout * tries.max(1);
        Timing {
            poll: self.settings.poll,
            connect: Timing::default().connect.max(message * 2),
            // Three inquiries, each possibly with a RESET and re-asks.
            poll_timeout: message * 9 + Duration::from_secs(1),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
        }
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        self.disconnect().await;
        let camera = self.camera.clone();
        let io = |e: io::Error| DeviceError::Unreachable(format!("{camera}: {e}"));
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
        // Connected: the kernel drops datagrams from anyone but the camera, and ICMP
        // "port unreachable" reaches us as an error.
        socket.connect(addr).await.map_err(io)?;
        self.settings.local.set(socket.local_addr().ok());
        self.link = Some(Link {
            socket,
            next: Seq(1),
            last: Seq(0),
            buf: vec![0; RECV_BUF].into_boxed_slice(),
        });
        self.reset().await
    }

    async fn poll(&mut self) -> Result<Changes, DeviceError> {
        let Some(Answer::Power(power)) = self.inquire(Inquiry::Power).await? else {
            return Err(DeviceError::Protocol("power inquiry refused".into()));
        };
        let shown = match self.switch {
            Some(s) if s.to != power && s.since.elapsed() < SWITCH_LIMIT => {
                power_option(s.to, false)
            }
            _ => {
                self.switch = None;
                power_option(power, true)
            }
        };
        let mut changes = vec![("power".into(), shown.into())];
        if power == Power::On {
            changes.extend(self.positions().await?);
        }
        changes.extend(self.held.changes(None));
        Ok(changes)
    }

    async fn execute(&mut self, c: &DeviceCommand) -> Answered {
        let momentary = MOMENTARY.iter().find(|(name, ..)| *name == c.control);
        match (c.control.as_str(), c.op, momentary) {
            ("power", CommandOp::Set, _) => self.set_power(&c.value).await,
            (_, CommandOp::Set, Some((_, _, axis, sense))) => {
                let pressed = c.value.as_bool().unwrap_or(false);
                self.press(*axis, *sense, pressed).await
            }
            ("recall", CommandOp::Call, _) => self.go(Some(PresetAction::Recall), &c.value).await,
            ("store", CommandOp::Call, _) => self.go(Some(PresetAction::Set), &c.value).await,
            ("home", CommandOp::Call, _) => self.go(None, &c.value).await,
            (control, op, _) => {
                let why = format!("{control} does not take {op:?}");
                Ok(refuse(ErrorCode::NotWritable, why))
            }
        }
    }

    /// Between requests: watches for the late completion of a power switch, and logs
    /// (then drops) anything else the camera sends. Cancel-safe: a datagram is either
    /// still in the socket or fully handled.
    async fn next_event(&mut self) -> Result<Changes, DeviceError> {
        loop {
            let Some(link) = self.link.as_mut() else {
                return std::future::pending().await;
            };
            let n = match link.socket.recv(&mut link.buf).await {
                Ok(n) => n,
                // A late ICMP error: the next poll finds out whether the camera is gone.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(DeviceError::Unreachable(format!("receive: {e}"))),
            };
            let to = self.switch.map(|s| s.to);
            if let Some((seq, event)) = decode(&self.camera, &link.buf[..n]) {
                if let (true, Some(to)) = (self.stray(seq, event), to) {
                    return Ok(vec![("power".into(), power_option(to, true).into())]);
                }
            }
        }
    }

    async fn disconnect(&mut self) {
        self.link = None;
        self.settings.local.set(None);
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Result<Changes, CommandFailure> {
    Err(CommandFailure::new(code, message))
}

fn not_connected() -> DeviceError {
    DeviceError::Unreachable("not connected".into())
}

/// The `power` option of a switch to `to`, done or under way.
fn power_option(to: Power, done: bool) -> &'static str {
    match (to, done) {
        (Power::On, true) => "on",
        (Power::Off, true) => "off",
        (Power::On, false) => "warming",
        (Power::Off, false) => "cooling",
    }
}

/// `{"preset": n}` or `n`, within 0..=254.
fn preset_number(args: &Value) -> Option<u8> {
    let n = args
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("preset")))
        .map_or(args, |(_, v)| v);
    let n = as_number(n).filter(|f| f.fract() == 0.0)?;
    let ok = (0.0..=f64::from(MAX_PRESET)).contains(&n);
    ok.then_some(n as u8)
}

/// The descriptor of a VISCA camera at `room/name`.
pub fn descriptor(room: &str, name: &str, label: &str) -> DeviceDescriptor {
    let power = [
        ("off", "Standby"),
        ("warming", "Powering on"),
        ("on", "On"),
        ("cooling", "Powering off"),
    ];
    let options = power.map(|(id, label)| EnumOption {
        id: id.into(),
        label: label.into(),
    });
    let power = ControlSpec::new(
        "power",
        ControlKind::Enum {
            options: options.into(),
        },
    );
    let mut controls = vec![power.label("Power")];
    for (name, label, ..) in MOMENTARY {
        controls.push(ControlSpec::new(name, ControlKind::Momentary).label(label));
    }
    for (name, label) in [
        ("recall", "Recall preset"),
        ("store", "Store preset"),
        ("home", "Home"),
    ] {
        controls.push(ControlSpec::new(name, ControlKind::Trigger).label(label));
    }
    let (lo, hi) = (i16::MIN.into(), i16::MAX.into());
    let positions = [
        ("pan", "Pan", lo, hi),
        ("tilt", "Tilt", lo, hi),
        ("zoom", "Zoom", 0, 0xFFFF),
    ];
    for (name, label, min, max) in positions {
        let unit = String::new();
        let kind = ControlKind::Int {
            min,
            max,
            step: None,
            unit,
        };
        let spec = ControlSpec::new(name, kind).access(Access::Read);
        controls.push(spec.label(&format!("{label} position")));
    }
    DeviceDescriptor {
        room: room.into(),
        name: name.into(),
        label: label.into(),
        class: "camera".into(),
        driver: "visca".into(),
        controls,
    }
}

/// Checks a `[[device]] driver = "visca"` entry: `host` is required, `port` defaults
/// to 52381, `poll_ms` to 1000; VISCA over IP has no password.
///
/// # Errors
/// A message naming the key.
pub fn check(d: &DeviceConfig) -> Result<(), String> {
    if d.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
        return Err("driver \"visca\" needs host = \"<camera address>\"".into());
    }
    if d.port == Some(0) {
        return Err("driver \"visca\": port = 0 is not a camera port (default 52381)".into());
    }
    if d.password.is_some() {
        return Err("driver \"visca\" takes no password (VISCA over IP has none)".into());
    }
    if d.poll_ms.is_some_and(|ms| !(20..=600_000).contains(&ms)) {
        return Err("driver \"visca\": poll_ms must be within 20..=600000".into());
    }
    Ok(())
}

/// Starts one configured camera on `host` until `cancel` (an entry [`check`] refuses
/// is logged and not started).
pub fn spawn(host: &Host, d: &DeviceConfig, cancel: CancellationToken) -> JoinHandle<()> {
    match ViscaSettings::from_device(d) {
        Ok(settings) => host.spawn(move || settings.driver(), cancel),
        Err(e) => {
            tracing::error!(device = %format!("{}/{}", d.room, d.name), error = %e, "not started");
            tokio::spawn(async {})
        }
    }
}
