//! The X32 OSC codec: OSC 1.0 packets (through the `rosc` crate) and the typed X32
//! messages a console adapter sends and a console (or [`super::sim`]) answers.
//!
//! Two layers, so a receiver can tell broken OSC from an OSC message it does not know:
//! * [`decode_messages`]: one datagram into its OSC messages (a bundle is flattened),
//!   with bounds on size, bundle depth and message count that `rosc` does not have;
//! * [`Request`] (client → console) and [`Reply`] (console → client): each with
//!   `encode` and `decode`. A well-formed message at an address this codec does not
//!   model is `Other`, not an error: a console pushes far more than faders and mutes.
//!
//! The meter blob ([`decode_meter_blob`]) is the X32's own format inside an OSC blob: a
//! **little-endian** int32 count, then that many little-endian float32 values.
//!
//! Decoders never panic; a [`ProtoError`] names what was wrong. Sources are listed in
//! the [`super`] module documentation.

use std::fmt;

use rosc::{OscBundle, OscMessage, OscPacket, OscTime, OscType};

/// The UDP port X32 consoles listen on (X AIR mixers: 10024).
pub const PORT: u16 = 10023;
/// Input channels of an X32 (`/ch/01` ..= `/ch/32`).
pub const CHANNELS: u8 = 32;
/// Longest channel name an X32 stores (`/ch/NN/config/name`).
pub const NAME_LEN: usize = 12;
/// Fader positions an X32 resolves: a value is stored as the nearest of 1024 steps.
pub const FADER_STEPS: u16 = 1024;
/// The fader law's floor: position 0 is `-oo`, shown and published as this.
pub const FADER_FLOOR_DB: f64 = -90.0;
/// The fader's top, at position 1.
pub const FADER_MAX_DB: f64 = 10.0;
/// Meter levels below this (and silence) are published as this.
pub const METER_FLOOR_DB: f64 = -90.0;
/// The console's internal headroom: meter values go up to 8.0 linear, +18 dBFS.
pub const METER_MAX_DB: f64 = 18.0;
/// Largest datagram decoded. X32 messages are far smaller (a `/meters/1` blob is 420
/// bytes); a larger one is refused before `rosc` sees it, which also bounds how deep
/// bundles can nest in its recursive parser.
pub const MAX_DATAGRAM: usize = 4096;
/// Deepest bundle nesting accepted (a bundle in a bundle is depth 2).
pub const MAX_BUNDLE_DEPTH: usize = 4;
/// Most messages one datagram may carry.
pub const MAX_MESSAGES: usize = 128;
/// Most values a meter blob may declare (`/meters/14`, the largest, has 80).
pub const MAX_METER_VALUES: usize = 256;
/// Bytes of the offending datagram quoted in a log line.
const QUOTE_LIMIT: usize = 48;

/// Why bytes are not a valid X32 datagram or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("empty datagram")]
    Empty,
    #[error("datagram of {0} bytes is longer than {MAX_DATAGRAM}")]
    TooLong(usize),
    /// Not OSC 1.0 (`rosc`'s reason).
    #[error("not an OSC packet: {0}")]
    Osc(String),
    #[error("{0} bytes after the OSC packet")]
    Trailing(usize),
    #[error("bundles nested deeper than {MAX_BUNDLE_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_MESSAGES} messages in one datagram")]
    TooManyMessages,
    /// A known address with the wrong arguments: the address and its type tags.
    #[error("{0}: unexpected arguments ,{1}")]
    Arguments(String, String),
    /// A known address with an argument out of its range.
    #[error("{0}: {1}")]
    Value(String, String),
    #[error("meter blob: {0}")]
    Blob(#[from] BlobError),
}

/// Why a meter blob is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("{0} bytes, shorter than the 4-byte count")]
    Short(usize),
    #[error("negative count {0}")]
    Negative(i32),
    #[error("count {0} is more than {MAX_METER_VALUES}")]
    TooMany(usize),
    #[error("count {declared} but {available} whole values follow")]
    Truncated { declared: usize, available: usize },
    #[error("{0} bytes after the declared values")]
    Trailing(usize),
}

