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
// Visitor callbacks (`&mut dyn FnMut(..) -> Result<bool, E>`) read better spelled out.
#![allow(clippy::type_complexity)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod block;
mod cache;
pub mod car;
pub mod clock;
mod db;
pub mod doc;
mod error;
pub mod head;
pub mod keys;
mod par;
pub mod proposals;
pub mod seal;
pub mod settings;
pub mod storage;
mod store;
pub mod tree;
pub mod verify;

pub use block::cid::Cid;
pub use db::{
    Change, Committed, Conflict, Database, DocDiff, HistoryFile, Info, ListOptions, Location,
    LogEntry, MergeReport, PurgeReport, Side, Transaction, LEVEL_FANIN,
};
pub use error::{Error, Result};
pub use proposals::{Proposal, Status};
pub use settings::Settings;
pub use store::{check_name, Durability, GcReport, Options, Store};
