//! The PJLink wire codec: every byte the simulator and the adapter exchange.
//!
//! A line is parsed with [`parse_line`] (without its CR) into a [`Message`], in either
//! direction, and written with [`format_line`] or [`write_line`] (with its CR). Values
//! inside replies have typed helpers ([`PowerState`], [`InputCode`], [`AvMute`],
//! [`ErrorStatus`], [`Lamp`], [`MacAddress`], [`Notification`]). Malformed input is a
//! [`ProtoError`]: its [`ErrorKind`] and the offending bytes, escaped. Nothing here
//! panics on any input, and [`next_line`] bounds what an unterminated line may buffer.
//! The sources are listed in [`crate::devices::pjlink`].

use std::fmt;

use bytes::{Bytes, BytesMut};
use md5::{Digest as _, Md5};

mod values;
pub use values::{
    format_lamps, parse_lamps, AvMute, AvMuteSet, ErrorStatus, InputCode, Lamp, MacAddress,
    Notification,
};

/// TCP (control) and UDP (search, notifications) port of every PJLink device.
pub const DEFAULT_PORT: u16 = 4352;
/// The line terminator in both directions.
pub const CR: u8 = b'\r';
/// Longest command or response line, CR included: `%`, class, body (4), separator,
/// parameter (≤ 128), CR.
pub const MAX_LINE: usize = 136;
/// Longest parameter or reply value.
pub const MAX_PARAM: usize = 128;
/// Length of the MD5 digest (hex) in front of the first command when authenticating.
pub const DIGEST_LEN: usize = 32;
/// Longest line a reader must buffer: the first command may carry the digest in front.
pub const MAX_FIRST_LINE: usize = DIGEST_LEN + MAX_LINE;
/// Highest lamp hour count the spec's five digits carry.
pub const MAX_LAMP_HOURS: u32 = 99_999;
/// Most lamps a `LAMP ?` reply lists.
pub const MAX_LAMPS: usize = 8;

/// Bytes quoted and escaped for an error message: at most [`Escaped::SHOWN`] of them,
/// then a count, so errors stay small whatever a peer sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escaped(String);

impl Escaped {
    /// Bytes shown before the rest is only counted.
    pub const SHOWN: usize = 64;

    /// Escapes `bytes` (`\r`, `\x00`, …) in quotes.
    pub fn new(bytes: &[u8]) -> Escaped {
        let shown = &bytes[..bytes.len().min(Self::SHOWN)];
        let mut s: String = shown.escape_ascii().to_string();
        s.insert(0, '"');
        s.push('"');
        if bytes.len() > shown.len() {
            s.push_str(&format!(" (+{} bytes)", bytes.len() - shown.len()));
        }
        Escaped(s)
    }
}

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What was wrong with a line or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// Longer than the spec allows, or than a reader buffers without a CR.
    #[error("longer than PJLink allows")]
    TooLong,
    #[error("empty line")]
    Empty,
    /// CR, LF, NUL or another control byte inside the line.
    #[error("control byte {byte:#04x} at offset {at}")]
    ControlByte { byte: u8, at: usize },
    #[error("no `%` or `PJLINK` at the start")]
    MissingHeader,
    #[error("class is not 1 or 2")]
    BadClass,
    #[error("command body is not 4 upper-case letters or digits")]
    BadBody,
    #[error("neither ` ` nor `=` after the command body")]
    BadSeparator,
    #[error("command without a parameter")]
    MissingParameter,
    #[error("parameter longer than {MAX_PARAM} bytes")]
    ParameterTooLong,
    #[error("parameter is not UTF-8")]
    NotUtf8,
    /// Not 32 hex digits directly followed by a command.
    #[error("malformed authentication digest")]
    BadDigest,
    /// Not `PJLINK 0`, `PJLINK 1 <8 hex digits>` or `PJLINK ERRA`.
    #[error("malformed greeting")]
    BadGreeting,
    /// A value that does not fit the typed helper reading it.
    #[error("invalid {0}")]
    BadValue(&'static str),
}

/// Why a line or value is not PJLink: the kind, and the offending bytes escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {line}")]
pub struct ProtoError {
    pub kind: ErrorKind,
    pub line: Escaped,
}

impl ProtoError {
    fn new(kind: ErrorKind, line: &[u8]) -> ProtoError {
        let line = Escaped::new(line);
        ProtoError { kind, line }
    }
}

