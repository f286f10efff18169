//! `avbus sim DRIVER --listen ADDR [--count N]`: runs device simulators on their own,
//! so an adapter (or a person with a terminal) can talk to them as to real devices.
//! Several at once serve benchmarks of many devices (`avbus bench --workload devices`).

use std::net::SocketAddr;

/// Simulators `avbus sim` can run, by driver name.
pub const SIMULATORS: &[&str] = &["pjlink", "extron-sis", "qrc", "visca", "x32-osc"];

/// Most simulators one `avbus sim --count` runs: each holds a listening socket and its
/// controllers' connections, so this bounds the process's file descriptors.
pub const MAX_COUNT: usize = 10_000;

/// Starts `count` simulators of `driver` (see [`AnySim::start`]): each on a free port
/// when `listen`'s port is 0, otherwise on that port and the ones after it.
///
/// # Errors
/// A `count` of 0 or over [`MAX_COUNT`], ports past 65535, or the first simulator
/// that cannot start (those already started are stopped).
pub async fn start_many(
    driver: &str,
    listen: SocketAddr,
    count: usize,
    password: Option<String>,
    fast: bool,
) -> Result<Vec<AnySim>, String> {
    if count == 0 || count > MAX_COUNT {
        return Err(format!("--count must be 1 to {MAX_COUNT}, not {count}"));
    }
    let mut sims = Vec::with_capacity(count);
    for i in 0..count {
        let port = match listen.port() {
            0 => Some(0),
            first => u16::try_from(i).ok().and_then(|i| first.checked_add(i)),
        };
        let started = match port {
            Some(port) => {
                let at = SocketAddr::new(listen.ip(), port);
                AnySim::start(driver, at, password.clone(), fast).await
            }
            None => Err(format!("{count} ports from {listen} go past 65535")),
        };
        match started {
            Ok(sim) => sims.push(sim),
            Err(e) => {
                for sim in sims {
                    sim.stop().await;
                }
                return Err(e);
            }
        }
    }
    Ok(sims)
}

/// The line `avbus sim` prints once every simulator listens:
/// `{"ready":{"tcp":"<first>","driver":"<driver>","addrs":["<first>", …]}}` (`udp`
/// instead of `tcp` for VISCA).
pub fn ready_line(driver: &str, sims: &[AnySim]) -> String {
    let proto = match sims.first() {
        Some(s) if s.udp() => "udp",
        _ => "tcp",
    };
    let addrs: Vec<String> = sims.iter().map(|s| s.addr().to_string()).collect();
    let mut ready = serde_json::Map::new();
    ready.insert(
        proto.into(),
        addrs.first().cloned().unwrap_or_default().into(),
    );
    ready.insert("driver".into(), driver.into());
    ready.insert("addrs".into(), addrs.into());
    serde_json::json!({ "ready": ready }).to_string()
}

/// A running simulator of any kind.
pub enum AnySim {
    Pjlink(super::pjlink::sim::Sim),
    Extron(super::extron::sim::Sim),
    Qrc(super::qrc::sim::Sim),
    Visca(super::visca::sim::Sim),
    X32(super::x32::sim::Sim),
}

impl AnySim {
    /// Starts the simulator for `driver` with realistic timings (or test timings when
    /// `fast`), and the device password when given.
    ///
    /// # Errors
    /// An unknown driver, a bind error, or an option the device does not have.
    pub async fn start(
        driver: &str,
        listen: SocketAddr,
        password: Option<String>,
        fast: bool,
    ) -> Result<AnySim, String> {
        let io = |e: std::io::Error| format!("{listen}: {e}");
        Ok(match driver {
            "pjlink" => {
                use super::pjlink::sim::{Sim, SimConfig};
                let mut cfg = if fast {
                    SimConfig::fast()
                } else {
                    SimConfig::default()
                };
                cfg.password = password;
                AnySim::Pjlink(Sim::start(listen, cfg).await.map_err(io)?)
            }
            "extron-sis" => {
                use super::extron::sim::{Sim, SimConfig};
                let mut cfg = if fast {
                    SimConfig::fast()
                } else {
                    SimConfig::default()
                };
                cfg.password = password;
                AnySim::Extron(Sim::start(listen, cfg).await.map_err(io)?)
            }
            "qrc" => {
                use super::qrc::sim::{Sim, SimConfig};
                let mut cfg = if fast {
                    SimConfig::fast()
                } else {
                    SimConfig::default()
                };
                // `user:password`, as the adapter takes it.
                cfg.credentials = password.map(|p| match p.split_once(':') {
                    Some((u, p)) => (u.to_owned(), p.to_owned()),
                    None => (String::new(), p),
                });
                AnySim::Qrc(Sim::start(listen, cfg).await.map_err(io)?)
            }
            "visca" => {
                use super::visca::sim::{Sim, SimConfig};
                if password.is_some() {
                    return Err("VISCA over IP has no password".into());
                }
                let cfg = if fast {
                    SimConfig::fast()
                } else {
                    SimConfig::default()
                };
                AnySim::Visca(Sim::start(listen, cfg).await.map_err(io)?)
            }
            "x32-osc" => {
                use super::x32::sim::{Sim, SimConfig};
                if password.is_some() {
                    return Err("an X32 console's OSC has no password".into());
                }
                let cfg = if fast {
                    SimConfig::fast()
                } else {
                    SimConfig::default()
                };
                AnySim::X32(Sim::start(listen, cfg).await.map_err(io)?)
            }
            other => {
                return Err(format!(
                    "no simulator for {other:?} (known: {})",
                    SIMULATORS.join(", ")
                ))
            }
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            AnySim::Pjlink(s) => s.addr(),
            AnySim::Extron(s) => s.addr(),
            AnySim::Qrc(s) => s.addr(),
            AnySim::Visca(s) => s.addr(),
            AnySim::X32(s) => s.addr(),
        }
    }

    /// Whether the device speaks UDP (VISCA, OSC) rather than TCP.
    pub fn udp(&self) -> bool {
        matches!(self, AnySim::Visca(_) | AnySim::X32(_))
    }

    /// Stops it: the listener and every connection close.
    pub async fn stop(self) {
        match self {
            AnySim::Pjlink(s) => s.stop().await,
            AnySim::Extron(s) => s.stop().await,
            AnySim::Qrc(s) => s.stop().await,
            AnySim::Visca(s) => s.stop().await,
            AnySim::X32(s) => s.stop().await,
        }
    }
}
