//! `avbus bench`: the avbus workloads of the benchmark suite, runnable against any
//! bus (`--bus ADDR`) or against a bus it starts as its own process.
//!
//! Latency comes from a timestamp in each payload (one process, one monotonic clock)
//! recorded in an HDR histogram; throughput from messages received, not sent. Every
//! loop is bounded in count and in time. The comparison with Mosquitto and
//! nats-server on the same workloads lives in `benches/` (see `docs/performance.md`).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;

use crate::client::{Client, ClientOptions, SubEvent, Subscription};
use crate::model::{ControlKind, ControlSpec, DeviceDescriptor, Quality};
use crate::protocol::Role;
use crate::value::Value;

/// Payload size of every benchmark message, as in the peers' workloads.
pub const PAYLOAD: usize = 64;
/// Longest any single wait may take before the message counts as lost.
const WAIT: Duration = Duration::from_secs(2);

/// One result row: a workload on one system, with named figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub system: String,
    pub figures: Vec<(String, f64)>,
}

impl Row {
    fn new(workload: &str, figures: Vec<(&str, f64)>) -> Row {
        Row {
            workload: workload.into(),
            system: "avbus".into(),
            figures: figures
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
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

fn fmt_num(v: f64) -> String {
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

/// The workloads `avbus bench` knows, in the order they run.
pub const WORKLOADS: &[&str] = &[
    "rtt",
    "throughput",
    "fanout",
    "fanin",
    "snapshot",
    "command",
];

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// A 64-byte payload whose first 8 bytes are the send time (ns since [`base`]).
fn stamp() -> Value {
    let mut b = vec![0u8; PAYLOAD];
    let ns = base().elapsed().as_nanos() as u64;
    b[..8].copy_from_slice(&ns.to_le_bytes());
    Value::Binary(b)
}

/// Microseconds since the stamp in `v`.
fn age_us(v: &Value) -> Option<u64> {
    let Value::Binary(b) = v else { return None };
    let ns = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    Some((base().elapsed().as_nanos() as u64).saturating_sub(ns) / 1000)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn quantiles(h: &Histogram<u64>) -> Vec<(&'static str, f64)> {
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

async fn connect(addr: &str, name: &str) -> Result<Client, crate::client::Error> {
    let mut o = ClientOptions::tcp(addr, name).role(Role::Tool);
    o.sub_queue = 1 << 20;
    o.reconnect = false;
    Client::connect(o).await
}

async fn synced(sub: &mut Subscription) {
    while let Ok(Some(ev)) = tokio::time::timeout(WAIT * 5, sub.next()).await {
        if let SubEvent::Synced { .. } = ev {
            return;
        }
    }
}

/// Waits for the next update on `sub`, or `None` after [`WAIT`].
async fn next_update(sub: &mut Subscription) -> Option<crate::protocol::Update> {
    loop {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(SubEvent::Update(u))) => return Some(u),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

fn scaled(n: u64, scale: f64) -> u64 {
    ((n as f64 * scale).round() as u64).max(1)
}

/// `rtt`: ping-pong through the bus, one message in flight.
async fn rtt(addr: &str, scale: f64) -> Result<Row, crate::client::Error> {
    let a = connect(addr, "bench-rtt-a").await?;
    let b = connect(addr, "bench-rtt-b").await?;
    let mut pings = b.subscribe(&["bench/rtt/ping"]).await?;
    synced(&mut pings).await;
    let mut pongs = a.subscribe(&["bench/rtt/pong"]).await?;
    synced(&mut pongs).await;
    let echo = b.clone();
    let echo_task = tokio::spawn(async move {
        while let Some(ev) = pings.next().await {
            if let SubEvent::Update(u) = ev {
                if echo
                    .publish_nowait("bench/rtt/pong", u.value, false)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let n = scaled(20_000, scale);
    let warmup = scaled(1_000, scale);
    let deadline = Instant::now() + Duration::from_secs_f64(20.0 * scale.max(0.25));
    let mut h = histogram();
    let mut lost = 0u64;
    for i in 0..warmup + n {
        if Instant::now() > deadline {
            break;
        }
        let t0 = Instant::now();
        a.publish_nowait("bench/rtt/ping", stamp(), false).await?;
        match next_update(&mut pongs).await {
            Some(_) if i >= warmup => {
                let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
            }
            Some(_) => {}
            None => lost += 1,
        }
    }
    echo_task.abort();
    a.close().await;
    b.close().await;
    let mut f = quantiles(&h);
    f.push(("lost", lost as f64));
    Ok(Row::new("rtt", f))
}

/// `throughput`: one publisher, one subscriber, as fast as possible.
async fn throughput(addr: &str, scale: f64) -> Result<Row, crate::client::Error> {
    let p = connect(addr, "bench-tp-pub").await?;
    let s = connect(addr, "bench-tp-sub").await?;
    let mut sub = s.subscribe(&["bench/tp"]).await?;
    synced(&mut sub).await;
    let n = scaled(300_000, scale);
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        let mut first = None;
        let mut last = Instant::now();
        while got < n {
            match tokio::time::timeout(WAIT, sub.next()).await {
                Ok(Some(SubEvent::Update(_))) => {
                    got += 1;
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        (got, first.map_or(Duration::ZERO, |f| last - f))
    });
    let cpu0 = cpu_ms(std::process::id());
    let payload = stamp();
    let limit = Instant::now() + Duration::from_secs(30);
    for _ in 0..n {
        p.publish_nowait("bench/tp", payload.clone(), false).await?;
        if Instant::now() > limit {
            break;
        }
    }
    let (got, span) = counter.await.unwrap_or((0, Duration::ZERO));
    let cpu1 = cpu_ms(std::process::id());
    p.close().await;
    s.close().await;
    let rate = if span.is_zero() {
        0.0
    } else {
        got as f64 / span.as_secs_f64()
    };
    let mut f = vec![
        ("msgs_per_s", rate.round()),
        ("received", got as f64),
        ("lost", (n - got.min(n)) as f64),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        f.push(("client_cpu_ms", b - a));
    }
    Ok(Row::new("throughput", f))
}

/// `fanout`: one publisher paced at 2,000 msg/s to 100 subscribers.
async fn fanout(addr: &str, scale: f64) -> Result<Row, crate::client::Error> {
    const SUBS: usize = 100;
    const RATE: u64 = 2_000;
    let secs = (5.0 * scale).max(0.5);
    let n = (RATE as f64 * secs) as u64;
    let hist = Arc::new(Mutex::new(histogram()));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut clients = Vec::new();
    for i in 0..SUBS {
        let c = connect(addr, &format!("bench-fan-{i}")).await?;
        let mut sub = c.subscribe(&["bench/fanout"]).await?;
        synced(&mut sub).await;
        let (hist, delivered) = (hist.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut got = 0;
            while got < n {
                match next_update(&mut sub).await {
                    Some(u) => {
                        if let Some(us) = age_us(&u.value) {
                            let _ = local.record(us.max(1));
                        }
                        got += 1;
                    }
                    None => break,
                }
            }
            delivered.fetch_add(got, Ordering::Relaxed);
            if let Ok(mut h) = hist.lock() {
                let _ = h.add(&local);
            }
        }));
        clients.push(c);
    }
    let p = connect(addr, "bench-fan-pub").await?;
    let started = Instant::now();
    // Two messages per 1 ms tick: 2,000 msg/s without relying on sub-ms timers.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < n {
        tick.tick().await;
        for _ in 0..RATE / 1000 {
            p.publish_nowait("bench/fanout", stamp(), false).await?;
            sent += 1;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for c in clients {
        c.close().await;
    }
    p.close().await;
    let got = delivered.load(Ordering::Relaxed);
    let expected = n * SUBS as u64;
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    Ok(Row::new(
        "fanout",
        vec![
            ("delivered_per_s", (got as f64 / elapsed).round()),
            ("loss", (expected - got.min(expected)) as f64),
            ("p50_us", h.value_at_quantile(0.5) as f64),
            ("p99_us", h.value_at_quantile(0.99) as f64),
        ],
    ))
}

/// `fanin`: 50 publishers to one subscriber, as fast as possible.
async fn fanin(addr: &str, scale: f64) -> Result<Row, crate::client::Error> {
    const PUBS: u64 = 50;
    let per = scaled(4_000, scale);
    let s = connect(addr, "bench-fanin-sub").await?;
    let mut sub = s.subscribe(&["bench/fanin/+"]).await?;
    synced(&mut sub).await;
    let total = PUBS * per;
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        let started = Instant::now();
        while got < total {
            match next_update(&mut sub).await {
                Some(_) => got += 1,
                None => break,
            }
        }
        (got, started.elapsed())
    });
    let mut pubs = Vec::new();
    for i in 0..PUBS {
        let c = connect(addr, &format!("bench-fanin-{i}")).await?;
        pubs.push(tokio::spawn(async move {
            let topic = format!("bench/fanin/{i}");
            let payload = stamp();
            for _ in 0..per {
                if c.publish_nowait(&topic, payload.clone(), false)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            c.close().await;
        }));
    }
    for p in pubs {
        let _ = p.await;
    }
    let (got, span) = counter.await.unwrap_or((0, Duration::ZERO));
    s.close().await;
    Ok(Row::new(
        "fanin",
        vec![
            (
                "msgs_per_s",
                (got as f64 / span.as_secs_f64().max(1e-9)).round(),
            ),
            ("loss", (total - got.min(total)) as f64),
        ],
    ))
}

/// `snapshot`: 100,000 retained topics; time for a new `#` subscriber to hold all.
async fn snapshot(addr: &str, scale: f64) -> Result<Row, crate::client::Error> {
    let n = scaled(100_000, scale);
    let p = connect(addr, "bench-snap-pub").await?;
    let payload = stamp();
    for i in 0..n {
        p.publish_nowait(&format!("snap/{}/{i}", i / 1000), payload.clone(), true)
            .await?;
    }
    p.publish("snap/done", Value::Boolean(true), true).await?;
    let s = connect(addr, "bench-snap-sub").await?;
    let t0 = Instant::now();
    let mut sub = s.subscribe(&["#"]).await?;
    let mut got = 0u64;
    while let Ok(Some(ev)) = tokio::time::timeout(WAIT * 5, sub.next()).await {
        match ev {
            SubEvent::Update(u) if u.topic.starts_with("snap/") => got += 1,
            SubEvent::Synced { .. } => break,
            _ => {}
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Clean up, so the next run starts from the same state.
    for i in 0..n {
        p.publish_nowait(&format!("snap/{}/{i}", i / 1000), Value::Nil, true)
            .await?;
    }
    p.publish("snap/done", Value::Nil, true).await?;
    p.close().await;
    s.close().await;
    Ok(Row::new(
        "snapshot",
        vec![
            ("topics", n as f64),
            ("received", got as f64),
            ("ms", (ms * 100.0).round() / 100.0),
        ],
    ))
}

/// `command`: set → adapter → confirmed state back to the panel.
async fn command(addr: &str, scale: f64) -> Result<Row, crate::client::Error> {
    let adapter = connect(addr, "bench-adapter").await?;
    let mut commands = adapter.commands().await;
    let device = DeviceDescriptor {
        room: "bench".into(),
        name: format!("dev{}", std::process::id()),
        label: "Bench device".into(),
        class: "virtual".into(),
        driver: "bench".into(),
        controls: vec![ControlSpec::new("toggle", ControlKind::Bool)],
    };
    let topic = format!("{}/toggle", device.key());
    adapter.declare(device, true).await?;
    adapter
        .publish_state(&topic, Value::Boolean(false), Quality::Ok)
        .await?;
    let a = adapter.clone();
    let responder = tokio::spawn(async move {
        while let Some(cmd) = commands.recv().await {
            let t = cmd.command.topic.clone();
            let v = cmd.command.value.clone();
            let _ = a.publish_state(&t, v, Quality::Ok).await;
            cmd.ok(Value::Nil).await;
        }
    });
    let panel = connect(addr, "bench-panel").await?;
    let mut sub = panel.subscribe(&[&topic]).await?;
    synced(&mut sub).await;
    let n = scaled(5_000, scale);
    let mut h = histogram();
    let mut state = false;
    let mut failed = 0u64;
    let limit = Instant::now() + Duration::from_secs(30);
    for _ in 0..n {
        if Instant::now() > limit {
            break;
        }
        state = !state;
        let t0 = Instant::now();
        if panel.set(&topic, Value::Boolean(state)).await.is_err() {
            failed += 1;
            continue;
        }
        // Confirmed: the record back at ok with the new value (it already arrived
        // before the answer, as the bus orders them).
        loop {
            match next_update(&mut sub).await {
                Some(u) if u.quality == Some(Quality::Ok) && u.value == Value::Boolean(state) => {
                    let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                    break;
                }
                Some(_) => {}
                None => {
                    failed += 1;
                    break;
                }
            }
        }
    }
    responder.abort();
    panel.close().await;
    adapter.close().await;
    let mut f = quantiles(&h);
    f.push(("failed", failed as f64));
    Ok(Row::new("command", f))
}

/// A bus started by the bench as its own process.
pub struct OwnBus {
    child: Child,
    pub addr: String,
}

impl OwnBus {
    /// Starts `avbus serve --listen 127.0.0.1:0` from this executable and waits for
    /// its ready line.
    ///
    /// # Errors
    /// If the process cannot start or prints no ready line.
    pub fn start() -> std::io::Result<OwnBus> {
        use std::io::BufRead;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let ready: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::other(format!("ready line: {e}")))?;
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

/// Runs the chosen workloads against `addr`; `bus_pid` (when the bench started the
/// bus) adds the bus's CPU time per delivered message.
///
/// # Errors
/// A client error that stopped a workload.
pub async fn run(
    addr: &str,
    bus_pid: Option<u32>,
    cfg: &BenchConfig,
) -> Result<Vec<Row>, crate::client::Error> {
    let mut rows = Vec::new();
    for w in WORKLOADS {
        if !cfg.workloads.is_empty() && !cfg.workloads.iter().any(|x| x == w) {
            continue;
        }
        let cpu0 = bus_pid.and_then(cpu_ms);
        let mut row = match *w {
            "rtt" => rtt(addr, cfg.scale).await?,
            "throughput" => throughput(addr, cfg.scale).await?,
            "fanout" => fanout(addr, cfg.scale).await?,
            "fanin" => fanin(addr, cfg.scale).await?,
            "snapshot" => snapshot(addr, cfg.scale).await?,
            _ => command(addr, cfg.scale).await?,
        };
        let cpu1 = bus_pid.and_then(cpu_ms);
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            row.figures.push(("bus_cpu_ms".into(), b - a));
            let delivered: HashMap<&str, f64> =
                row.figures.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let msgs = delivered
                .get("n")
                .or(delivered.get("received"))
                .copied()
                .unwrap_or(0.0);
            if msgs > 0.0 {
                row.figures.push((
                    "bus_cpu_us_per_msg".into(),
                    ((b - a) * 1000.0 / msgs * 100.0).round() / 100.0,
                ));
            }
        }
        println!("{}", row.line());
        rows.push(row);
    }
    Ok(rows)
}

/// Renders rows as a markdown table (one table per workload).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!("\n**{}**\n\n| system |", r.workload));
        for (k, _) in &r.figures {
            out.push_str(&format!(" {k} |"));
        }
        out.push_str("\n|---|");
        for _ in &r.figures {
            out.push_str("---|");
        }
        out.push_str(&format!("\n| {} |", r.system));
        for (_, v) in &r.figures {
            out.push_str(&format!(" {} |", fmt_num(*v)));
        }
        out.push('\n');
    }
    out
}
