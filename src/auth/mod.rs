//! Trust: who a client is (authentication) and what it may do (authorization).
//!
//! * [`Grant`]: the rules of one credential, compiled once at start into filter lists
//!   and shared (`Arc`) by every session using that credential. The router and the
//!   telemetry hub consult it; nothing is parsed or allocated per message.
//! * [`Authenticator`] (in `token.rs`): the credential table from `[auth]`, token
//!   hashing (salted SHA-256, compared in constant time) and the anonymous policy.
//! * [`Backoff`]: refusal windows for addresses that sent wrong credentials, so that
//!   guessing is slow; bounded.
//!
//! `docs/security.md` explains the model; `docs/protocol.md` §3 the wire side.

mod backoff;
mod token;

pub use backoff::Backoff;
pub use token::{
    fingerprint_hex, hash_token, new_token, parse_fingerprint, AuthRefusal, Authenticator,
};

use std::sync::Arc;

use crate::config::ClientRules;
use crate::topic::{covers, intersects, Filter};

/// A list of filters one kind of action is allowed on.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    all: bool,
    filters: Box<[Filter]>,
}

impl RuleSet {
    /// A set allowing everything.
    pub fn everything() -> RuleSet {
        RuleSet {
            all: true,
            filters: Box::new([]),
        }
    }

    fn of(filters: Vec<Filter>) -> RuleSet {
        RuleSet {
            all: false,
            filters: filters.into_boxed_slice(),
        }
    }

    /// Whether the set allows everything.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether `topic` (a name, or a device key, or a room) is allowed.
    pub fn allows(&self, topic: &str) -> bool {
        self.all || self.filters.iter().any(|f| f.matches(topic))
    }

    /// Whether some topic matching `filter` is allowed.
    pub fn reaches(&self, filter: &Filter) -> bool {
        self.all
            || self
                .filters
                .iter()
                .any(|f| intersects(f.as_str(), filter.as_str()))
    }

    /// Whether every topic matching `filter` is allowed.
    pub fn covers(&self, filter: &Filter) -> bool {
        self.all
            || self
                .filters
                .iter()
                .any(|f| covers(f.as_str(), filter.as_str()))
    }

    /// The filters (empty when the set allows everything).
    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }
}

/// What one client may do: the compiled rules of its credential.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The credential's name (`anonymous` for clients without one, the host's name
    /// for in-process adapters).
    pub name: Arc<str>,
    /// Subscribe, `get`, snapshots, resume replays; includes the derived
    /// `$devices/<room>/<device>` filters.
    pub read: RuleSet,
    pub publish: RuleSet,
    pub command: RuleSet,
    pub declare: RuleSet,
    pub rooms: RuleSet,
    pub telemetry: RuleSet,
}

impl Grant {
    /// Everything allowed (the operator; anonymous clients of a loopback-only bus).
    pub fn everything(name: &str) -> Arc<Grant> {
        Arc::new(Grant {
            name: name.into(),
            read: RuleSet::everything(),
            publish: RuleSet::everything(),
            command: RuleSet::everything(),
            declare: RuleSet::everything(),
            rooms: RuleSet::everything(),
            telemetry: RuleSet::everything(),
        })
    }

    /// An in-process adapter that may declare exactly these device keys
    /// (`room/device`) and nothing else: its own devices' controls, commands and
    /// telemetry follow from owning them.
    pub fn adapter_for(name: &str, keys: &[String]) -> Result<Arc<Grant>, String> {
        Grant::compile(&ClientRules {
            name: name.into(),
            declare: keys.to_vec(),
            ..ClientRules::default()
        })
    }

    /// Compiles a credential's rules.
    ///
    /// # Errors
    /// A message naming the rule list and the filter that is not valid.
    pub fn compile(r: &ClientRules) -> Result<Arc<Grant>, String> {
        if r.all {
            return Ok(Grant::everything(&r.name));
        }
        let list = |what: &str, v: &[String]| -> Result<Vec<Filter>, String> {
            v.iter()
                .map(|f| Filter::new(f).map_err(|e| format!("{what}: {f:?}: {e}")))
                .collect()
        };
        let read = list("read", &r.read)?;
        let rooms = match &r.rooms {
            Some(v) => list("rooms", v)?,
            None => derived_rooms(&read),
        };
        let telemetry = match &r.telemetry {
            Some(v) => list("telemetry", v)?,
            None => read.clone(),
        };
        let mut readable = read.clone();
        readable.extend(read.iter().filter_map(descriptor_filter));
        Ok(Arc::new(Grant {
            name: r.name.as_str().into(),
            read: RuleSet::of(readable),
            publish: RuleSet::of(list("publish", &r.publish)?),
            command: RuleSet::of(list("command", &r.command)?),
            declare: RuleSet::of(list("declare", &r.declare)?),
            rooms: RuleSet::of(rooms),
            telemetry: RuleSet::of(telemetry),
        }))
    }

