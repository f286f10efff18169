//! The `avbus` binary: parses the command line and runs the bus or a client tool.

use std::process::ExitCode;

use clap::Parser;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve { .. } | Command::Demo { .. } => "info",
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
                let r = avbus::bus::serve(cfg, shutdown_signal(), |h| {
                    println!("{}", avbus::bus::ready_line(h));
                })
                .await;
                match r {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("avbus: {e}");
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
