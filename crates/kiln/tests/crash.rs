//! Crash and multi-process tests with real processes.
//!
//! This test binary re-executes itself as a writer child (`--child …`). The parent kills
//! writers with SIGKILL at random moments (many of them mid-compaction, with a compaction
//! every few commits), then reopens the store and checks that every acknowledged write is
//! there and `verify` passes. A second phase runs two writer processes on one database at once.
//!
//! A third phase compacts the whole database after every commit, so kills land inside
//! compaction steps (the child marks the start of each compaction on its output; the phase runs
//! until 200 kills landed in one), then garbage collection removes what the kills orphaned.
//!
//! `KILN_CRASH_KILLS` sets the number of kills of the first phase (default 200),
//! `KILN_CRASH_COMPACTION_KILLS` the kills inside compaction of the third (default 200).

use kiln::{Durability, ListOptions, Options, Store};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IDS: u64 = 50;
/// Documents of the occasional large bulk (ids of their own, bodies all different).
const LARGE: u64 = 130;

fn opts(durability: Durability) -> Options {
    Options {
        durability,
        compact_threshold: 4,
        background_compaction: true,
        ..Options::default()
    }
}

/// Operation `k` of the deterministic sequence every writer follows.
enum Op {
    Put(u64, u64),
    Del(u64),
    Bulk(Vec<(u64, u64)>),
}

fn op(k: u64) -> Op {
    if k % 5 == 4 {
        Op::Del((k * 3) % IDS)
    } else if k % 23 == 11 {
        // Large enough to be encoded on two threads and written while its tree is built.
        Op::Bulk((0..LARGE).map(|j| (1000 + j, k)).collect())
    } else if k % 7 == 3 {
        Op::Bulk(vec![
            ((k + 1) % IDS, k),
            ((k + 2) % IDS, k),
            ((k + 3) % IDS, k),
        ])
    } else {
        Op::Put(k % IDS, k)
    }
}

fn apply(model: &mut BTreeMap<u64, u64>, k: u64) {
    match op(k) {
        Op::Put(i, v) => {
            model.insert(i, v);
        }
        Op::Del(i) => {
            model.remove(&i);
        }
        Op::Bulk(kv) => model.extend(kv),
    }
}

fn id(i: u64) -> String {
    format!("k{i:03}")
}

fn child(dir: &str, start: u64, durability: &str, prefix: &str, count: u64) {
    let d = if durability.starts_with("full") {
        Durability::Full
    } else {
        Durability::Buffered
    };
    // "-inline": compaction inside the commit, so kills land in it too. "-compact": also a
    // full compaction after every commit, marked "c<k>" on stdout before it starts.
    let compact = durability.ends_with("-compact");
    let o = Options {
        background_compaction: !durability.ends_with("-inline") && !compact,
        ..opts(d)
    };
    let store = Store::open_with(dir, o).expect("open store");
    let db = match store.open_db("crash") {
        Ok(db) => db,
        Err(_) => store
            .create(Some("crash"))
            .or_else(|_| store.open_db("crash"))
            .expect("create"),
    };
    let out = std::io::stdout();
    for k in start..start + count {
        if prefix.is_empty() {
            let pad = "x".repeat(100);
            match op(k) {
                Op::Put(i, v) => db.put(&json!({"_id": id(i), "v": v, "pad": pad})).map(drop),
                Op::Del(i) => match db.del(&id(i)) {
                    // Nothing to delete (never written, deleted already, or deleted by this
                    // op before a kill): nothing written, as the model has it.
                    Err(kiln::Error::NoSuchDocument { .. }) => Ok(()),
                    r => r.map(drop),
                },
                Op::Bulk(kv) => db
                    .bulk(
                        &kv.iter()
                            .map(|(i, v)| json!({"_id": id(*i), "v": v, "i": i, "pad": pad}))
                            .collect::<Vec<_>>(),
                    )
                    .map(drop),
            }
            .expect("commit");
        } else {
            db.put(&json!({"_id": format!("{prefix}{k:05}"), "v": k}))
                .expect("commit");
        }
        let mut o = out.lock();
        writeln!(o, "{k}").expect("stdout");
        o.flush().expect("stdout");
        if compact {
            writeln!(o, "c{k}").expect("stdout");
            o.flush().expect("stdout");
            drop(o);
            db.compact_full().expect("compact");
        }
    }
}

