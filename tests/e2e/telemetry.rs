//! Telemetry over UDP, end to end on loopback: rate-limited newest-value delivery,
//! slow panels, hostile datagrams, staleness, `get`, and in-process publishing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use avbus::bus::BusHandle;
use avbus::client::{Client, ClientOptions, TelemetrySubscription, TelemetryValue};
use avbus::model::{ControlKind, ControlSpec, DeviceDescriptor};
use avbus::protocol::{BusMsg, ClientMsg, Role};
use avbus::telemetry::{put_header, Kind, MAX_DATAGRAM};
use avbus::value::Value;
use bytes::BytesMut;
use tokio::net::UdpSocket;

use crate::common::{self, bus, client, config, opts, within, Raw};

const CHANNELS: u32 = 64;

fn mixer() -> DeviceDescriptor {
    let meter = |channels| ControlKind::Meter {
        min: 0.0,
        max: 1.0,
        unit: String::new(),
        channels,
        rate_hz: 50.0,
    };
    DeviceDescriptor {
        room: "hall".into(),
        name: "mix".into(),
        label: "Mixer".into(),
        class: "console".into(),
        driver: "test".into(),
        controls: vec![
            ControlSpec::new("meters", meter(CHANNELS)),
            ControlSpec::new("level", meter(1)),
            ControlSpec::new("power", ControlKind::Bool),
        ],
    }
}

fn frame_of(i: u32) -> Value {
    Value::Array(
        (0..CHANNELS)
            .map(|c| Value::F32((i * 100 + c) as f32))
            .collect(),
    )
}

fn first(v: &TelemetryValue) -> f64 {
    match &v.value {
        Value::Array(a) => a[0].as_f64().unwrap(),
        other => other.as_f64().unwrap(),
    }
}

async fn adapter(b: &BusHandle) -> Client {
    let a = client(b, "mixer-adapter", Role::Adapter).await;
    a.declare(mixer(), true).await.expect("declare");
    a
}

