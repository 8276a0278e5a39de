//! Writes the sync fixture (`tests/fixtures/sync-v1`, docs/format.md "Remote head record"):
//! `DIR/remote` (a remote folder holding database "notes": its record, diff files and a
//! file-set), `DIR/replica` (a store holding an empty replica of "notes" with its key), and
//! `DIR/expected.jsonl` (the documents a sync of the replica must read).
//!
//! `cargo run -p kiln-sync --example make_sync_fixture -- DIR`

use kiln::{Attachment, ListOptions, Options, Store};
use kiln_sync::{sync, FileSets, FolderRemote, SyncOptions};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: make_sync_fixture DIR")?,
    );
    let opts = Options {
        background_compaction: false,
        ..Options::default()
    };
    let work = dir.join("writer");
    let a = Store::open_with(&work, opts.clone())?;
    let db = a.create(Some("notes"))?;
    for i in 0..40 {
        db.put(&json!({"_id": format!("n{i:02}"), "text": format!("note {i}"), "tags": [i % 3]}))?;
    }
    db.compact()?;
    db.put_with_files(
        &json!({"_id": "with-file"}),
        vec![Attachment::bytes("hello.txt", b"hello, remote")
            .content_type("text/plain")
            .modified(1_700_000_000_000)],
    )?;
    db.del("n07")?;
    let remote = FolderRemote::open(dir.join("remote"))?;
    let all = SyncOptions {
        files: FileSets::All,
        ..SyncOptions::default()
    };
    sync(&a, &db, &remote, "notes", all)?;
    let key = a.export_key("notes", None)?;
    let b = Store::open_with(dir.join("replica"), opts)?;
    b.import_key("notes", &key, None)?;
    let mut out = String::new();
    for d in db.docs(&ListOptions::default())? {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    std::fs::write(dir.join("expected.jsonl"), out)?;
    println!(
        "heads: {}",
        db.heads()?
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    drop((db, a));
    std::fs::remove_dir_all(work)?;
    Ok(())
}
