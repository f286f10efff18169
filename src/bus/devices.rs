//! Devices on the bus: descriptors, control state, liveness and command routing.
//!
//! This is the router's device half (a second `impl Router`): an adapter declares a
//! device, the bus publishes its descriptor at `$devices/<room>/<device>` and one
//! state record per control at `<room>/<device>/<control>`. Commands from panels are
//! checked against the descriptor, forwarded to the owning adapter with a bus id and a
//! deadline, and answered exactly once: by the adapter's `reply`, by the deadline
//! (`timeout`), or by the adapter going away (`device_offline`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::time::delay_queue;

use super::router::{ControlFields, Kind, Router};
use crate::model::{ControlKind, ControlSpec, DeviceDescriptor, Quality, ONLINE};
use crate::protocol::{
    frame, now_ms, BusMsg, Command, CommandOp, ErrorCode, Seq, SessionId, WireError,
};
use crate::value::Value;

/// A device known to the bus.
pub(super) struct DeviceEntry {
    pub desc: DeviceDescriptor,
    /// The adapter session that declared it (kept while that session is in grace).
    pub owner: Option<SessionId>,
    /// What the adapter last reported about reachability.
    pub reachable: bool,
    pub controls: HashMap<String, ControlState>,
    /// Commands forwarded and not yet answered.
    pub inflight: usize,
}

/// The state record of one control.
pub(super) struct ControlState {
    pub value: Value,
    /// Ok or stale, as the adapter last said; offline and pending are derived.
    pub quality: Quality,
    pub pending: Option<Pending>,
}

pub(super) struct Pending {
    pub cmd: u64,
    pub target: Value,
    pub deadline: u64,
}

/// A command waiting for its adapter's answer.
pub(super) struct PendingCmd {
    /// Who asked and their request id; `None` for the bus's own commands (momentary
    /// releases) and for askers whose session ended.
    pub origin: Option<(SessionId, u64)>,
    pub owner: SessionId,
    pub device: String,
    pub control: String,
    pub key: delay_queue::Key,
}

type Refusal = (ErrorCode, String);

impl Router {
    fn device_online(&self, key: &str) -> bool {
        self.devices.get(key).is_some_and(|d| {
            d.reachable
                && d.owner
                    .and_then(|o| self.sessions.get(&o))
                    .is_some_and(|s| s.conn.is_some())
        })
    }

    /// Publishes the state record of one control (or of `online`).
    pub(super) fn publish_control(&mut self, key: &str, control: &str) {
        let online = self.device_online(key);
        let topic: Arc<str> = format!("{key}/{control}").into();
        if control == ONLINE {
            let v = Value::Boolean(online);
            let display = if online { "online" } else { "offline" };
            self.publish(
                &topic,
                &v,
                true,
                ControlFields {
                    quality: Some(Quality::Ok),
                    display: Some(display),
                    ..ControlFields::default()
                },
            );
            return;
        }
        let Some(d) = self.devices.get(key) else {
            return;
        };
        let (Some(spec), Some(st)) = (d.desc.control(control), d.controls.get(control)) else {
            return;
        };
        let quality = if !online {
            Quality::Offline
        } else if st.pending.is_some() {
            Quality::Pending
        } else {
            st.quality
        };
        let value = st.value.clone();
        let display = spec.display(&value);
        let position = spec.position(&value);
        let target = st.pending.as_ref().map(|p| p.target.clone());
        let deadline = st.pending.as_ref().map(|p| p.deadline);
        self.publish(
            &topic,
            &value,
            true,
            ControlFields {
                quality: Some(quality),
                position,
                display: display.as_deref(),
                target: target.as_ref(),
                deadline,
                time: None,
            },
        );
    }

