//! The checks after the load stops: every connected panel's view equals a fresh
//! snapshot of its filters, every acknowledged retained publish is there with its
//! last value, every device still answers a command, the consoles' meters still
//! flow. Each waits for what it needs within a bound and then says pass or fail,
//! with a detail.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::panel::{Kept, Ledger, TopicLedger};
use super::procs::Site;
use super::report::Check;
use crate::client::{Client, SubEvent};
use crate::model::Quality;
use crate::protocol::Update;
use crate::value::Value;

/// Longest all panels' views may take to equal the bus's state: panels cut off when
/// the load stopped first reconnect (backoff up to 5 s) and resume.
const VIEWS_WAIT: Duration = Duration::from_secs(60);
/// How often a view that does not match yet is compared again with a fresh snapshot
/// when the view itself does not change (the bus may have moved on since).
const RECHECK: Duration = Duration::from_secs(1);
/// Longest one snapshot, one read or one device command may take.
const STEP_WAIT: Duration = Duration::from_secs(20);

/// Waits until every device of the site is online, at most `limit`.
///
/// # Errors
/// How many were online when the time ran out.
pub(super) async fn all_online(
    client: &Client,
    site: &Site,
    limit: Duration,
) -> Result<(), String> {
    let want: std::collections::HashSet<String> = site
        .devices()
        .iter()
        .map(|d| format!("{d}/online"))
        .collect();
    let mut sub = client
        .subscribe(&["+/+/online"])
        .await
        .map_err(|e| e.to_string())?;
    let mut online = std::collections::HashSet::new();
    let deadline = Instant::now() + limit;
    while !want.is_subset(&online) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(SubEvent::Update(u))) if u.value == Value::Boolean(true) => {
                online.insert(u.topic);
            }
            Ok(Some(SubEvent::Update(u))) => {
                online.remove(&u.topic);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(format!(
                    "{} of {} devices online after {limit:?}",
                    want.intersection(&online).count(),
                    want.len()
                ))
            }
        }
    }
    Ok(())
}

/// The bus's retained records for `filters` now: a fresh subscription's snapshot.
async fn snapshot(client: &Client, filters: &[String]) -> Result<HashMap<String, Update>, String> {
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let read = async {
        let mut sub = client.subscribe(&refs).await.map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        while let Some(ev) = sub.next().await {
            match ev {
                SubEvent::Update(u) if u.retain && !u.value.is_nil() => {
                    out.insert(u.topic.clone(), u);
                }
                SubEvent::Synced { .. } => return Ok(out),
                SubEvent::Resync => out.clear(),
                _ => {}
            }
        }
        Err("the checker's subscription ended".to_owned())
    };
    tokio::time::timeout(STEP_WAIT, read)
        .await
        .map_err(|_| "no snapshot in time".to_owned())?
}

/// How a panel's view differs from the bus's records for its filters: topics only
/// the bus has, only the view has, and held by both with different records (the
/// same record has the same sequence, value, quality and time); `None` when equal.
pub fn view_diff(view: &HashMap<String, Update>, bus: &HashMap<String, Update>) -> Option<String> {
    let missing: Vec<&String> = bus.keys().filter(|t| !view.contains_key(*t)).collect();
    let extra: Vec<&String> = view.keys().filter(|t| !bus.contains_key(*t)).collect();
    let differ: Vec<&String> = bus
        .iter()
        .filter(|(t, u)| view.get(*t).is_some_and(|v| v != *u))
        .map(|(t, _)| t)
        .collect();
    if missing.is_empty() && extra.is_empty() && differ.is_empty() {
        return None;
    }
    let example = match (missing.first(), extra.first(), differ.first()) {
        (Some(t), _, _) => format!("missing {t}"),
        (_, Some(t), _) => format!("extra {t}"),
        (_, _, Some(t)) => format!(
            "{t}: view seq {} vs bus seq {}",
            view[*t].seq.0, bus[*t].seq.0
        ),
        _ => String::new(),
    };
    Some(format!(
        "{} missing, {} extra, {} different (e.g. {example})",
        missing.len(),
        extra.len(),
        differ.len()
    ))
}

