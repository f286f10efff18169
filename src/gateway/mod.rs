//! The HTTP and WebSocket gateway: the browser panel at `/`, the JavaScript client,
//! and the protocol over WebSocket at `/ws`.
//!
//! ```text
//!  HTTP accept (≤ max_connections) ─> axum ─┬─ GET /, /avbus.js, ... (embedded files)
//!                                            └─ GET /ws: Origin check ─> upgrade ─> bridge
//!  bridge ── duplex pipe (BRIDGE_PIPE) ──> the bus's own connection code (as for TCP)
//! ```
//!
//! Each WebSocket is bridged into the bus's ordinary connection code through an
//! in-process pipe ([`bridge`]), so sessions, resume, command answers, frame limits
//! and outbox bounds are the TCP protocol's. Upgrades from foreign pages are refused
//! ([`origin`]). [`WebControl`] lets an operator (or a test) cut every WebSocket as a
//! network failure would, and hold off new ones.

pub mod bridge;
pub mod origin;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bridge::Ended;
pub use origin::{check_origin_entry, OriginPolicy};

use crate::bus::Connections;
use crate::protocol::{frame, BusMsg, ErrorCode, LEN_PREFIX};

/// The files of the panel and the JavaScript client, embedded in the binary:
/// (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/avbus.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/avbus.js"),
    ),
    (
        "/msgpack.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/msgpack.js"),
    ),
    (
        "/panel.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/panel.js"),
    ),
    (
        "/controls.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/controls.js"),
    ),
    (
        "/panel.css",
        "text/css; charset=utf-8",
        include_str!("../../web/panel.css"),
    ),
];

/// The page may load its own scripts and styles and open WebSockets to its own
/// origin; nothing inline, nothing from elsewhere, never framed.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Counters of the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebStats {
    /// WebSockets open now.
    pub open: usize,
    /// WebSockets accepted since the start.
    pub accepted: u64,
    /// Upgrades refused because of their `Origin` (403).
    pub refused_origin: u64,
    /// Upgrades refused while not accepting (503).
    pub refused_paused: u64,
}

struct Shared {
    policy: OriginPolicy,
    max_frame: usize,
    connections: Connections,
    tracker: TaskTracker,
    accepting: AtomicBool,
    /// The token every current bridge watches; [`WebControl::drop_all`] cancels it and
    /// puts a fresh one in place for the bridges that follow.
    generation: Mutex<CancellationToken>,
    open: AtomicUsize,
    accepted: AtomicU64,
    refused_origin: AtomicU64,
    refused_paused: AtomicU64,
}

