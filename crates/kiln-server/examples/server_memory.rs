//! Sync server memory against what its storage holds (issue 18: memory grows with open
//! connections, not with the number of databases stored; README "Measured").
//!
//! For each N given, a folder storage holding N databases' head records is served by a
//! `kiln serve` process (release build) polling every 200 ms. The same load then runs against
//! it: 10 live-channel subscribers watching 10 databases each, 5 rounds of a head write to
//! each watched database (through the server: every subscriber hears of its own), and a
//! read of each watched database's record, as a syncing client makes. The server's resident memory is
//! read idle, under that load, and at its peak (`/proc/PID/status`).
//!
//! `cargo build --release -p kiln-cli && cargo run --release -p kiln-server --example
//! server_memory -- DIR [N …]` (default N: 100 and 100000; `KILN_BIN=PATH` serves with
//! another build of kiln, to compare)

use kiln_sync::{HttpRemote, Remote};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WATCHERS: usize = 10;
const PER_WATCHER: usize = 10;
const ROUNDS: usize = 5;

/// A `/proc/PID/status` field in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb / 1024.0
}

fn db(i: usize) -> String {
    format!("db{i:07}")
}

/// A folder storage holding `n` databases' head records (written straight into its layout,
/// as the folder remote keeps them: 8 bytes of version, then the sealed record).
fn storage(root: &std::path::Path, n: usize) {
    let r = kiln_sync::FolderRemote::open(root).unwrap();
    r.write_head(&db(0), None, &[7; 200]).unwrap().unwrap();
    let heads = root.join("heads");
    let mut body = vec![0u8; 208];
    for i in 1..n {
        body[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        std::fs::write(heads.join(format!("{}.head", db(i))), &body).unwrap();
    }
}

/// Subscribes to `dbs` and waits for `ready`.
fn subscribe(addr: &str, dbs: &[String]) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET /v1/watch?dbs={} HTTP/1.1\r\nHost: x\r\n\r\n",
        dbs.join(",")
    )
    .unwrap();
    read_until(&mut c, "event: ready");
    c
}

fn read_until(c: &mut TcpStream, want: &str) {
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = c.read(&mut buf).expect("the server answers within 30 s");
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
}

fn measure(dir: &std::path::Path, kiln: &std::path::Path, n: usize) {
    let root = dir.join(format!("storage-{n}"));
    let _ = std::fs::remove_dir_all(&root);
    let t = Instant::now();
    storage(&root, n);
    let made = t.elapsed();
    let mut server = Command::new(kiln)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--poll",
            "0.2",
            "--storage",
        ])
        .arg(&root)
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
    let addr = url.trim_start_matches("http://").to_owned();
    let pid = server.id();
    std::thread::sleep(Duration::from_millis(500));
    let idle = status_mib(pid, "VmRSS:");

    // Watched databases spread over the whole storage.
    let step = (n / (WATCHERS * PER_WATCHER)).max(1);
    let watched: Vec<String> = (0..WATCHERS * PER_WATCHER)
        .map(|i| db((i * step) % n))
        .collect();
    let mut subs: Vec<TcpStream> = watched
        .chunks(PER_WATCHER)
        .map(|dbs| subscribe(&addr, dbs))
        .collect();
    let remote = HttpRemote::open(&url, None).unwrap();
    let mut etags: Vec<Option<kiln_sync::Etag>> = watched
        .iter()
        .map(|d| match remote.read_head(d, None).unwrap() {
            kiln_sync::HeadRead::Found { etag, .. } => Some(etag),
            _ => None,
        })
        .collect();
    for round in 0..ROUNDS {
        for (i, d) in watched.iter().enumerate() {
            let body = vec![round as u8; 200];
            etags[i] = Some(
                remote
                    .write_head(d, etags[i].as_ref(), &body)
                    .unwrap()
                    .unwrap(),
            );
            remote.read_head(d, etags[i].as_ref()).unwrap();
        }
        for (w, c) in subs.iter_mut().enumerate() {
            read_until(
                c,
                &format!("\"{}\"", watched[w * PER_WATCHER + PER_WATCHER - 1]),
            );
        }
    }
    // A few poll rounds with everyone still watching.
    std::thread::sleep(Duration::from_secs(2));
    let loaded = status_mib(pid, "VmRSS:");
    let peak = status_mib(pid, "VmHWM:");
    drop(subs);
    let _ = server.kill();
    let _ = server.wait();
    println!(
        "N={n:>9} databases stored (made in {:.1} s): server RSS idle {idle:.1} MiB, \
         with {WATCHERS} watchers of {PER_WATCHER} and {} writes {loaded:.1} MiB, peak \
         {peak:.1} MiB",
        made.as_secs_f64(),
        ROUNDS * watched.len()
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let sizes: Vec<usize> = if args.len() > 2 {
        args[2..].iter().map(|s| s.parse().expect("N")).collect()
    } else {
        vec![100, 100_000]
    };
    std::fs::create_dir_all(&dir).unwrap();
    // (KILN_BIN: another build to compare with.)
    let kiln = std::env::var_os("KILN_BIN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/kiln"),
        std::path::PathBuf::from,
    );
    assert!(
        kiln.exists(),
        "build it first: cargo build --release -p kiln-cli"
    );
    for n in sizes {
        measure(&dir, &kiln, n.max(1));
    }
}
