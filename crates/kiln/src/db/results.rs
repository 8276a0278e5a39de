//! What database calls return: commits, changes, log entries, info, merge and purge reports,
//! history files, listing options.

use super::*;

/// What a commit produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Ids written, in the order given.
    pub ids: Vec<String>,
    /// The new event.
    pub event: Cid,
    /// The clock heads after the commit.
    pub heads: Vec<Cid>,
}

/// A document's version: the height of the event that wrote it and the CID of what it wrote
/// (as text `HEIGHT-CID`, e.g. `12-bafyrei…`). Two writes of equal contents differ in height,
/// so a document written back to an earlier value has a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rev {
    /// Height of the event that wrote this version.
    pub height: u64,
    /// CID of the version's contents.
    pub cid: Cid,
}

impl Rev {
    /// A tree slot's version, `None` for a tombstone.
    pub(crate) fn of(s: Slot) -> Option<Rev> {
        s.link.map(|cid| Rev {
            height: s.version,
            cid,
        })
    }
}

impl std::fmt::Display for Rev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.height, self.cid)
    }
}

impl std::str::FromStr for Rev {
    type Err = Error;
    fn from_str(s: &str) -> Result<Rev> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{s:?} is not a document version (expected HEIGHT-CID, as a version prints)"
            ))
        };
        let (h, c) = s.split_once('-').ok_or_else(bad)?;
        Ok(Rev {
            height: h.parse().map_err(|_| bad())?,
            cid: c.parse().map_err(|_| bad())?,
        })
    }
}

impl serde::Serialize for Rev {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rev {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Rev, D::Error> {
        crate::util::from_text(d)
    }
}

/// One entry of a change feed (`T`: the document's type, JSON by default; see
/// [`Change::decode`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Change<T = Value> {
    /// The document's id.
    pub id: String,
    /// Clock height of the write that produced the current value.
    pub version: u64,
    /// The document, or `{"_id":…, "_deleted": true}`.
    pub doc: T,
    /// The document is deleted (`doc` is its tombstone).
    pub deleted: bool,
}

/// One version of a document ([`Database::history`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DocVersion {
    /// The event that wrote it (for a version from before a dropped history: the event the
    /// history was cut at, whose state holds it).
    pub event: Cid,
    /// Its version (`None`: the write deleted the document).
    pub rev: Option<Rev>,
    /// When the event was committed (ms since the Unix epoch; informational).
    pub time: u64,
    /// The document as written (`None` for a delete, and for a version purged since: then
    /// `rev` is set).
    pub doc: Option<Value>,
}

/// One event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The event.
    pub cid: Cid,
    /// The events it follows (none for the first; two or more for a merge or a join).
    pub parents: Vec<Cid>,
    /// 1 + the greatest height among its parents.
    pub height: u64,
    /// When it was committed (ms since the Unix epoch; informational).
    pub time: u64,
    /// Ids touched, with `true` for a delete.
    pub ops: Vec<(String, bool)>,
    /// The note recorded with the event (merges of accepted proposals), else empty.
    pub note: String,
}

/// Sizes and counts of a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The database's name.
    pub name: String,
    /// Its lineage (a UUID): shared with its forks, and its key's name.
    pub lineage: String,
    /// Live documents.
    pub docs: u64,
    /// Events in its clock.
    pub events: u64,
    /// Its clock heads (more than one after concurrent transactions, until the next commit).
    pub heads: Vec<Cid>,
    /// Document-tree root of the current state: equal on replicas holding the same documents
    /// (in trees of one shape).
    pub root: Option<Cid>,
    /// Where the database's tree nodes end, fixed for its life: `Bounded` for databases created
    /// since head records of version 5, `Mod16` before (docs/format.md, "Tree node").
    pub tree_shape: crate::TreeShape,
    /// Its live files, newest first.
    pub files: Vec<FileRef>,
    /// Bytes of its live files.
    pub bytes: u64,
    /// Times its head record was written.
    pub commits: u64,
    /// When compaction last ran (ms since the Unix epoch), 0 for never.
    pub compacted: u64,
    /// The compaction threshold in force for this database.
    pub compact_threshold: usize,
    /// The database's own settings (empty: the store's apply).
    pub settings: Settings,
    /// The head record ends in an append a crash left unfinished (see
    /// [`Database::torn_append`]).
    pub torn_append: bool,
}

