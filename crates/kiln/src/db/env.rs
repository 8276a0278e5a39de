//! What a database needs of the store it lives in: its folder, storage, keybag, cache,
//! options and settings, the GC lock, and the store's garbage collection, handed down by the
//! store (this layer imports nothing from `store`).

use super::cache::Cache;
use super::options::Options;
use super::settings::Settings;
use crate::error::Result;
use crate::keys::Keybag;
use crate::storage::local::{GcExclusive, GcLock, GcShared};
use crate::storage::{FileName, LocalStorage};
use std::path::PathBuf;
use std::sync::Arc;

/// One store's shared state (a `Store` is a handle to it).
pub(crate) struct Env {
    pub root: PathBuf,
    pub storage: Arc<LocalStorage>,
    /// `ROOT/filesets`: the file-sets of attached files (`.kfs`), apart from the diff files.
    pub filesets: Arc<LocalStorage>,
    /// File-sets purged document versions named: the next garbage collection removes each
    /// that no version names any more at once, not after the grace period.
    pub purged_sets: std::sync::Mutex<std::collections::HashSet<FileName>>,
    /// Where a file-set this store does not hold is fetched from, if anywhere.
    pub fileset_source: std::sync::RwLock<Option<Arc<dyn crate::storage::FileSource>>>,
    pub keybag: Keybag,
    pub cache: Cache,
    pub opts: Options,
    /// `ROOT/settings.json`, as last read or written by this handle.
    pub settings: std::sync::RwLock<Settings>,
    /// `ROOT/GC`: see [`GcLock`].
    pub gc: GcLock,
    /// Garbage collection of the whole store (the store's, handed down: `Database::purge`
    /// finishes through it).
    pub collect: fn(&Arc<Env>) -> Result<GcReport>,
    /// When this handle last tried, on an open or a write, to finish a database's interrupted
    /// purge and could not: such tries wait [`PURGE_RETRY`] (each is a gc of the whole store
    /// and a rewrite of the database). `gc` itself always tries.
    pub purge_tries: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How long an open or a write waits before it tries again to finish an interrupted purge
/// that it could not finish (see [`Env::purge_tries`]).
pub(crate) const PURGE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

impl Env {
    /// Holds the GC lock shared (see [`GcLock`]); busy after the lock timeout. Every write
    /// takes it first, so a read-only store refuses here ([`Env::writable`]).
    pub fn gc_shared(&self) -> Result<GcShared<'_>> {
        self.writable("a write")?;
        self.gc.shared().map_err(|e| self.gc_error(e))
    }

    /// [`crate::Error::ReadOnly`] for `what` when the store was opened read-only.
    pub fn writable(&self, what: &'static str) -> Result<()> {
        if self.opts.read_only {
            return Err(crate::error::Error::ReadOnly(self.root.clone(), what));
        }
        Ok(())
    }

    /// Holds the GC lock exclusively (garbage collection).
    pub fn gc_exclusive(&self) -> Result<GcExclusive<'_>> {
        self.writable("garbage collection")?;
        self.gc.exclusive().map_err(|e| self.gc_error(e))
    }

    fn gc_error(&self, e: std::io::Error) -> crate::error::Error {
        if e.kind() == std::io::ErrorKind::TimedOut {
            crate::error::Error::StoreBusy
        } else {
            crate::error::Error::io(self.root.join("GC"), e)
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What garbage collection of a store (`Store::gc`) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Databases whose head records were read.
    pub databases: usize,
    /// Files some database names.
    pub live_files: usize,
    /// Files no database named, removed (or archived).
    pub removed_files: usize,
    /// Bytes of those files.
    pub removed_bytes: u64,
    /// Of those, moved to the archive rather than deleted.
    pub archived: bool,
    /// Space kept for reuse by earlier removals, freed.
    pub reusable_files: u64,
    /// Bytes of those.
    pub reusable_bytes: u64,
    /// What killed creates, forks and drops left behind (`dbs/.new-*`, `dbs/.drop-*`
    /// folders), removed.
    pub leftovers_removed: usize,
    /// Keybag entries of lineages no database uses any more, removed.
    pub keys_removed: usize,
    /// Proposals no key opens any more (their target was dropped), removed.
    pub proposals_removed: usize,
    /// Archived files of lineages no database uses any more (dropped), removed with their key.
    pub archived_removed: usize,
    /// Databases whose head record could not be read, with why. Their files are kept: a file
    /// no readable head names is kept when it may be theirs (it opens under their key, or
    /// their lineage or key is unknown).
    pub unreadable: Vec<(String, String)>,
    /// Files no readable head names, kept because an unreadable database may name them.
    pub kept_files: Vec<FileName>,
    /// Databases whose unfinished purge this collection finished.
    pub purges_finished: Vec<String>,
    /// Databases whose unfinished purge could not be finished, with why.
    pub purges_unfinished: Vec<(String, String)>,
    /// Archived files removed because they held a purged version.
    pub archived_scrubbed: usize,
    /// File-sets (attached files) no document version of any database names, removed.
    pub removed_filesets: usize,
    /// Their bytes.
    pub removed_fileset_bytes: u64,
    /// File-sets no document version names yet, kept for [`crate::Options::fileset_grace`]
    /// (or because a database could not be read).
    pub kept_filesets: usize,
}

impl GcReport {
    /// Why the purge of `db` could not be finished (see [`GcReport::purges_unfinished`]).
    pub fn why_unfinished(&self, db: &str) -> String {
        self.purges_unfinished
            .iter()
            .find(|(n, _)| n == db)
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| "garbage collection did not reach it".into())
    }

    pub(crate) fn absorb(&mut self, o: GcReport) {
        self.removed_files += o.removed_files;
        self.removed_bytes += o.removed_bytes;
        self.reusable_files += o.reusable_files;
        self.reusable_bytes += o.reusable_bytes;
        self.leftovers_removed += o.leftovers_removed;
        self.keys_removed += o.keys_removed;
        self.proposals_removed += o.proposals_removed;
        self.archived_removed += o.archived_removed;
        self.live_files = o.live_files;
        self.databases = o.databases;
        self.unreadable = o.unreadable;
        self.kept_files = o.kept_files;
        self.removed_filesets += o.removed_filesets;
        self.removed_fileset_bytes += o.removed_fileset_bytes;
        self.kept_filesets = o.kept_filesets;
    }
}
