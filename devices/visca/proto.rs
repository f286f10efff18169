//! The VISCA-over-IP codec: the 8-byte datagram header and the typed VISCA messages
//! a PTZ adapter sends and a camera (or [`super::sim`]) answers.
//!
//! Two layers, so a receiver can tell a broken datagram from a broken VISCA message
//! (a camera answers them differently):
//! * [`decode_datagram`] / [`encode_datagram`]: the header (payload type, payload length
//!   1..=16, big-endian [`Seq`]) around an opaque [`Payload`];
//! * [`Command`], [`Inquiry`], [`Reply`], [`Answer`], [`Control`], [`ControlReply`]: each
//!   with `encode` and `decode` for the payload bytes.
//!
//! Decoders never panic; a [`ProtoError`] carries an escaped, bounded dump of the bytes.
//! Addresses are fixed: over IP the camera is always `81` and answers as `90`. Sources are
//! listed in the [`super`] module documentation.

use std::fmt;

/// The UDP port VISCA-over-IP cameras listen on.
pub const PORT: u16 = 52381;
/// Bytes in the datagram header: type (2), length (2), sequence number (4).
pub const HEADER_LEN: usize = 8;
/// Largest payload the header's length field may announce.
pub const MAX_PAYLOAD: usize = 16;
/// Largest valid datagram.
pub const MAX_DATAGRAM: usize = HEADER_LEN + MAX_PAYLOAD;
/// Fastest pan speed byte (`VV`); the camera runs larger values at this speed.
pub const MAX_PAN_SPEED: u8 = 0x18;
/// Fastest tilt speed byte (`WW`).
pub const MAX_TILT_SPEED: u8 = 0x17;
/// Fastest variable zoom speed (`p` in `2p`/`3p`).
pub const MAX_ZOOM_SPEED: u8 = 7;

/// First byte of every message to the camera: controller 0 to camera 1 (fixed over IP).
const ADDRESS: u8 = 0x81;
/// First byte of every message from camera 1 (its address + 8, in the high nibble).
const REPLY_ADDRESS: u8 = 0x90;
/// Last byte of every VISCA message.
const TERMINATOR: u8 = 0xFF;
/// An escaped dump shows at most this many bytes, so a hostile datagram cannot make an
/// error message (or a log line) as large as itself.
const ESCAPE_LIMIT: usize = 32;

