//! A store: one root folder holding any number of databases, a shared pool of diff files and
//! the keybag.
//!
//! ```text
//! ROOT/KILN                  store marker: {"kiln_store":2,"id":"<uuid>","keys":"outside"}
//! ROOT/settings.json         store settings (optional, see `settings`)
//! ROOT/GC                    lock between garbage collection and writers (empty)
//! ROOT/files/.archive/ab/…   retired files, when the store keeps an archive
//! ROOT/files/.pool/…         removed files kept for reuse
//! ROOT/dbs/<name>/settings.json  database settings (optional)
//! ROOT/dbs/<name>/HEAD       head record (replaced atomically)
//! ROOT/dbs/<name>/LOCK       writer lock (flock) + commit counter
//! ROOT/files/ab/<hash>.kdf   diff files, named by the hash of their bytes (BLAKE3; sha2-256
//!                            for files of format versions 1 and 2)
//! ROOT/keys/<l>.shared       the lineage has forks (with the keys when they are in the store)
//! KEYS/<store id>/<l>.key    keybag entries (0600), outside the store (`keyplace`); in
//!                            ROOT/keys/ for stores that keep them there
//! ```

mod handles;
pub mod keyplace;
pub mod proposals;

use crate::db::cache::Cache;
use crate::db::env::Env;
pub use crate::db::env::GcReport;
pub use crate::db::options::{Durability, Options};
use crate::db::settings::Settings;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::format::car::FileName;
use crate::format::head::Head;
use crate::format::seal::Key;
use crate::keys::Lineage;
use crate::storage::local::GcLock;
use crate::storage::{sync_dir, write_atomic, LocalStorage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A store of databases under one root folder: the databases, the diff files they share, the
/// keybag. Cheap to clone; safe to share between threads and processes.
///
/// ```
/// # fn main() -> kiln::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = kiln::Store::open(dir.path())?;           // creates the store if absent
/// let notes = store.create(Some("notes"))?;
/// notes.put(&serde_json::json!({"_id": "n1", "text": "hello"}))?;
/// let draft = store.fork("notes", Some("draft"))?;      // O(1): shares notes' files
/// draft.put(&serde_json::json!({"_id": "n1", "text": "hello, world"}))?;
/// assert_eq!(store.list()?, ["draft", "notes"]);
/// notes.merge_from(&draft, None)?;                       // three-way; conflicts reported
/// assert_eq!(notes.get("n1")?.unwrap()["text"], "hello, world");
/// store.drop_db("draft")?;
/// let report = store.gc()?;                              // what crashes left, if anything
/// assert!(report.unreadable.is_empty());
/// // Reading tools open without creating: a mistyped path is an error.
/// assert!(kiln::Store::open_existing(dir.path().join("typo"), kiln::Options::default()).is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Env>,
    /// Open database handles to hand out again (see [`handles`]).
    handles: Arc<handles::Handles>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root()).finish()
    }
}

use keyplace::{Marker, MARKER};
/// Prefix of a database folder being created (or forked) under `dbs/`, renamed into place
/// when whole.
const NEW_PREFIX: &str = ".new-";
/// Prefix a dropped database's folder is renamed to (the drop's commit point), removed when
/// its files and key are gone.
const DROP_PREFIX: &str = ".drop-";
const SETTINGS: &str = "settings.json";
const GC: &str = "GC";
/// The folder of file-sets (attached files), beside `files/`.
pub(crate) const FILESETS: &str = "filesets";

/// The two kinds of immutable files a store keeps (and a remote: see `kiln-sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Diff files (`files/`).
    Diff,
    /// File-sets (`filesets/`).
    FileSet,
}

/// While held, garbage collection of the store waits (in every process), and the diff files
/// kept through it stay where they are (this process's own cleanups leave them too) until a
/// head record names them (see [`Store::hold_files`]).
pub struct FilesHold<'a> {
    _gc: crate::storage::local::GcShared<'a>,
    store: &'a Store,
    kept: std::sync::Mutex<Vec<FileName>>,
}

impl FilesHold<'_> {
    /// Keeps a diff file fetched from elsewhere (a remote), if its bytes hash to its name
    /// (else [`Error::Corrupt`], nothing kept), not yet durable: [`FilesHold::sync`] makes
    /// those kept durable at once, before a head record names them. Written as a new file
    /// renamed over whatever holds the name (never into a file this store retired and may
    /// reuse), and held until the hold ends.
    pub fn keep(&self, name: &FileName, bytes: &[u8]) -> Result<()> {
        let storage = &self.store.inner.storage;
        storage.hold(name);
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(*name);
        self.store.keep_fetched(FileKind::Diff, name, bytes, false)
    }

    /// Makes the files kept through this hold durable.
    pub fn sync(&self) -> Result<()> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.store.sync_fetched(FileKind::Diff, &kept)
    }
}

impl Drop for FilesHold<'_> {
    fn drop(&mut self) {
        let kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|p| p.into_inner()));
        for n in &kept {
            self.store.inner.storage.release(n);
        }
    }
}

/// Longest database name.
pub const MAX_NAME: usize = 128;

