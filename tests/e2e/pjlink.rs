//! The PJLink adapter end to end: an in-process bus, the simulated projector
//! (`pjlink::sim`) with a password on a real socket, the adapter on the kit's host,
//! and panels. Power with its warm-up, inputs and mute, typed refusals, front-panel
//! changes found by polling, a wrong password, a projector that goes away and comes
//! back, and garbage from the projector. Every wait is bounded by `within`.

use std::net::SocketAddr;
use std::time::Duration;

use avbus::bus::BusHandle;
use avbus::client::{Client, SubEvent, Subscription};
use avbus::config::DeviceConfig;
use avbus::devices::kit::{DeviceError, Driver, Host};
use avbus::devices::pjlink::adapter::{self, PjlinkDriver};
use avbus::devices::pjlink::proto::{AvMute, ErrorLevel, ErrorStatus, InputCode, PowerState};
use avbus::devices::pjlink::sim::{Sim, SimConfig, SimState};
use avbus::model::{ControlKind, DeviceDescriptor, Quality};
use avbus::protocol::{ErrorCode, Role};
use avbus::value::Value;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const PASSWORD: &str = "JBMIAProjectorLink";
const DEVICE: &str = "hall/projector";

fn sim_config() -> SimConfig {
    SimConfig {
        password: Some(PASSWORD.into()),
        ..SimConfig::fast()
    }
}

async fn start_sim(cfg: SimConfig) -> Sim {
    let listen = "127.0.0.1:0".parse().expect("address");
    within("the simulator to start", Sim::start(listen, cfg))
        .await
        .expect("the simulator binds")
}

fn entry(addr: SocketAddr, poll_ms: u64) -> DeviceConfig {
    DeviceConfig {
        room: "hall".into(),
        name: "projector".into(),
        driver: "pjlink".into(),
        label: None,
        host: Some(addr.ip().to_string()),
        port: Some(addr.port()),
        password: Some(PASSWORD.into()),
        poll_ms: Some(poll_ms),
    }
}

/// A bus, an adapter host running the projector of `d`, and a panel.
async fn rig(d: &DeviceConfig) -> (BusHandle, Client, CancellationToken) {
    let bus = bus(config()).await;
    let adapter = client(&bus, "pjlink-adapter", Role::Adapter).await;
    let host = Host::start(adapter).await;
    let cancel = CancellationToken::new();
    adapter::spawn(&host, d, cancel.clone());
    let panel = client(&bus, "panel", Role::Panel).await;
    (bus, panel, cancel)
}

fn topic(control: &str) -> String {
    format!("{DEVICE}/{control}")
}

fn s(v: &str) -> Value {
    Value::from(v)
}

async fn watch(panel: &Client, control: &str) -> Subscription {
    panel
        .subscribe(&[&topic(control)])
        .await
        .expect("subscribe")
}

/// Waits until `control` holds `value`.
async fn reaches(sub: &mut Subscription, value: Value) {
    until(sub, |u| u.value == value).await;
}

/// Waits for the projector to be offline, or online with its power state shown.
async fn online(panel: &Client, want: bool) {
    if want {
        ready(panel, DEVICE, &["power"]).await;
        return;
    }
    let mut sub = watch(panel, "online").await;
    reaches(&mut sub, Value::Boolean(want)).await;
}

async fn value(panel: &Client, control: &str) -> Value {
    let update = panel.get(&topic(control)).await.expect("get");
    update.expect("a value").value
}

async fn set(panel: &Client, control: &str, value: Value) -> Result<(), (ErrorCode, String)> {
    match within("a command's answer", panel.set(&topic(control), value)).await {
        Ok(_) => Ok(()),
        Err(e) => Err((e.code, e.message)),
    }
}

/// What `sub` holds already, without waiting.
fn held(sub: &mut Subscription) -> Vec<SubEvent> {
    std::iter::from_fn(|| sub.next().now_or_never().flatten()).collect()
}

async fn sim_reaches(sim: &Sim, what: &str, f: impl FnMut(&SimState) -> bool) {
    let mut changes = sim.changes();
    within(what, changes.wait_for(f))
        .await
        .expect("the simulator runs");
}

async fn descriptor(panel: &Client) -> DeviceDescriptor {
    let update = panel.get(&format!("$devices/{DEVICE}")).await.expect("get");
    avbus::value::from_value(&update.expect("declared").value).expect("a descriptor")
}

