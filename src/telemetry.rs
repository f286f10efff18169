//! The telemetry datagram format (UDP, and WebSocket binary messages for browsers)
//! and the per-subscriber rate gate. `docs/protocol.md` ("Telemetry") is the
//! reference for other languages; this module is the reference for Rust.
//!
//! ```text
//! datagram  = header records*              (at most MAX_DATAGRAM bytes)
//! header    = magic "\xA7\xB5" · version u8 (1) · type u8 · dseq u32
//!             [· token u64]                 (only on datagrams *to* the bus)
//! record    = alias u32 · seq u32 · time_us u64 · format u8 · flags u8
//!             · offset u16 · total u16 · len u16 · payload[len]
//! ```
//!
//! All integers big-endian; f32 payload values little-endian (as audio consoles
//! send them). A record is encoded once per new value and the same bytes go into
//! every subscriber's datagrams.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::{Duration, Instant};

use crate::value::Value;

/// First two bytes of every telemetry datagram. `0xA7` is not a MessagePack map
/// marker, so on a WebSocket a telemetry message is told from a control frame by its
/// first byte.
pub const MAGIC: [u8; 2] = [0xA7, 0xB5];
/// The telemetry format version.
pub const VERSION: u8 = 1;
/// Largest datagram sent or accepted (fits a 1280-byte IPv6 minimum MTU).
pub const MAX_DATAGRAM: usize = 1200;
/// Header of datagrams from the bus.
pub const HEADER: usize = 8;
/// Header of datagrams to the bus (with the token).
pub const HEADER_TO_BUS: usize = 16;
/// Bytes before a record's payload.
pub const RECORD_HEADER: usize = 24;
/// Most f32 values in one record: a stream with more channels is split into records
/// of this many values, each with its `offset`.
pub const CHUNK_VALUES: usize = (MAX_DATAGRAM - HEADER_TO_BUS - RECORD_HEADER) / 4;
/// Largest MessagePack payload of one record (those are never split).
pub const MAX_MSGPACK_PAYLOAD: usize = MAX_DATAGRAM - HEADER_TO_BUS - RECORD_HEADER;

/// Datagram types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Client → bus: bind this source address to the token.
    Bind = 1,
    /// Client → bus: new values for streams the client's session owns.
    Publish = 2,
    /// Bus → client: the newest values of subscribed streams.
    Data = 3,
    /// Bus → client: the bind was accepted.
    Bound = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Bind,
            2 => Kind::Publish,
            3 => Kind::Data,
            4 => Kind::Bound,
            _ => return None,
        })
    }

    /// Whether datagrams of this type go to the bus (and carry a token).
    pub fn to_bus(self) -> bool {
        matches!(self, Kind::Bind | Kind::Publish)
    }
}

/// Payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One MessagePack value.
    MsgPack = 0,
    /// `len / 4` little-endian f32 values, starting at channel `offset` of `total`.
    F32 = 1,
}

/// Record flag: the stream's source has gone silent; the value is the last known.
pub const FLAG_STALE: u8 = 1;

/// Why a datagram was refused. Each has a counter on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("shorter than its header")]
    Truncated,
    #[error("larger than {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("wrong magic")]
    BadMagic,
    #[error("unsupported version")]
    BadVersion,
    #[error("unknown datagram type")]
    BadType,
    #[error("a record runs past the end or is malformed")]
    BadRecord,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Datagram sequence of the sender, per destination: gaps are lost datagrams.
    pub dseq: u32,
    /// The sender's token (datagrams to the bus only).
    pub token: Option<u64>,
}