/// An enum whose variants stand for wire codes, with `code` and `from_code`.
macro_rules! codes {
    ($(#[$m:meta])* pub enum $name:ident: $t:ty {
        $($(#[$vm:meta])* $var:ident = $code:literal,)*
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* #[doc = concat!("Code `", stringify!($code), "`.")] $var,)*
        }

        impl $name {
            /// The variant's wire code.
            pub const fn code(self) -> $t {
                match self {
                    $($name::$var => $code,)*
                }
            }

            /// The variant with this wire code, if any.
            pub const fn from_code(code: $t) -> Option<Self> {
                match code {
                    $($code => Some($name::$var),)*
                    _ => None,
                }
            }
        }
    };
}

/// A datagram's sequence number. The controller adds one per message (wrapping to 0);
/// the camera answers with the number of the message it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// The number after this one, wrapping at `u32::MAX`.
    pub const fn next(self) -> Seq {
        Seq(self.0.wrapping_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

codes! {
    /// The header's payload type (its two bytes, big-endian).
    pub enum PayloadType: u16 {
        /// `0100`: a VISCA command (`81 01 …`, or a cancel `81 2y FF`).
        Command = 0x0100,
        /// `0110`: a VISCA inquiry (`81 09 …`).
        Inquiry = 0x0110,
        /// `0111`: the camera's VISCA reply (ACK, completion, data or error).
        Reply = 0x0111,
        /// `0120`: a VISCA device setting command (e.g. `IF_Clear 81 01 00 01 FF`).
        DeviceSetting = 0x0120,
        /// `0200`: a control command: `RESET` from a controller, `ERROR` from the camera.
        Control = 0x0200,
        /// `0201`: the reply to a control command.
        ControlReply = 0x0201,
    }
}

/// A bounded hex dump of bytes (`81 01 04 FF`), for error messages and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escaped(String);

impl Escaped {
    /// Dumps at most the first 32 bytes, noting how many more there were.
    pub fn new(bytes: &[u8]) -> Self {
        let shown = bytes.iter().take(ESCAPE_LIMIT).map(|b| format!("{b:02X}"));
        let mut shown: Vec<String> = shown.collect();
        if bytes.len() > ESCAPE_LIMIT {
            shown.push(format!("…(+{} bytes)", bytes.len() - ESCAPE_LIMIT));
        }
        match shown.is_empty() {
            true => Escaped("<empty>".into()),
            false => Escaped(shown.join(" ")),
        }
    }
}

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why bytes are not a valid datagram or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Fewer bytes than the 8-byte header.
    #[error("datagram shorter than the 8-byte header: {0}")]
    TooShort(Escaped),
    /// More bytes than a header and the largest payload.
    #[error("datagram longer than {MAX_DATAGRAM} bytes: {0}")]
    TooLong(Escaped),
    /// The length field (first) is outside 1..=16 or disagrees with the bytes after the
    /// header (second).
    #[error("payload length field says {0} but {1} bytes follow the header")]
    LengthField(u16, usize),
    /// A payload type (first) that is none of the six defined ones; the datagram's
    /// sequence number (second) lets a camera answer with a message-type `ERROR`.
    #[error("unknown payload type {0:#06x} (sequence {1})")]
    UnknownType(u16, Seq),
    /// A payload to encode that is empty or longer than 16 bytes.
    #[error("payload of {0} bytes is outside 1..=16")]
    PayloadSize(usize),
    /// A VISCA message that is malformed or that this codec does not know.
    #[error("malformed or unknown VISCA message: {0}")]
    Syntax(Escaped),
    /// A control payload that is neither `RESET` nor a known `ERROR`.
    #[error("unknown control message: {0}")]
    UnknownControl(Escaped),
}

fn syntax(bytes: &[u8]) -> ProtoError {
    ProtoError::Syntax(Escaped::new(bytes))
}

/// A datagram payload: 1..=16 bytes, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Payload {
    bytes: [u8; MAX_PAYLOAD],
    len: u8,
}

impl Payload {
    /// Copies `bytes`, which must be 1..=16 long.
    ///
    /// # Errors
    /// [`ProtoError::PayloadSize`] otherwise.
    pub fn new(bytes: &[u8]) -> Result<Self, ProtoError> {
        match bytes.len() {
            1..=MAX_PAYLOAD => Ok(Self::join(&[bytes])),
            n => Err(ProtoError::PayloadSize(n)),
        }
    }

    /// Concatenates parts; used for this module's own encodings, which are 1..=15 bytes
    /// by construction (bytes past 16 would be cut rather than panic).
    fn join(parts: &[&[u8]]) -> Self {
        let mut bytes = [0u8; MAX_PAYLOAD];
        let mut len = 0u8;
        for (slot, b) in bytes.iter_mut().zip(parts.iter().flat_map(|p| p.iter())) {
            *slot = *b;
            len += 1;
        }
        Payload { bytes, len }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload[{}]", Escaped::new(self.as_bytes()))
    }
}

/// One VISCA-over-IP datagram: header fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    pub kind: PayloadType,
    pub seq: Seq,
    pub payload: Payload,
}

impl Datagram {
    /// A datagram from its parts.
    pub const fn new(kind: PayloadType, seq: Seq, payload: Payload) -> Self {
        Datagram { kind, seq, payload }
    }

    /// A command datagram.
    pub fn command(seq: Seq, command: &Command) -> Self {
        Self::new(PayloadType::Command, seq, command.encode())
    }

    /// An inquiry datagram.
    pub fn inquiry(seq: Seq, inquiry: Inquiry) -> Self {
        Self::new(PayloadType::Inquiry, seq, inquiry.encode())
    }

    /// A reply datagram (from the camera).
    pub fn reply(seq: Seq, reply: &Reply) -> Self {
        Self::new(PayloadType::Reply, seq, reply.encode())
    }

    /// A control datagram: `RESET` from a controller, `ERROR` from the camera.
    pub fn control(seq: Seq, control: Control) -> Self {
        Self::new(PayloadType::Control, seq, control.encode())
    }

    /// A control reply datagram (the camera's answer to `RESET`).
    pub fn control_reply(seq: Seq, reply: ControlReply) -> Self {
        Self::new(PayloadType::ControlReply, seq, reply.encode())
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_DATAGRAM);
        out.extend_from_slice(&self.kind.code().to_be_bytes());
        out.extend_from_slice(&u16::from(self.payload.len).to_be_bytes());
        out.extend_from_slice(&self.seq.0.to_be_bytes());
        out.extend_from_slice(self.payload.as_bytes());
        out
    }
}

