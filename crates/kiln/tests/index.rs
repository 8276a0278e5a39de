//! Indexes and queries: definitions, query forms, incremental updates (map calls counted),
//! and what indexes survive (reopen, compaction, fork, merge, purge, gc).

use kiln::index::{IndexDef, Query, Select};
use kiln::{Database, Store};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

/// What `kiln index list` shows of index `name`.
fn info(db: &Database, name: &str) -> kiln::IndexInfo {
    db.indexes()
        .unwrap()
        .into_iter()
        .find(|i| i.name == name)
        .unwrap()
}

fn ids(rows: &[kiln::Row]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

fn keys(rows: &[kiln::Row]) -> Vec<Value> {
    rows.iter().map(|r| r.key.clone()).collect()
}

/// A map function that counts its calls: emits `n`.
fn counted(db: &Database, name: &str) -> Arc<AtomicU64> {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    db.register_map(name, 1, move |doc, emit| {
        c.fetch_add(1, Ordering::SeqCst);
        if let Some(n) = doc.get("n") {
            emit.row(n.clone(), json!(null));
        }
    })
    .unwrap();
    calls
}

#[test]
fn query_forms_on_a_field_index() {
    let (_d, s) = store();
    let db = s.create(Some("q")).unwrap();
    let docs = vec![
        json!({"_id": "a", "n": 0}),
        json!({"_id": "b", "n": ""}),
        json!({"_id": "c", "n": null}),
        json!({"_id": "d", "n": 1.5}),
        json!({"_id": "e", "n": 1}),
        json!({"_id": "f", "n": "x"}),
        json!({"_id": "g", "n": [1, 2]}),
        json!({"_id": "h", "n": {"k": 1}}),
        json!({"_id": "i", "n": false}),
        json!({"_id": "j"}),
        json!({"_id": "k", "n": 1.0}),
    ];
    db.bulk(&docs).unwrap();
    db.create_index("by-n", IndexDef::fields(["n"])).unwrap();
    let all = db.query("by-n", &Query::all()).unwrap();
    assert_eq!(
        ids(&all),
        ["c", "i", "a", "e", "k", "d", "b", "f", "g", "h"]
    );
    // `0` and `""` match only themselves.
    assert_eq!(
        ids(&db.query("by-n", &Query::key(json!(0))).unwrap()),
        ["a"]
    );
    assert_eq!(
        ids(&db.query("by-n", &Query::key(json!(""))).unwrap()),
        ["b"]
    );
    // 1 and 1.0 are one key.
    assert_eq!(
        ids(&db.query("by-n", &Query::key(json!(1.0))).unwrap()),
        ["e", "k"]
    );
    assert_eq!(
        ids(&db
            .query(
                "by-n",
                &Query::keys(vec![json!("x"), json!(null), json!("x")])
            )
            .unwrap()),
        ["c", "f"]
    );
    // Ranges: inclusive unless told otherwise.
    assert_eq!(
        ids(&db
            .query("by-n", &Query::range(json!(0), json!(1.5)))
            .unwrap()),
        ["a", "e", "k", "d"]
    );
    let excl = Query {
        select: Select::Range {
            start: Some(json!(0)),
            end: Some(json!(1.5)),
            exclusive_end: true,
        },
        ..Query::default()
    };
    assert_eq!(ids(&db.query("by-n", &excl).unwrap()), ["a", "e", "k"]);
    // Limit 0 is no rows; skip, limit, desc.
    assert!(db.query("by-n", &Query::all().limit(0)).unwrap().is_empty());
    assert_eq!(
        ids(&db.query("by-n", &Query::all().skip(2).limit(3)).unwrap()),
        ["a", "e", "k"]
    );
    assert_eq!(
        ids(&db.query("by-n", &Query::all().desc().limit(2)).unwrap()),
        ["h", "g"]
    );
    assert_eq!(
        ids(&db.query("by-n", &Query::all().desc().skip(8)).unwrap()),
        ["i", "c"]
    );
    // Documents with the rows.
    let r = db
        .query("by-n", &Query::key(json!("x")).with_docs())
        .unwrap();
    assert_eq!(r[0].doc, Some(json!({"_id": "f", "n": "x"})));
    assert_eq!(r[0].value, json!(null));
    // An unknown index is its own error.
    assert!(matches!(
        db.query("nope", &Query::all()),
        Err(kiln::Error::NoSuchIndex(..))
    ));
}

#[test]
fn compound_keys_and_prefixes_whatever_follows() {
    let (_d, s) = store();
    let db = s.create(Some("c")).unwrap();
    db.bulk(&[
        json!({"_id": "1", "a": "x", "b": -1}),
        json!({"_id": "2", "a": "x", "b": "s"}),
        json!({"_id": "3", "a": "x", "b": null}),
        json!({"_id": "4", "a": "x", "b": [0]}),
        json!({"_id": "5", "a": "y", "b": 0}),
        json!({"_id": "6", "a": "xy", "b": 0}),
    ])
    .unwrap();
    db.create_index("ab", IndexDef::fields(["a", "b"])).unwrap();
    let r = db.query("ab", &Query::prefix(vec![json!("x")])).unwrap();
    assert_eq!(ids(&r), ["3", "1", "2", "4"]);
    assert_eq!(keys(&r)[1], json!(["x", -1]));
    let r = db
        .query("ab", &Query::prefix(vec![json!("x"), json!(-1)]))
        .unwrap();
    assert_eq!(ids(&r), ["1"]);
    let r = db.query("ab", &Query::prefix(vec![])).unwrap();
    assert_eq!(r.len(), 6);
}

#[test]
fn each_element_of_an_array_field_is_a_row() {
    let (_d, s) = store();
    let db = s.create(Some("t")).unwrap();
    db.bulk(&[
        json!({"_id": "p", "tags": ["red", "blue", "red"]}),
        json!({"_id": "q", "tags": ["blue"]}),
        json!({"_id": "r", "tags": "red"}),
    ])
    .unwrap();
    db.create_index("tags", IndexDef::fields(["tags"]).each())
        .unwrap();
    assert_eq!(
        ids(&db.query("tags", &Query::key(json!("blue"))).unwrap()),
        ["p", "q"]
    );
    assert_eq!(
        ids(&db.query("tags", &Query::key(json!("red"))).unwrap()),
        ["p", "r"]
    );
    // Multi-emit: a document's rows leave together.
    db.put(&json!({"_id": "p", "tags": ["green"]})).unwrap();
    assert_eq!(
        ids(&db.query("tags", &Query::key(json!("red"))).unwrap()),
        ["r"]
    );
    assert_eq!(
        ids(&db.query("tags", &Query::key(json!("green"))).unwrap()),
        ["p"]
    );
}

#[test]
fn one_write_maps_one_document_at_100k() {
    let (_d, s) = store();
    let db = s.create(Some("big")).unwrap();
    let n = 100_000;
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("d{i:06}"), "n": i}))
        .collect();
    for chunk in docs.chunks(20_000) {
        db.bulk(chunk).unwrap();
    }
    let calls = counted(&db, "n");
    let r = db
        .query("n", &Query::range(json!(500), json!(504)))
        .unwrap();
    assert_eq!(
        ids(&r),
        ["d000500", "d000501", "d000502", "d000503", "d000504"]
    );
    assert_eq!(calls.load(Ordering::SeqCst), n);
    // Nothing changed: nothing mapped.
    db.query("n", &Query::key(json!(7))).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), n);
    // One write: one map call.
    db.put(&json!({"_id": "d000007", "n": -7})).unwrap();
    let r = db.query("n", &Query::key(json!(-7))).unwrap();
    assert_eq!(ids(&r), ["d000007"]);
    assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    assert!(db.query("n", &Query::key(json!(7))).unwrap().is_empty());
    // A delete maps nothing and leaves the index.
    db.del("d000008").unwrap();
    assert!(db.query("n", &Query::key(json!(8))).unwrap().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    let info = db.indexes().unwrap();
    assert_eq!(info[0].rows, n - 1);
    assert!(info[0].current);
}

