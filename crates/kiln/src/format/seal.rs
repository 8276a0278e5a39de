//! Sealing: AES-256-GCM (ring) under keys that no two writers share.
//!
//! A database lineage has one secret [`Key`] (the keybag's). Since diff files version 4 and
//! head records version 4 nothing is sealed under it directly: every diff file and every head
//! record log draws a fresh random 256-bit salt from the operating system when it is written
//! and is sealed under a [`SubKey`] derived from the lineage key and that salt with
//! HKDF-SHA256 (RFC 5869):
//!
//! ```text
//! subkey = HKDF-Expand(PRK = lineage key, info = label ‖ salt[32], 32 bytes)
//! label  = "kiln/v4 diff file key" | "kiln/v4 head log key" | "kiln/v1 proposal key"
//! ```
//!
//! (The extract step is skipped as RFC 5869 §3.3 allows for input keying material that is
//! already a uniformly random key, as the lineage key is: the salt goes into `info`, so the
//! precomputed HMAC state of the lineage key serves every derivation, 0.4 µs instead of 0.95.)
//!
//! Within one subkey the writer numbers its nonces (a diff file: the unit's kind and number;
//! a head log: 96 random bits per record, as a log's records may be rewritten at one offset
//! after a torn append). No nonce state lives in memory across files, so a forked process or
//! a cloned VM repeats nothing unless the system's random source repeats itself; a random
//! source that fails is an error, never a predictable salt. The bound: two salts collide with
//! probability at most `n² / 2^257` among `n` files and logs of one lineage (n = 2^40 gives
//! 2^-177); see docs/format.md.
//!
//! Sealed form: `nonce (12) ‖ ciphertext ‖ tag (16)`. The associated data names what the unit is
//! (a segment, an index, a head record), so a unit cannot be passed off as another kind.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use std::sync::{Arc, Mutex};

/// Bytes a sealed unit adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bytes of a sealed unit before its ciphertext (the nonce) and after it (the tag).
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes of a salt (see [`fresh_salt`]).
pub const SALT_LEN: usize = 32;
pub type Salt = [u8; SALT_LEN];

/// What a subkey seals; each has its own HKDF label, so one salt can never give the same key
/// for two purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// One diff file (version 4 on).
    DiffFile,
    /// One head record log: the records from a snapshot up to the next (version 4 on).
    HeadLog,
    /// One write of a proposal record.
    Proposal,
    /// One file-set file (the files attached in one document write).
    FileSet,
    /// One write of a database's derived record (its indexes).
    Derived,
}

impl Purpose {
    /// The HKDF info label; the salt follows it.
    pub fn label(self) -> &'static [u8] {
        match self {
            Purpose::DiffFile => b"kiln/v4 diff file key",
            Purpose::HeadLog => b"kiln/v4 head log key",
            Purpose::Proposal => b"kiln/v1 proposal key",
            Purpose::FileSet => b"kiln/v1 file-set key",
            Purpose::Derived => b"kiln/v1 derived record key",
        }
    }
}

/// A database lineage's secret key. Never written anywhere but the keybag; its bytes leave
/// the crate only through [`Key::export_raw`].
#[derive(Clone)]
pub struct Key(Arc<Inner>);

struct Inner {
    raw: Secret,
    /// For formats before version 4, whose units are sealed under the lineage key itself.
    cipher: LessSafeKey,
    /// HKDF's PRK: the lineage key (its HMAC state, computed once).
    prk: hkdf::Prk,
    /// The last head log subkey derived (a writer appends to one log commit after commit; a
    /// reader re-reads the same log).
    last_log: Mutex<Option<(Salt, Arc<SubKey>)>>,
}

