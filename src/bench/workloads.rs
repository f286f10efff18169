//! The workloads, generic over [`Transport`]: the same client pattern, payload and
//! pacing for every system.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{age_us, histogram, quantiles, scaled, stamp, Feed, Row, Transport, WAIT};

/// Waits for the next payload, or `None` after [`WAIT`].
async fn recv(rx: &mut Feed) -> Option<Bytes> {
    tokio::time::timeout(WAIT, rx.next()).await.ok().flatten()
}

/// Reads up to `limit` payloads (or until [`WAIT`] of silence), recording each one's
/// age into the shared histogram; resolves to the number read.
fn latency_reader(
    mut rx: Feed,
    hist: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    limit: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut local = histogram();
        let mut got = 0u64;
        while got < limit {
            let Some(p) = recv(&mut rx).await else { break };
            if let Some(us) = age_us(&p) {
                let _ = local.record(us.max(1));
            }
            got += 1;
        }
        if let Ok(mut h) = hist.lock() {
            let _ = h.add(&local);
        }
        got
    })
}

/// The shared histogram's contents.
fn merged(hist: &Mutex<hdrhistogram::Histogram<u64>>) -> hdrhistogram::Histogram<u64> {
    hist.lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram())
}

/// `rtt`: ping-pong through the broker, one 64-byte message in flight.
pub async fn rtt(t: &dyn Transport, scale: f64) -> Result<Row, String> {
    let a = t.connect("bench-rtt-a").await?;
    let b: Arc<dyn super::Conn> = Arc::from(t.connect("bench-rtt-b").await?);
    let mut pings = b.subscribe("bench/rtt/ping").await?;
    let mut pongs = a.subscribe("bench/rtt/pong").await?;
    let echo = b.clone();
    let echo_task = tokio::spawn(async move {
        while let Some(p) = pings.next().await {
            if echo.publish("bench/rtt/pong", p, false).await.is_err() {
                return;
            }
        }
    });
    let n = scaled(20_000, scale);
    let warmup = scaled(1_000, scale);
    let deadline = Instant::now() + Duration::from_secs_f64((30.0 * scale).max(5.0));
    let mut h = histogram();
    let mut lost = 0u64;
    for i in 0..warmup + n {
        if Instant::now() > deadline {
            break;
        }
        let t0 = Instant::now();
        a.publish("bench/rtt/ping", stamp(), false).await?;
        match recv(&mut pongs).await {
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
    Ok(Row::new("rtt", t.system(), f))
}

/// `throughput`: one publisher, one subscriber, as fast as possible.
pub async fn throughput(t: &dyn Transport, scale: f64) -> Result<Row, String> {
    let p = t.connect("bench-tp-pub").await?;
    let s = t.connect("bench-tp-sub").await?;
    let mut rx = s.subscribe("bench/tp").await?;
    let n = scaled(300_000, scale);
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        let mut first = None;
        let mut last = Instant::now();
        while got < n {
            match recv(&mut rx).await {
                Some(_) => {
                    got += 1;
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                None => break,
            }
        }
        (got, first.map_or(Duration::ZERO, |f| last - f))
    });
    let cpu0 = super::cpu_ms(std::process::id());
    let payload = stamp();
    let limit = Instant::now() + Duration::from_secs(60);
    for _ in 0..n {
        p.publish("bench/tp", payload.clone(), false).await?;
        if Instant::now() > limit {
            break;
        }
    }
    let (got, span) = counter.await.unwrap_or((0, Duration::ZERO));
    let cpu1 = super::cpu_ms(std::process::id());
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
        f.push(("bench_client_cpu_ms", b - a));
    }
    Ok(Row::new("throughput", t.system(), f))
}