/// Every kept panel's view equals a fresh snapshot of its filters (waiting, within
/// [`VIEWS_WAIT`] for all, for views still catching up).
pub(super) async fn views(checker: &Client, kept: &[Kept]) -> Check {
    let deadline = Instant::now() + VIEWS_WAIT;
    let (mut ok, mut topics) = (0usize, 0usize);
    let mut failures = Vec::new();
    for k in kept {
        let mut changed = k.view.changed.subscribe();
        loop {
            let bus = match snapshot(checker, &k.filters).await {
                Ok(b) => b,
                Err(e) => {
                    failures.push(format!("panel {}: {e}", k.slot));
                    break;
                }
            };
            let (synced, view) = k.view.read();
            let d = view_diff(&view, &bus);
            if synced && d.is_none() {
                ok += 1;
                topics += bus.len();
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = d.unwrap_or_else(|| "not synced".into());
                failures.push(format!("panel {} {:?}: {why}", k.slot, k.filters));
                break;
            }
            let _ = tokio::time::timeout(RECHECK.min(left), changed.changed()).await;
        }
    }
    let mut detail = format!(
        "{ok} of {} connected panels hold the bus's state ({topics} topics compared)",
        kept.len()
    );
    if let Some(f) = failures.first() {
        detail.push_str(&format!("; {} differ, first: {f}", failures.len()));
    }
    Check::new("views", failures.is_empty(), detail)
}

/// What the bus holds for a topic the panels published to.
#[derive(Debug, Clone, PartialEq)]
pub enum Retained {
    /// The acknowledged publish with the highest sequence, as sent.
    Exact,
    /// A later publish whose answer was lost (its panel dropped mid-request).
    Later,
    /// Nothing, and nothing was acknowledged (every publish's answer was lost and
    /// none was applied).
    Never,
    /// Anything else: an acknowledged value lost or replaced by an unknown one.
    Lost(String),
}

/// Judges what the bus holds for a topic (`got`, a fresh `get`) against what the
/// panels published to it.
pub fn judge_retained(t: &TopicLedger, got: Option<&Update>) -> Retained {
    let acked_seq = t.acked.as_ref().map(|(s, _)| *s);
    match (&t.acked, got) {
        (Some((seq, v)), Some(u)) if u.seq == *seq && u.value == *v => Retained::Exact,
        (_, Some(u)) if acked_seq.is_none_or(|s| u.seq > s) && t.unacked.contains(&u.value) => {
            Retained::Later
        }
        (None, None) => Retained::Never,
        (_, got) => Retained::Lost(format!(
            "acknowledged {} at seq {}, bus holds {}",
            t.acked
                .as_ref()
                .map_or("nothing".into(), |(_, v)| v.to_string()),
            acked_seq.map_or(0, |s| s.0),
            got.map_or("nothing".into(), |u| format!(
                "{} at seq {}",
                u.value, u.seq.0
            ))
        )),
    }
}

/// Every acknowledged retained publish is on the bus with its value, unless a later
/// publish to the topic (one whose answer was lost with its panel) replaced it.
/// Also returns how many of the topics the bus holds.
pub(super) async fn retained(checker: &Client, ledger: &Ledger) -> (Check, u64) {
    let (mut exact, mut later, mut lost) = (0u64, 0u64, Vec::new());
    let mut topics: Vec<&String> = ledger.topics.keys().collect();
    topics.sort();
    for topic in topics {
        let t = &ledger.topics[topic];
        let got = match tokio::time::timeout(STEP_WAIT, checker.get(topic)).await {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                lost.push(format!("{topic}: {e}"));
                continue;
            }
            Err(_) => {
                lost.push(format!("{topic}: no answer"));
                continue;
            }
        };
        match judge_retained(t, got.as_ref()) {
            Retained::Exact => exact += 1,
            Retained::Later => later += 1,
            Retained::Never => {}
            Retained::Lost(why) => lost.push(format!("{topic}: {why}")),
        }
        if t.unacked_lost > 0 {
            lost.push(format!("{topic}: too many unanswered publishes to tell"));
        }
    }
    let mut detail = format!(
        "{} topics: {exact} hold the last acknowledged value, {later} a later unanswered one",
        ledger.topics.len()
    );
    if let Some(l) = lost.first() {
        detail.push_str(&format!("; {} lost, first: {l}", lost.len()));
    }
    (
        Check::new("retained", lost.is_empty(), detail),
        exact + later,
    )
}

