//! Telemetry workloads (avbus only: no peer has a rate-limited, newest-value UDP
//! path to compare with, so these rows stand alone):
//!
//! * `tingest`: 4 adapter sessions (spoken raw, `telemetry/raw.rs`) and one sender
//!   thread that sends their pre-encoded `publish` datagrams (32 one-channel
//!   records each) as fast as the kernel takes them; the bus's `$sys/telemetry`
//!   counters give datagrams and values taken in per second, and the bus's CPU
//!   time (user and system) the cost per datagram (the hub is one task, so this is
//!   one core's worth). [`blast_floor`] sends the same load to a plain UDP
//!   receiver, the floor `benches/peers` compares the bus with.
//! * `tfanout`: 100 panels subscribed at 30 Hz to 64 streams updated at 100 Hz:
//!   values delivered, datagrams lost, the rate each panel saw, the bus's CPU.
//! * `tflood`: command round trips with and without a telemetry flood, alternated
//!   in the same run against the same bus (telemetry must not delay control). The
//!   flood runs apart from the command client: its source (a raw adapter sending
//!   pre-encoded datagrams) on a thread and runtime of its own, its receivers (raw
//!   panels that count datagrams, decoding nothing) on another at the lowest CPU
//!   priority. The flood costs the bench little and the command client comes
//!   first, so the difference measured is the bus's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{cpu_ms, scaled, Row};

mod raw;
use crate::client::{Client, ClientOptions};
use crate::model::{ControlKind, ControlSpec, DeviceDescriptor};
use crate::protocol::Role;
use crate::value::Value;

async fn connect(addr: &str, name: &str, role: Role) -> Result<Client, String> {
    let mut o = ClientOptions::tcp(addr, name).role(role);
    o.reconnect = false;
    Client::connect(o).await.map_err(|e| e.to_string())
}

/// A device `bench/<name>` with `n` one-channel meters `m00`…; returns its client
/// and the meter topics.
async fn meter_device(addr: &str, name: &str, n: usize) -> Result<(Client, Vec<String>), String> {
    let c = connect(addr, name, Role::Adapter).await?;
    let controls = (0..n)
        .map(|i| {
            ControlSpec::new(
                &format!("m{i:02}"),
                ControlKind::Meter {
                    min: 0.0,
                    max: 1.0,
                    unit: String::new(),
                    channels: 1,
                    rate_hz: 100.0,
                },
            )
        })
        .collect();
    let device = DeviceDescriptor {
        room: "bench".into(),
        name: format!("{name}{}", std::process::id()),
        label: "Bench meters".into(),
        class: "console".into(),
        driver: "bench".into(),
        controls,
    };
    let key = device.key();
    c.declare(device, true).await.map_err(|e| e.to_string())?;
    let topics = (0..n).map(|i| format!("{key}/m{i:02}")).collect();
    Ok((c, topics))
}

fn frame(topics: &[String], i: u64) -> Vec<(String, Value)> {
    topics
        .iter()
        .enumerate()
        .map(|(k, t)| {
            (
                t.clone(),
                Value::F32(((i + k as u64) % 1000) as f32 / 1000.0),
            )
        })
        .collect()
}

async fn sys_counter(c: &Client, name: &str) -> f64 {
    match c.get(&format!("$sys/telemetry/{name}")).await {
        Ok(Some(u)) => u.value.as_u64().unwrap_or(0) as f64,
        _ => 0.0,
    }
}

/// Waits for the next `$sys` refresh so counters read after it include everything
/// sent before.
async fn settle(c: &Client) {
    let mut sub = match c.subscribe(&["$sys/telemetry/values_in"]).await {
        Ok(s) => s,
        Err(_) => return,
    };
    use futures_util::StreamExt;
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut seen = 0;
    while let Ok(Some(ev)) = tokio::time::timeout_at(end, sub.next()).await {
        if matches!(ev, crate::client::SubEvent::Update(_)) {
            seen += 1;
            if seen >= 2 {
                return;
            }
        }
    }
}

/// Sender sockets of `tingest` (each an adapter session's, for the bus) and of the
/// UDP floor ([`blast_floor`]).
const INGEST_SENDERS: usize = 4;
/// One-channel meters per sender: 64, i.e. two `publish` datagrams of
/// [`raw::RECORDS_PER_DATAGRAM`] records (912 bytes) each.
const INGEST_STREAMS: usize = 64;

