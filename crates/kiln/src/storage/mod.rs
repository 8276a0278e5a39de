//! Storage: where bytes are kept, by name.
//!
//! **Invariant:** storage never interprets the bytes it holds; it stores, returns and removes
//! them by name. It knows nothing of kiln's formats or databases (it imports only `util`).
//!
//! Two small interfaces are what any backend offers, and what sync will move data between:
//! [`Files`], immutable files named by the hash of their bytes, and [`Heads`], one small
//! mutable record per database written only if it is still the version the writer read
//! (compare-and-swap). The local folder ([`local`]) implements both, and much more that only a
//! local folder does (a reuse pool of files, files written in parts from several threads, the
//! head record appended to in place); [`memory`] keeps both in memory, and [`faulty`] wraps
//! any backend to fail or tear a write after a countdown, for tests.
//!
//! Useful for: keeping and finding bytes. Not for: knowing what they mean.

// The lower layers are reached from outside only through `kiln::internals` (tests,
// examples, benchmarks: not a stable API); the public API is documented throughout.
#![allow(missing_docs)]

use std::io::{self, Write};

pub mod faulty;
pub mod heads;
pub mod local;
pub mod memory;

pub use heads::{Conflict, Heads, Version};
pub use local::{
    sync_dir, sync_file_system, syncfs_covers, write_atomic, DbLock, HeadFile, LocalHeads,
    LocalStorage, Pending,
};

/// A file's name: 32 bytes, the hash of its bytes (the formats choose the hash; storage
/// only keeps files under their names). Shown and parsed as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileName(pub [u8; 32]);

impl std::hash::Hash for FileName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut x = [0u8; 8];
        x.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(x));
    }
}

impl FileName {
    /// A name from its 64 hex characters.
    pub fn parse(s: &str) -> Option<FileName> {
        let v = crate::util::hex::unhex(s)?;
        Some(FileName(v.try_into().ok()?))
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::util::hex::hex(&self.0))
    }
}

impl std::fmt::Debug for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileName({self})")
    }
}

/// Somewhere else a missing file may be fetched from by name (a sync remote: a replica that
/// takes documents first and files on demand): asked when a read needs a file this store does
/// not hold.
pub trait FileSource: Send + Sync {
    /// Writes the bytes of file `name` to `out`; `Ok(false)` when this source does not have
    /// it. The caller checks that they hash to `name` and keeps them only then.
    fn fetch(&self, name: &FileName, out: &mut dyn Write) -> io::Result<bool>;
}

/// Immutable files kept by name: the interface every backend offers. A name is the hash of a
/// file's bytes, so a file is never changed, only stored, read and deleted; storing a name
/// again stores the same bytes.
pub trait Files: Send + Sync + std::fmt::Debug {
    /// Stores the concatenation of `parts` under `name` (with `durable`, returns only once it
    /// survives a power cut). A file already there under that name is left as it is.
    fn put(&self, name: &FileName, parts: &[&[u8]], durable: bool) -> io::Result<()>;
    /// Stores a file whose name is known only once its bytes are: `fill` writes them to the
    /// sink and returns the name. The file appears under it whole or not at all.
    fn put_streamed(
        &self,
        durable: bool,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<FileName>,
    ) -> io::Result<FileName>;
    /// `len` bytes at `offset` (`UnexpectedEof` past the end, `NotFound` for no such file).
    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// [`Files::read_at`] into `buf` (replacing its contents; on an error they are
    /// unspecified), reusing its allocation: a read that opens one segment after another need
    /// not allocate for each.
    fn read_into(
        &self,
        name: &FileName,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        *buf = self.read_at(name, offset, len)?;
        Ok(())
    }
    /// The file's length in bytes.
    fn len(&self, name: &FileName) -> io::Result<u64>;
    /// Every file held, sorted by name.
    fn list(&self) -> io::Result<Vec<FileName>>;
    /// Removes a file; absent is not an error.
    fn delete(&self, name: &FileName) -> io::Result<()>;
}
