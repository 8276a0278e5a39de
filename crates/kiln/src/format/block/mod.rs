//! Blocks: content identifiers and the dag-cbor codec.

pub mod cbor;
pub mod cid;

use std::sync::OnceLock;

/// A fast keyed hasher for maps keyed by digests (CIDs, file names), whose `Hash` writes 8
/// digest bytes as one integer: each integer is mixed in with a folded 64×64→128-bit multiply
/// (as foldhash and ahash do) under a key drawn at random once per process, and the result is
/// folded once more. The standard SipHash showed in profiles.
///
/// Keyed because the digests will come from other machines (sync): unkeyed, whoever grinds
/// CIDs could pick digests that all land in one bucket (with the old multiplicative mixer, 16
/// equal low bits sufficed, one sha2-256 in 65,536). Keyed, the placement of a digest is
/// unknown outside the process, and only digests whose 8 hashed bytes are equal (a 64-bit
/// collision: ~2^32 hashes for a pair, far more for many) collide in every process.
#[derive(Clone, Copy)]
pub struct DigestHasher {
    acc: u64,
    mul: u64,
    fin: u64,
}

/// The process's key: three random words (from the standard library's randomly keyed
/// SipHash, itself seeded from the system's random source).
fn seeds() -> &'static [u64; 3] {
    static SEEDS: OnceLock<[u64; 3]> = OnceLock::new();
    SEEDS.get_or_init(|| {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        // The multipliers are odd and have both halves set, so no product degenerates.
        [
            s.hash_one(1u64),
            s.hash_one(2u64) | 1 | (1 << 63),
            s.hash_one(3u64) | 1 | (1 << 63),
        ]
    })
}

/// `a × b` as 128 bits, its halves XORed.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

impl DigestHasher {
    fn with_seeds(s: &[u64; 3]) -> DigestHasher {
        DigestHasher {
            acc: s[0],
            mul: s[1],
            fin: s[2],
        }
    }
}

impl Default for DigestHasher {
    #[inline]
    fn default() -> DigestHasher {
        DigestHasher::with_seeds(seeds())
    }
}

impl std::hash::Hasher for DigestHasher {
    #[inline]
    fn finish(&self) -> u64 {
        fold(self.acc, self.fin)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(w) ^ ((bytes.len() as u64) << 56));
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.acc = fold(self.acc ^ x, self.mul);
    }
    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64)
    }
    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64)
    }
    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.write_u64(x as u64)
    }
}

/// A `HashMap` keyed by digests.
pub type DigestMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<DigestHasher>>;
/// A `HashSet` of digests.
pub type DigestSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<DigestHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{Hash, Hasher};

    /// The CID whose hashed digest bytes are `x`.
    fn cid_hashing_as(x: u64) -> cid::Cid {
        let mut b = [0u8; cid::CID_LEN];
        b[..4].copy_from_slice(&[0x01, 0x71, 0x12, 0x20]);
        b[4..12].copy_from_slice(&x.to_le_bytes());
        cid::Cid::from_bytes(&b).unwrap()
    }

    fn hash_with(s: &[u64; 3], c: &cid::Cid) -> u64 {
        let mut h = DigestHasher::with_seeds(s);
        c.hash(&mut h);
        h.finish()
    }

    /// CIDs ground so that their hashed bytes share their low 16 bits all fell in one bucket
    /// of any table of up to 65,536 buckets (the old hasher multiplied by a constant, which
    /// keeps low bits low). Keyed and folded, they spread over the buckets, and where they
    /// land differs from one key to the next.
    #[test]
    fn ground_cids_do_not_share_a_bucket() {
        let cids: Vec<_> = (1..=2000u64).map(|i| cid_hashing_as(i << 16)).collect();
        let buckets = |s: &[u64; 3]| {
            let set: std::collections::HashSet<u64> =
                cids.iter().map(|c| hash_with(s, c) & 1023).collect();
            set.len()
        };
        let s = *seeds();
        assert!(buckets(&s) > 800, "{} of 1024 buckets", buckets(&s));
        // hashbrown's control bytes: the top 7 bits spread too.
        let top: std::collections::HashSet<u64> =
            cids.iter().map(|c| hash_with(&s, c) >> 57).collect();
        assert!(top.len() > 100, "{}", top.len());
        let other = [s[0] ^ 0x9e37_79b9_7f4a_7c15, s[1], s[2]];
        let moved = cids
            .iter()
            .filter(|c| hash_with(&s, c) != hash_with(&other, c))
            .count();
        assert_eq!(moved, cids.len());
        // And the maps still work.
        let m: DigestSet<cid::Cid> = cids.iter().copied().collect();
        assert!(cids.iter().all(|c| m.contains(c)) && m.len() == cids.len());
    }
}
