//! Importing a Fireproof (JavaScript, 0.24) file-gateway ledger into a new kiln database,
//! history included: each Fireproof event becomes one kiln event with the same parents (the
//! genesis event every ledger starts with is left out), its writes the same documents, its
//! attachments kiln attachments. Every block is re-hashed against its CID, every file against
//! its name. The import is all or nothing: on any error the new database is dropped.
//!
//! Fireproof's state of several heads is its pail replay ([`replay`]); kiln's own merge of heads
//! picks other winners, so where Fireproof joins heads (an event with several parents) and
//! where the ledger ends with several heads, the keys the branches wrote are written with
//! Fireproof's values (at the end, by one more event joining the heads, noted as such).
//!
//! Layers: uses `store`, `db`, `attachments`; nothing below knows of it.

mod car;
mod convert;
mod ipld;
mod keybag;
mod ledger;
mod replay;

use crate::attachments::Attachment;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::store::Store;
use convert::FpFile;
use ipld::FpCid;
use ledger::{Event, Layout, Ledger, ReadError, GENESIS_ID};
use replay::Replayer;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What to import and how.
#[derive(Default)]
pub struct ImportOptions<'a> {
    /// The ledger (required when the store holds more than one).
    pub ledger: Option<String>,
    /// The new database's name (default: the ledger's).
    pub into: Option<String>,
    /// The keybag entry to decrypt with (default `@<ledger>-data@`, then any key whose
    /// fingerprint the files name).
    pub key_name: Option<String>,
    /// Called after each event with (events done, events in all).
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// The ledger imported.
    pub ledger: String,
    /// The kiln database made.
    pub database: String,
    /// Live documents at the end.
    pub documents: u64,
    /// Documents written and later deleted.
    pub deleted: u64,
    /// Attached files (distinct by content) brought over, and their bytes.
    pub attachments: u64,
    /// Their bytes.
    pub attachment_bytes: u64,
    /// Fireproof files read and their bytes on disk.
    pub files_read: u64,
    /// Their bytes.
    pub bytes_read: u64,
    /// Fireproof events imported (the genesis left out).
    pub events: u64,
    /// kiln events written (one per event with writes, and one joining several heads).
    pub kiln_events: u64,
    /// The ledger's heads.
    pub heads: Vec<String>,
    /// Document versions whose values Fireproof's compaction dropped: their events are
    /// imported without them.
    pub hollow_versions: u64,
    /// Events all of whose values Fireproof's compaction dropped: nothing to write, so no kiln
    /// event stands for them (their children follow their parents).
    pub hollow_events: u64,
    /// Fireproof files its car log does not name (left by a compaction or a crash) that did
    /// not read, and why: passed over.
    pub skipped_files: Vec<String>,
    /// The ledger has indexes (derived data: not imported; recreate them with
    /// `kiln index create`).
    pub indexes_skipped: bool,
    /// The ledger was compacted by Fireproof.
    pub compacted: bool,
    /// Its files were encrypted (an unencrypted store's are not).
    pub encrypted: bool,
}

fn read_err(e: ReadError) -> Error {
    match e {
        ReadError::Damaged { file, why } => Error::Corrupt {
            location: file,
            what: why,
        },
        other => Error::InvalidArgument(other.to_string()),
    }
}

/// The ledgers of the Fireproof store at `dir`.
pub fn list_ledgers(dir: &Path) -> Result<Vec<String>> {
    Ok(ledger::layout(dir)
        .map_err(read_err)?
        .ledgers
        .into_keys()
        .collect())
}

