//! The Extron SIS matrix-switcher adapter: one [`ExtronDriver`] per switcher, run by
//! the adapter kit ([`super::super::kit`]), speaking SIS over Telnet (TCP 23, or an
//! IP-to-serial gateway) through [`ClientCodec`](super::proto::ClientCodec).
//!
//! # Controls
//! The device is declared with class `switcher` and driver `extron-sis`. For every
//! output `NN` (two digits, three on a matrix of more than 99 outputs):
//! * `outNN_video`, `outNN_audio`: enum, the input tied to the output's video / audio
//!   plane: `"0"` (untied) or `"1"` … `"I"` (`Input 1` …). A `set` makes a breakaway
//!   tie, `in*NN%` (video only) or `in*NN$` (audio only), answered `OutNN InMM Vid` /
//!   `Aud`; `"0"` sends input 0, which unties the output on every model the module
//!   doc lists (DXP, CrossPoint, MAV).
//! * `outNN_video_mute`, `outNN_audio_mute`: bool, `NN*1B` / `NN*1Z` (and `*0`).
//!
//! A switcher whose `I` answer has no audio plane (`A0X0`, or no `A` entry) gets no
//! audio controls. The audio plane is assumed to have the video plane's size.
//!
//! # Size: discovered, not configured
//! The kit declares a device before it connects, so the size has to be known first:
//! [`spawn`] declares the device without controls (offline), connects once and asks
//! `I` (`V8X8 A8X8`, answered by every model in the module doc), then runs the driver
//! with the full descriptor. Every later connect asks `I` again; a different answer
//! (the frame was swapped or reconfigured) makes [`spawn`] re-declare the device with
//! the new size.
//!
//! # Connection
//! Connect, then (with a `password`) wait for `Password:` and send it with CR; a
//! second prompt means it was refused ([`DeviceError::Auth`]: the device has no error
//! code for it), and no prompt within 3 s that the switcher has no password (also
//! `Auth`: a password is never sent where it could be read as commands). Without a
//! configured password `ESC 3CV CR` is sent at once, and a prompt in answer is also
//! `Auth`. Verbose mode 3 (`ESC 3CV CR` → `Vrb3`) is set on every connect, since the
//! device resets it per connection: it tags query answers with what they answer
//! (`3%` → `Out03 In02 Vid`) and sends change notices.
//!
//! # State
//! * **Poll** (every `poll_ms`, default 10 s, which also keeps the port's 300 s idle
//!   timeout away): `out%` and `out$` for every output and one `ESC VM CR` for every
//!   mute, at most [`QUERY_WINDOW`] in flight. In mode 3 every answer says what it
//!   answers, so answers and notices are applied alike, in the order they arrive.
//! * **Pushed** ([`Driver::next_event`]): other controllers' ties and mutes arrive as
//!   their responses, front-panel mutes as `Vmt03 1`, a front-panel switch as `Qik`
//!   (which says nothing about what changed, so every tie is read again), `In05 All`
//!   and `Vmt1` for every output at once.
//! * **Commands** wait for their own response; notices read meanwhile are reported
//!   too. `E01`, `E11`–`E14`, `E25` → `invalid_value`; `E22` → `busy`; `E17` →
//!   `timeout`; `E24` → `forbidden`. `E10` (the switcher did not understand what was
//!   sent), other codes, lines that are no SIS response and codec errors (a line over
//!   [`super::proto::MAX_LINE_LEN`]) are [`DeviceError::Protocol`] carrying the
//!   offending text: the kit logs it, marks the device offline and reconnects, and the
//!   reconnect reads everything again.
//!
//! Sources: the Extron programmer's guides listed in the [module doc](super).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::proto::{Command, Response};
use super::{SisError, Tie, TieKind, VerboseMode};
use crate::config::DeviceConfig;
use crate::devices::kit::{
    Backoff, Changes, CommandFailure, DeviceCommand, DeviceError, Driver, Host, Timing,
};
use crate::model::{ControlKind, ControlSpec, DeviceDescriptor, EnumOption};
use crate::protocol::{CommandOp, ErrorCode};
use crate::value::Value;
use link::{open, recv, send, unexpected, write_error, Link};

