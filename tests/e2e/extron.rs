//! The Extron SIS adapter end to end: the bus in-process, the strict simulator on a
//! real port, the adapter on the kit's `Host`, and panels on the bus. A panel's tie,
//! audio breakaway and mutes reach the switcher and come back to every panel; a
//! front-panel change reaches the panels; a wrong password keeps the device offline
//! and is logged; the switcher going away and coming back, and garbage from it, end
//! in a reconnect; the switcher's error codes become typed command answers.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use avbus::bus::BusHandle;
use avbus::client::Client;
use avbus::config::DeviceConfig;
use avbus::devices::extron::adapter;
use avbus::devices::extron::proto::{self, Command};
use avbus::devices::extron::sim::{Sim, SimConfig};
use avbus::devices::extron::{Matrix, Plane, TieKind, VerboseMode};
use avbus::devices::kit::Host;
use avbus::model::Quality;
use avbus::protocol::{ErrorCode, Role};
use avbus::value::Value;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::dispatcher::{self, DefaultGuard, Dispatch};

use crate::common::*;

// ----- captured logs ----------------------------------------------------------------

/// What one test's runtime logged, and a signal for each write.
#[derive(Clone)]
struct Logs {
    text: Arc<Mutex<String>>,
    written: Arc<watch::Sender<()>>,
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.text
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        self.written.send_replace(());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

thread_local! {
    /// On a thread of a [`capturing`] runtime: its logs go to that test's [`Logs`].
    static CAPTURE: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// Runs `test` as `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` does,
/// and hands it what is logged on the runtime's threads (the bus, the adapter, the
/// simulator): only those, not a global subscriber's everything, since every other
/// test of the binary runs in this process too.
fn capturing<F, T>(test: F)
where
    F: FnOnce(Logs) -> T,
    T: Future<Output = ()>,
{
    let logs = Logs {
        text: Arc::default(),
        written: Arc::new(watch::channel(()).0),
    };
    let dispatch = Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let each_thread = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || CAPTURE.set(Some(dispatcher::set_default(&each_thread))))
        .on_thread_stop(|| CAPTURE.set(None))
        .build()
        .expect("a runtime");
    // The test's own future runs on this thread.
    let _this_thread = dispatcher::set_default(&dispatch);
    runtime.block_on(test(logs));
}

/// Waits until a logged line contains every one of `words`; returns that line.
async fn logged(logs: &Logs, words: &[&str]) -> String {
    let mut written = logs.written.subscribe();
    within(&format!("a log line with {words:?}"), async {
        loop {
            let found = logs
                .text
                .lock()
                .unwrap()
                .lines()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .map(str::to_owned);
            if let Some(line) = found {
                return line;
            }
            written.changed().await.expect("the test holds the sender");
        }
    })
    .await
}

// ----- the rig ------------------------------------------------------------------------

fn device(name: &str, addr: SocketAddr, password: Option<&str>) -> DeviceConfig {
    DeviceConfig {
        room: "lab".into(),
        name: name.into(),
        driver: adapter::DRIVER.into(),
        label: None,
        host: Some(addr.ip().to_string()),
        port: Some(addr.port()),
        password: password.map(Into::into),
        // Short, so that polls interleave with the tests' commands and notices.
        poll_ms: Some(250),
    }
}

async fn sim(cfg: SimConfig) -> Sim {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    Sim::start(listen, cfg).await.expect("sim starts")
}

/// The adapter on its own bus connection, running `devices`.
async fn adapter_host(bus: &BusHandle, devices: &[DeviceConfig]) -> CancellationToken {
    let client = client(bus, "extron-adapter", Role::Adapter).await;
    let host = Host::start(client).await;
    let cancel = CancellationToken::new();
    for d in devices {
        adapter::check(d).expect("a valid entry");
        adapter::spawn(&host, d, cancel.clone());
    }
    cancel
}

/// Waits for `lab/<name>/online` to be `online`.
async fn online(panel: &Client, name: &str, online: bool) {
    let topic = format!("lab/{name}/online");
    let mut sub = panel.subscribe(&[&topic]).await.expect("subscribe");
    until(&mut sub, |u| u.value == Value::Boolean(online)).await;
}

/// A bus, an 8×8 simulator, the adapter serving it as `lab/matrix`, online.
async fn rig() -> (BusHandle, Sim, Client, CancellationToken) {
    let bus = bus(config()).await;
    let sim = sim(SimConfig::fast()).await;
    let cancel = adapter_host(&bus, &[device("matrix", sim.addr(), None)]).await;
    let panel = client(&bus, "panel", Role::Panel).await;
    online(&panel, "matrix", true).await;
    (bus, sim, panel, cancel)
}

fn text(v: &str) -> Value {
    Value::from(v)
}

/// Waits for `topic` to carry `value` with quality ok.
async fn shows(sub: &mut avbus::client::Subscription, topic: &str, value: &Value) {
    until(sub, |u| {
        u.topic == topic && u.value == *value && u.quality == Some(Quality::Ok)
    })
    .await;
}

// ----- tests ----------------------------------------------------------------------------

#[test]
fn the_size_comes_from_the_information_answer() {
    let size = |inputs, outputs, audio| adapter::MatrixSize {
        inputs,
        outputs,
        audio,
    };
    let parse = adapter::MatrixSize::parse;
    assert_eq!(parse("V8X8 A8X8"), Some(size(8, 8, true)));
    assert_eq!(parse("V12X4 A12X4"), Some(size(12, 4, true)));
    assert_eq!(parse("V16X16 A0X0"), Some(size(16, 16, false)));
    assert_eq!(parse("V4x2"), Some(size(4, 2, false)));
    for bad in ["", "1.23", "A8X8", "V0X8 A8X8", "V8X0", "V999X8", "V8X300"] {
        assert_eq!(parse(bad), None, "{bad}");
    }
}

#[test]
fn entries_are_checked_and_descriptors_fit_the_bus_up_to_the_largest_size() {
    use avbus::devices::kit::Driver;
    let addr = SocketAddr::from(([10, 0, 0, 9], 23));
    let mut d = device("matrix", addr, None);
    assert!(adapter::check(&d).is_ok());
    for (key, broken) in [
        (
            "host",
            DeviceConfig {
                host: None,
                ..d.clone()
            },
        ),
        (
            "host",
            DeviceConfig {
                host: Some(" ".into()),
                ..d.clone()
            },
        ),
        (
            "port",
            DeviceConfig {
                port: Some(0),
                ..d.clone()
            },
        ),
        (
            "password",
            DeviceConfig {
                password: Some("a\rb".into()),
                ..d.clone()
            },
        ),
        (
            "password",
            DeviceConfig {
                password: Some(String::new()),
                ..d.clone()
            },
        ),
    ] {
        let e = adapter::check(&broken).unwrap_err();
        assert!(e.contains(key), "{key}: {e}");
    }
    d.label = Some("Hall matrix".into());
    let size = |inputs, outputs, audio| adapter::MatrixSize {
        inputs,
        outputs,
        audio,
    };
    for (z, controls) in [
        (size(8, 8, true), 32),
        (size(255, 256, true), 1024),
        (size(2, 1, false), 2),
    ] {
        let desc = adapter::ExtronDriver::new(&d, z).unwrap().descriptor();
        desc.validate().unwrap();
        assert_eq!(desc.controls.len(), controls);
        assert_eq!(
            (
                desc.class.as_str(),
                desc.driver.as_str(),
                desc.label.as_str()
            ),
            ("switcher", "extron-sis", "Hall matrix")
        );
    }
    let desc = adapter::ExtronDriver::new(&d, size(3, 1, true))
        .unwrap()
        .descriptor();
    let names: Vec<&str> = desc.controls.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "out01_video",
            "out01_audio",
            "out01_video_mute",
            "out01_audio_mute"
        ]
    );
    let avbus::model::ControlKind::Enum { options } = &desc.controls[0].kind else {
        panic!("{:?}", desc.controls[0]);
    };
    let options: Vec<(&str, &str)> = options
        .iter()
        .map(|o| (o.id.as_str(), o.label.as_str()))
        .collect();
    assert_eq!(
        options,
        [
            ("0", "Untied"),
            ("1", "Input 1"),
            ("2", "Input 2"),
            ("3", "Input 3")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_tie_reaches_the_switcher_and_comes_back_to_every_panel() {
    let (bus, sim, panel, _cancel) = rig().await;
    let desc = panel
        .get("$devices/lab/matrix")
        .await
        .unwrap()
        .expect("declared");
    let desc = avbus::value::to_json(&desc.value);
    assert_eq!(desc["class"], "switcher");
    assert_eq!(desc["driver"], "extron-sis");
    // 8 outputs × (video, audio, video mute, audio mute), and `online`.
    assert_eq!(desc["controls"].as_array().unwrap().len(), 33);
    let other = client(&bus, "panel-2", Role::Panel).await;
    let mut subs = Vec::new();
    for p in [&panel, &other] {
        let mut sub = p.subscribe(&["lab/matrix/out02_video"]).await.unwrap();
        let first = snapshot(&mut sub).await;
        assert_eq!(first[0].value, text("0"), "untied at start");
        subs.push(sub);
    }

    panel
        .set("lab/matrix/out02_video", text("3"))
        .await
        .expect("tied");
    let state = sim.state();
    assert_eq!((state.video[1], state.audio[1]), (3, 0), "video only");
    for sub in &mut subs {
        shows(sub, "lab/matrix/out02_video", &text("3")).await;
    }
    let record = other.get("lab/matrix/out02_video").await.unwrap().unwrap();
    assert_eq!(record.display.as_deref(), Some("Input 3"));

    // Input 0 unties.
    panel
        .set("lab/matrix/out02_video", text("0"))
        .await
        .expect("untied");
    assert_eq!(sim.state().video[1], 0);
    for sub in &mut subs {
        shows(sub, "lab/matrix/out02_video", &text("0")).await;
    }
    // An input the switcher does not have is refused by the bus, from the descriptor.
    let e = panel
        .set("lab/matrix/out02_video", text("9"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidValue);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_breaks_away_from_video() {
    let (bus, sim, panel, _cancel) = rig().await;
    let mut sub = panel
        .subscribe(&["lab/matrix/out04_video", "lab/matrix/out04_audio"])
        .await
        .unwrap();
    snapshot(&mut sub).await;
    panel
        .set("lab/matrix/out04_audio", text("5"))
        .await
        .unwrap();
    let state = sim.state();
    assert_eq!((state.video[3], state.audio[3]), (0, 5));
    shows(&mut sub, "lab/matrix/out04_audio", &text("5")).await;
    panel
        .set("lab/matrix/out04_video", text("2"))
        .await
        .unwrap();
    let state = sim.state();
    assert_eq!((state.video[3], state.audio[3]), (2, 5));
    shows(&mut sub, "lab/matrix/out04_video", &text("2")).await;
    let audio = panel.get("lab/matrix/out04_audio").await.unwrap().unwrap();
    assert_eq!(audio.value, text("5"), "the video tie left audio alone");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_and_audio_mutes() {
    let (bus, sim, panel, _cancel) = rig().await;
    let mut sub = panel.subscribe(&["lab/matrix/+"]).await.unwrap();
    snapshot(&mut sub).await;
    panel
        .set("lab/matrix/out01_video_mute", Value::Boolean(true))
        .await
        .unwrap();
    assert!(sim.state().video_mute[0]);
    assert!(!sim.state().audio_mute[0]);
    shows(
        &mut sub,
        "lab/matrix/out01_video_mute",
        &Value::Boolean(true),
    )
    .await;
    panel
        .set("lab/matrix/out07_audio_mute", Value::Boolean(true))
        .await
        .unwrap();
    assert!(sim.state().audio_mute[6]);
    shows(
        &mut sub,
        "lab/matrix/out07_audio_mute",
        &Value::Boolean(true),
    )
    .await;
    panel
        .set("lab/matrix/out01_video_mute", Value::Boolean(false))
        .await
        .unwrap();
    assert!(!sim.state().video_mute[0]);
    shows(
        &mut sub,
        "lab/matrix/out01_video_mute",
        &Value::Boolean(false),
    )
    .await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_panel_changes_reach_the_panels() {
    let (bus, sim, panel, _cancel) = rig().await;
    let mut sub = panel.subscribe(&["lab/matrix/+"]).await.unwrap();
    snapshot(&mut sub).await;
    let front = sim.panel();
    // A switch on the front panel is announced only as `Qik`: the ties are read again.
    front.tie(6, 3, TieKind::All).unwrap();
    shows(&mut sub, "lab/matrix/out03_video", &text("6")).await;
    let audio = panel.get("lab/matrix/out03_audio").await.unwrap().unwrap();
    if audio.value != text("6") {
        shows(&mut sub, "lab/matrix/out03_audio", &text("6")).await;
    }
    front.tie_all(2, TieKind::Audio).unwrap();
    shows(&mut sub, "lab/matrix/out08_audio", &text("2")).await;
    // A front-panel mute is announced as `Vmt05 1`.
    front.mute(Plane::Video, 5, true).unwrap();
    shows(
        &mut sub,
        "lab/matrix/out05_video_mute",
        &Value::Boolean(true),
    )
    .await;
    // Another SIS controller's tie reaches the adapter as its response.
    let mut other = TcpStream::connect(sim.addr()).await.unwrap();
    other.write_all(b"4*1%").await.unwrap();
    shows(&mut sub, "lab/matrix/out01_video", &text("4")).await;
    bus.shutdown().await;
}

#[test]
fn a_wrong_password_keeps_the_device_offline_and_is_logged() {
    capturing(|logs| async move {
        let bus = bus(config()).await;
        // A password configured for a switcher that has none.
        let open = sim(SimConfig::fast()).await;
        let sim = sim(SimConfig {
            password: Some("secret".into()),
            ..SimConfig::fast()
        })
        .await;
        let devices = [
            device("locked", sim.addr(), Some("guess")),
            device("nopass", sim.addr(), None),
            device("unlocked", sim.addr(), Some("secret")),
        ];
        let extra = device("extra", open.addr(), Some("secret"));
        let _cancel = adapter_host(&bus, &[&devices[..], &[extra]].concat()).await;
        let panel = client(&bus, "panel", Role::Panel).await;
        logged(&logs, &["lab/locked", "authentication failed", "refused"]).await;
        logged(
            &logs,
            &["lab/nopass", "authentication failed", "none is configured"],
        )
        .await;
        logged(
            &logs,
            &["lab/extra", "authentication failed", "asked for none"],
        )
        .await;
        // The right password: online, and it switches.
        online(&panel, "unlocked", true).await;
        panel
            .set("lab/unlocked/out01_video", text("2"))
            .await
            .unwrap();
        assert_eq!(sim.state().video[0], 2);
        for name in ["locked", "nopass", "extra"] {
            let online = panel
                .get(&format!("lab/{name}/online"))
                .await
                .unwrap()
                .expect("declared while offline");
            assert_eq!(online.value, Value::Boolean(false), "{name}");
            let e = panel
                .set(&format!("lab/{name}/out01_video"), text("1"))
                .await
                .unwrap_err();
            // Its controls are not known until it has been reached once.
            assert_eq!(e.code, ErrorCode::UnknownTopic, "{name}: {}", e.message);
        }
        assert_eq!(sim.state().video[0], 2, "nothing else switched");
        bus.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switcher_going_away_and_back_ends_offline_then_online() {
    let (bus, sim, panel, _cancel) = rig().await;
    panel
        .set("lab/matrix/out01_video", text("2"))
        .await
        .unwrap();
    let mut sub = panel.subscribe(&["lab/matrix/out01_video"]).await.unwrap();
    snapshot(&mut sub).await;
    let addr = sim.addr();
    sim.stop().await;
    until(&mut sub, |u| u.quality == Some(Quality::Offline)).await;
    let state = panel.get("lab/matrix/online").await.unwrap().unwrap();
    assert_eq!(state.value, Value::Boolean(false));
    let e = panel
        .set("lab/matrix/out01_video", text("3"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceOffline);
    // A restarted switcher starts untied: the adapter reads it again.
    let sim = Sim::start(addr, SimConfig::fast()).await.expect("restart");
    shows(&mut sub, "lab/matrix/out01_video", &text("0")).await;
    online(&panel, "matrix", true).await;
    panel
        .set("lab/matrix/out01_video", text("3"))
        .await
        .unwrap();
    assert_eq!(sim.state().video[0], 3);
    bus.shutdown().await;
}

#[test]
fn a_switcher_of_another_size_is_declared_again() {
    capturing(|logs| async move {
        let (bus, sim, panel, _cancel) = rig().await;
        let addr = sim.addr();
        sim.stop().await;
        online(&panel, "matrix", false).await;
        let sim = Sim::start(
            addr,
            SimConfig {
                inputs: 4,
                outputs: 2,
                ..SimConfig::fast()
            },
        )
        .await
        .expect("restart");
        let mut sub = panel.subscribe(&["$devices/lab/matrix"]).await.unwrap();
        until(&mut sub, |u| {
            avbus::value::to_json(&u.value)["controls"]
                .as_array()
                .is_some_and(|c| c.len() == 9)
        })
        .await;
        online(&panel, "matrix", true).await;
        assert!(
            panel.get("lab/matrix/out05_video").await.unwrap().is_none(),
            "the outputs it no longer has are gone"
        );
        panel
            .set("lab/matrix/out02_video", text("4"))
            .await
            .unwrap();
        assert_eq!(sim.state().video, [0, 4]);
        logged(&logs, &["lab/matrix", "now 4x2"]).await;
        bus.shutdown().await;
    });
}

#[test]
fn garbage_from_the_switcher_is_logged_and_ends_in_a_reconnect() {
    capturing(|logs| async move {
        let (bus, sim, panel, _cancel) = rig().await;
        let mut sub = panel.subscribe(&["lab/matrix/online"]).await.unwrap();
        snapshot(&mut sub).await;
        // A line that is no SIS response.
        sim.inject(&b"\x00\xffgarbage\x07\r\n"[..]);
        until(&mut sub, |u| u.value == Value::Boolean(false)).await;
        until(&mut sub, |u| u.value == Value::Boolean(true)).await;
        logged(&logs, &["lab/matrix", "protocol error", "garbage"]).await;
        // A truncated response, then a line too long to be one.
        let mut truncated = b"Out0".to_vec();
        truncated.resize(600, b'7');
        sim.inject(truncated);
        until(&mut sub, |u| u.value == Value::Boolean(false)).await;
        until(&mut sub, |u| u.value == Value::Boolean(true)).await;
        logged(&logs, &["lab/matrix", "longer than 512 bytes", "Out07777"]).await;
        panel
            .set("lab/matrix/out05_video", text("8"))
            .await
            .expect("working again");
        assert_eq!(sim.state().video[4], 8);
        bus.shutdown().await;
    });
}

/// A 2×1 switcher that refuses some commands as a real one can: a video tie of
/// input 2 with `E22` (busy), an audio tie of input 2 with `E13`, a video mute with
/// `E10`; everything else it answers as the simulator's matrix does.
async fn refusing_switcher() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(refuse(stream));
        }
    });
    addr
}

async fn refuse(mut stream: TcpStream) {
    let mut matrix = Matrix::new(2, 1, "1.0");
    let mut mode = VerboseMode::default();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::from(&b"(c) Copyright 2024, Extron Electronics test, V1.0\r\n"[..]);
    loop {
        if !out.is_empty() && stream.write_all(&out.split()).await.is_err() {
            return;
        }
        match proto::parse_command(&buf) {
            Ok(Some((command, n))) => {
                buf.advance(n);
                let refusal: Option<&[u8]> = match &command {
                    Command::Tie(t) if t.input == 2 && t.kind == TieKind::Video => {
                        Some(&b"E22\r\n"[..])
                    }
                    Command::Tie(t) if t.input == 2 && t.kind == TieKind::Audio => {
                        Some(&b"E13\r\n"[..])
                    }
                    Command::VideoMute { .. } => Some(&b"E10\r\n"[..]),
                    _ => None,
                };
                match refusal {
                    Some(bytes) => out.extend_from_slice(bytes),
                    None => {
                        let (reply, _) = matrix.execute(&mut mode, command);
                        proto::format_response(&reply, &mut out);
                    }
                }
            }
            Ok(None) => match stream.read_buf(&mut buf).await {
                Ok(1..) => {}
                _ => return,
            },
            Err(e) => {
                buf.advance(e.consumed().min(buf.len()));
                out.extend_from_slice(b"E10\r\n");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switchers_error_codes_become_typed_answers() {
    let bus = bus(config()).await;
    let addr = refusing_switcher().await;
    let _cancel = adapter_host(&bus, &[device("strict", addr, None)]).await;
    let panel = client(&bus, "panel", Role::Panel).await;
    online(&panel, "strict", true).await;
    let desc = panel.get("$devices/lab/strict").await.unwrap().unwrap();
    let desc = avbus::value::to_json(&desc.value);
    assert_eq!(
        desc["controls"].as_array().unwrap().len(),
        5,
        "1 output, 2 inputs"
    );

    let e = panel
        .set("lab/strict/out01_video", text("2"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Busy, "E22: {}", e.message);
    let e = panel
        .set("lab/strict/out01_audio", text("2"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidValue, "E13: {}", e.message);
    assert!(e.message.contains("E13"), "{}", e.message);
    panel
        .set("lab/strict/out01_video", text("1"))
        .await
        .expect("accepted");
    let video = panel.get("lab/strict/out01_video").await.unwrap().unwrap();
    assert_eq!((video.value, video.quality), (text("1"), Some(Quality::Ok)));

    // E10: the switcher did not understand; the link is in doubt and is re-made.
    let mut sub = panel.subscribe(&["lab/strict/online"]).await.unwrap();
    snapshot(&mut sub).await;
    let e = panel
        .set("lab/strict/out01_video_mute", Value::Boolean(true))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceOffline, "{}", e.message);
    until(&mut sub, |u| u.value == Value::Boolean(false)).await;
    until(&mut sub, |u| u.value == Value::Boolean(true)).await;
    panel
        .set("lab/strict/out01_audio", text("1"))
        .await
        .expect("working again");
    bus.shutdown().await;
}
