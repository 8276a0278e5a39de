//! Reads the checked-in index fixture (`tests/fixtures/index-v1`, written by
//! `cargo run -p kiln --example make_index_fixture -- DIR`): a database's derived record and
//! its index trees (docs/format.md "Indexes"). A change that breaks reading them, or that
//! changes the root an index's rows make, fails here: formats are contracts.

use kiln::index::Query;
use kiln::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The roots the fixture's indexes were written with (before the last two writes).
const ROOTS: [(&str, &str); 3] = [
    (
        "by-author-year",
        "bafyreiepowkjx5cvyois5b4ao4pneirbin2kqabkys5hc5mbvfj3jwsx7m",
    ),
    (
        "by-year",
        "bafyreiftb2utfuhmoqv3ou75w7vzmbocdkgn6xph76ksoc6l5dlchltgvi",
    ),
    (
        "tags",
        "bafyreihexfc4xntlo2epa5vf4e3jb5vc577w6d4z7tozd6glhdxa5zpid4",
    ),
];

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy(&e.path(), &p);
        } else {
            std::fs::copy(e.path(), &p).unwrap();
        }
    }
}

fn open(read_only: bool) -> (tempfile::TempDir, Store) {
    use std::os::unix::fs::PermissionsExt;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/index-v1");
    let dir = tempfile::tempdir().unwrap();
    let (root, keys) = (dir.path().join("store"), dir.path().join("keys"));
    copy(&src.join("store"), &root);
    copy(&src.join("keys"), &keys);
    let private =
        |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
    private(&keys);
    for e in std::fs::read_dir(&keys).unwrap() {
        private(&e.unwrap().path());
    }
    let opts = kiln::Options {
        keys: kiln::KeyPlace::Outside(Some(keys)),
        read_only,
        ..kiln::Options::default()
    };
    let store = Store::open_with(&root, opts).unwrap();
    (dir, store)
}

fn rows(db: &kiln::Database, index: &str, q: &Query) -> Vec<(Value, String)> {
    db.query(index, q)
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.id))
        .collect()
}

fn check_answers(db: &kiln::Database) {
    let s = |k: Value, id: &str| (k, id.to_owned());
    assert_eq!(
        rows(db, "by-year", &Query::all()),
        [
            s(json!(1944.5), "b4"),
            s(json!(1969), "b1"),
            s(json!(1974), "b2"),
            s(json!("unknown"), "b5"),
        ]
    );
    assert_eq!(
        rows(db, "by-author-year", &Query::prefix(vec![json!("Borges")])),
        [
            s(json!(["Borges", 1944.5]), "b4"),
            s(json!(["Borges", "unknown"]), "b5")
        ]
    );
    assert_eq!(
        rows(db, "tags", &Query::all()),
        [
            s(json!("classic"), "b1"),
            s(json!("sf"), "b1"),
            s(json!("sf"), "b2"),
            s(json!("utopia"), "b2"),
        ]
    );
}

#[test]
fn index_fixture_reads_with_the_roots_it_was_written_with() {
    let (_d, store) = open(false);
    let db = store.open_db("books").unwrap();
    let info = db.indexes().unwrap();
    let got: Vec<(String, String)> = info
        .iter()
        .map(|i| (i.name.clone(), i.root.unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = ROOTS
        .iter()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(info.iter().all(|i| i.built && !i.current), "{info:?}");
    // Before the last writes: the tree as written (read without an update).
    // The two writes since: one document mapped again, one left.
    let up = db.update_index("tags").unwrap();
    assert_eq!((up.mapped, up.added, up.removed, up.full), (1, 1, 2, false));
    check_answers(&db);
    let r = db
        .query("by-year", &Query::key(json!(1974)).with_docs())
        .unwrap();
    assert_eq!(r[0].doc.as_ref().unwrap()["tags"], json!(["sf", "utopia"]));
    assert!(db.verify().unwrap().problems.is_empty());
}

#[test]
fn index_fixture_answers_on_a_read_only_store() {
    let (d, store) = open(true);
    let derived = d.path().join("store/dbs/books/DERIVED");
    let before = std::fs::read(&derived).unwrap();
    let db = store.open_db("books").unwrap();
    // Brought up to date in memory for each query: nothing written.
    check_answers(&db);
    assert_eq!(std::fs::read(&derived).unwrap(), before);
    assert!(db.indexes().unwrap().iter().all(|i| !i.current));
}
