//! The PJLink adapter: a projector (or display) on the bus through the adapter kit
//! ([`crate::devices::kit`]), over the codec in [`super::proto`].
//!
//! # Controls
//!
//! | control | kind | PJLink |
//! |---|---|---|
//! | `power` | enum `off`, `warming`, `on`, `cooling` | `POWR ?` 0, 3, 1, 2; set `on` → `POWR 1`, `off` → `POWR 0` |
//! | `input` | enum of the `INST ?` codes (`31` "Digital 1") | `INPT` |
//! | `video_mute`, `audio_mute` | bool | `AVMT 1x` / `2x`; `AVMT ?` |
//! | `error_status` | read-only string | `ERST ?` decoded: `ok`, `lamp: warning, filter: error` |
//! | `lamp_hours` | read-only int (h) | first lamp of `LAMP ?`; not declared if `LAMP` is `ERR1` (laser) |
//! | `name` | read-only string | `NAME ?` |
//!
//! Class 1 commands only; class 2 models answer them too.
//!
//! **Inputs.** The kit declares a device before connecting, so its input list cannot
//! come from the projector then: the device is declared at once (offline: panels see
//! it exists) with a placeholder, one input of each class 1 kind. Each kit connect
//! reads `INST ?` and `LAMP ?`; when they differ from what is declared, the driver
//! declares the device again on the host's bus connection
//! ([`PjlinkDriver::with_bus`]) before any state is published or the device goes
//! online, so panels offer exactly the projector's inputs and the bus refuses others
//! (`invalid_value`). The list is shared with the drivers that replace this one after
//! a panic; the client library re-declares the newest descriptor after a bus
//! reconnect.
//!
//! # Commands
//!
//! `power on` is answered once the projector accepted `POWR 1`: a fresh `POWR ?` gives
//! the step to report (`warming`, even if the projector still says standby), so the
//! panel's `ok` arrives with `warming` shown; `off` likewise reports `cooling`.
//! `warming` and `cooling` cannot be set (`invalid_value`). Refusals are typed:
//! `ERR1` `not_writable`, `ERR2` `invalid_value`, `ERR3` `busy` ("the projector is
//! warming up", from a fresh `POWR ?`), `ERR4` `busy` with the `ERST` faults.
//!
//! # Polling
//!
//! Every `poll_ms` (default 5 s; controllers commonly poll every 3–10 s): `POWR`,
//! `INPT`, `AVMT`, `ERST`, `LAMP`, `NAME`. `ERR3` (input and mute while not on) is
//! normal: the control keeps its last known value (unreported until one is known). A
//! reply that does not decode is logged (`warn` once per command) and also keeps the
//! last value: one quirky field must not take a projector offline. The kit reads
//! `timing()` once, so while power is `warming` or `cooling` [`Driver::next_event`]
//! asks `POWR ?` every second (or `poll_ms`, if shorter) and reports the full state
//! when the step changes.
//!
//! # Connection policy
//!
//! One session is kept and reused by every poll and command (no connect and login per
//! command; on one-controller models the slot stays ours). It is replaced
//! transparently, inside the same poll or command, when the projector closed it (many
//! do after ~30 s idle: seen while idle, or as the end of the stream instead of a
//! reply, and that command is sent once more on the new session — PJLink sets are
//! idempotent), when unused for [`IDLE_REUSE`], or when an exchange was cut short
//! (the kit dropped its future; a reply may still come). Only a session that cannot
//! be opened or answers nothing is a broken link ([`DeviceError`]): the kit marks the
//! device offline and reconnects with backoff. Every session begins with the greeting;
//! after `PJLINK 1 <random>` the MD5 digest precedes the first command (`CLSS ?` at
//! connect) and `PJLINK ERRA` is [`DeviceError::Auth`].
//!
//! Lines sent unasked are read while idle: class 2 notifications (`%2POWR=`,
//! `%2INPT=`, `%2ERST=`, which some models write on TCP) update the state, other
//! PJLink lines (`%2LKUP=`) are skipped. Bytes that are not PJLink (a codec error,
//! bytes escaped) are logged and end the session ([`DeviceError::Protocol`]); the kit
//! reconnects. No input makes this code panic.
//!
//! # Sources
//!
//! The protocol's are listed in [`super`]. For these policies: sy1vain/node-pjlink
//! issue 3 ("most PJLink devices close the connection after about 30 seconds of
//! inactivity"; reconnect at the next command); the ioBroker.pjlink README (first
//! lamp's hours; replies take up to 2 s; projectors in power-saving standby may not
//! answer at all, and show offline here); bitfocus companion-module-generic-pjlink
//! HELP.md (class 1 input names from the input kind: RGB, Video, Digital, Storage,
//! Network, Internal).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::proto::{
    next_line, parse_lamps, parse_line, AvMute, Body, ErrorCode as Refusal, ErrorLevel,
    ErrorStatus, InputCode, InputKind, Message, Notification, PowerState, ProtoError, Reply,
    DEFAULT_PORT, MAX_LAMP_HOURS,
};
use crate::client::Client;
use crate::config::DeviceConfig;
use crate::devices::kit::{
    Changes, CommandFailure, DeviceCommand, DeviceError, Driver, Host, Timing,
};
use crate::model::{Access, ControlKind, ControlSpec, DeviceDescriptor, EnumOption};
use crate::protocol::{CommandOp, ErrorCode};
use crate::value::Value;
use session::Link;

