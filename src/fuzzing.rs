//! The logic of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), here so that the
//! fuzzer and `tests/e2e/fuzz_regressions.rs` (which replays every corpus entry and
//! crash reproducer under `cargo test`) run exactly the same code. `docs/fuzzing.md` lists
//! the targets, what each checks and how to run them.
//!
//! Each function takes arbitrary bytes, feeds them to the decoder the network path
//! uses, and panics on any broken invariant, not only on a crash: a decoded message
//! encodes and decodes to itself, a stream decoder yields the same items whether the
//! bytes come whole, one at a time or in chunks, and buffers stay bounded by what
//! arrived. Chunk sizes come from a hash of the input, so a reproducer needs nothing
//! but its file.
#![doc(hidden)]

use std::collections::HashMap;
use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::devices::{extron, pjlink, qrc, visca, x32};
use crate::model::DeviceDescriptor;
use crate::protocol::{
    decode_bus, decode_bus_tagged, decode_client, decode_client_tagged, frame as encode_frame,
    BusMsg, ClientMsg, DecodeError, CLIENT_MSG_TYPES, DEFAULT_MAX_FRAME, LEN_PREFIX,
};
use crate::telemetry::{self as tm, Format, Record};
use crate::value::Value;

/// A target: its name (that of its `fuzz/fuzz_targets/*.rs` and of its directories
/// under `fuzz/corpus` and `fuzz/regressions`) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("frame", frame),
    ("datagram", datagram),
    ("config", config),
    ("pjlink", pjlink),
    ("extron", extron),
    ("qrc", qrc),
    ("visca", visca),
    ("osc", osc),
];

// ---- feeding streams ----

/// The three ways a stream decoder gets the bytes: whole, one byte at a time, and in
/// chunks of 1 byte to 4 KiB whose sizes follow from a hash of the data.
fn chunkings(data: &[u8]) -> [Vec<&[u8]>; 3] {
    // FNV-1a, then xorshift: deterministic, so a saved input replays exactly.
    let mut state = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut random = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let r = next();
        let n = 1 + (r >> 8) as usize % (1usize << (r % 13));
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        random.push(chunk);
        rest = tail;
    }
    [vec![data], data.chunks(1).collect(), random]
}

/// Runs `read` over every chunking of `data` and checks that all agree; returns the
/// items (and whether the stream ended in an error).
fn same_every_way<T: PartialEq + Debug>(
    data: &[u8],
    what: &str,
    read: impl Fn(&[&[u8]]) -> (Vec<T>, bool),
) -> (Vec<T>, bool) {
    let [whole, bytewise, random] = chunkings(data);
    let first = read(&whole);
    for (how, chunks) in [("one byte at a time", bytewise), ("in chunks", random)] {
        let other = read(&chunks);
        assert_eq!(
            other, first,
            "{what}: fed {how}, the decoder yields other items than fed whole"
        );
    }
    first
}

/// Bytes a stream decoder's buffer may hold beyond twice what arrived: the initial
/// capacity a `FramedRead` gives it (8 KiB), and room for `BytesMut`'s rounding.
const BUFFER_SLACK: usize = 64 * 1024;

/// Whether `t == t` (false for anything holding a NaN).
#[allow(clippy::eq_op)]
fn reflexive<T: PartialEq>(t: &T) -> bool {
    t == t
}

// ---- frame: the TCP framing and the messages in it ----

/// What the bus's connection reader decodes from a byte stream: frame bodies, and
/// whether the stream ended in an error (`frame_too_large`).
fn read_frames(chunks: &[&[u8]]) -> (Vec<Bytes>, bool) {
    let mut codec = crate::bus::connection::frame_decoder(DEFAULT_MAX_FRAME);
    // As `FramedRead` starts it.
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let (mut frames, mut fed) = (Vec::new(), 0);
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(body)) => frames.push(body.freeze()),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        assert!(
            buf.capacity() <= BUFFER_SLACK + 2 * fed,
            "the frame decoder holds {} bytes of buffer after {fed} bytes arrived",
            buf.capacity()
        );
    }
    (frames, false)
}

