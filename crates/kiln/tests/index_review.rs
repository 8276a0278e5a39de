//! Review of indexes and queries (commit 3bca2ee): each test shows a bug.

use kiln::index::{IndexDef, Query};
use kiln::{Options, Store};
use serde_json::{json, Value};

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
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
fn a_deeply_nested_field_value_makes_the_index_read_as_corrupt() {
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
fn a_purge_with_an_archive_kept_leaves_the_index_keys_in_the_archive() {
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
fn a_build_counts_a_documents_identical_rows_twice() {
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
fn a_map_registered_on_a_read_only_store_cannot_be_queried() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = Store::open(d.path()).unwrap();
        let db = s.create(Some("ro")).unwrap();
        db.put(&json!({"_id": "a", "n": 1})).unwrap();
    }
    let s = Store::open_with(
        d.path(),
        Options {
            read_only: true,
            ..Options::default()
        },
    )
    .unwrap();
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
/// which fails on the damaged record, so `purge` reports PurgeUnfinished (and gc reports the
/// whole database as unreadable, keeping every file that opens under its key).
#[test]
fn a_damaged_derived_record_blocks_a_purge() {
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
fn an_index_built_empty_misses_documents_of_a_cut_state_taken_in() {
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

/// Scratch: incremental updates (deletes of rows included) make the root a rebuild makes.
#[test]
fn scratch_incremental_root_equals_rebuild_root() {
    let (_d, s) = store();
    let db = s.create(Some("st")).unwrap();
    let n = 3000u64;
    db.bulk(
        &(0..n)
            .map(|i| json!({"_id": format!("d{i:05}"), "n": i % 97, "t": [i % 5, i % 7]}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    db.create_index("t", IndexDef::fields(["t", "n"]).each())
        .unwrap();
    db.update_index("n").unwrap();
    db.update_index("t").unwrap();
    let mut x: u64 = 12345;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..60 {
        let batch = if round % 3 == 0 {
            1
        } else {
            (rnd() % 200) as usize
        };
        let mut docs = Vec::new();
        let mut dels = Vec::new();
        for _ in 0..batch {
            let i = rnd() % (n + 200);
            let id = format!("d{i:05}");
            match rnd() % 4 {
                0 => dels.push(id),
                _ => docs.push(json!({"_id": id, "n": rnd() % 50, "t": [rnd() % 9, rnd() % 3]})),
            }
        }
        if !docs.is_empty() {
            db.bulk(&docs).unwrap();
        }
        for id in dels {
            let _ = db.del(&id);
        }
        if round % 2 == 0 {
            db.update_index("n").unwrap();
        }
        db.update_index("t").unwrap();
    }
    db.update_index("n").unwrap();
    let roots: Vec<_> = db
        .indexes()
        .unwrap()
        .iter()
        .map(|i| (i.root, i.rows))
        .collect();
    let all_n = db.query("n", &Query::all()).unwrap();
    let all_t = db.query("t", &Query::all().desc()).unwrap();
    db.rebuild_index("n").unwrap();
    db.rebuild_index("t").unwrap();
    let roots2: Vec<_> = db
        .indexes()
        .unwrap()
        .iter()
        .map(|i| (i.root, i.rows))
        .collect();
    assert_eq!(roots, roots2);
    assert_eq!(all_n, db.query("n", &Query::all()).unwrap());
    assert_eq!(all_t, db.query("t", &Query::all().desc()).unwrap());
    s.gc().unwrap();
    assert_eq!(all_t, db.query("t", &Query::all().desc()).unwrap());
}

/// Scratch: two handles, one writing (rewrites, gc), one querying.
#[test]
fn scratch_two_handles_race() {
    let (d, s) = store();
    let db = s.create(Some("race")).unwrap();
    db.bulk(
        &(0..2000)
            .map(|i| json!({"_id": format!("d{i:05}"), "n": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    db.update_index("n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let root = d.path().to_path_buf();
    let st = stop.clone();
    let reader = std::thread::spawn(move || {
        let s2 = Store::open_with(
            &root,
            Options {
                read_only: true,
                ..Options::default()
            },
        )
        .unwrap();
        let db2 = s2.open_db("race").unwrap();
        let mut errs = Vec::new();
        let mut n = 0;
        while !st.load(std::sync::atomic::Ordering::SeqCst) {
            match db2.query("n", &Query::all().with_docs()) {
                Ok(r) => assert_eq!(r.len(), 2000),
                Err(e) => errs.push(e.to_string()),
            }
            n += 1;
        }
        (n, errs)
    });
    for i in 0..200 {
        db.put(&json!({"_id": format!("d{:05}", i % 2000), "n": -(i as i64)}))
            .unwrap();
        db.update_index("n").unwrap();
        if i % 7 == 0 {
            db.compact().unwrap();
        }
        s.gc().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (n, errs) = reader.join().unwrap();
    assert!(errs.is_empty(), "{n} queries: {errs:?}");
}

/// Scratch: purge while another handle queries with docs.
#[test]
fn scratch_purge_race() {
    let (d, s) = store();
    let db = s.create(Some("pr")).unwrap();
    db.bulk(
        &(0..300)
            .map(|i| json!({"_id": format!("d{i:05}"), "n": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    db.update_index("n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let root = d.path().to_path_buf();
    let st = stop.clone();
    let reader = std::thread::spawn(move || {
        let s2 = Store::open_with(
            &root,
            Options {
                read_only: true,
                ..Options::default()
            },
        )
        .unwrap();
        let db2 = s2.open_db("pr").unwrap();
        let mut errs = Vec::new();
        let mut n = 0;
        while !st.load(std::sync::atomic::Ordering::SeqCst) {
            match db2.query("n", &Query::all().with_docs()) {
                Ok(_) => {}
                Err(e) => errs.push(e.to_string()),
            }
            n += 1;
        }
        (n, errs)
    });
    for i in 0..60 {
        db.purge(&format!("d{i:05}")).unwrap();
        db.update_index("n").unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (n, errs) = reader.join().unwrap();
    assert!(errs.is_empty(), "{n} queries: {errs:?}");
}

fn model_rows(db: &kiln::Database) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = db
        .docs(&kiln::ListOptions::default())
        .unwrap()
        .into_iter()
        .filter_map(|d| Some((d["_id"].as_str()?.to_owned(), d.get("n")?.clone())))
        .collect();
    v.sort_by(|a, b| kiln::index::key::compare(&a.1, &b.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn index_rows(db: &kiln::Database) -> Vec<(String, Value)> {
    db.query("n", &Query::all())
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.key))
        .collect()
}

/// Scratch: concurrent transactions, merges, fork writes.
#[test]
fn scratch_heads_and_merges() {
    let (_d, s) = store();
    let db = s.create(Some("h")).unwrap();
    db.bulk(
        &(0..20)
            .map(|i| json!({"_id": format!("d{i:02}"), "n": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    assert_eq!(index_rows(&db), model_rows(&db));
    for round in 0..5i64 {
        let mut t1 = db.transaction().unwrap();
        let mut t2 = db.transaction().unwrap();
        t1.put(&json!({"_id": "d01", "n": 100 + round})).unwrap();
        t1.del("d02").unwrap();
        t2.put(&json!({"_id": "d01", "n": 200 + round})).unwrap();
        t2.put(&json!({"_id": "d02", "n": 300 + round})).unwrap();
        t2.del("d03").unwrap();
        t1.commit().unwrap();
        assert_eq!(index_rows(&db), model_rows(&db));
        t2.commit().unwrap();
        assert!(db.heads().unwrap().len() >= 2);
        assert_eq!(index_rows(&db), model_rows(&db), "round {round}");
        let f = s.fork("h", None).unwrap();
        f.put(&json!({"_id": "d04", "n": 400 + round})).unwrap();
        f.del("d05").unwrap();
        f.put(&json!({"_id": format!("f{round}"), "n": -round}))
            .unwrap();
        assert_eq!(index_rows(&f), model_rows(&f));
        db.put(&json!({"_id": "d04", "n": 500 + round})).unwrap();
        db.put(&json!({"_id": "d05", "n": 600 + round})).unwrap();
        assert_eq!(index_rows(&db), model_rows(&db));
        db.merge_from(&f, Some(&[format!("f{round}"), "d04".to_string()]))
            .unwrap();
        assert_eq!(
            index_rows(&db),
            model_rows(&db),
            "round {round} partly merged"
        );
        db.merge_from(&f, None).unwrap();
        assert_eq!(index_rows(&db), model_rows(&db), "round {round} merged");
        f.merge_from(&db, None).unwrap();
        assert_eq!(index_rows(&f), model_rows(&f), "round {round} fork merged");
        db.compact().unwrap();
        db.put(&json!({"_id": "d03", "n": 3})).unwrap();
        assert_eq!(index_rows(&db), model_rows(&db));
    }
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
fn a_lost_index_file_is_not_rebuilt_but_fails_every_query() {
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

fn model_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(false) => 1,
            Value::Bool(true) => 2,
            Value::Number(_) => 3,
            Value::String(_) => 4,
            Value::Array(_) => 5,
            Value::Object(_) => 6,
        }
    }
    fn exact(n: &serde_json::Number) -> Result<i128, f64> {
        match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Ok(u as i128),
            (_, Some(i), _) => Ok(i as i128),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e30 => Ok(f as i128),
            (_, _, f) => Err(f.unwrap()),
        }
    }
    let float = |e: Result<i128, f64>| e.map_or_else(|f| f, |i| i as f64);
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (exact(x), exact(y)) {
            (Ok(i), Ok(j)) => i.cmp(&j),
            (p, q) => float(p).partial_cmp(&float(q)).unwrap(),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = model_order(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
                let o = ka.cmp(kb).then_with(|| model_order(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Scratch: edge values through the whole path.
#[test]
fn scratch_edge_values() {
    let (_d, s) = store();
    let db = s.create(Some("ev")).unwrap();
    let vals = vec![
        json!(null),
        json!(false),
        json!(true),
        json!(-1e300),
        json!(i64::MIN),
        json!(i64::MIN + 1),
        json!(-9007199254740993i64),
        json!(-9007199254740992.0),
        json!(-0.0),
        json!(0),
        json!(5e-324),
        json!(0.1),
        json!(1),
        json!(9007199254740993u64),
        json!(9007199254740992.0),
        json!(i64::MAX),
        json!(9223372036854775808u64),
        json!(u64::MAX),
        json!(18446744073709551616.0),
        json!(1e300),
        json!(""),
        json!("\u{0}"),
        json!("\u{0}\u{0}"),
        json!("\u{0}\u{1}"),
        json!("\u{1}"),
        json!("a"),
        json!("a\u{0}"),
        json!("a\u{0}b"),
        json!("a\u{1}"),
        json!("ab"),
        json!("\u{7f}"),
        json!("\u{80}"),
        json!("\u{FFFF}"),
        json!("\u{10FFFF}"),
        json!([]),
        json!([null]),
        json!(["a"]),
        json!(["a", null]),
        json!(["a\u{0}"]),
        json!([[]]),
        json!({}),
        json!({"": 0}),
        json!({"\u{0}": 0}),
        json!({"a": null}),
        json!({"a": 0, "b": 0}),
        json!({"a\u{0}": 0}),
    ];
    let docs: Vec<Value> = vals
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"_id": format!("v{i:03}"), "n": v}))
        .collect();
    db.bulk(&docs).unwrap();
    // an id with NUL
    let nul_id = db.put(&json!({"_id": "x\u{0}y", "n": "a"}));
    println!("nul id: {:?}", nul_id.is_ok());
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    let got = index_rows(&db);
    let want = model_rows(&db);
    assert_eq!(
        got.iter().map(|x| &x.0).collect::<Vec<_>>(),
        want.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for (g, w) in got.iter().zip(&want) {
        assert!(model_order(&g.1, &w.1).is_eq(), "{g:?} {w:?}");
    }
    for (i, v) in vals.iter().enumerate() {
        let r = db.query("n", &Query::key(v.clone())).unwrap();
        let want: Vec<String> = model_rows(&db)
            .into_iter()
            .filter(|(_, k)| model_order(k, v).is_eq())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            want,
            "key {v}"
        );
        for w in &vals[i..] {
            for excl in [false, true] {
                let q = Query {
                    select: kiln::Select::Range {
                        start: Some(v.clone()),
                        end: Some(w.clone()),
                        exclusive_end: excl,
                    },
                    ..Query::default()
                };
                let r = db.query("n", &q).unwrap();
                let want: Vec<String> = model_rows(&db)
                    .into_iter()
                    .filter(|(_, k)| {
                        model_order(k, v).is_ge()
                            && if excl {
                                model_order(k, w).is_lt()
                            } else {
                                model_order(k, w).is_le()
                            }
                    })
                    .map(|(id, _)| id)
                    .collect();
                assert_eq!(
                    r.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                    want,
                    "range {v} {w} {excl}"
                );
                let rd = db.query("n", &q.clone().desc().skip(1).limit(3)).unwrap();
                let mut wd = want.clone();
                wd.reverse();
                let wd: Vec<String> = wd.into_iter().skip(1).take(3).collect();
                assert_eq!(
                    rd.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
                    wd,
                    "desc range {v} {w} {excl}"
                );
            }
        }
    }
    for r in db.query("n", &Query::all().with_docs()).unwrap() {
        assert_eq!(r.doc.as_ref().unwrap()["_id"], json!(r.id));
        assert!(model_order(&r.key, &r.doc.as_ref().unwrap()["n"]).is_eq());
    }
}
