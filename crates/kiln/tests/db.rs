//! Behaviour of a database through the public API.

use kiln::{Cid, Durability, Error, ListOptions, Options, Store};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Compaction inline, so tests can assert the file layout right after a commit.
fn opts(threshold: usize) -> Options {
    Options {
        durability: Durability::Buffered,
        compact_threshold: threshold,
        background_compaction: false,
        ..Options::default()
    }
}

/// Compaction in the background, racing the commits (the default).
fn opts_bg(threshold: usize) -> Options {
    Options {
        background_compaction: true,
        ..opts(threshold)
    }
}

fn ids(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn put_get_del_list_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    assert!(db.get("a").unwrap().is_none());
    db.put(&json!({"_id": "b", "x": 2})).unwrap();
    db.put(&json!({"_id": "a", "x": 1})).unwrap();
    let c = db
        .bulk(&[
            json!({"_id": "c"}),
            json!({"_id": "d"}),
            json!({"_id": "c", "x": 3}),
        ])
        .unwrap();
    assert_eq!(c.ids, vec!["c", "d", "c"]);
    assert_eq!(db.get("c").unwrap().unwrap(), json!({"_id": "c", "x": 3}));
    db.del("b").unwrap();
    assert_eq!(
        ids(&db.docs(&ListOptions::default()).unwrap()),
        vec!["a", "c", "d"]
    );
    let page = db
        .docs(&ListOptions {
            start: Some("b".into()),
            end: Some("c".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&page), vec!["c"]);
    assert_eq!(
        ids(&db
            .docs(&ListOptions {
                limit: Some(2),
                ..Default::default()
            })
            .unwrap()),
        vec!["a", "c"]
    );
    assert!(db
        .docs(&ListOptions {
            limit: Some(0),
            ..Default::default()
        })
        .unwrap()
        .is_empty());
    let info = db.info().unwrap();
    assert_eq!(
        (info.docs, info.events, info.files.len(), info.heads.len()),
        (3, 4, 4, 1)
    );
    // A generated id is a UUIDv7 and comes back.
    let g = db.put(&json!({"y": 1})).unwrap();
    assert_eq!(g.ids[0].len(), 36);
    assert_eq!(db.get(&g.ids[0]).unwrap().unwrap()["y"], 1);
    assert!(db.verify().unwrap().ok());
    // Reopen from a new store handle: same state.
    drop(db);
    let store2 = Store::open(dir.path()).unwrap();
    let db2 = store2.open_db("t").unwrap();
    assert_eq!(db2.docs(&ListOptions::default()).unwrap().len(), 4);
    assert_eq!(db2.info().unwrap().docs, 4);
}

#[test]
fn bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a"})).unwrap();
    let before = db.info().unwrap();
    for bad in [
        json!(1),
        json!({"_id": 1}),
        json!({"_id": "x", "_rev": 1}),
        json!({"_id": ""}),
    ] {
        assert!(
            matches!(db.put(&bad), Err(Error::InvalidDocument(_))),
            "{bad}"
        );
        assert!(matches!(
            db.bulk(&[json!({"_id": "ok"}), bad.clone()]),
            Err(Error::InvalidDocument(_))
        ));
    }
    assert!(matches!(
        db.bulk::<Value>(&[]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(db.get(""), Err(Error::InvalidDocument(_))));
    assert_eq!(db.info().unwrap(), before);
    assert!(db.get("ok").unwrap().is_none());
}

/// A document type whose serialization panics for one document.
struct Panicky(usize);

impl serde::Serialize for Panicky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.0 == 900 {
            panic!("document 900 cannot be serialized");
        }
        let mut m = s.serialize_map(None)?;
        if self.0 == 10 {
            m.serialize_entry("_id", &7)?; // the first bad document
        } else {
            m.serialize_entry("_id", &format!("d{}", self.0))?;
        }
        m.end()
    }
}

#[test]
fn the_first_bad_document_decides_also_over_a_later_panic() {
    // As a sequential pass: document 10's error, never document 900's panic (the chunks are
    // prepared on two threads; a later one could fail first).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let docs: Vec<Panicky> = (0..1000).map(Panicky).collect();
    for _ in 0..20 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.bulk(&docs)));
        match r {
            Ok(Err(Error::InvalidDocument(m))) => assert!(m.contains("_id"), "{m}"),
            Ok(other) => panic!("{other:?}"),
            Err(_) => panic!("panicked on document 900; document 10 is the first bad one"),
        }
    }
    // Without the bad one, the panic is the caller's.
    let docs: Vec<Panicky> = (11..1000).map(Panicky).collect();
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.bulk(&docs))).is_err());
    assert_eq!(db.info().unwrap().docs, 0);
}

