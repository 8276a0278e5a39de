//! Which file may hold a block: the filter a head record keeps for each live file, so a lookup
//! of a tree node or an event (which carry no height to find their file by) probes the one file
//! that holds it instead of every file's index.
//!
//! A *structural* filter covers a file's tree nodes and clock events (index kinds 2 and 1), not
//! its document versions: those are found by height, and there are many more of them. It is a
//! split-block Bloom filter: 32-byte blocks of eight 32-bit words; a CID picks one block with
//! the first 32 bits of its digest and sets one bit in each word with the next 32 (multiplied
//! by a constant per word, top five bits). About 16 bits per block CID: false positives near
//! 0.1 %, never a false negative. A CID's digest is a SHA-256 output, so it needs no further
//! hashing; grinding documents to collide in a filter costs a reader one extra probe, nothing
//! else. See docs/format.md, "File reference".

use crate::format::block::cid::Cid;
use std::sync::Arc;

/// Bytes of one block of a structural filter.
pub const BLOCK: usize = 32;
/// Filter bits per CID it holds.
const BITS_PER_CID: usize = 16;
/// Odd multipliers, one per word of a block.
const MUL: [u32; 8] = [
    0x9E37_79B1,
    0x85EB_CA77,
    0xC2B2_AE3D,
    0x27D4_EB2F,
    0x1656_67B1,
    0xD3A2_646D,
    0xFD70_46C5,
    0xB55A_4F09,
];

/// Blocks in a file small enough for a head record's [`Filter::Small`] (such a file's index
/// carries no structural filter from diff file version 6 on).
pub const SMALL_FILE_BLOCKS: usize = 24;

/// What a lookup learns from a file reference before reading the file.
#[derive(Clone, Debug, Eq, Default)]
pub enum Filter {
    /// Nothing: the file may hold any block (files written before filters, or references
    /// rebuilt without one).
    #[default]
    None,
    /// What a head record's file reference carries (every version): a 64-bit Bloom filter of
    /// *every* block CID of a file of at most 24 blocks (bits `digest[20] & 63` and
    /// `digest[21] & 63`); 0 = no filter.
    Small(u64),
    /// A split-block Bloom filter of the file's tree nodes and events (empty: it holds none).
    Structural(Arc<[u8]>),
}

impl PartialEq for Filter {
    /// Heads are compared on every commit (is the new one the old plus files?): a filter
    /// shared with the other head compares by pointer, without reading its bytes.
    fn eq(&self, other: &Filter) -> bool {
        match (self, other) {
            (Filter::None, Filter::None) => true,
            (Filter::Small(a), Filter::Small(b)) => a == b,
            (Filter::Structural(a), Filter::Structural(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

/// The block and the word bits of a CID.
fn hashes(cid: &Cid) -> (u32, u32) {
    let d = cid.digest();
    (
        u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
        u32::from_le_bytes([d[4], d[5], d[6], d[7]]),
    )
}

fn block_of(h: u32, blocks: usize) -> usize {
    ((h as u64 * blocks as u64) >> 32) as usize
}

fn word_bit(x: u32, i: usize) -> u32 {
    1u32 << (x.wrapping_mul(MUL[i]) >> 27)
}

/// The two bits of a CID in a [`Filter::Small`].
pub fn small_bits(cid: &Cid) -> u64 {
    let d = cid.digest();
    (1u64 << (d[20] & 63)) | (1u64 << (d[21] & 63))
}

impl Filter {
    /// The structural filter of `cids` (the file's tree nodes and events).
    pub fn structural<'a>(cids: impl ExactSizeIterator<Item = &'a Cid>) -> Filter {
        let n = cids.len();
        let blocks = (n * BITS_PER_CID).div_ceil(BLOCK * 8);
        let mut bytes = vec![0u8; blocks * BLOCK];
        for c in cids {
            let (h, x) = hashes(c);
            let b = block_of(h, blocks) * BLOCK;
            for i in 0..8 {
                let w = &mut bytes[b + 4 * i..b + 4 * i + 4];
                let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) | word_bit(x, i);
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
        Filter::Structural(bytes.into())
    }

    /// False only when the file certainly lacks `cid` as a tree node or event (a structural
    /// filter says nothing of document versions) or, for [`Filter::Small`], as any block.
    pub fn may_hold(&self, cid: &Cid) -> bool {
        match self {
            Filter::None => true,
            Filter::Small(b) => {
                let bits = small_bits(cid);
                *b == 0 || b & bits == bits
            }
            Filter::Structural(bytes) => {
                let blocks = bytes.len() / BLOCK;
                if blocks == 0 {
                    return false;
                }
                let (h, x) = hashes(cid);
                let b = &bytes[block_of(h, blocks) * BLOCK..][..BLOCK];
                (0..8).all(|i| {
                    let w =
                        u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
                    w & word_bit(x, i) != 0
                })
            }
        }
    }

    /// Bytes the filter takes in a head record.
    pub fn byte_len(&self) -> usize {
        match self {
            Filter::Structural(b) => b.len(),
            _ => 8,
        }
    }

    /// Whether the stored bytes of a structural filter are well formed.
    pub fn check_bytes(b: &[u8]) -> bool {
        b.len().is_multiple_of(BLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cid(i: u64) -> Cid {
        Cid::of_cbor(&i.to_le_bytes())
    }

    proptest! {
        /// Never a false negative, whatever the set.
        #[test]
        fn holds_every_member(seeds in proptest::collection::vec(any::<u64>(), 0..600)) {
            let cids: Vec<Cid> = seeds.iter().map(|&s| cid(s)).collect();
            let f = Filter::structural(cids.iter());
            for c in &cids {
                prop_assert!(f.may_hold(c));
            }
        }
    }

    #[test]
    fn false_positives_are_rare() {
        let cids: Vec<Cid> = (0..10_000).map(cid).collect();
        let f = Filter::structural(cids.iter());
        assert_eq!(f.byte_len(), 10_000 * BITS_PER_CID / 8);
        let fp = (1_000_000..1_100_000)
            .filter(|&i| f.may_hold(&cid(i)))
            .count();
        // 16 bits per CID, eight probes in one block: about 0.1 %.
        assert!(fp < 400, "{fp} false positives in 100,000");
    }

    #[test]
    fn empty_holds_nothing_and_none_holds_everything() {
        let f = Filter::structural([].iter());
        assert_eq!(f, Filter::Structural(Vec::new().into()));
        assert!(!f.may_hold(&cid(1)));
        assert!(Filter::None.may_hold(&cid(1)));
        assert!(Filter::Small(0).may_hold(&cid(1)));
        let one = small_bits(&cid(1));
        assert!(Filter::Small(one).may_hold(&cid(1)));
    }
}
