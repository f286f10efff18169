//! A strict Extron SIS matrix switcher on a real TCP port, for the adapter's tests and
//! for demos without hardware. It follows the [module doc](super): banner and password
//! flow, ties with audio/video breakaway, mutes, verbose modes per connection with
//! tagged queries and change notices, the device's error codes, its connection limit,
//! its port timeout and its 10 s abort of half-typed commands.
//!
//! Layout: one accept task and one task per connection, all cancelled by
//! [`Sim::stop`]. The [`Matrix`] sits behind a std `Mutex`: it is only ever held to run
//! one command against a few vectors, never across an `.await`. Change notices are encoded
//! once and fanned out through one bounded `broadcast` channel; each connection decides
//! whether its verbose mode wants them.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::proto::{self, Command, Response};
use super::{Matrix, MatrixState, Plane, Role, SisError, Tie, TieKind, VerboseMode};

/// Change notices a connection may fall behind by before it lags. A lagging connection
/// is sent `Qik` (the device's own "re-read the ties") and the loss is counted in
/// [`Sim::lagged_notices`]; nothing is dropped silently.
const NOTICE_CAPACITY: usize = 256;
/// Bytes read from a socket at once. With [`proto::MAX_COMMAND_LEN`] this bounds a
/// connection's input buffer.
const READ_CHUNK: usize = 1024;
/// Longest password entry kept: Extron passwords have at most 12 characters, so a
/// longer entry is wrong whatever follows.
const MAX_PASSWORD_ENTRY: usize = 64;
/// How long the `E26` refusal may take to write before the socket is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Pending connections in the listen queue.
const LISTEN_BACKLOG: u32 = 128;

/// How the simulated switcher behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Inputs, 1–255.
    pub inputs: u8,
    /// Outputs, 1–255.
    pub outputs: u8,
    /// Administrator password; `None` asks for no password at all.
    pub password: Option<String>,
    /// User password (logs in as `Login User`); only used with `password`.
    pub user_password: Option<String>,
    /// The copyright line sent on connect.
    pub banner: String,
    /// The answer to `Q`.
    pub firmware: String,
    /// Time the device takes to answer each command.
    pub command_delay: Duration,
    /// Port timeout: a connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A command left unfinished for this long is dropped without a reply.
    pub char_timeout: Duration,
    /// Connections served at once; one more is answered `E26` and closed.
    pub max_connections: usize,
}

impl Default for SimConfig {
    /// An 8×8 switcher without a password, with the manuals' timeouts and limits.
    fn default() -> Self {
        Self {
            inputs: 8,
            outputs: 8,
            password: None,
            user_password: None,
            banner: "(c) Copyright 2024, Extron Electronics SIS Simulator 88, V1.23, 60-0000-01"
                .into(),
            firmware: "1.23".into(),
            command_delay: Duration::from_millis(10),
            idle_timeout: Duration::from_secs(300),
            char_timeout: Duration::from_secs(10),
            max_connections: 200,
        }
    }
}

impl SimConfig {
    /// The default switcher answering without delay, for tests.
    pub fn fast() -> Self {
        Self {
            command_delay: Duration::ZERO,
            max_connections: 16,
            ..Self::default()
        }
    }
}

/// A snapshot of the matrix. Index 0 is output 1; input 0 means untied.
pub type SimState = MatrixState;

/// A connection's number, for telling its own changes from others'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnId(u64);

/// Where a notice comes from, which decides who receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Connection(ConnId),
    Panel,
    Injected,
}

#[derive(Debug, Clone)]
struct Notice {
    origin: Origin,
    bytes: Bytes,
}

struct Shared {
    cfg: SimConfig,
    matrix: Mutex<Matrix>,
    notices: broadcast::Sender<Notice>,
    connections: AtomicUsize,
    lagged: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Matrix> {
        // A panic elsewhere cannot leave the vectors half-written in a way that
        // matters to a simulator; keep serving.
        self.matrix.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, origin: Origin, bytes: Bytes) {
        // No receivers (no connections) is not an error.
        let _ = self.notices.send(Notice { origin, bytes });
    }

    /// Runs a command and sends its notice while still holding the lock, so notices
    /// leave in the order the changes were made.
    fn execute(&self, id: ConnId, mode: &mut VerboseMode, command: Command) -> Response {
        let mut matrix = self.lock();
        let (reply, changed) = matrix.execute(mode, command);
        if changed {
            let mut bytes = BytesMut::new();
            proto::format_response(&reply, &mut bytes);
            self.notify(Origin::Connection(id), bytes.freeze());
        }
        reply
    }
}

/// The front panel: changes made here reach connections in verbose mode 1 or 3 as the
/// device's unsolicited messages (`Qik` for ties, `Vmt03 1` for mutes). Cheap to clone.
#[derive(Clone)]
pub struct Panel {
    shared: Arc<Shared>,
}

