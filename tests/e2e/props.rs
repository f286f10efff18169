//! Property tests: filter matching against a reference implementation, name
//! validation on arbitrary strings, the wire codec round trip, decoding garbage, and
//! the JSON mapping of values.

use avbus::model::Quality;
use avbus::protocol::{
    decode_bus, decode_client, frame, BusMsg, ClientMsg, Command, CommandOp, DecodeError, Epoch,
    ErrorCode, Resume, Role, Seq, SessionId, Update, WireError, LEN_PREFIX,
};
use avbus::topic::{self, Filter, Topic};
use avbus::value::{from_cli_arg, from_json, to_json, to_json_string, Value};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Modest case count so that the whole file runs in a few seconds in debug; no
/// regression files are written next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----- filter matching ---------------------------------------------------------------

/// The matching rules, written level by level from the documentation.
fn reference_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if t[0].starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            // `#` is the last level and takes the rest, including nothing.
            (Some(&"#"), _) => true,
            (None, None) => true,
            (Some(&"+"), Some(_)) => go(&f[1..], &t[1..]),
            (Some(fl), Some(tl)) => fl == tl && go(&f[1..], &t[1..]),
            _ => false,
        }
    }
    go(&f, &t)
}

/// Topic levels from a tiny alphabet so that filters often match; `$sys` only first.
fn topic_levels() -> impl Strategy<Value = Vec<String>> {
    let first = prop_oneof![
        3 => Just("a".to_string()),
        2 => Just("b".to_string()),
        1 => Just("c".to_string()),
        2 => Just("$sys".to_string()),
    ];
    let rest = vec(
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string())
        ],
        0..5,
    );
    (first, rest).prop_map(|(f, mut r)| {
        r.insert(0, f);
        r
    })
}

/// A filter made from `levels`: some levels replaced by `+`, and optionally cut at
/// some point (possibly 0) and ended with `#`.
fn filter_from(levels: Vec<String>) -> impl Strategy<Value = String> {
    let n = levels.len();
    (
        vec(prop::bool::weighted(0.3), n),
        option::weighted(0.4, 0..=n),
    )
        .prop_map(move |(plus, hash_at)| {
            let mut f: Vec<String> = levels
                .iter()
                .zip(&plus)
                .map(|(l, p)| if *p { "+".to_string() } else { l.clone() })
                .collect();
            if let Some(k) = hash_at {
                f.truncate(k);
                f.push("#".to_string());
            }
            f.join("/")
        })
}

/// A topic and a filter, the filter made either from the topic itself (so it
/// usually matches) or from another random topic (so it usually does not).
fn topic_and_filter() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        topic_levels().prop_flat_map(|t| {
            let topic = t.join("/");
            filter_from(t).prop_map(move |f| (topic.clone(), f))
        }),
        (topic_levels(), topic_levels().prop_flat_map(filter_from))
            .prop_map(|(t, f)| (t.join("/"), f)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn filter_matching_agrees_with_reference((topic, filter) in topic_and_filter()) {
        let t = Topic::new(&topic).expect("generated topics are valid");
        let f = Filter::new(&filter).expect("generated filters are valid");
        let expected = reference_matches(&filter, &topic);
        prop_assert_eq!(topic::matches(&filter, &topic), expected);
        prop_assert_eq!(f.matches(t.as_str()), expected);
        // `is_exact` means the filter names exactly one topic.
        if f.is_exact() {
            prop_assert_eq!(expected, filter == topic);
        }
    }

    #[test]
    fn a_topic_used_as_filter_matches_itself(levels in topic_levels()) {
        let topic = levels.join("/");
        let f = Filter::new(&topic).expect("a topic is a valid filter");
        prop_assert!(f.is_exact());
        prop_assert!(f.matches(&topic));
        prop_assert_eq!(f.literal_prefix(), topic.as_str());
    }
}

