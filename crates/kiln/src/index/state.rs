//! An index's kept state: its definition, its tree's root, the heads it is up to date with,
//! its row count, and its files (a base and the deltas written since), as one entry of the
//! database's derived record (`index:<name>`, JSON; see docs/format.md "Indexes").

use super::def::IndexDef;
use crate::db::derived::{Derived, DerivedEntry};
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::storage::FileName;
use serde::{Deserialize, Serialize};

/// The derived record's entries for indexes are named this, then the index's name.
pub const ENTRY_PREFIX: &str = "index:";

/// One index's state.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexState {
    pub def: IndexDef,
    /// The tree's root (`None`: no rows).
    pub root: Option<Cid>,
    /// The heads whose state the tree holds (`None`: not built yet).
    pub heads: Option<Vec<Cid>>,
    /// Rows in the tree.
    pub rows: u64,
    /// The files holding the tree's nodes: `files[0]` is the base when `based` (written whole
    /// by a build or a rewrite), the rest deltas (the nodes each later update added).
    pub files: Vec<(FileName, u64)>,
    pub based: bool,
}

/// The state's JSON (the definition is apart, kept when the state is cleared).
#[derive(Serialize, Deserialize)]
struct Stored {
    v: u32,
    root: Option<String>,
    heads: Option<Vec<String>>,
    rows: u64,
    /// File sizes, in the entry's file order.
    sizes: Vec<u64>,
    based: bool,
}

impl IndexState {
    pub fn new(def: IndexDef) -> IndexState {
        IndexState {
            def,
            root: None,
            heads: None,
            rows: 0,
            files: Vec::new(),
            based: false,
        }
    }

    /// The state of index `name` in `d`, if it has one.
    pub fn of(d: &Derived, name: &str) -> Result<Option<IndexState>> {
        let Some(e) = d.entries.get(&entry_name(name)) else {
            return Ok(None);
        };
        let bad = |what: &str| Error::corrupt(format!("index {name}"), what.to_owned());
        let def: IndexDef =
            serde_json::from_slice(&e.def).map_err(|_| bad("definition does not parse"))?;
        if e.data.is_empty() {
            // Never built, or cleared by a purge or a history cut.
            return Ok(Some(IndexState::new(def)));
        }
        let s: Stored = serde_json::from_slice(&e.data).map_err(|_| bad("state does not parse"))?;
        if s.v != 1 {
            return Err(Error::NewerFormat {
                what: format!("index {name}"),
                version: s.v,
            });
        }
        let cid = |t: &String| t.parse::<Cid>().map_err(|_| bad("bad CID"));
        if s.sizes.len() != e.files.len() {
            return Err(bad("file sizes do not match its files"));
        }
        Ok(Some(IndexState {
            def,
            root: s.root.as_ref().map(cid).transpose()?,
            heads: s
                .heads
                .map(|h| h.iter().map(cid).collect::<Result<Vec<_>>>())
                .transpose()?,
            rows: s.rows,
            files: e.files.iter().copied().zip(s.sizes).collect(),
            based: s.based,
        }))
    }

    /// Puts this state into `d` as index `name`'s.
    pub fn put(&self, d: &mut Derived, name: &str) {
        let s = Stored {
            v: 1,
            root: self.root.map(|c| c.to_string()),
            heads: self
                .heads
                .as_ref()
                .map(|h| h.iter().map(|c| c.to_string()).collect()),
            rows: self.rows,
            sizes: self.files.iter().map(|f| f.1).collect(),
            based: self.based,
        };
        // (Serializing plain data cannot fail.)
        let data = if self.heads.is_some() {
            serde_json::to_vec(&s).unwrap_or_default()
        } else {
            Vec::new()
        };
        d.entries.insert(
            entry_name(name),
            DerivedEntry {
                def: serde_json::to_vec(&self.def).unwrap_or_default(),
                data,
                files: self.files.iter().map(|f| f.0).collect(),
            },
        );
    }

    /// The names of the files holding the tree.
    pub fn file_names(&self) -> Vec<FileName> {
        self.files.iter().map(|f| f.0).collect()
    }

    /// Back to unbuilt (a redefinition or a rebuild): the tree is made again when next used.
    pub fn reset(&mut self) {
        *self = IndexState::new(self.def.clone());
    }
}

/// The derived entry name of index `name`.
pub fn entry_name(name: &str) -> String {
    format!("{ENTRY_PREFIX}{name}")
}

/// Every index's name in `d`, in order.
pub fn names(d: &Derived) -> Vec<String> {
    d.entries
        .keys()
        .filter_map(|k| k.strip_prefix(ENTRY_PREFIX).map(str::to_owned))
        .collect()
}
