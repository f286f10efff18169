//! The codec's unit tests: the manuals' example bytes both ways, every error kind, and
//! random input that must never panic.

use super::proto::*;

const INQUIRIES: [Inquiry; 3] = [
    Inquiry::Power,
    Inquiry::ZoomPosition,
    Inquiry::PanTiltPosition,
];

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn drive(direction: Direction, pan: u8, tilt: u8) -> Command {
    Command::Drive(direction, Speed { pan, tilt })
}

fn at(pan: i16, tilt: i16) -> Position {
    Position { pan, tilt }
}

#[test]
fn header_round_trip_and_errors() {
    let bytes = encode_datagram(PayloadType::Command, Seq(0x0102_0304), &[0x81, 0xFF]);
    assert_eq!(bytes, Ok(hex("01 00 00 02 01 02 03 04 81 FF")));
    let reset = Datagram::control(Seq(1), Control::Reset);
    assert_eq!(reset.encode(), hex("02 00 00 01 00 00 00 01 01"));
    for code in [0x0100, 0x0110, 0x0111, 0x0120, 0x0200, 0x0201] {
        let kind = PayloadType::from_code(code).unwrap();
        let dg = Datagram::new(kind, Seq(u32::MAX), Payload::new(&[1, 2]).unwrap());
        assert_eq!((kind.code(), decode_datagram(&dg.encode())), (code, Ok(dg)));
    }
    assert_eq!(Seq(u32::MAX).next(), Seq(0));
    let err = |s: &str| decode_datagram(&hex(s)).unwrap_err();
    assert!(matches!(err("01 00 00"), ProtoError::TooShort(_)));
    assert_eq!(
        err("01 00 00 05 00 00 00 01 81 01 04 00 02 FF"),
        ProtoError::LengthField(5, 6)
    );
    assert_eq!(
        err("02 00 00 00 00 00 00 01"),
        ProtoError::LengthField(0, 0)
    );
    assert_eq!(
        err("03 00 00 01 00 00 00 07 01"),
        ProtoError::UnknownType(0x0300, Seq(7))
    );
    let too_long = decode_datagram(&[0xFF; 40]).unwrap_err();
    assert!(matches!(too_long, ProtoError::TooLong(_)));
    let msg = too_long.to_string();
    assert!(
        msg.contains("FF FF") && msg.ends_with("…(+8 bytes)"),
        "{msg}"
    );
    assert_eq!(Escaped::new(&[]).to_string(), "<empty>");
    let sizes = [&[][..], &[0; 17]].map(|p| encode_datagram(PayloadType::Reply, Seq(1), p));
    assert_eq!(
        sizes,
        [
            Err(ProtoError::PayloadSize(0)),
            Err(ProtoError::PayloadSize(17))
        ]
    );
}

#[test]
fn commands_match_the_manual_bytes() {
    use Direction::*;
    let cases = [
        ("81 01 04 00 02 FF", Command::Power(Power::On)),
        ("81 01 04 00 03 FF", Command::Power(Power::Off)),
        ("81 01 04 07 00 FF", Command::Zoom(Zoom::Stop)),
        ("81 01 04 07 02 FF", Command::Zoom(Zoom::Tele(None))),
        ("81 01 04 07 03 FF", Command::Zoom(Zoom::Wide(None))),
        ("81 01 04 07 25 FF", Command::Zoom(Zoom::Tele(Some(5)))),
        ("81 01 04 07 37 FF", Command::Zoom(Zoom::Wide(Some(7)))),
        ("81 01 04 47 01 02 03 04 FF", Command::ZoomTo(0x1234)),
        ("81 01 06 01 18 17 03 01 FF", drive(Up, 0x18, 0x17)),
        ("81 01 06 01 05 06 03 02 FF", drive(Down, 5, 6)),
        ("81 01 06 01 01 01 01 03 FF", drive(Left, 1, 1)),
        ("81 01 06 01 01 01 02 03 FF", drive(Right, 1, 1)),
        ("81 01 06 01 01 01 01 01 FF", drive(UpLeft, 1, 1)),
        ("81 01 06 01 01 01 02 01 FF", drive(UpRight, 1, 1)),
        ("81 01 06 01 01 01 01 02 FF", drive(DownLeft, 1, 1)),
        ("81 01 06 01 01 01 02 02 FF", drive(DownRight, 1, 1)),
        ("81 01 06 01 01 01 03 03 FF", drive(Stop, 1, 1)),
        (
            "81 01 06 02 18 17 0D 0E 00 00 01 02 00 00 FF",
            Command::MoveTo(at(-8704, 0x1200), Speed::MAX),
        ),
        ("81 01 06 04 FF", Command::Home),
        (
            "81 01 04 3F 00 03 FF",
            Command::Preset(PresetAction::Reset, 3),
        ),
        (
            "81 01 04 3F 01 0F FF",
            Command::Preset(PresetAction::Set, 15),
        ),
        (
            "81 01 04 3F 02 01 FF",
            Command::Preset(PresetAction::Recall, 1),
        ),
        ("81 21 FF", Command::Cancel(1)),
    ];
    for (bytes, cmd) in cases {
        assert_eq!(cmd.encode().as_bytes(), hex(bytes), "{cmd:?}");
        assert_eq!(Command::decode(&hex(bytes)), Ok(cmd), "{bytes}");
    }
    for bytes in [
        "81 01 04 00 04 FF",
        "81 01 04 00 02",
        "82 01 04 00 02 FF",
        "81 01 04 07 28 FF",
        "81 01 04 47 01 02 13 04 FF",
        "81 01 06 01 80 01 03 01 FF",
        "81 01 06 01 01 01 04 01 FF",
        "81 01 06 02 01 01 00 00 00 00 00 00 00 FF",
        "81 01 04 3F 03 01 FF",
        "81 09 04 00 FF",
        "FF",
    ] {
        assert!(
            matches!(Command::decode(&hex(bytes)), Err(ProtoError::Syntax(_))),
            "{bytes}"
        );
    }
}

