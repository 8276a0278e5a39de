//! A document's history at scale: N single-document commits (documents "d0".."d9999" updated
//! in turn), "early" written by the first commit, the middle one and the last; then the time of
//! `history("early")` from a fresh store handle (cold: no cached events) and again (warm).
//! The history of a document written three times should not cost the whole log.
//!
//! `cargo run --release -p kiln --example history -- [N] [DIR]` (default 100000, a temp dir;
//! a DIR that holds the database already is reused as it is)

use kiln::{Durability, Options, Store};
use serde_json::json;
use std::time::Instant;

fn main() -> kiln::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::args()
        .nth(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let opts = || Options {
        durability: Durability::Buffered,
        ..Options::default()
    };
    {
        let store = Store::open_with(&dir, opts())?;
        if store.list()?.iter().all(|d| d != "h") {
            let db = store.create(Some("h"))?;
            let t = Instant::now();
            for i in 0..n {
                if i == 0 || i == n / 2 || i == n - 1 {
                    db.put(&json!({"_id": "early", "i": i}))?;
                } else {
                    db.put(&json!({"_id": format!("d{}", i % 10_000), "i": i}))?;
                }
            }
            db.close()?;
            println!("wrote {n} commits in {:.1} s", t.elapsed().as_secs_f64());
        }
    }
    let store = Store::open_with(&dir, opts())?;
    let db = store.open_db("h")?;
    let t = Instant::now();
    let h = db.history("early", None)?;
    let cold = t.elapsed();
    let t = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        assert_eq!(db.history("early", None)?.len(), h.len());
    }
    let warm = t.elapsed() / rounds;
    println!(
        "history of a document with {} versions among {} events: cold {:.2} ms, warm {:.3} ms",
        h.len(),
        db.info()?.events,
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );
    Ok(())
}
