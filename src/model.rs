//! The device model: descriptors, typed controls, command validation and the
//! derived fields (slider position, display text) that panels draw.
//!
//! An adapter declares each device it serves with a [`DeviceDescriptor`]; the bus
//! validates it ([`DeviceDescriptor::validate`]), publishes it retained at
//! `$devices/<room>/<device>`, and checks every command against the control's
//! [`ControlKind`] before forwarding it ([`ControlSpec::check_set`]).

use serde::{Deserialize, Serialize};

use crate::topic::{Topic, MAX_LEVEL_LEN};
use crate::value::{as_number, Value};

/// The name of the control every device has, owned by the bus.
pub const ONLINE: &str = "online";
/// Most controls one device may declare.
pub const MAX_CONTROLS: usize = 1024;
/// Most options in one enum control.
pub const MAX_ENUM_OPTIONS: usize = 256;

/// What an adapter declares about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDescriptor {
    /// Room the device is in (first topic level), e.g. `boardroom`.
    pub room: String,
    /// Device name, unique within the room (second topic level), e.g. `projector`.
    pub name: String,
    /// Human label.
    #[serde(default)]
    pub label: String,
    /// What it is: projector, switcher, dsp, camera, console, virtual, ...
    pub class: String,
    /// What speaks to it: pjlink, extron-sis, qrc, visca, x32-osc, virtual, ...
    pub driver: String,
    /// Its controls (the bus adds `online`).
    pub controls: Vec<ControlSpec>,
}

/// Who may read and write a control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    #[default]
    ReadWrite,
}

impl Access {
    /// Whether panels may command the control.
    pub fn writable(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// How a float control's slider position follows its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Taper {
    #[default]
    Linear,
    /// Audio gain in dB: position follows `10^(dB/60)`, normalized to [min, max]
    /// (0 dB sits near two thirds of a -80..+10 dB fader, as on a mixing desk).
    #[serde(rename = "dB")]
    Db,
}

/// One option of an enum control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnumOption {
    /// The value carried on the wire.
    pub id: String,
    /// What a panel shows.
    #[serde(default)]
    pub label: String,
}

/// The type of a control, with its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlKind {
    Bool,
    Int {
        min: i64,
        max: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<i64>,
        #[serde(default)]
        unit: String,
    },
    Float {
        min: f64,
        max: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<f64>,
        #[serde(default)]
        unit: String,
        #[serde(default)]
        taper: Taper,
    },
    Enum {
        options: Vec<EnumOption>,
    },
    String {
        max_len: usize,
    },
    /// Press (`true`) and release (`false`); released by the bus when the pressing
    /// client disconnects.
    Momentary,
    /// A one-shot action fired with `call`, with optional arguments.
    Trigger,
    /// Streamed telemetry; the newest value is readable over TCP.
    Meter {
        min: f64,
        max: f64,
        #[serde(default)]
        unit: String,
        #[serde(default = "one")]
        channels: u32,
        #[serde(default)]
        rate_hz: f64,
    },
}

fn one() -> u32 {
    1
}

/// One control of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlSpec {
    /// Name (third topic level), e.g. `power`.
    pub name: String,
    /// Human label.
    #[serde(default)]
    pub label: String,
    /// Read, write or read-write.
    #[serde(default)]
    pub access: Access,
    /// Type and limits.
    #[serde(flatten)]
    pub kind: ControlKind,
}

/// A control state's quality, as panels draw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The value is what the device reported.
    #[default]
    Ok,
    /// A command is on its way to the device (target and deadline in the record).
    Pending,
    /// The value may no longer be true (never reported yet, or the adapter said so).
    Stale,
    /// The device is unreachable or its adapter is gone.
    Offline,
}

impl Quality {
    /// Lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Ok => "ok",
            Quality::Pending => "pending",
            Quality::Stale => "stale",
            Quality::Offline => "offline",
        }
    }
}

