//! The IPLD pieces a Fireproof store is made of, read only: CIDs (binary and their `b…` base32
//! strings), the base encodings keys and metas use (base58btc, base64), dag-cbor values, and
//! the mapping of a dag-cbor value onto JSON (dag-json's conventions for bytes and links).

use crate::format::block::cid::{base32_decode, base32_encode};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use std::fmt;

/// Multicodec code of dag-cbor blocks.
#[cfg(test)]
const DAG_CBOR: u64 = 0x71;
/// Fireproof's private codec for an (encrypted or not) CAR file's name.
pub const FP_CAR: u64 = 0x18;
const SHA2_256: u64 = 0x12;

/// A CIDv1 with a sha2-256 multihash (the only kind Fireproof writes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FpCid {
    bytes: Vec<u8>,
    codec: u64,
    digest: [u8; 32],
}

impl FpCid {
    /// The CID of `data` under `codec`.
    pub fn of(codec: u64, data: &[u8]) -> FpCid {
        let digest: [u8; 32] = Sha256::digest(data).into();
        let mut bytes = Vec::with_capacity(36);
        for v in [1, codec, SHA2_256, 32] {
            put_varint(&mut bytes, v);
        }
        bytes.extend_from_slice(&digest);
        FpCid {
            bytes,
            codec,
            digest,
        }
    }

    /// Reads a binary CID at the start of `b`; returns it and the bytes it took.
    pub fn read(b: &[u8]) -> Result<(FpCid, usize), &'static str> {
        let mut at = 0;
        let version = varint(b, &mut at)?;
        if version != 1 {
            return Err("not a version-1 CID");
        }
        let codec = varint(b, &mut at)?;
        let code = varint(b, &mut at)?;
        let len = varint(b, &mut at)?;
        if code != SHA2_256 || len != 32 {
            return Err("a CID whose hash is not sha2-256");
        }
        let digest: [u8; 32] = b
            .get(at..at + 32)
            .and_then(|d| d.try_into().ok())
            .ok_or("truncated CID")?;
        at += 32;
        Ok((
            FpCid {
                bytes: b[..at].to_vec(),
                codec,
                digest,
            },
            at,
        ))
    }

    /// Parses the `b…` (base32, lower case) string form.
    pub fn parse(s: &str) -> Result<FpCid, &'static str> {
        let rest = s.strip_prefix('b').ok_or("not a base32 CID string")?;
        let bytes = base32_decode(rest).ok_or("not a base32 CID string")?;
        let (c, n) = FpCid::read(&bytes)?;
        if n != bytes.len() {
            return Err("trailing bytes after a CID");
        }
        Ok(c)
    }

    pub fn codec(&self) -> u64 {
        self.codec
    }

    /// Whether `data` hashes to this CID.
    pub fn matches(&self, data: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(data).into();
        d == self.digest
    }
}

impl fmt::Display for FpCid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", base32_encode(&self.bytes))
    }
}

impl fmt::Debug for FpCid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An unsigned LEB128 varint (at most 9 bytes, as multiformats allow).
pub fn varint(b: &[u8], at: &mut usize) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long")
}

const B58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Decodes base58btc (Bitcoin's alphabet), as keybags spell keys (after their `z`).
pub fn base58_decode(s: &str) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new(); // little-endian base-256 digits
    for c in s.bytes() {
        let mut carry = B58.iter().position(|&x| x == c)? as u32;
        for d in out.iter_mut() {
            carry += u32::from(*d) * 58;
            *d = carry as u8;
            carry >>= 8;
        }
        while carry > 0 {
            out.push(carry as u8);
            carry >>= 8;
        }
    }
    let zeros = s.bytes().take_while(|&c| c == b'1').count();
    out.extend(std::iter::repeat_n(0, zeros));
    out.reverse();
    Some(out)
}

