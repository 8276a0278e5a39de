//! The keybag: one key per database lineage, `<lineage>.key`, mode 0600, in a folder of mode
//! 0700 owned by this user. The file is JSON: `{"v":1,"lineage":"<uuid>","key":"<64 hex>"}`.
//! Where that folder is (outside the store's folder by default, so that a tool syncing the
//! store's folder never carries keys) is the store's choice: `store::keyplace`. Beside the keys,
//! a folder of marks (`<lineage>.shared`: the lineage has forks) that is store state, not a
//! secret: it stays in the store's folder.
//!
//! **Invariant:** keys are written nowhere else; diff files and head records name the lineage,
//! never the key.
//!
//! The folder is checked every time a key is read or written: a folder that is not ours, or
//! that group or others may enter, is refused (a key there may have been read, or swapped).
//! An entry is written to a fresh, randomly named file created exclusively (never following a
//! link, mode 0600 from creation), fsynced with its folder whatever the store's durability (a
//! head record that survives a power cut its key did not leaves the database unreadable), and
//! renamed into place; it is read without following a link. Key bytes and their hex text are
//! wiped from memory once used.

use crate::error::{Error, Result};
use crate::format::seal::{wipe, Key};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use crate::format::head::{lineage_string, Lineage};

/// The keybag of a store: its keys' folder and its marks' folder.
#[derive(Debug, Clone)]
pub struct Keybag {
    dir: PathBuf,
    marks: PathBuf,
}

