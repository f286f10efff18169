//! The SIS wire format, both ways: typed [`Command`]s and [`Response`]s, an incremental
//! command parser for the simulator ([`parse_command`]: SIS commands carry no
//! terminator, so "incomplete" is a normal answer), a line parser for the adapter
//! ([`parse_response`], [`ClientCodec`]: every response ends in CR LF, except the
//! `Password:` prompt), and `format_*` functions that produce the exact bytes.
//!
//! Nothing here panics on any input; every length is bounded by a named constant, and
//! every error says how many bytes to drop so that a caller always makes progress.
//! Sources and the reasoning behind each choice are in the [module doc](super).

use std::fmt::Write as _;

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use super::{OutputMutes, Plane, Role, SisError, Tie, TieKind, VerboseMode};

/// The escape byte that opens the long commands (`ESC 3CV CR`, `ESC +Q… CR`).
pub const ESC: u8 = 0x1B;
/// Longest command accepted, escape sequences included; a quick tie of 64 outputs
/// fits. Anything longer is answered E10, so a client that never terminates an escape
/// sequence cannot grow the simulator's buffer.
pub const MAX_COMMAND_LEN: usize = 512;
/// Digits in an input, output or value: the manuals allow "1-, 2-, and 3-digit numeric
/// entries".
pub const MAX_DIGITS: usize = 3;
/// Longest response line accepted; the longest real one (a view-mutes line of a
/// 128-output frame, or a banner with its date) is well under this.
pub const MAX_LINE_LEN: usize = 512;
/// Offending bytes kept (escaped) in a [`ProtoError`].
const ESCAPED_MAX: usize = 64;

/// A command from a controller to the switcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `in*out!|&|%|$`.
    Tie(Tie),
    /// `in*!|&|%|$`: tie one input to every output; input 0 clears every tie.
    TieAll { input: u16, kind: TieKind },
    /// `ESC +Q in*out! in*out% … CR`: several ties switched at once; answered `Qik`.
    QuickTie(Vec<Tie>),
    /// `out%` (or `out&`): the video input tied to an output.
    ReadVideoTie { output: u16 },
    /// `out$`: the audio input tied to an output.
    ReadAudioTie { output: u16 },
    /// `out*1B` / `out*0B`.
    VideoMute { output: u16, mute: bool },
    /// `out*1Z` / `out*0Z`.
    AudioMute { output: u16, mute: bool },
    /// `1*B` / `0*B`: every output.
    GlobalVideoMute(bool),
    /// `1*Z` / `0*Z`: every output.
    GlobalAudioMute(bool),
    /// `outB`.
    ReadVideoMute { output: u16 },
    /// `outZ`.
    ReadAudioMute { output: u16 },
    /// `ESC VM CR`: one digit per output.
    ReadMutes,
    /// `ESC n CV CR`.
    SetVerbose(VerboseMode),
    /// `ESC CV CR`.
    ReadVerbose,
    /// `I`: matrix size.
    Information,
    /// `Q`: firmware version; also the keepalive the manuals recommend.
    Firmware,
}

/// A line from the switcher to a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `(c) Copyright …`, sent on connect.
    Banner(String),
    /// `Password:` (no line end: the device waits on the same line).
    PasswordPrompt,
    /// `Login Administrator` / `Login User`.
    Login(Role),
    /// `OutNN InNN All|RGB|Vid|Aud`: a tie made, or a tagged tie query.
    Tie(Tie),
    /// `InNN All|RGB|Vid|Aud`: an input tied to every output.
    TieAll { input: u16, kind: TieKind },
    /// `Qik`: a quick tie, or (unsolicited) a front-panel switching operation.
    QuickTie,
    /// `VmtNN*m` (front panel: `VmtNN m`).
    VideoMute { output: u16, mute: bool },
    /// `AmtNN*m` (front panel: `AmtNN m`).
    AudioMute { output: u16, mute: bool },
    /// `Vmtm`: every output.
    GlobalVideoMute(bool),
    /// `Amtm`: every output.
    GlobalAudioMute(bool),
    /// `Mut0120…`: tagged view-mutes answer, one entry per output from output 1.
    Mutes(Vec<OutputMutes>),
    /// `Vrbn`.
    Verbose(VerboseMode),
    /// `Enn`.
    Error(SisError),
    /// Any other line, above all the bare answers to untagged queries (`03`, `1`,
    /// `1.23`, `V8X8 A8X8`, `0120…`), which only the question can interpret.
    Value(String),
}

