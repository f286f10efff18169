//! The load: panel slots. Each slot is one panel that, again and again until the
//! load stops, connects (through its own [`Link`]), subscribes to wildcard
//! filters, perhaps joins its room and subscribes to the consoles' meters, then
//! toggles device controls, publishes its room's retained `scene` and `mode`, reads
//! and pings at random; now and then its Wi-Fi drops (the proxy cuts it, sometimes
//! staying down for up to ten seconds) and it resumes; at the end of its life it
//! closes cleanly or vanishes (no goodbye: the bus keeps its session for the grace
//! period), and after a pause a new panel takes the slot.
//!
//! Every choice comes from the slot's own RNG, seeded from the run's seed, so a run's
//! plan repeats (the timing, and with it the interleaving, does not). Every action is
//! bounded in time; the number of panels at once is the number of slots.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::procs::Site;
use super::proxy::Link;
use crate::client::{Client, ClientOptions, ConnectionEvent, SubEvent, Subscription};
use crate::protocol::{Role, Seq, SessionId, Update};
use crate::value::Value;

/// Longest a panel's connection attempt (connect, subscribe, join, tsub) may take.
const OPEN_WAIT: Duration = Duration::from_secs(20);
/// Longest one action may take; a `set` waits at most the command deadline plus the
/// request timeout (15 s by default), so only a client that never answers hits it.
const ACTION_WAIT: Duration = Duration::from_secs(30);
/// Pause between two actions of a panel (uniform, ms): a person at a panel.
const ACTION_GAP_MS: (u64, u64) = (500, 3500);
/// Lifetime of one panel connection (uniform, ms), at most half the load.
const LIFE_MS: (u64, u64) = (5_000, 120_000);
/// Pause before a slot's next panel connects (uniform, ms), at most a tenth of the load.
const OFFLINE_MS: (u64, u64) = (200, 3_000);
/// Longest a Wi-Fi outage lasts (the proxy refusing connections), ms: within the
/// bus's 30 s session grace, so the panel resumes.
const OUTAGE_MS: (u64, u64) = (500, 10_000);
/// Percent of actions that are a Wi-Fi drop, and of those, that stay down a while.
const CUT_PCT: u32 = 3;
const OUTAGE_PCT: u32 = 50;
/// Telemetry rates panels ask for (Hz).
const TELEMETRY_HZ: [f64; 4] = [5.0, 10.0, 20.0, 30.0];
/// Unacknowledged publishes remembered per topic; beyond, the topic's check says it
/// cannot tell (none expected: each needs a publish cut off mid-way).
const MAX_UNACKED: usize = 1000;

/// What the panels did, for the report (all since the start of the load).
#[derive(Default)]
pub struct Counters {
    pub connects: AtomicU64,
    pub connect_failed: AtomicU64,
    pub closed: AtomicU64,
    pub vanished: AtomicU64,
    pub cuts: AtomicU64,
    pub outages: AtomicU64,
    pub resumed: AtomicU64,
    pub new_sessions: AtomicU64,
    pub view_resyncs: AtomicU64,
    pub view_gaps: AtomicU64,
    pub sets_ok: AtomicU64,
    pub sets_failed: AtomicU64,
    pub unanswered: AtomicU64,
    pub pubs_acked: AtomicU64,
    pub pubs_failed: AtomicU64,
    pub reads: AtomicU64,
    pub tsubs: AtomicU64,
    pub telemetry_values: AtomicU64,
    /// Switcher outages injected (`soak::faults`).
    pub device_faults: AtomicU64,
    /// Failed commands by error code.
    pub set_errors: Mutex<BTreeMap<String, u64>>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    pub connects: u64,
    pub connect_failed: u64,
    pub closed: u64,
    pub vanished: u64,
    pub cuts: u64,
    pub outages: u64,
    pub resumed: u64,
    pub new_sessions: u64,
    pub view_resyncs: u64,
    pub view_gaps: u64,
    pub sets_ok: u64,
    pub sets_failed: u64,
    pub unanswered: u64,
    pub pubs_acked: u64,
    pub pubs_failed: u64,
    pub reads: u64,
    pub tsubs: u64,
    pub telemetry_values: u64,
    pub device_faults: u64,
    pub set_errors: BTreeMap<String, u64>,
}