mod link;

/// The name in `[[device]] driver = "..."` and in the descriptor.
pub const DRIVER: &str = "extron-sis";
/// SIS over Telnet.
pub const DEFAULT_PORT: u16 = 23;
/// Full re-read interval when `poll_ms` is not set: changes are pushed in verbose mode
/// 3, so the poll is a safety net and the keepalive against the 300 s port timeout.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);
/// Queries sent before their answers are awaited: a whole 128-output frame's 257
/// queries at once could overrun a device's input buffer, one at a time would cost a
/// round trip each.
pub const QUERY_WINDOW: usize = 16;
/// Longest password accepted in the config: the simulator (like the device) never
/// matches a longer entry.
const MAX_PASSWORD_LEN: usize = 64;
/// How long a switcher may take to ask for the configured password (it sends the
/// prompt with its banner); shorter than the kit's connect timeout, so that a
/// switcher without a password is reported as such.
const PROMPT_WAIT: Duration = Duration::from_secs(3);
/// Extra poll time per output (two queries each, answered in ~10 ms by a real frame).
const POLL_TIME_PER_OUTPUT: Duration = Duration::from_millis(40);

/// A matrix's size, from its `I` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixSize {
    pub inputs: u16,
    pub outputs: u16,
    /// Whether it has an audio plane (switched and muted apart from video).
    pub audio: bool,
}

impl MatrixSize {
    /// Parses the answer to `I`: `V8X8 A8X8` (`V12X8 A12X8`, …). `None` if there is no
    /// video entry or the size cannot be declared (over 255 inputs or 256 outputs).
    pub fn parse(info: &str) -> Option<MatrixSize> {
        let plane = |tag: char| {
            info.split_whitespace().find_map(|t| {
                let rest = t.strip_prefix(tag)?;
                let (i, o) = rest.split_once(['X', 'x'])?;
                Some((i.parse::<u16>().ok()?, o.parse::<u16>().ok()?))
            })
        };
        let (inputs, outputs) = plane('V')?;
        if !(1..=255).contains(&inputs) || !(1..=256).contains(&outputs) {
            return None;
        }
        let audio = plane('A').is_some_and(|(i, o)| i > 0 && o > 0);
        Some(MatrixSize {
            inputs,
            outputs,
            audio,
        })
    }

    fn width(self) -> usize {
        if self.outputs > 99 {
            3
        } else {
            2
        }
    }
}

/// The four controls of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Video,
    Audio,
    VideoMute,
    AudioMute,
}

impl Part {
    const ALL: [Part; 4] = [Part::Video, Part::Audio, Part::VideoMute, Part::AudioMute];

    fn suffix(self) -> &'static str {
        match self {
            Part::Video => "video",
            Part::Audio => "audio",
            Part::VideoMute => "video_mute",
            Part::AudioMute => "audio_mute",
        }
    }

    fn exists(self, size: MatrixSize) -> bool {
        size.audio || !matches!(self, Part::Audio | Part::AudioMute)
    }
}

fn control_name(size: MatrixSize, output: u16, part: Part) -> String {
    format!("out{output:0w$}_{}", part.suffix(), w = size.width())
}

/// The output and part a control name stands for (only the names [`control_name`]
/// makes).
fn parse_control(size: MatrixSize, name: &str) -> Option<(u16, Part)> {
    let (number, suffix) = name.strip_prefix("out")?.split_once('_')?;
    let output: u16 = number.parse().ok()?;
    let part = Part::ALL.into_iter().find(|p| p.suffix() == suffix)?;
    let valid = (1..=size.outputs).contains(&output)
        && part.exists(size)
        && control_name(size, output, part) == name;
    valid.then_some((output, part))
}

/// What a `[[device]]` entry says about one switcher.
#[derive(Debug, Clone)]
struct Settings {
    room: String,
    name: String,
    label: String,
    host: String,
    port: u16,
    password: Option<String>,
    poll: Duration,
}

