//! Large attachments: put and read a file of SIZE MiB through kiln (streamed: a file-set chunk
//! at a time), side by side with `cp` of the same file on the same disk, and the time to the
//! first byte of a range read in the middle. Reports MB/s and this process's peak RSS (the
//! source file is written first, in 1 MiB pieces, and the page cache is warm for both).
//!
//! `cargo run --release -p kiln --example big_file -- SIZE_MIB DIR` (DIR: a folder on the disk
//! to measure; it is used and emptied). With `DURABLE=1`: kiln with `Durability::Full` against
//! `cp` followed by `sync` (both on the disk, not only in the page cache).

use kiln::{Attachment, Durability, Options, Store};
use std::io::{Read, Write};
use std::time::Instant;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> kiln::Result<()> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("usage: big_file SIZE_MIB DIR");
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(2)
            .expect("usage: big_file SIZE_MIB DIR"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("DIR");
    let size = mib << 20;
    let src = dir.join("source.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).expect("source"));
        let mut block = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..mib {
            for b in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            f.write_all(&block).expect("source");
        }
    }
    let mb = size as f64 / 1e6;
    // cp of the same file on the same disk.
    let t = Instant::now();
    let durable = std::env::var_os("DURABLE").is_some();
    let st = std::process::Command::new("cp")
        .arg(&src)
        .arg(dir.join("copy.bin"))
        .status()
        .expect("cp");
    assert!(st.success());
    if durable {
        let st = std::process::Command::new("sync")
            .arg(dir.join("copy.bin"))
            .status()
            .expect("sync");
        assert!(st.success());
    }
    let cp_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(dir.join("copy.bin"));
    let rss_before = peak_rss_mb();

    let store = Store::open_with(
        dir.join("store"),
        Options {
            durability: if durable {
                Durability::Full
            } else {
                Durability::Buffered
            },
            ..Options::default()
        },
    )?;
    let db = store.create(Some("media"))?;
    let t = Instant::now();
    let f = std::fs::File::open(&src).expect("source");
    db.put_with_files(
        &serde_json::json!({"_id": "film"}),
        vec![Attachment::reader(
            "film.bin",
            std::io::BufReader::with_capacity(1 << 20, f),
        )],
    )?;
    let put_s = t.elapsed().as_secs_f64();
    let rss_put = peak_rss_mb();

    let t = Instant::now();
    let mut r = db.open_file("film", "film.bin")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    assert_eq!(n, size);
    let read_s = t.elapsed().as_secs_f64();
    // The plain file read the same way, for scale.
    let t = Instant::now();
    let mut f = std::fs::File::open(&src).expect("source");
    while f.read(&mut buf).expect("read") > 0 {}
    let plain_read_s = t.elapsed().as_secs_f64();

    // Time to the first byte of a range in the middle, from a fresh handle.
    drop((r, db, store));
    let store = Store::open(dir.join("store"))?;
    let db = store.open_db("media")?;
    let t = Instant::now();
    let mut r = db.open_file("film", "film.bin")?;
    let mid = r.read_range(size / 2, 4096)?;
    let first_byte_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(mid.len(), 4096);
    let rss_end = peak_rss_mb();
    println!(
        "{}{mib} MiB: put {:.0} MB/s (cp {:.0} MB/s, {:.2}x), read {:.0} MB/s (plain read {:.0} MB/s), \
         range in the middle: first byte after {first_byte_ms:.2} ms; peak RSS {rss_before:.1} MB \
         before kiln, {rss_put:.1} MB after the put, {rss_end:.1} MB at the end",
        if durable { "durable, " } else { "" },
        mb / put_s,
        mb / cp_s,
        cp_s / put_s,
        mb / read_s,
        mb / plain_read_s,
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
