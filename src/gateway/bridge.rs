//! The bridge between one browser WebSocket and one bus connection.
//!
//! The bus side is the ordinary connection code ([`crate::bus`]'s `handle`) on one end
//! of a `tokio::io::duplex` pipe, so a WebSocket session has exactly the TCP
//! protocol's handshake, sessions, resume, command answers, frame limit and bounded,
//! conflating outbox. The bridge only changes the framing:
//!
//! ```text
//!  browser ── binary message = one frame body ──> pump_in ── 4-byte length + body ──> pipe ─> handle
//!  browser <── one binary message per frame ─── pump_out <── length-prefixed frames ── pipe <─ handle
//! ```
//!
//! Bounds: a received message is at most `max_frame_bytes` (the WebSocket codec stops
//! reading a longer one from its header and the browser gets `frame_too_large`); the
//! pipe buffers [`BRIDGE_PIPE`] bytes each way, so a browser that does not read stalls
//! `pump_out`, then the connection's writer, and its outbox applies the bus's
//! slow-consumer policy exactly as for a TCP client that does not read.
//!
//! Refusals, like the TCP connection's protocol errors: a text message gets
//! `error {code: "bad_frame"}`, an oversized one `frame_too_large`, then a close. A
//! bad binary frame is refused by the connection code itself.

use std::fmt::Display;

use axum::extract::ws::{CloseFrame, Message};
use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::bus::codec;
use crate::bus::telemetry::TelemetrySlot;
use crate::protocol::{frame, BusMsg, ErrorCode, BUS_ENVELOPE, LEN_PREFIX};

/// Bytes buffered in each direction of the pipe between a WebSocket and its bus
/// connection. Small on purpose: the real queue is the connection's outbox, which
/// conflates and counts; the pipe only has to keep the pumps busy.
pub const BRIDGE_PIPE: usize = 64 * 1024;
/// Frames sent to the browser per flush: every frame already waiting is fed, then
/// one flush, up to this many (so one flush never waits behind an endless burst).
const SEND_BATCH: usize = 256;

/// WebSocket close codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_TOO_BIG: u16 = 1009;

/// How a bridge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The browser closed the WebSocket, or its connection failed.
    Peer,
    /// The bus ended the connection (bye, protocol error, shutdown): its last frame
    /// was forwarded, then the WebSocket was closed.
    Bus,
    /// The browser sent a message the protocol does not allow; it got this error.
    Refused(ErrorCode),
    /// Cut by the operator (`WebControl::drop_all`), with no close handshake.
    Dropped,
}

/// What one message from the browser means for the bus connection.
#[derive(Debug, PartialEq)]
pub(crate) enum Inbound {
    /// One frame body, to be written to the pipe behind its length prefix.
    Frame(Bytes),
    /// Nothing for the bus (WebSocket pings and pongs are the codec's business).
    Ignore,
    /// The browser is gone.
    Closed,
    /// A protocol error: answer it, then close.
    Refuse(ErrorCode, String),
}

/// Classifies what the WebSocket yielded.
pub(crate) fn inbound(next: Option<Result<Message, axum::Error>>, max_frame: usize) -> Inbound {
    match next {
        None | Some(Ok(Message::Close(_))) => Inbound::Closed,
        Some(Ok(Message::Binary(body))) if body.len() > max_frame => too_large(max_frame),
        Some(Ok(Message::Binary(body))) => Inbound::Frame(body),
        Some(Ok(Message::Text(_))) => Inbound::Refuse(
            ErrorCode::BadFrame,
            "text messages are not part of the protocol: send each frame as one binary \
             WebSocket message of MessagePack"
                .into(),
        ),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Ignore,
        Some(Err(e)) if is_too_large(&e) => too_large(max_frame),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket read failed");
            Inbound::Closed
        }
    }
}

fn too_large(max_frame: usize) -> Inbound {
    Inbound::Refuse(
        ErrorCode::FrameTooLarge,
        format!("frame longer than {max_frame} bytes"),
    )
}

