//! What goes out of the hub: every subscription whose rate gate is open gets the
//! newest records of its dirty streams, packed into as few datagrams as fit. UDP
//! datagrams for all subscribers are collected in one [`SendBatch`] and handed to
//! the kernel [`SEND_BATCH`](super::io::SEND_BATCH) at a time; a browser's go to
//! its slot.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::io::SendBatch;
use super::{Hub, Stats, TelemetrySlot};
use crate::telemetry::{put_header, Kind, HEADER, MAX_DATAGRAM};

/// Where a subscriber's datagrams go.
#[derive(Clone, Copy)]
enum Dest<'a> {
    Udp(std::net::SocketAddr),
    Slot(&'a TelemetrySlot),
}

impl Hub {
    /// Sends every subscription whose gate is open its dirty streams; returns when
    /// the next gate opens.
    pub(super) fn flush(&mut self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut i = 0;
        while i < self.dirty_subs.len() {
            let key = self.dirty_subs[i];
            let Some(sub) = self.subs.get_mut(&key) else {
                self.dirty_subs.swap_remove(i);
                continue;
            };
            let Some(sink) = self.sinks.get_mut(&sub.conn) else {
                self.dirty_subs.swap_remove(i);
                continue;
            };
            let to = match (&sink.slot, sink.udp) {
                (Some(slot), _) => Dest::Slot(slot),
                (None, Some(addr)) => Dest::Udp(addr),
                (None, None) => {
                    // Not bound yet: the values wait (newest only) for the bind.
                    sub.queued = false;
                    self.dirty_subs.swap_remove(i);
                    continue;
                }
            };
            if !sub.gate.try_pass(now.into_std()) {
                if let Some(due) = sub.gate.next_due().map(Instant::from_std) {
                    wake = Some(wake.map_or(due, |w: Instant| w.min(due)));
                }
                i += 1;
                continue;
            }
            // Assemble datagrams of whole records, newest values only.
            self.out.clear();
            put_header(&mut self.out, Kind::Data, sink.dseq, None);
            for alias in sub.dirty.drain(..) {
                let Some(s) = self.streams.get(&alias) else {
                    continue;
                };
                for rec in s.records.iter().filter(|r| !r.is_empty()) {
                    if self.out.len() + rec.len() > MAX_DATAGRAM {
                        emit(&mut self.tx, &self.socket, &self.stats, &self.out, to);
                        sink.dseq = sink.dseq.wrapping_add(1);
                        self.out.clear();
                        put_header(&mut self.out, Kind::Data, sink.dseq, None);
                    }
                    self.out.extend_from_slice(rec);
                }
            }
            if self.out.len() > HEADER {
                emit(&mut self.tx, &self.socket, &self.stats, &self.out, to);
                sink.dseq = sink.dseq.wrapping_add(1);
            }
            // A new batch: the streams' marks for this subscription are now stale.
            sub.batch += 1;
            sub.queued = false;
            self.dirty_subs.swap_remove(i);
        }
        send(&mut self.tx, &self.socket, &self.stats);
        wake
    }
}

/// Queues one datagram for `to` (sending the batch first when it is full).
fn emit(tx: &mut SendBatch, socket: &UdpSocket, stats: &Stats, d: &[u8], to: Dest<'_>) {
    match to {
        Dest::Udp(addr) => {
            if tx.is_full() {
                send(tx, socket, stats);
            }
            tx.push(d, addr);
        }
        Dest::Slot(slot) => {
            slot.push(Bytes::copy_from_slice(d));
            stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Hands the batch to the kernel; what it refused is dropped and counted, never
/// kept.
fn send(tx: &mut SendBatch, socket: &UdpSocket, stats: &Stats) {
    let r = tx.send(socket);
    if r.sent > 0 {
        stats.datagrams_out.fetch_add(r.sent, Ordering::Relaxed);
    }
    if r.dropped > 0 {
        stats.send_dropped.fetch_add(r.dropped, Ordering::Relaxed);
    }
}