#[test]
fn a_large_bulk_keeps_given_order_last_writes_and_the_first_error() {
    // Large batches are prepared on two threads a chunk at a time: what a caller sees must
    // be what a sequential pass gives.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let docs: Vec<Value> = (0..1000)
        .map(|i| json!({"_id": format!("d{:03}", i % 300), "i": i}))
        .collect();
    let c = db.bulk(&docs).unwrap();
    let given: Vec<String> = (0..1000).map(|i| format!("d{:03}", i % 300)).collect();
    assert_eq!(c.ids, given);
    let report = db.verify().unwrap();
    assert!(report.ok(), "{report:?}");
    // The overwritten versions are not stored: 300 bodies, the tree and the event.
    assert_eq!(report.blocks, 300 + report.tree_nodes + 1, "{report:?}");
    assert_eq!(db.info().unwrap().docs, 300);
    for k in [0, 99, 100, 299] {
        // The last of i ≡ k (mod 300) below 1000.
        let last = k + 300 * ((999 - k) / 300);
        assert_eq!(db.get(&format!("d{k:03}")).unwrap().unwrap()["i"], last);
    }
    // Two bad documents: the error is the first one's, and nothing is written.
    let before = db.info().unwrap();
    let mut bad = docs.clone();
    bad[300] = json!({"_id": 7});
    bad[700] = json!({"_id": "x", "_rev": 1});
    match db.bulk(&bad) {
        Err(Error::InvalidDocument(m)) => assert!(m.contains("_id"), "{m}"),
        other => panic!("{other:?}"),
    }
    let text: Vec<String> = bad.iter().map(|d| d.to_string()).collect();
    match db.bulk_json(&text) {
        Err(Error::InvalidDocument(m)) => assert!(m.starts_with("_id must be a string"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.info().unwrap(), before);
}

#[test]
fn a_large_bulk_led_by_a_large_document() {
    // Each thread sized its buffer from the first document it encoded, times its share of the
    // batch: a 1 MB one leading 60,000 small ones asked for 30 GB, and the process aborted.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let mut docs = vec![json!({"_id": "big", "b": "x".repeat(1_000_000)})];
    docs.extend((1..60_000).map(|i| json!({"_id": format!("d{i:05}"), "v": i})));
    db.bulk(&docs).unwrap();
    assert_eq!(db.get("d00001").unwrap().unwrap()["v"], 1);
    assert_eq!(
        db.get("big").unwrap().unwrap()["b"].as_str().unwrap().len(),
        1_000_000
    );
}

#[test]
fn a_large_bulk_is_stored_whole_when_its_file_cannot_be_begun() {
    // A large bulk's file is begun in files/.tmp before its name is known; when that fails
    // (here .tmp is a file), the commit stores the file whole at the end instead.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let tmp = dir.path().join("files/.tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a folder").unwrap();
    let docs: Vec<Value> = (0..500)
        .map(|i| json!({"_id": format!("d{i:03}"), "v": i}))
        .collect();
    db.bulk(&docs).unwrap();
    let fresh = Store::open(dir.path()).unwrap().open_db("t").unwrap();
    assert_eq!(fresh.get("d499").unwrap().unwrap()["v"], 499);
    let report = fresh.verify().unwrap();
    assert!(report.ok(), "{report:?}");
}

/// A document whose serialization runs garbage collection (the first one of a bulk).
struct GcInside<'a>(&'a Store, usize, &'a std::sync::Mutex<Option<bool>>);

impl serde::Serialize for GcInside<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.1 == 0 {
            *self.2.lock().unwrap() = Some(self.0.gc().is_ok());
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("_id", &format!("d{:04}", self.1))?;
        m.serialize_entry("v", &self.1)?;
        m.end()
    }
}

#[test]
fn garbage_collection_waits_only_for_a_large_bulk_being_encoded() {
    // A large bulk holds the gc lock from its encoding on (its file is begun in files/.tmp);
    // a small one takes it only to commit, so garbage collection meanwhile goes ahead.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        Options {
            lock_timeout: std::time::Duration::from_millis(200),
            ..opts(100)
        },
    )
    .unwrap();
    let db = store.create(Some("t")).unwrap();
    let ran = std::sync::Mutex::new(None);
    let small: Vec<GcInside> = (0..5).map(|i| GcInside(&store, i, &ran)).collect();
    db.bulk(&small).unwrap();
    assert_eq!(*ran.lock().unwrap(), Some(true));
    let large: Vec<GcInside> = (0..200).map(|i| GcInside(&store, i, &ran)).collect();
    db.bulk(&large).unwrap();
    assert_eq!(*ran.lock().unwrap(), Some(false), "gc waited, then gave up");
    assert_eq!(db.info().unwrap().docs, 200);
}

#[test]
fn a_failed_large_bulk_gives_its_file_back() {
    // A large bulk begins its file while its documents are encoded; when one of them is bad,
    // the file goes back to the pool of empty files (it was unlinked, and the pool shrank).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let count = |d: &str| std::fs::read_dir(dir.path().join(d)).unwrap().count();
    let before = count("files/.pool");
    assert!(before > 0);
    let mut docs: Vec<Value> = (0..500)
        .map(|i| json!({"_id": format!("d{i:03}"), "v": i}))
        .collect();
    docs[499] = json!({"_id": 5});
    for _ in 0..10 {
        assert!(matches!(db.bulk(&docs), Err(Error::InvalidDocument(_))));
    }
    assert_eq!(count("files/.tmp"), 0);
    assert_eq!(count("files/.pool"), before);
}

#[test]
fn a_large_bulk_of_equal_documents_stores_each_body_once() {
    // Bodies leave out `_id`, so equal documents share one block; a large batch encoded on two
    // threads may hold it in both threads' runs, and the file must still list it once.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let docs: Vec<Value> = (0..600)
        .map(|i| json!({"_id": format!("d{i:03}"), "v": i % 3}))
        .collect();
    db.bulk(&docs).unwrap();
    let text: Vec<String> = (0..600)
        .map(|i| json!({"_id": format!("e{i:03}"), "v": i % 3}).to_string())
        .collect();
    db.bulk_json(&text).unwrap();
    for i in [0, 1, 2, 299, 599] {
        assert_eq!(db.get(&format!("d{i:03}")).unwrap().unwrap()["v"], i % 3);
        assert_eq!(db.get(&format!("e{i:03}")).unwrap().unwrap()["v"], i % 3);
    }
    let report = db.verify().unwrap();
    assert!(report.ok(), "{report:?}");
    // Two events, their trees' nodes and 3 bodies per file, not 1,200 bodies.
    assert!(report.blocks < report.tree_nodes + 20, "{report:?}");
}