/// Imports a ledger of the Fireproof store at `dir` into a new database of `store`.
pub fn import_fireproof(
    store: &Store,
    dir: &Path,
    mut opts: ImportOptions<'_>,
) -> Result<ImportReport> {
    let layout = ledger::layout(dir).map_err(read_err)?;
    let name = match &opts.ledger {
        Some(n) => n.clone(),
        None if layout.ledgers.len() == 1 => {
            layout.ledgers.keys().next().cloned().unwrap_or_default()
        }
        None => {
            return Err(Error::InvalidArgument(format!(
                "the Fireproof store holds {} ledgers; say which (--ledger): {}",
                layout.ledgers.len(),
                layout
                    .ledgers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let into = opts.into.clone().unwrap_or_else(|| name.clone());
    crate::store::check_name(&into)
        .map_err(|e| Error::InvalidArgument(format!("{e} (name the new database with --into)")))?;
    let l = read_ledger(&layout, &name, opts.key_name.as_deref())?;
    if store.exists(&into) {
        // What a killed import left is replaced; any other database is never written into.
        let unfinished = store
            .open_db(&into)
            .and_then(|d| d.meta())
            .is_ok_and(|m| m.contains_key(UNFINISHED));
        if !unfinished {
            return Err(Error::DatabaseExists(into));
        }
        store.drop_db(&into)?;
    }
    let db = store.create(Some(&into))?;
    let mut undo = Undo {
        store,
        name: into.clone(),
        db: Some(db.clone()),
        sets: Vec::new(),
    };
    // Marked until done (a killed import is replaced by the next); all or nothing: commits are
    // made durable once, at the end.
    db.update_meta(|m| {
        m.insert(UNFINISHED.into(), Value::String(name.clone()));
    })?;
    db.buffer_commits(true);
    let mut importer = Importer::new(&l, &db);
    let done = importer.run(&mut opts);
    undo.sets = std::mem::take(&mut importer.sets);
    let mut report = done?;
    db.buffer_commits(false);
    db.update_meta(|m| {
        m.remove(UNFINISHED);
    })?;
    db.sync()?;
    undo.db = None;
    report.database = into;
    Ok(report)
}

/// The metadata key that marks a database an import is still making.
pub const UNFINISHED: &str = "fireproof_import_unfinished";

/// Takes back an import that did not finish (an error, or a panic): the new database and the
/// file-sets it wrote (nothing else names them: they are under its new lineage's key).
struct Undo<'a> {
    store: &'a Store,
    name: String,
    db: Option<Database>,
    sets: Vec<crate::storage::FileName>,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else { return };
        db.buffer_commits(false);
        let env = db.env().clone();
        drop(db);
        let _ = self.store.drop_db(&self.name);
        for s in &self.sets {
            let _ = env.filesets.remove(s);
        }
    }
}

fn read_ledger(layout: &Layout, name: &str, key_name: Option<&str>) -> Result<Ledger> {
    Ledger::open(layout, name, key_name).map_err(read_err)
}

struct Importer<'a> {
    l: &'a Ledger,
    db: &'a Database,
    /// Each Fireproof event's kiln events (itself, or its parents' when it wrote nothing).
    mapped: HashMap<FpCid, Vec<Cid>>,
    /// The Fireproof event each kiln event was made for.
    origin: HashMap<Cid, FpCid>,
    /// Value blocks Fireproof no longer has.
    hollow: std::collections::HashSet<FpCid>,
    /// Ids written with a value at some point.
    written: std::collections::HashSet<String>,
    /// Attachments written, by their Fireproof CID: their `_files` entry.
    files: HashMap<FpCid, Value>,
    report: ImportReport,
    deleted: std::collections::BTreeSet<String>,
    /// File-sets written.
    sets: Vec<crate::storage::FileName>,
}

impl<'a> Importer<'a> {
    fn new(l: &'a Ledger, db: &'a Database) -> Importer<'a> {
        Importer {
            l,
            db,
            mapped: HashMap::new(),
            origin: HashMap::new(),
            hollow: Default::default(),
            written: Default::default(),
            files: HashMap::new(),
            report: ImportReport {
                ledger: l.name.clone(),
                heads: l.heads.iter().map(ToString::to_string).collect(),
                files_read: l.cars as u64,
                bytes_read: l.bytes,
                indexes_skipped: l.has_indexes,
                compacted: l.compacted,
                encrypted: l.encrypted,
                ..ImportReport::default()
            },
            deleted: Default::default(),
            sets: Vec::new(),
        }
    }

    fn run(&mut self, opts: &mut ImportOptions<'_>) -> Result<ImportReport> {
        let (events, missing) = self.l.events().map_err(read_err)?;
        if let Some(m) = missing.first() {
            // (Fireproof's compaction keeps every event: one missing is damage.)
            return Err(Error::Corrupt {
                location: format!("ledger {}", self.l.name),
                what: format!("event {m} is missing (a head or a parent names it)"),
            });
        }
        let order = topological(&events);
        let total = order.len() as u64;
        let mut replay = Replayer::new(&events);
        for (i, c) in order.iter().enumerate() {
            let e = &events[c];
            self.event(e, &mut replay)?;
            if let Some(p) = opts.progress.as_mut() {
                p(i as u64 + 1, total);
            }
        }
        self.join_heads(&mut replay)?;
        self.check_state(&events, &mut replay)?;
        self.report.documents = self.db.info()?.docs;
        self.report.deleted = self
            .deleted
            .iter()
            .filter(|id| matches!(self.db.get(id), Ok(None)))
            .count() as u64;
        self.report.skipped_files = self.l.skipped.clone();
        Ok(self.report.clone())
    }

    /// The kiln events standing for `e`'s parents, less any that is an ancestor of another
    /// (a parent that wrote nothing stands for its own parents, which may lie below a sibling).
    fn parents_of(&self, parents: &[FpCid], replay: &Replayer) -> Vec<Cid> {
        let mut out: Vec<Cid> = parents
            .iter()
            .flat_map(|p| self.mapped.get(p).cloned().unwrap_or_default())
            .collect();
        out.sort();
        out.dedup();
        if out.len() > 1 {
            let fp: Vec<Option<&FpCid>> = out.iter().map(|k| self.origin.get(k)).collect();
            let below = |i: usize| {
                fp.iter().enumerate().any(|(j, b)| {
                    j != i && matches!((fp[i], b), (Some(a), Some(b)) if replay.is_ancestor(a, b))
                })
            };
            let keep: Vec<bool> = (0..out.len()).map(|i| !below(i)).collect();
            let mut i = 0;
            out.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        out
    }

    /// Imports one event as a kiln event (none when it writes nothing kiln keeps).
    fn event(&mut self, e: &Event, replay: &mut Replayer) -> Result<()> {
        let parents = self.parents_of(&e.parents, replay);
        let mut writes: Vec<(String, FpCid)> = Vec::new();
        if e.parents.len() > 1 {
            // Fireproof joins heads by its replay: the keys the branches wrote get its values.
            let (_, puts) = replay.plan(&e.parents).map_err(|w| Error::Corrupt {
                location: format!("ledger {}", self.l.name),
                what: w,
            })?;
            writes.extend(puts);
        }
        writes.extend(e.ops.iter().cloned());
        writes.retain(|(k, _)| k != GENESIS_ID);
        self.report.events += u64::from(!is_genesis(e));
        let committed = self.commit(&parents, &writes, &format!("{NOTE_PREFIX}{}", e.cid))?;
        if committed.is_none() && !writes.is_empty() {
            self.report.hollow_events += 1;
        }
        self.mapped
            .insert(e.cid.clone(), committed.map_or(parents, |c| vec![c]));
        Ok(())
    }

    /// Where the ledger ends with several heads: one kiln event joins them, writing what
    /// Fireproof's replay says the branches' keys hold.
    fn join_heads(&mut self, replay: &mut Replayer) -> Result<()> {
        if self.l.heads.len() < 2 {
            return Ok(());
        }
        let (_, puts) = replay.plan(&self.l.heads).map_err(|w| Error::Corrupt {
            location: format!("ledger {}", self.l.name),
            what: w,
        })?;
        let parents = self.parents_of(&self.l.heads, replay);
        let mut last: BTreeMap<String, FpCid> = BTreeMap::new();
        for (k, v) in puts {
            if k != GENESIS_ID {
                last.insert(k, v);
            }
        }
        let writes: Vec<(String, FpCid)> = last.into_iter().collect();
        self.commit(
            &parents,
            &writes,
            "fireproof import: joins the ledger's heads as Fireproof reads them",
        )?;
        Ok(())
    }

    /// Checks the database's state against Fireproof's own (its head's trie, or for several
    /// heads the trie of their common ancestor with the replay on top), document by
    /// document. Skipped where Fireproof no longer has that trie.
    fn check_state(&self, events: &BTreeMap<FpCid, Event>, replay: &mut Replayer) -> Result<()> {
        let want: BTreeMap<String, FpCid> = match self.l.heads.as_slice() {
            [] => BTreeMap::new(),
            [h] => match events.get(h).and_then(|e| e.root.clone()) {
                Some(root) => match self.l.pail_entries(&root).map_err(read_err)? {
                    Some(m) => m,
                    None => return Ok(()),
                },
                None => return Ok(()),
            },
            heads => {
                let (ancestor, puts) = replay.plan(heads).map_err(|w| Error::Corrupt {
                    location: format!("ledger {}", self.l.name),
                    what: w,
                })?;
                let Some(root) = events.get(&ancestor).and_then(|e| e.root.clone()) else {
                    return Ok(());
                };
                let Some(mut m) = self.l.pail_entries(&root).map_err(read_err)? else {
                    return Ok(());
                };
                m.extend(puts);
                m
            }
        };
        let differs = |id: &str, why: &str| Error::Corrupt {
            location: format!("ledger {}", self.l.name),
            what: format!("document {id:?} imported differs from Fireproof's state: {why}"),
        };
        let mut live = 0u64;
        for (id, v) in &want {
            if id == GENESIS_ID {
                continue;
            }
            let Some(value) = self.l.value(v).map_err(read_err)? else {
                continue; // (a value Fireproof no longer has: counted as hollow)
            };
            let got = self.db.get(id)?;
            match (value, got) {
                (None, None) => {}
                (Some(doc), Some(mut got)) => {
                    live += 1;
                    let (body, _) = convert::document(id, &doc).map_err(Error::InvalidDocument)?;
                    if let Some(o) = got.as_object_mut() {
                        o.remove(crate::model::doc::files::FILES);
                    }
                    if got != Value::Object(body) {
                        return Err(differs(id, "another value"));
                    }
                }
                (None, Some(_)) => return Err(differs(id, "live in kiln, deleted in Fireproof")),
                (Some(_), None) => return Err(differs(id, "deleted in kiln, live in Fireproof")),
            }
        }
        if self.db.info()?.docs != live {
            return Err(Error::Corrupt {
                location: format!("ledger {}", self.l.name),
                what: format!(
                    "{} documents imported, Fireproof's state holds {live}",
                    self.db.info()?.docs
                ),
            });
        }
        Ok(())
    }

    /// Commits `writes` (document id, Fireproof value block; the last write of an id wins) on
    /// `parents`; `None` when nothing was written.
    fn commit(
        &mut self,
        parents: &[Cid],
        writes: &[(String, FpCid)],
        note: &str,
    ) -> Result<Option<Cid>> {
        let mut last: BTreeMap<&str, &FpCid> = BTreeMap::new();
        for (k, v) in writes {
            last.insert(k, v);
        }
        let mut tx = self.db.transaction_on(parents)?;
        let mut n = 0;
        for (id, v) in last {
            match self.l.value(v).map_err(read_err)? {
                None => {
                    if self.hollow.insert(v.clone()) {
                        self.report.hollow_versions += 1;
                    }
                }
                Some(None) => {
                    tx.del(id)?;
                    if self.written.contains(id) {
                        self.deleted.insert(id.to_owned());
                    }
                    n += 1;
                }
                Some(Some(doc)) => {
                    let (mut body, files) =
                        convert::document(id, &doc).map_err(Error::InvalidDocument)?;
                    if !files.is_empty() {
                        let entries = self.file_entries(&files)?;
                        body.insert(
                            crate::model::doc::files::FILES.into(),
                            Value::Object(entries),
                        );
                    }
                    tx.put(&Value::Object(body)).map_err(|e| match e {
                        Error::InvalidDocument(w) | Error::InvalidArgument(w) => {
                            Error::InvalidDocument(format!(
                                "Fireproof document {id:?} cannot be a kiln document: {w}"
                            ))
                        }
                        e => e,
                    })?;
                    self.written.insert(id.to_owned());
                    n += 1;
                }
            }
        }
        if n == 0 {
            return Ok(None);
        }
        let c = tx.commit_noted(note)?;
        self.report.kiln_events += 1;
        Ok(Some(c.event))
    }

    /// The `_files` entries of `files`, writing those not written yet.
    fn file_entries(&mut self, files: &[FpFile]) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for f in files {
            if !self.files.contains_key(&f.cid) {
                let bytes = self.l.attachment(&f.car, &f.cid).map_err(read_err)?;
                if bytes.len() as u64 != f.size {
                    return Err(Error::Corrupt {
                        location: format!("ledger {}", self.l.name),
                        what: format!(
                            "file {} holds {} bytes, its document says {}",
                            f.cid,
                            bytes.len(),
                            f.size
                        ),
                    });
                }
                let a = Attachment::bytes(f.name.clone(), &bytes)
                    .content_type(f.content_type.clone())
                    .modified(f.modified);
                let entries = crate::attachments::store_files(self.db, vec![a])?;
                for (_, v, set) in entries {
                    self.files.insert(f.cid.clone(), v);
                    self.sets.push(set);
                }
                self.report.attachments += 1;
                self.report.attachment_bytes += bytes.len() as u64;
            }
            if let Some(v) = self.files.get(&f.cid) {
                let mut v = v.clone();
                // The entry is the bytes'; its name is the document's.
                if let Some(o) = v.as_object_mut() {
                    o.insert("type".into(), Value::String(f.content_type.clone()));
                    o.insert("modified".into(), Value::from(f.modified));
                }
                out.insert(f.name.clone(), v);
            }
        }
        Ok(out)
    }
}

/// The note of a kiln event imported from a Fireproof event: this, then the event's CID.
pub const NOTE_PREFIX: &str = "fireproof event ";

fn is_genesis(e: &Event) -> bool {
    !e.ops.is_empty() && e.ops.iter().all(|(k, _)| k == GENESIS_ID)
}

/// The events in an order where parents come first: by height (1 + the highest parent's,
/// parents not here counting 0), then CID string.
fn topological(events: &BTreeMap<FpCid, Event>) -> Vec<FpCid> {
    let mut height: HashMap<&FpCid, u64> = HashMap::new();
    let mut stack: Vec<(&FpCid, bool)> = events.keys().map(|c| (c, false)).collect();
    while let Some((c, done)) = stack.pop() {
        if height.contains_key(c) {
            continue;
        }
        let e = &events[c];
        let present: Vec<&FpCid> = e
            .parents
            .iter()
            .filter(|p| events.contains_key(*p))
            .collect();
        if done || present.iter().all(|p| height.contains_key(*p)) {
            let h = present
                .iter()
                .filter_map(|p| height.get(*p))
                .max()
                .map_or(0, |h| h + 1);
            height.insert(c, h);
        } else {
            stack.push((c, true));
            for p in present {
                if !height.contains_key(p) {
                    stack.push((p, false));
                }
            }
        }
    }
    let mut order: Vec<(u64, String, FpCid)> = events
        .keys()
        .map(|c| {
            (
                height.get(c).copied().unwrap_or(0),
                c.to_string(),
                c.clone(),
            )
        })
        .collect();
    order.sort();
    order.into_iter().map(|(_, _, c)| c).collect()
}
