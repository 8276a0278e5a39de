//! The S3 remote against a real S3-compatible server on loopback: s3s-fs, installed into the
//! checkout by `scripts/s3-server.sh --install` (or named by `KILN_S3S_FS`). Each test starts a
//! server of its own on a free port, with a fresh data folder, and stops it after. Without the
//! binary these tests fail: they are the only check of the S3 remote.
//!
//! s3s-fs keeps a bucket as a folder of its data folder and an object as a file in it, so a
//! test makes its bucket with `mkdir`, and can look at (and under) the objects as files.

use kiln_sync::{
    probe, sync, Conflict, FileName, HeadRead, Kind, ProbeError, Remote, S3Remote, SyncOptions,
};
use serde_json::json;
use std::path::Path;
use std::process::Command;

use kiln_sync::testing::S3sFs as Server;

fn name(b: &[u8]) -> FileName {
    // Any 32 bytes name a file here; the sync layer checks names against contents.
    let mut n = [0u8; 32];
    for (i, x) in b.iter().enumerate() {
        n[i % 32] ^= *x;
    }
    n[31] = b.len() as u8;
    FileName(n)
}

/// s3s-fs 0.14.1 checks a PUT's `If-None-Match: *` or `If-Match` and then writes, with no lock
/// in between: writers racing on one version can all win. The probe must refuse such a
/// server (a sync through it could lose writes), and it does. When this test fails because the
/// probe passed, the server has made its conditional writes atomic: make this test assert that
/// the probe passes.
#[test]
fn probe_refuses_s3s_fs_racy_conditional_writes() {
    let s = Server::start();
    let r = s.open("probed");
    for round in 0..10 {
        match probe(&r) {
            Ok(()) => eprintln!("round {round}: the probe passed"),
            Err(ProbeError::NotHonest(why)) => {
                eprintln!("round {round}: the probe refused s3s-fs: {why}");
                assert!(why.contains("racing"), "{why}");
                return;
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    panic!(
        "the probe passed 10 rounds against s3s-fs: its conditional writes held against racing \
         writers (atomic now?)"
    );
}

#[test]
fn conditional_writes_and_reads() {
    let s = Server::start();
    let r = s.open("heads");
    assert_eq!(r.read_head("notes", None).unwrap(), HeadRead::Absent);
    let e1 = r.write_head("notes", None, b"one").unwrap().unwrap();
    // Create-only over a record: refused, naming the record's version.
    assert_eq!(
        r.write_head("notes", None, b"again").unwrap(),
        Err(Conflict {
            now: Some(e1.clone())
        })
    );
    let e2 = r.write_head("notes", Some(&e1), b"two").unwrap().unwrap();
    assert_ne!(e1, e2);
    // On a stale version: refused.
    assert_eq!(
        r.write_head("notes", Some(&e1), b"stale").unwrap(),
        Err(Conflict {
            now: Some(e2.clone())
        })
    );
    // The same bytes again make a new version (the random bytes in front).
    let e3 = r.write_head("notes", Some(&e2), b"two").unwrap().unwrap();
    assert_ne!(e2, e3);
    assert!(r.write_head("notes", Some(&e2), b"x").unwrap().is_err());
    // Unchanged: not modified, in one request.
    let before = r.requests();
    assert_eq!(
        r.read_head("notes", Some(&e3)).unwrap(),
        HeadRead::NotModified
    );
    assert_eq!(r.requests() - before, 1);
    assert_eq!(
        r.read_head("notes", Some(&e1)).unwrap(),
        HeadRead::Found {
            bytes: b"two".to_vec(),
            etag: e3.clone()
        }
    );
    // A delete on a stale version is refused; on the current one it leaves a tombstone that
    // reads and lists as absent.
    assert!(r.delete_head("notes", &e2).unwrap().is_err());
    r.delete_head("notes", &e3).unwrap().unwrap();
    assert_eq!(r.read_head("notes", None).unwrap(), HeadRead::Absent);
    assert_eq!(r.read_head("notes", Some(&e3)).unwrap(), HeadRead::Absent);
    assert!(r.list_heads().unwrap().is_empty());
    assert!(r.write_head("notes", Some(&e3), b"gone").unwrap().is_err());
    assert!(r.delete_head("notes", &e3).unwrap().is_err());
    // A create replaces the tombstone; the record is new.
    let e4 = r.write_head("notes", None, b"four").unwrap().unwrap();
    assert!(r.write_head("notes", None, b"again").unwrap().is_err());
    assert_eq!(
        r.read_head("notes", None).unwrap(),
        HeadRead::Found {
            bytes: b"four".to_vec(),
            etag: e4.clone()
        }
    );
    // Names that are not database ids never reach the server.
    assert!(r.read_head("../x", None).is_err());
    assert!(r.write_head(".hidden", None, b"x").is_err());
}

/// Writers racing on one version (`If-Match`) and on none (`If-None-Match: *`): at least one
/// wins each race on any server; on s3s-fs 0.14.1 several do (see
/// [`probe_refuses_s3s_fs_racy_conditional_writes`]).
#[test]
fn racing_conditional_writes() {
    let s = Server::start();
    let r = s.open("race");
    let mut several = 0;
    for round in 0..20 {
        let db = format!("race{round}");
        let base = r.write_head(&db, None, b"base").unwrap().unwrap();
        let wins: Vec<bool> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let (r, db, base) = (&r, &db, &base);
                    sc.spawn(move || {
                        let bytes = format!("w{i}");
                        if i % 2 == 0 {
                            r.write_head(db, Some(base), bytes.as_bytes())
                        } else {
                            r.write_head(&format!("{db}-new"), None, bytes.as_bytes())
                        }
                        .unwrap()
                        .is_ok()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let swaps = wins.iter().step_by(2).filter(|w| **w).count();
        let creates = wins.iter().skip(1).step_by(2).filter(|w| **w).count();
        assert!(swaps >= 1 && creates >= 1, "round {round}: nobody won");
        if swaps > 1 || creates > 1 {
            several += 1;
        }
        eprintln!("round {round}: {swaps} of 4 swaps and {creates} of 4 creates won");
    }
    eprintln!("rounds with several winners: {several} of 20");
    assert!(
        several > 0,
        "every race had one winner: s3s-fs's conditional writes are atomic now?"
    );
}

#[test]
fn files_put_get_list_delete() {
    let s = Server::start();
    let r = s.open("files");
    let (a, b) = (name(b"alpha"), name(b"beta"));
    assert!(!r.has_file(Kind::Diff, &a).unwrap());
    r.put_file(Kind::Diff, &a, b"alpha").unwrap();
    r.put_file(Kind::Diff, &a, b"alpha").unwrap(); // again: nothing changes
    r.put_file(Kind::FileSet, &b, b"beta").unwrap();
    assert!(r.has_file(Kind::Diff, &a).unwrap());
    assert!(!r.has_file(Kind::FileSet, &a).unwrap());
    assert_eq!(
        r.get_file(Kind::Diff, &a).unwrap().as_deref(),
        Some(&b"alpha"[..])
    );
    assert_eq!(r.get_file(Kind::FileSet, &a).unwrap(), None);
    assert_eq!(r.get_file(Kind::Diff, &b).unwrap(), None);
    let listed = r.list_files(Kind::Diff).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, a);
    assert!(listed[0].1 < 60, "age {}", listed[0].1);
    // The folder remote's layout: files/ab/<hash>.kdf.
    let h = a.to_string();
    assert_eq!(
        std::fs::read(s.folder("files").join(format!("files/{}/{h}.kdf", &h[..2]))).unwrap(),
        b"alpha"
    );
    r.delete_file(Kind::Diff, &a).unwrap();
    r.delete_file(Kind::Diff, &a).unwrap(); // absent: fine
    assert!(r.list_files(Kind::Diff).unwrap().is_empty());
    assert!(!r.has_file(Kind::Diff, &a).unwrap());
    assert_eq!(r.list_files(Kind::FileSet).unwrap().len(), 1);
    // Reopened: the same remote.
    let r = s.open("files/");
    assert_eq!(
        r.get_file(Kind::FileSet, &b).unwrap().as_deref(),
        Some(&b"beta"[..])
    );
}

#[test]
fn listings_page_by_a_thousand() {
    let s = Server::start();
    let r = s.open("many");
    let mut names: Vec<FileName> = (0..1003u32).map(|i| name(&i.to_le_bytes())).collect();
    std::thread::scope(|sc| {
        for chunk in names.chunks(251) {
            let r = &r;
            sc.spawn(move || {
                for n in chunk {
                    r.put_file(Kind::FileSet, n, b"x").unwrap();
                }
            });
        }
    });
    names.sort();
    let before = r.requests();
    let listed: Vec<FileName> = r
        .list_files(Kind::FileSet)
        .unwrap()
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(r.requests() - before, 2, "two LIST requests for 1,003 keys");
    assert_eq!(listed, names);
}

#[test]
fn list_heads_lists_records_not_tombstones() {
    let s = Server::start();
    let r = s.open("list/heads");
    let mut want = Vec::new();
    for db in ["b-2", "a", "a.b", "a-b", "c_3"] {
        let e = r.write_head(db, None, db.as_bytes()).unwrap().unwrap();
        want.push((db.to_owned(), e));
    }
    let gone = r.write_head("gone", None, b"x").unwrap().unwrap();
    r.delete_head("gone", &gone).unwrap().unwrap();
    want.sort_by(|x, y| x.0.cmp(&y.0));
    let before = r.requests();
    let got = r.list_heads().unwrap();
    let n = r.requests() - before;
    assert_eq!(got, want);
    // One LIST; a server that leaves ETags out of its listings (s3s-fs 0.14.1 does) costs a
    // HEAD per record too.
    assert!(n == 1 || n == 1 + want.len() as u64, "{n} requests");
    eprintln!("list_heads of {} records: {n} requests", want.len());
    for (db, e) in &want {
        assert_eq!(r.read_head(db, Some(e)).unwrap(), HeadRead::NotModified);
    }
}

/// Layout 2: files as the folder remote keeps them, a head record per replica
/// (`heads/<db>/<replica>.head`), listed by database in one request.
#[test]
fn the_layout_keeps_a_head_record_per_replica() {
    let s = Server::start();
    let r = s.open("same");
    assert!(r.per_replica_heads());
    let marker = std::fs::read_to_string(s.folder("same").join("KILN-REMOTE")).unwrap();
    assert_eq!(marker.trim(), r#"{"kiln_remote": 2}"#);
    let a = name(b"alpha");
    r.put_file(Kind::Diff, &a, b"alpha").unwrap();
    let (x, y) = (
        kiln_sync::replica_head("notes", "0c4e6d1a-8b1f-4b52-9f0e-2d3c4b5a6978"),
        kiln_sync::replica_head("notes", "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"),
    );
    let ex = r.write_head(&x, None, b"record x").unwrap().unwrap();
    let ey = r.write_head(&y, None, b"record y").unwrap().unwrap();
    r.write_head("other~aaaa", None, b"o").unwrap().unwrap();
    assert!(s
        .folder("same")
        .join("heads/notes/0c4e6d1a-8b1f-4b52-9f0e-2d3c4b5a6978.head")
        .exists());
    // Files where the folder remote keeps them.
    let h = a.to_string();
    assert_eq!(
        std::fs::read(s.folder("same").join(format!("files/{}/{h}.kdf", &h[..2]))).unwrap(),
        b"alpha"
    );
    let before = r.requests();
    assert_eq!(
        r.list_replica_heads("notes").unwrap(),
        vec![(x, ex), (y, ey)]
    );
    // One LIST (a server that leaves ETags out, as s3s-fs does, costs a HEAD per record).
    let n = r.requests() - before;
    assert!(n == 1 || n == 3, "{n}");
    assert_eq!(r.list_heads().unwrap().len(), 3);
    // Names that are not a database's or a replica's are refused.
    for bad in ["notes~", "notes~UPPER", "notes~a/b", "../x~y"] {
        assert!(r.read_head(bad, None).is_err(), "{bad}");
    }
}

#[test]
fn open_checks_the_marker_and_the_config() {
    let s = Server::start();
    // Something else under the prefix: refused.
    std::fs::create_dir_all(s.folder("photos")).unwrap();
    std::fs::write(s.folder("photos").join("cat.jpg"), b"meow").unwrap();
    let e = S3Remote::open("s3://kiln/photos", s.config()).unwrap_err();
    assert!(e.to_string().contains("not a kiln remote"), "{e}");
    assert!(!s.folder("photos").join("KILN-REMOTE").exists());
    // A newer layout: refused.
    std::fs::create_dir_all(s.folder("newer")).unwrap();
    std::fs::write(
        s.folder("newer").join("KILN-REMOTE"),
        b"{\"kiln_remote\": 3}\n",
    )
    .unwrap();
    let e = S3Remote::open("s3://kiln/newer", s.config()).unwrap_err();
    assert!(e.to_string().contains("upgrade kiln"), "{e}");
    // Layout 1 (one record per database, by compare-and-swap): refused, saying what to do.
    std::fs::create_dir_all(s.folder("older")).unwrap();
    std::fs::write(
        s.folder("older").join("KILN-REMOTE"),
        b"{\"kiln_remote\": 1}\n",
    )
    .unwrap();
    let e = S3Remote::open("s3://kiln/older", s.config()).unwrap_err();
    assert!(e.to_string().contains("make a new remote"), "{e}");
    // A damaged marker: refused.
    std::fs::create_dir_all(s.folder("damaged")).unwrap();
    std::fs::write(s.folder("damaged").join("KILN-REMOTE"), b"hello").unwrap();
    let e = S3Remote::open("s3://kiln/damaged", s.config()).unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    // The bucket's root can be a remote; a remote opens again in one request.
    let e = S3Remote::open("s3://kiln2", s.config()).unwrap_err();
    assert!(e.to_string().contains("does the bucket kiln2 exist"), "{e}");
    std::fs::create_dir_all(s.data.join("kiln2")).unwrap();
    let root = S3Remote::open("s3://kiln2", s.config()).unwrap();
    assert_eq!(
        root.location(),
        format!("s3://kiln2?endpoint={}", s.endpoint)
    );
    assert!(s.data.join("kiln2/KILN-REMOTE").is_file());
    let again = S3Remote::open("s3://kiln2/", s.config()).unwrap();
    assert_eq!(again.requests(), 1);
    // Wrong credentials: a clear error, not a hang.
    let mut bad = s.config();
    bad.secret_key = Some("wrong".into());
    let e = S3Remote::open("s3://kiln2", bad).unwrap_err();
    assert!(e.to_string().contains("s3://kiln2"), "{e}");
    // Bad configurations fail before any request.
    let mut none = s.config();
    none.access_key = None;
    let e = S3Remote::open("s3://kiln2", none).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
    let mut https_only = s.config();
    https_only.allow_http = false;
    let e = S3Remote::open("s3://kiln2", https_only).unwrap_err();
    assert!(e.to_string().contains("plain HTTP"), "{e}");
    for url in [
        "kiln2",
        "s3://",
        "s3:///x",
        "s3://kiln2/a//b",
        "s3://kiln2/a/../b",
        "s3://kiln2/50%",
        "s3://kiln2/a b",
    ] {
        let e = S3Remote::open(url, s.config()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{url}: {e}");
    }
}

fn docs(db: &kiln::Database) -> Vec<serde_json::Value> {
    db.docs(&kiln::ListOptions::default()).unwrap()
}

#[test]
fn two_replicas_sync_through_s3() {
    let s = Server::start();
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    {
        let a = kiln::Store::open_with(&a_dir, kiln::Options::default()).unwrap();
        let db = a.create(Some("notes")).unwrap();
        db.put(&json!({"_id": "start"})).unwrap();
    }
    // The second replica: a copy of the store (the same lineage and key).
    let st = Command::new("cp")
        .arg("-a")
        .arg(&a_dir)
        .arg(&b_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let a = kiln::Store::open_with(&a_dir, kiln::Options::default()).unwrap();
    let b = kiln::Store::open_with(&b_dir, kiln::Options::default()).unwrap();
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    let remote = s.open("team");
    // (No probe: a bucket remote keeps a head record per replica and relies on no
    // compare-and-swap, so s3s-fs, whose conditional writes are not atomic, serves.)
    let opts = SyncOptions::default();

    da.put(&json!({"_id": "a1", "by": "a"})).unwrap();
    db.put(&json!({"_id": "b1", "by": "b"})).unwrap();
    let r = sync(&a, &da, &remote, "notes", opts).unwrap();
    assert!(r.pushed, "{r:?}");
    let r = sync(&b, &db, &remote, "notes", opts).unwrap();
    assert!(r.merged.is_some() && r.pushed, "{r:?}");
    let r = sync(&a, &da, &remote, "notes", opts).unwrap();
    assert!(r.adopted, "{r:?}");
    assert_eq!(docs(&da), docs(&db));
    assert_eq!(docs(&da).len(), 3);

    // b has yet to see a's record (written when a adopted b's merge): one more look each.
    sync(&b, &db, &remote, "notes", opts).unwrap();
    // Nothing changed: one request (a listing of the database's two records; s3s-fs leaves
    // ETags out of listings, which costs a HEAD per record).
    for (s, d) in [(&a, &da), (&b, &db)] {
        let before = remote.requests();
        let r = sync(s, d, &remote, "notes", opts).unwrap();
        assert!(r.is_noop(), "{r:?}");
        assert_eq!(r.requests, 1, "{r:?}");
        assert!(matches!(remote.requests() - before, 1 | 3), "{r:?}");
    }

    // A change, a delete, across a fresh handle on the remote.
    da.put(&json!({"_id": "a2", "n": 2})).unwrap();
    da.del("start").unwrap();
    sync(&a, &da, &remote, "notes", opts).unwrap();
    let remote2 = s.open("team");
    let r = sync(&b, &db, &remote2, "notes", opts).unwrap();
    assert!(r.adopted && r.files_pulled > 0, "{r:?}");
    assert_eq!(docs(&da), docs(&db));
    let ids: Vec<String> = docs(&db)
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["a1", "a2", "b1"]);
    assert!(db.verify().unwrap().ok());
    // A record per replica, each named by its replica id.
    let heads: Vec<String> = remote
        .list_heads()
        .unwrap()
        .into_iter()
        .map(|h| h.0)
        .collect();
    let mut want = vec![
        kiln_sync::replica_head("notes", &kiln_sync::replica_id(&a).unwrap()),
        kiln_sync::replica_head("notes", &kiln_sync::replica_id(&b).unwrap()),
    ];
    want.sort();
    assert_eq!(heads, want);
    assert!(!remote.list_files(Kind::Diff).unwrap().is_empty());
}

/// Three replicas write and sync at the same time through s3s-fs, whose conditional writes are
/// not atomic: with a head record per replica nothing relies on them, so no write is lost.
/// After a few quiet rounds all three hold every write, the same state, and verify; a remote gc
/// then keeps every file a replica's record names.
#[test]
fn replicas_racing_through_a_bucket_lose_nothing() {
    let s = Server::start();
    let d = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| d.path().join(format!("r{i}"))).collect();
    {
        let a = kiln::Store::open_with(&dirs[0], kiln::Options::default()).unwrap();
        a.create(Some("notes"))
            .unwrap()
            .put(&json!({"_id": "start"}))
            .unwrap();
    }
    for dir in &dirs[1..] {
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&dirs[0])
            .arg(dir)
            .status()
            .unwrap()
            .success());
    }
    const ROUNDS: usize = 6;
    std::thread::scope(|sc| {
        for (i, dir) in dirs.iter().enumerate() {
            let remote = s.open("race");
            sc.spawn(move || {
                let store = kiln::Store::open_with(dir, kiln::Options::default()).unwrap();
                let db = store.open_db("notes").unwrap();
                for k in 0..ROUNDS {
                    db.put(&json!({"_id": format!("r{i}-{k}"), "n": k}))
                        .unwrap();
                    if k % 2 == 1 {
                        db.compact().unwrap();
                    }
                    // A lost race is not an error here: nothing relies on one.
                    sync(&store, &db, &remote, "notes", SyncOptions::default()).unwrap();
                }
            });
        }
    });
    let remote = s.open("race");
    let stores: Vec<_> = dirs
        .iter()
        .map(|d| kiln::Store::open_with(d, kiln::Options::default()).unwrap())
        .collect();
    let dbs: Vec<_> = stores.iter().map(|s| s.open_db("notes").unwrap()).collect();
    for _ in 0..3 {
        for (st, db) in stores.iter().zip(&dbs) {
            sync(st, db, &remote, "notes", SyncOptions::default()).unwrap();
        }
    }
    for (st, db) in stores.iter().zip(&dbs) {
        let r = sync(st, db, &remote, "notes", SyncOptions::default()).unwrap();
        assert!(r.is_noop(), "{r:?}");
    }
    let want = docs(&dbs[0]);
    assert_eq!(want.len(), 1 + 3 * ROUNDS);
    for db in &dbs {
        assert_eq!(docs(db), want);
        assert!(db.verify().unwrap().ok());
    }
    // A remote gc (no grace) keeps every file the records name: a fresh replica pulls whole.
    kiln_sync::gc_remote(&remote, std::time::Duration::ZERO).unwrap();
    let f = kiln::Store::open_with(d.path().join("fresh"), kiln::Options::default()).unwrap();
    let key = stores[0].export_key("notes", None).unwrap();
    f.import_key("notes", &key, None).unwrap();
    let fdb = f.open_db("notes").unwrap();
    let opts = SyncOptions {
        files: kiln_sync::FileSets::All,
        ..SyncOptions::default()
    };
    sync(&f, &fdb, &remote, "notes", opts).unwrap();
    assert_eq!(docs(&fdb), want);
    assert!(fdb.verify().unwrap().ok());
    for st in &stores {
        st.gc().unwrap();
    }
    for (st, db) in stores.iter().zip(&dbs) {
        let r = sync(st, db, &remote, "notes", SyncOptions::default()).unwrap();
        assert!(r.is_noop(), "{r:?}");
        assert!(db.verify().unwrap().ok());
    }
}

/// `sync_many` through a bucket: one listing tells which databases' records changed; the
/// unchanged cost nothing more, a database another replica changed gets a sync.
#[test]
fn syncing_many_through_a_bucket_lists_once() {
    let s = Server::start();
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    {
        let a = kiln::Store::open_with(&a_dir, kiln::Options::default()).unwrap();
        for n in ["n0", "n1", "n2"] {
            a.create(Some(n)).unwrap().put(&json!({"_id": n})).unwrap();
        }
    }
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&a_dir)
        .arg(&b_dir)
        .status()
        .unwrap()
        .success());
    let remote = s.open("many");
    let stores = [
        kiln::Store::open_with(&a_dir, kiln::Options::default()).unwrap(),
        kiln::Store::open_with(&b_dir, kiln::Options::default()).unwrap(),
    ];
    let names = ["n0", "n1", "n2"];
    let handles: Vec<Vec<kiln::Database>> = stores
        .iter()
        .map(|s| names.iter().map(|n| s.open_db(n).unwrap()).collect())
        .collect();
    let all = |i: usize| -> Vec<kiln_sync::SyncReport> {
        let pairs: Vec<(&kiln::Database, &str)> = handles[i].iter().zip(names).collect();
        kiln_sync::sync_many(&stores[i], &pairs, &remote, SyncOptions::default())
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect()
    };
    for _ in 0..3 {
        all(0);
        all(1);
    }
    for i in 0..2 {
        let rs = all(i);
        let requests: usize = rs.iter().map(|r| r.requests).sum();
        assert_eq!(requests, 1, "{rs:?}");
    }
    handles[0][1].put(&json!({"_id": "changed"})).unwrap();
    all(0);
    let rs = all(1);
    assert!(rs[0].is_noop() && rs[2].is_noop(), "{rs:?}");
    assert!(rs[1].adopted, "{rs:?}");
    assert!(handles[1][1].get("changed").unwrap().is_some());
}

/// The bucket fixture (`tests/fixtures/bucket-v2`, docs/format.md "An S3-compatible bucket"):
/// layout 2 as s3s-fs keeps it (a bucket's objects as files), holding database "notes" as one
/// replica's record (`heads/notes/<replica>.head`: the sync fixture's record) with its diff files
/// and file-set. The sync fixture's empty replica syncs from it through S3 and reads exactly the
/// expected documents and attached file; then writes, pushes its own record beside it, and a
/// second empty replica takes in the union.
#[test]
fn the_bucket_fixture_syncs_into_a_replica() {
    let s = Server::start();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        assert!(Command::new("cp")
            .arg("-a")
            .arg(from.join("."))
            .arg(to)
            .status()
            .unwrap()
            .success());
    };
    copy(&root.join("bucket-v2"), &s.folder("fixture"));
    let d = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    for i in 0..2 {
        let dir = d.path().join(format!("replica{i}"));
        copy(&root.join("sync-v1/replica"), &dir);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("keys"), std::fs::Permissions::from_mode(0o700)).unwrap();
        replicas.push(dir);
    }
    let remote = s.open("fixture");
    let all = SyncOptions {
        files: kiln_sync::FileSets::All,
        ..SyncOptions::default()
    };
    let store = kiln::Store::open(&replicas[0]).unwrap();
    let db = store.open_db("notes").unwrap();
    let rep = sync(&store, &db, &remote, "notes", all).unwrap();
    assert!(
        rep.adopted && rep.files_pulled == 3 && rep.filesets_pulled == 1,
        "{rep:?}"
    );
    let expected: Vec<serde_json::Value> =
        std::fs::read_to_string(root.join("sync-v1/expected.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(docs(&db), expected);
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut db.open_file("with-file", "hello.txt").unwrap(),
        &mut text,
    )
    .unwrap();
    assert_eq!(text, "hello, remote");
    assert!(db.verify().unwrap().ok());
    // Its own record beside the fixture's; a second replica takes in both.
    db.put(&json!({"_id": "from-replica0"})).unwrap();
    sync(&store, &db, &remote, "notes", all).unwrap();
    assert_eq!(remote.list_replica_heads("notes").unwrap().len(), 2);
    let store1 = kiln::Store::open(&replicas[1]).unwrap();
    let db1 = store1.open_db("notes").unwrap();
    sync(&store1, &db1, &remote, "notes", all).unwrap();
    assert_eq!(docs(&db1), docs(&db));
}

