//! Two replicas of one database (a store copied whole: same lineage, same key) syncing through
//! a folder remote: files move as they are, concurrent writes merge, both converge, a rerun
//! moves nothing, compaction on one side reaches the other, files come on demand.

use kiln::{Attachment, Store};
use kiln_sync::{sync, FolderRemote, RemoteFiles, SyncOptions};
use serde_json::json;
use std::io::Read;
use std::path::Path;

fn copy(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn docs(db: &kiln::Database) -> Vec<serde_json::Value> {
    db.docs(&kiln::ListOptions::default()).unwrap()
}

#[test]
fn two_replicas_converge_through_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    {
        let a = Store::open(&a_dir).unwrap();
        let db = a.create(Some("notes")).unwrap();
        db.put(&json!({"_id": "start"})).unwrap();
    }
    copy(&a_dir, &b_dir);
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let (a, b) = (Store::open(&a_dir).unwrap(), Store::open(&b_dir).unwrap());
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    let all = SyncOptions::default();

    for i in 0..5 {
        da.put(&json!({"_id": format!("a{i}"), "v": i})).unwrap();
    }
    let r = sync(&a, &da, &remote, "notes", all).unwrap();
    assert!(r.pushed && r.files_pushed > 0, "{r:?}");
    let r = sync(&b, &db, &remote, "notes", all).unwrap();
    assert!(r.files_pulled > 0, "{r:?}");
    assert_eq!(docs(&db), docs(&da));
    assert_eq!(db.heads().unwrap(), da.heads().unwrap());

    // Concurrent writes, one id on both sides.
    da.put(&json!({"_id": "x", "side": "a"})).unwrap();
    db.put(&json!({"_id": "x", "side": "b"})).unwrap();
    db.put(&json!({"_id": "b1"})).unwrap();
    sync(&a, &da, &remote, "notes", all).unwrap();
    let r = sync(&b, &db, &remote, "notes", all).unwrap();
    let merged = r.merged.expect("b merged a's writes");
    assert_eq!(merged.conflicts.len(), 1, "{merged:?}");
    assert!(r.pushed);
    sync(&a, &da, &remote, "notes", all).unwrap();
    assert_eq!(docs(&da), docs(&db));
    assert_eq!(da.heads().unwrap(), db.heads().unwrap());
    assert_eq!(da.conflicts("x").unwrap().len(), 1);

    // Nothing new: nothing moves.
    let r = sync(&a, &da, &remote, "notes", all).unwrap();
    assert_eq!(
        (r.files_pulled, r.files_pushed, r.pushed),
        (0, 0, false),
        "{r:?}"
    );

    // A compaction on one side: its file replaces the diffs on the other.
    da.compact_full().unwrap();
    sync(&a, &da, &remote, "notes", all).unwrap();
    sync(&b, &db, &remote, "notes", all).unwrap();
    assert_eq!(docs(&db), docs(&da));
    assert!(
        db.info().unwrap().files.len() <= 3,
        "{:?}",
        db.info().unwrap().files
    );

    // Files on demand: b takes the documents only, then reads the file from the remote.
    let photo: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    da.put_with_files(
        &json!({"_id": "p"}),
        vec![Attachment::bytes("photo.jpg", &photo)],
    )
    .unwrap();
    sync(&a, &da, &remote, "notes", all).unwrap();
    let r = sync(
        &b,
        &db,
        &remote,
        "notes",
        SyncOptions {
            files: false,
            ..all
        },
    )
    .unwrap();
    assert_eq!(r.filesets_pulled, 0);
    assert!(matches!(
        db.open_file("p", "photo.jpg"),
        Err(kiln::Error::FileSetUnavailable(..))
    ));
    b.set_fileset_source(Some(std::sync::Arc::new(RemoteFiles(
        FolderRemote::open(d.path().join("remote")).unwrap(),
    ))));
    let mut got = Vec::new();
    db.open_file("p", "photo.jpg")
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, photo);
    let v = da.verify().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    let v = db.verify().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
}

/// A remote head record of another database (a fork, the same lineage) does not pass for this
/// one's: a remote that swaps records is caught.
#[test]
fn a_forks_record_does_not_pass_for_its_sources() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("s")).unwrap();
    let db = s.create(Some("main")).unwrap();
    db.put(&json!({"_id": "m"})).unwrap();
    let fork = s.fork("main", Some("draft")).unwrap();
    fork.put(&json!({"_id": "f"})).unwrap();
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    sync(&s, &fork, &remote, "draft", SyncOptions::default()).unwrap();
    // The remote moves draft's record where main's goes.
    let rec = std::fs::read(d.path().join("remote/heads/draft.head")).unwrap();
    std::fs::write(d.path().join("remote/heads/main.head"), &rec).unwrap();
    let e = sync(&s, &db, &remote, "main", SyncOptions::default()).unwrap_err();
    assert!(e.to_string().contains("does not open"), "{e}");
    assert_eq!(db.get("f").unwrap(), None);
}
