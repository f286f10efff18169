//! The Q-SYS adapter: a Core's named components, spoken to over QRC ([`super::proto`]),
//! as one `dsp` device on the bus (driver `qrc`), run by the adapter kit
//! ([`crate::devices::kit`]).
//!
//! **Controls come from the Core.** QRC can list named components
//! (`Component.GetComponents`) and their controls (`Component.GetControls`, with Type,
//! Direction and ValueMin/ValueMax), but not Named Controls, so [`spawn`] connects once,
//! reads every named component's controls and declares the device with them; until the
//! Core answers, the device is declared without controls and offline, and discovery is
//! retried with backoff. Controls are addressed as component controls
//! (`Component.Set`, `ChangeGroup.AddComponentControl`), which is what a named
//! component offers on a real Core. Each becomes the avbus control
//! `<component>.<control>` (`Program.gain`); characters outside the topic alphabet
//! (`A-Z a-z 0-9 - _ . : @`) become `_`, and a name longer than 64 bytes or equal to
//! one already taken is cut and tagged with a hash of the QRC name, so names stay
//! stable from run to run. The control's label keeps the QRC name.
//!
//! | QRC Type | avbus control |
//! |---|---|
//! | Float whose strings end in `dB` | `float`, unit dB, dB taper, step 0.1, range from ValueMin/ValueMax |
//! | other Float, Time | `float`, linear (Time in `s`) |
//! | Integer | `int` |
//! | Boolean | `bool` (set as Value 1/0) |
//! | Text | `string` of at most 1024 characters (set through the String aspect) |
//! | Trigger | `trigger`, fired with `call` (arguments ignored) as Value 1 |
//!
//! Read Only controls are read-only on the bus; numbers without a range and unknown
//! types are skipped (logged); at most [`MAX_CONTROLS`](crate::model::MAX_CONTROLS)
//! controls are taken.
//!
//! **Push, not poll.** After connecting (and logging on) the adapter puts every control
//! but the triggers in one change group and asks the Core to AutoPoll it every 0.1 s:
//! the Core then pushes `ChangeGroup.Poll` notifications with what changed, which
//! [`Driver::next_event`] hands to the kit. The kit's poll (`Invalidate` + `Poll` of
//! that group, every `poll_ms`, 30 s by default) is only a safety net. A command is a
//! `Component.Set` followed by a `Poll` of the group, so the state it confirms (with
//! everything a preset recall moved) is published before the panel's `ok`. Pushes that
//! arrive while a request waits for its answer are kept and returned with it, or by
//! the next `next_event`; none is lost.
//!
//! **Keepalive.** A Core closes a socket that sent nothing for 60 s, so the adapter sends
//! `NoOp` whenever it has sent nothing for `min(20 s, poll_ms)`, and treats a Core that
//! has sent nothing (no push, no answer) for three such intervals as gone.
//!
//! **Logon.** `password = "user:pin"` (split at the first `:`; without one the user is
//! empty, as `avbus sim qrc` reads it). A refused `Logon`, or error 10 (logon
//! required) to any request, is a [`DeviceError::Auth`]: the device stays offline
//! and the kit retries with backoff.
//!
//! **Design changes.** Each connect compares the `DesignCode` of the pushed
//! `EngineStatus` with the one discovered; when it differs the design is read again,
//! and when its controls differ the device is declared again with the new ones.
//!
//! **Bad input.** A frame that is not JSON-RPC (or too long) is logged with an escaped
//! excerpt and ends the link (the kit reconnects); notifications of methods this adapter
//! does not use are skipped. QRC errors answer commands: unknown component or control →
//! `unknown_topic`, invalid params → `invalid_value`, logon required → the link is
//! re-established (auth), anything else → `busy`.
//!
//! **Cancel safety.** `next_event` only awaits socket reads and writes that are
//! cancel-safe; the read buffer ([`Framer`](super::proto::Framer)) and unsent bytes
//! live in the driver.
//!
//! Sources: QSC "QRC Commands" (methods, `EngineStatus` on connect, error codes, change
//! groups and AutoPoll), QSC "QRC Overview" (TCP 1710, the 60 s rule), QSC "Change
//! Groups for ECP and QRC" (groups die with the connection); integrators' scripts that
//! fire triggers with `Component.Set … "Value":1`. See [`super`] for the full list.

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{
    ControlSet, ControlState, ErrorCode as QrcCode, GroupId, Request, RpcError, SetTarget,
    Value as QrcValue,
};
use crate::config::DeviceConfig;
use crate::devices::kit::{
    Backoff, Changes, CommandFailure, DeviceCommand, DeviceError, Driver, Host, Timing,
};
use crate::model::{ControlKind, DeviceDescriptor};
use crate::protocol::{CommandOp, ErrorCode};
use crate::value::{as_number, Value};
use design::{Design, Mapped};
use link::Link;

