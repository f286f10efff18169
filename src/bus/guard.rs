//! Limits against abuse, and the counters of every refusal (`$sys/auth/...`,
//! `$sys/limits/...`, `$sys/tls/...`).
//!
//! * [`RateLimit`]: two token buckets per network connection (frames and bytes per
//!   second, each with a burst). Over the rate, the connection is either throttled —
//!   its reader stops reading until the buckets refill, so TCP pushes back on the
//!   sender and nobody else notices — or closed with `error limit`
//!   (`limits.over_rate`). In-process adapters are not limited: the bus hosts them.
//! * [`AddressSlots`]: connections at once per address (IPv6: per /64), on top of
//!   the total bound; an entry exists only while its address has a connection, so
//!   the table is bounded by `limits.max_connections`.
//!
//! The rate and per-address limits are off by default (benchmarks open thousands
//! of loopback connections and publish as fast as they can); `bus::start` warns when
//! a bus listening beyond loopback runs without them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Limits, OverRate};

/// Refusal counters, shared by connection tasks, the router and the hub.
#[derive(Default, Debug)]
pub struct GuardStats {
    pub auth_ok: AtomicU64,
    pub auth_unauthorized: AtomicU64,
    pub auth_missing: AtomicU64,
    pub auth_throttled: AtomicU64,
    pub forbidden: AtomicU64,
    pub rate_throttled: AtomicU64,
    pub rate_closed: AtomicU64,
    pub connections_refused: AtomicU64,
    pub address_refused: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub filters_refused: AtomicU64,
    pub tls_failed: AtomicU64,
    pub tls_plaintext: AtomicU64,
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl GuardStats {
    /// `(name, value)` pairs, published as `$sys/<name>`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("auth/ok", g(&self.auth_ok)),
            ("auth/unauthorized", g(&self.auth_unauthorized)),
            ("auth/missing", g(&self.auth_missing)),
            ("auth/throttled", g(&self.auth_throttled)),
            ("auth/forbidden", g(&self.forbidden)),
            ("limits/throttled", g(&self.rate_throttled)),
            ("limits/rate_closed", g(&self.rate_closed)),
            ("limits/connections_refused", g(&self.connections_refused)),
            ("limits/address_refused", g(&self.address_refused)),
            ("limits/handshake_timeouts", g(&self.handshake_timeouts)),
            ("limits/filters_refused", g(&self.filters_refused)),
            ("tls/handshake_failed", g(&self.tls_failed)),
            ("tls/plaintext", g(&self.tls_plaintext)),
        ]
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`. It may go into
/// debt by one frame; the debt is what the reader waits out.
struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            rate,
            burst,
            level: burst,
        }
    }

    fn refill(&mut self, elapsed: f64) {
        self.level = (self.level + elapsed * self.rate).min(self.burst);
    }

    /// Takes `n`; returns how long until the bucket is out of debt, if it is in debt.
    fn take(&mut self, n: f64) -> Option<Duration> {
        self.level -= n;
        (self.level < 0.0).then(|| Duration::from_secs_f64(-self.level / self.rate))
    }
}

/// What the reader should do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Rate {
    Ok,
    /// Stop reading until this instant.
    Pause(Instant),
    /// Close the connection with `error limit`.
    Close,
}

/// The message and byte rate limits of one connection.
pub struct RateLimit {
    msgs: Option<Bucket>,
    bytes: Option<Bucket>,
    policy: OverRate,
    last: Instant,
}

impl RateLimit {
    /// The limits of `[limits]`; `None` when both rates are 0 (no limit).
    pub fn new(l: &Limits, now: Instant) -> Option<RateLimit> {
        let msgs = (l.client_msgs_per_sec > 0)
            .then(|| Bucket::new(l.client_msgs_per_sec.into(), l.client_msg_burst.into()));
        let bytes = (l.client_bytes_per_sec > 0)
            .then(|| Bucket::new(l.client_bytes_per_sec as f64, l.client_byte_burst as f64));
        (msgs.is_some() || bytes.is_some()).then_some(RateLimit {
            msgs,
            bytes,
            policy: l.over_rate,
            last: now,
        })
    }

    /// Accounts for one received frame of `len` bytes at `now`.
    pub fn frame(&mut self, len: usize, now: Instant) -> Rate {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let mut wait: Option<Duration> = None;
        if let Some(b) = &mut self.msgs {
            b.refill(elapsed);
            wait = b.take(1.0);
        }
        if let Some(b) = &mut self.bytes {
            b.refill(elapsed);
            if let Some(w) = b.take(len as f64) {
                wait = Some(wait.map_or(w, |x| x.max(w)));
            }
        }
        match (wait, self.policy) {
            (None, _) => Rate::Ok,
            (Some(_), OverRate::Close) => Rate::Close,
            (Some(w), OverRate::Throttle) => Rate::Pause(now + w),
        }
    }
}

/// Connections at once per address.
pub struct AddressSlots {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`AddressSlots`]; freed when dropped.
pub struct AddressSlot {
    /// `None` when there is no per-address limit (nothing is tracked).
    slots: Option<Arc<AddressSlots>>,
    ip: IpAddr,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

impl AddressSlots {
    pub fn new(max: usize) -> Arc<AddressSlots> {
        Arc::new(AddressSlots {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Nothing awaits while this is held; poisoning cannot leave it worse than a
        // miscount of one.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, or `None` when the address has its
    /// maximum (a maximum of 0: no limit).
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = canonical(ip);
        if self.max == 0 {
            return Some(AddressSlot { slots: None, ip });
        }
        let mut open = self.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            slots: Some(self.clone()),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(slots) = &self.slots else {
            return;
        };
        let mut open = slots.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(msgs: u32, burst: u32, policy: OverRate) -> Limits {
        Limits {
            client_msgs_per_sec: msgs,
            client_msg_burst: burst,
            over_rate: policy,
            ..Limits::default()
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(&limits(10, 3, OverRate::Throttle), t0).unwrap();
        for _ in 0..3 {
            assert_eq!(r.frame(10, t0), Rate::Ok);
        }
        assert_eq!(
            r.frame(10, t0),
            Rate::Pause(t0 + Duration::from_millis(100))
        );
        // A tenth of a second later the debt is paid, and one more frame fits.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(r.frame(10, t1), Rate::Ok);
        let mut c = RateLimit::new(&limits(10, 1, OverRate::Close), t0).unwrap();
        assert_eq!(c.frame(1, t0), Rate::Ok);
        assert_eq!(c.frame(1, t0), Rate::Close);
        assert!(RateLimit::new(&Limits::default(), t0).is_none());
    }

    #[test]
    fn the_byte_rate_counts_bytes() {
        let t0 = Instant::now();
        let l = Limits {
            client_bytes_per_sec: 1000,
            client_byte_burst: 1000,
            ..Limits::default()
        };
        let mut r = RateLimit::new(&l, t0).unwrap();
        assert_eq!(r.frame(600, t0), Rate::Ok);
        assert_eq!(r.frame(400, t0), Rate::Ok);
        assert_eq!(
            r.frame(500, t0),
            Rate::Pause(t0 + Duration::from_millis(500))
        );
    }

    #[test]
    fn slots_per_address_are_freed_on_drop() {
        let s = AddressSlots::new(2);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let a = s.acquire(ip).unwrap();
        let _b = s.acquire(ip).unwrap();
        assert!(s.acquire(ip).is_none());
        assert!(s.acquire("10.1.1.2".parse().unwrap()).is_some());
        drop(a);
        assert!(s.acquire(ip).is_some());
        // One host's IPv6 addresses share the slots of its /64.
        let v6 = AddressSlots::new(1);
        let _x = v6.acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(v6.acquire("2001:db8::2".parse().unwrap()).is_none());
        // 0: no limit, nothing tracked.
        let open = AddressSlots::new(0);
        let held: Vec<_> = (0..100).filter_map(|_| open.acquire(ip)).collect();
        assert_eq!(held.len(), 100);
        assert!(open.lock().is_empty());
    }
}
