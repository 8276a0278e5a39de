//! The sync of one database through a folder remote: what it promises beyond convergence
//! (`replicas.rs`): cheap when nothing changed, an untrusted remote's tricks refused, files on
//! demand, a new replica from an exported key.

use kiln::{Attachment, ListOptions, Options, Store};
use kiln_sync::{sync, FileSets, FolderRemote, Kind, Remote, RemoteFiles, SyncError, SyncOptions};
use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

fn copy(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn opts() -> Options {
    Options {
        background_compaction: false,
        ..Options::default()
    }
}

/// A store with database `notes` (one document) and a copy of it: two replicas.
fn two(d: &Path) -> (Store, Store) {
    {
        let a = Store::open_with(d.join("a"), opts()).unwrap();
        a.create(Some("notes"))
            .unwrap()
            .put(&json!({"_id": "start"}))
            .unwrap();
    }
    copy(&d.join("a"), &d.join("b"));
    (
        Store::open_with(d.join("a"), opts()).unwrap(),
        Store::open_with(d.join("b"), opts()).unwrap(),
    )
}

const ALL: SyncOptions = SyncOptions {
    pull: true,
    push: true,
    files: FileSets::All,
};

#[test]
fn a_sync_with_nothing_new_is_one_request() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = two(d.path());
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    for i in 0..20 {
        da.put(&json!({"_id": format!("a{i}")})).unwrap();
    }
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    sync(&b, &db, &remote, "notes", ALL).unwrap();
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    for (s, x) in [(&a, &da), (&b, &db)] {
        let r = sync(s, x, &remote, "notes", ALL).unwrap();
        assert_eq!(r.requests, 1, "{r:?}");
        assert!(r.is_noop(), "{r:?}");
    }
    assert_eq!(
        da.docs(&ListOptions::default()).unwrap(),
        db.docs(&ListOptions::default()).unwrap()
    );
    // One commit: pushed with a few requests (the new diff, the record).
    da.put(&json!({"_id": "one more"})).unwrap();
    let r = sync(&a, &da, &remote, "notes", ALL).unwrap();
    assert!(r.pushed && r.files_pushed == 1, "{r:?}");
    assert!(r.requests <= 4, "{r:?}");
    let r = sync(&b, &db, &remote, "notes", ALL).unwrap();
    assert!(r.adopted && r.files_pulled == 1, "{r:?}");
    assert!(r.requests <= 3, "{r:?}");
}

#[test]
fn a_forks_record_does_not_pass_for_its_source() {
    let d = tempfile::tempdir().unwrap();
    let (a, _b) = two(d.path());
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let main = a.open_db("notes").unwrap();
    let fork = a.fork("notes", Some("fork")).unwrap();
    fork.put(&json!({"_id": "only in the fork"})).unwrap();
    sync(&a, &fork, &remote, "fork", ALL).unwrap();
    // The remote moves the fork's record to its source's id (same lineage, same key).
    let rec = match remote.read_head("fork", None).unwrap() {
        kiln_sync::HeadRead::Found { bytes, .. } => bytes,
        _ => panic!(),
    };
    assert!(remote.write_head("notes", None, &rec).unwrap().is_ok());
    let e = sync(&a, &main, &remote, "notes", ALL).unwrap_err();
    assert!(
        e.to_string().contains("does not open as this database's"),
        "{e}"
    );
    assert!(main.get("only in the fork").unwrap().is_none());
    // The fork's files are there once (shared on the remote when the source pushes too).
    let files_before = remote.list_files(Kind::Diff).unwrap().len();
    let d2 = tempfile::tempdir().unwrap();
    let remote2 = FolderRemote::open(d2.path().join("r")).unwrap();
    sync(&a, &main, &remote2, "notes", ALL).unwrap();
    sync(&a, &fork, &remote2, "fork", ALL).unwrap();
    let shared = remote2.list_files(Kind::Diff).unwrap().len();
    assert_eq!(
        shared, files_before,
        "the fork's push shares its source's files"
    );
}

