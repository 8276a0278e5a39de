//! [`Heads`]: one small mutable record per database, written by compare-and-swap.
//!
//! A database's head record names its current state; it is the one thing of a database that
//! changes. A backend keeps one per database name and a [`Version`] that changes with every
//! write; a writer says which version it read, and the write happens only if the record is
//! still at it ([`Conflict`] otherwise). A local folder counts versions in the database's
//! `LOCK` file under an `flock`; an object store would use its conditional puts (ETags); the
//! sync server, its own.

use std::io;

/// A version of a head record, as its backend counts them: equal means unchanged since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub u64);

/// A write refused because the record is no longer at the version the writer read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The version now (`None`: there is no record).
    pub now: Option<Version>,
}

/// Head records by database name, written by compare-and-swap.
pub trait Heads: Send + Sync + std::fmt::Debug {
    /// The names that have a head record, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A database's head record and its version; `None` when it has none.
    fn read(&self, db: &str) -> io::Result<Option<(Vec<u8>, Version)>>;
    /// Writes `bytes` as `db`'s head record if it is still at `expected` (`None`: only if it
    /// has none yet). Returns the new version, or the conflict. With `durable`, a written
    /// record survives a power cut once this returns. A write is whole or not at all: a reader
    /// sees the old record or the new one.
    fn write(
        &self,
        db: &str,
        expected: Option<Version>,
        bytes: &[u8],
        durable: bool,
    ) -> io::Result<Result<Version, Conflict>>;
}
