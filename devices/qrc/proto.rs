//! The QRC wire codec, shared by the simulator ([`super::sim`]) and the adapter: JSON-RPC
//! 2.0 messages each terminated by one NUL byte, an incremental bounded [`Framer`],
//! typed [`Request`]s, Core-to-client [`Incoming`] messages, and `encode_*` functions
//! that produce exact frames (JSON followed by `0x00`).
//!
//! Parsing never panics: malformed JSON, a message that is not JSON-RPC 2.0, an unknown
//! method or wrongly typed params become a [`ProtoError`] that carries an escaped excerpt
//! of the offending bytes and, where one could be read, the request id to answer.
//! Encoding uses typed structs (not `serde_json::Value`, whose maps sort their keys) so
//! fields come out in the order QSC's examples use.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Largest message the [`Framer`] accepts (1 MiB). A whole `Component.GetControls`
/// answer for a big component is tens of KiB; anything near this is garbage or abuse.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Bytes of an offending message quoted in a [`ProtoError`].
const EXCERPT: usize = 96;

/// A JSON-RPC request id. QSC's help says "must be a number", but live Cores echo string
/// ids too (seen in integrators' traces), so both are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RpcId {
    Number(i64),
    String(String),
}

/// A change group's id (a string chosen by the client, e.g. `"my change group"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

/// A control's `Value` aspect: a number (gains, positions), a boolean (mutes), or text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl Default for Value {
    fn default() -> Self {
        Value::Number(0.0)
    }
}

/// One control's state as `Control.Get`, `Component.Get` and change groups report it:
/// Value, String (display text) and Position (0–1 across the control's range).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ControlState {
    /// Set when the control was added to a change group through its component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    pub name: String,
    #[serde(default)]
    pub string: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default)]
    pub position: f64,
    /// Sent by some Cores for controls driven by several sources; tolerated, not produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indeterminate: Option<bool>,
}

/// A control's type as `Component.GetControls` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlType {
    Boolean,
    Integer,
    Float,
    Text,
    Trigger,
    Time,
    /// Any type name this codec does not know.
    #[serde(other)]
    Other,
}

/// Whether a control can be read, written or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "Read/Write")]
    ReadWrite,
    #[serde(rename = "Read Only")]
    ReadOnly,
    #[serde(rename = "Write Only")]
    WriteOnly,
    #[serde(other)]
    Other,
}

/// One entry of a `Component.GetControls` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ControlInfo {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: ControlType,
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_min: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_max: Option<String>,
    #[serde(default)]
    pub string: String,
    #[serde(default)]
    pub position: f64,
    pub direction: Direction,
}

/// The result of `Component.Get` and `Component.GetControls`: a component and controls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComponentControls<C> {
    pub name: String,
    pub controls: Vec<C>,
}

/// One entry of a `Component.GetComponents` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComponentInfo {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub properties: Vec<Json>,
}

/// The Core's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineState {
    Idle,
    Active,
    Standby,
    #[serde(other)]
    Other,
}

/// The `Status` object live Cores add to `EngineStatus` (code 0 = `"OK"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CoreStatus {
    pub code: i64,
    pub string: String,
}

/// `EngineStatus` (pushed on connect and on change) and the result of `StatusGet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub state: EngineState,
    pub design_name: String,
    pub design_code: String,
    pub is_redundant: bool,
    pub is_emulator: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CoreStatus>,
}

/// The result of `ChangeGroup.Poll`/`AutoPoll` and the params of a pushed
/// `ChangeGroup.Poll` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PollResult {
    pub id: GroupId,
    pub changes: Vec<ControlState>,
}

/// What a `Control.Set` (or one `Component.Set` entry) sets: one aspect of the control,
/// on the wire as a `Value`, `Position` or `String` key beside `Name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SetTarget {
    Value(Value),
    /// 0–1 across the control's range.
    Position(f64),
    /// Display text, parsed by the control (`"-12dB"`, `"muted"`).
    String(String),
}

/// One control to set, with an optional ramp time in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ControlSet {
    pub name: String,
    #[serde(flatten)]
    pub target: SetTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<f64>,
}