/// Encodes base58btc.
pub fn base58_encode(b: &[u8]) -> String {
    let mut digits: Vec<u8> = Vec::new(); // little-endian base-58 digits
    for &x in b {
        let mut carry = u32::from(x);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = b.iter().take_while(|&&x| x == 0).count();
    let mut s = String::with_capacity(zeros + digits.len());
    s.extend(std::iter::repeat_n('1', zeros));
    s.extend(digits.iter().rev().map(|&d| B58[d as usize] as char));
    s
}

/// Decodes base64 (standard alphabet; padding optional).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Encodes base64 without padding (dag-json's bytes).
pub fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len() * 4 / 3 + 3);
    for ch in b.chunks(3) {
        let n = (u32::from(ch[0]) << 16)
            | (u32::from(*ch.get(1).unwrap_or(&0)) << 8)
            | u32::from(*ch.get(2).unwrap_or(&0));
        for i in 0..=ch.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A dag-cbor value.
#[derive(Clone, Debug, PartialEq)]
pub enum Ipld {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Ipld>),
    /// Entries in their encoded order.
    Map(Vec<(String, Ipld)>),
    Link(FpCid),
}

impl Ipld {
    /// The value under `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Ipld> {
        match self {
            Ipld::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Ipld::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_link(&self) -> Option<&FpCid> {
        match self {
            Ipld::Link(c) => Some(c),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Ipld]> {
        match self {
            Ipld::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Ipld::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// A list of links.
    pub fn links(&self) -> Option<Vec<FpCid>> {
        self.as_list()?
            .iter()
            .map(|l| l.as_link().cloned())
            .collect()
    }

    /// As JSON: maps, lists, strings, booleans, null and numbers as themselves; bytes as
    /// `{"/": {"bytes": "<base64>"}}` and links as `{"/": "<cid>"}` (dag-json's forms).
    /// `None` for a value JSON cannot hold (a float that is not finite, an integer beyond
    /// 64 bits).
    pub fn to_json(&self) -> Option<Value> {
        Some(match self {
            Ipld::Null => Value::Null,
            Ipld::Bool(b) => Value::Bool(*b),
            Ipld::Int(i) => {
                if let Ok(u) = u64::try_from(*i) {
                    Value::Number(u.into())
                } else {
                    Value::Number(i64::try_from(*i).ok()?.into())
                }
            }
            Ipld::Float(f) => Value::Number(Number::from_f64(*f)?),
            Ipld::Str(s) => Value::String(s.clone()),
            Ipld::Bytes(b) => {
                let mut inner = Map::new();
                inner.insert("bytes".into(), Value::String(base64_encode(b)));
                let mut m = Map::new();
                m.insert("/".into(), Value::Object(inner));
                Value::Object(m)
            }
            Ipld::List(l) => Value::Array(l.iter().map(Ipld::to_json).collect::<Option<_>>()?),
            Ipld::Map(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(k.clone(), v.to_json()?);
                }
                Value::Object(out)
            }
            Ipld::Link(c) => {
                let mut m = Map::new();
                m.insert("/".into(), Value::String(c.to_string()));
                Value::Object(m)
            }
        })
    }
}

/// Nesting beyond this is refused (a hostile block must not exhaust the stack).
const MAX_DEPTH: usize = 256;

/// Decodes one dag-cbor value that must fill `b` exactly.
pub fn decode(b: &[u8]) -> Result<Ipld, &'static str> {
    let mut d = Dec { b, at: 0 };
    let v = d.value(0)?;
    if d.at != b.len() {
        return Err("trailing bytes after a CBOR value");
    }
    Ok(v)
}

struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let s = self.b.get(self.at..end).ok_or("truncated CBOR")?;
        self.at = end;
        Ok(s)
    }

