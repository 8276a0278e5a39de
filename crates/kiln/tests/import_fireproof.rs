//! Importing Fireproof ledgers: the checked-in fixtures (tests/fixtures/fireproof, written by
//! real Fireproof 0.24.19; see its README) against what Fireproof itself read back from them
//! (expected/<ledger>.json): every live document's exact value, deletes, attachments' bytes,
//! history event by event, several heads; and the failures (not a store, wrong or missing
//! key, a tampered file) leaving nothing behind.

mod fireproof_common;
use fireproof_common::{copy_dir, fixtures};

use kiln::import::fireproof::{
    import_fireproof, list_ledgers, ImportOptions, ImportReport, NOTE_PREFIX,
};
use kiln::{Cid, Database, Store};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn expected(ledger: &str) -> Value {
    let p = fixtures().join("expected").join(format!("{ledger}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn import(ledger: &str) -> (tempfile::TempDir, Store, Database, ImportReport) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let r = import_fireproof(
        &s,
        &fixtures().join("store"),
        ImportOptions {
            ledger: Some(ledger.into()),
            ..ImportOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("importing {ledger}: {e}"));
    let db = s.open_db(ledger).unwrap();
    (d, s, db, r)
}

/// A Fireproof document as the import maps it: fields kiln reserves get an `fp` prefix,
/// attachments leave for `_files` (checked apart), public ones listed in `fp_publicFiles`.
fn as_kiln(doc: &Value) -> Value {
    let mut out = Map::new();
    let mut public: Vec<Value> = Vec::new();
    for (k, v) in doc.as_object().unwrap() {
        match k.as_str() {
            "_id" => {
                out.insert(k.clone(), v.clone());
            }
            "_files" => {}
            "_publicFiles" => public.extend(
                v.as_object()
                    .unwrap()
                    .keys()
                    .map(|n| Value::from(n.clone())),
            ),
            _ if k.starts_with('_') => {
                out.insert(format!("fp{k}"), v.clone());
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if !public.is_empty() {
        out.insert("fp_publicFiles".into(), Value::Array(public));
    }
    Value::Object(out)
}

fn without_files(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("_files");
    }
    v
}

/// Numbers compared by value (Fireproof's 1.0 may come back as 1).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Every document, delete and attachment of `expected/<ledger>.json` as kiln reads them.
fn check_state(db: &Database, want: &Value) {
    let docs = want["docs"].as_object().unwrap();
    for (id, doc) in docs {
        let got = db
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} missing"));
        let w = as_kiln(doc);
        assert!(
            same(&without_files(got.clone()), &w),
            "{id}: got {got}, want {w}"
        );
    }
    assert_eq!(db.info().unwrap().docs, docs.len() as u64, "live documents");
    for id in want["deleted"].as_array().into_iter().flatten() {
        assert_eq!(db.get(id.as_str().unwrap()).unwrap(), None, "{id} deleted");
    }
    if let Some(files) = want.get("files").and_then(Value::as_object) {
        for (id, kinds) in files {
            let infos = db.files(id).unwrap();
            for (_, named) in kinds.as_object().unwrap() {
                for (name, meta) in named.as_object().unwrap() {
                    let info = infos
                        .iter()
                        .find(|i| i.name == *name || i.name == format!("public-{name}"))
                        .unwrap_or_else(|| panic!("{id}: file {name} missing"));
                    assert_eq!(
                        info.size,
                        meta["size"].as_u64().unwrap(),
                        "{id}/{name} size"
                    );
                    if let Some(m) = meta["lastModified"].as_u64() {
                        assert_eq!(info.modified, m, "{id}/{name} modified");
                    }
                    assert_eq!(
                        info.content_type,
                        meta["type"].as_str().unwrap(),
                        "{id}/{name} type"
                    );
                    assert_eq!(
                        info.cid.to_string(),
                        meta["cid"].as_str().unwrap(),
                        "{id}/{name} cid"
                    );
                    let mut r = db.open_file(id, &info.name).unwrap();
                    let bytes = r.read_range(0, info.size as usize).unwrap();
                    let hex: String = Sha256::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    assert_eq!(hex, meta["sha256"].as_str().unwrap(), "{id}/{name} bytes");
                }
            }
        }
    }
    assert!(db.verify().unwrap().ok());
}

/// The kiln event each imported Fireproof event became, by the Fireproof event's CID.
fn events_by_fireproof_cid(db: &Database) -> HashMap<String, Cid> {
    db.log(None)
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.note.strip_prefix(NOTE_PREFIX)?.to_owned(), e.cid)))
        .collect()
}