/// The bus builds a snapshot by range-scanning its sorted retained table from the
/// filter's literal prefix, plus the parent topic for a trailing `/#` (`a/#` matches
/// `a`, which sorts before `a/`). That is complete only if every match is one or
/// the other.
#[test]
fn every_match_is_found_by_the_snapshot_scan() {
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&topic_and_filter(), |(topic, filter)| {
            let f = Filter::new(&filter).unwrap();
            if f.matches(&topic) {
                let parent = filter.strip_suffix("/#");
                prop_assert!(
                    topic.starts_with(f.literal_prefix()) || parent == Some(topic.as_str()),
                    "{:?} matches {:?} but the scan from {:?} misses it",
                    filter,
                    topic,
                    f.literal_prefix()
                );
            }
            Ok(())
        })
        .unwrap();
}

// ----- name validation -----------------------------------------------------------------

/// Strings biased towards the interesting characters, plus fully arbitrary ones.
fn name_like() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        6 => prop::sample::select(vec!['a', 'b', 'Z', '0', '-', '_', '.', ':', '@']),
        3 => Just('/'),
        1 => Just('+'),
        1 => Just('#'),
        1 => Just('$'),
        1 => prop::sample::select(vec![' ', 'é', '\u{0}', '\u{200b}', '日', '🦀', '\\']),
    ];
    prop_oneof![
        3 => vec(ch, 0..80).prop_map(|v| v.into_iter().collect::<String>()),
        1 => any::<String>(),
        // Long names, around the 256-byte and 64-byte-per-level limits.
        1 => (1usize..80, 1usize..6).prop_map(|(len, depth)| {
            vec!["x".repeat(len); depth].join("/")
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn validation_never_panics_and_is_consistent(name in name_like()) {
        let t = Topic::new(&name);
        let f = Filter::new(&name);
        if t.is_ok() {
            prop_assert!(f.is_ok(), "topic {:?} accepted but refused as filter: {:?}", name, f);
        }
        if name.contains(['+', '#']) {
            prop_assert!(t.is_err(), "topic with a wildcard accepted: {:?}", name);
        } else {
            // Without wildcard characters the two rules are the same.
            prop_assert_eq!(t.is_ok(), f.is_ok(), "{:?}: {:?} vs {:?}", name, t, f);
        }
        if let Ok(t) = &t {
            prop_assert_eq!(t.as_str(), name.as_str());
            prop_assert!(!name.is_empty() && name.len() <= topic::MAX_TOPIC_LEN);
            prop_assert!(t.levels().count() <= topic::MAX_DEPTH);
            prop_assert!(Filter::new(&name).unwrap().matches(&name));
        }
        if let Ok(f) = &f {
            // These slice the string; they must not panic on any accepted filter.
            let _ = f.literal_prefix();
            let _ = f.is_exact();
            prop_assert!(f.levels().all(|l| !l.is_empty() && l.len() <= topic::MAX_LEVEL_LEN));
        }
    }
}

// ----- values ------------------------------------------------------------------------

/// Finite f64s, with the integral and signed-zero cases that a codec might turn
/// into ints well represented.
fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => any::<f64>(), // proptest's default f64 is finite (no NaN, no inf)
        1 => any::<i32>().prop_map(f64::from),
        1 => prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e300,
            -1e-300,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            9007199254740992.0, // 2^53
            18446744073709551616.0, // 2^64
            f64::EPSILON,
            5e-324,
        ]),
    ]
}

fn short_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z$ ]{0,6}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn leaf_value() -> impl Strategy<Value = Value> {
    leaf_value_with(finite_f64().boxed())
}

fn leaf_value_with(floats: BoxedStrategy<f64>) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Small ints: the compact MessagePack encodings.
        (-40i64..300).prop_map(Value::from),
        floats.prop_map(Value::F64),
        short_string().prop_map(Value::from),
        vec(any::<u8>(), 0..10).prop_map(Value::Binary),
    ]
}

/// Arbitrary values: small arrays and maps, recursive with small depth. Besides the
/// JSON-friendly leaves, the wire also carries `F32`, `Ext` and non-string map keys;
/// map keys are in generation order and may repeat.
fn wire_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        8 => leaf_value(),
        1 => any::<f32>().prop_map(Value::F32), // finite by default, as for f64
        1 => (any::<i8>(), vec(any::<u8>(), 0..6)).prop_map(|(t, b)| Value::Ext(t, b)),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        let key = prop_oneof![
            4 => short_string().prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
        ];
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key, inner), 0..4).prop_map(Value::Map),
        ]
    })
}

