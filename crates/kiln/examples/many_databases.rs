//! Measures creating, listing, opening and dropping many databases in one store.
//!
//! `cargo run --release -p kiln --example many_databases -- COUNT [full|buffered] [DIR]`

use kiln::{Durability, Options, Store};
use std::time::Instant;

fn du(p: &std::path::Path) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut alloc, mut files) = (0, 0, 0);
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        alloc += m.blocks() * 512;
        if m.is_dir() {
            let (b, a, f) = du(&e.path());
            bytes += b;
            alloc += a;
            files += f;
        } else {
            bytes += m.len();
            files += 1;
        }
    }
    (bytes, alloc, files)
}

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let durability = if args.get(2).map(String::as_str) == Some("full") {
        Durability::Full
    } else {
        Durability::Buffered
    };
    let tmp;
    let dir = match args.get(3) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    let store = Store::open_with(
        &dir,
        Options {
            durability,
            ..Options::default()
        },
    )?;
    let t = Instant::now();
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let db = store.create(None)?;
        names.push(db.name().to_owned());
        if (i + 1) % 20_000 == 0 {
            eprintln!(
                "  created {} ({:.0}/s so far)",
                i + 1,
                (i + 1) as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    let create = t.elapsed();
    let t = Instant::now();
    let listed = store.list()?;
    let list = t.elapsed();
    assert_eq!(listed.len(), count);
    // Open (fresh store handle, so nothing is cached) and read from random databases.
    let store2 = Store::open(&dir)?;
    let mut seed = 0x9e37_79b9_u64;
    let mut opens = Vec::new();
    for _ in 0..1000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = &names[(seed % count as u64) as usize];
        let t = Instant::now();
        let db = store2.open_db(n)?;
        let _ = db.get("x")?;
        opens.push(t.elapsed().as_secs_f64() * 1e6);
    }
    opens.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (bytes, alloc, files) = du(&dir);
    let t = Instant::now();
    for n in names.iter().take(1000) {
        store.drop_db(n)?;
    }
    let drop = t.elapsed();
    println!(
        "{{\"databases\":{count},\"durability\":\"{:?}\",\"create_per_sec\":{:.0},\"create_s\":{:.2},\"list_ms\":{:.1},\
\"open_get_us_p50\":{:.0},\"open_get_us_p99\":{:.0},\"drop_per_sec\":{:.0},\"bytes_per_db\":{:.0},\"alloc_bytes_per_db\":{:.0},\"files_per_db\":{:.1}}}",
        durability,
        count as f64 / create.as_secs_f64(),
        create.as_secs_f64(),
        list.as_secs_f64() * 1e3,
        opens[opens.len() / 2],
        opens[opens.len() * 99 / 100],
        1000.0 / drop.as_secs_f64(),
        bytes as f64 / count as f64,
        alloc as f64 / count as f64,
        files as f64 / count as f64,
    );
    Ok(())
}
