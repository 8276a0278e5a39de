//! Fully durable commits of small diffs flush only the head record, which carries the diff
//! file's bytes; the file itself is written unsynced. What a power cut can do to such a file
//! (lose it, cut it short, leave zeros where its bytes were, or leave a reused file's old bytes
//! under its name) is undone from the head record's copy by the first load of the file, a
//! failed read of it, `verify`, or the snapshot that drops the copy.
//!
//! The tests write on disk what a power cut can leave and assert what an acknowledged
//! `Durability::Full` commit promises. (Those from the second review of file records failed
//! on their first version, 3a602d0.)

use kiln::FileName;
use kiln::{Durability, Options, Store};
use serde_json::json;
use std::path::{Path, PathBuf};

fn full(threshold: usize) -> Options {
    Options {
        durability: Durability::Full,
        compact_threshold: threshold,
        background_compaction: false,
        ..Options::default()
    }
}

fn file_path(root: &Path, name: &FileName) -> PathBuf {
    let hex = name.to_string();
    root.join("files")
        .join(&hex[..2])
        .join(format!("{hex}.kdf"))
}

/// The live diff files of database `db`, newest first.
fn live_diffs(db: &kiln::Database) -> Vec<FileName> {
    db.history_files()
        .unwrap()
        .into_iter()
        .filter(|f| f.level == Some(0))
        .map(|f| f.name)
        .collect()
}

#[test]
fn lost_torn_or_zeroed_diff_files_come_back_from_the_head_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), full(100)).unwrap();
        let db = store.create(Some("t")).unwrap();
        for i in 0..3 {
            db.put(&json!({"_id": format!("d{i}"), "v": i})).unwrap();
        }
    }
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    let files = live_diffs(&db);
    assert_eq!(files.len(), 3);
    drop(db);
    drop(store);
    // What a power cut can leave of files written without a flush.
    for (i, name) in files.iter().enumerate() {
        let p = file_path(dir.path(), name);
        let len = std::fs::metadata(&p).unwrap().len();
        match i {
            0 => std::fs::remove_file(&p).unwrap(),
            1 => std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(len / 2)
                .unwrap(),
            _ => std::fs::write(&p, vec![0u8; len as usize]).unwrap(),
        }
    }
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    for i in 0..3 {
        assert_eq!(db.get(&format!("d{i}")).unwrap().unwrap()["v"], i);
    }
    for name in &files {
        let b = std::fs::read(file_path(dir.path(), name)).unwrap();
        assert_eq!(FileName::of(&b), *name);
    }
    assert!(db.verify().unwrap().ok());

    // So does listing the history (which reads whole files), without a read first.
    std::fs::remove_file(file_path(dir.path(), &files[0])).unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    let h = db.history_files().unwrap();
    assert!(
        h.iter().all(|f| f.location == kiln::Location::Live),
        "{h:?}"
    );
    assert!(file_path(dir.path(), &files[0]).exists());

    // verify puts them back too, without a read first.
    let name = files[1];
    std::fs::remove_file(file_path(dir.path(), &name)).unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("t").unwrap();
    assert!(db.verify().unwrap().ok());
    assert!(file_path(dir.path(), &name).exists());
}

#[test]
fn the_copies_go_with_compaction_and_other_modes_keep_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), full(4)).unwrap();
    let db = store.create(Some("t")).unwrap();
    for i in 0..4 {
        db.put(&json!({"_id": format!("d{i}"), "v": i})).unwrap();
    }
    let head_len = |name: &str| {
        std::fs::metadata(dir.path().join("dbs").join(name).join("HEAD"))
            .unwrap()
            .len()
    };
    // Four small diffs ride in the head record.
    let carrying = head_len("t");
    assert!(carrying > 4 * 600, "{carrying}");
    // The fifth commit compacts: the files are merged into a synced one and the head record
    // starts afresh without copies.
    db.put(&json!({"_id": "d4"})).unwrap();
    assert!(head_len("t") < carrying / 2, "{}", head_len("t"));
    for i in 0..4 {
        assert_eq!(db.get(&format!("d{i}")).unwrap().unwrap()["v"], i);
    }
    assert!(db.verify().unwrap().ok());
    drop(db);
    drop(store);

    // Buffered commits promise no durability and carry nothing: a lost file stays lost
    // (reported, never read as absent).
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            ..full(100)
        },
    )
    .unwrap();
    let db = store.create(Some("b")).unwrap();
    db.put(&json!({"_id": "x"})).unwrap();
    let files = live_diffs(&db);
    assert!(head_len("b") < 1000);
    drop(db);
    std::fs::remove_file(file_path(dir.path(), &files[0])).unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.open_db("b").unwrap();
    assert!(db.get("x").is_err());
    assert!(!db.verify().unwrap().ok());
}

