//! The codec and the [`Matrix`](super::Matrix): the manuals' commands and exact response
//! bytes, typed errors, and random input that must never panic.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::proto::*;
use super::*;
use Command as C;
use Response as R;
use TieKind::{All, Audio, Rgb, Video};

const fn tie(input: u16, output: u16, kind: TieKind) -> Tie {
    Tie::new(input, output, kind)
}

fn vmute(output: u16, mute: bool) -> Command {
    C::VideoMute { output, mute }
}

fn amute(output: u16, mute: bool) -> Command {
    C::AudioMute { output, mute }
}

fn tie_all(input: u16, kind: TieKind) -> Command {
    C::TieAll { input, kind }
}

fn rvmute(output: u16, mute: bool) -> Response {
    R::VideoMute { output, mute }
}

fn ramute(output: u16, mute: bool) -> Response {
    R::AudioMute { output, mute }
}

fn mutes(video: bool, audio: bool) -> OutputMutes {
    OutputMutes { video, audio }
}

fn whole(bytes: &[u8]) -> Command {
    match parse_command(bytes) {
        Ok(Some((command, n))) if n == bytes.len() => command,
        other => panic!("{}: {other:?}", bytes.escape_ascii()),
    }
}

#[test]
fn commands_from_the_manuals_parse_incrementally_and_round_trip() {
    let cases: Vec<(&[u8], Command)> = vec![
        (b"1*3!", C::Tie(tie(1, 3, All))),
        (b"8*4&", C::Tie(tie(8, 4, Rgb))),
        (b"7*5%", C::Tie(tie(7, 5, Video))),
        (b"6*4$", C::Tie(tie(6, 4, Audio))),
        (b"003*003%", C::Tie(tie(3, 3, Video))),
        (b"0*3!", C::Tie(tie(0, 3, All))),
        (b"5*!", tie_all(5, All)),
        (b"2*$", tie_all(2, Audio)),
        (
            b"\x1B+Q3*4!3*5%\r",
            C::QuickTie(vec![tie(3, 4, All), tie(3, 5, Video)]),
        ),
        (b"7%", C::ReadVideoTie { output: 7 }),
        (b"5&", C::ReadVideoTie { output: 5 }),
        (b"3$", C::ReadAudioTie { output: 3 }),
        (b"3*1B", vmute(3, true)),
        (b"3*0b", vmute(3, false)),
        (b"12*1Z", amute(12, true)),
        (b"1*B", C::GlobalVideoMute(true)),
        (b"0*z", C::GlobalAudioMute(false)),
        (b"3B", C::ReadVideoMute { output: 3 }),
        (b"3Z", C::ReadAudioMute { output: 3 }),
        (b"\x1BVM\r", C::ReadMutes),
        (b"\x1B3CV\r", C::SetVerbose(VerboseMode::VerboseTagged)),
        (b"\x1Bcv\n", C::ReadVerbose),
        (b"I", C::Information),
        (b"q", C::Firmware),
        (b"\r\n 1*1!", C::Tie(tie(1, 1, All))),
    ];
    for (bytes, expected) in cases {
        assert_eq!(whole(bytes), expected);
        for k in 0..bytes.len() {
            assert!(
                matches!(parse_command(&bytes[..k]), Ok(None)),
                "{k}: {expected:?}"
            );
        }
        let mut out = BytesMut::new();
        format_command(&expected, &mut out);
        assert_eq!(whole(&out), expected);
    }
    // Back to back, as the manuals allow.
    let mut rest: &[u8] = b"1*1!02*02&003*003%4*8$";
    let mut got = Vec::new();
    while let Ok(Some((command, n))) = parse_command(rest) {
        got.push(command);
        rest = &rest[n..];
    }
    let ties = [
        tie(1, 1, All),
        tie(2, 2, Rgb),
        tie(3, 3, Video),
        tie(4, 8, Audio),
    ];
    assert_eq!(got, ties.map(C::Tie));
}

#[test]
fn bad_commands_name_the_device_error_and_the_bytes_to_drop() {
    use SisError::{InvalidCommand as E10, InvalidValue as E13};
    let cases: &[(&[u8], SisError, usize)] = &[
        (b"x", E10, 1),
        (b"3!", E10, 2),
        (b"1*3x", E10, 4),
        (b"1*5B", E13, 4),
        (b"1234*1!", E10, 4),
        (b"1*\x1B3CV\r", E10, 2),
        (b"\x1B7CV\r", E13, 5),
        (b"\x1B12CV\r", E13, 6),
        (b"\x1BXYZ\r", E10, 5),
        (b"\x1B+Q\r", E10, 4),
        (b"\x1B+Q1*2\r", E10, 7),
        (b"\x1Babc\x1B", E10, 4),
    ];
    for (bytes, code, consumed) in cases {
        let e = parse_command(bytes).expect_err("invalid");
        assert_eq!((e.code(), e.consumed()), (*code, *consumed), "{e}");
    }
    let mut long = vec![proto::ESC];
    long.resize(MAX_COMMAND_LEN + 10, b'A');
    let e = parse_command(&long).expect_err("too long");
    assert!(matches!(
        e,
        ProtoError::CommandTooLong {
            consumed: MAX_COMMAND_LEN,
            ..
        }
    ));
}

