//! Bringing an index up to date: the documents changed since the heads its tree holds (read
//! from the clock, so changes that came by merge or sync count too) are mapped once each and
//! their rows replaced; a first build, or one whose heads a history cut dropped, maps every
//! live document.
//!
//! The tree holds two kinds of entries (docs/format.md "Indexes"):
//! - a row: `0x01 ‖ key ‖ id ‖ value`, in (key, id, value) order, what queries read;
//! - its twin by document: `0x00 ‖ id ‖ key ‖ value`, so a changed document's old rows are
//!   found without mapping its old version again.
//!
//! `key`, `value` and `id` are encoded as in [`super::key`] (self-delimiting, so the parts
//! split again); a document's identical rows count once. A row's slot names the document
//! version it was made from (its version and CID: a query with documents reads exactly that
//! version, without the document tree); a by-document entry's slot is empty (version 0, no
//! link). So the tree's root depends on the rows and the versions they come from only.

use super::def::{field_rows, Mapper, MAX_ROWS_PER_DOC};
use super::key;
use super::nodes::Nodes;
use super::state::IndexState;
use crate::db::{Database, ListOptions};
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::model::tree::{self, Mode, Shape, Slot};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const BY_ID: u8 = 0x00;
pub const ROW: u8 = 0x01;
const SLOT: Slot = Slot {
    version: 0,
    link: None,
};

thread_local! {
    /// Where [`entries_of`] writes a row's two entries (reused: a build makes millions).
    static ENTRY_KEYS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// What an update did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexUpdate {
    /// Documents mapped (the map function's calls).
    pub mapped: u64,
    /// Rows added.
    pub added: u64,
    /// Rows removed.
    pub removed: u64,
    /// Every live document was mapped (a first build or a rebuild).
    pub full: bool,
}

/// Brings `st` (of index `name`) up to the database's current heads, its new nodes kept in
/// `nodes` (fresh, not written).
pub fn bring_up_to_date(
    db: &Database,
    name: &str,
    st: &mut IndexState,
    mapper: &Mapper,
    nodes: &mut Nodes,
) -> Result<IndexUpdate> {
    let now = db.heads()?;
    if st.heads.as_deref() == Some(&now[..]) {
        return Ok(IndexUpdate::default());
    }
    let since = match &st.heads {
        // (Empty heads: built on an empty database, which may since have taken in a replica
        // whose history was cut, so the clock no longer has every document's event: build.)
        Some(h) if !h.is_empty() => match db.changes_linked(Some(h), None) {
            Ok(c) => Some(c),
            // Its heads were cut away: build again.
            Err(Error::NoSuchEvent(..)) => None,
            Err(e) => return Err(e),
        },
        _ => None,
    };
    match since {
        Some((heads, changes)) => incremental(db, name, st, mapper, nodes, heads, changes),
        // (A build keeps both threads busy for milliseconds per step: see `par::apart`.)
        None => crate::util::par::apart(|| build(db, name, st, mapper, nodes)),
    }
}

