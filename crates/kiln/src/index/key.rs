//! Index keys: one total order over JSON values, and a byte encoding that sorts in it.
//!
//! The order: `null` < `false` < `true` < numbers < strings < arrays < objects. Numbers compare
//! by value (integers and floats alike: `1` and `1.0` are one key; integers beyond 2^53 keep
//! their exact order); strings by code point (their UTF-8 bytes); arrays element by element, a
//! shorter array before every longer one it begins; objects by their entries in key order
//! (key, then value), a shorter one first on a tie.
//!
//! The encoding is self-delimiting and order-preserving (`encode(a) < encode(b)` exactly when
//! `a < b`), so an index tree keyed by it is in this order, a compound key is an array whose
//! encoding without its end byte is a byte prefix of every key that begins with the same
//! elements, and a range query is a byte range. docs/format.md ("Index keys") gives it byte by
//! byte.

use serde_json::{Map, Number, Value};
use std::cmp::Ordering;

const END: u8 = 0x00;
const NULL: u8 = 0x01;
const FALSE: u8 = 0x02;
const TRUE: u8 = 0x03;
const NUMBER: u8 = 0x04;
const STRING: u8 = 0x05;
const ARRAY: u8 = 0x06;
const OBJECT: u8 = 0x07;
/// Escapes a zero byte inside a string (`0x00 0xFF`); `0x00 0x01` ends it.
const ZERO_ESCAPE: u8 = 0xFF;
const STRING_END: u8 = 0x01;

/// Deepest nesting of arrays and objects a key or a value may have: a document's deepest (128)
/// inside a compound key's array, with room to spare; rows deeper than this are refused when
/// they are made.
pub const MAX_DEPTH: usize = 160;

/// How deep `v` nests (a scalar: 0).
pub fn depth(v: &Value) -> usize {
    if !matches!(v, Value::Array(_) | Value::Object(_)) {
        return 0;
    }
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|e| (e, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|e| (e, d + 1))),
            _ => {}
        }
    }
    max
}

/// Why bytes do not decode as a key (a damaged index: the caller says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyError(pub &'static str);

/// Appends the encoding of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => encode_number(n, out),
        Value::String(s) => encode_str(s, out),
        Value::Array(a) => {
            out.push(ARRAY);
            for e in a {
                encode(e, out);
            }
            out.push(END);
        }
        Value::Object(m) => {
            out.push(OBJECT);
            for (k, e) in sorted(m) {
                encode_str(k, out);
                encode(e, out);
            }
            out.push(END);
        }
    }
}

/// The encoding of `v`.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode(v, &mut out);
    out
}

/// The encoding of an array's first elements without its end: a byte prefix of the encoding
/// of every array that begins with `elements` (whatever follows them).
pub fn array_prefix(elements: &[Value]) -> Vec<u8> {
    let mut out = vec![ARRAY];
    for e in elements {
        encode(e, &mut out);
    }
    out
}

/// Compares two values in the key order.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    to_bytes(a).cmp(&to_bytes(b))
}

fn sorted(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// Appends a string's encoding (its UTF-8 bytes, a zero byte escaped, then the end mark).
pub fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 3);
    out.push(STRING);
    let mut rest = s.as_bytes();
    // Runs without a zero byte are copied as they are; each zero is escaped.
    while let Some(z) = memchr::memchr(0, rest) {
        out.extend_from_slice(&rest[..=z]);
        out.push(ZERO_ESCAPE);
        rest = &rest[z + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&[0, STRING_END]);
}

/// A number: the tag, its nearest `f64` as 8 bytes that sort as the floats do, then 2 bytes of
/// the exact integer's distance from that float (zero for floats and for integers a float holds
/// exactly; an integer beyond 2^53 is within 2^11 of its nearest float).
fn encode_number(n: &Number, out: &mut Vec<u8>) {
    let (f, d) = if let Some(u) = n.as_u64() {
        let f = u as f64;
        (f, (u as i128 - f as i128) as i16)
    } else if let Some(i) = n.as_i64() {
        let f = i as f64;
        (f, (i as i128 - f as i128) as i16)
    } else {
        (n.as_f64().unwrap_or(0.0), 0)
    };
    // -0.0 is 0.
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let sortable = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    out.push(NUMBER);
    out.extend_from_slice(&sortable.to_be_bytes());
    out.extend_from_slice(&((d as u16) ^ 0x8000).to_be_bytes());
}

/// Decodes one key at `*pos`, moving `*pos` past it.
pub fn decode(b: &[u8], pos: &mut usize) -> Result<Value, KeyError> {
    decode_at(b, pos, 0)
}