    /// Whether this grant allows everything everywhere.
    pub fn is_all(&self) -> bool {
        self.read.is_all()
    }
}

/// The descriptor filter a read rule implies: reading anything under
/// `<room>/<device>/` lets a panel see that device's descriptor, so that it can draw
/// its controls. `boardroom/#` gives `$devices/boardroom/+`; `#` gives
/// `$devices/+/+`; `boardroom/projector/power` gives `$devices/boardroom/projector`.
fn descriptor_filter(read: &Filter) -> Option<Filter> {
    let mut levels = read.levels();
    let first = levels.next()?;
    if first.starts_with('$') {
        return None;
    }
    let second = match first {
        "#" => return Filter::new("$devices/+/+").ok(),
        _ => levels.next()?,
    };
    let room = first;
    let device = if second == "#" { "+" } else { second };
    Filter::new(&format!("$devices/{room}/{device}")).ok()
}

/// The rooms a read rule implies when `rooms` is not given: the room of every device
/// the client may read (`boardroom/#` → `boardroom`; `+/...` or `#` → any room).
fn derived_rooms(read: &[Filter]) -> Vec<Filter> {
    let mut out: Vec<Filter> = Vec::new();
    for f in read {
        let first = f.levels().next().unwrap_or("");
        let room = match first {
            "+" | "#" => "+",
            r if r.starts_with('$') => continue,
            r => r,
        };
        if let Ok(rf) = Filter::new(room) {
            if !out.contains(&rf) {
                out.push(rf);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(read: &[&str]) -> Arc<Grant> {
        Grant::compile(&ClientRules {
            name: "t".into(),
            read: read.iter().map(|s| s.to_string()).collect(),
            command: read.iter().map(|s| s.to_string()).collect(),
            ..ClientRules::default()
        })
        .unwrap()
    }

    #[test]
    fn a_room_panel_reads_its_room_and_its_descriptors_only() {
        let g = grant(&["boardroom/#"]);
        assert!(g.read.allows("boardroom/projector/power"));
        assert!(g.read.allows("$devices/boardroom/projector"));
        assert!(!g.read.allows("hall/projector/power"));
        assert!(!g.read.allows("$devices/hall/projector"));
        assert!(!g.read.allows("$sys/connections"));
        assert!(!g.read.allows("$clients/3"));
        assert!(g.rooms.allows("boardroom"));
        assert!(!g.rooms.allows("hall"));
        assert!(g.telemetry.allows("boardroom/dsp/meters"));
        assert!(!g.telemetry.allows("$devices/boardroom/dsp"));
        let f = |s: &str| Filter::new(s).unwrap();
        assert!(g.read.reaches(&f("#")));
        assert!(!g.read.covers(&f("#")));
        assert!(g.read.covers(&f("boardroom/+/power")));
        assert!(!g.read.reaches(&f("hall/#")));
        assert!(g.read.reaches(&f("$devices/#")));
        assert!(!g.read.reaches(&f("$sys/#")));
    }

    #[test]
    fn wildcard_rules_derive_wildcard_descriptors_and_rooms() {
        let g = grant(&["+/+/power"]);
        assert!(g.read.allows("$devices/hall/projector"));
        assert!(g.rooms.allows("hall"));
        let g = grant(&["hall/projector/power"]);
        assert!(g.read.allows("$devices/hall/projector"));
        assert!(!g.read.allows("$devices/hall/camera"));
        let g = grant(&["$sys/#"]);
        assert!(g.read.allows("$sys/connections"));
        assert!(!g.rooms.allows("x"));
    }

    #[test]
    fn bad_filters_are_named() {
        let e = Grant::compile(&ClientRules {
            name: "x".into(),
            command: vec!["a/#/b".into()],
            ..ClientRules::default()
        })
        .unwrap_err();
        assert!(e.contains("command") && e.contains("a/#/b"), "{e}");
    }
}
