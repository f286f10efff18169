//! Network faults, end to end: panels and devices in their own network namespaces,
//! each behind a veth link that the test cuts or impairs, the bus in another
//! namespace (`faults/netns.rs`). Every scenario ends by comparing what the panel
//! shows, value for value and sequence for sequence, with what a fresh, unfaulted
//! client reads from the bus, and asserts the path the panel took (replay, resync).
//!
//! Needs root (CAP_NET_ADMIN) and iproute2; loss and jitter also need iptables
//! (`faults/netem.rs`: the kernel may have no `tc netem`). Without them each test
//! says "skipped: ..." on stderr and passes, unless `AVBUS_FAULTS_REQUIRED` is set
//! (as `scripts/faults` does) or `CI` is, when it fails. The five-minute partition
//! is `#[ignore]`d: `scripts/faults` runs it.

mod netem;
mod netns;
mod process;
mod view;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use avbus::bus::{start, BusHandle};
use avbus::client::{Client, ClientOptions};
use avbus::config::{ClientRules, Config, DeviceConfig};
use avbus::devices::kit::Host as AdapterHost;
use avbus::devices::pjlink;
use avbus::devices::pjlink::proto::PowerState;
use avbus::devices::pjlink::sim::{Sim, SimConfig};
use avbus::model::Quality;
use avbus::protocol::{ErrorCode, Role, Seq};
use avbus::value::Value;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::common;
use netem::{Impairment, Netem};
use netns::{Host, Lab, NsRuntime};
use process::BusProcess;
use view::{bounded, differences, snapshot_of, State, Tracked};

/// Retained topics the publisher keeps changing.
const TOPICS: u32 = 20;
/// What the panels subscribe to.
const FILTER: &str = "room/#";
/// Longest wait for something that follows a fault (detection, backoff, resume).
const SETTLE: Duration = Duration::from_secs(60);

