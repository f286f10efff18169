//! Telemetry workloads (avbus only: no peer has a rate-limited, newest-value UDP
//! path to compare with, so these rows stand alone):
//!
//! * `tingest`: adapters publish 1-channel meters as fast as the link takes them;
//!   the bus's `$sys/telemetry` counters give datagrams and values ingested per
//!   second, and the bus's CPU time gives the cost per datagram (the hub is one task,
//!   so this is one core's worth).
//! * `tfanout`: 100 panels subscribed at 30 Hz to 64 streams updated at 100 Hz:
//!   values delivered, datagrams lost, the rate each panel saw, the bus's CPU.
//! * `tflood`: the `command` workload again while telemetry floods the bus, to set
//!   beside the plain `command` row (telemetry must not delay control).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{cpu_ms, scaled, Row};
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

/// `tingest`: how much telemetry the bus takes in.
///
/// # Errors
/// A client error that stopped the workload.
pub async fn ingest(addr: &str, bus_pid: Option<u32>, scale: f64) -> Result<Row, String> {
    const ADAPTERS: usize = 4;
    const STREAMS: usize = 64;
    let ops = connect(addr, "bench-ops", Role::Tool).await?;
    let mut adapters = Vec::new();
    for i in 0..ADAPTERS {
        adapters.push(meter_device(addr, &format!("ingest{i}-"), STREAMS).await?);
    }
    // Let the links bind before the clock starts.
    for (c, topics) in &adapters {
        c.publish_telemetry(frame(topics, 0));
    }
    settle(&ops).await;
    let d0 = sys_counter(&ops, "datagrams_in").await;
    let v0 = sys_counter(&ops, "values_in").await;
    let cpu0 = bus_pid.and_then(cpu_ms);
    let rounds = scaled(20_000, scale);
    let limit = Duration::from_secs_f64((10.0 * scale).clamp(1.0, 30.0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, topics) in adapters {
        tasks.push(tokio::spawn(async move {
            for i in 0..rounds {
                if t0.elapsed() > limit {
                    break;
                }
                c.publish_telemetry(frame(&topics, i));
                // The link takes values without waiting; give it a turn.
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.map_err(|e| e.to_string())?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = bus_pid.and_then(cpu_ms);
    settle(&ops).await;
    let datagrams = sys_counter(&ops, "datagrams_in").await - d0;
    let values = sys_counter(&ops, "values_in").await - v0;
    let mut f = vec![
        ("datagrams_per_s", (datagrams / secs).round()),
        ("values_per_s", (values / secs).round()),
        ("seconds", (secs * 100.0).round() / 100.0),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let cpu = b - a;
        f.push(("bus_cpu_pct", (cpu / 10.0 / secs).round()));
        if datagrams > 0.0 {
            let per = cpu * 1000.0 / datagrams;
            f.push(("bus_cpu_us_per_datagram", (per * 100.0).round() / 100.0));
            f.push(("one_core_datagrams_per_s", (1e6 / per.max(0.001)).round()));
        }
    }
    for c in clients {
        c.close().await;
    }
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
    for c in clients {
        c.close().await;
    }
    adapter.close().await;
    Ok(Row::new("tfanout", "avbus", f))
}

/// `tflood`: command round trips while telemetry floods the bus.
///
/// # Errors
/// A client error that stopped the workload.
pub async fn command_under_flood(
    addr: &str,
    bus_pid: Option<u32>,
    scale: f64,
) -> Result<Row, String> {
    const PANELS: usize = 10;
    let (adapter, topics) = meter_device(addr, "flood-", 64).await?;
    let filter = format!("{}/+", topics[0].rsplit_once('/').map_or("", |(k, _)| k));
    let mut panels = Vec::new();
    for i in 0..PANELS {
        let p = connect(addr, &format!("flood-panel{i}"), Role::Panel).await?;
        let mut sub = p
            .telemetry(&filter, 200.0)
            .await
            .map_err(|e| e.to_string())?;
        panels.push(tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(3), sub.recv()).await {
                n += 1;
            }
            p.close().await;
            n
        }));
    }
    // The flood: 64 streams at 1 kHz (64 000 values/s in), fanned out to 10 panels
    // at 200 Hz.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = paced_publisher(adapter, topics, 1000.0, stop.clone());
    let cpu0 = bus_pid.and_then(cpu_ms);
    let own0 = cpu_ms(std::process::id());
    let t0 = Instant::now();
    let mut row = super::command(addr, scale).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = bus_pid.and_then(cpu_ms);
    let own1 = cpu_ms(std::process::id());
    stop.store(true, Ordering::Relaxed);
    let adapter = publisher.await.map_err(|e| e.to_string())?;
    adapter.close().await;
    let mut values = 0u64;
    for p in panels {
        values += p.await.unwrap_or(0);
    }
    row.workload = "tflood".into();
    row.figures.push((
        "flood_values_out_per_s".into(),
        (values as f64 / secs).round(),
    ));
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        row.figures
            .push(("bus_cpu_pct".into(), ((b - a) / 10.0 / secs).round()));
    }
    // The load generator shares the machine: its CPU explains what the bus's does not.
    if let (Some(a), Some(b)) = (own0, own1) {
        row.figures
            .push(("bench_cpu_pct".into(), ((b - a) / 10.0 / secs).round()));
    }
    Ok(row)
}
