//! Raw telemetry peers, written from `docs/protocol.md` alone, that cost far less
//! per datagram than the bus does, so that the bus is what the telemetry rows
//! measure:
//!
//! * for `tingest`, adapter sessions (hello, declare, UDP bind) and a sender
//!   thread that sends pre-encoded `publish` datagrams as fast as the kernel takes
//!   them (the same sender and datagrams feed the UDP floor, `floor-udp-sink`);
//! * for `tflood`, panel sessions (hello, `tsub`, UDP bind) whose datagrams are
//!   counted, and their loss read from `dseq`, without decoding a value.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::model::{ControlKind, ControlSpec, DeviceDescriptor};
use crate::protocol::{decode_bus, frame, BusMsg, ClientMsg, Role, PROTOCOL_VERSION};
use crate::telemetry::{put_header, put_record, Format, Kind, Record, MAX_DATAGRAM};
use crate::value::Value;

/// Longest any step of the handshake may take.
const STEP: Duration = Duration::from_secs(10);
/// Records per `publish` datagram: 32 one-channel records (28 bytes each) make
/// datagrams of 912 bytes.
pub(super) const RECORDS_PER_DATAGRAM: usize = 32;

/// An adapter session held open for the run, and its bound UDP socket.
pub(super) struct RawAdapter {
    _session: Session,
    /// Bound to the session's token; `connect`ed to the bus's UDP address.
    pub udp: std::net::UdpSocket,
    /// The session's `publish` datagrams, one value for each of its meters.
    pub datagrams: Vec<Vec<u8>>,
}

/// A panel session with a telemetry subscription, and its bound UDP socket.
pub(super) struct RawPanel {
    _session: Session,
    udp: UdpSocket,
}

/// A session's TCP connection, kept open (answering the bus's pings) until
/// dropped.
struct Session {
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl Session {
    fn keep(mut io: Link) -> Session {
        let keepalive = tokio::spawn(async move {
            while let Some(Ok(b)) = io.next().await {
                if let Ok(BusMsg::Ping { n }) = decode_bus(&b) {
                    if send(&mut io, &ClientMsg::Pong { n }).await.is_err() {
                        return;
                    }
                }
            }
        });
        Session { keepalive }
    }
}

type Link = Framed<TcpStream, LengthDelimitedCodec>;

async fn send(io: &mut Link, msg: &ClientMsg) -> Result<(), String> {
    // `frame` includes the length prefix; the codec adds its own.
    io.send(frame(msg).slice(4..))
        .await
        .map_err(|e| e.to_string())
}

async fn recv(io: &mut Link) -> Result<BusMsg, String> {
    match tokio::time::timeout(STEP, io.next()).await {
        Ok(Some(Ok(b))) => decode_bus(&b).map_err(|e| e.to_string()),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => Err("the bus closed the connection".into()),
        Err(_) => Err("no answer from the bus".into()),
    }
}

/// Reads until the answer to request 1: `Ok(result)`, or the refusal as an error.
async fn answer(io: &mut Link, what: &str) -> Result<Value, String> {
    loop {
        match recv(io).await? {
            BusMsg::Ok { id: 1, result } => return Ok(result),
            BusMsg::Error {
                id: Some(1),
                message,
                ..
            } => return Err(format!("{what} refused: {message}")),
            _ => continue,
        }
    }
}

/// Connects and says hello; returns the link, the bus's UDP address and the token.
async fn hello(addr: &str, name: &str, role: Role) -> Result<(Link, SocketAddr, u64), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let bus_ip = tcp.peer_addr().map_err(|e| e.to_string())?.ip();
    let mut io = Framed::new(tcp, crate::bus::codec(1 << 20));
    send(
        &mut io,
        &ClientMsg::Hello {
            v: PROTOCOL_VERSION,
            name: name.into(),
            role,
            credentials: Value::Nil,
            resume: None,
        },
    )
    .await?;
    match recv(&mut io).await? {
        BusMsg::Welcome {
            token: Some(t),
            udp: Some(p),
            ..
        } => Ok((io, SocketAddr::new(bus_ip, p), t)),
        other => Err(format!("expected welcome with a token, got {other:?}")),
    }
}

/// Opens an adapter session named `name` declaring `bench/<name>` with `meters`
/// one-channel meters, binds a UDP socket to its token, and encodes its datagrams.
pub(super) async fn raw_adapter(
    addr: &str,
    name: &str,
    meters: usize,
) -> Result<RawAdapter, String> {
    let (mut io, bus_udp, token) = hello(addr, name, Role::Adapter).await?;
    let device = DeviceDescriptor {
        room: "bench".into(),
        name: format!("{name}{}", std::process::id()),
        label: "Bench meters".into(),
        class: "console".into(),
        driver: "bench".into(),
        controls: (0..meters)
            .map(|i| {
                ControlSpec::new(
                    &format!("m{i:02}"),
                    ControlKind::Meter {
                        min: 0.0,
                        max: 1.0,
                        unit: String::new(),
                        channels: 1,
                        rate_hz: 100.0,
                    },
                )
            })
            .collect(),
    };
    send(
        &mut io,
        &ClientMsg::Declare {
            id: 1,
            device,
            online: true,
        },
    )
    .await?;
    // The answer maps each meter topic to its alias (protocol.md §7.9).
    let aliases = aliases_of(&answer(&mut io, "declare").await?);
    if aliases.len() != meters {
        return Err(format!("{} aliases for {meters} meters", aliases.len()));
    }
    // The sender thread blocks on its sockets.
    let udp = bind(bus_udp, token)
        .await?
        .into_std()
        .map_err(|e| e.to_string())?;
    udp.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok(RawAdapter {
        _session: Session::keep(io),
        udp,
        datagrams: publish_datagrams(token, &aliases),
    })
}

