//! `avbus soak`: a bounded run of a whole site under churn, to show that the bus's
//! memory stays flat, that it leaks no file descriptors and that no state is lost.
//!
//! The soak starts, as child processes of its own executable, the device simulators
//! (`avbus sim extron-sis --count N`, `avbus sim x32-osc --count C`) and the bus
//! (`avbus serve --config <scratch>/bus.toml`, hosting one adapter per simulator), so
//! the bus's memory and descriptors are read from `/proc/<pid>` alone. Panels (the
//! real [`crate::client::Client`], `panel.rs`) then connect, subscribe, command,
//! publish, read meters and drop at random for the run's length, while the bus is
//! sampled (`observe`): RSS, open descriptors, `$sys` counters and queue depths.
//! Switchers lose their network now and then (`faults`); the bus keeps its
//! retained-state journal (`[persist]`). When the load stops, `check` compares
//! every connected panel's view with a fresh snapshot, every acknowledged retained
//! publish with the bus and its journal, and makes every device take one more
//! command; then every panel closes and the bus must come back to its baseline of
//! connections, sessions and descriptors.
//!
//! Every wait is bounded; the number of panels at once is `--panels`; the load ends
//! at `--minutes`/`--seconds`, and the checks after it take at most a few minutes.

mod check;
mod faults;
mod observe;
mod panel;
mod procs;
mod proxy;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use check::{judge_retained, view_diff, Retained};
pub use panel::{Counters, Ledger, LoadStats, TopicLedger};
pub use procs::{fd_count, rss_kib, Site, REPLAY_ENTRIES, ROOM_SIZE, SWITCHERS_PER_CONSOLE};
pub use report::{rss_verdict, Check, RssVerdict, Sample, MIN_RSS_SAMPLES, RSS_LIMIT_PCT};

use crate::client::{Client, ClientOptions};
use crate::protocol::Role;
use observe::Observer;
use panel::{Kept, Load};
use procs::{bus_config, Proc, Scratch};
use proxy::Link;

/// Most panels a soak runs at once: each holds about five descriptors in the soak's
/// process (its link's listener and two ends, the client's TCP and UDP sockets) and
/// one in the bus's, well inside a common 20 000-descriptor limit.
pub const MAX_PANELS: usize = 2_000;
/// Most switchers a soak simulates.
pub const MAX_DEVICES: usize = 1_000;
/// Longest load a soak runs.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Samples taken between the end of the warm-up and the end of the load (at most one
/// a second).
const SAMPLES: u32 = 20;
/// Warm-up before the first sample that counts: a tenth of the load, 1 to 60 s.
const WARMUP: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// Longest the devices may take to come online at the start.
const SETUP_WAIT: Duration = Duration::from_secs(120);
/// Longest the slots may take to finish their current action when the load stops.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// Longest the bus may take to settle (commands answered, queues drained).
const SETTLE_WAIT: Duration = Duration::from_secs(30);
/// Longest the bus's descriptors may take to close once its connections are gone.
const FD_WAIT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Length of the load (warm-up included).
    pub duration: Duration,
    /// Panel slots: panels connected at once, at most.
    pub panels: usize,
    /// Extron switchers simulated (plus one X32 console per
    /// [`SWITCHERS_PER_CONSOLE`]).
    pub devices: usize,
    /// Seeds every panel's choices.
    pub seed: u64,
}

impl SoakConfig {
    /// Checks the bounds.
    ///
    /// # Errors
    /// A message naming the value out of bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.panels == 0 || self.panels > MAX_PANELS {
            return Err(format!("--panels must be 1 to {MAX_PANELS}"));
        }
        if self.devices == 0 || self.devices > MAX_DEVICES {
            return Err(format!("--devices must be 1 to {MAX_DEVICES}"));
        }
        if self.duration < Duration::from_secs(1) || self.duration > MAX_DURATION {
            return Err("the load must last 1 s to 24 h".into());
        }
        Ok(())
    }
}

/// What a soak found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `base` (before the panels), `start` (after warm-up), the samples in between,
    /// `end` (load stopped, checks done, panels still connected) and `final` (every
    /// panel gone).
    pub samples: Vec<Sample>,
    pub rss: RssVerdict,
    pub checks: Vec<Check>,
}

