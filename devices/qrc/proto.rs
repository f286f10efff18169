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
mod tests {
    use super::*;

    fn frames(framer: &mut Framer) -> Vec<Result<Bytes, ProtoError>> {
        std::iter::from_fn(|| framer.next_frame()).collect()
    }
    fn ok(bytes: &'static [u8]) -> Result<Bytes, ProtoError> {
        Ok(Bytes::from_static(bytes))
    }
    fn request(frame: &[u8]) -> (Option<RpcId>, Request) {
        let env = parse_request(frame).unwrap();
        (env.id, env.request)
    }
    fn code(frame: &[u8]) -> (i64, Option<RpcId>) {
        let e = parse_request(frame).unwrap_err();
        (e.rpc_error().code, e.request_id().cloned())
    }

    #[test]
    fn framer_splits_at_nul_and_bounds_messages() {
        let mut f = Framer::new(8);
        f.extend(b"{\"a\":1}\0\0{\"b\"");
        assert_eq!(frames(&mut f), vec![ok(b"{\"a\":1}")]);
        f.extend(b":2}\0");
        assert_eq!((frames(&mut f), f.buffered()), (vec![ok(b"{\"b\":2}")], 0));
        f.extend(b"0123456789");
        assert_eq!(frames(&mut f), vec![Err(ProtoError::TooLong { limit: 8 })]);
        f.extend(b"abcdefghijkl");
        assert!(frames(&mut f).is_empty() && f.buffered() <= 8 + 12);
        f.extend(b"tail\0ok\0");
        assert_eq!(frames(&mut f), vec![ok(b"ok")]);
        // A long message that arrives whole, NUL included, is rejected too.
        f.extend(b"0123456789\0x\0");
        let too_long = Err(ProtoError::TooLong { limit: 8 });
        assert_eq!(frames(&mut f), vec![too_long, ok(b"x")]);
    }

    #[test]
    fn parses_documented_requests() {
        let names = vec!["Gain".to_owned(), "Mute".to_owned()];
        assert_eq!(
            request(
                br#"{"jsonrpc":"2.0","id":1234,"method":"Control.Get","params":["Gain","Mute"]}"#
            ),
            (Some(RpcId::Number(1234)), Request::ControlGet(names))
        );
        let logon =
            br#"{ "jsonrpc":"2.0", "method":"Logon", "params":{ "User":"u", "Password":"1234" } }"#;
        let expected = Request::Logon {
            user: "u".into(),
            password: "1234".into(),
        };
        assert_eq!(request(logon), (None, expected));
        let status = br#"{"jsonrpc":"2.0","method":"StatusGet","id":"x","params":0}"#;
        assert_eq!(
            request(status),
            (Some(RpcId::String("x".into())), Request::StatusGet {})
        );
        let (_, set) = request(
            br#"{"jsonrpc":"2.0","id":1,"method":"Component.Set","params":{"Name":"My APM","Controls":[{"Name":"ent.xfade.gain","Value":-100.0,"Ramp":2},{"Name":"mute","String":"muted"}]}}"#,
        );
        let Request::ComponentSet { name, controls } = set else {
            panic!("{set:?}")
        };
        assert_eq!((name.as_str(), controls[0].ramp), ("My APM", Some(2.0)));
        assert_eq!(controls[0].target, SetTarget::Value(Value::Number(-100.0)));
        assert_eq!(controls[1].target, SetTarget::String("muted".into()));
        let (_, add) = request(
            br#"{"jsonrpc":"2.0","id":2,"method":"ChangeGroup.AddComponentControl","params":{"Id":"g","Component":{"Name":"C","Controls":[{"Name":"gain"}]}}}"#,
        );
        let component = ComponentRef {
            name: "C".into(),
            controls: vec!["gain".into()],
        };
        let id = GroupId("g".into());
        assert_eq!(
            add,
            Request::ChangeGroupAddComponentControl { id, component }
        );
    }