#[test]
fn a_large_diff_is_synced_in_place_not_carried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let docs: Vec<_> = (0..400)
        .map(|i| json!({"_id": format!("d{i:04}"), "body": format!("{i} {}", "x".repeat(300))}))
        .collect();
    db.bulk(&docs).unwrap();
    let head = std::fs::metadata(dir.path().join("dbs/t/HEAD"))
        .unwrap()
        .len();
    assert!(head < 4096, "{head}");
    db.put(&json!({"_id": "small"})).unwrap();
    assert!(db.verify().unwrap().ok());
}

/// 20 documents of 2 KiB in one commit: ~40 KiB, three segments, no checkpoint: carried.
fn bulk_of_40_kib(db: &kiln::Database) {
    let docs: Vec<_> = (0..20)
        .map(|i| json!({"_id": format!("d{i:02}"), "body": format!("{i:02}{}", "x".repeat(2000))}))
        .collect();
    db.bulk(&docs).unwrap();
}

/// A database "t" whose one carried diff (a 40 KiB bulk) a power cut left with its first
/// page of segments zero.
fn damaged_bulk_of_40_kib(root: &Path) {
    let victim = {
        let store = Store::open_with(root, full(1000)).unwrap();
        let db = store.create(Some("t")).unwrap();
        bulk_of_40_kib(&db);
        live_diffs(&db)[0]
    };
    zero_first_page(root, &victim);
}

/// A power cut left the first page of a file's segments zero (its length and index reached
/// the disk).
fn zero_first_page(root: &Path, victim: &FileName) {
    let p = file_path(root, victim);
    let mut b = std::fs::read(&p).unwrap();
    b[16..4096].fill(0);
    std::fs::write(&p, &b).unwrap();
}

/// Commits 1..=4 of document "c" (same-size diffs), keeps the bytes of commit 2's diff, compacts
/// (commit 2's diff is retired: in a real run its inode becomes a spare or pool file that a
/// later put renames to a new name and rewrites in place), then commits 5..=8. Returns the
/// retired diff's bytes and the live diffs (newest first: commits 8, 7, 6, 5).
fn setup(dir: &Path) -> (Vec<u8>, Vec<FileName>) {
    let store = Store::open_with(dir, full(1000)).unwrap();
    let db = store.create(Some("t")).unwrap();
    let mut retired = Vec::new();
    for n in 1..=4 {
        db.put(&json!({"_id": "c", "n": 1000 + n})).unwrap();
        if n == 2 {
            retired = std::fs::read(file_path(dir, &live_diffs(&db)[0])).unwrap();
        }
    }
    db.compact().unwrap();
    for n in 5..=8 {
        db.put(&json!({"_id": "c", "n": 1000 + n})).unwrap();
    }
    let live = live_diffs(&db);
    assert_eq!(live.len(), 4);
    (retired, live)
}

/// A power cut after commit 6: its diff was put into a reused inode (a spare or pooled file:
/// renamed to the new name, then overwritten in place, unsynced). The rename reached the disk,
/// the overwrite did not: the name holds the retired diff's bytes, which are sealed with the
/// same key and (same-shape commits) have the same length, so every read of the file
/// authenticates. Only the name's hash tells.
fn cut_power(dir: &Path, retired: &[u8], victim: &FileName) {
    let p = file_path(dir, victim);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), retired.len() as u64);
    std::fs::write(&p, retired).unwrap();
}

#[test]
fn stale_bytes_of_a_reused_inode_are_noticed_and_put_back_by_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (retired, live) = setup(dir.path());
    cut_power(dir.path(), &retired, &live[2]); // commit 6
    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    assert_eq!(db.get("c").unwrap().unwrap()["n"], 1008);
    // The history walks through commit 6's event: its file reads fine but holds another
    // diff, so the event is "missing" and no copy is put back.
    let log = db.log(None);
    assert!(log.is_ok(), "log: {:?}", log.err());
    assert_eq!(log.unwrap().len(), 8);
}

#[test]
fn compaction_after_a_power_cut_keeps_an_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (retired, live) = setup(dir.path());
    cut_power(dir.path(), &retired, &live[2]); // commit 6
    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    // (Before any compaction, verify would still find and fix it: it hashes whole files.)
    // The level-0 compaction merges what the file holds (commit 2's blocks, again), drops
    // commit 6's event, writes a snapshot without the copy and retires the file.
    db.compact().unwrap();
    let r = db.verify().unwrap();
    assert!(r.ok(), "acknowledged commit 6 lost: {r:?}");
    assert_eq!(db.log(None).unwrap().len(), 8);
}

