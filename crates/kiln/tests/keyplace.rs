//! Where a store keeps its keys (issue 17: keys must not ride along when the store's folder is
//! copied or synced by another tool): outside the folder by default, an older store's keys moved
//! out when it is first opened for writing (resuming a move that was cut short), a store made to
//! keep them in its folder keeps them there, and a copied store gets a keybag of its own.

use kiln::{KeyPlace, Options, Store};
use serde_json::json;
use std::path::{Path, PathBuf};

fn opts(home: &Path) -> Options {
    Options {
        keys: KeyPlace::Outside(Some(home.to_path_buf())),
        background_compaction: false,
        ..Options::default()
    }
}

fn in_store() -> Options {
    Options {
        keys: KeyPlace::InStore,
        background_compaction: false,
        ..Options::default()
    }
}

/// Every file under `dir` whose name ends with `ext`.
fn files_ending(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_ending(&p, ext));
        } else if p.to_string_lossy().ends_with(ext) {
            out.push(p);
        }
    }
    out
}

fn marker(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("KILN")).unwrap()).unwrap()
}

fn copy(from: &Path, to: &Path) {
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

/// A store made with its keys in its folder, then marked as a store of format 1 (whose layout
/// that is: keys and shared marks in `ROOT/keys/`), with a database and a fork of it.
fn old_store(root: &Path) {
    let s = Store::open_with(root, in_store()).unwrap();
    let db = s.create(Some("notes")).unwrap();
    db.put(&json!({"_id": "n1", "text": "hello"})).unwrap();
    s.fork("notes", Some("draft")).unwrap();
    s.create(Some("other"))
        .unwrap()
        .put(&json!({"_id": "o"}))
        .unwrap();
    drop((db, s));
    std::fs::write(root.join("KILN"), br#"{"kiln_store":1}"#).unwrap();
}

fn s_keys(root: &Path, home: &Path) -> PathBuf {
    home.join(marker(root)["id"].as_str().unwrap())
}

fn read_back(s: &Store) {
    assert_eq!(
        s.open_db("notes").unwrap().get("n1").unwrap().unwrap()["text"],
        "hello"
    );
    assert!(s.open_db("draft").unwrap().get("n1").unwrap().is_some());
    assert!(s.open_db("other").unwrap().get("o").unwrap().is_some());
}

#[test]
fn a_new_store_keeps_no_key_in_its_folder() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    s.create(Some("a"))
        .unwrap()
        .put(&json!({"_id": "x"}))
        .unwrap();
    s.fork("a", Some("b")).unwrap();
    assert!(files_ending(&root, ".key").is_empty());
    let m = marker(&root);
    assert_eq!(m["kiln_store"], 2);
    assert_eq!(m["keys"], "outside");
    let id = m["id"].as_str().unwrap();
    assert_eq!(s.keys_dir(), home.path().join(id));
    assert_eq!(files_ending(s.keys_dir(), ".key").len(), 1);
    // The fork's mark is store state: it stays in the store.
    assert_eq!(files_ending(&root.join("keys"), ".shared").len(), 1);
    // The keybag says whose it is.
    let owner = std::fs::read(s.keys_dir().join("OWNER")).unwrap();
    assert_eq!(
        Path::new(std::str::from_utf8(&owner).unwrap()),
        root.canonicalize().unwrap()
    );
    // Another machine (another keys folder): the store opens, its databases have no key.
    let other = tempfile::tempdir().unwrap();
    let e = Store::open_with(&root, opts(other.path()))
        .unwrap()
        .open_db("a")
        .unwrap_err();
    assert!(matches!(e, kiln::Error::MissingKey(..)), "{e}");
    assert!(e.to_string().contains("kiln key import"), "{e}");
}

#[test]
fn an_older_stores_keys_move_out_when_opened_for_writing() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    old_store(&root);
    assert_eq!(files_ending(&root.join("keys"), ".key").len(), 2);
    // A read-only open reads them where they are, and moves nothing.
    let ro = Options {
        read_only: true,
        ..opts(home.path())
    };
    read_back(&Store::open_with(&root, ro).unwrap());
    assert!(root.join("keys").exists());
    assert_eq!(marker(&root), json!({"kiln_store": 1}));
    // Opened for writing: moved.
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    assert!(files_ending(&root, ".key").is_empty());
    assert_eq!(files_ending(s.keys_dir(), ".key").len(), 2);
    assert_eq!(marker(&root)["keys"], "outside");
    read_back(&s);
    // The fork's mark came along: writes in the fork and its source still delete no shared file.
    assert_eq!(files_ending(&root.join("keys"), ".shared").len(), 1);
    for db in ["notes", "draft"] {
        let h = s.open_db(db).unwrap();
        for i in 0..150 {
            h.put(&json!({"_id": format!("{db}{i}")})).unwrap();
        }
        assert!(h.verify().unwrap().ok());
    }
    read_back(&s);
    // gc keeps every key in use.
    drop(s);
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    assert_eq!(s.gc().unwrap().keys_removed, 0);
    read_back(&s);
}

