//! A virtual room: three simulated devices with typed controls that answer commands
//! and change over time, each driven through the adapter kit ([`super::kit`]) like a
//! real device — the "hardware" is an in-memory model that ticks on its own.
//!
//! * `<room>/projector` (class projector): `power` enum with timed `warming` and
//!   `cooling` transitions, `input` enum, `lamp_hours` read-only int ticking up;
//! * `<room>/mixer` (class dsp): `volume` float in dB (dB taper), `mute` bool,
//!   `label` string, `signal` read-only float that moves, `level` meter;
//! * `<room>/camera` (class camera): `pan_left` / `pan_right` momentary controls that
//!   move the read-only `pan` position while held, `recall` trigger with
//!   `{"preset": n}`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::kit::{Changes, CommandFailure, DeviceCommand, DeviceError, Driver, Host, Timing};
use crate::client::{Client, ClientOptions, Error};
use crate::model::{Access, ControlKind, ControlSpec, DeviceDescriptor, EnumOption, Taper};
use crate::protocol::{CommandOp, ErrorCode, Role};
use crate::value::{as_number, Value};

/// How often the simulated devices change by themselves.
const TICK: Duration = Duration::from_millis(250);
/// Ticks a projector spends warming up or cooling down.
const TRANSITION_TICKS: u32 = 8;

fn options(ids: &[(&str, &str)]) -> Vec<EnumOption> {
    ids.iter()
        .map(|(id, label)| EnumOption {
            id: (*id).into(),
            label: (*label).into(),
        })
        .collect()
}

fn device(
    room: &str,
    name: &str,
    label: &str,
    class: &str,
    controls: Vec<ControlSpec>,
) -> DeviceDescriptor {
    DeviceDescriptor {
        room: room.into(),
        name: name.into(),
        label: label.into(),
        class: class.into(),
        driver: "virtual".into(),
        controls,
    }
}

/// The three descriptors of a virtual room.
pub fn descriptors(room: &str) -> Vec<DeviceDescriptor> {
    vec![
        device(
            room,
            "projector",
            "Projector",
            "projector",
            vec![
                ControlSpec::new(
                    "power",
                    ControlKind::Enum {
                        options: options(&[
                            ("off", "Off"),
                            ("warming", "Warming up"),
                            ("on", "On"),
                            ("cooling", "Cooling down"),
                        ]),
                    },
                )
                .label("Power"),
                ControlSpec::new(
                    "input",
                    ControlKind::Enum {
                        options: options(&[
                            ("hdmi1", "HDMI 1"),
                            ("hdmi2", "HDMI 2"),
                            ("hdbaset", "HDBaseT"),
                        ]),
                    },
                )
                .label("Input"),
                ControlSpec::new(
                    "lamp_hours",
                    ControlKind::Int {
                        min: 0,
                        max: 100_000,
                        step: None,
                        unit: "h".into(),
                    },
                )
                .access(Access::Read)
                .label("Lamp hours"),
            ],
        ),
        device(
            room,
            "mixer",
            "Mixer",
            "dsp",
            vec![
                ControlSpec::new(
                    "volume",
                    ControlKind::Float {
                        min: -80.0,
                        max: 10.0,
                        step: Some(0.5),
                        unit: "dB".into(),
                        taper: Taper::Db,
                    },
                )
                .label("Volume"),
                ControlSpec::new("mute", ControlKind::Bool).label("Mute"),
                ControlSpec::new("label", ControlKind::String { max_len: 32 })
                    .label("Channel label"),
                ControlSpec::new(
                    "signal",
                    ControlKind::Float {
                        min: -60.0,
                        max: 0.0,
                        step: Some(0.1),
                        unit: "dBFS".into(),
                        taper: Taper::Linear,
                    },
                )
                .access(Access::Read)
                .label("Signal"),
                ControlSpec::new(
                    "level",
                    ControlKind::Meter {
                        min: -60.0,
                        max: 0.0,
                        unit: "dBFS".into(),
                        channels: 2,
                        rate_hz: 4.0,
                    },
                )
                .access(Access::Read)
                .label("Level"),
            ],
        ),
        device(
            room,
            "camera",
            "Camera",
            "camera",
            vec![
                ControlSpec::new("pan_left", ControlKind::Momentary).label("Pan left"),
                ControlSpec::new("pan_right", ControlKind::Momentary).label("Pan right"),
                ControlSpec::new(
                    "pan",
                    ControlKind::Int {
                        min: -170,
                        max: 170,
                        step: None,
                        unit: "°".into(),
                    },
                )
                .access(Access::Read)
                .label("Pan position"),
                ControlSpec::new("recall", ControlKind::Trigger).label("Recall preset"),
            ],
        ),
    ]
}

struct Room {
    room: String,
    power: &'static str,
    transition: u32,
    input: String,
    lamp_hours: i64,
    volume: f64,
    mute: bool,
    label: String,
    phase: f64,
    pan: i64,
    pan_dir: i64,
    presets: [i64; 4],
    ticks: u64,
}

