//! The journal's file format: a header, then length-prefixed, checksummed records.
//!
//! ```text
//! file    = header record*
//! header  = "AVBUSJ01"                      (8 bytes: magic and format version)
//! record  = len:u32 LE  crc:u32 LE  body    (crc = CRC-32/IEEE of body, len = body bytes)
//! body    = MessagePack array [topic: str, value: any, time_ms: uint, quality: nil | str]
//! ```
//!
//! A record whose `value` is nil and `quality` nil is a tombstone: the topic was
//! deleted. The last record of a topic wins. Reading stops at the first record that is
//! short, too long, fails its checksum or does not decode: everything before it is
//! good (each record was written whole, in order), everything from it on is a torn or
//! corrupt tail.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::model::Quality;
use crate::value::Value;

/// The first bytes of every journal file.
pub const HEADER: &[u8; 8] = b"AVBUSJ01";
/// Bytes before a record's body.
pub const RECORD_HEAD: usize = 8;

#[derive(Serialize)]
struct BodyRef<'a> {
    topic: &'a str,
    value: &'a Value,
    time: u64,
    quality: Option<Quality>,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Entry {
    pub topic: String,
    pub value: Value,
    /// When the bus accepted the value, ms since the Unix epoch.
    pub time: u64,
    pub quality: Option<Quality>,
}

impl Entry {
    /// Whether this record deletes its topic.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_nil() && self.quality.is_none()
    }
}

/// Appends one record to `out`.
pub fn put(out: &mut BytesMut, topic: &str, value: &Value, time: u64, quality: Option<Quality>) {
    let start = out.len();
    out.put_u64_le(0); // len and crc, filled in below
    let body = BodyRef {
        topic,
        value,
        time,
        quality,
    };
    rmp_serde::encode::write(&mut (&mut *out).writer(), &body)
        .expect("encoding into memory cannot fail");
    let len = out.len() - start - RECORD_HEAD;
    let crc = crc32fast::hash(&out[start + RECORD_HEAD..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why reading stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    #[error("a record header cut short ({0} bytes)")]
    ShortHead(usize),
    #[error("a record of {len} bytes cut short at {have}")]
    ShortBody { len: usize, have: usize },
    #[error("a record length of {0} bytes, over the limit")]
    TooLong(usize),
    #[error("checksum mismatch")]
    Checksum,
    #[error("a record that does not decode: {0}")]
    Decode(String),
}

/// What [`scan`] found: each good record with its bytes (head included), where the
/// good part ends, and why reading stopped early.
pub type Scanned<'a> = (Vec<(Entry, &'a [u8])>, usize, Option<TailError>);

/// Splits the records after the header off `data`.
pub fn scan(data: &[u8], max_record: usize) -> Scanned<'_> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match next(&data[at..], max_record) {
            Ok((entry, n)) => {
                entries.push((entry, &data[at..at + n]));
                at += n;
            }
            Err(e) => return (entries, at, Some(e)),
        }
    }
    (entries, at, None)
}

/// Decodes the record at the start of `data`; returns it and its size.
pub fn next(data: &[u8], max_record: usize) -> Result<(Entry, usize), TailError> {
    if data.len() < RECORD_HEAD {
        return Err(TailError::ShortHead(data.len()));
    }
    let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    if len > max_record {
        return Err(TailError::TooLong(len));
    }
    let have = data.len() - RECORD_HEAD;
    if have < len {
        return Err(TailError::ShortBody { len, have });
    }
    let body = &data[RECORD_HEAD..RECORD_HEAD + len];
    if crc32fast::hash(body) != crc {
        return Err(TailError::Checksum);
    }
    let entry: Entry = rmp_serde::from_slice(body).map_err(|e| TailError::Decode(e.to_string()))?;
    Ok((entry, RECORD_HEAD + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(topic: &str, v: Value) -> BytesMut {
        let mut b = BytesMut::new();
        put(&mut b, topic, &v, 7, None);
        b
    }

    #[test]
    fn records_round_trip() {
        let mut b = rec("room/scene", Value::from("movie"));
        put(&mut b, "room/scene", &Value::Nil, 8, None);
        put(&mut b, "a/b", &Value::Nil, 9, Some(Quality::Stale));
        let (entries, end, err) = scan(&b, 1 << 20);
        assert_eq!((end, err), (b.len(), None));
        let got: Vec<_> = entries.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(got[0].value, Value::from("movie"));
        assert!(got[1].is_tombstone());
        assert!(!got[2].is_tombstone());
        assert_eq!(got[2].quality, Some(Quality::Stale));
    }

    #[test]
    fn a_torn_tail_is_found_at_every_cut() {
        let mut b = rec("x/one", Value::from(1));
        let first = b.len();
        put(&mut b, "x/two", &Value::from(2), 7, None);
        for cut in first + 1..b.len() {
            let (entries, end, err) = scan(&b[..cut], 1 << 20);
            assert_eq!(entries.len(), 1, "cut at {cut}");
            assert_eq!(end, first);
            assert!(err.is_some());
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let b = rec("x/one", Value::from("abc"));
        for i in RECORD_HEAD..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            let (entries, end, err) = scan(&c, 1 << 20);
            assert!(entries.is_empty() && end == 0, "byte {i}");
            assert_eq!(err, Some(TailError::Checksum));
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading() {
        let mut b = rec("x/one", Value::from(1));
        b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(next(&b, 1 << 20), Err(TailError::TooLong(_))));
    }
}
