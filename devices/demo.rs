//! `avbus demo`: the bus, a simulator for each device protocol, and each device's
//! adapter hosted in-process — two rooms you can poke at from the CLI.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::registry::host_all;
use super::sims::AnySim;
use crate::bus::{ready_line, start};
use crate::client::{Client, ClientOptions};
use crate::config::{Config, DeviceConfig};
use crate::protocol::Role;

/// The demo's devices: (room, name, driver). A `virtual` device would need no
/// simulator (its hardware is in-process); every device here has one.
pub const DEVICES: &[(&str, &str, &str)] = &[
    ("boardroom", "projector", "pjlink"),
    ("boardroom", "switcher", "extron-sis"),
    ("hall", "dsp", "qrc"),
    ("hall", "camera", "visca"),
    ("hall", "console", "x32-osc"),
];

/// Runs the demo until `shutdown` resolves.
///
/// # Errors
/// Bind errors, or a simulator that cannot start.
pub async fn run(
    listen: Option<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = Config::default();
    if let Some(l) = listen {
        cfg.listen.set_tcp(l);
    }
    let handle = match start(cfg.clone()).await {
        Ok(h) => h,
        Err(e) if listen.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!("{e}; using free ports");
            cfg.listen.set_tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
            start(cfg).await?
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", ready_line(&handle));

    // One simulator per device, on free loopback ports, with realistic timings.
    let mut sims = Vec::new();
    let mut devices = Vec::new();
    let mut started = String::new();
    for (room, name, driver) in DEVICES {
        if *driver == "virtual" {
            started.push_str(&format!("\n  {room}/{name:<10} {driver:<11} in-process"));
            devices.push(DeviceConfig {
                room: (*room).into(),
                name: (*name).into(),
                driver: (*driver).into(),
                label: None,
                host: None,
                port: None,
                password: None,
                poll_ms: None,
            });
            continue;
        }
        let sim = AnySim::start(driver, SocketAddr::from(([127, 0, 0, 1], 0)), None, false).await?;
        let addr = sim.addr();
        started.push_str(&format!(
            "\n  {room}/{name:<10} {driver:<11} simulator on {} {addr}",
            if sim.udp() { "udp" } else { "tcp" }
        ));
        devices.push(DeviceConfig {
            room: (*room).into(),
            name: (*name).into(),
            driver: (*driver).into(),
            label: None,
            host: Some(addr.ip().to_string()),
            port: Some(addr.port()),
            password: None,
            poll_ms: None,
        });
        sims.push(sim);
    }
    let cancel = CancellationToken::new();
    // The demo's adapters may declare exactly their devices, nothing else.
    let keys: Vec<String> = devices
        .iter()
        .map(|d| format!("{}/{}", d.room, d.name))
        .collect();
    let grant = crate::auth::Grant::adapter_for("demo-adapters", &keys)?;
    let local = handle.local().with_grant(grant);
    let opts = ClientOptions::local(local, "demo-adapters").role(Role::Adapter);
    let client = Client::connect(opts).await?;
    let c = cancel.clone();
    let hosted = tokio::spawn(async move { host_all(client, &devices, c).await });

    let bus = if handle.tcp.port() == 7420 && handle.tcp.ip().is_loopback() {
        String::new()
    } else {
        format!(" --bus {}", handle.tcp)
    };
    if let Some(http) = handle.http {
        println!("\navbus demo: the panel is at http://{http}/");
    }
    println!(
        "\navbus demo: bus on {tcp}; device simulators and their adapters:{started}\n\
         \nTry, in another terminal (export AVBUS_ADDR={tcp} to drop --bus):\n\
         \n  cargo run --release -- devices{bus}\
         \n  cargo run --release -- sub{bus} 'boardroom/#'\
         \n  cargo run --release -- set{bus} boardroom/projector/power on     # warming up, then on\
         \n  cargo run --release -- set{bus} boardroom/projector/input 31\
         \n  cargo run --release -- set{bus} boardroom/switcher/out01_video 3\
         \n  cargo run --release -- set{bus} hall/dsp/Program.gain -12.5\
         \n  cargo run --release -- set{bus} hall/dsp/Program.gain 99         # invalid_value, names the range\
         \n  cargo run --release -- get{bus} --full hall/dsp/Program.gain\
         \n  cargo run --release -- call{bus} hall/camera/recall '{{\"preset\": 1}}'\
         \n  cargo run --release -- set{bus} hall/console/ch01_fader_db -10   # the lectern mic, on the console's fader law\
         \n  cargo run --release -- set{bus} hall/console/ch07_mute true\
         \n  cargo run --release -- get{bus} hall/console/meters              # 32 channel levels in dBFS, 20 Hz\
         \n  cargo run --release -- sub{bus} --telemetry --hz 5 hall/console/meters  # the same, streamed over UDP\
         \n  cargo run --release -- sub{bus} --full '$sys/#'\
         \n\nCtrl-C stops the demo.",
        tcp = handle.tcp
    );
    tokio::select! {
        _ = shutdown => {}
        r = hosted => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "adapters stopped"),
                Err(e) => tracing::error!(error = %e, "adapters panicked"),
            }
        }
    }
    cancel.cancel();
    for s in sims {
        s.stop().await;
    }
    handle.shutdown().await;
    Ok(())
}
