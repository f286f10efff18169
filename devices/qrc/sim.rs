//! A strict simulated Q-SYS Core speaking QRC over real TCP, for adapter tests and demos.
//!
//! The design is a list of named controls ([`SimControl`]): Float (gains in dB, with
//! Position linear in dB across the range as a Core reports it), Boolean (mutes), Trigger
//! (a preset recall that sets other controls to stored values) and Text. A control named
//! `Program.gain` is both a Named Control and control `gain` of component `Program`.
//!
//! Behaviour (sources in [`super`]): `EngineStatus` is pushed on connect; with credentials
//! configured everything but `Logon` answers error 10 until a good `Logon` (a bad one
//! answers 10 too); numeric values are clamped to the control's range; unknown controls,
//! components and change groups answer 8, 7 and 6; `Ramp` is validated and the value
//! jumps to its target at once. Change groups belong to one connection and die with it,
//! at most `max_change_groups` per Core (then 5): a control added to a group is dirty, a
//! poll returns the dirty controls and cleans them, `Invalidate` dirties all, `AutoPoll`
//! answers with a poll and then pushes `ChangeGroup.Poll` notifications every `Rate`
//! seconds. A connection that sends nothing for `keepalive_timeout` is closed.
//!
//! One std `Mutex` guards the design and every connection's groups: handlers are short
//! and synchronous, and no task awaits while holding it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::proto::{
    encode_error, encode_notification, encode_result, parse_request, ComponentControls,
    ComponentInfo, ControlInfo, ControlState, ControlType, Direction, EngineStatus, ErrorCode,
    GroupId, Notification, PollResult, ProtoError, Request, RpcError, SetTarget, Value,
};
pub use server::{Panel, Sim};

mod server;

/// Longest Text value accepted, so a design's state stays small.
const MAX_TEXT: usize = 4096;
/// Longest AutoPoll interval honoured (seconds); longer rates are clamped.
const MAX_AUTOPOLL_RATE: f64 = 3600.0;

/// One control of the simulated design.
#[derive(Debug, Clone, PartialEq)]
pub struct SimControl {
    pub name: String,
    pub kind: SimControlKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimControlKind {
    /// A number in `min..max`; String is `{value:.1}{unit}`.
    Float {
        min: f64,
        max: f64,
        initial: f64,
        unit: String,
    },
    /// String is `on` or `off`.
    Boolean {
        initial: bool,
        on: String,
        off: String,
    },
    /// Firing sets each listed control to its value (a preset recall).
    Trigger {
        recall: Vec<(String, Value)>,
    },
    Text {
        initial: String,
    },
}

impl SimControl {
    fn new(name: &str, kind: SimControlKind) -> Self {
        SimControl {
            name: name.into(),
            kind,
        }
    }
    /// A Q-SYS gain: -100..20 dB.
    pub fn gain(name: &str, initial_db: f64) -> Self {
        let (min, max, unit) = (-100.0, 20.0, "dB".into());
        SimControl::new(
            name,
            SimControlKind::Float {
                min,
                max,
                initial: initial_db,
                unit,
            },
        )
    }
    /// A mute: `true` is `"muted"`.
    pub fn mute(name: &str, initial: bool) -> Self {
        let (on, off) = ("muted".into(), "unmuted".into());
        SimControl::new(name, SimControlKind::Boolean { initial, on, off })
    }
    /// A preset recall: firing it sets each named control to its value.
    pub fn trigger(name: &str, recall: Vec<(&str, Value)>) -> Self {
        let recall = recall.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        SimControl::new(name, SimControlKind::Trigger { recall })
    }
    /// A Text control.
    pub fn text(name: &str, initial: &str) -> Self {
        SimControl::new(
            name,
            SimControlKind::Text {
                initial: initial.into(),
            },
        )
    }
}

/// The simulated Core's design and limits.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub controls: Vec<SimControl>,
    /// `(user, password)`; `None` accepts every client without `Logon`.
    pub credentials: Option<(String, String)>,
    /// Close a connection that sent nothing for this long (60 s on a real Core).
    pub keepalive_timeout: Duration,
    /// Change groups per Core, over all connections (512 on a real Core).
    pub max_change_groups: usize,
    /// Shortest AutoPoll interval in seconds; shorter rates are raised to it.
    pub min_autopoll_rate: f64,
    /// Push AutoPoll notifications with no changes too, as a live Core does (integrators'
    /// traces show `"Changes":[]` pushes); `false` pushes only when something changed.
    pub push_empty_polls: bool,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    pub design_name: String,
}

