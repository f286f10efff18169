//! The bus process: listeners, the router and its task, and their lifecycle.
//!
//! ```text
//!  TCP accept ─┐                      ┌─ router (behind one lock: topics, retained,
//!  in-process ─┴─> connection tasks ──┤   replay, sessions, rooms, devices, commands)
//!   (duplex)      reader ── lock, apply ┘ (or ROUTER_QUEUE to the router's task when
//!                    │                      the lock is held)   │ try-push,
//!                 writer <──── Outbox (bounded, conflating) <───┘ never awaits
//! ```
//!
//! [`start`] binds and spawns everything and returns a [`BusHandle`]; [`serve`] runs
//! until a shutdown future resolves, then says goodbye to every client.

pub mod connection;
mod devices;
pub mod guard;
pub mod journal;
pub mod outbox;
mod reads;
mod replay;
mod rooms;
pub mod router;
mod subs;
mod sys;
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

pub use connection::{codec, frame_decoder, next_frame, FrameDecoder, Peer, ReadSize};
use connection::{handle, ConnCtx};
use guard::{bump, AddressSlots, GuardStats};
use router::{Router, RouterCore, ROUTER_QUEUE};

use crate::auth::{Authenticator, Backoff, Grant};
use crate::config::Config;
use crate::gateway::WebControl;
use crate::protocol::{frame, BusMsg, Epoch, ErrorCode};
use crate::tls::ServerTls;

/// Bytes buffered in each direction of an in-process connection.
const LOCAL_PIPE: usize = 256 * 1024;
/// In-process connections waiting to be accepted.
const LOCAL_BACKLOG: usize = 64;

/// Opens in-process connections to a running bus, for adapters hosted inside it.
/// They speak the same protocol over a `tokio::io::duplex` pipe, so an adapter runs
/// unchanged in-process or as its own process over TCP.
///
/// In-process clients present no credentials: the connector carries the rules the
/// host gives them. [`BusHandle::local`] gives everything (the host is the bus's own
/// code); [`LocalConnector::with_grant`] narrows it, e.g. to declaring only the
/// devices of the configuration ([`Grant::adapter_for`]).
#[derive(Clone)]
pub struct LocalConnector {
    tx: mpsc::Sender<(DuplexStream, Arc<Grant>)>,
    hub: telemetry::HubHandle,
    grant: Arc<Grant>,
}

impl LocalConnector {
    /// The bus's telemetry hub: in-process adapters publish meter values to it
    /// directly, without UDP.
    pub fn hub(&self) -> telemetry::HubHandle {
        self.hub.clone()
    }

    /// The same connector, for clients with these rules.
    pub fn with_grant(&self, grant: Arc<Grant>) -> LocalConnector {
        LocalConnector {
            grant,
            ..self.clone()
        }
    }

    /// Opens a connection; `None` when the bus has stopped.
    pub async fn connect(&self) -> Option<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(LOCAL_PIPE);
        self.tx.send((theirs, self.grant.clone())).await.ok()?;
        Some(ours)
    }
}