#[test]
fn databases_create_list_open_drop() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let a = store.create(None).unwrap();
    assert_eq!(a.name().len(), 36);
    store
        .create(Some("b"))
        .unwrap()
        .put(&json!({"_id": "x"}))
        .unwrap();
    assert!(matches!(
        store.create(Some("b")),
        Err(Error::DatabaseExists(_))
    ));
    for bad in ["../x", ".x", "a/b", ""] {
        assert!(
            matches!(store.create(Some(bad)), Err(Error::InvalidName { .. })),
            "{bad}"
        );
        assert!(
            matches!(store.open_db(bad), Err(Error::InvalidName { .. })),
            "{bad}"
        );
    }
    assert!(matches!(
        store.open_db("nope"),
        Err(Error::NoSuchDatabase(_))
    ));
    let mut want = vec![a.name().to_owned(), "b".to_owned()];
    want.sort();
    assert_eq!(store.list().unwrap(), want);
    store.drop_db("b").unwrap();
    assert_eq!(store.list().unwrap(), vec![a.name().to_owned()]);
    assert!(matches!(store.open_db("b"), Err(Error::NoSuchDatabase(_))));
    assert!(matches!(store.drop_db("b"), Err(Error::NoSuchDatabase(_))));
    // Its files and key are gone too (removed files wait in files/.pool for reuse).
    let left: Vec<_> = all_files(&dir.path().join("files"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/.pool/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let keys = all_files(store.keys_dir());
    assert_eq!(
        keys.iter()
            .filter(|p| p.extension().is_some_and(|e| e == "key"))
            .count(),
        1
    );
}

#[test]
fn no_plaintext_in_any_stored_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(3)).unwrap();
    let db = store.create(Some("secret")).unwrap();
    for i in 0..10 {
        db.put(
            &json!({"_id": format!("ZEBRA-ID-{i}"), "note": "ZEBRA-MARKER body", "field_ZEBRA": i}),
        )
        .unwrap();
    }
    db.del("ZEBRA-ID-3").unwrap();
    assert!(
        db.info().unwrap().files.iter().any(|f| f.level > 0),
        "compaction ran"
    );
    for p in all_files(dir.path()) {
        let b = std::fs::read(&p).unwrap();
        assert!(
            !b.windows(5).any(|w| w == b"ZEBRA"),
            "plaintext in {}",
            p.display()
        );
    }
}

#[test]
fn corruption_is_reported_by_name_never_as_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a", "x": "y".repeat(50)})).unwrap();
    let info = db.info().unwrap();
    let name = info.files[0].name.to_string();
    let path = dir
        .path()
        .join("files")
        .join(&name[..2])
        .join(format!("{name}.kdf"));
    let orig = std::fs::read(&path).unwrap();
    // Flip one byte in each region: header, segment, index, trailer.
    for at in [3, 40, orig.len() - 30, orig.len() - 10] {
        let mut b = orig.clone();
        b[at] ^= 0x10;
        std::fs::write(&path, &b).unwrap();
        let s = Store::open_with(dir.path(), opts(100)).unwrap();
        let db = s.open_db("t").unwrap();
        match db.get("a") {
            // The header is outside what a read needs: the data read is intact and checked.
            Ok(Some(d)) if at < 16 => assert_eq!(d["x"], "y".repeat(50)),
            Ok(other) => panic!("byte {at}: damaged file read as {other:?}"),
            Err(e) => assert!(e.is_corruption(), "byte {at}: {e}"),
        }
        let r = db.verify().unwrap();
        assert!(!r.ok());
        assert!(
            r.problems.iter().any(|p| p.location.contains(&name)),
            "byte {at}: {:?}",
            r.problems
        );
    }
    std::fs::write(&path, &orig).unwrap();
    assert!(Store::open(dir.path())
        .unwrap()
        .open_db("t")
        .unwrap()
        .verify()
        .unwrap()
        .ok());
    // A missing file is corruption too.
    std::fs::remove_file(&path).unwrap();
    let e = Store::open(dir.path())
        .unwrap()
        .open_db("t")
        .unwrap()
        .get("a")
        .unwrap_err();
    assert!(matches!(e, Error::MissingFile(..)), "{e}");
    // A damaged head record is reported on open.
    std::fs::write(&path, &orig).unwrap();
    let hp = dir.path().join("dbs/t/HEAD");
    let mut h = std::fs::read(&hp).unwrap();
    let n = h.len();
    h[n - 5] ^= 1;
    std::fs::write(&hp, &h).unwrap();
    let e = Store::open(dir.path()).unwrap().open_db("t").err().unwrap();
    assert!(e.is_corruption(), "{e}");
}

