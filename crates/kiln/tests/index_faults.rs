//! Faults a review of indexes and queries found (commit 3bca2ee), each fixed: every test here
//! failed there. Each test's comment says what was wrong.

use kiln::index::{IndexDef, Query};
use kiln::{Options, Store};
use serde_json::{json, Value};

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

/// The store at `root` opened read-only.
fn read_only(root: &std::path::Path) -> Store {
    Store::open_with(
        root,
        Options {
            read_only: true,
            ..Options::default()
        },
    )
    .unwrap()
}

fn ids(rows: &[kiln::Row]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

/// Documents may nest up to 128 levels (format::block::cbor::MAX_DEPTH), but an index key is
/// decoded with a limit of 64 (index::key::MAX_DEPTH) while it is encoded with none: a valid
/// document whose indexed field nests 80 deep is stored in the index, then every query that
/// reads its row fails as "corruption in index …".
#[test]
fn a_deeply_nested_field_value_is_indexed_and_read_back() {
    let (_d, s) = store();
    let db = s.create(Some("deep")).unwrap();
    db.put(&json!({"_id": "a", "n": nested(80)})).unwrap();
    db.put(&json!({"_id": "b", "n": 1})).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    let rows = db.query("n", &Query::all()).unwrap();
    assert_eq!(ids(&rows), ["b", "a"]);
}

/// With an archive kept (`keep_archive`), garbage collection moves every index file no
/// derived record names any more into `files/.archive/` (index files open under the
/// lineage's key). A purge clears the index (db::derived::clear_derived) and its files are
/// then *archived*, not removed; `scrub_done` only removes archived files holding a purged
/// document version's block, which an index file never does (it holds tree nodes whose keys
/// are the indexed values). So the purged value stays in the store, decryptable — the README
/// promises a purge removes the content from "every file (...), the archive".
#[test]
fn a_purge_with_an_archive_kept_leaves_no_index_keys_in_the_archive() {
    let (d, s) = store();
    s.set_settings(&kiln::Settings {
        keep_archive: Some(true),
        ..Default::default()
    })
    .unwrap();
    let db = s.create(Some("arch")).unwrap();
    let marker = "ARCHIVED-INDEX-MARKER-77";
    db.put(&json!({"_id": "secret", "name": marker})).unwrap();
    db.put(&json!({"_id": "other", "name": "fine"})).unwrap();
    db.create_index("name", IndexDef::fields(["name"])).unwrap();
    assert_eq!(db.query("name", &Query::all()).unwrap().len(), 2);
    db.purge("secret").unwrap();
    s.gc().unwrap();
    let keys = kiln::audit::keys_of(d.path()).unwrap();
    let found = kiln::audit::find(d.path(), &keys, marker.as_bytes()).unwrap();
    assert!(found.is_empty(), "{found:?}");
}

/// `build` (index/update.rs) counts `added` once per emitted row before the rows are
/// deduplicated, while the tree holds a document's identical rows once (docs/format.md: "A
/// document's rows are its distinct (key, value) pairs"). A map function that emits the same
/// row twice makes `IndexInfo::rows` (and `IndexUpdate::added`) too high; the incremental
/// path counts through the tree and so disagrees with the build.
#[test]
fn a_build_counts_a_documents_identical_rows_once() {
    let (_d, s) = store();
    let db = s.create(Some("dup")).unwrap();
    db.put(&json!({"_id": "a", "n": 1})).unwrap();
    db.register_map("twice", 1, |doc, emit| {
        if let Some(n) = doc.get("n") {
            emit.row(n.clone(), json!(null));
            emit.row(n.clone(), json!(null));
        }
    })
    .unwrap();
    let up = db.update_index("twice").unwrap();
    assert_eq!(db.query("twice", &Query::all()).unwrap().len(), 1);
    let info = db.indexes().unwrap();
    assert_eq!((up.added, info[0].rows), (1, 1), "{info:?}");
}

/// `register_map` documents: "On a read-only store the definition is not written; queries
/// then build the index in memory." But a query first looks the index up in the derived
/// record (`index_state`), where a read-only handle never put it: the map function is
/// registered, `register_map` says Ok, and every query fails with NoSuchIndex.
#[test]
fn a_map_registered_on_a_read_only_store_is_queried_in_memory() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = Store::open(d.path()).unwrap();
        let db = s.create(Some("ro")).unwrap();
        db.put(&json!({"_id": "a", "n": 1})).unwrap();
    }
    let s = read_only(d.path());
    let db = s.open_db("ro").unwrap();
    db.register_map("n", 1, |doc, emit| {
        if let Some(n) = doc.get("n") {
            emit.row(n.clone(), json!(null));
        }
    })
    .unwrap();
    let rows = db.query("n", &Query::all()).unwrap();
    assert_eq!(ids(&rows), ["a"]);
}