/// Key bytes that are overwritten with zeros when dropped.
struct Secret([u8; 32]);

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites `b` with zeros in a way the compiler does not elide (the bytes are about to be
/// freed, which would otherwise make the writes dead).
pub(crate) fn wipe(b: &mut [u8]) {
    for x in b.iter_mut() {
        // SAFETY: `x` is a valid, exclusive reference to one byte.
        unsafe { std::ptr::write_volatile(x, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// The sealed unit failed authentication: wrong key, or the bytes were changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealError;

#[cfg(test)]
thread_local! {
    static FAIL_RANDOM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes every random draw of this thread fail (or work again): how tests see what a failing
/// system random source does.
#[cfg(test)]
pub(crate) fn fail_random_on_this_thread(fail: bool) {
    FAIL_RANDOM.with(|f| f.set(fail));
}

/// Fills `buf` from the system's random source (a system call each time: no generator state
/// lives in this process, so a forked child draws its own). Fails rather than return
/// predictable bytes. The clock's nanoseconds are folded in as well, which keeps the bytes as
/// random as the source's and makes a repeat unlikely even where a cloned VM's random source
/// repeats its output (old kernels without VM generation IDs).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    os_random(buf)?;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (b, x) in buf.iter_mut().zip(t.to_le_bytes()) {
        *b ^= x;
    }
    Ok(())
}

/// The system's random source, or an error.
fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_RANDOM.with(|f| f.get()) {
        return Err(std::io::Error::other(
            "the system random source failed (test)",
        ));
    }
    getrandom::getrandom(buf).map_err(|e| {
        std::io::Error::other(format!(
            "the system random source failed ({e}); nothing sealed"
        ))
    })
}

/// A fresh random salt for a new diff file or head log.
pub fn fresh_salt() -> std::io::Result<Salt> {
    let mut s = [0u8; SALT_LEN];
    fill_random(&mut s)?;
    Ok(s)
}

/// A fresh random nonce (units sealed under a key that may seal many: head records).
pub fn random_nonce() -> std::io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    fill_random(&mut n)?;
    Ok(n)
}

/// ring's HKDF output length for an AES-256 key.
struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl Key {
    /// A new random key.
    pub fn generate() -> std::io::Result<Key> {
        let mut raw = [0u8; 32];
        os_random(&mut raw)?;
        Ok(Key::from_raw(raw))
    }

    /// A key from its bytes (importing a key exported by [`Key::export_raw`]). The bytes
    /// passed are the caller's; this key's copy is wiped when its last clone is dropped.
    // ring refuses a key only for its length, which the type fixes at 32 bytes.
    #[allow(clippy::expect_used)]
    pub fn from_raw(mut raw: [u8; 32]) -> Key {
        let cipher =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte AES-256 key"));
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &raw);
        let key = Key(Arc::new(Inner {
            raw: Secret(raw),
            cipher,
            prk,
            last_log: Mutex::new(None),
        }));
        wipe(&mut raw);
        key
    }

    /// The key's bytes, for the keybag.
    pub(crate) fn raw(&self) -> &[u8; 32] {
        &self.0.raw.0
    }

    /// The key's bytes: the one way a key leaves kiln (to back it up or to hand it to another
    /// machine that should read the lineage). Whoever holds them reads every database of the
    /// lineage; wipe the copy when done.
    pub fn export_raw(&self) -> [u8; 32] {
        self.0.raw.0
    }

    /// The subkey for `purpose` under `salt`.
    // ring's HKDF fails only for an output longer than 255 hashes; ours is one.
    #[allow(clippy::expect_used)]
    pub fn subkey(&self, purpose: Purpose, salt: &Salt) -> SubKey {
        let info = [purpose.label(), &salt[..]];
        let mut k = [0u8; 32];
        self.0
            .prk
            .expand(&info, KeyLen)
            .and_then(|okm| okm.fill(&mut k))
            .expect("32 bytes of HKDF output");
        let sub = SubKey {
            cipher: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &k).expect("32-byte AES-256 key"),
            ),
        };
        wipe(&mut k);
        sub
    }

    /// A tag of `msg` that only holders of this key can compute (HKDF-Expand of the lineage
    /// key with info `label ‖ msg`, a pseudo-random function of `msg`): what the store's
    /// content map keys attached files by, so their content hashes are never stored in the
    /// clear.
    // ring's HKDF fails only for an output longer than 255 hashes; ours is one.
    #[allow(clippy::expect_used)]
    pub fn tag(&self, label: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut t = [0u8; 32];
        self.0
            .prk
            .expand(&[label, msg], KeyLen)
            .and_then(|okm| okm.fill(&mut t))
            .expect("32 bytes of HKDF output");
        t
    }

    /// The head log subkey under `salt`, derived once for consecutive uses of one log.
    pub(crate) fn log_key(&self, salt: &Salt) -> Arc<SubKey> {
        let mut last = self.0.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, k)) = last.as_ref() {
            if s == salt {
                return k.clone();
            }
        }
        let k = Arc::new(self.subkey(Purpose::HeadLog, salt));
        *last = Some((*salt, k.clone()));
        k
    }

    /// Seals `plain` under the lineage key itself with a fresh random nonce, appending the
    /// sealed unit to `out`: only for appends to a head log of version 2 or 3, which are
    /// sealed so until the log's next snapshot (of today's version).
    pub fn seal_into(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        seal_into(&self.0.cipher, random_nonce()?, aad, plain, out)
    }

    /// [`Key::seal_into`] into a new vector.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        self.seal_into(aad, plain, &mut out)?;
        Ok(out)
    }

    /// Opens a unit sealed under the lineage key itself (formats before version 4).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        open(&self.0.cipher, aad, sealed)
    }

    /// [`Key::open`] in place: decrypts within `sealed` and returns the plaintext's part of it.
    pub fn open_in<'a>(&self, aad: &[u8], sealed: &'a mut [u8]) -> Result<&'a [u8], SealError> {
        open_in(&self.0.cipher, aad, sealed)
    }
}

