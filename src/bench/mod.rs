//! The benchmark workloads, written once against a small [`Transport`] trait so that
//! avbus and its peers (Mosquitto, nats-server: `benches/peers`) run exactly the same
//! client pattern, payload and pacing. `avbus bench` runs them against any bus
//! (`--bus ADDR`) or one it starts as its own process.
//!
//! Latency comes from a timestamp in each payload (one process, one monotonic clock)
//! recorded in an HDR histogram; throughput from messages received, not sent. Every
//! loop is bounded in count and in time.

mod avbus;
mod devices;
mod journal;
pub mod telemetry;
mod workloads;

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;

pub use self::avbus::{command, AvbusTransport};
pub use self::devices::{devices, NAME as DEVICES, STEPS as DEVICE_STEPS};
pub use self::journal::{journal, NAME as JOURNAL};
pub use workloads::{connections, fanin, fanout, rtt, site, snapshot, throughput};

/// Payload size of every benchmark message, as in the peers' workloads.
pub const PAYLOAD: usize = 64;
/// Longest any single wait may take before the message counts as lost.
pub const WAIT: Duration = Duration::from_secs(2);
/// Capacity of a benchmark subscription's receiver: large, so that the benchmark's
/// own reader is never where messages are lost.
pub const BENCH_QUEUE: usize = 1 << 20;

/// What a benchmark needs from a system under test. Topics use `/` and MQTT-style
/// filters (`+`, `#`); a transport translates them to its own syntax.
pub trait Transport: Send + Sync {
    /// The system's name in the result rows.
    fn system(&self) -> &str;
    /// Opens one client connection.
    fn connect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Box<dyn Conn>, String>>;
    /// Whether the system keeps retained state (for `snapshot`).
    fn retains(&self) -> bool {
        true
    }
}

/// The payloads of one subscription.
pub type Feed = futures_util::stream::BoxStream<'static, Bytes>;

/// One client connection of a [`Transport`].
pub trait Conn: Send + Sync {
    /// Subscribes; resolves once the subscription is active. Payloads of matching
    /// messages (retained ones first, where the system has them) arrive on the
    /// feed, read the way the system's client delivers them (its own stream where it
    /// has one, no extra task in between).
    fn subscribe<'a>(&'a self, filter: &'a str) -> BoxFuture<'a, Result<Feed, String>>;
    /// Publishes without waiting for the broker.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        retain: bool,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Resolves once everything published so far has reached the broker.
    fn flush(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Closes the connection.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// One result row: a workload on one system, with named figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub system: String,
    pub figures: Vec<(String, f64)>,
}

impl Row {
    pub fn new(workload: &str, system: &str, figures: Vec<(&str, f64)>) -> Row {
        Row {
            workload: workload.into(),
            system: system.into(),
            figures: figures
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }

    /// A figure by name.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The machine-readable line: `BENCH workload=rtt system=avbus p50_us=...`.
    pub fn line(&self) -> String {
        let mut s = format!("BENCH workload={} system={}", self.workload, self.system);
        for (k, v) in &self.figures {
            s.push_str(&format!(" {k}={}", fmt_num(*v)));
        }
        s
    }
}

/// A number as the tables print it: integers without decimals, others with two.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// Which workloads to run and how big.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub workloads: Vec<String>,
    /// Multiplies message counts and durations (0.1 for a quick smoke run).
    pub scale: f64,
}

/// The workloads `avbus bench` runs against a bus, in the order they run ([`DEVICES`]
/// starts its own bus and runs only when named).
pub const WORKLOADS: &[&str] = &[
    "rtt",
    "throughput",
    "fanout",
    "fanin",
    "snapshot",
    "site",
    "connections",
    "command",
    "tingest",
    "tfanout",
    "tflood",
];

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// A 64-byte payload whose first 8 bytes are the send time (ns since a process-wide
/// monotonic base).
pub fn stamp() -> Bytes {
    let mut b = vec![0u8; PAYLOAD];
    let ns = base().elapsed().as_nanos() as u64;
    b[..8].copy_from_slice(&ns.to_le_bytes());
    Bytes::from(b)
}

/// Microseconds since the stamp in `payload`.
pub fn age_us(payload: &[u8]) -> Option<u64> {
    let ns = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some((base().elapsed().as_nanos() as u64).saturating_sub(ns) / 1000)
}

/// A latency histogram in µs, from 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// p50, p99, p99.9, max and count of a histogram, as row figures.
pub fn quantiles(h: &Histogram<u64>) -> Vec<(&'static str, f64)> {
    vec![
        ("p50_us", h.value_at_quantile(0.50) as f64),
        ("p99_us", h.value_at_quantile(0.99) as f64),
        ("p999_us", h.value_at_quantile(0.999) as f64),
        ("max_us", h.max() as f64),
        ("n", h.len() as f64),
    ]
}

/// CPU time (user + system) of a process, in ms, from `/proc/<pid>/stat`.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks * 10.0)
}

