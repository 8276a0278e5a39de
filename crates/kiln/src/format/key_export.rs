//! A lineage key as one line of text, to move it to another machine by hand (`kiln key
//! export`/`import`): wrapped under a passphrase by default, or raw for scripts.
//!
//! ```text
//! kiln-key-1.<lineage>.<m KiB>.<t>.<p>.<salt>.<sealed>   wrapped: sealed = AES-256-GCM under
//!                                                        Argon2id(passphrase, salt, m, t, p),
//!                                                        AAD "kiln/key-export/v1" ‖ lineage[16],
//!                                                        nonce ‖ ciphertext ‖ tag
//! kiln-key-1-raw.<lineage>.<key>                         raw: the 32 key bytes
//! ```
//!
//! `<lineage>` is the UUID text of the lineage, `<salt>`, `<sealed>` and `<key>` are base32
//! (lower case, no padding). Whoever holds a raw key, or a wrapped one and its passphrase,
//! reads every database of the lineage.

use crate::format::block::cid::{base32_decode, base32_encode};
use crate::format::seal::Key;

/// Argon2id memory (KiB), passes and lanes written: ~0.3 s on a small VM.
pub const M_KIB: u32 = 64 * 1024;
pub const T: u32 = 3;
pub const P: u32 = 1;
const AAD: &[u8] = b"kiln/key-export/v1";
const WRAPPED: &str = "kiln-key-1";
const RAW: &str = "kiln-key-1-raw";

/// Why an exported key could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyTextError {
    /// Not a key in this format (or damaged).
    Malformed(&'static str),
    /// The passphrase does not open it (or it was tampered with).
    WrongPassphrase,
    /// A wrapped key and no passphrase.
    NeedsPassphrase,
}

impl std::fmt::Display for KeyTextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyTextError::Malformed(why) => write!(f, "not an exported kiln key: {why}"),
            KeyTextError::WrongPassphrase => {
                f.write_str("the passphrase does not open this key (or the text was changed)")
            }
            KeyTextError::NeedsPassphrase => {
                f.write_str("this key is wrapped: give its passphrase")
            }
        }
    }
}

fn wrapping_key(
    passphrase: &str,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Key, KeyTextError> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|_| KeyTextError::Malformed("Argon2 parameters"))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|_| KeyTextError::Malformed("Argon2 parameters"))?;
    Ok(Key::from_raw(out))
}

fn aad(lineage: &[u8; 16]) -> Vec<u8> {
    let mut a = AAD.to_vec();
    a.extend_from_slice(lineage);
    a
}

/// The key of `lineage` as text: wrapped under `passphrase`, or raw with `None`.
pub fn export(key: &Key, lineage: &[u8; 16], passphrase: Option<&str>) -> std::io::Result<String> {
    let l = uuid::Uuid::from_bytes(*lineage).hyphenated().to_string();
    let Some(pass) = passphrase else {
        return Ok(format!("{RAW}.{l}.{}", base32_encode(&key.export_raw())));
    };
    let mut salt = [0u8; 16];
    crate::format::seal::fill_random(&mut salt)?;
    let wk =
        wrapping_key(pass, &salt, M_KIB, T, P).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut raw = key.export_raw();
    let sealed = wk.seal(&aad(lineage), &raw);
    raw.fill(0);
    Ok(format!(
        "{WRAPPED}.{l}.{M_KIB}.{T}.{P}.{}.{}",
        base32_encode(&salt),
        base32_encode(&sealed?)
    ))
}

