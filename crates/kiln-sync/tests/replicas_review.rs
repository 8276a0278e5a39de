//! Scenarios a second review of the replica sync wrote (each failed on the design it reviewed):
//! a merge purging this side's own winning write, metadata not pushed or lost on adoption,
//! disk growth once synced, an unfinished purge's mark dropped by an adoption or its versions
//! uploaded, another process compacting during a first sync, a purge taken in leaving its
//! attachment, damaged sync memory, and cut history (which no longer travels between
//! replicas that both wrote).
#![allow(clippy::needless_range_loop)]

use kiln::{Options, Store};
use kiln_sync::{sync, FileSets, FolderRemote, SyncOptions};
use serde_json::json;
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

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn opts(bg: bool) -> Options {
    Options {
        background_compaction: bg,
        compact_threshold: env_u64("THRESH", 4) as usize,
        ..Options::default()
    }
}

/// Opens the store anew (as another process would) and reads everything, then verifies.
fn fresh(dir: &Path, name: &str) -> Result<Vec<serde_json::Value>, String> {
    let s = Store::open_with(dir, opts(false)).map_err(|e| e.to_string())?;
    let db = s.open_db(name).map_err(|e| e.to_string())?;
    let d = db
        .docs(&kiln::ListOptions::default())
        .map_err(|e| format!("docs: {e}"))?;
    db.log(None).map_err(|e| format!("log: {e}"))?;
    let v = db.verify().map_err(|e| format!("verify: {e}"))?;
    if !v.ok() {
        return Err(format!("verify problems: {:?}", v.problems));
    }
    Ok(d)
}

struct Two {
    _d: tempfile::TempDir,
    a_dir: std::path::PathBuf,
    b_dir: std::path::PathBuf,
    a: Store,
    b: Store,
    da: kiln::Database,
    db: kiln::Database,
    remote: FolderRemote,
}

fn two_with(o: Options) -> Two {
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    {
        let a = Store::open_with(&a_dir, o.clone()).unwrap();
        let db = a.create(Some("notes")).unwrap();
        db.put(&json!({"_id": "start"})).unwrap();
    }
    copy(&a_dir, &b_dir);
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let (a, b) = (
        Store::open_with(&a_dir, o.clone()).unwrap(),
        Store::open_with(&b_dir, o).unwrap(),
    );
    let (da, db) = (a.open_db("notes").unwrap(), b.open_db("notes").unwrap());
    Two {
        _d: d,
        a_dir,
        b_dir,
        a,
        b,
        da,
        db,
        remote,
    }
}

fn two(bg: bool) -> Two {
    two_with(opts(bg))
}

const ALL: SyncOptions = SyncOptions {
    pull: true,
    push: true,
    files: FileSets::All,
};

fn keys_of(dir: &Path) -> Vec<kiln::Key> {
    kiln::audit::keys_of(dir).unwrap()
}

/// B writes a version and purges it; A, concurrently, writes the same body (same CID) later
/// (its write wins the merge). A's as-is merge must not purge A's own live version.
#[test]
fn x1_their_purge_of_a_version_we_wrote_concurrently() {
    let t = two(false);
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    // B: write d, purge it, push.
    t.db.put(&json!({"_id": "d", "v": 1})).unwrap();
    t.db.purge("d").unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    // A: concurrently, two other writes, then d with the same body (higher height: wins).
    t.da.put(&json!({"_id": "x"})).unwrap();
    t.da.put(&json!({"_id": "y"})).unwrap();
    t.da.put(&json!({"_id": "d", "v": 1})).unwrap();
    let before = t.da.get("d");
    assert!(before.is_ok(), "{before:?}");
    let r = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    eprintln!("a sync: merged {:?}", r.merged.as_ref().map(|m| &m.changed));
    let got = t.da.get("d");
    let v = t.da.verify().unwrap();
    assert!(
        got.is_ok(),
        "A's own write of d (the merge's winner) is gone after the sync: {got:?}; verify {:?}",
        v.problems
    );
}

/// The database's metadata "travels with it" (db/meta.rs): a change alone is never pushed.
#[test]
fn x4_metadata_change_is_never_pushed() {
    let t = two(false);
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let mut m = serde_json::Map::new();
    m.insert("title".into(), "Lunch plans".into());
    t.da.set_meta(&m).unwrap();
    let ra = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let mb = t.db.meta().unwrap();
    assert_eq!(
        mb.get("title"),
        Some(&json!("Lunch plans")),
        "B's metadata after A set it and both synced (A pushed: {})",
        ra.pushed
    );
}

