//! Forks: O(1), sharing files; each side writes on its own; files stay while any fork names them.

use kiln::{Durability, ListOptions, Options, Store};
use serde_json::json;

/// Inline compaction: these tests count files and bytes after each commit.
fn opts(threshold: usize) -> Options {
    Options {
        durability: Durability::Buffered,
        compact_threshold: threshold,
        background_compaction: false,
        ..Options::default()
    }
}

fn disk(p: &std::path::Path) -> u64 {
    let mut t = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        t += if m.is_dir() { disk(&e.path()) } else { m.len() };
    }
    t
}

fn ids(db: &kiln::Database) -> Vec<String> {
    db.docs(&ListOptions::default())
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn forks_share_files_and_diverge() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(5)).unwrap();
    let main = store.create(Some("main")).unwrap();
    // Incompressible padding, so the base really is megabytes on disk.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x >> 60) as usize])
            })
            .collect()
    };
    let mut last_pad = String::new();
    for k in 0..40 {
        let docs: Vec<_> = (0..50)
            .map(|j| json!({"_id": format!("d{k:02}-{j:02}"), "pad": noise(2000)}))
            .collect();
        last_pad = docs[49]["pad"].as_str().unwrap().to_owned();
        main.bulk(&docs).unwrap();
    }
    main.put(&json!({"_id": "small"})).unwrap(); // something pending in memory, too
    let before = disk(dir.path());
    assert!(before > 3_000_000, "{before}");
    let fork = store.fork("main", Some("fork")).unwrap();
    let grew = disk(dir.path()) - before;
    assert!(grew < 16 * 1024, "a fork of {before} bytes added {grew}");
    assert_eq!(ids(&fork), ids(&main));
    assert_eq!(fork.info().unwrap().root, main.info().unwrap().root);
    assert_eq!(
        fork.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>(),
        main.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
    );
    // Everything is shared until a side writes.
    assert_eq!(fork.shared_bytes().unwrap(), fork.info().unwrap().bytes);
    assert_eq!(main.shared_bytes().unwrap(), main.info().unwrap().bytes);
    // Each side writes on its own.
    fork.put(&json!({"_id": "only-fork"})).unwrap();
    let i = fork.info().unwrap();
    let own = i.bytes - fork.shared_bytes().unwrap();
    assert_eq!(own, i.files[0].size, "the new diff is the fork's own");
    main.put(&json!({"_id": "only-main"})).unwrap();
    assert!(fork.get("only-main").unwrap().is_none());
    assert!(main.get("only-fork").unwrap().is_none());
    // A fork of a fork.
    let f2 = store.fork("fork", None).unwrap();
    assert!(f2.get("only-fork").unwrap().is_some());
    f2.del("d00-00").unwrap();
    assert!(fork.get("d00-00").unwrap().is_some());
    // Many commits on every side (compactions replace shared files): nothing is lost.
    for k in 0..30 {
        main.put(&json!({"_id": format!("m{k}")})).unwrap();
        fork.put(&json!({"_id": format!("f{k}")})).unwrap();
    }
    main.compact_full().unwrap();
    for db in [&main, &fork, &f2] {
        let r = db.verify().unwrap();
        assert!(r.ok(), "{}: {:?}", db.name(), r.problems);
    }
    // gc keeps what any fork names, and removes what none does.
    let r = store.gc().unwrap();
    assert!(r.removed_files > 0);
    for db in [&main, &fork, &f2] {
        assert!(db.verify().unwrap().ok());
        assert_eq!(db.get("d39-49").unwrap().unwrap()["pad"], last_pad);
    }
    // Dropping one side keeps the other whole.
    store.drop_db("main").unwrap();
    store.gc().unwrap();
    let fork = Store::open(dir.path()).unwrap().open_db("fork").unwrap();
    assert_eq!(ids(&fork).len(), 40 * 50 + 1 + 1 + 30);
    assert!(fork.verify().unwrap().ok());
    assert!(f2.verify().unwrap().ok());
    // With every database gone, gc leaves no file.
    store.drop_db("fork").unwrap();
    store.drop_db(f2.name()).unwrap();
    store.gc().unwrap();
    let left: usize = std::fs::read_dir(dir.path().join("files"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| std::fs::read_dir(e.path()).unwrap().count())
        .sum();
    assert_eq!(left, 0);
}

