//! One client connection: handshake, the reader loop with heartbeats, and the writer
//! task that drains the connection's [`Outbox`].
//!
//! Generic over the byte stream, so TCP connections and in-process adapters (a
//! `tokio::io::duplex` pair) run exactly the same code. Tasks per connection: this
//! reader (decodes frames, answers pings, forwards the rest to the router) and one
//! writer (takes everything queued, writes it with one reused buffer, flushes once).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::outbox::{DirectWrite, Drain, Item, Outbox, OutboxLimits};
use super::router::{ConnId, Hello, RouterMsg};
use super::tcp::SharedTcp;
use super::telemetry::{HubHandle, HubMsg, TelemetrySlot};
use crate::config::Config;
use crate::protocol::{
    decode_client, frame, BusMsg, ClientMsg, ErrorCode, SessionId, PROTOCOL_VERSION,
};

/// Bytes gathered before a write call; larger frames are written on their own.
const WRITE_CHUNK: usize = 64 * 1024;

/// What every connection needs from the bus.
pub struct ConnCtx {
    pub cfg: Arc<Config>,
    pub router: mpsc::Sender<RouterMsg>,
    pub hub: HubHandle,
    pub next_conn: AtomicU64,
}

/// The length-prefixed framing: 4-byte big-endian length, bounded body.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

fn error_frame(code: ErrorCode, message: String) -> Bytes {
    frame(&BusMsg::Error {
        id: None,
        code,
        message,
    })
}

fn read_error(e: &std::io::Error, max: usize) -> (ErrorCode, String) {
    if e.kind() == std::io::ErrorKind::InvalidData {
        (
            ErrorCode::FrameTooLarge,
            format!("frame longer than {max} bytes"),
        )
    } else {
        (ErrorCode::BadFrame, e.to_string())
    }
}

/// A telemetry token: unguessable (from the operating system's random source),
/// never 0.
fn new_token() -> u64 {
    loop {
        match getrandom::u64() {
            Ok(0) => continue,
            Ok(t) => return t,
            // No OS randomness is not recoverable for a server handing out tokens;
            // fall back to a seeded generator rather than refusing the connection.
            Err(_) => return fastrand::u64(1..),
        }
    }
}

/// Runs one connection to its end. `ip` is the peer's address (`None` in-process):
/// telemetry datagrams for this connection's token must come from it.
///
/// `slot`: a WebSocket client's telemetry goes there instead of UDP.
pub async fn handle<S>(
    stream: S,
    peer: String,
    ip: Option<IpAddr>,
    slot: Option<Arc<TelemetrySlot>>,
    ctx: Arc<ConnCtx>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    serve(rd, wr, None, peer, ip, slot, ctx).await;
}

/// Runs one TCP connection to its end; the router may write to it directly (see
/// [`super::outbox::Outbox::flush`]).
pub async fn handle_tcp(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<ConnCtx>,
) {
    let shared = SharedTcp(Arc::new(stream));
    let direct: Arc<dyn DirectWrite> = Arc::new(shared.clone());
    serve(
        shared.clone(),
        shared,
        Some(direct),
        peer.to_string(),
        Some(peer.ip()),
        None,
        ctx,
    )
    .await;
}

