//! Writes the format fixture: `cargo run -p kiln --example make_fixture -- DIR`.
//! Checked-in copies live in `tests/fixtures/v1/` (older head records), `tests/fixtures/v2/`,
//! `tests/fixtures/v3/` (older head records), `tests/fixtures/v4/` (head records version 3),
//! `tests/fixtures/v5/` (diff files and head records version 4), `tests/fixtures/v6/` (diff
//! files version 5, head records version 4), `tests/fixtures/v7/` (head records version 5,
//! `Bounded` trees), `tests/fixtures/v8/` (head records and diff files version 6) and
//! `tests/fixtures/v9/` (today's formats: diff files version 7, with document logs; the
//! store's pool of empty files left out);
//! `tests/fixture.rs` reads them on every run. Besides "fixture" and "empty" it writes
//! "purged": a document purged after a compaction (a purge event and the head's purged list);
//! "cut": history dropped before its third event (the head's cut list); "merged" and "side":
//! a fork merged back with a conflict, after an `--only` transaction (events with conflict and
//! source lists), then proposed for it again (a sealed proposal, from `v5` on); "paged" (from
//! `v6` on): 300 documents in one transaction, a diff file whose index is paged, then one more
//! write; "joined" (from `v8` on): two transactions on one state wrote "x" differently, and
//! the next commit joined the two heads, recording the losing value in its event, and its
//! metadata holds a title; "attached" (from `v9` on): a document with two attached files, one
//! replaced by a later update (two file-sets).

use kiln::{Attachment, Durability, Options, Store};

/// Bytes that differ at every position (the fixture test makes the same ones).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}
use serde_json::json;

fn main() -> kiln::Result<()> {
    let dir = std::env::args().nth(1).expect("usage: make_fixture DIR");
    let store = Store::open_with(
        &dir,
        Options {
            durability: Durability::Full,
            compact_threshold: 4,
            background_compaction: false,
            ..Options::default()
        },
    )?;
    let db = store.create(Some("fixture"))?;
    db.put(&json!({"_id": "alpha", "n": 1, "tags": ["a", "b"], "nested": {"x": 1.5, "y": null, "z": true}}))?;
    db.put(&json!({"_id": "beta", "n": -2, "text": "héllo wörld"}))?;
    let docs: Vec<_> = (0..20)
        .map(|i| json!({"_id": format!("bulk-{i:02}"), "i": i}))
        .collect();
    db.bulk(&docs)?;
    db.del("beta")?;
    db.put(&json!({"_id": "alpha", "n": 2}))?;
    let mut t1 = db.transaction()?;
    let mut t2 = db.transaction()?;
    t1.put(&json!({"_id": "left", "side": "l"}))?;
    t1.put(&json!({"_id": "both", "side": "l"}))?;
    t2.put(&json!({"_id": "right", "side": "r"}))?;
    t2.put(&json!({"_id": "both", "side": "r"}))?;
    t1.commit()?;
    t2.commit()?; // two heads
    db.put(&json!({"_id": "gamma", "big": "x".repeat(20_000)}))?; // joins them; spans segments
    let empty = store.create(Some("empty"))?;
    drop(empty);
    let p = store.create(Some("purged"))?;
    p.put(&json!({"_id": "keep", "v": 1}))?;
    p.put(&json!({"_id": "gone", "v": "secret"}))?;
    p.put(&json!({"_id": "gone", "v": "more secret"}))?;
    let r = p.purge("gone")?;
    p.put(&json!({"_id": "after", "v": 2}))?;
    println!("purged {} versions in {}", r.versions, r.event);
    let c = store.create(Some("cut"))?;
    let mut evs = Vec::new();
    for k in 0..5 {
        evs.push(c.put(&json!({"_id": format!("c{}", k % 3), "k": k}))?.event);
    }
    let n = c.drop_history_before(&evs[2])?;
    c.put(&json!({"_id": "c9", "k": 9}))?;
    println!("cut: dropped {n} events before {}", evs[2]);
    let m = store.create(Some("merged"))?;
    m.put(&json!({"_id": "x", "v": 0}))?;
    let side = store.fork("merged", Some("side"))?;
    side.put(&json!({"_id": "x", "v": "side"}))?;
    side.put(&json!({"_id": "y", "v": "side"}))?;
    m.put(&json!({"_id": "x", "v": "main"}))?;
    let part = m.merge_from(&side, Some(&["y".to_owned()]))?;
    let all = m.merge_from_noted(&side, None, "merged by the fixture")?;
    println!(
        "merged: --only event {:?}, merge event {:?}, {} conflict(s)",
        part.event,
        all.event,
        all.conflicts.len()
    );
    let prop = store.propose("side", "merged", "a sealed proposal")?;
    println!("proposal {}", prop.id);
    // A file of more than 128 blocks: its index is paged (from v6 on).
    let paged = store.create(Some("paged"))?;
    let many: Vec<_> = (0..300)
        .map(|i| json!({"_id": format!("p{i:03}"), "i": i, "sq": i * i}))
        .collect();
    paged.bulk(&many)?;
    paged.put(&json!({"_id": "p000", "i": "changed"}))?;
    // Two transactions on one state writing "x" differently, then a commit joining the two
    // heads: its event lists the losing value (from v8 on).
    let joined = store.create(Some("joined"))?;
    joined.put(&json!({"_id": "x", "v": "base"}))?;
    let mut t1 = joined.transaction()?;
    let mut t2 = joined.transaction()?;
    t1.put(&json!({"_id": "x", "v": "one"}))?;
    t2.put(&json!({"_id": "x", "v": "two"}))?;
    t1.commit()?;
    t2.commit()?;
    joined.put(&json!({"_id": "y", "v": "join"}))?;
    // The database's own metadata, in its head record (from v8 on).
    let mut meta = serde_json::Map::new();
    meta.insert("title".into(), json!("Joined room"));
    joined.set_meta(&meta)?;
    println!(
        "joined: x = {}, lost {:?}",
        joined.get("x")?.unwrap_or_default(),
        joined.conflicts("x")?
    );
    // A document with two attached files, one replaced by a later update (from v9 on): two
    // file-sets, the first still holding the file the update kept and the one it replaced.
    let attached = store.create(Some("attached"))?;
    let first = attached.put_with_files(
        &json!({"_id": "vase", "title": "Blue vase"}),
        vec![
            Attachment::bytes("photo.jpg", &pattern(150_000, 1)).modified(1_700_000_000_000),
            Attachment::bytes("notes.txt", b"glazed, 1920s").modified(1_700_000_000_001),
        ],
    )?;
    attached.attach(
        "vase",
        vec![Attachment::bytes("photo.jpg", &pattern(70_000, 2)).modified(1_700_000_000_002)],
    )?;
    println!("attached: first event {}", first.event);
    let i = db.info()?;
    println!("root {}", i.root.map(|r| r.to_string()).unwrap_or_default());
    println!(
        "docs {} events {} files {:?}",
        i.docs,
        i.events,
        i.files.iter().map(|f| f.level).collect::<Vec<_>>()
    );
    for e in db.log(None)? {
        println!("event {} height {} ops {:?}", e.cid, e.height, e.ops);
    }
    Ok(())
}