    #[test]
    fn typed_errors_with_codes_and_ids() {
        let e = parse_request(b"{\"jsonrpc\":\"2.0\",\x01").unwrap_err();
        assert!(matches!(e, ProtoError::Json { ref excerpt, .. } if excerpt.contains("\\x01")));
        assert_eq!(e.rpc_error().code, -32700);
        assert_eq!(code(b"[1,2]"), (-32600, None));
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":[1],"method":"NoOp"}"#),
            (-32600, None)
        );
        let n = |n| Some(RpcId::Number(n));
        assert_eq!(
            code(br#"{"jsonrpc":"1.0","id":5,"method":"NoOp"}"#),
            (-32600, n(5))
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":6,"method":"Control.Explode"}"#),
            (-32601, n(6))
        );
        let wrong_type = br#"{"jsonrpc":"2.0","id":7,"method":"Control.Set","params":{"Name":1}}"#;
        assert_eq!(code(wrong_type), (-32602, n(7)));
        let no_value = br#"{"jsonrpc":"2.0","id":8,"method":"Control.Set","params":{"Name":"x"}}"#;
        assert_eq!(code(no_value), (-32602, n(8)));
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":9,"method":"Control.Get"}"#),
            (-32602, n(9))
        );
        assert_eq!(ErrorCode::LogonRequired.code(), 10);
        assert_eq!(ErrorCode::from_code(6), Some(ErrorCode::UnknownChangeGroup));
        assert_eq!(ErrorCode::from_code(99), None);
    }

    #[test]
    fn encodes_exact_bytes() {
        let id = RpcId::Number(1234);
        let target = SetTarget::Value(Value::Number(-12.0));
        let set = ControlSet {
            name: "MainGain".into(),
            target,
            ramp: Some(2.0),
        };
        assert_eq!(
            encode_request(Some(&id), &Request::ControlSet(set)),
            b"{\"jsonrpc\":\"2.0\",\"id\":1234,\"method\":\"Control.Set\",\"params\":{\"Name\":\"MainGain\",\"Value\":-12.0,\"Ramp\":2.0}}\0"
        );
        assert_eq!(
            encode_request(None, &Request::NoOp {}),
            b"{\"jsonrpc\":\"2.0\",\"method\":\"NoOp\",\"params\":{}}\0"
        );
        let poll = Request::ChangeGroupAutoPoll {
            id: GroupId("g".into()),
            rate: 0.1,
        };
        assert_eq!(
            encode_request(Some(&RpcId::String("a".into())), &poll),
            b"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"ChangeGroup.AutoPoll\",\"params\":{\"Id\":\"g\",\"Rate\":0.1}}\0"
        );
        assert_eq!(
            encode_result(Some(&id), &true),
            b"{\"jsonrpc\":\"2.0\",\"result\":true,\"id\":1234}\0"
        );
        assert_eq!(
            encode_error(None, &RpcError::new(ErrorCode::LogonRequired, "")),
            b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":10,\"message\":\"Logon required\"},\"id\":null}\0"
        );
        let change = ControlState {
            component: None,
            name: "gain".into(),
            string: "-12.0dB".into(),
            value: Value::Number(-12.0),
            position: 0.5,
            indeterminate: None,
        };
        let push = PollResult {
            id: GroupId("1".into()),
            changes: vec![change],
        };
        assert_eq!(
            encode_notification(&Notification::ChangeGroupPoll(push)),
            b"{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":\"1\",\"Changes\":[{\"Name\":\"gain\",\"String\":\"-12.0dB\",\"Value\":-12.0,\"Position\":0.5}]}}\0"
        );
    }

    #[test]
    fn every_request_round_trips() {
        let g = || GroupId("grp".into());
        let target = SetTarget::Position(0.25);
        let set = ControlSet {
            name: "m".into(),
            target,
            ramp: None,
        };
        let component = ComponentRef {
            name: "c".into(),
            controls: vec!["gain".into()],
        };
        let all = vec![
            Request::Logon {
                user: "u".into(),
                password: "p".into(),
            },
            Request::NoOp {},
            Request::StatusGet {},
            Request::ControlGet(vec!["a".into()]),
            Request::ControlSet(set.clone()),
            Request::ComponentGet(component.clone()),
            Request::ComponentSet {
                name: "c".into(),
                controls: vec![set],
            },
            Request::ComponentGetControls { name: "c".into() },
            Request::ComponentGetComponents {},
            Request::ChangeGroupAddControl {
                id: g(),
                controls: vec!["a".into()],
            },
            Request::ChangeGroupAddComponentControl { id: g(), component },
            Request::ChangeGroupRemove {
                id: g(),
                controls: vec!["a".into()],
            },
            Request::ChangeGroupPoll { id: g() },
            Request::ChangeGroupInvalidate { id: g() },
            Request::ChangeGroupDestroy { id: g() },
            Request::ChangeGroupClear { id: g() },
            Request::ChangeGroupAutoPoll {
                id: g(),
                rate: 0.05,
            },
        ];
        assert_eq!(all.len(), METHODS.len());
        for (n, sent) in all.into_iter().enumerate() {
            let id = RpcId::Number(n as i64);
            let bytes = encode_request(Some(&id), &sent);
            assert_eq!(bytes.last(), Some(&0));
            assert_eq!(request(&bytes[..bytes.len() - 1]), (Some(id), sent));
        }
    }

    #[test]
    fn parses_core_messages() {
        let m = parse_incoming(
            br#"{"jsonrpc":"2.0","method":"EngineStatus","params":{"Platform":"Core 110f","State":"Active","DesignName":"D","DesignCode":"srOW2FUZF3HC","IsRedundant":false,"IsEmulator":false,"Status":{"Code":4,"String":"Missing"}}}"#,
        );
        let Ok(Incoming::Notification(Notification::EngineStatus(s))) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (s.state, s.status.map(|s| s.code)),
            (EngineState::Active, Some(4))
        );
        let m = parse_incoming(
            br#"{"jsonrpc":"2.0","method":"ChangeGroup.Poll","params":{"Id":"G","Changes":[{"Name":"Mic","String":"-42.1dB","Value":-42.09999847,"Position":0.48250001,"Indeterminate":true}]}}"#,
        );
        let Ok(Incoming::Notification(Notification::ChangeGroupPoll(p))) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (p.id.0.as_str(), p.changes[0].indeterminate),
            ("G", Some(true))
        );
        let m = parse_incoming(br#"{"jsonrpc":"2.0","result":true,"id":"crestron"}"#).unwrap();
        let id = Some(RpcId::String("crestron".into()));
        assert_eq!(
            m,
            Incoming::Response {
                id,
                outcome: Ok(Json::Bool(true))
            }
        );
        let m = parse_incoming(
            br#"{"jsonrpc":"2.0","id":"s-1","error":{"code":10,"message":"Logon required"}}"#,
        );
        let Ok(Incoming::Response {
            outcome: Err(e), ..
        }) = m
        else {
            panic!("{m:?}")
        };
        assert_eq!(e.kind(), Some(ErrorCode::LogonRequired));
        assert!(parse_incoming(br#"{"jsonrpc":"2.0","method":"Other","params":{}}"#).is_err());
        assert!(parse_incoming(br#"{"jsonrpc":"2.0","method":"EngineStatus"}"#).is_err());
        assert!(parse_incoming(br#"{"jsonrpc":"2.0","id":1}"#).is_err());
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        const ALPHABET: &[u8] = b"{}[]\":,0123456789.-eE truefalsnul\\u\0\x01\xff\xc3";
        let seeds: Vec<Vec<u8>> =
            vec![
            encode_request(Some(&RpcId::Number(1)), &Request::ControlGet(vec!["a".into()])),
            br#"{"jsonrpc":"2.0","id":1,"method":"Control.Set","params":{"Name":"x","Value":1}}"#
                .to_vec(),
            br#"{"jsonrpc":"2.0","method":"ChangeGroup.Poll","params":{"Id":"g","Changes":[]}}"#
                .to_vec(),
        ];
        let mut rng = fastrand::Rng::with_seed(0x51c_2024);
        let mut framer = Framer::new(256);
        for round in 0..5000 {
            let mut bytes: Vec<u8> = if round % 3 == 0 {
                let mut s = seeds[rng.usize(..seeds.len())].clone();
                for _ in 0..rng.usize(0..4) {
                    let at = rng.usize(..s.len());
                    s[at] = ALPHABET[rng.usize(..ALPHABET.len())];
                }
                s
            } else {
                let len = rng.usize(0..300);
                (0..len)
                    .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
                    .collect()
            };
            if round % 7 == 0 {
                bytes.extend(std::iter::repeat_n(b'x', rng.usize(0..600)));
            }
            framer.extend(&bytes);
            while let Some(frame) = framer.next_frame() {
                if let Ok(frame) = frame {
                    assert!(frame.len() <= 256);
                    let _ = parse_request(&frame).map_err(|e| e.rpc_error());
                    let _ = parse_incoming(&frame);
                }
            }
            assert!(framer.buffered() <= 256 + bytes.len());
            let _ = parse_request(&bytes);
            let _ = parse_incoming(&bytes);
        }
    }
}