/// Opens a panel session named `name`, binds a UDP socket to its token and
/// subscribes to the telemetry of `filter` at `hz`.
pub(super) async fn raw_panel(
    addr: &str,
    name: &str,
    filter: &str,
    hz: f64,
) -> Result<RawPanel, String> {
    let (mut io, bus_udp, token) = hello(addr, name, Role::Panel).await?;
    let udp = bind(bus_udp, token).await?;
    send(
        &mut io,
        &ClientMsg::Tsub {
            id: 1,
            filter: filter.into(),
            hz,
        },
    )
    .await?;
    answer(&mut io, "tsub").await?;
    Ok(RawPanel {
        _session: Session::keep(io),
        udp,
    })
}

/// Reads `panel`'s datagrams until `stop` resolves: counts each in `datagrams`, and
/// each gap in the bus's `dseq` in `lost`. Nothing is decoded.
pub(super) async fn count(
    panel: RawPanel,
    datagrams: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut next: Option<u32> = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = panel.udp.recv(&mut buf) => {
                let Ok(n) = r else { return };
                if n < 8 || buf[3] != Kind::Data as u8 {
                    continue;
                }
                let dseq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if let Some(want) = next {
                    let gap = dseq.wrapping_sub(want);
                    // A datagram older than the last one (reordered) is no gap.
                    if gap < u32::MAX / 2 {
                        lost.fetch_add(u64::from(gap), Ordering::Relaxed);
                    }
                }
                next = Some(dseq.wrapping_add(1));
                datagrams.fetch_add(1, Ordering::Relaxed);
            }
            _ = &mut stop => return,
        }
    }
}

fn aliases_of(result: &Value) -> Vec<u32> {
    let Value::Map(top) = result else {
        return Vec::new();
    };
    let Some((_, Value::Map(streams))) = top.iter().find(|(k, _)| k.as_str() == Some("streams"))
    else {
        return Vec::new();
    };
    let mut pairs: Vec<(String, u32)> = streams
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_u64()? as u32)))
        .collect();
    pairs.sort();
    pairs.into_iter().map(|(_, a)| a).collect()
}

/// Binds a fresh UDP socket to `token` (resending `bind` until `bound`).
async fn bind(bus: SocketAddr, token: u64) -> Result<UdpSocket, String> {
    let udp = UdpSocket::bind(SocketAddr::new(bus.ip(), 0))
        .await
        .map_err(|e| e.to_string())?;
    udp.connect(bus).await.map_err(|e| e.to_string())?;
    let mut d = bytes::BytesMut::new();
    put_header(&mut d, Kind::Bind, 0, Some(token));
    let mut buf = [0u8; MAX_DATAGRAM];
    let end = Instant::now() + STEP;
    loop {
        if Instant::now() > end {
            return Err("no bound from the bus".into());
        }
        udp.send(&d).await.map_err(|e| e.to_string())?;
        let got = tokio::time::timeout(Duration::from_millis(200), udp.recv(&mut buf)).await;
        if let Ok(Ok(n)) = got {
            if n >= 4 && buf[3] == Kind::Bound as u8 {
                break;
            }
        }
    }
    Ok(udp)
}

/// `publish` datagrams carrying one value of each alias, [`RECORDS_PER_DATAGRAM`]
/// records each.
pub(super) fn publish_datagrams(token: u64, aliases: &[u32]) -> Vec<Vec<u8>> {
    let time_us = crate::telemetry::now_us();
    aliases
        .chunks(RECORDS_PER_DATAGRAM)
        .map(|chunk| {
            let mut d = bytes::BytesMut::new();
            put_header(&mut d, Kind::Publish, 0, Some(token));
            for (i, alias) in chunk.iter().enumerate() {
                let v = (i as f32 / 64.0).to_le_bytes();
                put_record(
                    &mut d,
                    &Record {
                        alias: *alias,
                        seq: 1,
                        time_us,
                        format: Format::F32,
                        flags: 0,
                        offset: 0,
                        total: 1,
                        payload: &v,
                    },
                );
            }
            d.to_vec()
        })
        .collect()
}

/// Sends every sender's datagrams round-robin, one `send` each on its socket (each
/// `connect`ed to its target, blocking), from the calling thread, until `limit` or
/// `max` datagrams. Returns the datagrams the kernel took and the seconds it took.
/// Datagrams the receiver's buffer had no room for are dropped by the kernel (and
/// not counted by the receiver).
pub(super) fn blast(
    senders: &[(&std::net::UdpSocket, &[Vec<u8>])],
    limit: Duration,
    max: u64,
) -> (u64, f64) {
    let t0 = Instant::now();
    let mut sent = 0u64;
    'run: while sent < max {
        // Check the clock once per 256 datagrams.
        for _ in 0..256 / senders.len().max(1) {
            for (udp, datagrams) in senders {
                for d in *datagrams {
                    if udp.send(d).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        if t0.elapsed() > limit {
            break 'run;
        }
    }
    (sent, t0.elapsed().as_secs_f64())
}