mod session;

/// Poll interval when the entry sets no `poll_ms`: controllers commonly poll every
/// 3–10 s, well inside the ~30 s after which projectors drop an idle session.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// Shortest `poll_ms` accepted: six queries must fit in one interval.
const MIN_POLL_MS: u64 = 50;
/// Longest `poll_ms` accepted (ten minutes): a slower poll hides a dead projector.
const MAX_POLL_MS: u64 = 600_000;
/// How long one reply may take: the spec's 2 s, plus a second for slow firmware.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening the TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `POWR ?` interval while warming up or cooling down (or `poll_ms`, if shorter).
const TRANSITION_POLL: Duration = Duration::from_secs(1);
/// A session unused this long is replaced rather than reused: projectors close idle
/// sessions after about 30 s, and a command racing that close would be lost.
pub const IDLE_REUSE: Duration = Duration::from_secs(20);
/// PJLink passwords are at most 32 characters.
const MAX_PASSWORD: usize = 32;
/// `NAME ?` is at most 64 bytes.
const MAX_NAME: usize = 64;
/// Longest `error_status` text (all six faults named: about 90 characters).
const MAX_ERROR_TEXT: usize = 128;
/// Inputs declared until the projector's `INST ?` is known: one of each class 1 kind.
const PLACEHOLDER_INPUTS: [&str; 5] = ["11", "21", "31", "41", "51"];

const POWER_OPTIONS: [(&str, &str); 4] = [
    ("off", "Off"),
    ("warming", "Warming up"),
    ("on", "On"),
    ("cooling", "Cooling down"),
];

/// What a set command comes to: the confirmed state, a refusal, or a broken link.
type Answer = Result<Result<Changes, CommandFailure>, DeviceError>;

fn refuse(code: ErrorCode, message: impl Into<String>) -> Answer {
    Ok(Err(CommandFailure::new(code, message)))
}

/// Checks a `[[device]] driver = "pjlink"` entry: `host` is required; `port`
/// (default 4352), `password` (at most 32 printable ASCII characters) and `poll_ms`
/// (default 5000, 50..=600000) are optional.
///
/// # Errors
/// A message naming the key that is wrong or missing.
pub fn check(d: &DeviceConfig) -> Result<(), String> {
    if d.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
        return Err("driver \"pjlink\" needs host = \"<projector address>\"".into());
    }
    if d.port == Some(0) {
        return Err("port = 0: PJLink projectors listen on 4352 (leave port out)".into());
    }
    let printable = |p: &String| p.bytes().all(|b| b.is_ascii_graphic());
    if let Some(p) = d
        .password
        .as_ref()
        .filter(|p| p.is_empty() || p.len() > MAX_PASSWORD || !printable(p))
    {
        return Err(format!(
            "password: 1 to {MAX_PASSWORD} printable ASCII characters without spaces, \
             not {} bytes (leave it out when the projector has none)",
            p.len()
        ));
    }
    match d.poll_ms {
        Some(ms) if !(MIN_POLL_MS..=MAX_POLL_MS).contains(&ms) => Err(format!(
            "poll_ms = {ms}: between {MIN_POLL_MS} and {MAX_POLL_MS}"
        )),
        _ => Ok(()),
    }
}