impl Room {
    fn new(room: &str) -> Room {
        Room {
            room: room.into(),
            power: "off",
            transition: 0,
            input: "hdmi1".into(),
            lamp_hours: 1200,
            volume: -20.0,
            mute: false,
            label: "Program".into(),
            phase: 0.0,
            pan: 0,
            pan_dir: 0,
            presets: [0, -90, 45, 120],
            ticks: 0,
        }
    }

    fn t(&self, path: &str) -> String {
        format!("{}/{path}", self.room)
    }

    fn signal(&self) -> f64 {
        if self.mute {
            -60.0
        } else {
            ((-18.0 + 6.0 * self.phase.sin()) * 10.0).round() / 10.0
        }
    }

    fn values(&self) -> Vec<(String, Value)> {
        vec![
            (self.t("projector/power"), Value::from(self.power)),
            (self.t("projector/input"), Value::from(self.input.as_str())),
            (self.t("projector/lamp_hours"), Value::from(self.lamp_hours)),
            (self.t("mixer/volume"), Value::F64(self.volume)),
            (self.t("mixer/mute"), Value::Boolean(self.mute)),
            (self.t("mixer/label"), Value::from(self.label.as_str())),
            (self.t("mixer/signal"), Value::F64(self.signal())),
            (self.t("camera/pan_left"), Value::Boolean(self.pan_dir < 0)),
            (self.t("camera/pan_right"), Value::Boolean(self.pan_dir > 0)),
            (self.t("camera/pan"), Value::from(self.pan)),
            (
                self.t("mixer/level"),
                Value::Array(vec![
                    Value::F64(self.signal()),
                    Value::F64(self.signal() - 1.5),
                ]),
            ),
        ]
    }

    /// Applies a command; returns the topics that changed, or a typed refusal.
    fn apply(
        &mut self,
        control: &str,
        op: CommandOp,
        value: &Value,
    ) -> Result<Vec<String>, (ErrorCode, String)> {
        let changed = match (control, op) {
            ("projector/power", CommandOp::Set) => {
                let want = value.as_str().unwrap_or_default();
                match (self.power, want) {
                    ("warming" | "cooling", _) => {
                        return Err((ErrorCode::Busy, format!("the projector is {}", self.power)))
                    }
                    ("off", "on") => {
                        self.power = "warming";
                        self.transition = TRANSITION_TICKS;
                    }
                    ("on", "off") => {
                        self.power = "cooling";
                        self.transition = TRANSITION_TICKS;
                    }
                    (_, "warming" | "cooling") => {
                        return Err((ErrorCode::InvalidValue, "set power to on or off".into()))
                    }
                    _ => {}
                }
                vec!["projector/power"]
            }
            ("projector/input", CommandOp::Set) => {
                self.input = value.as_str().unwrap_or("hdmi1").into();
                vec!["projector/input"]
            }
            ("mixer/volume", CommandOp::Set) => {
                self.volume = as_number(value).unwrap_or(self.volume);
                vec!["mixer/volume"]
            }
            ("mixer/mute", CommandOp::Set) => {
                self.mute = value.as_bool().unwrap_or(self.mute);
                vec!["mixer/mute", "mixer/signal", "mixer/level"]
            }
            ("mixer/label", CommandOp::Set) => {
                self.label = value.as_str().unwrap_or_default().into();
                vec!["mixer/label"]
            }
            ("camera/pan_left" | "camera/pan_right", CommandOp::Set) => {
                let pressed = value.as_bool().unwrap_or(false);
                let dir = if control.ends_with("left") { -1 } else { 1 };
                if pressed {
                    self.pan_dir = dir;
                } else if self.pan_dir == dir {
                    self.pan_dir = 0;
                }
                vec!["camera/pan_left", "camera/pan_right"]
            }
            ("camera/recall", CommandOp::Call) => {
                let preset = value
                    .as_map()
                    .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("preset")))
                    .and_then(|(_, v)| v.as_i64())
                    .or_else(|| value.as_i64())
                    .ok_or((
                        ErrorCode::InvalidValue,
                        "recall takes {\"preset\": 0..3}".into(),
                    ))?;
                let pos = usize::try_from(preset)
                    .ok()
                    .and_then(|i| self.presets.get(i))
                    .ok_or((
                        ErrorCode::InvalidValue,
                        format!("no preset {preset} (0..3)"),
                    ))?;
                self.pan = *pos;
                self.pan_dir = 0;
                vec!["camera/pan", "camera/pan_left", "camera/pan_right"]
            }
            _ => return Err((ErrorCode::UnknownTopic, format!("{control}: not handled"))),
        };
        Ok(changed.into_iter().map(|c| self.t(c)).collect())
    }

    /// Advances time by one tick; returns the topics that changed.
    fn tick(&mut self) -> Vec<String> {
        self.ticks += 1;
        let mut changed = Vec::new();
        if self.transition > 0 {
            self.transition -= 1;
            if self.transition == 0 {
                self.power = if self.power == "warming" { "on" } else { "off" };
                changed.push(self.t("projector/power"));
            }
        }
        if self.power == "on" && self.ticks.is_multiple_of(40) {
            self.lamp_hours += 1;
            changed.push(self.t("projector/lamp_hours"));
        }
        self.phase += 0.4;
        changed.push(self.t("mixer/signal"));
        changed.push(self.t("mixer/level"));
        if self.pan_dir != 0 {
            let next = (self.pan + 5 * self.pan_dir).clamp(-170, 170);
            if next != self.pan {
                self.pan = next;
                changed.push(self.t("camera/pan"));
            }
        }
        changed
    }
}

