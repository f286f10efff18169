//! `devices`: command-to-confirmed-state latency through the bus, the adapter kit and
//! a device simulator, as the number of devices grows.
//!
//! For each step of N devices: N Extron SIS switcher simulators (zero command delay)
//! run in a child process (`avbus sim extron-sis --fast --count N`), so their CPU time
//! is measured apart; this process runs the bus and the N adapters on one kit
//! [`Host`] over an in-process connection, as `avbus serve` hosts configured devices,
//! and a panel (the real [`Client`], over TCP) that sets `out01_video_mute` on one
//! device after another, one command in flight. A sample ends when the panel has the
//! `ok` and has seen the confirmed value on its subscription. Extron SIS because its
//! adapter keeps one connection per switcher and its simulator is the cheapest:
//! one short ASCII line each way per command.
//!
//! Each switcher is also polled on the adapter's default schedule (every 10 s,
//! 17 queries for the simulator's 8×8 matrix), as it would be on a site, and the
//! measurement lasts two poll intervals. Every loop is bounded in count and time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::avbus::next_update;
use super::{cpu_ms, histogram, quantiles, scaled, spawn_ready, Row, BENCH_QUEUE, WAIT};
use crate::bus::BusHandle;
use crate::client::{Client, ClientOptions, SubEvent, Subscription};
use crate::config::{Config, DeviceConfig};
use crate::devices::kit::Host;
use crate::devices::registry;
use crate::model::Quality;
use crate::protocol::Role;
use crate::value::Value;

/// The workload's name; it runs only when asked for (`--workload devices`), since it
/// starts its own bus and simulators rather than measuring `--bus`.
pub const NAME: &str = "devices";
/// Device counts measured when `--devices` is not given.
pub const STEPS: [usize; 4] = [1, 10, 100, 1000];
/// The simulated and adapted device.
const DRIVER: &str = "extron-sis";
/// The room every benchmark device is in.
const ROOM: &str = "bench";
/// The control the panel sets: a bool, confirmed by the switcher's `Vmt01*x`.
const CONTROL: &str = "out01_video_mute";
/// How long the commands of one step are measured at scale 1 (after one unmeasured
/// command per device): two of the adapters' 10 s poll intervals, so that every
/// switcher's poll falls inside the window, twice.
const RUN_TIME: Duration = Duration::from_secs(20);
/// Most commands measured per step at scale 1.
const MAX_COMMANDS: u64 = 1_000_000;
/// Fewest commands measured per step, however small the scale.
const MIN_COMMANDS: u64 = 10;
/// Longest the simulators and devices of one step take to come up, and the longest
/// the warm-up (one command per device) may take.
const SETUP_WAIT: Duration = Duration::from_secs(120);
/// Longest the measured commands of one step may take, whatever the scale.
const RUN_LIMIT: Duration = Duration::from_secs(600);
/// Longest the adapters take to stop at the end of a step.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Runs the workload for each device count in `steps`; one row each.
///
/// # Errors
/// A simulator process that does not start, devices that do not come online in time,
/// or a client error.
pub async fn devices(steps: &[usize], scale: f64) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the avbus executable: {e}"))?;
    let mut rows = Vec::new();
    for &n in steps {
        let row = step(&exe, n, scale).await?;
        println!("{}", row.line());
        rows.push(row);
    }
    Ok(rows)
}

/// The simulator process, killed when dropped.
struct Simulators {
    child: Child,
    addrs: Vec<SocketAddr>,
}

