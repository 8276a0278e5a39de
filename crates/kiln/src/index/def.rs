//! What an index is: its definition (field paths, or a map function registered by name) and
//! the rows it makes of a document.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Borrow;
use std::sync::Arc;

/// Longest index name.
pub const MAX_NAME: usize = 128;
/// Most fields of a declared index.
pub const MAX_FIELDS: usize = 16;
/// Most segments of a field path: a document nests at most 128 levels, so a longer path
/// reaches nothing.
pub const MAX_PATH_SEGMENTS: usize = 129;
/// Most rows one document may emit into one index (a map function emitting more fails the
/// index update, naming the document).
pub const MAX_ROWS_PER_DOC: usize = 10_000;

/// How an index makes its rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum IndexDef {
    /// Declared fields: one row per document that has every field (`null` counts as having
    /// it), keyed by the field's value, or by the array of the fields' values when there are
    /// several (a compound key); the value is `null`. With `each`, a first field holding an
    /// array emits one row per distinct element instead (an empty array: none).
    Fields {
        /// Dotted paths (see [`IndexDef::fields`]).
        fields: Vec<String>,
        /// The first field's arrays emit a row per element.
        #[serde(default)]
        each: bool,
    },
    /// A Rust map function registered under the index's name with
    /// [`crate::Database::register_map`]; `version` changes when the function does (the
    /// index is then rebuilt).
    Map {
        /// The function's version, as registered.
        version: u32,
    },
}

impl IndexDef {
    /// An index on `fields` (dotted paths: `a.b` is field `b` of field `a`; a segment that is
    /// a number also picks an array's element; `\.` is a dot inside a name; at most
    /// [`MAX_PATH_SEGMENTS`] segments).
    pub fn fields<S: AsRef<str>>(fields: impl IntoIterator<Item = S>) -> IndexDef {
        IndexDef::Fields {
            fields: fields.into_iter().map(|f| f.as_ref().to_owned()).collect(),
            each: false,
        }
    }

    /// The same index, its first field's arrays emitting a row per element.
    pub fn each(self) -> IndexDef {
        match self {
            IndexDef::Fields { fields, .. } => IndexDef::Fields { fields, each: true },
            m => m,
        }
    }

    /// Checks the definition (a clear error for a user's bad input).
    pub fn check(&self) -> Result<()> {
        if let IndexDef::Fields { fields, .. } = self {
            if fields.is_empty() {
                return Err(Error::InvalidArgument(
                    "an index needs at least one field".into(),
                ));
            }
            if fields.len() > MAX_FIELDS {
                return Err(Error::InvalidArgument(format!(
                    "an index has at most {MAX_FIELDS} fields"
                )));
            }
            for f in fields {
                parse_path(f)?;
            }
        }
        Ok(())
    }
}

/// Checks an index name: 1 to 128 characters, letters, digits, `_`, `-` and `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "bad index name {name:?}: 1 to {MAX_NAME} letters, digits, '_', '-' or '.'"
        )))
    }
}

/// A field path's segments.
pub fn parse_path(path: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            '.' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    if out.iter().any(|s| s.is_empty()) {
        return Err(Error::InvalidArgument(format!(
            "bad field path {path:?}: empty segment"
        )));
    }
    if out.len() > MAX_PATH_SEGMENTS {
        return Err(Error::InvalidArgument(format!(
            "bad field path: {} segments (at most {MAX_PATH_SEGMENTS}: deeper than any \
             document nests)",
            out.len()
        )));
    }
    Ok(out)
}

/// The value at `path` in `doc`, if there is one.
pub fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    crate::format::block::cbor::json_lookup(doc, path)
}

/// Where a map function's rows go.
#[derive(Default)]
pub struct Emit {
    pub(crate) rows: Vec<(Value, Value)>,
}

impl Emit {
    /// Emits one row: `key` in the index's order, `value` returned with it.
    pub fn row(&mut self, key: Value, value: Value) {
        self.rows.push((key, value));
    }
}

/// A map function: called with each document (with its `_id`), emits zero or more rows.
pub type MapFn = Arc<dyn Fn(&Value, &mut Emit) + Send + Sync>;

/// A definition ready to map documents.
#[derive(Clone)]
pub(crate) enum Mapper {
    Fields { paths: Vec<Vec<String>>, each: bool },
    Map(MapFn),
}

impl Mapper {
    pub fn of_fields(fields: &[String], each: bool) -> Result<Mapper> {
        // (A definition is checked when made; a stored one read back may still be damaged.)
        if fields.is_empty() {
            return Err(Error::InvalidArgument(
                "an index of fields needs at least one field".into(),
            ));
        }
        Ok(Mapper::Fields {
            paths: fields
                .iter()
                .map(|f| parse_path(f))
                .collect::<Result<_>>()?,
            each,
        })
    }