/// How long `tingest` (and its floor) sends, and at most how many datagrams.
fn ingest_window(scale: f64) -> (Duration, u64) {
    (
        Duration::from_secs_f64((5.0 * scale).clamp(1.0, 30.0)),
        scaled(5_000_000, scale),
    )
}

/// The `tingest` load sent to a plain UDP receiver at `target` (the floor,
/// `floor-udp-sink` in `benches/peers`): the same datagrams (912 bytes, two from
/// each of four sockets; token and aliases are placeholders, as the receiver
/// parses nothing), from the same sender loop, for the same time and at most the
/// same count as [`ingest`]. Blocks the calling thread for that time.
/// Returns the datagrams the kernel took and the seconds it took.
///
/// # Errors
/// A socket that cannot be opened or connected.
pub fn blast_floor(target: SocketAddr, scale: f64) -> Result<(u64, f64), String> {
    let aliases: Vec<u32> = (0..INGEST_STREAMS as u32).collect();
    let mut sockets = Vec::new();
    for _ in 0..INGEST_SENDERS {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(target.ip(), 0))
            .map_err(|e| e.to_string())?;
        udp.connect(target).map_err(|e| e.to_string())?;
        sockets.push((udp, raw::publish_datagrams(0, &aliases)));
    }
    let senders: Vec<_> = sockets.iter().map(|(u, d)| (u, d.as_slice())).collect();
    let (limit, max) = ingest_window(scale);
    Ok(raw::blast(&senders, limit, max))
}

/// `tingest`: how much telemetry the bus takes in, and what each datagram costs it.
///
/// # Errors
/// A client error that stopped the workload.
pub async fn ingest(addr: &str, bus_pid: Option<u32>, scale: f64) -> Result<Row, String> {
    let bus_pid = bus_pid_or_env(bus_pid);
    let ops = connect(addr, "bench-ops", Role::Tool).await?;
    let mut adapters = Vec::new();
    for i in 0..INGEST_SENDERS {
        adapters.push(raw::raw_adapter(addr, &format!("ingest{i}-"), INGEST_STREAMS).await?);
    }
    settle(&ops).await;
    let d0 = sys_counter(&ops, "datagrams_in").await;
    let v0 = sys_counter(&ops, "values_in").await;
    let cpu0 = bus_pid.and_then(cpu_ms);
    let split0 = bus_pid.and_then(cpu_split);
    let (limit, max) = ingest_window(scale);
    // The sender is one blocking thread: the bus, not the bench, is the limit.
    let ((sent, secs), adapters) = tokio::task::spawn_blocking(move || {
        let senders: Vec<_> = adapters
            .iter()
            .map(|a| (&a.udp, a.datagrams.as_slice()))
            .collect();
        let r = raw::blast(&senders, limit, max);
        (r, adapters)
    })
    .await
    .map_err(|e| e.to_string())?;
    let cpu_window = bus_pid.and_then(cpu_ms);
    // What the socket still held is taken in after the window: its cost counts.
    settle(&ops).await;
    let cpu1 = bus_pid.and_then(cpu_ms);
    let split1 = bus_pid.and_then(cpu_split);
    let datagrams = sys_counter(&ops, "datagrams_in").await - d0;
    let values = sys_counter(&ops, "values_in").await - v0;
    drop(adapters);
    let mut f = vec![
        ("datagrams_sent_per_s", (sent as f64 / secs).round()),
        ("datagrams_per_s", (datagrams / secs).round()),
        ("values_per_s", (values / secs).round()),
        ("records_per_datagram", raw::RECORDS_PER_DATAGRAM as f64),
        ("seconds", (secs * 100.0).round() / 100.0),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu_window) {
        f.push(("bus_cpu_pct", ((b - a) / 10.0 / secs).round()));
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        if datagrams > 0.0 {
            let per = (b - a) * 1000.0 / datagrams;
            f.push(("bus_cpu_us_per_datagram", (per * 100.0).round() / 100.0));
            f.push(("one_core_datagrams_per_s", (1e6 / per.max(0.001)).round()));
        }
    }
    per_datagram(&mut f, split0, split1, datagrams);
    ops.close().await;
    Ok(Row::new("tingest", "avbus", f))
}

