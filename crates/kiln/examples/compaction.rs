//! Compaction figures for issue 3, on the shared harness's document shape (~300 bytes JSON):
//!
//! - `load N`: bulk-load N documents (1,000 per transaction), then time a full compaction
//!   and report its peak memory (the process's peak RSS is reset just before it), the bytes on
//!   disk per document against the JSON size, before and after.
//! - `open N`: N one-document commits with the default threshold and with compaction off
//!   (threshold 1,000,000), then the time to open the database and read one document, and
//!   the files a reader may consult.
//!
//! `cargo run --release -p kiln --example compaction -- load 100000`

use kiln::{Durability, Options, Store};
use serde_json::Value;

#[path = "shared/harness_doc.rs"]
mod harness_doc;
use harness_doc::{disk, doc, proc_figure};
use std::time::Instant;

fn status(key: &str) -> u64 {
    proc_figure("status", key)
}

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("load");
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    let opts = |t: usize| Options {
        durability: Durability::Buffered,
        compact_threshold: t,
        ..Options::default()
    };
    match what {
        "load" => {
            let store = Store::open_with(tmp.path(), opts(100))?;
            let db = store.create(Some("c"))?;
            let mut json_bytes = 0u64;
            let t = Instant::now();
            let mut k = 0;
            while k < n {
                let docs: Vec<Value> = (k..n.min(k + 1000)).map(|i| doc(i, n)).collect();
                json_bytes += docs.iter().map(|d| d.to_string().len() as u64).sum::<u64>();
                db.bulk(&docs)?;
                k += 1000;
            }
            let load = t.elapsed().as_secs_f64();
            store.gc()?;
            let before = disk(&tmp.path().join("files"));
            let files_before = db.info()?.files.len();
            let load_peak = status("VmHWM:");
            // Reset the peak RSS, so it measures the compaction alone.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let rss0 = status("VmRSS:");
            let t = Instant::now();
            db.compact_full()?;
            let secs = t.elapsed().as_secs_f64();
            let peak = status("VmHWM:");
            store.gc()?;
            let after = disk(&tmp.path().join("files"));
            println!(
                "{n} docs: bulk load {load:.1} s; full compaction of {files_before} files: {secs:.2} s, \
                 peak RSS {} MiB (RSS before {} MiB); disk {:.2}x JSON before, {:.2}x after \
                 ({} B/doc, JSON {} B/doc)",
                peak / 1024,
                rss0 / 1024,
                before as f64 / json_bytes as f64,
                after as f64 / json_bytes as f64,
                after / n,
                json_bytes / n
            );
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let t = Instant::now();
            let r = db.verify()?;
            assert!(r.ok(), "{:?}", r.problems);
            println!(
                "peak RSS while loading {} MiB; verify {:.1} s, peak RSS {} MiB",
                load_peak / 1024,
                t.elapsed().as_secs_f64(),
                status("VmHWM:") / 1024
            );
        }
        "open" => {
            for (label, t) in [
                ("default threshold (100)", 100),
                ("compaction off", 1_000_000),
            ] {
                let dir = tmp.path().join(format!("t{t}"));
                {
                    let store = Store::open_with(&dir, opts(t))?;
                    let db = store.create(Some("o"))?;
                    for k in 0..n {
                        db.put(&doc(k, n))?;
                    }
                }
                let mut best = f64::MAX;
                let mut files = 0;
                for _ in 0..5 {
                    let t0 = Instant::now();
                    let store = Store::open_with(&dir, opts(t))?;
                    let db = store.open_db("o")?;
                    let d = db.get(&format!("doc-{:08}", n / 2))?;
                    best = best.min(t0.elapsed().as_secs_f64() * 1e3);
                    assert!(d.is_some());
                    files = db.info()?.files.len();
                }
                println!(
                    "{n} commits, {label}: open + first read {best:.2} ms (best of 5), {files} live files"
                );
            }
        }
        _ => eprintln!("usage: compaction load|open N"),
    }
    Ok(())
}