/// Says on stderr (past the test harness's capture) why a scenario cannot run here;
/// fails instead when the harness was asked to run everything
/// (`AVBUS_FAULTS_REQUIRED`, set by `scripts/faults`) and under CI.
fn skip(why: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("faults")
        .to_string();
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    if ci || std::env::var_os("AVBUS_FAULTS_REQUIRED").is_some() {
        panic!("{test} cannot run: {why}");
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

macro_rules! lab_or_skip {
    () => {
        match Lab::new() {
            Ok(lab) => lab,
            Err(why) => return skip(&why),
        }
    };
}

/// The bus of a lab: every address of its namespace (so hosts reach it over their
/// links), no HTTP, anonymous clients allowed everything (the namespace holds only
/// this test's clients), heartbeats every 500 ms (a dead link is noticed in 1.5 s).
fn lab_config() -> Config {
    let mut cfg = Config::default();
    cfg.listen.set_tcp(SocketAddr::from(([0, 0, 0, 0], 0)));
    cfg.listen.http = None;
    cfg.auth.anonymous = Some(ClientRules {
        all: true,
        ..ClientRules::default()
    });
    cfg.session.heartbeat_ms = 500;
    cfg
}

/// Client options for `addr`: quick reconnects, and a connect attempt given up
/// after 2 s (a SYN lost in a partition is not waited for long).
fn options(addr: &str, name: &str, role: Role) -> ClientOptions {
    let mut o = common::opts(addr, name, role);
    o.connect_timeout = Duration::from_secs(2);
    o
}

/// A bus in a lab, reachable at `port` on 127.0.0.1 (in its namespace) and on each
/// host's `bus_addr`.
struct Rig {
    bus: BusHandle,
    port: u16,
    /// Declared last: the namespaces go after everything running in them.
    lab: Lab,
}

impl Rig {
    async fn start(lab: Lab, cfg: Config) -> Rig {
        let bus = lab
            .bus
            .run(async move { start(cfg).await })
            .await
            .expect("the bus starts in its namespace");
        let port = bus.tcp.port();
        Rig { bus, port, lab }
    }

    /// A client in the bus's namespace (never faulted).
    async fn local_client(&self, name: &str, role: Role) -> Client {
        let opts = options(&format!("127.0.0.1:{}", self.port), name, role);
        connect(&self.lab.bus, opts).await
    }

    /// A client on `host`, reaching the bus over the host's link.
    async fn host_client(&self, host: &Host, name: &str, role: Role) -> Client {
        let opts = options(&format!("{}:{}", host.bus_addr, self.port), name, role);
        connect(&host.rt, opts).await
    }

    /// What a fresh, unfaulted client subscribing to `filter` gets.
    async fn truth(&self, filter: &str) -> State {
        let checker = self.local_client("checker", Role::Tool).await;
        let mut sub = checker.subscribe(&[filter]).await.expect("subscribe");
        let state = bounded("the checker's snapshot", SETTLE, snapshot_of(&mut sub)).await;
        checker.close().await;
        state
    }

    async fn stop(self) {
        let Rig { bus, lab, .. } = self;
        bounded("the bus to stop", SETTLE, bus.shutdown()).await;
        drop(lab);
    }
}

async fn connect(rt: &NsRuntime, opts: ClientOptions) -> Client {
    bounded(
        "a client to connect",
        SETTLE,
        rt.run(async move { Client::connect(opts).await }),
    )
    .await
    .expect("the client connects")
}

/// Publishes `value` retained on `room/t<i % TOPICS>`, acknowledged.
async fn change(publisher: &Client, i: u32, value: u32) -> Seq {
    let topic = format!("room/t{}", i % TOPICS);
    common::within(
        "a publish to be acknowledged",
        publisher.publish(&topic, Value::from(value), true),
    )
    .await
    .expect("the publish is acknowledged")
}

/// Waits until the bus's presence record of `session` satisfies `pred`
/// (`None`: the session ended).
async fn presence(
    sub: &mut avbus::client::Subscription,
    what: &str,
    pred: impl Fn(Option<bool>) -> bool,
) {
    bounded(what, SETTLE, async {
        loop {
            if let avbus::client::SubEvent::Update(u) = sub.next().await.expect("presence") {
                let connected = match &u.value {
                    Value::Nil => None,
                    Value::Map(m) => m
                        .iter()
                        .find(|(k, _)| k.as_str() == Some("connected"))
                        .and_then(|(_, v)| v.as_bool()),
                    _ => None,
                };
                if pred(connected) {
                    return;
                }
            }
        }
    })
    .await
}

/// How long a partition lasts.
enum Hold {
    /// `n` changes published `every` apart while cut (their count times the pace is
    /// the partition's length).
    Paced { n: u32, every: Duration },
    /// `n` changes, then until the bus has ended the panel's session (its grace ran
    /// out): the resume cannot be covered.
    PastGrace { n: u32 },
}

/// What a partition scenario observed.
struct Outcome {
    view: view::View,
    cut_for: Duration,
    healed_to_exact: Duration,
}

/// A panel behind a link that is cut while the publisher keeps changing state, then
/// restored; returns once the panel shows exactly the bus's state.
async fn partition(cfg: Config, hold: Hold) -> Option<Outcome> {
    let mut lab = match Lab::new() {
        Ok(lab) => lab,
        Err(why) => {
            skip(&why);
            return None;
        }
    };
    let host = lab.host("panel").expect("a host namespace");
    let rig = Rig::start(lab, cfg).await;
    let publisher = rig.local_client("publisher", Role::Tool).await;
    for i in 0..TOPICS {
        change(&publisher, i, 0).await;
    }
    let panel = rig.host_client(&host, "panel", Role::Panel).await;
    let sub = panel.subscribe(&[FILTER]).await.expect("subscribe");
    let mut tracked = Tracked::start(&panel, sub);
    let watcher = rig.local_client("watcher", Role::Tool).await;
    let mut seen = watcher
        .subscribe(&[&format!("$clients/{}", panel.session())])
        .await
        .expect("subscribe to presence");
    presence(&mut seen, "the panel's presence", |c| c == Some(true)).await;
    tracked
        .until("the panel's snapshot", SETTLE, |v| {
            v.synced >= 1 && v.state.len() == TOPICS as usize
        })
        .await;

    host.partition().expect("cut the link");
    let cut = Instant::now();
    let n = match hold {
        Hold::Paced { n, every } => {
            let mut pace = tokio::time::interval(every);
            for i in 0..n {
                pace.tick().await;
                change(&publisher, i, i + 1).await;
            }
            // The first tick is immediate: one more makes the cut `n × every`.
            pace.tick().await;
            n
        }
        Hold::PastGrace { n } => {
            for i in 0..n {
                change(&publisher, i, i + 1).await;
            }
            n
        }
    };
    presence(&mut seen, "the bus to notice the lost panel", |c| {
        c != Some(true)
    })
    .await;
    if let Hold::PastGrace { .. } = hold {
        presence(&mut seen, "the panel's session to end", |c| c.is_none()).await;
    }
    tracked
        .until("the panel to notice the lost link", SETTLE, |v| {
            v.disconnects >= 1
        })
        .await;
    host.heal().expect("restore the link");
    let cut_for = cut.elapsed();
    let healed = Instant::now();
    let last = publisher
        .publish("room/done", Value::from(n), true)
        .await
        .expect("the last publish");
    tracked.reaches("room/done", last, SETTLE).await;
    let healed_to_exact = healed.elapsed();
    let truth = rig.truth(FILTER).await;
    let view = tracked.view().clone();
    assert_eq!(
        view.state,
        truth,
        "the panel ended with other state than the bus's: {}",
        differences(&view.state, &truth)
    );
    assert_eq!(view.gaps, 0, "no queue overflowed");
    assert_eq!(view.lagged, 0, "no connection event was missed");
    drop(tracked);
    panel.close().await;
    for c in [publisher, watcher] {
        c.close().await;
    }
    rig.stop().await;
    drop(host);
    Some(Outcome {
        view,
        cut_for,
        healed_to_exact,
    })
}

fn report(name: &str, o: &Outcome) {
    eprintln!(
        "{name}: cut {:.1} s; reconnections (resumed?) {:?}; resyncs {}; updates {}; \
         exact {:.2} s after the link came back",
        o.cut_for.as_secs_f64(),
        o.view.connects,
        o.view.resyncs,
        o.view.updates,
        o.healed_to_exact.as_secs_f64()
    );
}

/// Scenario 1, covered: a five-second partition within the session's grace and the
/// replay log's reach. The panel resumes its session and the bus replays what it
/// missed: no resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_cut_for_five_seconds_resumes_with_a_replay() {
    let hold = Hold::Paced {
        n: 100,
        every: Duration::from_millis(50),
    };
    let Some(o) = partition(lab_config(), hold).await else {
        return;
    };
    report("5 s partition", &o);
    assert!(o.cut_for >= Duration::from_secs(5));
    assert_eq!(o.view.connects, vec![true], "one reconnection, resumed");
    assert_eq!(o.view.resyncs, 0, "the replay covered the gap: no resync");
    assert_eq!(o.view.synced, 2, "the snapshot, then the replay");
}

/// Scenario 1, not covered (quick): the partition outlasts the replay log (16
/// entries, 100 changes). The session resumes but the bus cannot replay: it sends a
/// resync snapshot, and the panel rebuilds its map from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_cut_past_the_replay_log_resyncs() {
    let mut cfg = lab_config();
    cfg.limits.replay_entries = 16;
    let hold = Hold::Paced {
        n: 100,
        every: Duration::from_millis(20),
    };
    let Some(o) = partition(cfg, hold).await else {
        return;
    };
    report("partition past the replay log", &o);
    assert_eq!(o.view.connects, vec![true], "the session itself was kept");
    assert_eq!(o.view.resyncs, 1, "the log did not reach back: one resync");
}

