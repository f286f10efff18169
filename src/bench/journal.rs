//! `journal` (opt-in, runs its own buses): what the retained-state journal costs and
//! how fast a bus comes back with it.
//!
//! For each `[persist]` setting (off, `fsync = "never"`, `"interval"`, `"always"`) a
//! bus is started as its own process and sent the same retained publishes:
//! - pipelined: 16 clients, each awaiting its acknowledgements one after another, on
//!   their own topics (msgs/s, the bus's CPU per publish, journal bytes per record,
//!   fsyncs);
//! - one in flight: the acknowledgement latency a single publisher sees (p50/p99).
//!
//! `recovery`: a journal of 100,000 topics, then a restart: how long reading the
//! journal takes, how long until the bus is ready, and until a new subscriber to `#`
//! holds every topic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{cpu_ms, histogram, scaled, OwnBus, Row};
use crate::client::{Client, ClientOptions, SubEvent};
use crate::value::Value;

/// The workload's name.
pub const NAME: &str = "journal";
/// Clients publishing at once in the pipelined pass.
const WRITERS: usize = 16;
/// Longest one pass may take, whatever the scale.
const PASS_LIMIT: Duration = Duration::from_secs(300);

/// Runs every setting and the recovery; one row each.
///
/// # Errors
/// A bus that does not start or a client error.
pub async fn journal(scale: f64) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the avbus executable: {e}"))?;
    let dir = std::env::temp_dir().join(format!("avbus-bench-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run(&exe, &dir, scale).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(exe: &Path, dir: &Path, scale: f64) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for mode in ["off", "never", "interval", "always"] {
        let row = publish_pass(exe, dir, mode, scale).await?;
        println!("{}", row.line());
        rows.push(row);
    }
    let row = recovery(exe, dir, scale).await?;
    println!("{}", row.line());
    rows.push(row);
    Ok(rows)
}

/// Writes a bus configuration for `mode` and returns its path; `data` is the
/// journal's directory (emptied first).
fn config(dir: &Path, mode: &str, data: &Path) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(data);
    let mut text = String::from("[listen]\nhttp = \"off\"\n[sys]\ninterval_ms = 50\n");
    if mode != "off" {
        text.push_str(&format!(
            "[persist]\ndir = {:?}\nfsync = {mode:?}\n",
            data.display().to_string()
        ));
    }
    let path = dir.join(format!("{mode}.toml"));
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

async fn start(exe: &Path, config: &Path) -> Result<OwnBus, String> {
    let (exe, config) = (exe.to_owned(), config.to_owned());
    tokio::task::spawn_blocking(move || {
        let config = config.display().to_string();
        OwnBus::start_with(&exe, &["serve", "--config", &config])
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("avbus serve: {e}"))
}

async fn connect(addr: &str, name: &str) -> Result<Client, String> {
    Client::connect(ClientOptions::tcp(addr, name).reconnect(false))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// A 64-byte value, as the other workloads' payloads.
fn payload(i: u64) -> Value {
    let mut b = vec![0u8; super::PAYLOAD];
    b[..8].copy_from_slice(&i.to_le_bytes());
    Value::Binary(b)
}

async fn publish_pass(exe: &Path, dir: &Path, mode: &str, scale: f64) -> Result<Row, String> {
    let data = dir.join(format!("data-{mode}"));
    let bus = start(exe, &config(dir, mode, &data)?).await?;
    let total = scaled(100_000, scale);
    let per = total.div_ceil(WRITERS as u64);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        writers.push(connect(&bus.addr, &format!("writer{w}")).await?);
    }
    let cpu0 = cpu_ms(bus.pid());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, c) in writers.iter().enumerate() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let topic = format!("j/{w}/{}", i % 100);
                c.publish(&topic, payload(i), true)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        tokio::time::timeout(PASS_LIMIT, t)
            .await
            .map_err(|_| "the pipelined pass took too long".to_owned())?
            .map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_ms(bus.pid()).zip(cpu0).map(|(b, a)| b - a);
    let sent = per * WRITERS as u64;

    // One publish in flight: the wait each acknowledgement costs.
    let one = &writers[0];
    let mut h = histogram();
    let deadline = Instant::now() + PASS_LIMIT;
    for i in 0..scaled(5_000, scale) {
        let t = Instant::now();
        one.publish(&format!("j/one/{}", i % 100), payload(i), true)
            .await
            .map_err(|e| e.to_string())?;
        let _ = h.record(t.elapsed().as_micros() as u64);
        if Instant::now() > deadline {
            break;
        }
    }
    let mut figures = vec![
        ("msgs_per_s", (sent as f64 / secs).round()),
        ("ack_p50_us", h.value_at_quantile(0.5) as f64),
        ("ack_p99_us", h.value_at_quantile(0.99) as f64),
        ("ack_p999_us", h.value_at_quantile(0.999) as f64),
        ("n", sent as f64),
    ];
    if let Some(cpu) = cpu {
        figures.push((
            "bus_cpu_us_per_msg",
            (cpu * 1000.0 / sent as f64 * 100.0).round() / 100.0,
        ));
    }
    if mode != "off" {
        let records = sys(one, "records").await?;
        let bytes = sys(one, "bytes").await?;
        figures.push(("bytes_per_record", (bytes / records.max(1.0)).round()));
        figures.push(("fsyncs", sys(one, "fsyncs").await?));
    }
    for c in &writers {
        c.close().await;
    }
    Ok(Row::new(NAME, &format!("avbus-{mode}"), figures))
}

