//! Retained state across restarts: the journal (`[persist]`) restores what clients
//! published, a client resumes onto it, acknowledged publishes survive SIGKILL, and a
//! corrupt tail is cut off and reported.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use avbus::bus::journal::{Journal, JournalError, FILE};
use avbus::client::{Client, SubEvent};
use avbus::config::{Config, FsyncPolicy};
use avbus::protocol::Role;
use avbus::value::Value;

use crate::common::*;

fn persist(dir: &Path, fsync: FsyncPolicy) -> Config {
    let mut cfg = config();
    cfg.persist.dir = Some(dir.to_owned());
    cfg.persist.fsync = fsync;
    cfg.sys.interval_ms = 20;
    cfg
}

/// What a fresh client reads for `filter`: topic → (value, time).
async fn state(addr: &str, filter: &str) -> BTreeMap<String, (Value, u64)> {
    let c = Client::connect(opts(addr, "reader", Role::Panel))
        .await
        .expect("reader connects");
    let mut sub = c.subscribe(&[filter]).await.expect("subscribe");
    let out = snapshot(&mut sub)
        .await
        .into_iter()
        .map(|u| (u.topic, (u.value, u.time)))
        .collect();
    c.close().await;
    out
}

fn values(s: &BTreeMap<String, (Value, u64)>) -> BTreeMap<String, Value> {
    s.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
}

#[tokio::test]
async fn retained_state_survives_a_restart() {
    let dir = TempDir::new("journal");
    let cfg = persist(dir.path(), FsyncPolicy::Interval);
    let bus1 = bus(cfg.clone()).await;
    let addr = bus1.tcp.to_string();
    let c = client(&bus1, "script", Role::Panel).await;
    for (t, v) in [
        ("hall/scene", "movie"),
        ("hall/mode", "lecture"),
        ("hall/mode", "exam"),
        ("hall/gone", "soon"),
    ] {
        c.publish(t, Value::from(v), true).await.expect("publish");
    }
    c.publish("hall/gone", Value::Nil, true)
        .await
        .expect("delete");
    c.publish("hall/event", Value::from(1), false)
        .await
        .expect("event");
    // A device's control state is its adapter's to re-assert, not the journal's.
    let (_adapter, _seen) = lab_adapter(&bus1).await;
    let before = state(&addr, "hall/#").await;
    assert!(!state(&addr, "lab/#").await.is_empty());
    let epoch = bus1.epoch;
    bus1.shutdown().await;

    let bus2 = bus(cfg).await;
    assert_ne!(bus2.epoch, epoch, "a restart takes a new epoch");
    let addr = bus2.tcp.to_string();
    let after = state(&addr, "hall/#").await;
    assert_eq!(after, before, "values and their times restored");
    assert_eq!(
        values(&after),
        BTreeMap::from([
            ("hall/mode".to_owned(), Value::from("exam")),
            ("hall/scene".to_owned(), Value::from("movie")),
        ])
    );
    assert!(state(&addr, "lab/#").await.is_empty());
    let c = client(&bus2, "check", Role::Panel).await;
    let topics = c.get("$sys/persist/recovered_topics").await.expect("get");
    assert_eq!(topics.map(|u| u.value), Some(Value::from(2u64)));
    bus2.shutdown().await;
}

