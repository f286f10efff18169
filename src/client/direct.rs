//! Fire-and-forget frames written by the caller's own task.
//!
//! A `publish_nowait` would otherwise travel to the connection's driver task through
//! its request queue, and the driver would encode and write it: one task wake-up per
//! publish, a thread wake-up when the caller runs outside the runtime's workers. While
//! the driver is connected over plain TCP, has written everything it was handed and is
//! not writing, a handle encodes the `pub` itself and writes it with one non-blocking
//! `send` instead.
//!
//! A publish that follows another by less than [`DIRECT_GAP`] is part of a burst: it
//! is appended to a shared buffer instead, which the driver writes in one go (one
//! `send` for many frames, as before), woken once per burst.
//!
//! Order on the wire is the order of the calls: a handle writes directly only while no
//! request it handed the driver is still unwritten (`queued`), and never while the
//! driver holds the socket (`busy`). When the kernel takes only part of a frame, the
//! rest goes to the driver, which writes it before anything else; when it takes
//! nothing, the frame goes through the driver's queue like any other.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::Notify;

use crate::bus::outbox::DirectWrite;
use crate::bus::tcp::SharedTcp;

/// A publish this soon after the previous one joins the driver's next write instead
/// of taking a `send` of its own (10,000 publishes/s and more are a stream).
pub(crate) const DIRECT_GAP: Duration = Duration::from_micros(50);

/// Bytes of burst frames the driver may have waiting; past it, publishes go through
/// its bounded request queue (which makes the caller wait).
const PENDING_MAX: usize = 256 * 1024;

/// The connection's socket as the handles may write to it.
#[derive(Default)]
pub(crate) struct Direct {
    state: Mutex<State>,
    /// Wakes the driver to write what a partial direct write left.
    pub(crate) wake: Notify,
}

#[derive(Default)]
struct State {
    /// The current plain-TCP connection (none while disconnected, or over TLS or the
    /// in-process transport).
    sock: Option<SharedTcp>,
    /// The driver holds the socket (writing, or about to write `rest`).
    busy: bool,
    /// Requests handed to the driver and not yet written (or parked) by it.
    queued: usize,
    /// The end of a frame a direct write left unwritten.
    rest: BytesMut,
    /// Frames of a burst, for the driver's next write (after `rest`).
    pending: BytesMut,
    /// When the last frame was taken (directly or into `pending`).
    last: Option<Instant>,
    /// Reused to encode a frame.
    buf: BytesMut,
}

impl Direct {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is on its way to the driver: direct writes wait until it is written.
    pub(crate) fn queued(&self) {
        self.lock().queued += 1;
    }

    /// The driver has taken `n` requests without writing them (while disconnected,
    /// or they never reached it).
    pub(crate) fn taken(&self, n: usize) {
        let mut s = self.lock();
        s.queued = s.queued.saturating_sub(n);
    }

    /// Takes a frame (that `encode` appends) for the socket: written now when the
    /// socket is free and the last frame is older than [`DIRECT_GAP`], else queued
    /// for the driver's next write. False when the caller must hand it to the driver
    /// through its request queue (not connected over TCP, a request of the caller's
    /// still unwritten, or too much waiting).
    pub(crate) fn write(&self, encode: impl FnOnce(&mut BytesMut)) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(sock) = &st.sock else {
            return false;
        };
        if st.queued > 0 || st.pending.len() >= PENDING_MAX {
            return false;
        }
        let now = Instant::now();
        let burst = st.last.is_some_and(|t| now.duration_since(t) < DIRECT_GAP);
        st.last = Some(now);
        if !burst && !st.busy && st.pending.is_empty() {
            st.buf.clear();
            encode(&mut st.buf);
            if st.buf.is_empty() {
                return false;
            }
            let n = match sock.try_write(&st.buf) {
                Ok(n) if n == st.buf.len() => return true,
                Ok(n) => n,
                // `WouldBlock`, or an error the driver will meet.
                Err(_) => 0,
            };
            if n > 0 {
                let rest = st.buf.split_off(n);
                st.rest.extend_from_slice(&rest);
                st.busy = true;
            } else {
                let frame = st.buf.split();
                st.pending.extend_from_slice(&frame);
            }
        } else {
            let was_empty = st.pending.is_empty();
            let before = st.pending.len();
            encode(&mut st.pending);
            if st.pending.len() == before {
                return false;
            }
            if !was_empty {
                return true;
            }
        }
        drop(guard);
        self.wake.notify_one();
        true
    }

    /// The driver takes the socket to write: what a direct write left, then the
    /// burst's frames, come before its own buffer.
    pub(crate) fn claim(&self) -> BytesMut {
        let mut s = self.lock();
        s.busy = true;
        if s.rest.is_empty() {
            return s.pending.split();
        }
        let mut out = std::mem::take(&mut s.rest);
        out.extend_from_slice(&s.pending);
        s.pending.clear();
        out
    }

    /// The driver has written everything it held, `n` requests among it.
    pub(crate) fn release(&self, n: usize) {
        let mut s = self.lock();
        s.busy = false;
        s.queued = s.queued.saturating_sub(n);
    }

    /// A new connection: direct writes start after the driver's first write (the
    /// session's restored subscriptions and parked messages go first).
    pub(crate) fn attach(&self, sock: Option<SharedTcp>) {
        let mut s = self.lock();
        s.sock = sock;
        s.busy = true;
        s.rest.clear();
        s.pending.clear();
    }

    /// The connection ends: no more direct writes. Returns what a direct write left
    /// and the burst's frames (for a goodbye written after them), and forgets `n` requests taken since the
    /// driver's last write.
    pub(crate) fn detach(&self, n: usize) -> BytesMut {
        let mut s = self.lock();
        s.sock = None;
        s.busy = true;
        s.queued = s.queued.saturating_sub(n);
        let mut out = std::mem::take(&mut s.rest);
        out.extend_from_slice(&s.pending);
        s.pending.clear();
        out
    }
}
