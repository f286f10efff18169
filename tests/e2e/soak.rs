//! `avbus soak`: a short real run (its own bus, simulators and panels as processes
//! and sockets) prints every sample and check and passes on a healthy bus; its
//! verdicts fail on what they exist to catch (a leaking memory series, a view that
//! lost a topic, an acknowledged publish the bus does not hold); bad arguments are
//! usage errors.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use avbus::protocol::{Seq, Update};
use avbus::soak::{judge_retained, rss_verdict, view_diff, Retained, TopicLedger, RSS_LIMIT_PCT};
use avbus::value::Value;

use crate::common::HEAVY;

const BIN: &str = env!("CARGO_BIN_EXE_avbus");
/// The longest the whole smoke run may take: its own bounds (setup, load, settling,
/// every panel's session grace) are far inside this.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Runs `avbus ARGS`, killing it past [`RUN_LIMIT`]; exit code and stdout.
fn avbus(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn avbus");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let Ok(out) = rx.recv_timeout(RUN_LIMIT) else {
        let _ = child.kill();
        panic!("avbus {args:?} still running after {RUN_LIMIT:?}");
    };
    let status = child.wait().expect("wait for avbus");
    (status.code(), out)
}

#[test]
fn a_short_soak_samples_the_bus_and_passes_every_check() {
    let _heavy = HEAVY.blocking_lock();
    let (code, out) = avbus(&[
        "soak",
        "--seconds",
        "5",
        "--panels",
        "20",
        "--devices",
        "4",
        "--seed",
        "7",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("seed 7, 20 panels, 4 switchers"), "{out}");
    // The samples: before the panels, after warm-up, in between, at the end with the
    // panels connected, and once they are all gone; each with the bus's figures.
    for label in ["base", "start", "sample", "end", "final"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("SOAK sample label={label} ")))
            .unwrap_or_else(|| panic!("no {label} sample in\n{out}"));
        for key in [
            "rss_kib=",
            "fds=",
            "connections=",
            "queued_frames=",
            "resyncs=",
        ] {
            assert!(line.contains(key), "{key} missing from {line}");
        }
    }
    let checks = [
        "commands",
        "views",
        "retained",
        "journal",
        "queues",
        "devices",
        "telemetry",
        "sessions",
        "fds",
        "memory",
    ];
    for name in checks {
        assert!(
            out.contains(&format!("SOAK check name={name} result=pass ")),
            "check {name} did not pass:\n{out}"
        );
    }
    assert!(out.contains("SOAK result=pass checks=10 failed=-"), "{out}");
    // The panels really did churn: connections beyond the 20 slots' first, and drops.
    let end = out
        .lines()
        .find(|l| l.starts_with("SOAK sample label=end "))
        .unwrap();
    let figure = |k: &str| -> u64 {
        let v = end
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")));
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {end}"))
    };
    assert!(figure("panel_connects") > 20, "{end}");
    assert!(
        figure("panel_closed") + figure("panel_vanished") > 0,
        "{end}"
    );
    assert!(
        figure("sets_ok") > 0 && figure("telemetry_values") > 0,
        "{end}"
    );
}

#[test]
fn the_memory_verdict_fails_a_steady_leak_and_passes_a_flat_or_spiky_series() {
    let leak: Vec<u64> = (0..30).map(|i| 100_000 + i * 1_000).collect();
    let v = rss_verdict(&leak, RSS_LIMIT_PCT);
    assert!(v.judged && !v.pass, "{v:?}");
    assert_eq!((v.first_kib, v.last_kib), (104_500, 124_500));
    assert!(v.growth_pct > RSS_LIMIT_PCT, "{v:?}");

    let flat = [100, 104, 99, 101, 103, 100, 102, 98, 101];
    let v = rss_verdict(&flat, RSS_LIMIT_PCT);
    assert!(v.judged && v.pass, "{v:?}");
    // One sample caught mid-burst decides nothing.
    let spiky = [100, 100, 100, 400, 100, 100, 100, 100, 100];
    assert!(rss_verdict(&spiky, RSS_LIMIT_PCT).pass);
    // Too short to judge: reported, not failed.
    let v = rss_verdict(&[100, 200, 400], RSS_LIMIT_PCT);
    assert!(!v.judged && v.pass && v.growth_pct == 300.0, "{v:?}");
}

fn record(topic: &str, seq: u64, value: Value) -> Update {
    Update {
        seq: Seq(seq),
        topic: topic.into(),
        value,
        time: 1,
        retain: true,
        quality: None,
        position: None,
        display: None,
        target: None,
        deadline: None,
    }
}

#[test]
fn a_view_that_lost_or_missed_an_update_differs_from_the_bus() {
    let bus: HashMap<String, Update> = [
        ("r/a".to_owned(), record("r/a", 1, Value::from(1))),
        ("r/b".to_owned(), record("r/b", 5, Value::from(2))),
    ]
    .into();
    assert_eq!(view_diff(&bus, &bus), None);
    let mut behind = bus.clone();
    behind.insert("r/b".into(), record("r/b", 3, Value::from(1)));
    let d = view_diff(&behind, &bus).expect("an old record differs");
    assert!(d.contains("1 different") && d.contains("r/b"), "{d}");
    let mut lost = bus.clone();
    lost.remove("r/a");
    assert!(view_diff(&lost, &bus).unwrap().starts_with("1 missing"));
    assert!(view_diff(&bus, &lost).unwrap().contains("1 extra"));
}

#[test]
fn an_acknowledged_publish_the_bus_does_not_hold_is_lost() {
    let v = |n: i64| Value::from(n);
    let t = TopicLedger {
        acked: Some((Seq(10), v(1))),
        unacked: vec![v(2)],
        unacked_lost: 0,
    };
    assert_eq!(
        judge_retained(&t, Some(&record("r/scene", 10, v(1)))),
        Retained::Exact
    );
    // A later publish whose answer was lost may have landed.
    assert_eq!(
        judge_retained(&t, Some(&record("r/scene", 12, v(2)))),
        Retained::Later
    );
    // An older value, an unknown one, or nothing: the acknowledged state is lost.
    for got in [
        Some(record("r/scene", 8, v(0))),
        Some(record("r/scene", 12, v(9))),
        None,
    ] {
        assert!(
            matches!(judge_retained(&t, got.as_ref()), Retained::Lost(_)),
            "{got:?}"
        );
    }
    // Only unanswered publishes, none applied: nothing to hold.
    let never = TopicLedger {
        acked: None,
        unacked: vec![v(2)],
        unacked_lost: 0,
    };
    assert_eq!(judge_retained(&never, None), Retained::Never);
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["soak", "--panels", "0"][..],
        &["soak", "--devices", "0", "--seconds", "5"],
        &["soak", "--seconds", "0"],
        &["soak", "--minutes", "1", "--seconds", "5"],
    ] {
        let (code, out) = avbus(args);
        assert_eq!(code, Some(2), "{args:?}: {out}");
    }
}