/// A carried diff of several segments; a power cut leaves one of its pages zero (the file's
/// length and its index reached the disk). Reads after the restart that do not touch that
/// segment (the tree rebuild reads only the index and the event) do not notice; then a
/// snapshot syncs the damaged file as it is and drops the only good copy.
#[test]
fn a_snapshot_does_not_drop_the_copy_of_a_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    let victim;
    {
        let store = Store::open_with(dir.path(), full(1000)).unwrap();
        let db = store.create(Some("t")).unwrap();
        db.put(&json!({"_id": "other", "v": 0})).unwrap();
        // 20 documents of 2 KiB: ~40 KiB, three segments, no checkpoint: carried.
        bulk_of_40_kib(&db);
        db.put(&json!({"_id": "other", "v": 1})).unwrap();
        victim = live_diffs(&db)[1];
        let len = std::fs::metadata(file_path(dir.path(), &victim))
            .unwrap()
            .len();
        assert!(len > 32 * 1024 && len <= 64 * 1024, "{len}");
    }
    // The first page of the file's segments never reached the disk.
    zero_first_page(dir.path(), &victim);

    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    // A purge writes a snapshot (its purged list changed) before it reads every block.
    let r = db.purge("other");
    assert!(r.is_ok(), "purge: {:?}", r.err());
    assert_eq!(
        db.get("d00").unwrap().unwrap()["body"]
            .as_str()
            .unwrap()
            .len(),
        2002
    );
    assert!(db.verify().unwrap().ok());
}

/// The same, through the other snapshot trigger: a log of 128 deltas (a store whose
/// compaction threshold is above 128, or a background compaction that lags).
#[test]
fn a_full_log_does_not_drop_the_copy_of_a_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    damaged_bulk_of_40_kib(dir.path());

    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    for i in 0..130 {
        db.put(&json!({"_id": "other", "v": i})).unwrap();
    }
    let r = db.get("d00");
    assert!(r.is_ok(), "d00: {:?}", r.err());
    assert!(db.verify().unwrap().ok());
}

/// An append of a file record and its delta spans many pages; a power cut before its
/// fdatasync finished can leave any of them unwritten (zeros) while later ones, the delta's
/// included, reached the disk. The commit was never acknowledged: the database must open at
/// the head before it, not fail to open.
#[test]
fn a_torn_two_record_append_is_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("dbs/t/HEAD");
    let before;
    {
        let store = Store::open_with(dir.path(), full(1000)).unwrap();
        let db = store.create(Some("t")).unwrap();
        db.put(&json!({"_id": "a"})).unwrap();
        before = std::fs::metadata(&hp).unwrap().len();
        // One carried diff of ~20 KiB: the append is ~20 KiB, five or six pages.
        db.put(&json!({"_id": "big", "body": "y".repeat(20_000)}))
            .unwrap();
    }
    let mut b = std::fs::read(&hp).unwrap();
    let len = b.len() as u64;
    assert!(len > before + 20_000);
    // A page inside the file record (after its header, before its delta) stayed zero.
    let page = (before / 4096 + 2) * 4096;
    assert!(page + 4096 < len - 400);
    b[page as usize..page as usize + 4096].fill(0);
    std::fs::write(&hp, &b).unwrap();

    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t");
    assert!(db.is_ok(), "open: {:?}", db.err());
    let db = db.unwrap();
    assert!(db.get("a").unwrap().is_some());
    // And the next commit goes on from there.
    db.put(&json!({"_id": "b"})).unwrap();
    assert!(db.verify().unwrap().ok());
}

/// Controls: the same damage, with no snapshot before the read, is put back (so in the tests
/// above it is the snapshot or the compaction that loses the commit).
#[test]
fn control_the_same_damage_is_repaired_without_a_snapshot_first() {
    let dir = tempfile::tempdir().unwrap();
    let (retired, live) = setup(dir.path());
    cut_power(dir.path(), &retired, &live[2]);
    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    assert!(db.verify().unwrap().ok()); // verify hashes the file and puts it back
    db.compact().unwrap();
    assert!(db.verify().unwrap().ok());
    assert_eq!(db.log(None).unwrap().len(), 8);

    let dir = tempfile::tempdir().unwrap();
    damaged_bulk_of_40_kib(dir.path());
    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    assert!(db.get("d00").unwrap().is_some());
    for i in 0..130 {
        db.put(&json!({"_id": "other", "v": i})).unwrap();
    }
    assert!(db.verify().unwrap().ok());
}