#[test]
fn responses_have_exact_bytes_and_parse_back() {
    let banner = "(c) Copyright 2024, Extron Electronics DXP, V1.23";
    let cases: Vec<(Response, &[u8])> = vec![
        (R::Tie(tie(1, 3, All)), b"Out03 In01 All\r\n"),
        (R::Tie(tie(10, 4, Rgb)), b"Out04 In10 RGB\r\n"),
        (
            R::TieAll {
                input: 5,
                kind: All,
            },
            b"In05 All\r\n",
        ),
        (R::QuickTie, b"Qik\r\n"),
        (rvmute(3, true), b"Vmt03*1\r\n"),
        (ramute(12, false), b"Amt12*0\r\n"),
        (R::GlobalVideoMute(true), b"Vmt1\r\n"),
        (R::GlobalAudioMute(false), b"Amt0\r\n"),
        (
            R::Mutes(vec![mutes(false, false), mutes(true, true)]),
            b"Mut03\r\n",
        ),
        (R::Verbose(VerboseMode::VerboseTagged), b"Vrb3\r\n"),
        (R::Error(SisError::InvalidInput), b"E01\r\n"),
        (R::Error(SisError::MaxConnections), b"E26\r\n"),
        (R::Error(SisError::Other(28)), b"E28\r\n"),
        (R::PasswordPrompt, b"\r\nPassword:"),
        (
            R::Login(Role::Administrator),
            b"\r\nLogin Administrator\r\n",
        ),
        (R::Login(Role::User), b"\r\nLogin User\r\n"),
        (
            R::Banner(banner.into()),
            format!("{banner}\r\n").leak().as_bytes(),
        ),
        (R::Value("02".into()), b"02\r\n"),
    ];
    for (response, bytes) in cases {
        let mut out = BytesMut::new();
        format_response(&response, &mut out);
        assert_eq!(&out[..], bytes, "{response:?}");
        assert_eq!(
            parse_response(bytes).ok().flatten(),
            Some((response, bytes.len()))
        );
    }
    // Other models' spellings and the front panel's.
    let variants: Vec<(&[u8], Response)> = vec![
        (b"Out3 In1 All\r\n", R::Tie(tie(1, 3, All))),
        (
            b"In5 All\n",
            R::TieAll {
                input: 5,
                kind: All,
            },
        ),
        (b"Vmt03 1\r\n", rvmute(3, true)),
        (b"Amt03*3\r\n", ramute(3, true)),
        (
            b"12Mut\r\n",
            R::Mutes(vec![mutes(true, false), mutes(false, true)]),
        ),
        (b"V8X8 A8X8\r\n", R::Value("V8X8 A8X8".into())),
        (b"Out03 In01\r\n", R::Value("Out03 In01".into())),
    ];
    for (bytes, response) in variants {
        assert_eq!(
            parse_response(bytes).ok().flatten(),
            Some((response, bytes.len()))
        );
    }
    let mut out = BytesMut::new();
    format_panel_mute(Plane::Video, 3, true, &mut out);
    assert_eq!(&out[..], b"Vmt03 1\r\n");
    assert!(matches!(parse_response(b"\r\nOut03 In"), Ok(None)));
    let long = [b'x'; MAX_LINE_LEN + 1];
    assert!(matches!(
        parse_response(&long),
        Err(ProtoError::LineTooLong { .. })
    ));
}

#[test]
fn random_bytes_never_panic_and_always_progress() {
    const ALPHABET: &[u8] = b"0123456789*!&%$BbZzQqIVCM+\x1B\r\n -EOutInAllVmt";
    let mut rng = fastrand::Rng::with_seed(0x5153);
    for _ in 0..5000 {
        let bytes: Vec<u8> = (0..rng.usize(0..64))
            .map(|_| match rng.bool() {
                true => ALPHABET[rng.usize(..ALPHABET.len())],
                false => rng.u8(..),
            })
            .collect();
        let mut rest = &bytes[..];
        loop {
            let n = match parse_command(rest) {
                Ok(Some((_, n))) => n,
                Ok(None) => break,
                Err(e) => e.consumed(),
            };
            assert!(n > 0 && n <= rest.len(), "{}", rest.escape_ascii());
            rest = &rest[n..];
        }
        assert!(rest.len() <= MAX_COMMAND_LEN);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) | Err(_) = ClientCodec.decode(&mut buf) {}
        assert!(buf.len() <= MAX_LINE_LEN);
    }
}
