//! Sync benchmarks (issue 17; README "Measured"): a full push and a full pull of an N-document
//! database through a folder remote beside copying the same bytes raw (`cp -r`, and `cp -r`
//! then `sync`), a no-op sync's requests and time, `sync_many` over 1,000 databases of which
//! 10 changed, and what one commit costs to push.
//!
//! `cargo run --release -p kiln-sync --example sync_bench -- DIR [N]`

use kiln::{ListOptions, Options, Store};
use kiln_sync::{sync, sync_many, FolderRemote, SyncOptions};
use serde_json::json;
use std::time::Instant;

fn sh(cmd: &str) -> f64 {
    let t = Instant::now();
    assert!(std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap()
        .success());
    t.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(100_000);
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options {
        background_compaction: false,
        ..Options::default()
    };
    let a = Store::open_with(dir.join("a"), opts.clone()).unwrap();
    let da = a.create(Some("bench")).unwrap();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let docs: Vec<_> = chunk
            .iter()
            .map(|i| {
                json!({"_id": format!("doc{i:08}"), "n": i, "name": format!("name {i}"),
                       "tags": ["a", "b", i % 7], "text": format!("{:0>120}", i)})
            })
            .collect();
        da.bulk(&docs).unwrap();
    }
    println!("load: {n} documents in {:.2} s", t.elapsed().as_secs_f64());
    let info = da.info().unwrap();
    println!("database: {} files, {} bytes", info.files.len(), info.bytes);
    let root = dir.join("remote");
    let remote = FolderRemote::open(&root).unwrap();
    // Push (the first sync also probes the remote: counted apart).
    kiln_sync::probe(&remote).unwrap();
    let t = Instant::now();
    let r = sync(&a, &da, &remote, "bench", SyncOptions::default()).unwrap();
    let push = t.elapsed().as_secs_f64();
    let pushed = r.bytes_pushed;
    // Raw: the same files copied.
    let cp = sh(&format!(
        "cp -r {} {}",
        root.join("files").display(),
        dir.join("raw1").display()
    ));
    let cp_sync = sh(&format!(
        "cp -r {} {} && sync",
        root.join("files").display(),
        dir.join("raw2").display()
    ));
    println!(
        "push: {} files, {} bytes in {push:.3} s: {:.0} docs/s, {:.1} MB/s; cp -r {cp:.3} s, cp -r + sync {cp_sync:.3} s; kiln/cp = {:.2}, kiln/(cp+sync) = {:.2} (rate ratios)",
        r.files_pushed,
        pushed,
        n as f64 / push,
        pushed as f64 / push / 1e6,
        cp / push,
        cp_sync / push
    );
    // Pull into a new replica.
    let key = a.export_key("bench", None).unwrap();
    let b = Store::open_with(dir.join("b"), opts.clone()).unwrap();
    b.import_key("bench", &key, None).unwrap();
    let db = b.open_db("bench").unwrap();
    kiln_sync::probe(&remote).unwrap();
    let t = Instant::now();
    let r = sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
    let pull = t.elapsed().as_secs_f64();
    let cp = sh(&format!(
        "cp -r {} {}",
        root.join("files").display(),
        dir.join("raw3").display()
    ));
    let cp_sync = sh(&format!(
        "cp -r {} {} && sync",
        root.join("files").display(),
        dir.join("raw4").display()
    ));
    println!(
        "pull: {} files, {} bytes in {pull:.3} s: {:.0} docs/s, {:.1} MB/s; cp -r {cp:.3} s, cp -r + sync {cp_sync:.3} s; kiln/cp = {:.2}, kiln/(cp+sync) = {:.2} (rate ratios)",
        r.files_pulled,
        r.bytes_pulled,
        n as f64 / pull,
        r.bytes_pulled as f64 / pull / 1e6,
        cp / pull,
        cp_sync / pull
    );
    assert_eq!(db.info().unwrap().docs, n as u64);
    let t = Instant::now();
    let first = db.docs(&ListOptions::default()).unwrap().len();
    println!(
        "the replica reads all {first} documents in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    // No-op syncs.
    let mut reqs = 0;
    let t = Instant::now();
    for _ in 0..100 {
        reqs += sync(&b, &db, &remote, "bench", SyncOptions::default())
            .unwrap()
            .requests;
    }
    println!(
        "no-op sync: {} requests, {:.3} ms",
        reqs / 100,
        t.elapsed().as_secs_f64() * 10.0
    );
    // One commit pushed, and pulled (after one that crosses the compaction limit, whose push
    // carries the compacted file).
    da.put(&json!({"_id": "one", "v": 0})).unwrap();
    sync(&a, &da, &remote, "bench", SyncOptions::default()).unwrap();
    sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
    da.put(&json!({"_id": "one", "v": 1})).unwrap();
    let r = sync(&a, &da, &remote, "bench", SyncOptions::default()).unwrap();
    let r2 = sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
    println!(
        "one commit: push {} requests, {} bytes uploaded (+ a {}-byte record); pull {} requests, {} bytes",
        r.requests,
        r.bytes_pushed,
        std::fs::metadata(root.join("heads/bench.head")).unwrap().len(),
        r2.requests,
        r2.bytes_pulled
    );
    if std::env::var("SYNC_BENCH_ONE").is_ok() {
        return;
    }
    // 1,000 databases, 10 changed.
    let c = Store::open_with(dir.join("c"), opts.clone()).unwrap();
    let names: Vec<String> = (0..1000).map(|i| format!("db{i:04}")).collect();
    for nm in &names {
        c.create(Some(nm))
            .unwrap()
            .put(&json!({"_id": "x"}))
            .unwrap();
    }
    drop(c);
    sh(&format!(
        "cp -a {} {}",
        dir.join("c").display(),
        dir.join("d").display()
    ));
    let c = Store::open_with(dir.join("c"), opts.clone()).unwrap();
    let d = Store::open_with(dir.join("d"), opts).unwrap();
    let many = FolderRemote::open(dir.join("many")).unwrap();
    let hc: Vec<_> = names.iter().map(|x| c.open_db(x).unwrap()).collect();
    let hd: Vec<_> = names.iter().map(|x| d.open_db(x).unwrap()).collect();
    let pc: Vec<(&kiln::Database, &str)> = hc
        .iter()
        .zip(&names)
        .map(|(h, x)| (h, x.as_str()))
        .collect();
    let pd: Vec<(&kiln::Database, &str)> = hd
        .iter()
        .zip(&names)
        .map(|(h, x)| (h, x.as_str()))
        .collect();
    sync_many(&c, &pc, &many, SyncOptions::default()).unwrap();
    sync_many(&d, &pd, &many, SyncOptions::default()).unwrap();
    let t = Instant::now();
    let rs = sync_many(&d, &pd, &many, SyncOptions::default()).unwrap();
    let reqs: usize = rs.iter().map(|r| r.as_ref().unwrap().requests).sum();
    println!(
        "--all over 1000 databases, none changed: {reqs} requests, {:.3} s",
        t.elapsed().as_secs_f64()
    );
    for h in hc.iter().step_by(100) {
        h.put(&json!({"_id": "y"})).unwrap();
    }
    sync_many(&c, &pc, &many, SyncOptions::default()).unwrap();
    let t = Instant::now();
    let rs = sync_many(&d, &pd, &many, SyncOptions::default()).unwrap();
    let reqs: usize = rs.iter().map(|r| r.as_ref().unwrap().requests).sum();
    let changed = rs.iter().filter(|r| r.as_ref().unwrap().adopted).count();
    println!(
        "--all over 1000 databases, {changed} changed: {reqs} requests, {:.3} s",
        t.elapsed().as_secs_f64()
    );
}
