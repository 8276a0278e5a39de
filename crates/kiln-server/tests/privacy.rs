//! The server never decrypts anything: after replicas sync documents, metadata, attachments and
//! a purge through it (and a remote gc through it), and a proposal filed through it, its
//! storage, searched raw and decrypted with the clients' keys, holds a kept marker only sealed
//! and a purged one nowhere.

use kiln_server::{spawn, ServerOptions};
use kiln_sync::{gc_remote, sync, FileSets, FolderRemote, HttpRemote, SyncOptions};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn the_server_holds_ciphertext_and_a_purge_reaches_it_through_gc() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("storage");
    let s = spawn(
        "127.0.0.1:0",
        Arc::new(FolderRemote::open(&storage).unwrap()),
        ServerOptions::default(),
    )
    .unwrap();
    let remote = HttpRemote::open(&s.url(), None).unwrap();
    let all = SyncOptions {
        files: FileSets::All,
        ..SyncOptions::default()
    };
    let a = kiln::Store::open(d.path().join("a")).unwrap();
    let da = a.create(Some("notes")).unwrap();
    da.put(&json!({"_id": "keep", "v": "MARKER-KEPT-5e1"}))
        .unwrap();
    da.put(&json!({"_id": "secret", "v": "MARKER-PURGED-5e1"}))
        .unwrap();
    da.attach(
        "keep",
        vec![kiln::Attachment::bytes("k.txt", b"MARKER-FILE-5e1")],
    )
    .unwrap();
    da.set_meta(json!({"title": "MARKER-TITLE-5e1"}).as_object().unwrap())
        .unwrap();
    sync(&a, &da, &remote, "notes", all).unwrap();
    let b = kiln::Store::open(d.path().join("b")).unwrap();
    b.import_key("notes", &a.export_key("notes", None).unwrap(), None)
        .unwrap();
    let db = b.open_db("notes").unwrap();
    sync(&b, &db, &remote, "notes", all).unwrap();
    assert_eq!(db.get("keep").unwrap().unwrap()["v"], "MARKER-KEPT-5e1");

    let keys = kiln::audit::keys_of(&d.path().join("a")).unwrap();
    let found = |needle: &[u8]| kiln::audit::find(&storage, &keys, needle).unwrap();
    for marker in [
        &b"MARKER-KEPT-5e1"[..],
        b"MARKER-PURGED-5e1",
        b"MARKER-FILE-5e1",
        b"MARKER-TITLE-5e1",
    ] {
        let hits = found(marker);
        assert!(
            !hits.is_empty(),
            "the search works: {marker:?} is there, sealed"
        );
        assert!(
            hits.iter().all(|f| f.how != "raw"),
            "plaintext in the server's storage: {hits:?}"
        );
    }
    // B purges; both sync; a remote gc through the server takes what no record names.
    db.purge("secret").unwrap();
    sync(&b, &db, &remote, "notes", all).unwrap();
    sync(&a, &da, &remote, "notes", all).unwrap();
    gc_remote(&remote, Duration::ZERO).unwrap();
    assert_eq!(found(b"MARKER-PURGED-5e1"), vec![]);
    assert!(!found(b"MARKER-KEPT-5e1").is_empty());
    assert!(da.get("secret").unwrap().is_none());
    // A proposal filed through the server: its message travels sealed too (the fork is
    // made after the purge: a fork made before would keep the purged document, its own).
    let fork = a.fork("notes", Some("edits")).unwrap();
    fork.put(&json!({"_id": "keep", "v": "edited"})).unwrap();
    kiln_sync::proposals::propose(&a, &remote, "edits", "notes", "MARKER-PROPOSAL-5e1").unwrap();
    let hits = found(b"MARKER-PROPOSAL-5e1");
    assert!(hits.iter().any(|f| f.how == "proposal"), "{hits:?}");
    assert!(hits.iter().all(|f| f.how != "raw"), "{hits:?}");
    assert_eq!(found(b"MARKER-PURGED-5e1"), vec![]);
}
