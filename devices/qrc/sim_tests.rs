//! End-to-end: the codec as a client against the simulator over real TCP (127.0.0.1:0).

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::proto::*;
use super::sim::*;

const WAIT: Duration = Duration::from_secs(5);

struct Client {
    stream: TcpStream,
    framer: Framer,
    next_id: i64,
}

impl Client {
    /// Connects and takes the `EngineStatus` the Core pushes first.
    async fn connect(sim: &Sim) -> (Client, EngineStatus) {
        let stream = timeout(WAIT, TcpStream::connect(sim.addr())).await;
        let stream = stream.unwrap().unwrap();
        let framer = Framer::new(MAX_MESSAGE);
        let mut client = Client {
            stream,
            framer,
            next_id: 0,
        };
        match client.incoming().await {
            Incoming::Notification(Notification::EngineStatus(status)) => (client, status),
            other => panic!("expected EngineStatus, got {other:?}"),
        }
    }
    async fn open(sim: &Sim) -> Client {
        Client::connect(sim).await.0
    }
    /// The next frame, `None` at EOF. Cancel-safe.
    async fn read_frame(&mut self) -> Option<Bytes> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self.framer.next_frame() {
                return Some(frame.unwrap());
            }
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.framer.extend(&buf[..n]),
            }
        }
    }
    async fn frame(&mut self) -> Bytes {
        let frame = timeout(WAIT, self.read_frame())
            .await
            .expect("no frame in time");
        frame.expect("connection closed")
    }
    async fn incoming(&mut self) -> Incoming {
        parse_incoming(&self.frame().await).unwrap()
    }
    async fn push(&mut self) -> PollResult {
        match self.incoming().await {
            Incoming::Notification(Notification::ChangeGroupPoll(poll)) => poll,
            other => panic!("expected a ChangeGroup.Poll push, got {other:?}"),
        }
    }
    async fn send(&mut self, bytes: &[u8]) {
        let sent = timeout(WAIT, self.stream.write_all(bytes)).await;
        sent.unwrap().unwrap();
    }
    async fn call(&mut self, request: Request) -> Result<Json, RpcError> {
        self.next_id += 1;
        let id = RpcId::Number(self.next_id);
        self.send(&encode_request(Some(&id), &request)).await;
        loop {
            if let Incoming::Response { id: got, outcome } = self.incoming().await {
                assert_eq!(got, Some(id));
                return outcome;
            }
        }
    }
    async fn poll(&mut self, group: &str) -> Vec<ControlState> {
        let result = self.call(Request::ChangeGroupPoll { id: gid(group) }).await;
        serde_json::from_value::<PollResult>(result.unwrap())
            .unwrap()
            .changes
    }
    async fn value(&mut self, name: &str) -> Json {
        let result = self.call(Request::ControlGet(vec![name.into()])).await;
        result.unwrap()[0]["Value"].clone()
    }
    async fn closed(&mut self) -> bool {
        let read = timeout(WAIT, self.read_frame()).await;
        read.expect("still open").is_none()
    }
    /// Nothing arrives, and the connection stays open, for `ms`.
    async fn silent(&mut self, ms: u64) -> bool {
        timeout(Duration::from_millis(ms), self.read_frame())
            .await
            .is_err()
    }
}

async fn start(cfg: SimConfig) -> Sim {
    Sim::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}
fn gid(id: &str) -> GroupId {
    GroupId(id.into())
}
fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}
fn set(name: &str, target: SetTarget, ramp: Option<f64>) -> Request {
    Request::ControlSet(ControlSet {
        name: name.into(),
        target,
        ramp,
    })
}
fn set_value(name: &str, value: Value) -> Request {
    set(name, SetTarget::Value(value), None)
}
fn get(names: &[&str]) -> Request {
    Request::ControlGet(strings(names))
}
fn add(group: &str, names: &[&str]) -> Request {
    Request::ChangeGroupAddControl {
        id: gid(group),
        controls: strings(names),
    }
}
fn group(make: fn(GroupId) -> Request, id: &str) -> Request {
    make(gid(id))
}
fn invalidate(id: GroupId) -> Request {
    Request::ChangeGroupInvalidate { id }
}
/// Sorted `component/name` (or `name`) of each change.
fn names(changes: &[ControlState]) -> Vec<String> {
    let name = |c: &ControlState| match &c.component {
        Some(component) => format!("{component}/{}", c.name),
        None => c.name.clone(),
    };
    let mut names: Vec<String> = changes.iter().map(name).collect();
    names.sort();
    names
}
fn code(result: Result<Json, RpcError>) -> i64 {
    result.unwrap_err().code
}

