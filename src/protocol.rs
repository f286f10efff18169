//! The wire protocol: every message a client and the bus exchange over TCP, their
//! encoding, and the typed error codes. `docs/protocol.md` is the reference for other
//! languages; this module is the reference for Rust.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of MessagePack:
//! a map whose `"t"` key names the message. Frames longer than the bus's
//! `max_frame_bytes` (1 MiB by default) are refused with `frame_too_large`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::model::{DeviceDescriptor, Quality};
use crate::value::Value;

/// The protocol version this build speaks (`v` in `hello` and `welcome`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Default largest frame, in bytes (length prefix excluded).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// How much larger than `max_frame` a frame from the bus may be: an update wraps a
/// published value (itself at most `max_frame`) in its topic, sequence, time and
/// state fields. Clients should accept `max_frame + BUS_ENVELOPE`.
pub const BUS_ENVELOPE: usize = 4096;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// A client session, kept by the bus across reconnects for the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

/// A position in the bus-wide sequence of updates.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

/// Identifies one run of the bus; new at every start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What kind of client is connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A control surface: subscribes to state and sends commands.
    Panel,
    /// Owns devices: declares them, publishes their state, answers commands.
    Adapter,
    /// A script or the CLI.
    Tool,
}

impl Role {
    /// Lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Panel => "panel",
            Role::Adapter => "adapter",
            Role::Tool => "tool",
        }
    }
}

/// Where a reconnecting client left off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub session: SessionId,
    pub epoch: Epoch,
    pub last_seq: Seq,
}

/// Every error the bus (or an adapter) can answer with. Stable wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Command answers.
    /// The device's adapter is gone or reports it unreachable.
    DeviceOffline,
    /// The value breaks the control's type or limits; the message names the rule.
    InvalidValue,
    /// No such device or control (or the topic is not a valid name).
    UnknownTopic,
    /// The control is read-only, or takes the other command (`set` vs `call`).
    NotWritable,
    /// No answer from the device before the command's deadline.
    Timeout,
    /// Too many commands in flight for the device, or its adapter is not reading; or
    /// the bus's journal is behind the disk (a retained publish: try again).
    Busy,
    /// Not allowed by the bus's access rules.
    Forbidden,
    /// Credentials refused at the handshake.
    Unauthorized,
    /// A plaintext client on a TLS port (sent in plaintext, then the bus closes).
    TlsRequired,
    // Protocol errors.
    /// Bytes that are not a MessagePack map with a known `t`.
    BadFrame,
    /// A frame longer than the bus's limit.
    FrameTooLarge,
    /// A known message with a missing or wrongly typed field.
    BadMessage,
    /// A `t` this bus does not know.
    UnknownMessage,
    /// A message not valid at this point (e.g. anything before `hello`).
    Unexpected,
    /// `hello.v` is not the bus's version.
    VersionMismatch,
    /// No `hello` within the handshake deadline.
    HandshakeTimeout,
    /// A topic name breaks the naming rules.
    InvalidTopic,
    /// A filter breaks the naming rules.
    InvalidFilter,
    /// A device descriptor is malformed; the message names the field.
    InvalidDescriptor,
    /// The device is declared by another connected adapter.
    Conflict,
    /// A configured limit was reached (topics, subscriptions).
    Limit,
    /// `say` to a room the client has not joined.
    NotMember,
    /// The bus cannot keep its promise for this request now: a retained publish
    /// whose journal write failed (the disk is full or failing).
    Unavailable,
    /// Client-side only, never sent: the client was closed before an answer came.
    Closed,
    /// A code this build does not know (from a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DeviceOffline => "device_offline",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::UnknownTopic => "unknown_topic",
            ErrorCode::NotWritable => "not_writable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Busy => "busy",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TlsRequired => "tls_required",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::Unexpected => "unexpected",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::InvalidFilter => "invalid_filter",
            ErrorCode::InvalidDescriptor => "invalid_descriptor",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Limit => "limit",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Closed => "closed",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as carried in `reply` (adapter to bus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
}

fn nil() -> Value {
    Value::Nil
}

fn yes() -> bool {
    true
}

