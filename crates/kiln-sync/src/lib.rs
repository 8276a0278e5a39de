//! kiln's remotes: where replicas of a database meet. A remote keeps two things, and trusts
//! neither: immutable files named by the hash of their bytes (diff files and file-sets, as a
//! store keeps them: ciphertext only), and small mutable head records: one per database
//! written by compare-and-swap (a folder), or one per replica of each database, each written
//! by its replica only, a sync taking in their union (a bucket: [`Remote::per_replica_heads`]).
//! This crate holds the [`Remote`] interface every remote offers (a folder, an S3-compatible
//! bucket, a kiln sync server), the folder remote ([`FolderRemote`]), the bucket remote
//! ([`S3Remote`]), the sync server's client ([`HttpRemote`]; the server is `kiln-server`), the
//! sync itself, and [`probe`], which checks that a remote's compare-and-swap is honest before
//! anything relies on it. The core library (`kiln`) stays free of async runtimes
//! and HTTP; this crate is where they come in.
//!
//! What a remote is trusted with: nothing it could not learn anyway. Callers check every file
//! they download against its name before using or keeping it, seal head records, and choose
//! keys from the local catalog; a remote can drop, truncate, swap or replay what it holds, and
//! the sync layer treats all of that as damage, never as data.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod folder;
mod gc;
mod http;
mod probe;
pub mod proposals;
mod remotes;
mod s3;
mod state;
mod sync;
pub mod testing;
mod window;

pub use folder::FolderRemote;
pub use gc::{gc_remote, RemoteGcReport};
pub use http::{etag_header, kind_segment, parse_etag_header, HttpRemote, API_VERSION};
pub use kiln::FileName;
pub use probe::{probe, ProbeError};
pub use remotes::{
    check_remote_name, open_remote, open_remote_with, RememberedFiles, RemoteConfig, Remotes,
};
pub use s3::{S3Config, S3Remote};
pub use sync::{
    sync, sync_many, sync_remotes, sync_with_progress, watch, FileSets, Progress, RemoteFiles,
    Step, SyncError, SyncOptions, SyncReport, WatchOptions,
};

use std::io;

/// What hears of a remote's changes ([`Remote::notify`]): a receiver of `()` per change, and
/// the token whose drop tells the listener to stop.
#[derive(Debug)]
pub struct Notices {
    rx: std::sync::mpsc::Receiver<()>,
    _alive: std::sync::Arc<()>,
}

impl Notices {
    /// New notices, the sender that feeds them, and what tells the feeder whether anyone
    /// still listens (`strong_count() == 0`: stop).
    pub fn new() -> (Notices, std::sync::mpsc::Sender<()>, std::sync::Weak<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let alive = std::sync::Arc::new(());
        let weak = std::sync::Arc::downgrade(&alive);
        (Notices { rx, _alive: alive }, tx, weak)
    }

    /// Waits at most `d` for a notice.
    pub fn recv_timeout(
        &self,
        d: std::time::Duration,
    ) -> Result<(), std::sync::mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(d)
    }

    /// A notice if one is waiting.
    pub fn try_recv(&self) -> Result<(), std::sync::mpsc::TryRecvError> {
        self.rx.try_recv()
    }
}

/// Requests a remote keeps in flight at once where it can ([`Remote::get_files`],
/// [`Remote::has_files`], [`Remote::put_files`]): also how many files a transfer holds in
/// memory at most.
pub const WINDOW: usize = 8;

/// The two kinds of immutable files a remote keeps, in places of their own (file-sets
/// replicate apart from the documents: a replica may take the diffs and fetch files on demand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Diff files (`.kdf`): transactions and their compactions.
    Diff,
    /// File-sets (`.kfs`): attached files' bytes.
    FileSet,
}

impl Kind {
    /// The name a file of this kind with these bytes has: the hash of its bytes (a diff file's
    /// as `kiln` names it, a file-set's BLAKE3). What every downloaded or uploaded file is
    /// checked against.
    pub fn name_of(self, bytes: &[u8]) -> FileName {
        match self {
            Kind::Diff => FileName::of(bytes),
            Kind::FileSet => FileName(*blake3::hash(bytes).as_bytes()),
        }
    }
}