impl Settings {
    fn from_config(d: &DeviceConfig) -> Result<Settings, String> {
        check(d)?;
        Ok(Settings {
            room: d.room.clone(),
            name: d.name.clone(),
            label: d
                .label
                .clone()
                .unwrap_or_else(|| "Extron matrix switcher".into()),
            host: d.host.clone().unwrap_or_default(),
            port: d.port.unwrap_or(DEFAULT_PORT),
            password: d.password.clone(),
            poll: d.poll_ms.map_or(DEFAULT_POLL, Duration::from_millis),
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.room, self.name)
    }
}

/// Checks a `[[device]] driver = "extron-sis"` entry: `host` is required; `port`
/// defaults to 23; `password` is optional (at most 64 characters, no control
/// characters); `poll_ms` defaults to 10 000.
///
/// # Errors
/// A message naming the key.
pub fn check(d: &DeviceConfig) -> Result<(), String> {
    match d.host.as_deref() {
        None => return Err(format!("driver {DRIVER:?} needs host = \"ADDRESS\"")),
        Some(h) if h.trim().is_empty() => return Err("host is empty".into()),
        Some(_) => {}
    }
    if d.port == Some(0) {
        return Err("port must not be 0".into());
    }
    if let Some(p) = &d.password {
        if p.is_empty() || p.len() > MAX_PASSWORD_LEN || p.chars().any(char::is_control) {
            return Err(format!(
                "password must have 1 to {MAX_PASSWORD_LEN} characters and no control characters \
                 (leave it out if the switcher has none)"
            ));
        }
    }
    if d.poll_ms == Some(0) {
        return Err("poll_ms must be greater than 0".into());
    }
    Ok(())
}

fn descriptor(s: &Settings, size: Option<MatrixSize>) -> DeviceDescriptor {
    let mut controls = Vec::new();
    if let Some(size) = size {
        let mut options = vec![EnumOption {
            id: "0".into(),
            label: "Untied".into(),
        }];
        options.extend((1..=size.inputs).map(|i| EnumOption {
            id: i.to_string(),
            label: format!("Input {i}"),
        }));
        for output in 1..=size.outputs {
            for part in Part::ALL.into_iter().filter(|p| p.exists(size)) {
                let kind = match part {
                    Part::Video | Part::Audio => ControlKind::Enum {
                        options: options.clone(),
                    },
                    Part::VideoMute | Part::AudioMute => ControlKind::Bool,
                };
                let label = format!("Output {output} {}", part.suffix().replace('_', " "));
                controls
                    .push(ControlSpec::new(&control_name(size, output, part), kind).label(&label));
            }
        }
    }
    DeviceDescriptor {
        room: s.room.clone(),
        name: s.name.clone(),
        label: s.label.clone(),
        class: "switcher".into(),
        driver: DRIVER.into(),
        controls,
    }
}

/// A query of the poll, known again by the shape of its tagged answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Video(u16),
    Audio(u16),
    Mutes,
}

impl Query {
    fn command(self) -> Command {
        match self {
            Query::Video(output) => Command::ReadVideoTie { output },
            Query::Audio(output) => Command::ReadAudioTie { output },
            Query::Mutes => Command::ReadMutes,
        }
    }

    fn all(size: MatrixSize) -> VecDeque<Query> {
        let mut q = VecDeque::new();
        for o in 1..=size.outputs {
            q.push_back(Query::Video(o));
            if size.audio {
                q.push_back(Query::Audio(o));
            }
        }
        q.push_back(Query::Mutes);
        q
    }
}

fn tie_value(input: u16) -> Value {
    Value::from(input.to_string())
}

/// Connects to a switcher once and reads its size (the `I` command).
///
/// # Errors
/// [`DeviceError::Unreachable`], [`DeviceError::Auth`] for a refused or missing
/// password, [`DeviceError::Protocol`] for an answer that is not SIS.
pub async fn discover(d: &DeviceConfig) -> Result<MatrixSize, DeviceError> {
    let s = Settings::from_config(d).map_err(DeviceError::Protocol)?;
    open(&s).await.map(|(_, size)| size)
}

