//! The codec: the MD5 vector, exact bytes both ways, typed errors, bounded lines, and
//! random input that must never panic.

use super::*;

fn parse(line: &str) -> Result<Message, ProtoError> {
    parse_line(line.as_bytes())
}

#[test]
fn digest_matches_the_hitachi_vector() {
    let expected = "e3d97429adffa11bce1f7275813d4bde";
    assert_eq!(auth_digest("a572f60c", "password"), expected);
    let random = AuthRandom::new("a572f60c").unwrap();
    assert_eq!(AuthDigest::compute(&random, "password").as_str(), expected);
    let upper = AuthDigest::new(&expected.to_uppercase()).unwrap();
    assert!(upper.matches(&random, "password") && !upper.matches(&random, "Password"));
}

#[test]
fn lines_round_trip_to_the_same_bytes() {
    for line in [
        "PJLINK 0",
        "PJLINK 1 498e4a67",
        "PJLINK ERRA",
        "%1POWR ?",
        "5d8409bc1c3fa39749434aa3a5c38682%1POWR 1",
        "%1POWR=OK",
        "%1INPT=ERR2",
        "%1LAMP=12345 1 200 0",
        "%1INFO=",
        "%1NAME=Hörsaal 1",
        "%2LKUP=00:11:22:aa:bb:cc",
        "%2SRCH",
    ] {
        let message = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(format_line(&message), format!("{line}\r").as_bytes());
    }
}

#[test]
fn parses_typed_messages() {
    let expected = Response {
        class: Class::One,
        body: Body::POWR,
        reply: Reply::Error(ErrorCode::UnavailableTime),
    };
    assert_eq!(parse("%1POWR=ERR3"), Ok(Message::Response(expected)));
    let command = Command::new(Class::Two, Body::INPT, "3A").unwrap();
    let message = Message::Command {
        digest: None,
        command,
    };
    assert_eq!(parse("%2INPT 3A"), Ok(message.clone()));
    assert_eq!(format_line(&message), b"%2INPT 3A\r");
    assert!(Command::query(Class::One, Body::ERST).is_query());
    assert!(Command::new(Class::One, Body::POWR, "").is_err());
}

#[test]
fn malformed_lines_are_typed_errors() {
    let long = format!("%1NAME={}", "x".repeat(129));
    let digest = "0123456789abcdef0123456789abcdef";
    let cases: [(&[u8], ErrorKind); 15] = [
        (b"", ErrorKind::Empty),
        (b"1POWR ?", ErrorKind::MissingHeader),
        (b"%3POWR ?", ErrorKind::BadClass),
        (b"%1powr ?", ErrorKind::BadBody),
        (b"%1PO", ErrorKind::BadBody),
        (b"%1POWR:1", ErrorKind::BadSeparator),
        (b"%1POWR ", ErrorKind::MissingParameter),
        (b"%1POWR", ErrorKind::MissingParameter),
        (b"%1POWR ?\n", ErrorKind::ControlByte { byte: b'\n', at: 8 }),
        (b"%1NAME=\xff", ErrorKind::NotUtf8),
        (long.as_bytes(), ErrorKind::TooLong),
        (
            format!("{digest}POWR").into_bytes().leak(),
            ErrorKind::BadDigest,
        ),
        (
            format!("{digest}%1POWR=1").into_bytes().leak(),
            ErrorKind::BadDigest,
        ),
        (b"PJLINK 1 xyz", ErrorKind::BadGreeting),
        (b"PJLINK 2", ErrorKind::BadGreeting),
    ];
    for (line, kind) in cases {
        assert_eq!(
            parse_line(line).map_err(|e| e.kind),
            Err(kind),
            "{}",
            Escaped::new(line)
        );
    }
    let err = parse_line(b"%1powr ?").unwrap_err();
    assert_eq!(
        err.to_string(),
        "command body is not 4 upper-case letters or digits: \"%1powr ?\""
    );
}

