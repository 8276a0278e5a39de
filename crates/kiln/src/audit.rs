//! Audits of what a store holds: a search of every file under a store's root, raw and
//! decrypted, for a byte string. For privacy checks (after a purge or a drop nothing of the
//! content may be readable, even with the key) and for tests; it reads every file whole.
//!
//! What it opens: diff files (every segment, decompressed), head records (every record that
//! authenticates anywhere in the file, including diffs carried in file records), file-sets
//! (every file's chunks), remote head records (the head record sealed inside), proposals and derived records (a
//! database's indexes' state; the index trees themselves are diff files),
//! under each of the keys given; and every file's raw bytes. A remote's folder is searched
//! the same way.

use crate::format::seal::Key;
use std::path::{Path, PathBuf};

/// Where a search found the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub path: PathBuf,
    /// `raw`, `diff segment`, `head record`, `carried diff segment`, `file-set`, `remote head
    /// record`, `proposal` or `derived record`.
    pub how: &'static str,
}

/// The keys of the store at `root`, wherever it keeps them (as a default open finds them), to
/// search its files decrypted with.
pub fn keys_of(root: &Path) -> crate::Result<Vec<Key>> {
    crate::store::keyplace::keybag_at(root)?.all()
}

/// The folder the store at `root` keeps its keys in.
pub fn keys_dir(root: &Path) -> crate::Result<PathBuf> {
    Ok(crate::store::keyplace::keybag_at(root)?.dir().to_path_buf())
}

/// Searches every file under `root` for `needle`, in its raw bytes and in everything that
/// opens under one of `keys`.
pub fn find(root: &Path, keys: &[Key], needle: &[u8]) -> std::io::Result<Vec<Finding>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let b = std::fs::read(e.path())?;
                let stem = e
                    .path()
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned());
                for how in search(&b, stem.as_deref().unwrap_or(""), keys, needle) {
                    out.push(Finding {
                        path: e.path(),
                        how,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Where `needle` shows in one file's bytes `b` (`stem`: its name without extension).
fn search(b: &[u8], stem: &str, keys: &[Key], needle: &[u8]) -> Vec<&'static str> {
    let has = |x: &[u8]| !needle.is_empty() && x.windows(needle.len()).any(|w| w == needle);
    let mut out = Vec::new();
    if has(b) {
        out.push("raw");
    }
    for k in keys {
        if b.starts_with(crate::format::car::MAGIC)
            && crate::format::car::plaintexts(k, b).iter().any(|p| has(p))
        {
            out.push("diff segment");
        }
        if b.starts_with(crate::format::fileset::MAGIC)
            && crate::format::fileset::plaintexts(k, b)
                .iter()
                .any(|p| has(p))
        {
            out.push("file-set");
        }
        if b.starts_with(crate::format::head::MAGIC) {
            for (kind, body) in crate::format::head::plaintexts(b, k) {
                if has(&body) {
                    out.push("head record");
                }
                if kind == crate::format::head::FILE_RECORD {
                    let carried = body.get(32..).unwrap_or_default();
                    for kk in keys {
                        if crate::format::car::plaintexts(kk, carried)
                            .iter()
                            .any(|p| has(p))
                        {
                            out.push("carried diff segment");
                        }
                    }
                }
            }
        }
        // A remote's head record (kiln-sync): the head record sealed inside it.
        if let Some(snapshot) = crate::db::record_snapshot(b, k, stem) {
            if crate::format::head::plaintexts(&snapshot, k)
                .iter()
                .any(|(_, body)| has(body))
            {
                out.push("remote head record");
            }
        }
        if crate::store::proposals::opens_with(b, k, stem).is_some_and(|p| has(&p)) {
            out.push("proposal");
        }
        if crate::db::derived::opens_with(b, k).is_some_and(|p| has(&p)) {
            out.push("derived record");
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}