fn is_too_large(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

/// The length prefix the connection code expects before `body`.
pub(crate) fn prefix(body: &[u8]) -> [u8; LEN_PREFIX] {
    // `body` is at most max_frame_bytes, which the config keeps within 32 bits.
    (body.len() as u32).to_be_bytes()
}

/// The WebSocket message for a protocol error sent by the bridge itself.
fn error_message(code: ErrorCode, message: String) -> Message {
    let f = frame(&BusMsg::Error {
        id: None,
        code,
        message,
    });
    Message::Binary(f.slice(LEN_PREFIX..))
}

/// Runs one bridge to its end: `tx`/`rx` are the WebSocket's halves, `pipe` the
/// bridge's end of the connection's pipe.
pub async fn run<Tx, Rx>(
    tx: Tx,
    rx: Rx,
    pipe: DuplexStream,
    telemetry: Arc<TelemetrySlot>,
    max_frame: usize,
    dropped: CancellationToken,
) -> Ended
where
    Tx: Sink<Message> + Unpin,
    Tx::Error: Display,
    Rx: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let (rd, wr) = tokio::io::split(pipe);
    let frames = FramedRead::new(rd, codec(max_frame + BUS_ENVELOPE));
    let (refuse_tx, refuse_rx) = oneshot::channel();
    let pump_out = pump_out(tx, frames, telemetry, refuse_rx);
    let pump_in = pump_in(rx, wr, max_frame, refuse_tx);
    tokio::pin!(pump_out, pump_in);
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            // Cut by the operator: end now, without a close handshake, as a network
            // failure would; dropping the pipe ends the bus connection (the session
            // stays resumable for its grace period).
            _ = dropped.cancelled() => return Ended::Dropped,
            // The browser-bound side decides how the bridge ends: after the bus's
            // last frame, after a refusal, or when the browser stops taking messages.
            end = &mut pump_out => return end,
            // The bus-bound side ending only ends the bridge when the browser is gone;
            // after a refusal, or once the bus stopped reading, pump_out finishes.
            end = &mut pump_in, if reading => match end {
                InEnd::Peer => return Ended::Peer,
                InEnd::Done => reading = false,
            },
        }
    }
}

enum InEnd {
    /// The browser closed or failed.
    Peer,
    /// Refused, or the bus side stopped reading: pump_out sends what is left.
    Done,
}

/// Browser → bus: each binary message becomes one length-prefixed frame.
async fn pump_in<Rx>(
    mut rx: Rx,
    mut pipe: WriteHalf<DuplexStream>,
    max_frame: usize,
    refuse: oneshot::Sender<(ErrorCode, String)>,
) -> InEnd
where
    Rx: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    loop {
        match inbound(rx.next().await, max_frame) {
            Inbound::Frame(body) => {
                // Waits while the pipe is full: the browser is then read no faster
                // than the connection forwards its frames to the router.
                let ok = pipe.write_all(&prefix(&body)).await.is_ok()
                    && pipe.write_all(&body).await.is_ok();
                if !ok {
                    return InEnd::Done;
                }
            }
            Inbound::Ignore => {}
            Inbound::Closed => return InEnd::Peer,
            Inbound::Refuse(code, message) => {
                let _ = refuse.send((code, message));
                // End of stream for the connection: like a TCP client cut off after a
                // protocol error, its session stays resumable.
                let _ = pipe.shutdown().await;
                return InEnd::Done;
            }
        }
    }
}