/// Encodes a datagram from its parts.
///
/// # Errors
/// [`ProtoError::PayloadSize`] if `payload` is empty or longer than 16 bytes.
pub fn encode_datagram(kind: PayloadType, seq: Seq, payload: &[u8]) -> Result<Vec<u8>, ProtoError> {
    Ok(Datagram::new(kind, seq, Payload::new(payload)?).encode())
}

/// Decodes one datagram's header and keeps its payload opaque.
///
/// # Errors
/// [`ProtoError::TooShort`], [`ProtoError::TooLong`], [`ProtoError::LengthField`], or
/// [`ProtoError::UnknownType`].
pub fn decode_datagram(bytes: &[u8]) -> Result<Datagram, ProtoError> {
    let Some(([t0, t1, l0, l1, s0, s1, s2, s3], body)) = bytes.split_first_chunk() else {
        return Err(ProtoError::TooShort(Escaped::new(bytes)));
    };
    if bytes.len() > MAX_DATAGRAM {
        return Err(ProtoError::TooLong(Escaped::new(bytes)));
    }
    let (code, field) = (
        u16::from_be_bytes([*t0, *t1]),
        u16::from_be_bytes([*l0, *l1]),
    );
    let seq = Seq(u32::from_be_bytes([*s0, *s1, *s2, *s3]));
    if usize::from(field) != body.len() || body.is_empty() {
        return Err(ProtoError::LengthField(field, body.len()));
    }
    let kind = PayloadType::from_code(code).ok_or(ProtoError::UnknownType(code, seq))?;
    Ok(Datagram::new(kind, seq, Payload::new(body)?))
}

/// Splits `<address> <body…> FF` into its body.
fn body_of(bytes: &[u8], address: u8) -> Result<&[u8], ProtoError> {
    match bytes {
        [first, body @ .., TERMINATOR] if *first == address => Ok(body),
        _ => Err(syntax(bytes)),
    }
}

/// Four `0x` nibble bytes as a 16-bit value, most significant first.
fn from_nibbles(n: &[u8]) -> Option<u16> {
    let ok = n.len() == 4 && n.iter().all(|b| *b <= 0x0F);
    ok.then(|| n.iter().fold(0u16, |acc, b| (acc << 4) | u16::from(*b)))
}

/// A 16-bit value as four `0x` nibble bytes, most significant first.
fn nibbles(v: u16) -> [u8; 4] {
    [12, 8, 4, 0].map(|shift| (v >> shift) as u8 & 0x0F)
}

codes! {
    /// Camera power (`CAM_Power`, `CAM_PowerInq`).
    pub enum Power: u8 {
        On = 0x02,
        /// Standby.
        Off = 0x03,
    }
}

/// A continuous zoom drive (`81 01 04 07 pp FF`). `None` is the standard speed
/// (`02`/`03`), `Some(p)` the variable speed `2p`/`3p`, `p` in 0..=7 (masked to 3 bits
/// when encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Zoom {
    Stop,
    Tele(Option<u8>),
    Wide(Option<u8>),
}

