//! The X32 console adapter end to end: an in-process bus, the simulated console
//! (`devices/x32/sim.rs`) on a real UDP socket, the adapter on the kit, and panels.
//! Faders and their dB view, mutes, names, changes made at the desk, meters, renewed
//! subscriptions, a console that forgets its meters, one that goes away and comes back,
//! and garbage; then the simulator on its own, through a raw UDP socket. Every wait is
//! bounded by [`within`]; nothing sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use avbus::bus::BusHandle;
use avbus::client::{Client, SubEvent, Subscription};
use avbus::config::DeviceConfig;
use avbus::devices::kit::Host;
use avbus::devices::x32::adapter::{self, LocalAddr, Retry, X32Settings};
use avbus::devices::x32::proto::{
    db_to_fader, encode_bundle, encode_meter_blob, fader_to_db, quantize_fader, Channel, MeterBank,
    Param, ParamValue, Reply, Request,
};
use avbus::devices::x32::sim::{Sim, SimConfig, SimState};
use avbus::model::Quality;
use avbus::protocol::{ErrorCode, Role};
use avbus::value::Value;
use futures_util::{FutureExt, StreamExt};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const DEVICE: &str = "hall/console";

fn topic(control: &str) -> String {
    format!("{DEVICE}/{control}")
}

/// Test settings: short retransmission, renewals and meter silence.
fn settings(console: SocketAddr) -> X32Settings {
    let mut s = X32Settings::from_device(&x32_entry(console)).unwrap();
    s.retry = Retry {
        try_timeout: Duration::from_millis(100),
        tries: 3,
    };
    s.renew = Duration::from_millis(200);
    s.meter_silence = Duration::from_millis(200);
    s
}

/// The value a panel sees for a fader set to (or moved to) `f`.
fn shown(f: f32) -> Value {
    Value::F64((f64::from(quantize_fader(f)) * 1e4).round() / 1e4)
}

/// A bus, the adapter for `hall/console` and a panel watching the console.
struct Rig {
    bus: BusHandle,
    panel: Client,
    sub: Subscription,
    _cancel: CancellationToken,
}