/// Scenario 1, not covered (quick): the partition outlasts the session's grace
/// (1 s). The bus ends the session; the panel gets a new one and a resync snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_cut_past_its_grace_resyncs() {
    let mut cfg = lab_config();
    cfg.session.grace_ms = 1_000;
    let Some(o) = partition(cfg, Hold::PastGrace { n: 50 }).await else {
        return;
    };
    report("partition past the grace", &o);
    assert_eq!(o.view.connects, vec![false], "a new session");
    assert_eq!(o.view.resyncs, 1, "rebuilt from one resync snapshot");
}

/// Scenario 1, five minutes, with the default session settings (30 s grace, 5 s
/// heartbeat): the session is long gone when the link returns; the panel resyncs.
/// 3000 changes at 10 per second while cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes five minutes: run by scripts/faults"]
async fn a_panel_cut_for_five_minutes_resyncs() {
    let mut cfg = lab_config();
    cfg.session = Config::default().session;
    let hold = Hold::Paced {
        n: 3000,
        every: Duration::from_millis(100),
    };
    let Some(o) = partition(cfg, hold).await else {
        return;
    };
    report("5 min partition", &o);
    assert!(o.cut_for >= Duration::from_secs(300));
    assert_eq!(o.view.connects, vec![false], "the session had expired");
    assert_eq!(o.view.resyncs, 1, "rebuilt from one resync snapshot");
}