/// B's metadata, set locally, is dropped without a word when B adopts A's state.
#[test]
fn x4b_local_metadata_lost_on_adoption() {
    let t = two(false);
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let mut m = serde_json::Map::new();
    m.insert("title".into(), "B's title".into());
    t.db.set_meta(&m).unwrap();
    t.da.put(&json!({"_id": "a1"})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let mb = t.db.meta().unwrap();
    let ma = t.da.meta().unwrap();
    assert_eq!(
        mb.get("title"),
        Some(&json!("B's title")),
        "B's own metadata after adopting A's state (A's: {ma:?})"
    );
}

fn disk(dir: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let files = dir.join("files");
    for shard in std::fs::read_dir(&files).unwrap() {
        let shard = shard.unwrap();
        let name = shard.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !shard.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path()).unwrap() {
            let f = f.unwrap();
            let len = f.metadata().unwrap().len();
            if len > 0 {
                n += 1;
                bytes += len;
            }
        }
    }
    (n, bytes)
}

/// Space on disk: once a database syncs, its lineage is shared, compaction never removes
/// what it replaced, and nothing runs gc: the store grows with every compaction.
#[test]
fn x5_disk_grows_without_bound_once_synced() {
    let t = two(false);
    let solo_dir = t.a_dir.parent().unwrap().join("solo");
    copy(&t.a_dir, &solo_dir);
    let solo_s = Store::open_with(&solo_dir, opts(false)).unwrap();
    let solo = solo_s.open_db("notes").unwrap();
    let mut x = 1u64;
    for r in 0..env_u64("X5_ROUNDS", 30) {
        let docs: Vec<_> = (0..20)
            .map(|j| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                json!({"_id": format!("k{j:02}"), "r": r, "pad": format!("{x:016x}").repeat(40)})
            })
            .collect();
        t.da.bulk(&docs).unwrap();
        solo.bulk(&docs).unwrap();
        t.da.compact().unwrap();
        solo.compact().unwrap();
        sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
        sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    }
    let (ia, is) = (t.da.info().unwrap(), solo.info().unwrap());
    let (na, ba) = disk(&t.a_dir);
    let (ns, bs) = disk(&solo_dir);
    eprintln!(
        "A: live {} bytes in {} files, on disk {ba} in {na}; solo: live {} in {}, on disk {bs} in {ns}",
        ia.bytes,
        ia.files.len(),
        is.bytes,
        is.files.len()
    );
    assert!(
        ba < 3 * bs,
        "A holds {ba} bytes on disk in {na} files (live {}), solo {bs} in {ns}",
        ia.bytes
    );
}

/// A purge left unfinished (its gc could not run), pushed; the other replica finishes it and
/// pushes the scrubbed layout; A adopts that (same events) and with it `scrub = false`: the
/// files A retired, holding the purged version, are left on disk and nothing removes them.
#[test]
fn x6_adoption_clears_an_unfinished_purge_mark() {
    let o = Options {
        lock_timeout: std::time::Duration::from_millis(200),
        ..opts(false)
    };
    let t = two_with(o.clone());
    t.da.put(&json!({"_id": "secret", "text": "PURGED-MARKER-7f3a"}))
        .unwrap();
    t.da.put(&json!({"_id": "other"})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    {
        // Another process on A's store holds gc off: the purge commits, its gc times out.
        let p2 = Store::open_with(&t.a_dir, o.clone()).unwrap();
        let hold = p2.hold_files().unwrap();
        let r = t.da.purge("secret");
        eprintln!("purge: {:?}", r.as_ref().err().map(|e| e.to_string()));
        drop(hold);
    }
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let ra = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    eprintln!("a sync: adopted {} pushed {}", ra.adopted, ra.pushed);
    let keys = keys_of(&t.a_dir);
    let found = kiln::audit::find(&t.a_dir, &keys, b"PURGED-MARKER-7f3a").unwrap();
    let v = t.da.verify().unwrap();
    eprintln!("A verify ok {} problems {:?}", v.ok(), v.problems);
    let live: Vec<_> =
        t.da.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name.to_string())
            .collect();
    eprintln!(
        "found in live files: {}",
        found.iter().any(|f| live
            .iter()
            .any(|n| f.path.to_string_lossy().contains(n.as_str())))
    );
    {
        let gc_dir = t.a_dir.parent().unwrap().join("a-gc");
        copy(&t.a_dir, &gc_dir);
        Store::open_with(&gc_dir, o.clone()).unwrap().gc().unwrap();
        let after = kiln::audit::find(&gc_dir, &keys, b"PURGED-MARKER-7f3a").unwrap();
        eprintln!("in a copy of A's store after a gc: {after:?}");
    }
    assert!(
        found.is_empty(),
        "the purged version is still stored in A's store after its syncs: {found:?}"
    );
}