/// An Extron SIS matrix switcher, for the kit's [`Host`]. Usually started through
/// [`spawn`], which discovers the size first.
pub struct ExtronDriver {
    settings: Arc<Settings>,
    size: MatrixSize,
    /// Told when a connect finds another size than the one declared.
    resized: Option<mpsc::Sender<MatrixSize>>,
    link: Option<Link>,
    /// Last value reported per output and [`Part`], to report only changes.
    mirror: Vec<[Option<Value>; 4]>,
    /// Changes read but not yet reported (e.g. notices read by a failed command).
    backlog: Changes,
    /// Queries to send, and those sent and not answered yet.
    queue: VecDeque<Query>,
    inflight: VecDeque<Query>,
    /// A `Qik` arrived: every tie must be read again.
    requery: bool,
}

impl ExtronDriver {
    /// A driver for the switcher `d` describes, of `size` (see [`discover`]).
    ///
    /// # Errors
    /// What [`check`] finds wrong with `d`.
    pub fn new(d: &DeviceConfig, size: MatrixSize) -> Result<ExtronDriver, String> {
        Ok(ExtronDriver::with(
            Arc::new(Settings::from_config(d)?),
            size,
            None,
        ))
    }

    fn with(
        settings: Arc<Settings>,
        size: MatrixSize,
        resized: Option<mpsc::Sender<MatrixSize>>,
    ) -> ExtronDriver {
        ExtronDriver {
            settings,
            size,
            resized,
            link: None,
            mirror: vec![Default::default(); usize::from(size.outputs)],
            backlog: Vec::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            requery: false,
        }
    }

    fn link(&mut self) -> Result<&mut Link, DeviceError> {
        self.link
            .as_mut()
            .ok_or_else(|| DeviceError::Unreachable("not connected".into()))
    }

    /// Notes a value; a change goes to the backlog.
    fn record(&mut self, output: u16, part: Part, value: Value) {
        if !part.exists(self.size) {
            return;
        }
        let Some(slot) = usize::from(output)
            .checked_sub(1)
            .and_then(|i| self.mirror.get_mut(i))
            .map(|m| &mut m[part as usize])
        else {
            return;
        };
        if slot.as_ref() != Some(&value) {
            *slot = Some(value.clone());
            self.backlog
                .push((control_name(self.size, output, part), value));
        }
    }

    /// Everything known, for the kit after a poll.
    fn snapshot(&self) -> Changes {
        let mut out = Vec::new();
        for (output, parts) in (1..).zip(&self.mirror) {
            for part in Part::ALL {
                if let Some(v) = &parts[part as usize] {
                    out.push((control_name(self.size, output, part), v.clone()));
                }
            }
        }
        out
    }

    /// Checks numbers the switcher reported against its size.
    fn in_range(&self, input: Option<u16>, output: Option<u16>) -> Result<(), DeviceError> {
        let (i, o) = (self.size.inputs, self.size.outputs);
        match (input, output) {
            (Some(n), _) if n > i => Err(format!("input {n} of {i}")),
            (_, Some(n)) if n == 0 || n > o => Err(format!("output {n} of {o}")),
            _ => Ok(()),
        }
        .map_err(|e| DeviceError::Protocol(format!("the switcher reported {e}")))
    }

    /// The answer to the oldest query in flight of this shape has come.
    fn answered(&mut self, q: Query) {
        if let Some(i) = self.inflight.iter().position(|x| *x == q) {
            self.inflight.remove(i);
        }
    }

