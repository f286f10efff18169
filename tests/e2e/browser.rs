//! The web panel in a real browser (Debian's Chromium, driven by playwright-core from
//! `tests/browser/`), against a bus with simulated devices over real sockets.
//!
//! This test starts the bus, the device simulators and their adapters, then runs
//! `tests/browser/panel.test.mjs` with the panel's URL. The script drives two browser
//! contexts (desktop and phone) and, whenever it needs something done on the server
//! side, writes one JSON line `{"ask": ...}` on stdout and waits for this test's
//! answer on stdin: read a simulator, run the CLI, cut the WebSockets, stop a device.
//! Every wait on either side is bounded and fails the test; nothing sleeps.
//!
//! Without Chromium, Node or `tests/browser/node_modules` (which `scripts/test`
//! installs) the browser test says `skipped: ...` on stderr, except under CI, where
//! it fails instead.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use avbus::bus::BusHandle;
use avbus::client::{Client, ClientOptions};
use avbus::config::DeviceConfig;
use avbus::devices::extron::TieKind;
use avbus::devices::registry::host_all;
use avbus::devices::{extron, pjlink, qrc};
use avbus::model::Quality;
use avbus::protocol::Role;
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::{self, config, within};

const BIN: &str = env!("CARGO_BIN_EXE_avbus");
/// The whole browser session, start to finish.
const SESSION_LIMIT: Duration = Duration::from_secs(240);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What the browser tests need, or why they cannot run here.
fn prerequisites() -> Result<PathBuf, String> {
    let chromium = std::env::var_os("AVBUS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (scripts/test installs Debian's chromium as root)",
            chromium.display()
        ));
    }
    node()?;
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Err("tests/browser/node_modules is missing (scripts/test runs npm ci)".into());
    }
    Ok(chromium)
}

fn node() -> Result<(), String> {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("no node on PATH".into()),
    }
}

/// Says why a test did not run, past the test harness's output capture, or fails
/// under CI, where everything must run.
fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
        panic!("{test} cannot run under CI: {why}");
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// The bus with simulated devices: a PJLink projector and an Extron switcher in the
/// boardroom, a Q-SYS core, a virtual mixer (meters) and a virtual camera (momentary
/// controls) in the hall; their adapters hosted on one in-process connection.
struct Rig {
    bus: BusHandle,
    projector: pjlink::sim::Sim,
    switcher: Option<extron::sim::Sim>,
    dsp: qrc::sim::Sim,
    cancel: CancellationToken,
}

fn device(room: &str, name: &str, driver: &str, addr: Option<SocketAddr>) -> DeviceConfig {
    DeviceConfig {
        room: room.into(),
        name: name.into(),
        driver: driver.into(),
        label: None,
        host: addr.map(|a| a.ip().to_string()),
        port: addr.map(|a| a.port()),
        password: None,
        poll_ms: None,
    }
}

impl Rig {
    async fn start() -> Rig {
        let bus = common::bus(config()).await;
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let projector = pjlink::sim::Sim::start(local, pjlink::sim::SimConfig::fast())
            .await
            .unwrap();
        let switcher = extron::sim::Sim::start(local, extron::sim::SimConfig::fast())
            .await
            .unwrap();
        // The default design: `fast()` closes connections idle for 500 ms, which
        // would take the DSP offline between the adapter's polls.
        let dsp = qrc::sim::Sim::start(local, qrc::sim::SimConfig::default())
            .await
            .unwrap();
        let devices = vec![
            device("boardroom", "projector", "pjlink", Some(projector.addr())),
            device("boardroom", "switcher", "extron-sis", Some(switcher.addr())),
            device("hall", "dsp", "qrc", Some(dsp.addr())),
            device("hall", "mixer", "virtual", None),
            device("hall", "camera", "virtual", None),
        ];
        let cancel = CancellationToken::new();
        let adapters =
            Client::connect(ClientOptions::local(bus.local(), "test-adapters").role(Role::Adapter))
                .await
                .unwrap();
        let c = cancel.clone();
        tokio::spawn(async move { host_all(adapters, &devices, c).await });
        let rig = Rig {
            bus,
            projector,
            switcher: Some(switcher),
            dsp,
            cancel,
        };
        // Every device online with its values read, before any browser looks.
        for topic in [
            "boardroom/projector/power",
            "boardroom/switcher/out01_video",
            "hall/dsp/Program.gain",
            "hall/dsp/Program.mute",
            "hall/mixer/volume",
            "hall/camera/pan",
        ] {
            rig.settled(topic).await;
        }
        rig
    }

    /// Waits until `topic`'s record has quality ok; returns it.
    async fn settled(&self, topic: &str) -> avbus::protocol::Update {
        let c = common::client(&self.bus, "settled", Role::Tool).await;
        let mut sub = c.subscribe(&[topic]).await.unwrap();
        let u = common::until(&mut sub, |u| u.quality == Some(Quality::Ok)).await;
        c.close().await;
        u
    }