fn bad(what: &'static str, value: &str) -> ProtoError {
    ProtoError::new(ErrorKind::BadValue(what), value.as_bytes())
}

fn no_control_bytes(bytes: &[u8]) -> Result<(), ProtoError> {
    match bytes.iter().position(|&b| b < 0x20 || b == 0x7f) {
        None => Ok(()),
        Some(at) => {
            let kind = ErrorKind::ControlByte {
                byte: bytes[at],
                at,
            };
            Err(ProtoError::new(kind, bytes))
        }
    }
}

/// Lowercase hex MD5 of `random` followed by `password`: the authentication digest.
pub fn auth_digest(random: &str, password: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(random.as_bytes());
    md5.update(password.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Enums that are one code on the wire, with `as_str` and `parse`.
macro_rules! codes {
    ($(#[$m:meta])* $name:ident, $what:literal {
        $($(#[$vm:meta])* $variant:ident = $code:literal,)*
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant,)* }

        impl $name {
            #[doc = concat!("The code on the wire.")]
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $code,)* }
            }

            #[doc = concat!("Reads the code of a ", $what, ".")]
            pub fn parse(value: &str) -> Result<$name, ProtoError> {
                match value { $($code => Ok($name::$variant),)* _ => Err(bad($what, value)) }
            }
        }
    };
}

codes!(
    /// The class a command is sent under: `%1` or `%2`.
    Class, "class" { One = "1", Two = "2", }
);

codes!(
    /// The device's error replies.
    ErrorCode, "error code" {
        /// `ERR1`: undefined command.
        Undefined = "ERR1",
        /// `ERR2`: out of parameter.
        OutOfParameter = "ERR2",
        /// `ERR3`: unavailable time (standby, warm-up, cool-down).
        UnavailableTime = "ERR3",
        /// `ERR4`: projector/display failure.
        Failure = "ERR4",
    }
);

codes!(
    /// `POWR ?`.
    PowerState, "power state" { Standby = "0", On = "1", Cooling = "2", WarmUp = "3", }
);

codes!(
    /// The first character of an input code.
    InputKind, "input kind" {
        Rgb = "1", Video = "2", Digital = "3", Storage = "4", Network = "5",
        /// Class 2 only.
        Internal = "6",
    }
);

codes!(
    /// One `ERST` digit.
    #[derive(Default)]
    ErrorLevel, "error level" {
        /// No error known.
        #[default]
        Ok = "0",
        Warning = "1",
        Error = "2",
    }
);

codes!(
    /// What an `AVMT` set command mutes.
    MuteTarget, "mute target" { Video = "1", Audio = "2", Both = "3", }
);

/// A command body: four upper-case ASCII letters or digits (`POWR`, `INF1`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Body([u8; 4]);

macro_rules! bodies {
    ($($name:ident),* $(,)?) => {
        $(#[doc = concat!("`", stringify!($name), "`")]
        pub const $name: Body = Body(*stringify!($name).as_bytes().first_chunk::<4>().unwrap());)*
    };
}

impl Body {
    bodies!(
        POWR, INPT, AVMT, ERST, LAMP, INST, NAME, INF1, INF2, INFO, CLSS, SNUM, SVER, INNM, IRES,
        RRES, FILT, RLMP, RFIL, SVOL, MVOL, FREZ, SRCH, ACKN, LKUP,
    );

    /// Validates a body.
    pub fn new(bytes: &[u8]) -> Result<Body, ProtoError> {
        match <[u8; 4]>::try_from(bytes) {
            Ok(b)
                if b.iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) =>
            {
                Ok(Body(b))
            }
            _ => Err(ProtoError::new(ErrorKind::BadBody, bytes)),
        }
    }

    /// The four letters.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parameter or reply value: at most 128 bytes of UTF-8 without control bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    /// Validates a value.
    pub fn new(value: impl Into<String>) -> Result<Text, ProtoError> {
        let value = value.into();
        if value.len() > MAX_PARAM {
            return Err(ProtoError::new(
                ErrorKind::ParameterTooLong,
                value.as_bytes(),
            ));
        }
        no_control_bytes(value.as_bytes())?;
        Ok(Text(value))
    }

    /// The value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A command from controller to device: `%<class><body> <param>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub class: Class,
    pub body: Body,
    pub param: Text,
}