impl Drop for Simulators {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Simulators {
    /// Starts `avbus sim extron-sis --fast --count n` and reads its addresses.
    async fn start(exe: &Path, n: usize) -> Result<Simulators, String> {
        let exe = exe.to_owned();
        let count = n.to_string();
        let started = tokio::task::spawn_blocking(move || {
            spawn_ready(&exe, &["sim", DRIVER, "--fast", "--count", &count])
        })
        .await
        .map_err(|e| e.to_string())?;
        let (child, ready) = started.map_err(|e| format!("avbus sim: {e}"))?;
        let addrs: Vec<SocketAddr> = ready["ready"]["addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect();
        let sims = Simulators { child, addrs };
        match sims.addrs.len() == n {
            true => Ok(sims),
            false => Err(format!(
                "avbus sim listed {} addresses, not {n}",
                sims.addrs.len()
            )),
        }
    }
}

fn device_name(i: usize) -> String {
    format!("sw{i:04}")
}

/// One device count: simulators, bus, adapters, the panel's commands.
async fn step(exe: &Path, n: usize, scale: f64) -> Result<Row, String> {
    let sims = Simulators::start(exe, n).await?;
    let mut cfg = Config::default();
    cfg.listen.tcp = SocketAddr::from(([127, 0, 0, 1], 0));
    let bus = crate::bus::start(cfg)
        .await
        .map_err(|e| format!("bus: {e}"))?;
    let row = hosted(&bus, &sims, scale).await;
    bus.shutdown().await;
    row
}

/// Hosts an adapter for each simulator on the bus and runs the panel against them.
async fn hosted(bus: &BusHandle, sims: &Simulators, scale: f64) -> Result<Row, String> {
    let err = |e: crate::client::Error| e.to_string();
    let opts = ClientOptions::local(bus.local(), "bench-adapters").role(Role::Adapter);
    let client = Client::connect(opts).await.map_err(err)?;
    let host = Host::start(client.clone()).await;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::with_capacity(sims.addrs.len());
    for (i, addr) in sims.addrs.iter().enumerate() {
        let d = DeviceConfig {
            room: ROOM.into(),
            name: device_name(i),
            driver: DRIVER.into(),
            label: None,
            host: Some(addr.ip().to_string()),
            port: Some(addr.port()),
            password: None,
            poll_ms: None,
        };
        tasks.push(registry::spawn(&host, &d, cancel.clone())?);
    }
    let row = panel(bus.tcp, sims.addrs.len(), sims.child.id(), scale).await;
    cancel.cancel();
    let stopped = futures_util::future::join_all(tasks);
    if tokio::time::timeout(STOP_WAIT, stopped).await.is_err() {
        tracing::warn!("bench: adapters still stopping after {STOP_WAIT:?}");
    }
    client.close().await;
    row
}

/// The panel: waits for every device, warms up, then measures.
async fn panel(bus: SocketAddr, n: usize, sim_pid: u32, scale: f64) -> Result<Row, String> {
    let err = |e: crate::client::Error| e.to_string();
    let mut o = ClientOptions::tcp(&bus.to_string(), "bench-panel").role(Role::Panel);
    o.sub_queue = BENCH_QUEUE;
    o.reconnect = false;
    o.command_timeout = WAIT;
    let panel = Client::connect(o).await.map_err(err)?;
    let setup = Instant::now() + SETUP_WAIT;
    all_online(&panel, n, setup).await?;
    let mut sub = panel
        .subscribe(&[&format!("{ROOM}/+/{CONTROL}")])
        .await
        .map_err(err)?;
    // Past the snapshot, every update is live: none can be taken for a confirmation.
    while Instant::now() < setup {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(SubEvent::Synced { .. })) => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err("no snapshot of the devices' state".into()),
        }
    }
    let topics: Vec<String> = (0..n)
        .map(|i| format!("{ROOM}/{}/{CONTROL}", device_name(i)))
        .collect();
    // Fresh simulators: every output unmuted.
    let mut muted = vec![false; n];
    for (topic, muted) in topics.iter().zip(&mut muted) {
        if Instant::now() > setup {
            break;
        }
        let _ = confirm(&panel, &mut sub, topic, muted).await;
    }
    let mut h = histogram();
    let mut failed = 0u64;
    let me = std::process::id();
    let run_for = RUN_TIME.mul_f64(scale);
    let (bus0, sim0, t0) = (cpu_ms(me), cpu_ms(sim_pid), Instant::now());
    for k in 0..scaled(MAX_COMMANDS, scale).max(MIN_COMMANDS) {
        let spent = t0.elapsed();
        if spent > RUN_LIMIT || (spent >= run_for && k >= MIN_COMMANDS) {
            break;
        }
        let i = (k % n as u64) as usize;
        match confirm(&panel, &mut sub, &topics[i], &mut muted[i]).await {
            Some(us) => {
                let _ = h.record(us);
            }
            None => failed += 1,
        }
    }
    let elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let (bus1, sim1) = (cpu_ms(me), cpu_ms(sim_pid));
    panel.close().await;
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if elapsed_ms > 0.0 => ((b - a) / elapsed_ms * 1000.0).round() / 10.0,
        _ => f64::NAN,
    };
    let mut f = vec![("devices", n as f64)];
    f.extend(quantiles(&h));
    let rate = h.len() as f64 * 1000.0 / elapsed_ms.max(1.0);
    f.push(("commands_per_s", rate.round()));
    f.push(("bus_cpu_pct", pct(bus0, bus1)));
    f.push(("sim_cpu_pct", pct(sim0, sim1)));
    f.push(("failed", failed as f64));
    Ok(Row::new(NAME, "avbus", f))
}

/// Waits until all `n` devices are online, or fails at `deadline`.
async fn all_online(panel: &Client, n: usize, deadline: Instant) -> Result<(), String> {
    let filter = format!("{ROOM}/+/online");
    let mut sub = panel
        .subscribe(&[&filter])
        .await
        .map_err(|e| e.to_string())?;
    let mut online = HashSet::new();
    while online.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(SubEvent::Update(u))) if u.value == Value::Boolean(true) => {
                online.insert(u.topic);
            }
            Ok(Some(SubEvent::Update(u))) => {
                online.remove(&u.topic);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(format!(
                    "{} of {n} devices online after {SETUP_WAIT:?}",
                    online.len()
                ))
            }
        }
    }
    Ok(())
}

/// Flips the mute at `topic` and waits for `ok` and then the confirmed value on `sub`;
/// the time that took in µs, or `None` if either did not come within [`WAIT`] (then
/// `muted` is read back from the bus).
async fn confirm(
    panel: &Client,
    sub: &mut Subscription,
    topic: &str,
    muted: &mut bool,
) -> Option<u64> {
    let want = Value::Boolean(!*muted);
    let t0 = Instant::now();
    if panel.set(topic, want.clone()).await.is_err() {
        if let Ok(Some(u)) = panel.get(topic).await {
            *muted = u.value == Value::Boolean(true);
        }
        return None;
    }
    *muted = !*muted;
    while t0.elapsed() < WAIT * 2 {
        let u = next_update(sub).await?;
        if u.topic == topic && u.quality == Some(Quality::Ok) && u.value == want {
            return Some(t0.elapsed().as_micros().max(1) as u64);
        }
    }
    None
}