impl Shared {
    fn generation(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        // Nothing can panic while the lock is held; poisoning is ignored.
        self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Controls the running gateway (from [`crate::bus::BusHandle::web`]).
#[derive(Clone)]
pub struct WebControl {
    shared: Arc<Shared>,
}

impl WebControl {
    /// Cuts every open WebSocket as a network failure would: no close handshake, the
    /// TCP connection just ends. Each session stays resumable for its grace period, so
    /// the panels reconnect and resume. Returns how many were open.
    pub fn drop_all(&self) -> usize {
        let open = self.shared.open.load(Ordering::Relaxed);
        let mut current = self.shared.generation();
        current.cancel();
        *current = CancellationToken::new();
        open
    }

    /// Accepts new WebSocket upgrades (the default) or refuses them with 503, for
    /// maintenance or to keep panels away while a test changes things behind them.
    pub fn set_accepting(&self, accepting: bool) {
        self.shared.accepting.store(accepting, Ordering::SeqCst);
    }

    /// The gateway's counters.
    pub fn stats(&self) -> WebStats {
        let s = &self.shared;
        WebStats {
            open: s.open.load(Ordering::Relaxed),
            accepted: s.accepted.load(Ordering::Relaxed),
            refused_origin: s.refused_origin.load(Ordering::Relaxed),
            refused_paused: s.refused_paused.load(Ordering::Relaxed),
        }
    }
}

/// Serves HTTP on `listener` until `cancel`: the embedded files and `/ws`.
pub(crate) fn start(
    listener: TcpListener,
    cfg: &crate::config::Config,
    connections: Connections,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> WebControl {
    let shared = Arc::new(Shared {
        policy: OriginPolicy::new(&cfg.listen.allowed_origins),
        max_frame: cfg.limits.max_frame_bytes,
        connections,
        tracker: tracker.clone(),
        accepting: AtomicBool::new(true),
        generation: Mutex::new(CancellationToken::new()),
        open: AtomicUsize::new(0),
        accepted: AtomicU64::new(0),
        refused_origin: AtomicU64::new(0),
        refused_paused: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/ws", get(upgrade))
        .fallback(asset)
        .with_state(shared.clone());
    let tls = shared
        .connections
        .tls()
        .map(|t| (t, shared.connections.handshake()));
    let listener = match Limited::start(
        listener,
        cfg.limits.max_connections,
        tls,
        &tracker,
        cancel.clone(),
    ) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the HTTP gateway cannot start");
            return WebControl { shared };
        }
    };
    let service = app.into_make_service_with_connect_info::<Peer>();
    tracker.spawn(async move {
        let serve = axum::serve(listener, service)
            .with_graceful_shutdown(async move { cancel.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the HTTP gateway stopped");
        }
    });
    WebControl { shared }
}

/// Serves the embedded files; `GET` and `HEAD` only.
async fn asset(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "GET only\n").into_response();
    }
    let path = match uri.path() {
        "/index.html" => "/",
        p => p,
    };
    let Some((_, kind, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut r = (*body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The files change with the binary: revalidate rather than run a stale panel.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

/// `GET /ws`: checks the origin, then bridges the WebSocket into a bus connection.
async fn upgrade(
    State(s): State<Arc<Shared>>,
    ConnectInfo(Peer { addr: peer, cert }): ConnectInfo<Peer>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Err(why) = s.policy.check(origin, host) {
        let n = s.refused_origin.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%peer, refused = n, "WebSocket refused: {why}");
        return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if !s.accepting.load(Ordering::SeqCst) {
        s.refused_paused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not accepting WebSocket connections now\n",
        )
            .into_response();
    }
    let dropped = s.generation().clone();
    ws.max_message_size(s.max_frame)
        .max_frame_size(s.max_frame)
        .on_upgrade(move |socket| {
            let tracker = s.tracker.clone();
            tracker.track_future(bridge_socket(s, socket, peer, cert, dropped))
        })
}

async fn bridge_socket(
    s: Arc<Shared>,
    socket: WebSocket,
    peer: SocketAddr,
    cert: Option<[u8; 32]>,
    dropped: CancellationToken,
) {
    let (mut tx, rx) = socket.split();
    let Some((pipe, slot)) = s.connections.pipe(peer, cert) else {
        // At `max_connections`: the TCP listener's answer, then close.
        let f = frame(&BusMsg::Error {
            id: None,
            code: ErrorCode::Limit,
            message: "too many connections".into(),
        });
        let _ = tx.send(Message::Binary(f.slice(LEN_PREFIX..))).await;
        let close = CloseFrame {
            code: 1013,
            reason: "too many connections".into(),
        };
        let _ = tx.send(Message::Close(Some(close))).await;
        return;
    };
    s.accepted.fetch_add(1, Ordering::Relaxed);
    s.open.fetch_add(1, Ordering::Relaxed);
    let ended = bridge::run(tx, rx, pipe, slot, s.max_frame, dropped).await;
    s.open.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(%peer, ?ended, "WebSocket closed");
}

/// The remote address of an HTTP connection, for the logs.
#[derive(Debug, Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    /// The TLS client certificate's SHA-256, a credential like on the TCP port.
    cert: Option<[u8; 32]>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Limited>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Limited>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            cert: stream.io().cert,
        }
    }
}

/// The HTTP listener, holding at most `max_connections` connections (HTTP and
/// WebSocket together): past that it stops accepting until one ends, and the
/// kernel's backlog holds the rest. With `[tls]`, each accepted connection does its
/// TLS handshake in its own task (within the handshake deadline), so a slow or
/// silent client never holds up the others; then it is handed to axum.
struct Limited {
    ready: tokio::sync::mpsc::Receiver<(Slotted, SocketAddr)>,
    addr: SocketAddr,
}

/// Connections that finished their TLS handshake, waiting for axum.
const READY_QUEUE: usize = 64;

impl Limited {
    fn start(
        inner: TcpListener,
        max: usize,
        tls: Option<(crate::tls::ServerTls, std::time::Duration)>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> std::io::Result<Limited> {
        let addr = inner.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(READY_QUEUE);
        let slots = Arc::new(Semaphore::new(max));
        let t = tracker.clone();
        tracker.spawn(async move {
            loop {
                // The semaphore is never closed, so this always yields a permit.
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    continue;
                };
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => return,
                    a = inner.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let tx = tx.clone();
                        match &tls {
                            None => {
                                let s = Slotted {
                                    stream: HttpStream::Plain(stream),
                                    cert: None,
                                    _permit: permit,
                                };
                                if tx.send((s, peer)).await.is_err() {
                                    return;
                                }
                            }
                            Some((tls, deadline)) => {
                                let (tls, deadline) = (tls.clone(), *deadline);
                                t.spawn(async move {
                                    match tls.accept(stream, deadline).await {
                                        Ok((stream, cert)) => {
                                            let stream = HttpStream::Tls(Box::new(stream));
                                            let s = Slotted {
                                                stream,
                                                cert,
                                                _permit: permit,
                                            };
                                            let _ = tx.send((s, peer)).await;
                                        }
                                        Err(e) => {
                                            tracing::debug!(%peer, error = %e, "HTTPS refused")
                                        }
                                    }
                                });
                            }
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: log and pause briefly so
                        // the loop does not spin; existing connections carry on.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Limited { ready, addr })
    }
}

impl axum::serve::Listener for Limited {
    type Io = Slotted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Slotted, SocketAddr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ended (shutdown): wait for axum's graceful shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// The byte stream under an HTTP connection.
enum HttpStream {
    Plain(TcpStream),
    Tls(Box<crate::tls::ServerStream>),
}

/// An accepted HTTP connection and its slot, released when the connection (or the
/// WebSocket it became) is dropped.
struct Slotted {
    stream: HttpStream,
    cert: Option<[u8; 32]>,
    _permit: OwnedSemaphorePermit,
}

macro_rules! on_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.stream {
            HttpStream::Plain($s) => $e,
            HttpStream::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        on_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