    /// Publishes every record of a device: descriptor, `online`, each control.
    fn publish_device(&mut self, key: &str) {
        let Some(d) = self.devices.get(key) else {
            return;
        };
        let mut published = d.desc.clone();
        published.controls.push(
            ControlSpec::new(ONLINE, ControlKind::Bool)
                .access(crate::model::Access::Read)
                .label("Online"),
        );
        let names: Vec<String> = d
            .desc
            .controls
            .iter()
            .filter(|c| !matches!(c.kind, ControlKind::Trigger))
            .map(|c| c.name.clone())
            .collect();
        let owner = d.owner.map_or(0, |o| o.0);
        let mut v = crate::value::to_value(&published);
        if let Value::Map(m) = &mut v {
            m.push((Value::from("owner"), Value::from(owner)));
        }
        let topic: Arc<str> = format!("$devices/{key}").into();
        self.publish(&topic, &v, true, ControlFields::default());
        self.publish_control(key, ONLINE);
        for n in names {
            self.publish_control(key, &n);
        }
    }

    /// Liveness changed for every device of `key`: republish all its records at once.
    fn liveness_changed(&mut self, key: &str) {
        let names: Vec<String> = match self.devices.get(key) {
            Some(d) => d
                .desc
                .controls
                .iter()
                .filter(|c| !matches!(c.kind, ControlKind::Trigger))
                .map(|c| c.name.clone())
                .collect(),
            None => return,
        };
        self.publish_control(key, ONLINE);
        for n in names {
            self.publish_control(key, &n);
        }
    }