/// Reads an exported key: its lineage and the key. Parameters beyond 1 GiB of memory, 16 passes
/// or 8 lanes are refused (a crafted text must not take the machine).
pub fn import(text: &str, passphrase: Option<&str>) -> Result<([u8; 16], Key), KeyTextError> {
    let bad = KeyTextError::Malformed;
    let parts: Vec<&str> = text.trim().split('.').collect();
    let lineage = |s: &str| -> Result<[u8; 16], KeyTextError> {
        uuid::Uuid::parse_str(s)
            .map(|u| *u.as_bytes())
            .map_err(|_| bad("lineage"))
    };
    match parts.as_slice() {
        [RAW, l, k] => {
            let l = lineage(l)?;
            let raw: [u8; 32] = base32_decode(k)
                .and_then(|b| b.try_into().ok())
                .ok_or(bad("key bytes"))?;
            Ok((l, Key::from_raw(raw)))
        }
        [WRAPPED, l, m, t, p, salt, sealed] => {
            let l = lineage(l)?;
            let num = |s: &str| s.parse::<u32>().map_err(|_| bad("Argon2 parameters"));
            let (m, t, p) = (num(m)?, num(t)?, num(p)?);
            if m > 1 << 20 || t == 0 || t > 16 || p == 0 || p > 8 {
                return Err(bad("Argon2 parameters out of range"));
            }
            let salt = base32_decode(salt).ok_or(bad("salt"))?;
            let sealed = base32_decode(sealed).ok_or(bad("sealed key"))?;
            let pass = passphrase.ok_or(KeyTextError::NeedsPassphrase)?;
            let wk = wrapping_key(pass, &salt, m, t, p)?;
            let mut raw = wk
                .open(&aad(&l), &sealed)
                .map_err(|_| KeyTextError::WrongPassphrase)?;
            let k: [u8; 32] = raw.as_slice().try_into().map_err(|_| bad("key length"))?;
            raw.fill(0);
            Ok((l, Key::from_raw(k)))
        }
        _ => Err(bad("expected kiln-key-1.… or kiln-key-1-raw.…")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_wrapped_and_raw() {
        let k = Key::generate().unwrap();
        let l = [7u8; 16];
        let w = export(&k, &l, Some("correct horse")).unwrap();
        assert!(w.starts_with("kiln-key-1."));
        assert!(!w.contains(&base32_encode(&k.export_raw())));
        let (l2, k2) = import(&w, Some("correct horse")).unwrap();
        assert_eq!((l2, k2.export_raw()), (l, k.export_raw()));
        assert_eq!(
            import(&w, Some("wrong")).err(),
            Some(KeyTextError::WrongPassphrase)
        );
        assert_eq!(import(&w, None).err(), Some(KeyTextError::NeedsPassphrase));
        // Another lineage in the text: the AAD no longer matches.
        let swapped = w.replacen(
            &uuid::Uuid::from_bytes(l).hyphenated().to_string(),
            &uuid::Uuid::from_bytes([8; 16]).hyphenated().to_string(),
            1,
        );
        assert_eq!(
            import(&swapped, Some("correct horse")).err(),
            Some(KeyTextError::WrongPassphrase)
        );
        let r = export(&k, &l, None).unwrap();
        assert_eq!(import(&r, None).unwrap().1.export_raw(), k.export_raw());
        for bad in [
            "",
            "kiln-key-1",
            "kiln-key-1-raw.x.y",
            "kiln-key-1.a.b.c.d.e.f",
            "kiln-key-1.00000000-0000-0000-0000-000000000000.99999999.3.1.aa.bb",
        ] {
            assert!(
                matches!(import(bad, Some("p")), Err(KeyTextError::Malformed(_))),
                "{bad}"
            );
        }
    }
}

/// Exported keys written by this format's first version (key 0x11 × 32, lineage 0x22 × 16,
/// passphrase "fixture passphrase"): a change that stops reading them fails here.
#[cfg(test)]
mod fixture {
    const WRAPPED: &str = "kiln-key-1.22222222-2222-2222-2222-222222222222.65536.3.1.axmqhcpps7n73wsic7mkkhd2se.g4fraqrnod4we2gefusfocjl6e6os3auhbebnmyqeoxd2caaulwtyfn6bl62xyca4nlyaapwoeby6znbdgtlhwnegf7qumxi";
    const RAW: &str = "kiln-key-1-raw.22222222-2222-2222-2222-222222222222.ceirceirceirceirceirceirceirceirceirceirceirceirceiq";

    #[test]
    fn version_1_keys_read() {
        for (text, pass) in [(WRAPPED, Some("fixture passphrase")), (RAW, None)] {
            let (l, k) = super::import(text, pass).unwrap();
            assert_eq!((l, k.export_raw()), ([0x22; 16], [0x11; 32]), "{text}");
        }
    }
}
