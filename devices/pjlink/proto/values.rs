//! The typed values inside PJLink replies and notifications: input codes, AV mute,
//! error status, lamps, MAC addresses and class 2 notifications. Re-exported by
//! [`super`], where they are documented as part of the codec.

use std::fmt;

use super::{
    bad, hex, Body, Class, ErrorLevel, InputKind, MuteTarget, PowerState, ProtoError, Reply,
    Response, Text, MAX_LAMPS, MAX_LAMP_HOURS,
};

/// An input: kind (1..6) and number (1..9, on class 2 also A..Z), e.g. `31`, `3A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputCode {
    kind: InputKind,
    number: u8,
}

impl InputCode {
    /// Reads a two-character code.
    pub fn parse(code: &str) -> Result<InputCode, ProtoError> {
        match code.as_bytes() {
            &[_, number] if matches!(number, b'1'..=b'9' | b'A'..=b'Z') => {
                let kind = InputKind::parse(&code[..1]).map_err(|_| bad("input code", code))?;
                Ok(InputCode { kind, number })
            }
            _ => Err(bad("input code", code)),
        }
    }

    /// The kind.
    pub fn kind(self) -> InputKind {
        self.kind
    }

    /// The number, `'1'`..`'9'` or `'A'`..`'Z'`.
    pub fn number(self) -> char {
        char::from(self.number)
    }

    /// Whether class 1 can name it (kinds 1..5, numbers 1..9).
    pub fn is_class1(self) -> bool {
        self.kind != InputKind::Internal && self.number.is_ascii_digit()
    }
}

impl fmt::Display for InputCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.as_str(), self.number())
    }
}

/// An `AVMT` set parameter: `10`/`11` video, `20`/`21` audio, `30`/`31` both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AvMuteSet {
    pub target: MuteTarget,
    pub on: bool,
}

impl AvMuteSet {
    /// Reads `10`..`31`.
    pub fn parse(value: &str) -> Result<AvMuteSet, ProtoError> {
        let (target, on) = value
            .split_at_checked(1)
            .ok_or_else(|| bad("AV mute", value))?;
        let target = MuteTarget::parse(target).map_err(|_| bad("AV mute", value))?;
        match on {
            "0" | "1" => Ok(AvMuteSet {
                target,
                on: on == "1",
            }),
            _ => Err(bad("AV mute", value)),
        }
    }
}

impl fmt::Display for AvMuteSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.target.as_str(), u8::from(self.on))
    }
}

/// Video and audio mute, as `AVMT ?` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AvMute {
    pub video: bool,
    pub audio: bool,
}

impl AvMute {
    /// The state after `set`.
    pub fn apply(self, set: AvMuteSet) -> AvMute {
        let video = matches!(set.target, MuteTarget::Video | MuteTarget::Both);
        let audio = matches!(set.target, MuteTarget::Audio | MuteTarget::Both);
        AvMute {
            video: if video { set.on } else { self.video },
            audio: if audio { set.on } else { self.audio },
        }
    }

    /// `AVMT ?`'s reply: `11` video only, `21` audio only, `31` both, `30` neither.
    pub fn as_str(self) -> &'static str {
        match (self.video, self.audio) {
            (true, false) => "11",
            (false, true) => "21",
            (true, true) => "31",
            (false, false) => "30",
        }
    }

    /// Reads `AVMT ?`'s reply (`10` and `20` read as nothing muted).
    pub fn parse(value: &str) -> Result<AvMute, ProtoError> {
        AvMuteSet::parse(value).map(|set| AvMute::default().apply(set))
    }
}

/// `ERST ?`: six digits for fan, lamp, temperature, cover, filter, other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ErrorStatus {
    pub fan: ErrorLevel,
    pub lamp: ErrorLevel,
    pub temperature: ErrorLevel,
    pub cover: ErrorLevel,
    pub filter: ErrorLevel,
    pub other: ErrorLevel,
}