#[test]
fn a_declared_index_is_kept_across_reopen_and_updated_incrementally() {
    let (d, s) = store();
    let db = s.create(Some("r")).unwrap();
    let docs: Vec<Value> = (0..1000)
        .map(|i| json!({"_id": format!("{i:04}"), "n": i % 10}))
        .collect();
    db.bulk(&docs).unwrap();
    db.create_index("mod", IndexDef::fields(["n"])).unwrap();
    let up = db.update_index("mod").unwrap();
    assert_eq!((up.mapped, up.added, up.full), (1000, 1000, true));
    // The same definition again changes nothing; another one rebuilds.
    assert!(!db.create_index("mod", IndexDef::fields(["n"])).unwrap());
    drop(db);
    drop(s);
    let s = Store::open(d.path()).unwrap();
    let db = s.open_db("r").unwrap();
    assert_eq!(db.query("mod", &Query::key(json!(3))).unwrap().len(), 100);
    db.put(&json!({"_id": "0003", "n": 4})).unwrap();
    let up = db.update_index("mod").unwrap();
    assert_eq!((up.mapped, up.added, up.removed, up.full), (1, 1, 1, false));
    assert_eq!(db.query("mod", &Query::key(json!(3))).unwrap().len(), 99);
    assert!(db
        .create_index("mod", IndexDef::fields(["n", "_id"]))
        .unwrap());
    let up = db.update_index("mod").unwrap();
    assert!(up.full);
    assert_eq!(
        db.query("mod", &Query::prefix(vec![json!(4)]))
            .unwrap()
            .len(),
        101
    );
    let up = db.rebuild_index("mod").unwrap();
    assert_eq!((up.mapped, up.full), (1000, true));
    assert!(db.drop_index("mod").unwrap());
    assert!(!db.drop_index("mod").unwrap());
    assert!(db.indexes().unwrap().is_empty());
}