/// Values that the JSON mapping can represent without loss: no `F32` (it comes back
/// as `F64` by design), no `Ext`, and maps whose keys are strings, unique, in the
/// order a JSON object keeps them (sorted: serde_json without `preserve_order`) and
/// never `$hex` (so that no map reads as binary).
fn json_value() -> impl Strategy<Value = Value> {
    json_value_with(finite_f64().boxed())
}

/// Floats that any correct-enough decimal parser reads back exactly: integers up to
/// 2^31 and a few dyadic fractions, with signed zero.
fn plain_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<i32>().prop_map(f64::from),
        (any::<i16>(), 0u32..8).prop_map(|(m, e)| f64::from(m) / f64::from(1u32 << e)),
        Just(-0.0),
    ]
    .boxed()
}

fn json_value_with(floats: BoxedStrategy<f64>) -> impl Strategy<Value = Value> {
    leaf_value_with(floats).prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(
                short_string().prop_filter("$hex would read back as binary", |k| k != "$hex"),
                inner,
                0..4
            )
            .prop_map(|m| {
                Value::Map(m.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
            }),
        ]
    })
}

/// Equality that also tells float widths, `-0.0` from `0.0`, and `F64(1.0)` from
/// `Integer(1)` apart (derived `PartialEq` already does the last one; the bits check
/// makes the first two strict).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| same(ka, kb) && same(va, vb))
        }
        _ => a == b,
    }
}

// ----- protocol messages -----------------------------------------------------------

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::Panel, Role::Adapter, Role::Tool])
}

fn quality() -> impl Strategy<Value = Quality> {
    prop::sample::select(vec![
        Quality::Ok,
        Quality::Pending,
        Quality::Stale,
        Quality::Offline,
    ])
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    use ErrorCode::*;
    prop::sample::select(vec![
        DeviceOffline,
        InvalidValue,
        UnknownTopic,
        NotWritable,
        Timeout,
        Busy,
        Forbidden,
        Unauthorized,
        TlsRequired,
        BadFrame,
        FrameTooLarge,
        BadMessage,
        UnknownMessage,
        Unexpected,
        VersionMismatch,
        HandshakeTimeout,
        InvalidTopic,
        InvalidFilter,
        InvalidDescriptor,
        Conflict,
        Limit,
        NotMember,
        Closed,
        Unknown,
    ])
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    let s = short_string;
    let filters = || vec(s(), 0..4);
    prop_oneof![
        (
            any::<u32>(),
            s(),
            role(),
            wire_value(),
            option::of((any::<u64>(), any::<u64>(), any::<u64>()))
        )
            .prop_map(|(v, name, role, credentials, resume)| ClientMsg::Hello {
                v,
                name,
                role,
                credentials,
                resume: resume.map(|(s, e, q)| Resume {
                    session: SessionId(s),
                    epoch: Epoch(e),
                    last_seq: Seq(q),
                }),
            }),
        (any::<u64>(), filters()).prop_map(|(id, filters)| ClientMsg::Sub { id, filters }),
        (any::<u64>(), filters()).prop_map(|(id, filters)| ClientMsg::Unsub { id, filters }),
        (any::<u64>(), s()).prop_map(|(id, topic)| ClientMsg::Get { id, topic }),
        (
            s(),
            wire_value(),
            any::<bool>(),
            option::of(any::<u64>()),
            option::of(quality())
        )
            .prop_map(|(topic, value, retain, id, quality)| ClientMsg::Pub {
                topic: topic.into(),
                value,
                retain,
                id,
                quality,
            }),
        (any::<u64>(), s(), wire_value(), option::of(any::<u64>())).prop_map(
            |(id, topic, value, timeout_ms)| ClientMsg::Set {
                id,
                topic,
                value,
                timeout_ms,
            }
        ),
        (any::<u64>(), s(), wire_value(), option::of(any::<u64>())).prop_map(
            |(id, topic, args, timeout_ms)| ClientMsg::Call {
                id,
                topic,
                args,
                timeout_ms,
            }
        ),
        (s(), any::<bool>(), option::of(s())).prop_map(|(device, online, reason)| {
            ClientMsg::Status {
                device,
                online,
                reason,
            }
        }),
        (any::<u64>(), wire_value(), option::of((error_code(), s()))).prop_map(
            |(id, result, error)| ClientMsg::Reply {
                id,
                result,
                error: error.map(|(code, message)| WireError { code, message }),
            }
        ),
        (any::<u64>(), s()).prop_map(|(id, room)| ClientMsg::Join { id, room }),
        (any::<u64>(), s()).prop_map(|(id, room)| ClientMsg::Leave { id, room }),
        (s(), wire_value()).prop_map(|(room, value)| ClientMsg::Say { room, value }),
        any::<u64>().prop_map(|n| ClientMsg::Ping { n }),
        any::<u64>().prop_map(|n| ClientMsg::Pong { n }),
        option::of(s()).prop_map(|reason| ClientMsg::Bye { reason }),
    ]
}

