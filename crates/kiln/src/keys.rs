//! The keybag: one key per database lineage, in `ROOT/keys/<lineage>.key`, mode 0600, in a
//! folder of mode 0700. The file is JSON: `{"v":1,"lineage":"<uuid>","key":"<64 hex>"}`.
//!
//! **Invariant:** keys are written nowhere else; diff files and head records name the lineage,
//! never the key.

use crate::block::cid::{hex, unhex};
use crate::error::{Error, Result};
use crate::seal::Key;
use crate::storage::write_atomic;
use std::path::{Path, PathBuf};

/// A lineage id: databases that share files share a lineage and its key.
pub type Lineage = [u8; 16];

pub fn lineage_string(l: &Lineage) -> String {
    uuid::Uuid::from_bytes(*l).hyphenated().to_string()
}

/// The keybag folder of a store.
#[derive(Debug, Clone)]
pub struct Keybag {
    dir: PathBuf,
}

impl Keybag {
    pub fn new(dir: impl Into<PathBuf>) -> Keybag {
        Keybag { dir: dir.into() }
    }

    fn path(&self, l: &Lineage) -> PathBuf {
        self.dir.join(format!("{}.key", lineage_string(l)))
    }

    /// Creates the keybag folder (mode 0700) if absent.
    pub fn init(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::io(&self.dir, e)),
            _ => Ok(()),
        }
    }

    /// Stores a key for a lineage (mode 0600).
    pub fn put(&self, l: &Lineage, key: &Key, sync: bool) -> Result<()> {
        let body = serde_json::json!({"v": 1, "lineage": lineage_string(l), "key": hex(key.raw())});
        let path = self.path(l);
        write_atomic(&path, body.to_string().as_bytes(), sync, Some(0o600))
            .map_err(|e| Error::io(&path, e))
    }

    /// Loads a lineage's key; `None` when the keybag has none.
    pub fn get(&self, l: &Lineage) -> Result<Option<Key>> {
        let path = self.path(l);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        parse_key(&path, &bytes).map(Some)
    }

    /// Marks a lineage as held by more than one database (forks): from then on no database of
    /// it deletes files by itself (they may be shared); garbage collection does, by reference.
    pub fn mark_shared(&self, l: &Lineage, sync: bool) -> Result<()> {
        let path = self.dir.join(format!("{}.shared", lineage_string(l)));
        write_atomic(&path, b"", sync, Some(0o600)).map_err(|e| Error::io(&path, e))
    }

    /// Whether [`Keybag::mark_shared`] was called for the lineage.
    pub fn is_shared(&self, l: &Lineage) -> bool {
        self.dir
            .join(format!("{}.shared", lineage_string(l)))
            .exists()
    }

    /// Every key in the keybag (entries that do not parse are left out).
    pub fn all(&self) -> Result<Vec<Key>> {
        let mut out = Vec::new();
        for l in self.lineages()? {
            if let Ok(Some(k)) = self.get(&l) {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// The lineages the keybag holds keys (or shared marks) for.
    fn lineages(&self) -> Result<Vec<Lineage>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let name = e.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".key").or_else(|| n.strip_suffix(".shared")))
            else {
                continue;
            };
            if let Ok(u) = uuid::Uuid::parse_str(stem) {
                out.push(*u.as_bytes());
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Removes the key and shared mark of every lineage not in `used` (garbage collection,
    /// which holds the store's GC lock exclusively: creators hold it shared from writing a
    /// key until their database is in place). Returns the keys removed.
    pub fn remove_unused(&self, used: &std::collections::HashSet<Lineage>) -> Result<usize> {
        let mut n = 0;
        for l in self.lineages()? {
            if used.contains(&l) {
                continue;
            }
            if self.path(&l).exists() {
                n += 1;
            }
            self.remove(&l)?;
            let shared = self.dir.join(format!("{}.shared", lineage_string(&l)));
            match std::fs::remove_file(&shared) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&shared, e))
                }
                _ => {}
            }
        }
        if n > 0 {
            crate::storage::sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        }
        Ok(n)
    }

    pub fn remove(&self, l: &Lineage) -> Result<()> {
        let path = self.path(l);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }
}

/// Parses a keybag entry.
pub fn parse_key(path: &Path, bytes: &[u8]) -> Result<Key> {
    let bad =
        |what: &str| Error::corrupt(path.display().to_string(), format!("keybag entry: {what}"));
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad("not JSON"))?;
    if v.get("v").and_then(|x| x.as_u64()) != Some(1) {
        return Err(bad("unknown version"));
    }
    let raw = v
        .get("key")
        .and_then(|k| k.as_str())
        .and_then(unhex)
        .ok_or_else(|| bad("key is not hex"))?;
    let raw: [u8; 32] = raw.try_into().map_err(|_| bad("key is not 32 bytes"))?;
    Ok(Key::from_raw(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    proptest! {
        #[test]
        fn random_keybag_entries_never_panic(b in prop::collection::vec(any::<u8>(), 0..200), s in ".{0,120}") {
            let _ = parse_key(Path::new("x"), &b);
            let _ = parse_key(Path::new("x"), s.as_bytes());
            let _ = parse_key(Path::new("x"), format!("{{\"v\":1,\"key\":\"{s}\"}}").as_bytes());
        }
    }

    #[test]
    fn round_trip_with_private_modes() {
        let d = tempfile::tempdir().unwrap();
        let kb = Keybag::new(d.path().join("keys"));
        kb.init().unwrap();
        let l = [7u8; 16];
        assert!(kb.get(&l).unwrap().is_none());
        let k = Key::generate().unwrap();
        kb.put(&l, &k, true).unwrap();
        assert_eq!(kb.get(&l).unwrap().unwrap().raw(), k.raw());
        let mode = std::fs::metadata(kb.path(&l)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(d.path().join("keys"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        for junk in [&b""[..], b"{}", b"{\"v\":1,\"key\":\"zz\"}", b"\xff\xfe"] {
            assert!(parse_key(Path::new("x"), junk).is_err());
        }
    }
}