#[test]
fn inquiries_answers_replies_and_control() {
    for (i, bytes) in ["81 09 04 00 FF", "81 09 04 47 FF", "81 09 06 12 FF"]
        .iter()
        .enumerate()
    {
        assert_eq!(INQUIRIES[i].encode().as_bytes(), hex(bytes));
        assert_eq!(Inquiry::decode(&hex(bytes)), Ok(INQUIRIES[i]));
    }
    assert!(Inquiry::decode(&hex("81 09 04 48 FF")).is_err());
    for (bytes, ans) in [
        ("90 50 02 FF", Answer::Power(Power::On)),
        ("90 50 03 FF", Answer::Power(Power::Off)),
        ("90 50 04 00 00 00 FF", Answer::ZoomPosition(0x4000)),
        (
            "90 50 0D 0E 00 00 00 00 00 00 FF",
            Answer::PanTiltPosition(at(-8704, 0)),
        ),
        (
            "90 50 02 02 00 00 0F 0C 00 00 FF",
            Answer::PanTiltPosition(at(0x2200, -1024)),
        ),
    ] {
        assert_eq!(ans.encode().as_bytes(), hex(bytes));
        assert_eq!(Answer::decode(ans.inquiry(), &hex(bytes)), Ok(ans));
        assert_eq!(Reply::decode(&hex(bytes)), Ok(Reply::Data(ans.encode())));
    }
    assert!(Answer::decode(Inquiry::ZoomPosition, &hex("90 50 02 FF")).is_err());
    assert!(Answer::decode(Inquiry::Power, &hex("90 60 41 FF")).is_err());
    for (bytes, reply) in [
        ("90 41 FF", Reply::Ack(1)),
        ("90 52 FF", Reply::Completion(2)),
        ("90 50 FF", Reply::Completion(0)),
        ("90 60 02 FF", Reply::Error(0, ViscaError::Syntax)),
        ("90 60 03 FF", Reply::Error(0, ViscaError::BufferFull)),
        ("90 61 04 FF", Reply::Error(1, ViscaError::Cancelled)),
        ("90 62 05 FF", Reply::Error(2, ViscaError::NoSocket)),
        ("90 61 41 FF", Reply::Error(1, ViscaError::NotExecutable)),
    ] {
        assert_eq!(reply.encode().as_bytes(), hex(bytes));
        assert_eq!(Reply::decode(&hex(bytes)), Ok(reply));
    }
    assert!(
        Reply::decode(&hex("90 60 42 FF")).is_err() && Reply::decode(&hex("91 41 FF")).is_err()
    );
    for (bytes, control) in [
        ("01", Control::Reset),
        ("0F 01", Control::Error(ControlError::Sequence)),
        ("0F 02", Control::Error(ControlError::MessageType)),
    ] {
        assert_eq!(control.encode().as_bytes(), hex(bytes));
        assert_eq!(Control::decode(&hex(bytes)), Ok(control));
    }
    assert!(Control::decode(&hex("0F 03")).is_err());
    assert_eq!(ControlReply::decode(&[1]), Ok(ControlReply::Ack));
    assert_eq!(ControlReply::Ack.encode().as_bytes(), [1]);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x5649_5343);
    let prefixes = [
        [1, 0x00],
        [1, 0x10],
        [1, 0x11],
        [2, 0x00],
        [0x81, 0x01],
        [0x90, 0x50],
    ];
    for i in 0..5000 {
        let len = rng.usize(0..40);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if i % 3 == 0 && len >= 8 {
            // A plausible header, so the payload decoders see plenty of input too.
            bytes[..2].copy_from_slice(&prefixes[rng.usize(..prefixes.len())]);
            bytes[2..4].copy_from_slice(&((len - 8) as u16).to_be_bytes());
        }
        if let (true, Some(last)) = (rng.bool(), bytes.last_mut()) {
            *last = 0xFF;
        }
        if let Ok(d) = decode_datagram(&bytes) {
            assert_eq!(d.encode(), bytes);
        }
        for payload in [&bytes[..], bytes.get(8..).unwrap_or_default()] {
            let _ = Command::decode(payload).map(|c| c.encode());
            let _ = Reply::decode(payload).map(|r| r.encode());
            let _ = (Control::decode(payload), ControlReply::decode(payload));
            let _ = Inquiry::decode(payload).map(|i| i.encode());
            for inq in INQUIRIES {
                let _ = Answer::decode(inq, payload).map(|a| a.encode());
            }
        }
    }
}
