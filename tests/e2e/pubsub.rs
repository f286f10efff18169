//! Snapshot-then-live, resume after a cut socket (replay and resync), over real TCP.

use std::collections::HashMap;

use avbus::client::{Client, SubEvent};
use avbus::protocol::Role;
use avbus::value::Value;

use crate::common::*;

const TOPICS: u64 = 50;

/// Publishes `n` updates round-robin over `prefix/t0..t{TOPICS}` with values
/// `start..start+n`, fire-and-forget, then one acknowledged publish so that the
/// caller knows the bus has taken them all (same connection, same order).
async fn publish_run(p: &Client, prefix: &str, start: u64, n: u64) {
    for i in start..start + n {
        let topic = format!("{prefix}/t{}", i % TOPICS);
        p.publish_nowait(&topic, Value::from(i), true)
            .await
            .expect("publish");
    }
    p.publish(&format!("{prefix}/done"), Value::from(start + n), true)
        .await
        .expect("final publish acknowledged");
}

/// Checks that per topic the values seen are exactly consecutive (step TOPICS):
/// no gap and no duplicate.
fn check_consecutive(seen: &HashMap<String, Vec<u64>>) {
    for (topic, values) in seen {
        for w in values.windows(2) {
            assert_eq!(w[1], w[0] + TOPICS, "{topic}: gap or duplicate in {w:?}");
        }
    }
}