/// Scenario 2: 10 % loss and 50 ± 50 ms delay (so packets are reordered) on the
/// panel's link, both ways, during a burst of 2000 changes; the panel ends with the
/// bus's state exactly. Default heartbeats (5 s): TCP carries the loss, the session
/// need not break, and whether it does is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_jittery_link_ends_with_the_exact_state() {
    const BURST: u32 = 2000;
    let mut lab = lab_or_skip!();
    if let Some(why) = netem::unavailable() {
        return skip(&why);
    }
    let host = lab.host("panel").expect("a host namespace");
    let mut cfg = lab_config();
    cfg.session = Config::default().session;
    let rig = Rig::start(lab, cfg).await;
    let publisher = rig.local_client("publisher", Role::Tool).await;
    for i in 0..TOPICS {
        change(&publisher, i, 0).await;
    }
    let panel = rig.host_client(&host, "panel", Role::Panel).await;
    let sub = panel.subscribe(&[FILTER]).await.expect("subscribe");
    let mut tracked = Tracked::start(&panel, sub);
    tracked
        .until("the panel's snapshot", SETTLE, |v| v.synced >= 1)
        .await;
    let seed = fastrand::u64(..);
    eprintln!("netem seed {seed}");
    let imp = Impairment {
        loss: 0.10,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(50),
    };
    let netem = Netem::start(&host, imp, seed).expect("impair the link");
    let t = Instant::now();
    // The burst: as fast as the bus takes them, fire and forget.
    for i in 0..BURST {
        let topic = format!("room/t{}", i % TOPICS);
        publisher
            .publish_nowait(&topic, Value::from(i + 1), true)
            .await
            .expect("publish");
    }
    let last = change(&publisher, BURST, BURST + 1).await;
    tracked.reaches("room/t0", last, SETTLE).await;
    let took = t.elapsed();
    let truth = rig.truth(FILTER).await;
    let view = tracked.view().clone();
    let counts = netem.counts();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let (seen, lost, reordered) = (
        load(&counts.seen),
        load(&counts.lost),
        load(&counts.reordered),
    );
    eprintln!(
        "loss and jitter: {BURST} changes on the panel in {:.2} s; packets {seen}, lost \
         {lost}, reordered {reordered}; reconnections {:?}, resyncs {}, updates {}",
        took.as_secs_f64(),
        view.connects,
        view.resyncs,
        view.updates
    );
    netem.stop().expect("the impairment ends cleanly");
    assert!(lost > 0, "the link lost packets ({seen} seen)");
    assert_eq!(
        view.state,
        truth,
        "the panel ended with other state than the bus's: {}",
        differences(&view.state, &truth)
    );
    drop(tracked);
    panel.close().await;
    publisher.close().await;
    rig.stop().await;
    drop(host);
}

