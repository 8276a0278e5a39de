//! Watch latency: commit → a subscriber in another process. The parent commits N documents
//! one at a time (each stamped with the wall clock just before its commit), a few ms apart;
//! a child process subscribed to the database stamps each as it arrives. Prints p50/p99/max
//! of the difference (commit included) as one JSON line.
//!
//! `cargo run --release -p kiln --example watch_bench -- [N] [GAP_MS]` (default 1000, 2).

use kiln::{Durability, Options, Store};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn opts() -> Options {
    Options {
        durability: Durability::Buffered,
        ..Options::default()
    }
}

fn child(dir: &str, n: usize) -> kiln::Result<()> {
    let store = Store::open_with(dir, opts())?;
    let db = store.open_db("w")?;
    let mut sub = db.subscribe()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").ok();
    out.flush().ok();
    let mut seen = 0;
    while seen < n {
        let c = sub.recv()?;
        let at = now_us();
        for d in &c.docs {
            writeln!(out, "{}", at.saturating_sub(d["t"].as_u64().unwrap_or(at))).ok();
            seen += 1;
        }
        out.flush().ok();
    }
    Ok(())
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], args[3].parse().unwrap_or(0));
    }
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let gap: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let tmp = tempfile::tempdir().map_err(|e| kiln::Error::io("tmp", e))?;
    let dir = tmp.path().to_str().unwrap_or_default().to_owned();
    let store = Store::open_with(&dir, opts())?;
    let db = store.create(Some("w"))?;
    let exe = std::env::current_exe().map_err(|e| kiln::Error::io("exe", e))?;
    let mut c = Command::new(exe)
        .args(["--child", &dir, &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| kiln::Error::io("child", e))?;
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(|l| l.ok()).as_deref(), Some("ready"));
    let reader = std::thread::spawn(move || {
        lines
            .map_while(|l| l.ok())
            .filter_map(|l| l.parse::<u64>().ok())
            .collect::<Vec<u64>>()
    });
    for i in 0..n {
        db.put(&json!({"_id": format!("d{i:06}"), "t": now_us()}))?;
        std::thread::sleep(Duration::from_millis(gap));
    }
    let mut lat = reader.join().unwrap_or_default();
    let _ = c.wait();
    assert_eq!(lat.len(), n, "every commit reached the subscriber");
    println!(
        "{}",
        json!({
            "commits": n,
            "gap_ms": gap,
            "p50_ms": pct(&mut lat, 0.5),
            "p99_ms": pct(&mut lat, 0.99),
            "max_ms": pct(&mut lat, 1.0),
        })
    );
    Ok(())
}