mod design;
mod link;

/// QRC's TCP port.
pub const DEFAULT_PORT: u16 = 1710;
/// Full-state poll when `poll_ms` is not set: the Core pushes changes, so this is only
/// a safety net.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);
/// Longest the adapter stays silent: a Core closes a socket after 60 s without input.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Keepalive intervals without a byte from the Core before the link counts as dead.
const DEAD_AFTER: u32 = 3;
/// AutoPoll interval asked of the Core, in seconds (0.05–0.2 s are used in the field).
const AUTOPOLL_RATE: f64 = 0.1;
/// The change group's id; groups belong to one connection, so one name is enough.
const GROUP: &str = "avbus";
/// Longest text sent to a Text control, in characters: at most 4 KiB of UTF-8.
const TEXT_MAX: usize = 1024;
/// Longest a connect may take, including logon, change group set-up and, after a
/// design change, reading the design again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the discovery at start may take before it is retried.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnect and rediscovery backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Checks a `[[device]] driver = "qrc"` entry: `host` is required, `port` defaults to
/// 1710, `password` is `user:pin`, `poll_ms` defaults to 30 000.
///
/// # Errors
/// A message naming the key that is wrong or missing.
pub fn check(d: &DeviceConfig) -> Result<(), String> {
    Settings::from_config(d).map(|_| ())
}

/// Starts one configured Core on `host` until `cancel`: discovers its controls (retrying
/// with backoff until the Core answers), then runs it through the kit; declares it again
/// when the Core's design changes.
pub fn spawn(host: &Host, d: &DeviceConfig, cancel: CancellationToken) -> JoinHandle<()> {
    let host = host.clone();
    let settings = Settings::from_config(d);
    tokio::spawn(async move {
        let settings = match settings {
            Ok(s) => Arc::new(s),
            Err(e) => return tracing::error!(error = %e, "qrc: bad [[device]] entry"),
        };
        let key = format!("{}/{}", settings.room, settings.name);
        // Until the design is known, panels see the device, offline, without controls.
        let placeholder = settings.descriptor(&[]);
        if let Err(e) = host.client().declare(placeholder, false).await {
            tracing::warn!(device = %key, error = %e, "qrc: declare refused");
        }
        let Some(mut design) = discover_until_found(&settings, &cancel).await else {
            return;
        };
        let (redesign, mut redesigned) = mpsc::channel(1);
        loop {
            let device = cancel.child_token();
            let driver = QrcDriver::new(settings.clone(), design.clone(), Some(redesign.clone()));
            let mut task = host.spawn(move || driver.clone(), device.clone());
            tokio::select! {
                // Cancelled, or the kit could not declare the device.
                _ = &mut task => return,
                Some(fresh) = redesigned.recv() => {
                    tracing::info!(device = %key, "qrc: the Core's design changed: declaring it again");
                    device.cancel();
                    let _ = task.await;
                    design = fresh;
                }
            }
        }
    })
}