/// Messages a client sends to the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First frame of every connection.
    Hello {
        v: u32,
        name: String,
        role: Role,
        /// Nil, or `{token: "avbus_..."}` (docs/security.md).
        #[serde(default = "nil")]
        credentials: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// Subscribe: the bus answers with `snapshot`, the retained updates, `synced`.
    Sub { id: u64, filters: Vec<String> },
    /// Unsubscribe; answered with `ok`.
    Unsub { id: u64, filters: Vec<String> },
    /// Read one retained topic; answered with `ok` (result: the update record) or
    /// `error unknown_topic`.
    Get { id: u64, topic: String },
    /// Publish. With `id`, the bus answers `puback` (or `error`).
    Pub {
        /// Shared: the bus keeps this very string in its tables (one allocation per
        /// publish, made by the decoder).
        topic: Arc<str>,
        value: Value,
        #[serde(default)]
        retain: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<Quality>,
    },
    /// Command: write a control's value. Answered with `ok` or `error`.
    Set {
        id: u64,
        topic: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Command: fire a trigger. Answered with `ok` or `error`.
    Call {
        id: u64,
        topic: String,
        #[serde(default = "nil")]
        args: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Adapter: declare (or re-declare) a device it serves.
    Declare {
        id: u64,
        device: DeviceDescriptor,
        #[serde(default = "yes")]
        online: bool,
    },
    /// Adapter: the device became reachable or unreachable.
    Status {
        device: String,
        online: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Adapter: the answer to a `cmd`.
    Reply {
        id: u64,
        #[serde(default = "nil")]
        result: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
    /// Join a room; answered with `ok` whose result lists the members.
    Join { id: u64, room: String },
    /// Leave a room; answered with `ok`.
    Leave { id: u64, room: String },
    /// Broadcast a value to the other members of a joined room.
    Say { room: String, value: Value },
    /// Heartbeat request; answered with `pong` carrying the same `n`.
    Ping { n: u64 },
    /// Heartbeat answer.
    Pong { n: u64 },
    /// Clean goodbye: the session ends now (no resume).
    Bye {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Subscribe to telemetry streams matching `filter`, at most `hz` batches a
    /// second over UDP; answered with `ok {sub, streams}`.
    Tsub { id: u64, filter: String, hz: f64 },
    /// End telemetry subscription `sub`; answered with `ok`.
    Tunsub { id: u64, sub: u64 },
}

/// The `t` values of [`ClientMsg`], to tell an unknown message from a malformed one.
pub const CLIENT_MSG_TYPES: &[&str] = &[
    "hello", "sub", "unsub", "get", "pub", "set", "call", "declare", "status", "reply", "join",
    "leave", "say", "ping", "pong", "bye", "tsub", "tunsub",
];

/// A telemetry stream: the alias its datagram records carry, the meter control's
/// topic and its channel count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDesc {
    pub alias: u32,
    pub topic: String,
    pub channels: u32,
}

/// One update of a topic, as delivered to subscribers (`t: "update"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub seq: Seq,
    pub topic: String,
    pub value: Value,
    /// Milliseconds since the Unix epoch, when the bus accepted it.
    pub time: u64,
    /// Retained state (true) or event (false).
    pub retain: bool,
    /// Control topics only: the state's quality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Number controls: 0..1 slider position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<f64>,
    /// Control topics: the text to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// While pending: the commanded value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Value>,
    /// While pending: when the command times out (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
}

/// The two kinds of command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOp {
    Set,
    Call,
}

/// A command forwarded by the bus to the adapter owning the control (`t: "cmd"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The bus's id for this command; answer with `reply {id}`.
    pub id: u64,
    pub op: CommandOp,
    /// `room/device/control`.
    pub topic: String,
    /// The validated value (`set`) or the arguments (`call`).
    pub value: Value,
    /// Answer before this (ms since the Unix epoch); later answers are ignored.
    pub deadline: u64,
    /// The session that sent it (0: the bus itself, e.g. a momentary release).
    pub from: SessionId,
}

/// A member of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub session: SessionId,
    pub name: String,
    pub role: Role,
}