impl Default for SimConfig {
    /// A small DSP design with real-Core timing.
    fn default() -> Self {
        let preset = vec![
            ("Program.gain", Value::Number(-20.0)),
            ("Program.mute", Value::Bool(false)),
            ("Mic1.gain", Value::Number(-6.0)),
            ("Mic1.mute", Value::Bool(true)),
        ];
        SimConfig {
            controls: vec![
                SimControl::gain("Program.gain", 0.0),
                SimControl::mute("Program.mute", false),
                SimControl::gain("Mic1.gain", -10.0),
                SimControl::mute("Mic1.mute", false),
                SimControl::text("Room.label", "Room 101"),
                SimControl::trigger("Preset.recall", preset),
            ],
            credentials: None,
            keepalive_timeout: Duration::from_secs(60),
            max_change_groups: 512,
            min_autopoll_rate: 0.05,
            push_empty_polls: true,
            max_connections: 64,
            design_name: "avbus-sim".into(),
        }
    }
}

impl SimConfig {
    /// The default design with a 500 ms keepalive, for tests.
    pub fn fast() -> Self {
        let keepalive_timeout = Duration::from_millis(500);
        SimConfig {
            keepalive_timeout,
            ..SimConfig::default()
        }
    }
}

/// A snapshot of the simulated Core.
#[derive(Debug, Clone, PartialEq)]
pub struct SimState {
    pub controls: Vec<ControlState>,
    pub connections: usize,
    pub logged_on: usize,
    pub change_groups: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnId(u64);

struct Control {
    name: String,
    /// Length of the component part of `name` (before the first dot), if any.
    component: Option<usize>,
    kind: SimControlKind,
    value: Value,
    /// `Core::seq` at its last change; change groups compare it with what they sent.
    changed: u64,
}

struct Entry {
    control: usize,
    via_component: bool,
    /// `changed` of the control when last reported; `None`: dirty (new or invalidated).
    sent: Option<u64>,
}

#[derive(Default)]
struct Group {
    entries: Vec<Entry>,
    /// Interval and next due time of the AutoPoll, once set up.
    autopoll: Option<(Duration, Instant)>,
}

struct Conn {
    logged_on: bool,
    groups: HashMap<GroupId, Group>,
    inject: mpsc::Sender<Bytes>,
}

struct Core {
    controls: Vec<Control>,
    by_name: HashMap<String, usize>,
    /// Bumped by every change.
    seq: u64,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    /// Change groups alive over all connections, and the most allowed.
    groups: usize,
    max_groups: usize,
}

struct Shared {
    cfg: SimConfig,
    status: EngineStatus,
    core: Mutex<Core>,
    connections: watch::Sender<usize>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Reply {
    Ack(bool),
    Status(EngineStatus),
    Controls(Vec<ControlState>),
    Component(ComponentControls<ControlState>),
    Info(ComponentControls<ControlInfo>),
    Components(Vec<ComponentInfo>),
    Poll(PollResult),
}

fn err(kind: ErrorCode, detail: impl std::fmt::Display) -> RpcError {
    RpcError::new(kind, detail)
}

fn fmt_number(v: f64, unit: &str) -> String {
    format!("{:.1}{unit}", v + 0.0) // `+ 0.0` turns -0.0 into 0.0
}

impl Control {
    fn parts(&self) -> Option<(&str, &str)> {
        self.component
            .map(|n| (&self.name[..n], &self.name[n + 1..]))
    }

    fn state(&self, via_component: bool) -> ControlState {
        let (string, position) = match (&self.kind, &self.value) {
            (SimControlKind::Float { min, max, unit, .. }, Value::Number(v)) => {
                (fmt_number(*v, unit), (v - min) / (max - min))
            }
            (SimControlKind::Boolean { on, off, .. }, Value::Bool(b)) => {
                (if *b { on } else { off }.clone(), f64::from(u8::from(*b)))
            }
            (_, Value::Text(t)) => (t.clone(), 0.0),
            _ => (String::new(), 0.0),
        };
        let (component, name) = match self.parts() {
            Some((c, n)) if via_component => (Some(c.to_owned()), n.to_owned()),
            _ => (None, self.name.clone()),
        };
        let value = self.value.clone();
        let indeterminate = None;
        ControlState {
            component,
            name,
            string,
            value,
            position,
            indeterminate,
        }
    }

