//! Random updates against an existing store, for profiling the write path apart from loading:
//! `cargo run --release -p kiln --example random_updates -- STORE DB COUNT N`
//! reads and rewrites COUNT random documents `doc-%08d` below N (kiln-bench's `update`: one
//! commit each, `title` extended, `v` counted up) and prints the rate and the files written.

mod common;

use kiln::Store;
use serde_json::{json, Value};

fn main() -> kiln::Result<()> {
    let (root, db, count, n) = common::args("usage: random_updates STORE DB COUNT N");
    let opts = kiln::Options {
        durability: kiln::Durability::Buffered,
        ..Default::default()
    };
    let db = Store::open_existing(&root, opts)?.open_db(&db)?;
    let t = std::time::Instant::now();
    for id in common::random_ids(n).take(count as usize) {
        let mut d = db.get(&id)?.expect("every id below N exists");
        let o = d.as_object_mut().expect("an object");
        let title = format!("{} u", o["title"].as_str().unwrap_or(""));
        let v = o.get("v").and_then(Value::as_i64).unwrap_or(0) + 1;
        o.insert("title".into(), json!(title));
        o.insert("v".into(), json!(v));
        db.put(&d)?;
    }
    let s = t.elapsed().as_secs_f64();
    println!("{count} updates in {s:.2} s: {:.0}/s", count as f64 / s);
    Ok(())
}
