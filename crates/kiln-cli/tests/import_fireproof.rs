//! `kiln import-fireproof` end to end on the checked-in Fireproof fixtures: the ledgers listed,
//! one imported (summary, documents, the history in `kiln log`), the exit codes of what cannot
//! be imported.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_store() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/fireproof/store")
}

#[test]
fn lists_ledgers_imports_one_and_shows_its_history() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("kiln");
    let store = fixture_store();
    let store = store.to_str().unwrap();
    // No --ledger: the ledgers, nothing imported (and no store made for nothing).
    let out = common::kiln_ok(&root, &["--json", "import-fireproof", store], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    let ledgers: Vec<&str> = v["ledgers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        ledgers.contains(&"basic") && ledgers.contains(&"files"),
        "{ledgers:?}"
    );
    // One imported under another name.
    let out = common::kiln_ok(
        &root,
        &[
            "--json",
            "import-fireproof",
            store,
            "--ledger",
            "basic",
            "--into",
            "b2",
        ],
        None,
    );
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["database"], "b2");
    assert!(r["documents"].as_u64().unwrap() > 5, "{r}");
    assert!(r["events"].as_u64().unwrap() > 10, "{r}");
    let text = common::kiln_ok(&root, &["log", "b2"], None);
    assert!(text.contains("fireproof event bafy"), "{text}");
    assert!(!common::kiln_ok(&root, &["docs", "b2"], None).is_empty());
    // Again into the same name: refused, exit 2, the database as it was.
    let o = common::run_kiln(
        &root,
        &[
            "import-fireproof",
            store,
            "--ledger",
            "basic",
            "--into",
            "b2",
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A ledger that is not there: exit 2, named.
    let o = common::run_kiln(
        &root,
        &["import-fireproof", store, "--ledger", "nope"],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no ledger 'nope'"));
    // Not a Fireproof store: exit 2, said so.
    let empty = tempfile::tempdir().unwrap();
    let o = common::run_kiln(
        &root,
        &[
            "import-fireproof",
            empty.path().to_str().unwrap(),
            "--ledger",
            "x",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a Fireproof store"));
}
