//! A database: documents in a prolly tree, transactions as events of a Merkle clock, each
//! transaction one sealed diff file, the current state named by the head record.
//!
//! **Invariant:** opening reads the head record only; reads load just the blocks they need.
//!
//! **Invariant:** commits are serialized by an exclusive `flock` on `LOCK`, held from reading
//! the head record to replacing it, so no acknowledged commit is ever overwritten. Readers
//! take no lock: the head record is replaced by rename, so they see a whole state.

pub mod cache;
pub mod env;
pub mod gc_lock;
pub mod options;
pub mod settings;
pub mod verify;

use crate::db::cache::{CacheKey, Cached};
use crate::db::settings::Settings;
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::format::block::{DigestMap, DigestSet};
use crate::format::car::{self, FileName};
use crate::format::head::{bloom_bits, FileRef, Head, Log};
use crate::format::seal::Key;
use crate::keys::{lineage_string, Lineage};
use crate::model::clock::{self, Event, EventSource};
use crate::model::doc;
use crate::model::tree::{self, Mode, NodeSource, Slot, TreeError};
use crate::storage::HeadFile;
use env::{Env, GcReport};
use options::Durability;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// LOCK counter value marking a dropped database: handles still open on it stop writing (a new
/// database of the same name has a new LOCK file). A drop marks LOCK and renames the folder
/// away under the writer lock; the rename is the drop's commit point, so a marked LOCK in a
/// folder still in place is a drop that never happened (killed between the two steps) and
/// the next open takes the mark back ([`recover_unfinished_drop`]).
const DROPPED: u64 = u64::MAX;

/// Compacted files of one level merge into the next level when more than this many exist.
pub const LEVEL_FANIN: usize = 24;

/// A handle to one database. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Db>,
}

struct Db {
    name: String,
    dir: PathBuf,
    store: Arc<Env>,
    key: Key,
    lineage: Lineage,
    lock: File,
    state: RwLock<Arc<State>>,
    /// Serializes this handle's writers; holds the head-record files kept open between commits.
    writer: Mutex<Writer>,
    poisoned: Mutex<Option<String>>,
    indexes: RwLock<HashMap<FileName, Arc<car::Index>>>,
    /// Tree nodes of the current state not yet in any file (see [`Head::base`]): written by
    /// this handle's commits or rebuilt from the level-0 events; the level-0 compaction writes
    /// them out. Dropping them is always safe (they are rebuilt on demand).
    pending: RwLock<DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>>,
    /// `dbs/<name>/settings.json`, read when first needed (not at open) or set through this
    /// handle.
    settings: RwLock<Option<Settings>>,
    /// A background compaction of this handle is running.
    compacting: AtomicBool,
    /// The background compaction waits to swap its result in: commits let it go first (the
    /// in-process mutex is not fair, and back-to-back commits would starve it).
    swap_waiting: AtomicBool,
    /// Where this handle builds the files it stores (see [`Db::take_file_buf`]).
    file_buf: Mutex<Vec<u8>>,
    /// A fully durable commit's small diff file, written unsynced for the head record to carry
    /// (see [`Db::write_head`]); set by the commit under the lock, taken when the head is written.
    carried: Mutex<Option<(FileName, Vec<u8>)>>,
}

/// A file buffer larger than this is not kept between files.
const FILE_BUF_KEEP: usize = 8 << 20;

/// A file this handle writes is kept in the block cache only up to this many bytes of
/// plaintext.
const FILE_CACHE_MAX: usize = 128 << 10;

/// A head record as read, with the commit counter it was read under (`None`: do not trust it
/// for freshness checks).
struct State {
    head: Head,
    stamp: Option<u64>,
    /// Where the head file's records end (for appending the next commit's delta).
    log: Log,
}

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

/// One entry of a change feed.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub id: String,
    /// Clock height of the write that produced the current value.
    pub version: u64,
    /// The document, or `{"_id":…, "_deleted": true}`.
    pub doc: Value,
    pub deleted: bool,
}

/// One event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub cid: Cid,
    pub parents: Vec<Cid>,
    pub height: u64,
    pub time: u64,
    /// Ids touched, with `true` for a delete.
    pub ops: Vec<(String, bool)>,
    /// The note recorded with the event (merges of accepted proposals), else empty.
    pub note: String,
}

/// Sizes and counts of a database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub lineage: String,
    pub docs: u64,
    pub events: u64,
    pub heads: Vec<Cid>,
    /// Document-tree root of the current state: equal on replicas holding the same documents.
    pub root: Option<Cid>,
    pub files: Vec<FileRef>,
    pub bytes: u64,
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

/// A document both sides of a merge changed to different values.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub id: String,
    /// The value in their common history (`None`: absent or deleted).
    pub ancestor: Option<Value>,
    /// The destination's value before the merge.
    pub ours: Option<Value>,
    /// The source's value.
    pub theirs: Option<Value>,
    /// Which one the merged state holds: the write with the greater (height, value CID), the
    /// same rule on every replica and in either merge direction.
    pub winner: Side,
}

/// A side of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ours,
    Theirs,
}

/// One document that differs between two states ([`Database::diff`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DocDiff {
    pub id: String,
    /// The document in the first state (`None`: absent or deleted there).
    pub before: Option<Value>,
    /// The document in the second state (`None`: absent or deleted there).
    pub after: Option<Value>,
}

impl DocDiff {
    /// "added", "deleted" or "changed".
    pub fn kind(&self) -> &'static str {
        match (&self.before, &self.after) {
            (None, _) => "added",
            (_, None) => "deleted",
            _ => "changed",
        }
    }
}

/// A database state to read a tree from: a head and tree nodes built in memory (the state at
/// an event whose own tree was dropped by compaction).
struct Point<'a> {
    view: View<'a>,
    root: Option<Cid>,
    built: DigestMap<Cid, Arc<tree::Node>>,
}

impl NodeSource for Point<'_> {
    type Error = Error;
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        match self.built.get(cid) {
            Some(n) => Ok(n.clone()),
            None => self.view.node(cid),
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
    pub name: FileName,
    pub location: Location,
    /// 0 for a transaction's diff, n ≥ 1 for a compaction's output; `None` when gone.
    pub level: Option<u8>,
    /// A diff's event, or a compacted file's newest events (empty when gone).
    pub events: Vec<Cid>,
    /// The files a compacted file replaced.
    pub replaces: Vec<FileName>,
}

/// Options for listing documents by id.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// First id (inclusive).
    pub start: Option<String>,
    /// Last id (inclusive).
    pub end: Option<String>,
    /// At most this many documents (`None`: all).
    pub limit: Option<usize>,
}

/// A pending write: the id and the stored body with its CID, or `None` for a delete. (Of a
/// large bulk the bodies lie in the batch's runs instead, and these are left empty.)
type Write = (String, Option<(Cid, Vec<u8>)>);

/// Validates and encodes the documents of a write (at least one), with their CIDs. A large
/// batch is encoded on two threads straight into file segments ([`car::Run`]s, one per thread;
/// the writes' bodies are then left empty); the error reported is the first bad document's, as
/// in a sequential pass.
fn prepare_all<T: Sync>(
    docs: &[T],
    prepare: impl Fn(&T) -> Result<(String, Vec<u8>)> + Sync,
    storage: &dyn crate::storage::Storage,
) -> Result<Prepared> {
    if docs.is_empty() {
        return Err(Error::InvalidArgument(
            "bulk needs at least one document".into(),
        ));
    }
    // (On one core the helper is absent and `map_chunks` takes every chunk on this thread: the
    // runs still spare the bodies' copies.)
    if docs.len() < PARALLEL_DOCS {
        let writes = docs
            .iter()
            .map(|d| prepare(d).map(write_of))
            .collect::<Result<_>>()?;
        return Ok(Prepared::of(writes));
    }
    // What a sequential pass would give: the first failing document in order decides, be it
    // an error or a panic; chunks after a known failure are skipped.
    let failed = AtomicUsize::new(usize::MAX);
    let begun = AtomicBool::new(false);
    let (parts, states) = crate::util::par::map_chunks(
        docs,
        PREPARE_CHUNK,
        // One of the two threads also begins the file the runs will go to (a rename and an
        // open: the work is shared out all the same).
        || {
            // (One that cannot be begun is begun again, or the file stored whole, at the end.)
            let pending = (!begun.swap(true, Ordering::Relaxed))
                .then(|| storage.begin().ok())
                .flatten();
            (car::Run::with_capacity(0, 0), pending)
        },
        |(run, _), i, part| {
            if i > failed.load(Ordering::Relaxed) {
                return None;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut writes = Vec::with_capacity(part.len());
                for d in part {
                    let (id, body) = prepare(d)?;
                    if run.is_empty() {
                        // About this thread's share of the batch if documents are alike, but
                        // not more than RUN_RESERVE (a large first one says little).
                        let share = docs.len() / 2 + 16;
                        let bytes = (body.len() + 48).saturating_mul(share).min(RUN_RESERVE);
                        run.reserve(bytes, share);
                    }
                    let cid = Cid::of_cbor(&body);
                    run.add(cid, &body);
                    writes.push((id, Some((cid, Vec::new()))));
                }
                Ok(writes)
            }));
            if !matches!(r, Ok(Ok(_))) {
                failed.fetch_min(i, Ordering::Relaxed);
            }
            Some(r)
        },
    );
    let mut out = Vec::with_capacity(docs.len());
    for part in parts {
        match part {
            Some(Ok(Ok(v))) => out.extend(v),
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => unreachable!("a chunk is skipped only after an earlier one failed"),
        }
    }
    let [(run_a, pa), (run_b, pb)] = states;
    Ok(Prepared {
        writes: out,
        runs: vec![run_a, run_b],
        pending: pa.or(pb),
        deletes_need_live: false,
    })
}

/// A commit's writes ([`prepare_all`]'s result), and for a large batch its runs (the bodies)
/// and the file begun for them.
struct Prepared {
    writes: Vec<Write>,
    runs: Vec<car::Run>,
    pending: Option<crate::storage::Pending>,
    /// A delete of an id without a live document fails the commit ([`Error::NoSuchDocument`],
    /// checked under the writer lock) instead of recording it.
    deletes_need_live: bool,
}

impl Prepared {
    /// Writes that carry their bodies.
    fn of(writes: Vec<Write>) -> Prepared {
        Prepared {
            writes,
            runs: Vec::new(),
            pending: None,
            deletes_need_live: false,
        }
    }
}

/// The nodes reachable from `from` through the in-memory nodes `p`, not entering `stop`.
fn pending_reach(
    p: &DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>,
    from: Option<Cid>,
    stop: &DigestSet<Cid>,
) -> DigestSet<Cid> {
    let mut seen: DigestSet<Cid> = DigestSet::default();
    let mut stack: Vec<Cid> = from.into_iter().collect();
    while let Some(c) = stack.pop() {
        if stop.contains(&c) || seen.contains(&c) {
            continue;
        }
        let Some((_, n)) = p.get(&c) else { continue };
        seen.insert(c);
        stack.extend_from_slice(n.children());
    }
    seen
}

/// A prepared document as a write: its id, body and the body's CID.
fn write_of((id, body): (String, Vec<u8>)) -> Write {
    (id, Some((Cid::of_cbor(&body), body)))
}

/// What [`Inner::commit`] builds of a transaction before its file: the new state's tree, the
/// live document count, the event with its bytes and CID.
struct Built {
    state: tree::Update,
    docs: i64,
    event: Event,
    eb: Vec<u8>,
    ecid: Cid,
}