#[test]
fn a_damaged_or_swapped_file_is_refused_and_nothing_is_taken_in() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = two(d.path());
    let root = d.path().join("remote");
    let remote = FolderRemote::open(&root).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    sync(&b, &db, &remote, "notes", ALL).unwrap();
    let before_push = walk(&root.join("files"));
    da.put(&json!({"_id": "new", "v": "x".repeat(500)}))
        .unwrap();
    let r = sync(&a, &da, &remote, "notes", ALL).unwrap();
    assert_eq!(r.files_pushed, 1);
    // Flip a byte of the new file on the remote.
    let new: Vec<_> = walk(&root.join("files"))
        .into_iter()
        .filter(|p| !before_push.contains(p))
        .collect();
    assert_eq!(new.len(), 1);
    let mut bytes = std::fs::read(&new[0]).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&new[0], bytes).unwrap();
    let before = db.heads().unwrap();
    let e = sync(&b, &db, &remote, "notes", ALL).unwrap_err();
    assert!(e.to_string().contains("do not hash to its name"), "{e}");
    assert_eq!(db.heads().unwrap(), before);
    assert!(db.get("new").unwrap().is_none());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_remote_that_rolls_back_is_reported_and_not_taken() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = two(d.path());
    let root = d.path().join("remote");
    let remote = FolderRemote::open(&root).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    let old = std::fs::read(root.join("heads/notes.head")).unwrap();
    da.put(&json!({"_id": "later"})).unwrap();
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    sync(&b, &db, &remote, "notes", ALL).unwrap();
    assert!(db.get("later").unwrap().is_some());
    // The remote shows the older record again (its bytes as they were: a replay).
    std::fs::write(root.join("heads/notes.head"), &old).unwrap();
    let e = sync(&b, &db, &remote, "notes", ALL).unwrap_err();
    assert!(matches!(e, SyncError::Rollback(_)), "{e}");
    assert!(db.get("later").unwrap().is_some());
    // And a writer never pushes on it.
    db.put(&json!({"_id": "b's"})).unwrap();
    assert!(matches!(
        sync(&b, &db, &remote, "notes", ALL).unwrap_err(),
        SyncError::Rollback(_)
    ));
    assert_eq!(std::fs::read(root.join("heads/notes.head")).unwrap(), old);
}

#[test]
fn attached_files_come_on_demand_or_all() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = two(d.path());
    let root = d.path().join("remote");
    let remote = FolderRemote::open(&root).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    da.put_with_files(
        &json!({"_id": "photo"}),
        vec![Attachment::bytes("a.bin", &big)],
    )
    .unwrap();
    let r = sync(&a, &da, &remote, "notes", SyncOptions::default()).unwrap();
    assert_eq!(r.filesets_pushed, 1, "{r:?}");
    // Pulled without the bytes: the document and its `_files` are here, the bytes are not.
    let r = sync(&b, &db, &remote, "notes", SyncOptions::default()).unwrap();
    assert_eq!(r.filesets_pulled, 0);
    assert_eq!(db.files("photo").unwrap().len(), 1);
    assert!(db.open_file("photo", "a.bin").is_err());
    // Read through the remote: fetched (and kept) on first read.
    b.set_fileset_source(Some(Arc::new(RemoteFiles(
        FolderRemote::open(&root).unwrap(),
    ))));
    let mut got = Vec::new();
    db.open_file("photo", "a.bin")
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, big);
    b.set_fileset_source(None);
    got.clear();
    db.open_file("photo", "a.bin")
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, big, "kept after the first read");
    // A third replica takes them all; --no-files pushes none.
    copy(&d.path().join("a"), &d.path().join("c"));
    let c = Store::open_with(d.path().join("c"), opts()).unwrap();
    let dc = c.open_db("notes").unwrap();
    dc.put_with_files(
        &json!({"_id": "doc"}),
        vec![Attachment::bytes("b.txt", b"hello")],
    )
    .unwrap();
    let none = SyncOptions {
        files: FileSets::None,
        ..SyncOptions::default()
    };
    let r = sync(&c, &dc, &remote, "notes", none).unwrap();
    assert_eq!(r.filesets_pushed, 0);
    let r = sync(&a, &da, &remote, "notes", ALL).unwrap();
    assert_eq!(r.filesets_pulled, 0, "the remote never got c's file-set");
    assert!(da.open_file("doc", "b.txt").is_err());
}

