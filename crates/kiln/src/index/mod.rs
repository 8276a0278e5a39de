//! Secondary indexes and queries.
//!
//! An index is named and kept with its database (in the database's derived record, see
//! `db::derived`), so every process and the CLI find it: either declared fields
//! ([`IndexDef::Fields`]) or a Rust map function registered under the index's name in each
//! process that opens the database ([`Database::register_map`]). Its rows live in a prolly
//! tree (`model::tree`, the documents' own) keyed by an order-preserving encoding of
//! (key, id, value) ([`key`]), written to sealed files like every other block. A query first
//! brings the index up to date from the database's changes since the heads it holds, so after
//! one write the next query maps one document ([`update`]), then reads byte ranges of the
//! tree ([`query`]).
//!
//! Indexes are derived data: never synced, each replica keeps its own, brought up to date from
//! whatever reached its documents (a commit, a merge, a sync); a fork starts with its source's
//! (it shares its files); a purge or a history cut drops them (they are rebuilt when next
//! used). Why not sync them: a replica trusts no one's derived data but its own, a map
//! function exists only in the processes that register it, and bringing an index up to date
//! costs one map call per changed document, what a sync already brings in.
//!
//! Layers: uses `db` (changes, heads, documents, derived records), `model::tree`; nothing
//! below knows of it.

pub mod def;
pub mod key;
mod nodes;
pub mod query;
mod state;
mod update;

pub use def::{Emit, IndexDef, MapFn};
pub use query::{Query, Row, Select};
pub use update::IndexUpdate;

use crate::db::derived::Derived;
use crate::db::Database;
use crate::error::{Error, Result};
use def::Mapper;
use nodes::Nodes;
use serde_json::Value;
use state::IndexState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Index states parsed from the derived record last read (it is replaced whole, so a record
/// still the same `Arc` holds the same states).
#[derive(Default)]
struct ParsedStates(Mutex<Option<(Arc<Derived>, HashMap<String, Arc<IndexState>>)>>);

/// The map functions registered with one database handle.
#[derive(Default)]
struct Registry {
    maps: RwLock<HashMap<String, (u32, MapFn)>>,
}

/// What `kiln index list` shows of an index.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IndexInfo {
    /// Its name.
    pub name: String,
    /// Its definition.
    pub def: IndexDef,
    /// Rows when last brought up to date.
    pub rows: u64,
    /// Up to date with the database's current heads.
    pub current: bool,
    /// Built at least once.
    pub built: bool,
    /// Bytes of its files.
    pub bytes: u64,
    /// Its tree's root (`None`: no rows, or not built): the same rows make the same root.
    pub root: Option<crate::Cid>,
    /// Files holding its tree (a base and the deltas since).
    pub files: usize,
}

/// A query's rows without documents, and each row's slot (the version it was made from).
type Found = (Vec<Row>, Vec<crate::model::tree::Slot>);

/// How often a query starts again when a file its index named was replaced under it by
/// another process.
const READ_TRIES: usize = 3;

/// Rows whose documents are found together (`DocReader::gather`): enough for the lookups'
/// waits for memory to overlap, few enough that a caller who stops early has not had many
/// found for nothing.
const DOCS_AT_ONCE: usize = 64;

impl Database {
    /// Declares index `name` on the database (kept with it: every process sees it). The same
    /// definition again changes nothing (`false`); a different one replaces the index, which
    /// is built again when next used (`true`).
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = kiln::Store::open(dir.path())?.create(Some("c"))?;
    /// use kiln::index::{IndexDef, Query};
    /// use serde_json::json;
    /// db.put(&json!({"_id": "a", "n": 2}))?;
    /// db.put(&json!({"_id": "b", "n": 1}))?;
    /// db.create_index("by-n", IndexDef::fields(["n"]))?;
    /// let rows = db.query("by-n", &Query::range(json!(1), json!(5)))?;
    /// assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
    /// # Ok(()) }
    /// ```
    pub fn create_index(&self, name: &str, def: IndexDef) -> Result<bool> {
        def::check_name(name)?;
        def.check()?;
        if matches!(def, IndexDef::Map { .. }) {
            return Err(Error::InvalidArgument(
                "a map-function index is made with register_map".into(),
            ));
        }
        self.define(name, def)
    }

    fn define(&self, name: &str, def: IndexDef) -> Result<bool> {
        self.env().writable("an index definition")?;
        self.update_derived(|d, _| match IndexState::of(d, name)? {
            Some(st) if st.def == def => Ok(false),
            _ => {
                IndexState::new(def).put(d, name);
                Ok(true)
            }
        })
    }

