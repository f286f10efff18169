//! The Q-SYS QRC adapter end to end: a simulated Core (`qrc::sim`) on 127.0.0.1:0, the
//! adapter on the kit's `Host` over an in-process bus, and panels over TCP. Covers
//! discovery, gains (dB display and position), mutes, text, a preset recall through
//! `call`, changes pushed by the Core's AutoPoll, logon, the Core stopping and coming
//! back on the same port, a new design, garbage from the Core, the keepalive, and a
//! Core that goes silent. Every wait is bounded by `within` or a `timeout`.

use std::net::SocketAddr;
use std::time::Duration;

use avbus::bus::BusHandle;
use avbus::client::Client;
use avbus::config::DeviceConfig;
use avbus::devices::kit::{DeviceError, Driver, Host};
use avbus::devices::qrc::adapter::{self, QrcDriver};
use avbus::devices::qrc::proto::Value as QrcValue;
use avbus::devices::qrc::sim::{Sim, SimConfig, SimControl};
use avbus::model::{position, Quality, Taper};
use avbus::protocol::{ErrorCode, Role, Update};
use avbus::value::Value;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::*;

fn entry(name: &str, port: u16, password: Option<&str>, poll_ms: u64) -> DeviceConfig {
    DeviceConfig {
        room: "hall".into(),
        name: name.into(),
        driver: "qrc".into(),
        label: None,
        host: Some("127.0.0.1".into()),
        port: Some(port),
        password: password.map(Into::into),
        poll_ms: Some(poll_ms),
    }
}

async fn start_sim(addr: SocketAddr, cfg: SimConfig) -> Sim {
    within("the sim to start", Sim::start(addr, cfg))
        .await
        .expect("sim starts")
}

/// A bus, a simulated Core, the adapter serving it as `hall/dsp`, and a panel.
struct Rig {
    bus: BusHandle,
    sim: Sim,
    host: Host,
    panel: Client,
    cancel: CancellationToken,
}

/// `poll_ms` also bounds the adapter's keepalive: short against `SimConfig::fast()`.
async fn rig(cfg: SimConfig, password: Option<&str>, poll_ms: u64) -> Rig {
    let sim = start_sim("127.0.0.1:0".parse().unwrap(), cfg).await;
    let bus = bus(config()).await;
    let host = Host::start(client(&bus, "qrc-adapter", Role::Adapter).await).await;
    let d = entry("dsp", sim.addr().port(), password, poll_ms);
    adapter::check(&d).expect("a good entry");
    let cancel = CancellationToken::new();
    adapter::spawn(&host, &d, cancel.clone());
    let panel = client(&bus, "panel", Role::Panel).await;
    Rig {
        bus,
        sim,
        host,
        panel,
        cancel,
    }
}

/// Waits for `hall/<device>/online` to read `online` on `sub`.
async fn online(sub: &mut avbus::client::Subscription, device: &str, online: bool) {
    let topic = format!("hall/{device}/online");
    until(sub, |u| {
        u.topic == topic && u.value == Value::Boolean(online)
    })
    .await;
}

/// Waits for `control` to carry `value`, confirmed by the device.
async fn confirmed(sub: &mut avbus::client::Subscription, control: &str, value: Value) -> Update {
    let topic = format!("hall/dsp/{control}");
    until(sub, |u| {
        u.topic == topic && u.value == value && u.quality == Some(Quality::Ok)
    })
    .await
}

async fn value_of(panel: &Client, topic: &str) -> Value {
    let got = within(topic, panel.get(topic)).await.unwrap();
    got.expect("retained").value
}

