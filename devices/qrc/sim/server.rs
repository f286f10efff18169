//! The simulated Core on the network: the listener, one task per connection (framing,
//! keepalive, AutoPoll pushes, injected bytes), and the [`Sim`] and [`Panel`] handles,
//! which [`super`] re-exports. What a request does to the design is [`super::Core`]'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    err, Conn, ConnId, Core, Shared, SimConfig, SimControlKind, SimState, MAX_AUTOPOLL_RATE,
};
use crate::devices::qrc::proto::{
    encode_notification, ControlState, CoreStatus, EngineState, EngineStatus, ErrorCode, Framer,
    Notification, RpcError, SetTarget, Value, MAX_MESSAGE,
};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Answers gathered before they are written: bounds a connection's output buffer even
/// when one read holds hundreds of requests.
const FLUSH_AT: usize = 64 * 1024;
/// A client that does not take our bytes for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// [`Sim::inject`] frames queued per connection; a full queue drops the injection.
const INJECT_QUEUE: usize = 16;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock cannot leave the design half-updated in a way
        // that matters for a simulator, so a poisoned lock is used as is.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self) -> Option<(ConnId, mpsc::Receiver<Bytes>)> {
        let mut core = self.lock();
        if core.conns.len() >= self.cfg.max_connections {
            return None;
        }
        let (tx, rx) = mpsc::channel(INJECT_QUEUE);
        let id = ConnId(core.next_conn);
        core.next_conn += 1;
        let logged_on = self.cfg.credentials.is_none();
        core.conns.insert(
            id,
            Conn {
                logged_on,
                groups: HashMap::new(),
                inject: tx,
            },
        );
        self.connections.send_replace(core.conns.len());
        Some((id, rx))
    }

    fn unregister(&self, id: ConnId) {
        let mut core = self.lock();
        if let Some(conn) = core.conns.remove(&id) {
            core.groups -= conn.groups.len();
        }
        self.connections.send_replace(core.conns.len());
    }

    /// Answers complete frames until `out` reaches [`FLUSH_AT`]; `true`: frames may remain.
    fn drain(&self, id: ConnId, framer: &mut Framer, out: &mut Vec<u8>) -> bool {
        let mut core = self.lock();
        while out.len() < FLUSH_AT {
            let Some(frame) = framer.next_frame() else {
                return false;
            };
            core.handle_frame(self, id, frame, out);
        }
        true
    }
}

/// A running simulated Core.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// The Core's own user interface (a UCI, another controller): changes made here reach
/// connected clients through their change groups. Cloneable.
#[derive(Clone)]
pub struct Panel {
    shared: Arc<Shared>,
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
}

