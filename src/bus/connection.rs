//! One client connection: handshake, the reader loop with heartbeats, and the writer
//! task that drains the connection's [`Outbox`].
//!
//! Generic over the byte stream, so TCP connections and in-process adapters (a
//! `tokio::io::duplex` pair) run exactly the same code. Tasks per connection: this
//! reader (decodes frames, answers pings, applies the rest under the router's lock,
//! or queues them to the router's task while the lock is held) and one writer (takes
//! everything queued, writes it with one reused buffer, flushes once).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead, LengthDelimitedCodec};

use super::guard::{bump, AddressSlots, GuardStats, Rate, RateLimit};
use super::outbox::{DirectWrite, Drain, Item, Outbox, OutboxLimits};
use super::router::{ConnId, Hello, RouterCore, RouterMsg};
use super::tcp::SharedTcp;
use super::telemetry::{HubHandle, HubMsg, TelemetrySlot};
use crate::auth::{AuthRefusal, Authenticator, Backoff, Grant};
use crate::config::Config;
use crate::protocol::{
    decode_client, decode_client_from, frame, BusMsg, ClientMsg, ErrorCode, SessionId, LEN_PREFIX,
    PROTOCOL_VERSION,
};
use crate::tls::ServerTls;
use crate::value::Value;

/// Bytes gathered before a write call; larger frames are written on their own.
const WRITE_CHUNK: usize = 64 * 1024;

/// The read buffer's first capacity.
const READ_START: usize = 1024;

/// The read buffer's largest capacity between frames (a frame longer than this grows
/// it for that frame only): what one read takes from a busy publisher.
const READ_MAX: usize = 64 * 1024;

/// Reads in a row that use under a quarter of the read buffer before it is halved.
const READ_SHRINK_AFTER: u32 = 16;

/// Sizes a connection's read buffer to its traffic, as nats-server does: doubled
/// (up to 64 KiB) when a read filled it, halved (down to 1 KiB) after 16 reads in a
/// row that used under a quarter of it. An idle panel
/// keeps 1 KiB; a publisher's burst is taken in 64 KiB reads, one system call for
/// hundreds of frames instead of one per handful.
pub struct ReadSize {
    target: usize,
    small: u32,
}

impl Default for ReadSize {
    fn default() -> ReadSize {
        ReadSize::new()
    }
}

impl ReadSize {
    pub fn new() -> ReadSize {
        ReadSize {
            target: READ_START,
            small: 0,
        }
    }

    /// After the frames of a read were taken: `bytes` came in (taken frames and what
    /// is left of a partial one). Leaves room for the next read.
    pub fn after_read(&mut self, bytes: usize, buf: &mut BytesMut) {
        if bytes >= self.target {
            self.target = (self.target * 2).min(READ_MAX);
            self.small = 0;
        } else if bytes < self.target / 4 && self.target > READ_START {
            self.small += 1;
            if self.small >= READ_SHRINK_AFTER {
                self.target /= 2;
                self.small = 0;
                if buf.is_empty() {
                    // Gives the larger allocation back.
                    *buf = BytesMut::with_capacity(self.target);
                }
            }
        } else {
            self.small = 0;
        }
        if buf.capacity() < self.target {
            buf.reserve(self.target - buf.len());
        }
    }
}

/// What every connection needs from the bus.
pub struct ConnCtx {
    pub cfg: Arc<Config>,
    /// The router's task: connects, disconnects, resyncs.
    pub router: mpsc::Sender<RouterMsg>,
    /// The router itself, which the reader takes to route its client's frames.
    pub core: Arc<RouterCore>,
    pub hub: HubHandle,
    pub next_conn: AtomicU64,
    /// The credential table and anonymous policy.
    pub auth: Authenticator,
    /// Refusal windows of addresses that sent wrong credentials.
    pub backoff: Arc<Backoff>,
    /// Refusal counters for `$sys`.
    pub guard: Arc<GuardStats>,
    /// Connections per address.
    pub slots: Arc<AddressSlots>,
    /// TLS on the TCP listener, when `[tls]` is configured.
    pub tls: Option<ServerTls>,
}

/// A refused handshake: the code and message of the final `error`.
type Refusal = (ErrorCode, String);