/// The PJLink name of a projector's power state, as the adapter publishes it.
fn power_name(p: PowerState) -> &'static str {
    match p {
        PowerState::Standby => "off",
        PowerState::WarmUp => "warming",
        PowerState::On => "on",
        PowerState::Cooling => "cooling",
    }
}

/// Scenario 3: a PJLink projector (the simulator, on its own host) whose link is
/// cut while its adapter runs in the bus. Its controls go offline on the panel; a
/// `set` sent during the cut gets one typed answer (`timeout` or `device_offline`)
/// and leaves no control `pending`; once the link is back the device is online with
/// its real state, and commands reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cut_off_goes_offline_then_back_with_nothing_left_pending() {
    const DEVICE: &str = "hall/projector";
    let mut lab = lab_or_skip!();
    let projector = lab.host("projector").expect("a host namespace");
    let listen = SocketAddr::new(projector.addr, 0);
    let sim = projector
        .rt
        .run(async move { Sim::start(listen, SimConfig::fast()).await })
        .await
        .expect("the simulator starts on its host");
    let rig = Rig::start(lab, lab_config()).await;
    let entry = DeviceConfig {
        room: "hall".into(),
        name: "projector".into(),
        driver: "pjlink".into(),
        label: None,
        host: Some(sim.addr().ip().to_string()),
        port: Some(sim.addr().port()),
        password: None,
        poll_ms: Some(200),
    };
    let local = rig.bus.local();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    rig.lab
        .bus
        .run(async move {
            let opts = ClientOptions::local(local, "hosted-adapters").role(Role::Adapter);
            let client = Client::connect(opts).await.expect("the adapter connects");
            let host = AdapterHost::start(client).await;
            pjlink::adapter::spawn(&host, &entry, c);
        })
        .await;
    let panel = rig.local_client("panel", Role::Panel).await;
    let sub = panel
        .subscribe(&[&format!("{DEVICE}/#")])
        .await
        .expect("subscribe");
    let mut tracked = Tracked::start(&panel, sub);
    let online = format!("{DEVICE}/online");
    let power = format!("{DEVICE}/power");
    let shows = |v: &view::View, topic: &str, value: &str, q: Quality| {
        v.state
            .get(topic)
            .is_some_and(|(x, _)| x.as_str() == Some(value))
            && v.quality.get(topic) == Some(&q)
    };
    tracked
        .until("the projector online", SETTLE, |v| {
            v.state
                .get(&online)
                .is_some_and(|(x, _)| x == &Value::Boolean(true))
                && shows(v, &power, "off", Quality::Ok)
        })
        .await;

    projector.partition().expect("cut the projector's link");
    let cut = Instant::now();
    let setter = {
        let (panel, power) = (panel.clone(), power.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            (panel.set(&power, Value::from("on")).await, t.elapsed())
        })
    };
    tracked
        .until("the projector offline", SETTLE, |v| {
            v.state
                .get(&online)
                .is_some_and(|(x, _)| x == &Value::Boolean(false))
        })
        .await;
    let to_offline = cut.elapsed();
    let (answer, answered_in) = bounded("the set's answer", SETTLE, setter)
        .await
        .expect("the set task");
    let code = answer
        .expect_err("a command to a cut-off device cannot succeed")
        .code;
    assert!(
        matches!(code, ErrorCode::Timeout | ErrorCode::DeviceOffline),
        "answered {code}"
    );
    tracked
        .until("every control offline, none pending", SETTLE, |v| {
            let controls: Vec<_> = v.quality.iter().filter(|(t, _)| **t != online).collect();
            !controls.is_empty() && controls.iter().all(|(_, q)| **q == Quality::Offline)
        })
        .await;
    let held = common::within("a get", panel.get(&power))
        .await
        .expect("get")
        .expect("power is retained");
    assert_eq!(held.quality, Some(Quality::Offline), "the bus agrees");
    let refused = panel.set(&power, Value::from("on")).await;
    assert_eq!(refused.map_err(|e| e.code), Err(ErrorCode::DeviceOffline));

    projector.heal().expect("restore the projector's link");
    let healed = Instant::now();
    tracked
        .until("the projector back with its real state", SETTLE, |v| {
            let real = power_name(sim.state().power);
            v.state
                .get(&online)
                .is_some_and(|(x, _)| x == &Value::Boolean(true))
                && shows(v, &power, real, Quality::Ok)
        })
        .await;
    let to_online = healed.elapsed();
    let before_on = sim.state().power;
    common::within(
        "a set after the link came back",
        panel.set(&power, Value::from("on")),
    )
    .await
    .expect("the projector takes commands again");
    assert_ne!(sim.state().power, PowerState::Standby);
    let pending_seen = tracked.view().ever_pending.clone();
    eprintln!(
        "device cut: offline {:.2} s after the cut; the set during the cut answered {code} \
         after {:.2} s; controls ever pending {pending_seen:?}; online again {:.2} s after \
         the link came back (power then {before_on:?})",
        to_offline.as_secs_f64(),
        answered_in.as_secs_f64(),
        to_online.as_secs_f64()
    );
    cancel.cancel();
    drop(tracked);
    panel.close().await;
    rig.stop().await;
    drop(sim);
    drop(projector);
}

