//! The X32 OSC codec (`devices/x32/proto.rs`): exact bytes for the messages the
//! adapter sends, every error kind, the meter blob, the fader law; then properties:
//! round trips of every request and reply, bundles, and garbage that must never panic.

use avbus::devices::x32::proto::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rosc::{OscBundle, OscMessage, OscPacket, OscTime, OscType};

/// Modest case count so that the whole file runs in a few seconds in debug; no
/// regression files are written next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ch(n: u8) -> Channel {
    Channel::new(n).unwrap()
}

/// An OSC string: the bytes, a NUL, padded with NULs to a multiple of 4.
fn osc_str(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b
}

fn osc(packet: OscPacket) -> Vec<u8> {
    rosc::encoder::encode(&packet).unwrap()
}

fn message(addr: &str, args: Vec<OscType>) -> Vec<u8> {
    osc(OscPacket::Message(OscMessage {
        addr: addr.into(),
        args,
    }))
}

#[test]
fn requests_have_the_consoles_bytes() {
    let mut set = osc_str("/ch/01/mix/fader");
    set.extend(osc_str(",f"));
    set.extend(0.75f32.to_be_bytes());
    assert_eq!(
        Request::Set(Param::Fader(ch(1)), ParamValue::Fader(0.75)).encode(),
        set
    );
    let mut get = osc_str("/ch/32/mix/on");
    get.extend(osc_str(","));
    assert_eq!(Request::Get(Param::On(ch(32))).encode(), get);
    let mut mute = osc_str("/ch/07/mix/on");
    mute.extend(osc_str(",i"));
    mute.extend(0i32.to_be_bytes());
    assert_eq!(
        Request::Set(Param::On(ch(7)), ParamValue::On(false)).encode(),
        mute
    );
    // `/meters ,siii "/meters/1" 0 0 <tf>`, as in the protocol notes.
    let mut meters = osc_str("/meters");
    meters.extend(osc_str(",siii"));
    meters.extend(osc_str("/meters/1"));
    for i in [0i32, 0, 1] {
        meters.extend(i.to_be_bytes());
    }
    let request = Request::Meters {
        bank: MeterBank::Channels,
        time_factor: 1,
    };
    assert_eq!(request.encode(), meters);
    assert_eq!(Request::decode(&meters), Ok(vec![request]));
    let mut xremote = osc_str("/xremote");
    xremote.extend(osc_str(","));
    assert_eq!(Request::XRemote.encode(), xremote);
}

#[test]
fn a_bare_address_is_a_request_too() {
    // Older OSC senders leave out the type tag string entirely.
    assert_eq!(
        Request::decode(&osc_str("/xinfo")),
        Ok(vec![Request::XInfo])
    );
    assert_eq!(
        Request::decode(&osc_str("/ch/05/config/name")),
        Ok(vec![Request::Get(Param::Name(ch(5)))])
    );
    assert_eq!(
        Request::decode(&osc_str("/status")),
        Ok(vec![Request::Status])
    );
    // Shorter `/meters` forms carry the bank's own parameters; time factor 1.
    let short = message("/meters", vec![OscType::String("/meters/0".into())]);
    let bank = MeterBank::Overview;
    assert_eq!(
        Request::decode(&short),
        Ok(vec![Request::Meters {
            bank,
            time_factor: 1
        }])
    );
    let renew = message("/renew", vec![]);
    assert_eq!(Request::decode(&renew), Ok(vec![Request::Renew(None)]));
}

#[test]
fn replies_decode_into_their_types() {
    let info = message(
        "/xinfo",
        ["192.168.0.64", "X32-02-4A-53", "X32", "4.06"]
            .map(|s| OscType::String(s.into()))
            .into(),
    );
    let decoded = Reply::decode(&info);
    let Ok([Reply::XInfo(i)]) = decoded.as_deref() else {
        panic!("{decoded:?}");
    };
    assert_eq!((i.model.as_str(), i.version.as_str()), ("X32", "4.06"));
    let status = message(
        "/status",
        ["active", "192.168.0.64", "X32-02-4A-53"]
            .map(|s| OscType::String(s.into()))
            .into(),
    );
    assert!(matches!(
        Reply::decode(&status).as_deref(),
        Ok([Reply::Status(s)]) if s.state == "active"
    ));
    // The meter blob: count 2, then 1.0 and 0.5, all little-endian.
    let blob = vec![2, 0, 0, 0, 0, 0, 0x80, 0x3F, 0, 0, 0, 0x3F];
    assert_eq!(encode_meter_blob(&[1.0, 0.5]), blob);
    let meters = message("/meters/1", vec![OscType::Blob(blob)]);
    assert_eq!(
        Reply::decode(&meters),
        Ok(vec![Reply::Meters(MeterBank::Channels, vec![1.0, 0.5])])
    );
    // Unknown but well-formed: not an error; a console pushes much more than this.
    for address in [
        "/ch/33/mix/fader",
        "/ch/01/eq/1/g",
        "/-stat/solosw/01",
        "/ch/1/mix/on",
    ] {
        let m = message(address, vec![OscType::Float(0.5)]);
        assert_eq!(Reply::decode(&m), Ok(vec![Reply::Other(address.into())]));
    }
    let on = message("/ch/02/mix/on", vec![OscType::Float(1.0)]);
    assert_eq!(
        Reply::decode(&on),
        Ok(vec![Reply::Param(Param::On(ch(2)), ParamValue::On(true))])
    );
}