/// The length-prefixed framing: 4-byte big-endian length, bounded body.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// The bus's reader of what a client sends: [`codec`]'s framing, with the read buffer
/// growing only with the bytes that arrive. `LengthDelimitedCodec` reserves a frame's
/// announced length as soon as its 4-byte prefix is in, so prefixes alone would make
/// the bus hold `max_frame_bytes` (1 MiB) per connection, before any `hello`.
pub struct FrameDecoder {
    codec: LengthDelimitedCodec,
    max_frame: usize,
}

/// A [`FrameDecoder`] for frames of at most `max_frame` bytes.
pub fn frame_decoder(max_frame: usize) -> FrameDecoder {
    FrameDecoder {
        codec: codec(max_frame),
        max_frame,
    }
}

impl Decoder for FrameDecoder {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> std::io::Result<Option<BytesMut>> {
        // The codec sees whole frames only (or a length over the limit, which it
        // refuses), so it never reserves room for bytes still to come.
        if let Some(head) = src.first_chunk::<LEN_PREFIX>() {
            let len = u32::from_be_bytes(*head) as usize;
            if len <= self.max_frame && src.len() - LEN_PREFIX < len {
                return Ok(None);
            }
        }
        self.codec.decode(src)
    }
}

/// The body of the next whole frame in `buf` after the `taken` bytes already handled,
/// counted into `taken`; `None` while what follows is not a whole frame. Frames are
/// taken as [`FrameDecoder`] takes them but left where they lie: a reader handles a
/// read's frames in place and gives up their bytes once, after the batch (the bus's
/// readers and the client's driver both do).
///
/// # Errors
/// `InvalidData` for a length over `max_frame`, as the codec says it.
pub fn next_frame<'a>(
    buf: &'a [u8],
    taken: &mut usize,
    max_frame: usize,
) -> std::io::Result<Option<&'a [u8]>> {
    let rest = &buf[*taken..];
    let Some(head) = rest.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*head) as usize;
    if len > max_frame {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame size too big",
        ));
    }
    if rest.len() - LEN_PREFIX < len {
        return Ok(None);
    }
    *taken += LEN_PREFIX + len;
    Ok(Some(&rest[LEN_PREFIX..LEN_PREFIX + len]))
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

/// Who is at the other end of a connection, as far as its transport knows.
pub enum Peer {
    /// A network client (TCP, TLS, or a gateway bridging one): `hello.credentials`
    /// decide who it is, or the fingerprint of its TLS client certificate.
    Net {
        addr: SocketAddr,
        cert: Option<[u8; 32]>,
    },
    /// An in-process client, with the rules its host gave it (no credentials, no
    /// rate limits: the bus hosts it).
    Local(Arc<Grant>),
}

impl Peer {
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Net { addr, .. } => Some(addr.ip()),
            Peer::Local(_) => None,
        }
    }

    fn label(&self) -> String {
        match self {
            Peer::Net { addr, .. } => addr.to_string(),
            Peer::Local(g) => format!("in-process ({})", g.name),
        }
    }
}

/// Decides who the client is. Wrong credentials open (or extend) the address's
/// refusal window; while it is open, attempts are refused without being checked.
fn authenticate(peer: &Peer, credentials: &Value, ctx: &ConnCtx) -> Result<Arc<Grant>, Refusal> {
    let (addr, cert) = match peer {
        Peer::Local(g) => return Ok(g.clone()),
        Peer::Net { addr, cert } => (addr, cert),
    };
    let now = std::time::Instant::now();
    if let Some(left) = ctx.backoff.remaining(addr.ip(), now) {
        bump(&ctx.guard.auth_throttled);
        return Err((
            ErrorCode::Unauthorized,
            format!(
                "too many failed attempts from {}: refused for another {} ms",
                addr.ip(),
                left.as_millis()
            ),
        ));
    }
    let cert = cert.as_ref().and_then(|fp| ctx.auth.by_cert(fp));
    match ctx.auth.authenticate(credentials, cert) {
        Ok(g) => {
            ctx.backoff.success(addr.ip());
            bump(&ctx.guard.auth_ok);
            Ok(g)
        }
        Err(AuthRefusal::Missing) => {
            bump(&ctx.guard.auth_missing);
            Err((ErrorCode::Unauthorized, AuthRefusal::Missing.to_string()))
        }
        Err(e @ AuthRefusal::Wrong) => {
            let window = ctx.backoff.fail(addr.ip(), now);
            bump(&ctx.guard.auth_unauthorized);
            tracing::warn!(peer = %addr, "wrong credentials");
            Err((
                ErrorCode::Unauthorized,
                format!(
                    "{e}; further attempts from {} are refused for {} ms",
                    addr.ip(),
                    window.as_millis()
                ),
            ))
        }
    }
}