    fn info(&self) -> ControlInfo {
        let s = self.state(true);
        let (kind, range, strings) = match &self.kind {
            SimControlKind::Float { min, max, unit, .. } => {
                let strings = (fmt_number(*min, unit), fmt_number(*max, unit));
                (ControlType::Float, Some((*min, *max)), Some(strings))
            }
            SimControlKind::Boolean { on, off, .. } => (
                ControlType::Boolean,
                Some((0.0, 1.0)),
                Some((off.clone(), on.clone())),
            ),
            SimControlKind::Trigger { .. } => (ControlType::Trigger, None, None),
            SimControlKind::Text { .. } => (ControlType::Text, None, None),
        };
        let (string_min, string_max) = strings.unzip();
        ControlInfo {
            name: s.name,
            kind,
            value: s.value,
            value_min: range.map(|r| r.0),
            value_max: range.map(|r| r.1),
            string_min,
            string_max,
            string: s.string,
            position: s.position,
            direction: Direction::ReadWrite,
        }
    }

    /// The value `target` asks for (clamped into range), or `None` for a trigger firing.
    fn resolve(&self, target: &SetTarget) -> Result<Option<Value>, String> {
        use SetTarget as T;
        use SimControlKind as K;
        let finite = |n: f64| n.is_finite().then_some(n).ok_or("not a finite number");
        let v = match (&self.kind, target) {
            (K::Trigger { .. }, _) => return Ok(None),
            (K::Float { min, max, .. }, T::Value(Value::Number(n))) => {
                Value::Number(finite(*n)?.clamp(*min, *max))
            }
            (K::Float { min, max, .. }, T::Position(p)) => {
                Value::Number(min + finite(*p)?.clamp(0.0, 1.0) * (max - min))
            }
            (K::Float { min, max, unit, .. }, T::String(s)) => {
                let text = s.trim();
                let text = text.strip_suffix(unit.as_str()).unwrap_or(text).trim();
                let n = text
                    .parse::<f64>()
                    .map_err(|_| format!("{s:?} is not a number"))?;
                Value::Number(finite(n)?.clamp(*min, *max))
            }
            (K::Boolean { .. }, T::Value(Value::Bool(b))) => Value::Bool(*b),
            (K::Boolean { .. }, T::Value(Value::Number(n))) => Value::Bool(*n != 0.0),
            (K::Boolean { .. }, T::Position(p)) => Value::Bool(finite(*p)? >= 0.5),
            (K::Boolean { on, off, .. }, T::String(s)) => match s.as_str() {
                x if x == on || x == "true" || x == "1" => Value::Bool(true),
                x if x == off || x == "false" || x == "0" => Value::Bool(false),
                _ => return Err(format!("{s:?} is neither {on:?} nor {off:?}")),
            },
            (K::Text { .. }, T::Value(Value::Text(s)) | T::String(s)) if s.len() > MAX_TEXT => {
                return Err(format!("text longer than {MAX_TEXT} bytes"));
            }
            (K::Text { .. }, T::Value(Value::Text(s)) | T::String(s)) => Value::Text(s.clone()),
            (_, target) => return Err(format!("{target:?} does not fit {}", self.name)),
        };
        Ok(Some(v))
    }
}

impl Core {
    fn new(cfg: &SimConfig) -> Result<Self, String> {
        let mut core = Core {
            controls: Vec::new(),
            by_name: HashMap::new(),
            seq: 0,
            conns: HashMap::new(),
            next_conn: 0,
            groups: 0,
            max_groups: cfg.max_change_groups,
        };
        for c in &cfg.controls {
            let value = match &c.kind {
                SimControlKind::Float {
                    min, max, initial, ..
                } => {
                    if !(min.is_finite() && max.is_finite() && min < max && initial.is_finite()) {
                        return Err(format!("{}: needs finite min < max and initial", c.name));
                    }
                    Value::Number(initial.clamp(*min, *max))
                }
                SimControlKind::Boolean { initial, .. } => Value::Bool(*initial),
                SimControlKind::Trigger { .. } => Value::Number(0.0),
                SimControlKind::Text { initial } => Value::Text(initial.clone()),
            };
            if core
                .by_name
                .insert(c.name.clone(), core.controls.len())
                .is_some()
            {
                return Err(format!("{}: duplicate control", c.name));
            }
            let (name, kind, component) = (c.name.clone(), c.kind.clone(), c.name.find('.'));
            core.controls.push(Control {
                name,
                component,
                kind,
                value,
                changed: 0,
            });
        }
        for c in &core.controls {
            let SimControlKind::Trigger { recall } = &c.kind else {
                continue;
            };
            for (name, value) in recall {
                let target = SetTarget::Value(value.clone());
                let fits = core.index(name).map(|i| core.controls[i].resolve(&target));
                if !matches!(fits, Ok(Ok(Some(_)))) {
                    return Err(format!("{}: cannot recall {name} = {value:?}", c.name));
                }
            }
        }
        Ok(core)
    }