/// Starts connections within `limits.max_connections` (and the per-address limit):
/// the TCP listener and the WebSocket gateway's bridges share it.
#[derive(Clone)]
pub(crate) struct Connections {
    ctx: Arc<ConnCtx>,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Connections {
    /// The bus's TLS acceptor, when `[tls]` is configured (the gateway serves
    /// HTTPS and wss with it).
    pub(crate) fn tls(&self) -> Option<ServerTls> {
        self.ctx.tls.clone()
    }

    /// The handshake deadline, which also bounds a TLS handshake.
    pub(crate) fn handshake(&self) -> std::time::Duration {
        Duration::from_millis(self.ctx.cfg.session.handshake_ms)
    }

    /// Opens a connection whose client end is an in-process pipe (a WebSocket
    /// bridge's) for the browser at `addr`; its telemetry goes to the returned slot
    /// (sent over the WebSocket). `None` at `max_connections` or the address's limit.
    pub(crate) fn pipe(
        &self,
        addr: SocketAddr,
        cert: Option<[u8; 32]>,
    ) -> Option<(DuplexStream, Arc<telemetry::TelemetrySlot>)> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            bump(&self.ctx.guard.connections_refused);
            return None;
        };
        let Some(per_address) = self.ctx.slots.acquire(addr.ip()) else {
            bump(&self.ctx.guard.address_refused);
            return None;
        };
        let (ours, theirs) = tokio::io::duplex(crate::gateway::bridge::BRIDGE_PIPE);
        let slot = Arc::new(telemetry::TelemetrySlot::default());
        let (ctx, tslot) = (self.ctx.clone(), slot.clone());
        self.tracker.spawn(async move {
            handle(theirs, Peer::Net { addr, cert }, Some(tslot), ctx).await;
            drop((permit, per_address));
        });
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
    /// Whether the TCP listener speaks TLS.
    pub tls: bool,
    local: LocalConnector,
    web: Option<WebControl>,
    guard: Arc<GuardStats>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl BusHandle {
    /// The telemetry hub, for in-process adapters publishing meter values.
    pub fn hub(&self) -> telemetry::HubHandle {
        self.local.hub()
    }

    /// A connector for in-process clients, allowed everything (see
    /// [`LocalConnector::with_grant`]).
    pub fn local(&self) -> LocalConnector {
        self.local.clone()
    }

    /// The WebSocket gateway's controls, unless `listen.http` is off.
    pub fn web(&self) -> Option<&WebControl> {
        self.web.as_ref()
    }

    /// The refusal counters also published under `$sys/auth`, `$sys/limits`,
    /// `$sys/tls`.
    pub fn guard_stats(&self) -> Arc<GuardStats> {
        self.guard.clone()
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
/// The bind error, naming the address; an `[auth]` or `[tls]` configuration that
/// cannot be used (`InvalidInput`), including a bus listening beyond loopback with
/// no credentials and no explicit anonymous access.
pub async fn start(cfg: Config) -> std::io::Result<BusHandle> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let auth = Authenticator::new(&cfg).map_err(invalid)?;
    let tls = match &cfg.tls {
        Some(t) => Some(ServerTls::load(t).map_err(|e| invalid(format!("[tls]: {e}")))?),
        None => None,
    };
    let backoff = Arc::new(Backoff::new(
        Duration::from_millis(cfg.auth.backoff_ms),
        Duration::from_millis(cfg.auth.backoff_max_ms),
        cfg.auth.tracked_addresses,
    ));
    let guard = Arc::new(GuardStats::default());
    let l = &cfg.limits;
    if cfg.beyond_loopback()
        && (l.client_msgs_per_sec == 0
            || l.client_bytes_per_sec == 0
            || l.max_connections_per_address == 0)
    {
        tracing::warn!(
            "listening beyond loopback without limits.client_msgs_per_sec, \
             client_bytes_per_sec or max_connections_per_address: one client can \
             use the whole bus (docs/security.md)"
        );
    }
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

    let hub = telemetry::start(
        &cfg,
        cfg.listen.udp_addr(),
        cancel.clone(),
        &tracker,
        guard.clone(),
    )?;
    let udp = hub.udp;
    let (router_tx, router_rx) = mpsc::channel(ROUTER_QUEUE);
    let mut router = Router::new(
        cfg.clone(),
        epoch,
        hub.clone(),
        (guard.clone(), backoff.clone()),
    );
    if let Some(dir) = cfg.persist.dir.clone() {
        let (persist, max_record) = (cfg.persist.clone(), cfg.limits.max_frame_bytes);
        let (journal, entries, found) =
            tokio::task::spawn_blocking(move || journal::Journal::open(&persist, &dir, max_record))
                .await
                .map_err(std::io::Error::other)??;
        tracing::info!(
            records = found.records,
            topics = found.topics,
            bytes = found.bytes,
            corrupt_tail = found.tail.is_some(),
            ms = found.elapsed.as_millis() as u64,
            "journal read"
        );
        router.restore(journal, entries, &found);
    }
    let router_cancel = cancel.clone();
    let core = RouterCore::new(router);
    tracker.spawn(Router::run(core.clone(), router_rx, router_cancel));

    let (local_tx, local_rx) = mpsc::channel(LOCAL_BACKLOG);
    let ctx = Arc::new(ConnCtx {
        cfg: cfg.clone(),
        router: router_tx,
        core,
        hub: hub.clone(),
        next_conn: AtomicU64::new(1),
        auth,
        backoff,
        guard: guard.clone(),
        slots: AddressSlots::new(cfg.limits.max_connections_per_address),
        tls,
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
        tls: cfg.tls.is_some(),
        local: LocalConnector {
            tx: local_tx,
            hub: hub.clone(),
            grant: Grant::everything("in-process"),
        },
        web,
        guard,
        cancel,
        tracker,
    })
}

async fn accept_loop(
    listener: TcpListener,
    mut local: mpsc::Receiver<(DuplexStream, Arc<Grant>)>,
    connections: Connections,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let (ctx, slots) = (connections.ctx, connections.slots);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        bump(&ctx.guard.connections_refused);
                        tracker.spawn(refuse(stream, "too many connections".into()));
                        continue;
                    };
                    let Some(slot) = ctx.slots.acquire(peer.ip()) else {
                        bump(&ctx.guard.address_refused);
                        let why = format!("too many connections from {}", peer.ip());
                        tracker.spawn(refuse(stream, why));
                        continue;
                    };
                    let ctx = ctx.clone();
                    tracker.spawn(async move {
                        serve_tcp(stream, peer, ctx).await;
                        drop((permit, slot));
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: log, pause briefly so the
                    // loop does not spin, and keep serving existing clients.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some((pipe, grant)) = local.recv() => {
                let ctx = ctx.clone();
                tracker.spawn(handle(pipe, Peer::Local(grant), None, ctx));
            }
        }
    }
}

/// Tells a connection over a limit why, before any handshake, and drops it.
async fn refuse(mut stream: TcpStream, message: String) {
    let f = frame(&BusMsg::Error {
        id: None,
        code: ErrorCode::Limit,
        message,
    });
    let _ = stream.write_all(&f).await;
}

/// One accepted TCP connection: TLS first when configured (within the handshake
/// deadline), then the protocol.
async fn serve_tcp(stream: TcpStream, addr: SocketAddr, ctx: Arc<ConnCtx>) {
    let Some(tls) = &ctx.tls else {
        // Plain TCP: the router may write to it directly.
        let peer = Peer::Net { addr, cert: None };
        return connection::handle_tcp(stream, peer, ctx).await;
    };
    let deadline = Duration::from_millis(ctx.cfg.session.handshake_ms);
    match tls.accept(stream, deadline).await {
        Ok((stream, cert)) => handle(stream, Peer::Net { addr, cert }, None, ctx).await,
        Err(crate::tls::AcceptError::Plaintext) => bump(&ctx.guard.tls_plaintext),
        Err(e) => {
            bump(&ctx.guard.tls_failed);
            tracing::debug!(peer = %addr, error = %e, "TLS refused");
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
            "tls": handle.tls,
            "pid": std::process::id(),
        }
    })
    .to_string()
}