/// What [`Database::merge_from`] did.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MergeReport {
    /// The merge event (or, with `only`, the transaction); `None` when nothing was new or the
    /// merge was a fast-forward.
    pub event: Option<Cid>,
    /// The destination was an ancestor of the source: it took the source's heads, no merge
    /// event.
    pub fast_forward: bool,
    /// Events of the source the destination did not have (now copied into it).
    pub events: usize,
    /// Documents whose value in the destination changed.
    pub changed: Vec<String>,
    /// Documents both sides changed to different values since their common history.
    pub conflicts: Vec<Conflict>,
}

/// A document both sides of a merge changed to different values (`T`: the document's type,
/// JSON by default; see [`Conflict::decode`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict<T = Value> {
    /// The document's id.
    pub id: String,
    /// The value in their common history (`None`: absent or deleted).
    pub ancestor: Option<T>,
    /// The destination's value before the merge.
    pub ours: Option<T>,
    /// The source's value.
    pub theirs: Option<T>,
    /// Which one the merged state holds: the write with the greater (height, value CID), the
    /// same rule on every replica and in either merge direction.
    pub winner: Side,
}

/// A side of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The destination (the database merged into).
    Ours,
    /// The source (the database merged from).
    Theirs,
}

/// One document that differs between two states ([`Database::diff`]; `T`: the document's
/// type, JSON by default; see [`DocDiff::decode`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DocDiff<T = Value> {
    /// The document's id.
    pub id: String,
    /// The document in the first state (`None`: absent or deleted there).
    pub before: Option<T>,
    /// The document in the second state (`None`: absent or deleted there).
    pub after: Option<T>,
}

impl<T> DocDiff<T> {
    /// "added", "deleted" or "changed".
    pub fn kind(&self) -> &'static str {
        match (&self.before, &self.after) {
            (None, _) => "added",
            (_, None) => "deleted",
            _ => "changed",
        }
    }
}

/// What [`Database::purge`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeReport {
    /// The purge event.
    pub event: Cid,
    /// Stored versions purged.
    pub versions: usize,
    /// Archived files removed because they held a purged version.
    pub archived_removed: usize,
    /// Bytes freed: of files kept for reuse, and of unreferenced files garbage collection
    /// removed (when the store keeps no archive).
    pub reusable_bytes_freed: u64,
}

/// Where a file of [`Database::history_files`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Named by the head record.
    Live,
    /// Replaced, but still in the store's files (not yet collected).
    Kept,
    /// Replaced and moved to the archive.
    Archived,
    /// Replaced and deleted (no archive kept).
    Gone,
}

/// A file in a database's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryFile {
    /// The file's name (the hash of its bytes).
    pub name: FileName,
    /// Where it is now.
    pub location: Location,
    /// 0 for a transaction's diff, n ≥ 1 for a compaction's output; `None` when gone.
    pub level: Option<u8>,
    /// A diff's event, or a compacted file's newest events (empty when gone).
    pub events: Vec<Cid>,
    /// The files a compacted file replaced.
    pub replaces: Vec<FileName>,
}

/// Options for listing documents by id ([`Database::cursor`], [`Database::docs`],
/// [`Database::scan`]): the fields, or the builder methods.
///
/// ```
/// let page = kiln::ListOptions::default().prefix("room-7/").after("room-7/0042").limit(50);
/// assert_eq!(page.limit, Some(50));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// First id (inclusive).
    pub start: Option<String>,
    /// Last id (inclusive).
    pub end: Option<String>,
    /// At most this many documents (`None`: all).
    pub limit: Option<usize>,
    /// Only ids that come after this one in the listing's order (greater ones; smaller with
    /// `desc`): where the previous page ended.
    pub after: Option<String>,
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// Descending id order.
    pub desc: bool,
}

impl ListOptions {
    /// From id `start` on (inclusive).
    pub fn start(mut self, start: impl Into<String>) -> Self {
        self.start = Some(start.into());
        self
    }
    /// Up to id `end` (inclusive).
    pub fn end(mut self, end: impl Into<String>) -> Self {
        self.end = Some(end.into());
        self
    }
    /// At most `n` documents.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
    /// Only ids after `id` in the listing's order (a page's last id: the next page).
    pub fn after(mut self, id: impl Into<String>) -> Self {
        self.after = Some(id.into());
        self
    }
    /// Only ids starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
    /// Descending id order.
    pub fn desc(mut self) -> Self {
        self.desc = true;
        self
    }
}