impl Zoom {
    fn byte(self) -> u8 {
        match self {
            Zoom::Stop => 0x00,
            Zoom::Tele(None) => 0x02,
            Zoom::Wide(None) => 0x03,
            Zoom::Tele(Some(p)) => 0x20 | (p & 0x07),
            Zoom::Wide(Some(p)) => 0x30 | (p & 0x07),
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x00 => Some(Zoom::Stop),
            0x02 => Some(Zoom::Tele(None)),
            0x03 => Some(Zoom::Wide(None)),
            0x20..=0x27 => Some(Zoom::Tele(Some(b & 0x07))),
            0x30..=0x37 => Some(Zoom::Wide(Some(b & 0x07))),
            _ => None,
        }
    }
}

/// A pan-tilt drive direction (`0x 0y`: x `01` left, `02` right, `03` stop; y `01` up,
/// `02` down, `03` stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Up,
    Down,
    Left,
    Right,
    UpLeft,
    UpRight,
    DownLeft,
    DownRight,
    Stop,
}

impl Direction {
    /// Pan sense: -1 left, 1 right, 0 none.
    pub const fn pan(self) -> i8 {
        match self {
            Direction::Left | Direction::UpLeft | Direction::DownLeft => -1,
            Direction::Right | Direction::UpRight | Direction::DownRight => 1,
            _ => 0,
        }
    }

    /// Tilt sense: 1 up, -1 down, 0 none.
    pub const fn tilt(self) -> i8 {
        match self {
            Direction::Up | Direction::UpLeft | Direction::UpRight => 1,
            Direction::Down | Direction::DownLeft | Direction::DownRight => -1,
            _ => 0,
        }
    }

    const fn bytes(self) -> [u8; 2] {
        // Indexed by sense + 1: left 01, none 03, right 02; down 02, none 03, up 01.
        let x = [0x01, 0x03, 0x02][(self.pan() + 1) as usize];
        let y = [0x02, 0x03, 0x01][(self.tilt() + 1) as usize];
        [x, y]
    }

    fn from_bytes(x: u8, y: u8) -> Option<Self> {
        use Direction::*;
        let all = [
            Up, Down, Left, Right, UpLeft, UpRight, DownLeft, DownRight, Stop,
        ];
        all.into_iter().find(|d| d.bytes() == [x, y])
    }
}

/// Pan/tilt speed bytes (`VV`, `WW`): 7-bit (masked when encoded); a camera runs values
/// above [`MAX_PAN_SPEED`] / [`MAX_TILT_SPEED`] at the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Speed {
    pub pan: u8,
    pub tilt: u8,
}

impl Speed {
    /// The fastest pan and tilt speeds.
    pub const MAX: Speed = Speed {
        pan: MAX_PAN_SPEED,
        tilt: MAX_TILT_SPEED,
    };

    /// Both bytes, if 7-bit (0x80 and above cannot be VISCA data bytes here).
    fn from_bytes(pan: u8, tilt: u8) -> Option<Self> {
        (pan <= 0x7F && tilt <= 0x7F).then_some(Speed { pan, tilt })
    }
}

/// A pan/tilt position, signed 16-bit per axis (pan `DE00`..=`2200` is ±170° and tilt
/// `FC00`..=`1200` is -20°..=+90° on the SRG-300 series).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    pub pan: i16,
    pub tilt: i16,
}

impl Position {
    fn nibbles(self) -> [u8; 8] {
        let ([a, b, c, d], [e, f, g, h]) = (nibbles(self.pan as u16), nibbles(self.tilt as u16));
        [a, b, c, d, e, f, g, h]
    }

    fn from_nibbles(n: &[u8]) -> Option<Self> {
        let (pan, tilt) = (
            n.get(..4).and_then(from_nibbles),
            n.get(4..).and_then(from_nibbles),
        );
        let (pan, tilt) = (pan? as i16, tilt? as i16);
        Some(Position { pan, tilt })
    }
}

codes! {
    /// What a `CAM_Memory` command does with a preset.
    pub enum PresetAction: u8 {
        /// Forget the preset.
        Reset = 0x00,
        /// Store the current position.
        Set = 0x01,
        /// Move to the stored position.
        Recall = 0x02,
    }
}

