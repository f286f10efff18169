//! The drivers an installation can name in `[[device]]`, and how a configured device
//! is started on an adapter [`Host`].

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::kit::Host;
use super::{extron, pjlink, qrc, virtual_room, visca, x32};
use crate::config::DeviceConfig;

/// Driver names accepted in `[[device]] driver = "..."`.
pub const DRIVERS: &[&str] = &["pjlink", "extron-sis", "qrc", "visca", "x32-osc", "virtual"];

/// Checks a `[[device]]` entry against its driver's needs.
///
/// # Errors
/// A message naming the key that is wrong or missing.
pub fn check(d: &DeviceConfig) -> Result<(), String> {
    match d.driver.as_str() {
        "pjlink" => pjlink::adapter::check(d),
        "extron-sis" => extron::adapter::check(d),
        "qrc" => qrc::adapter::check(d),
        "visca" => visca::adapter::check(d),
        "x32-osc" => x32::adapter::check(d),
        "virtual" => virtual_room::check(d),
        other => Err(format!(
            "unknown driver {other:?} (known: {})",
            DRIVERS.join(", ")
        )),
    }
}

/// Starts the configured device on `host` until `cancel`.
///
/// # Errors
/// The same as [`check`].
pub fn spawn(
    host: &Host,
    d: &DeviceConfig,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, String> {
    check(d)?;
    match d.driver.as_str() {
        "pjlink" => Ok(pjlink::adapter::spawn(host, d, cancel)),
        "extron-sis" => Ok(extron::adapter::spawn(host, d, cancel)),
        "qrc" => Ok(qrc::adapter::spawn(host, d, cancel)),
        "visca" => Ok(visca::adapter::spawn(host, d, cancel)),
        "x32-osc" => Ok(x32::adapter::spawn(host, d, cancel)),
        "virtual" => Ok(virtual_room::spawn(host, d, cancel)),
        other => Err(format!("unknown driver {other:?}")),
    }
}

/// Connects `client` as an adapter host and starts every configured device;
/// resolves when `cancel` fires and every device task has ended.
///
/// # Errors
/// A device entry its driver refuses.
pub async fn host_all(
    client: crate::client::Client,
    devices: &[DeviceConfig],
    cancel: CancellationToken,
) -> Result<(), String> {
    let host = Host::start(client.clone()).await;
    let mut tasks = Vec::new();
    for d in devices {
        tasks.push(spawn(&host, d, cancel.clone())?);
    }
    for t in tasks {
        let _ = t.await;
    }
    client.close().await;
    Ok(())
}
