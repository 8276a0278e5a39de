//! Content identifiers: CIDv1, sha2-256 multihash, dag-cbor or raw codec.
//!
//! Binary form (36 bytes): `0x01` (CID version 1), codec (`0x71` dag-cbor or `0x55` raw),
//! `0x12` (sha2-256), `0x20` (digest length), then the 32-byte digest. Text form: multibase
//! base32 lower-case, prefix `b` (the usual `bafyrei…` strings).

use sha2::{Digest, Sha256};
use std::fmt;

/// Multicodec of a block's payload.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Codec {
    /// dag-cbor (`0x71`): every structured block kiln writes.
    DagCbor,
    /// raw (`0x55`): opaque bytes (reserved for attachment chunks).
    Raw,
}

impl Codec {
    fn code(self) -> u8 {
        match self {
            Codec::DagCbor => 0x71,
            Codec::Raw => 0x55,
        }
    }
    fn from_code(c: u8) -> Option<Codec> {
        match c {
            0x71 => Some(Codec::DagCbor),
            0x55 => Some(Codec::Raw),
            _ => None,
        }
    }
}

/// Length of a CID in binary form.
pub const CID_LEN: usize = 36;

/// A content identifier. Ordering is by binary form, which is also the order used in every
/// sorted list kiln stores.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cid {
    bytes: [u8; CID_LEN],
}

impl Ord for Cid {
    /// The order of the binary forms, compared 8 bytes at a time (as big-endian integers):
    /// lookups in sorted CID lists are most of a read's comparisons, and every kiln CID starts
    /// with the same 4 bytes, which a byte-wise compare walks each time.
    #[inline]
    fn cmp(&self, other: &Cid) -> std::cmp::Ordering {
        let word = |b: &[u8; CID_LEN], i: usize| {
            u64::from_be_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let (a, b) = (&self.bytes, &other.bytes);
        for i in [0, 8, 16, 24] {
            match word(a, i).cmp(&word(b, i)) {
                std::cmp::Ordering::Equal => {}
                o => return o,
            }
        }
        a[32..].cmp(&b[32..])
    }
}

impl PartialOrd for Cid {
    #[inline]
    fn partial_cmp(&self, other: &Cid) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Cid {
    /// The CID of `data` under `codec`.
    pub fn hash(codec: Codec, data: &[u8]) -> Cid {
        let digest = Sha256::digest(data);
        let mut bytes = [0u8; CID_LEN];
        bytes[0] = 0x01;
        bytes[1] = codec.code();
        bytes[2] = 0x12;
        bytes[3] = 0x20;
        bytes[4..].copy_from_slice(&digest);
        Cid { bytes }
    }

    /// The CID of a dag-cbor block.
    pub fn of_cbor(data: &[u8]) -> Cid {
        Cid::hash(Codec::DagCbor, data)
    }

    /// Parses the 36-byte binary form.
    pub fn from_bytes(b: &[u8]) -> Option<Cid> {
        if b.len() != CID_LEN || b[0] != 0x01 || b[2] != 0x12 || b[3] != 0x20 {
            return None;
        }
        Codec::from_code(b[1])?;
        let mut bytes = [0u8; CID_LEN];
        bytes.copy_from_slice(b);
        Some(Cid { bytes })
    }

    /// The 36-byte binary form.
    pub fn as_bytes(&self) -> &[u8; CID_LEN] {
        &self.bytes
    }

    /// The payload codec.
    pub fn codec(&self) -> Codec {
        Codec::from_code(self.bytes[1]).unwrap_or(Codec::Raw)
    }

    /// The sha2-256 digest.
    pub fn digest(&self) -> &[u8] {
        &self.bytes[4..]
    }

    /// Whether `data` is the block this CID names.
    pub fn matches(&self, data: &[u8]) -> bool {
        Sha256::digest(data).as_slice() == self.digest()
    }

    /// Parses the text form (`b` + base32 lower-case).
    pub fn parse(s: &str) -> Option<Cid> {
        let rest = s.strip_prefix('b')?;
        let bytes = base32_decode(rest)?;
        Cid::from_bytes(&bytes)
    }
}

impl std::hash::Hash for Cid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The digest is already uniformly distributed: 8 of its bytes are a fine hash.
        let mut x = [0u8; 8];
        x.copy_from_slice(&self.bytes[4..12]);
        state.write_u64(u64::from_le_bytes(x));
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("b")?;
        f.write_str(&base32_encode(&self.bytes))
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32, lower case, no padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let mut buf: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Inverse of [`base32_encode`]; `None` on any character outside the alphabet.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buf: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        } as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

pub use crate::util::hex::{hex, unhex};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_known_prefix() {
        let c = Cid::of_cbor(b"\xa0");
        let s = c.to_string();
        assert!(s.starts_with("bafyrei"), "{s}");
        assert_eq!(Cid::parse(&s), Some(c));
        assert!(c.matches(b"\xa0"));
        assert!(!c.matches(b"\xa1"));
        assert_eq!(Cid::parse("bafyrei!"), None);
        assert_eq!(Cid::parse(""), None);
    }

    proptest::proptest! {
        /// CIDs order as their binary forms do (sorted lists on disk depend on it), also
        /// when they share a long prefix.
        #[test]
        fn order_is_the_binary_order(
            a in proptest::collection::vec(proptest::num::u8::ANY, CID_LEN),
            b in proptest::collection::vec(proptest::num::u8::ANY, CID_LEN),
            shared in 0usize..=CID_LEN,
        ) {
            let mut b = b;
            b[..shared].copy_from_slice(&a[..shared]);
            let (x, y) = (Cid { bytes: a.clone().try_into().unwrap() }, Cid { bytes: b.clone().try_into().unwrap() });
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            proptest::prop_assert_eq!(y.cmp(&x), b.cmp(&a));
            proptest::prop_assert_eq!(x.partial_cmp(&y), Some(a.cmp(&b)));
        }
    }

    #[test]
    fn base32_rfc4648_vectors() {
        assert_eq!(base32_encode(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32_decode("mzxw6ytboi").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
        assert_eq!(unhex("ab01"), Some(vec![0xab, 1]));
        assert_eq!(unhex("zz"), None);
    }
}