/// A version of a remote head record, as the remote says it (an ETag, a generation number):
/// equal means unchanged since; nothing else may be read into it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Etag(pub String);

/// What reading a head record found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadRead {
    /// No head record for that database.
    Absent,
    /// Unchanged since the version the reader gave (one request, no bytes).
    NotModified,
    /// The record and its version.
    Found {
        /// The record's bytes (sealed by the writer; the remote cannot read them).
        bytes: Vec<u8>,
        /// Its version.
        etag: Etag,
    },
}

/// A head record write refused: the record is no longer at the version the writer read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The version now (`None`: there is no record).
    pub now: Option<Etag>,
}

/// Where replicas meet: immutable files by name and kind, and head records by database,
/// written by compare-and-swap. Every method is one round trip to the remote (or a few, for
/// lists of more than a page), so a sync counts its requests by counting calls.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// Where the remote is, as a user would name it (a folder's path, a URL): what a store's
    /// memory of past syncs is keyed by.
    fn location(&self) -> String;
    /// Whether the remote holds a file of that name.
    fn has_file(&self, kind: Kind, name: &FileName) -> io::Result<bool>;
    /// [`Remote::has_file`], making the file young again where the remote can (what a push
    /// calls for a file it names without uploading it: a remote gc spares young files).
    fn refresh_file(&self, kind: Kind, name: &FileName) -> io::Result<bool> {
        self.has_file(kind, name)
    }
    /// Whether [`Remote::refresh_file`] makes a file young again (a folder touches it; S3
    /// cannot without copying it): where it does not, a push checks the files it named
    /// without uploading once its record is written, and uploads again any a remote gc
    /// removed meanwhile.
    fn refresh_makes_young(&self) -> bool {
        false
    }
    /// Stores a file under its name unless it is there already (the same name is the same
    /// bytes: a second upload changes nothing). Whole or not at all. A remote that can makes
    /// a file already there young again (a remote gc spares young files: see [`gc_remote`]).
    fn put_file(&self, kind: Kind, name: &FileName, bytes: &[u8]) -> io::Result<()>;
    /// A file's bytes, `None` when the remote does not have it. Unchecked: the caller hashes
    /// them against `name` before it uses or keeps them.
    fn get_file(&self, kind: Kind, name: &FileName) -> io::Result<Option<Vec<u8>>>;
    /// Bytes `start..end` of a file (cut at its end) and the file's whole length; `None` when
    /// the remote does not have it. Unchecked, and a part cannot be hashed against the name:
    /// a caller checks what it reads against what a checked part (a sealed index) says.
    fn get_file_range(
        &self,
        kind: Kind,
        name: &FileName,
        start: u64,
        end: u64,
    ) -> io::Result<Option<(Vec<u8>, u64)>> {
        Ok(self.get_file(kind, name)?.map(|b| {
            let len = b.len() as u64;
            let (s, e) = (start.min(len) as usize, end.min(len) as usize);
            (b[s..e.max(s)].to_vec(), len)
        }))
    }
    /// [`Remote::get_file`] of several files, one request each, each file handed to `each`
    /// with its index in `names` as it arrives. A remote that can keeps [`WINDOW`] requests in
    /// flight (S3), handing files over in the order they complete; at most that many are in
    /// memory at once. An error from `each` stops the fetch and is returned.
    fn get_files(
        &self,
        kind: Kind,
        names: &[FileName],
        each: &mut dyn FnMut(usize, Option<Vec<u8>>) -> io::Result<()>,
    ) -> io::Result<()> {
        for (i, n) in names.iter().enumerate() {
            each(i, self.get_file(kind, n)?)?;
        }
        Ok(())
    }
    /// [`Remote::has_file`] of several files, in order, one request each ([`WINDOW`] in
    /// flight where the remote can).
    fn has_files(&self, kind: Kind, names: &[FileName]) -> io::Result<Vec<bool>> {
        names.iter().map(|n| self.has_file(kind, n)).collect()
    }
    /// How many requests [`Remote::has_files`] makes for `n` names (one each, unless the
    /// remote answers for many at once).
    fn lookup_requests(&self, n: usize) -> usize {
        n
    }
    /// [`Remote::put_file`] of several files, one request each, the bytes of file `i` asked
    /// of `load(i)` when it is to be uploaded (`None`: skipped; a remote that looks files up
    /// first asks only for those it lacks). Returns, in order, whether each was uploaded
    /// (false: skipped, or there already, made young where the remote can). An error from
    /// `load` stops the upload and is returned. A remote that can keeps [`WINDOW`] uploads in flight (S3), or makes the
    /// files durable together (a folder); all are durable when it returns.
    fn put_files(
        &self,
        kind: Kind,
        names: &[FileName],
        load: &mut dyn FnMut(usize) -> io::Result<Option<Vec<u8>>>,
    ) -> io::Result<Vec<bool>> {
        let mut out = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if self.refresh_file(kind, n)? {
                out.push(false);
                continue;
            }
            let Some(bytes) = load(i)? else {
                out.push(false);
                continue;
            };
            self.put_file(kind, n, &bytes)?;
            out.push(true);
        }
        Ok(out)
    }
    /// Every file of a kind, sorted, with its age in seconds as the remote knows it (for a
    /// remote garbage collection's grace period).
    fn list_files(&self, kind: Kind) -> io::Result<Vec<(FileName, u64)>>;
    /// Removes a file; absent is not an error.
    fn delete_file(&self, kind: Kind, name: &FileName) -> io::Result<()>;
    /// A database's head record; with `known`, [`HeadRead::NotModified`] when it is still at
    /// that version (the one request a sync of an unchanged database makes).
    fn read_head(&self, db: &str, known: Option<&Etag>) -> io::Result<HeadRead>;
    /// Writes `db`'s head record if it is still at `expected` (`None`: only if it has none).
    /// Returns the new version, or the conflict. A reader sees the old record or the new one.
    fn write_head(
        &self,
        db: &str,
        expected: Option<&Etag>,
        bytes: &[u8],
    ) -> io::Result<Result<Etag, Conflict>>;
    /// Removes `db`'s head record if it is still at `expected`.
    fn delete_head(&self, db: &str, expected: &Etag) -> io::Result<Result<(), Conflict>>;
    /// Every head record, by name (see [`Remote::per_replica_heads`]), sorted, with its
    /// version: one listing answers "which of my databases changed".
    fn list_heads(&self) -> io::Result<Vec<(String, Etag)>>;
    /// Starts listening for changes to database `db`'s head records where the remote can tell
    /// of them as they happen (a sync server's live channel), and returns what hears them: it
    /// receives `()` at each change (or each time changes may have been missed: a new
    /// connection). `None` where the remote cannot: callers poll. Listening stops once the
    /// [`Notices`] are dropped.
    fn notify(&self, db: &str) -> Option<Notices> {
        let _ = db;
        None
    }
    /// Whether the remote's compare-and-swap was checked by the remote itself, so a client
    /// need not [`probe`] it (a kiln sync server probes its folder when it starts, and the
    /// probe's records are not every client's to write).
    fn swaps_checked(&self) -> bool {
        false
    }
    /// Whether the remote keeps one head record per replica of a database (named
    /// [`replica_head`]`(db, replica)`, each written by its replica only, a sync taking in the
    /// union of them) rather than one per database written by compare-and-swap. For remotes
    /// whose compare-and-swap cannot be trusted (many S3-compatible servers), which need none
    /// then.
    fn per_replica_heads(&self) -> bool {
        false
    }
    /// The head records of database `db`'s replicas ([`Remote::per_replica_heads`]), sorted,
    /// with their versions: one listing.
    fn list_replica_heads(&self, db: &str) -> io::Result<Vec<(String, Etag)>> {
        let mut out = self.list_heads()?;
        out.retain(|(n, _)| split_head_name(n).0 == db && n.contains('~'));
        Ok(out)
    }
    /// What this client may do to database `db` on the remote (a sync server answers for the
    /// token given; other remotes let anyone who reaches them do anything): asked before a
    /// step that would change things here and then be refused there.
    fn allowed(&self, db: &str) -> io::Result<Allowed> {
        let _ = db;
        Ok(Allowed {
            read: true,
            propose: true,
            write: true,
        })
    }
    /// Keeps proposal record `name` ([`check_proposal_record`]: `<id>.prop`, a contribution
    /// filed for database `db`, or `<id>.decision`, a moderator's decision on it) unless one
    /// of that name is there already: true when kept, false when there already (nothing
    /// changed). Records are sealed by their writers and never change once kept, so a
    /// proposal is decided once. Remotes without proposals refuse (`Unsupported`).
    fn put_proposal_record(&self, db: &str, name: &str, bytes: &[u8]) -> io::Result<bool> {
        let _ = (db, name, bytes);
        Err(no_proposals())
    }
    /// Proposal record `name` of database `db`, `None` when absent.
    fn get_proposal_record(&self, db: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        let _ = (db, name);
        Err(no_proposals())
    }
    /// The names of database `db`'s proposal records, sorted.
    fn list_proposal_records(&self, db: &str) -> io::Result<Vec<String>> {
        let _ = db;
        Err(no_proposals())
    }
}

