//! Fire-and-forget frames on their way to the driver, without a queue entry each.
//!
//! A `publish_nowait` encodes its `pub` frame itself, straight into a buffer the
//! driver writes in its next write (many frames in one `send`); the driver is woken
//! once when the buffer goes from empty to not. No message value is built, moved
//! through the request queue and encoded again. Other messages without an answer
//! (a command's reply, a room message) take the same path.
//!
//! Order on the wire is the order of the calls: the driver writes the buffer before
//! its own, and a handle appends only while no request it handed the driver through
//! the request queue is still unwritten (`queued`); until then, publishes follow that
//! request through the queue. While disconnected, publishes go to the queue too (the
//! driver parks them for the next connection); frames already in the buffer stay there
//! and are written first on the next connection.

use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::sync::Notify;

/// Bytes of frames the buffer may hold; past it, publishes go through the bounded
/// request queue, which makes the caller wait.
const PENDING_MAX: usize = 256 * 1024;

/// The frames handles have encoded for the driver.
#[derive(Default)]
pub(crate) struct Outgoing {
    state: Mutex<State>,
    /// Wakes the driver when frames arrive in an empty buffer.
    pub(crate) wake: Notify,
}

#[derive(Default)]
struct State {
    connected: bool,
    /// Requests handed to the driver and not yet written (or parked) by it.
    queued: usize,
    /// Encoded frames, in call order.
    pending: BytesMut,
}

impl Outgoing {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is on its way to the driver: publishes follow it through the queue
    /// until it is written.
    pub(crate) fn queued(&self) {
        self.lock().queued += 1;
    }

    /// `n` requests were taken by the driver and written (or parked), or never
    /// reached it.
    pub(crate) fn taken(&self, n: usize) {
        let mut s = self.lock();
        s.queued = s.queued.saturating_sub(n);
    }

    /// Appends the frame `encode` writes, for the driver's next write. False when the
    /// caller must hand it to the driver through the request queue instead.
    pub(crate) fn push(&self, encode: impl FnOnce(&mut BytesMut)) -> bool {
        let mut s = self.lock();
        if !s.connected || s.queued > 0 || s.pending.len() >= PENDING_MAX {
            return false;
        }
        let before = s.pending.len();
        encode(&mut s.pending);
        if s.pending.len() == before {
            return false;
        }
        drop(s);
        if before == 0 {
            self.wake.notify_one();
        }
        true
    }

    /// The frames to write ahead of the driver's own.
    pub(crate) fn take(&self) -> BytesMut {
        self.lock().pending.split()
    }

    /// The driver's connection is up (`true`) or gone.
    pub(crate) fn set_connected(&self, connected: bool) {
        self.lock().connected = connected;
    }
}
