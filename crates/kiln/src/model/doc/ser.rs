//! Documents given as any `serde::Serialize` value (a `serde_json::Value`, or a program's own
//! struct): encoded straight into their stored dag-cbor form. The result is byte for byte what
//! [`super::prepare`] makes of `serde_json::to_value(doc)` (same id rules, same errors, same
//! body), without building that `Value`: the value model is serde_json's (a non-finite float is
//! null, bytes are an array of numbers, an enum variant with data is a one-entry object, map
//! keys become strings as serde_json makes them).

use super::{
    check_id, id_not_string_msg, integer_out_of_range, new_id, not_object_msg, out_of_range_msg,
    reserved_msg, sized, too_deep_msg,
};
use crate::error::{Error, Result};
use crate::format::block::cbor::Encoder;
use serde::ser::{self, Impossible, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Validates a document and returns its id and stored body.
pub fn prepare_serialize<T: Serialize + ?Sized>(doc: &T) -> Result<(String, Vec<u8>)> {
    // The thread's buffers of the last document, or room for a typical document's fields
    // (growing buffers field by field cost more than encoding them).
    let (keys, values) = SCRATCH
        .try_with(std::cell::Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| (Vec::with_capacity(16), Vec::with_capacity(512)));
    let mut top = Top {
        fields: Fields {
            keys,
            values,
            depth: 0,
        },
        ..Top::default()
    };
    doc.serialize(TopSer(&mut top))
        .map_err(|e| Error::InvalidDocument(e.0))?;
    let Top {
        id,
        reserved,
        mut fields,
    } = top;
    let id = match id {
        None => new_id(),
        Some(Ok(id)) => {
            check_id(&id)?;
            id
        }
        Some(Err(kind)) => return Err(Error::InvalidDocument(id_not_string_msg(kind))),
    };
    if let Some(k) = reserved {
        return Err(Error::InvalidDocument(reserved_msg(&k)));
    }
    let mut e = Encoder {
        buf: Vec::with_capacity(fields.size()),
    };
    fields.write(&mut e);
    // Kept unless a large document grew them (a thread would hold on to that for good).
    if fields.values.capacity() <= SCRATCH_KEEP && fields.keys.capacity() <= 256 {
        fields.keys.clear();
        fields.values.clear();
        let _ = SCRATCH.try_with(|s| s.set(Some((fields.keys, fields.values))));
    }
    let body = e.into_bytes();
    sized(id, body)
}

/// Largest values buffer a thread keeps for its next document.
const SCRATCH_KEEP: usize = 64 << 10;

thread_local! {
    /// A thread's top-level field buffers, kept from one document to the next.
    static SCRATCH: std::cell::Cell<Option<(Vec<(Key, std::ops::Range<usize>)>, Vec<u8>)>> =
        const { std::cell::Cell::new(None) };
}

/// Why a value cannot be a document (or a part of one).
#[derive(Debug)]
pub struct SerError(String);

impl fmt::Display for SerError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SerError {}

impl ser::Error for SerError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        SerError(msg.to_string())
    }
}

type R<T = ()> = std::result::Result<T, SerError>;

/// What serde_json makes of a value it cannot turn into a `Value` (a number out of range, a
/// map key that is not a string), as our error.
fn json_err(e: serde_json::Error) -> SerError {
    SerError(e.to_string())
}

/// A map key: a struct's field names are `'static` and need no copy.
type Key = Cow<'static, str>;

/// An object's entries as they are written: keys, and their encoded values one after another
/// in one buffer.
#[derive(Default)]
struct Fields {
    keys: Vec<(Key, std::ops::Range<usize>)>,
    values: Vec<u8>,
    /// How many containers hold this object (0: the document itself).
    depth: usize,
}

impl Fields {
    /// Encodes `v` as the value of `key`.
    fn value<T: Serialize + ?Sized>(&mut self, key: Key, v: &T) -> R {
        let start = self.values.len();
        let mut e = Encoder {
            buf: std::mem::take(&mut self.values),
        };
        let r = v.serialize(Ser(&mut e, self.depth + 1));
        self.values = e.buf;
        r?;
        self.keys.push((key, start..self.values.len()));
        Ok(())
    }

    /// Adds `key` with a value already encoded.
    fn push_encoded(&mut self, key: Key, v: &[u8]) {
        let start = self.values.len();
        self.values.extend_from_slice(v);
        self.keys.push((key, start..self.values.len()));
    }

    /// An upper bound of the encoded size.
    fn size(&self) -> usize {
        9 + self.values.len() + self.keys.iter().map(|k| k.0.len() + 9).sum::<usize>()
    }

    fn write(&mut self, e: &mut Encoder) {
        super::sort_fields(&mut self.keys);
        e.buf.reserve(self.size());
        e.map(self.keys.len());
        for (k, v) in &self.keys {
            e.str(k);
            e.buf.extend_from_slice(&self.values[v.clone()]);
        }
    }
}

/// The top level: an object, its `_id` taken out, reserved names noted.
#[derive(Default)]
struct Top {
    /// The last `_id`: a string, or the kind of value it was.
    id: Option<std::result::Result<String, &'static str>>,
    /// The first reserved name, in key order (as the `Value` path reports it).
    reserved: Option<String>,
    fields: Fields,
}