/// Starts a paced publisher of `topics` at `hz` until `stop`.
fn paced_publisher(
    c: Client,
    topics: Vec<String>,
    hz: f64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            c.publish_telemetry(frame(&topics, i));
            i += 1;
        }
        c
    })
}

/// `tfanout`: 100 panels at 30 Hz × 64 streams.
///
/// # Errors
/// A client error that stopped the workload.
pub async fn fanout(addr: &str, bus_pid: Option<u32>, scale: f64) -> Result<Row, String> {
    let bus_pid = bus_pid_or_env(bus_pid);
    const PANELS: usize = 100;
    const STREAMS: usize = 64;
    const HZ: f64 = 30.0;
    let (adapter, topics) = meter_device(addr, "fan-", STREAMS).await?;
    let filter = format!("{}/+", topics[0].rsplit_once('/').map_or("", |(k, _)| k));
    let mut panels = Vec::new();
    for i in 0..PANELS {
        let p = connect(addr, &format!("panel{i}"), Role::Panel).await?;
        let sub = p.telemetry(&filter, HZ).await.map_err(|e| e.to_string())?;
        panels.push((p, sub));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = paced_publisher(adapter, topics, 100.0, stop.clone());
    let secs = (5.0 * scale).clamp(1.0, 30.0);
    let readers: Vec<_> = panels
        .into_iter()
        .map(|(p, mut sub)| {
            tokio::spawn(async move {
                let mut n = 0u64;
                let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
                let start = tokio::time::Instant::now() + Duration::from_secs_f64(secs / 5.0);
                let mut counted = 0u64;
                while let Ok(Some(v)) = tokio::time::timeout_at(end, sub.recv()).await {
                    n += 1;
                    let _ = v;
                    if tokio::time::Instant::now() >= start {
                        counted += 1;
                    }
                }
                (p, sub.stats(), n, counted)
            })
        })
        .collect();
    let cpu0 = bus_pid.and_then(cpu_ms);
    let split0 = bus_pid.and_then(cpu_split);
    let t0 = Instant::now();
    let mut delivered = 0u64;
    let mut counted = 0u64;
    let mut lost = 0u64;
    let mut datagrams = 0u64;
    let mut clients = Vec::new();
    for r in readers {
        let (p, st, n, c) = r.await.map_err(|e| e.to_string())?;
        delivered += n;
        counted += c;
        lost += st.datagrams_lost;
        datagrams += st.datagrams;
        clients.push(p);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = bus_pid.and_then(cpu_ms);
    let split1 = bus_pid.and_then(cpu_split);
    stop.store(true, Ordering::Relaxed);
    let adapter = publisher.await.map_err(|e| e.to_string())?;
    // Each panel's batch rate over the last 4/5 of the run (after the start-up).
    let per_panel_hz = counted as f64 / STREAMS as f64 / PANELS as f64 / (secs * 0.8);
    let mut f = vec![
        ("panels", PANELS as f64),
        ("streams", STREAMS as f64),
        ("asked_hz", HZ),
        ("panel_hz", (per_panel_hz * 10.0).round() / 10.0),
        ("values_per_s", (delivered as f64 / elapsed).round()),
        ("datagrams_per_s", (datagrams as f64 / elapsed).round()),
        ("datagrams_lost", lost as f64),
        (
            "loss_pct",
            if datagrams + lost > 0 {
                (lost as f64 * 10000.0 / (datagrams + lost) as f64).round() / 100.0
            } else {
                0.0
            },
        ),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        f.push(("bus_cpu_pct", ((b - a) / 10.0 / elapsed).round()));
    }
    // Per datagram the bus sent (received or lost): the hub's cost of fan-out,
    // with the ingest of the 100 Hz source and the timer wake-ups included.
    per_datagram(&mut f, split0, split1, (datagrams + lost) as f64);
    for c in clients {
        c.close().await;
    }
    adapter.close().await;
    Ok(Row::new("tfanout", "avbus", f))
}

/// The bus's process id: the one the bench started, or `AVBUS_BENCH_BUS_PID` for a
/// bus given with `--bus` (e.g. one started pinned to a core with `taskset`), so
/// that its CPU time can be read.
fn bus_pid_or_env(pid: Option<u32>) -> Option<u32> {
    pid.or_else(|| std::env::var("AVBUS_BENCH_BUS_PID").ok()?.parse().ok())
}

/// User and system CPU time of a process, in ms, from `/proc/<pid>/stat` (system
/// time is mostly the kernel's side of the socket calls).
fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ is 100 on Linux.
    Some((
        f.get(11)?.parse::<f64>().ok()? * 10.0,
        f.get(12)?.parse::<f64>().ok()? * 10.0,
    ))
}

/// Per-datagram user and system CPU figures (µs) between two [`cpu_split`]s.
fn per_datagram(
    f: &mut Vec<(&'static str, f64)>,
    before: Option<(f64, f64)>,
    after: Option<(f64, f64)>,
    datagrams: f64,
) {
    if let (Some((u0, s0)), Some((u1, s1))) = (before, after) {
        if datagrams > 0.0 {
            let r = |ms: f64| (ms * 1000.0 / datagrams * 100.0).round() / 100.0;
            f.push(("bus_user_us_per_datagram", r(u1 - u0)));
            f.push(("bus_sys_us_per_datagram", r(s1 - s0)));
        }
    }
}

/// Panels of the `tflood` flood, each subscribed to every flood stream.
const FLOOD_PANELS: usize = 10;
/// Streams of the flood, one channel each.
const FLOOD_STREAMS: usize = 64;
/// Rate of each flood stream at its source.
const FLOOD_SOURCE_HZ: f64 = 1000.0;
/// Rate each flood panel asks for (the bus's default `max_hz`).
const FLOOD_PANEL_HZ: f64 = 200.0;
/// Nice value of the flood's receiving panels: the lowest priority, so that where
/// they compete with the command client for a core the client gets the larger
/// share. (The flood's source keeps the normal priority: the flood must reach the
/// bus in full.)
const FLOOD_NICE: i32 = 19;
/// Alternations of the no-flood and flood phases in one `tflood` run.
const FLOOD_ROUNDS: usize = 3;
/// Longest the flood may take to connect, subscribe, or wind down.
const FLOOD_SETUP: Duration = Duration::from_secs(30);

/// The flood of `tflood`, on two threads with runtimes of their own, apart from
/// the command client: a raw adapter publishing [`FLOOD_STREAMS`] meters at
/// [`FLOOD_SOURCE_HZ`], and [`FLOOD_PANELS`] panels receiving them at
/// [`FLOOD_PANEL_HZ`] at nice [`FLOOD_NICE`]. Switched on and off between
/// phases; stopped when dropped.
struct Flood {
    on: watch::Sender<bool>,
    /// Values published; datagrams the flood's panels received, and lost.
    published: Arc<AtomicU64>,
    datagrams: [Arc<AtomicU64>; 2],
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

type Ready = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Runs `body` on a new thread with a single-threaded runtime of its own, at
/// `nice` if given; resolves once the body says it is ready. The returned receiver
/// resolves when the thread ends.
async fn side_thread<F, Fut>(
    name: &str,
    nice: Option<i32>,
    body: F,
) -> Result<tokio::sync::oneshot::Receiver<()>, String>
where
    F: FnOnce(Ready) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(n) = nice {
                lower_priority(n);
            }
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(body(ready_tx)),
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(FLOOD_SETUP, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(done_rx),
        Ok(Ok(Err(e))) => Err(e),
        _ => Err(format!("{name} did not start")),
    }
}

impl Flood {
    async fn start(addr: &str) -> Result<Flood, String> {
        let (on, on_rx) = watch::channel(false);
        let published = Arc::new(AtomicU64::new(0));
        let datagrams = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let (a, rx, count) = (addr.to_owned(), on_rx.clone(), published.clone());
        let publisher = side_thread("tflood-publisher", None, move |ready| {
            flood_publisher(a, rx, count, ready)
        })
        .await?;
        let mut flood = Flood {
            on,
            published,
            datagrams: datagrams.clone(),
            done: vec![publisher],
        };
        let a = addr.to_owned();
        let panels = side_thread("tflood-panels", Some(FLOOD_NICE), move |ready| {
            flood_panels(a, on_rx, datagrams, ready)
        })
        .await;
        match panels {
            Ok(done) => {
                flood.done.push(done);
                Ok(flood)
            }
            Err(e) => {
                flood.stop().await;
                Err(e)
            }
        }
    }

    fn set(&self, on: bool) {
        self.on.send_replace(on);
    }

    /// (values published, datagrams the bus sent the panels) so far: a datagram
    /// sent is one received or one lost (a gap in the bus's `dseq`).
    fn counts(&self) -> (u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&self.published),
            g(&self.datagrams[0]) + g(&self.datagrams[1]),
        )
    }

    /// Stops the flood and waits (bounded) for its clients to close.
    async fn stop(self) {
        let Flood { on, done, .. } = self;
        drop(on);
        for d in done {
            let _ = tokio::time::timeout(FLOOD_SETUP, d).await;
        }
    }
}