/// Messages the bus sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusMsg {
    /// Answer to `hello`.
    Welcome {
        v: u32,
        session: SessionId,
        epoch: Epoch,
        seq: Seq,
        heartbeat_ms: u64,
        resumed: bool,
        max_frame: u64,
        /// The bus's UDP telemetry port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        udp: Option<u16>,
        /// This connection's telemetry token: datagrams to the bus carry it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<u64>,
    },
    /// An error. With `id`, it answers that request. Without `id`, it concerns a
    /// message that had none (`pub` without id, `say`, `status`) or the connection
    /// itself (a protocol error: the bus closes the connection after sending it).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Update(Update),
    /// Start of a snapshot for subscription `id` (0: a resume); `count` updates follow.
    Snapshot {
        id: u64,
        count: u64,
        resync: bool,
    },
    /// End of a snapshot or a resume replay: live updates follow. Everything up to
    /// `seq` matching the subscriptions has been delivered.
    Synced {
        id: u64,
        seq: Seq,
        count: u64,
        resync: bool,
    },
    /// The outbound queue overflowed: `dropped` events were lost, `conflated` state
    /// updates were merged (the newest values follow). With `resync`, a fresh
    /// snapshot follows.
    Gap {
        dropped: u64,
        conflated: u64,
        resync: bool,
    },
    /// Success answer to a request (`set`, `call`, `get`, `join`, ...).
    Ok {
        id: u64,
        #[serde(default = "nil")]
        result: Value,
    },
    /// A publish with `id` was accepted with this sequence number.
    Puback {
        id: u64,
        seq: Seq,
    },
    /// To adapters: a command for one of their devices.
    Cmd(Command),
    /// Someone joined or left a room the client is in.
    Presence {
        room: String,
        session: SessionId,
        name: String,
        role: Role,
        joined: bool,
    },
    /// A room broadcast.
    Said {
        room: String,
        from: SessionId,
        name: String,
        value: Value,
    },
    Ping {
        n: u64,
    },
    Pong {
        n: u64,
    },
    /// The bus is closing the connection, and why.
    Bye {
        reason: String,
        message: String,
    },
    /// New telemetry streams matching telemetry subscription `sub`.
    Streams {
        sub: u64,
        streams: Vec<StreamDesc>,
    },
}

/// A frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a MessagePack map with a \"t\" field: {0}")]
    BadFrame(String),
    #[error("unknown message type {0:?}")]
    UnknownMessage(String),
    #[error("bad {kind:?} message: {detail}")]
    BadMessage { kind: String, detail: String },
}

impl DecodeError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::BadFrame(_) => ErrorCode::BadFrame,
            DecodeError::UnknownMessage(_) => ErrorCode::UnknownMessage,
            DecodeError::BadMessage { .. } => ErrorCode::BadMessage,
        }
    }
}

#[derive(Deserialize)]
struct Tag {
    t: String,
}

/// Deepest nesting of arrays and maps accepted in a frame. Deeper input is refused
/// (`bad_frame`) before the decoder's recursion can exhaust a task's stack.
pub const MAX_NESTING: usize = 64;

fn from_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    de.set_max_depth(MAX_NESTING);
    T::deserialize(&mut de)
}

/// Decodes one frame body (without its length prefix) from a client.
///
/// # Errors
/// [`DecodeError`] telling garbage, an unknown `t` and a malformed known message apart.
pub fn decode_client(body: &[u8]) -> Result<ClientMsg, DecodeError> {
    decode_client_from(body, &mut None)
}

/// [`decode_client`] for a stream of frames from one client: a `pub` to the same
/// topic as the one before (`last`, updated here) shares that topic's string instead
/// of allocating and validating it again as UTF-8. A device publishing one control
/// again and again, or a burst to one topic, costs no allocation for its topic.
///
/// # Errors
/// As [`decode_client`].
pub fn decode_client_from(
    body: &[u8],
    last: &mut Option<Arc<str>>,
) -> Result<ClientMsg, DecodeError> {
    if leading_tag(body) == Some(b"pub") {
        if let Some(p) = read_pub(body, last) {
            return Ok(p);
        }
    }
    decode_client_tagged(body)
}