/// Checks that `name` is a valid single topic level (rooms, devices, controls).
///
/// # Errors
/// A message naming `what` and the rule broken.
pub fn check_level(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LEVEL_LEN || name.contains(['/', '+', '#']) {
        return Err(format!("{what} {name:?} is not a valid topic level"));
    }
    Topic::new(name).map_err(|e| format!("{what} {name:?}: {e}"))?;
    if name.starts_with('$') {
        return Err(format!("{what} {name:?} may not start with '$'"));
    }
    Ok(())
}

impl DeviceDescriptor {
    /// `room/name`, the device's address.
    pub fn key(&self) -> String {
        format!("{}/{}", self.room, self.name)
    }

    /// Checks names and limits; the error names the offending field.
    ///
    /// # Errors
    /// A message naming the field and the rule it breaks.
    pub fn validate(&self) -> Result<(), String> {
        check_level("room", &self.room)?;
        check_level("device name", &self.name)?;
        if self.controls.len() > MAX_CONTROLS {
            return Err(format!("more than {MAX_CONTROLS} controls"));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.controls {
            check_level("control", &c.name)?;
            if c.name == ONLINE {
                return Err("control `online` is reserved: the bus adds it".into());
            }
            if !seen.insert(c.name.as_str()) {
                return Err(format!("control {:?} declared twice", c.name));
            }
            c.validate()
                .map_err(|e| format!("control {:?}: {e}", c.name))?;
        }
        Ok(())
    }

    /// The control named `name`.
    pub fn control(&self, name: &str) -> Option<&ControlSpec> {
        self.controls.iter().find(|c| c.name == name)
    }
}

impl ControlSpec {
    /// A read-write control of `kind`.
    pub fn new(name: &str, kind: ControlKind) -> ControlSpec {
        ControlSpec {
            name: name.into(),
            label: String::new(),
            access: Access::ReadWrite,
            kind,
        }
    }

    /// Sets the access (builder style).
    pub fn access(mut self, access: Access) -> ControlSpec {
        self.access = access;
        self
    }

    /// Sets the label (builder style).
    pub fn label(mut self, label: &str) -> ControlSpec {
        self.label = label.into();
        self
    }

    fn validate(&self) -> Result<(), String> {
        match &self.kind {
            ControlKind::Int { min, max, step, .. } => {
                if min > max {
                    return Err("min > max".into());
                }
                if step.is_some_and(|s| s <= 0) {
                    return Err("step must be positive".into());
                }
            }
            ControlKind::Float { min, max, .. } | ControlKind::Meter { min, max, .. } => {
                if !(min.is_finite() && max.is_finite() && min <= max) {
                    return Err("min and max must be finite with min <= max".into());
                }
                if let ControlKind::Float { step: Some(s), .. } = &self.kind {
                    if !(s.is_finite() && *s > 0.0) {
                        return Err("step must be positive".into());
                    }
                }
            }
            ControlKind::Enum { options } => {
                if options.is_empty() || options.len() > MAX_ENUM_OPTIONS {
                    return Err(format!("needs 1 to {MAX_ENUM_OPTIONS} options"));
                }
            }
            ControlKind::Bool
            | ControlKind::String { .. }
            | ControlKind::Momentary
            | ControlKind::Trigger => {}
        }
        Ok(())
    }