/// The control each device is commanded with at the end, by device key.
fn probe_control(site: &Site, key: &str) -> String {
    if site.consoles.iter().any(|c| c == key) {
        format!("{key}/ch01_mute")
    } else {
        format!("{key}/out01_video_mute")
    }
}

/// Every device is online (`online`: whether they all came back when the load
/// stopped), takes a command (the opposite of its current mute) and shows the
/// confirmed state.
pub(super) async fn devices(checker: &Client, site: &Site, online: Result<(), String>) -> Check {
    let mut failures: Vec<String> = online.err().into_iter().collect();
    let online = snapshot(checker, &["+/+/online".to_owned()]).await;
    let devices = site.devices();
    for key in &devices {
        let on = online
            .as_ref()
            .ok()
            .and_then(|m| m.get(&format!("{key}/online")))
            .is_some_and(|u| u.value == Value::Boolean(true));
        if !on {
            failures.push(format!("{key} offline"));
            continue;
        }
        if let Err(e) = command(checker, &probe_control(site, key)).await {
            failures.push(format!("{key}: {e}"));
        }
    }
    let mut detail = format!(
        "{} of {} devices online and answering",
        devices.len().saturating_sub(failures.len()),
        devices.len()
    );
    if let Some(f) = failures.first() {
        detail.push_str(&format!("; first failure: {f}"));
    }
    Check::new("devices", failures.is_empty(), detail)
}

/// Flips the bool at `topic` and waits for the confirmed state.
async fn command(checker: &Client, topic: &str) -> Result<(), String> {
    let run = async {
        let mut sub = checker
            .subscribe(&[topic])
            .await
            .map_err(|e| e.to_string())?;
        let mut now = None;
        while let Some(ev) = sub.next().await {
            match ev {
                SubEvent::Update(u) => now = Some(u.value),
                SubEvent::Synced { .. } => break,
                _ => {}
            }
        }
        let want = Value::Boolean(now != Some(Value::Boolean(true)));
        checker
            .set(topic, want.clone())
            .await
            .map_err(|e| e.to_string())?;
        while let Some(ev) = sub.next().await {
            if let SubEvent::Update(u) = ev {
                if u.value == want && u.quality == Some(Quality::Ok) {
                    return Ok(());
                }
            }
        }
        Err("subscription ended".to_owned())
    };
    tokio::time::timeout(STEP_WAIT, run)
        .await
        .map_err(|_| "not confirmed in time".to_owned())?
}

/// Every console's meters reach a new telemetry subscriber, fresh (not stale); and
/// the panels that subscribed received values.
pub(super) async fn telemetry(checker: &Client, site: &Site, tsubs: u64, values: u64) -> Check {
    let run = async {
        let mut sub = checker
            .telemetry("hall/+/meters", 10.0)
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        while seen.len() < site.consoles.len() {
            match sub.recv().await {
                Some(v) if !v.stale => {
                    seen.insert(v.topic.to_string());
                }
                Some(_) => {}
                None => return Err("telemetry subscription ended".to_owned()),
            }
        }
        Ok(seen.len())
    };
    let fresh = tokio::time::timeout(STEP_WAIT, run)
        .await
        .unwrap_or_else(|_| Err("no fresh meters in time".into()));
    let panels_ok = tsubs == 0 || values > 0;
    let detail = format!(
        "{} of {} consoles' meters fresh; panels: {tsubs} telemetry subscriptions, {values} values",
        fresh.as_ref().map_or(0, |n| *n),
        site.consoles.len()
    );
    let detail = match &fresh {
        Err(e) => format!("{detail}; {e}"),
        Ok(_) => detail,
    };
    Check::new("telemetry", fresh.is_ok() && panels_ok, detail)
}