#[test]
fn many_small_updates_keep_few_files_and_the_same_answers() {
    let (_d, s) = store();
    let db = s.create(Some("u")).unwrap();
    db.bulk(
        &(0..2000)
            .map(|i| json!({"_id": format!("{i:04}"), "n": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    for i in 0..40 {
        db.put(&json!({"_id": format!("{i:04}"), "n": -i - 1}))
            .unwrap();
        let r = db.query("n", &Query::key(json!(-i - 1))).unwrap();
        assert_eq!(r.len(), 1);
        let info = &db.indexes().unwrap()[0];
        assert!(info.files <= 1 + 8, "{info:?}");
    }
    let all = db.query("n", &Query::all()).unwrap();
    assert_eq!(all.len(), 2000);
    assert_eq!(all[0].key, json!(-40));
    // Garbage collection keeps what the index uses.
    s.gc().unwrap();
    assert_eq!(db.query("n", &Query::all()).unwrap().len(), 2000);
    db.put(&json!({"_id": "new", "n": 0.5})).unwrap();
    assert_eq!(
        ids(&db.query("n", &Query::key(json!(0.5))).unwrap()),
        ["new"]
    );
}

#[test]
fn indexes_survive_compaction_fork_and_merge() {
    let (_d, s) = store();
    let db = s.create(Some("m")).unwrap();
    db.bulk(
        &(0..300)
            .map(|i| json!({"_id": format!("{i:03}"), "n": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    assert_eq!(db.query("n", &Query::all()).unwrap().len(), 300);
    db.compact().unwrap();
    assert_eq!(db.query("n", &Query::all()).unwrap().len(), 300);
    // A fork shares its source's index (no build: nothing to map).
    let f = s.fork("m", Some("f")).unwrap();
    let up = f.update_index("n").unwrap();
    assert_eq!(up.mapped, 0);
    f.put(&json!({"_id": "fork-only", "n": 1000})).unwrap();
    f.del("000").unwrap();
    assert_eq!(
        ids(&f.query("n", &Query::key(json!(1000))).unwrap()),
        ["fork-only"]
    );
    // The source's index does not see the fork's writes.
    assert!(db.query("n", &Query::key(json!(1000))).unwrap().is_empty());
    // Changes that arrive by merge are indexed.
    db.merge_from(&f, None).unwrap();
    let up = db.update_index("n").unwrap();
    assert_eq!((up.mapped, up.added, up.removed), (1, 1, 1));
    assert_eq!(
        ids(&db.query("n", &Query::key(json!(1000))).unwrap()),
        ["fork-only"]
    );
    assert!(db.query("n", &Query::key(json!(0))).unwrap().is_empty());
}

#[test]
fn a_purge_drops_index_data_and_the_index_is_rebuilt() {
    let (_d, s) = store();
    let db = s.create(Some("p")).unwrap();
    db.put(&json!({"_id": "secret", "n": "marker-value-123"}))
        .unwrap();
    db.put(&json!({"_id": "other", "n": "fine"})).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    assert_eq!(db.query("n", &Query::all()).unwrap().len(), 2);
    db.purge("secret").unwrap();
    // The definition stays; what was built went, and is built again from what is left.
    let info = &db.indexes().unwrap()[0];
    assert!(!info.built && info.files == 0, "{info:?}");
    assert_eq!(ids(&db.query("n", &Query::all()).unwrap()), ["other"]);
    assert_eq!(db.update_index("n").unwrap().mapped, 0);
}

#[test]
fn find_uses_an_index_when_one_fits_and_scans_otherwise() {
    let (_d, s) = store();
    let db = s.create(Some("f")).unwrap();
    db.bulk(&(0..100)
        .map(|i| json!({"_id": format!("{i:03}"), "kind": if i % 2 == 0 {"even"} else {"odd"}, "n": i % 5}))
        .collect::<Vec<_>>())
    .unwrap();
    let w = |k: &str, v: Value| (k.to_owned(), v);
    let scan = db
        .find(&[w("kind", json!("odd")), w("n", json!(3))], None)
        .unwrap();
    assert_eq!(scan.len(), 10);
    assert!(db.index_for(&[w("kind", json!("odd"))]).unwrap().is_none());
    db.create_index("kind", IndexDef::fields(["kind"])).unwrap();
    let conds = [w("kind", json!("odd")), w("n", json!(3.0))];
    assert_eq!(
        db.index_for(&conds).unwrap(),
        Some(("kind".into(), json!("odd")))
    );
    let by_index = db.find(&conds, None).unwrap();
    assert_eq!(by_index, scan);
    assert_eq!(db.find(&conds, Some(2)).unwrap(), scan[..2].to_vec());
    assert!(db.find(&conds, Some(0)).unwrap().is_empty());
}

#[test]
fn bad_input_is_an_error() {
    let (_d, s) = store();
    let db = s.create(Some("b")).unwrap();
    assert!(db.create_index("", IndexDef::fields(["n"])).is_err());
    assert!(db
        .create_index("x", IndexDef::fields(Vec::<String>::new()))
        .is_err());
    assert!(db.create_index("x", IndexDef::fields(["a..b"])).is_err());
    db.register_map("m", 1, |_, _| panic!("boom")).unwrap();
    db.put(&json!({"_id": "z"})).unwrap();
    let e = db.query("m", &Query::all()).unwrap_err();
    assert!(e.to_string().contains("panicked on document 'z'"), "{e}");
    // A map index another process defined, not registered here.
    let s2 = Store::open(s.root()).unwrap();
    let e = s2
        .open_db("b")
        .unwrap()
        .query("m", &Query::all())
        .unwrap_err();
    assert!(e.to_string().contains("has not registered"), "{e}");
}

#[test]
fn index_keys_are_sealed_and_a_purge_leaves_none_behind() {
    let (d, s) = store();
    let db = s.create(Some("priv")).unwrap();
    let marker = "INDEX-MARKER-5150";
    db.put(&json!({"_id": "secret", "name": marker})).unwrap();
    db.bulk(
        &(0..50)
            .map(|i| json!({"_id": format!("o{i}"), "name": format!("n{i}")}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.create_index("name", IndexDef::fields(["name"])).unwrap();
    db.register_map("upper", 1, |doc, emit| {
        if let Some(n) = doc.get("name").and_then(Value::as_str) {
            emit.row(json!(n), json!({"copy": n}));
        }
    })
    .unwrap();
    assert_eq!(
        db.query("name", &Query::key(json!(marker))).unwrap().len(),
        1
    );
    assert_eq!(
        db.query("upper", &Query::key(json!(marker))).unwrap()[0].value,
        json!({"copy": marker})
    );
    // Compact the documents so the marker's only plain copies would be the index's.
    db.compact().unwrap();
    let keys = kiln::audit::keys_of(d.path()).unwrap();
    let found = kiln::audit::find(d.path(), &keys, marker.as_bytes()).unwrap();
    assert!(!found.is_empty());
    assert!(found.iter().all(|f| f.how != "raw"), "{found:?}");
    // The index files hold it (decrypted), and nothing holds it raw.
    let index_files: Vec<_> = found.iter().filter(|f| f.how == "diff segment").collect();
    assert!(index_files.len() >= 2, "{found:?}");
    db.purge("secret").unwrap();
    s.gc().unwrap();
    let found = kiln::audit::find(d.path(), &keys, marker.as_bytes()).unwrap();
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn changes_limit_keeps_the_most_recent_oldest_first() {
    let (_d, s) = store();
    let db = s.create(Some("ch")).unwrap();
    let first = db.put(&json!({"_id": "a"})).unwrap();
    for id in ["b", "c", "d", "e"] {
        db.put(&json!({"_id": id})).unwrap();
    }
    db.put(&json!({"_id": "b", "again": true})).unwrap();
    let all: Vec<String> = db
        .changes(None)
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(all, ["a", "c", "d", "e", "b"]);
    let last2: Vec<String> = db
        .changes_limited(None, 2)
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(last2, ["e", "b"]);
    assert!(db.changes_limited(None, 0).unwrap().is_empty());
    let since: Vec<String> = db
        .changes_limited(Some(&[first.event]), 10)
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(since, ["c", "d", "e", "b"]);
}

#[test]
fn an_empty_index_returns_no_rows_without_calling_the_map() {
    let (_d, s) = store();
    let db = s.create(Some("e")).unwrap();
    let calls = counted(&db, "n");
    assert!(db.query("n", &Query::all()).unwrap().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Documents without the field: mapped, no rows.
    db.put(&json!({"_id": "x"})).unwrap();
    assert!(db.query("n", &Query::all()).unwrap().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn two_map_indexes_with_the_same_code_are_two_indexes() {
    let (_d, s) = store();
    let db = s.create(Some("same")).unwrap();
    db.put(&json!({"_id": "a", "n": 1})).unwrap();
    let a = counted(&db, "first");
    let b = counted(&db, "second");
    db.query("first", &Query::all()).unwrap();
    db.query("second", &Query::all()).unwrap();
    assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (1, 1));
    // A new version of a function rebuilds its index only.
    let c = Arc::new(AtomicU64::new(0));
    let c2 = c.clone();
    db.register_map("first", 2, move |doc, emit| {
        c2.fetch_add(1, Ordering::SeqCst);
        emit.row(json!(["v2", doc["n"].clone()]), json!(null));
    })
    .unwrap();
    assert_eq!(
        keys(&db.query("first", &Query::all()).unwrap()),
        [json!(["v2", 1])]
    );
    assert_eq!(c.load(Ordering::SeqCst), 1);
    assert_eq!(
        keys(&db.query("second", &Query::all()).unwrap()),
        [json!(1)]
    );
}

#[test]
fn a_document_whose_field_changes_type_moves_in_the_order() {
    let (_d, s) = store();
    let db = s.create(Some("t")).unwrap();
    db.bulk(&[json!({"_id": "a", "n": 5}), json!({"_id": "b", "n": "m"})])
        .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    assert_eq!(ids(&db.query("n", &Query::all()).unwrap()), ["a", "b"]);
    db.put(&json!({"_id": "a", "n": "z"})).unwrap();
    assert_eq!(ids(&db.query("n", &Query::all()).unwrap()), ["b", "a"]);
    db.put(&json!({"_id": "a", "n": [0]})).unwrap();
    db.put(&json!({"_id": "b", "n": null})).unwrap();
    let r = db.query("n", &Query::all()).unwrap();
    assert_eq!(ids(&r), ["b", "a"]);
    assert_eq!(keys(&r), [json!(null), json!([0])]);
    assert!(db.query("n", &Query::key(json!("z"))).unwrap().is_empty());
}

#[test]
fn a_query_at_a_past_event_answers_from_the_state_then() {
    let (_d, s) = store();
    let db = s.create(Some("at")).unwrap();
    db.bulk(
        &(0..50)
            .map(|i| json!({"_id": format!("{i:02}"), "n": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let then = db.put(&json!({"_id": "07", "n": 700})).unwrap().event;
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    db.put(&json!({"_id": "07", "n": -1})).unwrap();
    db.del("08").unwrap();
    db.compact().unwrap();
    let now = db
        .query("n", &Query::range(json!(-5), json!(8)).with_docs())
        .unwrap();
    assert_eq!(ids(&now), ["07", "00", "01", "02", "03", "04", "05", "06"]);
    let past = db
        .query_at("n", &Query::range(json!(-5), json!(8)).with_docs(), &then)
        .unwrap();
    assert_eq!(ids(&past), ["00", "01", "02", "03", "04", "05", "06", "08"]);
    let r = db
        .query_at("n", &Query::key(json!(700)).with_docs(), &then)
        .unwrap();
    assert_eq!(r[0].doc, Some(json!({"_id": "07", "n": 700})));
    // The kept index is untouched.
    assert_eq!(db.query("n", &Query::key(json!(700))).unwrap().len(), 0);
    assert!(db
        .query_at(
            "n",
            &Query::all(),
            &"bafyreigvory4f2u3pvab54u5vuiklgy5cg43yeslwshc4pojia2kuef2ru"
                .parse()
                .unwrap()
        )
        .is_err());
}

#[test]
fn a_map_function_that_queries_an_index_gets_an_error_not_a_hang() {
    let (_d, s) = store();
    let db = s.create(Some("re")).unwrap();
    db.put(&json!({"_id": "a", "n": 1})).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    let inner = db.clone();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    db.register_map("nested", 1, move |_, emit| {
        *s2.lock().unwrap() = Some(inner.query("n", &Query::all()).map(|r| r.len()));
        emit.row(json!(1), json!(null));
    })
    .unwrap();
    db.query("nested", &Query::all()).unwrap();
    let got = seen.lock().unwrap().take().unwrap();
    assert!(got.unwrap_err().to_string().contains("may not use indexes"));
}

#[test]
fn a_map_function_building_a_large_index_that_queries_one_behind_gets_an_error_not_a_hang() {
    // Enough documents for a build to read them in two halves: the map function still runs on
    // the thread that holds the update (on another, its query would wait on that update).
    let (_d, s) = store();
    let db = s.create(Some("re2")).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    db.query("n", &Query::all()).unwrap();
    let docs: Vec<Value> = (0..6_000)
        .map(|i| json!({"_id": format!("d{i:05}"), "n": i}))
        .collect();
    db.bulk(&docs).unwrap();
    let inner = db.clone();
    let errors = Arc::new(AtomicU64::new(0));
    let e2 = errors.clone();
    db.register_map("nested", 1, move |doc, emit| {
        // "n" is behind: querying it would update it.
        if let Err(e) = inner.query("n", &Query::key(json!(1))) {
            assert!(e.to_string().contains("may not use indexes"), "{e}");
            e2.fetch_add(1, Ordering::SeqCst);
        }
        emit.row(doc["n"].clone(), json!(null));
    })
    .unwrap();
    assert_eq!(db.query("nested", &Query::all()).unwrap().len(), 6_000);
    assert_eq!(errors.load(Ordering::SeqCst), 6_000);
}

#[test]
fn another_handle_sees_every_change_to_the_index_record() {
    // Each handle keeps the derived record it read last; every change another handle makes
    // (a new definition, an update, a drop that removes the record, a new one after it) is
    // seen at the next read.
    let (d, s) = store();
    let a = s.create(Some("h")).unwrap();
    let other = Store::open(d.path()).unwrap();
    let b = other.open_db("h").unwrap();
    a.put(&json!({"_id": "x", "n": 1, "m": 5})).unwrap();
    a.create_index("i", IndexDef::fields(["n"])).unwrap();
    assert_eq!(keys(&a.query("i", &Query::all()).unwrap()), [json!(1)]);
    for round in 0..20 {
        // Redefined through b: a sees the new definition (and builds it).
        let field = if round % 2 == 0 { "m" } else { "n" };
        b.create_index("i", IndexDef::fields([field])).unwrap();
        let want = if round % 2 == 0 { 5 } else { 1 };
        assert_eq!(keys(&a.query("i", &Query::all()).unwrap()), [json!(want)]);
        // Dropped through b (the record goes), then made again: a sees both.
        assert!(b.drop_index("i").unwrap());
        assert!(matches!(
            a.query("i", &Query::all()),
            Err(kiln::Error::NoSuchIndex(..))
        ));
        b.create_index("i", IndexDef::fields([field])).unwrap();
        assert_eq!(a.indexes().unwrap().len(), 1);
        assert!(!a.indexes().unwrap()[0].built);
    }
}

#[test]
fn query_each_hands_over_rows_one_at_a_time_until_told_to_stop() {
    let (_d, s) = store();
    let db = s.create(Some("each")).unwrap();
    let docs: Vec<Value> = (0..50)
        .map(|i| json!({"_id": format!("d{i:02}"), "n": 49 - i}))
        .collect();
    db.bulk(&docs).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    for q in [
        Query::all().with_docs(),
        Query::range(json!(10), json!(20))
            .desc()
            .skip(2)
            .limit(5)
            .with_docs(),
        Query::keys(vec![json!(3), json!(1), json!(99)]),
        Query::all().limit(0),
    ] {
        let mut each = Vec::new();
        db.query_each("n", &q, &mut |r| {
            each.push(r);
            Ok(true)
        })
        .unwrap();
        assert_eq!(each, db.query("n", &q).unwrap(), "{q:?}");
    }
    // Told to stop: no row after.
    let mut seen = Vec::new();
    db.query_each("n", &Query::all().with_docs(), &mut |r| {
        assert_eq!(r.doc.as_ref().unwrap()["n"], r.key);
        seen.push(r.id);
        Ok(seen.len() < 7)
    })
    .unwrap();
    assert_eq!(seen, ["d49", "d48", "d47", "d46", "d45", "d44", "d43"]);
    // The caller's error comes back as it is, after one call: a row is never handed over
    // twice.
    let mut calls = 0;
    let e = db
        .query_each("n", &Query::all().with_docs(), &mut |_| {
            calls += 1;
            Err(kiln::Error::InvalidArgument("enough".into()))
        })
        .unwrap_err();
    assert!(
        matches!(e, kiln::Error::InvalidArgument(ref m) if m == "enough"),
        "{e}"
    );
    assert_eq!(calls, 1);
}

/// A query's documents are found many at a time (`db/gather.rs`): over more rows than one
/// batch, with versions in a bulk's diff, in single commits' diffs, in a compacted file, in
/// versions a later commit replaced, every row gets its own document, in order; a caller that
/// stops (or fails) in the second batch is handed no row after.
#[test]
fn documents_found_together_are_each_rows_own() {
    let (_d, s) = store();
    let db = s.create(Some("many")).unwrap();
    let doc = |i: u64, v: u64| json!({"_id": format!("d{i:03}"), "n": i, "v": v});
    db.bulk(&(0..120).map(|i| doc(i, 0)).collect::<Vec<_>>())
        .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    for i in 120..170 {
        db.put(&doc(i, 0)).unwrap();
    }
    db.compact().unwrap();
    for i in (0..170).step_by(7) {
        db.put(&doc(i, 1)).unwrap();
    }
    for i in 170..200 {
        db.put(&doc(i, 2)).unwrap();
    }
    db.del("d005").unwrap();
    let want = |i: u64| {
        doc(
            i,
            if i >= 170 {
                2
            } else if i.is_multiple_of(7) {
                1
            } else {
                0
            },
        )
    };
    let live: Vec<u64> = (0..200).filter(|&i| i != 5).collect();
    for q in [Query::all().with_docs(), Query::all().desc().with_docs()] {
        let rows = db.query("n", &q).unwrap();
        let mut ids: Vec<u64> = live.clone();
        if q.desc {
            ids.reverse();
        }
        assert_eq!(rows.len(), ids.len());
        for (r, i) in rows.iter().zip(ids) {
            assert_eq!(r.doc.as_ref(), Some(&want(i)), "{q:?}");
            assert_eq!(r.key, json!(i));
        }
    }
    let mut seen = Vec::new();
    db.query_each("n", &Query::all().with_docs(), &mut |r| {
        assert_eq!(r.doc.as_ref().unwrap()["n"], r.key);
        seen.push(r.key.as_u64().unwrap());
        Ok(seen.len() < 100)
    })
    .unwrap();
    assert_eq!(seen, live[..100]);
    let mut calls = 0;
    let e = db
        .query_each("n", &Query::all().skip(10).with_docs(), &mut |_| {
            calls += 1;
            match calls {
                90 => Err(kiln::Error::InvalidArgument("enough".into())),
                _ => Ok(true),
            }
        })
        .unwrap_err();
    assert!(matches!(e, kiln::Error::InvalidArgument(_)), "{e}");
    assert_eq!(calls, 90);
}

/// With a cache too small to keep them, a query's pages and segments are read from the files,
/// many per batch of rows, half of them on the helper thread (`gather::read_all`): every row
/// still gets its own document, in order, with or without a cache, forwards and backwards.
#[test]
fn documents_read_from_the_files_on_two_threads_are_each_rows_own() {
    let d = tempfile::tempdir().unwrap();
    for cache_bytes in [0, 64 << 10, 32 << 20] {
        let s = Store::open_with(
            d.path().join(cache_bytes.to_string()),
            kiln::Options {
                cache_bytes,
                ..kiln::Options::default()
            },
        )
        .unwrap();
        let db = s.create(Some("big")).unwrap();
        let doc = |i: u64| json!({"_id": format!("d{i:05}"), "n": (i * 7919) % 3000, "b": "x".repeat(200)});
        for part in 0..3u64 {
            db.bulk(
                &(part * 1000..(part + 1) * 1000)
                    .map(doc)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        }
        db.create_index("n", IndexDef::fields(["n"])).unwrap();
        for q in [
            Query::all().with_docs(),
            Query::all().desc().skip(5).with_docs(),
        ] {
            let rows = db.query("n", &q).unwrap();
            assert_eq!(rows.len(), 3000 - q.skip, "cache {cache_bytes}");
            for r in &rows {
                let i: u64 = r.id[1..].parse().unwrap();
                assert_eq!(r.doc.as_ref(), Some(&doc(i)), "cache {cache_bytes}, {q:?}");
            }
            let keys: Vec<u64> = rows.iter().map(|r| r.key.as_u64().unwrap()).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            if q.desc {
                sorted.reverse();
            }
            assert_eq!(keys, sorted[..]);
        }
    }
}

#[test]
fn a_build_reading_only_the_indexed_fields_makes_the_rows_a_whole_read_makes() {
    // Enough documents that a build reads them in two halves; fields nested, in arrays, with
    // a dot in a name, absent, null, and the id itself.
    let (_d, s) = store();
    let db = s.create(Some("pick")).unwrap();
    let fields = ["a.b", "l.1", "x\\.y", "_id"];
    db.create_index("kept", IndexDef::fields(fields)).unwrap();
    let doc = |i: u64| {
        let mut d = json!({
            "_id": format!("d{i:05}"),
            "a": {"b": i % 7, "c": "not read"},
            "l": [i, format!("s{}", i % 3), {"deep": i}],
            "x.y": if i.is_multiple_of(11) { Value::Null } else { json!(i % 5) },
            "x": {"y": "another field"},
            "body": "x".repeat(50),
        });
        if i.is_multiple_of(13) {
            d["a"] = json!(["no", "b", "here"]);
        }
        d
    };
    let all: Vec<Value> = (0..6_000).map(doc).collect();
    // "kept" is brought up to date commit by commit (whole documents read)...
    for chunk in all.chunks(1_500) {
        db.bulk(chunk).unwrap();
        db.query("kept", &Query::all().limit(1)).unwrap();
    }
    // ... "built" maps them all at once (only its fields read, in two halves), "mapped" by a
    // map function that reads whole documents.
    db.create_index("built", IndexDef::fields(fields)).unwrap();
    db.register_map("mapped", 1, |doc, emit| {
        let at = |p: &[&str]| {
            let mut v = doc;
            for s in p {
                v = match v {
                    Value::Object(m) => m.get(*s)?,
                    Value::Array(a) => a.get(s.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(v.clone())
        };
        let got: Option<Vec<Value>> = [&["a", "b"][..], &["l", "1"], &["x.y"], &["_id"]]
            .iter()
            .map(|p| at(p))
            .collect();
        if let Some(k) = got {
            emit.row(Value::Array(k), json!(null));
        }
    })
    .unwrap();
    let built = db.query("built", &Query::all()).unwrap();
    assert_eq!(built.len(), 6_000 - 6_000 / 13 - 1);
    assert_eq!(built, db.query("mapped", &Query::all()).unwrap());
    assert_eq!(built, db.query("kept", &Query::all()).unwrap());
    // The same rows from the same versions: the same tree.
    let root = |name: &str| info(&db, name).root;
    assert!(root("built").is_some());
    assert_eq!(root("built"), root("kept"));
    assert_eq!(root("built"), root("mapped"));
}

#[test]
fn a_full_build_maps_each_live_version_once_whatever_the_files_hold() {
    // A build reads the files' segments in order and takes the live versions it meets: the
    // files here also hold replaced versions, deleted documents, one body under many ids
    // (one CID), a compacted file beside newer diffs. It must make exactly the rows a
    // cursor-read build (a map function's) makes, and map each live document once.
    let (_d, s) = store();
    let db = s.create(Some("scan")).unwrap();
    let doc = |i: u64, round: u64| {
        if i % 10 == 3 {
            // The same body under many ids: one stored version for all of them.
            json!({"_id": format!("d{i:05}"), "n": 7, "same": true})
        } else {
            json!({"_id": format!("d{i:05}"), "n": i * 10 + round, "body": "y".repeat(40)})
        }
    };
    for chunk in (0..4_000).collect::<Vec<u64>>().chunks(1_000) {
        db.bulk(&chunk.iter().map(|&i| doc(i, 0)).collect::<Vec<_>>())
            .unwrap();
    }
    // Replaced versions stay in the files until compaction drops them.
    db.bulk(&(0..4_000).step_by(4).map(|i| doc(i, 1)).collect::<Vec<_>>())
        .unwrap();
    for i in (0..4_000).step_by(9) {
        db.del(&format!("d{i:05}")).unwrap();
    }
    db.compact().unwrap();
    db.bulk(&(0..4_000).step_by(6).map(|i| doc(i, 2)).collect::<Vec<_>>())
        .unwrap();
    db.del("d00005").unwrap();
    let live = db.info().unwrap().docs;

    db.create_index("built", IndexDef::fields(["n"])).unwrap();
    db.register_map("mapped", 1, |doc, emit| {
        if let Some(n) = doc.get("n") {
            emit.row(n.clone(), json!(null));
        }
    })
    .unwrap();
    let up = db.rebuild_index("built").unwrap();
    assert_eq!(up.mapped, live, "each live document mapped once");
    assert_eq!(up.added, live);
    let built = db.query("built", &Query::all().with_docs()).unwrap();
    assert_eq!(built.len() as u64, live);
    assert_eq!(
        built,
        db.query("mapped", &Query::all().with_docs()).unwrap()
    );
    for r in &built {
        assert_eq!(Some(&r.key), r.doc.as_ref().and_then(|d| d.get("n")));
        assert_eq!(db.get(&r.id).unwrap().as_ref(), r.doc.as_ref());
    }
    let root = |name: &str| info(&db, name).root;
    assert!(root("built").is_some());
    assert_eq!(root("built"), root("mapped"));
}

/// Every diff file under `dir`.
fn kdf_files(dir: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "kdf") {
                out.insert(p);
            }
        }
    }
    out
}

#[test]
fn the_first_queries_after_a_build_read_its_nodes_from_memory() {
    // A build keeps the nodes it wrote in the block cache: the queries after it do not open
    // the file again. Shown by zeroing the file: the answers still come, from the same tree,
    // without a rebuild (a damaged index file is otherwise built again).
    let (d, s) = store();
    let db = s.create(Some("kept")).unwrap();
    let docs: Vec<Value> = (0..3_000)
        .map(|i| json!({"_id": format!("d{i:05}"), "n": (i * 7) % 3_000}))
        .collect();
    db.bulk(&docs).unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    let before = kdf_files(d.path());
    db.update_index("n").unwrap();
    let written: Vec<_> = kdf_files(d.path()).difference(&before).cloned().collect();
    assert_eq!(written.len(), 1, "one index file");
    let built = info(&db, "n");
    // (Zeroed in place: a handle the store keeps open on it would still read a removed one.)
    let len = std::fs::metadata(&written[0]).unwrap().len();
    std::fs::write(&written[0], vec![0u8; len as usize]).unwrap();
    for lo in [0u64, 1_000, 2_900] {
        let rows = db
            .query("n", &Query::range(json!(lo), json!(lo + 99)).with_docs())
            .unwrap();
        assert_eq!(rows.len(), 100.min(3_000 - lo as usize));
        assert!(rows.iter().all(|r| r.doc.as_ref().unwrap()["n"] == r.key));
    }
    let after = info(&db, "n");
    assert_eq!(
        (after.root, after.files),
        (built.root, built.files),
        "no rebuild"
    );
}

/// A build large enough that its leaves are made and kept as leaves, then more one-document
/// updates than an index keeps delta files for (so its nodes are rewritten, reading those
/// leaves back as nodes and as encodings), with a cache too small to keep them (so they are
/// read from the files): every answer is the one a fresh build gives.
#[test]
fn a_large_build_then_many_updates_answer_as_a_fresh_build() {
    for cache_bytes in [32 << 20, 64 << 10] {
        let d = tempfile::tempdir().unwrap();
        let opts = kiln::Options {
            cache_bytes,
            ..kiln::Options::default()
        };
        let s = Store::open_with(d.path(), opts).unwrap();
        let db = s.create(Some("big")).unwrap();
        let docs: Vec<Value> = (0..3_000)
            .map(|i| json!({"_id": format!("d{i:05}"), "n": (i * 7919) % 3_000, "t": "x"}))
            .collect();
        db.bulk(&docs).unwrap();
        db.create_index("n", IndexDef::fields(["n"])).unwrap();
        let all = |db: &Database| {
            let rows = db.query("n", &Query::all()).unwrap();
            rows.iter()
                .map(|r| (r.key.clone(), r.id.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&db).len(), 3_000);
        for i in 0..12u64 {
            let id = format!("d{:05}", i * 97);
            db.put(&json!({"_id": id, "n": -(i as i64), "t": "y"}))
                .unwrap();
            let got = db.query("n", &Query::key(json!(-(i as i64)))).unwrap();
            assert_eq!(ids(&got), [id.as_str()], "cache {cache_bytes}, update {i}");
        }
        db.del("d00001").unwrap();
        let updated = all(&db);
        assert_eq!(updated.len(), 2_999);
        db.rebuild_index("n").unwrap();
        assert_eq!(all(&db), updated, "cache {cache_bytes}");
    }
}
