//! A client that never reads, bad input of every kind, handshake and heartbeat
//! deadlines, the `serve` binary and its config errors — over real TCP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use avbus::client::{Client, ClientOptions, ConnectionEvent, SubEvent};
use avbus::protocol::{BusMsg, ClientMsg, ErrorCode, Role};
use avbus::value::{to_json, Value};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stays_within_its_bound() {
    const N: u64 = 100_000;
    const TOPICS: u64 = 1_000;
    let mut cfg = config();
    cfg.limits.outbox_frames = 1_000;
    cfg.limits.outbox_bytes = 256 * 1024;
    cfg.sys.interval_ms = 20;
    let bus = bus(cfg).await;

    // The stalled client: subscribes, then never reads again.
    let mut stalled = Raw::connect(bus.tcp).await;
    let (stalled_session, ..) = stalled.hello("stalled", None).await;
    stalled
        .send(&ClientMsg::Sub {
            id: 1,
            filters: vec!["flood/#".into()],
        })
        .await;
    stalled
        .recv_until(|m| matches!(m, BusMsg::Synced { id: 1, .. }))
        .await;

    // A reader that must get every update, in order.
    let mut o = opts(&bus.tcp.to_string(), "reader", Role::Panel);
    o.sub_queue = 1 << 20;
    let reader = Client::connect(o).await.unwrap();
    let mut sub = reader.subscribe(&["flood/#"]).await.unwrap();
    snapshot(&mut sub).await;
    // The bus's own queue metric for the stalled client.
    let monitor = client(&bus, "monitor", Role::Tool).await;
    let mut queue = monitor
        .subscribe(&[&format!("$sys/queues/{stalled_session}")])
        .await
        .unwrap();

    // The publisher keeps at most ~1000 unacknowledged: one acked publish per 1000.
    let publisher = client(&bus, "publisher", Role::Tool).await;
    let pub_task = tokio::spawn(async move {
        for i in 0..N {
            let topic = format!("flood/t{}", i % TOPICS);
            if i % 1000 == 999 {
                publisher
                    .publish(&topic, Value::from(i), true)
                    .await
                    .unwrap();
            } else {
                publisher
                    .publish_nowait(&topic, Value::from(i), true)
                    .await
                    .unwrap();
            }
        }
    });
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut got = 0u64;
    while got < N {
        let u = match next(&mut sub).await {
            SubEvent::Update(u) => u,
            other => panic!("the reading client must see no {other:?}"),
        };
        let v = u.value.as_u64().unwrap();
        if let Some(prev) = last.insert(u.topic.clone(), v) {
            assert_eq!(v, prev + TOPICS, "{}: in order, nothing missing", u.topic);
        }
        got += 1;
    }
    within("the publisher", pub_task).await.unwrap();

    // Every queue report for the stalled client stayed within the configured bound,
    // and the slow-consumer policy did engage.
    let (peak_frames, peak_bytes, conflated, limit) = loop {
        let u = next_update(&mut queue).await;
        let j = to_json(&u.value);
        let n = |k: &str| j[k].as_u64().unwrap();
        let limit = (n("limit_frames"), n("limit_bytes"));
        assert!(n("frames") <= limit.0, "queued frames within bound: {j}");
        if n("conflated") > 0 && n("frames") == limit.0 {
            break (n("peak_frames"), n("peak_bytes"), n("conflated"), limit);
        }
    };
    assert!(
        peak_frames <= limit.0,
        "peak {peak_frames} frames > bound {}",
        limit.0
    );
    assert!(
        peak_bytes <= limit.1 + 1024,
        "peak {peak_bytes} bytes > bound {}",
        limit.1
    );
    assert!(conflated > 0, "state updates were conflated");
    drop(stalled);
    bus.shutdown().await;
}