#[tokio::test]
async fn engine_status_on_connect_and_status_get() {
    let sim = start(SimConfig::fast()).await;
    let (mut c, status) = Client::connect(&sim).await;
    assert_eq!(status.state, EngineState::Active);
    assert_eq!(status.design_name, "avbus-sim");
    let result = c.call(Request::StatusGet {}).await.unwrap();
    assert_eq!(result["State"], json!("Active"));
    assert!(result["Platform"].is_string());
    assert_eq!(sim.state().connections, 1);
    sim.stop().await;
}

#[tokio::test]
async fn logon_required_until_good_credentials() {
    let credentials = Some(("admin".into(), "1234".into()));
    let sim = start(SimConfig {
        credentials,
        ..SimConfig::fast()
    })
    .await;
    let mut c = Client::open(&sim).await;
    assert_eq!(code(c.call(get(&["Program.gain"])).await), 10);
    assert_eq!(code(c.call(Request::NoOp {}).await), 10);
    let bad = Request::Logon {
        user: "admin".into(),
        password: "nope".into(),
    };
    assert_eq!(code(c.call(bad).await), 10);
    assert_eq!(sim.state().logged_on, 0);
    let good = Request::Logon {
        user: "admin".into(),
        password: "1234".into(),
    };
    assert_eq!(c.call(good).await.unwrap(), json!(true));
    assert_eq!(c.value("Program.gain").await, json!(0.0));
    assert_eq!(sim.state().logged_on, 1);
    sim.stop().await;
}

#[tokio::test]
async fn control_get_and_set_validate_and_clamp() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::open(&sim).await;
    let all = c
        .call(get(&["Program.gain", "Program.mute", "Room.label"]))
        .await;
    let gain =
        json!({"Name": "Program.gain", "String": "0.0dB", "Value": 0.0, "Position": 100.0 / 120.0});
    let mute =
        json!({"Name": "Program.mute", "String": "unmuted", "Value": false, "Position": 0.0});
    let label =
        json!({"Name": "Room.label", "String": "Room 101", "Value": "Room 101", "Position": 0.0});
    assert_eq!(all.unwrap(), json!([gain, mute, label]));

    let ramped = set(
        "Program.gain",
        SetTarget::Value(Value::Number(-12.0)),
        Some(2.0),
    );
    assert_eq!(c.call(ramped).await.unwrap(), json!(true));
    assert_eq!(c.value("Program.gain").await, json!(-12.0));
    c.call(set_value("Program.gain", Value::Number(50.0)))
        .await
        .unwrap();
    let top = c.call(get(&["Program.gain"])).await.unwrap();
    assert_eq!(
        top[0],
        json!({"Name": "Program.gain", "String": "20.0dB", "Value": 20.0, "Position": 1.0})
    );
    c.call(set("Program.gain", SetTarget::Position(0.5), None))
        .await
        .unwrap();
    assert_eq!(c.value("Program.gain").await, json!(-40.0));
    c.call(set("Program.gain", SetTarget::String("-6dB".into()), None))
        .await
        .unwrap();
    assert_eq!(c.value("Program.gain").await, json!(-6.0));
    c.call(set("Program.mute", SetTarget::String("muted".into()), None))
        .await
        .unwrap();
    assert_eq!(c.value("Program.mute").await, json!(true));
    c.call(set_value("Program.mute", Value::Number(0.0)))
        .await
        .unwrap();
    assert_eq!(c.value("Program.mute").await, json!(false));
    c.call(set_value("Room.label", Value::Text("Lab".into())))
        .await
        .unwrap();
    assert_eq!(sim.panel().get("Room.label").unwrap().string, "Lab");

    assert_eq!(code(c.call(get(&["Program.gain", "Nope"])).await), 8);
    assert_eq!(code(c.call(set_value("Nope", Value::Number(1.0))).await), 8);
    let words = set("Program.gain", SetTarget::String("loud".into()), None);
    assert_eq!(code(c.call(words).await), -32602);
    let text = set_value("Program.gain", Value::Text("x".into()));
    assert_eq!(code(c.call(text).await), -32602);
    let backwards = set("Program.gain", SetTarget::Position(0.1), Some(-1.0));
    assert_eq!(code(c.call(backwards).await), -32602);
    let long = set_value("Room.label", Value::Text("x".repeat(5000)));
    assert_eq!(code(c.call(long).await), -32602);
    sim.stop().await;
}