impl Outcome {
    /// Whether every check passed.
    pub fn pass(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

/// The bus and everything it needs, stopped when dropped.
struct Rig {
    /// Killed first (see `Drop`), before the devices it talks to.
    bus: Proc,
    /// Kept for their `Drop`: the simulators are killed with the rig.
    _sims: Vec<Proc>,
    addr: String,
    journal: Option<std::path::PathBuf>,
    /// The switchers' network links (the bus's adapters reach them through these).
    links: Vec<Arc<Link>>,
    /// Ends every link (after the checks).
    teardown: CancellationToken,
    _scratch: Scratch,
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The bus first, so that it does not see its devices go (and log it).
        self.bus.kill();
        self.teardown.cancel();
    }
}

impl Rig {
    async fn start(cfg: &SoakConfig, site: &Site) -> Result<Rig, String> {
        let exe = std::env::current_exe().map_err(|e| format!("the avbus executable: {e}"))?;
        let scratch = Scratch::create(cfg.seed)?;
        let sim = |driver: &str, n: usize| {
            vec!["sim".into(), driver.into(), "--count".into(), n.to_string()]
        };
        let switchers = Proc::start(&exe, sim("extron-sis", cfg.devices)).await?;
        let consoles = Proc::start(&exe, sim("x32-osc", site.consoles.len())).await?;
        let (sw, co) = (switchers.addrs(), consoles.addrs());
        if sw.len() != cfg.devices || co.len() != site.consoles.len() {
            return Err(format!(
                "the simulators listed {} and {} addresses, not {} and {}",
                sw.len(),
                co.len(),
                cfg.devices,
                site.consoles.len()
            ));
        }
        let teardown = CancellationToken::new();
        let mut links = Vec::with_capacity(sw.len());
        for addr in &sw {
            let link = Link::start(*addr, teardown.clone())
                .await
                .map_err(|e| format!("device link: {e}"))?;
            links.push(Arc::new(link));
        }
        let via: Vec<std::net::SocketAddr> = links.iter().map(|l| l.addr).collect();
        // The retained-state journal, soaked too (`[persist]`, fsync by interval).
        let journal = Some(scratch.0.join("journal"));
        let path = scratch.0.join("bus.toml");
        std::fs::write(&path, bus_config(site, &via, &co, journal.as_deref()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let args = vec![
            "serve".into(),
            "--config".into(),
            path.display().to_string(),
        ];
        let bus = Proc::start(&exe, args).await?;
        let addr = bus.ready["ready"]["tcp"]
            .as_str()
            .ok_or("no address in the bus's ready line")?
            .to_owned();
        Ok(Rig {
            bus,
            _sims: vec![switchers, consoles],
            addr,
            journal,
            links,
            teardown,
            _scratch: scratch,
        })
    }

    fn pid(&self) -> u32 {
        self.bus.pid()
    }
}

/// Runs a soak, printing its samples as they are taken and its summary at the end.
///
/// # Errors
/// A setup failure: a process that does not start, devices that do not come online.
/// Failed checks are not errors: they are in the [`Outcome`].
pub async fn run(cfg: &SoakConfig) -> Result<Outcome, String> {
    cfg.validate()?;
    let site = Site::new(cfg.devices);
    println!(
        "avbus soak: seed {}, {} panels, {} switchers in {} rooms + {} X32 consoles, load {} s",
        cfg.seed,
        cfg.panels,
        cfg.devices,
        site.rooms.len(),
        site.consoles.len(),
        cfg.duration.as_secs()
    );
    let rig = Rig::start(cfg, &site).await?;
    let pid = rig.pid();
    let checker = ClientOptions::tcp(&rig.addr, "soak-checker").role(Role::Tool);
    let checker = Client::connect(checker)
        .await
        .map_err(|e| format!("{}: {e}", rig.addr))?;
    check::all_online(&checker, &site, SETUP_WAIT).await?;
    let obs = Observer::start(&rig.addr).await?;
    let devices = site.devices().len() as u64;
    // A refresh of the `$sys` topics (every second) that has every device and both
    // of the soak's own clients: the baseline of a settled bus.
    let ours = [obs.session(), checker.session()];
    let (_, map) = obs
        .wait_for(SETTLE_WAIT, |m| {
            m.sys("devices") == devices && ours.iter().all(|s| m.has(&format!("$sys/queues/{s}")))
        })
        .await;
    let journal = rig.journal.as_deref();
    let mut base = Observer::sample(&map, pid, 0.0, journal);
    base.label = "base".into();
    let base_clients = map.count("$clients/");
    let base_queues = map.count("$sys/queues/");
    println!(
        "bus pid {pid} at {}: {} KiB resident, {} descriptors before any panel",
        rig.addr, base.rss_kib, base.fds
    );
    println!("{}", base.line());

    let load = Arc::new(Load {
        site: site.clone(),
        seed: cfg.seed,
        duration: cfg.duration,
        counters: Counters::default(),
        ledger: std::sync::Mutex::new(Ledger::default()),
    });
    let (samples, kept, stopped) = drive(cfg, &rig, &obs, &load, base).await?;

    let mut checks = Vec::new();
    if !stopped {
        checks.push(Check::new(
            "stop",
            false,
            "slots still busy after the stop wait",
        ));
    }
    let mut samples =
        settle_and_check(&rig, &obs, &checker, &load, kept, samples, &mut checks).await;
    // Every panel gone: connections, sessions (after their grace), presence and
    // queue records, and descriptors back to the baseline.
    let base = samples[0].clone();
    let grace = Duration::from_millis(crate::config::Config::default().session.grace_ms);
    let (back, map) = obs
        .wait_for(grace + SETTLE_WAIT, |m| {
            m.sys("connections") == base.sys("connections")
                && m.sys("sessions") == base.sys("sessions")
                && m.sys("subscriptions") == base.sys("subscriptions")
                && m.count("$clients/") == base_clients
                && m.count("$sys/queues/") == base_queues
        })
        .await;
    checks.push(Check::new(
        "sessions",
        back,
        format!(
            "connections {} (base {}), sessions {} (base {}), subscriptions {} (base {}), \
             presence records {} (base {base_clients}), queue records {} (base {base_queues})",
            map.sys("connections"),
            base.sys("connections"),
            map.sys("sessions"),
            base.sys("sessions"),
            map.sys("subscriptions"),
            base.sys("subscriptions"),
            map.count("$clients/"),
            map.count("$sys/queues/"),
        ),
    ));
    let fds = fds_settled(pid, base.fds).await;
    checks.push(Check::new(
        "fds",
        fds <= base.fds,
        format!("{fds} open descriptors, {} before any panel", base.fds),
    ));
    let t = samples.last().map_or(0.0, |s| s.t_s);
    let mut last = Observer::sample(&map, pid, t, journal);
    last.label = "final".into();
    last.load = load.counters.snapshot();
    println!("{}", last.line());
    samples.push(last);

    let series: Vec<u64> = samples
        .iter()
        .filter(|s| s.label.is_empty() || s.label == "start")
        .map(|s| s.rss_kib)
        .collect();
    let mut rss = rss_verdict(&series, RSS_LIMIT_PCT);
    // Growth while the replay log was still filling is the log, not a leak.
    let start_replay = samples
        .iter()
        .find(|s| s.label == "start")
        .map_or(0, |s| s.sys("replay_entries"));
    let filled = start_replay >= REPLAY_ENTRIES as u64;
    let why = if !filled {
        format!(
            "; not judged: the replay log was still filling at the start sample \
             ({start_replay} of {REPLAY_ENTRIES} entries; a longer run fills it in warm-up)"
        )
    } else if !rss.judged {
        format!("; not judged: fewer than {MIN_RSS_SAMPLES} samples")
    } else {
        String::new()
    };
    if !filled {
        rss.judged = false;
        rss.pass = true;
    }
    checks.push(Check::new(
        "memory",
        rss.pass,
        format!(
            "RSS median of the last third {} KiB vs the first third {} KiB: {:+.1} % \
             (limit {RSS_LIMIT_PCT} %){why}",
            rss.last_kib, rss.first_kib, rss.growth_pct,
        ),
    ));
    checker.close().await;
    let outcome = Outcome {
        samples,
        rss,
        checks,
    };
    summary(&outcome, &load.counters.snapshot());
    Ok(outcome)
}

/// Runs the load for `cfg.duration`, sampling the bus; returns the samples (`base`
/// first), the panels connected when it stopped, and whether every slot stopped in
/// time.
async fn drive(
    cfg: &SoakConfig,
    rig: &Rig,
    obs: &Observer,
    load: &Arc<Load>,
    base: Sample,
) -> Result<(Vec<Sample>, Vec<Kept>, bool), String> {
    let stop = CancellationToken::new();
    let bus_addr: std::net::SocketAddr = rig.addr.parse().map_err(|e| format!("{e}"))?;
    let mut slots = Vec::with_capacity(cfg.panels);
    for i in 0..cfg.panels {
        let proxy = Link::start(bus_addr, rig.teardown.clone())
            .await
            .map_err(|e| format!("proxy: {e}"))?;
        let proxy = Arc::new(proxy);
        slots.push((
            proxy.clone(),
            tokio::spawn(panel::slot(i, load.clone(), proxy, stop.clone())),
        ));
    }
    let faults = tokio::spawn(faults::run(rig.links.clone(), load.clone(), stop.clone()));
    let t0 = Instant::now();
    let pid = rig.pid();
    let journal = rig.journal.as_deref();
    let mut samples = vec![base];
    println!("{}", report::table_header());
    println!("{}", report::table_row(&samples[0]));
    // Warm-up: a tenth of the load (1 to 60 s), and then until the replay log is full
    // (so that its filling up, bounded by design, is not taken for growth), but at
    // most half the load.
    let warmup = (cfg.duration / 10)
        .clamp(WARMUP.0, WARMUP.1)
        .min(cfg.duration);
    tokio::time::sleep_until((t0 + warmup).into()).await;
    let cap = (cfg.duration / 2).saturating_sub(t0.elapsed());
    obs.wait_for(cap, |m| m.sys("replay_entries") >= REPLAY_ENTRIES as u64)
        .await;
    let mut at = t0.elapsed().min(cfg.duration);
    let step = ((cfg.duration - at) / SAMPLES).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep_until((t0 + at).into()).await;
        let map = obs
            .snapshot()
            .await
            .map_err(|e| format!("the bus stopped answering the observer: {e}"))?;
        let mut s = Observer::sample(&map, pid, t0.elapsed().as_secs_f64(), journal);
        s.load = load.counters.snapshot();
        if samples.len() == 1 {
            s.label = "start".into();
        }
        println!("{}", report::table_row(&s));
        println!("{}", s.line());
        samples.push(s);
        if at >= cfg.duration {
            break;
        }
        // The last sample at the end of the load, not a moment before it.
        at += step;
        if at + step / 2 > cfg.duration {
            at = cfg.duration;
        }
    }
    stop.cancel();
    // The link is up again for every panel and device, so that those cut off
    // reconnect.
    for (proxy, _) in &slots {
        proxy.set_down(false);
    }
    for link in &rig.links {
        link.set_down(false);
    }
    let _ = faults.await;
    let mut kept = Vec::new();
    let mut stopped = true;
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    for (_, task) in slots {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Some(k))) => kept.push(k),
            Ok(_) => {}
            Err(_) => stopped = false,
        }
    }
    Ok((samples, kept, stopped))
}

