//! avbus against its peers, on the same workloads in the same run: Mosquitto (MQTT,
//! QoS 0, rumqttc), nats-server (core NATS and JetStream KV, async-nats), and the
//! loopback floor (TCP echo and a byte relay; UDP echo, and a UDP sink fed the
//! `tingest` load). Every server runs as its own process, started and stopped here.
//! See docs/performance.md.
//!
//! Usage: avbus-peers-bench [--scale F] [--runs N] [--workload W]... [--system S]...
//! [--out FILE]; systems: floor, avbus, mosquitto, nats (default: all).

mod floor;
mod mqtt;
mod nats;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use avbus::bench::{
    add_cpu, cpu_ms, fmt_num, run_avbus, run_workload, spawn_ready, table, AvbusTransport, OwnBus,
    Row, Transport, AVBUS_ONLY,
};

use avbus::bench::WORKLOADS;

/// For each workload, the figure that decides it and whether lower is better.
const PRIMARY: &[(&str, &str, bool)] = &[
    ("rtt", "p50_us", true),
    ("rtt", "p99_us", true),
    ("throughput", "msgs_per_s", false),
    ("fanout", "p99_us", true),
    ("fanin", "msgs_per_s", false),
    ("snapshot", "ms", true),
    ("site", "p99_us", true),
    ("connections", "kib_per_connection", true),
];

struct Opts {
    scale: f64,
    runs: usize,
    workloads: Vec<String>,
    systems: Vec<String>,
    out: Option<PathBuf>,
}

/// The systems `--system` may name.
const SYSTEMS: &[&str] = &["floor", "avbus", "mosquitto", "nats"];

impl Opts {
    fn runs_system(&self, s: &str) -> bool {
        self.systems.is_empty() || self.systems.iter().any(|x| x == s)
    }
}

/// `v` if it is one of `known`, else an error naming them.
fn one_of(what: &str, v: String, known: &[&str]) -> Result<String, String> {
    if known.contains(&v.as_str()) {
        Ok(v)
    } else {
        Err(format!("unknown {what} {v:?}; known: {}", known.join(", ")))
    }
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        scale: 1.0,
        runs: 1,
        workloads: Vec::new(),
        systems: Vec::new(),
        out: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--scale" => o.scale = val()?.parse().map_err(|e| format!("--scale: {e}"))?,
            "--runs" => o.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--workload" => o.workloads.push(one_of("workload", val()?, WORKLOADS)?),
            "--system" => o.systems.push(one_of("system", val()?, SYSTEMS)?),
            "--out" => o.out = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Waits (bounded) until something accepts on `port`.
fn wait_port(port: u16, child: &mut Child) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("did not start listening within 10 s".into())
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from));
    for n in names {
        for d in &dirs {
            let p = d.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The Mosquitto configuration the bench ships: loopback, anonymous, no persistence,
/// and the per-client queue limits lifted so that retained messages and bursts are
/// not dropped by configuration.
fn mosquitto_conf(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         max_inflight_messages 0\n\
         set_tcp_nodelay true\n\
         log_type error\n"
    )
}

fn start_mosquitto(dir: &Path) -> Result<Server, String> {
    let exe =
        which(&["mosquitto"]).ok_or("mosquitto not installed (scripts/bench-peers installs it)")?;
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, mosquitto_conf(port)).map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    wait_port(port, &mut child).map_err(|e| format!("mosquitto {e}"))?;
    Ok(Server { child, port })
}

fn start_nats(dir: &Path) -> Result<Server, String> {
    let exe = which(&["nats-server"])
        .ok_or("nats-server not installed (scripts/bench-peers installs it)")?;
    let port = free_port()?;
    let store = dir.join("nats");
    let mut child = Command::new(exe)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    wait_port(port, &mut child).map_err(|e| format!("nats-server {e}"))?;
    Ok(Server { child, port })
}

/// Runs `workloads` on one system: for avbus (`addr` given) every one of them,
/// with the bus's CPU figures as `avbus bench` adds them (`run_avbus`); for a peer,
/// all but the avbus-only ones (`command`, `tingest`, `tfanout`, `tflood`), which
/// are skipped without a row.
async fn run_system(
    t: &dyn Transport,
    pid: u32,
    workloads: &[&str],
    scale: f64,
    addr: Option<&str>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for w in workloads {
        let r = match addr {
            Some(addr) => run_avbus(t, addr, w, scale, Some(pid)).await,
            None if AVBUS_ONLY.contains(w) => continue,
            None => {
                let cpu0 = cpu_ms(pid);
                run_workload(t, w, scale, Some(pid)).await.map(|r| {
                    r.map(|mut row| {
                        add_cpu(&mut row, cpu0, cpu_ms(pid));
                        row
                    })
                })
            }
        };
        match r {
            Ok(Some(row)) => {
                eprintln!("{}", row.line());
                rows.push(row);
            }
            Ok(None) => eprintln!("BENCH workload={w} system={} n/a", t.system()),
            Err(e) => eprintln!("BENCH workload={w} system={} error={e:?}", t.system()),
        }
    }
    rows
}

