//! kiln: an embedded, local-first, encrypted, content-addressed document database.
//!
//! A [`Store`] is a folder holding any number of databases. Each [`Database`] keeps JSON
//! documents; every transaction becomes one event of a hash-linked Merkle clock and one sealed
//! (AES-256-GCM) diff file; the current state is named by a small head record.
//!
//! ```
//! # fn main() -> kiln::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = kiln::Store::open(dir.path())?;
//! let db = store.create(Some("notes"))?;
//! let c = db.put(&serde_json::json!({"_id": "n1", "text": "hello"}))?;
//! assert_eq!(db.get("n1")?.unwrap()["text"], "hello");
//! db.del("n1")?;
//! assert_eq!(db.get("n1")?, None);
//! // Time travel: the document as of the first commit.
//! assert_eq!(db.get_at("n1", &c.event)?.unwrap()["text"], "hello");
//! assert!(db.verify()?.ok());
//! # Ok(()) }
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![deny(missing_docs)]
// Visitor callbacks (`&mut dyn FnMut(..) -> Result<bool, E>`) read better spelled out.
#![allow(clippy::type_complexity)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// The layers, lowest first (a module imports only from its own layer and those below; the
// test `layers` in tests/layers.rs checks it):
pub mod audit;
mod db; // a database: reads, commits, compaction, merge, purge, verify
mod error;
mod format; // bytes: blocks, sealing, diff files, head records
mod keys; // the keybag
mod model; // documents, the prolly tree, the Merkle clock
mod storage; // immutable named files and the local folder that keeps them
mod store; // a store of databases: create, fork, drop, gc, proposals
mod util; // helpers that know nothing of kiln
          // The capabilities on top.
mod attachments;
pub mod import; // data from other systems (Fireproof)
pub mod index; // secondary indexes and queries
pub mod watch; // subscriptions and live queries

pub use attachments::{content_type_of, Attachment, FileInfo, FileReader};
pub use db::options::KeyPlace;
pub use db::settings::Settings;
pub use db::verify::{Problem, Report as VerifyReport};
pub use db::{
    record_names, Change, Committed, Conflict, Cursor, Database, DocDiff, DocVersion, HistoryFile,
    Info, ListOptions, Location, LogEntry, MergeReport, PurgeReport, Relation, Replica,
    ReplicaRecord, Rev, Side, TakenIn, Transaction, TypedCursor, LEVEL_FANIN,
};
pub use error::{Error, Result, WriteConflict};
pub use format::block::cid::{Cid, ParseCidError};
pub use format::head::TreeShape;
pub use format::seal::Key;
pub use index::{Emit, IndexDef, IndexInfo, IndexUpdate, Query, Row, Select};
pub use model::doc::MAX_DOC_BYTES;
pub use storage::{sync_file_system, syncfs_covers, FileName, FileSource};
pub use store::proposals::{Proposal, Status, RECORD_MAGIC as PROPOSAL_RECORD_MAGIC};
pub use store::{check_name, Durability, FileKind, FilesHold, GcReport, Options, Store};
pub use watch::{ChangeSet, LiveQuery, Subscription};

// README's library section is compiled as a doctest (so the front page cannot drift from the
// API).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeLibrarySection;

/// Checks a document given as JSON text as [`Database::put_json`] would (id, size, nesting,
/// reserved fields, numbers), without writing it.
pub fn check_document_json(text: &str) -> Result<()> {
    model::doc::prepare_json(text).map(|_| ())
}

/// The formats' and layers' insides, for kiln's own tests, examples and benchmarks: not a
/// stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::format::{block, car, head, seal};
    pub use crate::model::{clock, doc, tree};
    pub use crate::util::par;
    pub mod keys {
        pub use crate::keys::*;
    }
    pub mod storage {
        pub use crate::storage::*;
    }
}
