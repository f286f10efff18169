//! Device faults: while the load runs, one switcher at a time loses its network
//! (its [`Link`] is cut and held down, as a switcher power-cycled or unplugged looks
//! to its adapter) for a few seconds. The adapter marks it offline, panels' commands
//! to it are answered `device_offline`, and it comes back when the link does: the
//! adapter reconnects with its backoff and re-reads the device.
//!
//! Seeded like the panels; one fault at a time, bounded in length; every link is up
//! again when the load stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::panel::Load;
use super::proxy::Link;

/// Time between two faults (uniform, ms), at most a quarter of the load.
const FAULT_GAP_MS: (u64, u64) = (5_000, 20_000);
/// Length of a fault (uniform, ms), at most a fifth of the load.
const OUTAGE_MS: (u64, u64) = (1_000, 10_000);

/// A uniform duration in `range` ms, at most `cap`.
fn between(rng: &mut fastrand::Rng, range: (u64, u64), cap: Duration) -> Duration {
    let cap = cap.as_millis().max(1) as u64;
    let (lo, hi) = (range.0.min(cap), range.1.min(cap));
    Duration::from_millis(rng.u64(lo..=hi.max(lo)))
}

/// Waits `d`; true when `stop` came first.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Injects faults on `links` until `stop`; every link is up when it returns.
pub(super) async fn run(links: Vec<Arc<Link>>, load: Arc<Load>, stop: CancellationToken) {
    if links.is_empty() {
        return;
    }
    let mut rng = fastrand::Rng::with_seed(load.seed ^ 0x5eed_fa17);
    loop {
        let gap = between(&mut rng, FAULT_GAP_MS, load.duration / 4);
        if pause(&stop, gap).await {
            return;
        }
        let link = &links[rng.usize(0..links.len())];
        load.counters.device_faults.fetch_add(1, Ordering::Relaxed);
        link.set_down(true);
        link.cut();
        let outage = between(&mut rng, OUTAGE_MS, load.duration / 5);
        let stopped = pause(&stop, outage).await;
        link.set_down(false);
        if stopped {
            return;
        }
    }
}