/// Offending bytes for an error message: escaped, cut at 64 bytes.
fn escape(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(ESCAPED_MAX)];
    let ellipsis = if cut.len() < bytes.len() { "…" } else { "" };
    format!("{}{ellipsis}", cut.escape_ascii())
}

/// Why bytes could not be parsed; `consumed` bytes must be dropped before parsing on.
/// `bytes` holds the offending bytes, [escaped](std::ascii::escape_default).
#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("invalid SIS command `{bytes}`")]
    InvalidCommand { bytes: String, consumed: usize },
    #[error("value out of range in SIS command `{bytes}`")]
    InvalidValue { bytes: String, consumed: usize },
    #[error("SIS command longer than {MAX_COMMAND_LEN} bytes: `{bytes}`")]
    CommandTooLong { bytes: String, consumed: usize },
    #[error("SIS response line longer than {MAX_LINE_LEN} bytes: `{bytes}`")]
    LineTooLong { bytes: String, consumed: usize },
    #[error("SIS connection: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtoError {
    /// Bytes to drop from the front of the buffer that was parsed.
    pub fn consumed(&self) -> usize {
        match self {
            Self::InvalidCommand { consumed, .. }
            | Self::InvalidValue { consumed, .. }
            | Self::CommandTooLong { consumed, .. }
            | Self::LineTooLong { consumed, .. } => *consumed,
            Self::Io(_) => 0,
        }
    }

    /// The error the device answers with.
    pub fn code(&self) -> SisError {
        match self {
            Self::InvalidValue { .. } => SisError::InvalidValue,
            _ => SisError::InvalidCommand,
        }
    }
}

/// Bytes the device skips between commands: line ends (Telnet sends them after each
/// command), spaces and the NUL of Telnet's CR NUL.
pub fn is_filler(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b' ' | 0)
}

/// Filler bytes at the front of `buf`.
pub fn filler_len(buf: &[u8]) -> usize {
    buf.iter().take_while(|b| is_filler(**b)).count()
}

/// A parse failure inside one command, measured from the command's first byte.
enum Bad {
    Command(usize),
    Value(usize),
    TooLong(usize),
}

type Parsed = Result<Option<(Command, usize)>, Bad>;

/// Parses the first command in `buf`: `Ok(None)` while it is incomplete (or `buf`
/// holds only [filler](is_filler)); otherwise the command and the bytes it used,
/// leading filler included. An error carries the bytes to drop and the device's code.
pub fn parse_command(buf: &[u8]) -> Result<Option<(Command, usize)>, ProtoError> {
    let start = filler_len(buf);
    let rest = &buf[start..];
    let Some(&first) = rest.first() else {
        return Ok(None);
    };
    let parsed = if first == ESC {
        parse_escape(rest)
    } else {
        parse_simple(rest)
    };
    let at = |n: usize| (escape(&rest[..n.min(rest.len())]), start + n);
    match parsed {
        Ok(Some((command, n))) => Ok(Some((command, start + n))),
        Ok(None) => Ok(None),
        Err(Bad::Command(n)) => {
            let (bytes, consumed) = at(n);
            Err(ProtoError::InvalidCommand { bytes, consumed })
        }
        Err(Bad::Value(n)) => {
            let (bytes, consumed) = at(n);
            Err(ProtoError::InvalidValue { bytes, consumed })
        }
        Err(Bad::TooLong(n)) => {
            let (bytes, consumed) = at(n);
            Err(ProtoError::CommandTooLong { bytes, consumed })
        }
    }
}