/// A key derived from a lineage's [`Key`] and a salt (see the module doc): one diff file's,
/// or one head log's. Its caller picks each unit's nonce and never seals two units under one.
pub struct SubKey {
    cipher: LessSafeKey,
}

impl std::fmt::Debug for SubKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubKey(..)")
    }
}

impl SubKey {
    /// Seals `plain` under `nonce`, appending the sealed unit to `out`.
    pub fn seal_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        seal_into(&self.cipher, nonce, aad, plain, out)
    }

    /// Seals in place under `nonce`: `unit` is the sealed unit's room, its plaintext between
    /// [`NONCE_LEN`] bytes at the front and [`TAG_LEN`] at the back (their contents do not
    /// matter); nonce and tag are written there and the plaintext is encrypted where it is.
    pub fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        unit: &mut [u8],
    ) -> std::io::Result<()> {
        if unit.len() < OVERHEAD {
            return Err(std::io::Error::other("no room to seal in place"));
        }
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

    /// Opens a sealed unit.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        open(&self.cipher, aad, sealed)
    }

    /// [`SubKey::open`] in place: decrypts within `sealed` and returns the plaintext's part of
    /// it (no copy of the unit; the bytes of a unit that fails to open are unspecified).
    pub fn open_in<'a>(&self, aad: &[u8], sealed: &'a mut [u8]) -> Result<&'a [u8], SealError> {
        open_in(&self.cipher, aad, sealed)
    }
}

