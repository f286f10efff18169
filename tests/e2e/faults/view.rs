//! What a panel shows: the map a panel keeps from its subscription (snapshot, replay
//! and live updates; cleared on a resync), and the path its connection took
//! (disconnects, resumed or not, resyncs), kept by a task that reads both.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use avbus::client::{Client, ConnectionEvent, SubEvent, Subscription};
use avbus::model::Quality;
use avbus::protocol::Seq;
use avbus::value::Value;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};

/// A topic's value and the bus sequence it carried.
pub type State = BTreeMap<String, (Value, u64)>;

/// A panel's view and history.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Topic → value and sequence, as the panel would draw it.
    pub state: State,
    /// Control topics → their quality (ok, pending, stale, offline).
    pub quality: BTreeMap<String, Quality>,
    /// Control topics ever shown `pending`.
    pub ever_pending: Vec<String>,
    /// `SubEvent::Resync` received (the map was rebuilt from a snapshot).
    pub resyncs: u32,
    /// `SubEvent::Synced` received (first snapshot, each replay, each resync).
    pub synced: u32,
    /// Between a `Resync` and the `Synced` ending its snapshot: the map is partial
    /// (a snapshot comes in topic order, not sequence order).
    pub resyncing: bool,
    /// `SubEvent::Gap` received.
    pub gaps: u32,
    /// Updates received in all.
    pub updates: u64,
    /// `resumed` of each reconnection after the first connect.
    pub connects: Vec<bool>,
    /// Disconnections.
    pub disconnects: u32,
    /// Connection events lost because this task lagged (should stay 0).
    pub lagged: u64,
}

/// A panel's view, kept up to date by a background task on the test's runtime.
pub struct Tracked {
    view: Arc<Mutex<View>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracked {
    /// Starts reading `sub` and `client`'s connection events.
    pub fn start(client: &Client, sub: Subscription) -> Tracked {
        let view = Arc::new(Mutex::new(View::default()));
        let (tx, changed) = watch::channel(0u64);
        let events = client.events();
        let task = tokio::spawn(keep(view.clone(), tx, sub, events));
        Tracked {
            view,
            changed,
            task,
        }
    }

    /// The view now.
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().expect("view lock")
    }

    /// Waits (at most `limit`, else the test fails) until `pred` holds.
    pub async fn until(&mut self, what: &str, limit: Duration, pred: impl Fn(&View) -> bool) {
        let wait = async {
            loop {
                if pred(&self.view()) {
                    return;
                }
                if self.changed.changed().await.is_err() {
                    panic!("the panel's subscription ended while waiting for {what}");
                }
            }
        };
        bounded(what, limit, wait).await
    }

    /// Waits until the panel shows `topic` at sequence `seq` (or later), with no
    /// resync snapshot half applied. (Live updates and a resume's replay arrive in
    /// sequence order, so everything before `seq` has arrived too; a snapshot's
    /// records come in topic order, so only its end says that.)
    pub async fn reaches(&mut self, topic: &str, seq: Seq, limit: Duration) {
        let what = format!("the panel to show {topic} at seq {}", seq.0);
        self.until(&what, limit, |v| {
            !v.resyncing && v.state.get(topic).is_some_and(|(_, s)| *s >= seq.0)
        })
        .await
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    view: Arc<Mutex<View>>,
    tx: watch::Sender<u64>,
    mut sub: Subscription,
    mut events: broadcast::Receiver<ConnectionEvent>,
) {
    let mut events_open = true;
    let mut version = 0u64;
    loop {
        tokio::select! {
            ev = sub.next() => {
                let Some(ev) = ev else { return };
                let mut v = view.lock().expect("view lock");
                match ev {
                    SubEvent::Update(u) => {
                        v.updates += 1;
                        match u.quality {
                            Some(q) => {
                                if q == Quality::Pending && !v.ever_pending.contains(&u.topic) {
                                    v.ever_pending.push(u.topic.clone());
                                }
                                v.quality.insert(u.topic.clone(), q);
                            }
                            None => {
                                v.quality.remove(&u.topic);
                            }
                        }
                        if u.value == Value::Nil {
                            v.state.remove(&u.topic);
                        } else {
                            v.state.insert(u.topic, (u.value, u.seq.0));
                        }
                    }
                    SubEvent::Resync => {
                        v.resyncs += 1;
                        v.resyncing = true;
                        v.state.clear();
                        v.quality.clear();
                    }
                    SubEvent::Synced { .. } => {
                        v.synced += 1;
                        v.resyncing = false;
                    }
                    SubEvent::Gap { .. } => v.gaps += 1,
                }
            }
            ev = events.recv(), if events_open => {
                let mut v = view.lock().expect("view lock");
                match ev {
                    Ok(ConnectionEvent::Connected { resumed, .. }) => v.connects.push(resumed),
                    Ok(ConnectionEvent::Disconnected { .. }) => v.disconnects += 1,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => v.lagged += n,
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                }
            }
        }
        version += 1;
        let _ = tx.send(version);
    }
}

/// Awaits `fut`, failing the test if it takes longer than `limit` (the fault tests'
/// waits include detection and backoff times longer than `common::LIMIT`).
pub async fn bounded<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Reads a subscription's snapshot into a map (what a fresh, unfaulted client sees).
pub async fn snapshot_of(sub: &mut Subscription) -> State {
    let mut state = State::new();
    loop {
        match sub
            .next()
            .await
            .expect("the checker's subscription is open")
        {
            SubEvent::Update(u) => {
                state.insert(u.topic, (u.value, u.seq.0));
            }
            SubEvent::Synced { .. } => return state,
            other => panic!("unexpected {other:?} in a fresh snapshot"),
        }
    }
}

/// Where two views differ, for a failure message (at most a few lines).
pub fn differences(panel: &State, bus: &State) -> String {
    let mut out = Vec::new();
    for (topic, want) in bus {
        match panel.get(topic) {
            None => out.push(format!("{topic}: missing on the panel (bus: {want:?})")),
            Some(got) if got != want => out.push(format!("{topic}: panel {got:?}, bus {want:?}")),
            Some(_) => {}
        }
    }
    for topic in panel.keys().filter(|t| !bus.contains_key(*t)) {
        out.push(format!("{topic}: on the panel only"));
    }
    let n = out.len();
    out.truncate(8);
    format!("{n} differences: {}", out.join("; "))
}