/// Batches at least this large are prepared on two threads.
const PARALLEL_DOCS: usize = 128;
/// Documents a thread takes at a time when a batch is prepared on two threads.
const PREPARE_CHUNK: usize = 64;
/// Most bytes a run reserves up front (it grows as any buffer beyond).
const RUN_RESERVE: usize = 8 << 20;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Database {
    pub(crate) fn open(store: Arc<Env>, name: &str, dir: PathBuf) -> Result<Database> {
        let missing = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let lp = dir.join("LOCK");
        let lock = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lp)
        {
            Ok(f) => f,
            Err(e) if missing(&e) => return Err(Error::NoSuchDatabase(name.into())),
            Err(e) => return Err(Error::io(&lp, e)),
        };
        let hp = dir.join("HEAD");
        let ((head, lineage, key, log), mut stamp) = read_head_with(&lock, &hp, name, |bytes| {
            let lineage =
                Head::lineage(bytes).map_err(|e| Error::format(hp.display().to_string(), e))?;
            let key = store
                .keybag
                .get(&lineage)?
                .ok_or_else(|| Error::MissingKey(name.into(), lineage_string(&lineage)))?;
            let (head, log) = Head::open_log(bytes, &key)
                .map_err(|e| Error::format(hp.display().to_string(), e))?;
            Ok((head, lineage, key, log))
        })?;
        // (A LOCK whose first half alone reads as the mark, damaged, is one too: every handle
        // takes `begin` = DROPPED for dropped.)
        if stamp == Some(DROPPED)
            || read_counter(&lock).map_err(|e| Error::io(&lp, e))?[0] == DROPPED
        {
            // (The head record stands: a drop that never happened changes nothing in it.)
            recover_unfinished_drop(&lock, &lp, name, store.opts.lock_timeout)?;
            stamp = None;
        }
        let db = Db {
            name: name.into(),
            dir,
            store,
            key,
            lineage,
            lock,
            state: RwLock::new(Arc::new(State { head, stamp, log })),
            writer: Mutex::new(Writer {
                head_file: HeadFile::new(hp.clone(), hp.with_file_name("HEAD.next")),
                last: None,
            }),
            poisoned: Mutex::new(None),
            indexes: RwLock::new(HashMap::new()),
            pending: RwLock::new(DigestMap::default()),
            settings: RwLock::new(None),
            compacting: AtomicBool::new(false),
            swap_waiting: AtomicBool::new(false),
            file_buf: Mutex::new(Vec::new()),
            carried: Mutex::new(None),
        };
        Ok(Database {
            inner: Arc::new(db),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn lineage(&self) -> Lineage {
        self.inner.lineage
    }

    /// Reads one document.
    pub fn get(&self, id: &str) -> Result<Option<Value>> {
        doc::check_id(id)?;
        self.inner.read(|v| v.doc(id, v.head.root.as_ref()))
    }

    /// Reads one document as it was at `event` (any event of this database).
    pub fn get_at(&self, id: &str, event: &Cid) -> Result<Option<Value>> {
        doc::check_id(id)?;
        self.inner.read(|v| v.doc_at(id, event))
    }

    /// Documents in id order.
    pub fn docs(&self, opts: &ListOptions) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        self.scan(opts, &mut |d| {
            out.push(d);
            true
        })?;
        Ok(out)
    }

    /// Visits documents in id order until `f` returns false.
    pub fn scan(&self, opts: &ListOptions, f: &mut dyn FnMut(Value) -> bool) -> Result<()> {
        if opts.limit == Some(0) {
            return Ok(());
        }
        let end = opts.end.as_ref().map(|e| {
            let mut b = e.as_bytes().to_vec();
            b.push(0);
            b
        });
        // A read retried on a newer head (see `Db::read`) resumes after the last document
        // handed out, so the caller sees each document once, in order.
        let mut resume: Option<Vec<u8>> = None;
        let mut n = 0;
        let mut stopped = false;
        self.inner.read(|v| {
            if stopped {
                return Ok(());
            }
            let start = resume
                .clone()
                .or_else(|| opts.start.as_ref().map(|s| s.as_bytes().to_vec()));
            tree::range(
                v,
                v.head.root.as_ref(),
                start.as_deref(),
                end.as_deref(),
                &mut |k, s| {
                    let Some(link) = s.link else { return Ok(true) };
                    let id = std::str::from_utf8(k)
                        .map_err(|_| v.corrupt_cid(&link, "document id is not UTF-8"))?;
                    let d = v.load_doc(id, &link, s.version)?;
                    n += 1;
                    let mut next = k.to_vec();
                    next.push(0);
                    resume = Some(next);
                    let go = f(d) && opts.limit.is_none_or(|l| n < l);
                    stopped = !go;
                    Ok(go)
                },
            )
        })
    }

    /// Writes (replaces) one document. A document without `_id` gets a UUIDv7.
    ///
    /// The document is any `Serialize` value that serializes as an object: a
    /// `serde_json::Value`, or a program's own struct, encoded straight into the stored form
    /// with serde_json's value model (it is stored as `serde_json::to_value` of it would be).
    pub fn put<T: Serialize + ?Sized>(&self, doc: &T) -> Result<Committed> {
        let writes = vec![write_of(doc::prepare_serialize(doc)?)];
        self.finish(
            self.inner
                .commit(None, Prepared::of(writes), None, Vec::new(), "")?,
        )
    }

    /// Writes many documents in one transaction (one event, one diff file). If an id repeats,
    /// the last one wins. Documents as for [`Database::put`].
    pub fn bulk<T: Serialize + Sync>(&self, docs: &[T]) -> Result<Committed> {
        self.bulk_with(docs, |d| doc::prepare_serialize(d))
    }

    /// A bulk of documents `prepare` validates and encodes. A large one begins its file while
    /// its documents are encoded, in `files/.tmp/`, which garbage collection empties: from
    /// then until it commits, garbage collection waits (the store's gc lock is held shared).
    fn bulk_with<T: Sync>(
        &self,
        docs: &[T],
        prepare: impl Fn(&T) -> Result<(String, Vec<u8>)> + Sync,
    ) -> Result<Committed> {
        let _gc = if docs.len() >= PARALLEL_DOCS {
            Some(self.inner.store.gc.shared()?)
        } else {
            None
        };
        let p = prepare_all(docs, prepare, &*self.inner.store.storage)?;
        let c = self.inner.commit(None, p, None, Vec::new(), "")?;
        // (Released first: finishing an interrupted purge runs gc, which waits for it.)
        drop(_gc);
        self.finish(c)
    }

    /// [`Database::put`] for a document given as JSON text: it is parsed straight into its
    /// stored form (no `serde_json::Value` in between), with the same rules and the same
    /// result as `put` of the parsed value.
    pub fn put_json(&self, text: &str) -> Result<Committed> {
        self.bulk_json(&[text])
    }

    /// [`Database::bulk`] for documents given as JSON text (see [`Database::put_json`]).
    pub fn bulk_json<S: AsRef<str> + Sync>(&self, docs: &[S]) -> Result<Committed> {
        self.bulk_with(docs, |d| doc::prepare_json(d.as_ref()))
    }

    /// Deletes a document (writes a tombstone). An id without a live document (never written,
    /// or already deleted) is [`Error::NoSuchDocument`], and nothing is written. (A
    /// [`Transaction::del`] records a delete whatever the id holds.)
    pub fn del(&self, id: &str) -> Result<Committed> {
        doc::check_id(id)?;
        let mut p = Prepared::of(vec![(id.to_owned(), None)]);
        p.deletes_need_live = true;
        self.finish(self.inner.commit(None, p, None, Vec::new(), "")?)
    }

    /// Starts a transaction that reads the current state and, when committed, names that
    /// state's heads as its parents. If other commits landed in between, the transaction
    /// becomes a concurrent branch: the clock then has several heads and the state is their
    /// deterministic merge (see [`crate::model::tree::Slot::rank`]) until the next commit joins them.
    ///
    /// The snapshot is not pinned: if compaction drops the files it was read from, the
    /// transaction's own reads can fail with [`Error::MissingFile`] (start a new transaction);
    /// its commit still succeeds.
    pub fn transaction(&self) -> Result<Transaction> {
        let st = self.inner.refresh()?;
        self.inner.ensure_tree(&st.head)?;
        Ok(Transaction {
            db: self.clone(),
            base: st,
            writes: Vec::new(),
        })
    }

    /// The current clock heads.
    pub fn heads(&self) -> Result<Vec<Cid>> {
        Ok(self.inner.refresh()?.head.heads.clone())
    }

    /// Documents changed in `ancestors(heads) − ancestors(since)`, each once with its current
    /// value, ordered by the version of that value, then id. `None` lists every document ever
    /// written (deleted ones as tombstones).
    pub fn changes(&self, since: Option<&[Cid]>) -> Result<Vec<Change>> {
        self.inner.read(|v| {
            let mut ids: Vec<(Vec<u8>, Slot)> = Vec::new();
            match since {
                None => tree::range(v, v.head.root.as_ref(), None, None, &mut |k, s| {
                    ids.push((k.to_vec(), *s));
                    Ok(true)
                })?,
                Some(base) => {
                    for b in base {
                        v.given_event(b)?;
                    }
                    let mut touched: HashSet<String> = HashSet::new();
                    clock::since(v, &v.head.heads, base, &mut |_, e| {
                        touched.extend(e.ops.iter().map(|(id, _)| id.clone()));
                        Ok(true)
                    })?;
                    for id in touched {
                        if let Some(s) = tree::get(v, v.head.root.as_ref(), id.as_bytes())? {
                            ids.push((id.into_bytes(), s));
                        }
                    }
                }
            }
            ids.sort_by(|a, b| a.1.version.cmp(&b.1.version).then_with(|| a.0.cmp(&b.0)));
            let mut out = Vec::with_capacity(ids.len());
            for (k, s) in ids {
                let id = String::from_utf8(k)
                    .map_err(|_| Error::corrupt(v.db.name.clone(), "document id is not UTF-8"))?;
                let (doc, deleted) = match s.link {
                    Some(l) => (v.load_doc(&id, &l, s.version)?, false),
                    None => (doc::tombstone(&id), true),
                };
                out.push(Change {
                    id,
                    version: s.version,
                    doc,
                    deleted,
                });
            }
            Ok(out)
        })
    }

    /// Events, newest first (descending height, then CID).
    pub fn log(&self, limit: Option<usize>) -> Result<Vec<LogEntry>> {
        self.inner.read(|v| {
            let mut out = Vec::new();
            if limit == Some(0) {
                return Ok(out);
            }
            clock::walk(v, &v.head.heads, &mut |c, e| {
                out.push(LogEntry {
                    cid: *c,
                    parents: e.parents.clone(),
                    height: e.height,
                    time: e.time,
                    ops: e
                        .ops
                        .iter()
                        .map(|(id, l)| (id.clone(), l.is_none()))
                        .collect(),
                    note: e.note.clone(),
                });
                Ok(limit.is_none_or(|l| out.len() < l))
            })?;
            Ok(out)
        })
    }

    /// Counts and sizes.
    pub fn info(&self) -> Result<Info> {
        let st = self.inner.refresh()?;
        let h = &st.head;
        Ok(Info {
            name: self.inner.name.clone(),
            lineage: lineage_string(&self.inner.lineage),
            docs: h.docs,
            events: h.events,
            heads: h.heads.clone(),
            root: h.root,
            bytes: h.files.iter().map(|f| f.size).sum(),
            files: h.files.clone(),
            commits: h.seq,
            compacted: h.compacted,
            compact_threshold: self.inner.compact_threshold()?,
            settings: self.settings()?,
            torn_append: self.inner.torn_append(&st)?,
        })
    }

    /// Whether the head record ends in an append a crash left unfinished: a commit that was
    /// never acknowledged, which reads skip and the next commit cuts off. Worth telling: it
    /// means a writer died mid-commit.
    pub fn torn_append(&self) -> Result<bool> {
        let st = self.inner.refresh()?;
        self.inner.torn_append(&st)
    }

    /// The names of the files the current head record names.
    pub(crate) fn file_names(&self) -> Result<Vec<FileName>> {
        Ok(self
            .inner
            .refresh()?
            .head
            .files
            .iter()
            .map(|f| f.name)
            .collect())
    }

    /// Bytes of this database's live files that another database (a fork, or what it was
    /// forked from) also names; the rest are its own. Reads the head record of every other
    /// database of its lineage (none unless the lineage was ever forked).
    pub fn shared_bytes(&self) -> Result<u64> {
        let db = &self.inner;
        if !db.store.keybag.is_shared(&db.lineage) {
            return Ok(0);
        }
        let files = db.refresh()?.head.files.clone();
        let mine: HashSet<FileName> = files.iter().map(|f| f.name).collect();
        let mut shared: HashSet<FileName> = HashSet::new();
        let dbs = db.store.root.join("dbs");
        for e in std::fs::read_dir(&dbs).map_err(|e| Error::io(&dbs, e))? {
            let e = e.map_err(|e| Error::io(&dbs, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == db.name {
                continue;
            }
            let hp = e.path().join("HEAD");
            let Ok(bytes) = std::fs::read(&hp) else {
                continue; // dropped meanwhile
            };
            if Head::lineage(&bytes).ok() != Some(db.lineage) {
                continue;
            }
            let head = Head::open(&bytes, &db.key)
                .map_err(|x| Error::format(hp.display().to_string(), x))?;
            shared.extend(
                head.files
                    .iter()
                    .map(|f| f.name)
                    .filter(|n| mine.contains(n)),
            );
        }
        Ok(files
            .iter()
            .filter(|f| shared.contains(&f.name))
            .map(|f| f.size)
            .sum())
    }

    /// The database's own settings (`dbs/<name>/settings.json`).
    pub fn settings(&self) -> Result<Settings> {
        self.inner.own_settings()
    }

    /// Replaces the database's own settings (only `compact_threshold` applies to a database;
    /// `None` falls back to the store's). Takes effect at this handle's next commit and in
    /// handles opened afterwards.
    pub fn set_settings(&self, s: &Settings) -> Result<()> {
        if s.keep_archive.is_some() {
            return Err(Error::InvalidArgument(
                "keep_archive is a store setting, not a database one".into(),
            ));
        }
        let sync = self.inner.sync();
        s.write(&self.inner.dir.join("settings.json"), sync)?;
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
        Ok(())
    }

    /// Re-hashes every stored byte of the database and checks every link.
    ///
    /// A head record replaced while it runs (a compaction elsewhere removed files it was
    /// checking) makes it start over on the new one; problems under an unchanged head record
    /// are reported.
    pub fn verify(&self) -> Result<crate::db::verify::Report> {
        let mut tries = 0;
        let mut repaired = Vec::new();
        loop {
            let st = self.inner.reload()?;
            let db = &self.inner;
            // A diff file the head record holds a copy of, lost or torn by a power cut after
            // its commit, is put back first (as a read of it would), and reported.
            for name in &st.log.files {
                // (What stays damaged, verify reports.)
                if let Ok(true) = db.ensure_whole(name) {
                    if !repaired.contains(name) {
                        repaired.push(*name);
                    }
                }
            }
            let mut r = crate::db::verify::verify(&db.name, &*db.store.storage, &db.key, &st.head);
            if r.ok() || tries == 5 || self.inner.reload()?.head == st.head {
                r.repaired = repaired;
                r.torn_append = db.torn_append(&st)?;
                return Ok(r);
            }
            tries += 1;
        }
    }

    /// The current head record, read under the writer lock (no commit is half done), for a
    /// fork to start from.
    pub(crate) fn head_for_fork(&self) -> Result<Head> {
        self.inner.with_lock(|db, head| {
            // The fork's head record will name this one's files but carry none of them: the
            // files only this head record carries are made durable where they are first.
            let ((_, log), _) = db.read_head()?;
            db.secure_carried(&log, head)?;
            Ok((head.clone(), Vec::new()))
        })
    }

    pub(crate) fn key(&self) -> Key {
        self.inner.key.clone()
    }

    /// Drops the database under its writer lock: marks LOCK dropped (open handles, in any
    /// process, stop writing and reading), then renames the folder to `gone` (the commit point:
    /// the name is free and listing no longer shows it) and, with `Durability::Full`, makes the
    /// rename durable. Returns the files the final head record names. If the rename fails the
    /// mark is taken back; if the process dies between the two, the next open takes it back.
    pub(crate) fn drop_to(&self, gone: &std::path::Path) -> Result<Vec<FileRef>> {
        // `with_lock` refuses an already-dropped database; the head record is left unchanged.
        self.inner.with_lock(|db, head| {
            let before = db.counter()?;
            db.set_counter([DROPPED, DROPPED])?;
            if let Err(e) = std::fs::rename(&db.dir, gone) {
                let _ = db.set_counter(before);
                return Err(Error::io(&db.dir, e));
            }
            if db.sync() {
                if let Some(dbs) = gone.parent() {
                    crate::storage::sync_dir(dbs).map_err(|e| Error::io(dbs, e))?;
                }
            }
            Ok((head.files.clone(), Vec::new()))
        })
    }

    /// Starts a background compaction after a commit that wants one (one at a time per handle).
    fn finish(&self, (c, wanted): (Committed, bool)) -> Result<Committed> {
        if self.inner.state().head.scrub {
            // Another handle's purge did not finish (a crash): finish it now. The commit is
            // done whatever comes of that: what stays unfinished, the next open, write or gc
            // tries again (and `verify` and gc report).
            self.finish_purge_soon();
        }
        if wanted && !self.inner.compacting.swap(true, Ordering::SeqCst) {
            let db = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("kiln-compact".into())
                .spawn(move || {
                    // Errors surface through `compact` and `verify`; commits never wait on this.
                    let _ = db.compact_background();
                    db.compacting.store(false, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.inner.compacting.store(false, Ordering::SeqCst);
            }
        }
        Ok(c)
    }

    /// Compacts now: merges every live transaction diff into one file (and cascades levels).
    /// The live files and, following each compacted file's record of the files it replaced,
    /// every earlier file still in the store or its archive: with an archive kept, the whole
    /// sequence of diffs back to the first transaction. Newest first, each file once.
    pub fn history_files(&self) -> Result<Vec<HistoryFile>> {
        let st = self.inner.refresh()?;
        for name in &st.log.files {
            let _ = self.inner.ensure_whole(name); // (as a read of it would; errors below)
        }
        let storage = &self.inner.store.storage;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<(FileName, bool)> =
            st.head.files.iter().rev().map(|f| (f.name, true)).collect();
        while let Some((name, live)) = stack.pop() {
            if !seen.insert(name) {
                continue;
            }
            let (bytes, location) = match storage.read(&name) {
                Ok(b) => (Some(b), if live { Location::Live } else { Location::Kept }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match storage.read_archived(&name) {
                        Ok(b) => (Some(b), Location::Archived),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            (None, Location::Gone)
                        }
                        Err(e) => return Err(Error::io(format!("archived file {name}"), e)),
                    }
                }
                Err(e) => return Err(self.inner.file_err(&name, e)),
            };
            let meta = match &bytes {
                Some(b) => Some(self.inner.meta_of(&name, b)?),
                None => None,
            };
            let replaces = meta
                .as_ref()
                .map(|m| m.replaces.clone())
                .unwrap_or_default();
            for r in replaces.iter().rev() {
                stack.push((*r, false));
            }
            out.push(HistoryFile {
                name,
                location,
                level: meta.as_ref().map(|m| m.level),
                events: meta.map(|m| m.roots).unwrap_or_default(),
                replaces,
            });
        }
        Ok(out)
    }

    /// Removes every stored version of one document (`kiln purge`): commits a purge event that
    /// deletes the document, records the versions purged and marks the head record *scrubbing*
    /// ([`Head::scrub`]); then finishes the purge through garbage collection of the whole
    /// store, which rewrites this database into one file without them, removes every file no
    /// head names (the files just replaced, files other handles retired and keep for reuse,
    /// what a crash left), empties the reuse pool, removes archived files holding them,
    /// empties the previous head record (`HEAD.next`, which may carry small diffs) and clears
    /// the mark. A crash anywhere after the purge event leaves the mark, and the next open,
    /// write or `gc` finishes the purge. The document's id stays in the history (events name
    /// it); its contents are gone. Reads of a purged version fail with [`Error::Purged`];
    /// `verify` counts purged versions instead of reporting them missing, and reports any that
    /// are still stored. An id with no live document and no stored version (never written,
    /// or purged already) is [`Error::NoSuchDocument`], and nothing is written.
    pub fn purge(&self, id: &str) -> Result<PurgeReport> {
        doc::check_id(id)?;
        let (c, _) = self.inner.commit(
            None,
            Prepared::of(vec![(id.to_owned(), None)]),
            Some(id),
            Vec::new(),
            "",
        )?;
        let ev = self.inner.read(|v| v.event(&c.event))?;
        // (Committed: a gc that fails leaves the purge unfinished, not undone; opens and
        // writes of this handle's store wait a while before they try again.)
        let unfinished = |why: String| {
            self.inner
                .store
                .purge_tries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.inner.name.clone(), std::time::Instant::now());
            Error::PurgeUnfinished(self.inner.name.clone(), why)
        };
        let gc = self.collect().map_err(|e| unfinished(e.to_string()))?;
        if self.inner.refresh()?.head.scrub {
            return Err(unfinished(gc.why_unfinished(&self.inner.name)));
        }
        Ok(PurgeReport {
            event: c.event,
            versions: ev.purge.len(),
            archived_removed: gc.archived_scrubbed,
            reusable_bytes_freed: gc.reusable_bytes
                + if gc.archived { 0 } else { gc.removed_bytes },
        })
    }

    /// The store this database is in (garbage collection finishes purges).
    /// Garbage collection of the store this database is in (which finishes purges).
    fn collect(&self) -> Result<GcReport> {
        (self.inner.store.collect)(&self.inner.store)
    }

    /// Whether a purge (or a merge that brought purged versions) is committed but not finished.
    pub(crate) fn scrubbing(&self) -> Result<bool> {
        Ok(self.inner.refresh()?.head.scrub)
    }

    /// [`Database::scrubbing`] as of the head record this handle read last.
    pub(crate) fn scrubbing_as_read(&self) -> bool {
        self.inner.state().head.scrub
    }

    /// Finishes an unfinished purge (see [`Database::purge`]) through garbage collection of the
    /// whole store; a no-op when none is pending.
    pub(crate) fn finish_purge(&self) -> Result<()> {
        if self.scrubbing()? {
            self.collect()?;
        }
        Ok(())
    }

    /// [`Database::finish_purge`] on an open or a write: best effort (the caller's work stands
    /// either way), and when this store handle tried and failed within the last
    /// [`env::PURGE_RETRY`], not again yet (a try is a gc of the store and a rewrite
    /// of the database; one that cannot finish, say beside a database gc cannot read, would
    /// otherwise make every write pay that).
    pub(crate) fn finish_purge_soon(&self) {
        let tries = &self.inner.store.purge_tries;
        let name = &self.inner.name;
        let recent = |t: &std::time::Instant| t.elapsed() < env::PURGE_RETRY;
        if tries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(recent)
        {
            return;
        }
        let done = self.finish_purge().is_ok() && !self.scrubbing().unwrap_or(true);
        let mut t = tries.lock().unwrap_or_else(|p| p.into_inner());
        if done {
            t.remove(name);
        } else {
            t.insert(name.clone(), std::time::Instant::now());
        }
    }

    /// The database's own part of finishing a purge: under the writer lock, rewrites every
    /// live file into one that leaves out the purged versions (even a single file: after a
    /// crash it is not known which step was reached). Returns the purged set it is for, or
    /// `None` when no purge is pending. The replaced files are left for garbage collection's
    /// sweep, which runs next.
    pub(crate) fn scrub_files(&self) -> Result<Option<Vec<Cid>>> {
        self.inner.with_lock(|db, head| {
            if !head.scrub {
                return Ok((None, Vec::new()));
            }
            let purged = head.purged.clone();
            if head.files.is_empty() {
                return Ok((Some(purged), Vec::new()));
            }
            let top = head.files.iter().map(|f| f.level).max().unwrap_or(0).max(1);
            let m = db.merge_files(head, head.files.clone(), top, true, true)?;
            db.apply_merge(head, &m);
            Ok((Some(purged), m.replaced))
        })
    }

    /// The last part of finishing a purge, after garbage collection removed every file no
    /// head names: removes archived files holding a version of `purged` and clears the mark
    /// (if no later purge came meanwhile), which also empties `HEAD.next`. Returns the archived
    /// files removed.
    pub(crate) fn scrub_done(&self, purged: &[Cid]) -> Result<usize> {
        let storage = &self.inner.store.storage;
        let mut scrubbed = 0;
        let archived = storage
            .list_archived()
            .map_err(|e| Error::io("the archive", e))?;
        for name in archived {
            let io = |e| Error::io(format!("archived file {name}"), e);
            let bytes = storage.read_archived(&name).map_err(io)?;
            // Only this lineage's files can hold its versions; of those, a damaged one is
            // not kept (it may hold them).
            if car::plaintexts(&self.inner.key, &bytes).is_empty() {
                continue;
            }
            let holds = match car::verify_file(&self.inner.key, &name, &bytes) {
                Ok((_, blocks)) => blocks.iter().any(|(c, ..)| purged.binary_search(c).is_ok()),
                Err(_) => true,
            };
            if holds {
                storage.remove_archived(&name).map_err(io)?;
                scrubbed += 1;
            }
        }
        self.inner.with_lock(|_, head| {
            if head.scrub && head.purged == purged {
                head.scrub = false;
            }
            Ok(((), Vec::new()))
        })?;
        Ok(scrubbed)
    }

    /// Drops the history older than `event` (`kiln compact --drop-history-before`): its strict
    /// ancestors and the values only they name are removed; the state at `event` is kept as a
    /// tree, so reads at `event` and at every later event, `changes` since them, and the
    /// current state are unchanged. Reads at a dropped event fail with
    /// [`Error::NoSuchEvent`]. Leaves exactly one file. Returns the number of events dropped.
    pub fn drop_history_before(&self, event: &Cid) -> Result<usize> {
        self.inner.with_lock(|db, head| db.squash(head, event))
    }

    /// Merges `src` into this database. This database's clock gains every event of `src` it
    /// lacks (copied, re-sealed under this database's key when the lineages differ) and a merge
    /// event joins the heads; the merged state keeps, for every document, the write with the
    /// greatest (height, value CID) — so a change made on one side only wins over the common
    /// ancestor, and a document changed on both sides is a conflict settled the same way on
    /// every replica and in either direction. The report lists every conflict with the
    /// ancestor and both values; the losing values stay readable ([`Database::conflicts`])
    /// until a later write to the document. When this database is an ancestor of `src`, it
    /// simply takes `src`'s heads (fast-forward, no merge event); merging again changes
    /// nothing. With `only`, just those documents take `src`'s current values, as an ordinary
    /// transaction that names `src`'s heads; an id `src` never had is
    /// [`Error::NoSuchDocument`], and nothing is written.
    pub fn merge_from(&self, src: &Database, only: Option<&[String]>) -> Result<MergeReport> {
        self.merge_from_noted(src, only, "")
    }

    /// [`Database::merge_from`], recording `note` (who merged what, and why) in the event.
    pub fn merge_from_noted(
        &self,
        src: &Database,
        only: Option<&[String]>,
        note: &str,
    ) -> Result<MergeReport> {
        self.merge_inner(src, None, only, note)
    }

    /// [`Database::merge_from_noted`] of exactly the state of `src` at clock heads `heads`
    /// (an accepted proposal's): refused with [`Error::Changed`] if `src` is no longer there.
    pub(crate) fn merge_pinned(
        &self,
        src: &Database,
        heads: &[Cid],
        only: Option<&[String]>,
        note: &str,
    ) -> Result<MergeReport> {
        self.merge_inner(src, Some(heads), only, note)
    }

    fn merge_inner(
        &self,
        src: &Database,
        pinned: Option<&[Cid]>,
        only: Option<&[String]>,
        note: &str,
    ) -> Result<MergeReport> {
        if let Some(ids) = only {
            return self.take_from(src, pinned, ids, note);
        }
        let sst = src.inner.refresh()?;
        src.check_pinned(&sst.head, pinned)?;
        src.inner.ensure_tree(&sst.head)?;
        let r = self
            .inner
            .with_lock(|db, head| db.merge(head, &src.inner, &sst.head, note, false))?;
        // The source's purges apply here too: versions it purged leave this database's files
        // (the merge is done whatever comes of that, as for any commit: see `finish`).
        self.finish_purge_soon();
        Ok(r)
    }

    /// What [`Database::merge_from`] would do, without writing anything: the changes it would
    /// take and the conflicts it would settle (`event` is `None`).
    pub fn preview_merge(&self, src: &Database) -> Result<MergeReport> {
        self.preview_merge_pinned_opt(src, None)
    }

    /// [`Database::preview_merge`] of the state of `src` at clock heads `heads`.
    pub(crate) fn preview_merge_pinned(
        &self,
        src: &Database,
        heads: &[Cid],
    ) -> Result<MergeReport> {
        self.preview_merge_pinned_opt(src, Some(heads))
    }

    fn preview_merge_pinned_opt(
        &self,
        src: &Database,
        pinned: Option<&[Cid]>,
    ) -> Result<MergeReport> {
        let sst = src.inner.refresh()?;
        src.check_pinned(&sst.head, pinned)?;
        src.inner.ensure_tree(&sst.head)?;
        let st = self.inner.refresh()?;
        let mut head = st.head.clone();
        self.inner
            .merge(&mut head, &src.inner, &sst.head, "", true)
            .map(|(r, _)| r)
    }

    /// Fails with [`Error::Changed`] unless `head`'s clock heads are `pinned` (when given).
    fn check_pinned(&self, head: &Head, pinned: Option<&[Cid]>) -> Result<()> {
        match pinned {
            Some(p) if head.heads != p => Err(Error::Changed(self.inner.name.clone())),
            _ => Ok(()),
        }
    }

    /// `merge_from` with `only`: a transaction writing `src`'s current values of `ids` (its
    /// values at `pinned`, which must be its heads still; a document deleted there is deleted
    /// here); an id `src` never had is [`Error::NoSuchDocument`], and nothing is written.
    fn take_from(
        &self,
        src: &Database,
        pinned: Option<&[Cid]>,
        ids: &[String],
        note: &str,
    ) -> Result<MergeReport> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no documents to take".into()));
        }
        for id in ids {
            doc::check_id(id)?;
        }
        let (writes, heads, lacking) = src.inner.read(|v| {
            src.check_pinned(v.head, pinned)?;
            let mut writes: Vec<Write> = Vec::new();
            let mut lacking: Vec<String> = Vec::new();
            for id in ids {
                let w = match tree::get(v, v.head.root.as_ref(), id.as_bytes())? {
                    Some(Slot {
                        link: Some(l),
                        version,
                    }) => {
                        let body = v.with_block(&l, Some(version), |b| Ok(b.to_vec()))?;
                        Some((l, body))
                    }
                    // Deleted there: the delete is taken.
                    Some(Slot { link: None, .. }) => None,
                    None => {
                        lacking.push(id.clone());
                        None
                    }
                };
                writes.push((id.clone(), w));
            }
            Ok((writes, v.head.heads.clone(), lacking))
        })?;
        // An id the source never had is no value to take: refused, nothing written.
        if !lacking.is_empty() {
            return Err(Error::NoSuchDocument {
                db: src.inner.name.clone(),
                ids: lacking,
            });
        }
        let mine = self.inner.read(|v| {
            ids.iter()
                .map(|id| tree::get(v, v.head.root.as_ref(), id.as_bytes()))
                .collect::<Result<Vec<_>>>()
        })?;
        let changed: Vec<String> = ids
            .iter()
            .zip(&mine)
            .zip(&writes)
            .filter(|((_, m), w)| m.and_then(|s| s.link) != w.1.as_ref().map(|x| x.0))
            .map(|((id, _), _)| id.clone())
            .collect();
        let (c, _) = self
            .inner
            .commit(None, Prepared::of(writes), None, heads, note)?;
        Ok(MergeReport {
            event: Some(c.event),
            changed,
            ..MergeReport::default()
        })
    }

    /// The values a merge lost for `id` that no later write to it has settled (empty when
    /// there is no open conflict).
    pub fn conflicts(&self, id: &str) -> Result<Vec<Value>> {
        self.inner.read(|v| {
            let mut losers: Vec<(Cid, u64)> = Vec::new();
            let mut settled = false;
            clock::walk(v, &v.head.heads, &mut |_, e| {
                if e.ops.binary_search_by(|(k, _)| k.as_str().cmp(id)).is_ok() {
                    settled = true;
                    return Ok(false);
                }
                if let Some((_, ls)) = e.conflicts.iter().find(|(k, _)| k == id) {
                    losers.extend(ls.iter().map(|l| (*l, e.height)));
                    return Ok(false);
                }
                Ok(true)
            })?;
            if settled {
                return Ok(Vec::new());
            }
            losers
                .iter()
                .map(|(l, _)| {
                    v.with_block(l, None, |b| {
                        doc::decode(id, b).map_err(|w| v.corrupt_cid(l, w))
                    })
                })
                .collect()
        })
    }

    /// The documents that differ from this database's state (now, or at event `at`) to
    /// `other`'s (now, or at `other_at`), in id order, with both values. The two trees are
    /// compared by CID, so subtrees they share (forks share most) are skipped unread: the cost
    /// follows the number of differences, not the size of the databases.
    pub fn diff(
        &self,
        at: Option<&Cid>,
        other: &Database,
        other_at: Option<&Cid>,
    ) -> Result<Vec<DocDiff>> {
        let (sa, sb) = (self.inner.refresh()?, other.inner.refresh()?);
        // An event's own tree first; if compaction dropped part of it, build it from history.
        let mut build = false;
        let (a, b, keys) = loop {
            let a = self.inner.point(&sa.head, at, build)?;
            let b = other.inner.point(&sb.head, other_at, build)?;
            let mut keys: Vec<(Vec<u8>, Option<Slot>, Option<Slot>)> = Vec::new();
            match tree::diff(&a, a.root.as_ref(), &b, b.root.as_ref(), &mut |k, x, y| {
                keys.push((k.to_vec(), x.copied(), y.copied()))
            }) {
                Ok(()) => break (a, b, keys),
                Err(Error::MissingBlock(..)) if !build && (at.is_some() || other_at.is_some()) => {
                    build = true
                }
                Err(e) => return Err(e),
            }
        };
        let mut out = Vec::new();
        for (k, x, y) in keys {
            let (lx, ly) = (x.and_then(|s| s.link), y.and_then(|s| s.link));
            if lx == ly {
                continue; // same contents (or deleted on both sides), other versions
            }
            let id = String::from_utf8(k)
                .map_err(|_| Error::corrupt(self.inner.name.clone(), "document id is not UTF-8"))?;
            let load = |p: &Point, s: Option<Slot>| -> Result<Option<Value>> {
                match s {
                    Some(Slot {
                        link: Some(l),
                        version,
                    }) => p.view.load_doc(&id, &l, version).map(Some),
                    _ => Ok(None),
                }
            };
            out.push(DocDiff {
                before: load(&a, x)?,
                after: load(&b, y)?,
                id,
            });
        }
        Ok(out)
    }

    /// Merges every live file into exactly one (`kiln compact --full`).
    pub fn compact_full(&self) -> Result<()> {
        self.inner.with_lock(|db, head| match db.merge_all(head)? {
            Some(m) => {
                db.apply_merge(head, &m);
                Ok(((), m.replaced))
            }
            None => Ok(((), Vec::new())),
        })
    }

    pub fn compact(&self) -> Result<()> {
        self.inner.with_lock(|db, head| {
            let removed = db.compact_level(head, 0)?;
            let more = db.compact_cascade(head)?;
            Ok(((), removed.into_iter().chain(more).collect()))
        })
    }
}

/// Writes that commit together, on the state read when the transaction began.
pub struct Transaction {
    db: Database,
    base: Arc<State>,
    writes: Vec<Write>,
}

impl Transaction {
    /// Reads a document: this transaction's own write, else the state it began on.
    pub fn get(&self, id: &str) -> Result<Option<Value>> {
        doc::check_id(id)?;
        if let Some((_, w)) = self.writes.iter().rev().find(|(i, _)| i == id) {
            return Ok(match w {
                Some((_, body)) => {
                    Some(doc::decode(id, body).map_err(|e| Error::corrupt("transaction", e))?)
                }
                None => None,
            });
        }
        let v = View {
            db: &self.db.inner,
            head: &self.base.head,
        };
        let root = self.base.head.root.as_ref();
        match v.doc(id, root) {
            // Nodes only in memory, dropped meanwhile: a compaction wrote them into a file
            // this snapshot's head does not name (look in the current files too), or they
            // belonged to no tree still in use (rebuild the snapshot's).
            Err(Error::MissingBlock(..)) => {
                let db = &self.db.inner;
                let cur = db.refresh()?;
                let mut both = self.base.head.clone();
                let known = |f: &FileRef| self.base.head.files.iter().any(|g| g.name == f.name);
                both.files
                    .extend(cur.head.files.iter().filter(|f| !known(f)).copied());
                match (View { db, head: &both }).doc(id, root) {
                    Err(Error::MissingBlock(..)) => {
                        db.ensure_tree(&self.base.head)?;
                        v.doc(id, root)
                    }
                    r => r,
                }
            }
            r => r,
        }
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, doc: &T) -> Result<String> {
        let w = write_of(doc::prepare_serialize(doc)?);
        let id = w.0.clone();
        self.writes.push(w);
        Ok(id)
    }

    pub fn del(&mut self, id: &str) -> Result<()> {
        doc::check_id(id)?;
        self.writes.push((id.to_owned(), None));
        Ok(())
    }

    pub fn commit(self) -> Result<Committed> {
        if self.writes.is_empty() {
            return Err(Error::InvalidArgument("nothing to commit".into()));
        }
        self.db.finish(self.db.inner.commit(
            Some(&self.base.head),
            Prepared::of(self.writes),
            None,
            Vec::new(),
            "",
        )?)
    }
}

/// Whether a merge's state takes the source's slot `t` over ours `o` (the state rule).
fn theirs_win(o: &Option<Slot>, t: &Option<Slot>) -> bool {
    match (o, t) {
        (Some(o), Some(t)) => t.rank(o) == std::cmp::Ordering::Greater,
        (None, Some(_)) => true,
        _ => false,
    }
}

/// Transactions with at least this many writes store their tree nodes with them (see
/// `Db::commit`).
const CHECKPOINT_OPS: usize = 32;

/// A compaction's output: the new file, the files it replaces and (level 0) the new base tree.
struct Merged {
    file: FileRef,
    replaced: Vec<FileName>,
    base: Option<Option<Cid>>,
    /// The base of the head the merge was computed on.
    from_base: Option<Cid>,
}

/// What a handle's writer keeps between commits.
#[derive(Debug)]
struct Writer {
    head_file: HeadFile,
    /// The counter value this handle's last head-record write ended with.
    last: Option<u64>,
}

impl Db {
    /// The compaction threshold in force: the database's setting, else the store's, else the
    /// program's [`options::Options::compact_threshold`].
    fn compact_threshold(&self) -> Result<usize> {
        Ok(self
            .own_settings()?
            .compact_threshold
            .or(self.store.settings().compact_threshold)
            .unwrap_or(self.store.opts.compact_threshold)
            .max(1))
    }

    /// The database's own settings, read from its file the first time they are needed.
    fn own_settings(&self) -> Result<Settings> {
        if let Some(s) = &*self.settings.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(s.clone());
        }
        let s = Settings::read(&self.dir.join("settings.json"))?;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
        Ok(s)
    }

    fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, head: Head, stamp: Option<u64>, log: Log) -> Arc<State> {
        let st = Arc::new(State { head, stamp, log });
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = st.clone();
        st
    }

    /// The commit counter in LOCK: `[begin, end]`; equal when no commit is in flight.
    fn counter(&self) -> Result<[u64; 2]> {
        read_counter(&self.lock).map_err(|e| Error::io(self.dir.join("LOCK"), e))
    }

    fn set_counter(&self, c: [u64; 2]) -> Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&c[0].to_le_bytes());
        b[8..].copy_from_slice(&c[1].to_le_bytes());
        self.lock
            .write_all_at(&b, 0)
            .map_err(|e| Error::io(self.dir.join("LOCK"), e))
    }

    /// Reads the head record and the commit counter it is current for.
    fn read_head(&self) -> Result<((Head, Log), Option<u64>)> {
        let hp = self.dir.join("HEAD");
        read_head_with(&self.lock, &hp, &self.name, |b| {
            Head::open_log(b, &self.key).map_err(|e| Error::format(hp.display().to_string(), e))
        })
    }

    /// The current state, re-reading the head record only if a commit happened since.
    fn refresh(&self) -> Result<Arc<State>> {
        let c = self.counter()?;
        if c[0] == DROPPED {
            // Dropped, or a drop killed before its commit point (then taken back here, as
            // an open would). Under this handle's writer mutex: the writer lock is this
            // handle's file's, which a drop through this handle may hold.
            let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let lp = self.dir.join("LOCK");
            recover_unfinished_drop(&self.lock, &lp, &self.name, self.store.opts.lock_timeout)?;
            return self.reload();
        }
        let st = self.state();
        if c[0] == c[1] && st.stamp == Some(c[1]) {
            return Ok(st);
        }
        self.reload()
    }

    fn reload(&self) -> Result<Arc<State>> {
        let ((head, log), stamp) = self.read_head()?;
        Ok(self.set_state(head, stamp, log))
    }

    /// Runs a read on the current state. A file that a concurrent compaction removed (gone, or
    /// its space already reused so it fails its checks) makes it re-read the head record and
    /// retry; damage under an unchanged head record is reported as corruption.
    fn read<T>(&self, mut f: impl FnMut(&View) -> Result<T>) -> Result<T> {
        let mut st = self.refresh()?;
        let mut tries = 0;
        loop {
            match self.ensure_tree(&st.head).and_then(|()| {
                f(&View {
                    db: self,
                    head: &st.head,
                })
            }) {
                Err(e) if e.is_corruption() && tries < 3 => {
                    let fresh = self.reload()?;
                    if fresh.head == st.head {
                        return Err(e);
                    }
                    st = fresh;
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    fn check_poisoned(&self) -> Result<()> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&self, e: &Error) {
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    fn sync(&self) -> bool {
        self.store.opts.durability == Durability::Full
    }

    /// Takes the cross-process writer lock, waiting up to [`options::Options::lock_timeout`].
    fn acquire(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + self.store.opts.lock_timeout;
        let mut pause = std::time::Duration::from_micros(50);
        loop {
            match self.lock.try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::Busy(self.name.clone()));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io(self.dir.join("LOCK"), e))
                }
            }
        }
    }

    /// Runs `f` holding the writer lock on the latest head; `f` edits the head and returns files
    /// to delete once the new head is durable. The head record is written only if `f` changed it.
    fn with_lock<T>(
        &self,
        f: impl FnOnce(&Db, &mut Head) -> Result<(T, Vec<FileName>)>,
    ) -> Result<T> {
        self.check_poisoned()?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _gc = self.store.gc.shared()?;
        self.acquire()?;
        let r = (|| {
            let mut c = self.counter()?;
            if c[0] == DROPPED {
                // Dropped (the folder is gone), or a drop killed before its commit point,
                // whose mark is taken back here as an open would.
                take_back_drop_mark(&self.lock, &self.dir.join("LOCK"), &self.name)?;
                c = self.counter()?;
            }
            let st = self.state();
            let (cur, log) = if c[0] == c[1] && st.stamp == Some(c[1]) {
                (st.head.clone(), st.log.clone())
            } else {
                self.read_head()?.0
            };
            let mut head = cur.clone();
            let r = f(self, &mut head);
            // (A file the commit left for the head record to carry, if any: unreferenced when
            // `f` failed, like any file of a failed commit.)
            let carried = self
                .carried
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let (out, remove) = r?;
            if head.purged.len() > cur.purged.len()
                || (head.purged != cur.purged
                    && head
                        .purged
                        .iter()
                        .any(|c| cur.purged.binary_search(c).is_err()))
            {
                // Purged versions may still be stored (the purge's own history, or a merge
                // that brought another database's purge): finished after this commit.
                head.scrub = true;
            }
            if head != cur {
                head.seq = cur.seq + 1;
                let n = c[0].max(c[1]) + 1;
                let log = match self.write_head(&mut w, (&cur, &log), &head, c, n, carried) {
                    Ok(log) => log,
                    Err(e) => {
                        self.poison(&e);
                        return Err(e);
                    }
                };
                if cur.scrub && !head.scrub {
                    // A purge finished: the previous head record (`HEAD.next`) may carry
                    // small diffs holding purged versions.
                    if let Err(e) = w.head_file.clear_spare(self.sync()) {
                        let e = Error::io(self.dir.join("HEAD.next"), e);
                        self.poison(&e);
                        return Err(e);
                    }
                }
                let new_base = head.base != cur.base;
                let st = self.set_state(head, Some(n), log);
                if new_base {
                    // The base tree is in files now. Only now that the head naming them is
                    // written: a reader still on the old head keeps finding its nodes until
                    // it sees the new one. Anything still needed later is rebuilt.
                    self.prune_pending(st.head.root, st.head.base);
                }
                // Forks share files: then only garbage collection, which reads every
                // database's head record, may take them away.
                let remove = if !remove.is_empty() && self.store.keybag.is_shared(&self.lineage) {
                    Vec::new()
                } else {
                    remove
                };
                let archive =
                    !remove.is_empty() && self.store.settings().keep_archive.unwrap_or(false);
                for f in remove {
                    // The new head no longer names these; readers holding the old head retry.
                    let _ = if archive {
                        self.store.storage.archive(&f)
                    } else {
                        self.store.storage.retire(&f)
                    };
                    self.indexes
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&f);
                }
            }
            Ok(out)
        })();
        let _ = self.lock.unlock();
        r
    }

    /// Writes `head` as commit `n` over `prev` (stored as `log`): a delta appended to the head
    /// file when it can be, else a fresh snapshot. `old` is the counter read under the lock.
    ///
    /// `carried` is a fully durable commit's small diff file, written but not synced: it goes
    /// into the log as a file record right before the delta, and the one flush of the log makes
    /// both durable. When the log cannot take it, the file is synced where it is first. Before
    /// a snapshot drops the log's file records, the files they hold that are still live are
    /// synced.
    fn write_head(
        &self,
        w: &mut Writer,
        (prev, log): (&Head, &Log),
        head: &Head,
        old: [u64; 2],
        n: u64,
        carried: Option<(FileName, Vec<u8>)>,
    ) -> Result<Log> {
        let hp = self.dir.join("HEAD");
        let io = |e| Error::io(&hp, e);
        let mut file_rec = None;
        let mut delta = None;
        if let Some((name, bytes)) = carried.as_ref().filter(|c| log.can_hold_file(c.1.len())) {
            let rec =
                Head::seal_file_record(name, bytes, log, &self.lineage, &self.key).map_err(io)?;
            let after = Log {
                end: log.end + rec.len() as u64,
                file_bytes: log.file_bytes + rec.len() as u64,
                ..log.clone()
            };
            delta = head
                .seal_delta(prev, &after, &self.lineage, &self.key)
                .map_err(io)?;
            if delta.is_some() {
                file_rec = Some((*name, rec));
            }
        }
        if file_rec.is_none() {
            if let Some((name, _)) = &carried {
                self.sync_file(name)?;
            }
            delta = head
                .seal_delta(prev, log, &self.lineage, &self.key)
                .map_err(io)?;
        }
        if delta.is_none() {
            // Whatever this handle's durability: the copies may be a fully durable commit's.
            self.secure_carried(log, head)?;
        }
        // begin=n first: a crash from here on makes every process re-read the head record.
        self.set_counter([n, old[1]])?;
        // The files kept open are still HEAD and HEAD.next only if nobody else wrote since.
        let trusted = old[0] == old[1] && w.last == Some(old[1]);
        w.last = None;
        let new_log = match delta {
            Some(rec) => {
                let mut next = log.clone();
                let rec = match file_rec {
                    Some((name, mut both)) => {
                        next.file_bytes += both.len() as u64;
                        next.files.push(name);
                        both.extend_from_slice(&rec);
                        both
                    }
                    None => rec,
                };
                next.end = log.end + rec.len() as u64;
                next.len = next.end;
                next.deltas += 1;
                w.head_file
                    .append(&rec, log.end, log.len, self.sync(), trusted)
                    .map_err(io)?;
                next
            }
            None => {
                let bytes = head.seal(&self.lineage, &self.key).map_err(io)?;
                // Replacing a log that carries files: durably also for a Buffered writer, or
                // a power cut could roll back the Full commits that log holds.
                let sync = self.sync() || !log.files.is_empty();
                w.head_file.replace(&bytes, sync, trusted).map_err(io)?;
                Log::fresh(&bytes)
            }
        };
        self.set_counter([n, n])?;
        w.last = Some(n);
        Ok(new_log)
    }

    /// Commits; the flag says a background compaction is wanted.
    fn commit(
        &self,
        base: Option<&Head>,
        batch: Prepared,
        purge_id: Option<&str>,
        source: Vec<Cid>,
        note: &str,
    ) -> Result<(Committed, bool)> {
        let Prepared {
            writes,
            runs,
            pending,
            deletes_need_live,
        } = batch;
        // Let a finished background compaction swap its result in first (bounded wait).
        let t = std::time::Instant::now();
        while self.swap_waiting.load(Ordering::SeqCst)
            && t.elapsed() < std::time::Duration::from_millis(50)
        {
            std::thread::yield_now();
        }
        // Ops sorted by id; of an id written more than once the last write wins. (Sorted by
        // reference: the writes keep their order and their ids for `Committed::ids`.)
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            writes[a]
                .0
                .as_bytes()
                .cmp(writes[b].0.as_bytes())
                .then(b.cmp(&a))
        });
        order.dedup_by(|later, kept| writes[*later].0 == writes[*kept].0);
        let sorted: Vec<&Write> = order.iter().map(|&i| &writes[i]).collect();
        // A batch's runs go into the file as they are when they hold exactly its blocks, each
        // once: they are sealed on the helper thread while this one builds the tree. (A repeated
        // id leaves an overwritten body in them; a repeated CID, a block twice.)
        let whole_runs = !runs.is_empty() && sorted.len() == writes.len();
        let (mut c, wanted) = self.with_lock(|db, head| {
            db.ensure_tree(head)?;
            let cur = head.clone();
            // A transaction whose base is still current is an ordinary linear commit.
            let base = base.filter(|b| b.heads != cur.heads);
            let (base_heads, base_root) = match base {
                Some(b) => (b.heads.clone(), b.root),
                None => (cur.heads.clone(), cur.root),
            };
            let v = View { db, head: &cur };
            let mut height = 0;
            for h in &base_heads {
                height = height.max(v.event(h)?.height);
            }
            height += 1;
            let build = || -> Result<Built> {
                let ops: Vec<tree::Op> = sorted
                    .iter()
                    .map(|(id, w)| {
                        (
                            id.as_bytes().into(),
                            Some(Slot {
                                version: height,
                                link: w.as_ref().map(|x| x.0),
                            }),
                        )
                    })
                    .collect();
                let merged = if base.is_some() {
                    Some(tree::update(&v, cur.root.as_ref(), &ops, Mode::Max)?)
                } else {
                    None
                };
                // The event's own state: its base plus its writes. A base older than a
                // compaction may have lost its tree (only the current tree is kept); the event
                // then carries no root commitment and reads at it replay the clock instead.
                let own = match tree::update(&v, base_root.as_ref(), &ops, Mode::Max) {
                    Ok(u) => Some(u),
                    Err(Error::MissingBlock(..)) if merged.is_some() => None,
                    Err(e) => return Err(e),
                };
                let own_root = own.as_ref().and_then(|u| u.root);
                let state = match (merged, own) {
                    (Some(m), _) | (None, Some(m)) => m,
                    (None, None) => {
                        return Err(Error::corrupt(db.name.clone(), "no tree to commit on"))
                    }
                };
                if deletes_need_live {
                    let ids: Vec<String> = sorted
                        .iter()
                        .enumerate()
                        .filter(|(i, (_, w))| {
                            let prev = state.previous.get(*i).copied().flatten();
                            w.is_none() && prev.is_none_or(|p| p.link.is_none())
                        })
                        .map(|(_, (id, _))| id.clone())
                        .collect();
                    if !ids.is_empty() {
                        return Err(Error::NoSuchDocument {
                            db: db.name.clone(),
                            ids,
                        });
                    }
                }
                let docs = cur.docs as i64 + tree::live_delta(&ops, &state.previous);
                let mut parents = base_heads.clone();
                parents.sort();
                let purge = match purge_id {
                    Some(id) => db.versions_to_purge(&v, &cur, id)?,
                    None => Vec::new(),
                };
                // A purge of an id with no live document and no stored version (never
                // written, or purged already) has nothing to do: nothing is written.
                let live = |i: usize| {
                    state
                        .previous
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|p| p.link.is_some())
                };
                if let Some(id) = purge_id.filter(|_| purge.is_empty() && !live(0)) {
                    return Err(Error::NoSuchDocument {
                        db: db.name.clone(),
                        ids: vec![id.to_owned()],
                    });
                }
                // Encoded from the writes; its ops for the cache come later (see below).
                let event = Event {
                    parents,
                    height,
                    time: now_ms(),
                    ops: Vec::new(),
                    root: own_root,
                    purge,
                    conflicts: Vec::new(),
                    source: source.clone(),
                    note: note.to_owned(),
                };
                let ops = sorted
                    .iter()
                    .map(|(id, w)| (id.as_str(), w.as_ref().map(|x| &x.0)));
                let eb = event.encode_ops(sorted.len(), ops);
                let ecid = Cid::of_cbor(&eb);
                Ok(Built {
                    state,
                    docs,
                    event,
                    eb,
                    ecid,
                })
            };
            // The file's runs are sealed and written on the helper meanwhile, into a file named
            // once it is whole.
            let early;
            let (built, runs) = if whole_runs {
                let key = &db.key;
                let storage = &db.store.storage;
                let at = car::runs_offset();
                let durable = db.sync();
                let (b, r) = crate::util::par::join(build, || {
                    // (Without a file begun, the runs are stored with the rest at the end.)
                    let pending = pending.or_else(|| storage.begin().ok());
                    let r = car::seal_runs(key, runs, FILE_CACHE_MAX)?;
                    let mut runs_at = None;
                    if let (Ok(sealed), Some(p)) = (&r, &pending) {
                        let mut off = at;
                        for b in sealed.bytes() {
                            p.write_at(b, off)?;
                            off += b.len() as u64;
                        }
                        if durable {
                            p.start_writeback(at, off - at);
                        }
                        runs_at = Some(at);
                    }
                    std::io::Result::Ok((r, pending.map(|p| (p, runs_at))))
                });
                let (r, e) = r.map_err(|e| Error::io(db.store.root.join("files"), e))?;
                early = e;
                (b?, r)
            } else {
                // (A file begun for runs that are not used as they are takes the file whole.)
                early = pending.map(|p| (p, None));
                (build()?, Err(runs))
            };
            let Built {
                state,
                docs,
                event,
                eb,
                ecid,
            } = built;
            let purge = event.purge.clone();
            // The file is built in the handle's reused buffer, with room for the documents
            // (unless they are in runs), their sections, the event and (for a checkpoint) about
            // one tree node per eight documents.
            let blocks = sorted.len() + sorted.len() / 8 + 2;
            let checkpoint = sorted.len() >= CHECKPOINT_OPS;
            // The runs' share of the file's name is hashed on the helper meanwhile.
            let shared = runs.as_ref().ok().map(car::SealedRuns::shared);
            let make = || -> Result<car::Finished> {
                let mut buf = db.take_file_buf();
                let bodies: usize = match &runs {
                    Ok(_) => 0,
                    Err(r) if !r.is_empty() => r.iter().map(car::Run::byte_len).sum(),
                    Err(_) => sorted
                        .iter()
                        .filter_map(|(_, x)| x.as_ref().map(|(_, b)| b.len()))
                        .sum(),
                };
                let want =
                    bodies + eb.len() + blocks * (crate::format::block::cid::CID_LEN + 64) + 4096;
                if buf.capacity() < want {
                    // With a margin: the next transaction's estimate is rarely exactly the same.
                    buf.reserve_exact(want + want / 4);
                }
                let meta = car::Meta {
                    level: 0,
                    time: event.time,
                    roots: vec![ecid],
                    replaces: vec![],
                };
                let mut w = match runs {
                    Ok(sealed) => car::Writer::with_runs(meta, blocks - sorted.len(), buf, sealed),
                    Err(runs) => {
                        let mut w = car::Writer::with_capacity(meta, blocks, buf);
                        if runs.is_empty() {
                            for (_, x) in &sorted {
                                if let Some((c, body)) = x {
                                    w.add(*c, body);
                                }
                            }
                        } else {
                            // Only the bodies of the writes that count (the writer adds a CID once).
                            let wanted: DigestSet<Cid> = sorted
                                .iter()
                                .filter_map(|(_, x)| Some(x.as_ref()?.0))
                                .collect();
                            for r in &runs {
                                for (c, body) in r.blocks() {
                                    if wanted.contains(&c) {
                                        w.add(c, body);
                                    }
                                }
                            }
                        }
                        w
                    }
                };
                // A large transaction writes the state's tree with it (its new nodes and the pending
                // ones it still uses), so the tree is whole in files again (a *checkpoint*): its
                // nodes cost little next to its documents, and it bounds what another handle must
                // replay. A small one leaves its new nodes in memory until the level-0 compaction
                // writes them (an event's own tree, when it differs from the state, is not kept: a
                // read at that event replays the clock).
                if checkpoint {
                    db.write_tree(&mut w, &state)?;
                }
                w.add_event(ecid, &eb);
                db.finish_file(w, 0)
            };
            let ebr = &eb;
            let (f, known, decoded) = match shared {
                Some(r) => {
                    let (f, (k, d)) = crate::util::par::join(make, move || {
                        let k = car::Subtrees::of_runs(&r, car::runs_offset());
                        (k, Event::decode(ebr).ok())
                    });
                    (f?, k, d)
                }
                None => (make()?, car::Subtrees::default(), None),
            };
            // The event for the cache: a large one's decoded on the helper, else with its ops
            // copied from the writes.
            let event = decoded.unwrap_or_else(|| Event {
                ops: sorted
                    .iter()
                    .map(|(id, w)| (id.clone(), w.as_ref().map(|x| x.0)))
                    .collect(),
                ..event
            });
            let file = db.store_finished(f, 0, (height, height), db.sync(), early, &known)?;
            if checkpoint {
                // Readable without a file read, but not pending: the tree is in files.
                for (c, _, n) in &state.blocks {
                    db.store
                        .cache
                        .insert(CacheKey::Node(*c), Cached::Node(n.clone()));
                }
                head.base = state.root;
            } else {
                db.add_pending(state.blocks.iter());
            }
            // A purged version written again (equal contents share a block, whatever the id)
            // is stored again: it leaves the purged list, as a purge leaves out a version
            // another id names (else it read as purged and compaction dropped it).
            let mut again: Vec<Cid> = if head.purged.is_empty() {
                Vec::new()
            } else {
                event
                    .ops
                    .iter()
                    .filter_map(|(_, l)| *l)
                    .filter(|l| head.purged.binary_search(l).is_ok())
                    .collect()
            };
            again.sort();
            db.store
                .cache
                .insert(CacheKey::Event(ecid), Cached::Event(Arc::new(event)));

            let heads = match base {
                None => vec![ecid],
                Some(b) => {
                    let mut h: Vec<Cid> = cur
                        .heads
                        .iter()
                        .filter(|x| !b.heads.contains(x))
                        .copied()
                        .collect();
                    h.push(ecid);
                    h.sort();
                    h
                }
            };
            head.heads = heads.clone();
            head.root = state.root;
            head.docs = docs.max(0) as u64;
            head.events += 1;
            if !again.is_empty() {
                head.purged.retain(|c| again.binary_search(c).is_err());
            }
            if !purge.is_empty() {
                head.purged.extend_from_slice(&purge);
                head.purged.sort();
                head.purged.dedup();
            }
            head.files.insert(0, file);
            // Compaction runs in the background; inline only without a background worker, or
            // when commits outrun it (then it also bounds the files a read may consult). A
            // failed compaction must not fail (or block) commits: the commit stands without it,
            // and `compact`/`verify` report the cause.
            let threshold = db.compact_threshold()?;
            let diffs = head.files.iter().filter(|f| f.level == 0).count();
            let background = db.store.opts.background_compaction;
            let mut removed = Vec::new();
            if !background || diffs > 4 * threshold {
                // Beside a background compaction only level 0 (a merge of higher levels the
                // background one may be running would be lost work).
                let mut compacted = head.clone();
                let r = if background {
                    db.compact_level(&mut compacted, 0)
                } else {
                    db.compact_cascade(&mut compacted)
                };
                if let Ok(r) = r {
                    *head = compacted;
                    removed = r;
                }
            }
            let wanted = background && db.level_to_compact(head)?.is_some();
            Ok((
                (
                    Committed {
                        ids: Vec::new(), // (below)
                        event: ecid,
                        heads,
                    },
                    wanted,
                ),
                removed,
            ))
        })?;
        drop(sorted);
        c.ids = writes.into_iter().map(|w| w.0).collect();
        Ok((c, wanted))
    }

    /// Keeps in `pending` only the nodes of `root`'s tree that `base`'s tree (whole in files)
    /// lacks: after a level-0 compaction that ran beside later commits, their new nodes stay
    /// (clearing them would make the next commit rebuild its tree from the clock), while the
    /// nodes the compaction wrote and those of superseded trees go.
    fn prune_pending(&self, root: Option<Cid>, base: Option<Cid>) {
        let mut p = self.pending.write().unwrap_or_else(|p| p.into_inner());
        if root == base || root.is_none_or(|r| !p.contains_key(&r)) {
            p.clear();
            return;
        }
        let written = pending_reach(&p, base, &DigestSet::default());
        let keep = pending_reach(&p, root, &written);
        p.retain(|c, _| keep.contains(c));
    }

    fn add_pending<'a>(&self, nodes: impl Iterator<Item = &'a (Cid, Vec<u8>, Arc<tree::Node>)>) {
        let mut p = self.pending.write().unwrap_or_else(|p| p.into_inner());
        for (c, b, n) in nodes {
            p.insert(*c, (b.as_slice().into(), n.clone()));
        }
    }

    /// Makes the nodes of `head`'s tree readable: they are in the files, or in `pending`, or
    /// are rebuilt from the base tree and the writes of the events in the level-0 files.
    fn ensure_tree(&self, head: &Head) -> Result<()> {
        let Some(root) = head.root else {
            return Ok(());
        };
        if head.base == head.root
            || self
                .pending
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&root)
        {
            return Ok(());
        }
        let u = self.rebuild_tree(head)?;
        self.add_pending(u.blocks.iter());
        Ok(())
    }

    /// The nodes of `head`'s tree that are in no file: a private copy, which stays whole even
    /// if `pending` is cleared meanwhile (a background compaction reads it without the lock).
    fn memory_tree(&self, head: &Head) -> Result<DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>> {
        let Some(root) = head.root else {
            return Ok(DigestMap::default());
        };
        if head.base == head.root {
            return Ok(DigestMap::default());
        }
        {
            let p = self.pending.read().unwrap_or_else(|p| p.into_inner());
            if p.contains_key(&root) {
                return Ok(p.clone());
            }
        }
        let u = self.rebuild_tree(head)?;
        self.add_pending(u.blocks.iter());
        Ok(u.blocks
            .iter()
            .map(|(c, b, n)| (*c, (Arc::from(b.as_slice()), n.clone())))
            .collect())
    }

    /// Rebuilds the nodes of `head`'s tree that are in no file: the base tree (in files) with
    /// the writes of the events in the level-0 files, checked against the head's root.
    fn rebuild_tree(&self, head: &Head) -> Result<tree::Update> {
        let v = View { db: self, head };
        let mut latest: BTreeMap<Arc<[u8]>, Slot> = BTreeMap::new();
        for f in head.files.iter().filter(|f| f.level == 0) {
            for e in self.file_entries(&v, f)?.iter().filter(|e| e.event) {
                let ev = v.event(&e.cid)?;
                for (id, link) in &ev.ops {
                    let s = Slot {
                        version: ev.height,
                        link: *link,
                    };
                    tree::raise_into(&mut latest, id.as_bytes().into(), s);
                }
            }
        }
        let ops: Vec<tree::Op> = latest.into_iter().map(|(k, s)| (k, Some(s))).collect();
        let u = tree::update(&v, head.base.as_ref(), &ops, Mode::Max)?;
        if u.root != head.root {
            return Err(Error::corrupt(
                format!("head record of '{}'", self.name),
                "its tree root is not its base tree with the writes of its level-0 events",
            ));
        }
        Ok(u)
    }

    /// Every index entry of a file, in file order.
    fn file_entries(&self, v: &View, f: &FileRef) -> Result<Vec<car::Entry>> {
        let idx = self.index(f)?;
        let mut entries = idx.entries.clone();
        for p in 0..idx.pages.len() {
            entries.extend(v.page(&f.name, &idx, p)?.iter().copied());
        }
        entries.sort_by_key(|e| (e.seg, e.off));
        Ok(entries)
    }

    /// A state to diff: the current one, or the one at event `at` (its own tree when still
    /// stored, else built from its history).
    fn point<'a>(&'a self, head: &'a Head, at: Option<&Cid>, build: bool) -> Result<Point<'a>> {
        let view = View { db: self, head };
        let Some(e) = at else {
            self.ensure_tree(head)?;
            return Ok(Point {
                view,
                root: head.root,
                built: DigestMap::default(),
            });
        };
        let ev = view.given_event(e)?;
        if !build {
            return Ok(Point {
                view,
                root: ev.root,
                built: DigestMap::default(),
            });
        }
        let u = self.state_at(&view, e, &ev)?;
        Ok(Point {
            root: u.root,
            built: u.blocks.into_iter().map(|(c, _, n)| (c, n)).collect(),
            view,
        })
    }

    /// The merge step of [`Database::merge_from`], under this database's writer lock.
    fn merge(
        &self,
        head: &mut Head,
        src: &Db,
        shead: &Head,
        note: &str,
        dry_run: bool,
    ) -> Result<(MergeReport, Vec<FileName>)> {
        self.ensure_tree(head)?;
        let cur = head.clone();
        let dv = View {
            db: self,
            head: &cur,
        };
        let sv = View {
            db: src,
            head: shead,
        };
        let has = |v: &View, c: &Cid| match v.locate(c, None) {
            Ok(_) => Ok(true),
            Err(Error::MissingBlock(..)) => Ok(false),
            Err(e) => Err(e),
        };
        // Events one side has and the other lacks (each side's history is closed under
        // parents, so a walk stops at the first event the other side has).
        let only_in = |from: &View, other: &View| -> Result<Vec<(Cid, Arc<Event>)>> {
            let mut out = Vec::new();
            let mut seen: DigestSet<Cid> = DigestSet::default();
            let mut stack: Vec<Cid> = from.head.heads.clone();
            while let Some(c) = stack.pop() {
                if !seen.insert(c) || has(other, &c)? {
                    continue;
                }
                if from.head.cut_root(&c).is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "cannot merge across dropped history (event {c} of '{}' has no parents \
                         here); merge from before the drop",
                        from.db.name
                    )));
                }
                let e = from.event(&c)?;
                stack.extend_from_slice(&e.parents);
                out.push((c, e));
            }
            out.sort_by_key(|(c, e)| (e.height, *c)); // oldest first
            Ok(out)
        };
        let theirs_only = only_in(&sv, &dv)?;
        if theirs_only.is_empty() {
            return Ok((MergeReport::default(), Vec::new())); // nothing new: already merged
        }
        let ours_only = only_in(&dv, &sv)?;
        let fast_forward = ours_only.is_empty();
        // The merged state: our tree with their current slot of every id their new events
        // touched, by the usual (height, CID) maximum.
        let ids_theirs: std::collections::BTreeSet<&str> = theirs_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().map(|(id, _)| id.as_str()))
            .collect();
        let ids_ours: HashSet<&str> = ours_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().map(|(id, _)| id.as_str()))
            .collect();
        let mut ops: Vec<tree::Op> = Vec::new();
        let mut sides: Vec<(String, Option<Slot>, Option<Slot>)> = Vec::new();
        for id in &ids_theirs {
            let t = tree::get(&sv, shead.root.as_ref(), id.as_bytes())?;
            let o = tree::get(&dv, cur.root.as_ref(), id.as_bytes())?;
            if let Some(t) = t {
                ops.push((id.as_bytes().into(), Some(t)));
            }
            sides.push((id.to_string(), o, t));
        }
        let merged = tree::update(&dv, cur.root.as_ref(), &ops, Mode::Max)?;
        if fast_forward && merged.root != shead.root {
            return Err(Error::corrupt(
                format!("database '{}'", src.name),
                "its tree root is not the state of its events",
            ));
        }
        // Conflicts: changed on both sides (since the common history) to different values.
        let mut conflicts: Vec<(String, Option<Slot>, Option<Slot>)> = sides
            .iter()
            .filter(|(id, o, t)| {
                ids_ours.contains(id.as_str()) && o.and_then(|s| s.link) != t.and_then(|s| s.link)
            })
            .cloned()
            .collect();
        conflicts.sort_by(|a, b| a.0.cmp(&b.0));
        // Their values in the common history: the greatest slot among events both have.
        let ours_set: DigestSet<Cid> = ours_only.iter().map(|(c, _)| *c).collect();
        let mut ancestor: HashMap<String, Slot> = HashMap::new();
        if !conflicts.is_empty() {
            let wanted: HashSet<&str> = conflicts.iter().map(|c| c.0.as_str()).collect();
            clock::walk(&dv, &cur.heads, &mut |c, e| {
                if !ours_set.contains(c) {
                    for (id, l) in e.ops.iter().filter(|(id, _)| wanted.contains(id.as_str())) {
                        let s = Slot {
                            version: e.height,
                            link: *l,
                        };
                        ancestor.entry(id.clone()).or_insert(s).raise(s);
                    }
                }
                Ok(true)
            })?;
        }
        // One file: their new events and values, the merged tree, the merge event.
        let mut heads: Vec<Cid> = cur.heads.iter().chain(&shead.heads).copied().collect();
        heads.sort();
        heads.dedup();
        let mut height = 0;
        for h in &cur.heads {
            height = height.max(dv.event(h)?.height);
        }
        for h in &shead.heads {
            height = height.max(sv.event(h)?.height);
        }
        let event = (!fast_forward).then(|| Event {
            parents: heads.clone(),
            height: height + 1,
            time: now_ms(),
            ops: Vec::new(),
            root: merged.root,
            purge: Vec::new(),
            conflicts: conflicts
                .iter()
                .filter_map(|(id, o, t)| {
                    let loser = if theirs_win(o, t) { o } else { t };
                    loser.and_then(|s| s.link).map(|l| (id.clone(), vec![l]))
                })
                .collect(),
            source: Vec::new(),
            note: note.to_owned(),
        });
        let report = |event: Option<Cid>| {
            self.merge_report(
                &dv,
                &sv,
                event,
                fast_forward,
                &theirs_only,
                &sides,
                &conflicts,
                &ancestor,
            )
        };
        if dry_run {
            return Ok((report(None)?, Vec::new()));
        }
        let mut w = car::Writer::new(car::Meta {
            level: 0,
            time: now_ms(),
            roots: match &event {
                Some(e) => vec![Cid::of_cbor(&e.encode())],
                None => shead.heads.clone(),
            },
            replaces: vec![],
        });
        let mut heights = (u64::MAX, 0);
        // Versions this database purged that the source has (see `commit`): stored again.
        let mut again: Vec<Cid> = Vec::new();
        for (c, e) in &theirs_only {
            heights = (heights.0.min(e.height), heights.1.max(e.height));
            for l in e.ops.iter().filter_map(|(_, l)| *l) {
                if shead.purged.binary_search(&l).is_ok() {
                    continue;
                }
                if head.purged.binary_search(&l).is_ok() {
                    again.push(l);
                }
                let body = sv.with_block(&l, Some(e.height), |b| Ok(b.to_vec()))?;
                w.add(l, &body);
            }
            let b = sv.with_block(c, Some(e.height), |b| Ok(b.to_vec()))?;
            w.add_event(*c, &b);
        }
        self.write_tree(&mut w, &merged)?;
        let ecid = match &event {
            Some(e) => {
                let b = e.encode();
                let c = Cid::of_cbor(&b);
                heights.1 = heights.1.max(e.height);
                w.add_event(c, &b);
                Some(c)
            }
            None => None,
        };
        let file = self.store_file(w, 0, heights)?;
        // Documents count: what the merged slots changed.
        let docs = cur.docs as i64 + tree::live_delta(&ops, &merged.previous);
        for (c, n) in merged.blocks.iter().map(|(c, _, n)| (c, n)) {
            self.store
                .cache
                .insert(CacheKey::Node(*c), Cached::Node(n.clone()));
        }
        head.heads = match ecid {
            Some(c) => vec![c],
            None => shead.heads.clone(),
        };
        head.root = merged.root;
        head.base = merged.root;
        head.docs = docs.max(0) as u64;
        head.events += theirs_only.len() as u64 + u64::from(ecid.is_some());
        head.files.insert(0, file);
        if !again.is_empty() {
            again.sort();
            head.purged.retain(|c| again.binary_search(c).is_err());
        }
        // Versions the source purged are gone here too: say so, not "missing".
        let purged: Vec<Cid> = theirs_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().filter_map(|(_, l)| *l))
            .filter(|l| shead.purged.binary_search(l).is_ok())
            .collect();
        if !purged.is_empty() {
            head.purged.extend(purged);
            head.purged.sort();
            head.purged.dedup();
        }
        Ok((report(ecid)?, Vec::new()))
    }

    /// The report of a merge: values of ours and of the common history read from `dv`, theirs
    /// from `sv`.
    #[allow(clippy::too_many_arguments)]
    fn merge_report(
        &self,
        dv: &View,
        sv: &View,
        event: Option<Cid>,
        fast_forward: bool,
        theirs_only: &[(Cid, Arc<Event>)],
        sides: &[(String, Option<Slot>, Option<Slot>)],
        conflicts: &[(String, Option<Slot>, Option<Slot>)],
        ancestor: &HashMap<String, Slot>,
    ) -> Result<MergeReport> {
        let load = |v: &View, id: &str, s: &Option<Slot>| -> Result<Option<Value>> {
            match s {
                Some(Slot {
                    link: Some(l),
                    version,
                }) => v.load_doc(id, l, *version).map(Some),
                _ => Ok(None),
            }
        };
        let mut report = MergeReport {
            event,
            fast_forward,
            events: theirs_only.len(),
            changed: sides
                .iter()
                .filter(|(_, o, t)| {
                    theirs_win(o, t) && o.and_then(|s| s.link) != t.and_then(|s| s.link)
                })
                .map(|(id, _, _)| id.clone())
                .collect(),
            conflicts: Vec::new(),
        };
        for (id, o, t) in conflicts {
            report.conflicts.push(Conflict {
                ancestor: load(dv, id, &ancestor.get(id).copied())?,
                ours: load(dv, id, o)?,
                theirs: load(sv, id, t)?,
                winner: if theirs_win(o, t) {
                    Side::Theirs
                } else {
                    Side::Ours
                },
                id: id.clone(),
            });
        }
        Ok(report)
    }

    /// Adds the nodes of `state`'s tree that are in no file yet (its new nodes and the pending
    /// ones it uses) to `w`, so the tree is whole in files once `w` is stored.
    fn write_tree(&self, w: &mut car::Writer, state: &tree::Update) -> Result<()> {
        let fresh: DigestMap<Cid, (&[u8], &Arc<tree::Node>)> = state
            .blocks
            .iter()
            .map(|(c, b, n)| (*c, (b.as_slice(), n)))
            .collect();
        let pending = self.pending.read().unwrap_or_else(|p| p.into_inner());
        let mut stack: Vec<Cid> = state.root.into_iter().collect();
        let mut seen: DigestSet<Cid> = DigestSet::default();
        while let Some(c) = stack.pop() {
            if !seen.insert(c) {
                continue;
            }
            let (bytes, node): (&[u8], Arc<tree::Node>) = match fresh.get(&c) {
                Some((b, n)) => (b, (*n).clone()),
                None => match pending.get(&c) {
                    Some((b, n)) => (b, n.clone()),
                    None => continue, // in a file already, with all below it
                },
            };
            w.add_node(c, bytes);
            stack.extend_from_slice(node.children());
        }
        Ok(())
    }

    /// The tree of the state at event `e` built from its history: for every id, the highest
    /// slot among `e` and its ancestors (and the states at cuts among them). Checked against
    /// the root `e` commits to, when it has one.
    fn state_at(&self, v: &View, e: &Cid, ev: &Event) -> Result<tree::Update> {
        let mut state: BTreeMap<Arc<[u8]>, Slot> = BTreeMap::new();
        let mut put = |k: &[u8], s: Slot| tree::raise_into(&mut state, k.into(), s);
        clock::walk(v, &[*e], &mut |c, x| {
            for (id, l) in &x.ops {
                put(
                    id.as_bytes(),
                    Slot {
                        version: x.height,
                        link: *l,
                    },
                );
            }
            if let Some(root) = v.head.cut_root(c) {
                tree::range(v, root.as_ref(), None, None, &mut |k, s| {
                    put(k, *s);
                    Ok(true)
                })?;
            }
            Ok(true)
        })?;
        let ops: Vec<tree::Op> = state.into_iter().map(|(k, s)| (k, Some(s))).collect();
        let at_e = tree::update(v, None, &ops, Mode::Max)?;
        if ev.root.is_some() && ev.root != at_e.root {
            return Err(Error::corrupt(
                format!("event {e}"),
                "its tree root is not the state its history gives",
            ));
        }
        Ok(at_e)
    }

    /// Drops the history older than event `e` (its strict ancestors), keeping the state at `e`
    /// as a tree the head record names (a *cut*): writes one file with every kept event, every
    /// value they name, the current tree, and the trees of the cuts, and replaces every live
    /// file with it. Returns the replaced files; `head` unchanged when `e` has no history.
    fn squash(&self, head: &mut Head, e: &Cid) -> Result<(usize, Vec<FileName>)> {
        self.ensure_tree(head)?;
        let v = View { db: self, head };
        let ev = v.given_event(e)?;
        // The strict ancestors of `e`, to drop.
        let mut dropped: DigestSet<Cid> = DigestSet::default();
        clock::walk(&v, &ev.parents, &mut |c, _| {
            dropped.insert(*c);
            Ok(true)
        })?;
        if dropped.is_empty() {
            return Ok((0, Vec::new()));
        }
        let at_e = self.state_at(&v, e, &ev)?;
        let fresh: DigestMap<Cid, &[u8]> = at_e
            .blocks
            .iter()
            .map(|(c, b, _)| (*c, b.as_slice()))
            .collect();
        // Kept events: everything reachable but the dropped ones.
        let mut kept: Vec<(Cid, Arc<Event>)> = Vec::new();
        clock::walk(&v, &head.heads, &mut |c, x| {
            if !dropped.contains(c) {
                kept.push((*c, Arc::new(x.clone())));
            }
            Ok(true)
        })?;
        kept.reverse(); // oldest first
        let mut cut: Vec<(Cid, Option<Cid>)> = head
            .cut
            .iter()
            .filter(|(c, _)| !dropped.contains(c) && c != e)
            .copied()
            .collect();
        cut.push((*e, at_e.root));
        cut.sort();
        let level = head.files.iter().map(|f| f.level).max().unwrap_or(0).max(1);
        let mut w = car::Writer::new(car::Meta {
            level,
            time: now_ms(),
            roots: head.heads.clone(),
            replaces: head.files.iter().map(|f| f.name).collect(),
        });
        let mut added: DigestSet<Cid> = DigestSet::default();
        let raw = |c: &Cid| -> Result<Vec<u8>> {
            if let Some(b) = fresh.get(c) {
                return Ok(b.to_vec());
            }
            if let Some((b, _)) = self
                .pending
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(c)
            {
                return Ok(b.to_vec());
            }
            v.with_block(c, None, |b| Ok(b.to_vec()))
        };
        let mut heights = (u64::MAX, 0);
        for (c, x) in &kept {
            heights = (heights.0.min(x.height), heights.1.max(x.height));
            w.add_event(*c, &raw(c)?);
            for l in x.ops.iter().filter_map(|(_, l)| *l) {
                if head.purged.binary_search(&l).is_err() && added.insert(l) {
                    w.add(l, &raw(&l)?);
                }
            }
        }
        let mut stack: Vec<Cid> = head
            .root
            .into_iter()
            .chain(cut.iter().filter_map(|(_, r)| *r))
            .collect();
        while let Some(c) = stack.pop() {
            if !added.insert(c) {
                continue;
            }
            let b = raw(&c)?;
            let node = tree::Node::decode(&b).map_err(|x| v.corrupt_cid(&c, x.0))?;
            w.add_node(c, &b);
            stack.extend_from_slice(node.children());
            if let tree::Items::Leaf(slots) = &node.items {
                for l in slots.iter().filter_map(|s| s.link) {
                    if head.purged.binary_search(&l).is_err() && added.insert(l) {
                        w.add(l, &raw(&l)?);
                    }
                }
            }
        }
        let file = self.store_file(w, level, heights)?;
        let replaced: Vec<FileName> = head.files.iter().map(|f| f.name).collect();
        head.files = vec![file];
        head.base = head.root;
        head.cut = cut;
        head.events = kept.len() as u64;
        head.compacted = now_ms();
        Ok((dropped.len(), replaced))
    }

    /// Every stored version of `id` in `head`'s history that no other document shares (equal
    /// contents share a block), and is not purged already.
    fn versions_to_purge(&self, v: &View, head: &Head, id: &str) -> Result<Vec<Cid>> {
        let mut mine: DigestSet<Cid> = DigestSet::default();
        let mut others: DigestSet<Cid> = DigestSet::default();
        clock::walk(v, &head.heads, &mut |_, e| {
            for (i, l) in &e.ops {
                if let Some(l) = l {
                    if i == id {
                        mine.insert(*l);
                    } else {
                        others.insert(*l);
                    }
                }
            }
            Ok(true)
        })?;
        // Versions written before a cut live on in the state at it.
        for (_, root) in &head.cut {
            tree::range(v, root.as_ref(), None, None, &mut |k, s| {
                if let Some(l) = s.link {
                    if k == id.as_bytes() {
                        mine.insert(l);
                    } else {
                        others.insert(l);
                    }
                }
                Ok(true)
            })?;
        }
        let mut out: Vec<Cid> = mine
            .into_iter()
            .filter(|c| !others.contains(c) && head.purged.binary_search(c).is_err())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Merges levels whose file count passed their limit. Returns the replaced files.
    fn compact_cascade(&self, head: &mut Head) -> Result<Vec<FileName>> {
        let mut removed = Vec::new();
        // Lowest level first: merging level k only adds a file to level k + 1.
        while let Some(level) = self.level_to_compact(head)? {
            let r = self.compact_level(head, level)?;
            if r.is_empty() {
                break;
            }
            removed.extend(r);
        }
        Ok(removed)
    }

    /// Merges every file of `level` into one file of `level + 1` in `head`. Returns the replaced
    /// files (deleted by the caller once the new head is durable).
    fn compact_level(&self, head: &mut Head, level: u8) -> Result<Vec<FileName>> {
        match self.merge_level(head, level)? {
            Some(m) => {
                self.apply_merge(head, &m);
                Ok(m.replaced)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Puts a merge's file in place of the files it replaced; false (and `head` unchanged) if
    /// any of them is no longer live (another compaction won).
    fn apply_merge(&self, head: &mut Head, m: &Merged) -> bool {
        let sel = &m.replaced;
        if !sel.iter().all(|n| head.files.iter().any(|f| f.name == *n)) {
            return false;
        }
        let pos = head
            .files
            .iter()
            .position(|f| sel.contains(&f.name))
            .unwrap_or(0);
        head.files.retain(|f| !sel.contains(&f.name));
        head.files.insert(pos.min(head.files.len()), m.file);
        head.compacted = now_ms();
        // Only forward: a commit meanwhile may have moved the base already (a checkpoint or a
        // merge), and its tree is whole in files too.
        if let Some(base) = m.base.filter(|_| head.base == m.from_base) {
            head.base = base;
        }
        true
    }

    /// Writes one file of `level + 1` holding what the files of `level` in `head` hold that is
    /// still needed: every event, every document version an event names, and tree nodes. For
    /// level 0 those are the current tree's nodes that are in these files or only in memory
    /// (`pending`): the output then holds the whole new part of the current tree, which becomes
    /// the base tree. For a higher level, the base tree's nodes in these files (a node of an
    /// older tree is superseded: a later tree links only nodes of its predecessors or nodes it
    /// writes anew, and the base tree is the one every later tree is rebuilt from). Returns the
    /// file, the names it replaces and, for level 0, the new base.
    fn merge_level(&self, head: &Head, level: u8) -> Result<Option<Merged>> {
        let sel: Vec<FileRef> = head
            .files
            .iter()
            .filter(|f| f.level == level)
            .copied()
            .collect();
        if sel.is_empty() || (sel.len() == 1 && level > 0) {
            return Ok(None);
        }
        self.merge_files(head, sel, level + 1, level == 0, false)
            .map(Some)
    }

    /// Merges every live file into one (`compact --full`): it holds every event, every
    /// document version and exactly the current tree's nodes; it becomes the base.
    fn merge_all(&self, head: &Head) -> Result<Option<Merged>> {
        if head.files.is_empty() || (head.files.len() == 1 && head.base == head.root) {
            return Ok(None);
        }
        let top = head.files.iter().map(|f| f.level).max().unwrap_or(0).max(1);
        self.merge_files(head, head.files.clone(), top, true, true)
            .map(Some)
    }

    /// Writes one file of `out_level` holding what the files `sel` hold that is still needed
    /// (see [`Db::merge_level`]); with `current`, the current tree's nodes (from `sel` and
    /// memory) rather than the base tree's; with `all`, `sel` is every live file, so a node
    /// found nowhere is missing rather than in an older file.
    fn merge_files(
        &self,
        head: &Head,
        sel: Vec<FileRef>,
        out_level: u8,
        current: bool,
        all: bool,
    ) -> Result<Merged> {
        let level = out_level - 1;
        let memory = if current {
            self.memory_tree(head)?
        } else {
            DigestMap::default()
        };
        let v = View { db: self, head };
        // Pass 1, over the indexes and the events only: which tree nodes the files hold, the
        // events' heights and parents, and (for version-1 files, whose index does not mark
        // tree nodes) the values the events name.
        let mut nodes_here: DigestSet<Cid> = DigestSet::default();
        let mut values: DigestSet<Cid> = DigestSet::default();
        let mut event_set: DigestSet<Cid> = DigestSet::default();
        let mut parents: DigestSet<Cid> = DigestSet::default();
        let mut heights = (u64::MAX, 0);
        let mut versions = Vec::with_capacity(sel.len());
        for f in sel.iter().rev() {
            let idx = self.index(f)?;
            versions.push(idx.version);
            for e in self.file_entries(&v, f)? {
                if e.event {
                    let seg = v.segment(f, e.seg)?;
                    let data = car::block_in(&seg, &e)
                        .map_err(|x| Error::format(format!("file {}", f.name), x))?;
                    let ev = Event::decode(data)
                        .map_err(|x| Error::corrupt(format!("event {}", e.cid), x.0))?;
                    heights = (heights.0.min(ev.height), heights.1.max(ev.height));
                    parents.extend(ev.parents.iter().copied());
                    if idx.version < 2 {
                        values.extend(ev.ops.iter().filter_map(|(_, l)| *l));
                    }
                    event_set.insert(e.cid);
                } else if e.node || idx.version < 2 {
                    nodes_here.insert(e.cid);
                }
            }
        }
        // Tree nodes to keep: descend through these files, memory and newer files; stop at
        // older ones (a node only links to nodes at least as old as itself).
        let newer = Head {
            files: head
                .files
                .iter()
                .filter(|f| f.level < level && !all)
                .copied()
                .collect(),
            ..Head::default()
        };
        let in_newer = View {
            db: self,
            head: &newer,
        };
        let tree_root = if current { head.root } else { head.base };
        let mut keep: DigestSet<Cid> = DigestSet::default();
        let mut extra: Vec<(Cid, Arc<[u8]>)> = Vec::new();
        // The trees to keep: the current (or base) tree, and the state at every cut event.
        let mut stack: Vec<Cid> = tree_root
            .into_iter()
            .chain(head.cut.iter().filter_map(|(_, r)| *r))
            .collect();
        let mut visited: DigestSet<Cid> = DigestSet::default();
        while let Some(c) = stack.pop() {
            if !visited.insert(c) {
                continue;
            }
            if nodes_here.contains(&c) {
                keep.insert(c);
            } else if current {
                match memory.get(&c) {
                    Some((b, _)) => extra.push((c, b.clone())),
                    None if all => return Err(Error::MissingBlock(c, self.name.clone())),
                    None => continue, // in an older file, with everything below it
                }
            } else {
                match in_newer.locate(&c, None) {
                    Ok(_) => {}
                    Err(Error::MissingBlock(..)) => continue,
                    Err(e) => return Err(e),
                }
            }
            let node = match memory.get(&c) {
                Some((_, n)) => n.clone(),
                None => v.node(&c)?,
            };
            stack.extend_from_slice(node.children());
            // A tree's values stay with it (after a cut, no kept event names some of them).
            if let tree::Items::Leaf(slots) = &node.items {
                values.extend(slots.iter().filter_map(|s| s.link));
            }
        }
        drop(visited);
        let meta = car::Meta {
            level: out_level,
            time: now_ms(),
            // The CAR roots: the file's newest events (no event in it names them).
            roots: {
                let mut r: Vec<Cid> = event_set
                    .iter()
                    .filter(|e| !parents.contains(e))
                    .copied()
                    .collect();
                r.sort();
                r
            },
            replaces: sel.iter().map(|f| f.name).collect(),
        };
        drop(parents);
        let purged = |c: &Cid| head.purged.binary_search(c).is_ok();
        // Pass 2: stream every kept block, oldest file first and in file order, into the new
        // file; memory holds one segment and the new index, not the files.
        let mut failed: Option<Error> = None;
        let mut done: Option<(u64, car::Index, u32)> = None;
        let name = self.store.storage.put_with(self.sync(), &mut |out| {
            let r = (|| -> Result<FileName> {
                let io = |e| Error::io(self.store.root.join("files"), e);
                let mut w = car::StreamWriter::new(meta.clone(), &self.key, out).map_err(io)?;
                for (f, version) in sel.iter().rev().zip(&versions) {
                    for e in self.file_entries(&v, f)? {
                        // Version-1 files do not mark tree nodes: a block there is a kept
                        // node, or a value an event or a kept tree names, or dropped.
                        let kept = if e.event {
                            true
                        } else if e.node {
                            keep.contains(&e.cid)
                        } else if *version < 2 {
                            keep.contains(&e.cid) || (values.contains(&e.cid) && !purged(&e.cid))
                        } else {
                            !purged(&e.cid)
                        };
                        if !kept {
                            continue;
                        }
                        let seg = v.segment(f, e.seg)?;
                        let data = car::block_in(&seg, &e)
                            .map_err(|x| Error::format(format!("file {}", f.name), x))?;
                        if e.event {
                            w.add_event(e.cid, data)
                        } else if e.node || keep.contains(&e.cid) {
                            w.add_node(e.cid, data)
                        } else {
                            w.add(e.cid, data)
                        }
                        .map_err(io)?;
                    }
                }
                for (c, b) in &extra {
                    w.add_node(*c, b).map_err(io)?;
                }
                let (name, size, index, index_len) = w.finish().map_err(io)?;
                done = Some((size, index, index_len));
                Ok(name)
            })();
            r.map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                std::io::Error::other(msg)
            })
        });
        let name = match (name, failed) {
            (_, Some(e)) => return Err(e),
            (Err(e), None) => return Err(Error::io(self.store.root.join("files"), e)),
            (Ok(n), None) => n,
        };
        let (size, index, index_len) =
            done.ok_or_else(|| Error::corrupt("compaction", "no file written"))?;
        let bloom = self.register_index(name, index);
        Ok(Merged {
            file: FileRef {
                name,
                level: out_level,
                size,
                index_len,
                heights,
                bloom,
            },
            replaced: sel.iter().map(|f| f.name).collect(),
            base: current.then_some(head.root),
            from_base: head.base,
        })
    }

    /// The lowest level holding more files than its limit.
    fn level_to_compact(&self, head: &Head) -> Result<Option<u8>> {
        let Some(top) = head.files.iter().map(|f| f.level).max() else {
            return Ok(None);
        };
        let threshold = self.compact_threshold()?;
        Ok((0..=top).find(|&l| {
            let n = head.files.iter().filter(|f| f.level == l).count();
            n > if l == 0 { threshold } else { LEVEL_FANIN }
        }))
    }

    /// Background compaction: merge on a snapshot without the lock, then swap the result in
    /// under the lock if the merged files are all still live (commits go on meanwhile; another
    /// compaction may have won, and then this one's output is discarded).
    fn compact_background(&self) -> Result<()> {
        loop {
            let st = self.refresh()?;
            let Some(level) = self.level_to_compact(&st.head)? else {
                return Ok(());
            };
            // From writing the merged file until a head record names it (or it is removed).
            let _gc = self.store.gc.shared()?;
            let Some(m) = self.merge_level(&st.head, level)? else {
                return Ok(());
            };
            // Commits let the swap go first (they wait for this flag, briefly).
            self.swap_waiting.store(true, Ordering::SeqCst);
            let applied = self.with_lock(|db, head| {
                db.swap_waiting.store(false, Ordering::SeqCst);
                let ok = db.apply_merge(head, &m);
                Ok((ok, if ok { m.replaced.clone() } else { Vec::new() }))
            });
            self.swap_waiting.store(false, Ordering::SeqCst);
            let applied = applied?;
            if !applied {
                let _ = self.store.storage.retire(&m.file.name);
                return Ok(());
            }
        }
    }

    /// Seals and stores a file, keeping its index and segments in memory so this process
    /// never reads back what it just wrote.
    fn store_file(&self, w: car::Writer, level: u8, heights: (u64, u64)) -> Result<FileRef> {
        let f = self.finish_file(w, level)?;
        self.store_finished(f, level, heights, false, None, &car::Subtrees::default())
    }

    /// Seals a file (compressed above level 0).
    fn finish_file(&self, w: car::Writer, level: u8) -> Result<car::Finished> {
        w.finish(&self.key, level > 0, FILE_CACHE_MAX)
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// [`Db::store_file`] of a sealed file, with three more choices. `carry` (a transaction's
    /// diff with full durability): a small file is written unsynced and left for the head
    /// record to carry (see [`Db::write_head`]). `early`: the file was begun before it was
    /// sealed (see [`crate::storage::Storage::begin`]), its runs written at the offset given,
    /// if any. `known`: subtrees of its bytes hashed before, for its name.
    fn store_finished(
        &self,
        f: car::Finished,
        level: u8,
        heights: (u64, u64),
        carry: bool,
        early: Option<(crate::storage::Pending, Option<u64>)>,
        known: &car::Subtrees,
    ) -> Result<FileRef> {
        let size = f.file_len();
        let carry = carry && size <= crate::format::head::MAX_FILE_RECORD;
        let sync = self.sync() && !carry;
        let io = |e| Error::io(self.store.root.join("files"), e);
        let name = match early {
            // Written while hashed; the runs may be there already.
            Some((pending, runs_at)) => {
                let parts = f.parts();
                let runs_written = runs_at == Some(f.split as u64);
                let (name, written) = crate::util::par::join(
                    || f.name_with(known),
                    || {
                        let mut at = 0;
                        for (i, p) in parts.iter().enumerate() {
                            let is_run = i > 0 && i + 1 < parts.len();
                            if !(is_run && runs_written) {
                                pending.write_at(p, at)?;
                            }
                            at += p.len() as u64;
                        }
                        std::io::Result::Ok(())
                    },
                );
                written.map_err(io)?;
                self.store
                    .storage
                    .finish(pending, &name, size as u64, sync)
                    .map_err(io)?;
                name
            }
            None => {
                let name = f.name_with(known);
                self.store
                    .storage
                    .put_parts(&name, &f.parts(), sync)
                    .map_err(io)?;
                name
            }
        };
        if carry {
            let bytes = f.parts().concat();
            *self.carried.lock().unwrap_or_else(|p| p.into_inner()) = Some((name, bytes));
        }
        let car::Finished {
            bytes,
            index,
            index_len,
            segments,
            ..
        } = f;
        let size = size as u64;
        self.give_file_buf(bytes);
        let bloom = self.register_index(name, index);
        // A large file's segments are not cached (they would push out what reads use).
        for (n, seg) in segments.into_iter().enumerate() {
            self.store.cache.insert(
                CacheKey::Segment(name, n as u32),
                Cached::Bytes(Arc::new(seg)),
            );
        }
        Ok(FileRef {
            name,
            level,
            size,
            index_len,
            heights,
            bloom,
        })
    }

    /// The buffer this handle builds files in (see [`car::Writer::with_capacity`]); empty
    /// while another file of the handle is being built.
    fn take_file_buf(&self) -> Vec<u8> {
        let mut b = std::mem::take(&mut *self.file_buf.lock().unwrap_or_else(|p| p.into_inner()));
        b.clear(); // (it comes back holding the last file: reserving on top of that doubled it)
        b
    }

    /// Keeps a file's buffer for the next file, unless it grew too large to hold on to.
    fn give_file_buf(&self, buf: Vec<u8>) {
        if buf.capacity() <= FILE_BUF_KEEP {
            *self.file_buf.lock().unwrap_or_else(|p| p.into_inner()) = buf;
        }
    }

    /// The metadata of a whole file's bytes (its index is checked and decrypted).
    fn meta_of(&self, name: &FileName, b: &[u8]) -> Result<car::Meta> {
        let bad = |e| Error::format(format!("file {name}"), e);
        let t = b
            .get(b.len().saturating_sub(car::TRAILER_LEN)..)
            .unwrap_or_default();
        let (at, len) = car::parse_trailer(b.len() as u64, t).map_err(bad)?;
        let tail = usize::try_from(at)
            .ok()
            .filter(|&at| b.len().checked_sub(at) == Some(len as usize + car::TRAILER_LEN))
            .and_then(|at| b.get(at..))
            .ok_or_else(|| bad(car::FormatError::Framing("index outside the file")))?;
        Ok(car::Index::open(&self.key, tail, at).map_err(bad)?.meta)
    }

    /// Keeps the index of a file this handle just wrote (no need to read it back) and returns
    /// the file's Bloom filter: small files get one; in a large one most bits would be set.
    fn register_index(&self, name: FileName, index: car::Index) -> u64 {
        let bloom = match index.entries.len() {
            1..=24 => index.entries.iter().fold(0, |b, e| b | bloom_bits(&e.cid)),
            _ => 0,
        };
        let mut m = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(name, Arc::new(index));
        bloom
    }

    fn file_err(&self, name: &FileName, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile(*name, self.name.clone())
        } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corrupt(
                format!("file {name}"),
                "file is shorter than its index says (truncated)",
            )
        } else {
            Error::io(self.store.root.join("files").join(name.to_string()), e)
        }
    }

    fn index(&self, f: &FileRef) -> Result<Arc<car::Index>> {
        let name = &f.name;
        if let Some(i) = self
            .indexes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(i.clone());
        }
        // A carried diff (see `write_head`) is checked whole the first time this handle loads
        // it: after a power cut its name can hold a reused file's old bytes, which read and
        // authenticate like any diff's (only the name's hash tells). If it cannot be put back,
        // nothing is read from it. (The state's log is the one this handle's head came from:
        // damage comes from a power cut, before any live handle opened.)
        if self.state().log.files.contains(name) {
            self.ensure_whole(name)?;
        }
        let idx = self.restoring(name, || self.read_index(f))?;
        let mut m = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(*name, idx.clone());
        Ok(idx)
    }

    /// Reads and opens a file's index.
    fn read_index(&self, f: &FileRef) -> Result<Arc<car::Index>> {
        let name = &f.name;
        let st = &self.store.storage;
        let loc = format!("file {name}");
        let tail = car::TRAILER_LEN as u64 + f.index_len as u64;
        if f.index_len == 0 || f.size < tail + car::HEADER_LEN as u64 {
            return Err(Error::corrupt(
                loc,
                "head record gives an impossible index location",
            ));
        }
        // Index and trailer in one read; the trailer must agree with the head record.
        let b = st
            .read_at(name, f.size - tail, tail as usize)
            .map_err(|e| self.file_err(name, e))?;
        let t = &b[f.index_len as usize..];
        let (at, n) = car::parse_trailer(f.size, t).map_err(|e| Error::format(&loc, e))?;
        if at != f.size - tail || n != f.index_len {
            return Err(Error::corrupt(
                loc,
                "trailer disagrees with the head record",
            ));
        }
        Ok(Arc::new(
            car::Index::open(&self.key, &b, at).map_err(|e| Error::format(&loc, e))?,
        ))
    }

    /// Runs `read` of file `name`; if it fails and the head record holds the file's bytes (a
    /// fully durable commit's diff, written unsynced: a power cut can lose or tear it), puts
    /// them back and runs `read` again.
    fn restoring<T>(&self, name: &FileName, read: impl Fn() -> Result<T>) -> Result<T> {
        match read() {
            Ok(v) => Ok(v),
            Err(e) => match self.restore_file(name, false) {
                Ok(true) => read(),
                _ => Err(e),
            },
        }
    }

    /// Makes the files `log` carries that `head` still names durable where they are, before a
    /// head record without the copies replaces `log`: each is checked whole first (a power
    /// cut may have left it lost or holding other bytes) and put back from its copy if it is
    /// not its name's. Called holding the writer lock, so `HEAD` is `log`.
    fn secure_carried(&self, log: &Log, head: &Head) -> Result<()> {
        for name in &log.files {
            if !head.files.iter().any(|f| f.name == *name) {
                continue;
            }
            self.ensure_whole(name)?;
            self.sync_file(name)?;
        }
        Ok(())
    }

    /// Makes a file stored unsynced durable (its bytes and its name).
    fn sync_file(&self, name: &FileName) -> Result<()> {
        self.store
            .storage
            .sync_file(name)
            .map_err(|e| self.file_err(name, e))
    }

    /// Checks carried file `name` whole and puts it back from the head record's copy if it is
    /// not its name's (then true); an error if it stays damaged.
    fn ensure_whole(&self, name: &FileName) -> Result<bool> {
        if self.check_whole(name).is_ok() {
            return Ok(false);
        }
        if self.restore_file(name, true)? {
            return Ok(true);
        }
        self.check_whole(name).map(|()| false) // (the error)
    }

    /// Whether the head record `st` was read from ends in an unfinished append (see
    /// [`Log::torn`]). What a reader finds past the last record may also be a commit in
    /// flight, so it is confirmed under the writer lock.
    fn torn_append(&self, st: &State) -> Result<bool> {
        if !st.log.torn() {
            return Ok(false);
        }
        self.with_lock(|db, _| Ok((db.read_head()?.0 .1.torn(), Vec::new())))
    }

    /// Reads file `name` whole and checks its bytes hash to its name.
    fn check_whole(&self, name: &FileName) -> Result<()> {
        let b = self
            .store
            .storage
            .read(name)
            .map_err(|e| self.file_err(name, e))?;
        match FileName::of(&b) == *name {
            true => Ok(()),
            false => Err(Error::corrupt(format!("file {name}"), car::NOT_ITS_NAME)),
        }
    }

    /// Puts file `name` back from the copy the head record holds, if it holds one. Unless
    /// `known`, only a file this handle's state says is carried is looked for (a failed read
    /// of any other file, as of one compaction removed, costs no read of `HEAD`).
    fn restore_file(&self, name: &FileName, known: bool) -> Result<bool> {
        if !known && !self.state().log.files.contains(name) {
            return Ok(false);
        }
        // (Garbage collection empties `files/.tmp`, where the file is rebuilt.)
        let _gc = self.store.gc.shared()?;
        let hp = self.dir.join("HEAD");
        let b = std::fs::read(&hp).map_err(|e| Error::io(&hp, e))?;
        let Some(bytes) = crate::format::head::embedded_file(&b, &self.key, name) else {
            return Ok(false);
        };
        self.store
            .storage
            .restore(name, &bytes)
            .map_err(|e| self.file_err(name, e))?;
        Ok(true)
    }
}