/// An X32 input channel, 1..=32; written with two digits in addresses (`/ch/07`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel(u8);

impl Channel {
    /// Channel `n`, if the console has it.
    pub fn new(n: u8) -> Option<Channel> {
        (1..=CHANNELS).contains(&n).then_some(Channel(n))
    }

    /// Its number, 1..=32.
    pub fn number(self) -> u8 {
        self.0
    }

    /// Its index into per-channel tables, 0..32.
    pub fn index(self) -> usize {
        usize::from(self.0 - 1)
    }

    /// Every channel, in order.
    pub fn all() -> impl Iterator<Item = Channel> {
        (1..=CHANNELS).map(Channel)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// A channel parameter this codec models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Param {
    /// `/ch/NN/mix/fader`, float 0..1.
    Fader(Channel),
    /// `/ch/NN/mix/on`, int: 1 = on (not muted), 0 = muted.
    On(Channel),
    /// `/ch/NN/config/name`, string of at most 12 characters.
    Name(Channel),
}

impl Param {
    /// The OSC address.
    pub fn address(self) -> String {
        match self {
            Param::Fader(c) => format!("/ch/{c}/mix/fader"),
            Param::On(c) => format!("/ch/{c}/mix/on"),
            Param::Name(c) => format!("/ch/{c}/config/name"),
        }
    }

    /// The parameter at `address`, if modelled.
    pub fn parse(address: &str) -> Option<Param> {
        let rest = address.strip_prefix("/ch/")?;
        let (nn, leaf) = rest.split_at_checked(2)?;
        if !nn.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let channel = Channel::new(nn.parse().ok()?)?;
        match leaf {
            "/mix/fader" => Some(Param::Fader(channel)),
            "/mix/on" => Some(Param::On(channel)),
            "/config/name" => Some(Param::Name(channel)),
            _ => None,
        }
    }

    pub fn channel(self) -> Channel {
        match self {
            Param::Fader(c) | Param::On(c) | Param::Name(c) => c,
        }
    }

    /// The fader, on and name parameters of every channel.
    pub fn all() -> impl Iterator<Item = Param> {
        Channel::all().flat_map(|c| [Param::Fader(c), Param::On(c), Param::Name(c)])
    }
}

/// A parameter's value, as the console holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Fader(f32),
    On(bool),
    Name(String),
}

/// A meter bank a client subscribes to with `/meters`; its blobs come back at the
/// bank's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeterBank {
    /// `/meters/0`: 32 inputs, 8 aux returns, 8 FX returns, 16 buses, 6 matrixes.
    Overview,
    /// `/meters/1`: 32 input levels, 32 gate and 32 dynamics gain reductions.
    Channels,
}

impl MeterBank {
    pub fn address(self) -> &'static str {
        match self {
            MeterBank::Overview => "/meters/0",
            MeterBank::Channels => "/meters/1",
        }
    }

    pub fn parse(address: &str) -> Option<MeterBank> {
        match address {
            "/meters/0" => Some(MeterBank::Overview),
            "/meters/1" => Some(MeterBank::Channels),
            _ => None,
        }
    }

    /// Values in each of its blobs; the first 32 are the input channels in both.
    pub fn values(self) -> usize {
        match self {
            MeterBank::Overview => 70,
            MeterBank::Channels => 96,
        }
    }
}

/// What `/xinfo` answers: `,ssss` address, console name, model, firmware version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsoleInfo {
    pub ip: String,
    pub name: String,
    pub model: String,
    pub version: String,
}

/// What `/status` answers: `,sss` state (`active`), address, console name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleStatus {
    pub state: String,
    pub ip: String,
    pub name: String,
}

