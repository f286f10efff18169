//! The adapter kit's runtime over a real bus: a queued `set` superseded by a newer
//! one, a driver that panics contained and restarted, a driver that stalls caught by
//! the watchdog, and devices hosted from `[[device]]` config in `avbus serve` and in
//! a separate `avbus adapter` process that can be killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use avbus::devices::kit::{
    Changes, CommandFailure, DeviceCommand, DeviceError, Driver, Host, Timing,
};
use avbus::model::{ControlKind, ControlSpec, DeviceDescriptor};
use avbus::protocol::{ErrorCode, Role};
use avbus::value::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// What the test device has been asked to do, and a gate holding `slow` commands.
#[derive(Default)]
struct Bench {
    executed: Mutex<Vec<(String, Value)>>,
    gate: Notify,
    starts: Mutex<u32>,
}

struct TestDevice {
    name: &'static str,
    bench: Arc<Bench>,
}

impl Driver for TestDevice {
    fn descriptor(&self) -> DeviceDescriptor {
        DeviceDescriptor {
            room: "kit".into(),
            name: self.name.into(),
            label: String::new(),
            class: "virtual".into(),
            driver: "test".into(),
            controls: ["level", "boom", "hang"]
                .iter()
                .map(|n| {
                    ControlSpec::new(
                        n,
                        ControlKind::Int {
                            min: 0,
                            max: 100,
                            step: None,
                            unit: String::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            backoff_min: std::time::Duration::from_millis(10),
            backoff_max: std::time::Duration::from_millis(50),
            ..Timing::default()
        }
    }

    async fn connect(&mut self) -> Result<(), DeviceError> {
        *self.bench.starts.lock().unwrap() += 1;
        Ok(())
    }

    async fn poll(&mut self) -> Result<Changes, DeviceError> {
        Ok(vec![("level".into(), Value::from(0))])
    }

    async fn execute(
        &mut self,
        c: &DeviceCommand,
    ) -> Result<Result<Changes, CommandFailure>, DeviceError> {
        self.bench
            .executed
            .lock()
            .unwrap()
            .push((c.control.clone(), c.value.clone()));
        match c.control.as_str() {
            "boom" => panic!("the driver crashed"),
            "hang" => std::future::pending().await,
            _ => {
                if c.value == Value::from(1) {
                    // Held until the test opens the gate.
                    self.bench.gate.notified().await;
                }
                Ok(Ok(vec![(c.control.clone(), c.value.clone())]))
            }
        }
    }
}

async fn setup() -> (
    avbus::bus::BusHandle,
    Arc<Bench>,
    avbus::client::Client,
    CancellationToken,
) {
    let bus = bus(config()).await;
    let adapter = client(&bus, "kit-host", Role::Adapter).await;
    let host = Host::start(adapter).await;
    let bench = Arc::new(Bench::default());
    let b = bench.clone();
    let cancel = CancellationToken::new();
    host.spawn(
        move || TestDevice {
            name: "dev",
            bench: b.clone(),
        },
        cancel.clone(),
    );
    // A second device on the same host, whose answers prove that the host has
    // dispatched every command it received before them.
    host.spawn(
        || TestDevice {
            name: "probe",
            bench: Arc::default(),
        },
        cancel.clone(),
    );
    let panel = client(&bus, "panel", Role::Panel).await;
    for key in ["kit/dev/online", "kit/probe/online"] {
        let mut sub = panel.subscribe(&[key]).await.unwrap();
        until(&mut sub, |u| u.value == Value::Boolean(true)).await;
    }
    (bus, bench, panel, cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_set_is_superseded_by_a_newer_one() {
    let (bus, bench, panel, _cancel) = setup().await;
    // 1 blocks in the driver; 2 and 3 queue behind it; 3 supersedes 2.
    let p = panel.clone();
    let first = tokio::spawn(async move { p.set("kit/dev/level", Value::from(1)).await });
    within("the first command at the driver", async {
        while bench.executed.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let p = panel.clone();
    let second = tokio::spawn(async move { p.set("kit/dev/level", Value::from(2)).await });
    // Wait until the second is queued at the kit before sending the third: the
    // bus marks the control pending with target 2 when it forwards it.
    let mut sub = panel.subscribe(&["kit/dev/level"]).await.unwrap();
    until(&mut sub, |u| u.target == Some(Value::from(2))).await;
    let p = panel.clone();
    let third = tokio::spawn(async move { p.set("kit/dev/level", Value::from(3)).await });
    until(&mut sub, |u| u.target == Some(Value::from(3))).await;
    // The bus has forwarded 3; a command to another device on the same host, sent
    // after it and answered, proves that the host has handed 3 to the device's queue.
    within(
        "a command to the probe device",
        panel.set("kit/probe/level", Value::from(9)),
    )
    .await
    .unwrap();
    bench.gate.notify_one();
    within("first", first).await.unwrap().unwrap();
    let superseded = within("second", second).await.unwrap().unwrap();
    assert_eq!(
        avbus::value::to_json(&superseded.result),
        serde_json::json!({"superseded": true})
    );
    within("third", third).await.unwrap().unwrap();
    let executed: Vec<Value> = bench
        .executed
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        executed,
        vec![Value::from(1), Value::from(3)],
        "2 never reached the device"
    );
    assert_eq!(
        panel.get("kit/dev/level").await.unwrap().unwrap().value,
        Value::from(3)
    );
    bus.shutdown().await;
}

/// Sends a command to `control` that breaks the driver (it panics, or stalls until
/// the watchdog fires): the panel gets `timeout` at its deadline, the device goes
/// offline, a fresh link comes up, and the device works again.
async fn breaks_then_recovers(control: &str) {
    let (bus, bench, panel, _cancel) = setup().await;
    let mut sub = panel.subscribe(&["kit/dev/online"]).await.unwrap();
    snapshot(&mut sub).await;
    let mut o = opts(&bus.tcp.to_string(), "p2", Role::Panel);
    o.command_timeout = std::time::Duration::from_millis(300);
    let impatient = avbus::client::Client::connect(o).await.unwrap();
    let e = impatient
        .set(&format!("kit/dev/{control}"), Value::from(5))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "answered at its deadline");
    until(&mut sub, |u| u.value == Value::Boolean(false)).await;
    until(&mut sub, |u| u.value == Value::Boolean(true)).await;
    assert!(*bench.starts.lock().unwrap() >= 2, "a fresh link connected");
    panel.set("kit/dev/level", Value::from(7)).await.unwrap();
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_driver_is_contained_and_restarted() {
    breaks_then_recovers("boom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_command_trips_the_watchdog() {
    breaks_then_recovers("hang").await;
}

const BIN: &str = env!("CARGO_BIN_EXE_avbus");

fn write_config(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("avbus-kit-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("site.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_from_config_in_the_bus_and_in_an_adapter_process() {
    // Hosted inside `avbus serve`.
    let path = write_config(
        "serve",
        "[listen]\ntcp = \"127.0.0.1:0\"\n\n[[device]]\nroom = \"lab\"\nname = \"mixer\"\ndriver = \"virtual\"\n",
    );
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = serve.stdout.take().unwrap();
    let line = within(
        "ready",
        tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            BufReader::new(stdout).read_line(&mut l).map(|_| l)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = ready["ready"]["tcp"].as_str().unwrap().to_owned();
    let panel = avbus::client::Client::connect(opts(&addr, "panel", Role::Panel))
        .await
        .unwrap();
    let mut sub = panel.subscribe(&["lab/+/online"]).await.unwrap();
    until(&mut sub, |u| {
        u.topic == "lab/mixer/online" && u.value == Value::Boolean(true)
    })
    .await;
    panel
        .set("lab/mixer/volume", Value::F64(-6.0))
        .await
        .unwrap();
    assert_eq!(
        panel.get("lab/mixer/volume").await.unwrap().unwrap().value,
        Value::F64(-6.0)
    );

    // The same kind of entry in a separate adapter process, killed and restarted.
    let path = write_config(
        "adapter",
        "[[device]]\nroom = \"lab\"\nname = \"camera\"\ndriver = \"virtual\"\n",
    );
    let spawn_adapter = || {
        Command::new(BIN)
            .args(["adapter", "--bus", &addr, "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut adapter = spawn_adapter();
    until(&mut sub, |u| {
        u.topic == "lab/camera/online" && u.value == Value::Boolean(true)
    })
    .await;
    adapter.kill().unwrap();
    adapter.wait().unwrap();
    until(&mut sub, |u| {
        u.topic == "lab/camera/online" && u.value == Value::Boolean(false)
    })
    .await;
    let e = panel
        .call("lab/camera/recall", Value::from(1))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceOffline);
    let mut adapter = spawn_adapter();
    until(&mut sub, |u| {
        u.topic == "lab/camera/online" && u.value == Value::Boolean(true)
    })
    .await;
    panel
        .call("lab/camera/recall", Value::from(1))
        .await
        .unwrap();
    assert_eq!(
        panel.get("lab/camera/pan").await.unwrap().unwrap().value,
        Value::from(-90)
    );
    adapter.kill().unwrap();
    adapter.wait().unwrap();
    serve.kill().unwrap();
    serve.wait().unwrap();
}

#[test]
fn a_bad_device_entry_fails_fast_naming_it() {
    let path = write_config(
        "bad",
        "[[device]]\nroom = \"lab\"\nname = \"tv\"\ndriver = \"telepathy\"\n",
    );
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lab/tv") && err.contains("telepathy"), "{err}");
    let path = write_config(
        "bad2",
        "[[device]]\nroom = \"lab\"\nname = \"tv\"\ndriver = \"virtual\"\nhots = \"x\"\n",
    );
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5") && err.contains("hots"), "{err}");
}
