//! What the soak prints: samples of the bus over time (a table, and `SOAK sample`
//! lines), the checks with their verdicts, and the memory verdict's rule
//! ([`rss_verdict`]), kept pure so that a test can show it failing on a leak.

use std::fmt::Write as _;

use super::panel::LoadStats;
use crate::bench::fmt_num;

/// Largest growth of the bus's resident memory a soak accepts, in percent: the
/// median of the last third of the samples over the median of the first third.
pub const RSS_LIMIT_PCT: f64 = 10.0;
/// Fewest samples (after warm-up) for a memory verdict: two per third. A shorter run
/// reports its figures without judging them.
pub const MIN_RSS_SAMPLES: usize = 6;

/// The memory verdict on a series of RSS samples.
#[derive(Debug, Clone, PartialEq)]
pub struct RssVerdict {
    /// Median of the first third (KiB).
    pub first_kib: u64,
    /// Median of the last third (KiB).
    pub last_kib: u64,
    /// `last / first - 1`, in percent.
    pub growth_pct: f64,
    /// Whether there were enough samples to judge ([`MIN_RSS_SAMPLES`]).
    pub judged: bool,
    /// Judged and within the limit, or not judged.
    pub pass: bool,
}

fn median(xs: &[u64]) -> u64 {
    let mut v = xs.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// Judges a series of RSS samples (KiB, in time order, warm-up excluded): memory is
/// flat when the median of the last third is at most `limit_pct` percent above the
/// median of the first third. Medians, so that one sample caught mid-burst decides
/// nothing; thirds, so that a slow steady leak shows as the distance between them.
/// With fewer than [`MIN_RSS_SAMPLES`] samples nothing is judged (and nothing fails).
pub fn rss_verdict(series_kib: &[u64], limit_pct: f64) -> RssVerdict {
    let third = series_kib.len() / 3;
    let judged = series_kib.len() >= MIN_RSS_SAMPLES;
    let (first, last) = if judged {
        (
            median(&series_kib[..third]),
            median(&series_kib[series_kib.len() - third..]),
        )
    } else {
        (
            series_kib.first().copied().unwrap_or(0),
            series_kib.last().copied().unwrap_or(0),
        )
    };
    let growth_pct = if first > 0 {
        (last as f64 / first as f64 - 1.0) * 100.0
    } else {
        0.0
    };
    RssVerdict {
        first_kib: first,
        last_kib: last,
        growth_pct: (growth_pct * 10.0).round() / 10.0,
        judged,
        pass: !judged || growth_pct <= limit_pct,
    }
}

/// The bus at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// `start`, `end`, `final`, or empty for the samples in between.
    pub label: String,
    /// Seconds since the load started.
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// `$sys` counters: connections, sessions, ….
    pub sys: Vec<(&'static str, u64)>,
    /// Over `$sys/queues/*` (every connected session): frames queued now, the most
    /// in one queue now, and the highest peak of any queue.
    pub queued_frames: u64,
    pub max_queued_frames: u64,
    pub max_peak_frames: u64,
    /// Size of the retained-state journal's files, when the bus keeps one.
    pub journal_bytes: Option<u64>,
    pub load: LoadStats,
}

/// The `$sys` counters each sample holds, by their name under `$sys/`.
pub const SYS_COUNTERS: &[&str] = &[
    "connections",
    "sessions",
    "subscriptions",
    "topics",
    "replay_entries",
    "replay_bytes",
    "dropped",
    "conflated",
    "gaps",
    "resyncs",
    "commands_pending",
    "telemetry/subscriptions",
    "telemetry/datagrams_out",
    "telemetry/send_dropped",
    "persist/records",
    "persist/live_topics",
    "persist/file_bytes",
    "persist/compactions",
    "persist/errors",
];

impl Sample {
    /// A `$sys` counter by name (0 when the bus has not published it).
    pub fn sys(&self, name: &str) -> u64 {
        self.sys
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(0, |(_, v)| *v)
    }

    /// Every figure, named, in a fixed order.
    pub fn figures(&self) -> Vec<(String, f64)> {
        let mut f = vec![
            ("t_s".to_owned(), (self.t_s * 10.0).round() / 10.0),
            ("rss_kib".to_owned(), self.rss_kib as f64),
            ("fds".to_owned(), self.fds as f64),
        ];
        for (k, v) in &self.sys {
            f.push((k.replace('/', "_"), *v as f64));
        }
        f.push(("queued_frames".into(), self.queued_frames as f64));
        f.push(("max_queued_frames".into(), self.max_queued_frames as f64));
        f.push(("max_peak_frames".into(), self.max_peak_frames as f64));
        if let Some(j) = self.journal_bytes {
            f.push(("journal_bytes".into(), j as f64));
        }
        let l = &self.load;
        for (k, v) in [
            ("panel_connects", l.connects),
            ("panel_closed", l.closed),
            ("panel_vanished", l.vanished),
            ("wifi_cuts", l.cuts),
            ("resumed", l.resumed),
            ("new_sessions", l.new_sessions),
            ("sets_ok", l.sets_ok),
            ("sets_failed", l.sets_failed),
            ("pubs_acked", l.pubs_acked),
            ("pubs_failed", l.pubs_failed),
            ("telemetry_values", l.telemetry_values),
            ("device_faults", l.device_faults),
        ] {
            f.push((k.into(), v as f64));
        }
        f
    }

    /// `SOAK sample label=… t_s=… rss_kib=… …`.
    pub fn line(&self) -> String {
        let label = if self.label.is_empty() {
            "sample"
        } else {
            &self.label
        };
        let mut s = format!("SOAK sample label={label}");
        for (k, v) in self.figures() {
            let _ = write!(s, " {k}={}", fmt_num(v));
        }
        s
    }
}

/// The header of the table of samples.
pub fn table_header() -> String {
    format!(
        "{:>7} {:>8} {:>5} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6} {:>5} {:>5} {:>4} {:>8} {:>7} {:>6} {:>6} {:>6} {:>9}",
        "t(s)", "rss(MiB)", "fds", "conns", "sess", "subs", "topics", "replay", "queued",
        "q_peak", "dropped", "confl", "gaps", "resyn", "pend", "tele_out", "sets", "pubs",
        "drops", "resume", "jrnl(KiB)"
    )
}

/// One row of the table of samples.
pub fn table_row(s: &Sample) -> String {
    let l = &s.load;
    format!(
        "{:>7} {:>8.1} {:>5} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6} {:>5} {:>5} {:>4} {:>8} {:>7} {:>6} {:>6} {:>6} {:>9}",
        if s.label.is_empty() { format!("{:.0}", s.t_s) } else { s.label.clone() },
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.sys("connections"),
        s.sys("sessions"),
        s.sys("subscriptions"),
        s.sys("topics"),
        s.sys("replay_entries"),
        s.queued_frames,
        s.max_peak_frames,
        s.sys("dropped"),
        s.sys("conflated"),
        s.sys("gaps"),
        s.sys("resyncs"),
        s.sys("commands_pending"),
        s.sys("telemetry/datagrams_out"),
        l.sets_ok + l.sets_failed,
        l.pubs_acked + l.pubs_failed,
        l.closed + l.vanished + l.cuts,
        l.resumed,
        s.journal_bytes
            .map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / 1024.0)),
    )
}

/// One check of the end state.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &'static str, pass: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            pass,
            detail: detail.into(),
        }
    }

    /// `SOAK check name=… result=pass|FAIL detail="…"`.
    pub fn line(&self) -> String {
        format!(
            "SOAK check name={} result={} detail={}",
            self.name,
            if self.pass { "pass" } else { "FAIL" },
            serde_json::Value::from(self.detail.as_str())
        )
    }
}
