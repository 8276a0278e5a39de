//! Backends in memory: [`MemoryFiles`] and [`MemoryHeads`], for tests and for data that need
//! not outlive the process.

use super::{Conflict, FileName, Files, Heads, Version};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Mutex;

/// Immutable files in memory.
#[derive(Debug, Default)]
pub struct MemoryFiles {
    files: Mutex<BTreeMap<FileName, Vec<u8>>>,
}

impl MemoryFiles {
    pub fn new() -> MemoryFiles {
        MemoryFiles::default()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<FileName, Vec<u8>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_found(name: &FileName) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl Files for MemoryFiles {
    fn put(&self, name: &FileName, parts: &[&[u8]], _durable: bool) -> io::Result<()> {
        self.files().entry(*name).or_insert_with(|| parts.concat());
        Ok(())
    }

    fn put_streamed(
        &self,
        durable: bool,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<FileName>,
    ) -> io::Result<FileName> {
        let mut buf = Vec::new();
        let name = fill(&mut buf)?;
        self.put(&name, &[&buf], durable)?;
        Ok(name)
    }

    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let files = self.files();
        let f = files.get(name).ok_or_else(|| not_found(name))?;
        usize::try_from(offset)
            .ok()
            .and_then(|o| f.get(o..o.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn len(&self, name: &FileName) -> io::Result<u64> {
        let files = self.files();
        Ok(files.get(name).ok_or_else(|| not_found(name))?.len() as u64)
    }

    fn list(&self) -> io::Result<Vec<FileName>> {
        Ok(self.files().keys().copied().collect())
    }

    fn delete(&self, name: &FileName) -> io::Result<()> {
        self.files().remove(name);
        Ok(())
    }
}

/// Head records in memory; versions count writes from 1.
#[derive(Debug, Default)]
pub struct MemoryHeads {
    heads: Mutex<BTreeMap<String, (Vec<u8>, Version)>>,
}

impl MemoryHeads {
    pub fn new() -> MemoryHeads {
        MemoryHeads::default()
    }
}

impl Heads for MemoryHeads {
    fn list(&self) -> io::Result<Vec<String>> {
        let h = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        Ok(h.keys().cloned().collect())
    }

    fn read(&self, db: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        let h = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        Ok(h.get(db).cloned())
    }

    fn write(
        &self,
        db: &str,
        expected: Option<Version>,
        bytes: &[u8],
        _durable: bool,
    ) -> io::Result<Result<Version, Conflict>> {
        let mut h = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        let now = h.get(db).map(|(_, v)| *v);
        if now != expected {
            return Ok(Err(Conflict { now }));
        }
        let v = Version(now.map_or(1, |v| v.0 + 1));
        h.insert(db.to_owned(), (bytes.to_vec(), v));
        Ok(Ok(v))
    }
}