/// A floor server started with `spawn_ready` (`avbus-peers-bench udp-echo` or
/// `udp-sink`), killed when dropped, with the addresses of its ready line.
struct FloorServer {
    child: Child,
    udp: std::net::SocketAddr,
    tcp: Option<std::net::SocketAddr>,
}

impl FloorServer {
    fn start(exe: &Path, cmd: &str) -> Result<FloorServer, String> {
        let (mut child, ready) = spawn_ready(exe, &[cmd]).map_err(|e| format!("{cmd}: {e}"))?;
        let addr = |key: &str| {
            ready["ready"][key]
                .as_str()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        };
        let (udp, tcp) = (addr("udp"), addr("tcp"));
        let Some(udp) = udp else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd}: no udp address in its ready line"));
        };
        Ok(FloorServer { child, udp, tcp })
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The UDP floor rows of the chosen workloads: `floor-udp-echo` (`rtt`) and
/// `floor-udp-sink` (`tingest`), each against a server process of its own.
async fn udp_floor(exe: &Path, workloads: &[&str], scale: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut report = |w: &str, system: &str, r: Result<Row, String>| match r {
        Ok(row) => {
            eprintln!("{}", row.line());
            rows.push(row);
        }
        Err(e) => eprintln!("BENCH workload={w} system={system} error={e:?}"),
    };
    if workloads.contains(&"rtt") {
        let r = match FloorServer::start(exe, "udp-echo") {
            Ok(echo) => floor::udp_rtt(echo.udp, scale).await,
            Err(e) => Err(e),
        };
        report("rtt", "floor-udp-echo", r);
    }
    if workloads.contains(&"tingest") {
        let r = match FloorServer::start(exe, "udp-sink") {
            Ok(sink) => match sink.tcp {
                Some(tcp) => floor::udp_ingest(sink.udp, tcp, sink.child.id(), scale).await,
                None => Err("udp-sink: no tcp address in its ready line".into()),
            },
            Err(e) => Err(e),
        };
        report("tingest", "floor-udp-sink", r);
    }
    rows
}

