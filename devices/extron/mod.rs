//! Extron SIS matrix switchers (DXP, CrossPoint, MAV, XTP …): the protocol's
//! vocabulary and behaviour (this file: tie kinds, verbose modes, error codes, and a
//! transport-free [`Matrix`] that answers commands as the device does), its wire
//! format ([`proto`], shared by the simulator and the adapter) and a strict simulator
//! ([`sim`]) that serves a [`Matrix`] over real TCP.
//!
//! # The protocol as implemented
//! * **Connect** (Telnet, port 23): a copyright banner line; then `CR LF Password:`
//!   (no line end) if a password is set. Every entry other than a valid password is
//!   answered by the prompt again — there is no error code for a wrong password — and a
//!   valid one by `CR LF Login Administrator CR LF` (or `Login User`).
//! * **Framing**: commands have no terminator and may be sent back to back
//!   (`1*1!02*02&003*003%4*8$`), numbers take 1–3 digits; responses end in CR LF and
//!   pad numbers to two digits. Escape commands are `ESC … CR` (the manuals' `E` and
//!   `}` symbols; a bare LF is accepted as Telnet sends one). A pause of 10 s between
//!   the characters of a command aborts it without a reply.
//! * **Ties**: `in*out!` video and audio → `Out03 In01 All`; `&` → `RGB` and `%` →
//!   `Vid` (video only, interchangeable); `$` → `Aud` (audio only). Input 0 unties.
//!   `in*!` (or `&`, `%`, `$`) ties an input to every output → `In05 All`; `0*!`
//!   clears everything. `ESC +Q 3*4! 3*5% … CR` (no spaces) switches all at once →
//!   `Qik`; one bad entry rejects the whole command.
//! * **Queries**: `out%` (or `out&`) → the video input, `out$` → the audio input (there
//!   is no `out!` read), `outB` / `outZ` → video / audio mute, `ESC VM CR` → one digit
//!   per output (0 none, 1 video, 2 audio, 3 both), `ESC CV CR` → the verbose mode,
//!   `I` → `V8X8 A8X8`, `Q` → the firmware version (the keepalive Extron recommends).
//! * **Mutes**: `out*1B` / `out*0B` → `Vmt03*1`, `out*1Z` → `Amt03*1`; every output:
//!   `1*B` → `Vmt1`, `0*Z` → `Amt0`.
//! * **Verbose mode** `ESC 3CV CR` → `Vrb3`, per connection, 0 on every new Telnet
//!   connection. Set responses are the same in every mode. Modes 2 and 3 *tag* query
//!   answers like the matching set response (`3%` → `Out03 In01 Vid` instead of `01`;
//!   `ESC VM CR` → `Mut0120…`; `ESC CV CR` → `Vrb3`). Modes 1 and 3 receive change
//!   notices: changes made through other connections in the form of their responses,
//!   a front-panel switching operation as `Qik` (the ties must be read again), a
//!   front-panel mute as `Vmt03 1` / `Amt03 1`. The adapter therefore sends `ESC 3CV CR`
//!   after every (re)connect.
//! * **Errors** `Enn CR LF`: E01 input number, E10 command, E11 preset, E12 output,
//!   E13 value, E14 configuration, E17 timeout, E22 busy, E24 privilege (a user-level
//!   login attempting an administrator command), E25 device not present, E26 too many
//!   connections.
//! * **Port timeout**: 300 s without data from the controller closes the connection.
//!
//! # Where the manuals disagree
//! The simulator picks one form; the adapter's parser ([`proto::parse_response`])
//! accepts all of them.
//! * Numbers in responses: CrossPoint/MAV/MTPX/MVX print `Out03 In01 All`; the DXP
//!   DVI table prints `Out3 In1 All` although its symbol table says numbers are
//!   "reported as two-digit numbers". The simulator pads.
//! * Front-panel mute notices: `Vmtnn x` (CrossPoint 300 and 450, a space), `Amtnn*x`
//!   (DTP CrossPoint), a global `Vmtn` (DXP DVI). The simulator uses the space.
//! * The connection limit: MTPX Plus, Fiber Matrix, SMX and CrossPoint Ultra accept up
//!   to 200 TCP connections and then refuse new ones "with no error message"; the DXP
//!   and FOX3 error tables list E26. The simulator answers `E26` and closes.
//! * Output 0 in a tie unties that input everywhere on CrossPoint 450/MAV Plus; DXP
//!   numbers outputs from 1. The simulator answers E12.
//! * The tag of the view-mutes answer is a prefix on CrossPoint (`Mut0220…`), a suffix
//!   on MVX Plus (`02301000Mut`).
//!
//! # Sources (Extron user guides, as stored copies)
//! * CrossPoint 450 Plus / MAV Plus programmer's guide: switcher-initiated messages,
//!   password re-prompt, `Qik` on front-panel switching, error codes, ties, quick tie,
//!   mutes — <https://www.easymanua.ls/extron-electronics/crosspoint-450-plus-series/manual?p=118>,
//!   `?p=121`, `?p=122`, `?p=124`; verbose mode 1/3 for change notices —
//!   <https://manualshive.com/en/manual/extron-electronics/crosspoint-450-plus-2412-hv/2456131?page=116>.
//! * CrossPoint / MAV setup guide: read ties `X@&`, `X@%`, `X@$`; mutes and `ESC VM CR`
//!   — <https://www.easymanua.ls/extron-electronics/crosspoint-450-plus-series/manual/1254989?p=22>, `?p=23`.
//! * CrossPoint Ultra programmer's guide: verbose modes 0–3, tagged responses, port
//!   timeout 300 s, 200 connections —
//!   <https://www.manualsdir.com/manuals/85799/extron-electronic-ultra-series.html?page=133>,
//!   <https://azmanual.top/manuals/85799/extron-electronic-ultra-series.html?page=115>,
//!   error list `?page=117`.
//! * DXP DVI / DXP HDMI SIS tables: 1–3 digit entries, untie with input 0, `In5 All`,
//!   error codes with E24 and E26, password prompt redisplayed —
//!   <https://personalcare.manualsonline.com/manuals/mfg/extron_electronics/dxp_dvi_pro.html?p=63>,
//!   <https://manualsdump.com/en/manuals/extron_electronic-dxp_dvi_pro-dxp_dvi/122320/59>,
//!   <http://office.manualsonline.com/manuals/mfg/extron_electronics/dxp_dvi_pro_1.html?p=56>.
//! * MVX VGA A: `ESC n CV CR` → `Vrbn`, `I`, `Q` —
//!   <https://manualshive.com/en/manual/extron-electronics/mvx-1212-vga-a/2456264?page=16>.
//! * XTP CrossPoint: read-tie examples (`7%` → `02`, `3$` → `06`) —
//!   <https://manualshive.com/en/manual/extron-electronics/xtp-crosspoint-3200/2456284?page=121>.
//! * MTPX Plus: connection limit without an error, `Q` as keepalive —
//!   <https://azmanual.top/manuals/312105/extron-electronics-mtpx-plus-6400-series-user-guide.html?page=73>.
//! * FOX3 Matrix error list (E24 privilege, E26 connections) —
//!   <https://www.manualslib.com/manual/2402951/Extron-Electronics-Fox3-Matrix-Series.html?page=29>.
//! * SW4 3G: 10 s between characters aborts a command —
//!   <https://manualsdump.com/en/manuals/extron_electronic-sw4_3g_hd-sdi/122571/27>.

