//! The `avbus` command line: `serve`, `demo`, and the integrator's tools (`sub`,
//! `get`, `set`, `call`, `pub`, `devices`).
//!
//! Exit codes: 0 success; 1 the bus answered with an error, or `get` found nothing;
//! 2 usage errors and connection failures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;

use crate::client::{Client, ClientOptions, SubEvent};
use crate::config::Config;
use crate::protocol::{Role, Update};
use crate::tls::TlsClient;
use crate::value::{from_cli_arg, to_json, to_json_string, Value};

/// avbus: a low-latency event bus for networked AV control.
#[derive(Parser, Debug)]
#[command(name = "avbus", version, about)]
pub struct Cli {
    /// Log level when RUST_LOG is unset (error, warn, info, debug, trace).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The bus to talk to, and how.
#[derive(Args, Debug, Clone)]
pub struct BusArg {
    /// Bus address (host:port).
    #[arg(long, env = "AVBUS_ADDR", default_value = "127.0.0.1:7420")]
    pub bus: String,
    /// Connect with TLS (needs --ca).
    #[arg(long, env = "AVBUS_TLS")]
    pub tls: bool,
    /// PEM file of the CA certificate(s) to trust for the bus's certificate; implies
    /// --tls.
    #[arg(long, env = "AVBUS_CA")]
    pub ca: Option<PathBuf>,
    /// Name to check in the bus's certificate (default: the host of --bus).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Client certificate (PEM) to present over TLS, with --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Token to present (`avbus token new` makes one); prefer the environment
    /// variable, which other users of the machine cannot read from the process list.
    #[arg(long, env = "AVBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl BusArg {
    /// Client options for this bus: TLS and token as given, no reconnect.
    ///
    /// # Errors
    /// A message for a TLS setting that cannot be used.
    pub fn options(&self, name: &str) -> Result<ClientOptions, String> {
        let mut opts = if self.tls || self.ca.is_some() {
            let ca = self
                .ca
                .as_deref()
                .ok_or("--tls needs --ca FILE (the CA certificate that signed the bus's)")?;
            let own = self.cert.as_deref().zip(self.key.as_deref());
            let mut tls = TlsClient::from_files(ca, own).map_err(|e| e.to_string())?;
            tls.server_name = self.server_name.clone();
            ClientOptions::tls(&self.bus, name, tls)
        } else {
            ClientOptions::tcp(&self.bus, name)
        };
        if let Some(t) = &self.token {
            opts = opts.token(t);
        }
        Ok(opts.role(Role::Tool).reconnect(false))
    }
}

/// `avbus token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new random token; prints it, and the `[[auth.client]]` entry holding
    /// its hash for the bus's configuration.
    New {
        /// The client's name in the configuration.
        #[arg(long, default_value = "panel")]
        name: String,
    },
    /// Print the hash line of an existing token (read from standard input).
    Hash,
    /// Print the SHA-256 fingerprint of a PEM certificate, for `cert_sha256`.
    Fingerprint { cert: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the bus from a config file (embedded defaults without one).
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// TCP listen address, overriding the config (port 0 picks a free port, and a
        /// free HTTP port on the same address too).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the configured devices' adapters as their own process, connected to a bus.
    Adapter {
        #[command(flatten)]
        bus: BusArg,
        /// TOML file with `[[device]]` entries (the same as `avbus serve` takes).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run device simulators (pjlink, extron-sis, qrc, visca, x32-osc) until Ctrl-C.
    Sim {
        /// Which device to simulate.
        driver: String,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Device password (QRC: `user:password`).
        #[arg(long)]
        password: Option<String>,
        /// Test timings (near-instant transitions) instead of realistic ones.
        #[arg(long)]
        fast: bool,
        /// How many simulators to run: on free ports when --listen has port 0,
        /// otherwise on consecutive ports from it. The ready line lists them all.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Run the bus with simulated devices and print a tour.
    Demo {
        /// TCP listen address (default 127.0.0.1:7420, or a free port if taken).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Print updates of topics matching FILTER (snapshot first, then live).
    Sub {
        #[command(flatten)]
        bus: BusArg,
        /// One or more filters (`+` one level, `#` the rest).
        #[arg(required = true)]
        filters: Vec<String>,
        /// Exit after this many updates.
        #[arg(long)]
        count: Option<u64>,
        /// Prefix each line with the sequence number.
        #[arg(long)]
        seq: bool,
        /// Print the whole state record as JSON.
        #[arg(long)]
        full: bool,
        /// Subscribe to telemetry (meter streams over UDP) instead of state.
        #[arg(long)]
        telemetry: bool,
        /// Telemetry: most batches a second.
        #[arg(long, default_value_t = 10.0)]
        hz: f64,
    },
    /// Print a topic's retained value as JSON (exit 1 if it has none).
    Get {
        #[command(flatten)]
        bus: BusArg,
        topic: String,
        /// Print the whole state record as JSON.
        #[arg(long)]
        full: bool,
    },
    /// Write a control's value (VALUE is JSON, or a bare word taken as a string).
    Set {
        #[command(flatten)]
        bus: BusArg,
        topic: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Command deadline in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Fire a trigger, with optional JSON arguments.
    Call {
        #[command(flatten)]
        bus: BusArg,
        topic: String,
        #[arg(allow_hyphen_values = true)]
        value: Option<String>,
        /// Command deadline in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Publish a value (an event, or retained state with --retain).
    Pub {
        #[command(flatten)]
        bus: BusArg,
        topic: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Keep it as the topic's state.
        #[arg(long)]
        retain: bool,
    },
    /// Run the avbus benchmark workloads (against --bus, or a bus it starts).
    Bench {
        /// Bus to measure; without it, a bus is started as its own process.
        #[arg(long)]
        bus: Option<String>,
        /// Workloads to run (repeatable): rtt, throughput, fanout, fanin, snapshot,
        /// site, connections, command, tingest, tfanout, tflood. Default: all of these.
        /// Only when named, each on buses of its own: `devices` (latency through bus,
        /// adapters and simulators) and `journal` (the cost of `[persist]` and the
        /// recovery of 100,000 topics).
        #[arg(long = "workload")]
        workloads: Vec<String>,
        /// Multiply message counts and durations (e.g. 0.1 for a quick run).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Device counts the `devices` workload measures, comma-separated.
        #[arg(long = "devices", value_delimiter = ',', default_values_t = crate::bench::DEVICE_STEPS)]
        device_steps: Vec<usize>,
    },
    /// Soak a bus: panels connecting, commanding and dropping at random against
    /// simulated devices for a bounded time, then checks of memory, descriptors and
    /// state (exit 1 when a check fails).
    Soak {
        /// Length of the load in minutes (default 10).
        #[arg(long, conflicts_with = "seconds")]
        minutes: Option<u64>,
        /// Length of the load in seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Panels connected at once (each connects, drops and comes back again).
        #[arg(long, default_value_t = 300)]
        panels: usize,
        /// Extron switchers simulated (4 to a room), plus an X32 console per 20.
        #[arg(long, default_value_t = 40)]
        devices: usize,
        /// Seed of the panels' choices (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Credentials: make tokens, hash them, fingerprint client certificates.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List devices: class, driver, online or offline.
    Devices {
        #[command(flatten)]
        bus: BusArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Prints a line on stdout; a closed pipe (`avbus sub ... | head`) ends the command
/// quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if writeln!(out, $($arg)*).and_then(|_| out.flush()).is_err() {
            return Err(ExitCode::SUCCESS);
        }
    }};
}

/// The JSON form of a whole update record (`--full`).
pub fn record_json(u: &Update) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("seq".into(), u.seq.0.into());
    m.insert("topic".into(), u.topic.clone().into());
    m.insert("value".into(), to_json(&u.value));
    m.insert("time".into(), u.time.into());
    m.insert("retain".into(), u.retain.into());
    if let Some(q) = u.quality {
        m.insert("quality".into(), q.as_str().into());
    }
    if let Some(p) = u.position {
        m.insert("position".into(), serde_json::json!(p));
    }
    if let Some(d) = &u.display {
        m.insert("display".into(), d.clone().into());
    }
    if let Some(t) = &u.target {
        m.insert("target".into(), to_json(t));
    }
    if let Some(d) = u.deadline {
        m.insert("deadline".into(), d.into());
    }
    serde_json::Value::Object(m)
}

async fn connect(bus: &BusArg, name: &str) -> Result<Client, ExitCode> {
    connect_with(bus, name, |o| o).await
}

async fn connect_with(
    bus: &BusArg,
    name: &str,
    adjust: impl FnOnce(ClientOptions) -> ClientOptions,
) -> Result<Client, ExitCode> {
    let opts = bus.options(name).map_err(|e| {
        eprintln!("avbus: {e}");
        ExitCode::from(2)
    })?;
    Client::connect(adjust(opts)).await.map_err(|e| {
        eprintln!("avbus: {}: {e}", bus.bus);
        ExitCode::from(2)
    })
}

/// Runs a client command (everything but `serve` and `demo`).
pub async fn run_tool(cmd: Command) -> ExitCode {
    match tool(cmd).await {
        Ok(code) | Err(code) => code,
    }
}

async fn tool(cmd: Command) -> Result<ExitCode, ExitCode> {
    match cmd {
        Command::Sub {
            bus,
            filters,
            count,
            seq,
            full,
            telemetry,
            hz,
        } => {
            let client = connect(&bus, "avbus-sub").await?;
            if telemetry {
                return sub_telemetry(&client, &filters, hz, count).await;
            }
            let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
            let mut sub = client.subscribe(&refs).await.map_err(|e| {
                eprintln!("avbus: {e}");
                ExitCode::from(1)
            })?;
            let mut seen = 0u64;
            if count == Some(0) {
                return Ok(ExitCode::SUCCESS);
            }
            while let Some(ev) = sub.next().await {
                let SubEvent::Update(u) = ev else { continue };
                if full {
                    outln!("{}", record_json(&u));
                } else if seq {
                    outln!("{} {} {}", u.seq.0, u.topic, to_json_string(&u.value));
                } else {
                    outln!("{} {}", u.topic, to_json_string(&u.value));
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { bus, topic, full } => {
            let client = connect(&bus, "avbus-get").await?;
            let got = client.get(&topic).await;
            client.close().await;
            match got {
                Ok(Some(u)) => {
                    if full {
                        outln!("{}", record_json(&u));
                    } else {
                        outln!("{}", to_json_string(&u.value));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Ok(None) => {
                    eprintln!("{topic}: no retained value");
                    Err(ExitCode::from(1))
                }
                Err(e) => {
                    eprintln!("avbus: {e}");
                    Err(ExitCode::from(1))
                }
            }
        }
        Command::Set {
            bus,
            topic,
            value,
            timeout_ms,
        } => {
            let client = connect_with(&bus, "avbus-set", |mut o| {
                o.command_timeout = Duration::from_millis(timeout_ms);
                o
            })
            .await?;
            let r = client.set(&topic, from_cli_arg(&value)).await;
            client.close().await;
            print_reply(r)
        }
        Command::Call {
            bus,
            topic,
            value,
            timeout_ms,
        } => {
            let client = connect_with(&bus, "avbus-call", |mut o| {
                o.command_timeout = Duration::from_millis(timeout_ms);
                o
            })
            .await?;
            let args = value.as_deref().map_or(Value::Nil, from_cli_arg);
            let r = client.call(&topic, args).await;
            client.close().await;
            print_reply(r)
        }
        Command::Pub {
            bus,
            topic,
            value,
            retain,
        } => {
            let client = connect(&bus, "avbus-pub").await?;
            let r = client.publish(&topic, from_cli_arg(&value), retain).await;
            client.close().await;
            match r {
                Ok(seq) => {
                    outln!("ok {}", seq.0);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Err(ExitCode::from(1))
                }
            }
        }
        Command::Devices { bus, json } => {
            let client = connect(&bus, "avbus-devices").await?;
            let rows = devices(&client).await.map_err(|e| {
                eprintln!("avbus: {e}");
                ExitCode::from(1)
            })?;
            client.close().await;
            if json {
                outln!("{}", serde_json::Value::Array(rows));
            } else {
                outln!("{:<32} {:<12} {:<12} STATE", "DEVICE", "CLASS", "DRIVER");
                for r in rows {
                    let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                    let state = if r["online"].as_bool() == Some(true) {
                        "online"
                    } else {
                        "offline"
                    };
                    outln!(
                        "{:<32} {:<12} {:<12} {state}",
                        s("device"),
                        s("class"),
                        s("driver")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            bus,
            workloads,
            scale,
            device_steps,
        } => {
            // Workloads that start their own buses: only when named, never with --bus.
            let (devices, journal) = (crate::bench::DEVICES, crate::bench::JOURNAL);
            let own = [devices, journal];
            for w in &workloads {
                if !crate::bench::WORKLOADS.contains(&w.as_str()) && !own.contains(&w.as_str()) {
                    eprintln!(
                        "avbus bench: unknown workload {w:?} (known: {}, {devices}, {journal})",
                        crate::bench::WORKLOADS.join(", ")
                    );
                    return Err(ExitCode::from(2));
                }
            }
            let max = crate::devices::sims::MAX_COUNT;
            if let Some(n) = device_steps.iter().find(|n| **n == 0 || **n > max) {
                eprintln!("avbus bench: --devices {n}: 1 to {max}");
                return Err(ExitCode::from(2));
            }
            let named = |name: &str| workloads.iter().any(|w| w == name);
            if let (Some(w), Some(_)) = (own.iter().find(|w| named(w)), &bus) {
                eprintln!("avbus bench: the {w} workload runs its own bus; leave out --bus");
                return Err(ExitCode::from(2));
            }
            let others: Vec<String> = workloads
                .iter()
                .filter(|w| !own.contains(&w.as_str()))
                .cloned()
                .collect();
            let failed = |e: String| {
                eprintln!("avbus bench: {e}");
                ExitCode::from(1)
            };
            let mut rows = Vec::new();
            if !own.iter().any(|w| named(w)) || !others.is_empty() {
                rows = bench_bus(bus, others, scale).await?;
            }
            if named(devices) {
                rows.extend(
                    crate::bench::devices(&device_steps, scale)
                        .await
                        .map_err(failed)?,
                );
            }
            if named(journal) {
                rows.extend(crate::bench::journal(scale).await.map_err(failed)?);
            }
            outln!("{}", crate::bench::table(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak {
            minutes,
            seconds,
            panels,
            devices,
            seed,
        } => {
            let secs = seconds.unwrap_or(minutes.unwrap_or(10).saturating_mul(60));
            let cfg = crate::soak::SoakConfig {
                duration: Duration::from_secs(secs),
                panels,
                devices,
                seed: seed.unwrap_or_else(|| fastrand::u64(..)),
            };
            if let Err(e) = cfg.validate() {
                eprintln!("avbus soak: {e}");
                return Err(ExitCode::from(2));
            }
            match crate::soak::run(&cfg).await {
                Ok(o) if o.pass() => Ok(ExitCode::SUCCESS),
                Ok(_) => Err(ExitCode::from(1)),
                Err(e) => {
                    eprintln!("avbus soak: {e}");
                    Err(ExitCode::from(2))
                }
            }
        }
        Command::Token { command } => token(command),
        Command::Serve { .. }
        | Command::Demo { .. }
        | Command::Adapter { .. }
        | Command::Sim { .. } => Ok(ExitCode::from(2)),
    }
}

/// `avbus token new | hash | fingerprint`.
fn token(cmd: TokenCommand) -> Result<ExitCode, ExitCode> {
    match cmd {
        TokenCommand::New { name } => {
            let token = crate::auth::new_token();
            outln!("# The client's token: give it to the client (AVBUS_TOKEN=... or");
            outln!("# ClientOptions::token), keep it secret; the bus never stores it.");
            outln!("{token}");
            outln!("");
            outln!("# The bus's configuration entry: add the rules this client needs.");
            outln!("[[auth.client]]");
            outln!("name = {}", toml_string(&name));
            outln!("token_hash = \"{}\"", crate::auth::hash_token(&token));
            outln!("# read = [\"boardroom/#\"]");
            outln!("# command = [\"boardroom/#\"]");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Hash => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
                eprintln!("avbus token hash: give the token on standard input");
                return Err(ExitCode::from(2));
            }
            outln!("token_hash = \"{}\"", crate::auth::hash_token(line.trim()));
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Fingerprint { cert } => {
            let certs = crate::tls::load_certs(&cert).map_err(|e| {
                eprintln!("avbus token fingerprint: {e}");
                ExitCode::from(2)
            })?;
            outln!(
                "cert_sha256 = \"{}\"",
                crate::auth::fingerprint_hex(certs[0].as_ref())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `avbus sub --telemetry`: one line per value, `topic value`; stale values are
/// marked.
async fn sub_telemetry(
    client: &Client,
    filters: &[String],
    hz: f64,
    count: Option<u64>,
) -> Result<ExitCode, ExitCode> {
    let mut subs = Vec::new();
    for f in filters {
        match client.telemetry(f, hz).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                eprintln!("avbus: {e}");
                return Err(ExitCode::from(1));
            }
        }
    }
    let mut all = futures_util::stream::select_all(subs);
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let Some(v) = all.next().await else { break };
        let stale = if v.stale { " (stale)" } else { "" };
        outln!("{} {}{stale}", v.topic, to_json_string(&v.value));
        seen += 1;
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The bench workloads that measure a bus: `bus`, or one started as its own process.
async fn bench_bus(
    bus: Option<String>,
    workloads: Vec<String>,
    scale: f64,
) -> Result<Vec<crate::bench::Row>, ExitCode> {
    let own = match &bus {
        Some(_) => None,
        None => Some(crate::bench::OwnBus::start().map_err(|e| {
            eprintln!("avbus bench: cannot start a bus: {e}");
            ExitCode::from(2)
        })?),
    };
    let addr = bus
        .or_else(|| own.as_ref().map(|o| o.addr.clone()))
        .unwrap_or_default();
    let cfg = crate::bench::BenchConfig { workloads, scale };
    crate::bench::run(&addr, own.as_ref().map(|o| o.pid()), &cfg)
        .await
        .map_err(|e| {
            eprintln!("avbus bench: {e}");
            ExitCode::from(1)
        })
}

fn print_reply(
    r: Result<crate::client::Reply, crate::client::CommandError>,
) -> Result<ExitCode, ExitCode> {
    match r {
        Ok(reply) if reply.result.is_nil() => {
            outln!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Ok(reply) => {
            outln!("ok {}", to_json_string(&reply.result));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {}", e.code, e.message);
            Err(ExitCode::from(1))
        }
    }
}

/// Reads every device descriptor and its `online` state (one JSON object each).
async fn devices(client: &Client) -> Result<Vec<serde_json::Value>, crate::client::Error> {
    let mut sub = client.subscribe(&["$devices/#", "+/+/online"]).await?;
    let mut descs = std::collections::BTreeMap::new();
    let mut online = std::collections::HashMap::new();
    while let Some(ev) = sub.next().await {
        match ev {
            SubEvent::Update(u) => {
                if let Some(key) = u.topic.strip_prefix("$devices/") {
                    if !u.value.is_nil() {
                        descs.insert(key.to_owned(), to_json(&u.value));
                    }
                } else if let Some(key) = u.topic.strip_suffix("/online") {
                    online.insert(key.to_owned(), u.value == Value::Boolean(true));
                }
            }
            SubEvent::Synced { .. } => break,
            _ => {}
        }
    }
    Ok(descs
        .into_iter()
        .map(|(key, d)| {
            serde_json::json!({
                "device": key,
                "label": d["label"],
                "class": d["class"],
                "driver": d["driver"],
                "online": online.get(&key).copied().unwrap_or(false),
                "controls": d["controls"],
            })
        })
        .collect())
}

/// Loads the configuration for `serve`, applying `--listen`.
///
/// # Errors
/// The configuration error, naming file, line and key.
pub fn serve_config(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
) -> Result<Config, crate::config::ConfigError> {
    let mut cfg = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(l) = listen {
        cfg.listen.set_tcp(l);
    }
    Ok(cfg)
}