/// Maps every live document into an empty tree. For declared fields the documents are read
/// and mapped in two halves (by id) at once, on two threads; a map function is the user's code
/// and runs on the calling thread only (where, inside the update, it is told it may not use
/// indexes: on another thread it would wait on this update's lock).
fn build(
    db: &Database,
    name: &str,
    st: &mut IndexState,
    mapper: &Mapper,
    nodes: &mut Nodes,
) -> Result<IndexUpdate> {
    let (heads, a, b) = match mapper {
        // The scan is a shortcut: when a file is gone or does not read (a compaction replaced
        // it meanwhile, or damage) the cursors read the documents again, and know what to do
        // about it. Other errors (a document the index refuses) are the same either way.
        Mapper::Fields { .. } => match scan_all(db, name, mapper) {
            Err(e) if e.is_corruption() || matches!(e, Error::MissingFile(..)) => {
                read_all(db, name, mapper)?
            }
            r => r?,
        },
        // A map function is the user's code: it runs on the calling thread (inside an
        // update it may not use indexes, which a thread-local mark tells it).
        Mapper::Map(_) => read_all(db, name, mapper)?,
    };
    // Each half's entries are sorted: the order that merges them is found, by-document
    // entries on this thread and rows on the helper, and the tree reads the entries where
    // they are in that order (every by-document entry sorts before every row).
    let (by_id, rows) = crate::util::par::join(
        || merge_order(&a.by_id, &b.by_id, |s| a.key(*s), |s| b.key(*s)),
        || merge_order(&a.rows, &b.rows, |r| a.key(r.0), |r| b.key(r.0)),
    );
    let merged = Merged {
        halves: [&a, &b],
        by_id: by_id?,
        rows: rows?,
    };
    let up = IndexUpdate {
        full: true,
        mapped: a.mapped + b.mapped,
        added: merged.rows.len() as u64,
        ..IndexUpdate::default()
    };
    let u = tree::build_new(nodes, &merged, Shape::Bounded)?;
    nodes.add(u.blocks, u.leaves);
    // A build replaces every file.
    st.files.clear();
    st.based = false;
    st.root = u.root;
    st.rows = up.added;
    st.heads = Some(heads);
    Ok(up)
}

/// The bytes of `keys` at `s`.
fn span_of(keys: &[u8], s: Span) -> &[u8] {
    &keys[s.0 as usize..(s.0 + s.1) as usize]
}

/// Key bytes [`Mapped::with_room`] asks room for per document (two entries of a short key).
const ROOM_PER_DOC: usize = 64;

/// A build with more entries than one thread's positions can name (u32).
fn too_many() -> Error {
    Error::InvalidArgument("too many index entries to build at once".into())
}

/// Which half an entry of a [`Merged`] is from: the top bit of its place.
const HALF_B: u32 = 1 << 31;