impl Panel {
    /// Ties `input` (0 unties) to `output` with the panel's buttons.
    ///
    /// # Errors
    /// [`SisError::InvalidInput`] or [`SisError::InvalidOutput`] out of range.
    pub fn tie(&self, input: u8, output: u8, kind: TieKind) -> Result<(), SisError> {
        let tie = Tie::new(input.into(), output.into(), kind);
        self.switch(|matrix| matrix.tie(&[tie]))
    }

    /// Ties `input` (0 unties) to every output.
    ///
    /// # Errors
    /// [`SisError::InvalidInput`] out of range.
    pub fn tie_all(&self, input: u8, kind: TieKind) -> Result<(), SisError> {
        self.switch(|matrix| matrix.tie_all(input.into(), kind))
    }

    /// A switching operation, reported as the device does: `Qik`.
    fn switch(&self, op: impl FnOnce(&mut Matrix) -> Result<(), SisError>) -> Result<(), SisError> {
        op(&mut self.shared.lock())?;
        let qik = Bytes::from_static(b"Qik\r\n");
        self.shared.notify(Origin::Panel, qik);
        Ok(())
    }

    /// Sets an output's video or audio mute; a notice only if that toggled it.
    ///
    /// # Errors
    /// [`SisError::InvalidOutput`] out of range.
    pub fn mute(&self, plane: Plane, output: u8, mute: bool) -> Result<(), SisError> {
        let mut matrix = self.shared.lock();
        if matrix.mute(plane, output.into(), mute)? {
            let mut bytes = BytesMut::new();
            proto::format_panel_mute(plane, output.into(), mute, &mut bytes);
            self.shared.notify(Origin::Panel, bytes.freeze());
        }
        Ok(())
    }
}