/// Bytes wiped when dropped (a keybag entry's text).
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl Keybag {
    /// The keybag kept in folder `dir`, marks and keys together (nothing is read or made yet).
    pub fn new(dir: impl Into<PathBuf>) -> Keybag {
        let dir = dir.into();
        Keybag {
            marks: dir.clone(),
            dir,
        }
    }

    /// The keybag whose keys are kept in folder `dir` and whose marks in folder `marks`.
    pub fn with_marks(dir: impl Into<PathBuf>, marks: impl Into<PathBuf>) -> Keybag {
        Keybag {
            dir: dir.into(),
            marks: marks.into(),
        }
    }

    /// The folder of the keys.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where lineage `l`'s key is (or would be) kept.
    pub fn key_path(&self, l: &Lineage) -> PathBuf {
        self.path(l)
    }

    fn path(&self, l: &Lineage) -> PathBuf {
        self.dir.join(format!("{}.key", lineage_string(l)))
    }

    /// Creates the keybag folder (mode 0700, and its missing parents 0700 too) and the marks'
    /// folder if absent, and checks the keys' folder (see [`Keybag::check`]).
    pub fn init(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        // The folders made here are made durable in their parents (a head record that
        // outlives its keybag's folder after a power cut would leave it unreadable).
        let mut made = Vec::new();
        let mut p = self.dir.as_path();
        while !p.exists() {
            made.push(p.to_path_buf());
            match p.parent() {
                Some(q) if !q.as_os_str().is_empty() => p = q,
                _ => break,
            }
        }
        match std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&self.dir)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(&self.dir, e))
            }
            _ => {}
        }
        for d in &made {
            if let Some(parent) = d.parent().filter(|q| !q.as_os_str().is_empty()) {
                crate::storage::sync_dir(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        if self.marks != self.dir {
            // (Mode 0700 as the keys' folder was: keys an older kiln leaves there are read.)
            match std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&self.marks)
            {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::io(&self.marks, e))
                }
                _ => {}
            }
        }
        self.check()
    }

    /// Checks the keybag folder: a folder (not a link), owned by this process's user, that
    /// group and others cannot enter (mode 0700 or stricter). Anything else is refused.
    pub fn check(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let why = if !m.file_type().is_dir() {
            "is not a folder (a link?)"
        } else if m.uid() != me {
            "belongs to another user"
        } else if m.mode() & 0o077 != 0 {
            "is open to group or others"
        } else {
            return Ok(());
        };
        Err(Error::io(
            &self.dir,
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refusing the keybag: the folder {why} (mode {:04o}, owner {}); it must be a \
                     folder of mode 0700 owned by user {me} (check that no one else read or \
                     replaced its keys, then `chmod 700` it)",
                    m.mode() & 0o7777,
                    m.uid()
                ),
            ),
        ))
    }

    /// Stores a key for a lineage (mode 0600), always fsynced with the folder: `_sync` (the
    /// store's durability) is not consulted, since a key lost to a power cut makes every
    /// surviving record of its lineage unreadable.
    pub fn put(&self, l: &Lineage, key: &Key, _sync: bool) -> Result<()> {
        const H: &[u8; 16] = b"0123456789abcdef";
        self.check()?;
        let mut body = Wiped(Vec::with_capacity(128));
        body.0.extend_from_slice(b"{\"v\":1,\"lineage\":\"");
        body.0.extend_from_slice(lineage_string(l).as_bytes());
        body.0.extend_from_slice(b"\",\"key\":\"");
        for &b in key.raw() {
            body.0.push(H[(b >> 4) as usize]);
            body.0.push(H[(b & 15) as usize]);
        }
        body.0.extend_from_slice(b"\"}");
        let path = self.path(l);
        write_private(&self.dir, &path, &body.0).map_err(|e| Error::io(&path, e))
    }

    /// Writes a small private file `name` into the keys' folder (mode 0600, fsynced; see
    /// [`Keybag::put`]).
    pub fn put_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.check()?;
        let path = self.dir.join(name);
        write_private(&self.dir, &path, bytes).map_err(|e| Error::io(&path, e))
    }

    /// Loads a lineage's key; `None` when the keybag has none. The folder is checked first
    /// and the entry is not read through a link.
    pub fn get(&self, l: &Lineage) -> Result<Option<Key>> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => self.check()?,
        }
        let path = self.path(l);
        let mut f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::io(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "refusing a keybag entry that is a symbolic link",
                    ),
                ))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let mut bytes = Wiped(Vec::with_capacity(128));
        Read::by_ref(&mut f)
            .take(4096)
            .read_to_end(&mut bytes.0)
            .map_err(|e| Error::io(&path, e))?;
        parse_key(&path, &bytes.0).map(Some)
    }

    /// Marks a lineage as held by more than one database (forks): from then on no database of
    /// it deletes files by itself (they may be shared); garbage collection does, by reference.
    /// Always fsynced (a lost mark would let a database delete files a fork still names).
    pub fn mark_shared(&self, l: &Lineage, _sync: bool) -> Result<()> {
        if self.marks == self.dir {
            self.check()?;
        }
        let path = self.marks.join(format!("{}.shared", lineage_string(l)));
        write_private(&self.marks, &path, b"").map_err(|e| Error::io(&path, e))
    }

    /// Whether [`Keybag::mark_shared`] was called for the lineage.
    pub fn is_shared(&self, l: &Lineage) -> bool {
        self.marks
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
    pub(crate) fn lineages(&self) -> Result<Vec<Lineage>> {
        let mut out = Vec::new();
        let folders: &[&Path] = if self.marks == self.dir {
            &[&self.dir]
        } else {
            &[&self.dir, &self.marks]
        };
        for dir in folders {
            let rd = match std::fs::read_dir(dir) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(dir, e)),
            };
            for e in rd {
                let e = e.map_err(|e| Error::io(dir, e))?;
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
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The keys of the lineages not in `used` (what [`Keybag::remove_unused`] removes; entries
    /// that do not parse are left out).
    pub fn unused_keys(&self, used: &std::collections::HashSet<Lineage>) -> Result<Vec<Key>> {
        let mut out = Vec::new();
        for l in self.lineages()? {
            if !used.contains(&l) {
                if let Ok(Some(k)) = self.get(&l) {
                    out.push(k);
                }
            }
        }
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
            let shared = self.marks.join(format!("{}.shared", lineage_string(&l)));
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

    /// Removes lineage `l`'s key (its databases become unreadable); absent is fine.
    pub fn remove(&self, l: &Lineage) -> Result<()> {
        let path = self.path(l);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }
}

/// Writes `bytes` to `path` in folder `dir`: a fresh, randomly named file created exclusively
/// without following a link, mode 0600 from creation, fsynced, renamed over `path`, the folder
/// fsynced.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut r = [0u8; 16];
    crate::format::seal::fill_random(&mut r)?;
    let tmp = dir.join(format!(".{}.tmp", crate::format::block::cid::hex(&r)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let done = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    crate::storage::sync_dir(dir)
}

/// Parses a keybag entry. The key's text is read in place (never copied into a string of its
/// own) and its bytes are wiped once the key holds them.
pub fn parse_key(path: &Path, bytes: &[u8]) -> Result<Key> {
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        v: u64,
        #[serde(borrow)]
        key: &'a str,
    }
    let bad =
        |what: &str| Error::corrupt(path.display().to_string(), format!("keybag entry: {what}"));
    let e: Entry = serde_json::from_slice(bytes).map_err(|_| bad("not JSON with a key"))?;
    if e.v != 1 {
        return Err(bad("unknown version"));
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let hex = e.key.as_bytes();
    if hex.len() != 64 {
        return Err(bad("key is not 32 bytes of hex"));
    }
    let mut raw = [0u8; 32];
    for (i, b) in raw.iter_mut().enumerate() {
        match (nib(hex[2 * i]), nib(hex[2 * i + 1])) {
            (Some(h), Some(l)) => *b = h << 4 | l,
            _ => {
                wipe(&mut raw);
                return Err(bad("key is not hex"));
            }
        }
    }
    let key = Key::from_raw(raw);
    wipe(&mut raw);
    Ok(key)
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

    /// A keybag folder that group or others can enter (or that is a link) is refused, for
    /// reads and writes alike, with a message that says what to do.
    #[test]
    fn an_open_keybag_folder_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("keys");
        let kb = Keybag::new(&dir);
        kb.init().unwrap();
        let (l, k) = ([1u8; 16], Key::generate().unwrap());
        kb.put(&l, &k, false).unwrap();
        for mode in [0o755, 0o750, 0o701, 0o707] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = kb.get(&l).unwrap_err().to_string();
            assert!(
                e.contains("refusing the keybag") && e.contains("chmod 700"),
                "{e}"
            );
            assert!(kb.put(&[2; 16], &k, true).is_err());
            assert!(kb.mark_shared(&l, true).is_err());
            assert!(kb.init().is_err());
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(kb.get(&l).unwrap().unwrap().raw(), k.raw());
        // A link to a private folder is refused too.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(Keybag::new(&link).get(&l).is_err());
        // A store whose keybag folder is open cannot open its databases.
        let s = tempfile::tempdir().unwrap();
        let store = crate::Store::open(s.path()).unwrap();
        store.create(Some("t")).unwrap();
        let keys = store.keys_dir().to_path_buf();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
        // (Opening the store for writing checks it at once; for reading, opening a database.)
        let e = crate::Store::open(s.path()).unwrap_err();
        assert!(e.to_string().contains("refusing the keybag"), "{e}");
        let ro = crate::Options {
            read_only: true,
            ..Default::default()
        };
        let e = match crate::Store::open_with(s.path(), ro).unwrap().open_db("t") {
            Ok(_) => panic!("opened a database through an open keybag"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("refusing the keybag"), "{e}");
    }

    /// Planted files and links do not take a key anywhere: not a leftover temporary file
    /// (the old name was predictable, `<entry>.tmp<pid>`, and opened with truncate, so a
    /// world-readable one planted there kept its mode, and a link there was followed), not a
    /// link at the entry itself (replaced, never written through), and a link is never read as
    /// an entry.
    #[test]
    fn planted_files_and_links_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let kb = Keybag::new(d.path().join("keys"));
        kb.init().unwrap();
        let (l, k) = ([3u8; 16], Key::generate().unwrap());
        let path = kb.path(&l);
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"untouched").unwrap();
        let old_tmp = |p: &Path| {
            let mut n = p.file_name().unwrap().to_os_string();
            n.push(format!(".tmp{}", std::process::id()));
            p.with_file_name(n)
        };
        // A world-readable leftover at the old temporary name.
        std::fs::write(old_tmp(&path), b"").unwrap();
        std::fs::set_permissions(old_tmp(&path), std::fs::Permissions::from_mode(0o644)).unwrap();
        kb.put(&l, &k, false).unwrap();
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A link at the old temporary name and one at the entry: neither is written through.
        let l2 = [4u8; 16];
        let p2 = kb.path(&l2);
        std::os::unix::fs::symlink(&outside, old_tmp(&p2)).unwrap();
        std::os::unix::fs::symlink(&outside, &p2).unwrap();
        // (Reading a link as an entry is refused.)
        let e = kb.get(&l2).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        kb.put(&l2, &k, false).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&p2)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(kb.get(&l2).unwrap().unwrap().raw(), k.raw());
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(d.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
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