    fn head(&mut self) -> Result<(u8, u8, u64), &'static str> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 31);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().map_err(|_| "cbor")?,
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().map_err(|_| "cbor")?,
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| "cbor")?),
            _ => return Err("indefinite or reserved CBOR length"),
        };
        Ok((major, info, arg))
    }

    fn len(&self, n: u64) -> Result<usize, &'static str> {
        // Every element takes at least a byte: a count beyond what is left is a lie.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.b.len() - self.at)
            .ok_or("CBOR length beyond the block")
    }

    fn value(&mut self, depth: usize) -> Result<Ipld, &'static str> {
        if depth > MAX_DEPTH {
            return Err("CBOR nested too deeply");
        }
        let (major, info, arg) = self.head()?;
        Ok(match major {
            0 => Ipld::Int(i128::from(arg)),
            1 => Ipld::Int(-1 - i128::from(arg)),
            2 => {
                let n = self.len(arg)?;
                Ipld::Bytes(self.take(n)?.to_vec())
            }
            3 => {
                let n = self.len(arg)?;
                Ipld::Str(
                    std::str::from_utf8(self.take(n)?)
                        .map_err(|_| "CBOR text is not UTF-8")?
                        .to_owned(),
                )
            }
            4 => {
                let n = self.len(arg)?;
                let mut l = Vec::with_capacity(n);
                for _ in 0..n {
                    l.push(self.value(depth + 1)?);
                }
                Ipld::List(l)
            }
            5 => {
                let n = self.len(arg)?;
                let mut m = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = match self.value(depth + 1)? {
                        Ipld::Str(s) => s,
                        _ => return Err("a CBOR map key that is not a string"),
                    };
                    m.push((k, self.value(depth + 1)?));
                }
                Ipld::Map(m)
            }
            6 => {
                if arg != 42 {
                    return Err("a CBOR tag other than 42 (a link)");
                }
                match self.value(depth + 1)? {
                    Ipld::Bytes(b) if b.first() == Some(&0) => {
                        let (c, n) = FpCid::read(&b[1..])?;
                        if n + 1 != b.len() {
                            return Err("trailing bytes in a link");
                        }
                        Ipld::Link(c)
                    }
                    _ => return Err("a link that is not bytes with a 0 prefix"),
                }
            }
            _ => match (info, arg) {
                (20, _) => Ipld::Bool(false),
                (21, _) => Ipld::Bool(true),
                (22, _) | (23, _) => Ipld::Null,
                (25, h) => Ipld::Float(half_to_f64(h as u16)),
                (26, f) => Ipld::Float(f64::from(f32::from_bits(f as u32))),
                (27, f) => Ipld::Float(f64::from_bits(f)),
                _ => return Err("an unknown CBOR simple value"),
            },
        })
    }
}

fn half_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_strings_round_trip_and_bases_decode() {
        let c = FpCid::of(DAG_CBOR, b"hello");
        let s = c.to_string();
        assert!(s.starts_with("bafyrei"), "{s}");
        assert_eq!(FpCid::parse(&s).unwrap(), c);
        let car = FpCid::of(FP_CAR, b"x");
        assert!(car.to_string().starts_with("baembei"));
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_encode(b"hello"), "aGVsbG8");
        let raw = [0u8, 0, 1, 2, 255];
        assert_eq!(base58_decode(&base58_encode(&raw)).unwrap(), raw);
        // Fireproof's keybag test vector: key → its fingerprint.
        let key = base58_decode("L89nmBmogeRptW9b7e9j7L").unwrap();
        assert_eq!(key.len(), 16);
        let fp = base58_encode(&Sha256::digest(&key));
        assert_eq!(fp, "7oNYUrGpALe6U5ePvhdD3ufHdLerw4wPWHJERE3383zJ");
    }

    #[test]
    fn dag_cbor_values_decode_and_map_to_json() {
        // {"a": [1, -2, 1.5, "x", h'01', null, true]}
        let b = [
            0xa1, 0x61, b'a', 0x87, 0x01, 0x21, 0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0x61, b'x',
            0x41, 0x01, 0xf6, 0xf5,
        ];
        let v = decode(&b).unwrap();
        assert_eq!(
            v.to_json().unwrap(),
            serde_json::json!({"a": [1, -2, 1.5, "x", {"/": {"bytes": "AQ"}}, null, true]})
        );
        assert!(decode(&b[..b.len() - 1]).is_err());
        assert!(decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