fn input(code: &str) -> InputCode {
    InputCode::parse(code).expect("an input code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_from_a_panel_warms_up_then_on() {
    let sim = start_sim(SimConfig {
        warmup: Duration::from_millis(500),
        ..sim_config()
    })
    .await;
    let (bus, panel, cancel) = rig(&entry(sim.addr(), 200)).await;
    online(&panel, true).await;
    assert_eq!(value(&panel, "power").await, s("off"));
    let mut power = watch(&panel, "power").await;
    set(&panel, "power", s("on")).await.unwrap();
    // The accepted step is published before the panel's `ok`.
    assert_eq!(value(&panel, "power").await, s("warming"));
    assert_ne!(sim.state().power, PowerState::Standby, "POWR 1 reached it");
    reaches(&mut power, s("warming")).await;
    reaches(&mut power, s("on")).await;
    assert_eq!(sim.state().power, PowerState::On);
    // Transitions are the projector's own.
    for step in ["warming", "cooling"] {
        let (code, _) = set(&panel, "power", s(step)).await.unwrap_err();
        assert_eq!(code, ErrorCode::InvalidValue, "{step}");
    }
    set(&panel, "power", s("off")).await.unwrap();
    reaches(&mut power, s("off")).await;
    assert_eq!(sim.state().power, PowerState::Standby);
    cancel.cancel();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_during_warm_up_are_busy() {
    let sim = start_sim(SimConfig {
        warmup: Duration::from_secs(3600),
        ..sim_config()
    })
    .await;
    let (bus, panel, cancel) = rig(&entry(sim.addr(), 5000)).await;
    online(&panel, true).await;
    set(&panel, "power", s("on")).await.unwrap();
    assert_eq!(value(&panel, "power").await, s("warming"));
    for (control, v) in [("power", s("off")), ("input", s("31"))] {
        let (code, message) = set(&panel, control, v).await.unwrap_err();
        assert_eq!(code, ErrorCode::Busy, "{control}: {message}");
        assert!(message.contains("warming up"), "{message}");
    }
    assert_eq!(sim.state().power, PowerState::WarmUp);
    cancel.cancel();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_from_inst_and_mute() {
    let sim = start_sim(sim_config()).await;
    let (bus, panel, cancel) = rig(&entry(sim.addr(), 200)).await;
    online(&panel, true).await;
    // Declared again with the projector's own inputs once it answered INST.
    let desc = descriptor(&panel).await;
    let ControlKind::Enum { options } = &desc.control("input").expect("input").kind else {
        panic!("input is an enum");
    };
    let ids: Vec<&str> = options.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["11", "12", "31", "32", "33"]);
    assert_eq!(options[2].label, "Digital 1");
    assert!(desc.control("lamp_hours").is_some());
    // Mute needs the lamp on.
    let (code, message) = set(&panel, "video_mute", Value::Boolean(true))
        .await
        .unwrap_err();
    assert_eq!(code, ErrorCode::Busy);
    assert!(message.contains("standby"), "{message}");
    let mut power = watch(&panel, "power").await;
    set(&panel, "power", s("on")).await.unwrap();
    reaches(&mut power, s("on")).await;
    set(&panel, "input", s("32")).await.unwrap();
    assert_eq!(sim.state().input, input("32"));
    assert_eq!(value(&panel, "input").await, s("32"));
    let (code, _) = set(&panel, "input", s("21")).await.unwrap_err();
    assert_eq!(
        code,
        ErrorCode::InvalidValue,
        "not one of this projector's inputs"
    );
    set(&panel, "video_mute", Value::Boolean(true))
        .await
        .unwrap();
    set(&panel, "audio_mute", Value::Boolean(true))
        .await
        .unwrap();
    assert_eq!(
        sim.state().mute,
        AvMute {
            video: true,
            audio: true
        }
    );
    set(&panel, "video_mute", Value::Boolean(false))
        .await
        .unwrap();
    assert_eq!(
        sim.state().mute,
        AvMute {
            video: false,
            audio: true
        }
    );
    assert_eq!(value(&panel, "audio_mute").await, Value::Boolean(true));
    assert_eq!(value(&panel, "video_mute").await, Value::Boolean(false));
    let (code, _) = set(&panel, "lamp_hours", Value::from(0)).await.unwrap_err();
    assert_eq!(code, ErrorCode::NotWritable);
    cancel.cancel();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_failure_is_busy_and_named() {
    let sim = start_sim(sim_config()).await;
    let (bus, panel, cancel) = rig(&entry(sim.addr(), 5000)).await;
    online(&panel, true).await;
    sim.panel().set_error(ErrorStatus {
        lamp: ErrorLevel::Error,
        ..ErrorStatus::default()
    });
    let (code, message) = set(&panel, "power", s("on")).await.unwrap_err();
    assert_eq!(code, ErrorCode::Busy);
    assert!(
        message.contains("ERR4") && message.contains("lamp: error"),
        "{message}"
    );
    assert_eq!(sim.state().power, PowerState::Standby);
    cancel.cancel();
    bus.shutdown().await;
}

/// A model that lists inputs 11 and 31 but refuses every input change (`ERR2`),
/// does not define AV mute or lamp hours (`ERR1`, like laser models), and is on.
async fn fussy_projector() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(fussy_session(stream));
        }
    });
    addr
}

