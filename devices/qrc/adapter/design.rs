//! The Core's design as avbus controls: reading the named components and their
//! controls, and mapping each QRC control to an avbus control with a stable topic-level
//! name (the table in [`super`]).

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

use super::{answer, link_error, Link, Settings, DISCOVERY_TIMEOUT, TEXT_MAX};
use crate::devices::kit::DeviceError;
use crate::devices::qrc::proto::{
    ComponentControls, ComponentInfo, ComponentRef, ControlInfo, ControlType, Direction,
    ErrorCode as QrcCode, Request,
};
use crate::model::{Access, ControlKind, ControlSpec, Taper, MAX_CONTROLS};
use crate::topic::MAX_LEVEL_LEN;

/// One QRC component control as an avbus control.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Mapped {
    pub(super) component: String,
    pub(super) control: String,
    /// Named with the avbus name, typed from the QRC type.
    pub(super) spec: ControlSpec,
}

/// The controls of a Core's design.
#[derive(Debug, Clone)]
pub(super) struct Design {
    /// `EngineStatus.DesignCode` when it was read.
    pub(super) code: String,
    pub(super) design_name: String,
    pub(super) controls: Vec<Mapped>,
    pub(super) by_name: HashMap<String, usize>,
    pub(super) by_qrc: HashMap<(String, String), usize>,
}

impl Design {
    /// Connects and reads the design, within [`DISCOVERY_TIMEOUT`].
    pub(super) async fn fetch(settings: &Settings) -> Result<Design, DeviceError> {
        let read = async {
            let mut link = Link::open(settings).await?;
            Design::read(&mut link).await
        };
        tokio::time::timeout(DISCOVERY_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(DeviceError::Unreachable(format!(
                    "no design within {DISCOVERY_TIMEOUT:?}"
                )))
            })
    }

    /// Lists every named component's controls over `link`.
    pub(super) async fn read(link: &mut Link) -> Result<Design, DeviceError> {
        let (code, design_name) = (link.status.as_ref())
            .map(|s| (s.design_code.clone(), s.design_name.clone()))
            .unwrap_or_default();
        let list = link.call_ok(&Request::ComponentGetComponents {}).await?;
        let components: Vec<ComponentInfo> = answer("Component.GetComponents", list)?;
        let mut controls = Vec::new();
        let mut taken = HashSet::new();
        for component in components {
            let get = Request::ComponentGetControls {
                name: component.name.clone(),
            };
            let info = match link.call(&get).await? {
                Ok(info) => answer::<ComponentControls<Json>>("Component.GetControls", info)?,
                // Gone between the two requests: the design is being replaced.
                Err(e) if e.kind() == Some(QrcCode::UnknownComponent) => continue,
                Err(e) => return Err(link_error("Component.GetControls", e)),
            };
            for raw in info.controls {
                match serde_json::from_value::<ControlInfo>(raw) {
                    Ok(c) => controls.extend(map_control(&component.name, &c, &mut taken)),
                    Err(e) => {
                        tracing::debug!(component = %component.name, error = %e, "qrc: control skipped")
                    }
                }
            }
        }
        if controls.len() > MAX_CONTROLS {
            tracing::warn!(
                found = controls.len(),
                "qrc: the design has more than {MAX_CONTROLS} controls; the rest are left out"
            );
            controls.truncate(MAX_CONTROLS);
        }
        let by_name = (0..controls.len())
            .map(|i| (controls[i].spec.name.clone(), i))
            .collect();
        let by_qrc = (0..controls.len())
            .map(|i| {
                let m = &controls[i];
                ((m.component.clone(), m.control.clone()), i)
            })
            .collect();
        Ok(Design {
            code,
            design_name,
            controls,
            by_name,
            by_qrc,
        })
    }

    /// Whether any control goes in the change group.
    pub(super) fn has_group(&self) -> bool {
        (self.controls.iter()).any(|m| !matches!(m.spec.kind, ControlKind::Trigger))
    }

    /// The change group's contents: every control but triggers, by component.
    pub(super) fn group(&self) -> Vec<ComponentRef> {
        let mut out: Vec<ComponentRef> = Vec::new();
        for m in &self.controls {
            if matches!(m.spec.kind, ControlKind::Trigger) {
                continue;
            }
            match out.iter_mut().find(|c| c.name == m.component) {
                Some(c) => c.controls.push(m.control.clone()),
                None => out.push(ComponentRef {
                    name: m.component.clone(),
                    controls: vec![m.control.clone()],
                }),
            }
        }
        out
    }
}

/// The avbus control for one QRC control, or `None` for what cannot be one.
fn map_control(component: &str, c: &ControlInfo, taken: &mut HashSet<String>) -> Option<Mapped> {
    let access = match c.direction {
        Direction::ReadOnly => Access::Read,
        Direction::WriteOnly => Access::Write,
        Direction::ReadWrite | Direction::Other => Access::ReadWrite,
    };
    let range = match (c.value_min, c.value_max) {
        (Some(min), Some(max)) if min.is_finite() && max.is_finite() && min <= max => {
            Some((min, max))
        }
        _ => None,
    };
    let db = [&c.string_min, &c.string_max]
        .iter()
        .any(|s| s.as_deref().is_some_and(|s| s.trim_end().ends_with("dB")));
    let kind = match c.kind {
        ControlType::Boolean => ControlKind::Bool,
        ControlType::Float | ControlType::Time if range.is_some() => {
            let (min, max) = range?;
            let unit = match (db, c.kind) {
                (true, _) => "dB",
                (false, ControlType::Time) => "s",
                _ => "",
            };
            ControlKind::Float {
                min,
                max,
                step: db.then_some(0.1),
                unit: unit.into(),
                taper: if db { Taper::Db } else { Taper::Linear },
            }
        }
        ControlType::Integer if range.is_some() => {
            let (min, max) = range?;
            ControlKind::Int {
                min: min.ceil() as i64,
                max: max.floor() as i64,
                step: None,
                unit: String::new(),
            }
        }
        ControlType::Text => ControlKind::String { max_len: TEXT_MAX },
        ControlType::Trigger if access != Access::Read => ControlKind::Trigger,
        other => {
            tracing::debug!(component, control = %c.name, kind = ?other, "qrc: control skipped (no range or unknown type)");
            return None;
        }
    };
    if matches!(kind, ControlKind::Int { min, max, .. } if min > max) {
        return None;
    }
    let full = format!("{component}.{}", c.name);
    let spec = ControlSpec::new(&topic_level(&full, taken), kind)
        .access(access)
        .label(&full);
    Some(Mapped {
        component: component.to_owned(),
        control: c.name.clone(),
        spec,
    })
}

/// A valid, unused topic level for the QRC name `full`, the same on every run.
fn topic_level(full: &str, taken: &mut HashSet<String>) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@');
    let plain: String = full
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    let mut name = plain.clone();
    let mut salt = 0u32;
    while name.len() > MAX_LEVEL_LEN || taken.contains(&name) {
        // `plain` is ASCII, so any byte index is a character boundary.
        let tag = format!("-{:08x}", fnv1a(full, salt));
        let keep = plain.len().min(MAX_LEVEL_LEN - tag.len());
        name = format!("{}{tag}", &plain[..keep]);
        salt += 1;
    }
    taken.insert(name.clone());
    name
}

/// FNV-1a: a hash that is the same in every build and run.
fn fnv1a(text: &str, salt: u32) -> u32 {
    let bytes = text.bytes().chain(salt.to_le_bytes());
    bytes.fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