/// [`decode_client`] without its fast path: serde's internally tagged decoding,
/// which buffers the whole map before it can pick the variant. The reference the
/// fast path is checked against (`fuzzing::frame`, `src/protocol_fast_tests.rs`).
#[doc(hidden)]
pub fn decode_client_tagged(body: &[u8]) -> Result<ClientMsg, DecodeError> {
    from_body::<ClientMsg>(body).map_err(|e| classify(body, e, CLIENT_MSG_TYPES))
}

/// Decodes one frame body from the bus.
///
/// # Errors
/// [`DecodeError`] as for [`decode_client`].
pub fn decode_bus(body: &[u8]) -> Result<BusMsg, DecodeError> {
    if leading_tag(body) == Some(b"update") {
        if let Some(u) = read_update(body) {
            return Ok(BusMsg::Update(u));
        }
    }
    decode_bus_tagged(body)
}

/// [`decode_bus`] without its fast path (see [`decode_client_tagged`]).
#[doc(hidden)]
pub fn decode_bus_tagged(body: &[u8]) -> Result<BusMsg, DecodeError> {
    from_body::<BusMsg>(body).map_err(|e| classify(body, e, &[]))
}

// ---- fast paths for the two messages every delivery carries -------------------
//
// serde decodes an internally tagged enum (`{t: "pub", ...}`) by first buffering the
// whole map into an intermediate tree, because `t` might come last; that was about
// a sixth of the bus's instructions per routed message. Every encoder writes `t`
// first (serde's, ours, the JavaScript and Python clients'), so when the first key
// is `t` and names `pub` (from a client) or `update` (from the bus), the body is
// read field by field with MessagePack's primitives — for the common shape only:
// string keys, each field once, no unknown key, each field in its usual type.
// Anything else (an integer key, an unknown key, a second `t`, a quality written as
// a number, ...) goes through the tagged decoder, which gives the same result or
// the canonical error. Property tests and the `frame` fuzz target hold the two to
// the same answers.

/// The value of `t` when it is the body's first key.
fn leading_tag(body: &[u8]) -> Option<&[u8]> {
    let mut rd = body;
    if rmp::decode::read_map_len(&mut rd).ok()? == 0 {
        return None;
    }
    let (key, rest) = raw_str(rd)?;
    if key != b"t" {
        return None;
    }
    raw_str(rest).map(|(tag, _)| tag)
}

