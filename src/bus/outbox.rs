//! The bounded outbound queue of one connection, and its slow-consumer policy.
//!
//! The router pushes encoded frames here without ever waiting; the connection's
//! writer task drains them onto the socket. A std `Mutex` guards the queue because
//! nothing awaits while it is held: a push or a drain is a few pointer moves.
//!
//! Policy when the queue reaches `outbox_frames` or `outbox_bytes`:
//! * state updates (retained) are **conflated** per topic: only the newest frame of
//!   each topic is kept, in a side table bounded by `conflate_topics`;
//! * events are **dropped** and counted;
//! * once the queue drains, the writer sends a `gap` notice, then the conflated state
//!   in sequence order, and normal delivery resumes;
//! * if more than `conflate_topics` distinct topics overflow, the side table is
//!   cleared and the session is marked for a **resync**: the router sends it a fresh
//!   snapshot once the queue drains;
//! * answers to the client's own requests are never conflated; past twice the frame
//!   bound the client is not reading at all and the connection is closed
//!   (`slow_consumer`), keeping its session for resume.
//!
//! **Direct writes.** The router queues its frames quietly (without waking the
//! writer) and, at the end of each batch of messages, [`Outbox::flush`] is called:
//! when the writer is idle, the connection is a TCP socket and what is queued is
//! small (`DIRECT_MAX`), everything queued goes out with one non-blocking `write` —
//! no task hand-off, one syscall per connection per batch. Whatever the socket does
//! not take (or any other case: TLS, WebSocket and in-process connections, a busy
//! writer, a large queue) wakes the writer task, which finishes the job with ordinary
//! awaits. Under load the writer is busy and batches grow; when idle, a message
//! read by one connection's reader reaches a TCP subscriber's socket in that reader's
//! task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::protocol::{BusMsg, Seq};

/// Limits of one outbox (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub frames: usize,
    pub bytes: usize,
    pub conflate_topics: usize,
}

/// One queued item: a frame, or a group written back to back (a snapshot).
#[derive(Debug)]
pub enum Item {
    Frame(Bytes),
    Batch(Vec<Bytes>),
}

#[derive(Default)]
struct Overflow {
    states: HashMap<Arc<str>, (Seq, Bytes)>,
    dropped: u64,
    conflated: u64,
    resync: bool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Item>,
    frames: usize,
    bytes: usize,
    /// Of `frames`/`bytes`, how much is in snapshot batches (shared with the
    /// retained table; not counted against the answer bound).
    batch_frames: usize,
    batch_bytes: usize,
    overflow: Option<Overflow>,
    closing: Option<Bytes>,
    closed: bool,
    stats: OutboxStats,
    /// The writer task holds drained items it has not finished writing.
    writer_busy: bool,
    /// Frames were queued quietly and [`Outbox::flush`] has not run since.
    unflushed: bool,
}

/// A socket the router may write to without waiting (a shared TCP stream).
pub trait DirectWrite: Send + Sync {
    /// A non-blocking write: bytes taken, or `WouldBlock`.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}

/// Largest batch the router writes directly; more goes to the writer task.
const DIRECT_MAX: usize = 256 * 1024;

/// Counters for `$sys/queues/<session>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Frames queued now (a snapshot counts its frames).
    pub frames: usize,
    /// Bytes queued now.
    pub bytes: usize,
    /// Topics held conflated now.
    pub conflated_now: usize,
    /// Highest `frames` seen.
    pub peak_frames: usize,
    /// Highest `bytes` seen.
    pub peak_bytes: usize,
    /// Events dropped, in total.
    pub dropped: u64,
    /// State updates merged into a newer one, in total.
    pub conflated: u64,
    /// Gap notices sent.
    pub gaps: u64,
    /// Resyncs forced by overflow.
    pub resyncs: u64,
}

/// What [`Outbox::push_update`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `flush`: the caller must call [`Outbox::flush`] (first since the last).
    Queued {
        flush: bool,
    },
    Conflated,
    Dropped,
    Closed,
}