/// The order that merges `a` and `b` (each sorted by its key, `key_a` and `key_b`, keys
/// unique): for each entry of the merge, its place (`HALF_B` set: in `b`); a key in both
/// once, from `a`.
fn merge_order<'k, T>(
    a: &[T],
    b: &[T],
    key_a: impl Fn(&T) -> &'k [u8],
    key_b: impl Fn(&T) -> &'k [u8],
) -> Result<Vec<u32>> {
    if a.len() >= HALF_B as usize || b.len() >= HALF_B as usize {
        return Err(too_many());
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match key_a(&a[i]).cmp(key_b(&b[j])) {
            std::cmp::Ordering::Less => {
                out.push(i as u32);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(j as u32 | HALF_B);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(i as u32);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend((i..a.len()).map(|i| i as u32));
    out.extend((j..b.len()).map(|j| j as u32 | HALF_B));
    Ok(out)
}

/// Both halves' entries as one sorted sequence ([`tree::Sorted`]): the by-document entries,
/// then the rows, each in the order [`merge_order`] found (no merged copy: a build's entries
/// are the most memory it touches, and fresh memory costs a page fault per 4 KiB).
struct Merged<'a> {
    halves: [&'a Mapped; 2],
    by_id: Vec<u32>,
    rows: Vec<u32>,
}

impl Merged<'_> {
    fn half(&self, place: u32) -> (&Mapped, usize) {
        let h = usize::from(place & HALF_B != 0);
        (self.halves[h], (place & !HALF_B) as usize)
    }
}

impl tree::Sorted for Merged<'_> {
    fn len(&self) -> usize {
        self.by_id.len() + self.rows.len()
    }
    fn key(&self, i: usize) -> &[u8] {
        match self.by_id.get(i) {
            Some(&p) => {
                let (m, at) = self.half(p);
                m.key(m.by_id[at])
            }
            None => {
                let (m, at) = self.half(self.rows[i - self.by_id.len()]);
                m.key(m.rows[at].0)
            }
        }
    }
    fn slot(&self, i: usize) -> Option<Slot> {
        if i < self.by_id.len() {
            return Some(SLOT);
        }
        let (m, at) = self.half(self.rows[i - self.by_id.len()]);
        Some(m.slot_of(&m.rows[at]))
    }
}

/// Maps every live document, read in id order by a cursor: for declared fields in two halves
/// of the ids on two threads, for a map function on the calling thread.
fn read_all(db: &Database, name: &str, mapper: &Mapper) -> Result<(Vec<Cid>, Mapped, Mapped)> {
    let cursor = db.cursor(&ListOptions::default())?;
    let heads = cursor.heads().to_vec();
    let (first, second) = match mapper {
        Mapper::Fields { .. } => cursor.split()?,
        Mapper::Map(_) => (cursor, None),
    };
    let (a, b) = match second {
        Some(second) => crate::util::par::join(
            || map_all(name, mapper, first),
            || map_all(name, mapper, second),
        ),
        None => (map_all(name, mapper, first), Ok(Mapped::default())),
    };
    Ok((heads, a?, b?))
}

/// Maps every live document of declared fields, read file by file as the files store them
/// (`Database::scan_docs`, on two threads), each half's entries sorted. Of each document only
/// the fields' values are decoded.
fn scan_all(db: &Database, name: &str, mapper: &Mapper) -> Result<(Vec<Cid>, Mapped, Mapped)> {
    let Mapper::Fields { each, .. } = mapper else {
        return read_all(db, name, mapper);
    };
    let paths = mapper.paths();
    let fields = |id: &str, b: &[u8]| crate::model::doc::decode_fields(id, b, &paths);
    let done = db.scan_docs(&fields, Mapped::with_room, &|m, id, link, version, vals| {
        m.add_rows(name, id, (*link, version), || field_rows(&vals, *each))
    })?;
    let [mut a, mut b] = done.states;
    crate::util::par::join(|| a.sort(), || b.sort());
    Ok((done.heads, a, b))
}

/// Where an entry's key lies in [`Mapped::keys`]: start and length.
type Span = (u32, u32);

/// What mapping a run of documents made: their by-document entries and their rows (each
/// sorted and without repeats once [`Mapped::sort`] ran). Kept small (fresh memory is most
/// of a build's cost): the keys back to back in one buffer, a by-document entry the span of
/// its key (its slot is empty), a row the span of its key and its document's place in
/// `versions`.
#[derive(Default)]
struct Mapped {
    keys: Vec<u8>,
    by_id: Vec<Span>,
    rows: Vec<(Span, u32)>,
    /// The document versions the rows were made of (CID, height), one per document mapped
    /// to at least one row.
    versions: Vec<(Cid, u64)>,
    mapped: u64,
}

impl Mapped {
    /// With room for the entries of `docs` documents of one row each (growing by doubling
    /// touched twice the memory, all of it fresh).
    fn with_room(docs: usize) -> Mapped {
        // (Room asked for, not touched: pages never written cost nothing.)
        Mapped {
            keys: Vec::with_capacity(docs.saturating_mul(ROOM_PER_DOC)),
            by_id: Vec::with_capacity(docs),
            rows: Vec::with_capacity(docs),
            versions: Vec::with_capacity(docs),
            mapped: 0,
        }
    }

    /// Maps document `id` (its version `at`: CID, height).
    fn add(
        &mut self,
        name: &str,
        mapper: &Mapper,
        id: &str,
        at: (Cid, u64),
        doc: &Value,
    ) -> Result<()> {
        self.add_rows(name, id, at, || mapper.rows(doc))
    }

    /// Adds the rows `make` makes of document `id` (its version `at`).
    fn add_rows(
        &mut self,
        name: &str,
        id: &str,
        at: (Cid, u64),
        make: impl FnOnce() -> Vec<(Value, Value)>,
    ) -> Result<()> {
        self.mapped += 1;
        let rows = checked_rows(name, id, make)?;
        if rows.is_empty() {
            return Ok(());
        }
        let Ok(version) = u32::try_from(self.versions.len()) else {
            return Err(too_many());
        };
        self.versions.push(at);
        let mut room = Ok(());
        entries_of(
            id,
            at,
            rows,
            &mut |b, r, _| match (self.put_key(b), self.put_key(r)) {
                (Some(b), Some(r)) => {
                    self.by_id.push(b);
                    self.rows.push((r, version));
                }
                _ => room = Err(too_many()),
            },
        );
        room
    }

    /// Appends `k` to the keys; `None` past 4 GiB of them.
    fn put_key(&mut self, k: &[u8]) -> Option<Span> {
        let at = u32::try_from(self.keys.len()).ok()?;
        let len = u32::try_from(k.len()).ok()?;
        at.checked_add(len)?;
        self.keys.extend_from_slice(k);
        Some((at, len))
    }

    /// The key at `s`.
    fn key(&self, s: Span) -> &[u8] {
        span_of(&self.keys, s)
    }

    /// The slot of row `r`: the document version it was made of.
    fn slot_of(&self, r: &(Span, u32)) -> Slot {
        let (link, version) = self.versions[r.1 as usize];
        Slot {
            version,
            link: Some(link),
        }
    }

    fn sort(&mut self) {
        // By-document entries come in id order (read by a cursor) or in file order (a
        // scan): a run in id order per file, or part of one, which a stable sort finds and
        // merges (an unstable one sorted them over: 3.7× the instructions at 10,000
        // documents in ten files); rows come in any order.
        let keys = &self.keys[..];
        let key = |s: &Span| span_of(keys, *s);
        self.by_id.sort_by(|a, b| key(a).cmp(key(b)));
        self.by_id.dedup_by(|a, b| key(a) == key(b));
        sort_by_prefix(&mut self.rows, |r| span_of(keys, r.0));
        self.rows.dedup_by(|a, b| key(&a.0) == key(&b.0));
    }
}

/// Sorts `ops` by `key`, comparing each key's first 8 bytes as one number (read once per key,
/// into a compact array that is sorted instead: a sort comparing keys reads them again at
/// every comparison, each read a likely cache miss) and the whole keys only where those are
/// equal; then moves the entries into that order.
fn sort_by_prefix<'k, T>(ops: &mut [T], key: impl Fn(&T) -> &'k [u8]) {
    let Ok(n) = u32::try_from(ops.len()) else {
        ops.sort_unstable_by(|a, b| key(a).cmp(key(b)));
        return;
    };
    // Zero-padded big-endian: a key below another never has a larger prefix.
    let prefix = |k: &[u8]| {
        let mut p = [0u8; 8];
        let l = k.len().min(8);
        p[..l].copy_from_slice(&k[..l]);
        u64::from_be_bytes(p)
    };
    let mut order: Vec<(u64, u32)> = (0..n).map(|i| (prefix(key(&ops[i as usize])), i)).collect();
    order.sort_unstable();
    for run in order.chunk_by_mut(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            run.sort_unstable_by(|a, b| key(&ops[a.1 as usize]).cmp(key(&ops[b.1 as usize])));
        }
    }
    // Position i takes the entry `order[i]` names; an entry moved away earlier is found by
    // following where it went (each lands once: n swaps at most).
    for i in 0..order.len() {
        let mut from = order[i].1 as usize;
        while from < i {
            from = order[from].1 as usize;
        }
        order[i].1 = from as u32;
        ops.swap(i, from);
    }
}

