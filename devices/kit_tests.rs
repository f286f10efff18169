//! The backoff schedule: doubling, capped, jittered, and reset.

use super::*;

#[test]
fn backoff_doubles_caps_and_jitters() {
    let mut b = Backoff::with_rng(
        Duration::from_millis(100),
        Duration::from_secs(1),
        fastrand::Rng::with_seed(7),
    );
    let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
    let bases = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
    for (d, base) in delays.iter().zip(bases) {
        let base = Duration::from_millis(base);
        assert!(
            *d >= base / 2 && *d <= base * 3 / 2,
            "{d:?} around {base:?}"
        );
    }
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(150));
}
