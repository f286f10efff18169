//! The `avbus` binary end to end: `demo` with its simulated devices, driven by the CLI
//! commands an integrator types, checking their output and exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::HEAVY;

const BIN: &str = env!("CARGO_BIN_EXE_avbus");

struct Demo {
    child: Child,
    addr: String,
    /// The ready line's HTTP address.
    http: String,
    /// The panel URL the demo printed.
    panel: String,
}

impl Demo {
    fn start() -> Demo {
        let mut child = Command::new(BIN)
            .args(["demo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn avbus demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The ready line, then the line naming the panel; keep draining after them
            // so the demo never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with('{') || line.contains("the panel is at") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the ready line");
        let ready: serde_json::Value = serde_json::from_str(&line).expect("JSON ready line");
        let addr = ready["ready"]["tcp"].as_str().unwrap().to_owned();
        let http = ready["ready"]["http"].as_str().unwrap().to_owned();
        let panel = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the panel's URL");
        let panel = panel.rsplit(' ').next().unwrap().to_owned();
        Demo {
            child,
            addr,
            http,
            panel,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("AVBUS_ADDR", &self.addr);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, Duration::from_secs(20))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child with a deadline, killing it (and failing) past it.
fn wait_output(child: Child, limit: Duration) -> Output {
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("command did not finish within {limit:?}");
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A plain HTTP/1.1 GET over a real socket; the whole response as text.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits (bounded) until every demo device reports online, through the client library.
fn wait_online(addr: &str, devices: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::StreamExt;
        let c = avbus::client::Client::connect(avbus::client::ClientOptions::tcp(addr, "wait"))
            .await
            .unwrap();
        let mut sub = c.subscribe(&["+/+/online"]).await.unwrap();
        let mut online = std::collections::HashSet::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while online.len() < devices.len() {
                if let Some(avbus::client::SubEvent::Update(u)) = sub.next().await {
                    let key = u.topic.trim_end_matches("/online").to_owned();
                    if devices.contains(&key.as_str())
                        && u.value == avbus::value::Value::Boolean(true)
                    {
                        online.insert(key);
                    }
                }
            }
        })
        .await
        .expect("every demo device comes online");
        c.close().await;
    });
}

#[test]
fn the_demo_tour_works_from_the_cli() {
    let demo = Demo::start();
    let devices = [
        "boardroom/projector",
        "boardroom/switcher",
        "hall/dsp",
        "hall/camera",
        "hall/console",
    ];
    wait_online(&demo.addr, &devices);

    let out = demo.run(&["devices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("DEVICE") && header.contains("CLASS") && header.contains("DRIVER"));
    for (dev, class, driver) in [
        ("boardroom/projector", "projector", "pjlink"),
        ("boardroom/switcher", "switcher", "extron-sis"),
        ("hall/dsp", "dsp", "qrc"),
        ("hall/camera", "camera", "visca"),
        ("hall/console", "console", "x32-osc"),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(dev))
            .unwrap_or_else(|| panic!("{dev} in {table}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, [dev, class, driver, "online"]);
    }

    // A bare word is a string: `power on`; the projector then warms up.
    let out = demo.run(&["set", "boardroom/projector/power", "on"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = demo.run(&["get", "boardroom/projector/power"]);
    assert!(
        ["\"warming\"", "\"on\""].contains(&stdout(&out).trim()),
        "{}",
        stdout(&out)
    );

    let out = demo.run(&["set", "boardroom/switcher/out01_video", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&demo.run(&["get", "boardroom/switcher/out01_video"])).trim(),
        "\"3\""
    );

    let out = demo.run(&["set", "hall/dsp/Program.gain", "-12.5"]);
    assert_eq!(
        (out.status.code(), stdout(&out).trim()),
        (Some(0), "ok"),
        "{}",
        stderr(&out)
    );
    let out = demo.run(&["get", "--full", "hall/dsp/Program.gain"]);
    let rec: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(rec["quality"], "ok");
    assert_eq!(rec["display"], "-12.5 dB");
    let out = demo.run(&["set", "hall/dsp/Program.gain", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("invalid_value:"),
        "{}",
        stderr(&out)
    );

    let out = demo.run(&["call", "hall/camera/recall", "{\"preset\": 1}"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = demo.run(&["set", "hall/console/ch01_fader_db", "-10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = demo.run(&["get", "--full", "hall/console/ch01_fader_db"]);
    let rec: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(rec["display"], "-10.0 dB");
    // The first meter frame follows the console's state by a blob interval or so.
    let meters = (0..50)
        .map(|_| stdout(&demo.run(&["get", "hall/console/meters"])))
        .find_map(|out| {
            serde_json::from_str::<serde_json::Value>(out.trim())
                .ok()?
                .as_array()
                .cloned()
        })
        .expect("the console's meters");
    assert_eq!(meters.len(), 32, "{meters:?}");

    let out = demo.run(&["pub", "--retain", "boardroom/scene", "presentation"]);
    assert!(stdout(&out).starts_with("ok "));
    assert_eq!(
        stdout(&demo.run(&["get", "boardroom/scene"])).trim(),
        "\"presentation\""
    );
    let out = demo.run(&["get", "nothing/here"]);
    assert_eq!(out.status.code(), Some(1));

    let out = demo.run(&["sub", "--seq", "--count", "3", "hall/dsp/#"]);
    assert!(out.status.success());
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l.split(' ').nth(1).unwrap().starts_with("hall/dsp/")));

    let out = demo.run(&["devices", "--json"]);
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), devices.len());

    // The console's meters streamed over UDP.
    let out = demo.run(&[
        "sub",
        "--telemetry",
        "--hz",
        "20",
        "--count",
        "2",
        "hall/console/meters",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("hall/console/meters [")));

    // The printed URL serves the panel.
    assert_eq!(demo.panel, format!("http://{}/", demo.http));
    let page = http_get(&demo.http, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("/panel.js"), "{page}");

    let out = Command::new(BIN)
        .args(["get", "x/y", "--bus", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "cannot connect");
}

#[test]
fn bench_runs_every_workload_against_its_own_bus() {
    let _heavy = HEAVY.blocking_lock();
    let child = Command::new(BIN)
        .args(["bench", "--scale", "0.01"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for w in [
        "rtt",
        "throughput",
        "fanout",
        "fanin",
        "snapshot",
        "command",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("BENCH workload={w} system=avbus")))
            .unwrap_or_else(|| panic!("no BENCH line for {w} in\n{text}"));
        // Correctness, not speed: nothing lost, nothing failed.
        for bad in ["lost=", "loss=", "failed="] {
            if let Some(v) = line.split(' ').find_map(|kv| kv.strip_prefix(bad)) {
                assert_eq!(v, "0", "{line}");
            }
        }
    }
    assert!(text.contains("| system |"), "markdown table");
}

#[test]
fn bench_devices_runs_panel_bus_adapters_and_simulators() {
    let _heavy = HEAVY.blocking_lock();
    let child = Command::new(BIN)
        .args([
            "bench",
            "--workload",
            "devices",
            "--devices",
            "1,3",
            "--scale",
            "0.002",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for n in [1, 3] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("BENCH workload=devices system=avbus ")
                    && l.contains(&format!(" devices={n} "))
            })
            .unwrap_or_else(|| panic!("no BENCH line for {n} devices in\n{text}"));
        let figure = |key: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
        };
        // Correctness, not speed: every command confirmed, both processes measured.
        assert_eq!(figure("failed"), "0", "{line}");
        let n: u64 = figure("n").parse().unwrap();
        assert!(n >= 10, "at least ten commands measured: {line}");
        for key in ["p99_us", "bus_cpu_pct", "sim_cpu_pct"] {
            let v: f64 = figure(key).parse().unwrap();
            assert!(v.is_finite(), "{line}");
        }
    }
    // The devices workload runs its own bus.
    let refused = Command::new(BIN)
        .args(["bench", "--bus", "127.0.0.1:1", "--workload", "devices"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn sim_runs_a_device_simulator_on_its_own() {
    use std::io::Read;
    let mut child = Command::new(BIN)
        .args(["sim", "pjlink", "--fast"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = ready["ready"]["tcp"].as_str().unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 9];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(
        &greeting, b"PJLINK 0\r",
        "the simulated projector greets like the real one"
    );
    let _ = child.kill();
    let _ = child.wait();
}
