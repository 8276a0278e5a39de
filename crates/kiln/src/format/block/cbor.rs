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
    /// The bytes of an item's head (major type and argument `n`): what [`Encoder::u64`]
    /// writes of `n`, and what precedes a string, array or map of `n`.
    pub fn head_len(n: u64) -> usize {
        match n {
            0..24 => 1,
            24..=0xff => 2,
            0x100..=0xffff => 3,
            0x1_0000..=0xffff_ffff => 5,
            _ => 9,
        }
    }
    /// The bytes [`Encoder::link`] writes.
    pub const LINK_LEN: usize = 2 + 2 + 1 + CID_LEN;
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

/// The value at `path` in `v` (map keys, and array positions as decimal numbers), if there
/// is one.
pub fn json_lookup<'v>(v: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut v = v;
    for seg in path {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
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

    /// The values at `paths` in the map this decoder reads (each path map keys and array
    /// positions, outermost first, as [`json_lookup`] follows them), each decoded whole;
    /// `None` where a path reaches nothing. One pass, the rest stepped over (checked as
    /// [`Decoder::json`] checks it, so the same bodies are refused) and no map built: what a
    /// reader of a few fields (an index build's) needs.
    pub fn json_at_paths(&mut self, paths: &[&[String]]) -> R<Vec<Option<Value>>> {
        if self.peek()? >> 5 != 5 {
            return Err(CborError("expected a map"));
        }
        let mut out = vec![None; paths.len()];
        if paths.iter().all(|p| p.len() == 1) {
            self.top_fields(paths, &mut out)?;
        } else {
            let want: Vec<(usize, &[String])> = paths.iter().copied().enumerate().collect();
            self.paths_at(&want, 0, &mut out)?;
        }
        Ok(out)
    }

    /// [`Decoder::json_at_paths`] of paths of one segment each, the map's own fields (an
    /// index on a document's top-level fields, the usual kind): each entry's key compared
    /// with the names as it comes, no lists of the paths that go on made per entry. Checks
    /// what [`Decoder::paths_at`] checks, in the same order.
    fn top_fields(&mut self, paths: &[&[String]], out: &mut [Option<Value>]) -> R<()> {
        self.map_entries(|d, k| {
            let mut named = (0..paths.len()).filter(|&i| paths[i][0] == k);
            match named.next() {
                None => d.check_at(1)?,
                Some(first) => {
                    let v = d.json_at(1)?;
                    for i in named {
                        out[i] = Some(v.clone());
                    }
                    out[first] = Some(v);
                }
            }
            Ok(())
        })
    }

    /// Reads the map here: its head, then each entry's key (in dag-cbor order, none
    /// repeated, else an error), handing `value` the decoder at the entry's value, which it
    /// must read or step over.
    fn map_entries(&mut self, mut value: impl FnMut(&mut Self, &'a str) -> R<()>) -> R<()> {
        let (_, n) = self.head()?;
        let n = self.len(n)?;
        let mut prev: Option<&str> = None;
        for _ in 0..n {
            let k = self.str()?;
            if prev.is_some_and(|p| key_order(p, k) != std::cmp::Ordering::Less) {
                return Err(CborError("map keys out of order or repeated"));
            }
            prev = Some(k);
            value(self, k)?;
        }
        Ok(())
    }

    /// [`Decoder::json_at_paths`] of the item here, `want` the paths (by their place in `out`)
    /// that reach it, `depth` segments of each behind.
    fn paths_at(
        &mut self,
        want: &[(usize, &[String])],
        depth: usize,
        out: &mut [Option<Value>],
    ) -> R<()> {
        if want.iter().any(|(_, p)| p.len() == depth) {
            // A path ends here: the item whole, and any that go on read in it.
            let v = self.json_at(depth)?;
            let Some((last, rest)) = want.split_last() else {
                return Ok(());
            };
            for (i, p) in rest {
                out[*i] = json_lookup(&v, &p[depth..]).cloned();
            }
            out[last.0] = match last.1.len() == depth {
                true => Some(v), // (the usual case: one path, ending here, takes it)
                false => json_lookup(&v, &last.1[depth..]).cloned(),
            };
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(CborError("nesting too deep"));
        }
        let going_on = |seg: &dyn Fn(&str) -> bool| -> Vec<(usize, &[String])> {
            want.iter()
                .filter(|(_, p)| seg(&p[depth]))
                .copied()
                .collect()
        };
        match self.peek()? >> 5 {
            5 => self.map_entries(|d, k| {
                let here = going_on(&|s| s == k);
                if here.is_empty() {
                    d.check_at(depth + 1)
                } else {
                    d.paths_at(&here, depth + 1, out)
                }
            })?,
            4 => {
                let (_, n) = self.head()?;
                for e in 0..self.len(n)? {
                    let here = going_on(&|s| s.parse::<usize>().ok() == Some(e));
                    if here.is_empty() {
                        self.check_at(depth + 1)?;
                    } else {
                        self.paths_at(&here, depth + 1, out)?;
                    }
                }
            }
            // Not a container: the paths that go on reach nothing.
            _ => self.check_at(depth)?,
        }
        Ok(())
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

    /// Steps over a JSON-compatible item with every check [`Decoder::json_at`] makes, building
    /// nothing: what a reader of some fields does with the others, so that it refuses exactly
    /// the bodies a whole read refuses. (Apart from `json_at`: one function for both, a value
    /// made or not by a flag, slowed the reads of whole documents by ~6%.)
    fn check_at(&mut self, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(CborError("nesting too deep"));
        }
        let start = self.pos;
        let (major, n) = self.head()?;
        match major {
            0 => {}
            1 if n > i64::MAX as u64 => return Err(CborError("negative integer out of range")),
            1 => {}
            2 => return Err(CborError("byte strings are not valid in a document")),
            3 => {
                let n = self.len(n)?;
                std::str::from_utf8(self.take(n)?)
                    .map_err(|_| CborError("text string is not UTF-8"))?;
            }
            4 => {
                for _ in 0..self.len(n)? {
                    self.check_at(depth + 1)?;
                }
            }
            5 => {
                let mut prev: Option<&str> = None;
                for _ in 0..self.len(n)? {
                    let k = self.str()?;
                    if prev.is_some_and(|p| key_order(p, k) != std::cmp::Ordering::Less) {
                        return Err(CborError("map keys out of order or repeated"));
                    }
                    prev = Some(k);
                    self.check_at(depth + 1)?;
                }
            }
            6 => return Err(CborError("links are not valid in a document")),
            _ => match self.buf[start] {
                0xf4..=0xf6 => {}
                0xfb if f64::from_bits(n).is_finite() => {}
                0xfb => return Err(CborError("NaN or infinite float")),
                _ => return Err(CborError("unsupported simple value or float width")),
            },
        }
        Ok(())
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
            let paths = [&["a".to_owned(), "b".to_owned()][..], &["1".to_owned()]];
            let _ = Decoder::new(&b).json_at_paths(&paths);
        }

        #[test]
        fn the_values_at_paths_are_those_of_the_whole_value(
            v in json_value_with(3, "[ab01]{1,2}"),
            paths in prop::collection::vec(prop::collection::vec("[ab01+]{1,2}", 1..4), 0..5),
        ) {
            let mut e = Encoder::new();
            e.json(&v);
            let b = e.into_bytes();
            let paths: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
            let mut d = Decoder::new(&b);
            match d.json_at_paths(&paths) {
                Ok(got) => {
                    d.finish().unwrap();
                    let want: Vec<Option<Value>> =
                        paths.iter().map(|p| json_lookup(&v, p).cloned()).collect();
                    prop_assert_eq!(got, want);
                }
                Err(_) => prop_assert!(!v.is_object()),
            }
        }
        #[test]
        fn reading_some_fields_refuses_what_a_whole_read_refuses(
            v in json_value_with(3, "[ab01]{1,2}"),
            paths in prop::collection::vec(prop::collection::vec("[ab01]{1,2}", 1..3), 0..3),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            // A map body, a few of its bytes changed: whatever a read of some of its fields
            // says (a value, or a refusal), a read of all of it says the same.
            let v = if v.is_object() { v } else { json!({"a": v}) };
            let mut e = Encoder::new();
            e.json(&v);
            let mut b = e.into_bytes();
            for (at, x) in &flips {
                let i = at.index(b.len());
                b[i] = *x;
            }
            let paths: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
            let mut whole = Decoder::new(&b);
            let whole = whole.json().and_then(|w| whole.finish().map(|()| w));
            let mut some = Decoder::new(&b);
            let some = some.json_at_paths(&paths).and_then(|f| some.finish().map(|()| f));
            match (whole, some) {
                (Ok(w), Ok(f)) => {
                    let want: Vec<Option<Value>> =
                        paths.iter().map(|p| json_lookup(&w, p).cloned()).collect();
                    prop_assert_eq!(f, want);
                }
                (Err(_), Err(_)) => {}
                (Ok(w), Err(e)) => prop_assert!(!w.is_object(), "refused {:?}: {}", w, e.0),
                (Err(e), Ok(f)) => prop_assert!(false, "read {:?} where a whole read says {}", f, e.0),
            }
        }

        #[test]
        fn json_documents_round_trip(v in json_value(3)) {
            prop_assert_eq!(round(&v), v);
        }
    }

    fn json_value(depth: u32) -> impl Strategy<Value = Value> {
        json_value_with(depth, ".{0,8}")
    }

    /// JSON values whose map keys match `keys` (a small alphabet: paths then meet them).
    fn json_value_with(depth: u32, keys: &'static str) -> impl Strategy<Value = Value> {
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
        leaf.prop_recursive(depth, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn paths_that_share_a_start_each_get_their_value() {
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        let v = json!({"a": {"b": 1, "c": {"d": 2, "x": 3}, "z": 4}, "e": [5, {"f": 6}], "h": 7});
        let mut e = Encoder::new();
        e.json(&v);
        let b = e.into_bytes();
        let paths = [
            p("a.b"),
            p("a.c.d"),
            p("a"),
            p("e.1.f"),
            p("e.01"),
            p("h.0"),
            p("q"),
        ];
        let paths: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
        let got = Decoder::new(&b).json_at_paths(&paths).unwrap();
        let a = json!({"b": 1, "c": {"d": 2, "x": 3}, "z": 4});
        assert_eq!(
            got,
            // ("01" is position 1, as a lookup in a whole value reads it.)
            vec![
                Some(json!(1)),
                Some(json!(2)),
                Some(a),
                Some(json!(6)),
                Some(json!({"f": 6})),
                None,
                None
            ]
        );
        let not_a_map = {
            let mut e = Encoder::new();
            e.json(&json!([1]));
            e.into_bytes()
        };
        assert!(Decoder::new(&not_a_map).json_at_paths(&paths).is_err());
        // Top-level fields only (read without lists of paths): a name asked twice gets its
        // value twice, a missing one none, and a damaged entry after them is still refused.
        let top = [p("h"), p("a"), p("h"), p("q")];
        let top: Vec<&[String]> = top.iter().map(Vec::as_slice).collect();
        let got = Decoder::new(&b).json_at_paths(&top).unwrap();
        assert_eq!(got[0], Some(json!(7)));
        assert_eq!(got[1], Some(json!({"b": 1, "c": {"d": 2, "x": 3}, "z": 4})));
        assert_eq!((&got[2], &got[3]), (&Some(json!(7)), &None));
        let mut e = Encoder::new();
        e.map(2);
        e.str("a");
        e.u64(1);
        e.str("b");
        e.buf.extend_from_slice(&[0x62, 0xff, 0xfe]); // a text string that is not UTF-8
        let bad = e.into_bytes();
        assert!(Decoder::new(&bad).json().is_err());
        assert!(Decoder::new(&bad).json_at_paths(&top[1..2]).is_err());
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