#[test]
fn fork_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(100)).unwrap();
    store.create(Some("a")).unwrap();
    store.create(Some("b")).unwrap();
    assert!(matches!(
        store.fork("nope", Some("c")),
        Err(kiln::Error::NoSuchDatabase(_))
    ));
    assert!(matches!(
        store.fork("a", Some("b")),
        Err(kiln::Error::DatabaseExists(_))
    ));
    assert!(matches!(
        store.fork("a", Some("../x")),
        Err(kiln::Error::InvalidName { .. })
    ));
    assert_eq!(store.list().unwrap(), ["a", "b"]);
}

fn summary(d: &[kiln::DocDiff]) -> Vec<(String, &'static str)> {
    d.iter().map(|x| (x.id.clone(), x.kind())).collect()
}

#[test]
fn diff_between_forks_points_in_history_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts(4)).unwrap();
    let main = store.create(Some("main")).unwrap();
    main.bulk(
        &(0..300)
            .map(|i| json!({"_id": format!("k{i:03}"), "v": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let fork = store.fork("main", Some("fork")).unwrap();
    assert!(main.diff(None, &fork, None).unwrap().is_empty());
    fork.put(&json!({"_id": "k005", "v": "changed"})).unwrap();
    fork.del("k100").unwrap();
    fork.put(&json!({"_id": "new", "v": 1})).unwrap();
    // Same contents written again is no difference.
    fork.put(&json!({"_id": "k200", "v": 200})).unwrap();
    let d = main.diff(None, &fork, None).unwrap();
    assert_eq!(
        summary(&d),
        [
            ("k005".to_owned(), "changed"),
            ("k100".to_owned(), "deleted"),
            ("new".to_owned(), "added")
        ]
    );
    assert_eq!(d[0].before.as_ref().unwrap()["v"], 5);
    assert_eq!(d[0].after.as_ref().unwrap()["v"], "changed");
    let back = fork.diff(None, &main, None).unwrap();
    assert_eq!(
        summary(&back),
        [
            ("k005".to_owned(), "changed"),
            ("k100".to_owned(), "added"),
            ("new".to_owned(), "deleted")
        ]
    );
    // Points in one database's history, before and after compaction dropped their trees.
    let e1 = main.put(&json!({"_id": "k001", "v": "x"})).unwrap().event;
    main.del("k002").unwrap();
    let e3 = main.put(&json!({"_id": "k003", "v": "y"})).unwrap().event;
    let want = vec![
        ("k002".to_owned(), "deleted"),
        ("k003".to_owned(), "changed"),
    ];
    assert_eq!(
        summary(&main.diff(Some(&e1), &main, Some(&e3)).unwrap()),
        want
    );
    for k in 0..20 {
        main.put(&json!({"_id": format!("later{k}")})).unwrap();
    }
    main.compact_full().unwrap();
    assert_eq!(
        summary(&main.diff(Some(&e1), &main, Some(&e3)).unwrap()),
        want
    );
    // Databases created apart (different keys) compare too.
    let other = store.create(Some("other")).unwrap();
    other.put(&json!({"_id": "k000", "v": 0})).unwrap();
    let d = other.diff(None, &fork, None).unwrap();
    assert_eq!(d.len(), 300 - 1 + 1 - 1); // fork: 299 k-docs + "new"; other: k000 (equal)
    assert!(d.iter().all(|x| x.kind() == "added"));
    assert!(matches!(
        main.diff(Some(&kiln::Cid::of_cbor(b"no")), &fork, None),
        Err(kiln::Error::NoSuchEvent(..))
    ));
}
