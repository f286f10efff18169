//! Reading (a fourth `impl Router`): subscribe, `get`, snapshots, resume replays.
//!
//! Every path that hands a client retained state goes through the session's grant:
//! a filter that reaches nothing readable is refused (`forbidden`), and snapshots,
//! replays and `get` contain only topics its `read` rules allow. Live delivery is
//! screened in [`Router::publish`] for the sessions that need it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::guard::bump;
use super::router::Router;
use crate::auth::Grant;
use crate::protocol::{frame, BusMsg, ErrorCode, Seq, SessionId};
use crate::topic::Filter;

impl Router {
    /// Sends a resumed session what it missed: a replay if the log still reaches
    /// back to `last_seq`, otherwise a fresh snapshot marked `resync`.
    pub(super) fn resume(&mut self, sid: SessionId, last_seq: Seq) {
        let filters: Vec<Filter> = self.sessions[&sid].filters.iter().cloned().collect();
        if !self.replay.covers(last_seq, self.seq) {
            self.send_snapshot(sid, 0, &filters, true);
            return;
        }
        let grant = self.sessions[&sid].grant.clone();
        let frames = self.replay.since(last_seq, |t| {
            filters.iter().any(|f| f.matches(t)) && grant.read.allows(t)
        });
        self.send_batch(sid, 0, frames, false);
    }

    pub(super) fn send_snapshot(
        &mut self,
        sid: SessionId,
        id: u64,
        filters: &[Filter],
        resync: bool,
    ) {
        let Some(grant) = self.grant(sid) else {
            return;
        };
        let frames = self.snapshot(filters, &grant);
        self.send_batch(sid, id, frames, resync);
    }

    /// Queues `snapshot`, the frames and `synced` as one item, so nothing live can
    /// come between them.
    pub(super) fn send_batch(&mut self, sid: SessionId, id: u64, frames: Vec<Bytes>, resync: bool) {
        let Some(c) = self.sessions.get(&sid).and_then(|s| s.conn.as_ref()) else {
            return;
        };
        let count = frames.len() as u64;
        let mut batch = Vec::with_capacity(frames.len() + 2);
        batch.push(frame(&BusMsg::Snapshot { id, count, resync }));
        batch.extend(frames);
        batch.push(frame(&BusMsg::Synced {
            id,
            seq: self.seq,
            count,
            resync,
        }));
        c.outbox.push_batch(batch);
    }

    /// Current retained frames matching any of `filters` that `grant` may read, each
    /// topic once.
    pub(super) fn snapshot(&self, filters: &[Filter], grant: &Grant) -> Vec<Bytes> {
        // One filter (the usual case) finds each topic once, in order: no need to
        // gather them in a map first.
        if let [f] = filters {
            let mut out = Vec::new();
            self.matching(f, |k, frame| {
                if grant.read.allows(k) {
                    out.push(frame.clone());
                }
            });
            return out;
        }
        let mut found: BTreeMap<&Arc<str>, &Bytes> = BTreeMap::new();
        for f in filters {
            self.matching(f, |k, frame| {
                found.insert(k, frame);
            });
        }
        found
            .into_iter()
            .filter(|(k, _)| grant.read.allows(k))
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// Calls `each` for every retained topic matching `f`, in topic order.
    fn matching<'a>(&'a self, f: &Filter, mut each: impl FnMut(&'a Arc<str>, &'a Bytes)) {
        if f.is_exact() {
            if let Some((k, r)) = self.retained.get_key_value(f.as_str()) {
                each(k, &r.frame);
            }
            return;
        }
        let prefix = f.literal_prefix();
        // `a/#` also matches `a` itself, which sorts before `a/`.
        if let Some(parent) = f.as_str().strip_suffix("/#") {
            if !parent.contains(['+', '#']) {
                if let Some((k, r)) = self.retained.get_key_value(parent) {
                    each(k, &r.frame);
                }
            }
        }
        let range = self
            .retained
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded));
        for (k, r) in range.take_while(|(k, _)| k.starts_with(prefix)) {
            if f.matches(k) {
                each(k, &r.frame);
            }
        }
    }

    pub(super) fn subscribe(&mut self, sid: SessionId, id: u64, raw: &[String]) {
        let mut filters = Vec::with_capacity(raw.len());
        for f in raw {
            match Filter::new(f) {
                Ok(f) => filters.push(f),
                Err(e) => {
                    return self.error(
                        sid,
                        Some(id),
                        ErrorCode::InvalidFilter,
                        format!("{f:?}: {e}"),
                    )
                }
            }
        }
        let max = self.cfg.limits.max_filters;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        // A filter that can match nothing this client may read is refused whole, so
        // that the answer never depends on what exists there.
        if let Some(f) = filters.iter().find(|f| !s.grant.read.reaches(f)) {
            let what = format!("reading {f}");
            return self.forbidden(sid, Some(id), what);
        }
        let new = filters.iter().filter(|f| !s.filters.contains(*f)).count();
        if s.filters.len() + new > max {
            bump(&self.guard.filters_refused);
            return self.error(
                sid,
                Some(id),
                ErrorCode::Limit,
                format!("a session may hold at most {max} filters"),
            );
        }
        for f in &filters {
            if s.filters.insert(f.clone()) {
                self.subs.insert(f, sid);
            }
            if !s.grant.read.covers(f) {
                s.screen = true;
            }
        }
        self.send_snapshot(sid, id, &filters, false);
    }

    pub(super) fn get(&mut self, sid: SessionId, id: u64, topic: &str) {
        if !self.may(sid, |g| g.read.allows(topic)) {
            return self.forbidden(sid, Some(id), format!("reading {topic}"));
        }
        if let Some(online) = self.meter_online(topic) {
            // Meter values live in the telemetry hub, which answers.
            let Some(outbox) = self
                .sessions
                .get(&sid)
                .and_then(|s| s.conn.as_ref())
                .map(|c| c.outbox.clone())
            else {
                return;
            };
            let msg = super::telemetry::HubMsg::Get {
                outbox,
                id,
                topic: topic.to_owned(),
                seq: self.seq.0,
                online,
            };
            if !self.hub.try_ctl(msg) {
                self.error(sid, Some(id), ErrorCode::Busy, "telemetry hub busy".into());
            }
            return;
        }
        let record = self.retained.get(topic).and_then(|r| {
            rmpv::decode::read_value(&mut &r.frame[crate::protocol::LEN_PREFIX..]).ok()
        });
        match record {
            Some(v) => self.ok(sid, id, v),
            None => self.error(
                sid,
                Some(id),
                ErrorCode::UnknownTopic,
                format!("{topic} has no retained value"),
            ),
        }
    }
}
