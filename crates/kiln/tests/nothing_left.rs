//! What interrupted commands leave behind is finished or removed, and one damaged or
//! half-dropped database never blocks the maintenance of the others (issue 12). Kills at every
//! system call of these commands are in `kiln-cli`'s `tests/crash_steps.rs`; these tests build
//! the states such kills leave directly.

use kiln::{Durability, Error, Options, Store};
use serde_json::json;
use std::path::Path;

fn store(dir: &Path) -> Store {
    Store::open_with(
        dir,
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .unwrap()
}

fn keys(root: &Path) -> Vec<kiln::Key> {
    kiln::audit::keys_of(root).unwrap()
}

fn key_files(root: &Path) -> usize {
    std::fs::read_dir(kiln::audit::keys_dir(root).unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".key")
        })
        .count()
}

/// Bug 2: a drop killed between marking LOCK and renaming the folder left a database that
/// `db list` showed but every command called missing, and `gc` and other databases' purges
/// failed for the whole store. The rename is the drop's commit point: the next open takes
/// the mark back (also for a LOCK damaged to all 0xFF bytes).
#[test]
fn a_drop_killed_before_its_rename_never_happened() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = s.create(Some("d")).unwrap();
    d.put(&json!({"_id": "a", "v": 1})).unwrap();
    let o = s.create(Some("o")).unwrap();
    o.put(&json!({"_id": "x", "v": "SECRET"})).unwrap();
    o.put(&json!({"_id": "y", "v": 2})).unwrap();
    drop((d, o));
    std::fs::write(dir.path().join("dbs/d/LOCK"), [0xFF; 16]).unwrap();
    let s = store(dir.path());
    assert_eq!(s.list().unwrap(), ["d", "o"]);
    assert_eq!(s.open_db("d").unwrap().get("a").unwrap().unwrap()["v"], 1);
    assert!(matches!(s.create(Some("d")), Err(Error::DatabaseExists(_))));
    let r = s.gc().unwrap();
    assert!(r.unreadable.is_empty(), "{:?}", r.unreadable);
    // Purge elsewhere commits and finishes.
    let o = s.open_db("o").unwrap();
    o.purge("x").unwrap();
    assert!(kiln::audit::find(dir.path(), &keys(dir.path()), b"SECRET")
        .unwrap()
        .is_empty());
    // The database takes writes, and drops.
    s.open_db("d").unwrap().put(&json!({"_id": "b"})).unwrap();
    std::fs::write(dir.path().join("dbs/d/LOCK"), [0xFF; 16]).unwrap();
    s.drop_db("d").unwrap();
    assert_eq!(s.list().unwrap(), ["o"]);
}

/// Bug 1: a drop killed after its rename left `dbs/.drop-*` (its head record carrying whole
/// documents) and its key for good; killed creates and forks left `dbs/.new-*`. gc finishes
/// them: folders, files and keys.
#[test]
fn gc_finishes_what_killed_drops_creates_and_forks_left() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let d = s.create(Some("d")).unwrap();
    d.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
    d.put(&json!({"_id": "b", "v": 2})).unwrap();
    let o = s.create(Some("o")).unwrap();
    o.put(&json!({"_id": "x"})).unwrap();
    let all = keys(root);
    drop((d, o));
    // What a drop killed right after its rename leaves.
    std::fs::rename(root.join("dbs/d"), root.join("dbs/.drop-0123")).unwrap();
    // What a create killed before its rename leaves: a folder and a key.
    let n = s.create(Some("n")).unwrap();
    drop(n);
    std::fs::rename(root.join("dbs/n"), root.join("dbs/.new-4567")).unwrap();
    assert_eq!(s.list().unwrap(), ["o"]);
    assert_eq!(key_files(root), 3);
    assert!(!kiln::audit::find(root, &all, b"SECRET").unwrap().is_empty());
    let r = s.gc().unwrap();
    assert_eq!((r.leftovers_removed, r.keys_removed), (2, 2));
    assert_eq!(key_files(root), 1);
    assert!(std::fs::read_dir(root.join("dbs")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
    assert!(kiln::audit::find(root, &all, b"SECRET").unwrap().is_empty());
    assert!(s.open_db("o").unwrap().get("x").unwrap().is_some());
}

/// A dropped database's small files went to the reuse pool with their (sealed) bytes: a
/// drop now erases them, so nothing of it is readable even with its key.
#[test]
fn a_drop_leaves_no_byte_readable_even_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let d = s.create(Some("d")).unwrap();
    d.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
    let all = keys(root);
    drop(d);
    s.drop_db("d").unwrap();
    assert_eq!(key_files(root), 0);
    assert!(kiln::audit::find(root, &all, b"SECRET").unwrap().is_empty());
}

