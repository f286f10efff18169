//! The retained-state journal: topics that no device re-asserts (values set by panels
//! and scripts: scenes, modes, settings) survive a restart.
//!
//! ```text
//!  router ── append (encode into its own buffer, no lock, no syscall)
//!    │  end of batch: one lock, hand the batch over, wake the writer
//!    ▼
//!  writer thread ── write(2) the batch ── fsync per policy ── durable := lsn ──┐
//!    │ mirror of live records (for compaction)                                │
//!    └─ file > compact_min and > 2 × live: rewrite live records, rename       │
//!  router <── Notify ─────────── releases the acknowledgements held for fsync ┘
//! ```
//!
//! The router never waits for the disk: with `fsync = "always"` it publishes at once
//! and holds only the publisher's `puback` until the record is on disk, so an
//! acknowledged retained publish is never lost. Records waiting for the writer are
//! bounded by `persist.max_pending_bytes`; past it a retained publish is refused
//! (`busy`). A failed write makes the journal refuse further retained publishes
//! (`unavailable`) until the bus is restarted; live traffic goes on.
//!
//! Which topics: retained publishes by clients outside declared devices. Device
//! control state is the adapter's to re-assert (after a restart it reconnects and
//! publishes what the device says), and `$` topics are the bus's own.

mod record;
mod writer;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

pub use record::{Entry, TailError};

use crate::config::{FsyncPolicy, PersistConfig};
use crate::model::Quality;
use crate::value::Value;

/// The journal file inside `persist.dir`.
pub const FILE: &str = "retained.journal";
/// Held (with `flock`) while a bus uses the directory.
const LOCK: &str = "LOCK";

/// Counters published under `$sys/persist/`.
#[derive(Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub fsyncs: AtomicU64,
    pub last_fsync_us: AtomicU64,
    pub compactions: AtomicU64,
    pub errors: AtomicU64,
    pub live_topics: AtomicU64,
    pub file_bytes: AtomicU64,
    pub pending_bytes: AtomicU64,
}

/// State shared by the router's handle and the writer thread.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The last record known to be on disk (under `fsync = "always"` or after a
    /// sync), by log sequence number.
    durable: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Wakes the router when `durable` moves or the journal fails.
    notify: Arc<tokio::sync::Notify>,
    stats: JournalStats,
}

/// Records handed to the writer and not yet written.
#[derive(Default)]
struct Queue {
    bytes: BytesMut,
    recs: Vec<Pending>,
    lsn: u64,
    closing: bool,
}

/// One record in a batch: its topic, whether it deletes it, its size in the batch.
struct Pending {
    topic: Arc<str>,
    tombstone: bool,
    len: usize,
}

/// Why the journal refused a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("the journal is {0} bytes behind the disk; try again")]
    Behind(u64),
    #[error("the journal failed ({0}); retained publishes are refused until a restart")]
    Failed(String),
}

/// What was found on disk at start.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Records read (including overwritten and deleted ones).
    pub records: usize,
    /// Live topics restored.
    pub topics: usize,
    /// Bytes of good records.
    pub bytes: u64,
    /// A corrupt or torn tail: why reading stopped, the bytes dropped and where they
    /// were saved.
    pub tail: Option<(TailError, u64, PathBuf)>,
    pub elapsed: Duration,
}

/// The router's handle on the journal.
pub struct Journal {
    shared: Arc<Shared>,
    /// Records appended since the last hand-over (reused).
    enc: BytesMut,
    batch: Vec<Pending>,
    lsn: u64,
    policy: FsyncPolicy,
    max_pending: u64,
    thread: Option<JoinHandle<()>>,
}