async fn serve<R, W>(
    rd: R,
    mut wr: W,
    direct: Option<Arc<dyn DirectWrite>>,
    peer: String,
    ip: Option<IpAddr>,
    slot: Option<Arc<TelemetrySlot>>,
    ctx: Arc<ConnCtx>,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let cfg = ctx.cfg.clone();
    let max = cfg.limits.max_frame_bytes;
    let mut reader = FramedRead::new(rd, codec(max));

    let handshake = Duration::from_millis(cfg.session.handshake_ms);
    let hello = match tokio::time::timeout(handshake, reader.next()).await {
        Err(_) => Err((ErrorCode::HandshakeTimeout, format!("no hello within {} ms", cfg.session.handshake_ms))),
        Ok(None) => return,
        Ok(Some(Err(e))) => Err(read_error(&e, max)),
        Ok(Some(Ok(body))) => match decode_client(&body) {
            Ok(ClientMsg::Hello { v, .. }) if v != PROTOCOL_VERSION => Err((
                ErrorCode::VersionMismatch,
                format!("client speaks protocol version {v}, this bus speaks version {PROTOCOL_VERSION}"),
            )),
            Ok(ClientMsg::Hello { name, role, resume, .. }) => Ok(Hello { name, role, resume, token: new_token() }),
            Ok(_) => Err((ErrorCode::Unexpected, "the first frame must be hello".into())),
            Err(e) => Err((e.code(), e.to_string())),
        },
    };
    let hello = match hello {
        Ok(h) => h,
        Err((code, message)) => {
            tracing::debug!(%peer, %code, message, "handshake refused");
            let _ = wr.write_all(&error_frame(code, message)).await;
            let _ = wr.shutdown().await;
            return;
        }
    };

    let outbox = Outbox::with_direct(
        OutboxLimits {
            frames: cfg.limits.outbox_frames,
            bytes: cfg.limits.outbox_bytes,
            conflate_topics: cfg.limits.conflate_topics,
        },
        direct,
    );
    let conn: ConnId = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let name = hello.name.clone();
    let token = hello.token;
    let connect = RouterMsg::Connect {
        hello,
        conn,
        outbox: outbox.clone(),
        reply: tx,
    };
    if ctx.router.send(connect).await.is_err() {
        return;
    }
    let Ok(session) = rx.await else { return };
    tracing::debug!(%peer, %session, %name, "connected");
    let _ = ctx
        .hub
        .ctl
        .send(HubMsg::Attach {
            conn,
            session,
            token,
            outbox: outbox.clone(),
            peer: ip,
            slot,
        })
        .await;

    let mut writer = tokio::spawn(write_loop(
        wr,
        outbox.clone(),
        ctx.router.clone(),
        session,
        conn,
    ));
    let (reason, clean, writer_done) =
        read_loop(&mut reader, &outbox, &ctx, session, conn, &mut writer).await;
    tracing::debug!(%peer, %session, %name, reason, "connection ended");
    let _ = ctx.hub.ctl.send(HubMsg::Detach { conn }).await;
    let _ = ctx
        .router
        .send(RouterMsg::Disconnected {
            session,
            conn,
            reason,
            clean,
        })
        .await;
    // The router closes the outbox on `Disconnected`; close it here too in case the
    // router is gone, then give the writer a moment to send a final frame.
    outbox.close(None);
    if !writer_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, LengthDelimitedCodec>,
    outbox: &Outbox,
    ctx: &ConnCtx,
    session: SessionId,
    conn: ConnId,
    writer: &mut tokio::task::JoinHandle<()>,
) -> (String, bool, bool) {
    let max = ctx.cfg.limits.max_frame_bytes;
    let interval = ctx.cfg.heartbeat();
    let silent_limit = interval * ctx.cfg.session.heartbeat_misses;
    let mut last_rx = Instant::now();
    let mut ping = 0u64;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Frames from the client; FramedRead yields every complete frame already
            // buffered before it reads the socket again.
            next = reader.next() => {
                let body = match next {
                    None => return ("closed by peer".into(), false, false),
                    Some(Err(e)) => {
                        let (code, message) = read_error(&e, max);
                        outbox.close(Some(error_frame(code, message.clone())));
                        return (format!("{code}: {message}"), false, false);
                    }
                    Some(Ok(body)) => body,
                };
                last_rx = Instant::now();
                match decode_client(&body) {
                    Ok(ClientMsg::Ping { n }) => {
                        let _ = outbox.push(frame(&BusMsg::Pong { n }));
                    }
                    Ok(ClientMsg::Pong { .. }) => {}
                    Ok(ClientMsg::Bye { .. }) => return ("goodbye".into(), true, false),
                    // Telemetry requests go to the hub, never through the router.
                    Ok(ClientMsg::Tsub { id, filter, hz }) => {
                        if ctx.hub.ctl.send(HubMsg::Subscribe { conn, id, filter, hz }).await.is_err() {
                            return ("bus stopping".into(), false, false);
                        }
                    }
                    Ok(ClientMsg::Tunsub { id, sub }) => {
                        if ctx.hub.ctl.send(HubMsg::Unsubscribe { conn, id, sub }).await.is_err() {
                            return ("bus stopping".into(), false, false);
                        }
                    }
                    Ok(msg) => {
                        if ctx.router.send(RouterMsg::Client { session, conn, msg }).await.is_err() {
                            return ("bus stopping".into(), false, false);
                        }
                    }
                    Err(e) => {
                        outbox.close(Some(error_frame(e.code(), e.to_string())));
                        return (format!("{}: {e}", e.code()), false, false);
                    }
                }
            }
            // Heartbeat: ping when idle, drop when silent too long.
            _ = tick.tick() => {
                let idle = last_rx.elapsed();
                if idle >= silent_limit {
                    outbox.close(Some(frame(&BusMsg::Bye {
                        reason: "heartbeat_timeout".into(),
                        message: format!("nothing received for {} ms", idle.as_millis()),
                    })));
                    return ("heartbeat_timeout".into(), false, false);
                }
                if idle >= interval {
                    ping += 1;
                    let _ = outbox.push(frame(&BusMsg::Ping { n: ping }));
                }
            }
            // The writer stopped: the socket failed, or the router closed the outbox
            // (replaced by a resume, slow consumer, shutdown).
            _ = &mut *writer => return ("closed by the bus".into(), false, true),
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    outbox: Arc<Outbox>,
    router: mpsc::Sender<RouterMsg>,
    session: SessionId,
    conn: ConnId,
) {
    let mut items = Vec::new();
    let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
    loop {
        let notified = outbox.notified();
        let step = outbox.drain(&mut items);
        let ok = match step {
            Drain::Empty => {
                notified.await;
                continue;
            }
            Drain::Close(last) => {
                if let Some(f) = last {
                    let _ = wr.write_all(&f).await;
                }
                let _ = wr.shutdown().await;
                return;
            }
            Drain::Items => write_items(&mut wr, &mut items, &mut buf).await,
            Drain::NeedResync => {
                let ok = write_items(&mut wr, &mut items, &mut buf).await;
                let _ = router.send(RouterMsg::Resync { session, conn }).await;
                ok
            }
        };
        if !ok {
            outbox.close(None);
            return;
        }
    }
}

async fn write_items<W: AsyncWrite + Unpin>(
    wr: &mut W,
    items: &mut Vec<Item>,
    buf: &mut BytesMut,
) -> bool {
    buf.clear();
    for item in items.drain(..) {
        match item {
            Item::Frame(f) => {
                if !write_frame(wr, buf, f).await {
                    return false;
                }
            }
            Item::Batch(v) => {
                for f in v {
                    if !write_frame(wr, buf, f).await {
                        return false;
                    }
                }
            }
        }
    }
    if !buf.is_empty() && wr.write_all(buf).await.is_err() {
        return false;
    }
    wr.flush().await.is_ok()
}

/// Adds a frame to the write buffer, writing the buffer out when full; a large frame
/// is written directly instead of being copied.
async fn write_frame<W: AsyncWrite + Unpin>(wr: &mut W, buf: &mut BytesMut, f: Bytes) -> bool {
    if buf.len() + f.len() > WRITE_CHUNK && !buf.is_empty() {
        if wr.write_all(buf).await.is_err() {
            return false;
        }
        buf.clear();
    }
    if f.len() >= WRITE_CHUNK {
        return wr.write_all(&f).await.is_ok();
    }
    buf.extend_from_slice(&f);
    true
}