#[test]
fn a_torn_head_append_is_skipped_and_cut_off_by_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("dbs/t/HEAD");
    {
        let store = Store::open_with(dir.path(), opts(100)).unwrap();
        let db = store.create(Some("t")).unwrap();
        db.put(&json!({"_id": "a"})).unwrap();
        let l1 = std::fs::metadata(&hp).unwrap().len() as usize;
        db.put(&json!({"_id": "b"})).unwrap();
        let h = std::fs::read(&hp).unwrap();
        assert!(h.len() > l1, "a commit appends to the head record");
        // What a writer killed inside its append leaves: a prefix of a record (here of a long
        // one, longer than the next commit's record).
        let rec = h[l1..].to_vec();
        let mut torn = h.clone();
        torn.extend_from_slice(&100_000u32.to_le_bytes());
        torn.extend_from_slice(&(!100_000u32).to_le_bytes());
        for _ in 0..4 {
            torn.extend_from_slice(&rec);
        }
        std::fs::write(&hp, &torn).unwrap();
    }
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.open_db("t").unwrap();
    assert_eq!(ids(&db.docs(&ListOptions::default()).unwrap()), ["a", "b"]);
    let torn_len = std::fs::metadata(&hp).unwrap().len();
    db.put(&json!({"_id": "c"})).unwrap();
    drop(db);
    let db = Store::open_with(dir.path(), opts(100))
        .unwrap()
        .open_db("t")
        .unwrap();
    assert_eq!(
        ids(&db.docs(&ListOptions::default()).unwrap()),
        ["a", "b", "c"]
    );
    assert!(db.verify().unwrap().ok());
    // The torn bytes were cut off before the append: the file holds whole records only, so a
    // changed byte in its last record is now reported, not skipped.
    let h = std::fs::read(&hp).unwrap();
    assert!((h.len() as u64) < torn_len);
    let mut bad = h.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    std::fs::write(&hp, &bad).unwrap();
    let e = Store::open(dir.path()).unwrap().open_db("t").err().unwrap();
    assert!(e.is_corruption(), "{e}");
}

/// Review finding: a transaction on a handle that had not built the current tree (its nodes
/// only in the writer's memory) failed its reads with a missing block.
#[test]
fn a_transaction_on_a_fresh_handle_reads_the_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(5)).unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a", "v": 1})).unwrap();
    db.put(&json!({"_id": "b", "v": 2})).unwrap();
    let other = Store::open_with(dir.path(), opts(5)).unwrap();
    let tx = other.open_db("t").unwrap().transaction().unwrap();
    assert_eq!(tx.get("a").unwrap().unwrap()["v"], 1);
    assert_eq!(tx.get("b").unwrap().unwrap()["v"], 2);
}

/// Review finding: a background level-0 compaction walking its snapshot's tree while a
/// checkpoint commit of the same handle cleared the in-memory nodes wrote a file without them
/// and moved the base onto a tree no file held. Races are timing-dependent; this runs many.
#[test]
fn background_compaction_racing_checkpoints_keeps_the_tree_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts_bg(5)).unwrap();
    let db = store.create(Some("r")).unwrap();
    for round in 0..40u64 {
        for k in 0..6u64 {
            db.put(&json!({"_id": format!("s{}", (round * 7 + k) % 50), "r": round}))
                .unwrap();
        }
        let docs: Vec<Value> = (0..40u64)
            .map(|j| json!({"_id": format!("b{}", (round * 13 + j) % 300), "r": round}))
            .collect();
        db.bulk(&docs).unwrap();
    }
    let fresh = Store::open_with(dir.path(), opts(5))
        .unwrap()
        .open_db("r")
        .unwrap();
    assert!(!fresh.docs(&ListOptions::default()).unwrap().is_empty());
    fresh.put(&json!({"_id": "after"})).unwrap();
    let v = fresh.verify().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
}

/// Issue 14: compaction runs in the background by default, and the last handle of a
/// database waits for the merge it is doing when dropped: right after the drop the merge is
/// in the head record (a program that drops its handles and exits loses no work and leaves
/// no half-written file). Another handle still open does not wait.
#[test]
fn dropping_the_last_handle_waits_for_its_background_compaction() {
    assert!(Options::default().background_compaction);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts_bg(3)).unwrap();
    let db = store.create(Some("c")).unwrap();
    let other = store.open_db("c").unwrap(); // another handle: its own compactions
    for b in 0..4u64 {
        let docs: Vec<Value> = (0..6000u64)
            .map(|i| json!({"_id": format!("d{b}-{i:05}"), "pad": "p".repeat(200)}))
            .collect();
        db.bulk(&docs).unwrap(); // the 4th crosses the threshold of 3: a merge starts
    }
    // A clone is a handle too: dropping one of two does not wait, nor stop the thread.
    let twin = db.clone();
    drop(db);
    let docs: Vec<Value> = (0..6000u64)
        .map(|i| json!({"_id": format!("d4-{i:05}"), "pad": "p".repeat(200)}))
        .collect();
    twin.bulk(&docs).unwrap();
    drop(twin);
    let diffs = |d: &kiln::Database| {
        d.info()
            .unwrap()
            .files
            .iter()
            .filter(|f| f.level == 0)
            .count()
    };
    assert!(
        diffs(&other) <= 3,
        "the merge the last commit started is done"
    );
    assert_eq!(other.docs(&ListOptions::default()).unwrap().len(), 30_000);
    assert!(other.verify().unwrap().ok());
}

