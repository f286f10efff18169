//! What comes into the hub: datagrams from the UDP socket (binds and publishes),
//! values from in-process adapters, and the clock that marks silent streams stale.
//! Each new value overwrites its stream's records in place (buffers reused, no
//! allocation per value) and marks the stream dirty for its subscriptions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::io::{RecvBatch, RECV_BATCH};
use super::{same_ip, Hub, Ingest, Stream, TSub, RECV_BURST};
use crate::protocol::SessionId;
use crate::telemetry::{
    decode_header, encode_value, put_header, put_record, records, DatagramError, Format, Kind,
    Record, CHUNK_VALUES, FLAG_STALE, MAX_DATAGRAM, RECORD_HEADER,
};

impl Hub {
    /// Reads and handles what the socket holds, at most [`RECV_BURST`] datagrams,
    /// so that control messages and flushes get their turn during a flood.
    pub(super) fn read_burst(&mut self, rx: &mut RecvBatch) {
        let mut taken = 0;
        while taken < RECV_BURST {
            let n = match rx.recv(&self.socket) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // ICMP errors from earlier sends surface here on some systems; the
                // burst bound keeps a stream of them from holding the hub.
                Err(_) => {
                    taken += 1;
                    continue;
                }
            };
            taken += n.max(1);
            self.stats
                .datagrams_in
                .fetch_add(n as u64, Ordering::Relaxed);
            for i in 0..n {
                // An address family the hub cannot answer (never seen on an IP
                // socket) is skipped.
                if let (d, Some(from)) = rx.get(i) {
                    self.datagram(d, from);
                }
            }
            if n < RECV_BATCH {
                // The socket held no more: saves the call that would say so.
                return;
            }
        }
    }

    fn datagram(&mut self, d: &[u8], from: SocketAddr) {
        let (header, body) = match decode_header(d) {
            Ok(x) => x,
            Err(e) => return self.stats.count_error(e),
        };
        if !header.kind.to_bus() {
            return self.stats.count_error(DatagramError::BadType);
        }
        let token = header.token.unwrap_or(0);
        let Some(conn) = self.by_token.get(&token).copied() else {
            self.stats
                .drop_unknown_token
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(sink) = self.sinks.get_mut(&conn) else {
            return;
        };
        if sink.peer.is_some_and(|ip| !same_ip(ip, from.ip())) {
            self.stats.drop_wrong_source.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match header.kind {
            Kind::Bind => {
                let rebound = sink.udp != Some(from);
                sink.udp = Some(from);
                self.out.clear();
                put_header(&mut self.out, Kind::Bound, 0, None);
                let _ = self.socket.try_send_to(&self.out, from);
                if rebound {
                    // Values that waited for the bind go out now.
                    for key in &sink.subs {
                        if let Some(s) = self.subs.get_mut(key) {
                            if !s.dirty.is_empty() && !s.queued {
                                s.queued = true;
                                self.dirty_subs.push(*key);
                            }
                        }
                    }
                }
            }
            Kind::Publish => {
                if sink.udp != Some(from) {
                    self.stats.drop_wrong_source.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let session = sink.session;
                self.publish_records(session, body);
            }
            Kind::Data | Kind::Bound => {}
        }
    }

    fn publish_records(&mut self, session: SessionId, body: &[u8]) {
        let now = Instant::now();
        let mut values = 0;
        for r in records(body) {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    self.stats.count_error(e);
                    break;
                }
            };
            let Some(s) = self.streams.get_mut(&r.alias) else {
                self.stats
                    .drop_unknown_alias
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if s.owner != session {
                self.stats.drop_not_owner.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (chunk, chunks) = match r.format {
                Format::F32
                    if u32::from(r.total) == s.channels
                        && usize::from(r.offset) % CHUNK_VALUES == 0 =>
                {
                    (
                        usize::from(r.offset) / CHUNK_VALUES,
                        (s.channels as usize).div_ceil(CHUNK_VALUES),
                    )
                }
                Format::MsgPack if r.payload.len() + RECORD_HEADER <= MAX_DATAGRAM => (0, 1),
                _ => {
                    self.stats.drop_bad_record.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            // A new set of chunks (or the first after a stale spell) starts empty:
            // parts of an older value are not sent beside the new one.
            if s.records.len() != chunks || s.stale {
                s.records.resize_with(chunks, Default::default);
                s.records.iter_mut().for_each(|b| b.clear());
            }
            let rec = &mut s.records[chunk];
            rec.clear();
            // The bus owns the flags: a fresh value is never stale.
            put_record(rec, &Record { flags: 0, ..r });
            s.time_us = r.time_us;
            s.last_in = Some(now);
            s.stale = false;
            values += 1;
            mark_dirty(&mut self.subs, &mut self.dirty_subs, s, r.alias);
        }
        self.stats.values_in.fetch_add(values, Ordering::Relaxed);
    }

    pub(super) fn ingest_local(&mut self, batch: Ingest) {
        let now = Instant::now();
        let time_us = crate::telemetry::now_us();
        for (alias, value) in batch.values {
            let Some(s) = self.streams.get_mut(&alias) else {
                self.stats
                    .drop_unknown_alias
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if s.owner != batch.session {
                self.stats.drop_not_owner.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            s.seq = s.seq.wrapping_add(1);
            match encode_value(&mut self.scratch, alias, s.seq, time_us, 0, &value) {
                Ok(recs) => {
                    s.records.resize_with(recs.len(), Default::default);
                    for (dst, src) in s.records.iter_mut().zip(&recs) {
                        dst.clear();
                        dst.extend_from_slice(src);
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = %s.topic, error = %e, "telemetry value refused");
                    self.stats.drop_bad_record.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            s.time_us = time_us;
            s.last_in = Some(now);
            s.stale = false;
            self.stats.values_in.fetch_add(1, Ordering::Relaxed);
            mark_dirty(&mut self.subs, &mut self.dirty_subs, s, alias);
        }
    }

    /// Streams whose source went silent get the stale flag, sent once to their
    /// subscribers.
    pub(super) fn check_stale(&mut self) {
        let now = Instant::now();
        for (alias, s) in &mut self.streams {
            let silent = s.last_in.is_none_or(|t| now - t >= self.stale_after);
            if s.stale || !silent || s.records.iter().all(|r| r.is_empty()) {
                continue;
            }
            s.stale = true;
            for rec in &mut s.records {
                if rec.len() >= RECORD_HEADER {
                    rec[17] |= FLAG_STALE;
                }
            }
            mark_dirty(&mut self.subs, &mut self.dirty_subs, s, *alias);
        }
    }
}

/// Marks `alias` dirty for every subscription of `s`: added to a subscription's
/// list once per batch (a flag per stream and subscription, so the cost does not
/// grow with the number of streams already dirty).
pub(super) fn mark_dirty(
    subs: &mut HashMap<u64, TSub>,
    dirty_subs: &mut Vec<u64>,
    s: &mut Stream,
    alias: u32,
) {
    for e in &mut s.subs {
        let Some(sub) = subs.get_mut(&e.key) else {
            continue;
        };
        if e.marked != sub.batch {
            e.marked = sub.batch;
            sub.dirty.push(alias);
        }
        if !sub.queued {
            sub.queued = true;
            dirty_subs.push(e.key);
        }
    }
}
