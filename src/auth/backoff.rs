//! Refusal windows for addresses that sent wrong credentials.
//!
//! Each failure from an address opens a window in which every further attempt from
//! that address is refused *without looking at its credentials* — so parallel
//! connections cannot test guesses during the window either. The window starts at
//! `auth.backoff_ms` and doubles with each failure up to `auth.backoff_max_ms`; a
//! success clears the address, and an address quiet for `backoff_max_ms` past its
//! window is forgotten. IPv6 addresses count per /64, the block one host usually
//! holds, so cycling through one host's addresses gains nothing.
//!
//! The table is bounded (`auth.tracked_addresses`). When it is full, expired entries
//! are dropped; if none are, the entry whose window ends soonest is dropped. A std
//! `Mutex` guards it: nothing awaits while holding it, and it is touched only at
//! handshakes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key an address is tracked under: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

fn key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => Key::V4(v4.into()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::V4(v4.into()),
            None => Key::V6((u128::from(v6) >> 64) as u64),
        },
    }
}

struct Entry {
    failures: u32,
    until: Instant,
}

/// The per-address refusal windows.
pub struct Backoff {
    base: Duration,
    max: Duration,
    cap: usize,
    table: Mutex<HashMap<Key, Entry>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, cap: usize) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            cap: cap.max(1),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // Poisoning cannot leave a map of counters in a state worse than a lost entry.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time left in `ip`'s refusal window, if it is in one.
    pub fn remaining(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let t = self.lock();
        let e = t.get(&key(ip))?;
        (e.until > now).then(|| e.until - now)
    }

    /// Records a failure from `ip`; returns the window it opens.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut t = self.lock();
        let k = key(ip);
        if !t.contains_key(&k) && t.len() >= self.cap {
            let forget = self.max;
            t.retain(|_, e| e.until + forget > now);
            if t.len() >= self.cap {
                if let Some(soonest) = t.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k) {
                    t.remove(&soonest);
                }
            }
        }
        let e = t.entry(k).or_insert(Entry {
            failures: 0,
            until: now,
        });
        // Forget failures long past.
        if e.until + self.max <= now {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        let shift = (e.failures - 1).min(20);
        let window = self.base.saturating_mul(1 << shift).min(self.max);
        e.until = now + window;
        window
    }

    /// A successful handshake from `ip`: its failures are forgiven.
    pub fn success(&self, ip: IpAddr) {
        self.lock().remove(&key(ip));
    }

    /// Addresses in a refusal window now.
    pub fn blocked(&self, now: Instant) -> usize {
        self.lock().values().filter(|e| e.until > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_double_up_to_the_cap_and_success_clears() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5), 8);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        assert_eq!(b.fail(ip, now), Duration::from_secs(1));
        assert_eq!(b.fail(ip, now), Duration::from_secs(2));
        assert_eq!(b.fail(ip, now), Duration::from_secs(4));
        assert_eq!(b.fail(ip, now), Duration::from_secs(5));
        assert_eq!(b.remaining(ip, now), Some(Duration::from_secs(5)));
        assert_eq!(b.remaining(ip, now + Duration::from_secs(6)), None);
        b.success(ip);
        assert_eq!(b.remaining(ip, now), None);
    }

    #[test]
    fn ipv6_counts_per_64_and_the_table_is_bounded() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 4);
        let now = Instant::now();
        b.fail("2001:db8::1".parse().unwrap(), now);
        assert!(b
            .remaining("2001:db8::ffff".parse().unwrap(), now)
            .is_some());
        for i in 0..100u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            b.fail(ip, now + Duration::from_millis(u64::from(i)));
        }
        assert!(b.lock().len() <= 4);
        // The newest survive.
        assert!(b
            .remaining(IpAddr::from(std::net::Ipv4Addr::from(99u32)), now)
            .is_some());
    }
}