/// The config file of the crash test's bus: every address of its namespace on
/// `port` (0 the first time, then the same port again), heartbeats every 500 ms,
/// the journal in `dir`, synced before each retained publish is acknowledged.
fn crash_config(port: u16, dir: &std::path::Path) -> String {
    format!(
        "[listen]\ntcp = \"0.0.0.0:{port}\"\nhttp = \"off\"\n\n\
         [auth.anonymous]\nall = true\n\n\
         [session]\nheartbeat_ms = 500\n\n\
         [persist]\ndir = \"{}\"\nfsync = \"always\"\n",
        dir.display()
    )
}

/// Publishes `n` retained topics `room/k<i>`, each until acknowledged (a publish cut
/// by the crash is sent again, the same value), recording each acknowledged one.
/// One topic per change: a value acknowledged before the crash is never overwritten
/// after it, so only the journal can bring it back.
async fn publish_through(
    publisher: Client,
    n: u32,
    acked: std::sync::Arc<std::sync::Mutex<State>>,
) {
    for i in 0..n {
        let topic = format!("room/k{i}");
        let value = Value::from(i + 1);
        let seq = loop {
            match publisher.publish(&topic, value.clone(), true).await {
                Ok(seq) => break seq,
                Err(e) => eprintln!("crash: publish {i} not acknowledged ({e}); again"),
            }
        };
        acked.lock().expect("acked").insert(topic, (value, seq.0));
    }
}