use thiserror::Error;

use proto::{Command, Response};

pub mod adapter;
pub mod proto;
pub mod sim;

/// Which signals a tie switches: the symbol that ends a tie command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TieKind {
    /// `!`: video and audio ("audio follow"), answered `All`.
    All,
    /// `&`: RGB only (video breakaway), answered `RGB`.
    Rgb,
    /// `%`: video only (video breakaway), answered `Vid`.
    Video,
    /// `$`: audio only (audio breakaway), answered `Aud`.
    Audio,
}

impl TieKind {
    /// The kind a command symbol stands for.
    pub fn from_symbol(symbol: u8) -> Option<Self> {
        match symbol {
            b'!' => Some(Self::All),
            b'&' => Some(Self::Rgb),
            b'%' => Some(Self::Video),
            b'$' => Some(Self::Audio),
            _ => None,
        }
    }

    /// The command symbol (`!`, `&`, `%`, `$`).
    pub fn symbol(self) -> char {
        match self {
            Self::All => '!',
            Self::Rgb => '&',
            Self::Video => '%',
            Self::Audio => '$',
        }
    }

    /// The word that ends a tie response (`All`, `RGB`, `Vid`, `Aud`).
    pub fn tag(self) -> &'static str {
        match self {
            Self::All => "All",
            Self::Rgb => "RGB",
            Self::Video => "Vid",
            Self::Audio => "Aud",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        [Self::All, Self::Rgb, Self::Video, Self::Audio]
            .into_iter()
            .find(|k| k.tag().eq_ignore_ascii_case(tag))
    }