/// Maps every document `cursor` reads.
fn map_all(name: &str, mapper: &Mapper, mut cursor: crate::db::Cursor) -> Result<Mapped> {
    let mut m = Mapped::default();
    while let Some((id, link, version, doc)) = cursor.next_linked()? {
        m.add(name, mapper, &id, (link, version), &doc)?;
    }
    // By-document entries come in id order (nearly sorted already), rows in key order (sorted
    // apart); every by-document key (0x00…) sorts before every row (0x01…).
    m.sort();
    Ok(m)
}

/// Builds index `name`'s tree of the state at `event` into `nodes` (fresh, never written):
/// every live document of that state is mapped.
pub fn build_at(
    db: &Database,
    name: &str,
    event: &Cid,
    mapper: &Mapper,
    nodes: &mut Nodes,
) -> Result<Option<Cid>> {
    let mut ops: Vec<tree::Op> = Vec::new();
    db.docs_at(event, &mut |id, link, version, doc| {
        let rows = rows_of(name, mapper, id, &doc)?;
        entries_of(id, (link, version), rows, &mut |b, r, row| {
            ops.push((Arc::from(b), Some(SLOT)));
            ops.push((Arc::from(r), Some(row)));
        });
        Ok(())
    })?;
    ops.sort_by(|a, b| a.0.cmp(&b.0));
    ops.dedup_by(|a, b| a.0 == b.0);
    let u = tree::update(&*nodes, None, &ops, Mode::Overwrite, Shape::Bounded)?;
    nodes.add(u.blocks, u.leaves);
    Ok(u.root)
}

