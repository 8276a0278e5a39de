//! The store hands out open database handles again, keeps a bounded number open, and closes
//! them with the store. One test function: it counts this process's file descriptors, which
//! tests running beside it on other threads would change.

use kiln::{Durability, Options, Store};
use serde_json::json;

/// Descriptors open in this process, but for data files (`files/`): the store keeps up to 256
/// of those open for reads, shared by all its databases.
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| !p.to_string_lossy().contains("/files/"))
        .count()
}

#[test]
fn open_handles_are_shared_bounded_and_closed_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        durability: Durability::Buffered,
        open_databases: 8,
        ..Options::default()
    };
    let base = fds();
    let store = Store::open_with(dir.path(), opts.clone()).unwrap();
    for i in 0..20 {
        let db = store.create(Some(&format!("room-{i}"))).unwrap();
        db.put(&json!({"_id": "title", "t": i})).unwrap();
    }
    assert_eq!(store.open_handles(), 8);
    let with_store = fds();
    // The same database opened again and again: one handle, no new descriptors.
    for _ in 0..100 {
        let db = store.open_db("room-3").unwrap();
        assert_eq!(db.get("title").unwrap().unwrap()["t"], 3);
    }
    // (Background threads open and close a descriptor now and then: bounds, not equalities.)
    assert!(fds() <= with_store + 1, "{} > {}", fds(), with_store + 1);
    // Many databases in turn: at most the cap stays open.
    for _ in 0..3 {
        for i in 0..20 {
            let db = store.open_db(&format!("room-{i}")).unwrap();
            db.put(&json!({"_id": "seen", "by": i})).unwrap();
        }
    }
    assert_eq!(store.open_handles(), 8);
    assert!(fds() <= with_store + 3, "{} > {}", fds(), with_store + 3);
    // A handle the program keeps stays good after the cache lets it go.
    let kept = store.open_db("room-0").unwrap();
    for i in 1..20 {
        store.open_db(&format!("room-{i}")).unwrap();
    }
    assert_eq!(kept.get("seen").unwrap().unwrap()["by"], 0);
    drop(kept);
    // A database dropped and created again under its name is not the cached handle.
    let old = store.open_db("room-19").unwrap();
    drop(old);
    store.drop_db("room-19").unwrap();
    store.create(Some("room-19")).unwrap();
    assert_eq!(
        store.open_db("room-19").unwrap().get("title").unwrap(),
        None
    );
    // Another store's drop of a cached database: the handle no longer reads, so it is not
    // handed out.
    let other = Store::open_with(dir.path(), opts.clone()).unwrap();
    store.open_db("room-18").unwrap();
    other.drop_db("room-18").unwrap();
    other.create(Some("room-18")).unwrap();
    drop(other);
    assert_eq!(
        store.open_db("room-18").unwrap().get("title").unwrap(),
        None
    );
    // With every Store clone gone, what it kept is closed.
    let clone = store.clone();
    drop(store);
    assert_eq!(
        clone
            .open_db("room-1")
            .unwrap()
            .get("title")
            .unwrap()
            .unwrap()["t"],
        1
    );
    drop(clone);
    assert!(fds() <= base + 1, "{} > {}", fds(), base + 1);
    // 0: every call opens anew.
    let fresh = Store::open_with(
        dir.path(),
        Options {
            open_databases: 0,
            ..opts
        },
    )
    .unwrap();
    let a = fresh.open_db("room-1").unwrap();
    let before = fds();
    let b = fresh.open_db("room-1").unwrap();
    assert!(fds() > before);
    drop((a, b));
}