    /// Applies a response that is no command's answer: a query's answer or a notice.
    fn observe(&mut self, r: Response) -> Result<(), DeviceError> {
        match r {
            Response::Tie(t) => {
                self.in_range(Some(t.input), Some(t.output))?;
                match t.kind {
                    TieKind::Video | TieKind::Rgb => self.answered(Query::Video(t.output)),
                    TieKind::Audio => self.answered(Query::Audio(t.output)),
                    TieKind::All => {}
                }
                self.apply_tie(t);
            }
            Response::TieAll { input, kind } => {
                self.in_range(Some(input), None)?;
                for output in 1..=self.size.outputs {
                    self.apply_tie(Tie::new(input, output, kind));
                }
            }
            Response::QuickTie => self.requery = true,
            Response::VideoMute { output, mute } | Response::AudioMute { output, mute } => {
                self.in_range(None, Some(output))?;
                let part = match r {
                    Response::VideoMute { .. } => Part::VideoMute,
                    _ => Part::AudioMute,
                };
                self.record(output, part, Value::Boolean(mute));
            }
            Response::GlobalVideoMute(mute) | Response::GlobalAudioMute(mute) => {
                let part = match r {
                    Response::GlobalVideoMute(_) => Part::VideoMute,
                    _ => Part::AudioMute,
                };
                for output in 1..=self.size.outputs {
                    self.record(output, part, Value::Boolean(mute));
                }
            }
            Response::Mutes(mutes) => {
                if mutes.len() != usize::from(self.size.outputs) {
                    return Err(DeviceError::Protocol(format!(
                        "the switcher reported mutes of {} outputs, not {}",
                        mutes.len(),
                        self.size.outputs
                    )));
                }
                self.answered(Query::Mutes);
                for (output, m) in (1..).zip(mutes) {
                    self.record(output, Part::VideoMute, Value::Boolean(m.video));
                    self.record(output, Part::AudioMute, Value::Boolean(m.audio));
                }
            }
            // A late answer to our own `ESC 3CV CR`.
            Response::Verbose(VerboseMode::VerboseTagged) => {}
            Response::Error(e) => {
                return Err(DeviceError::Protocol(format!(
                    "{e} with no command waiting for it"
                )))
            }
            other => return Err(unexpected(&other, "from the switcher")),
        }
        Ok(())
    }

    fn apply_tie(&mut self, t: Tie) {
        if t.kind.switches_video() {
            self.record(t.output, Part::Video, tie_value(t.input));
        }
        if t.kind.switches_audio() {
            self.record(t.output, Part::Audio, tie_value(t.input));
        }
    }

    /// Sends queued queries while fewer than [`QUERY_WINDOW`] are in flight.
    /// Cancel-safe: a query moves to `inflight` only once the codec has it, and bytes
    /// a cancelled flush left behind are flushed by the next call.
    async fn send_queries(&mut self) -> Result<(), DeviceError> {
        while self.inflight.len() < QUERY_WINDOW {
            let Some(&q) = self.queue.front() else { break };
            let io = self.link()?;
            io.feed(q.command()).await.map_err(write_error)?;
            self.queue.pop_front();
            self.inflight.push_back(q);
        }
        let io = self.link()?;
        if !io.write_buffer().is_empty() {
            SinkExt::<Command>::flush(io).await.map_err(write_error)?;
        }
        Ok(())
    }

    /// The command a `set` of `control` stands for.
    fn command_for(&self, c: &DeviceCommand) -> Result<(Command, u16, Part), CommandFailure> {
        let (output, part) = parse_control(self.size, &c.control).ok_or_else(|| {
            CommandFailure::new(
                ErrorCode::UnknownTopic,
                format!("{}: no such control", c.control),
            )
        })?;
        if c.op != CommandOp::Set {
            return Err(CommandFailure::new(
                ErrorCode::NotWritable,
                format!("{} takes set, not call", c.control),
            ));
        }
        let input = || {
            c.value
                .as_str()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|i| *i <= self.size.inputs)
                .ok_or_else(|| {
                    CommandFailure::new(
                        ErrorCode::InvalidValue,
                        format!("{}: an input 0..{}", c.control, self.size.inputs),
                    )
                })
        };
        let mute = || {
            c.value.as_bool().ok_or_else(|| {
                CommandFailure::new(ErrorCode::InvalidValue, format!("{}: a bool", c.control))
            })
        };
        let command = match part {
            Part::Video => Command::Tie(Tie::new(input()?, output, TieKind::Video)),
            Part::Audio => Command::Tie(Tie::new(input()?, output, TieKind::Audio)),
            Part::VideoMute => Command::VideoMute {
                output,
                mute: mute()?,
            },
            Part::AudioMute => Command::AudioMute {
                output,
                mute: mute()?,
            },
        };
        Ok((command, output, part))
    }
}