/// One database whose head record cannot be read no longer stops gc (exit 4 for the whole
/// store before) nor other databases' purges: it is reported, whatever may be its is kept,
/// and the rest is collected.
#[test]
fn a_damaged_database_does_not_block_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let bad = s.create(Some("bad")).unwrap();
    bad.put(&json!({"_id": "k", "v": 1})).unwrap();
    let bad_files = bad.info().unwrap().files;
    let o = s.create(Some("o")).unwrap();
    o.put(&json!({"_id": "x", "v": "SECRET"})).unwrap();
    o.put(&json!({"_id": "y"})).unwrap();
    drop((bad, o));
    // The damaged head record: its sealed part overwritten, its lineage still readable.
    let hp = root.join("dbs/bad/HEAD");
    let mut h = std::fs::read(&hp).unwrap();
    for b in &mut h[40..] {
        *b ^= 0x55;
    }
    std::fs::write(&hp, h).unwrap();
    let r = s.gc().unwrap();
    assert_eq!(r.unreadable.len(), 1, "{r:?}");
    assert_eq!(r.unreadable[0].0, "bad");
    for f in &bad_files {
        assert!(r.kept_files.contains(&f.name), "its files are kept");
    }
    let o = s.open_db("o").unwrap();
    o.purge("x").unwrap();
    assert!(kiln::audit::find(root, &keys(root), b"SECRET")
        .unwrap()
        .is_empty());
    // Its key stays with it.
    assert_eq!(key_files(root), 2);
}

/// Bug 4: proposals were plaintext JSON (message, reviewer's reason, who) with mode 0644.
/// They are sealed under the target's key, mode 0600.
#[test]
fn proposals_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    s.create(Some("main")).unwrap();
    let f = s.fork("main", Some("f")).unwrap();
    f.put(&json!({"_id": "a"})).unwrap();
    let p = s.propose("f", "main", "SECRET-MESSAGE").unwrap();
    s.reject(&p.id, "SECRET-REASON", "SECRET-WHO").unwrap();
    let path = root.join(format!("proposals/{}.prop", p.id));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for secret in ["SECRET-MESSAGE", "SECRET-REASON", "SECRET-WHO", "main"] {
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    // Readable with the key.
    assert_eq!(s.proposal(&p.id).unwrap().message, "SECRET-MESSAGE");
    let found = kiln::audit::find(root, &keys(root), b"SECRET-REASON").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].how, "proposal");
}

/// `accept` merged whatever the fork held when the moderator accepted, not what was proposed
/// and reviewed. A proposal pins the fork's heads; later commits need an update.
#[test]
fn accept_merges_exactly_the_proposed_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let main = s.create(Some("main")).unwrap();
    main.put(&json!({"_id": "a", "v": 0})).unwrap();
    let f = s.fork("main", Some("f")).unwrap();
    f.put(&json!({"_id": "a", "v": 1})).unwrap();
    let p = s.propose("f", "main", "v1").unwrap();
    let (_, r) = s.review(&p.id).unwrap();
    assert_eq!(r.changed, ["a"]);
    // The fork moves on after review: accepting refuses, and writes nothing.
    f.put(&json!({"_id": "sneaky", "v": 2})).unwrap();
    let before = main.heads().unwrap();
    assert!(matches!(
        s.accept(&p.id, None, "mod"),
        Err(Error::InvalidArgument(m)) if m.contains("changed since")
    ));
    assert!(s.review(&p.id).is_err());
    assert_eq!(main.heads().unwrap(), before);
    assert!(main.get("sneaky").unwrap().is_none());
    // Updated (and reviewed again), it is accepted with what the fork holds now.
    s.update_proposal(&p.id).unwrap();
    let (_, r) = s.review(&p.id).unwrap();
    assert!(r.changed.contains(&"sneaky".to_owned()));
    s.accept(&p.id, None, "mod").unwrap();
    assert_eq!(main.get("sneaky").unwrap().unwrap()["v"], 2);
}

