//! The decoders' fast paths (`pub` from clients, `update` from the bus) against
//! serde's tagged decoding, which they must match exactly: on maps built key by key,
//! in any order, with fields of the wrong type, unknown keys, keys given as field
//! indexes, a second `t`, and any value MessagePack can carry.

use proptest::prelude::*;
use rmp::encode as enc;

use super::*;

/// A MessagePack value of any kind, nested a few levels.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        "[a-z/]{0,6}".prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Binary),
        proptest::collection::vec(any::<u8>(), 250..300).prop_map(Value::Binary),
        "[a-z]{30,40}".prop_map(Value::from),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..3).prop_map(Value::Map),
        ]
    })
}

/// A map key: a field's name (or a near miss), or a field index.
fn any_key(names: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => proptest::sample::select(names).prop_map(Value::from),
        1 => "[a-z]{1,3}".prop_map(Value::from),
        1 => (0u64..12).prop_map(Value::from),
    ]
}

/// A value for a key: usually one that fits the field, sometimes anything.
fn field_value(key: &Value, tag: &'static str) -> BoxedStrategy<Value> {
    let fit: BoxedStrategy<Value> = match key.as_str() {
        Some("t") => prop_oneof![Just(Value::from(tag)), Just(Value::from("get"))].boxed(),
        Some("topic" | "display") => "[a-z]{1,3}(/[a-z]{1,3}){0,2}".prop_map(Value::from).boxed(),
        Some("retain") => any::<bool>().prop_map(Value::Boolean).boxed(),
        Some("id" | "seq" | "time" | "deadline") => prop_oneof![
            any::<u32>().prop_map(Value::from),
            any::<i8>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
        ]
        .boxed(),
        Some("quality") => prop_oneof![
            4 => proptest::sample::select(&["ok", "pending", "stale", "offline", "bad"][..])
                .prop_map(Value::from),
            1 => (0u64..5).prop_map(Value::from),
            1 => Just(Value::Binary(b"ok".to_vec())),
        ]
        .boxed(),
        Some("position") => prop_oneof![
            any::<f64>().prop_map(Value::F64),
            any::<f32>().prop_map(Value::F32),
            any::<i8>().prop_map(Value::from),
        ]
        .boxed(),
        _ => any_value().boxed(),
    };
    prop_oneof![6 => fit, 1 => any_value()].boxed()
}

/// A map whose first entry is `t: tag` (the fast path's precondition, most of the
/// time), then the fields in any order, with extras.
fn message(tag: &'static str, names: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let entries = proptest::collection::vec(any_key(names), 0..9).prop_flat_map(move |keys| {
        keys.into_iter()
            .map(|k| (Just(k.clone()), field_value(&k, tag)))
            .collect::<Vec<_>>()
    });
    (any::<u8>(), entries).prop_map(move |(first, mut entries)| {
        if first % 8 != 0 {
            entries.insert(0, (Value::from("t"), Value::from(tag)));
        }
        let mut out = Vec::new();
        enc::write_map_len(&mut out, entries.len() as u32).unwrap();
        for (i, (k, v)) in entries.iter().enumerate() {
            // An integer key in every width serde might meet, not only the shortest.
            match (k.as_u64(), (usize::from(first) + i) % 4) {
                (Some(n), 1) => enc::write_u16(&mut out, n as u16).unwrap(),
                (Some(n), 2) => enc::write_u32(&mut out, n as u32).unwrap(),
                (Some(n), 3) => enc::write_u64(&mut out, n).unwrap(),
                _ => rmpv::encode::write_value(&mut out, k).unwrap(),
            }
            rmpv::encode::write_value(&mut out, v).unwrap();
        }
        out
    })
}