    /// Checks a `set` value against the control's type and limits and returns it
    /// normalized (e.g. `"on"` for a bool becomes `true`, `3.0` for an int becomes `3`).
    ///
    /// # Errors
    /// A message naming the rule broken, sent to the panel as `invalid_value`.
    pub fn check_set(&self, value: &Value) -> Result<Value, String> {
        match &self.kind {
            ControlKind::Bool | ControlKind::Momentary => as_bool(value)
                .map(Value::Boolean)
                .ok_or_else(|| format!("expected a bool (true/false), got {}", short(value))),
            ControlKind::Int { min, max, step, .. } => {
                let v = as_int(value)
                    .ok_or_else(|| format!("expected an integer, got {}", short(value)))?;
                if v < *min || v > *max {
                    return Err(format!("{v} is outside {min}..={max}"));
                }
                if let Some(s) = step {
                    // In i128: `v - min` overflows i64 for a range wider than i64::MAX.
                    if (i128::from(v) - i128::from(*min)) % i128::from(*s) != 0 {
                        return Err(format!("{v} is not on the step {s} from {min}"));
                    }
                }
                Ok(Value::from(v))
            }
            ControlKind::Float { min, max, .. } => {
                let v = as_number(value)
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| format!("expected a number, got {}", short(value)))?;
                if v < *min || v > *max {
                    return Err(format!("{v} is outside {min}..={max}"));
                }
                Ok(Value::F64(v))
            }
            ControlKind::Enum { options } => {
                // Option ids are strings; an integer naming one (`input 31` typed on a
                // command line) is taken as that id.
                let owned = match value {
                    Value::Integer(i) => Some(i.to_string()),
                    _ => None,
                };
                let s = owned
                    .as_deref()
                    .or_else(|| value.as_str())
                    .ok_or_else(|| format!("expected an option id, got {}", short(value)))?;
                if options.iter().any(|o| o.id == s) {
                    Ok(Value::from(s))
                } else {
                    let ids: Vec<&str> = options.iter().map(|o| o.id.as_str()).collect();
                    Err(format!("{s:?} is not one of {}", ids.join(", ")))
                }
            }
            ControlKind::String { max_len } => {
                let s = value
                    .as_str()
                    .ok_or_else(|| format!("expected a string, got {}", short(value)))?;
                if s.chars().count() > *max_len {
                    return Err(format!("longer than {max_len} characters"));
                }
                Ok(value.clone())
            }
            ControlKind::Trigger => Err("a trigger is fired with `call`, not `set`".into()),
            ControlKind::Meter { .. } => Err("a meter is read-only telemetry".into()),
        }
    }

    /// The 0..1 slider position of `value`, for number controls.
    pub fn position(&self, value: &Value) -> Option<f64> {
        let v = as_number(value)?;
        let (min, max, taper) = match &self.kind {
            ControlKind::Int { min, max, .. } => (*min as f64, *max as f64, Taper::Linear),
            ControlKind::Float {
                min, max, taper, ..
            } => (*min, *max, *taper),
            ControlKind::Meter { min, max, .. } => (*min, *max, Taper::Linear),
            _ => return None,
        };
        Some(position(v, min, max, taper))
    }

    /// The text a panel shows for `value` (`on`, `-12.0 dB`, an enum's label).
    pub fn display(&self, value: &Value) -> Option<String> {
        if value.is_nil() {
            return None;
        }
        Some(match &self.kind {
            ControlKind::Bool => match as_bool(value)? {
                true => "on".into(),
                false => "off".into(),
            },
            ControlKind::Momentary => match as_bool(value)? {
                true => "pressed".into(),
                false => "released".into(),
            },
            ControlKind::Int { unit, .. } => with_unit(&as_int(value)?.to_string(), unit),
            ControlKind::Float { unit, step, .. } => {
                let decimals = step.map_or(1, decimals_for);
                with_unit(&format!("{:.*}", decimals, as_number(value)?), unit)
            }
            ControlKind::Meter { unit, .. } => {
                with_unit(&format!("{:.1}", as_number(value)?), unit)
            }
            ControlKind::Enum { options } => {
                let id = value.as_str()?;
                let o = options.iter().find(|o| o.id == id)?;
                if o.label.is_empty() {
                    o.id.clone()
                } else {
                    o.label.clone()
                }
            }
            ControlKind::String { .. } => value.as_str()?.to_owned(),
            ControlKind::Trigger => return None,
        })
    }
}

/// The slider position (0..1) of `v` in `[min, max]` under `taper`.
pub fn position(v: f64, min: f64, max: f64, taper: Taper) -> f64 {
    let (a, lo, hi) = match taper {
        Taper::Linear => (v, min, max),
        Taper::Db => (db_curve(v), db_curve(min), db_curve(max)),
    };
    if hi <= lo {
        return 0.0;
    }
    ((a - lo) / (hi - lo)).clamp(0.0, 1.0)
}

fn db_curve(db: f64) -> f64 {
    10f64.powf(db / 60.0)
}