    fn index(&self, name: &str) -> Result<usize, RpcError> {
        let found = self.by_name.get(name).copied();
        found.ok_or_else(|| err(ErrorCode::UnknownControl, name))
    }

    /// The controls of a component, in design order.
    fn component(&self, name: &str) -> Result<Vec<usize>, RpcError> {
        let of = |c: &Control| c.parts().is_some_and(|(component, _)| component == name);
        let found: Vec<usize> = (0..self.controls.len())
            .filter(|&i| of(&self.controls[i]))
            .collect();
        match found.is_empty() {
            true => Err(err(ErrorCode::UnknownComponent, name)),
            false => Ok(found),
        }
    }

    fn component_control(&self, component: &str, control: &str) -> Result<usize, RpcError> {
        self.component(component)?;
        self.index(&format!("{component}.{control}"))
    }

    fn store(&mut self, index: usize, value: Value) {
        let control = &mut self.controls[index];
        if control.value != value {
            self.seq += 1;
            control.value = value;
            control.changed = self.seq;
        }
    }

    /// Sets one control as a client or the panel does; a trigger recalls its preset.
    fn apply(&mut self, i: usize, target: &SetTarget, ramp: Option<f64>) -> Result<(), RpcError> {
        if ramp.is_some_and(|r| !(r.is_finite() && r >= 0.0)) {
            return Err(err(ErrorCode::InvalidParams, "Ramp must be seconds >= 0"));
        }
        let resolved = self.controls[i].resolve(target);
        match resolved.map_err(|e| err(ErrorCode::InvalidParams, e))? {
            Some(value) => self.store(i, value),
            None => {
                self.seq += 1;
                self.controls[i].changed = self.seq;
                let SimControlKind::Trigger { recall } = self.controls[i].kind.clone() else {
                    return Ok(());
                };
                // Recall targets and values were checked when the Core started.
                for (name, value) in recall {
                    let Ok(i) = self.index(&name) else { continue };
                    if let Ok(Some(v)) = self.controls[i].resolve(&SetTarget::Value(value)) {
                        self.store(i, v);
                    }
                }
            }
        }
        Ok(())
    }

    fn conn(&mut self, id: ConnId) -> Result<&mut Conn, RpcError> {
        let conn = self.conns.get_mut(&id);
        conn.ok_or_else(|| err(ErrorCode::ServerError, "connection closed"))
    }

    fn group(&mut self, id: ConnId, group: &GroupId) -> Result<&mut Group, RpcError> {
        let found = self.conn(id)?.groups.get_mut(group);
        found.ok_or_else(|| err(ErrorCode::UnknownChangeGroup, &group.0))
    }