    /// Whether the tie switches video (RGB and video are the same plane on a matrix).
    pub fn switches_video(self) -> bool {
        self != Self::Audio
    }

    /// Whether the tie switches audio.
    pub fn switches_audio(self) -> bool {
        matches!(self, Self::All | Self::Audio)
    }
}

/// One tie: `input` 0 unties the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tie {
    pub input: u16,
    pub output: u16,
    pub kind: TieKind,
}

impl Tie {
    pub const fn new(input: u16, output: u16, kind: TieKind) -> Self {
        Self {
            input,
            output,
            kind,
        }
    }
}

/// The verbose mode of one connection (`ESC n CV CR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerboseMode {
    /// 0: no change notices, bare query answers; the default on Telnet.
    #[default]
    Clear,
    /// 1: change notices; the default on RS-232.
    Verbose,
    /// 2: query answers tagged like the matching set command's response.
    Tagged,
    /// 3: both; what the adapter sets on every connection.
    VerboseTagged,
}

impl VerboseMode {
    /// The mode a digit stands for.
    pub fn from_number(n: u16) -> Option<Self> {
        match n {
            0 => Some(Self::Clear),
            1 => Some(Self::Verbose),
            2 => Some(Self::Tagged),
            3 => Some(Self::VerboseTagged),
            _ => None,
        }
    }

    /// The digit on the wire.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// Whether the connection receives unsolicited change notices (modes 1 and 3).
    pub fn notifies(self) -> bool {
        matches!(self, Self::Verbose | Self::VerboseTagged)
    }

    /// Whether query answers carry their tag (modes 2 and 3).
    pub fn tagged(self) -> bool {
        matches!(self, Self::Tagged | Self::VerboseTagged)
    }
}

/// A signal plane of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Video,
    Audio,
}

/// The privilege a password logged in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Administrator,
    User,
}

/// The device's error responses (`E01` …); the text is the manuals' description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum SisError {
    #[error("E01 invalid input number")]
    InvalidInput,
    #[error("E10 invalid command")]
    InvalidCommand,
    #[error("E11 invalid preset number")]
    InvalidPreset,
    #[error("E12 invalid output number")]
    InvalidOutput,
    #[error("E13 invalid value")]
    InvalidValue,
    #[error("E14 not valid for this configuration")]
    InvalidForConfiguration,
    #[error("E17 timeout")]
    Timeout,
    #[error("E22 busy")]
    Busy,
    #[error("E24 privilege violation")]
    PrivilegeViolation,
    #[error("E25 device not present")]
    DeviceNotPresent,
    #[error("E26 maximum number of connections exceeded")]
    MaxConnections,
    /// A code this codec does not name (E21 room, E28 file, …).
    #[error("E{0:02} error")]
    Other(u8),
}

impl SisError {
    const NAMED: [(u8, SisError); 11] = [
        (1, Self::InvalidInput),
        (10, Self::InvalidCommand),
        (11, Self::InvalidPreset),
        (12, Self::InvalidOutput),
        (13, Self::InvalidValue),
        (14, Self::InvalidForConfiguration),
        (17, Self::Timeout),
        (22, Self::Busy),
        (24, Self::PrivilegeViolation),
        (25, Self::DeviceNotPresent),
        (26, Self::MaxConnections),
    ];