/// `Some(Value::Nil)` is left out of `target` on purpose: see
/// `update_target_some_nil_round_trip` below.
fn update_target() -> impl Strategy<Value = Option<Value>> {
    option::of(wire_value().prop_filter("Some(Nil) reads back as None", |v| !v.is_nil()))
}

fn update() -> impl Strategy<Value = Update> {
    (
        (
            any::<u64>(),
            short_string(),
            wire_value(),
            any::<u64>(),
            any::<bool>(),
        ),
        (
            option::of(quality()),
            option::of(finite_f64()),
            option::of(short_string()),
            update_target(),
            option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (seq, topic, value, time, retain),
                (quality, position, display, target, deadline),
            )| {
                Update {
                    seq: Seq(seq),
                    topic,
                    value,
                    time,
                    retain,
                    quality,
                    position,
                    display,
                    target,
                    deadline,
                }
            },
        )
}

fn bus_msg() -> impl Strategy<Value = BusMsg> {
    let s = short_string;
    let u = || any::<u64>();
    prop_oneof![
        (
            any::<u32>(),
            u(),
            u(),
            u(),
            u(),
            any::<bool>(),
            u(),
            option::of(any::<u16>()),
            option::of(u())
        )
            .prop_map(
                |(v, session, epoch, seq, heartbeat_ms, resumed, max_frame, udp, token)| {
                    BusMsg::Welcome {
                        v,
                        session: SessionId(session),
                        epoch: Epoch(epoch),
                        seq: Seq(seq),
                        heartbeat_ms,
                        resumed,
                        max_frame,
                        udp,
                        token,
                    }
                }
            ),
        (option::of(u()), error_code(), s()).prop_map(|(id, code, message)| BusMsg::Error {
            id,
            code,
            message
        }),
        update().prop_map(BusMsg::Update),
        (u(), u(), any::<bool>()).prop_map(|(id, count, resync)| BusMsg::Snapshot {
            id,
            count,
            resync
        }),
        (u(), u(), u(), any::<bool>()).prop_map(|(id, seq, count, resync)| BusMsg::Synced {
            id,
            seq: Seq(seq),
            count,
            resync,
        }),
        (u(), u(), any::<bool>()).prop_map(|(dropped, conflated, resync)| BusMsg::Gap {
            dropped,
            conflated,
            resync
        }),
        (u(), wire_value()).prop_map(|(id, result)| BusMsg::Ok { id, result }),
        (u(), u()).prop_map(|(id, seq)| BusMsg::Puback { id, seq: Seq(seq) }),
        (
            u(),
            prop::sample::select(vec![CommandOp::Set, CommandOp::Call]),
            s(),
            wire_value(),
            u(),
            u()
        )
            .prop_map(
                |(id, op, topic, value, deadline, from)| BusMsg::Cmd(Command {
                    id,
                    op,
                    topic,
                    value,
                    deadline,
                    from: SessionId(from),
                })
            ),
        (s(), u(), s(), role(), any::<bool>()).prop_map(|(room, session, name, role, joined)| {
            BusMsg::Presence {
                room,
                session: SessionId(session),
                name,
                role,
                joined,
            }
        }),
        (s(), u(), s(), wire_value()).prop_map(|(room, from, name, value)| BusMsg::Said {
            room,
            from: SessionId(from),
            name,
            value,
        }),
        u().prop_map(|n| BusMsg::Ping { n }),
        u().prop_map(|n| BusMsg::Pong { n }),
        (s(), s()).prop_map(|(reason, message)| BusMsg::Bye { reason, message }),
    ]
}