/// Digits from `at`: `Ok(None)` if the buffer ends inside them, else the value (None
/// when there are no digits) and the index of the first non-digit.
fn digits(b: &[u8], at: usize) -> Result<Option<(Option<u16>, usize)>, Bad> {
    let mut value = 0u16;
    let mut i = at;
    while let Some(&c) = b.get(i) {
        if !c.is_ascii_digit() {
            return Ok(Some(((i > at).then_some(value), i)));
        }
        if i - at == MAX_DIGITS {
            return Err(Bad::Command(i + 1));
        }
        value = value * 10 + u16::from(c - b'0');
        i += 1;
    }
    Ok(None)
}

/// An error ending at byte `n`, leaving an interrupting ESC for the next command.
fn bad_at(b: &[u8], n: usize) -> Bad {
    if n > 1 && b.get(n - 1) == Some(&ESC) {
        Bad::Command(n - 1)
    } else {
        Bad::Command(n)
    }
}

fn flag(value: u16, n: usize) -> Result<bool, Bad> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Bad::Value(n)),
    }
}

/// The commands without a terminator: `I`, `Q`, ties, tie reads and mutes.
fn parse_simple(b: &[u8]) -> Parsed {
    match b.first() {
        Some(b'I' | b'i') => return Ok(Some((Command::Information, 1))),
        Some(b'Q' | b'q') => return Ok(Some((Command::Firmware, 1))),
        Some(c) if c.is_ascii_digit() => {}
        _ => return Err(Bad::Command(1)),
    }
    let Some((first, i)) = digits(b, 0)? else {
        return Ok(None);
    };
    let (Some(a), Some(&c)) = (first, b.get(i)) else {
        return Err(Bad::Command(1));
    };
    if c != b'*' {
        let output = a;
        let command = match c.to_ascii_uppercase() {
            b'%' | b'&' => Command::ReadVideoTie { output },
            b'$' => Command::ReadAudioTie { output },
            b'B' => Command::ReadVideoMute { output },
            b'Z' => Command::ReadAudioMute { output },
            _ => return Err(bad_at(b, i + 1)),
        };
        return Ok(Some((command, i + 1)));
    }
    let Some((second, j)) = digits(b, i + 1)? else {
        return Ok(None);
    };
    let Some(&d) = b.get(j) else {
        return Ok(None);
    };
    let n = j + 1;
    let command = match (second, TieKind::from_symbol(d), d.to_ascii_uppercase()) {
        (Some(output), Some(kind), _) => Command::Tie(Tie::new(a, output, kind)),
        (None, Some(kind), _) => Command::TieAll { input: a, kind },
        (Some(m), None, b'B') => Command::VideoMute {
            output: a,
            mute: flag(m, n)?,
        },
        (Some(m), None, b'Z') => Command::AudioMute {
            output: a,
            mute: flag(m, n)?,
        },
        (None, None, b'B') => Command::GlobalVideoMute(flag(a, n)?),
        (None, None, b'Z') => Command::GlobalAudioMute(flag(a, n)?),
        _ => return Err(bad_at(b, n)),
    };
    Ok(Some((command, n)))
}

/// `ESC body CR` (LF accepted too: Telnet clients send a bare LF for Enter).
fn parse_escape(b: &[u8]) -> Parsed {
    let window = &b[1..b.len().min(MAX_COMMAND_LEN)];
    let Some(k) = window
        .iter()
        .position(|c| matches!(*c, b'\r' | b'\n' | ESC))
    else {
        return if b.len() >= MAX_COMMAND_LEN {
            Err(Bad::TooLong(MAX_COMMAND_LEN))
        } else {
            Ok(None)
        };
    };
    let end = 1 + k;
    if b[end] == ESC {
        // A new escape sequence aborts this one; it is parsed next.
        return Err(Bad::Command(end));
    }
    let body = &b[1..end];
    let n = end + 1;
    let command = parse_escape_body(body).map_err(|bad| match bad {
        Bad::Value(_) => Bad::Value(n),
        _ => Bad::Command(n),
    })?;
    Ok(Some((command, n)))
}

