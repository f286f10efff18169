//! Values carried by the bus, and their JSON mapping.
//!
//! A value is any MessagePack value ([`rmpv::Value`]): nil, bool, int, float, string,
//! bytes, array, map. The CLI reads and prints JSON; the mapping (documented in
//! `docs/protocol.md`) keeps ints and floats apart:
//!
//! | MessagePack | JSON |
//! |---|---|
//! | nil | `null` |
//! | bool | `true` / `false` |
//! | int | a number without fraction or exponent: `42`, `-7` |
//! | float 32/64 | a number with a fraction: `0.5`, `1.0` (NaN and ±inf print as `null`) |
//! | str | string |
//! | bin | `{"$hex": "0a1b"}` |
//! | array | array |
//! | map | object (non-string keys are printed as their JSON text) |
//! | ext | `{"$ext": [type, "hex"]}` |

pub use rmpv::Value;

/// Parses a CLI argument: JSON if it parses, otherwise the bare word as a string
/// (`avbus set boardroom/projector/power on`).
pub fn from_cli_arg(arg: &str) -> Value {
    match serde_json::from_str::<serde_json::Value>(arg) {
        Ok(json) => from_json(&json),
        Err(_) => Value::from(arg),
    }
}

/// Converts JSON to a bus value, following the mapping in the module docs.
pub fn from_json(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::Array(a.iter().map(from_json).collect()),
        J::Object(o) => {
            if o.len() == 1 {
                if let Some(J::String(hex)) = o.get("$hex") {
                    if let Some(bytes) = decode_hex(hex) {
                        return Value::Binary(bytes);
                    }
                }
            }
            Value::Map(
                o.iter()
                    .map(|(k, v)| (Value::from(k.as_str()), from_json(v)))
                    .collect(),
            )
        }
    }
}

/// Converts a bus value to JSON, following the mapping in the module docs.
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => {
            if let Some(v) = i.as_i64() {
                J::from(v)
            } else {
                J::from(i.as_u64().unwrap_or(0))
            }
        }
        // The shortest decimal that reads back as the same f32 (-12.7, not
        // -12.699999809265137).
        Value::F32(f) => float_json(f.to_string().parse::<f64>().unwrap_or(f64::from(*f))),
        Value::F64(f) => float_json(*f),
        Value::String(s) => J::String(
            s.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        ),
        Value::Binary(b) => serde_json::json!({ "$hex": encode_hex(b) }),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k.as_str() {
                        Some(s) => s.to_owned(),
                        None => to_json(k).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(t, b) => serde_json::json!({ "$ext": [t, encode_hex(b)] }),
    }
}

fn float_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// Prints a value as compact JSON text.
pub fn to_json_string(value: &Value) -> String {
    to_json(value).to_string()
}

fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Converts a serializable type to a value with named map keys (structs become
/// maps, as on the wire), the form clients in other languages expect.
pub fn to_value<T: serde::Serialize + ?Sized>(v: &T) -> Value {
    rmp_serde::to_vec_named(v)
        .ok()
        .and_then(|b| rmpv::decode::read_value(&mut b.as_slice()).ok())
        .unwrap_or(Value::Nil)
}

/// The value under `key` in a map (`None` for other values or a missing key).
pub fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    match map {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Converts a value back to a type (the inverse of [`to_value`]).
///
/// # Errors
/// A message when the value does not have the type's shape.
pub fn from_value<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, v).map_err(|e| e.to_string())?;
    rmp_serde::from_slice(&buf).map_err(|e| e.to_string())
}

/// The number in a value as f64, if it is one.
pub fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Integer(i) => i.as_f64(),
        Value::F32(f) => Some(f64::from(*f)),
        Value::F64(f) => Some(*f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_args() {
        assert_eq!(from_cli_arg("on"), Value::from("on"));
        assert_eq!(from_cli_arg("\"on\""), Value::from("on"));
        assert_eq!(from_cli_arg("true"), Value::Boolean(true));
        assert_eq!(from_cli_arg("42"), Value::from(42));
        assert_eq!(from_cli_arg("-1.5"), Value::F64(-1.5));
        assert_eq!(
            from_cli_arg("{\"$hex\":\"0aff\"}"),
            Value::Binary(vec![10, 255])
        );
    }

    #[test]
    fn json_keeps_ints_and_floats_apart() {
        assert_eq!(to_json_string(&Value::from(1)), "1");
        assert_eq!(to_json_string(&Value::F64(1.0)), "1.0");
        assert_eq!(to_json_string(&Value::F64(f64::NAN)), "null");
        assert_eq!(
            to_json_string(&Value::Binary(vec![1, 2])),
            "{\"$hex\":\"0102\"}"
        );
    }
}
