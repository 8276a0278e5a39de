//! The S3 sync benchmark (issue 17): a full push of an N-document database to an empty
//! `s3://` remote and a full pull into a fresh store, through s3s-fs on loopback, beside the
//! raw rate: the same objects (the database's diff files: same count, same sizes) uploaded and
//! downloaded with the same `object_store` S3 client, configured as [`kiln_sync::S3Remote`]
//! configures it, on the same kind of runtime (current-thread tokio), one request at a time (as
//! the sync moves files) and `PAR` at a time (what a parallel sync could do). Also: a run of
//! HEAD requests (what a push asks before each upload), a no-op sync's requests and time, and
//! one commit's push and pull.
//!
//! `cargo run --release -p kiln-sync --example s3_bench -- DIR [N]`
//!
//! s3s-fs: `KILN_S3S_FS`, else `target/tools/bin/s3s-fs` (`scripts/s3-server.sh --install`).
//! Its data folder is `DIR/s3data` (each bucket a folder in it). Knobs: `REPS` (full
//! push/pull and raw runs each, 1 to 5, default 3; medians reported), `PAR` (parallel requests of the
//! parallel raw runs, default 8). A bucket remote keeps a head record per replica (layout 2):
//! a sync lists the database's records, takes in the others' that changed, then brings its own
//! up to date, so the pull into a new store writes that store's record too.
//!
//! s3s-fs 0.14.1 leaves Nagle's algorithm on for the connections it accepts (no
//! `TCP_NODELAY`): a response whose body follows its headers in a second small write waits for
//! the client's delayed ACK, ~40 ms on Linux. Every GET (a no-op sync's conditional GET too)
//! costs ~40 ms more than it should; PUTs and HEADs do not. The benchmark says so when it sees
//! it. To measure without it, preload a shim that sets `TCP_NODELAY` on accepted sockets into
//! the server (the benchmark's environment reaches it):
//!
//! ```text
//! // nodelay.c: gcc -shared -fPIC -O2 -o libnodelay.so nodelay.c -ldl
//! #define _GNU_SOURCE
//! #include <dlfcn.h>
//! #include <netinet/in.h>
//! #include <netinet/tcp.h>
//! #include <sys/socket.h>
//! int accept4(int s, struct sockaddr *a, socklen_t *l, int f) {
//!     static int (*real)(int, struct sockaddr *, socklen_t *, int);
//!     if (!real) real = dlsym(RTLD_NEXT, "accept4");
//!     int fd = real(s, a, l, f), one = 1;
//!     if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
//!     return fd;
//! }
//! ```
//!
//! `LD_PRELOAD=$PWD/libnodelay.so cargo run --release -p kiln-sync --example s3_bench -- DIR`

use kiln::{FileKind, Options, Store};
use kiln_sync::testing::S3sFs;
use kiln_sync::{sync, Kind, Remote, SyncOptions};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload, RetryConfig};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The bucket of the raw transfers and of the pull's and push's parts; each full push goes to
/// a bucket of its own (`bench0`…): s3s-fs walks a whole bucket to list any prefix of it.
const BUCKET: &str = "raw";

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The S3 client as `S3Remote::open` builds it (without its request counter).
fn client(server: &S3sFs) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id(&server.key)
        .with_secret_access_key(&server.secret)
        .with_virtual_hosted_style_request(false)
        .with_allow_http(true)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        })
        .with_endpoint(&server.endpoint)
        .build()
        .unwrap()
}

/// What one kind of raw transfer does with one object.
#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    Head,
}