/// After the load: commands answered, views and retained state checked, queues
/// drained, the `end` sample, devices and meters checked; then the kept panels close.
/// Returns the samples with `end` added.
async fn settle_and_check(
    rig: &Rig,
    obs: &Observer,
    checker: &Client,
    load: &Load,
    kept: Vec<Kept>,
    mut samples: Vec<Sample>,
    checks: &mut Vec<Check>,
) -> Vec<Sample> {
    // A switcher whose fault ended as the load stopped is still reconnecting.
    let online = check::all_online(checker, &load.site, SETUP_WAIT).await;
    let (pending, map) = obs
        .wait_for(SETTLE_WAIT, |m| m.sys("commands_pending") == 0)
        .await;
    let st = load.counters.snapshot();
    checks.push(Check::new(
        "commands",
        pending && st.unanswered == 0,
        format!(
            "{} pending on the bus; panels: {} ok, {} failed {:?}, {} actions unanswered",
            map.sys("commands_pending"),
            st.sets_ok,
            st.sets_failed,
            st.set_errors,
            st.unanswered
        ),
    ));
    checks.push(check::views(checker, &kept).await);
    // Every slot has stopped: nothing writes to the ledger any more.
    let ledger = std::mem::take(&mut *load.ledger.lock().unwrap_or_else(|e| e.into_inner()));
    let (check, held) = check::retained(checker, &ledger).await;
    checks.push(check);
    if rig.journal.is_some() {
        // The journal keeps exactly the panels' retained topics (device state and `$`
        // topics are not journaled), and never failed.
        let (ok, map) = obs
            .wait_for(SETTLE_WAIT, |m| {
                m.sys("persist/live_topics") == held && m.sys("persist/errors") == 0
            })
            .await;
        checks.push(Check::new(
            "journal",
            ok,
            format!(
                "{} live topics (the bus holds {held} published by panels), {} records, \
                 {} compactions, {} errors, file {} bytes",
                map.sys("persist/live_topics"),
                map.sys("persist/records"),
                map.sys("persist/compactions"),
                map.sys("persist/errors"),
                map.sys("persist/file_bytes"),
            ),
        ));
    }
    let skip = [obs.session(), checker.session()];
    let (drained, map) = obs
        .wait_for(SETTLE_WAIT, |m| m.queues(&skip).frames == 0)
        .await;
    let q = map.queues(&skip);
    checks.push(Check::new(
        "queues",
        drained,
        format!(
            "{} frames queued in {} session queues (the checker's and observer's aside); highest peak of any queue {} frames",
            q.frames, q.sessions, q.max_peak_frames
        ),
    ));
    let t = samples.last().map_or(0.0, |s| s.t_s);
    let mut end = Observer::sample(&map, rig.pid(), t, rig.journal.as_deref());
    end.label = "end".into();
    end.load = load.counters.snapshot();
    println!("{}", end.line());
    samples.push(end);
    checks.push(check::devices(checker, &load.site, online).await);
    checks.push(check::telemetry(checker, &load.site, st.tsubs, st.telemetry_values).await);
    futures_util::future::join_all(kept.into_iter().map(Kept::close)).await;
    samples
}

