//! Sync server benchmarks (issue 18; README "Measured"): a full push and a full pull of an
//! N-document database through a server on loopback (over a folder) beside the same files
//! uploaded and downloaded raw with the same HTTP client (reqwest, 8 requests in flight, as
//! the sync keeps), and the write-to-visible latency of `watch` through the live channel.
//!
//! `cargo run --release -p kiln-server --example server_bench -- DIR [N] [WRITES] [POLL_MS]`
//! (POLL_MS: how often the watcher's server polls the bucket in the two-server run; 200)

use kiln::{Options, Store};
use kiln_server::{spawn, ServerOptions};
use kiln_sync::{sync, watch, FolderRemote, HttpRemote, Kind, SyncOptions, WatchOptions};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(i: usize, d: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(d)
}

/// `files` sent (PUT) or fetched (GET) at `url`, 8 at a time, through one reqwest client on a
/// current-thread runtime: seconds.
fn raw(url: &str, files: &[(kiln::FileName, Vec<u8>)], put: bool) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (name, bytes) in files {
            if set.len() >= 8 {
                set.join_next().await.unwrap().unwrap();
            }
            let u = format!("{url}/v1/files/diff/{name}");
            let req = if put {
                client.put(u).body(bytes.clone())
            } else {
                client.get(u)
            };
            set.spawn(async move {
                let r = req.send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    t.elapsed().as_secs_f64()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let n = arg(2, 100_000);
    let writes = arg(3, 1000);
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options {
        background_compaction: false,
        ..Options::default()
    };
    let a = Store::open_with(dir.join("a"), opts.clone()).unwrap();
    let da = a.create(Some("bench")).unwrap();
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
    let files: Vec<(kiln::FileName, Vec<u8>)> = da
        .info()
        .unwrap()
        .files
        .iter()
        .map(|f| {
            let b = a
                .stored_file(kiln::FileKind::Diff, &f.name)
                .unwrap()
                .unwrap();
            (f.name, b)
        })
        .collect();
    let bytes: usize = files.iter().map(|f| f.1.len()).sum();
    println!(
        "{n} documents in {} diff files, {:.1} MB; a server on loopback over a folder",
        files.len(),
        bytes as f64 / 1e6
    );
    let server = |name: &str| {
        spawn(
            "127.0.0.1:0",
            Arc::new(FolderRemote::open(dir.join(name)).unwrap()),
            ServerOptions::default(),
        )
        .unwrap()
    };

    // Full push and pull through a server.
    let s1 = server("storage1");
    let remote = HttpRemote::open(&s1.url(), None).unwrap();
    let t = Instant::now();
    let r = sync(&a, &da, &remote, "bench", SyncOptions::default()).unwrap();
    let push = t.elapsed().as_secs_f64();
    assert!(r.pushed && r.files_pushed == files.len(), "{r:?}");
    let b = Store::open_with(dir.join("b"), opts.clone()).unwrap();
    b.import_key("bench", &a.export_key("bench", None).unwrap(), None)
        .unwrap();
    let db = b.open_db("bench").unwrap();
    let t = Instant::now();
    let r = sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
    let pull = t.elapsed().as_secs_f64();
    assert!(r.adopted && r.files_pulled == files.len(), "{r:?}");
    // Raw: the same files through a fresh server, the same client, 8 at a time.
    let s2 = server("storage2");
    let put = raw(&s2.url(), &files, true);
    let get = raw(&s2.url(), &files, false);
    for (what, kiln_s, raw_s) in [("push", push, put), ("pull", pull, get)] {
        println!(
            "full {what}: {kiln_s:.3} s ({:.0} docs/s, {:.1} MB/s); raw {} 8 at a time {raw_s:.3} s; kiln ÷ raw (rate) {:.2}",
            n as f64 / kiln_s,
            bytes as f64 / kiln_s / 1e6,
            if what == "push" { "PUTs" } else { "GETs" },
            raw_s / kiln_s
        );
    }
    assert_eq!(Kind::Diff.name_of(&files[0].1), files[0].0);

    let (mut lat, mut pushes) = latency(&a, &da, &remote, b, db, &s1.url(), "w", writes);
    println!(
        "write-to-visible through the live channel, {writes} writes (a put, a push, the other replica's watch taking it in): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    of_which(&mut pushes);

    // The same with two servers over one bucket (s3s-fs on loopback): A pushes through one,
    // B watches through the other, which polls the bucket every 200 ms.
    let s3 = kiln_sync::testing::S3sFs::start_in(&dir.join("s3data"), &["live"]);
    let poll = Duration::from_millis(arg(4, 200) as u64);
    let on_bucket = || {
        spawn(
            "127.0.0.1:0",
            Arc::new(s3.open_at("live/db")),
            ServerOptions {
                poll,
                ..ServerOptions::default()
            },
        )
        .unwrap()
    };
    let (one, two) = (on_bucket(), on_bucket());
    let a2 = Store::open_with(dir.join("a2"), opts.clone()).unwrap();
    let da2 = a2.create(Some("small")).unwrap();
    da2.put(&json!({"_id": "start"})).unwrap();
    let r1 = HttpRemote::open(&one.url(), None).unwrap();
    sync(&a2, &da2, &r1, "small", SyncOptions::default()).unwrap();
    let b2 = Store::open_with(dir.join("b2"), opts).unwrap();
    b2.import_key("small", &a2.export_key("small", None).unwrap(), None)
        .unwrap();
    let db2 = b2.open_db("small").unwrap();
    let (mut lat, mut pushes2) = latency(&a2, &da2, &r1, b2, db2, &two.url(), "v", writes);
    println!(
        "the same through two servers over one bucket (the watcher's server polls it every {} ms), {writes} writes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        poll.as_millis(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
    of_which(&mut pushes2);
}

/// Write-to-visible latency, in ms, of `writes` documents (ids `PREFIX0…`): B watches `url`
/// (its poll a minute, so only the live channel brings writes sooner); A writes a document
/// and syncs through `remote`; the time until B holds it, and how long A's put and sync took.
#[allow(clippy::too_many_arguments)]
fn latency(
    a: &Store,
    da: &kiln::Database,
    remote: &HttpRemote,
    b: Store,
    db: kiln::Database,
    url: &str,
    prefix: &'static str,
    writes: usize,
) -> (Vec<f64>, Vec<f64>) {
    let id = da.name().to_owned();
    let seen = Arc::new(AtomicUsize::new(0));
    let (seen_b, url, id_b) = (seen.clone(), url.to_owned(), id.clone());
    let watcher = std::thread::spawn(move || {
        let remote = HttpRemote::open(&url, None).unwrap();
        let pace = WatchOptions {
            poll: Duration::from_secs(60),
            ..WatchOptions::default()
        };
        let on_sync = &mut |r: &Result<kiln_sync::SyncReport, kiln_sync::SyncError>| {
            r.as_ref().unwrap();
            let mut k = seen_b.load(Ordering::SeqCst);
            while k < writes && db.get(&format!("{prefix}{k}")).unwrap().is_some() {
                k += 1;
            }
            seen_b.store(k, Ordering::SeqCst);
            k < writes
        };
        watch(
            &b,
            &db,
            &remote,
            &id_b,
            SyncOptions::default(),
            pace,
            on_sync,
        )
        .unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    let (mut lat, mut pushes) = (Vec::with_capacity(writes), Vec::with_capacity(writes));
    for i in 0..writes {
        let t = Instant::now();
        da.put(&json!({"_id": format!("{prefix}{i}"), "n": i}))
            .unwrap();
        sync(a, da, remote, &id, SyncOptions::default()).unwrap();
        pushes.push(t.elapsed().as_secs_f64() * 1e3);
        while seen.load(Ordering::SeqCst) <= i {
            std::thread::sleep(Duration::from_micros(200));
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "write {i} never arrived"
            );
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    watcher.join().unwrap();
    (lat, pushes)
}

/// Prints a latency line's breakdown: how long the writer's put and push took.
fn of_which(pushes: &mut [f64]) {
    println!(
        "  of which the writer's put and push: p50 {:.1} ms, p99 {:.1} ms",
        pct(pushes, 0.5),
        pct(pushes, 0.99)
    );
}
