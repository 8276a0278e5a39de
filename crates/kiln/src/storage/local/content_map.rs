//! A content map (`filesets/CONTENT`): which file names which opaque 16-byte tag, so content
//! stored once can be found again (attachments tag a file's content with their lineage's key:
//! a record names no content in the clear). Fixed records of `tag[16] ‖ file name[32]`
//! appended. It is a hint: a record whose file is gone is skipped, a torn last record
//! ignored; garbage collection rewrites the file without stale records.

use super::LocalStorage;
use crate::storage::FileName;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The file's name in `filesets/`.
pub const FILE: &str = "CONTENT";
const RECORD: usize = 48;

/// A record's key.
pub type Tag = [u8; 16];

/// The records of one store's content map read so far, and how far.
#[derive(Default)]
struct Map {
    read: u64,
    sets: HashMap<Tag, FileName>,
    /// The map's file, open, with its inode.
    file: Option<(u64, std::fs::File)>,
}

/// Maps of the stores this process used, by folder (records other processes append are read
/// when next asked).
fn maps() -> &'static Mutex<HashMap<PathBuf, Map>> {
    static M: OnceLock<Mutex<HashMap<PathBuf, Map>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// Reads the records appended since last time (the map's file kept open between calls: a
/// rewrite by gc replaces it, and is seen by its inode).
fn catch_up(path: &Path, m: &mut Map) {
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::metadata(path).ok().map(|x| (x.ino(), x.len()));
    let Some((ino, len)) = now else {
        return;
    };
    if m.file.as_ref().map(|(i, _)| *i) != Some(ino) {
        *m = Map::default();
        match std::fs::File::open(path) {
            Ok(f) => m.file = Some((ino, f)),
            Err(_) => return,
        }
    }
    let Some((_, f)) = m.file.as_mut() else {
        return;
    };
    if len == m.read || f.seek(SeekFrom::Start(m.read)).is_err() {
        return;
    }
    let mut b = Vec::with_capacity((len - m.read) as usize);
    if f.read_to_end(&mut b).is_err() {
        return;
    }
    let whole = b.len() / RECORD * RECORD;
    for r in b[..whole].chunks_exact(RECORD) {
        let mut t = [0u8; 16];
        t.copy_from_slice(&r[..16]);
        let mut n = [0u8; 32];
        n.copy_from_slice(&r[16..]);
        m.sets.insert(t, FileName(n));
    }
    m.read += whole as u64;
}

/// The file `tag` maps to in the map of folder `dir` (whose files `sets` keeps), if one is
/// known and still stored.
pub fn find(sets: &LocalStorage, dir: &Path, t: &Tag) -> Option<FileName> {
    let path = dir.join(FILE);
    let mut all = maps().lock().unwrap_or_else(|p| p.into_inner());
    let m = all.entry(dir.to_path_buf()).or_default();
    catch_up(&path, m);
    let name = *m.sets.get(t)?;
    sets.len(&name).is_ok().then_some(name)
}

/// Records that file `set` answers `tags` (best effort: the map is a hint, and a failure only
/// costs a later copy).
pub fn record(dir: &Path, set: &FileName, tags: &[Tag]) {
    if tags.is_empty() {
        return;
    }
    let mut b = Vec::with_capacity(tags.len() * RECORD);
    for t in tags {
        b.extend_from_slice(t);
        b.extend_from_slice(&set.0);
    }
    // One write in append mode: records of concurrent writers do not interleave. A record a
    // crash cut short is cut off first, so the ones after it stay in step.
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(FILE))
    {
        if let Ok(len) = f.metadata().map(|m| m.len()) {
            if len % RECORD as u64 != 0 {
                let _ = f.set_len(len - len % RECORD as u64);
            }
        }
        let _ = f.write_all(&b);
    }
}

/// Rewrites the map keeping only records whose file `keep` says is still stored (garbage
/// collection, holding the store's GC lock exclusively: no writer appends meanwhile).
pub fn prune(dir: &Path, keep: &dyn Fn(&FileName) -> bool) -> std::io::Result<()> {
    let path = dir.join(FILE);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let whole = b.len() / RECORD * RECORD;
    let mut kept = Vec::with_capacity(whole);
    for r in b[..whole].chunks_exact(RECORD) {
        let mut n = [0u8; 32];
        n.copy_from_slice(&r[16..]);
        if keep(&FileName(n)) {
            kept.extend_from_slice(r);
        }
    }
    if kept.len() == b.len() {
        return Ok(());
    }
    super::write_atomic(&path, &kept, false, None)?;
    maps().lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record a crash cut short does not put the ones appended after it out of step.
    #[test]
    fn a_torn_record_is_cut_off_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let sets = LocalStorage::with_ext(dir.path(), ".kfs");
        let (a, b) = (FileName([1; 32]), FileName([2; 32]));
        sets.put(&a, b"x", false).unwrap();
        sets.put(&b, b"y", false).unwrap();
        record(dir.path(), &a, &[[7; 16]]);
        // A crash in the middle of the next append.
        let path = dir.path().join(FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[9; 20]).unwrap();
        record(dir.path(), &b, &[[8; 16]]);
        assert_eq!(find(&sets, dir.path(), &[7; 16]), Some(a));
        assert_eq!(find(&sets, dir.path(), &[8; 16]), Some(b));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * RECORD as u64);
    }
}