/// A test configuration whose per-connection queues never overflow here (for tests
/// about order and seams, not the slow-consumer policy).
fn roomy_config() -> avbus::config::Config {
    let mut cfg = config();
    cfg.limits.outbox_frames = 1 << 20;
    cfg.limits.outbox_bytes = 1 << 30;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_without_gap_or_duplicate_under_load() {
    // Queues large enough that the slow-consumer policy never engages here: this test
    // is about the seam between snapshot and live stream (a debug-build reader may
    // fall behind a full-speed publisher; `slow.rs` covers that policy).
    let bus = bus(roomy_config()).await;
    let publisher = client(&bus, "publisher", Role::Tool).await;
    // Seed every topic, so the snapshot holds all of them.
    publish_run(&publisher, "load", 0, TOPICS).await;
    let total: u64 = 30_000;
    let p = publisher.clone();
    let load = tokio::spawn(async move { publish_run(&p, "load", TOPICS, total).await });

    // Subscribe while the publisher is busy (with a client queue large enough that a
    // debug-build reader never lags behind its own driver).
    let mut o = opts(&bus.tcp.to_string(), "panel", Role::Panel);
    o.sub_queue = 1 << 20;
    let panel = Client::connect(o).await.unwrap();
    let mut sub = panel.subscribe(&["load/#"]).await.expect("subscribe");
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let snap = snapshot(&mut sub).await;
    assert!(
        snap.len() as u64 >= TOPICS,
        "snapshot holds every retained topic"
    );
    let mut last_seq = 0;
    for u in &snap {
        if u.topic != "load/done" {
            seen.entry(u.topic.clone())
                .or_default()
                .push(u.value.as_u64().unwrap());
        }
    }
    // Live: until the final marker arrives.
    let end = TOPICS + total;
    loop {
        let u = match next(&mut sub).await {
            SubEvent::Update(u) => u,
            other => panic!("unexpected {other:?} in the live stream"),
        };
        assert!(u.seq.0 > last_seq, "live sequence increases");
        last_seq = u.seq.0;
        if u.topic == "load/done" {
            if u.value.as_u64() == Some(end) {
                break;
            }
            continue;
        }
        seen.entry(u.topic.clone())
            .or_default()
            .push(u.value.as_u64().unwrap());
    }
    within("the publisher", load).await.unwrap();
    check_consecutive(&seen);
    for (topic, values) in &seen {
        let last = *values.last().unwrap();
        assert!(
            last >= end - TOPICS,
            "{topic} ends at its final value, got {last}"
        );
    }
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_what_was_missed() {
    let bus = bus(roomy_config()).await;
    let proxy = Proxy::start(bus.tcp).await;
    let publisher = client(&bus, "publisher", Role::Tool).await;
    publish_run(&publisher, "r", 0, TOPICS).await;

    let mut o = opts(&proxy.addr.to_string(), "panel", Role::Panel);
    o.sub_queue = 1 << 20;
    let panel = Client::connect(o).await.unwrap();
    let mut events = panel.events();
    let mut sub = panel.subscribe(&["r/#"]).await.unwrap();
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for u in snapshot(&mut sub).await {
        if u.topic != "r/done" {
            seen.entry(u.topic.clone())
                .or_default()
                .push(u.value.as_u64().unwrap());
        }
    }
    let session = panel.session();

    // Cut the link mid-stream, keep it down while the publisher goes on.
    let p = publisher.clone();
    let load = tokio::spawn(async move { publish_run(&p, "r", TOPICS, 5_000).await });
    proxy.set_down(true);
    proxy.cut();
    disconnected(&mut events).await;
    within("the publisher", load).await.unwrap();
    proxy.set_down(false);

    let end = TOPICS + 5_000;
    let mut markers = Vec::new();
    loop {
        match next(&mut sub).await {
            SubEvent::Update(u) if u.topic == "r/done" => {
                if u.value.as_u64() == Some(end) {
                    break;
                }
            }
            SubEvent::Update(u) => seen
                .entry(u.topic.clone())
                .or_default()
                .push(u.value.as_u64().unwrap()),
            other => markers.push(other),
        }
    }
    assert_eq!(panel.session(), session, "the session was resumed");
    assert!(
        !markers
            .iter()
            .any(|m| matches!(m, SubEvent::Resync | SubEvent::Gap { .. })),
        "a covered gap is replayed, not resynced: {markers:?}"
    );
    check_consecutive(&seen);
    for values in seen.values() {
        assert!(*values.last().unwrap() >= end - TOPICS);
    }
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_the_log_resyncs_to_the_true_state() {
    let mut cfg = config();
    cfg.limits.replay_entries = 100;
    let bus = bus(cfg).await;
    let proxy = Proxy::start(bus.tcp).await;
    let publisher = client(&bus, "publisher", Role::Tool).await;
    publish_run(&publisher, "s", 0, TOPICS).await;
    publisher
        .publish("s/gone", Value::from("bye"), true)
        .await
        .unwrap();

    let panel = Client::connect(opts(&proxy.addr.to_string(), "panel", Role::Panel))
        .await
        .unwrap();
    let mut events = panel.events();
    let mut sub = panel.subscribe(&["s/#"]).await.unwrap();
    let mut state: HashMap<String, Value> = HashMap::new();
    for u in snapshot(&mut sub).await {
        state.insert(u.topic, u.value);
    }
    assert!(state.contains_key("s/gone"));

    proxy.set_down(true);
    proxy.cut();
    disconnected(&mut events).await;
    // Far more than the log holds, and one topic deleted.
    publish_run(&publisher, "s", TOPICS, 2_000).await;
    publisher.publish("s/gone", Value::Nil, true).await.unwrap();
    let end = TOPICS + 2_000;
    publisher
        .publish("s/done", Value::from(end + 1), true)
        .await
        .unwrap();
    proxy.set_down(false);

    // Apply everything until the snapshot that follows the resync is complete.
    let mut resynced = false;
    loop {
        match next(&mut sub).await {
            SubEvent::Resync => {
                resynced = true;
                state.clear();
            }
            SubEvent::Update(u) => {
                if u.value.is_nil() {
                    state.remove(&u.topic);
                } else {
                    state.insert(u.topic, u.value);
                }
            }
            SubEvent::Synced { .. } if resynced => break,
            _ => {}
        }
    }
    assert_eq!(state.get("s/done"), Some(&Value::from(end + 1)));
    assert!(resynced, "the panel was told it is resynced");
    assert!(
        !state.contains_key("s/gone"),
        "a topic deleted while away is gone"
    );
    for i in 0..TOPICS {
        let want = (TOPICS..end).filter(|v| v % TOPICS == i).max().unwrap();
        assert_eq!(state.get(&format!("s/t{i}")), Some(&Value::from(want)));
    }
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_not_retained_and_wildcards_skip_dollar_topics() {
    let bus = bus(config()).await;
    let tool = client(&bus, "tool", Role::Tool).await;
    tool.publish("ev/button", Value::from("pressed"), false)
        .await
        .unwrap();
    let panel = client(&bus, "panel", Role::Panel).await;
    let mut sub = panel.subscribe(&["#"]).await.unwrap();
    let snap = snapshot(&mut sub).await;
    assert!(
        snap.iter().all(|u| !u.topic.starts_with('$')),
        "# never matches $ topics"
    );
    assert!(
        snap.iter().all(|u| u.topic != "ev/button"),
        "events are not retained"
    );
    tool.publish("ev/button", Value::from("released"), false)
        .await
        .unwrap();
    let u = until(&mut sub, |u| u.topic == "ev/button").await;
    assert!(!u.retain);
    assert_eq!(u.value, Value::from("released"));
    assert_eq!(panel.get("ev/button").await.unwrap(), None);
    // `a/#` matches `a` itself, in the snapshot as live.
    tool.publish("ev", Value::from(1), true).await.unwrap();
    let mut parent = panel.subscribe(&["ev/#"]).await.unwrap();
    let snap = snapshot(&mut parent).await;
    assert!(snap.iter().any(|u| u.topic == "ev"), "{snap:?}");
    // `$` topics are the bus's: a client may not publish them.
    let err = tool
        .publish("$sys/fake", Value::from(1), true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(avbus::protocol::ErrorCode::Forbidden));
    let err = tool
        .publish("bad topic", Value::from(1), true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(avbus::protocol::ErrorCode::InvalidTopic));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_every_queue_arrives_whole() {
    // More retained topics than the client's per-subscription queue (4096) and the
    // bus's per-connection queue (1000 here) hold: the snapshot streams through both.
    const N: u64 = 20_000;
    let mut cfg = config();
    cfg.limits.outbox_frames = 1_000;
    let bus = bus(cfg).await;
    let publisher = client(&bus, "publisher", Role::Tool).await;
    for i in 0..N {
        publisher
            .publish_nowait(&format!("big/{}/{}", i % 100, i), Value::from(i), true)
            .await
            .unwrap();
    }
    publisher
        .publish("big/last", Value::from(N), true)
        .await
        .unwrap();
    let panel = client(&bus, "panel", Role::Panel).await;
    let mut sub = panel.subscribe(&["big/#"]).await.unwrap();
    // Not reading the subscription does not hold up the rest of the client.
    within("a ping while the subscription is unread", panel.ping())
        .await
        .unwrap();
    // The subscription overflowed its queue meanwhile: once drained it reports the
    // loss and resyncs; what it holds at the end is complete.
    let mut held: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    let mut lagged = false;
    loop {
        match next(&mut sub).await {
            SubEvent::Update(u) => {
                held.insert(u.topic, u.value);
            }
            SubEvent::Gap { dropped, .. } => {
                assert!(dropped > 0);
                lagged = true;
            }
            SubEvent::Resync => held.clear(),
            SubEvent::Synced { .. } => {
                if held.len() as u64 == N + 1 {
                    break;
                }
            }
        }
    }
    assert!(
        lagged,
        "20 000 updates overflowed a 4096-event queue that was not read"
    );
    assert_eq!(held.get("big/last"), Some(&Value::from(N)));
    bus.shutdown().await;
}

/// A client's frames reach the bus in the order of its calls, whichever way each
/// leaves it: encoded by the caller into the driver's outgoing buffer (`publish_nowait`,
/// alone or in a burst), or through the driver's request queue (acknowledged
/// publishes, the publishes right behind them, and whatever follows a full buffer:
/// 4 MiB values). Every value is one more than the previous on one topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_publishes_arrive_in_call_order_on_every_path() {
    let mut cfg = roomy_config();
    cfg.limits.max_frame_bytes = 8 << 20;
    let bus = bus(cfg).await;
    let publisher = client(&bus, "ordered-publisher", Role::Tool).await;
    let mut o = opts(&bus.tcp.to_string(), "ordered-panel", Role::Panel);
    o.sub_queue = 1 << 20;
    o.max_frame = 8 << 20;
    let panel = Client::connect(o).await.unwrap();
    let mut sub = panel.subscribe(&["order/#"]).await.expect("subscribe");
    assert!(matches!(next(&mut sub).await, SubEvent::Synced { .. }));

    // 4 MiB values: more than the outgoing buffer holds.
    let big = vec![7u8; 4 << 20];
    let p = publisher.clone();
    let sent = tokio::spawn(async move {
        let mut n = 0u64;
        for round in 0..60u64 {
            match round % 4 {
                // One publish with no other behind it: a round trip to the bus (its
                // answer is the event waited for) before the next round.
                0 => {
                    n += 1;
                    p.publish_nowait("order/n", Value::from(n), false)
                        .await
                        .unwrap();
                    within("a round trip to the bus", p.ping()).await.unwrap();
                }
                // A burst: one write of the driver's for many frames.
                1 => {
                    for _ in 0..500 {
                        n += 1;
                        p.publish_nowait("order/n", Value::from(n), false)
                            .await
                            .unwrap();
                    }
                }
                // Acknowledged publishes interleaved with fire-and-forget ones.
                2 => {
                    for i in 0..20 {
                        n += 1;
                        if i % 3 == 0 {
                            p.publish("order/n", Value::from(n), false).await.unwrap();
                        } else {
                            p.publish_nowait("order/n", Value::from(n), false)
                                .await
                                .unwrap();
                        }
                    }
                }
                // Large values (each fills the outgoing buffer), small ones right
                // behind them.
                _ => {
                    for _ in 0..2 {
                        n += 1;
                        let v = Value::Array(vec![Value::from(n), Value::Binary(big.clone())]);
                        p.publish_nowait("order/n", v, false).await.unwrap();
                        n += 1;
                        p.publish_nowait("order/n", Value::from(n), false)
                            .await
                            .unwrap();
                        p.ping().await.unwrap();
                    }
                }
            }
        }
        n
    });
    let mut last = 0u64;
    let mut seen = 0u64;
    loop {
        let u = next_update(&mut sub).await;
        let n = match &u.value {
            Value::Array(a) => a[0].as_u64(),
            v => v.as_u64(),
        }
        .expect("a counter");
        assert_eq!(n, last + 1, "frames out of call order");
        last = n;
        seen += 1;
        if seen == 60 / 4 * (1 + 500 + 20 + 4) {
            break;
        }
    }
    assert_eq!(sent.await.unwrap(), last);
}

/// While other clients' snapshots hold the router's lock, a publisher's frames are
/// queued through the router's channel instead of waiting for it, and its later
/// frames follow them there until they are applied: a subscriber still sees every
/// value, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_keep_their_order_while_snapshots_hold_the_router() {
    let bus = bus(roomy_config()).await;
    let seeder = client(&bus, "seeder", Role::Tool).await;
    for i in 0..20_000u64 {
        seeder
            .publish_nowait(&format!("big/t{i}"), Value::from(i), true)
            .await
            .unwrap();
    }
    seeder
        .publish("big/done", Value::from(1), true)
        .await
        .unwrap();

    let mut o = opts(&bus.tcp.to_string(), "order-panel", Role::Panel);
    o.sub_queue = 1 << 20;
    let panel = Client::connect(o).await.unwrap();
    let mut sub = panel.subscribe(&["seq/n"]).await.expect("subscribe");
    assert!(matches!(next(&mut sub).await, SubEvent::Synced { .. }));

    // Snapshots of 20,000 topics, one after another, each under the lock.
    let mut o = opts(&bus.tcp.to_string(), "snapshotter", Role::Panel);
    o.sub_queue = 1 << 20;
    let snapshotter = Client::connect(o).await.unwrap();
    use std::sync::atomic::{AtomicU32, Ordering};
    let taken = std::sync::Arc::new(AtomicU32::new(0));
    let count = taken.clone();
    let snapshots = tokio::spawn(async move {
        loop {
            let mut s = snapshotter.subscribe(&["big/#"]).await.expect("subscribe");
            while !matches!(next(&mut s).await, SubEvent::Synced { .. }) {}
            count.fetch_add(1, Ordering::Relaxed);
        }
    });

    // Paced by round trips to the bus, so that its frames keep arriving while
    // snapshots are taken: at least 3,000 values, and on until 10 snapshots are done
    // (at most 100,000).
    let publisher = client(&bus, "seq-publisher", Role::Tool).await;
    let mut n = 0u64;
    while n < 100_000 && (n < 3_000 || taken.load(Ordering::Relaxed) < 10) {
        n += 1;
        publisher
            .publish_nowait("seq/n", Value::from(n), false)
            .await
            .unwrap();
        if n.is_multiple_of(10) {
            publisher.ping().await.unwrap();
        }
    }
    for expected in 1..=n {
        let u = next_update(&mut sub).await;
        assert_eq!(u.value.as_u64(), Some(expected), "out of order or missing");
    }
    snapshots.abort();
    assert!(
        taken.load(Ordering::Relaxed) >= 10,
        "no snapshot was taken meanwhile"
    );
}