/// `n` multiplied by the run's scale (at least 1).
pub fn scaled(n: u64, scale: f64) -> u64 {
    ((n as f64 * scale).round() as u64).max(1)
}

/// Runs one workload on `t`; `None` when it cannot run here (`snapshot` without
/// retained state, `connections` without the broker's process id; the
/// [`AVBUS_ONLY`] workloads are run by [`run_avbus`]).
///
/// # Errors
/// A transport error that stopped the workload.
pub async fn run_workload(
    t: &dyn Transport,
    workload: &str,
    scale: f64,
    broker_pid: Option<u32>,
) -> Result<Option<Row>, String> {
    Ok(Some(match (workload, broker_pid) {
        ("rtt", _) => rtt(t, scale).await?,
        ("throughput", _) => throughput(t, scale).await?,
        ("fanout", _) => fanout(t, scale).await?,
        ("fanin", _) => fanin(t, scale).await?,
        ("snapshot", _) if t.retains() => snapshot(t, scale).await?,
        ("site", _) => site(t, scale).await?,
        ("connections", Some(pid)) => connections(t, scale, pid).await?,
        _ => return Ok(None),
    }))
}

/// Adds the broker's CPU time over a workload (and per delivered message) to a row.
pub fn add_cpu(row: &mut Row, before: Option<f64>, after: Option<f64>) {
    let (Some(a), Some(b)) = (before, after) else {
        return;
    };
    row.figures.push(("broker_cpu_ms".into(), b - a));
    let msgs = ["n", "received", "delivered"]
        .iter()
        .find_map(|k| row.get(k))
        .unwrap_or(0.0);
    if msgs > 0.0 {
        let per = (b - a) * 1000.0 / msgs;
        row.figures.push((
            "broker_cpu_us_per_msg".into(),
            (per * 100.0).round() / 100.0,
        ));
    }
}

/// Runs the chosen workloads against the avbus at `addr`; `bus_pid` (when the bench
/// started the bus) adds the bus's CPU time per delivered message.
///
/// # Errors
/// A client error that stopped a workload.
pub async fn run(addr: &str, bus_pid: Option<u32>, cfg: &BenchConfig) -> Result<Vec<Row>, String> {
    let t = AvbusTransport::new(addr);
    let mut rows = Vec::new();
    for w in WORKLOADS {
        if !cfg.workloads.is_empty() && !cfg.workloads.iter().any(|x| x == w) {
            continue;
        }
        let Some(row) = run_avbus(&t, addr, w, cfg.scale, bus_pid).await? else {
            continue;
        };
        println!("{}", row.line());
        rows.push(row);
    }
    Ok(rows)
}

/// The workloads only avbus runs: no peer routes commands or has a rate-limited,
/// newest-value telemetry path.
pub const AVBUS_ONLY: &[&str] = &["command", "tingest", "tfanout", "tflood"];

/// The telemetry workloads, which compute the bus's CPU per datagram themselves.
const TELEMETRY: &[&str] = &["tingest", "tfanout", "tflood"];

/// Runs one of [`WORKLOADS`] against the avbus at `addr` (`t` being an
/// [`AvbusTransport`] to it), as `avbus bench` and `benches/peers` both do. With
/// `bus_pid`, the row gets the bus's CPU over the workload (`broker_cpu_ms`), and
/// per delivered message (`broker_cpu_us_per_msg`) except on the telemetry rows:
/// those divide the bus's CPU by datagrams themselves (`bus_cpu_us_per_datagram`,
/// `bus_cpu_pct`, ...), and `tflood`'s commands are not what its bus CPU is spent
/// on (the flood is).
///
/// # Errors
/// A client error that stopped the workload.
pub async fn run_avbus(
    t: &dyn Transport,
    addr: &str,
    workload: &str,
    scale: f64,
    bus_pid: Option<u32>,
) -> Result<Option<Row>, String> {
    let cpu0 = bus_pid.and_then(cpu_ms);
    let row = match workload {
        "command" => Some(command(addr, scale).await?),
        "tingest" => Some(telemetry::ingest(addr, bus_pid, scale).await?),
        "tfanout" => Some(telemetry::fanout(addr, bus_pid, scale).await?),
        "tflood" => Some(telemetry::command_under_flood(addr, bus_pid, scale).await?),
        other => run_workload(t, other, scale, bus_pid).await?,
    };
    let Some(mut row) = row else {
        return Ok(None);
    };
    let cpu1 = bus_pid.and_then(cpu_ms);
    if TELEMETRY.contains(&workload) {
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            row.figures.push(("broker_cpu_ms".into(), b - a));
        }
    } else {
        add_cpu(&mut row, cpu0, cpu1);
    }
    Ok(Some(row))
}