/// One run of everything; rows per (workload, system).
async fn one_run(
    opts: &Opts,
    workloads: &[&str],
    notes: &mut Vec<String>,
) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("avbus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();

    if workloads.contains(&"rtt") && opts.runs_system("floor") {
        let echo = OwnBus::start_with(&exe, &["echo"]).map_err(|e| e.to_string())?;
        rows.push(floor::rtt(&echo.addr, false, opts.scale).await?);
        let relay = OwnBus::start_with(&exe, &["relay"]).map_err(|e| e.to_string())?;
        rows.push(floor::rtt(&relay.addr, true, opts.scale).await?);
    }
    if opts.runs_system("floor") {
        rows.extend(udp_floor(&exe, workloads, opts.scale).await);
    }

    if opts.runs_system("avbus") {
        let bus = OwnBus::start_with(&exe, &["serve-avbus"]).map_err(|e| e.to_string())?;
        let t = AvbusTransport::new(&bus.addr);
        rows.extend(run_system(&t, bus.pid(), workloads, opts.scale, Some(&bus.addr)).await);
    }

    if opts.runs_system("mosquitto") {
        match start_mosquitto(&dir) {
            Ok(server) => {
                let t = mqtt::MqttTransport { port: server.port };
                rows.extend(run_system(&t, server.child.id(), workloads, opts.scale, None).await);
            }
            Err(e) => notes.push(format!("mosquitto: absent ({e})")),
        }
    }
    if opts.runs_system("nats") {
        match start_nats(&dir) {
            Ok(server) => {
                let (t, kv_error) = nats::NatsTransport::new(server.port).await;
                if let Some(e) = kv_error {
                    notes.push(format!(
                        "nats: JetStream KV unavailable ({e}), snapshot n/a"
                    ));
                }
                rows.extend(run_system(&t, server.child.id(), workloads, opts.scale, None).await);
            }
            Err(e) => notes.push(format!("nats-server: absent ({e})")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// The median of each figure over runs, per (workload, system).
fn medians(runs: Vec<Vec<Row>>) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let Some(first) = runs.first() else {
        return out;
    };
    for r in first {
        let mut row = r.clone();
        for (k, v) in row.figures.iter_mut() {
            let mut vals: Vec<f64> = runs
                .iter()
                .filter_map(|run| {
                    run.iter()
                        .find(|x| x.workload == r.workload && x.system == r.system)
                })
                .filter_map(|x| x.get(k))
                .collect();
            vals.sort_by(|a, b| a.total_cmp(b));
            if !vals.is_empty() {
                *v = vals[vals.len() / 2];
            }
        }
        out.push(row);
    }
    out
}

/// Adds `<metric>_vs_<peer>` to each avbus row: how many times better avbus is
/// (peer/avbus for latencies and times, avbus/peer for rates; above 1 = avbus
/// better), `p50_x_relay_floor` to `rtt`, and `cpu_x_udp_floor` to `tingest` (the
/// bus's CPU per datagram over the UDP sink's).
fn ratios(rows: &mut [Row]) {
    let find = |rows: &[Row], w: &str, s: &str, k: &str| {
        rows.iter()
            .find(|r| r.workload == w && r.system == s)
            .and_then(|r| r.get(k))
    };
    let mut extra: Vec<(usize, String, f64)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.system != "avbus" {
            continue;
        }
        if r.workload == "tingest" {
            let floor = find(rows, "tingest", "floor-udp-sink", "cpu_us_per_datagram");
            if let (Some(mine), Some(floor)) = (r.get("bus_cpu_us_per_datagram"), floor) {
                if floor > 0.0 {
                    extra.push((
                        i,
                        "cpu_x_udp_floor".into(),
                        (mine / floor * 100.0).round() / 100.0,
                    ));
                }
            }
        }
        for (w, k, lower_better) in PRIMARY {
            if r.workload != *w {
                continue;
            }
            let Some(mine) = r.get(k) else { continue };
            for peer in ["mosquitto", "nats"] {
                if let Some(theirs) = find(rows, w, peer, k) {
                    if mine > 0.0 && theirs > 0.0 {
                        let ratio = if *lower_better {
                            theirs / mine
                        } else {
                            mine / theirs
                        };
                        extra.push((i, format!("{k}_vs_{peer}"), (ratio * 100.0).round() / 100.0));
                    }
                }
            }
            if *w == "rtt" && *k == "p50_us" {
                if let Some(floor) = find(rows, "rtt", "floor-relay", "p50_us") {
                    extra.push((
                        i,
                        "p50_x_relay_floor".into(),
                        (mine / floor * 100.0).round() / 100.0,
                    ));
                }
            }
        }
    }
    for (i, k, v) in extra {
        rows[i].figures.push((k, v));
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

async fn bench(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    let workloads: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| opts.workloads.is_empty() || opts.workloads.iter().any(|x| x == w))
        .collect();
    let mut notes = Vec::new();
    let mut runs = Vec::new();
    for run in 0..opts.runs.max(1) {
        eprintln!("run {}/{}", run + 1, opts.runs.max(1));
        runs.push(one_run(&opts, &workloads, &mut notes).await?);
    }
    notes.dedup();
    let mut rows = medians(runs);
    // One table per workload, in the order they run (the floor's rows, which run
    // first, at the top of theirs).
    rows.sort_by_key(|r| WORKLOADS.iter().position(|w| *w == r.workload));
    ratios(&mut rows);
    let mut report = format!(
        "Machine: {}. Scale {}, {} run(s) (medians), {}.\n",
        machine(),
        fmt_num(opts.scale),
        opts.runs.max(1),
        std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    );
    for n in &notes {
        report.push_str(&format!("\n- {n}"));
    }
    report.push_str(&table(&rows));
    println!("{report}");
    for r in &rows {
        println!("{}", r.line());
    }
    if let Some(out) = &opts.out {
        std::fs::write(out, &report).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

/// Serves something on 127.0.0.1 (a free port) and prints the ready line the bench
/// waits for; extra arguments (`--listen`, `--log-level`) are accepted and ignored.
async fn serve_floor(relay: bool) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("{{\"ready\":{{\"tcp\":\"{addr}\"}}}}");
    if relay {
        floor::serve_relay(listener).await;
    } else {
        floor::serve_echo(listener).await;
    }
    Ok(())
}

async fn serve_avbus() -> Result<(), String> {
    let mut cfg = avbus::config::Config::parse(avbus::bench::BUS_CONFIG, "bench")
        .map_err(|e| e.to_string())?;
    cfg.listen.tcp = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    cfg.listen.http = None;
    avbus::bus::serve(
        cfg,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
        |h| {
            println!("{}", avbus::bus::ready_line(h));
        },
    )
    .await
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The UDP floor's servers: one blocking thread each, no runtime.
    let udp_floor = match args.first().map(String::as_str) {
        Some("udp-echo") => Some(floor::serve_udp_echo as fn() -> Result<(), String>),
        Some("udp-sink") => Some(floor::serve_udp_sink as fn() -> Result<(), String>),
        _ => None,
    };
    if let Some(serve) = udp_floor {
        return match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("avbus-peers-bench: {e}");
                ExitCode::from(1)
            }
        };
    }
    // AVBUS_THREADS=1 runs the bus under test on a single-threaded runtime (an
    // experiment knob; the default is tokio's multi-threaded runtime, as `avbus serve`).
    let single = args.first().map(String::as_str) == Some("serve-avbus")
        && std::env::var("AVBUS_THREADS").as_deref() == Ok("1");
    let built = if single {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let r = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("serve-avbus") => serve_avbus().await,
            Some("echo") => serve_floor(false).await,
            Some("relay") => serve_floor(true).await,
            _ => bench(&args).await,
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("avbus-peers-bench: {e}");
            ExitCode::from(1)
        }
    }
}