/// One record, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    pub alias: u32,
    pub seq: u32,
    pub time_us: u64,
    pub format: Format,
    pub flags: u8,
    pub offset: u16,
    pub total: u16,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes this record takes in a datagram.
    pub fn wire_len(&self) -> usize {
        RECORD_HEADER + self.payload.len()
    }

    /// The f32 values of an `F32` record.
    pub fn f32s(&self) -> impl Iterator<Item = f32> + '_ {
        self.payload
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Decodes a datagram's header; returns it and the rest (the records).
///
/// # Errors
/// [`DatagramError`] for anything but a well-formed header.
pub fn decode_header(d: &[u8]) -> Result<(Header, &[u8]), DatagramError> {
    if d.len() > MAX_DATAGRAM {
        return Err(DatagramError::Oversized);
    }
    if d.len() < HEADER {
        return Err(DatagramError::Truncated);
    }
    if d[0..2] != MAGIC {
        return Err(DatagramError::BadMagic);
    }
    if d[2] != VERSION {
        return Err(DatagramError::BadVersion);
    }
    let kind = Kind::from_u8(d[3]).ok_or(DatagramError::BadType)?;
    let dseq = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
    if kind.to_bus() {
        if d.len() < HEADER_TO_BUS {
            return Err(DatagramError::Truncated);
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&d[8..16]);
        let token = Some(u64::from_be_bytes(t));
        Ok((Header { kind, dseq, token }, &d[HEADER_TO_BUS..]))
    } else {
        Ok((
            Header {
                kind,
                dseq,
                token: None,
            },
            &d[HEADER..],
        ))
    }
}

/// Iterates over the records of a datagram body; yields an error (and stops) at the
/// first malformed one.
pub fn records(mut body: &[u8]) -> impl Iterator<Item = Result<Record<'_>, DatagramError>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        match decode_record(body) {
            Ok((r, rest)) => {
                body = rest;
                Some(Ok(r))
            }
            Err(e) => {
                body = &[];
                Some(Err(e))
            }
        }
    })
}

fn decode_record(b: &[u8]) -> Result<(Record<'_>, &[u8]), DatagramError> {
    if b.len() < RECORD_HEADER {
        return Err(DatagramError::BadRecord);
    }
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let alias = u32_at(0);
    let seq = u32_at(4);
    let time_us = (u64::from(u32_at(8)) << 32) | u64::from(u32_at(12));
    let format = match b[16] {
        0 => Format::MsgPack,
        1 => Format::F32,
        _ => return Err(DatagramError::BadRecord),
    };
    let flags = b[17];
    let offset = u16_at(18);
    let total = u16_at(20);
    let len = usize::from(u16_at(22));
    let rest = &b[RECORD_HEADER..];
    if len > rest.len() {
        return Err(DatagramError::BadRecord);
    }
    // At least one value, so `offset < total`: the bus files a part under chunk
    // `offset / CHUNK_VALUES`, which must be one of the stream's chunks.
    if format == Format::F32
        && (len == 0 || len % 4 != 0 || usize::from(offset) + len / 4 > usize::from(total))
    {
        return Err(DatagramError::BadRecord);
    }
    let record = Record {
        alias,
        seq,
        time_us,
        format,
        flags,
        offset,
        total,
        payload: &rest[..len],
    };
    Ok((record, &rest[len..]))
}

/// Appends a datagram header.
pub fn put_header(buf: &mut BytesMut, kind: Kind, dseq: u32, token: Option<u64>) {
    buf.put_slice(&MAGIC);
    buf.put_u8(VERSION);
    buf.put_u8(kind as u8);
    buf.put_u32(dseq);
    if let Some(t) = token {
        buf.put_u64(t);
    }
}

/// Appends one record.
pub fn put_record(buf: &mut BytesMut, r: &Record<'_>) {
    buf.put_u32(r.alias);
    buf.put_u32(r.seq);
    buf.put_u64(r.time_us);
    buf.put_u8(r.format as u8);
    buf.put_u8(r.flags);
    buf.put_u16(r.offset);
    buf.put_u16(r.total);
    buf.put_u16(r.payload.len() as u16);
    buf.put_slice(r.payload);
}

/// A value could not be carried as telemetry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("a MessagePack telemetry value may take at most {MAX_MSGPACK_PAYLOAD} bytes")]
    TooLarge,
    #[error("at most {} channels", u16::MAX)]
    TooManyChannels,
}

