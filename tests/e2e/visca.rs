//! The VISCA-over-IP adapter end to end: an in-process bus, the simulated camera
//! (`devices/visca/sim.rs`) on a real UDP socket, the adapter on the kit, and panels.
//! Power, held moves and their release by the bus, presets, moves made at the camera,
//! lost datagrams, a camera that goes away and comes back, garbage, and a scripted
//! camera that loses a reply. Every wait is bounded by [`within`]; nothing sleeps.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avbus::bus::BusHandle;
use avbus::client::{Client, Subscription};
use avbus::config::DeviceConfig;
use avbus::devices::kit::Host;
use avbus::devices::visca::adapter::{self, LocalAddr, Retry, ViscaSettings};
use avbus::devices::visca::proto::{
    decode_datagram, Answer, Command, Control, ControlError, ControlReply, Datagram, Direction,
    Inquiry, PayloadType, Position, Power, Reply, Seq, Speed,
};
use avbus::devices::visca::sim::{Sim, SimConfig, SimState};
use avbus::model::Quality;
use avbus::protocol::{BusMsg, ClientMsg, ErrorCode, Role};
use avbus::value::Value;
use futures_util::{FutureExt, StreamExt};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const DEVICE: &str = "studio/cam";
const POLL_MS: u64 = 50;

fn topic(control: &str) -> String {
    format!("{DEVICE}/{control}")
}

fn entry(cam: SocketAddr) -> DeviceConfig {
    DeviceConfig {
        room: "studio".into(),
        name: "cam".into(),
        driver: "visca".into(),
        label: None,
        host: Some(cam.ip().to_string()),
        port: Some(cam.port()),
        password: None,
        poll_ms: Some(POLL_MS),
    }
}

fn preset(n: i64) -> Value {
    Value::Map(vec![(Value::from("preset"), Value::from(n))])
}

/// Motion slow enough to watch: a held pan takes seconds to reach the end.
fn slow() -> SimConfig {
    SimConfig {
        pan_speed: 5_000.0,
        tilt_speed: 5_000.0,
        zoom_speed: 5_000.0,
        ..SimConfig::fast()
    }
}

/// A bus, the adapter for `studio/cam` and a panel watching the camera.
struct Rig {
    bus: BusHandle,
    panel: Client,
    sub: Subscription,
    _cancel: CancellationToken,
}

impl Rig {
    /// Runs the adapter with `adapter::spawn` from a `[[device]]` entry.
    async fn start(cam: SocketAddr) -> Rig {
        Rig::run(cam, None).await
    }

    /// Runs the adapter from settings (shorter retransmission, a visible local address).
    async fn with(cam: SocketAddr) -> (Rig, LocalAddr) {
        let mut settings = ViscaSettings::from_device(&entry(cam)).unwrap();
        settings.retry = Retry {
            try_timeout: Duration::from_millis(100),
            tries: 3,
        };
        let local = settings.local_addr();
        (Rig::run(cam, Some(settings)).await, local)
    }

    async fn run(cam: SocketAddr, settings: Option<ViscaSettings>) -> Rig {
        let bus = bus(config()).await;
        let host = Host::start(client(&bus, "visca-adapter", Role::Adapter).await).await;
        let cancel = CancellationToken::new();
        match settings {
            Some(s) => host.spawn(move || s.driver(), cancel.clone()),
            None => adapter::spawn(&host, &entry(cam), cancel.clone()),
        };
        let panel = client(&bus, "panel", Role::Panel).await;
        let sub = ready(&panel, DEVICE, &["power"]).await;
        Rig {
            bus,
            panel,
            sub,
            _cancel: cancel,
        }
    }

    async fn value(&self, control: &str) -> Value {
        self.panel
            .get(&topic(control))
            .await
            .unwrap()
            .unwrap()
            .value
    }

    async fn set(&self, control: &str, value: Value) -> Result<(), ErrorCode> {
        let r = self.panel.set(&topic(control), value).await;
        r.map(drop).map_err(|e| e.code)
    }

    async fn call(&self, control: &str, args: Value) -> Result<(), ErrorCode> {
        let r = self.panel.call(&topic(control), args).await;
        r.map(drop).map_err(|e| e.code)
    }