/// A MessagePack string's bytes (not checked for UTF-8) and what follows it.
fn raw_str(rd: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&m, rest) = rd.split_first()?;
    let (len, rest) = match m {
        0xa0..=0xbf => (usize::from(m & 0x1f), rest),
        0xd9 => (usize::from(*rest.first()?), &rest[1..]),
        0xda => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        0xdb => (
            u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
            &rest[4..],
        ),
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A MessagePack string that is valid UTF-8, and what follows it.
fn utf8_str(rd: &[u8]) -> Option<(&str, &[u8])> {
    let (b, rest) = raw_str(rd)?;
    Some((std::str::from_utf8(b).ok()?, rest))
}

/// Reads a `pub` with MessagePack's primitives, for the common shape only: string
/// keys, each field once, no key it does not know, values within the nesting limit
/// and their strings valid UTF-8. Anything else is `None`, for serde to decide.
fn read_pub(body: &[u8], last: &mut Option<Arc<str>>) -> Option<ClientMsg> {
    let mut rd = body;
    let n = rmp::decode::read_map_len(&mut rd).ok()?;
    let (mut t, mut topic, mut value) = (false, None, None);
    let (mut retain, mut id, mut quality) = (None, None, None);
    for _ in 0..n {
        let (key, rest) = raw_str(rd)?;
        rd = rest;
        match key {
            b"t" if !t => (t, rd) = (true, expect_str(rd, b"pub")?),
            b"topic" if topic.is_none() => (topic, rd) = some(read_shared(rd, last)?),
            b"value" if value.is_none() => (value, rd) = some(read_value(rd)?),
            b"retain" if retain.is_none() => (retain, rd) = some(read_bool(rd)?),
            b"id" if id.is_none() => (id, rd) = some(or_nil(rd, read_u64)?),
            b"quality" if quality.is_none() => (quality, rd) = some(or_nil(rd, read_quality)?),
            _ => return None,
        }
    }
    Some(ClientMsg::Pub {
        topic: topic?,
        value: value?,
        retain: retain.unwrap_or(false),
        id: id.flatten(),
        quality: quality.flatten(),
    })
}

/// Reads an `update` as [`read_pub`] reads a `pub` (the client's side of every
/// delivery).
fn read_update(body: &[u8]) -> Option<Update> {
    let mut rd = body;
    let n = rmp::decode::read_map_len(&mut rd).ok()?;
    let mut t = false;
    let (mut seq, mut topic, mut value, mut time, mut retain) = (None, None, None, None, None);
    let (mut quality, mut position, mut display) = (None, None, None);
    let (mut target, mut deadline) = (None, None);
    for _ in 0..n {
        let (key, rest) = raw_str(rd)?;
        rd = rest;
        match key {
            b"t" if !t => (t, rd) = (true, expect_str(rd, b"update")?),
            b"seq" if seq.is_none() => (seq, rd) = some(read_u64(rd)?),
            b"topic" if topic.is_none() => (topic, rd) = some(read_string(rd)?),
            b"value" if value.is_none() => (value, rd) = some(read_value(rd)?),
            b"time" if time.is_none() => (time, rd) = some(read_u64(rd)?),
            b"retain" if retain.is_none() => (retain, rd) = some(read_bool(rd)?),
            b"quality" if quality.is_none() => (quality, rd) = some(or_nil(rd, read_quality)?),
            b"position" if position.is_none() => (position, rd) = some(or_nil(rd, read_float)?),
            b"display" if display.is_none() => (display, rd) = some(or_nil(rd, read_string)?),
            b"target" if target.is_none() => (target, rd) = some(or_nil(rd, read_value)?),
            b"deadline" if deadline.is_none() => (deadline, rd) = some(or_nil(rd, read_u64)?),
            _ => return None,
        }
    }
    Some(Update {
        seq: Seq(seq?),
        topic: topic?,
        value: value?,
        time: time?,
        retain: retain?,
        quality: quality.flatten(),
        position: position.flatten(),
        display: display.flatten(),
        target: target.flatten(),
        deadline: deadline.flatten(),
    })
}

/// What follows the string `want`, if that is what comes next.
fn expect_str<'a>(rd: &'a [u8], want: &[u8]) -> Option<&'a [u8]> {
    let (s, rest) = raw_str(rd)?;
    (s == want).then_some(rest)
}

/// A UTF-8 string, owned.
fn read_string(rd: &[u8]) -> Option<(String, &[u8])> {
    utf8_str(rd).map(|(s, rest)| (s.to_owned(), rest))
}

/// [`read_string`] into a shared string: `last` itself when the bytes are its, else
/// a new one, which becomes `last`.
fn read_shared<'a>(rd: &'a [u8], last: &mut Option<Arc<str>>) -> Option<(Arc<str>, &'a [u8])> {
    let (b, rest) = raw_str(rd)?;
    if let Some(l) = last.as_ref().filter(|l| l.as_bytes() == b) {
        return Some((l.clone(), rest));
    }
    let s: Arc<str> = Arc::from(std::str::from_utf8(b).ok()?);
    *last = Some(s.clone());
    Some((s, rest))
}

/// A field read, wrapped for the "seen" slot it fills.
fn some<T>((v, rest): (T, &[u8])) -> (Option<T>, &[u8]) {
    (Some(v), rest)
}

/// `nil` as `None`, or the value `read` takes.
fn or_nil<'a, T>(
    rd: &'a [u8],
    read: impl FnOnce(&'a [u8]) -> Option<(T, &'a [u8])>,
) -> Option<(Option<T>, &'a [u8])> {
    match rd.split_first()? {
        (0xc0, rest) => Some((None, rest)),
        _ => read(rd).map(|(v, rest)| (Some(v), rest)),
    }
}

