//! Cursors: documents in id order, forwards and backwards, within bounds, after a key, with a
//! prefix, from the state they were opened on.

use kiln::{Durability, ListOptions, Options, Store};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn store(dir: &std::path::Path, threshold: usize) -> Store {
    Store::open_with(
        dir,
        Options {
            durability: Durability::Buffered,
            compact_threshold: threshold,
            background_compaction: false,
            ..Options::default()
        },
    )
    .unwrap()
}

fn ids(docs: impl IntoIterator<Item = kiln::Result<Value>>) -> Vec<String> {
    docs.into_iter()
        .map(|d| d.unwrap()["_id"].as_str().unwrap().to_owned())
        .collect()
}

/// What `opts` selects from the ids `model` holds, as a plain filter over the sorted list.
fn expected(model: &BTreeMap<String, i64>, opts: &ListOptions) -> Vec<String> {
    let mut v: Vec<String> = model
        .keys()
        .filter(|k| opts.start.as_ref().is_none_or(|s| *k >= s))
        .filter(|k| opts.end.as_ref().is_none_or(|e| *k <= e))
        .filter(|k| {
            opts.prefix
                .as_ref()
                .is_none_or(|p| k.starts_with(p.as_str()))
        })
        .filter(|k| {
            opts.after
                .as_ref()
                .is_none_or(|a| if opts.desc { *k < a } else { *k > a })
        })
        .cloned()
        .collect();
    if opts.desc {
        v.reverse();
    }
    v.truncate(opts.limit.unwrap_or(usize::MAX));
    v
}

fn id_of(i: u32) -> String {
    // Ids sharing prefixes of several lengths, and one with a 0xff-free multibyte character.
    match i % 4 {
        0 => format!("a/{i:05}"),
        1 => format!("a/{:03}", i % 500),
        2 => format!("b{i}"),
        _ => format!("é{}", i % 97),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn a_cursor_lists_what_the_options_select(
        written in prop::collection::vec(0u32..3000, 1..400),
        deleted in prop::collection::vec(0u32..3000, 0..60),
        queries in prop::collection::vec(
            (any::<bool>(), 0u32..3000, 0u32..3000, 0usize..6, 0usize..5, 0usize..80),
            1..10,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 7);
        let db = s.create(Some("c")).unwrap();
        let mut model = BTreeMap::new();
        for chunk in written.chunks(37) {
            let docs: Vec<Value> = chunk.iter().map(|i| json!({"_id": id_of(*i), "i": i})).collect();
            db.bulk(&docs).unwrap();
            for i in chunk {
                model.insert(id_of(*i), *i as i64);
            }
        }
        for i in &deleted {
            if model.remove(&id_of(*i)).is_some() {
                db.del(&id_of(*i)).unwrap();
            }
        }
        let keys: Vec<String> = model.keys().cloned().collect();
        let pick = |n: u32| keys.get(n as usize % keys.len().max(1)).cloned().unwrap_or_default();
        for (desc, a, b, which, pre, limit) in queries {
            let mut o = ListOptions { desc, ..Default::default() };
            if which & 1 != 0 { o.start = Some(pick(a)); }
            if which & 2 != 0 { o.end = Some(pick(b)); }
            if which & 4 != 0 { o.after = Some(pick(b.wrapping_add(a))); }
            o.prefix = match pre { 1 => Some("a/".into()), 2 => Some("a/0".into()), 3 => Some("é".into()), 4 => Some("zz".into()), _ => None };
            if limit < 70 { o.limit = Some(limit); }
            let want = expected(&model, &o);
            prop_assert_eq!(ids(db.cursor(&o).unwrap()), want.clone(), "{:?}", o);
            prop_assert_eq!(ids(db.docs(&o).unwrap().into_iter().map(Ok)), want, "{:?}", o);
        }
    }
}

#[test]
fn a_cursor_reads_the_state_it_was_opened_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1000);
    let db = s.create(Some("c")).unwrap();
    let docs: Vec<Value> = (0..300)
        .map(|i| json!({"_id": format!("d{i:03}"), "v": 1}))
        .collect();
    db.bulk(&docs).unwrap();
    let mut c = db.cursor(&ListOptions::default()).unwrap();
    let heads = c.heads().to_vec();
    assert_eq!(c.next().unwrap().unwrap()["_id"], "d000");
    // Commits after it opened do not show: new, changed and deleted documents alike.
    db.put(&json!({"_id": "d0005", "v": 2})).unwrap();
    db.put(&json!({"_id": "d150", "v": 2})).unwrap();
    db.del("d299").unwrap();
    let rest: Vec<Value> = c.map(|d| d.unwrap()).collect();
    assert_eq!(rest.len(), 299);
    assert!(rest.iter().all(|d| d["v"] == 1));
    assert_eq!(rest.last().unwrap()["_id"], "d299");
    assert_ne!(db.heads().unwrap(), heads);
    // A new cursor sees them.
    let now = ids(db.cursor(&ListOptions::default()).unwrap());
    assert_eq!(now.len(), 300);
    assert!(now.contains(&"d0005".to_owned()) && !now.contains(&"d299".to_owned()));
}