/// A component and some of its controls: `{"Name":…,"Controls":[{"Name":…}]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComponentRef {
    pub name: String,
    #[serde(with = "named")]
    pub controls: Vec<String>,
}

/// `[{"Name": n}, …]` on the wire, `Vec<String>` in Rust.
mod named {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Named<T> {
        #[serde(rename = "Name")]
        name: T,
    }

    pub fn serialize<S: Serializer>(names: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(names.iter().map(|name| Named { name }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let named = Vec::<Named<String>>::deserialize(d)?;
        Ok(named.into_iter().map(|n| n.name).collect())
    }
}

/// A client-to-Core request: the `method` and `params` of a JSON-RPC request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all_fields = "PascalCase")]
pub enum Request {
    Logon {
        user: String,
        password: String,
    },
    NoOp {},
    StatusGet {},
    #[serde(rename = "Control.Get")]
    ControlGet(Vec<String>),
    #[serde(rename = "Control.Set")]
    ControlSet(ControlSet),
    #[serde(rename = "Component.Get")]
    ComponentGet(ComponentRef),
    #[serde(rename = "Component.Set")]
    ComponentSet {
        name: String,
        controls: Vec<ControlSet>,
    },
    #[serde(rename = "Component.GetControls")]
    ComponentGetControls {
        name: String,
    },
    #[serde(rename = "Component.GetComponents")]
    ComponentGetComponents {},
    #[serde(rename = "ChangeGroup.AddControl")]
    ChangeGroupAddControl {
        id: GroupId,
        controls: Vec<String>,
    },
    #[serde(rename = "ChangeGroup.AddComponentControl")]
    ChangeGroupAddComponentControl {
        id: GroupId,
        component: ComponentRef,
    },
    #[serde(rename = "ChangeGroup.Remove")]
    ChangeGroupRemove {
        id: GroupId,
        controls: Vec<String>,
    },
    #[serde(rename = "ChangeGroup.Poll")]
    ChangeGroupPoll {
        id: GroupId,
    },
    #[serde(rename = "ChangeGroup.Invalidate")]
    ChangeGroupInvalidate {
        id: GroupId,
    },
    #[serde(rename = "ChangeGroup.Destroy")]
    ChangeGroupDestroy {
        id: GroupId,
    },
    #[serde(rename = "ChangeGroup.Clear")]
    ChangeGroupClear {
        id: GroupId,
    },
    /// `rate` is the polling interval in seconds.
    #[serde(rename = "ChangeGroup.AutoPoll")]
    ChangeGroupAutoPoll {
        id: GroupId,
        rate: f64,
    },
}

/// Every method [`Request`] knows; the first three take no params (any given are ignored,
/// QSC's own `StatusGet` example sends `"params": 0`).
const METHODS: [&str; 17] = [
    "NoOp",
    "StatusGet",
    "Component.GetComponents",
    "Logon",
    "Control.Get",
    "Control.Set",
    "Component.Get",
    "Component.Set",
    "Component.GetControls",
    "ChangeGroup.AddControl",
    "ChangeGroup.AddComponentControl",
    "ChangeGroup.Remove",
    "ChangeGroup.Poll",
    "ChangeGroup.Invalidate",
    "ChangeGroup.Destroy",
    "ChangeGroup.Clear",
    "ChangeGroup.AutoPoll",
];

/// A Core-to-client notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params")]
pub enum Notification {
    /// Pushed on connect and when the Core's status changes.
    EngineStatus(EngineStatus),
    /// A change group's AutoPoll push.
    #[serde(rename = "ChangeGroup.Poll")]
    ChangeGroupPoll(PollResult),
}

/// A parsed request with its id (`None`: a JSON-RPC notification, answered by nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<RpcId>,
    pub request: Request,
}

/// The JSON-RPC and QRC error codes (QSC "Error Code Reference").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    ServerError,
    InvalidPageRequestId,
    BadPageRequest,
    MissingFile,
    ChangeGroupsExhausted,
    UnknownChangeGroup,
    UnknownComponent,
    UnknownControl,
    IllegalMixerChannel,
    LogonRequired,
}