    /// The rows of `doc` (key, value), in emission order.
    pub fn rows(&self, doc: &Value) -> Vec<(Value, Value)> {
        match self {
            Mapper::Map(f) => {
                let mut e = Emit::default();
                f(doc, &mut e);
                e.rows
            }
            Mapper::Fields { paths, each } => {
                let vals: Vec<Option<&Value>> = paths.iter().map(|p| lookup(doc, p)).collect();
                field_rows(&vals, *each)
            }
        }
    }

    /// The field paths of declared fields (none for a map function).
    pub fn paths(&self) -> Vec<&[String]> {
        match self {
            Mapper::Fields { paths, .. } => paths.iter().map(Vec::as_slice).collect(),
            Mapper::Map(_) => Vec::new(),
        }
    }
}

/// The rows declared fields make of their values in a document (`vals`, one per field,
/// `None` where the document has none): none unless every field is there; one row keyed by
/// the value (by the values in an array, for several fields); with `each`, one row per
/// distinct element of an array first field.
pub fn field_rows<V: Borrow<Value>>(vals: &[Option<V>], each: bool) -> Vec<(Value, Value)> {
    // (Read where they are: an index build calls this once per document.)
    if vals.iter().any(Option::is_none) {
        return Vec::new();
    }
    let mut present = vals.iter().flatten().map(Borrow::borrow);
    let Some(first) = present.next() else {
        return Vec::new();
    };
    let others = present;
    let key_of = |first: &Value| -> Value {
        if vals.len() == 1 {
            first.clone()
        } else {
            let mut k = Vec::with_capacity(vals.len());
            k.push(first.clone());
            k.extend(others.clone().cloned());
            Value::Array(k)
        }
    };
    match (each, first) {
        (true, Value::Array(elems)) => {
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut out = Vec::new();
            for e in elems {
                let b = super::key::to_bytes(e);
                if seen.contains(&b) {
                    continue;
                }
                seen.push(b);
                out.push((key_of(e), Value::Null));
            }
            out
        }
        (_, first) => vec![(key_of(first), Value::Null)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_rows() {
        let m = Mapper::of_fields(&["a.b".into()], false).unwrap();
        assert_eq!(
            m.rows(&json!({"a": {"b": 3}})),
            vec![(json!(3), json!(null))]
        );
        assert_eq!(m.rows(&json!({"a": {"c": 3}})), vec![]);
        assert_eq!(
            m.rows(&json!({"a": {"b": null}})),
            vec![(json!(null), json!(null))]
        );
        let c = Mapper::of_fields(&["x".into(), "y".into()], false).unwrap();
        assert_eq!(
            c.rows(&json!({"x": 1, "y": "a"})),
            vec![(json!([1, "a"]), json!(null))]
        );
        assert_eq!(c.rows(&json!({"x": 1})), vec![]);
        let e = Mapper::of_fields(&["tags".into(), "n".into()], true).unwrap();
        assert_eq!(
            e.rows(&json!({"tags": ["a", "b", "a"], "n": 1})),
            vec![
                (json!(["a", 1]), json!(null)),
                (json!(["b", 1]), json!(null))
            ]
        );
        assert_eq!(e.rows(&json!({"tags": [], "n": 1})), vec![]);
        let idx = Mapper::of_fields(&["l.1".into()], false).unwrap();
        assert_eq!(
            idx.rows(&json!({"l": [5, 6]})),
            vec![(json!(6), json!(null))]
        );
        let dot = Mapper::of_fields(&["a\\.b".into()], false).unwrap();
        assert_eq!(dot.rows(&json!({"a.b": 1})), vec![(json!(1), json!(null))]);
    }

    #[test]
    fn bad_definitions_are_refused() {
        assert!(IndexDef::fields(Vec::<String>::new()).check().is_err());
        // A stored definition read back without its fields (damage) is refused when used.
        assert!(Mapper::of_fields(&[], false).is_err());
        assert!(IndexDef::fields(["a..b"]).check().is_err());
        assert!(IndexDef::fields([""]).check().is_err());
        let deep = vec!["a"; MAX_PATH_SEGMENTS].join(".");
        assert!(IndexDef::fields([deep.as_str()]).check().is_ok());
        let deeper = vec!["a"; 50_000].join(".");
        let e = IndexDef::fields([deeper.as_str()]).check().unwrap_err();
        assert!(e.to_string().contains("at most 129"), "{e}");
        assert!(check_name("by-n").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
    }
}
