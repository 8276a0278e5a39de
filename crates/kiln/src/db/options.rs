//! What a program chooses for a store and its databases: durability, cache, compaction,
//! lock timeout (see also `settings`, what is stored with the store and each database).

/// What survives a crash, per commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// A commit returns once it is durable: it survives a process crash and a power cut. Its
    /// diff file and the head record are fsynced (with their folders when names changed); a
    /// small diff (up to 64 KiB) rides in the head record's fsynced append instead, and is put
    /// back from there if a power cut loses it (docs/format.md, "File records").
    #[default]
    Full,
    /// A commit returns once its bytes are handed to the OS (no fsync): it survives a process
    /// crash (kill -9), but a power cut or kernel crash may lose the last commits and, as with
    /// SQLite's `synchronous=OFF`, can leave the database damaged, which reads and `verify`
    /// report as corruption (never as valid data).
    Buffered,
}

/// Store-wide settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// What a commit waits for before it returns (see [`Durability`]).
    pub durability: Durability,
    /// Budget of the shared block cache, in bytes.
    pub cache_bytes: usize,
    /// Compact when more than this many transaction diff files are live, unless the database
    /// or the store has its own setting ([`crate::Settings`]).
    pub compact_threshold: usize,
    /// How long a commit waits for another writer's lock before failing with
    /// [`crate::Error::Busy`].
    pub lock_timeout: std::time::Duration,
    /// Merge files in a background thread rather than inside the commit that crosses a limit
    /// (on by default). Small merges (under 4 MiB in, while no background merge runs) stay
    /// inside the commit, and commits outrunning the thread (more than 4 × threshold diffs)
    /// merge level 0 inline. The last handle of a database waits, when dropped, for the merge
    /// its thread is doing. Measured on 2 cores (README, "Scale"): bulk loads of a million
    /// documents +43%, random updates +15–30% at 100,000 and a million, peak memory up to
    /// ~25 MB higher (a merge runs beside the commits). A program of one command per process
    /// (the CLI) turns it off.
    pub background_compaction: bool,
    /// Empty files a background thread keeps ready in `files/.pool/`, so a commit renames one
    /// instead of allocating an inode (0: none). They cost an inode each and no data. The
    /// default covers a new database's first compaction cycle (100 diffs, then compaction's
    /// output) before retired files come back as spares: with 64, a fresh store's first 1,000
    /// one-document commits ran at 12,000/s instead of 29,000/s here, on a file system where
    /// allocating an inode after many deletions costs up to 1 ms.
    pub reserve_files: usize,
    /// Database handles a [`crate::Store`] keeps open for [`crate::Store::open_db`] to hand
    /// out again (the most recently opened; 0: every call opens anew). Each costs three file
    /// descriptors and its handle's caches (the block cache is the store's, shared).
    pub open_databases: usize,
    /// Open the store for reading only: it must exist (nothing is created), no file is
    /// written, opened for writing or locked, and every write (commits, compaction, purge,
    /// gc, settings, metadata, creating, forking or dropping databases, proposals) is
    /// [`crate::Error::ReadOnly`]. Works on a read-only mount. (A diff a power cut lost, which
    /// a read would put back from the head record's copy, is then reported instead.)
    pub read_only: bool,
    /// How old a file-set (the bytes of attached files) no document version names must be
    /// before garbage collection removes it: a file-set is written before the commit that
    /// names it (a transaction's, until it commits), and is kept this long for it.
    pub fileset_grace: std::time::Duration,
    /// Where a new store keeps its keys, and where an older store's keys (kept in its folder,
    /// `keys/`) move to when it is first opened for writing. Outside the store's folder by
    /// default, so that copying or syncing the folder with another tool never carries a key.
    /// A store made with [`KeyPlace::InStore`] keeps its keys in its folder whatever later
    /// opens say.
    pub keys: KeyPlace,
}

/// Where a store's keys are kept (see [`Options::keys`] and docs/format.md, "Keybag").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPlace {
    /// In a folder of their own outside the store: `<home>/<store id>/`, where `<home>` is the
    /// given folder, else `$KILN_KEYS`, else `$XDG_CONFIG_HOME/kiln/keys`, else
    /// `~/.config/kiln/keys`.
    Outside(Option<std::path::PathBuf>),
    /// In the store's folder (`ROOT/keys/`), as stores before store format 2 kept them: a copy
    /// of the folder is then a copy of its keys too.
    InStore,
}

impl Default for KeyPlace {
    fn default() -> Self {
        KeyPlace::Outside(None)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Full,
            cache_bytes: 32 << 20,
            compact_threshold: 100,
            lock_timeout: std::time::Duration::from_secs(30),
            background_compaction: true,
            reserve_files: 160,
            open_databases: 64,
            read_only: false,
            fileset_grace: std::time::Duration::from_secs(3600),
            keys: KeyPlace::default(),
        }
    }
}