const CODES: [(ErrorCode, i64, &str); 14] = [
    (ErrorCode::ParseError, -32700, "Parse error"),
    (ErrorCode::InvalidRequest, -32600, "Invalid request"),
    (ErrorCode::MethodNotFound, -32601, "Method not found"),
    (ErrorCode::InvalidParams, -32602, "Invalid params"),
    (ErrorCode::ServerError, -32603, "Server error"),
    (
        ErrorCode::InvalidPageRequestId,
        2,
        "Invalid Page Request ID",
    ),
    (ErrorCode::BadPageRequest, 3, "Bad Page Request"),
    (ErrorCode::MissingFile, 4, "Missing file"),
    (
        ErrorCode::ChangeGroupsExhausted,
        5,
        "Change Groups exhausted",
    ),
    (ErrorCode::UnknownChangeGroup, 6, "Unknown change group"),
    (ErrorCode::UnknownComponent, 7, "Unknown component name"),
    (ErrorCode::UnknownControl, 8, "Unknown control"),
    (
        ErrorCode::IllegalMixerChannel,
        9,
        "Illegal mixer channel index",
    ),
    (ErrorCode::LogonRequired, 10, "Logon required"),
];

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> i64 {
        CODES.iter().find(|c| c.0 == self).map_or(-32603, |c| c.1)
    }
    /// The kind of a wire code, if it is one QSC documents.
    pub fn from_code(code: i64) -> Option<Self> {
        CODES.iter().find(|c| c.1 == code).map(|c| c.0)
    }
    /// QSC's wording, used as the default message.
    pub fn message(self) -> &'static str {
        CODES
            .iter()
            .find(|c| c.0 == self)
            .map_or("Server error", |c| c.2)
    }
}

/// A JSON-RPC error object. `code` stays an integer so unknown codes survive parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("QRC error {code}: {message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    /// QSC's message for `kind`, followed by `detail` when there is one.
    pub fn new(kind: ErrorCode, detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        let message = if detail.is_empty() {
            kind.message().to_owned()
        } else {
            format!("{}: {detail}", kind.message())
        };
        RpcError {
            code: kind.code(),
            message,
        }
    }
    /// The documented kind of this code, if any.
    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }
}

/// A Core-to-client message, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// An answer; decode `Ok` with `serde_json::from_value` into the method's result type.
    Response {
        id: Option<RpcId>,
        outcome: Result<Json, RpcError>,
    },
    Notification(Notification),
}

/// Why bytes could not be framed or parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtoError {
    #[error("message longer than {limit} bytes without a NUL terminator")]
    TooLong { limit: usize },
    #[error("malformed JSON ({detail}) in `{excerpt}`")]
    Json { detail: String, excerpt: String },
    #[error("not a JSON-RPC 2.0 message ({detail}) in `{excerpt}`")]
    InvalidRequest {
        id: Option<RpcId>,
        detail: String,
        excerpt: String,
    },
    #[error("unknown method {method:?} in `{excerpt}`")]
    UnknownMethod {
        id: Option<RpcId>,
        method: String,
        excerpt: String,
    },
    #[error("invalid params for {method} ({detail}) in `{excerpt}`")]
    InvalidParams {
        id: Option<RpcId>,
        method: String,
        detail: String,
        excerpt: String,
    },
}

impl ProtoError {
    /// The JSON-RPC error a server answers this with.
    pub fn rpc_error(&self) -> RpcError {
        let kind = match self {
            ProtoError::TooLong { .. } | ProtoError::Json { .. } => ErrorCode::ParseError,
            ProtoError::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            ProtoError::UnknownMethod { .. } => ErrorCode::MethodNotFound,
            ProtoError::InvalidParams { .. } => ErrorCode::InvalidParams,
        };
        RpcError::new(kind, self)
    }
    /// The id of the request, when it could be read.
    pub fn request_id(&self) -> Option<&RpcId> {
        match self {
            ProtoError::InvalidRequest { id, .. }
            | ProtoError::UnknownMethod { id, .. }
            | ProtoError::InvalidParams { id, .. } => id.as_ref(),
            _ => None,
        }
    }
}