/// `op` on every key, `par` requests at a time, on a current-thread runtime (as the remote's):
/// the seconds it took.
fn raw(
    rt: &tokio::runtime::Runtime,
    client: &AmazonS3,
    keys: &[Key],
    payloads: &[PutPayload],
    op: Op,
    par: usize,
) -> f64 {
    let t = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            if set.len() >= par {
                set.join_next().await.unwrap().unwrap();
            }
            let (c, key) = (client.clone(), key.clone());
            let payload = payloads.get(i).cloned();
            set.spawn(async move {
                match op {
                    Op::Put => {
                        c.put_opts(&key, payload.unwrap(), PutOptions::default())
                            .await
                            .unwrap();
                    }
                    Op::Get => {
                        let r = c.get_opts(&key, GetOptions::default()).await.unwrap();
                        r.bytes().await.unwrap();
                    }
                    Op::Head => {
                        let o = GetOptions {
                            head: true,
                            ..GetOptions::default()
                        };
                        c.get_opts(&key, o).await.unwrap();
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn secs(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{s:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let n: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(100_000);
    let reps = env_usize("REPS", 3).clamp(1, 5);
    let par = env_usize("PAR", 8).max(1);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = S3sFs::start_in(
        &dir.join("s3data"),
        &[BUCKET, "bench0", "bench1", "bench2", "bench3", "bench4"],
    );
    let opts = Options {
        background_compaction: false,
        ..Options::default()
    };

    // The database, loaded as sync_bench loads it.
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
    let files: Vec<Vec<u8>> = info
        .files
        .iter()
        .map(|f| a.stored_file(FileKind::Diff, &f.name).unwrap().unwrap())
        .collect();
    let total: u64 = files.iter().map(|b| b.len() as u64).sum();
    let (min, max) = (
        files.iter().map(Vec::len).min().unwrap_or(0),
        files.iter().map(Vec::len).max().unwrap_or(0),
    );
    println!(
        "database: {} diff files, {total} bytes ({min}–{max} bytes each); s3s-fs at {}; \
         {reps} runs of each measure (medians); parallel raw runs: {par} requests at a time",
        files.len(),
        server.endpoint
    );
    let key = a.export_key("bench", None).unwrap();

    // Full pushes, each to an empty remote of its own; full pulls of each into a new store.
    let (mut push, mut pull) = (Vec::new(), Vec::new());
    let (mut push_calls, mut push_http, mut pull_calls, mut pull_http) = (0, 0, 0, 0);
    for rep in 0..reps {
        let remote = server.open_at(&format!("bench{}/db", rep % 5));
        let before = remote.requests();
        let t = Instant::now();
        let r = sync(&a, &da, &remote, "bench", SyncOptions::default()).unwrap();
        push.push(t.elapsed().as_secs_f64());
        assert!(r.pushed && r.bytes_pushed == total, "{r:?}");
        (push_calls, push_http) = (r.requests, remote.requests() - before);
        assert_eq!(r.files_pushed, files.len());

        let b = Store::open_with(dir.join(format!("b{rep}")), opts.clone()).unwrap();
        b.import_key("bench", &key, None).unwrap();
        let db = b.open_db("bench").unwrap();
        let remote = server.open_at(&format!("bench{}/db", rep % 5));
        let before = remote.requests();
        let t = Instant::now();
        let r = sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
        pull.push(t.elapsed().as_secs_f64());
        assert!(r.adopted && r.bytes_pulled == total, "{r:?}");
        (pull_calls, pull_http) = (r.requests, remote.requests() - before);
        assert_eq!(db.info().unwrap().docs, n as u64);
    }

    // Raw: the same bytes, the same client, one at a time and `par` at a time.
    let client = client(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payloads: Vec<PutPayload> = files.iter().map(|b| PutPayload::from(b.clone())).collect();
    let keys = |run: &str| -> Vec<Key> {
        (0..files.len())
            .map(|i| Key::from(format!("raw/{run}/files/{:02x}/{i:064x}.kdf", i % 256)))
            .collect()
    };
    let (mut put1, mut putp, mut get1, mut getp, mut head1) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let k1 = keys(&format!("seq{rep}"));
        let kp = keys(&format!("par{rep}"));
        put1.push(raw(&rt, &client, &k1, &payloads, Op::Put, 1));
        putp.push(raw(&rt, &client, &kp, &payloads, Op::Put, par));
        head1.push(raw(&rt, &client, &k1, &[], Op::Head, 1));
        get1.push(raw(&rt, &client, &k1, &[], Op::Get, 1));
        getp.push(raw(&rt, &client, &kp, &[], Op::Get, par));
    }

    // Where a pull's time goes: its GETs through the remote, keeping the files (each checked
    // against its name and written), making them durable; the same for the push's HEADs and
    // PUTs (to a fresh prefix), one at a time as the sync makes them.
    let (mut s_get, mut s_keep, mut s_fsync, mut s_head, mut s_put) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let remote = server.open_at("bench0/db");
        let c = Store::open_with(dir.join(format!("c{rep}")), opts.clone()).unwrap();
        let t = Instant::now();
        let got: Vec<Vec<u8>> = info
            .files
            .iter()
            .map(|f| remote.get_file(Kind::Diff, &f.name).unwrap().unwrap())
            .collect();
        s_get.push(t.elapsed().as_secs_f64());
        let hold = c.hold_files().unwrap();
        let t = Instant::now();
        for (f, b) in info.files.iter().zip(&got) {
            hold.keep(&f.name, b).unwrap();
        }
        s_keep.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        hold.sync().unwrap();
        s_fsync.push(t.elapsed().as_secs_f64());
        drop(hold);
        let remote = server.open_at(&format!("{BUCKET}/parts{rep}"));
        let t = Instant::now();
        for f in &info.files {
            assert!(!remote.refresh_file(Kind::Diff, &f.name).unwrap());
        }
        s_head.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (f, b) in info.files.iter().zip(&got) {
            remote.put_file(Kind::Diff, &f.name, b).unwrap();
        }
        s_put.push(t.elapsed().as_secs_f64());
    }

    // A no-op sync (the replica pulled last), and one commit pushed and pulled.
    let remote = server.open_at("bench0/db");
    let b = Store::open_with(dir.join("b0"), opts.clone()).unwrap();
    let db = b.open_db("bench").unwrap();
    let before = remote.requests();
    let mut calls = 0;
    let t = Instant::now();
    for _ in 0..100 {
        let r = sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
        assert!(r.is_noop(), "{r:?}");
        calls += r.requests;
    }
    let noop_ms = t.elapsed().as_secs_f64() * 10.0;
    let noop_http = (remote.requests() - before) as f64 / 100.0;
    if noop_ms > 30.0 {
        println!(
            "note: a no-op sync (a LIST, and on s3s-fs a HEAD per record listed) took \
             {noop_ms:.1} ms: this s3s-fs answers GETs (a LIST is one) ~40 ms late (Nagle's \
             algorithm on its sockets, the client's delayed ACK; see the example's doc for a \
             shim)"
        );
    }
    let ra = server.open_at("bench0/db");
    da.put(&json!({"_id": "one", "v": 0})).unwrap();
    sync(&a, &da, &ra, "bench", SyncOptions::default()).unwrap();
    sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
    da.put(&json!({"_id": "one", "v": 1})).unwrap();
    let before = ra.requests();
    let t = Instant::now();
    let r1 = sync(&a, &da, &ra, "bench", SyncOptions::default()).unwrap();
    let one_push = (t.elapsed().as_secs_f64() * 1e3, ra.requests() - before);
    let before = remote.requests();
    let t = Instant::now();
    let r2 = sync(&b, &db, &remote, "bench", SyncOptions::default()).unwrap();
    let one_pull = (t.elapsed().as_secs_f64() * 1e3, remote.requests() - before);
    assert!(r1.pushed && r2.adopted, "{r1:?} {r2:?}");

    let mb = total as f64 / 1e6;
    let nf = files.len() as f64;
    let row = |what: &str, v: &[f64], reqs: String, raw_s: Option<(f64, f64)>| {
        let m = median(v.to_vec());
        let ratio = match raw_s {
            Some((seq, p)) => format!("{:.2} / {:.2}", seq / m, p / m),
            None => String::new(),
        };
        println!(
            "| {what} | {m:.3} s ({}) | {:.0} docs/s | {:.1} MB/s | {:.0} files/s | {reqs} | {ratio} |",
            secs(v),
            n as f64 / m,
            mb / m,
            nf / m
        );
    };
    let (p1, pp, g1, gp, h1) = (
        median(put1.clone()),
        median(putp.clone()),
        median(get1.clone()),
        median(getp.clone()),
        median(head1.clone()),
    );
    println!();
    println!(
        "| {n} documents, {} files, {mb:.1} MB | time (runs) | docs/s | MB/s | files/s | requests | rate ÷ raw (1 / {par} at a time) |",
        files.len()
    );
    println!("|---|---|---|---|---|---|---|");
    row(
        "full push to an empty remote",
        &push,
        format!("{push_calls} remote calls, {push_http} HTTP"),
        Some((p1, pp)),
    );
    row(
        "raw PUT, 1 at a time",
        &put1,
        format!("{} HTTP", files.len()),
        None,
    );
    row(
        &format!("raw PUT, {par} at a time"),
        &putp,
        format!("{} HTTP", files.len()),
        None,
    );
    row(
        "raw HEAD, 1 at a time",
        &head1,
        format!("{} HTTP", files.len()),
        None,
    );
    row(
        "full pull into a new store",
        &pull,
        format!("{pull_calls} remote calls, {pull_http} HTTP"),
        Some((g1, gp)),
    );
    row(
        "raw GET, 1 at a time",
        &get1,
        format!("{} HTTP", files.len()),
        None,
    );
    row(
        &format!("raw GET, {par} at a time"),
        &getp,
        format!("{} HTTP", files.len()),
        None,
    );
    println!();
    println!(
        "per request, 1 at a time: PUT {:.2} ms, GET {:.2} ms, HEAD {:.2} ms; push − (HEADs + PUTs) = {:.3} s, pull − GETs = {:.3} s",
        p1 / nf * 1e3,
        g1 / nf * 1e3,
        h1 / nf * 1e3,
        median(push.clone()) - h1 - p1,
        median(pull.clone()) - g1
    );
    println!(
        "the push's parts through the remote, 1 at a time: HEADs {} s, PUTs {} s; the pull's: GETs {} s, checking and writing the files {} s, making them durable {} s",
        secs(&s_head),
        secs(&s_put),
        secs(&s_get),
        secs(&s_keep),
        secs(&s_fsync)
    );
    println!(
        "no-op sync: {} remote calls, {noop_http:.0} HTTP requests, {noop_ms:.2} ms",
        calls / 100
    );
    println!(
        "one commit: push {} remote calls, {} HTTP, {} bytes uploaded, {:.1} ms; pull {} remote calls, {} HTTP, {} bytes, {:.1} ms",
        r1.requests, one_push.1, r1.bytes_pushed, one_push.0, r2.requests, one_pull.1, r2.bytes_pulled, one_pull.0
    );
}