/// The first sync of a copied store, step by step as `sync` does them, while another process
/// on the same store compacts (the lineage is marked shared only inside `take_in`): the
/// files it retires become its spares, the adopted head names them, and its next commit
/// overwrites one.
#[test]
fn x8_other_process_compacts_during_the_first_sync() {
    use kiln_sync::{HeadRead, Kind, Remote};
    let o = Options {
        compact_threshold: 100,
        ..opts(false)
    };
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    {
        let a = Store::open_with(&a_dir, o.clone()).unwrap();
        a.create(Some("notes")).unwrap();
    }
    // Process 1 on A writes three small diffs (its own files), then A is copied to B.
    let p1 = Store::open_with(&a_dir, o.clone()).unwrap();
    let d1 = p1.open_db("notes").unwrap();
    for i in 0..3 {
        d1.put(&json!({"_id": format!("s{i}")})).unwrap();
    }
    copy(&a_dir, &b_dir);
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    {
        let b = Store::open_with(&b_dir, o.clone()).unwrap();
        let db = b.open_db("notes").unwrap();
        db.put(&json!({"_id": "b"})).unwrap();
        sync(&b, &db, &remote, "notes", ALL).unwrap();
    }
    // Process 2 on A.
    let p2 = Store::open_with(&a_dir, o.clone()).unwrap();
    let d2 = p2.open_db("notes").unwrap();
    // P2 syncs: reads the remote's record, holds gc off, brings what its head lacks...
    let HeadRead::Found { bytes, .. } = remote.read_head("notes", None).unwrap() else {
        panic!("no remote head")
    };
    let theirs = d2.open_replica("notes", &bytes).unwrap();
    let hold = p2.hold_files().unwrap();
    let bring = || {
        let names = d2.replica_files_to_bring(&theirs).unwrap();
        for name in &names {
            let b = remote.get_file(Kind::Diff, name).unwrap().unwrap();
            p2.keep_fetched_file(kiln::FileKind::Diff, name, &b)
                .unwrap();
        }
        names
    };
    let mut brought = bring();
    // ... meanwhile P1 compacts (the lineage is not marked shared yet).
    eprintln!(
        "p1 files before compaction {:?}",
        d1.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
    );
    d1.compact_full().unwrap();
    eprintln!(
        "p1 files after compaction {:?}",
        d1.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
    );
    // P2 takes the replica in.
    // (As `sync` does: another process retired a file meanwhile, so it brings them again.)
    let r = loop {
        match d2.take_in(&theirs, &brought, None) {
            Err(kiln::Error::Changed(_)) => brought = bring(),
            x => break x.unwrap(),
        }
    };
    eprintln!("take_in: {r:?}");
    eprintln!(
        "adopted files {:?}",
        d2.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
    );
    eprintln!("on disk {:?}", disk(&a_dir));
    drop(hold);
    // P1 commits (reusing a spare) and exits.
    d1.put(&json!({"_id": "p1"})).unwrap();
    eprintln!("on disk after p1's put {:?}", disk(&a_dir));
    eprintln!(
        "p1 files after put {:?}",
        d1.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
    );
    drop(d1);
    drop(p1);
    drop(d2);
    drop(p2);
    let got = fresh(&a_dir, "notes");
    assert!(got.is_ok(), "A reopened: {got:?}");
}

/// A purge taken in from a replica: the purged version's attached file (pulled with
/// `FileSets::All`) stays in the store (the local purge's "file-sets of purged versions go
/// now" list is only filled by a local purge; gc keeps unnamed file-sets for an hour).
#[test]
fn x10_adopted_purge_leaves_the_attachment() {
    let t = two(false);
    t.da.put_with_files(
        &json!({"_id": "secret"}),
        vec![kiln::Attachment::bytes("s.txt", b"ATTACHED-SECRET-91c2")],
    )
    .unwrap();
    t.da.put(&json!({"_id": "other"})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let keys = keys_of(&t.b_dir);
    assert!(!kiln::audit::find(&t.b_dir, &keys, b"ATTACHED-SECRET-91c2")
        .unwrap()
        .is_empty());
    t.da.purge("secret").unwrap();
    assert!(
        kiln::audit::find(&t.a_dir, &keys_of(&t.a_dir), b"ATTACHED-SECRET-91c2")
            .unwrap()
            .is_empty()
    );
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    let r = sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    eprintln!("b: adopted {}", r.adopted);
    t.b.gc().unwrap();
    let found = kiln::audit::find(&t.b_dir, &keys, b"ATTACHED-SECRET-91c2").unwrap();
    assert!(
        found.is_empty(),
        "B still stores the purged attachment after taking the purge in (and a gc): {found:?}"
    );
}

/// The memory of a sync is written without fsync; a `.record` left empty (a power cut after
/// the rename, or any damage) with its `.json` intact makes every later sync fail while the
/// remote does not change ("losing them costs a sync a full comparison, never data").
#[test]
fn x11_damaged_sync_memory_fails_every_sync() {
    let t = two(false);
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    let mut recs = Vec::new();
    for sub in std::fs::read_dir(t.a_dir.join("sync")).unwrap() {
        let sub = sub.unwrap().path();
        if !sub.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "record") {
                recs.push(f);
            }
        }
    }
    assert_eq!(recs.len(), 1, "{recs:?}");
    std::fs::write(&recs[0], b"").unwrap();
    t.da.put(&json!({"_id": "a1"})).unwrap();
    let mut errs = Vec::new();
    for _ in 0..2 {
        if let Err(e) = sync(&t.a, &t.da, &t.remote, "notes", ALL) {
            errs.push(e.to_string());
        }
    }
    assert!(
        errs.is_empty(),
        "syncs after the memory's record was lost: {errs:?}"
    );
}