/// Starts the configured projector on `host` until `cancel` (the entry is expected
/// to have passed [`check`]; if not, the task logs why and ends).
pub fn spawn(host: &Host, d: &DeviceConfig, cancel: CancellationToken) -> JoinHandle<()> {
    match PjlinkDriver::new(d) {
        Ok(driver) => {
            let driver = driver.with_bus(host.client().clone());
            host.spawn(move || driver.fresh(), cancel)
        }
        Err(error) => {
            let device = format!("{}/{}", d.room, d.name);
            tokio::spawn(async move { tracing::error!(%device, %error, "PJLink: not started") })
        }
    }
}

/// How to reach the projector and what to call it.
#[derive(Debug)]
struct Settings {
    /// `room/name`, for logs.
    key: String,
    room: String,
    name: String,
    label: String,
    host: String,
    port: u16,
    password: Option<String>,
    poll: Duration,
}

/// What the projector said it has, as declared on the bus.
#[derive(Debug, Clone, PartialEq)]
struct Capabilities {
    /// `INST ?` (class 1 codes); never empty.
    inputs: Vec<InputCode>,
    /// `LAMP ?` is defined (lamp models; laser ones answer `ERR1`).
    lamp: bool,
}

/// The values last read or confirmed: reported again while the projector cannot
/// answer (`ERR3`), and after a bus reconnect.
#[derive(Debug, Default)]
struct Known {
    power: Option<PowerState>,
    input: Option<InputCode>,
    video_mute: Option<bool>,
    audio_mute: Option<bool>,
    errors: Option<ErrorStatus>,
    lamp_hours: Option<u32>,
    name: Option<String>,
}

/// A PJLink projector, as a [`Driver`]: see the module documentation.
pub struct PjlinkDriver {
    settings: Arc<Settings>,
    /// Shared with the drivers that replace this one, so they declare what is known.
    caps: Arc<Mutex<Capabilities>>,
    /// Where to re-declare the device when its inputs turn out different.
    bus: Option<Client>,
    link: Option<Link>,
    /// An exchange began and did not finish (its future was dropped): a reply may
    /// still be on its way, so the session is replaced before the next one.
    interrupted: bool,
    known: Known,
    /// While warming or cooling: when to ask `POWR ?` again.
    transition_due: Option<Instant>,
    /// Commands whose odd replies were already logged at `warn`.
    odd: HashSet<Body>,
}

impl PjlinkDriver {
    /// A driver for the `[[device]]` entry `d`.
    ///
    /// # Errors
    /// The entry fails [`check`].
    pub fn new(d: &DeviceConfig) -> Result<PjlinkDriver, String> {
        check(d)?;
        let settings = Settings {
            key: format!("{}/{}", d.room, d.name),
            room: d.room.clone(),
            name: d.name.clone(),
            label: d.label.clone().unwrap_or_else(|| "Projector".into()),
            host: d.host.clone().unwrap_or_default().trim().to_owned(),
            port: d.port.unwrap_or(DEFAULT_PORT),
            password: d.password.clone(),
            poll: d.poll_ms.map_or(DEFAULT_POLL, Duration::from_millis),
        };
        let inputs = PLACEHOLDER_INPUTS
            .iter()
            .filter_map(|c| InputCode::parse(c).ok());
        let caps = Capabilities {
            inputs: inputs.collect(),
            lamp: true,
        };
        Ok(PjlinkDriver::from_parts(
            Arc::new(settings),
            Arc::new(Mutex::new(caps)),
            None,
        ))
    }

    /// Lets the driver re-declare its device on `client` (the kit host's bus
    /// connection) when the projector's inputs or lamp support differ from the
    /// declared ones. Without it the placeholder inputs stay, and the projector
    /// refuses those it lacks (`ERR2`: `invalid_value`).
    pub fn with_bus(mut self, client: Client) -> PjlinkDriver {
        self.bus = Some(client);
        self
    }

    fn from_parts(
        settings: Arc<Settings>,
        caps: Arc<Mutex<Capabilities>>,
        bus: Option<Client>,
    ) -> PjlinkDriver {
        PjlinkDriver {
            settings,
            caps,
            bus,
            link: None,
            interrupted: false,
            known: Known::default(),
            transition_due: None,
            odd: HashSet::new(),
        }
    }

