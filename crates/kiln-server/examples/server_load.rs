//! Concurrent load on one sync server (issue 18; README "Measured"): C clients (default 100),
//! each a process of its own with its own store, in teams of G (default 10): each team shares
//! D databases (default 10) of its own, each client holding a replica of its team's. For R
//! rounds (default 5) every client writes a document to each of its databases and syncs it,
//! all at once, through one `kiln serve` process over a folder (`folder`, one head record per
//! database written by compare-and-swap) or an S3-compatible bucket (`s3`, s3s-fs: a record
//! per replica, no races). Then every replica syncs until quiet, and each must hold every
//! write of its team (nothing lost). Reports syncs and requests per second, sync latency
//! p50/p99, and the server's peak memory. (G = C: every client shares every database.)
//!
//! `cargo build --release -p kiln-cli && cargo run --release -p kiln-server --example
//! server_load -- DIR [CLIENTS] [DATABASES] [ROUNDS] [folder|s3] [G]`

use kiln::{Options, Store};
use kiln_sync::{sync, HttpRemote, SyncOptions};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
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

/// The clients' stores: not made durable (what is measured is the server; a hundred stores
/// each flushing the one disk of this machine measure the disk).
fn opts() -> Options {
    Options {
        background_compaction: false,
        durability: kiln::Durability::Buffered,
        ..Options::default()
    }
}

