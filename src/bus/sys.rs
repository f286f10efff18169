//! The bus's own topics (a fifth `impl Router`): `$sys/...` counters and
//! `$clients/<session>` presence records, republished only when they change.

use std::sync::Arc;

use super::outbox::OutboxStats;
use super::router::{map, ControlFields, Router};
use crate::protocol::SessionId;
use crate::value::Value;

impl Router {
    pub(super) fn add_totals(&mut self, s: OutboxStats) {
        self.totals.dropped += s.dropped;
        self.totals.conflated += s.conflated;
        self.totals.gaps += s.gaps;
        self.totals.resyncs += s.resyncs;
    }

    /// Publishes a bus-owned (`$`) topic if its value changed.
    pub(super) fn publish_sys_value(&mut self, topic: String, value: Value) {
        if self.sys_last.get(&topic) == Some(&value) {
            return;
        }
        let t: Arc<str> = topic.as_str().into();
        self.publish(&t, &value, true, ControlFields::default());
        if value.is_nil() {
            self.sys_last.remove(&topic);
        } else {
            self.sys_last.insert(topic, value);
        }
    }

    pub(super) fn publish_presence(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let v = map(vec![
            ("name", Value::from(s.name.as_str())),
            ("role", Value::from(s.role.as_str())),
            ("credential", Value::from(&*s.grant.name)),
            ("connected", Value::Boolean(s.conn.is_some())),
            (
                "rooms",
                Value::Array(s.rooms.iter().map(|r| Value::from(r.as_str())).collect()),
            ),
        ]);
        self.publish_sys_value(format!("$clients/{sid}"), v);
    }

    pub(super) fn publish_sys(&mut self) {
        let mut totals = self.totals;
        let mut queues = Vec::new();
        for (sid, s) in &self.sessions {
            if let Some(c) = &s.conn {
                let st = c.outbox.stats();
                totals.dropped += st.dropped;
                totals.conflated += st.conflated;
                totals.gaps += st.gaps;
                totals.resyncs += st.resyncs;
                queues.push((*sid, st));
            }
        }
        let l = &self.cfg.limits;
        let (limit_frames, limit_bytes) = (l.outbox_frames as u64, l.outbox_bytes as u64);
        for (sid, st) in queues {
            let v = map(vec![
                ("frames", Value::from(st.frames as u64)),
                ("bytes", Value::from(st.bytes as u64)),
                ("conflated_now", Value::from(st.conflated_now as u64)),
                ("peak_frames", Value::from(st.peak_frames as u64)),
                ("peak_bytes", Value::from(st.peak_bytes as u64)),
                ("limit_frames", Value::from(limit_frames)),
                ("limit_bytes", Value::from(limit_bytes)),
                ("dropped", Value::from(st.dropped)),
                ("conflated", Value::from(st.conflated)),
                ("gaps", Value::from(st.gaps)),
            ]);
            self.publish_sys_value(format!("$sys/queues/{sid}"), v);
        }
        let counters = [
            ("connections", self.connections as u64),
            ("sessions", self.sessions.len() as u64),
            ("topics", self.retained.len() as u64),
            ("subscriptions", self.subs.filter_count() as u64),
            ("devices", self.devices.len() as u64),
            ("replay_entries", self.replay.entries() as u64),
            ("replay_bytes", self.replay.bytes() as u64),
            ("dropped", totals.dropped),
            ("conflated", totals.conflated),
            ("gaps", totals.gaps),
            ("resyncs", totals.resyncs),
            ("commands_pending", self.pending.len() as u64),
        ];
        for (name, v) in counters {
            self.publish_sys_value(format!("$sys/{name}"), Value::from(v));
        }
        for (name, v) in self.hub.stats.snapshot() {
            self.publish_sys_value(format!("$sys/telemetry/{name}"), Value::from(v));
        }
        if let Some(j) = &self.journal {
            use std::sync::atomic::Ordering::Relaxed;
            let st = j.stats();
            let mut persist = vec![
                ("records", st.records.load(Relaxed)),
                ("bytes", st.bytes.load(Relaxed)),
                ("fsyncs", st.fsyncs.load(Relaxed)),
                ("last_fsync_us", st.last_fsync_us.load(Relaxed)),
                ("compactions", st.compactions.load(Relaxed)),
                ("errors", st.errors.load(Relaxed)),
                ("live_topics", st.live_topics.load(Relaxed)),
                ("file_bytes", st.file_bytes.load(Relaxed)),
                ("pending_bytes", st.pending_bytes.load(Relaxed)),
                ("held_acks", self.held_acks() as u64),
            ];
            persist.extend(self.recovered.iter().copied());
            for (name, v) in persist {
                self.publish_sys_value(format!("$sys/persist/{name}"), Value::from(v));
            }
        }
        let blocked = self.backoff.blocked(std::time::Instant::now()) as u64;
        self.publish_sys_value("$sys/auth/blocked_addresses".into(), Value::from(blocked));
        for (name, v) in self.guard.snapshot() {
            self.publish_sys_value(format!("$sys/{name}"), Value::from(v));
        }
    }
}