    /// The number after the `E`.
    pub fn code(self) -> u8 {
        match self {
            Self::Other(code) => code,
            named => Self::NAMED
                .iter()
                .find(|(_, e)| *e == named)
                .map_or(0, |(code, _)| *code),
        }
    }

    /// The error a number stands for.
    pub fn from_code(code: u8) -> Self {
        Self::NAMED
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(Self::Other(code), |(_, e)| *e)
    }
}

/// Mute state of one output, one digit of the view-mutes answer (0–3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputMutes {
    pub video: bool,
    pub audio: bool,
}

impl OutputMutes {
    fn digit(self) -> u8 {
        b'0' + u8::from(self.video) + 2 * u8::from(self.audio)
    }

    fn from_digit(c: u8) -> Option<Self> {
        let n = c.checked_sub(b'0').filter(|n| *n <= 3)?;
        Some(Self {
            video: n & 1 != 0,
            audio: n & 2 != 0,
        })
    }
}

/// What a matrix holds. Index 0 is output 1; input 0 means untied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixState {
    pub video: Vec<u8>,
    pub audio: Vec<u8>,
    pub video_mute: Vec<bool>,
    pub audio_mute: Vec<bool>,
}

/// An Extron matrix switcher's behaviour without a transport: it runs [`Command`]s
/// against its ties and mutes and answers them as the device does, in the verbose mode
/// of the connection that asked. [`sim`] serves one over TCP.
///
/// [`Command`]: proto::Command
#[derive(Debug, Clone)]
pub struct Matrix {
    inputs: u8,
    firmware: String,
    state: MatrixState,
}

impl Matrix {
    /// A matrix with everything untied and unmuted.
    pub fn new(inputs: u8, outputs: u8, firmware: impl Into<String>) -> Self {
        let n = usize::from(outputs);
        Self {
            inputs,
            firmware: firmware.into(),
            state: MatrixState {
                video: vec![0; n],
                audio: vec![0; n],
                video_mute: vec![false; n],
                audio_mute: vec![false; n],
            },
        }
    }

    pub fn state(&self) -> &MatrixState {
        &self.state
    }

    fn input(&self, input: u16) -> Result<u8, SisError> {
        u8::try_from(input)
            .ok()
            .filter(|i| *i <= self.inputs)
            .ok_or(SisError::InvalidInput)
    }

    fn output(&self, output: u16) -> Result<usize, SisError> {
        match usize::from(output) {
            o if o == 0 || o > self.state.video.len() => Err(SisError::InvalidOutput),
            o => Ok(o - 1),
        }
    }

    fn set(&mut self, index: usize, input: u8, kind: TieKind) {
        if kind.switches_video() {
            self.state.video[index] = input;
        }
        if kind.switches_audio() {
            self.state.audio[index] = input;
        }
    }

    /// Makes every tie, or none if one is out of range (a quick tie is all or nothing).
    ///
    /// # Errors
    /// [`SisError::InvalidInput`], [`SisError::InvalidOutput`].
    pub fn tie(&mut self, ties: &[Tie]) -> Result<(), SisError> {
        let checked = ties
            .iter()
            .map(|t| Ok((self.input(t.input)?, self.output(t.output)?, t.kind)))
            .collect::<Result<Vec<_>, SisError>>()?;
        for (input, index, kind) in checked {
            self.set(index, input, kind);
        }
        Ok(())
    }

    /// Ties `input` (0 unties) to every output.
    ///
    /// # Errors
    /// [`SisError::InvalidInput`].
    pub fn tie_all(&mut self, input: u16, kind: TieKind) -> Result<(), SisError> {
        let input = self.input(input)?;
        (0..self.state.video.len()).for_each(|o| self.set(o, input, kind));
        Ok(())
    }

    /// Sets one output's mute; `Ok(true)` if that changed it.
    ///
    /// # Errors
    /// [`SisError::InvalidOutput`].
    pub fn mute(&mut self, plane: Plane, output: u16, mute: bool) -> Result<bool, SisError> {
        let o = self.output(output)?;
        let slot = match plane {
            Plane::Video => &mut self.state.video_mute[o],
            Plane::Audio => &mut self.state.audio_mute[o],
        };
        Ok(std::mem::replace(slot, mute) != mute)
    }