    /// Adds controls to a group, creating it (ChangeGroup.AddControl/AddComponentControl).
    /// Names that resolve are added even when others do not; those answer error 8 after.
    fn add(
        &mut self,
        id: ConnId,
        group: &GroupId,
        names: &[String],
        component: Option<&str>,
    ) -> Result<Reply, RpcError> {
        if let Some(component) = component {
            self.component(component)?;
        }
        let mut found = Vec::new();
        let mut unknown = Vec::new();
        for name in names {
            let index = match component {
                Some(component) => self.component_control(component, name),
                None => self.index(name),
            };
            match index {
                Ok(i) => found.push(i),
                Err(_) => unknown.push(name.as_str()),
            }
        }
        let (max, in_use) = (self.max_groups, self.groups);
        let conn = self.conn(id)?;
        if !conn.groups.contains_key(group) {
            if in_use >= max {
                return Err(err(ErrorCode::ChangeGroupsExhausted, ""));
            }
            conn.groups.insert(group.clone(), Group::default());
            self.groups += 1;
        }
        let via_component = component.is_some();
        let entries = &mut self.group(id, group)?.entries;
        for control in found {
            let same = |e: &&mut Entry| e.control == control && e.via_component == via_component;
            match entries.iter_mut().find(same) {
                Some(e) => e.sent = None,
                None => entries.push(Entry {
                    control,
                    via_component,
                    sent: None,
                }),
            }
        }
        match unknown.is_empty() {
            true => Ok(Reply::Ack(true)),
            false => Err(err(ErrorCode::UnknownControl, unknown.join(", "))),
        }
    }

    fn poll(&mut self, id: ConnId, group: &GroupId) -> Result<Reply, RpcError> {
        let Core {
            controls, conns, ..
        } = self;
        let g = conns.get_mut(&id).and_then(|c| c.groups.get_mut(group));
        let g = g.ok_or_else(|| err(ErrorCode::UnknownChangeGroup, &group.0))?;
        let changes = dirty(controls, g);
        Ok(Reply::Poll(PollResult {
            id: group.clone(),
            changes,
        }))
    }

    fn handle(
        &mut self,
        shared: &Shared,
        conn: ConnId,
        request: Request,
    ) -> Result<Reply, RpcError> {
        use Request as R;
        let ack = Ok(Reply::Ack(true));
        let session = self.conn(conn)?;
        if let R::Logon { user, password } = &request {
            let credentials = shared.cfg.credentials.as_ref();
            let good = credentials.is_none_or(|(u, p)| u == user && p == password);
            session.logged_on |= good;
            return if good {
                ack
            } else {
                Err(err(ErrorCode::LogonRequired, ""))
            };
        }
        if !session.logged_on {
            return Err(err(ErrorCode::LogonRequired, ""));
        }
        match request {
            R::Logon { .. } | R::NoOp {} => ack,
            R::StatusGet {} => Ok(Reply::Status(shared.status.clone())),
            R::ControlGet(names) => {
                let state = |n: &String| self.index(n).map(|i| self.controls[i].state(false));
                names
                    .iter()
                    .map(state)
                    .collect::<Result<_, _>>()
                    .map(Reply::Controls)
            }
            R::ControlSet(set) => {
                let i = self.index(&set.name)?;
                self.apply(i, &set.target, set.ramp)?;
                ack
            }
            R::ComponentGet(component) => {
                let mut controls = Vec::new();
                for control in &component.controls {
                    let i = self.component_control(&component.name, control)?;
                    let state = self.controls[i].state(true);
                    controls.push(ControlState {
                        component: None,
                        ..state
                    });
                }
                Ok(Reply::Component(ComponentControls {
                    name: component.name,
                    controls,
                }))
            }
            R::ComponentSet { name, controls } => {
                self.component(&name)?;
                let mut first = None;
                for set in controls {
                    let i = self.component_control(&name, &set.name);
                    let done = i.and_then(|i| self.apply(i, &set.target, set.ramp));
                    first = first.or(done.err());
                }
                first.map_or(ack, Err)
            }
            R::ComponentGetControls { name } => {
                let indices = self.component(&name)?;
                let controls = indices
                    .into_iter()
                    .map(|i| self.controls[i].info())
                    .collect();
                Ok(Reply::Info(ComponentControls { name, controls }))
            }
            R::ComponentGetComponents {} => {
                let names: BTreeSet<&str> = self
                    .controls
                    .iter()
                    .filter_map(|c| Some(c.parts()?.0))
                    .collect();
                let info = |name: &str| ComponentInfo {
                    name: name.to_owned(),
                    kind: "custom_controls".into(),
                    properties: vec![],
                };
                Ok(Reply::Components(names.into_iter().map(info).collect()))
            }
            R::ChangeGroupAddControl { id, controls } => self.add(conn, &id, &controls, None),
            R::ChangeGroupAddComponentControl { id, component } => {
                self.add(conn, &id, &component.controls, Some(&component.name))
            }
            R::ChangeGroupRemove { id, controls } => {
                let found: Vec<usize> =
                    controls.iter().filter_map(|n| self.index(n).ok()).collect();
                let entries = &mut self.group(conn, &id)?.entries;
                entries.retain(|e| e.via_component || !found.contains(&e.control));
                let unknown: Vec<&str> = controls
                    .iter()
                    .map(String::as_str)
                    .filter(|n| !self.by_name.contains_key(*n))
                    .collect();
                match unknown.is_empty() {
                    true => ack,
                    false => Err(err(ErrorCode::UnknownControl, unknown.join(", "))),
                }
            }
            R::ChangeGroupPoll { id } => self.poll(conn, &id),
            R::ChangeGroupInvalidate { id } => {
                self.group(conn, &id)?
                    .entries
                    .iter_mut()
                    .for_each(|e| e.sent = None);
                ack
            }
            R::ChangeGroupClear { id } => {
                self.group(conn, &id)?.entries.clear();
                ack
            }
            R::ChangeGroupDestroy { id } => {
                self.group(conn, &id)?;
                self.conn(conn)?.groups.remove(&id);
                self.groups -= 1;
                ack
            }
            R::ChangeGroupAutoPoll { id, rate } => {
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(err(ErrorCode::InvalidParams, "Rate must be seconds > 0"));
                }
                let rate = rate.clamp(shared.cfg.min_autopoll_rate, MAX_AUTOPOLL_RATE);
                let every = Duration::from_secs_f64(rate);
                self.group(conn, &id)?.autopoll = Some((every, Instant::now() + every));
                self.poll(conn, &id)
            }
        }
    }