impl Command {
    /// A command with a validated, non-empty parameter.
    pub fn new(class: Class, body: Body, param: &str) -> Result<Command, ProtoError> {
        if param.is_empty() {
            return Err(ProtoError::new(ErrorKind::MissingParameter, &body.0));
        }
        let param = Text::new(param)?;
        Ok(Command { class, body, param })
    }

    /// `%<class><body> ?`.
    pub fn query(class: Class, body: Body) -> Command {
        let param = Text("?".into());
        Command { class, body, param }
    }

    /// Whether the parameter is `?`.
    pub fn is_query(&self) -> bool {
        self.param.as_str() == "?"
    }
}

/// What follows `=` in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK`: a set command succeeded.
    Ok,
    /// `ERR1`..`ERR4`.
    Error(ErrorCode),
    /// Anything else: a query's answer (possibly empty).
    Value(Text),
}

/// A response from device to controller: `%<class><body>=<reply>`. Class 2 status
/// notifications have the same form (see [`Notification`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub class: Class,
    pub body: Body,
    pub reply: Reply,
}

impl Response {
    /// The response to `command`.
    pub fn to(command: &Command, reply: Reply) -> Response {
        let (class, body) = (command.class, command.body);
        Response { class, body, reply }
    }

    /// The value of a [`Reply::Value`].
    pub fn value(&self) -> Option<&str> {
        match &self.reply {
            Reply::Value(v) => Some(v.as_str()),
            _ => None,
        }
    }
}