#[test]
fn concurrent_transactions_leave_two_heads_then_join() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let base = db.put(&json!({"_id": "x", "v": 0})).unwrap();
    let mut t1 = db.transaction().unwrap();
    let mut t2 = db.transaction().unwrap();
    t1.put(&json!({"_id": "a", "v": 1})).unwrap();
    t1.put(&json!({"_id": "x", "v": 1})).unwrap();
    t2.put(&json!({"_id": "b", "v": 2})).unwrap();
    t2.put(&json!({"_id": "x", "v": 2})).unwrap();
    assert_eq!(t2.get("x").unwrap().unwrap()["v"], 2);
    assert_eq!(t2.get("a").unwrap(), None);
    let c1 = t1.commit().unwrap();
    let c2 = t2.commit().unwrap();
    assert_eq!(c2.heads.len(), 2);
    assert!(c2.heads.contains(&c1.event) && c2.heads.contains(&c2.event));
    // Both branches are visible; the conflicting write has one deterministic winner.
    assert_eq!(db.get("a").unwrap().unwrap()["v"], 1);
    assert_eq!(db.get("b").unwrap().unwrap()["v"], 2);
    let winner = db.get("x").unwrap().unwrap();
    // changes since the base: exactly a, b, x once each, also with two heads.
    let ch = db.changes(Some(&[base.event])).unwrap();
    let mut got: Vec<&str> = ch.iter().map(|c| c.id.as_str()).collect();
    got.sort();
    assert_eq!(got, vec!["a", "b", "x"]);
    assert_eq!(ch.iter().find(|c| c.id == "x").unwrap().doc, winner);
    let ch1: Vec<String> = db
        .changes(Some(&[c1.event]))
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut ch1 = ch1;
    ch1.sort();
    assert_eq!(ch1, vec!["b", "x"]);
    assert!(db.changes(Some(&c2.heads)).unwrap().is_empty());
    assert!(db.verify().unwrap().ok());
    // The same two transactions committed in the other order elsewhere pick the same winner
    // and reach the same tree root.
    let other = store.create(Some("u")).unwrap();
    other.put(&json!({"_id": "x", "v": 0})).unwrap();
    let mut u1 = other.transaction().unwrap();
    let mut u2 = other.transaction().unwrap();
    u1.put(&json!({"_id": "a", "v": 1})).unwrap();
    u1.put(&json!({"_id": "x", "v": 1})).unwrap();
    u2.put(&json!({"_id": "b", "v": 2})).unwrap();
    u2.put(&json!({"_id": "x", "v": 2})).unwrap();
    u2.commit().unwrap();
    u1.commit().unwrap();
    assert_eq!(other.get("x").unwrap().unwrap(), winner);
    assert_eq!(other.info().unwrap().root, db.info().unwrap().root);
    // The next commit joins the heads.
    let j = db.put(&json!({"_id": "y"})).unwrap();
    assert_eq!(j.heads, vec![j.event]);
    let log = db.log(None).unwrap();
    assert_eq!(log[0].parents.len(), 2);
    assert_eq!(log.len(), 4);
    assert_eq!(db.info().unwrap().docs, 4);
}

#[test]
fn history_is_readable_at_every_event_across_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(3)).unwrap();
    let db = store.create(Some("h")).unwrap();
    let mut model: BTreeMap<String, i64> = BTreeMap::new();
    let mut snapshots: Vec<(Cid, BTreeMap<String, i64>)> = Vec::new();
    for k in 0..120i64 {
        let id = format!("d{}", (k * 7) % 13);
        let c = if k % 5 == 4 {
            if model.remove(&id).is_some() {
                db.del(&id).unwrap()
            } else {
                // (A delete of an id without a document is recorded by a transaction only.)
                assert!(matches!(db.del(&id), Err(Error::NoSuchDocument { .. })));
                let mut tx = db.transaction().unwrap();
                tx.del(&id).unwrap();
                tx.commit().unwrap()
            }
        } else {
            model.insert(id.clone(), k);
            db.put(&json!({"_id": id, "k": k})).unwrap()
        };
        snapshots.push((c.event, model.clone()));
    }
    let info = db.info().unwrap();
    assert!(
        info.files.len() <= 3 + 2 * kiln::LEVEL_FANIN,
        "{:?}",
        info.files
    );
    assert!(
        info.files.iter().any(|f| f.level >= 2),
        "cascaded: {:?}",
        info.files
    );
    assert!(db.verify().unwrap().ok());
    let reopened = Store::open_with(dir.path(), opts(3))
        .unwrap()
        .open_db("h")
        .unwrap();
    for (ev, snap) in &snapshots {
        for i in 0..13 {
            let id = format!("d{i}");
            let got = reopened
                .get_at(&id, ev)
                .unwrap()
                .map(|d| d["k"].as_i64().unwrap());
            assert_eq!(got, snap.get(&id).copied(), "{id} at {ev}");
        }
    }
    assert_eq!(reopened.log(None).unwrap().len(), 120);
    assert_eq!(reopened.log(Some(5)).unwrap().len(), 5);
    // changes since the 100th event: exactly the ids written after it.
    let since = snapshots[99].0;
    let mut want: Vec<String> = (100..120i64)
        .map(|k| format!("d{}", (k * 7) % 13))
        .collect();
    want.sort();
    want.dedup();
    let mut got: Vec<String> = reopened
        .changes(Some(&[since]))
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    got.sort();
    assert_eq!(got, want);
    let unknown = Cid::of_cbor(b"nope");
    assert!(matches!(
        reopened.get_at("d1", &unknown),
        Err(Error::NoSuchEvent(..))
    ));
    // On-demand compaction leaves one file per level at most, and changes nothing visible.
    reopened.compact().unwrap();
    assert!(reopened.verify().unwrap().ok());
    let all: Vec<(String, i64)> = reopened
        .docs(&ListOptions::default())
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["_id"].as_str().unwrap().to_owned(),
                d["k"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(all, model.into_iter().collect::<Vec<_>>());
}

