//! Syncing one database with a remote: pull (fetch the files the remote head names that this
//! store lacks, checked against their names, then take the head in: fast-forward or merge),
//! push (upload the files the remote lacks, as they are, then write the head by
//! compare-and-swap; a lost race pulls again and retries).

use crate::{FileName, HeadRead, Kind, Remote};
use kiln::{Database, FileKind, MergeReport, Store};
use std::collections::HashSet;

/// What to sync.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    /// Take the remote's changes.
    pub pull: bool,
    /// Give the remote this replica's changes.
    pub push: bool,
    /// Move file-sets (attached files) too (else documents and their `_files` only; files
    /// come on demand, see [`RemoteFiles`]).
    pub files: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            pull: true,
            push: true,
            files: true,
        }
    }
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// Diff files fetched from the remote.
    pub files_pulled: usize,
    /// Diff files uploaded.
    pub files_pushed: usize,
    /// File-sets fetched.
    pub filesets_pulled: usize,
    /// File-sets uploaded.
    pub filesets_pushed: usize,
    /// The merge of the remote's head into this one, when it changed anything.
    pub merged: Option<MergeReport>,
    /// The remote head was written.
    pub pushed: bool,
    /// Lost compare-and-swap races (each pulled again).
    pub retries: usize,
}

/// Why a sync failed.
#[derive(Debug)]
pub enum SyncError {
    /// The database said no (a damaged or foreign remote record, a missing key…).
    Kiln(kiln::Error),
    /// The remote could not be reached or refused.
    Remote(std::io::Error),
    /// Other writers kept winning the race for the remote head.
    Busy,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Kiln(e) => e.fmt(f),
            SyncError::Remote(e) => write!(f, "the remote: {e}"),
            SyncError::Busy => f.write_str("other replicas kept writing the remote head; retry"),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<kiln::Error> for SyncError {
    fn from(e: kiln::Error) -> Self {
        SyncError::Kiln(e)
    }
}

impl From<std::io::Error> for SyncError {
    fn from(e: std::io::Error) -> Self {
        SyncError::Remote(e)
    }
}

/// Attempts at writing the remote head before giving up (each lost race pulls again).
const TRIES: usize = 16;

/// Syncs database `db` of `store` with `remote`, where it is held under id `id` (see the
/// module doc). Idempotent: a sync killed at any point and run again completes (files are
/// uploaded before the head that names them, and taken in only once all are here).
pub fn sync(
    store: &Store,
    db: &Database,
    remote: &dyn Remote,
    id: &str,
    opts: SyncOptions,
) -> Result<SyncReport, SyncError> {
    crate::check_db(id)?;
    let mut r = SyncReport::default();
    for _ in 0..TRIES {
        let (etag, theirs) = match remote.read_head(id, None)? {
            HeadRead::Found { bytes, etag } => (Some(etag), Some(bytes)),
            _ => (None, None),
        };
        if let (true, Some(record)) = (opts.pull, &theirs) {
            pull(store, db, remote, id, record, opts, &mut r)?;
        }
        if !opts.push {
            return Ok(r);
        }
        let mine = db.replica_state(id)?;
        if let Some(record) = &theirs {
            let (heads, files) = db.replica_heads(id, record)?;
            if heads == mine.heads && files == mine.files {
                return Ok(r); // the remote has this state already
            }
        }
        push_files(store, remote, Kind::Diff, &mine.files, &mut r.files_pushed)?;
        if opts.files {
            push_files(
                store,
                remote,
                Kind::FileSet,
                &mine.filesets,
                &mut r.filesets_pushed,
            )?;
        }
        match remote.write_head(id, etag.as_ref(), &mine.record)? {
            Ok(_) => {
                r.pushed = true;
                return Ok(r);
            }
            Err(_) => r.retries += 1, // another replica won: pull again
        }
    }
    Err(SyncError::Busy)
}

fn file_kind(k: Kind) -> FileKind {
    match k {
        Kind::Diff => FileKind::Diff,
        Kind::FileSet => FileKind::FileSet,
    }
}

/// Fetches `name` into the store, checked against its name.
fn fetch(store: &Store, remote: &dyn Remote, kind: Kind, name: &FileName) -> Result<(), SyncError> {
    let Some(bytes) = remote.get_file(kind, name)? else {
        return Err(SyncError::Remote(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("file {name} is named by the remote head but not on the remote"),
        )));
    };
    store.keep_fetched_file(file_kind(kind), name, &bytes)?;
    Ok(())
}

fn pull(
    store: &Store,
    db: &Database,
    remote: &dyn Remote,
    id: &str,
    record: &[u8],
    opts: SyncOptions,
    r: &mut SyncReport,
) -> Result<(), SyncError> {
    for name in db.replica_files_needed(id, record)? {
        fetch(store, remote, Kind::Diff, &name)?;
        r.files_pulled += 1;
    }
    let adopted = db.adopt_replica(id, record)?;
    if adopted.changed {
        r.merged = Some(adopted.merge);
    }
    if opts.files {
        for set in db.replica_state(id)?.filesets {
            if !store.has_file(FileKind::FileSet, &set)
                && remote.get_file(Kind::FileSet, &set)?.is_some()
            {
                fetch(store, remote, Kind::FileSet, &set)?;
                r.filesets_pulled += 1;
            }
        }
    }
    Ok(())
}

/// Uploads the files of `names` the remote lacks (one listing, then one upload each).
fn push_files(
    store: &Store,
    remote: &dyn Remote,
    kind: Kind,
    names: &[FileName],
    count: &mut usize,
) -> Result<(), SyncError> {
    if names.is_empty() {
        return Ok(());
    }
    let there: HashSet<FileName> = remote.list_files(kind)?.into_iter().map(|x| x.0).collect();
    for n in names.iter().filter(|n| !there.contains(n)) {
        // A file-set not here (this replica never fetched it) is not this replica's to give.
        let Some(bytes) = store.stored_file(file_kind(kind), n)? else {
            if kind == Kind::FileSet {
                continue;
            }
            return Err(SyncError::Kiln(kiln::Error::MissingFile(*n, String::new())));
        };
        remote.put_file(kind, n, &bytes)?;
        *count += 1;
    }
    Ok(())
}

/// File-sets fetched on first read from a remote (plug into [`Store::set_fileset_source`]):
/// a replica synced without files reads them when it needs them.
#[derive(Debug)]
pub struct RemoteFiles<R: Remote>(pub R);

impl<R: Remote> kiln::FileSource for RemoteFiles<R> {
    fn fetch(&self, name: &FileName, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        match self.0.get_file(Kind::FileSet, name)? {
            Some(b) => out.write_all(&b).map(|()| true),
            None => Ok(false),
        }
    }
}
