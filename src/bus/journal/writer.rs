//! The journal's writer thread: writes the router's batches, syncs them per policy,
//! and compacts the file when most of it is overwritten records.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::record::HEADER;
use super::{Pending, Shared, FILE};
use crate::config::{FsyncPolicy, PersistConfig};

pub(super) struct Writer {
    shared: Arc<Shared>,
    policy: FsyncPolicy,
    interval: Duration,
    compact_min: u64,
    dir: PathBuf,
    file: File,
    file_len: u64,
    /// The live record of every topic, for compaction.
    mirror: HashMap<Arc<str>, Bytes>,
    live_bytes: u64,
    /// Held for the writer's life: the directory's lock.
    _lock: File,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        cfg: &PersistConfig,
        dir: PathBuf,
        (file, file_len): (File, u64),
        mirror: HashMap<Arc<str>, Bytes>,
        lock: File,
    ) -> Writer {
        let live_bytes = mirror.values().map(|r| r.len() as u64).sum();
        let w = Writer {
            shared,
            policy: cfg.fsync,
            interval: Duration::from_millis(cfg.fsync_interval_ms),
            compact_min: cfg.compact_min_bytes,
            dir,
            file,
            file_len,
            mirror,
            live_bytes,
            _lock: lock,
        };
        w.publish_sizes();
        w
    }

    fn run(mut self) {
        let mut bytes = BytesMut::new();
        let mut recs: Vec<Pending> = Vec::new();
        // Written but not yet synced: (last lsn written, when the first unsynced
        // record was written).
        let mut unsynced: Option<(u64, Instant)> = None;
        loop {
            let (lsn, closing) = {
                let mut q = self.shared.queue.lock().expect("journal queue poisoned");
                loop {
                    if !q.recs.is_empty() || q.closing {
                        break;
                    }
                    match unsynced {
                        // `interval`: sleep until the oldest unsynced record is due.
                        Some((_, since)) if self.policy == FsyncPolicy::Interval => {
                            let due = since + self.interval;
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            q = self
                                .shared
                                .wake
                                .wait_timeout(q, due - now)
                                .expect("journal queue poisoned")
                                .0;
                        }
                        _ => q = self.shared.wake.wait(q).expect("journal queue poisoned"),
                    }
                }
                std::mem::swap(&mut q.bytes, &mut bytes);
                std::mem::swap(&mut q.recs, &mut recs);
                (q.lsn, q.closing)
            };
            if !self.shared.failed.load(Ordering::Acquire) && !recs.is_empty() {
                match self.write(&bytes, &recs) {
                    Ok(()) => {
                        unsynced = Some((lsn, unsynced.map_or_else(Instant::now, |u| u.1)));
                    }
                    Err(e) => self.fail(format!("write: {e}")),
                }
            }
            self.shared
                .stats
                .pending_bytes
                .fetch_sub(bytes.len() as u64, Ordering::Relaxed);
            bytes.clear();
            recs.clear();
            if let Some((written, since)) = unsynced {
                let due = match self.policy {
                    FsyncPolicy::Always => true,
                    FsyncPolicy::Interval => since.elapsed() >= self.interval,
                    FsyncPolicy::Never => false,
                };
                if due || closing {
                    match self.sync() {
                        Ok(()) => {
                            unsynced = None;
                            self.shared.durable.store(written, Ordering::Release);
                            self.shared.notify.notify_one();
                        }
                        Err(e) => self.fail(format!("fsync: {e}")),
                    }
                }
            }
            if self.should_compact() && !self.shared.failed.load(Ordering::Acquire) {
                match self.compact() {
                    // The new file is synced whole: everything written is on disk.
                    Ok(()) => {
                        if let Some((written, _)) = unsynced.take() {
                            self.shared.durable.store(written, Ordering::Release);
                            self.shared.notify.notify_one();
                        }
                    }
                    Err(e) => self.fail(format!("compaction: {e}")),
                }
            }
            if closing {
                return;
            }
        }
    }

    /// Appends a batch and updates the mirror.
    fn write(&mut self, bytes: &[u8], recs: &[Pending]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.file_len += bytes.len() as u64;
        let mut at = 0;
        for r in recs {
            let raw = &bytes[at..at + r.len];
            at += r.len;
            let old = if r.tombstone {
                self.mirror.remove(&r.topic)
            } else {
                self.live_bytes += raw.len() as u64;
                self.mirror
                    .insert(r.topic.clone(), Bytes::copy_from_slice(raw))
            };
            if let Some(old) = old {
                self.live_bytes -= old.len() as u64;
            }
        }
        let s = &self.shared.stats;
        s.records.fetch_add(recs.len() as u64, Ordering::Relaxed);
        s.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.publish_sizes();
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let t = Instant::now();
        self.file.sync_data()?;
        let s = &self.shared.stats;
        s.fsyncs.fetch_add(1, Ordering::Relaxed);
        s.last_fsync_us
            .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn should_compact(&self) -> bool {
        let live = HEADER.len() as u64 + self.live_bytes;
        self.file_len > self.compact_min && self.file_len > 2 * live
    }

    /// Rewrites the journal with only live records: a new file, synced, renamed over
    /// the old one, and the directory synced, so a crash at any point leaves either
    /// the old journal or the new one whole.
    fn compact(&mut self) -> io::Result<()> {
        let path = self.dir.join(FILE);
        let (file, len) = create(&self.dir, &path, self.mirror.values())?;
        drop(file);
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.file_len = len;
        self.shared
            .stats
            .compactions
            .fetch_add(1, Ordering::Relaxed);
        self.publish_sizes();
        tracing::debug!(bytes = len, topics = self.mirror.len(), "journal compacted");
        Ok(())
    }

    fn fail(&mut self, why: String) {
        tracing::error!(
            dir = %self.dir.display(),
            "journal {why}: retained publishes are refused until the bus restarts"
        );
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .shared
            .failure
            .lock()
            .expect("journal failure poisoned") = Some(why);
        self.shared.failed.store(true, Ordering::Release);
        self.shared.notify.notify_one();
    }

    fn publish_sizes(&self) {
        let s = &self.shared.stats;
        s.live_topics
            .store(self.mirror.len() as u64, Ordering::Relaxed);
        s.file_bytes.store(self.file_len, Ordering::Relaxed);
    }
}

/// Starts the writer thread.
pub(super) fn spawn(w: Writer) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("avbus-journal".into())
        .spawn(move || w.run())
}

/// Writes a journal holding `records` to `path` through a temporary file, synced and
/// renamed into place, then syncs the directory. Returns the file and its length.
pub(super) fn create<'a>(
    dir: &Path,
    path: &Path,
    records: impl Iterator<Item = &'a Bytes>,
) -> io::Result<(File, u64)> {
    let tmp = path.with_extension("tmp");
    let mut out = BufWriter::new(File::create(&tmp)?);
    out.write_all(HEADER)?;
    let mut len = HEADER.len() as u64;
    for r in records {
        out.write_all(r)?;
        len += r.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok((file, len))
}