#[test]
fn a_new_replica_starts_from_an_exported_key() {
    let d = tempfile::tempdir().unwrap();
    let a = Store::open_with(d.path().join("a"), opts()).unwrap();
    let da = a.create(Some("notes")).unwrap();
    for i in 0..50 {
        da.put(&json!({"_id": format!("d{i:02}"), "v": i})).unwrap();
    }
    da.compact().unwrap();
    da.put(&json!({"_id": "last"})).unwrap();
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    let key = a.export_key("notes", None).unwrap();
    // Another machine: an empty store, the key, a sync.
    let b = Store::open_with(d.path().join("b"), opts()).unwrap();
    assert!(b.import_key("notes", &key, None).unwrap());
    let db = b.open_db("notes").unwrap();
    assert!(db.heads().unwrap().is_empty());
    let r = sync(&b, &db, &remote, "notes", ALL).unwrap();
    assert!(r.adopted && !r.pushed, "{r:?}");
    assert_eq!(
        da.docs(&ListOptions::default()).unwrap(),
        db.docs(&ListOptions::default()).unwrap()
    );
    assert_eq!(da.heads().unwrap(), db.heads().unwrap());
    assert!(db.verify().unwrap().ok());
    // Without the key, another store cannot open what it pulled.
    let c = Store::open_with(d.path().join("c"), opts()).unwrap();
    let other = c.create(Some("notes")).unwrap();
    let e = sync(&c, &other, &remote, "notes", ALL).unwrap_err();
    assert!(e.to_string().contains("another lineage"), "{e}");
}

#[test]
fn a_push_without_pull_is_refused_when_the_remote_moved_on() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = two(d.path());
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    sync(&b, &db, &remote, "notes", ALL).unwrap();
    da.put(&json!({"_id": "a"})).unwrap();
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    db.put(&json!({"_id": "b"})).unwrap();
    let push = SyncOptions { pull: false, ..ALL };
    assert!(matches!(
        sync(&b, &db, &remote, "notes", push).unwrap_err(),
        SyncError::NeedsPull(_)
    ));
    // Pull only: takes a's write in, pushes nothing.
    let pull = SyncOptions { push: false, ..ALL };
    let r = sync(&b, &db, &remote, "notes", pull).unwrap();
    assert!(r.merged.is_some() && !r.pushed, "{r:?}");
    let r = sync(&b, &db, &remote, "notes", push).unwrap();
    assert!(r.pushed, "{r:?}");
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    assert_eq!(da.heads().unwrap(), db.heads().unwrap());
}

#[test]
fn syncing_many_databases_lists_once_and_syncs_only_the_changed() {
    let d = tempfile::tempdir().unwrap();
    let a = Store::open_with(d.path().join("a"), opts()).unwrap();
    let names: Vec<String> = (0..60).map(|i| format!("db{i:02}")).collect();
    for n in &names {
        a.create(Some(n))
            .unwrap()
            .put(&json!({"_id": "x", "db": n}))
            .unwrap();
    }
    drop(a);
    copy(&d.path().join("a"), &d.path().join("b"));
    let (a, b) = (
        Store::open_with(d.path().join("a"), opts()).unwrap(),
        Store::open_with(d.path().join("b"), opts()).unwrap(),
    );
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let handles = |s: &Store| {
        names
            .iter()
            .map(|n| s.open_db(n).unwrap())
            .collect::<Vec<_>>()
    };
    let (ha, hb) = (handles(&a), handles(&b));
    fn pairs<'a>(
        h: &'a [kiln::Database],
        names: &'a [String],
    ) -> Vec<(&'a kiln::Database, &'a str)> {
        h.iter().zip(names).map(|(d, n)| (d, n.as_str())).collect()
    }
    let total = |rs: &[Result<kiln_sync::SyncReport, SyncError>]| {
        rs.iter()
            .map(|r| r.as_ref().unwrap().requests)
            .sum::<usize>()
    };
    kiln_sync::sync_many(&a, &pairs(&ha, &names), &remote, ALL).unwrap();
    kiln_sync::sync_many(&b, &pairs(&hb, &names), &remote, ALL).unwrap();
    // Nothing changed: one listing.
    let rs = kiln_sync::sync_many(&b, &pairs(&hb, &names), &remote, ALL).unwrap();
    assert_eq!(total(&rs), 1);
    // Two changed on a: b lists, then syncs those two.
    ha[3].put(&json!({"_id": "y"})).unwrap();
    ha[40].put(&json!({"_id": "y"})).unwrap();
    let rs = kiln_sync::sync_many(&a, &pairs(&ha, &names), &remote, ALL).unwrap();
    assert_eq!(rs.iter().filter(|r| r.as_ref().unwrap().pushed).count(), 2);
    let rs = kiln_sync::sync_many(&b, &pairs(&hb, &names), &remote, ALL).unwrap();
    assert_eq!(rs.iter().filter(|r| r.as_ref().unwrap().adopted).count(), 2);
    assert!(total(&rs) <= 1 + 2 * 3, "{}", total(&rs));
    assert!(hb[40].get("y").unwrap().is_some());
}