/// The TCP frame decoder and the message decoders behind it, as the bus (and a
/// client) run them on what a peer sends, then the checks the bus applies to the
/// messages (topics, filters, device descriptors, command values).
pub fn frame(data: &[u8]) {
    let (frames, _) = same_every_way(data, "frame", read_frames);
    let mut router = Router::default();
    for body in &frames {
        assert!(body.len() <= DEFAULT_MAX_FRAME);
        message(body, &mut router);
    }
    // The input as one body: a WebSocket binary message. The bridge puts the length
    // in front and the connection's decoder must give the same body back.
    if data.len() <= DEFAULT_MAX_FRAME {
        let mut framed = crate::gateway::bridge::prefix(data).to_vec();
        framed.extend_from_slice(data);
        let (bodies, failed) = read_frames(&[&framed]);
        assert!(!failed && bodies.len() == 1 && bodies[0] == data);
        message(data, &mut router);
    }
}

/// One frame body through both decoders.
fn message(body: &[u8], router: &mut Router) {
    // The decoders' fast paths agree with serde's tagged decoding, error included.
    let fast = format!("{:?}", decode_client(body));
    assert_eq!(
        fast,
        format!("{:?}", decode_client_tagged(body)),
        "pub fast path"
    );
    let fast = format!("{:?}", decode_bus(body));
    assert_eq!(
        fast,
        format!("{:?}", decode_bus_tagged(body)),
        "update fast path"
    );
    match decode_client(body) {
        Ok(msg) => {
            round_trip(&msg, decode_client);
            router.client(msg);
        }
        Err(DecodeError::UnknownMessage(t)) => {
            assert!(!CLIENT_MSG_TYPES.contains(&t.as_str()), "{t} is known");
        }
        Err(DecodeError::BadMessage { kind, .. }) => {
            assert!(
                CLIENT_MSG_TYPES.contains(&kind.as_str()),
                "{kind} is unknown"
            );
        }
        Err(DecodeError::BadFrame(_)) => {}
    }
    if let Ok(msg) = decode_bus(body) {
        round_trip::<BusMsg>(&msg, decode_bus);
    }
}

/// A decoded message encodes to a frame that decodes to the same message, and
/// encodes the same way again.
fn round_trip<T>(msg: &T, decode: fn(&[u8]) -> Result<T, DecodeError>)
where
    T: serde::Serialize + PartialEq + Debug,
{
    let f = encode_frame(msg);
    let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
    assert_eq!(len, f.len() - LEN_PREFIX, "length prefix of {msg:?}");
    let again = decode(&f[LEN_PREFIX..])
        .unwrap_or_else(|e| panic!("{msg:?} encodes to a frame that does not decode: {e}"));
    assert_eq!(encode_frame(&again), f, "{msg:?} encodes two ways");
    if reflexive(msg) {
        assert_eq!(&again, msg, "a decoded message does not survive encoding");
    }
}

/// The checks the bus's router applies to what clients send, over the devices the
/// input itself declared.
#[derive(Default)]
struct Router {
    devices: HashMap<String, DeviceDescriptor>,
}

impl Router {
    fn client(&mut self, msg: ClientMsg) {
        match msg {
            ClientMsg::Declare { device, .. }
                if device.validate().is_ok() && self.devices.len() < 16 =>
            {
                self.devices.insert(device.key(), device);
            }
            ClientMsg::Sub { filters, .. } | ClientMsg::Unsub { filters, .. } => {
                filters.iter().for_each(|f| filter(f));
            }
            ClientMsg::Tsub { filter: f, hz, .. } => {
                filter(&f);
                let gate = tm::RateGate::new(hz);
                assert!(gate.period() >= std::time::Duration::from_millis(1));
            }
            ClientMsg::Get { topic, .. } => self.topic(&topic, None),
            ClientMsg::Pub { topic, value, .. } => self.topic(&topic, Some(&value)),
            ClientMsg::Set { topic, value, .. }
            | ClientMsg::Call {
                topic, args: value, ..
            } => self.topic(&topic, Some(&value)),
            _ => {}
        }
    }