/// A plaintext proposal an older kiln wrote is sealed the first time it is read.
#[test]
fn old_plaintext_proposals_are_sealed_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    s.create(Some("main")).unwrap();
    s.fork("main", Some("f"))
        .unwrap()
        .put(&json!({"_id": "a"}))
        .unwrap();
    std::fs::create_dir_all(root.join("proposals")).unwrap();
    let id = "0190e3c27b1a70008000000000000000";
    std::fs::write(
        root.join(format!("proposals/{id}.json")),
        json!({"v": 1, "id": id, "fork": "f", "to": "main", "message": "SECRET",
            "created": 1, "status": {"state": "open"}})
        .to_string(),
    )
    .unwrap();
    let ps = s.proposals(None, true).unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].message, "SECRET");
    assert!(!root.join(format!("proposals/{id}.json")).exists());
    assert!(kiln::audit::find(root, &[], b"SECRET").unwrap().is_empty());
    // It pinned no heads: it must be updated before review.
    assert!(s.review(id).is_err());
    s.update_proposal(id).unwrap();
    s.review(id).unwrap();
}

/// A purge of an id that was never written (or is purged already) wrote a purge event,
/// rewrote the database and ran gc of the whole store. It is "no such document" now, and
/// writes nothing.
#[test]
fn purging_an_absent_id_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let db = s.create(Some("d")).unwrap();
    db.put(&json!({"_id": "a"})).unwrap();
    let heads = db.heads().unwrap();
    assert!(matches!(
        db.purge("nope"),
        Err(Error::NoSuchDocument { .. })
    ));
    assert_eq!(db.heads().unwrap(), heads);
    db.purge("a").unwrap();
    let heads = db.heads().unwrap();
    assert!(matches!(db.purge("a"), Err(Error::NoSuchDocument { .. })));
    assert_eq!(db.heads().unwrap(), heads);
    // A deleted document's stored versions can still be purged.
    db.put(&json!({"_id": "b", "v": "SECRET"})).unwrap();
    db.del("b").unwrap();
    assert_eq!(db.purge("b").unwrap().versions, 1);
    assert!(kiln::audit::find(dir.path(), &keys(dir.path()), b"SECRET")
        .unwrap()
        .is_empty());
}

/// A proposal whose databases are dropped is garbage: once gc removed the lineage's key (no
/// database uses it), nothing can read it, and gc removes it too.
#[test]
fn gc_removes_proposals_of_dropped_databases() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    s.create(Some("main")).unwrap();
    s.fork("main", Some("f"))
        .unwrap()
        .put(&json!({"_id": "a"}))
        .unwrap();
    s.propose("f", "main", "SECRET").unwrap();
    s.drop_db("f").unwrap();
    s.drop_db("main").unwrap();
    // Forked: the drops left the key to gc.
    assert_eq!(key_files(root), 1);
    let r = s.gc().unwrap();
    assert_eq!((r.keys_removed, r.proposals_removed), (1, 1));
    assert_eq!(
        std::fs::read_dir(root.join("proposals")).unwrap().count(),
        0
    );
}