/// What a client may do to a database on a remote ([`Remote::allowed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allowed {
    /// Read it (pull).
    pub read: bool,
    /// File proposals for it.
    pub propose: bool,
    /// Write it (push) and decide its proposals.
    pub write: bool,
}

fn no_proposals() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "this remote keeps no proposals")
}

/// The largest proposal record a remote takes (a proposal's message is free text: 1 MiB).
pub const MAX_PROPOSAL_RECORD: usize = 1 << 20;

/// Refuses a proposal record over [`MAX_PROPOSAL_RECORD`] (`InvalidInput`).
pub fn check_proposal_size(bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_PROPOSAL_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a proposal record is at most {MAX_PROPOSAL_RECORD} bytes ({} given)",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a proposal record's name: a proposal id (1–64 ASCII letters and digits) and
/// `.prop` (the contribution) or `.decision` (its decision). Returns the id and whether it
/// names a decision.
pub fn check_proposal_record(name: &str) -> io::Result<(&str, bool)> {
    let parsed = name
        .strip_suffix(".prop")
        .map(|id| (id, false))
        .or_else(|| name.strip_suffix(".decision").map(|id| (id, true)));
    match parsed {
        Some((id, decision))
            if !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Ok((id, decision))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a proposal record's name (ID.prop or ID.decision)"),
        )),
    }
}