/// Replaces the files `sel` in `head` with `file`, placed where the first of them was (so files
/// stay ordered newest first, levels non-decreasing). False, changing nothing, unless every file
/// of `sel` is still live.
/// Reads `HEAD` and parses it with `parse`. A head record that fails to open while the commit
/// counter moved was being rewritten under us (see [`replace_via_spare`]): read again. Returns the
/// counter value the record is current for, if no commit was in flight.
fn read_head_with<T>(
    lock: &File,
    hp: &std::path::Path,
    name: &str,
    mut parse: impl FnMut(&[u8]) -> Result<T>,
) -> Result<(T, Option<u64>)> {
    let lock_err = |e| Error::io(hp.with_file_name("LOCK"), e);
    let mut tries = 0u32;
    loop {
        let c1 = read_counter(lock).map_err(lock_err)?;
        let bytes = match std::fs::read(hp) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchDatabase(name.into()))
            }
            Err(e) => return Err(Error::io(hp, e)),
        };
        match parse(&bytes) {
            Ok(v) => return Ok((v, (c1[0] == c1[1]).then_some(c1[1]))),
            Err(e) => {
                let c2 = read_counter(lock).map_err(lock_err)?;
                if (c1 != c2 || c1[0] != c1[1]) && tries < 50 {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_micros(50 * tries as u64));
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// A LOCK marked dropped in a folder still in place: a drop killed between marking LOCK and
/// renaming the folder away (or a LOCK damaged to read as marked). The rename is a drop's
/// commit point, so the database was never dropped: under its writer lock (a drop in progress
/// holds it until the folder is gone), if this LOCK is still the one at `lp`, its counter
/// restarts at a fresh value, so no handle mistakes its cached head for current. Otherwise
/// the drop went through: no such database.
fn recover_unfinished_drop(
    lock: &File,
    lp: &std::path::Path,
    name: &str,
    timeout: std::time::Duration,
) -> Result<()> {
    let io = |e| Error::io(lp, e);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Busy(name.into())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    let r = take_back_drop_mark(lock, lp, name);
    let _ = lock.unlock();
    r
}

/// [`recover_unfinished_drop`] for a caller that holds the writer lock already.
fn take_back_drop_mark(lock: &File, lp: &std::path::Path, name: &str) -> Result<()> {
    let io = |e| Error::io(lp, e);
    if read_counter(lock).map_err(io)?[0] != DROPPED {
        return Ok(()); // taken back meanwhile
    }
    use std::os::unix::fs::MetadataExt;
    let mine = lock.metadata().map_err(io)?;
    let in_place =
        std::fs::metadata(lp).is_ok_and(|m| m.dev() == mine.dev() && m.ino() == mine.ino());
    if !in_place {
        return Err(Error::NoSuchDatabase(name.into()));
    }
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).map_err(|e| io(std::io::Error::other(e)))?;
    let fresh = u64::from_le_bytes(r) >> 2;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&fresh.to_le_bytes());
    b[8..].copy_from_slice(&fresh.to_le_bytes());
    lock.write_all_at(&b, 0).map_err(io)
}

