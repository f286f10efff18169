//! Configuration: a TOML file (`avbus serve --config FILE`) over embedded defaults.
//!
//! Every key is documented in `docs/operations.md`. Unknown keys and wrong types fail
//! at start, naming the file, line and key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: Listen,
    pub limits: Limits,
    pub session: SessionConfig,
    pub commands: CommandConfig,
    pub sys: SysConfig,
    pub telemetry: TelemetryConfig,
    /// Devices whose adapters run inside the bus (`avbus serve`) or in an adapter
    /// process (`avbus adapter`): one `[[device]]` table each.
    #[serde(rename = "device")]
    pub devices: Vec<DeviceConfig>,
}

/// One `[[device]]` entry: which device, which driver, how to reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Room (first topic level).
    pub room: String,
    /// Device name (second topic level); `room/name` is the device's address.
    pub name: String,
    /// Which adapter speaks to it.
    pub driver: String,
    /// Label shown on panels (defaults to the driver's).
    #[serde(default)]
    pub label: Option<String>,
    /// Device (or IP-to-serial gateway) address.
    #[serde(default)]
    pub host: Option<String>,
    /// Device port (defaults to the protocol's).
    #[serde(default)]
    pub port: Option<u16>,
    /// Device password, where the protocol has one.
    #[serde(default)]
    pub password: Option<String>,
    /// Poll interval in ms (defaults to the driver's).
    #[serde(default)]
    pub poll_ms: Option<u64>,
}

/// Where the bus listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// TCP address for the native protocol. Default `127.0.0.1:7420`: loopback only;
    /// opening it to the network is this one explicit line (`0.0.0.0:7420`).
    pub tcp: SocketAddr,
    /// UDP address for telemetry. Default: the TCP address (same IP and port number;
    /// with TCP port 0, a free UDP port).
    pub udp: Option<SocketAddr>,
    /// HTTP and WebSocket address for browsers (the panel at `/`, the WebSocket at
    /// `/ws`). Default `127.0.0.1:7480`; `"off"` serves no HTTP at all.
    #[serde(deserialize_with = "http_addr")]
    pub http: Option<SocketAddr>,
    /// Page origins (`scheme://host[:port]`, e.g. `"https://panels.example.com"`)
    /// besides the bus's own page whose scripts may open the WebSocket. A browser
    /// sends its page's origin with every upgrade; others are refused (403).
    pub allowed_origins: Vec<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            tcp: SocketAddr::from(([127, 0, 0, 1], 7420)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7480))),
            allowed_origins: Vec::new(),
            udp: None,
        }
    }
}

impl Listen {
    /// The UDP telemetry address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp.unwrap_or(self.tcp)
    }
}

/// Telemetry over UDP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Receive buffer asked of the kernel for the UDP socket, in bytes (the kernel
    /// may grant less: see `$sys/telemetry/udp_recv_buffer`).
    pub udp_recv_buffer: usize,
    /// Send buffer asked of the kernel, in bytes.
    pub udp_send_buffer: usize,
    /// A stream with no new value for this long is marked stale, in ms.
    pub stale_ms: u64,
    /// Highest rate a subscriber may ask for; higher requests are lowered to it.
    pub max_hz: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            udp_recv_buffer: 4 << 20,
            udp_send_buffer: 4 << 20,
            stale_ms: 2_000,
            max_hz: 200.0,
        }
    }
}

impl Listen {
    /// Applies `--listen ADDR`. Port 0 asks for free ports: the HTTP listener then
    /// takes a free port on the same address too (unless HTTP is off), so tests and
    /// scripts that run several buses never collide on 7480.
    pub fn set_tcp(&mut self, tcp: SocketAddr) {
        self.tcp = tcp;
        if tcp.port() == 0 && self.http.is_some() {
            self.http = Some(SocketAddr::new(tcp.ip(), 0));
        }
    }
}

fn http_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e} (an address, or \"off\")")))
}

/// Bounds on memory and work. Each is a hard bound with a documented policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame accepted or sent, in bytes.
    pub max_frame_bytes: usize,
    /// Frames queued for one connection before state updates are conflated and
    /// events dropped.
    pub outbox_frames: usize,
    /// Bytes queued for one connection before the same policy applies.
    pub outbox_bytes: usize,
    /// Distinct topics one overflowing connection may hold conflated before the bus
    /// gives up on conflation and sends it a fresh snapshot instead.
    pub conflate_topics: usize,
    /// Updates kept in the replay log for resume.
    pub replay_entries: usize,
    /// Bytes kept in the replay log for resume.
    pub replay_bytes: usize,
    /// Retained topics on the bus; a publish creating one more is refused (`limit`).
    pub max_topics: usize,
    /// Filters one session may hold.
    pub max_filters: usize,
    /// Connections at once; further ones are closed at accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: crate::protocol::DEFAULT_MAX_FRAME,
            outbox_frames: 65536,
            outbox_bytes: 8 << 20,
            conflate_topics: 65536,
            replay_entries: 100_000,
            replay_bytes: 64 << 20,
            max_topics: 1_000_000,
            max_filters: 1024,
            max_connections: 10_000,
        }
    }
}