#[test]
fn typed_values() {
    assert_eq!(PowerState::parse("3"), Ok(PowerState::WarmUp));
    assert!(PowerState::parse("4").is_err());
    let code = InputCode::parse("3A").unwrap();
    assert_eq!((code.kind(), code.number()), (InputKind::Digital, 'A'));
    assert!(!code.is_class1() && InputCode::parse("31").unwrap().is_class1());
    for bad_code in ["30", "71", "3a", "3", "311", "", "0A"] {
        assert!(InputCode::parse(bad_code).is_err(), "{bad_code}");
    }
    let mute = AvMute::default().apply(AvMuteSet::parse("11").unwrap());
    assert_eq!(mute.as_str(), "11");
    assert_eq!(mute.apply(AvMuteSet::parse("21").unwrap()).as_str(), "31");
    assert_eq!(AvMute::parse("21").unwrap().as_str(), "21");
    assert!(AvMuteSet::parse("40").is_err() && AvMuteSet::parse("312").is_err());
    let errors = ErrorStatus::parse("012000").unwrap();
    assert_eq!(
        (errors.lamp, errors.temperature),
        (ErrorLevel::Warning, ErrorLevel::Error)
    );
    assert_eq!(errors.to_string(), "012000");
    assert!(ErrorStatus::parse("000003").is_err() && ErrorStatus::parse("00000").is_err());
    let lamps = parse_lamps("12345 1 0 0").unwrap();
    assert_eq!(
        lamps[0],
        Lamp {
            hours: 12345,
            on: true
        }
    );
    assert_eq!(format_lamps(&lamps), "12345 1 0 0");
    for bad_lamp in ["", "1", "123456 1", "1 2", "1  1", "-1 1"] {
        assert!(parse_lamps(bad_lamp).is_err(), "{bad_lamp}");
    }
    let mac = MacAddress::parse("00:11:22:AA:bb:cc").unwrap();
    assert_eq!(mac.to_string(), "00:11:22:aa:bb:cc");
    assert!(MacAddress::parse("00:11:22:aa:bb").is_err());
    assert!(MacAddress::parse("00:11:22:aa:bb:cc:dd").is_err());
}

#[test]
fn notifications_are_class_2_responses() {
    let Ok(Message::Response(response)) = parse("%2ERST=000020") else {
        panic!("not a response");
    };
    let notification = Notification::from_response(&response).unwrap().unwrap();
    assert!(matches!(notification, Notification::Errors(e) if e.filter == ErrorLevel::Error));
    assert_eq!(notification.to_response(), response);
    let Ok(Message::Response(polled)) = parse("%1POWR=1") else {
        panic!("not a response");
    };
    assert_eq!(Notification::from_response(&polled), Ok(None));
}

#[test]
fn next_line_is_bounded() {
    let mut buf = BytesMut::from(&b"%1POWR ?\r%1INPT"[..]);
    assert_eq!(next_line(&mut buf).unwrap().unwrap(), &b"%1POWR ?"[..]);
    assert_eq!(next_line(&mut buf).unwrap(), None);
    buf.extend_from_slice(&[b'x'; MAX_FIRST_LINE]);
    assert_eq!(
        next_line(&mut buf).map_err(|e| e.kind),
        Err(ErrorKind::TooLong)
    );
}

#[test]
fn never_panics_on_arbitrary_bytes() {
    // Bytes drawn mostly from PJLink's own alphabet, so the parser gets deep.
    const ALPHABET: &[u8] = b"%12 =?PJLINKERRAOKPOWRINPT0123456789abcdef:\r\n\x00\xff";
    let mut rng = fastrand::Rng::with_seed(4352);
    for round in 0..5_000 {
        let len = rng.usize(..if round % 10 == 0 { 400 } else { 48 });
        let mut line: Vec<u8> = (0..len)
            .map(|_| match rng.u8(..8) {
                0 => rng.u8(..),
                _ => ALPHABET[rng.usize(..ALPHABET.len())],
            })
            .collect();
        if round % 3 == 0 && line.len() > 6 {
            line[..6].copy_from_slice(b"%1POWR");
        }
        if let Ok(message) = parse_line(&line) {
            let again = format_line(&message);
            assert_eq!(parse_line(&again[..again.len() - 1]), Ok(message));
        }
        let text = String::from_utf8_lossy(&line);
        let _ = (
            PowerState::parse(&text),
            InputCode::parse(&text),
            AvMute::parse(&text),
        );
        let _ = (
            ErrorStatus::parse(&text),
            parse_lamps(&text),
            MacAddress::parse(&text),
        );
        let mut buf = BytesMut::from(&line[..]);
        while let Ok(Some(_)) = next_line(&mut buf) {}
    }
}
