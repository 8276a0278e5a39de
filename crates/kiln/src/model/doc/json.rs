//! Documents given as JSON text: parsed straight into their stored dag-cbor form, without
//! building a `serde_json::Value` first. The result is byte for byte what [`super::prepare`]
//! makes of the same document parsed as a `Value` (same id rules, same errors, same body): an
//! object's later duplicate key wins, numbers keep the `Value` path's integer/float choice. An
//! integer outside the 64-bit range is refused (serde_json would make a float of it).

use super::{
    arbitrary_precision, check_id, first_big_integer, id_not_string_msg, integer_out_of_range,
    new_id, not_object_msg, out_of_range_msg, reserved_msg, sized,
};
use crate::error::{Error, Result};
use crate::format::block::cbor::Encoder;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Validates a document given as JSON text and returns its id and stored body.
pub fn prepare_json(text: &str) -> Result<(String, Vec<u8>)> {
    let _ = BIG_FLOAT.try_with(|b| b.set(false));
    let mut de = serde_json::Deserializer::from_str(text);
    let (id, body) = Top(text.len())
        .deserialize(&mut de)
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| {
            // An integer too large even for a float: serde_json says "number out of range".
            if e.to_string().starts_with("number out of range") {
                if let Some(t) = first_big_integer(text) {
                    return Error::InvalidDocument(out_of_range_msg(t));
                }
            }
            Error::InvalidDocument(match e.classify() {
                // The rules of documents (ours), or a value JSON cannot hold.
                serde_json::error::Category::Data => e.to_string(),
                _ => format!("not valid JSON: {e}"),
            })
        })?;
    // A float as large as 2^63 may have been an integer literal outside the 64-bit range,
    // which serde_json hands over as a float: the text tells. (Under serde_json's
    // `arbitrary_precision` such an integer comes with its text, and sets the flag too.)
    if BIG_FLOAT.try_with(|b| b.get()).unwrap_or(true) {
        if let Some(t) = first_big_integer(text) {
            return Err(Error::InvalidDocument(out_of_range_msg(t)));
        }
    }
    let id = match id {
        Some(id) => {
            check_id(&id)?;
            id
        }
        None => new_id(),
    };
    sized(id, body)
}