    /// Runs a command for a connection in verbose `mode` (which `ESC n CV CR` changes):
    /// the reply, and whether the matrix changed (then the reply is also the notice for
    /// other connections in verbose mode 1 or 3).
    pub fn execute(&mut self, mode: &mut VerboseMode, command: Command) -> (Response, bool) {
        match self.run(mode, command) {
            Ok(done) => done,
            Err(e) => (Response::Error(e), false),
        }
    }

    fn run(
        &mut self,
        mode: &mut VerboseMode,
        command: Command,
    ) -> Result<(Response, bool), SisError> {
        let change = match command {
            Command::Tie(tie) => {
                self.tie(&[tie])?;
                Response::Tie(tie)
            }
            Command::TieAll { input, kind } => {
                self.tie_all(input, kind)?;
                Response::TieAll { input, kind }
            }
            Command::QuickTie(ties) => {
                self.tie(&ties)?;
                Response::QuickTie
            }
            Command::VideoMute { output, mute } => {
                self.mute(Plane::Video, output, mute)?;
                Response::VideoMute { output, mute }
            }
            Command::AudioMute { output, mute } => {
                self.mute(Plane::Audio, output, mute)?;
                Response::AudioMute { output, mute }
            }
            Command::GlobalVideoMute(mute) => {
                self.state.video_mute.fill(mute);
                Response::GlobalVideoMute(mute)
            }
            Command::GlobalAudioMute(mute) => {
                self.state.audio_mute.fill(mute);
                Response::GlobalAudioMute(mute)
            }
            other => return Ok((self.read(mode, other)?, false)),
        };
        Ok((change, true))
    }

    /// Answers a command that changes no tie or mute. Queries are built in their
    /// tagged form and stripped to the bare value in modes 0 and 1.
    fn read(&self, mode: &mut VerboseMode, command: Command) -> Result<Response, SisError> {
        let st = &self.state;
        let tie = |input: u8, output, kind| Response::Tie(Tie::new(input.into(), output, kind));
        let tagged = match command {
            Command::ReadVideoTie { output } => {
                tie(st.video[self.output(output)?], output, TieKind::Video)
            }
            Command::ReadAudioTie { output } => {
                tie(st.audio[self.output(output)?], output, TieKind::Audio)
            }
            Command::ReadVideoMute { output } => Response::VideoMute {
                output,
                mute: st.video_mute[self.output(output)?],
            },
            Command::ReadAudioMute { output } => Response::AudioMute {
                output,
                mute: st.audio_mute[self.output(output)?],
            },
            Command::ReadMutes => Response::Mutes(
                (st.video_mute.iter().zip(&st.audio_mute))
                    .map(|(&video, &audio)| OutputMutes { video, audio })
                    .collect(),
            ),
            Command::ReadVerbose => Response::Verbose(*mode),
            Command::SetVerbose(new) => {
                *mode = new;
                return Ok(Response::Verbose(new));
            }
            Command::Information => {
                let (i, o) = (self.inputs, st.video.len());
                return Ok(Response::Value(format!("V{i}X{o} A{i}X{o}")));
            }
            Command::Firmware => return Ok(Response::Value(self.firmware.clone())),
            // Changes are handled by `run`.
            _ => return Err(SisError::InvalidCommand),
        };
        Ok(if mode.tagged() { tagged } else { untag(tagged) })
    }
}

/// The bare answer of modes 0 and 1: the value without its tag (`01`, `1`, `0120`).
fn untag(response: Response) -> Response {
    let value = match response {
        Response::Tie(tie) => format!("{:02}", tie.input),
        Response::VideoMute { mute, .. } | Response::AudioMute { mute, .. } => {
            u8::from(mute).to_string()
        }
        Response::Mutes(mutes) => mutes.iter().map(|m| char::from(m.digit())).collect(),
        Response::Verbose(mode) => mode.number().to_string(),
        other => return other,
    };
    Response::Value(value)
}

#[cfg(test)]
#[path = "matrix_tests.rs"]
mod tests;