/// Runs one connection to its end: handshake (with authentication), then the reader
/// and writer. Any transport works; a gateway bridging WebSockets calls this with
/// one end of a duplex pipe and [`Peer::Net`] naming the remote address.
///
/// `slot`: a WebSocket client's telemetry goes there instead of UDP.
pub async fn handle<S>(stream: S, peer: Peer, slot: Option<Arc<TelemetrySlot>>, ctx: Arc<ConnCtx>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    serve(rd, wr, None, peer, slot, ctx).await;
}

/// Runs one plain TCP connection to its end; the router may write to it directly
/// (see [`super::outbox::Outbox::flush`]).
pub async fn handle_tcp(stream: tokio::net::TcpStream, peer: Peer, ctx: Arc<ConnCtx>) {
    let (rd, wr) = stream.into_split();
    let shared = SharedTcp(Arc::new(wr));
    let direct: Arc<dyn DirectWrite> = Arc::new(shared.clone());
    serve(rd, shared, Some(direct), peer, None, ctx).await;
}

async fn serve<R, W>(
    rd: R,
    mut wr: W,
    direct: Option<Arc<dyn DirectWrite>>,
    peer: Peer,
    slot: Option<Arc<TelemetrySlot>>,
    ctx: Arc<ConnCtx>,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let cfg = ctx.cfg.clone();
    let max = cfg.limits.max_frame_bytes;
    // Small at first (an idle panel sends only hello and pongs); it grows with the
    // bytes that arrive.
    let mut reader = FramedRead::with_capacity(rd, frame_decoder(max), READ_START);
    let label = peer.label();
    let ip = peer.ip();

    let handshake = Duration::from_millis(cfg.session.handshake_ms);
    let hello = match tokio::time::timeout(handshake, reader.next()).await {
        Err(_) => {
            bump(&ctx.guard.handshake_timeouts);
            Err((ErrorCode::HandshakeTimeout, format!("no hello within {} ms", cfg.session.handshake_ms)))
        }
        Ok(None) => return,
        Ok(Some(Err(e))) => Err(read_error(&e, max)),
        Ok(Some(Ok(body))) => match decode_client(&body) {
            Ok(ClientMsg::Hello { v, .. }) if v != PROTOCOL_VERSION => Err((
                ErrorCode::VersionMismatch,
                format!("client speaks protocol version {v}, this bus speaks version {PROTOCOL_VERSION}"),
            )),
            Ok(ClientMsg::Hello { name, role, resume, credentials, .. }) => {
                authenticate(&peer, &credentials, &ctx).map(|grant| Hello { name, role, resume, token: new_token(), grant })
            }
            Ok(_) => Err((ErrorCode::Unexpected, "the first frame must be hello".into())),
            Err(e) => Err((e.code(), e.to_string())),
        },
    };
    let hello = match hello {
        Ok(h) => h,
        Err((code, message)) => {
            tracing::debug!(peer = %label, %code, message, "handshake refused");
            let _ = wr.write_all(&error_frame(code, message)).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    let grant = hello.grant.clone();
    let limited = matches!(peer, Peer::Net { .. });

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
    tracing::debug!(peer = %label, %session, %name, credential = %grant.name, "connected");
    let _ = ctx
        .hub
        .ctl
        .send(HubMsg::Attach {
            conn,
            session,
            token,
            outbox: outbox.clone(),
            peer: ip,
            grant,
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
    let rate = if limited {
        RateLimit::new(&cfg.limits, Instant::now())
    } else {
        None
    };
    let (reason, clean, writer_done) = read_loop(
        &mut reader,
        &outbox,
        &ctx,
        (session, conn),
        rate,
        &mut writer,
    )
    .await;
    tracing::debug!(peer = %label, %session, %name, reason, "connection ended");
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
    reader: &mut FramedRead<R, FrameDecoder>,
    outbox: &Outbox,
    ctx: &ConnCtx,
    (session, conn): (SessionId, ConnId),
    mut rate: Option<RateLimit>,
    writer: &mut tokio::task::JoinHandle<()>,
) -> (String, bool, bool) {
    let max = ctx.cfg.limits.max_frame_bytes;
    // Set while the client is over its rate: nothing is read until then.
    let mut paused: Option<Instant> = None;
    let interval = ctx.cfg.heartbeat();
    let silent_limit = interval * ctx.cfg.session.heartbeat_misses;
    let mut last_rx = Instant::now();
    let mut ping = 0u64;
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // This client's frames waiting in the router's channel (see below).
    let behind = Arc::new(AtomicUsize::new(0));
    let mut read_size = ReadSize::new();
    // The topic of this client's last `pub`, shared by the next one to the same topic.
    let mut last_topic = None;
    loop {
        tokio::select! {
            // Frames from the client: this one and every complete frame already
            // buffered behind it are handled before the socket is read again.
            next = reader.next(), if paused.is_none() => {
                let first = match next {
                    None => return ("closed by peer".into(), false, false),
                    Some(Err(e)) => {
                        let (code, message) = read_error(&e, max);
                        outbox.close(Some(error_frame(code, message.clone())));
                        return (format!("{code}: {message}"), false, false);
                    }
                    Some(Ok(body)) => body,
                };
                // The frames behind the first are read where they lie in the read
                // buffer, which gives up their bytes once, after the batch.
                let mut body: &[u8] = &first;
                let mut taken = 0;
                // The outboxes these frames touched are flushed once, when the batch
                // ends (however it ends).
                let mut routed = Flush { core: &ctx.core, armed: false };
                let mut batch = 0;
                // One read's frames arrived together.
                last_rx = Instant::now();
                loop {
                    batch += LEN_PREFIX + body.len();
                    match rate.as_mut().map_or(Rate::Ok, |r| r.frame(body.len(), last_rx)) {
                        Rate::Ok => {}
                        Rate::Pause(until) => {
                            bump(&ctx.guard.rate_throttled);
                            paused = Some(until);
                        }
                        Rate::Close => {
                            bump(&ctx.guard.rate_closed);
                            let l = &ctx.cfg.limits;
                            let message = format!(
                                "over the rate of {} frames/s, {} bytes/s (0: no limit)",
                                l.client_msgs_per_sec, l.client_bytes_per_sec
                            );
                            outbox.close(Some(error_frame(ErrorCode::Limit, message.clone())));
                            return (format!("limit: {message}"), false, false);
                        }
                    }
                    match decode_client_from(body, &mut last_topic) {
                        Ok(ClientMsg::Ping { n }) => {
                            let _ = outbox.push(frame(&BusMsg::Pong { n }));
                        }
                        Ok(ClientMsg::Pong { .. }) => {}
                        Ok(ClientMsg::Bye { .. }) => return ("goodbye".into(), true, false),
                        // Telemetry requests go to the hub, never through the router
                        // (what was routed before is flushed first: the hub's queue
                        // may make this wait).
                        Ok(ClientMsg::Tsub { id, filter, hz }) => {
                            routed.now();
                            if ctx.hub.ctl.send(HubMsg::Subscribe { conn, id, filter, hz }).await.is_err() {
                                return ("bus stopping".into(), false, false);
                            }
                        }
                        Ok(ClientMsg::Tunsub { id, sub }) => {
                            routed.now();
                            if ctx.hub.ctl.send(HubMsg::Unsubscribe { conn, id, sub }).await.is_err() {
                                return ("bus stopping".into(), false, false);
                            }
                        }
                        Ok(msg) => match route_now(&ctx.core, &behind, session, conn, msg) {
                            Routed::Done => routed.armed = true,
                            Routed::Stopped => return ("bus stopping".into(), false, false),
                            // Queued behind this client's frames in the router's
                            // channel, in order, without blocking the worker thread.
                            Routed::Busy(msg) => {
                                routed.now();
                                behind.fetch_add(1, Ordering::AcqRel);
                                let queued = RouterMsg::Client { session, conn, msg, behind: Some(behind.clone()) };
                                if ctx.router.send(queued).await.is_err() {
                                    return ("bus stopping".into(), false, false);
                                }
                            }
                        },
                        Err(e) => {
                            outbox.close(Some(error_frame(e.code(), e.to_string())));
                            return (format!("{}: {e}", e.code()), false, false);
                        }
                    }
                    if paused.is_some() {
                        break;
                    }
                    body = match next_frame(reader.read_buffer(), &mut taken, max) {
                        Ok(Some(b)) => b,
                        Ok(None) => break,
                        Err(e) => {
                            let (code, message) = read_error(&e, max);
                            outbox.close(Some(error_frame(code, message.clone())));
                            return (format!("{code}: {message}"), false, false);
                        }
                    };
                }
                reader.read_buffer_mut().advance(taken);
                let left = reader.read_buffer().len();
                read_size.after_read(batch + left, reader.read_buffer_mut());
            }
            // Over the rate: reading resumes once the buckets are out of debt; TCP
            // pushes back on the sender meanwhile.
            _ = wait_until(paused), if paused.is_some() => {
                paused = None;
                last_rx = Instant::now();
            }
            // Heartbeat: ping when idle, drop when silent too long (not while the bus
            // itself is not reading).
            _ = tick.tick() => {
                let idle = last_rx.elapsed();
                if paused.is_none() && idle >= silent_limit {
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

/// What became of a client's frame offered to the router.
enum Routed {
    /// Applied under the lock.
    Done,
    /// The lock is held, or frames of this client wait in the router's channel.
    Busy(ClientMsg),
    /// The router panicked: the bus is stopping.
    Stopped,
}

/// Applies a client's frame under the router's lock if the lock is free and none of
/// the client's frames wait in the router's channel (`behind`), never waiting for it.
fn route_now(
    core: &RouterCore,
    behind: &AtomicUsize,
    session: SessionId,
    conn: ConnId,
    msg: ClientMsg,
) -> Routed {
    if behind.load(Ordering::Acquire) != 0 {
        return Routed::Busy(msg);
    }
    match core.try_lock() {
        Ok(mut r) => {
            r.handle(RouterMsg::Client {
                session,
                conn,
                msg,
                behind: None,
            });
            Routed::Done
        }
        Err(true) => Routed::Busy(msg),
        Err(false) => Routed::Stopped,
    }
}

/// Flushes the outboxes the router touched, when dropped armed: the end of a reader's
/// batch of routed frames, however the batch ends.
///
/// Without waiting for the lock: if somebody holds it, that holder flushes. Every
/// hold ends in a flush attempt (the router's task flushes after each piece of work,
/// its deadline check included; a reader at the end of its batch), and an attempt
/// fails only while another holder exists, whose own attempt comes later; the last
/// holder finds the lock free.
struct Flush<'a> {
    core: &'a RouterCore,
    armed: bool,
}

impl Flush<'_> {
    /// Flushes now, if anything was routed since the last flush.
    fn now(&mut self) {
        if std::mem::take(&mut self.armed) {
            if let Ok(mut r) = self.core.try_lock() {
                r.flush_dirty();
            }
        }
    }
}

impl Drop for Flush<'_> {
    fn drop(&mut self) {
        self.now();
    }
}

/// Sleeps until `at` (forever without one; the select branch is disabled then).
async fn wait_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
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
    // Grown on first use: most connections are written to by the router directly
    // (`Outbox::flush`) and an idle one never needs it.
    let mut buf = BytesMut::new();
    loop {
        let notified = outbox.notified();
        let step = outbox.drain(&mut items);
        let ok = match step {
            Drain::Empty => {
                release_burst(&mut buf, &mut items);
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

/// Write buffer a writer keeps while idle; a larger one was grown by a burst.
const IDLE_WRITE_BUF: usize = 4 * 1024;
/// Drained items a writer keeps room for while idle.
const IDLE_ITEMS: usize = 64;

/// Between bursts, gives a burst's buffers back to the allocator. A snapshot grows a
/// writer's buffer to [`WRITE_CHUNK`]; kept for the connection's life, those
/// buffers were about 7 MiB of the heap with 300 panels in the soak, and their
/// reconnects freed and regrew the 64 KiB blocks among long-lived allocations,
/// which fragmented the heap (the soak's creeping RSS). A writer that streams without pause keeps its buffer.
fn release_burst(buf: &mut BytesMut, items: &mut Vec<Item>) {
    if buf.capacity() > IDLE_WRITE_BUF {
        *buf = BytesMut::new();
    }
    if items.capacity() > IDLE_ITEMS {
        *items = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Frames taken in place are the frames the reader's decoder takes, and a
        /// length over the limit is refused alike, whatever the bytes.
        #[test]
        fn frames_taken_in_place_are_the_decoders(
            chunks in proptest::collection::vec(
                (0u32..48, proptest::collection::vec(any::<u8>(), 0..40)),
                0..8,
            ),
            cut in 0usize..400,
        ) {
            const MAX: usize = 32;
            let mut stream = Vec::new();
            for (len, bytes) in &chunks {
                stream.extend_from_slice(&len.to_be_bytes());
                stream.extend_from_slice(bytes);
            }
            stream.truncate(cut.min(stream.len()));
            let mut decoder = frame_decoder(MAX);
            let mut src = BytesMut::from(&stream[..]);
            let mut taken = 0;
            loop {
                let reference = decoder.decode(&mut src);
                match (next_frame(&stream, &mut taken, MAX), reference) {
                    (Ok(Some(mine)), Ok(Some(body))) => {
                        prop_assert_eq!(mine, &body[..]);
                        prop_assert_eq!(stream.len() - taken, src.len());
                    }
                    (Ok(None), Ok(None)) => break,
                    (Err(a), Err(b)) => {
                        prop_assert_eq!(a.kind(), b.kind());
                        break;
                    }
                    (mine, theirs) => prop_assert!(false, "{:?} vs {:?}", mine, theirs),
                }
            }
        }
    }

    #[test]
    fn the_read_buffer_grows_with_full_reads_and_shrinks_when_idle() {
        let mut size = ReadSize::new();
        let mut buf = BytesMut::with_capacity(READ_START);
        // Reads that fill the buffer double it, up to the maximum.
        while size.target < READ_MAX {
            let before = size.target;
            size.after_read(before, &mut buf);
            assert_eq!(size.target, before * 2);
            assert!(buf.capacity() >= size.target);
        }
        size.after_read(READ_MAX, &mut buf);
        assert_eq!(size.target, READ_MAX, "never past the maximum");
        // Reads of a third of it keep it; one short read in a run of full ones does
        // not shrink it.
        for _ in 0..100 {
            size.after_read(READ_MAX / 3, &mut buf);
        }
        assert_eq!(size.target, READ_MAX);
        for _ in 0..READ_SHRINK_AFTER - 1 {
            size.after_read(10, &mut buf);
        }
        size.after_read(READ_MAX, &mut buf);
        for _ in 0..READ_SHRINK_AFTER - 1 {
            size.after_read(10, &mut buf);
        }
        assert_eq!(size.target, READ_MAX);
        // A run of short reads halves it, and an empty buffer gives its memory back.
        size.after_read(10, &mut buf);
        assert_eq!(size.target, READ_MAX / 2);
        assert!(buf.capacity() < READ_MAX, "{}", buf.capacity());
        for _ in 0..READ_SHRINK_AFTER * 20 {
            size.after_read(10, &mut buf);
        }
        assert_eq!(size.target, READ_START, "never below the start");
        assert!(buf.capacity() < 2 * READ_START, "{}", buf.capacity());
        // A partial frame left in the buffer is kept when it shrinks.
        let mut size = ReadSize::new();
        size.target = 4 * READ_START;
        buf.extend_from_slice(b"partial");
        for _ in 0..READ_SHRINK_AFTER {
            size.after_read(10, &mut buf);
        }
        assert_eq!(&buf[..], b"partial");
    }
}
