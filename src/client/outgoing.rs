//! Fire-and-forget frames on their way to the driver, without a queue entry each.
//!
//! A `publish_nowait` encodes its `pub` frame itself, straight into a buffer the
//! driver writes in its next write (many frames in one `send`); the driver is woken
//! once when the buffer goes from empty to not. No message value is built, moved
//! through the request queue and encoded again.
//!
//! **Direct writes.** Over plain TCP, a publish that finds the buffer empty and the
//! driver not writing is written to the socket by the caller itself (one
//! non-blocking `send`, under the buffer's lock), without waking the driver: a
//! panel's or adapter's lone publish, or each message of a ping-pong, leaves without
//! a task hand-off. At most one such write happens per [`DIRECT_GAP`]; publishes
//! that follow sooner (a burst) gather in the buffer for the driver's next write, so
//! a burst still costs one `send` per batch. What the socket does not take is left
//! in the buffer for the driver.
//!
//! Order on the wire is the order of the calls: the driver writes the buffer before
//! its own, and a handle appends only while no request it handed the driver through
//! the request queue is still unwritten (`queued`); until then, publishes follow that
//! request through the queue. While disconnected, publishes go to the queue too (the
//! driver parks them for the next connection); frames already in the buffer stay there
//! and are written first on the next connection.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::sync::Notify;

use crate::bus::DirectWrite;

/// Bytes of frames the buffer may hold; past it, publishes go through the bounded
/// request queue, which makes the caller wait.
const PENDING_MAX: usize = 256 * 1024;

/// A handle writes its frame to the socket itself at most once in this time; frames
/// that follow sooner (a burst) gather in the buffer for one write of the driver's.
const DIRECT_GAP: Duration = Duration::from_micros(50);

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
    /// The connection's socket, when a handle may write to it itself (plain TCP).
    direct: Option<Arc<dyn DirectWrite>>,
    /// The driver is writing: nothing may be written around it.
    writing: bool,
    /// When a handle last wrote to the socket itself.
    last_direct: Option<Instant>,
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
        if before == 0 && !s.writing && s.direct.is_some() {
            let now = Instant::now();
            if s.last_direct
                .is_none_or(|t| now.duration_since(t) >= DIRECT_GAP)
            {
                s.last_direct = Some(now);
                if let Some(direct) = &s.direct {
                    // Under the lock, so nothing can be written around it. An error
                    // writes nothing here; the driver meets it on its own write.
                    let n = direct.try_write(&s.pending).unwrap_or(0);
                    s.pending.advance(n);
                }
                if s.pending.is_empty() {
                    return true;
                }
            }
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

    /// As [`Outgoing::take`], for a write of the driver's: until [`Outgoing::written`],
    /// handles leave their frames to the driver. `own`: the driver has frames of its
    /// own to write.
    pub(crate) fn take_for_write(&self, own: bool) -> BytesMut {
        let mut s = self.lock();
        let out = s.pending.split();
        s.writing = own || !out.is_empty();
        out
    }

    /// The driver's write is done.
    pub(crate) fn written(&self) {
        self.lock().writing = false;
    }

    /// The driver's connection is up (`true`, with the socket handles may write to
    /// themselves, if any) or gone.
    pub(crate) fn set_connected(&self, connected: bool, direct: Option<Arc<dyn DirectWrite>>) {
        let mut s = self.lock();
        s.connected = connected;
        s.direct = if connected { direct } else { None };
        s.writing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes per write and records them.
    struct Sock {
        room: usize,
        got: Mutex<Vec<u8>>,
    }

    impl DirectWrite for Sock {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.got.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    fn sock(room: usize) -> Arc<Sock> {
        Arc::new(Sock {
            room,
            got: Mutex::new(Vec::new()),
        })
    }

    fn connected(s: &Arc<Sock>) -> Outgoing {
        let out = Outgoing::default();
        out.set_connected(true, Some(s.clone() as Arc<dyn DirectWrite>));
        out
    }

    fn woken(out: &Outgoing) -> bool {
        use std::future::Future;
        let mut n = std::pin::pin!(out.wake.notified());
        let waker = futures_util::task::noop_waker();
        n.as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_ready()
    }

    #[test]
    fn a_lone_frame_goes_to_the_socket_and_a_burst_to_the_driver() {
        let s = sock(1 << 20);
        let out = connected(&s);
        let t = Instant::now();
        assert!(out.push(|b| b.extend_from_slice(b"one")));
        assert!(out.push(|b| b.extend_from_slice(b"two")));
        assert!(out.push(|b| b.extend_from_slice(b"three")));
        let quick = t.elapsed() < DIRECT_GAP;
        assert_eq!(&s.got.lock().unwrap()[..3], b"one");
        // (Unless this thread was held up past the gap between the pushes.)
        if quick {
            assert_eq!(&s.got.lock().unwrap()[..], b"one");
            assert_eq!(&out.take()[..], b"twothree");
            assert!(woken(&out));
        }
    }

    #[test]
    fn what_the_socket_does_not_take_is_left_to_the_driver() {
        let s = sock(2);
        let out = connected(&s);
        assert!(out.push(|b| b.extend_from_slice(b"frame")));
        assert_eq!(&s.got.lock().unwrap()[..], b"fr");
        assert_eq!(&out.take()[..], b"ame");
        assert!(woken(&out));
    }

    #[test]
    fn nothing_is_written_around_the_driver_or_while_disconnected() {
        let s = sock(1 << 20);
        let out = connected(&s);
        assert!(out.take_for_write(true).is_empty());
        assert!(out.push(|b| b.extend_from_slice(b"a")));
        assert!(s.got.lock().unwrap().is_empty(), "the driver is writing");
        assert!(woken(&out));
        out.written();
        assert_eq!(&out.take()[..], b"a");
        out.set_connected(false, None);
        assert!(
            !out.push(|b| b.extend_from_slice(b"b")),
            "to the request queue"
        );
        assert!(s.got.lock().unwrap().is_empty());
    }
}
