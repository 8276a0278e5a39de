//! Concurrent load on one sync server (issue 18; README "Measured"): C clients (default 100)
//! each keep a replica of D shared databases (default 10), and for R rounds (default 5) write a
//! document to each and sync it, all at once, through one `kiln serve` process over a folder.
//! Then every replica syncs until quiet, and each must hold every write (nothing lost).
//! Reports syncs and requests per second, sync latency p50/p99, and the server's peak memory.
//!
//! `cargo build --release -p kiln-cli && cargo run --release -p kiln-server --example
//! server_load -- DIR [CLIENTS] [DATABASES] [ROUNDS]`

use kiln::{Options, Store};
use kiln_sync::{sync, HttpRemote, SyncOptions};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Instant;

fn arg(i: usize, d: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(d)
}

/// The server's peak resident memory (VmHWM), in MiB.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let (clients, dbs, rounds) = (arg(2, 100), arg(3, 10), arg(4, 5));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kiln = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/kiln");
    assert!(
        kiln.exists(),
        "build it first: cargo build --release -p kiln-cli"
    );
    let mut server = Command::new(&kiln)
        .args(["serve", "--addr", "127.0.0.1:0", "--storage"])
        .arg(dir.join("storage"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let idle = peak_mib(server.id());

    // The databases, made once; every client holds their keys.
    let opts = Options {
        background_compaction: false,
        ..Options::default()
    };
    let seed = Store::open_with(dir.join("seed"), opts.clone()).unwrap();
    let names: Vec<String> = (0..dbs).map(|d| format!("shared{d}")).collect();
    let keys: Vec<String> = names
        .iter()
        .map(|n| {
            seed.create(Some(n)).unwrap();
            seed.export_key(n, None).unwrap()
        })
        .collect();
    // (Each client's store is opened in its thread and let go of after: a hundred stores'
    // open files at once would pass this machine's limit of descriptors.)
    let store_of = |c: usize| Store::open_with(dir.join(format!("c{c}")), opts.clone()).unwrap();
    for c in 0..clients {
        let s = store_of(c);
        for (n, k) in names.iter().zip(&keys) {
            s.import_key(n, k, None).unwrap();
        }
    }

    let (requests, syncs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (busy, retries) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let latencies = Mutex::new(Vec::new());
    let start = Barrier::new(clients);
    let t = Instant::now();
    std::thread::scope(|sc| {
        for c in 0..clients {
            let (url, names, start, store_of) = (&url, &names, &start, &store_of);
            let (requests, syncs, latencies) = (&requests, &syncs, &latencies);
            let (busy, retries) = (&busy, &retries);
            sc.spawn(move || {
                let remote = HttpRemote::open(url, None).unwrap();
                let store = &store_of(c);
                let mut mine = Vec::new();
                start.wait();
                for r in 0..rounds {
                    for n in names {
                        let db = store.open_db(n).unwrap();
                        db.put(&json!({"_id": format!("c{c}-r{r}"), "by": c}))
                            .unwrap();
                        let t = Instant::now();
                        // A folder keeps one record per database, written by compare-and-swap:
                        // a hundred replicas racing on it lose often, and a sync that lost too
                        // many rounds says "retry" (Busy), as an app would, after a pause.
                        let rep = loop {
                            match sync(store, &db, &remote, n, SyncOptions::default()) {
                                Ok(rep) => break rep,
                                Err(kiln_sync::SyncError::Busy) => {
                                    busy.fetch_add(1, Ordering::Relaxed);
                                    let pause = 5 + (c as u64 * 7 + r as u64 * 13) % 20;
                                    std::thread::sleep(std::time::Duration::from_millis(pause));
                                }
                                Err(e) => panic!("client {c}, {n}: {e}"),
                            }
                        };
                        mine.push(t.elapsed().as_secs_f64() * 1e3);
                        requests.fetch_add(rep.requests, Ordering::Relaxed);
                        retries.fetch_add(rep.retries, Ordering::Relaxed);
                        syncs.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_mib(server.id());

    // Until quiet: every replica takes in the others' last writes.
    let remote = HttpRemote::open(&url, None).unwrap();
    for _ in 0..3 {
        for c in 0..clients {
            let store = &store_of(c);
            for n in &names {
                let db = store.open_db(n).unwrap();
                sync(store, &db, &remote, n, SyncOptions::default()).unwrap();
            }
        }
    }
    let want = clients * rounds;
    let mut lost = 0;
    for c in 0..clients {
        let store = &store_of(c);
        for n in &names {
            let db = store.open_db(n).unwrap();
            let have = db.info().unwrap().docs as usize;
            lost += want.saturating_sub(have);
        }
    }
    let _ = server.kill();
    let _ = server.wait();

    let mut l = latencies.into_inner().unwrap();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    let (reqs, n_syncs) = (requests.into_inner(), syncs.into_inner());
    let (busy, retries) = (busy.into_inner(), retries.into_inner());
    println!(
        "{clients} clients x {dbs} databases x {rounds} rounds through one server: {n_syncs} syncs, \
         {reqs} requests in {secs:.2} s: {:.0} requests/s, {:.0} syncs/s; a sync (a commit \
         pushed, others' taken in): p50 {:.1} ms, p99 {:.1} ms ({retries} lost races retried \
         inside syncs, {busy} syncs said retry); server peak memory {peak:.1} MiB \
         (idle {idle:.1} MiB); writes lost: {lost} of {} (every replica of every database \
         holds all {want})",
        reqs as f64 / secs,
        n_syncs as f64 / secs,
        pct(0.5),
        pct(0.99),
        clients * dbs * want,
    );
    assert_eq!(lost, 0, "writes were lost");
}