/// Review: with an archive kept, a drop left every file the database's compactions had
/// archived (its whole history) in `files/.archive/` for good: nothing removed them, and
/// they open under the key the drop removed. A drop removes them before its key; a drop
/// killed before that leaves the key, and gc removes a lineage's archived files with its key.
#[test]
fn a_drop_leaves_nothing_in_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    s.set_settings(&kiln::Settings {
        keep_archive: Some(true),
        ..Default::default()
    })
    .unwrap();
    let o = s.create(Some("o")).unwrap();
    o.put(&json!({"_id": "x", "v": "kept"})).unwrap();
    o.put(&json!({"_id": "y"})).unwrap();
    o.compact().unwrap();
    for name in ["d", "k"] {
        let d = s.create(Some(name)).unwrap();
        d.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
        d.put(&json!({"_id": "b", "v": 2})).unwrap();
        d.compact().unwrap();
    }
    let all = keys(root);
    let archived = || {
        kiln::audit::find(&root.join("files/.archive"), &all, b"SECRET")
            .unwrap()
            .len()
    };
    assert!(archived() > 0);
    s.drop_db("d").unwrap();
    assert_eq!(archived(), 1, "k's are left");
    // What a drop of `k` killed right after its rename leaves: gc finishes it.
    std::fs::rename(root.join("dbs/k"), root.join("dbs/.drop-0123")).unwrap();
    s.gc().unwrap();
    assert_eq!(archived(), 0);
    assert!(kiln::audit::find(root, &all, b"SECRET").unwrap().is_empty());
    // The other database's archive stays.
    assert!(
        !kiln::audit::find(&root.join("files/.archive"), &all, b"kept")
            .unwrap()
            .is_empty()
    );
}

/// Review: a purge lists the versions (block CIDs) of the id, and equal contents share a block;
/// a later write of the same contents (to any id, or brought by a merge) was acknowledged,
/// then read as "purged", reported by `verify` as an unfinished purge, and dropped by the
/// next compaction: data lost. A version written again is stored again: it leaves the list.
#[test]
fn a_write_equal_to_a_purged_version_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = s.create(Some("d")).unwrap();
    d.put(&json!({"_id": "a", "v": 1})).unwrap();
    d.put(&json!({"_id": "z", "v": 2})).unwrap();
    let f = s.fork("d", Some("f")).unwrap();
    d.purge("a").unwrap();
    d.put(&json!({"_id": "b", "v": 1})).unwrap();
    assert_eq!(d.get("b").unwrap().unwrap()["v"], 1);
    d.compact_full().unwrap();
    assert_eq!(d.get("b").unwrap().unwrap()["v"], 1);
    let r = d.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    // Brought by a merge: the fork writes the purged contents under another id.
    d.purge("z").unwrap();
    f.put(&json!({"_id": "y", "v": 2})).unwrap();
    d.merge_from(&f, None).unwrap();
    assert_eq!(d.get("y").unwrap().unwrap()["v"], 2);
    d.compact_full().unwrap();
    assert_eq!(d.get("y").unwrap().unwrap()["v"], 2);
    let r = d.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    // The purges stand.
    assert!(matches!(d.get("a"), Ok(None)));
}

/// Review: gc skipped a database whose open said "no such database" as dropped meanwhile
/// (nothing to keep), but no drop commits while gc holds its lock: a database in place whose
/// LOCK reads as marked in its first half only (damage; only a LOCK all 0xFF was taken back)
/// lost its key and every file to gc, though its head record read fine. Such a LOCK is taken
/// back like a whole mark, and a database gc cannot open while its folder is in place is
/// unreadable (kept), not dropped.
#[test]
fn gc_keeps_a_database_whose_lock_is_half_marked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let d = s.create(Some("d")).unwrap();
    d.put(&json!({"_id": "a", "v": "kept"})).unwrap();
    drop(d);
    let mut lock = [0xFFu8; 16];
    lock[8..].copy_from_slice(&7u64.to_le_bytes());
    std::fs::write(root.join("dbs/d/LOCK"), lock).unwrap();
    let s = store(root);
    s.gc().unwrap();
    assert_eq!(key_files(root), 1);
    let d = s.open_db("d").unwrap();
    assert_eq!(d.get("a").unwrap().unwrap()["v"], "kept");
    d.put(&json!({"_id": "b"})).unwrap();
    // A folder gc cannot open at all (its HEAD gone) keeps what may be its.
    std::fs::remove_file(root.join("dbs/d/HEAD")).unwrap();
    let r = s.gc().unwrap();
    assert_eq!(r.unreadable.len(), 1, "{r:?}");
    assert_eq!(key_files(root), 1);
    assert!(r.removed_files == 0, "{r:?}");
}