/// Replaces the rows of the documents in `changes`.
fn incremental(
    db: &Database,
    name: &str,
    st: &mut IndexState,
    mapper: &Mapper,
    nodes: &mut Nodes,
    heads: Vec<Cid>,
    changes: Vec<(crate::db::Change, Option<Cid>)>,
) -> Result<IndexUpdate> {
    let _ = db;
    let mut up = IndexUpdate::default();
    let mut ops: BTreeMap<Vec<u8>, Option<Slot>> = BTreeMap::new();
    for (c, link) in changes {
        // Its rows so far: removed unless emitted again.
        let mut old: Vec<Vec<u8>> = Vec::new();
        let lo = by_id_prefix(&c.id);
        let hi = super::query::after_prefix(&lo);
        tree::range(
            &*nodes,
            st.root.as_ref(),
            Some(&lo),
            hi.as_deref(),
            &mut |k, _| {
                old.push(k.to_vec());
                Ok(true)
            },
        )?;
        for b in old {
            let r = row_key_of(&b).map_err(|w| Error::corrupt(format!("index {name}"), w))?;
            ops.insert(b, None);
            ops.insert(r, None);
        }
        if let (false, Some(link)) = (c.deleted, link) {
            up.mapped += 1;
            let rows = rows_of(name, mapper, &c.id, &c.doc)?;
            entries_of(&c.id, (link, c.version), rows, &mut |b, r, row| {
                ops.insert(b.to_vec(), Some(SLOT));
                ops.insert(r.to_vec(), Some(row));
            });
        }
    }
    let ops: Vec<tree::Op> = ops.into_iter().map(|(k, s)| (Arc::from(k), s)).collect();
    let u = tree::update(
        &*nodes,
        st.root.as_ref(),
        &ops,
        Mode::Overwrite,
        Shape::Bounded,
    )?;
    let none = std::iter::repeat(&None);
    for ((k, new), prev) in ops.iter().zip(u.previous.iter().chain(none)) {
        if k.first() != Some(&ROW) {
            continue;
        }
        match (prev.is_some(), new.is_some()) {
            (false, true) => up.added += 1,
            (true, false) => up.removed += 1,
            _ => {}
        }
    }
    nodes.add(u.blocks, u.leaves);
    st.root = u.root;
    st.rows = (st.rows + up.added).saturating_sub(up.removed);
    st.heads = Some(heads);
    Ok(up)
}

/// Hands `put` each of `rows` (of document `id`, its version `at`: CID, height): the
/// by-document entry, the row entry and the row's slot.
fn entries_of(
    id: &str,
    at: (Cid, u64),
    rows: Vec<(Value, Value)>,
    put: &mut dyn FnMut(&[u8], &[u8], Slot),
) {
    let row = Slot {
        version: at.1,
        link: Some(at.0),
    };
    // (Borrowed only once the rows are made: a map function may itself bring another index
    // up to date on this thread, a read-only handle's or a `query_at`.)
    ENTRY_KEYS.with_borrow_mut(|(b, r)| {
        for (k, v) in rows {
            entry_keys(id, &k, &v, b, r);
            put(b, r, row);
        }
    });
}