fn seal_into(
    cipher: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plain: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.reserve(plain.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plain);
    let tag = cipher
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[start..],
        )
        .map_err(|_| std::io::Error::other("encryption failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

fn open(cipher: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < OVERHEAD {
        return Err(SealError);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError)?;
    let mut buf = ct.to_vec();
    let n = cipher
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| SealError)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

fn open_in<'a>(
    cipher: &LessSafeKey,
    aad: &[u8],
    sealed: &'a mut [u8],
) -> Result<&'a [u8], SealError> {
    if sealed.len() < OVERHEAD {
        return Err(SealError);
    }
    let (nonce, ct) = sealed.split_at_mut(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError)?;
    let plain = cipher
        .open_in_place(nonce, Aad::from(aad), ct)
        .map_err(|_| SealError)?;
    Ok(plain)
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
        assert_eq!(k.open_in(b"a", &mut s.clone()).unwrap(), b"hello");
        assert_eq!(k.open_in(b"b", &mut s.clone()), Err(SealError));
        assert_eq!(k.open(b"b", &s), Err(SealError));
        let mut t = s.clone();
        t[14] ^= 1;
        assert_eq!(k.open(b"a", &t), Err(SealError));
        assert_eq!(k.open(b"a", &s[..10]), Err(SealError));
        // Every seal under the lineage key draws a fresh nonce.
        let n: std::collections::HashSet<Vec<u8>> = (0..1000)
            .map(|_| k.seal(b"a", b"x").unwrap()[..12].to_vec())
            .collect();
        assert_eq!(n.len(), 1000);
        let other = Key::generate().unwrap();
        assert_eq!(other.open(b"a", &s), Err(SealError));
    }

    #[test]
    fn subkeys_differ_by_salt_and_purpose() {
        let k = Key::from_raw([5; 32]);
        let (s1, s2) = (fresh_salt().unwrap(), fresh_salt().unwrap());
        assert_ne!(s1, s2);
        let n = [0u8; NONCE_LEN];
        let mut a = Vec::new();
        k.subkey(Purpose::DiffFile, &s1)
            .seal_into(n, b"x", b"same plaintext", &mut a)
            .unwrap();
        // The same salt and purpose give the same key (a reader derives the writer's) ...
        let again = Key::from_raw([5; 32]).subkey(Purpose::DiffFile, &s1);
        assert_eq!(again.open(b"x", &a).unwrap(), b"same plaintext");
        // ... another salt, another purpose or the lineage key itself do not, even under the
        // same nonce: the ciphertexts differ and nothing opens across.
        for other in [
            k.subkey(Purpose::DiffFile, &s2),
            k.subkey(Purpose::HeadLog, &s1),
        ] {
            let mut b = Vec::new();
            other.seal_into(n, b"x", b"same plaintext", &mut b).unwrap();
            assert_ne!(a[NONCE_LEN..], b[NONCE_LEN..]);
            assert_eq!(other.open(b"x", &a), Err(SealError));
        }
        assert_eq!(k.open(b"x", &a), Err(SealError));
        // The head log key is derived once per salt.
        assert!(Arc::ptr_eq(&k.log_key(&s1), &k.log_key(&s1)));
        assert!(!Arc::ptr_eq(&k.log_key(&s1), &k.log_key(&s2)));
    }

    /// A random source that fails is an error for every draw, never a predictable (all-zero)
    /// salt or nonce. (Before version 4 a failing source left a key's nonce base at zero
    /// without a word.)
    #[test]
    fn a_failing_random_source_is_an_error() {
        let k = Key::from_raw([9; 32]);
        fail_random_on_this_thread(true);
        assert!(fresh_salt().is_err());
        assert!(random_nonce().is_err());
        assert!(k.seal(b"a", b"x").is_err());
        assert!(Key::generate().is_err());
        fail_random_on_this_thread(false);
        assert!(fresh_salt().is_ok());
        assert!(k.seal(b"a", b"x").is_ok());
    }

    /// Opening an existing database draws no key, so nothing failed before its first commit
    /// sealed with a predictable nonce base: now that commit fails, and the database is as it
    /// was (and takes the commit once the source works).
    #[test]
    fn an_opened_database_does_not_commit_without_randomness() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::Store::open(d.path()).unwrap();
        store.create(Some("t")).unwrap();
        drop(store);
        let store = crate::Store::open(d.path()).unwrap();
        let db = store.open_db("t").unwrap();
        fail_random_on_this_thread(true);
        let r = db.put(&serde_json::json!({"_id": "a"}));
        fail_random_on_this_thread(false);
        assert!(r.is_err(), "committed without a random source");
        assert_eq!(db.get("a").unwrap(), None);
        db.put(&serde_json::json!({"_id": "a"})).unwrap();
        assert!(db.verify().unwrap().ok());
    }

    #[test]
    fn export_is_the_key_and_imports_back() {
        let k = Key::generate().unwrap();
        let raw = k.export_raw();
        assert_eq!(&raw, k.raw());
        let back = Key::from_raw(raw);
        let s = k.seal(b"a", b"secret").unwrap();
        assert_eq!(back.open(b"a", &s).unwrap(), b"secret");
        let mut w = [7u8; 40];
        wipe(&mut w);
        assert_eq!(w, [0; 40]);
    }
}