impl Journal {
    /// Opens (or creates) the journal in `cfg.dir`, reads it back and starts its
    /// writer. Returns the live topics to restore, oldest first.
    ///
    /// # Errors
    /// The directory cannot be created or locked (another bus uses it), the file is
    /// not a journal, or reading it fails. A corrupt or torn tail is not an error: it
    /// is saved beside the journal, cut off and reported in [`Recovery`].
    pub fn open(
        cfg: &PersistConfig,
        dir: &Path,
        max_record: usize,
    ) -> io::Result<(Journal, Vec<Entry>, Recovery)> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)
            .map_err(|e| annotate(e, format!("cannot create {}", dir.display())))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another bus", dir.display()),
            )
        })?;
        let path = dir.join(FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                writer::create(dir, &path, std::iter::empty())?;
                record::HEADER.to_vec()
            }
            Err(e) => return Err(annotate(e, format!("cannot read {}", path.display()))),
        };
        if data.len() < record::HEADER.len() || &data[..record::HEADER.len()] != record::HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not an avbus journal (or of another version)",
                    path.display()
                ),
            ));
        }
        let body = &data[record::HEADER.len()..];
        let (entries, good, tail) = record::scan(body, max_record);
        let records = entries.len();
        let tail = match tail {
            None => None,
            Some(why) => Some(cut_tail(&path, &data, record::HEADER.len() + good, why)?),
        };
        // The last record of a topic wins; a tombstone removes it.
        let mut live: HashMap<String, (Entry, Bytes)> = HashMap::new();
        for (e, raw) in entries {
            if e.is_tombstone() {
                live.remove(&e.topic);
            } else {
                live.insert(e.topic.clone(), (e, Bytes::copy_from_slice(raw)));
            }
        }
        let mut mirror = HashMap::with_capacity(live.len());
        let mut restored = Vec::with_capacity(live.len());
        for (topic, (e, raw)) in live {
            mirror.insert(Arc::<str>::from(topic), raw);
            restored.push(e);
        }
        restored.sort_by_key(|e| e.time);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            durable: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            notify: Arc::new(tokio::sync::Notify::new()),
            stats: JournalStats::default(),
        });
        let file_len = (record::HEADER.len() + good) as u64;
        let file = OpenOptions::new().append(true).open(&path)?;
        let thread = writer::spawn(writer::Writer::new(
            shared.clone(),
            cfg,
            dir.to_owned(),
            (file, file_len),
            mirror,
            lock,
        ))?;
        let recovery = Recovery {
            records,
            topics: restored.len(),
            bytes: good as u64,
            tail,
            elapsed: started.elapsed(),
        };
        let journal = Journal {
            shared,
            enc: BytesMut::with_capacity(64 * 1024),
            batch: Vec::new(),
            lsn: 0,
            policy: cfg.fsync,
            max_pending: cfg.max_pending_bytes as u64,
            thread: Some(thread),
        };
        Ok((journal, restored, recovery))
    }

    /// Appends a record (a tombstone when `value` is nil and `quality` none) to this
    /// batch; returns its log sequence number. Nothing is written until [`flush`].
    ///
    /// [`flush`]: Journal::flush
    pub fn append(
        &mut self,
        topic: &Arc<str>,
        value: &Value,
        time: u64,
        quality: Option<Quality>,
    ) -> Result<u64, JournalError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(JournalError::Failed(self.failure()));
        }
        let behind =
            self.shared.stats.pending_bytes.load(Ordering::Relaxed) + self.enc.len() as u64;
        if behind >= self.max_pending {
            return Err(JournalError::Behind(behind));
        }
        let before = self.enc.len();
        record::put(&mut self.enc, topic, value, time, quality);
        self.batch.push(Pending {
            topic: topic.clone(),
            tombstone: value.is_nil() && quality.is_none(),
            len: self.enc.len() - before,
        });
        self.lsn += 1;
        Ok(self.lsn)
    }

    /// Hands this batch's records to the writer (one lock, one wake-up).
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.enc.len() as u64;
        self.shared
            .stats
            .pending_bytes
            .fetch_add(n, Ordering::Relaxed);
        {
            let mut q = self.shared.queue.lock().expect("journal queue poisoned");
            if q.bytes.is_empty() {
                std::mem::swap(&mut q.bytes, &mut self.enc);
            } else {
                q.bytes.extend_from_slice(&self.enc);
            }
            q.recs.append(&mut self.batch);
            q.lsn = self.lsn;
        }
        self.enc.clear();
        self.shared.wake.notify_one();
    }

    /// Whether acknowledgements wait for the disk (`fsync = "always"`).
    pub fn acks_wait(&self) -> bool {
        self.policy == FsyncPolicy::Always
    }

    /// The last record on disk.
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Why the journal failed, if it did.
    pub fn failed(&self) -> Option<String> {
        self.shared
            .failed
            .load(Ordering::Acquire)
            .then(|| self.failure())
    }

    fn failure(&self) -> String {
        self.shared
            .failure
            .lock()
            .expect("journal failure poisoned")
            .clone()
            .unwrap_or_default()
    }

    /// Wakes when [`durable`](Journal::durable) moves or the journal fails.
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.shared.notify.clone()
    }

    /// The journal's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    /// Writes and syncs everything appended, stops the writer and returns the last
    /// durable record. Blocks for at most one write and one `fsync`.
    pub fn close(&mut self) -> u64 {
        self.flush();
        self.shared
            .queue
            .lock()
            .expect("journal queue poisoned")
            .closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.durable()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.close();
        }
    }
}

/// Saves the bad tail beside the journal, then cuts it off.
fn cut_tail(
    path: &Path,
    data: &[u8],
    good: usize,
    why: TailError,
) -> io::Result<(TailError, u64, PathBuf)> {
    let saved = path.with_extension(format!("corrupt-{}", crate::protocol::now_ms()));
    let mut f = File::create(&saved)?;
    f.write_all(&data[good..])?;
    f.sync_all()?;
    let journal = OpenOptions::new().write(true).open(path)?;
    journal.set_len(good as u64)?;
    journal.sync_all()?;
    let dropped = (data.len() - good) as u64;
    tracing::warn!(
        journal = %path.display(),
        reason = %why,
        offset = good,
        dropped_bytes = dropped,
        saved = %saved.display(),
        "journal tail is corrupt or torn: starting from the last good record"
    );
    Ok((why, dropped, saved))
}

fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