#[test]
fn threads_and_handles_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts_bg(20)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let other_store = Store::open_with(dir.path(), opts_bg(20)).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let db = if t % 2 == 0 {
                db.clone()
            } else {
                other_store.open_db("t").unwrap()
            };
            std::thread::spawn(move || {
                for i in 0..60 {
                    db.put(&json!({"_id": format!("t{t}-{i}")})).unwrap();
                    if i % 10 == 0 {
                        assert!(db.get(&format!("t{t}-{i}")).unwrap().is_some());
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let info = db.info().unwrap();
    assert_eq!((info.docs, info.events, info.heads.len()), (240, 240, 1));
    // Each document once, in id order, even when a read is retried on a newer head record
    // (other handles' compactions recycle files this one had open).
    let listed = ids(&db.docs(&ListOptions::default()).unwrap());
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(listed, sorted);
    assert_eq!(listed.len(), 240);
    assert!(db.verify().unwrap().ok());
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u16),
    Del(u8),
    Bulk(Vec<(u8, u16)>),
    Reopen,
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..40, any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..40).prop_map(Op::Del),
        2 => prop::collection::vec((0u8..40, any::<u16>()), 1..20).prop_map(Op::Bulk),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn agrees_with_a_btreemap(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_with(dir.path(), opts_bg(4)).unwrap();
        let mut db = store.create(Some("m")).unwrap();
        let mut model: BTreeMap<String, u16> = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Put(k, v) => { db.put(&json!({"_id": format!("k{k:02}"), "v": v})).unwrap(); model.insert(format!("k{k:02}"), *v); }
                Op::Del(k) => match model.remove(&format!("k{k:02}")) {
                    Some(_) => { db.del(&format!("k{k:02}")).unwrap(); }
                    None => {
                        let missing = matches!(db.del(&format!("k{k:02}")), Err(Error::NoSuchDocument { .. }));
                        prop_assert!(missing);
                    }
                },
                Op::Bulk(kv) => {
                    let docs: Vec<Value> = kv.iter().map(|(k, v)| json!({"_id": format!("k{k:02}"), "v": v})).collect();
                    db.bulk(&docs).unwrap();
                    for (k, v) in kv { model.insert(format!("k{k:02}"), *v); }
                }
                Op::Reopen => { store = Store::open_with(dir.path(), opts_bg(4)).unwrap(); db = store.open_db("m").unwrap(); }
                Op::Compact => db.compact().unwrap(),
            }
            for k in 0..40u8 {
                let id = format!("k{k:02}");
                let got = db.get(&id).unwrap().map(|d| d["v"].as_u64().unwrap() as u16);
                prop_assert_eq!(got, model.get(&id).copied());
            }
        }
        let listed: Vec<(String, u16)> = db.docs(&ListOptions::default()).unwrap().iter()
            .map(|d| (d["_id"].as_str().unwrap().to_owned(), d["v"].as_u64().unwrap() as u16)).collect();
        prop_assert_eq!(listed, model.clone().into_iter().collect::<Vec<_>>());
        prop_assert_eq!(db.info().unwrap().docs, model.len() as u64);
        let r = db.verify().unwrap();
        prop_assert!(r.ok(), "{:?}", r.problems);
    }
}

#[test]
fn a_held_lock_makes_writers_wait_then_fail_busy() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        lock_timeout: std::time::Duration::from_millis(200),
        ..opts(100)
    };
    let store = Store::open_with(dir.path(), o).unwrap();
    let db = store.create(Some("t")).unwrap();
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("dbs/t/LOCK"))
        .unwrap();
    holder.lock().unwrap();
    let e = db.put(&json!({"_id": "a"})).unwrap_err();
    assert!(matches!(e, Error::Busy(_)), "{e}");
    assert!(e.to_string().contains("busy"));
    assert_eq!(db.get("a").unwrap(), None);
    // Released within the timeout: the writer waits and succeeds.
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        holder.unlock().unwrap();
    });
    db.put(&json!({"_id": "a"})).unwrap();
    t.join().unwrap();
    assert!(db.get("a").unwrap().is_some());
}

#[test]
fn a_compaction_that_fails_does_not_block_commits() {
    let dir = tempfile::tempdir().unwrap();
    // No cache, so the compaction must read the damaged file back.
    let store = Store::open_with(
        dir.path(),
        Options {
            cache_bytes: 0,
            ..opts(2)
        },
    )
    .unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a", "pad": "x".repeat(100)}))
        .unwrap();
    db.put(&json!({"_id": "b"})).unwrap();
    // Damage the oldest diff: the next commit's compaction cannot read it.
    let name = db.info().unwrap().files.last().unwrap().name.to_string();
    let path = dir
        .path()
        .join("files")
        .join(&name[..2])
        .join(format!("{name}.kdf"));
    let mut b = std::fs::read(&path).unwrap();
    b[40] ^= 1;
    std::fs::write(&path, b).unwrap();
    // This handle holds the current tree in memory: its commits go on.
    db.put(&json!({"_id": "c"})).unwrap();
    db.put(&json!({"_id": "d"})).unwrap();
    assert!(db.get("d").unwrap().is_some());
    assert!(db.get("a").unwrap_err().is_corruption());
    assert_eq!(db.info().unwrap().files.len(), 4, "no compaction happened");
    // Another handle must rebuild the tree from the level-0 events, one of which is damaged:
    // every read reports the corruption (never "not found").
    let fresh = Store::open_with(dir.path(), opts(2))
        .unwrap()
        .open_db("t")
        .unwrap();
    assert!(fresh.get("c").unwrap_err().is_corruption());
    assert!(db.compact().unwrap_err().is_corruption());
    let r = db.verify().unwrap();
    assert!(r.problems.iter().any(|p| p.location.contains(&name)));
}

