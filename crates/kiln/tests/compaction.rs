//! Compaction, its settings, archive, garbage collection.

use kiln::internals::storage::LocalStorage;
use kiln::{Cid, Durability, Error, ListOptions, Location, Options, Settings, Store};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Inline compaction: these tests count files after each commit.
fn opts() -> Options {
    Options {
        durability: Durability::Buffered,
        background_compaction: false,
        ..Options::default()
    }
}

/// A store in `dir` compacting past `threshold` diffs, keeping an archive when `archive`.
fn store_at(dir: &std::path::Path, threshold: usize, archive: bool) -> Store {
    let store = Store::open_with(
        dir,
        Options {
            compact_threshold: threshold,
            ..opts()
        },
    )
    .unwrap();
    if archive {
        store
            .set_settings(&Settings {
                keep_archive: Some(true),
                ..Settings::default()
            })
            .unwrap();
    }
    store
}

fn levels(db: &kiln::Database) -> Vec<u8> {
    db.info().unwrap().files.iter().map(|f| f.level).collect()
}

#[test]
fn threshold_settings_take_effect_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts()).unwrap();
    // Store setting: 3.
    store
        .set_settings(&Settings {
            compact_threshold: Some(3),
            ..Settings::default()
        })
        .unwrap();
    let db = store.create(Some("s")).unwrap();
    assert_eq!(db.info().unwrap().compact_threshold, 3);
    for k in 0..3 {
        db.put(&json!({"_id": format!("a{k}")})).unwrap();
    }
    assert_eq!(levels(&db), [0, 0, 0]);
    db.put(&json!({"_id": "a3"})).unwrap();
    assert_eq!(levels(&db), [1], "the 4th diff crosses a threshold of 3");
    // Database setting: 10 wins over the store's, also for a handle opened later.
    db.set_settings(&Settings {
        compact_threshold: Some(10),
        ..Settings::default()
    })
    .unwrap();
    for k in 4..14 {
        db.put(&json!({"_id": format!("a{k}")})).unwrap();
    }
    assert_eq!(levels(&db).iter().filter(|l| **l == 0).count(), 10);
    let again = Store::open_with(dir.path(), opts()).unwrap();
    let db2 = again.open_db("s").unwrap();
    assert_eq!(db2.info().unwrap().compact_threshold, 10);
    assert_eq!(db2.settings().unwrap().compact_threshold, Some(10));
    db2.put(&json!({"_id": "a14"})).unwrap();
    assert_eq!(levels(&db2), [1, 1]);
    // Back to the store's setting.
    db2.set_settings(&Settings::default()).unwrap();
    assert_eq!(db2.info().unwrap().compact_threshold, 3);
    // Created with its own setting.
    let c = again
        .create_with(
            Some("c"),
            &Settings {
                compact_threshold: Some(1),
                ..Settings::default()
            },
        )
        .unwrap();
    c.put(&json!({"_id": "x"})).unwrap();
    c.put(&json!({"_id": "y"})).unwrap();
    assert_eq!(levels(&c), [1]);
    // Bad values change nothing.
    for bad in [0, 2_000_000] {
        let s = Settings {
            compact_threshold: Some(bad),
            ..Settings::default()
        };
        assert!(matches!(c.set_settings(&s), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            again.create_with(Some("bad"), &s),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(!again.exists("bad"));
    let archive_on_db = Settings {
        keep_archive: Some(true),
        ..Settings::default()
    };
    assert!(matches!(
        c.set_settings(&archive_on_db),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(c.info().unwrap().compact_threshold, 1);
}

/// Everything readable about every event, to compare before and after compaction.
fn history(db: &kiln::Database, events: &[Cid], ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for ev in events {
        for id in ids {
            out.push(format!("{ev} {id} {:?}", db.get_at(id, ev).unwrap()));
        }
        let mut ch: Vec<(String, u64, Value)> = db
            .changes(Some(&[*ev]))
            .unwrap()
            .into_iter()
            .map(|c| (c.id, c.version, c.doc))
            .collect();
        ch.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(format!("{ev} changes {ch:?}"));
    }
    out.push(format!("{:?}", db.log(None).unwrap()));
    out.push(format!("{:?}", db.changes(None).unwrap()));
    out.push(format!("{:?}", db.docs(&ListOptions::default()).unwrap()));
    out
}

/// A delete recorded whatever the id holds, as `del` did before it refused ids without a
/// document (a transaction's delete is recorded as given).
fn record_del(db: &kiln::Database, id: &str) -> kiln::Committed {
    let mut tx = db.transaction().unwrap();
    tx.del(id).unwrap();
    tx.commit().unwrap()
}

#[test]
fn history_is_the_same_before_and_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 1_000, false);
    let db = store.create(Some("h")).unwrap();
    let ids: Vec<String> = (0..11).map(|i| format!("d{i}")).collect();
    let mut events = Vec::new();
    for k in 0..90usize {
        let id = &ids[(k * 7) % 11];
        let c = if k % 4 == 3 {
            record_del(&db, id)
        } else if k % 10 == 5 {
            let docs: Vec<Value> = (0..3)
                .map(|j| json!({"_id": ids[(k + j) % 11], "k": k, "j": j}))
                .collect();
            db.bulk(&docs).unwrap()
        } else {
            db.put(&json!({"_id": id, "k": k})).unwrap()
        };
        events.push(c.event);
    }
    // Two concurrent transactions too.
    let mut t1 = db.transaction().unwrap();
    let mut t2 = db.transaction().unwrap();
    t1.put(&json!({"_id": "d1", "side": 1})).unwrap();
    t2.put(&json!({"_id": "d1", "side": 2})).unwrap();
    events.push(t1.commit().unwrap().event);
    events.push(t2.commit().unwrap().event);
    events.push(db.put(&json!({"_id": "d2", "last": true})).unwrap().event);

    let before = history(&db, &events, &ids);
    assert!(db.verify().unwrap().ok());
    assert!(db.info().unwrap().files.len() > 90);
    db.compact().unwrap();
    assert_eq!(levels(&db), [1]);
    assert_eq!(history(&db, &events, &ids), before);
    db.compact_full().unwrap();
    assert_eq!(db.info().unwrap().files.len(), 1);
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.events, events.len());
    let fresh = Store::open_with(dir.path(), opts())
        .unwrap()
        .open_db("h")
        .unwrap();
    assert_eq!(history(&fresh, &events, &ids), before);
    // More writes after a full compaction, then full again: still one file, same answers.
    for k in 0..30 {
        events.push(db.put(&json!({"_id": format!("n{k}")})).unwrap().event);
    }
    let before = history(&db, &events, &ids);
    db.compact_full().unwrap();
    assert_eq!(db.info().unwrap().files.len(), 1);
    assert_eq!(history(&db, &events, &ids), before);
    assert!(db.verify().unwrap().ok());
}

#[test]
fn ten_thousand_puts_two_threads_threshold_10() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 10, false);
    let db = store.create(Some("big")).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for k in 0..5_000 {
                    db.put(&json!({"_id": format!("t{t}-{k:05}"), "k": k}))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let info = db.info().unwrap();
    assert!(
        info.files.len() <= 10 + 4 * kiln::LEVEL_FANIN,
        "{}",
        info.files.len()
    );
    drop(db);
    let db = Store::open_with(dir.path(), opts())
        .unwrap()
        .open_db("big")
        .unwrap();
    assert_eq!(db.info().unwrap().docs, 10_000);
    for t in 0..2 {
        for k in 0..5_000 {
            let d = db.get(&format!("t{t}-{k:05}")).unwrap().unwrap();
            assert_eq!(d["k"], k);
        }
    }
    assert_eq!(db.log(None).unwrap().len(), 10_000);
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

#[test]
fn an_archive_keeps_the_whole_sequence_of_diffs() {
    for keep in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(dir.path(), 3, keep);
        let db = store.create(Some("a")).unwrap();
        let mut events = Vec::new();
        for k in 0..60 {
            events.push(
                db.put(&json!({"_id": format!("k{}", k % 9), "k": k}))
                    .unwrap()
                    .event,
            );
        }
        let hist = db.history_files().unwrap();
        let diffs: Vec<_> = hist.iter().filter(|f| f.level == Some(0)).collect();
        if keep {
            // Every transaction's diff, found by following what each compaction replaced.
            assert_eq!(diffs.len(), 60);
            let mut found: Vec<Cid> = diffs.iter().flat_map(|f| f.events.clone()).collect();
            found.sort();
            events.sort();
            assert_eq!(found, events);
            assert!(hist.iter().all(|f| f.location != Location::Gone));
            assert!(hist.iter().any(|f| f.location == Location::Archived));
        } else {
            assert!(hist
                .iter()
                .filter(|f| f.location == Location::Gone)
                .all(|f| f.level.is_none()));
            assert!(hist.iter().any(|f| f.location == Location::Gone));
        }
        assert_eq!(
            hist.iter().filter(|f| f.location == Location::Live).count(),
            db.info().unwrap().files.len()
        );
        assert!(db.verify().unwrap().ok());
    }
}