/// The rows `mapper` makes of `doc` (see [`checked_rows`]).
fn rows_of(name: &str, mapper: &Mapper, id: &str, doc: &Value) -> Result<Vec<(Value, Value)>> {
    checked_rows(name, id, || mapper.rows(doc))
}

/// The rows `make` makes of document `id`, a map function's panic or flood an error naming
/// both.
fn checked_rows(
    name: &str,
    id: &str,
    make: impl FnOnce() -> Vec<(Value, Value)>,
) -> Result<Vec<(Value, Value)>> {
    let rows = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).map_err(|_| {
        Error::InvalidArgument(format!(
            "index '{name}': the map function panicked on document '{id}'"
        ))
    })?;
    if rows
        .iter()
        .any(|(k, v)| key::depth(k) > key::MAX_DEPTH || key::depth(v) > key::MAX_DEPTH)
    {
        return Err(Error::InvalidArgument(format!(
            "index '{name}': document '{id}' emitted a row nested deeper than {} levels",
            key::MAX_DEPTH
        )));
    }
    if rows.len() > MAX_ROWS_PER_DOC {
        return Err(Error::InvalidArgument(format!(
            "index '{name}': document '{id}' emitted {} rows (at most {MAX_ROWS_PER_DOC})",
            rows.len()
        )));
    }
    Ok(rows)
}

/// A row's two entries, written over `b` (by document: `0x00 ‖ id ‖ key ‖ value`) and `r` (the
/// row: `0x01 ‖ key ‖ id ‖ value`).
fn entry_keys(id: &str, k: &Value, v: &Value, b: &mut Vec<u8>, r: &mut Vec<u8>) {
    b.clear();
    b.push(BY_ID);
    key::encode_str(id, b);
    let key_at = b.len();
    key::encode(k, b);
    let value_at = b.len();
    key::encode(v, b);
    r.clear();
    r.push(ROW);
    r.extend_from_slice(&b[key_at..value_at]);
    key::encode_str(id, r);
    r.extend_from_slice(&b[value_at..]);
}

/// `0x00 ‖ id`: the start of every by-document entry of `id`.
fn by_id_prefix(id: &str) -> Vec<u8> {
    let mut b = vec![BY_ID];
    key::encode_str(id, &mut b);
    b
}

/// The row a by-document entry stands for.
fn row_key_of(b: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    let mut pos = 1;
    let id_start = pos;
    key::skip(b, &mut pos).map_err(|e| e.0)?;
    let id = &b[id_start..pos];
    let k_start = pos;
    key::skip(b, &mut pos).map_err(|e| e.0)?;
    let k = &b[k_start..pos];
    let v = &b[pos..];
    let mut r = Vec::with_capacity(b.len());
    r.push(ROW);
    r.extend_from_slice(k);
    r.extend_from_slice(id);
    r.extend_from_slice(v);
    Ok(r)
}