    /// A new, unconnected driver for the same projector, sharing what is known of it.
    fn fresh(&self) -> PjlinkDriver {
        let (settings, caps) = (self.settings.clone(), self.caps.clone());
        PjlinkDriver::from_parts(settings, caps, self.bus.clone())
    }

    fn key(&self) -> &str {
        &self.settings.key
    }

    fn caps(&self) -> Capabilities {
        // Plain data: a panic elsewhere cannot leave it half-updated.
        self.caps.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks `<body> ?` and decodes the value. `None`: the projector could not say
    /// now (`ERR1`..`ERR4`) or said something that does not decode (logged); the
    /// caller keeps what it knew.
    async fn query<T>(
        &mut self,
        body: Body,
        decode: impl FnOnce(&str) -> Result<T, ProtoError>,
    ) -> Result<Option<T>, DeviceError> {
        let why = match self.ask(body, "?").await? {
            Reply::Value(v) => match decode(v.as_str()) {
                Ok(value) => return Ok(Some(value)),
                Err(e) => e.to_string(),
            },
            // Normal while the lamp is not on.
            Reply::Error(Refusal::UnavailableTime) => return Ok(None),
            Reply::Error(code) => code.as_str().to_owned(),
            Reply::Ok => "OK".to_owned(),
        };
        let first = self.odd.insert(body);
        let (device, body) = (self.key(), body.as_str());
        if first {
            warn!(device, reply = %why, "PJLink: {body} ? not understood; keeping the last value");
        } else {
            debug!(device, reply = %why, "PJLink: {body} ? not understood");
        }
        Ok(None)
    }

    /// Reads `POWR ?` into what is known (to word a refusal, or during transitions).
    async fn refresh_power(&mut self) -> Result<(), DeviceError> {
        if let Some(power) = self.query(Body::POWR, PowerState::parse).await? {
            self.known.power = Some(power);
        }
        self.schedule_transition();
        Ok(())
    }

    fn schedule_transition(&mut self) {
        let moving = matches!(
            self.known.power,
            Some(PowerState::WarmUp | PowerState::Cooling)
        );
        let every = TRANSITION_POLL.min(self.settings.poll);
        self.transition_due = moving.then(|| Instant::now() + every);
    }

    /// Everything known, as the kit publishes it.
    fn changes(&self) -> Changes {
        let (caps, k) = (self.caps(), &self.known);
        let power = k.power.map(|p| Value::from(power_id(p)));
        // An input outside the declared list would be refused by the bus.
        let input = k.input.filter(|i| caps.inputs.contains(i));
        let lamp_hours = k.lamp_hours.filter(|_| caps.lamp);
        let name = k
            .name
            .as_ref()
            .map(|n| n.chars().take(MAX_NAME).collect::<String>());
        [
            ("power", power),
            ("input", input.map(|i| Value::from(i.to_string()))),
            ("video_mute", k.video_mute.map(Value::Boolean)),
            ("audio_mute", k.audio_mute.map(Value::Boolean)),
            (
                "error_status",
                k.errors.as_ref().map(|e| Value::from(error_text(e))),
            ),
            ("lamp_hours", lamp_hours.map(Value::from)),
            ("name", name.map(Value::from)),
        ]
        .into_iter()
        .filter_map(|(control, value)| Some((control.to_owned(), value?)))
        .collect()
    }

    /// Handles what the projector sent unasked: class 2 notifications update the
    /// state, other PJLink lines are skipped, anything else ends the session.
    fn unsolicited(&mut self) -> Result<Changes, DeviceError> {
        let mut changed = false;
        while let Some(link) = self.link.as_mut() {
            let message = match next_line(&mut link.buf) {
                Ok(Some(line)) => parse_line(&line),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let response = match message {
                Ok(Message::Response(r)) => r,
                Ok(other) => {
                    let why = format!("unexpected {other:?} from the projector");
                    return Err(DeviceError::Protocol(why));
                }
                Err(e) => return Err(self.not_pjlink(e)),
            };
            match Notification::from_response(&response) {
                Ok(Some(Notification::Power(p))) => self.known.power = Some(p),
                Ok(Some(Notification::Input(i))) => self.known.input = Some(i),
                Ok(Some(Notification::Errors(e))) => self.known.errors = Some(e),
                Ok(Some(Notification::LinkUp(_)) | None) | Err(_) => {
                    debug!(line = ?response, "PJLink: skipped an unsolicited line");
                    continue;
                }
            }
            changed = true;
        }
        if !changed {
            return Ok(Vec::new());
        }
        self.schedule_transition();
        Ok(self.changes())
    }

    /// The typed failure for a set of `what` the projector refused.
    async fn refused(&mut self, code: Refusal, what: &str) -> Answer {
        match code {
            Refusal::Undefined => refuse(
                ErrorCode::NotWritable,
                format!("the projector does not support {what} (ERR1)"),
            ),
            Refusal::OutOfParameter => refuse(
                ErrorCode::InvalidValue,
                format!("the projector refused {what} (ERR2: out of parameter)"),
            ),
            Refusal::UnavailableTime => {
                self.refresh_power().await?;
                let now = match self.known.power {
                    Some(PowerState::WarmUp) => "the projector is warming up",
                    Some(PowerState::Cooling) => "the projector is cooling down",
                    Some(PowerState::Standby) => "the projector is in standby",
                    _ => "the projector cannot do that now",
                };
                refuse(ErrorCode::Busy, format!("{now}: {what} (ERR3)"))
            }
            Refusal::Failure => {
                if let Some(e) = self.query(Body::ERST, ErrorStatus::parse).await? {
                    self.known.errors = Some(e);
                }
                let faults = self
                    .known
                    .errors
                    .as_ref()
                    .map_or("unknown".into(), error_text);
                let why = format!("projector failure (ERR4) refused {what}: {faults}");
                refuse(ErrorCode::Busy, why)
            }
        }
    }

    async fn set_power(&mut self, value: &Value) -> Answer {
        let on = match value.as_str() {
            Some("on") => true,
            Some("off") => false,
            _ => {
                let why = "set power \"on\" or \"off\": warming and cooling are the projector's";
                return refuse(ErrorCode::InvalidValue, why);
            }
        };
        match self.ask(Body::POWR, if on { "1" } else { "0" }).await? {
            Reply::Ok => {}
            Reply::Error(code) => return self.refused(code, "power").await,
            Reply::Value(v) => return Err(unexpected(Body::POWR, v.as_str())),
        }
        // Accepted: report the step the projector is in (some still say standby
        // for a moment: it is warming up all the same).
        let now = self.query(Body::POWR, PowerState::parse).await?;
        let power = match (on, now) {
            (true, None | Some(PowerState::Standby)) => PowerState::WarmUp,
            (false, None | Some(PowerState::On)) => PowerState::Cooling,
            (_, Some(p)) => p,
        };
        self.known.power = Some(power);
        self.schedule_transition();
        Ok(Ok(vec![("power".into(), Value::from(power_id(power)))]))
    }

    async fn set_input(&mut self, value: &Value) -> Answer {
        let inputs = self.caps().inputs;
        let code = match value.as_str().map(InputCode::parse) {
            Some(Ok(code)) if inputs.contains(&code) => code,
            _ => {
                let listed: Vec<String> = inputs.iter().map(ToString::to_string).collect();
                let why = format!("the projector's inputs are {}", listed.join(", "));
                return refuse(ErrorCode::InvalidValue, why);
            }
        };
        match self.ask(Body::INPT, &code.to_string()).await? {
            Reply::Ok => {
                self.known.input = Some(code);
                Ok(Ok(vec![("input".into(), Value::from(code.to_string()))]))
            }
            Reply::Error(e) => self.refused(e, &format!("input {code}")).await,
            Reply::Value(v) => Err(unexpected(Body::INPT, v.as_str())),
        }
    }

    async fn set_mute(&mut self, control: &str, value: &Value) -> Answer {
        let Some(on) = value.as_bool() else {
            return refuse(
                ErrorCode::InvalidValue,
                format!("{control} is true or false"),
            );
        };
        let video = control == "video_mute";
        let param = format!("{}{}", if video { 1 } else { 2 }, u8::from(on));
        match self.ask(Body::AVMT, &param).await? {
            Reply::Ok => {
                let known = &mut self.known;
                *(if video {
                    &mut known.video_mute
                } else {
                    &mut known.audio_mute
                }) = Some(on);
                Ok(Ok(vec![(control.to_owned(), Value::Boolean(on))]))
            }
            Reply::Error(e) => self.refused(e, control).await,
            Reply::Value(v) => Err(unexpected(Body::AVMT, v.as_str())),
        }
    }
}

/// A value where `OK` or an error was due: the session is out of step.
fn unexpected(body: Body, value: &str) -> DeviceError {
    let body = body.as_str();
    DeviceError::Protocol(format!("{body} answered {value:?} to a set command"))
}

fn power_id(p: PowerState) -> &'static str {
    match p {
        PowerState::Standby => "off",
        PowerState::WarmUp => "warming",
        PowerState::On => "on",
        PowerState::Cooling => "cooling",
    }
}

/// "Digital 1" for `31`.
fn input_label(code: InputCode) -> String {
    let kind = match code.kind() {
        InputKind::Rgb => "RGB",
        InputKind::Video => "Video",
        InputKind::Digital => "Digital",
        InputKind::Storage => "Storage",
        InputKind::Network => "Network",
        InputKind::Internal => "Internal",
    };
    format!("{kind} {}", code.number())
}

/// `ok`, or the faults: `lamp: warning, filter: error`.
fn error_text(e: &ErrorStatus) -> String {
    let (fan, lamp, temperature) = (e.fan, e.lamp, e.temperature);
    let (cover, filter, other) = (e.cover, e.filter, e.other);
    let parts: Vec<String> = [
        ("fan", fan),
        ("lamp", lamp),
        ("temperature", temperature),
        ("cover", cover),
        ("filter", filter),
        ("other", other),
    ]
    .iter()
    .filter_map(|(what, level)| match level {
        ErrorLevel::Ok => None,
        ErrorLevel::Warning => Some(format!("{what}: warning")),
        ErrorLevel::Error => Some(format!("{what}: error")),
    })
    .collect();
    match parts.is_empty() {
        true => "ok".into(),
        false => parts.join(", "),
    }
}

async fn until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Driver for PjlinkDriver {
    fn descriptor(&self) -> DeviceDescriptor {
        let (caps, s) = (self.caps(), &self.settings);
        let option = |id: String, label: String| EnumOption { id, label };
        let power = POWER_OPTIONS.map(|(id, label)| option(id.into(), label.into()));
        let power = ControlKind::Enum {
            options: power.to_vec(),
        };
        let inputs = caps.inputs.iter();
        let inputs = inputs.map(|c| option(c.to_string(), input_label(*c)));
        let input = ControlKind::Enum {
            options: inputs.collect(),
        };
        let errors = ControlKind::String {
            max_len: MAX_ERROR_TEXT,
        };
        let name = ControlKind::String { max_len: MAX_NAME };
        let hours = ControlKind::Int {
            min: 0,
            max: i64::from(MAX_LAMP_HOURS),
            step: None,
            unit: "h".into(),
        };
        let control = |name: &str, kind, label: &str| ControlSpec::new(name, kind).label(label);
        let read = |name: &str, kind, label: &str| control(name, kind, label).access(Access::Read);
        let controls = [
            Some(control("power", power, "Power")),
            Some(control("input", input, "Input")),
            Some(control("video_mute", ControlKind::Bool, "Video mute")),
            Some(control("audio_mute", ControlKind::Bool, "Audio mute")),
            Some(read("error_status", errors, "Errors")),
            caps.lamp.then(|| read("lamp_hours", hours, "Lamp hours")),
            Some(read("name", name, "Projector name")),
        ];
        DeviceDescriptor {
            room: s.room.clone(),
            name: s.name.clone(),
            label: s.label.clone(),
            class: "projector".into(),
            driver: "pjlink".into(),
            controls: controls.into_iter().flatten().collect(),
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            poll: self.settings.poll,
            // A session, three queries and perhaps a re-declare.
            connect: Duration::from_secs(10),
            // Six queries, each due within 2 s but normally milliseconds.
            poll_timeout: Duration::from_secs(10),
            ..Timing::default()
        }
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        (self.link, self.interrupted) = (None, false);
        // The first command carries the digest: a wrong password shows here, before
        // the device is reported online.
        if let Reply::Value(class) = self.ask(Body::CLSS, "?").await? {
            debug!(
                device = self.key(),
                class = class.as_str(),
                "PJLink: connected"
            );
        }
        let mut caps = self.caps();
        // Class 1 codes: what `%1INPT` can select.
        let listed = |v: &str| {
            let codes = v.split(' ').filter_map(|c| InputCode::parse(c).ok());
            Ok(codes.filter(|c| c.is_class1()).collect::<Vec<_>>())
        };
        match self.query(Body::INST, listed).await? {
            Some(inputs) if !inputs.is_empty() => caps.inputs = inputs,
            _ => warn!(
                device = self.key(),
                "PJLink: no inputs in INST ?; keeping the declared ones"
            ),
        }
        let lamp = self.ask(Body::LAMP, "?").await?;
        caps.lamp = !matches!(lamp, Reply::Error(Refusal::Undefined));
        let Some(bus) = self.bus.clone().filter(|_| self.caps() != caps) else {
            return Ok(());
        };
        *self.caps.lock().unwrap_or_else(|p| p.into_inner()) = caps;
        info!(
            device = self.key(),
            "PJLink: declaring the projector's own inputs"
        );
        // Sent before any state of this connection, so panels get the new
        // descriptor first; the client keeps it for later reconnects.
        match tokio::time::timeout(REPLY_TIMEOUT, bus.declare(self.descriptor(), false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(device = self.key(), error = %e, "PJLink: re-declare refused"),
            Err(_) => warn!(
                device = self.key(),
                "PJLink: re-declare not confirmed in time"
            ),
        }
        Ok(())
    }

    async fn poll(&mut self) -> Result<Changes, DeviceError> {
        if let Some(p) = self.query(Body::POWR, PowerState::parse).await? {
            self.known.power = Some(p);
        }
        if let Some(i) = self.query(Body::INPT, InputCode::parse).await? {
            self.known.input = Some(i);
        }
        if let Some(m) = self.query(Body::AVMT, AvMute::parse).await? {
            (self.known.video_mute, self.known.audio_mute) = (Some(m.video), Some(m.audio));
        }
        if let Some(e) = self.query(Body::ERST, ErrorStatus::parse).await? {
            self.known.errors = Some(e);
        }
        if self.caps().lamp {
            if let Some(lamps) = self.query(Body::LAMP, parse_lamps).await? {
                self.known.lamp_hours = lamps.first().map(|l| l.hours);
            }
        }
        if let Some(n) = self.query(Body::NAME, |v| Ok(v.to_owned())).await? {
            self.known.name = Some(n);
        }
        self.schedule_transition();
        Ok(self.changes())
    }

    async fn execute(&mut self, c: &DeviceCommand) -> Answer {
        match (c.control.as_str(), c.op) {
            ("power", CommandOp::Set) => self.set_power(&c.value).await,
            ("input", CommandOp::Set) => self.set_input(&c.value).await,
            ("video_mute" | "audio_mute", CommandOp::Set) => {
                self.set_mute(&c.control, &c.value).await
            }
            (other, _) => refuse(ErrorCode::NotWritable, format!("{other} is read-only")),
        }
    }

    /// Reads what the projector sends unasked and, while it warms up or cools
    /// down, asks `POWR ?` on a short interval. Cancel-safe: reads keep their bytes
    /// in the session's buffer, and an exchange cut short replaces the session.
    async fn next_event(&mut self) -> Result<Changes, DeviceError> {
        if std::mem::take(&mut self.interrupted) {
            self.link = None;
        }
        loop {
            let due = self.transition_due;
            let read = async {
                match self.link.as_mut() {
                    Some(l) => Some(l.stream.read_buf(&mut l.buf).await),
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                // Warming up or cooling down: time to ask again.
                () = until(due) => None,
                // Bytes (or the end) from the projector, unasked.
                r = read => r,
            };
            match woke {
                None => {
                    let before = self.known.power;
                    self.refresh_power().await?;
                    if self.known.power != before {
                        // A new step: input and mute may be readable now.
                        return self.poll().await;
                    }
                }
                Some(Ok(0) | Err(_)) => {
                    debug!(
                        device = self.key(),
                        "PJLink: idle session closed by the projector"
                    );
                    self.link = None;
                }
                Some(Ok(_)) => {
                    let changes = self.unsolicited()?;
                    if !changes.is_empty() {
                        return Ok(changes);
                    }
                }
            }
        }
    }

    async fn disconnect(&mut self) {
        (self.link, self.interrupted, self.transition_due) = (None, false, None);
    }
}