/// A VISCA command (payload type `0100`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `81 01 04 00 0p FF`.
    Power(Power),
    /// `81 01 04 07 pp FF`.
    Zoom(Zoom),
    /// `81 01 04 47 0p 0q 0r 0s FF`: zoom to a position (0 wide … `4000` optical tele on
    /// the SRG-300 series).
    ZoomTo(u16),
    /// `81 01 06 01 VV WW 0x 0y FF`: start (or stop) a continuous pan/tilt move.
    Drive(Direction, Speed),
    /// `81 01 06 02 VV WW 0Y 0Y 0Y 0Y 0Z 0Z 0Z 0Z FF`: move to an absolute position.
    MoveTo(Position, Speed),
    /// `81 01 06 04 FF`: move pan/tilt to the home (centre) position.
    Home,
    /// `81 01 04 3F 0n pp FF`: reset, set or recall preset `pp` (`FF` is no number).
    Preset(PresetAction, u8),
    /// `81 2y FF`: cancel the command executing in socket `y` (masked to 4 bits).
    Cancel(u8),
}

impl Command {
    /// The command's payload.
    pub fn encode(&self) -> Payload {
        let cmd = |body: &[u8]| Payload::join(&[&[ADDRESS, 0x01], body, &[TERMINATOR]]);
        match *self {
            Command::Power(p) => cmd(&[0x04, 0x00, p.code()]),
            Command::Zoom(z) => cmd(&[0x04, 0x07, z.byte()]),
            Command::ZoomTo(z) => {
                Payload::join(&[&[ADDRESS, 1, 4, 0x47], &nibbles(z), &[TERMINATOR]])
            }
            Command::Drive(direction, Speed { pan, tilt }) => {
                let [x, y] = direction.bytes();
                cmd(&[0x06, 0x01, pan & 0x7F, tilt & 0x7F, x, y])
            }
            Command::MoveTo(to, Speed { pan, tilt }) => {
                let head = [ADDRESS, 0x01, 0x06, 0x02, pan & 0x7F, tilt & 0x7F];
                Payload::join(&[&head, &to.nibbles(), &[TERMINATOR]])
            }
            Command::Home => cmd(&[0x06, 0x04]),
            Command::Preset(action, number) => cmd(&[0x04, 0x3F, action.code(), number]),
            Command::Cancel(y) => Payload::join(&[&[ADDRESS, 0x20 | (y & 0x0F), TERMINATOR]]),
        }
    }

    /// Parses a command payload.
    ///
    /// # Errors
    /// [`ProtoError::Syntax`] for anything but the commands above, well formed.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let cmd = match *body_of(bytes, ADDRESS)? {
            [c] if c & 0xF0 == 0x20 => Some(Command::Cancel(c & 0x0F)),
            [0x01, 0x04, 0x00, p] => Power::from_code(p).map(Command::Power),
            [0x01, 0x04, 0x07, b] => Zoom::from_byte(b).map(Command::Zoom),
            [0x01, 0x04, 0x47, ref n @ ..] => from_nibbles(n).map(Command::ZoomTo),
            [0x01, 0x06, 0x01, v, w, x, y] => {
                let direction = Direction::from_bytes(x, y);
                Speed::from_bytes(v, w)
                    .zip(direction)
                    .map(|(s, d)| Command::Drive(d, s))
            }
            [0x01, 0x06, 0x02, v, w, ref to @ ..] if to.len() == 8 => {
                let to = Position::from_nibbles(to);
                Speed::from_bytes(v, w)
                    .zip(to)
                    .map(|(s, p)| Command::MoveTo(p, s))
            }
            [0x01, 0x06, 0x04] => Some(Command::Home),
            [0x01, 0x04, 0x3F, a, n] => PresetAction::from_code(a).map(|a| Command::Preset(a, n)),
            _ => None,
        };
        cmd.ok_or_else(|| syntax(bytes))
    }
}

