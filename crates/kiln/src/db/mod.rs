//! A database: documents in a prolly tree, transactions as events of a Merkle clock, each
//! transaction one sealed diff file, the current state named by the head record.
//!
//! **Invariant:** opening reads the head record only; reads load just the blocks they need.
//!
//! **Invariant:** commits are serialized by an exclusive `flock` on `LOCK`, held from reading
//! the head record to replacing it, so no acknowledged commit is ever overwritten. Readers
//! take no lock: the head record is replaced by rename, so they see a whole state.

pub mod cache;
mod commit;
mod compact;
mod concurrent;
mod cursor;
pub(crate) mod derived;
mod doclog;
mod dropped;
pub mod env;
mod files;
mod gather;
mod history;
mod journal;
mod merge;
mod meta;
pub mod options;
mod pending;
mod read;
mod replica;
pub mod results;
mod scan;
pub mod settings;
#[cfg(test)]
mod tests;
mod txn;
mod typed;
pub mod verify;

use crate::db::cache::{CacheKey, Cached, Place};
use crate::db::settings::Settings;
use crate::error::{Error, Result};
use crate::format::block::cbor::CborError;
use crate::format::block::cid::Cid;
use crate::format::block::{DigestMap, DigestSet};
use crate::format::car::{self, FileName};
use crate::format::head::{FileRef, Filter, Head, Log, Root};
use crate::format::seal::Key;
use crate::keys::{lineage_string, Lineage};
use crate::model::clock::{self, Event, EventSource};
use crate::model::doc;
use crate::model::tree::{self, LeafRef, Mode, NodeSource, Slot, TreeError};
use crate::storage::{DbLock, HeadFile, Heads};
use commit::*;
pub use compact::LEVEL_FANIN;
pub use cursor::{Cursor, TypedCursor};
use dropped::*;
use env::{Env, GcReport};
use files::*;
use merge::*;
use options::Durability;
use read::*;
pub(crate) use replica::record_snapshot;
pub use replica::{record_names, Relation, Replica, ReplicaRecord, TakenIn};
pub use results::*;
use serde::Serialize;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
pub use txn::Transaction;

/// A handle to one database. Cheap to clone; safe to share between threads (and other
/// processes may open the same database: commits take its writer lock, reads take none).
///
/// ```
/// # fn main() -> kiln::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = kiln::Store::open(dir.path())?;
/// let db = store.create(Some("rooms"))?;
/// let first = db.put(&serde_json::json!({"_id": "m1", "text": "hi"}))?;
/// db.bulk(&[
///     serde_json::json!({"_id": "m2", "text": "hello"}),
///     serde_json::json!({"_id": "m3", "text": "hey"}),
/// ])?;                                                   // one transaction, one event
/// db.del("m2")?;
/// assert_eq!(db.get("m2")?, None);
/// assert_eq!(db.get_at("m1", &first.event)?.unwrap()["text"], "hi"); // time travel
/// let changed = db.changes(Some(&[first.event]))?;      // since the first commit
/// let mut ids: Vec<&str> = changed.iter().map(|c| c.id.as_str()).collect();
/// ids.sort();
/// assert_eq!(ids, ["m2", "m3"]);                         // m2 with `deleted` set
/// assert_eq!(db.log(None)?.len(), 3);                    // events, newest first
/// let page = db.docs(&kiln::ListOptions { limit: Some(10), ..Default::default() })?;
/// assert_eq!(page.len(), 2);
/// assert!(db.verify()?.ok());                            // re-hash every stored byte
/// # Ok(()) }
/// ```
pub struct Database {
    inner: Arc<Db>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name())
            .field("lineage", &lineage_string(&self.inner.lineage))
            .finish()
    }
}

impl Clone for Database {
    fn clone(&self) -> Database {
        self.inner.handles.fetch_add(1, Ordering::SeqCst);
        Database {
            inner: self.inner.clone(),
        }
    }
}