    /// Parses and answers one frame; notifications (no id) get no answer.
    fn handle_frame(
        &mut self,
        shared: &Shared,
        id: ConnId,
        frame: Result<Bytes, ProtoError>,
        out: &mut Vec<u8>,
    ) {
        let envelope = match frame.and_then(|f| parse_request(&f)) {
            Ok(envelope) => envelope,
            Err(e) => {
                let notification = matches!(
                    e,
                    ProtoError::UnknownMethod { id: None, .. }
                        | ProtoError::InvalidParams { id: None, .. }
                );
                if !notification {
                    out.extend(encode_error(e.request_id(), &e.rpc_error()));
                }
                return;
            }
        };
        let reply = self.handle(shared, id, envelope.request);
        match (&envelope.id, reply) {
            (None, _) => {}
            (rid @ Some(_), Ok(reply)) => out.extend(encode_result(rid.as_ref(), &reply)),
            (rid @ Some(_), Err(e)) => out.extend(encode_error(rid.as_ref(), &e)),
        }
    }

    /// Appends the AutoPoll pushes that are due.
    fn push_due(&mut self, id: ConnId, now: Instant, push_empty: bool, out: &mut Vec<u8>) {
        let Core {
            controls, conns, ..
        } = self;
        let Some(conn) = conns.get_mut(&id) else {
            return;
        };
        for (group_id, group) in &mut conn.groups {
            let Some((every, next)) = group.autopoll else {
                continue;
            };
            if next > now {
                continue;
            }
            group.autopoll = Some((every, now + every));
            let changes = dirty(controls, group);
            if push_empty || !changes.is_empty() {
                let poll = PollResult {
                    id: group_id.clone(),
                    changes,
                };
                out.extend(encode_notification(&Notification::ChangeGroupPoll(poll)));
            }
        }
    }

    fn next_autopoll(&self, id: ConnId) -> Option<Instant> {
        let groups = self.conns.get(&id)?.groups.values();
        groups
            .filter_map(|g| g.autopoll.map(|(_, next)| next))
            .min()
    }
}

/// Reports a group's dirty controls and marks them clean.
fn dirty(controls: &[Control], group: &mut Group) -> Vec<ControlState> {
    let mut changes = Vec::new();
    for e in &mut group.entries {
        let control = &controls[e.control];
        if e.sent != Some(control.changed) {
            e.sent = Some(control.changed);
            changes.push(control.state(e.via_component));
        }
    }
    changes
}
