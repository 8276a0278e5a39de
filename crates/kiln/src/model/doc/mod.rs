//! Documents: JSON objects with a string `_id`. The stored block is the dag-cbor encoding of the
//! object without `_id` (the id is the tree key); reads put `_id` back.
//!
//! Reserved top-level fields (a name starting with `_`): `_id` is the document id; `_deleted`
//! marks a deletion in change feeds; `_files` holds the metadata of attached files (see
//! [`files`]); `_conflicts` and every other `_` name are reserved for later use and refused in
//! writes.

pub mod files;
mod json;
mod ser;
#[cfg(test)]
mod testgen;

use crate::error::{Error, Result};
use crate::format::block::cbor::{CborError, Decoder, Encoder};
use serde_json::{Map, Value};

/// Longest document id, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 1024;
/// Largest stored document body (dag-cbor bytes).
pub const MAX_DOC_BYTES: usize = 1 << 20;

/// Checks an id given on its own (get, del).
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidDocument("_id must not be empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidDocument(format!(
            "_id is {} bytes; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// A new time-ordered id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

pub use json::prepare_json;
pub use ser::prepare_serialize;

// What the three ways in (a `Value`, JSON text, any `Serialize`) say of a bad document: the
// same words on every path.

fn not_object_msg(kind: &str) -> String {
    format!("a document must be a JSON object, not {kind}")
}

fn id_not_string_msg(kind: &str) -> String {
    format!("_id must be a string, not {kind}")
}

fn reserved_msg(k: &str) -> String {
    format!(
        "field {k:?} is reserved (top-level names starting with '_' other than _id are kept for kiln)"
    )
}

/// What every path says of an integer outside the 64-bit range (`text`: the integer as JSON
/// writes it). Such an integer is refused, never stored as a float (which would change it).
fn out_of_range_msg(text: &str) -> String {
    let digits = text.trim_start_matches('-');
    let shown = match digits.get(..20) {
        Some(first) if digits.len() > 40 => {
            let sign = &text[..text.len() - digits.len()];
            format!("{sign}{first}… ({} digits)", digits.len())
        }
        _ => text.to_owned(),
    };
    format!(
        "integer {shown} is outside the 64-bit range (-9223372036854775808 to \
         18446744073709551615); store it as a string"
    )
}

/// Whether `text` is a JSON integer (no fraction, no exponent) outside the range a stored
/// integer takes: -2⁶³ to 2⁶⁴−1.
fn integer_out_of_range(text: &str) -> bool {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // (More than 39 digits does not parse: out of range too.)
    let limit = if neg { 1u128 << 63 } else { u64::MAX as u128 };
    digits.parse::<u128>().map_or(true, |n| n > limit)
}

/// The first integer in JSON `text` outside the 64-bit range, if any: serde_json hands such
/// an integer over as a float (or refuses it as out of range when even a float cannot hold
/// it), so only the text tells it from a float. Expects JSON (strings are skipped, escapes
/// and all); anything else gives some answer, no panic.
fn first_big_integer(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                // (ASCII only between `start` and `i`: a valid slice.)
                let t = text.get(start..i).unwrap_or("");
                if integer_out_of_range(t) {
                    return Some(t);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether serde_json was built with `arbitrary_precision` (Cargo unifies features: another
/// crate in the program may turn it on). Then a `Value`'s number keeps its text, and accepts
/// a number beyond f64's range, which it otherwise refuses.
fn arbitrary_precision() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| serde_json::from_str::<serde_json::Value>("1e400").is_ok())
}

/// The first integer outside the 64-bit range in a document's values. Only a number that
/// keeps its text (serde_json's `arbitrary_precision`) can be one: without it, serde_json has
/// already made a float of such an integer when it parsed it, and a `Value` holds nothing else.
fn big_integer_in(obj: &Map<String, Value>) -> Option<String> {
    if !arbitrary_precision() {
        return None;
    }
    let mut stack: Vec<&Value> = obj
        .iter()
        .filter(|(k, _)| *k != "_id")
        .map(|(_, v)| v)
        .collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Number(n) if !n.is_u64() && !n.is_i64() => {
                let t = n.to_string();
                if integer_out_of_range(&t) {
                    return Some(t);
                }
            }
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    None
}

fn too_deep_msg() -> String {
    format!(
        "the document nests deeper than {} levels",
        crate::format::block::cbor::MAX_DEPTH
    )
}

/// Validates a document for a write and returns its id and stored body. A missing `_id` gets a
/// fresh UUIDv7.
pub fn prepare(doc: &Value) -> Result<(String, Vec<u8>)> {
    let obj = match doc {
        Value::Object(m) => m,
        other => return Err(Error::InvalidDocument(not_object_msg(kind(other)))),
    };
    if nests_too_deep(obj) {
        return Err(Error::InvalidDocument(too_deep_msg()));
    }
    let id = match obj.get("_id") {
        None => new_id(),
        Some(Value::String(s)) => {
            check_id(s)?;
            s.clone()
        }
        Some(other) => return Err(Error::InvalidDocument(id_not_string_msg(kind(other)))),
    };
    if let Some(k) = obj.keys().find(|k| files::is_reserved(k)) {
        return Err(Error::InvalidDocument(reserved_msg(k)));
    }
    if let Some(t) = big_integer_in(obj) {
        return Err(Error::InvalidDocument(out_of_range_msg(&t)));
    }
    let mut e = Encoder::new();
    e.json_map(
        obj.iter()
            .filter(|(k, _)| *k != "_id")
            .map(|(k, v)| (k.as_str(), v)),
        obj.len() - obj.contains_key("_id") as usize,
    );
    let body = e.into_bytes();
    sized(id, body)
}

/// An object's fields (key, where its value is) in dag-cbor key order; of repeated keys the
/// last one stays (as in a `Value`). In place: the sort is stable, and the later of two equal
/// keys takes the earlier one's slot.
fn sort_fields<K: AsRef<str> + PartialEq, V>(fields: &mut Vec<(K, V)>) {
    fields.sort_by(|a, b| crate::format::block::cbor::key_order(a.0.as_ref(), b.0.as_ref()));
    fields.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
}

/// A prepared document, refused when its body is over [`MAX_DOC_BYTES`] or names files in a
/// `_files` that is not well-formed.
fn sized(id: String, body: Vec<u8>) -> Result<(String, Vec<u8>)> {
    if let Err(why) = files::of_body(&body) {
        return Err(Error::InvalidDocument(format!("document {id:?}: {why}")));
    }
    if body.len() > MAX_DOC_BYTES {
        return Err(Error::InvalidDocument(format!(
            "document {id:?} is {} bytes encoded; the limit is {MAX_DOC_BYTES}",
            body.len()
        )));
    }
    Ok((id, body))
}

/// Whether a value inside the document sits deeper than a reader decodes (the document's own
/// object is depth 0, a reader takes values down to depth 128; `_id` does not count). Walked with a stack of its own: a `Value` built by
/// a program can be deeper than the call stack allows.
fn nests_too_deep(obj: &Map<String, Value>) -> bool {
    obj.iter()
        .filter(|(k, _)| *k != "_id")
        .any(|(_, v)| too_deep_at(v, 1))
}

/// Whether `v`, sitting at `depth`, holds a container whose items would sit deeper than a
/// reader decodes (see [`crate::format::block::cbor::MAX_DEPTH`]).
fn too_deep_at(v: &Value, depth: usize) -> bool {
    let max = crate::format::block::cbor::MAX_DEPTH;
    let mut stack: Vec<(&Value, usize)> = vec![(v, depth)];
    while let Some((v, depth)) = stack.pop() {
        let kids: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(m) => Box::new(m.values()),
            _ => continue,
        };
        if depth >= max {
            return true; // a container whose items would sit deeper than a reader decodes
        }
        stack.extend(kids.map(|x| (x, depth + 1)));
    }
    false
}

/// Rebuilds the JSON document from its stored body.
pub fn decode(id: &str, body: &[u8]) -> std::result::Result<Value, &'static str> {
    decode_with(id, body, |d| d.json())
}