    fn topic(&self, topic: &str, value: Option<&Value>) {
        let Ok(t) = crate::topic::Topic::new(topic) else {
            return;
        };
        assert_eq!(t.as_str(), topic);
        let (Some((key, control)), Some(value)) = (topic.rsplit_once('/'), value) else {
            return;
        };
        let Some(spec) = self.devices.get(key).and_then(|d| d.control(control)) else {
            return;
        };
        // A command's value, or an adapter's publish of its own control.
        if let Ok(v) = spec.check_set(value) {
            assert_eq!(
                spec.check_set(&v).as_ref(),
                Ok(&v),
                "check_set normalizes twice"
            );
            if let Some(p) = spec.position(&v) {
                assert!((0.0..=1.0).contains(&p), "position {p} of {v}");
            }
            let _ = spec.display(&v);
        }
        // Meters and nil are stored unchecked and shown all the same.
        let _ = (spec.position(value), spec.display(value));
    }
}

fn filter(f: &str) {
    if let Ok(parsed) = crate::topic::Filter::new(f) {
        assert_eq!(parsed.as_str(), f);
        assert!(f.starts_with(parsed.literal_prefix()));
        if parsed.is_exact() {
            assert!(parsed.matches(f));
        }
    }
}

// ---- datagram: UDP telemetry ----

/// The telemetry datagram decoder: header, records, and the values the bus and the
/// client make of them.
pub fn datagram(data: &[u8]) {
    let Ok((header, body)) = tm::decode_header(data) else {
        return;
    };
    assert!(data.len() <= tm::MAX_DATAGRAM);
    assert_eq!(header.token.is_some(), header.kind.to_bus());
    // Re-encoding gives back every byte up to the first malformed record.
    let mut out = BytesMut::new();
    tm::put_header(&mut out, header.kind, header.dseq, header.token);
    let mut recs = Vec::new();
    let mut malformed = false;
    for r in tm::records(body) {
        match r {
            Ok(r) => {
                tm::put_record(&mut out, &r);
                recs.push(r);
            }
            Err(_) => malformed = true,
        }
    }
    assert_eq!(&out[..], &data[..out.len()], "re-encoded records differ");
    assert!(malformed || out.len() == data.len(), "bytes left unread");
    for r in &recs {
        record(r);
    }
    // The bus's `get` of a stream: all its chunks together.
    let mut streams: HashMap<u32, Vec<Record<'_>>> = HashMap::new();
    for r in &recs {
        streams.entry(r.alias).or_default().push(*r);
    }
    for chunks in streams.values() {
        let same_format = chunks.iter().all(|r| r.format == chunks[0].format);
        let same_total = chunks.iter().all(|r| r.total == chunks[0].total);
        if same_format && same_total {
            let _ = tm::decode_value(chunks);
        }
    }
}