fn decimals_for(step: f64) -> usize {
    let mut d = 0;
    let mut s = step;
    while d < 4 && (s - s.round()).abs() > 1e-9 {
        s *= 10.0;
        d += 1;
    }
    d
}

fn with_unit(n: &str, unit: &str) -> String {
    if unit.is_empty() {
        n.to_owned()
    } else {
        format!("{n} {unit}")
    }
}

fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Boolean(b) => Some(*b),
        Value::Integer(i) => match i.as_i64()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
        Value::String(s) => match s.as_str()? {
            "on" | "true" => Some(true),
            "off" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(i) => i.as_i64(),
        Value::F32(_) | Value::F64(_) => {
            let f = as_number(value)?;
            (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
        }
        _ => None,
    }
}

fn short(value: &Value) -> String {
    let mut s = crate::value::to_json_string(value);
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float_db() -> ControlSpec {
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
    }

    #[test]
    fn checks_name_the_rule() {
        let c = ControlSpec::new(
            "level",
            ControlKind::Int {
                min: 0,
                max: 100,
                step: Some(5),
                unit: "%".into(),
            },
        );
        assert_eq!(c.check_set(&Value::from(50)), Ok(Value::from(50)));
        assert_eq!(c.check_set(&Value::F64(50.0)), Ok(Value::from(50)));
        assert_eq!(
            c.check_set(&Value::from(101)).unwrap_err(),
            "101 is outside 0..=100"
        );
        assert!(c.check_set(&Value::from(3)).unwrap_err().contains("step"));
        // The whole i64 range: 4 is 2^63 + 4 from the minimum, a multiple of 3.
        let wide = ControlSpec::new(
            "wide",
            ControlKind::Int {
                min: i64::MIN,
                max: i64::MAX,
                step: Some(3),
                unit: String::new(),
            },
        );
        assert_eq!(wide.check_set(&Value::from(4)), Ok(Value::from(4)));
        assert!(wide.check_set(&Value::from(5)).is_err());
        assert!(c
            .check_set(&Value::from("x"))
            .unwrap_err()
            .contains("integer"));
        let b = ControlSpec::new("mute", ControlKind::Bool);
        assert_eq!(b.check_set(&Value::from("on")), Ok(Value::Boolean(true)));
        assert!(b.check_set(&Value::from(2)).is_err());
        let e = ControlSpec::new(
            "input",
            ControlKind::Enum {
                options: vec![
                    EnumOption {
                        id: "hdmi1".into(),
                        label: "HDMI 1".into(),
                    },
                    EnumOption {
                        id: "hdmi2".into(),
                        label: String::new(),
                    },
                ],
            },
        );
        assert!(e
            .check_set(&Value::from("vga"))
            .unwrap_err()
            .contains("hdmi1, hdmi2"));
        assert_eq!(e.display(&Value::from("hdmi1")).as_deref(), Some("HDMI 1"));
        assert_eq!(e.display(&Value::from("hdmi2")).as_deref(), Some("hdmi2"));
    }

    #[test]
    fn db_taper_position_and_display() {
        let c = float_db();
        let p0 = c.position(&Value::F64(0.0)).unwrap();
        assert!(p0 > 0.6 && p0 < 0.75, "{p0}");
        assert_eq!(c.position(&Value::F64(-80.0)), Some(0.0));
        assert_eq!(c.position(&Value::F64(10.0)), Some(1.0));
        assert_eq!(c.display(&Value::F64(-12.0)).as_deref(), Some("-12.0 dB"));
    }

    #[test]
    fn descriptor_validation_names_field() {
        let mut d = DeviceDescriptor {
            room: "boardroom".into(),
            name: "projector".into(),
            label: String::new(),
            class: "projector".into(),
            driver: "pjlink".into(),
            controls: vec![ControlSpec::new("power", ControlKind::Bool)],
        };
        assert!(d.validate().is_ok());
        d.controls
            .push(ControlSpec::new("online", ControlKind::Bool));
        assert!(d.validate().unwrap_err().contains("reserved"));
        d.controls.pop();
        d.room = "board room".into();
        assert!(d.validate().unwrap_err().contains("room"));
    }
}