/// The answer queue is past its hard bound: the client does not read.
#[derive(Debug)]
pub struct Stalled;

/// What the writer should write next.
pub enum Drain {
    /// Items to write, in order.
    Items,
    /// Queue drained; a resync snapshot must be requested from the router.
    NeedResync,
    /// Nothing queued: wait for [`Outbox::notified`].
    Empty,
    /// The connection is closing: write this final frame (if any) and stop.
    Close(Option<Bytes>),
}

/// The outbound queue of one connection.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limits: OutboxLimits,
    direct: Option<Arc<dyn DirectWrite>>,
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Arc<Outbox> {
        Outbox::with_direct(limits, None)
    }

    /// An outbox the router may write through directly (see the module doc).
    pub fn with_direct(limits: OutboxLimits, direct: Option<Arc<dyn DirectWrite>>) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limits,
            direct,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent in a
        // way that matters more than losing the connection, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues without waking the writer; returns whether the caller must now call
    /// [`Outbox::flush`] (the first quiet push since the last flush).
    fn enqueue_quiet(&self, st: &mut State, item: Item) -> bool {
        self.account(st, &item);
        st.queue.push_back(item);
        !std::mem::replace(&mut st.unflushed, true)
    }

    fn account(&self, st: &mut State, item: &Item) {
        let (n, b) = match item {
            Item::Frame(f) => (1, f.len()),
            Item::Batch(v) => {
                let b = v.iter().map(Bytes::len).sum();
                st.batch_frames += v.len();
                st.batch_bytes += b;
                (v.len(), b)
            }
        };
        st.frames += n;
        st.bytes += b;
        st.stats.peak_frames = st.stats.peak_frames.max(st.frames);
        st.stats.peak_bytes = st.stats.peak_bytes.max(st.bytes);
    }

    fn enqueue(&self, st: &mut State, item: Item) {
        self.account(st, &item);
        st.queue.push_back(item);
        self.notify.notify_one();
    }

    /// After quiet pushes: writes everything queued straight to the socket when the
    /// writer is idle (one non-blocking write), otherwise wakes the writer. `buf` is
    /// the caller's reused gathering buffer.
    pub fn flush(&self, buf: &mut BytesMut) {
        let mut st = self.lock();
        st.unflushed = false;
        let Some(direct) = &self.direct else {
            drop(st);
            return self.notify.notify_one();
        };
        if st.closed
            || st.writer_busy
            || st.overflow.is_some()
            || st.queue.is_empty()
            || st.bytes > DIRECT_MAX
        {
            drop(st);
            return self.notify.notify_one();
        }
        buf.clear();
        for item in &st.queue {
            match item {
                Item::Frame(f) => buf.extend_from_slice(f),
                Item::Batch(v) => v.iter().for_each(|f| buf.extend_from_slice(f)),
            }
        }
        // The lock is held across this non-blocking write so the writer cannot
        // start writing in between (bytes must never interleave).
        // An error (`WouldBlock`, or one the writer will meet and report) writes 0.
        let written = direct.try_write(buf).unwrap_or_default();
        if written == 0 {
            drop(st);
            return self.notify.notify_one();
        }
        st.queue.clear();
        st.frames = 0;
        st.bytes = 0;
        st.batch_frames = 0;
        st.batch_bytes = 0;
        if written < buf.len() {
            let rest = buf.split_off(written).freeze();
            st.bytes = rest.len();
            st.frames = 1;
            st.queue.push_back(Item::Frame(rest));
            drop(st);
            self.notify.notify_one();
        }
    }

    fn full(&self, st: &State) -> bool {
        st.frames >= self.limits.frames || st.bytes >= self.limits.bytes
    }

    /// Queues a live update quietly (the router calls [`Outbox::flush`] at the end of
    /// its batch), applying the slow-consumer policy when full.
    pub fn push_update(&self, topic: &Arc<str>, seq: Seq, frame: &Bytes, retained: bool) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        if st.overflow.is_none() && !self.full(&st) {
            let first = self.enqueue_quiet(&mut st, Item::Frame(frame.clone()));
            return Pushed::Queued { flush: first };
        }
        let limit = self.limits.conflate_topics;
        let State {
            overflow, stats, ..
        } = &mut *st;
        let of = overflow.get_or_insert_with(Overflow::default);
        if !retained {
            of.dropped += 1;
            stats.dropped += 1;
            return Pushed::Dropped;
        }
        if of.resync {
            of.conflated += 1;
            stats.conflated += 1;
            return Pushed::Conflated;
        }
        if of
            .states
            .insert(topic.clone(), (seq, frame.clone()))
            .is_some()
        {
            of.conflated += 1;
            stats.conflated += 1;
        }
        if of.states.len() > limit {
            // The table's updates are not delivered individually either.
            of.conflated += of.states.len() as u64;
            stats.conflated += of.states.len() as u64;
            of.states.clear();
            of.resync = true;
            stats.resyncs += 1;
        }
        Pushed::Conflated
    }

    /// Queues an answer or notice and wakes the writer. Never conflated; fails past
    /// twice the bound.
    ///
    /// # Errors
    /// [`Stalled`] when the client has left twice the bound unread.
    pub fn push(&self, frame: Bytes) -> Result<(), Stalled> {
        self.push_inner(frame, false).map(|_| ())
    }

    /// As [`Outbox::push`], quietly: returns whether the caller must now call
    /// [`Outbox::flush`].
    ///
    /// # Errors
    /// [`Stalled`] when the client has left twice the bound unread.
    pub fn push_quiet(&self, frame: Bytes) -> Result<bool, Stalled> {
        self.push_inner(frame, true)
    }

    fn push_inner(&self, frame: Bytes, quiet: bool) -> Result<bool, Stalled> {
        let mut st = self.lock();
        if st.closed {
            return Ok(false);
        }
        let (own_frames, own_bytes) = (st.frames - st.batch_frames, st.bytes - st.batch_bytes);
        if own_frames >= 2 * self.limits.frames || own_bytes >= 2 * self.limits.bytes {
            return Err(Stalled);
        }
        if quiet {
            return Ok(self.enqueue_quiet(&mut st, Item::Frame(frame)));
        }
        self.enqueue(&mut st, Item::Frame(frame));
        Ok(false)
    }

    /// Queues a group of frames written back to back (a snapshot or a replay). It
    /// shares its frames with the retained table, so it is accepted whatever its size;
    /// live updates behind it are conflated until it drains.
    pub fn push_batch(&self, frames: Vec<Bytes>) {
        let mut st = self.lock();
        if !st.closed {
            self.enqueue(&mut st, Item::Batch(frames));
        }
    }

    /// Closes the queue: the writer sends `last` (a `bye` or `error`) and stops;
    /// everything still queued is discarded.
    pub fn close(&self, last: Option<Bytes>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.closed = true;
        st.closing = last;
        st.queue.clear();
        st.frames = 0;
        st.bytes = 0;
        st.batch_frames = 0;
        st.batch_bytes = 0;
        st.overflow = None;
        self.notify.notify_one();
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Moves what is ready into `out` (reused by the writer) and says what to do.
    pub fn drain(&self, out: &mut Vec<Item>) -> Drain {
        let mut st = self.lock();
        // Whatever the writer took last time has been written by now.
        st.writer_busy = false;
        if st.closed {
            return Drain::Close(st.closing.take());
        }
        if !st.queue.is_empty() {
            st.writer_busy = true;
            out.extend(st.queue.drain(..));
            st.frames = 0;
            st.bytes = 0;
            st.batch_frames = 0;
            st.batch_bytes = 0;
            return Drain::Items;
        }
        let Some(of) = st.overflow.take() else {
            return Drain::Empty;
        };
        st.writer_busy = true;
        st.stats.gaps += 1;
        out.push(Item::Frame(crate::protocol::frame(&BusMsg::Gap {
            dropped: of.dropped,
            conflated: of.conflated,
            resync: of.resync,
        })));
        if of.resync {
            return Drain::NeedResync;
        }
        let mut states: Vec<(Seq, Bytes)> = of.states.into_values().collect();
        states.sort_unstable_by_key(|(seq, _)| *seq);
        out.push(Item::Batch(states.into_iter().map(|(_, f)| f).collect()));
        Drain::Items
    }

    /// Waits until something is pushed. Create the future before calling
    /// [`Outbox::drain`] so a push in between is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Current counters.
    pub fn stats(&self) -> OutboxStats {
        let st = self.lock();
        OutboxStats {
            frames: st.frames,
            bytes: st.bytes,
            conflated_now: st.overflow.as_ref().map_or(0, |o| o.states.len()),
            ..st.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OutboxLimits {
        OutboxLimits {
            frames: 2,
            bytes: 1 << 20,
            conflate_topics: 2,
        }
    }

    #[test]
    fn conflates_state_drops_events_then_gap() {
        let ob = Outbox::new(limits());
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let f = |n: u8| Bytes::from(vec![n]);
        assert_eq!(
            ob.push_update(&a, Seq(1), &f(1), true),
            Pushed::Queued { flush: true }
        );
        assert_eq!(
            ob.push_update(&a, Seq(2), &f(2), true),
            Pushed::Queued { flush: false }
        );
        assert_eq!(ob.push_update(&b, Seq(4), &f(4), true), Pushed::Conflated);
        assert_eq!(ob.push_update(&a, Seq(3), &f(3), true), Pushed::Conflated);
        assert_eq!(ob.push_update(&a, Seq(5), &f(5), false), Pushed::Dropped);
        assert_eq!(ob.push_update(&a, Seq(6), &f(6), true), Pushed::Conflated);
        let mut out = Vec::new();
        assert!(matches!(ob.drain(&mut out), Drain::Items));
        assert_eq!(out.len(), 2);
        out.clear();
        assert!(matches!(ob.drain(&mut out), Drain::Items));
        assert_eq!(out.len(), 2, "gap + batch");
        match &out[1] {
            Item::Batch(v) => assert_eq!(v, &vec![f(4), f(6)], "newest per topic, seq order"),
            _ => panic!("expected batch"),
        }
        let s = ob.stats();
        assert_eq!((s.dropped, s.conflated, s.gaps), (1, 1, 1));
        out.clear();
        assert!(matches!(ob.drain(&mut out), Drain::Empty));
    }

    #[test]
    fn too_many_topics_forces_resync() {
        let ob = Outbox::new(limits());
        let f = Bytes::from_static(b"x");
        for i in 0..6 {
            let t: Arc<str> = format!("t{i}").into();
            ob.push_update(&t, Seq(i), &f, true);
        }
        let mut out = Vec::new();
        assert!(matches!(ob.drain(&mut out), Drain::Items));
        assert!(matches!(ob.drain(&mut out), Drain::NeedResync));
        assert_eq!(ob.stats().resyncs, 1);
    }

    #[test]
    fn a_large_snapshot_does_not_count_against_answers() {
        let ob = Outbox::new(limits());
        ob.push_batch(vec![Bytes::from_static(b"s"); 100]);
        ob.push(Bytes::from_static(b"ok")).unwrap();
        assert_eq!(ob.stats().frames, 101);
    }

    #[test]
    fn answers_fail_past_twice_the_bound() {
        let ob = Outbox::new(limits());
        for _ in 0..4 {
            ob.push(Bytes::from_static(b"ok")).unwrap();
        }
        assert!(ob.push(Bytes::from_static(b"ok")).is_err());
    }
}