/// The id `store`'s replicas go by on a remote that keeps a head record per replica (made on
/// first use; a copy of the store, or the same folder on another machine, makes its own).
pub fn replica_id(store: &kiln::Store) -> io::Result<String> {
    state::replica_id(store)
}

/// The name of replica `replica`'s head record of database `db`, on a remote that keeps one
/// per replica: `<db>~<replica>`.
pub fn replica_head(db: &str, replica: &str) -> String {
    format!("{db}~{replica}")
}

/// A head record's name split into the database id and the replica id, if any.
pub fn split_head_name(name: &str) -> (&str, Option<&str>) {
    match name.split_once('~') {
        Some((db, r)) => (db, Some(r)),
        None => (name, None),
    }
}

/// Checks a head record's name: a database id ([`check_db`]), or a database id, `~` and a
/// replica id (1–64 characters of `a–z 0–9 -`).
pub fn check_head_name(name: &str) -> io::Result<()> {
    let (db, replica) = split_head_name(name);
    check_db(db)?;
    match replica {
        Some(r)
            if r.is_empty()
                || r.len() > 64
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a remote head record's name"),
            ))
        }
        _ => Ok(()),
    }
}

/// Checks a remote database id (a head record's name): 1–128 characters of `A–Z a–z 0–9 . _
/// -`, not starting with `.` (names reach paths and URLs).
pub fn check_db(db: &str) -> io::Result<()> {
    let ok = !db.is_empty()
        && db.len() <= 128
        && !db.starts_with('.')
        && db
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{db:?} is not a remote database id"),
        ))
    }
}
