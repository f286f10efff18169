//! Trust over real sockets: credentials, per-room authorization (commands,
//! subscriptions, `get`, snapshots, descriptors, presence, telemetry), declare
//! prefixes, guessing backoff, session takeover, rate limits and connection limits.

use std::sync::atomic::Ordering;

use avbus::auth::{hash_token, new_token};
use avbus::bus::BusHandle;
use avbus::client::{Client, Error, SubEvent};
use avbus::config::{ClientRules, Config, OverRate};
use avbus::model::{ControlKind, ControlSpec, DeviceDescriptor, Quality};
use avbus::protocol::{BusMsg, ClientMsg, ErrorCode, Resume, Role, PROTOCOL_VERSION};
use avbus::value::Value;

use crate::common::{self, bus, config, lab_device, next, opts, snapshot, within, Raw};

/// The tokens of the test site.
struct Site {
    operator: String,
    boardroom: String,
    hall: String,
    hall_adapter: String,
    boardroom_adapter: String,
}

fn rules(name: &str, token: &str) -> ClientRules {
    ClientRules {
        name: name.into(),
        token_hash: Some(hash_token(token)),
        ..ClientRules::default()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A site with rooms: an operator, a panel per room, an adapter per room.
fn site() -> (Config, Site) {
    let s = Site {
        operator: new_token(),
        boardroom: new_token(),
        hall: new_token(),
        hall_adapter: new_token(),
        boardroom_adapter: new_token(),
    };
    let mut cfg = config();
    cfg.sys.interval_ms = 20;
    cfg.auth.clients = vec![
        ClientRules {
            all: true,
            ..rules("operator", &s.operator)
        },
        ClientRules {
            read: strings(&["boardroom/#"]),
            command: strings(&["boardroom/#"]),
            ..rules("boardroom-panel", &s.boardroom)
        },
        ClientRules {
            read: strings(&["hall/#"]),
            command: strings(&["hall/#"]),
            ..rules("hall-panel", &s.hall)
        },
        ClientRules {
            declare: strings(&["hall/+"]),
            ..rules("hall-adapter", &s.hall_adapter)
        },
        ClientRules {
            declare: strings(&["boardroom/+"]),
            ..rules("boardroom-adapter", &s.boardroom_adapter)
        },
    ];
    (cfg, s)
}

async fn connect(b: &BusHandle, name: &str, role: Role, token: &str) -> Client {
    Client::connect(opts(&b.tcp.to_string(), name, role).token(token))
        .await
        .expect("client connects")
}

/// `lab_device` in another room, with a meter.
fn device(room: &str, name: &str) -> DeviceDescriptor {
    let mut d = lab_device();
    d.room = room.into();
    d.name = name.into();
    d.controls.push(ControlSpec::new(
        "meters",
        ControlKind::Meter {
            min: 0.0,
            max: 1.0,
            unit: String::new(),
            channels: 2,
            rate_hz: 50.0,
        },
    ));
    d
}

/// An adapter serving `room/projector`, answering every command ok.
async fn adapter(b: &BusHandle, room: &str, token: &str) -> Client {
    let a = connect(b, &format!("{room}-adapter"), Role::Adapter, token).await;
    let mut commands = a.commands().await;
    a.declare(device(room, "projector"), true)
        .await
        .expect("declare in its own room");
    let me = a.clone();
    tokio::spawn(async move {
        while let Some(c) = commands.recv().await {
            let (topic, value) = (c.command.topic.clone(), c.command.value.clone());
            if c.command.op == avbus::protocol::CommandOp::Set {
                let _ = me.publish_state(&topic, value, Quality::Ok).await;
            }
            c.ok(Value::Nil).await;
        }
    });
    a
}

fn code(e: &Error) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test]
async fn a_boardroom_panel_cannot_reach_the_hall_and_sees_nothing_of_it() {
    let (cfg, s) = site();
    let b = bus(cfg).await;
    let hall = adapter(&b, "hall", &s.hall_adapter).await;
    let _board = adapter(&b, "boardroom", &s.boardroom_adapter).await;
    let panel = connect(&b, "board-panel", Role::Panel, &s.boardroom).await;

    // Commands: the hall is forbidden, the boardroom works.
    let e = panel
        .set("hall/projector/power", true.into())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
    let e = panel
        .call("hall/projector/go", Value::Nil)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
    // Forbidden even for what does not exist: the answer tells nothing.
    let e = panel
        .set("hall/nothing/here", true.into())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
    panel
        .set("boardroom/projector/power", true.into())
        .await
        .expect("its own room");

    // Subscriptions and reads in the hall are refused, typed.
    for f in ["hall/#", "hall/projector/power", "$sys/#", "$clients/#"] {
        let e = panel.subscribe(&[f]).await.expect_err("refused");
        assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{f}: {e}");
    }
    for t in [
        "hall/projector/power",
        "hall/projector/meters",
        "$devices/hall/projector",
        "$sys/connections",
        "$clients/1",
    ] {
        let e = panel.get(t).await.expect_err("refused");
        assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{t}: {e}");
    }
    assert!(panel
        .get("boardroom/projector/power")
        .await
        .unwrap()
        .is_some());

    // Wide filters are accepted, but deliver only the boardroom: in snapshots...
    let mut all = panel
        .subscribe(&["#", "+/+/power", "$devices/#"])
        .await
        .unwrap();
    let snap = snapshot(&mut all).await;
    assert!(!snap.is_empty());
    for u in &snap {
        assert!(
            u.topic.starts_with("boardroom/") || u.topic == "$devices/boardroom/projector",
            "leaked {}",
            u.topic
        );
    }
    assert!(snap
        .iter()
        .any(|u| u.topic == "$devices/boardroom/projector"));
    // ... and live: a hall update published first never arrives, the boardroom one
    // published after it does.
    let operator = connect(&b, "operator", Role::Tool, &s.operator).await;
    hall.publish("hall/projector/name", "x".into(), true)
        .await
        .unwrap();
    operator
        .set("boardroom/projector/level", 7.into())
        .await
        .unwrap();
    loop {
        match next(&mut all).await {
            SubEvent::Update(u)
                if u.topic == "boardroom/projector/level" && u.value == Value::from(7) =>
            {
                break
            }
            SubEvent::Update(u) if u.topic.starts_with("boardroom/") => {}
            SubEvent::Update(u) => panic!("leaked {}", u.topic),
            _ => {}
        }
    }

    // Rooms: only its own; the member list is of its own room.
    let e = panel.join("hall").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let hall_panel = connect(&b, "hall-panel", Role::Panel, &s.hall).await;
    hall_panel.join("hall").await.unwrap();
    let members = panel.join("boardroom").await.unwrap();
    assert_eq!(members.len(), 1);

    // Telemetry: the same rules.
    let e = panel
        .telemetry("hall/#", 10.0)
        .await
        .err()
        .expect("refused");
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let t = panel.telemetry("+/+/meters", 10.0).await.unwrap();
    let topics: Vec<&str> = t.streams().iter().map(|s| s.topic.as_str()).collect();
    assert_eq!(topics, ["boardroom/projector/meters"]);

    // The operator sees everything, including who is who.
    let mut ops = operator
        .subscribe(&["$clients/+", "$devices/#"])
        .await
        .unwrap();
    let snap = snapshot(&mut ops).await;
    assert!(snap.iter().any(|u| u.topic == "$devices/hall/projector"));
    let creds: Vec<String> = snap
        .iter()
        .filter(|u| u.topic.starts_with("$clients/"))
        .filter_map(|u| {
            avbus::value::to_json(&u.value)["credential"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(creds.contains(&"boardroom-panel".to_string()), "{creds:?}");
    let forbidden = b.guard_stats().forbidden.load(Ordering::Relaxed);
    assert!(forbidden >= 14, "{forbidden}");
}

#[tokio::test]
async fn telemetry_delivers_only_readable_streams() {
    let (cfg, s) = site();
    let b = bus(cfg).await;
    let hall = adapter(&b, "hall", &s.hall_adapter).await;
    let board = adapter(&b, "boardroom", &s.boardroom_adapter).await;
    let panel = connect(&b, "board-panel", Role::Panel, &s.boardroom).await;
    let mut t = panel.telemetry("#", 100.0).await.unwrap();
    let v = |x: f32| Value::Array(vec![Value::F32(x), Value::F32(x)]);
    // The hall's value goes first; the boardroom's after it. Only the boardroom's
    // arrives, until the last one.
    for i in 1..=5 {
        hall.publish_telemetry(vec![("hall/projector/meters".into(), v(i as f32))]);
        board.publish_telemetry(vec![("boardroom/projector/meters".into(), v(i as f32))]);
    }
    within("the boardroom's last meter value", async {
        loop {
            let got = t.recv().await.expect("open");
            assert_eq!(&*got.topic, "boardroom/projector/meters", "leaked");
            if got.value == v(5.0) {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_adapter_declares_and_publishes_only_under_its_prefix() {
    let (cfg, s) = site();
    let b = bus(cfg).await;
    let a = connect(&b, "hall-adapter", Role::Adapter, &s.hall_adapter).await;
    let e = a
        .declare(device("boardroom", "projector"), true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    a.declare(device("hall", "projector"), true).await.unwrap();
    // Its own controls are its to publish; anything else needs a rule.
    a.publish("hall/projector/name", "ok".into(), true)
        .await
        .unwrap();
    let e = a
        .publish("boardroom/notes", "x".into(), true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    // A panel's credential declares nothing.
    let panel = connect(&b, "board-panel", Role::Panel, &s.boardroom).await;
    let e = panel
        .declare(device("boardroom", "screen"), true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
}

async fn hello(raw: &mut Raw, credentials: Value) -> BusMsg {
    raw.send(&ClientMsg::Hello {
        v: PROTOCOL_VERSION,
        name: "guess".into(),
        role: Role::Tool,
        credentials,
        resume: None,
    })
    .await;
    raw.recv().await.expect("an answer")
}

fn token_creds(t: &str) -> Value {
    Value::Map(vec![(Value::from("token"), Value::from(t))])
}

fn refused(m: &BusMsg) -> &str {
    match m {
        BusMsg::Error {
            id: None,
            code: ErrorCode::Unauthorized,
            message,
        } => message,
        other => panic!("expected unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_tokens_are_refused_and_guessing_is_slowed() {
    let (mut cfg, s) = site();
    // A window far longer than the test, so the second attempt surely falls in it.
    cfg.auth.backoff_ms = 600_000;
    cfg.auth.backoff_max_ms = 600_000;
    let b = bus(cfg).await;
    let stats = b.guard_stats();
    let operator = connect(&b, "operator", Role::Tool, &s.operator).await;

    // No credentials: refused, but not counted as a guess.
    let mut raw = Raw::connect(b.tcp).await;
    let m = hello(&mut raw, Value::Nil).await;
    assert!(refused(&m).contains("requires credentials"), "{m:?}");
    assert!(raw.recv().await.is_none(), "closed after the refusal");
    connect(&b, "still-fine", Role::Tool, &s.boardroom).await;

    // A wrong token: refused, and the address's window opens.
    let mut raw = Raw::connect(b.tcp).await;
    let m = hello(&mut raw, token_creds(&new_token())).await;
    let msg = refused(&m);
    assert!(msg.contains("refused for 600000 ms"), "{msg}");
    assert!(raw.recv().await.is_none());
    // In the window, even the right token is not looked at.
    let mut raw = Raw::connect(b.tcp).await;
    let m = hello(&mut raw, token_creds(&s.boardroom)).await;
    assert!(refused(&m).contains("too many failed attempts"), "{m:?}");
    // The client library reports the typed refusal.
    let e = Client::connect(opts(&b.tcp.to_string(), "lib", Role::Tool).token(&s.operator))
        .await
        .expect_err("refused");
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");

    assert_eq!(stats.auth_unauthorized.load(Ordering::Relaxed), 1);
    assert_eq!(stats.auth_missing.load(Ordering::Relaxed), 1);
    assert_eq!(stats.auth_throttled.load(Ordering::Relaxed), 2);
    // The same counters, as the bus publishes them; the session already open is
    // unaffected.
    let mut sys = operator.subscribe(&["$sys/auth/#"]).await.unwrap();
    let want = |t: &str, v: u64| (t.to_owned(), Value::from(v));
    let mut seen = std::collections::HashMap::new();
    within("the auth counters", async {
        while [
            want("$sys/auth/unauthorized", 1),
            want("$sys/auth/throttled", 2),
            want("$sys/auth/blocked_addresses", 1),
        ]
        .iter()
        .any(|(t, v)| seen.get(t) != Some(v))
        {
            if let SubEvent::Update(u) = next(&mut sys).await {
                seen.insert(u.topic.clone(), u.value.clone());
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_session_resumes_only_under_its_own_credential() {
    let (cfg, s) = site();
    let b = bus(cfg).await;
    let operator = connect(&b, "operator", Role::Tool, &s.operator).await;
    let session = operator.session();
    let mut raw = Raw::connect(b.tcp).await;
    raw.send(&ClientMsg::Hello {
        v: PROTOCOL_VERSION,
        name: "thief".into(),
        role: Role::Panel,
        credentials: token_creds(&s.boardroom),
        resume: Some(Resume {
            session,
            epoch: b.epoch,
            last_seq: avbus::protocol::Seq(0),
        }),
    })
    .await;
    match raw.recv().await {
        Some(BusMsg::Welcome {
            session: got,
            resumed,
            ..
        }) => {
            assert!(!resumed);
            assert_ne!(got, session);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    // The operator's connection was not replaced.
    operator
        .get("$sys/sessions")
        .await
        .expect("still connected");
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_closed_and_others_are_unaffected() {
    let mut cfg = config();
    cfg.limits.client_msgs_per_sec = 20;
    cfg.limits.client_msg_burst = 20;
    cfg.limits.over_rate = OverRate::Close;
    let b = bus(cfg).await;
    let calm = common::client(&b, "calm", Role::Panel).await;
    let mut flood = Raw::connect(b.tcp).await;
    flood.hello("flood", None).await;
    let pings: Vec<u8> = (0..200)
        .flat_map(|n| avbus::protocol::frame(&ClientMsg::Ping { n }).to_vec())
        .collect();
    flood.send_raw(&pings).await;
    let got = flood.until_closed().await;
    assert!(
        got.iter().any(|m| matches!(
            m,
            BusMsg::Error {
                code: ErrorCode::Limit,
                ..
            }
        )),
        "{got:?}"
    );
    assert!(got.len() < 200, "closed before answering every ping");
    assert_eq!(b.guard_stats().rate_closed.load(Ordering::Relaxed), 1);
    calm.get("$sys/connections")
        .await
        .expect("the calm client goes on");
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_throttled_and_loses_nothing() {
    let mut cfg = config();
    cfg.limits.client_msgs_per_sec = 200;
    cfg.limits.client_msg_burst = 10;
    cfg.limits.over_rate = OverRate::Throttle;
    let b = bus(cfg).await;
    let calm = common::client(&b, "calm", Role::Panel).await;
    let mut flood = Raw::connect(b.tcp).await;
    flood.hello("flood", None).await;
    let n = 60u64;
    let pings: Vec<u8> = (1..=n)
        .flat_map(|n| avbus::protocol::frame(&ClientMsg::Ping { n }).to_vec())
        .collect();
    flood.send_raw(&pings).await;
    calm.get("$sys/connections")
        .await
        .expect("the calm client goes on");
    // Every ping is answered, in order: throttling delays, it never drops.
    let mut expect = 1;
    while expect <= n {
        if let BusMsg::Pong { n: got } = flood.recv().await.expect("open") {
            assert_eq!(got, expect);
            expect += 1;
        }
    }
    assert!(b.guard_stats().rate_throttled.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn connections_per_address_are_bounded() {
    let mut cfg = config();
    cfg.limits.max_connections_per_address = 2;
    let b = bus(cfg).await;
    let _one = common::client(&b, "one", Role::Panel).await;
    let _two = common::client(&b, "two", Role::Panel).await;
    let mut three = Raw::connect(b.tcp).await;
    match three.recv().await {
        Some(BusMsg::Error {
            code: ErrorCode::Limit,
            message,
            ..
        }) => assert!(message.contains("127.0.0.1"), "{message}"),
        other => panic!("expected limit, got {other:?}"),
    }
    assert_eq!(b.guard_stats().address_refused.load(Ordering::Relaxed), 1);
    // A slot frees when a connection ends.
    drop(three);
    _one.close().await;
    within("a freed slot", async {
        loop {
            let mut again = Raw::connect(b.tcp).await;
            again
                .send(&ClientMsg::Hello {
                    v: PROTOCOL_VERSION,
                    name: "again".into(),
                    role: Role::Panel,
                    credentials: Value::Nil,
                    resume: None,
                })
                .await;
            if let Some(BusMsg::Welcome { .. }) = again.recv().await {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_bus_beyond_loopback_without_credentials_refuses_to_start() {
    let mut cfg = config();
    cfg.listen.tcp = "0.0.0.0:0".parse().unwrap();
    let e = avbus::bus::start(cfg).await.err().expect("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("[auth.anonymous]"), "{e}");
    let e = Config::parse("[listen]\ntcp = \"0.0.0.0:7420\"\n", "site.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("site.toml") && e.contains("beyond loopback"),
        "{e}"
    );
}