/// Whether `r` is the switcher's response to `command`.
fn answers(command: &Command, r: &Response) -> bool {
    match (command, r) {
        (Command::Tie(c), Response::Tie(t)) => c == t,
        (Command::VideoMute { output, mute }, Response::VideoMute { output: o, mute: m })
        | (Command::AudioMute { output, mute }, Response::AudioMute { output: o, mute: m }) => {
            output == o && mute == m
        }
        _ => false,
    }
}

/// What a panel is told when the switcher refuses a command; `Err` for the codes that
/// mean the link itself is in doubt.
fn refusal(e: SisError, control: &str) -> Result<CommandFailure, DeviceError> {
    let code = match e {
        SisError::InvalidInput
        | SisError::InvalidPreset
        | SisError::InvalidOutput
        | SisError::InvalidValue
        | SisError::InvalidForConfiguration
        | SisError::DeviceNotPresent => ErrorCode::InvalidValue,
        SisError::Busy => ErrorCode::Busy,
        SisError::Timeout => ErrorCode::Timeout,
        SisError::PrivilegeViolation => ErrorCode::Forbidden,
        SisError::InvalidCommand | SisError::MaxConnections | SisError::Other(_) => {
            return Err(DeviceError::Protocol(format!(
                "the switcher answered {e} to {control}"
            )))
        }
    };
    Ok(CommandFailure::new(
        code,
        format!("the switcher refused {control}: {e}"),
    ))
}

impl Driver for ExtronDriver {
    fn descriptor(&self) -> DeviceDescriptor {
        descriptor(&self.settings, Some(self.size))
    }

    fn timing(&self) -> Timing {
        let base = Timing::default();
        Timing {
            poll: self.settings.poll,
            poll_timeout: base.poll_timeout + POLL_TIME_PER_OUTPUT * u32::from(self.size.outputs),
            ..base
        }
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        self.link = None;
        let (io, size) = open(&self.settings).await?;
        if size != self.size {
            if let Some(tx) = &self.resized {
                let _ = tx.try_send(size);
            }
            return Err(DeviceError::Protocol(format!(
                "the switcher is now {}x{} (audio: {}), declared as {}x{}",
                size.inputs, size.outputs, size.audio, self.size.inputs, self.size.outputs
            )));
        }
        self.link = Some(io);
        self.backlog.clear();
        self.queue.clear();
        self.inflight.clear();
        self.requery = false;
        Ok(())
    }

    async fn poll(&mut self) -> Result<Changes, DeviceError> {
        // This poll covers any `Qik` so far; one arriving during it sets `requery`.
        self.requery = false;
        self.queue = Query::all(self.size);
        loop {
            self.send_queries().await?;
            if self.queue.is_empty() && self.inflight.is_empty() {
                break;
            }
            let r = recv(self.link()?).await?;
            self.observe(r)?;
        }
        self.backlog.clear();
        Ok(self.snapshot())
    }

    async fn execute(
        &mut self,
        c: &DeviceCommand,
    ) -> Result<Result<Changes, CommandFailure>, DeviceError> {
        let (command, output, part) = match self.command_for(c) {
            Ok(x) => x,
            Err(f) => return Ok(Err(f)),
        };
        // With no query in flight, the next error is this command's.
        while !self.inflight.is_empty() {
            let r = recv(self.link()?).await?;
            self.observe(r)?;
        }
        send(self.link()?, [command.clone()]).await?;
        loop {
            let r = recv(self.link()?).await?;
            if answers(&command, &r) {
                let confirmed = match &r {
                    Response::Tie(t) => tie_value(t.input),
                    Response::VideoMute { mute, .. } | Response::AudioMute { mute, .. } => {
                        Value::Boolean(*mute)
                    }
                    _ => Value::Nil,
                };
                self.record(output, part, confirmed.clone());
                let mut changes = std::mem::take(&mut self.backlog);
                // Confirmed even when it was the value already.
                let name = control_name(self.size, output, part);
                if !changes.iter().any(|(n, _)| *n == name) {
                    changes.push((name, confirmed));
                }
                return Ok(Ok(changes));
            }
            match r {
                Response::Error(e) => return refusal(e, &c.control).map(Err),
                other => self.observe(other)?,
            }
        }
    }

