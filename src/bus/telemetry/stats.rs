//! The hub's counters, published under `$sys/telemetry/`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::DatagramError;

/// Counters, read by the router for `$sys/telemetry/...`.
#[derive(Default, Debug)]
pub struct Stats {
    pub datagrams_in: AtomicU64,
    pub values_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub send_dropped: AtomicU64,
    pub ingest_dropped: AtomicU64,
    pub drop_truncated: AtomicU64,
    pub drop_oversized: AtomicU64,
    pub drop_bad_magic: AtomicU64,
    pub drop_bad_version: AtomicU64,
    pub drop_bad_type: AtomicU64,
    pub drop_bad_record: AtomicU64,
    pub drop_unknown_token: AtomicU64,
    pub drop_wrong_source: AtomicU64,
    pub drop_not_owner: AtomicU64,
    pub drop_unknown_alias: AtomicU64,
    pub streams: AtomicU64,
    pub subscriptions: AtomicU64,
    pub recv_buffer: AtomicU64,
    pub send_buffer: AtomicU64,
}

impl Stats {
    /// `(name, value)` pairs, as published under `$sys/telemetry/`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("datagrams_in", g(&self.datagrams_in)),
            ("values_in", g(&self.values_in)),
            ("datagrams_out", g(&self.datagrams_out)),
            ("send_dropped", g(&self.send_dropped)),
            ("ingest_dropped", g(&self.ingest_dropped)),
            ("dropped/truncated", g(&self.drop_truncated)),
            ("dropped/oversized", g(&self.drop_oversized)),
            ("dropped/bad_magic", g(&self.drop_bad_magic)),
            ("dropped/bad_version", g(&self.drop_bad_version)),
            ("dropped/bad_type", g(&self.drop_bad_type)),
            ("dropped/bad_record", g(&self.drop_bad_record)),
            ("dropped/unknown_token", g(&self.drop_unknown_token)),
            ("dropped/wrong_source", g(&self.drop_wrong_source)),
            ("dropped/not_owner", g(&self.drop_not_owner)),
            ("dropped/unknown_alias", g(&self.drop_unknown_alias)),
            ("streams", g(&self.streams)),
            ("subscriptions", g(&self.subscriptions)),
            ("udp_recv_buffer", g(&self.recv_buffer)),
            ("udp_send_buffer", g(&self.send_buffer)),
        ]
    }

    pub(super) fn count_error(&self, e: DatagramError) {
        let c = match e {
            DatagramError::Truncated => &self.drop_truncated,
            DatagramError::Oversized => &self.drop_oversized,
            DatagramError::BadMagic => &self.drop_bad_magic,
            DatagramError::BadVersion => &self.drop_bad_version,
            DatagramError::BadType => &self.drop_bad_type,
            DatagramError::BadRecord => &self.drop_bad_record,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