/// A move cut short at each step resumes: after the id was written (the new keybag partly
/// made), and after the marker was rewritten (the old folder still there).
#[test]
fn a_move_cut_short_resumes() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    old_store(&root);
    // Cut after the id: the marker names it, one key of two copied.
    let id = "7b0e5a3c-2f43-4c1e-9a0b-4d5f6e7a8b9c";
    std::fs::write(
        root.join("KILN"),
        format!(r#"{{"kiln_store":1,"id":"{id}"}}"#),
    )
    .unwrap();
    let kb = home.path().join(id);
    std::fs::create_dir_all(&kb).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kb, std::fs::Permissions::from_mode(0o700)).unwrap();
    let first = &files_ending(&root.join("keys"), ".key")[0];
    std::fs::copy(first, kb.join(first.file_name().unwrap())).unwrap();
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    assert_eq!(s.keys_dir(), kb);
    assert_eq!(marker(&root)["id"], id);
    read_back(&s);
    drop(s);
    // Cut after the marker: a key is still there (taken in if need be, then removed).
    let k = files_ending(s_keys(&root, home.path()).as_path(), ".key")[0].clone();
    std::fs::copy(&k, root.join("keys").join(k.file_name().unwrap())).unwrap();
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    assert!(files_ending(&root.join("keys"), ".key").is_empty());
    read_back(&s);
}

#[test]
fn a_store_made_to_keep_its_keys_keeps_them() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    let s = Store::open_with(&root, in_store()).unwrap();
    s.create(Some("a"))
        .unwrap()
        .put(&json!({"_id": "x"}))
        .unwrap();
    drop(s);
    assert_eq!(marker(&root)["keys"], "store");
    // Opened with the default: they stay.
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    assert_eq!(s.keys_dir(), root.join("keys"));
    assert_eq!(files_ending(&root.join("keys"), ".key").len(), 1);
    assert!(s.open_db("a").unwrap().get("x").unwrap().is_some());
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}

/// A copy of a store's folder shares its id; opened for writing, it gets a keybag of its own
/// with the keys copied, so dropping a database and collecting garbage in one never takes a key
/// the other uses. A store that was moved keeps its keybag.
#[test]
fn a_copied_store_gets_a_keybag_of_its_own() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let s = Store::open_with(&a, opts(home.path())).unwrap();
    for n in ["x", "y"] {
        s.create(Some(n)).unwrap().put(&json!({"_id": n})).unwrap();
    }
    drop(s);
    copy(&a, &b);
    let sb = Store::open_with(&b, opts(home.path())).unwrap();
    let sa = Store::open_with(&a, opts(home.path())).unwrap();
    assert_ne!(sa.keys_dir(), sb.keys_dir());
    assert_ne!(marker(&a)["id"], marker(&b)["id"]);
    // Each drops one and collects: the other still reads both.
    sa.drop_db("x").unwrap();
    sa.gc().unwrap();
    sb.drop_db("y").unwrap();
    sb.gc().unwrap();
    assert_eq!(files_ending(sa.keys_dir(), ".key").len(), 1);
    assert_eq!(files_ending(sb.keys_dir(), ".key").len(), 1);
    assert!(sb.open_db("x").unwrap().get("x").unwrap().is_some());
    assert!(sa.open_db("y").unwrap().get("y").unwrap().is_some());
    drop((sa, sb));
    // Moved: the same id, the same keybag, now owned by the new folder.
    let (id, keys) = {
        let s = Store::open_with(&a, opts(home.path())).unwrap();
        (marker(&a)["id"].clone(), s.keys_dir().to_path_buf())
    };
    let c = d.path().join("c");
    std::fs::rename(&a, &c).unwrap();
    let s = Store::open_with(&c, opts(home.path())).unwrap();
    assert_eq!(marker(&c)["id"], id);
    assert_eq!(s.keys_dir(), keys);
    assert!(s.open_db("y").unwrap().get("y").unwrap().is_some());
    let owner = std::fs::read(keys.join("OWNER")).unwrap();
    assert_eq!(
        Path::new(std::str::from_utf8(&owner).unwrap()),
        c.canonicalize().unwrap()
    );
}

