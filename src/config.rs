//! Configuration: a TOML file (`avbus serve --config FILE`) over embedded defaults.
//!
//! Every key is documented in `docs/operations.md`. Unknown keys and wrong types fail
//! at start, naming the file, line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Who may connect and what each client may do (`docs/security.md`).
    pub auth: AuthConfig,
    /// TLS on the TCP listener; plaintext without this table.
    pub tls: Option<TlsConfig>,
    /// Retained state kept on disk across restarts (off without `dir`).
    pub persist: PersistConfig,
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
    /// Connections at once from one address (IPv6: one /64); further ones are closed
    /// at accept with `limit` (0: no limit).
    pub max_connections_per_address: usize,
    /// Frames one connection may send per second, on average (0: no limit).
    pub client_msgs_per_sec: u32,
    /// Frames one connection may send in a burst above that rate.
    pub client_msg_burst: u32,
    /// Bytes one connection may send per second, on average (0: no limit).
    pub client_bytes_per_sec: u64,
    /// Bytes one connection may send in a burst above that rate.
    pub client_byte_burst: u64,
    /// What happens to a connection over its rate: `throttle` (the bus stops reading
    /// it until it is back under the rate) or `close` (`error limit`, then closed).
    pub over_rate: OverRate,
}

/// The policy for a client over its message or byte rate.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverRate {
    Throttle,
    Close,
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
            max_connections_per_address: 0,
            client_msgs_per_sec: 0,
            client_msg_burst: 1_000,
            client_bytes_per_sec: 0,
            client_byte_burst: 4 << 20,
            over_rate: OverRate::Throttle,
        }
    }
}

/// The retained-state journal (`docs/operations.md`, "Persistence").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistConfig {
    /// Directory holding the journal; persistence is off without it.
    pub dir: Option<PathBuf>,
    /// When the journal is forced to disk: `always` (before a retained publish is
    /// acknowledged), `interval` (every `fsync_interval_ms`) or `never` (the kernel
    /// decides; a clean shutdown still syncs).
    pub fsync: FsyncPolicy,
    /// The longest a written record waits for `fsync` under `interval`, in ms.
    pub fsync_interval_ms: u64,
    /// Bytes of records waiting for the journal's writer; a retained publish past it
    /// is refused (`busy`) until the disk catches up.
    pub max_pending_bytes: usize,
    /// The journal is rewritten with only live topics once it is larger than this
    /// and more than twice their size, in bytes.
    pub compact_min_bytes: u64,
}

/// When the journal is forced to disk.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig {
            dir: None,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 100,
            max_pending_bytes: 16 << 20,
            compact_min_bytes: 8 << 20,
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

/// `[auth]`: credentials, the rules attached to them, and the guessing backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Rules for clients that present no credentials. Without this table, anonymous
    /// clients get everything when the bus listens on loopback only and no
    /// `[[auth.client]]` exists, and are refused otherwise.
    pub anonymous: Option<ClientRules>,
    /// One entry per client or per role.
    #[serde(rename = "client")]
    pub clients: Vec<ClientRules>,
    /// Refusal window after the first failed attempt from an address, in ms; it
    /// doubles with each further failure.
    pub backoff_ms: u64,
    /// Longest refusal window, in ms; an address quiet this long past its window is
    /// forgotten.
    pub backoff_max_ms: u64,
    /// Addresses whose failures are remembered at once; when full, expired entries
    /// go first, then the one whose window ends soonest.
    pub tracked_addresses: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: None,
            clients: Vec::new(),
            backoff_ms: 1_000,
            backoff_max_ms: 60_000,
            tracked_addresses: 4_096,
        }
    }
}

/// One `[[auth.client]]` entry (or the `[auth.anonymous]` table): who, and the rules.
/// Every rule list holds topic filters (`+`, `#`); an absent list allows nothing,
/// except `rooms` and `telemetry`, which default to what `read` allows.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientRules {
    /// The credential's name: in logs, `$clients/<session>` and resume checks.
    pub name: String,
    /// `sha256:<salt>:<digest>` of the client's token (`avbus token new`).
    pub token_hash: Option<String>,
    /// SHA-256 fingerprint of the client's TLS certificate (hex, `:` optional).
    pub cert_sha256: Option<String>,
    /// Everything, including `$sys/...` and `$clients/...` (the operator).
    pub all: bool,
    /// Subscribe and `get`; also the descriptors `$devices/<room>/<device>` of the
    /// devices these filters reach.
    pub read: Vec<String>,
    /// `pub` to topics that are not another adapter's device controls.
    pub publish: Vec<String>,
    /// `set` and `call`.
    pub command: Vec<String>,
    /// Device keys (`<room>/<device>`) this client may declare.
    pub declare: Vec<String>,
    /// Rooms this client may join (and say something in).
    pub rooms: Option<Vec<String>>,
    /// Telemetry streams this client may subscribe to.
    pub telemetry: Option<Vec<String>>,
}

/// `[tls]`: the TCP listener speaks TLS (rustls) with this certificate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the bus's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Ask clients for a certificate; one whose fingerprint an `[[auth.client]]`
    /// names (`cert_sha256`) is that client, with no token needed.
    #[serde(default)]
    pub client_certs: bool,
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
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        // TLS files are relative to the configuration file.
        if let (Some(tls), Some(dir)) = (cfg.tls.as_mut(), path.parent()) {
            tls.cert = dir.join(&tls.cert);
            tls.key = dir.join(&tls.key);
        }
        // So is the journal's directory.
        if let (Some(journal), Some(dir)) = (cfg.persist.dir.as_mut(), path.parent()) {
            *journal = dir.join(&*journal);
        }
        Ok(cfg)
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
            ("limits.client_msg_burst", l.client_msg_burst as usize),
            ("limits.client_byte_burst", l.client_byte_burst as usize),
            ("auth.backoff_ms", self.auth.backoff_ms as usize),
            ("auth.tracked_addresses", self.auth.tracked_addresses),
            ("session.heartbeat_ms", self.session.heartbeat_ms as usize),
            (
                "persist.fsync_interval_ms",
                self.persist.fsync_interval_ms as usize,
            ),
            ("persist.max_pending_bytes", self.persist.max_pending_bytes),
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
        if self.auth.backoff_ms > self.auth.backoff_max_ms {
            return Err("auth.backoff_ms exceeds auth.backoff_max_ms".into());
        }
        crate::auth::Authenticator::new(self).map(|_| ())
    }

    /// Whether a listener accepts connections from beyond this host.
    pub fn beyond_loopback(&self) -> bool {
        !self.listen.tcp.ip().is_loopback()
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
