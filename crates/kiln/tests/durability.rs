//! Fully durable commits of small diffs flush only the head record, which carries the diff
//! file's bytes; the file itself is written unsynced. What a power cut can do to such a file
//! (lose it, cut it short, leave zeros where its bytes were) is undone from the head record's
//! copy by the first read that needs the file, or by `verify`.

use kiln::{Durability, Options, Store};
use serde_json::json;
use std::path::{Path, PathBuf};

fn full(threshold: usize) -> Options {
    Options {
        durability: Durability::Full,
        compact_threshold: threshold,
        background_compaction: false,
        ..Options::default()
    }
}

fn file_path(root: &Path, name: &kiln::car::FileName) -> PathBuf {
    let hex = name.to_string();
    root.join("files")
        .join(&hex[..2])
        .join(format!("{hex}.kdf"))
}

/// The live diff files of database `db`, newest first.
fn live_diffs(db: &kiln::Database) -> Vec<kiln::car::FileName> {
    db.history_files()
        .unwrap()
        .into_iter()
        .filter(|f| f.level == Some(0))
        .map(|f| f.name)
        .collect()
}

#[test]
fn lost_torn_or_zeroed_diff_files_come_back_from_the_head_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), full(100)).unwrap();
        let db = store.create(Some("t")).unwrap();
        for i in 0..3 {
            db.put(&json!({"_id": format!("d{i}"), "v": i})).unwrap();
        }
    }
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    let files = live_diffs(&db);
    assert_eq!(files.len(), 3);
    drop(db);
    drop(store);
    // What a power cut can leave of files written without a flush.
    for (i, name) in files.iter().enumerate() {
        let p = file_path(dir.path(), name);
        let len = std::fs::metadata(&p).unwrap().len();
        match i {
            0 => std::fs::remove_file(&p).unwrap(),
            1 => std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(len / 2)
                .unwrap(),
            _ => std::fs::write(&p, vec![0u8; len as usize]).unwrap(),
        }
    }
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    for i in 0..3 {
        assert_eq!(db.get(&format!("d{i}")).unwrap().unwrap()["v"], i);
    }
    for name in &files {
        let b = std::fs::read(file_path(dir.path(), name)).unwrap();
        assert_eq!(kiln::car::FileName::of(&b), *name);
    }
    assert!(db.verify().unwrap().ok());

    // So does listing the history (which reads whole files), without a read first.
    std::fs::remove_file(file_path(dir.path(), &files[0])).unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    let h = db.history_files().unwrap();
    assert!(
        h.iter().all(|f| f.location == kiln::Location::Live),
        "{h:?}"
    );
    assert!(file_path(dir.path(), &files[0]).exists());

    // verify puts them back too, without a read first.
    let name = files[1];
    std::fs::remove_file(file_path(dir.path(), &name)).unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    assert!(db.verify().unwrap().ok());
    assert!(file_path(dir.path(), &name).exists());
}

#[test]
fn the_copies_go_with_compaction_and_other_modes_keep_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), full(4)).unwrap();
    let db = store.create(Some("t")).unwrap();
    for i in 0..4 {
        db.put(&json!({"_id": format!("d{i}"), "v": i})).unwrap();
    }
    let head_len = |name: &str| {
        std::fs::metadata(dir.path().join("dbs").join(name).join("HEAD"))
            .unwrap()
            .len()
    };
    // Four small diffs ride in the head record.
    let carrying = head_len("t");
    assert!(carrying > 4 * 600, "{carrying}");
    // The fifth commit compacts: the files are merged into a synced one and the head record
    // starts afresh without copies.
    db.put(&json!({"_id": "d4"})).unwrap();
    assert!(head_len("t") < carrying / 2, "{}", head_len("t"));
    for i in 0..4 {
        assert_eq!(db.get(&format!("d{i}")).unwrap().unwrap()["v"], i);
    }
    assert!(db.verify().unwrap().ok());
    drop(db);
    drop(store);

    // Buffered commits promise no durability and carry nothing: a lost file stays lost
    // (reported, never read as absent).
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            ..full(100)
        },
    )
    .unwrap();
    let db = store.create(Some("b")).unwrap();
    db.put(&json!({"_id": "x"})).unwrap();
    let files = live_diffs(&db);
    assert!(head_len("b") < 1000);
    drop(db);
    std::fs::remove_file(file_path(dir.path(), &files[0])).unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("b").unwrap();
    assert!(db.get("x").is_err());
    assert!(!db.verify().unwrap().ok());
}

#[test]
fn a_large_diff_is_synced_in_place_not_carried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let docs: Vec<_> = (0..400)
        .map(|i| json!({"_id": format!("d{i:04}"), "body": format!("{i} {}", "x".repeat(300))}))
        .collect();
    db.bulk(&docs).unwrap();
    let head = std::fs::metadata(dir.path().join("dbs/t/HEAD"))
        .unwrap()
        .len();
    assert!(head < 4096, "{head}");
    db.put(&json!({"_id": "small"})).unwrap();
    assert!(db.verify().unwrap().ok());
}