/// The commit counter in LOCK: `[begin, end]`; equal when no commit is in flight. A short
/// file reads as `[0, 0]`.
fn read_counter(f: &File) -> std::io::Result<[u64; 2]> {
    let mut b = [0u8; 16];
    let mut n = 0;
    while n < b.len() {
        match f.read_at(&mut b[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    if n < 16 {
        return Ok([0, 0]);
    }
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    let begin = u64::from_le_bytes(x);
    x.copy_from_slice(&b[8..]);
    Ok([begin, u64::from_le_bytes(x)])
}

/// Reads against one head record.
struct View<'a> {
    db: &'a Db,
    head: &'a Head,
}

impl View<'_> {
    fn corrupt_cid(&self, cid: &Cid, what: &str) -> Error {
        Error::corrupt(format!("block {cid} of database '{}'", self.db.name), what)
    }

    /// Finds the live file holding `cid`. With `height` (the version of a document slot), the
    /// files whose event heights cover it are probed first — usually exactly one. Otherwise: the
    /// newest file (where the root and recently changed nodes are), then compacted files,
    /// largest first (most of an old tree is in the largest), then the other diffs. Small
    /// files whose Bloom filter rules `cid` out are skipped without reading their index.
    fn locate(&self, cid: &Cid, height: Option<u64>) -> Result<(FileRef, car::Entry)> {
        let files = &self.head.files;
        let covers = |f: &FileRef| height.is_some_and(|h| f.heights.0 <= h && h <= f.heights.1);
        let mut compacted: Vec<&FileRef> = files
            .iter()
            .skip(1)
            .filter(|f| f.level > 0 && !covers(f))
            .collect();
        compacted.sort_by_key(|f| std::cmp::Reverse(f.size));
        let order = files
            .iter()
            .filter(|f| covers(f))
            .chain(files.first().filter(|f| !covers(f)))
            .chain(compacted)
            .chain(files.iter().skip(1).filter(|f| f.level == 0 && !covers(f)));
        for f in order.filter(|f| f.may_hold(cid)) {
            let idx = self.db.index(f)?;
            let found = if idx.pages.is_empty() {
                idx.find(cid)
            } else if let Some(p) = idx.page_for(cid) {
                let page = self.page(&f.name, &idx, p)?;
                page.binary_search_by(|e| e.cid.cmp(cid))
                    .ok()
                    .map(|i| page[i])
            } else {
                None
            };
            if let Some(e) = found {
                return Ok((*f, e));
            }
        }
        Err(Error::MissingBlock(*cid, self.db.name.clone()))
    }

    fn page(&self, name: &FileName, idx: &car::Index, p: usize) -> Result<Arc<Vec<car::Entry>>> {
        let key = CacheKey::Page(*name, p as u32);
        if let Some(Cached::Page(v)) = self.db.store.cache.get(&key) {
            return Ok(v);
        }
        let pr = &idx.pages[p];
        let v = self.db.restoring(name, || {
            let sealed = self
                .db
                .store
                .storage
                .read_at(name, pr.off, pr.len as usize)
                .map_err(|e| self.db.file_err(name, e))?;
            Ok(Arc::new(
                idx.open_page(&self.db.key, p, &sealed)
                    .map_err(|e| Error::format(format!("file {name}"), e))?,
            ))
        })?;
        self.db.store.cache.insert(key, Cached::Page(v.clone()));
        Ok(v)
    }

    fn segment(&self, file: &FileRef, n: u32) -> Result<Arc<Vec<u8>>> {
        let name = &file.name;
        let key = CacheKey::Segment(*name, n);
        if let Some(Cached::Bytes(b)) = self.db.store.cache.get(&key) {
            return Ok(b);
        }
        let idx = self.db.index(file)?;
        let (off, len) = idx.segs[n as usize];
        let plain = self.db.restoring(name, || {
            let sealed = self
                .db
                .store
                .storage
                .read_at(name, off, len as usize)
                .map_err(|e| self.db.file_err(name, e))?;
            Ok(Arc::new(
                idx.open_segment(&self.db.key, n, &sealed)
                    .map_err(|e| Error::format(format!("file {name}"), e))?,
            ))
        })?;
        self.db
            .store
            .cache
            .insert(key, Cached::Bytes(plain.clone()));
        Ok(plain)
    }

    /// A block's bytes, checked against its CID.
    fn with_block<T>(
        &self,
        cid: &Cid,
        height: Option<u64>,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let (file, e) = self.locate(cid, height)?;
        let seg = self.segment(&file, e.seg)?;
        let data = car::block_in(&seg, &e)
            .map_err(|x| Error::format(format!("file {}, block {cid}", file.name), x))?;
        f(data)
    }

    /// An event CID the user gave: absent, or a (hash-checked) block that is not an event, is
    /// "no such event", not corruption.
    fn given_event(&self, cid: &Cid) -> Result<Arc<Event>> {
        let no = || Error::NoSuchEvent(*cid, self.db.name.clone());
        // In this database's files, not merely in the store-wide cache (another database's).
        match self.locate(cid, None) {
            Err(Error::MissingBlock(..)) => return Err(no()),
            r => r?,
        };
        match self.event(cid) {
            Err(Error::MissingBlock(..)) => Err(no()),
            Err(Error::Corrupt { .. }) if self.with_block(cid, None, |_| Ok(())).is_ok() => {
                Err(no())
            }
            r => r,
        }
    }

    /// A document version; `height` is the version of the slot that names it (a hint).
    fn load_doc(&self, id: &str, cid: &Cid, height: u64) -> Result<Value> {
        if self.head.purged.binary_search(cid).is_ok() {
            return Err(Error::Purged(id.to_owned(), self.db.name.clone()));
        }
        self.with_block(cid, Some(height), |b| {
            doc::decode(id, b).map_err(|w| self.corrupt_cid(cid, w))
        })
    }

    fn doc(&self, id: &str, root: Option<&Cid>) -> Result<Option<Value>> {
        match tree::get(self, root, id.as_bytes())? {
            Some(Slot {
                link: Some(l),
                version,
            }) => Ok(Some(self.load_doc(id, &l, version)?)),
            _ => Ok(None),
        }
    }

    /// The document as of `event`: the write of `id` with the highest rank among the event's
    /// ancestors (the same rule the tree applies when merging heads).
    fn doc_at(&self, id: &str, event: &Cid) -> Result<Option<Value>> {
        let ev = self.given_event(event)?;
        if let Some(root) = ev.root {
            match self.doc(id, Some(&root)) {
                Err(Error::MissingBlock(..)) => {} // that tree was dropped by compaction: replay
                r => return r,
            }
        }
        let mut best: Option<Slot> = None;
        clock::walk(self, &[*event], &mut |c, e| {
            if let Some(root) = self.head.cut_root(c) {
                // History before a cut event lives on as the state at it.
                if let Some(s) = tree::get(self, root.as_ref(), id.as_bytes())? {
                    if best.is_none_or(|b| s.rank(&b) == std::cmp::Ordering::Greater) {
                        best = Some(s);
                    }
                }
            }
            if best.is_some_and(|b| e.height < b.version) {
                return Ok(false);
            }
            if let Ok(i) = e
                .ops
                .binary_search_by(|(k, _)| k.as_bytes().cmp(id.as_bytes()))
            {
                let s = Slot {
                    version: e.height,
                    link: e.ops[i].1,
                };
                if best.is_none_or(|b| s.rank(&b) == std::cmp::Ordering::Greater) {
                    best = Some(s);
                }
            }
            Ok(true)
        })?;
        match best {
            Some(Slot {
                link: Some(l),
                version,
            }) => Ok(Some(self.load_doc(id, &l, version)?)),
            _ => Ok(None),
        }
    }
}

impl From<TreeError> for Error {
    fn from(t: TreeError) -> Error {
        Error::corrupt(format!("tree node {}", t.cid), t.what)
    }
}

impl NodeSource for View<'_> {
    type Error = Error;
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        if let Some((_, n)) = self
            .db
            .pending
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(cid)
        {
            return Ok(n.clone());
        }
        let key = CacheKey::Node(*cid);
        if let Some(Cached::Node(n)) = self.db.store.cache.get(&key) {
            return Ok(n);
        }
        let n = Arc::new(self.with_block(cid, None, |b| {
            tree::Node::decode(b).map_err(|e| self.corrupt_cid(cid, e.0))
        })?);
        self.db.store.cache.insert(key, Cached::Node(n.clone()));
        Ok(n)
    }
}