/// A VISCA inquiry (payload type `0110`); the camera answers with an [`Answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inquiry {
    /// `CAM_PowerInq 81 09 04 00 FF`.
    Power,
    /// `CAM_ZoomPosInq 81 09 04 47 FF`.
    ZoomPosition,
    /// `Pan-tiltPosInq 81 09 06 12 FF`.
    PanTiltPosition,
}

impl Inquiry {
    const ALL: [Inquiry; 3] = [
        Inquiry::Power,
        Inquiry::ZoomPosition,
        Inquiry::PanTiltPosition,
    ];

    const fn code(self) -> [u8; 2] {
        match self {
            Inquiry::Power => [0x04, 0x00],
            Inquiry::ZoomPosition => [0x04, 0x47],
            Inquiry::PanTiltPosition => [0x06, 0x12],
        }
    }

    /// The inquiry's payload.
    pub fn encode(self) -> Payload {
        Payload::join(&[&[ADDRESS, 0x09], &self.code(), &[TERMINATOR]])
    }

    /// Parses an inquiry payload.
    ///
    /// # Errors
    /// [`ProtoError::Syntax`] for anything but the three inquiries above.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let found = match *body_of(bytes, ADDRESS)? {
            [0x09, a, b] => Inquiry::ALL.into_iter().find(|i| i.code() == [a, b]),
            _ => None,
        };
        found.ok_or_else(|| syntax(bytes))
    }
}

/// The data of an inquiry's reply (`90 50 … FF`), typed by the inquiry it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// `90 50 02 FF` on, `90 50 03 FF` off (standby).
    Power(Power),
    /// `90 50 0p 0q 0r 0s FF`.
    ZoomPosition(u16),
    /// `90 50 0Y 0Y 0Y 0Y 0Z 0Z 0Z 0Z FF`.
    PanTiltPosition(Position),
}

impl Answer {
    /// The inquiry this answers.
    pub const fn inquiry(&self) -> Inquiry {
        match self {
            Answer::Power(_) => Inquiry::Power,
            Answer::ZoomPosition(_) => Inquiry::ZoomPosition,
            Answer::PanTiltPosition(_) => Inquiry::PanTiltPosition,
        }
    }

    /// The reply payload.
    pub fn encode(&self) -> Payload {
        let data = |d: &[u8]| Payload::join(&[&[REPLY_ADDRESS, 0x50], d, &[TERMINATOR]]);
        match *self {
            Answer::Power(p) => data(&[p.code()]),
            Answer::ZoomPosition(z) => data(&nibbles(z)),
            Answer::PanTiltPosition(p) => data(&p.nibbles()),
        }
    }

    /// Parses the reply payload to `inquiry`.
    ///
    /// # Errors
    /// [`ProtoError::Syntax`] if the bytes are not that inquiry's answer (an error reply
    /// included: check with [`Reply::decode`] first).
    pub fn decode(inquiry: Inquiry, bytes: &[u8]) -> Result<Self, ProtoError> {
        let answer = match (inquiry, body_of(bytes, REPLY_ADDRESS)?) {
            (Inquiry::Power, [0x50, p]) => Power::from_code(*p).map(Answer::Power),
            (Inquiry::ZoomPosition, [0x50, n @ ..]) => from_nibbles(n).map(Answer::ZoomPosition),
            (Inquiry::PanTiltPosition, [0x50, n @ ..]) if n.len() == 8 => {
                Position::from_nibbles(n).map(Answer::PanTiltPosition)
            }
            _ => None,
        };
        answer.ok_or_else(|| syntax(bytes))
    }
}

codes! {
    /// The error kinds of a VISCA error reply (`90 6y ee FF`).
    pub enum ViscaError: u8 {
        /// Message length error (serial VISCA; listed for completeness).
        MessageLength = 0x01,
        /// Unknown command or illegal parameters (socket 0).
        Syntax = 0x02,
        /// Both command sockets are busy (socket 0).
        BufferFull = 0x03,
        /// The command in socket `y` was cancelled (its completion never comes).
        Cancelled = 0x04,
        /// A cancel named a socket with no command in it.
        NoSocket = 0x05,
        /// The command cannot run now (e.g. the camera is in standby).
        NotExecutable = 0x41,
    }
}