/// The values at `paths` of a document (see [`Decoder::json_at_paths`]; a path that starts
/// at `_id` reads the document's id), each `None` where the path reaches nothing: the
/// document as a reader of a few fields (an index build) needs it, and no more.
pub fn decode_fields(
    id: &str,
    body: &[u8],
    paths: &[&[String]],
) -> std::result::Result<Vec<Option<Value>>, &'static str> {
    let is_id = |p: &[String]| p.first().is_some_and(|s| s == "_id");
    // (The usual case, no path at `_id`: the body's values are the answer as they are, no
    // list made of the paths in the body, nor of the answer.)
    let with_id = paths.iter().any(|p| is_id(p));
    let in_body: Vec<&[String]> = match with_id {
        true => paths.iter().copied().filter(|p| !is_id(p)).collect(),
        false => Vec::new(),
    };
    let mut d = Decoder::new(body);
    let mut found = match d.json_at_paths(if with_id { &in_body } else { paths }) {
        Ok(found) if !with_id => {
            d.finish().map_err(|e| e.0)?;
            return Ok(found);
        }
        Ok(found) => found.into_iter(),
        // Not a map: refused as a whole read refuses it (which may find worse first).
        Err(CborError("expected a map")) => {
            return Err(decode(id, body)
                .err()
                .unwrap_or("document body is not a map"))
        }
        Err(e) => return Err(e.0),
    };
    d.finish().map_err(|e| e.0)?;
    Ok(paths
        .iter()
        .map(|p| match p.split_first() {
            Some((_, [])) if is_id(p) => Some(Value::String(id.to_owned())),
            _ if is_id(p) => None, // a string has no fields
            _ => found.next().flatten(),
        })
        .collect())
}