/// Splits a frame into its body after checking the length prefix.
fn body(bytes: &[u8]) -> Result<&[u8], TestCaseError> {
    prop_assert!(bytes.len() >= LEN_PREFIX);
    let len = u32::from_be_bytes(bytes[..LEN_PREFIX].try_into().unwrap()) as usize;
    prop_assert_eq!(
        len,
        bytes.len() - LEN_PREFIX,
        "length prefix vs body length"
    );
    Ok(&bytes[LEN_PREFIX..])
}

/// The `Value`s carried by a message, to compare them strictly (float bits).
fn client_values(m: &ClientMsg) -> Vec<&Value> {
    match m {
        ClientMsg::Hello { credentials, .. } => vec![credentials],
        ClientMsg::Pub { value, .. } | ClientMsg::Set { value, .. } => vec![value],
        ClientMsg::Say { value, .. } => vec![value],
        ClientMsg::Call { args, .. } => vec![args],
        ClientMsg::Reply { result, .. } => vec![result],
        _ => vec![],
    }
}

fn bus_values(m: &BusMsg) -> Vec<&Value> {
    match m {
        BusMsg::Update(u) => std::iter::once(&u.value).chain(&u.target).collect(),
        BusMsg::Ok { result, .. } => vec![result],
        BusMsg::Cmd(c) => vec![&c.value],
        BusMsg::Said { value, .. } => vec![value],
        _ => vec![],
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_msg_round_trips(msg in client_msg()) {
        let bytes = frame(&msg);
        let decoded = decode_client(body(&bytes)?);
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => return Err(TestCaseError::fail(format!("{msg:?} failed to decode: {e}"))),
        };
        prop_assert_eq!(&decoded, &msg);
        let (a, b) = (client_values(&msg), client_values(&decoded));
        prop_assert!(a.iter().zip(&b).all(|(x, y)| same(x, y)), "{:?} vs {:?}", a, b);
    }

    #[test]
    fn bus_msg_round_trips(msg in bus_msg()) {
        let bytes = frame(&msg);
        let decoded = match decode_bus(body(&bytes)?) {
            Ok(d) => d,
            Err(e) => return Err(TestCaseError::fail(format!("{msg:?} failed to decode: {e}"))),
        };
        prop_assert_eq!(&decoded, &msg);
        let (a, b) = (bus_values(&msg), bus_values(&decoded));
        prop_assert!(a.iter().zip(&b).all(|(x, y)| same(x, y)), "{:?} vs {:?}", a, b);
        if let (BusMsg::Update(x), BusMsg::Update(y)) = (&msg, &decoded) {
            prop_assert_eq!(x.position.map(f64::to_bits), y.position.map(f64::to_bits));
        }
    }
}

// ----- decoding garbage ------------------------------------------------------------

fn decode_error_is_classified(e: &DecodeError) -> bool {
    matches!(
        e.code(),
        ErrorCode::BadFrame | ErrorCode::UnknownMessage | ErrorCode::BadMessage
    )
}