impl Counters {
    pub fn snapshot(&self) -> LoadStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LoadStats {
            connects: g(&self.connects),
            connect_failed: g(&self.connect_failed),
            closed: g(&self.closed),
            vanished: g(&self.vanished),
            cuts: g(&self.cuts),
            outages: g(&self.outages),
            resumed: g(&self.resumed),
            new_sessions: g(&self.new_sessions),
            view_resyncs: g(&self.view_resyncs),
            view_gaps: g(&self.view_gaps),
            sets_ok: g(&self.sets_ok),
            sets_failed: g(&self.sets_failed),
            unanswered: g(&self.unanswered),
            pubs_acked: g(&self.pubs_acked),
            pubs_failed: g(&self.pubs_failed),
            reads: g(&self.reads),
            tsubs: g(&self.tsubs),
            telemetry_values: g(&self.telemetry_values),
            device_faults: g(&self.device_faults),
            set_errors: self
                .set_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Every retained publish the panels made, per topic: the acknowledged one with the
/// highest sequence, and those whose answer never came (they may or may not have
/// been applied).
#[derive(Debug, Default)]
pub struct Ledger {
    pub topics: HashMap<String, TopicLedger>,
}

#[derive(Debug, Default)]
pub struct TopicLedger {
    pub acked: Option<(Seq, Value)>,
    pub unacked: Vec<Value>,
    /// Unacknowledged publishes past `MAX_UNACKED`.
    pub unacked_lost: u64,
}

impl Ledger {
    fn acked(&mut self, topic: &str, seq: Seq, value: Value) {
        let t = self.topics.entry(topic.to_owned()).or_default();
        if t.acked.as_ref().is_none_or(|(s, _)| *s < seq) {
            t.acked = Some((seq, value));
        }
    }

    fn unacked(&mut self, topic: &str, value: Value) {
        let t = self.topics.entry(topic.to_owned()).or_default();
        if t.unacked.len() < MAX_UNACKED {
            t.unacked.push(value);
        } else {
            t.unacked_lost += 1;
        }
    }
}

/// What the slots share.
pub(super) struct Load {
    pub site: Site,
    pub seed: u64,
    /// The load's length (bounds lifetimes and pauses).
    pub duration: Duration,
    pub counters: Counters,
    pub ledger: Mutex<Ledger>,
}

/// A panel's picture of the bus: the retained records its subscription delivered
/// (snapshot, replay or live), rebuilt after every resync.
#[derive(Default)]
struct ViewState {
    topics: HashMap<String, Update>,
    synced: bool,
}

/// A [`ViewState`] kept by a reader task; `changed` counts its changes.
pub struct View {
    state: Mutex<ViewState>,
    pub changed: watch::Sender<u64>,
}

impl View {
    fn new() -> Arc<View> {
        Arc::new(View {
            state: Mutex::new(ViewState::default()),
            changed: watch::channel(0).0,
        })
    }

    /// Whether the view is synced (not rebuilding after a resync), and the records
    /// it holds now.
    pub fn read(&self) -> (bool, HashMap<String, Update>) {
        let v = self.lock();
        (v.synced, v.topics.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one subscription event.
    fn apply(&self, ev: SubEvent, counters: &Counters) {
        {
            let mut v = self.lock();
            match ev {
                SubEvent::Update(u) if u.retain => {
                    if u.value.is_nil() {
                        v.topics.remove(&u.topic);
                    } else {
                        v.topics.insert(u.topic.clone(), u);
                    }
                }
                // Events are not state.
                SubEvent::Update(_) => return,
                SubEvent::Resync => {
                    bump(&counters.view_resyncs);
                    v.topics.clear();
                    v.synced = false;
                }
                SubEvent::Synced { .. } => v.synced = true,
                SubEvent::Gap { .. } => bump(&counters.view_gaps),
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A panel left connected when the load stopped, for the checks.
pub struct Kept {
    pub slot: usize,
    pub client: Client,
    pub filters: Vec<String>,
    pub view: Arc<View>,
    tasks: Vec<JoinHandle<()>>,
}

impl Kept {
    /// Closes it (goodbye, session ended).
    pub async fn close(self) {
        let _ = tokio::time::timeout(ACTION_WAIT, self.client.close()).await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One connected panel.
struct Panel {
    client: Client,
    filters: Vec<String>,
    view: Arc<View>,
    /// The subscription reader, the connection-event counter and the telemetry reader:
    /// they hold handles of the client, so they are aborted with it.
    tasks: Vec<JoinHandle<()>>,
}

impl Panel {
    fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One panel slot: who it is, its RNG and its link.
struct Slot {
    idx: usize,
    /// Index of its room in the site.
    home: usize,
    rng: fastrand::Rng,
    /// Its publishes so far (numbers its values, so each is unique).
    n: u64,
    load: Arc<Load>,
    proxy: Arc<Link>,
    stop: CancellationToken,
}

/// Runs slot `idx` until `stop`; the panel connected at that moment, if any, is
/// handed back for the checks.
pub(super) async fn slot(
    idx: usize,
    load: Arc<Load>,
    proxy: Arc<Link>,
    stop: CancellationToken,
) -> Option<Kept> {
    let mut s = Slot {
        idx,
        home: idx % load.site.rooms.len().max(1),
        rng: fastrand::Rng::with_seed(load.seed ^ (idx as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        n: 0,
        load,
        proxy,
        stop,
    };
    s.run().await
}

impl Slot {
    fn counters(&self) -> &Counters {
        &self.load.counters
    }

    /// A uniform duration in `range` ms, at most `cap`.
    fn between(&mut self, range: (u64, u64), cap: Duration) -> Duration {
        let cap = cap.as_millis().max(1) as u64;
        let (lo, hi) = (range.0.min(cap), range.1.min(cap));
        Duration::from_millis(self.rng.u64(lo..=hi.max(lo)))
    }

    /// Waits `d`; true when the load stopped first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    fn room(&self, i: usize) -> &str {
        self.load
            .site
            .rooms
            .get(i)
            .map_or("room01", |(r, _)| r.as_str())
    }

    async fn run(&mut self) -> Option<Kept> {
        let tenth = self.load.duration / 10;
        // Panels do not all arrive in the same millisecond.
        let first = self.between((0, 1000), tenth);
        if self.pause(first).await {
            return None;
        }
        loop {
            let panel = match self.open().await {
                Ok(p) => p,
                Err(_) => {
                    bump(&self.counters().connect_failed);
                    let wait = self.between(OFFLINE_MS, tenth);
                    if self.pause(wait).await {
                        return None;
                    }
                    continue;
                }
            };
            bump(&self.counters().connects);
            let life = self.between(LIFE_MS, self.load.duration / 2);
            let end = Instant::now() + life;
            while Instant::now() < end {
                let gap = self.between(ACTION_GAP_MS, life);
                if self.pause(gap).await {
                    return Some(Kept {
                        slot: self.idx,
                        client: panel.client,
                        filters: panel.filters,
                        view: panel.view,
                        tasks: panel.tasks,
                    });
                }
                self.act(&panel).await;
            }
            if self.rng.bool() {
                bump(&self.counters().closed);
                let _ = tokio::time::timeout(ACTION_WAIT, panel.client.close()).await;
                panel.abort();
            } else {
                // Vanishes: the link goes first, so the client cannot say goodbye,
                // and stays down until the slot's next panel.
                bump(&self.counters().vanished);
                self.proxy.set_down(true);
                self.proxy.cut();
                panel.abort();
                drop(panel);
            }
            let wait = self.between(OFFLINE_MS, tenth);
            let stopped = self.pause(wait).await;
            self.proxy.set_down(false);
            if stopped {
                return None;
            }
        }
    }

    /// The filters a new panel subscribes to: always its room, often more.
    fn filters(&mut self) -> Vec<String> {
        let home = self.room(self.home).to_owned();
        let mut f = vec![format!("{home}/#")];
        if self.rng.u32(0..100) < 30 {
            f.push("+/+/online".into());
        }
        if self.rng.u32(0..100) < 25 {
            f.push("hall/#".into());
        }
        if self.rng.u32(0..100) < 20 {
            f.extend(["+/scene".into(), "+/mode".into()]);
        }
        if self.rng.u32(0..100) < 10 {
            let other = self.rng.usize(0..self.load.site.rooms.len().max(1));
            f.push(format!("{}/+/+", self.room(other)));
        }
        if self.rng.u32(0..100) < 10 {
            f.push(format!("$devices/{home}/+"));
        }
        f.sort();
        f.dedup();
        f
    }

    /// Connects a panel and sets up its subscriptions.
    async fn open(&mut self) -> Result<Panel, String> {
        let name = format!("soak-panel-{:03}", self.idx);
        let opts = ClientOptions::tcp(&self.proxy.addr.to_string(), &name).role(Role::Panel);
        let filters = self.filters();
        let join = self.rng.u32(0..100) < 30;
        let hz = (self.rng.u32(0..100) < 40)
            .then(|| TELEMETRY_HZ[self.rng.usize(0..TELEMETRY_HZ.len())]);
        let room = self.room(self.home).to_owned();
        let load = self.load.clone();
        let setup = async move {
            let client = Client::connect(opts).await.map_err(|e| e.to_string())?;
            let mut tasks = vec![tokio::spawn(count_events(
                client.events(),
                client.session(),
                load.clone(),
            ))];
            let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
            let sub = client.subscribe(&refs).await.map_err(|e| e.to_string())?;
            let view = View::new();
            tasks.push(tokio::spawn(read_view(sub, view.clone(), load.clone())));
            if join {
                client.join(&room).await.map_err(|e| e.to_string())?;
            }
            if let Some(hz) = hz {
                let mut tsub = client
                    .telemetry("hall/+/meters", hz)
                    .await
                    .map_err(|e| e.to_string())?;
                bump(&load.counters.tsubs);
                tasks.push(tokio::spawn(async move {
                    while tsub.recv().await.is_some() {
                        bump(&load.counters.telemetry_values);
                    }
                }));
            }
            Ok::<_, String>(Panel {
                client,
                filters,
                view,
                tasks,
            })
        };
        match tokio::time::timeout(OPEN_WAIT, setup).await {
            Ok(r) => r,
            Err(_) => Err("setup timed out".into()),
        }
    }

    /// One random action of a panel.
    async fn act(&mut self, panel: &Panel) {
        let roll = self.rng.u32(0..100);
        if roll < CUT_PCT {
            bump(&self.counters().cuts);
            if self.rng.u32(0..100) < OUTAGE_PCT {
                bump(&self.counters().outages);
                self.proxy.set_down(true);
                self.proxy.cut();
                let outage = self.between(OUTAGE_MS, self.load.duration / 5);
                // The link comes back after the outage (or when the load stops, so
                // that the panel can reconnect for the checks).
                self.pause(outage).await;
                self.proxy.set_down(false);
            } else {
                self.proxy.cut();
            }
            return;
        }
        let work = async {
            match roll {
                r if r < 65 => self.set(panel).await,
                r if r < 85 => self.publish(panel).await,
                r if r < 95 => {
                    let topic = format!("{}/scene", self.room(self.home));
                    let _ = panel.client.get(&topic).await;
                    bump(&self.counters().reads);
                }
                _ => {
                    let _ = panel.client.ping().await;
                    bump(&self.counters().reads);
                }
            }
        };
        if tokio::time::timeout(ACTION_WAIT, work).await.is_err() {
            bump(&self.counters().unanswered);
        }
    }

    /// A command: a switcher of the panel's room (a mute, or a route), or a
    /// console's channel (mute or fader).
    async fn set(&mut self, panel: &Panel) {
        let site = &self.load.site;
        let rng = &mut self.rng;
        let devices = site.rooms.get(self.home).map(|(_, d)| d.as_slice());
        let (topic, value) = match devices {
            Some(devs) if !devs.is_empty() && rng.u32(0..100) < 70 => {
                let dev = &devs[rng.usize(0..devs.len())];
                let out = rng.u32(1..=8);
                match rng.u32(0..4) {
                    0 => (format!("{dev}/out{out:02}_video"), input(rng)),
                    1 => (format!("{dev}/out{out:02}_audio"), input(rng)),
                    2 => (
                        format!("{dev}/out{out:02}_video_mute"),
                        Value::Boolean(rng.bool()),
                    ),
                    _ => (
                        format!("{dev}/out{out:02}_audio_mute"),
                        Value::Boolean(rng.bool()),
                    ),
                }
            }
            _ => {
                let console = &site.consoles[rng.usize(0..site.consoles.len())];
                let ch = rng.u32(1..=32);
                if rng.bool() {
                    (
                        format!("{console}/ch{ch:02}_mute"),
                        Value::Boolean(rng.bool()),
                    )
                } else {
                    let f = (rng.f64() * 1000.0).round() / 1000.0;
                    (format!("{console}/ch{ch:02}_fader"), Value::F64(f))
                }
            }
        };
        let c = &self.load.counters;
        match panel.client.set(&topic, value).await {
            Ok(_) => bump(&c.sets_ok),
            Err(e) => {
                bump(&c.sets_failed);
                let mut errors = c.set_errors.lock().unwrap_or_else(PoisonError::into_inner);
                *errors.entry(e.code.to_string()).or_default() += 1;
            }
        }
    }

    /// A retained publish of a room's `scene` or `mode` (the panel's own room, mostly),
    /// recorded in the ledger.
    async fn publish(&mut self, panel: &Panel) {
        let room = if self.rng.u32(0..100) < 80 {
            self.home
        } else {
            self.rng.usize(0..self.load.site.rooms.len().max(1))
        };
        let leaf = if self.rng.bool() { "scene" } else { "mode" };
        let topic = format!("{}/{leaf}", self.room(room));
        self.n += 1;
        let value = Value::Map(vec![
            (Value::from("slot"), Value::from(self.idx as u64)),
            (Value::from("n"), Value::from(self.n)),
        ]);
        let r = panel.client.publish(&topic, value.clone(), true).await;
        let c = &self.load.counters;
        let mut ledger = self
            .load
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match r {
            Ok(seq) => {
                bump(&c.pubs_acked);
                ledger.acked(&topic, seq, value);
            }
            Err(_) => {
                bump(&c.pubs_failed);
                ledger.unacked(&topic, value);
            }
        }
    }
}

/// A switcher input to route (an enum option id; "0" unties the output).
fn input(rng: &mut fastrand::Rng) -> Value {
    Value::from(rng.u32(0..=8).to_string())
}

/// Counts resumed and new sessions (a connection without resume other than the
/// first, `initial`); ends when the client's driver does.
async fn count_events(
    mut events: tokio::sync::broadcast::Receiver<ConnectionEvent>,
    initial: SessionId,
    load: Arc<Load>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(ConnectionEvent::Connected { resumed: true, .. }) => bump(&load.counters.resumed),
            Ok(ConnectionEvent::Connected { session, .. }) if session != initial => {
                bump(&load.counters.new_sessions)
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

async fn read_view(mut sub: Subscription, view: Arc<View>, load: Arc<Load>) {
    while let Some(ev) = sub.next().await {
        view.apply(ev, &load.counters);
    }
}