impl Sim {
    /// Binds `listen` (port 0 picks one) and serves QRC until [`Sim::stop`] or drop.
    ///
    /// # Errors
    /// `InvalidInput` for an inconsistent [`SimConfig`]; bind errors as they come.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> std::io::Result<Sim> {
        if cfg.keepalive_timeout.is_zero() {
            return Err(invalid("keepalive_timeout must be > 0"));
        }
        if !(cfg.min_autopoll_rate > 0.0 && cfg.min_autopoll_rate <= MAX_AUTOPOLL_RATE) {
            return Err(invalid(format!(
                "min_autopoll_rate must be in (0, {MAX_AUTOPOLL_RATE}]"
            )));
        }
        let core = Core::new(&cfg).map_err(invalid)?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let status = EngineStatus {
            platform: Some("Core Sim".into()),
            state: EngineState::Active,
            design_name: cfg.design_name.clone(),
            design_code: std::iter::repeat_with(fastrand::alphanumeric)
                .take(12)
                .collect(),
            is_redundant: false,
            is_emulator: true,
            status: Some(CoreStatus {
                code: 0,
                string: "OK".into(),
            }),
        };
        let shared = Arc::new(Shared {
            cfg,
            status,
            core: Mutex::new(core),
            connections: watch::Sender::new(0),
        });
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        tracker.spawn(accept(
            listener,
            shared.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        Ok(Sim {
            addr,
            shared,
            cancel,
            tracker,
        })
    }

    /// The address it listens on (the port picked when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that changes controls as the Core's own UI would.
    pub fn panel(&self) -> Panel {
        Panel {
            shared: self.shared.clone(),
        }
    }

    /// Every control's state and the connection and change-group counts.
    pub fn state(&self) -> SimState {
        let core = self.shared.lock();
        SimState {
            controls: core.controls.iter().map(|c| c.state(false)).collect(),
            connections: core.conns.len(),
            logged_on: core.conns.values().filter(|c| c.logged_on).count(),
            change_groups: core.groups,
        }
    }

    /// The number of open client connections, updated as they come and go.
    pub fn connections(&self) -> watch::Receiver<usize> {
        self.shared.connections.subscribe()
    }

    /// Sends raw bytes to every connection; returns how many took them (a connection
    /// with `INJECT_QUEUE` injections still unsent is skipped).
    pub fn inject(&self, bytes: &[u8]) -> usize {
        let bytes = Bytes::copy_from_slice(bytes);
        let core = self.shared.lock();
        core.conns
            .values()
            .filter(|c| c.inject.try_send(bytes.clone()).is_ok())
            .count()
    }

    /// Closes the listener and every connection, and waits for their tasks. The design
    /// and its values stay with [`Panel`]s; a new [`Sim::start`] on the same address
    /// serves again.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Panel {
    /// Sets a control as the Core's own UI would (clamped, triggers recall).
    ///
    /// # Errors
    /// `UnknownControl` (8) or `InvalidParams` (-32602) for a value that does not fit.
    pub fn set(&self, name: &str, target: SetTarget) -> Result<ControlState, RpcError> {
        let mut core = self.shared.lock();
        let i = core.index(name)?;
        core.apply(i, &target, None)?;
        Ok(core.controls[i].state(false))
    }

    /// [`Panel::set`] with a `Value`.
    ///
    /// # Errors
    /// As [`Panel::set`].
    pub fn set_value(&self, name: &str, value: Value) -> Result<ControlState, RpcError> {
        self.set(name, SetTarget::Value(value))
    }

    /// Fires a Trigger control.
    ///
    /// # Errors
    /// `UnknownControl`, or `InvalidParams` when `name` is not a Trigger.
    pub fn trigger(&self, name: &str) -> Result<(), RpcError> {
        let mut core = self.shared.lock();
        let i = core.index(name)?;
        if !matches!(core.controls[i].kind, SimControlKind::Trigger { .. }) {
            return Err(err(
                ErrorCode::InvalidParams,
                format!("{name} is not a Trigger"),
            ));
        }
        core.apply(i, &SetTarget::Value(Value::Number(1.0)), None)
    }

    /// A control's state, by its full name.
    pub fn get(&self, name: &str) -> Option<ControlState> {
        let core = self.shared.lock();
        core.by_name
            .get(name)
            .map(|&i| core.controls[i].state(false))
    }
}

async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            // stop(): dropping the listener closes the port.
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match shared.register() {
                    Some((id, inject)) => {
                        tracing::debug!(%peer, "qrc sim: client connected");
                        tracker.spawn(connection(shared.clone(), stream, id, inject, cancel.clone()));
                    }
                    None => tracing::debug!(%peer, "qrc sim: connection refused, at max_connections"),
                },
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::debug!(error = %e, "qrc sim: accept failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }
}

async fn write(wr: &mut OwnedWriteHalf, bytes: &[u8], cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        written = timeout(WRITE_TIMEOUT, wr.write_all(bytes)) => matches!(written, Ok(Ok(()))),
    }
}

async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One client: pushes `EngineStatus`, answers every complete frame of a read before the
/// next await, one write per batch.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    id: ConnId,
    mut inject: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let keepalive = shared.cfg.keepalive_timeout;
    let mut framer = Framer::new(MAX_MESSAGE);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut out = encode_notification(&Notification::EngineStatus(shared.status.clone()));
    let mut deadline = Instant::now() + keepalive;
    let mut backlog = false;
    loop {
        if !out.is_empty() {
            if !write(&mut wr, &out, &cancel).await {
                break;
            }
            out.clear();
        }
        if backlog {
            backlog = shared.drain(id, &mut framer, &mut out);
            continue;
        }
        let autopoll = shared.lock().next_autopoll(id);
        tokio::select! {
            // stop() closes every connection.
            () = cancel.cancelled() => break,
            // Keepalive: a client must send something within the timeout.
            () = sleep_until(deadline) => {
                tracing::debug!("qrc sim: keepalive expired, closing");
                break;
            }
            // A change group's AutoPoll is due.
            () = at(autopoll) => shared.lock().push_due(id, Instant::now(), shared.cfg.push_empty_polls, &mut out),
            // Sim::inject.
            Some(bytes) = inject.recv() => out.extend_from_slice(&bytes),
            read = rd.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    deadline = Instant::now() + keepalive;
                    framer.extend(&chunk[..n]);
                    backlog = shared.drain(id, &mut framer, &mut out);
                }
            },
        }
    }
    shared.unregister(id);
}