struct Db {
    /// State the layers above keep per handle (an index's registered map functions), by type.
    upper: Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
    name: String,
    dir: PathBuf,
    store: Arc<Env>,
    key: Key,
    lineage: Lineage,
    lock: DbLock,
    state: RwLock<Arc<State>>,
    /// Serializes this handle's writers; holds the head-record files kept open between commits.
    writer: Mutex<Writer>,
    poisoned: Mutex<Option<String>>,
    indexes: RwLock<DigestMap<FileName, Arc<car::Index>>>,
    /// The structural filters of the live files of the head last read through, by position.
    filters: Mutex<Arc<FileFilters>>,
    /// Tree nodes of the current state not yet in any file (see [`Head::base`]): written by
    /// this handle's commits or rebuilt from the level-0 events; the level-0 compaction writes
    /// them out. Dropping them is always safe (they are rebuilt on demand).
    pending: RwLock<DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>>,
    /// `dbs/<name>/settings.json`, read when first needed (not at open) or set through this
    /// handle.
    settings: RwLock<Option<Settings>>,
    /// Files this handle found lost or damaged and put back from the head record's copy (see
    /// [`Database::repairs`]).
    repaired: Mutex<Vec<FileName>>,
    /// A background compaction of this handle is running.
    compacting: AtomicBool,
    /// The background compaction thread last started by this handle (see
    /// [`Database`]'s `Drop`: the last handle waits for it).
    compactor: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// How many [`Database`] handles share this (clones of one opened handle): the last one
    /// dropped waits for the background compaction.
    handles: AtomicUsize,
    /// The last handle is being dropped: the background compaction stops after the merge it
    /// is doing (or, not yet begun, the one it was started for).
    closing: AtomicBool,
    /// Commits skip their flushes until [`Database::sync`] (an importer's, whose work is all or
    /// nothing and made durable at its end).
    buffered: AtomicBool,
    /// The background compaction waits to swap its result in: commits let it go first (the
    /// in-process mutex is not fair, and back-to-back commits would starve it).
    swap_waiting: AtomicBool,
    /// Where this handle builds the files it stores (see [`Db::take_file_buf`]).
    file_buf: Mutex<Vec<u8>>,
    /// A fully durable commit's small diff file, written unsynced for the head record to carry
    /// (see [`Db::write_head`]); set by the commit under the lock, taken when the head is written.
    carried: Mutex<Option<(FileName, Vec<u8>)>>,
}

/// What lookups need of one list of live files (a head's `files`), worked out once per list:
/// the structural filters by position, each filled in when that file's index is first
/// loaded (a lookup asks them without a map lookup per file); the order to search the files
/// in for a block whose height is unknown; each file's position by name.
#[derive(Default)]
pub(super) struct FileFilters {
    /// The list these are for (held weakly: its address cannot be reused while this lives).
    files: std::sync::Weak<Vec<FileRef>>,
    pub(super) filters: Vec<std::sync::OnceLock<Filter>>,
    /// Positions in `files`: the newest file (where the root and recently changed nodes
    /// are), then compacted files, largest first (most of an old tree is in the largest),
    /// then the other diffs, newest first.
    pub(super) order: Vec<u32>,
    /// Each file's position in `files`.
    pub(super) position: DigestMap<FileName, u32>,
}

impl FileFilters {
    fn of(files: &Arc<Vec<FileRef>>) -> FileFilters {
        let n = files.len();
        let mut compacted: Vec<u32> = (1..n as u32)
            .filter(|&i| files[i as usize].level > 0)
            .collect();
        compacted.sort_by_key(|&i| std::cmp::Reverse(files[i as usize].size));
        let order = (0..n.min(1) as u32)
            .chain(compacted)
            .chain((1..n as u32).filter(|&i| files[i as usize].level == 0))
            .collect();
        FileFilters {
            files: Arc::downgrade(files),
            filters: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
            order,
            position: files
                .iter()
                .enumerate()
                .map(|(i, f)| (f.name, i as u32))
                .collect(),
        }
    }
}

impl Db {
    /// The lookup aids of `head`'s files (kept for the head last asked about).
    pub(super) fn filters_of(&self, head: &Head) -> Arc<FileFilters> {
        let mut g = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        if !std::ptr::eq(g.files.as_ptr(), Arc::as_ptr(&head.files)) {
            *g = Arc::new(FileFilters::of(&head.files));
        }
        g.clone()
    }
}

