//! The soak's view of the bus from outside: `$sys/#` and `$clients/+` read over the
//! protocol by one client of its own (as an operator would, `operations.md`), and
//! memory and descriptors from `/proc/<pid>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::procs::{dir_bytes, fd_count, rss_kib};
use super::report::{Sample, SYS_COUNTERS};
use crate::client::{Client, ClientOptions, SubEvent};
use crate::protocol::{Role, SessionId};
use crate::value::Value;

/// Longest the observer's first snapshot may take.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(20);

/// The bus's own topics (`$sys/#`, `$clients/+`) at one moment.
#[derive(Debug, Clone, Default)]
pub(super) struct SysMap(HashMap<String, Value>);

/// Totals over the per-session queue records.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Queues {
    pub sessions: u64,
    pub frames: u64,
    pub max_frames: u64,
    pub max_peak_frames: u64,
}

impl SysMap {
    /// `$sys/<name>` as an integer (0 when absent).
    pub fn sys(&self, name: &str) -> u64 {
        self.0
            .get(&format!("$sys/{name}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// Whether `topic` is held.
    pub fn has(&self, topic: &str) -> bool {
        self.0.contains_key(topic)
    }

    /// How many of the topics held start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.0.keys().filter(|k| k.starts_with(prefix)).count()
    }

    /// Totals over `$sys/queues/<session>`, leaving out the sessions in `skip`.
    pub fn queues(&self, skip: &[SessionId]) -> Queues {
        let mut q = Queues::default();
        for (topic, v) in &self.0 {
            let Some(sid) = topic.strip_prefix("$sys/queues/") else {
                continue;
            };
            if skip.iter().any(|s| s.to_string() == sid) {
                continue;
            }
            let field = |k: &str| crate::value::get(v, k).and_then(Value::as_u64).unwrap_or(0);
            q.sessions += 1;
            q.frames += field("frames");
            q.max_frames = q.max_frames.max(field("frames"));
            q.max_peak_frames = q.max_peak_frames.max(field("peak_frames"));
        }
        q
    }

    fn apply(&mut self, ev: SubEvent) {
        match ev {
            SubEvent::Update(u) if u.value.is_nil() => {
                self.0.remove(&u.topic);
            }
            SubEvent::Update(u) => {
                self.0.insert(u.topic, u.value);
            }
            SubEvent::Resync => self.0.clear(),
            SubEvent::Synced { .. } | SubEvent::Gap { .. } => {}
        }
    }
}

/// The filters of the bus's own topics.
const FILTERS: [&str; 2] = ["$sys/#", "$clients/+"];

/// One client subscribed to the bus's own topics. Its live copy tells when to look
/// again; what is reported comes from a fresh snapshot, which the bus's router takes
/// in one step: the bus refreshes `$sys` topics one by one, so a live copy can hold
/// half of a refresh.
pub(super) struct Observer {
    pub client: Client,
    live: Arc<Mutex<SysMap>>,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observer {
    /// Connects to `addr` and waits for the snapshot of the bus's own topics.
    ///
    /// # Errors
    /// The connection or subscription fails, or the snapshot does not come.
    pub async fn start(addr: &str) -> Result<Observer, String> {
        let opts = ClientOptions::tcp(addr, "soak-observer").role(Role::Tool);
        let client = Client::connect(opts).await.map_err(|e| e.to_string())?;
        let mut sub = client
            .subscribe(&FILTERS)
            .await
            .map_err(|e| e.to_string())?;
        let live = Arc::new(Mutex::new(SysMap::default()));
        let (tx, changed) = watch::channel(0u64);
        let (synced_tx, synced) = tokio::sync::oneshot::channel();
        let mut synced_tx = Some(synced_tx);
        let l = live.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = sub.next().await {
                if matches!(ev, SubEvent::Synced { .. }) {
                    if let Some(tx) = synced_tx.take() {
                        let _ = tx.send(());
                    }
                }
                l.lock().unwrap_or_else(PoisonError::into_inner).apply(ev);
                tx.send_modify(|n| *n += 1);
            }
        });
        let obs = Observer {
            client,
            live,
            changed,
            task,
        };
        match tokio::time::timeout(SNAPSHOT_WAIT, synced).await {
            Ok(Ok(())) => Ok(obs),
            _ => Err("no snapshot of $sys/# in time".into()),
        }
    }

    /// The observer's own session (left out of queue checks: its queue carries the
    /// very `$sys` updates it reads).
    pub fn session(&self) -> SessionId {
        self.client.session()
    }

    /// The bus's own topics now, from a fresh subscription's snapshot.
    ///
    /// # Errors
    /// The subscription fails or its snapshot does not come in time.
    pub async fn snapshot(&self) -> Result<SysMap, String> {
        let read = async {
            let mut sub = self
                .client
                .subscribe(&FILTERS)
                .await
                .map_err(|e| e.to_string())?;
            let mut map = SysMap::default();
            while let Some(ev) = sub.next().await {
                if matches!(ev, SubEvent::Synced { .. }) {
                    return Ok(map);
                }
                map.apply(ev);
            }
            Err("the observer's subscription ended".to_owned())
        };
        tokio::time::timeout(SNAPSHOT_WAIT, read)
            .await
            .map_err(|_| "no snapshot of $sys/# in time".to_owned())?
    }

    /// Waits until `pred` holds of a snapshot, at most `limit`: re-checked at every
    /// change of the live copy, confirmed on a snapshot. Whether it held, and the
    /// last snapshot taken (or the live copy, when none could be).
    pub async fn wait_for(
        &self,
        limit: Duration,
        pred: impl Fn(&SysMap) -> bool,
    ) -> (bool, SysMap) {
        let deadline = Instant::now() + limit;
        let mut changed = self.changed.clone();
        loop {
            // Judged under the lock: under load the live copy changes hundreds of
            // times a second, and is copied only when it cannot be snapshotted.
            let held = pred(&self.live.lock().unwrap_or_else(PoisonError::into_inner));
            let timed_out = Instant::now() >= deadline;
            if held || timed_out {
                let snap = match self.snapshot().await {
                    Ok(s) => s,
                    Err(_) => self.live_copy(),
                };
                if pred(&snap) || timed_out {
                    return (pred(&snap), snap);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, changed.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                // The live copy's reader ended: only snapshots are left.
                let snap = self.snapshot().await.unwrap_or_default();
                return (pred(&snap), snap);
            }
        }
    }

    fn live_copy(&self) -> SysMap {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A sample of the bus (process `pid`) from `map`.
    pub fn sample(map: &SysMap, pid: u32, t_s: f64, journal: Option<&std::path::Path>) -> Sample {
        let q = map.queues(&[]);
        Sample {
            label: String::new(),
            t_s,
            rss_kib: rss_kib(pid).unwrap_or(0),
            fds: fd_count(pid).unwrap_or(0),
            sys: SYS_COUNTERS.iter().map(|n| (*n, map.sys(n))).collect(),
            queued_frames: q.frames,
            max_queued_frames: q.max_frames,
            max_peak_frames: q.max_peak_frames,
            journal_bytes: journal.and_then(dir_bytes),
            load: Default::default(),
        }
    }
}
