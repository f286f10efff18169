//! The bus process: listeners, the router task and their lifecycle.
//!
//! ```text
//!  TCP accept ─┐                      ┌─ router (one task: topics, retained, replay,
//!  in-process ─┤─> connection tasks ──┤   sessions, rooms, devices, commands)
//!   (duplex)   │  reader ──(ROUTER_QUEUE)──┘        │ try-push, never awaits
//!  WebSocket ──┘  writer <──── Outbox (bounded, conflating) <─┘
//!   (gateway bridge over duplex)
//! ```
//!
//! [`start`] binds and spawns everything and returns a [`BusHandle`]; [`serve`] runs
//! until a shutdown future resolves, then says goodbye to every client.

mod connection;
mod devices;
pub mod outbox;
mod replay;
pub mod router;
mod subs;
mod tcp;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connection::codec;
use connection::{handle, ConnCtx};
use router::{Router, ROUTER_QUEUE};

use crate::config::Config;
use crate::gateway::WebControl;
use crate::protocol::{frame, BusMsg, Epoch, ErrorCode};

/// Bytes buffered in each direction of an in-process connection.
const LOCAL_PIPE: usize = 256 * 1024;
/// In-process connections waiting to be accepted.
const LOCAL_BACKLOG: usize = 64;

/// Opens in-process connections to a running bus, for adapters hosted inside it.
/// They speak the same protocol over a `tokio::io::duplex` pipe, so an adapter runs
/// unchanged in-process or as its own process over TCP.
#[derive(Clone)]
pub struct LocalConnector {
    tx: mpsc::Sender<DuplexStream>,
    hub: telemetry::HubHandle,
}

impl LocalConnector {
    /// The bus's telemetry hub: in-process adapters publish meter values to it
    /// directly, without UDP.
    pub fn hub(&self) -> telemetry::HubHandle {
        self.hub.clone()
    }

    /// Opens a connection; `None` when the bus has stopped.
    pub async fn connect(&self) -> Option<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(LOCAL_PIPE);
        self.tx.send(theirs).await.ok()?;
        Some(ours)
    }
}

/// Starts connections on byte streams, within `limits.max_connections`: the TCP
/// listener and the WebSocket gateway's bridges share it.
#[derive(Clone)]
pub(crate) struct Connections {
    ctx: Arc<ConnCtx>,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Connections {
    /// Runs the connection protocol on `stream`; gives the stream back when the bus
    /// already holds `max_connections` connections.
    fn attach<S>(
        &self,
        stream: S,
        peer: String,
        slot: Option<Arc<telemetry::TelemetrySlot>>,
    ) -> Result<(), S>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return Err(stream);
        };
        let ctx = self.ctx.clone();
        self.tracker.spawn(async move {
            handle(stream, peer, None, slot, ctx).await;
            drop(permit);
        });
        Ok(())
    }

    /// Runs the connection protocol on a TCP stream (which the router may write to
    /// directly); gives it back at `max_connections`.
    fn attach_tcp(&self, stream: TcpStream, peer: SocketAddr) -> Result<(), TcpStream> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return Err(stream);
        };
        let ctx = self.ctx.clone();
        self.tracker.spawn(async move {
            connection::handle_tcp(stream, peer, ctx).await;
            drop(permit);
        });
        Ok(())
    }

    /// Opens a connection whose client end is an in-process pipe (a WebSocket
    /// bridge's); `None` at `max_connections`.
    /// Its telemetry goes to the returned slot (sent over the WebSocket).
    pub(crate) fn pipe(
        &self,
        peer: String,
    ) -> Option<(DuplexStream, Arc<telemetry::TelemetrySlot>)> {
        let (ours, theirs) = tokio::io::duplex(crate::gateway::bridge::BRIDGE_PIPE);
        let slot = Arc::new(telemetry::TelemetrySlot::default());
        self.attach(theirs, peer, Some(slot.clone())).ok()?;
        Some((ours, slot))
    }
}