fn state(dir: &std::path::Path) -> BTreeMap<u64, u64> {
    let store = Store::open(dir).expect("reopen");
    if !store.exists("crash") {
        return BTreeMap::new();
    }
    let db = store.open_db("crash").expect("open");
    let r = db.verify().expect("verify");
    assert!(r.ok(), "verify after crash: {:?}", r.problems);
    let docs = db.docs(&ListOptions::default()).expect("list");
    assert_eq!(db.info().expect("info").docs, docs.len() as u64);
    docs.iter()
        .map(|d| {
            let i: u64 = d["_id"].as_str().unwrap()[1..].parse().unwrap();
            (i, d["v"].as_u64().unwrap())
        })
        .collect()
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Kills writer children until `kills` rounds are done (`in_compaction`: until that many kills
/// landed inside a compaction), checking after each that every acknowledged op is present.
fn kill_loop(kills: usize, in_compaction: bool) {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = 0u64; // first op the next child runs
    let mut model = BTreeMap::new(); // state after ops 0..next
    let mut landed_unacked = 0;
    let mut mid_compaction = 0;
    let mut round = 0;
    while if in_compaction {
        mid_compaction < kills
    } else {
        round < kills
    } {
        assert!(
            round < 10 * kills.max(1),
            "too few kills land in compaction"
        );
        let durability = if in_compaction {
            ["full-compact", "buffered-compact"][round % 2]
        } else {
            ["full", "buffered", "full-inline", "buffered-inline"][round % 4]
        };
        let mut c = Command::new(&exe)
            .args([
                "--child",
                &path,
                &next.to_string(),
                durability,
                "",
                "1000000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let delay = Duration::from_micros(2_000 + rng(&mut seed) % 40_000);
        let stdout = c.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(delay);
        c.kill().unwrap();
        let status = c.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
        assert!(
            err.is_empty() || status.code().is_none(),
            "child failed: {err}"
        );
        // Killed after "c<k>" and before the next ack: inside a compaction.
        if lines.last().is_some_and(|l| l.starts_with('c')) {
            mid_compaction += 1;
        }
        let acked: Vec<u64> = lines.iter().filter_map(|l| l.parse().ok()).collect();
        let last = acked.last().copied();
        if let Some(l) = last {
            assert_eq!(acked, (next..=l).collect::<Vec<_>>());
            for k in next..=l {
                apply(&mut model, k);
            }
            next = l + 1;
        }
        // The op in flight may or may not have landed; nothing acknowledged may be missing.
        let got = state(dir.path());
        let mut with_next = model.clone();
        apply(&mut with_next, next);
        assert!(
            got == model || got == with_next,
            "round {round}: state after kill matches neither\n got {got:?}\nwant {model:?}"
        );
        // If it landed, the next child simply redoes it: every op is idempotent.
        if got != model {
            landed_unacked += 1;
        }
        round += 1;
    }
    // Files written but never named by a head record: kills between a file write and the head
    // record update (a commit's diff, or a compaction's output). Garbage collection removes
    // exactly those.
    let store = Store::open(dir.path()).unwrap();
    let live = store.open_db("crash").unwrap().info().unwrap().files.len();
    let stored = |d: &std::path::Path| {
        std::fs::read_dir(d.join("files"))
            .unwrap()
            .map(|d| d.unwrap())
            .filter(|d| !d.file_name().to_string_lossy().starts_with('.'))
            .map(|d| std::fs::read_dir(d.path()).unwrap().count())
            .sum::<usize>()
    };
    let orphans = stored(dir.path()) - live;
    let r = store.gc().unwrap();
    assert_eq!(r.removed_files, orphans);
    assert_eq!(stored(dir.path()), live);
    // gc took nothing a head record names.
    let got = state(dir.path());
    let mut with_next = model.clone();
    apply(&mut with_next, next);
    assert!(got == model || got == with_next, "after gc");
    println!(
        "crash{}: {round} kills ({mid_compaction} inside a compaction), {next} acknowledged ops all \
         present, {landed_unacked} unacknowledged ops landed, {orphans} orphaned files (kills \
         between a file write and its head record) removed by gc",
        if in_compaction { " during compaction" } else { "" }
    );
}

fn two_writers() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    Store::open(&path).unwrap().create(Some("crash")).unwrap();
    let n = 150u64;
    let mut kids: Vec<_> = ["a", "b"]
        .iter()
        .map(|p| {
            Command::new(&exe)
                .args(["--child", &path, "0", "buffered", p, &n.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Garbage collection in this process while both write (and compact): it must never take
    // a file a writer has written but not yet named in its head record.
    let gc_store = Store::open(&path).unwrap();
    let mut gcs = 0;
    while kids.iter_mut().any(|k| k.try_wait().unwrap().is_none()) {
        gc_store.gc().unwrap();
        gcs += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success());
        assert_eq!(
            String::from_utf8(o.stdout).unwrap().lines().count() as u64,
            n
        );
    }
    let db = Store::open(&path).unwrap().open_db("crash").unwrap();
    let info = db.info().unwrap();
    assert_eq!(
        (info.docs, info.events, info.heads.len()),
        (2 * n, 2 * n, 1)
    );
    for p in ["a", "b"] {
        for k in 0..n {
            assert!(db.get(&format!("{p}{k:05}")).unwrap().is_some());
        }
    }
    assert!(db.verify().unwrap().ok());
    println!(
        "two writer processes: {n} commits each, none lost, {gcs} garbage collections meanwhile"
    );
}

/// Writer for `readers_never_see_torn_state`: each commit sets "a" and "b" to the same value k.
fn pair_writer(dir: &str, count: u64) {
    let store = Store::open_with(dir, opts(Durability::Buffered)).expect("open store");
    let db = store.open_db("pairs").expect("open");
    for k in 1..=count {
        db.bulk(&[json!({"_id": "a", "k": k}), json!({"_id": "b", "k": k})])
            .expect("commit");
    }
}

/// A reader in this process while a writer process commits (and compacts every few commits):
/// every read sees both halves of one transaction, and never goes back in time.
fn readers_never_see_torn_state() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    Store::open(&path).unwrap().create(Some("pairs")).unwrap();
    let n = 1500u64;
    let mut w = Command::new(&exe)
        .args(["--pairs", &path, &n.to_string()])
        .spawn()
        .unwrap();
    let store = Store::open_with(&path, opts(Durability::Buffered)).unwrap();
    let db = store.open_db("pairs").unwrap();
    let (mut last, mut reads, mut fresh_handles) = (0u64, 0u64, 0u64);
    loop {
        let done = w.try_wait().unwrap().is_some();
        // Alternate between a long-lived handle and fresh ones (cold caches, new opens).
        let h = if reads % 7 == 0 {
            fresh_handles += 1;
            Store::open_with(&path, opts(Durability::Buffered))
                .unwrap()
                .open_db("pairs")
                .unwrap()
        } else {
            db.clone()
        };
        let docs = h.docs(&ListOptions::default()).unwrap();
        reads += 1;
        if !docs.is_empty() {
            assert_eq!(docs.len(), 2, "{docs:?}");
            let (a, b) = (
                docs[0]["k"].as_u64().unwrap(),
                docs[1]["k"].as_u64().unwrap(),
            );
            assert_eq!(a, b, "a torn transaction: {docs:?}");
            assert!(a >= last, "went back in time: {a} after {last}");
            last = a;
        }
        if done {
            break;
        }
    }
    assert!(w.wait().unwrap().success());
    assert_eq!(last, n);
    assert!(db.verify().unwrap().ok());
    println!("readers: {reads} consistent reads ({fresh_handles} on fresh handles) during {n} commits by another process");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--pairs") {
        pair_writer(&args[2], args[3].parse().unwrap());
        return;
    }
    if args.get(1).map(String::as_str) == Some("--child") {
        let start: u64 = args[3].parse().unwrap();
        let count: u64 = args[6].parse().unwrap();
        child(&args[2], start, &args[4], &args[5], count);
        return;
    }
    // Skip when a filter that doesn't name this binary's tests is given (cargo test NAME).
    if args
        .iter()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"crash two_writers readers".contains(a.as_str()))
    {
        return;
    }
    let kills = std::env::var("KILN_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = Instant::now();
    two_writers();
    readers_never_see_torn_state();
    kill_loop(kills, false);
    let compaction_kills = std::env::var("KILN_CRASH_COMPACTION_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    kill_loop(compaction_kills, true);
    println!("4 passed, 0 failed ({:.1}s)", t.elapsed().as_secs_f64());
}