/// Bus → browser: each frame from the connection becomes one binary message.
async fn pump_out<Tx>(
    mut tx: Tx,
    mut frames: FramedRead<ReadHalf<DuplexStream>, LengthDelimitedCodec>,
    telemetry: Arc<TelemetrySlot>,
    mut refused: oneshot::Receiver<(ErrorCode, String)>,
) -> Ended
where
    Tx: Sink<Message> + Unpin,
    Tx::Error: Display,
{
    let mut refusals = true;
    let mut datagrams = Vec::new();
    loop {
        tokio::select! {
            biased;
            // A refusal of the browser's input is the last message: frames still
            // queued are dropped, as the TCP connection drops them on a protocol error.
            r = &mut refused, if refusals => match r {
                Ok((code, message)) => {
                    let close = match code {
                        ErrorCode::FrameTooLarge => CLOSE_TOO_BIG,
                        _ => CLOSE_UNSUPPORTED,
                    };
                    let _ = tx.send(error_message(code, message)).await;
                    close_ws(&mut tx, close, code.as_str()).await;
                    return Ended::Refused(code);
                }
                Err(_) => refusals = false,
            },
            // Control frames (session, state, answers) from the bus: every frame
            // already waiting is fed, then one flush. Telemetry is the branch after
            // this one: only sent when no control frame waits, from a bounded slot
            // where the newest datagrams win.
            next = frames.next() => {
                let mut done = false;
                let mut n = 0;
                let mut next = next;
                loop {
                    match next {
                        Some(Ok(body)) => {
                            if let Err(e) = tx.feed(Message::Binary(body.freeze())).await {
                                tracing::debug!(error = %e, "WebSocket write failed");
                                return Ended::Peer;
                            }
                        }
                        None | Some(Err(_)) => {
                            done = true;
                            break;
                        }
                    }
                    n += 1;
                    if n == SEND_BATCH {
                        break;
                    }
                    match frames.next().now_or_never() {
                        Some(more) => next = more,
                        None => break,
                    }
                }
                if n > 0 {
                    if let Err(e) = tx.flush().await {
                        tracing::debug!(error = %e, "WebSocket write failed");
                        return Ended::Peer;
                    }
                }
                if done {
                    close_ws(&mut tx, CLOSE_NORMAL, "closed by the bus").await;
                    return Ended::Bus;
                }
            }
            // Telemetry datagrams (protocol §11.2 bytes, first byte 0xA7): one binary
            // message each, at the rate the hub's gate lets them through.
            _ = telemetry.ready() => {
                telemetry.take(&mut datagrams);
                for d in datagrams.drain(..) {
                    if let Err(e) = tx.feed(Message::Binary(d)).await {
                        tracing::debug!(error = %e, "WebSocket write failed");
                        return Ended::Peer;
                    }
                }
                if let Err(e) = tx.flush().await {
                    tracing::debug!(error = %e, "WebSocket write failed");
                    return Ended::Peer;
                }
            }
        }
    }
}