/// A whole number of 1–3 digits.
fn number(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > MAX_DIGITS || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u16, |v, c| v * 10 + u16::from(c - b'0')))
}

fn strip_suffix_ci<'a>(s: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    let cut = s.len().checked_sub(suffix.len())?;
    s[cut..].eq_ignore_ascii_case(suffix).then_some(&s[..cut])
}

fn parse_escape_body(body: &[u8]) -> Result<Command, Bad> {
    if body.len() >= 2 && body[0] == b'+' && body[1].eq_ignore_ascii_case(&b'Q') {
        return parse_quick_ties(&body[2..]).map(Command::QuickTie);
    }
    if body.eq_ignore_ascii_case(b"VM") {
        return Ok(Command::ReadMutes);
    }
    if body.eq_ignore_ascii_case(b"CV") {
        return Ok(Command::ReadVerbose);
    }
    if let Some(n) = strip_suffix_ci(body, b"CV") {
        let n = number(n).ok_or(Bad::Command(0))?;
        return VerboseMode::from_number(n)
            .map(Command::SetVerbose)
            .ok_or(Bad::Value(0));
    }
    Err(Bad::Command(0))
}

fn parse_quick_ties(mut rest: &[u8]) -> Result<Vec<Tie>, Bad> {
    let mut ties = Vec::new();
    while !rest.is_empty() {
        let star = rest
            .iter()
            .position(|c| *c == b'*')
            .ok_or(Bad::Command(0))?;
        let input = number(&rest[..star]).ok_or(Bad::Command(0))?;
        let after = &rest[star + 1..];
        let end = after
            .iter()
            .position(|c| TieKind::from_symbol(*c).is_some())
            .ok_or(Bad::Command(0))?;
        let output = number(&after[..end]).ok_or(Bad::Command(0))?;
        let kind = TieKind::from_symbol(after[end]).ok_or(Bad::Command(0))?;
        ties.push(Tie::new(input, output, kind));
        rest = &after[end + 1..];
    }
    if ties.is_empty() {
        return Err(Bad::Command(0));
    }
    Ok(ties)
}

/// Parses the first response line in `buf`: `Ok(None)` until a line end arrives. Blank
/// lines in front are skipped and counted in the bytes used. The `Password:` prompt is
/// recognised without a line end, as the device sends it.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, ProtoError> {
    let start = buf
        .iter()
        .take_while(|b| matches!(**b, b'\r' | b'\n'))
        .count();
    let rest = &buf[start..];
    const PROMPT: &[u8] = b"Password:";
    if rest.starts_with(PROMPT) {
        return Ok(Some((Response::PasswordPrompt, start + PROMPT.len())));
    }
    let window = &rest[..rest.len().min(MAX_LINE_LEN + 1)];
    match window.iter().position(|c| matches!(*c, b'\r' | b'\n')) {
        Some(k) => {
            let crlf = rest[k] == b'\r' && rest.get(k + 1) == Some(&b'\n');
            let n = k + 1 + usize::from(crlf);
            Ok(Some((parse_line(&rest[..k]), start + n)))
        }
        None if rest.len() > MAX_LINE_LEN => Err(ProtoError::LineTooLong {
            bytes: escape(rest),
            consumed: buf.len(),
        }),
        None => Ok(None),
    }
}

/// Interprets one line without its line end; anything unknown is a [`Response::Value`].
pub fn parse_line(line: &[u8]) -> Response {
    let text = String::from_utf8_lossy(line);
    let t = text.trim();
    let known = match t {
        "Password:" => Some(Response::PasswordPrompt),
        "Login Administrator" => Some(Response::Login(Role::Administrator)),
        "Login User" => Some(Response::Login(Role::User)),
        "Qik" => Some(Response::QuickTie),
        _ if t.starts_with("(c)") || t.starts_with("(C)") => Some(Response::Banner(t.into())),
        _ => parse_error(t)
            .or_else(|| parse_tie(t))
            .or_else(|| parse_mute(t))
            .or_else(|| parse_verbose(t))
            .or_else(|| parse_mutes(t)),
    };
    known.unwrap_or_else(|| Response::Value(t.into()))
}