#[tokio::test]
async fn components_list_types_ranges_and_set() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::open(&sim).await;
    let get_controls = |name: &str| Request::ComponentGetControls { name: name.into() };
    let r = c.call(get_controls("Program")).await.unwrap();
    let info: ComponentControls<ControlInfo> = serde_json::from_value(r).unwrap();
    assert_eq!(info.name, "Program");
    let gain = info.controls.iter().find(|c| c.name == "gain").unwrap();
    assert_eq!(
        (gain.kind, gain.direction),
        (ControlType::Float, Direction::ReadWrite)
    );
    assert_eq!((gain.value_min, gain.value_max), (Some(-100.0), Some(20.0)));
    assert_eq!(gain.string_min.as_deref(), Some("-100.0dB"));
    assert_eq!(gain.string_max.as_deref(), Some("20.0dB"));
    let mute = info.controls.iter().find(|c| c.name == "mute").unwrap();
    assert_eq!(
        (mute.kind, mute.string.as_str()),
        (ControlType::Boolean, "unmuted")
    );
    let r = c.call(get_controls("Preset")).await.unwrap();
    assert_eq!(r["Controls"][0]["Type"], json!("Trigger"));
    assert_eq!(code(c.call(get_controls("Nope")).await), 7);

    let mic = ComponentRef {
        name: "Mic1".into(),
        controls: strings(&["gain"]),
    };
    let r = c.call(Request::ComponentGet(mic)).await.unwrap();
    let gain = json!({"Name": "gain", "String": "-10.0dB", "Value": -10.0, "Position": 0.75});
    assert_eq!(r, json!({"Name": "Mic1", "Controls": [gain]}));
    let target = SetTarget::Value(Value::Bool(true));
    let mute = ControlSet {
        name: "mute".into(),
        target,
        ramp: None,
    };
    let ok = Request::ComponentSet {
        name: "Mic1".into(),
        controls: vec![mute.clone()],
    };
    assert_eq!(c.call(ok).await.unwrap(), json!(true));
    assert_eq!(
        sim.panel().get("Mic1.mute").unwrap().value,
        Value::Bool(true)
    );
    let nope = ControlSet {
        name: "nope".into(),
        ..mute
    };
    let bad = Request::ComponentSet {
        name: "Mic1".into(),
        controls: vec![nope],
    };
    assert_eq!(code(c.call(bad).await), 8);
    let r = c.call(Request::ComponentGetComponents {}).await.unwrap();
    let components: Vec<ComponentInfo> = serde_json::from_value(r).unwrap();
    let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Mic1", "Preset", "Program", "Room"]);
    sim.stop().await;
}

#[tokio::test]
async fn change_group_poll_semantics() {
    let sim = start(SimConfig::fast()).await;
    let panel = sim.panel();
    let mut c = Client::open(&sim).await;
    let added = c.call(add("g", &["Program.gain", "Program.mute"])).await;
    assert_eq!(added.unwrap(), json!(true));
    assert_eq!(names(&c.poll("g").await), ["Program.gain", "Program.mute"]);
    assert!(c.poll("g").await.is_empty());
    panel
        .set_value("Program.gain", Value::Number(-30.0))
        .unwrap();
    let changes = c.poll("g").await;
    assert_eq!(names(&changes), ["Program.gain"]);
    assert_eq!(changes[0].value, Value::Number(-30.0));
    panel
        .set_value("Program.gain", Value::Number(-30.0))
        .unwrap();
    assert!(
        c.poll("g").await.is_empty(),
        "setting the same value is no change"
    );

    let component = ComponentRef {
        name: "Mic1".into(),
        controls: strings(&["gain"]),
    };
    let by_component = Request::ChangeGroupAddComponentControl {
        id: gid("g"),
        component,
    };
    c.call(by_component).await.unwrap();
    assert_eq!(names(&c.poll("g").await), ["Mic1/gain"]);
    c.call(group(invalidate, "g")).await.unwrap();
    assert_eq!(
        names(&c.poll("g").await),
        ["Mic1/gain", "Program.gain", "Program.mute"]
    );
    let controls = strings(&["Program.mute"]);
    c.call(Request::ChangeGroupRemove {
        id: gid("g"),
        controls,
    })
    .await
    .unwrap();
    c.call(group(invalidate, "g")).await.unwrap();
    assert_eq!(names(&c.poll("g").await), ["Mic1/gain", "Program.gain"]);
    c.call(Request::ChangeGroupClear { id: gid("g") })
        .await
        .unwrap();
    c.call(group(invalidate, "g")).await.unwrap();
    assert!(c.poll("g").await.is_empty());

    assert_eq!(code(c.call(add("g", &["Program.mute", "Nope"])).await), 8);
    assert_eq!(
        names(&c.poll("g").await),
        ["Program.mute"],
        "known ones are added"
    );
    let other = Request::ChangeGroupPoll { id: gid("other") };
    assert_eq!(code(c.call(other).await), 6);
    let destroy = Request::ChangeGroupDestroy { id: gid("g") };
    assert_eq!(c.call(destroy).await.unwrap(), json!(true));
    assert_eq!(
        code(c.call(Request::ChangeGroupPoll { id: gid("g") }).await),
        6
    );
    sim.stop().await;
}