/// A Buffered handle (another process, say) that writes the next snapshot drops the file
/// records of a Full handle's acknowledged commits: it must sync their files first (it did
/// only `if self.sync()`).
#[test]
fn a_buffered_writers_snapshot_drops_full_commits_copies_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let full_store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = full_store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "acked", "v": 1})).unwrap(); // acknowledged, Full
    let carried = live_diffs(&db)[0];
    let hp = dir.path().join("dbs/t/HEAD");
    let with_copy = std::fs::read(&hp).unwrap().len();
    let buffered = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            ..full(1000)
        },
    )
    .unwrap();
    let bdb = buffered.open_db("t").unwrap();
    for i in 0..130 {
        bdb.put(&json!({"_id": "other", "v": i})).unwrap();
    }
    let now = std::fs::read(&hp).unwrap().len();
    // The head record no longer holds the copy, and the file is live: the buffered writer
    // synced it before its snapshot dropped the copy (not observable here: run under
    // `strace -f -y -e trace=fsync` to see the file flushed).
    assert!(now < with_copy + 130 * 400, "{with_copy} -> {now}");
    assert!(bdb
        .history_files()
        .unwrap()
        .iter()
        .any(|f| f.name == carried));
    assert_eq!(bdb.get("acked").unwrap().unwrap()["v"], 1);
}

/// A carried diff lost outright (its folder entry never reached the disk) that no read has
/// needed since the restart: the snapshot's `sync_file` fails on it and poisons the handle.
#[test]
fn a_snapshot_puts_back_a_lost_carried_file_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let lost;
    {
        let store = Store::open_with(dir.path(), full(1000)).unwrap();
        let db = store.create(Some("t")).unwrap();
        db.put(&json!({"_id": "a", "v": 1})).unwrap();
        lost = live_diffs(&db)[0];
        // A checkpoint (>= 32 documents): the tree is whole in files, nothing to rebuild.
        let docs: Vec<_> = (0..40)
            .map(|i| json!({"_id": format!("d{i:02}"), "i": i}))
            .collect();
        db.bulk(&docs).unwrap();
    }
    std::fs::remove_file(file_path(dir.path(), &lost)).unwrap();
    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    for i in 0..130 {
        let r = db.put(&json!({"_id": "other", "v": i}));
        assert!(r.is_ok(), "commit {i}: {:?}", r.err());
    }
    assert_eq!(db.get("a").unwrap().unwrap()["v"], 1);
}

/// The whole-file check on first index load must not fail open (third review): when the
/// put-back itself fails (here `gc.shared()` times out behind another process's `Store::gc`;
/// in life also ENOSPC or EIO), the read fails and caches nothing. (It loaded the index of the
/// stale, authenticating bytes and cached it for the handle's life; a later compaction merged
/// from it and dropped the acknowledged commit 6.)
#[test]
fn a_failed_put_back_does_not_cache_the_stale_index() {
    let dir = tempfile::tempdir().unwrap();
    let (retired, live) = setup(dir.path());
    cut_power(dir.path(), &retired, &live[2]); // commit 6
    let opts = Options {
        lock_timeout: std::time::Duration::from_millis(200),
        ..full(1000)
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    let db = store.open_db("t").unwrap();
    // Another process runs garbage collection (holds ROOT/GC exclusively) during the read.
    let gc = std::fs::File::open(dir.path().join("GC")).unwrap();
    gc.lock().unwrap();
    let r = db.get("c"); // rebuilds the tree: loads every level-0 file's index
    eprintln!("get during gc: {r:?}");
    gc.unlock().unwrap();
    let r = db.compact();
    eprintln!("compact: {r:?}");
    drop(db);
    drop(store);
    let store = Store::open_with(dir.path(), full(1000)).unwrap();
    let db = store.open_db("t").unwrap();
    let r = db.verify().unwrap();
    assert!(r.ok(), "acknowledged commit 6 lost: {r:?}");
    assert_eq!(db.log(None).unwrap().len(), 8);
}

/// `verify` says which files it put back from the head record's copy (it fixed them and said
/// only "ok").
#[test]
fn verify_names_the_files_it_put_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), full(100)).unwrap();
        let db = store.create(Some("t")).unwrap();
        for i in 0..3 {
            db.put(&json!({"_id": format!("d{i}"), "v": i})).unwrap();
        }
        assert!(db.verify().unwrap().repaired.is_empty());
    }
    let store = Store::open_with(dir.path(), full(100)).unwrap();
    let files = live_diffs(&store.open_db("t").unwrap());
    std::fs::remove_file(file_path(dir.path(), &files[0])).unwrap();
    let p = file_path(dir.path(), &files[2]);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::write(&p, vec![0u8; len as usize]).unwrap();
    let db = Store::open_with(dir.path(), full(100))
        .unwrap()
        .open_db("t")
        .unwrap();
    let r = db.verify().unwrap();
    assert!(r.ok(), "{r:?}");
    let mut want = vec![files[0], files[2]];
    let mut got = r.repaired.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(db.verify().unwrap().repaired.is_empty(), "once put back");
}
