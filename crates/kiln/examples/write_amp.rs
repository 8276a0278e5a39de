//! Write amplification: N single-document commits of small (~300-byte JSON) documents with the
//! default settings, then reports bytes handed to the file system (every `write`/`pwrite`,
//! counted by the kernel in `/proc/self/io` `wchar`) ÷ bytes of JSON committed, the files a
//! reader consults, and the disk bytes at the end.
//!
//! `cargo run --release -p kiln --example write_amp -- [N] [DIR]` (default 100000, a temp dir)

use kiln::{Durability, Options, Store};
#[path = "shared/harness_doc.rs"]
mod harness_doc;
use harness_doc::{disk, doc, proc_figure};

fn wchar() -> u64 {
    proc_figure("io", "wchar:")
}

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
    let store = Store::open_with(
        &dir,
        Options {
            durability: Durability::Buffered,
            // KILN_INLINE=1: compact inside the commits (as before background compaction).
            background_compaction: std::env::var_os("KILN_INLINE").is_none(),
            ..Options::default()
        },
    )?;
    let db = store.create(Some("wa"))?;
    let base = wchar();
    let mut json_bytes = 0u64;
    let t = std::time::Instant::now();
    let mut max_files = 0;
    for k in 0..n {
        // The shared harness's document (~300 bytes of JSON).
        let doc = doc(k, n);
        json_bytes += serde_json::to_vec(&doc).unwrap().len() as u64;
        db.put(&doc)?;
        if k % 1000 == 999 {
            max_files = max_files.max(db.info()?.files.len());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let written = wchar() - base;
    let info = db.info()?;
    println!(
        "{n} commits in {secs:.1} s ({:.0}/s); JSON {json_bytes} B; written {written} B; \
         write amplification {:.2}x; live files {} (max seen {max_files}); disk {} B ({:.2}x JSON)",
        n as f64 / secs,
        written as f64 / json_bytes as f64,
        info.files.len(),
        disk(&dir),
        disk(&dir) as f64 / json_bytes as f64,
    );
    Ok(())
}
