//! Replicas of one database syncing through a folder remote: the scenarios a review of the
//! first sync design wrote (each failed on it: a compaction taken in without new events, a
//! history cut or a purge on one side, a purged version written again elsewhere, another
//! process's spare files, gc racing a sync, merges of merges, background compaction, space
//! over rounds, syncs going quiet), and a randomized run of three replicas (writes, deletes,
//! compactions, purges, gc and syncs in random order; `SEEDS`, `SEED0`, `ROUNDS`, `BG`,
//! `ALLOW` = letters of p (purge), h (history cuts), g (gc) widen it) that must converge
//! on one state, verify everywhere, and reopen.
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

fn opts(bg: bool) -> Options {
    Options {
        background_compaction: bg,
        compact_threshold: env_u64("THRESH", 4) as usize,
        ..Options::default()
    }
}

fn docs(db: &kiln::Database) -> Vec<serde_json::Value> {
    db.docs(&kiln::ListOptions::default()).unwrap()
}

/// Opens the store anew (as another process would: no pending nodes, no caches) and reads
/// everything, then verifies.
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

fn two(bg: bool) -> Two {
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    {
        let a = Store::open_with(&a_dir, opts(bg)).unwrap();
        let db = a.create(Some("notes")).unwrap();
        db.put(&json!({"_id": "start"})).unwrap();
    }
    copy(&a_dir, &b_dir);
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let (a, b) = (
        Store::open_with(&a_dir, opts(bg)).unwrap(),
        Store::open_with(&b_dir, opts(bg)).unwrap(),
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

const ALL: SyncOptions = SyncOptions {
    pull: true,
    push: true,
    files: FileSets::All,
};

/// A replica's compaction of events this side already has: taken in by `adopt_files` alone,
/// without moving `base`.
#[test]
fn r1_compaction_taken_without_new_events_keeps_base() {
    let t = two(false);
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    t.da.put(&json!({"_id": "x", "v": 1})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    t.db.compact().unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let r = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    eprintln!("a after: {r:?} files {:?}", t.da.info().unwrap().files);
    // This handle still reads (its pending nodes are in memory) ...
    assert_eq!(docs(&t.da).len(), 2);
    // ... but another process opening it?
    let got = fresh(&t.a_dir, "notes");
    assert!(got.is_ok(), "A reopened: {got:?}");
    let got = fresh(&t.b_dir, "notes");
    assert!(got.is_ok(), "B reopened: {got:?}");
}

/// drop_history_before on one side: its one file replaces every file the other had.
#[test]
fn r2_drop_history_on_one_side() {
    let t = two(false);
    let mut evs = Vec::new();
    for i in 0..6 {
        evs.push(
            t.da.put(&json!({"_id": format!("d{i}"), "v": i}))
                .unwrap()
                .event,
        );
    }
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    // A synced database's history cannot be cut (its replicas would disagree on it).
    let e = t.da.drop_history_before(&evs[3]).unwrap_err();
    assert!(e.to_string().contains("syncs with a remote"), "{e}");
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    let r = sync(&t.b, &t.db, &t.remote, "notes", ALL);
    eprintln!("b sync: {r:?}");
    let b_log = t.db.log(None);
    eprintln!("b log: {:?}", b_log.as_ref().map(|l| l.len()));
    let v = t.db.verify().unwrap();
    assert!(v.ok(), "B verify: {:?}", v.problems);
    let got = fresh(&t.b_dir, "notes");
    assert!(got.is_ok(), "B reopened: {got:?}");
}

/// A purge on one side: its scrub rewrite replaces the files the other had.
#[test]
fn r3_purge_on_one_side() {
    let t = two(false);
    let first = t.da.put(&json!({"_id": "secret", "v": 1})).unwrap().event;
    t.da.put(&json!({"_id": "secret", "v": 2})).unwrap();
    t.da.put(&json!({"_id": "other"})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    t.da.purge("secret").unwrap();
    let v = t.da.verify().unwrap();
    assert!(v.ok(), "A verify: {:?}", v.problems);
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    eprintln!("b get_at: {:?}", t.db.get_at("secret", &first));
    eprintln!("a get_at: {:?}", t.da.get_at("secret", &first));
    eprintln!(
        "a files {:?}",
        t.da.info()
            .unwrap()
            .files
            .iter()
            .map(|f| (f.name, f.level))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "b files {:?}",
        t.db.info()
            .unwrap()
            .files
            .iter()
            .map(|f| (f.name, f.level))
            .collect::<Vec<_>>()
    );
    let r = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    eprintln!("a sync again {r:?}");
    eprintln!(
        "a files {:?}",
        t.da.info()
            .unwrap()
            .files
            .iter()
            .map(|f| (f.name, f.level))
            .collect::<Vec<_>>()
    );
    eprintln!("a get_at after: {:?}", t.da.get_at("secret", &first));
    let v = t.da.verify().unwrap();
    assert!(v.ok(), "A verify after syncing again: {:?}", v.problems);
    let v = t.db.verify().unwrap();
    assert!(v.ok(), "B verify: {:?}", v.problems);
    let got = fresh(&t.b_dir, "notes");
    assert!(got.is_ok(), "B reopened: {got:?}");
}

/// A purged version written again (same body) on the other side.
#[test]
fn r4_purged_version_written_again_elsewhere() {
    let t = two(false);
    t.da.put(&json!({"_id": "d", "v": 1})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    t.da.purge("d").unwrap();
    t.db.put(&json!({"_id": "d", "v": 1})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    let (ga, gb) = (t.da.get("d"), t.db.get("d"));
    eprintln!("a: {ga:?}\nb: {gb:?}");
    assert_eq!(t.da.heads().unwrap(), t.db.heads().unwrap());
    assert_eq!(format!("{ga:?}"), format!("{gb:?}"));
    // Then A compacts everything (dropping purged values), B takes that in.
    t.da.compact_full().unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    let gb = t.db.get("d");
    eprintln!("b after a's compaction: {gb:?}");
    let v = t.db.verify().unwrap();
    assert!(v.ok(), "B verify: {:?}", v.problems);
}

/// Two store instances on one folder (two processes): one retired small files as spares
/// before the lineage was shared; the other adopts a head naming them.
#[test]
fn r5_other_process_spares() {
    let d = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (d.path().join("a"), d.path().join("b"));
    {
        let a = Store::open_with(&a_dir, opts(false)).unwrap();
        a.create(Some("notes")).unwrap();
    }
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    // Process 1 on A writes three small diffs (its own files).
    let p1 = Store::open_with(&a_dir, opts(false)).unwrap();
    let d1 = p1.open_db("notes").unwrap();
    for i in 0..3 {
        d1.put(&json!({"_id": format!("s{i}")})).unwrap();
    }
    copy(&a_dir, &b_dir);
    // B pushes its head (naming the three small diffs).
    {
        let b = Store::open_with(&b_dir, opts(false)).unwrap();
        let db = b.open_db("notes").unwrap();
        db.put(&json!({"_id": "b"})).unwrap();
        sync(&b, &db, &remote, "notes", ALL).unwrap();
    }
    // Process 1 compacts (not shared yet: the small diffs become its spares).
    d1.compact_full().unwrap();
    eprintln!(
        "p1 files {:?}",
        d1.info()
            .unwrap()
            .files
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
    );
    // Process 2 on A syncs: B's head names the three diffs, still under their names.
    {
        let p2 = Store::open_with(&a_dir, opts(false)).unwrap();
        let d2 = p2.open_db("notes").unwrap();
        let r = sync(&p2, &d2, &remote, "notes", ALL).unwrap();
        eprintln!(
            "p2 sync {r:?} files {:?}",
            d2.info()
                .unwrap()
                .files
                .iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
        );
    }
    // Process 1 commits (its commit reuses a spare) and exits (spares go to the pool).
    d1.put(&json!({"_id": "p1"})).unwrap();
    drop(d1);
    drop(p1);
    let got = fresh(&a_dir, "notes");
    assert!(got.is_ok(), "A reopened: {got:?}");
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Random writes, compactions and syncs on three replicas; then all converge and verify, and
/// each reopens.
fn random_run(seed: u64, bg: bool, rounds: usize, allow: &str) -> Result<(), String> {
    let d = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| d.path().join(format!("r{i}"))).collect();
    {
        let a = Store::open_with(&dirs[0], opts(bg)).unwrap();
        let db = a.create(Some("notes")).unwrap();
        db.put(&json!({"_id": "start"})).unwrap();
    }
    copy(&dirs[0], &dirs[1]);
    copy(&dirs[0], &dirs[2]);
    let remote = FolderRemote::open(d.path().join("remote")).unwrap();
    let stores: Vec<Store> = dirs
        .iter()
        .map(|p| Store::open_with(p, opts(bg)).unwrap())
        .collect();
    let dbs: Vec<kiln::Database> = stores.iter().map(|s| s.open_db("notes").unwrap()).collect();
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let mut log = Vec::new();
    for round in 0..rounds {
        let i = rng.below(3) as usize;
        let op = rng.below(100);
        let what = match op {
            0..=39 => {
                let id = format!("k{}", rng.below(60));
                dbs[i]
                    .put(&json!({"_id": id, "v": rng.next() % 1000, "r": i}))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                    .map(|_| format!("put {id}"))
            }
            40..=47 => {
                let n = 20 + rng.below(30);
                let docs: Vec<_> = (0..n)
                    .map(|_| json!({"_id": format!("k{}", rng.below(200)), "v": rng.next() % 1000}))
                    .collect::<Vec<_>>();
                let mut docs = docs;
                docs.sort_by(|a, b| a["_id"].as_str().cmp(&b["_id"].as_str()));
                docs.dedup_by(|a, b| a["_id"] == b["_id"]);
                dbs[i]
                    .bulk(&docs)
                    .map(|_| format!("bulk {}", docs.len()))
                    .map_err(|e| e.to_string())
            }
            48..=52 => {
                let id = format!("k{}", rng.below(60));
                match dbs[i].del(&id) {
                    Ok(_) => Ok(format!("del {id}")),
                    Err(e) => Ok(format!("del {id}: {e}")),
                }
            }
            53..=57 => dbs[i]
                .compact()
                .map(|_| "compact".into())
                .map_err(|e| e.to_string()),
            58..=60 => dbs[i]
                .compact_full()
                .map(|_| "compact_full".into())
                .map_err(|e| e.to_string()),
            61..=62 if allow.contains('p') => {
                let id = format!("k{}", rng.below(60));
                match dbs[i].purge(&id) {
                    Ok(_) => Ok(format!("purge {id}")),
                    Err(e) => Ok(format!("purge {id}: {e}")),
                }
            }
            63 if allow.contains('h') => {
                let l = dbs[i].log(None).map_err(|e| e.to_string())?;
                let e = l[l.len() / 2].cid;
                match dbs[i].drop_history_before(&e) {
                    Ok(n) => Ok(format!("drop_history {n}")),
                    // (A cut that would strand a concurrent branch is refused: fine.)
                    Err(kiln::Error::InvalidArgument(m))
                        if m.contains("concurrent") || m.contains("syncs with a remote") =>
                    {
                        Ok("drop_history refused".into())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            64 if allow.contains('g') => stores[i]
                .gc()
                .map(|_| "gc".into())
                .map_err(|e| e.to_string()),
            _ => sync(&stores[i], &dbs[i], &remote, "notes", ALL)
                .map(|r| format!("sync {r:?}"))
                .map_err(|e| e.to_string()),
        };
        log.push(format!("{round}: r{i} {what:?}"));
        if let Err(e) = what {
            let n = env_u64("LOG_TAIL", 15) as usize;
            return Err(format!(
                "{}\nFAILED at round {round} on r{i} (op {op}): {e}",
                log[log.len().saturating_sub(n)..].join("\n")
            ));
        }
        if env_u64("CHECK_EACH", 0) == 1 {
            let v = dbs[i].verify().map_err(|e| e.to_string())?;
            if !v.ok() {
                return Err(format!(
                    "{}\nverify r{i} after round {round}: {:?}",
                    log[log.len().saturating_sub(15)..].join("\n"),
                    v.problems
                ));
            }
        }
    }
    // Converge.
    for _ in 0..3 {
        for i in 0..3 {
            sync(&stores[i], &dbs[i], &remote, "notes", ALL).map_err(|e| {
                format!(
                    "final sync r{i}: {e}\n{}",
                    log[log.len().saturating_sub(15)..].join("\n")
                )
            })?;
        }
    }
    let d0 = docs(&dbs[0]);
    for i in 0..3 {
        let di = dbs[i]
            .docs(&kiln::ListOptions::default())
            .map_err(|e| format!("docs r{i}: {e}"))?;
        if di != d0 {
            return Err(format!("r{i} docs differ from r0"));
        }
        if dbs[i].heads().unwrap() != dbs[0].heads().unwrap() {
            return Err(format!("r{i} heads differ"));
        }
        let v = dbs[i].verify().map_err(|e| e.to_string())?;
        if !v.ok() {
            return Err(format!(
                "verify r{i}: {:?}\n{}",
                v.problems,
                log[log.len().saturating_sub(15)..].join("\n")
            ));
        }
        let info = dbs[i].info().unwrap();
        if info.docs as usize != di.len() {
            return Err(format!(
                "r{i} info.docs {} but {} docs",
                info.docs,
                di.len()
            ));
        }
    }
    drop(dbs);
    drop(stores);
    for i in 0..3 {
        let f = fresh(&dirs[i], "notes").map_err(|e| format!("fresh r{i}: {e}"))?;
        if f != d0 {
            return Err(format!("fresh r{i} docs differ"));
        }
    }
    Ok(())
}

#[test]
fn r7_random() {
    let seeds = env_u64("SEEDS", 10);
    let first = env_u64("SEED0", 1);
    let rounds = env_u64("ROUNDS", 150) as usize;
    let bg = env_u64("BG", 0) == 1;
    let allow = std::env::var("ALLOW").unwrap_or_else(|_| "pg".into());
    let mut fails = Vec::new();
    for s in first..first + seeds {
        if let Err(e) = random_run(s, bg, rounds, &allow) {
            eprintln!("=== seed {s}:\n{e}\n");
            fails.push(s);
        }
    }
    assert!(fails.is_empty(), "failing seeds {fails:?}");
}

/// A purge, then the purging replica's next sync: the remote's record (older) names the files
/// the purge rewrote away.
#[test]
fn r3b_purge_then_sync_brings_purged_content_back() {
    let t = two(false);
    let first = t.da.put(&json!({"_id": "secret", "v": 1})).unwrap().event;
    t.da.put(&json!({"_id": "other"})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    t.da.purge("secret").unwrap();
    assert!(t.da.verify().unwrap().ok());
    let r = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    eprintln!("a sync after purge: {r:?}");
    t.a.gc().unwrap();
    let v = t.da.verify().unwrap();
    eprintln!("a get_at {:?}", t.da.get_at("secret", &first));
    // B takes it in.
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    eprintln!("b get_at {:?}", t.db.get_at("secret", &first));
    assert!(v.ok(), "A verify after its own sync + gc: {:?}", v.problems);
}

/// A compaction, then the compacting replica's next sync: are the old files back?
#[test]
fn r8_own_compaction_then_sync() {
    let t = two(false);
    for i in 0..3 {
        t.da.put(&json!({"_id": format!("d{i}")})).unwrap();
    }
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    t.da.compact_full().unwrap();
    let before = t.da.info().unwrap().files.len();
    let r = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    let after = t.da.info().unwrap().files.len();
    eprintln!("{r:?}");
    assert_eq!(
        before, after,
        "A's files after its own compaction and a sync"
    );
}

/// After convergence, syncs in turn move nothing (no head ping-pong).
#[test]
fn r9_quiet_after_convergence() {
    let t = two(false);
    for i in 0..6 {
        t.da.put(&json!({"_id": format!("a{i}")})).unwrap();
        t.db.put(&json!({"_id": format!("b{i}")})).unwrap();
    }
    t.db.compact().unwrap();
    for _ in 0..3 {
        sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
        sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    }
    let ra = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    let rb = sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    eprintln!(
        "a files {:?}",
        t.da.info()
            .unwrap()
            .files
            .iter()
            .map(|f| (f.name, f.level))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "b files {:?}",
        t.db.info()
            .unwrap()
            .files
            .iter()
            .map(|f| (f.name, f.level))
            .collect::<Vec<_>>()
    );
    assert!(!ra.pushed && !rb.pushed, "{ra:?} {rb:?}");
}

/// Merge files of adopt mode hold only their merge event (no ops); two of them combined make a
/// file of several events and an empty document log.
#[test]
fn r10_two_adopt_merges_compacted() {
    let t = two(false);
    let pull = SyncOptions { push: false, ..ALL };
    t.da.put(&json!({"_id": "a1"})).unwrap();
    t.da.compact().unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    t.db.put(&json!({"_id": "b1"})).unwrap();
    t.db.compact().unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", pull).unwrap();
    t.da.put(&json!({"_id": "a2"})).unwrap();
    t.da.compact().unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", pull).unwrap();
    eprintln!(
        "b files {:?}",
        t.db.info()
            .unwrap()
            .files
            .iter()
            .map(|f| (f.name, f.level))
            .collect::<Vec<_>>()
    );
    t.db.compact().unwrap();
    eprintln!("b docs now: {:?}", t.db.docs(&kiln::ListOptions::default()));
    eprintln!("b fresh: {:?}", fresh(&t.b_dir, "notes"));
    let v = t.db.verify().unwrap();
    assert!(v.ok(), "B verify: {:?}", v.problems);
}

/// gc looping beside syncs: fetched files are unnamed until adopt commits.
#[test]
fn r6_gc_beside_sync() {
    let t = two(false);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rounds = env_u64("GC_ROUNDS", 60);
    let (mut errs, mut bad) = (Vec::new(), 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = t.a.gc();
                std::thread::sleep(std::time::Duration::from_micros(env_u64(
                    "GC_SLEEP_US",
                    1500,
                )));
            }
        });
        for i in 0..rounds {
            let docs: Vec<_> = (0..40)
                .map(|j| json!({"_id": format!("b{i}-{j:02}"), "x": "y".repeat(200)}))
                .collect();
            t.db.bulk(&docs).unwrap();
            if i % 3 == 0 {
                t.db.compact().unwrap();
            }
            sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
            t.da.put(&json!({"_id": format!("a{i}")})).unwrap();
            match sync(&t.a, &t.da, &t.remote, "notes", ALL) {
                Ok(_) => {}
                Err(e) => errs.push(e.to_string()),
            }
            let v = t.da.verify().unwrap();
            if !v.ok() {
                bad += 1;
                eprintln!(
                    "round {i}: A verify: {:?}",
                    &v.problems[..v.problems.len().min(2)]
                );
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    eprintln!("sync errors: {} e.g. {:?}", errs.len(), errs.first());
    assert_eq!(bad, 0);
    let got = fresh(&t.a_dir, "notes");
    assert!(got.is_ok(), "A reopened: {got:?}");
}

/// Background compaction (large merges run on the thread) while replicas sync.
#[test]
fn r11_background_compaction_during_sync() {
    let t = two(env_u64("R11_BG", 1) == 1);
    let rounds = env_u64("BG_ROUNDS", 6);
    let mut rng = Rng(77);
    for r in 0..rounds {
        for (side, db) in [(0, &t.da), (1, &t.db)] {
            for k in 0..3 {
                let docs: Vec<_> = (0..40)
                    .map(|j| json!({"_id": format!("s{side}-{}", rng.below(400)), "r": r, "k": k, "j": j, "pad": (0..1500).map(|_| format!("{:016x}", rng.next())).collect::<String>()}))
                    .collect::<Vec<_>>();
                let mut docs = docs;
                docs.sort_by(|a, b| a["_id"].as_str().cmp(&b["_id"].as_str()));
                docs.dedup_by(|a, b| a["_id"] == b["_id"]);
                db.bulk(&docs).unwrap();
            }
            let _ = side;
        }
        eprintln!(
            "round {r} a files before sync {:?}",
            t.da.info()
                .unwrap()
                .files
                .iter()
                .map(|f| (f.level, f.size / 1000))
                .collect::<Vec<_>>()
        );
        let ra = sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
        eprintln!(
            "round {r} a after sync {:?} pulled {}",
            t.da.info()
                .unwrap()
                .files
                .iter()
                .map(|f| (f.level, f.size / 1000))
                .collect::<Vec<_>>(),
            ra.files_pulled
        );
        sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
        let v = t.db.verify().unwrap();
        assert!(v.ok(), "round {r} B verify: {:?}", v.problems);
    }
    for _ in 0..2 {
        sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
        sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    }
    assert_eq!(docs(&t.da), docs(&t.db));
    for db in [&t.da, &t.db] {
        for k in 0..6 {
            db.put(&json!({"_id": format!("tail{k}")})).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let v = db.verify().unwrap();
        assert!(v.ok(), "verify: {:?}", v.problems);
        let i = db.info().unwrap();
        eprintln!(
            "total {} bytes, docs {}, files {:?}",
            i.bytes,
            i.docs,
            i.files
                .iter()
                .map(|f| (f.level, f.size))
                .collect::<Vec<_>>()
        );
    }
    let Two {
        a,
        b,
        da,
        db,
        a_dir,
        b_dir,
        ..
    } = t;
    drop((da, db, a, b));
    for d in [&a_dir, &b_dir] {
        let got = fresh(d, "notes");
        assert!(got.is_ok(), "reopened: {:?}", got.err());
    }
}

/// Space: one writer compacting and syncing; its live bytes against a replica that never syncs.
#[test]
fn r12_space_after_rounds() {
    let t = two(false);
    let solo_dir = t.a_dir.parent().unwrap().join("solo");
    copy(&t.a_dir, &solo_dir);
    let solo_s = Store::open_with(&solo_dir, opts(false)).unwrap();
    let solo = solo_s.open_db("notes").unwrap();
    let mut rng = Rng(5);
    for r in 0..12 {
        let docs: Vec<_> = (0..20)
            .map(|j| json!({"_id": format!("r{r}-{j:02}"), "pad": (0..200).map(|_| format!("{:016x}", rng.next())).collect::<String>()}))
            .collect();
        t.da.bulk(&docs).unwrap();
        solo.bulk(&docs).unwrap();
        t.da.compact().unwrap();
        solo.compact().unwrap();
        sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
        sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
        let (ia, ib, is) = (
            t.da.info().unwrap(),
            t.db.info().unwrap(),
            solo.info().unwrap(),
        );
        eprintln!(
            "round {r}: A {} bytes in {} files, B {} in {}, solo {} in {}",
            ia.bytes,
            ia.files.len(),
            ib.bytes,
            ib.files.len(),
            is.bytes,
            is.files.len()
        );
    }
    let (ia, is) = (t.da.info().unwrap(), solo.info().unwrap());
    assert!(
        ia.bytes < 2 * is.bytes,
        "A {} bytes, solo {}",
        ia.bytes,
        is.bytes
    );
}

/// Space: two writers, each compacting and syncing every round.
#[test]
fn r12b_space_two_writers() {
    let t = two(false);
    let mut rng = Rng(5);
    let mut written = 0usize;
    for r in 0..12 {
        for (s, db) in [(0, &t.da), (1, &t.db)] {
            let docs: Vec<_> = (0..20)
                .map(|j| json!({"_id": format!("s{s}-r{r}-{j:02}"), "pad": (0..200).map(|_| format!("{:016x}", rng.next())).collect::<String>()}))
                .collect();
            written += 20 * 3200;
            db.bulk(&docs).unwrap();
            let before: Vec<u8> = db.info().unwrap().files.iter().map(|f| f.level).collect();
            db.compact().unwrap();
            if s == 0 && r > 8 {
                eprintln!(
                    "A compact: {before:?} -> {:?}",
                    db.info()
                        .unwrap()
                        .files
                        .iter()
                        .map(|f| f.level)
                        .collect::<Vec<_>>()
                );
            }
        }
        sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
        sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
        let (ia, ib) = (t.da.info().unwrap(), t.db.info().unwrap());
        eprintln!(
            "round {r}: written {written}, A {} bytes in {} files {:?}, B {} in {}",
            ia.bytes,
            ia.files.len(),
            ia.files.iter().map(|f| f.level).collect::<Vec<_>>(),
            ib.bytes,
            ib.files.len()
        );
    }
    let ia = t.da.info().unwrap();
    assert!(
        (ia.bytes as usize) < 2 * written,
        "A {} bytes for {written} written",
        ia.bytes
    );
}

/// The purging side pushes without pulling (so it does not take the old files back); the
/// other takes the scrubbed file in.
#[test]
fn r3c_scrubbed_file_taken_in_without_the_purged_list() {
    let t = two(false);
    let first = t.da.put(&json!({"_id": "secret", "v": 1})).unwrap().event;
    t.da.put(&json!({"_id": "other"})).unwrap();
    sync(&t.a, &t.da, &t.remote, "notes", ALL).unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    t.da.purge("secret").unwrap();
    sync(
        &t.a,
        &t.da,
        &t.remote,
        "notes",
        SyncOptions { pull: false, ..ALL },
    )
    .unwrap();
    sync(&t.b, &t.db, &t.remote, "notes", ALL).unwrap();
    eprintln!("b get_at {:?}", t.db.get_at("secret", &first));
    eprintln!(
        "b history {:?}",
        t.db.history("secret", None).map(|h| h.len())
    );
    let v = t.db.verify().unwrap();
    assert!(v.ok(), "B verify: {:?}", v.problems);
}
