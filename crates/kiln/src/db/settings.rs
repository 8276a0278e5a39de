//! Settings a user changes: per store (`ROOT/settings.json`) and per database
//! (`dbs/<name>/settings.json`). Plain JSON, written atomically; absent means "default".
//!
//! The compaction threshold that applies to a database is its own setting, else the store's,
//! else [`crate::Options::compact_threshold`] (100 unless the program says otherwise).

use crate::error::{Error, Result};
use crate::storage::write_atomic;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Largest accepted compaction threshold.
pub const MAX_THRESHOLD: usize = 1_000_000;

/// Settings of a store or a database (`keep_archive` is a store setting only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Compact when more than this many transaction diff files are live.
    pub compact_threshold: Option<usize>,
    /// Move files that compaction or garbage collection retires into `ROOT/archive/` instead
    /// of deleting them, so the full sequence of diffs can be rebuilt.
    pub keep_archive: Option<bool>,
}

impl Settings {
    /// Checks values a user gave.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.compact_threshold {
            if !(1..=MAX_THRESHOLD).contains(&t) {
                return Err(Error::InvalidArgument(format!(
                    "compaction threshold {t} is out of range (1 to {MAX_THRESHOLD})"
                )));
            }
        }
        Ok(())
    }

    /// Reads a settings file; absent is all defaults.
    pub fn read(path: &Path) -> Result<Settings> {
        let b = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        let bad = |what: &str| Error::corrupt(path.display().to_string(), what.to_owned());
        let v: Value = serde_json::from_slice(&b).map_err(|_| bad("settings file is not JSON"))?;
        let o = v
            .as_object()
            .ok_or_else(|| bad("settings file is not an object"))?;
        let s = Settings {
            compact_threshold: match o.get("compact_threshold") {
                None | Some(Value::Null) => None,
                Some(x) => Some(
                    x.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad("compact_threshold is not a whole number"))?,
                ),
            },
            keep_archive: match o.get("keep_archive") {
                None | Some(Value::Null) => None,
                Some(x) => Some(
                    x.as_bool()
                        .ok_or_else(|| bad("keep_archive is not true or false"))?,
                ),
            },
        };
        s.validate()
            .map_err(|_| bad("compact_threshold is out of range"))?;
        Ok(s)
    }

    /// Writes a settings file atomically (removes it when everything is default).
    pub fn write(&self, path: &Path, sync: bool) -> Result<()> {
        self.validate()?;
        if *self == Settings::default() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
                _ => Ok(()),
            };
        }
        write_atomic(path, self.to_json().to_string().as_bytes(), sync, None)
            .map_err(|e| Error::io(path, e))
    }

    /// The settings as a JSON object (absent ones as null).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(t) = self.compact_threshold {
            m.insert("compact_threshold".into(), json!(t));
        }
        if let Some(a) = self.keep_archive {
            m.insert("keep_archive".into(), json!(a));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_validate_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("settings.json");
        assert_eq!(Settings::read(&p).unwrap(), Settings::default());
        let s = Settings {
            compact_threshold: Some(7),
            keep_archive: Some(true),
        };
        s.write(&p, false).unwrap();
        assert_eq!(Settings::read(&p).unwrap(), s);
        Settings::default().write(&p, false).unwrap();
        assert!(!p.exists());
        for bad in [0, MAX_THRESHOLD + 1] {
            let s = Settings {
                compact_threshold: Some(bad),
                ..Settings::default()
            };
            assert!(matches!(s.write(&p, false), Err(Error::InvalidArgument(_))));
        }
        for text in [
            "nope",
            "[]",
            r#"{"compact_threshold": -1}"#,
            r#"{"compact_threshold": 0}"#,
            r#"{"keep_archive": 1}"#,
        ] {
            std::fs::write(&p, text).unwrap();
            assert!(Settings::read(&p).unwrap_err().is_corruption(), "{text}");
        }
    }
}
