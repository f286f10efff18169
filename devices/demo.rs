//! `avbus demo`: the bus with simulated devices hosted in-process, and a tour.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::bus::{ready_line, start};
use crate::client::ClientOptions;
use crate::config::Config;

/// The room the demo's virtual devices live in.
pub const DEMO_ROOM: &str = "studio";

/// Runs the demo until `shutdown` resolves.
///
/// # Errors
/// Bind errors, or the virtual room failing to declare its devices.
pub async fn run(
    listen: Option<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = Config::default();
    if let Some(l) = listen {
        cfg.listen.tcp = l;
    }
    let handle = match start(cfg.clone()).await {
        Ok(h) => h,
        Err(e) if listen.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!("127.0.0.1:7420 is taken; using a free port");
            cfg.listen.tcp = SocketAddr::from(([127, 0, 0, 1], 0));
            start(cfg).await?
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", ready_line(&handle));
    let cancel = CancellationToken::new();
    let room_cancel = cancel.clone();
    let opts = ClientOptions::local(handle.local(), "virtual-room");
    let room =
        tokio::spawn(async move { super::virtual_room::run(opts, DEMO_ROOM, room_cancel).await });

    let bus = if handle.tcp.port() == 7420 && handle.tcp.ip().is_loopback() {
        String::new()
    } else {
        format!(" --bus {}", handle.tcp)
    };
    println!(
        "\navbus demo: bus on {tcp}, virtual room `{DEMO_ROOM}` (projector, mixer, camera) hosted in-process.\n\
         Try, in another terminal (export AVBUS_ADDR={tcp} to drop --bus):\n\
         \n  cargo run --release -- devices{bus}\
         \n  cargo run --release -- sub{bus} '{DEMO_ROOM}/#'\
         \n  cargo run --release -- set{bus} {DEMO_ROOM}/projector/power on      # warming, then on\
         \n  cargo run --release -- set{bus} {DEMO_ROOM}/mixer/volume -12.5\
         \n  cargo run --release -- set{bus} {DEMO_ROOM}/mixer/volume 99         # invalid_value, names the rule\
         \n  cargo run --release -- get{bus} --full {DEMO_ROOM}/mixer/volume\
         \n  cargo run --release -- call{bus} {DEMO_ROOM}/camera/recall '{{\"preset\": 2}}'\
         \n  cargo run --release -- pub{bus} --retain {DEMO_ROOM}/scene '\"presentation\"'\
         \n  cargo run --release -- sub{bus} --full '$sys/#'\
         \n\nCtrl-C stops the demo.",
        tcp = handle.tcp
    );
    tokio::select! {
        _ = shutdown => {}
        r = room => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "virtual room stopped"),
                Err(e) => tracing::error!(error = %e, "virtual room panicked"),
            }
        }
    }
    cancel.cancel();
    handle.shutdown().await;
    Ok(())
}