impl Top {
    fn entry<T: Serialize + ?Sized>(&mut self, key: Key, v: &T) -> R {
        if key == "_id" {
            self.id = Some(v.serialize(IdSer)?);
            return Ok(());
        }
        self.note_reserved(&key);
        self.fields.value(key, v)
    }

    /// An entry whose value is already encoded and is of kind `kind` (an array or an object).
    fn entry_encoded(&mut self, key: Key, v: &[u8], kind: &'static str) {
        if key == "_id" {
            self.id = Some(Err(kind));
            return;
        }
        self.note_reserved(&key);
        self.fields.push_encoded(key, v);
    }

    /// Notes a reserved name: the one reported is the first in the order a `serde_json::Map`
    /// keeps (sorted, or insertion order under serde_json's `preserve_order` feature, which
    /// another crate in the program may turn on), as on the `Value` path.
    fn note_reserved(&mut self, key: &str) {
        if !super::files::is_reserved(key) {
            return;
        }
        let first = match &self.reserved {
            None => true,
            Some(r) => !map_keeps_insertion_order() && key < r.as_str(),
        };
        if first {
            self.reserved = Some(key.to_owned());
        }
    }
}

fn not_object(kind: &str) -> SerError {
    SerError(not_object_msg(kind))
}

/// The kind of a value serde_json turns a non-finite float into.
fn float_kind(x: f64) -> &'static str {
    if x.is_finite() {
        "a number"
    } else {
        "null"
    }
}

/// Whether `serde_json::Map` keeps insertion order (its `preserve_order` feature is on).
fn map_keeps_insertion_order() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let mut m = serde_json::Map::new();
        m.insert("b".into(), serde_json::Value::Null);
        m.insert("a".into(), serde_json::Value::Null);
        m.keys().next().is_some_and(|k| k == "b")
    })
}

/// serde_json's names for the two structs it serializes specially: a number under its
/// `arbitrary_precision` feature, a raw JSON value under `raw_value` (Cargo unifies features:
/// another crate in the program may turn either on).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";
const RAW_TOKEN: &str = "$serde_json::private::RawValue";

/// Scalar methods of a `Serializer` that all answer alike.
macro_rules! scalars {
    ($ok:ty = $e:expr; $($m:ident: $t:ty),+) => {
        $(fn $m(self, _: $t) -> R<$ok> {
            $e
        })+
    };
}

// ------------------------------------------------------------------------------ top level

struct TopSer<'a>(&'a mut Top);

/// A one-entry object `{variant: value}` at the top level, its value written by the inner
/// serializer that `finish` closes.
struct TopVariant<'a, S> {
    top: &'a mut Top,
    variant: &'static str,
    inner: S,
}