/// Reads until a value of `topic` satisfies `pred`; returns the values seen.
async fn until(
    sub: &mut TelemetrySubscription,
    topic: &str,
    mut pred: impl FnMut(&TelemetryValue) -> bool,
) -> Vec<TelemetryValue> {
    let mut seen = Vec::new();
    within(&format!("telemetry of {topic}"), async {
        loop {
            let v = sub.recv().await.expect("subscription open");
            if &*v.topic != topic {
                continue;
            }
            let done = pred(&v);
            seen.push(v);
            if done {
                return;
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn a_panel_gets_the_newest_values_at_its_rate_never_a_backlog() {
    let b = bus(config()).await;
    let a = adapter(&b).await;
    let panel = client(&b, "panel", Role::Panel).await;
    let mut sub = panel.telemetry("hall/+/meters", 20.0).await.expect("tsub");
    assert_eq!(sub.streams().len(), 1);
    assert_eq!(sub.streams()[0].topic, "hall/mix/meters");
    assert_eq!(sub.streams()[0].channels, CHANNELS);

    // The source runs at 50 Hz for 2 s; the panel asked for 20 Hz.
    let last = 99u32;
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..=last {
            tick.tick().await;
            a.publish_telemetry(vec![("hall/mix/meters".into(), frame_of(i))]);
        }
        a
    });
    let seen = until(&mut sub, "hall/mix/meters", |v| {
        first(v) == f64::from(last * 100)
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let _a = publisher.await.unwrap();

    // Ends on the newest value, with every channel.
    let newest = seen.last().unwrap();
    assert_eq!(newest.value, frame_of(last));
    assert!(!newest.stale);
    // At most the asked rate (plus generous slack for the first value and timer
    // jitter), and far fewer than the 100 values published.
    let allowed = (elapsed * 20.0).ceil() as usize + 3;
    assert!(
        seen.len() <= allowed,
        "{} values in {elapsed:.2} s at 20 Hz (allowed {allowed})",
        seen.len()
    );
    assert!(seen.len() < 90, "no conflation: {} values", seen.len());
    // Values arrive in order, and the skipped ones are counted.
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
    let st = sub.stats();
    eprintln!("{} values in {elapsed:.2}s: {st:?}", seen.len());
    let s = &st.streams["hall/mix/meters"];
    assert_eq!(s.received, seen.len() as u64);
    assert!(s.skipped > 0, "{st:?}");
    assert_eq!(st.datagrams_lost, 0);

    // The newest value is also readable over TCP.
    let got = panel
        .get("hall/mix/meters")
        .await
        .unwrap()
        .expect("a value");
    assert_eq!(got.value, frame_of(last));
}

#[tokio::test]
async fn a_panel_that_stops_reading_does_not_change_what_others_receive() {
    let b = bus(config()).await;
    let a = adapter(&b).await;
    // A raw panel binds a UDP socket, subscribes at the highest rate, then never
    // reads it: its kernel buffer fills, the bus's sends to it are dropped.
    let mut raw = Raw::connect(b.tcp).await;
    raw.send(&ClientMsg::Hello {
        v: avbus::protocol::PROTOCOL_VERSION,
        name: "stuck".into(),
        role: Role::Panel,
        credentials: Value::Nil,
        resume: None,
    })
    .await;
    let token = match raw.recv().await {
        Some(BusMsg::Welcome {
            token: Some(t),
            udp: Some(port),
            ..
        }) => {
            assert_eq!(port, b.udp.port());
            t
        }
        other => panic!("expected welcome with a token, got {other:?}"),
    };
    let stuck = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stuck.set_broadcast(false).unwrap();
    bind(&stuck, b.udp, token).await;
    raw.send(&ClientMsg::Tsub {
        id: 1,
        filter: "#".into(),
        hz: 1000.0,
    })
    .await;
    raw.recv_until(|m| matches!(m, BusMsg::Ok { id: 1, .. }))
        .await;

    let panel = client(&b, "panel", Role::Panel).await;
    let mut sub = panel.telemetry("hall/mix/level", 50.0).await.unwrap();
    let last = 300u32;
    for i in 0..=last {
        a.publish_telemetry(vec![
            ("hall/mix/level".into(), Value::F32(i as f32)),
            ("hall/mix/meters".into(), frame_of(i)),
        ]);
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let seen = until(&mut sub, "hall/mix/level", |v| first(v) == f64::from(last)).await;
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        panel.get("hall/mix/level").await.unwrap().unwrap().value,
        Value::F32(last as f32)
    );
    drop(stuck);
}

/// Binds `sock` to `token` and waits for the bus's confirmation. Datagrams from one
/// socket are handled in order, so this also proves earlier ones were processed.
async fn bind(sock: &UdpSocket, bus: std::net::SocketAddr, token: u64) {
    let mut d = BytesMut::new();
    put_header(&mut d, Kind::Bind, 0, Some(token));
    let mut buf = [0u8; MAX_DATAGRAM];
    within("the bind confirmation", async {
        loop {
            sock.send_to(&d, bus).await.unwrap();
            let got = tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf));
            if let Ok(Ok((n, _))) = got.await {
                if n >= 4 && buf[3] == Kind::Bound as u8 {
                    return;
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn hostile_datagrams_are_dropped_and_counted() {
    let b = bus(config()).await;
    let _a = adapter(&b).await;
    let stats = b.hub().stats;
    let mut raw = Raw::connect(b.tcp).await;
    raw.send(&ClientMsg::Hello {
        v: avbus::protocol::PROTOCOL_VERSION,
        name: "intruder".into(),
        role: Role::Panel,
        credentials: Value::Nil,
        resume: None,
    })
    .await;
    let Some(BusMsg::Welcome {
        token: Some(token), ..
    }) = raw.recv().await
    else {
        panic!("no welcome")
    };
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = b.udp;
    bind(&sock, to, token).await;

    let publish = |token: u64, alias: u32| {
        let mut d = BytesMut::new();
        put_header(&mut d, Kind::Publish, 0, Some(token));
        let mut scratch = BytesMut::new();
        for r in
            avbus::telemetry::encode_value(&mut scratch, alias, 1, 0, 0, &Value::F32(0.5)).unwrap()
        {
            d.extend_from_slice(&r);
        }
        d
    };
    // Garbage of every kind.
    sock.send_to(&[0xA7, 0xB5, 1], to).await.unwrap(); // truncated
    sock.send_to(&vec![0u8; 1300], to).await.unwrap(); // oversized
    sock.send_to(&[0xA7, 0xB5, 9, 2, 0, 0, 0, 0], to)
        .await
        .unwrap(); // wrong version
    sock.send_to(b"GET / HTTP/1.1\r\n\r\n", to).await.unwrap(); // wrong magic
    sock.send_to(&publish(token ^ 0xdead_beef, 2), to)
        .await
        .unwrap(); // spoofed token
    sock.send_to(&publish(token, 2), to).await.unwrap(); // a panel publishing the mixer's meter
    let mut bad = publish(token, 2);
    let n = bad.len();
    bad.truncate(n - 2); // a record cut short
    sock.send_to(&bad, to).await.unwrap();
    // The right token from another socket (another host could have sniffed it).
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.send_to(&publish(token, 2), to).await.unwrap();
    // A bind confirmation after all of them proves they were all handled.
    bind(&sock, to, token).await;
    let other_done = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    bind(&other_done, to, token).await;

    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(g(&stats.drop_truncated), 1);
    assert_eq!(g(&stats.drop_oversized), 1);
    assert_eq!(g(&stats.drop_bad_version), 1);
    assert_eq!(g(&stats.drop_bad_magic), 1);
    assert_eq!(g(&stats.drop_unknown_token), 1);
    assert_eq!(g(&stats.drop_not_owner), 1);
    assert!(g(&stats.drop_bad_record) >= 1);
    assert_eq!(g(&stats.drop_wrong_source), 1);
    // Nothing reached the stream.
    assert_eq!(g(&stats.values_in), 0);

    // The counters are on the bus's `$sys` topics too.
    let panel = client(&b, "ops", Role::Tool).await;
    let mut sys = panel
        .subscribe(&["$sys/telemetry/dropped/+"])
        .await
        .unwrap();
    common::until(&mut sys, |u| {
        u.topic == "$sys/telemetry/dropped/unknown_token" && u.value.as_u64() == Some(1)
    })
    .await;
}

#[tokio::test]
async fn a_silent_source_goes_stale_and_a_new_value_clears_it() {
    let mut cfg = config();
    cfg.telemetry.stale_ms = 150;
    let b = bus(cfg).await;
    let a = adapter(&b).await;
    let panel = client(&b, "panel", Role::Panel).await;
    let mut sub = panel.telemetry("hall/mix/level", 30.0).await.unwrap();
    a.publish_telemetry(vec![("hall/mix/level".into(), Value::F32(0.25))]);
    let seen = until(&mut sub, "hall/mix/level", |_| true).await;
    assert!(!seen[0].stale);
    assert_eq!(seen[0].value, Value::F32(0.25));
    // Silence: the bus marks it stale, keeping the last value.
    let seen = until(&mut sub, "hall/mix/level", |v| v.stale).await;
    assert_eq!(seen.last().unwrap().value, Value::F32(0.25));
    let got = panel.get("hall/mix/level").await.unwrap().unwrap();
    assert_eq!(got.quality, Some(avbus::model::Quality::Stale));
    a.publish_telemetry(vec![("hall/mix/level".into(), Value::F32(0.5))]);
    let seen = until(&mut sub, "hall/mix/level", |v| !v.stale).await;
    assert_eq!(seen.last().unwrap().value, Value::F32(0.5));
    // The adapter gone: `get` says offline.
    let mut online = panel.subscribe(&["hall/mix/online"]).await.unwrap();
    common::snapshot(&mut online).await;
    a.close().await;
    common::until(&mut online, |u| u.value == Value::Boolean(false)).await;
    let got = panel.get("hall/mix/level").await.unwrap().unwrap();
    assert_eq!(got.quality, Some(avbus::model::Quality::Offline));
}

#[tokio::test]
async fn in_process_adapters_publish_without_udp_and_panels_resubscribe_after_a_reconnect() {
    let b = bus(config()).await;
    let local = Client::connect(ClientOptions::local(b.local(), "inproc").role(Role::Adapter))
        .await
        .unwrap();
    local.declare(mixer(), true).await.unwrap();
    // The panel goes through a proxy that the test cuts.
    let proxy = common::Proxy::start(b.tcp).await;
    let panel = Client::connect(opts(&proxy.addr.to_string(), "panel", Role::Panel))
        .await
        .unwrap();
    let mut sub = panel.telemetry("hall/#", 100.0).await.unwrap();
    local.publish_telemetry(vec![("hall/mix/level".into(), Value::F32(1.0))]);
    until(&mut sub, "hall/mix/level", |v| first(v) == 1.0).await;

    let mut events = panel.events();
    proxy.cut();
    common::disconnected(&mut events).await;
    within("reconnected", async {
        loop {
            if let Ok(avbus::client::ConnectionEvent::Connected { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await;
    // New connection, new token: the client binds and subscribes again by itself,
    // and the hub sends the stream's newest value once it does.
    local.publish_telemetry(vec![("hall/mix/level".into(), Value::F32(2.0))]);
    until(&mut sub, "hall/mix/level", |v| first(v) == 2.0).await;
}

#[tokio::test]
async fn re_declaring_ever_new_meters_is_bounded() {
    let mut cfg = config();
    cfg.limits.max_topics = 50;
    let b = bus(cfg).await;
    let a = client(&b, "renamer", Role::Adapter).await;
    // The same device, each time with a new meter name: the old ones' topics go, but
    // their aliases live for the bus's run, so the table is held to `max_topics`.
    let mut refused = None;
    for i in 0..60 {
        let mut d = mixer();
        d.controls = vec![ControlSpec::new(
            &format!("m{i}"),
            ControlKind::Meter {
                min: 0.0,
                max: 1.0,
                unit: String::new(),
                channels: 1,
                rate_hz: 10.0,
            },
        )];
        if let Err(e) = a.declare(d, true).await {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("a limit");
    assert_eq!(i, 50);
    assert_eq!(e.code(), Some(avbus::protocol::ErrorCode::Limit));
    // A `get` of a meter reaches the hub behind the declarations (one queue, in
    // order), so its answer proves they were all applied.
    a.get("hall/mix/m49").await.unwrap();
    assert_eq!(b.hub().stats.streams.load(Ordering::Relaxed), 50);
}

/// A device with `n` meters of `channels` channels each (`big/m00`…).
fn big_console(n: usize, channels: u32) -> DeviceDescriptor {
    DeviceDescriptor {
        room: "hall".into(),
        name: "big".into(),
        label: "Big console".into(),
        class: "console".into(),
        driver: "test".into(),
        controls: (0..n)
            .map(|i| {
                ControlSpec::new(
                    &format!("m{i:02}"),
                    ControlKind::Meter {
                        min: 0.0,
                        max: 1.0,
                        unit: String::new(),
                        channels,
                        rate_hz: 10.0,
                    },
                )
            })
            .collect(),
    }
}

#[tokio::test]
async fn one_flush_larger_than_a_send_batch_arrives_whole() {
    // 20 streams of 1000 channels: 4 records each (3 of them fill a datagram), so
    // the batch a new subscriber gets at once is 70 datagrams, over one `sendmmsg`
    // (64) yet within a default socket receive buffer; and the adapter's values
    // arrive as more datagrams than one `recvmmsg` takes (32).
    const STREAMS: usize = 20;
    const CHANNELS: u32 = 1000;
    let b = bus(config()).await;
    let stats = b.hub().stats;
    let a = client(&b, "big-adapter", Role::Adapter).await;
    a.declare(big_console(STREAMS, CHANNELS), true)
        .await
        .unwrap();
    let value = |s: usize| {
        Value::Array(
            (0..CHANNELS)
                .map(|c| Value::F32((s * 10_000 + c as usize) as f32))
                .collect(),
        )
    };
    a.publish_telemetry(
        (0..STREAMS)
            .map(|s| (format!("hall/big/m{s:02}"), value(s)))
            .collect(),
    );
    // The adapter's datagrams are handled in order: once the last stream reads
    // back whole, every one is in.
    let panel = client(&b, "panel", Role::Panel).await;
    let last = format!("hall/big/m{:02}", STREAMS - 1);
    within("every value taken in", async {
        loop {
            if let Ok(Some(u)) = panel.get(&last).await {
                if u.value == value(STREAMS - 1) {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let out0 = stats.datagrams_out.load(Ordering::Relaxed);
    // A new subscription gets every stream's value in one flush.
    let mut sub = panel.telemetry("hall/big/+", 10.0).await.unwrap();
    let mut parts = std::collections::HashMap::new();
    within("every part of every stream", async {
        while parts.len() < STREAMS * 4 {
            let v = sub.recv().await.expect("subscription open");
            parts.insert((v.topic.to_string(), v.offset), v);
        }
    })
    .await;
    for s in 0..STREAMS {
        let Value::Array(want) = value(s) else {
            unreachable!()
        };
        for (k, offset) in [0u16, 290, 580, 870].into_iter().enumerate() {
            // A part's value holds its channels at their places in the stream.
            let got = &parts[&(format!("hall/big/m{s:02}"), offset)];
            let Value::Array(got) = &got.value else {
                panic!("stream {s} part {k}: not an array")
            };
            let range = usize::from(offset)..(usize::from(offset) + 290).min(CHANNELS as usize);
            assert!(
                got.get(range.clone()) == Some(&want[range]),
                "stream {s} part {k}: wrong values"
            );
        }
    }
    // The hub counts a `sendmmsg` batch once the call returns, which can be after the
    // panel has read it (the hub's thread runs at a lower priority): wait for it.
    let sent = || stats.datagrams_out.load(Ordering::Relaxed) - out0;
    within("the flush's datagrams counted", async {
        while sent() <= 64 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(stats.send_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(sub.stats().datagrams_lost, 0);
    assert!(stats.datagrams_in.load(Ordering::Relaxed) > 32);
}

#[tokio::test]
async fn a_burst_of_datagrams_with_bad_ones_among_them_is_taken_in_whole() {
    // A raw adapter session: its token signs the datagrams below.
    let b = bus(config()).await;
    let stats = b.hub().stats;
    let mut raw = Raw::connect(b.tcp).await;
    raw.send(&ClientMsg::Hello {
        v: avbus::protocol::PROTOCOL_VERSION,
        name: "raw-mixer".into(),
        role: Role::Adapter,
        credentials: Value::Nil,
        resume: None,
    })
    .await;
    let Some(BusMsg::Welcome {
        token: Some(token), ..
    }) = raw.recv().await
    else {
        panic!("no welcome")
    };
    raw.send(&ClientMsg::Declare {
        id: 1,
        device: mixer(),
        online: true,
    })
    .await;
    let BusMsg::Ok { result, .. } = raw
        .recv_until(|m| matches!(m, BusMsg::Ok { id: 1, .. }))
        .await
    else {
        unreachable!()
    };
    let alias = result
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("streams")))
        .and_then(|(_, s)| s.as_map())
        .and_then(|s| s.iter().find(|(k, _)| k.as_str() == Some("level")))
        .and_then(|(_, a)| a.as_u64())
        .expect("the level meter's alias") as u32;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    bind(&sock, b.udp, token).await;

    // 200 values back to back (several `recvmmsg` batches' worth), every 40th
    // datagram followed by garbage: the batch goes on past each bad one.
    const N: u32 = 200;
    let mut scratch = BytesMut::new();
    for i in 1..=N {
        let mut d = BytesMut::new();
        put_header(&mut d, Kind::Publish, i, Some(token));
        for r in avbus::telemetry::encode_value(&mut scratch, alias, i, 0, 0, &Value::F32(i as f32))
            .unwrap()
        {
            d.extend_from_slice(&r);
        }
        sock.send_to(&d, b.udp).await.unwrap();
        if i % 40 == 0 {
            sock.send_to(b"not telemetry", b.udp).await.unwrap();
        }
    }
    // Handled in order: the bind's confirmation comes after every one of them.
    bind(&sock, b.udp, token).await;
    assert_eq!(stats.values_in.load(Ordering::Relaxed), u64::from(N));
    assert_eq!(
        stats.drop_bad_magic.load(Ordering::Relaxed),
        u64::from(N / 40)
    );
    let panel = client(&b, "panel", Role::Panel).await;
    let got = panel.get("hall/mix/level").await.unwrap().unwrap();
    assert_eq!(got.value, Value::F32(N as f32));
}
