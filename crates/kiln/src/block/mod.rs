//! Blocks: content identifiers and the dag-cbor codec.

pub mod cbor;
pub mod cid;

/// A fast hasher for maps keyed by digests (CIDs, file names), whose bits are already uniform;
/// the standard SipHash showed in profiles. Not for keys an attacker chooses freely.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64)
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64)
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(x as u64)
    }
}

/// A `HashMap` keyed by digests.
pub type DigestMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<DigestHasher>>;
/// A `HashSet` of digests.
pub type DigestSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<DigestHasher>>;