/// One record: its bounds, and its value as the client decodes it.
fn record(r: &Record<'_>) {
    let Some(value) = tm::decode_value(std::slice::from_ref(r)) else {
        assert_eq!(r.format, Format::MsgPack, "an f32 record without a value");
        return;
    };
    match r.format {
        Format::F32 => {
            let n = r.payload.len() / 4;
            assert!(
                r.payload.len().is_multiple_of(4) && n > 0,
                "an f32 record of no values"
            );
            assert!(usize::from(r.offset) + n <= usize::from(r.total));
            // Every value lands where its offset says.
            let got: Vec<f32> = match &value {
                Value::F32(f) => vec![*f],
                Value::Array(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                other => panic!("f32 record decoded to {other:?}"),
            };
            assert_eq!(got.len(), usize::from(r.total));
            for (i, v) in r.f32s().enumerate() {
                let at = got[usize::from(r.offset) + i];
                assert!(at.to_bits() == v.to_bits() || (at.is_nan() && v.is_nan()));
            }
        }
        Format::MsgPack => {
            // The bus re-encodes what it decoded: it must fit a record again.
            let mut scratch = BytesMut::new();
            let recs = tm::encode_value(&mut scratch, r.alias, r.seq, r.time_us, 0, &value);
            let recs = recs.unwrap_or_else(|e| panic!("{value:?} read from a record: {e}"));
            assert!(recs
                .iter()
                .all(|b| b.len() + tm::HEADER_TO_BUS <= tm::MAX_DATAGRAM));
        }
    }
}

// ---- config ----

/// The configuration parser with the checks `avbus serve` runs before it binds, then
/// what the bus computes from a configuration it accepted.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let cfg = match crate::config::Config::parse(&text, "fuzz.toml") {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.toml: "), "{e}");
            return;
        }
    };
    // `bus::start`.
    let now = tokio::time::Instant::now();
    let _ = tokio::sync::Semaphore::new(cfg.limits.max_connections);
    let backoff = crate::auth::Backoff::new(
        std::time::Duration::from_millis(cfg.auth.backoff_ms),
        std::time::Duration::from_millis(cfg.auth.backoff_max_ms),
        cfg.auth.tracked_addresses,
    );
    let ip = std::net::IpAddr::from([192, 0, 2, 1]);
    for _ in 0..70 {
        backoff.fail(ip, now.into_std());
    }
    // Each connection's reader: the heartbeat, the silence limit, the rate buckets.
    let _silent = cfg.heartbeat() * cfg.session.heartbeat_misses;
    let _ = std::time::Instant::now() + cfg.heartbeat();
    if let Some(mut rate) = crate::bus::guard::RateLimit::new(&cfg.limits, now) {
        for _ in 0..3 {
            let _ = rate.frame(cfg.limits.max_frame_bytes, now);
        }
    }
    let _ = std::time::Instant::now() + std::time::Duration::from_millis(cfg.session.grace_ms);
    let _ = tm::RateGate::new(cfg.telemetry.max_hz);
}

// ---- pjlink ----

/// The PJLink line reader and parser, both directions, and the typed values the
/// adapter reads from replies and the simulator from commands.
pub fn pjlink(data: &[u8]) {
    use pjlink::proto::{next_line, MAX_FIRST_LINE};
    let (lines, _) = same_every_way(data, "pjlink", |chunks| {
        let mut buf = BytesMut::new();
        let mut lines = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match next_line(&mut buf) {
                    Ok(Some(line)) => lines.push(line),
                    Ok(None) => {
                        assert!(buf.len() < MAX_FIRST_LINE);
                        break;
                    }
                    // The peer is dropped.
                    Err(_) => return (lines, true),
                }
            }
        }
        (lines, false)
    });
    for line in &lines {
        pjlink_line(line);
    }
    pjlink_line(data);
}

fn pjlink_line(line: &[u8]) {
    use pjlink::proto::{
        format_line, parse_line, AvMuteSet, InputCode, Message, CR, MAX_FIRST_LINE,
    };
    let message = match parse_line(line) {
        Ok(m) => m,
        Err(e) => {
            assert!(e.line.to_string().len() <= 4 * 64 + 32, "{e}");
            return;
        }
    };
    let out = format_line(&message);
    assert_eq!(out.last(), Some(&CR));
    assert!(out.len() <= MAX_FIRST_LINE);
    assert_eq!(parse_line(&out[..out.len() - 1]).as_ref(), Ok(&message));
    match &message {
        Message::Response(r) => pjlink_reply(r),
        // What the simulator reads from a command's parameter.
        Message::Command { command, .. } => {
            let p = command.param.as_str();
            if let Ok(set) = AvMuteSet::parse(p) {
                assert_eq!(set.to_string(), p);
            }
            if let Ok(code) = InputCode::parse(p) {
                assert_eq!(code.to_string(), p);
            }
        }
        _ => {}
    }
}