#[tokio::test]
async fn change_groups_are_capped_and_die_with_the_connection() {
    let sim = start(SimConfig {
        max_change_groups: 2,
        ..SimConfig::fast()
    })
    .await;
    let mut connections = sim.connections();
    let mut c = Client::open(&sim).await;
    c.call(add("a", &["Program.gain"])).await.unwrap();
    c.call(add("b", &["Program.gain"])).await.unwrap();
    assert_eq!(code(c.call(add("c", &["Program.gain"])).await), 5);
    c.call(add("a", &["Mic1.gain"])).await.unwrap();
    assert_eq!(sim.state().change_groups, 2);
    drop(c);
    timeout(WAIT, connections.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sim.state().change_groups, 0);
    let mut c = Client::open(&sim).await;
    c.call(add("a", &["Program.gain"])).await.unwrap();
    c.call(add("b", &["Program.gain"])).await.unwrap();
    sim.stop().await;
}

#[tokio::test]
async fn autopoll_pushes_only_changes_when_asked() {
    let sim = start(SimConfig {
        push_empty_polls: false,
        ..SimConfig::default()
    })
    .await;
    let mut c = Client::open(&sim).await;
    c.call(add("g", &["Program.gain"])).await.unwrap();
    let auto = |rate, id| Request::ChangeGroupAutoPoll { id: gid(id), rate };
    let first = c.call(auto(0.05, "g")).await.unwrap();
    let first: PollResult = serde_json::from_value(first).unwrap();
    assert_eq!(
        (first.id, names(&first.changes)),
        (gid("g"), strings(&["Program.gain"]))
    );
    assert!(c.silent(200).await, "no pushes without changes");
    sim.panel()
        .set_value("Program.gain", Value::Number(-3.0))
        .unwrap();
    let push = c.push().await;
    assert_eq!((push.id, push.changes.len()), (gid("g"), 1));
    assert_eq!(push.changes[0].value, Value::Number(-3.0));
    assert_eq!(code(c.call(auto(0.0, "g")).await), -32602);
    assert_eq!(code(c.call(auto(1.0, "x")).await), 6);
    sim.stop().await;
}

#[tokio::test]
async fn autopoll_pushes_empty_polls_like_a_core() {
    let sim = start(SimConfig::default()).await;
    let mut c = Client::open(&sim).await;
    c.call(add("g", &["Mic1.mute"])).await.unwrap();
    // Below min_autopoll_rate: raised to it, not refused.
    let auto = Request::ChangeGroupAutoPoll {
        id: gid("g"),
        rate: 0.001,
    };
    c.call(auto).await.unwrap();
    let push = c.push().await;
    assert_eq!((push.id, push.changes), (gid("g"), vec![]));
    sim.stop().await;
}