/// The stored body read by `read` (to its last byte), a map, with the document's `_id` added.
fn decode_with(
    id: &str,
    body: &[u8],
    read: impl FnOnce(&mut Decoder) -> std::result::Result<Value, CborError>,
) -> std::result::Result<Value, &'static str> {
    let mut d = Decoder::new(body);
    let v = read(&mut d).map_err(|e| e.0)?;
    d.finish().map_err(|e| e.0)?;
    match v {
        Value::Object(mut m) => {
            m.insert("_id".into(), Value::String(id.to_owned()));
            Ok(Value::Object(m))
        }
        _ => Err("document body is not a map"),
    }
}

/// The change-feed form of a deletion.
pub fn tombstone(id: &str) -> Value {
    let mut m = Map::new();
    m.insert("_id".into(), Value::String(id.to_owned()));
    m.insert("_deleted".into(), Value::Bool(true));
    Value::Object(m)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_and_decode() {
        let (id, body) = prepare(&json!({"_id": "a", "x": 1})).unwrap();
        assert_eq!(id, "a");
        assert_eq!(decode(&id, &body).unwrap(), json!({"_id": "a", "x": 1}));
        let (id, _) = prepare(&json!({"x": 1})).unwrap();
        assert_eq!(id.len(), 36);
    }

    #[test]
    fn the_fields_of_a_body_are_those_of_the_whole_document() {
        let doc = json!({"_id": "d1", "a": {"b": [1, 2]}, "n": 3});
        let (id, body) = prepare(&doc).unwrap();
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        let paths = [p("a.b.1"), p("_id"), p("n"), p("_id.x"), p("m"), p("a")];
        let paths: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
        let whole = decode(&id, &body).unwrap();
        let want: Vec<Option<Value>> = paths
            .iter()
            .map(|p| crate::format::block::cbor::json_lookup(&whole, p).cloned())
            .collect();
        assert_eq!(want[1], Some(json!("d1")));
        assert_eq!(decode_fields(&id, &body, &paths).unwrap(), want);
        // A body that is not a map is refused as a whole read refuses it.
        let mut e = Encoder::new();
        e.json(&json!([1]));
        let not_a_map = e.into_bytes();
        assert_eq!(
            decode_fields("x", &not_a_map, &paths).unwrap_err(),
            decode("x", &not_a_map).unwrap_err()
        );
    }

    #[test]
    fn bad_documents_are_refused_with_reasons() {
        for (doc, want) in [
            (json!([1]), "JSON object"),
            (json!({"_id": 5}), "_id must be a string"),
            (json!({"_id": ""}), "empty"),
            (json!({"_id": "x".repeat(1025)}), "limit is 1024"),
            (json!({"_rev": "1"}), "reserved"),
            (
                json!({"_id": "a", "big": "x".repeat(MAX_DOC_BYTES)}),
                "limit",
            ),
        ] {
            let e = prepare(&doc).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    /// An integer outside the 64-bit range is refused with the same words on the JSON-text
    /// path and the serde path, never stored as a float (`100000000000000000000` came back
    /// as `1e+20`); the ends of the range and floats as large are stored as they are.
    #[test]
    fn integers_outside_64_bits_are_refused_on_every_path() {
        let want = "integer 100000000000000000000 is outside the 64-bit range \
                    (-9223372036854775808 to 18446744073709551615); store it as a string";
        let text = prepare_json(r#"{"_id":"a","n":100000000000000000000}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(text, format!("invalid document: {want}"));
        #[derive(serde::Serialize)]
        struct Doc<T> {
            _id: &'static str,
            n: T,
        }
        let ser = prepare_serialize(&Doc {
            _id: "a",
            n: 100_000_000_000_000_000_000u128,
        })
        .unwrap_err()
        .to_string();
        assert_eq!(ser, text);
        for (t, n) in [
            ("18446744073709551616", 18_446_744_073_709_551_616i128),
            ("-9223372036854775809", -9_223_372_036_854_775_809),
            ("-18446744073709551616", -18_446_744_073_709_551_616),
        ] {
            let doc = format!(r#"{{"_id":"a","x":[1,{{"n":{t}}}]}}"#);
            let e = prepare_json(&doc).unwrap_err().to_string();
            assert!(e.contains(&format!("integer {t} is outside")), "{e}");
            let e = prepare_serialize(&Doc { _id: "a", n })
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("integer {t} is outside")), "{e}");
        }
        // Too large even for a float: the same words, shortened (serde_json said "number out
        // of range").
        let huge = format!(r#"{{"_id":"a","n":-{}}}"#, "9".repeat(400));
        let e = prepare_json(&huge).unwrap_err().to_string();
        assert!(
            e.contains("integer -99999999999999999999… (400 digits) is outside"),
            "{e}"
        );
        // The ends of the range, floats of any size, and digits in strings are stored.
        let edges = r#"{"_id":"a","max":18446744073709551615,"min":-9223372036854775808,"f":1e20,"g":-1.5e300,"h":100000000000000000000.0,"s":"100000000000000000000","k\"100000000000000000000":1}"#;
        let v: Value = serde_json::from_str(edges).unwrap();
        assert_eq!(prepare_json(edges).unwrap(), prepare(&v).unwrap());
        let (id, body) = prepare_json(edges).unwrap();
        let back = decode(&id, &body).unwrap();
        assert_eq!(back["max"], json!(u64::MAX));
        assert_eq!(back["min"], json!(i64::MIN));
        assert_eq!(back["f"], json!(1e20));
        for n in [u64::MAX as i128, i64::MIN as i128] {
            assert_eq!(
                prepare_serialize(&Doc { _id: "a", n }).unwrap(),
                prepare(&json!({"_id": "a", "n": n})).unwrap()
            );
        }
        // An _id or a whole document that is such an integer is what it was before: not a
        // string, not an object.
        for (t, want) in [
            (
                r#"{"_id":100000000000000000000}"#,
                "_id must be a string, not a number",
            ),
            (
                "100000000000000000000",
                "must be a JSON object, not a number",
            ),
        ] {
            let e = prepare_json(t).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = prepare_serialize(&Doc { _id: "a", n: () }).unwrap();
        assert_eq!(e.0, "a");
        #[derive(serde::Serialize)]
        struct Id {
            _id: u128,
        }
        let e = prepare_serialize(&Id { _id: u128::MAX })
            .unwrap_err()
            .to_string();
        assert!(e.contains("_id must be a string, not a number"), "{e}");
    }

    #[test]
    fn big_integers_are_found_in_json_text() {
        for (t, want) in [
            ("[1,2.5,-3e40,18446744073709551615]", None),
            ("[18446744073709551616]", Some("18446744073709551616")),
            (r#"{"a":"1\"99999999999999999999","b":7}"#, None),
            (
                r#"{"a\\":99999999999999999999}"#,
                Some("99999999999999999999"),
            ),
            ("[-0,0,1E5,-9223372036854775808]", None),
            ("[-9223372036854775809]", Some("-9223372036854775809")),
            ("\"unterminated 99999999999999999999", None),
            ("-", None),
        ] {
            assert_eq!(first_big_integer(t), want, "{t}");
        }
    }
}
