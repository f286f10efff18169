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

/// One client subscribed to the bus's own topics, keeping their latest values.
pub(super) struct Observer {
    pub client: Client,
    values: Arc<Mutex<HashMap<String, Value>>>,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Totals over the per-session queue records.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Queues {
    pub sessions: u64,
    pub frames: u64,
    pub max_frames: u64,
    pub max_peak_frames: u64,
}

impl Observer {
    /// Connects to `addr` and waits for the snapshot of `$sys/#` and `$clients/+`.
    ///
    /// # Errors
    /// The connection or subscription fails, or the snapshot does not come.
    pub async fn start(addr: &str) -> Result<Observer, String> {
        let opts = ClientOptions::tcp(addr, "soak-observer").role(Role::Tool);
        let client = Client::connect(opts).await.map_err(|e| e.to_string())?;
        let mut sub = client
            .subscribe(&["$sys/#", "$clients/+"])
            .await
            .map_err(|e| e.to_string())?;
        let values = Arc::new(Mutex::new(HashMap::new()));
        let (tx, changed) = watch::channel(0u64);
        let v = values.clone();
        let (synced_tx, synced) = tokio::sync::oneshot::channel();
        let mut synced_tx = Some(synced_tx);
        let task = tokio::spawn(async move {
            while let Some(ev) = sub.next().await {
                match ev {
                    SubEvent::Update(u) => {
                        let mut map = v.lock().unwrap_or_else(PoisonError::into_inner);
                        if u.value.is_nil() {
                            map.remove(&u.topic);
                        } else {
                            map.insert(u.topic, u.value);
                        }
                    }
                    SubEvent::Resync => v.lock().unwrap_or_else(PoisonError::into_inner).clear(),
                    SubEvent::Synced { .. } => {
                        if let Some(tx) = synced_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    SubEvent::Gap { .. } => {}
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        let obs = Observer {
            client,
            values,
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

    /// `$sys/<name>` as an integer (0 when absent).
    pub fn sys(&self, name: &str) -> u64 {
        let map = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&format!("$sys/{name}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// How many of the topics held start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        let map = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        map.keys().filter(|k| k.starts_with(prefix)).count()
    }

    /// Totals over `$sys/queues/<session>`, leaving out the sessions in `skip`.
    pub fn queues(&self, skip: &[SessionId]) -> Queues {
        let map = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let mut q = Queues::default();
        for (topic, v) in map.iter() {
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

    /// Waits until `pred` holds (re-checked at every change of the values), at most
    /// `limit`; whether it held.
    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&Observer) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut changed = self.changed.clone();
        loop {
            if pred(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, changed.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the observer's reader ended.
                _ => return pred(self),
            }
        }
    }

    /// A sample of the bus (process `pid`) now.
    pub fn sample(&self, pid: u32, t_s: f64, journal: Option<&std::path::Path>) -> Sample {
        let q = self.queues(&[]);
        Sample {
            label: String::new(),
            t_s,
            rss_kib: rss_kib(pid).unwrap_or(0),
            fds: fd_count(pid).unwrap_or(0),
            sys: SYS_COUNTERS.iter().map(|n| (*n, self.sys(n))).collect(),
            queued_frames: q.frames,
            max_queued_frames: q.max_frames,
            max_peak_frames: q.max_peak_frames,
            journal_bytes: journal.and_then(dir_bytes),
            load: Default::default(),
        }
    }
}