fn gain_position(db: f64) -> f64 {
    position(db, -100.0, 20.0, Taper::Db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gain_set_reaches_the_core_and_comes_back_to_every_panel() {
    let r = rig(SimConfig::fast(), None, 200).await;
    let mut sub = r.panel.subscribe(&["hall/dsp/#"]).await.unwrap();
    online(&mut sub, "dsp", true).await;

    // The design was discovered: one control per component control, typed.
    let desc = avbus::value::to_json(&value_of(&r.panel, "$devices/hall/dsp").await);
    assert_eq!(
        (&desc["class"], &desc["driver"]),
        (&json!("dsp"), &json!("qrc"))
    );
    let names: Vec<&str> = desc["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Mic1.gain",
            "Mic1.mute",
            "Preset.recall",
            "Program.gain",
            "Program.mute",
            "Room.label",
            "online"
        ]
    );
    let gain = &desc["controls"][3];
    assert_eq!(
        (&gain["type"], &gain["min"], &gain["max"]),
        (&json!("float"), &json!(-100.0), &json!(20.0))
    );
    assert_eq!(
        (&gain["unit"], &gain["taper"]),
        (&json!("dB"), &json!("dB"))
    );
    assert_eq!(desc["controls"][2]["type"], json!("trigger"));

    let other = client(&r.bus, "panel-2", Role::Panel).await;
    let mut other_sub = other.subscribe(&["hall/dsp/Program.gain"]).await.unwrap();
    snapshot(&mut other_sub).await;
    within(
        "the set",
        r.panel.set("hall/dsp/Program.gain", Value::F64(-12.0)),
    )
    .await
    .unwrap();
    // Confirmed before `ok`: the Core holds it, and so does the bus.
    let at_core = r.sim.panel().get("Program.gain").unwrap();
    assert_eq!(at_core.value, QrcValue::Number(-12.0));
    assert_eq!(
        value_of(&r.panel, "hall/dsp/Program.gain").await,
        Value::F64(-12.0)
    );
    for sub in [&mut sub, &mut other_sub] {
        let u = confirmed(sub, "Program.gain", Value::F64(-12.0)).await;
        assert_eq!(u.display.as_deref(), Some("-12.0 dB"));
        let p = u.position.expect("a slider position");
        assert!((p - gain_position(-12.0)).abs() < 1e-9, "{p}");
    }
    r.bus.shutdown().await;
    r.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutes_and_text_reach_the_core() {
    let r = rig(SimConfig::fast(), None, 200).await;
    let mut sub = r.panel.subscribe(&["hall/dsp/#"]).await.unwrap();
    online(&mut sub, "dsp", true).await;
    let p = &r.panel;
    within("mute", p.set("hall/dsp/Program.mute", Value::Boolean(true)))
        .await
        .unwrap();
    let mute = r.sim.panel().get("Program.mute").unwrap();
    assert_eq!(
        (mute.value, mute.string.as_str()),
        (QrcValue::Bool(true), "muted")
    );
    let u = confirmed(&mut sub, "Program.mute", Value::Boolean(true)).await;
    assert_eq!(u.display.as_deref(), Some("on"));
    within(
        "unmute",
        p.set("hall/dsp/Program.mute", Value::Boolean(false)),
    )
    .await
    .unwrap();
    let mute = r.sim.panel().get("Program.mute").unwrap();
    assert_eq!(mute.value, QrcValue::Bool(false));

    within("text", p.set("hall/dsp/Room.label", Value::from("Lab 2")))
        .await
        .unwrap();
    assert_eq!(r.sim.panel().get("Room.label").unwrap().string, "Lab 2");
    confirmed(&mut sub, "Room.label", Value::from("Lab 2")).await;
    // Setting what is already there is confirmed too.
    within(
        "same value",
        p.set("hall/dsp/Room.label", Value::from("Lab 2")),
    )
    .await
    .unwrap();
    // Out of the Core's range: refused by the bus from the discovered descriptor.
    let e = within("too loud", p.set("hall/dsp/Mic1.gain", Value::F64(40.0)))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidValue);
    r.bus.shutdown().await;
    r.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_recall_moves_gains_and_mutes_before_ok() {
    let r = rig(SimConfig::fast(), None, 200).await;
    let mut sub = r.panel.subscribe(&["hall/dsp/#"]).await.unwrap();
    online(&mut sub, "dsp", true).await;
    let e = within(
        "set on a trigger",
        r.panel.set("hall/dsp/Preset.recall", Value::from(1)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotWritable);
    within("recall", r.panel.call("hall/dsp/Preset.recall", Value::Nil))
        .await
        .unwrap();
    // Everything the preset moved was published before the answer.
    let expect = [
        ("Program.gain", Value::F64(-20.0)),
        ("Mic1.gain", Value::F64(-6.0)),
        ("Mic1.mute", Value::Boolean(true)),
    ];
    for (control, value) in &expect {
        let topic = format!("hall/dsp/{control}");
        assert_eq!(&value_of(&r.panel, &topic).await, value, "{control}");
    }
    // And reached the subscribed panel, in whatever order the Core reported them.
    let mut missing = expect.to_vec();
    while !missing.is_empty() {
        let u = next_update(&mut sub).await;
        missing.retain(|(control, value)| {
            !(u.topic == format!("hall/dsp/{control}")
                && &u.value == value
                && u.quality == Some(Quality::Ok))
        });
    }
    r.bus.shutdown().await;
    r.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_at_the_core_is_pushed_to_panels_without_a_poll() {
    // Real-Core keepalive and a poll (60 s) far beyond every wait (20 s): only the
    // AutoPoll push can bring the change in time.
    let r = rig(SimConfig::default(), None, 60_000).await;
    let mut sub = ready(&r.panel, "hall/dsp", &["Mic1.gain"]).await;
    assert_eq!(
        value_of(&r.panel, "hall/dsp/Mic1.gain").await,
        Value::F64(-10.0)
    );
    let core = r.sim.panel();
    core.set_value("Mic1.gain", QrcValue::Number(-30.0))
        .unwrap();
    let u = confirmed(&mut sub, "Mic1.gain", Value::F64(-30.0)).await;
    assert_eq!(u.display.as_deref(), Some("-30.0 dB"));
    core.set_value("Program.mute", QrcValue::Bool(true))
        .unwrap();
    core.set_value("Room.label", QrcValue::Text("Keynote".into()))
        .unwrap();
    confirmed(&mut sub, "Program.mute", Value::Boolean(true)).await;
    confirmed(&mut sub, "Room.label", Value::from("Keynote")).await;
    r.bus.shutdown().await;
    r.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_keeps_the_device_offline() {
    let credentials = Some(("admin".to_owned(), "1234".to_owned()));
    let cfg = SimConfig {
        credentials,
        ..SimConfig::fast()
    };
    let r = rig(cfg, Some("admin:nope"), 200).await;
    let mut sub = r.panel.subscribe(&["hall/+/online"]).await.unwrap();
    online(&mut sub, "dsp", false).await;
    // Two attempts at least (each one a connection opened and closed), none logged on.
    let mut seen = r.sim.connections();
    within("two logon attempts", async {
        for _ in 0..4 {
            seen.changed().await.unwrap();
        }
    })
    .await;
    assert_eq!(r.sim.state().logged_on, 0);
    assert_eq!(
        value_of(&r.panel, "hall/dsp/online").await,
        Value::Boolean(false)
    );
    let e = within(
        "a command",
        r.panel.set("hall/dsp/Program.gain", Value::F64(0.0)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::UnknownTopic | ErrorCode::DeviceOffline),
        "{e:?}"
    );

    // The right one, for a second device on the same Core, works.
    let d = entry("dsp2", r.sim.addr().port(), Some("admin:1234"), 200);
    adapter::spawn(&r.host, &d, r.cancel.clone());
    online(&mut sub, "dsp2", true).await;
    within("set", r.panel.set("hall/dsp2/Mic1.gain", Value::F64(-3.0)))
        .await
        .unwrap();
    let gain = r.sim.panel().get("Mic1.gain").unwrap();
    assert_eq!(gain.value, QrcValue::Number(-3.0));
    assert_eq!(
        value_of(&r.panel, "hall/dsp/online").await,
        Value::Boolean(false)
    );
    r.bus.shutdown().await;
    r.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_core_goes_offline_and_comes_back_on_the_same_port() {
    let r = rig(SimConfig::fast(), None, 200).await;
    let mut sub = r.panel.subscribe(&["hall/dsp/#"]).await.unwrap();
    online(&mut sub, "dsp", true).await;
    let addr = r.sim.addr();
    r.sim.stop().await;
    online(&mut sub, "dsp", false).await;
    let gain = within("get", r.panel.get("hall/dsp/Program.gain")).await;
    assert_eq!(gain.unwrap().unwrap().quality, Some(Quality::Offline));
    let e = within(
        "a command",
        r.panel.set("hall/dsp/Program.gain", Value::F64(-1.0)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceOffline);

    // The same design again (with a new design code, as after a reboot).
    let sim = start_sim(addr, SimConfig::fast()).await;
    online(&mut sub, "dsp", true).await;
    within(
        "set",
        r.panel.set("hall/dsp/Program.gain", Value::F64(-3.0)),
    )
    .await
    .unwrap();
    let gain = sim.panel().get("Program.gain").unwrap();
    assert_eq!(gain.value, QrcValue::Number(-3.0));
    r.bus.shutdown().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_design_is_read_and_declared_again() {
    let r = rig(SimConfig::fast(), None, 200).await;
    let mut sub = r
        .panel
        .subscribe(&["hall/dsp/online", "$devices/hall/dsp"])
        .await
        .unwrap();
    online(&mut sub, "dsp", true).await;
    let addr = r.sim.addr();
    r.sim.stop().await;
    online(&mut sub, "dsp", false).await;
    let long = format!("Zone 2 {}.gain", "x".repeat(80));
    let controls = vec![
        SimControl::gain("Zone 2.gain", -10.0),
        SimControl::mute("Zone 2.mute", false),
        SimControl::gain(&long, 0.0),
    ];
    let cfg = SimConfig {
        controls,
        ..SimConfig::fast()
    };
    let sim = start_sim(addr, cfg).await;
    // Names outside the topic alphabet are made valid; too long ones cut and tagged.
    let desc = until(&mut sub, |u| {
        u.topic == "$devices/hall/dsp"
            && avbus::value::to_json(&u.value)["controls"][0]["name"] == json!("Zone_2.gain")
    })
    .await;
    let desc = avbus::value::to_json(&desc.value);
    let tagged = desc["controls"][2]["name"].as_str().unwrap().to_owned();
    assert!(
        tagged.len() <= 64 && tagged.starts_with("Zone_2_xxx"),
        "{tagged}"
    );
    assert_eq!(desc["controls"][2]["label"], json!(long));
    online(&mut sub, "dsp", true).await;
    within("set", r.panel.set("hall/dsp/Zone_2.gain", Value::F64(-6.0)))
        .await
        .unwrap();
    let gain = sim.panel().get("Zone 2.gain").unwrap();
    assert_eq!(gain.value, QrcValue::Number(-6.0));
    let topic = format!("hall/dsp/{tagged}");
    within("set", r.panel.set(&topic, Value::F64(-1.5)))
        .await
        .unwrap();
    assert_eq!(
        sim.panel().get(&long).unwrap().value,
        QrcValue::Number(-1.5)
    );
    let e = within(
        "a removed control",
        r.panel.set("hall/dsp/Room.label", Value::from("x")),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTopic);
    r.bus.shutdown().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_core_drops_the_link_and_it_recovers() {
    let r = rig(SimConfig::fast(), None, 200).await;
    let mut sub = r.panel.subscribe(&["hall/dsp/#"]).await.unwrap();
    online(&mut sub, "dsp", true).await;
    for junk in [&b"\x01not json{\0"[..], b"{\"jsonrpc\":\"2.0\",\"id\":1}\0"] {
        assert_eq!(r.sim.inject(junk), 1, "the adapter's connection took it");
        online(&mut sub, "dsp", false).await;
        online(&mut sub, "dsp", true).await;
    }
    // A notification this adapter does not use is skipped, not fatal: a change made
    // at the Core after it still arrives over the same connection.
    let mut connections = r.sim.connections();
    connections.mark_unchanged();
    let unknown = b"{\"jsonrpc\":\"2.0\",\"method\":\"LoopPlayer.Status\",\"params\":{}}\0";
    assert_eq!(r.sim.inject(unknown), 1);
    r.sim
        .panel()
        .set_value("Mic1.gain", QrcValue::Number(-4.0))
        .unwrap();
    confirmed(&mut sub, "Mic1.gain", Value::F64(-4.0)).await;
    within("set", r.panel.set("hall/dsp/Mic1.gain", Value::F64(-5.0)))
        .await
        .unwrap();
    assert_eq!(
        r.sim.panel().get("Mic1.gain").unwrap().value,
        QrcValue::Number(-5.0)
    );
    assert!(
        !connections.has_changed().unwrap(),
        "the same link carried on"
    );
    r.bus.shutdown().await;
    r.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keepalive_holds_an_idle_link_open() {
    // The driver alone, no kit: nothing polls, so only `next_event`'s NoOps keep
    // the 500 ms keepalive of the fast sim from closing the link.
    let sim = start_sim("127.0.0.1:0".parse().unwrap(), SimConfig::fast()).await;
    let d = entry("dsp", sim.addr().port(), None, 100);
    let mut driver = within("discovery", QrcDriver::discover(&d)).await.unwrap();
    within("connect", driver.connect()).await.unwrap();
    let first = within("the first push", driver.next_event()).await.unwrap();
    assert_eq!(first.len(), 5, "the full state: {first:?}");
    let connections = sim.connections();
    let idle = tokio::time::timeout(Duration::from_millis(1500), driver.next_event()).await;
    assert!(idle.is_err(), "no change and no error while idle: {idle:?}");
    assert!(
        !connections.has_changed().unwrap(),
        "the link was never closed"
    );
    sim.panel()
        .set_value("Mic1.mute", QrcValue::Bool(true))
        .unwrap();
    let pushed = within("a push", driver.next_event()).await.unwrap();
    assert_eq!(pushed, vec![("Mic1.mute".to_owned(), Value::Boolean(true))]);
    sim.stop().await;
}

/// A "Core" that greets, answers `Component.GetComponents` with an empty design, and
/// then never says anything again.
async fn silent_core() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let hello = br#"{"jsonrpc":"2.0","method":"EngineStatus","params":{"State":"Active","DesignName":"quiet","DesignCode":"q1","IsRedundant":false,"IsEmulator":true}}"#;
                let _ = stream.write_all(hello).await;
                let _ = stream.write_all(b"\0").await;
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if text.contains("Component.GetComponents") && text.contains('\0') {
                        let _ = stream
                            .write_all(b"{\"jsonrpc\":\"2.0\",\"result\":[],\"id\":1}\0")
                            .await;
                        seen.clear();
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_that_stops_answering_is_detected() {
    let addr = silent_core().await;
    let d = entry("dsp", addr.port(), None, 100);
    let mut driver = within("discovery", QrcDriver::discover(&d)).await.unwrap();
    within("connect", driver.connect()).await.unwrap();
    let since = tokio::time::Instant::now();
    let e = within("the dead link", driver.next_event())
        .await
        .unwrap_err();
    assert!(matches!(e, DeviceError::Unreachable(_)), "{e}");
    // Three keepalive intervals (3 × 100 ms) without a byte.
    assert!(
        since.elapsed() >= Duration::from_millis(150),
        "{:?}",
        since.elapsed()
    );
}

#[test]
fn device_entries_are_checked() {
    let good = entry("dsp", 1710, Some("admin:1234"), 1000);
    assert!(adapter::check(&good).is_ok());
    let no_host = DeviceConfig {
        host: None,
        ..good.clone()
    };
    assert!(adapter::check(&no_host).unwrap_err().contains("host"));
    let port_zero = DeviceConfig {
        port: Some(0),
        ..good.clone()
    };
    assert!(adapter::check(&port_zero).unwrap_err().contains("port"));
    let port_in_host = DeviceConfig {
        host: Some("core.local:1710".into()),
        ..good.clone()
    };
    assert!(adapter::check(&port_in_host).is_err());
    let v6 = DeviceConfig {
        host: Some("::1".into()),
        port: None,
        password: None,
        ..good
    };
    assert!(adapter::check(&v6).is_ok());
}