fn pjlink_reply(r: &pjlink::proto::Response) {
    use pjlink::proto::{
        format_lamps, parse_lamps, AvMute, ErrorStatus, InputCode, MacAddress, Notification,
        PowerState, MAX_LAMPS, MAX_LAMP_HOURS,
    };
    let v = r.value().unwrap_or("");
    if let Ok(p) = PowerState::parse(v) {
        assert_eq!(p.as_str(), v);
    }
    if let Ok(code) = InputCode::parse(v) {
        assert_eq!(code.to_string(), v);
    }
    if let Ok(m) = AvMute::parse(v) {
        assert_eq!(AvMute::parse(m.as_str()), Ok(m));
    }
    if let Ok(e) = ErrorStatus::parse(v) {
        assert_eq!(e.to_string(), v);
    }
    if let Ok(lamps) = parse_lamps(v) {
        assert!((1..=MAX_LAMPS).contains(&lamps.len()));
        assert!(lamps.iter().all(|l| l.hours <= MAX_LAMP_HOURS));
        assert_eq!(parse_lamps(&format_lamps(&lamps)), Ok(lamps));
    }
    if let Ok(mac) = MacAddress::parse(v) {
        assert!(mac.to_string().eq_ignore_ascii_case(v));
    }
    // `INST ?`: the inputs the projector lists.
    for code in v.split(' ').filter_map(|c| InputCode::parse(c).ok()) {
        let _ = code.is_class1();
    }
    if let Ok(Some(n)) = Notification::from_response(r) {
        assert_eq!(Notification::from_response(&n.to_response()), Ok(Some(n)));
    }
}

// ---- extron ----

/// The SIS response reader of the adapter (`ClientCodec`) and the command parser of
/// the simulator, with the typed answers read from responses.
pub fn extron(data: &[u8]) {
    use extron::proto::{format_response, parse_response, ClientCodec, Response, MAX_LINE_LEN};
    let (responses, _) = same_every_way(data, "extron responses", |chunks| {
        let mut codec = ClientCodec;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(r)) => out.push(r),
                    Ok(None) => {
                        assert!(buf.len() <= MAX_LINE_LEN);
                        break;
                    }
                    // Ends the `Framed` stream: the adapter reconnects.
                    Err(_) => return (out, true),
                }
            }
        }
        (out, false)
    });
    for r in responses {
        // The formatter writes what a device sends; it cannot write an empty line, one
        // that starts like the password prompt (which has no line end), or one made
        // longer than a line may be by replacing invalid UTF-8 (one byte, three after).
        let mut out = BytesMut::new();
        format_response(&r, &mut out);
        let unwritable = match &r {
            Response::Value(t) | Response::Banner(t) => {
                t.is_empty() || t.starts_with("Password:") || out.len() > MAX_LINE_LEN
            }
            _ => false,
        };
        if !unwritable {
            match parse_response(&out) {
                Ok(Some((again, n))) => {
                    assert_eq!(again, r, "{out:?}");
                    assert_eq!(n, out.len(), "{out:?}");
                }
                other => panic!("{r:?} formats to {out:?}, read back as {other:?}"),
            }
        }
        if let Response::Value(info) = &r {
            if let Some(size) = extron::adapter::MatrixSize::parse(info) {
                assert!((1..=255).contains(&size.inputs) && (1..=256).contains(&size.outputs));
            }
        }
    }
    let (commands, _) = same_every_way(data, "extron commands", extron_commands);
    for c in commands.into_iter().flatten() {
        let mut out = BytesMut::new();
        extron::proto::format_command(&c, &mut out);
        match extron::proto::parse_command(&out) {
            Ok(Some((again, n))) => {
                assert_eq!(again, c, "{out:?}");
                assert_eq!(n, out.len(), "{out:?}");
            }
            other => panic!("{c:?} formats to {out:?}, read back as {other:?}"),
        }
    }
}