/// A camera's VISCA reply (payload type `0111`). The `u8` is the socket number: 1 and 2
/// for commands, 0 for inquiries and for errors that name no socket (masked to 4 bits
/// when encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `90 4y FF`: the command was accepted into socket `y`.
    Ack(u8),
    /// `90 5y FF`: the command in socket `y` finished (`90 50 FF` for `IF_Clear`, which
    /// has no ACK).
    Completion(u8),
    /// `90 50 … FF` with data: an inquiry's answer; parse with [`Answer::decode`].
    Data(Payload),
    /// `90 6y ee FF`.
    Error(u8, ViscaError),
}

impl Reply {
    /// The reply payload.
    pub fn encode(&self) -> Payload {
        let reply = |b: &[u8]| Payload::join(&[&[REPLY_ADDRESS], b, &[TERMINATOR]]);
        match *self {
            Reply::Ack(y) => reply(&[0x40 | (y & 0x0F)]),
            Reply::Completion(y) => reply(&[0x50 | (y & 0x0F)]),
            Reply::Data(payload) => payload,
            Reply::Error(y, e) => reply(&[0x60 | (y & 0x0F), e.code()]),
        }
    }

    /// Parses a reply payload.
    ///
    /// # Errors
    /// [`ProtoError::Syntax`] if it is none of the replies above.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let reply = match *body_of(bytes, REPLY_ADDRESS)? {
            [b] if b & 0xF0 == 0x40 => Some(Reply::Ack(b & 0x0F)),
            [b] if b & 0xF0 == 0x50 => Some(Reply::Completion(b & 0x0F)),
            [0x50, _, ..] => Payload::new(bytes).ok().map(Reply::Data),
            [b, e] if b & 0xF0 == 0x60 => {
                ViscaError::from_code(e).map(|e| Reply::Error(b & 0x0F, e))
            }
            _ => None,
        };
        reply.ok_or_else(|| syntax(bytes))
    }
}

/// The `ERROR` kinds of the control payload `0F yy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlError {
    /// `0F 01`: abnormality in the sequence number.
    Sequence,
    /// `0F 02`: abnormality in the message (message type).
    MessageType,
}

/// A control message (payload type `0200`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    /// `01`: reset the camera's sequence number to 0 (the header's number is ignored).
    Reset,
    /// `0F yy`: sent by the camera, on this type (`0200`) rather than `0201`.
    Error(ControlError),
}

impl Control {
    /// The control payload.
    pub fn encode(self) -> Payload {
        match self {
            Control::Reset => Payload::join(&[&[0x01]]),
            Control::Error(ControlError::Sequence) => Payload::join(&[&[0x0F, 0x01]]),
            Control::Error(ControlError::MessageType) => Payload::join(&[&[0x0F, 0x02]]),
        }
    }

    /// Parses a control payload.
    ///
    /// # Errors
    /// [`ProtoError::UnknownControl`] for anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        match bytes {
            [0x01] => Ok(Control::Reset),
            [0x0F, 0x01] => Ok(Control::Error(ControlError::Sequence)),
            [0x0F, 0x02] => Ok(Control::Error(ControlError::MessageType)),
            _ => Err(ProtoError::UnknownControl(Escaped::new(bytes))),
        }
    }
}

/// A control reply (payload type `0201`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlReply {
    /// `01`: `RESET` done.
    Ack,
}

impl ControlReply {
    /// The control reply payload.
    pub fn encode(self) -> Payload {
        Payload::join(&[&[0x01]])
    }

    /// Parses a control reply payload.
    ///
    /// # Errors
    /// [`ProtoError::UnknownControl`] for anything but `01`.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        match bytes {
            [0x01] => Ok(ControlReply::Ack),
            _ => Err(ProtoError::UnknownControl(Escaped::new(bytes))),
        }
    }
}