#[test]
fn every_value_type_deletes_and_the_history_come_over() {
    let (_d, db, _) = imports_as_fireproof_reads_it("basic");
    let want = expected("basic");
    // Each write's state, read at the event it made.
    let at = events_by_fireproof_cid(&db);
    let history = want["history"].as_array().unwrap();
    let mut checked = 0;
    for step in history {
        let clock = step["clock"].as_array().unwrap();
        if clock.len() != 1 {
            continue;
        }
        let Some(event) = at.get(clock[0].as_str().unwrap()) else {
            // A write that changed nothing makes no event in Fireproof either.
            continue;
        };
        for (id, doc) in step["state"].as_object().unwrap() {
            let got = db
                .get_at(id, event)
                .unwrap()
                .unwrap_or_else(|| panic!("{id} at {event}"));
            assert!(
                same(&without_files(got.clone()), &as_kiln(doc)),
                "{id} at {event}: {got}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} states checked");
}

/// Imports `ledger` and checks its state, heads and number of events against Fireproof's.
fn imports_as_fireproof_reads_it(ledger: &str) -> (tempfile::TempDir, Database, ImportReport) {
    let (d, _s, db, r) = import(ledger);
    let want = expected(ledger);
    check_state(&db, &want);
    let heads: Vec<String> = want["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    let mut got = r.heads.clone();
    got.sort();
    let mut w = heads.clone();
    w.sort();
    assert_eq!(got, w, "{ledger}: heads");
    let genesis = u64::from(want["genesis_event_present"].as_bool().unwrap_or(true));
    assert_eq!(
        r.events,
        want["events"].as_u64().unwrap() - genesis,
        "{ledger}: events"
    );
    assert_eq!(
        r.encrypted,
        want["encrypted"].as_bool().unwrap(),
        "{ledger}: encrypted"
    );
    // One kiln event per Fireproof event that wrote something, noted with its CID.
    let noted = events_by_fireproof_cid(&db);
    assert_eq!(
        noted.len() as u64,
        r.events - r.hollow_events,
        "{ledger}: noted events"
    );
    (d, db, r)
}

#[test]
fn two_concurrent_writers_read_as_fireproof_reads_them() {
    for ledger in ["concurrent", "twometas", "parallel"] {
        let (_d, db, r) = imports_as_fireproof_reads_it(ledger);
        assert!(r.heads.len() >= 2, "{ledger}: several heads");
        // The heads are joined by one event that settles them as Fireproof does.
        let log = db.log(Some(1)).unwrap();
        assert!(log[0].parents.len() >= 2, "{ledger}: {:?}", log[0]);
        assert_eq!(db.info().unwrap().heads.len(), 1);
    }
}

#[test]
fn compacted_ledgers_and_thousands_of_commits_come_over() {
    for ledger in ["compacted", "many"] {
        let (_d, _db, r) = imports_as_fireproof_reads_it(ledger);
        assert!(r.compacted, "{ledger}");
        assert!(r.hollow_versions >= r.hollow_events, "{ledger}: {r:?}");
        // One compaction: the files it replaced are still there (Fireproof deletes them at
        // the next), so the whole history comes over. Many: old values are gone for good.
        if ledger == "compacted" {
            assert_eq!((r.hollow_versions, r.kiln_events), (0, r.events), "{r:?}");
        } else {
            assert!(r.hollow_versions > 0, "{r:?}");
        }
    }
}

#[test]
fn indexes_are_skipped_and_said_so_and_unencrypted_stores_read() {
    let (_d, _db, r) = imports_as_fireproof_reads_it("indexed");
    assert!(r.indexes_skipped);
    let (_d, _db, r) = imports_as_fireproof_reads_it("insecure");
    assert!(!r.encrypted && r.files_read > 0, "{r:?}");
}

#[test]
fn attachments_come_over_with_their_bytes_names_and_types() {
    let (_d, _db, r) = imports_as_fireproof_reads_it("files");
    assert!(r.attachments > 0);
}

#[test]
fn a_commit_split_over_several_files_comes_over() {
    imports_as_fireproof_reads_it("split");
}

#[test]
fn listing_ledgers_and_refusing_what_cannot_be_imported() {
    let ledgers = list_ledgers(&fixtures().join("store")).unwrap();
    for l in ["basic", "files", "split"] {
        assert!(ledgers.iter().any(|x| x == l), "{ledgers:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("kiln")).unwrap();
    // Several ledgers and none named.
    let e = import_fireproof(&s, &fixtures().join("store"), ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("basic"), "{e}");
    // Not a Fireproof store.
    let empty = tempfile::tempdir().unwrap();
    let e = import_fireproof(&s, empty.path(), ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a Fireproof store"), "{e}");
    // An existing database is never written into.
    s.create(Some("basic")).unwrap();
    let e = import_fireproof(
        &s,
        &fixtures().join("store"),
        ImportOptions {
            ledger: Some("basic".into()),
            ..ImportOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, kiln::Error::DatabaseExists(_)), "{e}");
}

/// A copy of the fixture store to spoil.
fn copy_store() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("store"), d.path());
    d
}

fn import_from(dir: &Path, ledger: &str) -> (tempfile::TempDir, Store, kiln::Result<ImportReport>) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let r = import_fireproof(
        &s,
        dir,
        ImportOptions {
            ledger: Some(ledger.into()),
            ..ImportOptions::default()
        },
    );
    (d, s, r)
}

#[test]
fn a_tampered_file_is_named_and_nothing_is_left_behind() {
    let d = copy_store();
    let data = d.path().join(".fireproof/v0.19/basic/data");
    let mut cars: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "car"))
        .collect();
    cars.sort();
    for car in cars.iter().take(4) {
        let orig = std::fs::read(car).unwrap();
        let mut b = orig.clone();
        let i = b.len() / 2;
        b[i] ^= 0x01;
        std::fs::write(car, &b).unwrap();
        let (_k, s, r) = import_from(d.path(), "basic");
        let e = r.unwrap_err();
        let name = car.file_name().unwrap().to_string_lossy().into_owned();
        assert!(e.to_string().contains(&name), "{e}");
        assert!(s.list().unwrap().is_empty(), "nothing half-imported");
        std::fs::write(car, &orig).unwrap();
    }
    let (_k, _s, r) = import_from(d.path(), "basic");
    r.unwrap();
}

#[test]
fn a_wrong_or_missing_key_is_a_clear_error() {
    let d = copy_store();
    let bag = d.path().join(".fireproof/keybag");
    let entry = bag.join("_basic_data_.json");
    let orig = std::fs::read_to_string(&entry).unwrap();
    // Missing: every key file gone.
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&bag, saved.path());
    std::fs::remove_dir_all(&bag).unwrap();
    let (_k, s, r) = import_from(d.path(), "basic");
    let e = r.unwrap_err();
    assert!(e.to_string().contains("no such key"), "{e}");
    assert!(s.list().unwrap().is_empty());
    // Wrong: the entry holds another key (and no other entry matches).
    std::fs::create_dir_all(&bag).unwrap();
    let other = r#"{"name":"@basic-data@","key":"zL89nmBmogeRptW9b7e9j7L"}"#;
    std::fs::write(&entry, other).unwrap();
    let (_k, s, r) = import_from(d.path(), "basic");
    let e = r.unwrap_err();
    assert!(e.to_string().contains("no such key"), "{e}");
    assert!(s.list().unwrap().is_empty());
    std::fs::write(&entry, orig).unwrap();
    let (_k, _s, r) = import_from(d.path(), "basic");
    r.unwrap();
}