/// A damaged derived record (derived data, rebuilt from the documents when lost) blocks a
/// purge for good: finishing a purge clears the derived record through `update_derived`,
/// which fails on the damaged record, so `purge` reports PurgeUnfinished ("garbage collection
/// did not reach it") on every try, and gc reports the whole database as unreadable (keeping
/// every file that opens under its key). Nothing but deleting DERIVED by hand recovers.
#[test]
fn a_damaged_derived_record_does_not_block_a_purge() {
    let (d, s) = store();
    let db = s.create(Some("dmg")).unwrap();
    db.put(&json!({"_id": "secret", "n": 1})).unwrap();
    db.put(&json!({"_id": "other", "n": 2})).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    db.query("n", &Query::all()).unwrap();
    let path = d.path().join("dbs/dmg/DERIVED");
    let mut b = std::fs::read(&path).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xFF;
    std::fs::write(&path, &b).unwrap();
    db.purge("secret").unwrap();
    let r = s.gc().unwrap();
    assert!(r.unreadable.is_empty(), "{:?}", r.unreadable);
}

/// An index brought up to date on an empty database holds heads `[]`. When that database,
/// still empty, takes in a replica whose history was cut (allowed: "a new replica takes it
/// whole"), the next update is incremental from `[]`: `changes_linked(Some(&[]))` walks the
/// clock, which no longer has the events that wrote the documents before the cut, so those
/// documents are never mapped and the index misses them for good (it reports itself current).
#[test]
fn an_index_built_empty_maps_every_document_of_a_cut_state_taken_in() {
    let d = tempfile::tempdir().unwrap();
    let a = Store::open(d.path().join("a")).unwrap();
    let da = a.create(Some("notes")).unwrap();
    da.put(&json!({"_id": "old", "n": 1})).unwrap();
    let cut = da.put(&json!({"_id": "mid", "n": 2})).unwrap().event;
    da.put(&json!({"_id": "new", "n": 3})).unwrap();
    da.drop_history_before(&cut).unwrap();
    a.gc().unwrap();
    let mine = da.replica_record("notes").unwrap();

    let b = Store::open(d.path().join("b")).unwrap();
    b.import_key("notes", &a.export_key("notes", None).unwrap(), None)
        .unwrap();
    let db = b.open_db("notes").unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    assert!(db.query("n", &Query::all()).unwrap().is_empty());
    let theirs = db.open_replica("notes", &mine.bytes).unwrap();
    let names: Vec<kiln::FileName> = theirs.files().into_iter().map(|(n, _)| n).collect();
    {
        let hold = b.hold_files().unwrap();
        for n in &names {
            let bytes = a.stored_file(kiln::FileKind::Diff, n).unwrap().unwrap();
            hold.keep(n, &bytes).unwrap();
        }
        db.take_in(&theirs, &names, None).unwrap();
    }
    assert_eq!(db.docs(&kiln::ListOptions::default()).unwrap().len(), 3);
    let rows = db.query("n", &Query::all()).unwrap();
    assert_eq!(ids(&rows), ["old", "mid", "new"]);
}

/// A query with documents computes its rows, then reads each row's document version in a
/// second, fresh state (`rows_of`, then `add_docs` → `read_docs`). A purge committed in between makes
/// that read fail with `Error::Purged`, so the whole query fails, where the Row docs promise
/// `null` for a document deleted since the index was read. Shown deterministically: the
/// reader's map function (a read-only handle, updating in memory) waits while the other
/// handle purges.
#[test]
fn a_query_with_docs_reads_null_for_a_version_purged_meanwhile() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    let (d, s) = store();
    let db = s.create(Some("pr")).unwrap();
    db.put(&json!({"_id": "a", "n": 1})).unwrap();
    db.put(&json!({"_id": "secret", "n": 2})).unwrap();
    let map = |doc: &Value, emit: &mut kiln::Emit| {
        if let Some(n) = doc.get("n") {
            emit.row(n.clone(), json!(null));
        }
    };
    db.register_map("m", 1, map).unwrap();
    db.update_index("m").unwrap();
    db.put(&json!({"_id": "a", "n": 3})).unwrap();

    let (mapping_tx, mapping_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let root = d.path().to_path_buf();
    let reader = std::thread::spawn(move || {
        let ro = read_only(&root);
        let rdb = ro.open_db("pr").unwrap();
        let first = AtomicBool::new(true);
        let chans = Mutex::new((mapping_tx, go_rx));
        let chans = Arc::new(chans);
        rdb.register_map("m", 1, move |doc, emit| {
            if doc["_id"] == "a" && first.swap(false, Ordering::SeqCst) {
                let c = chans.lock().unwrap();
                c.0.send(()).unwrap();
                c.1.recv().unwrap();
            }
            map(doc, emit);
        })
        .unwrap();
        rdb.query("m", &Query::all().with_docs())
    });
    mapping_rx.recv().unwrap();
    db.purge("secret").unwrap();
    go_tx.send(()).unwrap();
    let rows = reader.join().unwrap().unwrap();
    assert!(rows
        .iter()
        .all(|r| r.id != "secret" || r.doc == Some(Value::Null)));
}