/// The simulator's loop over what a controller sends: a command or an error code for
/// each, and the bytes each took (an error always takes at least one).
fn extron_commands(
    chunks: &[&[u8]],
) -> (Vec<Result<extron::proto::Command, extron::SisError>>, bool) {
    use bytes::Buf;
    use extron::proto::{filler_len, parse_command, MAX_COMMAND_LEN};
    let mut pending = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        loop {
            pending.advance(filler_len(&pending));
            match parse_command(&pending) {
                Ok(Some((c, n))) => {
                    assert!(n > 0 && n <= pending.len());
                    pending.advance(n);
                    out.push(Ok(c));
                }
                Ok(None) => {
                    assert!(pending.len() < MAX_COMMAND_LEN);
                    break;
                }
                Err(e) => {
                    assert!(e.consumed() > 0 && e.consumed() <= pending.len(), "{e}");
                    pending.advance(e.consumed());
                    out.push(Err(e.code()));
                }
            }
        }
    }
    (out, false)
}

// ---- qrc ----

/// The QRC NUL framer (at the real 1 MiB limit, and at a small one to reach the
/// over-long path), the request parser of the simulator and the message parser of
/// the adapter, with the result types the adapter decodes.
pub fn qrc(data: &[u8]) {
    use qrc::proto::{Framer, MAX_MESSAGE};
    let framing = |max: usize| {
        move |chunks: &[&[u8]]| {
            let mut framer = Framer::new(max);
            let mut out = Vec::new();
            for chunk in chunks {
                framer.extend(chunk);
                while let Some(f) = framer.next_frame() {
                    if let Ok(f) = &f {
                        assert!(!f.is_empty() && f.len() <= max && !f.contains(&0));
                    }
                    out.push(f.map_err(|e| e.to_string()));
                }
                assert!(framer.buffered() <= max + chunk.len());
            }
            (out, false)
        }
    };
    let (frames, _) = same_every_way(data, "qrc framing", framing(MAX_MESSAGE));
    same_every_way(data, "qrc framing (64-byte limit)", framing(64));
    for f in frames.iter().flatten() {
        qrc_frame(f);
    }
    if !data.contains(&0) {
        qrc_frame(data);
    }
}

fn qrc_frame(f: &[u8]) {
    use qrc::proto::{
        encode_error, encode_notification, encode_request, encode_result, parse_incoming,
        parse_request, ComponentControls, ComponentInfo, ControlInfo, EngineStatus, Incoming,
        PollResult,
    };
    let strip = |mut v: Vec<u8>| {
        assert_eq!(v.pop(), Some(0));
        assert!(!v.contains(&0));
        v
    };
    match parse_request(f) {
        Ok(env) => {
            let again = strip(encode_request(env.id.as_ref(), &env.request));
            let back = parse_request(&again);
            if reflexive(&env.request) {
                assert_eq!(
                    back.as_ref(),
                    Ok(&env),
                    "{}",
                    String::from_utf8_lossy(&again)
                );
            }
        }
        // The simulator answers with the error: the adapter reads it back.
        Err(e) => {
            let answer = strip(encode_error(e.request_id(), &e.rpc_error()));
            match parse_incoming(&answer) {
                Ok(Incoming::Response { id, outcome }) => {
                    assert_eq!(id.as_ref(), e.request_id());
                    assert_eq!(outcome, Err(e.rpc_error()));
                }
                other => panic!("error answer read back as {other:?}"),
            }
        }
    }
    match parse_incoming(f) {
        Ok(Incoming::Notification(n)) => {
            let again = strip(encode_notification(&n));
            if reflexive(&n) {
                assert_eq!(parse_incoming(&again), Ok(Incoming::Notification(n)));
            }
        }
        Ok(Incoming::Response { id, outcome }) => {
            if let Ok(json) = &outcome {
                let again = strip(encode_result(id.as_ref(), json));
                assert_eq!(
                    parse_incoming(&again),
                    Ok(Incoming::Response {
                        id: id.clone(),
                        outcome: outcome.clone()
                    })
                );
                // What the adapter decodes answers into.
                let _ = serde_json::from_value::<PollResult>(json.clone());
                let _ = serde_json::from_value::<Vec<ComponentInfo>>(json.clone());
                let _ = serde_json::from_value::<ComponentControls<ControlInfo>>(json.clone());
                let _ = serde_json::from_value::<ControlInfo>(json.clone());
                let _ = serde_json::from_value::<EngineStatus>(json.clone());
            }
        }
        Err(e) => {
            assert!(e.to_string().len() <= 4 * 96 + 512, "{e}");
        }
    }
}

