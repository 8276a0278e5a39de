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
    #[inline]
    fn cmp(&self, other: &Cid) -> std::cmp::Ordering {
        cmp_binary(&self.bytes, &other.bytes)
    }
}

/// The order of two CIDs' binary forms, compared 8 bytes at a time (as big-endian integers):
/// lookups in sorted CID lists are most of a read's comparisons, and every kiln CID starts
/// with the same 4 bytes, which a byte-wise compare (a call to `memcmp`) walks each time.
#[inline]
pub fn cmp_binary(a: &[u8; CID_LEN], b: &[u8; CID_LEN]) -> std::cmp::Ordering {
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
    for i in [0, 8, 16, 24] {
        match word(a, i).cmp(&word(b, i)) {
            std::cmp::Ordering::Equal => {}
            o => return o,
        }
    }
    a[32..].cmp(&b[32..])
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

    /// The CID of content whose sha2-256 digest is `digest` (hashed elsewhere, as it streamed).
    pub fn from_digest(codec: Codec, digest: &[u8; 32]) -> Cid {
        let mut bytes = [0u8; CID_LEN];
        bytes[0] = 0x01;
        bytes[1] = codec.code();
        bytes[2] = 0x12;
        bytes[3] = 0x20;
        bytes[4..].copy_from_slice(digest);
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

/// Where `want` is among `n` CIDs sorted by binary form, as [`slice::binary_search`] answers:
/// `Ok(i)` when the `i`-th is `want`, else `Err(i)` where it would go. `cmp_at(i)` compares
/// the `i`-th with `want`; `key_at(i)` is the `i`-th's [`spread_key`].
///
/// CIDs are hash digests, evenly spread over their range, so the search interpolates: it probes
/// where `want` would sit if the keys between the bounds were evenly spaced (a handful of probes
/// instead of log2 n, each a likely cache miss in a large index). After a few rounds it falls
/// back to halving, so keys that are not evenly spread cost at most a few probes more than a
/// binary search, and the answer never depends on the spread.
pub fn search_sorted(
    n: usize,
    want: &Cid,
    cmp_at: impl Fn(usize) -> std::cmp::Ordering,
    key_at: impl Fn(usize) -> u64,
) -> Result<usize, usize> {
    use std::cmp::Ordering::*;
    const ROUNDS: u32 = 6;
    const SMALL: usize = 8;
    // Invariant: every CID before `lo` is below `want`, every one from `hi` on is above it.
    let (mut lo, mut hi) = (0, n);
    let k = spread_key(&want.bytes);
    if n > SMALL {
        let (mut klo, mut khi) = (key_at(lo), key_at(hi - 1));
        for _ in 0..ROUNDS {
            if hi - lo <= SMALL || k < klo || k > khi || klo == khi {
                break;
            }
            let span = (hi - 1 - lo) as u128;
            let pos = lo + ((k - klo) as u128 * span / (khi - klo) as u128) as usize;
            match cmp_at(pos) {
                Equal => return Ok(pos),
                Less => {
                    lo = pos + 1;
                    if lo < hi {
                        klo = key_at(lo);
                    }
                }
                Greater => {
                    hi = pos;
                    if lo < hi {
                        khi = key_at(hi - 1);
                    }
                }
            }
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match cmp_at(mid) {
            Equal => return Ok(mid),
            Less => lo = mid + 1,
            Greater => hi = mid,
        }
    }
    Err(lo)
}

/// The interpolation key of a CID's binary form `b` (at least 9 bytes): its codec and the
/// first 7 digest bytes as a big-endian integer, which orders as the CIDs do where it differs.
#[inline]
pub fn spread_key(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[1..9]);
    u64::from_be_bytes(w)
}

impl Cid {
    /// The first 8 digest bytes (little-endian): uniformly distributed, what maps keyed by
    /// CIDs hash, and what compact sets of CIDs keep (two CIDs may share it).
    #[inline]
    pub fn lead(&self) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&self.bytes[4..12]);
        u64::from_le_bytes(x)
    }
}

impl std::hash::Hash for Cid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The digest is already uniformly distributed: 8 of its bytes are a fine hash.
        state.write_u64(self.lead());
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

/// Text that is not a CID's text form (see [`Cid`]'s `FromStr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseCidError(String);

impl fmt::Display for ParseCidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a CID (expected its text form, \"b\" and base32, as in bafyrei…)",
            self.0
        )
    }
}

impl std::error::Error for ParseCidError {}

/// The text form, as [`fmt::Display`] writes it (`b` and lower-case base32: `bafyrei…`).
///
/// ```
/// let c: kiln::Cid = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".parse().unwrap();
/// assert_eq!(c.to_string().parse::<kiln::Cid>().unwrap(), c);
/// assert!("hello".parse::<kiln::Cid>().is_err());
/// ```
impl std::str::FromStr for Cid {
    type Err = ParseCidError;
    fn from_str(s: &str) -> Result<Cid, ParseCidError> {
        Cid::parse(s).ok_or_else(|| ParseCidError(s.chars().take(80).collect()))
    }
}

/// Serialized as its text form (so an event's CID can be kept in a document, e.g. as a cursor).
impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        crate::util::from_text(d)
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

    /// The interpolating search answers as a binary search does, for evenly spread digests
    /// and for lists that are not (shared prefixes, both codecs, runs of near-equal keys).
    fn check_search(
        cids: &mut Vec<Cid>,
        probes: &[Cid],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        cids.sort();
        cids.dedup();
        for want in cids.iter().chain(probes) {
            let got = search_sorted(
                cids.len(),
                want,
                |i| cids[i].cmp(want),
                |i| spread_key(cids[i].as_bytes()),
            );
            proptest::prop_assert_eq!(got, cids.binary_search(want));
        }
        Ok(())
    }

    fn cid_from(codec: u8, digest: [u8; 32]) -> Cid {
        let mut bytes = [0u8; CID_LEN];
        bytes[..4].copy_from_slice(&[0x01, codec, 0x12, 0x20]);
        bytes[4..].copy_from_slice(&digest);
        Cid { bytes }
    }

    proptest::proptest! {
        #[test]
        fn search_sorted_matches_binary_search_on_hashes(n in 0usize..3000, probes in 0u32..50) {
            let mut cids: Vec<Cid> = (0..n).map(|i| Cid::of_cbor(&i.to_le_bytes())).collect();
            let others: Vec<Cid> = (0..probes).map(|i| Cid::hash(Codec::Raw, &i.to_le_bytes())).collect();
            check_search(&mut cids, &others)?;
        }

        #[test]
        fn search_sorted_matches_binary_search_on_skewed_keys(
            raw in proptest::collection::vec((proptest::bool::ANY, 0u8..4, 0u8..=255, proptest::num::u64::ANY), 0..400),
        ) {
            // Few distinct leading bytes, long shared prefixes, both codecs: far from even.
            let mk = |(is_raw, top, mid, low): (bool, u8, u8, u64)| {
                let mut d = [0u8; 32];
                d[0] = top;
                d[6] = mid;
                d[24..].copy_from_slice(&low.to_be_bytes());
                cid_from(if is_raw { 0x55 } else { 0x71 }, d)
            };
            let mut cids: Vec<Cid> = raw.iter().copied().map(mk).collect();
            let probes: Vec<Cid> = raw.iter().map(|&(r, t, m, l)| mk((!r, t, m.wrapping_add(1), l ^ 1))).collect();
            check_search(&mut cids, &probes)?;
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
