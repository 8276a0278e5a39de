//! A store opened read-only: every read works, every write is refused, and no byte, file or
//! timestamp of the store changes (what a read-only mount needs).

use kiln::{Error, ListOptions, Options, Store};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file and folder under `root`: its length, modification time and bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(p, (m.len(), m.modified().unwrap(), bytes));
        }
    }
    out
}

fn read_only() -> Options {
    Options {
        read_only: true,
        ..Options::default()
    }
}

#[test]
fn a_read_only_store_reads_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        let db = s.create(Some("a")).unwrap();
        let first = db.put(&json!({"_id": "x", "v": 1})).unwrap();
        for i in 0..150 {
            db.put(&json!({"_id": format!("d{i}"), "v": i})).unwrap();
        }
        db.put(&json!({"_id": "x", "v": 2})).unwrap();
        s.fork("a", Some("b")).unwrap();
        s.propose("b", "a", "p").unwrap();
        let mut m = serde_json::Map::new();
        m.insert("title".into(), json!("A"));
        db.set_meta(&m).unwrap();
        assert!(db.get_at("x", &first.event).unwrap().is_some());
    }
    let before = snapshot(dir.path());
    let s = Store::open_with(dir.path(), read_only()).unwrap();
    let db = s.open_db("a").unwrap();
    // Reads.
    assert_eq!(db.get("x").unwrap().unwrap()["v"], 2);
    assert_eq!(db.docs(&ListOptions::default()).unwrap().len(), 151);
    assert_eq!(
        db.cursor(&ListOptions::default().desc().limit(3))
            .unwrap()
            .count(),
        3
    );
    assert_eq!(db.changes(None).unwrap().len(), 151);
    assert_eq!(db.log(None).unwrap().len(), 152);
    let first = db.log(None).unwrap().last().unwrap().cid;
    assert_eq!(db.get_at("x", &first).unwrap().unwrap()["v"], 1);
    assert_eq!(db.meta().unwrap()["title"], "A");
    assert!(db.verify().unwrap().ok());
    assert!(db.info().unwrap().docs == 151);
    assert_eq!(s.list().unwrap(), ["a", "b"]);
    assert_eq!(s.proposals(None, true).unwrap().len(), 1);
    assert!(db.diff(None, &s.open_db("b").unwrap(), None).is_ok());
    // Writes, each refused.
    let refused = |r: kiln::Result<()>, what: &str| {
        assert!(matches!(r, Err(Error::ReadOnly(..))), "{what}: {r:?}");
    };
    refused(db.put(&json!({"_id": "y"})).map(|_| ()), "put");
    refused(db.bulk(&[json!({"_id": "y"})]).map(|_| ()), "bulk");
    refused(db.del("x").map(|_| ()), "del");
    refused(db.put_if(&json!({"_id": "y"}), None).map(|_| ()), "put_if");
    refused(db.compact(), "compact");
    refused(db.compact_full(), "compact_full");
    refused(db.purge("x").map(|_| ()), "purge");
    refused(db.set_meta(&serde_json::Map::new()), "set_meta");
    refused(db.set_settings(&kiln::Settings::default()), "set_settings");
    refused(
        db.drop_history_before(&first).map(|_| ()),
        "drop_history_before",
    );
    let mut tx = db.transaction().unwrap();
    tx.put(&json!({"_id": "t"})).unwrap();
    refused(tx.commit().map(|_| ()), "transaction");
    refused(s.create(Some("c")).map(|_| ()), "create");
    refused(s.fork("a", Some("c")).map(|_| ()), "fork");
    refused(s.drop_db("b"), "drop_db");
    refused(s.gc().map(|_| ()), "gc");
    refused(s.set_settings(&kiln::Settings::default()), "store settings");
    refused(s.propose("b", "a", "q").map(|_| ()), "propose");
    // (Found by review: deciding a proposal made its `.decided` mark before refusing.)
    let id = s.proposals(None, true).unwrap()[0].id.clone();
    refused(s.reject(&id, "no", "me").map(|_| ()), "reject");
    refused(s.accept(&id, None, "me").map(|_| ()), "accept");
    refused(s.update_proposal(&id).map(|_| ()), "update_proposal");
    refused(
        db.merge_from(&s.open_db("b").unwrap(), None).map(|_| ()),
        "merge",
    );
    let e = db.put(&json!({"_id": "y"})).unwrap_err().to_string();
    assert!(e.contains("read-only"), "{e}");
    drop((db, s));
    assert!(before == snapshot(dir.path()), "the store changed");
    // A folder without a store: an error, and nothing made.
    let none = dir.path().join("not-a-store");
    assert!(matches!(
        Store::open_with(&none, read_only()),
        Err(Error::NoStore(_))
    ));
    assert!(!none.exists());
}

/// Found by review: a read-only store must read a database whose head record ends in a torn
/// append (`info` and `verify` confirmed it under the writer lock, refused) and one whose LOCK
/// holds a drop mark a killed drop left (its take-back locked and wrote LOCK: EBADF), and
/// still write nothing.
#[test]
fn a_read_only_store_reads_what_crashes_left() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        for n in ["torn", "marked"] {
            let db = s.create(Some(n)).unwrap();
            db.put(&json!({"_id": "x", "v": 1})).unwrap();
            db.put(&json!({"_id": "y", "v": 2})).unwrap();
        }
    }
    use std::io::Write;
    let torn = dir.path().join("dbs/torn/HEAD");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&torn)
        .unwrap()
        .write_all(&[0u8; 5])
        .unwrap();
    // A drop killed between marking LOCK and renaming the folder away.
    std::fs::write(dir.path().join("dbs/marked/LOCK"), [0xffu8; 16]).unwrap();
    let before = snapshot(dir.path());
    let s = Store::open_with(dir.path(), read_only()).unwrap();
    let t = s.open_db("torn").unwrap();
    assert_eq!(t.get("y").unwrap().unwrap()["v"], 2);
    assert!(t.info().unwrap().torn_append);
    let r = t.verify().unwrap();
    assert!(r.torn_append && r.ok(), "{:?}", r.problems);
    let m = s.open_db("marked").unwrap();
    assert_eq!(m.get("x").unwrap().unwrap()["v"], 1);
    assert_eq!(m.docs(&ListOptions::default()).unwrap().len(), 2);
    drop((t, m, s));
    assert!(before == snapshot(dir.path()), "the store changed");
    // A writer takes the mark back and cuts the torn append.
    let s = Store::open(dir.path()).unwrap();
    s.open_db("marked")
        .unwrap()
        .put(&json!({"_id": "z"}))
        .unwrap();
    s.open_db("torn")
        .unwrap()
        .put(&json!({"_id": "z"}))
        .unwrap();
    assert!(!s.open_db("torn").unwrap().info().unwrap().torn_append);
}
