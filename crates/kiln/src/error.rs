//! Errors. Every message says what happened and, where there is one, what to do.

use crate::format::block::cid::Cid;
use crate::format::car::{FileName, FormatError};
use std::path::PathBuf;

/// Everything a kiln call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database name outside the allowed alphabet or length.
    #[error("invalid database name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No database of that name in the store.
    #[error("database '{0}' does not exist")]
    NoSuchDatabase(String),
    /// [`crate::Store::open_existing`] found no store at the path (nothing was created).
    #[error("no kiln store at {}", .0.display())]
    NoStore(PathBuf),
    /// The ids have no live document in the database (never written, or deleted); nothing
    /// was changed.
    #[error("{}", no_such_document(.db, .ids))]
    NoSuchDocument {
        /// The database.
        db: String,
        /// The ids without a live document.
        ids: Vec<String>,
    },
    /// A database of that name exists already; nothing was created.
    #[error("database '{0}' already exists")]
    DatabaseExists(String),
    /// Bad input for a write; nothing was changed.
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    /// A bad argument (an option out of range, text that is not what was asked for).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An expected-version write (`Database::put_if`, `del_if`) found the document at another
    /// version: another write came first. Nothing was written.
    #[error("{0}")]
    Conflict(Box<WriteConflict>),
    /// A stored document does not fit the type a typed read asked for (`Database::get_as`
    /// and the like); the document is as it was.
    #[error("document {id:?} in database '{db}' does not fit {into}: {why}")]
    Decode {
        /// The database.
        db: String,
        /// The document's id.
        id: String,
        /// The type asked for (as `std::any::type_name` spells it).
        into: &'static str,
        /// What serde said.
        why: String,
    },
    /// JSON that does not parse or does not fit a type, met in an app's own code: lets `?`
    /// turn a `serde_json::Error` into a kiln error.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The event is not in the database's history (or its history was dropped before it).
    #[error("event {0} is not part of database '{1}'")]
    NoSuchEvent(Cid, String),

    /// No index of that name (index, database).
    #[error("database '{1}' has no index '{0}' (see `kiln index list`)")]
    NoSuchIndex(String, String),
    /// Stored bytes are damaged or were tampered with. Never reported as "not found".
    #[error("corruption in {location}: {what}")]
    Corrupt {
        /// Where: a file, a block, a head record.
        location: String,
        /// What is wrong there.
        what: String,
    },
    /// A file the head record names is gone from storage.
    #[error("file {0} named by the head record of database '{1}' is missing from storage")]
    MissingFile(FileName, String),
    /// A block some record links to is in no live file.
    #[error("block {0} is missing from database '{1}'")]
    MissingBlock(Cid, String),
    /// The file-set holding an attached file is not in this store (its metadata came, its
    /// bytes not yet: a replica that syncs documents before files) and no source supplied it.
    #[error("file-set {0} of database '{1}' is not available locally")]
    FileSetUnavailable(FileName, String),
    /// The document has no attached file of that name.
    #[error("document {id:?} in database '{db}' has no file {name:?}")]
    NoSuchFile {
        /// The database.
        db: String,
        /// The document.
        id: String,
        /// The file name asked for.
        name: String,
    },
    /// The document version asked for was purged (`kiln purge`): its content is gone on
    /// purpose.
    #[error("document {0:?}: that version was purged from database '{1}'")]
    Purged(String, String),
    /// A database moved on from the state an operation was pinned to (a proposal's fork
    /// changed after it was proposed).
    #[error("database '{0}' has changed since the state this was pinned to")]
    Changed(String),
    /// A purge was committed (the document reads as purged) but some of its versions may
    /// still be stored; the next open, write or `gc` of the store tries again.
    #[error("the purge in database '{0}' is committed but not finished: {1}")]
    PurgeUnfinished(String, String),
    /// Stored data of a format version this kiln does not know (written by a newer one).
    #[error("{what} was written by a newer kiln (format {version}); upgrade kiln")]
    NewerFormat {
        /// What was read (a file, a head record, the store).
        what: String,
        /// The format version it has.
        version: u32,
    },
    /// The keybag holds no key for the lineage the head record names: the key file (the
    /// second field) is missing, or the head record's (plaintext) lineage id is damaged.
    #[error(
        "no key for database '{0}': there is no {1} (bring the key over with `kiln key export` \
         there and `kiln key import` here, or restore that file from a backup of the keys; if \
         the database was never moved or copied, the lineage id in its head record may be \
         damaged)"
    )]
    MissingKey(String, String),
    /// A write failed part-way (after which the on-disk state is uncertain): reopen.
    #[error("this database handle is unusable after a failed write ({0}); reopen the database")]
    Poisoned(String),
    /// The store was opened read-only (`Options::read_only`): nothing was written.
    #[error("the store at {} is open read-only: {} refused", .0.display(), .1)]
    ReadOnly(PathBuf, &'static str),
    /// Another writer held the database's lock for longer than the lock timeout.
    #[error("database '{0}' is busy: another writer holds its lock; retry later")]
    Busy(String),
    /// Garbage collection of the store (or a purge finishing through it) held the store's
    /// lock for longer than the lock timeout, or waited that long for the writers it needs
    /// gone.
    #[error("the store is busy with garbage collection; retry later")]
    StoreBusy,
    /// The operating system refused an operation on a file or folder.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

fn no_such_document(db: &str, ids: &[String]) -> String {
    let list = ids
        .iter()
        .map(|id| format!("{id:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let s = if ids.len() == 1 { "" } else { "s" };
    format!("no document{s} {list} in database '{db}'")
}

/// What an expected-version write found ([`Error::Conflict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteConflict {
    /// The database.
    pub db: String,
    /// The document's id.
    pub id: String,
    /// The version the write expected (`None`: no document).
    pub expected: Option<crate::Rev>,
    /// The version the document is at (`None`: none, or deleted).
    pub actual: Option<crate::Rev>,
}

impl std::fmt::Display for WriteConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |r: &Option<crate::Rev>| match r {
            Some(r) => format!("version {r}"),
            None => "no document".to_owned(),
        };
        write!(
            f,
            "document {:?} in database '{}' changed: expected {}, found {} (read it again \
             and retry)",
            self.id,
            self.db,
            at(&self.expected),
            at(&self.actual)
        )
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(location: impl Into<String>, what: impl Into<String>) -> Error {
        Error::Corrupt {
            location: location.into(),
            what: what.into(),
        }
    }

    pub(crate) fn format(location: impl Into<String>, e: FormatError) -> Error {
        match e {
            FormatError::Version(v) => Error::NewerFormat {
                what: location.into(),
                version: v,
            },
            other => Error::corrupt(location, other.to_string()),
        }
    }

    /// Whether the error means stored data is damaged (as opposed to bad input or I/O).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::MissingFile(..) | Error::MissingBlock(..)
        )
    }
}