/// A row's parts: key, id, value.
pub fn parse_row(b: &[u8]) -> std::result::Result<(Value, String, Value), &'static str> {
    if b.first() != Some(&ROW) {
        return Err("not a row");
    }
    let mut pos = 1;
    let k = key::decode(b, &mut pos).map_err(|e| e.0)?;
    let id = key::decode_str(b, &mut pos).map_err(|e| e.0)?;
    let v = key::decode(b, &mut pos).map_err(|e| e.0)?;
    Ok((k, id, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    proptest! {
        /// Sorting by key prefix, then whole keys where prefixes tie, is a sort by key:
        /// short keys, keys that share long prefixes, and repeats included.
        #[test]
        fn a_sort_by_prefix_is_a_sort_by_key(
            keys in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()], 0..12),
                0..200,
            ),
        ) {
            // Entries name their keys by position, as a build's name them by span.
            let key = |e: &usize| &keys[*e][..];
            let mut got: Vec<usize> = (0..keys.len()).collect();
            sort_by_prefix(&mut got, key);
            let mut want: Vec<usize> = (0..keys.len()).collect();
            want.sort_by(|a, b| key(a).cmp(key(b)));
            let keys_of = |v: &[usize]| v.iter().map(|e| key(e).to_vec()).collect::<Vec<_>>();
            prop_assert_eq!(keys_of(&got), keys_of(&want));
            // The same entries, each once.
            let mut a = got.clone();
            a.sort();
            prop_assert_eq!(a, (0..keys.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_merge_order_of_sorted_halves_names_each_key_once() {
        let keys = |ks: &[&'static str]| ks.iter().map(|k| k.as_bytes()).collect::<Vec<_>>();
        let a = keys(&["a", "c", "e", "f"]);
        let b = keys(&["b", "c", "d"]);
        let order = merge_order(&a, &b, |k| k, |k| k).unwrap();
        let got: Vec<&[u8]> = order
            .iter()
            .map(|&p| match p & HALF_B {
                0 => a[p as usize],
                _ => b[(p & !HALF_B) as usize],
            })
            .collect();
        assert_eq!(got, keys(&["a", "b", "c", "d", "e", "f"]));
        // A key in both is taken from the first half.
        assert_eq!(order[2], 1);
        let none: Vec<&[u8]> = Vec::new();
        assert_eq!(
            merge_order(&none, &keys(&["x"]), |k| k, |k| k).unwrap(),
            vec![HALF_B]
        );
        assert_eq!(
            merge_order(&keys(&["x"]), &none, |k| k, |k| k).unwrap(),
            vec![0]
        );
    }

    /// A half with more entries than a position can name is refused with an error, not
    /// wrapped (entries of no size: 2^31 of them take no memory).
    #[test]
    fn a_half_too_large_for_its_positions_is_an_error() {
        let huge: &[()] = &[(); HALF_B as usize];
        let key = |_: &()| -> &[u8] { b"k" };
        for (a, b) in [(huge, &[][..]), (&[][..], huge)] {
            let e = merge_order(a, b, key, key).unwrap_err();
            assert!(e.to_string().contains("too many index entries"), "{e}");
        }
    }

    /// Two halves' entries read through their merge order are the sorted entries of both,
    /// each row with its own document's slot, by-document entries first.
    #[test]
    fn merged_halves_read_as_one_sorted_sequence() {
        use tree::Sorted;
        let link = |i: u8| Cid::of_cbor(&[i]);
        let mut halves = [Mapped::default(), Mapped::default()];
        for (i, n) in [(0u8, 5u64), (1, 3), (2, 9), (3, 1), (4, 3)] {
            let id = format!("d{i}");
            let row = vec![(Value::from(n), Value::Null)];
            halves[usize::from(i % 2)]
                .add_rows("t", &id, (link(i), u64::from(i) + 10), || row)
                .unwrap();
        }
        for h in &mut halves {
            h.sort();
        }
        let [a, b] = &halves;
        let merged = Merged {
            halves: [a, b],
            by_id: merge_order(&a.by_id, &b.by_id, |s| a.key(*s), |s| b.key(*s)).unwrap(),
            rows: merge_order(&a.rows, &b.rows, |r| a.key(r.0), |r| b.key(r.0)).unwrap(),
        };
        assert_eq!(merged.len(), 10);
        let keys: Vec<&[u8]> = (0..10).map(|i| merged.key(i)).collect();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(keys, want, "sorted");
        assert!((0..5).all(|i| merged.key(i)[0] == BY_ID && merged.slot(i) == Some(SLOT)));
        for i in 5..10 {
            let (_, id, _) = parse_row(merged.key(i)).unwrap();
            let d: u8 = id[1..].parse().unwrap();
            let want = Slot {
                version: u64::from(d) + 10,
                link: Some(link(d)),
            };
            assert_eq!(merged.slot(i), Some(want), "row of {id}");
        }
    }
}