    /// Cancel-safe: each await is a cancel-safe read or `send_queries`, and a
    /// response read is applied before the next await.
    async fn next_event(&mut self) -> Result<Changes, DeviceError> {
        loop {
            if !self.backlog.is_empty() {
                return Ok(std::mem::take(&mut self.backlog));
            }
            if self.requery {
                // Replaces what is queued: a queued query answers the latest state anyway.
                self.queue = Query::all(self.size);
                self.requery = false;
            }
            self.send_queries().await?;
            let r = recv(self.link()?).await?;
            self.observe(r)?;
        }
    }

    async fn disconnect(&mut self) {
        // Dropped, not closed: a close would wait on a peer that may be gone.
        self.link = None;
    }
}

/// Starts the configured switcher on `host` until `cancel`: declares it (offline,
/// without controls), discovers its size with backoff, then runs an [`ExtronDriver`]
/// and re-declares it should the size change. An entry [`check`] refuses is logged
/// and not started.
pub fn spawn(host: &Host, d: &DeviceConfig, cancel: CancellationToken) -> JoinHandle<()> {
    let host = host.clone();
    let settings = Settings::from_config(d);
    let key = format!("{}/{}", d.room, d.name);
    tokio::spawn(async move {
        match settings {
            Ok(s) => supervise(host, Arc::new(s), cancel).await,
            Err(e) => tracing::error!(device = %key, error = %e, "extron switcher not started"),
        }
    })
}

async fn supervise(host: Host, s: Arc<Settings>, cancel: CancellationToken) {
    let key = s.key();
    // Panels see the device, offline, while its size is unknown.
    if let Err(e) = host.client().declare(descriptor(&s, None), false).await {
        tracing::error!(device = %key, error = %e, "declare refused");
        return;
    }
    let timing = Timing::default();
    let mut backoff = Backoff::new(timing.backoff_min, timing.backoff_max);
    let mut size = loop {
        let found = tokio::select! {
            // Shut down while the switcher is still being looked for.
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(timing.connect, open(&s)) => match r {
                Ok(r) => r.map(|(_, size)| size),
                Err(_) => Err(DeviceError::Unreachable(format!(
                    "no connection within {:?}", timing.connect
                ))),
            },
        };
        let e = match found {
            Ok(size) => break size,
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        tracing::warn!(device = %key, error = %e, retry_in = ?delay, "extron switcher offline");
        tokio::select! {
            _ = cancel.cancelled() => return,
            // Time for the next attempt.
            _ = tokio::time::sleep(delay) => {}
        }
    };
    // One slot: a second resize report before this one is handled says the same.
    let (resized, mut resizes) = mpsc::channel(1);
    loop {
        tracing::info!(
            device = %key, inputs = size.inputs, outputs = size.outputs, audio = size.audio,
            "extron switcher size"
        );
        let generation = cancel.child_token();
        let make = {
            let (s, resized) = (s.clone(), resized.clone());
            move || ExtronDriver::with(s.clone(), size, Some(resized.clone()))
        };
        let mut task = host.spawn(make, generation.clone());
        tokio::select! {
            // The kit ended the device (its declare was refused, or `cancel`).
            _ = &mut task => return,
            // A connect found another size: run a driver declared with it instead.
            Some(new) = resizes.recv() => {
                generation.cancel();
                let _ = task.await;
                size = new;
            }
        }
    }
}

#[cfg(test)]
#[path = "adapter_tests.rs"]
mod tests;