#[test]
fn batches_keep_their_promises() {
    let s = Server::start();
    kiln_sync::testing::check_batches(&s.open("batches"));
}

/// A new replica's first sync fetches the files another replica's record names and then writes
/// its own record naming the same files: it looks none of them up before (a record just read
/// names them), and checks each once after (a remote gc may have removed one meanwhile).
#[test]
fn a_new_replica_looks_files_up_once() {
    let s = Server::start();
    let d = tempfile::tempdir().unwrap();
    let opts = kiln::Options {
        background_compaction: false,
        ..kiln::Options::default()
    };
    let a = kiln::Store::open_with(d.path().join("a"), opts.clone()).unwrap();
    let da = a.create(Some("notes")).unwrap();
    for i in 0..12 {
        // Large enough to be a diff file of its own each (not inlined in the head record).
        da.put(&json!({"_id": format!("d{i}"), "text": "x".repeat(80_000)}))
            .unwrap();
    }
    let remote = s.open("fresh");
    let r = sync(&a, &da, &remote, "notes", SyncOptions::default()).unwrap();
    let files = r.files_pushed;
    assert!(r.pushed && files >= 12, "{r:?}");

    let b = kiln::Store::open_with(d.path().join("b"), opts).unwrap();
    b.import_key("notes", &a.export_key("notes", None).unwrap(), None)
        .unwrap();
    let db = b.open_db("notes").unwrap();
    let r = sync(&b, &db, &remote, "notes", SyncOptions::default()).unwrap();
    assert!(r.adopted && r.pushed, "{r:?}");
    assert_eq!((r.files_pulled, r.files_pushed), (files, 0), "{r:?}");
    // A listing; a's record read and its files fetched; b's own record looked for, written,
    // and its files checked once.
    assert_eq!(r.requests, 1 + (1 + files) + (1 + 1 + files), "{r:?}");
    assert_eq!(db.info().unwrap().docs, 12);
}