thread_local! {
    /// A value of the document being parsed on this thread was a float of magnitude 2^63 or
    /// more (see [`prepare_json`]).
    static BIG_FLOAT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The top level: an object, its `_id` taken out, reserved names refused. Holds the text's
/// length (the encoded values take about as much).
struct Top(usize);

impl<'de> DeserializeSeed<'de> for Top {
    type Value = (Option<String>, Vec<u8>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top {
    type Value = (Option<String>, Vec<u8>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Self::Value, A::Error> {
        // The last `_id` counts (as in a `Value`): a string, or the kind of what it was.
        let mut id: Option<std::result::Result<String, &'static str>> = None;
        let mut fields = Fields {
            keys: Vec::with_capacity(8),
            values: Vec::with_capacity(self.0),
        };
        let mut first = true;
        while let Some(k) = m.next_key_seed(KeySeed)? {
            // (A number, as serde_json hands it over under `arbitrary_precision`.)
            if first && k == NUMBER_TOKEN && arbitrary_precision() {
                return Err(not_object("a number"));
            }
            first = false;
            if k == "_id" {
                id = Some(m.next_value_seed(IdSeed)?);
            } else if super::files::is_reserved(&k) {
                return Err(de::Error::custom(reserved_msg(&k)));
            } else {
                fields.value(k, &mut m)?;
            }
        }
        let id = id.transpose().map_err(not_string)?;
        let mut e = Encoder { buf: Vec::new() };
        fields.write(&mut e);
        Ok((id, e.into_bytes()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Err(not_object("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Err(not_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Err(not_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Err(not_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Err(not_object("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Err(not_object("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> std::result::Result<Self::Value, A::Error> {
        Err(not_object("an array"))
    }
}

fn not_object<E: de::Error>(kind: &str) -> E {
    E::custom(not_object_msg(kind))
}

/// An object's entries as they are read: keys, and their encoded values one after another in
/// one buffer.
#[derive(Default)]
struct Fields<'de> {
    keys: Vec<(Cow<'de, str>, std::ops::Range<usize>)>,
    values: Vec<u8>,
}

impl<'de> Fields<'de> {
    fn value<A: MapAccess<'de>>(
        &mut self,
        k: Cow<'de, str>,
        m: &mut A,
    ) -> std::result::Result<(), A::Error> {
        let start = self.values.len();
        let mut e = Encoder {
            buf: std::mem::take(&mut self.values),
        };
        let r = m.next_value_seed(Cbor(&mut e));
        self.values = e.buf;
        r?;
        self.keys.push((k, start..self.values.len()));
        Ok(())
    }

    /// The map in dag-cbor key order; of repeated keys the last one stays (as in a `Value`).
    fn write(mut self, e: &mut Encoder) {
        super::sort_fields(&mut self.keys);
        let kept = self.keys;
        e.buf
            .reserve(9 + self.values.len() + kept.iter().map(|k| k.0.len() + 9).sum::<usize>());
        e.map(kept.len());
        for (k, v) in kept {
            e.str(&k);
            e.buf.extend_from_slice(&self.values[v]);
        }
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

/// The `_id` value: a string, or the kind of value it is instead.
struct IdSeed;

type IdValue = std::result::Result<String, &'static str>;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = IdValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdSeed {
    type Value = IdValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an _id")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<IdValue, E> {
        Ok(Ok(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> std::result::Result<IdValue, E> {
        Ok(Ok(s))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<IdValue, E> {
        Ok(Err("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<IdValue, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<IdValue, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<IdValue, E> {
        Ok(Err("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<IdValue, E> {
        Ok(Err("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> std::result::Result<IdValue, A::Error> {
        while s.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<IdValue, A::Error> {
        // (With serde_json's arbitrary_precision, a number arrives as a one-entry map.)
        let mut kind = "an object";
        let mut first = true;
        while let Some(k) = m.next_key::<Cow<'de, str>>()? {
            m.next_value::<de::IgnoredAny>()?;
            if first && k == NUMBER_TOKEN && arbitrary_precision() {
                kind = "a number";
            }
            first = false;
        }
        Ok(Err(kind))
    }
}

fn not_string<E: de::Error>(kind: &str) -> E {
    E::custom(id_not_string_msg(kind))
}

/// The map key under which serde_json hands over a number when its `arbitrary_precision`
/// feature is on (Cargo unifies features: another crate in the program may turn it on).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Any JSON value, written as dag-cbor into the encoder.
struct Cbor<'a>(&'a mut Encoder);

impl<'de> DeserializeSeed<'de> for Cbor<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Cbor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> std::result::Result<(), E> {
        self.0.bool(b);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<(), E> {
        self.0.i64(n);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<(), E> {
        self.0.u64(n);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> std::result::Result<(), E> {
        if x.abs() >= 9_223_372_036_854_775_808.0 {
            let _ = BIG_FLOAT.try_with(|b| b.set(true));
        }
        self.0.f64(x);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<(), E> {
        self.0.str(s);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.0.null();
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> std::result::Result<(), A::Error> {
        // The count comes first in dag-cbor: items go to a buffer of their own first.
        let mut items = Encoder {
            buf: Vec::with_capacity(64),
        };
        let mut n = 0;
        while s.next_element_seed(Cbor(&mut items))?.is_some() {
            n += 1;
        }
        self.0.array(n);
        self.0.buf.extend_from_slice(&items.buf);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
        let mut fields = Fields::default();
        while let Some(k) = m.next_key_seed(KeySeed)? {
            if fields.keys.is_empty() && k == NUMBER_TOKEN && arbitrary_precision() {
                // A number, as serde_json hands it over when some crate in the program turned
                // on its arbitrary_precision feature: encoded as the Value path would.
                let text: Cow<'de, str> = m.next_value_seed(KeySeed)?;
                if integer_out_of_range(&text) {
                    // (Refused by `prepare_json`, in the words of the other paths.)
                    let _ = BIG_FLOAT.try_with(|b| b.set(true));
                }
                self.0.json(&serde_json::Value::Number(
                    text.parse().map_err(|_| de::Error::custom("bad number"))?,
                ));
                return Ok(());
            }
            fields.value(k, &mut m)?;
        }
        fields.write(self.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{prepare, MAX_DOC_BYTES};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn arb_json() -> impl Strategy<Value = Value> {
        super::super::testgen::arb_json(-1e9f64..1e9, "[a-z\u{e9}]{0,6}", 5)
    }

    proptest! {
        /// JSON text gives byte for byte the body the `Value` path gives.
        #[test]
        fn text_and_value_paths_agree(
            fields in prop::collection::btree_map("[a-z]{1,6}", arb_json(), 0..6),
            id in "[a-z0-9-]{1,12}",
        ) {
            let mut obj: serde_json::Map<String, Value> = fields.into_iter().collect();
            obj.insert("_id".into(), Value::String(id.clone()));
            let v = Value::Object(obj);
            // (Compared with the text parsed as a Value: serde_json's float parsing may differ
            // from the generated f64 in the last bit, the same way on both paths.)
            let text = serde_json::to_string(&v).unwrap();
            let parsed: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(prepare_json(&text).unwrap(), prepare(&parsed).unwrap());
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            prop_assert_eq!(prepare_json(&pretty).unwrap(), prepare(&parsed).unwrap());
        }
    }

    /// Arrays past 23 items (wider count headers); nested objects sort and drop repeated keys
    /// too; a failed document leaves nothing behind for the next one.
    #[test]
    fn long_arrays_nested_duplicates_and_reuse_after_errors() {
        for n in [0usize, 1, 23, 24, 255, 256, 65_535, 65_536] {
            let items: Vec<String> = (0..n).map(|i| format!("[{i},[]]")).collect();
            let t = format!(
                r#"{{"_id":"a","z":[{}],"a":{{"q":1,"bb":[1,2],"q":{{"y":1,"x":2,"y":3}}}}}}"#,
                items.join(",")
            );
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(prepare_json(&t).unwrap(), prepare(&v).unwrap(), "{n} items");
            assert!(prepare_json(r#"{"_id":"b","x":[1,2,"#).is_err());
            assert!(prepare_json(r#"{"_id":"b","_x":1}"#).is_err());
            let t = r#"{"_id":"c","k":[true]}"#;
            let v: Value = serde_json::from_str(t).unwrap();
            assert_eq!(prepare_json(t).unwrap(), prepare(&v).unwrap());
        }
    }

    #[test]
    fn duplicates_escapes_and_errors_match_the_value_path() {
        // A later duplicate wins; escaped keys and strings decode.
        let t = r#"{"_id":"a","x":1,"x":2,"k\u00e9":"\"q\"","n":-0,"f":1.5e300,"big":18446744073709551615}"#;
        let v: Value = serde_json::from_str(t).unwrap();
        assert_eq!(prepare_json(t).unwrap(), prepare(&v).unwrap());
        for (text, want) in [
            ("[1]", "JSON object, not an array"),
            ("\"x\"", "JSON object, not a string"),
            ("null", "JSON object, not null"),
            (r#"{"_id":5}"#, "_id must be a string, not a number"),
            (r#"{"_id":{}}"#, "_id must be a string, not an object"),
            (r#"{"_id":""}"#, "empty"),
            (r#"{"_rev":"1"}"#, "reserved"),
            (r#"{"a":1"#, "not valid JSON: EOF"),
            (r#"{"a":1} x"#, "not valid JSON: trailing"),
            ("", "not valid JSON"),
        ] {
            let e = prepare_json(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let big = format!(r#"{{"_id":"a","b":"{}"}}"#, "x".repeat(MAX_DOC_BYTES));
        assert!(prepare_json(&big)
            .unwrap_err()
            .to_string()
            .contains("limit"));
        let long_id = format!(r#"{{"_id":"{}"}}"#, "x".repeat(1025));
        assert!(prepare_json(&long_id)
            .unwrap_err()
            .to_string()
            .contains("1024"));
        // No _id: a fresh UUIDv7.
        assert_eq!(prepare_json(r#"{"a":1}"#).unwrap().0.len(), 36);
        // Of repeated _ids the last counts, as in a Value, whatever the earlier ones were.
        for t in [
            r#"{"_id":5,"_id":"a","x":1}"#,
            r#"{"_id":"b","x":1,"_id":"a"}"#,
            r#"{"_id":[1],"_id":{"k":2},"_id":"a","x":1}"#,
        ] {
            let v: Value = serde_json::from_str(t).unwrap();
            assert_eq!(prepare_json(t).unwrap(), prepare(&v).unwrap(), "{t}");
        }
        let e = prepare_json(r#"{"_id":"a","_id":null}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("_id must be a string, not null"), "{e}");
        // Without arbitrary_precision (this workspace's build), the key serde_json would use
        // for numbers with it is an ordinary key. (With the feature turned on, every test here
        // passes too: checked by building with it.)
        if !arbitrary_precision() {
            let t = r#"{"_id":"a","m":{"$serde_json::private::Number":"1.5"}}"#;
            let v: Value = serde_json::from_str(t).unwrap();
            assert_eq!(prepare_json(t).unwrap(), prepare(&v).unwrap());
        }
    }
}