    pub(super) fn declare(
        &mut self,
        sid: SessionId,
        id: u64,
        desc: DeviceDescriptor,
        online: bool,
    ) {
        if let Err(e) = desc.validate() {
            return self.error(sid, Some(id), ErrorCode::InvalidDescriptor, e);
        }
        let key = desc.key();
        if !self.may(sid, |g| g.declare.allows(&key)) {
            return self.forbidden(sid, Some(id), format!("declaring {key}"));
        }
        let max = self.cfg.limits.max_topics;
        if !self.devices.contains_key(&key) && self.retained_count() + desc.controls.len() + 2 > max
        {
            return self.error(
                sid,
                Some(id),
                ErrorCode::Limit,
                format!("the bus holds its maximum of {max} topics"),
            );
        }
        // Telemetry aliases live for the bus's run: bounded like topics, so adapters
        // declaring ever-new meter names cannot grow the alias table without end.
        let new_meters = desc
            .controls
            .iter()
            .filter(|c| matches!(c.kind, ControlKind::Meter { .. }))
            .filter(|c| {
                !self
                    .aliases
                    .contains_key(format!("{key}/{}", c.name).as_str())
            })
            .count();
        if self.aliases.len() + new_meters > max {
            return self.error(
                sid,
                Some(id),
                ErrorCode::Limit,
                format!("the bus holds its maximum of {max} telemetry streams"),
            );
        }
        if let Some(d) = self.devices.get(&key) {
            if let Some(o) = d.owner.filter(|o| *o != sid) {
                if self.sessions.get(&o).is_some_and(|s| s.conn.is_some()) {
                    return self.error(
                        sid,
                        Some(id),
                        ErrorCode::Conflict,
                        format!("{key} is served by another adapter (session {o})"),
                    );
                }
            }
        }
        // Keep known values across a re-declare, but mark them stale until the
        // adapter reports them again.
        let mut controls = HashMap::new();
        let old = self.devices.remove(&key);
        for c in &desc.controls {
            let value = old
                .as_ref()
                .and_then(|d| d.controls.get(&c.name))
                .filter(|_| old.as_ref().and_then(|d| d.desc.control(&c.name)) == Some(c))
                .map(|s| s.value.clone())
                .unwrap_or(Value::Nil);
            controls.insert(
                c.name.clone(),
                ControlState {
                    value,
                    quality: Quality::Stale,
                    pending: None,
                },
            );
        }
        let inflight = old.as_ref().map_or(0, |d| d.inflight);
        // Controls the new descriptor no longer has: their records go.
        let removed: Vec<String> = old
            .as_ref()
            .map(|d| {
                d.desc
                    .controls
                    .iter()
                    .filter(|c| desc.control(&c.name).is_none())
                    .map(|c| format!("{key}/{}", c.name))
                    .collect()
            })
            .unwrap_or_default();
        for topic in removed {
            self.delete_retained(&topic);
        }
        if let Some(prev) = old.as_ref().and_then(|d| d.owner).filter(|o| *o != sid) {
            if let Some(s) = self.sessions.get_mut(&prev) {
                s.devices.remove(&key);
            }
        }
        let streams = self.register_streams(sid, &key, &desc);
        self.devices.insert(
            key.clone(),
            DeviceEntry {
                desc,
                owner: Some(sid),
                reachable: online,
                controls,
                inflight,
            },
        );
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.devices.insert(key.clone());
        }
        self.publish_device(&key);
        let result = if streams.is_empty() {
            Value::Nil
        } else {
            super::router::map(vec![("streams", Value::Map(streams))])
        };
        self.send(sid, frame(&BusMsg::Ok { id, result }));
    }

    /// Gives the device's meter controls their telemetry aliases (stable for the
    /// bus's run) and tells the hub who owns them; returns `{control: alias}`.
    fn register_streams(
        &mut self,
        sid: SessionId,
        key: &str,
        desc: &DeviceDescriptor,
    ) -> Vec<(Value, Value)> {
        let mut infos = Vec::new();
        let mut answer = Vec::new();
        for c in &desc.controls {
            let ControlKind::Meter { channels, .. } = c.kind else {
                continue;
            };
            let topic: Arc<str> = format!("{key}/{}", c.name).into();
            let next = self.aliases.len() as u32 + 1;
            let alias = *self.aliases.entry(topic.clone()).or_insert(next);
            answer.push((Value::from(c.name.as_str()), Value::from(alias)));
            infos.push(super::telemetry::StreamInfo {
                alias,
                topic,
                channels: channels.max(1),
            });
        }
        if !infos.is_empty() {
            self.hub.try_ctl(super::telemetry::HubMsg::Streams {
                owner: sid,
                streams: infos,
            });
        }
        answer
    }

    /// An adapter resumed its session: its devices are reachable again through it;
    /// values are stale until it publishes them.
    pub(super) fn adapter_back(&mut self, sid: SessionId) {
        let keys: Vec<String> = match self.sessions.get(&sid) {
            Some(s) => s.devices.iter().cloned().collect(),
            None => return,
        };
        for key in keys {
            if let Some(d) = self.devices.get_mut(&key) {
                if d.owner != Some(sid) {
                    continue;
                }
                for c in d.controls.values_mut() {
                    c.quality = Quality::Stale;
                }
            }
            self.liveness_changed(&key);
        }
    }

    pub(super) fn status(&mut self, sid: SessionId, key: &str, online: bool, reason: Option<&str>) {
        match self.devices.get_mut(key) {
            Some(d) if d.owner == Some(sid) => {
                if d.reachable != online {
                    d.reachable = online;
                    if online {
                        for c in d.controls.values_mut() {
                            c.quality = Quality::Stale;
                        }
                    }
                    tracing::info!(device = key, online, reason, "device reachability");
                    self.liveness_changed(key);
                }
            }
            _ => self.error(
                sid,
                None,
                ErrorCode::UnknownTopic,
                format!("status for {key}: not a device this session declared"),
            ),
        }
    }

    /// A publish by an adapter to one of its controls. `None`: the topic is not under a
    /// declared device, so it is an ordinary publish.
    pub(super) fn device_publish(
        &mut self,
        sid: SessionId,
        topic: &crate::topic::Topic,
        value: &Value,
        quality: Option<Quality>,
    ) -> Option<Result<Seq, Refusal>> {
        // The device key is the first two levels, looked up without allocating: this
        // runs for every publish.
        let t = topic.as_str();
        let slash = |s: &str| s.bytes().position(|b| b == b'/');
        let first = slash(t)?;
        let (key, rest) = match slash(&t[first + 1..]) {
            Some(i) => (&t[..first + 1 + i], Some(&t[first + 2 + i..])),
            None => (t, None),
        };
        let d = self.devices.get_mut(key)?;
        let Some(control) = rest.filter(|c| slash(c).is_none()) else {
            return Some(Err((
                ErrorCode::UnknownTopic,
                format!("{topic}: device topics are <room>/<device>/<control>"),
            )));
        };
        if d.owner != Some(sid) {
            return Some(Err((
                ErrorCode::Forbidden,
                format!("{topic} belongs to {key}'s adapter; send `set` to change it"),
            )));
        }
        let Some(spec) = d.desc.control(control) else {
            return Some(Err((
                ErrorCode::UnknownTopic,
                format!("{key} has no control {control:?}"),
            )));
        };
        let is_meter = matches!(spec.kind, ControlKind::Meter { .. });
        // The device is the truth, but a value of the wrong type would break every
        // panel drawing the control: adapters get the same checks as commands.
        let value = if is_meter || value.is_nil() || matches!(spec.kind, ControlKind::Trigger) {
            value.clone()
        } else {
            match spec.check_set(value) {
                Ok(v) => v,
                Err(rule) => {
                    return Some(Err((ErrorCode::InvalidValue, format!("{topic}: {rule}"))))
                }
            }
        };
        if is_meter {
            // Meters are telemetry: the hub keeps the newest value and streams it
            // over UDP; nothing goes through the sequence.
            if let Some(alias) = self.aliases.get(t).copied() {
                self.hub.ingest(super::telemetry::Ingest {
                    session: sid,
                    values: vec![(alias, value)],
                });
            }
            return Some(Ok(Seq(0)));
        }
        let st = d.controls.get_mut(control)?;
        st.value = value;
        st.quality = match quality {
            Some(Quality::Stale) => Quality::Stale,
            _ => Quality::Ok,
        };
        self.publish_control(key, control);
        Some(Ok(self.current_seq()))
    }

    /// For a meter control's topic: whether its device is online (`None`: not a
    /// meter). Meter values live in the telemetry hub, which answers `get`.
    pub(super) fn meter_online(&self, topic: &str) -> Option<bool> {
        let (key, control) = topic.rsplit_once('/')?;
        let d = self.devices.get(key)?;
        let spec = d.desc.control(control)?;
        if !matches!(spec.kind, ControlKind::Meter { .. }) {
            return None;
        }
        Some(self.device_online(key))
    }

    pub(super) fn command(
        &mut self,
        sid: SessionId,
        id: u64,
        topic: &str,
        op: CommandOp,
        value: Value,
        timeout_ms: Option<u64>,
    ) {
        // A resend after a reconnect: answer again, never execute twice.
        if let Some(s) = self.sessions.get(&sid) {
            if s.inflight.contains(&id) {
                return;
            }
            if let Some(f) = s.answers.get(Kind::Command, id) {
                return self.send(sid, f);
            }
        }
        // Checked before the topic is looked up, so a refusal says nothing about
        // what exists there.
        if !self.may(sid, |g| g.command.allows(topic)) {
            return self.forbidden(sid, Some(id), format!("commanding {topic}"));
        }
        if let Err((code, message)) = self.route(sid, id, topic, op, value, timeout_ms) {
            self.command_error(sid, id, code, message);
        }
    }

    fn route(
        &mut self,
        sid: SessionId,
        id: u64,
        topic: &str,
        op: CommandOp,
        value: Value,
        timeout_ms: Option<u64>,
    ) -> Result<(), Refusal> {
        let unknown = || {
            (
                ErrorCode::UnknownTopic,
                format!("{topic}: no such device control"),
            )
        };
        let (key, control) = topic.rsplit_once('/').ok_or_else(unknown)?;
        if key.matches('/').count() != 1 {
            return Err(unknown());
        }
        let online = self.device_online(key);
        let cfg = &self.cfg.commands;
        let d = self.devices.get(key).ok_or_else(unknown)?;
        if control == ONLINE {
            return Err((ErrorCode::NotWritable, format!("{topic} is read-only")));
        }
        let spec = d.desc.control(control).ok_or_else(unknown)?;
        if !spec.access.writable() || matches!(spec.kind, ControlKind::Meter { .. }) {
            return Err((ErrorCode::NotWritable, format!("{topic} is read-only")));
        }
        let is_trigger = matches!(spec.kind, ControlKind::Trigger);
        let value = match op {
            CommandOp::Call if !is_trigger => {
                return Err((
                    ErrorCode::NotWritable,
                    format!("{topic} is not a trigger: use set"),
                ))
            }
            CommandOp::Set if is_trigger => {
                return Err((
                    ErrorCode::NotWritable,
                    format!("{topic} is a trigger: use call"),
                ))
            }
            CommandOp::Set => spec
                .check_set(&value)
                .map_err(|rule| (ErrorCode::InvalidValue, format!("{topic}: {rule}")))?,
            CommandOp::Call => value,
        };
        if !online {
            return Err((ErrorCode::DeviceOffline, format!("{key} is offline")));
        }
        if d.inflight >= cfg.max_inflight_per_device {
            return Err((
                ErrorCode::Busy,
                format!("{key} has {} commands in flight", d.inflight),
            ));
        }
        let timeout = timeout_ms
            .unwrap_or(cfg.default_timeout_ms)
            .clamp(1, cfg.max_timeout_ms);
        let is_momentary = matches!(spec.kind, ControlKind::Momentary);
        let owner = d
            .owner
            .ok_or_else(|| (ErrorCode::DeviceOffline, format!("{key} is offline")))?;
        self.forward(
            owner,
            Some((sid, id)),
            key,
            control,
            op,
            value.clone(),
            timeout,
        )?;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.inflight.insert(id);
            if is_momentary {
                let t: Arc<str> = topic.into();
                if value == Value::Boolean(true) {
                    s.pressed.insert(t);
                } else {
                    s.pressed.remove(&t);
                }
            }
        }
        Ok(())
    }

    /// Sends a checked command to the owning adapter and marks the control pending.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        owner: SessionId,
        origin: Option<(SessionId, u64)>,
        key: &str,
        control: &str,
        op: CommandOp,
        value: Value,
        timeout_ms: u64,
    ) -> Result<(), Refusal> {
        let cmd = self.next_cmd;
        self.next_cmd += 1;
        let deadline = now_ms() + timeout_ms;
        let f = frame(&BusMsg::Cmd(Command {
            id: cmd,
            op,
            topic: format!("{key}/{control}"),
            value: value.clone(),
            deadline,
            from: origin.map_or(SessionId(0), |(s, _)| s),
        }));
        let adapter = self
            .sessions
            .get(&owner)
            .and_then(|s| s.conn.as_ref())
            .ok_or_else(|| (ErrorCode::DeviceOffline, format!("{key} is offline")))?;
        match adapter.outbox.push_quiet(f) {
            Ok(true) => self.dirty.push(adapter.outbox.clone()),
            Ok(false) => {}
            Err(_) => {
                return Err((
                    ErrorCode::Busy,
                    format!("{key}'s adapter is not reading its commands"),
                ))
            }
        }
        let qkey = self
            .deadlines
            .insert(cmd, Duration::from_millis(timeout_ms));
        self.pending.insert(
            cmd,
            PendingCmd {
                origin,
                owner,
                device: key.into(),
                control: control.into(),
                key: qkey,
            },
        );
        if let Some(d) = self.devices.get_mut(key) {
            d.inflight += 1;
            if op == CommandOp::Set {
                if let Some(st) = d.controls.get_mut(control) {
                    st.pending = Some(Pending {
                        cmd,
                        target: value,
                        deadline,
                    });
                }
            }
        }
        if op == CommandOp::Set {
            self.publish_control(key, control);
        }
        Ok(())
    }

    /// Ends a pending command: frees its slot and clears the control's pending mark.
    fn settle(&mut self, cmd: u64) -> Option<PendingCmd> {
        let p = self.pending.remove(&cmd)?;
        let mut republish = false;
        if let Some(d) = self.devices.get_mut(&p.device) {
            d.inflight = d.inflight.saturating_sub(1);
            if let Some(st) = d.controls.get_mut(&p.control) {
                if st.pending.as_ref().is_some_and(|x| x.cmd == cmd) {
                    st.pending = None;
                    republish = true;
                }
            }
        }
        if republish {
            self.publish_control(&p.device.clone(), &p.control.clone());
        }
        Some(p)
    }

    pub(super) fn reply(
        &mut self,
        sid: SessionId,
        cmd: u64,
        result: Value,
        error: Option<WireError>,
    ) {
        match self.pending.get(&cmd) {
            Some(p) if p.owner == sid => {}
            // Late (after its deadline) or not this adapter's: ignored.
            _ => return,
        }
        let Some(p) = self.settle(cmd) else {
            return;
        };
        self.deadlines.remove(&p.key);
        if let Some((origin, id)) = p.origin {
            let f = match error {
                None => frame(&BusMsg::Ok { id, result }),
                Some(e) => frame(&BusMsg::Error {
                    id: Some(id),
                    code: e.code,
                    message: e.message,
                }),
            };
            self.answer(origin, Kind::Command, id, f);
        }
    }

    pub(super) fn command_timeout(&mut self, cmd: u64) {
        let Some(p) = self.settle(cmd) else {
            return;
        };
        if let Some((origin, id)) = p.origin {
            self.command_error(
                origin,
                id,
                ErrorCode::Timeout,
                format!(
                    "{}/{}: no answer from the device in time",
                    p.device, p.control
                ),
            );
        }
    }

    /// A session's connection ended: if it was an adapter, its devices go offline and
    /// the commands waiting on it are answered `device_offline`.
    pub(super) fn owner_gone(&mut self, sid: SessionId) {
        let keys: Vec<String> = match self.sessions.get(&sid) {
            Some(s) => s.devices.iter().cloned().collect(),
            None => return,
        };
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.owner == sid)
            .map(|(c, _)| *c)
            .collect();
        for cmd in waiting {
            if let Some(p) = self.settle(cmd) {
                self.deadlines.remove(&p.key);
                if let Some((origin, id)) = p.origin {
                    self.command_error(
                        origin,
                        id,
                        ErrorCode::DeviceOffline,
                        format!("{}: the adapter disconnected", p.device),
                    );
                }
            }
        }
        for key in keys {
            self.liveness_changed(&key);
        }
    }

    /// Releases every momentary control the session holds pressed.
    pub(super) fn release_pressed(&mut self, sid: SessionId) {
        let pressed: Vec<Arc<str>> = match self.sessions.get_mut(&sid) {
            Some(s) => s.pressed.drain().collect(),
            None => return,
        };
        for topic in pressed {
            let Some((key, control)) = topic.rsplit_once('/') else {
                continue;
            };
            let owner = self.devices.get(key).and_then(|d| d.owner);
            if let Some(owner) = owner {
                let timeout = self.cfg.commands.default_timeout_ms;
                match self.forward(
                    owner,
                    None,
                    key,
                    control,
                    CommandOp::Set,
                    Value::Boolean(false),
                    timeout,
                ) {
                    Ok(()) => {
                        tracing::info!(%topic, session = %sid, "released momentary control of a disconnected client")
                    }
                    Err((_, why)) => {
                        tracing::warn!(%topic, why, "could not release momentary control")
                    }
                }
            }
        }
    }
}
