//! A small, strict dag-cbor codec: exactly the subset kiln writes, and a decoder that treats its
//! input as hostile (bounds-checked, depth-limited, never panics, rejects non-canonical forms it
//! would not write).
//!
//! Writes: minimal-length integers, 64-bit floats only, definite lengths only, map keys that are
//! text strings sorted by (length, bytes), links as tag 42 over `0x00 ‖ CID`.

use super::cid::{Cid, CID_LEN};
use serde_json::{Map, Number, Value};

/// Why a byte string is not a block kiln can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CborError(pub &'static str);

impl std::fmt::Display for CborError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

type R<T> = Result<T, CborError>;

/// Deepest nesting a reader decodes: values down to depth 128, the document's own map being
/// depth 0. Writers refuse a container at depth 128 even when empty (a little stricter than
/// needed); serde_json's parser, which `put_json` uses, stops one level earlier still.
pub const MAX_DEPTH: usize = 128;

/// Appends dag-cbor items to a byte vector.
#[derive(Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder {
            buf: Vec::with_capacity(256),
        }
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    fn head(&mut self, major: u8, n: u64) {
        let m = major << 5;
        if n < 24 {
            self.buf.push(m | n as u8);
        } else if n <= u8::MAX as u64 {
            self.buf.extend_from_slice(&[m | 24, n as u8]);
        } else if n <= u16::MAX as u64 {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= u32::MAX as u64 {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&n.to_be_bytes());
        }
    }
    pub fn u64(&mut self, n: u64) {
        self.head(0, n)
    }
    pub fn i64(&mut self, n: i64) {
        if n >= 0 {
            self.head(0, n as u64)
        } else {
            self.head(1, (-1 - n) as u64)
        }
    }
    pub fn f64(&mut self, x: f64) {
        self.buf.push(0xfb);
        self.buf.extend_from_slice(&x.to_bits().to_be_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.head(2, b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    /// A byte string of `len` bytes that `fill` appends (no copy of them made first); `fill`
    /// must append exactly `len` bytes.
    pub fn bytes_with(&mut self, len: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        self.head(2, len as u64);
        let at = self.buf.len();
        fill(&mut self.buf);
        debug_assert_eq!(self.buf.len() - at, len, "byte string of the wrong length");
    }
    pub fn str(&mut self, s: &str) {
        self.head(3, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn array(&mut self, len: usize) {
        self.head(4, len as u64)
    }
    /// Map header; the caller writes keys in dag-cbor order (see [`key_order`]).
    pub fn map(&mut self, len: usize) {
        self.head(5, len as u64)
    }
    pub fn bool(&mut self, b: bool) {
        self.buf.push(if b { 0xf5 } else { 0xf4 })
    }
    pub fn null(&mut self) {
        self.buf.push(0xf6)
    }
    pub fn link(&mut self, cid: &Cid) {
        self.head(6, 42);
        self.head(2, (CID_LEN + 1) as u64);
        self.buf.push(0);
        self.buf.extend_from_slice(cid.as_bytes());
    }
    /// An array of CIDs as byte strings (lists in kiln's records that are not graph links).
    pub fn cid_array(&mut self, cids: &[Cid]) {
        self.array(cids.len());
        for c in cids {
            self.bytes(c.as_bytes());
        }
    }
    pub fn opt_link(&mut self, cid: Option<&Cid>) {
        match cid {
            Some(c) => self.link(c),
            None => self.null(),
        }
    }
    /// A JSON value; object keys in dag-cbor order.
    pub fn json(&mut self, v: &Value) {
        match v {
            Value::Null => self.null(),
            Value::Bool(b) => self.bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    self.u64(u)
                } else if let Some(i) = n.as_i64() {
                    self.i64(i)
                } else {
                    self.f64(n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(s) => self.str(s),
            Value::Array(a) => {
                self.array(a.len());
                for x in a {
                    self.json(x);
                }
            }
            Value::Object(m) => self.json_map(m.iter().map(|(k, v)| (k.as_str(), v)), m.len()),
        }
    }
    /// A map from string keys to JSON values, given in any order.
    pub fn json_map<'a>(
        &mut self,
        entries: impl Iterator<Item = (&'a str, &'a Value)>,
        len: usize,
    ) {
        let mut e: Vec<(&str, &Value)> = entries.collect();
        debug_assert_eq!(e.len(), len);
        e.sort_by(|a, b| key_order(a.0, b.0));
        self.map(e.len());
        for (k, v) in e {
            self.str(k);
            self.json(v);
        }
    }
}

/// dag-cbor map key order: shorter keys first, then bytewise.
pub fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// [`key_order`] on a key's bytes.
fn key_order_bytes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Which parts of a map to decode ([`Decoder::json_picked`]): the entries named, each decoded
/// whole when its own pick is empty (or it is not a map), else picked in turn. What a reader
/// of a few fields (an index's declared fields) needs, without the cost of the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pick {
    /// The entries kept, by key, each with what of it to keep.
    pub keys: Vec<(String, Pick)>,
}

impl Pick {
    /// The pick that keeps `path` (map keys, outermost first) and all beneath it, added to
    /// this one; a path whose prefix is kept whole changes nothing.
    pub fn add(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        match self.keys.iter_mut().find(|(k, _)| k == first) {
            // Kept whole already.
            Some((_, sub)) if sub.keys.is_empty() => {}
            Some((_, sub)) if rest.is_empty() => sub.keys.clear(),
            Some((_, sub)) => sub.add(rest),
            None => {
                let mut sub = Pick::default();
                sub.add(rest);
                self.keys.push((first.clone(), sub));
            }
        }
    }
}

/// Reads dag-cbor items from a byte slice.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> R<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(CborError("trailing bytes after the block"))
        }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(CborError("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(CborError("unexpected end of block"))?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn peek(&self) -> R<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(CborError("unexpected end of block"))
    }

    /// Reads an item head: (major type, argument). Rejects indefinite lengths and non-minimal
    /// encodings.
    fn head(&mut self) -> R<(u8, u64)> {
        let b = self.byte()?;
        let major = b >> 5;
        let info = b & 31;
        let n = match info {
            0..=23 => info as u64,
            24 => {
                let v = self.byte()? as u64;
                if v < 24 {
                    return Err(CborError("non-minimal integer"));
                }
                v
            }
            25 => {
                let v = u16::from_be_bytes([self.byte()?, self.byte()?]) as u64;
                if v <= u8::MAX as u64 {
                    return Err(CborError("non-minimal integer"));
                }
                v
            }
            26 => {
                let s = self.take(4)?;
                let v = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as u64;
                if v <= u16::MAX as u64 {
                    return Err(CborError("non-minimal integer"));
                }
                v
            }
            27 => {
                let s = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                let v = u64::from_be_bytes(a);
                if major != 7 && v <= u32::MAX as u64 {
                    return Err(CborError("non-minimal integer"));
                }
                v
            }
            _ => return Err(CborError("indefinite length or reserved item")),
        };
        Ok((major, n))
    }

    fn expect(&mut self, major: u8, what: &'static str) -> R<u64> {
        let (m, n) = self.head()?;
        if m != major {
            return Err(CborError(what));
        }
        Ok(n)
    }

    fn len(&self, n: u64) -> R<usize> {
        // Every element takes at least one byte, so a count beyond the remaining bytes is a lie.
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(CborError("length exceeds block"));
        }
        Ok(n as usize)
    }

    pub fn u64(&mut self) -> R<u64> {
        self.expect(0, "expected an unsigned integer")
    }
    pub fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.expect(2, "expected a byte string")?;
        let n = self.len(n)?;
        self.take(n)
    }
    pub fn str(&mut self) -> R<&'a str> {
        let n = self.expect(3, "expected a text string")?;
        let n = self.len(n)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| CborError("text string is not UTF-8"))
    }
    pub fn array(&mut self) -> R<usize> {
        let n = self.expect(4, "expected an array")?;
        self.len(n)
    }
    pub fn map(&mut self) -> R<usize> {
        let n = self.expect(5, "expected a map")?;
        self.len(n)
    }
    /// The next map key, without consuming it (for records with optional fields).
    pub fn peek_key(&self) -> R<&'a str> {
        let mut d = Decoder {
            buf: self.buf,
            pos: self.pos,
        };
        d.str()
    }
    /// Reads the next map key and checks it is `want` (kiln's own records have fixed keys).
    pub fn key(&mut self, want: &'static str) -> R<()> {
        if self.str()? == want {
            Ok(())
        } else {
            Err(CborError("unexpected map key"))
        }
    }
    pub fn is_null(&self) -> R<bool> {
        Ok(self.peek()? == 0xf6)
    }
    pub fn bool(&mut self) -> R<bool> {
        match self.byte()? {
            0xf5 => Ok(true),
            0xf4 => Ok(false),
            _ => Err(CborError("expected a boolean")),
        }
    }
    pub fn null(&mut self) -> R<()> {
        if self.byte()? == 0xf6 {
            Ok(())
        } else {
            Err(CborError("expected null"))
        }
    }
    pub fn link(&mut self) -> R<Cid> {
        let t = self.expect(6, "expected a link")?;
        if t != 42 {
            return Err(CborError("unknown tag"));
        }
        let b = self.bytes()?;
        if b.first() != Some(&0) {
            return Err(CborError("link without identity multibase prefix"));
        }
        Cid::from_bytes(&b[1..]).ok_or(CborError("malformed CID"))
    }
    /// An array written by [`Encoder::cid_array`], which must be strictly ascending.
    pub fn cid_array(&mut self) -> R<Vec<Cid>> {
        let n = self.array()?;
        let mut out: Vec<Cid> = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let c = Cid::from_bytes(self.bytes()?).ok_or(CborError("bad CID"))?;
            if out.last().is_some_and(|p| *p >= c) {
                return Err(CborError("CID list not sorted"));
            }
            out.push(c);
        }
        Ok(out)
    }
    pub fn opt_link(&mut self) -> R<Option<Cid>> {
        if self.is_null()? {
            self.null()?;
            Ok(None)
        } else {
            self.link().map(Some)
        }
    }

    /// Reads a JSON-compatible value (a document body).
    pub fn json(&mut self) -> R<Value> {
        self.json_at(0)
    }

    /// Reads a JSON-compatible map with only the parts `pick` names decoded (see [`Pick`]);
    /// the other entries are stepped over, their bytes not checked beyond their framing.
    pub fn json_picked(&mut self, pick: &Pick) -> R<Value> {
        self.picked_at(pick, 0)
    }

    fn picked_at(&mut self, pick: &Pick, depth: usize) -> R<Value> {
        if pick.keys.is_empty() || self.peek()? >> 5 != 5 {
            return self.json_at(depth);
        }
        if depth > MAX_DEPTH {
            return Err(CborError("nesting too deep"));
        }
        let (_, n) = self.head()?;
        let n = self.len(n)?;
        let mut m = Map::new();
        let mut prev: Option<&[u8]> = None;
        for _ in 0..n {
            let k = self.expect(3, "expected a text string")?;
            let k = self.take(self.len(k)?)?;
            if let Some(p) = prev {
                if key_order_bytes(p, k) != std::cmp::Ordering::Less {
                    return Err(CborError("map keys out of order or repeated"));
                }
            }
            prev = Some(k);
            match pick.keys.iter().find(|(name, _)| name.as_bytes() == k) {
                Some((name, sub)) => {
                    let v = self.picked_at(sub, depth + 1)?;
                    m.insert(name.clone(), v);
                }
                None => self.skip()?,
            }
        }
        Ok(Value::Object(m))
    }

    /// Steps over one item (and everything inside it), checking its framing only.
    pub fn skip(&mut self) -> R<()> {
        // Items still to step over: no recursion, so no depth limit is needed.
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let (major, n) = self.head()?;
            match major {
                2 | 3 => {
                    self.take(self.len(n)?)?;
                }
                4 => pending += self.len(n)? as u64,
                5 => pending += 2 * self.len(n)? as u64,
                6 => pending += 1,
                _ => {}
            }
        }
        Ok(())
    }

    fn json_at(&mut self, depth: usize) -> R<Value> {
        if depth > MAX_DEPTH {
            return Err(CborError("nesting too deep"));
        }
        let start = self.pos;
        let (major, n) = self.head()?;
        Ok(match major {
            0 => Value::Number(Number::from(n)),
            1 => {
                if n > i64::MAX as u64 {
                    return Err(CborError("negative integer out of range"));
                }
                Value::Number(Number::from(-1 - n as i64))
            }
            2 => return Err(CborError("byte strings are not valid in a document")),
            3 => {
                let n = self.len(n)?;
                let s = std::str::from_utf8(self.take(n)?)
                    .map_err(|_| CborError("text string is not UTF-8"))?;
                Value::String(s.to_owned())
            }
            4 => {
                let n = self.len(n)?;
                let mut a = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    a.push(self.json_at(depth + 1)?);
                }
                Value::Array(a)
            }
            5 => {
                let n = self.len(n)?;
                let mut m = Map::new();
                let mut prev: Option<&str> = None;
                for _ in 0..n {
                    let k = self.str()?;
                    if let Some(p) = prev {
                        if key_order(p, k) != std::cmp::Ordering::Less {
                            return Err(CborError("map keys out of order or repeated"));
                        }
                    }
                    prev = Some(k);
                    let v = self.json_at(depth + 1)?;
                    m.insert(k.to_owned(), v);
                }
                Value::Object(m)
            }
            6 => return Err(CborError("links are not valid in a document")),
            _ => match self.buf[start] {
                0xf4 => Value::Bool(false),
                0xf5 => Value::Bool(true),
                0xf6 => Value::Null,
                0xfb => {
                    let x = f64::from_bits(n);
                    Value::Number(Number::from_f64(x).ok_or(CborError("NaN or infinite float"))?)
                }
                _ => return Err(CborError("unsupported simple value or float width")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut d = Decoder::new(&b);
            let _ = d.json();
            let mut d = Decoder::new(&b);
            let _ = d.link();
            let _ = crate::model::clock::Event::decode(&b);
            let _ = Decoder::new(&b).skip();
            let mut pick = Pick::default();
            pick.add(&["a".into(), "b".into()]);
            let _ = Decoder::new(&b).json_picked(&pick);
        }

        #[test]
        fn a_picked_read_keeps_the_paths_whole_and_skips_the_rest(
            v in json_value(3),
            paths in prop::collection::vec(prop::collection::vec(".{0,2}", 1..4), 0..4),
        ) {
            let mut e = Encoder::new();
            e.json(&v);
            let b = e.into_bytes();
            let mut pick = Pick::default();
            for p in &paths {
                pick.add(p);
            }
            let mut d = Decoder::new(&b);
            let got = d.json_picked(&pick).unwrap();
            d.finish().unwrap();
            // What each path reaches is the same in both (see `reach`), and a skip steps over
            // exactly one item.
            for p in &paths {
                prop_assert_eq!(reach(&got, p), reach(&v, p));
            }
            let mut d = Decoder::new(&b);
            d.skip().unwrap();
            d.finish().unwrap();
        }

        #[test]
        fn json_documents_round_trip(v in json_value(3)) {
            prop_assert_eq!(round(&v), v);
        }
    }

    fn json_value(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|i| json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(depth, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The value at `path` (map keys; a number also an array's index), as index fields read.
    fn reach<'v>(v: &'v Value, path: &[String]) -> Option<&'v Value> {
        let mut v = v;
        for s in path {
            v = match v {
                Value::Object(m) => m.get(s)?,
                Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    #[test]
    fn picks_merge_and_a_whole_entry_stays_whole() {
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        let mut pick = Pick::default();
        pick.add(&p("a.b"));
        pick.add(&p("a.c.d"));
        pick.add(&p("e"));
        pick.add(&p("e.f"));
        let v =
            json!({"a": {"b": 1, "c": {"d": 2, "x": 3}, "z": 4}, "e": {"f": 5, "g": 6}, "h": 7});
        let mut e = Encoder::new();
        e.json(&v);
        let b = e.into_bytes();
        let got = Decoder::new(&b).json_picked(&pick).unwrap();
        assert_eq!(
            got,
            json!({"a": {"b": 1, "c": {"d": 2}}, "e": {"f": 5, "g": 6}})
        );
        // A path that meets an array keeps it whole (an element may be picked by number).
        pick.add(&p("h"));
        let v = json!({"h": [1, {"k": 2}], "l": [3]});
        let mut e = Encoder::new();
        e.json(&v);
        let got = Decoder::new(&e.into_bytes()).json_picked(&pick).unwrap();
        assert_eq!(got, json!({"h": [1, {"k": 2}]}));
    }

    fn round(v: &Value) -> Value {
        let mut e = Encoder::new();
        e.json(v);
        let b = e.into_bytes();
        let mut d = Decoder::new(&b);
        let out = d.json().unwrap();
        d.finish().unwrap();
        out
    }

    #[test]
    fn json_round_trips() {
        for v in [
            json!({"a": 1, "bb": -2, "c": 1.5, "d": [true, false, null], "e": {"x": "y"}}),
            json!({"big": u64::MAX, "neg": i64::MIN, "f": 1.0, "s": "héllo"}),
            json!({}),
        ] {
            assert_eq!(round(&v), v);
        }
    }

    #[test]
    fn map_keys_are_length_first() {
        let mut e = Encoder::new();
        e.json(&json!({"bb": 1, "a": 2, "c": 3}));
        // a, c (length 1) before bb.
        assert_eq!(
            e.buf,
            vec![0xa3, 0x61, b'a', 2, 0x61, b'c', 3, 0x62, b'b', b'b', 1]
        );
    }

    #[test]
    fn rejects_non_canonical_and_hostile_input() {
        for bad in [
            &[0x18, 0x05][..],                                           // non-minimal int
            &[0x9f, 0xff][..],                                           // indefinite array
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], // huge length
            &[0xa2, 0x61, b'b', 1, 0x61, b'a', 2][..],                   // keys out of order
            &[0xf9, 0, 0][..],                                           // half float
            &[0x62, 0xff, 0xfe][..],                                     // bad utf-8
        ] {
            assert!(Decoder::new(bad).json().is_err(), "{bad:?}");
        }
        let deep = vec![0x81u8; 10_000];
        assert!(Decoder::new(&deep).json().is_err());
    }

    #[test]
    fn links_round_trip() {
        let c = Cid::of_cbor(b"x");
        let mut e = Encoder::new();
        e.array(2);
        e.link(&c);
        e.opt_link(None);
        let b = e.into_bytes();
        let mut d = Decoder::new(&b);
        assert_eq!(d.array().unwrap(), 2);
        assert_eq!(d.link().unwrap(), c);
        assert_eq!(d.opt_link().unwrap(), None);
        d.finish().unwrap();
    }
}
