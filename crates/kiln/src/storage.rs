//! Storage of immutable, content-addressed files.
//!
//! **Invariant:** storage never interprets the bytes it holds; it stores, returns and removes
//! them by name. Every backend (the local folder here; object stores and the sync server later)
//! implements [`Storage`].

use crate::car::FileName;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A place that keeps immutable files by name.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Stores a file. With `sync`, returns only once the file and its name are durable.
    fn put(&self, name: &FileName, bytes: &[u8], sync: bool) -> io::Result<()>;
    /// Reads `len` bytes at `offset`.
    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The file's length in bytes.
    fn len(&self, name: &FileName) -> io::Result<u64>;
    /// The whole file.
    fn read(&self, name: &FileName) -> io::Result<Vec<u8>>;
    /// Removes a file (absent is not an error).
    fn remove(&self, name: &FileName) -> io::Result<()>;
    /// Every file held.
    fn list(&self) -> io::Result<Vec<FileName>>;
}

/// Files under a local folder: `DIR/ab/abcdef….kdf`, 256 shards by the first byte of the name.
#[derive(Debug)]
pub struct LocalStorage {
    dir: PathBuf,
    open: RwLock<HashMap<FileName, Arc<File>>>,
}

/// Open file handles kept for reads.
const MAX_OPEN: usize = 256;

impl LocalStorage {
    pub fn new(dir: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage {
            dir: dir.into(),
            open: RwLock::new(HashMap::new()),
        }
    }

    pub fn path(&self, name: &FileName) -> PathBuf {
        let h = name.to_string();
        self.dir.join(&h[..2]).join(format!("{h}.kdf"))
    }

    fn handle(&self, name: &FileName) -> io::Result<Arc<File>> {
        if let Some(f) = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(name))?);
        let mut m = self.open.write().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_OPEN {
            m.clear();
        }
        m.insert(*name, f.clone());
        Ok(f)
    }
}

impl Storage for LocalStorage {
    fn put(&self, name: &FileName, bytes: &[u8], sync: bool) -> io::Result<()> {
        let path = self.path(name);
        let shard = path.parent().unwrap_or(&self.dir).to_path_buf();
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&shard)?;
                if sync {
                    sync_dir(&self.dir)?;
                }
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?
            }
            // Same name means same bytes: the file is already there.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        };
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
            sync_dir(&shard)?;
        }
        Ok(())
    }

    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = self.handle(name)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn len(&self, name: &FileName) -> io::Result<u64> {
        Ok(self.handle(name)?.metadata()?.len())
    }

    fn read(&self, name: &FileName) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    fn remove(&self, name: &FileName) -> io::Result<()> {
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        match fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn list(&self) -> io::Result<Vec<FileName>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for shard in rd {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path())? {
                let f = f?;
                let n = f.file_name();
                if let Some(name) = n
                    .to_str()
                    .and_then(|s| s.strip_suffix(".kdf"))
                    .and_then(FileName::parse)
                {
                    out.push(name);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// fsyncs a directory, making the names in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` atomically with `bytes`: write a temporary file beside it, (fsync), rename
/// over, (fsync the directory). A reader sees the old or the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool, mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if let Some(m) = mode {
        o.mode(m);
    }
    let mut f = o.open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("files"));
        let name = FileName::of(b"hello");
        s.put(&name, b"hello", true).unwrap();
        s.put(&name, b"hello", true).unwrap();
        assert_eq!(s.read_at(&name, 1, 3).unwrap(), b"ell");
        assert_eq!(s.len(&name).unwrap(), 5);
        assert_eq!(s.list().unwrap(), vec![name]);
        assert!(s.read_at(&name, 4, 3).is_err());
        s.remove(&name).unwrap();
        s.remove(&name).unwrap();
        assert_eq!(s.read(&name).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(s.list().unwrap().is_empty());
    }
}