impl EventSource for View<'_> {
    type Error = Error;
    /// An event; a cut event (its history dropped) comes without parents, so every walk stops
    /// there.
    fn event(&self, cid: &Cid) -> Result<Arc<Event>> {
        let key = CacheKey::Event(*cid);
        let e = match self.db.store.cache.get(&key) {
            Some(Cached::Event(e)) => e,
            _ => {
                let e = Arc::new(self.with_block(cid, None, |b| {
                    Event::decode(b).map_err(|e| self.corrupt_cid(cid, e.0))
                })?);
                self.db.store.cache.insert(key, Cached::Event(e.clone()));
                e
            }
        };
        if self.head.cut.is_empty() || self.head.cut_root(cid).is_none() {
            return Ok(e);
        }
        Ok(Arc::new(Event {
            parents: Vec::new(),
            ..(*e).clone()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A database that compacts only when told to (threshold 1,000), without fsync.
    fn uncompacted() -> (tempfile::TempDir, crate::Store, Database) {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options {
            compact_threshold: 1000,
            durability: crate::Durability::Buffered,
            ..Default::default()
        };
        let store = crate::Store::open_with(dir.path(), opts).unwrap();
        let db = store.create(Some("t")).unwrap();
        (dir, store, db)
    }

    fn pending_has(db: &Db, c: &Cid) -> bool {
        db.pending.read().unwrap().contains_key(c)
    }

    /// The nodes of `root`'s tree, walked through `pending` (stopping where it has none).
    fn pending_tree(db: &Db, root: Cid) -> DigestSet<Cid> {
        pending_reach(
            &db.pending.read().unwrap(),
            Some(root),
            &DigestSet::default(),
        )
    }

    /// Bug (issue 12): a purge killed between its event and its rewrite left the purged body
    /// decryptable in a live file while `get` said "purged" and `verify` said ok. The purge
    /// event now marks the head record, `verify` reports the mark and any purged version still
    /// stored, and the next open (or write, or gc) finishes the purge.
    #[test]
    fn an_interrupted_purge_is_reported_and_finished_by_the_next_open() {
        let (dir, store, db) = uncompacted();
        db.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
        db.put(&json!({"_id": "b", "v": "kept"})).unwrap();
        // The purge's event, as a process killed right after it would leave it.
        db.inner
            .commit(
                None,
                Prepared::of(vec![("a".to_owned(), None)]),
                Some("a"),
                Vec::new(),
                "",
            )
            .unwrap();
        assert!(matches!(db.get("a"), Ok(None)));
        let r = db.verify().unwrap();
        assert!(!r.ok());
        assert_eq!(r.purged_stored, 1, "{:?}", r.problems);
        drop(db);
        drop(store);
        // The next open finishes it: one file without the version, the mark cleared.
        let store = crate::Store::open(dir.path()).unwrap();
        let db = store.open_db("t").unwrap();
        assert!(!db.scrubbing().unwrap());
        let r = db.verify().unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!((r.purged, r.purged_stored), (1, 0));
        assert_eq!(db.info().unwrap().files.len(), 1);
        assert_eq!(db.get("b").unwrap().unwrap()["v"], "kept");
        // HEAD.next (the previous head record) is empty.
        let next = dir.path().join("dbs/t/HEAD.next");
        assert_eq!(std::fs::metadata(next).map(|m| m.len()).unwrap_or(0), 0);
    }

    /// Review: a write (or merge) that found an unfinished purge and could not finish it (gc
    /// busy behind another process's writer, or failing) returned that error although it
    /// had committed: a caller retrying a `del` then got "no such document".
    #[test]
    fn a_write_that_cannot_finish_a_purge_still_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options {
            durability: crate::Durability::Buffered,
            lock_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        };
        let store = crate::Store::open_with(dir.path(), opts.clone()).unwrap();
        let db = store.create(Some("t")).unwrap();
        db.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
        db.put(&json!({"_id": "b"})).unwrap();
        db.inner
            .commit(
                None,
                Prepared::of(vec![("a".to_owned(), None)]),
                Some("a"),
                Vec::new(),
                "",
            )
            .unwrap();
        let src = store.create(Some("s")).unwrap();
        src.put(&json!({"_id": "m"})).unwrap();
        // Another process (its own handle on the GC lock) writing meanwhile.
        let other = crate::Store::open_with(dir.path(), opts).unwrap();
        let held = other.inner.gc.shared().unwrap();
        db.put(&json!({"_id": "c"})).unwrap();
        db.del("b").unwrap();
        db.merge_from(&src, None).unwrap();
        assert!(db.scrubbing().unwrap(), "still to finish");
        // A purge commits, and says it is not finished (it said "busy").
        assert!(matches!(db.purge("c"), Err(Error::PurgeUnfinished(..))));
        assert!(matches!(db.get("c"), Ok(None)));
        drop(held);
        // Writes try again only after a pause (each try is a gc of the store); gc always does.
        db.put(&json!({"_id": "d"})).unwrap();
        assert!(db.scrubbing().unwrap());
        store.gc().unwrap();
        assert!(!db.scrubbing().unwrap());
        assert!(db.get("d").unwrap().is_some() && db.get("m").unwrap().is_some());
    }

    /// A large bulk held the GC lock shared while its commit finished another process's
    /// interrupted purge, whose gc waited for that lock: the bulk failed as busy after the
    /// lock timeout.
    #[test]
    fn a_large_bulk_finishes_an_interrupted_purge() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options {
            durability: crate::Durability::Buffered,
            lock_timeout: std::time::Duration::from_millis(500),
            ..Default::default()
        };
        let store = crate::Store::open_with(dir.path(), opts).unwrap();
        let db = store.create(Some("t")).unwrap();
        db.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
        db.inner
            .commit(
                None,
                Prepared::of(vec![("a".to_owned(), None)]),
                Some("a"),
                Vec::new(),
                "",
            )
            .unwrap();
        let docs: Vec<_> = (0..PARALLEL_DOCS * 2)
            .map(|i| json!({"_id": format!("d{i}")}))
            .collect();
        db.bulk(&docs).unwrap();
        assert!(!db.scrubbing().unwrap());
    }

    /// Review finding: the reused file buffer came back holding the last file, so reserving
    /// room for the next one on top of it doubled the buffer each large commit (and past the
    /// keep limit it was dropped every other commit).
    #[test]
    fn the_file_buffer_is_reused_at_its_size() {
        let (_dir, _store, db) = uncompacted();
        let bulk = |r: u32| {
            let docs: Vec<_> = (0..3000)
                .map(|i| json!({"_id": format!("d{i}"), "r": r, "pad": "x".repeat(400)}))
                .collect();
            db.bulk(&docs).unwrap();
            db.inner.file_buf.lock().unwrap().capacity()
        };
        let first = bulk(0);
        assert!(first > 0);
        for r in 1..4 {
            assert_eq!(bulk(r), first, "commit {r}");
        }
        assert!(db.inner.take_file_buf().is_empty());
    }

    /// Review finding: a transaction begun before a background level-0 compaction swapped in
    /// reads nodes the compaction wrote into a file its snapshot does not name (they are no
    /// longer pending), instead of failing with MissingBlock.
    #[test]
    fn a_transaction_reads_across_a_background_compaction_swap() {
        let (_dir, _store, db) = uncompacted();
        for i in 0..300 {
            db.put(&json!({"_id": format!("k{i:04}"), "v": i})).unwrap();
        }
        let inner = &db.inner;
        inner
            .with_lock(|db, head| Ok(((), db.compact_level(head, 0)?)))
            .unwrap();
        for i in (0..300).step_by(7) {
            db.put(&json!({"_id": format!("k{i:04}"), "v": i + 1}))
                .unwrap();
        }
        // The background compaction's snapshot and merge, without the lock...
        let snap = inner.refresh().unwrap().head.clone();
        let m = inner.merge_level(&snap, 0).unwrap().unwrap();
        // ...commits meanwhile, a transaction begun...
        for i in 0..3 {
            db.put(&json!({"_id": format!("z{i}"), "v": i})).unwrap();
        }
        let tx = db.transaction().unwrap();
        // ...and the swap, under the lock.
        inner
            .with_lock(|db, head| {
                let ok = db.apply_merge(head, &m);
                Ok((ok, if ok { m.replaced.clone() } else { Vec::new() }))
            })
            .unwrap();
        for i in 0..300 {
            let want = if i % 7 == 0 { i + 1 } else { i };
            let got = tx.get(&format!("k{i:04}")).unwrap().unwrap();
            assert_eq!(got["v"], want, "k{i:04}");
            assert_eq!(db.get(&format!("k{i:04}")).unwrap().unwrap()["v"], want);
        }
        assert!(db.verify().unwrap().ok());
    }

    /// After a level-0 compaction made an older tree the base while later commits went on,
    /// only the later trees' own nodes stay pending: the base tree's (now in files) and the
    /// superseded ones' go, and the current tree stays whole.
    #[test]
    fn pruning_pending_keeps_exactly_the_current_trees_new_nodes() {
        let (_dir, _store, db) = uncompacted();
        let mut roots = Vec::new();
        for i in 0..200 {
            db.put(&json!({"_id": format!("k{i:04}"), "v": i})).unwrap();
            roots.push(db.inner.refresh().unwrap().head.root.unwrap());
        }
        let inner = &db.inner;
        let (base, root) = (roots[149], roots[199]);
        let old = roots[100];
        let (in_base, in_root) = (pending_tree(inner, base), pending_tree(inner, root));
        let only_old: Vec<Cid> = pending_tree(inner, old)
            .into_iter()
            .filter(|c| !in_root.contains(c))
            .collect();
        assert!(!only_old.is_empty() && !in_base.is_empty());
        inner.prune_pending(Some(root), Some(base));
        let kept: DigestSet<Cid> = inner.pending.read().unwrap().keys().copied().collect();
        let want: DigestSet<Cid> = in_root
            .iter()
            .filter(|c| !in_base.contains(c))
            .copied()
            .collect();
        assert_eq!(kept, want);
        assert!(pending_has(inner, &root) && !pending_has(inner, &base));
        assert!(only_old.iter().all(|c| !pending_has(inner, c)));
        // Pruning to the current tree itself (an inline compaction) leaves nothing.
        inner.prune_pending(Some(root), Some(root));
        assert!(inner.pending.read().unwrap().is_empty());
    }
}
