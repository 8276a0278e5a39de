//! Sealing: AES-256-GCM with a unique 96-bit nonce per sealed unit.
//!
//! Nonces: each in-memory key draws a random 96-bit base once and seals unit `i` under
//! `base ⊕ i` (in the low 64 bits). Within one key instance they never repeat; two instances
//! (processes) of one key collide only if their random bases fall within `n` of each other, as
//! unlikely as a collision of fresh random nonces, and it saves a system call per sealed unit.
//!
//! Sealed form: `nonce (12) ‖ ciphertext ‖ tag (16)`. The associated data names what the unit is
//! (a segment, an index, a head record), so a unit cannot be passed off as another kind.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes a sealed unit adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bytes of a sealed unit before its ciphertext (the nonce) and after it (the tag).
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// A database lineage's secret key. Never written anywhere but the keybag.
#[derive(Clone)]
pub struct Key {
    raw: [u8; 32],
    cipher: Arc<LessSafeKey>,
    nonces: Arc<Nonces>,
}

/// The nonce source of one key instance: a random base and a counter.
#[derive(Debug)]
struct Nonces {
    base: [u8; 12],
    next: AtomicU64,
}

impl Nonces {
    fn new() -> Nonces {
        let mut base = [0u8; 12];
        // A failing system random source leaves an all-zero base; the counter still keeps
        // this instance's nonces unique, and key generation itself would have failed first.
        let _ = getrandom::getrandom(&mut base);
        Nonces {
            base,
            next: AtomicU64::new(0),
        }
    }

    fn take(&self) -> [u8; 12] {
        let i = self.next.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        let mut n = self.base;
        for (b, x) in n[4..].iter_mut().zip(i) {
            *b ^= x;
        }
        n
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// The sealed unit failed authentication: wrong key, or the bytes were changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealError;

impl Key {
    /// A new random key.
    pub fn generate() -> std::io::Result<Key> {
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).map_err(std::io::Error::other)?;
        Ok(Key::from_raw(raw))
    }

    // ring refuses a key only for its length, which the type fixes at 32 bytes.
    #[allow(clippy::expect_used)]
    pub fn from_raw(raw: [u8; 32]) -> Key {
        let cipher = Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte AES-256 key"),
        ));
        Key {
            raw,
            cipher,
            nonces: Arc::new(Nonces::new()),
        }
    }

    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    /// Seals `plain`, appending the sealed unit to `out`.
    pub fn seal_into(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.seal_parts_into(aad, &[plain], out)
    }

    /// Seals the concatenation of `parts` (without building it first), appending the sealed
    /// unit to `out`.
    pub fn seal_parts_into(
        &self,
        aad: &[u8],
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let nonce = self.nonces.take();
        out.reserve(parts.iter().map(|p| p.len()).sum::<usize>() + OVERHEAD);
        out.extend_from_slice(&nonce);
        let start = out.len();
        for p in parts {
            out.extend_from_slice(p);
        }
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| std::io::Error::other("encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals in place: `unit` is the sealed unit's room, its plaintext between
    /// [`NONCE_LEN`] bytes at the front and [`TAG_LEN`] at the back (their contents do not
    /// matter); nonce and tag are written there and the plaintext is encrypted where it is.
    pub fn seal_in_place(&self, aad: &[u8], unit: &mut [u8]) -> std::io::Result<()> {
        if unit.len() < OVERHEAD {
            return Err(std::io::Error::other("no room to seal in place"));
        }
        let nonce = self.nonces.take();
        let (head, rest) = unit.split_at_mut(NONCE_LEN);
        head.copy_from_slice(&nonce);
        let body = rest.len() - TAG_LEN;
        let (plain, tag_room) = rest.split_at_mut(body);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), plain)
            .map_err(|_| std::io::Error::other("encryption failed"))?;
        tag_room.copy_from_slice(tag.as_ref());
        Ok(())
    }

    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        self.seal_into(aad, plain, &mut out)?;
        Ok(out)
    }

    /// Opens a sealed unit.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < OVERHEAD {
            return Err(SealError);
        }
        let (nonce, ct) = sealed.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError)?;
        let mut buf = ct.to_vec();
        let n = self
            .cipher
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| SealError)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = Key::generate().unwrap();
        let s = k.seal(b"a", b"hello").unwrap();
        assert_eq!(s.len(), 5 + OVERHEAD);
        assert_eq!(k.open(b"a", &s).unwrap(), b"hello");
        assert_eq!(k.open(b"b", &s), Err(SealError));
        let mut t = s.clone();
        t[14] ^= 1;
        assert_eq!(k.open(b"a", &t), Err(SealError));
        assert_eq!(k.open(b"a", &s[..10]), Err(SealError));
        // Every seal of one key instance uses a fresh nonce.
        let n: std::collections::HashSet<Vec<u8>> = (0..1000)
            .map(|_| k.seal(b"a", b"x").unwrap()[..12].to_vec())
            .collect();
        assert_eq!(n.len(), 1000);
        let other = Key::generate().unwrap();
        assert_eq!(other.open(b"a", &s), Err(SealError));
    }
}