impl<'a> ser::Serializer for TopSer<'a> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = TopArray;
    type SerializeTuple = TopArray;
    type SerializeTupleStruct = TopArray;
    type SerializeTupleVariant = TopVariant<'a, ArrayOf>;
    type SerializeMap = TopMap<'a>;
    type SerializeStruct = TopMap<'a>;
    type SerializeStructVariant = TopVariant<'a, MapOf>;

    scalars!(() = Err(not_object("a number")); serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64);
    scalars!(() = Err(not_object("a boolean")); serialize_bool: bool);

    scalars!(() = Err(not_object("a number")); serialize_i128: i128, serialize_u128: u128);
    fn serialize_f64(self, v: f64) -> R {
        Err(not_object(float_kind(v)))
    }
    fn serialize_f32(self, v: f32) -> R {
        Err(not_object(float_kind(v as f64)))
    }
    fn serialize_char(self, _: char) -> R {
        Err(not_object("a string"))
    }
    fn serialize_str(self, _: &str) -> R {
        Err(not_object("a string"))
    }
    fn serialize_bytes(self, _: &[u8]) -> R {
        Err(not_object("an array"))
    }
    fn serialize_none(self) -> R {
        Err(not_object("null"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R {
        v.serialize(self)
    }
    fn serialize_unit(self) -> R {
        Err(not_object("null"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        Err(not_object("null"))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Err(not_object("a string"))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> R {
        self.0.entry(Cow::Borrowed(variant), v)
    }
    fn serialize_seq(self, _: Option<usize>) -> R<Self::SerializeSeq> {
        Ok(TopArray(ArrayOf::new(0)))
    }
    fn serialize_tuple(self, _: usize) -> R<Self::SerializeTuple> {
        Ok(TopArray(ArrayOf::new(0)))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> R<Self::SerializeTupleStruct> {
        Ok(TopArray(ArrayOf::new(0)))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> R<Self::SerializeTupleVariant> {
        Ok(TopVariant {
            top: self.0,
            variant,
            inner: ArrayOf::new(1),
        })
    }
    fn serialize_map(self, _: Option<usize>) -> R<Self::SerializeMap> {
        Ok(TopMap {
            top: self.0,
            key: None,
            special: None,
        })
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> R<Self::SerializeStruct> {
        Ok(TopMap {
            top: self.0,
            key: None,
            special: (name == NUMBER_TOKEN || name == RAW_TOKEN).then_some(name),
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> R<Self::SerializeStructVariant> {
        Ok(TopVariant {
            top: self.0,
            variant,
            inner: MapOf::new(1),
        })
    }
}

/// Implements serde's one-value-at-a-time traits (sequences, tuples, tuple structs, tuple
/// variants) for a collector, all alike: its inherent `push` takes each value, `done` ends.
macro_rules! one_at_a_time {
    ($t:ty, $ok:ty: $($tr:ident :: $m:ident),+) => {
        $(impl ser::$tr for $t {
            type Ok = $ok;
            type Error = SerError;
            fn $m<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
                self.push(v)
            }
            fn end(self) -> R<$ok> {
                self.done()
            }
        })+
    };
}

/// An array at the top level: not a document, but its items are still written (to nowhere
/// useful), so that what serde_json would refuse in them is what is reported, as on the
/// `Value` path.
struct TopArray(ArrayOf);

impl TopArray {
    /// An item; nesting too deep does not matter here (an array is refused anyway).
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        match self.0.push(v) {
            Err(e) if e.0 == too_deep().0 => Ok(()),
            r => r,
        }
    }

    fn done(self) -> R {
        Err(not_object("an array"))
    }
}

one_at_a_time!(TopArray, (): SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field);

/// The top-level object's entries.
struct TopMap<'a> {
    top: &'a mut Top,
    key: Option<String>,
    /// A serde_json special struct (a number or raw JSON) seen at the top level.
    special: Option<&'static str>,
}

impl ser::SerializeMap for TopMap<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> R {
        self.key = Some(map_key(k)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        let k = self
            .key
            .take()
            .ok_or_else(|| SerError("a map value without its key".into()))?;
        self.top.entry(Cow::Owned(k), v)
    }
    fn end(self) -> R {
        Ok(())
    }
}

impl ser::SerializeStruct for TopMap<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> R {
        match self.special {
            Some(NUMBER_TOKEN) => Err(not_object("a number")),
            Some(_) => {
                // Raw JSON text: a document if it is an object.
                let text = v.serialize(TextOf)?;
                let doc = raw_json(&text)?;
                doc.serialize(TopSer(self.top))
            }
            None => self.top.entry(Cow::Borrowed(k), v),
        }
    }
    fn end(self) -> R {
        Ok(())
    }
}

impl<S: Inner> TopVariant<'_, S> {
    fn close(self) -> R {
        let kind = S::KIND;
        let mut e = Encoder { buf: Vec::new() };
        self.inner.finish(&mut e);
        self.top
            .entry_encoded(Cow::Borrowed(self.variant), &e.buf, kind);
        Ok(())
    }
}

impl ser::SerializeTupleVariant for TopVariant<'_, ArrayOf> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        self.inner.push(v)
    }
    fn end(self) -> R {
        self.close()
    }
}

impl ser::SerializeStructVariant for TopVariant<'_, MapOf> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> R {
        self.inner.fields.value(Cow::Borrowed(k), v)
    }
    fn end(self) -> R {
        self.close()
    }
}

// ------------------------------------------------------------------------------ values

/// Any value, written as dag-cbor into the encoder, held by as many containers as the number
/// says.
struct Ser<'a>(&'a mut Encoder, usize);

/// The deepest nesting a stored document may have (what a reader decodes).
fn too_deep() -> SerError {
    SerError(too_deep_msg())
}

/// Inner collectors of a compound value: what a `Ser` compound writes when it ends.
trait Inner {
    /// What the value is, in the words of error messages.
    const KIND: &'static str;
    fn finish(self, e: &mut Encoder);
}

/// An array's items, encoded one after another, and their count.
struct ArrayOf {
    items: Encoder,
    n: usize,
    /// How many containers hold this array.
    depth: usize,
}

impl ArrayOf {
    fn new(depth: usize) -> ArrayOf {
        ArrayOf {
            items: Encoder { buf: Vec::new() },
            n: 0,
            depth,
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        v.serialize(Ser(&mut self.items, self.depth + 1))?;
        self.n += 1;
        Ok(())
    }
}

impl Inner for ArrayOf {
    const KIND: &'static str = "an array";
    fn finish(self, e: &mut Encoder) {
        e.array(self.n);
        e.buf.extend_from_slice(&self.items.buf);
    }
}

/// An object's entries.
struct MapOf {
    fields: Fields,
    key: Option<String>,
}

impl MapOf {
    fn new(depth: usize) -> MapOf {
        MapOf {
            fields: Fields {
                depth,
                ..Fields::default()
            },
            key: None,
        }
    }
}

impl Inner for MapOf {
    const KIND: &'static str = "an object";
    fn finish(mut self, e: &mut Encoder) {
        self.fields.write(e);
    }
}

/// A compound value being written into `out`; with `variant`, it is wrapped as the one entry
/// of an object `{variant: value}`.
struct Compound<'a, S> {
    out: &'a mut Encoder,
    variant: Option<&'static str>,
    inner: S,
    /// A serde_json special struct being written (a number or raw JSON).
    special: Option<&'static str>,
}

impl<S: Inner> Compound<'_, S> {
    fn close(self) -> R {
        match self.variant {
            None => self.inner.finish(self.out),
            Some(v) => {
                self.out.map(1);
                self.out.str(v);
                self.inner.finish(self.out);
            }
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = Compound<'a, ArrayOf>;
    type SerializeTuple = Compound<'a, ArrayOf>;
    type SerializeTupleStruct = Compound<'a, ArrayOf>;
    type SerializeTupleVariant = Compound<'a, ArrayOf>;
    type SerializeMap = Compound<'a, MapOf>;
    type SerializeStruct = Compound<'a, MapOf>;
    type SerializeStructVariant = Compound<'a, MapOf>;

    fn serialize_bool(self, v: bool) -> R {
        self.0.bool(v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> R {
        self.0.i64(v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> R {
        self.0.u64(v);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> R {
        self.serialize_i64(v as i64)
    }
    fn serialize_i16(self, v: i16) -> R {
        self.serialize_i64(v as i64)
    }
    fn serialize_i32(self, v: i32) -> R {
        self.serialize_i64(v as i64)
    }
    fn serialize_u8(self, v: u8) -> R {
        self.serialize_u64(v as u64)
    }
    fn serialize_u16(self, v: u16) -> R {
        self.serialize_u64(v as u64)
    }
    fn serialize_u32(self, v: u32) -> R {
        self.serialize_u64(v as u64)
    }
    fn serialize_i128(self, v: i128) -> R {
        match (u64::try_from(v), i64::try_from(v)) {
            (Ok(u), _) => self.0.u64(u),
            (_, Ok(i)) => self.0.i64(i),
            // Refused, as the JSON-text path refuses such an integer (never a float).
            _ => return Err(SerError(out_of_range_msg(&v.to_string()))),
        }
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> R {
        match u64::try_from(v) {
            Ok(u) => self.0.u64(u),
            Err(_) => return Err(SerError(out_of_range_msg(&v.to_string()))),
        }
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> R {
        self.0.json(&serde_json::to_value(v).map_err(json_err)?);
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> R {
        if v.is_finite() {
            self.0.f64(v);
        } else {
            self.0.null();
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> R {
        self.0.str(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> R {
        self.0.str(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> R {
        self.0.array(v.len());
        for &b in v {
            self.0.u64(b as u64);
        }
        Ok(())
    }
    fn serialize_none(self) -> R {
        self.0.null();
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R {
        v.serialize(self)
    }
    fn serialize_unit(self) -> R {
        self.0.null();
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R {
        self.0.null();
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> R {
        self.0.str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> R {
        if self.1 >= crate::format::block::cbor::MAX_DEPTH {
            return Err(too_deep());
        }
        self.0.map(1);
        self.0.str(variant);
        v.serialize(Ser(self.0, self.1 + 1))
    }
    fn serialize_seq(self, _: Option<usize>) -> R<Self::SerializeSeq> {
        self.compound(None, ArrayOf::new)
    }
    fn serialize_tuple(self, _: usize) -> R<Self::SerializeTuple> {
        self.compound(None, ArrayOf::new)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> R<Self::SerializeTupleStruct> {
        self.compound(None, ArrayOf::new)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> R<Self::SerializeTupleVariant> {
        self.compound(Some(variant), ArrayOf::new)
    }
    fn serialize_map(self, _: Option<usize>) -> R<Self::SerializeMap> {
        self.compound(None, MapOf::new)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> R<Self::SerializeStruct> {
        if name == NUMBER_TOKEN || name == RAW_TOKEN {
            // One value in disguise: its depth is checked once it is read.
            return Ok(Compound {
                out: self.0,
                variant: None,
                inner: MapOf::new(self.1),
                special: Some(name),
            });
        }
        self.compound(None, MapOf::new)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> R<Self::SerializeStructVariant> {
        self.compound(Some(variant), MapOf::new)
    }
}

impl<'a> Ser<'a> {
    /// A container at this value's depth (inside a one-entry object for a variant), refused
    /// where its items would sit deeper than a reader decodes.
    fn compound<S>(
        self,
        variant: Option<&'static str>,
        inner: impl FnOnce(usize) -> S,
    ) -> R<Compound<'a, S>> {
        let depth = self.1 + variant.is_some() as usize;
        if depth >= crate::format::block::cbor::MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(Compound {
            out: self.0,
            variant,
            inner: inner(depth),
            special: None,
        })
    }
}

impl Compound<'_, ArrayOf> {
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        self.inner.push(v)
    }

    fn done(self) -> R {
        self.close()
    }
}

one_at_a_time!(Compound<'_, ArrayOf>, (): SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field, SerializeTupleVariant::serialize_field);

impl ser::SerializeMap for Compound<'_, MapOf> {
    type Ok = ();
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> R {
        self.inner.key = Some(map_key(k)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        let k = self
            .inner
            .key
            .take()
            .ok_or_else(|| SerError("a map value without its key".into()))?;
        self.inner.fields.value(Cow::Owned(k), v)
    }
    fn end(self) -> R {
        self.close()
    }
}

impl ser::SerializeStruct for Compound<'_, MapOf> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> R {
        match self.special {
            None => self.inner.fields.value(Cow::Borrowed(k), v),
            Some(name) => {
                // serde_json's number or raw JSON: its text, read as the `Value` path would.
                let text = v.serialize(TextOf)?;
                let value: serde_json::Value = if name == NUMBER_TOKEN {
                    if integer_out_of_range(&text) {
                        return Err(SerError(out_of_range_msg(&text)));
                    }
                    serde_json::Value::Number(
                        text.parse()
                            .map_err(|_| SerError(format!("bad number {text:?}")))?,
                    )
                } else {
                    raw_json(&text)?
                };
                if super::too_deep_at(&value, self.inner.fields.depth) {
                    return Err(too_deep());
                }
                self.out.json(&value);
                self.special = Some(""); // written: `end` adds nothing
                Ok(())
            }
        }
    }
    fn end(self) -> R {
        if self.special.is_some() {
            return Ok(());
        }
        self.close()
    }
}

impl ser::SerializeStructVariant for Compound<'_, MapOf> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, k: &'static str, v: &T) -> R {
        self.inner.fields.value(Cow::Borrowed(k), v)
    }
    fn end(self) -> R {
        self.close()
    }
}

/// A map key as serde_json makes it: strings and characters as they are; anything else
/// (numbers, booleans, unit variants…) through serde_json itself, which also refuses what
/// cannot be a key.
fn map_key<T: Serialize + ?Sized>(k: &T) -> R<String> {
    if let Ok(s) = k.serialize(TextOf) {
        return Ok(s);
    }
    struct One<'a, T: ?Sized>(&'a T);
    impl<T: Serialize + ?Sized> Serialize for One<'_, T> {
        fn serialize<S: ser::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use ser::SerializeMap;
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(self.0, &())?;
            m.end()
        }
    }
    match serde_json::to_value(One(k)).map_err(json_err)? {
        serde_json::Value::Object(m) => m
            .into_iter()
            .next()
            .map(|(k, _)| k)
            .ok_or_else(|| SerError("key must be a string".into())),
        _ => Err(SerError("key must be a string".into())),
    }
}

// ------------------------------------------------------------------------------ helpers

/// Raw JSON text (serde_json's `raw_value`) as a `Value`; an integer in it outside the 64-bit
/// range is refused (parsing would make a float of it).
fn raw_json(text: &str) -> R<serde_json::Value> {
    if let Some(t) = super::first_big_integer(text) {
        return Err(SerError(out_of_range_msg(t)));
    }
    serde_json::from_str(text).map_err(json_err)
}

/// Accepts only text (a string, a character, or one inside a newtype) and returns it; any
/// other value is an error (the caller then asks serde_json).
struct TextOf;

fn not_text() -> SerError {
    SerError("not text".into())
}

impl ser::Serializer for TextOf {
    type Ok = String;
    type Error = SerError;
    type SerializeSeq = Impossible<String, SerError>;
    type SerializeTuple = Impossible<String, SerError>;
    type SerializeTupleStruct = Impossible<String, SerError>;
    type SerializeTupleVariant = Impossible<String, SerError>;
    type SerializeMap = Impossible<String, SerError>;
    type SerializeStruct = Impossible<String, SerError>;
    type SerializeStructVariant = Impossible<String, SerError>;

    scalars!(String = Err(not_text()); serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64, serialize_bool: bool, serialize_f32: f32, serialize_f64: f64);

    fn serialize_str(self, v: &str) -> R<String> {
        Ok(v.to_owned())
    }
    fn serialize_char(self, v: char) -> R<String> {
        Ok(v.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R<String> {
        v.serialize(self)
    }
    fn serialize_bytes(self, _: &[u8]) -> R<String> {
        Err(not_text())
    }
    fn serialize_none(self) -> R<String> {
        Err(not_text())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> R<String> {
        Err(not_text())
    }
    fn serialize_unit(self) -> R<String> {
        Err(not_text())
    }
    fn serialize_unit_struct(self, _: &'static str) -> R<String> {
        Err(not_text())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R<String> {
        Err(not_text())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> R<String> {
        Err(not_text())
    }
    fn serialize_seq(self, _: Option<usize>) -> R<Self::SerializeSeq> {
        Err(not_text())
    }
    fn serialize_tuple(self, _: usize) -> R<Self::SerializeTuple> {
        Err(not_text())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> R<Self::SerializeTupleStruct> {
        Err(not_text())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> R<Self::SerializeTupleVariant> {
        Err(not_text())
    }
    fn serialize_map(self, _: Option<usize>) -> R<Self::SerializeMap> {
        Err(not_text())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> R<Self::SerializeStruct> {
        Err(not_text())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> R<Self::SerializeStructVariant> {
        Err(not_text())
    }
}

// ------------------------------------------------------------------------------ `_id`

/// The `_id` value: a string, or the kind of value it is instead.
type IdValue = std::result::Result<String, &'static str>;

struct IdSer;

/// A compound `_id` (an error either way): its parts are still written, to a scratch buffer,
/// so that what serde_json would refuse in them is refused here too.
struct IdSkip {
    kind: &'static str,
    scratch: Encoder,
    /// serde_json's raw-JSON struct: its text decides.
    raw: bool,
    /// What a raw `_id` turned out to be.
    raw_value: Option<IdValue>,
}

impl IdSkip {
    fn new(kind: &'static str) -> IdSkip {
        IdSkip {
            kind,
            scratch: Encoder { buf: Vec::new() },
            raw: false,
            raw_value: None,
        }
    }

    /// A part; nesting too deep does not matter here (the `_id` is refused anyway).
    fn part<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        self.scratch.buf.clear();
        match v.serialize(Ser(&mut self.scratch, 2)) {
            Err(e) if e.0 == too_deep().0 => Ok(()),
            r => r,
        }
    }

    fn done(self) -> R<IdValue> {
        Ok(self.raw_value.unwrap_or(Err(self.kind)))
    }

    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        self.part(v)
    }
}

one_at_a_time!(IdSkip, IdValue: SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field, SerializeTupleVariant::serialize_field);

impl ser::SerializeMap for IdSkip {
    type Ok = IdValue;
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> R {
        map_key(k).map(drop)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        self.part(v)
    }
    fn end(self) -> R<IdValue> {
        self.done()
    }
}

impl ser::SerializeStruct for IdSkip {
    type Ok = IdValue;
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> R {
        if self.raw {
            let text = v.serialize(TextOf)?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(json_err)?;
            self.raw_value = Some(value.serialize(IdSer)?);
            return Ok(());
        }
        self.part(v)
    }
    fn end(self) -> R<IdValue> {
        self.done()
    }
}

impl ser::SerializeStructVariant for IdSkip {
    type Ok = IdValue;
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> R {
        self.part(v)
    }
    fn end(self) -> R<IdValue> {
        self.done()
    }
}

impl ser::Serializer for IdSer {
    type Ok = IdValue;
    type Error = SerError;
    type SerializeSeq = IdSkip;
    type SerializeTuple = IdSkip;
    type SerializeTupleStruct = IdSkip;
    type SerializeTupleVariant = IdSkip;
    type SerializeMap = IdSkip;
    type SerializeStruct = IdSkip;
    type SerializeStructVariant = IdSkip;

    scalars!(IdValue = Ok(Err("a number")); serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64);

    fn serialize_str(self, v: &str) -> R<IdValue> {
        Ok(Ok(v.to_owned()))
    }
    fn serialize_char(self, v: char) -> R<IdValue> {
        Ok(Ok(v.to_string()))
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> R<IdValue> {
        Ok(Ok(v.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R<IdValue> {
        v.serialize(self)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R<IdValue> {
        v.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> R<IdValue> {
        Ok(Err("a boolean"))
    }
    fn serialize_i128(self, _: i128) -> R<IdValue> {
        Ok(Err("a number"))
    }
    fn serialize_u128(self, _: u128) -> R<IdValue> {
        Ok(Err("a number"))
    }
    fn serialize_f32(self, v: f32) -> R<IdValue> {
        Ok(Err(float_kind(v as f64)))
    }
    fn serialize_f64(self, v: f64) -> R<IdValue> {
        Ok(Err(float_kind(v)))
    }
    fn serialize_bytes(self, _: &[u8]) -> R<IdValue> {
        Ok(Err("an array"))
    }
    fn serialize_none(self) -> R<IdValue> {
        Ok(Err("null"))
    }
    fn serialize_unit(self) -> R<IdValue> {
        Ok(Err("null"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> R<IdValue> {
        Ok(Err("null"))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> R<IdValue> {
        match v.serialize(Ser(&mut Encoder { buf: Vec::new() }, 2)) {
            Err(e) if e.0 != too_deep().0 => return Err(e),
            _ => {}
        }
        Ok(Err("an object"))
    }
    fn serialize_seq(self, _: Option<usize>) -> R<IdSkip> {
        Ok(IdSkip::new("an array"))
    }
    fn serialize_tuple(self, _: usize) -> R<IdSkip> {
        Ok(IdSkip::new("an array"))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> R<IdSkip> {
        Ok(IdSkip::new("an array"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> R<IdSkip> {
        Ok(IdSkip::new("an object"))
    }
    fn serialize_map(self, _: Option<usize>) -> R<IdSkip> {
        Ok(IdSkip::new("an object"))
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> R<IdSkip> {
        let mut s = IdSkip::new("an object");
        if name == NUMBER_TOKEN {
            s.kind = "a number";
        }
        s.raw = name == RAW_TOKEN;
        Ok(s)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> R<IdSkip> {
        Ok(IdSkip::new("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{prepare, MAX_DOC_BYTES};
    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{json, Value};
    use std::collections::{BTreeMap, HashMap};

    /// Emits `k` three times (1, 2, 3) among other fields, then nested the same way.
    struct Repeats;
    impl Serialize for Repeats {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(None)?;
            for (k, v) in [("k", 1), ("a", 0), ("k", 2), ("zz", 0), ("k", 3)] {
                m.serialize_entry(k, &v)?;
            }
            m.serialize_entry("_id", "r")?;
            m.serialize_entry("in", &BTreeMap::from([("x", 1)]))?;
            m.end()
        }
    }

    #[test]
    fn a_thread_keeps_no_large_buffer_from_a_document() {
        // The buffers of a document refused for its size (and of any large one) are dropped,
        // not kept by the thread for its next document.
        let big = json!({"_id": "big", "b": "x".repeat(5_000_000)});
        assert!(prepare_serialize(&big).is_err());
        let kept = SCRATCH.take().map_or(0, |(_, v)| v.capacity());
        assert!(kept < 1 << 20, "the thread keeps {kept} bytes");
    }

    #[test]
    fn of_repeated_keys_the_last_stays_and_buffers_are_reused() {
        // (Twice: the second document reuses the thread's buffers of the first.)
        for _ in 0..2 {
            let got = prepare_serialize(&Repeats).unwrap();
            let want =
                prepare(&json!({"_id": "r", "a": 0, "k": 3, "zz": 0, "in": {"x": 1}})).unwrap();
            assert_eq!(got, want);
        }
    }

    /// What the `Value` path makes of `x`: errors compared by message.
    fn via_value<T: Serialize>(x: &T) -> std::result::Result<(String, Vec<u8>), String> {
        let v = serde_json::to_value(x).map_err(|e| e.to_string())?;
        prepare(&v).map_err(|e| e.to_string())
    }

    fn direct<T: Serialize>(x: &T) -> std::result::Result<(String, Vec<u8>), String> {
        prepare_serialize(x).map_err(|e| e.to_string())
    }

    /// Same outcome, with generated ids (no `_id`) compared by shape only.
    fn same<T: Serialize>(x: &T) {
        match (direct(x), via_value(x)) {
            (Ok((ia, a)), Ok((ib, b))) => {
                assert_eq!(a, b);
                if ia.len() == 36 && ib.len() == 36 && ia != ib {
                    return; // two fresh UUIDv7s
                }
                assert_eq!(ia, ib);
            }
            // (serde_json's `to_value` refuses an integer outside the 64-bit range before the
            // `Value` path sees it; this path says what is refused, or where it sits.)
            // (Under serde_json's `arbitrary_precision` the `Value` path takes the integer and
            // may refuse something else first: a top-level array.)
            (Err(a), Err(_)) if a.contains("outside the 64-bit range") => {}
            (Err(a), Err(b)) if b == "number out of range" => assert!(
                a.contains("outside the 64-bit range") || a.ends_with("not a number"),
                "{a} vs {b}"
            ),
            (Err(a), Err(b)) => assert!(a == b || a.ends_with(&b) || b.ends_with(&a), "{a} vs {b}"),
            (a, b) => panic!("{a:?} vs {b:?}"),
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        super::super::testgen::arb_json(any::<f64>(), "_?[a-z\u{e9}]{0,6}", 30)
    }

    proptest! {
        /// Any `Value`, a document or not: the same body, id and error as `prepare`.
        #[test]
        fn values_agree_with_the_value_path(v in arb_json(), id in prop::option::of(arb_json())) {
            let mut v = v;
            if let (Value::Object(m), Some(id)) = (&mut v, id) {
                m.insert("_id".into(), id);
            }
            same(&v);
        }
    }

    #[derive(Serialize)]
    enum Kind {
        Unit,
        New(u8),
        Tuple(i32, String),
        Struct { a: Option<bool>, b: f32 },
    }

    #[derive(Serialize)]
    struct Wrapper(String);

    #[derive(Serialize)]
    struct Doc {
        _id: Wrapper,
        title: String,
        n: u64,
        neg: i16,
        ratio: f64,
        bad: f64,
        small: f32,
        big: u128,
        wide: i128,
        letter: char,
        bytes: Vec<u8>,
        tuple: (u8, &'static str, ()),
        kinds: Vec<Kind>,
        nested: BTreeMap<String, Vec<Option<i32>>>,
        by_number: HashMap<i32, &'static str>,
        by_bool: BTreeMap<bool, u8>,
        by_float: BTreeMap<u8, f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(flatten)]
        extra: BTreeMap<String, Value>,
    }

    fn sample() -> Doc {
        Doc {
            _id: Wrapper("doc-1".into()),
            title: "Document number 1".into(),
            n: 7919,
            neg: -3,
            ratio: 1.0,
            bad: f64::NAN,
            small: 1.1,
            big: u64::MAX as u128,
            wide: -5,
            letter: 'é',
            bytes: vec![0, 1, 255],
            tuple: (1, "two", ()),
            kinds: vec![
                Kind::Unit,
                Kind::New(3),
                Kind::Tuple(-1, "x".into()),
                Kind::Struct { a: None, b: 2.5 },
            ],
            nested: BTreeMap::from([("k".into(), vec![Some(1), None])]),
            by_number: HashMap::from([(10, "ten"), (-2, "minus two"), (3, "three")]),
            by_bool: BTreeMap::from([(true, 1), (false, 0)]),
            by_float: BTreeMap::from([(1, 0.5)]),
            skipped: None,
            extra: BTreeMap::from([("zz".into(), json!({"deep": [1, {"b": 2, "a": 1}]}))]),
        }
    }

    #[test]
    fn program_types_agree_with_the_value_path() {
        same(&sample());
        assert_eq!(direct(&sample()).unwrap().0, "doc-1");
        // Top-level enum variants with data are one-entry objects; others are not documents.
        same(&Kind::New(1));
        same(&Kind::Tuple(1, "a".into()));
        same(&Kind::Struct {
            a: Some(true),
            b: 0.0,
        });
        same(&Kind::Unit);
        same(&Some(sample()));
        same(&"text");
        same(&3u8);
        same(&f64::INFINITY);
        same(&vec![1, 2]);
        same(&());
    }

    #[test]
    fn ids_and_errors_agree_with_the_value_path() {
        #[derive(Serialize)]
        struct Id<T> {
            _id: T,
            v: u8,
        }
        same(&Id { _id: 5u32, v: 1 });
        same(&Id {
            _id: Option::<String>::None,
            v: 1,
        });
        same(&Id {
            _id: Some("x"),
            v: 1,
        });
        same(&Id { _id: 'c', v: 1 });
        same(&Id {
            _id: Kind::Unit,
            v: 1,
        });
        same(&Id {
            _id: Kind::New(1),
            v: 1,
        });
        same(&Id { _id: vec![1], v: 1 });
        same(&Id {
            _id: f64::NAN,
            v: 1,
        });
        same(&Id { _id: "", v: 1 });
        same(&Id {
            _id: "x".repeat(1025),
            v: 1,
        });
        same(&Id {
            _id: u128::MAX,
            v: 1,
        });
        #[derive(Serialize)]
        struct Reserved {
            _rev: u8,
            _files: u8,
        }
        same(&Reserved { _rev: 1, _files: 2 });
        // Numbers and keys serde_json refuses are refused.
        #[derive(Serialize)]
        struct Huge {
            n: u128,
        }
        same(&Huge { n: u128::MAX });
        assert!(direct(&Huge { n: u128::MAX }).is_err());
        let bad_key: BTreeMap<Vec<u8>, u8> = BTreeMap::from([(vec![1], 1)]);
        same(&json!({}));
        assert!(direct(&BTreeMap::from([("k", bad_key)])).is_err());
        let nan_key: BTreeMap<String, BTreeMap<u8, u8>> = BTreeMap::new();
        same(&nan_key);
        // Over the size limit.
        same(&json!({"_id": "big", "b": "x".repeat(MAX_DOC_BYTES)}));
        // Review findings: what serde_json refuses inside a top-level array is what is
        // reported (not "not an object").
        same(&vec![u128::MAX]);
        assert!(direct(&vec![u128::MAX])
            .unwrap_err()
            .contains("outside the 64-bit range"));
        same(&(1u8, BTreeMap::from([(vec![1u8], 1u8)])));
    }

    /// Nesting: as deep as a reader decodes (values at depth 128 at most) is stored and reads
    /// back; one level more is refused on every path (it used to be stored, then read back as
    /// corruption).
    #[test]
    fn nesting_deeper_than_a_reader_decodes_is_refused() {
        let max = crate::format::block::cbor::MAX_DEPTH;
        // `levels` arrays inside the document's own object: the innermost at depth `levels`.
        let nested = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!([v]);
            }
            json!({"_id": "deep", "a": v})
        };
        same(&nested(max - 1));
        same(&nested(max));
        let e = direct(&nested(max)).unwrap_err();
        assert!(e.contains("nests deeper than 128"), "{e}");
        // A deep `_id` is still just not a string; a deep top-level array not an object.
        let mut deep_id = nested(max + 5);
        deep_id["_id"] = deep_id["a"].take();
        deep_id["a"] = json!(1);
        same(&deep_id);
        same(&nested(max + 5)["a"]);
        // Stored at the limit, read back whole.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let db = store.create(Some("t")).unwrap();
        db.put(&nested(max - 1)).unwrap();
        assert_eq!(db.get("deep").unwrap().unwrap(), nested(max - 1));
        assert!(db.put(&nested(max)).is_err());
        // A Value deeper than the call stack would allow is refused, not a crash.
        let mut v = json!(1);
        for _ in 0..200_000 {
            v = Value::Array(vec![v]);
        }
        // (Not `json!`: it would copy `v` through serde_json::to_value, recursively.)
        let mut m = serde_json::Map::new();
        m.insert("_id".into(), json!("x"));
        m.insert("a".into(), v);
        let doc = Value::Object(m);
        assert!(prepare(&doc).is_err());
        assert!(direct(&doc).is_err());
        std::mem::forget(doc); // (serde_json drops a Value recursively)
    }

    /// serde_json's number (under `arbitrary_precision`) and raw JSON (under `raw_value`) as
    /// they serialize: a struct of a special name with one field holding the text.
    struct Special(&'static str, String);

    impl Serialize for Special {
        fn serialize<S: ser::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use ser::SerializeStruct;
            let mut st = s.serialize_struct(self.0, 1)?;
            st.serialize_field(self.0, &self.1)?;
            st.end()
        }
    }

    /// `levels` arrays around a special value.
    enum Nest {
        Leaf(Special),
        In(Box<Nest>),
    }

    impl Nest {
        fn new(leaf: Special, levels: usize) -> Nest {
            (0..levels).fold(Nest::Leaf(leaf), |n, _| Nest::In(Box::new(n)))
        }
    }

    impl Serialize for Nest {
        fn serialize<S: ser::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            match self {
                Nest::Leaf(x) => x.serialize(s),
                Nest::In(n) => [n].serialize(s),
            }
        }
    }

    /// Review findings: a number in disguise sits as deep as any number may (it is no
    /// container); raw JSON counts its own nesting from where it sits.
    #[test]
    fn numbers_and_raw_json_nest_as_the_values_they_are() {
        let max = crate::format::block::cbor::MAX_DEPTH;
        let wrap = |mut v: Value, levels: usize| {
            for _ in 0..levels {
                v = json!([v]);
            }
            v
        };
        #[derive(Serialize)]
        struct Doc {
            _id: &'static str,
            a: Nest,
        }
        // A number at depth 128: `a` (depth 1) holds 127 arrays around it.
        let number = Nest::new(Special(NUMBER_TOKEN, "5".into()), max - 1);
        assert_eq!(
            prepare_serialize(&Doc {
                _id: "n",
                a: number
            })
            .unwrap(),
            prepare(&json!({"_id": "n", "a": wrap(json!(5), max - 1)})).unwrap()
        );
        // Raw JSON of 3 levels inside 126 arrays: its number at depth 1 + 126 + 3 = 130.
        let raw = |levels: usize, inner: usize| {
            Nest::new(
                Special(RAW_TOKEN, wrap(json!(1), inner).to_string()),
                levels,
            )
        };
        let e = prepare_serialize(&Doc {
            _id: "r",
            a: raw(126, 3),
        })
        .unwrap_err();
        assert!(e.to_string().contains("nests deeper"), "{e}");
        // Two levels inside 125 arrays: its number at depth 128, stored as the Value path would.
        assert_eq!(
            prepare_serialize(&Doc {
                _id: "r",
                a: raw(125, 2)
            })
            .unwrap(),
            prepare(&json!({"_id": "r", "a": wrap(json!(1), 127)})).unwrap()
        );
    }
}