/// Lowers the calling thread's CPU priority (on Linux the nice value is per
/// thread; threads it starts inherit it). Elsewhere, a no-op.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; `who` 0 is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The flood's source: declares its meters, says ready, publishes every meter at
/// [`FLOOD_SOURCE_HZ`] while `on`, until the [`Flood`] is dropped.
async fn flood_publisher(
    addr: String,
    mut on: watch::Receiver<bool>,
    published: Arc<AtomicU64>,
    ready: Ready,
) {
    // A raw adapter (`telemetry/raw.rs`): its datagrams are encoded once, so the
    // flood costs the bench's core little beside the command client.
    let adapter = match raw::raw_adapter(&addr, "flood-", FLOOD_STREAMS).await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / FLOOD_SOURCE_HZ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if !*on.borrow_and_update() {
            if on.changed().await.is_err() {
                break;
            }
            continue;
        }
        tokio::select! {
            _ = tick.tick() => {
                // Loopback UDP: the send never waits for long.
                for d in &adapter.datagrams {
                    let _ = adapter.udp.send(d);
                }
                published.fetch_add(FLOOD_STREAMS as u64, Ordering::Relaxed);
            }
            r = on.changed() => if r.is_err() { break },
        }
    }
}

/// The flood's panels (raw sessions, `telemetry/raw.rs`): subscribe to every
/// meter of the flood's device, say ready, count the bus's datagrams (received and
/// lost) until the [`Flood`] is dropped. They decode nothing, so what the flood
/// costs the bench is small next to what it costs the bus.
async fn flood_panels(
    addr: String,
    on: watch::Receiver<bool>,
    counts: [Arc<AtomicU64>; 2],
    ready: Ready,
) {
    let filter = format!("bench/flood-{}/+", std::process::id());
    let mut panels = Vec::new();
    for i in 0..FLOOD_PANELS {
        let name = format!("flood-panel{i}");
        match raw::raw_panel(&addr, &name, &filter, FLOOD_PANEL_HZ).await {
            Ok(p) => panels.push(p),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    let readers: Vec<_> = panels
        .into_iter()
        .map(|p| {
            let mut on = on.clone();
            // Only the end of the flood (the sender dropped) ends a reader.
            let stop = async move { while on.changed().await.is_ok() {} };
            tokio::spawn(raw::count(p, counts[0].clone(), counts[1].clone(), stop))
        })
        .collect();
    for r in readers {
        let _ = r.await;
    }
}

/// Median of a few figures (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `tflood`: command round trips while telemetry floods the bus, beside the same
/// commands without the flood, alternated `FLOOD_ROUNDS` (3) times in one run.
///
/// # Errors
/// A client error that stopped the workload.
pub async fn command_under_flood(
    addr: &str,
    bus_pid: Option<u32>,
    scale: f64,
) -> Result<Row, String> {
    let bus_pid = bus_pid_or_env(bus_pid);
    let flood = Flood::start(addr).await?;
    let part = scale / FLOOD_ROUNDS as f64;
    // (p50, p99, n, failed, bus CPU ms, seconds, values published, datagrams the
    // bus sent the flood's panels) per phase.
    let mut phases: [Vec<[f64; 8]>; 2] = [Vec::new(), Vec::new()];
    let own0 = cpu_ms(std::process::id());
    let t_all = Instant::now();
    for round in 0..FLOOD_ROUNDS {
        // Alternate which phase goes first, so a drift in the machine's load
        // touches both alike.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for flooding in order {
            flood.set(flooding);
            let cpu0 = bus_pid.and_then(cpu_ms);
            let (p0, r0) = flood.counts();
            let t0 = Instant::now();
            let row = match super::command(addr, part).await {
                Ok(r) => r,
                Err(e) => {
                    flood.stop().await;
                    return Err(e);
                }
            };
            let secs = t0.elapsed().as_secs_f64();
            let cpu = match (cpu0, bus_pid.and_then(cpu_ms)) {
                (Some(a), Some(b)) => b - a,
                _ => f64::NAN,
            };
            let g = |k: &str| row.get(k).unwrap_or(0.0);
            let (p1, r1) = flood.counts();
            phases[usize::from(flooding)].push([
                g("p50_us"),
                g("p99_us"),
                g("n"),
                g("failed"),
                cpu,
                secs,
                (p1 - p0) as f64,
                (r1 - r0) as f64,
            ]);
        }
    }
    let own = match (own0, cpu_ms(std::process::id())) {
        (Some(a), Some(b)) => (b - a) / 10.0 / t_all.elapsed().as_secs_f64(),
        _ => f64::NAN,
    };
    // The flood alone, for its own cost.
    flood.set(true);
    let window = Duration::from_secs_f64(scale.clamp(0.5, 2.0));
    let cpu0 = bus_pid.and_then(cpu_ms);
    let (p0, r0) = flood.counts();
    tokio::time::sleep(window).await;
    let alone_cpu = match (cpu0, bus_pid.and_then(cpu_ms)) {
        (Some(a), Some(b)) => Some((b - a) / 10.0 / window.as_secs_f64()),
        _ => None,
    };
    let (p1, r1) = flood.counts();
    let per_s = |n: u64| (n as f64 / window.as_secs_f64()).round();
    let (alone_in, alone_out) = (per_s(p1 - p0), per_s(r1 - r0));
    flood.stop().await;

    let col = |phase: usize, k: usize| phases[phase].iter().map(|p| p[k]).collect::<Vec<_>>();
    let sum = |phase: usize, k: usize| col(phase, k).iter().sum::<f64>();
    let (base_p99, flood_p99) = (col(0, 1), col(1, 1));
    let mut f = vec![
        ("p50_us", median(col(1, 0))),
        ("p99_us", median(flood_p99.clone())),
        ("base_p50_us", median(col(0, 0))),
        ("base_p99_us", median(base_p99.clone())),
        (
            "p99_min_us",
            flood_p99.iter().copied().fold(f64::INFINITY, f64::min),
        ),
        ("p99_max_us", flood_p99.iter().copied().fold(0.0, f64::max)),
        (
            "base_p99_min_us",
            base_p99.iter().copied().fold(f64::INFINITY, f64::min),
        ),
        (
            "base_p99_max_us",
            base_p99.iter().copied().fold(0.0, f64::max),
        ),
        ("n", sum(1, 2)),
        ("failed", sum(0, 3) + sum(1, 3)),
        ("flood_values_in_per_s", (sum(1, 6) / sum(1, 5)).round()),
        ("flood_datagrams_out_per_s", (sum(1, 7) / sum(1, 5)).round()),
        ("flood_alone_values_in_per_s", alone_in),
        ("flood_alone_datagrams_out_per_s", alone_out),
        ("bench_cpu_pct", own.round()),
        ("flood_nice", f64::from(FLOOD_NICE)),
    ];
    let base_p99 = median(base_p99);
    if base_p99 > 0.0 {
        let ratio = median(flood_p99) / base_p99;
        f.push(("p99_x_base", (ratio * 100.0).round() / 100.0));
    }
    if bus_pid.is_some() {
        let pct = |phase: usize| (sum(phase, 4) / 10.0 / sum(phase, 5)).round();
        f.push(("bus_cpu_pct", pct(1)));
        f.push(("base_bus_cpu_pct", pct(0)));
    }
    if let Some(c) = alone_cpu {
        f.push(("flood_alone_bus_cpu_pct", c.round()));
    }
    Ok(Row::new("tflood", "avbus", f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_gets_tingests_datagrams() {
        // 64 aliases per sender: two datagrams of 32 one-channel records, 912 bytes.
        let aliases: Vec<u32> = (0..INGEST_STREAMS as u32).collect();
        let d = raw::publish_datagrams(0, &aliases);
        assert_eq!(d.len(), 2);
        assert!(
            d.iter().all(|d| d.len() == 912),
            "{:?}",
            d.iter().map(Vec::len)
        );
    }
}