/// A head record as read, with the commit counter it was read under (`None`: do not trust it
/// for freshness checks).
struct State {
    head: Head,
    stamp: Option<u64>,
    /// Where the head file's records end (for appending the next commit's delta).
    log: Log,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Database {
    pub(crate) fn open(store: Arc<Env>, name: &str, dir: PathBuf) -> Result<Database> {
        let lp = dir.join("LOCK");
        let opened = if store.opts.read_only {
            DbLock::open_read_only(&dir)
        } else {
            DbLock::open(&dir)
        };
        let lock = match opened {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchDatabase(name.into()))
            }
            Err(e) => return Err(Error::io(&lp, e)),
        };
        let hp = dir.join("HEAD");
        let ((head, lineage, key, log), mut stamp) = read_head_with(&lock, &hp, name, |bytes| {
            let lineage =
                Head::lineage(bytes).map_err(|e| Error::format(hp.display().to_string(), e))?;
            let key = store.keybag.get(&lineage)?.ok_or_else(|| {
                let path = store.keybag.key_path(&lineage);
                Error::MissingKey(name.into(), path.display().to_string())
            })?;
            let (head, log) = Head::open_log(bytes, &key)
                .map_err(|e| Error::format(hp.display().to_string(), e))?;
            Ok((head, lineage, key, log))
        })?;
        // (A LOCK whose first half alone reads as the mark, damaged, is one too: every handle
        // takes `begin` = DROPPED for dropped.)
        if stamp == Some(DROPPED) || lock.counter().map_err(|e| Error::io(&lp, e))?[0] == DROPPED {
            // (The head record stands: a drop that never happened changes nothing in it.)
            let o = &store.opts;
            recover_unfinished_drop(&lock, name, o.lock_timeout, o.read_only)?;
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
            indexes: RwLock::new(DigestMap::default()),
            filters: Mutex::new(Arc::new(FileFilters::default())),
            pending: RwLock::new(DigestMap::default()),
            settings: RwLock::new(None),
            repaired: Mutex::new(Vec::new()),
            compacting: AtomicBool::new(false),
            compactor: Mutex::new(None),
            handles: AtomicUsize::new(1),
            closing: AtomicBool::new(false),
            buffered: AtomicBool::new(false),
            swap_waiting: AtomicBool::new(false),
            file_buf: Mutex::new(Vec::new()),
            carried: Mutex::new(None),
            upper: Mutex::new(HashMap::new()),
        };
        Ok(Database {
            inner: Arc::new(db),
        })
    }

    /// The database's name in its store.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Lets go of the database's settings read so far (read again when next needed).
    pub(crate) fn forget_settings(&self) {
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether this handle can go on being handed out by its store: it has not failed a write
    /// and its database was not dropped (the head record reads).
    pub(crate) fn still_good(&self) -> bool {
        self.inner
            .poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
            && self.inner.refresh().is_ok()
    }

    pub(crate) fn lineage(&self) -> Lineage {
        self.inner.lineage
    }

    /// Reads one document.
    pub fn get(&self, id: &str) -> Result<Option<Value>> {
        doc::check_id(id)?;
        self.inner.read(|v| v.doc(id, v.head.root.as_ref()))
    }

    /// The files this handle found lost or damaged (a power cut after a fully durable commit
    /// whose small diff rode in the head record) and put back from the head record's copy,
    /// in the order repaired, each once: nothing was lost, but the storage under the store
    /// lost writes it had acknowledged. (`verify` lists the ones it repairs too.)
    pub fn repairs(&self) -> Vec<FileName> {
        self.inner
            .repaired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The version a document is at (`None`: no live document), for [`Database::put_if`].
    pub fn rev(&self, id: &str) -> Result<Option<Rev>> {
        doc::check_id(id)?;
        self.inner
            .read(|v| Ok(tree::get(v, v.head.root.as_ref(), id.as_bytes())?.and_then(Rev::of)))
    }

    /// Reads one document with its version (one state: the version is the document's).
    pub fn get_with_rev(&self, id: &str) -> Result<Option<(Value, Rev)>> {
        doc::check_id(id)?;
        self.inner.read(|v| {
            let Some(slot) = tree::get(v, v.head.root.as_ref(), id.as_bytes())? else {
                return Ok(None);
            };
            let Some(rev) = Rev::of(slot) else {
                return Ok(None);
            };
            Ok(Some((v.load_doc(id, &rev.cid, rev.height)?, rev)))
        })
    }

    /// Reads one document as it was at `event` (any event of this database).
    pub fn get_at(&self, id: &str, event: &Cid) -> Result<Option<Value>> {
        doc::check_id(id)?;
        self.inner.read(|v| v.doc_at(id, event))
    }

    /// Documents in id order (see [`ListOptions`]; one at a time: [`Database::cursor`]).
    pub fn docs(&self, opts: &ListOptions) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        self.scan(opts, &mut |d| {
            out.push(d);
            true
        })?;
        Ok(out)
    }

    /// Visits documents in id order (see [`ListOptions`]) until `f` returns false: one walk of
    /// the tree with each document loaded beside its leaf (the fastest way through a whole
    /// database). A read that meets files a compaction replaced meanwhile goes on in the newer
    /// state after the last document handed out (each document once, in order); a
    /// [`Database::cursor`] keeps to the state it began on instead.
    pub fn scan(&self, opts: &ListOptions, f: &mut dyn FnMut(Value) -> bool) -> Result<()> {
        if opts.limit == Some(0) {
            return Ok(());
        }
        let (lo, hi) = cursor::bounds(opts);
        // A read retried on a newer head (see `Db::read`) resumes after the last document
        // handed out, so the caller sees each document once, in order.
        let mut resume: Option<Vec<u8>> = None;
        let mut n = 0;
        let mut stopped = false;
        self.inner.read(|v| {
            if stopped {
                return Ok(());
            }
            let (lo, hi) = match (&resume, opts.desc) {
                (None, _) => (lo.clone(), hi.clone()),
                (Some(r), false) => (Some(r.clone()), hi.clone()),
                (Some(r), true) => (lo.clone(), Some(r.clone())),
            };
            if lo.as_ref().zip(hi.as_ref()).is_some_and(|(l, h)| l >= h) {
                return Ok(());
            }
            let mut visit = |k: &[u8], s: &Slot| -> Result<bool> {
                let Some(link) = s.link else { return Ok(true) };
                let id = std::str::from_utf8(k)
                    .map_err(|_| v.corrupt_cid(&link, "document id is not UTF-8"))?;
                let d = v.load_doc(id, &link, s.version)?;
                n += 1;
                resume = Some(if opts.desc {
                    k.to_vec()
                } else {
                    cursor::just_after(k)
                });
                let go = f(d) && opts.limit.is_none_or(|l| n < l);
                stopped = !go;
                Ok(go)
            };
            let root = v.head.root.as_ref();
            if opts.desc {
                tree::range_rev(v, root, lo.as_deref(), hi.as_deref(), &mut visit)
            } else {
                tree::range(v, root, lo.as_deref(), hi.as_deref(), &mut visit)
            }
        })
    }

    /// A document's versions, newest first (descending height, then event CID), each with
    /// the event that wrote it: every write and delete of `id` in the database's history,
    /// concurrent ones included (a merge's losers too), up to `limit`. It does not walk the
    /// clock: each compacted file's document log names the events that wrote `id` (a page or
    /// two read per file), each transaction diff not compacted yet holds one event (read), and
    /// of the versions found only those returned are loaded: its cost is the live files (a
    /// few dozen) and the versions, not the log. Versions from before a dropped history are
    /// there as the state at the cut.
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = kiln::Store::open(dir.path())?.create(Some("c"))?;
    /// use serde_json::json;
    /// db.put(&json!({"_id": "n", "v": 1}))?;
    /// db.put(&json!({"_id": "other"}))?;
    /// db.put(&json!({"_id": "n", "v": 2}))?;
    /// let h = db.history("n", None)?;
    /// assert_eq!(h.len(), 2);
    /// assert_eq!(h[0].doc.as_ref().unwrap()["v"], 2);
    /// assert_eq!(h[1].doc.as_ref().unwrap()["v"], 1);
    /// # Ok(()) }
    /// ```
    pub fn history(&self, id: &str, limit: Option<usize>) -> Result<Vec<DocVersion>> {
        doc::check_id(id)?;
        self.inner.read(|v| {
            if limit == Some(0) {
                return Ok(Vec::new());
            }
            // (height the version is listed at, event, the version's slot when known)
            let mut found: Vec<(u64, Cid, Option<Slot>)> = self
                .inner
                .writers_of(v, id)?
                .into_iter()
                .map(|(h, c)| (h, c, None))
                .collect();
            // History before a cut lives on as the state at it (unless the cut event wrote
            // the document itself: then that write is the version).
            for (c, root) in &v.head.cut {
                if found.iter().any(|(_, e, _)| e == c) {
                    continue;
                }
                if let Some(s) = tree::get(v, root.as_ref(), id.as_bytes())? {
                    let e = v.event(c)?;
                    if s.version < e.height {
                        found.push((e.height, *c, Some(s)));
                    }
                }
            }
            found.sort_unstable_by_key(|x| std::cmp::Reverse((x.0, x.1)));
            found.truncate(limit.unwrap_or(usize::MAX));
            found
                .into_iter()
                .map(|(_, event, slot)| {
                    let e = v.event(&event)?;
                    let s = match slot {
                        Some(s) => s,
                        None => {
                            let i = e
                                .ops
                                .binary_search_by(|(k, _)| k.as_str().cmp(id))
                                .map_err(|_| {
                                    v.corrupt_cid(
                                        &event,
                                        "listed as a writer of a document it does not write",
                                    )
                                })?;
                            Slot {
                                version: e.height,
                                link: e.ops[i].1,
                            }
                        }
                    };
                    let doc = match s.link {
                        Some(l) => match v.load_doc(id, &l, s.version) {
                            Ok(d) => Some(d),
                            // A purged version: listed, its content gone on purpose.
                            Err(Error::Purged(..)) => None,
                            Err(e) => return Err(e),
                        },
                        None => None,
                    };
                    Ok(DocVersion {
                        event,
                        rev: Rev::of(s),
                        time: e.time,
                        doc,
                    })
                })
                .collect()
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
        Ok(self.changes_with_heads(since)?.1)
    }

    /// [`Database::changes`] with the heads of the state they were read from (changes since
    /// those heads are the next ones).
    pub fn changes_with_heads(&self, since: Option<&[Cid]>) -> Result<(Vec<Cid>, Vec<Change>)> {
        let (heads, linked) = self.changes_linked(since, None)?;
        Ok((heads, linked.into_iter().map(|(c, _)| c).collect()))
    }

    /// [`Database::changes`], keeping the `limit` most recent (the last ones in its order),
    /// still oldest first; `0` returns none. Only those are loaded.
    pub fn changes_limited(&self, since: Option<&[Cid]>, limit: usize) -> Result<Vec<Change>> {
        let (_, linked) = self.changes_linked(since, Some(limit))?;
        Ok(linked.into_iter().map(|(c, _)| c).collect())
    }

    /// [`Database::changes_with_heads`], each change with its version's CID (`None` for a
    /// delete): an index keeps it to read that version again without the tree.
    pub(crate) fn changes_linked(
        &self,
        since: Option<&[Cid]>,
        limit: Option<usize>,
    ) -> Result<(Vec<Cid>, Vec<(Change, Option<Cid>)>)> {
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
            if let Some(l) = limit {
                ids.drain(..ids.len().saturating_sub(l));
            }
            let mut out = Vec::with_capacity(ids.len());
            for (k, s) in ids {
                let id = String::from_utf8(k)
                    .map_err(|_| Error::corrupt(v.db.name.clone(), "document id is not UTF-8"))?;
                let (doc, deleted) = match s.link {
                    Some(l) => (v.load_doc(&id, &l, s.version)?, false),
                    None => (doc::tombstone(&id), true),
                };
                out.push((
                    Change {
                        id,
                        version: s.version,
                        doc,
                        deleted,
                    },
                    s.link,
                ));
            }
            Ok((v.head.heads.clone(), out))
        })
    }

    /// The commits in `ancestors(heads) − ancestors(since)`, oldest first (ascending height,
    /// then CID), each with the documents it wrote as it wrote them (a delete as its
    /// tombstone, a purged version as `{"_id", "_purged": true}`), and the heads they lead
    /// to; `None` when there are more than `max` (the caller catches up from `changes`).
    pub(crate) fn commits_since(
        &self,
        since: &[Cid],
        max: usize,
    ) -> Result<Option<(Vec<Cid>, Vec<(Cid, Vec<Value>)>)>> {
        self.inner.read(|v| {
            for b in since {
                v.given_event(b)?;
            }
            let mut events: Vec<(u64, Cid, Arc<Event>)> = Vec::new();
            let mut over = false;
            clock::since(v, &v.head.heads, since, &mut |c, e| {
                if events.len() == max {
                    over = true;
                    return Ok(false);
                }
                events.push((e.height, *c, Arc::new(e.clone())));
                Ok(true)
            })?;
            if over {
                return Ok(None);
            }
            events.sort_by_key(|a| (a.0, a.1));
            let mut out = Vec::with_capacity(events.len());
            for (height, cid, e) in events {
                let mut docs = Vec::with_capacity(e.ops.len());
                for (id, link) in &e.ops {
                    docs.push(match link {
                        None => doc::tombstone(id),
                        Some(l) => match v.load_doc(id, l, height) {
                            Err(Error::Purged(..)) => {
                                serde_json::json!({"_id": id, "_purged": true})
                            }
                            r => r?,
                        },
                    });
                }
                out.push((cid, docs));
            }
            Ok(Some((v.head.heads.clone(), out)))
        })
    }

    /// Visits every live document of the state at `event` (in id order) with its version's
    /// CID and version: what a query at a past event maps. The event's own tree when it is
    /// still stored, else the state built from its history.
    pub(crate) fn docs_at(
        &self,
        event: &Cid,
        f: &mut dyn FnMut(&str, Cid, u64, Value) -> Result<()>,
    ) -> Result<()> {
        let st = self.inner.refresh()?;
        let mut build = false;
        loop {
            let p = self.inner.point(&st.head, Some(event), build)?;
            let mut entries: Vec<(Vec<u8>, Slot)> = Vec::new();
            match tree::range(&p, p.root.as_ref(), None, None, &mut |k, s| {
                entries.push((k.to_vec(), *s));
                Ok(true)
            }) {
                Err(Error::MissingBlock(..)) if !build => {
                    build = true;
                    continue;
                }
                r => r?,
            }
            for (k, s) in entries {
                let Some(link) = s.link else { continue };
                let id = std::str::from_utf8(&k).map_err(|_| {
                    Error::corrupt(self.inner.name.clone(), "document id is not UTF-8")
                })?;
                let doc = p.view.load_doc(id, &link, s.version)?;
                f(id, link, s.version, doc)?;
            }
            return Ok(());
        }
    }

    /// Runs `f` with a reader of documents from one state: what an index's rows name. Like
    /// every read, `f` runs again on a newer state if a compaction replaced a file under it.
    pub(crate) fn read_docs<T>(&self, mut f: impl FnMut(&DocReader) -> Result<T>) -> Result<T> {
        self.inner.read(|v| f(&DocReader { view: v }))
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
            tree_shape: h.shape,
            bytes: h.files.iter().map(|f| f.size).sum(),
            files: h.files.to_vec(),
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

    /// The file-sets the document versions in this database's live files name (each file's
    /// index lists them), sorted, each once.
    pub(crate) fn fileset_refs(&self) -> Result<Vec<FileName>> {
        self.filesets_of(&self.inner.refresh()?.head)
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
        let heads = crate::storage::LocalHeads::new(&dbs);
        let io = |e| Error::io(&dbs, e);
        for name in heads.list().map_err(io)? {
            if name == db.name {
                continue;
            }
            let Some((bytes, _)) = heads.read(&name).map_err(io)? else {
                continue; // dropped meanwhile
            };
            if Head::lineage(&bytes).ok() != Some(db.lineage) {
                continue;
            }
            let head = Head::open(&bytes, &db.key)
                .map_err(|x| Error::format(format!("head record of database '{name}'"), x))?;
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
        self.inner.store.writable("a settings change")?;
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
            crate::db::verify::verify_filesets(&mut r, &db.key, &*db.store.filesets);
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
        self.store.opts.durability == Durability::Full && !self.buffered.load(Ordering::SeqCst)
    }
}

impl Database {
    /// The store this database is in (for the capabilities above this layer).
    pub(crate) fn env(&self) -> &Arc<Env> {
        &self.inner.store
    }

    /// A watch that wakes when this database commits, in any process (on its `LOCK`, whose
    /// counter every commit writes).
    pub(crate) fn commit_watch(&self) -> Result<crate::storage::local::FileWatch> {
        let p = self.inner.dir.join("LOCK");
        crate::storage::local::FileWatch::new(&p).map_err(|e| Error::io(&p, e))
    }

    /// This handle's state of type `T` kept by a layer above (made on first use): shared by
    /// every clone of the handle.
    pub(crate) fn upper_state<T: std::any::Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut m = self.inner.upper.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        match e.clone().downcast::<T>() {
            Ok(t) => t,
            // (Keyed by its own type: never another.)
            Err(_) => Arc::new(T::default()),
        }
    }

    /// Whether commits are durable when acknowledged (so is what they name).
    pub(crate) fn durable(&self) -> bool {
        self.inner.sync()
    }

    /// With `on`, this database's commits skip their flushes (as `Durability::Buffered`) until
    /// it is set off again; [`Database::sync`] then makes them durable. For work that is all
    /// or nothing, such as an import.
    pub(crate) fn buffer_commits(&self, on: bool) {
        self.inner.buffered.store(on, Ordering::SeqCst);
    }
}

/// Document versions a [`DocReader`] found together (none when one of them had no version, or
/// when finding them together failed: then each is read alone).
pub(crate) struct Versions<'a>(Option<gather::Gathered<'a>>);