/// The configuration of a bus the bench starts itself: the defaults, with each
/// connection's queue raised to nats-server's default per-client limit (64 MB of
/// pending data), as the bench lifts Mosquitto's queue limits, so that no system
/// drops a burst because of a configured bound. A bus named with `--bus` keeps its
/// own configuration.
pub const BUS_CONFIG: &str = "[listen]
http = \"off\"

[limits]
outbox_bytes = 67108864
outbox_frames = 1048576
";

/// A bus started by the bench as its own process.
pub struct OwnBus {
    child: Child,
    pub addr: String,
}

impl OwnBus {
    /// Starts `avbus serve --listen 127.0.0.1:0` from this executable, configured
    /// with [`BUS_CONFIG`], and waits for its ready line.
    ///
    /// # Errors
    /// If the process cannot start or prints no ready line.
    pub fn start() -> std::io::Result<OwnBus> {
        let path = std::env::temp_dir().join(format!("avbus-bench-{}.toml", std::process::id()));
        std::fs::write(&path, BUS_CONFIG)?;
        let bus = OwnBus::start_with(
            &std::env::current_exe()?,
            &["serve", "--config", &path.to_string_lossy()],
        );
        let _ = std::fs::remove_file(&path);
        bus
    }

    /// Starts `exe ARGS --listen 127.0.0.1:0 --log-level warn` (a program that serves
    /// an avbus and prints its ready line) and waits for the ready line.
    ///
    /// # Errors
    /// If the process cannot start or prints no ready line.
    pub fn start_with(exe: &std::path::Path, args: &[&str]) -> std::io::Result<OwnBus> {
        let (child, ready) = spawn_ready(exe, args)?;
        let addr = ready["ready"]["tcp"]
            .as_str()
            .ok_or_else(|| std::io::Error::other("no address in the ready line"))?
            .to_owned();
        Ok(OwnBus { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OwnBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Longest a child process may take to print its ready line.
const READY_WAIT: Duration = Duration::from_secs(60);

/// Starts `exe ARGS --listen 127.0.0.1:0 --log-level warn` and waits (blocking, at
/// most a minute) for its first stdout line, a JSON `{"ready": …}` object.
/// The child is killed if it prints none.
///
/// # Errors
/// If the process cannot start or prints no ready line in time.
pub fn spawn_ready(
    exe: &std::path::Path,
    args: &[&str],
) -> std::io::Result<(Child, serde_json::Value)> {
    use std::io::BufRead;
    let mut child = Command::new(exe)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(read.map(|_| line));
    });
    let ready = match rx.recv_timeout(READY_WAIT) {
        Ok(Ok(line)) => serde_json::from_str(&line)
            .map_err(|e| std::io::Error::other(format!("ready line: {e}"))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other(format!(
            "no ready line within {READY_WAIT:?}"
        ))),
    };
    if ready.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    ready.map(|ready| (child, ready))
}

/// Renders rows as markdown: one table per workload, one row per system, the
/// columns being every figure any system reported for it.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut workloads: Vec<&str> = Vec::new();
    for r in rows {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    for w in workloads {
        let group: Vec<&Row> = rows.iter().filter(|r| r.workload == w).collect();
        let mut keys: Vec<&str> = Vec::new();
        for r in &group {
            for (k, _) in &r.figures {
                if !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
        }
        out.push_str(&format!("\n**{w}**\n\n| system |"));
        for k in &keys {
            out.push_str(&format!(" {k} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(keys.len()));
        for r in group {
            out.push_str(&format!("\n| {} |", r.system));
            for k in &keys {
                match r.get(k) {
                    Some(v) => out.push_str(&format!(" {} |", fmt_num(v))),
                    None => out.push_str(" |"),
                }
            }
        }
        out.push('\n');
    }
    out
}