#[tokio::test]
async fn a_panel_resumes_onto_the_restored_state() {
    let dir = TempDir::new("journal");
    let mut cfg = persist(dir.path(), FsyncPolicy::Always);
    let bus1 = bus(cfg.clone()).await;
    let addr = bus1.tcp.to_string();
    let script = client(&bus1, "script", Role::Panel).await;
    script
        .publish("room/scene", Value::from("day"), true)
        .await
        .expect("publish");
    let panel = client(&bus1, "panel", Role::Panel).await;
    let mut sub = panel.subscribe(&["room/#"]).await.expect("subscribe");
    let mut view = BTreeMap::new();
    for u in snapshot(&mut sub).await {
        view.insert(u.topic, u.value);
    }
    script
        .publish("room/scene", Value::from("night"), true)
        .await
        .expect("publish");
    let u = next_update(&mut sub).await;
    view.insert(u.topic, u.value);
    script.close().await;
    bus1.shutdown().await;

    // The same address, a new epoch: the panel's resume fails and it resyncs onto
    // what the journal restored, then follows live changes.
    cfg.listen
        .set_tcp(addr.parse::<SocketAddr>().expect("addr"));
    let bus2 = bus(cfg).await;
    let mut resynced = false;
    loop {
        match next(&mut sub).await {
            SubEvent::Resync => {
                resynced = true;
                view.clear();
            }
            SubEvent::Update(u) => {
                view.insert(u.topic, u.value);
            }
            SubEvent::Synced { .. } => break,
            SubEvent::Gap { .. } => panic!("unexpected gap"),
        }
    }
    assert!(resynced, "an old epoch means a fresh snapshot");
    assert_eq!(view.get("room/scene"), Some(&Value::from("night")));
    let script = client(&bus2, "script", Role::Panel).await;
    script
        .publish("room/lights", Value::from(40), true)
        .await
        .expect("publish");
    let u = next_update(&mut sub).await;
    view.insert(u.topic, u.value);
    assert_eq!(values(&state(&addr, "room/#").await), view);
    bus2.shutdown().await;
}

/// `avbus serve` as a child process, with its TCP address from the ready line.
fn serve(config: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_avbus"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("avbus serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("ready json");
    let tcp = ready["ready"]["tcp"].as_str().expect("tcp").to_owned();
    (child, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_sigkill() {
    let dir = TempDir::new("journal");
    let config = dir.path().join("bus.toml");
    std::fs::write(
        &config,
        "[listen]\ntcp = \"127.0.0.1:0\"\nhttp = \"off\"\n\
         [persist]\ndir = \"data\"\nfsync = \"always\"\n",
    )
    .expect("config");
    let (mut child, addr) = serve(&config);
    // Eight publishers, each with a publish in flight at all times, counting up on
    // their own topics; the bus is killed once 2,000 are acknowledged.
    let acked = Arc::new(std::sync::Mutex::new(BTreeMap::<String, i64>::new()));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for p in 0..8 {
        let mut o = opts(&addr, &format!("writer{p}"), Role::Panel);
        o = o.reconnect(false);
        let c = Client::connect(o).await.expect("connect");
        let (acked, total, enough) = (acked.clone(), total.clone(), enough.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0i64.. {
                let topic = format!("k/{p}/{}", i % 5);
                if c.publish(&topic, Value::from(i), true).await.is_err() {
                    return;
                }
                acked.lock().expect("lock").insert(topic, i);
                if total.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 2_000 {
                    enough.notify_one();
                }
            }
        }));
    }
    within("2,000 acknowledged publishes", enough.notified()).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for t in tasks {
        within("publishers stop", t).await.expect("publisher task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), 40);

    let (mut child, addr) = serve(&config);
    let restored = state(&addr, "k/#").await;
    child.kill().expect("kill");
    child.wait().expect("reaped");
    for (topic, last_acked) in &acked {
        let (value, _) = restored
            .get(topic)
            .unwrap_or_else(|| panic!("{topic} lost"));
        let v = value.as_i64().expect("integer");
        // The value acknowledged last, or one published after it whose record made
        // it to disk before the kill (never an older one).
        assert!(
            v >= *last_acked,
            "{topic}: restored {v} < acknowledged {last_acked}"
        );
    }
}

fn journal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(FILE)).expect("journal").len()
}