#[test]
fn gc_removes_only_what_no_database_names_even_while_writers_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 4, false);
    let a = store.create(Some("a")).unwrap();
    let b = store.create(Some("b")).unwrap();
    for k in 0..20 {
        a.put(&json!({"_id": format!("a{k}")})).unwrap();
        b.put(&json!({"_id": format!("b{k}")})).unwrap();
    }
    // What a crash between writing a file and naming it leaves behind.
    let files = LocalStorage::new(dir.path().join("files"));
    let orphan = b"an orphaned diff".to_vec();
    let name = kiln::FileName::of(&orphan);
    files.put(&name, &orphan, false).unwrap();
    let r = store.gc().unwrap();
    assert_eq!((r.databases, r.removed_files), (2, 1));
    assert_eq!(r.removed_bytes, orphan.len() as u64);
    assert!(files.read(&name).is_err());
    assert_eq!(store.gc().unwrap().removed_files, 0);

    // Writers in other handles (as other processes would be) while gc runs again and again.
    let other = store_at(dir.path(), 4, false);
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|n| {
            let db = other.open_db(n).unwrap();
            std::thread::spawn(move || {
                for k in 0..600 {
                    db.put(&json!({"_id": format!("w{k}"), "k": k})).unwrap();
                }
            })
        })
        .collect();
    let gcs = Store::open_with(dir.path(), opts()).unwrap();
    let mut runs = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        gcs.gc().unwrap();
        runs += 1;
        // (gc in a tight loop would starve the writers, who poll for the lock)
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(runs > 0);
    for n in ["a", "b"] {
        let db = Store::open(dir.path()).unwrap().open_db(n).unwrap();
        for k in 0..600 {
            assert_eq!(db.get(&format!("w{k}")).unwrap().unwrap()["k"], k);
        }
        let r = db.verify().unwrap();
        assert!(r.ok(), "{n}: {:?}", r.problems);
    }
    // After gc, only named files remain, and nothing kept for reuse holds a byte (the
    // writers' handle is closed first: it gives its spares to the pool and stops filling its
    // reserve; empty pooled files stay).
    drop(other);
    gcs.gc().unwrap();
    let pool = dir.path().join("files/.pool");
    if let Ok(rd) = std::fs::read_dir(&pool) {
        for e in rd {
            assert_eq!(e.unwrap().metadata().unwrap().len(), 0);
        }
    }
    let live: usize = ["a", "b"]
        .iter()
        .map(|n| gcs.open_db(n).unwrap().info().unwrap().files.len())
        .sum();
    assert_eq!(files.list().unwrap().len(), live);
}