/// Quotes at most 96 bytes, escaped so the text is printable and one line.
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = bytes.len().min(EXCERPT);
    let mut text = bytes[..cut].escape_ascii().to_string();
    if cut < bytes.len() {
        text.push('…');
    }
    text
}

/// Splits a byte stream at NULs. Holds at most `max` bytes of an unfinished message plus
/// the last chunk given to [`Framer::extend`]; a longer message is reported once as
/// [`ProtoError::TooLong`] and its remaining bytes are skipped up to the next NUL.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    max: usize,
    /// Bytes of `buf` already searched for a NUL.
    scanned: usize,
    /// Skipping the rest of an over-long message.
    discarding: bool,
}

impl Framer {
    /// A framer accepting messages up to `max` bytes ([`MAX_MESSAGE`] for QRC).
    pub fn new(max: usize) -> Self {
        Framer {
            buf: BytesMut::new(),
            max,
            scanned: 0,
            discarding: false,
        }
    }

    /// Appends received bytes; take frames out with [`Framer::next_frame`].
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held (for tests and accounting).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message without its NUL; `None` when more bytes are needed.
    /// Empty messages (two NULs in a row) are skipped.
    pub fn next_frame(&mut self) -> Option<Result<Bytes, ProtoError>> {
        loop {
            match memchr(&self.buf[self.scanned..]) {
                Some(at) => {
                    let end = self.scanned + at;
                    self.scanned = 0;
                    let frame = self.buf.split_to(end).freeze();
                    self.buf.advance(1);
                    if std::mem::take(&mut self.discarding) || frame.is_empty() {
                        continue;
                    }
                    if frame.len() > self.max {
                        return Some(Err(ProtoError::TooLong { limit: self.max }));
                    }
                    return Some(Ok(frame));
                }
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() <= self.max {
                        return None;
                    }
                    self.buf.clear();
                    self.scanned = 0;
                    if !std::mem::replace(&mut self.discarding, true) {
                        return Some(Err(ProtoError::TooLong { limit: self.max }));
                    }
                    return None;
                }
            }
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == 0)
}

// ---- parsing ----

/// Reads the JSON-RPC envelope: an object with `"jsonrpc":"2.0"`; takes out the id.
fn envelope(frame: &[u8]) -> Result<(serde_json::Map<String, Json>, Option<RpcId>), ProtoError> {
    let json: Json = serde_json::from_slice(frame).map_err(|e| ProtoError::Json {
        detail: e.to_string(),
        excerpt: excerpt(frame),
    })?;
    let invalid = |id, detail: &str| ProtoError::InvalidRequest {
        id,
        detail: detail.to_owned(),
        excerpt: excerpt(frame),
    };
    let Json::Object(mut obj) = json else {
        return Err(invalid(None, "not an object"));
    };
    let id = match obj.remove("id") {
        None | Some(Json::Null) => None,
        Some(raw) => Some(
            serde_json::from_value::<RpcId>(raw)
                .map_err(|_| invalid(None, "id is neither an integer nor a string"))?,
        ),
    };
    if obj.get("jsonrpc").and_then(Json::as_str) != Some("2.0") {
        return Err(invalid(id, "jsonrpc is not \"2.0\""));
    }
    Ok((obj, id))
}

/// Deserializes `{"method": m, "params": p}` into an adjacently tagged enum.
fn tagged<T: serde::de::DeserializeOwned>(method: &str, params: Json) -> Result<T, String> {
    let mut obj = serde_json::Map::new();
    obj.insert("method".into(), Json::String(method.to_owned()));
    obj.insert("params".into(), params);
    serde_json::from_value(Json::Object(obj)).map_err(|e| e.to_string())
}

