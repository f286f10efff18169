//! The bus side of the X32 adapter: its device descriptor, and how console parameters
//! map to controls and back (the table is in [`super::adapter`]).

use super::proto::{
    fader_to_db, meter_db, Channel, ConsoleInfo, Param, ParamValue, CHANNELS, FADER_FLOOR_DB,
    FADER_MAX_DB, METER_FLOOR_DB, METER_MAX_DB, NAME_LEN,
};
use crate::devices::kit::Changes;
use crate::model::{Access, ControlKind, ControlSpec, DeviceDescriptor, Taper};
use crate::value::Value;

/// Longest model or firmware text shown (longer text from the console is cut).
const INFO_LEN: usize = 64;

/// The last part of a channel control's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leaf {
    Fader,
    FaderDb,
    Mute,
    Name,
}

/// `ch07_fader_db` → channel 7, [`Leaf::FaderDb`].
pub(super) fn parse_control(name: &str) -> Option<(Channel, Leaf)> {
    let rest = name.strip_prefix("ch")?;
    let (nn, leaf) = rest.split_at_checked(2)?;
    if !nn.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let channel = Channel::new(nn.parse().ok()?)?;
    let leaf = match leaf {
        "_fader" => Leaf::Fader,
        "_fader_db" => Leaf::FaderDb,
        "_mute" => Leaf::Mute,
        "_name" => Leaf::Name,
        _ => return None,
    };
    Some((channel, leaf))
}

fn control_name(channel: Channel, leaf: &str) -> String {
    format!("ch{channel}_{leaf}")
}

/// The controls a parameter's value shows in.
pub(super) fn param_changes(p: Param, v: &ParamValue) -> Changes {
    let c = p.channel();
    match v {
        ParamValue::Fader(f) => {
            let f = f.clamp(0.0, 1.0);
            let position = (f64::from(f) * 1e4).round() / 1e4;
            let db = (fader_to_db(f) * 10.0).round() / 10.0;
            vec![
                (control_name(c, "fader"), Value::F64(position)),
                (control_name(c, "fader_db"), Value::F64(db)),
            ]
        }
        ParamValue::On(on) => vec![(control_name(c, "mute"), Value::Boolean(!on))],
        ParamValue::Name(name) => vec![(control_name(c, "name"), Value::from(name.as_str()))],
    }
}

/// The `meters` value: one dBFS level per channel, to 0.1 dB.
pub(super) fn meter_value(levels: &[f32]) -> Value {
    let db = levels
        .iter()
        .map(|v| Value::F32(((meter_db(*v) * 10.0).round() / 10.0) as f32));
    Value::Array(db.collect())
}

/// The descriptor of an X32 console at `room/name`; `meter_factor` 0 declares no
/// meters.
pub fn descriptor(room: &str, name: &str, label: &str, meter_factor: u8) -> DeviceDescriptor {
    let info = |name: &str, label: &str| {
        ControlSpec::new(name, ControlKind::String { max_len: INFO_LEN })
            .access(Access::Read)
            .label(label)
    };
    let mut controls = vec![info("model", "Model"), info("firmware", "Firmware")];
    for c in Channel::all() {
        let n = c.number();
        let fader = ControlKind::Float {
            min: 0.0,
            max: 1.0,
            step: None,
            unit: String::new(),
            taper: Taper::Linear,
        };
        let db = ControlKind::Float {
            min: FADER_FLOOR_DB,
            max: FADER_MAX_DB,
            step: Some(0.1),
            unit: "dB".into(),
            taper: Taper::Db,
        };
        let text = ControlKind::String { max_len: NAME_LEN };
        controls.extend([
            ControlSpec::new(&control_name(c, "fader"), fader).label(&format!("Ch {n} fader")),
            ControlSpec::new(&control_name(c, "fader_db"), db).label(&format!("Ch {n} level")),
            ControlSpec::new(&control_name(c, "mute"), ControlKind::Bool)
                .label(&format!("Ch {n} mute")),
            ControlSpec::new(&control_name(c, "name"), text).label(&format!("Ch {n} name")),
        ]);
    }
    if meter_factor > 0 {
        let kind = ControlKind::Meter {
            min: METER_FLOOR_DB,
            max: METER_MAX_DB,
            unit: "dBFS".into(),
            channels: CHANNELS.into(),
            rate_hz: 20.0 / f64::from(meter_factor),
        };
        let meters = ControlSpec::new("meters", kind).access(Access::Read);
        controls.push(meters.label("Channel meters"));
    }
    DeviceDescriptor {
        room: room.into(),
        name: name.into(),
        label: label.into(),
        class: "console".into(),
        driver: "x32-osc".into(),
        controls,
    }
}

/// The `model` and `firmware` controls from `/xinfo`'s answer.
pub(super) fn info_changes(info: &ConsoleInfo) -> Changes {
    let cut = |s: &str| Value::from(s.chars().take(INFO_LEN).collect::<String>());
    vec![
        ("model".into(), cut(&info.model)),
        ("firmware".into(), cut(&info.version)),
    ]
}