/// A message from a client to the console.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `/xinfo`: who are you.
    XInfo,
    /// `/status`: are you up.
    Status,
    /// `/xremote`: push me every change for the next ~10 s.
    XRemote,
    /// The address alone: what is its value.
    Get(Param),
    /// The address with a value.
    Set(Param, ParamValue),
    /// `/meters ,siii "/meters/N" 0 0 tf`: send me `bank` every 50 ms × `time_factor`
    /// for ~10 s. Forms with fewer ints are accepted (time factor 1).
    Meters { bank: MeterBank, time_factor: i32 },
    /// `/renew ,s "/meters/N"`: ten more seconds of that bank; `/renew` alone: of all.
    Renew(Option<MeterBank>),
    /// Well-formed OSC at an address not modelled here.
    Other(String),
}

/// A message from the console to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    XInfo(ConsoleInfo),
    Status(ConsoleStatus),
    /// The answer to a get, or a change pushed to `/xremote` clients.
    Param(Param, ParamValue),
    /// A meter blob's values, linear (1.0 = 0 dBFS).
    Meters(MeterBank, Vec<f32>),
    /// Well-formed OSC at an address not modelled here.
    Other(String),
}

impl Request {
    /// The datagram.
    pub fn encode(&self) -> Vec<u8> {
        let (address, args) = match self {
            Request::XInfo => ("/xinfo".to_owned(), vec![]),
            Request::Status => ("/status".to_owned(), vec![]),
            Request::XRemote => ("/xremote".to_owned(), vec![]),
            Request::Get(p) => (p.address(), vec![]),
            Request::Set(p, v) => (p.address(), vec![value_arg(v)]),
            Request::Meters { bank, time_factor } => (
                "/meters".to_owned(),
                vec![
                    OscType::String(bank.address().into()),
                    OscType::Int(0),
                    OscType::Int(0),
                    OscType::Int(*time_factor),
                ],
            ),
            Request::Renew(bank) => (
                "/renew".to_owned(),
                bank.map(|b| OscType::String(b.address().into()))
                    .into_iter()
                    .collect(),
            ),
            Request::Other(address) => (address.clone(), vec![]),
        };
        encode(OscPacket::Message(OscMessage {
            addr: address,
            args,
        }))
    }

    /// The requests in one datagram (several if it is a bundle).
    ///
    /// # Errors
    /// Broken OSC, or a known address with arguments that do not fit it.
    pub fn decode(bytes: &[u8]) -> Result<Vec<Request>, ProtoError> {
        decode_messages(bytes)?
            .into_iter()
            .map(Request::from_message)
            .collect()
    }

    fn from_message(m: OscMessage) -> Result<Request, ProtoError> {
        let bad = |m: &OscMessage| Err(ProtoError::Arguments(m.addr.clone(), tags(&m.args)));
        match m.addr.as_str() {
            "/xinfo" | "/status" | "/xremote" if !m.args.is_empty() => bad(&m),
            "/xinfo" => Ok(Request::XInfo),
            "/status" => Ok(Request::Status),
            "/xremote" => Ok(Request::XRemote),
            "/meters" => {
                let Some(OscType::String(id)) = m.args.first() else {
                    return bad(&m);
                };
                let ints: Option<Vec<i32>> = m.args[1..].iter().map(|a| a.clone().int()).collect();
                let Some(ints) = ints.filter(|i| i.len() <= 3) else {
                    return bad(&m);
                };
                match MeterBank::parse(id) {
                    // The time factor is the third int; shorter forms carry only the
                    // bank's own parameters (none for banks 0 and 1).
                    Some(bank) => Ok(Request::Meters {
                        bank,
                        time_factor: ints.get(2).copied().unwrap_or(1),
                    }),
                    None => Ok(Request::Other(format!("/meters {id}"))),
                }
            }
            "/renew" => match m.args.as_slice() {
                [] => Ok(Request::Renew(None)),
                [OscType::String(id)] => Ok(MeterBank::parse(id).map_or_else(
                    || Request::Other(format!("/renew {id}")),
                    |b| Request::Renew(Some(b)),
                )),
                _ => bad(&m),
            },
            address => match Param::parse(address) {
                None => Ok(Request::Other(m.addr)),
                Some(p) if m.args.is_empty() => Ok(Request::Get(p)),
                Some(p) => param_value(p, &m).map(|v| Request::Set(p, v)),
            },
        }
    }
}

