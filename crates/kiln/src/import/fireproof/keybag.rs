//! Fireproof's keybag: one JSON file per named key (`@<ledger>-data@` → `_<ledger>_data_.json`,
//! every character outside `[A-Za-z0-9]` made `_`), each holding one or more keys spelled
//! `z` + base58btc, found by their fingerprint (sha256 of the raw key), which every encrypted
//! file names.

use super::ipld::base58_decode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A key and its fingerprint.
#[derive(Clone)]
pub struct FpKey {
    pub fingerprint: [u8; 32],
    pub key: Vec<u8>,
}

impl std::fmt::Debug for FpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FpKey({})",
            crate::util::hex::hex(&self.fingerprint[..8])
        )
    }
}

/// The keybag file of key `name`.
pub fn file_of(bag: &Path, name: &str) -> PathBuf {
    let f: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    bag.join(format!("{f}.json"))
}

/// The name of a ledger's data key.
pub fn data_key_name(ledger: &str) -> String {
    format!("@{ledger}-data@")
}

/// The keys of one keybag file (both its shapes: `{item: {keys: {fp: {key}}}}` and the older
/// `{name, key}`).
pub fn read_file(path: &Path) -> Result<Vec<FpKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a keybag entry ({e})", path.display()))?;
    let mut spelled = Vec::new();
    if let Some(keys) = v.pointer("/item/keys").and_then(Value::as_object) {
        for k in keys.values() {
            if let Some(s) = k.get("key").and_then(Value::as_str) {
                spelled.push(s.to_owned());
            }
        }
    } else if let Some(s) = v.get("key").and_then(Value::as_str) {
        spelled.push(s.to_owned());
    }
    let mut out = Vec::new();
    for s in spelled {
        // (A key is 16 or 32 bytes: ~45 characters at most. Longer is no key, and base58 of a
        // long string is slow to decode.)
        if s.len() > 100 {
            return Err(format!(
                "{}: a key of {} characters",
                path.display(),
                s.len()
            ));
        }
        let key = s
            .strip_prefix('z')
            .and_then(base58_decode)
            .ok_or_else(|| format!("{}: a key that is not z-base58btc", path.display()))?;
        out.push(FpKey {
            fingerprint: Sha256::digest(&key).into(),
            key,
        });
    }
    if out.is_empty() {
        return Err(format!("{}: holds no key", path.display()));
    }
    Ok(out)
}

/// Every key in the keybag folder `bag` (files that do not parse are passed over).
pub fn read_all(bag: &Path) -> Vec<FpKey> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(bag) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.extension().is_some_and(|e| e == "json") {
            out.extend(read_file(&p).unwrap_or_default());
        }
    }
    out
}