#[tokio::test]
async fn a_corrupt_tail_is_cut_off_saved_and_reported() {
    let dir = TempDir::new("journal");
    let cfg = persist(dir.path(), FsyncPolicy::Always);
    let bus1 = bus(cfg.clone()).await;
    let c = client(&bus1, "script", Role::Panel).await;
    for i in 0..10 {
        c.publish(&format!("t/{i}"), Value::from(i), true)
            .await
            .expect("publish");
    }
    let good = journal_len(dir.path());
    c.publish("t/last", Value::from("x"), true)
        .await
        .expect("publish");
    bus1.shutdown().await;
    // The last record's final byte flipped, and a torn half-record after it.
    let path = dir.path().join(FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    *bytes.last_mut().expect("not empty") ^= 0xff;
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
    let bad = bytes.len() as u64;
    std::fs::write(&path, &bytes).expect("write");

    let bus2 = bus(cfg.clone()).await;
    let addr = bus2.tcp.to_string();
    let s = state(&addr, "t/#").await;
    assert_eq!(s.len(), 10, "the ten good records, not the corrupt one");
    assert!(!s.contains_key("t/last"));
    assert_eq!(journal_len(dir.path()), good, "cut at the last good record");
    let saved: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt-"))
        .collect();
    assert_eq!(saved.len(), 1);
    assert_eq!(
        saved[0].metadata().expect("meta").len(),
        bad - good,
        "the bad tail is kept for inspection"
    );
    let c = client(&bus2, "check", Role::Panel).await;
    let dropped = c.get("$sys/persist/corrupt_tail_bytes").await.expect("get");
    assert_eq!(dropped.map(|u| u.value), Some(Value::from(bad - good)));
    // Appending goes on after the cut, and the next start is clean.
    c.publish("t/last", Value::from("y"), true)
        .await
        .expect("publish");
    bus2.shutdown().await;
    let bus3 = bus(cfg).await;
    let s = state(&bus3.tcp.to_string(), "t/#").await;
    assert_eq!(s.len(), 11);
    assert_eq!(s["t/last"].0, Value::from("y"));
    bus3.shutdown().await;
}

#[tokio::test]
async fn two_buses_cannot_share_a_journal() {
    let dir = TempDir::new("journal");
    let cfg = persist(dir.path(), FsyncPolicy::Interval);
    let bus1 = bus(cfg.clone()).await;
    let second = avbus::bus::start(cfg).await;
    let err = second.err().expect("the second bus refuses to start");
    assert!(err.to_string().contains("in use"), "{err}");
    bus1.shutdown().await;
}

#[tokio::test]
async fn compaction_keeps_only_live_topics() {
    let dir = TempDir::new("journal");
    let mut cfg = persist(dir.path(), FsyncPolicy::Never);
    cfg.persist.compact_min_bytes = 4096;
    let bus1 = bus(cfg.clone()).await;
    let c = client(&bus1, "script", Role::Panel).await;
    let mut sub = c
        .subscribe(&["$sys/persist/compactions"])
        .await
        .expect("subscribe");
    for i in 0..1000i64 {
        c.publish(&format!("c/{}", i % 10), Value::from(i), true)
            .await
            .expect("publish");
    }
    until(&mut sub, |u| u.value.as_u64().is_some_and(|n| n >= 1)).await;
    bus1.shutdown().await;
    // Ten live records of about 20 bytes, whatever was written after the last
    // compaction; far below the 4 KiB threshold plus one batch.
    assert!(journal_len(dir.path()) < 4096 + 1024);
    let bus2 = bus(cfg).await;
    let s = values(&state(&bus2.tcp.to_string(), "c/#").await);
    let want: BTreeMap<String, Value> = (990..1000i64)
        .map(|i| (format!("c/{}", i % 10), Value::from(i)))
        .collect();
    assert_eq!(s, want);
    bus2.shutdown().await;
}

#[test]
fn a_journal_behind_the_disk_refuses_records() {
    let dir = TempDir::new("journal");
    let mut cfg = avbus::config::PersistConfig {
        max_pending_bytes: 64,
        ..Default::default()
    };
    cfg.dir = Some(dir.path().to_owned());
    let (mut j, restored, _) = Journal::open(&cfg, dir.path(), 1 << 20).expect("open");
    assert!(restored.is_empty());
    let topic: Arc<str> = "a/b".into();
    let big = Value::from("x".repeat(100));
    j.append(&topic, &big, 1, None)
        .expect("the first record fits");
    match j.append(&topic, &big, 2, None) {
        Err(JournalError::Behind(n)) => assert!(n >= 64),
        other => panic!("expected Behind, got {other:?}"),
    }
    j.flush();
    let durable = j.close();
    assert_eq!(durable, 1, "close syncs what was appended");
}