    /// The next value of `control` that satisfies `pred`, as the panel sees it.
    async fn seen(&mut self, control: &str, pred: impl Fn(&Value) -> bool) -> Value {
        seen(&mut self.sub, control, pred).await
    }
}

async fn seen(sub: &mut Subscription, control: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t = topic(control);
    // A record without a value yet (the device just came online) proves nothing.
    until(sub, |u| u.topic == t && !u.value.is_nil() && pred(&u.value))
        .await
        .value
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(i64::MIN)
}

/// Waits until the camera itself satisfies `pred`.
async fn camera_until(sim: &Sim, what: &str, pred: impl Fn(&SimState) -> bool) -> SimState {
    within(what, async {
        loop {
            let state = sim.state();
            if pred(&state) {
                return state;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

async fn sim(cfg: SimConfig) -> Sim {
    Sim::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_from_a_panel_reaches_the_camera() {
    let sim = sim(SimConfig {
        powered: false,
        ..SimConfig::fast()
    })
    .await;
    let rig = Rig::start(sim.addr()).await;
    assert_eq!(rig.value("power").await, Value::from("off"));
    assert_eq!(
        rig.set("pan_left", Value::Boolean(true)).await,
        Err(ErrorCode::Busy),
        "a camera in standby cannot move"
    );
    assert_eq!(rig.value("pan_left").await, Value::Boolean(false));
    rig.set("power", Value::from("on")).await.unwrap();
    assert_eq!(sim.state().power, Power::On);
    assert_eq!(
        rig.value("power").await,
        Value::from("on"),
        "the completion came within the power wait"
    );
    assert_eq!(
        rig.set("power", Value::from("warming")).await,
        Err(ErrorCode::InvalidValue)
    );
    rig.set("pan_left", Value::Boolean(true)).await.unwrap();
    rig.set("power", Value::from("off")).await.unwrap();
    assert_eq!(sim.state().power, Power::Off);
    assert_eq!(
        rig.value("pan_left").await,
        Value::Boolean(false),
        "standby stops every motor"
    );
    rig.set("tilt_up", Value::Boolean(false)).await.unwrap();
    assert_eq!(
        rig.set("tilt_up", Value::Boolean(true)).await,
        Err(ErrorCode::Busy),
        "in standby a press is refused, a release is not"
    );
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_power_switch_is_answered_at_the_ack_and_shows_warming() {
    let sim = sim(SimConfig {
        powered: false,
        power_on_time: Duration::from_millis(1500),
        ..SimConfig::fast()
    })
    .await;
    let mut rig = Rig::start(sim.addr()).await;
    rig.set("power", Value::from("on")).await.unwrap();
    assert_eq!(sim.state().switching, Some(Power::On));
    assert_eq!(rig.value("power").await, Value::from("warming"));
    assert_eq!(
        rig.set("tilt_up", Value::Boolean(true)).await,
        Err(ErrorCode::Busy),
        "not executable while switching"
    );
    rig.seen("power", |v| v == &Value::from("on")).await;
    assert_eq!(sim.state().power, Power::On);
    rig.set("tilt_up", Value::Boolean(true)).await.unwrap();
    rig.set("tilt_up", Value::Boolean(false)).await.unwrap();
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_a_move_drives_the_camera_and_releasing_stops_it() {
    let sim = sim(slow()).await;
    let mut rig = Rig::start(sim.addr()).await;
    rig.set("pan_left", Value::Boolean(true)).await.unwrap();
    assert_eq!(rig.value("pan_left").await, Value::Boolean(true));
    rig.seen("pan", |v| int(v) < -100).await;
    rig.set("pan_left", Value::Boolean(false)).await.unwrap();
    let stopped = sim.state();
    assert!(!stopped.moving && stopped.pan < -100, "{stopped:?}");
    assert_eq!(
        int(&rig.value("pan").await),
        i64::from(stopped.pan),
        "the resting position is read back at once"
    );
    // Pan and tilt combine; releasing one keeps the other going.
    rig.set("pan_right", Value::Boolean(true)).await.unwrap();
    rig.set("tilt_up", Value::Boolean(true)).await.unwrap();
    camera_until(&sim, "a diagonal move", |s| {
        s.pan > stopped.pan && s.tilt > 100
    })
    .await;
    rig.set("pan_right", Value::Boolean(false)).await.unwrap();
    let pan = sim.state().pan;
    camera_until(&sim, "tilt on its own", |s| s.tilt > 300).await;
    assert_eq!(sim.state().pan, pan, "pan stopped");
    rig.set("tilt_up", Value::Boolean(false)).await.unwrap();
    rig.set("zoom_in", Value::Boolean(true)).await.unwrap();
    rig.seen("zoom", |v| int(v) > 100).await;
    rig.set("zoom_in", Value::Boolean(false)).await.unwrap();
    assert!(!sim.state().moving, "every axis stopped");
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_releases_the_button_of_a_panel_that_drops() {
    let sim = sim(slow()).await;
    let mut rig = Rig::start(sim.addr()).await;
    let mut raw = Raw::connect(rig.bus.tcp).await;
    raw.hello("tablet", None).await;
    raw.send(&ClientMsg::Set {
        id: 1,
        topic: topic("pan_right"),
        value: Value::Boolean(true),
        timeout_ms: None,
    })
    .await;
    raw.recv_until(|m| matches!(m, BusMsg::Ok { id: 1, .. }))
        .await;
    camera_until(&sim, "panning right", |s| s.moving && s.pan > 0).await;
    drop(raw); // Wi-Fi gone, no goodbye.
    let at = camera_until(&sim, "the camera to stop", |s| !s.moving).await;
    assert!(
        at.pan < 0x2200,
        "stopped by the release, not the end of the range"
    );
    rig.seen("pan_right", |v| v == &Value::Boolean(false)).await;
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_store_and_recall_positions_that_panels_see() {
    let sim = sim(SimConfig::fast()).await;
    let rig = Rig::start(sim.addr()).await;
    let remote = sim.panel();
    remote
        .press(Command::MoveTo(
            Position {
                pan: 1500,
                tilt: -300,
            },
            Speed::MAX,
        ))
        .unwrap();
    remote.press(Command::ZoomTo(5000)).unwrap();
    camera_until(&sim, "the stored position", |s| {
        (s.pan, s.tilt, s.zoom, s.moving) == (1500, -300, 5000, false)
    })
    .await;
    rig.call("store", preset(2)).await.unwrap();
    rig.call("home", Value::Nil).await.unwrap();
    assert_eq!(int(&rig.value("pan").await), 0);
    remote.press(Command::ZoomTo(0)).unwrap();
    rig.call("recall", preset(2)).await.unwrap();
    let seen = [
        rig.value("pan").await,
        rig.value("tilt").await,
        rig.value("zoom").await,
    ];
    assert_eq!(seen.map(|v| int(&v)), [1500, -300, 5000]);
    rig.call("home", Value::Nil).await.unwrap();
    rig.call("recall", Value::from(2)).await.unwrap();
    assert_eq!(
        int(&rig.value("pan").await),
        1500,
        "a plain number works too"
    );
    for bad in [preset(16), preset(-1), Value::from("two"), Value::Nil] {
        assert_eq!(
            rig.call("recall", bad.clone()).await,
            Err(ErrorCode::InvalidValue),
            "{bad:?}"
        );
    }
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_made_at_the_camera_reach_panels_by_polling() {
    let sim = sim(SimConfig::fast()).await;
    let mut rig = Rig::start(sim.addr()).await;
    let remote = sim.panel();
    remote
        .press(Command::MoveTo(
            Position {
                pan: -1234,
                tilt: 567,
            },
            Speed::MAX,
        ))
        .unwrap();
    remote.press(Command::ZoomTo(4000)).unwrap();
    rig.seen("pan", |v| int(v) == -1234).await;
    rig.seen("tilt", |v| int(v) == 567).await;
    rig.seen("zoom", |v| int(v) == 4000).await;
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_datagrams_are_retransmitted_and_commands_succeed() {
    let sim = sim(SimConfig {
        drop_every: Some(3),
        ..slow()
    })
    .await;
    let (rig, _) = Rig::with(sim.addr()).await;
    for _ in 0..3 {
        rig.set("tilt_up", Value::Boolean(true)).await.unwrap();
        camera_until(&sim, "tilting", |s| s.moving).await;
        rig.set("tilt_up", Value::Boolean(false)).await.unwrap();
        assert!(!sim.state().moving);
    }
    rig.call("store", preset(1)).await.unwrap();
    rig.call("home", Value::Nil).await.unwrap();
    rig.call("recall", preset(1)).await.unwrap();
    let state = sim.state();
    assert!(state.tilt > 0 && state.dropped > 0, "{state:?}");
    assert_eq!(int(&rig.value("tilt").await), i64::from(state.tilt));
    assert_eq!(rig.value("online").await, Value::Boolean(true));
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_goes_away_is_offline_until_it_comes_back() {
    let sim = sim(SimConfig::fast()).await;
    let addr = sim.addr();
    let mut rig = Rig::start(addr).await;
    within("the camera to stop", sim.stop()).await;
    rig.seen("online", |v| v == &Value::Boolean(false)).await;
    let pan = rig.panel.get(&topic("pan")).await.unwrap().unwrap();
    assert_eq!(pan.quality, Some(Quality::Offline));
    assert_eq!(
        rig.set("pan_left", Value::Boolean(true)).await,
        Err(ErrorCode::DeviceOffline)
    );
    let sim = Sim::start(addr, SimConfig::fast()).await.unwrap();
    rig.seen("online", |v| v == &Value::Boolean(true)).await;
    rig.call("home", Value::Nil).await.unwrap();
    rig.set("pan_left", Value::Boolean(true)).await.unwrap();
    rig.set("pan_left", Value::Boolean(false)).await.unwrap();
    assert!(sim.state().pan < 0);
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_camera_is_logged_and_ignored() {
    let sim = sim(SimConfig::fast()).await;
    let (mut rig, local) = Rig::with(sim.addr()).await;
    let to = local.get().expect("connected, so bound");
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![1, 2, 3],
        vec![0xFF; 100],
        vec![0x01, 0x11, 0x00, 0x09, 0, 0, 0, 1, 0x90, 0xFF],
        vec![0x03, 0x00, 0x00, 0x01, 0, 0, 0, 9, 0x01],
        vec![0x01, 0x11, 0x00, 0x04, 0, 0, 0, 2, 0x90, 0x60, 0x42, 0xFF],
        vec![0x02, 0x00, 0x00, 0x02, 0, 0, 0, 2, 0x0F, 0x07],
        Datagram::command(Seq(3), &Command::Home).encode(),
        Datagram::reply(Seq(0xFFFF), &Reply::Completion(1)).encode(),
        Datagram::control(Seq(77), Control::Error(ControlError::Sequence)).encode(),
    ];
    for bytes in &garbage {
        sim.inject(to, bytes).await.unwrap();
    }
    // Commands and polls go on; the device never went offline (its task did not die).
    rig.set("pan_right", Value::Boolean(true)).await.unwrap();
    rig.set("pan_right", Value::Boolean(false)).await.unwrap();
    rig.seen("pan", |v| int(v) > 0).await;
    while let Some(Some(event)) = rig.sub.next().now_or_never() {
        if let avbus::client::SubEvent::Update(u) = event {
            assert!(u.topic != topic("online") || u.value == Value::Boolean(true));
        }
    }
    assert_eq!(local.get(), Some(to), "the same link throughout");
    rig.bus.shutdown().await;
}

/// A scripted camera that follows Sony's sequence rules and can lose the reply to the
/// next command or inquiry (performing it), as a network would.
#[derive(Default)]
struct Script {
    last: Option<Seq>,
    lose_command: bool,
    lose_inquiry: bool,
    resets: u32,
    commands: Vec<(Seq, Command)>,
    inquiries: Vec<Seq>,
    /// Numbers that arrived again after being performed (answered `0F 01`).
    repeats: Vec<Seq>,
}

async fn scripted_camera() -> (SocketAddr, Arc<Mutex<Script>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let script = Arc::new(Mutex::new(Script::default()));
    let s = script.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(dg) = decode_datagram(&buf[..n]) else {
                continue;
            };
            let replies = answer(&mut s.lock().unwrap(), &dg);
            for reply in replies {
                let _ = sock.send_to(&reply.encode(), from).await;
            }
        }
    });
    (addr, script)
}

fn answer(st: &mut Script, dg: &Datagram) -> Vec<Datagram> {
    let seq = dg.seq;
    if dg.kind == PayloadType::Control {
        st.last = None;
        st.resets += 1;
        return vec![Datagram::control_reply(seq, ControlReply::Ack)];
    }
    let in_order = st.last.map_or(seq.0 <= 1, |last| seq == last.next());
    if !in_order {
        if st.last == Some(seq) {
            st.repeats.push(seq);
        }
        return vec![Datagram::control(
            seq,
            Control::Error(ControlError::Sequence),
        )];
    }
    st.last = Some(seq);
    let bytes = dg.payload.as_bytes();
    if let Ok(cmd) = Command::decode(bytes) {
        st.commands.push((seq, cmd));
        if std::mem::take(&mut st.lose_command) {
            return vec![];
        }
        return vec![
            Datagram::reply(seq, &Reply::Ack(1)),
            Datagram::reply(seq, &Reply::Completion(1)),
        ];
    }
    let answer = match Inquiry::decode(bytes) {
        Ok(Inquiry::Power) => Answer::Power(Power::On),
        Ok(Inquiry::ZoomPosition) => Answer::ZoomPosition(0),
        Ok(Inquiry::PanTiltPosition) => Answer::PanTiltPosition(Position::default()),
        Err(_) => return vec![],
    };
    st.inquiries.push(seq);
    if std::mem::take(&mut st.lose_inquiry) {
        return vec![];
    }
    vec![Datagram::reply(seq, &Reply::Data(answer.encode()))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_recovered_without_performing_twice() {
    let (cam, script) = scripted_camera().await;
    let (rig, _) = Rig::with(cam).await;
    script.lock().unwrap().lose_command = true;
    rig.set("tilt_down", Value::Boolean(true)).await.unwrap();
    {
        let st = script.lock().unwrap();
        let drives: Vec<Seq> = st
            .commands
            .iter()
            .filter(|(_, c)| matches!(c, Command::Drive(Direction::Down, _)))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(drives.len(), 1, "performed once");
        assert_eq!(st.repeats, drives, "the retransmission got 0F 01");
    }
    // A lost inquiry answer: asked again with a new number, and the camera stays up.
    script.lock().unwrap().lose_inquiry = true;
    within("the inquiry to be asked again", async {
        loop {
            let done = {
                let st = script.lock().unwrap();
                st.repeats.len() == 2 && st.inquiries.last() > st.repeats.last()
            };
            if done {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(script.lock().unwrap().resets, 1, "never reconnected");
    assert_eq!(rig.value("online").await, Value::Boolean(true));
    rig.bus.shutdown().await;
}

#[test]
fn check_names_the_key_at_fault() {
    let ok = entry("127.0.0.1:52381".parse().unwrap());
    assert_eq!(adapter::check(&ok), Ok(()));
    let cases = [
        (
            DeviceConfig {
                host: None,
                ..ok.clone()
            },
            "host",
        ),
        (
            DeviceConfig {
                port: Some(0),
                ..ok.clone()
            },
            "port",
        ),
        (
            DeviceConfig {
                password: Some("x".into()),
                ..ok.clone()
            },
            "password",
        ),
        (
            DeviceConfig {
                poll_ms: Some(0),
                ..ok.clone()
            },
            "poll_ms",
        ),
    ];
    for (d, key) in cases {
        let e = adapter::check(&d).unwrap_err();
        assert!(e.contains(key), "{e}");
    }
    let d = DeviceConfig {
        port: None,
        poll_ms: None,
        ..ok
    };
    let s = ViscaSettings::from_device(&d).unwrap();
    assert_eq!((s.port, s.poll), (52381, Duration::from_secs(1)));
    let desc = adapter::descriptor("studio", "cam", "Camera");
    assert_eq!(
        (desc.class.as_str(), desc.driver.as_str()),
        ("camera", "visca")
    );
    assert!(desc.validate().is_ok());
}