impl Rig {
    /// Returns once the console is online with the values the tests read first shown.
    async fn start(settings: X32Settings) -> Rig {
        let bus = bus(config()).await;
        let host = Host::start(client(&bus, "x32-adapter", Role::Adapter).await).await;
        let cancel = CancellationToken::new();
        host.spawn(move || settings.driver(), cancel.clone());
        let panel = client(&bus, "panel", Role::Panel).await;
        let sub = ready(
            &panel,
            DEVICE,
            &["model", "ch01_name", "ch01_fader", "ch02_mute"],
        )
        .await;
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

    async fn quality(&self, control: &str) -> Option<Quality> {
        let record = self.panel.get(&topic(control)).await.unwrap().unwrap();
        record.quality
    }

    async fn set(&self, control: &str, value: Value) -> Result<(), ErrorCode> {
        let r = self.panel.set(&topic(control), value).await;
        r.map(drop).map_err(|e| e.code)
    }

    async fn seen(&mut self, control: &str, pred: impl Fn(&Value) -> bool) -> Value {
        seen(&mut self.sub, control, pred).await
    }

    /// Reads `meters` (telemetry: readable, not streamed over TCP) until a frame
    /// satisfies `pred`.
    async fn meters_until(&self, what: &str, pred: impl Fn(&[f64]) -> bool) -> Vec<f64> {
        within(what, async {
            loop {
                let v = self.value("meters").await;
                if let Some(levels) = levels(&v) {
                    if pred(&levels) {
                        return levels;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
        .await
    }

    /// Fails if the console went offline at any point the subscription saw.
    fn never_offline(&mut self) {
        while let Some(Some(event)) = self.sub.next().now_or_never() {
            if let SubEvent::Update(u) = event {
                assert!(u.topic != topic("online") || u.value == Value::Boolean(true));
            }
        }
    }
}

async fn seen(sub: &mut Subscription, control: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t = topic(control);
    // A record without a value yet (the device just came online) proves nothing.
    until(sub, |u| u.topic == t && !u.value.is_nil() && pred(&u.value))
        .await
        .value
}

/// The 32 levels of a `meters` value.
fn levels(v: &Value) -> Option<Vec<f64>> {
    let levels: Option<Vec<f64>> = v.as_array()?.iter().map(Value::as_f64).collect();
    levels.filter(|l| l.len() == 32)
}

/// Waits until the console itself satisfies `pred`.
async fn console_until(sim: &Sim, what: &str, pred: impl Fn(&SimState) -> bool) -> SimState {
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
async fn a_fader_set_from_a_panel_reaches_the_console_and_comes_back() {
    let sim = sim(SimConfig::fast()).await;
    let mut rig = Rig::start(settings(sim.addr())).await;
    assert_eq!(rig.value("model").await, Value::from("X32"));
    assert_eq!(rig.value("ch01_name").await, Value::from("Lectern"));
    assert_eq!(rig.value("ch01_fader").await, shown(0.75));
    rig.set("ch03_fader", Value::F64(0.5)).await.unwrap();
    assert_eq!(sim.state().strip(3).fader, quantize_fader(0.5));
    assert_eq!(rig.value("ch03_fader").await, shown(0.5));
    rig.seen("ch03_fader", |v| v == &shown(0.5)).await;
    let db = rig
        .panel
        .get(&topic("ch03_fader_db"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db.display.as_deref(), Some("-10.0 dB"));

    // The dB view goes through the console's fader law, onto its steps.
    rig.set("ch04_fader_db", Value::F64(-30.0)).await.unwrap();
    let stored = sim.state().strip(4).fader;
    assert_eq!(stored, quantize_fader(db_to_fader(-30.0)));
    assert_eq!(rig.value("ch04_fader").await, shown(stored));
    assert_eq!(rig.value("ch04_fader_db").await, Value::F64(-30.0));
    rig.set("ch04_fader_db", Value::F64(-90.0)).await.unwrap();
    assert_eq!(sim.state().strip(4).fader, 0.0, "-90 dB is -oo: the bottom");
    assert_eq!(fader_to_db(sim.state().strip(4).fader), -90.0);

    rig.set("ch05_name", Value::from("Choir")).await.unwrap();
    assert_eq!(sim.state().strip(5).name, "Choir");
    assert_eq!(rig.value("ch05_name").await, Value::from("Choir"));
    for (control, bad, code) in [
        ("ch03_fader", Value::F64(1.5), ErrorCode::InvalidValue),
        (
            "ch05_name",
            Value::from("far too long a name"),
            ErrorCode::InvalidValue,
        ),
        (
            "ch05_name",
            Value::from("tab\there"),
            ErrorCode::InvalidValue,
        ),
        ("ch05_name", Value::from("Chœur"), ErrorCode::InvalidValue),
        ("meters", Value::from(1), ErrorCode::NotWritable),
        ("model", Value::from("M32"), ErrorCode::NotWritable),
    ] {
        assert_eq!(
            rig.set(control, bad.clone()).await,
            Err(code),
            "{control} {bad:?}"
        );
    }
    assert_eq!(sim.state().strip(5).name, "Choir");
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_at_the_desk_reach_panels_as_pushes() {
    let sim = sim(SimConfig::fast()).await;
    let mut rig = Rig::start(settings(sim.addr())).await;
    let desk = sim.panel();
    desk.set_fader(5, 0.25).unwrap();
    rig.seen("ch05_fader", |v| v == &shown(0.25)).await;
    rig.seen("ch05_fader_db", |v| v == &Value::F64(-30.0)).await;
    desk.set_on(6, false).unwrap();
    rig.seen("ch06_mute", |v| v == &Value::Boolean(true)).await;
    desk.set_name(32, "Spare").unwrap();
    rig.seen("ch32_name", |v| v == &Value::from("Spare")).await;
    assert!(sim.state().pushes >= 3);
    rig.never_offline();
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_is_the_consoles_on_inverted() {
    let sim = sim(SimConfig::fast()).await;
    let mut rig = Rig::start(settings(sim.addr())).await;
    assert_eq!(rig.value("ch02_mute").await, Value::Boolean(false));
    assert!(sim.state().strip(2).on);
    rig.set("ch02_mute", Value::Boolean(true)).await.unwrap();
    assert!(!sim.state().strip(2).on, "muted: /ch/02/mix/on 0");
    assert_eq!(rig.value("ch02_mute").await, Value::Boolean(true));
    rig.set("ch02_mute", Value::from("off")).await.unwrap();
    assert!(sim.state().strip(2).on);
    sim.panel().set_on(2, false).unwrap();
    rig.seen("ch02_mute", |v| v == &Value::Boolean(true)).await;
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_arrive_move_and_follow_fader_and_mute() {
    let sim = sim(SimConfig::fast()).await;
    let rig = Rig::start(settings(sim.addr())).await;
    let first = rig.meters_until("a meter frame", |_| true).await;
    assert!(
        first.iter().all(|db| (-90.0..=18.0).contains(db)),
        "{first:?}"
    );
    rig.meters_until("the meters to move", |l| l != first.as_slice())
        .await;
    let record = rig.panel.get(&topic("meters")).await.unwrap().unwrap();
    assert_eq!(record.quality, Some(Quality::Ok));

    // Muted, channel 1 is silent (the floor) while playback on channel 7 plays on.
    rig.set("ch01_mute", Value::Boolean(true)).await.unwrap();
    assert_eq!(sim.state().strip(1).level, 0.0);
    rig.meters_until("channel 1 silent", |l| l[0] == -90.0 && l[6] > -90.0)
        .await;
    rig.set("ch01_mute", Value::Boolean(false)).await.unwrap();
    rig.meters_until("channel 1 back", |l| l[0] > -90.0).await;
    // The fader at the bottom (-oo) silences it too.
    rig.set("ch01_fader", Value::F64(0.0)).await.unwrap();
    rig.meters_until("channel 1 at -oo", |l| l[0] == -90.0)
        .await;
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_renewed_before_they_lapse() {
    let sim = sim(SimConfig {
        xremote_ttl: Duration::from_millis(600),
        meters_ttl: Duration::from_millis(600),
        ..SimConfig::fast()
    })
    .await;
    let mut rig = Rig::start(settings(sim.addr())).await;
    // A renewal of each every 200 ms: twenty span far longer than either subscription
    // lives unrenewed.
    let state = console_until(&sim, "twenty renewals of each", |s| {
        s.remote_renewals >= 20 && s.meter_renewals >= 20
    })
    .await;
    assert_eq!((state.remotes, state.meter_subs), (1, 1), "{state:?}");
    sim.panel().set_fader(9, 0.1).unwrap();
    rig.seen("ch09_fader", |v| v == &shown(0.1)).await;
    let frame = rig.meters_until("a meter frame", |_| true).await;
    rig.meters_until("the meters to move", |l| l != frame.as_slice())
        .await;
    rig.never_offline();
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_the_console_forgot_are_subscribed_again() {
    // The meter subscription lapses long before the adapter's first renewal.
    let sim = sim(SimConfig {
        meters_ttl: Duration::from_millis(300),
        ..SimConfig::fast()
    })
    .await;
    let mut s = settings(sim.addr());
    s.renew = Duration::from_secs(8);
    let mut rig = Rig::start(s).await;
    let state = console_until(&sim, "a second subscription", |s| s.subscriptions >= 2).await;
    assert_eq!(state.meter_subs, 1, "{state:?}");
    let frame = rig.meters_until("a meter frame", |_| true).await;
    rig.meters_until("the meters to move", |l| l != frame.as_slice())
        .await;
    assert_eq!(rig.value("online").await, Value::Boolean(true));
    rig.never_offline();
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_that_goes_away_is_offline_until_it_comes_back() {
    let sim = sim(SimConfig::fast()).await;
    let addr = sim.addr();
    let mut rig = Rig::start(settings(addr)).await;
    rig.meters_until("a meter frame", |_| true).await;
    within("the console to stop", sim.stop()).await;
    rig.seen("online", |v| v == &Value::Boolean(false)).await;
    assert_eq!(rig.quality("ch01_fader").await, Some(Quality::Offline));
    assert_eq!(rig.quality("meters").await, Some(Quality::Offline));
    assert_eq!(
        rig.set("ch01_fader", Value::F64(0.2)).await,
        Err(ErrorCode::DeviceOffline)
    );
    let sim = Sim::start(addr, SimConfig::fast()).await.unwrap();
    rig.seen("online", |v| v == &Value::Boolean(true)).await;
    rig.set("ch01_fader", Value::F64(0.2)).await.unwrap();
    assert_eq!(sim.state().strip(1).fader, quantize_fader(0.2));
    assert_eq!(rig.quality("ch01_fader").await, Some(Quality::Ok));
    let frame = rig.meters_until("a fresh meter frame", |_| true).await;
    rig.meters_until("the meters to move", |l| l != frame.as_slice())
        .await;
    assert_eq!(rig.quality("meters").await, Some(Quality::Ok));
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_restarted_behind_the_adapters_back_is_read_again() {
    let sim = sim(SimConfig::fast()).await;
    let addr = sim.addr();
    let mut rig = Rig::start(settings(addr)).await;
    rig.set("ch10_fader", Value::F64(0.1)).await.unwrap();
    rig.set("ch10_mute", Value::Boolean(true)).await.unwrap();
    // A restart recalls the console's default scene and forgets every subscription.
    within("the console to stop", sim.stop()).await;
    let sim = Sim::start(addr, SimConfig::fast()).await.unwrap();
    rig.seen("ch10_fader", |v| v == &shown(0.75)).await;
    rig.seen("ch10_mute", |v| v == &Value::Boolean(false)).await;
    console_until(&sim, "the subscriptions back", |s| {
        s.remotes == 1 && s.meter_subs == 1
    })
    .await;
    sim.panel().set_on(10, false).unwrap();
    rig.seen("ch10_mute", |v| v == &Value::Boolean(true)).await;
    rig.bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_console_is_logged_and_ignored() {
    let sim = sim(SimConfig::fast()).await;
    let s = settings(sim.addr());
    let local: LocalAddr = s.local_addr();
    let mut rig = Rig::start(s).await;
    let to = local.get().expect("connected, so bound");
    let fader = Param::Fader(Channel::new(1).unwrap()).address();
    let osc = |addr: &str, args: Vec<rosc::OscType>| {
        let m = rosc::OscMessage {
            addr: addr.into(),
            args,
        };
        rosc::encoder::encode(&rosc::OscPacket::Message(m)).unwrap()
    };
    let blob = |bytes: Vec<u8>| osc("/meters/1", vec![rosc::OscType::Blob(bytes)]);
    let mut truncated_blob = encode_meter_blob(&[0.5; 96]);
    truncated_blob.truncate(200);
    let set = Request::Set(Param::On(Channel::new(2).unwrap()), ParamValue::On(false)).encode();
    let nested = (0..6).fold(Request::XInfo.encode(), |inner, _| {
        encode_bundle(&[inner]).unwrap()
    });
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![1, 2, 3],
        vec![0xFF; 100],
        vec![b'/'; 5000],
        set[..set.len() - 3].to_vec(),
        osc(&fader, vec![rosc::OscType::String("loud".into())]),
        osc(&fader, vec![rosc::OscType::Float(f32::INFINITY)]),
        osc(
            "/ch/01/config/name",
            vec![rosc::OscType::String("x".repeat(40))],
        ),
        osc("/xinfo", vec![rosc::OscType::Int(1)]),
        blob(1000i32.to_le_bytes().to_vec()),
        blob((-5i32).to_le_bytes().to_vec()),
        blob(truncated_blob),
        blob(vec![]),
        // Well-formed, just not modelled: ignored quietly.
        osc("/ch/01/eq/1/g", vec![rosc::OscType::Float(0.5)]),
        osc(
            "/meters/1",
            vec![rosc::OscType::Blob(encode_meter_blob(&[0.5; 4]))],
        ),
        nested,
    ];
    for bytes in &garbage {
        sim.inject(to, bytes).await.unwrap();
    }
    // Commands and meters go on; the console never went offline (its task did not die).
    rig.set("ch04_fader", Value::F64(0.3)).await.unwrap();
    assert_eq!(sim.state().strip(4).fader, quantize_fader(0.3));
    let frame = rig.meters_until("a meter frame", |_| true).await;
    rig.meters_until("the meters to move", |l| l != frame.as_slice())
        .await;
    rig.never_offline();
    assert_eq!(local.get(), Some(to), "the same link throughout");
    rig.bus.shutdown().await;
}

// ----- the simulator on its own -----------------------------------------------------

/// A raw OSC client of the simulator.
struct Raw {
    socket: UdpSocket,
}

impl Raw {
    async fn new(console: SocketAddr) -> Raw {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(console).await.unwrap();
        Raw { socket }
    }

    async fn send(&self, r: &Request) {
        self.socket.send(&r.encode()).await.unwrap();
    }

    async fn recv(&self) -> Reply {
        let mut buf = vec![0u8; 8192];
        let n = within("a datagram from the console", self.socket.recv(&mut buf))
            .await
            .unwrap();
        let mut replies = Reply::decode(&buf[..n]).unwrap();
        assert_eq!(replies.len(), 1);
        replies.remove(0)
    }

    /// Reads until a reply satisfies `pred`.
    async fn recv_until(&self, pred: impl Fn(&Reply) -> bool) -> Reply {
        loop {
            let r = self.recv().await;
            if pred(&r) {
                return r;
            }
        }
    }
}

fn ch(n: u8) -> Channel {
    Channel::new(n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_pushes_only_while_xremote_lives() {
    let sim = sim(SimConfig {
        xremote_ttl: Duration::from_millis(300),
        max_remotes: 1,
        ..SimConfig::fast()
    })
    .await;
    let (a, b) = (Raw::new(sim.addr()).await, Raw::new(sim.addr()).await);
    a.send(&Request::XRemote).await;
    a.send(&Request::Get(Param::On(ch(1)))).await;
    a.recv().await;
    sim.panel().set_fader(1, 0.1).unwrap();
    let push = Reply::Param(Param::Fader(ch(1)), ParamValue::Fader(quantize_fader(0.1)));
    assert_eq!(a.recv().await, push);
    // A set is echoed to the remotes, its sender included.
    a.send(&Request::Set(Param::On(ch(2)), ParamValue::On(false)))
        .await;
    let echo = Reply::Param(Param::On(ch(2)), ParamValue::On(false));
    assert_eq!(a.recv().await, echo);
    // Every slot taken: the second client is refused.
    b.send(&Request::XRemote).await;
    b.send(&Request::Status).await;
    assert!(matches!(b.recv().await, Reply::Status(s) if s.state == "active"));
    assert_eq!(sim.state().refused, 1);

    console_until(&sim, "the subscription to lapse", |s| s.remotes == 0).await;
    let pushes = sim.state().pushes;
    sim.panel().set_fader(1, 0.9).unwrap();
    // Had a push been sent, it would come before this answer.
    a.send(&Request::Get(Param::Name(ch(1)))).await;
    let name = Reply::Param(Param::Name(ch(1)), ParamValue::Name("Lectern".into()));
    assert_eq!(a.recv().await, name);
    assert_eq!(sim.state().pushes, pushes);
    // Gets are answered whatever the subscription.
    a.send(&Request::Get(Param::Fader(ch(1)))).await;
    let fader = Reply::Param(Param::Fader(ch(1)), ParamValue::Fader(quantize_fader(0.9)));
    assert_eq!(a.recv().await, fader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_streams_meters_until_the_subscription_lapses() {
    let sim = sim(SimConfig {
        meters_ttl: Duration::from_millis(300),
        ..SimConfig::fast()
    })
    .await;
    let raw = Raw::new(sim.addr()).await;
    let bank = MeterBank::Channels;
    raw.send(&Request::Meters {
        bank,
        time_factor: 1,
    })
    .await;
    let mut frames: Vec<Vec<f32>> = Vec::new();
    while frames.len() < 3 {
        match raw.recv().await {
            Reply::Meters(b, values) if b == bank => frames.push(values),
            other => panic!("{other:?}"),
        }
    }
    assert!(frames.iter().all(|f| f.len() == 96));
    assert!(frames
        .iter()
        .all(|f| f.iter().all(|v| (0.0..=8.0).contains(v))));
    assert!(
        frames.windows(2).any(|w| w[0][..32] != w[1][..32]),
        "moving"
    );
    raw.send(&Request::Meters {
        bank: MeterBank::Overview,
        time_factor: 2,
    })
    .await;
    let overview = raw
        .recv_until(|r| matches!(r, Reply::Meters(MeterBank::Overview, _)))
        .await;
    assert!(matches!(overview, Reply::Meters(_, v) if v.len() == 70));

    console_until(&sim, "the subscriptions to lapse", |s| s.meter_subs == 0).await;
    // Drain blobs already on their way, then nothing but answers.
    raw.send(&Request::Status).await;
    raw.recv_until(|r| matches!(r, Reply::Status(_))).await;
    raw.send(&Request::Renew(Some(bank))).await;
    raw.send(&Request::XInfo).await;
    assert!(
        matches!(raw.recv().await, Reply::XInfo(i) if i.model == "X32"),
        "a lapsed bank is not renewed"
    );
    assert_eq!(sim.state().meter_subs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_ignores_and_counts_malformed_datagrams() {
    let sim = sim(SimConfig::fast()).await;
    let raw = Raw::new(sim.addr()).await;
    let malformed: Vec<Vec<u8>> = vec![
        vec![],
        vec![0; 3],
        b"not osc at all".to_vec(),
        vec![b'/'; 5000],
        Request::XInfo.encode()[..5].to_vec(),
        Request::Set(Param::Name(ch(1)), ParamValue::Name("bad\u{7}".into())).encode(),
    ];
    for bytes in &malformed {
        raw.socket.send(bytes).await.unwrap();
    }
    raw.send(&Request::Other("/config/userctrl/A/color".into()))
        .await;
    raw.send(&Request::XInfo).await;
    assert!(matches!(raw.recv().await, Reply::XInfo(_)));
    let state = sim.state();
    assert_eq!((state.malformed, state.unknown), (6, 1), "{state:?}");
    assert_eq!(state.strip(1).name, "Lectern");
}

#[test]
fn check_names_the_key_at_fault() {
    let ok = x32_entry("127.0.0.1:10023".parse().unwrap());
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
                poll_ms: Some(5),
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
    let s = X32Settings::from_device(&d).unwrap();
    assert_eq!((s.port, s.poll), (10023, Duration::from_secs(10)));
    let desc = adapter::descriptor("hall", "console", "Console", 1);
    assert_eq!(
        (desc.class.as_str(), desc.driver.as_str()),
        ("console", "x32-osc")
    );
    assert!(desc.validate().is_ok());
    assert_eq!(desc.controls.len(), 2 + 32 * 4 + 1);
    assert!(desc.control("ch32_fader_db").is_some() && desc.control("meters").is_some());
    let quiet = adapter::descriptor("hall", "console", "Console", 0);
    assert!(quiet.control("meters").is_none());
}