/// A compaction that replaces the files of a cursor's state does not change what the cursor
/// hands out: its state is rebuilt from history and the listing goes on where it was.
#[test]
fn a_cursor_outlives_the_compaction_of_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1000);
    let db = s.create(Some("c")).unwrap();
    for i in 0..200 {
        db.put(&json!({"_id": format!("d{i:03}"), "v": 1})).unwrap();
    }
    let mut c = db
        .cursor(&ListOptions::default().desc().prefix("d1"))
        .unwrap();
    assert_eq!(c.next().unwrap().unwrap()["_id"], "d199");
    for i in 0..200 {
        db.put(&json!({"_id": format!("d{i:03}"), "v": 2})).unwrap();
    }
    db.del("d150").unwrap();
    db.compact_full().unwrap();
    let files = db.info().unwrap().files.len();
    assert_eq!(files, 1);
    let rest: Vec<Value> = c.map(|d| d.unwrap()).collect();
    assert_eq!(rest.len(), 99);
    assert!(
        rest.iter().all(|d| d["v"] == 1),
        "the state the cursor was opened on"
    );
    assert_eq!(rest.last().unwrap()["_id"], "d100");
    assert!(rest.iter().any(|d| d["_id"] == "d150"));
}

#[test]
fn typed_cursors_and_pages() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Msg {
        #[serde(rename = "_id")]
        id: String,
        n: u32,
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 10);
    let db = s.create(Some("room")).unwrap();
    let msgs: Vec<Msg> = (0..120)
        .map(|n| Msg {
            id: format!("m{n:04}"),
            n,
        })
        .collect();
    db.bulk(&msgs).unwrap();
    // Newest 50, then the 50 before them: pages joined by `after`.
    let page1: Vec<Msg> = db
        .cursor_as(&ListOptions::default().desc().limit(50))
        .unwrap()
        .collect::<kiln::Result<_>>()
        .unwrap();
    assert_eq!(page1.first().unwrap().n, 119);
    let last = &page1.last().unwrap().id;
    let page2: Vec<Msg> = db
        .cursor_as(&ListOptions::default().desc().after(last.clone()).limit(50))
        .unwrap()
        .collect::<kiln::Result<_>>()
        .unwrap();
    assert_eq!((page2[0].n, page2[49].n), (69, 20));
    // A document that does not fit stops the typed cursor with an error naming it.
    db.put(&json!({"_id": "m0050", "n": "fifty"})).unwrap();
    let r: kiln::Result<Vec<Msg>> = db.cursor_as(&ListOptions::default()).unwrap().collect();
    assert!(matches!(r, Err(kiln::Error::Decode { id, .. }) if id == "m0050"));
    // limit 0 yields nothing; an empty range too.
    assert_eq!(
        db.cursor(&ListOptions::default().limit(0)).unwrap().count(),
        0
    );
    let empty = ListOptions::default().start("m0100").end("m0001");
    assert_eq!(db.cursor(&empty).unwrap().count(), 0);
}

/// The same when another handle (as another process would) writes and compacts, twice, while
/// the cursor is between batches. (The race where the files a rebuild reads through are
/// replaced too is the crash test's: its readers list documents while another process commits
/// and compacts, and failed that way before the rebuild was retried.)
#[test]
fn a_cursor_outlives_compactions_by_another_handle() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1000);
    let db = s.create(Some("c")).unwrap();
    for i in 0..300 {
        db.put(&json!({"_id": format!("d{i:03}"), "v": 1})).unwrap();
    }
    let mut c = db.cursor(&ListOptions::default()).unwrap();
    let first: Vec<Value> = c.by_ref().take(20).map(|d| d.unwrap()).collect();
    let other = store(dir.path(), 1000).open_db("c").unwrap();
    for round in 0..2 {
        for i in 0..300 {
            other
                .put(&json!({"_id": format!("d{i:03}"), "v": 2 + round}))
                .unwrap();
        }
        other.compact_full().unwrap();
    }
    let rest: Vec<Value> = c.map(|d| d.unwrap()).collect();
    assert_eq!(first.len() + rest.len(), 300);
    assert!(first.iter().chain(&rest).all(|d| d["v"] == 1));
}

/// Found by review: a cursor whose snapshot was read on through newer files reported the newer
/// state's heads, so a change feed started from them skipped what was committed meanwhile.
#[test]
fn a_cursor_keeps_its_heads_across_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1000);
    let db = s.create(Some("c")).unwrap();
    for i in 0..300 {
        db.put(&json!({"_id": format!("d{i:03}"), "v": 1})).unwrap();
    }
    let mut c = db.cursor(&ListOptions::default()).unwrap();
    let heads = c.heads().to_vec();
    assert_eq!(c.by_ref().take(20).count(), 20);
    for i in 0..300 {
        db.put(&json!({"_id": format!("d{i:03}"), "v": 2})).unwrap();
    }
    db.compact_full().unwrap();
    assert_eq!(c.by_ref().count(), 280);
    assert_eq!(c.heads(), &heads[..]);
    assert_eq!(db.changes(Some(c.heads())).unwrap().len(), 300);
}

/// `scan` (and `docs`) walk the tree once, loading each document beside its leaf; when another
/// handle's compaction replaces the files mid-walk, they go on in the newer state after the
/// last document handed out: each id once, in order, backwards too.
#[test]
fn a_scan_goes_on_after_a_compaction_each_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), 1000);
    let db = s.create(Some("c")).unwrap();
    for i in 0..300 {
        db.put(&json!({"_id": format!("d{i:03}"), "v": 1})).unwrap();
    }
    let other = store(dir.path(), 1000).open_db("c").unwrap();
    for desc in [false, true] {
        let mut seen = Vec::new();
        let opts = ListOptions {
            desc,
            ..Default::default()
        };
        db.scan(&opts, &mut |d| {
            seen.push(d["_id"].as_str().unwrap().to_owned());
            if seen.len() == 10 {
                for i in 0..300 {
                    other
                        .put(&json!({"_id": format!("d{i:03}"), "v": 2}))
                        .unwrap();
                }
                other.compact_full().unwrap();
            }
            true
        })
        .unwrap();
        let mut want: Vec<String> = (0..300).map(|i| format!("d{i:03}")).collect();
        if desc {
            want.reverse();
        }
        assert_eq!(seen, want, "desc {desc}");
    }
}
