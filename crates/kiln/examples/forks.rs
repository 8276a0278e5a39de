//! Fork and diff figures for issue 4, with the shared harness's documents:
//!
//! - `diff N`: a base of N documents (bulk-loaded), a fork, 100 changed documents on the fork
//!   (one transaction each); then the time to diff base and fork (best of 5, fresh handles).
//! - `many F B W`: a base of B documents, F forks of it with W one-document writes each; then
//!   the bytes on disk against the base alone and per fork.
//!
//! `cargo run --release -p kiln --example forks -- diff 1000000`

#[path = "shared/harness_doc.rs"]
mod harness_doc;
use harness_doc::{disk, doc};
use kiln::{Durability, Options, Store};
use serde_json::json;
use std::time::Instant;

fn load(store: &Store, name: &str, n: u64) -> kiln::Result<()> {
    let db = store.create(Some(name))?;
    let mut k = 0;
    while k < n {
        let docs: Vec<_> = (k..n.min(k + 1000)).map(|i| doc(i, n)).collect();
        db.bulk(&docs)?;
        k += 1000;
    }
    db.compact_full()
}

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        tmp.path(),
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )?;
    match args.get(1).map(String::as_str).unwrap_or("diff") {
        "diff" => {
            let n = num(2, 1_000_000);
            let t = Instant::now();
            load(&store, "base", n)?;
            let loaded = t.elapsed().as_secs_f64();
            store.gc()?;
            let before = disk(tmp.path());
            let fork = store.fork("base", Some("fork"))?;
            println!(
                "fork of a {before}-byte store added {} bytes",
                disk(tmp.path()) - before
            );
            for k in 0..100 {
                let i = (k * 7919) % n;
                fork.put(&json!({"_id": format!("doc-{i:08}"), "changed": k}))?;
            }
            let mut best = f64::MAX;
            let mut found = 0;
            for _ in 0..5 {
                let s = Store::open(tmp.path())?;
                let (a, b) = (s.open_db("base")?, s.open_db("fork")?);
                let t = Instant::now();
                found = a.diff(None, &b, None)?.len();
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{n} documents (loaded in {loaded:.1} s), 100 changed on a fork: diff finds {found} in {:.1} ms (best of 5, fresh handles)",
                best * 1e3
            );
        }
        "many" => {
            let (forks, base, writes) = (num(2, 1000), num(3, 10_000), num(4, 10));
            load(&store, "base", base)?;
            store.gc()?;
            let base_bytes = disk(tmp.path());
            let t = Instant::now();
            for f in 0..forks {
                let db = store.fork("base", Some(&format!("fork-{f:04}")))?;
                for w in 0..writes {
                    db.put(&json!({"_id": format!("doc-{:08}", (f * 31 + w * 997) % base), "fork": f, "w": w}))?;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            store.gc()?;
            let all = disk(tmp.path());
            println!(
                "base of {base} documents: {base_bytes} B; {forks} forks × {writes} writes in {secs:.1} s: \
                 {all} B in all, {} B per fork ({} B per write)",
                (all - base_bytes) / forks,
                (all - base_bytes) / forks / writes
            );
        }
        _ => eprintln!("usage: forks diff N | forks many FORKS BASE WRITES"),
    }
    Ok(())
}
