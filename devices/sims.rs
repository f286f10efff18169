//! `avbus sim DRIVER --listen ADDR`: runs one device simulator on its own, so an
//! adapter (or a person with a terminal) can talk to it as to the real device.

use std::net::SocketAddr;

/// Simulators `avbus sim` can run, by driver name.
pub const SIMULATORS: &[&str] = &["pjlink", "extron-sis", "qrc", "visca", "x32-osc"];

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