fn read_bool(rd: &[u8]) -> Option<(bool, &[u8])> {
    match rd.split_first()? {
        (0xc2, rest) => Some((false, rest)),
        (0xc3, rest) => Some((true, rest)),
        _ => None,
    }
}

/// An unsigned integer in any width (negative ones are left to serde's error).
fn read_u64(rd: &[u8]) -> Option<(u64, &[u8])> {
    let (&m, rest) = rd.split_first()?;
    let be = |n: usize| -> Option<(u64, &[u8])> {
        let b = rest.get(..n)?;
        Some((
            b.iter().fold(0u64, |v, x| v << 8 | u64::from(*x)),
            &rest[n..],
        ))
    };
    match m {
        0x00..=0x7f => Some((u64::from(m), rest)),
        0xcc => be(1),
        0xcd => be(2),
        0xce => be(4),
        0xcf => be(8),
        _ => None,
    }
}

/// A float written as float 32 or 64 (integers are left to serde).
fn read_float(rd: &[u8]) -> Option<(f64, &[u8])> {
    let (&m, rest) = rd.split_first()?;
    match m {
        0xca => Some((
            f64::from(f32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
            &rest[4..],
        )),
        0xcb => Some((
            f64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            &rest[8..],
        )),
        _ => None,
    }
}

/// A quality written as its name.
fn read_quality(rd: &[u8]) -> Option<(Quality, &[u8])> {
    let (name, rest) = raw_str(rd)?;
    let all = [
        Quality::Ok,
        Quality::Pending,
        Quality::Stale,
        Quality::Offline,
    ];
    let q = all.into_iter().find(|q| q.as_str().as_bytes() == name)?;
    Some((q, rest))
}

/// A value: bytes and strings (the usual payloads) read here, since rmpv copies
/// them through `io::Read`; anything else through rmpv, within the nesting limit.
fn read_value(rd: &[u8]) -> Option<(Value, &[u8])> {
    fn bin(len: usize, rest: &[u8]) -> Option<(Value, &[u8])> {
        let (b, rest) = (rest.len() >= len).then(|| rest.split_at(len))?;
        Some((Value::Binary(b.to_vec()), rest))
    }
    let (&m, rest) = rd.split_first()?;
    match m {
        0xc4 => bin(usize::from(*rest.first()?), &rest[1..]),
        0xc5 => bin(
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        0xc6 => bin(
            u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
            &rest[4..],
        ),
        0xa0..=0xbf | 0xd9..=0xdb => {
            let (s, rest) = utf8_str(rd)?;
            Some((Value::from(s), rest))
        }
        _ => {
            let mut r = rd;
            let v = rmpv::decode::read_value_with_max_depth(&mut r, MAX_NESTING - 2).ok()?;
            utf8_only(&v).then_some((v, r))
        }
    }
}

/// Whether every string in `v` is valid UTF-8 (serde hands an invalid one over as
/// bytes, which becomes a binary value; the fast path leaves those to it).
fn utf8_only(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_str(),
        Value::Array(a) => a.iter().all(utf8_only),
        Value::Map(m) => m.iter().all(|(k, v)| utf8_only(k) && utf8_only(v)),
        _ => true,
    }
}

/// Appends an `update` frame with MessagePack's primitives: the bytes serde writes
/// for [`UpdateRef`] (a unit test holds the two to the same bytes), without serde's
/// per-field machinery, on the path every publish takes.
pub fn encode_update(buf: &mut BytesMut, u: &UpdateRef<'_>) {
    let start = buf.len();
    buf.put_u32(0);
    let optional = [
        u.quality.is_some(),
        u.position.is_some(),
        u.display.is_some(),
        u.target.is_some(),
        u.deadline.is_some(),
    ];
    // A fixmap: at most 11 entries.
    buf.put_u8(0x80 | (6 + optional.iter().filter(|x| **x).count() as u8));
    buf.put_slice(b"\xa1t\xa6update\xa3seq");
    put_uint(buf, u.seq.0);
    buf.put_slice(b"\xa5topic");
    put_str(buf, u.topic);
    buf.put_slice(b"\xa5value");
    let mut ok = put_value(buf, u.value);
    buf.put_slice(b"\xa4time");
    put_uint(buf, u.time);
    buf.put_slice(b"\xa6retain");
    buf.put_u8(if u.retain { 0xc3 } else { 0xc2 });
    if let Some(q) = u.quality {
        buf.put_slice(b"\xa7quality");
        put_str(buf, q.as_str());
    }
    if let Some(p) = u.position {
        buf.put_slice(b"\xa8position\xcb");
        buf.put_f64(p);
    }
    if let Some(d) = u.display {
        buf.put_slice(b"\xa7display");
        put_str(buf, d);
    }
    if let Some(t) = u.target {
        buf.put_slice(b"\xa6target");
        ok &= put_value(buf, t);
    }
    if let Some(d) = u.deadline {
        buf.put_slice(b"\xa8deadline");
        put_uint(buf, d);
    }
    if !ok {
        tracing::error!("encoding an update failed");
        buf.truncate(start);
        return;
    }
    let len = (buf.len() - start - LEN_PREFIX) as u32;
    buf[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Appends one client frame to `buf`: a `pub` written field by field (the client's
/// hot path, byte for byte what serde writes), anything else through serde.
pub fn encode_client_into(buf: &mut BytesMut, msg: &ClientMsg) {
    match msg {
        ClientMsg::Pub {
            topic,
            value,
            retain,
            id,
            quality,
        } => encode_pub(buf, topic, value, *retain, *id, *quality),
        other => encode_into(buf, other),
    }
}

/// Appends a `pub` frame to `buf`, exactly as serde writes [`ClientMsg::Pub`].
pub fn encode_pub(
    buf: &mut BytesMut,
    topic: &str,
    value: &Value,
    retain: bool,
    id: Option<u64>,
    quality: Option<Quality>,
) {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u8(0x80 | (4 + u8::from(id.is_some()) + u8::from(quality.is_some())));
    buf.put_slice(b"\xa1t\xa3pub\xa5topic");
    put_str(buf, topic);
    buf.put_slice(b"\xa5value");
    if !put_value(buf, value) {
        tracing::error!("encoding a publish failed");
        buf.truncate(start);
        return;
    }
    buf.put_slice(b"\xa6retain");
    buf.put_u8(if retain { 0xc3 } else { 0xc2 });
    if let Some(id) = id {
        buf.put_slice(b"\xa2id");
        put_uint(buf, id);
    }
    if let Some(q) = quality {
        buf.put_slice(b"\xa7quality");
        put_str(buf, q.as_str());
    }
    let len = (buf.len() - start - LEN_PREFIX) as u32;
    buf[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// An unsigned integer in its shortest MessagePack form (as serde writes a `u64`).
fn put_uint(buf: &mut BytesMut, v: u64) {
    match v {
        0..=0x7f => buf.put_u8(v as u8),
        0x80..=0xff => buf.put_slice(&[0xcc, v as u8]),
        0x100..=0xffff => {
            buf.put_u8(0xcd);
            buf.put_u16(v as u16);
        }
        0x1_0000..=0xffff_ffff => {
            buf.put_u8(0xce);
            buf.put_u32(v as u32);
        }
        _ => {
            buf.put_u8(0xcf);
            buf.put_u64(v);
        }
    }
}

/// A string: its shortest header, then its bytes.
fn put_str(buf: &mut BytesMut, s: &str) {
    let n = s.len();
    match n {
        0..=31 => buf.put_u8(0xa0 | n as u8),
        32..=0xff => buf.put_slice(&[0xd9, n as u8]),
        0x100..=0xffff => {
            buf.put_u8(0xda);
            buf.put_u16(n as u16);
        }
        _ => {
            buf.put_u8(0xdb);
            buf.put_u32(n as u32);
        }
    }
    buf.put_slice(s.as_bytes());
}

/// A value, through rmpv's encoder.
fn put_value(buf: &mut BytesMut, v: &Value) -> bool {
    let mut w = buf.writer();
    rmpv::encode::write_value(&mut w, v).is_ok()
}

/// [`encode_update`] into `buf` (which should be empty), returned as `Bytes` as
/// [`encode_frame`] does.
pub fn encode_update_frame(buf: &mut BytesMut, u: &UpdateRef<'_>) -> Bytes {
    buf.clear();
    encode_update(buf, u);
    buf.split().freeze()
}

fn classify(body: &[u8], e: rmp_serde::decode::Error, known: &[&str]) -> DecodeError {
    match from_body::<Tag>(body) {
        Err(_) => DecodeError::BadFrame(e.to_string()),
        Ok(tag) if !known.is_empty() && !known.contains(&tag.t.as_str()) => {
            DecodeError::UnknownMessage(tag.t)
        }
        Ok(tag) => DecodeError::BadMessage {
            kind: tag.t,
            detail: e.to_string(),
        },
    }
}

/// Appends one frame (length prefix and MessagePack body) to `buf`.
///
/// The protocol types cannot fail to encode; a failure would be a bug, so it is
/// logged and the frame is left out rather than taking the bus down.
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut BytesMut, msg: &T) {
    let start = buf.len();
    buf.put_u32(0);
    let mut w = buf.writer();
    if let Err(e) = rmp_serde::encode::write_named(&mut w, msg) {
        tracing::error!(error = %e, "encoding a protocol message failed");
        w.into_inner().truncate(start);
        return;
    }
    let len = (buf.len() - start - LEN_PREFIX) as u32;
    buf[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Encodes one frame into `buf` (which should be empty) and returns it as `Bytes`,
/// leaving `buf` ready for reuse.
pub fn encode_frame<T: Serialize + ?Sized>(buf: &mut BytesMut, msg: &T) -> Bytes {
    buf.clear();
    encode_into(buf, msg);
    buf.split().freeze()
}

/// Encodes a frame with a fresh buffer (for cold paths).
pub fn frame<T: Serialize + ?Sized>(msg: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    encode_into(&mut buf, msg);
    buf.freeze()
}

/// The bus's encoding of an update, borrowing its parts so that the hot path encodes
/// once without cloning the value (same wire form as [`BusMsg::Update`]).
#[derive(Serialize)]
#[serde(tag = "t", rename = "update")]
pub struct UpdateRef<'a> {
    pub seq: Seq,
    pub topic: &'a str,
    pub value: &'a Value,
    pub time: u64,
    pub retain: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "protocol_fast_tests.rs"]
mod fast_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_bytes_are_documented() {
        // The example in docs/protocol.md, byte for byte.
        let msg = ClientMsg::Hello {
            v: 1,
            name: "py".into(),
            role: Role::Panel,
            credentials: Value::Nil,
            resume: None,
        };
        let f = frame(&msg);
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0000002c85a174a568656c6c6fa17601a46e616d65a27079a4726f6c65a570616e656cab63726564656e7469616c73c0"
        );
        assert_eq!(decode_client(&f[4..]).unwrap(), msg);
    }

    #[test]
    fn update_ref_matches_update() {
        let v = Value::from(3);
        let r = UpdateRef {
            seq: Seq(9),
            topic: "a/b",
            value: &v,
            time: 5,
            retain: true,
            quality: Some(Quality::Pending),
            position: Some(0.5),
            display: Some("3"),
            target: Some(&v),
            deadline: Some(7),
        };
        let f = frame(&r);
        match decode_bus(&f[4..]).unwrap() {
            BusMsg::Update(u) => {
                assert_eq!(u.seq, Seq(9));
                assert_eq!(u.quality, Some(Quality::Pending));
                assert_eq!(u.target, Some(v));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(
            decode_client(&[0xc1]),
            Err(DecodeError::BadFrame(_))
        ));
        let unknown = rmp_serde::to_vec_named(&Tag2 { t: "dance" }).unwrap();
        assert!(matches!(
            decode_client(&unknown),
            Err(DecodeError::UnknownMessage(t)) if t == "dance"
        ));
        let bad = rmp_serde::to_vec_named(&Tag2 { t: "sub" }).unwrap();
        assert!(matches!(
            decode_client(&bad),
            Err(DecodeError::BadMessage { .. })
        ));
    }

    #[derive(Serialize)]
    struct Tag2 {
        t: &'static str,
    }
}