/// Checks a database name: 1–128 of `A–Z a–z 0–9 . _ -`, not starting with `.`.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return bad("a name must not be empty");
    }
    if name.len() > MAX_NAME {
        return bad("a name is at most 128 characters");
    }
    if name.starts_with('.') {
        return bad("a name must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("use only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

impl Store {
    /// The default root: `$KILN_ROOT`, else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("KILN_ROOT").filter(|v| !v.is_empty()) {
            return PathBuf::from(r);
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("kiln");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/share/kiln")
    }

    /// Opens the store at `root`, creating it if absent.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(root, Options::default())
    }

    /// Opens the store at `root` only if one is there: unlike [`Store::open_with`] it never
    /// creates anything, and a folder without a store (or no folder) is
    /// [`Error::NoStore`]. For readers, so a mistyped path does not become a new store.
    pub fn open_existing(root: impl AsRef<Path>, opts: Options) -> Result<Store> {
        let root = root.as_ref();
        let marker = root.join(MARKER);
        match std::fs::symlink_metadata(&marker) {
            Ok(_) => Store::open_with(root, opts),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Err(Error::NoStore(root.to_path_buf()))
            }
            Err(e) => Err(Error::io(&marker, e)),
        }
    }

    /// Opens the store at `root` with `opts`, creating it if absent (unless `opts.read_only`:
    /// then [`Error::NoStore`]).
    pub fn open_with(root: impl AsRef<Path>, opts: Options) -> Result<Store> {
        // The helper thread large batches share their work with starts with the store, not
        // inside the first batch (~70 µs there).
        crate::util::par::warm();
        let root = root.as_ref().to_path_buf();
        let marker = match Marker::read(&root)? {
            Some(m) => m,
            None if opts.read_only => return Err(Error::NoStore(root)),
            None => {
                for d in [root.clone(), root.join("dbs")] {
                    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                }
                // The shard folders and the reserve of empty files exist from the start, so
                // no commit pays for making them.
                let files = root.join("files");
                let s = LocalStorage::with_reserve(&files, opts.reserve_files);
                s.create_shards()
                    .and_then(|()| s.fill_reserve())
                    .map_err(|e| Error::io(&files, e))?;
                let sets = root.join(FILESETS);
                LocalStorage::with_ext(&sets, ".kfs")
                    .create_shards()
                    .map_err(|e| Error::io(&sets, e))?;
                let m = Marker::new(&opts.keys);
                keyplace::create(&root, &m, &opts.keys)?;
                if m.write_new(&root)? {
                    m
                } else {
                    // Another process made the store meanwhile: its marker (and keybag) stand.
                    Marker::read(&root)?.ok_or_else(|| Error::NoStore(root.clone()))?
                }
            }
        };
        let gc = if opts.read_only {
            GcLock::read_only(&root, opts.lock_timeout).map_err(|e| Error::io(&root, e))?
        } else {
            GcLock::open(root.join(GC), opts.lock_timeout)
                .map_err(|e| Error::io(root.join(GC), e))?
        };
        let keybag = if opts.read_only {
            keyplace::keybag_of(&root, &marker, &opts.keys)?
        } else {
            keyplace::settle(&root, marker, &opts.keys, &gc)?
        };
        let cache = Cache::new(opts.cache_bytes);
        let settings = Settings::read(&root.join(SETTINGS))?;
        let handles = Arc::new(handles::Handles::new(opts.open_databases));
        Ok(Store {
            handles,
            inner: Arc::new(Env {
                storage: Arc::new(LocalStorage::with_reserve(
                    root.join("files"),
                    opts.reserve_files,
                )),
                filesets: Arc::new(LocalStorage::with_ext(root.join(FILESETS), ".kfs")),
                fileset_source: Default::default(),
                purged_sets: Default::default(),
                keybag,
                gc,
                root,
                cache,
                opts,
                settings: std::sync::RwLock::new(settings),
                purge_tries: Default::default(),
                collect: |env| {
                    Store {
                        inner: env.clone(),
                        handles: Arc::new(handles::Handles::new(0)),
                    }
                    .gc()
                },
            }),
        })
    }

    /// The store's settings (`ROOT/settings.json`).
    pub fn settings(&self) -> Settings {
        self.inner.settings()
    }

    /// Replaces the store's settings. They apply to databases opened afterwards (and to this
    /// handle's open databases at once).
    pub fn set_settings(&self, s: &Settings) -> Result<()> {
        self.inner.writable("a settings change")?;
        let p = self.inner.root.join(SETTINGS);
        s.write(&p, self.inner.opts.durability == Durability::Full)?;
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = s.clone();
        Ok(())
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The store's id (its marker's): a random UUID given when it was made, and anew to a copy
    /// of its folder opened for writing. What the store's replicas are known by on a remote.
    /// [`Error::InvalidArgument`] for a store of format 1 never opened for writing since.
    pub fn id(&self) -> Result<String> {
        keyplace::id_of(&self.inner.root)?
            .map(|u| u.to_string())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the store at {} has no id yet: open it once for writing",
                    self.inner.root.display()
                ))
            })
    }

    /// The folder its keys are kept in (outside the store's folder unless the store keeps
    /// them in it: [`Options::keys`]).
    pub fn keys_dir(&self) -> &Path {
        self.inner.keybag.dir()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Bytes the shared block cache holds now (bounded by [`Options::cache_bytes`]).
    pub fn cache_weight(&self) -> usize {
        self.inner.cache.weight()
    }

    fn dbs(&self) -> PathBuf {
        self.inner.root.join("dbs")
    }

    /// Creates a database. `None` names it with a fresh UUID.
    pub fn create(&self, name: Option<&str>) -> Result<Database> {
        self.create_with(name, &Settings::default())
    }

    /// Creates a database with its own settings (only `compact_threshold` applies to a
    /// database).
    pub fn create_with(&self, name: Option<&str>, settings: &Settings) -> Result<Database> {
        // Kept for `open_db` once the store's locks are let go (keeping may close another
        // handle, whose drop waits for its merge).
        let db = self.create_unkept(name, settings)?;
        self.handles.keep(&db);
        Ok(db)
    }

    fn create_unkept(&self, name: Option<&str>, settings: &Settings) -> Result<Database> {
        if settings.keep_archive.is_some() {
            return Err(Error::InvalidArgument(
                "keep_archive is a store setting, not a database one".into(),
            ));
        }
        settings.validate()?;
        let name = self.new_name(name)?;
        let sync = self.inner.opts.durability == Durability::Full;
        let lineage: Lineage = *uuid::Uuid::new_v4().as_bytes();
        let key = Key::generate().map_err(|e| Error::io(self.dbs(), e))?;
        // From the key's write until the database is in place, garbage collection (which
        // removes keys no database uses) waits.
        let _gc = self.inner.gc_shared()?;
        self.inner.keybag.put(&lineage, &key, sync)?;
        match self.place(&name, &lineage, &key, &Head::default(), settings, None) {
            Ok(db) => Ok(db),
            Err(e) => {
                let _ = self.inner.keybag.remove(&lineage);
                Err(e)
            }
        }
    }

    /// Forks `src` into a new database (a fresh UUID name when `dst` is `None`) that starts
    /// at `src`'s current state and shares its files and its lineage's key: no file is copied,
    /// the store grows by one head record. Writes to either side do not show on the other.
    /// From now on neither deletes files by itself (they are shared); `gc` does, by reference.
    pub fn fork(&self, src: &str, dst: Option<&str>) -> Result<Database> {
        let db = self.fork_unkept(src, dst)?;
        self.handles.keep(&db);
        Ok(db)
    }

    fn fork_unkept(&self, src: &str, dst: Option<&str>) -> Result<Database> {
        self.inner.writable("a fork")?;
        let source = self.open_db(src)?;
        let name = self.new_name(dst)?;
        let sync = self.inner.opts.durability == Durability::Full;
        let lineage = source.lineage();
        // Shared before the head is read: a compaction of `src` that has not yet deleted the
        // files it replaced sees the mark and keeps them; one that already did has written the
        // head record read below (it deletes under the writer lock, which the read waits for).
        self.inner.keybag.mark_shared(&lineage, sync)?;
        // From reading the files the fork will name until its head record is in place (where
        // gc can see it): gc must not take them meanwhile.
        let _gc = self.inner.gc_shared()?;
        let mut head = source.head_for_fork()?;
        head.seq = 0;
        // The fork shares its source's derived data (indexes) as it shares its files: placed
        // with it, so a fork is never seen without its index definitions.
        let derived = source.derived_bytes()?;
        self.place(
            &name,
            &lineage,
            &source.key(),
            &head,
            &Settings::default(),
            derived.as_deref(),
        )
    }

    /// A name for a new database: the given one (checked, and not taken) or a fresh UUID.
    fn new_name(&self, name: Option<&str>) -> Result<String> {
        let name = match name {
            Some(n) => n.to_owned(),
            None => uuid::Uuid::new_v4().hyphenated().to_string(),
        };
        check_name(&name)?;
        if self.dbs().join(&name).exists() {
            return Err(Error::DatabaseExists(name));
        }
        Ok(name)
    }

    /// Writes a database folder holding `head` (and `derived`, a sealed derived record, if
    /// any) under a hidden name, then renames it into place: a database appears whole or not
    /// at all, and two creators of one name cannot both win.
    fn place(
        &self,
        name: &str,
        lineage: &Lineage,
        key: &Key,
        head: &Head,
        settings: &Settings,
        derived: Option<&[u8]>,
    ) -> Result<Database> {
        let dbs = self.dbs();
        let final_dir = dbs.join(name);
        let sync = self.inner.opts.durability == Durability::Full;
        // Until it is renamed into place, garbage collection (which removes leftover `.new-*`
        // folders) waits.
        let _gc = self.inner.gc_shared()?;
        let tmp = dbs.join(format!("{NEW_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let result = (|| {
            let bytes = head.seal(lineage, key).map_err(|e| Error::io(&tmp, e))?;
            let hp = tmp.join("HEAD");
            write_atomic(&hp, &bytes, sync, None).map_err(|e| Error::io(&hp, e))?;
            let lp = tmp.join("LOCK");
            std::fs::write(&lp, [0u8; 16]).map_err(|e| Error::io(&lp, e))?;
            if let Some(bytes) = derived {
                let dp = tmp.join(crate::db::derived::DERIVED);
                write_atomic(&dp, bytes, sync, None).map_err(|e| Error::io(&dp, e))?;
            }
            settings.write(&tmp.join(SETTINGS), sync)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(if final_dir.exists() {
                Error::DatabaseExists(name.to_owned())
            } else {
                Error::io(&final_dir, e)
            });
        }
        if sync {
            sync_dir(&dbs).map_err(|e| Error::io(&dbs, e))?;
        }
        self.open_plain(name)
    }

    /// Opens an existing database. If a purge of it was committed but not finished (the
    /// process doing it died), this finishes it first when it can (see [`Database::purge`]);
    /// when it cannot, the database still opens, purged versions still read as purged, and
    /// `verify` and `gc` report the unfinished purge.
    ///
    /// A database opened lately through this store (or created or forked through it) is
    /// handed out again: the same handle, its caches and file descriptors (see
    /// [`Options::open_databases`]). A handle that failed a write, or whose database was
    /// dropped meanwhile, is not.
    pub fn open_db(&self, name: &str) -> Result<Database> {
        check_name(name)?;
        if let Some(db) = self.handles.take(name) {
            if db.still_good() {
                // As a fresh open would: settings read again, an interrupted purge retried.
                db.forget_settings();
                if db.scrubbing_as_read() && !self.inner.opts.read_only {
                    db.finish_purge_soon();
                }
                self.handles.keep(&db);
                return Ok(db);
            }
        }
        let db = self.open_plain(name)?;
        if db.scrubbing_as_read() && !self.inner.opts.read_only {
            db.finish_purge_soon();
        }
        self.handles.keep(&db);
        Ok(db)
    }

    /// Makes every commit made so far in this store durable (see [`Database::sync`]).
    pub fn sync(&self) -> Result<()> {
        crate::storage::sync_file_system(self.root()).map_err(|e| Error::io(self.root(), e))
    }

    /// Lets go of the database handles this store keeps to hand out again, each closed
    /// ([`Database::close`]: background merges finished), then makes every commit durable.
    /// Handles the program still holds stay open.
    pub fn close(self) -> Result<()> {
        let mut first = None;
        for db in self.handles.drain() {
            if let Err(e) = db.close() {
                first.get_or_insert(e);
            }
        }
        match (self.sync(), first) {
            (_, Some(e)) | (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(()),
        }
    }

    /// How many database handles this store keeps open to hand out again.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Opens an existing database, nothing more.
    fn open_plain(&self, name: &str) -> Result<Database> {
        check_name(name)?;
        Database::open(self.inner.clone(), name, self.dbs().join(name))
    }

    /// Sets where file-sets (attached files' bytes) this store does not hold are fetched
    /// from when a read needs one (`None`: nowhere; such a read fails with
    /// [`Error::FileSetUnavailable`]). A fetched file-set is kept only if its bytes hash to its
    /// name, and then stays in the store like any other.
    pub fn set_fileset_source(&self, source: Option<Arc<dyn crate::storage::FileSource>>) {
        *self
            .inner
            .fileset_source
            .write()
            .unwrap_or_else(|p| p.into_inner()) = source;
    }

    /// Whether a database of that name exists.
    pub fn exists(&self, name: &str) -> bool {
        check_name(name).is_ok() && self.dbs().join(name).join("HEAD").exists()
    }

    /// Names of all databases, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let dbs = self.dbs();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dbs).map_err(|e| Error::io(&dbs, e))? {
            let e = e.map_err(|e| Error::io(&dbs, e))?;
            // A database is a folder with a database's name (a stray file, or a folder no
            // database could be named, is not one).
            if !e.file_type().map_err(|x| Error::io(e.path(), x))?.is_dir() {
                continue;
            }
            if let Some(n) = e.file_name().to_str() {
                if check_name(n).is_ok() {
                    out.push(n.to_owned());
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Removes every file no database's head record names (moves it to the archive when the
    /// store keeps one), frees the space removed files kept for reuse, and finishes what
    /// killed commands left: `dbs/.new-*` and `dbs/.drop-*` folders, keys of lineages no
    /// database uses, proposals no key opens, and unfinished purges (see
    /// [`Database::purge`]). Safe while other handles and processes write: it holds the
    /// store's GC lock exclusively, which every writer holds shared from writing a file until
    /// a head record names it (and creators from writing a key until the database is in
    /// place).
    ///
    /// A database whose head record cannot be read does not stop it: it is reported in
    /// [`GcReport::unreadable`] and whatever may be its (files that open under its key, or
    /// every unnamed file and key when its lineage or key is unknown) is kept.
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with_fileset_grace(self.inner.opts.fileset_grace)
    }

    /// [`Store::gc`], removing unnamed file-sets once older than `grace` (instead of
    /// [`Options::fileset_grace`]): `Duration::ZERO` removes every file-set no document
    /// version names now, also one a write running meanwhile (a transaction not committed
    /// yet, or a `put_with_files` between its file-set and its commit) is about to name: use it
    /// only while nothing writes.
    pub fn gc_with_fileset_grace(&self, grace: std::time::Duration) -> Result<GcReport> {
        let (mut r, scrubbing) = self.sweep(grace)?;
        if scrubbing.is_empty() {
            return Ok(r);
        }
        // Unfinished purges: each database rewrites its files without the purged versions
        // (under its own writer lock, so not under the exclusive GC lock), then a second sweep
        // removes the files that held them, and the purge's mark is cleared.
        let mut done = Vec::new();
        for db in scrubbing {
            match db.scrub_files() {
                Ok(Some(purged)) => done.push((db, purged)),
                Ok(None) => {}
                Err(e) => r.purges_unfinished.push((db.name().into(), e.to_string())),
            }
        }
        let (again, _) = self.sweep(grace)?;
        r.absorb(again);
        for (db, purged) in done {
            let name = db.name().to_owned();
            if let Some(f) = r
                .kept_files
                .iter()
                .find(|f| self.file_opens_with(f, &[db.key()]))
            {
                r.purges_unfinished.push((
                    name,
                    format!(
                        "file {f} may hold purged versions but is kept: a database whose head \
                         record cannot be read may name it ({})",
                        unreadable_names(&r)
                    ),
                ));
                continue;
            }
            match db.scrub_done(&purged) {
                Ok(n) => {
                    r.archived_scrubbed += n;
                    r.purges_finished.push(name);
                }
                Err(e) => r.purges_unfinished.push((name, e.to_string())),
            }
        }
        Ok(r)
    }

    /// One pass of garbage collection under the exclusive GC lock (see [`Store::gc`]);
    /// returns the report and the databases with an unfinished purge.
    fn sweep(&self, grace: std::time::Duration) -> Result<(GcReport, Vec<Database>)> {
        let _x = self.inner.gc_exclusive()?;
        let storage = &self.inner.storage;
        let files_dir = self.inner.root.join("files");
        let mut r = GcReport {
            leftovers_removed: self.remove_leftovers()?,
            ..GcReport::default()
        };
        let listed = storage.list().map_err(|e| Error::io(&files_dir, e))?;
        let mut live = std::collections::HashSet::new();
        // Lineages some database uses, and what may be an unreadable database's.
        let mut lineages = std::collections::HashSet::new();
        let mut damaged = Damaged::default();
        // The file-sets some document version names; unknown when a database cannot be read.
        let mut named_sets = std::collections::HashSet::new();
        let mut sets_known = true;
        let mut scrubbing = Vec::new();
        let names = self.list()?;
        for name in &names {
            let dir = self.dbs().join(name);
            if ["HEAD", "HEAD.next", "LOCK"]
                .iter()
                .all(|f| !dir.join(f).exists())
            {
                // A folder with none of a database's files is no database (nor damage to one).
                continue;
            }
            let named = self.open_plain(name).and_then(|db| {
                let mut files = db.file_names()?;
                files.extend(db.derived_file_names()?);
                Ok((db, files))
            });
            let named = named.and_then(|(db, files)| {
                let sets = db.fileset_refs()?;
                Ok((db, files, sets))
            });
            let (db, files) = match named {
                Ok((db, files, sets)) => {
                    named_sets.extend(sets);
                    (db, files)
                }
                // Dropped meanwhile: nothing to keep. (Not while the folder is in place: no
                // drop commits while gc holds its lock, so that is damage, kept below.)
                Err(Error::NoSuchDatabase(_)) if !self.dbs().join(name).exists() => continue,
                Err(e) => {
                    sets_known = false;
                    r.unreadable.push((name.clone(), e.to_string()));
                    match self.lineage_on_disk(name) {
                        Some(l) => {
                            lineages.insert(l);
                            match self.inner.keybag.get(&l) {
                                Ok(Some(k)) => damaged.keys.push(k),
                                _ => damaged.keyless = true,
                            }
                        }
                        None => damaged.unknown = true,
                    }
                    continue;
                }
            };
            lineages.insert(db.lineage());
            live.extend(files);
            if db.scrubbing().unwrap_or(false) {
                scrubbing.push(db);
            }
        }
        let all_keys = if damaged.keyless && !damaged.unknown {
            self.inner.keybag.all()?
        } else {
            Vec::new()
        };
        let archive = self.settings().keep_archive.unwrap_or(false);
        r.databases = names.len();
        r.live_files = live.len();
        r.archived = archive;
        // The archive keeps the history of the lineages databases use: a file no key of
        // theirs opens (a dropped database's, its key gone or going) is removed, not archived.
        let archive_keys: Vec<Key> = if archive {
            lineages
                .iter()
                .filter_map(|l| self.inner.keybag.get(l).ok().flatten())
                .collect()
        } else {
            Vec::new()
        };
        for f in listed.iter().filter(|f| !live.contains(*f)) {
            if damaged.may_own(|keys| self.file_opens_with(f, keys), &all_keys) {
                r.kept_files.push(*f);
                continue;
            }
            let len = storage.len(f).unwrap_or(0);
            // (A derived file, an index's, is removed: a purge clears derived data, which the
            // archive would otherwise keep.)
            let level = archive
                .then(|| self.file_level_with(f, &archive_keys))
                .flatten();
            let done = match level {
                Some(l) if l != crate::db::derived::DERIVED_FILE_LEVEL => storage.archive(f),
                _ => storage.remove(f),
            };
            done.map_err(|e| Error::io(&files_dir, e))?;
            r.removed_files += 1;
            r.removed_bytes += len;
        }
        let (n, b) = storage
            .clear_reusable()
            .map_err(|e| Error::io(&files_dir, e))?;
        r.reusable_files = n;
        r.reusable_bytes = b;
        if !damaged.unknown {
            // A lineage's archived files go before its key: they open under it alone.
            let unused = self.inner.keybag.unused_keys(&lineages)?;
            r.archived_removed = self.remove_archived_of(&unused)?;
            r.keys_removed = self.inner.keybag.remove_unused(&lineages)?;
        }
        r.proposals_removed = self.remove_unreadable_proposals()?;
        self.sweep_filesets(&named_sets, sets_known, grace, &mut r)?;
        Ok((r, scrubbing))
    }

    /// Removes the file-sets no document version names (`named`), once older than
    /// [`Options::fileset_grace`] (all are kept when `known` is false: a database could not be
    /// read), and the partial file-sets a crash left (writers hold the GC lock while they
    /// write one, so none is being written).
    fn sweep_filesets(
        &self,
        named: &std::collections::HashSet<FileName>,
        known: bool,
        grace: std::time::Duration,
        r: &mut GcReport,
    ) -> Result<()> {
        let sets = &self.inner.filesets;
        let dir = self.inner.root.join(FILESETS);
        let io = |e| Error::io(&dir, e);
        let mut purged = self
            .inner
            .purged_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for s in sets.list().map_err(io)? {
            if named.contains(&s) {
                continue;
            }
            // A purged version's file-set goes now (its content with it), if no version names it.
            if known && purged.remove(&s) {
                let len = sets.len(&s).unwrap_or(0);
                sets.erase(&s).map_err(io)?;
                r.removed_filesets += 1;
                r.removed_fileset_bytes += len;
                continue;
            }
            let path = sets.path(&s);
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if !known || age.is_none_or(|a| a < grace) {
                r.kept_filesets += 1;
                continue;
            }
            let len = sets.len(&s).unwrap_or(0);
            sets.erase(&s).map_err(io)?;
            r.removed_filesets += 1;
            r.removed_fileset_bytes += len;
        }
        sets.clear_reusable().map_err(io)?;
        crate::storage::local::content_map::prune(&dir, &|n| sets.len(n).is_ok()).map_err(io)?;
        Ok(())
    }

    /// Removes the folders killed creates, forks and drops left under `dbs/` (callers hold the
    /// GC lock exclusively: creators hold it shared while their folder is unfinished).
    fn remove_leftovers(&self) -> Result<usize> {
        let dbs = self.dbs();
        let mut n = 0;
        for e in std::fs::read_dir(&dbs).map_err(|e| Error::io(&dbs, e))? {
            let e = e.map_err(|e| Error::io(&dbs, e))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(NEW_PREFIX) || name.starts_with(DROP_PREFIX) {
                let p = e.path();
                match std::fs::remove_dir_all(&p) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&p, e)),
                }
            }
        }
        if n > 0 && self.inner.opts.durability == Durability::Full {
            sync_dir(&dbs).map_err(|e| Error::io(&dbs, e))?;
        }
        Ok(n)
    }

    /// Holds off garbage collection (of every process on this store) until dropped: what a
    /// sync does from fetching a replica's files until a head record names them. Commits go
    /// on meanwhile; a gc waits (and gives up after the store's lock timeout).
    pub fn hold_files(&self) -> Result<FilesHold<'_>> {
        Ok(FilesHold {
            _gc: self.inner.gc_shared()?,
            store: self,
            kept: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The bytes of a file this store holds (`None`: not here), for a replica to upload.
    pub fn stored_file(&self, kind: FileKind, name: &FileName) -> Result<Option<Vec<u8>>> {
        match self.files_of(kind).read(name) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("file {name}"), e)),
        }
    }

    /// Whether this store holds a file of that name.
    pub fn has_file(&self, kind: FileKind, name: &FileName) -> bool {
        self.files_of(kind).len(name).is_ok()
    }

    /// Keeps a file fetched from elsewhere (a remote) if its bytes hash to its name (else
    /// [`Error::Corrupt`], nothing kept). It is written as a new file renamed over whatever
    /// holds the name (never into a file this store retired and may reuse). It becomes part
    /// of a database when a head record names it ([`Database::take_in`]); until then garbage
    /// collection may remove it, unless the caller holds [`Store::hold_files`].
    pub fn keep_fetched_file(&self, kind: FileKind, name: &FileName, bytes: &[u8]) -> Result<()> {
        self.keep_fetched(kind, name, bytes, true)
    }

    /// Makes files kept without syncing durable.
    fn sync_fetched(&self, kind: FileKind, names: &[FileName]) -> Result<()> {
        self.files_of(kind)
            .sync_named(names)
            .map_err(|e| Error::io(self.root().join("files"), e))
    }

    fn keep_fetched(
        &self,
        kind: FileKind,
        name: &FileName,
        bytes: &[u8],
        sync: bool,
    ) -> Result<()> {
        self.inner.writable("keeping a fetched file")?;
        let actual = match kind {
            FileKind::Diff => FileName::of(bytes),
            FileKind::FileSet => FileName(*blake3::hash(bytes).as_bytes()),
        };
        if actual != *name {
            return Err(Error::corrupt(
                format!("fetched file {name}"),
                "its bytes do not hash to its name",
            ));
        }
        let _gc = self.inner.gc_shared()?;
        if kind == FileKind::Diff {
            // Live again: a spare of this process under the name is not reused.
            self.inner.storage.unspare(name);
        }
        self.files_of(kind)
            .restore_with(name, bytes, sync)
            .map_err(|e| Error::io(format!("file {name}"), e))
    }

    fn files_of(&self, kind: FileKind) -> &crate::storage::LocalStorage {
        match kind {
            FileKind::Diff => &self.inner.storage,
            FileKind::FileSet => &self.inner.filesets,
        }
    }

    /// Database `name`'s key as one line of text, to carry it to another machine (`kiln key
    /// export`): wrapped under `passphrase` (Argon2id, then AES-256-GCM; docs/format.md
    /// "Exported key"), or raw with `None`. Whoever holds it (and the passphrase) reads every
    /// database of the lineage; kiln never sends it to a remote.
    pub fn export_key(&self, name: &str, passphrase: Option<&str>) -> Result<String> {
        if passphrase.is_some_and(str::is_empty) {
            return Err(Error::InvalidArgument(
                "an empty passphrase wraps nothing".into(),
            ));
        }
        let db = self.open_db(name)?;
        crate::format::key_export::export(&db.key(), &db.lineage(), passphrase)
            .map_err(|e| Error::io("the random source", e))
    }

    /// Stores an exported key (see [`Store::export_key`]) for database `name`. When its head
    /// record is here (a replica pulled without its key), the key must be of the database's
    /// lineage and open its head record; when there is no such database, an empty one of the
    /// key's lineage is made (a new replica: a sync takes the database's state in). Returns
    /// false when the keybag holds it already; a different key for the lineage is refused,
    /// nothing changed.
    pub fn import_key(&self, name: &str, text: &str, passphrase: Option<&str>) -> Result<bool> {
        self.inner.writable("importing a key")?;
        check_name(name)?;
        let (lineage, key) = crate::format::key_export::import(text, passphrase)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let Some(on_disk) = self.lineage_on_disk(name) else {
            if self.dbs().join(name).exists() {
                return Err(Error::corrupt(
                    format!("database '{name}'"),
                    "its head record does not read",
                ));
            }
            return self.new_replica(name, &lineage, &key).map(|_| true);
        };
        if on_disk != lineage {
            return Err(Error::InvalidArgument(format!(
                "this key is of lineage {}; database '{name}' is of {}",
                crate::keys::lineage_string(&lineage),
                crate::keys::lineage_string(&on_disk)
            )));
        }
        let hp = self.dbs().join(name).join("HEAD");
        let head = std::fs::read(&hp).map_err(|e| Error::io(&hp, e))?;
        if Head::open(&head, &key).is_err() {
            return Err(Error::InvalidArgument(format!(
                "this key does not open database '{name}' (its lineage matches: the key is wrong)"
            )));
        }
        match self.inner.keybag.get(&lineage)? {
            Some(k) if k.export_raw() == key.export_raw() => Ok(false),
            Some(_) => Err(Error::InvalidArgument(format!(
                "the keybag holds another key for database '{name}''s lineage; nothing changed"
            ))),
            None => {
                let sync = self.inner.opts.durability == Durability::Full;
                self.inner.keybag.put(&lineage, &key, sync)?;
                Ok(true)
            }
        }
    }

    /// Whether databases `a` and `b` are of one lineage (a fork and its source, replicas of
    /// one database: they share a key and can merge).
    pub fn same_lineage(&self, a: &str, b: &str) -> Result<bool> {
        Ok(self.open_db(a)?.lineage() == self.open_db(b)?.lineage())
    }

    /// A new, empty database `name` of database `of`'s lineage (its key): a replica to pull
    /// a database of that lineage into from a remote (a fork of `of` that a contributor
    /// pushed, say). Refused when `name` exists.
    pub fn replica_of(&self, name: &str, of: &str) -> Result<Database> {
        self.inner.writable("a new database")?;
        let src = self.open_db(of)?;
        self.new_replica(name, &src.lineage(), &src.key())
    }

    /// A new, empty database `name` of `lineage` under `key` (another machine's, imported): a
    /// replica to take that database's state in by sync. Refused when the keybag holds
    /// another key for the lineage.
    fn new_replica(&self, name: &str, lineage: &Lineage, key: &Key) -> Result<Database> {
        let name = self.new_name(Some(name))?;
        let sync = self.inner.opts.durability == Durability::Full;
        let _gc = self.inner.gc_shared()?;
        match self.inner.keybag.get(lineage)? {
            Some(k) if k.export_raw() != key.export_raw() => {
                return Err(Error::InvalidArgument(format!(
                    "the keybag holds another key for this key's lineage; nothing changed                      (database '{name}' not made)"
                )))
            }
            Some(_) => {}
            None => self.inner.keybag.put(lineage, key, sync)?,
        }
        self.inner.keybag.mark_shared(lineage, sync)?;
        let db = self.place(
            &name,
            lineage,
            key,
            &Head::default(),
            &Settings::default(),
            None,
        )?;
        self.handles.keep(&db);
        Ok(db)
    }

    /// The lineage a database's head record names in plaintext, if it can be read.
    fn lineage_on_disk(&self, name: &str) -> Option<Lineage> {
        let b = std::fs::read(self.dbs().join(name).join("HEAD")).ok()?;
        Head::lineage(&b).ok()
    }

    /// Whether diff file `f`'s sealed index opens under one of `keys` (the file is of that
    /// lineage). A file that cannot be read opens under none.
    fn file_opens_with(&self, f: &FileName, keys: &[Key]) -> bool {
        self.file_level_with(f, keys).is_some()
    }

    /// The level diff file `f`'s sealed index records, when it opens under one of `keys`.
    fn file_level_with(&self, f: &FileName, keys: &[Key]) -> Option<u8> {
        let storage = &self.inner.storage;
        let len = storage.len(f).ok()?;
        let t_at = len.saturating_sub(crate::format::car::TRAILER_LEN as u64);
        let t = storage
            .read_at(f, t_at, crate::format::car::TRAILER_LEN)
            .ok()?;
        let (at, ilen) = crate::format::car::parse_trailer(len, &t).ok()?;
        // The index region and the trailer.
        let tail = storage
            .read_at(f, at, ilen as usize + crate::format::car::TRAILER_LEN)
            .ok()?;
        keys.iter().find_map(|k| {
            crate::format::car::Index::open(k, &tail, at)
                .ok()
                .map(|i| i.meta.level)
        })
    }

    /// [`Store::file_opens_with`] for a file in the archive.
    fn archived_opens_with(&self, f: &FileName, keys: &[Key]) -> bool {
        let storage = &self.inner.storage;
        let Ok((t, len)) = storage.read_archived_tail(f, crate::format::car::TRAILER_LEN) else {
            return false;
        };
        let Ok((at, _)) = crate::format::car::parse_trailer(len, &t) else {
            return false;
        };
        // The index region and the trailer.
        let Ok((tail, _)) = storage.read_archived_tail(f, (len - at) as usize) else {
            return false;
        };
        keys.iter()
            .any(|k| crate::format::car::Index::open(k, &tail, at).is_ok())
    }

    /// Removes the archived files that open under one of `keys` (lineages that are going);
    /// returns how many.
    fn remove_archived_of(&self, keys: &[Key]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let storage = &self.inner.storage;
        let io = |e| Error::io(self.inner.root.join("files/.archive"), e);
        let mut n = 0;
        for f in storage.list_archived().map_err(io)? {
            if self.archived_opens_with(&f, keys) {
                storage.remove_archived(&f).map_err(io)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes a database: its folder, and its diff files and key unless a fork shares them
    /// (garbage collection removes those once no database names them). Crash-complete: the
    /// drop commits when the folder is renamed to `dbs/.drop-*` under the database's writer
    /// lock; a kill before that leaves the database as it was (its LOCK mark is taken back by
    /// the next open), a kill after it leaves a folder `gc` removes, with the files and key.
    pub fn drop_db(&self, name: &str) -> Result<()> {
        self.handles.forget(name);
        let db = self.open_plain(name)?;
        let (lineage, key) = (db.lineage(), db.key());
        // Held until the folder is gone: garbage collection would take the `.drop-*` folder
        // (and the files, archiving them when the store keeps an archive) as a killed drop's
        // leftovers while this drop still removes them.
        let _gc = self.inner.gc_shared()?;
        let gone = self
            .dbs()
            .join(format!("{DROP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let files = db.drop_to(&gone)?;
        drop(db);
        #[cfg(test)]
        tests::AFTER_DROP_COMMIT.with(|h| {
            if let Some(f) = &*h.borrow() {
                f()
            }
        });
        // A database that never shared its lineage owns its files and its key: its archived
        // files go first (found by the key; a kill before the key goes leaves them to gc,
        // which removes a lineage's archived files with its key), then the key (what is left
        // is then unreadable), then the files' bytes, then the folder. After a fork they may
        // be shared: garbage collection removes files no one names, and the key and the
        // archived files once no database of the lineage is left.
        if !self.inner.keybag.is_shared(&lineage) {
            self.remove_archived_of(std::slice::from_ref(&key))?;
            self.inner.keybag.remove(&lineage)?;
            for f in &files {
                self.inner
                    .storage
                    .erase(&f.name)
                    .map_err(|e| Error::io(self.inner.root.join("files"), e))?;
            }
        }
        match std::fs::remove_dir_all(&gone) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&gone, e)),
            _ => Ok(()),
        }
    }
}

/// What garbage collection knows of the databases whose head record it cannot read: whatever
/// may be theirs is kept.
#[derive(Default)]
struct Damaged {
    /// Keys of their lineages: unnamed files that open under one may be theirs.
    keys: Vec<Key>,
    /// One's lineage has no key here: an unnamed file no key opens may be its.
    keyless: bool,
    /// One's lineage cannot be read: any unnamed file may be its.
    unknown: bool,
}

impl Damaged {
    /// Whether an unnamed file may belong to an unreadable database; `opens_with` says whether
    /// it opens under one of some keys, `all_keys` are the keybag's (loaded when `keyless`).
    fn may_own(&self, opens_with: impl Fn(&[Key]) -> bool, all_keys: &[Key]) -> bool {
        if self.unknown {
            return true;
        }
        if !self.keys.is_empty() && opens_with(&self.keys) {
            return true;
        }
        self.keyless && !opens_with(all_keys)
    }
}

/// The unreadable databases of a report, for messages.
fn unreadable_names(r: &GcReport) -> String {
    r.unreadable
        .iter()
        .map(|(n, _)| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    thread_local! {
        /// Runs in [`Store::drop_db`] right after the drop's commit point: what another thread
        /// or process does then.
        pub(super) static AFTER_DROP_COMMIT: std::cell::RefCell<Option<Box<dyn Fn()>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Review: a drop removed its key, files and `.drop-*` folder after its commit point
    /// without the GC lock, so a gc running then took the folder as a killed drop's leftover
    /// (and the files, archiving them when the store keeps an archive): the drop, committed,
    /// failed with "No such file or directory" (the CLI's exit 1).
    #[test]
    fn a_gc_beside_a_drop_does_not_fail_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            durability: Durability::Buffered,
            lock_timeout: std::time::Duration::from_millis(300),
            ..Options::default()
        };
        let s = Store::open_with(dir.path(), opts).unwrap();
        s.set_settings(&Settings {
            keep_archive: Some(true),
            ..Settings::default()
        })
        .unwrap();
        let d = s.create(Some("d")).unwrap();
        d.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
        drop(d);
        let keys = s.inner.keybag.all().unwrap();
        let other = s.clone();
        AFTER_DROP_COMMIT.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                let s = other.clone();
                // Another thread's gc: it waits for the drop to finish (busy here), or ran.
                let _ = std::thread::spawn(move || s.gc()).join().unwrap();
            }))
        });
        let r = s.drop_db("d");
        AFTER_DROP_COMMIT.with(|h| *h.borrow_mut() = None);
        r.unwrap();
        s.gc().unwrap();
        assert!(std::fs::read_dir(dir.path().join("dbs"))
            .unwrap()
            .next()
            .is_none());
        let found = crate::audit::find(dir.path(), &keys, b"SECRET").unwrap();
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "A-b_c.d",
            "0",
            &"x".repeat(128),
            "0190e3c2-7b1a-7000-8000-000000000000",
        ] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "../x",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
            "a\0b",
            "..",
            ".",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