#[test]
fn a_transaction_older_than_a_compaction_still_commits() {
    let dir = tempfile::tempdir().unwrap();
    // No cache, so the dropped tree cannot be served from memory.
    let store = Store::open_with(
        dir.path(),
        Options {
            cache_bytes: 0,
            ..opts(2)
        },
    )
    .unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a", "v": 0})).unwrap();
    let mut tx = db.transaction().unwrap();
    // Many commits and compactions drop the tree the transaction began on.
    for i in 0..30 {
        db.put(&json!({"_id": format!("k{i}"), "v": i})).unwrap();
    }
    tx.put(&json!({"_id": "a", "v": 1})).unwrap();
    tx.put(&json!({"_id": "t", "v": 1})).unwrap();
    let c = tx.commit().unwrap();
    assert_eq!(c.heads.len(), 2);
    assert_eq!(db.get("t").unwrap().unwrap()["v"], 1);
    assert_eq!(db.get("k29").unwrap().unwrap()["v"], 29);
    // Its own state is still readable, by replaying the clock.
    assert_eq!(db.get_at("a", &c.event).unwrap().unwrap()["v"], 1);
    assert_eq!(db.get_at("k3", &c.event).unwrap(), None);
    assert!(db.verify().unwrap().ok());
    db.put(&json!({"_id": "z"})).unwrap();
    assert_eq!(db.heads().unwrap().len(), 1);
    assert_eq!(db.info().unwrap().docs, 33);
}

#[test]
fn background_compaction_loses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts_bg(10)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let other = Store::open_with(dir.path(), opts_bg(10))
        .unwrap()
        .open_db("t")
        .unwrap();
    let writers: Vec<_> = [db.clone(), other]
        .into_iter()
        .enumerate()
        .map(|(t, db)| {
            std::thread::spawn(move || {
                for i in 0..1000 {
                    db.put(&json!({"_id": format!("w{t}-{i:04}"), "i": i}))
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    db.compact().unwrap();
    let info = db.info().unwrap();
    assert_eq!((info.docs, info.events), (2000, 2000));
    assert!(info.compacted > 0);
    assert!(
        info.files.len() <= 1 + 2 * kiln::LEVEL_FANIN,
        "{:?}",
        info.files.len()
    );
    let fresh = Store::open(dir.path()).unwrap().open_db("t").unwrap();
    for t in 0..2 {
        for i in 0..1000 {
            assert_eq!(fresh.get(&format!("w{t}-{i:04}")).unwrap().unwrap()["i"], i);
        }
    }
    assert!(fresh.verify().unwrap().ok());
}

#[test]
fn a_cid_that_is_not_an_event_is_no_such_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a"})).unwrap();
    // The tree root is a stored block, hash-checked, but not an event.
    let root = db.info().unwrap().root.unwrap();
    assert!(matches!(db.get_at("a", &root), Err(Error::NoSuchEvent(..))));
    assert!(matches!(
        db.changes(Some(&[root])),
        Err(Error::NoSuchEvent(..))
    ));
    let absent = Cid::of_cbor(b"absent");
    assert!(matches!(
        db.changes(Some(&[absent])),
        Err(Error::NoSuchEvent(..))
    ));
}

#[test]
fn a_dropped_database_stops_old_handles_and_its_name_can_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let old = store.create(Some("x")).unwrap();
    old.put(&json!({"_id": "a", "v": "old"})).unwrap();
    let other_process = Store::open_with(dir.path(), opts(100))
        .unwrap()
        .open_db("x")
        .unwrap();
    store.drop_db("x").unwrap();
    let new = store.create(Some("x")).unwrap();
    new.put(&json!({"_id": "a", "v": "new"})).unwrap();
    // Handles on the dropped database can neither write into the new one nor read it.
    for h in [&old, &other_process] {
        assert!(matches!(
            h.put(&json!({"_id": "b"})),
            Err(Error::NoSuchDatabase(_))
        ));
        assert!(matches!(h.get("a"), Err(Error::NoSuchDatabase(_))));
    }
    let fresh = Store::open(dir.path()).unwrap().open_db("x").unwrap();
    assert_eq!(fresh.get("a").unwrap().unwrap()["v"], "new");
    assert_eq!(fresh.get("b").unwrap(), None);
    assert!(fresh.verify().unwrap().ok());
}

#[test]
fn an_event_of_another_database_is_no_such_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let a = store.create(Some("a")).unwrap();
    let b = store.create(Some("b")).unwrap();
    let ev = a.put(&json!({"_id": "k", "in": "a"})).unwrap().event; // now in the shared cache
    b.put(&json!({"_id": "k", "in": "b"})).unwrap();
    assert!(matches!(b.get_at("k", &ev), Err(Error::NoSuchEvent(..))));
    assert!(matches!(
        b.changes(Some(&[ev])),
        Err(Error::NoSuchEvent(..))
    ));
}

/// Large transactions are not cached and the next one refills their segment buffers: what
/// each wrote must read back whole, from the writing handle and a fresh one.
#[test]
fn large_transactions_reusing_buffers_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let body = |round: usize, i: usize| format!("{round}-{i}-{}", "x".repeat(300 + i % 7));
    for round in 0..3 {
        let docs: Vec<Value> = (0..800)
            .map(|i| json!({"_id": format!("r{round}-{i:04}"), "b": body(round, i)}))
            .collect();
        db.bulk(&docs).unwrap();
    }
    // The last bulk rewrote round 0's ids with shorter bodies, in the same buffers.
    let docs: Vec<Value> = (0..800)
        .map(|i| json!({"_id": format!("r0-{i:04}"), "b": format!("short {i}")}))
        .collect();
    db.bulk(&docs).unwrap();
    let fresh = Store::open(dir.path()).unwrap().open_db("t").unwrap();
    for d in [&db, &fresh] {
        for i in 0..800 {
            assert_eq!(
                d.get(&format!("r0-{i:04}")).unwrap().unwrap()["b"],
                format!("short {i}")
            );
            for round in 1..3 {
                let got = d.get(&format!("r{round}-{i:04}")).unwrap().unwrap();
                assert_eq!(got["b"], body(round, i));
            }
        }
        let report = d.verify().unwrap();
        assert!(report.ok(), "{report:?}");
    }
}