fn stored_files(root: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for shard in std::fs::read_dir(root.join("files")).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir()
            || shard
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with('.')
        {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            out.insert(f.unwrap().path());
        }
    }
    out
}

/// docs/format.md: indexes are derived data, "rebuilt from the documents when lost". When an
/// index file is lost (say a gc by a kiln that predates DERIVED: the store marker was not
/// bumped), every query and `update_index` fails with MissingFile (reported against the
/// database, as if its documents were damaged) instead of the index being built again;
/// only an explicit `rebuild_index` recovers.
#[test]
fn a_lost_index_file_is_rebuilt() {
    let (d, s) = store();
    let db = s.create(Some("lost")).unwrap();
    db.put(&json!({"_id": "a", "n": 1})).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    let before = stored_files(d.path());
    db.update_index("n").unwrap();
    let index_files: Vec<_> = stored_files(d.path())
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(index_files.len(), 1);
    for f in &index_files {
        std::fs::remove_file(f).unwrap();
    }
    // A fresh handle (nothing cached).
    let s2 = Store::open(d.path()).unwrap();
    let db2 = s2.open_db("lost").unwrap();
    db2.put(&json!({"_id": "b", "n": 2})).unwrap();
    let rows = db2.query("n", &Query::all()).unwrap();
    assert_eq!(ids(&rows), ["a", "b"]);
}

/// A map function may read other indexes where no update lock is held: on a read-only handle
/// (each index brought up to date in memory, for the query) it queried an index that was
/// behind, which built that one inside the first one's build, on the same thread. The row
/// buffers the build reuses were still borrowed then, so the inner build panicked and the query
/// failed ("the map function panicked").
#[test]
fn a_map_function_on_a_read_only_handle_may_query_an_index_that_is_behind() {
    let (d, s) = store();
    let db = s.create(Some("ro2")).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    let docs: Vec<Value> = (0..50)
        .map(|i| json!({"_id": format!("d{i:02}"), "n": i % 10}))
        .collect();
    db.bulk(&docs).unwrap();
    let ro = read_only(d.path());
    let rdb = ro.open_db("ro2").unwrap();
    let inner = rdb.clone();
    rdb.register_map("same", 1, move |doc, emit| {
        // "n" was never built: this query builds it, in memory.
        let same = inner
            .query("n", &Query::key(doc["n"].clone()))
            .unwrap()
            .len();
        emit.row(doc["n"].clone(), json!(same));
    })
    .unwrap();
    let rows = rdb.query("same", &Query::all()).unwrap();
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r.value == json!(5)), "{rows:?}");
}

/// Review of 79dbc27 (documents found 64 rows at a time): the pages and segments of the rows
/// after the one being handed over were read first, so a file that cannot be read failed a
/// `query_each` whose caller stopped before reaching its row. An error now comes at the row
/// whose document it is, as when each document was read alone.
#[test]
fn a_damaged_file_fails_a_query_only_at_the_row_that_reads_it() {
    // (Buffered commits: the head record carries no copy of a diff to put back.)
    let d = tempfile::tempdir().unwrap();
    let buffered = Options {
        durability: kiln::Durability::Buffered,
        ..Options::default()
    };
    let s = Store::open_with(d.path(), buffered).unwrap();
    let db = s.create(Some("dmg")).unwrap();
    db.put(&json!({"_id": "a", "n": 0})).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    db.update_index("n").unwrap();
    let before = stored_files(d.path());
    db.put(&json!({"_id": "b", "n": 1, "pad": "x".repeat(40_000)}))
        .unwrap();
    let new: Vec<_> = stored_files(d.path())
        .difference(&before)
        .cloned()
        .collect();
    db.update_index("n").unwrap();
    drop((db, s));
    // The diff of b's commit damaged in its document, the first part of it.
    assert_eq!(new.len(), 1, "{new:?}");
    let mut bytes = std::fs::read(&new[0]).unwrap();
    let mid = bytes.len() / 4;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xFF;
    }
    std::fs::write(&new[0], &bytes).unwrap();
    let s = Store::open_with(
        d.path(),
        Options {
            cache_bytes: 0,
            ..Options::default()
        },
    )
    .unwrap();
    let db = s.open_db("dmg").unwrap();
    // (The diff's tree nodes, which every read of this state needs, follow the document.)
    assert_eq!(db.get("a").unwrap(), Some(json!({"_id": "a", "n": 0})));
    let mut seen = Vec::new();
    db.query_each("n", &Query::all().with_docs(), &mut |r| {
        seen.push(r.doc.unwrap());
        Ok(false)
    })
    .unwrap();
    assert_eq!(seen, [json!({"_id": "a", "n": 0})]);
    assert!(db.query("n", &Query::all().with_docs()).is_err());
}
