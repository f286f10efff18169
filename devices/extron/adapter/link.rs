//! The connection to a switcher: connect, log in, set verbose mode 3 and read the size
//! (see "Connection" in [`super`]), and sending commands and reading responses on it.

use bytes::BufMut;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::{MatrixSize, Settings, PROMPT_WAIT};
use crate::devices::extron::proto::{ClientCodec, Command, ProtoError, Response};
use crate::devices::extron::{SisError, VerboseMode};
use crate::devices::kit::DeviceError;

pub(super) type Link = Framed<TcpStream, ClientCodec>;

pub(super) fn write_error(e: ProtoError) -> DeviceError {
    DeviceError::Unreachable(format!("writing to the switcher: {e}"))
}

pub(super) async fn send(
    io: &mut Link,
    commands: impl IntoIterator<Item = Command>,
) -> Result<(), DeviceError> {
    for c in commands {
        io.feed(c).await.map_err(write_error)?;
    }
    SinkExt::<Command>::flush(io).await.map_err(write_error)
}

/// The next response. Cancel-safe: `Framed` keeps partial lines in its buffer.
pub(super) async fn recv(io: &mut Link) -> Result<Response, DeviceError> {
    match io.next().await {
        Some(Ok(r)) => Ok(r),
        Some(Err(ProtoError::Io(e))) => Err(DeviceError::Unreachable(format!(
            "reading from the switcher: {e}"
        ))),
        Some(Err(e)) => Err(DeviceError::Protocol(e.to_string())),
        None => Err(DeviceError::Unreachable(
            "the switcher closed the connection".into(),
        )),
    }
}

pub(super) fn unexpected(r: &Response, during: &str) -> DeviceError {
    let text = match r {
        Response::Banner(t) | Response::Value(t) => format!("`{}`", t.escape_debug()),
        other => format!("{other:?}"),
    };
    DeviceError::Protocol(format!("unexpected {text} {during}"))
}

/// A line of the greeting that is not the one awaited: the banner and a date line are
/// skipped, `E26` means the device is full, anything else is an error.
fn greeting(r: &Response, during: &str) -> Result<(), DeviceError> {
    match r {
        Response::Banner(_) | Response::Value(_) => Ok(()),
        Response::Error(SisError::MaxConnections) => Err(DeviceError::Unreachable(
            "E26: the switcher serves its maximum of connections".into(),
        )),
        other => Err(unexpected(other, during)),
    }
}

/// Connects, logs in, sets verbose mode 3 and reads the size.
pub(super) async fn open(s: &Settings) -> Result<(Link, MatrixSize), DeviceError> {
    let stream = TcpStream::connect((s.host.as_str(), s.port))
        .await
        .map_err(|e| DeviceError::Unreachable(format!("{}:{}: {e}", s.host, s.port)))?;
    // Commands are a few bytes each and wait for their answer.
    let _ = stream.set_nodelay(true);
    let mut io = Framed::new(stream, ClientCodec);
    let verbose = Command::SetVerbose(VerboseMode::VerboseTagged);
    match &s.password {
        Some(password) => {
            login(&mut io, password).await?;
            send(&mut io, [verbose]).await?;
        }
        // Sent at once: a device that does ask for a password takes it as a wrong one
        // and prompts again, which the loop below reports.
        None => send(&mut io, [verbose]).await?,
    }
    loop {
        match recv(&mut io).await? {
            Response::Verbose(VerboseMode::VerboseTagged) => break,
            Response::PasswordPrompt => {
                return Err(DeviceError::Auth(
                    "the switcher asks for a password and none is configured".into(),
                ))
            }
            other => greeting(&other, "in answer to ESC 3CV CR")?,
        }
    }
    send(&mut io, [Command::Information]).await?;
    loop {
        match recv(&mut io).await? {
            Response::Value(info) => {
                let size = MatrixSize::parse(&info).ok_or_else(|| {
                    DeviceError::Protocol(format!(
                        "`{}` is no matrix size (I answers like V8X8 A8X8)",
                        info.escape_debug()
                    ))
                })?;
                return Ok((io, size));
            }
            // Notices may already arrive; the first poll follows anyway.
            Response::Tie(_)
            | Response::TieAll { .. }
            | Response::QuickTie
            | Response::VideoMute { .. }
            | Response::AudioMute { .. }
            | Response::GlobalVideoMute(_)
            | Response::GlobalAudioMute(_) => {}
            other => return Err(unexpected(&other, "in answer to I")),
        }
    }
}

/// Waits for the prompt, sends the password and waits for `Login …`.
async fn login(io: &mut Link, password: &str) -> Result<(), DeviceError> {
    let prompt = async {
        loop {
            match recv(io).await? {
                Response::PasswordPrompt => return Ok(()),
                other => greeting(&other, "before the password prompt")?,
            }
        }
    };
    tokio::time::timeout(PROMPT_WAIT, prompt)
        .await
        .map_err(|_| {
            DeviceError::Auth(format!(
                "a password is configured but the switcher asked for none within {PROMPT_WAIT:?}"
            ))
        })??;
    // The password is no command, so it bypasses the codec; nothing else is queued.
    let buf = io.write_buffer_mut();
    buf.put_slice(password.as_bytes());
    buf.put_u8(b'\r');
    SinkExt::<Command>::flush(io).await.map_err(write_error)?;
    loop {
        match recv(io).await? {
            Response::Login(_) => return Ok(()),
            Response::PasswordPrompt => {
                return Err(DeviceError::Auth(
                    "the switcher refused the password (it asked again)".into(),
                ))
            }
            other => greeting(&other, "in answer to the password")?,
        }
    }
}