    /// Answers one request from the browser script.
    async fn answer(&mut self, ask: &Json) -> Json {
        match ask["ask"].as_str().unwrap_or_default() {
            // The state the panel must show on load, as the bus has it.
            "expect" => {
                let mut values = serde_json::Map::new();
                for t in ask["topics"].as_array().into_iter().flatten() {
                    let topic = t.as_str().unwrap_or_default();
                    let u = self.settled(topic).await;
                    let value = avbus::value::to_json(&u.value);
                    values.insert(topic.into(), json!({"display": u.display, "value": value}));
                }
                json!({"ok": true, "values": values})
            }
            // Clicking the mute switch reached the simulated DSP: the adapter
            // publishes the value it read back from the device, then the device is
            // asked directly.
            "dsp_muted" => {
                let want = ask["muted"].as_bool().unwrap_or(true);
                let c = common::client(&self.bus, "check", Role::Tool).await;
                let mut sub = c.subscribe(&["hall/dsp/Program.mute"]).await.unwrap();
                common::until(&mut sub, |u| {
                    u.quality == Some(Quality::Ok) && u.value == avbus::value::Value::Boolean(want)
                })
                .await;
                c.close().await;
                let state = self.dsp.panel().get("Program.mute");
                let muted = state.as_ref().is_some_and(|s| s.position > 0.5);
                json!({"ok": muted == want, "error": format!("the simulator has {state:?}")})
            }
            // The CLI, as an integrator types it.
            "cli" => {
                let args: Vec<String> = ask["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                let addr = self.bus.tcp.to_string();
                let out = tokio::task::spawn_blocking(move || {
                    Command::new(BIN)
                        .args(&args)
                        .args(["--bus", &addr])
                        .output()
                })
                .await
                .unwrap()
                .unwrap();
                json!({
                    "ok": out.status.success(),
                    "stdout": String::from_utf8_lossy(&out.stdout),
                    "error": String::from_utf8_lossy(&out.stderr),
                })
            }
            // Someone at the switcher's front panel ties input 3 to output 1.
            "front_panel" => {
                let s = self.switcher.as_ref().expect("switcher running");
                let r = s.panel().tie(3, 1, TieKind::Video);
                json!({"ok": r.is_ok(), "error": format!("{r:?}")})
            }
            "drop" => {
                let web = self.bus.web().expect("the gateway runs");
                web.set_accepting(false);
                let dropped = web.drop_all();
                json!({"ok": true, "dropped": dropped})
            }
            "restore" => {
                self.bus
                    .web()
                    .expect("the gateway runs")
                    .set_accepting(true);
                json!({"ok": true})
            }
            // The switcher's power fails: its simulator stops.
            "switcher_off" => {
                if let Some(s) = self.switcher.take() {
                    s.stop().await;
                }
                json!({"ok": true})
            }
            "stats" => {
                let s = self.bus.web().expect("the gateway runs").stats();
                json!({"ok": true, "open": s.open, "accepted": s.accepted,
                       "refused_paused": s.refused_paused})
            }
            other => json!({"ok": false, "error": format!("unknown ask {other:?}")}),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.projector.stop().await;
        if let Some(s) = self.switcher {
            s.stop().await;
        }
        self.dsp.stop().await;
        self.bus.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_in_chromium() {
    let chromium = match prerequisites() {
        Ok(c) => c,
        Err(why) => return skip("the_panel_in_chromium", &why),
    };
    let _heavy = common::HEAVY.lock().await;
    let mut rig = Rig::start().await;
    let http = rig.bus.http.expect("HTTP listens");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    let mut child = Command::new("node")
        .arg("panel.test.mjs")
        .current_dir(browser_dir())
        .env("AVBUS_URL", format!("http://{http}/"))
        .env("AVBUS_CHROMIUM", &chromium)
        .env("AVBUS_ARTIFACTS", &artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    let session = async {
        let mut asked = Vec::new();
        while let Some(line) = lines.recv().await {
            let Ok(msg) = serde_json::from_str::<Json>(&line) else {
                eprintln!("browser script: {line}");
                continue;
            };
            if msg.get("done").is_some() {
                return (Some(msg), asked);
            }
            asked.push(msg["ask"].as_str().unwrap_or_default().to_owned());
            let what = format!("the answer to {msg}");
            let reply = within(&what, rig.answer(&msg)).await;
            let mut text = reply.to_string();
            text.push('\n');
            if stdin.write_all(text.as_bytes()).is_err() {
                break;
            }
        }
        (None, asked)
    };
    let outcome = tokio::time::timeout(SESSION_LIMIT, session).await;
    let status = match outcome {
        Ok(_) => {
            within("the browser script to exit", async {
                tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .unwrap()
                    .unwrap()
            })
            .await
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            rig.stop().await;
            panic!("the browser session took longer than {SESSION_LIMIT:?}");
        }
    };
    rig.stop().await;
    let (done, asked) = outcome.unwrap();
    assert!(
        status.success(),
        "the browser script failed ({status}); see its output above"
    );
    let done = done.expect("the script reports done");
    assert!(done["checks"].as_u64().unwrap_or(0) > 0, "{done}");
    for step in [
        "expect",
        "dsp_muted",
        "cli",
        "front_panel",
        "drop",
        "restore",
        "switcher_off",
    ] {
        assert!(
            asked.iter().any(|a| a == step),
            "the script skipped {step}: {asked:?}"
        );
    }
}

/// The JavaScript MessagePack codec and client pieces, under Node's test runner.
#[test]
fn the_javascript_units() {
    if let Err(why) = node() {
        return skip("the_javascript_units", &why);
    }
    let out = Command::new("node")
        .args(["--test", "unit.test.mjs"])
        .current_dir(browser_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