/// Reads documents from one state ([`Database::read_docs`]).
pub(crate) struct DocReader<'v, 'a> {
    view: &'v read::View<'a>,
}

impl<'a> DocReader<'_, 'a> {
    /// Version `cid` of document `id` (`height`: the version of the slot that names it);
    /// `null` when it was purged since.
    pub(crate) fn version(&self, id: &str, cid: &Cid, height: u64) -> Result<Value> {
        match self.view.load_doc(id, cid, height) {
            Err(Error::Purged(..)) => Ok(Value::Null),
            r => r,
        }
    }

    /// Finds each of `wants` (the version a slot names and the slot's version; no version:
    /// the current one) for [`DocReader::gathered`]: faster than reading each with
    /// [`DocReader::version`], the versions are found together (see `db/gather.rs`). When
    /// finding them together fails (a file that cannot be read), each is read alone, so that
    /// the error comes at the row whose document it is: a caller that stops before that row
    /// never meets it.
    pub(crate) fn gather(&self, wants: &[(Option<Cid>, u64)]) -> Versions<'a> {
        let linked = wants
            .iter()
            .map(|&(link, version)| Some((link?, version)))
            .collect::<Option<Vec<_>>>();
        Versions(linked.and_then(|w| self.view.gather(w).ok()))
    }

    /// Document `id` as the `i`th of the versions `g` names: [`DocReader::version`] (or
    /// [`DocReader::current`] with no version, `null` when not live).
    pub(crate) fn gathered(
        &self,
        g: &Versions<'a>,
        wants: &[(Option<Cid>, u64)],
        i: usize,
        id: &str,
    ) -> Result<Value> {
        match (&g.0, wants[i]) {
            (Some(g), _) => match self.view.load_gathered(g, i, id, &doc::decode) {
                Err(Error::Purged(..)) => Ok(Value::Null),
                r => r,
            },
            (None, (Some(l), version)) => self.version(id, &l, version),
            (None, (None, _)) => Ok(self.current(id)?.unwrap_or(Value::Null)),
        }
    }

    /// The current version of document `id`, if it is live.
    pub(crate) fn current(&self, id: &str) -> Result<Option<Value>> {
        self.view.doc(id, self.view.head.root.as_ref())
    }
}
