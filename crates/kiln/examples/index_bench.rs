//! Index benchmark: build throughput, point and 1% range query latency (p50/p99, with and
//! without documents), and the cost of the first query after one write, on a database of N
//! documents shaped as the shared harness's (`n` a permutation of 0..N).
//!
//! `cargo run --release -p kiln --example index_bench -- N [QUERIES] [DIR]` (default 100000,
//! 200, a temporary folder). Prints one JSON line.

use kiln::index::{IndexDef, Query};
use kiln::{Durability, Options, Store};
use serde_json::json;
use std::time::Instant;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> kiln::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let queries: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().map_err(|e| kiln::Error::io("tmp", e))?;
    let dir = args.next().map_or(tmp.path().to_path_buf(), Into::into);
    let store = Store::open_with(
        &dir,
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )?;
    let db = store.create(Some("bench"))?;
    // n: a permutation of 0..N (multiplicative, as the harness's), with a body of ~200 bytes.
    let perm = |i: u64| (i * 2_654_435_761) % n.max(1);
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let docs: Vec<_> = (i..n.min(i + 10_000))
            .map(|k| json!({"_id": format!("doc-{k:08}"), "n": perm(k), "title": format!("title {k}"), "body": "x".repeat(160)}))
            .collect();
        db.bulk(&docs)?;
        i += 10_000;
    }
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    db.create_index("n", IndexDef::fields(["n"]))?;
    let t = Instant::now();
    let up = db.update_index("n")?;
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(up.added, n);
    let width = (n / 100).max(1);
    let mut seed = 42u64;
    let mut rnd = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m.max(1)
    };
    let time = |q: &Query, expect: u64| -> kiln::Result<f64> {
        let t = Instant::now();
        let rows = db.query("n", q)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(rows.len() as u64, expect);
        Ok(ms)
    };
    let (mut point, mut range, mut range_docs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..queries {
        point.push(time(&Query::key(json!(rnd(n))).with_docs(), 1)?);
        let lo = rnd(n - width + 1);
        range.push(time(
            &Query::range(json!(lo), json!(lo + width - 1)),
            width,
        )?);
        let lo = rnd(n - width + 1);
        range_docs.push(time(
            &Query::range(json!(lo), json!(lo + width - 1)).with_docs(),
            width,
        )?);
    }
    // The first query after one write, against one with no write before it.
    let (mut after_write, mut no_write) = (Vec::new(), Vec::new());
    for k in 0..queries.min(100) {
        let id = format!("doc-{:08}", rnd(n));
        let d = db.get(&id)?.unwrap_or_default();
        let mut d = d;
        d["v"] = json!(k);
        db.put(&d)?;
        let key = d["n"].clone();
        after_write.push(time(&Query::key(key.clone()).with_docs(), 1)?);
        no_write.push(time(&Query::key(key).with_docs(), 1)?);
    }
    let info = &db.indexes()?[0];
    println!(
        "{}",
        json!({
            "n": n,
            "load_ms": load_ms,
            "build_ms": build_ms,
            "build_docs_per_s": n as f64 / (build_ms / 1e3),
            "index_bytes": info.bytes,
            "index_files": info.files,
            "point_docs_p50_ms": pct(&mut point, 0.5),
            "point_docs_p99_ms": pct(&mut point, 0.99),
            "range1pct_p50_ms": pct(&mut range, 0.5),
            "range1pct_p99_ms": pct(&mut range, 0.99),
            "range1pct_docs_p50_ms": pct(&mut range_docs, 0.5),
            "range1pct_docs_p99_ms": pct(&mut range_docs, 0.99),
            "query_after_write_p50_ms": pct(&mut after_write, 0.5),
            "query_no_write_p50_ms": pct(&mut no_write, 0.5),
        })
    );
    Ok(())
}
