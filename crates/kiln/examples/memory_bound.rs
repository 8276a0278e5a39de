//! Shows that memory stays bounded by the block cache while committing: 10,000 single-document
//! commits, printing the cache's weight and the process's RSS every 2,000.
//!
//! `cargo run --release -p kiln --example memory_bound -- [CACHE_BYTES]` (default 32 MiB)

use kiln::{Durability, Options, Store};
use serde_json::json;
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}
fn main() -> kiln::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let cache: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(32 << 20);
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            cache_bytes: cache,
            ..Options::default()
        },
    )?;
    let db = store.create(Some("m"))?;
    for k in 0..10_000u64 {
        db.put(&json!({"_id": format!("doc-{k:08}"), "body": "x".repeat(200), "v": 0}))?;
        if k % 2000 == 1999 {
            println!(
                "{} puts: cache {} KiB, rss {} MiB",
                k + 1,
                store.cache_weight() / 1024,
                rss()
            );
        }
    }
    Ok(())
}
