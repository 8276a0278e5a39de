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

use crate::db::Database;
use crate::error::{Error, Result};
use def::Mapper;
use nodes::Nodes;
use serde_json::Value;
use state::IndexState;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

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

/// How often a query starts again when a file its index named was replaced under it by
/// another process.
const READ_TRIES: usize = 3;

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
        let mut tries = 0;
        loop {
            match self.query_once(name, q) {
                Err(Error::MissingFile(..)) if tries + 1 < READ_TRIES => tries += 1,
                // An index file lost for good: derived data, built again.
                Err(Error::MissingFile(..)) if self.writable() => {
                    self.update_kept(name, true)?;
                    return self.query_once(name, q);
                }
                r => return r,
            }
        }
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
        self.with_docs(rows, q.docs)
    }

    fn query_once(&self, name: &str, q: &Query) -> Result<Vec<Row>> {
        let d = self.derived()?;
        let st = self.index_state(&d, name)?;
        let current = st.heads.as_deref() == Some(&self.heads()?[..]);
        let rows = if current {
            query::run(&Nodes::new(self, &st), st.root.as_ref(), q, name)?
        } else if self.writable() {
            let (st, _) = self.update_kept(name, false)?;
            query::run(&Nodes::new(self, &st), st.root.as_ref(), q, name)?
        } else {
            // A read-only store: brought up to date in memory, for this query.
            let mut st = st;
            let mapper = self.mapper(name, &st.def)?;
            let mut nodes = Nodes::new(self, &st);
            update::bring_up_to_date(self, name, &mut st, &mapper, &mut nodes)?;
            query::run(&nodes, st.root.as_ref(), q, name)?
        };
        self.with_docs(rows, q.docs)
    }

    /// The rows, each with its document (the version its slot names) when `docs`.
    fn with_docs(
        &self,
        rows: Vec<(Row, crate::model::tree::Slot)>,
        docs: bool,
    ) -> Result<Vec<Row>> {
        if !docs {
            return Ok(rows.into_iter().map(|(r, _)| r).collect());
        }
        // Each row's document as the version it was made from, read in one state.
        let linked: Vec<(&str, crate::Cid, u64)> = rows
            .iter()
            .filter_map(|(r, s)| s.link.map(|l| (r.id.as_str(), l, s.version)))
            .collect();
        let mut docs = self.load_linked(&linked)?.into_iter();
        let mut out = Vec::with_capacity(rows.len());
        for (mut r, s) in rows {
            r.doc = Some(match s.link {
                Some(_) => docs.next().unwrap_or(Value::Null),
                None => self.get(&r.id)?.unwrap_or(Value::Null),
            });
            out.push(r);
        }
        Ok(out)
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

    fn index_state(&self, d: &crate::db::derived::Derived, name: &str) -> Result<IndexState> {
        if let Some(st) = IndexState::of(d, name)? {
            return Ok(st);
        }
        // A map function registered here whose definition could not be written (a read-only
        // store): an index not built yet.
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