fn all_digits(s: &str) -> Option<u16> {
    number(s.as_bytes())
}

fn parse_error(t: &str) -> Option<Response> {
    let code = t.strip_prefix('E').filter(|c| c.len() == 2)?;
    Some(Response::Error(SisError::from_code(
        u8::try_from(all_digits(code)?).ok()?,
    )))
}

/// Splits leading digits off `s` (1–3 of them).
fn lead_number(s: &str) -> Option<(u16, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((all_digits(&s[..end])?, &s[end..]))
}

fn parse_tie(t: &str) -> Option<Response> {
    if let Some(rest) = t.strip_prefix("Out") {
        let (output, rest) = lead_number(rest)?;
        let (input, rest) = lead_number(rest.trim_start().strip_prefix("In")?)?;
        let kind = TieKind::from_tag(rest.trim())?;
        return Some(Response::Tie(Tie::new(input, output, kind)));
    }
    let (input, rest) = lead_number(t.strip_prefix("In")?)?;
    let kind = TieKind::from_tag(rest.trim())?;
    Some(Response::TieAll { input, kind })
}

fn parse_mute(t: &str) -> Option<Response> {
    let (video, rest) = match t.get(..3)? {
        "Vmt" => (true, &t[3..]),
        "Amt" => (false, &t[3..]),
        _ => return None,
    };
    // Global: one digit. Per output: `NN*m` (command response) or `NN m` (front panel).
    if let Some(m) = all_digits(rest).filter(|_| rest.len() == 1) {
        let mute = m != 0;
        return Some(if video {
            Response::GlobalVideoMute(mute)
        } else {
            Response::GlobalAudioMute(mute)
        });
    }
    let (output, rest) = lead_number(rest)?;
    let value = rest.strip_prefix(['*', ' '])?;
    // XTP frames report audio mute modes 2 and 3; any non-zero value is muted.
    let mute = all_digits(value)? != 0;
    Some(if video {
        Response::VideoMute { output, mute }
    } else {
        Response::AudioMute { output, mute }
    })
}

fn parse_verbose(t: &str) -> Option<Response> {
    let n = all_digits(t.strip_prefix("Vrb")?)?;
    VerboseMode::from_number(n).map(Response::Verbose)
}

fn parse_mutes(t: &str) -> Option<Response> {
    // CrossPoint puts the tag in front, MVX behind.
    let digits = t.strip_prefix("Mut").or_else(|| t.strip_suffix("Mut"))?;
    let mutes: Option<Vec<_>> = digits.bytes().map(OutputMutes::from_digit).collect();
    mutes.filter(|m| !m.is_empty()).map(Response::Mutes)
}

/// Appends the exact bytes of `command`.
pub fn format_command(command: &Command, out: &mut BytesMut) {
    // Writing to a BytesMut cannot fail: it grows.
    let _ = match command {
        Command::Tie(t) => write!(out, "{}*{}{}", t.input, t.output, t.kind.symbol()),
        Command::TieAll { input, kind } => write!(out, "{input}*{}", kind.symbol()),
        Command::QuickTie(ties) => {
            out.put_slice(b"\x1B+Q");
            for t in ties {
                let _ = write!(out, "{}*{}{}", t.input, t.output, t.kind.symbol());
            }
            out.put_u8(b'\r');
            Ok(())
        }
        Command::ReadVideoTie { output } => write!(out, "{output}%"),
        Command::ReadAudioTie { output } => write!(out, "{output}$"),
        Command::VideoMute { output, mute } => write!(out, "{output}*{}B", u8::from(*mute)),
        Command::AudioMute { output, mute } => write!(out, "{output}*{}Z", u8::from(*mute)),
        Command::GlobalVideoMute(mute) => write!(out, "{}*B", u8::from(*mute)),
        Command::GlobalAudioMute(mute) => write!(out, "{}*Z", u8::from(*mute)),
        Command::ReadVideoMute { output } => write!(out, "{output}B"),
        Command::ReadAudioMute { output } => write!(out, "{output}Z"),
        Command::ReadMutes => write!(out, "\x1BVM\r"),
        Command::SetVerbose(mode) => write!(out, "\x1B{}CV\r", mode.number()),
        Command::ReadVerbose => write!(out, "\x1BCV\r"),
        Command::Information => write!(out, "I"),
        Command::Firmware => write!(out, "Q"),
    };
}