/// Scenario 4: the bus (its own process, journal with `fsync = "always"`) is killed
/// with SIGKILL in the middle of a stream of acknowledged retained publishes and
/// started again on the same port. The panels, behind their link, come back to a
/// new epoch, so they resync (`resumed: false`); every acknowledged value is on the
/// bus and on both panels, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_killed_mid_stream_restarts_with_every_acknowledged_value() {
    const CHANGES: u32 = 600;
    let mut lab = lab_or_skip!();
    let host = lab.host("panels").expect("a host namespace");
    let scratch = process::Scratch::new("crash");
    let (journal, config, log) = (
        scratch.0.join("journal"),
        scratch.0.join("bus.toml"),
        scratch.0.join("bus.log"),
    );
    std::fs::write(&config, crash_config(0, &journal)).expect("write the config");
    let first = BusProcess::start(&lab.ns, &config, &log, SETTLE).await;
    let port = first.ready.port;
    let epoch = first.ready.epoch;
    let local = options(&format!("127.0.0.1:{port}"), "publisher", Role::Tool);
    let publisher = connect(&lab.bus, local).await;
    let mut panels = Vec::new();
    for name in ["panel-a", "panel-b"] {
        let opts = options(&format!("{}:{port}", host.bus_addr), name, Role::Panel);
        let panel = connect(&host.rt, opts).await;
        let sub = panel.subscribe(&[FILTER]).await.expect("subscribe");
        let mut tracked = Tracked::start(&panel, sub);
        tracked
            .until("the panel's first snapshot", SETTLE, |v| v.synced >= 1)
            .await;
        panels.push((panel, tracked));
    }
    let acked = std::sync::Arc::new(std::sync::Mutex::new(State::new()));
    let stream = tokio::spawn(publish_through(publisher.clone(), CHANGES, acked.clone()));
    // Mid-stream: once a third of the changes are acknowledged, with more in flight.
    panels[0]
        .1
        .until("a third of the changes on a panel", SETTLE, |v| {
            v.updates >= u64::from(CHANGES / 3)
        })
        .await;
    let acked_before = acked.lock().expect("acked").len();
    first.kill();
    let killed = Instant::now();
    std::fs::write(&config, crash_config(port, &journal)).expect("rewrite the config");
    let second = BusProcess::start(&lab.ns, &config, &log, SETTLE).await;
    let restart = killed.elapsed();
    assert_eq!(second.ready.port, port);
    assert_ne!(second.ready.epoch, epoch, "a new epoch");
    bounded("the stream of publishes to end", SETTLE, stream)
        .await
        .expect("the publisher");
    let last = common::within(
        "the last publish",
        publisher.publish("room/done", Value::from(CHANGES), true),
    )
    .await
    .expect("the last publish");
    let truth = {
        let checker = connect(
            &lab.bus,
            options(&format!("127.0.0.1:{port}"), "checker", Role::Tool),
        )
        .await;
        let mut sub = checker.subscribe(&[FILTER]).await.expect("subscribe");
        let state = bounded("the checker's snapshot", SETTLE, snapshot_of(&mut sub)).await;
        checker.close().await;
        state
    };
    for (topic, (value, _)) in acked.lock().expect("acked").iter() {
        let on_bus = truth.get(topic).map(|(v, _)| v);
        assert_eq!(
            on_bus,
            Some(value),
            "{topic}: the acknowledged value survived"
        );
    }
    for (panel, mut tracked) in panels {
        tracked.reaches("room/done", last, SETTLE).await;
        let view = tracked.view().clone();
        assert_eq!(
            view.state,
            truth,
            "the panel ended with other state than the bus's: {}",
            differences(&view.state, &truth)
        );
        assert!(
            view.connects.contains(&false),
            "a new epoch: the session cannot resume ({:?})",
            view.connects
        );
        assert!(view.resyncs >= 1, "the panel rebuilt its map from a resync");
        eprintln!(
            "crash: killed after {acked_before} acknowledged changes of {CHANGES}; ready again \
             {:.2} s after SIGKILL; {}: reconnections (resumed?) {:?}, resyncs {}",
            restart.as_secs_f64(),
            panel_name(&panel),
            view.connects,
            view.resyncs
        );
        drop(tracked);
        panel.close().await;
    }
    publisher.close().await;
    drop(second);
    drop(host);
    drop(lab);
    drop(scratch);
}

fn panel_name(panel: &Client) -> String {
    format!("{panel:?}")
}