/// A sync tells how its transfers go: for each step, counts that only grow up to the total,
/// ending at it, with the bytes the report gives.
#[test]
fn progress_is_told_step_by_step() {
    use kiln_sync::{sync_with_progress, Step};
    let d = tempfile::tempdir().unwrap();
    let (a, b) = two(d.path());
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    for i in 0..12 {
        da.put_with_files(
            &json!({"_id": format!("a{i}")}),
            vec![Attachment::bytes("f", format!("file {i}").as_bytes())],
        )
        .unwrap();
    }
    let seen = std::cell::RefCell::new(Vec::new());
    let tell = |p: &kiln_sync::Progress| {
        assert_eq!(p.db, "notes");
        seen.borrow_mut().push((p.step, p.done, p.total, p.bytes));
    };
    let check = |step: Step, files: usize, bytes: u64| {
        let s: Vec<_> = seen
            .borrow()
            .iter()
            .filter(|x| x.0 == step)
            .copied()
            .collect();
        assert!(!s.is_empty(), "{step:?}: nothing told");
        for w in s.windows(2) {
            assert!(w[0].1 <= w[1].1 && w[0].3 <= w[1].3, "{s:?}");
        }
        let last = s.last().unwrap();
        assert_eq!((last.1, last.2), (last.2, files.max(last.2)), "{s:?}");
        assert_eq!(last.3, bytes, "{s:?}");
        assert!(s.iter().all(|x| x.1 <= x.2), "{s:?}");
    };
    let r = sync_with_progress(&a, &da, &remote, "notes", ALL, &tell).unwrap();
    check(Step::Push, r.files_pushed, r.bytes_pushed);
    let pushed_sets: Vec<_> = seen
        .borrow()
        .iter()
        .filter(|x| x.0 == Step::PushFileSets)
        .copied()
        .collect();
    assert_eq!(pushed_sets.last().unwrap().1, 12, "{pushed_sets:?}");
    seen.borrow_mut().clear();
    let r = sync_with_progress(&b, &db, &remote, "notes", ALL, &tell).unwrap();
    check(Step::Pull, r.files_pulled, r.bytes_pulled);
    let pulled_sets: Vec<_> = seen
        .borrow()
        .iter()
        .filter(|x| x.0 == Step::PullFileSets)
        .copied()
        .collect();
    assert_eq!(
        pulled_sets.last().unwrap().1,
        r.filesets_pulled,
        "{pulled_sets:?}"
    );
    assert_eq!(r.filesets_pulled, 12);
}

/// Indexes are not synced: each replica brings its own up to date from what a sync brought
/// in, mapping only the documents that came (and a subscriber hears the synced commits).
#[test]
fn an_index_takes_in_what_a_sync_brings_and_is_never_uploaded() {
    use kiln::index::{IndexDef, Query};
    let d = tempfile::tempdir().unwrap();
    let (a, b) = two(d.path());
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    da.bulk(
        &(0..500)
            .map(|i| json!({"_id": format!("a{i:03}"), "n": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    da.create_index("n", IndexDef::fields(["n"])).unwrap();
    assert_eq!(da.update_index("n").unwrap().mapped, 501); // and "start"
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    // Nothing of the index went up: the remote holds the database's live files only.
    assert!(da.indexes().unwrap()[0].files >= 1);
    let live: Vec<_> = da.info().unwrap().files.iter().map(|f| f.name).collect();
    for (f, _) in remote.list_files(Kind::Diff).unwrap() {
        assert!(
            live.contains(&f),
            "{f} on the remote is not one of the database's files"
        );
    }
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    assert_eq!(db.update_index("n").unwrap().mapped, 1); // "start"
    let mut sub = db.subscribe().unwrap();
    sync(&b, &db, &remote, "notes", ALL).unwrap();
    let up = db.update_index("n").unwrap();
    assert_eq!((up.mapped, up.full), (500, false));
    assert_eq!(
        db.query("n", &Query::range(json!(10), json!(12)))
            .unwrap()
            .len(),
        3
    );
    let heard = sub.try_recv().unwrap().expect("the synced commit");
    assert_eq!(heard.docs.len(), 500);
    // A write on A, synced over: one map call on B.
    da.put(&json!({"_id": "a007", "n": -7})).unwrap();
    sync(&a, &da, &remote, "notes", ALL).unwrap();
    sync(&b, &db, &remote, "notes", ALL).unwrap();
    assert_eq!(db.update_index("n").unwrap().mapped, 1);
    assert_eq!(db.query("n", &Query::key(json!(-7))).unwrap()[0].id, "a007");
}