/// `fanout`: one publisher paced at 2,000 msg/s to 100 subscribers.
pub async fn fanout(t: &dyn Transport, scale: f64) -> Result<Row, String> {
    const SUBS: usize = 100;
    const RATE: u64 = 2_000;
    let secs = (5.0 * scale).max(0.5);
    let n = (RATE as f64 * secs) as u64;
    let hist = Arc::new(Mutex::new(histogram()));
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for i in 0..SUBS {
        let c = t.connect(&format!("bench-fan-{i}")).await?;
        let rx = c.subscribe("bench/fanout").await?;
        let hist = hist.clone();
        tasks.push(latency_reader(rx, hist, n));
        conns.push(c);
    }
    let p = t.connect("bench-fan-pub").await?;
    let started = Instant::now();
    // Two messages per 1 ms tick: 2,000 msg/s without relying on sub-ms timers.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < n {
        tick.tick().await;
        for _ in 0..RATE / 1000 {
            p.publish("bench/fanout", stamp(), false).await?;
            sent += 1;
        }
    }
    let mut got = 0;
    for task in tasks {
        got += task.await.unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    for c in conns {
        c.close().await;
    }
    p.close().await;
    let expected = n * SUBS as u64;
    let h = merged(&hist);
    Ok(Row::new(
        "fanout",
        t.system(),
        vec![
            ("delivered_per_s", (got as f64 / elapsed).round()),
            ("delivered", got as f64),
            ("loss", (expected - got.min(expected)) as f64),
            ("p50_us", h.value_at_quantile(0.5) as f64),
            ("p99_us", h.value_at_quantile(0.99) as f64),
        ],
    ))
}

/// `fanin`: 50 publishers to one subscriber, as fast as possible.
pub async fn fanin(t: &dyn Transport, scale: f64) -> Result<Row, String> {
    const PUBS: u64 = 50;
    let per = scaled(4_000, scale);
    let s = t.connect("bench-fanin-sub").await?;
    let mut rx = s.subscribe("bench/fanin/+").await?;
    let total = PUBS * per;
    let mut pubs = Vec::new();
    for i in 0..PUBS {
        pubs.push(t.connect(&format!("bench-fanin-{i}")).await?);
    }
    let counter = tokio::spawn(async move {
        let mut got = 0u64;
        let started = Instant::now();
        let mut last = started;
        while got < total {
            match recv(&mut rx).await {
                Some(_) => {
                    got += 1;
                    last = Instant::now();
                }
                None => break,
            }
        }
        (got, last - started)
    });
    let mut tasks = Vec::new();
    for (i, c) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let topic = format!("bench/fanin/{i}");
            let payload = stamp();
            for _ in 0..per {
                if c.publish(&topic, payload.clone(), false).await.is_err() {
                    break;
                }
            }
            let _ = c.flush().await;
            c.close().await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let (got, span) = counter.await.unwrap_or((0, Duration::ZERO));
    s.close().await;
    Ok(Row::new(
        "fanin",
        t.system(),
        vec![
            (
                "msgs_per_s",
                (got as f64 / span.as_secs_f64().max(1e-9)).round(),
            ),
            ("received", got as f64),
            ("loss", (total - got.min(total)) as f64),
        ],
    ))
}