/// The bus's open descriptors once they have come down to `base` (re-read every
/// 100 ms, for at most [`FD_WAIT`]); the last count read.
async fn fds_settled(pid: u32, base: u64) -> u64 {
    let deadline = Instant::now() + FD_WAIT;
    loop {
        let n = fd_count(pid).unwrap_or(u64::MAX);
        if n <= base || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the summary: the key samples, what the panels did, the checks and the
/// `SOAK` lines.
fn summary(o: &Outcome, st: &LoadStats) {
    println!();
    println!("== avbus soak summary ==");
    println!("{}", report::table_header());
    for s in o.samples.iter().filter(|s| !s.label.is_empty()) {
        println!("{}", report::table_row(s));
    }
    println!(
        "panels: {} connections ({} closed, {} vanished, {} failed to connect), {} Wi-Fi drops \
         ({} with an outage), {} resumed, {} new sessions after a drop",
        st.connects,
        st.closed,
        st.vanished,
        st.connect_failed,
        st.cuts,
        st.outages,
        st.resumed,
        st.new_sessions
    );
    println!(
        "        {} commands ok, {} failed {:?}; {} retained publishes acknowledged, {} not; \
         {} reads; {} resyncs and {} gaps seen by views; {} telemetry subscriptions, {} values; \
         {} switcher outages injected",
        st.sets_ok,
        st.sets_failed,
        st.set_errors,
        st.pubs_acked,
        st.pubs_failed,
        st.reads,
        st.view_resyncs,
        st.view_gaps,
        st.tsubs,
        st.telemetry_values,
        st.device_faults
    );
    let journal: Vec<String> = o
        .samples
        .iter()
        .filter_map(|s| Some(format!("{} {} B", s.label, s.journal_bytes?)))
        .filter(|s| !s.starts_with(' '))
        .collect();
    if !journal.is_empty() {
        println!("journal: {}", journal.join(", "));
    }
    for c in &o.checks {
        let mark = if c.pass { "pass" } else { "FAIL" };
        println!("  {mark:<4}  {:<10} {}", c.name, c.detail);
    }
    for c in &o.checks {
        println!("{}", c.line());
    }
    let failed: Vec<&str> = o
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.name)
        .collect();
    println!(
        "SOAK result={} checks={} failed={}",
        if failed.is_empty() { "pass" } else { "FAIL" },
        o.checks.len(),
        if failed.is_empty() {
            "-".to_owned()
        } else {
            failed.join(",")
        }
    );
}