/// Review: gc asked the keybag for each proposal's key and failed for the whole store when an
/// entry could not be read (a damaged key file): one damaged database blocked every other's
/// maintenance again. A proposal whose key cannot be read is kept, like its database.
#[test]
fn a_damaged_key_does_not_block_gc_through_a_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let main = s.create(Some("main")).unwrap();
    let lineage =
        kiln::internals::head::Head::lineage(&std::fs::read(root.join("dbs/main/HEAD")).unwrap())
            .unwrap();
    drop(main);
    let f = s.fork("main", Some("f")).unwrap();
    f.put(&json!({"_id": "a"})).unwrap();
    drop(f);
    let p = s.propose("f", "main", "m").unwrap();
    let o = s.create(Some("o")).unwrap();
    o.put(&json!({"_id": "x", "v": "SECRET"})).unwrap();
    o.put(&json!({"_id": "y"})).unwrap();
    drop(o);
    let kp = s.keys_dir().join(format!(
        "{}.key",
        kiln::internals::keys::lineage_string(&lineage)
    ));
    std::fs::write(&kp, b"{\"v\":1,\"key\":\"damaged\"}").unwrap();
    let r = s.gc().unwrap();
    assert_eq!(r.unreadable.len(), 2, "{r:?}");
    assert!(root.join(format!("proposals/{}.prop", p.id)).exists());
    s.open_db("o").unwrap().purge("x").unwrap();
}

/// Review: `update_proposal` read the record, then rewrote it without the decision mark, so a
/// moderator accepting meanwhile had the accepted record overwritten by the still open one
/// (merged, yet open, with its mark set: never decidable again). It now waits its turn as a
/// decision does: while a decision is under way it is busy and rewrites nothing.
#[test]
fn update_proposal_does_not_overwrite_a_decision_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    s.create(Some("main")).unwrap();
    let f = s.fork("main", Some("f")).unwrap();
    f.put(&json!({"_id": "a"})).unwrap();
    let p = s.propose("f", "main", "m").unwrap();
    f.put(&json!({"_id": "b"})).unwrap();
    // Another moderator's decision under way (its mark locked, its record not yet written).
    let mark = root.join(format!("proposals/{}.decided", p.id));
    let other = std::fs::File::create(&mark).unwrap();
    other.lock().unwrap();
    let path = root.join(format!("proposals/{}.prop", p.id));
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(s.update_proposal(&p.id), Err(Error::Busy(_))));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    drop(other);
    // Otherwise it updates, and leaves the proposal decidable.
    s.update_proposal(&p.id).unwrap();
    s.accept(&p.id, None, "mod").unwrap();
    assert!(matches!(
        s.update_proposal(&p.id),
        Err(Error::InvalidArgument(_))
    ));
}

/// A purge that cannot finish (a database whose head record cannot be read at all, so gc keeps
/// every unnamed file) made every later open and write of the database run a gc of the whole
/// store and rewrite all its files. A store handle now tries again only after a pause; `gc`
/// always tries.
#[test]
fn a_purge_that_cannot_finish_is_not_retried_on_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let db = s.create(Some("d")).unwrap();
    db.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
    db.put(&json!({"_id": "b"})).unwrap();
    // Forked (then dropped): the lineage is shared, so the files a rewrite replaces are the
    // sweep's to remove, and it keeps them beside a database whose lineage it cannot tell.
    s.fork("d", Some("f")).unwrap();
    s.drop_db("f").unwrap();
    s.create(Some("bad")).unwrap();
    std::fs::write(root.join("dbs/bad/HEAD"), b"not a head record at all").unwrap();
    assert!(matches!(db.purge("a"), Err(Error::PurgeUnfinished(..))));
    assert_eq!(db.info().unwrap().files.len(), 1);
    db.put(&json!({"_id": "c"})).unwrap();
    s.open_db("d").unwrap();
    // Not rewritten again: the diff of the last write is still its own file.
    assert_eq!(db.info().unwrap().files.len(), 2);
    let r = s.gc().unwrap();
    assert_eq!(r.purges_unfinished.len(), 1, "{r:?}");
    // Once the damage is gone, gc finishes it.
    std::fs::remove_dir_all(root.join("dbs/bad")).unwrap();
    let r = s.gc().unwrap();
    assert_eq!(r.purges_finished, ["d"]);
    assert!(kiln::audit::find(root, &keys(root), b"SECRET")
        .unwrap()
        .is_empty());
}