fn decode_at(b: &[u8], pos: &mut usize, depth: usize) -> Result<Value, KeyError> {
    if depth > MAX_DEPTH {
        return Err(KeyError("key nested too deep"));
    }
    let tag = *b.get(*pos).ok_or(KeyError("key cut short"))?;
    *pos += 1;
    Ok(match tag {
        NULL => Value::Null,
        FALSE => Value::Bool(false),
        TRUE => Value::Bool(true),
        NUMBER => Value::Number(decode_number(b, pos)?),
        STRING => Value::String(decode_str_body(b, pos)?),
        ARRAY => {
            let mut a = Vec::new();
            while *b.get(*pos).ok_or(KeyError("array cut short"))? != END {
                a.push(decode_at(b, pos, depth + 1)?);
            }
            *pos += 1;
            Value::Array(a)
        }
        OBJECT => {
            let mut m = Map::new();
            while *b.get(*pos).ok_or(KeyError("object cut short"))? != END {
                if b[*pos] != STRING {
                    return Err(KeyError("object key is not a string"));
                }
                *pos += 1;
                let k = decode_str_body(b, pos)?;
                let v = decode_at(b, pos, depth + 1)?;
                m.insert(k, v);
            }
            *pos += 1;
            Value::Object(m)
        }
        _ => return Err(KeyError("unknown key tag")),
    })
}

/// Decodes a string's encoding at `*pos` (tag included).
pub fn decode_str(b: &[u8], pos: &mut usize) -> Result<String, KeyError> {
    if b.get(*pos) != Some(&STRING) {
        return Err(KeyError("not a string"));
    }
    *pos += 1;
    decode_str_body(b, pos)
}

fn decode_str_body(b: &[u8], pos: &mut usize) -> Result<String, KeyError> {
    let mut s = Vec::new();
    loop {
        // The bytes up to the next zero are the string's own; the zero escapes one or ends it.
        let rest = b.get(*pos..).unwrap_or_default();
        let z = memchr::memchr(0, rest).ok_or(KeyError("string cut short"))?;
        s.extend_from_slice(&rest[..z]);
        *pos += z + 1;
        match b.get(*pos) {
            Some(&ZERO_ESCAPE) => s.push(0),
            Some(&STRING_END) => {
                *pos += 1;
                break;
            }
            _ => return Err(KeyError("bad string escape")),
        }
        *pos += 1;
    }
    String::from_utf8(s).map_err(|_| KeyError("string is not UTF-8"))
}

fn decode_number(b: &[u8], pos: &mut usize) -> Result<Number, KeyError> {
    let raw = b.get(*pos..*pos + 10).ok_or(KeyError("number cut short"))?;
    *pos += 10;
    let mut s = [0u8; 8];
    s.copy_from_slice(&raw[..8]);
    let sortable = u64::from_be_bytes(s);
    let bits = if sortable >> 63 == 1 {
        sortable & !(1 << 63)
    } else {
        !sortable
    };
    let f = f64::from_bits(bits);
    let d = (u16::from_be_bytes([raw[8], raw[9]]) ^ 0x8000) as i16;
    if !f.is_finite() {
        return Err(KeyError("number is not finite"));
    }
    // Whole numbers come back as integers when one holds them; the rest as floats.
    if f.fract() == 0.0 && f.abs() <= 2f64.powi(64) {
        let exact = f as i128 + d as i128;
        if let Ok(i) = i64::try_from(exact) {
            return Ok(Number::from(i));
        }
        if let Ok(u) = u64::try_from(exact) {
            return Ok(Number::from(u));
        }
    }
    if d != 0 {
        return Err(KeyError("a float with an integer's correction"));
    }
    Number::from_f64(f).ok_or(KeyError("number is not finite"))
}