fn hex(value: &str, len: usize) -> bool {
    value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The 8 hex digits a device challenges a controller with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRandom(String);

impl AuthRandom {
    /// Validates 8 hex digits.
    pub fn new(random: &str) -> Result<AuthRandom, ProtoError> {
        match hex(random, 8) {
            true => Ok(AuthRandom(random.to_owned())),
            false => Err(bad("authentication random", random)),
        }
    }

    /// A fresh challenge.
    pub fn generate() -> AuthRandom {
        AuthRandom(format!("{:08x}", fastrand::u32(..)))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The 32 hex digits a controller puts in front of its first command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthDigest(String);

impl AuthDigest {
    /// Validates 32 hex digits.
    pub fn new(digest: &str) -> Result<AuthDigest, ProtoError> {
        match hex(digest, DIGEST_LEN) {
            true => Ok(AuthDigest(digest.to_owned())),
            false => Err(ProtoError::new(ErrorKind::BadDigest, digest.as_bytes())),
        }
    }

    /// The digest for `random` and `password` ([`auth_digest`]).
    pub fn compute(random: &AuthRandom, password: &str) -> AuthDigest {
        AuthDigest(auth_digest(random.as_str(), password))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the digest of `random` and `password` (hex case ignored).
    pub fn matches(&self, random: &AuthRandom, password: &str) -> bool {
        self.0
            .eq_ignore_ascii_case(&auth_digest(random.as_str(), password))
    }
}

/// What a device sends first on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// `PJLINK 0`: no authentication.
    Open,
    /// `PJLINK 1 <random>`: the first command must carry the digest.
    Challenge(AuthRandom),
}

/// One PJLink line, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Device → controller on connect.
    Greeting(Greeting),
    /// Device → controller: `PJLINK ERRA`, the digest was wrong.
    AuthError,
    /// Controller → device; the digest only in front of the first command.
    Command {
        digest: Option<AuthDigest>,
        command: Command,
    },
    /// Device → controller (and class 2 notifications, by UDP).
    Response(Response),
    /// Controller → devices, UDP broadcast: `%2SRCH`.
    Search,
}

/// Parses one line without its CR.
pub fn parse_line(line: &[u8]) -> Result<Message, ProtoError> {
    let fail = |kind| ProtoError::new(kind, line);
    if line.len() >= MAX_FIRST_LINE {
        return Err(fail(ErrorKind::TooLong));
    }
    if line.is_empty() {
        return Err(fail(ErrorKind::Empty));
    }
    no_control_bytes(line)?;
    if let Some(rest) = line.strip_prefix(b"PJLINK ") {
        return match rest {
            b"0" => Ok(Message::Greeting(Greeting::Open)),
            b"ERRA" => Ok(Message::AuthError),
            [b'1', b' ', random @ ..] => match AuthRandom::new(&String::from_utf8_lossy(random)) {
                Ok(random) => Ok(Message::Greeting(Greeting::Challenge(random))),
                Err(_) => Err(fail(ErrorKind::BadGreeting)),
            },
            _ => Err(fail(ErrorKind::BadGreeting)),
        };
    }
    let (digest, rest) = match line.split_at_checked(DIGEST_LEN) {
        _ if line[0] == b'%' => (None, line),
        Some((digest, rest)) if digest.iter().all(u8::is_ascii_hexdigit) => {
            if rest.first() != Some(&b'%') {
                return Err(fail(ErrorKind::BadDigest));
            }
            (
                Some(AuthDigest::new(&String::from_utf8_lossy(digest))?),
                rest,
            )
        }
        _ => return Err(fail(ErrorKind::MissingHeader)),
    };
    if rest.len() >= MAX_LINE {
        return Err(fail(ErrorKind::TooLong));
    }
    let Some((header, param)) = rest.split_at_checked(6) else {
        return Err(fail(ErrorKind::BadBody));
    };
    let Ok(class) = Class::parse(&String::from_utf8_lossy(&header[1..2])) else {
        return Err(fail(ErrorKind::BadClass));
    };
    let Ok(body) = Body::new(&header[2..]) else {
        return Err(fail(ErrorKind::BadBody));
    };
    let Some((&separator, param)) = param.split_first() else {
        return match (class, body, digest) {
            (Class::Two, Body::SRCH, None) => Ok(Message::Search),
            _ => Err(fail(ErrorKind::MissingParameter)),
        };
    };
    let text = || match std::str::from_utf8(param) {
        Ok(param) => Text::new(param),
        Err(_) => Err(fail(ErrorKind::NotUtf8)),
    };
    match separator {
        b' ' if param.is_empty() => Err(fail(ErrorKind::MissingParameter)),
        b' ' => Ok(Message::Command {
            digest,
            command: Command {
                class,
                body,
                param: text()?,
            },
        }),
        b'=' if digest.is_some() => Err(fail(ErrorKind::BadDigest)),
        b'=' => {
            let value = text()?;
            let reply = match value.as_str() {
                "OK" => Reply::Ok,
                v => ErrorCode::parse(v).map_or(Reply::Value(value), Reply::Error),
            };
            Ok(Message::Response(Response { class, body, reply }))
        }
        _ => Err(fail(ErrorKind::BadSeparator)),
    }
}

/// Appends `message` and its CR to `out` (to batch several lines into one write).
pub fn write_line(message: &Message, out: &mut Vec<u8>) {
    let mut push = |parts: &[&[u8]]| parts.iter().for_each(|p| out.extend_from_slice(p));
    match message {
        Message::Greeting(Greeting::Open) => push(&[b"PJLINK 0"]),
        Message::Greeting(Greeting::Challenge(r)) => push(&[b"PJLINK 1 ", r.as_str().as_bytes()]),
        Message::AuthError => push(&[b"PJLINK ERRA"]),
        Message::Command { digest, command: c } => {
            let digest = digest.as_ref().map_or("", AuthDigest::as_str).as_bytes();
            let class = c.class.as_str().as_bytes();
            push(&[
                digest,
                b"%",
                class,
                &c.body.0,
                b" ",
                c.param.as_str().as_bytes(),
            ]);
        }
        Message::Response(r) => {
            let reply = match &r.reply {
                Reply::Ok => "OK",
                Reply::Error(code) => code.as_str(),
                Reply::Value(value) => value.as_str(),
            };
            push(&[
                b"%",
                r.class.as_str().as_bytes(),
                &r.body.0,
                b"=",
                reply.as_bytes(),
            ]);
        }
        Message::Search => push(&[b"%2SRCH"]),
    }
    out.push(CR);
}

/// `message` as the exact bytes on the wire, CR included.
pub fn format_line(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_LINE);
    write_line(message, &mut out);
    out
}

/// Splits the next CR-terminated line (without its CR) off `buf`. `Ok(None)`: no
/// complete line yet. An error once [`MAX_FIRST_LINE`] bytes came without a CR: the
/// peer is not speaking PJLink, and the caller should drop it.
pub fn next_line(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtoError> {
    let window = &buf[..buf.len().min(MAX_FIRST_LINE)];
    match window.iter().position(|&b| b == CR) {
        Some(at) => {
            let mut line = buf.split_to(at + 1);
            line.truncate(at);
            Ok(Some(line.freeze()))
        }
        None if buf.len() >= MAX_FIRST_LINE => Err(ProtoError::new(ErrorKind::TooLong, buf)),
        None => Ok(None),
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