/// A purge whose gc could not run yet (scrub mark set), then a sync: the unchanged-remote path
/// pushes at once, uploading the files that still hold the purged version (never pushed
/// before the purge) to the remote.
#[test]
fn x12_unfinished_purge_uploads_the_purged_version() {
    let o = Options {
        lock_timeout: std::time::Duration::from_millis(200),
        ..opts(false)
    };
    let t = two_with(o.clone());
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    t.da.put(&json!({"_id": "secret", "text": "NEVER-PUSHED-5b1e"}))
        .unwrap();
    t.da.put(&json!({"_id": "other"})).unwrap();
    {
        let p2 = Store::open_with(&t.a_dir, o.clone()).unwrap();
        let hold = p2.hold_files().unwrap();
        let r = t.da.purge("secret");
        eprintln!("purge: {:?}", r.as_ref().err().map(|e| e.to_string()));
        drop(hold);
    }
    let r = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    eprintln!("a sync: pushed {} files {}", r.pushed, r.files_pushed);
    let remote_dir = t.a_dir.parent().unwrap().join("remote");
    let found = kiln::audit::find(&remote_dir, &keys_of(&t.a_dir), b"NEVER-PUSHED-5b1e").unwrap();
    assert!(
        found.is_empty(),
        "a version purged before it was ever pushed is on the remote: {found:?}"
    );
}

/// Cuts and sync (the review's x2, x3, x7, x9: a cut that traveled, or did not, lost history
/// or left replicas that could never sync again): a synced database's history cannot be cut;
/// a copy cut before its first sync and one not cut are refused with a clear error; a new
/// replica takes the cut state whole, cut included (a reopen keeps it).
#[test]
fn x2_cuts_do_not_travel_between_replicas_that_both_wrote() {
    let t = two(false);
    let mut evs = Vec::new();
    for i in 0..6 {
        evs.push(
            t.da.put(&json!({"_id": format!("d{i}"), "v": i}))
                .unwrap()
                .event,
        );
    }
    // Cut before its first sync: allowed.
    t.da.drop_history_before(&evs[4]).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    // Synced: no more cuts.
    let e = t.da.drop_history_before(&evs[5]).unwrap_err();
    assert!(e.to_string().contains("syncs with a remote"), "{e}");
    // B, a copy from before the cut: refused, and told what to do.
    let before = t.db.log(None).unwrap().len();
    let e = sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap_err();
    assert!(e.to_string().contains("start this replica anew"), "{e}");
    assert_eq!(t.db.log(None).unwrap().len(), before);
    // A new replica takes the cut state whole; a reopen reads the same.
    let key = t.a.export_key("notes", None).unwrap();
    let c_dir = t.a_dir.parent().unwrap().join("c");
    {
        let c = Store::open_with(&c_dir, opts(false)).unwrap();
        c.import_key("notes", &key, None).unwrap();
        let dc = c.open_db("notes").unwrap();
        sync(&c, &dc, &t.remote, "notes", ALL).unwrap();
        assert_eq!(dc.log(None).unwrap().len(), t.da.log(None).unwrap().len());
        assert!(dc.get_at("d0", &evs[0]).is_err());
    }
    let got = fresh(&c_dir, "notes").unwrap();
    assert_eq!(got, t.da.docs(&kiln::ListOptions::default()).unwrap());
    let c = Store::open_with(&c_dir, opts(false)).unwrap();
    let dc = c.open_db("notes").unwrap();
    assert_eq!(dc.log(None).unwrap().len(), t.da.log(None).unwrap().len());
}
