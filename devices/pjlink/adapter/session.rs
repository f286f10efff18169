//! The PJLink session: opening it (TCP, the greeting, the MD5 digest for the first
//! command), one command's exchange, and the reuse policy of the module
//! documentation ([`super`], "Connection policy").

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{PjlinkDriver, CONNECT_TIMEOUT, IDLE_REUSE, REPLY_TIMEOUT};
use crate::devices::kit::DeviceError;
use crate::devices::pjlink::proto::{
    format_line, next_line, parse_line, AuthDigest, Body, Class, Command, Greeting, Message,
    ProtoError, Reply, MAX_FIRST_LINE,
};

/// One open session with the projector.
pub(super) struct Link {
    pub(super) stream: TcpStream,
    /// Bytes read and not yet parsed; [`next_line`] bounds it.
    pub(super) buf: BytesMut,
    /// In front of the next command: only the first of a session carries it.
    digest: Option<AuthDigest>,
    /// When a command last went out.
    used: Instant,
}

impl Link {
    /// The next line, parsed. `Ok(None)`: the projector closed the session.
    /// Cancel-safe: what was read stays in `buf`.
    async fn read_message(&mut self) -> Result<Option<Message>, ProtoError> {
        loop {
            if let Some(line) = next_line(&mut self.buf)? {
                return parse_line(&line).map(Some);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }
}

impl PjlinkDriver {
    /// Opens a session: TCP, the greeting, and the digest for the first command.
    async fn open(&self) -> Result<Link, DeviceError> {
        let s = &*self.settings;
        let unreachable =
            |why: String| DeviceError::Unreachable(format!("{}:{}: {why}", s.host, s.port));
        let connect = TcpStream::connect((s.host.as_str(), s.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        let buf = BytesMut::with_capacity(MAX_FIRST_LINE);
        let (digest, used) = (None, Instant::now());
        let mut link = Link {
            stream,
            buf,
            digest,
            used,
        };
        let greeting = match tokio::time::timeout(REPLY_TIMEOUT, link.read_message()).await {
            Ok(Ok(Some(message))) => message,
            // One-controller models close further connections without a greeting.
            Ok(Ok(None)) => {
                return Err(unreachable(
                    "closed before its greeting (another controller?)".into(),
                ))
            }
            Ok(Err(e)) => return Err(self.not_pjlink(e)),
            Err(_) => return Err(unreachable(format!("no greeting within {REPLY_TIMEOUT:?}"))),
        };
        match (greeting, &s.password) {
            (Message::Greeting(Greeting::Open), _) => {}
            (Message::Greeting(Greeting::Challenge(random)), Some(password)) => {
                link.digest = Some(AuthDigest::compute(&random, password));
            }
            (Message::Greeting(Greeting::Challenge(_)), None) => {
                let why = "the projector asks for a password: set `password` in its [[device]]";
                return Err(DeviceError::Auth(why.into()));
            }
            (other, _) => {
                let why = format!("expected the greeting, got {other:?}");
                return Err(DeviceError::Protocol(why));
            }
        }
        Ok(link)
    }

    /// Logs bytes that are not PJLink (escaped by the codec); they end the session.
    pub(super) fn not_pjlink(&self, e: ProtoError) -> DeviceError {
        warn!(device = self.key(), error = %e, "PJLink: not PJLink; dropping the session");
        DeviceError::Protocol(e.to_string())
    }

    /// Sends `command` on the open session and waits for its reply, skipping lines
    /// that are not it (unsolicited ones). `Ok(None)`: the projector closed the
    /// session without replying.
    async fn exchange(&mut self, command: &Command) -> Result<Option<Reply>, DeviceError> {
        let Some(link) = self.link.as_mut() else {
            return Ok(None);
        };
        let digest = link.digest.take();
        let line = format_line(&Message::Command {
            digest,
            command: command.clone(),
        });
        if link.stream.write_all(&line).await.is_err() {
            return Ok(None);
        }
        link.used = Instant::now();
        let reply = async {
            loop {
                match link.read_message().await? {
                    None => return Ok(None),
                    Some(Message::Response(r))
                        if (r.class, r.body) == (command.class, command.body) =>
                    {
                        return Ok(Some(Ok(r.reply)))
                    }
                    Some(Message::Response(r)) => debug!(line = ?r, "PJLink: skipped a line"),
                    Some(other) => return Ok(Some(Err(other))),
                }
            }
        };
        let body = command.body.as_str();
        let result = tokio::time::timeout(REPLY_TIMEOUT, reply).await;
        match result {
            Ok(Ok(Some(Ok(reply)))) => Ok(Some(reply)),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(Err(Message::AuthError)))) => Err(DeviceError::Auth(
                "the projector refused the password (PJLINK ERRA)".into(),
            )),
            Ok(Ok(Some(Err(other)))) => Err(DeviceError::Protocol(format!(
                "{other:?} instead of the reply to {body}"
            ))),
            Ok(Err(e)) => Err(self.not_pjlink(e)),
            Err(_) => Err(DeviceError::Unreachable(format!(
                "no reply to {body} within {REPLY_TIMEOUT:?}"
            ))),
        }
    }

    /// One class 1 command and its reply, over the open session or a new one (see
    /// the connection policy in the module documentation).
    pub(super) async fn ask(&mut self, body: Body, param: &str) -> Result<Reply, DeviceError> {
        let command = Command::new(Class::One, body, param)
            .map_err(|e| DeviceError::Protocol(e.to_string()))?;
        loop {
            let idle = self
                .link
                .as_ref()
                .is_some_and(|l| l.used.elapsed() >= IDLE_REUSE);
            if std::mem::take(&mut self.interrupted) || idle {
                self.link = None;
            }
            let fresh = self.link.is_none();
            if fresh {
                self.link = Some(self.open().await?);
            }
            self.interrupted = true;
            let reply = self.exchange(&command).await;
            self.interrupted = false;
            match reply {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) if !fresh => {
                    debug!(
                        device = self.key(),
                        "PJLink: session closed by the projector; reopening"
                    );
                    self.link = None;
                }
                Ok(None) => {
                    self.link = None;
                    return Err(DeviceError::Unreachable(format!(
                        "the projector closed the session instead of answering {}",
                        body.as_str()
                    )));
                }
                Err(e) => {
                    self.link = None;
                    return Err(e);
                }
            }
        }
    }
}