/// Sessions and liveness.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// How long a disconnected session (subscriptions, rooms, answers) is kept for
    /// resume, in ms.
    pub grace_ms: u64,
    /// How long a new connection has to send `hello`, in ms.
    pub handshake_ms: u64,
    /// Heartbeat interval, in ms: the bus pings an idle connection this often.
    pub heartbeat_ms: u64,
    /// A connection silent for this many intervals is dropped.
    pub heartbeat_misses: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            grace_ms: 30_000,
            handshake_ms: 5_000,
            heartbeat_ms: 5_000,
            heartbeat_misses: 3,
        }
    }
}

/// Command routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// Deadline when a command names none, in ms.
    pub default_timeout_ms: u64,
    /// Longest deadline a command may ask for, in ms.
    pub max_timeout_ms: u64,
    /// Commands in flight to one device before further ones get `busy`.
    pub max_inflight_per_device: usize,
}

impl Default for CommandConfig {
    fn default() -> Self {
        CommandConfig {
            default_timeout_ms: 5_000,
            max_timeout_ms: 120_000,
            max_inflight_per_device: 64,
        }
    }
}

/// The bus's own counters under `$sys/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// How often `$sys/...` topics are refreshed (only those that changed), in ms.
    pub interval_ms: u64,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_ms: 1_000 }
    }
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and, for parse errors, the line and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming `origin`, the line and the key.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.check().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let l = &self.limits;
        let nonzero = [
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.outbox_frames", l.outbox_frames),
            ("limits.outbox_bytes", l.outbox_bytes),
            ("limits.replay_entries", l.replay_entries),
            ("limits.max_topics", l.max_topics),
            ("limits.max_filters", l.max_filters),
            ("limits.max_connections", l.max_connections),
            ("session.heartbeat_ms", self.session.heartbeat_ms as usize),
            ("session.handshake_ms", self.session.handshake_ms as usize),
            (
                "session.heartbeat_misses",
                self.session.heartbeat_misses as usize,
            ),
            (
                "commands.default_timeout_ms",
                self.commands.default_timeout_ms as usize,
            ),
            (
                "commands.max_inflight_per_device",
                self.commands.max_inflight_per_device,
            ),
            ("sys.interval_ms", self.sys.interval_ms as usize),
            ("telemetry.stale_ms", self.telemetry.stale_ms as usize),
        ];
        for (key, v) in nonzero {
            if v == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if !(self.telemetry.max_hz.is_finite() && self.telemetry.max_hz > 0.0) {
            return Err("telemetry.max_hz must be a number above 0".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let at = format!("[[device]] #{} ({}/{})", i + 1, d.room, d.name);
            crate::model::check_level("room", &d.room).map_err(|e| format!("{at}: {e}"))?;
            crate::model::check_level("name", &d.name).map_err(|e| format!("{at}: {e}"))?;
            if !seen.insert((d.room.as_str(), d.name.as_str())) {
                return Err(format!("{at}: declared twice"));
            }
            if d.poll_ms == Some(0) {
                return Err(format!("{at}: poll_ms must be greater than 0"));
            }
            crate::devices::registry::check(d).map_err(|e| format!("{at}: {e}"))?;
        }
        for o in &self.listen.allowed_origins {
            crate::gateway::check_origin_entry(o)
                .map_err(|e| format!("listen.allowed_origins: {e}"))?;
        }
        if l.max_frame_bytes > u32::MAX as usize {
            return Err("limits.max_frame_bytes must fit in 32 bits".into());
        }
        if self.commands.default_timeout_ms > self.commands.max_timeout_ms {
            return Err("commands.default_timeout_ms exceeds commands.max_timeout_ms".into());
        }
        Ok(())
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.session.heartbeat_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.listen.tcp.to_string(), "127.0.0.1:7420");
        assert_eq!(c.listen.http, Some("127.0.0.1:7480".parse().unwrap()));
    }

    #[test]
    fn http_can_be_off_and_follows_port_zero() {
        let c = Config::parse("[listen]\nhttp = \"off\"\n", "x.toml").unwrap();
        assert_eq!(c.listen.http, None);
        let e = Config::parse("[listen]\nhttp = \"nowhere\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("off"), "{e}");
        let mut l = Listen::default();
        l.set_tcp("0.0.0.0:0".parse().unwrap());
        assert_eq!(l.http, Some("0.0.0.0:0".parse().unwrap()));
        let mut l = Listen::default();
        l.set_tcp("127.0.0.1:9000".parse().unwrap());
        assert_eq!(l.http.unwrap().port(), 7480);
    }

    #[test]
    fn allowed_origins_are_checked() {
        let ok = "[listen]\nallowed_origins = [\"https://panels.example.com\"]\n";
        assert!(Config::parse(ok, "x.toml").is_ok());
        let bad = "[listen]\nallowed_origins = [\"panels.example.com/\"]\n";
        let e = Config::parse(bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("allowed_origins"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = Config::parse("[limits]\nmax_frame_bytes = 10\nbogus = 1\n", "site.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("site.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_value() {
        let e = Config::parse("[session]\ngrace_ms = \"long\"\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("grace_ms"), "{e}");
        let e = Config::parse("[limits]\noutbox_frames = 0\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.outbox_frames"), "{e}");
    }
}