/// Reads the Core's design, retrying with backoff; `None` when cancelled.
async fn discover_until_found(
    settings: &Settings,
    cancel: &CancellationToken,
) -> Option<Arc<Design>> {
    let key = format!("{}/{}", settings.room, settings.name);
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let error = tokio::select! {
            () = cancel.cancelled() => return None,
            r = Design::fetch(settings) => match r {
                Ok(design) => {
                    tracing::info!(device = %key, design = %design.design_name, controls = design.controls.len(), "qrc: design read");
                    return Some(Arc::new(design));
                }
                Err(e) => e,
            },
        };
        let delay = backoff.next_delay();
        tracing::warn!(device = %key, error = %error, retry_in = ?delay, "qrc: cannot read the Core's design");
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// A configured Core.
#[derive(Debug, Clone)]
struct Settings {
    room: String,
    name: String,
    label: String,
    /// `host:port`.
    addr: String,
    /// `(user, password)` for `Logon`.
    credentials: Option<(String, String)>,
    poll: Duration,
}

impl Settings {
    fn from_config(d: &DeviceConfig) -> Result<Settings, String> {
        let host = d.host.as_deref().map(str::trim).unwrap_or_default();
        if host.is_empty() {
            return Err("driver \"qrc\" needs host = \"<Core address>\"".into());
        }
        let port = match d.port {
            Some(0) => return Err("port must be 1 to 65535".into()),
            port => port.unwrap_or(DEFAULT_PORT),
        };
        let addr = if host.parse::<Ipv6Addr>().is_ok() {
            format!("[{host}]:{port}")
        } else if host.contains(':') {
            return Err(format!("host {host:?}: give the port as port = N"));
        } else {
            format!("{host}:{port}")
        };
        let credentials = d.password.as_deref().map(|p| match p.split_once(':') {
            Some((user, pin)) => (user.to_owned(), pin.to_owned()),
            None => (String::new(), p.to_owned()),
        });
        Ok(Settings {
            room: d.room.clone(),
            name: d.name.clone(),
            label: d.label.clone().unwrap_or_else(|| "Q-SYS Core".into()),
            addr,
            credentials,
            poll: d.poll_ms.map_or(DEFAULT_POLL, Duration::from_millis),
        })
    }

    /// Longest the adapter lets the link sit without sending.
    fn keepalive(&self) -> Duration {
        self.poll.min(KEEPALIVE)
    }

    fn descriptor(&self, controls: &[Mapped]) -> DeviceDescriptor {
        DeviceDescriptor {
            room: self.room.clone(),
            name: self.name.clone(),
            label: self.label.clone(),
            class: "dsp".into(),
            driver: "qrc".into(),
            controls: controls.iter().map(|m| m.spec.clone()).collect(),
        }
    }
}

/// Decodes a request's result.
fn answer<T: serde::de::DeserializeOwned>(method: &str, json: Json) -> Result<T, DeviceError> {
    serde_json::from_value(json)
        .map_err(|e| DeviceError::Protocol(format!("unexpected answer to {method}: {e}")))
}

/// A QRC error to a request the link needs: logon required is an auth failure,
/// anything else a protocol error.
fn link_error(method: &str, e: RpcError) -> DeviceError {
    match e.kind() {
        Some(QrcCode::LogonRequired) => DeviceError::Auth(format!(
            "{method}: the Core wants a logon (password = \"user:pin\")"
        )),
        _ => DeviceError::Protocol(format!("{method}: {e}")),
    }
}

async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn group_id() -> GroupId {
    GroupId(GROUP.into())
}

/// A Q-SYS Core as one avbus device: see the module documentation.
pub struct QrcDriver {
    settings: Arc<Settings>,
    design: Arc<Design>,
    /// The design code the controls were last checked against.
    design_code: String,
    /// Where a different design is reported, for [`spawn`] to declare it.
    redesign: Option<mpsc::Sender<Arc<Design>>>,
    link: Option<Link>,
    /// The newest value of each control (by index), for confirming a `set` that
    /// changed nothing.
    values: Vec<Option<Value>>,
    /// Changes taken from the Core and not yet handed to the kit.
    pending: Changes,
}

impl Clone for QrcDriver {
    /// A fresh, unconnected driver for the same Core and design.
    fn clone(&self) -> Self {
        QrcDriver::new(
            self.settings.clone(),
            self.design.clone(),
            self.redesign.clone(),
        )
    }
}

impl QrcDriver {
    fn new(
        settings: Arc<Settings>,
        design: Arc<Design>,
        redesign: Option<mpsc::Sender<Arc<Design>>>,
    ) -> QrcDriver {
        QrcDriver {
            values: vec![None; design.controls.len()],
            design_code: design.code.clone(),
            settings,
            design,
            redesign,
            link: None,
            pending: Vec::new(),
        }
    }

    /// Connects to the Core of a `[[device]]` entry once, reads its design and returns
    /// a driver for it (not connected; [`Host::spawn`] it with `move || driver.clone()`).
    /// [`spawn`] does this, retrying, and follows design changes.
    ///
    /// # Errors
    /// An entry [`check`] refuses as [`DeviceError::Unreachable`], and the Core's errors.
    pub async fn discover(d: &DeviceConfig) -> Result<QrcDriver, DeviceError> {
        let settings = Settings::from_config(d).map_err(DeviceError::Unreachable)?;
        let design = Design::fetch(&settings).await?;
        Ok(QrcDriver::new(Arc::new(settings), Arc::new(design), None))
    }

    fn link(&mut self) -> Result<&mut Link, DeviceError> {
        self.link
            .as_mut()
            .ok_or_else(|| DeviceError::Unreachable("not connected".into()))
    }

    /// Moves the pushes and poll answers the link holds into `pending`.
    fn take_pushes(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        for poll in link.pushes.drain(..) {
            for change in poll.changes {
                let component = change.component.clone().unwrap_or_default();
                let Some(&i) = self.design.by_qrc.get(&(component, change.name.clone())) else {
                    continue;
                };
                let m = &self.design.controls[i];
                match value_of(&m.spec.kind, &change) {
                    Some(v) => {
                        self.values[i] = Some(v.clone());
                        self.pending.push((m.spec.name.clone(), v));
                    }
                    None => {
                        tracing::debug!(control = %m.spec.name, ?change, "qrc: value not understood")
                    }
                }
            }
        }
    }

    /// Polls the change group (what changed since the last report) into `pending`.
    async fn poll_group(&mut self) -> Result<(), DeviceError> {
        if self.design.has_group() {
            let link = self.link()?;
            let changes = link
                .call_ok(&Request::ChangeGroupPoll { id: group_id() })
                .await?;
            let poll = answer("ChangeGroup.Poll", changes)?;
            link.pushes.push(poll);
        }
        self.take_pushes();
        Ok(())
    }
}

/// The avbus value of a control's reported state.
fn value_of(kind: &ControlKind, state: &ControlState) -> Option<Value> {
    let number = match &state.value {
        QrcValue::Number(n) => Some(*n).filter(|n| n.is_finite()),
        QrcValue::Bool(b) => Some(f64::from(u8::from(*b))),
        QrcValue::Text(t) => t.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
    };
    Some(match kind {
        // Clamped: the bus refuses values outside the declared range.
        ControlKind::Float { min, max, .. } => Value::F64(number?.clamp(*min, *max)),
        ControlKind::Int { min, max, .. } => {
            Value::from((number?.round() as i64).clamp(*min, *max))
        }
        ControlKind::Bool => Value::Boolean(match &state.value {
            QrcValue::Bool(b) => *b,
            QrcValue::Text(t) if t == "true" => true,
            QrcValue::Text(t) if t == "false" => false,
            _ => number? != 0.0,
        }),
        ControlKind::String { max_len } => {
            Value::from(state.string.chars().take(*max_len).collect::<String>())
        }
        _ => return None,
    })
}

/// How a refused command is answered; `Err` when the link must be re-established.
fn command_failure(control: &str, e: RpcError) -> Result<CommandFailure, DeviceError> {
    let code = match e.kind() {
        Some(QrcCode::LogonRequired) => return Err(link_error("Component.Set", e)),
        Some(
            QrcCode::UnknownComponent | QrcCode::UnknownControl | QrcCode::IllegalMixerChannel,
        ) => ErrorCode::UnknownTopic,
        Some(QrcCode::InvalidParams | QrcCode::InvalidRequest) => ErrorCode::InvalidValue,
        _ => ErrorCode::Busy,
    };
    Ok(CommandFailure::new(code, format!("{control}: {e}")))
}

impl Driver for QrcDriver {
    fn descriptor(&self) -> DeviceDescriptor {
        self.settings.descriptor(&self.design.controls)
    }

    fn timing(&self) -> Timing {
        Timing {
            poll: self.settings.poll,
            connect: CONNECT_TIMEOUT,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            ..Timing::default()
        }
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        self.link = None;
        self.pending.clear();
        let mut link = Link::open(&self.settings).await?;
        if link.status.as_ref().map(|s| &s.design_code) != Some(&self.design_code) {
            // Another design (or the same one loaded again): read it before trusting names.
            let fresh = Design::read(&mut link).await?;
            if fresh.controls != self.design.controls {
                let name = fresh.design_name.clone();
                match &self.redesign {
                    Some(tx) => {
                        let _ = tx.try_send(Arc::new(fresh));
                    }
                    None => {
                        tracing::warn!(peer = %link.peer, "qrc: the Core's design changed: restart the adapter to follow it")
                    }
                }
                return Err(DeviceError::Protocol(format!(
                    "the Core now runs design {name:?} with other controls"
                )));
            }
            self.design_code = fresh.code;
        }
        let group = self.design.group();
        for component in group.iter().cloned() {
            let name = component.name.clone();
            let add = Request::ChangeGroupAddComponentControl {
                id: group_id(),
                component,
            };
            match link.call(&add).await? {
                Ok(_) => {}
                // Controls the Core no longer has are left out; the others are added.
                Err(e)
                    if matches!(
                        e.kind(),
                        Some(QrcCode::UnknownControl | QrcCode::UnknownComponent)
                    ) =>
                {
                    tracing::warn!(peer = %link.peer, component = %name, error = %e, "qrc: controls missing on the Core")
                }
                Err(e) => return Err(link_error("ChangeGroup.AddComponentControl", e)),
            }
        }
        if !group.is_empty() {
            let auto = Request::ChangeGroupAutoPoll {
                id: group_id(),
                rate: AUTOPOLL_RATE,
            };
            let first = link.call_ok(&auto).await?;
            link.pushes.push(answer("ChangeGroup.AutoPoll", first)?);
        }
        self.link = Some(link);
        self.take_pushes();
        Ok(())
    }

    async fn poll(&mut self) -> Result<Changes, DeviceError> {
        if self.design.has_group() {
            let invalidate = Request::ChangeGroupInvalidate { id: group_id() };
            self.link()?.call_ok(&invalidate).await?;
        }
        self.poll_group().await?;
        Ok(std::mem::take(&mut self.pending))
    }

    async fn execute(
        &mut self,
        c: &DeviceCommand,
    ) -> Result<Result<Changes, CommandFailure>, DeviceError> {
        let Some(&i) = self.design.by_name.get(&c.control) else {
            let f = CommandFailure::new(
                ErrorCode::UnknownTopic,
                format!("no control {:?}", c.control),
            );
            return Ok(Err(f));
        };
        let design = self.design.clone();
        let m = &design.controls[i];
        let invalid = |what: &str| {
            let message = format!("{}: expected {what}", c.control);
            Ok(Err(CommandFailure::new(ErrorCode::InvalidValue, message)))
        };
        let target = match (&m.spec.kind, c.op) {
            (ControlKind::Trigger, CommandOp::Call) => SetTarget::Value(QrcValue::Number(1.0)),
            (ControlKind::Bool, CommandOp::Set) => match c.value.as_bool() {
                Some(b) => SetTarget::Value(QrcValue::Number(f64::from(u8::from(b)))),
                None => return invalid("a bool"),
            },
            (ControlKind::Float { .. } | ControlKind::Int { .. }, CommandOp::Set) => {
                match as_number(&c.value) {
                    Some(n) => SetTarget::Value(QrcValue::Number(n)),
                    None => return invalid("a number"),
                }
            }
            (ControlKind::String { .. }, CommandOp::Set) => match c.value.as_str() {
                Some(s) => SetTarget::String(s.to_owned()),
                None => return invalid("a string"),
            },
            _ => {
                let message = format!("{}: set a value, call a trigger", c.control);
                return Ok(Err(CommandFailure::new(ErrorCode::NotWritable, message)));
            }
        };
        let set = Request::ComponentSet {
            name: m.component.clone(),
            controls: vec![ControlSet {
                name: m.control.clone(),
                target,
                ramp: None,
            }],
        };
        let trigger = matches!(m.spec.kind, ControlKind::Trigger);
        if let Err(e) = self.link()?.call(&set).await? {
            // Pushes read meanwhile stay pending for `next_event`.
            self.take_pushes();
            return command_failure(&c.control, e).map(Err);
        }
        // What the Core confirms: every control that changed, a preset's included.
        self.poll_group().await?;
        let mut changes = std::mem::take(&mut self.pending);
        if !trigger && !changes.iter().any(|(name, _)| *name == c.control) {
            // The value did not change (already there): confirm the one we hold.
            changes.extend(self.values[i].clone().map(|v| (c.control.clone(), v)));
        }
        Ok(Ok(changes))
    }

    async fn next_event(&mut self) -> Result<Changes, DeviceError> {
        let keepalive = self.settings.keepalive();
        let dead = keepalive * DEAD_AFTER;
        loop {
            self.take_pushes();
            if !self.pending.is_empty() {
                return Ok(std::mem::take(&mut self.pending));
            }
            let link = self.link()?;
            let wake = (link.last_sent + keepalive).min(link.last_received + dead);
            match link.next_incoming(Some(wake)).await? {
                Some(message) => link.absorb(message)?,
                None => {
                    let now = Instant::now();
                    if now >= link.last_received + dead {
                        return Err(DeviceError::Unreachable(format!(
                            "{} sent nothing for {dead:?}",
                            link.peer
                        )));
                    }
                    if now >= link.last_sent + keepalive {
                        // Answered by the Core; the answer also proves it is alive.
                        link.queue(&Request::NoOp {});
                    }
                }
            }
        }
    }

    async fn disconnect(&mut self) {
        self.link = None;
    }
}
