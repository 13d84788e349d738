//! Canonical JSON, the byte form TUF signatures cover.
//!
//! TUF 1.0 signs "the canonical JSON form of the `signed` object"; the reference
//! implementation (securesystemslib's `encode_canonical`, OLPC canonical JSON) writes object
//! keys sorted by code point, no whitespace, integers only, and escapes only `"` and `\` in
//! strings (every other character, control characters included, is written as its UTF-8
//! bytes). We verify over this encoding of the `signed` value *as received* (parsed into a
//! [`serde_json::Value`], unknown fields included), never over a re-serialisation of our own
//! typed view: a field we do not know is still covered by the signature.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not canonical JSON: {0}")]
pub struct CanonicalError(pub String);

/// The canonical bytes of `value`. Floats have none (the specification allows integers only).
pub fn encode(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError(format!("{n} is not an integer")));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // serde_json's map (without `preserve_order`) is a BTreeMap<String, _>: its
            // order is byte order of UTF-8, which is code point order, as Python sorts.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_compact_and_minimal_escapes() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, -2, true, null], "a": "x\"y\\z\n\u00e9", "é": {}}"#)
                .unwrap();
        let got = String::from_utf8(encode(&v).unwrap()).unwrap();
        assert_eq!(
            got,
            "{\"a\":\"x\\\"y\\\\z\né\",\"b\":[1,-2,true,null],\"é\":{}}"
        );
    }

    #[test]
    fn floats_are_refused() {
        let v: Value = serde_json::from_str(r#"{"a": 1.5}"#).unwrap();
        assert!(encode(&v).is_err());
    }
}