#[test]
fn every_error_has_its_kind() {
    let err = |b: &[u8]| Reply::decode(b).unwrap_err();
    assert_eq!(err(&[]), ProtoError::Empty);
    assert_eq!(err(&[0; 5000]), ProtoError::TooLong(5000));
    assert!(matches!(err(b"garbage!"), ProtoError::Osc(_)));
    let mut trailing = Request::XInfo.encode();
    trailing.extend([1, 2, 3, 4]);
    assert_eq!(Request::decode(&trailing), Err(ProtoError::Trailing(4)));
    let fader = |args| message("/ch/01/mix/fader", args);
    assert!(matches!(
        err(&fader(vec![OscType::String("x".into())])),
        ProtoError::Arguments(a, t) if a == "/ch/01/mix/fader" && t == "s"
    ));
    assert!(matches!(
        err(&fader(vec![OscType::Float(f32::NAN)])),
        ProtoError::Value(..)
    ));
    let long = message(
        "/ch/01/config/name",
        vec![OscType::String("thirteen char".into())],
    );
    assert!(matches!(err(&long), ProtoError::Value(..)));
    assert!(matches!(
        err(&message("/xinfo", vec![OscType::Int(1)])),
        ProtoError::Arguments(..)
    ));
    assert!(matches!(
        Request::decode(&message("/xremote", vec![OscType::Int(1)])),
        Err(ProtoError::Arguments(..))
    ));
    let meters = |blob: Vec<u8>| err(&message("/meters/1", vec![OscType::Blob(blob)]));
    assert_eq!(meters(vec![1, 0]), ProtoError::Blob(BlobError::Short(2)));
    assert_eq!(
        meters((-1i32).to_le_bytes().to_vec()),
        ProtoError::Blob(BlobError::Negative(-1))
    );
    assert_eq!(
        meters(1000i32.to_le_bytes().to_vec()),
        ProtoError::Blob(BlobError::TooMany(1000))
    );
    let mut truncated = encode_meter_blob(&[0.5; 3]);
    truncated.truncate(10);
    assert_eq!(
        meters(truncated),
        ProtoError::Blob(BlobError::Truncated {
            declared: 3,
            available: 1
        })
    );
    let mut longer = encode_meter_blob(&[0.5]);
    longer.extend([0; 4]);
    assert_eq!(meters(longer), ProtoError::Blob(BlobError::Trailing(4)));
}

#[test]
fn bundles_are_flattened_within_bounds() {
    let pair = encode_bundle(&[Request::XInfo.encode(), Request::XRemote.encode()]).unwrap();
    assert_eq!(
        Request::decode(&pair),
        Ok(vec![Request::XInfo, Request::XRemote])
    );
    let leaf = OscPacket::Message(OscMessage {
        addr: "/status".into(),
        args: vec![],
    });
    let nest = |depth: usize| {
        (0..depth).fold(leaf.clone(), |inner, _| {
            OscPacket::Bundle(OscBundle {
                timetag: OscTime {
                    seconds: 0,
                    fractional: 1,
                },
                content: vec![inner],
            })
        })
    };
    assert_eq!(
        Request::decode(&osc(nest(MAX_BUNDLE_DEPTH))),
        Ok(vec![Request::Status])
    );
    assert_eq!(
        Request::decode(&osc(nest(MAX_BUNDLE_DEPTH + 1))),
        Err(ProtoError::TooDeep)
    );
    let many = vec![Request::Status.encode(); MAX_MESSAGES + 1];
    let bundle = encode_bundle(&many).unwrap();
    assert_eq!(Request::decode(&bundle), Err(ProtoError::TooManyMessages));
}

#[test]
fn the_fader_law_and_the_meter_scale() {
    for (f, db) in [
        (0.0, -90.0),
        (0.0625, -60.0),
        (0.25, -30.0),
        (0.5, -10.0),
        (0.75, 0.0),
        (1.0, 10.0),
    ] {
        assert_eq!(fader_to_db(f), db, "{f}");
        assert_eq!(db_to_fader(db), f, "{db}");
    }
    assert_eq!(db_to_fader(f64::NAN), 0.0);
    assert_eq!(db_to_fader(40.0), 1.0);
    assert_eq!(quantize_fader(0.5), 512.0 / 1023.0);
    assert_eq!(quantize_fader(2.0), 1.0);
    assert_eq!(quantize_fader(f32::NAN), 0.0);
    assert_eq!(meter_db(1.0), 0.0);
    assert_eq!(meter_db(0.0), METER_FLOOR_DB);
    assert_eq!(meter_db(f32::NAN), METER_FLOOR_DB);
    assert_eq!(meter_db(8.0), METER_MAX_DB);
    assert!((meter_db(0.1) + 20.0).abs() < 1e-6);
    assert!(valid_name("Lectern") && valid_name(""));
    assert!(!valid_name("thirteen char") && !valid_name("tab\t") && !valid_name("né"));
    assert_eq!(Param::parse("/ch/07/mix/fader"), Some(Param::Fader(ch(7))));
    assert_eq!(Param::parse("/ch/+7/mix/fader"), None);
    assert_eq!(Param::all().count(), 96);
    assert_eq!(quote(&[0x2F, 0, 0xFF]), "/\\x00\\xff");
    assert!(quote(&[b'a'; 100]).ends_with("…(+52 bytes)"));
}