/// Handles open on a database whose drop was killed before its commit point kept failing with
/// "no such database" (only a new open took the mark back); they take it back too.
#[test]
fn open_handles_outlive_a_drop_that_never_happened() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = s.create(Some("d")).unwrap();
    d.put(&json!({"_id": "a", "v": 1})).unwrap();
    let reader = s.open_db("d").unwrap();
    assert!(reader.get("a").unwrap().is_some());
    std::fs::write(dir.path().join("dbs/d/LOCK"), [0xFF; 16]).unwrap();
    assert_eq!(reader.get("a").unwrap().unwrap()["v"], 1);
    std::fs::write(dir.path().join("dbs/d/LOCK"), [0xFF; 16]).unwrap();
    d.put(&json!({"_id": "b"})).unwrap();
    assert!(reader.get("b").unwrap().is_some());
    // A real drop still stops them.
    s.drop_db("d").unwrap();
    assert!(matches!(reader.get("a"), Err(Error::NoSuchDatabase(_))));
    assert!(matches!(
        d.put(&json!({"_id": "c"})),
        Err(Error::NoSuchDatabase(_))
    ));
}

/// A decision killed midway (its `.decided` mark made, the record not yet written) left the
/// proposal "busy: another moderator is deciding it" forever. The mark is a lock now: a dead
/// claimer's goes with its process, and the next accept takes the decision up again.
#[test]
fn a_decision_killed_midway_does_not_block_the_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let main = s.create(Some("main")).unwrap();
    let f = s.fork("main", Some("f")).unwrap();
    f.put(&json!({"_id": "a", "v": 1})).unwrap();
    let p = s.propose("f", "main", "m").unwrap();
    // What a moderator killed after making the mark leaves: the mark, unlocked.
    std::fs::write(root.join(format!("proposals/{}.decided", p.id)), b"").unwrap();
    s.accept(&p.id, None, "mod").unwrap();
    assert_eq!(main.get("a").unwrap().unwrap()["v"], 1);
    assert!(matches!(
        s.proposal(&p.id).unwrap().status,
        kiln::Status::Accepted { .. }
    ));
}

/// A stray file or empty folder under `dbs/` was listed as a database (and made gc keep every
/// unnamed file and key, taking it for a database it could not read).
#[test]
fn strays_under_dbs_are_not_databases() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    let d = s.create(Some("d")).unwrap();
    d.put(&json!({"_id": "a", "v": "SECRET"})).unwrap();
    std::fs::write(root.join("dbs/notes.txt"), b"x").unwrap();
    std::fs::create_dir(root.join("dbs/empty-folder")).unwrap();
    std::fs::create_dir(root.join("dbs/bad name")).unwrap();
    assert_eq!(s.list().unwrap(), ["d", "empty-folder"]);
    let r = s.gc().unwrap();
    assert!(r.unreadable.is_empty(), "{r:?}");
    d.purge("a").unwrap();
    assert!(kiln::audit::find(root, &keys(root), b"SECRET")
        .unwrap()
        .is_empty());
}

/// A proposal for a database that was dropped stayed readable (message, reason, who) as long
/// as a fork kept the lineage's key; gc removes it once its target is gone.
#[test]
fn gc_removes_proposals_whose_target_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = store(root);
    s.create(Some("main")).unwrap();
    s.fork("main", Some("f"))
        .unwrap()
        .put(&json!({"_id": "a"}))
        .unwrap();
    s.propose("f", "main", "SECRET").unwrap();
    s.drop_db("main").unwrap();
    let r = s.gc().unwrap();
    assert_eq!((r.keys_removed, r.proposals_removed), (0, 1));
    assert!(kiln::audit::find(root, &keys(root), b"SECRET")
        .unwrap()
        .is_empty());
}