#[test]
fn model_after_full_compactions() {
    // Random-ish writes with full compactions in between agree with a map.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts()).unwrap();
    let db = store.create(Some("m")).unwrap();
    let mut model: BTreeMap<String, u64> = BTreeMap::new();
    for k in 0..200u64 {
        let id = format!("x{}", (k * 31) % 47);
        if k % 6 == 5 {
            record_del(&db, &id);
            model.remove(&id);
        } else {
            db.put(&json!({"_id": id, "k": k})).unwrap();
            model.insert(id, k);
        }
        if k % 37 == 36 {
            db.compact_full().unwrap();
            assert_eq!(db.info().unwrap().files.len(), 1);
        }
    }
    let got: BTreeMap<String, u64> = db
        .docs(&ListOptions::default())
        .unwrap()
        .into_iter()
        .map(|d| {
            (
                d["_id"].as_str().unwrap().to_owned(),
                d["k"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, model);
    assert!(db.verify().unwrap().ok());
}

/// Every byte stored under `root`, with every diff file (live, archived, kept for reuse)
/// decrypted with every key of the keybag.
fn stored_plaintext(root: &std::path::Path) -> Vec<u8> {
    fn walk(p: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    let keys = kiln::audit::keys_of(root).unwrap();
    let mut out = Vec::new();
    for p in files {
        let bytes = std::fs::read(&p).unwrap();
        let name = kiln::FileName::of(&bytes);
        for k in &keys {
            if let Ok((_, blocks)) = kiln::internals::car::verify_file(k, &name, &bytes) {
                for (_, b, _) in blocks {
                    out.extend_from_slice(&b);
                }
            }
        }
        out.extend_from_slice(&bytes);
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn purge_removes_every_stored_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 3, true);
    let db = store.create(Some("p")).unwrap();
    let marker = "MARKER-PURGE-7731";
    let mut events = Vec::new();
    for (k, s) in [
        format!("{marker} one"),
        "plain".to_owned(),
        format!("{marker} three"),
    ]
    .iter()
    .enumerate()
    {
        events.push(db.put(&json!({"_id": "secret", "s": s})).unwrap().event);
        for j in 0..4 {
            db.put(&json!({"_id": format!("other{k}{j}"), "n": j}))
                .unwrap();
        }
    }
    // Same contents as the second version: a shared block, which must survive.
    db.put(&json!({"_id": "twin", "s": "plain"})).unwrap();
    assert!(contains(&stored_plaintext(dir.path()), marker.as_bytes()));
    let log_before = db.log(None).unwrap().len();

    let r = db.purge("secret").unwrap();
    assert_eq!(r.versions, 2);
    assert!(r.archived_removed > 0);
    store.gc().unwrap();
    assert!(
        !contains(&stored_plaintext(dir.path()), marker.as_bytes()),
        "purged content is still stored"
    );
    for db in [
        db.clone(),
        Store::open(dir.path()).unwrap().open_db("p").unwrap(),
    ] {
        assert_eq!(db.get("secret").unwrap(), None);
        assert!(matches!(
            db.get_at("secret", &events[0]),
            Err(Error::Purged(..))
        ));
        assert!(matches!(
            db.get_at("secret", &events[2]),
            Err(Error::Purged(..))
        ));
        // The version another document shares is not purged.
        assert_eq!(
            db.get_at("secret", &events[1]).unwrap().unwrap()["s"],
            "plain"
        );
        assert_eq!(db.get("twin").unwrap().unwrap()["s"], "plain");
        assert_eq!(db.get("other21").unwrap().unwrap()["n"], 1);
        assert_eq!(db.log(None).unwrap().len(), log_before + 1);
        let ch = db.changes(None).unwrap();
        assert!(ch.iter().any(|c| c.id == "secret" && c.deleted));
        let v = db.verify().unwrap();
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!(v.purged, 2);
        assert_eq!(db.info().unwrap().files.len(), 1);
    }
    // Purging again finds nothing more (and writes nothing); bad ids are refused.
    assert!(matches!(
        db.purge("secret"),
        Err(Error::NoSuchDocument { .. })
    ));
    assert!(matches!(db.purge(""), Err(Error::InvalidDocument(_))));
    // Writing the id again works as usual.
    db.put(&json!({"_id": "secret", "s": "new"})).unwrap();
    assert_eq!(db.get("secret").unwrap().unwrap()["s"], "new");
    assert!(db.verify().unwrap().ok());
}

/// Another handle (as another process) that wrote and compacted keeps the replaced diffs under
/// their names for reuse; a purge elsewhere still leaves no purged byte stored, without a
/// separate gc, and the writer goes on working.
#[test]
fn purge_leaves_no_byte_in_files_another_handle_keeps_for_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let writer = store_at(dir.path(), 3, false);
    let w = writer.create(Some("d")).unwrap();
    let marker = "MARKER-SPARE-4410";
    w.put(&json!({"_id": "secret", "s": marker})).unwrap();
    for k in 0..3 {
        w.put(&json!({"_id": format!("x{k}")})).unwrap(); // the 4th diff compacts
    }
    assert!(contains(&stored_plaintext(dir.path()), marker.as_bytes()));
    let purger = store_at(dir.path(), 3, false);
    purger.open_db("d").unwrap().purge("secret").unwrap();
    assert!(
        !contains(&stored_plaintext(dir.path()), marker.as_bytes()),
        "purged content is still stored"
    );
    for k in 3..12 {
        w.put(&json!({"_id": format!("x{k}")})).unwrap();
    }
    assert_eq!(w.get("secret").unwrap(), None);
    assert_eq!(w.get("x11").unwrap().unwrap()["_id"], "x11");
    assert!(w.verify().unwrap().ok());
}

/// Reads at every event: each id's value, and the changes since it.
fn reads_at(db: &kiln::Database, events: &[Cid], ids: &[String]) -> Vec<String> {
    events
        .iter()
        .map(|ev| {
            let vals: Vec<_> = ids.iter().map(|id| db.get_at(id, ev).unwrap()).collect();
            let mut ch: Vec<(String, Value)> = db
                .changes(Some(&[*ev]))
                .unwrap()
                .into_iter()
                .map(|c| (c.id, c.doc))
                .collect();
            ch.sort_by(|a, b| a.0.cmp(&b.0));
            format!("{ev} {vals:?} {ch:?}")
        })
        .collect()
}

#[test]
fn dropping_history_before_an_event_keeps_the_state_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 7, false);
    let db = store.create(Some("d")).unwrap();
    let ids: Vec<String> = (0..9).map(|i| format!("d{i}")).collect();
    let marker = "OLD-VERSION-MARKER-5521";
    let mut events = Vec::new();
    // An early version with a marker, overwritten before the cut: it must go.
    // "only-old" is written once, long before the cut: afterwards its value lives only in
    // the state kept at the cut.
    events.push(
        db.bulk(&[
            json!({"_id": "d0", "m": marker}),
            json!({"_id": "only-old", "v": "OLD-BUT-LIVE"}),
        ])
        .unwrap()
        .event,
    );
    events.push(db.put(&json!({"_id": "d0", "k": 0})).unwrap().event);
    for k in 2..60usize {
        let id = &ids[(k * 5) % 9];
        let c = if k % 6 == 5 {
            record_del(&db, id)
        } else {
            db.put(&json!({"_id": id, "k": k})).unwrap()
        };
        events.push(c.event);
    }
    let e = events[30];
    let later = &events[30..];
    let before = reads_at(&db, later, &ids);
    let docs_before = db.docs(&ListOptions::default()).unwrap();
    assert!(contains(&stored_plaintext(dir.path()), marker.as_bytes()));

    assert_eq!(db.drop_history_before(&e).unwrap(), 30);
    store.gc().unwrap();
    assert!(!contains(&stored_plaintext(dir.path()), marker.as_bytes()));
    for db in [
        db.clone(),
        Store::open(dir.path()).unwrap().open_db("d").unwrap(),
    ] {
        assert_eq!(db.info().unwrap().files.len(), 1);
        assert_eq!(db.info().unwrap().events, 30);
        assert_eq!(db.log(None).unwrap().len(), 30);
        assert_eq!(db.log(None).unwrap().last().unwrap().cid, e);
        assert_eq!(reads_at(&db, later, &ids), before);
        assert_eq!(db.docs(&ListOptions::default()).unwrap(), docs_before);
        for old in &events[..30] {
            assert!(matches!(db.get_at("d1", old), Err(Error::NoSuchEvent(..))));
            assert!(matches!(
                db.changes(Some(&[*old])),
                Err(Error::NoSuchEvent(..))
            ));
        }
        let r = db.verify().unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.events, 30);
    }
    // Life goes on: more commits (with compactions), a concurrent pair, a second cut later.
    for k in 60..80usize {
        events.push(db.put(&json!({"_id": ids[k % 9], "k": k})).unwrap().event);
    }
    let mut t1 = db.transaction().unwrap();
    let mut t2 = db.transaction().unwrap();
    t1.put(&json!({"_id": "d3", "side": 1})).unwrap();
    t2.put(&json!({"_id": "d4", "side": 2})).unwrap();
    events.push(t1.commit().unwrap().event);
    events.push(t2.commit().unwrap().event);
    events.push(db.put(&json!({"_id": "d5", "k": 99})).unwrap().event);
    let later = &events[30..];
    let before = reads_at(&db, later, &ids);
    assert_eq!(
        db.drop_history_before(&events[30]).unwrap(),
        0,
        "already cut there"
    );
    assert_eq!(reads_at(&db, later, &ids), before);
    let e2 = events[70];
    assert_eq!(db.drop_history_before(&e2).unwrap(), 40);
    let later = &events[70..];
    let before2: Vec<String> = before[40..].to_vec();
    assert_eq!(reads_at(&db, later, &ids), before2);
    // A document whose only stored version lives in the state at the cut: readable, and
    // purgeable.
    assert_eq!(db.get("only-old").unwrap().unwrap()["v"], "OLD-BUT-LIVE");
    assert_eq!(
        db.get_at("only-old", &e2).unwrap().unwrap()["v"],
        "OLD-BUT-LIVE"
    );
    assert!(contains(&stored_plaintext(dir.path()), b"OLD-BUT-LIVE"));
    assert_eq!(db.purge("only-old").unwrap().versions, 1);
    store.gc().unwrap();
    assert!(!contains(&stored_plaintext(dir.path()), b"OLD-BUT-LIVE"));
    assert_eq!(db.get("only-old").unwrap(), None);
    assert!(matches!(db.get_at("only-old", &e2), Err(Error::Purged(..))));
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    // An unknown event is refused, and nothing changes.
    let files = db.info().unwrap().files;
    assert!(matches!(
        db.drop_history_before(&Cid::of_cbor(b"nope")),
        Err(Error::NoSuchEvent(..))
    ));
    assert_eq!(db.info().unwrap().files, files);
}