/// Encodes a stream's new value as its records (one, or one per chunk of
/// [`CHUNK_VALUES`] channels): numbers and arrays of numbers as f32, anything else
/// as MessagePack. Each record is its own `Bytes`, ready to be shared.
///
/// # Errors
/// [`ValueError`] when the value cannot fit.
pub fn encode_value(
    scratch: &mut BytesMut,
    alias: u32,
    seq: u32,
    time_us: u64,
    flags: u8,
    value: &Value,
) -> Result<Vec<Bytes>, ValueError> {
    let mut out = Vec::with_capacity(1);
    if let Some(n) = value.as_f64() {
        push_f32_chunks(scratch, &mut out, alias, seq, time_us, flags, &[n as f32]);
        return Ok(out);
    }
    if let Value::Array(items) = value {
        if !items.is_empty() && items.iter().all(|v| v.as_f64().is_some()) {
            if items.len() > usize::from(u16::MAX) {
                return Err(ValueError::TooManyChannels);
            }
            let vals: Vec<f32> = items
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                .collect();
            push_f32_chunks(scratch, &mut out, alias, seq, time_us, flags, &vals);
            return Ok(out);
        }
    }
    let mut payload = Vec::new();
    // Writing a Value into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut payload, value);
    if payload.len() > MAX_MSGPACK_PAYLOAD {
        return Err(ValueError::TooLarge);
    }
    scratch.clear();
    put_record(
        scratch,
        &Record {
            alias,
            seq,
            time_us,
            format: Format::MsgPack,
            flags,
            offset: 0,
            total: 0,
            payload: &payload,
        },
    );
    out.push(scratch.split().freeze());
    Ok(out)
}

/// Encodes f32 values as records of at most [`CHUNK_VALUES`] each.
pub fn push_f32_chunks(
    scratch: &mut BytesMut,
    out: &mut Vec<Bytes>,
    alias: u32,
    seq: u32,
    time_us: u64,
    flags: u8,
    vals: &[f32],
) {
    let total = vals.len().min(usize::from(u16::MAX)) as u16;
    for (i, chunk) in vals[..usize::from(total)].chunks(CHUNK_VALUES).enumerate() {
        scratch.clear();
        scratch.put_u32(alias);
        scratch.put_u32(seq);
        scratch.put_u64(time_us);
        scratch.put_u8(Format::F32 as u8);
        scratch.put_u8(flags);
        scratch.put_u16((i * CHUNK_VALUES) as u16);
        scratch.put_u16(total);
        scratch.put_u16((chunk.len() * 4) as u16);
        for v in chunk {
            scratch.put_slice(&v.to_le_bytes());
        }
        out.push(scratch.split().freeze());
    }
}

