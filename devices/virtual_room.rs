//! A virtual room: three simulated devices with typed controls that answer commands
//! and change over time, run as an ordinary adapter over the client library.
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

use crate::client::{Client, ClientOptions, ConnectionEvent, Error, IncomingCommand};
use crate::model::{
    Access, ControlKind, ControlSpec, DeviceDescriptor, EnumOption, Quality, Taper,
};
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
                vec!["mixer/mute", "mixer/signal"]
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
        if self.power == "on" && self.ticks % 40 == 0 {
            self.lamp_hours += 1;
            changed.push(self.t("projector/lamp_hours"));
        }
        self.phase += 0.4;
        changed.push(self.t("mixer/signal"));
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

async fn publish(client: &Client, room: &Room, topics: &[String]) -> Result<(), Error> {
    for (topic, value) in room.values() {
        if topics.contains(&topic) {
            client.publish_state(&topic, value, Quality::Ok).await?;
        }
    }
    Ok(())
}

async fn publish_all(client: &Client, room: &Room) -> Result<(), Error> {
    let all: Vec<String> = room.values().into_iter().map(|(t, _)| t).collect();
    publish(client, room, &all).await?;
    let signal = room.signal();
    let level = Value::Array(vec![Value::F64(signal), Value::F64(signal - 1.5)]);
    client
        .publish_state(&room.t("mixer/level"), level, Quality::Ok)
        .await
}

async fn command(client: &Client, room: &mut Room, cmd: IncomingCommand) -> Result<(), Error> {
    let c = &cmd.command;
    let control = c
        .topic
        .strip_prefix(&format!("{}/", room.room))
        .unwrap_or(&c.topic)
        .to_owned();
    match room.apply(&control, c.op, &c.value) {
        Ok(changed) => {
            // State first, then the answer: a panel that gets `ok` already holds the
            // new value.
            publish(client, room, &changed).await?;
            cmd.ok(Value::Nil).await;
        }
        Err((code, message)) => cmd.fail(code, message).await,
    }
    Ok(())
}

/// Runs a virtual room as an adapter on `opts` until `cancel` fires.
///
/// # Errors
/// The client error if the first connection or a declaration fails.
pub async fn run(opts: ClientOptions, room: &str, cancel: CancellationToken) -> Result<(), Error> {
    let client = Client::connect(opts.role(Role::Adapter)).await?;
    let mut commands = client.commands().await;
    let mut events = client.events();
    for d in descriptors(room) {
        client.declare(d, true).await?;
    }
    let mut state = Room::new(room);
    publish_all(&client, &state).await?;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(cmd) = commands.recv() => command(&client, &mut state, cmd).await?,
            // After a reconnect the bus marks values stale until they are published.
            Ok(ev) = events.recv() => {
                if let ConnectionEvent::Connected { .. } = ev {
                    publish_all(&client, &state).await?;
                }
            }
            _ = tick.tick() => {
                let changed = state.tick();
                publish(&client, &state, &changed).await?;
                let signal = state.signal();
                let level = Value::Array(vec![Value::F64(signal), Value::F64(signal - 1.5)]);
                client.publish_state(&state.t("mixer/level"), level, Quality::Ok).await?;
            }
        }
    }
    client.close().await;
    Ok(())
}