/// A running bus.
pub struct BusHandle {
    /// The bound TCP address (useful with port 0).
    pub tcp: SocketAddr,
    /// The bound UDP telemetry address.
    pub udp: SocketAddr,
    /// The bound HTTP/WebSocket address, unless `listen.http` is off.
    pub http: Option<SocketAddr>,
    /// This run's epoch.
    pub epoch: Epoch,
    local: LocalConnector,
    web: Option<WebControl>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl BusHandle {
    /// The telemetry hub, for in-process adapters publishing meter values.
    pub fn hub(&self) -> telemetry::HubHandle {
        self.local.hub()
    }

    /// A connector for in-process clients.
    pub fn local(&self) -> LocalConnector {
        self.local.clone()
    }

    /// The WebSocket gateway's controls, unless `listen.http` is off.
    pub fn web(&self) -> Option<&WebControl> {
        self.web.as_ref()
    }

    /// The token that stops the bus when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops the bus: clients get `bye {reason: "shutdown"}`; waits (bounded) for
    /// every task to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 5 s");
        }
    }
}

/// Binds the listeners and starts the router; returns once everything is bound.
///
/// # Errors
/// The bind error, naming the address.
pub async fn start(cfg: Config) -> std::io::Result<BusHandle> {
    let cfg = Arc::new(cfg);
    let listener = TcpListener::bind(cfg.listen.tcp).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", cfg.listen.tcp),
        )
    })?;
    let tcp = listener.local_addr()?;
    let http_listener =
        match cfg.listen.http {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?),
            None => None,
        };
    let http = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let epoch = Epoch(fastrand::u64(1..u64::MAX));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let hub = telemetry::start(&cfg, cfg.listen.udp_addr(), cancel.clone(), &tracker)?;
    let udp = hub.udp;
    let (router_tx, router_rx) = mpsc::channel(ROUTER_QUEUE);
    let router = Router::new(cfg.clone(), epoch, hub.clone());
    let router_cancel = cancel.clone();
    tracker.spawn(router.run(router_rx, router_cancel));

    let (local_tx, local_rx) = mpsc::channel(LOCAL_BACKLOG);
    let ctx = Arc::new(ConnCtx {
        cfg: cfg.clone(),
        router: router_tx,
        hub: hub.clone(),
        next_conn: AtomicU64::new(1),
    });
    let connections = Connections {
        ctx,
        tracker: tracker.clone(),
        slots: Arc::new(Semaphore::new(cfg.limits.max_connections)),
    };
    let web = http_listener.map(|l| {
        crate::gateway::start(
            l,
            &cfg,
            connections.clone(),
            cancel.clone(),
            tracker.clone(),
        )
    });
    tracker.spawn(accept_loop(
        listener,
        local_rx,
        connections,
        cancel.clone(),
        tracker.clone(),
    ));
    match http {
        Some(http) => tracing::info!(%tcp, %udp, %http, epoch = epoch.0, "bus listening"),
        None => tracing::info!(%tcp, %udp, epoch = epoch.0, "bus listening (no HTTP)"),
    }
    Ok(BusHandle {
        tcp,
        udp,
        http,
        epoch,
        local: LocalConnector {
            tx: local_tx,
            hub: hub.clone(),
        },
        web,
        cancel,
        tracker,
    })
}

async fn accept_loop(
    listener: TcpListener,
    mut local: mpsc::Receiver<DuplexStream>,
    connections: Connections,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if let Err(mut stream) = connections.attach_tcp(stream, peer) {
                        tracker.spawn(async move {
                            let f = frame(&BusMsg::Error { id: None, code: ErrorCode::Limit, message: "too many connections".into() });
                            let _ = stream.write_all(&f).await;
                        });
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: log, pause briefly so the
                    // loop does not spin, and keep serving existing clients.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(pipe) = local.recv() => {
                let ctx = connections.ctx.clone();
                tracker.spawn(handle(pipe, "in-process".into(), None, None, ctx));
            }
        }
    }
}

/// Runs a bus until `shutdown` resolves. `on_ready` is called once everything is
/// bound (the CLI prints the `{"ready": ...}` line there).
///
/// # Errors
/// Bind errors.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
    on_ready: impl FnOnce(&BusHandle),
) -> std::io::Result<()> {
    let handle = start(cfg).await?;
    on_ready(&handle);
    shutdown.await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// The `{"ready": {...}}` line printed once the bus is bound.
pub fn ready_line(handle: &BusHandle) -> String {
    serde_json::json!({
        "ready": {
            "tcp": handle.tcp.to_string(),
            "udp": handle.udp.to_string(),
            "http": handle.http.map(|a| a.to_string()),
            "epoch": handle.epoch.0,
            "pid": std::process::id(),
        }
    })
    .to_string()
}