/// `snapshot`: 100,000 retained topics; time for a new subscriber to `#` to hold
/// all of them.
pub async fn snapshot(t: &dyn Transport, scale: f64) -> Result<Row, String> {
    let n = scaled(100_000, scale);
    let p = t.connect("bench-snap-pub").await?;
    let payload = stamp();
    let topic = |i: u64| format!("snap/{}/{i}", i / 1000);
    for i in 0..n {
        p.publish(&topic(i), payload.clone(), true).await?;
    }
    p.flush().await?;
    let s = t.connect("bench-snap-sub").await?;
    let t0 = Instant::now();
    let mut rx = s.subscribe("#").await?;
    let mut got = 0u64;
    while got < n {
        match recv(&mut rx).await {
            Some(_) => got += 1,
            None => break,
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    s.close().await;
    // Clear them again, so that later runs start from the same state.
    for i in 0..n {
        p.publish(&topic(i), Bytes::new(), true).await?;
    }
    p.flush().await?;
    p.close().await;
    Ok(Row::new(
        "snapshot",
        t.system(),
        vec![
            ("topics", n as f64),
            ("received", got as f64),
            ("ms", (ms * 100.0).round() / 100.0),
        ],
    ))
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open files this process may have, from `/proc/self/limits`.
fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `connections`: 10,000 idle connections; the broker's resident memory per
/// connection (it must run as its own process: `pid`).
pub async fn connections(t: &dyn Transport, scale: f64, pid: u32) -> Result<Row, String> {
    let n = scaled(10_000, scale);
    let need = n + 256;
    if fd_limit().is_some_and(|l| l < need) {
        return Ok(Row::new(
            "connections",
            t.system(),
            vec![
                ("connections", n as f64),
                ("fd_limit_too_low", fd_limit().unwrap_or(0) as f64),
            ],
        ));
    }
    let before = rss_kib(pid).ok_or("cannot read the broker's RSS")?;
    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        conns.push(t.connect(&format!("bench-idle-{i}")).await?);
    }
    // Let the broker settle (its per-connection allocations happen at handshake).
    conns[0].flush().await?;
    let after = rss_kib(pid).ok_or("cannot read the broker's RSS")?;
    for c in &conns {
        c.close().await;
    }
    let per = (after - before) / n as f64;
    Ok(Row::new(
        "connections",
        t.system(),
        vec![
            ("connections", n as f64),
            ("broker_rss_mib", (after / 1024.0 * 10.0).round() / 10.0),
            ("kib_per_connection", (per * 100.0).round() / 100.0),
        ],
    ))
}

/// `site`: 5,000 devices × 20 controls retained, 300 panels with wildcard filters
/// (250 room panels `rNNN/#`, 50 `+/dNN/cNN`), updates at 10,000/s for 5 s:
/// delivered/s, loss and update-to-panel latency. Wildcard panel `j` watches one
/// control across all rooms: device `j % 20`, control `j / 20`.
pub async fn site(t: &dyn Transport, scale: f64) -> Result<Row, String> {
    const ROOMS: u64 = 250;
    const DEVICES_PER_ROOM: u64 = 20;
    const CONTROLS: u64 = 20;
    const PANELS: u64 = 300;
    const RATE: u64 = 10_000;
    let topic = |r: u64, d: u64, c: u64| format!("r{r:03}/d{d:02}/c{c:02}");
    let filter = |p: u64| {
        if p < ROOMS {
            format!("r{p:03}/#")
        } else {
            let j = p - ROOMS;
            format!(
                "+/d{:02}/c{:02}",
                j % DEVICES_PER_ROOM,
                j / DEVICES_PER_ROOM
            )
        }
    };
    let retained = t.retains();
    let seed = t.connect("bench-site-seed").await?;
    if retained {
        let old = Bytes::from(vec![0u8; super::PAYLOAD]);
        for r in 0..ROOMS {
            for d in 0..DEVICES_PER_ROOM {
                for c in 0..CONTROLS {
                    seed.publish(&topic(r, d, c), old.clone(), true).await?;
                }
            }
        }
        seed.flush().await?;
    }
    // Each panel first takes its snapshot (when the system keeps state), then
    // counts live updates until told to stop.
    let secs = (5.0 * scale).max(0.5);
    let n = (RATE as f64 * secs) as u64;
    let hist = Arc::new(Mutex::new(histogram()));
    let mut tasks = Vec::new();
    let mut panels = Vec::new();
    for p in 0..PANELS {
        let c = t.connect(&format!("bench-site-panel-{p}")).await?;
        let mut rx = c.subscribe(&filter(p)).await?;
        let snap = match (retained, p < ROOMS) {
            (false, _) => 0,
            (true, true) => DEVICES_PER_ROOM * CONTROLS,
            (true, false) => ROOMS,
        };
        for _ in 0..snap {
            if recv(&mut rx).await.is_none() {
                return Err(format!("site: panel {p} did not get its snapshot"));
            }
        }
        let hist = hist.clone();
        tasks.push(latency_reader(rx, hist, u64::MAX));
        panels.push(c);
    }
    // Updates spread over every control by a fixed pseudo-random walk; the number
    // of panels each one reaches is counted as it is sent.
    let p = t.connect("bench-site-pub").await?;
    let mut expected = 0u64;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < n {
        tick.tick().await;
        for _ in 0..RATE / 1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (r, d, c) = (
                x % ROOMS,
                (x / ROOMS) % DEVICES_PER_ROOM,
                (x / 5000) % CONTROLS,
            );
            // The room's panel, and the wildcard panel watching (d, c) if any.
            expected += 1 + u64::from(c * DEVICES_PER_ROOM + d < PANELS - ROOMS);
            p.publish(&topic(r, d, c), stamp(), true).await?;
            sent += 1;
        }
    }
    let mut got = 0;
    for task in tasks {
        got += task.await.unwrap_or(0);
    }
    // Panels stop after WAIT of silence; leave that out of the rate.
    let elapsed = (started.elapsed() - WAIT).as_secs_f64().max(1e-3);
    for c in panels {
        c.close().await;
    }
    p.close().await;
    seed.close().await;
    let h = merged(&hist);
    Ok(Row::new(
        "site",
        t.system(),
        vec![
            ("updates", n as f64),
            ("delivered", got as f64),
            ("delivered_per_s", (got as f64 / elapsed).round()),
            ("loss", expected.saturating_sub(got) as f64),
            ("p50_us", h.value_at_quantile(0.5) as f64),
            ("p99_us", h.value_at_quantile(0.99) as f64),
        ],
    ))
}