#[test]
fn large_transactions_checkpoint_the_tree_and_mix_with_small_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(dir.path(), 6, false);
    let db = store.create(Some("x")).unwrap();
    // Many leaves: a large transaction leaves most of them alone, so the leaves small ones
    // changed (pending in memory) must go into its checkpoint.
    let ids: Vec<String> = (0..2000).map(|i| format!("id{i:04}")).collect();
    let mut events = Vec::new();
    let mut model: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..12u64 {
        // A large transaction (a checkpoint), then small ones that build on it.
        let docs: Vec<Value> = (0..40)
            .map(|j| json!({"_id": ids[((round * 37 + j * 7) % 2000) as usize], "r": round}))
            .collect();
        for d in &docs {
            model.insert(d["_id"].as_str().unwrap().to_owned(), round);
        }
        events.push(db.bulk(&docs).unwrap().event);
        for j in 0..3 {
            let id = &ids[((round * 611 + j * 97) % 2000) as usize];
            events.push(db.put(&json!({"_id": id, "r": 100 + round})).unwrap().event);
            model.insert(id.clone(), 100 + round);
        }
        // Another handle (as another process would) reads the state right away.
        let other = Store::open_with(dir.path(), opts())
            .unwrap()
            .open_db("x")
            .unwrap();
        let got: BTreeMap<String, u64> = other
            .docs(&ListOptions::default())
            .unwrap()
            .into_iter()
            .map(|d| {
                (
                    d["_id"].as_str().unwrap().to_owned(),
                    d["r"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, model, "round {round}");
    }
    let before = history(&db, &events, &ids[..20]);
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    db.compact_full().unwrap();
    assert_eq!(history(&db, &events, &ids[..20]), before);
    let fresh = Store::open_with(dir.path(), opts())
        .unwrap()
        .open_db("x")
        .unwrap();
    assert_eq!(history(&fresh, &events, &ids[..20]), before);
    assert!(fresh.verify().unwrap().ok());
}