/// A `$sys/persist/` counter.
async fn sys(c: &Client, name: &str) -> Result<f64, String> {
    let u = c
        .get(&format!("$sys/persist/{name}"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(
        u.and_then(|u| u.value.as_f64().or(u.value.as_u64().map(|v| v as f64)))
            .unwrap_or(0.0),
    )
}

/// Waits until `$sys/persist/records` reaches `n`.
async fn written(c: &Client, n: u64) -> Result<(), String> {
    let mut sub = c
        .subscribe(&["$sys/persist/records"])
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + PASS_LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(SubEvent::Update(u))) if u.value.as_u64().is_some_and(|v| v >= n) => {
                return Ok(())
            }
            Ok(Some(_)) => {}
            _ => return Err(format!("the journal did not reach {n} records")),
        }
    }
}

async fn recovery(exe: &Path, dir: &Path, scale: f64) -> Result<Row, String> {
    let data = dir.join("data-recovery");
    let config = config(dir, "interval", &data)?;
    let topics = scaled(100_000, scale);
    {
        let bus = start(exe, &config).await?;
        let c = connect(&bus.addr, "filler").await?;
        for i in 0..topics {
            c.publish_nowait(&format!("r/{}/{}", i / 1000, i % 1000), payload(i), true)
                .await
                .map_err(|e| e.to_string())?;
        }
        // Written to the file (the page cache survives the process): then killed.
        written(&c, topics).await?;
    }
    let journal_bytes = std::fs::metadata(data.join(crate::bus::journal::FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    let started = Instant::now();
    let bus = start(exe, &config).await?;
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    // A queue for the whole snapshot, as in `snapshot`: the bench's reader is not
    // what is measured.
    let mut o = ClientOptions::tcp(&bus.addr, "reader").reconnect(false);
    o.sub_queue = super::BENCH_QUEUE;
    let c = Client::connect(o)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let read_ms = sys(&c, "recovery_ms").await?;
    let restored = sys(&c, "recovered_topics").await?;
    let t = Instant::now();
    let mut sub = c.subscribe(&["r/#"]).await.map_err(|e| e.to_string())?;
    let mut held = 0u64;
    let deadline = tokio::time::Instant::now() + PASS_LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(SubEvent::Update(_))) => held += 1,
            Ok(Some(SubEvent::Synced { .. })) => break,
            Ok(Some(_)) => {}
            _ => return Err("the snapshot did not complete".into()),
        }
    }
    let snapshot_ms = t.elapsed().as_secs_f64() * 1000.0;
    c.close().await;
    Ok(Row::new(
        "recovery",
        "avbus",
        vec![
            ("topics", restored),
            ("held", held as f64),
            ("journal_bytes", journal_bytes as f64),
            ("read_ms", read_ms),
            ("ready_ms", (ready_ms * 10.0).round() / 10.0),
            ("snapshot_ms", (snapshot_ms * 10.0).round() / 10.0),
        ],
    ))
}