/// A running simulated switcher. Dropping it stops its tasks too, without waiting.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Sim {
    /// Listens on `listen` (port 0 picks one) and serves until [`Sim::stop`].
    ///
    /// # Errors
    /// Binding the address fails.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> io::Result<Sim> {
        let socket = match listen {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // Restarting on the same port must work while old connections sit in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            matrix: Mutex::new(Matrix::new(cfg.inputs, cfg.outputs, cfg.firmware.clone())),
            notices: broadcast::channel(NOTICE_CAPACITY).0,
            connections: AtomicUsize::new(0),
            lagged: AtomicU64::new(0),
            cfg,
        });
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        tracker.spawn(accept(
            listener,
            shared.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        debug!(%addr, "extron sim listening");
        Ok(Sim {
            addr,
            shared,
            cancel,
            tracker,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The front panel.
    pub fn panel(&self) -> Panel {
        Panel {
            shared: self.shared.clone(),
        }
    }

    /// The matrix now.
    pub fn state(&self) -> SimState {
        self.shared.lock().state().clone()
    }

    /// Connections being served.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Notices lost by connections that fell behind (each was sent `Qik` instead).
    pub fn lagged_notices(&self) -> u64 {
        self.shared.lagged.load(Ordering::Relaxed)
    }

    /// Sends raw bytes to every connection, whatever its state or mode.
    pub fn inject(&self, bytes: impl Into<Bytes>) {
        self.shared.notify(Origin::Injected, bytes.into());
    }

    /// Closes the listener and every connection, and waits for their tasks.
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

async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut next = 0u64;
    loop {
        let accepted = tokio::select! {
            // Stop: dropping the listener closes the port.
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(error = %e, "extron sim accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Only this task adds connections, so the check cannot race another accept.
        if shared.connections.load(Ordering::Relaxed) >= shared.cfg.max_connections {
            tracker.spawn(refuse(stream));
            continue;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        next += 1;
        tracker.spawn(serve(shared.clone(), stream, ConnId(next), cancel.clone()));
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = timeout(REFUSAL_TIMEOUT, stream.write_all(b"E26\r\n")).await;
}

enum Phase {
    /// Waiting for a password; `after_cr` swallows the LF of a CR LF.
    Password {
        entry: Vec<u8>,
        after_cr: bool,
    },
    Ready,
}

struct Session {
    shared: Arc<Shared>,
    id: ConnId,
    mode: VerboseMode,
    phase: Phase,
}

impl Drop for Session {
    /// Gives the connection's place back however its task ends.
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    fn wants(&self, notice: &Notice) -> bool {
        let listening = matches!(self.phase, Phase::Ready) && self.mode.notifies();
        match notice.origin {
            Origin::Injected => true,
            Origin::Panel => listening,
            Origin::Connection(from) => listening && from != self.id,
        }
    }

    /// Consumes password entries; returns the bytes left once logged in.
    fn login<'a>(&mut self, cfg: &SimConfig, mut data: &'a [u8], out: &mut BytesMut) -> &'a [u8] {
        while let Phase::Password { entry, after_cr } = &mut self.phase {
            let Some((&b, rest)) = data.split_first() else {
                break;
            };
            data = rest;
            let was_cr = std::mem::replace(after_cr, b == b'\r');
            match b {
                b'\n' if was_cr => {}
                b'\r' | b'\n' => {
                    let role = match Some(entry.as_slice()) {
                        e if e == cfg.password.as_deref().map(str::as_bytes) => {
                            Some(Role::Administrator)
                        }
                        e if e == cfg.user_password.as_deref().map(str::as_bytes) => {
                            Some(Role::User)
                        }
                        _ => None,
                    };
                    entry.clear();
                    match role {
                        Some(role) => {
                            proto::format_response(&Response::Login(role), out);
                            self.phase = Phase::Ready;
                        }
                        None => proto::format_response(&Response::PasswordPrompt, out),
                    }
                }
                // Telnet's CR NUL.
                0 => {}
                // One byte past the limit is kept, so a too-long entry never matches.
                _ if entry.len() <= MAX_PASSWORD_ENTRY => entry.push(b),
                _ => {}
            }
        }
        data
    }

    /// Runs every complete command in `pending`, appending the replies to `out`.
    async fn commands(&mut self, pending: &mut BytesMut, out: &mut BytesMut) {
        let shared = self.shared.clone();
        loop {
            pending.advance(proto::filler_len(pending));
            match proto::parse_command(pending) {
                Ok(Some((command, n))) => {
                    pending.advance(n);
                    if !shared.cfg.command_delay.is_zero() {
                        tokio::time::sleep(shared.cfg.command_delay).await;
                    }
                    let reply = shared.execute(self.id, &mut self.mode, command);
                    proto::format_response(&reply, out);
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "extron sim rejects a command");
                    pending.advance(e.consumed().min(pending.len()));
                    proto::format_response(&Response::Error(e.code()), out);
                }
            }
        }
    }
}

/// One controller connection, until it closes, times out or the sim stops.
async fn serve(shared: Arc<Shared>, mut stream: TcpStream, id: ConnId, cancel: CancellationToken) {
    // Subscribe before the banner, so no change after it is missed.
    let mut notices = shared.notices.subscribe();
    let cfg = &shared.cfg;
    let mut session = Session {
        shared: shared.clone(),
        id,
        mode: VerboseMode::Clear,
        phase: match cfg.password {
            Some(_) => Phase::Password {
                entry: Vec::new(),
                after_cr: false,
            },
            None => Phase::Ready,
        },
    };
    let mut out = BytesMut::new();
    proto::format_response(&Response::Banner(cfg.banner.clone()), &mut out);
    if cfg.password.is_some() {
        proto::format_response(&Response::PasswordPrompt, &mut out);
    }
    let mut pending = BytesMut::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    let mut idle_deadline = Instant::now() + cfg.idle_timeout;
    let mut char_deadline = None;
    loop {
        if !out.is_empty() {
            // A controller that stops reading must not keep `stop` waiting.
            let written = tokio::select! {
                () = cancel.cancelled() => break,
                written = stream.write_all(&out) => written,
            };
            if written.is_err() {
                break;
            }
            out.clear();
        }
        let abandon_at = char_deadline.unwrap_or(idle_deadline);
        tokio::select! {
            // Notices before reads: a change made before a command arrived is reported
            // before that command's reply, as on the device.
            biased;
            () = cancel.cancelled() => break,
            notice = notices.recv() => match notice {
                Ok(notice) if session.wants(&notice) => out.extend_from_slice(&notice.bytes),
                Ok(_) => {}
                Err(RecvError::Lagged(lost)) => {
                    shared.lagged.fetch_add(lost, Ordering::Relaxed);
                    warn!(lost, "extron sim connection lagged; sending Qik to resync");
                    if session.mode.notifies() {
                        out.extend_from_slice(b"Qik\r\n");
                    }
                }
                Err(RecvError::Closed) => break,
            },
            read = stream.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                idle_deadline = Instant::now() + cfg.idle_timeout;
                let rest = session.login(cfg, &chunk[..n], &mut out);
                if matches!(session.phase, Phase::Ready) {
                    pending.extend_from_slice(rest);
                    session.commands(&mut pending, &mut out).await;
                }
                char_deadline = (!pending.is_empty()).then(|| Instant::now() + cfg.char_timeout);
            }
            // A command left unfinished: dropped without a reply.
            () = sleep_until(abandon_at), if char_deadline.is_some() => {
                pending.clear();
                char_deadline = None;
            }
            // Port timeout.
            () = sleep_until(idle_deadline) => break,
        }
    }
    debug!(?id, "extron sim connection closed");
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