/// Parses one client-to-Core frame (without its NUL).
///
/// # Errors
/// [`ProtoError::Json`], [`ProtoError::InvalidRequest`], [`ProtoError::UnknownMethod`],
/// [`ProtoError::InvalidParams`]; each carries an escaped excerpt.
pub fn parse_request(frame: &[u8]) -> Result<Envelope, ProtoError> {
    let (mut obj, id) = envelope(frame)?;
    let Some(Json::String(method)) = obj.remove("method") else {
        return Err(ProtoError::InvalidRequest {
            id,
            detail: "method is missing or not a string".into(),
            excerpt: excerpt(frame),
        });
    };
    let Some(known) = METHODS.iter().position(|m| *m == method) else {
        return Err(ProtoError::UnknownMethod {
            id,
            method,
            excerpt: excerpt(frame),
        });
    };
    let params = match obj.remove("params") {
        _ if known < 3 => Json::Object(serde_json::Map::new()),
        params => params.unwrap_or(Json::Null),
    };
    match tagged(&method, params) {
        Ok(request) => Ok(Envelope { id, request }),
        Err(detail) => Err(ProtoError::InvalidParams {
            id,
            method,
            detail,
            excerpt: excerpt(frame),
        }),
    }
}

/// Parses one Core-to-client frame (without its NUL).
///
/// # Errors
/// As [`parse_request`]; an unknown notification method is [`ProtoError::UnknownMethod`].
pub fn parse_incoming(frame: &[u8]) -> Result<Incoming, ProtoError> {
    let (mut obj, id) = envelope(frame)?;
    let invalid = |id, detail: String| ProtoError::InvalidRequest {
        id,
        detail,
        excerpt: excerpt(frame),
    };
    if let Some(method) = obj.remove("method") {
        let method = method.as_str().unwrap_or_default().to_owned();
        if method != "EngineStatus" && method != "ChangeGroup.Poll" {
            let excerpt = excerpt(frame);
            return Err(ProtoError::UnknownMethod {
                id,
                method,
                excerpt,
            });
        }
        let params = obj.remove("params").unwrap_or(Json::Null);
        return tagged(&method, params)
            .map(Incoming::Notification)
            .map_err(|detail| ProtoError::InvalidParams {
                id,
                method,
                detail,
                excerpt: excerpt(frame),
            });
    }
    let outcome = match (obj.remove("result"), obj.remove("error")) {
        (_, Some(error)) => Err(serde_json::from_value::<RpcError>(error)
            .map_err(|e| invalid(id.clone(), format!("bad error object: {e}")))?),
        (Some(result), None) => Ok(result),
        (None, None) => return Err(invalid(id, "neither method, result nor error".into())),
    };
    Ok(Incoming::Response { id, outcome })
}

// ---- encoding ----

#[derive(Serialize)]
struct Out<'a, T> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RpcId>,
    #[serde(flatten)]
    body: &'a T,
}

/// The body of an answer: `result` or `error`, then the id (`null` when unreadable).
#[derive(Serialize)]
struct Answer<'a, T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
    id: Option<&'a RpcId>,
}

fn frame<T: Serialize>(id: Option<&RpcId>, body: &T) -> Vec<u8> {
    // Serializing these types cannot fail: every map key is a string and no Serialize
    // impl here returns an error (non-finite floats are written as `null`).
    let mut out = serde_json::to_vec(&Out {
        jsonrpc: "2.0",
        id,
        body,
    })
    .unwrap_or_default();
    out.push(0);
    out
}

/// A request frame; `id: None` makes it a notification (the Core answers nothing).
pub fn encode_request(id: Option<&RpcId>, request: &Request) -> Vec<u8> {
    frame(id, request)
}

/// A success answer frame.
pub fn encode_result<T: Serialize>(id: Option<&RpcId>, result: &T) -> Vec<u8> {
    let body = Answer {
        result: Some(result),
        error: None,
        id,
    };
    frame(None, &body)
}

/// An error answer frame (`"id":null` when the request's id was unreadable).
pub fn encode_error(id: Option<&RpcId>, error: &RpcError) -> Vec<u8> {
    let body = Answer::<()> {
        result: None,
        error: Some(error),
        id,
    };
    frame(None, &body)
}

/// A notification frame (`EngineStatus`, an AutoPoll's `ChangeGroup.Poll`).
pub fn encode_notification(notification: &Notification) -> Vec<u8> {
    frame(None, notification)
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