// ----- properties ------------------------------------------------------------------

fn channel() -> impl Strategy<Value = Channel> {
    (1..=CHANNELS).prop_map(ch)
}

fn name() -> impl Strategy<Value = String> {
    "[ -~]{0,12}"
}

fn param_and_value() -> impl Strategy<Value = (Param, ParamValue)> {
    prop_oneof![
        (channel(), -2.0f32..2.0).prop_map(|(c, f)| (Param::Fader(c), ParamValue::Fader(f))),
        (channel(), any::<bool>()).prop_map(|(c, on)| (Param::On(c), ParamValue::On(on))),
        (channel(), name()).prop_map(|(c, n)| (Param::Name(c), ParamValue::Name(n))),
    ]
}

fn bank() -> impl Strategy<Value = MeterBank> {
    prop_oneof![Just(MeterBank::Overview), Just(MeterBank::Channels)]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::XInfo),
        Just(Request::Status),
        Just(Request::XRemote),
        param_and_value().prop_map(|(p, _)| Request::Get(p)),
        param_and_value().prop_map(|(p, v)| Request::Set(p, v)),
        (bank(), any::<i32>())
            .prop_map(|(bank, time_factor)| Request::Meters { bank, time_factor }),
        proptest::option::of(bank()).prop_map(Request::Renew),
        "/[a-z]{1,8}/[a-z0-9]{1,8}".prop_map(Request::Other),
    ]
}

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,24}"
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (text(), text(), text(), text()).prop_map(|(ip, name, model, version)| {
            Reply::XInfo(ConsoleInfo {
                ip,
                name,
                model,
                version,
            })
        }),
        (text(), text(), text()).prop_map(|(state, ip, name)| Reply::Status(ConsoleStatus {
            state,
            ip,
            name
        })),
        param_and_value().prop_map(|(p, v)| Reply::Param(p, v)),
        (bank(), vec(-8.0f32..8.0, 0..=MAX_METER_VALUES))
            .prop_map(|(bank, values)| Reply::Meters(bank, values)),
        "/[a-z]{1,8}/[a-z0-9]{1,8}".prop_map(Reply::Other),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn requests_round_trip(r in request()) {
        prop_assert_eq!(Request::decode(&r.encode()), Ok(vec![r]));
    }

    #[test]
    fn replies_round_trip(r in reply()) {
        prop_assert_eq!(Reply::decode(&r.encode()), Ok(vec![r]));
    }

    #[test]
    fn bundles_keep_their_order(rs in vec(request(), 1..8)) {
        let bundle = encode_bundle(&rs.iter().map(Request::encode).collect::<Vec<_>>()).unwrap();
        prop_assert_eq!(Request::decode(&bundle), Ok(rs));
    }

    #[test]
    fn meter_blobs_round_trip_bit_for_bit(bits in vec(any::<u32>(), 0..=MAX_METER_VALUES)) {
        let values: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
        let back = decode_meter_blob(&encode_meter_blob(&values)).unwrap();
        prop_assert_eq!(back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits);
    }

    #[test]
    fn truncated_blobs_are_errors(values in vec(any::<f32>(), 1..64), cut in any::<prop::sample::Index>()) {
        let blob = encode_meter_blob(&values);
        let cut = cut.index(blob.len());
        prop_assert!(decode_meter_blob(&blob[..cut]).is_err());
    }

    #[test]
    fn garbage_never_panics(bytes in vec(any::<u8>(), 0..600)) {
        let _ = Request::decode(&bytes);
        let _ = Reply::decode(&bytes);
        let _ = decode_meter_blob(&bytes);
    }

    #[test]
    fn damaged_datagrams_never_panic(
        r in reply(),
        cut in any::<prop::sample::Index>(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = r.encode();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = Reply::decode(&bytes);
        let _ = Request::decode(&bytes);
    }

    #[test]
    fn the_fader_law_is_monotonic_and_inverts(a in 0.0f32..=1.0, b in 0.0f32..=1.0) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(fader_to_db(lo) <= fader_to_db(hi));
        prop_assert!((db_to_fader(fader_to_db(a)) - a).abs() < 1e-5);
        let q = quantize_fader(a);
        prop_assert_eq!(quantize_fader(q), q);
        prop_assert!((q - a).abs() <= 0.5 / 1023.0 + f32::EPSILON);
    }
}