async fn expect_error_then_close(raw: &mut Raw, code: ErrorCode) -> String {
    let msgs = raw.until_closed().await;
    match msgs.iter().find(|m| matches!(m, BusMsg::Error { .. })) {
        Some(BusMsg::Error {
            code: c,
            message,
            id: None,
        }) => {
            assert_eq!(*c, code, "{message}");
            message.clone()
        }
        other => panic!("expected error {code}, got {other:?} in {msgs:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_typed_error_and_harms_nobody_else() {
    let mut cfg = config();
    cfg.session.handshake_ms = 300;
    let bus = bus(cfg).await;
    let good = client(&bus, "good", Role::Tool).await;
    let mut sub = good.subscribe(&["ok/#"]).await.unwrap();
    snapshot(&mut sub).await;

    // Random bytes as the first frame.
    let mut raw = Raw::connect(bus.tcp).await;
    raw.send_raw(&[0, 0, 0, 5, 0xc1, 0xff, 0x00, 0x13, 0x37])
        .await;
    expect_error_then_close(&mut raw, ErrorCode::BadFrame).await;
    // A length prefix larger than the limit.
    let mut raw = Raw::connect(bus.tcp).await;
    raw.send_raw(&(2u32 << 20).to_be_bytes()).await;
    raw.send_raw(&[0u8; 1024]).await;
    expect_error_then_close(&mut raw, ErrorCode::FrameTooLarge).await;
    // A first frame that is not hello.
    let mut raw = Raw::connect(bus.tcp).await;
    raw.send(&ClientMsg::Ping { n: 1 }).await;
    expect_error_then_close(&mut raw, ErrorCode::Unexpected).await;
    // A different protocol version: the message names both.
    let mut raw = Raw::connect(bus.tcp).await;
    raw.send(&ClientMsg::Hello {
        v: 99,
        name: "future".into(),
        role: Role::Panel,
        credentials: Value::Nil,
        resume: None,
    })
    .await;
    let msg = expect_error_then_close(&mut raw, ErrorCode::VersionMismatch).await;
    assert!(msg.contains("99") && msg.contains('1'), "{msg}");
    // Silence: handshake deadline.
    let mut raw = Raw::connect(bus.tcp).await;
    expect_error_then_close(&mut raw, ErrorCode::HandshakeTimeout).await;
    // After hello: an unknown message.
    let mut raw = Raw::connect(bus.tcp).await;
    raw.hello("x", None).await;
    let unknown = rmp_serde::to_vec_named(&serde_json::json!({"t": "dance", "id": 1})).unwrap();
    send_body(&mut raw, &unknown).await;
    expect_error_then_close(&mut raw, ErrorCode::UnknownMessage).await;
    // After hello: a wrongly typed field.
    let mut raw = Raw::connect(bus.tcp).await;
    raw.hello("x", None).await;
    let wrong =
        rmp_serde::to_vec_named(&serde_json::json!({"t": "sub", "id": "one", "filters": ["a"]}))
            .unwrap();
    send_body(&mut raw, &wrong).await;
    expect_error_then_close(&mut raw, ErrorCode::BadMessage).await;
    // After hello: garbage.
    let mut raw = Raw::connect(bus.tcp).await;
    raw.hello("x", None).await;
    send_body(&mut raw, &[0x92, 0xc1]).await;
    expect_error_then_close(&mut raw, ErrorCode::BadFrame).await;
    // A bad filter is refused with an id, and the connection stays.
    let e = good.subscribe(&["a/#/b"]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidFilter));

    // The good client noticed nothing.
    good.publish("ok/still", Value::from(true), true)
        .await
        .unwrap();
    let u = until(&mut sub, |u| u.topic == "ok/still").await;
    assert_eq!(u.value, Value::Boolean(true));
    good.ping().await.unwrap();
    bus.shutdown().await;
}

async fn send_body(raw: &mut Raw, body: &[u8]) {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    raw.send_raw(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_after_its_heartbeats() {
    let mut cfg = config();
    cfg.session.heartbeat_ms = 100;
    cfg.session.heartbeat_misses = 3;
    let bus = bus(cfg).await;
    let mut raw = Raw::connect(bus.tcp).await;
    raw.hello("silent", None).await;
    let msgs = raw.until_closed().await;
    assert!(
        msgs.iter().any(|m| matches!(m, BusMsg::Ping { .. })),
        "the bus pinged first"
    );
    match msgs.last() {
        Some(BusMsg::Bye { reason, .. }) => assert_eq!(reason, "heartbeat_timeout"),
        other => panic!("expected bye, got {other:?}"),
    }
    // Not before its heartbeats: the bus pinged at each idle interval before giving
    // up after the third (counted, not timed).
    let pings = msgs
        .iter()
        .filter(|m| matches!(m, BusMsg::Ping { .. }))
        .count();
    assert!(pings >= 2, "pinged {pings} times before the bye");
    // A client that answers pings stays connected through many intervals.
    let c = client(&bus, "alive", Role::Panel).await;
    let mut events = c.events();
    for _ in 0..8 {
        c.ping().await.unwrap();
        let mut interval = tokio::time::interval(std::time::Duration::from_millis(100));
        interval.tick().await;
        interval.tick().await;
    }
    assert!(!matches!(
        events.try_recv(),
        Ok(ConnectionEvent::Disconnected { .. })
    ));
    bus.shutdown().await;
}

fn spawn_serve(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_avbus"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn avbus serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_ready_and_says_goodbye_on_sigterm() {
    let mut child = spawn_serve(&["--listen", "127.0.0.1:0"]);
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = within("the ready line", line).await.unwrap().unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    let addr = ready["ready"]["tcp"].as_str().unwrap().to_owned();
    let c = Client::connect(ClientOptions::tcp(&addr, "t").reconnect(false))
        .await
        .unwrap();
    let mut events = c.events();
    c.publish("x/y", Value::from(1), true).await.unwrap();
    assert_eq!(c.get("x/y").await.unwrap().unwrap().value, Value::from(1));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reason = disconnected(&mut events).await;
    assert!(reason.contains("shutdown"), "{reason}");
    let status = within("exit", tokio::task::spawn_blocking(move || child.wait()))
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_bad_config_fails_fast_naming_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("avbus-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        "[listen]\ntcp = \"127.0.0.1:0\"\n\n[limits]\noutbox_frame = 10\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_avbus"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("site.toml") && err.contains("line 5") && err.contains("outbox_frame"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no ready line");
    std::fs::remove_dir_all(&dir).ok();
}