    /// Registers `f` as index `name`'s map function in this process (for every clone of this
    /// handle), declaring the index on the database if it is not (or was with another
    /// `version`: bump it when the function changes, and the index is built again). The
    /// index's identity is its name, never the function's code. On a read-only store the
    /// definition is not written; queries then build the index in memory.
    pub fn register_map(
        &self,
        name: &str,
        version: u32,
        f: impl Fn(&Value, &mut Emit) + Send + Sync + 'static,
    ) -> Result<()> {
        def::check_name(name)?;
        self.upper_state::<Registry>()
            .maps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (version, Arc::new(f)));
        if self.writable() {
            self.define(name, IndexDef::Map { version })?;
        }
        Ok(())
    }

    /// Removes index `name` (its files go at the next garbage collection); `false` when there
    /// was none.
    pub fn drop_index(&self, name: &str) -> Result<bool> {
        self.env().writable("dropping an index")?;
        self.upper_state::<Registry>()
            .maps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.update_derived(|d, _| Ok(d.entries.remove(&state::entry_name(name)).is_some()))
    }

    /// The database's indexes, by name.
    pub fn indexes(&self) -> Result<Vec<IndexInfo>> {
        let d = self.derived()?;
        let heads = self.heads()?;
        let mut out = Vec::new();
        for name in state::names(&d) {
            let Some(st) = IndexState::of(&d, &name)? else {
                continue;
            };
            out.push(IndexInfo {
                current: st.heads.as_deref() == Some(&heads[..]),
                built: st.heads.is_some(),
                rows: st.rows,
                bytes: st.files.iter().map(|f| f.1).sum(),
                root: st.root,
                files: st.files.len(),
                def: st.def,
                name,
            });
        }
        Ok(out)
    }

    /// Brings index `name` up to date now (a query does so itself) and says what it did.
    pub fn update_index(&self, name: &str) -> Result<IndexUpdate> {
        self.env().writable("an index update")?;
        self.update_kept(name, false).map(|(_, up)| up)
    }

    /// Builds index `name` again from every document.
    pub fn rebuild_index(&self, name: &str) -> Result<IndexUpdate> {
        self.env().writable("an index rebuild")?;
        self.update_kept(name, true).map(|(_, up)| up)
    }

    /// Reads rows of index `name` (see [`Query`]), bringing it up to date first.
    pub fn query(&self, name: &str, q: &Query) -> Result<Vec<Row>> {
        let (mut rows, slots) = self.rows_of(name, q)?;
        if q.docs {
            self.add_docs(&mut rows, &slots, &mut |_| Ok(true))?;
        }
        Ok(rows)
    }

    /// [`Database::query`] one row at a time: `f` takes each row (with its document, when
    /// asked) as it is read, and returns whether to go on. The index is read first (its rows
    /// without documents are held, ~100 bytes each); the documents are found a batch of rows
    /// ahead (their file pages and segments read), each decoded only when its row is handed
    /// over and the caller's from then on, so a large answer is never held whole. A document
    /// that cannot be read is an error at its row, not before.
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = kiln::Store::open(dir.path())?.create(Some("shop"))?;
    /// db.put(&serde_json::json!({"_id": "a", "price": 3}))?;
    /// db.create_index("price", kiln::IndexDef::fields(["price"]))?;
    /// let mut total = 0;
    /// db.query_each("price", &kiln::Query::all().with_docs(), &mut |row| {
    ///     total += row.doc.as_ref().and_then(|d| d["price"].as_i64()).unwrap_or(0);
    ///     Ok(true)
    /// })?;
    /// assert_eq!(total, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn query_each(
        &self,
        name: &str,
        q: &Query,
        f: &mut dyn FnMut(Row) -> Result<bool>,
    ) -> Result<()> {
        let rows = self.rows_of(name, q)?;
        self.hand_over(rows, q.docs, f)
    }

    /// Reads rows of index `name` as they were at `event` (see [`Query`]): the index is built
    /// in memory from the state at that event, mapping every document it holds (the cost of
    /// a build; nothing is written), and documents are read as they were then.
    pub fn query_at(&self, name: &str, q: &Query, event: &crate::Cid) -> Result<Vec<Row>> {
        let d = self.derived()?;
        let st = self.index_state(&d, name)?;
        let mapper = self.mapper(name, &st.def)?;
        let mut nodes = Nodes::new(self, &IndexState::new(st.def.clone()));
        let root = update::build_at(self, name, event, &mapper, &mut nodes)?;
        let rows = query::run(&nodes, root.as_ref(), q, name)?;
        let mut out = Vec::new();
        self.hand_over(rows, q.docs, &mut |r| {
            out.push(r);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The rows `q` selects, without documents, each with its slot.
    fn rows_of(&self, name: &str, q: &Query) -> Result<Found> {
        let mut tries = 0;
        loop {
            match self.rows_once(name, q) {
                Err(Error::MissingFile(..)) if tries + 1 < READ_TRIES => tries += 1,
                // An index file lost for good: derived data, built again.
                Err(Error::MissingFile(..)) if self.writable() => {
                    self.update_kept(name, true)?;
                    return self.rows_once(name, q);
                }
                r => return r,
            }
        }
    }

    fn rows_once(&self, name: &str, q: &Query) -> Result<Found> {
        let d = self.derived()?;
        let st = self.parsed_state(&d, name)?;
        let current = st.heads.as_deref() == Some(&self.heads()?[..]);
        if current {
            query::run(&Nodes::new(self, &st), st.root.as_ref(), q, name)
        } else if self.writable() {
            let (st, _) = self.update_kept(name, false)?;
            query::run(&Nodes::new(self, &st), st.root.as_ref(), q, name)
        } else {
            // A read-only store: brought up to date in memory, for this query.
            let mut st = IndexState::clone(&st);
            let mapper = self.mapper(name, &st.def)?;
            let mut nodes = Nodes::new(self, &st);
            update::bring_up_to_date(self, name, &mut st, &mapper, &mut nodes)?;
            query::run(&nodes, st.root.as_ref(), q, name)
        }
    }

    /// Hands `f` each row, with its document when `docs`, until it says stop.
    fn hand_over(
        &self,
        (mut rows, slots): Found,
        docs: bool,
        f: &mut dyn FnMut(Row) -> Result<bool>,
    ) -> Result<()> {
        let mut take = |r: &mut Row| -> Result<bool> {
            f(Row {
                key: std::mem::take(&mut r.key),
                id: std::mem::take(&mut r.id),
                value: std::mem::take(&mut r.value),
                doc: r.doc.take(),
            })
        };
        if !docs {
            for r in &mut rows {
                if !take(r)? {
                    break;
                }
            }
            return Ok(());
        }
        self.add_docs(&mut rows, &slots, &mut take)
    }

    /// Gives each row its document (the version its slot names; `null` when purged since),
    /// read in one state, and hands it to `then`, which says whether to go on. A read that must start again on a newer state (a file a compaction
    /// replaced) goes on from the row it stopped at: `then` sees each row once, in order.
    fn add_docs(
        &self,
        rows: &mut [Row],
        slots: &[crate::model::tree::Slot],
        then: &mut dyn FnMut(&mut Row) -> Result<bool>,
    ) -> Result<()> {
        let mut next = 0;
        let mut refused = None;
        self.read_docs(|docs| {
            while next < rows.len() {
                let end = rows.len().min(next + DOCS_AT_ONCE);
                let wants: Vec<_> = slots[next..end]
                    .iter()
                    .map(|s| (s.link, s.version))
                    .collect();
                let found = docs.gather(&wants);
                for (k, i) in (next..end).enumerate() {
                    let r = &mut rows[i];
                    r.doc = Some(docs.gathered(&found, &wants, k, &r.id)?);
                    // The caller's error is its own: not a reason to read again.
                    match then(r) {
                        Ok(true) => next += 1,
                        Ok(false) => next = rows.len(),
                        Err(e) => {
                            refused = Some(e);
                            next = rows.len();
                        }
                    }
                    if next == rows.len() {
                        break;
                    }
                }
            }
            Ok(())
        })?;
        refused.map_or(Ok(()), Err)
    }

    /// Documents whose fields equal the values given (`field`: a dotted path as in
    /// [`IndexDef::fields`]; numbers equal by value), in id order, at most `limit`. Uses the
    /// index whose fields are the most of those given (all its fields among them, no `each`),
    /// reading only the rows with those values; without one it reads every document.
    pub fn find(&self, conditions: &[(String, Value)], limit: Option<usize>) -> Result<Vec<Value>> {
        let mut paths = Vec::with_capacity(conditions.len());
        for (f, _) in conditions {
            paths.push(def::parse_path(f)?);
        }
        let matches = |doc: &Value| {
            paths.iter().zip(conditions).all(|(p, (_, want))| {
                def::lookup(doc, p).is_some_and(|v| key::compare(v, want).is_eq())
            })
        };
        let mut out = Vec::new();
        if limit == Some(0) {
            return Ok(out);
        }
        if let Some((index, k)) = self.index_for(conditions)? {
            for r in self.query(&index, &Query::key(k).with_docs())? {
                if let Some(doc) = r.doc.filter(|d| !d.is_null() && matches(d)) {
                    out.push(doc);
                    if limit.is_some_and(|l| out.len() >= l) {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        self.scan(&crate::db::ListOptions::default(), &mut |doc| {
            if matches(&doc) {
                out.push(doc);
            }
            limit.is_none_or(|l| out.len() < l)
        })?;
        Ok(out)
    }

    /// The name of the declared index that serves `conditions` best and the key to read in it.
    pub fn index_for(&self, conditions: &[(String, Value)]) -> Result<Option<(String, Value)>> {
        let d = self.derived()?;
        let mut best: Option<(usize, String, Value)> = None;
        for name in state::names(&d) {
            let Some(st) = IndexState::of(&d, &name)? else {
                continue;
            };
            let IndexDef::Fields {
                fields,
                each: false,
            } = &st.def
            else {
                continue;
            };
            let vals: Option<Vec<Value>> = fields
                .iter()
                .map(|f| {
                    conditions
                        .iter()
                        .find(|(c, _)| c == f)
                        .map(|(_, v)| v.clone())
                })
                .collect();
            let Some(vals) = vals else { continue };
            if best.as_ref().is_some_and(|b| b.0 >= fields.len()) {
                continue;
            }
            let k = if vals.len() == 1 {
                vals.into_iter().next().unwrap_or(Value::Null)
            } else {
                Value::Array(vals)
            };
            best = Some((fields.len(), name, k));
        }
        Ok(best.map(|(_, n, k)| (n, k)))
    }

    /// [`Database::index_state`], parsed once per derived record: a query on an index that
    /// is current parses nothing.
    fn parsed_state(&self, d: &Arc<Derived>, name: &str) -> Result<Arc<IndexState>> {
        let memo = self.upper_state::<ParsedStates>();
        let mut kept = memo.0.lock().unwrap_or_else(|p| p.into_inner());
        let (_, states) = match &mut *kept {
            Some(k) if Arc::ptr_eq(&k.0, d) => k,
            other => other.insert((d.clone(), HashMap::new())),
        };
        if let Some(st) = states.get(name) {
            return Ok(st.clone());
        }
        match IndexState::of(d, name)? {
            Some(st) => {
                let st = Arc::new(st);
                states.insert(name.to_owned(), st.clone());
                Ok(st)
            }
            // (Not kept: the state of a map function's index the record lacks follows what
            // this handle registers.)
            None => Ok(Arc::new(self.unrecorded_state(name)?)),
        }
    }

    fn index_state(&self, d: &crate::db::derived::Derived, name: &str) -> Result<IndexState> {
        match IndexState::of(d, name)? {
            Some(st) => Ok(st),
            None => self.unrecorded_state(name),
        }
    }

    /// The state of index `name`, which the derived record lacks: a map function registered
    /// here whose definition could not be written (a read-only store), not built yet.
    fn unrecorded_state(&self, name: &str) -> Result<IndexState> {
        let maps = self.upper_state::<Registry>();
        let maps = maps.maps.read().unwrap_or_else(|p| p.into_inner());
        match maps.get(name) {
            Some((version, _)) => Ok(IndexState::new(IndexDef::Map { version: *version })),
            None => Err(Error::NoSuchIndex(name.to_owned(), self.name().to_owned())),
        }
    }

    /// What maps documents for index `name`.
    fn mapper(&self, name: &str, def: &IndexDef) -> Result<Mapper> {
        match def {
            IndexDef::Fields { fields, each } => Mapper::of_fields(fields, *each),
            IndexDef::Map { version } => {
                let maps = self.upper_state::<Registry>();
                let maps = maps.maps.read().unwrap_or_else(|p| p.into_inner());
                match maps.get(name) {
                    Some((v, f)) if v == version => Ok(Mapper::Map(f.clone())),
                    Some((v, _)) => Err(Error::InvalidArgument(format!(
                        "index '{name}' is defined with map function version {version}, this \
                         process registered version {v}"
                    ))),
                    None => Err(Error::InvalidArgument(format!(
                        "index '{name}' uses a map function this process has not registered \
                         (Database::register_map)"
                    ))),
                }
            }
        }
    }

    /// Brings index `name` up to date (from scratch with `rebuild`) and writes it out.
    fn update_kept(&self, name: &str, rebuild: bool) -> Result<(IndexState, IndexUpdate)> {
        self.update_derived(|d, w| {
            let mut st = self.index_state(d, name)?;
            if rebuild {
                st.reset();
            }
            let mapper = self.mapper(name, &st.def)?;
            let mut nodes = Nodes::new(self, &st);
            let up = match update::bring_up_to_date(self, name, &mut st, &mapper, &mut nodes)
                .and_then(|up| nodes.write_out(&mut st, w).map(|()| up))
            {
                // A file of the index is lost: derived data, built again from the documents.
                Err(Error::MissingFile(..)) => {
                    st.reset();
                    nodes = Nodes::new(self, &st);
                    let up = update::bring_up_to_date(self, name, &mut st, &mapper, &mut nodes)?;
                    nodes.write_out(&mut st, w)?;
                    up
                }
                r => r?,
            };
            st.put(d, name);
            Ok((st, up))
        })
    }
}