/// The value carried by the records of one stream update (chunks in any order).
/// F32 streams of one channel decode to a float, of several to an array.
pub fn decode_value(records: &[Record<'_>]) -> Option<Value> {
    let first = records.first()?;
    match first.format {
        Format::MsgPack => rmpv::decode::read_value(&mut &first.payload[..]).ok(),
        Format::F32 => {
            let total = usize::from(first.total);
            let mut vals = vec![0f32; total];
            for r in records {
                for (i, v) in r.f32s().enumerate() {
                    if let Some(slot) = vals.get_mut(usize::from(r.offset) + i) {
                        *slot = v;
                    }
                }
            }
            if total == 1 {
                Some(Value::F32(vals[0]))
            } else {
                Some(Value::Array(vals.into_iter().map(Value::F32).collect()))
            }
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Lets a subscriber's batches through at most `hz` times a second. When values
/// keep coming the average rate is exactly `hz` (each slot follows the previous
/// one by one period, not "now + period", so timer lateness does not lower it);
/// after a quiet spell the next value passes at once.
#[derive(Debug, Clone)]
pub struct RateGate {
    period: Duration,
    next: Option<Instant>,
}

impl RateGate {
    /// A gate for `hz` batches a second (clamped to 0.1..=1000).
    pub fn new(hz: f64) -> RateGate {
        let hz = if hz.is_finite() {
            hz.clamp(0.1, 1000.0)
        } else {
            30.0
        };
        RateGate {
            period: Duration::from_secs_f64(1.0 / hz),
            next: None,
        }
    }

    /// The time between batches.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// When the next batch may go (`None`: now).
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a batch may go at `now`; if so, takes the slot.
    pub fn try_pass(&mut self, now: Instant) -> bool {
        match self.next {
            Some(due) if now < due => false,
            Some(due) if now - due < self.period => {
                self.next = Some(due + self.period);
                true
            }
            _ => {
                self.next = Some(now + self.period);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_gate_is_exact_with_an_injected_clock() {
        // 50 Hz input, 20 Hz gate, 10 s of virtual time: exactly 200 batches.
        let t0 = Instant::now();
        let mut g = RateGate::new(20.0);
        let mut passed = 0;
        for i in 0..500 {
            if g.try_pass(t0 + Duration::from_millis(20 * i)) {
                passed += 1;
            }
        }
        assert_eq!(passed, 200);
        // Input slower than the gate: every value passes.
        let mut g = RateGate::new(20.0);
        let passed = (0..100)
            .filter(|i| g.try_pass(t0 + Duration::from_millis(100 * i)))
            .count();
        assert_eq!(passed, 100);
        // A late timer does not lower the average: checks at 51 ms steps against a
        // 20 Hz gate still pass every time (each slot is 50 ms after the last).
        let mut g = RateGate::new(20.0);
        assert!(g.try_pass(t0));
        assert!(!g.try_pass(t0 + Duration::from_millis(49)));
        assert!(g.try_pass(t0 + Duration::from_millis(51)));
        assert_eq!(g.next_due(), Some(t0 + Duration::from_millis(100)));
        // After a quiet second, the next value passes at once.
        assert!(g.try_pass(t0 + Duration::from_millis(1200)));
        assert_eq!(g.next_due(), Some(t0 + Duration::from_millis(1250)));
    }

    #[test]
    fn documented_example_is_byte_exact() {
        // docs/protocol.md §11.2.
        let mut scratch = BytesMut::new();
        let recs = encode_value(
            &mut scratch,
            3,
            12,
            1_700_000_000_000_000,
            0,
            &Value::F32(0.5),
        )
        .unwrap();
        let mut d = BytesMut::new();
        put_header(&mut d, Kind::Data, 5, None);
        d.extend_from_slice(&recs[0]);
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "a7b5010300000005",
                "000000030000000c00060a24181e4000",
                "0100000000010004",
                "0000003f"
            )
        );
        assert_eq!(CHUNK_VALUES, 290);
    }

    #[test]
    fn records_round_trip_and_chunk() {
        let mut scratch = BytesMut::new();
        let vals: Vec<Value> = (0..700).map(|i| Value::F32(i as f32)).collect();
        let recs = encode_value(&mut scratch, 7, 3, 99, 0, &Value::Array(vals)).unwrap();
        assert_eq!(recs.len(), 700usize.div_ceil(CHUNK_VALUES));
        let mut d = BytesMut::new();
        put_header(&mut d, Kind::Data, 5, None);
        d.put_slice(&recs[1]);
        let (h, body) = decode_header(&d).unwrap();
        assert_eq!(h.kind, Kind::Data);
        assert_eq!(h.dseq, 5);
        let r: Vec<_> = records(body).collect::<Result<_, _>>().unwrap();
        assert_eq!(r[0].offset as usize, CHUNK_VALUES);
        assert_eq!(r[0].total, 700);
        assert_eq!(r[0].f32s().next(), Some(CHUNK_VALUES as f32));
        assert!(recs.iter().all(|r| r.len() + HEADER_TO_BUS <= MAX_DATAGRAM));
        // All chunks together give the value back.
        let parsed: Vec<Vec<u8>> = recs.iter().map(|b| b.to_vec()).collect();
        let rs: Vec<Record> = parsed.iter().map(|b| decode_record(b).unwrap().0).collect();
        match decode_value(&rs).unwrap() {
            Value::Array(a) => {
                assert_eq!(a.len(), 700);
                assert_eq!(a[699], Value::F32(699.0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_datagrams_are_typed() {
        assert_eq!(decode_header(&[0xA7]), Err(DatagramError::Truncated));
        assert_eq!(
            decode_header(&[0, 0, 1, 3, 0, 0, 0, 0]),
            Err(DatagramError::BadMagic)
        );
        assert_eq!(
            decode_header(&[0xA7, 0xB5, 2, 3, 0, 0, 0, 0]),
            Err(DatagramError::BadVersion)
        );
        assert_eq!(
            decode_header(&[0xA7, 0xB5, 1, 2, 0, 0, 0, 0]),
            Err(DatagramError::Truncated)
        );
        assert_eq!(
            decode_header(&vec![0; MAX_DATAGRAM + 1]),
            Err(DatagramError::Oversized)
        );
        let mut d = BytesMut::new();
        put_header(&mut d, Kind::Data, 0, None);
        d.put_slice(&[0; 30]); // a record claiming an f32 payload past its total
        d[HEADER + 16] = 1;
        d[HEADER + 23] = 4;
        let (_, body) = decode_header(&d).unwrap();
        assert_eq!(records(body).next(), Some(Err(DatagramError::BadRecord)));
    }
}