/// One client, in a process of its own: `--client C DIR URL ROUNDS DB…`. Says `ready` once its
/// store holds the keys, waits for a line on stdin, then writes and syncs; prints a JSON line
/// of what it measured.
fn client(args: &[String]) {
    let (c, dir, url) = (&args[0], std::path::Path::new(&args[1]), &args[2]);
    let rounds: usize = args[3].parse().unwrap();
    let names = &args[4..];
    let store = Store::open_with(dir.join(format!("c{c}")), opts()).unwrap();
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("keys.json")).unwrap()).unwrap();
    for n in names {
        store
            .import_key(n, keys[n.as_str()].as_str().unwrap(), None)
            .unwrap();
    }
    let remote = HttpRemote::open(url, None).unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let (mut latencies, mut requests, mut busy, mut retries) = (Vec::new(), 0, 0, 0);
    let seed: usize = c.parse().unwrap();
    for r in 0..rounds {
        for n in names {
            let db = store.open_db(n).unwrap();
            db.put(&json!({"_id": format!("c{c}-r{r}"), "by": c}))
                .unwrap();
            let t = Instant::now();
            // A folder keeps one record per database, written by compare-and-swap: a hundred
            // replicas racing on it lose often, and a sync that lost too many rounds says
            // "retry" (Busy), as an app would, after a pause.
            let rep = loop {
                match sync(&store, &db, &remote, n, SyncOptions::default()) {
                    Ok(rep) => break rep,
                    Err(kiln_sync::SyncError::Busy) => {
                        busy += 1;
                        let pause = 5 + (seed as u64 * 7 + r as u64 * 13) % 20;
                        std::thread::sleep(std::time::Duration::from_millis(pause));
                    }
                    Err(e) => panic!("client {c}, {n}: {e}"),
                }
            };
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
            requests += rep.requests;
            retries += rep.retries;
        }
    }
    println!(
        "{}",
        json!({"latencies": latencies, "requests": requests, "busy": busy, "retries": retries})
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        return client(&args[2..]);
    }
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let (clients, dbs, rounds) = (arg(2, 100), arg(3, 10), arg(4, 5));
    let over = args.get(5).map_or("folder", String::as_str).to_owned();
    let team = arg(6, 10).clamp(1, clients);
    let teams = clients.div_ceil(team);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kiln = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/kiln");
    assert!(
        kiln.exists(),
        "build it first: cargo build --release -p kiln-cli"
    );
    let s3 = (over == "s3").then(kiln_sync::testing::S3sFs::start);
    let mut serve = Command::new(&kiln);
    serve.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--max-connections",
        "1024",
        "--storage",
    ]);
    match &s3 {
        Some(s3) => {
            serve
                .arg(format!("s3://{}/load", kiln_sync::testing::BUCKET))
                .env("AWS_ENDPOINT_URL", &s3.endpoint)
                .env("AWS_ACCESS_KEY_ID", &s3.key)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret)
                .env("AWS_REGION", "us-east-1");
        }
        None => {
            serve.arg(dir.join("storage"));
        }
    }
    let mut server = serve
        .env("KILN_LOG", "warn")
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
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    let idle = peak_mib(server.id());

    // The databases, made once; every client imports their keys.
    let seed = Store::open_with(dir.join("seed"), opts()).unwrap();
    let names_of =
        |t: usize| -> Vec<String> { (0..dbs).map(|d| format!("t{t}-shared{d}")).collect() };
    let mut keys = serde_json::Map::new();
    for n in (0..teams).flat_map(names_of) {
        let n = &n;
        seed.create(Some(n)).unwrap();
        keys.insert(n.clone(), seed.export_key(n, None).unwrap().into());
    }
    std::fs::write(
        dir.join("keys.json"),
        serde_json::Value::Object(keys).to_string(),
    )
    .unwrap();
    drop(seed);

    // The clients, each a process; all start together.
    let me = std::env::current_exe().unwrap();
    let mut procs: Vec<std::process::Child> = (0..clients)
        .map(|c| {
            Command::new(&me)
                .arg("--client")
                .arg(c.to_string())
                .arg(&dir)
                .arg(&url)
                .arg(rounds.to_string())
                .args(names_of(c / team))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outs: Vec<BufReader<std::process::ChildStdout>> = procs
        .iter_mut()
        .map(|p| BufReader::new(p.stdout.take().unwrap()))
        .collect();
    for o in &mut outs {
        let mut l = String::new();
        o.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "ready", "a client did not start");
    }
    let t = Instant::now();
    for p in &mut procs {
        writeln!(p.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let (mut latencies, mut reqs, mut busy, mut retries) = (Vec::new(), 0u64, 0u64, 0u64);
    for (p, o) in procs.iter_mut().zip(&mut outs) {
        let mut l = String::new();
        o.read_line(&mut l).unwrap();
        assert!(p.wait().unwrap().success(), "a client failed");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        latencies.extend(
            v["latencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap()),
        );
        reqs += v["requests"].as_u64().unwrap();
        busy += v["busy"].as_u64().unwrap();
        retries += v["retries"].as_u64().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_mib(server.id());

    // Until quiet: every replica takes in the others' last writes (one store open at a time).
    let remote = HttpRemote::open(&url, None).unwrap();
    for _ in 0..3 {
        for c in 0..clients {
            let store = Store::open_with(dir.join(format!("c{c}")), opts()).unwrap();
            for n in &names_of(c / team) {
                let db = store.open_db(n).unwrap();
                sync(&store, &db, &remote, n, SyncOptions::default()).unwrap();
            }
        }
    }
    let want = team * rounds; // (a team's writes to each of its databases)
    let mut lost = 0;
    for c in 0..clients {
        let store = Store::open_with(dir.join(format!("c{c}")), opts()).unwrap();
        let first = c / team * team;
        let members = first..(first + team).min(clients);
        for n in &names_of(c / team) {
            // Every write of every member of the team, by its id and its writer.
            let db = store.open_db(n).unwrap();
            for m in members.clone() {
                for r in 0..rounds {
                    let by = m.to_string();
                    let doc = db.get(&format!("c{m}-r{r}")).unwrap();
                    lost += usize::from(doc.is_none_or(|d| d["by"] != by.as_str()));
                }
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();

    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let n_syncs = latencies.len();
    println!(
        "{clients} client processes (teams of {team}, each sharing {dbs} databases) x {rounds} \
         rounds through one server over {over}: {n_syncs} syncs, {reqs} requests in {secs:.2} s: {:.0} requests/s, {:.0} \
         syncs/s; a sync (a commit pushed, others' taken in): p50 {:.1} ms, p99 {:.1} ms \
         ({retries} lost races retried inside syncs, {busy} syncs said retry); server peak \
         memory {peak:.1} MiB (idle {idle:.1} MiB); writes lost: {lost} of {} (every replica \
         of every database holds its team's {want} writes)",
        reqs as f64 / secs,
        n_syncs as f64 / secs,
        pct(0.5),
        pct(0.99),
        clients * dbs * want,
    );
    assert_eq!(lost, 0, "writes were lost");
}