const PUB: &[&str] = &["t", "topic", "value", "retain", "id", "quality"];
const UPDATE: &[&str] = &[
    "t", "seq", "topic", "value", "time", "retain", "quality", "position", "display", "target",
    "deadline",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn pub_fast_path_decodes_as_the_tagged_decoder(body in message("pub", PUB)) {
        prop_assert_eq!(
            format!("{:?}", decode_client(&body)),
            format!("{:?}", decode_client_tagged(&body))
        );
    }

    /// A stream of frames decoded with the previous topic at hand: each decodes as on
    /// its own, and a frame repeated straight after itself shares the topic's string.
    #[test]
    fn a_stream_of_pubs_decodes_as_each_alone(bodies in proptest::collection::vec(message("pub", PUB), 1..8)) {
        let mut last = None;
        let mut bodies = bodies;
        bodies.push(bodies[bodies.len() - 1].clone());
        let mut decoded = Vec::new();
        for body in &bodies {
            let streamed = decode_client_from(body, &mut last);
            prop_assert_eq!(format!("{streamed:?}"), format!("{:?}", decode_client(body)));
            decoded.push(streamed);
        }
        let n = bodies.len();
        let last_body = &bodies[n - 1];
        if leading_tag(last_body) == Some(b"pub") && read_pub(last_body, &mut None).is_some() {
            match (&decoded[n - 2], &decoded[n - 1]) {
                (Ok(ClientMsg::Pub { topic: a, .. }), Ok(ClientMsg::Pub { topic: b, .. })) => {
                    prop_assert!(Arc::ptr_eq(a, b), "a repeated topic shares its string");
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[test]
    fn update_fast_path_decodes_as_the_tagged_decoder(body in message("update", UPDATE)) {
        prop_assert_eq!(
            format!("{:?}", decode_bus(&body)),
            format!("{:?}", decode_bus_tagged(&body))
        );
    }
}

/// The property above is not vacuous: well-formed messages take the fast path.
#[test]
fn the_fast_path_takes_well_formed_messages() {
    let p = ClientMsg::Pub {
        topic: "a/b".into(),
        value: Value::from(1.5),
        retain: true,
        id: Some(3),
        quality: None,
    };
    let f = frame(&p);
    assert_eq!(leading_tag(&f[LEN_PREFIX..]), Some(&b"pub"[..]));
    assert_eq!(read_pub(&f[LEN_PREFIX..], &mut None), Some(p.clone()));
    assert_eq!(decode_client(&f[LEN_PREFIX..]).unwrap(), p);
    let v = Value::from("x");
    let u = frame(&UpdateRef {
        seq: Seq(4),
        topic: "a/b",
        value: &v,
        time: 9,
        retain: false,
        quality: Some(Quality::Ok),
        position: None,
        display: Some("x"),
        target: None,
        deadline: None,
    });
    assert_eq!(leading_tag(&u[LEN_PREFIX..]), Some(&b"update"[..]));
    assert!(read_update(&u[LEN_PREFIX..]).is_some());
}

/// A value nested `depth` arrays deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::from(1), |v, _| Value::Array(vec![v]))
}

#[test]
fn values_near_the_nesting_limit_decode_as_the_tagged_decoder() {
    for depth in 50..70 {
        let body = &frame(&ClientMsg::Pub {
            topic: "a".into(),
            value: nested(depth),
            retain: false,
            id: None,
            quality: None,
        })[LEN_PREFIX..];
        assert_eq!(
            format!("{:?}", decode_client(body)),
            format!("{:?}", decode_client_tagged(body)),
            "depth {depth}"
        );
    }
}

#[test]
fn a_string_that_is_not_utf8_decodes_as_the_tagged_decoder() {
    // {t: "pub", topic: "a", value: [str "\xff", {str "\xfe": 1}]}
    let mut body = Vec::new();
    enc::write_map_len(&mut body, 3).unwrap();
    for (k, v) in [("t", "pub"), ("topic", "a")] {
        enc::write_str(&mut body, k).unwrap();
        enc::write_str(&mut body, v).unwrap();
    }
    enc::write_str(&mut body, "value").unwrap();
    enc::write_array_len(&mut body, 2).unwrap();
    body.extend_from_slice(&[0xa1, 0xff, 0x81, 0xa1, 0xfe, 0x01]);
    assert_eq!(read_pub(&body, &mut None), None);
    assert_eq!(
        format!("{:?}", decode_client(&body)),
        format!("{:?}", decode_client_tagged(&body))
    );
}

/// Integers of every MessagePack width.
fn any_uint() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..300, 0u64..70_000, 0u64..5_000_000_000, any::<u64>()]
}

fn any_quality() -> impl Strategy<Value = Option<Quality>> {
    proptest::option::of(proptest::sample::select(
        &[
            Quality::Ok,
            Quality::Pending,
            Quality::Stale,
            Quality::Offline,
        ][..],
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The hand-written encoder writes exactly serde's bytes.
    #[test]
    fn update_encoder_writes_serdes_bytes(
        seq in any_uint(),
        topic in "[a-z/]{1,12}|[a-z]{30,300}",
        value in any_value(),
        time in any_uint(),
        retain: bool,
        quality in any_quality(),
        position in proptest::option::of(any::<f64>()),
        display in proptest::option::of("[a-z é]{0,8}"),
        target in proptest::option::of(any_value()),
        deadline in proptest::option::of(any_uint()),
    ) {
        let u = UpdateRef {
            seq: Seq(seq),
            topic: &topic,
            value: &value,
            time,
            retain,
            quality,
            position,
            display: display.as_deref(),
            target: target.as_ref(),
            deadline,
        };
        let mut buf = BytesMut::new();
        let fast = encode_update_frame(&mut buf, &u);
        prop_assert_eq!(fast, frame(&u));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The hand-written `pub` encoder writes exactly serde's bytes.
    #[test]
    fn pub_encoder_writes_serdes_bytes(
        topic in "[a-z/]{1,12}|[a-z]{30,300}",
        value in any_value(),
        retain: bool,
        id in proptest::option::of(any_uint()),
        quality in any_quality(),
    ) {
        let p = ClientMsg::Pub { topic: topic.into(), value, retain, id, quality };
        let mut fast = BytesMut::new();
        encode_client_into(&mut fast, &p);
        prop_assert_eq!(fast.freeze(), frame(&p));
    }
}

#[test]
fn bytes_after_the_map_are_treated_as_the_tagged_decoder_treats_them() {
    let p = ClientMsg::Pub {
        topic: "a/b".into(),
        value: Value::Binary(vec![1, 2, 3]),
        retain: false,
        id: None,
        quality: Some(Quality::Stale),
    };
    let mut body = frame(&p)[LEN_PREFIX..].to_vec();
    body.extend_from_slice(&[0xc0, 0x01]);
    assert_eq!(
        format!("{:?}", decode_client(&body)),
        format!("{:?}", decode_client_tagged(&body))
    );
}

/// Inputs a review found where an earlier fast path (serde into a field struct)
/// accepted what the tagged decoder refuses: integer keys wider than a byte, and a
/// quality written as a number or as bytes.
#[test]
fn review_findings_decode_as_the_tagged_decoder() {
    let pub_head: &[u8] = b"\x84\xa1t\xa3pub\xa5topic\xa1a\xa5value\x01";
    let update_head: &[u8] =
        b"\x87\xa1t\xa6update\xa3seq\x01\xa5topic\xa1a\xa5value\x01\xa4time\x02\xa6retain\xc2";
    let tails: [&[u8]; 5] = [
        b"\xcd\x00\x63\xc0",         // key u16 99
        b"\xce\x00\x00\x00\x03\x05", // key u32 3 (a field index)
        b"\xa7quality\x00",          // quality 0
        b"\xa7quality\xcd\x00\x01",  // quality u16 1
        b"\xa7quality\xc4\x02ok",    // quality as bin
    ];
    for tail in tails {
        let body = [pub_head, tail].concat();
        assert_eq!(
            format!("{:?}", decode_client(&body)),
            format!("{:?}", decode_client_tagged(&body)),
            "pub + {tail:x?}"
        );
        let body = [update_head, tail].concat();
        assert_eq!(
            format!("{:?}", decode_bus(&body)),
            format!("{:?}", decode_bus_tagged(&body)),
            "update + {tail:x?}"
        );
    }
}
