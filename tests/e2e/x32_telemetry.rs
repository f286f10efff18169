//! The X32 console's meters as telemetry: the simulated desk sends meters at 100 Hz,
//! the adapter (its own TCP client, so its values travel as UDP `publish` datagrams)
//! hands them to the bus, and panels subscribed at 20 Hz get the newest frame at that
//! rate, never a backlog; a panel that stops reading changes nothing for the others;
//! a console that goes silent leaves its meters stale. Every wait is bounded.

use std::time::Instant;

use avbus::client::TelemetryValue;
use avbus::devices::kit::Host;
use avbus::devices::x32::adapter::X32Settings;
use avbus::devices::x32::sim::{Sim, SimConfig};
use avbus::model::Quality;
use avbus::protocol::Role;
use avbus::value::Value;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const METERS: &str = "hall/console/meters";

#[tokio::test]
async fn console_meters_reach_panels_at_their_rate_and_go_stale_when_the_desk_falls_silent() {
    let sim = Sim::start("127.0.0.1:0".parse().unwrap(), SimConfig::fast())
        .await
        .unwrap();
    let mut cfg = config();
    cfg.telemetry.stale_ms = 300;
    let bus = bus(cfg).await;
    let host = Host::start(client(&bus, "x32-adapter", Role::Adapter).await).await;
    let cancel = CancellationToken::new();
    let settings = X32Settings::from_device(&x32_entry(sim.addr())).unwrap();
    host.spawn(move || settings.driver(), cancel.clone());

    // One panel never reads its telemetry; another reads at 20 Hz.
    let idle = client(&bus, "idle-panel", Role::Panel).await;
    let _idle_sub = idle.telemetry(METERS, 200.0).await.unwrap();
    let panel = client(&bus, "panel", Role::Panel).await;
    let mut sub = panel.telemetry(METERS, 20.0).await.unwrap();

    // The first frame, then 40 more, timed.
    let first = within("the first meter frame", sub.recv()).await.unwrap();
    assert_eq!(&*first.topic, METERS);
    let t0 = Instant::now();
    let mut seen: Vec<TelemetryValue> = Vec::new();
    while seen.len() < 40 {
        let v = within("meter frames", sub.recv()).await.unwrap();
        if !v.stale {
            seen.push(v);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // 32 channels of dBFS each frame, and the meters move.
    let Value::Array(levels) = &seen[0].value else {
        panic!("meters are an array: {:?}", seen[0].value)
    };
    assert_eq!(levels.len(), 32);
    assert!(seen.windows(2).any(|w| w[0].value != w[1].value));
    // At most 20 a second (generous slack for timer jitter), and the desk's 100 Hz
    // were conflated: the stream's sequence skipped values.
    assert!(
        seen.len() as f64 <= secs * 20.0 + 3.0,
        "{} frames in {secs:.2} s at 20 Hz",
        seen.len()
    );
    let st = sub.stats();
    assert!(st.streams[METERS].skipped > 0, "{st:?}");
    assert_eq!(st.dropped_local, 0);

    // The desk goes silent: the bus marks its meters stale, keeping the last frame,
    // and that is what `get` holds too.
    sim.stop().await;
    let stale = within("a stale frame", async {
        loop {
            let v = sub.recv().await.unwrap();
            if v.stale {
                return v;
            }
        }
    })
    .await;
    let got = panel.get(METERS).await.unwrap().unwrap();
    assert_eq!(got.value, stale.value);
    assert!(matches!(
        got.quality,
        Some(Quality::Stale) | Some(Quality::Offline)
    ));
    cancel.cancel();
}
