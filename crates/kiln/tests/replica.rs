//! Taking in a replica's state (what a sync does once the files are here).

use serde_json::json;

/// A file the replica's state names that cannot be looked at (here a symlink loop standing for
/// any error but "not found": out of descriptors under load, a permission) is that error, not
/// "missing from storage", which reads as damage.
#[test]
fn a_file_that_cannot_be_looked_at_is_an_io_error_not_a_missing_one() {
    let d = tempfile::tempdir().unwrap();
    let a = kiln::Store::open(d.path().join("a")).unwrap();
    let da = a.create(Some("notes")).unwrap();
    for i in 0..3 {
        da.put(&json!({"_id": format!("d{i}"), "text": "x".repeat(100_000)}))
            .unwrap();
    }
    let mine = da.replica_record("notes").unwrap();
    let b = kiln::Store::open(d.path().join("b")).unwrap();
    b.import_key("notes", &a.export_key("notes", None).unwrap(), None)
        .unwrap();
    let db = b.open_db("notes").unwrap();
    let theirs = db.open_replica("notes", &mine.bytes).unwrap();
    let names: Vec<kiln::FileName> = theirs.files().into_iter().map(|(n, _)| n).collect();
    assert!(!names.is_empty());
    let hold = b.hold_files().unwrap();
    for n in &names {
        let bytes = a.stored_file(kiln::FileKind::Diff, n).unwrap().unwrap();
        hold.keep(n, &bytes).unwrap();
    }
    // One of them becomes a link to itself.
    let h = names[0].to_string();
    let path = d
        .path()
        .join("b/files")
        .join(&h[..2])
        .join(format!("{h}.kdf"));
    assert!(path.exists(), "{}", path.display());
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&path, &path).unwrap();
    let e = db.take_in(&theirs, &names, None).unwrap_err();
    assert!(
        !matches!(e, kiln::Error::MissingFile(..)),
        "an unreadable file was reported missing: {e}"
    );
    assert!(matches!(e, kiln::Error::Io { .. }), "{e}");
}