impl Reply {
    /// The datagram.
    pub fn encode(&self) -> Vec<u8> {
        let s = |s: &str| OscType::String(s.to_owned());
        let (address, args) = match self {
            Reply::XInfo(i) => (
                "/xinfo".to_owned(),
                vec![s(&i.ip), s(&i.name), s(&i.model), s(&i.version)],
            ),
            Reply::Status(st) => (
                "/status".to_owned(),
                vec![s(&st.state), s(&st.ip), s(&st.name)],
            ),
            Reply::Param(p, v) => (p.address(), vec![value_arg(v)]),
            Reply::Meters(bank, values) => (
                bank.address().to_owned(),
                vec![OscType::Blob(encode_meter_blob(values))],
            ),
            Reply::Other(address) => (address.clone(), vec![]),
        };
        encode(OscPacket::Message(OscMessage {
            addr: address,
            args,
        }))
    }

    /// The replies in one datagram (several if it is a bundle).
    ///
    /// # Errors
    /// Broken OSC, a known address with arguments that do not fit it, or a broken
    /// meter blob.
    pub fn decode(bytes: &[u8]) -> Result<Vec<Reply>, ProtoError> {
        decode_messages(bytes)?
            .into_iter()
            .map(Reply::from_message)
            .collect()
    }

    fn from_message(m: OscMessage) -> Result<Reply, ProtoError> {
        let strings: Option<Vec<&str>> = m
            .args
            .iter()
            .map(|a| match a {
                OscType::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let bad = || Err(ProtoError::Arguments(m.addr.clone(), tags(&m.args)));
        match (m.addr.as_str(), strings.as_deref()) {
            ("/xinfo", Some([ip, name, model, version, ..])) => Ok(Reply::XInfo(ConsoleInfo {
                ip: (*ip).into(),
                name: (*name).into(),
                model: (*model).into(),
                version: (*version).into(),
            })),
            ("/status", Some([state, ip, name, ..])) => Ok(Reply::Status(ConsoleStatus {
                state: (*state).into(),
                ip: (*ip).into(),
                name: (*name).into(),
            })),
            ("/xinfo" | "/status", _) => bad(),
            (address, _) => {
                if let Some(bank) = MeterBank::parse(address) {
                    return match m.args.as_slice() {
                        [OscType::Blob(blob)] => Ok(Reply::Meters(bank, decode_meter_blob(blob)?)),
                        _ => bad(),
                    };
                }
                match Param::parse(address) {
                    Some(p) => param_value(p, &m).map(|v| Reply::Param(p, v)),
                    None => Ok(Reply::Other(m.addr)),
                }
            }
        }
    }
}

/// A parameter's value from a message's one argument. Faders take a float, mutes an
/// int (a float is tolerated, as the console does), names a string.
fn param_value(p: Param, m: &OscMessage) -> Result<ParamValue, ProtoError> {
    let value_error = |why: String| Err(ProtoError::Value(m.addr.clone(), why));
    match (p, m.args.as_slice()) {
        (Param::Fader(_), [OscType::Float(f)]) if f.is_finite() => Ok(ParamValue::Fader(*f)),
        (Param::Fader(_), [OscType::Float(f)]) => value_error(format!("fader {f} is not finite")),
        (Param::On(_), [OscType::Int(i)]) => Ok(ParamValue::On(*i != 0)),
        (Param::On(_), [OscType::Float(f)]) if f.is_finite() => Ok(ParamValue::On(*f >= 0.5)),
        (Param::Name(_), [OscType::String(s)]) if s.chars().count() <= NAME_LEN => {
            Ok(ParamValue::Name(s.clone()))
        }
        (Param::Name(_), [OscType::String(s)]) => {
            value_error(format!("name {s:?} is longer than {NAME_LEN} characters"))
        }
        _ => Err(ProtoError::Arguments(m.addr.clone(), tags(&m.args))),
    }
}

fn value_arg(v: &ParamValue) -> OscType {
    match v {
        ParamValue::Fader(f) => OscType::Float(*f),
        ParamValue::On(on) => OscType::Int(i32::from(*on)),
        ParamValue::Name(s) => OscType::String(s.clone()),
    }
}

/// Whether `name` can be stored as a channel name: at most 12 printable ASCII
/// characters (an OSC string cannot carry a NUL).
pub fn valid_name(name: &str) -> bool {
    name.len() <= NAME_LEN && name.bytes().all(|b| (0x20..0x7F).contains(&b))
}

/// The OSC messages in one datagram, bundles flattened in order.
///
/// # Errors
/// Empty, oversized or broken OSC, trailing bytes, bundles nested deeper than
/// [`MAX_BUNDLE_DEPTH`] or more than [`MAX_MESSAGES`] messages.
pub fn decode_messages(bytes: &[u8]) -> Result<Vec<OscMessage>, ProtoError> {
    if bytes.is_empty() {
        return Err(ProtoError::Empty);
    }
    if bytes.len() > MAX_DATAGRAM {
        return Err(ProtoError::TooLong(bytes.len()));
    }
    if let Some(address) = bare_address(bytes) {
        return Ok(vec![OscMessage {
            addr: address,
            args: vec![],
        }]);
    }
    let (rest, packet) =
        rosc::decoder::decode_udp(bytes).map_err(|e| ProtoError::Osc(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Trailing(rest.len()));
    }
    let mut out = Vec::new();
    flatten(packet, 1, &mut out)?;
    Ok(out)
}

/// A message of an address alone, without even the `,` type tag string, as older OSC
/// senders write a get (`/xinfo\0\0`); `rosc` requires the type tags.
fn bare_address(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|b| *b == 0)?;
    let padded = (end / 4 + 1) * 4;
    let only = bytes.len() == padded && bytes[end..].iter().all(|b| *b == 0);
    (only && bytes[0] == b'/')
        .then(|| std::str::from_utf8(&bytes[..end]).ok().map(str::to_owned))
        .flatten()
}

fn flatten(packet: OscPacket, depth: usize, out: &mut Vec<OscMessage>) -> Result<(), ProtoError> {
    match packet {
        OscPacket::Message(_) if out.len() >= MAX_MESSAGES => Err(ProtoError::TooManyMessages),
        OscPacket::Message(m) => {
            out.push(m);
            Ok(())
        }
        OscPacket::Bundle(_) if depth > MAX_BUNDLE_DEPTH => Err(ProtoError::TooDeep),
        OscPacket::Bundle(b) => b
            .content
            .into_iter()
            .try_for_each(|p| flatten(p, depth + 1, out)),
    }
}

/// One bundle ("immediately") of `datagrams`, each a message or bundle this codec
/// encoded. For tests and senders that batch; the X32 itself does not bundle.
///
/// # Errors
/// A datagram that is not OSC.
pub fn encode_bundle(datagrams: &[Vec<u8>]) -> Result<Vec<u8>, ProtoError> {
    let content = datagrams
        .iter()
        .map(|d| rosc::decoder::decode_udp(d).map(|(_, p)| p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProtoError::Osc(e.to_string()))?;
    let timetag = OscTime {
        seconds: 0,
        fractional: 1,
    };
    Ok(encode(OscPacket::Bundle(OscBundle { timetag, content })))
}

fn encode(packet: OscPacket) -> Vec<u8> {
    // `rosc` encodes into a `Vec`, which cannot fail; an empty datagram (never sent:
    // the peer would drop it) is the answer if that ever changed.
    rosc::encoder::encode(&packet).unwrap_or_default()
}

/// The type tags of `args`, for error messages.
fn tags(args: &[OscType]) -> String {
    args.iter()
        .map(|a| match a {
            OscType::Int(_) => 'i',
            OscType::Float(_) => 'f',
            OscType::String(_) => 's',
            OscType::Blob(_) => 'b',
            OscType::Time(_) => 't',
            OscType::Long(_) => 'h',
            OscType::Double(_) => 'd',
            OscType::Char(_) => 'c',
            OscType::Color(_) => 'r',
            OscType::Midi(_) => 'm',
            OscType::Bool(true) => 'T',
            OscType::Bool(false) => 'F',
            OscType::Array(_) => '[',
            OscType::Nil => 'N',
            OscType::Inf => 'I',
        })
        .collect()
}

/// The X32 meter blob of `values`: little-endian int32 count, little-endian float32s.
pub fn encode_meter_blob(values: &[f32]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(4 + 4 * values.len());
    let count = i32::try_from(values.len()).unwrap_or(i32::MAX);
    blob.extend_from_slice(&count.to_le_bytes());
    for v in values {
        blob.extend_from_slice(&v.to_le_bytes());
    }
    blob
}

/// The values of an X32 meter blob.
///
/// # Errors
/// A blob too short for its count, with bytes left over, a negative count or one over
/// [`MAX_METER_VALUES`].
pub fn decode_meter_blob(blob: &[u8]) -> Result<Vec<f32>, BlobError> {
    let (head, body) = blob
        .split_first_chunk::<4>()
        .ok_or(BlobError::Short(blob.len()))?;
    let count = i32::from_le_bytes(*head);
    let declared = usize::try_from(count).map_err(|_| BlobError::Negative(count))?;
    if declared > MAX_METER_VALUES {
        return Err(BlobError::TooMany(declared));
    }
    let available = body.len() / 4;
    if available < declared {
        return Err(BlobError::Truncated {
            declared,
            available,
        });
    }
    if body.len() > declared * 4 {
        return Err(BlobError::Trailing(body.len() - declared * 4));
    }
    Ok(body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The fader law: position 0..1 to dB, four linear segments meeting at -60, -30 and
/// -10 dB (0.0625, 0.25, 0.5); 0.75 is 0 dB, 1 is +10 dB, 0 is `-oo` (the floor here).
pub fn fader_to_db(f: f32) -> f64 {
    let f = f64::from(f.clamp(0.0, 1.0));
    if f >= 0.5 {
        f * 40.0 - 30.0
    } else if f >= 0.25 {
        f * 80.0 - 50.0
    } else if f >= 0.0625 {
        f * 160.0 - 70.0
    } else {
        f * 480.0 - 90.0
    }
}

/// The inverse of [`fader_to_db`], clamped to -90..=+10 dB.
pub fn db_to_fader(db: f64) -> f32 {
    let db = if db.is_nan() { FADER_FLOOR_DB } else { db };
    let db = db.clamp(FADER_FLOOR_DB, FADER_MAX_DB);
    let f = if db >= -10.0 {
        (db + 30.0) / 40.0
    } else if db >= -30.0 {
        (db + 50.0) / 80.0
    } else if db >= -60.0 {
        (db + 70.0) / 160.0
    } else {
        (db + 90.0) / 480.0
    };
    f as f32
}

/// The fader position the console stores for `f`: clamped and on its 1024 steps.
pub fn quantize_fader(f: f32) -> f32 {
    let top = f32::from(FADER_STEPS - 1);
    let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
    (f * top).round() / top
}

/// A linear meter value (1.0 = 0 dBFS) in dBFS, within the meter's range; silence and
/// non-finite values are the floor.
pub fn meter_db(v: f32) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return METER_FLOOR_DB;
    }
    (20.0 * f64::from(v).log10()).clamp(METER_FLOOR_DB, METER_MAX_DB)
}

/// At most the first 48 bytes of a datagram, escaped, for a log line.
pub fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTE_LIMIT)];
    let mut s = shown.escape_ascii().to_string();
    if bytes.len() > QUOTE_LIMIT {
        s.push_str(&format!("…(+{} bytes)", bytes.len() - QUOTE_LIMIT));
    }
    s
}
