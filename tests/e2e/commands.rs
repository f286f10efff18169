//! Commands end to end: routing to the owning adapter, every error kind, pending
//! state, exactly-once answers across a reconnect, momentary release, liveness.

use std::time::Duration;

use avbus::client::Client;
use avbus::model::Quality;
use avbus::protocol::{BusMsg, ClientMsg, CommandOp, ErrorCode, Resume, Role, SessionId};
use avbus::value::Value;

use crate::common::*;

async fn code_of(panel: &Client, topic: &str, value: Value) -> (ErrorCode, String) {
    let e = panel.set(topic, value).await.expect_err("refused");
    (e.code, e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_reaches_the_adapter_and_state_comes_back() {
    let bus = bus(config()).await;
    let (_adapter, mut seen) = lab_adapter(&bus).await;
    let panel = client(&bus, "panel", Role::Panel).await;
    let other = client(&bus, "other-panel", Role::Panel).await;
    let mut sub = other.subscribe(&["lab/dev/#"]).await.unwrap();
    let snap = snapshot(&mut sub).await;
    let online = snap
        .iter()
        .find(|u| u.topic == "lab/dev/online")
        .expect("online record");
    assert_eq!(online.value, Value::Boolean(true));
    let hours = snap.iter().find(|u| u.topic == "lab/dev/hours").unwrap();
    assert_eq!(
        (hours.value.clone(), hours.quality),
        (Value::from(42), Some(Quality::Ok))
    );

    let reply = within("set", panel.set("lab/dev/level", Value::from(30)))
        .await
        .unwrap();
    assert_eq!(reply.result, Value::Nil);
    let cmd = within("the adapter's command", seen.recv()).await.unwrap();
    assert_eq!(
        (cmd.op, cmd.topic.as_str(), cmd.value.clone()),
        (CommandOp::Set, "lab/dev/level", Value::from(30))
    );
    assert_eq!(cmd.from, panel.session());
    // Another panel sees it pending (with target), then the confirmed value.
    let pending = until(&mut sub, |u| u.topic == "lab/dev/level").await;
    assert_eq!(pending.quality, Some(Quality::Pending));
    assert_eq!(pending.target, Some(Value::from(30)));
    assert!(pending.deadline.is_some());
    let done = until(&mut sub, |u| {
        u.topic == "lab/dev/level" && u.quality == Some(Quality::Ok)
    })
    .await;
    assert_eq!(done.value, Value::from(30));
    assert_eq!(done.position, Some(0.3));
    assert_eq!(done.display.as_deref(), Some("30 %"));

    // Values are normalized before forwarding: "on" for a bool becomes true.
    panel.set("lab/dev/power", Value::from("on")).await.unwrap();
    assert_eq!(
        within("cmd", seen.recv()).await.unwrap().value,
        Value::Boolean(true)
    );
    // A trigger is called with arguments and the adapter's result comes back.
    let r = panel.call("lab/dev/go", Value::from("fast")).await.unwrap();
    assert_eq!(r.result, Value::from("fast"));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_kind_is_typed() {
    let mut cfg = config();
    cfg.commands.max_inflight_per_device = 2;
    let bus = bus(cfg).await;
    let (adapter, mut seen) = lab_adapter(&bus).await;
    let mut panel_opts = opts(&bus.tcp.to_string(), "panel", Role::Panel);
    panel_opts.command_timeout = Duration::from_millis(300);
    let panel = Client::connect(panel_opts).await.unwrap();

    let (code, msg) = code_of(&panel, "lab/dev/level", Value::from(101)).await;
    assert_eq!(code, ErrorCode::InvalidValue);
    assert!(msg.contains("outside 0..=100"), "names the rule: {msg}");
    let (code, msg) = code_of(&panel, "lab/dev/mode", Value::from("turbo")).await;
    assert_eq!(code, ErrorCode::InvalidValue);
    assert!(msg.contains("auto, manual"), "{msg}");
    let (code, _) = code_of(&panel, "lab/dev/name", Value::from("far too long")).await;
    assert_eq!(code, ErrorCode::InvalidValue);
    let (code, _) = code_of(&panel, "lab/dev/power", Value::from(7)).await;
    assert_eq!(code, ErrorCode::InvalidValue);
    assert_eq!(
        code_of(&panel, "lab/dev/nope", Value::from(1)).await.0,
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        code_of(&panel, "lab/nodev/power", Value::from(1)).await.0,
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        code_of(&panel, "not a topic", Value::from(1)).await.0,
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        code_of(&panel, "lab/dev/hours", Value::from(1)).await.0,
        ErrorCode::NotWritable
    );
    assert_eq!(
        code_of(&panel, "lab/dev/online", Value::Boolean(false))
            .await
            .0,
        ErrorCode::NotWritable
    );
    assert_eq!(
        code_of(&panel, "lab/dev/go", Value::Nil).await.0,
        ErrorCode::NotWritable
    );
    let e = panel.call("lab/dev/power", Value::Nil).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotWritable);
    // A control the adapter never answers: timeout at the deadline.
    assert_eq!(
        code_of(&panel, "lab/dev/slow", Value::Boolean(true))
            .await
            .0,
        ErrorCode::Timeout
    );
    // Two in flight fill the device's slots: the third is busy.
    let (p1, p2) = (panel.clone(), panel.clone());
    let a = tokio::spawn(async move { p1.set("lab/dev/slow", Value::Boolean(true)).await });
    let b = tokio::spawn(async move { p2.set("lab/dev/slow", Value::Boolean(false)).await });
    // Wait until both are at the adapter (held there unanswered).
    for _ in 0..3 {
        within("a held command", seen.held.recv()).await.unwrap();
    }
    let e = panel
        .set("lab/dev/slow", Value::Boolean(true))
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Busy,
        "a third command in flight is refused: {e}"
    );
    assert_eq!(
        within("a", a).await.unwrap().unwrap_err().code,
        ErrorCode::Timeout
    );
    assert_eq!(
        within("b", b).await.unwrap().unwrap_err().code,
        ErrorCode::Timeout
    );
    // The adapter reports the device unreachable: device_offline, controls offline.
    let mut sub = panel.subscribe(&["lab/dev/level"]).await.unwrap();
    snapshot(&mut sub).await;
    adapter.set_online("lab/dev", false).await.unwrap();
    let u = until(&mut sub, |u| u.quality == Some(Quality::Offline)).await;
    assert_eq!(u.topic, "lab/dev/level");
    assert_eq!(
        code_of(&panel, "lab/dev/level", Value::from(5)).await.0,
        ErrorCode::DeviceOffline
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_disconnect_answers_in_flight_and_turns_everything_offline() {
    let bus = bus(config()).await;
    let (adapter, mut seen) = lab_adapter(&bus).await;
    let panel = client(&bus, "panel", Role::Panel).await;
    let mut sub = panel.subscribe(&["lab/dev/#"]).await.unwrap();
    let snap = snapshot(&mut sub).await;
    let records = snap.iter().filter(|u| u.quality.is_some()).count();
    assert_eq!(records, 8, "online + 7 non-trigger controls");

    let p = panel.clone();
    let inflight = tokio::spawn(async move { p.set("lab/dev/slow", Value::Boolean(true)).await });
    within("the command at the adapter", seen.recv())
        .await
        .unwrap();
    adapter.close().await;
    let err = within("the in-flight answer", inflight)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::DeviceOffline);
    // Every control offline and online=false, for every subscriber.
    let mut offline = std::collections::HashSet::new();
    while offline.len() < 7 {
        let u = next_update(&mut sub).await;
        if u.topic == "lab/dev/online" {
            if u.value == Value::Boolean(false) {
                offline.insert(u.topic);
            }
        } else if u.quality == Some(Quality::Offline) {
            offline.insert(u.topic);
        }
    }
    let got = panel.get("lab/dev/online").await.unwrap().unwrap();
    assert_eq!(got.value, Value::Boolean(false), "retained");
    let e = panel
        .set("lab/dev/level", Value::from(1))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceOffline);
    // A new adapter takes the device over; it comes back online.
    let (_again, _seen) = lab_adapter(&bus).await;
    until(&mut sub, |u| {
        u.topic == "lab/dev/online" && u.value == Value::Boolean(true)
    })
    .await;
    panel.set("lab/dev/level", Value::from(2)).await.unwrap();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_adapter_cannot_take_a_live_device() {
    let bus = bus(config()).await;
    let (_adapter, _seen) = lab_adapter(&bus).await;
    let intruder = client(&bus, "intruder", Role::Adapter).await;
    let e = intruder.declare(lab_device(), true).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
    let e = intruder
        .publish("lab/dev/level", Value::from(3), true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden));
    let mut bad = lab_device();
    bad.name = "x".into();
    bad.controls.push(bad.controls[0].clone());
    let e = intruder.declare(bad, true).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidDescriptor));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_resent_after_resume_runs_once() {
    let bus = bus(config()).await;
    let (_adapter, mut seen) = lab_adapter(&bus).await;
    // A raw panel sends a command, loses its connection before the answer, resumes
    // and sends the same request id again.
    let mut raw = Raw::connect(bus.tcp).await;
    let (session, epoch, _, _) = raw.hello("raw-panel", None).await;
    let set = ClientMsg::Set {
        id: 77,
        topic: "lab/dev/slow".into(),
        value: Value::Boolean(true),
        timeout_ms: Some(10_000),
    };
    raw.send(&set).await;
    within("the command", seen.recv()).await.unwrap();
    let held = within("the held command", seen.held.recv()).await.unwrap();
    drop(raw);
    let mut raw = Raw::connect(bus.tcp).await;
    let (s2, _, _, resumed) = raw
        .hello(
            "raw-panel",
            Some(Resume {
                session,
                epoch,
                last_seq: avbus::protocol::Seq(0),
            }),
        )
        .await;
    assert_eq!((s2, resumed), (session, true));
    raw.send(&set).await;
    // The adapter answers the original command only now.
    held.ok(Value::from("done")).await;
    let answer = raw
        .recv_until(|m| {
            matches!(
                m,
                BusMsg::Ok { id: 77, .. } | BusMsg::Error { id: Some(77), .. }
            )
        })
        .await;
    assert_eq!(
        answer,
        BusMsg::Ok {
            id: 77,
            result: Value::from("done")
        }
    );
    // Sent a third time: answered again from memory, still not executed again.
    raw.send(&set).await;
    let again = raw
        .recv_until(|m| matches!(m, BusMsg::Ok { id: 77, .. }))
        .await;
    assert_eq!(again, answer);
    assert!(seen.try_recv().is_err(), "the adapter saw the command once");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn momentary_is_released_when_the_panel_drops() {
    let bus = bus(config()).await;
    let (_adapter, mut seen) = lab_adapter(&bus).await;
    let mut raw = Raw::connect(bus.tcp).await;
    raw.hello("tablet", None).await;
    raw.send(&ClientMsg::Set {
        id: 1,
        topic: "lab/dev/move".into(),
        value: Value::Boolean(true),
        timeout_ms: None,
    })
    .await;
    let press = within("press", seen.recv()).await.unwrap();
    assert_eq!(press.value, Value::Boolean(true));
    raw.recv_until(|m| matches!(m, BusMsg::Ok { id: 1, .. }))
        .await;
    drop(raw); // Wi-Fi gone, no goodbye.
    let release = within("the bus's release", seen.recv()).await.unwrap();
    assert_eq!(release.topic, "lab/dev/move");
    assert_eq!(release.value, Value::Boolean(false));
    assert_eq!(release.from, SessionId(0), "sent by the bus itself");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_presence_and_broadcast() {
    let bus = bus(config()).await;
    let a = client(&bus, "wall-panel", Role::Panel).await;
    let b = client(&bus, "tablet", Role::Panel).await;
    let mut a_events = a.room_events().await;
    let mut b_events = b.room_events().await;
    let members = a.join("boardroom").await.unwrap();
    assert_eq!(members.len(), 1);
    let members = b.join("boardroom").await.unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"wall-panel") && names.contains(&"tablet"));
    match within("join event", a_events.recv()).await.unwrap() {
        avbus::client::RoomEvent::Joined { room, member } => {
            assert_eq!(
                (room.as_str(), member.name.as_str(), member.role),
                ("boardroom", "tablet", Role::Panel)
            );
        }
        other => panic!("{other:?}"),
    }
    b.say("boardroom", Value::from("hello")).await.unwrap();
    match within("said", a_events.recv()).await.unwrap() {
        avbus::client::RoomEvent::Said { from, value, .. } => {
            assert_eq!((from, value), (b.session(), Value::from("hello")));
        }
        other => panic!("{other:?}"),
    }
    // Presence is retained under $clients while connected.
    let rec = a
        .get(&format!("$clients/{}", b.session()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        avbus::value::to_json(&rec.value)["connected"],
        serde_json::json!(true)
    );
    b.leave("boardroom").await.unwrap();
    match within("leave event", a_events.recv()).await.unwrap() {
        avbus::client::RoomEvent::Left { member, .. } => assert_eq!(member.name, "tablet"),
        other => panic!("{other:?}"),
    }
    assert!(
        b_events.try_recv().is_err(),
        "a sender does not hear itself"
    );
    let mut sub = a.subscribe(&["$clients/+"]).await.unwrap();
    snapshot(&mut sub).await;
    let gone = format!("$clients/{}", b.session());
    b.close().await;
    let u = until(&mut sub, |u| u.topic == gone).await;
    assert!(u.value.is_nil(), "a clean goodbye ends the session at once");
    drop(sub);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_adapter_brings_its_devices_back() {
    let bus = bus(config()).await;
    let panel = client(&bus, "panel", Role::Panel).await;
    let mut sub = panel
        .subscribe(&["lab/dev/online", "lab/dev/hours"])
        .await
        .unwrap();
    snapshot(&mut sub).await;
    // A raw adapter: declares, publishes, loses its connection, resumes.
    let mut raw = Raw::connect(bus.tcp).await;
    let (session, epoch, _, _) = raw.hello("raw-adapter", None).await;
    raw.send(&ClientMsg::Declare {
        id: 1,
        device: lab_device(),
        online: true,
    })
    .await;
    raw.recv_until(|m| matches!(m, BusMsg::Ok { id: 1, .. }))
        .await;
    until(&mut sub, |u| {
        u.topic == "lab/dev/online" && u.value == Value::Boolean(true)
    })
    .await;
    drop(raw);
    until(&mut sub, |u| {
        u.topic == "lab/dev/online" && u.value == Value::Boolean(false)
    })
    .await;
    let mut raw = Raw::connect(bus.tcp).await;
    let resume = Resume {
        session,
        epoch,
        last_seq: avbus::protocol::Seq(0),
    };
    let (_, _, _, resumed) = raw.hello("raw-adapter", Some(resume)).await;
    assert!(resumed);
    until(&mut sub, |u| {
        u.topic == "lab/dev/online" && u.value == Value::Boolean(true)
    })
    .await;
    // Values are stale until the adapter reports them again.
    let hours = panel.get("lab/dev/hours").await.unwrap().unwrap();
    assert_eq!(hours.quality, Some(Quality::Stale));
    raw.send(&ClientMsg::Pub {
        topic: "lab/dev/hours".into(),
        value: Value::from(43),
        retain: true,
        id: Some(2),
        quality: None,
    })
    .await;
    raw.recv_until(|m| matches!(m, BusMsg::Puback { id: 2, .. }))
        .await;
    let u = until(&mut sub, |u| {
        u.topic == "lab/dev/hours" && u.quality == Some(Quality::Ok)
    })
    .await;
    assert_eq!(u.value, Value::from(43));
    // An adapter's value of the wrong type is refused, not passed on to panels.
    raw.send(&ClientMsg::Pub {
        topic: "lab/dev/hours".into(),
        value: Value::from("many"),
        retain: true,
        id: Some(3),
        quality: None,
    })
    .await;
    match raw
        .recv_until(|m| matches!(m, BusMsg::Error { id: Some(3), .. }))
        .await
    {
        BusMsg::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidValue),
        _ => unreachable!(),
    }
    // A request id reused across request kinds is not mistaken for a resend.
    raw.send(&ClientMsg::Get {
        id: 9,
        topic: "nothing/here".into(),
    })
    .await;
    raw.recv_until(|m| matches!(m, BusMsg::Error { id: Some(9), .. }))
        .await;
    raw.send(&ClientMsg::Set {
        id: 9,
        topic: "lab/dev/level".into(),
        value: Value::from(5),
        timeout_ms: Some(300),
    })
    .await;
    // The raw adapter does not answer its own command: it arrives, then times out.
    raw.recv_until(|m| matches!(m, BusMsg::Cmd(_))).await;
    match raw
        .recv_until(|m| matches!(m, BusMsg::Error { id: Some(9), .. }))
        .await
    {
        BusMsg::Error { code, .. } => assert_eq!(code, ErrorCode::Timeout),
        _ => unreachable!(),
    }
    bus.shutdown().await;
}

/// Replies that race their command's deadline: each command is answered exactly once
/// (the adapter's result or `timeout`), and the bus goes on serving. (A deadline taken
/// from the queue in one hold of the router's lock and run out in a later one let a
/// reply settle the command in between, and the router panicked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_racing_their_deadlines_are_answered_once_and_the_bus_goes_on() {
    let bus = bus(config()).await;
    let (_adapter, mut seen) = lab_adapter(&bus).await;
    // Deadlines are whole milliseconds on the wire, so a panel per deadline: the first
    // command of a round always carries 25 ms, the second 25 ms plus an offset.
    let mut panels = std::collections::HashMap::new();
    let mut panel_for = async |ms: u64| -> Client {
        if let Some(p) = panels.get(&ms) {
            return Client::clone(p);
        }
        let mut o = opts(&bus.tcp.to_string(), &format!("racing-{ms}"), Role::Panel);
        o.command_timeout = Duration::from_millis(ms);
        let p = Client::connect(o).await.unwrap();
        panels.insert(ms, p.clone());
        p
    };
    // Each round: the first command reaches the adapter, then the second; the adapter
    // holds both. The moment the first comes back `timeout`, the adapter answers the
    // second. The offset sweeps that answer across the second's deadline: well before it
    // (+30 ms: answered), well after it (-10 ms: timed out), and at it (0 and +1 ms,
    // the races, which either way must be answered once).
    const OFFSETS: [i64; 8] = [-10, 0, 1, 0, 1, 2, 0, 30];
    let (mut second_ok, mut second_timed_out) = (0u32, 0u32);
    for round in 0..80 {
        let offset = OFFSETS[round % OFFSETS.len()];
        let (p1, p2) = (panel_for(25).await, panel_for((25 + offset) as u64).await);
        let first = tokio::spawn(async move { p1.set("lab/dev/slow", Value::Boolean(true)).await });
        let a = within("the first held command", seen.held.recv())
            .await
            .unwrap();
        let second =
            tokio::spawn(
                async move { p2.set("lab/dev/slow", Value::Boolean(round % 2 == 0)).await },
            );
        let b = within("the second held command", seen.held.recv())
            .await
            .unwrap();
        let e = within("the first command", first)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout, "{e}");
        b.ok(Value::Nil).await;
        drop(a);
        match within("the second command", second).await.unwrap() {
            Ok(_) => second_ok += 1,
            Err(e) if e.code == ErrorCode::Timeout => second_timed_out += 1,
            Err(e) => panic!("a command answered with {e}"),
        }
    }
    assert_eq!(second_ok + second_timed_out, 80);
    assert!(
        second_ok > 0 && second_timed_out > 0,
        "the sweep missed a side of the deadline: {second_ok} ok, {second_timed_out} timed out"
    );
    let panel = panel_for(25).await;
    // The bus still routes: a command through the adapter, a read.
    within(
        "a set after the race",
        panel.set("lab/dev/level", Value::from(7)),
    )
    .await
    .expect("set after the race");
    within("a read after the race", panel.get("lab/dev/hours"))
        .await
        .expect("get after the race");
    bus.shutdown().await;
}