async fn close_ws<Tx>(tx: &mut Tx, code: u16, reason: &str)
where
    Tx: Sink<Message> + Unpin,
{
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tx.send(close).await;
    let _ = tx.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_bus, decode_client, ClientMsg};
    use futures_util::stream;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    const MAX: usize = 1024;

    type FromWs = mpsc::Sender<Result<Message, axum::Error>>;

    /// A bridge between a fake WebSocket (two channels) and the test, which plays the
    /// bus connection on the other end of the pipe.
    struct Rig {
        from_browser: FromWs,
        to_browser: mpsc::Receiver<Message>,
        bus: tokio_util::codec::Framed<DuplexStream, LengthDelimitedCodec>,
        dropped: CancellationToken,
        bridge: tokio::task::JoinHandle<Ended>,
    }

    fn rig() -> Rig {
        let (from_browser, mut ws_rx) = mpsc::channel::<Result<Message, axum::Error>>(8);
        let (ws_tx, to_browser) = mpsc::channel::<Message>(8);
        let rx = stream::poll_fn(move |cx| ws_rx.poll_recv(cx));
        let tx = PollSender::new(ws_tx);
        let (ours, theirs) = tokio::io::duplex(BRIDGE_PIPE);
        let dropped = CancellationToken::new();
        let slot = Arc::new(TelemetrySlot::default());
        let bridge = tokio::spawn(run(tx, rx, ours, slot, MAX, dropped.clone()));
        Rig {
            from_browser,
            to_browser,
            bus: tokio_util::codec::Framed::new(theirs, codec(MAX)),
            dropped,
            bridge,
        }
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("in time")
    }

    fn body(msg: &ClientMsg) -> Bytes {
        frame(msg).slice(LEN_PREFIX..)
    }

    #[test]
    fn messages_are_classified() {
        let b = Bytes::from_static(&[0x81, 0xa1, 0x74, 0xa0]);
        assert_eq!(
            inbound(Some(Ok(Message::Binary(b.clone()))), MAX),
            Inbound::Frame(b)
        );
        assert!(matches!(
            inbound(Some(Ok(Message::Text("{}".into()))), MAX),
            Inbound::Refuse(ErrorCode::BadFrame, _)
        ));
        let big = Bytes::from(vec![0u8; MAX + 1]);
        assert!(matches!(
            inbound(Some(Ok(Message::Binary(big))), MAX),
            Inbound::Refuse(ErrorCode::FrameTooLarge, _)
        ));
        let capacity =
            tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
                size: MAX + 1,
                max_size: MAX,
            });
        assert!(matches!(
            inbound(Some(Err(axum::Error::new(capacity))), MAX),
            Inbound::Refuse(ErrorCode::FrameTooLarge, _)
        ));
        let reset = tungstenite::Error::ConnectionClosed;
        assert_eq!(
            inbound(Some(Err(axum::Error::new(reset))), MAX),
            Inbound::Closed
        );
        assert_eq!(
            inbound(Some(Ok(Message::Ping(Bytes::new()))), MAX),
            Inbound::Ignore
        );
        assert_eq!(inbound(None, MAX), Inbound::Closed);
        assert_eq!(prefix(&[0; 300]), [0, 0, 1, 44]);
    }

    #[tokio::test]
    async fn frames_cross_without_and_with_their_prefix() {
        let mut r = rig();
        let ping = body(&ClientMsg::Ping { n: 7 });
        r.from_browser
            .send(Ok(Message::Binary(ping.clone())))
            .await
            .unwrap();
        // The bus side reads one length-prefixed frame whose body is the message.
        let got = within(r.bus.next()).await.unwrap().unwrap();
        assert_eq!(&got[..], &ping[..]);
        assert_eq!(decode_client(&got).unwrap(), ClientMsg::Ping { n: 7 });
        // Two frames from the bus arrive as two messages, without prefixes.
        for n in [1, 2] {
            let f = frame(&BusMsg::Pong { n });
            r.bus.send(f.slice(LEN_PREFIX..)).await.unwrap();
        }
        for n in [1, 2] {
            match within(r.to_browser.recv()).await.unwrap() {
                Message::Binary(b) => assert_eq!(decode_bus(&b).unwrap(), BusMsg::Pong { n }),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_text_message_gets_bad_frame_and_a_close() {
        let mut r = rig();
        r.from_browser
            .send(Ok(Message::Text("hello".into())))
            .await
            .unwrap();
        match within(r.to_browser.recv()).await.unwrap() {
            Message::Binary(b) => match decode_bus(&b).unwrap() {
                BusMsg::Error { id, code, .. } => {
                    assert_eq!(id, None);
                    assert_eq!(code, ErrorCode::BadFrame);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            within(r.to_browser.recv()).await.unwrap(),
            Message::Close(Some(CloseFrame {
                code: CLOSE_UNSUPPORTED,
                ..
            }))
        ));
        // The connection sees the end of its input, as after a TCP protocol error.
        assert!(within(r.bus.next()).await.is_none());
        assert_eq!(
            within(r.bridge).await.unwrap(),
            Ended::Refused(ErrorCode::BadFrame)
        );
    }

    #[tokio::test]
    async fn the_bus_closing_forwards_its_last_frame_then_closes() {
        let mut r = rig();
        let bye = frame(&BusMsg::Bye {
            reason: "shutdown".into(),
            message: String::new(),
        });
        r.bus.send(bye.slice(LEN_PREFIX..)).await.unwrap();
        drop(r.bus);
        assert!(matches!(
            within(r.to_browser.recv()).await.unwrap(),
            Message::Binary(b) if matches!(decode_bus(&b), Ok(BusMsg::Bye { .. }))
        ));
        assert!(matches!(
            within(r.to_browser.recv()).await.unwrap(),
            Message::Close(Some(CloseFrame {
                code: CLOSE_NORMAL,
                ..
            }))
        ));
        assert_eq!(within(r.bridge).await.unwrap(), Ended::Bus);
    }

    #[tokio::test]
    async fn the_browser_leaving_ends_the_connection() {
        let mut r = rig();
        drop(r.from_browser);
        assert_eq!(within(r.bridge).await.unwrap(), Ended::Peer);
        assert!(within(r.bus.next()).await.is_none());
    }

    #[tokio::test]
    async fn a_drop_cuts_without_a_close() {
        let mut r = rig();
        r.dropped.cancel();
        assert_eq!(within(r.bridge).await.unwrap(), Ended::Dropped);
        assert!(within(r.bus.next()).await.is_none());
        // No close frame: the browser sees the connection fail.
        assert!(within(r.to_browser.recv()).await.is_none());
    }
}