/// MessagePack maps that look like messages: a `t` that is often a known type, and
/// a few fields with names the messages use, holding random values.
fn message_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let names = vec![
        "t", "id", "v", "n", "topic", "value", "filters", "room", "result", "error", "seq",
        "retain", "quality", "name", "role", "args", "code", "message", "target",
    ];
    let kinds = vec![
        "hello", "sub", "unsub", "get", "pub", "set", "call", "declare", "status", "reply", "join",
        "leave", "say", "ping", "pong", "bye", "update", "ok", "error", "synced", "gap", "cmd",
        "welcome", "dance", "",
    ];
    (
        option::weighted(0.9, prop::sample::select(kinds)),
        vec((prop::sample::select(names), wire_value()), 0..5),
    )
        .prop_map(|(t, fields)| {
            let mut map = Vec::new();
            if let Some(t) = t {
                map.push((Value::from("t"), Value::from(t)));
            }
            map.extend(fields.into_iter().map(|(k, v)| (Value::from(k), v)));
            let mut buf = Vec::new();
            rmpv::encode::write_value(&mut buf, &Value::Map(map)).unwrap();
            buf
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        if let Err(e) = decode_client(&bytes) {
            prop_assert!(decode_error_is_classified(&e), "{:?}", e);
        }
        if let Err(e) = decode_bus(&bytes) {
            prop_assert!(decode_error_is_classified(&e), "{:?}", e);
        }
    }

    #[test]
    fn decoding_message_like_maps_never_panics(bytes in message_like_bytes()) {
        match decode_client(&bytes) {
            Ok(m) => {
                // Whatever decodes must encode and decode to the same message.
                let again = frame(&m);
                prop_assert_eq!(decode_client(&again[LEN_PREFIX..]).ok(), Some(m));
            }
            Err(e) => prop_assert!(decode_error_is_classified(&e), "{:?}", e),
        }
        if let Err(e) = decode_bus(&bytes) {
            prop_assert!(decode_error_is_classified(&e), "{:?}", e);
        }
    }

    #[test]
    fn truncated_frames_are_errors(msg in client_msg(), cut in any::<prop::sample::Index>()) {
        let bytes = frame(&msg);
        let body = &bytes[LEN_PREFIX..];
        let cut = cut.index(body.len()); // strictly shorter than the body
        match decode_client(&body[..cut]) {
            Ok(m) => return Err(TestCaseError::fail(format!(
                "a truncated {msg:?} decoded as {m:?}"
            ))),
            Err(e) => prop_assert!(decode_error_is_classified(&e), "{:?}", e),
        }
    }
}

// ----- JSON mapping ----------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn json_mapping_round_trips(v in json_value()) {
        let json = to_json(&v);
        let back = from_json(&json);
        prop_assert!(same(&back, &v), "{:?} -> {} -> {:?}", v, json, back);
    }

    /// Through the text as the CLI prints and reads it (`avbus get` then `avbus set`),
    /// with floats that every parser reads exactly; see `json_text_round_trips`.
    #[test]
    fn json_text_round_trips_plain_floats(v in json_value_with(plain_f64())) {
        let text = to_json_string(&v);
        let back = from_cli_arg(&text);
        prop_assert!(same(&back, &v), "{:?} -> {} -> {:?}", v, text, back);
    }

    /// The CLI prints floats in their shortest form and reads them back exactly
    /// (serde_json's `float_roundtrip` feature).
    #[test]
    fn json_text_round_trips(v in json_value()) {
        let text = to_json_string(&v);
        let back = from_cli_arg(&text);
        prop_assert!(same(&back, &v), "{:?} -> {} -> {:?}", v, text, back);
    }

    #[test]
    fn json_keeps_ints_and_floats_apart(f in finite_f64(), i in any::<i64>(), u in any::<u64>()) {
        prop_assert!(matches!(from_json(&to_json(&Value::F64(f))), Value::F64(_)));
        prop_assert!(from_json(&to_json(&Value::from(i))).is_i64());
        prop_assert_eq!(from_json(&to_json(&Value::from(u))).as_u64(), Some(u));
        let text = to_json(&Value::F64(f)).to_string();
        prop_assert!(
            text.contains(['.', 'e', 'E']),
            "float {:?} printed as {} (reads back as an int)",
            f,
            text
        );
    }
}

/// A fixed instance of the `json_text_round_trips` failure:
/// `3.550019974194197e-33` (bits `0x39326ec9330e32f5`) reads back as
/// `3.5500199741941966e-33` (bits `0x39326ec9330e32f4`).
#[test]
fn json_text_float_example() {
    let f = f64::from_bits(0x39326ec9330e32f5);
    let text = to_json_string(&Value::F64(f));
    assert_eq!(text, "3.550019974194197e-33");
    assert_eq!(text.parse::<f64>().unwrap().to_bits(), f.to_bits());
    match from_cli_arg(&text) {
        Value::F64(g) => assert_eq!(g.to_bits(), f.to_bits(), "read back as {g:?}"),
        other => panic!("{other:?}"),
    }
}