/// Appends text with any CR or LF removed, so it cannot break the framing.
fn put_text(out: &mut BytesMut, text: &str) {
    out.extend(text.bytes().filter(|b| !matches!(b, b'\r' | b'\n')));
}

/// Appends the exact bytes of `response`, line end included (none after the prompt).
pub fn format_response(response: &Response, out: &mut BytesMut) {
    let _ = match response {
        Response::Banner(text) | Response::Value(text) => {
            put_text(out, text);
            Ok(())
        }
        Response::PasswordPrompt => {
            out.put_slice(b"\r\nPassword:");
            return;
        }
        Response::Login(Role::Administrator) => write!(out, "\r\nLogin Administrator"),
        Response::Login(Role::User) => write!(out, "\r\nLogin User"),
        Response::Tie(t) => write!(out, "Out{:02} In{:02} {}", t.output, t.input, t.kind.tag()),
        Response::TieAll { input, kind } => write!(out, "In{input:02} {}", kind.tag()),
        Response::QuickTie => write!(out, "Qik"),
        Response::VideoMute { output, mute } => write!(out, "Vmt{output:02}*{}", u8::from(*mute)),
        Response::AudioMute { output, mute } => write!(out, "Amt{output:02}*{}", u8::from(*mute)),
        Response::GlobalVideoMute(mute) => write!(out, "Vmt{}", u8::from(*mute)),
        Response::GlobalAudioMute(mute) => write!(out, "Amt{}", u8::from(*mute)),
        Response::Mutes(mutes) => {
            out.put_slice(b"Mut");
            mutes.iter().for_each(|m| out.put_u8(m.digit()));
            Ok(())
        }
        Response::Verbose(mode) => write!(out, "Vrb{}", mode.number()),
        Response::Error(e) => write!(out, "E{:02}", e.code()),
    };
    out.put_slice(b"\r\n");
}

/// Appends the front-panel form of a mute notice, `VmtNN m` / `AmtNN m` (a space where
/// the command response has `*`), as the CrossPoint manuals list it.
pub fn format_panel_mute(plane: Plane, output: u16, mute: bool, out: &mut BytesMut) {
    let tag = match plane {
        Plane::Video => "Vmt",
        Plane::Audio => "Amt",
    };
    let _ = write!(out, "{tag}{output:02} {}\r\n", u8::from(mute));
}

/// The adapter's side of a connection for `tokio_util`'s `Framed`: decodes response
/// lines, encodes commands. A decode error (only a line over [`MAX_LINE_LEN`], or I/O)
/// ends a `Framed` stream; reconnect.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

impl Decoder for ClientCodec {
    type Item = Response;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Response>, ProtoError> {
        match parse_response(src) {
            Ok(Some((response, n))) => {
                src.advance(n);
                Ok(Some(response))
            }
            Ok(None) => {
                // Blank line ends ahead of an incomplete line are dropped now, so they
                // cannot pile up.
                let blank = src
                    .iter()
                    .take_while(|b| matches!(**b, b'\r' | b'\n'))
                    .count();
                src.advance(blank);
                Ok(None)
            }
            Err(e) => {
                src.advance(e.consumed().min(src.len()));
                Err(e)
            }
        }
    }
}

impl Encoder<Command> for ClientCodec {
    type Error = ProtoError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), ProtoError> {
        format_command(&command, dst);
        Ok(())
    }
}