/// Moves `*pos` past one encoded key without building it.
pub fn skip(b: &[u8], pos: &mut usize) -> Result<(), KeyError> {
    decode(b, pos).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The order the module doc states, written out without the encoding.
    fn model(a: &Value, b: &Value) -> Ordering {
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Null => 0,
                Value::Bool(false) => 1,
                Value::Bool(true) => 2,
                Value::Number(_) => 3,
                Value::String(_) => 4,
                Value::Array(_) => 5,
                Value::Object(_) => 6,
            }
        }
        // Exact where both are whole (as wide integers), else as floats.
        fn exact(n: &Number) -> Result<i128, f64> {
            match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Ok(u as i128),
                (_, Some(i), _) => Ok(i as i128),
                (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e30 => Ok(f as i128),
                (_, _, f) => Err(f.unwrap()),
            }
        }
        let float = |e: Result<i128, f64>| e.map_or_else(|f| f, |i| i as f64);
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (exact(x), exact(y)) {
                (Ok(i), Ok(j)) => i.cmp(&j),
                (p, q) => float(p).partial_cmp(&float(q)).unwrap(),
            },
            (Value::String(x), Value::String(y)) => x.cmp(y),
            (Value::Array(x), Value::Array(y)) => {
                for (p, q) in x.iter().zip(y) {
                    let o = model(p, q);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                x.len().cmp(&y.len())
            }
            (Value::Object(x), Value::Object(y)) => {
                let (xs, ys) = (sorted(x), sorted(y));
                for ((ka, va), (kb, vb)) in xs.iter().zip(&ys) {
                    let o = ka.cmp(kb).then_with(|| model(va, vb));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                xs.len().cmp(&ys.len())
            }
            _ => rank(a).cmp(&rank(b)),
        }
    }

    fn samples() -> Vec<Value> {
        vec![
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(i64::MIN),
            json!(-9007199254740993i64),
            json!(-9007199254740992i64),
            json!(-2.5),
            json!(-1),
            json!(-0.0),
            json!(0),
            json!(0.5),
            json!(1),
            json!(1.0),
            json!(1.5),
            json!(9007199254740992u64),
            json!(9007199254740993u64),
            json!(i64::MAX),
            json!(u64::MAX - 1),
            json!(u64::MAX),
            json!(1e300),
            json!(""),
            json!("\u{0}"),
            json!("\u{0}a"),
            json!("0"),
            json!("a"),
            json!("a\u{0}"),
            json!("ab"),
            json!("b"),
            json!("é"),
            json!("\u{1F600}"),
            json!([]),
            json!([null]),
            json!([0]),
            json!([0, null]),
            json!([0, "a"]),
            json!([0, []]),
            json!([1]),
            json!(["a"]),
            json!([[]]),
            json!({}),
            json!({"a": 1}),
            json!({"a": 1, "b": 0}),
            json!({"a": 2}),
            json!({"b": 0}),
        ]
    }

    #[test]
    fn the_encoding_sorts_as_the_stated_order() {
        let s = samples();
        for a in &s {
            for b in &s {
                assert_eq!(compare(a, b), model(a, b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn keys_decode_to_values_equal_to_what_was_encoded() {
        for v in samples() {
            let b = to_bytes(&v);
            let mut pos = 0;
            let back = decode(&b, &mut pos).unwrap();
            assert_eq!(pos, b.len());
            assert_eq!(
                compare(&back, &v),
                Ordering::Equal,
                "{v} came back as {back}"
            );
            assert_eq!(to_bytes(&back), b);
        }
        // Exact integers survive, whole floats come back as integers.
        let mut pos = 0;
        assert_eq!(
            decode(&to_bytes(&json!(u64::MAX)), &mut pos).unwrap(),
            json!(u64::MAX)
        );
        pos = 0;
        assert_eq!(decode(&to_bytes(&json!(2.0)), &mut pos).unwrap(), json!(2));
    }

    #[test]
    fn numbers_equal_by_value_are_one_key_and_zero_is_not_every_key() {
        assert_eq!(to_bytes(&json!(1)), to_bytes(&json!(1.0)));
        assert_eq!(to_bytes(&json!(0)), to_bytes(&json!(-0.0)));
        assert_ne!(to_bytes(&json!(0)), to_bytes(&json!(null)));
        assert_ne!(to_bytes(&json!(0)), to_bytes(&json!("")));
        assert_ne!(to_bytes(&json!("")), to_bytes(&json!(null)));
    }

    #[test]
    fn an_array_prefix_is_a_byte_prefix_whatever_follows() {
        let p = array_prefix(&[json!("x")]);
        for tail in [json!(null), json!(-5), json!("a"), json!([]), json!({})] {
            assert!(to_bytes(&json!(["x", tail])).starts_with(&p));
        }
        assert!(to_bytes(&json!(["x"])).starts_with(&p));
        assert!(!to_bytes(&json!(["xy"])).starts_with(&p));
        assert!(!to_bytes(&json!("x")).starts_with(&p));
    }

    #[test]
    fn damaged_keys_are_errors_not_panics() {
        for v in samples() {
            let b = to_bytes(&v);
            for cut in 0..b.len() {
                let mut pos = 0;
                let _ = decode(&b[..cut], &mut pos);
            }
        }
        let mut pos = 0;
        assert!(decode(&[0x99], &mut pos).is_err());
        let deep = vec![ARRAY; 400];
        pos = 0;
        assert!(decode(&deep, &mut pos).is_err());
    }
}