/// `del` of an id without a live document (never written, or deleted already) is
/// `NoSuchDocument` and writes nothing (it used to record a delete event for it); a
/// transaction still records whatever delete it is given.
#[test]
fn deleting_an_id_without_a_document_is_not_found_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a"})).unwrap();
    let hp = dir.path().join("dbs/t/HEAD");
    let head = std::fs::read(&hp).unwrap();
    let files = all_files(&dir.path().join("files")).len();
    let unchanged = |what: &str| {
        assert_eq!(std::fs::read(&hp).unwrap(), head, "{what}");
        assert_eq!(all_files(&dir.path().join("files")).len(), files, "{what}");
        assert_eq!(db.log(None).unwrap().len(), 1, "{what}");
    };
    match db.del("zz") {
        Err(Error::NoSuchDocument { db: name, ids }) => {
            assert_eq!((name.as_str(), ids), ("t", vec!["zz".to_owned()]))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        db.del("zz").unwrap_err().to_string(),
        "no document \"zz\" in database 't'"
    );
    unchanged("never written");
    db.del("a").unwrap();
    let head = std::fs::read(&hp).unwrap();
    assert!(matches!(db.del("a"), Err(Error::NoSuchDocument { .. })));
    assert_eq!(std::fs::read(&hp).unwrap(), head, "deleted already");
    assert_eq!(db.log(None).unwrap().len(), 2);
    // Another handle deleting it first: the check is made under the writer lock.
    db.put(&json!({"_id": "b"})).unwrap();
    let other = Store::open_with(dir.path(), opts(100))
        .unwrap()
        .open_db("t")
        .unwrap();
    assert!(db.get("b").unwrap().is_some());
    other.del("b").unwrap();
    assert!(matches!(db.del("b"), Err(Error::NoSuchDocument { .. })));
    assert_eq!(db.log(None).unwrap().len(), 4);
    let mut tx = db.transaction().unwrap();
    tx.del("never").unwrap();
    tx.commit().unwrap();
    assert_eq!(db.log(None).unwrap().len(), 5);
    assert!(db.verify().unwrap().ok());
}

/// A head record that ends in an append a crash left unfinished is said so by `info` and
/// `verify` (it was skipped without a word), until the next commit cuts it off.
#[test]
fn a_torn_head_append_is_reported_by_info_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("dbs/t/HEAD");
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a"})).unwrap();
    assert!(!db.info().unwrap().torn_append);
    assert!(!db.verify().unwrap().torn_append);
    // What a writer killed inside its append leaves: the start of a record.
    let mut h = std::fs::read(&hp).unwrap();
    h.extend_from_slice(&300u32.to_le_bytes());
    h.extend_from_slice(&(!300u32).to_le_bytes());
    h.extend_from_slice(&[7; 40]);
    std::fs::write(&hp, &h).unwrap();
    let db = Store::open_with(dir.path(), opts(100))
        .unwrap()
        .open_db("t")
        .unwrap();
    assert!(db.torn_append().unwrap());
    assert!(db.info().unwrap().torn_append);
    let r = db.verify().unwrap();
    assert!(r.ok() && r.torn_append, "{r:?}");
    assert!(db.get("a").unwrap().is_some());
    db.put(&json!({"_id": "b"})).unwrap();
    assert!(!db.info().unwrap().torn_append);
    assert!(!db.verify().unwrap().torn_append);
}

/// `Store::open_existing` opens a store that is there and creates nothing where none is (a
/// mistyped path used to become a store of 256 folders and 160 files).
#[test]
fn open_existing_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    for root in [typo.clone(), dir.path().to_path_buf()] {
        match Store::open_existing(&root, opts(100)) {
            Err(e @ Error::NoStore(_)) => {
                assert_eq!(
                    e.to_string(),
                    format!("no kiln store at {}", root.display())
                )
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened a store at {}", root.display()),
        }
    }
    assert!(!typo.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A file where the folder should be is no store either.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Store::open_existing(&file, opts(100)),
        Err(Error::NoStore(_))
    ));
    let store = Store::open_with(dir.path().join("s"), opts(100)).unwrap();
    store
        .create(Some("t"))
        .unwrap()
        .put(&json!({"_id": "a"}))
        .unwrap();
    let again = Store::open_existing(dir.path().join("s"), opts(100)).unwrap();
    assert!(again.open_db("t").unwrap().get("a").unwrap().is_some());
}

/// A head record whose lineage id names no key in the keybag (a byte of it flipped, or the key
/// file gone) says there is no key for the database, where it looked, and how to bring one.
#[test]
fn a_lineage_without_a_key_says_no_key_for_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    store
        .create(Some("t"))
        .unwrap()
        .put(&json!({"_id": "a"}))
        .unwrap();
    let hp = dir.path().join("dbs/t/HEAD");
    let mut h = std::fs::read(&hp).unwrap();
    h[12] ^= 1; // the first byte of the lineage id, after the magic and the version
    std::fs::write(&hp, &h).unwrap();
    let e = Store::open_with(dir.path(), opts(100))
        .unwrap()
        .open_db("t")
        .err()
        .unwrap();
    assert!(matches!(e, Error::MissingKey(..)), "{e}");
    let msg = e.to_string();
    assert!(msg.starts_with("no key for database 't'"), "{msg}");
    assert!(
        msg.contains(".key") && msg.contains("kiln key import"),
        "{msg}"
    );
}