async fn fussy_session(stream: TcpStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    if wr.write_all(b"PJLINK 0\r").await.is_err() {
        return;
    }
    let mut line = Vec::new();
    while matches!(rd.read_until(b'\r', &mut line).await, Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_owned();
        line.clear();
        let (head, param) = text.split_at(text.len().min(6));
        let reply = match (head, param.trim_start()) {
            ("%1CLSS", _) => "1",
            ("%1INST", _) => "11 31",
            ("%1POWR", "?") => "1",
            ("%1POWR", _) => "OK",
            ("%1INPT", "?") => "31",
            ("%1INPT", _) => "ERR2",
            ("%1ERST", _) => "000000",
            ("%1NAME", _) => "Fussy",
            _ => "ERR1",
        };
        if wr
            .write_all(format!("{head}={reply}\r").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_from_the_projector_are_typed() {
    let addr = fussy_projector().await;
    let d = DeviceConfig {
        password: None,
        ..entry(addr, 5000)
    };
    let (bus, panel, cancel) = rig(&d).await;
    online(&panel, true).await;
    let desc = descriptor(&panel).await;
    assert!(
        desc.control("lamp_hours").is_none(),
        "no lamp on this model"
    );
    assert_eq!(value(&panel, "name").await, s("Fussy"));
    assert_eq!(value(&panel, "input").await, s("31"));
    let (code, message) = set(&panel, "input", s("11")).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidValue, "ERR2: {message}");
    let (code, message) = set(&panel, "audio_mute", Value::Boolean(true))
        .await
        .unwrap_err();
    assert_eq!(code, ErrorCode::NotWritable, "ERR1: {message}");
    // Refusals are answers, not broken links.
    assert_eq!(value(&panel, "online").await, Value::Boolean(true));
    cancel.cancel();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_panel_changes_reach_panels_by_polling() {
    let sim = start_sim(sim_config()).await;
    let (bus, panel, cancel) = rig(&entry(sim.addr(), 100)).await;
    ready(&panel, DEVICE, &["name", "error_status"]).await;
    assert_eq!(value(&panel, "name").await, s("avbus projector"));
    assert_eq!(value(&panel, "error_status").await, s("ok"));
    let mut all = panel.subscribe(&[&format!("{DEVICE}/+")]).await.unwrap();
    let front = sim.panel();
    front.power_on().unwrap();
    until(&mut all, |u| {
        u.topic == topic("power") && u.value == s("on")
    })
    .await;
    front.select_input("33").unwrap();
    until(&mut all, |u| {
        u.topic == topic("input") && u.value == s("33")
    })
    .await;
    front
        .set_mute(AvMute {
            video: true,
            audio: false,
        })
        .unwrap();
    until(&mut all, |u| {
        u.topic == topic("video_mute") && u.value == Value::Boolean(true)
    })
    .await;
    front.set_error(ErrorStatus {
        lamp: ErrorLevel::Warning,
        filter: ErrorLevel::Error,
        ..ErrorStatus::default()
    });
    until(&mut all, |u| {
        u.topic == topic("error_status") && u.value == s("lamp: warning, filter: error")
    })
    .await;
    front.set_lamp_hours(4321);
    until(&mut all, |u| {
        u.topic == topic("lamp_hours") && u.value == Value::from(4321)
    })
    .await;
    front.power_off().unwrap();
    until(&mut all, |u| {
        u.topic == topic("power") && u.value == s("off")
    })
    .await;
    // Input and mute are unreadable in standby (ERR3): the last known values stay.
    assert_eq!(value(&panel, "input").await, s("33"));
    assert_eq!(value(&panel, "online").await, Value::Boolean(true));
    cancel.cancel();
    bus.shutdown().await;
}

/// Forwards connections to `target` and counts the sessions that ended.
async fn tap(target: SocketAddr) -> (SocketAddr, watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (ended, rx) = watch::channel(0);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                ended.send_modify(|n| *n += 1);
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_keeps_the_device_offline() {
    let sim = start_sim(sim_config()).await;
    let wrong = DeviceConfig {
        password: Some("not-the-password".into()),
        ..entry(sim.addr(), 100)
    };
    // The driver alone: the refusal is an authentication error.
    let mut driver = PjlinkDriver::new(&wrong).unwrap();
    let e = within("connect", driver.connect()).await.unwrap_err();
    assert!(matches!(e, DeviceError::Auth(_)), "{e}");
    let mut driver = PjlinkDriver::new(&DeviceConfig {
        password: None,
        ..wrong.clone()
    })
    .unwrap();
    let e = within("connect", driver.connect()).await.unwrap_err();
    assert!(
        matches!(e, DeviceError::Auth(_)),
        "no password configured: {e}"
    );
    // On the bus: declared, tried and refused more than once, still offline.
    let (addr, mut ended) = tap(sim.addr()).await;
    let d = DeviceConfig {
        password: Some("not-the-password".into()),
        ..entry(addr, 100)
    };
    let (bus, panel, cancel) = rig(&d).await;
    within("two refused sessions", ended.wait_for(|n| *n >= 2))
        .await
        .unwrap();
    assert_eq!(value(&panel, "online").await, Value::Boolean(false));
    let (code, _) = set(&panel, "power", s("on")).await.unwrap_err();
    assert_eq!(code, ErrorCode::DeviceOffline);
    assert_eq!(sim.state().power, PowerState::Standby);
    cancel.cancel();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_that_goes_away_is_offline_until_it_returns() {
    let sim = start_sim(sim_config()).await;
    let addr = sim.addr();
    let (bus, panel, cancel) = rig(&entry(addr, 100)).await;
    online(&panel, true).await;
    let mut status = watch(&panel, "online").await;
    reaches(&mut status, Value::Boolean(true)).await;
    within("the simulator to stop", sim.stop()).await;
    reaches(&mut status, Value::Boolean(false)).await;
    let power = panel.get(&topic("power")).await.unwrap().unwrap();
    assert_eq!(power.quality, Some(Quality::Offline));
    let (code, _) = set(&panel, "power", s("on")).await.unwrap_err();
    assert_eq!(code, ErrorCode::DeviceOffline);
    let sim = within("the simulator to restart", Sim::start(addr, sim_config()))
        .await
        .expect("the same port again");
    reaches(&mut status, Value::Boolean(true)).await;
    assert_eq!(value(&panel, "power").await, s("off"));
    set(&panel, "power", s("on")).await.unwrap();
    assert_ne!(sim.state().power, PowerState::Standby);
    cancel.cancel();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_projector_ends_the_session_not_the_adapter() {
    let sim = start_sim(sim_config()).await;
    // A slow poll: what arrives is read while the session is idle.
    let (bus, panel, cancel) = rig(&entry(sim.addr(), 60_000)).await;
    online(&panel, true).await;
    sim_reaches(&sim, "the adapter's session", |s| s.connections == 1).await;
    // Unsolicited PJLink lines are not garbage: a link-up is skipped, a class 2
    // status notification is applied.
    let mut input = watch(&panel, "input").await;
    sim.inject(b"%2LKUP=02:00:5e:10:43:52\r%2INPT=32\r");
    reaches(&mut input, s("32")).await;
    assert_eq!(value(&panel, "online").await, Value::Boolean(true));
    let mut status = watch(&panel, "online").await;
    reaches(&mut status, Value::Boolean(true)).await;
    let garbage: [&[u8]; 3] = [b"\x00\xffnot pjlink\r", &[b'x'; 300], b"PJLINK 0\r"];
    for bytes in garbage {
        sim_reaches(&sim, "the adapter's session", |s| s.connections == 1).await;
        sim.inject(bytes);
        reaches(&mut status, Value::Boolean(false)).await;
        reaches(&mut status, Value::Boolean(true)).await;
    }
    set(&panel, "power", s("on")).await.unwrap();
    assert_ne!(sim.state().power, PowerState::Standby);
    cancel.cancel();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_projector_closed_for_idling_is_reopened_unseen() {
    let sim = start_sim(SimConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        max_connections: 1,
        ..sim_config()
    })
    .await;
    let (bus, panel, cancel) = rig(&entry(sim.addr(), 60_000)).await;
    online(&panel, true).await;
    let mut status = watch(&panel, "online").await;
    reaches(&mut status, Value::Boolean(true)).await;
    sim_reaches(&sim, "the idle session closed", |s| s.connections == 0).await;
    // A new session (with a new challenge) carries the command.
    set(&panel, "power", s("on")).await.unwrap();
    assert_ne!(sim.state().power, PowerState::Standby);
    sim_reaches(&sim, "the idle session closed again", |s| {
        s.connections == 0
    })
    .await;
    set(&panel, "power", s("off")).await.unwrap();
    assert_eq!(value(&panel, "online").await, Value::Boolean(true));
    let offline = held(&mut status)
        .into_iter()
        .filter(|e| matches!(e, SubEvent::Update(u) if u.value == Value::Boolean(false)))
        .count();
    assert_eq!(offline, 0, "the device never went offline");
    cancel.cancel();
    bus.shutdown().await;
}

#[test]
fn config_entries_are_checked_and_the_device_described_before_contact() {
    let d = entry("192.0.2.10:4352".parse().unwrap(), 5000);
    assert_eq!(adapter::check(&d), Ok(()));
    let no_port = DeviceConfig {
        port: None,
        poll_ms: None,
        ..d.clone()
    };
    assert_eq!(adapter::check(&no_port), Ok(()));
    let cases = [
        (
            DeviceConfig {
                host: None,
                ..d.clone()
            },
            "host",
        ),
        (
            DeviceConfig {
                port: Some(0),
                ..d.clone()
            },
            "port",
        ),
        (
            DeviceConfig {
                password: Some("x".repeat(33)),
                ..d.clone()
            },
            "password",
        ),
        (
            DeviceConfig {
                password: Some("two words".into()),
                ..d.clone()
            },
            "password",
        ),
        (
            DeviceConfig {
                password: Some(String::new()),
                ..d.clone()
            },
            "password",
        ),
        (
            DeviceConfig {
                poll_ms: Some(0),
                ..d.clone()
            },
            "poll_ms",
        ),
    ];
    for (bad, key) in cases {
        let e = adapter::check(&bad).unwrap_err();
        assert!(e.contains(key), "{e}");
        assert!(PjlinkDriver::new(&bad).is_err());
    }
    let driver = PjlinkDriver::new(&no_port).unwrap();
    assert_eq!(driver.timing().poll, adapter::DEFAULT_POLL);
    let desc = driver.descriptor();
    assert!(desc.validate().is_ok());
    assert_eq!(
        (
            desc.class.as_str(),
            desc.driver.as_str(),
            desc.label.as_str()
        ),
        ("projector", "pjlink", "Projector")
    );
    let ControlKind::Enum { options } = &desc.control("power").unwrap().kind else {
        panic!("power is an enum");
    };
    let power: Vec<(&str, &str)> = options
        .iter()
        .map(|o| (o.id.as_str(), o.label.as_str()))
        .collect();
    assert_eq!(
        power,
        [
            ("off", "Off"),
            ("warming", "Warming up"),
            ("on", "On"),
            ("cooling", "Cooling down")
        ]
    );
    // Until the projector's INST is known: one input of each class 1 kind.
    let ControlKind::Enum { options } = &desc.control("input").unwrap().kind else {
        panic!("input is an enum");
    };
    let labels: Vec<&str> = options.iter().map(|o| o.label.as_str()).collect();
    assert_eq!(
        labels,
        ["RGB 1", "Video 1", "Digital 1", "Storage 1", "Network 1"]
    );
    for read_only in ["error_status", "lamp_hours", "name"] {
        assert!(!desc.control(read_only).unwrap().access.writable());
    }
}