// ---- visca ----

/// The VISCA-over-IP datagram decoder and every payload decoder: whatever decodes
/// encodes back to the same bytes.
pub fn visca(data: &[u8]) {
    use visca::proto::{
        decode_datagram, Answer, Command, Control, ControlReply, Inquiry, PayloadType, Reply,
        MAX_DATAGRAM,
    };
    let payload = match decode_datagram(data) {
        Ok(d) => {
            assert!(data.len() <= MAX_DATAGRAM);
            assert_eq!(d.encode(), data);
            let _ = PayloadType::from_code(d.kind.code());
            d.payload.as_bytes().to_vec()
        }
        // The payload decoders also get the raw input.
        Err(e) => {
            assert!(e.to_string().len() <= 3 * 32 + 96, "{e}");
            data.to_vec()
        }
    };
    let p = &payload[..];
    if let Ok(c) = Command::decode(p) {
        assert_eq!(c.encode().as_bytes(), p, "{c:?}");
    }
    if let Ok(i) = Inquiry::decode(p) {
        assert_eq!(i.encode().as_bytes(), p, "{i:?}");
    }
    if let Ok(r) = Reply::decode(p) {
        assert_eq!(r.encode().as_bytes(), p, "{r:?}");
    }
    for inquiry in [
        Inquiry::Power,
        Inquiry::ZoomPosition,
        Inquiry::PanTiltPosition,
    ] {
        if let Ok(a) = Answer::decode(inquiry, p) {
            assert_eq!(a.inquiry(), inquiry);
            assert_eq!(a.encode().as_bytes(), p, "{a:?}");
            assert!(matches!(Reply::decode(p), Ok(Reply::Data(_))));
        }
    }
    if let Ok(c) = Control::decode(p) {
        assert_eq!(c.encode().as_bytes(), p, "{c:?}");
    }
    if let Ok(c) = ControlReply::decode(p) {
        assert_eq!(c.encode().as_bytes(), p, "{c:?}");
    }
}

// ---- osc ----

/// The OSC/X32 datagram decoder (bundles flattened), the console's request parser,
/// the adapter's reply parser and the meter blob decoder.
pub fn osc(data: &[u8]) {
    use x32::proto::{
        decode_messages, decode_meter_blob, encode_meter_blob, Reply, Request, MAX_MESSAGES,
        MAX_METER_VALUES,
    };
    // An empty bundle is valid OSC: no messages.
    if let Ok(messages) = decode_messages(data) {
        assert!(messages.len() <= MAX_MESSAGES);
    }
    // Debug text compares NaN meter values equal to themselves.
    if let Ok(replies) = Reply::decode(data) {
        for r in replies {
            let again = Reply::decode(&r.encode());
            assert_eq!(format!("{again:?}"), format!("{:?}", Ok::<_, ()>(vec![&r])));
        }
    }
    if let Ok(requests) = Request::decode(data) {
        for r in requests {
            let again = Request::decode(&r.encode());
            assert_eq!(format!("{again:?}"), format!("{:?}", Ok::<_, ()>(vec![&r])));
        }
    }
    if let Ok(values) = decode_meter_blob(data) {
        assert!(values.len() <= MAX_METER_VALUES);
        assert_eq!(encode_meter_blob(&values), data);
    }
}
