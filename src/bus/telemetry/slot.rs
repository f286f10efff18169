//! A WebSocket client's telemetry: the datagrams the hub made for it, waiting for
//! the gateway (bounded, newest wins).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// Datagrams waiting for one WebSocket client; when full the oldest is dropped
/// (a newer one carries newer values) and counted.
pub const SLOT_DATAGRAMS: usize = 64;

/// Where the hub puts a WebSocket client's telemetry datagrams (the same bytes as
/// UDP), for the gateway to send after any waiting control frame. Bounded: newest
/// wins.
#[derive(Default)]
pub struct TelemetrySlot {
    queue: std::sync::Mutex<std::collections::VecDeque<Bytes>>,
    notify: tokio::sync::Notify,
    /// Datagrams dropped because the client had not taken the older ones.
    pub dropped: AtomicU64,
}

impl TelemetrySlot {
    pub(super) fn push(&self, d: Bytes) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= SLOT_DATAGRAMS {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(d);
        drop(q);
        self.notify.notify_one();
    }

    /// Moves every waiting datagram into `out`.
    pub fn take(&self, out: &mut Vec<Bytes>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(q.drain(..));
    }

    /// Resolves once something was pushed since the last call.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}