/// A store of a newer format, or a marker that does not say where its keys are, is refused.
#[test]
fn markers_newer_or_damaged_are_refused() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    Store::open_with(&root, opts(home.path())).unwrap();
    let m = marker(&root);
    for (bad, want) in [
        (
            json!({"kiln_store": 3, "id": m["id"], "keys": "outside"}),
            "newer kiln",
        ),
        (json!({"kiln_store": 2, "keys": "outside"}), "no id"),
        (
            json!({"kiln_store": 2, "id": "nope", "keys": "outside"}),
            "not a UUID",
        ),
        (
            json!({"kiln_store": 2, "id": m["id"], "keys": "cloud"}),
            "keys is neither",
        ),
    ] {
        std::fs::write(root.join("KILN"), bad.to_string()).unwrap();
        let e = Store::open_with(&root, opts(home.path())).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// A process that opened a format 1 store keeping its keys there (`--keys-in-store`, which
/// the docs say older stores honour: "Older stores keep them there until opened without this
/// flag"; or a process of the kiln before 6a4f9c6) keeps looking for shared marks in
/// `ROOT/keys/`. Another process opening the store with the default moved the marks to
/// `ROOT/lineages/` and removed `ROOT/keys/` (review): the first process then took the lineage
/// for unshared, and its compaction of the source retired files the fork still names. The
/// marks stay in `ROOT/keys/` now.
#[test]
fn a_process_keeping_keys_in_store_loses_the_fork_mark_when_another_moves_keys_out() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    {
        let s = Store::open_with(&root, in_store()).unwrap();
        let db = s.create(Some("notes")).unwrap();
        for i in 0..20 {
            db.put(&json!({"_id": format!("n{i}"), "text": "hello"}))
                .unwrap();
        }
        s.fork("notes", Some("draft")).unwrap();
    }
    std::fs::write(root.join("KILN"), br#"{"kiln_store":1}"#).unwrap();

    // A long-running process that keeps keys in the store.
    let p = Store::open_with(&root, in_store()).unwrap();
    let notes = p.open_db("notes").unwrap();
    // Another process, with the default: the keys and marks move out.
    drop(Store::open_with(&root, opts(home.path())).unwrap());
    assert!(files_ending(&root.join("keys"), ".key").is_empty());
    // The first process goes on writing and compacting its source database.
    for i in 0..20 {
        notes
            .put(&json!({"_id": format!("n{i}"), "text": "changed"}))
            .unwrap();
    }
    notes.compact().unwrap();
    drop(notes);
    drop(p);

    let s = Store::open_with(&root, opts(home.path())).unwrap();
    let draft = s.open_db("draft").unwrap();
    let read = draft.get("n0");
    assert!(
        matches!(&read, Ok(Some(_))),
        "the fork lost its files: {:?}",
        read.as_ref().err().map(|e| e.to_string())
    );
    let v = draft.verify().unwrap();
    assert!(v.ok(), "the fork no longer verifies: {v:?}");
}

/// A store of format 2 with keys outside that still has `ROOT/keys/` (what a move cut short
/// leaves, and what the docs' fix-up on the next open is for) has the folder removed whole,
/// without a look at what it holds: a key there that the keybag outside lacks (one that came
/// back through a folder-sync tool from a machine still on format 1, a process of the older
/// kiln, or a restore from a backup of `keys/`) is deleted, and its database can no longer
/// be read anywhere (review). Now such keys are taken into the keybag, then removed there.
#[test]
fn a_leftover_keys_folder_is_removed_with_keys_the_keybag_lacks() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    let kb;
    let b_key;
    {
        let s = Store::open_with(&root, opts(home.path())).unwrap();
        kb = s.keys_dir().to_path_buf();
        s.create(Some("a"))
            .unwrap()
            .put(&json!({"_id": "x"}))
            .unwrap();
        let before = files_ending(&kb, ".key");
        s.create(Some("b"))
            .unwrap()
            .put(&json!({"_id": "y"}))
            .unwrap();
        b_key = files_ending(&kb, ".key")
            .into_iter()
            .find(|k| !before.contains(k))
            .unwrap();
    }
    // b's key is in the old place only.
    std::fs::create_dir_all(root.join("keys")).unwrap();
    let old = root.join("keys").join(b_key.file_name().unwrap());
    std::fs::rename(&b_key, &old).unwrap();
    // The next open for writing:
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    let key_left = old.exists() || b_key.exists();
    let read = s.open_db("b").and_then(|db| db.get("y"));
    assert!(
        key_left && matches!(read, Ok(Some(_))),
        "b's key was deleted with the leftover folder (key anywhere: {key_left}): {:?}",
        read.err().map(|e| e.to_string())
    );
}

/// Several processes making one store at once (review: each made an id and a keybag, the
/// marker written last won, and the others went on with a keybag no later open looks in): the
/// marker is written only where none is, and a maker that finds one uses it.
#[test]
fn processes_making_one_store_at_once_share_its_keybag() {
    let (d, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = d.path().join("s");
    std::thread::scope(|sc| {
        for i in 0..6 {
            let (root, home) = (&root, home.path());
            sc.spawn(move || {
                let s = Store::open_with(root, opts(home)).unwrap();
                s.create(Some(&format!("t{i}")))
                    .unwrap()
                    .put(&json!({"_id": "x"}))
                    .unwrap();
            });
        }
    });
    let s = Store::open_with(&root, opts(home.path())).unwrap();
    for i in 0..6 {
        assert!(s
            .open_db(&format!("t{i}"))
            .unwrap()
            .get("x")
            .unwrap()
            .is_some());
    }
}
