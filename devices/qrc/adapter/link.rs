//! The TCP connection to a Core: connect and logon, requests and their answers, and the
//! change group pushes that arrive meanwhile (kept, never lost), with the keepalive
//! bookkeeping of "Keepalive" in [`super`].

use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{at, link_error, Settings, GROUP};
use crate::devices::kit::DeviceError;
use crate::devices::qrc::proto::{
    encode_request, parse_incoming, EngineState, EngineStatus, ErrorCode as QrcCode, Framer,
    Incoming, Notification, PollResult, ProtoError, Request, RpcError, RpcId, MAX_MESSAGE,
};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The TCP connection to a Core: the read buffer, bytes not yet written, request ids,
/// and the pushes that arrived while a request waited for its answer.
pub(super) struct Link {
    pub(super) peer: String,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    framer: Framer,
    chunk: Box<[u8]>,
    outbox: Vec<u8>,
    next_id: i64,
    pub(super) last_sent: Instant,
    pub(super) last_received: Instant,
    pub(super) pushes: Vec<PollResult>,
    /// The newest `EngineStatus` (one always comes first).
    pub(super) status: Option<EngineStatus>,
}

impl Link {
    /// Connects, takes the `EngineStatus` the Core pushes first, and logs on.
    pub(super) async fn open(s: &Settings) -> Result<Link, DeviceError> {
        let stream = TcpStream::connect(&s.addr)
            .await
            .map_err(|e| DeviceError::Unreachable(format!("{}: {e}", s.addr)))?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let now = Instant::now();
        let mut link = Link {
            peer: s.addr.clone(),
            rd,
            wr,
            framer: Framer::new(MAX_MESSAGE),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            outbox: Vec::new(),
            next_id: 0,
            last_sent: now,
            last_received: now,
            pushes: Vec::new(),
            status: None,
        };
        match link.next_incoming(None).await? {
            Some(Incoming::Notification(Notification::EngineStatus(status))) => {
                if status.state != EngineState::Active {
                    tracing::warn!(peer = %link.peer, state = ?status.state, "qrc: the Core is not active");
                }
                link.status = Some(status);
            }
            other => {
                return Err(DeviceError::Protocol(format!(
                    "expected the EngineStatus a Core sends on connect, got {other:?}"
                )))
            }
        }
        if let Some((user, password)) = &s.credentials {
            let logon = Request::Logon {
                user: user.clone(),
                password: password.clone(),
            };
            match link.call(&logon).await? {
                Ok(_) => {}
                Err(e) if e.kind() == Some(QrcCode::LogonRequired) => {
                    return Err(DeviceError::Auth(format!(
                        "the Core refused the logon of user {user:?}"
                    )))
                }
                Err(e) => return Err(DeviceError::Protocol(format!("Logon: {e}"))),
            }
        }
        Ok(link)
    }

    /// Queues a request; it is written by the next read or request.
    pub(super) fn queue(&mut self, request: &Request) -> RpcId {
        self.next_id += 1;
        let id = RpcId::Number(self.next_id);
        self.outbox.extend(encode_request(Some(&id), request));
        self.last_sent = Instant::now();
        id
    }

    /// Sends a request and waits for its answer, keeping what else arrives meanwhile.
    pub(super) async fn call(
        &mut self,
        request: &Request,
    ) -> Result<Result<Json, RpcError>, DeviceError> {
        let id = self.queue(request);
        loop {
            match self.next_incoming(None).await? {
                Some(Incoming::Response {
                    id: Some(got),
                    outcome,
                }) if got == id => return Ok(outcome),
                Some(other) => self.absorb(other)?,
                None => {}
            }
        }
    }

    /// [`Link::call`] for requests whose failure breaks the link.
    pub(super) async fn call_ok(&mut self, request: &Request) -> Result<Json, DeviceError> {
        let method = method_name(request);
        self.call(request)
            .await?
            .map_err(|e| link_error(&method, e))
    }

    /// The next message from the Core, writing queued bytes meanwhile; `None` when
    /// `wake` came first. Cancel-safe: a read or write either completed (and its bytes
    /// are in the framer or gone from the outbox) or did nothing.
    pub(super) async fn next_incoming(
        &mut self,
        wake: Option<Instant>,
    ) -> Result<Option<Incoming>, DeviceError> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(Some(message));
            }
            tokio::select! {
                read = self.rd.read(&mut self.chunk) => match read {
                    Ok(0) => return Err(DeviceError::Unreachable(format!("{} closed the connection", self.peer))),
                    Ok(n) => {
                        self.framer.extend(&self.chunk[..n]);
                        self.last_received = Instant::now();
                    }
                    Err(e) => return Err(DeviceError::Unreachable(format!("{}: {e}", self.peer))),
                },
                // Requests go out while we read, so a Core pushing a lot never
                // blocks our writes (nor we its).
                written = self.wr.write(&self.outbox), if !self.outbox.is_empty() => match written {
                    Ok(0) => return Err(DeviceError::Unreachable(format!("{} stopped taking bytes", self.peer))),
                    Ok(n) => { self.outbox.drain(..n); }
                    Err(e) => return Err(DeviceError::Unreachable(format!("{}: {e}", self.peer))),
                },
                () = at(wake) => return Ok(None),
            }
        }
    }

    /// A complete message already read, if any. Garbage ends the link; notifications of
    /// methods we do not use are skipped.
    fn take_message(&mut self) -> Result<Option<Incoming>, DeviceError> {
        let garbage = |peer: &str, e: ProtoError| {
            tracing::warn!(peer, error = %e, "qrc: garbage from the Core: dropping the link");
            DeviceError::Protocol(e.to_string())
        };
        loop {
            let Some(frame) = self.framer.next_frame() else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| garbage(&self.peer, e))?;
            match parse_incoming(&frame) {
                Ok(message) => return Ok(Some(message)),
                Err(ProtoError::UnknownMethod {
                    method, excerpt, ..
                }) => tracing::debug!(peer = %self.peer, method, excerpt, "qrc: message skipped"),
                Err(e) => return Err(garbage(&self.peer, e)),
            }
        }
    }

    /// Keeps a message that is not the answer being waited for.
    pub(super) fn absorb(&mut self, message: Incoming) -> Result<(), DeviceError> {
        match message {
            Incoming::Notification(Notification::ChangeGroupPoll(poll)) => {
                if poll.id.0 == GROUP {
                    self.pushes.push(poll);
                }
            }
            Incoming::Notification(Notification::EngineStatus(status)) => {
                tracing::info!(peer = %self.peer, state = ?status.state, design = %status.design_name, "qrc: engine status");
                self.status = Some(status);
            }
            Incoming::Response {
                outcome: Err(e), ..
            } if e.kind() == Some(QrcCode::LogonRequired) => {
                return Err(DeviceError::Auth("the Core wants a logon".into()))
            }
            // An answer to a `NoOp`, or an error for one: worth a line, not the link.
            Incoming::Response { id, outcome } => {
                if let Err(e) = outcome {
                    tracing::warn!(peer = %self.peer, ?id, error = %e, "qrc: the Core refused a request");
                }
            }
        }
        Ok(())
    }
}

/// A request's method, for messages.
fn method_name(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v.get("method").and_then(Json::as_str).map(str::to_owned))
        .unwrap_or_default()
}
