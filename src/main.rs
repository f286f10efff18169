//! The `avbus` binary: parses the command line and runs the bus or a client tool.

use std::process::ExitCode;

use std::time::Duration;

use avbus::client::{Client, ClientOptions};
use avbus::devices::registry::host_all;
use avbus::devices::sims;
use avbus::protocol::Role;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use avbus::cli::{run_tool, serve_config, Cli, Command};

fn init_logs(level: Option<&str>, default: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(level.unwrap_or(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `avbus serve`: the bus, with the configured devices' adapters hosted in-process
/// (each on the same protocol as an external adapter, through an in-process pipe).
async fn serve(cfg: avbus::config::Config) -> Result<(), String> {
    let devices = cfg.devices.clone();
    let handle = avbus::bus::start(cfg).await.map_err(|e| e.to_string())?;
    println!("{}", avbus::bus::ready_line(&handle));
    let cancel = CancellationToken::new();
    let hosted = if devices.is_empty() {
        None
    } else {
        // Hosted adapters may declare exactly the configured devices, nothing else.
        let keys: Vec<String> = devices
            .iter()
            .map(|d| format!("{}/{}", d.room, d.name))
            .collect();
        let grant = avbus::auth::Grant::adapter_for("hosted-adapters", &keys)?;
        let local = handle.local().with_grant(grant);
        let opts = ClientOptions::local(local, "hosted-adapters").role(Role::Adapter);
        let client = Client::connect(opts).await.map_err(|e| e.to_string())?;
        let c = cancel.clone();
        Some(tokio::spawn(
            async move { host_all(client, &devices, c).await },
        ))
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    if let Some(h) = hosted {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    handle.shutdown().await;
    Ok(())
}

/// `avbus adapter`: the configured devices' adapters as their own process, over TCP.
async fn adapter(bus: &avbus::cli::BusArg, cfg: avbus::config::Config) -> Result<(), String> {
    if cfg.devices.is_empty() {
        return Err("the config file has no [[device]] entries".into());
    }
    let opts = bus.options("adapter")?.role(Role::Adapter).reconnect(true);
    let client = Client::connect(opts)
        .await
        .map_err(|e| format!("{}: {e}", bus.bus))?;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let devices = cfg.devices.clone();
    let hosted = tokio::spawn(async move { host_all(client, &devices, c).await });
    shutdown_signal().await;
    cancel.cancel();
    match tokio::time::timeout(Duration::from_secs(5), hosted).await {
        Ok(Ok(r)) => r,
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve { .. }
        | Command::Demo { .. }
        | Command::Adapter { .. }
        | Command::Sim { .. } => "info",
        _ => "warn",
    };
    init_logs(cli.log_level.as_deref(), default_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("avbus: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Serve { config, listen } => {
                let cfg = match serve_config(config, listen) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("avbus: {e}");
                        return ExitCode::from(2);
                    }
                };
                match serve(cfg).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("avbus: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            Command::Sim {
                driver,
                listen,
                password,
                fast,
                count,
            } => match sims::start_many(&driver, listen, count, password, fast).await {
                Ok(sims) => {
                    println!("{}", sims::ready_line(&driver, &sims));
                    shutdown_signal().await;
                    for sim in sims {
                        sim.stop().await;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("avbus sim: {e}");
                    ExitCode::from(2)
                }
            },
            Command::Adapter { bus, config } => {
                let cfg = match avbus::config::Config::load(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("avbus: {e}");
                        return ExitCode::from(2);
                    }
                };
                match adapter(&bus, cfg).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("avbus adapter: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            Command::Demo { listen } => {
                match avbus::devices::demo::run(listen, shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("avbus demo: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            other => run_tool(other).await,
        }
    })
}