/// The simulated hardware of a room, shared by its three drivers; it changes by
/// itself every [`TICK`] and announces what changed.
struct Hardware {
    room: Mutex<Room>,
    changes: broadcast::Sender<Vec<String>>,
}

impl Hardware {
    /// Starts a room's hardware ticking until `cancel`.
    fn start(room: &str, cancel: CancellationToken) -> Arc<Hardware> {
        let (changes, _) = broadcast::channel(64);
        let hw = Arc::new(Hardware {
            room: Mutex::new(Room::new(room)),
            changes,
        });
        let ticker = hw.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        let changed = ticker.lock().tick();
                        let _ = ticker.changes.send(changed);
                    }
                }
            }
        });
        hw
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Room> {
        self.room.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One virtual device, driven through the adapter kit like a real one.
pub struct VirtualDevice {
    hw: Arc<Hardware>,
    desc: DeviceDescriptor,
    events: broadcast::Receiver<Vec<String>>,
}

impl VirtualDevice {
    fn name(&self) -> &str {
        &self.desc.name
    }

    /// This device's values among `topics` (all of them when `None`).
    fn values(&self, topics: Option<&[String]>) -> Changes {
        let prefix = format!("{}/{}/", self.desc.room, self.desc.name);
        self.hw
            .lock()
            .values()
            .into_iter()
            .filter(|(t, _)| topics.is_none_or(|ts| ts.contains(t)))
            .filter_map(|(t, v)| Some((t.strip_prefix(&prefix)?.to_owned(), v)))
            .collect()
    }
}

impl Driver for VirtualDevice {
    fn descriptor(&self) -> DeviceDescriptor {
        self.desc.clone()
    }

    fn timing(&self) -> Timing {
        Timing {
            poll: Duration::from_secs(30),
            ..Timing::default()
        }
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }

    async fn poll(&mut self) -> Result<Changes, DeviceError> {
        Ok(self.values(None))
    }

    async fn execute(
        &mut self,
        command: &DeviceCommand,
    ) -> Result<Result<Changes, CommandFailure>, DeviceError> {
        let path = format!("{}/{}", self.name(), command.control);
        let applied = self.hw.lock().apply(&path, command.op, &command.value);
        Ok(match applied {
            Ok(changed) => Ok(self.values(Some(&changed))),
            Err((code, message)) => Err(CommandFailure::new(code, message)),
        })
    }

    async fn next_event(&mut self) -> Result<Changes, DeviceError> {
        loop {
            match self.events.recv().await {
                Ok(topics) => {
                    let changes = self.values(Some(&topics));
                    if !changes.is_empty() {
                        return Ok(changes);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(self.values(None)),
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

/// Checks a `[[device]] driver = "virtual"` entry: its name picks the simulated
/// device (`projector`, `mixer` or `camera`); no host or port.
///
/// # Errors
/// A message naming the key.
pub fn check(d: &crate::config::DeviceConfig) -> Result<(), String> {
    if !["projector", "mixer", "camera"].contains(&d.name.as_str()) {
        return Err(format!(
            "driver \"virtual\" simulates a projector, mixer or camera: name = {:?}",
            d.name
        ));
    }
    if d.host.is_some() || d.port.is_some() || d.password.is_some() {
        return Err("driver \"virtual\" takes no host, port or password".into());
    }
    Ok(())
}

/// Starts one configured virtual device (with its own simulated hardware) on `host`.
pub fn spawn(
    host: &Host,
    d: &crate::config::DeviceConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let hw = Hardware::start(&d.room, cancel.clone());
    let mut desc = descriptors(&d.room)
        .into_iter()
        .find(|x| x.name == d.name)
        .unwrap_or_else(|| descriptors(&d.room).remove(0));
    if let Some(label) = &d.label {
        desc.label = label.clone();
    }
    let make = move || VirtualDevice {
        events: hw.changes.subscribe(),
        hw: hw.clone(),
        desc: desc.clone(),
    };
    host.spawn(make, cancel)
}

/// Runs a virtual room as an adapter on `opts` until `cancel` fires.
///
/// # Errors
/// The client error if the first connection fails.
pub async fn run(opts: ClientOptions, room: &str, cancel: CancellationToken) -> Result<(), Error> {
    let client = Client::connect(opts.role(Role::Adapter)).await?;
    let host = Host::start(client.clone()).await;
    let hw = Hardware::start(room, cancel.clone());
    let mut tasks = Vec::new();
    for desc in descriptors(room) {
        let hw = hw.clone();
        let make = move || VirtualDevice {
            events: hw.changes.subscribe(),
            hw: hw.clone(),
            desc: desc.clone(),
        };
        tasks.push(host.spawn(make, cancel.clone()));
    }
    for t in tasks {
        let _ = t.await;
    }
    client.close().await;
    Ok(())
}