impl ErrorStatus {
    /// Reads six digits `0`..`2`.
    pub fn parse(value: &str) -> Result<ErrorStatus, ProtoError> {
        let level = |i: usize| {
            let digit = value
                .get(i..i + 1)
                .ok_or_else(|| bad("error status", value))?;
            ErrorLevel::parse(digit).map_err(|_| bad("error status", value))
        };
        if value.len() != 6 {
            return Err(bad("error status", value));
        }
        Ok(ErrorStatus {
            fan: level(0)?,
            lamp: level(1)?,
            temperature: level(2)?,
            cover: level(3)?,
            filter: level(4)?,
            other: level(5)?,
        })
    }
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self;
        [s.fan, s.lamp, s.temperature, s.cover, s.filter, s.other]
            .iter()
            .try_for_each(|level| f.write_str(level.as_str()))
    }
}

/// One lamp of a `LAMP ?` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lamp {
    /// Cumulative hours, 0..=99999.
    pub hours: u32,
    pub on: bool,
}

/// Reads `LAMP ?`: 1..=8 pairs `<hours> <0|1>`, separated by spaces.
pub fn parse_lamps(value: &str) -> Result<Vec<Lamp>, ProtoError> {
    let fields: Vec<&str> = value.split(' ').collect();
    if !fields.len().is_multiple_of(2) || fields.len() > 2 * MAX_LAMPS {
        return Err(bad("lamp status", value));
    }
    let lamp = |hours: &str, on: &str| {
        let digits = (1..=5).contains(&hours.len()) && hours.bytes().all(|b| b.is_ascii_digit());
        match (digits, hours.parse(), on) {
            (true, Ok(hours), "0" | "1") => Ok(Lamp {
                hours,
                on: on == "1",
            }),
            _ => Err(bad("lamp status", value)),
        }
    };
    fields
        .chunks(2)
        .map(|pair| lamp(pair[0], pair[1]))
        .collect()
}

/// Writes `LAMP ?`'s value (hours capped at 99999).
pub fn format_lamps(lamps: &[Lamp]) -> String {
    let pairs: Vec<String> = lamps
        .iter()
        .map(|l| format!("{} {}", l.hours.min(MAX_LAMP_HOURS), u8::from(l.on)))
        .collect();
    pairs.join(" ")
}

/// A MAC address as `LKUP` and `ACKN` carry it: `00:11:22:aa:bb:cc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// Reads six colon-separated hex pairs (either case).
    pub fn parse(value: &str) -> Result<MacAddress, ProtoError> {
        let parts: Vec<&str> = value.split(':').collect();
        let mut mac = [0u8; 6];
        if parts.len() != 6 || !parts.iter().all(|p| hex(p, 2)) {
            return Err(bad("MAC address", value));
        }
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad("MAC address", value))?;
        }
        Ok(MacAddress(mac))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A class 2 status notification, sent unprompted by UDP to the controller's port 4352.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// `%2LKUP=<mac>`: the device's network link came up.
    LinkUp(MacAddress),
    /// `%2POWR=<0..3>`.
    Power(PowerState),
    /// `%2INPT=<code>`.
    Input(InputCode),
    /// `%2ERST=<6 digits>`.
    Errors(ErrorStatus),
}

impl Notification {
    /// Reads a response as a notification: `Ok(None)` if it is not one.
    pub fn from_response(response: &Response) -> Result<Option<Notification>, ProtoError> {
        let value = response.value().unwrap_or("");
        Ok(Some(match (response.class, response.body) {
            (Class::Two, Body::LKUP) => Notification::LinkUp(MacAddress::parse(value)?),
            (Class::Two, Body::POWR) => Notification::Power(PowerState::parse(value)?),
            (Class::Two, Body::INPT) => Notification::Input(InputCode::parse(value)?),
            (Class::Two, Body::ERST) => Notification::Errors(ErrorStatus::parse(value)?),
            _ => return Ok(None),
        }))
    }

    /// The notification as the line it is sent as.
    pub fn to_response(self) -> Response {
        let (body, value) = match self {
            Notification::LinkUp(mac) => (Body::LKUP, mac.to_string()),
            Notification::Power(p) => (Body::POWR, p.as_str().to_owned()),
            Notification::Input(i) => (Body::INPT, i.to_string()),
            Notification::Errors(e) => (Body::ERST, e.to_string()),
        };
        // A few ASCII characters each.
        let reply = Reply::Value(Text(value));
        Response {
            class: Class::Two,
            body,
            reply,
        }
    }
}