#[tokio::test]
async fn keepalive_closes_a_silent_connection() {
    let sim = start(SimConfig::fast()).await;
    let mut connections = sim.connections();
    let mut c = Client::open(&sim).await;
    let since = Instant::now();
    assert!(c.closed().await);
    let after = since.elapsed();
    assert!(
        after >= Duration::from_millis(400),
        "closed after {after:?}"
    );
    timeout(WAIT, connections.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    sim.stop().await;
}

#[tokio::test]
async fn noop_keeps_the_connection_alive() {
    let sim = start(SimConfig::fast()).await;
    let mut c = Client::open(&sim).await;
    // 5 × 200 ms of silence: twice the 500 ms keepalive, survived thanks to NoOp.
    for _ in 0..5 {
        assert!(c.silent(200).await);
        assert_eq!(c.call(Request::NoOp {}).await.unwrap(), json!(true));
    }
    assert_eq!(sim.state().connections, 1);
    sim.stop().await;
}

#[tokio::test]
async fn preset_trigger_recalls_stored_values() {
    let sim = start(SimConfig::fast()).await;
    let panel = sim.panel();
    let mut c = Client::open(&sim).await;
    c.call(add("g", &["Program.gain", "Mic1.mute", "Room.label"]))
        .await
        .unwrap();
    c.poll("g").await;
    let fire = c.call(set_value("Preset.recall", Value::Number(1.0))).await;
    assert_eq!(fire.unwrap(), json!(true));
    assert_eq!(c.value("Program.gain").await, json!(-20.0));
    assert_eq!(c.value("Mic1.gain").await, json!(-6.0));
    assert_eq!(names(&c.poll("g").await), ["Mic1.mute", "Program.gain"]);
    panel.set_value("Program.gain", Value::Number(0.0)).unwrap();
    panel.trigger("Preset.recall").unwrap();
    assert_eq!(
        panel.get("Program.gain").unwrap().value,
        Value::Number(-20.0)
    );
    assert_eq!(panel.trigger("Program.gain").unwrap_err().code, -32602);
    sim.stop().await;
}

#[tokio::test]
async fn garbage_gets_errors_and_never_kills_the_core() {
    let sim = start(SimConfig::default()).await;
    let mut c = Client::open(&sim).await;
    let error_of = |m: Incoming| match m {
        Incoming::Response {
            id,
            outcome: Err(e),
        } => (id, e.code),
        other => panic!("expected an error, got {other:?}"),
    };
    c.send(b"not json\0").await;
    assert_eq!(error_of(c.incoming().await), (None, -32700));
    c.send(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"Nope\"}\0")
        .await;
    assert_eq!(
        error_of(c.incoming().await),
        (Some(RpcId::Number(9)), -32601)
    );
    c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"Nope\"}\0").await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut junk: Vec<u8> = (0..4000).map(|_| rng.u8(1..)).collect();
    junk.push(0);
    c.send(&junk).await;
    let (id, _) = error_of(c.incoming().await);
    assert_eq!(
        id, None,
        "one answer for the junk, none for the notification"
    );
    c.send(&vec![b'x'; MAX_MESSAGE + 4096]).await;
    assert_eq!(error_of(c.incoming().await), (None, -32700));
    c.send(b"tail of the long one\0").await;
    assert_eq!(c.call(Request::NoOp {}).await.unwrap(), json!(true));
    assert_eq!(sim.state().connections, 1);
    sim.stop().await;
}

#[tokio::test]
async fn inject_reaches_every_connection() {
    let sim = start(SimConfig::default()).await;
    let (mut a, mut b) = (Client::open(&sim).await, Client::open(&sim).await);
    assert_eq!(sim.inject(b"{\"raw\":1}\0"), 2);
    assert_eq!(&a.frame().await[..], b"{\"raw\":1}");
    assert_eq!(&b.frame().await[..], b"{\"raw\":1}");
    sim.stop().await;
}

#[tokio::test]
async fn stop_closes_and_start_again_serves() {
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    let mut c = Client::open(&sim).await;
    sim.stop().await;
    assert!(c.closed().await);
    let sim = Sim::start(addr, SimConfig::default()).await.unwrap();
    let mut c = Client::open(&sim).await;
    assert_eq!(c.call(Request::NoOp {}).await.unwrap(), json!(true));
    sim.stop().await;
}

#[tokio::test]
async fn inconsistent_designs_are_refused() {
    let addr = "127.0.0.1:0".parse().unwrap();
    let dup = vec![
        SimControl::mute("a.b", false),
        SimControl::mute("a.b", true),
    ];
    let recall = vec![SimControl::trigger(
        "p.r",
        vec![("missing", Value::Bool(true))],
    )];
    let flat = SimControlKind::Float {
        min: 1.0,
        max: 1.0,
        initial: 1.0,
        unit: "".into(),
    };
    let range = vec![SimControl {
        name: "g".into(),
        kind: flat,
    }];
    for controls in [dup, recall, range] {
        let cfg = SimConfig {
            controls,
            ..SimConfig::default()
        };
        let e = Sim::start(addr, cfg).await.err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }
}
