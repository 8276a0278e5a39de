//! Documents: JSON objects with a string `_id`. The stored block is the dag-cbor encoding of the
//! object without `_id` (the id is the tree key); reads put `_id` back.
//!
//! Reserved top-level fields (a name starting with `_`): `_id` is the document id; `_deleted`
//! marks a deletion in change feeds; `_files`, `_conflicts` and every other `_` name are
//! reserved for later use and refused in writes.

mod json;
mod ser;
#[cfg(test)]
mod testgen;

use crate::block::cbor::{Decoder, Encoder};
use crate::error::{Error, Result};
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

fn too_deep_msg() -> String {
    format!(
        "the document nests deeper than {} levels",
        crate::block::cbor::MAX_DEPTH
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
    if let Some(k) = obj.keys().find(|k| k.starts_with('_') && *k != "_id") {
        return Err(Error::InvalidDocument(reserved_msg(k)));
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
    fields.sort_by(|a, b| crate::block::cbor::key_order(a.0.as_ref(), b.0.as_ref()));
    fields.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
}

/// A prepared document, refused when its body is over [`MAX_DOC_BYTES`].
fn sized(id: String, body: Vec<u8>) -> Result<(String, Vec<u8>)> {
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
/// reader decodes (see [`crate::block::cbor::MAX_DEPTH`]).
fn too_deep_at(v: &Value, depth: usize) -> bool {
    let max = crate::block::cbor::MAX_DEPTH;
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
    let mut d = Decoder::new(body);
    let v = d.json().map_err(|e| e.0)?;
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
}