// ----- deep nesting ------------------------------------------------------------------

/// A `say` whose value is `depth` nested one-element arrays around nil.
fn nested_say(depth: usize) -> Vec<u8> {
    // Written byte by byte (fixarray of one, `depth` times, then nil), so that the
    // test itself never builds (or drops) a deeply recursive value.
    let mut buf = Vec::new();
    rmpv::encode::write_value(
        &mut buf,
        &Value::Map(vec![
            (Value::from("t"), Value::from("say")),
            (Value::from("room"), Value::from("r")),
        ]),
    )
    .unwrap();
    buf[0] = 0x83; // a map of three: t, room, value
    rmpv::encode::write_value(&mut buf, &Value::from("value")).unwrap();
    buf.extend(std::iter::repeat_n(0x91u8, depth));
    buf.push(0xc0);
    buf
}

/// Deep values are refused with a classified error past the protocol's nesting limit
/// (`MAX_NESTING`), before the decoder's recursion can exhaust the stack: this runs
/// on a thread with a quarter of tokio's 2 MiB worker stack.
#[test]
fn deeply_nested_values_are_refused_not_crashed() {
    let t = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(|| {
            assert!(decode_client(&nested_say(avbus::protocol::MAX_NESTING - 4)).is_ok());
            for depth in [avbus::protocol::MAX_NESTING + 1, 600, 5000, 100_000] {
                let bytes = nested_say(depth);
                match decode_client(&bytes) {
                    Ok(_) => panic!("depth {depth} accepted"),
                    Err(e) => assert!(decode_error_is_classified(&e), "{e:?}"),
                }
                let e = decode_bus(&bytes).expect_err("not a bus message");
                assert!(decode_error_is_classified(&e), "{e:?}");
            }
        })
        .unwrap();
    t.join().unwrap();
}

// ----- telemetry datagrams ------------------------------------------------------------

proptest! {
    /// Any bytes: the datagram decoder returns a typed error or records, never
    /// panics, and never reads past the end.
    #[test]
    fn telemetry_decoder_never_panics(d in proptest::collection::vec(any::<u8>(), 0..1400)) {
        if let Ok((_, body)) = avbus::telemetry::decode_header(&d) {
            for r in avbus::telemetry::records(body).flatten() {
                prop_assert!(r.payload.len() <= body.len());
                let _ = avbus::telemetry::decode_value(&[r]);
            }
        }
    }

    /// Valid headers with arbitrary record bytes after them: still no panic.
    #[test]
    fn telemetry_records_never_panic(
        kind in 1u8..=4,
        rest in proptest::collection::vec(any::<u8>(), 0..1180),
    ) {
        let mut d = vec![0xA7, 0xB5, 1, kind, 0, 0, 0, 1];
        if kind <= 2 {
            d.extend_from_slice(&[0; 8]);
        }
        d.extend_from_slice(&rest);
        if let Ok((_, body)) = avbus::telemetry::decode_header(&d) {
            for r in avbus::telemetry::records(body).flatten() {
                let _ = avbus::telemetry::decode_value(&[r]);
            }
        }
    }

    /// f32 arrays of any size round-trip through their (chunked) records.
    #[test]
    fn telemetry_values_round_trip(vals in proptest::collection::vec(-1e6f32..1e6, 1..1000)) {
        let mut scratch = bytes::BytesMut::new();
        let value = Value::Array(vals.iter().map(|v| Value::F32(*v)).collect());
        let recs = avbus::telemetry::encode_value(&mut scratch, 3, 7, 11, 0, &value).unwrap();
        let mut parsed = Vec::new();
        for b in &recs {
            prop_assert!(b.len() + avbus::telemetry::HEADER_TO_BUS <= avbus::telemetry::MAX_DATAGRAM);
            let r: Vec<_> = avbus::telemetry::records(b).collect();
            prop_assert_eq!(r.len(), 1);
            parsed.push(r[0].unwrap());
        }
        let back = avbus::telemetry::decode_value(&parsed).unwrap();
        if vals.len() == 1 {
            prop_assert_eq!(back, Value::F32(vals[0]));
        } else {
            prop_assert_eq!(back, value);
        }
    }
}
