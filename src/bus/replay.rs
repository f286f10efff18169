//! The replay log: the most recent updates, so a reconnecting client can be sent
//! exactly what it missed.
//!
//! Bounded by entry count and by bytes (`limits.replay_entries`,
//! `limits.replay_bytes`); the oldest entries are dropped first. Frames are shared
//! with the fan-out, so an entry costs its `Bytes` handle, its topic handle and, for
//! the byte bound, the frame's length.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::Seq;

struct Entry {
    seq: Seq,
    topic: Arc<str>,
    frame: Bytes,
}

/// The bounded log of recent updates, in sequence order.
pub struct ReplayLog {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl ReplayLog {
    pub fn new(max_entries: usize, max_bytes: usize) -> ReplayLog {
        ReplayLog {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Appends an update (sequence numbers must increase).
    pub fn push(&mut self, seq: Seq, topic: Arc<str>, frame: Bytes) {
        self.bytes += frame.len();
        self.entries.push_back(Entry { seq, topic, frame });
        while self.entries.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.frame.len();
            }
        }
    }

    /// Whether every update after `last_seq` up to `current` is still here.
    pub fn covers(&self, last_seq: Seq, current: Seq) -> bool {
        if last_seq > current {
            return false;
        }
        if last_seq == current {
            return true;
        }
        self.entries
            .front()
            .is_some_and(|e| e.seq.0 <= last_seq.0 + 1)
    }

    /// The frames after `last_seq` whose topic passes `wanted`, in order.
    pub fn since(&self, last_seq: Seq, mut wanted: impl FnMut(&str) -> bool) -> Vec<Bytes> {
        let start = self.entries.partition_point(|e| e.seq <= last_seq);
        self.entries
            .range(start..)
            .filter(|e| wanted(&e.topic))
            .map(|e| e.frame.clone())
            .collect()
    }

    /// Entries held.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_covering() {
        let mut log = ReplayLog::new(3, 1 << 20);
        for i in 1..=5u64 {
            log.push(
                Seq(i),
                if i % 2 == 0 {
                    "even".into()
                } else {
                    "odd".into()
                },
                Bytes::from(vec![i as u8]),
            );
        }
        assert_eq!(log.entries(), 3);
        assert!(log.covers(Seq(2), Seq(5)));
        assert!(!log.covers(Seq(1), Seq(5)));
        assert!(log.covers(Seq(5), Seq(5)));
        assert!(!log.covers(Seq(6), Seq(5)));
        assert_eq!(
            log.since(Seq(2), |t| t == "odd"),
            vec![Bytes::from(vec![3u8]), Bytes::from(vec![5u8])]
        );
        let mut small = ReplayLog::new(100, 2);
        small.push(Seq(1), "a".into(), Bytes::from_static(b"xx"));
        small.push(Seq(2), "a".into(), Bytes::from_static(b"yy"));
        assert_eq!(small.entries(), 1);
        assert_eq!(small.bytes(), 2);
    }
}
